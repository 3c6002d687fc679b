"""The chaos bank: multi-key transactions under faults, and their check.

Theory of operation
-------------------
`BANK_ACCOUNTS` accounts (``bank/0``, ...) are opened with `BANK_OPENING_BALANCE` each in
one transaction before the clients start. Then, for the whole run:

* transfer clients audit, pick two accounts and an amount the source holds, and send one
  ``POST /v1/txn`` that compares both accounts' revisions with the ones just read and, if
  they still hold, puts both new balances (nothing otherwise: the client audits again);
* an audit client reads every balance in one transaction (a transaction of gets).

Each balance is written as ``"<balance>|<tag>"`` with a tag no other write uses, so a value
names the one write that made it (as the register workload's unique values do).

The check (`check_bank`), over the history as written to disk:

* total: every audit that answered sees the same total, `BANK_ACCOUNTS` x
  `BANK_OPENING_BALANCE` (money is only moved), and so does the final audit, which must
  answer after healing;
* order: per account, the projection of the transactions (`project`) is linearizable (the WGL
  checker of `kvraft.linearizability`): an applied transfer is a compare-and-set from the
  balance it saw to the one it wrote, an audit a read of each account, a transfer of unknown
  outcome an ``info`` compare-and-set that may apply at any time after its call or never.
  With unique values the compare-and-set is exactly the revision compare. A history passes
  only if each account's balances follow a chain of transfers, every acknowledged one in it,
  in an order consistent with real time, unknown ones in or out, and every audit reads the
  chain's state of its moment.

Together: the per-account order shows no acknowledged transfer lost, no failed one applied
and no audit reading the past; the totals show no transfer applied by halves, which the
per-account view cannot see (each half could sit at a different moment). Hence the test-only
`--broken-bank split-transfer`, which sends a transfer's two puts as two transactions, must
fail the total (`tests/test_bank_chaos.py` asserts it does).

Outcomes follow `kvraft.chaos.workload`: 200 is ``ok`` (a failed compare is ``ok`` with
``succeeded`` false: nothing applied), 503 and other 4xx ``fail``, 504, 5xx and a connection
lost after sending ``info`` (the client then goes on as a new process).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.chaos.checks import pair_operations
from kvraft.chaos.client_threads import ClientState, ClientThreads
from kvraft.chaos.history import HistoryRecorder
from kvraft.chaos.workload import (
    CLIENT_JOIN_TIMEOUT_S,
    CLIENT_THINK_S_MAX,
    Endpoint,
    exchange,
)
from kvraft.client import (
    FailureKind,
    HttpResponse,
    KVError,
    TransportFailure,
    build_txn,
    interpret_txn,
)
from kvraft.linearizability import CheckResult, HistoryError, Operation, check_history
from kvraft.txn import Txn, TxnAnswer, absent, get, put, revision

__all__ = [
    "BANK_ACCOUNTS",
    "BANK_AUDIT",
    "BANK_AUDIT_CLIENTS",
    "BANK_FUNCTIONS",
    "BANK_KEY_PREFIX",
    "BANK_OPENING_BALANCE",
    "BANK_PROCESS_BASE",
    "BANK_TRANSFER",
    "BANK_TRANSFER_CLIENTS",
    "BROKEN_BANK_MODES",
    "SPLIT_PAUSE_S_MAX",
    "TRANSFER_AMOUNT_MAX",
    "Bank",
    "BankCheck",
    "account_keys",
    "balance_of",
    "check_bank",
    "project",
]

BANK_ACCOUNTS = 5
"""Accounts: enough for transfers to overlap on some accounts and not on others."""

BANK_OPENING_BALANCE = 100
"""What each account holds when opened; the total never changes."""

TRANSFER_AMOUNT_MAX = 10
"""A transfer moves 1..this much (never more than the source holds)."""

BANK_TRANSFER_CLIENTS = 3
BANK_AUDIT_CLIENTS = 1

BANK_KEY_PREFIX = "bank/"
BANK_TRANSFER = "transfer"
"""A history operation: one transaction that moves money (the opening is one too)."""
BANK_AUDIT = "audit"
"""A history operation: one transaction that reads every balance."""
BANK_FUNCTIONS = frozenset({BANK_TRANSFER, BANK_AUDIT})

BANK_PROCESS_BASE = 1_000_000
"""Bank processes are numbered from here: apart from the register and set clients'."""

