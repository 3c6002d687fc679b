"""Tests for kvraft.raft.codec: round trips, every limit at its edge, and hostile bytes."""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.codec import (
    CONFIGURATION_BYTES_MAX,
    CONTEXT_BYTES_MAX,
    ENTRIES_PER_MESSAGE_MAX,
    INDEX_MAX,
    INSTALL_SNAPSHOT_BYTES_MAX,
    MEMBERS_MAX,
    MESSAGE_BYTES_MAX,
    MESSAGE_TERM_MAX,
    NODE_ID_MAX,
    READ_ROUND_MAX,
    TERM_MAX,
    CodecError,
    configuration_from_obj,
    configuration_to_obj,
    decode_configuration,
    decode_entry,
    decode_message,
    encode_configuration,
    encode_entry,
    encode_install_snapshot_head,
    encode_message,
    entry_from_obj,
    entry_to_obj,
    snapshot_meta_from_obj,
    snapshot_meta_to_obj,
)
from kvraft.raft.messages import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

MESSAGE_TYPES: tuple[type[Any], ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
)

# Hypothesis runs are quick, but a deadline could still trip on a loaded CI machine.
NO_DEADLINE = settings(deadline=None)
# For the tests that draw whole messages: several of them, one per message type, add up.
FEWER_EXAMPLES = settings(deadline=None, max_examples=50)


def unchecked(value: object) -> Any:
    """Let a test put a wrongly typed value into a field, as a hostile peer would."""
    return value


def replace_field(message: Any, path: str, value: object) -> Any:
    """`dataclasses.replace` for a field or a field of a field ("meta.term")."""
    head, _, rest = path.partition(".")
    if rest:
        value = replace_field(getattr(message, head), rest, value)
    return dataclasses.replace(message, **{head: value})


def repack(encoded: bytes, edit: Any) -> bytes:
    """Unpack a valid encoding, let `edit` change the object in place, pack it again."""
    obj = msgpack.unpackb(encoded)
    edit(obj)
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


# --- strategies -----------------------------------------------------------------------------

node_ids = st.integers(1, NODE_ID_MAX)
terms = st.integers(0, MESSAGE_TERM_MAX)
indexes = st.integers(0, INDEX_MAX)
read_rounds = st.integers(0, READ_ROUND_MAX)


@st.composite
def configurations(draw: st.DrawFn, members_max: int = 8) -> Configuration:
    members = draw(st.lists(node_ids, unique=True, max_size=members_max))
    voter_count = draw(st.integers(0, len(members)))
    return Configuration(
        voters=frozenset(members[:voter_count]),
        learners=frozenset(members[voter_count:]),
        context=draw(st.binary(max_size=32)),
    )


@st.composite
def kinds_and_data(draw: st.DrawFn) -> tuple[EntryKind, bytes]:
    kind = draw(st.sampled_from(EntryKind))
    if kind is EntryKind.NORMAL:
        return kind, draw(st.binary(max_size=64))
    if kind is EntryKind.NOOP:
        return kind, b""
    return kind, encode_configuration(draw(configurations()))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind, data = draw(kinds_and_data())
    return Entry(draw(st.integers(1, TERM_MAX)), draw(st.integers(1, INDEX_MAX)), kind, data)


@st.composite
def snapshot_metas(draw: st.DrawFn, term_max: int = TERM_MAX) -> SnapshotMeta:
    return SnapshotMeta(
        index=draw(indexes),
        term=draw(st.integers(0, term_max)),
        configuration=draw(configurations()),
    )


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    term = draw(terms)
    prev_log_term = draw(st.integers(0, term))
    # A real entry's term is at least 1, so a term-0 message carries none.
    count = draw(st.integers(0, 8)) if term >= 1 else 0
    prev_log_index = draw(st.integers(0, INDEX_MAX - count))
    entry_terms = (
        sorted(
            draw(st.lists(st.integers(max(prev_log_term, 1), term), min_size=count, max_size=count))
        )
        if count
        else []
    )
    log = []
    for offset, entry_term in enumerate(entry_terms, start=1):
        kind, data = draw(kinds_and_data())
        log.append(Entry(entry_term, prev_log_index + offset, kind, data))
    return AppendEntries(
        term=term,
        source=draw(node_ids),
        target=draw(node_ids),
        prev_log_index=prev_log_index,
        prev_log_term=prev_log_term,
        entries=tuple(log),
        leader_commit=draw(indexes),
    )


@st.composite
def install_snapshots(draw: st.DrawFn) -> InstallSnapshot:
    term = draw(terms)
    return InstallSnapshot(
        term=term,
        source=draw(node_ids),
        target=draw(node_ids),
        meta=draw(snapshot_metas(term_max=term)),
        data=draw(st.binary(max_size=256)),
    )


MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    RequestVote: st.builds(
        RequestVote,
        term=terms,
        source=node_ids,
        target=node_ids,
        last_log_index=indexes,
        last_log_term=terms,
        pre_vote=st.booleans(),
        leadership_transfer=st.booleans(),
    ),
    RequestVoteResponse: st.builds(
        RequestVoteResponse,
        term=terms,
        source=node_ids,
        target=node_ids,
        vote_granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    AppendEntries: append_entries(),
    AppendEntriesResponse: st.builds(
        AppendEntriesResponse,
        term=terms,
        source=node_ids,
        target=node_ids,
        success=st.booleans(),
        match_index=indexes,
        reject_index=indexes,
        conflict_index=indexes,
        conflict_term=terms,
    ),
    InstallSnapshot: install_snapshots(),
    Heartbeat: st.builds(
        Heartbeat,
        term=terms,
        source=node_ids,
        target=node_ids,
        leader_commit=indexes,
        read_round=read_rounds,
    ),
    HeartbeatResponse: st.builds(
        HeartbeatResponse, term=terms, source=node_ids, target=node_ids, read_round=read_rounds
    ),
    TimeoutNow: st.builds(TimeoutNow, term=terms, source=node_ids, target=node_ids),
}

messages = st.one_of(*MESSAGE_STRATEGIES.values())

# Whatever msgpack can carry, for structured garbage that gets past the unpacker.
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=16)
    | st.text(max_size=4)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)

# --- one valid sample of each message type ---------------------------------------------------

CONFIGURATION = Configuration(
    voters=frozenset({1, 2, 3}), learners=frozenset({4}), context=b"1=a:1,2=b:1,3=c:1,4=d:1"
)
SAMPLE_MESSAGES: list[Message] = [
    RequestVote(
        term=7,
        source=1,
        target=2,
        last_log_index=40,
        last_log_term=6,
        pre_vote=True,
        leadership_transfer=False,
    ),
    RequestVoteResponse(term=7, source=2, target=1, vote_granted=True, pre_vote=True),
    AppendEntries(
        term=7,
        source=1,
        target=3,
        prev_log_index=40,
        prev_log_term=6,
        entries=(
            Entry(6, 41, EntryKind.NORMAL, b"set x 1"),
            Entry(7, 42, EntryKind.NOOP),
            Entry(7, 43, EntryKind.CONFIG, encode_configuration(CONFIGURATION)),
        ),
        leader_commit=39,
    ),
    AppendEntriesResponse(
        term=7,
        source=3,
        target=1,
        success=False,
        match_index=0,
        reject_index=40,
        conflict_index=35,
        conflict_term=5,
    ),
    InstallSnapshot(
        term=7,
        source=1,
        target=4,
        meta=SnapshotMeta(index=30, term=5, configuration=CONFIGURATION),
        data=b"state machine bytes",
    ),
    Heartbeat(term=7, source=1, target=2, leader_commit=39, read_round=12),
    HeartbeatResponse(term=7, source=2, target=1, read_round=12),
    TimeoutNow(term=7, source=1, target=2),
]


def sample_id(message: object) -> str:
    return type(message).__name__


def test_the_samples_cover_every_message_type() -> None:
    assert {type(message) for message in SAMPLE_MESSAGES} == set(MESSAGE_TYPES)
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_every_message_type_round_trips(message: Message) -> None:
    decoded = decode_message(encode_message(message))
    assert decoded == message
    assert type(decoded) is type(message)


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@FEWER_EXAMPLES
@given(data=st.data())
def test_generated_messages_of_every_type_round_trip(
    message_type: type[Any], data: st.DataObject
) -> None:
    message = data.draw(MESSAGE_STRATEGIES[message_type])
    decoded = decode_message(encode_message(message))
    assert decoded == message
    assert type(decoded) is message_type
    if isinstance(decoded, AppendEntries):
        # The hot path builds entries without Entry.__init__: they must be the real thing.
        assert type(decoded.entries) is tuple
        for entry in decoded.entries:
            assert type(entry) is Entry
            assert type(entry.kind) is EntryKind
        assert [hash(entry) for entry in decoded.entries] == [hash(e) for e in message.entries]


def test_an_append_entries_of_many_entries_round_trips() -> None:
    # The shape of the hot path: hundreds of small commands in one message.
    message = AppendEntries(
        term=9,
        source=1,
        target=2,
        prev_log_index=1000,
        prev_log_term=8,
        entries=tuple(Entry(9, 1001 + i, EntryKind.NORMAL, b"put k%d v" % i) for i in range(500)),
        leader_commit=1000,
    )
    assert decode_message(encode_message(message)) == message


