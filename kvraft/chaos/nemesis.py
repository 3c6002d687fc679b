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
packets it drops. The shapes are Jepsen's, defined once in `kvraft.partitions`
(shared with the simulator): one node isolated, the leader isolated, a minority
cut from a majority, a bridge (two halves that each see one bridge node, which
sees everyone) and, for five nodes, a majorities ring (each node sees its two
ring neighbours: a majority, but no two nodes see the same majority). Every
shape is symmetric: if a drops b, b drops a. Here a bridge needs an odd number
of nodes and a ring exactly five (`shapes_for`, `resolve_fault`).

Membership faults (``member``) change the cluster online through the HTTP API:
add a spare node (it starts with ``--join`` and the cluster adds it as a
learner, then promotes it), remove a voter (sometimes the leader, which hands
over first), or replace one (add, then remove). The action and a random
``draw`` are planned from the seed; *which* node is only decided when the fault
fires (`plan_member_change`), from the membership the cluster reports then,
under two rules: the number of voters stays within `voters_bounds`, and a
majority of the voters (as they are after each step) is always running. An
action the rules forbid falls back to one they allow (at the maximum size an
add becomes a remove, at the minimum a remove becomes a replace), or is skipped.
``transfer`` faults move leadership (`POST /v1/leader/transfer`). ``burst`` faults flood
one node (the leader, or a follower that forwards to it) with waves of large writes for
the fault's hold (`kvraft.chaos.burst`): the cluster must shed what it cannot take and keep
every node running.

Since the membership changes, a kill, pause or partition planned against the
founding nodes is mapped onto the members of the moment when it fires
(`resolve_fault`): the planned nodes when they all still are members, otherwise
nodes drawn from the members with the fault's ``draw``; a partition shape that
does not fit the new size (a bridge needs an odd count, a ring five nodes)
becomes ``halves``.

