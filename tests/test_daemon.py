"""The daemon as users run it: real node processes on 127.0.0.1, real signals."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft.config import local_cluster_config, render_config
from kvraft.launcher import serve_command
from kvraft.transport.frames import (
    FRAME_BYTES_MAX,
    HANDSHAKE_BYTES_MAX,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    decode_handshake_reply,
    encode_frame,
    encode_handshake,
)
from tests.cluster_harness import Cluster, running, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3))


def _followers(cluster: Cluster, leader: int) -> list[int]:
    return [n for n in sorted(cluster.processes) if n != leader]


def test_writes_through_followers_are_readable_on_every_node(cluster3: Cluster) -> None:
    leader = cluster3.leader()
    follower = _followers(cluster3, leader)[0]
    answer = cluster3.request(follower, "PUT", "/v1/kv/app/config", b"hello")
    assert answer.status == 200, answer
    revision = answer.json()["revision"]
    assert answer.headers["X-Kvraft-Leader-Id"] == str(leader)
    for node in sorted(cluster3.processes):
        got = cluster3.request(node, "GET", "/v1/kv/app/config")
        assert got.status == 200
        assert got.body == b"hello"
        assert got.headers["ETag"] == f'"{revision}"'
        # Stale reads serve this node's applied state; it catches up without a leader hop.
        wait_for(
            lambda n=node: (
                cluster3.request(n, "GET", "/v1/kv/app/config?consistency=stale").body == b"hello"
            ),
            what=f"node {node} to apply the write",
        )
    missing = cluster3.request(follower, "GET", "/v1/kv/nope")
    assert missing.status == 404 and missing.json()["error"] == "not_found"
    # An empty value is a value: stored, forwarded and read back as zero bytes.
    empty = cluster3.request(follower, "PUT", "/v1/kv/app/empty", b"")
    assert empty.status == 200, empty
    read_back = cluster3.request(leader, "GET", "/v1/kv/app/empty")
    assert read_back.status == 200 and read_back.body == b""


def test_conditional_writes_and_idempotent_retries(cluster3: Cluster) -> None:
    node = _followers(cluster3, cluster3.leader())[0]
    created = cluster3.request(node, "PUT", "/v1/kv/lock", b"a", {"If-None-Match": "*"})
    assert created.status == 200
    revision = created.json()["revision"]
    again = cluster3.request(node, "PUT", "/v1/kv/lock", b"b", {"If-None-Match": "*"})
    assert again.status == 412 and again.json()["revision"] == revision
    stale = cluster3.request(node, "PUT", "/v1/kv/lock", b"c", {"If-Match": f'"{revision + 99}"'})
    assert stale.status == 412 and stale.json()["revision"] == revision
    swapped = cluster3.request(node, "PUT", "/v1/kv/lock", b"d", {"If-Match": f'"{revision}"'})
    assert swapped.status == 200
    key = {"Idempotency-Key": "retry-1"}
    first = cluster3.request(node, "PUT", "/v1/kv/counter", b"1", key)
    retry = cluster3.request(node, "PUT", "/v1/kv/counter", b"1", key)
    assert first.status == retry.status == 200
    assert first.json()["revision"] == retry.json()["revision"]
    deleted = cluster3.request(node, "DELETE", "/v1/kv/lock")
    assert deleted.status == 200 and deleted.json()["deleted"] is True
    assert cluster3.request(node, "GET", "/v1/kv/lock").status == 404


def test_list_by_prefix_pages_with_a_continuation(cluster3: Cluster) -> None:
    for i in range(5):
        assert cluster3.request(1, "PUT", f"/v1/kv/dir/{i}", str(i).encode()).status == 200
    assert cluster3.request(1, "PUT", "/v1/kv/other", b"x").status == 200
    page = cluster3.request(2, "GET", "/v1/kv?prefix=dir/&limit=3").json()
    assert [item["key"] for item in page["items"]] == ["dir/0", "dir/1", "dir/2"]
    rest = cluster3.request(
        2, "GET", f"/v1/kv?prefix=dir/&limit=3&start_after={page['continuation']}"
    ).json()
    assert [item["key"] for item in rest["items"]] == ["dir/3", "dir/4"]
    assert rest["continuation"] is None


def test_killing_the_leader_elects_a_new_one_and_keeps_acknowledged_writes(
    cluster3: Cluster,
) -> None:
    leader = cluster3.leader()
    for i in range(20):
        assert cluster3.request(leader, "PUT", f"/v1/kv/k{i}", f"v{i}".encode()).status == 200
    cluster3.kill(leader)
    survivors = sorted(cluster3.processes)
    new_leader = cluster3.leader(survivors)
    assert new_leader != leader
    for i in range(20):
        got = cluster3.request(survivors[0], "GET", f"/v1/kv/k{i}")
        assert got.status == 200 and got.body == f"v{i}".encode()
    assert cluster3.request(survivors[1], "PUT", "/v1/kv/after", b"failover").status == 200
    # The old leader restarts with its data and catches up.
    cluster3.start(leader)
    wait_for(
        lambda: (
            cluster3.request(leader, "GET", "/v1/kv/after?consistency=stale").body == b"failover"
        ),
        what="the restarted node to catch up",
    )


def test_a_write_sent_to_a_follower_as_the_leader_dies_waits_for_the_next_leader(
    cluster3: Cluster,
) -> None:
    leader = cluster3.leader()
    follower = _followers(cluster3, leader)[0]
    assert cluster3.request(leader, "PUT", "/v1/kv/before", b"1").status == 200
    cluster3.kill(leader)
    # The follower still names the dead leader, whose port now refuses connections: rather
    # than answer 503, it holds the write through the election and then serves it.
    write = cluster3.request(follower, "PUT", "/v1/kv/during", b"2")
    assert write.status == 200, write
    survivors = sorted(cluster3.processes)
    new_leader = cluster3.leader(survivors)
    assert new_leader != leader
    for node in survivors:
        got = cluster3.request(node, "GET", "/v1/kv/during")
        assert (got.status, got.body) == (200, b"2")


def test_with_no_majority_a_held_request_ends_in_503_after_the_wait(cluster3: Cluster) -> None:
    leader = cluster3.leader()
    follower = _followers(cluster3, leader)[0]
    for node in sorted(cluster3.processes):
        if node != follower:
            cluster3.kill(node)
    write = cluster3.request(follower, "PUT", "/v1/kv/x", b"1")
    assert write.status == 503, write
    assert "Retry-After" in write.headers
    read = cluster3.request(follower, "GET", "/v1/kv/x")
    assert read.status == 503, read


def test_a_minority_serves_no_linearizable_reads_or_writes(cluster3: Cluster) -> None:
    leader = cluster3.leader()
    assert cluster3.request(leader, "PUT", "/v1/kv/x", b"1").status == 200
    lonely = _followers(cluster3, leader)[0]
    others = [n for n in sorted(cluster3.processes) if n != lonely]
    # Followers learn the commit index with the leader's next message: wait until `lonely`
    # has applied x=1, so that its stale read below has a known old value to show.
    wait_for(
        lambda: cluster3.request(lonely, "GET", "/v1/kv/x?consistency=stale").body == b"1",
        what="the follower to apply x=1",
    )
    # Freezing the two others cuts `lonely` off from any majority.
    for node in others:
        cluster3.pause(node)
    try:
        write = cluster3.request(lonely, "PUT", "/v1/kv/x", b"2")
        read = cluster3.request(lonely, "GET", "/v1/kv/x")
        assert write.status in (503, 504), write
        assert read.status == 503, read
        assert "Retry-After" in read.headers
        # A stale read is still served from the local state: the old value, never a new one.
        assert cluster3.request(lonely, "GET", "/v1/kv/x?consistency=stale").body == b"1"
    finally:
        for node in others:
            cluster3.resume(node)
    new_leader = cluster3.leader()
    assert cluster3.request(new_leader, "PUT", "/v1/kv/x", b"3").status == 200


def test_bad_requests_get_clear_errors_and_the_node_keeps_serving(cluster3: Cluster) -> None:
    node = cluster3.leader()
    limit = cluster3.config.limits.value_bytes_max
    too_big = cluster3.request(node, "PUT", "/v1/kv/big", b"x" * (limit + 1))
    assert too_big.status == 413 and too_big.json()["error"] == "value_too_large"
    at_limit = cluster3.request(node, "PUT", "/v1/kv/big", b"x" * limit)
    assert at_limit.status == 200
    long_key = "k" * (cluster3.config.limits.key_bytes_max + 1)
    assert cluster3.request(node, "PUT", f"/v1/kv/{long_key}", b"v").status == 413
    bad_header = cluster3.request(node, "PUT", "/v1/kv/a", b"v", {"If-Match": "banana"})
    assert bad_header.status == 400 and bad_header.json()["error"] == "bad_request"
    bad_query = cluster3.request(node, "GET", "/v1/kv/a?consistency=eventual")
    assert bad_query.status == 400
    assert cluster3.request(node, "GET", "/healthz").status == 200


def test_routes_methods_and_keys_with_encoded_slashes(cluster3: Cluster) -> None:
    node = cluster3.leader()
    unknown = cluster3.request(node, "GET", "/v1/nope")
    assert unknown.status == 404 and unknown.json()["error"] == "unknown_route"
    assert cluster3.request(node, "GET", "/v1/kv/").status == 404  # no key
    assert cluster3.request(node, "DELETE", "/v1/members/2/x").status == 404
    wrong_method = cluster3.request(node, "POST", "/v1/kv/a", b"v")
    assert wrong_method.status == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert wrong_method.headers["Allow"] == "DELETE, GET, HEAD, PUT"
    # "%2F" inside a key is the key's own slash: the same key as a literal "/".
    assert cluster3.request(node, "PUT", "/v1/kv/dir%2Ffile", b"1").status == 200
    assert cluster3.request(node, "GET", "/v1/kv/dir/file").body == b"1"
    assert cluster3.request(node, "PUT", "/v1/kv/100%25", b"2").status == 200
    listed = cluster3.request(node, "GET", "/v1/kv?prefix=")
    assert {item["key"] for item in listed.json()["items"]} == {"dir/file", "100%"}
    head = cluster3.request(node, "HEAD", "/v1/kv/dir/file")
    assert head.status == 200 and head.body == b"" and head.headers["ETag"]
    assert cluster3.request(node, "GET", "/v1/status").headers["X-Kvraft-Node-Id"] == str(node)


def _http_connection(cluster: Cluster, node_id: int) -> socket.socket:
    spec = cluster.config.node(node_id)
    connection = socket.create_connection((spec.http_host, spec.http_port), timeout=10)
    return connection


def _read_answer_head(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_a_client_that_expects_100_continue_is_asked_for_the_body(cluster3: Cluster) -> None:
    """curl sends `Expect: 100-continue` before a body over 1 KiB and waits a second."""
    node = cluster3.leader()
    value = b"v" * 2000
    head = (
        b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(value)
    )
    with _http_connection(cluster3, node) as connection:
        connection.sendall(head)
        assert _read_answer_head(connection).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.sendall(value)
        assert _read_answer_head(connection).startswith(b"HTTP/1.1 200 ")
    assert cluster3.request(node, "GET", "/v1/kv/big").body == value
    # Too large by its declared length: refused without asking for the body.
    limit = cluster3.config.limits.value_bytes_max
    head = (
        b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (limit + 1)
    )
    with _http_connection(cluster3, node) as connection:
        connection.sendall(head)
        assert _read_answer_head(connection).startswith(b"HTTP/1.1 413 ")


def _read_until_closed(connection: socket.socket) -> bytes:
    connection.settimeout(10)
    data = b""
    while chunk := connection.recv(4096):
        data += chunk
    return data


def test_garbage_and_foreign_clusters_on_the_peer_port_cost_one_connection(
    cluster3: Cluster,
) -> None:
    node = cluster3.leader()
    spec = cluster3.config.node(node)
    with socket.create_connection((spec.raft_host, spec.raft_port), timeout=5) as garbage:
        garbage.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
        # The node closes the connection (recv returns EOF) instead of crashing or hanging.
        _read_until_closed(garbage)
    with socket.create_connection((spec.raft_host, spec.raft_port), timeout=5) as foreign:
        handshake = Handshake(PROTOCOL_VERSION, "someone-else", 2, node)
        foreign.sendall(encode_frame(encode_handshake(handshake)))
        reply_frames = FrameDecoder(HANDSHAKE_BYTES_MAX).feed(_read_until_closed(foreign))
    reply = decode_handshake_reply(reply_frames[0])
    assert not reply.accepted
    assert "someone-else" in reply.reason or "cluster" in reply.reason
    # The node is still the leader and still takes writes.
    assert cluster3.request(node, "PUT", "/v1/kv/still", b"alive").status == 200
    assert cluster3.leader() == node


def test_sigterm_hands_leadership_over_and_exits_zero(cluster3: Cluster) -> None:
    leader = cluster3.leader()
    assert cluster3.request(leader, "PUT", "/v1/kv/before", b"stop").status == 200
    assert cluster3.stop(leader) == 0
    survivors = sorted(cluster3.processes)
    new_leader = cluster3.leader(survivors, timeout_s=10)
    assert new_leader in survivors
    assert cluster3.request(new_leader, "GET", "/v1/kv/before").body == b"stop"
    assert "handed leadership" in cluster3.log_text(leader)


def test_an_invalid_config_is_refused_at_start_with_the_key_named(tmp_path: Path) -> None:
    valid = render_config(local_cluster_config(1, tmp_path / "data"))
    invalid, replaced = re.subn(r"(?m)^election_ticks = \d+$", "election_ticks = 1", valid)
    assert replaced == 1
    config = tmp_path / "bad.toml"
    config.write_text(invalid)
    result = subprocess.run(
        serve_command(1, config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "election_ticks" in result.stderr


def test_every_acknowledged_write_survives_kill_9_of_every_node(tmp_path: Path) -> None:
    """Durability (issue 3): fsync before acknowledging, so a crash of everyone loses nothing."""
    cluster = Cluster(tmp_path, 3, fsync=True)
    try:
        cluster.start_all()
        cluster.leader()
        acknowledged: dict[str, bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(worker: int) -> None:
            counter = 0
            while not stop.is_set():
                counter += 1
                key, value = f"w{worker}/{counter % 7}", f"{worker}-{counter}".encode()
                node = 1 + (counter % 3)
                try:
                    answer = cluster.request(node, "PUT", f"/v1/kv/{key}", value)
                except OSError:
                    continue
                if answer.status == 200:
                    with lock:
                        acknowledged[key] = value

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acknowledged) >= 20, what="some acknowledged writes")
        cluster.close()  # SIGKILL every node at once, and reap them
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        with lock:
            expected = dict(acknowledged)
        cluster.start_all()
        leader = cluster.leader()
        for key, value in expected.items():
            got = cluster.request(leader, "GET", f"/v1/kv/{key}")
            # A later write to the same key may have committed without its answer arriving:
            # the value must be the last acknowledged one or a later one from that worker.
            assert got.status == 200, (key, got)
            worker, counter = got.body.decode().split("-")
            ack_worker, ack_counter = value.decode().split("-")
            assert worker == ack_worker and int(counter) >= int(ack_counter), (key, got.body)
    finally:
        cluster.close()


def test_health_readiness_and_metrics_endpoints(cluster3: Cluster) -> None:
    leader = cluster3.leader()
    assert cluster3.request(leader, "PUT", "/v1/kv/m", b"1").status == 200
    for node in sorted(cluster3.processes):
        assert cluster3.request(node, "GET", "/healthz").json() == {"ok": True}
        wait_for(
            lambda n=node: cluster3.request(n, "GET", "/readyz").status == 200,
            what=f"node {node} ready",
        )
        metrics = cluster3.request(node, "GET", "/metrics")
        assert metrics.status == 200
        text = metrics.body.decode()
        term = cluster3.status(node)["term"]
        assert f"kvraft_term {float(term)}" in text
        assert "kvraft_commit_index" in text and "kvraft_request_seconds_bucket" in text
        assert ("kvraft_is_leader 1.0" in text) == (node == leader)
        # Every answer names the answering node, the known leader and the term.
        assert metrics.headers["X-Kvraft-Node-Id"] == str(node)
        assert metrics.headers["X-Kvraft-Leader-Id"] == str(leader)
    leader_metrics = cluster3.request(leader, "GET", "/metrics").body.decode()
    assert 'kvraft_proposals_total{outcome="ok"}' in leader_metrics
    assert "kvraft_fsync_seconds_count" in leader_metrics


SNAPSHOT_VALUE_BYTES = 1024 * 1024
SNAPSHOT_VALUES = FRAME_BYTES_MAX // SNAPSHOT_VALUE_BYTES + 8
"""Enough 1 MiB values that the snapshot taken after them is larger than one peer frame."""


@pytest.fixture
def snapshotting_cluster3(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, 3)
    cluster.config = replace(
        cluster.config,
        storage=replace(
            cluster.config.storage,
            snapshot_threshold_entries=SNAPSHOT_VALUES - 2,
            snapshot_entries_per_record=0,
        ),
    )
    cluster.config_path.write_text(render_config(cluster.config))
    yield from running(cluster)


def test_a_follower_catches_up_through_a_snapshot_larger_than_a_frame(
    snapshotting_cluster3: Cluster,
) -> None:
    """The snapshot (over 64 MiB) travels in pieces; the follower that was down while the
    leader compacted its log installs it and serves the same data."""
    cluster = snapshotting_cluster3
    leader = cluster.leader()
    behind = _followers(cluster, leader)[0]
    cluster.kill(behind)
    for number in range(SNAPSHOT_VALUES):
        body = bytes([number % 251]) * SNAPSHOT_VALUE_BYTES
        assert cluster.request(leader, "PUT", f"/v1/kv/big{number}", body).status == 200
    wait_for(lambda: cluster.status(leader)["snapshot_index"] > 0, what="a snapshot")
    assert cluster.request(leader, "PUT", "/v1/kv/after", b"still").status == 200
    cluster.start(behind)
    wait_for(
        lambda: (
            cluster.status(behind)["snapshot_index"] > 0
            and cluster.request(behind, "GET", "/v1/kv/after?consistency=stale").status == 200
        ),
        what=f"node {behind} caught up through the snapshot",
    )
    for number in (0, SNAPSHOT_VALUES // 2, SNAPSHOT_VALUES - 1):
        stale = cluster.request(behind, "GET", f"/v1/kv/big{number}?consistency=stale")
        assert stale.body == bytes([number % 251]) * SNAPSHOT_VALUE_BYTES
    assert "cannot send node" not in cluster.log_text(leader)
