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

Neither client is safe to share between threads; use one per thread (or task group).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import enum
import http.client
import json
import random
import secrets
import socket
import time
import urllib.parse
from collections.abc import (
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

__all__ = [
    "ATTEMPT_TIMEOUT_S_DEFAULT",
    "BACKOFF_S_MAX",
    "BACKOFF_S_MIN",
    "CONNECT_TIMEOUT_S_DEFAULT",
    "CONSISTENCY_LEVELS",
    "ENDPOINTS_MAX",
    "IDEMPOTENCY_KEY_CHARS_MAX",
    "LIST_LIMIT_MAX",
    "LIST_PAGE_SIZE_DEFAULT",
    "RESPONSE_BYTES_MAX",
    "RETRY_AFTER_S_MAX",
    "TIMEOUT_S_DEFAULT",
    "AsyncKVClient",
    "ClientError",
    "ConditionFailed",
    "EndpointRouter",
    "FailureKind",
    "HttpRequest",
    "HttpResponse",
    "Item",
    "KVClient",
    "KVError",
    "OutcomeUnknown",
    "ProtocolError",
    "RetryPolicy",
    "Send",
    "Step",
    "TransportFailure",
    "Unavailable",
    "Wait",
    "backoff_delay_s",
    "build_add_member",
    "build_delete",
    "build_get",
    "build_list",
    "build_members",
    "build_put",
    "build_remove_member",
    "build_status",
    "build_transfer_leadership",
    "interpret_delete",
    "interpret_get",
    "interpret_list",
    "interpret_members",
    "interpret_put",
    "interpret_status",
    "interpret_transfer",
    "key_path",
    "normalize_endpoint",
    "parse_retry_after_s",
    "plan_exchange",
    "plan_single_attempt",
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

CONSISTENCY_LEVELS = ("linearizable", "stale")
"""`linearizable` reads go through the leader's ReadIndex (§6.4); `stale` reads are served
from the answering node's state machine, possibly behind."""

_KV_PREFIX = "/v1/kv"
_MEMBERS_PATH = "/v1/members"
_TRANSFER_PATH = "/v1/leader/transfer"
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


# ---------------------------------------------------------------------------------------
# Sans-IO values.


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
StatusResults: TypeAlias = dict[str, dict[str, Any] | KVError]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timeouts of a call: `timeout_s` overall, `attempt_timeout_s` per attempt,
    `connect_timeout_s` per connection."""

    timeout_s: float = TIMEOUT_S_DEFAULT
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S_DEFAULT
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT

    def __post_init__(self) -> None:
        for name in ("timeout_s", "attempt_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ClientError("bad_timeout", f"{name} must be a positive number of seconds")


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


def _write_headers(if_revision: int | None, idempotency_key: str | None) -> list[tuple[str, str]]:
    headers = list(_JSON_HEADERS)
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
) -> HttpRequest:
    """`PUT /v1/kv/{key}`: store `value`; `if_revision` / `if_absent` make it conditional."""
    target = key_path(key)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ClientError("bad_value", f"a value must be bytes, not {type(value).__name__}")
    if if_absent and if_revision is not None:
        raise ClientError("bad_request", "give if_revision or if_absent, not both")
    headers = _write_headers(if_revision, idempotency_key)
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
    key: str, *, if_revision: int | None = None, idempotency_key: str | None = None
) -> HttpRequest:
    """`DELETE /v1/kv/{key}`, conditional on `if_revision` if given."""
    target = key_path(key)
    return HttpRequest(
        method="DELETE",
        target=target,
        headers=tuple(_write_headers(if_revision, idempotency_key)),
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


def build_get(key: str, *, consistency: str = "linearizable") -> HttpRequest:
    """`GET /v1/kv/{key}?consistency=...`."""
    _check_consistency(consistency)
    return _read_request(f"{key_path(key)}?consistency={consistency}", f"GET {key!r}")


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
    if response.status == 412:
        raise ConditionFailed(key or "", _revision_field(_json_object(response), 412))
    if 400 <= response.status < 500:
        code, message = _error_fields(response)
        raise ClientError(code, message, response.status)
    raise ProtocolError(f"unexpected {_error_text(response)}")


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
    _raise_for_status(response, None)
    body = _json_object(response)
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
    return items, continuation


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


# ---------------------------------------------------------------------------------------
# The shared, IO-free half of both clients.


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
    ) -> None:
        self.router = EndpointRouter(endpoints)
        self.policy = RetryPolicy(timeout_s, attempt_timeout_s, connect_timeout_s)
        self.auto_idempotency_keys = auto_idempotency_keys
        if type(response_bytes_max) is not int or response_bytes_max < 1:
            raise ClientError("bad_request", "response_bytes_max must be a positive integer")
        self.response_bytes_max = response_bytes_max
        self.rng = rng if rng is not None else random.Random()

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
    ) -> Steps[int]:
        request = build_put(
            key,
            value,
            if_revision=if_revision,
            if_absent=if_absent,
            idempotency_key=self._write_key(idempotency_key),
        )
        return interpret_put((yield from self._plan(request)), key)

    def get(self, key: str, consistency: str) -> Steps[tuple[bytes, int] | None]:
        request = build_get(key, consistency=consistency)
        return interpret_get((yield from self._plan(request)), key)

    def delete(
        self, key: str, if_revision: int | None, idempotency_key: str | None
    ) -> Steps[tuple[int, bool]]:
        request = build_delete(
            key, if_revision=if_revision, idempotency_key=self._write_key(idempotency_key)
        )
        return interpret_delete((yield from self._plan(request)), key)

    def list_page(
        self, prefix: str, limit: int, start_after: str | None, consistency: str
    ) -> Steps[ListPage]:
        request = build_list(prefix, limit=limit, start_after=start_after, consistency=consistency)
        return interpret_list((yield from self._plan(request)))

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
    """What both clients share: the options and the sans-IO core they drive."""

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
    ) -> None:
        self._core = _ClientCore(
            endpoints,
            timeout_s,
            attempt_timeout_s,
            connect_timeout_s,
            auto_idempotency_keys,
            response_bytes_max,
            rng,
        )

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The normalized endpoints, in rotation order."""
        return self._core.router.endpoints


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
    ) -> int:
        """Store `value` under `key`; return the write's revision."""
        return self._run(self._core.put(key, value, if_revision, if_absent, idempotency_key))

    def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int] | None:
        """(value, revision) of `key`, or None if it does not exist."""
        return self._run(self._core.get(key, consistency))

    def delete(
        self, key: str, *, if_revision: int | None = None, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Delete `key`; return (revision, deleted)."""
        return self._run(self._core.delete(key, if_revision, idempotency_key))

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

    def _send(self, step: Send) -> Outcome:
        parts = urllib.parse.urlsplit(step.endpoint)
        connection_type = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        timeout_s = max(step.timeout_s, 0.001)
        connection = connection_type(
            parts.hostname or "",
            parts.port,
            timeout=min(timeout_s, self._core.policy.connect_timeout_s),
        )
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
    ) -> int:
        """Store `value` under `key`; return the write's revision."""
        return await self._run(self._core.put(key, value, if_revision, if_absent, idempotency_key))

    async def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int] | None:
        """(value, revision) of `key`, or None if it does not exist."""
        return await self._run(self._core.get(key, consistency))

    async def delete(
        self, key: str, *, if_revision: int | None = None, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Delete `key`; return (revision, deleted)."""
        return await self._run(self._core.delete(key, if_revision, idempotency_key))

    async def list(
        self,
        prefix: str = "",
        limit: int = LIST_PAGE_SIZE_DEFAULT,
        start_after: str | None = None,
        consistency: str = "linearizable",
    ) -> ListPage:
        """One page of keys starting with `prefix`: (items, continuation)."""
        return await self._run(self._core.list_page(prefix, limit, start_after, consistency))

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
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                auto_decompress=False,
            )
            # aiohttp silently repeats a PUT or DELETE once when the connection drops
            # after sending (aiohttp issue #10790), which could apply a write twice.
            # This private switch is the one aiohttp's own test client uses to turn that
            # off; a test of this module fails if a future aiohttp ignores it.
            session._retry_connection = False
            self._session = session
        return self._session

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
