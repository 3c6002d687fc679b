"""The HTTP API (aiohttp): the same on every node.

Any node accepts any request. A follower forwards writes and linearizable reads
to the leader itself (one hop, marked with `X-Kvraft-Forwarded` so a request is
never forwarded twice), so plain `curl` works against any node. During an election
(no leader known, or the known one gone) the request waits for the new leader, for
up to half its timeout, instead of failing at once.

Errors say whose fault they were:
- 4xx: the client's (bad key or header 400, too large 413, failed condition 412, a body
  slower than `limits.request_body_timeout_ms` 408, and the connection closed);
- 503 + Retry-After: the cluster's, and nothing was applied (no leader, no quorum,
  leadership lost, overloaded): retrying is safe;
- 504 `outcome_unknown`: the write was proposed but not confirmed in time; it may
  or may not be applied (retry with the same Idempotency-Key to be exactly-once).
A 200 on a write means committed on a majority and applied.

Membership (`/v1/members`, `/v1/leader/transfer`) follows the same rules, with 404 for
an unknown member and 409 when the request contradicts the membership or another
change is still in progress; see `kvraft.reconfiguration` for the steps.

Nothing is guessed: every route names the query parameters and the headers with a meaning
(preconditions, `Idempotency-Key`, Consul's `X-Consul-*`) it understands, and refuses any
other with `400 unknown_parameter` naming it, before doing anything. Ignoring one would do
something else than asked: Consul's `PUT /v1/kv/k?cas=0` would overwrite an existing key,
`DELETE /v1/kv/a/?recurse=true` would delete nothing. Consul's names get a hint at what kvraft
calls them (`CONSUL_EQUIVALENTS`).

Transactions (`POST /v1/txn`, see `_Routes.txn`) and range deletes (`DELETE /v1/kv?prefix=P`)
are one log entry each (`kvraft.statemachine.TxnCommand`): whatever they change changes at one
revision.

Authentication (`_Authorizer`, rules in `kvraft.auth`): once enabled, every request is checked
right after its route and parameters, before admission and before anything is read or
proposed: 401 without a valid bearer token, 403 without the permission `_need` names for the
route. Each node checks what it receives against its own applied state, and a follower
forwards the Authorization header so that the leader checks again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import yarl
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kvraft import __version__
from kvraft.admission import REQUEST_OVERHEAD_BYTES
from kvraft.auth import (
    AUTH_NAME_BYTES_MAX,
    PASSWORD_BYTES_MAX,
    PASSWORD_HASHES_CONCURRENT_MAX,
    ROOT_USER,
    SALT_BYTES,
    SIGNING_KEY_BYTES,
    TOKEN_TTL_S_DEFAULT,
    AuthState,
    LoginLimiter,
    Permission,
    TokenError,
    hash_password,
    sign_token,
    verify_password,
    verify_token,
)
from kvraft.backup_http import BACKUP_PATH, leader_redirect, stream_backup
from kvraft.descriptors import EXHAUSTION, is_exhaustion
from kvraft.errors import (
    ChangeInProgress,
    HandedOver,
    NotCaughtUp,
    NotLeader,
    OutcomeUnknown,
    Overloaded,
    Unavailable,
)
from kvraft.event_stream import EVENTS_PATH, EVENTS_QUERY_PARAMETERS, serve_events
from kvraft.http_guard import FORWARD_CONNECTIONS_MAX, GuardedServer, request_body_timeout_s
from kvraft.leases import LEASE_TTL_ELECTION_TIMEOUTS_MIN, ttl_bounds_s
from kvraft.membership import (
    MEMBER_REQUEST_BYTES_MAX,
    MembershipConflictError,
    MembershipError,
    UnknownMemberError,
    parse_add_request,
    parse_node_id,
    parse_transfer_request,
)
from kvraft.metrics import LoopHistogram, LoopMetrics
from kvraft.raft.core import Role
from kvraft.server import RaftNode
from kvraft.statemachine import (
    LIST_LIMIT_MAX,
    REVISION_MAX,
    TXN_BYTES_MAX,
    TXN_OPERATIONS_MAX,
    ApplyResult,
    Change,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    DeletePrefixResult,
    DeleteResult,
    ErrorCode,
    GetResult,
    ListResult,
    LockWaiter,
    PutResult,
    TxnDelete,
    TxnDeletePrefix,
    TxnGet,
    TxnList,
    TxnOperation,
    TxnPut,
    TxnResult,
    encode_auth_enable,
    encode_auth_role_delete,
    encode_auth_role_put,
    encode_auth_user_delete,
    encode_auth_user_put,
    encode_delete,
    encode_fenced,
    encode_lease_grant,
    encode_lease_revoke,
    encode_lock_acquire,
    encode_lock_release,
    encode_put,
    encode_txn,
)
from kvraft.ui import UI_PATH, cors_headers, preflight_headers, serve_ui, with_member_cors
from kvraft.watch import (
    CompactedError,
    Lagged,
    TooManyWatchersError,
    Watcher,
    change_json,
)

__all__ = ["FORWARDED_HEADER", "MEMBERSHIP_PATH_PREFIXES", "HttpApi"]

log = logging.getLogger("kvraft.http")

FORWARDED_HEADER = "X-Kvraft-Forwarded"
RETRY_AFTER_S = "1"
LIST_LIMIT_DEFAULT = 100
FORWARD_CONNECT_TIMEOUT_S = 1.0
FORWARD_MARGIN_S = 1.0
"""A forwarding node waits for the leader's answer this much longer than the request timeout
(from when it started forwarding), so the leader's own 503/504 arrives first."""
LEADER_WAIT_REQUEST_TIMEOUT_FRACTION = 0.5
"""How long a request waits for a leader when none is known (or the known one is gone), as a
part of the request timeout: long enough for several elections (etcd, too, holds requests
through an election), short enough to leave the leader time to answer within the request
timeout. Past it the answer is 503 + Retry-After."""
MEMBERSHIP_PATH_PREFIXES = ("/v1/members", "/v1/leader/")
"""Routes that may take `Reconfiguration.timeout_s`, so a forwarding node waits that long."""

METRIC_METHODS = frozenset(("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"))
"""Request methods that the latency metric names; any other is counted as "other"."""

WATCH_PROGRESS_S_DEFAULT = 10.0
"""A watch stream without changes sends a progress event this often, unless asked otherwise."""

WATCH_PROGRESS_S_MAX = 3600.0
"""The longest progress interval a watch may ask for."""

WAIT_S_DEFAULT = 60.0
"""A blocking read (`wait_revision`) without `wait_s` waits at most this long."""

WAIT_S_MAX = 600.0
"""The longest a blocking read may wait (`wait_s`)."""

WATCH_IDLE_CHECK_S = 5.0
"""An idle watch stream checks this often whether its client is still connected (aiohttp
does not cancel a handler whose client left), so a watcher nobody reads does not stay."""

WATCH_ENCODED_CHANGES_CACHED = 4096
"""Recent changes kept encoded for watch streams (each is encoded once, then shared)."""

WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
"""Requests that write: each holds its bytes against the node's write admission."""

REVISION_HEADER = "X-Kvraft-Revision"
"""On every answer: the answering node's applied index."""

KV_PATH_PREFIX = "/v1/kv/"
MEMBER_PATH_PREFIX = "/v1/members/"
TXN_PATH = "/v1/txn"
LEASES_PATH = "/v1/leases"
LEASE_PATH_PREFIX = "/v1/leases/"
LEASE_KEEPALIVE_SUFFIX = "/keepalive"
LOCKS_PATH = "/v1/locks"
LOCK_PATH_PREFIX = "/v1/locks/"

FENCE_HEADER = "X-Kvraft-Fence"
"""A write carrying ``X-Kvraft-Fence: <lock name>:<fencing token>`` applies only if that token
holds that lock when the write applies (`kvraft.statemachine`'s fenced commands), else 412
``fence_failed``."""

LOCK_WAIT_S_DEFAULT = 60.0
"""How long `POST /v1/locks/{name}` waits for the lock when the body names no ``wait_s``."""

LOCK_WAIT_S_MAX = 600.0
"""The longest ``wait_s`` of a lock request (as a blocking read's): a longer wait is a loop
of shorter ones on the client's side, each renewing its place."""

BROKEN_FENCE_ENV = "KVRAFT_TEST_BROKEN_FENCE"
"""Test-only: when this variable is "1" in a node's environment, the node ignores
`FENCE_HEADER` and applies fenced writes unconditionally, so that the chaos lock workload's
checker can show it catches a store that lets a deposed lock holder write
(`kvraft chaos --broken-fence`). Never set it on a real node."""

TXN_REQUEST_BYTES_MAX = 8 * TXN_BYTES_MAX
"""The largest `POST /v1/txn` body. The transaction's own limits (`TXN_BYTES_MAX` of keys and
values, `TXN_OPERATIONS_MAX` compares and operations) are checked once it is decoded; this only
bounds what is read first: base64 and JSON escapes make a value up to six times longer."""

CONSUL_EQUIVALENTS = {
    "cas": "Consul's cas=N is kvraft's If-Match: \"N\" header (cas=0: If-None-Match: *), "
    "or a compare in POST /v1/txn",
    "recurse": "Consul's recurse is kvraft's prefix: GET /v1/kv?prefix=P lists a range, "
    "DELETE /v1/kv?prefix=P deletes one",
    "index": "Consul's blocking index is kvraft's GET /v1/kv/{key}?wait_revision=N&wait_s=S, "
    "or GET /v1/watch?start_revision=N",
    "keys": "Consul's keys is kvraft's GET /v1/kv?prefix=P&keys_only=true",
    "stale": "Consul's stale is kvraft's consistency=stale",
    "consistent": "Consul's consistent is kvraft's default, consistency=linearizable",
    "raw": "kvraft's GET /v1/kv/{key} answers the raw value already",
    "acquire": "Consul's acquire is kvraft's POST /v1/locks/{name} with a lease, and a "
    "fenced write (X-Kvraft-Fence: name:token)",
    "release": "Consul's release is kvraft's DELETE /v1/locks/{name} with the fencing token",
    "x-consul-index": "Consul's blocking index is kvraft's wait_revision=N&wait_s=S",
    "x-consul-token": "kvraft has no ACL tokens",
}
"""What kvraft calls the Consul query parameters and headers people type from habit."""

MEANINGFUL_HEADERS = frozenset(
    (
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "idempotency-key",
        "x-kvraft-fence",
    )
)
"""Headers that change what a request does: a route that does not know one refuses it (a
precondition or an idempotency key silently ignored would write what the client ruled out).
Headers starting with `x-consul-` are refused too."""

