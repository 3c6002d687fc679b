"""The simulator drives the shell's batch path for plain puts (`NodeShell._apply_all`), the
one live followers and restarts take, and its checkers catch that path going wrong."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from kvraft.raft.messages import Entry, EntryKind
from kvraft.sim.cluster import APPLY_PATHS, SimCluster
from kvraft.sim.runner import SimOptions, SimResult, run_seed
from kvraft.statemachine import OP_PUT, KVStateMachine, PlainPut, encode_put

TICKS = 300
SEEDS_MAX = 10
"""A broken batch path must be caught within this many seeds."""

_real_apply_plain_puts = KVStateMachine.apply_plain_puts


def _options(apply_path: str) -> SimOptions:
    return SimOptions(nodes=3, chaos_ticks=TICKS, apply_path=apply_path)


@pytest.fixture
def clusters(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SimCluster]]:
    """Every `SimCluster` built while the test runs, so a mutation can tell its nodes apart."""
    built: list[SimCluster] = []
    real_init = SimCluster.__init__

    def init(self: SimCluster, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(SimCluster, "__init__", init)
    yield built


def _is_node(cluster: SimCluster, node_id: int, machine: KVStateMachine) -> bool:
    # At call time: a restart or a snapshot from the leader gives the node a new machine.
    return cluster.nodes[node_id].shell.state_machine is machine


def test_plain_puts_on_followers_take_the_batch_path_and_every_one_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batched: list[int] = []

    def counting(
        self: KVStateMachine, entries: Any, start: int, stop: int, puts: list[PlainPut]
    ) -> int:
        before = len(puts)
        position = _real_apply_plain_puts(self, entries, start, stop, puts)
        batched.append(len(puts) - before)
        return position

    monkeypatch.setattr(KVStateMachine, "apply_plain_puts", counting)
    result = run_seed(1, _options("followers"))
    assert result.violation is None, result.violation
    assert sum(batched) > 0
    # The checks saw each of them (State Machine Safety, leases, the watchers' truth).
    assert result.applies["plain_puts"] == sum(batched)
    assert result.applies["plain_put_runs"] == sum(1 for count in batched if count)

    batched.clear()
    result = run_seed(1, _options("hook"))
    assert result.violation is None, result.violation
    assert batched == []  # an on_apply hook wants every result: no batch path
    assert result.applies["plain_puts"] == 0


def test_a_seed_runs_the_same_whichever_path_the_checks_see_applies_by() -> None:
    # Only the shell's path differs: the same state, so the same messages, answers and trace.
    runs: dict[str, tuple[list[str], SimResult]] = {}
    for apply_path in APPLY_PATHS:
        trace: list[str] = []
        runs[apply_path] = (trace, run_seed(3, _options(apply_path), trace=trace.append))
    (trace_one, one), (trace_two, two) = runs.values()
    assert trace_one == trace_two
    assert (one.operations, one.elections, one.messages, one.leases, one.violation) == (
        two.operations,
        two.elections,
        two.messages,
        two.leases,
        two.violation,
    )
    # Every entry reached the checks either way, one by one or in runs.
    assert sum(one.applies.values()) - one.applies["plain_put_runs"] == sum(two.applies.values())


def test_each_seed_draws_its_path_from_a_generator_of_its_own() -> None:
    paths = {
        run_seed(seed, SimOptions(nodes=3, chaos_ticks=50)).apply_path for seed in (1, 2, 3, 4)
    }
    assert paths == set(APPLY_PATHS)


def _first_violation(options: SimOptions) -> SimResult:
    for seed in range(1, SEEDS_MAX + 1):
        result = run_seed(seed, options)
        if result.violation is not None:
            return result
    raise AssertionError(f"the broken batch path was not caught within {SEEDS_MAX} seeds")


def _wrong_value(entry: Entry) -> Entry:
    """`entry`, if a plain put, with another value."""
    if entry.kind != EntryKind.NORMAL or not entry.data:
        return entry
    fields = msgpack.unpackb(entry.data)
    if not (
        isinstance(fields, list)
        and len(fields) == 6
        and fields[0] == OP_PUT
        and fields[3:] == [None, False, None]
    ):
        return entry
    return dataclasses.replace(entry, data=encode_put(fields[1], fields[2] + b"!"))


def test_a_batch_path_that_stores_a_wrong_value_on_one_node_is_caught(
    monkeypatch: pytest.MonkeyPatch, clusters: list[SimCluster]
) -> None:
    def broken(
        self: KVStateMachine, entries: list[Entry], start: int, stop: int, puts: list[PlainPut]
    ) -> int:
        if _is_node(clusters[-1], 2, self):
            entries = list(entries)
            entries[start:stop] = map(_wrong_value, entries[start:stop])
        return _real_apply_plain_puts(self, entries, start, stop, puts)

    monkeypatch.setattr(KVStateMachine, "apply_plain_puts", broken)
    result = _first_violation(_options("followers"))
    assert result.property_name == "watch agreement", result.violation


def test_a_batch_path_that_applies_a_put_without_telling_the_followers_is_caught(
    monkeypatch: pytest.MonkeyPatch, clusters: list[SimCluster]
) -> None:
    # The watch hub would miss that revision for good: the checks must see every entry.
    def broken(
        self: KVStateMachine, entries: list[Entry], start: int, stop: int, puts: list[PlainPut]
    ) -> int:
        before = len(puts)
        position = _real_apply_plain_puts(self, entries, start, stop, puts)
        if _is_node(clusters[-1], 2, self) and len(puts) > before:
            del puts[before]
        return position

    monkeypatch.setattr(KVStateMachine, "apply_plain_puts", broken)
    result = _first_violation(_options("followers"))
    assert result.property_name == "plain puts", result.violation


def test_a_node_whose_state_goes_wrong_without_telling_anyone_is_caught(
    monkeypatch: pytest.MonkeyPatch, clusters: list[SimCluster]
) -> None:
    # Node 2 stores a wrong value but reports the right change to every follower: no watcher
    # and no State Machine Safety check can see it, only the states compared at the end.
    def broken(
        self: KVStateMachine, entries: list[Entry], start: int, stop: int, puts: list[PlainPut]
    ) -> int:
        if not _is_node(clusters[-1], 2, self):
            return _real_apply_plain_puts(self, entries, start, stop, puts)
        before = len(puts)
        wrong = list(entries)
        wrong[start:stop] = map(_wrong_value, entries[start:stop])
        position = _real_apply_plain_puts(self, wrong, start, stop, puts)
        puts[before:] = [
            (index, key, prev, value[:-1]) for index, key, prev, value in puts[before:]
        ]
        return position

    monkeypatch.setattr(KVStateMachine, "apply_plain_puts", broken)
    found = [run_seed(seed, _options("followers")) for seed in range(1, SEEDS_MAX + 1)]
    caught = [result.property_name for result in found if result.violation is not None]
    assert set(caught) <= {"state agreement", "linearizability"}, caught
    # A read shows the wrong value now and then; the comparison of states nearly always.
    assert caught.count("state agreement") > SEEDS_MAX // 2, caught
