"""The state machine's fast paths (issue #22, fast restart) give exactly what the full checks
give: the same results, the same state, the same snapshot bytes and the same errors, for
well-formed and hostile commands and snapshots alike. Each case runs twice, once with the fast
path switched off (the reference), and the two runs must agree."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from kvraft import statemachine
from kvraft.leases import LeaseTimer
from kvraft.locks import LockWaiting
from kvraft.raft.core import RaftConfig, RaftCore, Role
from kvraft.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from kvraft.shell import NodeShell
from kvraft.statemachine import (
    KEY_BYTES_MAX,
    OP_PUT,
    VALUE_BYTES_MAX,
    ApplyResult,
    Compare,
    CompareOp,
    CompareTarget,
    KVStateMachine,
    PlainPut,
    SnapshotFormatError,
    TxnDelete,
    TxnPut,
    encode_auth_role_put,
    encode_delete,
    encode_fenced,
    encode_lease_checkpoint,
    encode_lease_grant,
    encode_lease_revoke,
    encode_lock_acquire,
    encode_lock_release,
    encode_put,
    encode_txn,
    plain_put_change,
)
from kvraft.watch import WatchHub


@contextlib.contextmanager
def _full_checks_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        patch.setattr(statemachine, "_is_plain_put", lambda key, value: False)
        patch.setattr(KVStateMachine, "_restore_plain_keys", lambda self, flat, fields, keys: 0)
        yield


def _raw(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


COMMANDS = [
    encode_put("a", b"1"),
    encode_put("a", b"2"),  # an overwrite: a previous revision
    encode_put("b", b""),  # an empty value is a value
    encode_put("k" * KEY_BYTES_MAX, b"x"),
    encode_put("é", b"non-ASCII key"),
    encode_put("é" * (KEY_BYTES_MAX // 2), b"at the limit in UTF-8 bytes"),
    encode_put("c", b"v" * VALUE_BYTES_MAX),
    encode_put("c", b"3", if_revision=4),  # a condition that fails
    encode_put("d", b"4", if_absent=True),
    encode_put("e", b"5", idempotency_key="id-1"),
    encode_put("e", b"6", idempotency_key="id-1"),  # a retry answered from the table
    encode_lease_grant(10),
    encode_put("f", b"7", lease_id=12),
    encode_put("f", b"8"),  # detaches f from its lease
    _raw(OP_PUT, "", b"v", None, False, None),  # empty key
    _raw(OP_PUT, "a\x00b", b"v", None, False, None),  # NUL
    _raw(OP_PUT, "k" * (KEY_BYTES_MAX + 1), b"v", None, False, None),
    _raw(OP_PUT, "é" * (KEY_BYTES_MAX // 2 + 1), b"v", None, False, None),  # too many bytes
    _raw(OP_PUT, "g", b"v" * (VALUE_BYTES_MAX + 1), None, False, None),
    _raw(OP_PUT, "g", "a str value", None, False, None),
    _raw(OP_PUT, b"bytes key", b"v", None, False, None),
    _raw(OP_PUT, "g", b"v", None, 0, None),  # if_absent must be a bool
    _raw(OP_PUT, "g", b"v", None, None, None),
    _raw(OP_PUT, "g", b"v", False, False, None),
    _raw(OP_PUT, "g", b"v", None, False, ""),
    _raw(True, "g", b"v", None, False, None),  # an operation must be an int, not a bool
    _raw(1.0, "g", b"v", None, False, None),
    _raw(OP_PUT, "g", b"v", None, False),
    _raw(OP_PUT, "g", b"v", None, False, None, None, None),
    b"\x96\x01",  # truncated
    b"\xc1",  # never valid msgpack
    _raw(OP_PUT, "h", b"v", None, False, None) + b"\x00",  # trailing bytes
    _raw(OP_PUT, "h", b"last", None, False, None),
]


def _apply_all() -> tuple[list[Any], bytes]:
    machine = KVStateMachine()
    results = [machine.apply(index, command) for index, command in enumerate(COMMANDS, 1)]
    return results, machine.snapshot()


def test_apply_fast_path_matches_the_full_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    results, snapshot = _apply_all()
    with _full_checks_only(monkeypatch):
        reference_results, reference_snapshot = _apply_all()
    assert snapshot == reference_snapshot
    assert len(results) == len(reference_results)
    for result, reference in zip(results, reference_results, strict=True):
        # compare=False fields too: watchers and waiters see them.
        assert result == reference
        assert result.changes == reference.changes
        assert result.prev_record == reference.prev_record
        assert result.remembered == reference.remembered
        assert result.locks_changed == reference.locks_changed
    assert any(result.ok for result in results)
    assert any(result.error is not None for result in results)


def _snapshot_with(records: list[Any], key_count: int | None = None) -> bytes:
    """A version-4 snapshot at index 100 whose one keys frame holds `records` (flat)."""
    header = [
        "kvraft-kv-snapshot",
        4,
        100,
        len(records) // 4 if key_count is None else key_count,
        0,
        0,
        0,
    ]
    return b"".join(
        [
            statemachine._encode_frame(statemachine._FRAME_HEADER, statemachine._pack(header)),
            statemachine._encode_frame(statemachine._FRAME_KEYS, statemachine._pack(records)),
            statemachine._encode_frame(statemachine._FRAME_END, b""),
        ]
    )


GOOD = ["a", b"1", 1, 0, "b", b"2", 2, 0, "c", b"", 100, 0]

SNAPSHOTS = [
    GOOD,
    ["é", b"1", 1, 0, "ë", b"2", 2, 0],
    ["a", b"1", 1, 0, "b", b"2", 2, 0, "c", b"3", 3, 0] * 1,
    ["b", b"1", 1, 0, "a", b"2", 2, 0],  # out of order
    ["a", b"1", 1, 0, "a", b"2", 2, 0],  # twice
    ["", b"1", 1, 0],
    ["a\x00", b"1", 1, 0],
    ["k" * (KEY_BYTES_MAX + 1), b"1", 1, 0],
    ["a", b"v" * (VALUE_BYTES_MAX + 1), 1, 0],
    ["a", "str", 1, 0],
    ["a", b"1", 0, 0],  # revision 0
    ["a", b"1", 101, 0],  # above the applied index
    ["a", b"1", True, 0],
    ["a", b"1", 1, False],
    ["a", b"1", 1, 7],  # a lease that is absent
    ["a", b"1", 1, -1],
    [b"a", b"1", 1, 0],
]


def _restore(data: bytes) -> bytes | str:
    try:
        return KVStateMachine.restore_bytes(data).snapshot()
    except SnapshotFormatError as error:
        return f"SnapshotFormatError: {error}"


@pytest.mark.parametrize("records", SNAPSHOTS)
def test_restore_fast_path_matches_the_full_checks(
    monkeypatch: pytest.MonkeyPatch, records: list[Any]
) -> None:
    data = _snapshot_with(records)
    restored = _restore(data)
    with _full_checks_only(monkeypatch):
        reference = _restore(data)
    assert restored == reference


def test_restore_fast_path_restores_a_written_snapshot() -> None:
    machine = KVStateMachine()
    for index in range(1, 3001):
        machine.apply(index, encode_put(f"key/{index % 1000:04d}", f"value {index}".encode()))
    restored = KVStateMachine.restore(machine.snapshot_chunks(chunk_bytes=4096))
    assert restored.snapshot() == machine.snapshot()
    assert restored.list(prefix="key/", limit=5) == machine.list(prefix="key/", limit=5)


# --- Runs of plain puts nobody waits on (`apply_plain_puts`, the shell's batch path) --------


def _replay_commands() -> list[Any]:
    """A log mixing runs of plain puts with everything that is not one: puts with leases,
    conditions and idempotency keys, deletes, transactions, lease grants, checkpoints and
    revokes, lock operations, fenced writes, auth, entries without a command (None: a
    NOOP) and the hostile commands above. Lease and lock ids are log indexes: the grant
    at position 2 is lease 3, the acquire at position 8 is fencing token 9."""
    plain = [encode_put(f"p{number % 7}", f"v{number}".encode()) for number in range(12)]
    return [
        encode_put("a", b"1"),
        encode_put("b", b"2"),
        encode_lease_grant(10),  # lease 3
        encode_put("k1", b"leased", lease_id=3),
        encode_put("k2", b"leased", lease_id=3),
        encode_put("k1", b"plain again"),  # detaches k1 from lease 3
        None,
        encode_put("k3", b"leased", lease_id=3),
        encode_lock_acquire("lock", 3, "me"),  # fencing token 9
        encode_fenced("lock", 9, encode_put("f", b"fenced")),
        encode_fenced("lock", 8, encode_put("f", b"stale token")),
        *plain,
        encode_delete("a"),
        encode_delete("never there"),
        encode_txn(
            [Compare("b", CompareTarget.REVISION, CompareOp.EQUAL, 2)],
            [TxnPut("t", b"txn"), TxnDelete("b")],
        ),
        encode_put("c", b"if", if_revision=99),
        encode_put("p1", b"absent?", if_absent=True),
        encode_put("e", b"keyed", idempotency_key="id-1"),
        encode_put("e", b"retry", idempotency_key="id-1"),
        encode_lease_checkpoint([(3, 500)]),
        *plain,
        encode_lock_release("lock", 9),
        encode_lease_revoke(3, expired=True),  # deletes k2 and k3
        encode_lease_revoke(3),  # gone already
        encode_auth_role_put("reader", False, []),
        None,
        *COMMANDS,  # hostile and odd commands, plain puts among them
        *plain,
    ]


def _entries_of(commands: list[Any], first_index: int = 1) -> list[Entry]:
    return [
        Entry(1, index, EntryKind.NOOP)
        if command is None
        else Entry(1, index, EntryKind.NORMAL, command)
        for index, command in enumerate(commands, first_index)
    ]


def test_plain_puts_apply_to_the_state_and_changes_apply_gives() -> None:
    entries = _entries_of(_replay_commands())
    reference = KVStateMachine()
    reference_results = [
        reference.apply(entry.index, entry.data)
        if entry.kind == EntryKind.NORMAL
        else reference.mark_applied(entry.index)
        for entry in entries
    ]
    machine = KVStateMachine()
    fast_applied = 0
    position = 0
    while position < len(entries):
        puts: list[PlainPut] = []
        reached = machine.apply_plain_puts(entries, position, len(entries), puts)
        assert len(puts) == reached - position
        for put, reference_result in zip(puts, reference_results[position:reached], strict=True):
            # What a follower is told of a plain put is all its result would have said.
            assert reference_result == ApplyResult(index=put[0], ok=True, revision=put[0])
            assert reference_result.changes == (plain_put_change(put),)
            assert not reference_result.remembered and not reference_result.locks_changed
        fast_applied += len(puts)
        position = reached
        if position < len(entries):
            entry = entries[position]
            if entry.kind == EntryKind.NORMAL:
                assert machine.apply(entry.index, entry.data) == reference_results[position]
            else:
                machine.mark_applied(entry.index)
            position += 1
        assert machine.applied_index == entries[position - 1].index
    assert machine.snapshot() == reference.snapshot()
    assert fast_applied >= 40  # most plain puts of the log took the batch path


def test_apply_plain_puts_leaves_what_it_cannot_apply_to_apply() -> None:
    machine = KVStateMachine()
    machine.apply(5, encode_put("a", b"1"))
    puts: list[PlainPut] = []
    # Not above the applied index: `apply` raises ApplyOrderError for it, so it stops here.
    assert machine.apply_plain_puts(_entries_of([encode_put("b", b"2")], 5), 0, 1, puts) == 0
    assert machine.apply_plain_puts(_entries_of([encode_put("b", b"2")], 6), 0, 0, puts) == 0
    assert puts == []
    assert machine.applied_index == 5


def _replay_through_shell(
    commands: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    *,
    batch_path: bool,
    history_revisions_max: int,
    history_bytes_max: int,
    waited: int = 0,
) -> dict[str, Any]:
    """A node restarting on `commands` (all committed, `apply_batch_max` 5), as the daemon
    wires it: a watch hub, lock waiting and a lease timer follow its shell. With `waited`,
    it then leads and its last `waited` commands are its own proposals, applied in the
    same Readies as older entries nobody waits on. What every observer ended with."""
    with monkeypatch.context() as patch:
        patch.setattr(statemachine, "PLAIN_PUTS_AVAILABLE", batch_path)
        replayed = commands[: len(commands) - waited]
        core = RaftCore(
            RaftConfig(node_id=1, apply_batch_max=5),
            random.Random(0),
            hard_state=HardState(1, 1, 0 if waited else len(replayed)),
            snapshot=SnapshotMeta(configuration=Configuration(voters=frozenset({1}))),
            entries=_entries_of(replayed),
        )
        lease_timer = LeaseTimer(100, 10)
        shell = NodeShell(
            core,
            KVStateMachine(),
            restore=KVStateMachine.restore_bytes,
            snapshot_threshold_entries=1_000_000,
            lease_timer=lease_timer,
        )
        hub = WatchHub(
            0, history_revisions_max=history_revisions_max, history_bytes_max=history_bytes_max
        )
        hub.follow(shell)
        LockWaiting().follow(shell)
        answers: list[_Answer] = []
        if waited:
            # An election the one voter wins, and its proposals made as soon as it leads:
            # its first Readies apply the older entries, then its own.
            for _ in range(100):
                shell.tick()
                persist = shell.advance()
                if persist is not None:
                    shell.persisted(persist.token)
                if core.role == Role.LEADER:
                    break
            assert core.role == Role.LEADER
            assert machine_of(shell).applied_index < len(replayed)
            for command in commands[len(replayed) :]:
                answers.append(_Answer())
                shell.propose(command, answers[-1])
        _run_until_idle(shell)
        machine = machine_of(shell)
        assert machine.applied_index == core.log.commit_index >= len(commands)
        watcher = hub.watch(start_revision=hub.compact_revision + 1)
        history = []
        while True:
            taken = watcher.take()
            assert isinstance(taken, list)
            if not taken:
                break
            history += taken
        return {
            "snapshot": machine.snapshot(),
            "history": history,
            "compact_revision": hub.compact_revision,
            "applied_revision": hub.applied_revision,
            "history_bytes": hub.history_bytes,
            "lease_timer": dict(vars(lease_timer)),
            "answers": [answer.outcome for answer in answers],
        }


def machine_of(shell: NodeShell) -> KVStateMachine:
    machine = shell.state_machine
    assert isinstance(machine, KVStateMachine)
    return machine


class _Answer:
    """A proposal's `Answer`: its outcome, with the result's fields that equality skips."""

    def __init__(self) -> None:
        self.outcome: Any = "pending"

    def done(self) -> bool:
        return self.outcome != "pending"

    def set_result(self, result: ApplyResult) -> None:
        assert not self.done()
        self.outcome = (
            result,
            result.changes,
            result.prev_record,
            result.remembered,
            result.locks_changed,
        )

    def set_exception(self, exception: BaseException) -> None:
        assert not self.done()
        self.outcome = repr(exception)


def _run_until_idle(shell: NodeShell) -> None:
    for _ in range(10_000):
        if not shell.wants_advance:
            return
        persist = shell.advance()
        if persist is not None:
            shell.persisted(persist.token)
    raise AssertionError("the shell never ran out of work")


@pytest.mark.parametrize(
    ("history_revisions_max", "history_bytes_max"),
    [(1_000, 1 << 30), (7, 1 << 30), (1_000, 600), (3, 100), (1, 1)],
)
@pytest.mark.parametrize("waited", [0, 9])
def test_a_replay_through_the_batch_path_leaves_every_observer_as_one_by_one(
    monkeypatch: pytest.MonkeyPatch, history_revisions_max: int, history_bytes_max: int, waited: int
) -> None:
    commands = _replay_commands()
    runs = [
        _replay_through_shell(
            commands,
            monkeypatch,
            batch_path=batch_path,
            history_revisions_max=history_revisions_max,
            history_bytes_max=history_bytes_max,
            waited=waited,
        )
        for batch_path in (True, False)
    ]
    assert runs[0] == runs[1]
    if waited:
        assert all(outcome != "pending" for outcome in runs[0]["answers"])
