"""The chaos run's logs: client operations and nemesis events, one JSON object per line.

``DIR/history.jsonl`` holds one event per client call and one per answer, in the
shape `kvraft.linearizability.history_from_events` reads::

    {"process": 3, "type": "invoke", "f": "cas", "key": "r/1", "value": "v3-17",
     "expected": "v4-2", "output": null, "time": 81234567890, "node": 2}
    {"process": 3, "type": "ok", "f": "cas", "key": "r/1", "value": null,
     "expected": null, "output": true, "time": 81240012345, "node": 2}

``type`` is ``invoke``, then ``ok`` (it happened), ``fail`` (it certainly did
not) or ``info`` (unknown: it may take effect at any later time, or never);
``time`` is the monotonic clock in nanoseconds. Register operations are
``read``/``write``/``cas``; the set workload adds ``add`` (one element) and
``list`` (one page of the final read, ``output`` the elements found).
``node`` (the node asked) and ``error`` (why an op failed) are extra context;
``revision`` on an acknowledged write's completion is the revision the node answered
with (what `kvraft.chaos.watch_check` matches watch events against).

``DIR/nemesis.jsonl`` holds the nemesis and the cluster's side: faults
(``start``/``end``/``error``), leaders observed (``leader``), processes that
exited on their own (``exit``) and the final phase (``final``), each with a
``time`` on the same clock.

Writing is thread-safe and line-at-a-time (flushed), so a log is readable while
the run goes on. Reading treats the file as untrusted input: `load_events`
raises `HistoryFileError` naming the line for anything that is not a JSON
object within the limits below.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

from kvraft.linearizability import HISTORY_OPERATIONS_MAX

__all__ = [
    "EVENTS_MAX",
    "EVENT_LINE_BYTES_MAX",
    "HISTORY_FILE_NAME",
    "NEMESIS_FILE_NAME",
    "EventLog",
    "HistoryFileError",
    "HistoryRecorder",
    "load_events",
]

HISTORY_FILE_NAME = "history.jsonl"
NEMESIS_FILE_NAME = "nemesis.jsonl"

EVENT_LINE_BYTES_MAX = 1024 * 1024
"""The longest line `load_events` accepts. The largest event the harness writes is one page
of the final set read (at most 1000 short elements, tens of KiB)."""

EVENTS_MAX = 2 * HISTORY_OPERATIONS_MAX
"""The most events `load_events` reads from one file: two per operation, up to the most
operations the linearizability checker accepts."""


class HistoryFileError(ValueError):
    """A log file is malformed or over a limit; the message names the file and line."""


class EventLog:
    """Appends JSON objects to a file, one per line, from any thread."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, event: dict[str, Any]) -> None:
        """Write one event (a JSON-serialisable dict) as one line and flush it."""
        line = json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: the log is closed")
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        """Flush to disk and close; later appends raise ValueError."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class HistoryRecorder:
    """Records client operations as invoke/completion events in an `EventLog`.

    The invoke time is read before the request is sent and the completion time after the
    answer arrived, so each operation's real effect lies between them.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def invoke(
        self,
        process: int,
        f: str,
        key: str,
        *,
        value: object = None,
        expected: object = None,
        node: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that `process` is about to send `f` on `key`; `extra` adds fields (e.g.
        the lock workload's ``client`` and ``round``)."""
        moment = time.monotonic_ns()
        event: dict[str, Any] = {
            "process": process,
            "type": "invoke",
            "f": f,
            "key": key,
            "value": value,
            "expected": expected,
            "output": None,
            "time": moment,
            "node": node,
        }
        if extra:
            event.update(extra)
        self.log.append(event)

    def complete(
        self,
        process: int,
        outcome: str,
        f: str,
        key: str,
        *,
        output: object = None,
        error: str | None = None,
        node: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how `process`'s outstanding operation ended (`ok`, `fail` or `info`);
        `extra` adds fields (e.g. ``last_page``)."""
        moment = time.monotonic_ns()
        event: dict[str, Any] = {
            "process": process,
            "type": outcome,
            "f": f,
            "key": key,
            "value": None,
            "expected": None,
            "output": output,
            "time": moment,
            "node": node,
        }
        if error is not None:
            event["error"] = error
        if extra:
            event.update(extra)
        self.log.append(event)


def load_events(
    path: pathlib.Path,
    *,
    line_bytes_max: int = EVENT_LINE_BYTES_MAX,
    events_max: int = EVENTS_MAX,
) -> list[dict[str, Any]]:
    """Every event of a log file, in file order. HistoryFileError for a missing or unreadable
    file, a line that is not a JSON object, a line over `line_bytes_max` bytes or more than
    `events_max` events."""
    events: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as file:
            number = 0
            while True:
                raw = file.readline(line_bytes_max + 1)
                if not raw:
                    break
                number += 1
                if len(raw.rstrip(b"\n")) > line_bytes_max:
                    raise HistoryFileError(
                        f"{path}: line {number} is longer than {line_bytes_max} bytes"
                    )
                if not raw.strip():
                    continue
                if len(events) >= events_max:
                    raise HistoryFileError(f"{path}: more than {events_max} events")
                try:
                    event = json.loads(raw)
                except (ValueError, RecursionError) as error:
                    raise HistoryFileError(f"{path}: line {number} is not JSON: {error}") from None
                if not isinstance(event, dict):
                    raise HistoryFileError(
                        f"{path}: line {number}: expected a JSON object, got {type(event).__name__}"
                    )
                events.append(event)
    except OSError as error:
        raise HistoryFileError(f"{path}: cannot read: {error.strerror or error}") from None
    return events
