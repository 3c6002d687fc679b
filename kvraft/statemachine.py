"""The deterministic key-value state machine that every node applies the committed log to.

Theory of operation
-------------------
Every node feeds the same committed log entries, in the same order, to its own
`KVStateMachine`; because `apply` depends on nothing but its arguments and the
machine's current state (no clock, no randomness, no IO, no iteration over
hash order), every node ends in the same state and produces the same snapshot
bytes. The simulator checks exactly that.

A write travels as *command bytes*: the HTTP layer calls `encode_put` /
`encode_delete` (which raise `CommandError` on client mistakes, so bad input
never reaches the log), the bytes ride in a NORMAL log entry, and once the
entry is committed the shell calls `apply(entry.index, entry.data)`. Entries
that carry no command (NOOP, CONFIG) go to `mark_applied(index)` so that
`applied_index` keeps pace with the log (linearizable reads wait on it, §6.4).

The log index of the command is the *revision* of every key it changes, so a
key's revision says when it was last written and `if_revision` conditions give
compare-and-set. The outcome of a command is an `ApplyResult`, never an
exception: a failed condition is `ok=False` with the key's current revision; a
command that cannot be read (garbage, wrong types, over a limit, written by a
newer version) is `ok=False` with an `error` code and changes nothing but
`applied_index`. Log bytes are untrusted like any other input: a buggy or
hostile proposer must not be able to crash every replica at once.

Exactly-once writes: a command may carry an idempotency key. The first result
for that key is remembered; applying another command with the same key returns
that remembered result (same `index`) without touching the data. The table
holds at most `IDEMPOTENCY_KEYS_MAX` keys and forgets the oldest by applied
index: that depends only on the log, so every node forgets the same keys.

Command wire format (msgpack arrays, one per command)::

    [OP_PUT, key: str, value: bin, if_revision: int | nil, if_absent: bool,
        idempotency_key: str | nil]
    [OP_DELETE, key: str, if_revision: int | nil, idempotency_key: str | nil]
    [OP_TXN, compares: [[key, target, op, value]...], success: [operation...],
        failure: [operation...], idempotency_key: str | nil]
    [OP_LEASE_GRANT, ttl_s: int]
    [OP_LEASE_REVOKE, lease_id: int, expired: bool]
    [OP_LOCK_ACQUIRE, name: str, lease_id: int, value: str]
    [OP_LOCK_RELEASE, name: str, fencing_token: int]
    [OP_FENCED, name: str, fencing_token: int, command: bin]
    [OP_LEASE_CHECKPOINT, [lease_id, remaining_ms, lease_id, remaining_ms, ...]]
    [OP_AUTH_USER_PUT, name: str, password_hash: [n, r, p, salt, digest] | nil, roles: [str]]
    [OP_AUTH_USER_DELETE, name: str]
    [OP_AUTH_ROLE_PUT, name: str, admin: bool, [prefix, access, prefix, access, ...]]
    [OP_AUTH_ROLE_DELETE, name: str]
    [OP_AUTH_ENABLE, enabled: bool, signing_key: bin]

A put may carry a seventh field, ``lease_id: int``, attaching its key to that lease (a put
without it detaches the key from any lease, as in etcd); a put of six fields is one written
before leases existed and still applies.

Leases (`kvraft.leases` keeps their timers): a grant's log index is the lease's id, so every
node names it alike. A revoke (the client's, or the leader's expiry: ``expired=True``)
removes the lease and deletes its keys, in key order, as ordinary deletes at the revoke's
revision, so watchers see them. The machine knows no clock: it holds each lease's TTL, and
only the leader decides when one expires. A checkpoint records, for long leases, how much of
their TTL was left in the leader's clock (`kvraft.leases` says when it is written and why a
keepalive clears it); a new leader starts them from there rather than from the full TTL.

Locks, after etcd's concurrency recipe but held by the machine itself rather than as keys: a
lock is a queue of waiters, each a lease and the *fencing token* it was given, which is the
log index of its acquire: strictly greater than every token given for that lock before,
on every node alike. The waiter with the smallest token holds the lock (first come, first
served); a release, or the revoke or expiry of its lease, removes a waiter and so passes the
lock on to the next at that entry's index. A lease waits at most once per lock: acquiring
again answers the token it already has, so a client that lost an answer can simply retry.
A *fenced* command wraps a put, delete or transaction with a lock's name and a token: it
applies only if that token holds the lock when the entry applies, so a holder that was
paused past its lease cannot overwrite what the next holder wrote (Kleppmann, "How to do
distributed locking").

Users, roles and the auth switch (`kvraft.auth` holds their rules): the receiving node hashes
the password and draws the signing key, the entry carries them, and apply only stores them,
so the auth state is the same on every node at every index. An auth entry that cannot apply
(an unknown role, root losing admin while auth is on, ...) changes nothing but
`applied_index`. Auth entries change no key and are never in the idempotency table.

where a transaction's operation is ``[1, key, value]`` (put), ``[2, key]`` (delete),
``[3, prefix]`` (delete_prefix), ``[4, key]`` (get) or ``[5, prefix, limit]`` (list); see
`TxnCommand`. A transaction is one entry, so everything it changes has its revision, and
its limits (`TXN_OPERATIONS_MAX`, `TXN_BYTES_MAX`) keep it within one entry's size.

Snapshot format: a stream of msgpack *frames* ``[kind: int, crc32: int,
payload: bin]``, where the CRC-32 (zlib's) covers the kind as one byte followed
by the payload, and each payload is one msgpack value. In order:

- one HEADER (kind 0): ``["kvraft-kv-snapshot", SNAPSHOT_FORMAT_VERSION,
  applied_index, key_count, idempotency_key_count, lease_count, lock_waiter_count]``
  (versions 1 and 2 have no ``lease_count``, version 3 no ``lock_waiter_count``);
- KEYS frames (kind 1), none if there are no keys: a flat array ``key, value,
  revision, lease_id, key, value, revision, lease_id, ...`` in strictly increasing key order,
  ``lease_id`` 0 for a key without a lease (versions 1 and 2 have no ``lease_id``);
- IDEMPOTENCY frames (kind 2): a flat array ``idempotency_key, index, ok,
  revision, deleted, txn, ...`` in strictly increasing index order (oldest first), where
  ``txn`` is nil for a put or delete and ``[succeeded, results]`` for a transaction (see
  `_txn_record`; version 1 snapshots have no ``txn`` field);
- LEASES frames (kind 4, version 3 on), none if there are no leases: a flat array
  ``lease_id, ttl_s, remaining_ms, ...`` in strictly increasing id order (version 3 has no
  ``remaining_ms``; 0 means no checkpoint);
- LOCKS frames (kind 5, version 4 on), none if no lock has a waiter: a flat array
  ``name, fencing_token, lease_id, value, ...`` ordered by name, then token;
- one AUTH frame (kind 6, version 5 on, exactly one): `kvraft.auth.AuthState.to_wire`,
  ``[enabled, signing_key, users, roles]`` (the limits in `kvraft.auth` keep it in one frame);
- one END (kind 3) with an empty payload, and nothing after it.

`snapshot_chunks` yields one frame per chunk, but `restore` reads the stream
regardless of how it was cut into chunks (a transport may re-split it). A
malformed command is never remembered in the idempotency table, so its records
hold only successes and failed conditions.

Key order is code point order, which for the valid UTF-8 keys stored here is
also byte order, so a prefix's keys form one contiguous range.
"""

from __future__ import annotations

import builtins
import enum
import itertools
import operator
import struct
import zlib
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, TypeAlias, cast

import msgpack

from kvraft.auth import (
    AuthRefused,
    AuthState,
    PasswordHash,
    Permission,
    check_name,
    check_password_hash,
    check_permissions,
    check_role_names,
    permissions_wire,
)
from kvraft.raft.messages import Entry, EntryKind

__all__ = [
    "COMMAND_BYTES_MAX",
    "IDEMPOTENCY_KEYS_MAX",
    "IDEMPOTENCY_KEY_BYTES_MAX",
    "KEY_BYTES_MAX",
    "LEASE_CHECKPOINT_LEASES_MAX",
    "LEASE_TTL_S_MAX",
    "LIST_LIMIT_MAX",
    "LIST_PAGE_BYTES_MAX",
    "LOCK_VALUE_BYTES_MAX",
    "OP_AUTH_ENABLE",
    "OP_AUTH_ROLE_DELETE",
    "OP_AUTH_ROLE_PUT",
    "OP_AUTH_USER_DELETE",
    "OP_AUTH_USER_PUT",
    "OP_DELETE",
    "OP_FENCED",
    "OP_LEASE_CHECKPOINT",
    "OP_LEASE_GRANT",
    "OP_LEASE_REVOKE",
    "OP_LOCK_ACQUIRE",
    "OP_LOCK_RELEASE",
    "OP_PUT",
    "OP_TXN",
    "PLAIN_PUTS_AVAILABLE",
    "REVISION_MAX",
    "SNAPSHOT_CHUNK_BYTES_DEFAULT",
    "SNAPSHOT_CHUNK_BYTES_MAX",
    "SNAPSHOT_FORMAT_VERSION",
    "SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX",
    "TXN_BYTES_MAX",
    "TXN_OPERATIONS_MAX",
    "VALUE_BYTES_MAX",
    "ApplyOrderError",
    "ApplyResult",
    "AuthEnableCommand",
    "AuthRoleDeleteCommand",
    "AuthRolePutCommand",
    "AuthUserDeleteCommand",
    "AuthUserPutCommand",
    "Command",
    "CommandError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteCommand",
    "DeletePrefixResult",
    "DeleteResult",
    "ErrorCode",
    "FencedCommand",
    "GetResult",
    "KVStateMachine",
    "LeaseCheckpointCommand",
    "LeaseGrantCommand",
    "LeaseRevokeCommand",
    "ListItem",
    "ListResult",
    "LockAcquireCommand",
    "LockReleaseCommand",
    "LockWaiter",
    "PlainPut",
    "PutCommand",
    "PutResult",
    "SnapshotFormatError",
    "TxnCommand",
    "TxnDelete",
    "TxnDeletePrefix",
    "TxnGet",
    "TxnList",
    "TxnOperation",
    "TxnPut",
    "TxnResult",
    "decode_command",
    "encode_auth_enable",
    "encode_auth_role_delete",
    "encode_auth_role_put",
    "encode_auth_user_delete",
    "encode_auth_user_put",
    "encode_delete",
    "encode_fenced",
    "encode_lease_checkpoint",
    "encode_lease_grant",
    "encode_lease_revoke",
    "encode_lock_acquire",
    "encode_lock_release",
    "encode_put",
    "encode_txn",
    "plain_put_change",
]

# --- Limits ---------------------------------------------------------------------------------

KEY_BYTES_MAX = 1024
"""The longest key, in UTF-8 bytes. Keys are also index entries held in memory on every node."""

VALUE_BYTES_MAX = 1024 * 1024
"""The largest value, in bytes: a value travels whole in one log entry and one AppendEntries."""

IDEMPOTENCY_KEY_BYTES_MAX = 128
"""The longest idempotency key, in UTF-8 bytes (room for a UUID plus a client prefix)."""

IDEMPOTENCY_KEYS_MAX = 100_000
"""How many idempotency keys the machine remembers; past it the oldest (by applied index) go.

A client retrying later than 100,000 keyed writes after its first attempt may apply twice.
"""

LIST_LIMIT_MAX = 1000
"""The most items one `list` call returns: a page must stay cheap to build and to send."""

LIST_PAGE_BYTES_MAX = 4 * 1024 * 1024
"""A `list` page stops early once its keys and values reach this many bytes (it always holds
at least one item), so 1000 items of 1 MiB values never make one 1 GiB response."""

REVISION_MAX = 2**63 - 1
"""The largest log index, revision or `if_revision` (fits msgpack's and most clients' int64)."""

TXN_OPERATIONS_MAX = 64
"""The most compares plus operations (both branches together) in one transaction, as in
Consul's `/v1/txn`: one transaction is one log entry that every node applies in one go."""

TXN_BYTES_MAX = VALUE_BYTES_MAX
"""The most bytes of keys, prefixes and values (compares' too) in one transaction: it travels
whole in one log entry, like the largest put."""

_TXN_ITEM_OVERHEAD_BYTES = 32
"""An upper bound on msgpack's headers around one compare or operation of a transaction."""

COMMAND_BYTES_MAX = (
    max(
        VALUE_BYTES_MAX + KEY_BYTES_MAX,
        TXN_BYTES_MAX + TXN_OPERATIONS_MAX * _TXN_ITEM_OVERHEAD_BYTES,
    )
    + IDEMPOTENCY_KEY_BYTES_MAX
    + 64
)
"""The largest command bytes `apply` will decode: the largest valid put or transaction plus
slack for msgpack headers. Anything longer is rejected before it is parsed."""

LEASE_TTL_S_MAX = 24 * 60 * 60
"""The longest lease TTL, in seconds (a day). A holder that cannot send one keepalive a day
is not alive; the bound also keeps a TTL in ticks far from any integer limit. The shortest
TTL depends on the election timeout and is the HTTP layer's to enforce
(`kvraft.leases.lease_ttl_s_min`): the machine accepts 1 s and up."""

LOCK_VALUE_BYTES_MAX = 4096
"""The largest value a lock waiter carries (an election candidate's address or name, shown to
whoever asks who holds the lock), in UTF-8 bytes: every waiter's value sits in memory and in
every snapshot, so it is kept small."""

LEASE_CHECKPOINT_LEASES_MAX = 1000
"""The most leases one checkpoint entry records (the leader writes more entries for more)."""

SNAPSHOT_FORMAT_VERSION = 5
"""The snapshot format this module writes. Version 2 added a transaction's results to its
idempotency record, version 3 the leases (a LEASES frame, a lease id on every key record and
a lease count in the header), version 4 the locks (a LOCKS frame, a waiter count in the
header) and each lease's checkpointed remaining TTL, version 5 the users, roles and auth
switch (exactly one AUTH frame; the header is as in version 4); `restore` still reads
versions 1-4."""

_SNAPSHOT_FORMAT_VERSIONS_READ = (1, 2, 3, 4, 5)

