"""Real kvraft node processes on loopback for integration tests.

Each node is `python -m kvraft serve` in its own OS process, so `kill()` is a real
SIGKILL and `stop()` a real SIGTERM. Everything started here is stopped and every
temporary file removed by `close()`, which the fixtures call even when a test fails.
Waits poll with a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from multidict import CIMultiDict

from kvraft.config import ClusterConfig, local_cluster_config, render_config

__all__ = ["Cluster", "HttpAnswer", "free_ports", "wait_for"]

T = TypeVar("T")

WAIT_S_DEFAULT = 20.0


def wait_for(
    condition: Callable[[], T | None], timeout_s: float = WAIT_S_DEFAULT, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as error:  # a node may be down mid-poll
            last_error = error
            result = None
        if result:
            return result
        time.sleep(0.05)  # polling interval, not synchronisation
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last_error!r})")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free a moment ago (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    headers: CIMultiDict[str]  # HTTP header names are case-insensitive

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> HttpAnswer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpAnswer(
                response.status, response.read(), CIMultiDict(response.headers.items())
            )
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, error.read(), CIMultiDict(error.headers.items()))


_RunningCluster = TypeVar("_RunningCluster", bound="Cluster")


def running(cluster: _RunningCluster) -> Iterator[_RunningCluster]:
    """For fixtures (`yield from running(Cluster(...))`): start every node, wait for a
    leader, yield the cluster, and kill every node afterwards, even on failure."""
    try:
        cluster.start_all()
        cluster.leader()
        yield cluster
    finally:
        cluster.close()


class Cluster:
    """N node processes of one cluster, with their config in a temporary directory."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        *,
        fsync: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        http_ports = free_ports(nodes)
        raft_ports = free_ports(nodes)
        base = local_cluster_config(nodes, root / "data")
        self.config: ClusterConfig = _with_ports(base, http_ports, raft_ports, fsync=fsync)
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(render_config(self.config))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, **(extra_env or {})}

    # --- processes ----------------------------------------------------------------------

    def start(self, node_id: int) -> None:
        log = open(self.root / f"node{node_id}.log", "ab")  # noqa: SIM115 - lives with the process
        self.processes[node_id] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvraft",
                "serve",
                "--config",
                str(self.config_path),
                "--id",
                str(node_id),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()

    def start_all(self) -> None:
        for node in self.config.nodes:
            self.start(node.id)

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, node_id: int, timeout_s: float = 15.0) -> int:
        """SIGTERM: a clean shutdown; returns the exit code."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout_s)

    def close(self) -> None:
        for node_id, process in list(self.processes.items()):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            del self.processes[node_id]

    def log_text(self, node_id: int) -> str:
        path = self.root / f"node{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- HTTP ---------------------------------------------------------------------------

    def url(self, node_id: int) -> str:
        return self.config.node(node_id).http_url

    def request(
        self,
        node_id: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        return http(method, self.url(node_id) + path, body, headers)

    def status(self, node_id: int) -> dict[str, Any]:
        answer = self.request(node_id, "GET", "/v1/status")
        assert answer.status == 200, answer
        status: dict[str, Any] = answer.json()
        return status

    def leader(self, among: list[int] | None = None, timeout_s: float = WAIT_S_DEFAULT) -> int:
        """Wait until the running nodes agree on one leader; return its id."""
        ids = among if among is not None else sorted(self.processes)

        def agreed() -> int | None:
            statuses = [self.status(i) for i in ids]
            leaders = {s["leader_id"] for s in statuses}
            if len(leaders) == 1 and 0 not in leaders:
                leader_id = leaders.pop()
                if any(s["id"] == leader_id and s["role"] == "leader" for s in statuses):
                    return int(leader_id)
            return None

        return wait_for(agreed, timeout_s, "one agreed leader")


def _with_ports(
    config: ClusterConfig, http_ports: list[int], raft_ports: list[int], *, fsync: bool
) -> ClusterConfig:
    from dataclasses import replace

    nodes = tuple(
        replace(node, http_port=http_ports[i], raft_port=raft_ports[i])
        for i, node in enumerate(config.nodes)
    )
    storage = replace(config.storage, fsync=fsync)
    return replace(config, nodes=nodes, storage=storage)
