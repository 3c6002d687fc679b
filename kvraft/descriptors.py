"""File descriptors: raise the process's limit at start, and say so when they run out.

Every client connection, peer connection, WAL segment and snapshot file is a descriptor, and
the soft RLIMIT_NOFILE is often 1,024 while the hard limit allows far more. `kvraft serve`
raises the soft limit to the hard one (`raise_descriptor_limit`) and caps client connections
below it (`kvraft.http_guard.http_connections_allowed`), so clients cannot take the
descriptors peers and files need.

When descriptors run out anyway (EMFILE: this process's limit; ENFILE: the system's), the
call that needed one fails. Where this process sees that failure -- accepting a connection
on the default asyncio loop (reported through the loop's exception handler), dialing a peer
or the leader -- it is counted by where (`EXHAUSTION`, exported as
``kvraft_descriptors_exhausted_total``) and logged at most once per
`EXHAUSTION_LOG_INTERVAL_S`, with how many more there were. (uvloop's libuv accepts and closes
a connection it has no descriptor for without telling Python, so under uvloop an accept that
ran out is not counted; ``process_open_fds`` and ``process_max_fds`` show how close it is.)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

__all__ = [
    "EXHAUSTION",
    "EXHAUSTION_ERRNOS",
    "EXHAUSTION_LOG_INTERVAL_S",
    "DescriptorExhaustion",
    "RateLimitedLog",
    "handle_loop_exception",
    "is_exhaustion",
    "raise_descriptor_limit",
]

log = logging.getLogger("kvraft.descriptors")

EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
"""The errors that mean "no descriptor left": for this process, and for the whole system."""

EXHAUSTION_LOG_INTERVAL_S = 10.0
"""At most one log line per this many seconds for one kind of event (a flood of refused
connections or failed accepts must not flood the log too); the lines carry the counts."""


class RateLimitedLog:
    """Logs the first event at once, then at most one line per `interval_s`, each saying how
    many events it stands for (the metric has the exact count)."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = EXHAUSTION_LOG_INTERVAL_S
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._logged_at_s: float | None = None
        self._unlogged = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now_s = time.monotonic()
        if self._logged_at_s is not None and now_s - self._logged_at_s < self.interval_s:
            self._unlogged += 1
            return
        if self._unlogged:
            message += f" (and {self._unlogged} more since the last such line)"
        self._logged_at_s = now_s
        self._unlogged = 0
        self.logger.log(level, message, *args)


def is_exhaustion(error: BaseException | None) -> bool:
    """True if `error` says no descriptor was left (EMFILE or ENFILE)."""
    return isinstance(error, OSError) and error.errno in EXHAUSTION_ERRNOS


class DescriptorExhaustion:
    """Failures for want of a descriptor, counted by where they happened."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._logs: dict[str, RateLimitedLog] = {}

    def record(self, where: str, error: BaseException) -> None:
        """Count one failure at `where` ("accept", "peer_connect", "forward_connect") and
        log it (rate-limited)."""
        self.counts[where] = self.counts.get(where, 0) + 1
        rate_limited = self._logs.get(where)
        if rate_limited is None:
            rate_limited = self._logs[where] = RateLimitedLog(log)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        rate_limited.log(
            logging.ERROR,
            "out of file descriptors (%s, RLIMIT_NOFILE %d) on %s; %d times so far",
            error,
            soft,
            where,
            self.counts[where],
        )


EXHAUSTION = DescriptorExhaustion()
"""This process's count: a process has one descriptor table, so one count (nodes run in one
process by tests share it, as they share the table)."""


def handle_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop exception handler (`loop.set_exception_handler`): an accept that ran out
    of descriptors is counted and logged (rate-limited) instead of a traceback per attempt
    (asyncio retries the accept after a second, and logs every failure); anything else goes
    to the loop's default handler."""
    error = context.get("exception")
    if is_exhaustion(error):
        assert isinstance(error, OSError)
        EXHAUSTION.record("accept", error)
        return
    loop.default_exception_handler(context)


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (soft, hard) afterwards. A limit that
    cannot be raised (a hard limit the kernel does not allow as a soft one) is left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, error)
        else:
            soft = hard
    return soft, hard
