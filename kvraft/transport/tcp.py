"""Moves opaque payloads between kvraft nodes over TCP, with asyncio.

Theory of operation
-------------------
Every connection is one-way. A node *dials* each peer for its own sends and
*accepts* connections on which it only receives; so there is never a question
of which side owns a connection, and a link that iptables cuts in one
direction fails in that direction only.

Sending. `send` never awaits: it appends the payload to the peer's bounded
queue and wakes that queue's writer task, or returns False and drops the
payload when the queue is full (Raft tolerates lost messages and resends what
matters, §5.3). Each peer has two lanes, each with its own queue, writer task
and TCP connection: the normal lane for votes, appends and heartbeats, and a
bulk lane (connected on first use) for large payloads such as InstallSnapshot,
so that a heartbeat never waits behind a snapshot's megabytes (which would let
the follower's election timer fire). A writer takes everything queued,
writes it with one `write` of the joined frames and awaits the drain. On a quiet
connection it sends an empty keepalive frame so the listener's idle timeout
does not close a healthy link. A writer that cannot connect retries with
jittered exponential backoff (randomness from the injected `random.Random`)
and discards what was queued meanwhile: by the time the peer is back it would
be stale. Outbound sockets bind their source address to this node's listen
host, so per-address firewall rules between 127.0.0.x addresses cut exactly
one link.

Authentication (issue #20). With a peer secret every connection's handshake proves
knowledge of it both ways (challenge-response, see `frames`); a peer that fails is refused
before any of its messages is read, logged once per address and reason, and counted
(`peer_auth_failures`, exported as `kvraft_peer_auth_failures_total`). A connection that
claims a node id already connected is not a replacement: connections are never replaced,
each one is only ever an extra receive path, and with a secret its claim is proven. The
secret is shared by the cluster, so it proves membership, not which member.

Peer TLS (issue #20, `kvraft.tls`). With TLS contexts every connection is mutual TLS 1.3
first, then the handshake above inside it. The dialer requires the listener's certificate to
name the node it dialled; the listener requires the dialer's certificate to name the node id
its handshake claims (`InboundConnection.certificate_node_ids`). The listener runs TLS over
memory buffers (`kvraft.tls.ServerTlsStream`) inside its own protocol rather than asyncio's
TLS, so a peer failing the TLS handshake (no certificate, another CA, plain TCP) is refused,
logged once and counted here like any other; asyncio would drop it without a word. Every
refusal for want of the right certificate counts in `peer_auth_failures` too.

Receiving. The listener feeds each connection's bytes to a sans-IO
`InboundConnection` (see `frames`): the peer must send its handshake within
`handshake_timeout_s`, then frames; a connection that is silent for
`idle_timeout_s` is closed. Garbage, an oversized frame or a refused handshake
closes that one connection and is logged with the peer's address and the
reason; the node carries on. Payloads are handed to `on_message(node_id,
payload)` synchronously, in arrival order, from the event loop.

Nagle's algorithm is off on both sides: Raft messages are small and latency
bound, and the writer already batches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

from kvraft.descriptors import EXHAUSTION, is_exhaustion
from kvraft.tls import ServerTlsStream, certificate_node_ids
from kvraft.transport.frames import (
    CLUSTER_ID_BYTES_MAX,
    FRAME_BYTES_MAX,
    HANDSHAKE_BYTES_MAX,
    KEEPALIVE_FRAME,
    NODE_ID_MAX,
    PEER_SECRET_BYTES_MIN,
    PIECE_FIRST,
    PIECE_MARKER,
    PIECED_MESSAGE_BYTES_MAX,
    PIECES_BUFFERED_BYTES_MAX,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameError,
    Handshake,
    HandshakeError,
    HandshakeReply,
    InboundConnection,
    OutboundHandshake,
    PeerAuthError,
    PiecesBudget,
    encode_frame,
    encode_handshake_reply,
    iter_pieces,
    split_into_pieces,
)

__all__ = [
    "BULK_QUEUE_BYTES_MAX",
    "BULK_QUEUE_MESSAGES_MAX",
    "CONNECT_TIMEOUT_S",
    "DRAIN_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "INBOUND_CONNECTIONS_MAX",
    "KEEPALIVE_INTERVAL_S",
    "PEER_QUEUE_BYTES_MAX",
    "PEER_QUEUE_MESSAGES_MAX",
    "RECONNECT_DELAY_S_MAX",
    "RECONNECT_DELAY_S_MIN",
    "REFUSAL_LOG_KEYS_MAX",
    "PeerTransport",
    "TransportConfig",
    "reconnect_delay_s",
]

logger = logging.getLogger(__name__)

PEER_QUEUE_MESSAGES_MAX = 4096
"""The most payloads waiting for one peer's normal lane; more are dropped. Generous next to
what the core keeps in flight per peer, so drops mean the peer is not keeping up."""

PEER_QUEUE_BYTES_MAX = 16 * 1024 * 1024
"""The most payload bytes waiting for one peer's normal lane. A single payload larger than
this is still accepted into an empty queue, so every payload that fits a frame can go."""

BULK_QUEUE_MESSAGES_MAX = 2
"""The most payloads waiting for one peer's bulk lane: snapshots are resent by the core when
needed, so holding more than the next one only wastes memory."""

BULK_QUEUE_BYTES_MAX = 2 * FRAME_BYTES_MAX
"""The most payload bytes waiting for one peer's bulk lane: two full frames."""

CONNECT_TIMEOUT_S = 2.0
"""How long one TCP connect may take before the attempt counts as failed."""

HANDSHAKE_TIMEOUT_S = 5.0
"""How long an accepted connection may take to deliver its handshake (and a dialer to get
the reply). Bytes arriving do not extend it, so a slow-loris peer is cut off here."""

