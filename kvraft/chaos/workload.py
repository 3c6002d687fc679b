"""The chaos clients: register and set workloads over the HTTP API, and what an answer means.

Theory of operation
-------------------
Each client is a thread that performs one operation at a time against a node
it picks at random, records the call before sending and the outcome after the
answer, and never retries: a retry would be a second operation, and hiding it
inside one would blur what the history says.

* Register clients (a few per key, on a handful of keys ``r/0``, ``r/1``, ...)
  read, write unique values, and compare-and-set: they read the value v and its
  revision r, then ``PUT`` a new unique value with ``If-Match: "r"``. Values are
  unique, so revision r names value v, and the cas is recorded as "expected v".
* Set clients add unique elements, one key each under ``set/``; after healing,
  `final_set_read` pages through ``GET /v1/kv?prefix=set/`` to see which survived.

What an answer means (`write_outcome`, `read_outcome`) follows the API's promises:
200 is ``ok`` (a 412 is an ok cas that did not apply); 503 and any other 4xx
mean nothing was applied (``fail``); a 504, a timeout or a connection lost after
the request may have been sent is ``info`` (unknown: it may still take effect,
or never). A connection that could not be made is ``fail``. A read has no
effect, so a read that did not succeed is simply ``fail``.

The clients follow the membership: the runner hands them the current members
(`Workload.follow_membership`) after each change, and each request goes to one
of them. A removed node must refuse or forward (so its answers carry the
leader's ``X-Kvraft-Node-Id``); an ``ok`` answer that the removed node served
itself, to a request sent after its removal was confirmed, is not recorded as
``ok`` (a write becomes ``info``, a read ``fail``) and is listed in
`Workload.non_member_answers`, which fails the run.

A client whose operation ended ``info`` continues as a new logical process
(Jepsen's convention): its old operation may still be in flight, and a process
has at most one operation outstanding.

HTTP goes through `exchange`, one fresh `http.client` connection per request:
no pooled connection can be silently re-sent by a library after a failure.

`--broken-stale-reads` (tests only) reads with ``?consistency=stale`` from any node
while recording the reads as ordinary (linearizable) reads: the checker must
catch it.
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kvraft.chaos.checks import SET_ADD, SET_LIST
from kvraft.chaos.client_threads import ClientState, ClientThreads
from kvraft.chaos.history import HistoryRecorder
from kvraft.client import (
    FailureKind,
    HttpRequest,
    HttpResponse,
    KVError,
    TransportFailure,
    build_get,
    build_list,
    build_put,
    interpret_get,
    interpret_list,
    interpret_put,
)
from kvraft.statemachine import LIST_LIMIT_MAX

__all__ = [
    "CLIENTS_PER_REGISTER_KEY",
    "CLIENT_CONNECT_TIMEOUT_S",
    "CLIENT_JOIN_TIMEOUT_S",
    "CLIENT_REQUEST_TIMEOUT_S",
    "CLIENT_THINK_S_MAX",
    "REGISTER_KEYS",
    "REGISTER_KEY_PREFIX",
    "RESPONSE_BYTES_MAX",
    "SET_CLIENTS",
    "SET_KEY_PREFIX",
    "SET_PAGES_MAX",
    "Endpoint",
    "ReadOutcome",
    "Workload",
    "WriteOutcome",
    "decode_value",
    "exchange",
    "list_page_elements",
    "read_outcome",
    "register_keys",
    "write_outcome",
]

REGISTER_KEYS = 5
"""Keys of the register workload: enough to spread the load, few enough that every key sees
many concurrent operations (where violations live)."""

CLIENTS_PER_REGISTER_KEY = 3
"""Concurrent clients per register key: three is the smallest number at which a read can
race a write and a cas at once."""

SET_CLIENTS = 3
"""Concurrent clients of the set workload."""

REGISTER_KEY_PREFIX = "r/"
SET_KEY_PREFIX = "set/"

CLIENT_CONNECT_TIMEOUT_S = 1.0
"""How long a client waits to connect: on loopback a connection either happens at once or
the node is gone (a paused node's kernel still accepts)."""

CLIENT_REQUEST_TIMEOUT_S = 4.0
"""How long a client waits for an answer: more than the nodes' request timeout (2 s in the
chaos config) plus a follower's forwarding margin (1 s), so nodes normally answer 503/504
themselves and only frozen nodes run into this."""

CLIENT_JOIN_TIMEOUT_S = CLIENT_REQUEST_TIMEOUT_S + CLIENT_CONNECT_TIMEOUT_S + 2.0
"""How long stopping waits for a client thread: its operation in flight has then timed out."""

CLIENT_THINK_S_MAX = 0.05
"""Each client pauses up to this long (uniformly) between operations, which keeps a minute's
history at a size the linearizability search decides in seconds."""

RESPONSE_BYTES_MAX = 8 * 1024 * 1024
"""The largest answer body read: a full list page (4 MiB of entries, base64) fits; anything
larger is a node fault and is treated like a broken connection."""

SET_PAGES_MAX = 10_000
"""The most pages the final set read follows (10 million elements at 1000 per page); past it
the read is incomplete, which fails the set check rather than looping forever."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a node serves HTTP: its id, host and port."""

    node_id: int
    host: str
    port: int


def register_keys(count: int = REGISTER_KEYS) -> list[str]:
    """The register workload's keys."""
    return [f"{REGISTER_KEY_PREFIX}{index}" for index in range(count)]


# --- one HTTP exchange ---------------------------------------------------------------------


def exchange(
    endpoint: Endpoint,
    request: HttpRequest,
    *,
    connect_timeout_s: float = CLIENT_CONNECT_TIMEOUT_S,
    timeout_s: float = CLIENT_REQUEST_TIMEOUT_S,
    body_bytes_max: int = RESPONSE_BYTES_MAX,
) -> HttpResponse | TransportFailure:
    """Send `request` on a fresh connection; the answer, or where the attempt failed."""
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=connect_timeout_s)
    try:
        try:
            connection.connect()
        except OSError as error:
            return TransportFailure(FailureKind.NOT_SENT, f"connect: {error!r}")
        assert connection.sock is not None
        connection.sock.settimeout(timeout_s)
        try:
            connection.request(
                request.method, request.target, body=request.body, headers=dict(request.headers)
            )
            response = connection.getresponse()
            body = response.read(body_bytes_max + 1)
        except (OSError, http.client.HTTPException) as error:
            return TransportFailure(FailureKind.AFTER_SEND, f"after sending: {error!r}")
        if len(body) > body_bytes_max:
            return TransportFailure(
                FailureKind.AFTER_SEND, f"answer longer than {body_bytes_max} bytes"
            )
        headers = {name.lower(): value for name, value in response.getheaders()}
        return HttpResponse(response.status, headers, body)
    finally:
        connection.close()


