"""The in-memory twin of `PeerTransport`: the same API, delivery by `loop.call_soon`.

Tests of the daemon (and anything else that wants real asyncio scheduling
without sockets) create one `MemoryNetwork` and a `MemoryTransport` per node on
it. A payload is handed to the receiver's `on_message` on a later turn of the
event loop, never inside `send`, so code that works here cannot rely on
re-entrant delivery that TCP would never give it. Like TCP, each lane keeps
order, a peer's queue is bounded (payloads in flight count against it), and a
cut link, a stopped node or an unknown sender loses the payload silently.
`disconnect(a, b)` / `connect(a, b)` cut and heal links; payloads already in
flight on a link that is cut are lost, as they would be on a real network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from kvraft.transport.frames import PIECED_MESSAGE_BYTES_MAX
from kvraft.transport.tcp import BULK_QUEUE_MESSAGES_MAX, PEER_QUEUE_MESSAGES_MAX

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """Links between in-memory transports, all connected until a test cuts them."""

    def __init__(self) -> None:
        self._transports: dict[int, MemoryTransport] = {}
        self._cut_links: set[tuple[int, int]] = set()  # (source, target): directed

    def _register(self, transport: MemoryTransport) -> None:
        if transport.node_id in self._transports:
            raise ValueError(f"node {transport.node_id} already has a transport on this network")
        self._transports[transport.node_id] = transport

    def disconnect(self, a: int, b: int, *, one_way: bool = False) -> None:
        """Cut the link a -> b, and b -> a too unless `one_way`."""
        self._cut_links.add((a, b))
        if not one_way:
            self._cut_links.add((b, a))

    def connect(self, a: int, b: int, *, one_way: bool = False) -> None:
        """Heal the link a -> b, and b -> a too unless `one_way`."""
        self._cut_links.discard((a, b))
        if not one_way:
            self._cut_links.discard((b, a))

    def is_connected(self, source: int, target: int) -> bool:
        """Whether a payload from `source` can currently reach `target`."""
        return (source, target) not in self._cut_links

    def _deliver(self, source: int, target: int, payload: bytes, bulk: bool) -> None:
        sender = self._transports[source]
        sender._in_flight_done(target, bulk)
        receiver = self._transports.get(target)
        if (
            not sender.running
            or receiver is None
            or not receiver.running
            or not self.is_connected(source, target)
            or not receiver._is_known_peer(source)
        ):
            sender._lost(target)
            return
        receiver._receive(source, payload)


class MemoryTransport:
    """One node's end of a `MemoryNetwork`, with `PeerTransport`'s sending API.

    Args:
        network: the network to join (one transport per node id).
        node_id: this node's id.
        on_message: called as `on_message(source_node_id, payload)` on the event loop.
        is_known_peer: whether to accept payloads from a node id, asked at each delivery.
        queue_messages_max, bulk_queue_messages_max: the most payloads in flight per
            peer and lane; beyond them `send` drops, as a full TCP queue would.
        message_bytes_max: the largest payload `send` accepts (a TCP transport sends one
            larger than a frame in pieces, up to its `pieced_message_bytes_max`).
    """

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: int,
        on_message: Callable[[int, bytes], None],
        is_known_peer: Callable[[int], bool],
        *,
        queue_messages_max: int = PEER_QUEUE_MESSAGES_MAX,
        bulk_queue_messages_max: int = BULK_QUEUE_MESSAGES_MAX,
        message_bytes_max: int = PIECED_MESSAGE_BYTES_MAX,
    ) -> None:
        self.node_id = node_id
        self._network = network
        self._on_message = on_message
        self._is_known_peer = is_known_peer
        self._queue_messages_max = queue_messages_max
        self._bulk_queue_messages_max = bulk_queue_messages_max
        self._message_bytes_max = message_bytes_max
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peer_addresses: dict[int, tuple[str, int]] = {}
        self._in_flight: dict[tuple[int, bool], int] = {}  # (target, bulk) -> payloads
        self._stats: dict[int, dict[str, int]] = {}
        network._register(self)

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        # Payloads in flight from or to this node are lost at delivery, as on a real close.
        self._loop = None

    def set_peer_address(self, node_id: int, host: str, port: int) -> None:
        """Make `node_id` a peer; the address is only recorded, as the network needs none."""
        if node_id == self.node_id:
            raise ValueError("a node does not send to itself")
        self._peer_addresses[node_id] = (host, port)

    def remove_peer(self, node_id: int) -> None:
        self._peer_addresses.pop(node_id, None)

    def send(self, node_id: int, payload: bytes, bulk: bool = False) -> bool:
        """Schedule delivery of `payload` to `node_id`; False if it was dropped at once.

        Same contract as `PeerTransport.send`, including `ValueError` for an empty or
        oversized payload.
        """
        if not payload or len(payload) > self._message_bytes_max:
            raise ValueError(
                f"payload of {len(payload)} bytes is not in 1..{self._message_bytes_max}"
            )
        if node_id not in self._peer_addresses:
            return False
        stats = self._peer_stats(node_id)
        in_flight = self._in_flight.get((node_id, bulk), 0)
        limit = self._bulk_queue_messages_max if bulk else self._queue_messages_max
        loop = self._loop
        if loop is None or in_flight >= limit:
            stats["dropped_messages"] += 1
            return False
        self._in_flight[(node_id, bulk)] = in_flight + 1
        stats["sent_messages"] += 1
        stats["sent_bytes"] += len(payload)
        loop.call_soon(self._network._deliver, self.node_id, node_id, payload, bulk)
        return True

    async def send_parts(self, node_id: int, parts: Sequence[bytes], bulk: bool = False) -> bool:
        """`send(node_id, b"".join(parts), bulk)`."""
        return self.send(node_id, b"".join(parts), bulk)

    def bulk_pending(self, node_id: int) -> bool:
        """Whether a bulk payload to `node_id` is still in flight."""
        return self._in_flight.get((node_id, True), 0) > 0

    def flush(self, node_id: int | None = None) -> None:
        """Nothing to do: every send is already scheduled for delivery."""

    def peer_stats(self) -> dict[int, dict[str, int]]:
        """Counters per peer: sent, dropped (at send or lost in flight), received."""
        return {node_id: dict(stats) for node_id, stats in self._stats.items()}

    def _peer_stats(self, node_id: int) -> dict[str, int]:
        stats = self._stats.get(node_id)
        if stats is None:
            stats = self._stats[node_id] = dict.fromkeys(
                (
                    "sent_messages",
                    "sent_bytes",
                    "dropped_messages",
                    "received_messages",
                    "received_bytes",
                ),
                0,
            )
        return stats

    def _in_flight_done(self, target: int, bulk: bool) -> None:
        self._in_flight[(target, bulk)] -= 1

    def _lost(self, target: int) -> None:
        self._peer_stats(target)["dropped_messages"] += 1

    def _receive(self, source: int, payload: bytes) -> None:
        stats = self._peer_stats(source)
        stats["received_messages"] += 1
        stats["received_bytes"] += len(payload)
        self._on_message(source, payload)
