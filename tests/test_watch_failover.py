"""`kvraft watch` against three real node processes, across a `kill -9` of the leader: every
acknowledged write arrives exactly once, in revision order, and nothing else does."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.client import KVClient, OutcomeUnknown, Unavailable
from kvraft.commands import kv
from tests.cluster_harness import Cluster, running, wait_for

WRITES_BEFORE_KILL = 30
WRITES_AFTER_KILL = 30


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3))


class WatchOutput:
    """`python -m kvraft watch --json` over every node, its lines collected by a thread."""

    def __init__(self, endpoints: list[str]) -> None:
        env = {**os.environ, kv.ENDPOINTS_ENV: ",".join(endpoints), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvraft", "watch", "app/", "--json", "--from-revision", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.events: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        self._reader.join(timeout=5)
        return self.process.returncode, stderr


def test_kvraft_watch_sees_every_write_once_in_order_across_a_leader_kill(
    cluster: Cluster,
) -> None:
    leader = cluster.leader()
    # The watch starts on the leader, the node about to be killed.
    others = [node.id for node in cluster.config.nodes if node.id != leader]
    endpoints = [cluster.url(node_id) for node_id in [leader, *others]]
    watch = WatchOutput(endpoints)
    wait_for(lambda: cluster.status(leader)["watchers"] == 1, what="the watch on the leader")
    client = KVClient(endpoints)
    acknowledged: dict[int, str] = {}
    unknown: set[str] = set()
    try:
        for number in range(WRITES_BEFORE_KILL + WRITES_AFTER_KILL):
            if number == WRITES_BEFORE_KILL:
                cluster.kill(leader)
            value = f"v{number}"
            try:
                revision = client.put(f"app/{number % 5}", value.encode(), idempotency_key=value)
            except (OutcomeUnknown, Unavailable):
                unknown.add(value)  # may or may not have applied: either is fine
                continue
            acknowledged[revision] = value
        last = max(acknowledged)
        wait_for(
            lambda: any(event["revision"] == last for event in watch.events),
            timeout_s=30,
            what="the watch to reach the last write",
        )
    finally:
        code, stderr = watch.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    revisions = [event["revision"] for event in watch.events]
    assert revisions == sorted(set(revisions)), "out of order or twice"
    seen = {
        event["revision"]: base64.b64decode(str(event["value_b64"])).decode()
        for event in watch.events
    }
    for revision, value in acknowledged.items():
        assert seen.get(revision) == value, (
            f"acknowledged {value!r} at {revision}: {seen.get(revision)!r}"
        )
    for revision, value in seen.items():
        assert revision in acknowledged or value in unknown, f"{value} at {revision} was no write"
