"""Python client for kvraft's HTTP API: leader discovery, safe retries and typed errors.

Theory of operation
-------------------
Everything that decides *what* to send and *what an answer means* is sans-IO and shared:

* request builders (`build_put`, `build_get`, ...) turn a call into an `HttpRequest`
  (method, quoted target, headers, body, and whether repeating it is safe);
* response interpreters (`interpret_put`, ...) turn an `HttpResponse` into a result or
  one of the typed errors below;
* `plan_exchange` is a generator that owns retries and failover. It yields `Send`
  (try this endpoint with this timeout) and `Wait` (back off this long) steps and is
  resumed with what happened: an `HttpResponse` or a `TransportFailure`.

The two clients are thin transports that execute those steps: `KVClient` with
`http.client` and `time.sleep`, `AsyncKVClient` with aiohttp and `asyncio.sleep`.

Retries and safety. A request is retried on another endpoint, with capped exponential
backoff and jitter, until the call's `timeout_s` runs out, when:

* the connection could not be made (nothing was sent);
* the node answered 503 (it promises it did not propose the request); its
  `Retry-After` is honoured (capped at `RETRY_AFTER_S_MAX`);
* the request is a read, or a write carrying an `Idempotency-Key` (the server applies
  such a write at most once however often it arrives), and anything else went wrong:
  a lost connection after sending, a timeout, a 504 or another 5xx.

A write *without* an idempotency key that may have reached a node (connection lost
after sending, a timeout, 504 `outcome_unknown`, another 5xx) is never repeated
automatically: repeating it could apply it twice, e.g. after another client's write
in between. The call raises `OutcomeUnknown` instead and the caller decides.

Decision: the client does not invent idempotency keys on its own by default. Doing so
would silently make every write depend on the server's de-duplication window; a caller
who wants automatic retries of ambiguous writes passes `idempotency_key=` per call or
sets `auto_idempotency_keys=True` on the client, which attaches a fresh random key to
every write that has none. A call that gives up after one of its attempts may have
been applied raises `OutcomeUnknown`, never `Unavailable`.

Leader discovery. The client keeps a preferred endpoint: the last one that answered,
or the node named by a response's `X-Kvraft-Leader-Id` when that node's endpoint is
known (learned from each response's `X-Kvraft-Node-Id` and from `/v1/status` member
lists). Any node accepts any request, so this only saves the follower's forwarding hop.

Membership. `members`, `add_member`, `remove_member` and `transfer_leadership` go
through the same machinery (any node forwards them to the leader). Adding a node and
moving leadership are safe to repeat, so they are retried like keyed writes, including
while the server answers 503 `not_caught_up` for a node still catching up; removing is
not (once committed, the same removal is refused with 404), so an ambiguous removal is
`OutcomeUnknown`. A 404 `unknown_member` or a 409 (`member_conflict`,
`change_in_progress`) is a `ClientError`. Given `endpoint=`, a call makes one attempt at
that node and nothing else, for callers that do their own retrying.

Keys are quoted per path segment: `/` stays a separator and every other character,
including `%`, spaces and non-ASCII, is percent-encoded; segments `.` and `..` are
encoded as `%2E` so that nothing between client and server can collapse them.

Watch. `watch(prefix)` follows the changes under a prefix (or of one key) through
`GET /v1/watch`, a stream of NDJSON lines. The sans-IO half is `WatchStreamParser` (bytes
in, `WatchEvent`s out, every field of the untrusted stream checked, a line longer than
`WATCH_LINE_BYTES_MAX` refused), `WatchCursor` (where the watch stands: which changes
have been delivered) and `plan_watch`, a generator like `plan_exchange` that also yields
`OpenStream`, `ReadStream` and `CloseStream` steps and the events themselves. When a
stream breaks (node killed, connection cut, silence past `WATCH_IDLE_TIMEOUT_S`, or a
`lagged` end) the watch resumes on the next node from the cursor, and the cursor drops
whatever the new stream repeats: the caller sees each change once, in revision order.
The server's bookmarks (`progress`) move the cursor on a quiet watch and prove the
stream alive; the caller sees them only if it asks.

Compaction is never hidden. A 410 (`compacted`: the node no longer keeps the changes
the watch needs) raises `WatchCompacted`; the client does not re-list on its own, because
only the caller knows what its view of the keys holds and must be rebuilt. The recipe:
`list_with_revision` every page of the prefix, then `watch(prefix,
start_revision=first_page.revision + 1)`. A change made while the later pages were read
may then arrive both in a page and as an event: applying it twice leaves the same state.

`get(key, wait_revision=N, wait_s=S)` (and `wait_key`, which also tells the revision of
a deletion) is a blocking read: it answers once the key's revision is above N, or after
S seconds; every attempt is allowed S seconds more than an ordinary read.

Transactions. `txn(...)` sends a `kvraft.txn.Txn` (a builder: compare/then/else_) to
`POST /v1/txn` and answers a `TxnAnswer` whichever branch ran; a failed compare is not an
error. A transaction that writes is retried after it may have been sent only with an
idempotency key, like a put; one that only reads is retried like a read. `delete_prefix`
and `count` are the range delete and `count_only` list.

Leases. `lease_grant`, `lease_keepalive`, `lease_info`, `leases` and `lease_revoke` are the
lease routes; `put(..., lease=ID)` attaches a key; a lease that is gone is `LeaseNotFound`.
A keepalive changes no data and is retried like a read. A grant is retried even after it
may have reached a node (decision: the lost answer's lease has no keys and expires by
itself after its TTL, while refusing would fail every grant caught in a failover), and so
is a revoke (its purpose, the lease gone, holds either way). `lease(ttl_s)` is a context
manager that grants on entry, keeps the lease alive every TTL / 3 from a background thread
(`KVClient`, with its own client) or task (`AsyncKVClient`), fails over like any call, sets
`lease.lost` when a keepalive finds the lease gone, and revokes it on exit.

TLS. An ``https://`` endpoint is verified against `cacert` (default: the system's trust
store) and, for a cluster that requires client certificates (``[tls] client_ca``), the
client presents `cert` with its `key`; or pass an `ssl_context` of your own. A certificate
that does not verify is a failed connection like any other: the call tries the other
endpoints and, if none can be reached, says why for each.

Neither client is safe to share between threads; use one per thread (or task group).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import concurrent.futures
import contextlib
import dataclasses
import enum
import http.client
import json
import os
import pathlib
import random
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import aiohttp
import yarl

from kvraft.statemachine import IDEMPOTENCY_KEY_BYTES_MAX, LIST_LIMIT_MAX
from kvraft.txn import Txn, TxnAnswer, TxnCompare, TxnOp, TxnSyntaxError, parse_txn_answer

__all__ = [
    "ATTEMPT_TIMEOUT_S_DEFAULT",
    "BACKOFF_S_MAX",
    "BACKOFF_S_MIN",
    "CONNECT_TIMEOUT_S_DEFAULT",
    "CONSISTENCY_LEVELS",
    "ENDPOINTS_MAX",
    "IDEMPOTENCY_KEY_CHARS_MAX",
    "KEEPALIVES_PER_TTL",
    "LEASE_NOT_FOUND",
    "LIST_LIMIT_MAX",
    "LIST_PAGE_SIZE_DEFAULT",
    "LOCK_WAIT_S_MAX",
    "RESPONSE_BYTES_MAX",
    "RETRY_AFTER_S_MAX",
    "TIMEOUT_S_DEFAULT",
    "WAIT_S_MAX",
    "WATCH_EVENT_TYPES",
    "WATCH_IDLE_TIMEOUT_S",
    "WATCH_LINE_BYTES_MAX",
    "WATCH_PROGRESS_S",
    "WATCH_PROGRESS_S_MAX",
    "AsyncKVClient",
    "AsyncLease",
    "AsyncLock",
    "BackupInfo",
    "ClientError",
    "CloseStream",
    "ConditionFailed",
    "EndpointRouter",
    "FailureKind",
    "Fence",
    "FenceFailed",
    "HttpRequest",
    "HttpResponse",
    "Item",
    "KVClient",
    "KVError",
    "KeyState",
    "Lease",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFound",
    "ListAnswer",
    "Lock",
    "LockHold",
    "LockInfo",
    "LockNotAcquired",
    "LockNotHeld",
    "OpenStream",
    "OutcomeUnknown",
    "ProtocolError",
    "ReadStream",
    "RetryPolicy",
    "Send",
    "Step",
    "TransportFailure",
    "Unavailable",
    "Wait",
    "WatchCompacted",
    "WatchCursor",
    "WatchEvent",
    "WatchStreamParser",
    "backoff_delay_s",
    "build_add_member",
    "build_count",
    "build_delete",
    "build_delete_prefix",
    "build_get",
    "build_lease_grant",
    "build_lease_info",
    "build_lease_keepalive",
    "build_lease_revoke",
    "build_leases",
    "build_list",
    "build_members",
    "build_put",
    "build_remove_member",
    "build_status",
    "build_transfer_leadership",
    "build_txn",
    "build_watch",
    "interpret_count",
    "interpret_delete",
    "interpret_delete_prefix",
    "interpret_get",
    "interpret_key_state",
    "interpret_lease_grant",
    "interpret_lease_info",
    "interpret_lease_keepalive",
    "interpret_lease_revoke",
    "interpret_leases",
    "interpret_list",
    "interpret_list_answer",
    "interpret_members",
    "interpret_put",
    "interpret_status",
    "interpret_transfer",
    "interpret_txn",
    "interpret_watch_refusal",
    "key_path",
    "normalize_endpoint",
    "parse_retry_after_s",
    "parse_watch_message",
    "plan_exchange",
    "plan_single_attempt",
    "plan_watch",
]

TIMEOUT_S_DEFAULT = 10.0
"""How long one call may take across all its retries. Longer than the server's default
`request_timeout_ms` (5 s), so a slow commit is answered by the server (503/504) rather
than abandoned by the client."""

ATTEMPT_TIMEOUT_S_DEFAULT = 6.0
"""How long one attempt waits for an answer: the server's 5 s request timeout plus a
margin. A node that accepted the connection but is frozen (SIGSTOP) costs at most this
before a read moves on to the next endpoint."""

CONNECT_TIMEOUT_S_DEFAULT = 1.0
"""How long establishing a TCP connection may take; on a LAN a longer wait means the
host is gone, and failing over sooner is better."""

BACKOFF_S_MIN = 0.05
"""The first backoff after every endpoint has failed once."""

BACKOFF_S_MAX = 1.0
"""Backoff stops growing here: an election takes a few hundred milliseconds, so waiting
longer between rounds would only add latency after the cluster has recovered."""

RETRY_AFTER_S_MAX = 5.0
"""A server's `Retry-After` is honoured up to this; the header is untrusted input and a
huge value must not stall the caller beyond reason."""

RESPONSE_BYTES_MAX = 256 * 1024 * 1024
"""The largest response body read. A list page holds at least one item, and the largest
value a cluster may be configured for (64 MiB) is about 86 MiB in base64; anything past
this is a server fault (`ProtocolError`), not a reason to exhaust memory."""

ENDPOINTS_MAX = 64
"""More endpoints than any sane cluster has; the list is user input."""

IDEMPOTENCY_KEY_CHARS_MAX = IDEMPOTENCY_KEY_BYTES_MAX
"""Longest `Idempotency-Key` the client sends: the server's limit (only visible ASCII is
sent, so characters and bytes agree)."""

LIST_PAGE_SIZE_DEFAULT = 100
"""Items asked for per list request when following continuations."""

WAIT_S_MAX = 3600.0
"""The longest a blocking read (`get(..., wait_revision=, wait_s=)`) may ask to wait."""

WATCH_PROGRESS_S = 5.0
"""The bookmark interval a watch asks the server for (`progress_s`). Bookmarks keep the
resume point fresh on a quiet watch and prove the node alive: a stream silent for
`WATCH_IDLE_TIMEOUT_S` is given up and resumed elsewhere."""

WATCH_PROGRESS_S_MAX = 3600.0
"""The longest bookmark interval a watch may ask for."""

WATCH_IDLE_TIMEOUT_S = 3 * WATCH_PROGRESS_S
"""A watch stream that delivers nothing, not even a bookmark, for this long is treated
as dead (e.g. its node is frozen) and resumed on another node: three bookmarks missed."""

WATCH_LINE_BYTES_MAX = 96 * 1024 * 1024
"""The longest line of a watch stream: one put of the largest value a cluster may be
configured for (64 MiB, about 86 MiB in base64) plus its key and fields. A longer line is
a `ProtocolError`, not a reason to exhaust memory."""

CONSISTENCY_LEVELS = ("linearizable", "stale")
"""`linearizable` reads go through the leader's ReadIndex (§6.4); `stale` reads are served
from the answering node's state machine, possibly behind."""

STREAM_CHUNK_BYTES = 64 * 1024
"""The most one read of a watch stream asks for."""

LEASE_NOT_FOUND = "lease_not_found"
"""The server's error code for a lease that does not exist (`LeaseNotFound`)."""

LOCK_WAIT_S_MAX = 600.0
"""The longest one lock request waits on the server (its `LOCK_WAIT_S_MAX`); `lock()` waits
longer by asking again, keeping its place in the queue (the same lease, the same token)."""

FENCE_HEADER = "X-Kvraft-Fence"

KEEPALIVES_PER_TTL = 3
"""A `lease()` sends a keepalive every TTL / this (etcd's client does the same): two may be
lost, or a failover may take a third of the TTL, before the lease is at risk."""

_KV_PREFIX = "/v1/kv"
_LEASES_PATH = "/v1/leases"
_LOCKS_PATH = "/v1/locks"
_MEMBERS_PATH = "/v1/members"
_TRANSFER_PATH = "/v1/leader/transfer"
_TXN_PATH = "/v1/txn"
_WATCH_PATH = "/v1/watch"
_JSON_HEADERS = (("Accept", "application/json"),)
_JSON_BODY_HEADERS = (("Accept", "application/json"), ("Content-Type", "application/json"))

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Errors: each says whose fault it was.


class KVError(Exception):
    """Base class of every error this client raises."""


class ClientError(KVError):
    """The request was wrong (the caller's fault): a 4xx answer, or rejected locally.

    Fields: `code` (the server's error code, e.g. `bad_key`, `value_too_large`),
    `message`, `status` (the HTTP status, or None when the client rejected the request
    before sending it).
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ConditionFailed(KVError):
    """A conditional write did not apply (412): `revision` is the key's current revision
    (0 when the key does not exist)."""

    def __init__(self, key: str, revision: int) -> None:
        state = "does not exist" if revision == 0 else f"is at revision {revision}"
        super().__init__(f"condition failed: key {key!r} {state}")
        self.key = key
        self.revision = revision


class Unavailable(KVError):
    """No node could serve the request before the timeout (no leader, no quorum, all
    endpoints down or overloaded). Nothing was applied: an attempt that might have been
    applied turns the error into `OutcomeUnknown` instead.

    `status` is the HTTP status of the last answer (e.g. 503), or None when the last
    attempt got no answer at all.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OutcomeUnknown(KVError):
    """A write may or may not have been applied: it reached a node and then the answer
    was lost (connection dropped, timeout, 504). Read the key to find out.

    `status` is the HTTP status of the last answer (e.g. 504), or None when the last
    attempt got no answer at all.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(KVError):
    """A node answered something that does not follow the API (the server's fault)."""


class LeaseNotFound(ClientError):
    """404 `lease_not_found`: the lease does not exist (never granted, revoked, or expired
    because no keepalive reached the leader within its TTL). `lease_id` names it."""

    def __init__(self, lease_id: int, message: str) -> None:
        super().__init__(LEASE_NOT_FOUND, message, 404)
        self.lease_id = lease_id


class LockNotAcquired(ClientError):
    """409 `lock_not_acquired`: the lock was not acquired within the wait (the place in its
    queue was given up), or the lease expired while it waited."""


class LockNotHeld(ClientError):
    """409 `lock_not_held`: a release named a fencing token that neither holds nor waits
    for the lock (released already, or its lease is gone)."""


class FenceFailed(ClientError):
    """412 `fence_failed`: a fenced write's token no longer holds its lock (the lease
    expired, or the lock was released, and maybe taken by another): nothing was written.
    Stop acting as the holder."""


# ---------------------------------------------------------------------------------------
# Sans-IO values.


@dataclass(frozen=True, slots=True)
class Fence:
    """A lock and the fencing token its holder got: pass it as `fence=` to a write, which
    then applies only while that token holds that lock (`X-Kvraft-Fence`)."""

    name: str
    fencing_token: int

    @property
    def header(self) -> str:
        return f"{self.name}:{self.fencing_token}"


@dataclass(frozen=True, slots=True)
class LockHold:
    """A place in a lock's queue: `fencing_token` (greater than every token given for the
    lock before), `lease` (the lease it lives as long as), `key` (``name/token``) and the
    waiter's `value`."""

    name: str
    key: str
    fencing_token: int
    lease: int
    value: str

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.fencing_token)


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds lock `name` (None: nobody) and who waits, in order, at `revision`."""

    name: str
    holder: LockHold | None
    waiters: tuple[LockHold, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request, independent of the endpoint it goes to.

    Fields:
        method: `GET`, `PUT` or `DELETE`.
        target: path and query, already percent-encoded.
        headers: extra request headers.
        body: the request body.
        is_write: the request changes the store.
        retry_after_send: repeating it after it may have reached a node is harmless
            (reads, and writes carrying an idempotency key).
        description: for error messages, e.g. `PUT 'a/b'`.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    is_write: bool
    retry_after_send: bool
    description: str


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP answer: `status`, `headers` (names lower-cased) and the whole `body`."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class FailureKind(enum.Enum):
    """Where an attempt failed, which decides whether a write may have been applied."""

    NOT_SENT = "not_sent"
    """No connection was made: the request cannot have reached the node."""
    AFTER_SEND = "after_send"
    """The connection was made and then failed or timed out: the node may have acted."""


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """An attempt that produced no HTTP answer: `kind` and a human-readable `detail`."""

    kind: FailureKind
    detail: str


Outcome: TypeAlias = HttpResponse | TransportFailure


@dataclass(frozen=True, slots=True)
class Send:
    """Step: send `request` to `endpoint`, waiting at most `timeout_s`; resume the plan
    with the `HttpResponse` or `TransportFailure`."""

    endpoint: str
    request: HttpRequest
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Step: wait `delay_s` seconds, then resume the plan with None."""

    delay_s: float


