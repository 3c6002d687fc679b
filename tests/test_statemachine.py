"""Tests for kvraft.statemachine: command encoding, apply semantics, reads and snapshots."""

from __future__ import annotations

import random
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.statemachine import (
    COMMAND_BYTES_MAX,
    IDEMPOTENCY_KEY_BYTES_MAX,
    IDEMPOTENCY_KEYS_MAX,
    KEY_BYTES_MAX,
    LIST_LIMIT_MAX,
    LIST_PAGE_BYTES_MAX,
    OP_DELETE,
    OP_PUT,
    REVISION_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX,
    SNAPSHOT_FORMAT_VERSION,
    SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX,
    VALUE_BYTES_MAX,
    ApplyOrderError,
    ApplyResult,
    CommandError,
    DeleteCommand,
    ErrorCode,
    KVStateMachine,
    PutCommand,
    SnapshotFormatError,
    decode_command,
    encode_delete,
    encode_put,
)

__all__: list[str] = []

# Hypothesis examples here are cheap but the machine may be shared with other test runs:
# no deadline, so a slow moment never turns into a flaky failure.
PROPERTY_SETTINGS = settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)


# --- Helpers --------------------------------------------------------------------------------


def raw_put(
    key: Any,
    value: Any = b"v",
    if_revision: Any = None,
    if_absent: Any = False,
    idempotency_key: Any = None,
) -> bytes:
    """A put command built by hand from the documented wire format, bypassing encode_put."""
    return pack([OP_PUT, key, value, if_revision, if_absent, idempotency_key])


def raw_delete(key: Any, if_revision: Any = None, idempotency_key: Any = None) -> bytes:
    """A delete command built by hand from the documented wire format."""
    return pack([OP_DELETE, key, if_revision, idempotency_key])


def all_items(machine: KVStateMachine, prefix: str = "") -> list[tuple[str, bytes, int]]:
    """Every item with the prefix, following continuations."""
    items: list[tuple[str, bytes, int]] = []
    start_after: str | None = None
    while True:
        page, start_after = machine.list(prefix, LIST_LIMIT_MAX, start_after)
        items.extend(page)
        if start_after is None:
            return items


def frame(kind: int, payload: bytes) -> bytes:
    """A snapshot frame built by hand from the documented format."""
    crc = zlib.crc32(bytes([kind]) + payload)
    return pack([kind, crc, payload])


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def crafted_snapshot(
    applied_index: int,
    key_records: list[Any],
    idempotency_records: list[Any],
    *,
    header: list[Any] | None = None,
) -> bytes:
    """A snapshot built by hand: one KEYS and one IDEMPOTENCY frame (omitted when empty), in
    format version 1 (five fields per idempotency record), which `restore` still reads."""
    if header is None:
        header = [
            "kvraft-kv-snapshot",
            1,
            applied_index,
            len(key_records) // 3,
            len(idempotency_records) // 5,
        ]
    data = frame(0, pack(header))
    if key_records:
        data += frame(1, pack(key_records))
    if idempotency_records:
        data += frame(2, pack(idempotency_records))
    return data + frame(3, b"")


def small_machine() -> KVStateMachine:
    """A machine with a few keys, a deleted key and remembered idempotency keys."""
    machine = KVStateMachine()
    machine.apply(1, encode_put("a", b"one", idempotency_key="client-1/1"))
    machine.apply(2, encode_put("b/x", b"two"))
    machine.apply(3, encode_put("gone", b"three"))
    machine.apply(4, encode_delete("gone", idempotency_key="client-1/2"))
    machine.apply(5, encode_put("a", b"four", if_revision=9, idempotency_key="client-2/1"))
    machine.mark_applied(6)
    return machine


# --- Encoding commands ----------------------------------------------------------------------


def test_encoded_commands_decode_to_what_was_asked() -> None:
    assert decode_command(encode_put("k/1", b"v", if_revision=7, idempotency_key="c")) == (
        PutCommand(key="k/1", value=b"v", if_revision=7, idempotency_key="c")
    )
    assert decode_command(encode_put("k", b"", if_absent=True)) == PutCommand(
        key="k", value=b"", if_absent=True
    )
    assert decode_command(encode_delete("k", if_revision=0)) == DeleteCommand(
        key="k", if_revision=0
    )


def test_conflicting_conditions_are_a_client_error_at_encode_time() -> None:
    with pytest.raises(CommandError) as caught:
        encode_put("k", b"v", if_revision=3, if_absent=True)
    assert caught.value.code == ErrorCode.CONFLICTING_CONDITIONS


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", ErrorCode.BAD_KEY),
        ("a\x00b", ErrorCode.BAD_KEY),
        ("\ud800", ErrorCode.BAD_KEY),  # a lone surrogate cannot be UTF-8
        (b"bytes", ErrorCode.BAD_KEY),
        (None, ErrorCode.BAD_KEY),
        ("k" * (KEY_BYTES_MAX + 1), ErrorCode.KEY_TOO_LARGE),
        ("é" * (KEY_BYTES_MAX // 2) + "k", ErrorCode.KEY_TOO_LARGE),
    ],
)
def test_invalid_keys_are_refused_at_encode_time(key: Any, code: ErrorCode) -> None:
    with pytest.raises(CommandError) as caught:
        encode_put(key, b"v")
    assert caught.value.code == code
    with pytest.raises(CommandError) as caught:
        encode_delete(key)
    assert caught.value.code == code


