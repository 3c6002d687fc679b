"""Watch clients in the simulator, and the checker of what they saw.

Each simulated node keeps the daemon's own `kvraft.watch.WatchHub`, fed by its shell. A few
watch clients each hold a watcher on one node, take what it hands out every few steps (as
the HTTP stream would), note progress bookmarks, and move: when their node crashes, when
their stream says `Lagged`, and now and then for no reason, they resume on a random live
node from the revision after the last one they saw. A resume below what that node keeps
(`CompactedError`) is recorded as an explicit gap, as a real client would list again.

The truth is what the nodes applied: for every revision, the changes the first node to
apply it reported (State Machine Safety makes every node report the same). At the end of a
run each client's record is checked against it, with etcd's robustness properties:

- ordered: revisions never go back; unique: no (revision, key) twice;
- atomic: a revision's changes come together, all of them;
- bookmarkable: nothing at or below an announced progress revision comes after it;
- reliable and resumable: between where the client started and where it ended, every
  revision with a change it watches was handed to it, except inside an announced gap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvraft.sim.checkers import Violation
from kvraft.statemachine import Change
from kvraft.watch import CompactedError, Lagged, Watcher, WatchHub

__all__ = ["SimWatchers", "WatchRecord"]

TAKE_EVERY_STEPS = 5
"""How often a client takes what its watcher has (a stream's reader is not instant)."""

MOVE_PROBABILITY = 0.002
"""Per take: a client moves to another node although nothing happened to its own."""

PROGRESS_PROBABILITY = 0.2
"""Per empty take: the client notes a progress bookmark, as a stream's timer would."""


@dataclass(slots=True)
class WatchRecord:
    """What one client saw, in order: ("change", Change), ("progress", revision),
    ("lagged", revision) (a stream's end, with the same promise as progress), ("resume",
    revision) and ("gap", first_missing, last_missing)."""

    client: int
    items: list[tuple[object, ...]] = field(default_factory=list)


@dataclass(slots=True)
class _Client:
    record: WatchRecord
    node_id: int = 0
    hub: WatchHub | None = None
    watcher: Watcher | None = None
    next_revision: int | None = None
    """Where to resume: the revision after the last one handed out (None: the node's next)."""
    skip_next: bool = False


class SimWatchers:
    """The watch clients of one run, and the truth they are checked against."""

    def __init__(self, rng: random.Random, count: int, *, skip_after_resume: bool = False):
        self.rng = rng
        self.truth: dict[int, tuple[Change, ...]] = {}
        self.clients = [_Client(WatchRecord(number)) for number in range(count)]
        self.skip_after_resume = skip_after_resume
        """Test-only bug: drop the first change after each resume (the checker must see it)."""

    def applied(self, revision: int, changes: tuple[Change, ...]) -> None:
        """Some node applied `revision` with `changes`."""
        first = self.truth.setdefault(revision, changes)
        if first != changes:
            raise Violation(
                "watch agreement", f"revision {revision} changed {changes} here, {first} elsewhere"
            )

    def step(self, now: int, hubs: dict[int, WatchHub | None]) -> None:
        """`hubs`: each node's hub, None for a node that is down."""
        if now % TAKE_EVERY_STEPS:
            return
        for client in self.clients:
            self._drive(client, hubs)

    def _drive(self, client: _Client, hubs: dict[int, WatchHub | None]) -> None:
        hub = hubs.get(client.node_id)
        if client.watcher is None or hub is not client.hub:
            self._connect(client, hubs)  # its node crashed or restarted: a new stream
        watcher = client.watcher
        if watcher is None:
            return
        taken = watcher.take()
        if isinstance(taken, Lagged):
            # The stream's last words: everything up to `revision` was handed out.
            client.record.items.append(("lagged", taken.revision))
            client.next_revision = taken.revision + 1
            self._connect(client, hubs)
            return
        for change in taken:
            if client.skip_next:
                client.skip_next = False
                continue
            client.record.items.append(("change", change))
        if taken:
            client.next_revision = taken[-1].revision + 1
        elif self.rng.random() < PROGRESS_PROBABILITY:
            client.record.items.append(("progress", watcher.progress_revision))
            client.next_revision = max(client.next_revision or 0, watcher.progress_revision + 1)
        if self.rng.random() < MOVE_PROBABILITY:
            self._connect(client, hubs)

    def _connect(self, client: _Client, hubs: dict[int, WatchHub | None]) -> None:
        if client.watcher is not None and client.hub is not None:
            client.hub.cancel(client.watcher)
        client.watcher = client.hub = None
        alive = sorted(node_id for node_id, hub in hubs.items() if hub is not None)
        if not alive:
            return
        node_id = self.rng.choice(alive)
        hub = hubs[node_id]
        assert hub is not None
        start = client.next_revision
        try:
            watcher = hub.watch(start_revision=start)
        except CompactedError as error:
            # A real client lists again at the node's revision and watches from there on:
            # what lies between is announced, not silently skipped.
            assert start is not None
            client.record.items.append(("gap", start, error.compact_revision))
            start = error.compact_revision + 1
            watcher = hub.watch(start_revision=start)
        if start is None:
            start = watcher.position
        client.record.items.append(("resume", start))
        client.node_id, client.hub, client.watcher = node_id, hub, watcher
        client.next_revision = start
        client.skip_next = self.skip_after_resume and len(client.record.items) > 1

    def drain(self, hubs: dict[int, WatchHub | None]) -> None:
        """After the run: every client takes what its node has (all nodes caught up)."""
        for client in self.clients:
            if client.watcher is None or hubs.get(client.node_id) is not client.hub:
                self._connect(client, hubs)
            watcher = client.watcher
            if watcher is None:
                continue
            while True:
                taken = watcher.take()
                if isinstance(taken, Lagged):
                    client.record.items.append(("lagged", taken.revision))
                    client.next_revision = taken.revision + 1
                    self._connect(client, hubs)
                    watcher = client.watcher
                    if watcher is None:
                        break
                    continue
                if not taken:
                    break
                client.record.items.extend(("change", change) for change in taken)
            if watcher is not None:
                client.record.items.append(("progress", watcher.progress_revision))

    # --- the checker --------------------------------------------------------------------

    def check(self) -> None:
        for client in self.clients:
            self.check_record(client.record)

    def check_record(self, record: WatchRecord) -> None:
        def missed(first: int, last: int) -> None:
            """No revision in first..last may have a change this client should have seen."""
            for revision in range(first, last + 1):
                if self.truth.get(revision):
                    raise Violation(
                        "watch reliable",
                        f"client {record.client} never got revision {revision} "
                        f"({self.truth[revision]}); it went on at {last + 1}",
                    )

        position: int | None = None  # the next revision the client is owed
        bookmark = 0
        seen: set[tuple[int, str]] = set()
        current: list[Change] = []  # the changes of the revision being received

        def close_revision() -> None:
            if current:
                expected = self.truth.get(current[0].revision, ())
                if tuple(current) != expected:
                    raise Violation(
                        "watch atomic",
                        f"client {record.client} got {current} for revision "
                        f"{current[0].revision}, which changed {expected}",
                    )
                current.clear()

        for kind, *values in record.items:
            if kind == "resume":
                close_revision()
                (start,) = values
                assert isinstance(start, int)
                if position is not None and start != position:
                    raise Violation(
                        "watch resumable",
                        f"client {record.client} resumed at {start}, owed {position}",
                    )
                position = start
            elif kind == "gap":
                close_revision()
                first_missing, last_missing = values
                assert isinstance(first_missing, int) and isinstance(last_missing, int)
                position = max(position or 0, last_missing + 1)
            elif kind in ("progress", "lagged"):
                close_revision()
                (revision,) = values
                assert isinstance(revision, int)
                if position is not None and revision >= position:
                    missed(position, revision)
                    position = revision + 1
                bookmark = max(bookmark, revision)
            else:
                (change,) = values
                assert isinstance(change, Change)
                if current and change.revision != current[0].revision:
                    close_revision()
                if (change.revision, change.key) in seen:
                    raise Violation("watch unique", f"client {record.client} got {change} twice")
                seen.add((change.revision, change.key))
                if change.revision <= bookmark:
                    raise Violation(
                        "watch bookmarkable",
                        f"client {record.client} got revision {change.revision} after "
                        f"progress {bookmark}",
                    )
                if position is not None and change.revision < position and not current:
                    raise Violation(
                        "watch ordered",
                        f"client {record.client} got revision {change.revision}, owed "
                        f"{position} or later",
                    )
                if not current:
                    if position is not None:
                        missed(position, change.revision - 1)
                    position = change.revision + 1
                current.append(change)
        close_revision()
