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

Every process started is a child of this one, started by `kvraft.launcher` in
its own session (a Ctrl-C in the terminal reaches only the harness); it logs to
``DIR/nodes/node<i>.log`` and is remembered: `ChaosCluster.teardown` resumes
paused nodes, stops every live one with SIGTERM (SIGKILL after `STOP_TIMEOUT_S`)
and touches no other process.
A process that exits without being killed by the nemesis is an *unexpected
exit* (e.g. a node refusing to start after a crash) and is reported.

Spare slots (ids N+1, N+2, `spare_specs`) have their own addresses, ports and
data directories but are not in the config file: they start outside the
cluster. `ChaosCluster.join` starts one (or a founding node that was removed:
its old data directory is moved aside first, since only an empty node may join)
with ``kvraft serve --config DIR/join-<id>.toml --id K --raft-address ...
--http-address ... --data-dir ... --join URL``; the join config has the chaos
settings and the founding nodes other than K. Such a node restarts with the
same command minus ``--join`` (its membership is in its log). `retire` stops a
removed node for good. `members_view` asks any live node for ``GET
/v1/members`` (a follower forwards it to the leader) and `parse_members_view`
reads the answer.

`ClusterMonitor` polls every node's ``/v1/status`` in the background: it logs
each leader it sees (elections), knows the current leader for faults aimed at
it, and notices unexpected exits.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from kvraft import launcher
from kvraft.chaos.workload import Endpoint, exchange
from kvraft.client import (
    KVError,
    TransportFailure,
    build_members,
    build_status,
    interpret_members,
    interpret_status,
)
from kvraft.config import (
    ClusterConfig,
    LimitSettings,
    NodeSpec,
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
    "MEMBER_CALL_TIMEOUT_S",
    "MONITOR_INTERVAL_S",
    "STATUS_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ChaosCluster",
    "ClusterMonitor",
    "MembersView",
    "NodeView",
    "chaos_config",
    "converged",
    "loopback_block",
    "node_host",
    "parse_members_view",
    "spare_specs",
    "wait_converged",
    "wait_members_converged",
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

MEMBER_CALL_TIMEOUT_S = 3 * CHAOS_REQUEST_TIMEOUT_MS / 1000 + 3.0
"""How long one membership call waits for its answer: the server's own bound (three request
timeouts) plus a forwarding hop and margin, so the server normally answers 503/504 itself."""


def loopback_block(pid: int) -> str:
    """The first three octets (``127.B.C``) of a run's node addresses, from its pid; B is in
    1..254, so never 127.0.0.x (see the module docstring)."""
    return f"127.{1 + (pid >> 8) % 254}.{pid & 0xFF}"


def node_host(block: str, node_id: int) -> str:
    """Node `node_id`'s address in `block`."""
    if not 1 <= node_id <= 254:
        raise ValueError(f"node id {node_id} does not fit in one address octet")
    return f"{block}.{node_id}"


def _free_port(host: str) -> int:
    (port,) = launcher.free_ports(1, host)
    return port


PORT_TRIES_MAX = 100
"""How many ports `_distinct_ports` asks for before it gives up on finding an unused one."""


def _distinct_ports(port_for: Callable[[str], int]) -> Callable[[str], int]:
    """`port_for`, never giving one host the same port twice: a port found free and closed
    again may be found free once more (a node's Raft and HTTP ports once collided)."""
    given: set[tuple[str, int]] = set()

    def next_port(host: str) -> int:
        for _ in range(PORT_TRIES_MAX):
            port = port_for(host)
            if (host, port) not in given:
                given.add((host, port))
                return port
        raise RuntimeError(f"no unused port found on {host} in {PORT_TRIES_MAX} tries")

    return next_port


def chaos_config(
    nodes: int,
    data_dir: pathlib.Path,
    block: str,
    *,
    cluster_id: str = "kvraft-chaos",
    port_for: Callable[[str], int] = _free_port,
) -> ClusterConfig:
    """A cluster of `nodes` voters, node i on ``block.i`` (Raft and HTTP), durable (fsync on),
    with the chaos settings above; validated by a render-and-parse round trip."""
    base = local_cluster_config(nodes, data_dir, cluster_id=cluster_id)
    port_for = _distinct_ports(port_for)
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


def spare_specs(
    config: ClusterConfig, count: int, block: str, *, port_for: Callable[[str], int] = _free_port
) -> tuple[NodeSpec, ...]:
    """`count` spare node slots after the founding nodes (ids N+1, ...): each on its own
    address ``block.id`` with its own ports and a data directory next to the others'."""
    first = max(spec.id for spec in config.nodes) + 1
    data_root = config.nodes[0].data_dir.parent
    port_for = _distinct_ports(port_for)
    specs = []
    for node_id in range(first, first + count):
        host = node_host(block, node_id)
        specs.append(
            NodeSpec(
                id=node_id,
                raft_host=host,
                raft_port=port_for(host),
                http_host=host,
                http_port=port_for(host),
                data_dir=data_root / f"node{node_id}",
            )
        )
    return tuple(specs)


@dataclasses.dataclass(frozen=True, slots=True)
class MembersView:
    """A ``GET /v1/members`` answer: the voters, the learners, the leader (None: unknown)
    and whether a change is pending."""

    voters: frozenset[int]
    learners: frozenset[int]
    leader: int | None
    change_pending: bool

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners


def parse_members_view(body: object) -> MembersView | None:
    """Read an (untrusted) ``GET /v1/members`` body; None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("members"), list):
        return None
    voters: set[int] = set()
    learners: set[int] = set()
    for item in body["members"]:
        if not isinstance(item, dict):
            return None
        node_id = item.get("id")
        if type(node_id) is not int or node_id < 1:
            return None
        (voters if item.get("voter") is True else learners).add(node_id)
    if not voters:
        return None
    leader = body.get("leader_id")
    return MembersView(
        frozenset(voters),
        frozenset(learners),
        leader if type(leader) is int and leader > 0 else None,
        body.get("change_pending") is True,
    )


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

    def __init__(
        self,
        config: ClusterConfig,
        config_path: pathlib.Path,
        log_dir: pathlib.Path,
        spares: Sequence[NodeSpec] = (),
        env: Mapping[str, str] | None = None,
    ):
        """`env`: variables added to every node's environment (the test-only broken modes)."""
        self.config = config
        self.env = dict(env or {})
        self.config_path = config_path
        self.log_dir = log_dir
        self.founding_ids = [spec.id for spec in config.nodes]
        self.slots: dict[int, NodeSpec] = {spec.id: spec for spec in (*config.nodes, *spares)}
        self.node_ids = sorted(self.slots)
        # Slots started the joining way (spares; founding nodes re-added after a removal).
        self._joining_style: set[int] = {spec.id for spec in spares}
        self._join_urls: dict[int, str] = {}
        self._retired_dirs = 0
        self._lock = threading.RLock()
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        # Nodes whose process is meant to be gone (killed by the nemesis, or torn down).
        self._exit_expected: set[int] = set()
        self._paused: set[int] = set()
        self._exits_reported: set[int] = set()  # pids whose unexpected exit was reported
        self.pids_started: list[int] = []

    # --- addresses -------------------------------------------------------------------------

    def endpoints(self, node_ids: Collection[int] | None = None) -> list[Endpoint]:
        """The HTTP endpoints of `node_ids` (default: the founding nodes)."""
        wanted = self.founding_ids if node_ids is None else sorted(node_ids)
        return [
            Endpoint(node_id, self.slots[node_id].http_host, self.slots[node_id].http_port)
            for node_id in wanted
            if node_id in self.slots
        ]

    def host_of(self, node_id: int) -> str:
        """The node's own address (Raft and HTTP)."""
        return self.slots[node_id].raft_host

    def _command(self, node_id: int, join_url: str | None) -> list[str]:
        if node_id not in self._joining_style:
            return launcher.serve_command(node_id, self.config_path)
        spec = self.slots[node_id]
        join_config = self.config_path.parent / f"join-{node_id}.toml"
        if not join_config.exists():
            others = tuple(n for n in self.config.nodes if n.id != node_id)
            join_config.write_text(render_config(dataclasses.replace(self.config, nodes=others)))
        return launcher.serve_command(
            node_id,
            join_config,
            raft_address=spec.raft_address,
            http_address=spec.http_address,
            data_dir=spec.data_dir,
            join=join_url,
        )

    def log_path(self, node_id: int) -> pathlib.Path:
        return self.log_dir / f"node{node_id}.log"

    # --- processes -------------------------------------------------------------------------

    def start(self, node_id: int, join_url: str | None = None) -> int:
        """Start node `node_id` (with its config and data) unless it runs; its pid. A node
        started the joining way gets `join_url` as ``--join`` (None: restart it without)."""
        with self._lock:
            running = self._processes.get(node_id)
            if running is not None and running.poll() is None:
                return running.pid
            stamp = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
            process = launcher.start(
                self._command(node_id, join_url),
                self.log_path(node_id),
                header=f"--- kvraft chaos: starting node {node_id} at {stamp} ---",
                env=self.env,
            )
            self._processes[node_id] = process
            self._exit_expected.discard(node_id)
            self._paused.discard(node_id)
            self.pids_started.append(process.pid)
            return process.pid

    def start_all(self) -> None:
        """Start the founding nodes (the spares start outside the cluster)."""
        for node_id in self.founding_ids:
            self.start(node_id)

    def join(self, node_id: int, join_url: str) -> int:
        """Start slot `node_id` empty, asking `join_url` to add it; its pid. Its old data
        directory (a removed node's) is moved aside, kept for the post-mortem."""
        with self._lock:
            running = self._processes.get(node_id)
            if running is not None and running.poll() is None:
                raise RuntimeError(f"node {node_id} still runs (pid {running.pid})")
            data_dir = self.slots[node_id].data_dir
            if data_dir.exists():
                self._retired_dirs += 1
                data_dir.rename(data_dir.with_name(f"{data_dir.name}.removed-{self._retired_dirs}"))
            self._joining_style.add(node_id)
            return self.start(node_id, join_url)

    def retire(self, node_id: int) -> int | None:
        """Stop a node for good (SIGTERM, SIGKILL after `STOP_TIMEOUT_S`); its exit code
        (None: it was not running)."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is None or process.poll() is not None:
                return None
            self._exit_expected.add(node_id)
            self._paused.discard(node_id)
            return launcher.stop({node_id: process}, timeout_s=STOP_TIMEOUT_S)[node_id].code

    def exit_code(self, node_id: int) -> int | None:
        """The node's exit code if its process ended (None: running or never started)."""
        with self._lock:
            process = self._processes.get(node_id)
            return None if process is None else process.poll()

    def kill(self, node_id: int) -> None:
        """SIGKILL the node (a crash) and reap it; nothing if it is not running."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is None or process.poll() is not None:
                return
            self._exit_expected.add(node_id)
            launcher.kill(process)
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
            launcher.pause(process)
            self._paused.add(node_id)

    def resume(self, node_id: int) -> None:
        """SIGCONT a paused node."""
        with self._lock:
            process = self._processes.get(node_id)
            if process is not None and process.poll() is None:
                launcher.resume(process)
            self._paused.discard(node_id)

    def is_available(self, node_id: int) -> bool:
        """Running and not paused."""
        with self._lock:
            process = self._processes.get(node_id)
            return process is not None and process.poll() is None and node_id not in self._paused

    def paused(self) -> list[int]:
        with self._lock:
            return sorted(self._paused)

    def down(self, among: Collection[int] | None = None) -> list[int]:
        """Nodes (of `among`, default the founding ones) without a live process."""
        with self._lock:
            return [
                node_id
                for node_id in sorted(self.founding_ids if among is None else among)
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
            processes = dict(sorted(self._processes.items()))
            self._exit_expected.update(processes)
            stopped = launcher.stop(
                processes,
                timeout_s=STOP_TIMEOUT_S,
                signal_number=signal.SIGTERM if graceful else signal.SIGKILL,
            )
            self._paused.clear()
            return {node_id: end.code for node_id, end in stopped.items()}

    # --- observation -----------------------------------------------------------------------

    def status(self, node_id: int) -> dict[str, Any] | None:
        """The node's ``/v1/status``, or None if it did not answer in time."""
        spec = self.slots[node_id]
        return _status_of(Endpoint(node_id, spec.http_host, spec.http_port))

    def members_view(self, via: Collection[int]) -> MembersView | None:
        """``GET /v1/members`` through the first available node of `via` that answers."""
        for endpoint in self.endpoints([n for n in via if self.is_available(n)]):
            answer = exchange(endpoint, build_members(), timeout_s=MEMBER_CALL_TIMEOUT_S)
            if isinstance(answer, TransportFailure):
                continue
            try:
                view = parse_members_view(interpret_members(answer))
            except KVError:
                view = None
            if view is not None:
                return view
        return None


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


def wait_members_converged(
    cluster: ChaosCluster, deadline_passed: Callable[[], bool]
) -> tuple[bool, frozenset[int], str]:
    """After healing: poll until the *current* members (``GET /v1/members``, asked again
    each round) all answer, follow one leader, have applied everything committed, and no
    membership change is pending. A member without a process is restarted (a joined node
    without ``--join``) and a running node that is no longer a member is stopped. The
    verdict, the members last seen, and why."""
    verdict: tuple[bool, frozenset[int], str] = (False, frozenset(), "not polled")
    while not deadline_passed():
        view = cluster.members_view(cluster.node_ids)
        if view is None:
            verdict = (False, frozenset(), "no node answered GET /v1/members")
        else:
            members = view.members & set(cluster.node_ids)
            for node_id in cluster.down(members):
                cluster.start(node_id)
            for node_id in cluster.node_ids:
                if node_id not in view.members and cluster.is_available(node_id):
                    cluster.retire(node_id)
            ok, detail = converged({node_id: cluster.status(node_id) for node_id in members})
            if ok and view.change_pending:
                ok, detail = False, "a membership change is pending"
            shown = f"members {sorted(view.voters)}" + (
                f", learners {sorted(view.learners)}" if view.learners else ""
            )
            verdict = (ok, view.members, f"{shown}: {detail}")
            if ok:
                return verdict
        time.sleep(MONITOR_INTERVAL_S)  # polling interval
    return verdict