@NO_DEADLINE
@given(entries())
def test_entries_round_trip_as_bytes_and_as_objects(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry
    assert entry_from_obj(msgpack.unpackb(msgpack.packb(entry_to_obj(entry)))) == entry


@FEWER_EXAMPLES
@given(st.lists(entries(), max_size=3), snapshot_metas())
def test_entries_and_snapshot_meta_embed_in_another_msgpack_record(
    log: list[Entry], meta: SnapshotMeta
) -> None:
    # How the WAL and the snapshot store use the object forms: inside records of their own.
    record = {"entries": [entry_to_obj(entry) for entry in log], "meta": snapshot_meta_to_obj(meta)}
    unpacked = msgpack.unpackb(msgpack.packb(record, use_bin_type=True), raw=False)
    assert [entry_from_obj(obj) for obj in unpacked["entries"]] == log
    assert snapshot_meta_from_obj(unpacked["meta"]) == meta


@NO_DEADLINE
@given(configurations(members_max=MEMBERS_MAX))
def test_configurations_round_trip(configuration: Configuration) -> None:
    assert decode_configuration(encode_configuration(configuration)) == configuration
    assert configuration_from_obj(configuration_to_obj(configuration)) == configuration


def test_encode_message_refuses_something_that_is_not_a_message() -> None:
    with pytest.raises(TypeError):
        encode_message(unchecked(Entry(1, 1)))


# --- hostile bytes --------------------------------------------------------------------------


DECODERS: list[tuple[Any, Any]] = [
    (decode_message, encode_message),
    (decode_entry, encode_entry),
    (decode_configuration, encode_configuration),
]


def assert_refused_or_valid(data: bytes) -> None:
    """Each decoder either raises CodecError or returns a value that is valid in every respect:
    it encodes and decodes back to itself. Any other exception fails the test."""
    for decode, encode in DECODERS:
        try:
            decoded = decode(data)
        except CodecError:
            continue
        assert decode(encode(decoded)) == decoded


@NO_DEADLINE
@given(st.binary(max_size=200))
def test_random_bytes_decode_to_a_valid_value_or_raise_codec_error(data: bytes) -> None:
    assert_refused_or_valid(data)


@NO_DEADLINE
@given(st.integers(0, 9), st.lists(msgpack_scalars, max_size=9))
def test_msgpack_shaped_garbage_after_a_type_tag_raises_only_codec_error(
    tag: int, fields: list[Any]
) -> None:
    assert_refused_or_valid(msgpack.packb([tag, *fields], use_bin_type=True))


def replace_somewhere(obj: list[Any], data: st.DataObject) -> None:
    """Replace one element of `obj`, or of an array nested in it, with any msgpack value."""
    position = data.draw(st.integers(0, len(obj) - 1))
    child = obj[position]
    if type(child) is list and child and data.draw(st.booleans()):
        replace_somewhere(child, data)
    else:
        obj[position] = data.draw(msgpack_values)


@NO_DEADLINE
@given(messages, st.data())
def test_a_message_with_any_one_value_replaced_is_refused_or_still_valid(
    message: Message, data: st.DataObject
) -> None:
    # Garbage deep inside a well-formed message: past the tag, the arity and the entries array.
    assert_refused_or_valid(
        repack(encode_message(message), lambda obj: replace_somewhere(obj, data))
    )


@NO_DEADLINE
@given(msgpack_values)
def test_any_msgpack_value_decodes_or_raises_only_codec_error(value: Any) -> None:
    assert_refused_or_valid(msgpack.packb(value, use_bin_type=True))


@NO_DEADLINE
@given(messages, st.data())
def test_a_message_with_one_byte_changed_is_refused_or_still_valid(
    message: Message, data: st.DataObject
) -> None:
    encoded = bytearray(encode_message(message))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    assert_refused_or_valid(bytes(encoded))


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_every_truncation_of_a_message_is_refused(message: Message) -> None:
    encoded = encode_message(message)
    for length in range(len(encoded)):
        with pytest.raises(CodecError):
            decode_message(encoded[:length])


@NO_DEADLINE
@given(messages, st.data())
def test_a_truncated_generated_message_is_refused(message: Message, data: st.DataObject) -> None:
    encoded = encode_message(message)
    length = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(CodecError):
        decode_message(encoded[:length])


def test_every_truncation_of_an_entry_or_a_configuration_is_refused() -> None:
    encoded_entry = encode_entry(
        Entry(3, 17, EntryKind.CONFIG, encode_configuration(CONFIGURATION))
    )
    for length in range(len(encoded_entry)):
        with pytest.raises(CodecError):
            decode_entry(encoded_entry[:length])
    encoded_configuration = encode_configuration(CONFIGURATION)
    for length in range(len(encoded_configuration)):
        with pytest.raises(CodecError):
            decode_configuration(encoded_configuration[:length])


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_trailing_bytes_after_a_message_are_refused(message: Message) -> None:
    encoded = encode_message(message)
    for garbage in (b"\x00", b"\xc0", encoded):
        with pytest.raises(CodecError):
            decode_message(encoded + garbage)


def test_trailing_bytes_after_an_entry_or_a_configuration_are_refused() -> None:
    with pytest.raises(CodecError):
        decode_entry(encode_entry(Entry(1, 1)) + b"\x00")
    with pytest.raises(CodecError):
        decode_configuration(encode_configuration(CONFIGURATION) + b"\x00")


@pytest.mark.parametrize("not_bytes", [None, "text", 42, [1, 2]])
def test_input_that_is_not_bytes_is_refused(not_bytes: object) -> None:
    for decode in (decode_message, decode_entry, decode_configuration):
        with pytest.raises(CodecError):
            decode(unchecked(not_bytes))


@pytest.mark.parametrize(
    "hostile",
    [
        # A top-level array claiming ~1M elements, backed by ~1 MiB of bytes.
        b"\xdd" + struct.pack(">I", 1_000_000) + bytes(1_040_000),
        # An AppendEntries whose entries array claims ~1M entries.
        b"\x98\x03\x01\x01\x02\x00\x00\x00\xdd" + struct.pack(">I", 1_000_000) + bytes(1_040_000),
        # A bin claiming 4 GiB of data that is not there.
        b"\x96\x05\x01\x01\x02\x93\x00\x00\x93\x90\x90\xc4\x00\xc6\xff\xff\xff\xff",
    ],
    ids=["message-array", "entries-array", "bin"],
)
def test_a_hostile_length_prefix_does_not_make_the_decoder_allocate(hostile: bytes) -> None:
    # msgpack allocates an array's slots when it reads the length prefix: without a limit
    # this input would cost ~8 MiB, eight times its own size.
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_message(hostile)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1024 * 1024


# --- message-level structure ----------------------------------------------------------------


@pytest.mark.parametrize("tag", [0, 9, 255, -1, 2**40, True, None, 3.0, b"\x03", "3"])
def test_an_unknown_type_tag_is_refused(tag: object) -> None:
    def set_tag(obj: list[Any]) -> None:
        obj[0] = tag

    with pytest.raises(CodecError, match=r"tag|msgpack"):
        decode_message(repack(encode_message(SAMPLE_MESSAGES[0]), set_tag))


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=sample_id)
def test_a_message_with_a_field_too_many_or_too_few_is_refused(message: Message) -> None:
    encoded = encode_message(message)
    with pytest.raises(CodecError, match="expected an array"):
        decode_message(repack(encoded, lambda obj: obj.append(0)))
    with pytest.raises(CodecError, match="expected an array"):
        decode_message(repack(encoded, lambda obj: obj.pop()))


