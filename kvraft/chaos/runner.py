"""One chaos run, start to finish: cluster up, workload and nemesis, heal, final reads, checks.

Theory of operation
-------------------
`run_chaos` is the only place that wires the parts together:

1. refuse a report directory that already holds something; write the cluster
   config; decide whether partitions are possible (root and a working
   iptables) and say so when they are not;
2. start the nodes, wait until they agree on a leader;
3. run the clients (`Workload`, the bank's `Bank`, unless ``--no-bank``, whose
   accounts are opened first, and the lock clients, `LockWorkload`, unless
   ``--no-lock``) and the nemesis (`run_schedule`) for the requested time, then stop
   both; the watchers (`Watchers`, unless ``--no-watch``) start with the clients and
   stream on through steps 3 and 4;
4. heal everything (flush the rules, SIGCONT, restart what is down), wait until
   every *current* member (``GET /v1/members``) follows one leader and has
   applied everything committed, with no membership change pending (members
   that are down are restarted, removed nodes still running are stopped), then
   read every register key and every set element through the current members, audit
   the bank once more, read the lock's register and its journal, and give the watchers
   a moment to see the last acknowledged write, then stop them;
5. stop the nodes (SIGTERM), remove the iptables chain, and only then check the
   history (and the watch log, `kvraft.chaos.watch_check`) as written to disk and write
   the report.

Step 5's cleanup runs in a ``finally`` with SIGINT/SIGTERM/SIGHUP blocked, so an
exception or a Ctrl-C at any point still leaves no node process and no rule
behind (SIGTERM and SIGHUP are turned into KeyboardInterrupt for the run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from kvraft.chaos.bank import Bank, check_bank
from kvraft.chaos.burst import (
    BURST_WRITES,
    BurstWave,
    check_bursts,
    read_back,
    run_burst,
    waves_from_events,
)
from kvraft.chaos.checks import CHECK_TIME_BUDGET_S_DEFAULT, check_registers, check_set
from kvraft.chaos.cluster import (
    MEMBER_CALL_TIMEOUT_S,
    MONITOR_INTERVAL_S,
    ChaosCluster,
    ClusterMonitor,
    MembersView,
    chaos_config,
    loopback_block,
    spare_specs,
    wait_converged,
    wait_members_converged,
)
from kvraft.chaos.history import (
    HISTORY_FILE_NAME,
    NEMESIS_FILE_NAME,
    EventLog,
    HistoryRecorder,
    load_events,
)
from kvraft.chaos.lock_check import LockCheck, check_locks
from kvraft.chaos.locks import LockWorkload
from kvraft.chaos.nemesis import (
    NEMESIS_KINDS,
    SPARE_SLOTS,
    Fault,
    Grudge,
    MemberCall,
    MemberState,
    cut_pairs,
    describe_fault,
    plan_schedule,
    run_schedule,
    voters_bounds,
)
from kvraft.chaos.netfilter import Firewall, FirewallError, chain_name, find_iptables
from kvraft.chaos.report import (
    LOG_TAIL_LINES,
    ChaosReport,
    RunFacts,
    build_report,
    render_text,
    render_timeline,
    report_json,
)
from kvraft.chaos.watch_check import (
    WATCH_FILE_NAME,
    check_watch,
    streams_from_events,
    writes_from_history,
)
from kvraft.chaos.watchers import Watchers
from kvraft.chaos.workload import Workload, exchange
from kvraft.client import (
    FailureKind,
    HttpRequest,
    HttpResponse,
    KVError,
    TransportFailure,
    build_remove_member,
    build_transfer_leadership,
    interpret_transfer,
)
from kvraft.config import (
    PEER_SECRET_FILE_NAME,
    ClusterConfig,
    new_peer_secret,
    render_config,
    write_peer_secret,
)
from kvraft.leases import lease_ttl_s_min

__all__ = [
    "FINAL_READ_TIMEOUT_S",
    "LOG_TAIL_BYTES_MAX",
    "MEMBER_ADD_TIMEOUT_S",
    "RECOVERY_TIMEOUT_S",
    "STARTUP_TIMEOUT_S",
    "WATCH_CATCH_UP_TIMEOUT_S",
    "ChaosError",
    "ChaosOptions",
    "replay_command",
    "run_chaos",
]

STARTUP_TIMEOUT_S = 30.0
"""How long a fresh cluster may take to elect its first leader (Python start-up included)."""

RECOVERY_TIMEOUT_S = 60.0
"""How long the healed cluster may take to agree on a leader and catch every node up; a
node that needs longer is reported as not recovered."""

FINAL_READ_TIMEOUT_S = 30.0
"""How long the final reads (every register key, every set page) may take in all."""

MEMBER_ADD_TIMEOUT_S = 30.0
"""How long a membership fault waits for a spare to become a voter: Python start-up, the
join request, a snapshot and the promotion take a few seconds; past this the fault reports a
``timeout`` and leaves the node to finish joining (or not) on its own."""

WATCH_CATCH_UP_TIMEOUT_S = 10.0
"""How long the watchers may take, after the final reads, to see the last acknowledged
write (a converged cluster has applied it everywhere; a stream shows it within a progress
interval, or a reconnection)."""

LOG_TAIL_BYTES_MAX = 64 * 1024
"""The most bytes read from the end of a node's log to quote its last lines in a report."""