SNAPSHOT_CHUNK_BYTES_DEFAULT = 1024 * 1024
"""The default target size of one snapshot chunk (one frame)."""

SNAPSHOT_CHUNK_BYTES_MAX = 16 * 1024 * 1024
"""The largest chunk size `snapshot_chunks` accepts; it bounds the frames `restore` must hold."""

SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX = (
    SNAPSHOT_CHUNK_BYTES_MAX + VALUE_BYTES_MAX + 4 * KEY_BYTES_MAX + 1024
)
"""The largest frame payload `restore` accepts. `snapshot_chunks` closes a frame once its
(over-)estimated payload reaches the chunk size, so a payload may overrun the chunk size by
one record: a value, a key (estimated at 4 bytes per code point) and their headers."""

_FRAME_OVERHEAD_BYTES = 64
"""An upper bound on a frame's bytes around its payload (array, kind, crc and bin headers)."""

_RESTORE_FEED_BYTES = 1024 * 1024
"""How much of a chunk `restore` hands the msgpack decoder at once, so a caller's huge chunk
(`restore_bytes` of a whole snapshot) never has to sit in the decoder's buffer in full."""

_RESTORE_BUFFER_BYTES_MAX = (
    SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX + _FRAME_OVERHEAD_BYTES + _RESTORE_FEED_BYTES
)
"""The msgpack decoder's buffer: one whole frame may sit in it, still incomplete, when the next
piece arrives."""

_KEY_INDEX_CHUNK_KEYS = 1000
"""Target keys per sublist of the sorted key index. Inserting into a sublist moves at most
2x this many pointers, and bisecting the sublists' maxima stays short for 10**6 keys."""

_REVISION_STRUCT = struct.Struct(">Q")
"""A key's record is its value followed by its revision in these 8 bytes (see `_pack_record`)."""

_RECORD_OVERHEAD_BYTES = 32
"""An upper bound on msgpack's per-record headers, for sizing snapshot frames."""

# --- Command values -------------------------------------------------------------------------

OP_PUT = 1
"""The first element of a put command."""

OP_DELETE = 2
"""The first element of a delete command."""

OP_TXN = 3
"""The first element of a transaction command."""

OP_LEASE_GRANT = 4
"""The first element of a lease grant."""

OP_LEASE_REVOKE = 5
"""The first element of a lease revoke (by a client, or by the leader's expiry)."""

OP_LOCK_ACQUIRE = 6
"""The first element of a lock acquire: queue a lease as a waiter for a lock."""

OP_LOCK_RELEASE = 7
"""The first element of a lock release: remove a waiter (the holder or one still waiting)."""

OP_FENCED = 8
"""The first element of a fenced command: a put, delete or transaction that applies only
while a given fencing token holds a given lock."""

OP_LEASE_CHECKPOINT = 9
"""The first element of a lease checkpoint: the leader's remaining TTL of some leases."""

OP_AUTH_USER_PUT = 10
"""The first element of a user's creation or change (password hash and/or roles)."""

OP_AUTH_USER_DELETE = 11
"""The first element of a user's deletion."""

OP_AUTH_ROLE_PUT = 12
"""The first element of a role's creation or replacement."""

OP_AUTH_ROLE_DELETE = 13
"""The first element of a role's deletion (users lose it too)."""

OP_AUTH_ENABLE = 14
"""The first element of the auth switch (enable, with the signing key, or disable)."""

_PUT_FIELD_COUNT = 6
_PUT_WITH_LEASE_FIELD_COUNT = 7
_LEASE_GRANT_FIELD_COUNT = 2
_LEASE_REVOKE_FIELD_COUNT = 3
_LOCK_ACQUIRE_FIELD_COUNT = 4
_LOCK_RELEASE_FIELD_COUNT = 3
_FENCED_FIELD_COUNT = 4
_LEASE_CHECKPOINT_FIELD_COUNT = 2
_AUTH_USER_PUT_FIELD_COUNT = 4
_AUTH_ROLE_PUT_FIELD_COUNT = 4
_AUTH_DELETE_FIELD_COUNT = 2
_AUTH_ENABLE_FIELD_COUNT = 3
_DELETE_FIELD_COUNT = 4
_TXN_FIELD_COUNT = 5

# The first element of each operation inside a transaction.
_TXN_PUT = 1
_TXN_DELETE = 2
_TXN_DELETE_PREFIX = 3
_TXN_GET = 4
_TXN_LIST = 5


class ErrorCode(enum.StrEnum):
    """Why a command or read request was refused (a string, for HTTP bodies and metrics)."""

    MALFORMED_COMMAND = "malformed_command"
    """The bytes are not a command: not msgpack, wrong shape or wrong field types."""
    COMMAND_TOO_LARGE = "command_too_large"
    """The command bytes exceed `COMMAND_BYTES_MAX`."""
    UNKNOWN_OPERATION = "unknown_operation"
    """A well-formed command whose operation this version does not know."""
    BAD_KEY = "bad_key"
    """The key (or list prefix / start_after) is not a non-empty str without NUL, or not UTF-8."""
    KEY_TOO_LARGE = "key_too_large"
    """The key is longer than `KEY_BYTES_MAX` UTF-8 bytes."""
    BAD_VALUE = "bad_value"
    """The value is not bytes."""
    VALUE_TOO_LARGE = "value_too_large"
    """The value is longer than `VALUE_BYTES_MAX` bytes."""
    BAD_REVISION = "bad_revision"
    """`if_revision` is not an int in 0..`REVISION_MAX`."""
    BAD_CONDITION = "bad_condition"
    """`if_absent` is not a bool."""
    CONFLICTING_CONDITIONS = "conflicting_conditions"
    """Both `if_revision` and `if_absent` were given."""
    BAD_IDEMPOTENCY_KEY = "bad_idempotency_key"
    """The idempotency key is not a non-empty str, or not UTF-8."""
    IDEMPOTENCY_KEY_TOO_LARGE = "idempotency_key_too_large"
    """The idempotency key is longer than `IDEMPOTENCY_KEY_BYTES_MAX` UTF-8 bytes."""
    BAD_LIMIT = "bad_limit"
    """A list limit is not an int in 1..`LIST_LIMIT_MAX`."""
    BAD_COMPARE = "bad_compare"
    """A transaction's compare has an unknown target or operator, or a value of the wrong
    type for its target."""
    BAD_OPERATION = "bad_operation"
    """A transaction's operation is unknown or has the wrong fields."""
    DUPLICATE_KEY = "duplicate_key"
    """A transaction's branch writes one key twice (also through a delete_prefix), which
    would give the key two changes at one revision."""
    TXN_TOO_LARGE = "txn_too_large"
    """A transaction has more than `TXN_OPERATIONS_MAX` compares and operations, or more than
    `TXN_BYTES_MAX` bytes of keys and values."""
    BAD_LEASE = "bad_lease"
    """A lease id is not an int in 1..`REVISION_MAX`, or a TTL not an int in
    1..`LEASE_TTL_S_MAX`."""
    LEASE_NOT_FOUND = "lease_not_found"
    """The lease named does not exist (never granted, revoked or expired)."""
    BAD_LOCK = "bad_lock"
    """A lock name is not a valid key, a fencing token not an int in 1..`REVISION_MAX`, a
    waiter's value not a str of at most `LOCK_VALUE_BYTES_MAX` bytes, or a fenced command
    wraps something other than a put, delete or transaction."""
    LOCK_NOT_HELD = "lock_not_held"
    """A release names a fencing token that neither holds nor waits for the lock (released
    already, or its lease is gone)."""
    FENCE_FAILED = "fence_failed"
    """A fenced command's token does not hold the lock (any more) when it applies: nothing
    was written."""
    BAD_AUTH = "bad_auth"
    """A user, role, permission, password hash or signing key is malformed or over a limit
    of `kvraft.auth`."""
    USER_NOT_FOUND = "user_not_found"
    """The user named does not exist."""
    ROLE_NOT_FOUND = "role_not_found"
    """The role named (to delete, or to give a user) does not exist."""
    ROOT_REQUIRED = "root_required"
    """Enabling auth needs a user `root` with an admin role; while auth is enabled, `root`
    cannot be deleted or lose admin."""


class CommandError(ValueError):
    """A client's request is invalid (its fault: HTTP 400, or 413 for the *_too_large codes).

    Attributes:
        code: which rule was broken.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SnapshotFormatError(ValueError):
    """Snapshot bytes are truncated, corrupted or of an unknown format: the sender's or the disk's
    fault. Nothing was restored."""


class ApplyOrderError(ValueError):
    """The caller applied a log index that is not above `applied_index`: a bug in the shell."""


# Commands are immutable NamedTuples rather than frozen dataclasses: one is decoded for every
# entry every node applies, and a frozen dataclass takes twice as long to build (it sets each
# field through object.__setattr__). `ApplyResult` stays a dataclass: a NamedTuple field
# named `index` would hide `tuple.index`.


class PutCommand(NamedTuple):
    """Set `key` to `value`.

    Fields:
        key: the key.
        value: the new value.
        if_revision: apply only if the key's revision is this (0: the key must be absent).
        if_absent: apply only if the key does not exist.
        idempotency_key: the client's name for this write, for exactly-once retries.
    """

    key: str
    value: bytes
    if_revision: int | None = None
    if_absent: bool = False
    idempotency_key: str | None = None
    lease_id: int | None = None


class LeaseGrantCommand(NamedTuple):
    """Create a lease of `ttl_s` seconds; its id is the grant's log index."""

    ttl_s: int
    idempotency_key: None = None


class LeaseRevokeCommand(NamedTuple):
    """Remove lease `lease_id` and delete its keys; `expired`: the leader's expiry did it."""

    lease_id: int
    expired: bool = False
    idempotency_key: None = None


class LockAcquireCommand(NamedTuple):
    """Queue lease `lease_id` for lock `name` (its token: this entry's index), or answer the
    token it already has; `value` is shown to whoever asks who holds the lock."""

    name: str
    lease_id: int
    value: str
    idempotency_key: None = None


class LockReleaseCommand(NamedTuple):
    """Remove the waiter of lock `name` with `fencing_token` (releasing the lock if it holds
    it, giving up its place if not)."""

    name: str
    fencing_token: int
    idempotency_key: None = None


class LeaseCheckpointCommand(NamedTuple):
    """Record the leader's remaining TTL of some leases: ``((lease_id, remaining_ms), ...)``,
    ``remaining_ms`` 0 clearing a lease's checkpoint."""

    remaining_ms: tuple[tuple[int, int], ...]
    idempotency_key: None = None


class AuthUserPutCommand(NamedTuple):
    """Create or change user `name`: `password` None keeps the current one (a new user needs
    one); `roles` replaces its roles."""

    name: str
    password: PasswordHash | None
    roles: tuple[str, ...]
    idempotency_key: None = None


class AuthUserDeleteCommand(NamedTuple):
    """Delete user `name` (its tokens stop verifying)."""

    name: str
    idempotency_key: None = None


class AuthRolePutCommand(NamedTuple):
    """Create or replace role `name`."""

    name: str
    admin: bool
    permissions: tuple[Permission, ...]
    idempotency_key: None = None


class AuthRoleDeleteCommand(NamedTuple):
    """Delete role `name`; users that had it lose it."""

    name: str
    idempotency_key: None = None


class AuthEnableCommand(NamedTuple):
    """Switch auth on (with the cluster's token `signing_key`) or off (`signing_key` empty)."""

    enabled: bool
    signing_key: bytes
    idempotency_key: None = None


AuthCommand: TypeAlias = (
    AuthUserPutCommand
    | AuthUserDeleteCommand
    | AuthRolePutCommand
    | AuthRoleDeleteCommand
    | AuthEnableCommand
)


class LockWaiter(NamedTuple):
    """One place in a lock's queue.

    Fields:
        fencing_token: the log index of the acquire that queued it.
        lease_id: the lease it lives as long as.
        value: what the waiter told the others (an election's candidate value).
    """

    fencing_token: int
    lease_id: int
    value: str


class DeleteCommand(NamedTuple):
    """Remove `key` (deleting an absent key succeeds with `deleted=False`).

    Fields:
        key: the key.
        if_revision: apply only if the key's revision is this (0: the key must be absent).
        idempotency_key: the client's name for this write, for exactly-once retries.
    """

    key: str
    if_revision: int | None = None
    idempotency_key: str | None = None


class CompareTarget(enum.IntEnum):
    """What a transaction's compare looks at (the wire value is the int)."""

    REVISION = 0
    """The key's revision, 0 when it is absent; compared with an int."""
    VALUE = 1
    """The key's value, compared with bytes (byte order); every value compare on an absent
    key is false, as in etcd: there is no value to compare."""
    EXISTS = 2
    """Whether the key exists, compared with a bool (only == and !=)."""


class CompareOp(enum.IntEnum):
    """A compare's operator (the wire value is the int)."""

    EQUAL = 0
    NOT_EQUAL = 1
    LESS = 2
    GREATER = 3


class Compare(NamedTuple):
    """One condition of a transaction: `target(key) op value`."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes | bool


class TxnPut(NamedTuple):
    """Set `key` to `value` (inside a transaction)."""

    key: str
    value: bytes


class TxnDelete(NamedTuple):
    """Remove `key` (inside a transaction; an absent key gives deleted=False)."""

    key: str


class TxnDeletePrefix(NamedTuple):
    """Remove every key starting with `prefix` ("" is every key)."""

    prefix: str


class TxnGet(NamedTuple):
    """Read `key` as the transaction sees it."""

    key: str


class TxnList(NamedTuple):
    """Read up to `limit` keys starting with `prefix`, as `KVStateMachine.list`."""

    prefix: str
    limit: int


TxnOperation: TypeAlias = TxnPut | TxnDelete | TxnDeletePrefix | TxnGet | TxnList


class TxnCommand(NamedTuple):
    """If every compare holds, apply `success`, else `failure`: one entry, one revision.

    The operations of the branch taken run in order, so a get after a put of the same key
    sees the put. No branch writes a key twice (`ErrorCode.DUPLICATE_KEY`). A transaction
    with an idempotency key may not read (get or list): its remembered result keeps no
    values, so a retry could not repeat the reads' answers.
    """

    compare: tuple[Compare, ...]
    success: tuple[TxnOperation, ...]
    failure: tuple[TxnOperation, ...]
    idempotency_key: str | None = None


class FencedCommand(NamedTuple):
    """Apply `command` (a put, delete or transaction) only if `fencing_token` holds lock
    `name` when it applies; otherwise nothing is written (`ErrorCode.FENCE_FAILED`)."""

    name: str
    fencing_token: int
    command: PutCommand | DeleteCommand | TxnCommand

    @property
    def idempotency_key(self) -> str | None:
        return self.command.idempotency_key


Command: TypeAlias = (
    PutCommand
    | DeleteCommand
    | TxnCommand
    | LeaseGrantCommand
    | LeaseRevokeCommand
    | LockAcquireCommand
    | LockReleaseCommand
    | FencedCommand
    | LeaseCheckpointCommand
    | AuthCommand
)

ListItem: TypeAlias = tuple[str, bytes, int]
"""One `list` item: (key, value, revision)."""


class PutResult(NamedTuple):
    """A transaction's put: the revision it gave the key (the transaction's)."""

    revision: int


class DeleteResult(NamedTuple):
    """A transaction's delete: whether the key existed."""

    deleted: bool


