"""The chaos cluster's node processes: configure, start, kill, pause, restart, observe, stop.

Theory of operation
-------------------
Node i of a run listens on its own loopback address 127.B.C.i for both its
Raft and its HTTP port, and binds its outbound peer connections to it (the
transport does this for IP-literal hosts), so iptables rules on address pairs
cut single links. B.C comes from the harness's pid (`loopback_block`) and is
never 0.0: 127.0.0.1 is the kernel's source address for every other loopback
connection (the clients', a follower forwarding a request to the leader), so a
node there would be cut off from its clients too, and two runs at once never
share addresses or rules.

Every process started is a child of this one, in its own session (a Ctrl-C in
the terminal reaches only the harness), logs to ``DIR/nodes/node<i>.log``, and
is remembered: `ChaosCluster.teardown` resumes paused nodes, stops every live
one with SIGTERM (SIGKILL after `STOP_TIMEOUT_S`) and touches no other process.
A process that exits without being killed by the nemesis is an *unexpected
exit* (e.g. a node refusing to start after a crash) and is reported.

`ClusterMonitor` polls every node's ``/v1/status`` in the background: it logs
each leader it sees (elections), knows the current leader for faults aimed at
it, and notices unexpected exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvraft.chaos.workload import Endpoint, exchange
from kvraft.client import KVError, TransportFailure, build_status, interpret_status
from kvraft.config import (
    ClusterConfig,
    LimitSettings,
    RaftSettings,
    StorageSettings,
    local_cluster_config,
    parse_config,
    render_config,
)

__all__ = [
    "CHAOS_REQUEST_TIMEOUT_MS",
    "CHAOS_SEGMENT_BYTES_MAX",
    "CHAOS_SNAPSHOT_THRESHOLD_ENTRIES",
    "LEADER_FRESH_S",
    "MONITOR_INTERVAL_S",
    "STATUS_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ChaosCluster",
    "ClusterMonitor",
    "NodeView",
    "chaos_config",
    "converged",
    "free_port",
    "loopback_block",
    "node_host",
    "wait_converged",
]

CHAOS_REQUEST_TIMEOUT_MS = 2000
"""The nodes' request timeout in a chaos run (the default is 5 s): under faults most
requests wait for it, so a shorter one means more operations, and more evidence, per run."""

CHAOS_SNAPSHOT_THRESHOLD_ENTRIES = 1000
"""Snapshot every this many entries (the default is 10,000) so that a run of a minute takes
snapshots, compacts the log and sends InstallSnapshot to nodes that fell behind."""

CHAOS_SEGMENT_BYTES_MAX = 1024 * 1024
"""WAL segment size in a chaos run (the default is 64 MiB), so segments roll over, and are
recovered across several files, within a short run."""

STOP_TIMEOUT_S = 10.0
"""How long teardown waits for nodes to exit after SIGTERM before it sends SIGKILL."""

STATUS_TIMEOUT_S = 0.5
"""How long one status poll waits: a paused node must not hold up the observations."""

MONITOR_INTERVAL_S = 0.2
"""How often each node's status is polled: finer than an election (hundreds of ms)."""

LEADER_FRESH_S = 1.0
"""A leader observation older than this is not trusted to aim a fault at the leader."""


def loopback_block(pid: int) -> str:
    """The first three octets (``127.B.C``) of a run's node addresses, from its pid; B is in
    1..254, so never 127.0.0.x (see the module docstring)."""
    return f"127.{1 + (pid >> 8) % 254}.{pid & 0xFF}"


def node_host(block: str, node_id: int) -> str:
    """Node `node_id`'s address in `block`."""
    if not 1 <= node_id <= 254:
        raise ValueError(f"node id {node_id} does not fit in one address octet")
    return f"{block}.{node_id}"