BROKEN_BANK_MODES = ("split-transfer",)
"""Test-only: ``split-transfer`` sends a transfer's two puts as two transactions, with a
pause between them; the total check must catch it."""

SPLIT_PAUSE_S_MAX = 0.02
"""The broken mode pauses up to this long between the two halves of a transfer, so that an
audit can land between them (as two separate entries would allow at any time)."""

OPENING_TAG = "open"

_SLOTS_TOTAL = BANK_TRANSFER_CLIENTS + BANK_AUDIT_CLIENTS + 1
_FINAL_SLOT = _SLOTS_TOTAL - 1
"""The last client slot opens the accounts and makes the final audit."""


def account_keys(count: int = BANK_ACCOUNTS) -> list[str]:
    return [f"{BANK_KEY_PREFIX}{index}" for index in range(count)]


def balance_of(value: str | None) -> int:
    """The balance in a stored value (an absent account holds 0). ValueError if malformed."""
    if value is None:
        return 0
    return int(value.partition("|")[0])


# --- the clients ------------------------------------------------------------------------------


def _answer(
    answer: HttpResponse | TransportFailure, txn: Txn
) -> tuple[str, TxnAnswer | None, str | None]:
    """(type, the transaction's answer if ok, error) of one exchange."""
    if isinstance(answer, TransportFailure):
        kind = "fail" if answer.kind is FailureKind.NOT_SENT else "info"
        return kind, None, answer.detail
    text = f"HTTP {answer.status} {answer.body[:120].decode('utf-8', 'replace')}".strip()
    if answer.status == 200:
        try:
            return "ok", interpret_txn(answer, txn), None
        except KVError as error:  # an answer that does not fit: it may have applied
            return "info", None, f"HTTP 200 but {error}"
    if answer.status == 503 or 400 <= answer.status < 500:
        return "fail", None, text
    return "info", None, text


def _bank_client(slot: int, slots_total: int, seed: int) -> ClientState:
    return ClientState(
        slot, slots_total, seed, process_base=BANK_PROCESS_BASE, rng_name="kvraft-chaos-bank"
    )