# --- what an answer means (pure) -----------------------------------------------------------


def decode_value(raw: bytes) -> str:
    """A value as recorded: the text the clients wrote, or a marker no client ever writes
    (so a corrupted value shows up as a read of a value never written)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<undecodable {raw[:64].hex()}>"


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """How a write or cas ended: `type` (ok/fail/info), `output` (cas: applied or not;
    write: None), `error` (why it did not succeed) and `revision` (the revision an applied
    write was answered with; None when not applied or the answer did not say)."""

    type: str
    output: bool | None = None
    error: str | None = None
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """How a read ended: `type` (ok/fail), the `value` (None: absent), its `revision`
    (0: absent) and `error`."""

    type: str
    value: str | None = None
    revision: int = 0
    error: str | None = None


def _error_text(response: HttpResponse) -> str:
    return f"HTTP {response.status} {response.body[:120].decode('utf-8', 'replace')}".strip()


def write_outcome(answer: HttpResponse | TransportFailure, *, conditional: bool) -> WriteOutcome:
    """What a write's (or, `conditional`, a cas's) answer says about its effect."""
    if isinstance(answer, TransportFailure):
        if answer.kind is FailureKind.NOT_SENT:
            return WriteOutcome("fail", error=answer.detail)
        return WriteOutcome("info", error=answer.detail)
    status = answer.status
    if status == 200:
        try:
            revision: int | None = interpret_put(answer)
        except KVError:
            revision = None  # ok all the same; the watch check then matches it by value
        return WriteOutcome("ok", True if conditional else None, revision=revision)
    if status == 412 and conditional:
        return WriteOutcome("ok", False)
    if status == 503 or 400 <= status < 500:
        # 503 promises nothing was applied; any other 4xx refused the request outright.
        return WriteOutcome("fail", error=_error_text(answer))
    return WriteOutcome("info", error=_error_text(answer))  # 504 outcome_unknown, other 5xx


def read_outcome(answer: HttpResponse | TransportFailure) -> ReadOutcome:
    """What a read's answer returned; anything but a well-formed 200/404 is ``fail``."""
    if isinstance(answer, TransportFailure):
        return ReadOutcome("fail", error=answer.detail)
    try:
        found = interpret_get(answer)
    except KVError as error:
        return ReadOutcome("fail", error=f"HTTP {answer.status}: {error}")
    if found is None:
        return ReadOutcome("ok")
    raw, revision = found
    if revision == 0:
        return ReadOutcome("fail", error="HTTP 200 with revision 0 (absent) and a value")
    return ReadOutcome("ok", decode_value(raw), revision)


