"""A real node on a disk that fills up: it stops acknowledging, exits non-zero, loses nothing.

The lesson of "fsyncgate": a failed write or fsync is never retried and ignored. The node
must stop, and every write it acknowledged before the failure must still be there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft.commands.serve import EXIT_STORAGE_FAILED
from kvraft.config import local_cluster_config, render_config
from tests.cluster_harness import Cluster, wait_for

pytestmark = pytest.mark.slow

DISK_BYTES = 3 * 1024 * 1024
VALUE_BYTES = 200 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"this test needs root to mount a tmpfs: {mounted.stderr}"
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _single_node(root: Path, data_root: Path) -> Cluster:
    cluster = Cluster(root, 1, fsync=True)
    config = local_cluster_config(1, data_root)
    spec = replace(
        config.nodes[0],
        http_port=cluster.config.nodes[0].http_port,
        raft_port=cluster.config.nodes[0].raft_port,
    )
    cluster.config = replace(cluster.config, nodes=(spec,))
    cluster.config_path.write_text(render_config(cluster.config))
    return cluster


def test_a_full_disk_stops_the_node_and_keeps_every_acknowledged_write(
    tmp_path: Path, small_disk: Path
) -> None:
    cluster = _single_node(tmp_path, small_disk)
    acknowledged: dict[str, bytes] = {}
    try:
        cluster.start(1)
        cluster.leader()
        failure_status = None
        for i in range(4 * DISK_BYTES // VALUE_BYTES):
            value = bytes([i % 251]) * VALUE_BYTES
            try:
                answer = cluster.request(1, "PUT", f"/v1/kv/k{i}", value)
            except OSError:
                break  # the node is gone: nothing more was acknowledged
            if answer.status != 200:
                failure_status = answer.status
                break
            acknowledged[f"k{i}"] = value
        assert acknowledged, "the disk was full before the first write"
        # The node reports the failure as "outcome unknown" or "unavailable", never success.
        assert failure_status in (None, 503, 504)
        process = cluster.processes.pop(1)
        code = process.wait(timeout=30)
        assert code == EXIT_STORAGE_FAILED
        assert "storage failed" in cluster.log_text(1)
    finally:
        cluster.close()

    # Move the data to a roomy disk and restart: everything acknowledged is there.
    roomy = tmp_path / "roomy"
    shutil.copytree(small_disk, roomy)
    (tmp_path / "again").mkdir()
    restarted = _single_node(tmp_path / "again", roomy)
    try:
        restarted.start(1)
        restarted.leader()
        for key, value in acknowledged.items():
            got = wait_for(
                lambda k=key: restarted.request(1, "GET", f"/v1/kv/{k}"), what=f"reading {key}"
            )
            assert got.status == 200 and got.body == value, key
    finally:
        restarted.close()
