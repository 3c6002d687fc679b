"""Backup and restore (`kvraft backup`, `GET /v1/backup`, `kvraft restore`) with real processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft import launcher
from kvraft.backup import BackupHeader, BackupWriter
from kvraft.client import KVClient
from kvraft.statemachine import KVStateMachine, encode_put
from tests.cluster_harness import Cluster, http, running, wait_for
from tests.test_cluster_up import _consecutive_free_ports

pytestmark = pytest.mark.slow


def _kvraft(*arguments: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "old").mkdir()
    yield from running(Cluster(tmp_path / "old", 3))


def _put(url: str, key: str, value: bytes) -> int:
    answer = http("PUT", f"{url}/v1/kv/{key}", value)
    assert answer.status == 200, answer
    revision: int = answer.json()["revision"]
    return revision


def test_restore_brings_back_exactly_the_backed_up_state_in_a_new_cluster(
    tmp_path: Path, cluster: Cluster
) -> None:
    leader = cluster.leader()
    follower = next(node.id for node in cluster.config.nodes if node.id != leader)
    url = cluster.url(leader)
    revisions = {"alpha": _put(url, "alpha", b"one"), "beta": _put(url, "beta", b"two")}
    # 2 MB in all: more than one record of the backup stream.
    big = bytes(range(256)) * 4000
    revisions["big"] = _put(url, "big", big)
    revisions["big2"] = _put(url, "big2", big[::-1])

    backup_file = tmp_path / "cluster.kvbackup"
    # The follower comes first: it redirects to the leader.
    endpoints = f"{cluster.url(follower)},{url}"
    saved = _kvraft("backup", str(backup_file), "--endpoints", endpoints)
    assert saved.returncode == 0, saved.stderr
    assert "at revision" in saved.stdout and str(backup_file) in saved.stdout
    backed_up_revision = max(revisions.values())
    # curl -L does the same: the follower answers 307 with the leader's address.
    redirected = http("GET", f"{cluster.url(follower)}/v1/backup")
    assert redirected.status == 200
    assert redirected.headers["Content-Type"] == "application/vnd.kvraft.backup"
    # And the client library.
    info = KVClient([cluster.url(follower)], timeout_s=10).backup(tmp_path / "client.kvbackup")
    assert info.keys == 4 and info.revision >= backed_up_revision
    assert (tmp_path / "client.kvbackup").stat().st_size == info.file_bytes

    # Written after the backup: must not come back.
    _put(url, "alpha", b"changed later")
    _put(url, "gamma", b"later")
    old_cluster_id = cluster.config.cluster_id

    # Every node destroyed, data and all.
    cluster.close()
    shutil.rmtree(tmp_path / "old")

    new_dir = tmp_path / "new"
    http_base = _consecutive_free_ports(3)
    raft_base = _consecutive_free_ports(3, avoid=range(http_base, http_base + 3))
    restored = _kvraft(
        "restore", str(backup_file), "--data-dir", str(new_dir), "--nodes", "3",
        "--http-port-base", str(http_base), "--raft-port-base", str(raft_base),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert f"kvraft cluster up --data-dir {new_dir}" in restored.stdout

    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for node_id in (1, 2, 3):
            processes[node_id] = launcher.start(
                launcher.serve_command(node_id, new_dir / "cluster.toml"),
                tmp_path / f"new-node{node_id}.log",
            )
        urls = [f"http://127.0.0.1:{http_base + i}" for i in range(3)]

        def leader_url() -> str | None:
            for candidate in urls:
                status = http("GET", f"{candidate}/v1/status", timeout_s=2).json()
                if status["role"] == "leader":
                    return candidate
            return None

        new_leader = wait_for(leader_url, what="the restored cluster to elect a leader")
        status = http("GET", f"{new_leader}/v1/status").json()
        assert status["cluster_id"] != old_cluster_id
        for node_url in urls:
            expected = (("alpha", b"one"), ("beta", b"two"), ("big", big), ("big2", big[::-1]))
            for key, value in expected:
                answer = http("GET", f"{node_url}/v1/kv/{key}")
                assert answer.status == 200 and answer.body == value, (node_url, key)
                assert answer.headers["ETag"] == f'"{revisions[key]}"'
            assert http("GET", f"{node_url}/v1/kv/gamma").status == 404
        listed = http("GET", f"{new_leader}/v1/kv").json()
        assert [item["key"] for item in listed["items"]] == ["alpha", "beta", "big", "big2"]
        # The cluster takes writes, at revisions after the backup's.
        assert _put(new_leader, "delta", b"new") > backed_up_revision
        assert http("GET", f"{urls[0]}/v1/kv/delta").body == b"new"
    finally:
        launcher.stop(processes, timeout_s=10, signal_number=signal.SIGKILL)


def _backup_bytes() -> bytes:
    machine = KVStateMachine()
    for index in range(1, 201):
        machine.apply(index, encode_put(f"key{index}", b"v" * 500))
    header = BackupHeader(
        cluster_id="test", node_id=1, revision=machine.applied_index, keys=len(machine),
        voters=(1,), learners=(), members=(), kvraft_version="test",
        created_unix_s=time.time(),
    )  # fmt: skip
    writer = BackupWriter(header)
    start = writer.start()  # first: the checksum covers the bytes in file order
    records = [record for chunk in machine.snapshot_chunks() for record in writer.data(chunk)]
    return start + b"".join(records) + writer.end()


def _flip_bit(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "backup is truncated"),
        (lambda data: data[:-1], "backup is truncated"),
        (lambda data: _flip_bit(data, len(data) // 2), "checksum does not match"),
        (lambda data: _flip_bit(data, 40), "backup header"),
        (lambda data: data + b"x", "bytes after its end record"),
        (lambda data: b"NOTABACKUP" + data, "not a kvraft backup file"),
    ],
    ids=[
        "half",
        "last-byte-missing",
        "data-bit-flipped",
        "header-bit-flipped",
        "trailing-garbage",
        "not-a-backup",
    ],
)
def test_restore_refuses_a_damaged_backup_and_creates_nothing(
    tmp_path: Path, damage: object, message: str
) -> None:
    good = tmp_path / "good.kvbackup"
    good.write_bytes(_backup_bytes())
    assert callable(damage)
    bad = tmp_path / "bad.kvbackup"
    bad.write_bytes(damage(good.read_bytes()))
    target = tmp_path / "restored"
    refused = _kvraft("restore", str(bad), "--data-dir", str(target), "--nodes", "3")
    assert refused.returncode == 1
    assert message in refused.stderr and "nothing was restored" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not target.exists()
    # The intact file restores.
    accepted = _kvraft("restore", str(good), "--data-dir", str(target), "--nodes", "3")
    assert accepted.returncode == 0, accepted.stderr
    assert "restored revision 200 (200 keys)" in accepted.stdout
    # And restore never overwrites.
    again = _kvraft("restore", str(good), "--data-dir", str(target), "--nodes", "3")
    assert again.returncode == 1 and "exists" in again.stderr
