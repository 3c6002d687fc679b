"""Tests for kvraft.linearizability: each test is one claim about the checker's verdicts."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable, Hashable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft import linearizability
from kvraft.linearizability import (
    CLOCK_READ_INTERVAL_STEPS,
    HISTORY_OPERATIONS_MAX,
    REPORT_WITNESS_LINES_MAX,
    SEARCH_CACHE_ENTRIES_MAX,
    CheckResult,
    HistoryError,
    Model,
    Operation,
    OperationTraits,
    RegisterModel,
    check_history,
    format_operation,
    history_from_events,
)

# --------------------------------------------------------------------------- helpers


def read(
    call: int,
    ret: int | None,
    output: object,
    *,
    key: str = "k",
    process: int = 0,
    status: str = "ok",
) -> Operation:
    return Operation(
        process=process, kind="read", key=key, call=call, ret=ret, output=output, status=status
    )


def write(
    call: int,
    ret: int | None,
    value: object,
    *,
    key: str = "k",
    process: int = 0,
    status: str = "ok",
) -> Operation:
    return Operation(
        process=process, kind="write", key=key, call=call, ret=ret, value=value, status=status
    )


def cas(
    call: int,
    ret: int | None,
    expected: object,
    value: object,
    output: object,
    *,
    key: str = "k",
    process: int = 0,
    status: str = "ok",
) -> Operation:
    return Operation(
        process=process,
        kind="cas",
        key=key,
        call=call,
        ret=ret,
        expected=expected,
        value=value,
        output=output,
        status=status,
    )


def delete(
    call: int, ret: int | None, *, key: str = "k", process: int = 0, status: str = "ok"
) -> Operation:
    return Operation(process=process, kind="delete", key=key, call=call, ret=ret, status=status)


def verdict(ops: Sequence[Operation], model: Model | None = None) -> str:
    return check_history(ops, model).verdict


def reference_linearizable(ops: Sequence[Operation]) -> bool:
    """Brute force straight from the definition, sharing no code with the checker.

    Any op may go next unless some ok op still pending returned before it was
    called; ok ops must all go, info ops may; a register per key.
    """
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        if op.status == "fail" or (op.status == "info" and op.kind == "read"):
            continue
        by_key.setdefault(op.key, []).append(op)
    for key_ops in by_key.values():
        candidates = sorted(key_ops, key=lambda op: op.status != "ok")
        ok_count = sum(op.status == "ok" for op in candidates)

        if not _reference_search(tuple(candidates), ok_count, frozenset(), None):
            return False
    return True


@functools.cache
def _reference_search(
    candidates: tuple[Operation, ...], ok_count: int, done: frozenset[int], value: object
) -> bool:
    # candidates: the ok ops (the first ok_count), then the info ops.
    if all(index in done for index in range(ok_count)):
        return True
    returns = [op.ret if op.ret is not None else 0 for op in candidates]
    for index, op in enumerate(candidates):
        if index in done:
            continue
        if any(other not in done and returns[other] < op.call for other in range(ok_count)):
            continue
        for legal, new_value in _reference_outcomes(value, op):
            if legal and _reference_search(candidates, ok_count, done | {index}, new_value):
                return True
    return False


def _reference_outcomes(value: object, op: Operation) -> list[tuple[bool, object]]:
    if op.kind == "read":
        return [(op.output == value, value)]
    if op.kind == "write":
        return [(True, op.value)]
    if op.kind == "delete":
        return [(True, None)]
    if op.status == "info":
        return [(True, op.value if value == op.expected else value)]
    if op.output:
        return [(value == op.expected, op.value)]
    return [(value != op.expected, value)]


class OpaqueRegister:
    """A register that tells the checker nothing beyond init/step (all traits unknown)."""

    def __init__(self) -> None:
        self._inner = RegisterModel()

    def specialise(self, ops: Sequence[Operation]) -> Model:
        return self

    def init(self) -> Hashable:
        return self._inner.init()

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        return self._inner.step(state, op)

    def traits(self, op: Operation) -> OperationTraits:
        return OperationTraits()


# --------------------------------------------------------------------------- basic verdicts


def test_sequential_history_is_linearizable() -> None:
    ops = [
        write(0, 1, "a"),
        read(2, 3, "a"),
        cas(4, 5, "a", "b", True),
        read(6, 7, "b"),
        cas(8, 9, "a", "c", False),
        delete(10, 11),
        read(12, 13, None),
    ]
    result = check_history(ops)
    assert result.verdict == "yes"
    assert result.per_key["k"].operation_count == len(ops)
    assert result.witness == ()


@pytest.mark.parametrize("seen", ["old", "new"])
def test_read_concurrent_with_write_may_see_either_value(seen: str) -> None:
    ops = [
        write(0, 1, "old", process=1),
        write(2, 10, "new", process=1),
        read(3, 9, seen, process=2),
        read(11, 12, "new", process=2),
    ]
    assert verdict(ops) == "yes"


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    stale = read(4, 5, "old", process=2)
    ops = [write(0, 1, "old", process=1), write(2, 3, "new", process=1), stale]
    result = check_history(ops)
    assert result.verdict == "no"
    assert result.key == "k"
    assert result.witness == tuple(ops)
    assert result.per_key["k"].stuck_operation == stale


def test_stale_read_witness_is_the_write_its_overwrite_and_the_read() -> None:
    ops = [write(10 * i, 10 * i + 5, i, process=1) for i in range(50)]
    ops += [read(10 * i + 6, 10 * i + 8, i, process=2) for i in range(50)]
    stale = read(1000, 1001, 7, process=3)
    result = check_history([*ops, stale])
    assert result.witness == (ops[7], ops[8], stale)
    assert reference_linearizable(result.witness) is False


def test_lost_acknowledged_write_is_not_linearizable() -> None:
    ops = [
        write(0, 1, "v1", process=1),
        write(2, 3, "v2", process=2),  # acknowledged, then never seen
        read(4, 5, "v1", process=3),
        read(6, 7, "v1", process=1),
    ]
    assert verdict(ops) == "no"


def test_cas_reporting_success_against_the_wrong_value_is_not_linearizable() -> None:
    ops = [write(0, 1, "a"), cas(2, 3, "b", "c", True), read(4, 5, "c")]
    assert verdict(ops) == "no"


def test_cas_reporting_failure_when_the_value_matched_is_not_linearizable() -> None:
    ops = [write(0, 1, "a"), cas(2, 3, "a", "c", False), read(4, 5, "a")]
    assert verdict(ops) == "no"


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    ops = [write(0, 1, "a"), read(2, 3, "ghost")]
    result = check_history(ops)
    assert result.verdict == "no"
    assert result.per_key["k"].stuck_operation == ops[1]


def test_read_of_absent_key_before_any_write_is_linearizable() -> None:
    assert verdict([read(0, 1, None), write(2, 3, "a"), read(4, 5, "a")]) == "yes"


def test_delete_makes_the_key_absent() -> None:
    assert verdict([write(0, 1, "a"), delete(2, 3), read(4, 5, None)]) == "yes"
    assert verdict([write(0, 1, "a"), delete(2, 3), read(4, 5, "a")]) == "no"


def test_equal_timestamps_count_as_overlapping() -> None:
    # The read is called at the instant the write returns: either order is allowed.
    assert verdict([write(0, 5, "a"), read(5, 6, None)]) == "yes"
    assert verdict([write(0, 5, "a"), read(6, 7, None)]) == "no"


def test_empty_history_is_linearizable() -> None:
    result = check_history([])
    assert result.verdict == "yes"
    assert dict(result.per_key) == {}


# --------------------------------------------------------------------------- outcome unknown


def test_info_write_may_land_long_after_it_was_called() -> None:
    ops = [
        write(0, 1, "a", process=1),
        write(2, None, "late", process=2, status="info"),
        read(10, 11, "a", process=1),
        read(20, 21, "a", process=1),
        read(1000, 1001, "late", process=3),
    ]
    assert verdict(ops) == "yes"


def test_info_write_that_never_lands_is_linearizable() -> None:
    ops = [
        write(0, 1, "a", process=1),
        write(2, None, "lost", process=2, status="info"),
        read(10, 11, "a", process=1),
        read(1000, 1001, "a", process=3),
    ]
    assert verdict(ops) == "yes"


def test_info_write_cannot_take_effect_before_it_was_called() -> None:
    ops = [
        write(0, 1, "a", process=1),
        read(2, 3, "early", process=1),
        write(5, None, "early", process=2, status="info"),
    ]
    assert verdict(ops) == "no"


def test_info_write_that_landed_cannot_be_undone() -> None:
    ops = [
        write(0, 1, "a", process=1),
        write(2, None, "b", process=2, status="info"),
        read(10, 11, "b", process=1),
        read(20, 21, "a", process=1),  # nothing wrote "a" again
    ]
    assert verdict(ops) == "no"


def test_info_cas_may_have_applied() -> None:
    ops = [
        write(0, 1, "a", process=1),
        cas(2, None, "a", "b", None, process=2, status="info"),
        read(10, 11, "b", process=1),
    ]
    assert verdict(ops) == "yes"


def test_info_cas_cannot_apply_against_a_different_value() -> None:
    ops = [
        write(0, 1, "x", process=1),
        cas(2, None, "a", "b", None, process=2, status="info"),
        read(10, 11, "b", process=1),
    ]
    assert verdict(ops) == "no"


def test_chain_of_info_ops_can_explain_a_read() -> None:
    # Only "w1 landed, then the cas applied on top of it" explains the read.
    ops = [
        write(0, 1, "a", process=1),
        write(2, None, "b", process=2, status="info"),
        cas(3, None, "b", "c", None, process=3, status="info"),
        read(10, 11, "c", process=1),
    ]
    assert verdict(ops) == "yes"
    assert verdict(ops, OpaqueRegister()) == "yes"


def test_info_read_is_ignored() -> None:
    ops = [write(0, 1, "a"), read(2, None, "nonsense", status="info"), read(3, 4, "a")]
    result = check_history(ops)
    assert result.verdict == "yes"
    assert result.per_key["k"].operation_count == 2


def test_failed_ops_are_ignored() -> None:
    ops = [
        write(0, 1, "a"),
        write(2, 3, "never", status="fail"),
        cas(4, 5, "a", "never", True, status="fail"),
        read(6, 7, "a"),
    ]
    result = check_history(ops)
    assert result.verdict == "yes"
    assert result.per_key["k"].operation_count == 2


def test_value_of_a_failed_write_cannot_be_read() -> None:
    ops = [write(0, 1, "a"), write(2, 3, "never", status="fail"), read(6, 7, "never")]
    assert verdict(ops) == "no"


# --------------------------------------------------------------------------- keys and results


def test_keys_are_checked_independently() -> None:
    # Interleaved on one key, "a" then "x" would make the read of "a" stale.
    good = [write(0, 1, "a", key="one"), write(2, 3, "x", key="two"), read(4, 5, "a", key="one")]
    assert verdict(good) == "yes"
    bad = [*good, write(6, 7, "b", key="two"), read(8, 9, "x", key="two")]
    result = check_history(bad)
    assert result.verdict == "no"
    assert result.key == "two"
    assert result.per_key["one"].verdict == "yes"
    assert result.per_key["two"].verdict == "no"
    assert all(op.key == "two" for op in result.witness)


def test_first_violating_key_in_sorted_order_is_reported() -> None:
    ops = [
        read(0, 1, "ghost", key="zebra"),
        read(0, 1, "ghost", key="apple"),
        read(0, 1, None, key="mango"),
    ]
    result = check_history(ops)
    assert result.key == "apple"
    assert list(result.per_key) == ["apple", "mango", "zebra"]


def test_witness_is_itself_not_linearizable_and_stops_near_the_violation() -> None:
    ops = [write(10 * i, 10 * i + 5, i, process=1) for i in range(100)]
    ops += [read(10 * i + 6, 10 * i + 8, i, process=2) for i in range(100)]
    stale = read(503, 509, 3, process=3)  # "3" was overwritten at 35, long before
    ops.append(stale)
    result = check_history(ops)
    assert result.verdict == "no"
    assert stale in result.witness
    assert verdict(result.witness) == "no"
    assert reference_linearizable(result.witness) is False
    # Nothing called after the violating read returned is needed to show it.
    assert all(op.call <= 509 for op in result.witness)
    # The reads that merely confirm the history were dropped.
    assert sum(op.kind == "read" for op in result.witness) == 1


def test_violation_found_by_search_has_a_small_sound_witness() -> None:
    ops = racing_violation_after(20)
    racing, reads = ops[-4:-2], ops[-2:]
    later = [write(500, 510, "z", process=1), read(520, 530, "z", process=2)]
    result = check_history([*ops, *later])
    assert result.verdict == "no"
    assert reference_linearizable(result.witness) is False
    # Neither the confirmed past nor anything after the violation is needed.
    assert set(result.witness) == {*racing, *reads}
    # Either read can be blamed: each one rules out the order the other needs.
    assert result.per_key["k"].stuck_operation in reads


def test_read_of_a_never_written_value_is_found_without_searching() -> None:
    # 30 concurrent writes: proving anything about them by search would take
    # far more steps than fit before the clock is read mid-search.
    ops = [write(0, 100, value, process=value) for value in range(30)]
    ghost = read(0, 100, "ghost", process=99)
    reads_allowed = 2  # budget start and key start; a mid-search read gives up

    def clock() -> float:
        nonlocal reads_allowed
        reads_allowed -= 1
        return 0.0 if reads_allowed >= 0 else 100.0

    result = check_history([*ops, ghost], time_budget_s=10.0, clock=clock)
    assert result.verdict == "no"
    assert result.witness == (ghost,)


def test_describe_names_the_key_and_the_op_that_could_not_take_effect() -> None:
    stale = read(4, 5, "old", process=2)
    result = check_history([write(0, 1, "old"), write(2, 3, "new"), stale])
    text = result.describe()
    assert "linearizable: no" in text
    assert "key 'k'" in text
    stuck_lines = [line for line in text.splitlines() if "cannot take effect in time" in line]
    assert stuck_lines == ["  " + format_operation(stale) + "  <- cannot take effect in time"]


def test_describe_shows_only_the_end_of_a_long_witness() -> None:
    # A chain of successful cas ops (each needed to explain the next), then two
    # concurrent writes whose values are read in the order 2, 1: impossible.
    chain_length = REPORT_WITNESS_LINES_MAX + 20
    ops = [write(0, 1, 0)]
    ops += [cas(10 * i, 10 * i + 5, i - 1, i, True) for i in range(1, chain_length)]
    end = 10 * chain_length
    ops += [write(end, end + 100, "x", process=1), write(end, end + 100, "y", process=2)]
    ops += [read(end + 110, end + 120, "y", process=3), read(end + 130, end + 140, "x", process=3)]
    result = check_history(ops)
    assert len(result.witness) > REPORT_WITNESS_LINES_MAX
    witness_lines = [line for line in result.describe().splitlines() if line.startswith("  [")]
    assert len(witness_lines) == REPORT_WITNESS_LINES_MAX
    assert "earlier ops not shown" in result.describe()


def test_format_operation_shows_unknown_return_for_info_ops() -> None:
    line = format_operation(write(7, None, "v", process=3, status="info"))
    assert line.startswith("[7, ?] p3 info write('k')")


# --------------------------------------------------------------------------- budget and limits


class StepClock:
    """A fake monotonic clock that advances by one second each time it is read."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return float(self.reads)