Step: TypeAlias = Send | Wait
Steps: TypeAlias = Generator[Step, Outcome | None, T]


@dataclass(frozen=True, slots=True)
class Item:
    """One listed key: `key`, `value`, and `revision` (the log index of its last write)."""

    key: str
    value: bytes
    revision: int


ListPage: TypeAlias = tuple[list[Item], str | None]


@dataclass(frozen=True, slots=True)
class ListAnswer:
    """One list page with the revision it was read at.

    Fields:
        items: the page's keys, in key order.
        continuation: pass as `start_after` for the next page; None on the last page.
        revision: the answering node's applied index when it read the page (None from a
            server that does not say). Watching from `revision + 1` misses nothing that
            happened after the page was read.
    """

    items: list[Item]
    continuation: str | None
    revision: int | None


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key as a blocking read found it: `value` (None if the key does not exist) and
    `revision`: of its last write, or of its deletion, or (when the server names neither)
    the answering node's applied index; 0 when nothing is known. Waiting again from this
    revision returns at the key's next change."""

    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A granted lease: its `id` (the grant's log index) and `ttl_s` (whole seconds)."""

    id: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease as the leader sees it: `id`, `ttl_s`, `remaining_s` (by the leader's clock,
    until it expires without another keepalive) and `keys` attached to it, in key order
    (None in `leases()`, whose answer does not list keys)."""

    id: int
    ttl_s: int
    remaining_s: float
    keys: tuple[str, ...] | None


StatusResults: TypeAlias = dict[str, dict[str, Any] | KVError]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timeouts of a call: `timeout_s` overall, `attempt_timeout_s` per attempt,
    `connect_timeout_s` per connection; `unreachable_timeout_s` (None: off) gives up sooner
    when no endpoint has given any HTTP answer for that long: a command line against a
    stopped cluster says so in seconds, not after a timeout meant for slow changes."""

    timeout_s: float = TIMEOUT_S_DEFAULT
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S_DEFAULT
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT
    unreachable_timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "attempt_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ClientError("bad_timeout", f"{name} must be a positive number of seconds")
        unreachable_s = self.unreachable_timeout_s
        if unreachable_s is not None and (
            not isinstance(unreachable_s, int | float) or not unreachable_s > 0
        ):
            raise ClientError("bad_timeout", "unreachable_timeout_s must be positive or None")


# ---------------------------------------------------------------------------------------
# Endpoints and leader discovery.


def normalize_endpoint(text: str) -> str:
    """`127.0.0.1:8001` or `http://127.0.0.1:8001/` -> `http://127.0.0.1:8001`.

    Raises ClientError (`bad_endpoint`) for anything that is not an http(s) origin.
    """
    candidate = text.strip()
    if "://" not in candidate:
        candidate = "http://" + candidate
    try:
        parts = urllib.parse.urlsplit(candidate)
        port = parts.port
    except ValueError as error:
        raise ClientError("bad_endpoint", f"{text!r}: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise ClientError("bad_endpoint", f"{text!r}: only http and https are supported")
    if not parts.hostname:
        raise ClientError("bad_endpoint", f"{text!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ClientError("bad_endpoint", f"{text!r}: give only scheme://host:port")
    host = parts.hostname
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _netloc(endpoint: str) -> str:
    return urllib.parse.urlsplit(endpoint).netloc


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    text = headers.get(name)
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


class EndpointRouter:
    """Which endpoint to try next: sticky to the last one that answered or to the known
    leader, rotating past endpoints that fail. Shared by all calls of one client."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        normalized: list[str] = []
        for endpoint in endpoints:
            value = normalize_endpoint(endpoint)
            if value not in normalized:
                normalized.append(value)
        if not normalized:
            raise ClientError("bad_endpoint", "no endpoints given")
        if len(normalized) > ENDPOINTS_MAX:
            raise ClientError(
                "bad_endpoint", f"{len(normalized)} endpoints given; at most {ENDPOINTS_MAX}"
            )
        self.endpoints: tuple[str, ...] = tuple(normalized)
        self._preferred = 0
        self._endpoint_of_node: dict[int, str] = {}

    @property
    def preferred(self) -> str:
        """The endpoint a new call tries first."""
        return self.endpoints[self._preferred]

    def endpoint_of(self, node_id: int) -> str | None:
        """The endpoint of node `node_id`, if known."""
        return self._endpoint_of_node.get(node_id)

    def after(self, endpoint: str) -> str:
        """The endpoint following `endpoint` in the rotation."""
        index = self.endpoints.index(endpoint) if endpoint in self.endpoints else -1
        return self.endpoints[(index + 1) % len(self.endpoints)]

    def answered(self, endpoint: str, response: HttpResponse) -> None:
        """Learn from an answer: who answered, and who it says the leader is."""
        node_id = _header_int(response.headers, "x-kvraft-node-id")
        if node_id is not None and node_id > 0 and endpoint in self.endpoints:
            self._endpoint_of_node[node_id] = endpoint
        if response.status < 500 and endpoint in self.endpoints:
            self._preferred = self.endpoints.index(endpoint)
        self.prefer_leader(_header_int(response.headers, "x-kvraft-leader-id"))

    def prefer_leader(self, leader_id: object) -> None:
        """Prefer node `leader_id` (untrusted) if its endpoint is known."""
        if type(leader_id) is int:
            leader_endpoint = self._endpoint_of_node.get(leader_id)
            if leader_endpoint is not None:
                self._preferred = self.endpoints.index(leader_endpoint)

    def failed(self, endpoint: str) -> None:
        """`endpoint` could not serve: prefer the next one."""
        if self.preferred == endpoint:
            self._preferred = (self._preferred + 1) % len(self.endpoints)

    def learn_members(self, members: object) -> None:
        """Map node ids to our endpoints from a `/v1/status` member list (untrusted)."""
        if not isinstance(members, list):
            return
        by_netloc = {_netloc(endpoint): endpoint for endpoint in self.endpoints}
        for member in members:
            if not isinstance(member, dict):
                continue
            node_id, address = member.get("id"), member.get("http_address")
            if type(node_id) is int and node_id > 0 and isinstance(address, str):
                endpoint = by_netloc.get(address)
                if endpoint is not None:
                    self._endpoint_of_node[node_id] = endpoint


# ---------------------------------------------------------------------------------------
# Retry planning.


def backoff_delay_s(round_index: int, rng: random.Random) -> float:
    """The wait after `round_index` + 1 full rounds of failed endpoints.

    Exponential from `BACKOFF_S_MIN`, capped at `BACKOFF_S_MAX`, scaled by a random factor
    in [0.5, 1]: the jitter spreads clients that failed together, the floor keeps the
    backoff real.
    """
    exponent = min(max(round_index, 0), 32)  # 2**32 * BACKOFF_S_MIN is far past the cap
    return min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2.0**exponent) * rng.uniform(0.5, 1.0)


def parse_retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` header in seconds, clamped to [0, RETRY_AFTER_S_MAX]; None when
    absent or not a number (the HTTP-date form is ignored: clocks are not shared)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_S_MAX)


def _error_text(response: HttpResponse) -> str:
    code, message = _error_fields(response)
    return f"HTTP {response.status} {code}: {message}"


def _outcome(value: Outcome | None) -> Outcome:
    """What a transport resumed a `Send` step with; None would be a transport bug."""
    if value is None:
        raise TypeError("a Send step must be resumed with its HttpResponse or TransportFailure")
    return value


def plan_exchange(
    request: HttpRequest,
    router: EndpointRouter,
    policy: RetryPolicy,
    clock: Callable[[], float],
    rng: random.Random,
) -> Steps[HttpResponse]:
    """Send `request` until some node gives a final answer (any status below 500), with
    failover and backoff as described in the module docstring.

    Returns the final answer; raises `OutcomeUnknown` or `Unavailable`.
    """
    deadline_s = clock() + policy.timeout_s
    round_index = 0
    tried: set[str] = set()
    answered_s = clock()  # when some endpoint last gave an HTTP answer (or the call began)
    failure_by_endpoint: dict[str, str] = {}  # since then: what each endpoint's attempt got
    maybe_applied = False
    last_problem = "no attempt finished"
    last_status: int | None = None
    endpoint = router.preferred
    while True:
        remaining_s = deadline_s - clock()
        outcome = _outcome(
            (yield Send(endpoint, request, min(remaining_s, policy.attempt_timeout_s)))
        )
        tried.add(endpoint)
        floor_s = 0.0
        if isinstance(outcome, HttpResponse):
            answered_s = clock()
            failure_by_endpoint.clear()
            router.answered(endpoint, outcome)
            if outcome.status < 500:
                return outcome
            last_problem = f"{endpoint}: {_error_text(outcome)}"
            last_status = outcome.status
            if outcome.status == 503:
                floor_s = parse_retry_after_s(outcome.headers.get("retry-after")) or 0.0
            elif request.is_write:
                # 504 (proposed, then timed out) or any other 5xx: it may have applied.
                if not request.retry_after_send:
                    raise OutcomeUnknown(
                        f"{request.description}: {last_problem}; the write may or may not "
                        "have been applied",
                        outcome.status,
                    )
                maybe_applied = True
        else:
            last_problem = f"{endpoint}: {outcome.detail}"
            last_status = None
            if outcome.kind is FailureKind.AFTER_SEND and request.is_write:
                if not request.retry_after_send:
                    raise OutcomeUnknown(
                        f"{request.description}: {last_problem} after the request was sent; "
                        "the write may or may not have been applied"
                    )
                maybe_applied = True
            failure_by_endpoint[endpoint] = outcome.detail
        router.failed(endpoint)
        next_endpoint = router.preferred
        if next_endpoint in tried:
            next_endpoint = router.after(endpoint)
        delay_s = floor_s
        if next_endpoint in tried or floor_s > 0:
            # Every endpoint has failed since the last pause (or the server asked us to
            # wait): back off before starting the next round.
            delay_s = max(floor_s, backoff_delay_s(round_index, rng))
            round_index += 1
            tried.clear()
        unreachable_s = policy.unreachable_timeout_s
        if (
            unreachable_s is not None
            and len(failure_by_endpoint) == len(router.endpoints)
            and clock() + delay_s - answered_s >= unreachable_s
        ):
            # Every endpoint failed without an HTTP answer, and by the next attempt none will
            # have answered for unreachable_s: give up now rather than wait.
            error_type = OutcomeUnknown if maybe_applied else Unavailable
            suffix = "; the write may or may not have been applied" if maybe_applied else ""
            tried_text = "; ".join(
                f"{name} ({detail})" for name, detail in sorted(failure_by_endpoint.items())
            )
            raise error_type(
                f"{request.description}: no member answered in {clock() - answered_s:.1f} s; "
                f"tried {tried_text}{suffix}"
            )
        if clock() + delay_s >= deadline_s:
            error_type = OutcomeUnknown if maybe_applied else Unavailable
            suffix = "; the write may or may not have been applied" if maybe_applied else ""
            raise error_type(
                f"{request.description}: no answer within {policy.timeout_s:g} s "
                f"(last: {last_problem}){suffix}",
                last_status,
            )
        if delay_s > 0:
            yield Wait(delay_s)
        endpoint = next_endpoint


def plan_single_attempt(
    endpoint: str, request: HttpRequest, router: EndpointRouter, policy: RetryPolicy
) -> Steps[HttpResponse]:
    """Ask exactly one endpoint once: for per-node status, or for a caller that does its
    own retrying (`kvraft serve --join`). Returns any answer below 500.

    Nothing is repeated, so a failure says only what this attempt did: `Unavailable` if it
    got no connection or a 503 (nothing was applied), or if a read failed in any other
    way; `OutcomeUnknown` if a write failed after it may have reached the node (a lost
    connection or timeout after sending, a 504 or another 5xx), whether or not the write
    would be safe to repeat.
    """
    outcome = _outcome(
        (yield Send(endpoint, request, min(policy.timeout_s, policy.attempt_timeout_s)))
    )
    if isinstance(outcome, TransportFailure):
        if outcome.kind is FailureKind.AFTER_SEND and request.is_write:
            raise OutcomeUnknown(
                f"{request.description}: {endpoint}: {outcome.detail} after the request was "
                "sent; the write may or may not have been applied"
            )
        raise Unavailable(f"{endpoint}: {outcome.detail}")
    router.answered(endpoint, outcome)
    if outcome.status >= 500:
        if request.is_write and outcome.status != 503:
            raise OutcomeUnknown(
                f"{request.description}: {endpoint}: {_error_text(outcome)}; the write may "
                "or may not have been applied",
                outcome.status,
            )
        raise Unavailable(f"{endpoint}: {_error_text(outcome)}", outcome.status)
    return outcome


# ---------------------------------------------------------------------------------------
# Request builders.


def key_path(key: str) -> str:
    """The percent-encoded path of `key`: `/v1/kv/` plus each `/`-separated segment quoted.

    Raises ClientError (`bad_key`) for an empty key or one that is not text.
    """
    if not isinstance(key, str) or not key:
        raise ClientError("bad_key", "a key must be a non-empty string")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("bad_key", f"key {key!r} is not valid Unicode text") from None
    segments = []
    for segment in key.split("/"):
        if segment in (".", ".."):
            # Dot segments are percent-encoded so no URL normaliser can resolve them.
            segments.append("%2E" * len(segment))
        else:
            segments.append(urllib.parse.quote(segment, safe=""))
    return f"{_KV_PREFIX}/" + "/".join(segments)


def _check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCY_LEVELS:
        raise ClientError(
            "bad_request", f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}"
        )


def _write_headers(
    if_revision: int | None, idempotency_key: str | None, fence: Fence | None = None
) -> list[tuple[str, str]]:
    headers = list(_JSON_HEADERS)
    if fence is not None:
        if not isinstance(fence, Fence):
            raise ClientError("bad_fence", "fence must be a kvraft.client.Fence")
        headers.append((FENCE_HEADER, fence.header))
    if if_revision is not None:
        if type(if_revision) is not int or if_revision < 0:
            raise ClientError("bad_request", "if_revision must be a non-negative integer")
        headers.append(("If-Match", f'"{if_revision}"'))
    if idempotency_key is not None:
        if (
            not isinstance(idempotency_key, str)
            or not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_CHARS_MAX
            or not all("!" <= char <= "~" for char in idempotency_key)
        ):
            raise ClientError(
                "bad_request",
                f"an idempotency key is 1..{IDEMPOTENCY_KEY_CHARS_MAX} visible ASCII characters",
            )
        headers.append(("Idempotency-Key", idempotency_key))
    return headers


def build_put(
    key: str,
    value: bytes,
    *,
    if_revision: int | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
    lease: int | None = None,
    fence: Fence | None = None,
) -> HttpRequest:
    """`PUT /v1/kv/{key}[?lease=ID]`: store `value`; `if_revision` / `if_absent` make it
    conditional; `lease` attaches the key to that lease (deleted when the lease goes);
    `fence` applies it only while that lock's token holds."""
    target = key_path(key)
    if lease is not None:
        target += f"?lease={_lease_id(lease)}"
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ClientError("bad_value", f"a value must be bytes, not {type(value).__name__}")
    if if_absent and if_revision is not None:
        raise ClientError("bad_request", "give if_revision or if_absent, not both")
    headers = _write_headers(if_revision, idempotency_key, fence)
    if if_absent:
        headers.append(("If-None-Match", "*"))
    headers.append(("Content-Type", "application/octet-stream"))
    return HttpRequest(
        method="PUT",
        target=target,
        headers=tuple(headers),
        body=bytes(value),
        is_write=True,
        retry_after_send=idempotency_key is not None,
        description=f"PUT {key!r}",
    )


def build_delete(
    key: str,
    *,
    if_revision: int | None = None,
    idempotency_key: str | None = None,
    fence: Fence | None = None,
) -> HttpRequest:
    """`DELETE /v1/kv/{key}`, conditional on `if_revision` if given, fenced by `fence`."""
    target = key_path(key)
    return HttpRequest(
        method="DELETE",
        target=target,
        headers=tuple(_write_headers(if_revision, idempotency_key, fence)),
        body=b"",
        is_write=True,
        retry_after_send=idempotency_key is not None,
        description=f"DELETE {key!r}",
    )


def _read_request(target: str, description: str) -> HttpRequest:
    return HttpRequest(
        method="GET",
        target=target,
        headers=_JSON_HEADERS,
        body=b"",
        is_write=False,
        retry_after_send=True,
        description=description,
    )


def build_get(
    key: str,
    *,
    consistency: str = "linearizable",
    wait_revision: int | None = None,
    wait_s: float | None = None,
) -> HttpRequest:
    """`GET /v1/kv/{key}?consistency=...[&wait_revision=N&wait_s=S]`.

    With `wait_revision` the read blocks: the node answers once the key's revision is
    above N (its new value, or 404 for a deletion), or after `wait_s` seconds with the
    key's current state."""
    _check_consistency(consistency)
    target = f"{key_path(key)}?consistency={consistency}"
    if wait_revision is None:
        if wait_s is not None:
            raise ClientError("bad_request", "wait_s needs wait_revision")
        return _read_request(target, f"GET {key!r}")
    if type(wait_revision) is not int or wait_revision < 0:
        raise ClientError("bad_request", "wait_revision must be a non-negative integer")
    if wait_s is None or not isinstance(wait_s, int | float) or not 0 < wait_s <= WAIT_S_MAX:
        raise ClientError(
            "bad_request", f"wait_s must be a number of seconds in (0, {WAIT_S_MAX:g}]"
        )
    target += f"&wait_revision={wait_revision}&wait_s={wait_s:g}"
    return _read_request(target, f"GET {key!r} after revision {wait_revision}")


def build_list(
    prefix: str = "",
    *,
    limit: int = LIST_PAGE_SIZE_DEFAULT,
    start_after: str | None = None,
    consistency: str = "linearizable",
) -> HttpRequest:
    """`GET /v1/kv?prefix=...&limit=...[&start_after=...]&consistency=...`."""
    _check_consistency(consistency)
    if not isinstance(prefix, str):
        raise ClientError("bad_request", "prefix must be a string")
    if type(limit) is not int or not 1 <= limit <= LIST_LIMIT_MAX:
        raise ClientError("bad_request", f"limit must be an integer in 1..{LIST_LIMIT_MAX}")
    query: list[tuple[str, str]] = [("prefix", prefix), ("limit", str(limit))]
    if start_after is not None:
        if not isinstance(start_after, str):
            raise ClientError("bad_request", "start_after must be a string")
        query.append(("start_after", start_after))
    query.append(("consistency", consistency))
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    return _read_request(f"{_KV_PREFIX}?{encoded}", f"LIST {prefix!r}")


def build_delete_prefix(
    prefix: str, *, idempotency_key: str | None = None, fence: Fence | None = None
) -> HttpRequest:
    """`DELETE /v1/kv?prefix=P`: every key under `prefix` in one revision ("" is every key,
    and is sent as an explicit empty `prefix=`, which the server requires)."""
    if not isinstance(prefix, str):
        raise ClientError("bad_request", "prefix must be a string")
    encoded = urllib.parse.urlencode([("prefix", prefix)], quote_via=urllib.parse.quote, safe="")
    return HttpRequest(
        method="DELETE",
        target=f"{_KV_PREFIX}?{encoded}",
        headers=tuple(_write_headers(None, idempotency_key, fence)),
        body=b"",
        is_write=True,
        retry_after_send=idempotency_key is not None,
        description=f"DELETE prefix {prefix!r}",
    )


def build_count(prefix: str = "", *, consistency: str = "linearizable") -> HttpRequest:
    """`GET /v1/kv?prefix=P&count_only=true&consistency=...`."""
    _check_consistency(consistency)
    if not isinstance(prefix, str):
        raise ClientError("bad_request", "prefix must be a string")
    query = [("prefix", prefix), ("count_only", "true"), ("consistency", consistency)]
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    return _read_request(f"{_KV_PREFIX}?{encoded}", f"COUNT {prefix!r}")


def build_txn(
    txn: Txn, *, idempotency_key: str | None = None, fence: Fence | None = None
) -> HttpRequest:
    """`POST /v1/txn` with `txn`'s body. A transaction that only reads is repeated like a
    read; one that writes only with an idempotency key (like a put)."""
    if not isinstance(txn, Txn):
        raise ClientError("bad_request", "txn must be a kvraft.txn.Txn")
    return HttpRequest(
        method="POST",
        target=_TXN_PATH,
        headers=(
            *_write_headers(None, idempotency_key, fence),
            ("Content-Type", "application/json"),
        ),
        body=json.dumps(txn.to_json()).encode(),
        is_write=True,
        retry_after_send=idempotency_key is not None or not txn.writes,
        description="POST /v1/txn",
    )


def build_status() -> HttpRequest:
    """`GET /v1/status`."""
    return _read_request("/v1/status", "GET /v1/status")


def _node_id(node_id: object, what: str) -> int:
    if type(node_id) is not int or node_id < 1:
        raise ClientError("bad_request", f"{what} must be a positive integer node id")
    return node_id


def build_members() -> HttpRequest:
    """`GET /v1/members`: the leader's view of the membership (any node forwards it)."""
    return _read_request(_MEMBERS_PATH, "members")


def build_add_member(
    node_id: int, raft_address: str, http_address: str, *, voter: bool = True
) -> HttpRequest:
    """`POST /v1/members`: add node `node_id` at these `host:port` addresses as a learner,
    promoted to voter once it has caught up unless `voter` is False.

    Safe to repeat: adding a node that is already a member at the same addresses changes
    nothing (the server answers with the members), so it is retried like a keyed write.
    """
    _node_id(node_id, "node_id")
    for name, address in (("raft_address", raft_address), ("http_address", http_address)):
        if not isinstance(address, str) or not address:
            raise ClientError("bad_request", f"{name} must be a non-empty host:port string")
    if not isinstance(voter, bool):
        raise ClientError("bad_request", "voter must be True or False")
    body = {"id": node_id, "raft_address": raft_address, "http_address": http_address}
    return HttpRequest(
        method="POST",
        target=_MEMBERS_PATH,
        headers=_JSON_BODY_HEADERS,
        body=json.dumps({**body, "voter": voter}).encode(),
        is_write=True,
        retry_after_send=True,
        description=f"add node {node_id}",
    )


def build_remove_member(node_id: int) -> HttpRequest:
    """`DELETE /v1/members/{node_id}`: remove a voter or learner (a leader that removes
    itself hands leadership over first).

    Not repeated after it may have reached a node: once the removal has committed, the
    same request is refused (404 `unknown_member`), so a blind retry would turn a success
    into an error. An ambiguous failure is `OutcomeUnknown`; `members()` tells.
    """
    return HttpRequest(
        method="DELETE",
        target=f"{_MEMBERS_PATH}/{_node_id(node_id, 'node_id')}",
        headers=_JSON_BODY_HEADERS,
        body=b"",
        is_write=True,
        retry_after_send=False,
        description=f"remove node {node_id}",
    )


def build_transfer_leadership(target: int | None = None) -> HttpRequest:
    """`POST /v1/leader/transfer`: hand leadership to voter `target`, or (None) to the
    voter the leader finds most caught up. Safe to repeat: moving leadership to where it
    already is changes nothing."""
    body = b"" if target is None else json.dumps({"to": _node_id(target, "target")}).encode()
    return HttpRequest(
        method="POST",
        target=_TRANSFER_PATH,
        headers=_JSON_BODY_HEADERS,
        body=body,
        is_write=True,
        retry_after_send=True,
        description="transfer leadership",
    )


def _lease_id(lease_id: object) -> int:
    if type(lease_id) is not int or lease_id < 1:
        raise ClientError("bad_lease", "a lease id is a positive integer")
    return lease_id


def _lease_path(lease_id: int) -> str:
    return f"{_LEASES_PATH}/{_lease_id(lease_id)}"


def build_lease_grant(ttl_s: int) -> HttpRequest:
    """`POST /v1/leases {"ttl_s": N}`: a new lease of `ttl_s` whole seconds.

    Decision: repeated after it may have reached a node (like a keyed write). A grant
    whose answer was lost leaves at most a lease nobody knows the id of; no key can be
    attached to it, so it harms nothing and expires by itself after `ttl_s`. Refusing to
    retry would instead fail the caller on every failover, which is worse.
    """
    if type(ttl_s) is not int or ttl_s < 1:
        raise ClientError("bad_ttl", "ttl_s must be a positive whole number of seconds")
    return HttpRequest(
        method="POST",
        target=_LEASES_PATH,
        headers=_JSON_BODY_HEADERS,
        body=json.dumps({"ttl_s": ttl_s}).encode(),
        is_write=True,
        retry_after_send=True,
        description=f"grant a {ttl_s} s lease",
    )


def build_lease_keepalive(lease_id: int) -> HttpRequest:
    """`POST /v1/leases/{id}/keepalive`: restart the lease's TTL. It writes nothing to the
    log and repeating it is harmless, so it is retried like a read."""
    return HttpRequest(
        method="POST",
        target=_lease_path(lease_id) + "/keepalive",
        headers=_JSON_HEADERS,
        body=b"",
        is_write=False,
        retry_after_send=True,
        description=f"keepalive of lease {lease_id}",
    )


def build_lease_revoke(lease_id: int) -> HttpRequest:
    """`DELETE /v1/leases/{id}`: the lease and its keys go, in one revision.

    Repeated after it may have reached a node: the caller wants the lease gone, and a
    repeat can only find it already gone. So a `LeaseNotFound` from a revoke means "the
    lease is gone", which may be this very call's earlier attempt's doing.
    """
    return HttpRequest(
        method="DELETE",
        target=_lease_path(lease_id),
        headers=_JSON_HEADERS,
        body=b"",
        is_write=True,
        retry_after_send=True,
        description=f"revoke lease {lease_id}",
    )


def build_lease_info(lease_id: int) -> HttpRequest:
    """`GET /v1/leases/{id}`: the lease's TTL, time remaining and keys (from the leader)."""
    return _read_request(_lease_path(lease_id), f"GET lease {lease_id}")


def build_leases() -> HttpRequest:
    """`GET /v1/leases`: every live lease, by id."""
    return _read_request(_LEASES_PATH, "GET /v1/leases")


def _lock_path(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ClientError("bad_lock", "a lock name is a non-empty string")
    return f"{_LOCKS_PATH}/{urllib.parse.quote(name, safe='/')}"


def build_lock_acquire(name: str, lease: int, *, wait_s: float, value: str = "") -> HttpRequest:
    """`POST /v1/locks/{name} {"lease", "wait_s", "value"}`: wait up to `wait_s` for the lock.

    Repeated after it may have reached a node: a lease has one place per lock, so a
    repeat answers the same place and token."""
    if not isinstance(wait_s, int | float) or not 0 <= wait_s <= LOCK_WAIT_S_MAX:
        raise ClientError("bad_request", f"wait_s must be in 0..{LOCK_WAIT_S_MAX:g} seconds")
    if not isinstance(value, str):
        raise ClientError("bad_lock", "a lock waiter's value is a string")
    body = {"lease": str(_lease_id(lease)), "wait_s": wait_s, "value": value}
    return HttpRequest(
        method="POST",
        target=_lock_path(name),
        headers=_JSON_BODY_HEADERS,
        body=json.dumps(body).encode(),
        is_write=True,
        retry_after_send=True,
        description=f"acquire lock {name!r}",
    )


def build_lock_release(name: str, fencing_token: int) -> HttpRequest:
    """`DELETE /v1/locks/{name} {"fencing_token": T}`. Repeated after it may have reached a
    node: a repeat can only find the place gone (`LockNotHeld`)."""
    if type(fencing_token) is not int or fencing_token < 1:
        raise ClientError("bad_lock", "a fencing token is a positive integer")
    return HttpRequest(
        method="DELETE",
        target=_lock_path(name),
        headers=_JSON_BODY_HEADERS,
        body=json.dumps({"fencing_token": fencing_token}).encode(),
        is_write=True,
        retry_after_send=True,
        description=f"release lock {name!r}",
    )


def build_lock_info(name: str) -> HttpRequest:
    """`GET /v1/locks/{name}`: the holder and the waiters, linearizably."""
    return _read_request(_lock_path(name), f"GET lock {name!r}")


def build_locks() -> HttpRequest:
    """`GET /v1/locks`: every held lock and its holder."""
    return _read_request(_LOCKS_PATH, "GET /v1/locks")


# ---------------------------------------------------------------------------------------
# Response interpreters.


def _json_body(response: HttpResponse) -> Any:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError):
        raise ProtocolError(
            f"HTTP {response.status}: the body is not JSON: {response.body[:80]!r}"
        ) from None


def _json_object(response: HttpResponse) -> dict[str, Any]:
    body = _json_body(response)
    if not isinstance(body, dict):
        raise ProtocolError(f"HTTP {response.status}: expected a JSON object")
    return body


def _error_fields(response: HttpResponse) -> tuple[str, str]:
    """(code, message) of an error answer; tolerant of non-JSON bodies."""
    try:
        body = json.loads(response.body)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        code, message = body.get("error"), body.get("message")
        return (
            code if isinstance(code, str) else "error",
            message if isinstance(message, str) else "",
        )
    text = response.body[:200].decode("utf-8", "replace").strip()
    return "error", text


def _revision_field(body: Mapping[str, Any], status: int) -> int:
    revision = body.get("revision")
    if type(revision) is not int or revision < 0:
        raise ProtocolError(f"HTTP {status}: 'revision' is not a non-negative integer")
    return revision


def _raise_for_status(response: HttpResponse, key: str | None) -> None:
    """Raise the typed error for any answer that is not a 200."""
    if response.status == 200:
        return
    if 400 <= response.status < 500:
        code, message = _error_fields(response)
        error = _LOCK_ERRORS.get(code)
        if error is not None:
            raise error(code, message, response.status)
        if response.status == 412:
            raise ConditionFailed(key or "", _revision_field(_json_object(response), 412))
        raise ClientError(code, message, response.status)
    raise ProtocolError(f"unexpected {_error_text(response)}")


_LOCK_ERRORS: dict[str, type[ClientError]] = {
    "fence_failed": FenceFailed,
    "lock_not_acquired": LockNotAcquired,
    "lock_not_held": LockNotHeld,
}


def interpret_put(response: HttpResponse, key: str | None = None) -> int:
    """The revision of a successful put."""
    _raise_for_status(response, key)
    return _revision_field(_json_object(response), response.status)


def interpret_delete(response: HttpResponse, key: str | None = None) -> tuple[int, bool]:
    """(revision, deleted) of a delete; `deleted` is False when the key did not exist."""
    _raise_for_status(response, key)
    body = _json_object(response)
    deleted = body.get("deleted")
    if not isinstance(deleted, bool):
        raise ProtocolError("HTTP 200: 'deleted' is not a boolean")
    return _revision_field(body, response.status), deleted


def interpret_delete_prefix(response: HttpResponse) -> tuple[int, int]:
    """(revision, deleted count) of a range delete."""
    _raise_for_status(response, None)
    body = _json_object(response)
    deleted = body.get("deleted")
    if type(deleted) is not int or deleted < 0:
        raise ProtocolError("HTTP 200: 'deleted' is not a count")
    return _revision_field(body, response.status), deleted


def interpret_count(response: HttpResponse) -> int:
    """The number of keys a `count_only` list counted."""
    _raise_for_status(response, None)
    count = _json_object(response).get("count")
    if type(count) is not int or count < 0:
        raise ProtocolError("HTTP 200: 'count' is not a count")
    return count


def interpret_txn(response: HttpResponse, txn: Txn) -> TxnAnswer:
    """The answer to `txn`: a failed compare is not an error (`succeeded` is False)."""
    _raise_for_status(response, None)
    try:
        return parse_txn_answer(txn, _json_object(response))
    except TxnSyntaxError as error:
        raise ProtocolError(f"HTTP 200: {error}") from None


def interpret_get(response: HttpResponse, key: str | None = None) -> tuple[bytes, int] | None:
    """(value, revision), or None when the key does not exist."""
    if response.status == 404 and _error_fields(response)[0] == "not_found":
        return None
    _raise_for_status(response, key)
    etag = response.headers.get("etag", "").strip()
    digits = etag.removeprefix("W/").strip('"')
    if not (etag.endswith('"') and digits.isdigit() and digits.isascii()):
        raise ProtocolError(f"HTTP 200: ETag {etag!r} is not a quoted revision")
    return response.body, int(digits)


def interpret_list(response: HttpResponse) -> ListPage:
    """(items, continuation) of one list page; continuation is None on the last page."""
    answer = interpret_list_answer(response)
    return answer.items, answer.continuation


def interpret_list_answer(response: HttpResponse) -> ListAnswer:
    """One list page with the revision it was read at (None if the answer has none)."""
    _raise_for_status(response, None)
    body = _json_object(response)
    revision = body.get("revision")
    if revision is not None and (type(revision) is not int or revision < 0):
        raise ProtocolError("HTTP 200: 'revision' is not a non-negative integer")
    raw_items, continuation = body.get("items"), body.get("continuation")
    if not isinstance(raw_items, list):
        raise ProtocolError("HTTP 200: 'items' is not a list")
    if continuation is not None and not isinstance(continuation, str):
        raise ProtocolError("HTTP 200: 'continuation' is neither a string nor null")
    items = []
    for raw in raw_items:
        if not isinstance(raw, dict):
            raise ProtocolError("HTTP 200: a list item is not an object")
        key, encoded = raw.get("key"), raw.get("value_b64")
        if not isinstance(key, str) or not isinstance(encoded, str):
            raise ProtocolError("HTTP 200: a list item lacks 'key' or 'value_b64'")
        try:
            value = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"HTTP 200: item {key!r} has invalid base64") from None
        items.append(Item(key=key, value=value, revision=_revision_field(raw, 200)))
    return ListAnswer(items, continuation, revision)


def interpret_key_state(response: HttpResponse, key: str | None = None) -> KeyState:
    """A blocking read's answer: the value and revision, or (404) the key's absence with
    the revision of its deletion (the body's `revision`, else the node's
    `X-Kvraft-Revision`, else 0)."""
    if response.status == 404 and _error_fields(response)[0] == "not_found":
        try:
            body = json.loads(response.body)
        except (ValueError, RecursionError):
            body = None
        revision = body.get("revision") if isinstance(body, dict) else None
        if type(revision) is not int or revision < 0:
            revision = _header_int(response.headers, "x-kvraft-revision") or 0
        return KeyState(None, revision)
    found = interpret_get(response, key)
    assert found is not None
    return KeyState(found[0], found[1])


def interpret_status(response: HttpResponse) -> dict[str, Any]:
    """The node's status object, as the server sent it (checked to be a JSON object)."""
    _raise_for_status(response, None)
    return _json_object(response)


def interpret_members(response: HttpResponse) -> dict[str, Any]:
    """The members view of `GET /v1/members` and of a successful add or remove:
    `leader_id`, `term`, `change_pending` and `members` (checked to be a list; each
    member's fields are the server's, untrusted). A 404 (`unknown_member`) or 409
    (`member_conflict`, `change_in_progress`) is a `ClientError` with that code."""
    _raise_for_status(response, None)
    body = _json_object(response)
    if not isinstance(body.get("members"), list):
        raise ProtocolError(f"HTTP {response.status}: 'members' is not a list")
    return body


def interpret_transfer(response: HttpResponse) -> dict[str, Any]:
    """The answer to a leadership transfer: `leader_id` (the new leader) and
    `previous_leader_id`, as the server sent them (checked to be a JSON object)."""
    _raise_for_status(response, None)
    return _json_object(response)


def _raise_for_lease(response: HttpResponse, lease_id: int | None) -> None:
    """`LeaseNotFound` for a 404 `lease_not_found`, else as `_raise_for_status`."""
    if response.status == 404:
        code, message = _error_fields(response)
        if code == LEASE_NOT_FOUND:
            raise LeaseNotFound(lease_id or 0, message)
    _raise_for_status(response, None)


def _lease_id_field(body: Mapping[str, Any], status: int) -> int:
    text = body.get("id")
    if not isinstance(text, str) or not (text.isascii() and text.isdecimal()) or text == "0":
        raise ProtocolError(f"HTTP {status}: 'id' is not a decimal lease id")
    return int(text)


def _ttl_field(body: Mapping[str, Any], status: int) -> int:
    ttl_s = body.get("ttl_s")
    if type(ttl_s) is not int or ttl_s < 1:
        raise ProtocolError(f"HTTP {status}: 'ttl_s' is not a positive integer")
    return ttl_s


def _lease_info(body: object, status: int, with_keys: bool) -> LeaseInfo:
    if not isinstance(body, dict):
        raise ProtocolError(f"HTTP {status}: a lease is not a JSON object")
    remaining_s = body.get("remaining_s")
    if not isinstance(remaining_s, int | float) or isinstance(remaining_s, bool):
        raise ProtocolError(f"HTTP {status}: 'remaining_s' is not a number")
    keys: tuple[str, ...] | None = None
    if with_keys:
        raw_keys = body.get("keys")
        if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
            raise ProtocolError(f"HTTP {status}: 'keys' is not a list of strings")
        keys = tuple(raw_keys)
    return LeaseInfo(
        _lease_id_field(body, status), _ttl_field(body, status), float(remaining_s), keys
    )


def interpret_lease_grant(response: HttpResponse) -> LeaseGrant:
    """The granted lease; a TTL out of the server's bounds is a `ClientError` (`bad_ttl`)."""
    _raise_for_status(response, None)
    body = _json_object(response)
    return LeaseGrant(_lease_id_field(body, 200), _ttl_field(body, 200))


def interpret_lease_keepalive(response: HttpResponse, lease_id: int) -> int:
    """The lease's TTL in seconds (its deadline is that far from the keepalive's arrival);
    `LeaseNotFound` if it is gone."""
    _raise_for_lease(response, lease_id)
    return _ttl_field(_json_object(response), 200)


def interpret_lease_revoke(response: HttpResponse, lease_id: int) -> tuple[int, int]:
    """(revision, number of keys deleted) of a revoke; `LeaseNotFound` if it is gone."""
    _raise_for_lease(response, lease_id)
    body = _json_object(response)
    deleted = body.get("deleted")
    if type(deleted) is not int or deleted < 0:
        raise ProtocolError("HTTP 200: 'deleted' is not a count")
    return _revision_field(body, 200), deleted


def interpret_lease_info(response: HttpResponse, lease_id: int) -> LeaseInfo:
    """The lease with its keys; `LeaseNotFound` if it is gone."""
    _raise_for_lease(response, lease_id)
    return _lease_info(_json_object(response), 200, with_keys=True)


def interpret_leases(response: HttpResponse) -> list[LeaseInfo]:
    """Every live lease, by id (`keys` is None: the list does not carry them)."""
    _raise_for_status(response, None)
    leases = _json_object(response).get("leases")
    if not isinstance(leases, list):
        raise ProtocolError("HTTP 200: 'leases' is not a list")
    return [_lease_info(one, 200, with_keys=False) for one in leases]


def _lock_hold(body: object, status: int) -> LockHold:
    if not isinstance(body, dict):
        raise ProtocolError(f"HTTP {status}: a lock is not a JSON object")
    name, key, token = body.get("name"), body.get("key"), body.get("fencing_token")
    lease, value = body.get("lease"), body.get("value")
    if not isinstance(name, str) or not isinstance(key, str) or not isinstance(value, str):
        raise ProtocolError(f"HTTP {status}: a lock's name, key or value is not a string")
    if type(token) is not int or token < 1:
        raise ProtocolError(f"HTTP {status}: 'fencing_token' is not a positive integer")
    return LockHold(name, key, token, _lease_id_field({"id": lease}, status), value)


def interpret_lock_acquire(response: HttpResponse, lease: int) -> LockHold:
    """The place held; `LockNotAcquired` (409) when out of time or the lease went while
    waiting; `LeaseNotFound` when the lease was gone to begin with."""
    _raise_for_lease(response, lease)
    return _lock_hold(_json_object(response), 200)


def interpret_lock_release(response: HttpResponse) -> int:
    """The revision of the release; `LockNotHeld` (409) if the token had no place."""
    _raise_for_status(response, None)
    return _revision_field(_json_object(response), 200)


def interpret_lock_info(response: HttpResponse) -> LockInfo:
    """The holder (None: nobody) and waiters of one lock."""
    _raise_for_status(response, None)
    body = _json_object(response)
    holder, waiters, name = body.get("holder"), body.get("waiters"), body.get("name")
    if not isinstance(waiters, list) or not isinstance(name, str):
        raise ProtocolError("HTTP 200: a lock's 'name' or 'waiters' is malformed")
    return LockInfo(
        name,
        None if holder is None else _lock_hold(holder, 200),
        tuple(_lock_hold(one, 200) for one in waiters),
        _revision_field(body, 200),
    )


def interpret_locks(response: HttpResponse) -> list[LockHold]:
    """The holder of every held lock, by name."""
    _raise_for_status(response, None)
    locks = _json_object(response).get("locks")
    if not isinstance(locks, list) or not all(isinstance(one, dict) for one in locks):
        raise ProtocolError("HTTP 200: 'locks' is not a list of objects")
    return [_lock_hold(one.get("holder"), 200) for one in locks]


# ---------------------------------------------------------------------------------------
# Watch: the stream parser and the resume logic (sans-IO).


class WatchCompacted(KVError):
    """The watch asked for changes the node no longer keeps (410 `compacted`): every change
    up to `compact_revision` is gone from its history, so the caller's view may have missed
    some. Nothing is retried: list again (`list_with_revision`) and watch from the list's
    revision + 1."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"the watch history was compacted: changes up to revision {compact_revision} "
            "are no longer kept; list again and watch from the list's revision + 1"
        )
        self.compact_revision = compact_revision


WATCH_EVENT_TYPES = ("put", "delete", "progress")
"""The event types a caller of `watch` may see (`progress` only if asked for)."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One message of a watch stream.

    Fields:
        type: `put`, `delete` or `progress` (and, inside the client only, `lagged`).
        key: the changed key; None for `progress`.
        value: the new value of a `put`; None otherwise.
        revision: the change's revision; for `progress`, every matching change at or
            below it has been delivered.
        prev_revision: the key's revision before the change (None if it did not exist,
            and for `progress`).
    """

    type: str
    key: str | None
    value: bytes | None
    revision: int
    prev_revision: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as the server writes it (one NDJSON line)."""
        if self.type == "put":
            assert self.value is not None
            return {
                "type": "put",
                "key": self.key,
                "value_b64": base64.b64encode(self.value).decode("ascii"),
                "revision": self.revision,
                "prev_revision": self.prev_revision,
            }
        if self.type == "delete":
            return {
                "type": "delete",
                "key": self.key,
                "revision": self.revision,
                "prev_revision": self.prev_revision,
            }
        return {"type": self.type, "revision": self.revision}


def _stream_int(body: Mapping[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if type(value) is not int or value < minimum:
        raise ProtocolError(f"watch stream: {name!r} is not an integer >= {minimum}: {value!r}")
    return value


def parse_watch_message(obj: object) -> WatchEvent | None:
    """One decoded NDJSON line (untrusted) as a `WatchEvent`; None for a type this client
    does not know (a newer server's addition is skipped, not fatal). Raises ProtocolError
    for anything malformed."""
    if not isinstance(obj, dict):
        raise ProtocolError("watch stream: a line is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("watch stream: 'type' is not a string")
    if kind in ("progress", "lagged"):
        return WatchEvent(kind, None, None, _stream_int(obj, "revision", 0))
    if kind not in ("put", "delete"):
        return None
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise ProtocolError("watch stream: 'key' is not a non-empty string")
    revision = _stream_int(obj, "revision", 1)
    prev_revision = obj.get("prev_revision")
    if prev_revision is not None and (
        type(prev_revision) is not int or not 1 <= prev_revision < revision
    ):
        raise ProtocolError(
            f"watch stream: 'prev_revision' of {key!r} is neither null nor a revision "
            f"below {revision}: {prev_revision!r}"
        )
    value: bytes | None = None
    if kind == "put":
        encoded = obj.get("value_b64")
        if not isinstance(encoded, str):
            raise ProtocolError(f"watch stream: put of {key!r} lacks 'value_b64'")
        try:
            value = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"watch stream: put of {key!r} has invalid base64") from None
    return WatchEvent(kind, key, value, revision, prev_revision)


class WatchStreamParser:
    """Bytes of an NDJSON watch stream in, `WatchEvent`s out; no IO.

    `feed(data)` returns the events completed by `data` (a line may arrive split across
    any number of chunks). Blank lines are skipped (keep-alives); a line longer than
    `line_bytes_max` (even one still incomplete), a line that is not JSON, or a malformed
    event raises ProtocolError. A partial last line when the stream ends is discarded by
    simply not feeding more: the resume logic asks again from the last complete revision.
    """

    def __init__(self, line_bytes_max: int = WATCH_LINE_BYTES_MAX) -> None:
        if type(line_bytes_max) is not int or line_bytes_max < 1:
            raise ValueError("line_bytes_max must be a positive integer")
        self.line_bytes_max = line_bytes_max
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline

    def feed(self, data: bytes) -> list[WatchEvent]:
        self._buffer += data
        events: list[WatchEvent] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            start = end + 1
            self._scanned = start
            event = self._line(line)
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if len(self._buffer) > self.line_bytes_max:
            raise ProtocolError(f"watch stream: a line longer than {self.line_bytes_max} bytes")
        return events

    def _line(self, line: bytes) -> WatchEvent | None:
        if len(line) > self.line_bytes_max:
            raise ProtocolError(f"watch stream: a line longer than {self.line_bytes_max} bytes")
        line = line.strip()
        if not line:
            return None
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError(f"watch stream: a line is not JSON: {line[:80]!r}") from None
        return parse_watch_message(obj)


class WatchCursor:
    """Where a watch stands, so that it can resume anywhere without gap or repeat; no IO.

    `next_revision` is the first revision not known to be complete: every matching change
    below it has been delivered. After a put or delete at revision R the cursor stands at
    R, with the keys delivered at R remembered: a revision may hold several changes and a
    connection can be cut between them, so a resumed stream starts at R again and the
    changes of R already delivered are dropped. A later event, `progress` R or `lagged` R
    completes R (the cursor moves to R + 1). Any event below the cursor is dropped, so
    however the server repeats itself the caller sees each change once, in order.

    A change outside the watched key or prefix is a ProtocolError (the server's fault).
    """

    def __init__(self, prefix: str, key: str | None, start_revision: int | None) -> None:
        self.prefix = prefix
        self.key = key
        self.next_revision: int | None = start_revision
        self._keys_at_next: set[str] = set()
        self._bookmark = -1

    def opened(self, headers: Mapping[str, str]) -> None:
        """A stream was opened: a watch "from now" is from the node's revision + 1 (its
        `X-Kvraft-Revision`), so that a resume elsewhere starts from there, not from that
        other node's now."""
        if self.next_revision is None:
            revision = _header_int(headers, "x-kvraft-revision")
            if revision is not None:
                self.next_revision = revision + 1

    def _complete(self, revision: int) -> None:
        if self.next_revision is None or revision + 1 > self.next_revision:
            self.next_revision = revision + 1
            self._keys_at_next.clear()

    def lagged(self, revision: int) -> None:
        """The stream ended with `lagged`: everything up to `revision` was sent."""
        self._complete(revision)

    def accept(self, event: WatchEvent) -> WatchEvent | None:
        """The event to deliver, or None for a repeat (or a stale progress)."""
        if event.type == "progress":
            fresh = event.revision > self._bookmark and (
                self.next_revision is None or event.revision >= self.next_revision - 1
            )
            self._complete(event.revision)
            if not fresh:
                return None
            self._bookmark = event.revision
            return event
        assert event.key is not None
        if (self.key is not None and event.key != self.key) or not event.key.startswith(
            self.prefix
        ):
            raise ProtocolError(f"watch stream: a change of {event.key!r}, which is not watched")
        revision = event.revision
        if self.next_revision is not None:
            if revision < self.next_revision:
                return None
            if revision == self.next_revision and event.key in self._keys_at_next:
                return None
        if self.next_revision is None or revision > self.next_revision:
            self.next_revision = revision
            self._keys_at_next.clear()
        self._keys_at_next.add(event.key)
        return event


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Step: send `request` to `endpoint`, waiting at most `timeout_s` for the answer's
    head; resume the plan with an `HttpResponse` or a `TransportFailure`. For a 200 the
    response's body is empty and the stream stays open for `ReadStream`; for any other
    status the body is read whole and the stream closed."""

    endpoint: str
    request: HttpRequest
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ReadStream:
    """Step: the next bytes of the open stream, waiting at most `timeout_s`; resume the
    plan with the bytes (b"" at the stream's end) or a `TransportFailure`."""

    timeout_s: float


@dataclass(frozen=True, slots=True)
class CloseStream:
    """Step: close the open stream (if any); resume the plan with None."""


StreamStep: TypeAlias = Send | Wait | OpenStream | ReadStream | CloseStream
WatchSteps: TypeAlias = Generator[StreamStep | WatchEvent, Outcome | bytes | None, None]


def build_watch(
    prefix: str = "",
    *,
    key: str | None = None,
    start_revision: int | None = None,
    progress_s: float = WATCH_PROGRESS_S,
) -> HttpRequest:
    """`GET /v1/watch?prefix=P` (or `key=K`) `[&start_revision=R]&progress_s=S`, asking
    for NDJSON."""
    if not isinstance(prefix, str):
        raise ClientError("bad_request", "prefix must be a string")
    query: list[tuple[str, str]]
    if key is not None:
        key_path(key)  # the same checks as any key
        if prefix:
            raise ClientError("bad_request", "watch a key or a prefix, not both")
        query = [("key", key)]
        description = f"WATCH key {key!r}"
    else:
        query = [("prefix", prefix)]
        description = f"WATCH {prefix!r}"
    if start_revision is not None:
        if type(start_revision) is not int or start_revision < 1:
            raise ClientError("bad_request", "start_revision must be a positive integer")
        query.append(("start_revision", str(start_revision)))
    if not isinstance(progress_s, int | float) or not 0 <= progress_s <= WATCH_PROGRESS_S_MAX:
        raise ClientError("bad_request", f"progress_s must be in 0..{WATCH_PROGRESS_S_MAX}")
    query.append(("progress_s", f"{progress_s:g}"))
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    return HttpRequest(
        method="GET",
        target=f"{_WATCH_PATH}?{encoded}",
        headers=(("Accept", "application/x-ndjson"),),
        body=b"",
        is_write=False,
        retry_after_send=True,
        description=description,
    )


def interpret_watch_refusal(response: HttpResponse) -> None:
    """Raise the typed error of a watch answer that is neither 200 nor 5xx: 410
    `compacted` is `WatchCompacted`, any other 4xx a `ClientError`."""
    if response.status == 410:
        body = _json_object(response)
        compact_revision = body.get("compact_revision")
        if type(compact_revision) is not int or compact_revision < 0:
            raise ProtocolError("HTTP 410: 'compact_revision' is not a non-negative integer")
        raise WatchCompacted(compact_revision)
    _raise_for_status(response, None)
    raise ProtocolError(f"unexpected HTTP {response.status} to a watch")


def plan_watch(
    cursor: WatchCursor,
    router: EndpointRouter,
    policy: RetryPolicy,
    clock: Callable[[], float],
    rng: random.Random,
    *,
    progress: bool = False,
    progress_s: float = WATCH_PROGRESS_S,
    idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S,
    line_bytes_max: int = WATCH_LINE_BYTES_MAX,
) -> WatchSteps:
    """A watch that never ends by itself: yields stream steps (execute them and resume
    with the outcome) and `WatchEvent`s (deliver them, resume with None).

    A stream that breaks (connection lost or refused, node killed, silent for longer than
    `idle_timeout_s`, ended, or ended with `lagged`) is resumed from the cursor on the
    next endpoint (after `lagged`, on the same one), with the backoff of `plan_exchange`.
    `policy.timeout_s` bounds only the time during which *no* node delivers anything:
    past it the watch raises `Unavailable`. Until some node has served it, a watch also
    gives up after `policy.unreachable_timeout_s` (if set) without any HTTP answer from any
    endpoint, naming what each did: a wrong endpoint list or a stopped cluster is reported
    in seconds, while a watch that was served rides out a restart of the whole cluster for
    up to `timeout_s`. A 410 raises `WatchCompacted`; another 4xx a `ClientError`; a
    malformed stream a `ProtocolError` (a broken server is not retried).
    """
    deadline_s = clock() + policy.timeout_s
    round_index = 0
    tried: set[str] = set()
    served = False  # some node has delivered a message of the stream
    answered_s = clock()  # when some endpoint last gave an HTTP answer (or the watch began)
    failure_by_endpoint: dict[str, str] = {}  # since then: what each endpoint's attempt got
    last_problem = "no attempt finished"
    last_status: int | None = None
    endpoint = router.preferred
    while True:
        remaining_s = deadline_s - clock()
        request = build_watch(
            cursor.prefix,
            key=cursor.key,
            start_revision=cursor.next_revision,
            progress_s=progress_s,
        )
        outcome = yield OpenStream(endpoint, request, min(remaining_s, policy.attempt_timeout_s))
        if not isinstance(outcome, HttpResponse | TransportFailure):
            raise TypeError("an OpenStream step must be resumed with its outcome")
        tried.add(endpoint)
        floor_s = 0.0
        lagged = False
        resumed_from = cursor.next_revision
        if isinstance(outcome, TransportFailure):
            last_problem, last_status = f"{endpoint}: {outcome.detail}", None
            failure_by_endpoint[endpoint] = outcome.detail
        elif outcome.status == 200:
            router.answered(endpoint, outcome)
            answered_s = clock()
            failure_by_endpoint.clear()
            content_type = outcome.headers.get("content-type", "")
            if not content_type.startswith("application/x-ndjson"):
                raise ProtocolError(f"{endpoint}: a watch answered with {content_type!r}")
            cursor.opened(outcome.headers)
            parser = WatchStreamParser(line_bytes_max)
            while not lagged:
                chunk = yield ReadStream(idle_timeout_s)
                if isinstance(chunk, TransportFailure):
                    last_problem, last_status = f"{endpoint}: {chunk.detail}", None
                    break
                if not isinstance(chunk, bytes):
                    raise TypeError("a ReadStream step must be resumed with bytes or a failure")
                if not chunk:
                    last_problem, last_status = f"{endpoint}: the watch stream ended", None
                    break
                for message in parser.feed(chunk):
                    # The node serves: the deadline and backoff start afresh.
                    deadline_s = clock() + policy.timeout_s
                    served = True
                    round_index = 0
                    tried.clear()
                    if message.type == "lagged":
                        cursor.lagged(message.revision)
                        lagged = True
                        break
                    event = cursor.accept(message)
                    if event is not None and (event.type != "progress" or progress):
                        yield event
            yield CloseStream()
            if lagged and cursor.next_revision != resumed_from:
                continue  # the same node, at once, from where the stream ended
            if lagged:
                last_problem, last_status = f"{endpoint}: lagged without moving on", None
        else:
            router.answered(endpoint, outcome)
            answered_s = clock()
            failure_by_endpoint.clear()
            if outcome.status < 500:
                interpret_watch_refusal(outcome)
            last_problem = f"{endpoint}: {_error_text(outcome)}"
            last_status = outcome.status
            if outcome.status == 503:
                floor_s = parse_retry_after_s(outcome.headers.get("retry-after")) or 0.0
        router.failed(endpoint)
        next_endpoint = router.preferred
        if next_endpoint in tried:
            next_endpoint = router.after(endpoint)
        delay_s = floor_s
        if next_endpoint in tried or floor_s > 0:
            delay_s = max(floor_s, backoff_delay_s(round_index, rng))
            round_index += 1
            tried.clear()
        unreachable_s = policy.unreachable_timeout_s
        if (
            not served
            and unreachable_s is not None
            and len(failure_by_endpoint) == len(router.endpoints)
            and clock() + delay_s - answered_s >= unreachable_s
        ):
            # Every endpoint failed without an HTTP answer, and by the next attempt none
            # will have answered for unreachable_s: give up now rather than wait.
            tried_text = "; ".join(
                f"{name} ({detail})" for name, detail in sorted(failure_by_endpoint.items())
            )
            raise Unavailable(
                f"{request.description}: no member answered in {clock() - answered_s:.1f} s; "
                f"tried {tried_text}"
            )
        if clock() + delay_s >= deadline_s:
            raise Unavailable(
                f"{request.description}: no node served the watch for {policy.timeout_s:g} s "
                f"(last: {last_problem})",
                last_status,
            )
        if delay_s > 0:
            yield Wait(delay_s)
        endpoint = next_endpoint


# ---------------------------------------------------------------------------------------
# The shared, IO-free half of both clients.


# ---------------------------------------------------------------------------------------
# Authentication (#20): a user's token, fetched and refreshed around any plan's steps.

TOKEN_PATH = "/v1/auth/token"
TOKEN_REFRESH_FRACTION = 0.8
"""A token is renewed once this fraction of its lifetime has passed, before it expires."""

AUTH_DISABLED_RECHECK_S = 30.0
"""How long a client that was told auth is off sends without a token before asking again."""


class Credentials:
    """Who a client is: a `user` and `password` (it fetches tokens itself, and a new one
    after a 401, once per request: a 401 means nothing was done), or a fixed `token`."""

    def __init__(
        self, user: str | None = None, password: str | None = None, token: str | None = None
    ) -> None:
        if (user is None) != (password is None):
            raise ClientError("bad_request", "give both user and password, or neither")
        self.user = user
        self.password = password
        self.token = token
        self.refresh_at_s = float("inf") if token is not None else 0.0

    @property
    def can_login(self) -> bool:
        return self.user is not None

    def build_token_request(self) -> HttpRequest:
        body = json.dumps({"user": self.user, "password": self.password}).encode()
        return HttpRequest(
            "POST", TOKEN_PATH, _JSON_BODY_HEADERS, body, False, True, f"POST {TOKEN_PATH}"
        )

    def accept(self, response: HttpResponse, now_s: float) -> None:
        """Take a token answer: the token, or auth being off; a typed error otherwise
        (`ClientError` ``unauthenticated``: wrong user or password; ``too_many_attempts``)."""
        if response.status == 409:  # auth_disabled: no token needed for now
            self.token, self.refresh_at_s = None, now_s + AUTH_DISABLED_RECHECK_S
            return
        _raise_for_status(response, None)
        body = _json_object(response)
        token, expires_s = body.get("token"), body.get("expires_s")
        if not isinstance(token, str) or type(expires_s) is not int or expires_s < 1:
            raise ProtocolError("HTTP 200: a token answer without 'token' and 'expires_s'")
        self.token = token
        self.refresh_at_s = now_s + expires_s * TOKEN_REFRESH_FRACTION

    def sign(self, step: Send | OpenStream) -> Send | OpenStream:
        if self.token is None:
            return step
        headers = (*step.request.headers, ("Authorization", f"Bearer {self.token}"))
        request = dataclasses.replace(step.request, headers=headers)
        return dataclasses.replace(step, request=request)

    def login(self, endpoint: str, timeout_s: float) -> Generator[Send, Outcome | None, None]:
        outcome = yield Send(endpoint, self.build_token_request(), timeout_s)
        if isinstance(outcome, HttpResponse):
            self.accept(outcome, time.monotonic())
        # A transport failure: go on without a token; the request itself fails the same way
        # and its plan retries it elsewhere.


def plan_authenticated(
    steps: Generator[Any, Any, T], credentials: Credentials
) -> Generator[Any, Any, T]:
    """`steps` (any plan: `plan_exchange`, `plan_watch`, ...) with every request carrying
    `Authorization: Bearer` when `credentials` have a token, fetching one first when due, and
    after a 401 fetching a new one and sending that request once more."""
    try:
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            if not isinstance(step, Send | OpenStream):
                reply = yield step
                continue
            if credentials.can_login and time.monotonic() >= credentials.refresh_at_s:
                yield from credentials.login(step.endpoint, step.timeout_s)
            reply = yield credentials.sign(step)
            if isinstance(reply, HttpResponse) and reply.status == 401 and credentials.can_login:
                credentials.token, credentials.refresh_at_s = None, 0.0
                yield from credentials.login(step.endpoint, step.timeout_s)
                if credentials.token is not None:
                    reply = yield credentials.sign(step)
    finally:
        steps.close()


class _ClientCore:
    """Holds a client's router, policy and randomness and builds the step plan of every
    operation; the transports only execute `Send` and `Wait`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout_s: float,
        attempt_timeout_s: float,
        connect_timeout_s: float,
        auto_idempotency_keys: bool,
        response_bytes_max: int,
        rng: random.Random | None,
        watch_idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S,
        watch_line_bytes_max: int = WATCH_LINE_BYTES_MAX,
        watch_progress_s: float = WATCH_PROGRESS_S,
        unreachable_timeout_s: float | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.router = EndpointRouter(endpoints)
        self.credentials = credentials
        self.policy = RetryPolicy(
            timeout_s, attempt_timeout_s, connect_timeout_s, unreachable_timeout_s
        )
        self.auto_idempotency_keys = auto_idempotency_keys
        if type(response_bytes_max) is not int or response_bytes_max < 1:
            raise ClientError("bad_request", "response_bytes_max must be a positive integer")
        self.response_bytes_max = response_bytes_max
        self.rng = rng if rng is not None else random.Random()
        if not isinstance(watch_idle_timeout_s, int | float) or not watch_idle_timeout_s > 0:
            raise ClientError("bad_timeout", "watch_idle_timeout_s must be a positive number")
        if type(watch_line_bytes_max) is not int or watch_line_bytes_max < 1:
            raise ClientError("bad_request", "watch_line_bytes_max must be a positive integer")
        self.watch_idle_timeout_s = float(watch_idle_timeout_s)
        self.watch_line_bytes_max = watch_line_bytes_max
        build_watch(progress_s=watch_progress_s)  # the same checks as every watch
        self.watch_progress_s = watch_progress_s

    def authenticated(self, steps: Generator[Any, Any, T]) -> Generator[Any, Any, T]:
        """`steps` with the client's credentials (`plan_authenticated`), if it has any."""
        if self.credentials is None:
            return steps
        return plan_authenticated(steps, self.credentials)

    def auth_call(
        self, method: str, path: str, body: Any, endpoint: str | None
    ) -> Steps[dict[str, Any]]:
        """One `/v1/auth/*` request (users, roles, the switch): its JSON answer."""
        data = b"" if body is None else json.dumps(body).encode()
        request = HttpRequest(
            method,
            path,
            _JSON_BODY_HEADERS,
            data,
            method != "GET",
            # Repeating a user, role or switch change gives the same state (a PUT, or a
            # DELETE answering 404 the second time, which the caller sees).
            method != "DELETE",
            f"{method} {path}",
        )
        response = yield from self._exchange(request, endpoint)
        _raise_for_status(response, None)
        return _json_object(response)

    def _plan(self, request: HttpRequest) -> Steps[HttpResponse]:
        return plan_exchange(request, self.router, self.policy, time.monotonic, self.rng)

    def _write_key(self, idempotency_key: str | None) -> str | None:
        if idempotency_key is None and self.auto_idempotency_keys:
            return secrets.token_hex(16)
        return idempotency_key

    def put(
        self,
        key: str,
        value: bytes,
        if_revision: int | None,
        if_absent: bool,
        idempotency_key: str | None,
        lease: int | None = None,
        fence: Fence | None = None,
    ) -> Steps[int]:
        request = build_put(
            key,
            value,
            if_revision=if_revision,
            if_absent=if_absent,
            idempotency_key=self._write_key(idempotency_key),
            lease=lease,
            fence=fence,
        )
        response = yield from self._plan(request)
        if lease is not None and response.status == 404:
            _raise_for_lease(response, lease)  # the lease is gone: nothing was written
        return interpret_put(response, key)

    def lease_grant(self, ttl_s: int) -> Steps[LeaseGrant]:
        return interpret_lease_grant((yield from self._plan(build_lease_grant(ttl_s))))

    def lease_keepalive(self, lease_id: int, policy: RetryPolicy | None = None) -> Steps[int]:
        request = build_lease_keepalive(lease_id)
        steps = plan_exchange(request, self.router, policy or self.policy, time.monotonic, self.rng)
        return interpret_lease_keepalive((yield from steps), lease_id)

    def lease_revoke(self, lease_id: int) -> Steps[tuple[int, int]]:
        request = build_lease_revoke(lease_id)
        return interpret_lease_revoke((yield from self._plan(request)), lease_id)

    def lease_info(self, lease_id: int) -> Steps[LeaseInfo]:
        request = build_lease_info(lease_id)
        return interpret_lease_info((yield from self._plan(request)), lease_id)

    def leases(self) -> Steps[list[LeaseInfo]]:
        return interpret_leases((yield from self._plan(build_leases())))

    def lock_acquire(self, name: str, lease: int, wait_s: float, value: str) -> Steps[LockHold]:
        request = build_lock_acquire(name, lease, wait_s=wait_s, value=value)
        # Every attempt may legitimately take wait_s longer than an ordinary write.
        policy = RetryPolicy(
            self.policy.timeout_s + wait_s,
            self.policy.attempt_timeout_s + wait_s,
            self.policy.connect_timeout_s,
            self.policy.unreachable_timeout_s,
        )
        steps = plan_exchange(request, self.router, policy, time.monotonic, self.rng)
        return interpret_lock_acquire((yield from steps), lease)

    def lock_release(self, name: str, fencing_token: int) -> Steps[int]:
        request = build_lock_release(name, fencing_token)
        return interpret_lock_release((yield from self._plan(request)))

    def lock_info(self, name: str) -> Steps[LockInfo]:
        return interpret_lock_info((yield from self._plan(build_lock_info(name))))

    def locks(self) -> Steps[list[LockHold]]:
        return interpret_locks((yield from self._plan(build_locks())))

    def keepalive_policy(self, ttl_s: int) -> RetryPolicy:
        """A background keepalive's timeouts: one call (all its retries) within one
        keepalive period, so a lease's keeper never stalls past its next keepalive and
        stops promptly when its lease is closed."""
        period_s = ttl_s / KEEPALIVES_PER_TTL
        return RetryPolicy(
            period_s,
            min(period_s, self.policy.attempt_timeout_s),
            min(period_s, self.policy.connect_timeout_s),
            None,
        )

    def get(self, key: str, consistency: str) -> Steps[tuple[bytes, int] | None]:
        request = build_get(key, consistency=consistency)
        return interpret_get((yield from self._plan(request)), key)

    def wait_key(
        self, key: str, consistency: str, wait_revision: int, wait_s: float
    ) -> Steps[KeyState]:
        request = build_get(
            key, consistency=consistency, wait_revision=wait_revision, wait_s=wait_s
        )
        # Every attempt may legitimately take wait_s longer than an ordinary read.
        policy = RetryPolicy(
            self.policy.timeout_s + wait_s,
            self.policy.attempt_timeout_s + wait_s,
            self.policy.connect_timeout_s,
            self.policy.unreachable_timeout_s,
        )
        steps = plan_exchange(request, self.router, policy, time.monotonic, self.rng)
        return interpret_key_state((yield from steps), key)

    def watch(
        self, prefix: str, key: str | None, start_revision: int | None, progress: bool
    ) -> WatchSteps:
        build_watch(prefix, key=key, start_revision=start_revision)  # refuse bad calls now
        cursor = WatchCursor(prefix, key, start_revision)
        return self.authenticated(
            plan_watch(
                cursor,
                self.router,
                self.policy,
                time.monotonic,
                self.rng,
                progress=progress,
                progress_s=self.watch_progress_s,
                idle_timeout_s=self.watch_idle_timeout_s,
                line_bytes_max=self.watch_line_bytes_max,
            )
        )

    def delete(
        self,
        key: str,
        if_revision: int | None,
        idempotency_key: str | None,
        fence: Fence | None = None,
    ) -> Steps[tuple[int, bool]]:
        request = build_delete(
            key,
            if_revision=if_revision,
            idempotency_key=self._write_key(idempotency_key),
            fence=fence,
        )
        return interpret_delete((yield from self._plan(request)), key)

    def delete_prefix(
        self, prefix: str, idempotency_key: str | None, fence: Fence | None = None
    ) -> Steps[tuple[int, int]]:
        request = build_delete_prefix(
            prefix, idempotency_key=self._write_key(idempotency_key), fence=fence
        )
        return interpret_delete_prefix((yield from self._plan(request)))

    def count(self, prefix: str, consistency: str) -> Steps[int]:
        request = build_count(prefix, consistency=consistency)
        return interpret_count((yield from self._plan(request)))

    def txn(
        self, txn: Txn, idempotency_key: str | None, fence: Fence | None = None
    ) -> Steps[TxnAnswer]:
        # An automatic key only where the server takes one: not on a transaction that reads.
        key = self._write_key(idempotency_key) if txn.writes and not txn.reads else idempotency_key
        request = build_txn(txn, idempotency_key=key, fence=fence)
        return interpret_txn((yield from self._plan(request)), txn)

    def list_page(
        self, prefix: str, limit: int, start_after: str | None, consistency: str
    ) -> Steps[ListPage]:
        request = build_list(prefix, limit=limit, start_after=start_after, consistency=consistency)
        return interpret_list((yield from self._plan(request)))

    def list_answer(
        self, prefix: str, limit: int, start_after: str | None, consistency: str
    ) -> Steps[ListAnswer]:
        request = build_list(prefix, limit=limit, start_after=start_after, consistency=consistency)
        return interpret_list_answer((yield from self._plan(request)))

    def _exchange(self, request: HttpRequest, endpoint: str | None) -> Steps[HttpResponse]:
        """Any node, with retries (`plan_exchange`), or one attempt at `endpoint`."""
        if endpoint is None:
            return (yield from self._plan(request))
        target = normalize_endpoint(endpoint)
        return (yield from plan_single_attempt(target, request, self.router, self.policy))

    def status(self, endpoint: str | None) -> Steps[dict[str, Any]]:
        status = interpret_status((yield from self._exchange(build_status(), endpoint)))
        self.router.learn_members(status.get("members"))
        self.router.prefer_leader(status.get("leader_id"))
        return status

    def members(self, endpoint: str | None) -> Steps[dict[str, Any]]:
        view = interpret_members((yield from self._exchange(build_members(), endpoint)))
        self.router.learn_members(view["members"])
        self.router.prefer_leader(view.get("leader_id"))
        return view

    def add_member(
        self,
        node_id: int,
        raft_address: str,
        http_address: str,
        voter: bool,
        endpoint: str | None,
    ) -> Steps[dict[str, Any]]:
        request = build_add_member(node_id, raft_address, http_address, voter=voter)
        view = interpret_members((yield from self._exchange(request, endpoint)))
        self.router.learn_members(view["members"])
        return view

    def remove_member(self, node_id: int, endpoint: str | None) -> Steps[dict[str, Any]]:
        request = build_remove_member(node_id)
        return interpret_members((yield from self._exchange(request, endpoint)))

    def transfer_leadership(
        self, target: int | None, endpoint: str | None
    ) -> Steps[dict[str, Any]]:
        request = build_transfer_leadership(target)
        answer = interpret_transfer((yield from self._exchange(request, endpoint)))
        self.router.prefer_leader(answer.get("leader_id"))
        return answer


def _txn_of(
    txn: Txn | None,
    compare: Sequence[TxnCompare],
    success: Sequence[TxnOp],
    failure: Sequence[TxnOp],
) -> Txn:
    if txn is not None and (compare or success or failure):
        raise ClientError("bad_request", "give a Txn or its compare/success/failure, not both")
    try:
        return txn if txn is not None else Txn().compare(*compare).then(*success).else_(*failure)
    except TxnSyntaxError as error:
        raise ClientError("bad_request", str(error)) from None


def _connection_failure(error: BaseException) -> str:
    """A short reason for a failed attempt, e.g. `connection refused`."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host ({error.strerror})"
    return f"{type(error).__name__}: {error}".rstrip(": ")


def _too_large(endpoint: str, limit: int) -> ProtocolError:
    return ProtocolError(f"{endpoint}: response body larger than {limit} bytes")


# ---------------------------------------------------------------------------------------
# The blocking client.


class _ClientBase:
    """What both clients share: the options and the sans-IO core they drive.

    Watch options: `watch_progress_s` is the bookmark interval asked of the server (0:
    none), `watch_idle_timeout_s` how long a silent stream is trusted (keep it a few
    bookmark intervals), `watch_line_bytes_max` the longest stream line accepted.

    `unreachable_timeout_s` (None: off): a call gives up when no endpoint has answered
    over HTTP for that long (`RetryPolicy`), even though its `timeout_s` is longer.

    TLS, for ``https://`` endpoints: `cacert` (a PEM file; default: the system's trust
    store), `cert` and `key` (a client certificate, for a cluster whose nodes require one),
    or `ssl_context` instead of the three. A file that cannot be used is a `ClientError`
    (``bad_tls_file``) naming it."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S_DEFAULT,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        auto_idempotency_keys: bool = False,
        response_bytes_max: int = RESPONSE_BYTES_MAX,
        rng: random.Random | None = None,
        watch_idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S,
        watch_line_bytes_max: int = WATCH_LINE_BYTES_MAX,
        watch_progress_s: float = WATCH_PROGRESS_S,
        unreachable_timeout_s: float | None = None,
        cacert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        if ssl_context is None and (cacert is not None or cert is not None or key is not None):
            from kvraft.tls import TlsFileError, https_client_context

            try:
                ssl_context = https_client_context(
                    None if cacert is None else pathlib.Path(cacert),
                    None if cert is None else pathlib.Path(cert),
                    None if key is None else pathlib.Path(key),
                )
            except TlsFileError as error:
                raise ClientError("bad_tls_file", str(error)) from None
        self._ssl_context = ssl_context
        """For https:// endpoints; None: the system's trust store, no client certificate."""
        # What a lease's keepalive thread needs to build its own client like this one
        # (not the rng: a client is not shared between threads, nor its randomness).
        self._options: dict[str, Any] = {
            "ssl_context": ssl_context,
            "timeout_s": timeout_s,
            "attempt_timeout_s": attempt_timeout_s,
            "connect_timeout_s": connect_timeout_s,
            "auto_idempotency_keys": auto_idempotency_keys,
            "response_bytes_max": response_bytes_max,
            "unreachable_timeout_s": unreachable_timeout_s,
            "user": user,
            "password": password,
            "token": token,
        }
        credentials = None
        if user is not None or password is not None or token is not None:
            credentials = Credentials(user, password, token)
        self._core = _ClientCore(
            endpoints,
            timeout_s,
            attempt_timeout_s,
            connect_timeout_s,
            auto_idempotency_keys,
            response_bytes_max,
            rng,
            watch_idle_timeout_s,
            watch_line_bytes_max,
            watch_progress_s,
            unreachable_timeout_s,
            credentials,
        )

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The normalized endpoints, in rotation order."""
        return self._core.router.endpoints


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A backup saved by `KVClient.backup`: the revision it is at, how many keys it holds and
    the file's size in bytes (the format: `kvraft.backup`)."""

    revision: int
    keys: int
    file_bytes: int


def _save_backup(
    endpoints: Sequence[str],
    path: str | os.PathLike[str],
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    authorization: str | None = None,
) -> BackupInfo:
    # Imported here: kvraft.backup imports the storage engine, which a client that never
    # takes a backup should not have to load.
    from kvraft.backup import BackupUnavailable, download_backup

    try:
        summary = download_backup(
            endpoints,
            pathlib.Path(path),
            timeout_s=timeout_s,
            ssl_context=ssl_context,
            authorization=authorization,
        )
    except BackupUnavailable as error:
        raise Unavailable(str(error)) from None
    return BackupInfo(summary.header.revision, summary.header.keys, summary.file_bytes)


class KVClient(_ClientBase):
    """Blocking client: `KVClient(["http://127.0.0.1:8001", ...]).put("k", b"v")`.

    Each request uses a fresh connection, so a connection that a restarted node closed
    while idle can never make a write look ambiguous.
    """

    def put(
        self,
        key: str,
        value: bytes,
        *,
        if_revision: int | None = None,
        if_absent: bool = False,
        idempotency_key: str | None = None,
        lease: int | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Store `value` under `key`; return the write's revision. With `lease` (a lease
        id) the key is deleted when that lease is revoked or expires. With `fence` (a lock
        hold's `fence`) it applies only while that token holds the lock, else
        `FenceFailed`."""
        return self._run(
            self._core.put(key, value, if_revision, if_absent, idempotency_key, lease, fence)
        )

    def lease_grant(self, ttl_s: int) -> LeaseGrant:
        """Grant a lease of `ttl_s` whole seconds (the server's bounds: `bad_ttl` outside
        them). Retried after an ambiguous attempt (see `build_lease_grant`). To keep it
        alive in the background, use `lease()` instead."""
        return self._run(self._core.lease_grant(ttl_s))

    def lease_keepalive(self, lease_id: int) -> int:
        """Restart the lease's TTL; returns the TTL. `LeaseNotFound` if it has expired or
        was revoked."""
        return self._run(self._core.lease_keepalive(lease_id))

    def lease_revoke(self, lease_id: int) -> tuple[int, int]:
        """Revoke the lease: it and its keys go in one revision. Returns (revision, keys
        deleted); `LeaseNotFound` if it is already gone (see `build_lease_revoke`)."""
        return self._run(self._core.lease_revoke(lease_id))

    def lease_info(self, lease_id: int) -> LeaseInfo:
        """The lease's TTL, the seconds it has left and its keys; `LeaseNotFound`."""
        return self._run(self._core.lease_info(lease_id))

    def leases(self) -> list[LeaseInfo]:
        """Every live lease, by id (without their keys)."""
        return self._run(self._core.leases())

    def lease(self, ttl_s: int) -> Lease:
        """A lease kept alive by a background thread while its `with` block runs:

            with client.lease(10) as lease:
                client.put("workers/w1", b"up", lease=lease.id)
                while not lease.lost.is_set():
                    ...

        Entering grants it; the thread sends a keepalive every TTL / 3 (through its own
        client over the same endpoints, so it fails over on its own); leaving revokes it,
        deleting its keys at once. `lease.lost` is set if a keepalive found the lease gone
        (it expired: no keepalive reached a leader for a whole TTL), so stop the work it
        guards."""
        _check_ttl(ttl_s)
        return Lease(self, KVClient(self.endpoints, **self._options), ttl_s)

    def lock_acquire(
        self, name: str, lease: int, *, wait_s: float = 0.0, value: str = ""
    ) -> LockHold:
        """Queue `lease` for lock `name` and wait up to `wait_s` (at most `LOCK_WAIT_S_MAX`)
        until it holds it; the hold with its fencing token. `LockNotAcquired` if it did not
        (its place was given up). To hold a lock for a block of code, use `lock()`."""
        return self._run(self._core.lock_acquire(name, lease, wait_s, value))

    def lock_release(self, name: str, fencing_token: int) -> int:
        """Release the lock (or give up a place in its queue); the revision. `LockNotHeld`
        if the token has no place (released already, or its lease expired)."""
        return self._run(self._core.lock_release(name, fencing_token))

    def lock_info(self, name: str) -> LockInfo:
        """Who holds lock `name` and who waits, in order."""
        return self._run(self._core.lock_info(name))

    def locks(self) -> list[LockHold]:
        """The holder of every held lock, by name."""
        return self._run(self._core.locks())

    def lock(
        self, name: str, *, ttl_s: int = 10, wait_s: float | None = None, value: str = ""
    ) -> Lock:
        """Lock `name` for a `with` block, with its own lease kept alive in the background:

            with client.lock("jobs/nightly") as lock:
                client.put("jobs/nightly/output", data, fence=lock.fence)

        Waits first come, first served (forever unless `wait_s`; `LockNotAcquired` then),
        across failovers: a repeated request keeps the place. `lock.fencing_token` grows
        with every new holder: pass `lock.fence` to writes (or the token to whatever the
        lock protects), so a holder paused past its lease cannot undo the next holder's
        work. `lock.lost` is set if the lease expired: the lock is gone. Leaving releases
        it and revokes the lease."""
        _check_ttl(ttl_s)
        _check_lock_wait(wait_s)
        return Lock(self, self.lease(ttl_s), name, wait_s, value)

    def get(
        self,
        key: str,
        *,
        consistency: str = "linearizable",
        wait_revision: int | None = None,
        wait_s: float | None = None,
    ) -> tuple[bytes, int] | None:
        """(value, revision) of `key`, or None if it does not exist.

        With `wait_revision=N, wait_s=S` the read blocks until the key's revision is above
        N, or for S seconds at most, and then answers its state. To wait past a deletion
        (whose revision None does not tell) use `wait_key`."""
        if wait_revision is None and wait_s is None:
            return self._run(self._core.get(key, consistency))
        if wait_revision is None or wait_s is None:
            raise ClientError("bad_request", "give wait_revision and wait_s together")
        state = self.wait_key(key, wait_revision, wait_s, consistency=consistency)
        return None if state.value is None else (state.value, state.revision)

    def wait_key(
        self,
        key: str,
        wait_revision: int,
        wait_s: float,
        *,
        consistency: str = "linearizable",
    ) -> KeyState:
        """Block until `key`'s revision is above `wait_revision` (or `wait_s` seconds have
        passed); its state then. Loop on it with `wait_revision=state.revision`."""
        return self._run(self._core.wait_key(key, consistency, wait_revision, wait_s))

    def delete(
        self,
        key: str,
        *,
        if_revision: int | None = None,
        idempotency_key: str | None = None,
        fence: Fence | None = None,
    ) -> tuple[int, bool]:
        """Delete `key`; return (revision, deleted). `fence` as in `put`."""
        return self._run(self._core.delete(key, if_revision, idempotency_key, fence))

    def delete_prefix(
        self, prefix: str, *, idempotency_key: str | None = None, fence: Fence | None = None
    ) -> tuple[int, int]:
        """Delete every key starting with `prefix` in one revision ("" deletes every key);
        return (revision, how many were deleted). `fence` as in `put`."""
        return self._run(self._core.delete_prefix(prefix, idempotency_key, fence))

    def count(self, prefix: str = "", *, consistency: str = "linearizable") -> int:
        """How many keys start with `prefix`."""
        return self._run(self._core.count(prefix, consistency))

    def txn(
        self,
        txn: Txn | None = None,
        *,
        compare: Sequence[TxnCompare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        idempotency_key: str | None = None,
        fence: Fence | None = None,
    ) -> TxnAnswer:
        """Run a transaction, given as a `kvraft.txn.Txn` or as its three parts (like
        python-etcd3's `transaction`): if every compare holds, `success` is applied, else
        `failure`, as one write at one revision. A failed compare is not an error. `fence`
        as in `put`."""
        built = _txn_of(txn, compare, success, failure)
        return self._run(self._core.txn(built, idempotency_key, fence))

    def list(
        self,
        prefix: str = "",
        limit: int = LIST_PAGE_SIZE_DEFAULT,
        start_after: str | None = None,
        consistency: str = "linearizable",
    ) -> ListPage:
        """One page of keys starting with `prefix`, in key order: (items, continuation).
        Pass the continuation as `start_after` to get the next page."""
        return self._run(self._core.list_page(prefix, limit, start_after, consistency))

    def list_with_revision(
        self,
        prefix: str = "",
        limit: int = LIST_PAGE_SIZE_DEFAULT,
        start_after: str | None = None,
        consistency: str = "linearizable",
    ) -> ListAnswer:
        """Like `list`, with the revision the page was read at: watch from its revision + 1
        to follow the listed keys without a gap (see `watch`)."""
        return self._run(self._core.list_answer(prefix, limit, start_after, consistency))

    def watch(
        self,
        prefix: str = "",
        *,
        key: str | None = None,
        start_revision: int | None = None,
        progress: bool = False,
    ) -> Generator[WatchEvent, None, None]:
        """The changes of every key under `prefix` (or of `key` alone), as they happen:
        an endless iterator of `WatchEvent`s (`put`, `delete`, and `progress` bookmarks if
        `progress`). From `start_revision`, or from the answering node's next revision.

        Each change arrives exactly once and in revision order, across node failures: a
        broken stream is resumed on another node from the last revision delivered (see
        `WatchCursor` and `plan_watch`). It raises `WatchCompacted` when the history the
        watch needs is gone (never re-listing behind the caller's back: list again with
        `list_with_revision` and watch from its revision + 1), `Unavailable` when no
        node served it for the client's `timeout_s`. Close the iterator (or stop
        iterating it in a `with contextlib.closing(...)`) to end the watch."""
        steps = self._core.watch(prefix, key, start_revision, progress)
        stream: http.client.HTTPResponse | None = None
        connection: http.client.HTTPConnection | None = None
        reply: Outcome | bytes | None = None
        try:
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration:
                    return
                reply = None
                if isinstance(step, WatchEvent):
                    yield step
                elif isinstance(step, Wait):
                    time.sleep(step.delay_s)
                elif isinstance(step, OpenStream):
                    if connection is not None:
                        connection.close()
                    connection, stream, reply = self._open_stream(step)
                elif isinstance(step, ReadStream):
                    reply = _read_stream(stream, connection, step.timeout_s)
                elif isinstance(step, CloseStream):
                    if connection is not None:
                        connection.close()
                    connection = stream = None
                else:
                    reply = self._send(step)
        finally:
            if connection is not None:
                connection.close()
            steps.close()

    def iter_prefix(
        self,
        prefix: str = "",
        *,
        page_size: int = LIST_PAGE_SIZE_DEFAULT,
        consistency: str = "linearizable",
    ) -> Iterator[Item]:
        """Every key starting with `prefix`, in key order, one page at a time."""
        start_after: str | None = None
        while True:
            items, start_after = self.list(prefix, page_size, start_after, consistency)
            yield from items
            if start_after is None:
                return

    def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """The `/v1/status` of `endpoint` (one attempt), or of any node that answers."""
        return self._run(self._core.status(endpoint))

    def members(self, endpoint: str | None = None) -> dict[str, Any]:
        """The leader's view of the membership (`GET /v1/members`, which any node forwards):
        `leader_id`, `term`, `change_pending` and `members`, one dict per member with `id`,
        `raft_address`, `http_address`, `voter` and, from the leader, `match_index` and
        `caught_up`. Asks `endpoint` once if given, else any node with retries."""
        return self._run(self._core.members(endpoint))

    def add_member(
        self,
        node_id: int,
        raft_address: str,
        http_address: str,
        *,
        voter: bool = True,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Add node `node_id` (`host:port` addresses): it joins as a learner and is promoted
        to voter once caught up, unless `voter` is False. Returns the members view.

        Retried (also after an ambiguous failure: a repeated add is harmless, and while the
        node catches up the server answers 503 `not_caught_up`) until the call's timeout;
        a 409 (`member_conflict`, `change_in_progress`) is a `ClientError`. With `endpoint`,
        one attempt there and no retry."""
        return self._run(
            self._core.add_member(node_id, raft_address, http_address, voter, endpoint)
        )

    def remove_member(self, node_id: int, *, endpoint: str | None = None) -> dict[str, Any]:
        """Remove node `node_id` (a leader removing itself hands over first); the members
        view afterwards. A 404 (`unknown_member`) or 409 is a `ClientError`; a failure after
        the request may have arrived is `OutcomeUnknown` and is not retried (see
        `build_remove_member`). With `endpoint`, one attempt there."""
        return self._run(self._core.remove_member(node_id, endpoint))

    def transfer_leadership(
        self, target: int | None = None, *, endpoint: str | None = None
    ) -> dict[str, Any]:
        """Move leadership to voter `target` (None: the most caught-up voter); the answer's
        `leader_id` is the new leader, `previous_leader_id` the old. Retried like an add.
        With `endpoint`, one attempt there."""
        return self._run(self._core.transfer_leadership(target, endpoint))

    def backup(self, path: str | os.PathLike[str]) -> BackupInfo:
        """Save a consistent backup of the whole cluster to `path` (`GET /v1/backup`, from
        the leader; written to a temporary file and renamed once its checksum matched).
        `Unavailable` if no endpoint gave a complete one within the call's timeout."""
        return _save_backup(
            self.endpoints,
            path,
            self._core.policy.timeout_s,
            self._ssl_context,
            self.authorization(),
        )

    def authorization(self) -> str | None:
        """The ``Authorization`` header value this client sends (``Bearer <token>``, a token
        fetched first if due), for a request made outside the client; None without
        credentials or while auth is off."""
        credentials = self._core.credentials
        if credentials is None:
            return None
        if credentials.can_login and time.monotonic() >= credentials.refresh_at_s:
            self.auth_status()  # any call: the step wrapper logs in before it
        return None if credentials.token is None else f"Bearer {credentials.token}"

    # --- users, roles and the auth switch (#20; admin only once auth is enabled) ---------

    def _auth(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return self._run(self._core.auth_call(method, path, body, None))

    def auth_status(self) -> bool:
        """Whether authentication is enabled."""
        return bool(self._auth("GET", "/v1/auth/status").get("enabled"))

    def auth_enable(self) -> int:
        """Enable authentication (needs user root with an admin role); its revision."""
        return _revision_field(self._auth("POST", "/v1/auth/enable"), 200)

    def auth_disable(self) -> int:
        """Disable authentication; its revision."""
        return _revision_field(self._auth("POST", "/v1/auth/disable"), 200)

    def users(self) -> builtins.list[dict[str, Any]]:
        """Every user: ``{"name", "roles"}`` (never a password hash)."""
        return builtins.list(self._auth("GET", "/v1/auth/users").get("users", []))

    def roles(self) -> builtins.list[dict[str, Any]]:
        """Every role: ``{"name", "admin", "permissions": [{"prefix", "access"}]}``."""
        return builtins.list(self._auth("GET", "/v1/auth/roles").get("roles", []))

    def user_put(
        self, name: str, *, password: str | None = None, roles: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Create user `name` (a password needed) or change its password and/or roles."""
        body: dict[str, Any] = {}
        if password is not None:
            body["password"] = password
        if roles is not None:
            body["roles"] = list(roles)
        return self._auth("PUT", "/v1/auth/users/" + urllib.parse.quote(name, safe=""), body)

    def user_delete(self, name: str) -> dict[str, Any]:
        return self._auth("DELETE", "/v1/auth/users/" + urllib.parse.quote(name, safe=""))

    def role_put(
        self, name: str, *, permissions: Sequence[tuple[str, str]] = (), admin: bool = False
    ) -> dict[str, Any]:
        """Create or replace role `name`: `permissions` as ``(prefix, "read"|"readwrite")``."""
        body = {
            "admin": admin,
            "permissions": [{"prefix": p, "access": a} for p, a in permissions],
        }
        return self._auth("PUT", "/v1/auth/roles/" + urllib.parse.quote(name, safe=""), body)

    def role_delete(self, name: str) -> dict[str, Any]:
        return self._auth("DELETE", "/v1/auth/roles/" + urllib.parse.quote(name, safe=""))

    def status_all(self) -> StatusResults:
        """The status of every endpoint, asked concurrently: a dict, or the error."""
        endpoints = self.endpoints

        def one(endpoint: str) -> dict[str, Any] | KVError:
            try:
                return self.status(endpoint)
            except KVError as error:
                return error

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
            return dict(zip(endpoints, pool.map(one, endpoints), strict=True))

    def _run(self, steps: Steps[T]) -> T:
        steps = self._core.authenticated(steps)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Wait):
                    time.sleep(step.delay_s)
                    step = steps.send(None)
                else:
                    step = steps.send(self._send(step))
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _open_stream(
        self, step: OpenStream
    ) -> tuple[http.client.HTTPConnection | None, http.client.HTTPResponse | None, Outcome]:
        """Send a streaming request; keep the connection open on a 200."""
        timeout_s = max(step.timeout_s, 0.001)
        connection = self._connection(step.endpoint, timeout_s)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, None, TransportFailure(FailureKind.NOT_SENT, _connection_failure(error))
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout_s)
            request = step.request
            connection.request(request.method, request.target, request.body, dict(request.headers))
            response = connection.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            if response.status == 200:
                return connection, response, HttpResponse(200, headers, b"")
            limit = self._core.response_bytes_max
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, None, TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))
        connection.close()
        if len(body) > limit:
            raise _too_large(step.endpoint, limit)
        return None, None, HttpResponse(response.status, headers, body)

    def _connection(self, endpoint: str, timeout_s: float) -> http.client.HTTPConnection:
        """A new (unconnected) connection to `endpoint`; over TLS for https://."""
        parts = urllib.parse.urlsplit(endpoint)
        connect_timeout_s = min(timeout_s, self._core.policy.connect_timeout_s)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname or "",
                parts.port,
                timeout=connect_timeout_s,
                context=self._ssl_context,
            )
        return http.client.HTTPConnection(
            parts.hostname or "", parts.port, timeout=connect_timeout_s
        )

    def _send(self, step: Send) -> Outcome:
        timeout_s = max(step.timeout_s, 0.001)
        connection = self._connection(step.endpoint, timeout_s)
        try:
            try:
                connection.connect()
            except (OSError, http.client.HTTPException) as error:
                return TransportFailure(FailureKind.NOT_SENT, _connection_failure(error))
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(timeout_s)
                request = step.request
                headers = dict(request.headers)
                headers["Connection"] = "close"
                connection.request(request.method, request.target, request.body, headers)
                response = connection.getresponse()
                limit = self._core.response_bytes_max
                body = response.read(limit + 1)
            except (OSError, http.client.HTTPException) as error:
                return TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))
            if len(body) > limit:
                raise _too_large(step.endpoint, limit)
            headers_in = {name.lower(): value for name, value in response.getheaders()}
            return HttpResponse(response.status, headers_in, body)
        finally:
            connection.close()


def _read_stream(
    stream: http.client.HTTPResponse | None,
    connection: http.client.HTTPConnection | None,
    timeout_s: float,
) -> bytes | TransportFailure:
    """The next bytes of an open stream (b"" at its end), or why there are none."""
    if stream is None or connection is None or connection.sock is None:
        raise TypeError("ReadStream without an open stream")
    try:
        connection.sock.settimeout(max(timeout_s, 0.001))
        return stream.read1(STREAM_CHUNK_BYTES)
    except (OSError, http.client.HTTPException, ValueError) as error:
        return TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))


# ---------------------------------------------------------------------------------------
# The asyncio client.


class AsyncKVClient(_ClientBase):
    """asyncio client over aiohttp; use as `async with AsyncKVClient([...]) as client:`.

    Connections are not kept alive (`force_close`) for the same reason as `KVClient`: a
    pooled connection that the server closed would turn a write into `OutcomeUnknown`.
    """

    def __init__(self, endpoints: Sequence[str], **options: Any) -> None:
        super().__init__(endpoints, **options)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncKVClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the client may not be used afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        if_revision: int | None = None,
        if_absent: bool = False,
        idempotency_key: str | None = None,
        lease: int | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Store `value` under `key`; return the write's revision. With `lease`, the key
        goes when that lease does; with `fence`, see `KVClient.put`."""
        return await self._run(
            self._core.put(key, value, if_revision, if_absent, idempotency_key, lease, fence)
        )

    async def lease_grant(self, ttl_s: int) -> LeaseGrant:
        """Grant a lease; see `KVClient.lease_grant`."""
        return await self._run(self._core.lease_grant(ttl_s))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Restart the lease's TTL; see `KVClient.lease_keepalive`."""
        return await self._run(self._core.lease_keepalive(lease_id))

    async def lease_revoke(self, lease_id: int) -> tuple[int, int]:
        """Revoke the lease; see `KVClient.lease_revoke`."""
        return await self._run(self._core.lease_revoke(lease_id))

    async def lease_info(self, lease_id: int) -> LeaseInfo:
        """The lease and its keys; see `KVClient.lease_info`."""
        return await self._run(self._core.lease_info(lease_id))

    async def leases(self) -> list[LeaseInfo]:
        """Every live lease; see `KVClient.leases`."""
        return await self._run(self._core.leases())

    def lease(self, ttl_s: int) -> AsyncLease:
        """A lease kept alive by a task while an `async with client.lease(10) as lease:`
        block runs; the same contract as `KVClient.lease` (`lease.lost` is an
        `asyncio.Event`). The task shares this client, so it is used on its event loop."""
        _check_ttl(ttl_s)
        return AsyncLease(self, ttl_s)

    async def lock_acquire(
        self, name: str, lease: int, *, wait_s: float = 0.0, value: str = ""
    ) -> LockHold:
        """Wait up to `wait_s` for lock `name`; see `KVClient.lock_acquire`."""
        return await self._run(self._core.lock_acquire(name, lease, wait_s, value))

    async def lock_release(self, name: str, fencing_token: int) -> int:
        """Release the lock; see `KVClient.lock_release`."""
        return await self._run(self._core.lock_release(name, fencing_token))

    async def lock_info(self, name: str) -> LockInfo:
        """Who holds lock `name` and who waits, in order."""
        return await self._run(self._core.lock_info(name))

    async def locks(self) -> list[LockHold]:
        """The holder of every held lock, by name."""
        return await self._run(self._core.locks())

    def lock(
        self, name: str, *, ttl_s: int = 10, wait_s: float | None = None, value: str = ""
    ) -> AsyncLock:
        """`async with client.lock(name) as lock:`; the contract of `KVClient.lock`, with
        `lock.lost` an `asyncio.Event`."""
        _check_ttl(ttl_s)
        _check_lock_wait(wait_s)
        return AsyncLock(self, self.lease(ttl_s), name, wait_s, value)

    async def get(
        self,
        key: str,
        *,
        consistency: str = "linearizable",
        wait_revision: int | None = None,
        wait_s: float | None = None,
    ) -> tuple[bytes, int] | None:
        """(value, revision) of `key`, or None; blocking with `wait_revision` and `wait_s`
        as in `KVClient.get`."""
        if wait_revision is None and wait_s is None:
            return await self._run(self._core.get(key, consistency))
        if wait_revision is None or wait_s is None:
            raise ClientError("bad_request", "give wait_revision and wait_s together")
        state = await self.wait_key(key, wait_revision, wait_s, consistency=consistency)
        return None if state.value is None else (state.value, state.revision)

    async def wait_key(
        self,
        key: str,
        wait_revision: int,
        wait_s: float,
        *,
        consistency: str = "linearizable",
    ) -> KeyState:
        """Block until `key`'s revision is above `wait_revision`; see `KVClient.wait_key`."""
        return await self._run(self._core.wait_key(key, consistency, wait_revision, wait_s))

    async def delete(
        self,
        key: str,
        *,
        if_revision: int | None = None,
        idempotency_key: str | None = None,
        fence: Fence | None = None,
    ) -> tuple[int, bool]:
        """Delete `key`; return (revision, deleted)."""
        return await self._run(self._core.delete(key, if_revision, idempotency_key, fence))

    async def delete_prefix(
        self, prefix: str, *, idempotency_key: str | None = None, fence: Fence | None = None
    ) -> tuple[int, int]:
        """Delete every key starting with `prefix`; see `KVClient.delete_prefix`."""
        return await self._run(self._core.delete_prefix(prefix, idempotency_key, fence))

    async def count(self, prefix: str = "", *, consistency: str = "linearizable") -> int:
        """How many keys start with `prefix`."""
        return await self._run(self._core.count(prefix, consistency))

    async def txn(
        self,
        txn: Txn | None = None,
        *,
        compare: Sequence[TxnCompare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        idempotency_key: str | None = None,
        fence: Fence | None = None,
    ) -> TxnAnswer:
        """Run a transaction; see `KVClient.txn`."""
        built = _txn_of(txn, compare, success, failure)
        return await self._run(self._core.txn(built, idempotency_key, fence))

    async def list(
        self,
        prefix: str = "",
        limit: int = LIST_PAGE_SIZE_DEFAULT,
        start_after: str | None = None,
        consistency: str = "linearizable",
    ) -> ListPage:
        """One page of keys starting with `prefix`: (items, continuation)."""
        return await self._run(self._core.list_page(prefix, limit, start_after, consistency))

    async def list_with_revision(
        self,
        prefix: str = "",
        limit: int = LIST_PAGE_SIZE_DEFAULT,
        start_after: str | None = None,
        consistency: str = "linearizable",
    ) -> ListAnswer:
        """One page with its revision; see `KVClient.list_with_revision`."""
        return await self._run(self._core.list_answer(prefix, limit, start_after, consistency))

    async def watch(
        self,
        prefix: str = "",
        *,
        key: str | None = None,
        start_revision: int | None = None,
        progress: bool = False,
    ) -> AsyncGenerator[WatchEvent, None]:
        """The changes under `prefix` (or of `key`) as an endless async iterator; the same
        guarantees and errors as `KVClient.watch`. `aclose()` it (or break out of the
        `async for` and let it be collected) to end the watch."""
        steps = self._core.watch(prefix, key, start_revision, progress)
        response: aiohttp.ClientResponse | None = None
        reply: Outcome | bytes | None = None
        try:
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration:
                    return
                reply = None
                if isinstance(step, WatchEvent):
                    yield step
                elif isinstance(step, Wait):
                    await asyncio.sleep(step.delay_s)
                elif isinstance(step, OpenStream):
                    if response is not None:
                        response.close()
                    response, reply = await self._open_stream(step)
                elif isinstance(step, ReadStream):
                    reply = await _read_async_stream(response, step.timeout_s)
                elif isinstance(step, CloseStream):
                    if response is not None:
                        response.close()
                    response = None
                else:
                    reply = await self._send(step)
        finally:
            if response is not None:
                response.close()
            steps.close()

    async def iter_prefix(
        self,
        prefix: str = "",
        *,
        page_size: int = LIST_PAGE_SIZE_DEFAULT,
        consistency: str = "linearizable",
    ) -> AsyncIterator[Item]:
        """Every key starting with `prefix`, in key order, one page at a time."""
        start_after: str | None = None
        while True:
            items, start_after = await self.list(prefix, page_size, start_after, consistency)
            for item in items:
                yield item
            if start_after is None:
                return

    async def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """The `/v1/status` of `endpoint` (one attempt), or of any node that answers."""
        return await self._run(self._core.status(endpoint))

    async def members(self, endpoint: str | None = None) -> dict[str, Any]:
        """The leader's view of the membership; see `KVClient.members`."""
        return await self._run(self._core.members(endpoint))

    async def add_member(
        self,
        node_id: int,
        raft_address: str,
        http_address: str,
        *,
        voter: bool = True,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Add node `node_id`; see `KVClient.add_member`."""
        return await self._run(
            self._core.add_member(node_id, raft_address, http_address, voter, endpoint)
        )

    async def remove_member(self, node_id: int, *, endpoint: str | None = None) -> dict[str, Any]:
        """Remove node `node_id`; see `KVClient.remove_member`."""
        return await self._run(self._core.remove_member(node_id, endpoint))

    async def transfer_leadership(
        self, target: int | None = None, *, endpoint: str | None = None
    ) -> dict[str, Any]:
        """Move leadership; see `KVClient.transfer_leadership`."""
        return await self._run(self._core.transfer_leadership(target, endpoint))

    async def backup(self, path: str | os.PathLike[str]) -> BackupInfo:
        """Save a backup to `path`; see `KVClient.backup`. The download and the file writes
        run on a worker thread, so the event loop is never blocked by the disk."""
        credentials = self._core.credentials
        if (
            credentials is not None
            and credentials.can_login
            and time.monotonic() >= credentials.refresh_at_s
        ):  # any call: the step wrapper logs in before it
            await self._run(self._core.auth_call("GET", "/v1/auth/status", None, None))
        authorization = None
        if credentials is not None and credentials.token is not None:
            authorization = f"Bearer {credentials.token}"
        return await asyncio.to_thread(
            _save_backup,
            self.endpoints,
            path,
            self._core.policy.timeout_s,
            self._ssl_context,
            authorization,
        )

    async def status_all(self) -> StatusResults:
        """The status of every endpoint, asked concurrently: a dict, or the error."""
        endpoints = self.endpoints
        results = await asyncio.gather(
            *(self.status(endpoint) for endpoint in endpoints), return_exceptions=True
        )
        collected: StatusResults = {}
        for endpoint, result in zip(endpoints, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, KVError):
                raise result
            collected[endpoint] = result
        return collected

    async def _run(self, steps: Steps[T]) -> T:
        steps = self._core.authenticated(steps)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Wait):
                    await asyncio.sleep(step.delay_s)
                    step = steps.send(None)
                else:
                    step = steps.send(await self._send(step))
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _session_for_use(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                force_close=True,
                ssl=self._ssl_context or True,
                # A TLS connection closed on release finishes its shutdown later; before
                # Python 3.12.8 one still shutting down when the loop ends leaks (CPython
                # issue 118960), unless the connector aborts it when it closes.
                enable_cleanup_closed=aiohttp.connector.NEEDS_CLEANUP_CLOSED,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
            )
            # aiohttp silently repeats a PUT or DELETE once when the connection drops
            # after sending (aiohttp issue #10790), which could apply a write twice.
            # This private switch is the one aiohttp's own test client uses to turn that
            # off; a test of this module fails if a future aiohttp ignores it.
            session._retry_connection = False
            self._session = session
        return self._session

    async def _open_stream(self, step: OpenStream) -> tuple[aiohttp.ClientResponse | None, Outcome]:
        """Send a streaming request; keep the response open on a 200."""
        request = step.request
        timeout_s = max(step.timeout_s, 0.001)
        # The head must come within timeout_s; the body is read under ReadStream's timeout.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=min(timeout_s, self._core.policy.connect_timeout_s)
        )
        url = yarl.URL(step.endpoint + request.target, encoded=True)
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._session_for_use().request(
                    request.method,
                    url,
                    headers=dict(request.headers),
                    timeout=timeout,
                    allow_redirects=False,
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            cause = getattr(error, "os_error", None) or error
            return None, TransportFailure(FailureKind.NOT_SENT, _connection_failure(cause))
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))
        headers = {name.lower(): value for name, value in response.headers.items()}
        if response.status == 200:
            return response, HttpResponse(200, headers, b"")
        limit = self._core.response_bytes_max
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(timeout_s):
                while received <= limit and (chunk := await response.content.read(64 * 1024)):
                    received += len(chunk)
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))
        finally:
            response.close()
        if received > limit:
            raise _too_large(step.endpoint, limit)
        return None, HttpResponse(response.status, headers, b"".join(chunks))

    async def _send(self, step: Send) -> Outcome:
        request = step.request
        timeout = aiohttp.ClientTimeout(
            total=max(step.timeout_s, 0.001),
            connect=min(max(step.timeout_s, 0.001), self._core.policy.connect_timeout_s),
        )
        # encoded=True: the target is already quoted and must reach the server verbatim.
        url = yarl.URL(step.endpoint + request.target, encoded=True)
        limit = self._core.response_bytes_max
        try:
            async with self._session_for_use().request(
                request.method,
                url,
                data=request.body if request.body or request.method == "PUT" else None,
                headers=dict(request.headers),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                chunks: list[bytes] = []
                received = 0
                while chunk := await response.content.read(64 * 1024):
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(step.endpoint, limit)
                    chunks.append(chunk)
                headers = {name.lower(): value for name, value in response.headers.items()}
                return HttpResponse(response.status, headers, b"".join(chunks))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            # Raised before a connection existed: the request cannot have been sent.
            cause = getattr(error, "os_error", None) or error
            return TransportFailure(FailureKind.NOT_SENT, _connection_failure(cause))
        except (aiohttp.ClientError, TimeoutError) as error:
            return TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))


async def _read_async_stream(
    response: aiohttp.ClientResponse | None, timeout_s: float
) -> bytes | TransportFailure:
    """The next bytes of an open stream (b"" at its end), or why there are none."""
    if response is None:
        raise TypeError("ReadStream without an open stream")
    try:
        async with asyncio.timeout(max(timeout_s, 0.001)):
            return await response.content.readany()
    except (aiohttp.ClientError, TimeoutError) as error:
        return TransportFailure(FailureKind.AFTER_SEND, _connection_failure(error))


# ---------------------------------------------------------------------------------------
# Leases kept alive in the background.


def _check_ttl(ttl_s: object) -> None:
    if type(ttl_s) is not int or ttl_s < 1:
        raise ClientError("bad_ttl", "ttl_s must be a positive whole number of seconds")


class Lease:
    """A lease kept alive by a background thread; made by `KVClient.lease`, used as a
    context manager. Fields: `id` and `ttl_s` (once entered); `lost`, a `threading.Event`
    set when a keepalive found the lease gone; `last_error`, why the latest keepalive
    failed (None after a success): a keepalive that reaches no node within one period is
    tried again at once, and the lease is only known lost once a node says so.

    Not restartable: one lease per `with`.
    """

    def __init__(self, client: KVClient, keeper: KVClient, ttl_s: int) -> None:
        self._client = client
        self._keeper = keeper
        self.ttl_s = ttl_s
        self._id: int | None = None
        self.lost = threading.Event()
        self.last_error: KVError | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def id(self) -> int:
        """The lease's id, for `put(..., lease=)`; only inside the `with` block."""
        if self._id is None:
            raise ClientError("bad_lease", "the lease is granted when its with block starts")
        return self._id

    def __enter__(self) -> Lease:
        if self._id is not None:
            raise ClientError("bad_lease", "a Lease is entered once")
        self._id = self._client.lease_grant(self.ttl_s).id
        self._thread = threading.Thread(
            target=self._keep_alive, name=f"kvraft-lease-{self._id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        if self._thread is not None:
            # Within one keepalive period: each keepalive call is bounded by it.
            self._thread.join()
        if self.lost.is_set() or self._id is None:
            return
        try:
            self._client.lease_revoke(self._id)
        except LeaseNotFound:
            pass  # expired just now, or an earlier attempt of this revoke applied: gone
        except KVError:
            if exc_type is None:
                raise  # else the body's own error matters more; the lease expires anyway

    def _keep_alive(self) -> None:
        assert self._id is not None
        lease_id = self._id
        period_s = self.ttl_s / KEEPALIVES_PER_TTL
        policy = self._keeper._core.keepalive_policy(self.ttl_s)
        next_s = time.monotonic() + period_s
        # The wait is the keepalive schedule itself, and the stop signal ends it at once.
        while not self._stopped.wait(max(0.0, next_s - time.monotonic())):
            try:
                self._keeper._run(self._keeper._core.lease_keepalive(lease_id, policy))
            except LeaseNotFound:
                if not self._stopped.is_set():
                    self.lost.set()
                return
            except KVError as error:
                self.last_error = error
                next_s = time.monotonic() + BACKOFF_S_MIN  # no node confirmed it: again
                continue
            self.last_error = None
            next_s = time.monotonic() + period_s


class AsyncLease:
    """A lease kept alive by an asyncio task; made by `AsyncKVClient.lease`, used with
    `async with`. The same fields as `Lease`, with `lost` an `asyncio.Event`."""

    def __init__(self, client: AsyncKVClient, ttl_s: int) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self._id: int | None = None
        self.lost = asyncio.Event()
        self.last_error: KVError | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> int:
        """The lease's id, for `put(..., lease=)`; only inside the `async with` block."""
        if self._id is None:
            raise ClientError("bad_lease", "the lease is granted when its with block starts")
        return self._id

    async def __aenter__(self) -> AsyncLease:
        if self._id is not None:
            raise ClientError("bad_lease", "an AsyncLease is entered once")
        self._id = (await self._client.lease_grant(self.ttl_s)).id
        self._task = asyncio.create_task(
            self._keep_alive(self._id), name=f"kvraft-lease-{self._id}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lost.is_set() or self._id is None:
            return
        try:
            await self._client.lease_revoke(self._id)
        except LeaseNotFound:
            pass  # expired just now, or an earlier attempt of this revoke applied: gone
        except KVError:
            if exc_type is None:
                raise  # else the body's own error matters more; the lease expires anyway

    async def _keep_alive(self, lease_id: int) -> None:
        period_s = self.ttl_s / KEEPALIVES_PER_TTL
        policy = self._client._core.keepalive_policy(self.ttl_s)
        delay_s = period_s
        while True:
            await asyncio.sleep(delay_s)  # the keepalive schedule itself
            try:
                await self._client._run(self._client._core.lease_keepalive(lease_id, policy))
            except LeaseNotFound:
                self.lost.set()
                return
            except KVError as error:
                self.last_error = error
                delay_s = BACKOFF_S_MIN  # no node confirmed it within a period: again
                continue
            self.last_error = None
            delay_s = period_s


# ---------------------------------------------------------------------------------------
# Locks held for a block of code.


def _check_lock_wait(wait_s: object) -> None:
    if wait_s is not None and (not isinstance(wait_s, int | float) or wait_s < 0):
        raise ClientError("bad_request", "wait_s must be a non-negative number or None")


def _lock_wait_chunk_s(deadline_s: float | None) -> float:
    """How long the next lock request may wait on the server: to the deadline, at most
    `LOCK_WAIT_S_MAX` (a longer wait asks again)."""
    if deadline_s is None:
        return LOCK_WAIT_S_MAX
    return min(max(0.0, deadline_s - time.monotonic()), LOCK_WAIT_S_MAX)


class _LockBase:
    """What `Lock` and `AsyncLock` share: the hold, once entered."""

    def __init__(self, name: str, wait_s: float | None, value: str) -> None:
        self.name = name
        self._wait_s = wait_s
        self._value = value
        self._hold: LockHold | None = None

    @property
    def hold(self) -> LockHold:
        """The place held: token, lease, key; only inside the `with` block."""
        if self._hold is None:
            raise ClientError("bad_lock", "the lock is held once its with block starts")
        return self._hold

    @property
    def fencing_token(self) -> int:
        """Greater than every token given for this lock before: pass it along to whatever
        the lock protects, which should refuse a token smaller than one it has seen."""
        return self.hold.fencing_token

    @property
    def fence(self) -> Fence:
        """`fence=` for kvraft's own writes: they apply only while this hold lasts."""
        return self.hold.fence

    def _deadline_s(self) -> float | None:
        return None if self._wait_s is None else time.monotonic() + self._wait_s


class Lock(_LockBase):
    """A lock held by a `with` block; made by `KVClient.lock`. `lost` (a `threading.Event`)
    is set if the lease expired: the lock may be someone else's now."""

    def __init__(
        self, client: KVClient, lease: Lease, name: str, wait_s: float | None, value: str
    ) -> None:
        super().__init__(name, wait_s, value)
        self._client = client
        self._lease = lease
        self.lost = lease.lost

    def __enter__(self) -> Lock:
        self._lease.__enter__()
        try:
            deadline_s = self._deadline_s()
            while True:
                try:
                    self._hold = self._client.lock_acquire(
                        self.name,
                        self._lease.id,
                        wait_s=_lock_wait_chunk_s(deadline_s),
                        value=self._value,
                    )
                    return self
                except LockNotAcquired:
                    if self.lost.is_set() or _lock_wait_chunk_s(deadline_s) == 0:
                        raise
        except BaseException as error:
            self._lease.__exit__(type(error), error, error.__traceback__)  # revoked: place gone
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._hold is not None and not self.lost.is_set():
                with contextlib.suppress(LockNotHeld):  # released by an earlier attempt
                    self._client.lock_release(self.name, self._hold.fencing_token)
        finally:
            self._lease.__exit__(exc_type, exc, traceback)


class AsyncLock(_LockBase):
    """A lock held by an `async with` block; made by `AsyncKVClient.lock`."""

    def __init__(
        self,
        client: AsyncKVClient,
        lease: AsyncLease,
        name: str,
        wait_s: float | None,
        value: str,
    ) -> None:
        super().__init__(name, wait_s, value)
        self._client = client
        self._lease = lease
        self.lost = lease.lost

    async def __aenter__(self) -> AsyncLock:
        await self._lease.__aenter__()
        try:
            deadline_s = self._deadline_s()
            while True:
                try:
                    self._hold = await self._client.lock_acquire(
                        self.name,
                        self._lease.id,
                        wait_s=_lock_wait_chunk_s(deadline_s),
                        value=self._value,
                    )
                    return self
                except LockNotAcquired:
                    if self.lost.is_set() or _lock_wait_chunk_s(deadline_s) == 0:
                        raise
        except BaseException as error:
            await self._lease.__aexit__(type(error), error, error.__traceback__)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._hold is not None and not self.lost.is_set():
                with contextlib.suppress(LockNotHeld):
                    await self._client.lock_release(self.name, self._hold.fencing_token)
        finally:
            await self._lease.__aexit__(exc_type, exc, traceback)