@pytest.mark.parametrize("top_level", [None, 3, b"", [], {}, [[3]]])
def test_a_top_level_value_that_is_not_a_tagged_array_is_refused(top_level: object) -> None:
    with pytest.raises(CodecError):
        decode_message(msgpack.packb(top_level, use_bin_type=True))


# --- field-level rules ----------------------------------------------------------------------
# Each bad message is built as a dataclass and encoded: encoding does not validate, so this
# sends exactly what a buggy or hostile peer could.

TERM_RANGE = (0, TERM_MAX)
INDEX_RANGE = (0, INDEX_MAX)
NODE_ID_RANGE = (1, NODE_ID_MAX)  # NO_NODE is never valid on the wire: every field is a real node
INTEGER_FIELD_RANGES: dict[str, tuple[int, int]] = {
    "term": (0, MESSAGE_TERM_MAX),  # a receiver must be able to increment what it adopts
    "source": NODE_ID_RANGE,
    "target": NODE_ID_RANGE,
    "last_log_index": INDEX_RANGE,
    "last_log_term": TERM_RANGE,
    "prev_log_index": INDEX_RANGE,
    "prev_log_term": (0, MESSAGE_TERM_MAX),  # at most the message term
    "leader_commit": INDEX_RANGE,
    "match_index": INDEX_RANGE,
    "reject_index": INDEX_RANGE,
    "conflict_index": INDEX_RANGE,
    "conflict_term": TERM_RANGE,
    "read_round": (0, READ_ROUND_MAX),
    "meta.index": INDEX_RANGE,
    "meta.term": (0, MESSAGE_TERM_MAX),  # at most the message term
}
BOOLEAN_FIELDS = {"pre_vote", "leadership_transfer", "vote_granted", "success"}
OTHER_FIELDS = {"entries", "data"}  # tested on their own below

# Bases where every integer can reach both ends of its range: the message term is
# MESSAGE_TERM_MAX (entry, prev_log and snapshot terms may not exceed it) and everything
# related to it is 0.
EDGE_BASES: list[Message] = [
    RequestVote(MESSAGE_TERM_MAX, 1, 2, 0, 0),
    RequestVoteResponse(MESSAGE_TERM_MAX, 1, 2, vote_granted=False),
    AppendEntries(MESSAGE_TERM_MAX, 1, 2, 0, 0, (), 0),
    AppendEntriesResponse(MESSAGE_TERM_MAX, 1, 2, success=True),
    InstallSnapshot(MESSAGE_TERM_MAX, 1, 2, SnapshotMeta(0, 0, CONFIGURATION), b"x"),
    Heartbeat(MESSAGE_TERM_MAX, 1, 2, 0),
    HeartbeatResponse(MESSAGE_TERM_MAX, 1, 2),
    TimeoutNow(MESSAGE_TERM_MAX, 1, 2),
]


def integer_field_paths(message: Message) -> list[str]:
    paths = []
    for field in dataclasses.fields(message):
        if field.name == "meta":
            paths += ["meta.index", "meta.term"]
        elif field.name not in BOOLEAN_FIELDS | OTHER_FIELDS:
            assert field.name in INTEGER_FIELD_RANGES, f"no range known for {field.name}"
            paths.append(field.name)
    return paths


INTEGER_FIELD_CASES = [
    pytest.param(base, path, id=f"{type(base).__name__}.{path}")
    for base in EDGE_BASES
    for path in integer_field_paths(base)
]
BOOLEAN_FIELD_CASES = [
    pytest.param(base, field.name, id=f"{type(base).__name__}.{field.name}")
    for base in EDGE_BASES
    for field in dataclasses.fields(base)
    if field.name in BOOLEAN_FIELDS
]


@pytest.mark.parametrize("base", EDGE_BASES, ids=lambda base: type(base).__name__)
def test_a_message_term_that_could_not_be_incremented_is_refused_at_decode(
    base: Message,
) -> None:
    # Issue #20: one Heartbeat at TERM_MAX left every node a candidate forever, since its
    # next RequestVote overflowed the term range. A term a receiver could adopt must leave
    # room for one more election.
    forged = dataclasses.replace(base, term=TERM_MAX)  # type: ignore[call-arg]
    with pytest.raises(CodecError, match="term"):
        decode_message(encode_message(forged))
    assert MESSAGE_TERM_MAX + 1 == TERM_MAX