class DeletePrefixResult(NamedTuple):
    """A transaction's delete_prefix: how many keys it removed."""

    deleted: int


class GetResult(NamedTuple):
    """A transaction's get: the value (None when absent) and revision (0 when absent)."""

    key: str
    value: bytes | None
    revision: int


class ListResult(NamedTuple):
    """A transaction's list: as `KVStateMachine.list` answers."""

    items: list[ListItem]
    continuation: str | None


TxnResult: TypeAlias = PutResult | DeleteResult | DeletePrefixResult | GetResult | ListResult


@dataclass(frozen=True, slots=True)
class Change:
    """One key changed by one command: what a watcher sees (`kvraft.watch`).

    Fields:
        kind: "put" or "delete".
        key: the key.
        revision: the command's log index: the key's revision after a put, the revision of
            its deletion after a delete.
        prev_revision: the key's revision before the change; None if it did not exist.
        value: the new value of a put; None for a delete.
    """

    kind: str
    key: str
    revision: int
    prev_revision: int | None
    value: bytes | None = None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of applying one command.

    Fields:
        index: the log index of the command that produced this result. On an idempotent retry
            this is the *original* command's index, so `result.index != index` tells the
            caller that the retry was answered from the idempotency table.
        ok: the command took effect (a delete of an absent key takes effect as a no-op).
        revision: if ok, `index` (the revision the command gave its key); if a condition
            failed, the key's current revision (0 if absent); if rejected, 0.
        deleted: a delete removed an existing key.
        error: why the command was rejected without effect, or None. `ok=False` with no
            error means a condition failed (see `condition_failed`).
        message: a human-readable explanation of `error` ("" when there is no error).
        changes: the keys this command changed, in order (empty if it changed none, and on
            an idempotent retry answered from the table: the original's changes happened at
            the original's index).
        succeeded: for a transaction, whether its compares held (the success branch ran);
            None for any other command. A valid transaction is always `ok`.
        results: for a transaction, one result per operation of the branch taken.
        prev_record: a put's or delete's key as it was before (value and revision, packed as
            the machine keeps them; see `prev`), None if it was absent, and None on an
            idempotent retry (the table keeps no values).
        remembered: this is an idempotent retry's answer, from the table (so `prev_record`
            says nothing about the key).
        locks_changed: the locks whose queue of waiters this command changed, in name order
            (whoever waits for one may now hold it).
    """

    index: int
    ok: bool
    revision: int
    deleted: bool = False
    error: ErrorCode | None = None
    message: str = ""
    changes: tuple[Change, ...] = field(default=(), compare=False)
    succeeded: bool | None = None
    results: tuple[TxnResult, ...] = ()
    prev_record: bytes | None = field(default=None, compare=False)
    remembered: bool = field(default=False, compare=False)
    locks_changed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def prev(self) -> tuple[bytes, int] | None:
        """(value, revision) of the key before a put or delete changed it, or None."""
        return None if self.prev_record is None else _unpack_record(self.prev_record)

    @property
    def condition_failed(self) -> bool:
        """The command was valid but its `if_revision`/`if_absent` condition did not hold."""
        return not self.ok and self.error is None


def _put_builders() -> tuple[
    Callable[[str, int, int | None, bytes], Change],
    Callable[[int, tuple[Change, ...], bytes | None], ApplyResult],
]:
    """Faster `Change("put", key, revision, prev_revision, value)` and `ApplyResult(index=i,
    ok=True, revision=i, changes=..., prev_record=...)` for `_put`, every write's apply: a
    frozen dataclass's `__init__` sets each field through `object.__setattr__`, about 2 µs for
    ApplyResult's twelve; these fill a draft of the same layout and turn it into the class
    (half the time). Used only while the fields are exactly the ones below (order, names,
    defaults); otherwise the constructors themselves."""

    def plain_change(key: str, revision: int, prev_revision: int | None, value: bytes) -> Change:
        return Change("put", key, revision, prev_revision, value)

    def plain_result(
        index: int, changes: tuple[Change, ...], prev_record: bytes | None
    ) -> ApplyResult:
        return ApplyResult(
            index=index, ok=True, revision=index, changes=changes, prev_record=prev_record
        )

    change_names = tuple(f.name for f in fields(Change))
    result_fields = {f.name: f.default for f in fields(ApplyResult)}
    expected_defaults = {
        "deleted": False,
        "error": None,
        "message": "",
        "changes": (),
        "succeeded": None,
        "results": (),
        "prev_record": None,
        "remembered": False,
        "locks_changed": (),
    }
    if (
        change_names != ("kind", "key", "revision", "prev_revision", "value")
        or list(result_fields) != ["index", "ok", "revision", *expected_defaults]
        or any(result_fields[name] != value for name, value in expected_defaults.items())
        or hasattr(Change, "__post_init__")
        or hasattr(ApplyResult, "__post_init__")
    ):
        return plain_change, plain_result
    # A draft: a plain class with the same slots, filled by ordinary attribute stores and
    # then turned into the frozen class (`__class__` may change between classes of one
    # layout; Python checks that, and a TypeError here keeps the constructors).
    drafts = []
    for cls in (Change, ApplyResult):
        names = tuple(f.name for f in fields(cls))
        draft = type(f"_{cls.__name__}Draft", (), {"__slots__": names})
        try:
            probe = draft()
            probe.__class__ = cls
        except TypeError:
            return plain_change, plain_result
        drafts.append(draft)
    change_draft, result_draft = drafts

    def change(key: str, revision: int, prev_revision: int | None, value: bytes) -> Change:
        built: Any = change_draft()
        built.kind = "put"
        built.key = key
        built.revision = revision
        built.prev_revision = prev_revision
        built.value = value
        built.__class__ = Change
        return cast(Change, built)

    def result(index: int, changes: tuple[Change, ...], prev_record: bytes | None) -> ApplyResult:
        built: Any = result_draft()
        built.index = index
        built.ok = True
        built.revision = index
        built.deleted = False
        built.error = None
        built.message = ""
        built.changes = changes
        built.succeeded = None
        built.results = ()
        built.prev_record = prev_record
        built.remembered = False
        built.locks_changed = ()
        built.__class__ = ApplyResult
        return cast(ApplyResult, built)

    return change, result


_put_change, _put_result = _put_builders()


PlainPut: TypeAlias = tuple[int, str, int | None, bytes]
"""What a plain put applied by `KVStateMachine.apply_plain_puts` changed, as a bare tuple
``(revision, key, prev_revision, value)``: the fields of its one `Change`, which
`plain_put_change` builds only for whoever reads it (a watcher). Replaying a million entries
at a restart, the `ApplyResult` and `Change` per entry were a third of the apply's cost, and
nobody waits on those entries."""

PLAIN_PUTS_AVAILABLE = True
"""`KVStateMachine.apply_plain_puts` may be used (tests switch it off to compare the paths)."""


def plain_put_change(put: PlainPut) -> Change:
    """The `Change` the full path gives for the plain put `put` (see `PlainPut`)."""
    revision, key, prev_revision, value = put
    return _put_change(key, revision, prev_revision, value)


# --- Validation (shared by encoding, decoding, reads and restore) ----------------------------


def _check_key(key: object, what: str = "key", *, allow_empty: bool = False) -> str:
    if not isinstance(key, str):
        raise CommandError(ErrorCode.BAD_KEY, f"{what} must be a str, not {type(key).__name__}")
    if not key and not allow_empty:
        raise CommandError(ErrorCode.BAD_KEY, f"{what} must not be empty")
    if "\x00" in key:
        raise CommandError(ErrorCode.BAD_KEY, f"{what} must not contain NUL")
    # Every code point is at least one UTF-8 byte: refuse a huge str before encoding it.
    if len(key) > KEY_BYTES_MAX:
        raise CommandError(
            ErrorCode.KEY_TOO_LARGE, f"{what} is over the limit of {KEY_BYTES_MAX} bytes"
        )
    try:
        key_bytes = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandError(ErrorCode.BAD_KEY, f"{what} is not valid Unicode") from None
    if key_bytes > KEY_BYTES_MAX:
        raise CommandError(
            ErrorCode.KEY_TOO_LARGE,
            f"{what} is {key_bytes} bytes; the limit is {KEY_BYTES_MAX}",
        )
    return key


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise CommandError(ErrorCode.BAD_VALUE, f"value must be bytes, not {type(value).__name__}")
    if len(value) > VALUE_BYTES_MAX:
        raise CommandError(
            ErrorCode.VALUE_TOO_LARGE,
            f"value is {len(value)} bytes; the limit is {VALUE_BYTES_MAX}",
        )
    return value


def _is_plain_put(key: object, value: object) -> bool:
    """Whether `_check_key(key)` and `_check_value(value)` pass, for the common case only
    (False says nothing): an ASCII key has as many UTF-8 bytes as characters."""
    return (
        type(key) is str
        and type(value) is bytes
        and 0 < len(key) <= KEY_BYTES_MAX
        and len(value) <= VALUE_BYTES_MAX
        and key.isascii()
        and "\x00" not in key
    )


def _check_if_revision(if_revision: object) -> int | None:
    if if_revision is None:
        return None
    # bool is an int subclass; True must not mean revision 1.
    if type(if_revision) is not int or not 0 <= if_revision <= REVISION_MAX:
        raise CommandError(
            ErrorCode.BAD_REVISION, f"if_revision must be an int in 0..{REVISION_MAX} or None"
        )
    return if_revision


def _check_if_absent(if_absent: object) -> bool:
    if type(if_absent) is not bool:
        raise CommandError(ErrorCode.BAD_CONDITION, "if_absent must be a bool")
    return if_absent


def _check_idempotency_key(idempotency_key: object) -> str | None:
    if idempotency_key is None:
        return None
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise CommandError(
            ErrorCode.BAD_IDEMPOTENCY_KEY, "idempotency_key must be a non-empty str or None"
        )
    if len(idempotency_key) > IDEMPOTENCY_KEY_BYTES_MAX:
        raise CommandError(
            ErrorCode.IDEMPOTENCY_KEY_TOO_LARGE,
            f"idempotency_key is over the limit of {IDEMPOTENCY_KEY_BYTES_MAX} bytes",
        )
    try:
        key_bytes = len(idempotency_key.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandError(
            ErrorCode.BAD_IDEMPOTENCY_KEY, "idempotency_key is not valid Unicode"
        ) from None
    if key_bytes > IDEMPOTENCY_KEY_BYTES_MAX:
        raise CommandError(
            ErrorCode.IDEMPOTENCY_KEY_TOO_LARGE,
            f"idempotency_key is {key_bytes} bytes; the limit is {IDEMPOTENCY_KEY_BYTES_MAX}",
        )
    return idempotency_key


def _check_lease_id(lease_id: object) -> int:
    if type(lease_id) is not int or not 1 <= lease_id <= REVISION_MAX:
        raise CommandError(ErrorCode.BAD_LEASE, f"a lease id must be an int in 1..{REVISION_MAX}")
    return lease_id


def _check_ttl_s(ttl_s: object) -> int:
    if type(ttl_s) is not int or not 1 <= ttl_s <= LEASE_TTL_S_MAX:
        raise CommandError(
            ErrorCode.BAD_LEASE, f"a lease TTL must be an int in 1..{LEASE_TTL_S_MAX} seconds"
        )
    return ttl_s


def _check_fencing_token(fencing_token: object) -> int:
    if type(fencing_token) is not int or not 1 <= fencing_token <= REVISION_MAX:
        raise CommandError(
            ErrorCode.BAD_LOCK, f"a fencing token must be an int in 1..{REVISION_MAX}"
        )
    return fencing_token


def _check_lock_name(name: object) -> str:
    try:
        return _check_key(name, "lock name")
    except CommandError as error:
        raise CommandError(ErrorCode.BAD_LOCK, str(error)) from None


def _check_lock_value(value: object) -> str:
    if not isinstance(value, str):
        raise CommandError(ErrorCode.BAD_LOCK, "a lock waiter's value must be a str")
    try:
        value_bytes = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandError(
            ErrorCode.BAD_LOCK, "a lock waiter's value is not valid Unicode"
        ) from None
    if value_bytes > LOCK_VALUE_BYTES_MAX:
        raise CommandError(
            ErrorCode.BAD_LOCK,
            f"a lock waiter's value is {value_bytes} bytes; the limit is {LOCK_VALUE_BYTES_MAX}",
        )
    return value


def _check_limit(limit: object) -> int:
    if type(limit) is not int or not 1 <= limit <= LIST_LIMIT_MAX:
        raise CommandError(ErrorCode.BAD_LIMIT, f"limit must be an int in 1..{LIST_LIMIT_MAX}")
    return limit


# --- Encoding and decoding commands ---------------------------------------------------------


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def encode_put(
    key: str,
    value: bytes,
    *,
    if_revision: int | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
    lease_id: int | None = None,
) -> bytes:
    """The command bytes that set `key` to `value`; `CommandError` if any argument is invalid.

    `if_revision=N` makes the put apply only if the key's revision is N (0: absent);
    `if_absent=True` only if the key does not exist. Giving both is a `CommandError`.
    `lease_id` attaches the key to that lease (the put fails with `LEASE_NOT_FOUND` if the
    lease is gone when it applies).
    """
    _check_key(key)
    _check_value(value)
    _check_if_revision(if_revision)
    _check_if_absent(if_absent)
    if if_revision is not None and if_absent:
        raise CommandError(
            ErrorCode.CONFLICTING_CONDITIONS, "give at most one of if_revision and if_absent"
        )
    _check_idempotency_key(idempotency_key)
    if lease_id is None:
        # Six fields, as before leases: a node of the previous version still reads it.
        return _pack([OP_PUT, key, value, if_revision, if_absent, idempotency_key])
    _check_lease_id(lease_id)
    return _pack([OP_PUT, key, value, if_revision, if_absent, idempotency_key, lease_id])


def encode_lease_grant(ttl_s: int) -> bytes:
    """The command bytes that grant a lease of `ttl_s` seconds; `CommandError` if invalid."""
    _check_ttl_s(ttl_s)
    return _pack([OP_LEASE_GRANT, ttl_s])


def encode_lease_revoke(lease_id: int, *, expired: bool = False) -> bytes:
    """The command bytes that revoke lease `lease_id` (`expired`: the leader's expiry)."""
    _check_lease_id(lease_id)
    return _pack([OP_LEASE_REVOKE, lease_id, bool(expired)])


def encode_lock_acquire(name: str, lease_id: int, value: str = "") -> bytes:
    """The command bytes that queue lease `lease_id` for lock `name`; `CommandError` if
    invalid."""
    _check_lock_name(name)
    _check_lease_id(lease_id)
    _check_lock_value(value)
    return _pack([OP_LOCK_ACQUIRE, name, lease_id, value])


def encode_lock_release(name: str, fencing_token: int) -> bytes:
    """The command bytes that remove the waiter of lock `name` holding `fencing_token`."""
    _check_lock_name(name)
    _check_fencing_token(fencing_token)
    return _pack([OP_LOCK_RELEASE, name, fencing_token])


def encode_fenced(name: str, fencing_token: int, command: bytes) -> bytes:
    """Wrap the bytes of a put, delete or transaction so that they apply only while
    `fencing_token` holds lock `name`; `CommandError` if invalid."""
    _check_lock_name(name)
    _check_fencing_token(fencing_token)
    _decode_fenceable(command)
    return _pack([OP_FENCED, name, fencing_token, command])


def encode_lease_checkpoint(remaining_ms: Iterable[tuple[int, int]]) -> bytes:
    """The command bytes that record leases' remaining TTL (at most
    `LEASE_CHECKPOINT_LEASES_MAX` of them)."""
    pairs = builtins.list(remaining_ms)
    flat: builtins.list[int] = []
    for lease_id, remaining in pairs:
        flat.extend((_check_lease_id(lease_id), _check_remaining_ms(remaining)))
    if len(pairs) > LEASE_CHECKPOINT_LEASES_MAX:
        raise CommandError(ErrorCode.BAD_LEASE, "too many leases in one checkpoint")
    return _pack([OP_LEASE_CHECKPOINT, flat])


def _auth_checked(check: Any, *args: Any) -> Any:
    """`check(*args)` from `kvraft.auth`, its refusal as a `CommandError`."""
    try:
        return check(*args)
    except AuthRefused as error:
        raise CommandError(ErrorCode(error.code), str(error)) from None


def encode_auth_user_put(
    name: str, password: PasswordHash | None, roles: Iterable[str] = ()
) -> bytes:
    """The command bytes that create or change user `name` (`password`: its salted hash,
    computed by the caller; None keeps the current one)."""
    wire = [OP_AUTH_USER_PUT, name, None if password is None else password.wire(), [*roles]]
    _decode_auth(wire)
    return _pack(wire)


def encode_auth_user_delete(name: str) -> bytes:
    """The command bytes that delete user `name`."""
    _auth_checked(check_name, name, "user")
    return _pack([OP_AUTH_USER_DELETE, name])


def encode_auth_role_put(name: str, admin: bool, permissions: Iterable[Permission]) -> bytes:
    """The command bytes that create or replace role `name`."""
    wire = [OP_AUTH_ROLE_PUT, name, admin, permissions_wire(permissions)]
    _decode_auth(wire)
    return _pack(wire)


def encode_auth_role_delete(name: str) -> bytes:
    """The command bytes that delete role `name`."""
    _auth_checked(check_name, name, "role")
    return _pack([OP_AUTH_ROLE_DELETE, name])


def encode_auth_enable(enabled: bool, signing_key: bytes = b"") -> bytes:
    """The command bytes that switch auth on (with the signing key the caller drew) or off."""
    wire = [OP_AUTH_ENABLE, enabled, signing_key if enabled else b""]
    _decode_auth(wire)
    return _pack(wire)


def _decode_auth(obj: builtins.list[Any]) -> AuthCommand:
    operation = obj[0]
    if operation == OP_AUTH_USER_PUT:
        if len(obj) != _AUTH_USER_PUT_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "user put: wrong number of fields")
        return AuthUserPutCommand(
            _auth_checked(check_name, obj[1], "user"),
            None if obj[2] is None else _auth_checked(check_password_hash, obj[2]),
            _auth_checked(check_role_names, obj[3]),
        )
    if operation == OP_AUTH_ROLE_PUT:
        if len(obj) != _AUTH_ROLE_PUT_FIELD_COUNT or type(obj[2]) is not bool:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "role put: wrong fields")
        return AuthRolePutCommand(
            _auth_checked(check_name, obj[1], "role"),
            obj[2],
            _auth_checked(check_permissions, obj[3]),
        )
    if operation in (OP_AUTH_USER_DELETE, OP_AUTH_ROLE_DELETE):
        if len(obj) != _AUTH_DELETE_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "auth delete: wrong number of fields")
        if operation == OP_AUTH_USER_DELETE:
            return AuthUserDeleteCommand(_auth_checked(check_name, obj[1], "user"))
        return AuthRoleDeleteCommand(_auth_checked(check_name, obj[1], "role"))
    if len(obj) != _AUTH_ENABLE_FIELD_COUNT or type(obj[1]) is not bool:
        raise CommandError(ErrorCode.MALFORMED_COMMAND, "auth enable: wrong fields")
    if not isinstance(obj[2], bytes) or len(obj[2]) > 64:
        raise CommandError(ErrorCode.BAD_AUTH, "a signing key must be at most 64 bytes")
    return AuthEnableCommand(obj[1], obj[2])