class ChaosError(RuntimeError):
    """The harness could not run (a bad report directory, a cluster that never started)."""


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """What to run.

    Fields:
        nodes: cluster size (3 or 5).
        time_s: how long the workload and the nemesis run.
        nemeses: the fault kinds (see `kvraft.chaos.nemesis.NEMESIS_KINDS`).
        seed: decides the fault schedule and the clients' choices.
        report_dir: where the config, data, logs, history and report go (must be empty).
        broken_stale_reads: the deliberately wrong read mode the checker must catch.
        check_time_budget_s: how long the linearizability search may take.
        watch: run the watchers (`kvraft.chaos.watchers`) and the watch check.
        broken_watch: a deliberately wrong watcher mode the watch check must catch (one of
            `kvraft.chaos.watchers.BROKEN_WATCH_MODES`), or None.
        broken_burst: the burst client misreports one acknowledged write per wave as shed;
            the burst check must catch it.
        bank: run the bank (`kvraft.chaos.bank`: transfers as transactions) and its check.
        broken_bank: a deliberately wrong bank mode the bank check must catch (one of
            `kvraft.chaos.bank.BROKEN_BANK_MODES`), or None.
        lock: run the lock workload (`kvraft.chaos.locks`: leases, a lock, a fenced
            register, holders stalling past their lease) and its check.
        broken_fence: start the nodes with `kvraft.http_api.BROKEN_FENCE_ENV` set, so that
            they ignore fences; the lock check must catch it.
        keep_data: keep the nodes' data directories of a passing run (a failing run's are
            always kept, to be examined).
    """

    nodes: int
    time_s: float
    nemeses: frozenset[str]
    seed: int
    report_dir: pathlib.Path
    broken_stale_reads: bool = False
    check_time_budget_s: float = CHECK_TIME_BUDGET_S_DEFAULT
    watch: bool = True
    broken_watch: str | None = None
    broken_burst: bool = False
    bank: bool = True
    broken_bank: str | None = None
    lock: bool = True
    broken_fence: bool = False
    keep_data: bool = False


def replay_command(options: ChaosOptions) -> str:
    """The command that runs the same schedule again (real processes: the timing differs)."""
    kinds = ",".join(kind for kind in NEMESIS_KINDS if kind in options.nemeses) or "none"
    command = (
        f"kvraft chaos --nodes {options.nodes} --time {options.time_s:g} --nemesis {kinds} "
        f"--seed {options.seed} --report NEW_DIR"
    )
    command += " --broken-stale-reads" if options.broken_stale_reads else ""
    command += "" if options.watch else " --no-watch"
    command += "" if options.bank else " --no-bank"
    command += f" --broken-bank {options.broken_bank}" if options.broken_bank else ""
    command += "" if options.lock else " --no-lock"
    command += " --broken-fence" if options.broken_fence else ""
    command += f" --broken-watch {options.broken_watch}" if options.broken_watch else ""
    return command + (" --broken-burst" if options.broken_burst else "")


