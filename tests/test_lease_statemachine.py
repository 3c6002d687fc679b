"""Leases in kvraft.statemachine: grant, attach, revoke, expire, and snapshots (#19)."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import pytest

from kvraft.statemachine import (
    LEASE_TTL_S_MAX,
    OP_LEASE_GRANT,
    CommandError,
    ErrorCode,
    KVStateMachine,
    SnapshotFormatError,
    TxnPut,
    encode_delete,
    encode_lease_grant,
    encode_lease_revoke,
    encode_put,
    encode_txn,
)

__all__: list[str] = []


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def frame(kind: int, payload: bytes) -> bytes:
    return pack([kind, zlib.crc32(bytes([kind]) + payload), payload])


def machine_with_lease() -> KVStateMachine:
    """Lease 1 (10 s) holding "a" and "b"; "c" has no lease."""
    machine = KVStateMachine()
    machine.apply(1, encode_lease_grant(10))
    machine.apply(2, encode_put("a", b"1", lease_id=1))
    machine.apply(3, encode_put("b", b"2", lease_id=1))
    machine.apply(4, encode_put("c", b"3"))
    return machine


def test_a_lease_id_is_its_grants_log_index_on_every_node() -> None:
    machines = [KVStateMachine(), KVStateMachine()]
    for machine in machines:
        machine.apply(1, encode_put("x", b""))
        result = machine.apply(2, encode_lease_grant(30))
        assert result.ok and result.revision == 2
    assert [m.leases() for m in machines] == [[(2, 30)], [(2, 30)]]
    assert machines[0].snapshot() == machines[1].snapshot()


def test_attached_keys_are_listed_by_their_lease() -> None:
    machine = machine_with_lease()
    assert machine.lease(1) == (10, ["a", "b"])
    assert machine.lease_of("a") == 1
    assert machine.lease_of("c") is None


def test_a_put_naming_an_unknown_lease_changes_nothing() -> None:
    machine = machine_with_lease()
    result = machine.apply(5, encode_put("d", b"", lease_id=99, idempotency_key="k"))
    assert not result.ok and result.error is ErrorCode.LEASE_NOT_FOUND
    assert machine.get("d") is None
    assert not machine.remembers("k")  # its retry, once the lease exists, may apply


def test_revoke_deletes_the_keys_in_one_revision_as_watchers_see_deletes() -> None:
    machine = machine_with_lease()
    result = machine.apply(5, encode_lease_revoke(1))
    assert result.ok and result.revision == 5
    assert [(c.kind, c.key, c.revision, c.prev_revision) for c in result.changes] == [
        ("delete", "a", 5, 2),
        ("delete", "b", 5, 3),
    ]
    assert machine.get("a") is None and machine.get("b") is None
    assert machine.get("c") == (b"3", 4)
    assert machine.lease(1) is None and machine.leases() == []


def test_expiry_is_a_revoke_and_a_second_one_finds_nothing() -> None:
    machine = machine_with_lease()
    assert machine.apply(5, encode_lease_revoke(1, expired=True)).ok
    again = machine.apply(6, encode_lease_revoke(1, expired=True))
    assert not again.ok and again.error is ErrorCode.LEASE_NOT_FOUND and not again.changes
    assert machine.apply(7, encode_put("a", b"", lease_id=1)).error is ErrorCode.LEASE_NOT_FOUND


def test_a_put_without_a_lease_detaches_the_key_as_in_etcd() -> None:
    machine = machine_with_lease()
    machine.apply(5, encode_put("a", b"kept"))
    assert machine.lease(1) == (10, ["b"])
    machine.apply(6, encode_lease_revoke(1))
    assert machine.get("a") == (b"kept", 5)


def test_a_key_moves_to_another_lease() -> None:
    machine = machine_with_lease()
    machine.apply(5, encode_lease_grant(20))
    machine.apply(6, encode_put("a", b"moved", lease_id=5))
    assert machine.lease(1) == (10, ["b"]) and machine.lease(5) == (20, ["a"])


def test_deleted_keys_leave_their_lease() -> None:
    machine = machine_with_lease()
    machine.apply(5, encode_delete("a"))
    machine.apply(6, encode_txn([], [TxnPut("b", b"txn put detaches")]))
    assert machine.lease(1) == (10, [])
    assert machine.apply(7, encode_lease_revoke(1)).changes == ()


@pytest.mark.parametrize("ttl_s", [0, -1, LEASE_TTL_S_MAX + 1, True, 1.5])
def test_a_ttl_out_of_bounds_is_refused(ttl_s: Any) -> None:
    with pytest.raises(CommandError) as raised:
        encode_lease_grant(ttl_s)
    assert raised.value.code is ErrorCode.BAD_LEASE
    machine = KVStateMachine()
    result = machine.apply(1, pack([OP_LEASE_GRANT, ttl_s]))
    assert not result.ok and machine.leases() == []


def test_leases_survive_a_snapshot_round_trip() -> None:
    machine = machine_with_lease()
    machine.apply(5, encode_lease_grant(LEASE_TTL_S_MAX))
    restored = KVStateMachine.restore_bytes(machine.snapshot())
    assert restored.snapshot() == machine.snapshot()
    assert restored.leases() == [(1, 10), (5, LEASE_TTL_S_MAX)]
    assert restored.lease(1) == (10, ["a", "b"])
    changes = restored.apply(6, encode_lease_revoke(1)).changes
    assert [c.key for c in changes] == ["a", "b"]


def test_a_small_chunk_size_splits_leases_across_frames() -> None:
    machine = KVStateMachine()
    for index in range(1, 40):
        machine.apply(index, encode_lease_grant(index))
    restored = KVStateMachine.restore(machine.snapshot_chunks(chunk_bytes=64))
    assert restored.leases() == machine.leases()


def test_a_version_2_snapshot_still_restores_without_leases() -> None:
    data = (
        frame(0, pack(["kvraft-kv-snapshot", 2, 9, 1, 1]))
        + frame(1, pack(["a", b"1", 3]))
        + frame(2, pack(["req", 4, True, 4, False, None]))
        + frame(3, b"")
    )
    machine = KVStateMachine.restore_bytes(data)
    assert machine.get("a") == (b"1", 3) and machine.leases() == []
    assert machine.remembers("req")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 1, 0, 0]))
            + frame(1, pack(["a", b"1", 3, 7]))
            + frame(3, b""),
            id="key-names-absent-lease",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 0, 0, 1]))
            + frame(4, pack([10, 5]))
            + frame(3, b""),
            id="lease-id-above-applied-index",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 0, 0, 1]))
            + frame(4, pack([2, 0]))
            + frame(3, b""),
            id="lease-ttl-zero",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 0, 0, 2]))
            + frame(4, pack([2, 5, 2, 5]))
            + frame(3, b""),
            id="lease-ids-repeat",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 2, 9, 0, 0]))
            + frame(4, pack([2, 5]))
            + frame(3, b""),
            id="leases-in-version-2",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 0, 0, 1])) + frame(3, b""),
            id="fewer-leases-than-header",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 3, 9, 0, 0, 0]))
            + frame(3, b"")
            + frame(4, pack([2, 5])),
            id="leases-after-end",
        ),
    ],
)
def test_bad_lease_snapshots_are_refused(data: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(data)