KEEPALIVE_INTERVAL_S = 1.0
"""After this long without a payload to send, a writer sends an empty keepalive frame."""

IDLE_TIMEOUT_S = 5.0
"""An accepted connection that receives nothing for this long is closed: dead or stuck.
Several keepalive intervals (and many heartbeat intervals) so a healthy peer never hits it."""

DRAIN_TIMEOUT_S = 30.0
"""The longest one batch may take to drain to the kernel; a peer that reads slower than
that (a 64 MiB snapshot at ~2 MB/s) is treated as dead and the connection is redone."""

RECONNECT_DELAY_S_MIN = 0.05
"""The backoff before the first reconnect attempt (before jitter)."""

RECONNECT_DELAY_S_MAX = 2.0
"""The backoff cap (before jitter): an unreachable peer is retried at least this often."""

INBOUND_CONNECTIONS_MAX = 256
"""The most accepted connections open at once (two per peer for up to 64 members, plus
transient reconnects); beyond it new connections are closed at once."""

REFUSAL_LOG_KEYS_MAX = 256
"""How many (peer host, reason) pairs of refused handshakes are remembered so that a
misconfigured peer retrying forever is logged at WARNING once, then at DEBUG."""

_LaneName = Literal["normal", "bulk"]

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """The limits and timeouts of one `PeerTransport`; defaults are the module constants.

    Fields (see the constant of the same name in capitals for each one's reason):
        frame_bytes_max: the largest frame sent or accepted; a larger payload goes in pieces.
        pieced_message_bytes_max: the largest payload sent or accepted in pieces.
        pieces_buffered_bytes_max: the most bytes of unfinished pieced messages held across
            all inbound connections at once.
        queue_messages_max, queue_bytes_max: the normal lane's queue bounds, per peer.
        bulk_queue_messages_max, bulk_queue_bytes_max: the bulk lane's queue bounds, per peer.
        connect_timeout_s, handshake_timeout_s, idle_timeout_s, keepalive_interval_s,
        drain_timeout_s: as their constants.
        reconnect_delay_s_min, reconnect_delay_s_max: the backoff range before jitter.
        inbound_connections_max: the most accepted connections open at once.
        bind_source_address: bind outbound sockets to the listen host (unless it is a
            wildcard address), so firewall rules per source address cut single links.
    """

    frame_bytes_max: int = FRAME_BYTES_MAX
    pieced_message_bytes_max: int = PIECED_MESSAGE_BYTES_MAX
    pieces_buffered_bytes_max: int = PIECES_BUFFERED_BYTES_MAX
    queue_messages_max: int = PEER_QUEUE_MESSAGES_MAX
    queue_bytes_max: int = PEER_QUEUE_BYTES_MAX
    bulk_queue_messages_max: int = BULK_QUEUE_MESSAGES_MAX
    bulk_queue_bytes_max: int = BULK_QUEUE_BYTES_MAX
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    reconnect_delay_s_min: float = RECONNECT_DELAY_S_MIN
    reconnect_delay_s_max: float = RECONNECT_DELAY_S_MAX
    inbound_connections_max: int = INBOUND_CONNECTIONS_MAX
    bind_source_address: bool = True

    def __post_init__(self) -> None:
        if self.frame_bytes_max < 1:
            raise ValueError("frame_bytes_max must be positive")
        if min(self.queue_messages_max, self.bulk_queue_messages_max) < 1:
            raise ValueError("queues must hold at least one message")
        if not 0 < self.keepalive_interval_s < self.idle_timeout_s:
            raise ValueError(
                "keepalive_interval_s must be positive and below idle_timeout_s, "
                "or healthy idle connections would be closed"
            )
        if not 0 < self.reconnect_delay_s_min <= self.reconnect_delay_s_max:
            raise ValueError("need 0 < reconnect_delay_s_min <= reconnect_delay_s_max")
        positive = (self.connect_timeout_s, self.handshake_timeout_s, self.drain_timeout_s)
        if min(positive) <= 0 or self.inbound_connections_max < 1:
            raise ValueError("timeouts and inbound_connections_max must be positive")


def reconnect_delay_s(attempt: int, rng: random.Random, config: TransportConfig) -> float:
    """The wait before reconnect attempt `attempt` (0 = the first retry).

    Exponential from `reconnect_delay_s_min`, capped at `reconnect_delay_s_max`, then scaled
    by a random factor in [0.5, 1]: the jitter keeps nodes that lost a peer at the same
    moment from retrying in lockstep, and the floor of one half keeps the backoff real.
    """
    exponent = min(attempt, 32)  # 2**32 times any sane minimum is past any sane maximum
    base_s = min(config.reconnect_delay_s_max, config.reconnect_delay_s_min * 2.0**exponent)
    return base_s * rng.uniform(0.5, 1.0)


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle off: small Raft messages must not wait for an ACK to be sent."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class _ConnectFailed(Exception):
    """A connection attempt failed; the message says why, for the reachability log."""


def _tls_reason(error: ssl.SSLError) -> str:
    """A TLS failure in a few words: what OpenSSL found (and, for a certificate that did
    not verify, why), without the library and file names around it."""
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    return str(error.reason or error).lower().replace("_", " ")


# --- outbound ------------------------------------------------------------------------------


