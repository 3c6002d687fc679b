"""How a node logs: one line per message, as text for people or as JSON for a log shipper.

The JSON form is one object per line with fixed keys (`time` in UTC, RFC 3339 with
milliseconds; `level`; `logger`; `node`; `message`; `exception` only when there is one), so
Loki, Elasticsearch or `jq` need no parsing rules; a traceback stays inside its line.
"""

from __future__ import annotations

import datetime
import json
import logging

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "configure_logging"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(node_id: int, level: str, log_format: str) -> None:
    """Send every message at `level` or above to stderr, as `log_format` says."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s node{node_id} %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
