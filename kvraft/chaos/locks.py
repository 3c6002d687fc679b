"""The chaos lock workload: leases, one lock, a fenced register, holders that stall past their
lease.

Theory of operation
-------------------
`LOCK_CLIENTS` clients share one lock, `LOCK_NAME`. Each repeats a *round*:

1. grant a lease of ``ttl_s``, the shortest the chaos cluster allows
   (`kvraft.leases.lease_ttl_s_min` of its tick and election settings: 2 s), which a
   keepalive thread of the client's own keeps alive from then on: a ``POST
   /v1/leases/{id}/keepalive`` every TTL / `KEEPALIVES_PER_TTL`, to a node drawn at random,
   with that interval as its timeout (a keepalive stuck on a paused node must not cost the
   lease);
2. acquire the lock with the lease (``POST /v1/locks/{name}``, waiting up to
   `ACQUIRE_WAIT_S`), then read who holds it (``GET /v1/locks/{name}``, linearizable);
3. write the register `WRITES_PER_HOLD_MIN`..`WRITES_PER_HOLD_MAX` times, each write one
   transaction fenced with the token (``X-Kvraft-Fence: name:token``) that puts the register
   key `REGISTER_KEY` *and* a journal key of its own under `JOURNAL_PREFIX`, both with the
   value ``{"client", "id", "seq", "token"}`` (`write_value`). A holder whose keepalive found
   the lease gone writes no more;
4. release the lock (``DELETE /v1/locks/{name}``) and revoke the lease.

The nemesis's share: in `STALL_PROBABILITY` of the rounds the holder *stalls* before one of
its writes, as a client in a long GC pause would: its keepalives stop and it sleeps between
``ttl_s`` + `STALL_EXTRA_S_MIN` and 2 x ``ttl_s`` + `STALL_EXTRA_S_MIN`. Then it reads the
holder again and makes its remaining writes without looking at its lease (a paused process
does not know it was paused). By then the leader has normally expired the lease, the lock has
passed on, and those writes must be refused: 412 ``fence_failed``.

The register's history is the journal: an accepted write put its own journal key in the same
transaction, at the same revision, and journal keys are never written again or deleted, so
the journal listed after healing is the register's complete history, with each write's
revision, whatever the nodes' watch histories kept across their restarts (the watchers'
stream of the register is checked against the client history by `kvraft.chaos.watch_check`
besides). A write of unknown outcome that did apply is in the journal like any other, so it
is held to the same properties.

After healing, `LockWorkload.final_reads` lists the journal and reads the register; every
operation, stall and final read is in the history (``f``: `LOCK_FUNCTIONS`, with the
``client`` and ``round`` they belong to), which `kvraft.chaos.lock_check` checks.

Outcomes, as the API promises them: 200 is ``ok``; 503 and any 4xx mean nothing was applied
(``fail``: ``unavailable`` for a 503 or a connection never made, ``refused`` for a 4xx), 504,
other 5xx and a connection lost after sending are ``info`` (``unknown``; the client goes on as
a new process). A 4xx an operation should never get (anything but 412 ``fence_failed`` for a
write, 409 ``lock_not_acquired`` or 404 ``lease_not_found`` for an acquire, 409
``lock_not_held`` for a release, 404 ``lease_not_found`` for a keepalive or a revoke) or a 5xx
other than 503/504 is an *unexpected answer*, which the check fails (`EXPECTED_REFUSALS`): it
means a client or a node is broken, and would otherwise pass unnoticed as a round that did
nothing.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.chaos.client_threads import ClientState, ClientThreads
from kvraft.chaos.history import HistoryRecorder
from kvraft.chaos.workload import (
    CLIENT_CONNECT_TIMEOUT_S,
    CLIENT_REQUEST_TIMEOUT_S,
    CLIENT_THINK_S_MAX,
    Endpoint,
    exchange,
    read_outcome,
)
from kvraft.client import (
    FailureKind,
    Fence,
    HttpRequest,
    HttpResponse,
    KVError,
    TransportFailure,
    build_get,
    build_lease_grant,
    build_lease_keepalive,
    build_lease_revoke,
    build_list,
    build_lock_acquire,
    build_lock_info,
    build_lock_release,
    build_txn,
    interpret_lease_grant,
    interpret_list,
    interpret_lock_acquire,
    interpret_lock_info,
    interpret_txn,
)
from kvraft.statemachine import LIST_LIMIT_MAX
from kvraft.txn import Txn, put

__all__ = [
    "ACQUIRE_WAIT_S",
    "EXPECTED_REFUSALS",
    "JOURNAL_PREFIX",
    "KEEPALIVES_PER_TTL",
    "LOCK_ACQUIRE",
    "LOCK_CLIENTS",
    "LOCK_FINAL",
    "LOCK_FUNCTIONS",
    "LOCK_GRANT",
    "LOCK_HOLDER",
    "LOCK_JOURNAL",
    "LOCK_KEEPALIVE",
    "LOCK_KEEPALIVE_PROCESS_BASE",
    "LOCK_KEY_PREFIX",
    "LOCK_NAME",
    "LOCK_PROCESS_BASE",
    "LOCK_RELEASE",
    "LOCK_REVOKE",
    "LOCK_STALL",
    "LOCK_WRITE",
    "OK",
    "OUTCOMES",
    "REFUSED",
    "REGISTER_KEY",
    "STALL_EXTRA_S_MIN",
    "STALL_PROBABILITY",
    "UNAVAILABLE",
    "UNKNOWN",
    "WRITES_PER_HOLD_MAX",
    "WRITES_PER_HOLD_MIN",
    "Classified",
    "LockWorkload",
    "classify",
    "parse_write_value",
    "write_value",
]

LOCK_NAME = "chaos-lock"
"""The one lock the clients share (most contention, so the most handovers)."""

LOCK_KEY_PREFIX = "lock/"
REGISTER_KEY = LOCK_KEY_PREFIX + "register"
"""The fenced register every holder writes."""
JOURNAL_PREFIX = LOCK_KEY_PREFIX + "journal/"
"""Each accepted write's own key (see the module docstring)."""