class _OutboundProtocol(asyncio.Protocol):
    """One dialed connection: waits for the handshake reply, then only writes."""

    def __init__(self, on_lost: Callable[[], None], handshake: OutboundHandshake) -> None:
        self._on_lost = on_lost
        self._handshake = handshake
        self.auth_failed = False
        """The listener failed to prove the peer secret (or one side has none)."""
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(HANDSHAKE_BYTES_MAX)
        loop = asyncio.get_running_loop()
        # None when accepted, otherwise the reason; never an exception, so an attempt
        # abandoned mid-handshake leaves no "exception never retrieved" behind.
        self.reply: asyncio.Future[str | None] = loop.create_future()
        self.lost_reason: str | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transports do not subclass
        # asyncio.Transport, though they implement it.
        self._transport = cast(asyncio.Transport, transport)
        _set_nodelay(self._transport)

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            self.abort("peer sent data on a send-only connection")
            return
        handshake = self._handshake
        try:
            for frame in self._decoder.feed(data):
                if handshake.done:
                    raise HandshakeError("peer sent data after its handshake reply")
                answer = handshake.receive(frame)
                if answer is not None:
                    self.write(answer)  # our proof, after the listener proved its own
        except PeerAuthError as error:
            self.auth_failed = True
            self.abort(f"peer authentication failed: {error}")
            return
        except (FrameError, HandshakeError) as error:
            self.abort(f"bad handshake reply: {error}")
            return
        if handshake.accepted:
            self.reply.set_result(None)
        elif handshake.refusal is not None:
            self.reply.set_result(f"refused by peer: {handshake.refusal}")

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError) and not self.reply.done():
            # TLS 1.3: the listener checks our certificate after our side of the TLS
            # handshake is done, so its refusal arrives here, as an alert.
            self.auth_failed = True
        if self.lost_reason is None:
            self.lost_reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        if not self.reply.done():
            self.reply.set_result(self.lost_reason)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError(self.lost_reason))
        self._on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def write_paused(self) -> bool:
        """Whether the transport's buffer is over its high-water mark (`drain` would wait)."""
        return self._write_paused

    def write(self, data: bytes) -> None:
        """Hand `data` to the connection; nothing if it is already closing (the peer or the
        kernel closed it and `connection_lost` is on its way): uvloop raises RuntimeError
        for a write to a closed handle, and the bytes are lost with the connection anyway."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark again."""
        if self.lost_reason is not None:
            raise ConnectionResetError(self.lost_reason)
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def abort(self, reason: str) -> None:
        """Close at once, discarding unsent bytes (we never need them after a failure)."""
        if self.lost_reason is None:
            self.lost_reason = reason
        if self._transport is not None:
            self._transport.abort()


