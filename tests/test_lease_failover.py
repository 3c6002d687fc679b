"""Leases through the client and the CLI against real node processes (issue #19): a
`lease()` kept alive by its thread survives a SIGKILL of the leader; leaving it revokes
the key at once; a lease whose keepalives stopped loses its key after the TTL, and a watch
sees that delete. `kvraft lease ...` and `kvraft put --lease` end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvraft.cli import main
from kvraft.client import KVClient, LeaseNotFound
from kvraft.commands import kv
from tests.cluster_harness import Cluster, running, wait_for

__all__: list[str] = []

TTL_S = 3
"""A short TTL the default config allows: one more second than the shortest
(kvraft.leases.lease_ttl_s_min: 3 of the longest election timeouts, 2 x 6 ticks x 50 ms,
rounded up: 2 s), which leaves room for a failover on a slow host."""

EXPIRY_WAIT_S = TTL_S + 10.0
"""How long a key of an abandoned lease may take to go: its TTL plus slack for a slow host."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3))


def make_client(cluster: Cluster) -> KVClient:
    return KVClient(
        [cluster.url(node.id) for node in cluster.config.nodes],
        timeout_s=20.0,
        watch_progress_s=1.0,
    )


def test_a_kept_lease_survives_a_leader_kill_and_an_abandoned_one_expires(
    cluster: Cluster,
) -> None:
    client = make_client(cluster)
    with client.lease(TTL_S) as lease:
        client.put("svc/primary", b"n1", lease=lease.id)
        leader_id = cluster.leader()
        cluster.kill(leader_id)
        cluster.leader(among=sorted(cluster.processes))
        # Two TTLs after the crash the key is still there: the keepalive thread moved to a
        # surviving node (a new leader's full TTL alone would not last this long).
        outlived_s = time.monotonic() + 2 * TTL_S
        while time.monotonic() < outlived_s:
            assert client.get("svc/primary") is not None
            assert not lease.lost.is_set()
            time.sleep(0.2)  # polling interval
        primary_lease_id = lease.id
    # Leaving the block revoked the lease: the key is gone at once, without a TTL's wait.
    assert client.get("svc/primary") is None
    with pytest.raises(LeaseNotFound):
        client.lease_info(primary_lease_id)

    # A holder that dies: one keepalive, then nothing.
    abandoned = client.lease_grant(TTL_S)
    revision = client.put("svc/worker", b"w1", lease=abandoned.id)
    last_keepalive_s = time.monotonic()
    client.lease_keepalive(abandoned.id)
    wait_for(lambda: client.get("svc/worker") is None, EXPIRY_WAIT_S, "the key to expire")
    assert time.monotonic() - last_keepalive_s >= TTL_S  # never before its TTL
    with pytest.raises(LeaseNotFound):
        client.lease_keepalive(abandoned.id)

    events = client.watch("svc/worker", start_revision=revision + 1, progress=True)
    deadline_s = time.monotonic() + EXPIRY_WAIT_S
    try:
        for event in events:  # bookmarks every second let the deadline be checked
            if event.type == "delete":
                assert (event.key, event.prev_revision) == ("svc/worker", revision)
                break
            assert time.monotonic() < deadline_s, "the watch never saw the delete"
    finally:
        events.close()


def test_the_lease_commands(cluster: Cluster) -> None:
    endpoints = ",".join(cluster.url(node.id) for node in cluster.config.nodes)
    runner = CliRunner(env={kv.ENDPOINTS_ENV: endpoints})

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result.output

    granted = json.loads(run("lease", "grant", "60", "--output", "json"))
    lease_id = granted["id"]
    assert granted["ttl_s"] == 60
    assert run("put", "svc/a", "up", "--lease", lease_id).startswith("revision ")
    assert run("lease", "keepalive", lease_id) == f"lease {lease_id} kept alive, TTL 60 s\n"
    listed = json.loads(run("lease", "list", "--output", "json"))
    assert [(one["id"], one["ttl_s"]) for one in listed["leases"]] == [(lease_id, 60)]
    assert run("lease", "list").splitlines()[1].split()[:2] == [lease_id, "60"]
    assert json.loads(run("lease", "info", lease_id, "--output", "json"))["keys"] == ["svc/a"]
    assert run("lease", "revoke", lease_id).startswith(f"lease {lease_id} revoked, 1 key deleted")
    run("get", "svc/a", code=1)
    assert "is gone" in run("lease", "keepalive", lease_id, "--follow", code=1)
    assert "is gone" in run("lease", "revoke", lease_id, code=1)
    assert run("lease", "list") == "no leases\n"
    assert "rejected (bad_ttl)" in run("lease", "grant", "1", code=1)