def test_key_of_exactly_the_byte_limit_encodes_and_one_more_byte_does_not() -> None:
    for key in ("k" * KEY_BYTES_MAX, "é" * (KEY_BYTES_MAX // 2), "😀" * (KEY_BYTES_MAX // 4)):
        assert len(key.encode()) == KEY_BYTES_MAX
        assert decode_command(encode_put(key, b"")).key == key
        with pytest.raises(CommandError) as caught:
            encode_put(key + "k", b"")
        assert caught.value.code == ErrorCode.KEY_TOO_LARGE


def test_value_of_exactly_the_limit_encodes_and_one_more_byte_does_not() -> None:
    encode_put("k", bytes(VALUE_BYTES_MAX))
    with pytest.raises(CommandError) as caught:
        encode_put("k", bytes(VALUE_BYTES_MAX + 1))
    assert caught.value.code == ErrorCode.VALUE_TOO_LARGE
    with pytest.raises(CommandError) as caught:
        encode_put("k", "text")  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.BAD_VALUE


def test_idempotency_key_of_exactly_the_limit_encodes_and_one_more_byte_does_not() -> None:
    for idempotency_key in (
        "i" * IDEMPOTENCY_KEY_BYTES_MAX,
        "é" * (IDEMPOTENCY_KEY_BYTES_MAX // 2),
    ):
        encode_put("k", b"", idempotency_key=idempotency_key)
        with pytest.raises(CommandError) as caught:
            encode_delete("k", idempotency_key=idempotency_key + "i")
        assert caught.value.code == ErrorCode.IDEMPOTENCY_KEY_TOO_LARGE
    for bad in ("", 7):
        with pytest.raises(CommandError) as caught:
            encode_put("k", b"", idempotency_key=bad)  # type: ignore[arg-type]
        assert caught.value.code == ErrorCode.BAD_IDEMPOTENCY_KEY


def test_if_revision_must_be_an_int_from_zero_to_the_maximum() -> None:
    encode_put("k", b"", if_revision=0)
    encode_delete("k", if_revision=REVISION_MAX)
    for bad in (-1, REVISION_MAX + 1, True, "3", 1.0):
        with pytest.raises(CommandError) as caught:
            encode_put("k", b"", if_revision=bad)  # type: ignore[arg-type]
        assert caught.value.code == ErrorCode.BAD_REVISION
    with pytest.raises(CommandError) as caught:
        encode_put("k", b"", if_absent=1)  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.BAD_CONDITION


def test_command_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="1024"):
        encode_put("k" * 1025 + "é", b"")


# --- Apply: puts, deletes and revisions -----------------------------------------------------


def test_put_sets_the_value_and_the_log_index_becomes_its_revision() -> None:
    machine = KVStateMachine()
    result = machine.apply(3, encode_put("k", b"v1"))
    assert result == ApplyResult(index=3, ok=True, revision=3)
    assert machine.get("k") == (b"v1", 3)
    assert machine.apply(8, encode_put("k", b"v2")).revision == 8
    assert machine.get("k") == (b"v2", 8)
    assert len(machine) == 1
    assert machine.applied_index == 8


def test_delete_removes_an_existing_key_and_reports_a_missing_one_as_not_deleted() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("k", b"v"))
    assert machine.apply(2, encode_delete("k")) == ApplyResult(
        index=2, ok=True, revision=2, deleted=True
    )
    assert machine.get("k") is None
    assert len(machine) == 0
    missing = machine.apply(3, encode_delete("k"))
    assert missing.ok and not missing.deleted
    assert machine.list() == ([], None)


def test_a_key_written_again_after_delete_starts_a_new_revision() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("k", b"a"))
    machine.apply(2, encode_delete("k"))
    assert machine.apply(3, encode_put("k", b"b", if_absent=True)).ok
    assert machine.get("k") == (b"b", 3)


def test_values_are_stored_exactly_including_empty_and_binary_bytes() -> None:
    machine = KVStateMachine()
    values = [b"", b"\x00", b"\x00" * 8, bytes(range(256)), bytes(VALUE_BYTES_MAX)]
    for index, value in enumerate(values, start=1):
        machine.apply(index, encode_put(f"k{index}", value))
        assert machine.get(f"k{index}") == (value, index)


# --- Apply: conditions ----------------------------------------------------------------------


def test_put_if_revision_applies_only_when_the_revision_matches() -> None:
    machine = KVStateMachine()
    machine.apply(4, encode_put("k", b"old"))
    failed = machine.apply(5, encode_put("k", b"new", if_revision=3))
    assert failed == ApplyResult(index=5, ok=False, revision=4)
    assert failed.condition_failed
    assert machine.get("k") == (b"old", 4)
    assert machine.apply(6, encode_put("k", b"new", if_revision=4)).ok
    assert machine.get("k") == (b"new", 6)


def test_if_revision_zero_means_the_key_must_be_absent() -> None:
    machine = KVStateMachine()
    assert machine.apply(1, encode_put("k", b"v", if_revision=0)).ok
    failed = machine.apply(2, encode_put("k", b"w", if_revision=0))
    assert not failed.ok and failed.revision == 1


def test_if_revision_on_a_missing_key_fails_with_revision_zero() -> None:
    machine = KVStateMachine()
    assert machine.apply(1, encode_put("k", b"v", if_revision=1)) == ApplyResult(
        index=1, ok=False, revision=0
    )
    assert machine.apply(2, encode_delete("k", if_revision=1)) == ApplyResult(
        index=2, ok=False, revision=0
    )
    assert machine.get("k") is None


def test_put_if_absent_succeeds_on_a_missing_key_and_fails_on_an_existing_one() -> None:
    machine = KVStateMachine()
    assert machine.apply(1, encode_put("k", b"first", if_absent=True)).ok
    failed = machine.apply(2, encode_put("k", b"second", if_absent=True))
    assert failed.condition_failed and failed.revision == 1
    assert machine.get("k") == (b"first", 1)


def test_delete_if_revision_applies_only_when_the_revision_matches() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("k", b"v"))
    assert machine.apply(2, encode_delete("k", if_revision=7)) == ApplyResult(
        index=2, ok=False, revision=1
    )
    assert machine.get("k") == (b"v", 1)
    assert machine.apply(3, encode_delete("k", if_revision=1)).deleted
    assert machine.get("k") is None


# --- Apply: the log index ---------------------------------------------------------------------