def test_the_edge_bases_cover_every_message_type_and_are_valid() -> None:
    assert {type(base) for base in EDGE_BASES} == set(MESSAGE_TYPES)
    for base in EDGE_BASES:
        assert decode_message(encode_message(base)) == base


@pytest.mark.parametrize(("base", "path"), INTEGER_FIELD_CASES)
def test_an_integer_field_accepts_both_ends_of_its_range(base: Message, path: str) -> None:
    low, high = INTEGER_FIELD_RANGES[path]
    for value in (low, high):
        message = replace_field(base, path, value)
        assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(("base", "path"), INTEGER_FIELD_CASES)
def test_an_integer_field_refuses_values_just_outside_its_range(base: Message, path: str) -> None:
    low, high = INTEGER_FIELD_RANGES[path]
    for value in (low - 1, high + 1):
        # A snapshot's term is bounded by the message term, which is checked first.
        with pytest.raises(CodecError, match=r"expected an integer|above the message term"):
            decode_message(encode_message(replace_field(base, path, value)))


@pytest.mark.parametrize(("base", "path"), INTEGER_FIELD_CASES)
def test_an_integer_field_refuses_a_bool_smuggled_in_its_place(base: Message, path: str) -> None:
    # True == 1 in Python, so an isinstance check would let it through as node 1 or index 1.
    for value in (True, False):
        with pytest.raises(CodecError, match="expected an integer"):
            decode_message(encode_message(replace_field(base, path, value)))


@pytest.mark.parametrize(("base", "path"), INTEGER_FIELD_CASES)
def test_an_integer_field_refuses_other_types(base: Message, path: str) -> None:
    for value in (None, 1.0, b"\x01", [1]):
        with pytest.raises(CodecError):
            decode_message(encode_message(replace_field(base, path, value)))


@pytest.mark.parametrize(("base", "path"), BOOLEAN_FIELD_CASES)
def test_a_boolean_field_accepts_true_and_false_and_refuses_anything_else(
    base: Message, path: str
) -> None:
    for value in (True, False):
        message = replace_field(base, path, value)
        assert decode_message(encode_message(message)) == message
    for bad in (0, 1, None, b""):
        with pytest.raises(CodecError, match="expected a boolean"):
            decode_message(encode_message(replace_field(base, path, bad)))


def test_no_message_may_name_no_node_as_its_source_or_target() -> None:
    for base in EDGE_BASES:
        for path in ("source", "target"):
            with pytest.raises(CodecError, match=path):
                decode_message(encode_message(replace_field(base, path, NO_NODE)))


# --- AppendEntries entries -------------------------------------------------------------------


def append_entries_with(
    log: list[Entry], *, term: int = 5, prev_log_index: int = 10, prev_log_term: int = 3
) -> bytes:
    return encode_message(
        AppendEntries(
            term=term,
            source=1,
            target=2,
            prev_log_index=prev_log_index,
            prev_log_term=prev_log_term,
            entries=tuple(log),
            leader_commit=10,
        )
    )


def consecutive_entries(count: int, *, first_index: int = 11, term: int = 5) -> list[Entry]:
    return [Entry(term, first_index + offset, EntryKind.NORMAL, b"") for offset in range(count)]


def test_exactly_entries_per_message_max_entries_are_accepted_and_one_more_is_refused() -> None:
    at_limit = decode_message(append_entries_with(consecutive_entries(ENTRIES_PER_MESSAGE_MAX)))
    assert isinstance(at_limit, AppendEntries)
    assert len(at_limit.entries) == ENTRIES_PER_MESSAGE_MAX
    # Refused by the unpacker's array limit or by the count check: either names the count.
    with pytest.raises(CodecError, match=str(ENTRIES_PER_MESSAGE_MAX + 1)):
        decode_message(append_entries_with(consecutive_entries(ENTRIES_PER_MESSAGE_MAX + 1)))


def test_entries_must_start_right_after_prev_log_index() -> None:
    assert decode_message(append_entries_with(consecutive_entries(2, first_index=11)))
    for first_index in (10, 12, 0):
        with pytest.raises(CodecError, match="consecutive"):
            decode_message(append_entries_with(consecutive_entries(2, first_index=first_index)))


def test_entries_with_a_gap_or_a_repeated_index_are_refused() -> None:
    for indexes_sent in ([11, 13], [11, 11], [11, 12, 12], [12, 11]):
        log = [Entry(5, index, EntryKind.NORMAL, b"") for index in indexes_sent]
        with pytest.raises(CodecError, match="consecutive"):
            decode_message(append_entries_with(log))


def test_an_entry_index_smuggled_as_a_bool_is_refused() -> None:
    # prev_log_index 0: the first index must be 1, and True == 1.
    log = [Entry(5, unchecked(True), EntryKind.NORMAL, b"")]
    with pytest.raises(CodecError, match="consecutive"):
        decode_message(append_entries_with(log, prev_log_index=0, prev_log_term=0))


def test_entry_indexes_may_reach_index_max_but_not_pass_it() -> None:
    last = decode_message(
        append_entries_with(
            consecutive_entries(1, first_index=INDEX_MAX), prev_log_index=INDEX_MAX - 1
        )
    )
    assert isinstance(last, AppendEntries)
    assert last.entries[0].index == INDEX_MAX
    with pytest.raises(CodecError, match="past"):
        decode_message(
            append_entries_with(
                consecutive_entries(1, first_index=INDEX_MAX + 1), prev_log_index=INDEX_MAX
            )
        )