def test_exhausted_time_budget_gives_unknown_never_yes() -> None:
    ops = [write(0, 1, "a"), read(2, 3, "a")]
    result = check_history(ops, time_budget_s=0.5, clock=StepClock())
    assert result.verdict == "unknown"
    assert result.per_key["k"].verdict == "unknown"
    assert "budget" in result.per_key["k"].reason


def test_time_budget_that_runs_out_mid_search_gives_unknown() -> None:
    # Hard: 14 concurrent writes, then reads that see 5, 6, 5 with no write in
    # between; proving that impossible means trying many orders of the writes.
    ops = [write(0, 100, value, process=value) for value in range(14)]
    ops += [read(200, 201, 5, process=100), read(202, 203, 6, process=100)]
    ops.append(read(204, 205, 5, process=100))
    assert verdict(ops) == "no"
    reads_before_giving_up = 3  # budget start, key start, then mid-search
    clock_value = [0.0]
    clock_reads = [0]

    def clock() -> float:
        clock_reads[0] += 1
        if clock_reads[0] >= reads_before_giving_up:
            clock_value[0] = 100.0
        return clock_value[0]

    result = check_history(ops, time_budget_s=10.0, clock=clock)
    assert result.verdict == "unknown"
    assert clock_reads[0] >= reads_before_giving_up


