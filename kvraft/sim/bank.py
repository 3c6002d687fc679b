"""Transactions in the simulator's client workload: a small bank, and how it is checked.

Besides the single-key registers, clients move money between `ACCOUNTS` with transactions
(`kvraft.statemachine.TxnCommand`): a *transfer* compares both accounts' revisions with the
ones the client last saw and puts both new balances (else it gets both, to learn them), and
an *audit* gets every account in one transaction. An absent account holds 0; balances may go
negative; money is only ever moved, so the accounts always sum to 0.

How transactions are checked, and why this way
----------------------------------------------
By a per-key projection plus the bank invariant, not by extending the WGL checker
(`kvraft.linearizability`) to multi-key operations:

- Projection (`project`): each transaction becomes one single-key operation per account it
  touches, at the transaction's call and return: a successful transfer a `cas` from the
  balance the client saw to the new one on each of its two accounts (its revision compare
  implies the value compare, so the projection only asks less), a failed transfer and an
  audit one `read` per account with the values its gets returned, a transfer whose outcome
  is unknown an `info` `cas` per account. If the whole history is linearizable, so is every
  key's projection (restrict the linearization to the key), so the per-key check raises no
  false alarm. It is what the checker can do fast: its search is per key and memoised on
  one register's state; a multi-key search state would be the product of every account's
  register, and the unknown-outcome transfers, which may apply anywhere after their call,
  multiply the interleavings to try.
- What the projection cannot see is atomicity across keys (each half of a transfer could be
  linearized at a different point). The bank invariant covers that: every audit that
  answered must sum to 0, and so must the audit that ends the run after everything healed.
  A transfer applied as two entries, or half of one, or a read between the halves, shows as
  a sum other than 0 in any audit that sees it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from kvraft.linearizability import Operation
from kvraft.sim.checkers import Violation
from kvraft.statemachine import (
    ApplyResult,
    Compare,
    CompareOp,
    CompareTarget,
    GetResult,
    TxnGet,
    TxnPut,
    encode_txn,
)

__all__ = ["ACCOUNTS", "AMOUNT_MAX", "BankTxn", "balances_of", "check_audit", "project"]

ACCOUNTS = ("acct/0", "acct/1", "acct/2")
"""The bank's accounts: keys of their own, apart from the registers."""

AMOUNT_MAX = 9
"""A transfer moves 1..this much."""


@dataclass(frozen=True, slots=True)
class BankTxn:
    """One bank transaction.

    Fields:
        kind: "transfer" or "audit".
        seen: for a transfer, each of its two accounts (source first) with the balance text
            (None: absent) and revision the client last saw; empty for an audit.
        amount: what a transfer moves from the first account to the second.
    """

    kind: str
    seen: tuple[tuple[str, str | None, int], ...] = ()
    amount: int = 0

    @staticmethod
    def audit() -> BankTxn:
        return BankTxn("audit")

    @staticmethod
    def transfer(rng: random.Random, view: dict[str, tuple[str | None, int]]) -> BankTxn | None:
        """A transfer between two accounts the client has seen, or None if it has not seen
        two yet."""
        known = sorted(k for k in ACCOUNTS if k in view)
        if len(known) < 2:
            return None
        source, target = rng.sample(known, 2)
        seen = tuple((key, view[key][0], view[key][1]) for key in (source, target))
        return BankTxn("transfer", seen, rng.randint(1, AMOUNT_MAX))

    def new_balances(self) -> tuple[str, str]:
        """The transfer's balances after it, as text: (source, target)."""
        (_, source, _), (_, target, _) = self.seen
        return str(int(source or 0) - self.amount), str(int(target or 0) + self.amount)

    def command(self) -> bytes:
        if self.kind == "audit":
            return encode_txn((), [TxnGet(key) for key in ACCOUNTS])
        compare = [
            Compare(key, CompareTarget.REVISION, CompareOp.EQUAL, revision)
            for key, _, revision in self.seen
        ]
        new_source, new_target = self.new_balances()
        (source, _, _), (target, _, _) = self.seen
        return encode_txn(
            compare,
            [TxnPut(source, new_source.encode()), TxnPut(target, new_target.encode())],
            [TxnGet(source), TxnGet(target)],
        )


def balances_of(result: ApplyResult) -> Iterator[tuple[str, str | None, int]]:
    """(key, balance text or None, revision) of every get in a transaction's results."""
    for one in result.results:
        if isinstance(one, GetResult):
            value = None if one.value is None else one.value.decode()
            yield one.key, value, one.revision


def check_audit(result: ApplyResult, where: str) -> None:
    """An audit's balances must sum to 0: money is only ever moved."""
    balances = {key: value for key, value, _ in balances_of(result)}
    total = sum(int(value or 0) for value in balances.values())
    if total != 0:
        raise Violation(
            "bank",
            f"{where}: an audit at revision {result.revision} saw {balances}, total {total}",
        )


def project(
    process: int, txn: BankTxn, call: int, ret: int | None, status: str, output: object
) -> list[Operation]:
    """The single-key operations a bank transaction stands for (see the module docstring)."""
    if status == "fail":
        return []  # definitely not applied: nothing happened to any key
    if status == "info":
        if txn.kind == "audit":
            return []  # a read that may not have happened
        return [
            Operation(
                process=process,
                kind="cas",
                key=key,
                call=call,
                ret=None,
                status="info",
                value=new,
                expected=seen,
            )
            for (key, seen, _), new in zip(txn.seen, txn.new_balances(), strict=True)
        ]
    assert isinstance(output, ApplyResult)
    if txn.kind == "transfer" and output.succeeded:
        return [
            Operation(
                process=process,
                kind="cas",
                key=key,
                call=call,
                ret=ret,
                status="ok",
                value=new,
                expected=seen,
                output=True,
            )
            for (key, seen, _), new in zip(txn.seen, txn.new_balances(), strict=True)
        ]
    return [
        Operation(
            process=process, kind="read", key=key, call=call, ret=ret, status="ok", output=value
        )
        for key, value, _ in balances_of(output)
    ]
