"""Slow and too many clients: time limits on a request's head and body, a cap on connections.

A client connection costs a descriptor and some memory for as long as it is open, so a
client that sends slowly (slowloris) or opens connections without end could hold all of a
node's descriptors -- and then the node cannot reach its peers or open WAL segments. aiohttp
bounds neither the time a request head may take nor the number of connections, so
`GuardedServer`, a `web.Server`, adds:

- **request_header_timeout_ms** (`LimitSettings`): a connection must deliver a whole request
  head within this long of being accepted, or of the first byte of its next request on a
  kept-alive connection; otherwise it is closed, without an answer (as nginx does: a client
  that cannot send a head in time would not read one). The clock stops when the request
  reaches the handler. A kept-alive connection that sends nothing is left alone: it is
  closed by aiohttp's keep-alive timeout, and clients close theirs first, which spares them
  the race of sending on a connection the server is closing. A pipelined next head is timed
  from the end of the request before it; one that follows a request *with a body* in the
  same packet cannot be told from the body here, and only aiohttp's keep-alive timeout
  (an hour) bounds it -- the connection cap bounds what such clients can hold.
- **request_body_timeout_ms**: the handler reads a body within this long
  (`request_body_timeout_s`, used by `kvraft.http_api`), or answers 408 ``request_timeout``.
  An answer that closes the connection while its body is still coming is sent and the
  connection closed at once, instead of aiohttp reading and discarding the rest for up to
  its 10 s lingering time.
- **http_connections_max**: beyond it a new connection gets a minimal 503 with Retry-After
  and is closed as soon as it is accepted; nothing is parsed for it. At start the limit is
  lowered to what the descriptor limit allows (`http_connections_allowed`).

Each refusal and timeout is counted (``kvraft_http_connections_closed_total`` by reason) and
logged at most once per 10 s with the count.

aiohttp offers no hook for any of this, so `GuardedServer` makes its connections with
`GuardedRequestHandler`, a subclass of aiohttp's public `web.RequestHandler` that overrides
only asyncio's protocol callbacks (`connection_made`, `data_received`, `connection_lost`),
and wraps the request handler to learn when a request starts and ends. What it relies on is
public: a `web.Server` passes its keyword arguments to `web.RequestHandler(manager, loop=...)`,
reads ``manager.request_handler`` when it makes one, calls the handler with a request whose
``protocol`` is the connection, and `RequestHandler.force_close` closes it.
``tests/test_http_guard.py`` fails if an aiohttp upgrade changes any of that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from kvraft.descriptors import RateLimitedLog
from kvraft.metrics import LoopMetrics
from kvraft.raft.codec import MEMBERS_MAX
from kvraft.transport.tcp import INBOUND_CONNECTIONS_MAX

__all__ = [
    "DESCRIPTORS_RESERVED",
    "FILE_DESCRIPTORS_RESERVED",
    "FORWARD_CONNECTIONS_MAX",
    "REFUSAL_RETRY_AFTER_S",
    "GuardedRequestHandler",
    "GuardedServer",
    "http_connections_allowed",
    "request_body_timeout_s",
]

log = logging.getLogger("kvraft.http")

FORWARD_CONNECTIONS_MAX = 100
"""The most connections a follower keeps open to the leader for forwarded requests (the
size of its client pool; more forwards wait for one)."""

FILE_DESCRIPTORS_RESERVED = 64
"""Descriptors kept for files and the process itself: WAL segments and the directory, a
snapshot being written and one being sent, the listening sockets, the event loop's own
(epoll, its wake-up pipe), standard streams."""

DESCRIPTORS_RESERVED = (
    INBOUND_CONNECTIONS_MAX + 2 * MEMBERS_MAX + FORWARD_CONNECTIONS_MAX + FILE_DESCRIPTORS_RESERVED
)
"""Descriptors client connections may not take: peer connections accepted (the transport
takes at most `INBOUND_CONNECTIONS_MAX`) and dialed (two lanes per peer, for the most
members), the forwarding pool and `FILE_DESCRIPTORS_RESERVED` (548 in all). With a low
descriptor limit only half of it is kept (`http_connections_allowed`)."""

REFUSAL_RETRY_AFTER_S = 1
"""The Retry-After of the 503 a connection over the limit gets."""

_REFUSAL_BODY = (
    b'{"error": "too_many_connections", "message": "this node serves as many client'
    b' connections as it may; retry later or elsewhere"}'
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (REFUSAL_RETRY_AFTER_S, len(_REFUSAL_BODY), _REFUSAL_BODY)
)
"""The whole answer to a connection over the limit, written as soon as it is accepted."""

_CLOSED_REASONS = ("connection_limit", "header_timeout", "body_timeout")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def http_connections_allowed(configured: int, descriptors_max: int) -> tuple[int, int]:
    """(client connections allowed, descriptors kept for the rest) under a descriptor limit
    of `descriptors_max` (the soft RLIMIT_NOFILE; negative means unlimited): `configured`,
    lowered so that `DESCRIPTORS_RESERVED` descriptors stay free -- or half of them, when
    the limit is too low for all (a node with ``ulimit -n 1024`` serves 512 connections)."""
    if descriptors_max < 0:
        return configured, 0
    reserved = min(DESCRIPTORS_RESERVED, descriptors_max // 2)
    return max(1, min(configured, descriptors_max - reserved)), reserved


def request_body_timeout_s(request: web.BaseRequest) -> float | None:
    """How long reading `request`'s body may take (None: no limit; a server other than a
    `GuardedServer`)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        return protocol.guard.request_body_timeout_s
    return None