def test_short_search_reads_the_clock_only_at_the_start() -> None:
    # Needs a search (concurrent writes seen in some order) but far fewer than
    # CLOCK_READ_INTERVAL_STEPS steps: only the budget start and the key start
    # read the clock.
    ops = [write(0, 100, value, process=value) for value in range(5)]
    ops += [read(110, 120, 3, process=10)]
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    assert check_history(ops, time_budget_s=10.0, clock=clock).verdict == "yes"
    assert reads == 2
    assert CLOCK_READ_INTERVAL_STEPS > 10


def test_generous_time_budget_still_decides() -> None:
    ops = [write(0, 1, "a"), read(2, 3, "a")]
    assert check_history(ops, time_budget_s=1e9, clock=StepClock()).verdict == "yes"


def test_search_cache_limit_edge() -> None:
    # The read of "a" needs the info write to land, after which the key can
    # never be absent again: the search's one state, the start, is a dead end.
    ops = [
        write(0, None, "a", status="info"),
        read(5, 6, "a", process=1),
        read(7, 8, None, process=1),
    ]
    assert check_history(ops, cache_entries_max=1).verdict == "no"
    limited = check_history(ops, cache_entries_max=0)
    assert limited.verdict == "unknown"
    assert "cache" in limited.per_key["k"].reason
    assert SEARCH_CACHE_ENTRIES_MAX >= 1_000_000


