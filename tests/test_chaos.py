"""Tests of `kvraft chaos`: the pure parts (schedule, partition shapes, rules, outcome mapping,
checks, report) and two real runs: a faulty cluster that must pass, and a deliberately broken
read mode that the checker must catch."""

from __future__ import annotations

import dataclasses
import http.server
import itertools
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvraft.chaos import nemesis, report
from kvraft.chaos.burst import BurstWave, burst_digest, burst_value, check_bursts, waves_from_events
from kvraft.chaos.checks import (
    SetCheck,
    check_registers,
    check_set,
    register_operations,
)
from kvraft.chaos.cluster import (
    ChaosCluster,
    chaos_config,
    converged,
    loopback_block,
    node_host,
    parse_members_view,
    spare_specs,
)
from kvraft.chaos.history import (
    EventLog,
    HistoryFileError,
    HistoryRecorder,
    load_events,
)
from kvraft.chaos.nemesis import (
    FAULT_HOLD_S_MAX,
    FAULT_HOLD_S_MIN,
    QUIET_S_MIN,
    RUN_S_MAX,
    SPARE_SLOTS,
    VOTERS_MIN_FLOOR,
    WARMUP_S,
    Fault,
    MemberCall,
    MemberState,
    MemberStep,
    NemesisError,
    bridge_grudge,
    cut_pairs,
    groups_grudge,
    isolate_grudge,
    majority_running,
    parse_nemesis_kinds,
    plan_member_change,
    plan_schedule,
    resolve_fault,
    ring_grudge,
    run_schedule,
    sees_majority,
    voters_bounds,
)
from kvraft.chaos.netfilter import (
    CHAIN_NAME_CHARS_MAX,
    CHAIN_PREFIX,
    HOOK_DELETES_MAX,
    Firewall,
    FirewallError,
    chain_name,
    drop_rule_args,
    find_iptables,
    stale_chain_commands,
)
from kvraft.chaos.report import (
    LIST_SHOWN_MAX,
    TIMELINE_OPERATIONS_MAX,
    RunFacts,
    availability,
    build_report,
    leader_faults,
    operation_counts,
    render_text,
    render_timeline,
)
from kvraft.chaos.workload import (
    Endpoint,
    Workload,
    exchange,
    list_page_elements,
    read_outcome,
    write_outcome,
)
from kvraft.client import FailureKind, HttpResponse, TransportFailure, build_get, build_put
from kvraft.linearizability import CheckResult, Operation

ALL_KINDS = frozenset(nemesis.NEMESIS_KINDS)
PROCESS_AND_NETWORK_KINDS = frozenset({"kill", "pause", "partition"})
SECOND_NS = 1_000_000_000


# --------------------------------------------------------------------------- partition shapes


def links_between(grudge: nemesis.Grudge) -> set[frozenset[int]]:
    return {frozenset(pair) for pair in cut_pairs(grudge)}


def test_isolating_a_node_cuts_both_directions_of_each_of_its_links_only() -> None:
    grudge = isolate_grudge([1, 2, 3, 4, 5], 3)
    assert sorted(cut_pairs(grudge)) == sorted(
        [(3, other) for other in (1, 2, 4, 5)] + [(other, 3) for other in (1, 2, 4, 5)]
    )


def test_halves_cut_every_link_between_minority_and_majority() -> None:
    grudge = groups_grudge([[1, 2], [3, 4, 5]])
    assert links_between(grudge) == {frozenset({a, b}) for a in (1, 2) for b in (3, 4, 5)}
    assert not sees_majority(grudge, 1, [1, 2, 3, 4, 5])
    assert sees_majority(grudge, 3, [1, 2, 3, 4, 5])


def test_bridge_node_sees_everyone_while_the_halves_see_only_it() -> None:
    grudge = bridge_grudge([4, 1, 3, 5, 2])  # {4, 1} | 3 | {5, 2}
    assert links_between(grudge) == {frozenset({a, b}) for a in (4, 1) for b in (5, 2)}
    assert all(3 not in pair for pair in cut_pairs(grudge))
    assert all(sees_majority(grudge, node, [1, 2, 3, 4, 5]) for node in (1, 2, 3, 4, 5))


def test_majorities_ring_gives_each_node_a_different_majority() -> None:
    ids = [1, 2, 3, 4, 5]
    grudge = ring_grudge([1, 3, 5, 2, 4])
    drops = dict(grudge)
    seen = {node: frozenset(set(ids) - set(drops.get(node, ()))) for node in ids}
    assert all(len(view) == 3 and node in view for node, view in seen.items())
    assert len(set(seen.values())) == 5
    assert all(sees_majority(grudge, node, ids) for node in ids)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(NemesisError):
        ring_grudge([1, 2, 3])
    with pytest.raises(NemesisError):
        bridge_grudge([1, 2, 3, 4])
    with pytest.raises(NemesisError):
        groups_grudge([[1, 2], [2, 3]])
    with pytest.raises(NemesisError):
        isolate_grudge([1, 2, 3], 4)


@pytest.mark.parametrize("node_count", [3, 5])
def test_every_planned_partition_is_symmetric_and_leaves_a_majority_somewhere(
    node_count: int,
) -> None:
    ids = list(range(1, node_count + 1))
    shapes_seen = set()
    for seed in range(60):
        for fault in plan_schedule(seed, {"partition"}, 60, ids):
            resolved = resolve_fault(fault, leader=ids[seed % node_count], node_ids=ids)
            pairs = set(cut_pairs(resolved.grudge))
            assert pairs and all((b, a) in pairs for a, b in pairs)
            assert any(sees_majority(resolved.grudge, node, ids) for node in ids)
            shapes_seen.add(fault.target)
    assert shapes_seen == set(nemesis.shapes_for(node_count))
    assert ("majorities-ring" in shapes_seen) == (node_count == 5)


# --------------------------------------------------------------------------- the schedule


def test_schedule_is_reproducible_from_its_seed() -> None:
    first = plan_schedule(7, ALL_KINDS, 60, [1, 2, 3])
    assert first == plan_schedule(7, set(ALL_KINDS), 60, [1, 2, 3])
    assert first != plan_schedule(8, ALL_KINDS, 60, [1, 2, 3])


def test_faults_stay_inside_the_run_never_overlap_and_are_held_long_enough() -> None:
    for seed in range(30):
        faults = plan_schedule(seed, ALL_KINDS, 40, [1, 2, 3, 4, 5])
        assert faults[0].start_s == WARMUP_S
        for fault in faults:
            assert fault.start_s + fault.hold_s <= 40 + 1e-9
            assert fault.hold_s <= FAULT_HOLD_S_MAX
            if fault is not faults[-1]:
                assert fault.hold_s >= FAULT_HOLD_S_MIN - 1e-3
        for earlier, later in itertools.pairwise(faults):
            assert later.start_s >= earlier.start_s + earlier.hold_s + QUIET_S_MIN - 1e-3


def test_process_faults_hit_one_node_or_a_majority() -> None:
    for seed in range(30):
        for fault in plan_schedule(seed, {"kill", "pause"}, 60, [1, 2, 3, 4, 5]):
            assert len(fault.nodes) == (3 if fault.target == "majority" else 1)


def test_a_run_too_short_for_a_fault_gets_none() -> None:
    assert plan_schedule(1, ALL_KINDS, WARMUP_S + FAULT_HOLD_S_MIN - 0.01, [1, 2, 3]) == ()
    assert len(plan_schedule(1, ALL_KINDS, WARMUP_S + FAULT_HOLD_S_MIN, [1, 2, 3])) == 1
    assert plan_schedule(1, frozenset(), 60, [1, 2, 3]) == ()


def test_run_length_limit_edge() -> None:
    assert plan_schedule(1, {"kill"}, RUN_S_MAX, [1, 2, 3])
    with pytest.raises(NemesisError, match="must last"):
        plan_schedule(1, {"kill"}, RUN_S_MAX + 1, [1, 2, 3])
    with pytest.raises(NemesisError, match="must last"):
        plan_schedule(1, {"kill"}, 0, [1, 2, 3])


