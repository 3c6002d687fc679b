"""`kvraft cluster down` stops every node of the cluster, whoever started it, and nothing else."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft import launcher
from kvraft.config import local_cluster_config, render_config
from kvraft.pidfile import PID_FILE_NAME, process_start_ticks
from tests.cluster_harness import http, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="needs /proc to tell processes apart"
    ),
]


@pytest.fixture
def processes() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield started
    finally:
        launcher.stop(started, timeout_s=10, signal_number=signal.SIGKILL)


def _down(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", "cluster", "down", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cluster_down_stops_nodes_started_by_hand_and_never_a_stranger(
    tmp_path: Path, processes: dict[str, subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "cluster"
    data_dir.mkdir()
    ports = launcher.free_ports(6)  # one call: two calls' ports may repeat
    http_ports, raft_ports = ports[:3], ports[3:]
    config = local_cluster_config(3, data_dir)
    config = replace(
        config,
        nodes=tuple(
            replace(node, http_port=http_ports[i], raft_port=raft_ports[i])
            for i, node in enumerate(config.nodes)
        ),
        storage=replace(config.storage, fsync=False),
    )
    config_path = data_dir / "cluster.toml"
    config_path.write_text(render_config(config))
    # Started by hand (`kvraft serve`, as `cluster up` prints it), not by `cluster up`: no
    # DIR/pids file exists.
    for node in config.nodes:
        processes[f"node{node.id}"] = launcher.start(
            launcher.serve_command(node.id, config_path), tmp_path / f"node{node.id}.log"
        )
    for node in config.nodes:
        wait_for(
            lambda node=node: http("GET", f"{node.http_url}/healthz", timeout_s=2).status == 200,
            what=f"node {node.id} to serve",
        )
        assert (node.data_dir / PID_FILE_NAME).exists()
    assert not (data_dir / "pids").exists()

    # A stale pid file naming a live process that is not that node (pid reuse): the start
    # time does not match, so it is never signalled.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    processes["stranger"] = stranger
    stranger_ticks = process_start_ticks(stranger.pid)
    assert stranger_ticks is not None
    launcher.stop({"node3": processes.pop("node3")}, timeout_s=10, signal_number=signal.SIGKILL)
    (config.node(3).data_dir / PID_FILE_NAME).write_text(f"{stranger.pid} {stranger_ticks + 1}\n")

    result = _down(data_dir)
    assert result.returncode == 0, result.stderr
    for node_id in (1, 2):
        assert f"node {node_id} (pid {processes[f'node{node_id}'].pid}) stopped" in result.stdout
        # SIGTERM: a clean shutdown (exit 0), which also removes the node's pid file.
        assert processes[f"node{node_id}"].wait(timeout=10) == 0
        assert not (config.node(node_id).data_dir / PID_FILE_NAME).exists()
    assert "node 3" not in result.stdout
    assert stranger.poll() is None, "cluster down signalled a process that is not a node"

    again = _down(data_dir)
    assert again.returncode == 0 and "no running nodes" in again.stdout