def test_an_entry_term_may_equal_the_message_term_but_not_exceed_it() -> None:
    assert decode_message(append_entries_with(consecutive_entries(1, term=5), term=5))
    with pytest.raises(CodecError, match="term"):
        decode_message(append_entries_with(consecutive_entries(1, term=6), term=5))


def test_entry_terms_may_repeat_but_never_decrease() -> None:
    # Log Matching (§5.3): terms in a log never go down, starting from prev_log_term.
    same = [Entry(3, 11, EntryKind.NORMAL, b""), Entry(3, 12, EntryKind.NORMAL, b"")]
    assert decode_message(append_entries_with(same, prev_log_term=3))
    decreasing = [Entry(4, 11, EntryKind.NORMAL, b""), Entry(3, 12, EntryKind.NORMAL, b"")]
    with pytest.raises(CodecError, match="non-decreasing"):
        decode_message(append_entries_with(decreasing, prev_log_term=3))
    below_prev = [Entry(2, 11, EntryKind.NORMAL, b"")]
    with pytest.raises(CodecError, match="non-decreasing"):
        decode_message(append_entries_with(below_prev, prev_log_term=3))


def test_an_entry_term_of_zero_or_a_bool_is_refused() -> None:
    for bad_term in (0, True, False, -1, None):
        log = [Entry(unchecked(bad_term), 1, EntryKind.NORMAL, b"")]
        with pytest.raises(CodecError, match="term"):
            decode_message(append_entries_with(log, prev_log_index=0, prev_log_term=0))


def test_a_term_zero_message_carries_no_entries() -> None:
    assert decode_message(append_entries_with([], term=0, prev_log_term=0))
    with pytest.raises(CodecError, match="term"):
        decode_message(append_entries_with(consecutive_entries(1, term=0), term=0, prev_log_term=0))


def test_prev_log_term_may_equal_the_message_term_but_not_exceed_it() -> None:
    assert decode_message(append_entries_with([], term=5, prev_log_term=5))
    with pytest.raises(CodecError, match="prev_log_term"):
        decode_message(append_entries_with([], term=5, prev_log_term=6))


@pytest.mark.parametrize("kind", [3, 255, -1, True, False, None, b"\x00"])
def test_an_entry_of_unknown_kind_is_refused(kind: object) -> None:
    log = [Entry(5, 11, unchecked(kind), b"")]
    with pytest.raises(CodecError, match="kind"):
        decode_message(append_entries_with(log))
    with pytest.raises(CodecError, match="kind"):
        decode_entry(encode_entry(log[0]))


@pytest.mark.parametrize("data", [None, 0, [b""]])
def test_entry_data_that_is_not_bytes_is_refused(data: object) -> None:
    log = [Entry(5, 11, EntryKind.NORMAL, unchecked(data))]
    with pytest.raises(CodecError, match="bytes"):
        decode_message(append_entries_with(log))
    with pytest.raises(CodecError, match="bytes"):
        decode_entry(encode_entry(log[0]))


def test_entry_data_sent_as_a_string_is_refused() -> None:
    log = [Entry(5, 11, EntryKind.NORMAL, unchecked("set x 1"))]
    with pytest.raises(CodecError):
        decode_message(append_entries_with(log))


def test_a_noop_entry_must_be_empty() -> None:
    assert decode_message(append_entries_with([Entry(5, 11, EntryKind.NOOP, b"")]))
    with pytest.raises(CodecError, match="NOOP"):
        decode_message(append_entries_with([Entry(5, 11, EntryKind.NOOP, b"x")]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        msgpack.packb([[1], [1], b""]),  # a node both voter and learner
        msgpack.packb([[0], [], b""]),  # NO_NODE as a member
        msgpack.packb([[1, 1], [], b""]),  # a duplicate member
        msgpack.packb([[1], [], b""]) + b"\x00",  # trailing bytes
    ],
    ids=["empty", "garbage", "voter-and-learner", "no-node", "duplicate", "trailing"],
)
def test_a_config_entry_whose_data_is_not_a_configuration_is_refused(data: bytes) -> None:
    log = [Entry(5, 11, EntryKind.CONFIG, data)]
    with pytest.raises(CodecError, match="CONFIG"):
        decode_message(append_entries_with(log))
    with pytest.raises(CodecError, match="CONFIG"):
        decode_entry(encode_entry(log[0]))


def test_a_config_entry_with_a_valid_configuration_is_accepted() -> None:
    entry = Entry(5, 11, EntryKind.CONFIG, encode_configuration(CONFIGURATION))
    decoded = decode_message(append_entries_with([entry]))
    assert isinstance(decoded, AppendEntries)
    assert decode_configuration(decoded.entries[0].data) == CONFIGURATION


def test_malformed_entry_arrays_are_refused() -> None:
    encoded = append_entries_with(consecutive_entries(2))

    def entries_not_an_array(obj: list[Any]) -> None:
        obj[7] = {}

    def entry_too_long(obj: list[Any]) -> None:
        obj[7][1].append(b"")

    def entry_too_short(obj: list[Any]) -> None:
        obj[7][0].pop()

    def entry_not_an_array(obj: list[Any]) -> None:
        obj[7][0] = 5

    for edit in (entries_not_an_array, entry_too_long, entry_too_short, entry_not_an_array):
        with pytest.raises(CodecError, match="expected"):
            decode_message(repack(encoded, edit))


