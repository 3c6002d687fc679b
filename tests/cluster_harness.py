"""Real kvraft node processes on loopback for integration tests.

Each node is `python -m kvraft serve` in its own OS process, started and signalled by
`kvraft.launcher`, so `kill()` is a real SIGKILL, `stop()` a real SIGTERM and `pause()`
a real SIGSTOP. Everything started here is stopped and every
temporary file removed by `close()`, which the fixtures call even when a test fails.
Waits poll with a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from multidict import CIMultiDict

from kvraft import launcher
from kvraft.config import (
    PEER_SECRET_FILE_NAME,
    ClusterConfig,
    PeerTlsSettings,
    TlsSettings,
    local_cluster_config,
    render_config,
    write_peer_secret,
)
from kvraft.launcher import free_ports, serve_command

__all__ = ["Cluster", "HttpAnswer", "wait_for"]

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
    context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """One request; `context` for an https:// URL (what to trust, what client certificate
    to show)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
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
        peer_secret: bytes | None = None,
        tls: TlsSettings | None = None,
        peer_tls: PeerTlsSettings | None = None,
        client_context: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`/`peer_tls`: the config's tables; `client_context`: how the harness's own
        requests reach an HTTPS cluster."""
        self.root = root
        # One call: ports from two calls may repeat (each call's are closed before it returns).
        ports = free_ports(2 * nodes)
        http_ports, raft_ports = ports[:nodes], ports[nodes:]
        secret_path: Path | None = None
        if peer_secret is not None:
            secret_path = root / PEER_SECRET_FILE_NAME
            write_peer_secret(secret_path, peer_secret)
        base = local_cluster_config(
            nodes, root / "data", peer_secret_file=secret_path, tls=tls, peer_tls=peer_tls
        )
        self.config: ClusterConfig = _with_ports(base, http_ports, raft_ports, fsync=fsync)
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(render_config(self.config))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.extra_env = extra_env or {}
        self.client_context = client_context

    # --- processes ----------------------------------------------------------------------

    def start(self, node_id: int) -> None:
        self.start_command(node_id, serve_command(node_id, self.config_path))

    def start_command(self, node_id: int, command: list[str]) -> None:
        """Run `command` as node `node_id`, logging to its log file."""
        self.processes[node_id] = launcher.start(
            command, self.log_path(node_id), env=self.extra_env
        )

    def start_all(self) -> None:
        for node in self.config.nodes:
            self.start(node.id)

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash."""
        launcher.kill(self.processes.pop(node_id))

    def stop(self, node_id: int, timeout_s: float = 15.0) -> int:
        """SIGTERM (SIGKILL after `timeout_s`): a clean shutdown; returns the exit code."""
        process = self.processes.pop(node_id)
        return launcher.stop({node_id: process}, timeout_s=timeout_s)[node_id].code

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the node keeps its sockets but does nothing."""
        launcher.pause(self.processes[node_id])

    def resume(self, node_id: int) -> None:
        launcher.resume(self.processes[node_id])

    def close(self) -> None:
        """SIGKILL every node still running, and reap it."""
        launcher.stop(self.processes, timeout_s=10, signal_number=signal.SIGKILL)
        self.processes.clear()

    def log_path(self, node_id: int) -> Path:
        return self.root / f"node{node_id}.log"

    def log_text(self, node_id: int) -> str:
        path = self.log_path(node_id)
        return path.read_text(errors="replace") if path.exists() else ""

    # --- HTTP ---------------------------------------------------------------------------

    def url(self, node_id: int) -> str:
        return self.config.url(self.config.node(node_id))

    def request(
        self,
        node_id: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        return http(method, self.url(node_id) + path, body, headers, context=self.client_context)

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
