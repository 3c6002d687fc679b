"""Transactions, range deletes, counts and previous values in the state machine."""

from __future__ import annotations

import msgpack
import pytest

from kvraft.statemachine import (
    OP_TXN,
    TXN_BYTES_MAX,
    TXN_OPERATIONS_MAX,
    ApplyResult,
    Change,
    Compare,
    CompareOp,
    CompareTarget,
    DeletePrefixResult,
    DeleteResult,
    ErrorCode,
    GetResult,
    KVStateMachine,
    ListResult,
    PutResult,
    TxnDelete,
    TxnDeletePrefix,
    TxnGet,
    TxnList,
    TxnPut,
    encode_delete,
    encode_put,
    encode_txn,
)


def machine_with(*items: tuple[str, bytes]) -> KVStateMachine:
    machine = KVStateMachine()
    for index, (key, value) in enumerate(items, start=1):
        assert machine.apply(index, encode_put(key, value)).ok
    return machine


def revision_is(key: str, revision: int) -> Compare:
    return Compare(key, CompareTarget.REVISION, CompareOp.EQUAL, revision)


def test_a_transfer_applies_both_puts_at_one_revision_when_the_revisions_match() -> None:
    machine = machine_with(("a", b"10"), ("b", b"5"))
    command = encode_txn(
        [revision_is("a", 1), revision_is("b", 2)],
        [TxnPut("a", b"7"), TxnPut("b", b"8")],
        [TxnGet("a"), TxnGet("b")],
    )
    result = machine.apply(3, command)
    assert result.succeeded is True
    assert result.revision == 3
    assert result.results == (PutResult(3), PutResult(3))
    assert machine.get("a") == (b"7", 3)
    assert machine.get("b") == (b"8", 3)
    assert result.changes == (
        Change("put", "a", 3, 1, b"7"),
        Change("put", "b", 3, 2, b"8"),
    )


def test_a_failed_compare_runs_the_failure_branch_and_changes_nothing_else() -> None:
    machine = machine_with(("a", b"10"), ("b", b"5"))
    result = machine.apply(
        3,
        encode_txn(
            [revision_is("a", 99)],
            [TxnPut("a", b"0")],
            [TxnGet("a"), TxnGet("missing"), TxnList("", 10)],
        ),
    )
    assert result.ok and result.succeeded is False
    assert result.results == (
        GetResult("a", b"10", 1),
        GetResult("missing", None, 0),
        ListResult([("a", b"10", 1), ("b", b"5", 2)], None),
    )
    assert result.changes == ()
    assert machine.get("a") == (b"10", 1)


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (Compare("a", CompareTarget.VALUE, CompareOp.EQUAL, b"10"), True),
        (Compare("a", CompareTarget.VALUE, CompareOp.LESS, b"2"), True),  # bytes order
        (Compare("a", CompareTarget.VALUE, CompareOp.GREATER, b"2"), False),
        (Compare("a", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"10"), False),
        (Compare("missing", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"x"), False),
        (Compare("a", CompareTarget.REVISION, CompareOp.GREATER, 0), True),
        (Compare("a", CompareTarget.REVISION, CompareOp.LESS, 1), False),
        (Compare("missing", CompareTarget.REVISION, CompareOp.EQUAL, 0), True),
        (Compare("a", CompareTarget.EXISTS, CompareOp.EQUAL, True), True),
        (Compare("missing", CompareTarget.EXISTS, CompareOp.NOT_EQUAL, False), False),
    ],
)
def test_each_compare_target_and_operator(compare: Compare, holds: bool) -> None:
    machine = machine_with(("a", b"10"))
    result = machine.apply(2, encode_txn([compare], [TxnGet("a")], []))
    assert result.succeeded is holds


