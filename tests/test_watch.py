"""`kvraft.watch.WatchHub`: what a watcher gets from the changes a node applies."""

from __future__ import annotations

import pytest

from kvraft.statemachine import (
    Change,
    KVStateMachine,
    PlainPut,
    encode_delete,
    encode_put,
    plain_put_change,
)
from kvraft.watch import CompactedError, Lagged, TooManyWatchersError, WatchHub, change_json


def put(key: str, revision: int, value: bytes = b"v", prev: int | None = None) -> Change:
    return Change("put", key, revision, prev, value)


def test_a_watcher_gets_matching_changes_in_revision_order_once() -> None:
    hub = WatchHub(0)
    watcher = hub.watch(prefix="a/")
    hub.record(1, (put("a/1", 1),))
    hub.record(2, (put("b/1", 2),))
    hub.record(3, ())  # a no-op entry
    hub.record(4, (put("a/2", 4),))
    assert [c.revision for c in watcher.take()] == [1, 4]
    assert watcher.take() == []
    assert watcher.progress_revision == 4
    hub.record(5, (put("a/1", 5, prev=1),))
    (change,) = watcher.take()
    assert (change.revision, change.prev_revision) == (5, 1)


def test_the_changes_of_one_revision_are_never_split() -> None:
    hub = WatchHub(0)
    watcher = hub.watch()
    hub.record(1, (put("a", 1), put("b", 1), put("c", 1)))
    hub.record(2, (put("d", 2),))
    first = watcher.take(changes_max=2)
    assert [c.key for c in first] == ["a", "b", "c"]
    assert [c.key for c in watcher.take(changes_max=2)] == ["d"]


def test_a_watch_from_an_earlier_revision_replays_the_history() -> None:
    hub = WatchHub(0)
    for revision in range(1, 6):
        hub.record(revision, (put("k", revision),))
    watcher = hub.watch(key="k", start_revision=3)
    assert [c.revision for c in watcher.take()] == [3, 4, 5]


def test_a_watch_from_a_revision_not_applied_yet_waits_for_it() -> None:
    hub = WatchHub(0)
    hub.record(1, (put("k", 1),))
    watcher = hub.watch(start_revision=3)
    hub.record(2, (put("k", 2),))
    assert watcher.take() == []
    hub.record(3, (put("k", 3),))
    assert [c.revision for c in watcher.take()] == [3]


def test_a_watch_below_the_kept_history_is_refused_with_the_compact_revision() -> None:
    hub = WatchHub(10, history_revisions_max=2)
    with pytest.raises(CompactedError) as refused:
        hub.watch(start_revision=10)
    assert refused.value.compact_revision == 10
    for revision in range(11, 15):
        hub.record(revision, (put("k", revision),))
    assert hub.compact_revision == 12
    with pytest.raises(CompactedError):
        hub.watch(start_revision=12)
    assert [c.revision for c in hub.watch(start_revision=13).take()] == [13, 14]


def test_a_watcher_the_history_left_behind_is_told_where_to_resume() -> None:
    hub = WatchHub(0, history_revisions_max=3)
    woken: list[int] = []
    watcher = hub.watch(on_change=lambda: woken.append(1))
    hub.record(1, (put("k", 1),))
    assert [c.revision for c in watcher.take()] == [1]
    for revision in range(2, 7):
        hub.record(revision, (put("k", revision),))
    assert watcher.take() == Lagged(1)
    assert len(woken) == 6
    with pytest.raises(CompactedError):
        hub.watch(start_revision=2)


def test_history_is_bounded_by_bytes() -> None:
    hub = WatchHub(0, history_bytes_max=3_000)
    for revision in range(1, 11):
        hub.record(revision, (put("k", revision, value=b"x" * 1_000),))
    assert hub.history_bytes <= 3_000
    assert hub.compact_revision >= 8


def test_a_snapshot_installed_restarts_the_history() -> None:
    hub = WatchHub(0)
    watcher = hub.watch()
    hub.record(1, (put("k", 1),))
    hub.restart(50)
    assert watcher.take() == Lagged(0)
    assert [c.revision for c in hub.watch(start_revision=51).take()] == []


def test_watchers_are_limited() -> None:
    hub = WatchHub(0, watchers_max=2)
    first = hub.watch()
    hub.watch()
    with pytest.raises(TooManyWatchersError):
        hub.watch()
    hub.cancel(first)
    hub.watch()


def test_the_state_machine_reports_each_change_with_its_previous_revision() -> None:
    machine = KVStateMachine()
    created = machine.apply(1, encode_put("k", b"one"))
    updated = machine.apply(2, encode_put("k", b"two"))
    deleted = machine.apply(3, encode_delete("k"))
    absent = machine.apply(4, encode_delete("k"))
    assert created.changes == (Change("put", "k", 1, None, b"one"),)
    assert updated.changes == (Change("put", "k", 2, 1, b"two"),)
    assert deleted.changes == (Change("delete", "k", 3, 2),)
    assert absent.changes == ()  # nothing changed


def test_an_idempotent_retry_changes_nothing_again() -> None:
    machine = KVStateMachine()
    first = machine.apply(1, encode_put("k", b"v", idempotency_key="once"))
    again = machine.apply(2, encode_put("k", b"v", idempotency_key="once"))
    assert first.changes and again.changes == ()


