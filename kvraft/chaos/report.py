"""The chaos report: the numbers of a run, as text, as JSON, and an HTML timeline of a violation.

`build_report` computes everything from the recorded events (client history and
nemesis log) plus what the runner observed (`RunFacts`); `render_text` and
`report_json` present it; `render_timeline` draws the witness of a
linearizability violation, one lane per client process, as a self-contained
HTML page (no scripts, no external files).

Definitions the report uses:

* availability: client operations that ended ``ok`` per `AVAILABILITY_BUCKET_S`
  second, from the start of the workload to its end (final reads excluded);
* unavailability after a fault on the leader (killed, paused, or cut off from a
  majority): the longest stretch without any ``ok`` completion, from the fault's
  start until the next fault starts (or the workload ends);
* elections seen: leaders the monitor observed, one per term.
* membership: every membership call the nemesis made (``member`` events) with
  its outcome (a 409/503/504 is an outcome, not a failure of the run), the time
  each successful add took (from starting the spare to seeing it a voter), and
  for each membership or transfer fault the longest stretch without an ``ok``
  operation from its start until the next fault; ok answers that a removed node
  served itself fail the run.

Pure: no IO, no clock.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvraft.chaos.bank import BankCheck
from kvraft.chaos.checks import REGISTER_FUNCTIONS, SET_ADD, SetCheck, pair_operations
from kvraft.chaos.lock_check import LockCheck
from kvraft.chaos.watch_check import WatchCheck
from kvraft.linearizability import CheckResult, Operation, format_operation

__all__ = [
    "AVAILABILITY_BUCKET_S",
    "AVAILABILITY_ROW_BUCKETS",
    "LIST_SHOWN_MAX",
    "LOG_TAIL_LINES",
    "TIMELINE_OPERATIONS_MAX",
    "ChaosReport",
    "LeaderFault",
    "MemberChange",
    "RunFacts",
    "availability",
    "build_report",
    "leader_faults",
    "member_changes",
    "membership_gaps",
    "operation_counts",
    "render_text",
    "render_timeline",
    "report_json",
]

AVAILABILITY_BUCKET_S = 1.0
"""Width of one availability bucket, in seconds."""

AVAILABILITY_ROW_BUCKETS = 10
"""Availability buckets per line of the text report."""

LIST_SHOWN_MAX = 20
"""Most lost or unexpected set elements listed by name in the text report (all are in
``report.json``)."""

LOG_TAIL_LINES = 30
"""Lines of each node's log quoted in the report of a failed run."""

TIMELINE_OPERATIONS_MAX = 500
"""Most operations drawn in the HTML timeline (the last ones, where the violation is); a
witness is usually a handful."""