def list_page_elements(
    answer: HttpResponse | TransportFailure,
) -> tuple[list[str], str | None] | str:
    """(elements, continuation) of one page of the final set read, or why it failed."""
    if isinstance(answer, TransportFailure):
        return answer.detail
    try:
        items, continuation = interpret_list(answer)
    except KVError as error:
        return f"HTTP {answer.status}: {error}"
    elements = []
    for item in items:
        element = item.key.removeprefix(SET_KEY_PREFIX)
        value = decode_value(item.value)
        # A key whose value is not its own name is corruption: record it as an element
        # nobody added, so the set check reports it as unexpected.
        elements.append(element if value == element else f"{element}={value!r}")
    return elements, continuation


# --- the clients ---------------------------------------------------------------------------


class Workload:
    """The register and set clients of one run, and the final reads.

    `start` launches one thread per client; `stop` asks them to finish their current
    operation and waits for them; `final_register_reads` and `final_set_read` run in the
    caller's thread after the cluster has been healed.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        recorder: HistoryRecorder,
        seed: int,
        *,
        stale_reads: bool = False,
        keys: Sequence[str] | None = None,
        clients_per_key: int = CLIENTS_PER_REGISTER_KEY,
        set_clients: int = SET_CLIENTS,
        exchange_function: Callable[..., HttpResponse | TransportFailure] = exchange,
    ) -> None:
        if not endpoints:
            raise ValueError("a workload needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._endpoints_lock = threading.Lock()
        self._removed_at_ns: dict[int, int] = {}
        self.highest_revision = 0
        """The highest revision an acknowledged write was answered with."""
        self.non_member_answers: list[str] = []
        """Ok answers served by a node after its removal (the daemon's fault), as text."""
        self.recorder = recorder
        self.stale_reads = stale_reads
        self.keys = list(keys) if keys is not None else register_keys()
        self._exchange = exchange_function
        self._stop = threading.Event()
        register_slots = len(self.keys) * clients_per_key
        slots_total = register_slots + set_clients + 1  # the last slot does the final reads
        self._register_clients = [
            (ClientState(slot, slots_total, seed), self.keys[slot % len(self.keys)])
            for slot in range(register_slots)
        ]
        self._set_clients = [
            ClientState(register_slots + index, slots_total, seed) for index in range(set_clients)
        ]
        self._final = ClientState(slots_total - 1, slots_total, seed)
        self.errors: list[str] = []
        """Unexpected exceptions in client threads (harness bugs), as text."""
        self._clients = ClientThreads(
            self._stop,
            self.errors,
            think_s_max=CLIENT_THINK_S_MAX,
            join_timeout_s=CLIENT_JOIN_TIMEOUT_S,
        )

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start every client thread."""
        for state, key in self._register_clients:
            step = functools.partial(self._register_step, state, key=key)
            self._clients.add(
                f"chaos-register-{state.slot}",
                step,
                state.crashed,
                state.rng,
                f"client {state.slot}",
            )
        for state in self._set_clients:
            step = functools.partial(self._set_step, state)
            self._clients.add(
                f"chaos-set-{state.slot}", step, state.crashed, state.rng, f"client {state.slot}"
            )
        self._clients.start()

    def stop(self) -> list[str]:
        """Stop the clients and wait for them; the names of any that did not finish."""
        return self._clients.stop()

    def _endpoint(self, state: ClientState) -> Endpoint:
        with self._endpoints_lock:
            return state.rng.choice(self.endpoints)

    def _final_endpoint(self, attempt: int) -> Endpoint:
        with self._endpoints_lock:
            return self.endpoints[attempt % len(self.endpoints)]

    def follow_membership(
        self, endpoints: Sequence[Endpoint], removed_at_ns: Mapping[int, int]
    ) -> None:
        """From now on send requests to `endpoints` (the current members); `removed_at_ns`
        says since when (monotonic ns) each removed node is known to be out."""
        if not endpoints:
            raise ValueError("a workload needs at least one endpoint")
        with self._endpoints_lock:
            self.endpoints = list(endpoints)
            self._removed_at_ns = dict(removed_at_ns)

    def _served_by_removed(
        self, answer: HttpResponse | TransportFailure, sent_ns: int
    ) -> int | None:
        """The removed node that served `answer` itself, if it was removed before `sent_ns`."""
        if isinstance(answer, TransportFailure):
            return None
        text = answer.headers.get("x-kvraft-node-id", "")
        if not text.isdigit() or len(text) > 10:
            return None
        with self._endpoints_lock:
            removed_ns = self._removed_at_ns.get(int(text))
        return int(text) if removed_ns is not None and sent_ns >= removed_ns else None

    def _checked_exchange(
        self, endpoint: Endpoint, request: HttpRequest
    ) -> tuple[HttpResponse | TransportFailure, int | None]:
        sent_ns = time.monotonic_ns()
        answer = self._exchange(endpoint, request)
        return answer, self._served_by_removed(answer, sent_ns)

    def _non_member_answer(self, node: int, what: str) -> str:
        text = f"node {node} answered {what} itself after its removal"
        self.non_member_answers.append(text)
        return text

    # --- operations ------------------------------------------------------------------------

    def _read(self, state: ClientState, key: str, endpoint: Endpoint) -> ReadOutcome:
        consistency = "stale" if self.stale_reads else "linearizable"
        process = state.process
        self.recorder.invoke(process, "read", key, node=endpoint.node_id)
        answer, removed = self._checked_exchange(endpoint, build_get(key, consistency=consistency))
        outcome = read_outcome(answer)
        if removed is not None and outcome.type == "ok":
            outcome = ReadOutcome("fail", error=self._non_member_answer(removed, f"read {key}"))
        self.recorder.complete(
            process,
            outcome.type,
            "read",
            key,
            output=outcome.value,
            error=outcome.error,
            node=endpoint.node_id,
        )
        return outcome

    def _put(
        self,
        state: ClientState,
        f: str,
        key: str,
        value: str,
        *,
        expected: str | None = None,
        if_revision: int | None = None,
    ) -> WriteOutcome:
        endpoint = self._endpoint(state)
        process = state.process
        conditional = if_revision is not None
        self.recorder.invoke(process, f, key, value=value, expected=expected, node=endpoint.node_id)
        request = build_put(key, value.encode("utf-8"), if_revision=if_revision)
        answer, removed = self._checked_exchange(endpoint, request)
        outcome = write_outcome(answer, conditional=conditional)
        if removed is not None and outcome.type == "ok":
            outcome = WriteOutcome("info", error=self._non_member_answer(removed, f"{f} {key}"))
        self.recorder.complete(
            process,
            outcome.type,
            f,
            key,
            output=outcome.output,
            error=outcome.error,
            node=endpoint.node_id,
            extra={"revision": outcome.revision} if outcome.revision is not None else None,
        )
        if outcome.revision is not None:
            with self._endpoints_lock:
                self.highest_revision = max(self.highest_revision, outcome.revision)
        if outcome.type == "info":
            state.crashed()
        return outcome

    def _register_step(self, state: ClientState, key: str) -> None:
        choice = state.rng.random()
        if choice < 0.4:
            self._read(state, key, self._endpoint(state))
        elif choice < 0.7:
            self._put(state, "write", key, state.unique("v"))
        else:
            # Compare-and-set: read the value and its revision, then write conditionally.
            seen = self._read(state, key, self._endpoint(state))
            if seen.type == "ok":
                self._put(
                    state,
                    "cas",
                    key,
                    state.unique("v"),
                    expected=seen.value,
                    if_revision=seen.revision,
                )

    def _set_step(self, state: ClientState) -> None:
        element = state.unique("e")
        self._put(state, SET_ADD, SET_KEY_PREFIX + element, element)

    # --- the final phase -------------------------------------------------------------------

    def final_register_reads(self, deadline_passed: Callable[[], bool]) -> dict[str, bool]:
        """Read every register key until one read of it succeeds or the deadline passes;
        whether each key was read."""
        done: dict[str, bool] = {}
        attempt = 0
        for key in self.keys:
            done[key] = False
            while not deadline_passed():
                endpoint = self._final_endpoint(attempt)
                attempt += 1
                if self._read(self._final, key, endpoint).type == "ok":
                    done[key] = True
                    break
        return done

    def final_set_read(
        self, deadline_passed: Callable[[], bool], *, pages_max: int = SET_PAGES_MAX
    ) -> bool:
        """Read every set element, page by page (a failed page is retried on the next node);
        whether the last page was reached before the deadline and within `pages_max` pages."""
        process = self._final.process
        start_after: str | None = None
        attempt = 0
        pages = 0
        while not deadline_passed() and pages < pages_max:
            endpoint = self._final_endpoint(attempt)
            attempt += 1
            self.recorder.invoke(
                process, SET_LIST, SET_KEY_PREFIX, value=start_after, node=endpoint.node_id
            )
            request = build_list(SET_KEY_PREFIX, limit=LIST_LIMIT_MAX, start_after=start_after)
            page = list_page_elements(self._exchange(endpoint, request))
            if isinstance(page, str):
                self.recorder.complete(
                    process, "fail", SET_LIST, SET_KEY_PREFIX, error=page, node=endpoint.node_id
                )
                continue
            elements, continuation = page
            pages += 1
            self.recorder.complete(
                process,
                "ok",
                SET_LIST,
                SET_KEY_PREFIX,
                output=elements,
                node=endpoint.node_id,
                extra={"last_page": continuation is None},
            )
            if continuation is None:
                return True
            start_after = continuation
        return False
