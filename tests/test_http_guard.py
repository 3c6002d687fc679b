"""`kvraft.http_guard` on a real socket: the request head deadline, the connection cap, and
the body deadline of `kvraft.http_api` (one in-process node). The limits are short here
(a few hundred ms) so each is tested on both sides of its edge in well under a second.

These also pin what the guard relies on in aiohttp (see the module docstring): if an upgrade
stops making connections with `GuardedRequestHandler`, or stops giving the handler the
connection as `request.protocol`, the first test fails before any of the behaviour does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web

from kvraft.http_guard import (
    DESCRIPTORS_RESERVED,
    GuardedRequestHandler,
    GuardedServer,
    http_connections_allowed,
    request_body_timeout_s,
)
from kvraft.metrics import LoopMetrics
from kvraft.storage.memory import MemoryDisk
from kvraft.transport.memory import MemoryNetwork
from tests.in_process_cluster import cluster_config, start_node, wait_until

HEAD_TIMEOUT_S = 0.3
BODY_TIMEOUT_S = 0.3
SLACK_S = 0.5
"""How late a deadline may act on a busy 2-core machine and still pass."""

GET = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
PUT = b"PUT /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"


@dataclass
class Served:
    server: GuardedServer
    metrics: LoopMetrics
    port: int
    protocols: list[object]

    def closed(self, reason: str) -> int:
        return self.metrics.counter_child("kvraft_http_connections_closed", reason).value


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    protocols: list[object] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        protocols.append(request.protocol)
        assert request_body_timeout_s(request) == BODY_TIMEOUT_S
        body = await request.read()  # as kvraft's handlers do: aiohttp then resumes reading
        return web.Response(text="pong " + body.decode())

    metrics = LoopMetrics()
    server = GuardedServer(
        handler,
        request_header_timeout_s=HEAD_TIMEOUT_S,
        request_body_timeout_s=BODY_TIMEOUT_S,
        connections_max=3,
        metrics=metrics,
        access_log=None,
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield Served(server, metrics, port, protocols)
    finally:
        await runner.cleanup()


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[_Connection]]]:
    """Opens client connections, and closes every one after the test, even on failure."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one(port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    try:
        yield open_one
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