_AUTH_OPERATIONS = frozenset(
    (OP_AUTH_USER_PUT, OP_AUTH_USER_DELETE, OP_AUTH_ROLE_PUT, OP_AUTH_ROLE_DELETE, OP_AUTH_ENABLE)
)


def _check_remaining_ms(remaining_ms: object) -> int:
    if type(remaining_ms) is not int or not 0 <= remaining_ms <= LEASE_TTL_S_MAX * 1000:
        raise CommandError(
            ErrorCode.BAD_LEASE,
            f"a remaining TTL must be an int in 0..{LEASE_TTL_S_MAX * 1000} milliseconds",
        )
    return remaining_ms


def encode_delete(
    key: str, *, if_revision: int | None = None, idempotency_key: str | None = None
) -> bytes:
    """The command bytes that delete `key`; `CommandError` if any argument is invalid.

    `if_revision=N` makes the delete apply only if the key's revision is N.
    """
    _check_key(key)
    _check_if_revision(if_revision)
    _check_idempotency_key(idempotency_key)
    return _pack([OP_DELETE, key, if_revision, idempotency_key])


def _compare_wire(compare: Compare) -> list[Any]:
    return [compare.key, int(compare.target), int(compare.op), compare.value]


def _operation_wire(operation: TxnOperation) -> list[Any]:
    if isinstance(operation, TxnPut):
        return [_TXN_PUT, operation.key, operation.value]
    if isinstance(operation, TxnDelete):
        return [_TXN_DELETE, operation.key]
    if isinstance(operation, TxnDeletePrefix):
        return [_TXN_DELETE_PREFIX, operation.prefix]
    if isinstance(operation, TxnGet):
        return [_TXN_GET, operation.key]
    if isinstance(operation, TxnList):
        return [_TXN_LIST, operation.prefix, operation.limit]
    raise CommandError(ErrorCode.BAD_OPERATION, f"unknown operation {operation!r}")


def encode_txn(
    compare: Iterable[Compare],
    success: Iterable[TxnOperation],
    failure: Iterable[TxnOperation] = (),
    *,
    idempotency_key: str | None = None,
) -> bytes:
    """The command bytes of a transaction (see `TxnCommand`); `CommandError` if invalid."""
    wire = [
        OP_TXN,
        [_compare_wire(c) for c in compare],
        [_operation_wire(o) for o in success],
        [_operation_wire(o) for o in failure],
        idempotency_key,
    ]
    _decode_txn(wire)  # the same checks as `apply` makes: nothing invalid reaches the log
    return _pack(wire)


def _key_bytes(key: str) -> int:
    # Called after _check_key, so the key encodes.
    return len(key) if key.isascii() else len(key.encode("utf-8"))


def _decode_compare(raw: object) -> Compare:
    if not isinstance(raw, list) or len(raw) != 4:
        raise CommandError(ErrorCode.BAD_COMPARE, "a compare must be [key, target, op, value]")
    key, target, op, value = raw
    _check_key(key, "compare key")
    if type(target) is not int or target not in _COMPARE_TARGETS:
        raise CommandError(ErrorCode.BAD_COMPARE, f"unknown compare target {target!r}")
    if type(op) is not int or op not in _COMPARE_OPS:
        raise CommandError(ErrorCode.BAD_COMPARE, f"unknown compare operator {op!r}")
    target, op = CompareTarget(target), CompareOp(op)
    if target is CompareTarget.REVISION:
        if type(value) is not int or not 0 <= value <= REVISION_MAX:
            raise CommandError(
                ErrorCode.BAD_COMPARE, f"a revision compare needs an int in 0..{REVISION_MAX}"
            )
    elif target is CompareTarget.VALUE:
        if not isinstance(value, bytes):
            raise CommandError(ErrorCode.BAD_COMPARE, "a value compare needs bytes")
        if len(value) > VALUE_BYTES_MAX:
            raise CommandError(
                ErrorCode.VALUE_TOO_LARGE, f"compare value is over {VALUE_BYTES_MAX} bytes"
            )
    else:
        if type(value) is not bool:
            raise CommandError(ErrorCode.BAD_COMPARE, "an exists compare needs true or false")
        if op not in (CompareOp.EQUAL, CompareOp.NOT_EQUAL):
            raise CommandError(ErrorCode.BAD_COMPARE, "an exists compare takes only == or !=")
    return Compare(key, target, op, value)


def _decode_operation(raw: object) -> TxnOperation:
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise CommandError(ErrorCode.BAD_OPERATION, "an operation must be [kind, ...]")
    kind = raw[0]
    fields = _TXN_OPERATION_FIELD_COUNTS.get(kind)
    if fields is None:
        raise CommandError(ErrorCode.BAD_OPERATION, f"unknown transaction operation {kind}")
    if len(raw) != fields:
        raise CommandError(ErrorCode.BAD_OPERATION, "operation: wrong number of fields")
    if kind == _TXN_PUT:
        return TxnPut(_check_key(raw[1]), _check_value(raw[2]))
    if kind == _TXN_DELETE:
        return TxnDelete(_check_key(raw[1]))
    if kind == _TXN_DELETE_PREFIX:
        return TxnDeletePrefix(_check_key(raw[1], "prefix", allow_empty=True))
    if kind == _TXN_GET:
        return TxnGet(_check_key(raw[1]))
    return TxnList(_check_key(raw[1], "prefix", allow_empty=True), _check_limit(raw[2]))


def _check_branch(branch: tuple[TxnOperation, ...], name: str) -> None:
    """No key is written twice in one branch: each key changes at most once per revision."""
    written: set[str] = set()
    prefixes: builtins.list[str] = []
    for operation in branch:
        if isinstance(operation, TxnPut | TxnDelete):
            key = operation.key
            if key in written or any(key.startswith(p) for p in prefixes):
                raise CommandError(
                    ErrorCode.DUPLICATE_KEY, f"{name} writes key {key!r} more than once"
                )
            written.add(key)
        elif isinstance(operation, TxnDeletePrefix):
            prefix = operation.prefix
            if any(k.startswith(prefix) for k in written) or any(
                p.startswith(prefix) or prefix.startswith(p) for p in prefixes
            ):
                raise CommandError(
                    ErrorCode.DUPLICATE_KEY, f"{name}: delete_prefix {prefix!r} overlaps a write"
                )
            prefixes.append(prefix)


def _decode_txn(obj: builtins.list[Any]) -> TxnCommand:
    if len(obj) != _TXN_FIELD_COUNT:
        raise CommandError(ErrorCode.MALFORMED_COMMAND, "txn: wrong number of fields")
    _, raw_compare, raw_success, raw_failure, idempotency_key = obj
    for name, raw in (("compare", raw_compare), ("success", raw_success), ("failure", raw_failure)):
        if not isinstance(raw, list):
            raise CommandError(ErrorCode.MALFORMED_COMMAND, f"txn: {name} must be an array")
    count = len(raw_compare) + len(raw_success) + len(raw_failure)
    if count > TXN_OPERATIONS_MAX:
        raise CommandError(
            ErrorCode.TXN_TOO_LARGE,
            f"transaction has {count} compares and operations; the limit is {TXN_OPERATIONS_MAX}",
        )
    compare = tuple(_decode_compare(c) for c in raw_compare)
    success = tuple(_decode_operation(o) for o in raw_success)
    failure = tuple(_decode_operation(o) for o in raw_failure)
    _check_idempotency_key(idempotency_key)
    total_bytes = 0
    for c in compare:
        total_bytes += _key_bytes(c.key) + (len(c.value) if isinstance(c.value, bytes) else 0)
    for operation in success + failure:
        total_bytes += _key_bytes(operation[0])
        if isinstance(operation, TxnPut):
            total_bytes += len(operation.value)
    if total_bytes > TXN_BYTES_MAX:
        raise CommandError(
            ErrorCode.TXN_TOO_LARGE,
            f"transaction holds {total_bytes} bytes of keys and values; "
            f"the limit is {TXN_BYTES_MAX}",
        )
    _check_branch(success, "success")
    _check_branch(failure, "failure")
    if idempotency_key is not None and any(
        isinstance(o, TxnGet | TxnList) for o in success + failure
    ):
        raise CommandError(
            ErrorCode.BAD_IDEMPOTENCY_KEY,
            "a transaction with an idempotency key cannot get or list: a retry is answered "
            "from what was remembered, and values are not remembered",
        )
    return TxnCommand(compare, success, failure, idempotency_key)


