"""The nemesis: which faults a chaos run injects, when, and on which nodes.

Theory of operation
-------------------
`plan_schedule` turns a seed into a schedule of `Fault`s, each injected at
``start_s`` (seconds after the workload starts) and healed ``hold_s`` later,
with a quiet gap before the next one; faults never overlap, so the report can
say how long the cluster took to recover from each. Everything random is
drawn here, from the seed, so a run's faults are reproducible and printed in
its report. Only "the leader" cannot be known in advance: a fault aimed at
the leader carries a fallback node (used when no leader is known at that
moment) and `resolve_fault` picks the real target when the fault fires.

Partitions are *grudges* (Jepsen's word): for each node, the nodes whose
packets it drops. The shapes are Jepsen's: one node isolated, the leader
isolated, a minority cut from a majority, a bridge (two halves that each see
one bridge node, which sees everyone) and, for five nodes, a majorities ring
(each node sees its two ring neighbours: a majority, but no two nodes see the
same majority). Every shape here is symmetric: if a drops b, b drops a.

`run_schedule` executes a schedule against anything that implements
`FaultControls` (the chaos runner's cluster and firewall), logging each fault's
start and end; it stops early, healing the current fault, when asked to.

Pure except `run_schedule`, which waits on a `threading.Event`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "FAULT_HOLD_S_MAX",
    "FAULT_HOLD_S_MIN",
    "NEMESIS_KINDS",
    "NODE_COUNTS",
    "PARTITION_SHAPES",
    "PROCESS_TARGETS",
    "QUIET_S_MAX",
    "QUIET_S_MIN",
    "RUN_S_MAX",
    "WARMUP_S",
    "Fault",
    "FaultControls",
    "Grudge",
    "NemesisError",
    "ResolvedFault",
    "bridge_grudge",
    "cut_pairs",
    "describe_fault",
    "groups_grudge",
    "isolate_grudge",
    "parse_nemesis_kinds",
    "plan_schedule",
    "resolve_fault",
    "ring_grudge",
    "run_schedule",
    "sees_majority",
    "shapes_for",
]

NEMESIS_KINDS = ("kill", "pause", "partition")
"""The faults the nemesis knows: SIGKILL and restart, SIGSTOP and SIGCONT, network partitions."""

PROCESS_TARGETS = ("one", "leader", "majority")
"""Whom a kill or a pause hits: one random node, the current leader, or a random majority."""

PARTITION_SHAPES = ("isolate-one", "isolate-leader", "halves", "bridge", "majorities-ring")
"""Jepsen's partition shapes; ``majorities-ring`` needs five nodes (see `shapes_for`)."""

NODE_COUNTS = (3, 5)
"""Cluster sizes the chaos harness runs: the sizes the shapes (and the README) are made for."""

RUN_S_MAX = 24 * 3600
"""The longest workload a schedule is planned for: a day is far past any useful run, and the
bound keeps a typo (``--time 10000000``) from planning millions of faults."""

WARMUP_S = 2.0
"""Seconds of calm before the first fault, so the report shows a fault-free baseline of
throughput to compare the unavailability with."""

FAULT_HOLD_S_MIN = 2.0
"""The shortest a fault is held: several election timeouts (400-800 ms by default), so a
leader fault always forces an election."""

FAULT_HOLD_S_MAX = 5.0
"""The longest a fault is held: longer than a client's request timeout, so operations that
hit it end as unknown or failed, but short enough for several faults in a 30 s run."""

QUIET_S_MIN = 1.0
"""The shortest calm between two faults: time for the cluster to elect and catch up."""

QUIET_S_MAX = 3.0
"""The longest calm between two faults."""


class NemesisError(ValueError):
    """A nemesis request is invalid (the caller's fault): unknown kind, bad duration, ..."""


Grudge = tuple[tuple[int, tuple[int, ...]], ...]
"""For each node that drops packets (sorted), the nodes it drops packets from (sorted)."""


def _make_grudge(drops: Mapping[int, Collection[int]]) -> Grudge:
    return tuple(
        (receiver, tuple(sorted(senders))) for receiver, senders in sorted(drops.items()) if senders
    )