CACHE_REVALIDATION_HEADERS = frozenset(("if-none-match", "if-modified-since"))
"""Sent by browsers and caches on their own when they revalidate a GET: a read answering in
full is a correct answer to them, so reads let them pass."""

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: status, a stable code and a message for humans; `close_connection`
    ends the connection after it (the request's body was not read to its end)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close_connection: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.close_connection = close_connection
        self.extra = extra


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _unavailable(error: Unavailable) -> ApiError:
    """503: the cluster's fault, retry; ``overloaded`` when this node sheds load."""
    return ApiError(
        503, "overloaded" if isinstance(error, Overloaded) else "unavailable", str(error)
    )


def _error_response(error: ApiError) -> web.Response:
    headers = dict(error.headers or {})
    if error.status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
    body = {"error": error.code, "message": error.message, **error.extra}
    response = _json(error.status, body, headers)
    if error.close_connection:
        response.force_close()
    return response


# --- request parsing ----------------------------------------------------------------------


def _path_tail(request: web.BaseRequest, prefix: str) -> str:
    """The path after `prefix`, fully decoded. aiohttp's `path_safe` decodes all but "%2F"
    and "%25", so that a slash inside a key is not mistaken for a separator on the way."""
    tail = request.rel_url.path_safe[len(prefix) :]
    if "%" in tail:
        tail = tail.replace("%2F", "/").replace("%25", "%")
    return tail


def _key(request: web.BaseRequest) -> str:
    return _path_tail(request, KV_PATH_PREFIX)


def _parse_revision_header(value: str, header: str) -> int:
    text = value.strip()
    if text.startswith("W/"):
        raise ApiError(400, "bad_request", f"{header}: weak ETags are not supported")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text.isdigit() or len(text) > 19:
        raise ApiError(400, "bad_request", f'{header}: expected a revision like "42"')
    return int(text)


def _conditions(request: web.BaseRequest) -> tuple[int | None, bool]:
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise ApiError(400, "bad_request", "use either If-Match or If-None-Match, not both")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise ApiError(
            400, "bad_request", 'If-None-Match: only "*" (create if absent) is supported'
        )
    if_revision = _parse_revision_header(if_match, "If-Match") if if_match is not None else None
    return if_revision, if_none_match is not None


def _command_error(error: CommandError) -> ApiError:
    status = 413 if str(error.code).endswith("too_large") else 400
    return ApiError(status, str(error.code), str(error))


BODY_KEY = web.RequestKey("kvraft_body", bytes)


async def _read_value(request: web.BaseRequest, value_bytes_max: int, what: str = "value") -> bytes:
    """Read the body once: it is kept in the request for `_forward` (a follower reads it,
    learns it is not the leader, then forwards it) and for a second try here."""
    kept: bytes | None = request.get(BODY_KEY)
    if kept is not None:
        return kept

    def too_large() -> ApiError:  # built only when needed: this is every write's path
        return ApiError(
            413, f"{what}_too_large", f"{what} over the limit of {value_bytes_max} bytes"
        )

    declared = request.content_length
    if declared is not None and declared > value_bytes_max:
        raise too_large()
    expect = request.headers.get("Expect")
    if expect is not None and request.version >= (1, 1):
        # curl asks before it sends a body over 1 KiB, and waits a second for an answer.
        # Only now, with the declared size accepted, do we ask for the body.
        if expect.lower() != "100-continue":
            raise ApiError(417, "expectation_failed", f"unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # what aiohttp's answer counts starts after it
    if declared is not None:
        # The usual case, read in one call (the declared length is within the limit). An
        # empty body has no stream to read from (aiohttp's empty reader refuses readexactly).
        try:
            value = (
                await _in_time(request, request.content.readexactly(declared)) if declared else b""
            )
        except asyncio.IncompleteReadError:
            raise ApiError(400, "bad_request", "the body ended before its Content-Length") from None
        request[BODY_KEY] = value
        return value

    async def read_chunks() -> bytes:
        body = bytearray()
        while len(body) <= value_bytes_max:
            chunk = await request.content.read(value_bytes_max + 1 - len(body))
            if not chunk:
                break
            body += chunk
        return bytes(body)

    value = await _in_time(request, read_chunks())
    if len(value) > value_bytes_max:
        raise too_large()
    request[BODY_KEY] = value
    return value


async def _in_time(request: web.BaseRequest, reading: Awaitable[bytes]) -> bytes:
    """Await `reading` (of the request's body) within the connection's body time limit, or
    answer 408 and close the connection: a client that declares a large body and sends it
    slowly, or not at all, would otherwise hold the connection and its handler for ever."""
    timeout_s = request_body_timeout_s(request)
    if timeout_s is None or request.content.is_eof():
        return await reading  # all there already (most small bodies): no timer to set
    try:
        async with asyncio.timeout(timeout_s):
            return await reading
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout_s * 1000:.0f} ms"
            " (limits.request_body_timeout_ms)",
            close_connection=True,
        ) from None


async def _read_json(request: web.BaseRequest) -> object:
    """The request's JSON body (None when empty), bounded by MEMBER_REQUEST_BYTES_MAX."""
    body = await _read_value(request, MEMBER_REQUEST_BYTES_MAX, "body")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None


@functools.lru_cache(maxsize=WATCH_ENCODED_CHANGES_CACHED)
def _change_line(change: Change) -> bytes:
    """A change as one JSON line, encoded once for all the watchers it goes to (with 1,000
    watchers, encoding it for each was most of a node's work per put)."""
    return json.dumps(change_json(change), separators=(",", ":")).encode()


def _query_int(request: web.BaseRequest, name: str, lowest: int) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdecimal()) or not lowest <= int(text) <= 2**63 - 1:
        raise ApiError(400, "bad_request", f"{name} must be an integer >= {lowest}")
    return int(text)