class GuardedServer(web.Server):
    """aiohttp's low-level server with the limits of this module; `open_connections` is
    how many client connections it holds (or is about to: counted when made)."""

    def __init__(
        self,
        handler: Handler,
        *,
        request_header_timeout_s: float,
        request_body_timeout_s: float,
        connections_max: int,
        metrics: LoopMetrics,
        **kwargs: Any,
    ) -> None:
        super().__init__(self._handle, **kwargs)
        self.inner_handler = handler
        self.request_header_timeout_s = request_header_timeout_s
        self.request_body_timeout_s = request_body_timeout_s
        self.connections_max = connections_max
        self.open_connections = 0
        self._protocol_kwargs = kwargs
        self.event_loop = asyncio.get_running_loop()
        metrics.counter(
            "kvraft_http_connections_closed",
            "Client connections refused (over http_connections_max) or closed for taking too"
            " long to send a request head or body",
            ("reason",),
        )
        self._closed_counters = {
            reason: metrics.counter_child("kvraft_http_connections_closed", reason)
            for reason in _CLOSED_REASONS
        }
        metrics.gauge(
            "kvraft_http_connections", "Client connections open", lambda: self.open_connections
        )
        metrics.gauge(
            "kvraft_http_connections_max",
            "Client connections allowed (limits.http_connections_max, lowered to fit the"
            " descriptor limit)",
            lambda: self.connections_max,
        )
        self._logs = {reason: RateLimitedLog(log) for reason in _CLOSED_REASONS}

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        """The protocol factory the listening socket calls for each accepted connection.

        Counted here, not in `connection_made`: asyncio accepts up to its backlog at once
        and runs each connection's `connection_made` later, so counting there would let a
        burst past the limit."""
        if self.open_connections >= self.connections_max:
            return _RefusingProtocol(self)
        self.open_connections += 1
        return GuardedRequestHandler(self, loop=self.event_loop, **self._protocol_kwargs)

    def count_closed(self, reason: str, message: str, *args: object) -> None:
        self._closed_counters[reason].inc()
        self._logs[reason].log(logging.WARNING, message, *args)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = cast(GuardedRequestHandler, request.protocol)
        protocol.request_started(request)
        try:
            response = await self.inner_handler(request)
        finally:
            protocol.request_ended()
        if response.keep_alive is False and not request.content.is_eof():
            # The answer ends the connection while the body is still coming (a 408 for a
            # body too slow): send it and close now. aiohttp would otherwise read and discard
            # the rest for its lingering time (10 s) -- what a slow client wants.
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                pass
            protocol.force_close()
        return response