def test_every_entry_advances_the_applied_index_even_failures_and_no_ops() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("k", b"v", if_revision=5))
    assert machine.applied_index == 1
    machine.apply(2, b"garbage")
    assert machine.applied_index == 2
    machine.mark_applied(7)  # a NOOP or CONFIG entry; indexes may skip
    assert machine.applied_index == 7


@pytest.mark.parametrize("index", [0, 4, 5, -1, REVISION_MAX + 1, True])
def test_applying_an_index_not_above_the_applied_index_is_refused_and_changes_nothing(
    index: Any,
) -> None:
    machine = KVStateMachine()
    machine.apply(5, encode_put("k", b"v"))
    before = machine.snapshot()
    with pytest.raises(ApplyOrderError):
        machine.apply(index, encode_put("k", b"w"))
    with pytest.raises(ApplyOrderError):
        machine.mark_applied(index)
    assert machine.snapshot() == before


def test_the_largest_log_index_is_accepted() -> None:
    machine = KVStateMachine()
    assert machine.apply(REVISION_MAX, encode_put("k", b"v")).revision == REVISION_MAX
    assert machine.get("k") == (b"v", REVISION_MAX)
    assert KVStateMachine.restore_bytes(machine.snapshot()).get("k") == (b"v", REVISION_MAX)


