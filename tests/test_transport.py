"""Tests for kvraft.transport: PeerTransport over real TCP on loopback, and MemoryTransport.

Every TCP test uses ephemeral ports and small timeouts. Waiting is always for an event
or a counter, with a deadline; no test depends on how long something takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import msgpack
import pytest

from kvraft.transport import MemoryNetwork, MemoryTransport, PeerTransport, Transport
from kvraft.transport.frames import (
    KEEPALIVE_FRAME,
    PIECE_MARKER,
    PROTOCOL_VERSION,
    Handshake,
    HandshakeReply,
    OutboundHandshake,
    decode_handshake,
    decode_handshake_reply,
    encode_frame,
    encode_handshake_reply,
)
from kvraft.transport.tcp import (
    REFUSAL_LOG_KEYS_MAX,
    TransportConfig,
    _OutboundProtocol,
    reconnect_delay_s,
)

CLUSTER_ID = "test-cluster"
DEADLINE_S = 10.0
"""The longest any test waits for something that should happen in milliseconds."""

FAST = TransportConfig(
    connect_timeout_s=2.0,
    handshake_timeout_s=2.0,
    idle_timeout_s=5.0,
    keepalive_interval_s=1.0,
    reconnect_delay_s_min=0.01,
    reconnect_delay_s_max=0.05,
)


async def eventually(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Poll `predicate` until it holds; fail the test at the deadline."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


class Inbox:
    """An `on_message` callback that records what arrives and lets a test wait for it."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, node_id: int, payload: bytes) -> None:
        self.messages.append((node_id, payload))
        self._changed.set()

    def payloads(self, node_id: int | None = None) -> list[bytes]:
        return [p for n, p in self.messages if node_id is None or n == node_id]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_count(self, count: int) -> None:
        await self.wait_for(lambda: len(self.messages) >= count)


