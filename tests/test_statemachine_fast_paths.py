"""The state machine's fast paths (issue #22, fast restart) give exactly what the full checks
give: the same results, the same state, the same snapshot bytes and the same errors, for
well-formed and hostile commands and snapshots alike. Each case runs twice, once with the fast
path switched off (the reference), and the two runs must agree."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from kvraft import statemachine
from kvraft.statemachine import (
    KEY_BYTES_MAX,
    OP_PUT,
    VALUE_BYTES_MAX,
    KVStateMachine,
    SnapshotFormatError,
    encode_lease_grant,
    encode_put,
)


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