# --- InstallSnapshot --------------------------------------------------------------------------


def install_snapshot(
    *, term: int = 5, meta: SnapshotMeta | None = None, data: object = b""
) -> InstallSnapshot:
    return InstallSnapshot(term, 1, 2, meta or SnapshotMeta(9, 4, CONFIGURATION), unchecked(data))


@given(install_snapshots())
def test_the_head_of_an_install_snapshot_then_its_data_is_the_message(
    message: InstallSnapshot,
) -> None:
    # The leader sends a large snapshot as head + data chunks, never joined into one payload.
    head = encode_install_snapshot_head(message, len(message.data))
    assert decode_message(head + message.data) == message


def test_the_head_and_data_of_a_large_snapshot_are_the_bytes_encode_message_makes() -> None:
    message = install_snapshot(data=bytes(range(256)) * 256)  # 65,536 bytes: bin 32
    head = encode_install_snapshot_head(dataclasses.replace(message, data=b""), 65_536)
    assert head + message.data == encode_message(message)
    with pytest.raises(ValueError, match="InstallSnapshot data"):
        encode_install_snapshot_head(message, INSTALL_SNAPSHOT_BYTES_MAX + 1)


def test_a_snapshot_term_may_equal_the_message_term_but_not_exceed_it() -> None:
    at_term = install_snapshot(meta=SnapshotMeta(9, 5, CONFIGURATION))
    assert decode_message(encode_message(at_term)) == at_term
    with pytest.raises(CodecError, match="snapshot term"):
        decode_message(encode_message(install_snapshot(meta=SnapshotMeta(9, 6, CONFIGURATION))))


def test_a_snapshot_with_an_invalid_configuration_is_refused() -> None:
    overlapping = Configuration(voters=frozenset({1, 2}), learners=frozenset({2}))
    with pytest.raises(CodecError, match="both voter and learner"):
        decode_message(encode_message(install_snapshot(meta=SnapshotMeta(9, 4, overlapping))))
    with pytest.raises(CodecError, match="both voter and learner"):
        snapshot_meta_from_obj(snapshot_meta_to_obj(SnapshotMeta(9, 4, overlapping)))


@pytest.mark.parametrize("data", [None, 0, [b""]])
def test_snapshot_data_that_is_not_bytes_is_refused(data: object) -> None:
    with pytest.raises(CodecError, match="data"):
        decode_message(encode_message(install_snapshot(data=data)))


def _exact_size_encodings(encode: Callable[[int], bytes], size: int) -> tuple[bytes, bytes]:
    """The encodings whose lengths are `size` and `size + 1`, from a payload size to encoding
    function (the header size does not change within the range of large bins)."""
    probe_bytes = size - 1000
    overhead_bytes = len(encode(probe_bytes)) - probe_bytes
    exact, one_more = encode(size - overhead_bytes), encode(size - overhead_bytes + 1)
    assert (len(exact), len(one_more)) == (size, size + 1)
    return exact, one_more


def test_a_message_of_exactly_message_bytes_max_is_accepted_and_one_byte_more_is_refused() -> None:
    def append_entries_encoding(data_bytes: int) -> bytes:
        entry = Entry(1, 1, EntryKind.NORMAL, bytes(data_bytes))
        return encode_message(AppendEntries(1, 1, 2, 0, 0, (entry,), 0))

    exact, too_big = _exact_size_encodings(append_entries_encoding, MESSAGE_BYTES_MAX)
    decoded = decode_message(exact)
    assert isinstance(decoded, AppendEntries)
    del decoded
    with pytest.raises(CodecError, match="more than the limit"):
        decode_message(too_big)


def test_only_an_install_snapshot_may_be_larger_than_message_bytes_max_up_to_its_own_limit() -> (
    None
):
    def snapshot_encoding(data_bytes: int) -> bytes:
        return encode_message(install_snapshot(data=bytes(data_bytes)))

    limit = MESSAGE_BYTES_MAX + 4096  # the real one, 1 GiB, is too much memory for a test
    exact, too_big = _exact_size_encodings(snapshot_encoding, limit)
    decoded = decode_message(exact, install_snapshot_bytes_max=limit)
    assert isinstance(decoded, InstallSnapshot) and len(decoded.data) > MESSAGE_BYTES_MAX
    del decoded
    with pytest.raises(CodecError, match="more than the limit"):
        decode_message(too_big, install_snapshot_bytes_max=limit)
    assert INSTALL_SNAPSHOT_BYTES_MAX >= MESSAGE_BYTES_MAX


# --- entries and snapshot metadata on their own ----------------------------------------------


def test_a_standalone_entry_needs_term_and_index_from_one_to_their_max() -> None:
    for term, index in ((1, 1), (TERM_MAX, INDEX_MAX)):
        entry = Entry(term, index, EntryKind.NORMAL, b"x")
        assert decode_entry(encode_entry(entry)) == entry
        assert entry_from_obj([term, index, 0, b"x"]) == entry
    for term, index in (
        (0, 1),
        (1, 0),
        (TERM_MAX + 1, 1),
        (1, INDEX_MAX + 1),
        (True, 1),
        (1, True),
    ):
        with pytest.raises(CodecError, match=r"entry (term|index)"):
            decode_entry(encode_entry(Entry(term, index, EntryKind.NORMAL, b"x")))
        with pytest.raises(CodecError, match=r"entry (term|index)"):
            entry_from_obj([term, index, 0, b"x"])