def _call_outcome(answer: HttpResponse | TransportFailure) -> tuple[str, int | None, str]:
    """(outcome, status, detail) of a membership call's answer (see `MemberCall`)."""
    if isinstance(answer, TransportFailure):
        outcome = "unavailable" if answer.kind is FailureKind.NOT_SENT else "unknown"
        return outcome, None, answer.detail
    detail = answer.body[:300].decode("utf-8", "replace")
    by_status = {200: "ok", 404: "refused", 409: "refused", 503: "unavailable", 504: "unknown"}
    return by_status.get(answer.status, "error"), answer.status, detail


def _leader_header(answer: HttpResponse | TransportFailure) -> int | None:
    if isinstance(answer, TransportFailure):
        return None
    text = answer.headers.get("x-kvraft-leader-id", "")
    return int(text) if text.isdigit() and len(text) < 10 and int(text) > 0 else None


class _Controls:
    """The nemesis's view of the cluster, the monitor and the firewall, and the harness's
    view of the membership (which the workload's endpoints follow)."""

    def __init__(
        self,
        cluster: ChaosCluster,
        monitor: ClusterMonitor,
        firewall: Firewall | None,
        workload: Workload,
        log: Callable[[dict[str, Any]], None],
        watchers: Watchers | None = None,
        bank: Bank | None = None,
        lock: LockWorkload | None = None,
    ) -> None:
        self.cluster = cluster
        self.monitor = monitor
        self.firewall = firewall
        self.workload = workload
        self.watchers = watchers
        self.bank = bank
        self.lock = lock
        self._log = log
        self._lock = threading.Lock()
        self._members: tuple[int, ...] = tuple(cluster.founding_ids)
        self._removed_at_ns: dict[int, int] = {}
        self.voters_min, self.voters_max = voters_bounds(len(cluster.founding_ids))
        self._next_burst_wave = 0
        self.broken_burst = False

    def current_leader(self) -> int | None:
        return self.monitor.current_leader()

    def member_ids(self) -> tuple[int, ...]:
        with self._lock:
            return self._members

    def _view(self) -> MembersView | None:
        return self.cluster.members_view(self.member_ids() + tuple(self.cluster.node_ids))

    def refresh(self, view: MembersView | None = None) -> MembersView | None:
        """Read the membership and let the workload follow it; the view (None: no answer)."""
        view = view if view is not None else self._view()
        if view is None:
            return None
        members = tuple(sorted(view.members & set(self.cluster.node_ids)))
        now_ns = time.monotonic_ns()
        with self._lock:
            changed = members != self._members
            for node_id in self._members:
                if node_id not in members:
                    self._removed_at_ns.setdefault(node_id, now_ns)
            for node_id in members:
                self._removed_at_ns.pop(node_id, None)
            self._members = members
            removed = dict(self._removed_at_ns)
        if changed:
            self._log({"type": "members", "voters": sorted(view.voters),
                       "learners": sorted(view.learners), "leader": view.leader})  # fmt: skip
        endpoints = self.cluster.endpoints(members)
        if endpoints:
            self.workload.follow_membership(endpoints, removed)
            if self.watchers is not None:
                self.watchers.follow_membership(endpoints)
            if self.bank is not None:
                self.bank.follow_membership(endpoints)
            if self.lock is not None:
                self.lock.follow_membership(endpoints)
        return view

    def membership(self) -> MemberState | None:
        view = self.refresh()
        if view is None:
            return None
        running = frozenset(n for n in self.cluster.node_ids if self.cluster.is_available(n))
        return MemberState(
            voters=view.voters,
            learners=view.learners,
            running=running,
            slots=tuple(self.cluster.node_ids),
            leader=view.leader if view.leader is not None else self.current_leader(),
            voters_min=self.voters_min,
            voters_max=self.voters_max,
        )

    def _call(self, request: HttpRequest, avoid: int | None) -> HttpResponse | TransportFailure:
        """Send a membership request through a live member (not `avoid` if another lives)."""
        live = [n for n in self.member_ids() if self.cluster.is_available(n)]
        preferred = [n for n in live if n != avoid] or live
        if not preferred:
            return TransportFailure(FailureKind.NOT_SENT, "no live member to ask")
        endpoint = self.cluster.endpoints([random.choice(preferred)])[0]
        return exchange(endpoint, request, timeout_s=MEMBER_CALL_TIMEOUT_S)

    def add_member(self, node_id: int) -> MemberCall:
        started = time.monotonic()
        live = [n for n in self.member_ids() if self.cluster.is_available(n)]
        if not live:
            return MemberCall("unavailable", None, "no live member to join through", 0.0)
        via = self.cluster.endpoints([random.choice(live)])[0]
        try:
            self.cluster.join(node_id, f"http://{via.host}:{via.port}")
        except (OSError, RuntimeError) as error:
            return MemberCall("error", None, f"cannot start node {node_id}: {error}", 0.0)
        deadline = started + MEMBER_ADD_TIMEOUT_S
        view: MembersView | None = None
        while time.monotonic() < deadline:
            view = self._view()
            if view is not None and node_id in view.voters:
                self.refresh(view)
                return MemberCall(
                    "ok", 200, f"node {node_id} is a voter", time.monotonic() - started, view.leader
                )
            code = self.cluster.exit_code(node_id)
            if code is not None:
                self.refresh()
                return MemberCall(
                    "error", None, f"node {node_id} exited with code {code} while joining",
                    time.monotonic() - started,
                )  # fmt: skip
            time.sleep(MONITOR_INTERVAL_S)  # polling interval
        self.refresh()
        where = "a learner" if view is not None and node_id in view.learners else "not a member"
        return MemberCall(
            "timeout",
            None,
            f"node {node_id} is {where} after {MEMBER_ADD_TIMEOUT_S:g} s; it goes on joining",
            time.monotonic() - started,
        )

    def remove_member(self, node_id: int) -> MemberCall:
        started = time.monotonic()
        answer = self._call(build_remove_member(node_id), avoid=node_id)
        outcome, status, detail = _call_outcome(answer)
        duration_s = time.monotonic() - started
        self.refresh()
        return MemberCall(outcome, status, detail, duration_s, _leader_header(answer))

    def transfer_leadership(self, to: int | None) -> MemberCall:
        started = time.monotonic()
        answer = self._call(build_transfer_leadership(to), avoid=None)
        outcome, status, detail = _call_outcome(answer)
        leader = _leader_header(answer)
        if outcome == "ok" and isinstance(answer, HttpResponse):
            with contextlib.suppress(KVError):
                moved = interpret_transfer(answer).get("leader_id")
                leader = moved if type(moved) is int else leader
        return MemberCall(outcome, status, detail, time.monotonic() - started, leader)

    def burst(self, node_id: int, duration_s: float) -> list[BurstWave]:
        (endpoint,) = self.cluster.endpoints([node_id])
        url = f"http://{endpoint.host}:{endpoint.port}"
        waves = run_burst(url, node_id, duration_s, self._next_burst_wave, broken=self.broken_burst)
        self._next_burst_wave += len(waves)
        return waves

    def retire(self, node_id: int) -> None:
        self.cluster.retire(node_id)

    def kill(self, node_id: int) -> None:
        self.cluster.kill(node_id)

    def restart(self, node_id: int) -> None:
        self.cluster.restart(node_id)

    def pause(self, node_id: int) -> None:
        self.cluster.pause(node_id)

    def resume(self, node_id: int) -> None:
        self.cluster.resume(node_id)

    def partition(self, grudge: Grudge) -> None:
        if self.firewall is None:
            raise FirewallError("partitions are unavailable")
        host = self.cluster.host_of
        self.firewall.cut((host(sender), host(receiver)) for receiver, sender in cut_pairs(grudge))

    def heal(self) -> None:
        if self.firewall is not None:
            self.firewall.heal()


