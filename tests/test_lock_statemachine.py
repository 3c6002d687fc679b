"""Locks, fencing and lease checkpoints in kvraft.statemachine (#19)."""

from __future__ import annotations

from typing import Any

import pytest

from kvraft.statemachine import (
    LEASE_CHECKPOINT_LEASES_MAX,
    LOCK_VALUE_BYTES_MAX,
    CommandError,
    ErrorCode,
    KVStateMachine,
    LockWaiter,
    SnapshotFormatError,
    TxnPut,
    encode_delete,
    encode_fenced,
    encode_lease_checkpoint,
    encode_lease_grant,
    encode_lease_revoke,
    encode_lock_acquire,
    encode_lock_release,
    encode_put,
    encode_txn,
)
from tests.test_lease_statemachine import frame, pack

__all__: list[str] = []


def machine_with_two_leases() -> KVStateMachine:
    """Leases 1 and 2 (10 s each); nobody holds a lock yet."""
    machine = KVStateMachine()
    machine.apply(1, encode_lease_grant(10))
    machine.apply(2, encode_lease_grant(10))
    return machine


def test_the_first_acquire_holds_the_lock_with_its_index_as_fencing_token() -> None:
    machine = machine_with_two_leases()
    first = machine.apply(3, encode_lock_acquire("job", 1, "node-a"))
    second = machine.apply(4, encode_lock_acquire("job", 2, "node-b"))
    assert (first.ok, first.revision, first.locks_changed) == (True, 3, ("job",))
    assert (second.ok, second.revision) == (True, 4)
    assert machine.lock_holder("job") == LockWaiter(3, 1, "node-a")
    assert machine.lock_waiters("job") == [LockWaiter(3, 1, "node-a"), LockWaiter(4, 2, "node-b")]
    assert machine.locks_of(2) == ["job"]


def test_acquiring_again_with_the_same_lease_answers_the_same_place() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1))
    retry = machine.apply(4, encode_lock_acquire("job", 1))
    assert (retry.ok, retry.revision, retry.locks_changed) == (True, 3, ())
    assert machine.lock_waiters("job") == [LockWaiter(3, 1, "")]


def test_release_passes_the_lock_to_the_next_waiter_in_token_order() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1))
    machine.apply(4, encode_lock_acquire("job", 2))
    released = machine.apply(5, encode_lock_release("job", 3))
    assert (released.ok, released.locks_changed) == (True, ("job",))
    assert machine.lock_holder("job") == LockWaiter(4, 2, "")
    again = machine.apply(6, encode_lock_release("job", 3))
    assert (again.ok, again.error) == (False, ErrorCode.LOCK_NOT_HELD)
    machine.apply(7, encode_lock_release("job", 4))
    assert machine.lock_holder("job") is None
    assert machine.lock_names() == []


def test_a_waiter_gives_up_its_place_without_disturbing_the_holder() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1))
    machine.apply(4, encode_lock_acquire("job", 2))
    machine.apply(5, encode_lock_release("job", 4))
    assert machine.lock_waiters("job") == [LockWaiter(3, 1, "")]
    assert machine.locks_of(2) == []


def test_revoking_the_holders_lease_passes_every_lock_it_held() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("b-lock", 1))
    machine.apply(4, encode_lock_acquire("a-lock", 1))
    machine.apply(5, encode_lock_acquire("a-lock", 2))
    revoked = machine.apply(6, encode_lease_revoke(1, expired=True))
    assert revoked.locks_changed == ("a-lock", "b-lock")
    assert machine.lock_holder("a-lock") == LockWaiter(5, 2, "")
    assert machine.lock_holder("b-lock") is None
    assert machine.lock_names() == ["a-lock"]


def test_acquiring_with_a_gone_lease_is_refused() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lease_revoke(1))
    result = machine.apply(4, encode_lock_acquire("job", 1))
    assert (result.ok, result.error) == (False, ErrorCode.LEASE_NOT_FOUND)
    assert machine.lock_names() == []


def test_tokens_grow_for_every_new_holder_of_a_lock() -> None:
    machine = machine_with_two_leases()
    tokens = []
    index = 3
    for round_number in range(4):
        lease = 1 + round_number % 2
        token = machine.apply(index, encode_lock_acquire("job", lease)).revision
        tokens.append(token)
        machine.apply(index + 1, encode_lock_release("job", token))
        index += 2
    assert tokens == sorted(set(tokens))


def test_a_fenced_write_applies_only_while_its_token_holds_the_lock() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1))
    machine.apply(4, encode_lock_acquire("job", 2))
    first = machine.apply(5, encode_fenced("job", 3, encode_put("register", b"from-1")))
    assert first.ok and machine.get("register") == (b"from-1", 5)
    machine.apply(6, encode_lease_revoke(1, expired=True))  # holder 1 paused past its TTL
    late = machine.apply(7, encode_fenced("job", 3, encode_put("register", b"late-1")))
    assert (late.ok, late.error) == (False, ErrorCode.FENCE_FAILED)
    assert "token 4" in late.message
    assert machine.get("register") == (b"from-1", 5)
    second = machine.apply(8, encode_fenced("job", 4, encode_delete("register")))
    assert second.ok and second.deleted and machine.get("register") is None
    txn = encode_txn([], [TxnPut("register", b"txn")], [])
    assert machine.apply(9, encode_fenced("job", 4, txn)).succeeded is True
    refused = machine.apply(10, encode_fenced("nobody-holds", 4, txn))
    assert refused.error == ErrorCode.FENCE_FAILED
    assert machine.get("register") == (b"txn", 9)


def test_a_retried_fenced_write_gets_its_first_answer_after_the_lock_moved() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1))
    write = encode_fenced("job", 3, encode_put("register", b"x", idempotency_key="w1"))
    assert machine.apply(4, write).ok
    machine.apply(5, encode_lock_release("job", 3))
    retry = machine.apply(6, write)
    assert retry.ok and retry.index == 4 and retry.remembered


