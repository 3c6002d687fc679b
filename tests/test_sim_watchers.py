"""The simulator's watch checker (`kvraft.sim.watchers`): each property, kept and broken."""

from __future__ import annotations

import random

import pytest

from kvraft.sim.checkers import Violation
from kvraft.sim.watchers import SimWatchers, WatchRecord
from kvraft.statemachine import Change


def change(revision: int, key: str = "k") -> Change:
    return Change("put", key, revision, None, f"v{revision}".encode())


def checker() -> SimWatchers:
    watchers = SimWatchers(random.Random(0), 0)
    watchers.applied(1, (change(1),))
    watchers.applied(2, ())
    watchers.applied(3, (change(3), change(3, "other")))
    watchers.applied(4, (change(4),))
    return watchers


def record(*items: tuple[object, ...]) -> WatchRecord:
    return WatchRecord(0, list(items))


def test_a_faithful_record_passes() -> None:
    checker().check_record(
        record(
            ("resume", 1),
            ("change", change(1)),
            ("progress", 2),
            ("resume", 3),
            ("change", change(3)),
            ("change", change(3, "other")),
            ("lagged", 3),
            ("gap", 4, 4),  # announced: a real client lists again
            ("resume", 5),
        )
    )


@pytest.mark.parametrize(
    ("items", "property_name"),
    [
        ([("resume", 1), ("change", change(3)), ("change", change(3, "other"))], "reliable"),
        ([("resume", 1), ("change", change(1)), ("change", change(1))], "unique"),
        ([("resume", 1), ("change", change(1)), ("change", change(3))], "atomic"),
        ([("resume", 1), ("progress", 1)], "reliable"),
        ([("resume", 2), ("progress", 2), ("change", change(1))], "bookmarkable"),
        ([("resume", 1), ("change", change(1)), ("resume", 3)], "resumable"),
        (
            [
                ("resume", 3),
                ("change", change(3)),
                ("change", change(3, "other")),
                ("change", change(1)),
            ],
            "ordered",
        ),
        ([("resume", 2), ("progress", 4)], "reliable"),
    ],
)
def test_each_broken_property_is_named(items: list[tuple[object, ...]], property_name: str) -> None:
    with pytest.raises(Violation) as found:
        checker().check_record(record(*items))
    assert found.value.property_name == f"watch {property_name}"


def test_nodes_that_report_different_changes_for_one_revision_disagree() -> None:
    watchers = checker()
    with pytest.raises(Violation) as found:
        watchers.applied(1, (change(1, "else"),))
    assert found.value.property_name == "watch agreement"
