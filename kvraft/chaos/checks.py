"""The checks of a chaos history: the set check and the registers' linearizability.

Set check. Each ``add`` put one unique element; after healing, the final read
(``list`` pages) shows which elements the cluster kept. Every element whose
add was acknowledged (``ok``) must be there, or it is a *lost* write; every
element there must have been added (else it is *unexpected*, i.e. invented or
corrupted); an add answered ``fail`` (503: "nothing was applied") must not be
there either. Adds with an unknown outcome (``info``) may or may not be.

Registers. The ``read``/``write``/``cas`` events go through
`kvraft.linearizability.history_from_events` and `check_history` (a WGL search
per key) with a time budget; ``unknown`` (budget spent) is reported as such and
never counts as a pass.

Pure: events in, verdicts out. Malformed events raise
`kvraft.linearizability.HistoryError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.linearizability import (
    CheckResult,
    HistoryError,
    Operation,
    check_history,
    history_from_events,
)

__all__ = [
    "CHECK_TIME_BUDGET_S_DEFAULT",
    "REGISTER_FUNCTIONS",
    "SET_ADD",
    "SET_LIST",
    "SetCheck",
    "check_registers",
    "check_set",
    "pair_operations",
    "register_operations",
]

REGISTER_FUNCTIONS = frozenset({"read", "write", "cas"})
"""The operations of the register workload, checked for linearizability."""

SET_ADD = "add"
"""The set workload's operation: put one unique element."""

SET_LIST = "list"
"""One page of the set workload's final read; a completion carries ``last_page``."""

CHECK_TIME_BUDGET_S_DEFAULT = 120.0
"""How long the linearizability search may take before it answers ``unknown``: far more than
a 60 s run's history needs (seconds), and bounded so a pathological one still ends."""


@dataclass(frozen=True, slots=True)
class SetCheck:
    """The set check's result.

    Fields:
        attempted: elements whose add was sent.
        acknowledged, failed, unknown: adds that ended ``ok``, ``fail``, ``info`` (an add
            left without a completion counts as unknown).
        present: elements the final read found.
        lost: acknowledged elements the final read did not find (sorted).
        unexpected: elements found that no add ever sent (sorted).
        failed_present: elements found whose add was answered ``fail`` (sorted).
        unknown_present: unknown adds that the final read found (they did land).
        final_read_complete: the final read got every page; without it nothing is proven.
    """

    attempted: int
    acknowledged: int
    failed: int
    unknown: int
    present: int
    lost: tuple[str, ...]
    unexpected: tuple[str, ...]
    failed_present: tuple[str, ...]
    unknown_present: int
    final_read_complete: bool

    @property
    def passed(self) -> bool:
        """Every acknowledged element survived and nothing else appeared."""
        return (
            self.final_read_complete
            and not self.lost
            and not self.unexpected
            and not self.failed_present
        )


def pair_operations(
    events: Iterable[Mapping[str, Any]], functions: frozenset[str]
) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """(invoke, completion or None) for each operation whose ``f`` is in `functions`: an
    invoke pairs with its process's next completion; operations left open come last."""
    pending: dict[object, Mapping[str, Any]] = {}
    for number, event in enumerate(events):
        f = event.get("f")
        if not isinstance(f, str) or f not in functions:
            continue
        process = event.get("process")
        if not isinstance(process, int) or isinstance(process, bool):
            raise HistoryError(f"event {number}: process must be an int, got {process!r}")
        if event.get("type") == "invoke":
            if process in pending:
                raise HistoryError(
                    f"event {number}: process {process} invoked again before its previous "
                    "operation completed"
                )
            pending[process] = event
        elif event.get("type") in ("ok", "fail", "info"):
            if process not in pending:
                raise HistoryError(
                    f"event {number}: process {process} completed an operation it never invoked"
                )
            yield pending.pop(process), event
        else:
            raise HistoryError(f"event {number}: unknown event type {event.get('type')!r}")
    for invoke in pending.values():
        yield invoke, None


def _element(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise HistoryError(f"{what}: a set element must be a string, got {value!r}")
    return value


def check_set(events: Iterable[Mapping[str, Any]]) -> SetCheck:
    """Compare what the set workload added with what its final read found."""
    outcome_of: dict[str, str] = {}
    present: set[str] = set()
    final_read_complete = False
    for invoke, completion in pair_operations(events, frozenset({SET_ADD, SET_LIST})):
        status = "info" if completion is None else str(completion["type"])
        if invoke.get("f") == SET_ADD:
            element = _element(invoke.get("value"), "add")
            if element in outcome_of:
                raise HistoryError(f"element {element!r} was added twice; elements must be unique")
            outcome_of[element] = status
            continue
        if completion is None or status != "ok":
            continue
        found = completion.get("output")
        if not isinstance(found, list):
            raise HistoryError(f"a list page's output must be a list, got {found!r}")
        present.update(_element(item, "list") for item in found)
        if completion.get("last_page") is True:
            final_read_complete = True
    statuses = list(outcome_of.values())
    return SetCheck(
        attempted=len(outcome_of),
        acknowledged=statuses.count("ok"),
        failed=statuses.count("fail"),
        unknown=statuses.count("info"),
        present=len(present),
        lost=tuple(sorted(e for e, s in outcome_of.items() if s == "ok" and e not in present)),
        unexpected=tuple(sorted(e for e in present if e not in outcome_of)),
        failed_present=tuple(
            sorted(e for e, s in outcome_of.items() if s == "fail" and e in present)
        ),
        unknown_present=sum(1 for e, s in outcome_of.items() if s == "info" and e in present),
        final_read_complete=final_read_complete,
    )


def register_operations(events: Sequence[Mapping[str, Any]]) -> list[Operation]:
    """The register workload's operations, paired by the checker's own rules."""
    return history_from_events([event for event in events if event.get("f") in REGISTER_FUNCTIONS])


def check_registers(
    events: Sequence[Mapping[str, Any]],
    time_budget_s: float = CHECK_TIME_BUDGET_S_DEFAULT,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """The linearizability verdict of the register workload (a register per key)."""
    return check_history(register_operations(events), time_budget_s=time_budget_s, clock=clock)