def test_only_writes_can_be_fenced_and_fences_do_not_nest() -> None:
    with pytest.raises(CommandError) as error:
        encode_fenced("job", 3, encode_lease_grant(10))
    assert error.value.code == ErrorCode.BAD_LOCK
    inner = encode_fenced("job", 3, encode_put("k", b"v"))
    with pytest.raises(CommandError):
        encode_fenced("job", 3, inner)
    machine = machine_with_two_leases()
    forged = pack([8, "job", 3, encode_lock_acquire("job", 1)])
    assert machine.apply(3, forged).error == ErrorCode.BAD_LOCK


@pytest.mark.parametrize(
    ("name", "token", "value"),
    [("", 3, ""), ("a\x00b", 3, ""), ("job", 0, ""), ("job", True, ""), ("job", 3, 5)],
)
def test_bad_lock_commands_are_refused_as_the_clients_mistake(
    name: Any, token: Any, value: Any
) -> None:
    with pytest.raises(CommandError) as error:
        encode_lock_acquire(name, token, value)
    assert error.value.code in (ErrorCode.BAD_LOCK, ErrorCode.BAD_LEASE)
    machine = machine_with_two_leases()
    assert machine.apply(3, pack([6, name, token, value])).error in (
        ErrorCode.BAD_LOCK,
        ErrorCode.BAD_LEASE,
    )
    assert machine.lock_names() == []


def test_a_lock_value_is_bounded() -> None:
    encode_lock_acquire("job", 1, "v" * LOCK_VALUE_BYTES_MAX)
    with pytest.raises(CommandError):
        encode_lock_acquire("job", 1, "v" * (LOCK_VALUE_BYTES_MAX + 1))


def test_checkpoints_record_and_clear_the_remaining_ttl() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lease_checkpoint([(1, 4_000), (2, 7_500), (99, 1)]))
    assert machine.lease_remaining_ms() == [(1, 10, 4_000), (2, 10, 7_500)]
    machine.apply(4, encode_lease_checkpoint([(1, 0)]))
    assert machine.lease_remaining_ms() == [(1, 10, 0), (2, 10, 7_500)]
    too_many = [(1, 1)] * (LEASE_CHECKPOINT_LEASES_MAX + 1)
    with pytest.raises(CommandError):
        encode_lease_checkpoint(too_many)


def test_locks_and_checkpoints_survive_a_snapshot_and_stay_identical() -> None:
    machine = machine_with_two_leases()
    machine.apply(3, encode_lock_acquire("job", 1, "node-a"))
    machine.apply(4, encode_lock_acquire("job", 2, "node-b"))
    machine.apply(5, encode_lock_acquire("elect", 2, "b"))
    machine.apply(6, encode_lease_checkpoint([(2, 1234)]))
    restored = KVStateMachine.restore_bytes(machine.snapshot())
    assert restored.snapshot() == machine.snapshot()
    assert restored.lock_waiters("job") == machine.lock_waiters("job")
    assert restored.lock_holder("elect") == LockWaiter(5, 2, "b")
    assert restored.lease_remaining_ms() == [(1, 10, 0), (2, 10, 1234)]
    # The restored machine goes on exactly as the original would.
    for one in (machine, restored):
        one.apply(7, encode_lease_revoke(1))
    assert restored.snapshot() == machine.snapshot()
    assert restored.lock_holder("job") == LockWaiter(4, 2, "node-b")


def crafted(locks: list[Any], *, waiter_count: int | None = None) -> bytes:
    """A version-4 snapshot at index 9 with leases 1 and 2 and the given LOCKS payload."""
    count = len(locks) // 4 if waiter_count is None else waiter_count
    header = ["kvraft-kv-snapshot", 4, 9, 0, 0, 2, count]
    parts = [frame(0, pack(header)), frame(4, pack([1, 10, 0, 2, 10, 0]))]
    if locks:
        parts.append(frame(5, pack(locks)))
    parts.append(frame(3, b""))
    return b"".join(parts)


def test_a_crafted_snapshot_with_consistent_locks_restores() -> None:
    machine = KVStateMachine.restore_bytes(crafted(["a", 3, 1, "", "a", 5, 2, "x", "b", 4, 1, ""]))
    assert machine.lock_waiters("a") == [LockWaiter(3, 1, ""), LockWaiter(5, 2, "x")]
    assert machine.locks_of(1) == ["a", "b"]


@pytest.mark.parametrize(
    "locks",
    [
        ["a", 5, 1, "", "a", 3, 2, ""],  # tokens out of order
        ["b", 3, 1, "", "a", 4, 2, ""],  # names out of order
        ["a", 3, 1, "", "a", 4, 1, ""],  # one lease twice in one lock
        ["a", 3, 7, ""],  # an absent lease
        ["a", 10, 1, ""],  # a token past the applied index
        ["a", 3, 1],  # a partial record
        ["", 3, 1, ""],  # a bad name
    ],
)
def test_a_snapshot_with_inconsistent_locks_is_refused(locks: list[Any]) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(crafted(locks))


def test_a_snapshot_whose_lock_count_disagrees_is_refused() -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(crafted(["a", 3, 1, ""], waiter_count=2))


def test_a_version_3_snapshot_still_restores_without_locks() -> None:
    header = ["kvraft-kv-snapshot", 3, 9, 0, 0, 1]
    data = frame(0, pack(header)) + frame(4, pack([1, 10])) + frame(3, b"")
    machine = KVStateMachine.restore_bytes(data)
    assert machine.lease_remaining_ms() == [(1, 10, 0)]
    assert machine.lock_names() == []