LOCK_CLIENTS = 4
"""Clients contending for the lock: a holder and a queue of waiters behind it."""

LOCK_PROCESS_BASE = 2_000_000
"""The lock clients' processes are numbered from here (apart from the register, set and
bank clients'); their keepalive threads' from `LOCK_KEEPALIVE_PROCESS_BASE`."""
LOCK_KEEPALIVE_PROCESS_BASE = 3_000_000

KEEPALIVES_PER_TTL = 3
"""Keepalives sent per TTL (the client library's rule): the lease survives two lost ones."""

ACQUIRE_WAIT_S = 5.0
"""How long an acquire waits for the lock: longer than a TTL, so a waiter normally outlasts a
stalled holder's lease."""

WRITES_PER_HOLD_MIN = 2
WRITES_PER_HOLD_MAX = 4

STALL_PROBABILITY = 0.1
"""The share of rounds whose holder stalls past its lease (each stall holds the lock up for
about a TTL, until the leader expires the lease: more would leave little time for anything
else)."""

STALL_EXTRA_S_MIN = 1.0
"""A stall lasts at least the TTL plus this (time for the leader to expire the lease and the
next waiter to take the lock), and at most twice the TTL plus this."""

WRITE_GAP_S_MAX = 0.02
"""A holder pauses up to this long between its writes."""

# The history's operations (``f``).
LOCK_GRANT = "lock-grant"
LOCK_KEEPALIVE = "lock-keepalive"
LOCK_ACQUIRE = "lock-acquire"
LOCK_HOLDER = "lock-holder"
LOCK_WRITE = "lock-write"
LOCK_STALL = "lock-stall"
LOCK_RELEASE = "lock-release"
LOCK_REVOKE = "lock-revoke"
LOCK_JOURNAL = "lock-journal"
"""One page of the final read of the journal (``output``: ``[[key, value, revision], ...]``)."""
LOCK_FINAL = "lock-final"
"""The final read of the register (``output``: its value, ``revision``: its revision)."""
LOCK_FUNCTIONS = frozenset(
    {
        LOCK_GRANT,
        LOCK_KEEPALIVE,
        LOCK_ACQUIRE,
        LOCK_HOLDER,
        LOCK_WRITE,
        LOCK_STALL,
        LOCK_RELEASE,
        LOCK_REVOKE,
        LOCK_JOURNAL,
        LOCK_FINAL,
    }
)