@contextlib.contextmanager
def _interrupt_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (like SIGINT) while the run is on, so
    they unwind through the cleanup; only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signal_number: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {
        number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP while cleanup runs (they arrive after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _deadline(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def _log_tail(path: pathlib.Path) -> tuple[str, ...]:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - LOG_TAIL_BYTES_MAX))
            text = file.read(LOG_TAIL_BYTES_MAX).decode("utf-8", "replace")
    except OSError as error:
        return (f"(cannot read {path}: {error.strerror or error})",)
    return tuple(text.splitlines()[-LOG_TAIL_LINES:])


def _prepare_directory(report_dir: pathlib.Path) -> None:
    if report_dir.exists():
        if not report_dir.is_dir():
            raise ChaosError(f"{report_dir} exists and is not a directory")
        if any(report_dir.iterdir()):
            raise ChaosError(f"{report_dir} is not empty; every run needs a fresh report directory")
    (report_dir / "nodes").mkdir(parents=True, exist_ok=True)


@dataclass(slots=True)
class _Progress:
    """What the run observed, filled in as it goes (the report needs it even after errors)."""

    origin_ns: int = 0
    started_at: str = ""
    workload_end_ns: int = 0
    converged: bool = False
    convergence_detail: str = "the run did not get that far"
    recovery_s: float | None = None
    final_reads_complete: bool = False
    stragglers: tuple[str, ...] = ()
    teardown_codes: dict[int, int] | None = None
    final_members: frozenset[int] = frozenset()
    burst_digests: dict[str, str | None] | None = None
    """The burst keys read after healing (None: no burst nemesis)."""


def _install_firewall(firewall: Firewall, echo: Callable[[str], None]) -> str | None:
    """Clear chains left by dead runs and install ours; None, or why it failed."""
    try:
        removed = firewall.remove_stale_chains()
        if removed:
            echo(f"removed iptables chains left by dead runs: {', '.join(removed)}")
        firewall.install()
    except FirewallError as error:
        return str(error)
    return None


@dataclass(slots=True)
class _Run:
    """The parts of a run that the report needs after the cluster is gone."""

    schedule: tuple[Fault, ...]
    cluster: ChaosCluster
    monitor: ClusterMonitor
    workload: Workload
    progress: _Progress
    watchers: Watchers | None = None
    bank: Bank | None = None
    lock: LockWorkload | None = None


def run_chaos(options: ChaosOptions, echo: Callable[[str], None] = print) -> ChaosReport:
    """Run one chaos test and write its report to `options.report_dir`; the report.

    Raises ChaosError when the harness itself cannot run, KeyboardInterrupt when
    interrupted (after cleaning up), NemesisError for bad options.
    """
    report_dir = options.report_dir
    _prepare_directory(report_dir)
    pid = os.getpid()
    config = chaos_config(options.nodes, report_dir / "data", loopback_block(pid))
    # Chaos runs with peer authentication on, as every cluster does by default (issue #20).
    secret_path = (report_dir / PEER_SECRET_FILE_NAME).resolve()
    write_peer_secret(secret_path, new_peer_secret())
    config = dataclasses.replace(config, peer_secret_file=secret_path)
    config_path = report_dir / "cluster.toml"
    config_path.write_text(render_config(config))
    firewall: Firewall | None = None
    partitions_skipped: str | None = None
    with _interrupt_on_termination():
        try:
            if "partition" in options.nemeses:
                executable, partitions_skipped = find_iptables()
                if executable is not None:
                    # Assigned before anything is installed: the `finally` removes what exists.
                    firewall = Firewall(executable, chain_name(pid))
                    partitions_skipped = _install_firewall(firewall, echo)
                    if partitions_skipped is not None:
                        with contextlib.suppress(FirewallError):
                            firewall.remove()
                        firewall = None
                if firewall is None:
                    echo(f"partitions skipped: {partitions_skipped}")
            kinds = options.nemeses if firewall is not None else options.nemeses - {"partition"}
            run = _run_cluster(options, config, config_path, kinds, firewall, echo)
        finally:
            if firewall is not None:
                with _signals_blocked():
                    try:
                        firewall.remove()
                    except FirewallError as error:
                        chain = firewall.chain
                        echo(
                            f"WARNING: {error}; remove it by hand: iptables -D INPUT -s "
                            f"127.0.0.0/8 -d 127.0.0.0/8 -j {chain}; iptables -F {chain}; "
                            f"iptables -X {chain}"
                        )
    return _check_and_report(options, run, firewall, partitions_skipped, echo)


def _run_cluster(
    options: ChaosOptions,
    config: ClusterConfig,
    config_path: pathlib.Path,
    kinds: Collection[str],
    firewall: Firewall | None,
    echo: Callable[[str], None],
) -> _Run:
    """Everything with node processes in it; they are all gone when this returns or raises."""
    report_dir = options.report_dir
    node_ids = [spec.id for spec in config.nodes]
    schedule = plan_schedule(options.seed, kinds, options.time_s, node_ids)
    spares = (
        spare_specs(config, SPARE_SLOTS, config.nodes[0].raft_host.rpartition(".")[0])
        if "member" in kinds
        else ()
    )
    history_log = EventLog(report_dir / HISTORY_FILE_NAME)
    nemesis_log = EventLog(report_dir / NEMESIS_FILE_NAME)

    def log_nemesis(event: dict[str, Any]) -> None:
        nemesis_log.append({"time": time.monotonic_ns(), **event})

    env: dict[str, str] = {}
    if options.lock:
        from kvraft.http_api import BROKEN_FENCE_ENV  # the node's module: only its name here

        # Set either way: a value inherited from the harness's environment must not decide.
        env[BROKEN_FENCE_ENV] = "1" if options.broken_fence else "0"
    cluster = ChaosCluster(config, config_path, report_dir / "nodes", spares, env=env)
    monitor = ClusterMonitor(cluster, log_nemesis)
    workload = Workload(
        cluster.endpoints(),
        HistoryRecorder(history_log),
        options.seed,
        stale_reads=options.broken_stale_reads,
    )
    watch_log = EventLog(report_dir / WATCH_FILE_NAME) if options.watch else None
    watchers = (
        Watchers(cluster.endpoints(), watch_log, broken=options.broken_watch)
        if watch_log is not None
        else None
    )
    bank = (
        Bank(
            cluster.endpoints(),
            HistoryRecorder(history_log),
            options.seed,
            broken=options.broken_bank,
        )
        if options.bank
        else None
    )
    lock = (
        LockWorkload(
            cluster.endpoints(),
            HistoryRecorder(history_log),
            options.seed,
            ttl_s=lease_ttl_s_min(config.raft.tick_ms, config.raft.election_ticks),
        )
        if options.lock
        else None
    )
    controls = _Controls(cluster, monitor, firewall, workload, log_nemesis, watchers, bank, lock)
    controls.broken_burst = options.broken_burst
    stop = threading.Event()
    progress = _Progress()
    nemesis_thread = threading.Thread(
        target=lambda: run_schedule(
            schedule, controls, node_ids, log_nemesis, stop, progress.origin_ns
        ),
        name="chaos-nemesis",
        daemon=True,
    )
    echo(
        f"kvraft chaos: {options.nodes} nodes on {config.nodes[0].raft_host.rpartition('.')[0]}.x,"
        f" {options.time_s:g} s, {len(schedule)} faults planned, seed {options.seed}, "
        f"report {report_dir}"
    )
    try:
        _run(
            options, cluster, monitor, workload, watchers, bank, lock, controls,
            nemesis_thread, stop, progress, echo,
        )  # fmt: skip
    finally:
        with _signals_blocked():
            stop.set()
            if nemesis_thread.is_alive():
                nemesis_thread.join()
            progress.stragglers = progress.stragglers or tuple(workload.stop())
            if watchers is not None:
                progress.stragglers += tuple(watchers.stop())
            if bank is not None:
                progress.stragglers += tuple(bank.stop())
            if lock is not None:
                progress.stragglers += tuple(lock.stop())
            monitor.stop()
            codes = cluster.teardown(graceful=False)
            if progress.teardown_codes is None:
                progress.teardown_codes = codes
            history_log.close()
            nemesis_log.close()
            if watch_log is not None:
                watch_log.close()
    return _Run(schedule, cluster, monitor, workload, progress, watchers, bank, lock)


def _membership_facts(progress: _Progress) -> tuple[int, ...]:
    return tuple(sorted(progress.final_members))


def _check_and_report(
    options: ChaosOptions,
    run: _Run,
    firewall: Firewall | None,
    partitions_skipped: str | None,
    echo: Callable[[str], None],
) -> ChaosReport:
    """Check the history as written to disk, and write the report."""
    report_dir = options.report_dir
    schedule, cluster, monitor, progress = run.schedule, run.cluster, run.monitor, run.progress
    node_ids = cluster.node_ids
    echo("checking the history...")
    events = load_events(report_dir / HISTORY_FILE_NAME)
    nemesis_events = load_events(report_dir / NEMESIS_FILE_NAME)
    linearizability = check_registers(events, options.check_time_budget_s)
    set_result = check_set(events)
    watch_result = None
    if run.watchers is not None:
        streams, relists = streams_from_events(load_events(report_dir / WATCH_FILE_NAME))
        watch_result = check_watch(
            streams,
            writes_from_history(events),
            relists=relists,
            caught_up_required=progress.converged and progress.final_reads_complete,
            skipped=run.watchers.unsupported,
        )
    bank_result = (
        check_bank(events, time_budget_s=options.check_time_budget_s)
        if run.bank is not None
        else None
    )
    lock_result: LockCheck | None = check_locks(events) if run.lock is not None else None
    nemesis_errors = tuple(
        str(event.get("detail")) for event in nemesis_events if event.get("type") == "error"
    )
    bursts = waves_from_events(nemesis_events)
    burst_failures = tuple(
        check_bursts(bursts, progress.burst_digests) if progress.burst_digests is not None else ()
    )
    log_paths = {node_id: cluster.log_path(node_id) for node_id in node_ids}
    facts = RunFacts(
        nodes=options.nodes,
        duration_s=options.time_s,
        nemeses=tuple(kind for kind in NEMESIS_KINDS if kind in options.nemeses),
        seed=options.seed,
        report_dir=str(report_dir),
        broken_stale_reads=options.broken_stale_reads,
        partitions_skipped=partitions_skipped,
        chain=firewall.chain if firewall is not None else None,
        schedule=tuple(
            f"{fault.start_s:.2f}s +{fault.hold_s:.2f}s {describe_fault(fault)}"
            for fault in schedule
        ),
        origin_ns=progress.origin_ns,
        started_at=progress.started_at,
        workload_end_ns=progress.workload_end_ns,
        converged=progress.converged,
        convergence_detail=progress.convergence_detail,
        recovery_s=progress.recovery_s,
        final_reads_complete=progress.final_reads_complete,
        unexpected_exits=tuple(monitor.exits),
        teardown_codes=progress.teardown_codes or {},
        pids_started=tuple(cluster.pids_started),
        stragglers=progress.stragglers,
        nemesis_errors=nemesis_errors,
        client_errors=tuple(run.workload.errors)
        + (tuple(run.watchers.errors) if run.watchers is not None else ())
        + (tuple(run.bank.errors) if run.bank is not None else ())
        + (tuple(run.lock.errors) if run.lock is not None else ()),
        log_paths={node_id: str(path) for node_id, path in log_paths.items()},
        replay=replay_command(options),
        final_members=_membership_facts(progress),
        non_member_answers=tuple(run.workload.non_member_answers),
        broken_watch=options.broken_watch,
        burst_waves=tuple(
            f"wave {wave.wave} on node {wave.node}: "
            + ", ".join(f"{count} x {status}" for status, count in sorted(wave.statuses().items()))
            for wave in bursts
        ),
        burst_failures=burst_failures,
        broken_bank=options.broken_bank,
        broken_fence=options.broken_fence,
    )
    report = build_report(
        facts, events, nemesis_events, set_result, linearizability, watch_result, bank_result,
        lock_result,
    )  # fmt: skip
    if not report.passed:
        tails = {node_id: _log_tail(path) for node_id, path in log_paths.items()}
        report = build_report(
            dataclasses.replace(facts, log_tails=tails),
            events,
            nemesis_events,
            set_result,
            linearizability,
            watch_result,
            bank_result,
            lock_result,
        )
    _write_report(report, report_dir)
    if report.passed and not options.keep_data:
        # A run with bursts leaves about a gigabyte of WALs and snapshots: twenty runs once
        # took 24 GB and left this machine's disk 94 % full. The history, logs and report
        # stay.
        shutil.rmtree(report_dir / "data", ignore_errors=True)
    return report


def _run(
    options: ChaosOptions,
    cluster: ChaosCluster,
    monitor: ClusterMonitor,
    workload: Workload,
    watchers: Watchers | None,
    bank: Bank | None,
    lock: LockWorkload | None,
    controls: _Controls,
    nemesis_thread: threading.Thread,
    stop: threading.Event,
    progress: _Progress,
    echo: Callable[[str], None],
) -> None:
    node_ids = cluster.founding_ids
    cluster.start_all()
    monitor.start()
    ready, detail = wait_converged(cluster, _deadline(STARTUP_TIMEOUT_S), node_ids)
    if not ready:
        raise ChaosError(
            f"the cluster did not elect a leader within {STARTUP_TIMEOUT_S:g} s ({detail}); "
            f"see the node logs in {cluster.log_dir}"
        )
    if bank is not None and not bank.open_accounts(_deadline(STARTUP_TIMEOUT_S)):
        raise ChaosError(f"the bank's accounts could not be opened in {STARTUP_TIMEOUT_S:g} s")
    echo(f"cluster up ({detail}); running the workload for {options.time_s:g} s")
    progress.origin_ns = time.monotonic_ns()
    progress.started_at = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
    if watchers is not None:
        watchers.start()
    workload.start()
    if bank is not None:
        bank.start()
    if lock is not None:
        lock.start()
    nemesis_thread.start()
    stop.wait(options.time_s)  # the run's length: the clients and the nemesis work meanwhile
    stop.set()
    nemesis_thread.join()
    progress.stragglers = tuple(workload.stop())
    if bank is not None:
        progress.stragglers += tuple(bank.stop())
    if lock is not None:
        progress.stragglers += tuple(lock.stop())
    progress.workload_end_ns = time.monotonic_ns()

    echo("healing: removing partitions, resuming and restarting nodes")
    controls.heal()
    for node_id in cluster.paused():
        cluster.resume(node_id)
    for node_id in cluster.down(controls.member_ids()):
        cluster.restart(node_id)
    healed_s = time.monotonic()
    progress.converged, progress.final_members, progress.convergence_detail = (
        wait_members_converged(cluster, _deadline(RECOVERY_TIMEOUT_S))
    )
    if progress.converged:
        progress.recovery_s = time.monotonic() - healed_s
        controls.refresh()
    echo(f"recovery: {progress.convergence_detail}")
    deadline = _deadline(FINAL_READ_TIMEOUT_S)
    keys_read = workload.final_register_reads(deadline)
    set_complete = workload.final_set_read(deadline)
    progress.final_reads_complete = all(keys_read.values()) and set_complete
    if "burst" in options.nemeses:
        urls = [f"http://{e.host}:{e.port}" for e in cluster.endpoints(controls.member_ids())]
        progress.burst_digests = read_back(urls, time.monotonic() + FINAL_READ_TIMEOUT_S)
        progress.final_reads_complete &= len(progress.burst_digests) == BURST_WRITES
    highest_revision = workload.highest_revision
    if bank is not None:
        bank.final_audit(deadline)  # the bank check fails the run if it never answered
        highest_revision = max(highest_revision, bank.highest_revision)
    if lock is not None:
        lock.final_reads(deadline)  # the lock check fails the run if they never completed
        highest_revision = max(highest_revision, lock.highest_revision)
    if watchers is not None:
        # The watchers stream on through healing: each must now reach the last write.
        watchers.wait_caught_up(highest_revision, _deadline(WATCH_CATCH_UP_TIMEOUT_S))
        progress.stragglers += tuple(watchers.stop())
    monitor.stop()
    progress.teardown_codes = cluster.teardown(graceful=True)


def _write_report(report: ChaosReport, report_dir: pathlib.Path) -> None:
    (report_dir / "report.txt").write_text(render_text(report))
    (report_dir / "report.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
    result = report.linearizability
    if result.verdict == "no" and result.key is not None:
        stuck = result.per_key[result.key].stuck_operation
        page = render_timeline(
            result.witness,
            stuck,
            report.faults,
            report.facts.origin_ns,
            result.key,
            report.witness_nodes,
        )
        (report_dir / "timeline.html").write_text(page)