`run_schedule` executes a schedule against anything that implements
`FaultControls` (the chaos runner's cluster and firewall), logging each fault's
start and end and each membership call (``{"type": "member"}``, whatever its
answer: a 409/503/504 is the nemesis's outcome, not an error); it stops early,
healing the current fault, when asked to.

Pure except `run_schedule`, which waits on a `threading.Event`.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvraft import partitions
from kvraft.chaos.burst import BurstWave

__all__ = [
    "BURST_TARGETS",
    "FAULT_HOLD_S_MAX",
    "FAULT_HOLD_S_MIN",
    "MEMBER_ACTIONS",
    "NEMESIS_KINDS",
    "NODE_COUNTS",
    "PARTITION_SHAPES",
    "PROCESS_TARGETS",
    "QUIET_S_MAX",
    "QUIET_S_MIN",
    "RUN_S_MAX",
    "SPARE_SLOTS",
    "TRANSFER_TARGETS",
    "VOTERS_MIN_FLOOR",
    "WARMUP_S",
    "Fault",
    "FaultControls",
    "Grudge",
    "MemberCall",
    "MemberState",
    "MemberStep",
    "NemesisError",
    "ResolvedFault",
    "bridge_grudge",
    "cut_pairs",
    "describe_fault",
    "groups_grudge",
    "isolate_grudge",
    "majority_running",
    "parse_nemesis_kinds",
    "plan_member_change",
    "plan_schedule",
    "plan_transfer_target",
    "resolve_fault",
    "ring_grudge",
    "run_schedule",
    "sees_majority",
    "shapes_for",
    "voters_bounds",
]

NEMESIS_KINDS = ("kill", "pause", "partition", "member", "transfer", "burst")
"""The faults the nemesis knows: SIGKILL and restart, SIGSTOP and SIGCONT, network partitions,
membership changes, leadership transfers, floods of large writes."""

BURST_TARGETS = ("leader", "follower")
"""Where a burst fault sends its writes: to the leader, or to a follower that forwards them."""

MEMBER_ACTIONS = ("add", "remove", "remove-leader", "replace")
"""What a membership fault does: add a spare node, remove a voter other than the leader,
remove the leader, or add a spare and then remove a voter (any, the leader included)."""

TRANSFER_TARGETS = ("any", "named")
"""Whom a transfer fault hands leadership to: the voter the leader picks (the most caught
up), or a voter named by the fault's draw."""

SPARE_SLOTS = 2
"""Node slots (ids N+1, N+2) reserved beyond the founding nodes for membership faults: the
cluster grows up to N+2 voters."""

VOTERS_MIN_FLOOR = 3
"""Membership faults never leave fewer voters than this (nor fewer than N-1): three voters
still survive the loss of one, so a later kill of a single node is a fault, not an outage."""

PROCESS_TARGETS = ("one", "leader", "majority")
"""Whom a kill or a pause hits: one random node, the current leader, or a random majority."""

PARTITION_SHAPES = partitions.SHAPES
"""Jepsen's partition shapes (`kvraft.partitions`); ``majorities-ring`` needs five nodes here
(see `shapes_for`)."""

NODE_COUNTS = (3, 5)
"""Cluster sizes the chaos harness runs: the sizes the shapes (and the README) are made for."""

RUN_S_MAX = 24 * 3600
"""The longest workload a schedule is planned for: a day is far past any useful run, and the
bound keeps a typo (``--time 10000000``) from planning millions of faults."""

WARMUP_S = 2.0
"""Seconds of calm before the first fault, so the report shows a fault-free baseline of
throughput to compare the unavailability with."""

FAULT_HOLD_S_MIN = 2.0
"""The shortest a fault is held: several election timeouts (300-600 ms by default), so a
leader fault always forces an election."""

FAULT_HOLD_S_MAX = 5.0
"""The longest a fault is held: longer than a client's request timeout, so operations that
hit it end as unknown or failed, but short enough for several faults in a 30 s run."""

QUIET_S_MIN = 1.0
"""The shortest calm between two faults: time for the cluster to elect and catch up."""

QUIET_S_MAX = 3.0
"""The longest calm between two faults."""


def voters_bounds(founding_count: int) -> tuple[int, int]:
    """The (fewest, most) voters membership faults keep: ``max(VOTERS_MIN_FLOOR, N - 1)``
    and ``N + SPARE_SLOTS``."""
    return max(VOTERS_MIN_FLOOR, founding_count - 1), founding_count + SPARE_SLOTS


class NemesisError(ValueError):
    """A nemesis request is invalid (the caller's fault): unknown kind, bad duration, ..."""


Grudge = tuple[tuple[int, tuple[int, ...]], ...]
"""For each node that drops packets (sorted), the nodes it drops packets from (sorted)."""


def _make_grudge(drops: Mapping[int, Collection[int]]) -> Grudge:
    return tuple(
        (receiver, tuple(sorted(senders))) for receiver, senders in sorted(drops.items()) if senders
    )


def _grudge_of(links: Iterable[partitions.Link]) -> Grudge:
    """The grudge that drops exactly `links` (sender, receiver)."""
    drops: dict[int, list[int]] = {}
    for sender, receiver in links:
        drops.setdefault(receiver, []).append(sender)
    return _make_grudge(drops)


def groups_grudge(groups: Sequence[Collection[int]]) -> Grudge:
    """Nodes in different groups drop each other's packets; nodes in one group talk freely."""
    seen: set[int] = set()
    for group in groups:
        for node in group:
            if node in seen:
                raise NemesisError(f"node {node} is in two groups")
            seen.add(node)
    links: set[partitions.Link] = set()
    for index, group in enumerate(groups):
        for other in groups[index + 1 :]:
            links |= partitions.links_between(group, other)
    return _grudge_of(links)


def isolate_grudge(node_ids: Collection[int], isolated: int) -> Grudge:
    """`isolated` hears nobody and nobody hears it; the others talk freely."""
    if isolated not in node_ids:
        raise NemesisError(f"node {isolated} is not in the cluster {sorted(node_ids)}")
    return _grudge_of(partitions.isolate(isolated, node_ids))


def bridge_grudge(order: Sequence[int]) -> Grudge:
    """Two halves that cannot talk to each other, and one node (the middle of `order`) that
    both halves see: with five nodes, {a, b} | c | {d, e}."""
    if len(order) < 3 or len(order) % 2 == 0:
        raise NemesisError(f"a bridge needs an odd number of nodes >= 3, got {len(order)}")
    return _grudge_of(partitions.shape_links("bridge", order))


def ring_grudge(order: Sequence[int]) -> Grudge:
    """Five nodes in a ring (in `order`): each sees itself and its two neighbours, a majority,
    and no two nodes see the same majority."""
    if len(order) != 5:
        raise NemesisError(f"a majorities ring needs 5 nodes, got {len(order)}")
    return _grudge_of(partitions.shape_links("majorities-ring", order))


def cut_pairs(grudge: Grudge) -> list[tuple[int, int]]:
    """The directed links a grudge cuts, as (receiver, sender): packets from sender to
    receiver are dropped."""
    return [(receiver, sender) for receiver, senders in grudge for sender in senders]


def sees_majority(grudge: Grudge, node: int, node_ids: Collection[int]) -> bool:
    """Whether `node` can still exchange packets with a majority of the cluster (itself
    included): a leader that cannot is bound to lose its leadership (CheckQuorum, §6.2)."""
    cut = {(sender, receiver) for receiver, sender in cut_pairs(grudge)}
    return len(partitions.reachable(cut, node, node_ids)) > len(node_ids) // 2


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
    if unknown:
        raise NemesisError(f"unknown nemesis {unknown}; choose from {', '.join(NEMESIS_KINDS)}")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault.

    Fields:
        start_s: when it is injected, in seconds after the workload started.
        hold_s: how long it is held before it is healed.
        kind: one of `NEMESIS_KINDS`.
        target: for kill and pause one of `PROCESS_TARGETS`; for a partition its shape; for
            a membership fault one of `MEMBER_ACTIONS`; for a transfer one of
            `TRANSFER_TARGETS`; for a burst one of `BURST_TARGETS`.
        nodes: the nodes a kill or pause hits (for ``leader``: the fallback node used when no
            leader is known); for a partition, the node order the shape was drawn from;
            empty for membership, transfer and burst faults (a burst's node is picked when
            it fires).
        grudge: for a partition, the links it cuts; empty for ``isolate-leader``, which is
            computed when the fault fires.
        draw: a random number from the seed that picks nodes when the fault fires (the
            members then may differ from the founding nodes).
    """

    start_s: float
    hold_s: float
    kind: str
    target: str
    nodes: tuple[int, ...]
    grudge: Grudge = ()
    draw: int = 0


def _partition_fault(
    rng: random.Random, shape: str, node_ids: Sequence[int], start_s: float, hold_s: float
) -> Fault:
    order = partitions.draw_order(node_ids, rng)
    # The leader is only known when the fault fires (`resolve_fault`).
    grudge = () if shape == "isolate-leader" else _shape_grudge(shape, order, None)
    return Fault(start_s, hold_s, "partition", shape, tuple(order), grudge)


def plan_schedule(
    seed: int, kinds: Collection[str], duration_s: float, node_ids: Sequence[int]
) -> tuple[Fault, ...]:
    """The faults of a run of `duration_s` seconds, drawn from `seed`.

    The first fault starts after `WARMUP_S`; each is held `FAULT_HOLD_S_MIN` to
    `FAULT_HOLD_S_MAX` seconds (cut short so that it ends by `duration_s`), followed by
    `QUIET_S_MIN` to `QUIET_S_MAX` seconds of calm. Kinds are drawn uniformly from `kinds`,
    targets uniformly from `PROCESS_TARGETS`, `shapes_for(len(node_ids))`, `MEMBER_ACTIONS`
    or `TRANSFER_TARGETS`; each fault's `draw` comes from a second generator, so adding it
    changed no schedule of the older kinds. `node_ids` are the founding nodes. Raises
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
    draws = random.Random(f"kvraft-chaos-draw/{seed}")  # a string seed hashes deterministically
    ordered_kinds = [kind for kind in NEMESIS_KINDS if kind in kinds]  # independent of set order
    majority = len(node_ids) // 2 + 1
    faults: list[Fault] = []
    start_s = WARMUP_S
    while ordered_kinds and start_s + FAULT_HOLD_S_MIN <= duration_s:
        hold_s = round(
            min(rng.uniform(FAULT_HOLD_S_MIN, FAULT_HOLD_S_MAX), duration_s - start_s), 3
        )
        kind = rng.choice(ordered_kinds)
        draw = draws.getrandbits(32)
        if kind == "partition":
            shape = rng.choice(shapes_for(len(node_ids)))
            fault = _partition_fault(rng, shape, node_ids, start_s, hold_s)
            faults.append(dataclasses.replace(fault, draw=draw))
        elif kind in ("member", "transfer", "burst"):
            targets = {"member": MEMBER_ACTIONS, "transfer": TRANSFER_TARGETS}
            target = rng.choice(targets.get(kind, BURST_TARGETS))
            faults.append(Fault(start_s, hold_s, kind, target, (), (), draw))
        else:
            target = rng.choice(PROCESS_TARGETS)
            count = majority if target == "majority" else 1
            nodes = tuple(sorted(rng.sample(list(node_ids), count)))
            faults.append(Fault(start_s, hold_s, kind, target, nodes, (), draw))
        start_s = round(start_s + hold_s + rng.uniform(QUIET_S_MIN, QUIET_S_MAX), 3)
    return tuple(faults)


@dataclass(frozen=True, slots=True)
class ResolvedFault:
    """A fault as it fires: the nodes it hits (kill, pause), the links it cuts (partition),
    the leader known at that moment (None: unknown), whether the fault hits it (killed,
    paused, or cut off from a majority) and the shape or target used (`target`: a partition
    shape that does not fit the members of the moment becomes ``halves``)."""

    fault: Fault
    nodes: tuple[int, ...]
    grudge: Grudge
    leader: int | None
    hits_leader: bool
    target: str = ""


def _shape_fits(shape: str, count: int) -> bool:
    if shape == "bridge":
        return count >= 3 and count % 2 == 1
    if shape == "majorities-ring":
        return count == 5
    return count >= 2


def _shape_grudge(shape: str, order: Sequence[int], leader: int | None) -> Grudge:
    """`shape` cut from `order` (`kvraft.partitions.shape_links`); NemesisError for a bridge
    or ring that does not fit the count (see `_shape_fits`)."""
    if shape == "bridge":
        return bridge_grudge(order)
    if shape == "majorities-ring":
        return ring_grudge(order)
    return _grudge_of(partitions.shape_links(shape, order, leader))


def resolve_fault(fault: Fault, leader: int | None, node_ids: Collection[int]) -> ResolvedFault:
    """Fix a fault's targets now that the current leader (or that none is known) and the
    current members (`node_ids`) are known; see the module docstring for the mapping."""
    members = sorted(node_ids)
    if fault.kind in ("member", "transfer"):
        return ResolvedFault(fault, (), (), leader, False, fault.target)
    if fault.kind == "burst":
        if fault.target == "leader" and leader in members:
            return ResolvedFault(fault, (leader,), (), leader, False, fault.target)
        others = [node for node in members if node != leader] or members
        picked = others[fault.draw % len(others)]
        return ResolvedFault(fault, (picked,), (), leader, False, fault.target)
    if fault.kind == "partition":
        if set(fault.nodes) == set(members):
            shape, grudge = fault.target, fault.grudge
            if shape == "isolate-leader":
                grudge = _shape_grudge(shape, fault.nodes, leader)
        else:
            order = [node for node in fault.nodes if node in members]
            extra = [node for node in members if node not in order]
            random.Random(fault.draw).shuffle(extra)
            order += extra
            shape = fault.target if _shape_fits(fault.target, len(order)) else "halves"
            grudge = _shape_grudge(shape, order, leader)
        hits = leader is not None and not sees_majority(grudge, leader, members)
        return ResolvedFault(fault, (), grudge, leader, hits, shape)
    count = len(members) // 2 + 1 if fault.target == "majority" else 1
    nodes = fault.nodes
    if fault.target == "leader" and leader is not None and leader in members:
        nodes = (leader,)
    elif not set(nodes) <= set(members) or len(nodes) != count:
        nodes = tuple(sorted(random.Random(fault.draw).sample(members, count)))
    hits = leader is not None and leader in nodes
    return ResolvedFault(fault, nodes, (), leader, hits, fault.target)


def describe_fault(fault: Fault | ResolvedFault) -> str:
    """One line for the report, e.g. ``kill leader [2]`` or ``partition bridge 1,2 | 3 | 4,5``."""
    resolved = fault if isinstance(fault, ResolvedFault) else None
    planned = resolved.fault if resolved is not None else fault
    assert isinstance(planned, Fault)
    if planned.kind == "partition":
        grudge = resolved.grudge if resolved is not None else planned.grudge
        shape = resolved.target if resolved is not None and resolved.target else planned.target
        cuts = ", ".join(
            f"{receiver}x{sender}" for receiver, sender in cut_pairs(grudge) if receiver < sender
        )
        return f"partition {shape} (cut {cuts or 'chosen when it fires'})"
    if planned.kind in ("member", "transfer") or (planned.kind == "burst" and resolved is None):
        return f"{planned.kind} {planned.target}"
    nodes = resolved.nodes if resolved is not None else planned.nodes
    shown = ",".join(str(node) for node in nodes)
    return f"{planned.kind} {planned.target} [{shown}]"


# --- membership faults (pure planning) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberState:
    """The membership as the cluster reports it when a membership fault fires.

    Fields:
        voters, learners: the members (the leader's view).
        running: nodes whose process runs and is not paused.
        slots: every node id the harness can run (founding nodes and spares).
        leader: the leader (None: unknown).
        voters_min, voters_max: the bounds of `voters_bounds`.
    """

    voters: frozenset[int]
    learners: frozenset[int]
    running: frozenset[int]
    slots: tuple[int, ...]
    leader: int | None
    voters_min: int
    voters_max: int


@dataclass(frozen=True, slots=True)
class MemberStep:
    """One membership call: ``add`` (start the spare, which joins) or ``remove``."""

    action: str
    node: int


def majority_running(voters: Collection[int], running: Collection[int]) -> bool:
    """Whether a majority of `voters` is among `running`."""
    return len(set(voters) & set(running)) > len(voters) // 2


def _can_add(state: MemberState) -> bool:
    free = [slot for slot in state.slots if slot not in state.voters | state.learners]
    if not free or len(state.voters) + 1 > state.voters_max:
        return False
    # The new node runs (it is starting) and counts once it is promoted.
    return majority_running(state.voters | {free[0]}, state.running | {free[0]})


def _can_remove(state: MemberState, node: int) -> bool:
    remaining = state.voters - {node}
    return (
        node in state.voters
        and len(remaining) >= state.voters_min
        and majority_running(remaining, state.running)
    )


def _pick(candidates: Collection[int], draw: int) -> int | None:
    ordered = sorted(candidates)
    return ordered[draw % len(ordered)] if ordered else None


def plan_member_change(
    action: str, state: MemberState, draw: int
) -> tuple[tuple[MemberStep, ...], str]:
    """The calls of a membership fault, and a note saying what changed from `action` and
    why ("" when it runs as planned). Pure.

    A leftover learner (an add that never finished) is removed first. ``add`` takes the
    free slot chosen by `draw`; ``remove`` a voter other than the leader; ``remove-leader``
    the leader; ``replace`` adds, then removes any voter. Every step keeps the voters within
    `state.voters_min`..`state.voters_max` and a majority of them running (`majority_running`,
    checked as the voters are after the step); where `action` cannot, it falls back (an add
    at the maximum becomes a remove, a remove at the minimum a replace) or the result is
    empty. Raises NemesisError for an unknown action.
    """
    if action not in MEMBER_ACTIONS:
        raise NemesisError(f"unknown membership action {action!r}")
    steps: list[MemberStep] = [MemberStep("remove", node) for node in sorted(state.learners)]
    notes: list[str] = [f"removing leftover learner {node}" for node in sorted(state.learners)]
    # A leftover learner is not re-added in the same fault: its old process still runs.
    free = [slot for slot in state.slots if slot not in state.voters | state.learners]
    state = dataclasses.replace(state, learners=frozenset())
    spare = _pick(free, draw)
    others = state.voters - {state.leader} if state.leader is not None else state.voters
    if action == "remove-leader" and state.leader is None:
        notes.append("no leader known: removing another voter")
        action = "remove"
    victim = {
        "remove": _pick(others, draw),
        "remove-leader": state.leader,
        "replace": _pick(state.voters, draw // 7),
        "add": _pick(others, draw),  # only if the add falls back to a removal
    }[action]
    add_ok = spare is not None and _can_add(dataclasses.replace(state, slots=(spare,)))
    if action in ("remove", "remove-leader") and victim is not None:
        if _can_remove(state, victim):
            return (*steps, MemberStep("remove", victim)), "; ".join(notes)
        notes.append(f"removing {victim} would break the bounds: replacing it")
        action = "replace"
    if action == "replace" and add_ok and spare is not None and victim is not None:
        grown = dataclasses.replace(
            state, voters=state.voters | {spare}, running=state.running | {spare}
        )
        if _can_remove(grown, victim):
            return (*steps, MemberStep("add", spare), MemberStep("remove", victim)), "; ".join(
                notes
            )
    if action in ("add", "replace") and add_ok and spare is not None:
        if action == "replace":
            notes.append("the removal would break the bounds: adding only")
        return (*steps, MemberStep("add", spare)), "; ".join(notes)
    if victim is not None and _can_remove(state, victim):
        notes.append(f"cannot add (size {len(state.voters)}, free slots {free}): removing")
        return (*steps, MemberStep("remove", victim)), "; ".join(notes)
    notes.append(
        f"skipped: no change keeps {state.voters_min}..{state.voters_max} voters with a "
        f"majority running (voters {sorted(state.voters)}, running {sorted(state.running)})"
    )
    return tuple(steps), "; ".join(notes)


def plan_transfer_target(
    target: str, voters: Collection[int], leader: int | None, draw: int
) -> int | None:
    """The voter a transfer fault names (None: let the leader pick the most caught up)."""
    if target == "any":
        return None
    return _pick([voter for voter in voters if voter != leader], draw)


@dataclass(frozen=True, slots=True)
class MemberCall:
    """How one membership call ended.

    Fields:
        outcome: ``ok``; ``refused`` (409: a conflict or another change in progress);
            ``unavailable`` (503, or no node reachable: nothing changed); ``unknown`` (504 or
            a lost answer: it may still apply); ``timeout`` (an add that did not finish in
            time); ``error`` (anything else, e.g. the spare did not start).
        status: the HTTP status (None: no answer).
        detail: the answer or what went wrong, for the log.
        duration_s: from the call to its outcome.
        leader: the leader afterwards, when the answer said.
    """

    outcome: str
    status: int | None
    detail: str
    duration_s: float
    leader: int | None = None


class FaultControls(Protocol):
    """What `run_schedule` needs from the cluster and the network."""

    def current_leader(self) -> int | None:
        """The leader as recently observed, or None."""
        ...

    def member_ids(self) -> tuple[int, ...]:
        """The members as the harness last saw them (cheap; no request)."""
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

    def membership(self) -> MemberState | None:
        """The membership the cluster reports now (None: nobody answered)."""
        ...

    def add_member(self, node_id: int) -> MemberCall:
        """Start spare `node_id` with ``--join`` and wait (bounded) until it is a voter."""
        ...

    def remove_member(self, node_id: int) -> MemberCall:
        """``DELETE /v1/members/{node_id}`` through a live member."""
        ...

    def transfer_leadership(self, to: int | None) -> MemberCall:
        """``POST /v1/leader/transfer`` through a live member."""
        ...

    def burst(self, node_id: int, duration_s: float) -> list[BurstWave]:
        """Flood `node_id` with waves of large writes for `duration_s`; the waves sent."""
        ...

    def retire(self, node_id: int) -> None:
        """Stop the process of a node whose removal committed."""
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
    its hold; return early, with the current fault healed, once `stop` is set. `node_ids`
    are the founding nodes; faults are aimed at `controls.member_ids()` of the moment.

    `log` receives ``{"type": "start"|"end", "f": kind, ...}`` per fault. A fault whose
    injection fails (a node that cannot be restarted, iptables refusing a rule) is logged
    with ``type: "error"`` and the run goes on: the final phase heals everything anyway.
    Membership faults log ``start``, one ``{"type": "member"}`` per step (the plan, each
    call and its outcome), and ``end``; a node whose removal committed is stopped at the
    end of the fault's hold (so it runs, removed, for a while: it must not disturb).
    """

    def elapsed_s() -> float:
        return (time.monotonic_ns() - origin_ns) / 1e9

    for fault in schedule:
        if stop.wait(max(0.0, fault.start_s - elapsed_s())):
            return
        members = controls.member_ids() or tuple(node_ids)
        resolved = resolve_fault(fault, controls.current_leader(), members)
        event: dict[str, Any] = {
            "f": fault.kind,
            "target": resolved.target or fault.target,
            "nodes": list(resolved.nodes),
            "cuts": [list(pair) for pair in cut_pairs(resolved.grudge)],
            "leader": resolved.leader,
            "hits_leader": resolved.hits_leader,
            "planned_s": fault.start_s,
        }
        retire: list[int] = []
        if fault.kind in ("member", "transfer", "burst"):
            log({"type": "start", **event})
            try:
                if fault.kind == "member":
                    retire = _change_membership(fault, controls, log)
                elif fault.kind == "transfer":
                    _transfer(fault, controls, log)
                else:
                    _burst(resolved, controls, log)
            except Exception as error:  # a harness bug or a dead cluster: report, go on
                log({"type": "error", **event, "detail": f"membership fault failed: {error!r}"})
        else:
            try:
                _inject(resolved, controls)
            except Exception as error:  # report it and carry on; the final heal repairs it
                log({"type": "error", **event, "detail": f"inject failed: {error}"})
                _heal_quietly(resolved, controls, log)
                continue
            log({"type": "start", **event})
        stop.wait(max(0.0, fault.start_s + fault.hold_s - elapsed_s()))
        _heal_quietly(resolved, controls, log)
        for node in retire:
            try:
                controls.retire(node)
                log({"type": "member", "action": "retire", "node": node, "outcome": "ok"})
            except Exception as error:  # the final phase stops it anyway
                log({"type": "error", "f": "member", "detail": f"retire {node}: {error!r}"})
        log({"type": "end", **event})
        if stop.is_set():
            return


def _call_event(action: str, node: int | None, call: MemberCall) -> dict[str, Any]:
    return {
        "type": "member",
        "action": action,
        "node": node,
        "outcome": call.outcome,
        "status": call.status,
        "detail": call.detail[:300],
        "duration_s": round(call.duration_s, 3),
        "leader_after": call.leader,
    }


def _change_membership(
    fault: Fault, controls: FaultControls, log: Callable[[dict[str, Any]], None]
) -> list[int]:
    """Plan and run one membership fault; the nodes whose removal committed."""
    state = controls.membership()
    if state is None:
        log({"type": "member", "action": "plan", "planned": fault.target, "outcome": "unavailable",
             "detail": "no node answered GET /v1/members"})  # fmt: skip
        return []
    steps, note = plan_member_change(fault.target, state, fault.draw)
    log(
        {
            "type": "member",
            "action": "plan",
            "planned": fault.target,
            "steps": [[step.action, step.node] for step in steps],
            "note": note,
            "voters": sorted(state.voters),
            "learners": sorted(state.learners),
            "leader": state.leader,
        }
    )
    removed: list[int] = []
    for number, step in enumerate(steps):
        if step.action == "add":
            call = controls.add_member(step.node)
            log(_call_event("add", step.node, call))
            if call.outcome != "ok":
                break  # a replace removes only after its add finished (the bounds)
            continue
        if number > 0:
            # The voters changed since the plan: check the rules against the cluster now.
            now = controls.membership()
            if now is None or not (step.node in now.learners or _can_remove(now, step.node)):
                log({"type": "member", "action": "remove", "node": step.node,
                     "outcome": "skipped", "detail": "the bounds no longer allow it"})  # fmt: skip
                continue
            state = now
        call = controls.remove_member(step.node)
        event = _call_event("remove", step.node, call)
        event["was_leader"] = step.node == state.leader
        log(event)
        if call.outcome == "ok":
            removed.append(step.node)
    return removed


def _transfer(fault: Fault, controls: FaultControls, log: Callable[[dict[str, Any]], None]) -> None:
    members = controls.member_ids()
    leader = controls.current_leader()
    to = plan_transfer_target(fault.target, members, leader, fault.draw)
    call = controls.transfer_leadership(to)
    event = _call_event("transfer", to, call)
    event["leader_before"] = leader
    log(event)


def _burst(
    resolved: ResolvedFault, controls: FaultControls, log: Callable[[dict[str, Any]], None]
) -> None:
    for node in resolved.nodes:
        for wave in controls.burst(node, resolved.fault.hold_s):
            statuses = dict(sorted(wave.statuses().items()))
            log({"type": "burst", "wave": wave.wave, "node": node, "statuses": statuses,
                 "outcomes": dict(wave.outcomes)})  # fmt: skip


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
    if kind not in ("kill", "pause", "partition"):
        return  # nothing held to heal
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
