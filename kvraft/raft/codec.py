"""Bytes <-> Raft values, with msgpack, validating everything it decodes.

Whatever arrives from a peer or from disk is untrusted: decoding checks every
type, range and size and raises `CodecError` (never another exception) on
anything malformed. Encoding trusts its input (the core built it) and does not
validate: keeping within the limits below is the sender's job, and decoding is
the one gate.

Wire format (msgpack, `use_bin_type=True`, one top-level array, no maps, no
strings, no extension types)::

    message:    [tag, term, source, target, field, ...]
      1 RequestVote            [.., last_log_index, last_log_term, pre_vote, leadership_transfer]
      2 RequestVoteResponse    [.., vote_granted, pre_vote]
      3 AppendEntries          [.., prev_log_index, prev_log_term, leader_commit, [entry, ...]]
      4 AppendEntriesResponse  [.., success, match_index, reject_index, conflict_index,
                                conflict_term]
      5 InstallSnapshot        [.., snapshot_meta, data]
      6 Heartbeat              [.., leader_commit, read_round]
      7 HeartbeatResponse      [.., read_round]
      8 TimeoutNow             [..]
    entry:          [term, index, kind, data]
    snapshot_meta:  [index, term, configuration]
    configuration:  [sorted voter ids, sorted learner ids, context]

Fields are positional, so decoding never looks anything up by name: the hot
path (AppendEntries with hundreds of small entries) is one loop of type
checks and direct dataclass construction. Integers must be real `int`s: msgpack
booleans are refused where an integer is expected and vice versa.

`entry_to_obj`/`entry_from_obj`, `snapshot_meta_to_obj`/`snapshot_meta_from_obj`
and `configuration_to_obj`/`configuration_from_obj` give the same layouts as
plain msgpack-ready objects, so the WAL and snapshot files can embed them in
their own records and still validate them the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack

from kvraft.raft.messages import (
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

__all__ = [
    "CONFIGURATION_BYTES_MAX",
    "CONTEXT_BYTES_MAX",
    "ENTRIES_PER_MESSAGE_MAX",
    "INDEX_MAX",
    "INSTALL_SNAPSHOT_BYTES_MAX",
    "MEMBERS_MAX",
    "MESSAGE_BYTES_MAX",
    "MESSAGE_TERM_MAX",
    "NODE_ID_MAX",
    "READ_ROUND_MAX",
    "TERM_MAX",
    "CodecError",
    "configuration_from_obj",
    "configuration_to_obj",
    "decode_configuration",
    "decode_entry",
    "decode_message",
    "encode_configuration",
    "encode_entry",
    "encode_install_snapshot_head",
    "encode_message",
    "entry_from_obj",
    "entry_to_obj",
    "snapshot_meta_from_obj",
    "snapshot_meta_to_obj",
]

NODE_ID_MAX = 2**31 - 1
"""The largest node id; ids are positive."""

MEMBERS_MAX = 64
"""The most members (voters + learners) a configuration may name."""

CONTEXT_BYTES_MAX = 64 * 1024
"""The largest opaque shell context a configuration may carry."""

CONFIGURATION_BYTES_MAX = CONTEXT_BYTES_MAX + 4096
"""The largest encoded configuration: the context plus room for MEMBERS_MAX ids
(at most 5 bytes each) and the msgpack headers. Checked before unpacking."""

TERM_MAX = 2**63 - 1
"""The largest term: a signed 64-bit integer, so any other implementation or store can hold it."""

MESSAGE_TERM_MAX = TERM_MAX - 1
"""The largest term a message may carry as its own term, the one a receiver adopts (issue
#20): one below TERM_MAX, so a node can always increment a term it adopted from a message and
its next RequestVote still encodes. One Heartbeat at TERM_MAX used to leave every node a
candidate forever (its next RequestVote overflowed the range), surviving restarts."""

INDEX_MAX = 2**63 - 1
"""The largest log index, for the same reason as TERM_MAX."""

READ_ROUND_MAX = 2**63 - 1
"""The largest ReadIndex round number a heartbeat may carry, for the same reason as TERM_MAX."""

ENTRIES_PER_MESSAGE_MAX = 10_000
"""The most entries one AppendEntries may carry; the leader's batching must stay within it."""

MESSAGE_BYTES_MAX = 64 * 1024 * 1024
"""The largest encoded message but InstallSnapshot (and the largest encoded entry), checked
before unpacking."""

INSTALL_SNAPSHOT_BYTES_MAX = 1024 * 1024 * 1024
"""The largest encoded InstallSnapshot: it carries the whole state machine, which may be larger
than any other message (the transport sends it in pieces, up to the same limit)."""

_ARRAY_LENGTH_MAX = ENTRIES_PER_MESSAGE_MAX
"""The longest array any valid encoding holds (the entries of an AppendEntries). msgpack
allocates an array's slots as soon as it reads the length prefix, so this is passed to it to
stop a hostile prefix from allocating ~8 bytes per input byte."""
assert _ARRAY_LENGTH_MAX >= MEMBERS_MAX

_TAG_REQUEST_VOTE = 1
_TAG_REQUEST_VOTE_RESPONSE = 2
_TAG_APPEND_ENTRIES = 3
_TAG_APPEND_ENTRIES_RESPONSE = 4
_TAG_INSTALL_SNAPSHOT = 5
_INSTALL_SNAPSHOT_HEAD = bytes((0x90 | 6, _TAG_INSTALL_SNAPSHOT))
"""How every encoded InstallSnapshot starts: a msgpack array of 6 (fixarray), then its tag."""
_TAG_HEARTBEAT = 6
_TAG_HEARTBEAT_RESPONSE = 7
_TAG_TIMEOUT_NOW = 8

_ENTRY_KIND_BY_VALUE: dict[int, EntryKind] = {kind.value: kind for kind in EntryKind}

# The AppendEntries hot path fills each Entry's slots directly: about twice as fast as the
# frozen dataclass's __init__, which goes through object.__setattr__ by name for every field.
# That is only equivalent while Entry is exactly these four slots and has no __post_init__,
# so a change to Entry must fail here, at import, rather than leave a field unset.
_ENTRY_FIELD_NAMES = ("term", "index", "kind", "data")
if (
    tuple(field.name for field in dataclasses.fields(Entry)) != _ENTRY_FIELD_NAMES
    or hasattr(Entry, "__post_init__")
    or not hasattr(Entry, "__slots__")
):
    raise RuntimeError("Entry's fields changed: update kvraft.raft.codec._entries_from_obj")
_ENTRY_SLOT_SETTERS: tuple[Any, ...] = tuple(
    vars(Entry)[name].__set__ for name in _ENTRY_FIELD_NAMES
)


class CodecError(ValueError):
    """The bytes are not a valid encoding: the sender's (or the disk's) fault."""


# --- shared checks ----------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A short description of a bad value for an error message (never a 64 MiB repr)."""
    if value is None or type(value) in (bool, int, float):
        return repr(value)
    if isinstance(value, bytes | str | list | dict):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    # `type(...) is int`, not isinstance: a msgpack boolean is not an integer here.
    if type(value) is not int or not low <= value <= high:
        raise CodecError(f"{what}: expected an integer in {low}..{high}, got {_describe(value)}")
    return value


def _term(value: Any, what: str) -> int:
    return _int_in(value, 0, TERM_MAX, what)


def _message_term(value: Any, what: str) -> int:
    """A message's own term: refused at decode if a receiver could not increment it."""
    return _int_in(value, 0, MESSAGE_TERM_MAX, what)


def _index(value: Any, what: str) -> int:
    return _int_in(value, 0, INDEX_MAX, what)


def _node_id(value: Any, what: str) -> int:
    # No message field can name "nobody": every id on the wire is a real node.
    return _int_in(value, 1, NODE_ID_MAX, what)


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise CodecError(f"{what}: expected a boolean, got {_describe(value)}")
    return value


def _list_of(value: Any, length: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != length:
        raise CodecError(f"{what}: expected an array of {length} fields, got {_describe(value)}")
    return value


def _unpack(data: bytes, bytes_max: int, array_length_max: int, what: str) -> Any:
    """Unpack one msgpack value, refusing oversized input before reading a byte of it."""
    try:
        size = len(data)
    except TypeError:
        raise CodecError(f"{what}: expected bytes, got {_describe(data)}") from None
    if size > bytes_max:
        raise CodecError(f"{what}: {size} bytes is more than the limit of {bytes_max} bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            # No limit may exceed the input: a length prefix must be backed by real bytes.
            max_bin_len=size,
            max_array_len=min(array_length_max, size),
            max_str_len=0,  # the format has no strings, maps or extension types
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as error:  # msgpack raises many types on garbage, trailing data included
        raise CodecError(f"{what}: not valid msgpack ({type(error).__name__}: {error})") from None


# --- configurations -------------------------------------------------------------------------


def configuration_to_obj(configuration: Configuration) -> list[Any]:
    """The msgpack-ready form of a configuration: [sorted voters, sorted learners, context]."""
    return [sorted(configuration.voters), sorted(configuration.learners), configuration.context]


def encode_configuration(configuration: Configuration) -> bytes:
    """Encode a configuration for a CONFIG log entry or a snapshot's metadata."""
    data: bytes = msgpack.packb(configuration_to_obj(configuration), use_bin_type=True)
    return data


def _node_ids(value: Any, what: str) -> frozenset[int]:
    if not isinstance(value, list) or len(value) > MEMBERS_MAX:
        raise CodecError(f"{what}: expected a list of at most {MEMBERS_MAX} node ids")
    ids = set()
    for node_id in value:
        if type(node_id) is not int or not 1 <= node_id <= NODE_ID_MAX:
            raise CodecError(f"{what}: node id {_describe(node_id)} is not in 1..{NODE_ID_MAX}")
        ids.add(node_id)
    if len(ids) != len(value):
        raise CodecError(f"{what}: duplicate node ids")
    return frozenset(ids)


def configuration_from_obj(obj: Any) -> Configuration:
    """Validate an already-unpacked configuration."""
    if not isinstance(obj, list) or len(obj) != 3:
        raise CodecError("configuration: expected [voters, learners, context]")
    voters = _node_ids(obj[0], "configuration voters")
    learners = _node_ids(obj[1], "configuration learners")
    if voters & learners:
        raise CodecError("configuration: a node is both voter and learner")
    if len(voters) + len(learners) > MEMBERS_MAX:
        raise CodecError(f"configuration: more than {MEMBERS_MAX} members")
    context = obj[2]
    if not isinstance(context, bytes) or len(context) > CONTEXT_BYTES_MAX:
        raise CodecError(f"configuration context: expected at most {CONTEXT_BYTES_MAX} bytes")
    return Configuration(voters=voters, learners=learners, context=context)


def decode_configuration(data: bytes) -> Configuration:
    """Decode what `encode_configuration` made; `CodecError` on anything else."""
    obj = _unpack(data, CONFIGURATION_BYTES_MAX, MEMBERS_MAX, "configuration")
    return configuration_from_obj(obj)


# --- entries and snapshot metadata ---------------------------------------------------------


def entry_to_obj(entry: Entry) -> list[Any]:
    """The msgpack-ready form of an entry: [term, index, kind, data]."""
    # No int(entry.kind): msgpack packs an int subclass such as EntryKind as its value.
    return [entry.term, entry.index, entry.kind, entry.data]


def _entry_kind(kind: Any, data: Any, what: str) -> EntryKind:
    """Check an entry's kind and that its data is what that kind carries."""
    entry_kind = _ENTRY_KIND_BY_VALUE.get(kind) if type(kind) is int else None
    if entry_kind is None:
        raise CodecError(f"{what}: unknown entry kind {_describe(kind)}")
    if type(data) is not bytes:
        raise CodecError(f"{what}: expected bytes for the data, got {_describe(data)}")
    if entry_kind is EntryKind.NOOP and data:
        raise CodecError(f"{what}: a NOOP entry carries {len(data)} bytes of data")
    if entry_kind is EntryKind.CONFIG:
        # A configuration takes effect as soon as it is appended (§4.1): one that does not
        # decode must be refused here, not found later by the core.
        try:
            decode_configuration(data)
        except CodecError as error:
            raise CodecError(
                f"{what}: CONFIG entry data is not a configuration ({error})"
            ) from None
    return entry_kind


def entry_from_obj(obj: Any) -> Entry:
    """Validate an already-unpacked entry (term and index from 1); `CodecError` if malformed."""
    term, index, kind, data = _list_of(obj, 4, "entry")
    return Entry(
        _int_in(term, 1, TERM_MAX, "entry term"),
        _int_in(index, 1, INDEX_MAX, "entry index"),
        _entry_kind(kind, data, "entry"),
        data,
    )


def encode_entry(entry: Entry) -> bytes:
    """Encode one entry on its own."""
    data: bytes = msgpack.packb(entry_to_obj(entry), use_bin_type=True)
    return data


def decode_entry(data: bytes) -> Entry:
    """Decode what `encode_entry` made; an entry must fit in a message (MESSAGE_BYTES_MAX)."""
    return entry_from_obj(_unpack(data, MESSAGE_BYTES_MAX, _ARRAY_LENGTH_MAX, "entry"))


def snapshot_meta_to_obj(meta: SnapshotMeta) -> list[Any]:
    """The msgpack-ready form of snapshot metadata: [index, term, configuration]."""
    return [meta.index, meta.term, configuration_to_obj(meta.configuration)]


def snapshot_meta_from_obj(obj: Any) -> SnapshotMeta:
    """Validate already-unpacked snapshot metadata; index and term may be 0 (empty snapshot)."""
    index, term, configuration = _list_of(obj, 3, "snapshot meta")
    return SnapshotMeta(
        _index(index, "snapshot meta index"),
        _term(term, "snapshot meta term"),
        configuration_from_obj(configuration),
    )


# --- messages: encoding --------------------------------------------------------------------


def _request_vote_to_obj(message: RequestVote) -> list[Any]:
    return [
        _TAG_REQUEST_VOTE,
        message.term,
        message.source,
        message.target,
        message.last_log_index,
        message.last_log_term,
        message.pre_vote,
        message.leadership_transfer,
    ]


def _request_vote_response_to_obj(message: RequestVoteResponse) -> list[Any]:
    return [
        _TAG_REQUEST_VOTE_RESPONSE,
        message.term,
        message.source,
        message.target,
        message.vote_granted,
        message.pre_vote,
    ]


def _append_entries_to_obj(message: AppendEntries) -> list[Any]:
    return [
        _TAG_APPEND_ENTRIES,
        message.term,
        message.source,
        message.target,
        message.prev_log_index,
        message.prev_log_term,
        message.leader_commit,
        # Inlined entry_to_obj: this runs once per entry on the hot path.
        [[e.term, e.index, e.kind, e.data] for e in message.entries],
    ]


def _append_entries_response_to_obj(message: AppendEntriesResponse) -> list[Any]:
    return [
        _TAG_APPEND_ENTRIES_RESPONSE,
        message.term,
        message.source,
        message.target,
        message.success,
        message.match_index,
        message.reject_index,
        message.conflict_index,
        message.conflict_term,
    ]


def _install_snapshot_to_obj(message: InstallSnapshot) -> list[Any]:
    return [
        _TAG_INSTALL_SNAPSHOT,
        message.term,
        message.source,
        message.target,
        snapshot_meta_to_obj(message.meta),
        message.data,
    ]


def _heartbeat_to_obj(message: Heartbeat) -> list[Any]:
    return [
        _TAG_HEARTBEAT,
        message.term,
        message.source,
        message.target,
        message.leader_commit,
        message.read_round,
    ]


def _heartbeat_response_to_obj(message: HeartbeatResponse) -> list[Any]:
    return [
        _TAG_HEARTBEAT_RESPONSE,
        message.term,
        message.source,
        message.target,
        message.read_round,
    ]


def _timeout_now_to_obj(message: TimeoutNow) -> list[Any]:
    return [_TAG_TIMEOUT_NOW, message.term, message.source, message.target]


_TO_OBJ: dict[type[Any], Callable[[Any], list[Any]]] = {
    RequestVote: _request_vote_to_obj,
    RequestVoteResponse: _request_vote_response_to_obj,
    AppendEntries: _append_entries_to_obj,
    AppendEntriesResponse: _append_entries_response_to_obj,
    InstallSnapshot: _install_snapshot_to_obj,
    Heartbeat: _heartbeat_to_obj,
    HeartbeatResponse: _heartbeat_response_to_obj,
    TimeoutNow: _timeout_now_to_obj,
}


def encode_message(message: Message) -> bytes:
    """Encode a Raft message. It does not validate: see the module docstring."""
    to_obj = _TO_OBJ.get(type(message))
    if to_obj is None:
        raise TypeError(f"not a Raft message: {type(message).__name__}")
    data: bytes = msgpack.packb(to_obj(message), use_bin_type=True)
    return data


def encode_install_snapshot_head(message: InstallSnapshot, data_bytes: int) -> bytes:
    """The encoding of `message` up to its data: followed by `data_bytes` bytes of data, it
    is the encoding of `message` carrying that data (the bytes `encode_message` makes for
    data of 65,536 bytes or more). The leader sends a large snapshot this way, in parts,
    instead of copying all of it into one encoded message. `message.data` is not used."""
    if not 0 <= data_bytes <= INSTALL_SNAPSHOT_BYTES_MAX:
        raise ValueError(f"InstallSnapshot data of {data_bytes} bytes")
    empty = dataclasses.replace(message, data=b"")
    head: bytes = msgpack.packb(_install_snapshot_to_obj(empty), use_bin_type=True)
    # The data is the last field, here an empty bin 8 (0xc4 0x00): a bin 32 instead.
    assert head.endswith(b"\xc4\x00"), head
    return head[:-2] + b"\xc6" + data_bytes.to_bytes(4, "big")


# --- messages: decoding --------------------------------------------------------------------
# Each decoder gets the unpacked top-level array (its tag already checked) and builds the
# dataclass positionally.


def _request_vote_from_obj(obj: list[Any]) -> RequestVote:
    _, term, source, target, last_log_index, last_log_term, pre_vote, transfer = _list_of(
        obj, 8, "RequestVote"
    )
    return RequestVote(
        _message_term(term, "RequestVote term"),
        _node_id(source, "RequestVote source"),
        _node_id(target, "RequestVote target"),
        _index(last_log_index, "RequestVote last_log_index"),
        _term(last_log_term, "RequestVote last_log_term"),
        _flag(pre_vote, "RequestVote pre_vote"),
        _flag(transfer, "RequestVote leadership_transfer"),
    )


def _request_vote_response_from_obj(obj: list[Any]) -> RequestVoteResponse:
    _, term, source, target, vote_granted, pre_vote = _list_of(obj, 6, "RequestVoteResponse")
    return RequestVoteResponse(
        _message_term(term, "RequestVoteResponse term"),
        _node_id(source, "RequestVoteResponse source"),
        _node_id(target, "RequestVoteResponse target"),
        _flag(vote_granted, "RequestVoteResponse vote_granted"),
        _flag(pre_vote, "RequestVoteResponse pre_vote"),
    )


def _entries_from_obj(
    obj: Any, prev_log_index: int, prev_log_term: int, message_term: int
) -> tuple[Entry, ...]:
    """The hot path: entries consecutive from prev_log_index + 1, terms never decreasing from
    prev_log_term and never above the leader's term (the Log Matching property, §5.3)."""
    if type(obj) is not list:
        raise CodecError(f"AppendEntries entries: expected an array, got {_describe(obj)}")
    count = len(obj)
    if count > ENTRIES_PER_MESSAGE_MAX:
        raise CodecError(
            f"AppendEntries entries: {count} entries is more than {ENTRIES_PER_MESSAGE_MAX}"
        )
    if prev_log_index + count > INDEX_MAX:
        raise CodecError(f"AppendEntries entries: indexes run past {INDEX_MAX}")
    entries: list[Entry] = []
    append = entries.append
    index_expected = prev_log_index + 1
    term_min = prev_log_term if prev_log_term > 0 else 1  # a real entry's term is at least 1
    normal = EntryKind.NORMAL
    normal_value = normal.value
    new_object = object.__new__
    set_term, set_index, set_kind, set_data = _ENTRY_SLOT_SETTERS
    for entry_obj in obj:
        if type(entry_obj) is not list or len(entry_obj) != 4:
            raise CodecError(
                f"AppendEntries entry {index_expected}: expected [term, index, kind, data],"
                f" got {_describe(entry_obj)}"
            )
        term, index, kind, data = entry_obj
        if type(term) is not int or not term_min <= term <= message_term:
            raise CodecError(
                f"AppendEntries entry {index_expected}: term {_describe(term)} is not in"
                f" {term_min}..{message_term} (non-decreasing, at most the message term)"
            )
        if type(index) is not int or index != index_expected:
            raise CodecError(
                f"AppendEntries entry: index {_describe(index)} is not consecutive"
                f" (expected {index_expected})"
            )
        # Nearly every entry is a NORMAL command: check it inline, the rest out of line.
        if type(kind) is int and kind == normal_value and type(data) is bytes:
            entry_kind = normal
        else:
            entry_kind = _entry_kind(kind, data, "AppendEntries entry")
        entry = new_object(Entry)
        set_term(entry, term)
        set_index(entry, index)
        set_kind(entry, entry_kind)
        set_data(entry, data)
        append(entry)
        term_min = term
        index_expected += 1
    return tuple(entries)


def _append_entries_from_obj(obj: list[Any]) -> AppendEntries:
    _, term, source, target, prev_log_index, prev_log_term, leader_commit, entries = _list_of(
        obj, 8, "AppendEntries"
    )
    term = _message_term(term, "AppendEntries term")
    prev_log_index = _index(prev_log_index, "AppendEntries prev_log_index")
    prev_log_term = _int_in(prev_log_term, 0, term, "AppendEntries prev_log_term")
    return AppendEntries(
        term,
        _node_id(source, "AppendEntries source"),
        _node_id(target, "AppendEntries target"),
        prev_log_index,
        prev_log_term,
        _entries_from_obj(entries, prev_log_index, prev_log_term, term),
        _index(leader_commit, "AppendEntries leader_commit"),
    )


def _append_entries_response_from_obj(obj: list[Any]) -> AppendEntriesResponse:
    _, term, source, target, success, match_index, reject_index, conflict_index, conflict_term = (
        _list_of(obj, 9, "AppendEntriesResponse")
    )
    return AppendEntriesResponse(
        _message_term(term, "AppendEntriesResponse term"),
        _node_id(source, "AppendEntriesResponse source"),
        _node_id(target, "AppendEntriesResponse target"),
        _flag(success, "AppendEntriesResponse success"),
        _index(match_index, "AppendEntriesResponse match_index"),
        _index(reject_index, "AppendEntriesResponse reject_index"),
        _index(conflict_index, "AppendEntriesResponse conflict_index"),
        _term(conflict_term, "AppendEntriesResponse conflict_term"),
    )


def _install_snapshot_from_obj(obj: list[Any]) -> InstallSnapshot:
    _, term, source, target, meta, data = _list_of(obj, 6, "InstallSnapshot")
    term = _message_term(term, "InstallSnapshot term")
    meta = snapshot_meta_from_obj(meta)
    if meta.term > term:
        raise CodecError(f"InstallSnapshot: snapshot term {meta.term} is above the message term")
    if type(data) is not bytes:
        raise CodecError(f"InstallSnapshot data: expected bytes, got {_describe(data)}")
    return InstallSnapshot(
        term,
        _node_id(source, "InstallSnapshot source"),
        _node_id(target, "InstallSnapshot target"),
        meta,
        data,
    )


def _heartbeat_from_obj(obj: list[Any]) -> Heartbeat:
    _, term, source, target, leader_commit, read_round = _list_of(obj, 6, "Heartbeat")
    return Heartbeat(
        _message_term(term, "Heartbeat term"),
        _node_id(source, "Heartbeat source"),
        _node_id(target, "Heartbeat target"),
        _index(leader_commit, "Heartbeat leader_commit"),
        _int_in(read_round, 0, READ_ROUND_MAX, "Heartbeat read_round"),
    )


def _heartbeat_response_from_obj(obj: list[Any]) -> HeartbeatResponse:
    _, term, source, target, read_round = _list_of(obj, 5, "HeartbeatResponse")
    return HeartbeatResponse(
        _message_term(term, "HeartbeatResponse term"),
        _node_id(source, "HeartbeatResponse source"),
        _node_id(target, "HeartbeatResponse target"),
        _int_in(read_round, 0, READ_ROUND_MAX, "HeartbeatResponse read_round"),
    )


def _timeout_now_from_obj(obj: list[Any]) -> TimeoutNow:
    _, term, source, target = _list_of(obj, 4, "TimeoutNow")
    return TimeoutNow(
        _message_term(term, "TimeoutNow term"),
        _node_id(source, "TimeoutNow source"),
        _node_id(target, "TimeoutNow target"),
    )


_FROM_OBJ: dict[int, Callable[[list[Any]], Message]] = {
    _TAG_REQUEST_VOTE: _request_vote_from_obj,
    _TAG_REQUEST_VOTE_RESPONSE: _request_vote_response_from_obj,
    _TAG_APPEND_ENTRIES: _append_entries_from_obj,
    _TAG_APPEND_ENTRIES_RESPONSE: _append_entries_response_from_obj,
    _TAG_INSTALL_SNAPSHOT: _install_snapshot_from_obj,
    _TAG_HEARTBEAT: _heartbeat_from_obj,
    _TAG_HEARTBEAT_RESPONSE: _heartbeat_response_from_obj,
    _TAG_TIMEOUT_NOW: _timeout_now_from_obj,
}


def decode_message(
    data: bytes, *, install_snapshot_bytes_max: int = INSTALL_SNAPSHOT_BYTES_MAX
) -> Message:
    """Decode what `encode_message` made; `CodecError` on anything else. Only an
    InstallSnapshot may be longer than MESSAGE_BYTES_MAX, up to `install_snapshot_bytes_max`."""
    bytes_max = MESSAGE_BYTES_MAX
    if type(data) is bytes and data[:2] == _INSTALL_SNAPSHOT_HEAD:
        bytes_max = max(bytes_max, install_snapshot_bytes_max)
    obj = _unpack(data, bytes_max, _ARRAY_LENGTH_MAX, "message")
    if type(obj) is not list or not obj:
        raise CodecError(f"message: expected [tag, ...], got {_describe(obj)}")
    tag = obj[0]
    from_obj = _FROM_OBJ.get(tag) if type(tag) is int else None
    if from_obj is None:
        raise CodecError(f"message: unknown type tag {_describe(tag)}")
    return from_obj(obj)