_COMPARE_TARGETS = frozenset(int(t) for t in CompareTarget)
_COMPARE_OPS = frozenset(int(o) for o in CompareOp)
_TXN_OPERATION_FIELD_COUNTS = {
    _TXN_PUT: 3,
    _TXN_DELETE: 2,
    _TXN_DELETE_PREFIX: 2,
    _TXN_GET: 2,
    _TXN_LIST: 3,
}


def decode_command(command: bytes) -> Command:
    """Read command bytes made by `encode_put`/`encode_delete`/`encode_txn`; `CommandError` on
    anything else."""
    return _command_of(_unpack_command(command))


def _unpack_command(command: bytes) -> object:
    """The msgpack object in command bytes (checked for type and size first); `CommandError`
    if there is none."""
    if not isinstance(command, bytes | bytearray):
        raise CommandError(ErrorCode.MALFORMED_COMMAND, "a command must be bytes")
    if len(command) > COMMAND_BYTES_MAX:
        raise CommandError(
            ErrorCode.COMMAND_TOO_LARGE,
            f"command is {len(command)} bytes; the limit is {COMMAND_BYTES_MAX}",
        )
    try:
        return msgpack.unpackb(command, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises many types on garbage, including UnicodeDecodeError
        raise CommandError(ErrorCode.MALFORMED_COMMAND, "command is not valid msgpack") from None


def _command_of(obj: Any) -> Command:
    """The command an unpacked msgpack object describes; `CommandError` if it is none."""
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise CommandError(
            ErrorCode.MALFORMED_COMMAND, "command must be an array starting with an operation"
        )
    operation = obj[0]
    if operation == OP_PUT:
        if len(obj) == _PUT_FIELD_COUNT:
            _, key, value, if_revision, if_absent, idempotency_key = obj
            lease_id = None
        elif len(obj) == _PUT_WITH_LEASE_FIELD_COUNT:
            _, key, value, if_revision, if_absent, idempotency_key, lease_id = obj
            _check_lease_id(lease_id)
        else:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "put: wrong number of fields")
        put = PutCommand(  # positional: this is every entry's apply
            _check_key(key),
            _check_value(value),
            _check_if_revision(if_revision),
            _check_if_absent(if_absent),
            _check_idempotency_key(idempotency_key),
            lease_id,
        )
        if put.if_revision is not None and put.if_absent:
            raise CommandError(
                ErrorCode.CONFLICTING_CONDITIONS, "give at most one of if_revision and if_absent"
            )
        return put
    if operation == OP_DELETE:
        if len(obj) != _DELETE_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "delete: wrong number of fields")
        _, key, if_revision, idempotency_key = obj
        return DeleteCommand(
            key=_check_key(key),
            if_revision=_check_if_revision(if_revision),
            idempotency_key=_check_idempotency_key(idempotency_key),
        )
    if operation == OP_TXN:
        return _decode_txn(obj)
    if operation == OP_LEASE_GRANT:
        if len(obj) != _LEASE_GRANT_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "lease grant: wrong number of fields")
        return LeaseGrantCommand(_check_ttl_s(obj[1]))
    if operation == OP_LEASE_REVOKE:
        if len(obj) != _LEASE_REVOKE_FIELD_COUNT or type(obj[2]) is not bool:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "lease revoke: wrong fields")
        return LeaseRevokeCommand(_check_lease_id(obj[1]), obj[2])
    if operation == OP_LOCK_ACQUIRE:
        if len(obj) != _LOCK_ACQUIRE_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "lock acquire: wrong number of fields")
        return LockAcquireCommand(
            _check_lock_name(obj[1]), _check_lease_id(obj[2]), _check_lock_value(obj[3])
        )
    if operation == OP_LOCK_RELEASE:
        if len(obj) != _LOCK_RELEASE_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "lock release: wrong number of fields")
        return LockReleaseCommand(_check_lock_name(obj[1]), _check_fencing_token(obj[2]))
    if operation == OP_FENCED:
        if len(obj) != _FENCED_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "fenced: wrong number of fields")
        return FencedCommand(
            _check_lock_name(obj[1]), _check_fencing_token(obj[2]), _decode_fenceable(obj[3])
        )
    if operation == OP_LEASE_CHECKPOINT:
        if len(obj) != _LEASE_CHECKPOINT_FIELD_COUNT:
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "checkpoint: wrong number of fields")
        flat = obj[1]
        if (
            not isinstance(flat, list)
            or len(flat) % 2
            or len(flat) > 2 * LEASE_CHECKPOINT_LEASES_MAX
        ):
            raise CommandError(ErrorCode.MALFORMED_COMMAND, "checkpoint: malformed leases")
        return LeaseCheckpointCommand(
            tuple(
                (_check_lease_id(flat[position]), _check_remaining_ms(flat[position + 1]))
                for position in range(0, len(flat), 2)
            )
        )
    if operation in _AUTH_OPERATIONS:
        return _decode_auth(obj)
    raise CommandError(ErrorCode.UNKNOWN_OPERATION, f"unknown operation {operation}")


def _decode_fenceable(command: object) -> PutCommand | DeleteCommand | TxnCommand:
    """The put, delete or transaction a fenced command wraps (nothing else may be fenced: a
    fenced lock operation or lease grant has no meaning, and fences do not nest)."""
    if not isinstance(command, bytes):
        raise CommandError(ErrorCode.BAD_LOCK, "a fenced command must wrap command bytes")
    inner = decode_command(command)
    if not isinstance(inner, PutCommand | DeleteCommand | TxnCommand):
        raise CommandError(ErrorCode.BAD_LOCK, "only a put, delete or transaction can be fenced")
    return inner


# --- The sorted key index -------------------------------------------------------------------


class _SortedKeys:
    """The keys in order, as a list of sorted sublists plus each sublist's largest key.

    One flat sorted list would make inserting a new key into 10**6 keys move megabytes of
    pointers; sorting lazily would make the first page after a write sort everything. Sublists
    of about `_KEY_INDEX_CHUNK_KEYS` keys keep both an insert and the start of a page at a
    bisection over the maxima plus a short insertion or bisection within one sublist.
    """

    __slots__ = ("_maxima", "_sublists")

    def __init__(self, sorted_keys: list[str] | None = None) -> None:
        keys = sorted_keys or []
        step = _KEY_INDEX_CHUNK_KEYS
        self._sublists: list[list[str]] = [
            keys[start : start + step] for start in range(0, len(keys), step)
        ]
        self._maxima: list[str] = [sublist[-1] for sublist in self._sublists]

    def add(self, key: str) -> None:
        """Insert `key`, which must not be present."""
        sublists, maxima = self._sublists, self._maxima
        if not sublists:
            sublists.append([key])
            maxima.append(key)
            return
        position = bisect_left(maxima, key)
        if position == len(maxima):  # a new largest key goes at the end of the last sublist
            position -= 1
            sublist = sublists[position]
            sublist.append(key)
            maxima[position] = key
        else:
            sublist = sublists[position]
            insort(sublist, key)
        if len(sublist) > 2 * _KEY_INDEX_CHUNK_KEYS:
            upper = sublist[_KEY_INDEX_CHUNK_KEYS:]
            del sublist[_KEY_INDEX_CHUNK_KEYS:]
            sublists.insert(position + 1, upper)
            maxima[position] = sublist[-1]
            maxima.insert(position + 1, upper[-1])

    def remove(self, key: str) -> None:
        """Remove `key`, which must be present."""
        sublists, maxima = self._sublists, self._maxima
        position = bisect_left(maxima, key)
        sublist = sublists[position]
        del sublist[bisect_left(sublist, key)]
        if not sublist:
            del sublists[position]
            del maxima[position]
        else:
            maxima[position] = sublist[-1]

    def iter_from(self, key: str, *, inclusive: bool) -> Iterator[str]:
        """The keys >= `key` (or > `key` when not inclusive), in order."""
        sublists = self._sublists
        find = bisect_left if inclusive else bisect_right
        position = find(self._maxima, key)
        if position == len(sublists):
            return
        first = sublists[position]
        yield from itertools.islice(first, find(first, key), None)
        for sublist in itertools.islice(sublists, position + 1, None):
            yield from sublist

    def to_list(self) -> list[str]:
        """All keys in order, as a new list (a point-in-time copy)."""
        return list(itertools.chain.from_iterable(self._sublists))


# --- Snapshot frames ------------------------------------------------------------------------

_SNAPSHOT_MAGIC = "kvraft-kv-snapshot"
_FRAME_HEADER = 0
_FRAME_KEYS = 1
_FRAME_IDEMPOTENCY = 2
_FRAME_END = 3
_FRAME_LEASES = 4
_FRAME_LOCKS = 5
_FRAME_AUTH = 6
_FRAME_ORDER = {
    _FRAME_HEADER: 0,
    _FRAME_KEYS: 1,
    _FRAME_IDEMPOTENCY: 2,
    _FRAME_LEASES: 3,
    _FRAME_LOCKS: 4,
    _FRAME_AUTH: 5,
    _FRAME_END: 6,
}
"""The order frames come in, by kind: LEASES (version 3) and LOCKS (version 4) came last but
go before END."""
_FRAME_FIELD_COUNT = 3
_HEADER_FIELD_COUNT = 7
_KEY_RECORD_FIELDS = 4
_IDEMPOTENCY_RECORD_FIELDS = 6
_LEASE_RECORD_FIELDS = 3
_LOCK_RECORD_FIELDS = 4
_SNAPSHOT_FORMAT_VERSION_LEASES = 3
_SNAPSHOT_FORMAT_VERSION_LOCKS = 4
_SNAPSHOT_FORMAT_VERSION_AUTH = 5


def _frame_crc(kind: int, payload: bytes) -> int:
    # The kind is covered too, so a flipped kind cannot pass a KEYS payload off as another kind.
    return zlib.crc32(payload, zlib.crc32(bytes((kind,))))


def _encode_frame(kind: int, payload: bytes) -> bytes:
    return _pack([kind, _frame_crc(kind, payload), payload])


