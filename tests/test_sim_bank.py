"""Transactions in the simulator (`kvraft.sim.bank`): the projection per key, the bank's
invariant, and a run in which transfers and audits really happen and check out."""

from __future__ import annotations

import pytest

from kvraft.sim.bank import ACCOUNTS, BankTxn, check_audit, project
from kvraft.sim.checkers import Violation
from kvraft.sim.runner import SimOptions, _Run
from kvraft.statemachine import ApplyResult, KVStateMachine, encode_put


def applied(machine: KVStateMachine, txn: BankTxn) -> ApplyResult:
    return machine.apply(machine.applied_index + 1, txn.command())


def test_a_transfer_projects_to_one_cas_per_account_and_an_audit_to_reads() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("acct/0", b"5"))
    transfer = BankTxn("transfer", (("acct/0", "5", 1), ("acct/1", None, 0)), 3)
    result = applied(machine, transfer)
    [debit, credit] = project(7, transfer, 10, 20, "ok", result)
    assert (debit.kind, debit.key, debit.expected, debit.value, debit.output) == (
        "cas", "acct/0", "5", "2", True,
    )  # fmt: skip
    assert (credit.key, credit.expected, credit.value) == ("acct/1", None, "3")
    # The same transfer again is stale: its failure branch's gets are reads.
    stale = applied(machine, transfer)
    assert [(op.kind, op.key, op.output) for op in project(7, transfer, 30, 40, "ok", stale)] == [
        ("read", "acct/0", "2"),
        ("read", "acct/1", "3"),
    ]
    assert [op.status for op in project(7, transfer, 50, None, "info", None)] == ["info"] * 2
    assert project(7, BankTxn.audit(), 50, None, "info", None) == []
    audit = applied(machine, BankTxn.audit())
    assert [op.key for op in project(7, BankTxn.audit(), 60, 70, "ok", audit)] == list(ACCOUNTS)


def test_an_audit_that_does_not_sum_to_zero_is_a_violation() -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_put("acct/0", b"-4"))
    machine.apply(2, encode_put("acct/2", b"4"))
    check_audit(machine.apply(3, BankTxn.audit().command()), "balanced")
    machine.apply(4, encode_put("acct/1", b"1"))  # half of a transfer
    with pytest.raises(Violation) as found:
        check_audit(machine.apply(5, BankTxn.audit().command()), "half")
    assert found.value.property_name == "bank"


def test_a_faulty_run_moves_money_and_every_audit_sums_to_zero() -> None:
    run = _Run(3, SimOptions(nodes=5, chaos_ticks=300), None)
    result = run.run()
    assert result.violation is None
    txns = [op for op in run.cluster.completed if op.txn is not None and op.status == "ok"]
    transfers = [op for op in txns if op.txn and op.txn.kind == "transfer"]
    assert any(op.output.succeeded for op in transfers)  # type: ignore[union-attr]
    assert any(op.txn and op.txn.kind == "audit" for op in txns)