def groups_grudge(groups: Sequence[Collection[int]]) -> Grudge:
    """Nodes in different groups drop each other's packets; nodes in one group talk freely."""
    group_of: dict[int, int] = {}
    for index, group in enumerate(groups):
        for node in group:
            if node in group_of:
                raise NemesisError(f"node {node} is in two groups")
            group_of[node] = index
    drops = {
        node: [other for other in group_of if group_of[other] != group_of[node]]
        for node in group_of
    }
    return _make_grudge(drops)


def isolate_grudge(node_ids: Collection[int], isolated: int) -> Grudge:
    """`isolated` hears nobody and nobody hears it; the others talk freely."""
    if isolated not in node_ids:
        raise NemesisError(f"node {isolated} is not in the cluster {sorted(node_ids)}")
    return groups_grudge([[isolated], [node for node in node_ids if node != isolated]])


def bridge_grudge(order: Sequence[int]) -> Grudge:
    """Two halves that cannot talk to each other, and one node (the middle of `order`) that
    both halves see: with five nodes, {a, b} | c | {d, e}."""
    if len(order) < 3 or len(order) % 2 == 0:
        raise NemesisError(f"a bridge needs an odd number of nodes >= 3, got {len(order)}")
    half = len(order) // 2
    first, second = order[:half], order[half + 1 :]
    drops: dict[int, list[int]] = {node: list(second) for node in first}
    drops.update({node: list(first) for node in second})
    return _make_grudge(drops)


def ring_grudge(order: Sequence[int]) -> Grudge:
    """Five nodes in a ring (in `order`): each sees itself and its two neighbours, a majority,
    and no two nodes see the same majority."""
    if len(order) != 5:
        raise NemesisError(f"a majorities ring needs 5 nodes, got {len(order)}")
    count = len(order)
    drops = {
        node: [
            other
            for offset, other in enumerate(order)
            if min((offset - position) % count, (position - offset) % count) > 1
        ]
        for position, node in enumerate(order)
    }
    return _make_grudge(drops)


def cut_pairs(grudge: Grudge) -> list[tuple[int, int]]:
    """The directed links a grudge cuts, as (receiver, sender): packets from sender to
    receiver are dropped."""
    return [(receiver, sender) for receiver, senders in grudge for sender in senders]


def sees_majority(grudge: Grudge, node: int, node_ids: Collection[int]) -> bool:
    """Whether `node` can still exchange packets with a majority of the cluster (itself
    included): a leader that cannot is bound to lose its leadership (CheckQuorum, §6.2)."""
    drops = dict(grudge)
    heard = [
        other
        for other in node_ids
        if other == node or (other not in drops.get(node, ()) and node not in drops.get(other, ()))
    ]
    return len(heard) > len(node_ids) // 2


def shapes_for(node_count: int) -> tuple[str, ...]:
    """The partition shapes that make sense for a cluster of this size."""
    if node_count == 5:
        return PARTITION_SHAPES
    return tuple(shape for shape in PARTITION_SHAPES if shape != "majorities-ring")


def parse_nemesis_kinds(text: str) -> frozenset[str]:
    """``kill,pause,partition`` (any subset, any order; ``none`` for no faults) -> the kinds.

    Raises NemesisError naming the unknown entries.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return frozenset()
    if not names:
        raise NemesisError("no nemesis given; use a list like kill,pause,partition or none")
    unknown = sorted(set(names) - set(NEMESIS_KINDS))
    if "member" in unknown:
        raise NemesisError(
            "nemesis 'member' is not available: the HTTP API has no membership changes yet"
        )
    if unknown:
        raise NemesisError(f"unknown nemesis {unknown}; choose from {', '.join(NEMESIS_KINDS)}")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault.

    Fields:
        start_s: when it is injected, in seconds after the workload started.
        hold_s: how long it is held before it is healed.
        kind: ``kill``, ``pause`` or ``partition``.
        target: for kill and pause one of `PROCESS_TARGETS`; for a partition its shape.
        nodes: the nodes a kill or pause hits (for ``leader``: the fallback node used when no
            leader is known); for a partition, the node order the shape was drawn from.
        grudge: for a partition, the links it cuts; empty for ``isolate-leader``, which is
            computed when the fault fires.
    """

    start_s: float
    hold_s: float
    kind: str
    target: str
    nodes: tuple[int, ...]
    grudge: Grudge = ()