_WORKLOAD_FUNCTIONS = REGISTER_FUNCTIONS | {SET_ADD}


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the runner knows besides the events.

    Fields:
        nodes, duration_s, nemeses, seed, report_dir: the run's options.
        broken_stale_reads: the deliberately broken read mode was on.
        partitions_skipped: why partitions were skipped (None: they were not).
        chain: the iptables chain used (None: none).
        schedule: the planned faults, one line each.
        origin_ns, workload_end_ns: the workload's start and end (monotonic ns); every time
            in the report is relative to `origin_ns`.
        started_at: the wall-clock time of `origin_ns`, to find the moment in node logs.
        converged: after healing, every node followed one leader and caught up.
        convergence_detail: what convergence found (or what was missing).
        recovery_s: seconds from healing to convergence (None: never converged).
        final_reads_complete: every register key was read after healing.
        unexpected_exits: (node, pid, code) of processes that exited on their own.
        teardown_codes: each node's exit code at teardown.
        pids_started: every node process started.
        stragglers: client threads that did not stop in time.
        nemesis_errors: faults that could not be injected or healed.
        client_errors: unexpected exceptions in client threads (harness bugs).
        log_paths: each node's log file.
        log_tails: the last lines of each node's log (filled in for a failed run).
        replay: the command that repeats the run's fault schedule.
        final_members: the membership after healing (``GET /v1/members``).
        non_member_answers: ok answers a removed node served itself (each fails the run).
        broken_watch: the deliberately broken watcher mode, if any.
        burst_waves: one line per wave of the burst nemesis (its answers).
        burst_failures: what the burst check found wrong (`kvraft.chaos.burst`).
        broken_bank: the deliberately broken bank mode, if any.
        broken_fence: the nodes ran with fences unchecked (the test-only broken mode).
    """

    nodes: int
    duration_s: float
    nemeses: tuple[str, ...]
    seed: int
    report_dir: str
    broken_stale_reads: bool
    partitions_skipped: str | None
    chain: str | None
    schedule: tuple[str, ...]
    origin_ns: int
    workload_end_ns: int
    converged: bool
    convergence_detail: str
    recovery_s: float | None
    final_reads_complete: bool
    unexpected_exits: tuple[tuple[int, int, int], ...] = ()
    teardown_codes: Mapping[int, int] = field(default_factory=dict)
    pids_started: tuple[int, ...] = ()
    stragglers: tuple[str, ...] = ()
    nemesis_errors: tuple[str, ...] = ()
    client_errors: tuple[str, ...] = ()
    log_paths: Mapping[int, str] = field(default_factory=dict)
    log_tails: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    replay: str = ""
    started_at: str = ""
    final_members: tuple[int, ...] = ()
    non_member_answers: tuple[str, ...] = ()
    broken_watch: str | None = None
    burst_waves: tuple[str, ...] = ()
    burst_failures: tuple[str, ...] = ()
    broken_bank: str | None = None
    broken_fence: bool = False


@dataclass(frozen=True, slots=True)
class LeaderFault:
    """A fault that hit the leader: when (s after the workload started), what, and the
    longest stretch without a successful operation after it (None: no fault window)."""

    start_s: float
    description: str
    longest_gap_s: float


@dataclass(frozen=True, slots=True)
class MemberChange:
    """One membership call of the nemesis: when (s after the workload started), what
    (``add``, ``remove``, ``transfer``), on which node, its outcome and how long it took."""

    at_s: float
    action: str
    node: int | None
    outcome: str
    duration_s: float
    detail: str


@dataclass(frozen=True, slots=True)
class ChaosReport:
    """Everything the report shows; `passed` is the exit status's source. `witness_nodes`
    maps each witness operation's (process, call time) to the node it was sent to;
    `watch` is the watch check (None: the watchers did not run), `bank` the bank check
    (None: the bank did not run), `lock` the lock check (None: the lock workload did not
    run)."""

    facts: RunFacts
    counts: Mapping[str, Mapping[str, int]]
    availability: tuple[int, ...]
    leader_faults: tuple[LeaderFault, ...]
    elections: tuple[tuple[float, int, int], ...]
    faults: tuple[tuple[float, float, str], ...]
    set_check: SetCheck
    linearizability: CheckResult
    failures: tuple[str, ...]
    witness_nodes: Mapping[tuple[int, int], int] = field(default_factory=dict)
    member_changes: tuple[MemberChange, ...] = ()
    membership_gaps: tuple[LeaderFault, ...] = ()
    watch: WatchCheck | None = None
    bank: BankCheck | None = None
    lock: LockCheck | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


def _seconds(moment_ns: int, origin_ns: int) -> float:
    return (moment_ns - origin_ns) / 1e9


def operation_counts(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """For each operation (``read``, ``write``, ``cas``, ``add``, ``list``): how many ended
    ``ok``, ``fail`` and ``info`` (no completion counts as info); for ``cas`` also
    ``applied`` and ``not_applied`` among the ok ones."""
    counts: dict[str, dict[str, int]] = {}
    functions = frozenset(f for event in events if isinstance(f := event.get("f"), str))
    for invoke, completion in pair_operations(events, functions):
        f = str(invoke.get("f"))
        status = "info" if completion is None else str(completion.get("type"))
        row = counts.setdefault(f, {"ok": 0, "fail": 0, "info": 0})
        row[status] = row.get(status, 0) + 1
        if f == "cas" and status == "ok" and completion is not None:
            applied = "applied" if completion.get("output") is True else "not_applied"
            row[applied] = row.get(applied, 0) + 1
    return counts


def _ok_times(events: Sequence[Mapping[str, Any]], start_ns: int, end_ns: int) -> list[int]:
    return sorted(
        event["time"]
        for event in events
        if event.get("type") == "ok"
        and isinstance(event.get("f"), str)
        and event["f"] in _WORKLOAD_FUNCTIONS
        and isinstance(event.get("time"), int)
        and start_ns <= event["time"] <= end_ns
    )


def availability(
    events: Sequence[Mapping[str, Any]],
    origin_ns: int,
    end_ns: int,
    bucket_s: float = AVAILABILITY_BUCKET_S,
) -> tuple[int, ...]:
    """Ok completions of workload operations per bucket, from `origin_ns` to `end_ns`."""
    bucket_ns = int(bucket_s * 1e9)
    buckets = [0] * max(1, -(-(end_ns - origin_ns) // bucket_ns))
    for moment in _ok_times(events, origin_ns, end_ns):
        buckets[min(len(buckets) - 1, (moment - origin_ns) // bucket_ns)] += 1
    return tuple(buckets)


def _fault_starts(nemesis_events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(
        (e for e in nemesis_events if e.get("type") == "start" and isinstance(e.get("time"), int)),
        key=lambda e: int(e["time"]),
    )


def _ints(value: object) -> list[int]:
    """The ints of a list from a log file (anything else is dropped: the file is untrusted)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if type(item) is int]


def _fault_text(event: Mapping[str, Any]) -> str:
    kind, target = str(event.get("f")), str(event.get("target"))
    if kind == "partition":
        pairs = [_ints(pair) for pair in event.get("cuts") or [] if isinstance(pair, list)]
        links = sorted({f"{a}x{b}" for a, b in (p for p in pairs if len(p) == 2) if a < b})
        return f"partition {target} (cut {', '.join(links) or 'nothing'})"
    if kind in ("member", "transfer"):
        return f"{kind} {target}"
    nodes = ",".join(str(node) for node in _ints(event.get("nodes")))
    return f"{kind} {target} [{nodes}]"