EXPECTED_REFUSALS: Mapping[str, frozenset[str]] = {
    LOCK_GRANT: frozenset(),
    LOCK_KEEPALIVE: frozenset({"lease_not_found"}),
    LOCK_ACQUIRE: frozenset({"lock_not_acquired", "lease_not_found"}),
    LOCK_HOLDER: frozenset(),
    LOCK_WRITE: frozenset({"fence_failed"}),
    LOCK_RELEASE: frozenset({"lock_not_held"}),
    LOCK_REVOKE: frozenset({"lease_not_found"}),
    LOCK_JOURNAL: frozenset(),
    LOCK_FINAL: frozenset({"not_found"}),
}
"""The 4xx error codes each operation may be answered with (anything else is unexpected)."""

OK, REFUSED, UNAVAILABLE, UNKNOWN = "ok", "refused", "unavailable", "unknown"
OUTCOMES = (OK, REFUSED, UNAVAILABLE, UNKNOWN)
"""How an operation ended (see the module docstring)."""


# --- what an answer means (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Classified:
    """One answer: `type` for the history (ok/fail/info), `outcome` (ok, refused,
    unavailable, unknown), the HTTP `status` and error `code` (None without an answer), the
    `error` text, and the `response` (None without an answer)."""

    type: str
    outcome: str
    status: int | None
    code: str | None
    error: str | None
    response: HttpResponse | None = None

    @property
    def ok_response(self) -> HttpResponse | None:
        """The response of a 200, else None."""
        return self.response if self.status == 200 else None


def _error_code(response: HttpResponse) -> str:
    try:
        body = json.loads(response.body)
    except (ValueError, RecursionError):
        return "error"
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else "error"


def classify(answer: HttpResponse | TransportFailure) -> Classified:
    """What an answer says about its request's effect (the module docstring's outcomes)."""
    if isinstance(answer, TransportFailure):
        if answer.kind is FailureKind.NOT_SENT:
            return Classified("fail", UNAVAILABLE, None, None, answer.detail)
        return Classified("info", UNKNOWN, None, None, answer.detail)
    status = answer.status
    if status == 200:
        return Classified("ok", OK, 200, None, None, answer)
    code = _error_code(answer)
    text = f"HTTP {status} {answer.body[:160].decode('utf-8', 'replace')}".strip()
    if status == 503:
        return Classified("fail", UNAVAILABLE, status, code, text, answer)
    if 400 <= status < 500:
        return Classified("fail", REFUSED, status, code, text, answer)
    return Classified("info", UNKNOWN, status, code, text, answer)


def write_value(client: int, token: int, seq: int, ident: str) -> str:
    """The value of one fenced write: it names the client, the token and the sequence number
    in the hold (and `ident`, the journal key's tail, unique in the run)."""
    return json.dumps(
        {"client": client, "id": ident, "seq": seq, "token": token},
        separators=(",", ":"),
        sort_keys=True,
    )


