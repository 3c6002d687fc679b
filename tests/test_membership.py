"""Live membership changes and leadership transfer with real node processes: growing and
shrinking under writes, replacing a node, removing the leader, moving leadership, one change
at a time, no hanging without quorum, removed nodes staying quiet, joined nodes restarting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kvraft.commands.member import leader as leader_command
from kvraft.commands.member import member as member_command
from kvraft.config import render_config
from kvraft.launcher import free_ports, serve_command
from kvraft.membership import MEMBER_REQUEST_BYTES_MAX
from tests.cluster_harness import Cluster, HttpAnswer, http, running, wait_for

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_MS = 2000
"""A short server request timeout: the no-quorum test waits for it, and a membership request
is bounded by three of them."""

SNAPSHOT_THRESHOLD_ENTRIES = 100
"""Snapshot early, so that a node joining after a few hundred writes gets InstallSnapshot."""


class MemberCluster(Cluster):
    """A `Cluster` that can also run nodes outside its config file (joined nodes)."""

    def __init__(self, root: Path, nodes: int) -> None:
        super().__init__(root, nodes)
        self.config = replace(
            self.config,
            storage=replace(
                self.config.storage,
                snapshot_threshold_entries=SNAPSHOT_THRESHOLD_ENTRIES,
                snapshot_entries_per_record=0,
            ),
            limits=replace(self.config.limits, request_timeout_ms=REQUEST_TIMEOUT_MS),
        )
        self.config_path.write_text(render_config(self.config))
        self.joined_ports: dict[int, tuple[int, int]] = {}  # id -> (http port, raft port)

    def url(self, node_id: int) -> str:
        if node_id in self.joined_ports:
            return f"http://127.0.0.1:{self.joined_ports[node_id][0]}"
        return super().url(node_id)

    def addresses(self, node_id: int) -> tuple[str, str]:
        """(raft, http) address of a joined node, allocating its ports the first time."""
        if node_id not in self.joined_ports:
            http_port, raft_port = free_ports(2)
            self.joined_ports[node_id] = (http_port, raft_port)
        http_port, raft_port = self.joined_ports[node_id]
        return f"127.0.0.1:{raft_port}", f"127.0.0.1:{http_port}"

    def start_new(
        self,
        node_id: int,
        *,
        join_via: int | None = None,
        learner: bool = False,
        with_config: bool = True,
    ) -> None:
        """`kvraft serve` for a node that is not in the config file."""
        raft_address, http_address = self.addresses(node_id)
        command = serve_command(
            node_id,
            self.config_path if with_config else None,
            raft_address=raft_address,
            http_address=http_address,
            data_dir=self.root / "data" / f"node{node_id}",
            join=None if join_via is None else self.url(join_via),
            learner=learner,
        )
        self.start_command(node_id, command)

    def json_request(self, node_id: int, method: str, path: str, body: Any = None) -> HttpAnswer:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return http(method, self.url(node_id) + path, data, headers, timeout_s=30)

    def members(self, node_id: int) -> dict[int, dict[str, Any]]:
        answer = self.json_request(node_id, "GET", "/v1/members")
        assert answer.status == 200, answer
        return {item["id"]: item for item in answer.json()["members"]}

    def add_request(self, node_id: int, *, voter: bool = True) -> dict[str, Any]:
        raft_address, http_address = self.addresses(node_id)
        return {
            "id": node_id,
            "raft_address": raft_address,
            "http_address": http_address,
            "voter": voter,
        }


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[MemberCluster]:
    yield from running(MemberCluster(tmp_path, 3))


class Writer:
    """A thread writing unique keys through a changing set of nodes; remembers what was
    acknowledged. Failures during a change are fine (brief unavailability)."""

    def __init__(self, cluster: MemberCluster, nodes: list[int]) -> None:
        self.cluster = cluster
        self.nodes = list(nodes)
        self.acknowledged: dict[str, bytes] = {}
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self) -> None:
        counter = 0
        while not self._stop.is_set():
            counter += 1
            node = self.nodes[counter % len(self.nodes)]
            key, value = f"w/{counter}", f"value-{counter}".encode()
            try:
                answer = http("PUT", self.cluster.url(node) + f"/v1/kv/{key}", value, timeout_s=10)
            except OSError:
                answer = None
            with self._lock:
                if answer is not None and answer.status == 200:
                    self.acknowledged[key] = value
                else:
                    self.failures += 1


def _assert_all_readable(cluster: MemberCluster, node: int, expected: dict[str, bytes]) -> None:
    for key, value in expected.items():
        got = cluster.request(node, "GET", f"/v1/kv/{key}")
        assert got.status == 200 and got.body == value, (key, got)


def _voters(view: dict[int, dict[str, Any]]) -> set[int]:
    return {node_id for node_id, item in view.items() if item["voter"]}


def test_grow_to_five_and_shrink_to_three_while_writes_continue(cluster3: MemberCluster) -> None:
    cluster = cluster3
    with Writer(cluster, [1, 2, 3]) as writer:
        # Enough writes that the log is compacted: the new nodes start from a snapshot.
        wait_for(lambda: writer.count() >= 2 * SNAPSHOT_THRESHOLD_ENTRIES, what="some writes")
        for new_node in (4, 5):
            cluster.start_new(new_node, join_via=2)
            wait_for(
                lambda n=new_node: _voters(cluster.members(1)) >= {1, 2, 3, n},  # type: ignore[misc]
                what=f"node {new_node} to join as a voter",
            )
            writer.nodes.append(new_node)
        assert _voters(cluster.members(4)) == {1, 2, 3, 4, 5}
        assert cluster.status(5)["snapshot_index"] > 0  # caught up by InstallSnapshot
        before = writer.count()
        wait_for(lambda: writer.count() >= before + 20, what="writes through the 5 nodes")

        # Shrink: remove a follower, then the leader itself (it hands over first).
        old_leader = cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != old_leader)
        writer.nodes = [n for n in (1, 2, 3, 4, 5) if n not in (old_leader, follower)]
        removed = cluster.json_request(writer.nodes[0], "DELETE", f"/v1/members/{follower}")
        assert removed.status == 200, removed
        assert set(item["id"] for item in removed.json()["members"]) == {1, 2, 3, 4, 5} - {follower}
        gone = cluster.json_request(writer.nodes[0], "DELETE", f"/v1/members/{old_leader}")
        assert gone.status == 200, gone
        survivors = writer.nodes
        new_leader = cluster.leader(among=survivors)
        assert new_leader != old_leader
        assert _voters(cluster.members(new_leader)) == set(survivors)
        assert cluster.status(old_leader)["role"] != "leader"  # it stepped down
        before = writer.count()
        wait_for(lambda: writer.count() >= before + 20, what="writes through the 3 survivors")
    assert writer.count() > 4 * SNAPSHOT_THRESHOLD_ENTRIES // 2
    _assert_all_readable(cluster, new_leader, writer.acknowledged)


def test_replace_a_node_and_the_removed_node_does_not_disrupt_the_cluster(
    cluster3: MemberCluster,
) -> None:
    cluster = cluster3
    leader = cluster.leader()
    old = next(n for n in (1, 2, 3) if n != leader)
    assert cluster.request(leader, "PUT", "/v1/kv/before", b"replace").status == 200
    endpoints = ",".join(cluster.url(n) for n in (1, 2, 3))
    runner = CliRunner()
    # Started without --join, the new node waits until an operator adds it.
    cluster.start_new(4)
    raft_address, http_address = cluster.addresses(4)
    added = runner.invoke(
        member_command, ["add", "4", raft_address, http_address, "--endpoints", endpoints]
    )
    assert added.exit_code == 0, added.output
    assert 4 in _voters(cluster.members(leader))
    result = runner.invoke(member_command, ["remove", str(old), "--endpoints", endpoints])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(member_command, ["list", "--endpoints", endpoints])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.output.splitlines()[1:-1]}
    assert set(rows) == {str(n) for n in (1, 2, 3, 4) if n != old}
    assert all(row[3] == "voter" for row in rows.values())

    # The removed node keeps running. It cannot reach a majority any more; the cluster's
    # leader and term stay put for several election timeouts (PreVote, CheckQuorum, and
    # its connections are refused).
    remaining = sorted(set(cluster.processes) - {old})
    status = cluster.status(leader)
    election_timeout_s = 2 * cluster.config.raft.election_ticks * cluster.config.raft.tick_ms / 1000
    watch_until = time.monotonic() + 4 * election_timeout_s
    while time.monotonic() < watch_until:
        for node in remaining:
            now = cluster.status(node)
            assert (now["term"], now["leader_id"]) == (status["term"], leader), now
        assert cluster.processes[old].poll() is None  # still running, still quiet
        time.sleep(0.1)  # polling interval, not synchronisation
    assert cluster.status(old)["role"] != "leader"
    assert cluster.request(4, "GET", "/v1/kv/before").body == b"replace"
    assert cluster.request(4, "PUT", "/v1/kv/after", b"replaced").status == 200


def test_leadership_moves_to_a_named_node_and_to_the_best_one_by_default(
    cluster3: MemberCluster,
) -> None:
    cluster = cluster3
    leader = cluster.leader()
    target = next(n for n in (1, 2, 3) if n != leader)
    other = next(n for n in (1, 2, 3) if n not in (leader, target))
    # The request body limit, at its edge: padding to exactly the limit is accepted.
    body = json.dumps({"to": target}).encode()
    padded = body + b" " * (MEMBER_REQUEST_BYTES_MAX - len(body))
    too_big = cluster.request(other, "POST", "/v1/leader/transfer", padded + b" ")
    assert too_big.status == 413, too_big
    moved = cluster.request(other, "POST", "/v1/leader/transfer", padded)
    assert moved.status == 200, moved
    assert moved.json() == {"leader_id": target, "previous_leader_id": leader}
    assert cluster.leader() == target
    unknown = cluster.json_request(leader, "POST", "/v1/leader/transfer", {"to": 99})
    assert unknown.status == 404 and unknown.json()["error"] == "unknown_member"
    bad = cluster.json_request(leader, "POST", "/v1/leader/transfer", {"to": "two"})
    assert bad.status == 400 and bad.json()["error"] == "bad_request"

    endpoints = ",".join(cluster.url(n) for n in (1, 2, 3))
    result = CliRunner().invoke(leader_command, ["transfer", "--endpoints", endpoints])
    assert result.exit_code == 0, result.output
    new_leader = int(result.output.split()[-1])
    assert new_leader != target
    assert cluster.leader() == new_leader
    assert cluster.request(new_leader, "PUT", "/v1/kv/k", b"v").status == 200


def test_one_change_at_a_time_and_learners_show_as_learners(cluster3: MemberCluster) -> None:
    cluster = cluster3
    leader = cluster.leader()
    follower = next(n for n in (1, 2, 3) if n != leader)
    # Node 9 never runs: as a learner it cannot catch up, so its promotion keeps the first
    # change in progress until the server gives up on it (503 not_caught_up).
    first: dict[str, HttpAnswer] = {}
    adding = threading.Thread(
        target=lambda: first.setdefault(
            "answer", cluster.json_request(follower, "POST", "/v1/members", cluster.add_request(9))
        )
    )
    started = time.monotonic()
    adding.start()
    try:
        wait_for(lambda: 9 in cluster.members(leader), what="node 9 to be added as a learner")
        second = cluster.json_request(leader, "POST", "/v1/members", cluster.add_request(8))
        assert second.status == 409 and second.json()["error"] == "change_in_progress", second
        third = cluster.json_request(follower, "DELETE", f"/v1/members/{follower}")
        assert third.status == 409 and third.json()["error"] == "change_in_progress", third
        # The leader knows a change is under way; every node lists node 9 as a learner.
        assert cluster.status(leader)["membership_change_pending"] is True
        listed = cluster.status(follower)["members"][-1]
        assert {"id": 9, "voter": False}.items() <= listed.items()
        to_learner = cluster.json_request(leader, "POST", "/v1/leader/transfer", {"to": 9})
        assert to_learner.status == 409 and to_learner.json()["error"] == "member_conflict"
    finally:
        adding.join(timeout=60)
    answer = first["answer"]
    assert answer.status == 503 and answer.json()["error"] == "not_caught_up", answer
    assert "Retry-After" in answer.headers
    bound_s = 3 * REQUEST_TIMEOUT_MS / 1000 + 2
    assert time.monotonic() - started < bound_s
    removed = cluster.json_request(follower, "DELETE", "/v1/members/9")
    assert removed.status == 200, removed
    assert set(cluster.members(leader)) == {1, 2, 3}
    assert cluster.status(leader)["membership_change_pending"] is False
    missing = cluster.json_request(follower, "DELETE", "/v1/members/9")
    assert missing.status == 404 and missing.json()["error"] == "unknown_member"


def test_a_change_without_quorum_fails_within_the_timeout(cluster3: MemberCluster) -> None:
    cluster = cluster3
    leader = cluster.leader()
    followers = [n for n in (1, 2, 3) if n != leader]
    for node in followers:
        cluster.pause(node)
    try:
        started = time.monotonic()
        answer = cluster.json_request(
            leader, "POST", "/v1/members", cluster.add_request(4, voter=False)
        )
        elapsed_s = time.monotonic() - started
        assert answer.status in (503, 504), answer
        assert answer.json()["error"] in ("unavailable", "outcome_unknown")
        assert elapsed_s < 3 * REQUEST_TIMEOUT_MS / 1000 + 2
        removal = cluster.json_request(leader, "DELETE", f"/v1/members/{followers[0]}")
        assert removal.status in (503, 504), removal
    finally:
        for node in followers:
            cluster.resume(node)
    # Once the majority is back the cluster serves again, with at most the learner added.
    new_leader = cluster.leader()
    assert cluster.request(new_leader, "PUT", "/v1/kv/back", b"quorum").status == 200
    assert _voters(cluster.members(new_leader)) == {1, 2, 3}


def test_a_joined_learner_restarts_without_join_and_can_be_promoted(
    cluster3: MemberCluster,
) -> None:
    cluster = cluster3
    leader = cluster.leader()
    assert cluster.request(leader, "PUT", "/v1/kv/first", b"1").status == 200
    cluster.start_new(4, join_via=leader, learner=True)
    wait_for(
        lambda: (
            cluster.status(4)["role"] == "learner"
            and cluster.request(4, "GET", "/v1/kv/first?consistency=stale").body == b"1"
        ),
        what="node 4 to join as a learner and catch up",
    )
    view = cluster.members(leader)
    assert view[4]["voter"] is False and _voters(view) == {1, 2, 3}
    cluster.kill(4)
    assert cluster.request(leader, "PUT", "/v1/kv/second", b"2").status == 200
    # No --join and no --config: its membership is in its log, its cluster id on its disk.
    cluster.start_new(4, with_config=False)
    wait_for(
        lambda: cluster.request(4, "GET", "/v1/kv/second?consistency=stale").body == b"2",
        what="the restarted learner to catch up",
    )
    assert cluster.status(4)["role"] == "learner"
    promoted = cluster.json_request(2, "POST", "/v1/members", cluster.add_request(4))
    assert promoted.status == 200, promoted
    assert _voters(cluster.members(leader)) == {1, 2, 3, 4}
    wait_for(lambda: cluster.status(4)["role"] == "follower", what="node 4 to see itself a voter")


def test_a_node_that_missed_a_join_follows_the_new_member_as_leader(
    cluster3: MemberCluster,
) -> None:
    cluster = cluster3
    leader = cluster.leader()
    lagging = next(n for n in (1, 2, 3) if n != leader)
    cluster.kill(lagging)
    cluster.start_new(4, join_via=leader)
    wait_for(lambda: 4 in _voters(cluster.members(leader)), what="node 4 to join")
    moved = cluster.json_request(leader, "POST", "/v1/leader/transfer", {"to": 4})
    assert moved.status == 200, moved
    assert cluster.request(4, "PUT", "/v1/kv/news", b"from 4").status == 200
    # The old leader may still hold AppendEntries for the lagging node, queued while it was
    # down, that carry node 4's join; delivered first, they would name node 4 before node 4
    # dials in. Its next failed dial drops them: wait for that, so node 4 comes first.
    queued = f'kvraft_peer_queued_messages{{peer="{lagging}"}} 0.0'
    wait_for(
        lambda: queued in cluster.request(leader, "GET", "/metrics").body.decode(),
        what="the old leader to drop what it queued for the lagging node",
    )
    # Its log does not name node 4 yet, so it asks the other members who node 4 is.
    cluster.start(lagging)
    wait_for(
        lambda: cluster.request(lagging, "GET", "/v1/kv/news?consistency=stale").body == b"from 4",
        what="the lagging node to catch up from the new leader",
    )
    assert cluster.status(lagging)["leader_id"] == 4
    assert "learned from node" in cluster.log_text(lagging)
