"""The peer transport seam: moves opaque payloads between kvraft nodes.

`Transport` is what the daemon's driver loop needs from it; `PeerTransport`
(TCP, `tcp.py`) and `MemoryTransport` (`memory.py`) both provide it. The wire
format lives, without IO, in `frames.py`. Payloads are opaque here: the daemon
encodes Raft messages with `kvraft.raft.codec` before `send` and decodes them in
its `on_message` callback. The node id passed to `on_message` is the one the
peer proved in its handshake, so the daemon can check it against the decoded
message's `source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvraft.transport.frames import FRAME_BYTES_MAX, FrameError, HandshakeError, PeerProtocolError
from kvraft.transport.memory import MemoryNetwork, MemoryTransport
from kvraft.transport.tcp import PeerTransport, TransportConfig

__all__ = [
    "FRAME_BYTES_MAX",
    "FrameError",
    "HandshakeError",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerProtocolError",
    "PeerTransport",
    "Transport",
    "TransportConfig",
]


class Transport(Protocol):
    """What the driver loop uses; see `PeerTransport` for the full contract."""

    async def start(self) -> None:
        """Begin accepting peers and dialing known peer addresses."""

    async def stop(self) -> None:
        """Close every connection and drop everything queued."""

    def set_peer_address(self, node_id: int, host: str, port: int) -> None:
        """Add a peer or move it to a new address."""

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer and drop what was queued for it."""

    def send(self, node_id: int, payload: bytes, bulk: bool = False) -> bool:
        """Queue a payload without waiting; False if dropped (queue full, peer unknown)."""

    async def send_parts(self, node_id: int, parts: Sequence[bytes], bulk: bool = False) -> bool:
        """`send` of the payload `b"".join(parts)`, made without holding the loop for long:
        for a large payload (a snapshot)."""

    def bulk_pending(self, node_id: int) -> bool:
        """Whether a payload on the bulk lane to `node_id` is still queued or in flight."""

    def flush(self, node_id: int | None = None) -> None:
        """Hand what is queued (for `node_id`, or for every peer) to the connections now
        rather than at the end of this loop iteration (a follower's acknowledgement must
        not wait for its applying)."""

    def peer_stats(self) -> dict[int, dict[str, int]]:
        """Counters per peer, for metrics."""