def racing_violation_after(prefix_length: int) -> list[Operation]:
    """A confirmed sequential prefix, then concurrent writes of x and y read as y, x."""
    ops = [write(10 * i, 10 * i + 5, i, process=1) for i in range(prefix_length)]
    ops += [read(10 * i + 6, 10 * i + 8, i, process=2) for i in range(prefix_length)]
    start = 10 * prefix_length
    ops += [write(start, start + 100, "x", process=1), write(start, start + 100, "y", process=2)]
    ops += [read(start + 110, start + 120, "y", process=3)]
    ops += [read(start + 130, start + 140, "x", process=3)]
    return ops


def info_value_seen_twice() -> list[Operation]:
    """An info write seen, overwritten, then seen again (it lands only once); more after."""
    return [
        write(0, None, "a", status="info"),
        read(5, 6, "a", process=1),
        write(7, 8, "b", process=2),
        read(9, 10, "a", process=1),
        write(20, 21, "c", process=2),
        read(22, 23, "c", process=1),
    ]


def test_witness_without_any_recheck_allowed_is_the_whole_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ops = info_value_seen_twice()
    monkeypatch.setattr(linearizability, "WITNESS_MINIMISE_CHECKS_MAX", 0)
    unshrunk = check_history(ops)
    assert unshrunk.verdict == "no"
    assert sorted(unshrunk.witness, key=repr) == sorted(ops, key=repr)
    monkeypatch.setattr(linearizability, "WITNESS_MINIMISE_CHECKS_MAX", 1)
    once = check_history(ops)
    assert once.witness == tuple(ops[:4])