def test_delete_prefix_removes_only_the_range_and_reports_each_key_at_one_revision() -> None:
    machine = machine_with(("a/1", b"x"), ("a/2", b"y"), ("ab", b"z"), ("b", b"w"))
    result = machine.apply(5, encode_txn([], [TxnDeletePrefix("a/"), TxnDelete("b")], []))
    assert result.results == (DeletePrefixResult(2), DeleteResult(True))
    assert [(c.kind, c.key, c.revision) for c in result.changes] == [
        ("delete", "a/1", 5),
        ("delete", "a/2", 5),
        ("delete", "b", 5),
    ]
    assert machine.count("") == 1
    assert machine.get("ab") == (b"z", 3)


def test_count_counts_the_keys_under_a_prefix() -> None:
    machine = machine_with(("a/1", b"x"), ("a/2", b"y"), ("b", b"w"))
    assert (machine.count("a/"), machine.count(""), machine.count("c")) == (2, 3, 0)


def test_put_and_delete_tell_the_previous_value_and_revision() -> None:
    machine = machine_with(("a", b"1"))
    assert machine.apply(2, encode_put("a", b"2")).prev == (b"1", 1)
    assert machine.apply(3, encode_put("new", b"n")).prev is None
    assert machine.apply(4, encode_delete("a")).prev == (b"2", 2)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ([OP_TXN, [["a", 7, 0, 1]], [], [], None], ErrorCode.BAD_COMPARE),
        ([OP_TXN, [["a", 0, 9, 1]], [], [], None], ErrorCode.BAD_COMPARE),
        ([OP_TXN, [["a", 0, 0, "1"]], [], [], None], ErrorCode.BAD_COMPARE),
        ([OP_TXN, [["a", 2, 2, True]], [], [], None], ErrorCode.BAD_COMPARE),
        ([OP_TXN, [["a", 1, 0, 5]], [], [], None], ErrorCode.BAD_COMPARE),
        ([OP_TXN, [], [[9, "a"]], [], None], ErrorCode.BAD_OPERATION),
        ([OP_TXN, [], [[1, "a"]], [], None], ErrorCode.BAD_OPERATION),
        ([OP_TXN, [], [[1, "a", b"1"], [2, "a"]], [], None], ErrorCode.DUPLICATE_KEY),
        ([OP_TXN, [], [[3, "a"], [1, "ab", b"1"]], [], None], ErrorCode.DUPLICATE_KEY),
        ([OP_TXN, [], [[4, "a"]], [], "retry-me"], ErrorCode.BAD_IDEMPOTENCY_KEY),
        ([OP_TXN, [], [[4, "a"]] * (TXN_OPERATIONS_MAX + 1), [], None], ErrorCode.TXN_TOO_LARGE),
        (
            [OP_TXN, [], [[1, "a", b"x" * TXN_BYTES_MAX], [1, "b", b"x"]], [], None],
            ErrorCode.TXN_TOO_LARGE,
        ),
    ],
)
def test_a_malformed_transaction_in_the_log_is_rejected_and_changes_nothing(
    wire: list[object], code: ErrorCode
) -> None:
    machine = machine_with(("a", b"1"))
    result = machine.apply(2, msgpack.packb(wire, use_bin_type=True))
    assert (result.ok, result.error) == (False, code)
    assert machine.get("a") == (b"1", 1)


def test_a_keyed_transaction_retried_is_answered_from_the_table_even_after_a_snapshot() -> None:
    machine = machine_with(("a", b"1"), ("b", b"2"))
    command = encode_txn(
        [revision_is("a", 1)],
        [TxnPut("a", b"0"), TxnDelete("b"), TxnDeletePrefix("zz")],
        [],
        idempotency_key="transfer-1",
    )
    first = machine.apply(3, command)
    assert first.results == (PutResult(3), DeleteResult(True), DeletePrefixResult(0))
    restored = KVStateMachine.restore_bytes(machine.snapshot())
    for copy in (machine, restored):
        retry = copy.apply(4, command)
        assert retry == ApplyResult(
            index=3, ok=True, revision=3, succeeded=True, results=first.results
        )
        assert retry.changes == ()
        assert copy.get("a") == (b"0", 3)
    assert restored.snapshot() == machine.snapshot()