def free_port(host: str) -> int:
    """A TCP port on `host` that was free a moment ago (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def chaos_config(
    nodes: int,
    data_dir: pathlib.Path,
    block: str,
    *,
    cluster_id: str = "kvraft-chaos",
    port_for: Callable[[str], int] = free_port,
) -> ClusterConfig:
    """A cluster of `nodes` voters, node i on ``block.i`` (Raft and HTTP), durable (fsync on),
    with the chaos settings above; validated by a render-and-parse round trip."""
    base = local_cluster_config(nodes, data_dir, cluster_id=cluster_id)
    specs = []
    for spec in base.nodes:
        host = node_host(block, spec.id)
        specs.append(
            dataclasses.replace(
                spec,
                raft_host=host,
                raft_port=port_for(host),
                http_host=host,
                http_port=port_for(host),
            )
        )
    config = dataclasses.replace(
        base,
        nodes=tuple(specs),
        raft=RaftSettings(),
        storage=StorageSettings(
            fsync=True,
            segment_bytes_max=CHAOS_SEGMENT_BYTES_MAX,
            snapshot_threshold_entries=CHAOS_SNAPSHOT_THRESHOLD_ENTRIES,
        ),
        limits=LimitSettings(request_timeout_ms=CHAOS_REQUEST_TIMEOUT_MS),
    )
    return parse_config(render_config(config), data_dir)


def _status_of(endpoint: Endpoint) -> dict[str, Any] | None:
    answer = exchange(
        endpoint, build_status(), connect_timeout_s=STATUS_TIMEOUT_S, timeout_s=STATUS_TIMEOUT_S
    )
    if isinstance(answer, TransportFailure):
        return None
    try:
        return interpret_status(answer)
    except KVError:
        return None


class ChaosCluster:
    """The node processes of one run. Thread-safe: the nemesis and the main thread share it."""

    def __init__(self, config: ClusterConfig, config_path: pathlib.Path, log_dir: pathlib.Path):
        self.config = config
        self.config_path = config_path
        self.log_dir = log_dir
        self.node_ids = [spec.id for spec in config.nodes]
        self._lock = threading.RLock()
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        # Nodes whose process is meant to be gone (killed by the nemesis, or torn down).
        self._exit_expected: set[int] = set()
        self._paused: set[int] = set()
        self._exits_reported: set[int] = set()  # pids whose unexpected exit was reported
        self.pids_started: list[int] = []

    # --- addresses -------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """Every node's HTTP endpoint."""
        return [Endpoint(spec.id, spec.http_host, spec.http_port) for spec in self.config.nodes]

    def host_of(self, node_id: int) -> str:
        """The node's own address (Raft and HTTP)."""
        return self.config.node(node_id).raft_host

    def log_path(self, node_id: int) -> pathlib.Path:
        return self.log_dir / f"node{node_id}.log"

    # --- processes -------------------------------------------------------------------------

    def start(self, node_id: int) -> int:
        """Start node `node_id` (with its config and data) unless it runs; its pid."""
        with self._lock:
            running = self._processes.get(node_id)
            if running is not None and running.poll() is None:
                return running.pid
            with open(self.log_path(node_id), "ab") as log:
                stamp = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
                log.write(f"--- kvraft chaos: starting node {node_id} at {stamp} ---\n".encode())
                log.flush()
                process = subprocess.Popen(
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
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    start_new_session=True,
                )
            self._processes[node_id] = process
            self._exit_expected.discard(node_id)
            self._paused.discard(node_id)
            self.pids_started.append(process.pid)
            return process.pid

    def start_all(self) -> None:
        for node_id in self.node_ids:
            self.start(node_id)

    def kill(self, node_id: int) -> None:
        """SIGKILL the node (a crash) and reap it; nothing if it is not running."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is None or process.poll() is not None:
                return
            self._exit_expected.add(node_id)
            process.kill()
            process.wait()
            self._paused.discard(node_id)

    def restart(self, node_id: int) -> None:
        """Start a node the nemesis killed (same config, same data)."""
        self.start(node_id)

    def pause(self, node_id: int) -> None:
        """SIGSTOP the node: it keeps its sockets but does nothing."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is None or process.poll() is not None:
                return
            process.send_signal(signal.SIGSTOP)
            self._paused.add(node_id)

    def resume(self, node_id: int) -> None:
        """SIGCONT a paused node."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
            self._paused.discard(node_id)

    def is_available(self, node_id: int) -> bool:
        """Running and not paused."""
        with self._lock:
            process = self._processes.get(node_id)
            return process is not None and process.poll() is None and node_id not in self._paused

    def paused(self) -> list[int]:
        with self._lock:
            return sorted(self._paused)

    def down(self) -> list[int]:
        """Nodes without a live process (killed, or exited on their own)."""
        with self._lock:
            return [
                node_id
                for node_id in self.node_ids
                if (process := self._processes.get(node_id)) is None or process.poll() is not None
            ]

    def unexpected_exits(self) -> list[tuple[int, int, int]]:
        """(node id, pid, exit code) of processes that exited on their own since the last
        call (the nemesis's kills do not count)."""
        found = []
        with self._lock:
            for node_id, process in self._processes.items():
                code = process.poll()
                if (
                    code is not None
                    and node_id not in self._exit_expected
                    and process.pid not in self._exits_reported
                ):
                    self._exits_reported.add(process.pid)
                    found.append((node_id, process.pid, code))
        return found

    def live_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._processes.values() if p.poll() is None]

    def teardown(self, *, graceful: bool = True) -> dict[int, int]:
        """Resume paused nodes, stop every live node (SIGTERM, or SIGKILL when not
        `graceful`), SIGKILL any still alive after `STOP_TIMEOUT_S`; each node's exit code
        (negative: killed by that signal). Only processes started here are signalled."""
        with self._lock:
            processes = dict(self._processes)
            self._exit_expected.update(processes)
            for process in processes.values():
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGCONT)
                        process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            self._paused.clear()
            deadline_s = time.monotonic() + STOP_TIMEOUT_S
            codes: dict[int, int] = {}
            for node_id, process in sorted(processes.items()):
                try:
                    codes[node_id] = process.wait(timeout=max(0.0, deadline_s - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    codes[node_id] = process.wait()
            return codes

    # --- observation -----------------------------------------------------------------------

    def status(self, node_id: int) -> dict[str, Any] | None:
        """The node's ``/v1/status``, or None if it did not answer in time."""
        spec = self.config.node(node_id)
        return _status_of(Endpoint(node_id, spec.http_host, spec.http_port))


def converged(statuses: dict[int, dict[str, Any] | None]) -> tuple[bool, str]:
    """Whether every node answered, all follow one leader in one term, and all have applied
    everything the leader has committed; if not, what is missing."""
    missing = sorted(node_id for node_id, status in statuses.items() if status is None)
    if missing:
        return False, f"nodes {missing} do not answer"
    answered = {node_id: status for node_id, status in statuses.items() if status is not None}

    def integer(value: object) -> int | None:  # status answers are untrusted JSON
        return value if type(value) is int else None

    leaders = {(integer(s.get("leader_id")), integer(s.get("term"))) for s in answered.values()}
    if len(leaders) != 1:
        return False, f"nodes disagree on the leader: {sorted(leaders, key=str)}"
    leader_id, _term = next(iter(leaders))
    leader = answered.get(leader_id) if leader_id is not None else None
    if leader is None or leader.get("role") != "leader":
        return False, f"no node leads (leader_id {leader_id})"
    commit_index = leader.get("commit_index")
    behind = sorted(
        node_id for node_id, s in answered.items() if s.get("applied_index") != commit_index
    )
    if behind:
        return False, f"nodes {behind} have not applied up to commit index {commit_index}"
    return True, f"node {leader_id} leads; every node applied up to {commit_index}"


@dataclasses.dataclass(slots=True)
class NodeView:
    """The last status one node reported: when (monotonic s), its role and term."""

    at_s: float
    role: str
    term: int


class ClusterMonitor:
    """Background observers: one thread per node polls its status; one thread checks for
    unexpected exits. Each leader seen in a new term is logged as ``{"type": "leader"}``."""

    def __init__(self, cluster: ChaosCluster, log: Callable[[dict[str, Any]], None]) -> None:
        self.cluster = cluster
        self._log = log
        self._lock = threading.Lock()
        self._views: dict[int, NodeView] = {}
        self._leader_terms: set[int] = set()
        self.exits: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for node_id in self.cluster.node_ids:
            self._threads.append(
                threading.Thread(
                    target=self._poll_node, args=(node_id,), name=f"chaos-monitor-{node_id}"
                )
            )
        self._threads.append(threading.Thread(target=self._watch_exits, name="chaos-exits"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(STATUS_TIMEOUT_S * 4 + MONITOR_INTERVAL_S)
        self.check_exits()

    def _poll_node(self, node_id: int) -> None:
        while not self._stop.is_set():
            if self.cluster.is_available(node_id):
                self.observe(node_id, self.cluster.status(node_id))
            self._stop.wait(MONITOR_INTERVAL_S)  # polling interval

    def observe(self, node_id: int, status: dict[str, Any] | None) -> None:
        """Take one status answer (None: no answer) of `node_id` into account."""
        if status is None:
            return
        role, term = status.get("role"), status.get("term")
        if not isinstance(role, str) or type(term) is not int:
            return
        with self._lock:
            self._views[node_id] = NodeView(time.monotonic(), role, term)
            new_leader = role == "leader" and term not in self._leader_terms
            if new_leader:
                self._leader_terms.add(term)
        if new_leader:
            self._log({"type": "leader", "node": node_id, "term": term})

    def _watch_exits(self) -> None:
        while not self._stop.is_set():
            self.check_exits()
            self._stop.wait(MONITOR_INTERVAL_S)

    def check_exits(self) -> None:
        """Log any process that exited on its own."""
        for node_id, pid, code in self.cluster.unexpected_exits():
            self.exits.append((node_id, pid, code))
            self._log({"type": "exit", "node": node_id, "pid": pid, "code": code})

    def current_leader(self) -> int | None:
        """The available node that most recently said it leads, in the highest term, if it
        said so within `LEADER_FRESH_S`; else None."""
        now = time.monotonic()
        with self._lock:
            views = dict(self._views)
        candidates = [
            (view.term, node_id)
            for node_id, view in views.items()
            if view.role == "leader"
            and now - view.at_s <= LEADER_FRESH_S
            and self.cluster.is_available(node_id)
        ]
        return max(candidates)[1] if candidates else None


def wait_converged(
    cluster: ChaosCluster, deadline_passed: Callable[[], bool], node_ids: Sequence[int]
) -> tuple[bool, str]:
    """Poll every node until `converged` or the deadline; the last verdict and why."""
    verdict = (False, "not polled")
    while not deadline_passed():
        verdict = converged({node_id: cluster.status(node_id) for node_id in node_ids})
        if verdict[0]:
            return verdict
        time.sleep(MONITOR_INTERVAL_S)  # polling interval
    return verdict