def test_witness_without_any_step_allowance_is_the_whole_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ops = info_value_seen_twice()
    monkeypatch.setattr(linearizability, "WITNESS_MINIMISE_STEPS_MIN", 0)
    monkeypatch.setattr(linearizability, "WITNESS_MINIMISE_STEPS_FACTOR", 0)
    assert len(check_history(ops).witness) == len(ops)
    monkeypatch.setattr(linearizability, "WITNESS_MINIMISE_STEPS_MIN", 1)
    assert check_history(ops).witness == tuple(ops[:4])


def test_history_operations_limit_edge() -> None:
    ops = [write(i, i + 1, i) for i in range(3)]
    assert check_history(ops, operations_max=3).verdict == "yes"
    with pytest.raises(HistoryError, match="more than 2 operations"):
        check_history(ops, operations_max=2)
    assert HISTORY_OPERATIONS_MAX >= 100_000


def test_non_operation_in_history_is_rejected() -> None:
    with pytest.raises(HistoryError, match="expected an Operation"):
        check_history([{"kind": "read"}])  # type: ignore[list-item]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "increment"}, "unknown operation kind"),
        ({"status": "maybe"}, "unknown operation status"),
        ({"call": 5, "ret": 4}, "before it was called"),
        ({"ret": None}, "needs a return time"),
        ({"call": 1.5}, "call time must be an int"),
        ({"ret": "3"}, "return time must be an int"),
        ({"process": True}, "process must be an int"),
        ({"key": 7}, "key must be a str"),
        ({"value": ["unhashable"]}, "value must be hashable"),
        ({"kind": "cas", "output": "yes"}, "must report True or False"),
    ],
)
def test_malformed_operation_is_rejected(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"process": 0, "kind": "write", "key": "k", "call": 0, "ret": 1}
    with pytest.raises(HistoryError, match=message):
        Operation(**{**base, **fields})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- events