def _query_seconds(request: web.BaseRequest, name: str, default: float, highest: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= highest:  # also refuses nan
        raise ApiError(400, "bad_request", f"{name} must be a number of seconds in 0..{highest}")
    return seconds


def _query_bool(request: web.BaseRequest, name: str) -> bool:
    text = request.query.get(name)
    if text is None or text == "false":
        return False
    if text == "true":
        return True
    raise ApiError(400, "bad_request", f"{name} must be true or false")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _prev_json(prev: tuple[bytes, int] | None) -> dict[str, Any] | None:
    if prev is None:
        return None
    return {"value_b64": _b64(prev[0]), "revision": prev[1]}


def _consistency(request: web.BaseRequest) -> str:
    consistency = request.query.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise ApiError(400, "bad_request", "consistency must be linearizable or stale")
    return consistency


# --- transactions -------------------------------------------------------------------------

_COMPARE_TARGETS = {
    "revision": CompareTarget.REVISION,
    "value": CompareTarget.VALUE,
    "exists": CompareTarget.EXISTS,
}
_COMPARE_OPS = {
    "==": CompareOp.EQUAL,
    "!=": CompareOp.NOT_EQUAL,
    "<": CompareOp.LESS,
    ">": CompareOp.GREATER,
}
_TXN_FIELDS = frozenset(("compare", "success", "failure"))
_OPERATION_FIELDS = {
    "put": frozenset(("op", "key", "value", "value_b64")),
    "delete": frozenset(("op", "key")),
    "delete_prefix": frozenset(("op", "prefix")),
    "get": frozenset(("op", "key")),
    "list": frozenset(("op", "prefix", "limit")),
}


def _fields(obj: object, allowed: frozenset[str], what: str, code: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ApiError(400, code, f"{what} must be a JSON object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ApiError(
            400,
            code,
            f"{what} has unknown field {unknown[0]!r} (it takes {', '.join(sorted(allowed))})",
        )
    return obj


def _text(obj: dict[str, Any], name: str, what: str, code: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ApiError(400, code, f"{what}: {name!r} must be a string")
    return value


def _bytes_field(obj: dict[str, Any], what: str, code: str, value_bytes_max: int) -> bytes:
    """`value` (text, sent as UTF-8) or `value_b64` (base64), exactly one of them."""
    if ("value" in obj) == ("value_b64" in obj):
        raise ApiError(400, code, f"{what}: give exactly one of 'value' and 'value_b64'")
    if "value" in obj:
        text = _text(obj, "value", what, code)
        try:
            value = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, code, f"{what}: 'value' is not valid Unicode") from None
    else:
        text = _text(obj, "value_b64", what, code)
        try:
            value = base64.b64decode(text, validate=True)
        except ValueError:
            raise ApiError(400, code, f"{what}: 'value_b64' is not valid base64") from None
    if len(value) > value_bytes_max:
        raise ApiError(413, "value_too_large", f"{what}: value over {value_bytes_max} bytes")
    return value


def _parse_compare(obj: object, position: int, check_key: Callable[[str], None]) -> Compare:
    what = f"compare[{position}]"
    code = "bad_compare"
    fields = _fields(obj, frozenset(("key", "target", "op", "value", "value_b64")), what, code)
    key = _text(fields, "key", what, code)
    check_key(key)
    target_name, op_name = fields.get("target"), fields.get("op")
    target = _COMPARE_TARGETS.get(target_name) if isinstance(target_name, str) else None
    if target is None:
        raise ApiError(400, code, f"{what}: target must be one of {', '.join(_COMPARE_TARGETS)}")
    op = _COMPARE_OPS.get(op_name) if isinstance(op_name, str) else None
    if op is None:
        raise ApiError(400, code, f"{what}: op must be one of {', '.join(_COMPARE_OPS)}")
    if target is CompareTarget.VALUE:
        return Compare(key, target, op, _bytes_field(fields, what, code, 2**63))
    if "value_b64" in fields:
        raise ApiError(400, code, f"{what}: value_b64 is only for a value compare")
    value = fields.get("value")
    if target is CompareTarget.REVISION:
        if type(value) is not int or not 0 <= value <= 2**63 - 1:
            raise ApiError(400, code, f"{what}: a revision compare needs an integer >= 0")
    elif type(value) is not bool:
        raise ApiError(400, code, f"{what}: an exists compare needs true or false")
    elif op not in (CompareOp.EQUAL, CompareOp.NOT_EQUAL):
        raise ApiError(400, code, f"{what}: an exists compare takes only == or !=")
    return Compare(key, target, op, value)


def _parse_operation(
    obj: object,
    where: str,
    check_key: Callable[[str], None],
    check_prefix: Callable[[str], None],
    value_bytes_max: int,
) -> TxnOperation:
    code = "bad_operation"
    if not isinstance(obj, dict):
        raise ApiError(400, code, f"{where} must be a JSON object")
    kind = obj.get("op")
    allowed = _OPERATION_FIELDS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        raise ApiError(400, code, f"{where}: op must be one of {', '.join(_OPERATION_FIELDS)}")
    fields = _fields(obj, allowed, f"{where} ({kind})", code)
    if kind in ("delete_prefix", "list"):
        prefix = _text(fields, "prefix", where, code)
        check_prefix(prefix)
        if kind == "delete_prefix":
            return TxnDeletePrefix(prefix)
        limit = fields.get("limit", LIST_LIMIT_DEFAULT)
        if type(limit) is not int or not 1 <= limit <= LIST_LIMIT_MAX:
            raise ApiError(400, code, f"{where}: limit must be an integer in 1..{LIST_LIMIT_MAX}")
        return TxnList(prefix, limit)
    key = _text(fields, "key", where, code)
    check_key(key)
    if kind == "put":
        return TxnPut(key, _bytes_field(fields, where, code, value_bytes_max))
    return TxnDelete(key) if kind == "delete" else TxnGet(key)


def parse_txn(
    body: bytes, key_bytes_max: int, value_bytes_max: int
) -> tuple[list[Compare], list[TxnOperation], list[TxnOperation]]:
    """The compares and both branches of a `POST /v1/txn` body; `ApiError` (400, or 413 past
    a limit) for anything malformed, naming what."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    fields = _fields(obj, _TXN_FIELDS, "the transaction", "bad_request")
    parts: dict[str, list[Any]] = {}
    for name in ("compare", "success", "failure"):
        part = fields.get(name, [])
        if not isinstance(part, list):
            raise ApiError(400, "bad_request", f"{name!r} must be a JSON array")
        parts[name] = part
    count = sum(len(part) for part in parts.values())
    if count > TXN_OPERATIONS_MAX:
        raise ApiError(
            413,
            "txn_too_large",
            f"the transaction has {count} compares and operations; the limit "
            f"(TXN_OPERATIONS_MAX) is {TXN_OPERATIONS_MAX}",
        )

    def check_key(key: str) -> None:
        if not key:
            raise ApiError(400, "bad_key", "a key must not be empty")
        if len(key.encode("utf-8", "surrogatepass")) > key_bytes_max:
            raise ApiError(413, "key_too_large", f"key over the limit of {key_bytes_max} bytes")

    def check_prefix(prefix: str) -> None:
        if len(prefix.encode("utf-8", "surrogatepass")) > key_bytes_max:
            raise ApiError(413, "key_too_large", f"prefix over {key_bytes_max} bytes")

    compare = [_parse_compare(c, i, check_key) for i, c in enumerate(parts["compare"])]
    success, failure = (
        [
            _parse_operation(o, f"{name}[{i}]", check_key, check_prefix, value_bytes_max)
            for i, o in enumerate(parts[name])
        ]
        for name in ("success", "failure")
    )
    return compare, success, failure


def _txn_result_json(result: TxnResult) -> dict[str, Any]:
    if isinstance(result, PutResult):
        return {"revision": result.revision}
    if isinstance(result, DeleteResult | DeletePrefixResult):
        return {"deleted": result.deleted}
    if isinstance(result, GetResult):
        body: dict[str, Any] = {"key": result.key, "revision": result.revision}
        if result.value is not None:
            body["value_b64"] = _b64(result.value)
        return body
    assert isinstance(result, ListResult)
    return {
        "items": [{"key": k, "revision": r, "value_b64": _b64(v)} for k, v, r in result.items],
        "continuation": result.continuation,
    }


def _lease_id(text: str) -> int:
    """A lease id as the API spells it: a decimal string."""
    if not text.isascii() or not text.isdecimal() or not 1 <= int(text) <= REVISION_MAX:
        raise ApiError(400, "bad_lease", f"a lease id is a decimal in 1..{REVISION_MAX}")
    return int(text)


def _lease_path_id(request: web.BaseRequest, *, keepalive: bool = False) -> str:
    tail = _path_tail(request, LEASE_PATH_PREFIX)
    return tail[: -len(LEASE_KEEPALIVE_SUFFIX)] if keepalive else tail


def _lease_field(body: dict[str, Any]) -> int:
    """A body's ``lease``: a lease id as the API answers it (a decimal string), or an int."""
    lease = body.get("lease")
    if type(lease) is int:
        lease = str(lease)
    if not isinstance(lease, str):
        raise ApiError(400, "bad_lease", "'lease' must be a lease id (the id POST /v1/leases gave)")
    return _lease_id(lease)


def _fencing_token_field(body: dict[str, Any]) -> int:
    token = body.get("fencing_token")
    if type(token) is not int or not 1 <= token <= REVISION_MAX:
        raise ApiError(400, "bad_lock", f"'fencing_token' must be an integer in 1..{REVISION_MAX}")
    return token


def _fence(request: web.BaseRequest) -> tuple[str, int] | None:
    """The (lock name, fencing token) of a write's `FENCE_HEADER`, or None without one."""
    text = request.headers.get(FENCE_HEADER)
    if text is None:
        return None
    name, _, token = text.rpartition(":")  # a lock name may hold ":", a token never does
    if (
        not name
        or not token.isascii()
        or not token.isdecimal()
        or not 1 <= int(token) <= REVISION_MAX
    ):
        raise ApiError(
            400,
            "bad_fence",
            f"{FENCE_HEADER} must be '<lock name>:<fencing token>', the token as POST "
            "/v1/locks/{name} gave it",
        )
    return name, int(token)


def _lock_json(name: str, waiter: LockWaiter) -> dict[str, Any]:
    return {
        "name": name,
        "key": f"{name}/{waiter.fencing_token}",
        "fencing_token": waiter.fencing_token,
        "lease": str(waiter.lease_id),
        "value": waiter.value,
    }


def _lease_not_found(lease_id: int) -> ApiError:
    return ApiError(
        404,
        "lease_not_found",
        f"lease {lease_id} does not exist (never granted, revoked or expired)",
    )


# --- routes -------------------------------------------------------------------------------


_ERROR_STATUS = {
    ErrorCode.LEASE_NOT_FOUND: 404,
    ErrorCode.LOCK_NOT_HELD: 409,
    ErrorCode.FENCE_FAILED: 412,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.ROLE_NOT_FOUND: 404,
    ErrorCode.ROOT_REQUIRED: 409,
}
"""The status of a command the machine refused, when it is not 400 (the client's mistake)."""


class _LeaderRefused(Exception):
    """The leader we forward to refused the connection: nothing reached it (it is likely
    gone, and an election under way)."""


class _Routes:
    def __init__(self, node: RaftNode, metrics: LoopMetrics) -> None:
        self.node = node
        self.timeout_s = node.config.limits.request_timeout_ms / 1000
        self.leader_wait_s = LEADER_WAIT_REQUEST_TIMEOUT_FRACTION * self.timeout_s
        self.key_bytes_max = node.config.limits.key_bytes_max
        self.value_bytes_max = node.config.limits.value_bytes_max
        raft = node.config.raft
        self.lease_ttl_s_min, self.lease_ttl_s_max = ttl_bounds_s(raft.tick_ms, raft.election_ticks)
        self.broken_fence = os.environ.get(BROKEN_FENCE_ENV) == "1"
        self.authorizer: _Authorizer | None = None  # set by HttpApi
        if self.broken_fence:
            log.warning(
                "%s=1: fenced writes are NOT checked (a test-only broken mode)", BROKEN_FENCE_ENV
            )
        metrics.counter("kvraft_proposals", "Client writes proposed", ("outcome",))
        self.count_proposal = {
            outcome: metrics.counter_child("kvraft_proposals", outcome).inc
            for outcome in ("ok", "condition_failed", "unknown", "unavailable", "overloaded")
        }

    def _check_key(self, key: str) -> None:
        if not key:
            raise ApiError(400, "bad_key", "the key must not be empty")
        if len(key.encode("utf-8", "surrogatepass")) > self.key_bytes_max:
            raise ApiError(
                413, "key_too_large", f"key over the limit of {self.key_bytes_max} bytes"
            )

    async def _propose(self, command: bytes) -> ApplyResult:
        try:
            result = await self.node.propose(command, self.timeout_s)
        except OutcomeUnknown as error:
            self.count_proposal["unknown"]()
            raise ApiError(504, "outcome_unknown", str(error)) from None
        except Unavailable as error:
            self.count_proposal["overloaded" if isinstance(error, Overloaded) else "unavailable"]()
            raise _unavailable(error) from None
        self.count_proposal["ok" if result.ok else "condition_failed"]()
        if result.error is not None:
            status = _ERROR_STATUS.get(result.error, 400)
            raise ApiError(status, str(result.error), result.message)
        if result.condition_failed:
            raise ApiError(
                412, "condition_failed", "the condition did not hold", revision=result.revision
            )
        return result

    def _fenced(self, request: web.BaseRequest, command: bytes) -> bytes:
        """`command`, wrapped in the fence of the request's `FENCE_HEADER` if it has one."""
        fence = _fence(request)
        if fence is None or self.broken_fence:
            return command
        try:
            return encode_fenced(fence[0], fence[1], command)
        except CommandError as error:
            raise _command_error(error) from None

    async def put(self, request: web.BaseRequest) -> web.Response:
        key = _key(request)
        self._check_key(key)
        if_revision, if_absent = _conditions(request)
        lease_id = _lease_id(request.query["lease"]) if "lease" in request.query else None
        value = await _read_value(request, self.value_bytes_max)
        try:
            command = encode_put(
                key,
                value,
                if_revision=if_revision,
                if_absent=if_absent,
                idempotency_key=request.headers.get("Idempotency-Key"),
                lease_id=lease_id,
            )
        except CommandError as error:
            raise _command_error(error) from None
        prev = _query_bool(request, "prev")
        result = await self._propose(self._fenced(request, command))
        if prev:
            return _json(200, self._with_prev({"revision": result.revision}, result))
        # The hot path's answer, formatted directly (the same JSON as _json would give).
        return web.Response(
            body=b'{"revision": %d}' % result.revision, content_type="application/json"
        )

    @staticmethod
    def _with_prev(body: dict[str, Any], result: ApplyResult) -> dict[str, Any]:
        """`prev`: the key before the write ({value_b64, revision}, or null if absent). A retry
        answered from the idempotency table does not know it (the table keeps no values):
        then `prev` is left out rather than claimed null."""
        if not result.remembered:
            body["prev"] = _prev_json(result.prev)
        return body

    async def delete(self, request: web.BaseRequest) -> web.Response:
        key = _key(request)
        self._check_key(key)
        if_revision, if_absent = _conditions(request)
        if if_absent:
            raise ApiError(400, "bad_request", "If-None-Match is not meaningful on DELETE")
        idempotency_key = request.headers.get("Idempotency-Key")
        try:
            command = encode_delete(key, if_revision=if_revision, idempotency_key=idempotency_key)
        except CommandError as error:
            raise _command_error(error) from None
        prev = _query_bool(request, "prev")
        fenced = self._fenced(request, command)
        # A fenced delete goes to the log even for an absent key: only there is the fence
        # checked, and a deposed holder must hear 412, not "deleted: false".
        if fenced is command and await self._is_absent(key, idempotency_key):
            # Nothing to delete: answered at the current revision without a log entry, as
            # etcd does (a write that changes nothing need not cost a round of fsyncs).
            revision = self.node.state_machine.applied_index
            if if_revision not in (None, 0):
                raise ApiError(412, "condition_failed", "the condition did not hold", revision=0)
            body: dict[str, Any] = {"revision": revision, "deleted": False}
            if prev:
                body["prev"] = None
            return _json(200, body)
        result = await self._propose(fenced)
        body = {"revision": result.revision, "deleted": result.deleted}
        return _json(200, self._with_prev(body, result) if prev else body)

    async def _is_absent(self, key: str, idempotency_key: str | None) -> bool:
        """Whether `key` is absent now, linearizably (a read barrier on the leader), and a
        keyed delete was not applied already (its retry must get the remembered answer). A
        key present here needs no barrier: the delete goes to the log, which decides."""

        def absent() -> bool:
            machine = self.node.state_machine  # replaced when a snapshot is installed
            return machine.get(key) is None and (
                idempotency_key is None or not machine.remembers(idempotency_key)
            )

        if not absent():
            return False
        try:
            await self.node.read_barrier(self.timeout_s)
        except Unavailable as error:
            raise ApiError(503, "unavailable", str(error)) from None
        return absent()

    async def delete_prefix(self, request: web.BaseRequest) -> web.Response:
        """`DELETE /v1/kv?prefix=P`: every key under P, in one entry at one revision."""
        prefix = request.query.get("prefix")
        if prefix is None:
            raise ApiError(
                400,
                "bad_request",
                "DELETE /v1/kv deletes a range: give ?prefix=P (to delete every key, give "
                "prefix= explicitly and empty)",
            )
        self._check_prefix(prefix)
        try:
            command = encode_txn(
                (),
                (TxnDeletePrefix(prefix),),
                idempotency_key=request.headers.get("Idempotency-Key"),
            )
        except CommandError as error:
            raise _command_error(error) from None
        result = await self._propose(self._fenced(request, command))
        deleted = result.results[0] if result.results else None
        if not isinstance(deleted, DeletePrefixResult):
            raise ApiError(500, "internal_error", "a range delete answered without its count")
        return _json(200, {"revision": result.revision, "deleted": deleted.deleted})

    def _check_prefix(self, prefix: str) -> None:
        if len(prefix.encode("utf-8", "surrogatepass")) > self.key_bytes_max:
            raise ApiError(413, "key_too_large", f"prefix over {self.key_bytes_max} bytes")

    async def txn(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/txn`: `{"compare": [...], "success": [...], "failure": [...]}`, all of it
        one log entry (see `parse_txn` for the body and `_txn_result_json` for the answer)."""
        body = await _read_value(request, TXN_REQUEST_BYTES_MAX, "body")
        compare, success, failure = parse_txn(body, self.key_bytes_max, self.value_bytes_max)
        if self.authorizer is not None:
            self.authorizer.check_txn(request, compare, (success, failure))
        try:
            command = encode_txn(
                compare, success, failure, idempotency_key=request.headers.get("Idempotency-Key")
            )
        except CommandError as error:
            raise _command_error(error) from None
        result = await self._propose(self._fenced(request, command))
        return _json(
            200,
            {
                "succeeded": result.succeeded,
                "revision": result.revision,
                "results": [_txn_result_json(one) for one in result.results],
            },
        )

    # --- leases (kvraft.leases) ---------------------------------------------------------

    async def grant_lease(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/leases {"ttl_s": N}` -> `{"id": "<decimal>", "ttl_s": N}`."""
        body = _fields(await _read_json(request), frozenset(("ttl_s",)), "body", "bad_request")
        ttl_s = body.get("ttl_s")
        low, high = self.lease_ttl_s_min, self.lease_ttl_s_max
        if type(ttl_s) is not int or not low <= ttl_s <= high:
            raise ApiError(
                400,
                "bad_ttl",
                f"ttl_s must be an integer number of seconds in {low}..{high} (the shortest is"
                f" {LEASE_TTL_ELECTION_TIMEOUTS_MIN} election timeouts, so no lease expires"
                " during an ordinary election)",
            )
        result = await self._propose(encode_lease_grant(ttl_s))
        return _json(200, {"id": str(result.revision), "ttl_s": ttl_s})

    async def keepalive_lease(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/leases/{id}/keepalive` -> `{"id", "ttl_s"}`: no log write (leader only)."""
        lease_id = _lease_id(_lease_path_id(request, keepalive=True))
        try:
            ttl_s = await self.node.keepalive_lease(lease_id, self.timeout_s)
        except Unavailable as error:
            raise _unavailable(error) from None
        except OutcomeUnknown as error:  # clearing a checkpoint timed out: not acknowledged
            raise _unavailable(Unavailable(str(error))) from None
        if ttl_s is None:
            raise _lease_not_found(lease_id)
        return _json(200, {"id": str(lease_id), "ttl_s": ttl_s})

    async def get_lease(self, request: web.BaseRequest) -> web.Response:
        """`GET /v1/leases/{id}` -> `{"id", "ttl_s", "remaining_s", "keys"}`, from the leader
        (only its clock says what remains)."""
        lease_id = _lease_id(_lease_path_id(request))
        await self._lease_read_barrier()
        found = self.node.state_machine.lease(lease_id)
        if found is None:
            raise _lease_not_found(lease_id)
        ttl_s, keys = found
        if self.authorizer is not None:  # only the keys the caller may read
            keys = [key for key in keys if self.authorizer.readable(request, key)]
        return _json(
            200,
            {
                "id": str(lease_id),
                "ttl_s": ttl_s,
                "remaining_s": await self._remaining_s(lease_id, ttl_s),
                "keys": keys,
            },
        )

    async def _remaining_s(self, lease_id: int, ttl_s: int) -> float:
        remaining_s = await self.node.lease_remaining_s(lease_id)
        # No deadline yet: granted in this term and not yet applied here, a full TTL ahead.
        # A deadline may lie a tick more than the TTL ahead (`kvraft.leases`): shown as the
        # TTL, which is what the holder asked for and may count on.
        return float(ttl_s) if remaining_s is None else min(remaining_s, float(ttl_s))

    async def list_leases(self, request: web.BaseRequest) -> web.Response:
        """`GET /v1/leases` -> `{"leases": [{"id", "ttl_s", "remaining_s"}, ...]}`, by id."""
        await self._lease_read_barrier()
        leases = [
            {
                "id": str(lease_id),
                "ttl_s": ttl_s,
                "remaining_s": await self._remaining_s(lease_id, ttl_s),
            }
            for lease_id, ttl_s in self.node.state_machine.leases()
        ]
        return _json(200, {"leases": leases})

    async def revoke_lease(self, request: web.BaseRequest) -> web.Response:
        """`DELETE /v1/leases/{id}`: the lease and its keys go, in one revision."""
        lease_id = _lease_id(_lease_path_id(request))
        user = None if self.authorizer is None else self.authorizer.user_of(request)
        found = self.node.state_machine.lease(lease_id)
        if user is not None and self.authorizer is not None and found is not None:
            # As etcd: revoking deletes the lease's keys, so it needs readwrite on each.
            for key in found[1]:
                self.authorizer.check_key(user, key, write=True)
        result = await self._propose(encode_lease_revoke(lease_id))
        return _json(
            200,
            {"id": str(lease_id), "revision": result.revision, "deleted": len(result.changes)},
        )

    # --- locks (kvraft.locks) ------------------------------------------------------------

    async def acquire_lock(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/locks/{name} {"lease", "wait_s", "value"}`: queue the lease for the lock
        and wait (first come, first served) until it holds it: `{"name", "key",
        "fencing_token", ...}`; after `wait_s` without it, give the place up and answer 409
        `lock_not_acquired`. Served by the leader (the acquire is a write); the waiting
        reads the applied queue, which only the log changes (`kvraft.locks`)."""
        name = _path_tail(request, LOCK_PATH_PREFIX)
        body = _fields(
            await _read_json(request),
            frozenset(("lease", "wait_s", "value")),
            "body",
            "bad_request",
        )
        lease_id = _lease_field(body)
        wait_s = body.get("wait_s", LOCK_WAIT_S_DEFAULT)
        if type(wait_s) not in (int, float) or not 0 <= wait_s <= LOCK_WAIT_S_MAX:
            raise ApiError(
                400, "bad_request", f"wait_s must be a number of seconds in 0..{LOCK_WAIT_S_MAX:g}"
            )
        value = body.get("value", "")
        try:
            command = encode_lock_acquire(name, lease_id, value)
        except CommandError as error:
            raise _command_error(error) from None
        lock_waiting = self.node.lock_waiting
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + wait_s
        with lock_waiting.waiting(name) as changed:
            token = (await self._propose(command)).revision
            while True:
                changed.clear()
                waiters = self.node.state_machine.lock_waiters(name)
                if waiters and waiters[0].fencing_token == token:
                    body = {**_lock_json(name, waiters[0]), "revision": token}
                    return _json(200, body)
                if all(waiter.fencing_token != token for waiter in waiters):
                    raise ApiError(
                        409,
                        "lock_not_acquired",
                        f"lease {lease_id} expired or was revoked while it waited for lock "
                        f"{name!r}",
                    )
                remaining_s = deadline_s - loop.time()
                if remaining_s <= 0 or self.node.stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining_s)
        # Out of time: give the place up, so the lock does not pass to a caller who left.
        # If it passed to us meanwhile, this releases it: we never said we held it.
        with contextlib.suppress(ApiError):
            await self._propose(encode_lock_release(name, token))
        raise ApiError(
            409,
            "lock_not_acquired",
            f"lock {name!r} is held by another (waited {wait_s:g} s); the place in its queue "
            "was given up",
        )

    async def release_lock(self, request: web.BaseRequest) -> web.Response:
        """`DELETE /v1/locks/{name} {"fencing_token": T}`: release the lock (or give up a
        place in its queue); 409 `lock_not_held` if T neither holds nor waits."""
        name = _path_tail(request, LOCK_PATH_PREFIX)
        body = _fields(
            await _read_json(request), frozenset(("fencing_token",)), "body", "bad_request"
        )
        try:
            command = encode_lock_release(name, _fencing_token_field(body))
        except CommandError as error:
            raise _command_error(error) from None
        result = await self._propose(command)
        return _json(200, {"name": name, "released": True, "revision": result.revision})

    async def get_lock(self, request: web.BaseRequest) -> web.Response:
        """`GET /v1/locks/{name}` -> `{"name", "holder", "waiters", "revision"}`: who holds
        the lock (null: nobody) and who waits, in order; linearizable unless
        ``consistency=stale``."""
        name = _path_tail(request, LOCK_PATH_PREFIX)
        await self._read_barrier(request)
        machine = self.node.state_machine
        waiters = machine.lock_waiters(name)
        return _json(
            200,
            {
                "name": name,
                "holder": _lock_json(name, waiters[0]) if waiters else None,
                "waiters": [_lock_json(name, waiter) for waiter in waiters[1:]],
                "revision": machine.applied_index,
            },
        )

    async def list_locks(self, request: web.BaseRequest) -> web.Response:
        """`GET /v1/locks` -> `{"locks": [{"name", "holder", "waiting"}, ...], "revision"}`."""
        await self._read_barrier(request)
        machine = self.node.state_machine
        locks = []
        for name in machine.lock_names():
            if self.authorizer is not None and not self.authorizer.readable(request, name):
                continue  # only the locks the caller may read
            waiters = machine.lock_waiters(name)
            locks.append(
                {"name": name, "holder": _lock_json(name, waiters[0]), "waiting": len(waiters) - 1}
            )
        return _json(200, {"locks": locks, "revision": machine.applied_index})

    async def _lease_read_barrier(self) -> None:
        try:
            await self.node.read_barrier(self.timeout_s)
        except Unavailable as error:
            raise _unavailable(error) from None

    async def _read_barrier(self, request: web.BaseRequest) -> None:
        if _consistency(request) == "linearizable":
            try:
                await self.node.read_barrier(self.timeout_s)
            except Unavailable as error:
                raise _unavailable(error) from None

    async def get(self, request: web.BaseRequest) -> web.Response:
        key = _key(request)
        self._check_key(key)
        wait_revision = _query_int(request, "wait_revision", 0)
        deleted: Change | None = None
        if wait_revision is not None:
            wait_s = _query_seconds(request, "wait_s", WAIT_S_DEFAULT, WAIT_S_MAX)
            core = self.node.core
            linearizable = _consistency(request) == "linearizable"
            if linearizable and core is not None and core.role != Role.LEADER:
                # The leader waits (and then answers linearizably): waiting here first and
                # then again there would take twice as long.
                raise NotLeader(core.leader_id)
            deleted = await self._wait_for_change(key, wait_revision, wait_s)
        await self._read_barrier(request)
        found = self.node.state_machine.get(key)
        if found is None:
            if deleted is not None:
                raise ApiError(404, "not_found", f"no key {key!r}", revision=deleted.revision)
            raise ApiError(404, "not_found", f"no key {key!r}")
        value, revision = found
        return web.Response(
            body=value,
            content_type="application/octet-stream",
            headers={"ETag": f'"{revision}"'},
        )

    async def list(self, request: web.BaseRequest) -> web.Response:
        prefix = request.query.get("prefix", "")
        start_after = request.query.get("start_after")
        limit_text = request.query.get("limit", str(LIST_LIMIT_DEFAULT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= LIST_LIMIT_MAX:
            raise ApiError(400, "bad_request", f"limit must be 1..{LIST_LIMIT_MAX}")
        keys_only = _query_bool(request, "keys_only")
        count_only = _query_bool(request, "count_only")
        if count_only and (keys_only or "limit" in request.query or start_after is not None):
            raise ApiError(
                400,
                "bad_request",
                "count_only counts every key under the prefix: it takes no keys_only, limit "
                "or start_after",
            )
        await self._read_barrier(request)
        machine = self.node.state_machine
        if count_only:
            try:
                count = machine.count(prefix)
            except CommandError as error:
                raise _command_error(error) from None
            return _json(200, {"count": count, "revision": machine.applied_index})
        try:
            items, continuation = machine.list(prefix, int(limit_text), start_after=start_after)
        except CommandError as error:
            raise _command_error(error) from None
        body = {
            "items": [
                {"key": k, "revision": r}
                if keys_only
                else {"key": k, "revision": r, "value_b64": _b64(v)}
                for k, v, r in items
            ],
            "continuation": continuation,
            # Listed at this revision: a watch from revision + 1 misses nothing.
            "revision": machine.applied_index,
        }
        return _json(200, body)

    async def status(self, request: web.BaseRequest) -> web.Response:
        # Which release answers: during a rolling upgrade the nodes differ.
        return _json(200, {**self.node.status(), "version": __version__})

    # --- watch (kvraft.watch) -----------------------------------------------------------

    def _watcher(
        self, request: web.BaseRequest, start_revision: int | None, wake: asyncio.Event
    ) -> Watcher:
        key = request.query.get("key")
        prefix = request.query.get("prefix", "")
        if key is not None:
            self._check_key(key)
        elif len(prefix.encode("utf-8", "surrogatepass")) > self.key_bytes_max:
            raise ApiError(413, "key_too_large", f"prefix over {self.key_bytes_max} bytes")
        try:
            return self.node.watch_hub.watch(
                prefix=prefix, key=key, start_revision=start_revision, on_change=wake.set
            )
        except CompactedError as error:
            raise ApiError(
                410, "compacted", str(error), compact_revision=error.compact_revision
            ) from None
        except TooManyWatchersError as error:
            raise ApiError(503, "too_many_watchers", str(error)) from None

    async def watch(self, request: web.BaseRequest) -> web.StreamResponse:
        """`GET /v1/watch`: the committed changes under a prefix (or of a key), in revision
        order, as NDJSON or Server-Sent Events, served from this node's applied state."""
        start_revision = _query_int(request, "start_revision", 1)
        event_stream = "text/event-stream" in request.headers.get("Accept", "")
        last_event_id = request.headers.get("Last-Event-ID", "")
        if event_stream and last_event_id.isascii() and last_event_id.isdecimal():
            # A browser's EventSource resumes by itself after the last event it received,
            # always with the same URL: the later of the two wins.
            start_revision = max(start_revision or 0, int(last_event_id) + 1)
        progress_s = _query_seconds(
            request, "progress_s", WATCH_PROGRESS_S_DEFAULT, WATCH_PROGRESS_S_MAX
        )
        wake = asyncio.Event()
        watcher = self._watcher(request, start_revision, wake)
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream" if event_stream else "application/x-ndjson",
                    "Cache-Control": "no-cache",
                    REVISION_HEADER: str(self.node.state_machine.applied_index),
                    "X-Kvraft-Node-Id": str(self.node.id),
                }
            )
            await response.prepare(request)
            await self._stream(request, response, watcher, wake, progress_s, event_stream)
        finally:
            self.node.watch_hub.cancel(watcher)
        return response

    async def _stream(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        watcher: Watcher,
        wake: asyncio.Event,
        progress_s: float,
        event_stream: bool,
    ) -> None:
        def encode(event: dict[str, Any]) -> bytes:
            return frame(json.dumps(event, separators=(",", ":")).encode(), event["revision"])

        def frame(line: bytes, revision: int) -> bytes:
            if event_stream:
                return b"id: %d\ndata: %s\n\n" % (revision, line)
            return line + b"\n"

        loop = asyncio.get_running_loop()
        progress_at = loop.time() + progress_s
        transport = request.transport
        while not self.node.stopping and transport is not None and not transport.is_closing():
            wake.clear()  # before taking: a change recorded after this wakes the next wait
            taken = watcher.take()
            if isinstance(taken, Lagged):
                await response.write(encode({"type": "lagged", "revision": taken.revision}))
                return
            if taken:
                # One write per batch of whole revisions: a revision is never split.
                await response.write(b"".join(frame(_change_line(c), c.revision) for c in taken))
                continue
            if progress_s and loop.time() >= progress_at:
                progress = {"type": "progress", "revision": watcher.progress_revision}
                await response.write(encode(progress))
                progress_at = loop.time() + progress_s
            # A client that went away is noticed at the next write: look at least this often.
            timeout_s = WATCH_IDLE_CHECK_S
            if progress_s:
                timeout_s = min(timeout_s, max(0.0, progress_at - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout_s)

    async def _wait_for_change(self, key: str, wait_revision: int, wait_s: float) -> Change | None:
        """Wait until `key` changes at a revision above `wait_revision` (or `wait_s` passes);
        the change if it was a deletion (its revision goes into the 404)."""
        found = self.node.state_machine.get(key)
        if found is not None and found[1] > wait_revision:
            return None
        hub = self.node.watch_hub
        start_revision = wait_revision + 1
        if found is not None and start_revision <= hub.compact_revision:
            # Its revision proves it unchanged since `wait_revision`, history or not.
            start_revision = hub.compact_revision + 1
        wake = asyncio.Event()
        try:
            watcher = hub.watch(key=key, start_revision=start_revision, on_change=wake.set)
        except CompactedError:
            return None  # absent, and whether it was deleted since is not known: answer now
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + wait_s
        try:
            while True:
                wake.clear()
                taken = watcher.take()
                if isinstance(taken, Lagged):
                    return None
                if taken:
                    last = taken[-1]
                    return last if last.kind == "delete" else None
                remaining_s = deadline_s - loop.time()
                if remaining_s <= 0 or self.node.stopping:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining_s)
        finally:
            self.node.watch_hub.cancel(watcher)

    # --- membership ---------------------------------------------------------------------

    async def _membership(self, call: Awaitable[dict[str, Any]]) -> web.Response:
        """Run a membership call and turn its failures into answers (NotLeader passes up to
        the middleware, which forwards the request to the leader)."""
        try:
            return _json(200, await call)
        except UnknownMemberError as error:
            raise ApiError(404, "unknown_member", str(error)) from None
        except MembershipConflictError as error:
            raise ApiError(409, "member_conflict", str(error)) from None
        except MembershipError as error:
            raise ApiError(400, "bad_request", str(error)) from None
        except ChangeInProgress as error:
            raise ApiError(409, "change_in_progress", str(error)) from None
        except NotLeader:
            raise
        except NotCaughtUp as error:
            raise ApiError(503, "not_caught_up", str(error)) from None
        except Unavailable as error:
            raise ApiError(503, "unavailable", str(error)) from None
        except OutcomeUnknown as error:
            raise ApiError(504, "outcome_unknown", str(error)) from None

    async def members(self, request: web.BaseRequest) -> web.Response:
        if self.node.role_name() != "leader":
            # Only the leader knows how far each member has replicated.
            raise NotLeader(self.node.core.leader_id if self.node.core else 0)
        return _json(200, self.node.reconfiguration.members_view())

    async def add_member(self, request: web.BaseRequest) -> web.Response:
        try:
            add = parse_add_request(await _read_json(request))
        except MembershipError as error:
            raise ApiError(400, "bad_request", str(error)) from None
        change = self.node.reconfiguration.add_member(add.member, voter=add.voter)
        return await self._membership(change)

    async def remove_member(self, request: web.BaseRequest) -> web.Response:
        text = _path_tail(request, MEMBER_PATH_PREFIX)
        if not text.isdigit() or len(text) > 10:
            raise ApiError(400, "bad_request", "the node id must be a positive integer")
        try:
            node_id = parse_node_id(int(text))
        except MembershipError as error:
            raise ApiError(400, "bad_request", str(error)) from None
        return await self._membership(self.node.reconfiguration.remove_member(node_id))

    async def transfer_leadership(self, request: web.BaseRequest) -> web.Response:
        try:
            target = parse_transfer_request(await _read_json(request))
        except MembershipError as error:
            raise ApiError(400, "bad_request", str(error)) from None
        previous = self.node.id

        async def transfer() -> dict[str, Any]:
            leader_id = await self.node.reconfiguration.transfer_leadership(target)
            return {"leader_id": leader_id, "previous_leader_id": previous}

        return await self._membership(transfer())

    async def backup(self, request: web.BaseRequest) -> web.StreamResponse:
        # Streamed by the leader (kvraft.backup_http); a follower redirects instead of
        # forwarding, which would hold the whole backup in its memory.
        try:
            await self.node.read_barrier(self.timeout_s)
        except NotLeader as error:
            redirect = leader_redirect(self.node, error.leader_id)
            if redirect is None:
                raise ApiError(503, "unavailable", "no leader is known right now") from None
            return redirect
        except Unavailable as error:
            raise _unavailable(error) from None
        return await stream_backup(self.node, request)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return _json(200, {"ok": True})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        if self.node.is_ready():
            return _json(200, {"ready": True})
        raise ApiError(503, "not_ready", "no known leader, or not caught up with the commit index")


def _node_collector(node: RaftNode) -> Any:
    class NodeCollector:
        def collect(self) -> Any:
            core = node.core
            if core is None:
                return
            counters = {
                # CounterMetricFamily appends the `_total` that Prometheus wants of a counter.
                "kvraft_leader_changes": ("Leader changes seen", node.leader_changes),
                "kvraft_writes_shed": (
                    "Writes refused with 503 overloaded since start (admission by bytes)",
                    node.write_admission.refused_total,
                ),
            }
            for name, (help_text, value) in counters.items():
                counter = CounterMetricFamily(name, help_text)
                counter.add_metric([], value)
                yield counter
            gauges = {
                "kvraft_term": ("Current Raft term", core.term),
                "kvraft_commit_index": ("Highest committed log index", core.log.commit_index),
                "kvraft_applied_index": ("Last applied log index", core.log.applied_index),
                "kvraft_last_log_index": ("Last log index", core.log.last_index()),
                "kvraft_is_leader": (
                    "1 if this node is the leader",
                    int(node.role_name() == "leader"),
                ),
                "kvraft_keys": ("Keys in the state machine", len(node.state_machine)),
                "kvraft_writes_pending_bytes": (
                    "Bytes of client writes held (admitted, not yet answered)",
                    node.write_admission.bytes_held,
                ),
            }
            for name, (help_text, value) in gauges.items():
                family = GaugeMetricFamily(name, help_text)
                family.add_metric([], value)
                yield family
            if node.transport is not None:
                # What each peer lane holds and has moved: where a slow or cut-off peer shows.
                peers = node.transport.peer_stats()
                for stat, (name, kind, help_text) in PEER_METRICS.items():
                    family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    peer_family = family_type(name, help_text, labels=["peer"])
                    for peer_id, stats in sorted(peers.items()):
                        peer_family.add_metric([str(peer_id)], stats.get(stat, 0))
                    yield peer_family
                # The accepting side: refused and unauthenticated peers (issue #20). Only a
                # TCP transport has one; the simulator's in-memory transport has none.
                server_stats = getattr(node.transport, "server_stats", None)
                if server_stats is not None:
                    accepting = server_stats()
                    for stat, (name, kind, help_text) in TRANSPORT_METRICS.items():
                        family_type = (
                            CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                        )
                        transport_family = family_type(name, help_text)
                        transport_family.add_metric([], accepting.get(stat, 0))
                        yield transport_family

    return NodeCollector()


PEER_METRICS = {
    "queued_messages": (
        "kvraft_peer_queued_messages",
        "gauge",
        "Messages waiting to be written to the peer (normal lane)",
    ),
    "sent_messages": (
        "kvraft_peer_sent_messages",
        "counter",
        "Messages written to the peer (normal lane)",
    ),
    "dropped_messages": (
        "kvraft_peer_dropped_messages",
        "counter",
        "Messages to the peer dropped: queue full, unreachable, not drained",
    ),
    "connected": (
        "kvraft_peer_connected",
        "gauge",
        "1 if the normal lane to the peer is connected",
    ),
}
"""The per-peer transport statistics `/metrics` exports, labelled by peer id: peer_stats()
key -> (metric name, type, help); a counter's exported name gains `_total`."""

TRANSPORT_METRICS = {
    "peer_auth_failures": (
        "kvraft_peer_auth_failures",
        "counter",
        "Peer connections refused for failing authentication, either way: the peer secret,"
        " or with peer TLS the certificate (another CA, none, another node's)",
    ),
    "refused_handshakes": (
        "kvraft_peer_refused_handshakes",
        "counter",
        "Inbound peer handshakes refused (authentication, cluster, node id, version)",
    ),
    "peer_auth_enabled": (
        "kvraft_peer_auth_enabled",
        "gauge",
        "1 if peers must prove the cluster's secret, 0 if this node runs unauthenticated",
    ),
    "peer_tls_enabled": (
        "kvraft_peer_tls_enabled",
        "gauge",
        "1 if peers must connect with mutual TLS and a certificate naming their node id",
    ),
    "pieces_buffered_bytes": (
        "kvraft_peer_pieces_buffered_bytes",
        "gauge",
        "Bytes of unfinished pieced messages held across inbound peer connections",
    ),
}
"""The transport's accepting-side statistics `/metrics` exports: server_stats() key ->
(metric name, type, help); a counter's exported name gains `_total`."""


def _source_address(host: str) -> tuple[str, int] | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a DNS name (a compose service): let the kernel choose
    return (host, 0)


class _Route(NamedTuple):
    name: str
    """The path pattern: what the latency metric names the route by."""
    handlers: dict[str, Handler]
    """The route's handler for each method it answers."""
    parameters: dict[str, frozenset[str]] = {}
    """The query parameters each method understands (none when the method is not named)."""
    headers: dict[str, frozenset[str]] = {}
    """The `MEANINGFUL_HEADERS` each method understands (none when not named)."""


def _refuse_unknown(request: web.BaseRequest, route: _Route) -> None:
    """400 `unknown_parameter` for a query parameter or meaningful header the route's method
    does not understand, and 400 for a parameter given twice (which one would count?)."""
    method = "GET" if request.method == "HEAD" else request.method
    query = request.query
    if query:
        known = route.parameters.get(method, frozenset())
        for name in query:
            if name not in known:
                raise _unknown(
                    request, route, f"query parameter {name!r}", name, sorted(known), "parameters"
                )
            if len(query.getall(name)) > 1:
                raise ApiError(400, "bad_request", f"query parameter {name!r} is given twice")
    known_headers = route.headers.get(method, frozenset())
    for header in request.headers:
        lower = header.lower()
        if (lower in MEANINGFUL_HEADERS or lower.startswith("x-consul-")) and (
            lower not in known_headers
            and not (method == "GET" and lower in CACHE_REVALIDATION_HEADERS)
        ):
            raise _unknown(
                request, route, f"header {header!r}", lower, sorted(known_headers), "headers"
            )


def _unknown(
    request: web.BaseRequest,
    route: _Route,
    what: str,
    name: str,
    known: list[str],
    kind: str,
) -> ApiError:
    message = (
        f"{request.method} {route.name} does not understand the {what}, and kvraft does not "
        f"guess: the request was not applied. It understands "
        + (", ".join(repr(k) for k in known) if known else f"no {kind}")
        + "."
    )
    hint = CONSUL_EQUIVALENTS.get(name.lower())
    if hint is not None:
        message += f" {hint}."
    return ApiError(400, "unknown_parameter", message, parameter=name)


# --- authentication and permissions (kvraft.auth) -------------------------------------------

AUTH_PATH_PREFIX = "/v1/auth/"
AUTH_USER_PATH_PREFIX = "/v1/auth/users/"
AUTH_ROLE_PATH_PREFIX = "/v1/auth/roles/"
AUTH_TOKEN_PATH = "/v1/auth/token"

USER_KEY = web.RequestKey("kvraft_user", str)
"""The user a request authenticated as (set only while auth is enabled)."""


class Need(NamedTuple):
    """What a request needs while auth is enabled: `kind` is "open" (nothing), "user" (any
    authenticated user), "writer" (a user with some readwrite permission), "admin", "key"
    (`write` or read access to the key `target`) or "range" (to every key under `target`)."""

    kind: str
    target: str = ""
    write: bool = False


OPEN = Need("open")
ANY_USER = Need("user")
ADMIN = Need("admin")
WRITER = Need("writer")


def _need(route_name: str, request: web.BaseRequest, metrics_require_auth: bool) -> Need:
    """The rule of each route (README "Authentication")."""
    method = request.method
    if method == "OPTIONS":
        # A browser's CORS preflight (the dashboard's, before it sends its token to another
        # member's /v1/events): it never carries credentials, and it reads and changes nothing.
        return OPEN
    write = method in WRITE_METHODS
    if route_name == KV_PATH_PREFIX + "{key}":
        return Need("key", _key(request), write)
    if route_name == "/v1/kv":
        return Need("range", request.query.get("prefix", ""), write)
    if route_name == "/v1/watch":
        key = request.query.get("key")
        if key is not None:
            return Need("key", key)
        return Need("range", request.query.get("prefix", ""))
    if route_name == LOCK_PATH_PREFIX + "{name}":
        return Need("key", _path_tail(request, LOCK_PATH_PREFIX), write)
    if route_name in (LEASES_PATH, LEASE_PATH_PREFIX + "{id}") or route_name.endswith(
        LEASE_KEEPALIVE_SUFFIX
    ):
        return WRITER
    if route_name in (
        "/healthz",
        "/readyz",
        "/v1/status",
        UI_PATH,
        AUTH_TOKEN_PATH,
        "/v1/auth/status",
    ):
        # /v1/status stays open like the health checks: it holds no key, value or secret
        # (roles, terms, indexes, member addresses), and what watches a cluster from outside
        # reads it (`kvraft cluster up`'s narration, `kvraft status`, load balancers).
        return OPEN
    if route_name == "/metrics":
        return ANY_USER if metrics_require_auth else OPEN
    if route_name.startswith(AUTH_PATH_PREFIX) or route_name in (
        "/v1/leader/transfer",
        BACKUP_PATH,
        MEMBER_PATH_PREFIX + "{node_id}",
    ):
        return ADMIN
    if route_name == "/v1/members":
        return ADMIN if write else ANY_USER
    # TXN_PATH (its operations are checked once parsed), /v1/locks (filtered), /v1/events:
    # any user.
    return ANY_USER


def _unauthenticated(message: str) -> ApiError:
    return ApiError(
        401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer realm="kvraft"'}
    )


def _denied(user: str, what: str) -> ApiError:
    return ApiError(403, "permission_denied", f"user {user!r} lacks {what}", user=user)


class _Authorizer:
    """Checks each request against the applied auth state of this node (every node checks
    what it receives; a follower forwards the Authorization header and the leader checks
    again), and serves `/v1/auth/*`."""

    def __init__(self, routes: _Routes, *, metrics_require_auth: bool = False) -> None:
        self.routes = routes
        self.node = routes.node
        self.metrics_require_auth = metrics_require_auth
        self.limiter = LoginLimiter()
        self.token_ttl_s = TOKEN_TTL_S_DEFAULT
        self.hashing = asyncio.Semaphore(PASSWORD_HASHES_CONCURRENT_MAX)

    @property
    def state(self) -> AuthState:
        return self.node.state_machine.auth

    @property
    def enabled(self) -> bool:
        """Whether requests are checked at all (`check` passes every one while not)."""
        return self.state.enabled

    def user_of(self, request: web.BaseRequest) -> str | None:
        """The authenticated user, or None while auth is off."""
        return request.get(USER_KEY)

    async def authenticate(self, request: web.BaseRequest, auth: AuthState) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise _unauthenticated(
                "this cluster requires authentication: send 'Authorization: Bearer <token>' "
                f"(get one from POST {AUTH_TOKEN_PATH})"
            )
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("only 'Authorization: Bearer <token>' is understood")
        try:
            user, generation = verify_token(
                auth.signing_key, token.strip(), int(time.time() * 1000)
            )
        except TokenError as error:
            raise _unauthenticated(str(error)) from None
        if auth.generation_of(user) != generation and generation > self._applied_index():
            # Signed by a node that has applied more of the log (the user is newer than what
            # this node has applied: a generation is a log index): catch up, then judge.
            await self.catch_up(generation)
            auth = self.state
        if auth.generation_of(user) != generation:
            raise _unauthenticated(
                "the token is no longer valid: its user was deleted or its password changed"
            )
        return user

    def _applied_index(self) -> int:
        return self.node.state_machine.applied_index

    async def catch_up(self, index: int) -> None:
        """Wait (at most the request timeout) until this node has applied `index`."""
        deadline_s = asyncio.get_running_loop().time() + self.routes.timeout_s
        await self.node.wait_until(lambda: self._applied_index() >= index, deadline_s)

    async def check(self, request: web.BaseRequest, route_name: str) -> None:
        """401 or 403 (`ApiError`) unless the request may go on; nothing while auth is off."""
        auth = self.state
        if not auth.enabled:
            return
        need = _need(route_name, request, self.metrics_require_auth)
        if need.kind == "open":
            return
        user = await self.authenticate(request, auth)
        request[USER_KEY] = user
        if need.kind == "admin":
            if not auth.is_admin(user):
                raise _denied(user, "the admin permission")
        elif need.kind == "writer":
            if not auth.may_write_somewhere(user):
                raise _denied(user, "a readwrite permission on any prefix (leases need one)")
        elif need.kind == "key":
            self.check_key(user, need.target, write=need.write)
        elif need.kind == "range":
            self.check_range(user, need.target, write=need.write)

    def check_key(self, user: str, key: str, *, write: bool) -> None:
        if not self.state.allows_key(user, key, write=write):
            access = "readwrite" if write else "read"
            raise _denied(user, f"{access} permission on key {key!r}")

    def check_range(self, user: str, prefix: str, *, write: bool) -> None:
        if not self.state.allows_range(user, prefix, write=write):
            access = "readwrite" if write else "read"
            raise _denied(
                user,
                f"{access} permission on every key under prefix {prefix!r} (one permission "
                "whose prefix starts the range; a narrower prefix is allowed)",
            )

    def check_txn(
        self,
        request: web.BaseRequest,
        compare: list[Compare],
        branches: tuple[list[TxnOperation], ...],
    ) -> None:
        """Every key a transaction compares, reads or writes, in both branches: 403 before
        anything is proposed."""
        user = self.user_of(request)
        if user is None:
            return
        for one in compare:
            self.check_key(user, one.key, write=False)
        for branch in branches:
            for operation in branch:
                if isinstance(operation, TxnPut | TxnDelete):
                    self.check_key(user, operation.key, write=True)
                elif isinstance(operation, TxnGet):
                    self.check_key(user, operation.key, write=False)
                elif isinstance(operation, TxnDeletePrefix):
                    self.check_range(user, operation.prefix, write=True)
                elif isinstance(operation, TxnList):
                    self.check_range(user, operation.prefix, write=False)

    def readable(self, request: web.BaseRequest, key: str) -> bool:
        user = self.user_of(request)
        return user is None or self.state.allows_key(user, key, write=False)

    # --- /v1/auth/* ---------------------------------------------------------------------

    async def token(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/auth/token {"user", "password"}` -> `{"token", "expires_s"}`, from this
        node's applied state (no leader contact: the login limits count per node)."""
        body = _fields(
            await _read_json(request), frozenset(("user", "password")), "body", "bad_request"
        )
        user = _text(body, "user", "body", "bad_request")
        password = _text(body, "password", "body", "bad_request")
        if len(password) > PASSWORD_BYTES_MAX or len(user) > AUTH_NAME_BYTES_MAX:
            raise ApiError(400, "bad_request", "the user name or password is too long")
        auth = self.state
        if not auth.enabled:
            raise ApiError(
                409,
                "auth_disabled",
                "auth is not enabled: every request is allowed without a token",
            )
        address = request.remote or ""
        loop = asyncio.get_running_loop()
        retry_after_s = self.limiter.retry_after_s(user, address, loop.time())
        if retry_after_s > 0:
            raise ApiError(
                429,
                "too_many_attempts",
                "too many failed logins for this user or from this address; retry later",
                headers={"Retry-After": str(math.ceil(retry_after_s))},
            )
        found = auth.users.get(user)
        signing_key = auth.signing_key
        async with self.hashing:
            verified = await asyncio.to_thread(
                verify_password, None if found is None else found.password, password
            )
        if not verified or found is None:
            self.limiter.record_failure(user, address, loop.time())
            # The same answer for an unknown user and a wrong password.
            raise _unauthenticated("wrong user name or password")
        expires_ms = int(time.time() * 1000) + self.token_ttl_s * 1000
        token = sign_token(signing_key, user, found.generation, expires_ms)
        return _json(200, {"token": token, "expires_s": self.token_ttl_s})

    async def status(self, request: web.BaseRequest) -> web.Response:
        return _json(200, {"enabled": self.state.enabled})

    async def list_users(self, request: web.BaseRequest) -> web.Response:
        await self.routes._lease_read_barrier()
        return _json(200, {"users": self.state.users_json()})

    async def list_roles(self, request: web.BaseRequest) -> web.Response:
        await self.routes._lease_read_barrier()
        return _json(200, {"roles": self.state.roles_json()})

    def _leader_only(self) -> None:
        # Before hashing a password: a follower would hash it for nothing, then forward.
        core = self.node.core
        if core is not None and core.role != Role.LEADER:
            raise NotLeader(core.leader_id)

    async def _propose_auth(self, build: Callable[[], bytes]) -> ApplyResult:
        try:
            command = build()
        except CommandError as error:
            raise _command_error(error) from None
        return await self.routes._propose(command)

    async def put_user(self, request: web.BaseRequest) -> web.Response:
        """`PUT /v1/auth/users/{name} {"password", "roles"}`: create (a password needed) or
        change; a field left out keeps its value."""
        name = _path_tail(request, AUTH_USER_PATH_PREFIX)
        body = _fields(
            await _read_json(request) or {}, frozenset(("password", "roles")), "body", "bad_auth"
        )
        password = body.get("password")
        if password is not None and (
            not isinstance(password, str) or not password or len(password) > PASSWORD_BYTES_MAX
        ):
            raise ApiError(
                400, "bad_auth", f"password must be a non-empty string of <= {PASSWORD_BYTES_MAX}"
            )
        existing = self.state.users.get(name)
        roles = body.get("roles", list(existing.roles) if existing is not None else [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ApiError(400, "bad_auth", "roles must be a list of role names")
        self._leader_only()
        hashed = None
        if password is not None:
            salt = secrets.token_bytes(SALT_BYTES)
            async with self.hashing:
                hashed = await asyncio.to_thread(hash_password, password, salt)
        result = await self._propose_auth(lambda: encode_auth_user_put(name, hashed, roles))
        return _json(200, {"name": name, "roles": sorted(roles), "revision": result.revision})

    async def delete_user(self, request: web.BaseRequest) -> web.Response:
        name = _path_tail(request, AUTH_USER_PATH_PREFIX)
        result = await self._propose_auth(lambda: encode_auth_user_delete(name))
        return _json(200, {"name": name, "deleted": True, "revision": result.revision})

    async def put_role(self, request: web.BaseRequest) -> web.Response:
        """`PUT /v1/auth/roles/{name} {"permissions": [{"prefix", "access"}], "admin"}`:
        create or replace."""
        name = _path_tail(request, AUTH_ROLE_PATH_PREFIX)
        body = _fields(
            await _read_json(request) or {},
            frozenset(("permissions", "admin")),
            "body",
            "bad_auth",
        )
        admin = body.get("admin", False)
        raw = body.get("permissions", [])
        if type(admin) is not bool or not isinstance(raw, list):
            raise ApiError(400, "bad_auth", "admin must be a boolean and permissions a list")
        permissions = []
        for position, one in enumerate(raw):
            fields = _fields(
                one, frozenset(("prefix", "access")), f"permissions[{position}]", "bad_auth"
            )
            permissions.append(
                Permission(
                    _text(fields, "prefix", f"permissions[{position}]", "bad_auth"),
                    _text(fields, "access", f"permissions[{position}]", "bad_auth"),
                )
            )
        result = await self._propose_auth(lambda: encode_auth_role_put(name, admin, permissions))
        return _json(
            200,
            {
                "name": name,
                "admin": admin,
                "permissions": [p._asdict() for p in permissions],
                "revision": result.revision,
            },
        )

    async def delete_role(self, request: web.BaseRequest) -> web.Response:
        name = _path_tail(request, AUTH_ROLE_PATH_PREFIX)
        result = await self._propose_auth(lambda: encode_auth_role_delete(name))
        return _json(200, {"name": name, "deleted": True, "revision": result.revision})

    async def enable(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/auth/enable`: needs user root with an admin role. The signing key is
        drawn here and travels in the entry (never shown anywhere)."""
        if not self.state.enabled and not self.state.is_admin(ROOT_USER):
            raise ApiError(
                409,
                str(ErrorCode.ROOT_REQUIRED),
                "enabling auth needs a user 'root' with a role that has admin: "
                'PUT /v1/auth/roles/NAME {"admin": true}, then '
                'PUT /v1/auth/users/root {"password": ..., "roles": [NAME]}',
            )
        key = secrets.token_bytes(SIGNING_KEY_BYTES)
        result = await self._propose_auth(lambda: encode_auth_enable(True, key))
        return _json(200, {"enabled": True, "revision": result.revision})

    async def disable(self, request: web.BaseRequest) -> web.Response:
        result = await self._propose_auth(lambda: encode_auth_enable(False))
        return _json(200, {"enabled": False, "revision": result.revision})


class HttpApi:
    """The HTTP API of one node: `server` goes to a `web.ServerRunner`, `close` after it.

    It is served by aiohttp's low-level `web.Server`, and the routes are matched here: two
    path prefixes and a table of exact paths. A `web.Application` would match them with its
    router, run a middleware chain and build match-info objects per request; on this machine
    that cost about 75 µs per request (an empty handler answered at p50 0.29 ms instead of
    0.22 ms, one connection) and about 14 % of the throughput at 16 connections, and every
    put pays it on the leader's critical path (BENCHMARKS.md).
    """

    def __init__(
        self,
        node: RaftNode,
        *,
        http_connections_max: int | None = None,
        metrics_require_auth: bool | None = None,
    ) -> None:
        """`http_connections_max`: client connections allowed, when less than the config's
        (`kvraft.http_guard.http_connections_allowed` under the descriptor limit);
        `metrics_require_auth`: `/metrics` wants a token while auth is enabled (default: the
        config's ``[auth] metrics_require_auth``)."""
        self.node = node
        registry = CollectorRegistry()
        registry.register(_node_collector(node))
        # process_open_fds and process_max_fds: how close the node is to running out. A
        # registry of our own starts empty: the process, platform and garbage-collector
        # collectors that prometheus_client's default registry has are added back.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.loop_metrics = loop_metrics = LoopMetrics()
        registry.register(loop_metrics)
        loop_metrics.counter(
            "kvraft_descriptors_exhausted",
            "Failures for want of a file descriptor (EMFILE, ENFILE), by where",
            ("where",),
        )
        loop_metrics.histogram(
            "kvraft_request_seconds",
            "HTTP request latency, by method, route and answer status (_count: the requests)",
            ("method", "route", "status"),
        )
        loop_metrics.histogram("kvraft_fsync_seconds", "Durable log write latency")
        node.fsync_observer = loop_metrics.histogram_child("kvraft_fsync_seconds").observe
        # Each request's latency histogram by (method, route, status), looked up once per
        # series: the registry's lookup (and the status as text) were most of the 1.8 µs the
        # histogram cost each get (BENCHMARKS.md, "The request's own frame").
        self._request_latency: dict[tuple[str, str, int], LoopHistogram] = {}
        self.routes = routes = _Routes(node, loop_metrics)
        if metrics_require_auth is None:
            metrics_require_auth = node.config.auth.metrics_require_auth
        self.authorizer = authorizer = _Authorizer(
            routes, metrics_require_auth=metrics_require_auth
        )
        routes.authorizer = authorizer
        self.admission = node.write_admission

        async def metrics(request: web.BaseRequest) -> web.Response:
            # The process-wide counts (`kvraft.descriptors`), copied in when asked for.
            for where, count in EXHAUSTION.counts.items():
                loop_metrics.counter_child("kvraft_descriptors_exhausted", where).value = count
            response = web.Response(body=generate_latest(registry))
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return response

        def member_addresses() -> list[str]:
            return [address.http_address for address in node.peer_addresses.values()]

        self._member_addresses = member_addresses

        async def events(request: web.BaseRequest) -> web.StreamResponse:
            return await serve_events(
                request, node.events, cors_headers(request, member_addresses())
            )

        async def events_preflight(request: web.BaseRequest) -> web.Response:
            return web.Response(status=204, headers=preflight_headers(request, member_addresses()))

        def read_only(handler: Handler) -> dict[str, Handler]:
            return {"GET": handler, "HEAD": handler}

        write_headers = frozenset(
            ("if-match", "if-none-match", "idempotency-key", "x-kvraft-fence")
        )
        self._key_route = _Route(
            KV_PATH_PREFIX + "{key}",
            {"PUT": routes.put, "DELETE": routes.delete, **read_only(routes.get)},
            parameters={
                "GET": frozenset(("consistency", "wait_revision", "wait_s")),
                "PUT": frozenset(("prev", "lease")),
                "DELETE": frozenset(("prev",)),
            },
            headers={"PUT": write_headers, "DELETE": write_headers},
        )
        # No query parameters on the lease routes: none is named, so any is refused.
        self._lease_route = _Route(
            LEASE_PATH_PREFIX + "{id}",
            {"GET": routes.get_lease, "DELETE": routes.revoke_lease},
        )
        self._lease_keepalive_route = _Route(
            LEASE_PATH_PREFIX + "{id}" + LEASE_KEEPALIVE_SUFFIX, {"POST": routes.keepalive_lease}
        )
        self._member_route = _Route(
            MEMBER_PATH_PREFIX + "{node_id}", {"DELETE": routes.remove_member}
        )
        self._auth_user_route = _Route(
            AUTH_USER_PATH_PREFIX + "{name}",
            {"PUT": authorizer.put_user, "DELETE": authorizer.delete_user},
        )
        self._auth_role_route = _Route(
            AUTH_ROLE_PATH_PREFIX + "{name}",
            {"PUT": authorizer.put_role, "DELETE": authorizer.delete_role},
        )
        self._lock_route = _Route(
            LOCK_PATH_PREFIX + "{name}",
            {
                "POST": routes.acquire_lock,
                "DELETE": routes.release_lock,
                **read_only(routes.get_lock),
            },
            parameters={"GET": frozenset(("consistency",))},
        )
        self._exact_routes = {
            route.name: route
            for route in (
                _Route(
                    "/v1/kv",
                    {**read_only(routes.list), "DELETE": routes.delete_prefix},
                    parameters={
                        "GET": frozenset(
                            (
                                "prefix",
                                "start_after",
                                "limit",
                                "consistency",
                                "keys_only",
                                "count_only",
                            )
                        ),
                        "DELETE": frozenset(("prefix",)),
                    },
                    headers={"DELETE": frozenset(("idempotency-key", "x-kvraft-fence"))},
                ),
                _Route(
                    TXN_PATH,
                    {"POST": routes.txn},
                    headers={"POST": frozenset(("idempotency-key", "x-kvraft-fence"))},
                ),
                _Route(
                    LOCKS_PATH,
                    read_only(routes.list_locks),
                    parameters={"GET": frozenset(("consistency",))},
                ),
                _Route(LEASES_PATH, {"GET": routes.list_leases, "POST": routes.grant_lease}),
                _Route("/v1/status", read_only(with_member_cors(member_addresses, routes.status))),
                _Route(
                    "/v1/watch",
                    {"GET": routes.watch},
                    parameters={
                        "GET": frozenset(("key", "prefix", "start_revision", "progress_s"))
                    },
                ),
                _Route("/v1/members", {**read_only(routes.members), "POST": routes.add_member}),
                _Route("/v1/leader/transfer", {"POST": routes.transfer_leadership}),
                _Route(BACKUP_PATH, {"GET": routes.backup}),
                _Route("/healthz", read_only(routes.healthz)),
                _Route("/readyz", read_only(routes.readyz)),
                _Route("/metrics", read_only(metrics)),
                # The event stream and the dashboard (`kvraft.events`, `kvraft.ui`); a
                # member's dashboard page reads status (above) and events across origins.
                # OPTIONS: the preflight of a dashboard that sends its token (`kvraft.ui`).
                _Route(
                    EVENTS_PATH,
                    {"GET": events, "OPTIONS": events_preflight},
                    parameters={
                        "GET": EVENTS_QUERY_PARAMETERS,
                        "OPTIONS": EVENTS_QUERY_PARAMETERS,
                    },
                ),
                _Route(UI_PATH, read_only(serve_ui)),
                _Route(AUTH_TOKEN_PATH, {"POST": authorizer.token}),
                _Route("/v1/auth/status", read_only(authorizer.status)),
                _Route("/v1/auth/users", read_only(authorizer.list_users)),
                _Route("/v1/auth/roles", read_only(authorizer.list_roles)),
                _Route("/v1/auth/enable", {"POST": authorizer.enable}),
                _Route("/v1/auth/disable", {"POST": authorizer.disable}),
            )
        }
        # Forwarded requests leave from this node's own address (when it has one), so a
        # partition between two node addresses cuts forwarding too, as it would between
        # machines.
        connector = aiohttp.TCPConnector(
            limit=FORWARD_CONNECTIONS_MAX,
            local_addr=_source_address(node.spec.http_host),
            ssl=node.tls.https_client or True,  # HTTPS to the leader when [tls] is on
        )
        self._session = aiohttp.ClientSession(connector=connector)
        # aiohttp silently re-sends a request once when a kept-alive connection drops after
        # sending (aio-libs/aiohttp#10790): a forwarded PUT could apply twice. There is no
        # public switch; this private one is what aiohttp's own test client sets.
        self._session._retry_connection = False
        limits = node.config.limits
        connections_max = limits.http_connections_max
        if http_connections_max is not None:
            connections_max = min(connections_max, http_connections_max)
        self.server = GuardedServer(
            self._handle,
            request_header_timeout_s=limits.request_header_timeout_ms / 1000,
            request_body_timeout_s=limits.request_body_timeout_ms / 1000,
            connections_max=connections_max,
            metrics=loop_metrics,
            access_log=None,
        )

    async def close(self) -> None:
        await self._session.close()

    def _write_bytes(self, request: web.BaseRequest) -> int:
        """What a request holds against `admission` while it is served: for a write, its
        body as ``Content-Length`` announces it (the largest allowed when it does not say:
        chunked), known before a byte of the body is read; 0 for a read."""
        if request.method not in WRITE_METHODS:
            return 0
        largest = self._body_bytes_max(request)
        announced = request.content_length
        body_bytes = largest if announced is None else min(announced, largest)
        return body_bytes + REQUEST_OVERHEAD_BYTES

    def _body_bytes_max(self, request: web.BaseRequest) -> int:
        """The largest body this request's route reads."""
        if request.path == TXN_PATH:
            return TXN_REQUEST_BYTES_MAX
        return self.routes.value_bytes_max

    def _route(self, path: str) -> _Route | None:
        if path.startswith(KV_PATH_PREFIX):
            return self._key_route if len(path) > len(KV_PATH_PREFIX) else None
        if path.startswith(MEMBER_PATH_PREFIX):
            node_id = path[len(MEMBER_PATH_PREFIX) :]
            return self._member_route if node_id and "/" not in node_id else None
        if path.startswith(LOCK_PATH_PREFIX):
            return self._lock_route if len(path) > len(LOCK_PATH_PREFIX) else None
        for prefix, route in (
            (AUTH_USER_PATH_PREFIX, self._auth_user_route),
            (AUTH_ROLE_PATH_PREFIX, self._auth_role_route),
        ):
            if path.startswith(prefix):
                name = path[len(prefix) :]
                return route if name and "/" not in name else None
        if path.startswith(LEASE_PATH_PREFIX):
            tail = path[len(LEASE_PATH_PREFIX) :]
            if tail.endswith(LEASE_KEEPALIVE_SUFFIX):
                tail = tail[: -len(LEASE_KEEPALIVE_SUFFIX)]
                return self._lease_keepalive_route if tail and "/" not in tail else None
            return self._lease_route if tail and "/" not in tail else None
        return self._exact_routes.get(path)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        route = self._route(request.rel_url.path_safe)
        try:
            try:
                if route is None:
                    raise ApiError(404, "unknown_route", f"no route {request.path!r}")
                handler = route.handlers.get(request.method)
                if handler is None:
                    allowed = ", ".join(sorted(route.handlers))
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{request.method} is not allowed on {route.name}; allowed: {allowed}",
                        headers={"Allow": allowed},
                    )
                _refuse_unknown(request, route)
                authorizer = self.authorizer
                if authorizer.enabled:  # (no coroutine to make and await while auth is off)
                    await authorizer.check(request, route.name)
                hold_bytes = self._write_bytes(request)
                if hold_bytes and not self.admission.try_hold(hold_bytes):
                    raise ApiError(
                        503,
                        "overloaded",
                        f"this node holds {self.admission.bytes_held} bytes of writes, its"
                        f" limit is {self.admission.bytes_max}; retry later",
                    )
                try:
                    response = await handler(request)
                except NotLeader as error:
                    response = await self._to_the_leader(request, handler, error)
                finally:
                    if hold_bytes:
                        self.admission.release(hold_bytes)
            except ApiError as error:
                response = _error_response(error)
        except web.HTTPException as error:
            response = _json(error.status, {"error": "bad_request", "message": error.reason})
        if route is not None and route.name == EVENTS_PATH and not response.prepared:
            # A refusal (401 above all) readable by a member's dashboard page, which then
            # asks its user to sign in; the stream itself carries these headers already.
            response.headers.update(cors_headers(request, self._member_addresses()))
        node = self.node
        core = node.core
        if not response.prepared:  # a stream sent its headers already
            response.headers.setdefault("X-Kvraft-Node-Id", str(node.id))
            response.headers.setdefault(REVISION_HEADER, str(node.state_machine.applied_index))
        if core is not None and not response.prepared:
            response.headers.setdefault("X-Kvraft-Leader-Id", str(core.leader_id))
            response.headers.setdefault("X-Kvraft-Term", str(core.term))
        # Any token is a valid HTTP method: name only the known ones, or a client could make
        # a metric series (and a cache entry) per made-up method.
        method = request.method if request.method in METRIC_METHODS else "other"
        route_name = route.name if route is not None else "unmatched"
        series = (method, route_name, response.status)
        latency = self._request_latency.get(series)
        if latency is None:
            latency = self._request_latency[series] = self.loop_metrics.histogram_child(
                "kvraft_request_seconds", method, route_name, str(response.status)
            )
        latency.observe(time.perf_counter() - started)
        return response

    async def _to_the_leader(
        self, request: web.BaseRequest, handler: Handler, error: NotLeader
    ) -> web.StreamResponse:
        """Forward to the leader; while an election is on (no leader known, or the known
        one refuses connections: it is gone), hold the request for up to `leader_wait_s`
        until a new leader is known, then serve it here or forward it there. A request that
        was forwarded to us is not held: the node that forwarded it does the waiting."""
        leader_id = error.leader_id
        # A leader that handed over to finish a request sends it on one more hop.
        another_hop = isinstance(error, HandedOver)
        may_wait = FORWARDED_HEADER not in request.headers
        started_s = asyncio.get_running_loop().time()
        deadline_s = started_s + self.routes.leader_wait_s
        # Waiting comes out of the time the answer may take, not on top of it.
        answer_deadline_s = started_s + self._answer_timeout_s(request) + FORWARD_MARGIN_S
        while True:
            if leader_id and leader_id != self.node.id:
                try:
                    return await self._forward(
                        request, leader_id, answer_deadline_s, another_hop=another_hop
                    )
                except _LeaderRefused:
                    if not may_wait:
                        raise ApiError(
                            503, "unavailable", f"leader {leader_id} is unreachable"
                        ) from None
            elif leader_id == self.node.id:
                try:
                    return await handler(request)  # elected meanwhile: nothing was done yet
                except NotLeader as again:
                    if again.leader_id != self.node.id:
                        leader_id, another_hop = again.leader_id, isinstance(again, HandedOver)
                        continue
            # No leader known, the known one gone, or this node named but not leading.
            if not may_wait:
                raise ApiError(503, "unavailable", "no leader is known right now")
            leader_id = await self.node.wait_for_new_leader(leader_id, deadline_s)
            if not leader_id:
                raise ApiError(503, "unavailable", "no leader was elected in time; retry")

    def _answer_timeout_s(self, request: web.BaseRequest) -> float:
        if request.path.startswith(MEMBERSHIP_PATH_PREFIXES):
            return self.node.reconfiguration.timeout_s
        if "wait_revision" in request.query:  # a blocking read: the leader may wait that long
            try:
                wait_s = _query_seconds(request, "wait_s", WAIT_S_DEFAULT, WAIT_S_MAX)
            except ApiError:
                wait_s = 0.0  # refused by the leader at once
            return self.routes.timeout_s + wait_s
        if request.method == "POST" and request.path.startswith(LOCK_PATH_PREFIX):
            # The leader waits for the lock up to the body's wait_s (not read here): the
            # longest it may take, plus its two proposals.
            return 2 * self.routes.timeout_s + LOCK_WAIT_S_MAX
        return self.routes.timeout_s

    async def _forward(
        self,
        request: web.BaseRequest,
        leader_id: int,
        deadline_s: float,
        *,
        another_hop: bool = False,
    ) -> web.StreamResponse:
        if FORWARDED_HEADER in request.headers and not another_hop:
            raise ApiError(503, "unavailable", "forwarded to a node that is not the leader")
        leader = self.node.peer_addresses.get(leader_id) if leader_id else None
        if leader is None or leader_id == self.node.id:
            raise ApiError(503, "unavailable", "no leader is known right now")
        # A DELETE may carry a body too (a lock release names its fencing token).
        has_body = request.method in ("PUT", "POST") or request.body_exists
        body = await _read_value(request, self._body_bytes_max(request)) if has_body else b""
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower()
            in (
                "if-match",
                "if-none-match",
                "idempotency-key",
                "x-kvraft-fence",
                "content-type",
                # The leader checks the caller again, against its own state.
                "authorization",
            )
        }
        headers[FORWARDED_HEADER] = str(self.node.id)
        # The raw path, not a re-parsed one: yarl would resolve "." and ".." segments,
        # which are legal inside keys.
        url = yarl.URL(leader.base_url(self.node.tls.http_scheme) + request.raw_path, encoded=True)
        is_write = request.method in ("PUT", "DELETE", "POST")
        remaining_s = max(deadline_s - asyncio.get_running_loop().time(), 0.001)
        try:
            async with self._session.request(
                request.method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=remaining_s, sock_connect=FORWARD_CONNECT_TIMEOUT_S
                ),
            ) as upstream:
                payload = await upstream.read()
                passed = {
                    name: value
                    for name, value in upstream.headers.items()
                    if name.lower() in ("etag", "retry-after", "content-type")
                    or name.lower().startswith("x-kvraft-")
                }
                if (
                    is_write
                    and upstream.status == 200
                    and request.path.startswith(AUTH_PATH_PREFIX)
                ):
                    # Read your auth writes through this node: a token asked of it next must
                    # see the user, the role or the switch the leader just applied.
                    revision = upstream.headers.get(REVISION_HEADER, "")
                    if revision.isdecimal():
                        await self.authorizer.catch_up(int(revision))
                return web.Response(status=upstream.status, body=payload, headers=passed)
        except aiohttp.ClientConnectorError as error:
            if is_exhaustion(error.os_error):
                EXHAUSTION.record("forward_connect", error.os_error)
            raise _LeaderRefused(leader_id) from None
        except (TimeoutError, aiohttp.ClientError) as error:
            if is_write:
                raise ApiError(
                    504, "outcome_unknown", f"lost the leader's answer ({error!r})"
                ) from None
            raise ApiError(503, "unavailable", f"lost the leader's answer ({error!r})") from None