def _partition_fault(
    rng: random.Random, shape: str, node_ids: Sequence[int], start_s: float, hold_s: float
) -> Fault:
    order = list(node_ids)
    rng.shuffle(order)
    grudge: Grudge
    if shape in ("isolate-one", "isolate-leader"):
        grudge = isolate_grudge(node_ids, order[0]) if shape == "isolate-one" else ()
    elif shape == "halves":
        minority = len(order) // 2
        grudge = groups_grudge([order[:minority], order[minority:]])
    elif shape == "bridge":
        grudge = bridge_grudge(order)
    else:
        grudge = ring_grudge(order)
    return Fault(start_s, hold_s, "partition", shape, tuple(order), grudge)


def plan_schedule(
    seed: int, kinds: Collection[str], duration_s: float, node_ids: Sequence[int]
) -> tuple[Fault, ...]:
    """The faults of a run of `duration_s` seconds, drawn from `seed`.

    The first fault starts after `WARMUP_S`; each is held `FAULT_HOLD_S_MIN` to
    `FAULT_HOLD_S_MAX` seconds (cut short so that it ends by `duration_s`), followed by
    `QUIET_S_MIN` to `QUIET_S_MAX` seconds of calm. Kinds are drawn uniformly from `kinds`,
    targets uniformly from `PROCESS_TARGETS` or `shapes_for(len(node_ids))`. Raises
    NemesisError for an unknown kind, a duration outside (0, RUN_S_MAX] or a cluster size
    not in `NODE_COUNTS`.
    """
    unknown = sorted(set(kinds) - set(NEMESIS_KINDS))
    if unknown:
        raise NemesisError(f"unknown nemesis {unknown}")
    if not 0 < duration_s <= RUN_S_MAX:
        raise NemesisError(f"the run must last 0..{RUN_S_MAX} s, got {duration_s}")
    if len(node_ids) not in NODE_COUNTS or len(set(node_ids)) != len(node_ids):
        raise NemesisError(f"the cluster must have {NODE_COUNTS} distinct nodes, got {node_ids}")
    rng = random.Random(seed)
    ordered_kinds = [kind for kind in NEMESIS_KINDS if kind in kinds]  # independent of set order
    majority = len(node_ids) // 2 + 1
    faults: list[Fault] = []
    start_s = WARMUP_S
    while ordered_kinds and start_s + FAULT_HOLD_S_MIN <= duration_s:
        hold_s = round(
            min(rng.uniform(FAULT_HOLD_S_MIN, FAULT_HOLD_S_MAX), duration_s - start_s), 3
        )
        kind = rng.choice(ordered_kinds)
        if kind == "partition":
            shape = rng.choice(shapes_for(len(node_ids)))
            faults.append(_partition_fault(rng, shape, node_ids, start_s, hold_s))
        else:
            target = rng.choice(PROCESS_TARGETS)
            count = majority if target == "majority" else 1
            nodes = tuple(sorted(rng.sample(list(node_ids), count)))
            faults.append(Fault(start_s, hold_s, kind, target, nodes))
        start_s = round(start_s + hold_s + rng.uniform(QUIET_S_MIN, QUIET_S_MAX), 3)
    return tuple(faults)


@dataclass(frozen=True, slots=True)
class ResolvedFault:
    """A fault as it fires: the nodes it hits (kill, pause), the links it cuts (partition),
    the leader known at that moment (None: unknown) and whether the fault hits it (killed,
    paused, or cut off from a majority)."""

    fault: Fault
    nodes: tuple[int, ...]
    grudge: Grudge
    leader: int | None
    hits_leader: bool


def resolve_fault(fault: Fault, leader: int | None, node_ids: Collection[int]) -> ResolvedFault:
    """Fix a fault's targets now that the current leader is known (or known to be unknown)."""
    if fault.kind == "partition":
        grudge = fault.grudge
        if fault.target == "isolate-leader":
            grudge = isolate_grudge(node_ids, leader if leader is not None else fault.nodes[0])
        hits = leader is not None and not sees_majority(grudge, leader, node_ids)
        return ResolvedFault(fault, (), grudge, leader, hits)
    nodes = fault.nodes
    if fault.target == "leader" and leader is not None:
        nodes = (leader,)
    return ResolvedFault(fault, nodes, (), leader, leader is not None and leader in nodes)