def event(
    process: object, kind: object, time: object, f: str = "write", **fields: object
) -> dict[str, object]:
    return {"process": process, "type": kind, "f": f, "key": "k", "time": time, **fields}


def test_history_from_events_pairs_each_invoke_with_the_next_completion() -> None:
    events = [
        event(1, "invoke", 0, value="a"),
        event(2, "invoke", 1, f="read"),
        event(1, "ok", 2),
        event(2, "ok", 3, f="read", output="a"),
        event(1, "invoke", 4, f="cas", expected="a", value="b"),
        event(1, "fail", 5, f="cas"),
    ]
    ops = history_from_events(events)
    assert ops == [
        write(0, 2, "a", process=1),
        read(1, 3, "a", process=2),
        cas(4, 5, "a", "b", None, process=1, status="fail"),
    ]


def test_invoke_without_completion_becomes_info() -> None:
    ops = history_from_events([event(1, "invoke", 0, value="a"), event(2, "invoke", 1, f="read")])
    assert [(op.status, op.ret) for op in ops] == [("info", None), ("info", None)]
    # and an info completion keeps the outcome unknown
    ops = history_from_events([event(1, "invoke", 0, value="a"), event(1, "info", 9)])
    assert ops[0].status == "info"
    assert check_history([*ops, read(100, 101, None, process=2)]).verdict == "yes"
    assert check_history([*ops, read(100, 101, "a", process=2)]).verdict == "yes"


