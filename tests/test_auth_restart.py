"""Auth state survives a restart of every node (#20): real node processes, killed with SIGKILL
all at once, come back from their snapshots and logs with the same users, roles, switch and
signing key, so a token given before the restart still works after it on every node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvraft.config import render_config
from tests.cluster_harness import Cluster, HttpAnswer, running, wait_for

__all__: list[str] = []


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    built = Cluster(tmp_path, 3)
    # Snapshot every 20 entries: the restart recovers from a snapshot plus a log tail.
    built.config = replace(
        built.config,
        storage=replace(
            built.config.storage, snapshot_threshold_entries=20, snapshot_entries_per_record=0
        ),
    )
    built.config_path.write_text(render_config(built.config))
    yield from running(built)


def call(
    cluster: Cluster, node_id: int, method: str, path: str, body: Any = None, token: str = ""
) -> HttpAnswer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = (
        body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    )
    return cluster.request(node_id, method, path, data, headers)


def token_for(cluster: Cluster, node_id: int, user: str, password: str) -> str:
    answer = call(cluster, node_id, "POST", "/v1/auth/token", {"user": user, "password": password})
    assert answer.status == 200, answer
    token: str = answer.json()["token"]
    return token


def all_ready(cluster: Cluster) -> None:
    def ready() -> bool:
        return all(
            call(cluster, n.id, "GET", "/readyz").status == 200 for n in cluster.config.nodes
        )

    wait_for(ready, what="every node ready")


def test_auth_survives_a_restart_of_every_node(cluster: Cluster) -> None:
    ids = [node.id for node in cluster.config.nodes]
    first = ids[0]
    for path, body in (
        ("/v1/auth/roles/admin", {"admin": True}),
        ("/v1/auth/roles/app", {"permissions": [{"prefix": "app/", "access": "readwrite"}]}),
        ("/v1/auth/users/root", {"password": "root-pw", "roles": ["admin"]}),
        ("/v1/auth/users/alice", {"password": "alice-pw", "roles": ["app"]}),
    ):
        answer = call(cluster, first, "PUT", path, body)
        assert answer.status == 200, answer
    assert call(cluster, first, "POST", "/v1/auth/enable").status == 200
    alice = token_for(cluster, first, "alice", "alice-pw")
    for n in range(40):  # past the snapshot threshold twice
        answer = call(cluster, first, "PUT", f"/v1/kv/app/{n}", b"v", token=alice)
        assert answer.status == 200, answer
    assert call(cluster, first, "PUT", "/v1/kv/app/last", b"v").status == 401

    for node_id in ids:
        cluster.kill(node_id)
    cluster.start_all()
    all_ready(cluster)

    for node_id in ids:
        # The token from before: same key, same generation, on every node.
        def served(node_id: int = node_id) -> bool:
            answer = call(cluster, node_id, "GET", "/v1/kv/app/39?consistency=stale", token=alice)
            return answer.status == 200 and answer.body == b"v"

        wait_for(served, what=f"node {node_id} to serve alice's token")
        assert call(cluster, node_id, "GET", "/v1/kv/app/39").status == 401
        denied = call(cluster, node_id, "GET", "/v1/kv/other", token=alice)
        assert denied.status == 403 and denied.json()["error"] == "permission_denied"
        root = token_for(cluster, node_id, "root", "root-pw")
        users = call(cluster, node_id, "GET", "/v1/auth/users", token=root)
        assert users.status == 200, users
        assert [u["name"] for u in users.json()["users"]] == ["alice", "root"]
    # Writes go on through any node.
    answer = call(cluster, ids[-1], "PUT", "/v1/kv/app/after", b"v", token=alice)
    assert answer.status == 200, answer
    # No password and no token in any node's log (nor in their data, but for the hashes).
    for node_id in ids:
        text = cluster.log_text(node_id)
        for secret in ("root-pw", "alice-pw", alice, alice.split(".")[2]):
            assert secret not in text