def test_changes_as_the_http_api_writes_them() -> None:
    assert change_json(Change("put", "k", 7, None, b"\x00hi")) == {
        "type": "put",
        "key": "k",
        "value_b64": "AGhp",
        "revision": 7,
        "prev_revision": None,
    }
    assert change_json(Change("delete", "k", 8, 7)) == {
        "type": "delete",
        "key": "k",
        "revision": 8,
        "prev_revision": 7,
    }


def test_progress_never_goes_below_where_the_watch_started() -> None:
    # A watcher that came from a node further ahead starts above what this node applied:
    # its bookmarks must not send it back (as an SSE id, they would).
    hub = WatchHub(0)
    hub.record(1, (put("k", 1),))
    watcher = hub.watch(start_revision=10)
    assert watcher.take() == []
    assert watcher.progress_revision == 9


def test_the_history_lets_go_of_evicted_values_at_once() -> None:
    # The history is bounded by bytes, and so must be the memory behind it: evicted values
    # were once kept until 1,024 revisions had been evicted (1 GiB with 1 MiB values).
    import tracemalloc

    value_bytes = 100 * 1024
    hub = WatchHub(0, history_bytes_max=10 * value_bytes)
    tracemalloc.start()
    try:
        for revision in range(1, 501):
            hub.record(revision, (put(f"k{revision % 7}", revision, value=b"v" * value_bytes),))
        held_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hub.history_bytes <= 10 * value_bytes
    assert held_bytes < 20 * value_bytes  # the kept history and some bookkeeping, not 500


def _plain_puts(first_revision: int, count: int) -> list[PlainPut]:
    return [
        (revision, f"key/{revision % 5}", None if revision % 3 else revision - 2, b"v" * revision)
        for revision in range(first_revision, first_revision + count)
    ]


def _everything(hub: WatchHub) -> list[Change] | Lagged:
    watcher = hub.watch(start_revision=hub.compact_revision + 1)
    history: list[Change] = []
    while True:
        taken = watcher.take(changes_max=3)
        if not isinstance(taken, list):
            return taken
        if not taken:
            return history
        history += taken


@pytest.mark.parametrize(
    ("revisions_max", "bytes_max"), [(100, 1 << 20), (4, 1 << 20), (100, 300), (2, 150), (1, 1)]
)
@pytest.mark.parametrize("watching", [False, True])
def test_plain_puts_recorded_at_once_make_the_history_one_by_one_makes(
    revisions_max: int, bytes_max: int, watching: bool
) -> None:
    hubs = [
        WatchHub(10, history_revisions_max=revisions_max, history_bytes_max=bytes_max)
        for _ in range(2)
    ]
    woken = [0, 0]
    watchers = [
        hub.watch(prefix="key/1", on_change=lambda at=at: woken.__setitem__(at, woken[at] + 1))
        for at, hub in enumerate(hubs)
        if watching
    ]
    runs = [_plain_puts(11, 7), [], _plain_puts(18, 1), _plain_puts(25, 9)]
    for run in runs:
        hubs[0].record_plain_puts(run)
        for put in run:
            hubs[1].record(put[0], (plain_put_change(put),))
        if run is runs[2]:
            for hub in hubs:  # a revision with a delete between the runs
                hub.record(20, (Change("delete", "key/1", 20, 16),))
                hub.record(24, ())  # and one that changed nothing
    for hub in hubs:
        assert hub.applied_revision == 33
    assert hubs[0].compact_revision == hubs[1].compact_revision
    assert hubs[0].history_bytes == hubs[1].history_bytes
    assert _everything(hubs[0]) == _everything(hubs[1])
    assert woken[0] == woken[1]
    if watching:
        assert woken[0] > 0
        # The watchers from before the puts see the same changes, or lag alike.
        assert watchers[0].take() == watchers[1].take()


def test_plain_puts_are_refused_unless_their_revisions_increase() -> None:
    hub = WatchHub(10)
    with pytest.raises(ValueError, match="not increasing"):
        hub.record_plain_puts(_plain_puts(10, 2))
    with pytest.raises(ValueError, match="not increasing"):
        hub.record_plain_puts([*_plain_puts(11, 2), *_plain_puts(12, 1)])
    assert hub.applied_revision == 10
    assert hub.history_bytes == 0


@pytest.mark.parametrize(
    ("revisions_max", "bytes_max"), [(100, 1 << 20), (4, 1 << 20), (100, 300), (2, 150), (1, 1)]
)
def test_the_history_is_what_evicting_after_every_record_leaves(
    revisions_max: int, bytes_max: int
) -> None:
    """The model: after each revision recorded, the oldest go while either bound is passed."""
    kept: list[tuple[int, int]] = []  # (revision, size in bytes)
    compact_revision = 0
    hub = WatchHub(0, history_revisions_max=revisions_max, history_bytes_max=bytes_max)
    for run in (_plain_puts(1, 40), _plain_puts(41, 3), _plain_puts(44, 70)):
        hub.record_plain_puts(run)
        for revision, key, _, value in run:
            kept.append((revision, 64 + len(key) + len(value)))
            while kept and (len(kept) > revisions_max or sum(s for _, s in kept) > bytes_max):
                compact_revision = kept.pop(0)[0]
    assert hub.compact_revision == compact_revision
    assert hub.history_bytes == sum(size for _, size in kept)
    history = _everything(hub)
    assert isinstance(history, list)
    assert [change.revision for change in history] == [revision for revision, _ in kept]