def test_events_round_trip_through_the_checker() -> None:
    events = [
        event(1, "invoke", 0, value="a"),
        event(1, "ok", 1),
        event(2, "invoke", 2, f="read"),
        event(2, "ok", 3, f="read", output="stale"),
    ]
    assert check_history(history_from_events(events)).verdict == "no"


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([event(1, "ok", 0)], "never invoked"),
        ([event(1, "invoke", 0), event(1, "invoke", 1)], "invoked again"),
        ([["not", "an", "object"]], "expected an object"),
        ([{"type": "invoke", "time": 0}], "missing field 'process'"),
        ([event(1, "invoke", 0), event(1, "ok", 1, f="read")], "does not match"),
        ([event(1, "crash", 0)], "unknown event type"),
        ([event(1, ["invoke"], 0)], "unknown event type"),
        ([event(1, "invoke", "0")], "time must be an int"),
        ([event(1, "invoke", 0, f="increment"), event(1, "ok", 1, f="increment")], "kind"),
        ([event(1, "invoke", 5), event(1, "ok", 4)], "before it was called"),
        ([{"process": 1, "type": "invoke", "time": 0, "f": "read"}], "missing field 'key'"),
        ([event("p1", "invoke", 0)], "process must be an int"),
    ],
)
def test_malformed_events_are_rejected(events: list[object], message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        history_from_events(events)  # type: ignore[arg-type]


def test_history_from_events_operations_limit_edge() -> None:
    events = [event(p, "invoke", p) for p in range(3)]
    assert len(history_from_events(events, operations_max=3)) == 3
    with pytest.raises(HistoryError, match="more than 2 operations"):
        history_from_events(events, operations_max=2)


# --------------------------------------------------------------------------- generated histories


@dataclasses.dataclass
class PlannedOp:
    kind: str
    status: str
    lands: bool  # info only: whether it took effect
    before: int  # how long before its linearization point it was called
    after: int  # how long after its linearization point it returned
    value_choice: int
    process: int


planned_ops = st.builds(
    PlannedOp,
    kind=st.sampled_from(["read", "read", "write", "cas", "delete"]),
    status=st.sampled_from(["ok", "ok", "ok", "ok", "info", "fail"]),
    lands=st.booleans(),
    before=st.integers(0, 25),
    after=st.integers(0, 25),
    value_choice=st.integers(0, 3),
    process=st.integers(0, 4),
)


def execute(plan: Sequence[PlannedOp], key: str = "k") -> list[Operation]:
    """Run the planned ops on a register, in order, each at its own instant (10 apart)."""
    value: object = None
    ops: list[Operation] = []
    for position, planned in enumerate(plan):
        point = 10 * position + 100
        ok = planned.status == "ok"
        takes_effect = ok or (planned.status == "info" and planned.lands)
        new_value = f"v{position}"
        # Expect the current value half the time so both cas outcomes occur.
        expected = value if planned.value_choice < 2 else f"v{planned.value_choice}"
        output: object = None
        if planned.kind == "read":
            output = value if ok else None
        elif planned.kind == "cas":
            output = (value == expected) if ok else None
        ops.append(
            Operation(
                process=planned.process,
                kind=planned.kind,
                key=key,
                call=point - planned.before,
                ret=None if planned.status == "info" else point + planned.after,
                status=planned.status,
                value=new_value if planned.kind in ("write", "cas") else None,
                expected=expected if planned.kind == "cas" else None,
                output=output,
            )
        )
        if not takes_effect:
            continue
        if planned.kind == "write" or (planned.kind == "cas" and value == expected):
            value = new_value
        elif planned.kind == "delete":
            value = None
    return ops


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(planned_ops, max_size=40), seed=st.randoms(use_true_random=False))
def test_histories_of_a_real_register_are_linearizable(
    plan: list[PlannedOp], seed: random.Random
) -> None:
    ops = execute(plan)
    seed.shuffle(ops)  # the order of the input list carries no meaning
    assert verdict(ops) == "yes"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(planned_ops, max_size=20),
    after=st.lists(planned_ops, max_size=20),
    read_slack=st.tuples(st.integers(0, 25), st.integers(0, 25)),
)
def test_reading_a_never_written_value_makes_a_history_non_linearizable(
    before: list[PlannedOp], after: list[PlannedOp], read_slack: tuple[int, int]
) -> None:
    plan = [*before, PlannedOp("read", "ok", True, *read_slack, 0, 9), *after]
    ops = execute(plan)
    mutated = [
        dataclasses.replace(op, output="never-written") if op.process == 9 else op for op in ops
    ]
    assert verdict(ops) == "yes"
    result = check_history(mutated)
    assert result.verdict == "no"
    assert reference_linearizable(result.witness) is False