def describe_fault(fault: Fault | ResolvedFault) -> str:
    """One line for the report, e.g. ``kill leader [2]`` or ``partition bridge 1,2 | 3 | 4,5``."""
    resolved = fault if isinstance(fault, ResolvedFault) else None
    planned = resolved.fault if resolved is not None else fault
    assert isinstance(planned, Fault)
    if planned.kind == "partition":
        grudge = resolved.grudge if resolved is not None else planned.grudge
        cuts = ", ".join(
            f"{receiver}x{sender}" for receiver, sender in cut_pairs(grudge) if receiver < sender
        )
        return f"partition {planned.target} (cut {cuts or 'chosen when it fires'})"
    nodes = resolved.nodes if resolved is not None else planned.nodes
    shown = ",".join(str(node) for node in nodes)
    return f"{planned.kind} {planned.target} [{shown}]"


class FaultControls(Protocol):
    """What `run_schedule` needs from the cluster and the network."""

    def current_leader(self) -> int | None:
        """The leader as recently observed, or None."""
        ...

    def kill(self, node_id: int) -> None: ...

    def restart(self, node_id: int) -> None: ...

    def pause(self, node_id: int) -> None: ...

    def resume(self, node_id: int) -> None: ...

    def partition(self, grudge: Grudge) -> None:
        """Cut the links of `grudge` (raises if partitions are unavailable)."""
        ...

    def heal(self) -> None:
        """Remove every cut."""
        ...


def run_schedule(
    schedule: Sequence[Fault],
    controls: FaultControls,
    node_ids: Collection[int],
    log: Callable[[dict[str, Any]], None],
    stop: threading.Event,
    origin_ns: int,
) -> None:
    """Inject each fault at its time (relative to `origin_ns`, monotonic) and heal it after
    its hold; return early, with the current fault healed, once `stop` is set.

    `log` receives ``{"type": "start"|"end", "f": kind, ...}`` per fault. A fault whose
    injection fails (a node that cannot be restarted, iptables refusing a rule) is logged
    with ``type: "error"`` and the run goes on: the final phase heals everything anyway.
    """

    def elapsed_s() -> float:
        return (time.monotonic_ns() - origin_ns) / 1e9

    for fault in schedule:
        if stop.wait(max(0.0, fault.start_s - elapsed_s())):
            return
        resolved = resolve_fault(fault, controls.current_leader(), node_ids)
        event: dict[str, Any] = {
            "f": fault.kind,
            "target": fault.target,
            "nodes": list(resolved.nodes),
            "cuts": [list(pair) for pair in cut_pairs(resolved.grudge)],
            "leader": resolved.leader,
            "hits_leader": resolved.hits_leader,
            "planned_s": fault.start_s,
        }
        try:
            _inject(resolved, controls)
        except Exception as error:  # report it and carry on; the final heal repairs it
            log({"type": "error", **event, "detail": f"inject failed: {error}"})
            _heal_quietly(resolved, controls, log)
            continue
        log({"type": "start", **event})
        stop.wait(max(0.0, fault.start_s + fault.hold_s - elapsed_s()))
        _heal_quietly(resolved, controls, log)
        log({"type": "end", **event})
        if stop.is_set():
            return


def _inject(resolved: ResolvedFault, controls: FaultControls) -> None:
    kind = resolved.fault.kind
    if kind == "partition":
        controls.partition(resolved.grudge)
    for node in resolved.nodes:
        if kind == "kill":
            controls.kill(node)
        else:
            controls.pause(node)


def _heal_quietly(
    resolved: ResolvedFault, controls: FaultControls, log: Callable[[dict[str, Any]], None]
) -> None:
    kind = resolved.fault.kind
    try:
        if kind == "partition":
            controls.heal()
        for node in resolved.nodes:
            if kind == "kill":
                controls.restart(node)
            else:
                controls.resume(node)
    except Exception as error:  # the final phase heals everything again
        log({"type": "error", "f": kind, "detail": f"heal failed: {error}"})