def test_bad_schedule_requests_are_refused() -> None:
    with pytest.raises(NemesisError, match="distinct nodes"):
        plan_schedule(1, {"kill"}, 60, [1, 2, 3, 4])
    with pytest.raises(NemesisError, match="unknown"):
        plan_schedule(1, {"flood"}, 60, [1, 2, 3])


def test_nemesis_list_parsing() -> None:
    assert parse_nemesis_kinds("pause, kill") == {"kill", "pause"}
    assert parse_nemesis_kinds("none") == frozenset()
    with pytest.raises(NemesisError, match="unknown nemesis"):
        parse_nemesis_kinds("kill,flood")
    assert parse_nemesis_kinds("member,transfer,kill") == {"member", "transfer", "kill"}
    with pytest.raises(NemesisError):
        parse_nemesis_kinds(" , ")


def test_faults_aimed_at_the_leader_hit_the_leader_known_when_they_fire() -> None:
    kill = Fault(2.0, 3.0, "kill", "leader", (1,))
    assert resolve_fault(kill, leader=3, node_ids=[1, 2, 3]).nodes == (3,)
    assert resolve_fault(kill, leader=3, node_ids=[1, 2, 3]).hits_leader
    unknown = resolve_fault(kill, leader=None, node_ids=[1, 2, 3])
    assert unknown.nodes == (1,) and not unknown.hits_leader
    isolate = Fault(2.0, 3.0, "partition", "isolate-leader", (2, 1, 3))
    resolved = resolve_fault(isolate, leader=3, node_ids=[1, 2, 3])
    assert links_between(resolved.grudge) == {frozenset({3, 1}), frozenset({3, 2})}
    assert resolved.hits_leader
    pause_one = Fault(2.0, 3.0, "pause", "one", (2,))
    assert not resolve_fault(pause_one, leader=3, node_ids=[1, 2, 3]).hits_leader


# --------------------------------------------------------------------------- membership faults


def member_state(
    voters: set[int],
    running: set[int] | None = None,
    learners: frozenset[int] = frozenset(),
    leader: int | None = 1,
    founding: int = 3,
) -> MemberState:
    low, high = voters_bounds(founding)
    slots = tuple(range(1, founding + SPARE_SLOTS + 1))
    alive = frozenset(voters if running is None else running)
    return MemberState(frozenset(voters), learners, alive, slots, leader, low, high)


def apply_steps(state: MemberState, steps: tuple[MemberStep, ...]) -> list[MemberState]:
    """The membership after each step (an added node runs)."""
    states = []
    for step in steps:
        if step.action == "add":
            state = dataclasses.replace(
                state, voters=state.voters | {step.node}, running=state.running | {step.node}
            )
        else:
            state = dataclasses.replace(
                state, voters=state.voters - {step.node}, learners=state.learners - {step.node}
            )
        states.append(state)
    return states


def test_voter_bounds_keep_three_voters_and_two_spares() -> None:
    assert voters_bounds(3) == (VOTERS_MIN_FLOOR, 3 + SPARE_SLOTS)
    assert voters_bounds(5) == (4, 5 + SPARE_SLOTS)


@pytest.mark.parametrize("founding", [3, 5])
def test_membership_plans_stay_in_bounds_with_a_majority_of_voters_running(founding: int) -> None:
    rng = random.Random(founding)
    low, high = voters_bounds(founding)
    slots = list(range(1, founding + SPARE_SLOTS + 1))
    for _ in range(400):
        voters = set(rng.sample(slots, rng.randint(low, high)))
        running = {node for node in voters if rng.random() < 0.8}
        leader = rng.choice([None, *sorted(voters)])
        state = member_state(voters, running, leader=leader, founding=founding)
        action = rng.choice(nemesis.MEMBER_ACTIONS)
        steps, _note = plan_member_change(action, state, rng.getrandbits(32))
        for after in apply_steps(state, steps):
            assert low <= len(after.voters) <= high
            assert majority_running(after.voters, after.running)
        added = [step.node for step in steps if step.action == "add"]
        assert all(node not in voters for node in added)  # only free slots are added


def test_membership_actions_do_what_they_say_when_the_bounds_allow() -> None:
    state = member_state({1, 2, 3, 4}, leader=2)
    (step,) = plan_member_change("remove-leader", state, 0)[0]
    assert step == MemberStep("remove", 2)
    (step,) = plan_member_change("remove", state, 5)[0]
    assert step.action == "remove" and step.node in {1, 3, 4}
    (step,) = plan_member_change("add", state, 0)[0]
    assert step == MemberStep("add", 5)
    add, remove = plan_member_change("replace", state, 0)[0]
    assert add == MemberStep("add", 5) and remove.action == "remove"


def test_membership_falls_back_at_the_size_limits_and_skips_without_a_majority() -> None:
    full = member_state({1, 2, 3, 4, 5})
    steps, note = plan_member_change("add", full, 0)
    assert [step.action for step in steps] == ["remove"] and "cannot add" in note
    smallest = member_state({1, 2, 3})
    steps, note = plan_member_change("remove", smallest, 0)
    assert [step.action for step in steps] == ["add", "remove"] and "replacing" in note
    # Four voters, two of them down: removing a running one leaves 1 of 3 running, and
    # adding one makes 3 of 5: only the add keeps a majority running.
    steps, _ = plan_member_change("remove", member_state({1, 2, 3, 4}, running={1, 2}), 0)
    assert [step.action for step in steps] == ["add"]
    steps, note = plan_member_change("add", member_state({1, 2, 3}, running={1}), 0)
    assert steps == () and "skipped" in note


def test_a_leftover_learner_is_removed_first_and_never_re_added_at_once() -> None:
    state = member_state({1, 2, 3}, learners=frozenset({4}))
    steps, note = plan_member_change("add", state, 0)
    assert steps == (MemberStep("remove", 4), MemberStep("add", 5))
    assert "leftover learner 4" in note


def test_unknown_membership_actions_are_refused() -> None:
    with pytest.raises(NemesisError, match="unknown membership action"):
        plan_member_change("shrink", member_state({1, 2, 3}), 0)


def test_faults_follow_the_members_of_the_moment() -> None:
    kill = Fault(2.0, 3.0, "kill", "one", (2,), (), draw=7)
    assert resolve_fault(kill, leader=1, node_ids=[1, 2, 3]).nodes == (2,)
    moved = resolve_fault(kill, leader=1, node_ids=[1, 3, 4])
    assert len(moved.nodes) == 1 and moved.nodes[0] in {1, 3, 4}
    majority = Fault(2.0, 3.0, "pause", "majority", (1, 2), (), draw=7)
    assert len(resolve_fault(majority, leader=None, node_ids=[1, 2, 3, 4, 5]).nodes) == 3
    bridge = Fault(2.0, 3.0, "partition", "bridge", (2, 1, 3), bridge_grudge([2, 1, 3]), 7)
    four = resolve_fault(bridge, leader=4, node_ids=[1, 2, 3, 4])
    assert four.target == "halves"  # a bridge needs an odd number of nodes
    cut = links_between(four.grudge)
    assert len(cut) == 4 and all(pair <= {1, 2, 3, 4} for pair in cut)
    ring = Fault(2.0, 3.0, "partition", "majorities-ring", (1, 2, 3, 4, 5), (), 7)
    assert resolve_fault(ring, None, [1, 2, 3, 5, 6]).target == "majorities-ring"


def test_schedule_runner_adds_then_removes_and_stops_the_removed_node_at_the_end() -> None:
    controls = RecordingControls(leader=1)
    controls.voters = {1, 2, 3}
    logged: list[dict[str, Any]] = []
    schedule = [Fault(0.0, 0.0, "member", "replace", (), (), draw=0)]
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    assert [call[0] for call in controls.calls] == ["add", "remove", "retire"]
    removed = controls.calls[1][1]
    assert controls.calls[2] == ("retire", removed)
    types = [(e["type"], e.get("action")) for e in logged]
    assert types[0] == ("start", None) and types[-1] == ("end", None)
    assert ("member", "plan") in types and ("member", "add") in types