class _Outbound:
    """One lane to one peer: a bounded queue and the writer task that empties it."""

    STAT_KEYS: ClassVar[tuple[str, ...]] = (
        "sent_messages",
        "sent_bytes",
        "dropped_messages",
        "queued_messages",
        "queued_bytes",
        "connects",
        "connect_failures",
        "disconnects",
        "connected",
    )

    def __init__(
        self,
        owner: PeerTransport,
        peer: _Peer,
        lane: _LaneName,
        messages_max: int,
        bytes_max: int,
    ) -> None:
        self._owner = owner
        self._peer = peer
        self.lane: _LaneName = lane
        self._messages_max = messages_max
        self._bytes_max = bytes_max
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._dial_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._protocol: _OutboundProtocol | None = None
        self._writable: _OutboundProtocol | None = None
        """The connection `_pump` is writing to (handshake done), for `_flush`; else None."""
        self._flush_scheduled = False
        self._unconfirmed_messages = 0
        self._unconfirmed_bytes = 0
        self._reachable: bool | None = None
        self.sent_messages = 0
        self.sent_bytes = 0
        self.dropped_messages = 0
        self.connects = 0
        self.connect_failures = 0
        self.disconnects = 0

    # The event loop thread is the only caller of everything here, so no locks.

    def offer(self, frames: Sequence[bytes]) -> bool:
        """Queue one message's frames (one, or its pieces), all or none."""
        if self._task is None:
            self.dropped_messages += 1
            return False
        size = sum(len(frame) for frame in frames) if len(frames) > 1 else len(frames[0])
        fits = (
            len(self._queue) + len(frames) <= self._messages_max
            and self._queued_bytes + size <= self._bytes_max
        )
        if self._queue and not fits:  # an empty queue takes any one message
            self.dropped_messages += 1
            return False
        self._queue.extend(frames)
        self._queued_bytes += size
        if self._writable is not None and not self._writable.write_paused:
            # The fast path: write whatever this loop iteration queues with one call, from a
            # callback rather than by waking the writer task (one hop less per message).
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._wakeup.set()
        return True

    def flush(self) -> None:
        """Write what is queued now, if the connection can take it (else leave it to the
        writer task or the scheduled flush)."""
        protocol = self._writable
        if (
            self._queue
            and protocol is not None
            and not protocol.write_paused
            and protocol.lost_reason is None
        ):
            self._write_queue(protocol)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.flush()
        if self._queue:
            self._wakeup.set()  # the writer task connects, drains or reports the failure

    def _write_queue(self, protocol: _OutboundProtocol) -> int:
        """Hand the queued payloads to the connection in one write; returns how many. One
        write holds at most a frame's worth of bytes beyond its first payload, so the pieces
        of a large message go one by one, each drained before the next (and copied once)."""
        parts: list[bytes] = []
        queue = self._queue
        budget = self._owner.config.frame_bytes_max
        size = count = 0
        while queue and (not count or size + len(queue[0]) <= budget):
            payload = queue.popleft()
            parts.append(len(payload).to_bytes(4, "big"))
            parts.append(payload)
            size += len(payload)
            count += 1
        self._queued_bytes -= size
        protocol.write(b"".join(parts))
        if protocol.write_paused:
            # Sent once the peer reads enough for the buffer to drain; the writer task waits
            # for that (or gives up on the connection and counts them as dropped).
            self._unconfirmed_messages += count
            self._unconfirmed_bytes += size
            self._wakeup.set()
        else:
            self.sent_messages += count
            self.sent_bytes += size
        return count

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kvraft-transport-{self._peer.node_id}-{self.lane}"
            )

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop the writer, close the connection and drop the queue, without waiting.

        Returns the cancelled writer task (if any) for the caller to await.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._protocol is not None:
            self._protocol.abort("transport stopped")
            self._protocol = None
        self._writable = None
        self._discard_queue(count_as_dropped=False)
        return task

    def address_changed(self) -> None:
        self._writable = None  # nothing more to the old address
        self._dial_now.set()
        self._wakeup.set()

    def peer_is_up(self) -> None:
        """The peer just connected to us: if this lane is waiting out a reconnect backoff,
        dial now (a restarted node is back within one round trip, not the backoff's seconds)."""
        if self._protocol is None:
            self._dial_now.set()

    @property
    def pending(self) -> bool:
        """Payloads queued, or written but not yet confirmed drained to the kernel."""
        return bool(self._queue) or self._unconfirmed_messages > 0

    def stats(self) -> dict[str, int]:
        """The lane's counters, keyed as in `STAT_KEYS`."""
        return {
            "sent_messages": self.sent_messages,
            "sent_bytes": self.sent_bytes,
            "dropped_messages": self.dropped_messages,
            "queued_messages": len(self._queue),
            "queued_bytes": self._queued_bytes,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "connected": int(self._protocol is not None and self._reachable is True),
        }

    def _discard_queue(self, *, count_as_dropped: bool) -> None:
        if count_as_dropped:
            self.dropped_messages += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _drop_cut_message(self) -> None:
        """Drop the pieces left of a message whose first pieces went on a connection that
        ended: the next connection's receiver would refuse them out of order."""
        queue = self._queue
        cut = False
        while queue and queue[0][0] == PIECE_MARKER and queue[0][1] != PIECE_FIRST:
            self._queued_bytes -= len(queue.popleft())
            cut = True
        if cut:
            self.dropped_messages += 1

    def _report(self, reachable: bool, detail: str) -> None:
        """Log a change of reachability once, not on every retry."""
        if self._reachable == reachable:
            return
        self._reachable = reachable
        host, port = self._peer.address
        observer = self._owner.on_peer_reachability
        if observer is not None and self.lane != "bulk":
            observer(self._peer.node_id, reachable, f"{host}:{port}", "" if reachable else detail)
        # The bulk lane's state only matters when the normal lane's does not tell the story.
        level = logging.DEBUG if self.lane == "bulk" else None
        if reachable:
            logger.log(
                level or logging.INFO,
                "peer %d at %s:%d reachable (%s lane)",
                self._peer.node_id,
                host,
                port,
                self.lane,
            )
        else:
            logger.log(
                level or logging.WARNING,
                "peer %d at %s:%d unreachable (%s lane): %s",
                self._peer.node_id,
                host,
                port,
                self.lane,
                detail,
            )

    async def _run(self) -> None:
        config = self._owner.config
        attempt = 0
        while True:
            try:
                attempt = await self._connect_and_pump(attempt)
            except Exception:
                # A bug, not a network failure: say so loudly, but keep the lane alive.
                logger.exception(
                    "writer for peer %d (%s lane) failed", self._peer.node_id, self.lane
                )
                if self._protocol is not None:
                    self._protocol.abort("writer failed")
                    self._protocol = None
                attempt += 1
            else:
                if attempt == 0:
                    continue  # the address changed: dial the new one at once
            delay_s = reconnect_delay_s(attempt - 1, self._owner.rng, config)
            try:
                async with asyncio.timeout(delay_s):
                    await self._dial_now.wait()
            except TimeoutError:
                pass

    async def _connect_and_pump(self, attempt: int) -> int:
        """Make one connection and write until it ends. Returns the backoff attempt count for
        the next wait: 0 to dial again at once (the address changed), else at least 1."""
        self._dial_now.clear()
        address = self._peer.address
        try:
            protocol = await self._connect(address)
        except _ConnectFailed as error:
            self.connect_failures += 1
            self._report(False, str(error))
            # Whatever waited for this peer is stale by the time it is back.
            self._discard_queue(count_as_dropped=True)
            return attempt + 1
        self.connects += 1
        self._report(True, "")
        try:
            reason = await self._pump(protocol, address)
        finally:
            self._writable = None
            protocol.abort("writer finished")
            self._protocol = None
            # Written but never confirmed drained: lost with the connection.
            self.dropped_messages += self._unconfirmed_messages
            self._unconfirmed_messages = self._unconfirmed_bytes = 0
            self._drop_cut_message()
        if reason is None:
            return 0
        self.disconnects += 1
        self._report(False, reason)
        return 1  # a short pause: the peer may be restarting

    async def _connect(self, address: tuple[str, int]) -> _OutboundProtocol:
        config = self._owner.config
        host, port = address
        loop = asyncio.get_running_loop()
        local_host = self._owner.listen_host
        bind = config.bind_source_address and local_host not in _WILDCARD_HOSTS
        wake = self._wakeup.set
        handshake = OutboundHandshake(
            Handshake(
                protocol_version=PROTOCOL_VERSION,
                cluster_id=self._owner.cluster_id,
                node_id=self._owner.node_id,
                target_node_id=self._peer.node_id,
            ),
            self._owner.peer_secret,
        )
        tls = self._owner.tls_client_context
        try:
            # The TLS handshake, if any, is part of connecting, with its own time.
            tls_handshake_timeout_s = config.handshake_timeout_s if tls is not None else 0.0
            async with asyncio.timeout(config.connect_timeout_s + tls_handshake_timeout_s):
                transport, protocol = await loop.create_connection(
                    lambda: _OutboundProtocol(on_lost=wake, handshake=handshake),
                    host,
                    port,
                    local_addr=(local_host, 0) if bind else None,
                    ssl=tls,
                    ssl_handshake_timeout=config.handshake_timeout_s if tls else None,
                )
        except TimeoutError:
            raise _ConnectFailed(f"connect timed out after {config.connect_timeout_s} s") from None
        except (OSError, ValueError) as error:  # ValueError: e.g. an unencodable host name
            if isinstance(error, ssl.SSLError):
                # The listener's certificate is not from our CA, or it refused ours.
                raise self._auth_failed(f"TLS handshake failed: {_tls_reason(error)}") from None
            if is_exhaustion(error):
                # Out of descriptors, not a peer problem: say so, even while the peer is
                # already reported unreachable.
                EXHAUSTION.record("peer_connect", error)
            raise _ConnectFailed(f"connect failed: {error}") from None
        if tls is not None:
            named = certificate_node_ids(transport.get_extra_info("peercert"))
            if self._peer.node_id not in named:
                # Whoever listens at this address is not the node we mean to reach.
                protocol.abort("wrong certificate")
                whose = ", ".join(str(n) for n in sorted(named)) or "no node"
                raise self._auth_failed(
                    f"peer authentication failed: its certificate names {whose},"
                    f" not node {self._peer.node_id}"
                )
        self._protocol = protocol  # from here on, stop() can abort it
        protocol.write(handshake.first_frame())
        try:
            async with asyncio.timeout(config.handshake_timeout_s):
                failure = await protocol.reply
        except TimeoutError:
            failure = f"no handshake reply within {config.handshake_timeout_s} s"
        if failure is not None:
            if protocol.auth_failed:
                self._owner._counters["peer_auth_failures"] += 1
            protocol.abort(failure)
            self._protocol = None
            raise _ConnectFailed(failure)
        return protocol

    def _auth_failed(self, reason: str) -> _ConnectFailed:
        """Count a peer that failed TLS authentication and log it once per address and
        reason (the reachability log says only the first reason a peer went unreachable)."""
        self._owner._counters["peer_auth_failures"] += 1
        host, port = self._peer.address
        level = self._owner._refusal_log_level(host, reason)
        logger.log(level, "refused peer %d at %s:%d: %s", self._peer.node_id, host, port, reason)
        return _ConnectFailed(reason)

    async def _pump(self, protocol: _OutboundProtocol, address: tuple[str, int]) -> str | None:
        """Write until the connection fails (return why) or the address changes (None)."""
        config = self._owner.config
        while True:
            if protocol.lost_reason is not None:
                return protocol.lost_reason
            if self._peer.address != address:
                return None
            self._writable = protocol
            if protocol.write_paused:
                reason = await self._drain(protocol)
                if reason is not None:
                    return reason
            elif not self._queue:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(config.keepalive_interval_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    protocol.write(KEEPALIVE_FRAME)
            else:
                self._write_queue(protocol)

    async def _drain(self, protocol: _OutboundProtocol) -> str | None:
        """Wait for the peer to read the buffered bytes; None, or why the connection is
        given up. What was buffered counts as sent, or as dropped if given up."""
        drain_timeout_s = self._owner.config.drain_timeout_s
        try:
            async with asyncio.timeout(drain_timeout_s):
                await protocol.drain()
        except TimeoutError:
            reason: str | None = f"peer did not read a batch within {drain_timeout_s} s"
        except ConnectionError as error:
            reason = str(error) or "connection lost"
        else:
            reason = None
        if reason is None:
            self.sent_messages += self._unconfirmed_messages
            self.sent_bytes += self._unconfirmed_bytes
        else:
            self.dropped_messages += self._unconfirmed_messages
        self._unconfirmed_messages = self._unconfirmed_bytes = 0
        return reason


class _Peer:
    """Where a peer listens, and its two outbound lanes."""

    def __init__(self, owner: PeerTransport, node_id: int, address: tuple[str, int]) -> None:
        config = owner.config
        self.node_id = node_id
        self.address = address
        self.normal = _Outbound(
            owner, self, "normal", config.queue_messages_max, config.queue_bytes_max
        )
        self.bulk = _Outbound(
            owner, self, "bulk", config.bulk_queue_messages_max, config.bulk_queue_bytes_max
        )

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel both lanes; returns their writer tasks to await."""
        return [task for task in (self.normal.cancel(), self.bulk.cancel()) if task is not None]


# --- inbound -------------------------------------------------------------------------------


class _InboundProtocol(asyncio.Protocol):
    """One accepted connection: handshake, then frames handed to `on_message`."""

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._receiver = InboundConnection(
            cluster_id=owner.cluster_id,
            node_id=owner.node_id,
            is_known_peer=owner.is_known_peer,
            frame_bytes_max=owner.config.frame_bytes_max,
            pieced_message_bytes_max=owner.config.pieced_message_bytes_max,
            peer_secret=owner.peer_secret,
            pieces_budget=owner._pieces_budget,
        )
        self._peer_address = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._last_receive_time = 0.0
        self._closed = False
        tls = owner.tls_server_context
        self._tls = ServerTlsStream(tls) if tls is not None else None

    @property
    def peer_node_id(self) -> int | None:
        handshake = self._receiver.handshake
        return None if handshake is None else handshake.node_id

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        transport = self._transport = cast(asyncio.Transport, base_transport)  # see above
        self._peer_address = _format_address(transport.get_extra_info("peername"))
        owner = self._owner
        if not owner._accepting:
            # Accepted just before `stop` closed the server: nobody would close it later.
            self._closed = True
            transport.abort()
            return
        if len(owner._inbound) >= owner.config.inbound_connections_max:
            owner._counters["connection_limit_refusals"] += 1
            logger.warning(
                "closing connection from %s: already %d inbound connections",
                self._peer_address,
                len(owner._inbound),
            )
            self._closed = True
            transport.abort()
            return
        owner._inbound.add(self)
        owner._counters["accepted_connections"] += 1
        _set_nodelay(transport)
        self._timer = self._loop.call_later(
            owner.config.handshake_timeout_s, self._on_handshake_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_receive_time = self._loop.time()
        receiver = self._receiver
        tls = self._tls
        if tls is not None:
            data = self._decrypt(tls, data)
            if self._closed or not data:
                return
        try:
            payloads = receiver.receive_data(data)
        except PeerAuthError as error:
            self._owner._counters["peer_auth_failures"] += 1
            self._refuse(str(error))
            return
        except HandshakeError as error:
            self._refuse(str(error))
            return
        except FrameError as error:
            self._owner._counters["frame_errors"] += 1
            self._close(logging.WARNING, f"bad frame: {error}")
            return
        if receiver.outgoing:
            self._write(b"".join(receiver.outgoing))  # the challenge
            receiver.outgoing.clear()
        handshake = receiver.handshake
        if handshake is None:
            return
        node_id = handshake.node_id
        if receiver.accepted_now:
            self._accept(node_id)
        elif not self._owner.is_known_peer(node_id):
            # Membership is asked on every read, so a removed node is cut off at once.
            self._close(logging.INFO, f"node {node_id} is no longer a member")
            return
        received = self._owner._received.setdefault(node_id, [0, 0])
        received[1] += len(data)
        on_message = self._owner.on_message
        for payload in payloads:
            received[0] += 1
            try:
                on_message(node_id, payload)
            except Exception:
                # A bug in the handler, maybe triggered by this peer's bytes: losing this
                # connection is recoverable, losing the event loop is not.
                logger.exception(
                    "on_message failed for a payload from node %d at %s; closing the connection",
                    node_id,
                    self._peer_address,
                )
                self._close(logging.DEBUG, "on_message raised")
                return
            if self._closed:  # the handler stopped the transport
                return
        if tls is not None and tls.closed:
            self._close(logging.DEBUG, "the peer ended the TLS session")

    def _decrypt(self, tls: ServerTlsStream, data: bytes) -> bytes:
        """The plaintext in `data` (b"" during the TLS handshake); refuses the connection
        and returns b"" if the peer fails the handshake or breaks the stream."""
        was_done = tls.handshake_done
        try:
            plaintext = tls.receive(data)
        except ssl.SSLError as error:
            if was_done:
                self._owner._counters["frame_errors"] += 1
                self._close(logging.WARNING, f"broken TLS stream: {_tls_reason(error)}")
                return b""
            # No certificate, one from another CA, or not TLS at all: an outsider, or a
            # member configured without peer TLS. Refused before it can say anything.
            self._owner._counters["peer_auth_failures"] += 1
            self._owner._counters["refused_handshakes"] += 1
            reason = f"TLS handshake failed: {_tls_reason(error)}"
            level = self._owner._refusal_log_level(self._peer_address.rpartition(":")[0], reason)
            logger.log(level, "refused connection from %s: %s", self._peer_address, reason)
            self._closed = True
            assert self._transport is not None
            self._transport.write(tls.outgoing())  # the alert, so the dialer knows why
            self._transport.close()
            return b""
        self._flush_tls(tls)
        if tls.handshake_done and not was_done:
            self._receiver.certificate_node_ids = certificate_node_ids(tls.peer_certificate)
        return plaintext

    def _flush_tls(self, tls: ServerTlsStream) -> None:
        outgoing = tls.outgoing()
        if outgoing and self._transport is not None:
            self._transport.write(outgoing)

    def _write(self, data: bytes) -> None:
        """Send `data` to the dialer (only ever handshake frames), through TLS if on."""
        assert self._transport is not None
        if self._tls is None:
            self._transport.write(data)
            return
        self._tls.send(data)
        self._flush_tls(self._tls)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed and self._receiver.awaiting_proof:
            # A dialer that hangs up on our challenge found our proof wrong: it has another
            # secret (or none). Counted and logged here too, so the node it targets shows it.
            self._owner._counters["peer_auth_failures"] += 1
            reason = "closed the connection instead of proving the peer secret"
            level = self._owner._refusal_log_level(self._peer_address.rpartition(":")[0], reason)
            logger.log(level, "refused connection from %s: %s", self._peer_address, reason)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._receiver.release()  # its unfinished pieces no longer count against the budget
        self._owner._inbound.discard(self)
        logger.debug(
            "connection from %s (node %s) closed: %s",
            self._peer_address,
            self.peer_node_id,
            exc or "closed",
        )

    def close(self, reason: str) -> None:
        self._close(logging.DEBUG, reason)

    def _accept(self, node_id: int) -> None:
        assert self._transport is not None
        self._owner._counters["accepted_handshakes"] += 1
        self._write(encode_frame(encode_handshake_reply(HandshakeReply(accepted=True))))
        logger.debug("accepted connection from node %d at %s", node_id, self._peer_address)
        peer = self._owner._peers.get(node_id)
        if peer is not None:
            peer.normal.peer_is_up()
            peer.bulk.peer_is_up()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._owner.config.idle_timeout_s, self._on_idle_timer)

    def _refuse(self, reason: str) -> None:
        assert self._transport is not None
        self._owner._counters["refused_handshakes"] += 1
        level = self._owner._refusal_log_level(self._peer_address.rpartition(":")[0], reason)
        logger.log(level, "refused connection from %s: %s", self._peer_address, reason)
        # Tell the dialer why, so the misconfigured side can log it too; then close after
        # the reply is flushed (the peer's further bytes are ignored).
        reply = HandshakeReply(accepted=False, reason=reason)
        self._write(encode_frame(encode_handshake_reply(reply)))
        self._closed = True
        self._transport.close()

    def _close(self, level: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        logger.log(
            level,
            "closing connection from %s (node %s): %s",
            self._peer_address,
            self.peer_node_id,
            reason,
        )
        if self._transport is not None:
            self._transport.abort()

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        self._owner._counters["handshake_timeouts"] += 1
        self._close(
            logging.INFO,
            f"no handshake within {self._owner.config.handshake_timeout_s} s",
        )

    def _on_idle_timer(self) -> None:
        # One timer per connection, re-armed for the remaining time instead of being
        # cancelled and recreated on every read.
        idle_timeout_s = self._owner.config.idle_timeout_s
        remaining_s = self._last_receive_time + idle_timeout_s - self._loop.time()
        if remaining_s > 0:
            self._timer = self._loop.call_later(remaining_s, self._on_idle_timer)
            return
        self._timer = None
        self._owner._counters["idle_timeouts"] += 1
        self._close(logging.INFO, f"nothing received for {idle_timeout_s} s")


# --- the transport -------------------------------------------------------------------------


class PeerTransport:
    """Sends payloads to peers and hands received ones to `on_message`, over TCP.

    Args:
        node_id: this node's id (sent in handshakes; inbound handshakes must target it).
        cluster_id: the cluster's id; peers of another cluster are refused.
        listen_host, listen_port: where to accept peers. Port 0 picks a free port at the
            first `start`; later restarts reuse it so peers' address books stay right.
        on_message: called as `on_message(node_id, payload)` for each received payload, in
            arrival order, on the event loop. It must not block; if it raises, the
            connection the payload came on is closed.
        is_known_peer: whether a node id may connect; asked at every handshake and on every
            read, so membership may change at any time.
        config: limits and timeouts.
        rng: the source of reconnect jitter; pass a seeded one for reproducible runs.
        peer_secret: the cluster's shared secret: every connection, both ways, must prove
            it (issue #20). None runs unauthenticated, and such a node and one with a
            secret refuse each other.
        tls_server_context, tls_client_context: peer mutual TLS (`kvraft.tls`
            `peer_server_context` / `peer_client_context`), both or neither: every
            connection is TLS and each side's certificate must name its node id.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        listen_host: str,
        listen_port: int,
        on_message: Callable[[int, bytes], None],
        is_known_peer: Callable[[int], bool],
        *,
        config: TransportConfig | None = None,
        rng: random.Random | None = None,
        peer_secret: bytes | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        tls_client_context: ssl.SSLContext | None = None,
    ) -> None:
        if (tls_server_context is None) != (tls_client_context is None):
            raise ValueError("peer TLS needs both the server and the client context")
        if not 1 <= node_id <= NODE_ID_MAX:
            raise ValueError(f"node_id {node_id} is not in 1..{NODE_ID_MAX}")
        if not cluster_id or len(cluster_id.encode()) > CLUSTER_ID_BYTES_MAX:
            raise ValueError(f"cluster_id must be 1..{CLUSTER_ID_BYTES_MAX} UTF-8 bytes")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.on_message = on_message
        self.is_known_peer = is_known_peer
        self.config = config or TransportConfig()
        self.rng = rng or random.Random()
        if peer_secret is not None and len(peer_secret) < PEER_SECRET_BYTES_MIN:
            raise ValueError(f"peer_secret must be at least {PEER_SECRET_BYTES_MIN} bytes")
        self.peer_secret = peer_secret
        self.tls_server_context = tls_server_context
        self.tls_client_context = tls_client_context
        self._pieces_budget = PiecesBudget(self.config.pieces_buffered_bytes_max)
        self.on_peer_reachability: Callable[[int, bool, str, str], None] | None = None
        """Told `(peer_id, reachable, "host:port", reason)` once per change of a peer's
        reachability on the normal lane (the bulk lane's follows it): for the node's events."""
        self._server: asyncio.Server | None = None
        self._accepting = False
        self._peers: dict[int, _Peer] = {}
        self._inbound: set[_InboundProtocol] = set()
        self._received: dict[int, list[int]] = {}  # node id -> [messages, bytes]
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "accepted_connections",
                "accepted_handshakes",
                "refused_handshakes",
                "frame_errors",
                "handshake_timeouts",
                "idle_timeouts",
                "connection_limit_refusals",
                "unknown_peer_sends",
                "peer_auth_failures",
            ),
            0,
        )
        self._refusals_logged: set[tuple[str, str]] = set()
        self._cancelled_writers: set[asyncio.Task[None]] = set()

    @property
    def listen_port(self) -> int:
        """The port accepted on: the bound one once started with port 0."""
        return self._listen_port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen for peers and start dialing every known peer address."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        # Set before create_server, which may accept a connection before it returns.
        self._accepting = True
        self._server = await loop.create_server(
            lambda: _InboundProtocol(self),
            self.listen_host,
            self._listen_port,
            reuse_address=True,  # a restarted node must rebind despite TIME_WAIT sockets
        )
        sockets = self._server.sockets
        if self._listen_port == 0 and sockets:
            self._listen_port = sockets[0].getsockname()[1]
        logger.info(
            "node %d listening for peers on %s:%d", self.node_id, self.listen_host, self.listen_port
        )
        for peer in self._peers.values():
            peer.normal.start()

    async def stop(self) -> None:
        """Stop listening, close every connection and drop everything queued."""
        server, self._server = self._server, None
        if server is None:
            return
        self._accepting = False
        server.close()
        for peer in self._peers.values():
            self._cancelled_writers.update(peer.cancel())
        await self._await_cancelled_writers()
        await server.wait_closed()
        # A connection the loop had accepted just before `close` gets its `connection_made`
        # one or two loop turns later (asyncio creates the transport in a task); give it
        # those turns so it is aborted there, instead of outliving the event loop.
        for _ in range(2):
            await asyncio.sleep(0)
        for connection in list(self._inbound):
            connection.close("transport stopped")

    async def _await_cancelled_writers(self) -> None:
        tasks, self._cancelled_writers = self._cancelled_writers, set()
        # return_exceptions: the writers end in CancelledError, which is not our cancellation.
        await asyncio.gather(*tasks, return_exceptions=True)

    def set_peer_address(self, node_id: int, host: str, port: int) -> None:
        """Add a peer, or move it: its connections are redone to the new address."""
        if node_id == self.node_id:
            raise ValueError("a node does not send to itself")
        if not 1 <= node_id <= NODE_ID_MAX or not host or not 1 <= port <= 65535:
            raise ValueError(f"bad peer address: node {node_id} at {host!r}:{port}")
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(self, node_id, (host, port))
            if self.running:
                peer.normal.start()
        elif peer.address != (host, port):
            peer.address = (host, port)
            peer.normal.address_changed()
            peer.bulk.address_changed()

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: close its outbound connections and drop what was queued for it."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            # The connections are aborted now; the cancelled writer tasks are kept so that
            # `stop` can await them and none is left pending when the loop ends.
            self._cancelled_writers.update(peer.cancel())

    def send(self, node_id: int, payload: bytes, bulk: bool = False) -> bool:
        """Queue `payload` for `node_id` without waiting; False if it was dropped.

        Dropped means: no address known for the peer, the transport is not running, or the
        lane's queue is full. `bulk=True` puts the payload on the peer's second connection,
        for large payloads (InstallSnapshot) that must not delay the others. Raises
        `ValueError` for an empty payload (reserved for keepalives) or one larger than
        `config.pieced_message_bytes_max` (no peer would accept it). A payload larger than
        a frame goes in pieces (`split_into_pieces`), queued all or none.
        """
        limit = self.config.pieced_message_bytes_max
        if not payload or len(payload) > limit:
            raise ValueError(f"payload of {len(payload)} bytes is not in 1..{limit}")
        peer = self._peers.get(node_id)
        if peer is None:
            self._counters["unknown_peer_sends"] += 1
            return False
        frames = split_into_pieces(payload, self.config.frame_bytes_max)
        if bulk:
            if self.running:
                peer.bulk.start()  # the bulk lane connects on first use
            return peer.bulk.offer(frames)
        return peer.normal.offer(frames)

    async def send_parts(self, node_id: int, parts: Sequence[bytes], bulk: bool = False) -> bool:
        """`send(node_id, b"".join(parts), bulk)`, without the join: a payload larger than a
        frame is cut into its pieces one frame at a time, letting the loop run between two
        (a 200 MiB snapshot copied at once held the loop for most of a second, past the
        election timeout). Queued all or none once every piece is made."""
        size = sum(len(part) for part in parts)
        limit = self.config.pieced_message_bytes_max
        if not size or size > limit:
            raise ValueError(f"payload of {size} bytes is not in 1..{limit}")
        if node_id not in self._peers:
            self._counters["unknown_peer_sends"] += 1
            return False
        frames: list[bytes] = []
        for frame in iter_pieces(parts, self.config.frame_bytes_max):
            frames.append(frame)
            await asyncio.sleep(0)
        peer = self._peers.get(node_id)  # it may have been removed meanwhile
        if peer is None:
            self._counters["unknown_peer_sends"] += 1
            return False
        if bulk:
            if self.running:
                peer.bulk.start()
            return peer.bulk.offer(frames)
        return peer.normal.offer(frames)

    def bulk_pending(self, node_id: int) -> bool:
        """Whether the peer's bulk lane still holds a payload not yet handed to the kernel
        in full (queued, or written but waiting for the peer to read)."""
        peer = self._peers.get(node_id)
        return peer is not None and peer.bulk.pending

    def flush(self, node_id: int | None = None) -> None:
        """See `kvraft.transport.Transport.flush` (normal lanes; bulk ones go at their pace)."""
        if node_id is not None:
            peer = self._peers.get(node_id)
            if peer is not None:
                peer.normal.flush()
            return
        for peer in self._peers.values():
            peer.normal.flush()

    def peer_stats(self) -> dict[int, dict[str, int]]:
        """Counters per peer for metrics: the normal lane's, the bulk lane's (prefixed
        `bulk_`) and what was received from the peer."""
        # Every entry has every key, also for a node we only receive from (it may be
        # missing from our address book), so metrics code can index without checks.
        keys = (
            *_Outbound.STAT_KEYS,
            *(f"bulk_{key}" for key in _Outbound.STAT_KEYS),
            "received_messages",
            "received_bytes",
        )
        stats: dict[int, dict[str, int]] = {}
        for node_id in self._peers.keys() | self._received.keys():
            entry = stats[node_id] = dict.fromkeys(keys, 0)
            peer = self._peers.get(node_id)
            if peer is not None:
                entry.update(peer.normal.stats())
                entry.update({f"bulk_{k}": value for k, value in peer.bulk.stats().items()})
            entry["received_messages"], entry["received_bytes"] = self._received.get(
                node_id, (0, 0)
            )
        return stats

    def server_stats(self) -> dict[str, int]:
        """Counters of the accepting side (handshakes refused, timeouts, ...) for metrics."""
        return {
            **self._counters,
            "inbound_connections": len(self._inbound),
            "pieces_buffered_bytes": self._pieces_budget.bytes_held,
            "peer_auth_enabled": int(self.peer_secret is not None),
            "peer_tls_enabled": int(self.tls_server_context is not None),
        }

    def _refusal_log_level(self, host: str, reason: str) -> int:
        """WARNING the first time a host is refused for a reason, DEBUG when it retries."""
        key = (host, reason)
        if key in self._refusals_logged:
            return logging.DEBUG
        if len(self._refusals_logged) >= REFUSAL_LOG_KEYS_MAX:
            self._refusals_logged.clear()
        self._refusals_logged.add(key)
        return logging.WARNING
