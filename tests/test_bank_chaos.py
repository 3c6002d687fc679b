"""The chaos bank (`kvraft.chaos.bank`): its check on hand-built histories (a passing one and
one per way to fail), the watch check on a transaction's revision, and a real run whose
transfers are deliberately not atomic, which the check must catch."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from kvraft.chaos.bank import (
    BANK_AUDIT,
    BANK_PROCESS_BASE,
    BANK_TRANSFER,
    BankCheck,
    account_keys,
    check_bank,
)
from kvraft.chaos.watch_check import WatchItem, WatchStream, check_watch, writes_from_history
from tests.test_chaos import assert_nothing_left_behind, run_chaos_command

KEYS = account_keys(2)
OPEN = {key: "100|open" for key in KEYS}
FINAL_PROCESS = BANK_PROCESS_BASE + 4  # the slot that opens the accounts and audits last


class History:
    """Bank events with a clock that moves 10 ns per event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.now = 0

    def _event(self, process: int, kind: str, f: str, **fields: Any) -> None:
        self.now += 10
        self.events.append(
            {"process": process, "type": kind, "f": f, "key": "bank/", "value": None,
             "expected": None, "output": None, "time": self.now, "node": 1, **fields}
        )  # fmt: skip

    def invoke_transfer(
        self, process: int, writes: dict[str, str], expected: dict[str, str | None]
    ) -> None:
        self._event(process, "invoke", BANK_TRANSFER, value=writes, expected=expected)

    def complete_transfer(
        self, process: int, kind: str, applied: bool | None = None, revision: int = 0
    ) -> None:
        self._event(process, kind, BANK_TRANSFER, output=applied, revision=revision)

    def transfer(
        self,
        process: int,
        writes: dict[str, str],
        expected: dict[str, str | None],
        kind: str = "ok",
        applied: bool | None = True,
        revision: int = 0,
    ) -> None:
        self.invoke_transfer(process, writes, expected)
        self.complete_transfer(process, kind, applied, revision)

    def audit(self, process: int, balances: dict[str, str | None]) -> None:
        self._event(process, "invoke", BANK_AUDIT)
        self._event(process, "ok", BANK_AUDIT, output=balances)

    def check(self) -> BankCheck:
        return check_bank(self.events, accounts=len(KEYS))


def opened() -> History:
    history = History()
    history.transfer(FINAL_PROCESS, OPEN, dict.fromkeys(KEYS), revision=2)
    return history


MOVED = {"bank/0": "90|0-1", "bank/1": "110|0-1"}


def test_transfers_that_keep_the_total_in_real_time_order_pass() -> None:
    history = opened()
    history.transfer(BANK_PROCESS_BASE, MOVED, OPEN, revision=3)
    # A stale transfer: its compare failed, nothing applied.
    history.transfer(BANK_PROCESS_BASE + 1, {"bank/0": "0|1-1", "bank/1": "200|1-1"}, OPEN,
                     applied=False, revision=4)  # fmt: skip
    history.audit(BANK_PROCESS_BASE + 3, MOVED)
    history.audit(FINAL_PROCESS, MOVED)
    result = history.check()
    assert result.passed, result.failures()
    assert result.opened and result.audits == 2 and result.final_audit == MOVED
    assert dict(result.transfers) == {"applied": 2, "refused": 1, "fail": 0, "info": 0}


def test_a_transfer_of_unknown_outcome_may_apply_or_not() -> None:
    for final in (OPEN, MOVED):
        history = opened()
        history.invoke_transfer(BANK_PROCESS_BASE, MOVED, OPEN)  # never answered
        history.audit(FINAL_PROCESS, final)
        assert history.check().passed


def test_an_audit_with_another_total_fails_the_bank() -> None:
    history = opened()
    half = {"bank/0": "90|0-1", "bank/1": "100|open"}
    history.transfer(BANK_PROCESS_BASE, MOVED, OPEN, revision=3)
    history.audit(BANK_PROCESS_BASE + 3, half)
    history.audit(FINAL_PROCESS, MOVED)
    result = history.check()
    assert not result.passed
    assert result.wrong_total_count == 1 and result.wrong_totals[0][1] == 190
    assert "total other than 200" in result.failures()[0]


def test_a_lost_acknowledged_transfer_breaks_the_per_account_order() -> None:
    history = opened()
    history.transfer(BANK_PROCESS_BASE, MOVED, OPEN, revision=3)
    history.audit(FINAL_PROCESS, OPEN)  # totals 200 all the same
    result = history.check()
    assert result.wrong_total_count == 0
    assert result.order.verdict == "no" and not result.passed


def test_a_failed_transfer_that_applied_breaks_the_per_account_order() -> None:
    history = opened()
    history.transfer(BANK_PROCESS_BASE, MOVED, OPEN, kind="fail", applied=None)
    history.audit(FINAL_PROCESS, MOVED)
    assert history.check().order.verdict == "no"


def test_without_the_final_audit_nothing_is_proven() -> None:
    history = opened()
    history.audit(BANK_PROCESS_BASE + 3, OPEN)
    result = history.check()
    assert not result.passed and "final audit" in result.failures()[0]


def test_a_transfer_s_puts_share_one_revision_in_the_watch_check() -> None:
    history = opened()
    history.transfer(BANK_PROCESS_BASE, MOVED, OPEN, revision=3)
    writes = writes_from_history(history.events)
    assert {(w.key, w.value, w.status, w.revision) for w in writes} == {
        ("bank/0", "100|open", "ok", 2), ("bank/1", "100|open", "ok", 2),
        ("bank/0", "90|0-1", "ok", 3), ("bank/1", "110|0-1", "ok", 3),
    }  # fmt: skip
    items = (
        WatchItem("put", 2, "bank/0", "100|open"), WatchItem("put", 2, "bank/1", "100|open"),
        WatchItem("put", 3, "bank/0", "90|0-1", 2), WatchItem("put", 3, "bank/1", "110|0-1", 2),
        WatchItem("progress", 3),
    )  # fmt: skip
    whole = WatchStream(0, 0, 1, "", 1, items, "stopped", None)
    assert check_watch([whole], writes).passed
    partial = WatchStream(1, 0, 1, "", 1, items[:3] + items[4:], "stopped", None)
    result = check_watch([partial, whole], writes)
    assert not result.passed and "atomic" in result.counts


@pytest.mark.slow
def test_transfers_applied_as_two_entries_are_caught(tmp_path: pathlib.Path) -> None:
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "8", "--seed", "1", "--nemesis", "none", "--no-watch",
        "--broken-bank", "split-transfer", "--report", str(report_dir),
    )  # fmt: skip
    assert "bank: violated" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["bank"]["wrong_total_count"] > 0
    assert summary["linearizable"] == "yes" and summary["set"]["lost"] == []
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])