def leader_faults(
    events: Sequence[Mapping[str, Any]],
    nemesis_events: Sequence[Mapping[str, Any]],
    origin_ns: int,
    end_ns: int,
    kinds: frozenset[str] | None = None,
) -> tuple[LeaderFault, ...]:
    """For each fault that hit the leader (or, given `kinds`, each fault of those kinds),
    the longest stretch without an ok operation between its start and the next fault's
    start (or `end_ns`)."""
    starts = _fault_starts(nemesis_events)
    found = []
    for index, event in enumerate(starts):
        if kinds is None and event.get("hits_leader") is not True:
            continue
        if kinds is not None and event.get("f") not in kinds:
            continue
        window_start = int(event["time"])
        window_end = int(starts[index + 1]["time"]) if index + 1 < len(starts) else end_ns
        if window_end <= window_start:
            continue
        points = [window_start, *_ok_times(events, window_start, window_end), window_end]
        gap_ns = max(later - earlier for earlier, later in itertools.pairwise(points))
        found.append(
            LeaderFault(_seconds(window_start, origin_ns), _fault_text(event), gap_ns / 1e9)
        )
    return tuple(found)


def membership_gaps(
    events: Sequence[Mapping[str, Any]],
    nemesis_events: Sequence[Mapping[str, Any]],
    origin_ns: int,
    end_ns: int,
) -> tuple[LeaderFault, ...]:
    """The unavailability around each membership and transfer fault (see `leader_faults`)."""
    return leader_faults(
        events, nemesis_events, origin_ns, end_ns, kinds=frozenset({"member", "transfer"})
    )


def member_changes(
    nemesis_events: Sequence[Mapping[str, Any]], origin_ns: int
) -> tuple[MemberChange, ...]:
    """Every membership call the nemesis made (``add``, ``remove``, ``transfer``), in order."""
    found = []
    for event in nemesis_events:
        action = event.get("action")
        if event.get("type") != "member" or action not in ("add", "remove", "transfer"):
            continue
        moment = event.get("time")
        node = event.get("node")
        duration = event.get("duration_s")
        found.append(
            MemberChange(
                _seconds(moment, origin_ns) if type(moment) is int else 0.0,
                "remove leader" if event.get("was_leader") is True else str(action),
                node if type(node) is int else None,
                str(event.get("outcome")),
                float(duration) if isinstance(duration, int | float) else 0.0,
                str(event.get("detail") or "")[:200],
            )
        )
    return tuple(found)


def _faults(
    nemesis_events: Sequence[Mapping[str, Any]], origin_ns: int, end_ns: int
) -> tuple[tuple[float, float, str], ...]:
    """(start s, end s, description) of each injected fault."""
    ends = [e for e in nemesis_events if e.get("type") == "end" and isinstance(e.get("time"), int)]
    result = []
    for start in _fault_starts(nemesis_events):
        later = [int(e["time"]) for e in ends if int(e["time"]) >= int(start["time"])]
        finish = min(later) if later else end_ns
        result.append(
            (
                _seconds(int(start["time"]), origin_ns),
                _seconds(finish, origin_ns),
                _fault_text(start),
            )
        )
    return tuple(result)


def build_report(
    facts: RunFacts,
    events: Sequence[Mapping[str, Any]],
    nemesis_events: Sequence[Mapping[str, Any]],
    set_check: SetCheck,
    linearizability: CheckResult,
    watch: WatchCheck | None = None,
    bank: BankCheck | None = None,
    lock: LockCheck | None = None,
) -> ChaosReport:
    """Compute every number of the report and decide whether the run passed."""
    origin, end = facts.origin_ns, facts.workload_end_ns
    elections = tuple(
        (_seconds(int(e["time"]), origin), int(e["node"]), int(e["term"]))
        for e in nemesis_events
        if e.get("type") == "leader"
        and all(type(e.get(name)) is int for name in ("time", "node", "term"))
    )
    failures: list[str] = []
    if linearizability.verdict != "yes":
        failures.append(f"linearizable: {linearizability.verdict}")
    if set_check.lost:
        failures.append(f"{len(set_check.lost)} acknowledged set elements lost")
    if set_check.unexpected:
        failures.append(f"{len(set_check.unexpected)} set elements present that nobody added")
    if set_check.failed_present:
        failures.append(
            f"{len(set_check.failed_present)} set elements present although their add "
            "was answered 503 (nothing applied)"
        )
    if not set_check.final_read_complete:
        failures.append("the final read of the set did not complete")
    if not facts.final_reads_complete:
        failures.append("not every register key could be read after healing")
    if not facts.converged:
        failures.append(f"the cluster did not recover after healing: {facts.convergence_detail}")
    for node, pid, code in facts.unexpected_exits:
        failures.append(f"node {node} (pid {pid}) exited on its own with code {code}")
    if facts.non_member_answers:
        failures.append(
            f"{len(facts.non_member_answers)} ok answers served by removed nodes, first: "
            f"{facts.non_member_answers[0]}"
        )
    if watch is not None and watch.first is not None:
        failures.append(
            f"watch: violated ({len(watch.violations)} violations), first: {watch.first.describe()}"
        )
    elif watch is not None and watch.skipped is not None:
        # Every node serves watches: one that does not is a broken build, not a pass.
        failures.append(f"watch: not served: {watch.skipped}")
    if facts.burst_failures:
        failures.append(
            f"burst: {len(facts.burst_failures)} violations, first: {facts.burst_failures[0]}"
        )
    if bank is not None:
        failures += bank.failures()
    if lock is not None:
        failures += lock.failures()
    if facts.client_errors:
        failures.append(
            f"{len(facts.client_errors)} client errors (a harness bug), first: "
            f"{facts.client_errors[0]}"
        )
    witness_calls = {(op.process, op.call) for op in linearizability.witness}
    witness_nodes = {
        (event["process"], event["time"]): event["node"]
        for event in events
        if event.get("type") == "invoke"
        and all(type(event.get(name)) is int for name in ("process", "time", "node"))
        and (event["process"], event["time"]) in witness_calls
    }
    return ChaosReport(
        facts=facts,
        counts=operation_counts(events),
        availability=availability(events, origin, end),
        leader_faults=leader_faults(events, nemesis_events, origin, end),
        elections=elections,
        faults=_faults(nemesis_events, origin, end),
        set_check=set_check,
        linearizability=linearizability,
        failures=tuple(failures),
        witness_nodes=witness_nodes,
        member_changes=member_changes(nemesis_events, origin),
        membership_gaps=membership_gaps(events, nemesis_events, origin, end),
        watch=watch,
        bank=bank,
        lock=lock,
    )