def test_a_failed_add_stops_a_replace_before_its_removal() -> None:
    controls = RecordingControls(leader=1)
    controls.voters = {1, 2, 3}
    controls.add_outcome = "timeout"
    logged: list[dict[str, Any]] = []
    schedule = [Fault(0.0, 0.0, "member", "replace", (), (), draw=0)]
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    assert [call[0] for call in controls.calls] == ["add"]
    assert any(e.get("outcome") == "timeout" for e in logged)


def test_refused_membership_calls_are_nemesis_outcomes_not_errors() -> None:
    controls = RecordingControls(leader=1)
    logged: list[dict[str, Any]] = []
    schedule = [Fault(0.0, 0.0, "transfer", "named", (), (), draw=1)]
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    (call,) = [e for e in logged if e["type"] == "member"]
    assert call["outcome"] == "unavailable" and call["node"] in {2, 3}
    assert not [e for e in logged if e["type"] == "error"]


def test_members_view_is_read_from_untrusted_json() -> None:
    view = parse_members_view(
        {"leader_id": 4, "change_pending": False,
         "members": [{"id": 1, "voter": True}, {"id": 4, "voter": True}, {"id": 5}]}
    )  # fmt: skip
    assert view is not None
    assert view.voters == {1, 4} and view.learners == {5} and view.leader == 4
    bad_bodies: list[object] = [None, [], {"members": "x"}, {"members": [{"id": "1"}]}]
    for bad in [*bad_bodies, {"members": []}]:
        assert parse_members_view(bad) is None


def test_spare_slots_get_their_own_addresses_and_data_dirs(tmp_path: pathlib.Path) -> None:
    config = chaos_config(3, tmp_path, "127.9.9")
    spares = spare_specs(config, SPARE_SLOTS, "127.9.9")
    assert [spec.id for spec in spares] == [4, 5]
    assert [spec.raft_host for spec in spares] == ["127.9.9.4", "127.9.9.5"]
    assert all(spec.data_dir.parent == config.nodes[0].data_dir.parent for spec in spares)
    assert not {spec.data_dir for spec in spares} & {spec.data_dir for spec in config.nodes}