arbitrary_ops = st.builds(
    lambda kind, status, call, duration, value, expected, output, applied, process: Operation(
        process=process,
        kind=kind,
        key="k",
        call=call,
        ret=None if status == "info" and duration % 2 else call + duration,
        status=status,
        value=value,
        expected=expected,
        output=applied if kind == "cas" else output,
    ),
    kind=st.sampled_from(["read", "read", "write", "cas", "delete"]),
    status=st.sampled_from(["ok", "ok", "ok", "info", "fail"]),
    call=st.integers(0, 12),
    duration=st.integers(0, 8),
    value=st.sampled_from([1, 2, 3]),
    expected=st.sampled_from([None, 1, 2]),
    output=st.sampled_from([None, 1, 2, 3]),
    applied=st.booleans(),
    process=st.integers(0, 3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(arbitrary_ops, max_size=8))
def test_verdict_matches_brute_force_on_arbitrary_small_histories(ops: list[Operation]) -> None:
    expected = "yes" if reference_linearizable(ops) else "no"
    result = check_history(ops)
    assert result.verdict == expected
    # Without any traits the checker takes its generic paths; same answer.
    assert verdict(ops, OpaqueRegister()) == expected
    if expected == "no":
        assert reference_linearizable(result.witness) is False
        assert_loosened_subset(result.witness, ops)


def assert_loosened_subset(witness: Sequence[Operation], ops: Sequence[Operation]) -> None:
    """Every witness op is a distinct history op, at most loosened to info."""
    unused = list(ops)
    for op in witness:
        matches = [
            original
            for original in unused
            if original == op or dataclasses.replace(original, status="info", output=None) == op
        ]
        assert matches, f"{op} is not from the history"
        unused.remove(matches[0])


def test_brute_force_agrees_on_the_hand_written_claims() -> None:
    # Guards the reference itself: it must see the violations the tests above claim.
    assert reference_linearizable([write(0, 1, "a"), write(2, 3, "b"), read(4, 5, "a")]) is False
    assert reference_linearizable([write(0, 10, "a"), read(1, 2, None)]) is True
    info_write = write(2, None, "b", status="info")
    assert reference_linearizable([write(0, 1, "a"), info_write, read(3, 4, "a"), read(5, 6, "b")])


def generate_register_history(
    rng: random.Random, operation_count: int, key_count: int, processes_per_key: int
) -> list[Operation]:
    """A linearizable multi-key history with overlapping ops and a few unknown outcomes."""
    # (linearization point, key, call, return, process, status, lands if info)
    plans: list[tuple[int, str, int, int, int, str, bool]] = []
    clients = itertools.product(range(key_count), range(processes_per_key))
    for key_number, client in clients:
        process = key_number * processes_per_key + client
        clock = rng.randrange(50)
        for _ in range(operation_count // (key_count * processes_per_key)):
            call = clock
            ret = call + rng.randrange(1, 200)
            point = rng.randrange(call, ret + 1)
            roll = rng.random()
            status = "info" if roll < 0.02 else "fail" if roll < 0.03 else "ok"
            lands = rng.random() < 0.5
            plans.append((point, f"key-{key_number}", call, ret, process, status, lands))
            clock = ret + rng.randrange(1, 50)
    values: dict[str, object] = {}
    ops: list[Operation] = []
    for serial, (_, key, call, ret, process, status, lands) in enumerate(sorted(plans)):
        kind = rng.choice(["read", "read", "write", "cas", "delete"])
        current = values.get(key)
        ok = status == "ok"
        expected = current if rng.random() < 0.5 else serial - 1
        output: object = None
        if kind == "read":
            output = current if ok else None
        elif kind == "cas":
            output = (current == expected) if ok else None
        ops.append(
            Operation(
                process=process,
                kind=kind,
                key=key,
                call=call,
                ret=None if status == "info" else ret,
                status=status,
                value=serial if kind in ("write", "cas") else None,
                expected=expected if kind == "cas" else None,
                output=output,
            )
        )
        if not (ok or (status == "info" and lands)):
            continue
        if kind == "write" or (kind == "cas" and current == expected):
            values[key] = serial
        elif kind == "delete":
            values[key] = None
    return ops


def test_ten_thousand_operation_history_is_linearizable() -> None:
    ops = generate_register_history(random.Random(7), 10_000, key_count=10, processes_per_key=5)
    assert len(ops) == 10_000
    assert sum(op.status == "info" for op in ops) > 50
    result = check_history(ops)
    assert result.verdict == "yes"
    assert len(result.per_key) == 10


def test_long_single_key_history_needs_no_recursion() -> None:
    ops = [write(2 * i, 2 * i + 1, i) for i in range(5000)]
    ops += [read(2 * i + 1, 2 * i + 1, i, process=1) for i in range(5000)]
    assert verdict(ops) == "yes"


def test_violation_deep_in_a_generated_history_is_found() -> None:
    ops = generate_register_history(random.Random(11), 2000, key_count=2, processes_per_key=5)
    last_read = max(
        (op for op in ops if op.kind == "read" and op.status == "ok"), key=lambda op: op.call
    )
    mutated = [
        dataclasses.replace(op, output="never-written") if op is last_read else op for op in ops
    ]
    result = check_history(mutated)
    assert result.verdict == "no"
    assert result.key == last_read.key
    assert verdict(result.witness) == "no"


def _never_called() -> Callable[[], float]:
    def clock() -> float:
        raise AssertionError("the clock must not be read without a budget")

    return clock


def test_no_budget_never_reads_the_clock() -> None:
    ops = [write(0, 1, "a"), read(2, 3, "b")]
    assert check_history(ops, clock=_never_called()).verdict == "no"


def test_check_result_is_a_value() -> None:
    result = check_history([write(0, 1, "a")])
    assert isinstance(result, CheckResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.verdict = "no"  # type: ignore[misc]