def _node_note(nodes: Mapping[tuple[int, int], int], op: Operation) -> str:
    node = nodes.get((op.process, op.call))
    return "" if node is None else f"  (node {node})"


def _relative(op: Operation, origin_ns: int) -> Operation:
    """`op` with its times in milliseconds since `origin_ns` (for reading)."""
    return dataclasses.replace(
        op,
        call=(op.call - origin_ns) // 1_000_000,
        ret=None if op.ret is None else (op.ret - origin_ns) // 1_000_000,
    )


_OPERATION_TIMES = re.compile(r"\[(\d+), (\d+|\?)\]")


def _relative_times(text: str, origin_ns: int) -> str:
    """`text` with the ``[call, ret]`` ns times of `format_operation` in ms since `origin_ns`."""

    def shift(match: re.Match[str]) -> str:
        call, ret = match.group(1), match.group(2)
        shifted_ret = ret if ret == "?" else str((int(ret) - origin_ns) // 1_000_000)
        return f"[{(int(call) - origin_ns) // 1_000_000}, {shifted_ret}]"

    return _OPERATION_TIMES.sub(shift, text)


def _shown(items: Sequence[str]) -> str:
    text = ", ".join(items[:LIST_SHOWN_MAX])
    if len(items) > LIST_SHOWN_MAX:
        text += f", ... ({len(items) - LIST_SHOWN_MAX} more in report.json)"
    return text


def render_text(report: ChaosReport) -> str:
    """The human-readable report."""
    facts = report.facts
    lines = [
        f"kvraft chaos: {facts.nodes} nodes, {facts.duration_s:g} s, nemesis "
        f"{','.join(facts.nemeses) or 'none'}, seed {facts.seed}",
        f"report: {facts.report_dir}",
        f"times are seconds since the workload started (at {facts.started_at or '?'}, the "
        "clock of the node logs)",
    ]
    if facts.broken_stale_reads:
        lines.append(
            "BROKEN MODE: reads are stale (any node, no leader contact) but recorded as "
            "linearizable; the checker is expected to say no"
        )
    if facts.broken_watch:
        lines.append(
            f"BROKEN MODE: the watchers damage what they record ({facts.broken_watch}); the "
            "watch check is expected to say violated"
        )
    if facts.broken_bank:
        lines.append(
            f"BROKEN MODE: the bank's transfers are not atomic ({facts.broken_bank}); the "
            "bank check is expected to fail"
        )
    if facts.broken_fence:
        lines.append(
            "BROKEN MODE: the nodes ignore X-Kvraft-Fence (fenced writes always apply); the "
            "lock check is expected to fail"
        )
    if facts.partitions_skipped:
        lines.append(f"partitions skipped: {facts.partitions_skipped}")
    lines += ["", "operations (ok / fail / info):"]
    for f in ("read", "write", "cas", "add", "list"):
        row = report.counts.get(f)
        if row is None:
            continue
        text = f"  {f:<6} {row.get('ok', 0):>6} / {row.get('fail', 0):>5} / {row.get('info', 0):>5}"
        if f == "cas":
            text += (
                f"   (applied {row.get('applied', 0)}, condition failed "
                f"{row.get('not_applied', 0)})"
            )
        lines.append(text)
    lines += ["", f"faults ({len(report.faults)}):"]
    for start_s, end_s, text in report.faults:
        lines.append(f"  {start_s:7.2f}s - {end_s:7.2f}s  {text}")
    if not report.faults:
        lines.append("  none")
    for error in facts.nemesis_errors:
        lines.append(f"  error: {error}")
    lines += ["", f"availability (ok operations per {AVAILABILITY_BUCKET_S:g} s):"]
    for row_start in range(0, len(report.availability), AVAILABILITY_ROW_BUCKETS):
        counts = report.availability[row_start : row_start + AVAILABILITY_ROW_BUCKETS]
        start_s = row_start * AVAILABILITY_BUCKET_S
        lines.append(f"  {start_s:5.0f}s  " + " ".join(f"{count:4d}" for count in counts))
    lines += ["", "unavailability after faults on the leader (longest gap without an ok op):"]
    for fault in report.leader_faults:
        lines.append(f"  {fault.start_s:7.2f}s  {fault.description}: {fault.longest_gap_s:.2f} s")
    if not report.leader_faults:
        lines.append("  no fault hit a known leader")
    lines += _membership_lines(report)
    elected = ", ".join(
        f"node {node} term {term} at {at:.2f}s" for at, node, term in report.elections
    )
    lines += ["", f"elections seen: {len(report.elections)} ({elected or 'none'})"]
    exits = ", ".join(f"node {n} pid {p} code {c}" for n, p, c in facts.unexpected_exits)
    lines.append(f"unexpected node exits: {exits or 'none'}")
    recovery = f"{facts.recovery_s:.2f} s" if facts.recovery_s is not None else "never"
    lines.append(f"recovery after healing: {recovery} ({facts.convergence_detail})")
    check = report.set_check
    lines += [
        "",
        f"set: {check.attempted} added, {check.acknowledged} acknowledged, {check.failed} "
        f"failed, {check.unknown} unknown ({check.unknown_present} of them present); "
        f"{check.present} present after healing",
        f"lost acknowledged writes: {len(check.lost)}"
        + (f" ({_shown(check.lost)})" if check.lost else ""),
        f"unexpected elements: {len(check.unexpected)}"
        + (f" ({_shown(check.unexpected)})" if check.unexpected else ""),
        f"failed adds present: {len(check.failed_present)}"
        + (f" ({_shown(check.failed_present)})" if check.failed_present else ""),
        "",
    ]
    lines += _linearizability_lines(report)
    lines += _watch_lines(report.watch)
    if facts.burst_waves:
        verdict = "violated" if facts.burst_failures else "ok"
        lines.append(f"burst: {verdict} ({len(facts.burst_waves)} waves)")
        lines += [f"  {wave}" for wave in facts.burst_waves]
        lines += [f"  violation: {failure}" for failure in facts.burst_failures[:10]]
    lines += _bank_lines(report.bank)
    lines += _lock_lines(report.lock)
    lines.append("")
    if report.passed:
        lines.append("verdict: PASS")
    else:
        lines.append("verdict: FAIL")
        lines += [f"  - {failure}" for failure in report.failures]
        lines.append(f"  replay the fault schedule: {facts.replay}")
        for node, path in sorted(facts.log_paths.items()):
            lines.append(f"  node {node} log: {path}")
        for node, tail in sorted(facts.log_tails.items()):
            lines.append(f"--- last lines of node {node}'s log ---")
            lines += [f"  {line}" for line in tail]
    return "\n".join(lines) + "\n"


def _membership_lines(report: ChaosReport) -> list[str]:
    if not report.member_changes and not report.membership_gaps:
        return []
    done = [c for c in report.member_changes if c.outcome == "ok" and c.action != "transfer"]
    lines = ["", f"membership calls ({len(report.member_changes)}, {len(done)} changes made):"]
    for change in report.member_changes:
        node = f" node {change.node}" if change.node is not None else ""
        note = "" if change.outcome == "ok" else f": {change.detail}"
        lines.append(
            f"  {change.at_s:7.2f}s  {change.action}{node}: {change.outcome} in "
            f"{change.duration_s:.2f} s{note}"
        )
    adds = [c.duration_s for c in done if c.action == "add"]
    if adds:
        lines.append(
            f"time to add a node: {min(adds):.2f} s to {max(adds):.2f} s "
            f"(mean {sum(adds) / len(adds):.2f} s over {len(adds)})"
        )
    lines.append("unavailability around membership changes (longest gap without an ok op):")
    for gap in report.membership_gaps:
        lines.append(f"  {gap.start_s:7.2f}s  {gap.description}: {gap.longest_gap_s:.2f} s")
    members = ", ".join(str(node) for node in report.facts.final_members)
    lines.append(f"members after healing: {members or 'unknown'}")
    for answer in report.facts.non_member_answers[:LIST_SHOWN_MAX]:
        lines.append(f"  REMOVED NODE ANSWERED: {answer}")
    return lines


def _linearizability_lines(report: ChaosReport) -> list[str]:
    result = report.linearizability
    counts = {verdict: 0 for verdict in ("yes", "no", "unknown")}
    operations = 0
    for key_result in result.per_key.values():
        counts[key_result.verdict] += 1
        operations += key_result.operation_count
    lines = [
        f"linearizable: {result.verdict} ({len(result.per_key)} keys, {operations} operations "
        f"checked: {counts['yes']} yes, {counts['no']} no, {counts['unknown']} unknown)"
    ]
    for key_result in result.per_key.values():
        if key_result.verdict != "yes":
            reason = _relative_times(key_result.reason, report.facts.origin_ns)
            lines.append(f"  key {key_result.key!r}: {key_result.verdict}: {reason}")
    if result.key is not None:
        stuck = result.per_key[result.key].stuck_operation
        lines.append(
            f"  smallest failing sub-history of key {result.key!r} ({len(result.witness)} ops; "
            "times in ms since the workload started; see timeline.html):"
        )
        for op in result.witness:
            marker = "   <- cannot take effect in time" if op is stuck else ""
            text = format_operation(_relative(op, report.facts.origin_ns))
            lines.append(f"    {text}{_node_note(report.witness_nodes, op)}{marker}")
    return lines


def _watch_lines(watch: WatchCheck | None) -> list[str]:
    if watch is None:
        return []
    ends = ", ".join(f"{how} {count}" for how, count in sorted(watch.ends.items()))
    lines = [
        f"watch: {watch.verdict} ({watch.watchers} watchers, {watch.streams} streams, "
        f"{watch.resumes} resumes, {watch.events} events, {watch.progress} progress lines, "
        f"up to revision {watch.highest_revision}; {watch.compactions} compactions, "
        f"{watch.relists} re-lists)"
    ]
    if watch.skipped is not None:
        lines.append(f"  skipped: {watch.skipped}")
    if ends:
        lines.append(f"  streams ended: {ends}")
    if watch.first is not None:
        counts = ", ".join(f"{name} {count}" for name, count in watch.counts.items())
        lines.append(f"  violations: {counts}")
        lines.append(f"  first: {watch.first.describe()}")
    return lines


def _bank_lines(bank: BankCheck | None) -> list[str]:
    if bank is None:
        return []
    transfers = ", ".join(f"{outcome} {count}" for outcome, count in bank.transfers.items())
    lines = [
        f"bank: {'ok' if bank.passed else 'violated'} (transfers: {transfers}; "
        f"{bank.audits} audits, every one must total {bank.expected_total}; per-account "
        f"order linearizable: {bank.order.verdict})"
    ]
    lines += [f"  - {failure}" for failure in bank.failures()]
    if bank.final_audit is not None:
        lines.append(f"  final balances: {dict(sorted(bank.final_audit.items()))}")
    return lines


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{outcome} {count}" for outcome, count in counts.items() if count) or "none"


def _lock_lines(lock: LockCheck | None) -> list[str]:
    if lock is None:
        return []
    ttl = f"{lock.ttl_s} s" if lock.ttl_s is not None else "?"
    writes = lock.operations.get("write", {})
    lines = [
        f"lock: {'ok' if lock.passed else 'violated'} ({lock.clients} clients, lease TTL {ttl}: "
        f"{lock.rounds} rounds, {lock.held} held the lock, {lock.completed} completed; "
        f"fenced writes: {_counts_text(writes)}; {lock.stalls} holders stalled past their "
        f"lease, their later writes: {_counts_text(lock.stale_writes)}; register history: "
        f"{lock.accepted} accepted writes by {lock.holders} holders, {lock.holder_reads} "
        "lock reads; checked: order, exclusive, holder, durable)"
    ]
    for name in ("grant", "acquire", "release", "revoke", "keepalive"):
        lines.append(f"  {name:<9} {_counts_text(lock.operations.get(name, {}))}")
    lines += [f"  - {failure}" for failure in lock.failures()]
    lines += [f"  violation: {v.describe()}" for v in lock.violations[1:10]]
    return lines


def _lock_json(lock: LockCheck | None) -> dict[str, Any] | None:
    if lock is None:
        return None
    return {
        "passed": lock.passed,
        "clients": lock.clients,
        "ttl_s": lock.ttl_s,
        "rounds": lock.rounds,
        "held": lock.held,
        "completed": lock.completed,
        "operations": {name: dict(row) for name, row in lock.operations.items()},
        "stalls": lock.stalls,
        "stale_writes": dict(lock.stale_writes),
        "accepted": lock.accepted,
        "holders": lock.holders,
        "holder_reads": lock.holder_reads,
        "journal_complete": lock.journal_complete,
        "final_register": (
            {"value": lock.final_register[0], "revision": lock.final_register[1]}
            if lock.final_register is not None
            else None
        ),
        "violation_counts": dict(lock.counts),
        "violations": [
            {"property": v.property, "revision": v.revision, "detail": v.detail}
            for v in lock.violations
        ],
    }


def _bank_json(bank: BankCheck | None) -> dict[str, Any] | None:
    if bank is None:
        return None
    return {
        "passed": bank.passed,
        "opened": bank.opened,
        "transfers": dict(bank.transfers),
        "audits": bank.audits,
        "expected_total": bank.expected_total,
        "wrong_total_count": bank.wrong_total_count,
        "wrong_totals": [
            {"at_s": at_s, "total": total, "balances": balances}
            for at_s, total, balances in bank.wrong_totals
        ],
        "final_audit": dict(bank.final_audit) if bank.final_audit is not None else None,
        "order": bank.order.verdict,
        "order_witness_key": bank.order.key,
        "order_witness": [format_operation(op) for op in bank.order.witness],
    }


def _watch_json(watch: WatchCheck | None) -> dict[str, Any] | None:
    if watch is None:
        return None
    return {
        "verdict": watch.verdict,
        "skipped": watch.skipped,
        "watchers": watch.watchers,
        "streams": watch.streams,
        "resumes": watch.resumes,
        "events": watch.events,
        "progress": watch.progress,
        "highest_revision": watch.highest_revision,
        "compactions": watch.compactions,
        "relists": watch.relists,
        "ends": dict(watch.ends),
        "violation_counts": dict(watch.counts),
        "violations": [
            {
                "property": v.property,
                "watcher": v.watcher,
                "stream": v.stream,
                "node": v.node,
                "revision": v.revision,
                "detail": v.detail,
            }
            for v in watch.violations
        ],
    }


def report_json(report: ChaosReport) -> dict[str, Any]:
    """The report as a JSON-serialisable object (everything, lists in full)."""
    facts = report.facts
    result = report.linearizability
    check = report.set_check
    return {
        "passed": report.passed,
        "failures": list(report.failures),
        "options": {
            "nodes": facts.nodes,
            "time_s": facts.duration_s,
            "nemesis": list(facts.nemeses),
            "seed": facts.seed,
            "broken_stale_reads": facts.broken_stale_reads,
            "watch": report.watch is not None,
            "broken_watch": facts.broken_watch,
            "bank": report.bank is not None,
            "broken_bank": facts.broken_bank,
            "lock": report.lock is not None,
            "broken_fence": facts.broken_fence,
        },
        "started_at": facts.started_at,
        "partitions_skipped": facts.partitions_skipped,
        "firewall_chain": facts.chain,
        "schedule": list(facts.schedule),
        "faults": [
            {"start_s": start, "end_s": end, "fault": text} for start, end, text in report.faults
        ],
        "nemesis_errors": list(facts.nemesis_errors),
        "burst": {"waves": list(facts.burst_waves), "violations": list(facts.burst_failures)},
        "operations": {f: dict(row) for f, row in report.counts.items()},
        "availability_per_s": list(report.availability),
        "leader_faults": [
            {"start_s": f.start_s, "fault": f.description, "longest_gap_s": f.longest_gap_s}
            for f in report.leader_faults
        ],
        "elections": [
            {"at_s": at, "node": node, "term": term} for at, node, term in report.elections
        ],
        "unexpected_exits": [
            {"node": n, "pid": p, "code": c} for n, p, c in facts.unexpected_exits
        ],
        "converged": facts.converged,
        "convergence": facts.convergence_detail,
        "recovery_s": facts.recovery_s,
        "teardown_exit_codes": {str(n): c for n, c in sorted(facts.teardown_codes.items())},
        "pids_started": list(facts.pids_started),
        "stragglers": list(facts.stragglers),
        "client_errors": list(facts.client_errors),
        "set": {
            "attempted": check.attempted,
            "acknowledged": check.acknowledged,
            "failed": check.failed,
            "unknown": check.unknown,
            "unknown_present": check.unknown_present,
            "present": check.present,
            "lost": list(check.lost),
            "unexpected": list(check.unexpected),
            "failed_present": list(check.failed_present),
            "final_read_complete": check.final_read_complete,
        },
        "linearizable": result.verdict,
        "keys": {
            key: {"verdict": r.verdict, "operations": r.operation_count, "reason": r.reason}
            for key, r in result.per_key.items()
        },
        "witness_key": result.key,
        "witness": [
            format_operation(_relative(op, facts.origin_ns)) + _node_note(report.witness_nodes, op)
            for op in result.witness
        ],
        "replay": facts.replay,
        "watch": _watch_json(report.watch),
        "bank": _bank_json(report.bank),
        "lock": _lock_json(report.lock),
        "membership": {
            "calls": [
                {
                    "at_s": c.at_s,
                    "action": c.action,
                    "node": c.node,
                    "outcome": c.outcome,
                    "duration_s": c.duration_s,
                    "detail": c.detail,
                }
                for c in report.member_changes
            ],
            "gaps": [
                {"start_s": g.start_s, "fault": g.description, "longest_gap_s": g.longest_gap_s}
                for g in report.membership_gaps
            ],
            "final_members": list(facts.final_members),
            "non_member_answers": list(facts.non_member_answers),
        },
    }


# --- the HTML timeline -------------------------------------------------------------------------

_STYLE = """
body { font: 13px sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; }
.chart { position: relative; border-left: 1px solid #999; margin-left: 7em; }
.lane { position: relative; height: 34px; border-bottom: 1px solid #eee; }
.lane-name { position: absolute; left: -7em; width: 6.5em; top: 9px; text-align: right; }
.op { position: absolute; top: 4px; height: 24px; overflow: hidden; white-space: nowrap;
      font-size: 11px; line-height: 24px; padding: 0 3px; box-sizing: border-box;
      border-radius: 3px; border: 1px solid #555; }
.ok { background: #cfe8cf; } .info { background: repeating-linear-gradient(45deg, #fde9b6,
      #fde9b6 6px, #fff6dc 6px, #fff6dc 12px); border-style: dashed; }
.stuck { border: 2px solid #c00; background: #f6c6c6; }
.fault { position: absolute; top: 0; bottom: 0; background: rgba(120, 120, 220, 0.12);
         border-left: 1px dashed #88c; border-right: 1px dashed #88c; }
.fault span { position: absolute; top: -1.4em; font-size: 10px; color: #447; white-space: nowrap; }
.axis { position: relative; height: 1.6em; margin-left: 7em; color: #666; font-size: 11px; }
.tick { position: absolute; }
table { border-collapse: collapse; margin-top: 1.5em; }
td { padding: 2px 8px; border-bottom: 1px solid #eee; font-family: monospace; }
"""


def _op_label(op: Operation) -> str:
    if op.kind == "read":
        return f"R {op.output!r}"
    if op.kind == "write":
        return f"W {op.value!r}"
    if op.kind == "cas":
        result = "" if op.status != "ok" else (" ok" if op.output else " no")
        return f"CAS {op.expected!r}->{op.value!r}{result}"
    return op.kind


def render_timeline(
    witness: Sequence[Operation],
    stuck: Operation | None,
    faults: Sequence[tuple[float, float, str]],
    origin_ns: int,
    key: str,
    nodes: Mapping[tuple[int, int], int] | None = None,
) -> str:
    """A self-contained HTML page drawing `witness` (ops of one key) per process over time,
    with the faults that overlap it as shaded bands; `stuck` is highlighted; `nodes` names
    the node each op was sent to, by (process, call time)."""
    nodes = nodes or {}
    shown = sorted(witness, key=lambda op: (op.call, op.process))[-TIMELINE_OPERATIONS_MAX:]
    title = f"kvraft chaos: linearizability violation on key {key!r}"
    if not shown:
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1><p>No operations.</p>"
            "</body></html>\n"
        )
    start_ns = min(op.call for op in shown)
    last_ns = max(max(op.call, op.ret or op.call) for op in shown)
    # Unknown outcomes have no end: draw them to the right edge, a little past the last event.
    end_ns = last_ns + max(1, (last_ns - start_ns) // 10)
    span_ns = max(1, end_ns - start_ns)

    def percent(moment_ns: int) -> float:
        return 100.0 * (moment_ns - start_ns) / span_ns

    def seconds(moment_ns: int) -> str:
        return f"{(moment_ns - origin_ns) / 1e9:.3f}s"

    processes = sorted({op.process for op in shown})
    lanes = []
    for process in processes:
        bars = []
        for op in (op for op in shown if op.process == process):
            finish = op.ret if op.ret is not None and op.status == "ok" else end_ns
            left = percent(op.call)
            width = max(0.4, percent(finish) - left)
            css = "stuck" if op is stuck else ("ok" if op.status == "ok" else "info")
            tooltip = f"{format_operation(op)} | called {seconds(op.call)}, " + (
                f"returned {seconds(op.ret)}" if op.ret is not None else "outcome unknown"
            )
            bars.append(
                f'<div class="op {css}" style="left:{left:.3f}%;width:{width:.3f}%" '
                f'title="{html.escape(tooltip)}">{html.escape(_op_label(op))}</div>'
            )
        lanes.append(
            f'<div class="lane"><div class="lane-name">process {process}</div>{"".join(bars)}</div>'
        )
    bands = []
    for fault_start_s, fault_end_s, text in faults:
        fault_start = origin_ns + int(fault_start_s * 1e9)
        fault_end = origin_ns + int(fault_end_s * 1e9)
        if fault_end < start_ns or fault_start > end_ns:
            continue
        left = max(0.0, percent(fault_start))
        right = min(100.0, percent(fault_end))
        bands.append(
            f'<div class="fault" style="left:{left:.3f}%;width:{max(0.2, right - left):.3f}%">'
            f"<span>{html.escape(text)}</span></div>"
        )
    ticks = "".join(
        f'<div class="tick" style="left:{fraction * 100:.1f}%">'
        f"{html.escape(seconds(start_ns + int(span_ns * fraction)))}</div>"
        for fraction in (0.0, 0.25, 0.5, 0.75)
    )
    rows = "".join(
        f"<tr><td>{'&#9654;' if op is stuck else ''}</td><td>{html.escape(seconds(op.call))}</td>"
        f"<td>{html.escape(seconds(op.ret) if op.ret is not None else '?')}</td>"
        f"<td>{html.escape(format_operation(_relative(op, origin_ns)))}</td>"
        f"<td>{html.escape(_node_note(nodes, op).strip())}</td></tr>"
        for op in shown
    )
    note = (
        "Each bar is one operation, from the moment its client sent it to the moment the "
        "answer arrived (hatched: outcome unknown, it may take effect at any later time). "
        "No order of these operations, each taking effect at one instant inside its bar, "
        "explains every result. Red: the operation that could not take effect in time. "
        "Shaded bands: faults. Times: seconds since the workload started."
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>"
        f'<div class="axis">{ticks}</div><div class="chart">{"".join(bands)}{"".join(lanes)}</div>'
        f"<table><tr><td></td><td>called</td><td>returned</td><td>operation</td></tr>{rows}"
        "</table></body></html>\n"
    )