class GuardedRequestHandler(web.RequestHandler):
    """One client connection of a `GuardedServer`: the request head deadline."""

    __slots__ = (
        "_head_deadline_s",
        "_head_timer",
        "_last_chunk_ends_a_head",
        "_next_head_started",
        "_open",
        "_request",
        "guard",
    )

    def __init__(self, guard: GuardedServer, **kwargs: Any) -> None:
        super().__init__(guard, **kwargs)
        self.guard = guard
        self._open = True  # counted in guard.open_connections
        self._request: web.BaseRequest | None = None  # the one in the handler
        # Bytes of a next request arrived while one was in the handler (pipelining).
        self._next_head_started = False
        # Whether the last bytes received between requests ended with a head's blank line.
        self._last_chunk_ends_a_head = True
        self._head_deadline_s: float | None = None
        # One timer per connection at most, moved lazily: a kept-alive connection starts a
        # deadline for every request, and adding and cancelling a timer each time would cost
        # more than a check when the timer fires.
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_deadline()

    def data_received(self, data: bytes) -> None:
        if not data:
            # Not from the network: aiohttp calls this with b"" to resume parsing once a
            # handler has read a body. No byte of a next request came, so no deadline starts
            # (else a connection left idle after any PUT was closed as a slow head).
            super().data_received(data)
            return
        request = self._request
        if request is not None:
            # Bytes after the current request's body belong to a next one (pipelining,
            # rare): its deadline starts when the current one ends.
            if request.content.is_eof():
                self._next_head_started = True
        else:
            self._last_chunk_ends_a_head = data.endswith(b"\r\n\r\n")
            if self._head_deadline_s is None:
                self._start_head_deadline()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._open:  # counted once, however often the loss is reported
            self._open = False
            self.guard.open_connections -= 1
        self._head_deadline_s = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def request_started(self, request: web.BaseRequest) -> None:
        """The request's head is complete and it is in the handler: the clock stops."""
        self._request = request
        self._head_deadline_s = None
        # A request without a body whose bytes did not end with its head came with (part
        # of) a next one in the same packet: time that one from when this one ends. (With
        # a body the two cannot be told apart here; aiohttp's keep-alive timeout bounds it.)
        self._next_head_started = not (self._last_chunk_ends_a_head or request.body_exists)

    def request_ended(self) -> None:
        self._request = None
        if self._next_head_started:
            self._start_head_deadline()

    def _start_head_deadline(self) -> None:
        if not self._open:
            return
        loop = self.guard.event_loop
        self._head_deadline_s = deadline_s = loop.time() + self.guard.request_header_timeout_s
        if self._head_timer is None:
            self._head_timer = loop.call_at(deadline_s, self._on_head_timer)

    def _on_head_timer(self) -> None:
        self._head_timer = None
        deadline_s = self._head_deadline_s
        if deadline_s is None or not self._open:
            return  # the head arrived in time, or the connection is gone
        loop = self.guard.event_loop
        if loop.time() < deadline_s:  # a later deadline since this timer was set
            self._head_timer = loop.call_at(deadline_s, self._on_head_timer)
            return
        self.guard.count_closed(
            "header_timeout",
            "closed a client connection from %s: no whole request head within %g s",
            self.peername,
            self.guard.request_header_timeout_s,
        )
        self.force_close()


class _RefusingProtocol(asyncio.Protocol):
    """A connection over the limit: answered 503 and closed as soon as it is accepted."""

    def __init__(self, guard: GuardedServer) -> None:
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        guard.count_closed(
            "connection_limit",
            "refused a client connection from %s: %d connections open, the most allowed"
            " (limits.http_connections_max, or what the descriptor limit leaves)",
            transport.get_extra_info("peername"),
            guard.connections_max,
        )
        cast(asyncio.Transport, transport).write(_REFUSAL)
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same for every one
