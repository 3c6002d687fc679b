"""`kvraft cluster up` as `make run` uses it, and a 5-node cluster's failover."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.client import KVClient
from kvraft.launcher import free_ports
from tests.cluster_harness import Cluster, http, wait_for

pytestmark = pytest.mark.slow


class ClusterUp:
    """A `kvraft cluster up` process whose output is collected line by line."""

    def __init__(self, data_dir: Path, nodes: int, *options: str) -> None:
        http_base = _consecutive_free_ports(nodes)
        raft_base = _consecutive_free_ports(nodes, avoid=range(http_base, http_base + nodes))
        scheme = "https" if "--tls" in options else "http"
        self.urls = [f"{scheme}://127.0.0.1:{http_base + i}" for i in range(nodes)]
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "kvraft", "cluster", "up", "--nodes", str(nodes),
                "--data-dir", str(data_dir), "--http-port-base", str(http_base),
                "--raft-port-base", str(raft_base), *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _consecutive_free_ports(count: int, avoid: range = range(0)) -> int:
    """A base port such that base .. base+count-1 were all free a moment ago."""
    for candidate in free_ports(32):
        block = range(candidate, candidate + count)
        if candidate + count > 65535 or set(block) & set(avoid):
            continue
        if all(_port_free(port) for port in block):
            return candidate
    raise AssertionError("no block of free ports found")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def cluster_up(tmp_path: Path) -> Iterator[ClusterUp]:
    running = ClusterUp(tmp_path / "cluster", 3)
    try:
        yield running
    finally:
        running.close()


def test_cluster_up_narrates_a_failover_and_stops_every_node_on_ctrl_c(
    tmp_path: Path, cluster_up: ClusterUp
) -> None:
    wait_for(lambda: cluster_up.count("leader elected") >= 1, what="the first leader")
    url = cluster_up.urls[1]
    assert http("PUT", f"{url}/v1/kv/greeting", b"hello").status == 200
    status = http("GET", f"{url}/v1/status").json()
    leader = status["leader_id"]
    leader_status = http("GET", f"{cluster_up.urls[leader - 1]}/v1/status").json()
    os.kill(leader_status["pid"], signal.SIGKILL)
    wait_for(lambda: cluster_up.count("leader elected") >= 2, what="a new leader announced")
    survivor = cluster_up.urls[leader % 3]
    assert http("GET", f"{survivor}/v1/kv/greeting").body == b"hello"
    assert "restart:" in cluster_up.output()  # how to bring the killed node back
    pids = [
        http("GET", f"{u}/v1/status").json()["pid"]
        for i, u in enumerate(cluster_up.urls)
        if i != leader - 1
    ]
    assert cluster_up.interrupt() == 0
    for pid in pids:
        wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), what=f"node pid {pid} to exit")
    assert (tmp_path / "cluster" / "cluster.toml").exists()


def test_a_second_cluster_up_on_the_same_data_dir_resumes_with_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    first = ClusterUp(data_dir, 3)
    try:
        wait_for(lambda: first.count("leader elected") >= 1, what="the first leader")
        assert http("PUT", f"{first.urls[0]}/v1/kv/kept", b"across restarts").status == 200
        assert first.interrupt() == 0
    finally:
        first.close()
    second = subprocess.Popen(
        [sys.executable, "-m", "kvraft", "cluster", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The resumed cluster keeps the ports written in its cluster.toml.
        got = wait_for(
            lambda: http("GET", f"{first.urls[2]}/v1/kv/kept").body == b"across restarts",
            what="the resumed cluster to serve the old data",
        )
        assert got
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(timeout=10)


def test_cluster_up_tls_serves_https_its_curl_commands_work_and_cluster_down_stops_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "cluster"
    up = ClusterUp(data_dir, 3, "--tls")
    try:
        wait_for(lambda: up.count("leader elected") >= 1, what="the first leader")
        assert up.count("peers use mutual TLS") == 1
        # The banner's curl commands, run as printed (from the directory it was started in).
        curls = [line.strip() for line in up.lines if line.strip().startswith("curl ")]
        assert len(curls) == 3 and all("--cacert" in line for line in curls), up.output()
        for line in curls:
            run = subprocess.run(
                shlex.split(line), capture_output=True, text=True, timeout=30, check=False
            )
            assert run.returncode == 0, run.stderr
        ca = data_dir / "certs" / "ca.crt"
        client = KVClient(up.urls[1:], cacert=ca)
        written = client.get("greeting")  # what the banner's first curl wrote
        assert written is not None and written[0] == b"hello"
        revision = client.put("tls/key", b"value")
        assert client.get("tls/key") == (b"value", revision)
        status = subprocess.run(
            [sys.executable, "-m", "kvraft", "status", "--endpoints", ",".join(up.urls)],
            env={**os.environ, "KVRAFT_CACERT": str(ca)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0 and status.stdout.count("https://") == 3, status.stderr
        pids = [KVClient([url], cacert=ca).status_all()[url]["pid"] for url in up.urls]
        down = subprocess.run(
            [sys.executable, "-m", "kvraft", "cluster", "down", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert down.returncode == 0, down.stderr
        for pid in pids:
            wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), what=f"node pid {pid} to exit")
        assert up.interrupt() == 0
    finally:
        up.close()


def test_five_nodes_survive_losing_the_leader_and_one_more(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 5)
    try:
        cluster.start_all()
        leader = cluster.leader()
        follower = next(n for n in sorted(cluster.processes) if n != leader)
        assert cluster.request(follower, "PUT", "/v1/kv/five", b"nodes").status == 200
        cluster.kill(leader)
        other = next(n for n in sorted(cluster.processes) if n != follower)
        cluster.kill(other)  # two of five down: a majority remains
        survivors = sorted(cluster.processes)
        new_leader = cluster.leader(survivors)
        assert new_leader not in (leader, other)
        for node in survivors:
            assert cluster.request(node, "GET", "/v1/kv/five").body == b"nodes"
        assert cluster.request(survivors[-1], "PUT", "/v1/kv/still", b"writable").status == 200
    finally:
        cluster.close()