class Harness:
    """Creates transports, raw servers and raw clients, and closes them all at the end."""

    def __init__(self) -> None:
        self.transports: list[PeerTransport] = []
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.accepted: list[asyncio.BaseTransport] = []

    def transport(
        self,
        node_id: int,
        *,
        members: set[int] | None = None,
        config: TransportConfig = FAST,
        host: str = "127.0.0.1",
        port: int = 0,
        cluster_id: str = CLUSTER_ID,
        inbox: Callable[[int, bytes], None] | None = None,
        peer_secret: bytes | None = None,
    ) -> tuple[PeerTransport, Inbox]:
        recorder = Inbox()
        known = members if members is not None else {1, 2, 3, 4}
        transport = PeerTransport(
            node_id,
            cluster_id,
            host,
            port,
            inbox or recorder,
            known.__contains__,
            config=config,
            rng=random.Random(node_id),
            peer_secret=peer_secret,
        )
        self.transports.append(transport)
        return transport, recorder

    async def started_pair(
        self, config: TransportConfig = FAST
    ) -> tuple[PeerTransport, Inbox, PeerTransport, Inbox]:
        """Nodes 1 and 2, started, each knowing the other's address."""
        a, a_inbox = self.transport(1, config=config)
        b, b_inbox = self.transport(2, config=config)
        await a.start()
        await b.start()
        a.set_peer_address(2, "127.0.0.1", b.listen_port)
        b.set_peer_address(1, "127.0.0.1", a.listen_port)
        return a, a_inbox, b, b_inbox

    async def raw_server(
        self, on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
    ) -> int:
        accepted = self.accepted

        class Tracking(asyncio.StreamReaderProtocol):
            # Python 3.11's Server.close() leaves accepted connections open, and a handler
            # may not have run yet when the test ends: remember each one as it arrives.
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.append(transport)
                super().connection_made(transport)

        def factory() -> Tracking:
            return Tracking(asyncio.StreamReader(), on_connect)

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def raw_client(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer

    def _has_accepted(self, address: object) -> bool:
        return any(t.get_extra_info("peername") == address for t in self.accepted)

    async def close(self) -> None:
        for transport in self.transports:
            await transport.stop()
        # A raw server may have connections the kernel accepted that asyncio has not yet
        # handed to a protocol. Accepts are handled in order, so once a last connection of
        # our own shows up, every earlier one has been tracked and can be aborted below.
        for server in self.servers:
            if not server.sockets:
                continue
            _, sentinel = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            self.writers.append(sentinel)
            await eventually(partial(self._has_accepted, sentinel.get_extra_info("sockname")))
        for writer in self.writers:
            writer.transport.abort()
        for accepted in self.accepted:
            assert isinstance(accepted, asyncio.Transport)
            accepted.abort()
        for server in self.servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(DEADLINE_S):
        prefix = await reader.readexactly(4)
        return await reader.readexactly(struct.unpack(">I", prefix)[0])


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the other side sends until it closes (a reset counts as closing)."""
    async with asyncio.timeout(DEADLINE_S):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def handshake_frame(node_id: int = 3, target_node_id: int = 1, **overrides: object) -> bytes:
    fields: dict[str, object] = {
        "protocol_version": PROTOCOL_VERSION,
        "cluster_id": CLUSTER_ID,
        "node_id": node_id,
        "target_node_id": target_node_id,
    }
    fields.update(overrides)
    return encode_frame(msgpack.packb(fields, use_bin_type=True))


def tcp_nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# --- delivery ------------------------------------------------------------------------------


async def test_two_transports_exchange_thousands_of_messages_in_order(harness: Harness) -> None:
    a, a_inbox, b, b_inbox = await harness.started_pair()
    rounds, per_round = 5, 1000
    for round_number in range(rounds):
        for index in range(per_round):
            number = round_number * per_round + index
            assert a.send(2, b"a->b %d" % number)
            assert b.send(1, b"b->a %d" % number)
        await b_inbox.wait_for_count((round_number + 1) * per_round)
        await a_inbox.wait_for_count((round_number + 1) * per_round)
    total = rounds * per_round
    assert b_inbox.messages == [(1, b"a->b %d" % n) for n in range(total)]
    assert a_inbox.messages == [(2, b"b->a %d" % n) for n in range(total)]
    await eventually(lambda: a.peer_stats()[2]["sent_messages"] == total)
    stats = a.peer_stats()[2]
    assert stats["dropped_messages"] == 0
    assert stats["connects"] == 1
    assert b.peer_stats()[1]["received_messages"] == total


async def test_a_restarted_peer_is_reconnected_and_delivery_resumes(harness: Harness) -> None:
    a, _, b, b_inbox = await harness.started_pair()
    assert a.send(2, b"before")
    await b_inbox.wait_for_count(1)
    port = b.listen_port

    await b.stop()
    await b.start()
    assert b.listen_port == port

    # Messages sent while the link is down may be lost (Raft resends); keep sending until
    # one arrives, as the leader's next heartbeat would.
    async with asyncio.timeout(DEADLINE_S):
        number = 0
        while not any(p.startswith(b"after") for p in b_inbox.payloads()):
            a.send(2, b"after %d" % number)
            number += 1
            await asyncio.sleep(0.01)
    assert a.send(2, b"last")
    await b_inbox.wait_for(lambda: b_inbox.payloads()[-1] == b"last")
    after = [p for p in b_inbox.payloads() if p.startswith(b"after")]
    assert after == sorted(after, key=lambda p: int(p.split()[1]))
    assert a.peer_stats()[2]["connects"] >= 2


async def test_a_large_bulk_payload_does_not_delay_small_payloads(harness: Harness) -> None:
    a, _, _, b_inbox = await harness.started_pair()
    # Connect both lanes first so the comparison is about transfer, not dialing.
    assert a.send(2, b"warm-bulk", bulk=True)
    assert a.send(2, b"warm")
    await b_inbox.wait_for_count(2)

    snapshot = b"s" * (24 * 1024 * 1024)
    assert a.send(2, snapshot, bulk=True)
    assert a.send(2, b"heartbeat")
    await b_inbox.wait_for_count(4)
    arrived = [p if len(p) < 100 else b"<snapshot>" for p in b_inbox.payloads()[2:]]
    assert arrived == [b"heartbeat", b"<snapshot>"]
    assert b_inbox.payloads()[3] == snapshot


async def test_the_writer_batches_what_is_queued_in_one_connection(harness: Harness) -> None:
    a, _, _, b_inbox = await harness.started_pair()
    for index in range(100):
        assert a.send(2, b"m%d" % index)
    await b_inbox.wait_for_count(100)
    assert b_inbox.payloads() == [b"m%d" % index for index in range(100)]
    assert a.peer_stats()[2]["connects"] == 1


async def test_flush_hands_one_peers_queue_to_its_connection_at_once(harness: Harness) -> None:
    # What the leader relies on to send each follower's AppendEntries as soon as it is
    # encoded: flush(2) writes peer 2's queue now, and leaves peer 3's for later.
    a, _ = harness.transport(1)
    b, b_inbox = harness.transport(2)
    c, c_inbox = harness.transport(3)
    for transport in (a, b, c):
        await transport.start()
    a.set_peer_address(2, "127.0.0.1", b.listen_port)
    a.set_peer_address(3, "127.0.0.1", c.listen_port)
    assert a.send(2, b"warm") and a.send(3, b"warm")  # connected, handshakes done
    await b_inbox.wait_for_count(1)
    await c_inbox.wait_for_count(1)
    await eventually(lambda: all(a.peer_stats()[n]["sent_messages"] == 1 for n in (2, 3)))

    assert a.send(2, b"to 2") and a.send(3, b"to 3")
    a.flush(2)
    stats = a.peer_stats()
    assert (stats[2]["sent_messages"], stats[3]["sent_messages"]) == (2, 1)
    a.flush()
    assert a.peer_stats()[3]["sent_messages"] == 2
    await b_inbox.wait_for_count(2)
    await c_inbox.wait_for_count(2)
    assert (b_inbox.payloads()[-1], c_inbox.payloads()[-1]) == (b"to 2", b"to 3")
    a.flush(4)  # a peer without an address: nothing to write, no error


# --- handshakes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (handshake_frame(protocol_version=PROTOCOL_VERSION + 1), "protocol version"),
        (handshake_frame(cluster_id="another-cluster"), "cluster id is not this cluster's"),
        (handshake_frame(node_id=9), "node id 9 is not a member"),
        (handshake_frame(target_node_id=4), "addressed to node 4"),
        (handshake_frame(node_id=1), "own id"),
        (encode_frame(b"\xc1 not msgpack"), "not valid msgpack"),
    ],
    ids=["version", "cluster", "unknown-node", "wrong-target", "own-id", "not-msgpack"],
)
async def test_a_bad_handshake_is_refused_with_its_reason_and_good_peers_are_still_served(
    harness: Harness, caplog: pytest.LogCaptureFixture, frame: bytes, reason: str
) -> None:
    a, a_inbox, b, _ = await harness.started_pair()
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(frame + encode_frame(b"must never be delivered"))

    reply = decode_handshake_reply(await read_frame(reader))
    assert not reply.accepted
    assert reason in reply.reason
    assert await read_until_closed(reader) == b""

    client_host, client_port = writer.get_extra_info("sockname")[:2]
    client_address = f"{client_host}:{client_port}"
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.WARNING
    assert client_address in refusals[0].getMessage()
    assert reason in refusals[0].getMessage()
    assert a.server_stats()["refused_handshakes"] == 1

    assert b.send(1, b"still served")
    await a_inbox.wait_for(lambda: b"still served" in a_inbox.payloads())
    assert b"must never be delivered" not in a_inbox.payloads()


async def test_a_node_of_another_cluster_is_refused_and_both_sides_log_it_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvraft.transport.tcp")
    a, a_inbox = harness.transport(1, members={1, 3})
    stranger, _ = harness.transport(3, cluster_id="another-cluster")
    await a.start()
    await stranger.start()
    stranger.set_peer_address(1, "127.0.0.1", a.listen_port)
    stranger.send(1, b"hello")

    await eventually(lambda: stranger.peer_stats()[1]["connect_failures"] >= 3)
    unreachable = [r for r in caplog.records if "peer 1 at" in r.getMessage()]
    assert len(unreachable) == 1
    assert "refused by peer: the handshake's cluster id is not" in unreachable[0].getMessage()
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING]  # retries log at DEBUG
    assert a.server_stats()["refused_handshakes"] >= 3
    assert a_inbox.messages == []


async def test_the_dialer_sends_a_handshake_naming_both_ends_from_its_listen_address(
    harness: Harness,
) -> None:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("cannot bind 127.0.0.2 on this machine")
    seen: asyncio.Future[tuple[str, Handshake]] = asyncio.get_running_loop().create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = decode_handshake(await read_frame(reader))
        writer.write(encode_frame(encode_handshake_reply(HandshakeReply(accepted=True))))
        if not seen.done():
            seen.set_result((writer.get_extra_info("peername")[0], handshake))

    port = await harness.raw_server(peer)
    a, _ = harness.transport(1, host="127.0.0.2")
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    async with asyncio.timeout(DEADLINE_S):
        source_host, handshake = await seen
    assert source_host == "127.0.0.2"
    assert handshake == Handshake(PROTOCOL_VERSION, CLUSTER_ID, node_id=1, target_node_id=2)


async def test_a_dialer_whose_handshake_gets_no_reply_gives_up_and_retries(
    harness: Harness,
) -> None:
    async def silent_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    port = await harness.raw_server(silent_peer)
    a, _ = harness.transport(1, config=TransportConfig(handshake_timeout_s=0.1))
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    await eventually(lambda: a.peer_stats()[2]["connect_failures"] >= 2)
    assert a.peer_stats()[2]["connects"] == 0


# --- hostile or broken inbound connections -------------------------------------------------


async def test_garbage_bytes_close_that_connection_only(harness: Harness) -> None:
    a, a_inbox, b, _ = await harness.started_pair()
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: kvraft\r\n\r\n")
    assert await read_until_closed(reader) == b""
    assert a.server_stats()["frame_errors"] == 1
    assert b.send(1, b"still served")
    await a_inbox.wait_for(lambda: a_inbox.payloads() == [b"still served"])


async def test_an_oversized_length_prefix_after_the_handshake_closes_that_connection_only(
    harness: Harness,
) -> None:
    config = TransportConfig(frame_bytes_max=1000)
    a, a_inbox, b, _ = await harness.started_pair(config)
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(handshake_frame(node_id=3))
    assert decode_handshake_reply(await read_frame(reader)).accepted
    writer.write(encode_frame(b"x" * 1000))  # at the limit: delivered
    await a_inbox.wait_for_count(1)
    writer.write(struct.pack(">I", 1001) + b"y" * 100)

    assert await read_until_closed(reader) == b""
    assert a_inbox.messages == [(3, b"x" * 1000)]
    assert a.server_stats()["frame_errors"] == 1
    assert b.send(1, b"still served")
    await a_inbox.wait_for(lambda: a_inbox.payloads()[-1] == b"still served")


async def test_a_message_larger_than_a_frame_arrives_whole_and_in_order(
    harness: Harness,
) -> None:
    config = dataclasses.replace(FAST, frame_bytes_max=1000, pieced_message_bytes_max=100_000)
    a, _, b, b_inbox = await harness.started_pair(config)
    large = bytes(range(256)) * 300  # 76,800 bytes: 77 pieces
    assert a.send(2, b"before")
    assert a.send(2, large)
    assert a.send(2, b"after")
    assert a.send(2, large[::-1], bulk=True)  # the bulk lane too, on its own connection
    await b_inbox.wait_for_count(4)
    normal = [payload for payload in b_inbox.payloads() if len(payload) < 100 or payload == large]
    assert normal == [b"before", large, b"after"]
    assert large[::-1] in b_inbox.payloads()
    assert b.server_stats()["frame_errors"] == 0


async def test_a_message_sent_in_parts_arrives_whole_and_the_loop_runs_between_its_frames(
    harness: Harness,
) -> None:
    # A leader's large snapshot: its head and its chunks, never joined into one payload, and
    # the loop free between two frames (one copy of 200 MiB held it past the election
    # timeout). While it is queued or in flight, `bulk_pending` says so.
    config = dataclasses.replace(FAST, frame_bytes_max=1000, pieced_message_bytes_max=100_000)
    a, _, _, b_inbox = await harness.started_pair(config)
    parts = [b"head", bytes(range(256)) * 100, b"", b"tail" * 1000]  # 29,604 bytes
    loop_turns = 0

    async def count_loop_turns() -> None:
        nonlocal loop_turns
        while True:
            loop_turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_loop_turns())
    try:
        assert not a.bulk_pending(2)
        assert await a.send_parts(2, parts, bulk=True)
        turns = loop_turns
    finally:
        counter.cancel()
    assert turns >= 29  # one per frame, about
    assert a.bulk_pending(2)
    await b_inbox.wait_for_count(1)
    assert b_inbox.payloads() == [b"".join(parts)]
    assert not a.bulk_pending(2)
    assert not await a.send_parts(9, parts)  # an unknown peer
    with pytest.raises(ValueError):
        await a.send_parts(2, [b"", b""])


async def test_the_rest_of_a_message_cut_by_a_lost_connection_is_not_sent_on_the_next(
    harness: Harness,
) -> None:
    first_frames: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decode_handshake(await read_frame(reader))
        writer.write(encode_frame(encode_handshake_reply(HandshakeReply(accepted=True))))
        if not first_frames:
            # The first connection dies early in the message: read the start of its first
            # piece (not the whole piece, or the stream reader would take in much more).
            async with asyncio.timeout(DEADLINE_S):
                first_frames.append((await reader.readexactly(6))[4:])
            writer.transport.abort()
        else:
            first_frames.append(await read_frame(reader))

    port = await harness.raw_server(peer)
    config = dataclasses.replace(FAST, frame_bytes_max=1024 * 1024)
    a, _ = harness.transport(1, config=config)
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    await eventually(lambda: a.peer_stats()[2]["connected"] == 1)
    assert a.send(2, b"L" * (64 * 1024 * 1024))  # 64 pieces: more than the sockets buffer
    await eventually(lambda: a.peer_stats()[2]["disconnects"] == 1)
    assert a.send(2, b"after")
    await eventually(lambda: len(first_frames) == 2)
    assert first_frames[0][0] == PIECE_MARKER
    assert first_frames[1] == b"after"  # not a piece of the message the first connection cut


async def test_a_connection_without_a_handshake_is_closed_after_the_handshake_timeout(
    harness: Harness,
) -> None:
    a, _ = harness.transport(1, config=TransportConfig(handshake_timeout_s=0.2))
    await a.start()
    silent_reader, _ = await harness.raw_client(a.listen_port)
    # Bytes that never complete a handshake do not extend the deadline (slow loris).
    trickle_reader, trickle_writer = await harness.raw_client(a.listen_port)
    trickle_writer.write(handshake_frame()[:3])

    assert await read_until_closed(silent_reader) == b""
    assert await read_until_closed(trickle_reader) == b""
    assert a.server_stats()["handshake_timeouts"] == 2


async def test_an_accepted_connection_that_goes_silent_is_closed_after_the_idle_timeout(
    harness: Harness,
) -> None:
    config = TransportConfig(idle_timeout_s=0.3, keepalive_interval_s=0.1)
    a, a_inbox = harness.transport(1, config=config)
    await a.start()
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(handshake_frame(node_id=3) + encode_frame(b"then nothing"))
    assert decode_handshake_reply(await read_frame(reader)).accepted

    assert await read_until_closed(reader) == b""
    assert a_inbox.messages == [(3, b"then nothing")]
    assert a.server_stats()["idle_timeouts"] == 1


async def test_keepalives_keep_a_quiet_healthy_connection_open(harness: Harness) -> None:
    config = TransportConfig(idle_timeout_s=0.5, keepalive_interval_s=0.05)
    a, _, b, b_inbox = await harness.started_pair(config)
    assert a.send(2, b"once")
    await b_inbox.wait_for_count(1)
    bytes_after_message = b.peer_stats()[1]["received_bytes"]

    # 20 keepalives (4 bytes each) take at least 20 keepalive intervals: twice the idle timeout.
    await eventually(lambda: b.peer_stats()[1]["received_bytes"] >= bytes_after_message + 80)
    assert b.server_stats()["idle_timeouts"] == 0
    assert a.peer_stats()[2]["connects"] == 1
    assert a.peer_stats()[2]["disconnects"] == 0
    assert b_inbox.payloads() == [b"once"]


async def test_inbound_connections_beyond_the_limit_are_closed_at_once(harness: Harness) -> None:
    config = TransportConfig(inbound_connections_max=2, handshake_timeout_s=30.0)
    a, _ = harness.transport(1, config=config)
    await a.start()
    _, first_writer = await harness.raw_client(a.listen_port)
    await harness.raw_client(a.listen_port)
    await eventually(lambda: a.server_stats()["inbound_connections"] == 2)

    extra_reader, _ = await harness.raw_client(a.listen_port)
    assert await read_until_closed(extra_reader) == b""
    assert a.server_stats()["connection_limit_refusals"] == 1
    assert a.server_stats()["inbound_connections"] == 2

    first_writer.transport.abort()
    await eventually(lambda: a.server_stats()["inbound_connections"] == 1)
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(handshake_frame(node_id=3))
    assert decode_handshake_reply(await read_frame(reader)).accepted


async def test_a_failing_message_handler_costs_only_that_connection(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def handler(node_id: int, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        inbox(node_id, payload)

    a, _ = harness.transport(1)
    b, _ = harness.transport(2, inbox=handler)
    await a.start()
    await b.start()
    a.set_peer_address(2, "127.0.0.1", b.listen_port)
    assert a.send(2, b"boom")
    await eventually(lambda: a.peer_stats()[2]["disconnects"] == 1)
    assert any("on_message failed" in r.getMessage() for r in caplog.records)

    async with asyncio.timeout(DEADLINE_S):
        while not inbox.messages:
            a.send(2, b"after")
            await asyncio.sleep(0.01)
    assert set(inbox.payloads()) == {b"after"}


async def test_a_peer_removed_from_membership_is_cut_off_at_its_next_message(
    harness: Harness,
) -> None:
    members = {1, 2}
    a, _ = harness.transport(1)
    b, b_inbox = harness.transport(2, members=members)
    await a.start()
    await b.start()
    a.set_peer_address(2, "127.0.0.1", b.listen_port)
    assert a.send(2, b"one")
    await b_inbox.wait_for_count(1)

    members.discard(1)
    assert a.send(2, b"two")
    await eventually(lambda: a.peer_stats()[2]["disconnects"] == 1)
    await eventually(lambda: a.peer_stats()[2]["connect_failures"] >= 1)  # refused now
    assert b_inbox.payloads() == [b"one"]

    members.add(1)
    await eventually(lambda: a.peer_stats()[2]["connected"] == 1)
    assert a.send(2, b"three")
    await b_inbox.wait_for_count(2)
    assert b_inbox.payloads() == [b"one", b"three"]


# --- sending -------------------------------------------------------------------------------


async def test_a_full_queue_drops_instead_of_blocking(harness: Harness) -> None:
    async def never_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    port = await harness.raw_server(never_replies)
    config = TransportConfig(queue_messages_max=5, queue_bytes_max=1000, handshake_timeout_s=30)
    a, _ = harness.transport(1, config=config)
    await a.start()
    for node_id in (2, 3, 4):
        a.set_peer_address(node_id, "127.0.0.1", port)

    # The message bound, at its edge.
    assert [a.send(2, b"m") for _ in range(5)] == [True] * 5
    assert a.send(2, b"m") is False
    # The byte bound, at its edge.
    assert a.send(3, b"x" * 600)
    assert a.send(3, b"x" * 400)
    assert a.send(3, b"x") is False
    # An empty queue takes any payload that fits a frame, so big messages can always go.
    assert a.send(4, b"x" * 1500)
    assert a.send(4, b"x") is False

    stats = a.peer_stats()
    assert [stats[n]["dropped_messages"] for n in (2, 3, 4)] == [1, 1, 1]
    assert stats[2]["queued_messages"] == 5
    assert stats[3]["queued_bytes"] == 1000
    # The queues are still there after the writers had their chance to run.
    await eventually(lambda: a.peer_stats()[2]["connects"] == 0)
    assert a.peer_stats()[2]["queued_messages"] == 5


async def test_the_bulk_lane_has_its_own_small_queue(harness: Harness) -> None:
    async def never_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    port = await harness.raw_server(never_replies)
    config = TransportConfig(bulk_queue_messages_max=2, handshake_timeout_s=30)
    a, _ = harness.transport(1, config=config)
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    assert [a.send(2, b"snapshot", bulk=True) for _ in range(3)] == [True, True, False]
    assert a.send(2, b"heartbeat")  # the normal lane is unaffected
    stats = a.peer_stats()[2]
    assert (stats["bulk_dropped_messages"], stats["bulk_queued_messages"]) == (1, 2)
    assert (stats["dropped_messages"], stats["queued_messages"]) == (0, 1)


async def test_an_unreachable_peer_is_logged_once_and_its_queue_discarded(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvraft.transport.tcp")
    a, _ = harness.transport(1)
    b, b_inbox = harness.transport(2)
    await b.start()
    port = b.listen_port
    await b.stop()  # the port is now closed: connects are refused
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    assert all(a.send(2, b"stale %d" % n) for n in range(3))

    await eventually(lambda: a.peer_stats()[2]["connect_failures"] >= 3)
    assert a.peer_stats()[2]["dropped_messages"] >= 3
    assert a.peer_stats()[2]["queued_messages"] == 0
    messages = [r.getMessage() for r in caplog.records if "peer 2 at" in r.getMessage()]
    assert len(messages) == 1
    assert "unreachable" in messages[0]

    await b.start()
    await eventually(lambda: a.peer_stats()[2]["connected"] == 1)
    assert a.send(2, b"fresh")
    await b_inbox.wait_for_count(1)
    assert b_inbox.payloads() == [b"fresh"]
    messages = [r.getMessage() for r in caplog.records if "peer 2 at" in r.getMessage()]
    assert len(messages) == 2
    assert "reachable" in messages[1]
    assert "unreachable" not in messages[1]


async def test_a_peer_that_connects_to_us_is_redialed_at_once_not_after_the_backoff(
    harness: Harness,
) -> None:
    # A minute's backoff: without the redial, the connection could not come back in time.
    slow_retry = dataclasses.replace(FAST, reconnect_delay_s_min=60.0, reconnect_delay_s_max=60.0)
    a, _ = harness.transport(1, config=slow_retry)
    b, b_inbox = harness.transport(2)
    await b.start()
    port = b.listen_port
    await b.stop()  # b is down: a's first connect fails and a waits out its backoff
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    await eventually(lambda: a.peer_stats()[2]["connect_failures"] >= 1)

    await b.start()  # b restarts and speaks to a first, as a restarted node answers
    b.set_peer_address(1, "127.0.0.1", a.listen_port)
    assert b.send(1, b"I am back")
    await eventually(lambda: a.peer_stats()[2]["connected"] == 1)
    assert a.send(2, b"welcome back")
    await b_inbox.wait_for_count(1)
    assert b_inbox.payloads() == [b"welcome back"]


async def test_a_peer_that_stops_reading_is_dropped_after_the_drain_timeout(
    harness: Harness,
) -> None:
    async def accepts_then_never_reads(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_frame(reader)
        writer.write(encode_frame(encode_handshake_reply(HandshakeReply(accepted=True))))
        assert isinstance(writer.transport, asyncio.Transport)
        writer.transport.pause_reading()  # the kernel buffers fill, then the sender stalls

    port = await harness.raw_server(accepts_then_never_reads)
    a, _ = harness.transport(1, config=TransportConfig(drain_timeout_s=0.2))
    await a.start()
    a.set_peer_address(2, "127.0.0.1", port)
    await eventually(lambda: a.peer_stats()[2]["connected"] == 1)
    # Far more than loopback socket buffers hold, so the drain cannot finish.
    assert a.send(2, b"s" * (48 * 1024 * 1024))
    await eventually(lambda: a.peer_stats()[2]["disconnects"] >= 1)
    assert a.peer_stats()[2]["dropped_messages"] == 1
    assert a.peer_stats()[2]["sent_messages"] == 0


async def test_a_connect_that_hangs_fails_after_the_connect_timeout(harness: Harness) -> None:
    # A listener whose accept backlog is full drops new SYNs, so connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())  # in progress or done: either fills
        config = TransportConfig(connect_timeout_s=0.1, handshake_timeout_s=30.0)
        a, _ = harness.transport(1, config=config)
        await a.start()
        a.set_peer_address(2, "127.0.0.1", listener.getsockname()[1])
        await eventually(lambda: a.peer_stats()[2]["connect_failures"] >= 2)
        assert a.peer_stats()[2]["connects"] == 0
    finally:
        await harness.close()
        for filler in fillers:
            filler.close()
        listener.close()


def test_refused_hosts_are_remembered_up_to_a_bound() -> None:
    # White-box: the dedupe of refusal warnings must not grow without bound.
    transport = PeerTransport(1, CLUSTER_ID, "127.0.0.1", 0, Inbox(), lambda _: True)
    assert transport._refusal_log_level("10.0.0.1", "reason") == logging.WARNING
    assert transport._refusal_log_level("10.0.0.1", "reason") == logging.DEBUG
    for index in range(1, REFUSAL_LOG_KEYS_MAX):
        transport._refusal_log_level(f"10.0.1.{index}", "reason")
    assert transport._refusal_log_level("10.0.0.1", "reason") == logging.DEBUG
    transport._refusal_log_level("10.0.2.1", "reason")  # one past the bound: forget all
    assert transport._refusal_log_level("10.0.0.1", "reason") == logging.WARNING


class _ClosedUvloopTransport(asyncio.Transport):
    """What uvloop's transport does once closed but before `connection_lost` has run: a
    write raises RuntimeError ("the handler is closed")."""

    def is_closing(self) -> bool:
        return True

    def write(self, data: Any) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_a_write_to_a_closed_connection_is_dropped_quietly() -> None:
    # The chaos seed 12 run: a keepalive written to a connection the peer had just closed
    # raised from uvloop, and the writer task logged a traceback at ERROR and restarted.
    protocol = _OutboundProtocol(
        on_lost=lambda: None,
        handshake=OutboundHandshake(
            Handshake(protocol_version=1, cluster_id=CLUSTER_ID, node_id=1, target_node_id=2), None
        ),
    )
    protocol.connection_made(_ClosedUvloopTransport())
    protocol.write(KEEPALIVE_FRAME)  # no RuntimeError


async def test_send_refuses_what_it_cannot_deliver(harness: Harness) -> None:
    config = TransportConfig(frame_bytes_max=100, pieced_message_bytes_max=1000)
    a, _ = harness.transport(1, config=config)
    a.set_peer_address(2, "127.0.0.1", 9)
    assert a.send(2, b"not started") is False
    await a.start()
    assert a.send(3, b"no address") is False
    assert a.server_stats()["unknown_peer_sends"] == 1
    assert a.send(2, b"x" * 1000)  # in pieces
    with pytest.raises(ValueError):
        a.send(2, b"x" * 1001)
    with pytest.raises(ValueError):
        a.send(2, b"")  # empty frames are keepalives
    with pytest.raises(ValueError):
        a.set_peer_address(1, "127.0.0.1", 9)


async def test_a_peer_moved_to_a_new_address_is_dialed_there(harness: Harness) -> None:
    a, _, _, old_inbox = await harness.started_pair()
    assert a.send(2, b"to old")
    await old_inbox.wait_for_count(1)
    moved, moved_inbox = harness.transport(2)
    await moved.start()

    a.set_peer_address(2, "127.0.0.1", moved.listen_port)
    async with asyncio.timeout(DEADLINE_S):
        while not moved_inbox.messages:
            a.send(2, b"to new")
            await asyncio.sleep(0.01)
    assert set(moved_inbox.payloads()) == {b"to new"}

    a.remove_peer(2)
    assert a.send(2, b"to nobody") is False
    # Node 2 still dials us, so it may keep an entry, but nothing outbound remains.
    assert a.peer_stats().get(2, {}).get("connects", 0) == 0


async def test_nagle_is_disabled_on_both_ends_of_a_connection(harness: Harness) -> None:
    a, _, b, b_inbox = await harness.started_pair()
    assert a.send(2, b"x")
    await b_inbox.wait_for_count(1)
    # White-box: the sockets are not visible through the public API.
    outbound = a._peers[2].normal._protocol
    assert outbound is not None and outbound._transport is not None
    assert tcp_nodelay(outbound._transport.get_extra_info("socket"))
    inbound = [c for c in b._inbound if c.peer_node_id == 1]
    assert inbound and inbound[0]._transport is not None
    assert tcp_nodelay(inbound[0]._transport.get_extra_info("socket"))


def test_reconnect_backoff_grows_to_its_cap_with_seeded_jitter() -> None:
    config = TransportConfig(reconnect_delay_s_min=0.1, reconnect_delay_s_max=3.0)
    delays = [reconnect_delay_s(n, random.Random(5), config) for n in range(12)]
    assert delays[0] <= 0.1
    assert all(d <= 3.0 for d in delays)
    assert all(d >= 1.5 for d in delays[6:])  # at the cap, jitter never halves it further
    again = [reconnect_delay_s(n, random.Random(5), config) for n in range(12)]
    other = [reconnect_delay_s(n, random.Random(6), config) for n in range(12)]
    assert delays == again
    assert delays != other
    assert reconnect_delay_s(10**9, random.Random(5), config) <= 3.0


def test_a_config_whose_keepalive_would_trip_the_idle_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        TransportConfig(idle_timeout_s=1.0, keepalive_interval_s=1.0)
    with pytest.raises(ValueError):
        TransportConfig(reconnect_delay_s_min=2.0, reconnect_delay_s_max=1.0)


# --- both implementations keep the same contract -------------------------------------------


@pytest.fixture(params=["tcp", "memory"])
async def pair(
    request: pytest.FixtureRequest, harness: Harness
) -> AsyncIterator[tuple[Transport, Inbox, Transport, Inbox]]:
    if request.param == "tcp":
        yield await harness.started_pair()
        return
    network = MemoryNetwork()
    a_inbox, b_inbox = Inbox(), Inbox()
    a = MemoryTransport(network, 1, a_inbox, {1, 2}.__contains__)
    b = MemoryTransport(network, 2, b_inbox, {1, 2}.__contains__)
    for transport, peer in ((a, 2), (b, 1)):
        await transport.start()
        transport.set_peer_address(peer, "memory", 0)
    yield a, a_inbox, b, b_inbox
    await a.stop()
    await b.stop()


async def test_each_transport_delivers_both_ways_in_order(
    pair: tuple[Transport, Inbox, Transport, Inbox],
) -> None:
    a, a_inbox, b, b_inbox = pair
    for n in range(200):
        assert a.send(2, b"%d" % n)
        assert b.send(1, b"%d" % n, bulk=n == 100)
    await b_inbox.wait_for_count(200)
    await a_inbox.wait_for_count(200)
    assert b_inbox.messages == [(1, b"%d" % n) for n in range(200)]
    # The one bulk payload may overtake or trail the others: lanes are ordered separately.
    assert sorted(a_inbox.payloads(2), key=int) == [b"%d" % n for n in range(200)]
    await eventually(lambda: a.peer_stats()[2]["sent_messages"] == 200)


async def test_each_transport_refuses_payloads_for_unknown_peers(
    pair: tuple[Transport, Inbox, Transport, Inbox],
) -> None:
    a, _, _, _ = pair
    assert a.send(4, b"nobody there") is False
    with pytest.raises(ValueError):
        a.send(2, b"")


# --- the in-memory twin --------------------------------------------------------------------


async def memory_nodes(
    count: int, **options: Any
) -> tuple[MemoryNetwork, list[MemoryTransport], list[Inbox]]:
    network = MemoryNetwork()
    members = set(range(1, count + 1))
    inboxes = [Inbox() for _ in members]
    transports = [
        MemoryTransport(network, n, inboxes[n - 1], members.__contains__, **options)
        for n in sorted(members)
    ]
    for transport in transports:
        await transport.start()
        for peer in members - {transport.node_id}:
            transport.set_peer_address(peer, "memory", 0)
    return network, transports, inboxes


async def test_memory_delivery_happens_on_a_later_loop_turn_not_inside_send() -> None:
    _, (a, _), (_, b_inbox) = await memory_nodes(2)
    assert a.send(2, b"hello")
    assert b_inbox.messages == []
    await b_inbox.wait_for_count(1)
    assert b_inbox.messages == [(1, b"hello")]


async def test_memory_disconnect_cuts_both_directions_until_connect() -> None:
    network, (a, b, _), (a_inbox, b_inbox, c_inbox) = await memory_nodes(3)
    assert a.send(2, b"in flight when cut")
    network.disconnect(1, 2)
    assert a.send(2, b"cut") is True  # accepted, then lost like a packet on a dead link
    assert b.send(1, b"cut back")
    assert a.send(3, b"other link")
    await c_inbox.wait_for_count(1)
    await eventually(lambda: a.peer_stats()[2]["dropped_messages"] == 2)
    assert a_inbox.messages == []
    assert b_inbox.messages == []

    network.connect(1, 2)
    assert a.send(2, b"healed")
    await b_inbox.wait_for_count(1)
    assert b_inbox.payloads() == [b"healed"]


async def test_memory_disconnect_can_cut_one_direction_only() -> None:
    network, (a, b), (a_inbox, b_inbox) = await memory_nodes(2)
    network.disconnect(1, 2, one_way=True)
    assert not network.is_connected(1, 2)
    assert network.is_connected(2, 1)
    a.send(2, b"lost")
    b.send(1, b"arrives")
    await a_inbox.wait_for_count(1)
    await eventually(lambda: a.peer_stats()[2]["dropped_messages"] == 1)
    assert b_inbox.messages == []


async def test_memory_queue_bound_counts_payloads_in_flight() -> None:
    _, (a, _), (_, b_inbox) = await memory_nodes(2, queue_messages_max=3)
    assert [a.send(2, b"m") for _ in range(4)] == [True, True, True, False]
    assert a.send(2, b"bulk", bulk=True)  # the bulk lane has its own bound
    await b_inbox.wait_for_count(4)
    assert a.send(2, b"room again")
    assert a.peer_stats()[2]["dropped_messages"] == 1


async def test_memory_receiver_ignores_unknown_senders_and_stopped_nodes_lose_messages() -> None:
    network = MemoryNetwork()
    inbox = Inbox()
    a = MemoryTransport(network, 1, inbox, {1, 2}.__contains__)
    stranger = MemoryTransport(network, 9, Inbox(), lambda _: True)
    friend = MemoryTransport(network, 2, Inbox(), lambda _: True)
    await a.start()
    for transport in (stranger, friend):
        await transport.start()
        transport.set_peer_address(1, "memory", 0)
    assert stranger.send(1, b"let me in")
    await a.stop()
    assert friend.send(1, b"you are down")
    await eventually(lambda: friend.peer_stats()[1]["dropped_messages"] == 1)
    await eventually(lambda: stranger.peer_stats()[1]["dropped_messages"] == 1)
    assert inbox.messages == []
    with pytest.raises(ValueError):
        MemoryTransport(network, 1, Inbox(), lambda _: True)


# --- peer authentication (issue #20) -------------------------------------------------------

PEER_SECRET = b"s" * 32


async def test_peers_with_the_same_secret_exchange_messages_both_ways(harness: Harness) -> None:
    a, a_inbox = harness.transport(1, peer_secret=PEER_SECRET)
    b, b_inbox = harness.transport(2, peer_secret=PEER_SECRET)
    await a.start()
    await b.start()
    a.set_peer_address(2, "127.0.0.1", b.listen_port)
    b.set_peer_address(1, "127.0.0.1", a.listen_port)
    assert a.send(2, b"to b")
    assert b.send(1, b"to a")
    big = bytes(range(256)) * 20_000  # in pieces: FAST frames are small
    assert a.send(2, big, bulk=True)
    await b_inbox.wait_for(lambda: b_inbox.payloads() == [b"to b", big])
    await a_inbox.wait_for(lambda: a_inbox.payloads() == [b"to a"])
    for transport in (a, b):
        stats = transport.server_stats()
        assert stats["peer_auth_failures"] == 0 and stats["peer_auth_enabled"] == 1
        assert stats["pieces_buffered_bytes"] == 0


@pytest.mark.parametrize(
    ("dialer_secret", "failure"),
    [(b"t" * 32, "failed to prove"), (None, "requires peer authentication")],
    ids=["wrong-secret", "no-secret"],
)
async def test_a_peer_without_the_secret_is_refused_and_counted_on_both_sides(
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    dialer_secret: bytes | None,
    failure: str,
) -> None:
    caplog.set_level(logging.INFO, logger="kvraft.transport.tcp")
    a, a_inbox = harness.transport(1, peer_secret=PEER_SECRET)
    outsider, _ = harness.transport(2, peer_secret=dialer_secret)
    await a.start()
    await outsider.start()
    outsider.set_peer_address(1, "127.0.0.1", a.listen_port)
    outsider.send(1, b"forged")
    await eventually(lambda: outsider.peer_stats()[1]["connect_failures"] >= 3)
    assert a_inbox.messages == []
    assert a.server_stats()["peer_auth_failures"] >= 1
    if dialer_secret is not None:  # the dialer found the listener's proof wrong first
        assert outsider.server_stats()["peer_auth_failures"] >= 3
    unreachable = [r for r in caplog.records if "peer 1 at" in r.getMessage()]
    assert len(unreachable) == 1 and failure in unreachable[0].getMessage()
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING]  # once per address and reason
    assert CLUSTER_ID not in " ".join(r.getMessage() for r in refusals)


async def test_an_unauthenticated_handshake_to_a_node_with_a_secret_is_refused_before_its_messages(
    harness: Harness,
) -> None:
    a, a_inbox = harness.transport(1, peer_secret=PEER_SECRET)
    await a.start()
    reader, writer = await harness.raw_client(a.listen_port)
    writer.write(handshake_frame() + encode_frame(b"must never be delivered"))
    reply = decode_handshake_reply(await read_frame(reader))
    assert not reply.accepted and "requires peer authentication" in reply.reason
    assert CLUSTER_ID not in reply.reason
    assert await read_until_closed(reader) == b""
    assert a_inbox.messages == []
    assert a.server_stats()["peer_auth_failures"] == 1