class Bank:
    """The bank's clients for one run: `open_accounts`, `start`, `stop`, `final_audit`."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        recorder: HistoryRecorder,
        seed: int,
        *,
        broken: str | None = None,
        accounts: int = BANK_ACCOUNTS,
        exchange_function: Callable[..., HttpResponse | TransportFailure] = exchange,
    ) -> None:
        if broken is not None and broken not in BROKEN_BANK_MODES:
            raise ValueError(f"unknown broken bank mode {broken!r}")
        self.endpoints = list(endpoints)
        self.recorder = recorder
        self.broken = broken
        self.keys = account_keys(accounts)
        self._exchange = exchange_function
        self._lock = threading.Lock()
        self._stop = threading.Event()
        slots_total = _SLOTS_TOTAL
        self._transfer_clients = [
            _bank_client(slot, slots_total, seed) for slot in range(BANK_TRANSFER_CLIENTS)
        ]
        self._audit_clients = [
            _bank_client(BANK_TRANSFER_CLIENTS + index, slots_total, seed)
            for index in range(BANK_AUDIT_CLIENTS)
        ]
        self._final = _bank_client(slots_total - 1, slots_total, seed)
        self.errors: list[str] = []
        """Unexpected exceptions in client threads (harness bugs), as text."""
        self._clients = ClientThreads(
            self._stop,
            self.errors,
            think_s_max=CLIENT_THINK_S_MAX,
            join_timeout_s=CLIENT_JOIN_TIMEOUT_S,
        )
        self.highest_revision = 0
        """The highest revision an applied transfer was answered with."""

    def follow_membership(self, endpoints: Sequence[Endpoint]) -> None:
        if endpoints:
            with self._lock:
                self.endpoints = list(endpoints)

    def _endpoint(self, client: ClientState, attempt: int | None = None) -> Endpoint:
        with self._lock:
            if attempt is not None:
                return self.endpoints[attempt % len(self.endpoints)]
            return client.rng.choice(self.endpoints)

    # --- operations ---------------------------------------------------------------------------

    def _audit(self, client: ClientState, endpoint: Endpoint) -> dict[str, tuple[str | None, int]]:
        """Every balance in one transaction: {key: (value, revision)}, or {} if no answer."""
        process = client.process
        self.recorder.invoke(process, BANK_AUDIT, BANK_KEY_PREFIX, node=endpoint.node_id)
        txn = Txn().then(*(get(key) for key in self.keys))
        kind, answer, error = _answer(self._exchange(endpoint, build_txn(txn)), txn)
        seen: dict[str, tuple[str | None, int]] = {}
        if answer is not None:
            for result in answer.results:
                value = None if result.value is None else result.value.decode("utf-8", "replace")
                seen[str(result.key)] = (value, result.revision or 0)
        # A read has no effect: one whose outcome is unknown simply did not count.
        self.recorder.complete(
            process,
            "ok" if kind == "ok" else "fail",
            BANK_AUDIT,
            BANK_KEY_PREFIX,
            output={key: value for key, (value, _) in seen.items()} if kind == "ok" else None,
            error=error,
            node=endpoint.node_id,
            extra={"revision": answer.revision} if answer is not None else None,
        )
        return seen

    def _transfer(
        self,
        client: ClientState,
        endpoint: Endpoint,
        compare: Txn,
        writes: dict[str, str],
        expected: dict[str, str | None],
    ) -> str:
        """Send one transfer (`compare` holds the compares); its recorded outcome type."""
        process = client.process
        self.recorder.invoke(
            process, BANK_TRANSFER, BANK_KEY_PREFIX, value=writes, expected=expected,
            node=endpoint.node_id,
        )  # fmt: skip
        if self.broken == "split-transfer" and len(writes) == 2:
            kind, answer, error = self._split(client, endpoint, compare, writes)
        else:
            txn = compare.then(*(put(key, value.encode()) for key, value in writes.items()))
            kind, answer, error = _answer(self._exchange(endpoint, build_txn(txn)), txn)
        extra: dict[str, Any] | None = None
        if answer is not None:
            extra = {"revision": answer.revision}
            if answer.succeeded:
                with self._lock:
                    self.highest_revision = max(self.highest_revision, answer.revision)
        self.recorder.complete(
            process,
            kind,
            BANK_TRANSFER,
            BANK_KEY_PREFIX,
            output=answer.succeeded if answer is not None else None,
            error=error,
            node=endpoint.node_id,
            extra=extra,
        )
        if kind == "info":
            client.generation += 1  # its transfer may still apply: go on as a new process
        return kind

    def _split(
        self, client: ClientState, endpoint: Endpoint, compare: Txn, writes: dict[str, str]
    ) -> tuple[str, TxnAnswer | None, str | None]:
        """The broken mode: the source's put, a pause, then the target's put."""
        (source, source_value), (target, target_value) = writes.items()
        first = compare.then(put(source, source_value.encode()))
        kind, answer, error = _answer(self._exchange(endpoint, build_txn(first)), first)
        if answer is None or not answer.succeeded:
            return kind, answer, error
        self._stop.wait(client.rng.uniform(0.0, SPLIT_PAUSE_S_MAX))
        second = Txn().then(put(target, target_value.encode()))
        kind, _, error = _answer(self._exchange(endpoint, build_txn(second)), second)
        if kind != "ok":
            return "info", None, error  # half of it applied: as good as unknown to the client
        return "ok", answer, None

    def open_accounts(self, deadline_passed: Callable[[], bool]) -> bool:
        """Open every account with the opening balance, in one transaction, retried until a
        node answers (an earlier attempt that applied makes the compare fail: also done)."""
        attempt = 0
        compare = Txn().compare(*(absent(key) for key in self.keys))
        writes = {key: f"{BANK_OPENING_BALANCE}|{OPENING_TAG}" for key in self.keys}
        while not deadline_passed():
            endpoint = self._endpoint(self._final, attempt)
            attempt += 1
            expected: dict[str, str | None] = dict.fromkeys(self.keys)
            if self._transfer(self._final, endpoint, compare, writes, expected) == "ok":
                return True
        return False

    def final_audit(self, deadline_passed: Callable[[], bool]) -> bool:
        """Audit until one answers (after healing); whether one did."""
        attempt = 0
        while not deadline_passed():
            endpoint = self._endpoint(self._final, attempt)
            attempt += 1
            if self._audit(self._final, endpoint):
                return True
        return False

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        for client, step, kind in [
            *((c, self._transfer_step, "transfer") for c in self._transfer_clients),
            *((c, self._audit_step, "audit") for c in self._audit_clients),
        ]:
            self._clients.add(
                f"chaos-bank-{kind}-{client.slot}",
                functools.partial(step, client),
                client.crashed,
                client.rng,
                f"bank client {client.slot}",
            )
        self._clients.start()

    def stop(self) -> list[str]:
        """Stop the clients and wait for them; the names of any that did not finish."""
        return self._clients.stop()

    def _audit_step(self, client: ClientState) -> None:
        self._audit(client, self._endpoint(client))

    def _transfer_step(self, client: ClientState) -> None:
        seen = self._audit(client, self._endpoint(client))
        if len(seen) != len(self.keys):
            return
        source, target = client.rng.sample(self.keys, 2)
        (source_value, source_revision), (target_value, target_revision) = (
            seen[source],
            seen[target],
        )
        held = balance_of(source_value)
        if held < 1:
            return
        amount = client.rng.randint(1, min(held, TRANSFER_AMOUNT_MAX))
        tag = client.unique()
        writes = {
            source: f"{held - amount}|{tag}",
            target: f"{balance_of(target_value) + amount}|{tag}",
        }
        compare = Txn().compare(
            revision(source) == source_revision, revision(target) == target_revision
        )
        expected = {source: source_value, target: target_value}
        self._transfer(client, self._endpoint(client), compare, writes, expected)


# --- the check -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BankCheck:
    """The bank check's result.

    Fields:
        opened: the accounts were opened (the run's bank did not start otherwise).
        transfers: transfers sent (the opening included), by outcome: ``applied`` (ok and
            its compares held), ``refused`` (ok, a compare failed: nothing applied),
            ``fail``, ``info``.
        audits: audits that answered (the final one included).
        expected_total: what every audit must see.
        wrong_totals: (seconds since the first event, total, balances as text) of each
            audit that saw another total, first ones first (at most `WRONG_TOTALS_KEPT`).
        wrong_total_count: how many audits saw a wrong total.
        final_audit: the final audit's balances, or None if it never answered.
        order: the per-account linearizability result.
    """

    opened: bool
    transfers: Mapping[str, int]
    audits: int
    expected_total: int
    wrong_totals: tuple[tuple[float, int, str], ...]
    wrong_total_count: int
    final_audit: Mapping[str, str | None] | None
    order: CheckResult

    @property
    def passed(self) -> bool:
        return (
            self.opened
            and self.final_audit is not None
            and self.wrong_total_count == 0
            and self.order.verdict == "yes"
        )

    def failures(self) -> list[str]:
        """What failed, one line each (none when passed)."""
        found = []
        if not self.opened:
            found.append("bank: the accounts were never opened")
        if self.final_audit is None:
            found.append("bank: the final audit never answered")
        if self.wrong_total_count:
            at_s, total, balances = self.wrong_totals[0]
            found.append(
                f"bank: {self.wrong_total_count} audits saw a total other than "
                f"{self.expected_total}, first at {at_s:.2f}s: {total} ({balances})"
            )
        if self.order.verdict != "yes":
            found.append(f"bank: per-account order: linearizable {self.order.verdict}")
        return found


WRONG_TOTALS_KEPT = 20


def project(invoke: Mapping[str, Any], completion: Mapping[str, Any] | None) -> list[Operation]:
    """The single-account operations one bank transaction stands for (module docstring)."""
    process, f = invoke["process"], invoke["f"]
    call = invoke["time"]
    status = "info" if completion is None else str(completion.get("type"))
    if status == "fail":
        return []
    ret = completion.get("time") if completion is not None and status == "ok" else None
    if f == BANK_AUDIT:
        output = completion.get("output") if completion is not None else None
        if status != "ok" or not isinstance(output, dict):
            return []
        return [
            Operation(process=process, kind="read", key=key, call=call, ret=ret, output=value)
            for key, value in sorted(output.items())
        ]
    writes, expected = invoke.get("value"), invoke.get("expected")
    if not isinstance(writes, dict) or not isinstance(expected, dict):
        raise HistoryError(f"a transfer needs its writes and expected values, got {invoke}")
    if status == "ok" and completion is not None and completion.get("output") is not True:
        return []  # a compare failed: nothing was applied, nothing was read
    return [
        Operation(
            process=process,
            kind="cas",
            key=key,
            call=call,
            ret=ret,
            status=status,
            value=value,
            expected=expected.get(key),
            output=True if status == "ok" else None,
        )
        for key, value in sorted(writes.items())
    ]


def check_bank(
    events: Iterable[Mapping[str, Any]],
    *,
    accounts: int = BANK_ACCOUNTS,
    time_budget_s: float | None = None,
) -> BankCheck:
    """Check the bank's operations in a chaos history (see the module docstring)."""
    expected_total = accounts * BANK_OPENING_BALANCE
    events = list(events)
    origin = min((int(e["time"]) for e in events if type(e.get("time")) is int), default=0)
    transfers = {"applied": 0, "refused": 0, "fail": 0, "info": 0}
    operations: list[Operation] = []
    audits = 0
    wrong: list[tuple[float, int, str]] = []
    wrong_count = 0
    opened = False
    final: Mapping[str, str | None] | None = None
    for invoke, completion in pair_operations(events, BANK_FUNCTIONS):
        operations += project(invoke, completion)
        status = "info" if completion is None else str(completion.get("type"))
        if invoke["f"] == BANK_TRANSFER:
            applied = status == "ok" and completion is not None and completion.get("output")
            transfers["applied" if applied else "refused" if status == "ok" else status] += 1
            if applied and isinstance(invoke.get("value"), dict):
                opened = opened or all(
                    str(v).endswith(f"|{OPENING_TAG}") for v in invoke["value"].values()
                )
            continue
        if status != "ok" or completion is None:
            continue
        balances = completion.get("output")
        if not isinstance(balances, dict):
            raise HistoryError(f"an audit answered without balances: {completion}")
        audits += 1
        try:
            total = sum(balance_of(v) for v in balances.values())
        except ValueError:
            total = -1  # a value no client wrote: never the expected total
        if total != expected_total:
            wrong_count += 1
            if len(wrong) < WRONG_TOTALS_KEPT:
                at_s = (int(completion["time"]) - origin) / 1e9
                wrong.append((at_s, total, json.dumps(balances, sort_keys=True)))
        if (invoke["process"] - BANK_PROCESS_BASE) % _SLOTS_TOTAL == _FINAL_SLOT:
            final = balances  # the final slot audits only once, after healing
    order = check_history(operations, time_budget_s=time_budget_s)
    return BankCheck(
        opened=opened,
        transfers=transfers,
        audits=audits,
        expected_total=expected_total,
        wrong_totals=tuple(wrong),
        wrong_total_count=wrong_count,
        final_audit=final,
        order=order,
    )