Connect = Callable[[int], Awaitable[_Connection]]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def _closed_after_s(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (reading what comes)."""
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    while await asyncio.wait_for(reader.read(65536), 5):
        pass
    return loop.time() - started_s


async def test_connections_are_guarded_request_handlers_and_carry_the_body_limit(
    served: Served,
    connect: Connect,
) -> None:
    reader, writer = await connect(served.port)
    writer.write(GET)
    assert (await _answer(reader))[0] == 200
    [protocol] = served.protocols
    assert isinstance(protocol, GuardedRequestHandler)
    assert served.server.open_connections == 1
    writer.close()
    await wait_until(lambda: served.server.open_connections == 0, "the close to be counted")


async def test_a_head_finished_within_the_limit_is_served_and_an_unfinished_one_closed(
    served: Served,
    connect: Connect,
) -> None:
    in_time_reader, in_time = await connect(served.port)
    late_reader, late = await connect(served.port)
    silent_reader, _silent = await connect(served.port)
    for writer in (in_time, late):
        writer.write(GET[:30])  # slowloris: 30 bytes of a head
    await asyncio.sleep(HEAD_TIMEOUT_S / 2)  # the edge: half the limit gone, not all of it
    in_time.write(GET[30:])
    assert (await _answer(in_time_reader))[0] == 200
    late_s, silent_s = await asyncio.gather(
        _closed_after_s(late_reader), _closed_after_s(silent_reader)
    )
    assert late_s < HEAD_TIMEOUT_S / 2 + SLACK_S
    assert silent_s < HEAD_TIMEOUT_S / 2 + SLACK_S
    assert served.closed("header_timeout") == 2
    in_time.close()


async def test_an_idle_kept_alive_connection_is_not_closed_but_a_slow_next_head_is(
    served: Served,
    connect: Connect,
) -> None:
    reader, writer = await connect(served.port)
    writer.write(GET)
    assert (await _answer(reader))[0] == 200
    await asyncio.sleep(2 * HEAD_TIMEOUT_S)  # idle past the head limit: what is tested
    writer.write(GET)
    assert (await _answer(reader))[0] == 200
    writer.write(GET[:10])
    assert await _closed_after_s(reader) < HEAD_TIMEOUT_S + SLACK_S
    assert served.closed("header_timeout") == 1


async def test_an_idle_kept_alive_connection_after_a_request_with_a_body_is_not_closed(
    served: Served,
    connect: Connect,
) -> None:
    # Reading a body makes aiohttp call data_received(b"") to resume parsing: no bytes of
    # a next request, so no head deadline may start from it.
    reader, writer = await connect(served.port)
    writer.write(PUT)
    status, _, body = await _answer(reader)
    assert (status, body) == (200, b"pong hello")
    await asyncio.sleep(2 * HEAD_TIMEOUT_S)  # idle past the head limit: what is tested
    writer.write(GET)
    assert (await _answer(reader))[0] == 200
    assert served.closed("header_timeout") == 0


async def test_a_pipelined_partial_head_is_timed_from_the_end_of_the_request_before(
    served: Served,
    connect: Connect,
) -> None:
    reader, writer = await connect(served.port)
    writer.write(GET + GET + GET[:10])
    assert (await _answer(reader))[0] == 200
    assert (await _answer(reader))[0] == 200
    assert await _closed_after_s(reader) < HEAD_TIMEOUT_S + SLACK_S


async def test_connections_past_the_max_get_503_and_the_open_ones_keep_working(
    served: Served,
    connect: Connect,
) -> None:
    held = [await connect(served.port) for _ in range(3)]  # the edge: exactly the max
    for reader, writer in held:
        writer.write(GET)
        assert (await _answer(reader))[0] == 200
    refused_reader, _ = await connect(served.port)
    status, headers, body = await _answer(refused_reader)
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(body)["error"] == "too_many_connections"
    assert await _closed_after_s(refused_reader) < SLACK_S
    assert served.closed("connection_limit") == 1
    for reader, writer in held:  # still served
        writer.write(GET)
        assert (await _answer(reader))[0] == 200
    held[0][1].close()
    await wait_until(lambda: served.server.open_connections == 2, "the close to be counted")
    reader, writer = await connect(served.port)
    writer.write(GET)
    assert (await _answer(reader))[0] == 200
    for _, other in (*held[1:], (reader, writer)):
        other.close()


def test_the_connection_limit_leaves_descriptors_for_peers_and_files() -> None:
    assert http_connections_allowed(10_000, -1) == (10_000, 0)  # no descriptor limit
    assert http_connections_allowed(10_000, 1_000_000) == (10_000, DESCRIPTORS_RESERVED)
    assert http_connections_allowed(10_000, 4096) == (
        4096 - DESCRIPTORS_RESERVED,
        DESCRIPTORS_RESERVED,
    )
    assert http_connections_allowed(10_000, 1024) == (512, 512)  # ulimit -n 1024: half kept
    assert http_connections_allowed(100, 1024) == (100, 512)
    assert http_connections_allowed(10_000, 1) == (1, 0)


# --- the body deadline, in HttpApi -----------------------------------------------------------


@pytest.fixture
async def node_port(tmp_path: Path) -> AsyncIterator[int]:
    config = cluster_config(tmp_path, 1)
    limits = replace(
        config.limits,
        request_body_timeout_ms=int(BODY_TIMEOUT_S * 1000),
        request_header_timeout_ms=int(HEAD_TIMEOUT_S * 1000),
    )
    config = replace(config, limits=limits)
    member = await start_node(config, 1, MemoryNetwork(), MemoryDisk())
    try:
        await wait_until(lambda: member.node.is_ready(), "the node to lead")
        yield config.nodes[0].http_port
    finally:
        await member.runner.cleanup()
        await member.api.close()
        await member.node.stop(transfer_leadership=False)


def _put_head(length: int) -> bytes:
    return b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


async def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_closed(
    node_port: int,
    connect: Connect,
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await connect(node_port)
    started_s = loop.time()
    writer.write(_put_head(1024 * 1024) + b"abc")
    status, headers, body = await _answer(reader)
    answered_s = loop.time() - started_s
    assert status == 408
    assert json.loads(body)["error"] == "request_timeout"
    assert headers["connection"] == "close"
    assert BODY_TIMEOUT_S <= answered_s < BODY_TIMEOUT_S + SLACK_S
    assert await _closed_after_s(reader) < SLACK_S  # at once, not after aiohttp's lingering


async def test_a_body_that_arrives_within_the_limit_is_written(
    node_port: int, connect: Connect
) -> None:
    reader, writer = await connect(node_port)
    writer.write(_put_head(6) + b"abc")
    await asyncio.sleep(BODY_TIMEOUT_S / 2)  # the edge: half the limit, not all of it
    writer.write(b"def")
    assert (await _answer(reader))[0] == 200
    writer.write(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _answer(reader))[::2] == (200, b"abcdef")


async def test_the_http_api_counts_what_the_guard_closed(node_port: int, connect: Connect) -> None:
    reader, writer = await connect(node_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await _answer(reader)
    text = body.decode()
    assert status == 200
    for line in (
        'kvraft_http_connections_closed_total{reason="header_timeout"} 0.0',
        "kvraft_http_connections 1.0",
        "kvraft_http_connections_max 10000.0",
        "process_open_fds",
    ):
        assert line in text, line
    writer.close()
