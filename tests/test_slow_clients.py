"""Slow and too many clients against real node processes (issue #16): slowloris connections
are closed within the head limit, a short body is answered 408, and a node started with
``ulimit -n 1024`` serves as many client connections as its descriptors allow and refuses
the rest at once, while it still replicates and reconnects to a restarted peer."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft.config import render_config
from kvraft.http_guard import http_connections_allowed
from kvraft.launcher import serve_command
from tests.cluster_harness import Cluster, running, wait_for

pytestmark = pytest.mark.slow

HEAD_TIMEOUT_MS = 500
BODY_TIMEOUT_MS = 500
DESCRIPTORS_MAX = 1024
SLACK_S = 2.0
"""How late a limit may act on a busy 2-core machine and still pass."""


class LimitedCluster(Cluster):
    """Every node runs with short slow-client limits under ``ulimit -n 1024``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 3)
        limits = replace(
            self.config.limits,
            request_header_timeout_ms=HEAD_TIMEOUT_MS,
            request_body_timeout_ms=BODY_TIMEOUT_MS,
        )
        self.config = replace(self.config, limits=limits)
        self.config_path.write_text(render_config(self.config))

    def start(self, node_id: int) -> None:
        command = serve_command(node_id, self.config_path)
        # Soft and hard limit both: the node cannot raise it, as on a host set up so.
        limited = f'ulimit -n {DESCRIPTORS_MAX} && exec "$@"'
        self.start_command(node_id, ["sh", "-c", limited, "sh", *command])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running(LimitedCluster(tmp_path_factory.mktemp("slow-clients")))


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets, every one closed after the test, even on failure."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for connection in opened:
            connection.close()


def _connect(cluster: Cluster, node_id: int, opened: list[socket.socket]) -> socket.socket:
    spec = cluster.config.node(node_id)
    connection = socket.create_connection((spec.http_host, spec.http_port), timeout=10)
    opened.append(connection)
    return connection


def _answer(connection: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one answer; a connection closed or reset first gives (0, b"")."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return 0, b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = connection.recv(65536)
            assert chunk, "closed in the middle of an answer"
            body += chunk
    except ConnectionResetError:
        return 0, b""
    return int(head.split()[1]), body


def _closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(65536) == b""
    except ConnectionResetError:
        return True


def _request(path: str, method: str = "GET", body: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: kvraft\r\nContent-Length: %d\r\n\r\n%s" % (
        method.encode(),
        path.encode(),
        len(body),
        body,
    )


def test_slowloris_connections_are_closed_in_time_and_a_short_body_gets_408(
    cluster: Cluster, sockets: list[socket.socket]
) -> None:
    leader = cluster.leader()
    node = next(spec.id for spec in cluster.config.nodes if spec.id != leader)
    slow = [_connect(cluster, node, sockets) for _ in range(200)]
    started_s = time.monotonic()
    for connection in slow:
        connection.sendall(_request("/healthz")[:30])
    assert cluster.status(node)["id"] == node  # served meanwhile
    assert all(_closed(connection) for connection in slow)
    closed_after_s = time.monotonic() - started_s
    assert closed_after_s < HEAD_TIMEOUT_MS / 1000 + SLACK_S, closed_after_s

    short = _connect(cluster, node, sockets)
    started_s = time.monotonic()
    # A 3-byte body under Content-Length: 1 MiB, and then nothing.
    short.sendall(_request("/v1/kv/short", "PUT", b"x" * (1024 * 1024))[: -(1024 * 1024 - 3)])
    status, body = _answer(short)
    answered_s = time.monotonic() - started_s
    assert (status, b"request_timeout" in body) == (408, True), body
    assert BODY_TIMEOUT_MS / 1000 <= answered_s < BODY_TIMEOUT_MS / 1000 + SLACK_S
    assert _closed(short)
    assert cluster.request(node, "GET", "/healthz").status == 200


def test_a_node_at_its_connection_limit_refuses_more_and_still_reaches_its_peers(
    cluster: Cluster, sockets: list[socket.socket]
) -> None:
    leader = cluster.leader()
    allowed, _ = http_connections_allowed(cluster.config.limits.http_connections_max, 1024)
    assert f"at most {allowed} client connections" in cluster.log_text(leader)
    # The reproduction: 1,100 client connections, kept alive after one request each.
    served: list[socket.socket] = []
    refused = 0
    for _ in range(1100):
        connection = _connect(cluster, leader, sockets)
        connection.sendall(_request("/healthz"))
        status, _ = _answer(connection)
        if status == 200:
            served.append(connection)
        else:
            assert status in (503, 0)  # 503 + Retry-After, or reset before it was read
            refused += 1
    assert (len(served), refused) == (allowed, 1100 - allowed)

    # The connections it holds still work, and it still replicates to a restarted peer:
    # it must dial the peer again, with its clients holding every descriptor they may.
    follower = next(spec.id for spec in cluster.config.nodes if spec.id != leader)
    cluster.kill(follower)
    cluster.start(follower)
    served[0].sendall(_request("/v1/kv/after-restart", "PUT", b"replicated"))
    assert _answer(served[0])[0] == 200

    def follower_has_it() -> bool:
        answer = cluster.request(follower, "GET", "/v1/kv/after-restart?consistency=stale")
        return answer.status == 200 and answer.body == b"replicated"

    wait_for(follower_has_it, what="the restarted follower to get the write")
    served[1].sendall(_request("/metrics"))
    status, metrics = _answer(served[1])
    assert status == 200
    counted = b'kvraft_http_connections_closed_total{reason="connection_limit"} %d.0' % refused
    assert counted in metrics
    for connection in served:
        with contextlib.suppress(OSError):
            connection.close()