class RecordingControls:
    """A stand-in cluster for `run_schedule`: records what it was asked to do."""

    def __init__(self, leader: int | None = 1, fail_partition: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.leader = leader
        self.fail_partition = fail_partition

    def current_leader(self) -> int | None:
        return self.leader

    def kill(self, node_id: int) -> None:
        self.calls.append(("kill", node_id))

    def restart(self, node_id: int) -> None:
        self.calls.append(("restart", node_id))

    def pause(self, node_id: int) -> None:
        self.calls.append(("pause", node_id))

    def resume(self, node_id: int) -> None:
        self.calls.append(("resume", node_id))

    def partition(self, grudge: nemesis.Grudge) -> None:
        if self.fail_partition:
            raise FirewallError("iptables said no")
        self.calls.append(("partition", grudge))

    def heal(self) -> None:
        self.calls.append(("heal", None))

    # Membership: a cluster whose voters change as asked.
    voters: set[int]
    add_outcome = "ok"

    def member_ids(self) -> tuple[int, ...]:
        return tuple(sorted(getattr(self, "voters", {1, 2, 3})))

    def membership(self) -> MemberState | None:
        voters = frozenset(getattr(self, "voters", {1, 2, 3}))
        return MemberState(voters, frozenset(), voters, (1, 2, 3, 4, 5), self.leader, 3, 5)

    def add_member(self, node_id: int) -> MemberCall:
        self.calls.append(("add", node_id))
        if self.add_outcome == "ok":
            self.voters = set(self.member_ids()) | {node_id}
        return MemberCall(self.add_outcome, None, "", 1.0)

    def remove_member(self, node_id: int) -> MemberCall:
        self.calls.append(("remove", node_id))
        self.voters = set(self.member_ids()) - {node_id}
        return MemberCall("ok", 200, "", 0.1)

    def transfer_leadership(self, to: int | None) -> MemberCall:
        self.calls.append(("transfer", to))
        return MemberCall("unavailable", 503, "no quorum", 0.1)

    def retire(self, node_id: int) -> None:
        self.calls.append(("retire", node_id))

    def burst(self, node_id: int, duration_s: float) -> list[BurstWave]:
        self.calls.append(("burst", node_id))
        return [BurstWave(7, node_id, {"burst/0": "200", "burst/1": "503"})]


def test_schedule_runner_injects_and_heals_each_fault_in_order() -> None:
    grudge = isolate_grudge([1, 2, 3], 2)
    schedule = [
        Fault(0.0, 0.0, "kill", "leader", (3,)),
        Fault(0.0, 0.0, "pause", "majority", (1, 2)),
        Fault(0.0, 0.0, "partition", "isolate-one", (2, 1, 3), grudge),
    ]
    controls = RecordingControls(leader=1)
    logged: list[dict[str, Any]] = []
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    assert controls.calls == [
        ("kill", 1),
        ("restart", 1),
        ("pause", 1),
        ("pause", 2),
        ("resume", 1),
        ("resume", 2),
        ("partition", grudge),
        ("heal", None),
    ]
    assert [(e["type"], e["f"]) for e in logged] == [
        ("start", "kill"),
        ("end", "kill"),
        ("start", "pause"),
        ("end", "pause"),
        ("start", "partition"),
        ("end", "partition"),
    ]
    assert logged[0]["hits_leader"] and logged[0]["nodes"] == [1]


def test_a_burst_floods_the_node_it_resolves_to_and_logs_each_wave() -> None:
    schedule = [
        Fault(0.0, 0.0, "burst", "leader", (), (), 5),
        Fault(0.0, 0.0, "burst", "follower", (), (), 5),
    ]
    controls = RecordingControls(leader=2)
    logged: list[dict[str, Any]] = []
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    # The leader, then a follower picked by the draw; nothing is "healed" (resumed) after.
    assert controls.calls == [("burst", 2), ("burst", [1, 3][5 % 2])]
    waves = waves_from_events(logged)
    assert [(wave.wave, wave.node) for wave in waves] == [(7, 2), (7, 3)]
    assert waves[0].outcomes == {"burst/0": "200", "burst/1": "503"}
    assert [e["type"] for e in logged] == ["start", "burst", "end"] * 2


def test_bursts_are_planned_at_the_leader_or_a_follower() -> None:
    planned = plan_schedule(4, {"burst"}, 60, [1, 2, 3])
    assert planned and {fault.kind for fault in planned} == {"burst"}
    assert {fault.target for fault in planned} == set(nemesis.BURST_TARGETS)
    assert nemesis.describe_fault(planned[0]) == f"burst {planned[0].target}"


def wave(number: int, **outcomes: str) -> BurstWave:
    return BurstWave(number, 1, {f"burst/{key[1:]}": outcome for key, outcome in outcomes.items()})


def digest(key: str, number: int) -> str:
    return burst_digest(burst_value(key, number))


def test_a_burst_key_must_end_with_its_last_acknowledged_value_or_an_unknown_one() -> None:
    waves = [wave(0, k0="200", k1="504", k2="503"), wave(1, k0="504", k1="200", k2="503")]
    fine = {
        "burst/0": digest("burst/0", 0),  # acknowledged at 0; the unknown write of 1 lost
        "burst/1": digest("burst/1", 0),  # an unknown write applied after the ack of 1
        "burst/2": None,  # both writes shed
    }
    assert check_bursts(waves, fine) == []
    assert check_bursts(waves, {"burst/0": digest("burst/0", 1)}) == []  # the unknown one won
    lost = check_bursts(waves, {"burst/1": None})
    assert lost == [
        "burst/1 does not hold its last acknowledged value or an unknown-outcome write's"
    ]
    shed = check_bursts(waves, {"burst/2": digest("burst/2", 1)})
    assert shed == ["burst/2 holds a value whose write was answered 503 (shed)"]
    invented = check_bursts(waves, {"burst/3": digest("burst/3", 0)})
    assert invented == ["burst/3 does not hold no value or an unknown-outcome write's"]


def test_a_burst_answer_outside_200_503_504_is_a_violation() -> None:
    failures = check_bursts([wave(0, k0="500", k1="error")], {})
    assert failures == ["burst wave 0 on node 1 got answers ['500']"]


def test_schedule_runner_logs_a_fault_it_cannot_inject_and_goes_on() -> None:
    schedule = [
        Fault(0.0, 0.0, "partition", "isolate-one", (2, 1, 3), isolate_grudge([1, 2, 3], 2)),
        Fault(0.0, 0.0, "kill", "one", (2,)),
    ]
    controls = RecordingControls(fail_partition=True)
    logged: list[dict[str, Any]] = []
    run_schedule(schedule, controls, [1, 2, 3], logged.append, threading.Event(), 0)
    assert logged[0]["type"] == "error" and "iptables said no" in logged[0]["detail"]
    assert ("kill", 2) in controls.calls and ("restart", 2) in controls.calls


def test_schedule_runner_does_nothing_once_stopped() -> None:
    stop = threading.Event()
    stop.set()
    controls = RecordingControls()
    run_schedule([Fault(0.0, 0.0, "kill", "one", (2,))], controls, [1, 2, 3], print, stop, 0)
    assert controls.calls == []


# --------------------------------------------------------------------------- iptables rules


def test_drop_rules_name_one_direction_of_one_loopback_link() -> None:
    assert drop_rule_args("KVRAFT-CHAOS-7", "127.9.9.1", "127.9.9.2") == [
        "-A",
        "KVRAFT-CHAOS-7",
        "-s",
        "127.9.9.1/32",
        "-d",
        "127.9.9.2/32",
        "-j",
        "DROP",
    ]


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.2", "::1", "localhost", "127.0.0.256"])
def test_rules_outside_loopback_are_refused(host: str) -> None:
    with pytest.raises(FirewallError):
        drop_rule_args("KVRAFT-CHAOS-7", host, "127.0.0.2")


def test_chain_name_length_limit_edge() -> None:
    longest_pid = 10 ** (CHAIN_NAME_CHARS_MAX - len(CHAIN_PREFIX)) - 1
    assert len(chain_name(longest_pid)) == CHAIN_NAME_CHARS_MAX
    with pytest.raises(FirewallError):
        chain_name(longest_pid + 1)


def test_stale_chains_of_dead_runs_are_removed_jumps_first_and_live_ones_kept() -> None:
    listing = "\n".join(
        [
            "-P INPUT ACCEPT",
            "-N KVRAFT-CHAOS-100",
            "-N KVRAFT-CHAOS-200",
            "-N OTHER-CHAIN",
            "-A INPUT -s 127.0.0.0/8 -d 127.0.0.0/8 -j KVRAFT-CHAOS-100",
            "-A INPUT -s 127.0.0.0/8 -d 127.0.0.0/8 -j KVRAFT-CHAOS-200",
            "-A INPUT -j OTHER-CHAIN",
            "-A KVRAFT-CHAOS-100 -s 127.1.1.1/32 -d 127.1.1.2/32 -j DROP",
        ]
    )
    commands = stale_chain_commands(listing, alive=lambda pid: pid == 200)
    assert commands == [
        ["-D", "INPUT", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-j", "KVRAFT-CHAOS-100"],
        ["-F", "KVRAFT-CHAOS-100"],
        ["-X", "KVRAFT-CHAOS-100"],
    ]


def test_removing_the_hook_stops_after_its_limit() -> None:
    commands: list[list[str]] = []

    def always_succeeds(command: Any) -> subprocess.CompletedProcess[str]:
        commands.append(list(command))
        # -S of the chain fails: it is gone after -X.
        code = 1 if command[-2:] == ["-S", "KVRAFT-CHAOS-9"] else 0
        return subprocess.CompletedProcess(command, code, "", "")

    Firewall("iptables", "KVRAFT-CHAOS-9", run=always_succeeds).remove()
    deletes = [c for c in commands if "-D" in c]
    assert len(deletes) == HOOK_DELETES_MAX


def iptables_or_skip() -> str:
    executable, reason = find_iptables()
    if executable is None:
        pytest.skip(f"no usable iptables: {reason}")
    return executable


def connects(source: str, destination: tuple[str, int], timeout_s: float) -> bool:
    with socket.socket() as client:
        client.settimeout(timeout_s)
        client.bind((source, 0))
        try:
            client.connect(destination)
        except OSError:
            return False
        return True


def test_a_cut_drops_exactly_one_link_until_healed_and_removal_leaves_no_trace() -> None:
    executable = iptables_or_skip()
    block = loopback_block(os.getpid())
    a, b, c = node_host(block, 1), node_host(block, 2), node_host(block, 3)
    firewall = Firewall(executable, chain_name(os.getpid()))
    with socket.socket() as server:
        server.bind((b, 0))
        server.listen(16)
        target = (b, server.getsockname()[1])
        firewall.install()
        try:
            firewall.cut([(a, b)])
            assert firewall.rules() == [f"-A {firewall.chain} -s {a}/32 -d {b}/32 -j DROP"]
            assert not connects(a, target, timeout_s=0.3)
            assert connects(c, target, timeout_s=2.0)
            firewall.heal()
            assert firewall.rules() == []
            assert connects(a, target, timeout_s=2.0)
        finally:
            firewall.remove()
    assert not firewall.exists()
    assert firewall.chain not in firewall.listing()


def test_chains_left_by_a_dead_run_are_cleaned_up() -> None:
    executable = iptables_or_skip()
    dead_pid = 900_000_000 + os.getpid()  # a name only: no process has such a pid
    leftover = Firewall(executable, chain_name(dead_pid))
    leftover.install()
    try:
        removed = Firewall(executable, chain_name(os.getpid())).remove_stale_chains(
            alive=lambda pid: pid != dead_pid
        )
        assert removed == [leftover.chain]
        assert not leftover.exists()
        assert leftover.chain not in leftover.listing()
    finally:
        if leftover.exists():
            leftover.remove()


# --------------------------------------------------------------------------- cluster config


def test_node_addresses_are_private_to_the_run_and_never_the_default_source() -> None:
    for pid in (0, 1, 255, 256, 65535, 65536, 4_194_304, 12345):
        block = loopback_block(pid)
        octets = [int(part) for part in block.split(".")]
        assert octets[0] == 127 and 1 <= octets[1] <= 254 and 0 <= octets[2] <= 255
    assert loopback_block(1000) != loopback_block(1001)


def test_node_host_octet_edges() -> None:
    assert node_host("127.5.6", 1) == "127.5.6.1"
    assert node_host("127.5.6", 254) == "127.5.6.254"
    for bad in (0, 255):
        with pytest.raises(ValueError):
            node_host("127.5.6", bad)


def test_chaos_config_puts_each_node_on_its_own_address_with_fsync(tmp_path: pathlib.Path) -> None:
    ports = iter(range(20000, 20100))
    config = chaos_config(5, tmp_path, "127.5.6", port_for=lambda host: next(ports))
    assert [(n.raft_host, n.http_host) for n in config.nodes] == [
        (f"127.5.6.{i}", f"127.5.6.{i}") for i in range(1, 6)
    ]
    assert all(n.raft_source_host == n.raft_host for n in config.nodes)
    assert config.storage.fsync
    assert len({n.data_dir for n in config.nodes}) == 5


def test_chaos_config_never_gives_a_node_one_port_twice(tmp_path: pathlib.Path) -> None:
    # A port found free and closed can be found free again: each answer comes twice here.
    answers = iter(port for port in range(20000, 20100) for _ in range(2))
    config = chaos_config(3, tmp_path, "127.5.6", port_for=lambda host: next(answers))
    spares = spare_specs(config, 2, "127.5.6", port_for=lambda host: next(answers))
    for spec in (*config.nodes, *spares):
        assert spec.raft_port != spec.http_port, spec


def test_convergence_needs_every_node_on_one_leader_and_caught_up() -> None:
    def status(node: int, role: str, applied: int, leader: int = 1, term: int = 2) -> Any:
        return {
            "id": node,
            "role": role,
            "leader_id": leader,
            "term": term,
            "commit_index": 10,
            "applied_index": applied,
        }

    done = {1: status(1, "leader", 10), 2: status(2, "follower", 10), 3: status(3, "follower", 10)}
    assert converged(done)[0]
    assert not converged({**done, 3: None})[0]
    assert "applied" in converged({**done, 2: status(2, "follower", 9)})[1]
    assert "disagree" in converged({**done, 3: status(3, "follower", 10, term=3)})[1]
    assert not converged({**done, 1: status(1, "follower", 10)})[0]
    garbage = {**status(2, "follower", 10), "leader_id": [1], "term": {"x": 1}}
    assert not converged({**done, 2: garbage})[0]


def test_teardown_leaves_no_process_and_reports_no_unexpected_exit(tmp_path: pathlib.Path) -> None:
    config = chaos_config(3, tmp_path / "data", loopback_block(os.getpid()))
    config_path = tmp_path / "cluster.toml"
    from kvraft.config import render_config

    config_path.write_text(render_config(config))
    (tmp_path / "nodes").mkdir()
    cluster = ChaosCluster(config, config_path, tmp_path / "nodes")
    try:
        cluster.start_all()
        cluster.pause(2)
        cluster.kill(3)
        assert cluster.paused() == [2] and cluster.down() == [3]
        assert cluster.unexpected_exits() == []
    finally:
        codes = cluster.teardown()
    assert set(codes) == {1, 2, 3}
    assert cluster.live_pids() == []
    assert cluster.unexpected_exits() == []
    assert all(not pathlib.Path(f"/proc/{pid}").exists() for pid in cluster.pids_started)


# --------------------------------------------------------------------------- what answers mean


def response(status: int, body: bytes = b"", **headers: str) -> HttpResponse:
    return HttpResponse(status, {name.lower(): value for name, value in headers.items()}, body)


NOT_SENT = TransportFailure(FailureKind.NOT_SENT, "refused")
AFTER_SEND = TransportFailure(FailureKind.AFTER_SEND, "timed out")


@pytest.mark.parametrize(
    ("answer", "conditional", "expected"),
    [
        (response(200, b'{"revision": 5}'), False, ("ok", None)),
        (response(200, b'{"revision": 5}'), True, ("ok", True)),
        (response(412, b'{"error": "condition_failed", "revision": 4}'), True, ("ok", False)),
        (response(412, b"{}"), False, ("fail", None)),
        (response(503, b'{"error": "unavailable"}'), True, ("fail", None)),
        (response(400, b'{"error": "bad_key"}'), False, ("fail", None)),
        (response(504, b'{"error": "outcome_unknown"}'), False, ("info", None)),
        (response(500, b"oops"), True, ("info", None)),
        (NOT_SENT, False, ("fail", None)),
        (AFTER_SEND, True, ("info", None)),
    ],
)
def test_write_answers_map_to_the_outcomes_the_api_promises(
    answer: HttpResponse | TransportFailure, conditional: bool, expected: tuple[str, Any]
) -> None:
    outcome = write_outcome(answer, conditional=conditional)
    assert (outcome.type, outcome.output) == expected
    assert (outcome.error is None) == (outcome.type == "ok")


def test_read_answers_give_the_value_and_revision_or_fail() -> None:
    ok = read_outcome(response(200, b"v1-3", ETag='"17"'))
    assert (ok.type, ok.value, ok.revision) == ("ok", "v1-3", 17)
    absent = read_outcome(response(404, b'{"error": "not_found"}'))
    assert (absent.type, absent.value, absent.revision) == ("ok", None, 0)
    assert read_outcome(response(503, b'{"error": "unavailable"}')).type == "fail"
    assert read_outcome(response(200, b"v1-3")).type == "fail"  # no ETag: no revision
    assert read_outcome(AFTER_SEND).type == "fail"
    garbled = read_outcome(response(200, b"\xff\xfe", ETag='"3"'))
    assert garbled.type == "ok" and garbled.value is not None and "undecodable" in garbled.value


def test_list_pages_name_each_element_and_flag_corrupted_ones() -> None:
    body = json.dumps(
        {
            "items": [
                {"key": "set/e1-1", "revision": 3, "value_b64": "ZTEtMQ=="},  # e1-1
                {"key": "set/e1-2", "revision": 4, "value_b64": "eHh4"},  # xxx
            ],
            "continuation": "set/e1-2",
        }
    ).encode()
    page = list_page_elements(response(200, body))
    assert page == (["e1-1", "e1-2='xxx'"], "set/e1-2")
    assert isinstance(list_page_elements(response(200, b"[]")), str)
    assert isinstance(list_page_elements(NOT_SENT), str)


@pytest.fixture
def tiny_server() -> Iterator[tuple[str, int]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            size = int(self.path.split("?")[0].rsplit("/", 1)[-1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b"x" * size)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_answer_size_limit_edge(tiny_server: tuple[str, int]) -> None:
    endpoint = Endpoint(1, *tiny_server)
    request = build_get("64")
    exact = exchange(endpoint, request, body_bytes_max=64)
    assert isinstance(exact, HttpResponse) and len(exact.body) == 64
    over = exchange(endpoint, build_get("65"), body_bytes_max=64)
    assert isinstance(over, TransportFailure) and over.kind is FailureKind.AFTER_SEND


def test_a_refused_connection_was_never_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answer = exchange(Endpoint(1, "127.0.0.1", port), build_put("k", b"v"))
    assert isinstance(answer, TransportFailure) and answer.kind is FailureKind.NOT_SENT


def test_final_set_read_follows_pages_up_to_its_limit(tmp_path: pathlib.Path) -> None:
    def endless_pages(endpoint: Endpoint, request: Any, **_: Any) -> HttpResponse:
        body = {"items": [], "continuation": "set/more"}
        return response(200, json.dumps(body).encode())

    with EventLog(tmp_path / "h.jsonl") as log:
        workload = Workload(
            [Endpoint(1, "127.0.0.1", 1)],
            HistoryRecorder(log),
            seed=1,
            exchange_function=endless_pages,
        )
        assert not workload.final_set_read(lambda: False, pages_max=3)
    pages = [e for e in load_events(tmp_path / "h.jsonl") if e["type"] == "ok"]
    assert len(pages) == 3 and not any(page["last_page"] for page in pages)


def test_a_client_that_hits_a_bug_reports_it_and_goes_on_as_a_new_process(
    tmp_path: pathlib.Path,
) -> None:
    answers: Iterator[HttpResponse | Exception] = iter(
        [RuntimeError("harness bug"), response(200, b'{"revision": 1}')]
    )
    two_answered = threading.Event()

    def flaky(endpoint: Endpoint, request: Any, **_: Any) -> HttpResponse:
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            two_answered.set()
            return response(503, b'{"error": "unavailable"}')
        return answer

    with EventLog(tmp_path / "h.jsonl") as log:
        workload = Workload(
            [Endpoint(1, "127.0.0.1", 1)],
            HistoryRecorder(log),
            seed=1,
            keys=[],
            clients_per_key=0,
            set_clients=1,
            exchange_function=flaky,
        )
        workload.start()
        assert two_answered.wait(timeout=10)
        assert workload.stop() == []
    assert workload.errors == ["client 0: RuntimeError('harness bug')"]
    events = load_events(tmp_path / "h.jsonl")
    first, second = events[0]["process"], events[1]["process"]
    assert first != second  # the op left open stays unknown under the old process
    assert check_set(events).unknown == 1


# --------------------------------------------------------------------------- history files


def test_recorded_history_reads_back_into_the_checker(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "history.jsonl"
    with EventLog(path) as log:
        recorder = HistoryRecorder(log)
        recorder.invoke(0, "write", "r/0", value="v0-1", node=1)
        recorder.complete(0, "ok", "write", "r/0", node=1)
        recorder.invoke(1, "cas", "r/0", value="v1-1", expected="v0-1", node=2)
        recorder.invoke(2, "add", "set/e2-1", value="e2-1")
        recorder.complete(1, "ok", "cas", "r/0", output=True, node=2)
        recorder.complete(2, "info", "add", "set/e2-1", error="timed out")
    events = load_events(path)
    assert [e["type"] for e in events] == ["invoke", "ok", "invoke", "invoke", "ok", "info"]
    assert events[-1]["error"] == "timed out"
    ops = register_operations(events)
    assert [(op.kind, op.status, op.value, op.expected, op.output) for op in ops] == [
        ("write", "ok", "v0-1", None, None),
        ("cas", "ok", "v1-1", "v0-1", True),
    ]
    assert ops[0].call < ops[0].ret  # type: ignore[operator]


def test_event_line_limit_edge(tmp_path: pathlib.Path) -> None:
    line = json.dumps({"pad": ""})
    exact = line.replace('""', '"' + "x" * (100 - len(line)) + '"')
    assert len(exact) == 100
    path = tmp_path / "log.jsonl"
    path.write_text(exact + "\n")
    assert len(load_events(path, line_bytes_max=100)) == 1
    path.write_text(exact.replace('"x', '"xx') + "\n")
    with pytest.raises(HistoryFileError, match="line 1 is longer than 100 bytes"):
        load_events(path, line_bytes_max=100)


def test_event_count_limit_edge(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("{}\n" * 3)
    assert len(load_events(path, events_max=3)) == 3
    with pytest.raises(HistoryFileError, match="more than 2 events"):
        load_events(path, events_max=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"a": 1}\n{"a": \n', "line 2 is not JSON"),
        ("[" * 100_000 + "\n", "line 1 is not JSON"),
    ],
)
def test_malformed_logs_are_refused_naming_the_line(
    tmp_path: pathlib.Path, text: str, message: str
) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(HistoryFileError, match=message):
        load_events(path)


def test_a_missing_log_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(HistoryFileError, match="cannot read"):
        load_events(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------- checks


def op_events(
    process: int,
    f: str,
    key: str,
    call: int,
    ret: int | None,
    status: str = "ok",
    value: object = None,
    output: object = None,
    **extra: object,
) -> list[dict[str, Any]]:
    invoke = {"process": process, "type": "invoke", "f": f, "key": key, "value": value}
    invoke["time"] = call
    if ret is None:
        return [invoke]
    completion = {"process": process, "type": status, "f": f, "key": key, "output": output}
    return [invoke, {**completion, "time": ret, **extra}]


def set_history(outcomes: dict[str, str], present: list[str], complete: bool = True) -> list[Any]:
    events: list[Any] = []
    for index, (element, status) in enumerate(outcomes.items()):
        events += op_events(
            index, "add", f"set/{element}", 10 * index, 10 * index + 5, status, element
        )
    events += op_events(99, "list", "set/", 1000, 1001, output=present, last_page=complete)
    return events


def test_set_check_passes_when_every_acknowledged_element_survived() -> None:
    result = check_set(set_history({"a": "ok", "b": "fail", "c": "info", "d": "info"}, ["a", "c"]))
    assert result.passed
    assert (result.attempted, result.acknowledged, result.failed, result.unknown) == (4, 1, 1, 2)
    assert result.unknown_present == 1 and result.present == 2


def test_set_check_finds_lost_unexpected_and_failed_but_applied_elements() -> None:
    result = check_set(set_history({"a": "ok", "b": "ok", "c": "fail"}, ["b", "c", "zz"]))
    assert not result.passed
    assert result.lost == ("a",)
    assert result.unexpected == ("zz",)
    assert result.failed_present == ("c",)


def test_set_check_proves_nothing_without_a_complete_final_read() -> None:
    result = check_set(set_history({"a": "ok"}, ["a"], complete=False))
    assert not result.final_read_complete and not result.passed


def test_an_add_without_an_answer_counts_as_unknown() -> None:
    events = op_events(1, "add", "set/a", 1, None, value="a")
    events += op_events(9, "list", "set/", 5, 6, output=[], last_page=True)
    result = check_set(events)
    assert result.unknown == 1 and result.passed


@pytest.mark.parametrize(
    "events",
    [
        op_events(1, "add", "set/a", 1, 2, value="a")
        + op_events(2, "add", "set/a", 3, 4, value="a"),
        op_events(1, "add", "set/a", 1, 2, value=7),
        op_events(1, "list", "set/", 1, 2, output="a", last_page=True),
    ],
)
def test_malformed_set_histories_are_refused(events: list[Any]) -> None:
    from kvraft.linearizability import HistoryError

    with pytest.raises(HistoryError):
        check_set(events)


def test_register_check_ignores_set_events_and_catches_a_stale_read() -> None:
    events = (
        op_events(0, "write", "r/0", 1, 2, value="a")
        + op_events(3, "add", "set/x", 1, 9, value="x")
        + op_events(1, "write", "r/0", 3, 4, value="b")
        + op_events(2, "read", "r/0", 5, 6, output="a")
    )
    assert [op.kind for op in register_operations(events)] == ["write", "write", "read"]
    result = check_registers(events, time_budget_s=10)
    assert result.verdict == "no" and result.key == "r/0"
    good = events[:-2] + op_events(2, "read", "r/0", 5, 6, output="b")
    assert check_registers(good, time_budget_s=10).verdict == "yes"


# --------------------------------------------------------------------------- report numbers


def facts(**changes: Any) -> RunFacts:
    base: dict[str, Any] = {
        "nodes": 3,
        "duration_s": 4.0,
        "nemeses": ("kill",),
        "seed": 1,
        "report_dir": "/tmp/x",
        "broken_stale_reads": False,
        "partitions_skipped": None,
        "chain": None,
        "schedule": (),
        "origin_ns": 0,
        "workload_end_ns": 4 * SECOND_NS,
        "converged": True,
        "convergence_detail": "node 1 leads",
        "recovery_s": 0.5,
        "final_reads_complete": True,
    }
    base.update(changes)
    return RunFacts(**base)


def ok_write_at(process: int, seconds: float) -> list[dict[str, Any]]:
    moment = int(seconds * SECOND_NS)
    return op_events(process, "write", "r/0", moment - 1000, moment, value=f"v{process}-{moment}")


def test_availability_counts_ok_operations_per_second_of_the_workload() -> None:
    events = ok_write_at(0, 0.5) + ok_write_at(1, 0.7) + ok_write_at(2, 2.2)
    events += op_events(3, "write", "r/0", 100, int(1.5 * SECOND_NS), "fail", "x")
    events += ok_write_at(4, 9.0)  # after the workload: a final read, not counted
    assert availability(events, 0, 4 * SECOND_NS) == (2, 0, 1, 0)


def test_unavailability_after_a_leader_fault_is_the_longest_gap_until_the_next_fault() -> None:
    events = ok_write_at(0, 1.0) + ok_write_at(1, 2.5) + ok_write_at(2, 2.7) + ok_write_at(3, 5.5)
    nemesis_events = [
        {
            "type": "start",
            "time": 1 * SECOND_NS,
            "f": "kill",
            "target": "leader",
            "nodes": [2],
            "hits_leader": True,
        },
        {"type": "end", "time": 3 * SECOND_NS, "f": "kill"},
        {
            "type": "start",
            "time": 4 * SECOND_NS,
            "f": "pause",
            "target": "one",
            "nodes": [3],
            "hits_leader": False,
        },
    ]
    found = leader_faults(events, nemesis_events, 0, 6 * SECOND_NS)
    assert len(found) == 1
    assert found[0].start_s == 1.0 and found[0].description == "kill leader [2]"
    assert found[0].longest_gap_s == pytest.approx(1.5)  # 1.0 -> 2.5; then 2.7 -> 4.0 is 1.3


def test_operation_counts_split_cas_and_count_unanswered_calls_as_unknown() -> None:
    events = (
        op_events(0, "cas", "r/0", 1, 2, output=True)
        + op_events(1, "cas", "r/0", 1, 2, output=False)
        + op_events(2, "cas", "r/0", 1, 2, "fail")
        + op_events(3, "read", "r/0", 1, None)
    )
    counts = operation_counts(events)
    assert counts["cas"] == {"ok": 2, "fail": 1, "info": 0, "applied": 1, "not_applied": 1}
    assert counts["read"] == {"ok": 0, "fail": 0, "info": 1}


def passing_set() -> SetCheck:
    return check_set(set_history({"a": "ok"}, ["a"]))


def test_a_clean_run_passes_and_says_so() -> None:
    built = build_report(facts(), ok_write_at(0, 1.0), [], passing_set(), CheckResult("yes"))
    assert built.passed
    text = render_text(built)
    assert "linearizable: yes" in text and "lost acknowledged writes: 0" in text
    assert "verdict: PASS" in text


@pytest.mark.parametrize(
    ("changes", "verdict", "present", "expected_failure"),
    [
        ({}, "unknown", ["a"], "linearizable: unknown"),
        ({}, "yes", [], "acknowledged set elements lost"),
        ({"converged": False}, "yes", ["a"], "did not recover"),
        ({"unexpected_exits": ((2, 77, 2),)}, "yes", ["a"], "exited on its own with code 2"),
        ({"final_reads_complete": False}, "yes", ["a"], "register key"),
        ({"client_errors": ("client 3: KeyError()",)}, "yes", ["a"], "client 3: KeyError()"),
    ],
)
def test_every_failed_check_fails_the_run(
    changes: dict[str, Any], verdict: Any, present: list[str], expected_failure: str
) -> None:
    set_result = check_set(set_history({"a": "ok"}, present))
    built = build_report(facts(**changes), [], [], set_result, CheckResult(verdict))
    assert not built.passed
    assert any(expected_failure in failure for failure in built.failures)
    assert "verdict: FAIL" in render_text(built)


def test_a_violation_is_shown_in_workload_time_with_the_node_each_op_went_to() -> None:
    origin = 50 * SECOND_NS
    events = (
        op_events(0, "write", "r/0", origin + 1 * SECOND_NS, origin + 2 * SECOND_NS, value="a")
        + op_events(1, "write", "r/0", origin + 3 * SECOND_NS, origin + 4 * SECOND_NS, value="b")
        + op_events(2, "read", "r/0", origin + 5 * SECOND_NS, origin + 6 * SECOND_NS, output="a")
    )
    for event in events:
        event["node"] = 3 if event["process"] == 2 else 1
    result = check_registers(events, time_budget_s=10)
    built = build_report(
        facts(origin_ns=origin, workload_end_ns=origin + 7 * SECOND_NS),
        events,
        [],
        passing_set(),
        result,
    )
    text = render_text(built)
    assert "linearizable: no" in text
    assert "[5000, 6000] p2 ok read('r/0') -> 'a'  (node 3)   <- cannot take effect" in text
    assert "[3000, 4000] p1 ok write('r/0') 'b'  (node 1)" in text
    reason = text.split("key 'r/0': no: ")[1].splitlines()[0]
    assert "[5000, 6000]" in reason  # the checker's own reason, in workload time too
    assert built.witness_nodes[(2, origin + 5 * SECOND_NS)] == 3


def test_report_lists_lost_elements_up_to_its_limit() -> None:
    outcomes = {f"e{i:03d}": "ok" for i in range(LIST_SHOWN_MAX + 1)}
    built = build_report(facts(), [], [], check_set(set_history(outcomes, [])), CheckResult("yes"))
    text = render_text(built)
    assert "e019" in text and "e020" not in text and "1 more in report.json" in text
    exact = dict(list(outcomes.items())[:LIST_SHOWN_MAX])
    built = build_report(facts(), [], [], check_set(set_history(exact, [])), CheckResult("yes"))
    assert "e019" in render_text(built) and "more in report.json" not in render_text(built)


def witness_op(process: int, call_s: float, ret_s: float | None, **fields: Any) -> Operation:
    return Operation(
        process=process,
        key="r/0",
        call=int(call_s * SECOND_NS),
        ret=None if ret_s is None else int(ret_s * SECOND_NS),
        **fields,
    )


def test_timeline_draws_each_operation_and_escapes_what_clients_wrote() -> None:
    ops = [
        witness_op(1, 1.0, 1.1, kind="write", value="<script>alert(1)</script>"),
        witness_op(2, 1.2, 1.3, kind="write", value="b"),
        witness_op(3, 1.4, 1.5, kind="read", output="<script>alert(1)</script>"),
        witness_op(4, 1.05, None, kind="write", value="c", status="info"),
    ]
    page = render_timeline(ops, ops[2], [(1.15, 1.25, "kill leader [2]")], 0, "r/0")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('class="op ') == 4 and page.count('class="op stuck"') == 1
    assert "kill leader [2]" in page and "process 4" in page


def test_timeline_operation_limit_edge() -> None:
    ops = [
        witness_op(i % 7, i, i + 0.5, kind="write", value=f"v{i}")
        for i in range(TIMELINE_OPERATIONS_MAX + 1)
    ]
    assert render_timeline(ops[:-1], None, [], 0, "k").count('class="op ') == len(ops) - 1
    page = render_timeline(ops, None, [], 0, "k")
    assert page.count('class="op ') == TIMELINE_OPERATIONS_MAX
    assert "&#x27;v0&#x27;" not in page and f"&#x27;v{TIMELINE_OPERATIONS_MAX}&#x27;" in page


def test_log_tail_limit_edge(tmp_path: pathlib.Path) -> None:
    from kvraft.chaos.runner import _log_tail

    path = tmp_path / "node1.log"
    path.write_text("".join(f"line {i}\n" for i in range(report.LOG_TAIL_LINES + 1)))
    tail = _log_tail(path)
    assert len(tail) == report.LOG_TAIL_LINES and tail[0] == "line 1"


def test_log_tail_reads_at_most_its_byte_limit(tmp_path: pathlib.Path) -> None:
    from kvraft.chaos.runner import LOG_TAIL_BYTES_MAX, _log_tail

    path = tmp_path / "node1.log"
    path.write_text("a" + "b" * (LOG_TAIL_BYTES_MAX - 1))
    assert _log_tail(path) == ("a" + "b" * (LOG_TAIL_BYTES_MAX - 1),)
    path.write_text("a" + "b" * LOG_TAIL_BYTES_MAX)
    assert _log_tail(path) == ("b" * LOG_TAIL_BYTES_MAX,)


# --------------------------------------------------------------------------- the command


def invoke_chaos(*args: str) -> Any:
    from click.testing import CliRunner

    from kvraft.commands.chaos import chaos

    return CliRunner().invoke(chaos, list(args))


def test_command_refuses_bad_options_before_starting_anything(tmp_path: pathlib.Path) -> None:
    from kvraft.commands.chaos import CHECK_BUDGET_S_MAX, SEED_MAX

    report_dir = str(tmp_path / "never")
    for args, message in [
        (["--nemesis", "kill,members"], "unknown nemesis"),
        (["--nemesis", "flood"], "unknown nemesis"),
        (["--nodes", "4"], "4"),
        (["--seed", str(SEED_MAX + 1)], "--seed"),
        (["--time", str(RUN_S_MAX + 1)], "--time"),
        (["--check-budget", "0"], "--check-budget"),
        (["--check-budget", str(CHECK_BUDGET_S_MAX + 1)], "--check-budget"),
        (["--broken-watch", "sometimes"], "--broken-watch"),
    ]:
        result = invoke_chaos(*args, "--report", report_dir)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "never").exists()


def test_command_needs_a_fresh_report_directory(tmp_path: pathlib.Path) -> None:
    from kvraft.commands.chaos import CHECK_BUDGET_S_MAX, EXIT_HARNESS_ERROR, SEED_MAX

    (tmp_path / "old-run.txt").write_text("a previous run")
    result = invoke_chaos(
        "--seed",
        str(SEED_MAX),
        "--time",
        str(RUN_S_MAX),
        "--check-budget",
        str(CHECK_BUDGET_S_MAX),
        "--report",
        str(tmp_path),
    )
    assert result.exit_code == EXIT_HARNESS_ERROR
    assert "not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-run.txt"]


# --------------------------------------------------------------------------- real runs

RUN_TIMEOUT_S = 150.0


def run_chaos_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft.commands.chaos", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def processes_using(config_path: pathlib.Path) -> list[int]:
    """Pids of live processes whose command line names this config file's directory (the
    founding nodes' config, the spares' join configs, the data directories)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if str(config_path.parent).encode() + b"/" in cmdline:
            found.append(int(entry.name))
    return found


def iptables_listing() -> str | None:
    executable = shutil.which("iptables")
    if executable is None:
        return None
    done = subprocess.run([executable, "-w", "5", "-S"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def assert_nothing_left_behind(report_dir: pathlib.Path, chain: str | None) -> None:
    assert processes_using(report_dir / "cluster.toml") == []
    listing = iptables_listing()
    if chain is not None and listing is not None:
        assert chain not in listing


@pytest.mark.slow
def test_a_short_run_with_every_fault_is_linearizable_and_loses_no_write(
    tmp_path: pathlib.Path,
) -> None:
    seed = 3  # kills (the leader, a majority), pauses the leader, isolates it, bridges
    planned = plan_schedule(seed, PROCESS_AND_NETWORK_KINDS, 30, [1, 2, 3])
    assert {fault.kind for fault in planned} == PROCESS_AND_NETWORK_KINDS
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "30", "--seed", str(seed), "--report", str(report_dir)
    )
    assert "linearizable: yes" in done.stdout, done.stdout + done.stderr
    assert "lost acknowledged writes: 0" in done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["passed"] and summary["set"]["lost"] == []
    assert summary["set"]["acknowledged"] > 0 and summary["operations"]["cas"]["ok"] > 0
    assert summary["unexpected_exits"] == [] and summary["converged"]
    if summary["partitions_skipped"] is None:
        assert len(summary["faults"]) == len(planned)
    else:
        assert "partitions skipped" in done.stderr
    assert len(summary["elections"]) >= 2  # the leader was killed at least once
    assert summary["pids_started"]
    assert "watch: ok" in done.stdout
    watch = summary["watch"]
    assert watch["verdict"] == "ok" and watch["watchers"] == 3 and watch["events"] > 0
    assert watch["resumes"] >= 1  # a watched node was killed
    assert "bank: ok" in done.stdout
    bank = summary["bank"]
    assert bank["passed"] and bank["transfers"]["applied"] > 1 and bank["audits"] > 1
    assert "lock: ok" in done.stdout  # the lock workload made progress through every fault
    lock = summary["lock"]
    assert lock["passed"] and lock["held"] > 1 and lock["accepted"] > 1
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])


@pytest.mark.slow
def test_a_short_run_with_membership_changes_is_linearizable_and_loses_no_write(
    tmp_path: pathlib.Path,
) -> None:
    seed = 11  # replaces a voter (the leader) with a spare, kills, adds the other spare
    planned = plan_schedule(seed, {"kill", "partition", "member"}, 30, [1, 2, 3])
    assert "member" in {fault.kind for fault in planned}
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "30", "--nemesis", "kill,partition,member",
        "--seed", str(seed), "--report", str(report_dir),
    )  # fmt: skip
    assert "linearizable: yes" in done.stdout, done.stdout + done.stderr
    assert "lost acknowledged writes: 0" in done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["passed"] and summary["converged"] and summary["unexpected_exits"] == []
    calls = summary["membership"]["calls"]
    assert any(c["action"] == "add" and c["outcome"] == "ok" for c in calls), calls
    assert summary["membership"]["non_member_answers"] == []
    final = set(summary["membership"]["final_members"])
    assert final and final != {1, 2, 3}  # the membership really changed
    nemesis_events = load_events(report_dir / "nemesis.jsonl")
    assert any(e["type"] == "member" and e.get("action") == "plan" for e in nemesis_events)
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])


@pytest.mark.slow
def test_a_burst_of_large_writes_is_shed_and_leaves_every_acknowledged_one(
    tmp_path: pathlib.Path,
) -> None:
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "10", "--seed", "1", "--nemesis", "burst",
        "--report", str(report_dir),
    )  # fmt: skip
    assert "burst: ok" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["passed"] and summary["unexpected_exits"] == []
    assert summary["burst"]["waves"] and summary["burst"]["violations"] == []
    assert summary["linearizable"] == "yes" and summary["watch"]["verdict"] == "ok"
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])
    # A passing run's WALs and snapshots (a gigabyte after a long burst run) are removed;
    # its history, node logs and report stay.
    assert not (report_dir / "data").exists()
    assert (report_dir / "history.jsonl").stat().st_size > 0
    assert any((report_dir / "nodes").iterdir())


@pytest.mark.slow
def test_a_burst_client_that_calls_an_acknowledged_write_shed_is_caught(
    tmp_path: pathlib.Path,
) -> None:
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "6", "--seed", "1", "--nemesis", "burst", "--no-watch",
        "--broken-burst", "--report", str(report_dir),
    )  # fmt: skip
    assert "burst: violated" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1
    summary = json.loads((report_dir / "report.json").read_text())
    assert "answered 503 (shed)" in summary["burst"]["violations"][0]
    assert summary["linearizable"] == "yes"
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])
    assert any((report_dir / "data").iterdir())  # a failing run's data stays, to examine


@pytest.mark.slow
def test_stale_reads_passed_off_as_linearizable_are_caught(tmp_path: pathlib.Path) -> None:
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "12", "--seed", "5", "--nemesis", "partition",
        "--broken-stale-reads", "--report", str(report_dir),
    )  # fmt: skip
    assert "linearizable: no" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["witness"] and summary["witness_key"].startswith("r/")
    page = (report_dir / "timeline.html").read_text()
    assert summary["witness_key"] in page and 'class="op stuck"' in page
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])


@pytest.mark.slow
def test_watchers_that_skip_the_first_event_after_a_resume_are_caught(
    tmp_path: pathlib.Path,
) -> None:
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "12", "--seed", "1", "--nemesis", "kill",
        "--broken-watch", "skip-resume", "--report", str(report_dir),
    )  # fmt: skip
    assert "watch: violated" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1
    summary = json.loads((report_dir / "report.json").read_text())
    first = summary["watch"]["violations"][0]
    assert first["property"] == "resumable" and first["stream"] > 0, first
    assert summary["linearizable"] == "yes"
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])


@pytest.mark.slow
def test_an_interrupted_run_still_stops_every_node_and_removes_every_rule(
    tmp_path: pathlib.Path,
) -> None:
    report_dir = tmp_path / "run"
    seed = 2  # the first fault is a partition at 2 s, held for almost 5 s
    first = plan_schedule(seed, {"partition"}, 60, [1, 2, 3])[0]
    assert first.kind == "partition" and first.hold_s > 4
    command = [sys.executable, "-m", "kvraft.commands.chaos", "--time", "60", "--seed", str(seed)]
    command += ["--nemesis", "partition", "--report", str(report_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        nemesis_log = report_dir / "nemesis.jsonl"

        def fault_started() -> bool:
            text = nemesis_log.read_text() if nemesis_log.exists() else ""
            return '"type":"start"' in text or process.poll() is not None

        wait_until(fault_started, timeout_s=30)
        assert process.poll() is None
        partitioned = iptables_listing()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    chain = chain_name(process.pid)
    if partitioned is not None and "partitions skipped" not in stderr:
        assert f"-N {chain}" in partitioned  # the rules really were there
    assert_nothing_left_behind(report_dir, chain)


def wait_until(condition: Any, timeout_s: float) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s"
        time.sleep(0.05)  # polling interval, not synchronisation