# --- Apply: malformed and over-limit commands -------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"", ErrorCode.MALFORMED_COMMAND),
        (b"\xc1", ErrorCode.MALFORMED_COMMAND),  # a byte msgpack never uses
        (pack({"op": "put"}), ErrorCode.MALFORMED_COMMAND),
        (pack([]), ErrorCode.MALFORMED_COMMAND),
        (pack(["put", "k", b"v"]), ErrorCode.MALFORMED_COMMAND),
        (pack([True, "k", b"v", None, False, None]), ErrorCode.MALFORMED_COMMAND),
        (raw_put("k") + b"\x00", ErrorCode.MALFORMED_COMMAND),  # trailing bytes
        (pack([OP_PUT, "k", b"v", None, False]), ErrorCode.MALFORMED_COMMAND),
        (pack([OP_DELETE, "k", None]), ErrorCode.MALFORMED_COMMAND),
        (pack([99, "k"]), ErrorCode.UNKNOWN_OPERATION),
        # A str whose bytes are not UTF-8 (0xff 0xfe), packed by hand.
        (b"\x96\x01\xa2\xff\xfe\xc4\x00\xc0\xc2\xc0", ErrorCode.MALFORMED_COMMAND),
        (raw_put(""), ErrorCode.BAD_KEY),
        (raw_put("a\x00"), ErrorCode.BAD_KEY),
        (raw_put(b"k"), ErrorCode.BAD_KEY),
        (raw_put(5), ErrorCode.BAD_KEY),
        (raw_put("k", value="v"), ErrorCode.BAD_VALUE),
        (raw_put("k", value=None), ErrorCode.BAD_VALUE),
        (raw_put("k", if_revision=True), ErrorCode.BAD_REVISION),
        (raw_put("k", if_revision=-1), ErrorCode.BAD_REVISION),
        (raw_put("k", if_revision=REVISION_MAX + 1), ErrorCode.BAD_REVISION),
        (raw_put("k", if_revision=1.0), ErrorCode.BAD_REVISION),
        (raw_put("k", if_absent=None), ErrorCode.BAD_CONDITION),
        (raw_put("k", if_absent=1), ErrorCode.BAD_CONDITION),
        (raw_put("k", if_revision=1, if_absent=True), ErrorCode.CONFLICTING_CONDITIONS),
        (raw_put("k", idempotency_key=""), ErrorCode.BAD_IDEMPOTENCY_KEY),
        (raw_put("k", idempotency_key=b"id"), ErrorCode.BAD_IDEMPOTENCY_KEY),
        (raw_delete("k", if_revision="1"), ErrorCode.BAD_REVISION),
        (raw_delete(["k"]), ErrorCode.BAD_KEY),
        (raw_delete("k", idempotency_key=3), ErrorCode.BAD_IDEMPOTENCY_KEY),
    ],
)
def test_a_malformed_command_yields_an_error_result_and_changes_nothing(
    command: bytes, code: ErrorCode
) -> None:
    machine = small_machine()
    reference = small_machine()
    result = machine.apply(7, command)
    assert (result.index, result.ok, result.revision, result.error) == (7, False, 0, code)
    assert result.message
    assert not result.condition_failed
    reference.mark_applied(7)
    assert machine.snapshot() == reference.snapshot()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (raw_put("k" * KEY_BYTES_MAX), None),
        (raw_put("k" * (KEY_BYTES_MAX + 1)), ErrorCode.KEY_TOO_LARGE),
        (raw_put("é" * (KEY_BYTES_MAX // 2)), None),
        (raw_put("é" * (KEY_BYTES_MAX // 2) + "k"), ErrorCode.KEY_TOO_LARGE),
        (raw_delete("k" * (KEY_BYTES_MAX + 1)), ErrorCode.KEY_TOO_LARGE),
        (raw_put("k", value=bytes(VALUE_BYTES_MAX)), None),
        (raw_put("k", value=bytes(VALUE_BYTES_MAX + 1)), ErrorCode.VALUE_TOO_LARGE),
        (raw_put("k", idempotency_key="i" * IDEMPOTENCY_KEY_BYTES_MAX), None),
        (
            raw_put("k", idempotency_key="i" * (IDEMPOTENCY_KEY_BYTES_MAX + 1)),
            ErrorCode.IDEMPOTENCY_KEY_TOO_LARGE,
        ),
        (
            raw_delete("k", idempotency_key="é" * (IDEMPOTENCY_KEY_BYTES_MAX // 2) + "i"),
            ErrorCode.IDEMPOTENCY_KEY_TOO_LARGE,
        ),
        (raw_put("k", if_revision=REVISION_MAX), None),
    ],
)
def test_limits_hold_at_the_edge_when_applying_hand_made_commands(
    command: bytes, code: ErrorCode | None
) -> None:
    machine = KVStateMachine()
    result = machine.apply(1, command)
    assert result.error == code
    if code is None:
        assert result.ok or result.condition_failed
    else:
        assert len(machine) == 0


def test_the_largest_valid_command_fits_the_command_byte_limit() -> None:
    command = encode_put(
        "k" * KEY_BYTES_MAX,
        bytes(VALUE_BYTES_MAX),
        if_revision=REVISION_MAX,
        idempotency_key="i" * IDEMPOTENCY_KEY_BYTES_MAX,
    )
    assert len(command) <= COMMAND_BYTES_MAX
    assert KVStateMachine().apply(1, command).condition_failed


def test_command_bytes_over_the_limit_are_refused_before_decoding() -> None:
    machine = KVStateMachine()
    at_limit = machine.apply(1, b"\xc1" * COMMAND_BYTES_MAX)
    assert at_limit.error == ErrorCode.MALFORMED_COMMAND
    over = machine.apply(2, b"\xc1" * (COMMAND_BYTES_MAX + 1))
    assert over.error == ErrorCode.COMMAND_TOO_LARGE
    with pytest.raises(CommandError) as caught:
        decode_command(b"\x00" * (COMMAND_BYTES_MAX + 1))
    assert caught.value.code == ErrorCode.COMMAND_TOO_LARGE


def _assert_rejected_without_effect(command: bytes) -> None:
    before = small_machine().snapshot()
    machine = KVStateMachine.restore_bytes(before)
    reference = KVStateMachine.restore_bytes(before)
    try:
        decode_command(command)
        rejected = False
    except CommandError:
        rejected = True
    result = machine.apply(7, command)  # must never raise
    assert isinstance(result, ApplyResult)
    if rejected:
        assert result.error is not None and not result.ok
        reference.mark_applied(7)
        assert machine.snapshot() == reference.snapshot()


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_garbage_command_bytes_never_raise_and_never_change_state(command: bytes) -> None:
    _assert_rejected_without_effect(command)


_FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=2),
)


@PROPERTY_SETTINGS
@given(st.sampled_from([OP_PUT, OP_DELETE, 0, 3, True]), st.lists(_FIELD, max_size=7))
def test_near_miss_commands_never_raise_and_never_change_state_when_rejected(
    operation: Any, fields: list[Any]
) -> None:
    _assert_rejected_without_effect(pack([operation, *fields]))


# --- Idempotency -----------------------------------------------------------------------------


def test_a_retried_command_returns_the_original_result_and_does_not_apply_again() -> None:
    machine = KVStateMachine()
    original = machine.apply(1, encode_put("k", b"v1", idempotency_key="req-1"))
    machine.apply(2, encode_put("k", b"v2"))
    retry = machine.apply(3, encode_put("k", b"v1", idempotency_key="req-1"))
    assert retry == original
    assert retry.index == 1  # tells the caller the retry was answered from the table
    assert machine.get("k") == (b"v2", 2)
    assert machine.applied_index == 3


def test_a_retried_failed_condition_fails_again_even_if_it_would_now_hold() -> None:
    machine = KVStateMachine()
    failed = machine.apply(1, encode_put("k", b"v", if_revision=2, idempotency_key="req"))
    machine.apply(2, encode_put("k", b"other"))
    assert machine.apply(3, encode_put("k", b"v", if_revision=2, idempotency_key="req")) == failed
    assert machine.get("k") == (b"other", 2)


def test_a_retried_delete_reports_the_original_deletion() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("k", b"v"))
    original = machine.apply(2, encode_delete("k", idempotency_key="del"))
    assert original.deleted
    assert machine.apply(3, encode_delete("k", idempotency_key="del")) == original


def test_a_reused_idempotency_key_returns_the_first_result_even_for_another_command() -> None:
    machine = KVStateMachine()
    first = machine.apply(1, encode_put("a", b"v", idempotency_key="same"))
    assert machine.apply(2, encode_delete("a", idempotency_key="same")) == first
    assert machine.get("a") == (b"v", 1)


def test_a_rejected_command_is_not_remembered_under_its_idempotency_key() -> None:
    machine = KVStateMachine()
    rejected = machine.apply(1, raw_put("k", value=bytes(VALUE_BYTES_MAX + 1), idempotency_key="r"))
    assert rejected.error == ErrorCode.VALUE_TOO_LARGE
    assert machine.idempotency_key_count == 0
    assert machine.apply(2, encode_put("k", b"small", idempotency_key="r")).ok
    assert machine.get("k") == (b"small", 2)


def test_the_idempotency_table_forgets_the_oldest_key_past_its_limit_on_every_node() -> None:
    machine = KVStateMachine()
    # Deletes of an absent key: each is remembered, none changes the data.
    for index in range(1, IDEMPOTENCY_KEYS_MAX + 1):
        machine.apply(index, encode_delete("k", idempotency_key=f"c{index}"))
    assert machine.idempotency_key_count == IDEMPOTENCY_KEYS_MAX
    at_limit = KVStateMachine.restore_bytes(machine.snapshot())

    # Still exactly at the limit: the oldest key is remembered.
    assert (
        machine.apply(IDEMPOTENCY_KEYS_MAX + 1, encode_delete("k", idempotency_key="c1")).index == 1
    )

    # One new key past the limit: the oldest (c1) goes, the next oldest (c2) stays.
    following = [
        encode_delete("k", idempotency_key="new"),
        encode_put("k", b"w", idempotency_key="c2"),
        encode_put("k", b"v", idempotency_key="c1"),
    ]
    first_index = IDEMPOTENCY_KEYS_MAX + 2
    results = [machine.apply(first_index + n, command) for n, command in enumerate(following)]
    assert results[1].index == 2
    assert results[2] == ApplyResult(index=first_index + 2, ok=True, revision=first_index + 2)
    assert machine.get("k") == (b"v", first_index + 2)
    assert machine.idempotency_key_count == IDEMPOTENCY_KEYS_MAX

    # A node restored from a snapshot forgets exactly the same keys.
    at_limit.mark_applied(IDEMPOTENCY_KEYS_MAX + 1)
    assert [at_limit.apply(first_index + n, c) for n, c in enumerate(following)] == results
    assert at_limit.snapshot() == machine.snapshot()


# --- Model-based check and determinism --------------------------------------------------------

_KEYS = st.sampled_from(["a", "a/b", "a/c", "ab", "b", "é", "日本", "😀"])
_IDEMPOTENCY_KEYS = st.one_of(st.none(), st.sampled_from(["i1", "i2", "i3"]))
_CONDITIONS = st.one_of(
    st.just({}),
    st.builds(lambda revision: {"if_revision": revision}, st.integers(0, 12)),
    st.just({"if_absent": True}),
)


@st.composite
def _operations(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, Any], str | None]:
    return (
        draw(st.sampled_from(["put", "delete"])),
        draw(_KEYS),
        draw(st.binary(max_size=6)),
        draw(_CONDITIONS),
        draw(_IDEMPOTENCY_KEYS),
    )


def _encode(operation: tuple[str, str, bytes, dict[str, Any], str | None]) -> bytes:
    kind, key, value, conditions, idempotency_key = operation
    if kind == "put":
        return encode_put(key, value, idempotency_key=idempotency_key, **conditions)
    # A delete has no if_absent: it is the unconditional delete then.
    revision = conditions.get("if_revision")
    return encode_delete(key, if_revision=revision, idempotency_key=idempotency_key)


@PROPERTY_SETTINGS
@given(st.lists(_operations(), max_size=40))
def test_apply_matches_a_plain_dictionary_model(
    operations: list[tuple[str, str, bytes, dict[str, Any], str | None]],
) -> None:
    machine = KVStateMachine()
    model: dict[str, tuple[bytes, int]] = {}
    remembered: dict[str, tuple[int, bool, int, bool]] = {}
    for index, operation in enumerate(operations, start=1):
        kind, key, value, conditions, idempotency_key = operation
        result = machine.apply(index, _encode(operation))
        if idempotency_key in remembered:
            expected = remembered[idempotency_key]
        else:
            current = model[key][1] if key in model else 0
            if "if_revision" in conditions:
                holds = conditions["if_revision"] == current
            elif "if_absent" in conditions and kind == "put":
                holds = key not in model
            else:
                holds = True
            if not holds:
                expected = (index, False, current, False)
            elif kind == "put":
                model[key] = (value, index)
                expected = (index, True, index, False)
            else:
                expected = (index, True, index, model.pop(key, None) is not None)
            if idempotency_key is not None:
                remembered[idempotency_key] = expected
        assert (result.index, result.ok, result.revision, result.deleted) == expected
        assert result.error is None
    assert all_items(machine) == sorted((k, v, r) for k, (v, r) in model.items())
    for key, record in model.items():
        assert machine.get(key) == record
    assert len(machine) == len(model)


@PROPERTY_SETTINGS
@given(
    st.lists(_operations(), max_size=40),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=300),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_nodes_fed_the_same_log_end_with_identical_snapshots(
    operations: list[tuple[str, str, bytes, dict[str, Any], str | None]],
    restart_at: int,
    chunk_bytes: int,
    cut_points: list[int],
) -> None:
    commands = [_encode(operation) for operation in operations]
    restart_at = min(restart_at, len(commands))
    straight = KVStateMachine()
    straight_results = [straight.apply(i, c) for i, c in enumerate(commands, start=1)]

    # A second node applies a prefix, is rebuilt from its snapshot (re-cut arbitrarily, as a
    # transport might), then applies the rest.
    restarted = KVStateMachine()
    for index, command in enumerate(commands[:restart_at], start=1):
        restarted.apply(index, command)
    stream = b"".join(restarted.snapshot_chunks(chunk_bytes=chunk_bytes))
    cuts = sorted({min(cut, len(stream)) for cut in cut_points})
    pieces = [
        stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    restarted = KVStateMachine.restore(pieces)
    rest = [
        restarted.apply(index, command)
        for index, command in enumerate(commands[restart_at:], start=restart_at + 1)
    ]
    assert rest == straight_results[restart_at:]
    assert restarted.snapshot() == straight.snapshot()


# --- Snapshots ---------------------------------------------------------------------------------


def test_a_restored_machine_has_the_same_state_and_snapshot() -> None:
    machine = small_machine()
    restored = KVStateMachine.restore(machine.snapshot_chunks())
    assert restored.snapshot() == machine.snapshot()
    assert restored.applied_index == 6
    assert all_items(restored) == [("a", b"one", 1), ("b/x", b"two", 2)]
    assert restored.get("gone") is None
    # Remembered results survive: the retries answer from the restored table.
    assert restored.apply(7, encode_put("a", b"x", idempotency_key="client-1/1")).index == 1
    assert restored.apply(8, encode_delete("gone", idempotency_key="client-1/2")).deleted
    assert restored.apply(9, encode_put("a", b"x", idempotency_key="client-2/1")) == ApplyResult(
        index=5, ok=False, revision=1
    )
    assert restored.get("a") == (b"one", 1)


def test_an_empty_machine_round_trips() -> None:
    restored = KVStateMachine.restore_bytes(KVStateMachine().snapshot())
    assert len(restored) == 0
    assert restored.applied_index == 0
    assert restored.snapshot() == KVStateMachine().snapshot()


def test_snapshot_chunks_stay_near_the_chunk_size_and_round_trip_at_any_size() -> None:
    machine = KVStateMachine()
    for index in range(1, 301):
        machine.apply(
            index, encode_put(f"key/{index:04d}", bytes(500), idempotency_key=f"i{index}")
        )
    record_bytes_max = 500 + 4 * len("key/0000") + 64
    for chunk_bytes in (1, 1000, 10_000, 1024 * 1024):
        chunks = list(machine.snapshot_chunks(chunk_bytes=chunk_bytes))
        assert all(len(chunk) <= chunk_bytes + record_bytes_max for chunk in chunks)
        restored = KVStateMachine.restore(chunks)
        assert restored.snapshot() == machine.snapshot()
    assert len(list(machine.snapshot_chunks(chunk_bytes=1000))) > 300 * 500 // 1000


def test_chunk_size_must_be_within_its_limits() -> None:
    machine = small_machine()
    assert KVStateMachine.restore(machine.snapshot_chunks(SNAPSHOT_CHUNK_BYTES_MAX))
    for bad in (0, SNAPSHOT_CHUNK_BYTES_MAX + 1):
        with pytest.raises(ValueError, match="chunk_bytes"):
            machine.snapshot_chunks(bad)


def test_a_snapshot_is_the_state_when_it_was_asked_for_even_if_writes_follow() -> None:
    machine = small_machine()
    expected = b"".join(machine.snapshot_chunks(chunk_bytes=1))
    chunks = machine.snapshot_chunks(chunk_bytes=1)
    first = next(chunks)
    machine.apply(7, encode_put("a", b"changed"))
    machine.apply(8, encode_put("new", b"key"))
    machine.apply(9, encode_delete("b/x", idempotency_key="late"))
    assert b"".join([first, *chunks]) == expected


def test_every_truncation_of_a_snapshot_is_detected() -> None:
    data = small_machine().snapshot()
    for length in range(len(data)):
        with pytest.raises(SnapshotFormatError):
            KVStateMachine.restore_bytes(data[:length])


def test_dropped_or_repeated_chunks_are_detected() -> None:
    chunks = list(small_machine().snapshot_chunks(chunk_bytes=1))
    assert len(chunks) > 4
    for position in range(len(chunks)):
        with pytest.raises(SnapshotFormatError):
            KVStateMachine.restore(chunks[:position] + chunks[position + 1 :])
        with pytest.raises(SnapshotFormatError):
            KVStateMachine.restore(chunks[: position + 1] + chunks[position:])


def test_every_corrupted_byte_of_a_snapshot_is_detected() -> None:
    data = small_machine().snapshot()
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            corrupted = bytearray(data)
            corrupted[position] ^= flip
            with pytest.raises(SnapshotFormatError):
                KVStateMachine.restore_bytes(bytes(corrupted))


def test_bytes_after_the_end_frame_are_refused() -> None:
    data = small_machine().snapshot()
    for extra in (b"\x00", frame(3, b""), KVStateMachine().snapshot()):
        with pytest.raises(SnapshotFormatError):
            KVStateMachine.restore_bytes(data + extra)


def test_chunks_that_are_not_bytes_are_refused() -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore(["not bytes"])  # type: ignore[list-item]
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore([])


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_garbage_snapshot_bytes_raise_only_snapshot_format_error(data: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(data)


def test_a_hand_made_snapshot_in_the_documented_format_restores() -> None:
    data = crafted_snapshot(
        9, ["a", b"1", 3, "b", b"2", 9], ["req", 4, True, 4, False, "req2", 5, False, 3, False]
    )
    machine = KVStateMachine.restore_bytes(data)
    assert machine.applied_index == 9
    assert all_items(machine) == [("a", b"1", 3), ("b", b"2", 9)]
    assert machine.apply(10, encode_put("z", b"", idempotency_key="req2")) == ApplyResult(
        index=5, ok=False, revision=3
    )


_GOOD_KEYS = ["a", b"1", 3, "b", b"2", 9]
_GOOD_IDEMPOTENCY = ["req", 4, True, 4, False]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(1, pack(_GOOD_KEYS)) + frame(3, b""), id="no-header"),
        pytest.param(
            crafted_snapshot(9, [], [], header=["other-magic", SNAPSHOT_FORMAT_VERSION, 9, 0, 0]),
            id="wrong-magic",
        ),
        pytest.param(
            crafted_snapshot(9, [], [], header=["kvraft-kv-snapshot", 99, 9, 0, 0]),
            id="unknown-version",
        ),
        pytest.param(
            crafted_snapshot(9, [], [], header=["kvraft-kv-snapshot", True, 9, 0, 0]),
            id="bool-version",
        ),
        pytest.param(
            crafted_snapshot(9, [], [], header=["kvraft-kv-snapshot", 1, -1, 0, 0]),
            id="negative-applied-index",
        ),
        pytest.param(
            crafted_snapshot(9, [], [], header=["kvraft-kv-snapshot", 1, 9, 0]), id="short-header"
        ),
        pytest.param(
            crafted_snapshot(9, _GOOD_KEYS, [], header=["kvraft-kv-snapshot", 1, 9, 3, 0]),
            id="fewer-keys-than-header",
        ),
        pytest.param(
            crafted_snapshot(9, _GOOD_KEYS, [], header=["kvraft-kv-snapshot", 1, 9, 1, 0]),
            id="more-keys-than-header",
        ),
        pytest.param(
            crafted_snapshot(
                9, [], [], header=["kvraft-kv-snapshot", 1, 9, 0, IDEMPOTENCY_KEYS_MAX + 1]
            ),
            id="idempotency-count-over-limit",
        ),
        pytest.param(crafted_snapshot(9, ["b", b"1", 3, "a", b"2", 4], []), id="keys-unordered"),
        pytest.param(crafted_snapshot(9, ["a", b"1", 3, "a", b"2", 4], []), id="duplicate-key"),
        pytest.param(crafted_snapshot(9, ["a", b"1", 10], []), id="revision-above-applied"),
        pytest.param(crafted_snapshot(9, ["a", b"1", 0], []), id="revision-zero"),
        pytest.param(crafted_snapshot(9, ["a", "1", 3], []), id="str-value"),
        pytest.param(crafted_snapshot(9, ["", b"1", 3], []), id="empty-key"),
        pytest.param(crafted_snapshot(9, ["k" * 1025, b"1", 3], []), id="key-too-large"),
        pytest.param(
            crafted_snapshot(9, ["a", bytes(VALUE_BYTES_MAX + 1), 3], []), id="value-too-large"
        ),
        pytest.param(crafted_snapshot(9, ["a", b"1"], []), id="partial-key-record"),
        pytest.param(
            crafted_snapshot(9, [], ["req", 4, True, 4, False, "req", 5, True, 5, False]),
            id="duplicate-idempotency-key",
        ),
        pytest.param(
            crafted_snapshot(9, [], ["r1", 5, True, 5, False, "r2", 4, True, 4, False]),
            id="idempotency-indexes-decrease",
        ),
        pytest.param(crafted_snapshot(9, [], ["r", 10, True, 10, False]), id="idem-index-high"),
        pytest.param(crafted_snapshot(9, [], ["r", 4, True, 3, False]), id="success-wrong-rev"),
        pytest.param(crafted_snapshot(9, [], ["r", 4, False, 4, False]), id="failure-own-rev"),
        pytest.param(crafted_snapshot(9, [], ["r", 4, False, 2, True]), id="failure-deleted"),
        pytest.param(crafted_snapshot(9, [], ["r", 4, 1, 4, False]), id="int-flag"),
        pytest.param(crafted_snapshot(9, [], [None, 4, True, 4, False]), id="nil-idem-key"),
        pytest.param(
            crafted_snapshot(9, [], ["i" * (IDEMPOTENCY_KEY_BYTES_MAX + 1), 4, True, 4, False]),
            id="idempotency-key-too-large",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 1]))
            + frame(2, pack(_GOOD_IDEMPOTENCY))
            + frame(1, pack([]))
            + frame(3, b""),
            id="frames-out-of-order",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0]))
            + frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0]))
            + frame(3, b""),
            id="two-headers",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0])) + frame(1, pack([])) + frame(3, b""),
            id="empty-keys-frame",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0])) + frame(1, b"\xc1") + frame(3, b""),
            id="payload-not-msgpack",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0])) + frame(4, b"") + frame(3, b""),
            id="unknown-frame-kind",
        ),
        pytest.param(
            frame(0, pack(["kvraft-kv-snapshot", 1, 9, 0, 0])) + pack({"a": 1}), id="map-frame"
        ),
    ],
)
def test_a_snapshot_with_valid_checksums_but_invalid_content_is_refused(data: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(data)


def _snapshot_with_payload_of(payload_bytes: int) -> bytes:
    """A valid snapshot whose one KEYS frame has a payload of exactly `payload_bytes`."""
    records: list[Any] = []
    count = 0
    while len(pack(records)) < payload_bytes:
        count += 1
        remaining = payload_bytes - len(pack(records)) - len(pack([f"k{count:03d}", b"", 1]))
        records += [f"k{count:03d}", bytes(min(max(remaining, 0), VALUE_BYTES_MAX)), 1]
        # Headers grow with the list and the value: trim the last value to land exactly.
        while len(pack(records)) > payload_bytes:
            records[-2] = records[-2][: len(records[-2]) - (len(pack(records)) - payload_bytes)]
    assert len(pack(records)) == payload_bytes
    return crafted_snapshot(1, records, [])


def test_a_frame_payload_of_exactly_the_limit_restores_and_one_byte_more_is_refused() -> None:
    at_limit = KVStateMachine.restore_bytes(
        _snapshot_with_payload_of(SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX)
    )
    assert len(at_limit) > SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX // VALUE_BYTES_MAX
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(
            _snapshot_with_payload_of(SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX + 1)
        )


def test_the_largest_frame_a_snapshot_writes_at_the_largest_chunk_size_restores() -> None:
    # Just under the chunk size of records, then the largest record: the frame overruns the
    # chunk size by a whole record, and restore must still accept it.
    machine = KVStateMachine()
    records_before = SNAPSHOT_CHUNK_BYTES_MAX // VALUE_BYTES_MAX
    for index in range(1, records_before + 1):
        machine.apply(index, encode_put(f"a{index:03d}", bytes(VALUE_BYTES_MAX - 1000)))
    machine.apply(records_before + 1, encode_put("b" * KEY_BYTES_MAX, bytes(VALUE_BYTES_MAX)))
    chunks = list(machine.snapshot_chunks(chunk_bytes=SNAPSHOT_CHUNK_BYTES_MAX))
    assert max(len(chunk) for chunk in chunks) > SNAPSHOT_CHUNK_BYTES_MAX + VALUE_BYTES_MAX // 2
    restored = KVStateMachine.restore_bytes(b"".join(chunks))
    assert len(restored) == records_before + 1
    assert restored.get("b" * KEY_BYTES_MAX) == (bytes(VALUE_BYTES_MAX), records_before + 1)


# --- Listing ---------------------------------------------------------------------------------


def test_list_pages_visit_every_key_with_the_prefix_exactly_once_in_order() -> None:
    rng = random.Random(20240601)
    machine = KVStateMachine()
    model: dict[str, bytes] = {}
    index = 0
    # Enough keys, written and deleted in random order, to split and empty index sublists.
    names = [f"{rng.choice(['p/', 'p', 'q/', 'p/x/'])}{n:05d}" for n in range(6000)]
    rng.shuffle(names)
    for name in names:
        index += 1
        machine.apply(index, encode_put(name, name.encode()))
        model[name] = name.encode()
    for name in rng.sample(names, 2500):
        index += 1
        machine.apply(index, encode_delete(name))
        del model[name]
    for prefix in ("", "p", "p/", "p/x/", "q/", "r"):
        expected = sorted(key for key in model if key.startswith(prefix))
        for limit in (1, 7, LIST_LIMIT_MAX):
            seen: list[str] = []
            start_after: str | None = None
            while True:
                page, start_after = machine.list(prefix, limit, start_after)
                assert len(page) <= limit
                seen.extend(key for key, _, _ in page)
                if start_after is None:
                    break
                assert page, "a continuation is only given after a non-empty page"
            assert seen == expected
    assert [value for _, value, _ in all_items(machine, "q/")] == [
        model[key] for key in sorted(model) if key.startswith("q/")
    ]


def test_deleting_every_key_empties_the_listing_and_keys_can_come_back() -> None:
    machine = KVStateMachine()
    rng = random.Random(7)
    names = [f"k{n:05d}" for n in range(4500)]
    for index, name in enumerate(names, start=1):
        machine.apply(index, encode_put(name, b""))
    rng.shuffle(names)
    for index, name in enumerate(names, start=len(names) + 1):
        assert machine.apply(index, encode_delete(name)).deleted
    assert machine.list() == ([], None)
    assert len(machine) == 0
    machine.apply(2 * len(names) + 1, encode_put("k00042", b"back"))
    assert machine.list() == ([("k00042", b"back", 2 * len(names) + 1)], None)


def test_list_continuation_is_none_exactly_when_the_prefix_is_exhausted() -> None:
    machine = KVStateMachine()
    for index, key in enumerate(["a/1", "a/2", "a/3", "b/1"], start=1):
        machine.apply(index, encode_put(key, b""))
    assert [k for k, _, _ in machine.list("a/", 2)[0]] == ["a/1", "a/2"]
    assert machine.list("a/", 2)[1] == "a/2"
    assert machine.list("a/", 3)[1] is None
    assert machine.list("a/", 2, "a/2") == ([("a/3", b"", 3)], None)


def test_list_prefix_matches_only_keys_that_start_with_it() -> None:
    machine = KVStateMachine()
    keys = ["a", "a/", "a/b", "a0", "ab", "a\u00e9", "a\U0001f600", "b", "a/\U0001f600"]
    for index, key in enumerate(keys, start=1):
        machine.apply(index, encode_put(key, b""))
    assert [k for k, _, _ in all_items(machine, "a/")] == ["a/", "a/b", "a/\U0001f600"]
    listed = [k for k, _, _ in all_items(machine)]
    # Key order is UTF-8 byte order, which clients in any language can reproduce.
    assert listed == sorted(keys, key=lambda k: k.encode())
    assert all_items(machine, "c") == []


def test_list_start_after_may_be_any_string_inside_or_outside_the_prefix() -> None:
    machine = KVStateMachine()
    for index, key in enumerate(["p/a", "p/c", "p/e", "q"], start=1):
        machine.apply(index, encode_put(key, b""))

    def keys(prefix: str, start_after: str | None) -> list[str]:
        return [key for key, _, _ in machine.list(prefix, 10, start_after)[0]]

    assert keys("p/", "p/b") == ["p/c", "p/e"]  # not itself a key
    assert keys("p/", "p/c") == ["p/e"]
    assert keys("p/", "a") == ["p/a", "p/c", "p/e"]  # before the prefix
    assert keys("p/", "p/z") == []
    assert keys("p/", "q") == []  # after the prefix
    assert keys("", "") == ["p/a", "p/c", "p/e", "q"]


def test_list_limit_must_be_from_one_to_the_maximum() -> None:
    machine = KVStateMachine()
    for index in range(1, LIST_LIMIT_MAX + 3):
        machine.apply(index, encode_put(f"k{index:05d}", b""))
    page, continuation = machine.list("", LIST_LIMIT_MAX)
    assert len(page) == LIST_LIMIT_MAX and continuation == page[-1][0]
    for bad in (0, LIST_LIMIT_MAX + 1, True, "10"):
        with pytest.raises(CommandError) as caught:
            machine.list("", bad)  # type: ignore[arg-type]
        assert caught.value.code == ErrorCode.BAD_LIMIT


def test_list_page_ends_once_its_values_reach_the_page_byte_limit() -> None:
    machine = KVStateMachine()
    quarter = LIST_PAGE_BYTES_MAX // 4
    for index, size in enumerate([quarter, quarter, quarter, quarter - 1, 10, 10], start=1):
        machine.apply(index, encode_put(f"under/{index}", bytes(size)))
    for index, size in enumerate([quarter, quarter, quarter, quarter, 10], start=7):
        machine.apply(index, encode_put(f"at/{index:02d}", bytes(size)))
    under, under_continuation = machine.list("under/", 10)
    assert len(under) == 5 and under_continuation == "under/5"
    at, at_continuation = machine.list("at/", 10)
    assert len(at) == 4 and at_continuation == "at/10"
    assert machine.list("at/", 10, at_continuation) == ([("at/11", bytes(10), 11)], None)
    assert [key for key, _, _ in at] == ["at/07", "at/08", "at/09", "at/10"]
    machine.apply(12, encode_put("big/1", bytes(VALUE_BYTES_MAX)))
    assert len(machine.list("big/", 1)[0]) == 1  # one item always fits


@pytest.mark.parametrize(
    ("prefix", "start_after", "code"),
    [
        ("a\x00", None, ErrorCode.BAD_KEY),
        ("k" * (KEY_BYTES_MAX + 1), None, ErrorCode.KEY_TOO_LARGE),
        ("", "k" * (KEY_BYTES_MAX + 1), ErrorCode.KEY_TOO_LARGE),
        (None, None, ErrorCode.BAD_KEY),
    ],
)
def test_list_refuses_invalid_prefixes_and_start_keys(
    prefix: Any, start_after: Any, code: ErrorCode
) -> None:
    with pytest.raises(CommandError) as caught:
        KVStateMachine().list(prefix, 10, start_after)
    assert caught.value.code == code
    assert KVStateMachine().list("k" * KEY_BYTES_MAX, 10) == ([], None)