def parse_write_value(value: object) -> tuple[int, int] | None:
    """(client, token) of a `write_value`, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    client, token = obj.get("client"), obj.get("token")
    if type(client) is not int or type(token) is not int:
        return None
    return client, token


# --- the clients ------------------------------------------------------------------------------


class _Holder:
    """One lock client: its history identities (the round thread's and the keepalive
    thread's), the lease its keepalives keep, and whether they found it gone."""

    def __init__(self, slot: int, slots_total: int, seed: int) -> None:
        self.slot = slot
        self.state = ClientState(
            slot, slots_total, seed, process_base=LOCK_PROCESS_BASE, rng_name="kvraft-chaos-lock"
        )
        self.keepalive = ClientState(
            slot,
            slots_total,
            seed,
            process_base=LOCK_KEEPALIVE_PROCESS_BASE,
            rng_name="kvraft-chaos-lock-keepalive",
        )
        self.rounds = 0
        self._lock = threading.Lock()
        self._lease: int | None = None
        self._paused = False
        self._lost = False

    def keep(self, lease: int | None) -> None:
        """Keep `lease` alive from now on (None: no lease any more)."""
        with self._lock:
            self._lease, self._paused, self._lost = lease, False, False

    def pause_keepalives(self) -> None:
        with self._lock:
            self._paused = True

    def lease_to_keep(self) -> int | None:
        with self._lock:
            return None if self._paused else self._lease

    def mark_lost(self, lease: int) -> None:
        with self._lock:
            if self._lease == lease:
                self._lost = True

    @property
    def lost(self) -> bool:
        with self._lock:
            return self._lost


class LockWorkload:
    """The lock clients of one run: `start`, `stop`, then `final_reads` after healing."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        recorder: HistoryRecorder,
        seed: int,
        *,
        ttl_s: int,
        clients: int = LOCK_CLIENTS,
        stall_probability: float = STALL_PROBABILITY,
        acquire_wait_s: float = ACQUIRE_WAIT_S,
        stall_s: tuple[float, float] | None = None,
        exchange_function: Callable[..., HttpResponse | TransportFailure] = exchange,
    ) -> None:
        """`stall_s`: the shortest and longest stall (default: the TTL plus
        `STALL_EXTRA_S_MIN`, twice the TTL plus that)."""
        if not endpoints:
            raise ValueError("the lock workload needs at least one endpoint")
        if type(ttl_s) is not int or ttl_s < 1:
            raise ValueError(f"a lease TTL is a positive whole number of seconds, got {ttl_s!r}")
        self.endpoints = list(endpoints)
        self.recorder = recorder
        self.ttl_s = ttl_s
        self.stall_probability = stall_probability
        self.acquire_wait_s = acquire_wait_s
        self.stall_s = (
            stall_s
            if stall_s is not None
            else (ttl_s + STALL_EXTRA_S_MIN, 2 * ttl_s + STALL_EXTRA_S_MIN)
        )
        self.keepalive_interval_s = ttl_s / KEEPALIVES_PER_TTL
        self._exchange = exchange_function
        self._lock = threading.Lock()
        self._stop = threading.Event()
        slots_total = clients + 1  # the last slot makes the final reads
        self._holders = [_Holder(slot, slots_total, seed) for slot in range(clients)]
        self._final = ClientState(
            clients, slots_total, seed, process_base=LOCK_PROCESS_BASE, rng_name="kvraft-chaos-lock"
        )
        self.errors: list[str] = []
        """Unexpected exceptions in client threads (harness bugs), as text."""
        self._clients = ClientThreads(
            self._stop,
            self.errors,
            think_s_max=CLIENT_THINK_S_MAX,
            # An acquire in flight may take its wait plus a request timeout to answer.
            join_timeout_s=self.acquire_timeout_s + 2.0,
        )
        self.highest_revision = 0
        """The highest revision an accepted write was answered with."""

    @property
    def acquire_timeout_s(self) -> float:
        """How long an acquire's answer may take: its wait, the node's two proposals around
        it (a request timeout each, 2 s in the chaos config: `CLIENT_REQUEST_TIMEOUT_S`
        covers both) and the connection."""
        return self.acquire_wait_s + CLIENT_REQUEST_TIMEOUT_S + CLIENT_CONNECT_TIMEOUT_S

    def follow_membership(self, endpoints: Sequence[Endpoint]) -> None:
        if endpoints:
            with self._lock:
                self.endpoints = list(endpoints)

    def _endpoint(self, state: ClientState, attempt: int | None = None) -> Endpoint:
        with self._lock:
            if attempt is not None:
                return self.endpoints[attempt % len(self.endpoints)]
            return state.rng.choice(self.endpoints)

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        for holder in self._holders:
            self._clients.add(
                f"chaos-lock-{holder.slot}",
                functools.partial(self._round, holder),
                holder.state.crashed,
                holder.state.rng,
                f"lock client {holder.slot}",
            )
            self._clients.add(
                f"chaos-lock-keepalive-{holder.slot}",
                functools.partial(self._keepalive_step, holder),
                holder.keepalive.crashed,
                holder.keepalive.rng,
                f"lock client {holder.slot}'s keepalive",
            )
        self._clients.start()

    def stop(self) -> list[str]:
        """Stop the clients and wait for them; the names of any that did not finish."""
        return self._clients.stop()

    # --- one operation ------------------------------------------------------------------------

    def _call(
        self,
        state: ClientState,
        f: str,
        key: str,
        request: HttpRequest,
        *,
        ident: Mapping[str, Any],
        value: object = None,
        timeout_s: float = CLIENT_REQUEST_TIMEOUT_S,
        endpoint: Endpoint | None = None,
    ) -> tuple[Classified, int, Endpoint]:
        """Record the invoke, send `request`; (the answer, the process it was recorded
        under, the endpoint). The caller records the completion (`_complete`)."""
        endpoint = endpoint if endpoint is not None else self._endpoint(state)
        process = state.process
        self.recorder.invoke(process, f, key, value=value, node=endpoint.node_id, extra=ident)
        answer = classify(self._exchange(endpoint, request, timeout_s=timeout_s))
        return answer, process, endpoint

    def _complete(
        self,
        state: ClientState,
        process: int,
        answer: Classified,
        f: str,
        key: str,
        endpoint: Endpoint,
        *,
        kind: str | None = None,
        output: object = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        kind = kind if kind is not None else answer.type
        failed = answer.outcome if answer.outcome != OK else UNKNOWN  # a malformed 200
        outcome = {"ok": OK, "info": UNKNOWN}.get(kind, failed)
        fields: dict[str, Any] = {"outcome": outcome}
        if answer.status == 200 and kind != "ok":
            fields["malformed"] = True  # a 200 that does not follow the API: the node's fault
        if answer.status is not None:
            fields["status"] = answer.status
        if answer.code is not None:
            fields["code"] = answer.code
        self.recorder.complete(
            process,
            kind,
            f,
            key,
            output=output,
            error=error if error is not None else answer.error,
            node=endpoint.node_id,
            extra={**fields, **(extra or {})},
        )
        if kind == "info":
            state.crashed()  # it may still take effect: go on as a new process

    # --- a round ------------------------------------------------------------------------------

    def _round(self, holder: _Holder) -> None:
        holder.rounds += 1
        ident = {"client": holder.slot, "round": holder.rounds}
        lease = self._grant(holder, ident)
        if lease is None:
            return
        holder.keep(lease)
        try:
            if self._stop.is_set():
                return
            token = self._acquire(holder, ident, lease)
            if token is None:
                return
            ident = {**ident, "token": token}
            self._read_holder(holder.state, ident)
            rng = holder.state.rng
            writes = rng.randint(WRITES_PER_HOLD_MIN, WRITES_PER_HOLD_MAX)
            stall_before = rng.randrange(writes) if rng.random() < self.stall_probability else None
            stalled = False
            for seq in range(writes):
                if self._stop.is_set():
                    return
                if not stalled and holder.lost:
                    break  # a careful holder: its keepalive found the lease gone
                if seq == stall_before:
                    if not self._stall(holder, ident):
                        return  # the run ended during the stall
                    stalled = True
                    self._read_holder(holder.state, ident)
                self._write(holder, ident, token, seq, after_stall=stalled)
                self._stop.wait(rng.uniform(0.0, WRITE_GAP_S_MAX))
            if not self._stop.is_set():
                self._release(holder, ident, token)
        finally:
            holder.keep(None)
            # Also when the run stops: the lock passes on at once, so a waiter's acquire
            # answers (and its round ends) instead of waiting out its lease.
            self._revoke(holder.state, ident, lease)

    def _grant(self, holder: _Holder, ident: Mapping[str, Any]) -> int | None:
        state = holder.state
        answer, process, endpoint = self._call(
            state, LOCK_GRANT, LOCK_NAME, build_lease_grant(self.ttl_s), ident=ident,
            value=self.ttl_s,
        )  # fmt: skip
        lease: int | None = None
        kind, error = answer.type, None
        if answer.ok_response is not None:
            try:
                lease = interpret_lease_grant(answer.ok_response).id
            except KVError as problem:  # an answer that does not fit: it may have applied
                kind, error = "info", f"HTTP 200 but {problem}"
        self._complete(state, process, answer, LOCK_GRANT, LOCK_NAME, endpoint, kind=kind,
                       output=lease, error=error)  # fmt: skip
        return lease

    def _acquire(self, holder: _Holder, ident: Mapping[str, Any], lease: int) -> int | None:
        state = holder.state
        request = build_lock_acquire(
            LOCK_NAME, lease, wait_s=self.acquire_wait_s, value=f"client {holder.slot}"
        )
        answer, process, endpoint = self._call(
            state, LOCK_ACQUIRE, LOCK_NAME, request, ident={**ident, "lease": lease},
            value=lease, timeout_s=self.acquire_timeout_s,
        )  # fmt: skip
        token: int | None = None
        output: dict[str, Any] | None = None
        kind, error = answer.type, None
        if answer.ok_response is not None:
            try:
                hold = interpret_lock_acquire(answer.ok_response, lease)
            except KVError as problem:
                kind, error = "info", f"HTTP 200 but {problem}"
            else:
                token = hold.fencing_token
                output = {"token": token, "lease": hold.lease}
        self._complete(state, process, answer, LOCK_ACQUIRE, LOCK_NAME, endpoint, kind=kind,
                       output=output, error=error)  # fmt: skip
        return token

    def _read_holder(self, state: ClientState, ident: Mapping[str, Any]) -> None:
        """Who holds the lock now (linearizable): an observation for the ``holder`` check.
        A read has no effect, so one without an answer simply did not count (``fail``)."""
        answer, process, endpoint = self._call(
            state, LOCK_HOLDER, LOCK_NAME, build_lock_info(LOCK_NAME), ident=ident
        )
        output: dict[str, Any] | None = None
        extra: dict[str, Any] | None = None
        error = None
        if answer.ok_response is not None:
            try:
                info = interpret_lock_info(answer.ok_response)
            except KVError as problem:
                error = f"HTTP 200 but {problem}"
            else:
                holder = info.holder
                output = {
                    "holder": holder.fencing_token if holder is not None else None,
                    "lease": holder.lease if holder is not None else None,
                    "waiters": [waiter.fencing_token for waiter in info.waiters],
                }
                extra = {"revision": info.revision}
        self._complete(state, process, answer, LOCK_HOLDER, LOCK_NAME, endpoint,
                       kind="ok" if output is not None else "fail", output=output, error=error,
                       extra=extra)  # fmt: skip

    def _stall(self, holder: _Holder, ident: Mapping[str, Any]) -> bool:
        """Stop the keepalives and sleep past the lease (a paused client); whether the run
        is still on afterwards."""
        state = holder.state
        stall_s = state.rng.uniform(*self.stall_s)
        holder.pause_keepalives()
        process = state.process
        self.recorder.invoke(process, LOCK_STALL, LOCK_NAME, value=round(stall_s, 3), extra=ident)
        stopped = self._stop.wait(stall_s)  # the simulated pause itself
        self.recorder.complete(process, "ok", LOCK_STALL, LOCK_NAME, output={"stopped": stopped})
        return not stopped

    def _write(
        self, holder: _Holder, ident: Mapping[str, Any], token: int, seq: int, *, after_stall: bool
    ) -> None:
        state = holder.state
        tail = state.unique()
        journal = JOURNAL_PREFIX + tail
        value = write_value(holder.slot, token, seq, tail)
        txn = Txn().then(put(REGISTER_KEY, value.encode()), put(journal, value.encode()))
        request = build_txn(txn, fence=Fence(LOCK_NAME, token))
        answer, process, endpoint = self._call(
            state, LOCK_WRITE, REGISTER_KEY, request,
            ident={**ident, "seq": seq, "journal": journal, "after_stall": after_stall},
            value={REGISTER_KEY: value, journal: value},
        )  # fmt: skip
        kind, error = answer.type, None
        extra: dict[str, Any] | None = None
        if answer.ok_response is not None:
            try:
                revision = interpret_txn(answer.ok_response, txn).revision
            except KVError as problem:  # an answer that does not fit: it may have applied
                kind, error = "info", f"HTTP 200 but {problem}"
            else:
                extra = {"revision": revision}
                with self._lock:
                    self.highest_revision = max(self.highest_revision, revision)
        self._complete(state, process, answer, LOCK_WRITE, REGISTER_KEY, endpoint, kind=kind,
                       output=True if kind == "ok" else None, error=error, extra=extra)  # fmt: skip

    def _release(self, holder: _Holder, ident: Mapping[str, Any], token: int) -> None:
        state = holder.state
        answer, process, endpoint = self._call(
            state, LOCK_RELEASE, LOCK_NAME, build_lock_release(LOCK_NAME, token), ident=ident
        )
        self._complete(state, process, answer, LOCK_RELEASE, LOCK_NAME, endpoint)

    def _revoke(self, state: ClientState, ident: Mapping[str, Any], lease: int) -> None:
        answer, process, endpoint = self._call(
            state, LOCK_REVOKE, LOCK_NAME, build_lease_revoke(lease), ident=ident, value=lease
        )
        self._complete(state, process, answer, LOCK_REVOKE, LOCK_NAME, endpoint)

    def _keepalive_step(self, holder: _Holder) -> None:
        self._stop.wait(self.keepalive_interval_s)  # the keepalive period
        lease = holder.lease_to_keep()
        if lease is None or self._stop.is_set():
            return
        state = holder.keepalive
        answer, process, endpoint = self._call(
            state, LOCK_KEEPALIVE, LOCK_NAME, build_lease_keepalive(lease),
            ident={"client": holder.slot, "round": holder.rounds}, value=lease,
            timeout_s=self.keepalive_interval_s,
        )  # fmt: skip
        if answer.code == "lease_not_found":
            holder.mark_lost(lease)
        self._complete(state, process, answer, LOCK_KEEPALIVE, LOCK_NAME, endpoint)

    # --- the final reads ----------------------------------------------------------------------

    def final_reads(self, deadline_passed: Callable[[], bool]) -> bool:
        """After healing: list the journal, page by page, then read the register (each
        retried on the next node until it answers or the deadline passes); whether both were
        read to the end."""
        state = self._final
        attempt = 0
        start_after: str | None = None
        journal_done = False
        while not journal_done and not deadline_passed():
            endpoint = self._endpoint(state, attempt)
            attempt += 1
            request = build_list(JOURNAL_PREFIX, limit=LIST_LIMIT_MAX, start_after=start_after)
            answer, process, _ = self._call(
                state, LOCK_JOURNAL, JOURNAL_PREFIX, request, ident={}, value=start_after,
                endpoint=endpoint,
            )  # fmt: skip
            page = None
            error = None
            if answer.ok_response is not None:
                try:
                    page = interpret_list(answer.ok_response)
                except KVError as problem:
                    error = f"HTTP 200 but {problem}"
            if page is None:
                self._complete(state, process, answer, LOCK_JOURNAL, JOURNAL_PREFIX, endpoint,
                               kind="fail", error=error)  # fmt: skip
                continue
            items, continuation = page
            entries = [
                [item.key, item.value.decode("utf-8", "replace"), item.revision] for item in items
            ]
            journal_done = continuation is None
            self._complete(
                state, process, answer, LOCK_JOURNAL, JOURNAL_PREFIX, endpoint,
                kind="ok", output=entries, extra={"last_page": journal_done},
            )  # fmt: skip
            start_after = continuation
        while journal_done and not deadline_passed():
            endpoint = self._endpoint(state, attempt)
            attempt += 1
            answer, process, _ = self._call(
                state, LOCK_FINAL, REGISTER_KEY, build_get(REGISTER_KEY), ident={},
                endpoint=endpoint,
            )  # fmt: skip
            read = read_outcome(answer.response) if answer.response is not None else None
            if read is not None and read.type == "ok":
                self._complete(
                    state, process, answer, LOCK_FINAL, REGISTER_KEY, endpoint,
                    kind="ok", output=read.value, extra={"revision": read.revision},
                )  # fmt: skip
                return True
            error = read.error if read is not None else None
            self._complete(state, process, answer, LOCK_FINAL, REGISTER_KEY, endpoint,
                           kind="fail", error=error)  # fmt: skip
        return False