def _read_frames(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield the (kind, payload) of each frame in the byte stream, checking its CRC."""
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=_RESTORE_BUFFER_BYTES_MAX,
        max_bin_len=SNAPSHOT_FRAME_PAYLOAD_BYTES_MAX,
        max_array_len=_FRAME_FIELD_COUNT,
        max_map_len=0,
        max_str_len=0,
        max_ext_len=0,
    )
    fed_bytes = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray):
            raise SnapshotFormatError(f"snapshot chunk is {type(chunk).__name__}, not bytes")
        view = memoryview(chunk)
        for start in range(0, len(view), _RESTORE_FEED_BYTES):
            piece = view[start : start + _RESTORE_FEED_BYTES]
            try:
                unpacker.feed(piece)
                fed_bytes += len(piece)
                frames = list(unpacker)
            except Exception as error:  # msgpack raises many types on garbage
                raise SnapshotFormatError(
                    f"snapshot frame is not valid msgpack ({error})"
                ) from None
            for frame in frames:
                yield _check_frame(frame)
    if unpacker.tell() != fed_bytes:
        raise SnapshotFormatError("snapshot is truncated inside a frame")


def _check_frame(frame: object) -> tuple[int, bytes]:
    if not isinstance(frame, list) or len(frame) != _FRAME_FIELD_COUNT:
        raise SnapshotFormatError("snapshot frame must be [kind, crc32, payload]")
    kind, crc, payload = frame
    if type(kind) is not int or kind not in _FRAME_ORDER:
        raise SnapshotFormatError(f"snapshot frame has unknown kind {kind!r}")
    if type(crc) is not int or not isinstance(payload, bytes):
        raise SnapshotFormatError("snapshot frame must be [kind, crc32, payload]")
    if _frame_crc(kind, payload) != crc:
        raise SnapshotFormatError("snapshot frame checksum mismatch (corrupted)")
    return kind, payload


def _decode_payload(payload: bytes, what: str) -> list[Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises many types on garbage
        raise SnapshotFormatError(f"snapshot {what} is not valid msgpack ({error})") from None
    if not isinstance(obj, list):
        raise SnapshotFormatError(f"snapshot {what} must be an array")
    return obj


def _is_int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _txn_record(result: ApplyResult) -> builtins.list[Any] | None:
    """A remembered transaction's outcome for the snapshot: ``[succeeded, results]``, each
    result a put's revision (int), a delete's deleted (bool) or a delete_prefix's count
    (``[count]``); None for a put or delete. Keyed transactions never read (`TxnCommand`)."""
    if result.succeeded is None:
        return None
    flat: builtins.list[Any] = []
    for one in result.results:
        if isinstance(one, PutResult):
            flat.append(one.revision)
        elif isinstance(one, DeleteResult):
            flat.append(one.deleted)
        elif isinstance(one, DeletePrefixResult):
            flat.append([one.deleted])
        else:  # a read in a remembered transaction: decoding refuses those
            raise ValueError("a remembered transaction holds a read result")
    return [result.succeeded, flat]


def _restore_txn_record(txn: object, index: int) -> tuple[bool | None, tuple[TxnResult, ...]]:
    if txn is None:
        return None, ()
    if not isinstance(txn, list) or len(txn) != 2 or type(txn[0]) is not bool:
        raise SnapshotFormatError("snapshot idempotency transaction must be [succeeded, results]")
    succeeded, flat = txn
    if not isinstance(flat, list) or len(flat) > TXN_OPERATIONS_MAX:
        raise SnapshotFormatError("snapshot idempotency transaction results are malformed")
    results: builtins.list[TxnResult] = []
    for one in flat:
        if type(one) is bool:
            results.append(DeleteResult(one))
        elif type(one) is int and one == index:
            results.append(PutResult(one))
        elif isinstance(one, list) and len(one) == 1 and _is_int_in(one[0], 0, REVISION_MAX):
            results.append(DeletePrefixResult(one[0]))
        else:
            raise SnapshotFormatError("snapshot idempotency transaction result is malformed")
    return succeeded, tuple(results)


# --- The state machine ----------------------------------------------------------------------


def _pack_record(value: bytes, revision: int) -> bytes:
    # One bytes object per key instead of a (value, revision) tuple plus an int object saves
    # about 96 bytes per key (~30% of the state for 10**6 keys with 100-byte values), at the
    # price of copying the value once when written and once when read.
    return value + _REVISION_STRUCT.pack(revision)


def _record_revision(record: bytes) -> int:
    revision: int = _REVISION_STRUCT.unpack_from(record, len(record) - _REVISION_STRUCT.size)[0]
    return revision


def _unpack_record(record: bytes) -> tuple[bytes, int]:
    return record[: -_REVISION_STRUCT.size], _record_revision(record)


@dataclass(slots=True)
class Lease:
    """One lease as every node holds it: what the log says, and no clock.

    Fields:
        lease_id: the grant's log index.
        ttl_s: the time to live the client asked for, in seconds.
        keys: the keys attached to it (deleted when it is revoked or expires).
        locks: the names of the locks it holds or waits for (one place in each).
        remaining_ms: the remaining TTL the leader last checkpointed; 0 if none.
    """

    lease_id: int
    ttl_s: int
    keys: set[str] = field(default_factory=set)
    locks: set[str] = field(default_factory=set)
    remaining_ms: int = 0


class KVStateMachine:
    """Keys (str) to values (bytes) with per-key revisions; see the module docstring.

    Each key costs its str, one dict entry holding one bytes object (the value with the
    revision packed after it, see `_pack_record`) and one pointer in the sorted key index:
    10**6 keys with 100-byte values measured about 245 MB of RSS.
    """

    __slots__ = (
        "_applied_index",
        "_auth",
        "_idempotency",
        "_key_leases",
        "_keys",
        "_leases",
        "_locks",
        "_records",
    )

    def __init__(self) -> None:
        self._applied_index = 0
        # key -> _pack_record(value, revision)
        self._records: dict[str, bytes] = {}
        self._keys = _SortedKeys()
        # Insertion order is applied-index order (indexes only grow), so the first entry is
        # always the oldest; OrderedDict pops it in O(1) where a dict would rescan its holes.
        self._idempotency: OrderedDict[str, ApplyResult] = OrderedDict()
        # lease id -> Lease, and key -> the id of the lease it is attached to.
        self._leases: dict[int, Lease] = {}
        self._key_leases: dict[str, int] = {}
        # lock name -> its waiters in token order (the first holds it); no empty queues.
        self._locks: dict[str, builtins.list[LockWaiter]] = {}
        # Users, roles, the auth switch and the token signing key (`kvraft.auth`).
        self._auth = AuthState()

    # --- Reads (local, never through the log) -----------------------------------------------

    @property
    def applied_index(self) -> int:
        """The index of the last log entry applied (0: none)."""
        return self._applied_index

    @property
    def idempotency_key_count(self) -> int:
        """How many idempotency keys are remembered (at most `IDEMPOTENCY_KEYS_MAX`)."""
        return len(self._idempotency)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def snapshot_records(self) -> int:
        """How many records a snapshot of this state holds (keys, idempotency records,
        leases): what its cost grows with."""
        return len(self._records) + len(self._idempotency) + len(self._leases)

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of `key` (the value a fresh copy), or None if it does not exist."""
        record = self._records.get(key)
        return None if record is None else _unpack_record(record)

    def list(
        self, prefix: str = "", limit: int = LIST_LIMIT_MAX, start_after: str | None = None
    ) -> tuple[builtins.list[ListItem], str | None]:
        """Up to `limit` items whose key starts with `prefix`, in key order, after `start_after`.

        A page also ends after the item that brings its values to `LIST_PAGE_BYTES_MAX` bytes.
        Returns (items, continuation): pass `continuation` as `start_after` to get the next page;
        it is None exactly when no key with the prefix follows the page. `CommandError` on an
        invalid prefix, start_after or limit.
        """
        _check_key(prefix, "prefix", allow_empty=True)
        _check_limit(limit)
        if start_after is not None:
            _check_key(start_after, "start_after", allow_empty=True)
        if start_after is not None and start_after >= prefix:
            keys = self._keys.iter_from(start_after, inclusive=False)
        else:  # every key with the prefix is >= the prefix itself
            keys = self._keys.iter_from(prefix, inclusive=True)
        records = self._records
        items: builtins.list[ListItem] = []
        value_bytes = 0
        for key in keys:
            if not key.startswith(prefix):
                break
            if len(items) == limit or value_bytes >= LIST_PAGE_BYTES_MAX:
                return items, items[-1][0]
            value, revision = _unpack_record(records[key])
            items.append((key, value, revision))
            value_bytes += len(value)
        return items, None

    def count(self, prefix: str = "") -> int:
        """How many keys start with `prefix` (walks them: O(count)). `CommandError` on an
        invalid prefix."""
        _check_key(prefix, "prefix", allow_empty=True)
        counted = 0
        for key in self._keys.iter_from(prefix, inclusive=True):
            if not key.startswith(prefix):
                break
            counted += 1
        return counted

    def lease(self, lease_id: int) -> tuple[int, builtins.list[str]] | None:
        """(ttl_s, its keys in order) of lease `lease_id`, or None if it does not exist."""
        lease = self._leases.get(lease_id)
        return None if lease is None else (lease.ttl_s, sorted(lease.keys))

    def leases(self) -> builtins.list[tuple[int, int]]:
        """(lease_id, ttl_s) of every lease, in id order."""
        return sorted((lease_id, lease.ttl_s) for lease_id, lease in self._leases.items())

    def lease_of(self, key: str) -> int | None:
        """The id of the lease `key` is attached to, or None."""
        return self._key_leases.get(key)

    def lease_remaining_ms(self) -> builtins.list[tuple[int, int, int]]:
        """(lease_id, ttl_s, checkpointed remaining_ms or 0) of every lease, in id order."""
        return sorted(
            (lease_id, lease.ttl_s, lease.remaining_ms) for lease_id, lease in self._leases.items()
        )

    def lease_checkpoint_ms(self, lease_id: int) -> int:
        """The remaining TTL last checkpointed for lease `lease_id`; 0 if none (or no lease)."""
        lease = self._leases.get(lease_id)
        return 0 if lease is None else lease.remaining_ms

    def lock_waiters(self, name: str) -> builtins.list[LockWaiter]:
        """The waiters of lock `name` in token order; the first holds the lock. Empty if
        nobody holds it."""
        return builtins.list(self._locks.get(name, ()))

    def lock_holder(self, name: str) -> LockWaiter | None:
        """Who holds lock `name`, or None."""
        waiters = self._locks.get(name)
        return waiters[0] if waiters else None

    def lock_names(self) -> builtins.list[str]:
        """The names of the locks someone holds, in order."""
        return sorted(self._locks)

    def locks_of(self, lease_id: int) -> builtins.list[str]:
        """The names of the locks lease `lease_id` holds or waits for, in order."""
        lease = self._leases.get(lease_id)
        return [] if lease is None else sorted(lease.locks)

    @property
    def auth(self) -> AuthState:
        """Users, roles and the auth switch, as of `applied_index`. Read it, never change it:
        it changes only by applied entries."""
        return self._auth

    def remembers(self, idempotency_key: str) -> bool:
        """Whether a write with this idempotency key was applied (and is still remembered)."""
        return idempotency_key in self._idempotency

    # --- Writes (committed log entries only) --------------------------------------------------

    def _advance(self, index: int) -> None:
        if type(index) is not int or not self._applied_index < index <= REVISION_MAX:
            raise ApplyOrderError(
                f"log index {index!r} is not above the applied index {self._applied_index}"
            )
        self._applied_index = index

    def mark_applied(self, index: int) -> None:
        """Record that log entry `index` carries no command (NOOP or CONFIG)."""
        self._advance(index)

    def apply(self, index: int, command: bytes) -> ApplyResult:
        """Apply the committed command at log `index`; see `ApplyResult` for the outcomes.

        Never raises for bad command bytes. Raises `ApplyOrderError` (changing nothing) if
        `index` is not above `applied_index`: that is the caller's bug, not the log's.
        """
        self._advance(index)
        try:
            obj = _unpack_command(command)
            if (
                type(obj) is list
                and len(obj) == _PUT_FIELD_COUNT
                and obj[0] == OP_PUT
                and type(obj[0]) is int
                and obj[3] is None
                and obj[4] is False
                and obj[5] is None
            ):
                # The common write, a put without conditions, idempotency key or lease
                # (`_is_plain_put`): what `decode_command` then `apply` would do, less the
                # checks its key and value are known to pass. Anything else, or a put whose
                # key or value needs a closer look, takes the full path below.
                key, value = obj[1], obj[2]
                if _is_plain_put(key, value):
                    return self._put_plain(index, key, value)
            decoded = _command_of(obj)
        except CommandError as error:
            return ApplyResult(
                index=index, ok=False, revision=0, error=error.code, message=str(error)
            )
        fence = None
        if isinstance(decoded, FencedCommand):
            fence, decoded = decoded, decoded.command
        idempotency_key = decoded.idempotency_key
        if idempotency_key is not None:
            # Before the fence: a retry of a fenced write that applied gets its first answer
            # even if the lock has moved on since.
            original = self._idempotency.get(idempotency_key)
            if original is not None:
                return original
        if fence is not None:
            holder = self.lock_holder(fence.name)
            if holder is None or holder.fencing_token != fence.fencing_token:
                held = "nobody" if holder is None else f"token {holder.fencing_token}"
                return ApplyResult(
                    index=index,
                    ok=False,
                    revision=0,
                    error=ErrorCode.FENCE_FAILED,
                    message=f"fencing token {fence.fencing_token} does not hold lock "
                    f"{fence.name!r} ({held} does)",
                )
        if isinstance(decoded, PutCommand):
            result = self._put(index, decoded)
        elif isinstance(decoded, DeleteCommand):
            result = self._delete(index, decoded)
        elif isinstance(decoded, TxnCommand):
            result = self._txn(index, decoded)
        elif isinstance(decoded, LeaseGrantCommand):
            self._leases[index] = Lease(index, decoded.ttl_s)
            return ApplyResult(index=index, ok=True, revision=index)
        elif isinstance(decoded, LeaseRevokeCommand):
            return self._revoke(index, decoded.lease_id)
        elif isinstance(decoded, LockAcquireCommand):
            return self._acquire(index, decoded)
        elif isinstance(decoded, LockReleaseCommand):
            return self._release(index, decoded)
        elif isinstance(decoded, AuthCommand):
            return self._apply_auth(index, decoded)
        else:
            return self._checkpoint(index, decoded)
        # A refusal (an unknown lease) is not remembered: its retry may find the lease, and
        # the snapshot keeps no error codes.
        if idempotency_key is not None and result.error is None:
            # Remembered without its changes or previous value: a retry changes nothing, and
            # the table must not keep values alive (a keyed transaction has no reads).
            self._idempotency[idempotency_key] = replace(
                result, changes=(), prev_record=None, remembered=True
            )
            if len(self._idempotency) > IDEMPOTENCY_KEYS_MAX:
                self._idempotency.popitem(last=False)
        return result

    def _apply_auth(self, index: int, command: AuthCommand) -> ApplyResult:
        auth = self._auth
        try:
            if isinstance(command, AuthUserPutCommand):
                auth.apply_user_put(index, command.name, command.password, command.roles)
            elif isinstance(command, AuthUserDeleteCommand):
                auth.apply_user_delete(command.name)
            elif isinstance(command, AuthRolePutCommand):
                auth.apply_role_put(command.name, command.admin, command.permissions)
            elif isinstance(command, AuthRoleDeleteCommand):
                auth.apply_role_delete(command.name)
            else:
                auth.apply_enable(command.enabled, command.signing_key)
        except AuthRefused as refused:
            return ApplyResult(
                index=index,
                ok=False,
                revision=0,
                error=ErrorCode(refused.code),
                message=str(refused),
            )
        return ApplyResult(index=index, ok=True, revision=index)

    def _put(self, index: int, put: PutCommand) -> ApplyResult:
        record = self._records.get(put.key)
        current_revision = 0 if record is None else _record_revision(record)
        if (put.if_absent and record is not None) or (
            put.if_revision is not None and put.if_revision != current_revision
        ):
            return ApplyResult(index=index, ok=False, revision=current_revision)
        lease_id = put.lease_id
        if lease_id is not None and lease_id not in self._leases:
            return ApplyResult(
                index=index,
                ok=False,
                revision=0,
                error=ErrorCode.LEASE_NOT_FOUND,
                message=f"lease {lease_id} does not exist (never granted, revoked or expired)",
            )
        self._records[put.key] = _pack_record(put.value, index)
        if record is None:
            self._keys.add(put.key)
        self._attach(put.key, lease_id)
        change = _put_change(put.key, index, current_revision or None, put.value)
        return _put_result(index, (change,), record)

    def _put_plain(self, index: int, key: str, value: bytes) -> ApplyResult:
        """`_put` of a put without conditions or lease, with its steps inlined: every
        write's apply, a million of them when a restart replays its log."""
        records = self._records
        record = records.get(key)
        records[key] = value + _REVISION_STRUCT.pack(index)  # _pack_record
        if record is None:
            self._keys.add(key)
            prev_revision = None
        else:
            prev_revision = _record_revision(record) or None
        if self._key_leases:
            self._attach(key, None)
        return _put_result(index, (_put_change(key, index, prev_revision, value),), record)

    def apply_plain_puts(
        self, entries: Sequence[Entry], start: int, stop: int, puts: builtins.list[PlainPut]
    ) -> int:
        """Apply `entries[start:stop]` in order for as long as each is a plain put (a NORMAL
        entry whose command is a put without conditions, idempotency key or lease, with an
        ASCII key: `apply`'s fast path), appending to `puts` what each changed instead of
        building its `ApplyResult`. Returns the position of the first entry not applied
        (`stop` if all were): it is anything else, for `apply` or `mark_applied`.

        For entries nobody waits on (a restart's replay, a follower's apply); the state is
        exactly what `apply` of each would leave (`tests/test_statemachine_fast_paths.py`),
        and an entry's result would be `ApplyResult(index, ok=True, revision=index)` with
        the one change of its `PlainPut`. The steps are `apply`'s and `_put_plain`'s, inlined:
        this loop is what a replay of a million entries spends its time in."""
        if not PLAIN_PUTS_AVAILABLE:
            return start
        records = self._records
        add_key = self._keys.add
        unpack = msgpack.unpackb
        revision_of = _REVISION_STRUCT.unpack_from
        pack_revision = _REVISION_STRUCT.pack
        revision_bytes = _REVISION_STRUCT.size
        command_bytes_max = COMMAND_BYTES_MAX
        key_bytes_max = KEY_BYTES_MAX
        value_bytes_max = VALUE_BYTES_MAX
        normal = EntryKind.NORMAL
        append = puts.append
        puts_before = len(puts)
        for entry in entries[start:stop]:
            index = entry.index
            command = entry.data
            if (
                entry.kind != normal
                or type(index) is not int
                or not self._applied_index < index <= REVISION_MAX
                or type(command) is not bytes
                or len(command) > command_bytes_max
            ):
                break  # `apply` raises or refuses it, or it carries no command
            try:
                obj = unpack(command, raw=False, strict_map_key=True)
            except Exception:  # garbage: `apply` answers MALFORMED_COMMAND
                break
            if type(obj) is not list or len(obj) != _PUT_FIELD_COUNT:
                break
            operation, key, value, if_revision, if_absent, idempotency_key = obj
            if not (
                type(operation) is int
                and operation == OP_PUT
                and if_revision is None
                and if_absent is False
                and idempotency_key is None
                # `_is_plain_put(key, value)`:
                and type(key) is str
                and type(value) is bytes
                and 0 < len(key) <= key_bytes_max
                and len(value) <= value_bytes_max
                and key.isascii()
                and "\x00" not in key
            ):
                break
            self._applied_index = index
            record = records.get(key)
            records[key] = value + pack_revision(index)  # _pack_record
            if record is None:
                add_key(key)
                prev_revision = None
            else:
                prev_revision = revision_of(record, len(record) - revision_bytes)[0] or None
            if self._key_leases:
                self._attach(key, None)
            append((index, key, prev_revision, value))
        # One put appended per entry applied.
        return start + len(puts) - puts_before

    def _delete(self, index: int, delete: DeleteCommand) -> ApplyResult:
        record = self._records.get(delete.key)
        current_revision = 0 if record is None else _record_revision(record)
        if delete.if_revision is not None and delete.if_revision != current_revision:
            return ApplyResult(index=index, ok=False, revision=current_revision)
        if record is None:
            return ApplyResult(index=index, ok=True, revision=index, deleted=False)
        del self._records[delete.key]
        self._keys.remove(delete.key)
        self._attach(delete.key, None)
        change = Change("delete", delete.key, index, current_revision)
        return ApplyResult(
            index=index,
            ok=True,
            revision=index,
            deleted=True,
            changes=(change,),
            prev_record=record,
        )

    def _holds(self, compare: Compare) -> bool:
        record = self._records.get(compare.key)
        target = compare.target
        actual: int | bytes | bool
        if target is CompareTarget.EXISTS:
            actual = record is not None
        elif target is CompareTarget.REVISION:
            actual = 0 if record is None else _record_revision(record)
        elif record is None:
            return False  # an absent key has no value to compare (etcd does the same)
        else:
            actual = record[: -_REVISION_STRUCT.size]
        op = compare.op
        if op is CompareOp.EQUAL:
            return actual == compare.value
        if op is CompareOp.NOT_EQUAL:
            return actual != compare.value
        # Only revisions (int) and values (bytes) get here: decoding refuses < and > on exists.
        if op is CompareOp.LESS:
            return actual < compare.value  # type: ignore[operator]
        return actual > compare.value  # type: ignore[operator]

    def _remove(self, key: str, index: int, changes: builtins.list[Change]) -> bool:
        record = self._records.pop(key, None)
        if record is None:
            return False
        self._keys.remove(key)
        self._attach(key, None)
        changes.append(Change("delete", key, index, _record_revision(record)))
        return True

    def _attach(self, key: str, lease_id: int | None) -> None:
        """Attach `key` to lease `lease_id` (None: to no lease), detaching it from any other:
        a put without a lease detaches its key, as in etcd."""
        key_leases = self._key_leases
        if not key_leases and lease_id is None:
            return  # the common case, with no leases at all: nothing to look up
        old = key_leases.get(key)
        if old == lease_id:
            return
        if old is not None:
            self._leases[old].keys.discard(key)
            del key_leases[key]
        if lease_id is not None:
            self._leases[lease_id].keys.add(key)
            key_leases[key] = lease_id

    def _revoke(self, index: int, lease_id: int) -> ApplyResult:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return ApplyResult(
                index=index,
                ok=False,
                revision=0,
                error=ErrorCode.LEASE_NOT_FOUND,
                message=f"lease {lease_id} does not exist (never granted, revoked or expired)",
            )
        changes: builtins.list[Change] = []
        # In key order: a set's order is not the same on every node.
        for key in sorted(lease.keys):
            del self._key_leases[key]  # detached first: the lease is gone already
            self._remove(key, index, changes)
        locks_changed = tuple(sorted(lease.locks))
        for name in locks_changed:
            waiters = [w for w in self._locks[name] if w.lease_id != lease_id]
            if waiters:
                self._locks[name] = waiters
            else:
                del self._locks[name]
        return ApplyResult(
            index=index,
            ok=True,
            revision=index,
            deleted=True,
            changes=tuple(changes),
            locks_changed=locks_changed,
        )

    def _acquire(self, index: int, acquire: LockAcquireCommand) -> ApplyResult:
        lease = self._leases.get(acquire.lease_id)
        if lease is None:
            return ApplyResult(
                index=index,
                ok=False,
                revision=0,
                error=ErrorCode.LEASE_NOT_FOUND,
                message=f"lease {acquire.lease_id} does not exist (never granted, revoked or "
                "expired)",
            )
        name = acquire.name
        if name in lease.locks:  # a retry: the place this lease already has
            for waiter in self._locks[name]:
                if waiter.lease_id == acquire.lease_id:
                    return ApplyResult(index=index, ok=True, revision=waiter.fencing_token)
        self._locks.setdefault(name, []).append(LockWaiter(index, acquire.lease_id, acquire.value))
        lease.locks.add(name)
        return ApplyResult(index=index, ok=True, revision=index, locks_changed=(name,))

    def _release(self, index: int, release: LockReleaseCommand) -> ApplyResult:
        name = release.name
        waiters = self._locks.get(name, [])
        for position, waiter in enumerate(waiters):
            if waiter.fencing_token == release.fencing_token:
                del waiters[position]
                if not waiters:
                    del self._locks[name]
                self._leases[waiter.lease_id].locks.discard(name)
                return ApplyResult(index=index, ok=True, revision=index, locks_changed=(name,))
        return ApplyResult(
            index=index,
            ok=False,
            revision=0,
            error=ErrorCode.LOCK_NOT_HELD,
            message=f"fencing token {release.fencing_token} neither holds nor waits for lock "
            f"{name!r} (released already, or its lease is gone)",
        )

    def _checkpoint(self, index: int, checkpoint: LeaseCheckpointCommand) -> ApplyResult:
        leases = self._leases
        for lease_id, remaining_ms in checkpoint.remaining_ms:
            lease = leases.get(lease_id)
            if lease is not None:  # revoked since the leader wrote it: nothing to record
                lease.remaining_ms = remaining_ms
        return ApplyResult(index=index, ok=True, revision=index)

    def _txn(self, index: int, txn: TxnCommand) -> ApplyResult:
        succeeded = all(self._holds(c) for c in txn.compare)
        results: builtins.list[TxnResult] = []
        changes: builtins.list[Change] = []
        records = self._records
        for operation in txn.success if succeeded else txn.failure:
            if isinstance(operation, TxnPut):
                key = operation.key
                record = records.get(key)
                records[key] = _pack_record(operation.value, index)
                if record is None:
                    self._keys.add(key)
                self._attach(key, None)
                previous = None if record is None else _record_revision(record)
                changes.append(Change("put", key, index, previous, operation.value))
                results.append(PutResult(index))
            elif isinstance(operation, TxnDelete):
                results.append(DeleteResult(self._remove(operation.key, index, changes)))
            elif isinstance(operation, TxnDeletePrefix):
                # Collected first: removing keys while iterating the index would skip some.
                prefix = operation.prefix
                doomed: builtins.list[str] = []
                for key in self._keys.iter_from(prefix, inclusive=True):
                    if not key.startswith(prefix):
                        break
                    doomed.append(key)
                for key in doomed:
                    self._remove(key, index, changes)
                results.append(DeletePrefixResult(len(doomed)))
            elif isinstance(operation, TxnGet):
                found = self.get(operation.key)
                if found is None:
                    results.append(GetResult(operation.key, None, 0))
                else:
                    results.append(GetResult(operation.key, found[0], found[1]))
            else:
                items, continuation = self.list(operation.prefix, operation.limit)
                results.append(ListResult(items, continuation))
        return ApplyResult(
            index=index,
            ok=True,
            revision=index,
            succeeded=succeeded,
            results=tuple(results),
            changes=tuple(changes),
        )

    # --- Snapshots ----------------------------------------------------------------------------

    def snapshot_chunks(self, chunk_bytes: int = SNAPSHOT_CHUNK_BYTES_DEFAULT) -> Iterator[bytes]:
        """The whole state as a stream of chunks of about `chunk_bytes` each.

        The state is captured when this is called (a shallow copy of the key table and index,
        about 50 MB for 10**6 keys; values are shared, not copied), so the caller may keep
        applying entries while it streams the chunks. Equal states give equal bytes for equal
        `chunk_bytes`. A frame holds whole records, so one may exceed `chunk_bytes` by a record.
        """
        if type(chunk_bytes) is not int or not 1 <= chunk_bytes <= SNAPSHOT_CHUNK_BYTES_MAX:
            raise ValueError(f"chunk_bytes must be an int in 1..{SNAPSHOT_CHUNK_BYTES_MAX}")
        header = [
            _SNAPSHOT_MAGIC,
            SNAPSHOT_FORMAT_VERSION,
            self._applied_index,
            len(self._records),
            len(self._idempotency),
            len(self._leases),
            sum(len(waiters) for waiters in self._locks.values()),
        ]
        return self._stream_snapshot(
            chunk_bytes,
            header,
            self._keys.to_list(),
            self._records.copy(),
            builtins.list(self._idempotency.items()),
            self._key_leases.copy(),
            self.lease_remaining_ms(),
            [(name, tuple(self._locks[name])) for name in self.lock_names()],
            # The auth state is small (bounded by kvraft.auth's limits): captured as its wire
            # form now, so later entries cannot change what is streamed.
            _pack(self._auth.to_wire()),
        )

    @staticmethod
    def _stream_snapshot(
        chunk_bytes: int,
        header: builtins.list[Any],
        keys: builtins.list[str],
        records: dict[str, bytes],
        idempotency: builtins.list[tuple[str, ApplyResult]],
        key_leases: dict[str, int],
        leases: builtins.list[tuple[int, int, int]],
        locks: builtins.list[tuple[str, tuple[LockWaiter, ...]]],
        auth: bytes,
    ) -> Iterator[bytes]:
        yield _encode_frame(_FRAME_HEADER, _pack(header))
        flat: builtins.list[Any] = []
        # An upper bound on the payload size: a code point is at most 4 UTF-8 bytes.
        payload_bytes = 0
        for key in keys:
            value, revision = _unpack_record(records[key])
            flat.extend((key, value, revision, key_leases.get(key, 0)))
            payload_bytes += 4 * len(key) + len(value) + _RECORD_OVERHEAD_BYTES
            if payload_bytes >= chunk_bytes:
                yield _encode_frame(_FRAME_KEYS, _pack(flat))
                flat, payload_bytes = [], 0
        if flat:
            yield _encode_frame(_FRAME_KEYS, _pack(flat))
        flat, payload_bytes = [], 0
        for idempotency_key, result in idempotency:
            flat.extend(
                (
                    idempotency_key,
                    result.index,
                    result.ok,
                    result.revision,
                    result.deleted,
                    _txn_record(result),
                )
            )
            payload_bytes += 4 * len(idempotency_key) + 2 * _RECORD_OVERHEAD_BYTES
            payload_bytes += len(result.results) * _RECORD_OVERHEAD_BYTES
            if payload_bytes >= chunk_bytes:
                yield _encode_frame(_FRAME_IDEMPOTENCY, _pack(flat))
                flat, payload_bytes = [], 0
        if flat:
            yield _encode_frame(_FRAME_IDEMPOTENCY, _pack(flat))
        flat, payload_bytes = [], 0
        for lease_id, ttl_s, remaining_ms in leases:
            flat.extend((lease_id, ttl_s, remaining_ms))
            payload_bytes += _RECORD_OVERHEAD_BYTES
            if payload_bytes >= chunk_bytes:
                yield _encode_frame(_FRAME_LEASES, _pack(flat))
                flat, payload_bytes = [], 0
        if flat:
            yield _encode_frame(_FRAME_LEASES, _pack(flat))
        flat, payload_bytes = [], 0
        for name, waiters in locks:
            for waiter in waiters:
                flat.extend((name, waiter.fencing_token, waiter.lease_id, waiter.value))
                payload_bytes += 4 * (len(name) + len(waiter.value)) + _RECORD_OVERHEAD_BYTES
                if payload_bytes >= chunk_bytes:
                    yield _encode_frame(_FRAME_LOCKS, _pack(flat))
                    flat, payload_bytes = [], 0
        if flat:
            yield _encode_frame(_FRAME_LOCKS, _pack(flat))
        yield _encode_frame(_FRAME_AUTH, auth)
        yield _encode_frame(_FRAME_END, b"")

    def snapshot(self) -> bytes:
        """The whole state as one bytes object (for tests and the simulator)."""
        return b"".join(self.snapshot_chunks())

    @classmethod
    def restore_bytes(cls, data: bytes) -> KVStateMachine:
        """A machine restored from `snapshot()` bytes; `SnapshotFormatError` if they are bad."""
        return cls.restore([data])

    @classmethod
    def restore(cls, chunks: Iterable[bytes]) -> KVStateMachine:
        """A new machine holding the state in `chunks` (however the stream was cut).

        Checks everything: the frames' checksums and order, the header, every key, value,
        revision and idempotency record against the limits and against each other.
        Raises `SnapshotFormatError` on anything wrong; nothing else is raised for bad bytes.
        """
        frames = _read_frames(chunks)
        first = next(frames, None)
        if first is None:
            raise SnapshotFormatError("snapshot is empty")
        kind, payload = first
        if kind != _FRAME_HEADER:
            raise SnapshotFormatError("snapshot does not start with a header frame")
        header = _decode_payload(payload, "header")
        if len(header) < 2 or header[0] != _SNAPSHOT_MAGIC:
            raise SnapshotFormatError("snapshot header is not a kvraft key-value snapshot")
        version = header[1]
        if type(version) is not int or version not in _SNAPSHOT_FORMAT_VERSIONS_READ:
            raise SnapshotFormatError(f"snapshot format version {version!r} is not supported")
        # Versions 1 and 2 have no lease count (and no leases), 3 no lock count (nor locks).
        with_leases = version >= _SNAPSHOT_FORMAT_VERSION_LEASES
        with_locks = version >= _SNAPSHOT_FORMAT_VERSION_LOCKS
        with_auth = version >= _SNAPSHOT_FORMAT_VERSION_AUTH
        if len(header) != _HEADER_FIELD_COUNT - (not with_leases) - (not with_locks):
            raise SnapshotFormatError("snapshot header has the wrong number of fields")
        _, _, applied_index, key_count, idempotency_count = header[:5]
        lease_count = header[5] if with_leases else 0
        lock_waiter_count = header[6] if with_locks else 0
        if not _is_int_in(lease_count, 0, REVISION_MAX):
            raise SnapshotFormatError("snapshot lease count is out of range")
        if not _is_int_in(lock_waiter_count, 0, REVISION_MAX):
            raise SnapshotFormatError("snapshot lock waiter count is out of range")
        if not _is_int_in(applied_index, 0, REVISION_MAX):
            raise SnapshotFormatError("snapshot applied index is out of range")
        if not _is_int_in(key_count, 0, REVISION_MAX):
            raise SnapshotFormatError("snapshot key count is out of range")
        if not _is_int_in(idempotency_count, 0, IDEMPOTENCY_KEYS_MAX):
            raise SnapshotFormatError("snapshot idempotency key count is out of range")

        machine = cls()
        machine._applied_index = applied_index
        keys: builtins.list[str] = []
        lock_waiters_restored = 0
        auth_frames = 0
        last_rank = _FRAME_ORDER[_FRAME_HEADER]
        for kind, payload in frames:
            # Frames come in a fixed order, each kind repeatable except HEADER and END.
            rank = _FRAME_ORDER[kind]
            if (
                rank < last_rank
                or kind == _FRAME_HEADER
                or last_rank == _FRAME_ORDER[_FRAME_END]
                or (kind == _FRAME_LEASES and not with_leases)
                or (kind == _FRAME_LOCKS and not with_locks)
                or (kind == _FRAME_AUTH and (not with_auth or auth_frames))
            ):
                raise SnapshotFormatError("snapshot frames are out of order")
            last_rank = rank
            if kind == _FRAME_KEYS:
                machine._restore_keys(payload, keys, key_count, with_leases)
            elif kind == _FRAME_IDEMPOTENCY:
                machine._restore_idempotency(payload, idempotency_count, version)
            elif kind == _FRAME_LEASES:
                machine._restore_leases(payload, lease_count, with_locks)
            elif kind == _FRAME_LOCKS:
                lock_waiters_restored += machine._restore_locks(
                    payload, lock_waiter_count - lock_waiters_restored
                )
            elif kind == _FRAME_AUTH:
                auth_frames += 1
                try:
                    machine._auth = AuthState.from_wire(
                        _decode_payload(payload, "auth frame"), applied_index
                    )
                except AuthRefused as error:
                    raise SnapshotFormatError(f"snapshot auth frame: {error}") from None
        if last_rank != _FRAME_ORDER[_FRAME_END]:
            raise SnapshotFormatError("snapshot is truncated (no end frame)")
        if with_auth and not auth_frames:
            raise SnapshotFormatError("snapshot has no auth frame")
        if (
            len(keys) != key_count
            or len(machine._idempotency) != idempotency_count
            or len(machine._leases) != lease_count
            or lock_waiters_restored != lock_waiter_count
        ):
            raise SnapshotFormatError("snapshot holds fewer records than its header says")
        leases = machine._leases
        for key, lease_id in machine._key_leases.items():
            lease = leases.get(lease_id)
            if lease is None:
                raise SnapshotFormatError(f"snapshot key {key!r} names lease {lease_id}, absent")
            lease.keys.add(key)
        machine._keys = _SortedKeys(keys)
        return machine

    def _restore_leases(self, payload: bytes, lease_count: int, with_remaining: bool) -> None:
        flat = _decode_payload(payload, "leases frame")
        # Version 3 records have no checkpointed remaining TTL.
        fields = _LEASE_RECORD_FIELDS if with_remaining else _LEASE_RECORD_FIELDS - 1
        if not flat or len(flat) % fields:
            raise SnapshotFormatError("snapshot leases frame must hold whole lease records")
        leases = self._leases
        if len(leases) + len(flat) // fields > lease_count:
            raise SnapshotFormatError("snapshot holds more leases than its header says")
        previous_id = max(leases, default=0)
        for position in range(0, len(flat), fields):
            lease_id, ttl_s = flat[position : position + 2]
            remaining_ms = flat[position + 2] if with_remaining else 0
            # A lease's id is its grant's index: at most the applied index.
            if not _is_int_in(lease_id, previous_id + 1, self._applied_index):
                raise SnapshotFormatError("snapshot lease ids must increase within range")
            if not _is_int_in(ttl_s, 1, LEASE_TTL_S_MAX):
                raise SnapshotFormatError(f"snapshot lease TTL {ttl_s!r} is out of range")
            if not _is_int_in(remaining_ms, 0, LEASE_TTL_S_MAX * 1000):
                raise SnapshotFormatError(f"snapshot lease remaining {remaining_ms!r} is bad")
            leases[lease_id] = Lease(lease_id, ttl_s, remaining_ms=remaining_ms)
            previous_id = lease_id

    def _restore_locks(self, payload: bytes, lock_waiters_left: int) -> int:
        """Restore one LOCKS frame (after every LEASES frame); returns its waiter count."""
        flat = _decode_payload(payload, "locks frame")
        if not flat or len(flat) % _LOCK_RECORD_FIELDS:
            raise SnapshotFormatError("snapshot locks frame must hold whole lock records")
        count = len(flat) // _LOCK_RECORD_FIELDS
        if count > lock_waiters_left:
            raise SnapshotFormatError("snapshot holds more lock waiters than its header says")
        locks = self._locks
        for position in range(0, len(flat), _LOCK_RECORD_FIELDS):
            name, fencing_token, lease_id, value = flat[position : position + _LOCK_RECORD_FIELDS]
            try:
                _check_lock_name(name)
                _check_lock_value(value)
            except CommandError as error:
                raise SnapshotFormatError(f"snapshot lock record: {error}") from None
            if not _is_int_in(fencing_token, 1, self._applied_index):
                raise SnapshotFormatError(f"snapshot fencing token {fencing_token!r} is bad")
            lease = self._leases.get(lease_id) if type(lease_id) is int else None
            if lease is None or name in lease.locks:
                raise SnapshotFormatError(
                    f"snapshot lock {name!r} names lease {lease_id!r}: absent or twice"
                )
            waiters = locks.get(name)
            if waiters is None:
                # Names in order, each name's waiters together: a new name follows the last.
                if locks and name <= next(reversed(locks)):
                    raise SnapshotFormatError("snapshot lock names are not in order")
                waiters = locks[name] = []
            elif name != next(reversed(locks)) or fencing_token <= waiters[-1].fencing_token:
                raise SnapshotFormatError("snapshot lock waiters are not in token order")
            waiters.append(LockWaiter(fencing_token, lease_id, value))
            lease.locks.add(name)
        return count

    def _restore_keys(
        self, payload: bytes, keys: builtins.list[str], key_count: int, with_leases: bool
    ) -> None:
        flat = _decode_payload(payload, "keys frame")
        fields = _KEY_RECORD_FIELDS if with_leases else _KEY_RECORD_FIELDS - 1
        if not flat or len(flat) % fields:
            raise SnapshotFormatError("snapshot keys frame must hold whole key records")
        if len(keys) + len(flat) // fields > key_count:
            raise SnapshotFormatError("snapshot holds more keys than its header says")
        records = self._records
        key_leases = self._key_leases
        applied_index = self._applied_index
        start = self._restore_plain_keys(flat, fields, keys)
        previous_key = keys[-1] if keys else None
        for position in range(start, len(flat), fields):
            key, value, revision = flat[position : position + 3]
            if with_leases:
                lease_id = flat[position + 3]
                if not _is_int_in(lease_id, 0, applied_index):
                    raise SnapshotFormatError(f"snapshot lease id {lease_id!r} is out of range")
                if lease_id:
                    key_leases[key] = lease_id
            try:
                _check_key(key)
                _check_value(value)
            except CommandError as error:
                raise SnapshotFormatError(f"snapshot key record: {error}") from None
            if previous_key is not None and key <= previous_key:
                raise SnapshotFormatError("snapshot keys are not in strictly increasing order")
            if not _is_int_in(revision, 1, applied_index):
                raise SnapshotFormatError(f"snapshot revision {revision!r} is out of range")
            records[key] = _pack_record(value, revision)
            keys.append(key)
            previous_key = key

    def _restore_plain_keys(
        self, flat: builtins.list[Any], fields: int, keys: builtins.list[str]
    ) -> int:
        """Restore a keys frame whose every record passes the checks of `_restore_keys` in
        their common case (ASCII keys, no lease), checked a column at a time with builtins
        instead of record by record; returns the position `_restore_keys` goes on from: the
        end of `flat`, or 0 if any record needs its full checks (which then raise exactly
        its error, if it has one)."""
        names: builtins.list[Any] = flat[0::fields]
        values: builtins.list[Any] = flat[1::fields]
        revisions: builtins.list[Any] = flat[2::fields]
        lease_ids: builtins.list[Any] = flat[3::fields] if fields == _KEY_RECORD_FIELDS else []
        joined_names = "".join(names) if set(map(type, names)) == {str} else None
        if not (
            joined_names is not None
            and joined_names.isascii()  # then a key has as many UTF-8 bytes as characters
            and "\x00" not in joined_names
            and set(map(type, values)) == {bytes}
            and set(map(type, revisions)) == {int}
            and (not lease_ids or (set(map(type, lease_ids)) == {int} and not any(lease_ids)))
            and min(revisions) >= 1
            and max(revisions) <= self._applied_index
            and min(map(len, names)) >= 1
            and max(map(len, names)) <= KEY_BYTES_MAX
            and max(map(len, values)) <= VALUE_BYTES_MAX
            and (not keys or names[0] > keys[-1])
            and all(map(operator.lt, names, itertools.islice(names, 1, None)))
        ):
            return 0
        self._records.update(
            zip(
                names,
                map(operator.add, values, map(_REVISION_STRUCT.pack, revisions)),
                strict=True,
            )
        )
        keys.extend(names)
        return len(flat)

    def _restore_idempotency(self, payload: bytes, idempotency_count: int, version: int) -> None:
        flat = _decode_payload(payload, "idempotency frame")
        # Version 1 records had no transaction field.
        fields = _IDEMPOTENCY_RECORD_FIELDS if version >= 2 else _IDEMPOTENCY_RECORD_FIELDS - 1
        if not flat or len(flat) % fields:
            raise SnapshotFormatError("snapshot idempotency frame must hold whole records")
        table = self._idempotency
        if len(table) + len(flat) // fields > idempotency_count:
            raise SnapshotFormatError("snapshot holds more idempotency keys than its header says")
        applied_index = self._applied_index
        previous_index = next(reversed(table.values())).index if table else 0
        for position in range(0, len(flat), fields):
            record = flat[position : position + fields]
            idempotency_key, index, ok, revision, deleted = record[:5]
            txn = record[5] if fields == _IDEMPOTENCY_RECORD_FIELDS else None
            try:
                _check_idempotency_key(idempotency_key)
            except CommandError as error:
                raise SnapshotFormatError(f"snapshot idempotency record: {error}") from None
            if idempotency_key is None or idempotency_key in table:
                raise SnapshotFormatError("snapshot idempotency keys must be present and unique")
            if not _is_int_in(index, previous_index + 1, applied_index):
                raise SnapshotFormatError("snapshot idempotency indexes must increase")
            if type(ok) is not bool or type(deleted) is not bool:
                raise SnapshotFormatError("snapshot idempotency record flags must be bools")
            # A remembered success carries its own index; a failure the key's older revision.
            if ok and revision != index:
                raise SnapshotFormatError("snapshot idempotency success must carry its index")
            if not ok and (deleted or not _is_int_in(revision, 0, index - 1)):
                raise SnapshotFormatError("snapshot idempotency failure is inconsistent")
            succeeded, results = _restore_txn_record(txn, index)
            if succeeded is not None and (not ok or deleted or revision != index):
                raise SnapshotFormatError("snapshot idempotency transaction is inconsistent")
            table[idempotency_key] = ApplyResult(
                index=index,
                ok=ok,
                revision=revision,
                deleted=deleted,
                succeeded=succeeded,
                results=results,
                remembered=True,
            )
            previous_index = index