@pytest.mark.parametrize("obj", [None, [], [1, 1, 0], [1, 1, 0, b"", 0], (1, 1, 0, b""), b"x"])
def test_an_entry_object_of_the_wrong_shape_is_refused(obj: object) -> None:
    with pytest.raises(CodecError, match="entry"):
        entry_from_obj(obj)


def test_an_entry_of_message_bytes_max_is_accepted_and_one_byte_more_is_refused() -> None:
    probe = encode_entry(Entry(1, 1, EntryKind.NORMAL, bytes(MESSAGE_BYTES_MAX - 1000)))
    overhead_bytes = len(probe) - (MESSAGE_BYTES_MAX - 1000)
    del probe
    exact = encode_entry(Entry(1, 1, EntryKind.NORMAL, bytes(MESSAGE_BYTES_MAX - overhead_bytes)))
    assert len(exact) == MESSAGE_BYTES_MAX
    assert len(decode_entry(exact).data) == MESSAGE_BYTES_MAX - overhead_bytes
    with pytest.raises(CodecError, match="more than the limit"):
        decode_entry(exact + b"\x00")


def test_snapshot_meta_index_and_term_reach_their_max_but_not_past_it() -> None:
    at_max = SnapshotMeta(INDEX_MAX, TERM_MAX, CONFIGURATION)
    assert snapshot_meta_from_obj(snapshot_meta_to_obj(at_max)) == at_max
    for bad in (
        [INDEX_MAX + 1, 0, configuration_to_obj(CONFIGURATION)],
        [0, TERM_MAX + 1, configuration_to_obj(CONFIGURATION)],
        [-1, 0, configuration_to_obj(CONFIGURATION)],
        [True, 0, configuration_to_obj(CONFIGURATION)],
        [0, 0],
        None,
    ):
        with pytest.raises(CodecError, match="snapshot meta"):
            snapshot_meta_from_obj(bad)


# --- configurations ------------------------------------------------------------------------


def test_a_configuration_may_name_members_max_members_but_not_one_more() -> None:
    at_limit = Configuration(
        voters=frozenset(range(1, MEMBERS_MAX // 2 + 1)),
        learners=frozenset(range(MEMBERS_MAX // 2 + 1, MEMBERS_MAX + 1)),
    )
    assert decode_configuration(encode_configuration(at_limit)) == at_limit
    one_more = dataclasses.replace(at_limit, voters=at_limit.voters | {MEMBERS_MAX + 1})
    with pytest.raises(CodecError):
        decode_configuration(encode_configuration(one_more))
    with pytest.raises(CodecError, match="more than"):
        configuration_from_obj(configuration_to_obj(one_more))


def test_a_configuration_context_may_be_context_bytes_max_but_not_one_more() -> None:
    at_limit = Configuration(voters=frozenset({1}), context=bytes(CONTEXT_BYTES_MAX))
    assert decode_configuration(encode_configuration(at_limit)) == at_limit
    one_more = dataclasses.replace(at_limit, context=bytes(CONTEXT_BYTES_MAX + 1))
    with pytest.raises(CodecError, match="context"):
        configuration_from_obj(configuration_to_obj(one_more))
    with pytest.raises(CodecError):
        decode_configuration(encode_configuration(one_more))


def test_the_largest_valid_configuration_fits_in_configuration_bytes_max() -> None:
    # The most members, each with the longest id encoding, and the longest context.
    largest = Configuration(
        voters=frozenset(range(NODE_ID_MAX - MEMBERS_MAX // 2 + 1, NODE_ID_MAX + 1)),
        learners=frozenset(
            range(NODE_ID_MAX - MEMBERS_MAX + 1, NODE_ID_MAX - MEMBERS_MAX // 2 + 1)
        ),
        context=bytes(CONTEXT_BYTES_MAX),
    )
    encoded = encode_configuration(largest)
    assert len(encoded) <= CONFIGURATION_BYTES_MAX
    assert decode_configuration(encoded) == largest


def test_configuration_bytes_max_is_checked_before_unpacking() -> None:
    # Exactly the limit gets past the size check (and fails later as trailing bytes) ...
    at_limit = encode_configuration(CONFIGURATION)
    at_limit += bytes(CONFIGURATION_BYTES_MAX - len(at_limit))
    with pytest.raises(CodecError, match="not valid msgpack"):
        decode_configuration(at_limit)
    # ... one byte more is refused for its size alone.
    with pytest.raises(CodecError, match="more than the limit"):
        decode_configuration(at_limit + b"\x00")


@pytest.mark.parametrize(
    "obj",
    [
        [[0], [], b""],
        [[NODE_ID_MAX + 1], [], b""],
        [[True], [], b""],
        [[1, 1], [], b""],
        [[1], [1], b""],
        [[1], [], "text"],
        [[1], [], None],
        [[1], []],
        [(1,), [], b""],
        None,
    ],
)
def test_a_malformed_configuration_object_is_refused(obj: object) -> None:
    with pytest.raises(CodecError, match="configuration"):
        configuration_from_obj(obj)


def test_configuration_node_ids_may_reach_node_id_max() -> None:
    configuration = Configuration(voters=frozenset({1, NODE_ID_MAX}))
    assert decode_configuration(encode_configuration(configuration)) == configuration
