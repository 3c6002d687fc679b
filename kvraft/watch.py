"""Watch: a node's committed changes, in revision order, for whoever asks.

Theory of operation
-------------------
Every node applies the same committed log, so every node can serve a watch from its own
applied state: the stream of changes is the state machine's output, and a change's
revision is the log index of the command that made it. `WatchHub` sits beside the state
machine and is told, for every applied entry in order, which keys it changed
(`record`; a run of plain puts nobody waited on at once, `record_plain_puts`, whose
`Change`s are built only when a watcher reads them). It keeps the most recent changes
(the *history*, bounded by revisions and by bytes) and its watchers.

A `Watcher` is only a position in that history: the first revision it has not examined
yet, and a filter (a key, or a prefix). `take()` walks the history from the position and
hands out the matching changes of whole revisions (a revision is never split), so there is
no per-watcher copy of anything and a slow reader costs nothing until the history moves on
without it. Then it is *lagged*: the changes it needed next were evicted, and `take()`
says so (`Lagged(revision)`: everything up to `revision` was handed out); it may resume
from `revision + 1` if the history still reaches back that far, else it gets
`CompactedError` and must list again. An event is never skipped silently.

What a watcher can count on, on any node:

- ordered and unique: positions only move forward, and each revision is examined once;
- atomic: the changes of one revision come out together;
- bookmarkable: after a `take()` that returns nothing more, every matching change up to
  `position - 1` has been handed out (`progress_revision`);
- reliable and resumable: a watch from revision R gets every matching change with a
  revision >= R that this node applies, or an explicit `CompactedError`/`Lagged`;
- no past served as present: a watch from a revision ahead of what the node applied waits
  for the node to apply it (a lagging follower hands out nothing it has not applied).

The history restarts with the node: it then reaches back to the newest snapshot, and the
log replayed at start refills it. A snapshot installed from the leader replaces the state
wholesale, so the history restarts there too (`restart`).

No IO and no clock: the HTTP layer (`kvraft.http_api`) turns changes into NDJSON or
Server-Sent Events and decides when to send progress; the simulator drives the same hub.
"""

from __future__ import annotations

import base64
import bisect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvraft.raft.messages import Entry, SnapshotMeta
from kvraft.statemachine import ApplyResult, Change, PlainPut, plain_put_change

if TYPE_CHECKING:  # the shell is what feeds a hub; the hub needs none of it at run time
    from kvraft.shell import NodeShell

__all__ = [
    "WATCHERS_MAX_DEFAULT",
    "WATCH_HISTORY_BYTES_MAX_DEFAULT",
    "WATCH_HISTORY_REVISIONS_MAX_DEFAULT",
    "WATCH_TAKE_CHANGES_MAX",
    "CompactedError",
    "Lagged",
    "TooManyWatchersError",
    "WatchHub",
    "Watcher",
    "change_json",
    "changes_of",
]

WATCH_HISTORY_REVISIONS_MAX_DEFAULT = 100_000
"""Revisions with changes kept for watchers (oldest evicted first)."""

WATCH_HISTORY_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
"""Bytes of keys and values kept for watchers (oldest revisions evicted first)."""

WATCHERS_MAX_DEFAULT = 10_000
"""Watchers one node serves at once; past it a new watch is refused (503)."""

WATCH_TAKE_CHANGES_MAX = 1_000
"""About how many changes one `take()` hands out: whole revisions, so one more revision
may push it over."""

_CHANGE_OVERHEAD_BYTES = 64
"""What a change costs in memory beyond its key and value, for the byte budget."""


class CompactedError(Exception):
    """The watch starts at or below `compact_revision`, whose changes are no longer kept:
    list the keys again (at a revision R >= compact_revision) and watch from R + 1."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"changes up to revision {compact_revision} are no longer kept")
        self.compact_revision = compact_revision


class TooManyWatchersError(Exception):
    """The node serves as many watchers as it may (`watchers_max`)."""


@dataclass(frozen=True, slots=True)
class Lagged:
    """The watcher fell behind the history: every matching change up to `revision` was
    handed out, the ones after it are gone from here. Resume from `revision + 1`."""

    revision: int


def changes_of(entry: Entry, result: object) -> tuple[Change, ...]:
    """What applying `entry` changed, given the state machine's `result`. An idempotent retry
    is answered with the original's result: its changes happened at the original's index,
    not again at this one."""
    if isinstance(result, ApplyResult) and result.index == entry.index:
        return result.changes
    return ()


def change_json(change: Change) -> dict[str, Any]:
    """A change as the HTTP API writes it (one NDJSON line or one SSE `data:`)."""
    if change.kind == "put":
        assert change.value is not None
        return {
            "type": "put",
            "key": change.key,
            "value_b64": base64.b64encode(change.value).decode("ascii"),
            "revision": change.revision,
            "prev_revision": change.prev_revision,
        }
    return {
        "type": "delete",
        "key": change.key,
        "revision": change.revision,
        "prev_revision": change.prev_revision,
    }


class Watcher:
    """One watch: a filter and a position in its hub's history. Create with
    `WatchHub.watch`; end with `WatchHub.cancel`."""

    __slots__ = ("_hub", "key", "on_change", "position", "prefix", "start")

    def __init__(
        self,
        hub: WatchHub,
        prefix: str,
        key: str | None,
        position: int,
        on_change: Callable[[], None] | None,
    ) -> None:
        self._hub = hub
        self.prefix = prefix
        self.key = key
        self.position = position
        """The first revision not examined yet."""
        self.start = position
        """The revision the watch started from."""
        self.on_change = on_change
        """Called (with no arguments) when a change it matches is recorded."""

    def matches(self, key: str) -> bool:
        return key == self.key if self.key is not None else key.startswith(self.prefix)

    def take(self, changes_max: int = WATCH_TAKE_CHANGES_MAX) -> list[Change] | Lagged:
        """The matching changes from the position on, whole revisions, about `changes_max`
        of them at most; or `Lagged` if the history no longer reaches back to the position."""
        return self._hub._take(self, changes_max)

    @property
    def progress_revision(self) -> int:
        """Every matching change at or below this revision has been handed out (when the
        last `take()` returned all there was)."""
        # Never below where the watch started: nothing before it was asked for, and a
        # bookmark that went back (a node behind the one the watcher came from) would send
        # an SSE client back to revisions it already has.
        examined = min(self.position, self._hub.applied_revision + 1) - 1
        return max(examined, self.start - 1)


class WatchHub:
    """The history of one node's recent changes and its watchers; see the module docstring."""

    def __init__(
        self,
        applied_revision: int,
        *,
        history_revisions_max: int = WATCH_HISTORY_REVISIONS_MAX_DEFAULT,
        history_bytes_max: int = WATCH_HISTORY_BYTES_MAX_DEFAULT,
        watchers_max: int = WATCHERS_MAX_DEFAULT,
    ) -> None:
        self.history_revisions_max = history_revisions_max
        self.history_bytes_max = history_bytes_max
        self.watchers_max = watchers_max
        self.applied_revision = applied_revision
        """Every change up to here has been recorded."""
        self.compact_revision = applied_revision
        """Changes at or below this revision are not kept (a watch must start above it)."""
        # The history: revisions in increasing order, each with its changes. A list with a
        # moving start (`_first`) rather than a deque, so a position is found by bisection.
        # A plain put's changes may be its bare `PlainPut` (`record_plain_puts`), turned into
        # its `Change` when a watcher first reads it (`_changes_at`).
        self._revisions: list[int] = []
        self._changes: list[tuple[Change, ...] | PlainPut] = []
        self._sizes_bytes: list[int] = []
        self._first = 0
        self.history_bytes = 0
        self._watchers: set[Watcher] = set()

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def follow(self, shell: NodeShell) -> None:
        """Record every entry `shell` applies from now on, and restart at every snapshot it
        installs from the leader (the daemon and the simulator wire a node this way)."""
        shell.followers.append(self)
        shell.on_restore.append(self._restarted)

    def applied(self, entry: Entry, result: object) -> None:
        """The shell applied `entry` with `result` (`kvraft.shell.ApplyFollower`)."""
        self.record(entry.index, changes_of(entry, result))

    def applied_plain_puts(self, puts: Sequence[PlainPut], entries: Sequence[Entry]) -> None:
        """The shell applied these plain puts, in order (`kvraft.shell.ApplyFollower`); the
        puts say all the history keeps of them."""
        self.record_plain_puts(puts)

    def _restarted(self, meta: SnapshotMeta) -> None:
        self.restart(meta.index)

    # --- fed by the node, in applied order ---------------------------------------------

    def record(self, revision: int, changes: tuple[Change, ...]) -> None:
        """Entry `revision` was applied and changed `changes` (none for most non-writes)."""
        if revision <= self.applied_revision:
            raise ValueError(f"revision {revision} is not above {self.applied_revision}")
        self.applied_revision = revision
        if not changes:
            return
        if len(changes) == 1:  # most entries: one put or delete (no generator to set up)
            value = changes[0].value
            size_bytes = _CHANGE_OVERHEAD_BYTES + len(changes[0].key) + (len(value) if value else 0)
        else:
            size_bytes = sum(
                _CHANGE_OVERHEAD_BYTES + len(c.key) + (len(c.value) if c.value else 0)
                for c in changes
            )
        self._revisions.append(revision)
        self._changes.append(changes)
        self._sizes_bytes.append(size_bytes)
        self.history_bytes += size_bytes
        if (
            len(self._revisions) - self._first > self.history_revisions_max
            or self.history_bytes > self.history_bytes_max
        ):
            self._evict()
        for watcher in self._watchers:
            if watcher.on_change is not None and any(watcher.matches(c.key) for c in changes):
                watcher.on_change()

    def record_plain_puts(self, puts: Sequence[PlainPut]) -> None:
        """Plain puts were applied, in this order (`KVStateMachine.apply_plain_puts`): exactly
        `record(revision, (plain_put_change(put),))` of each, in one step. Their `Change`s
        are built only if a watcher reads them: replaying a million entries at a restart, the
        history keeps the newest `history_revisions_max` of them and nobody reads them."""
        if not puts:
            return
        if self._watchers:
            # A watcher is told of each matching revision as it is recorded, as always.
            for put in puts:
                self.record(put[0], (plain_put_change(put),))
            return
        revisions = [put[0] for put in puts]
        # Checked before anything changes, as `record` checks each revision.
        if revisions[0] <= self.applied_revision or not all(
            map(operator.lt, revisions, revisions[1:])
        ):
            raise ValueError(
                f"revisions {revisions[0]}..{revisions[-1]} are not increasing from above "
                f"{self.applied_revision}"
            )
        sizes_bytes = [_CHANGE_OVERHEAD_BYTES + len(put[1]) + len(put[3]) for put in puts]
        self.applied_revision = revisions[-1]
        self._revisions += revisions
        self._changes += puts
        self._sizes_bytes += sizes_bytes
        self.history_bytes += sum(sizes_bytes)
        if (
            len(self._revisions) - self._first > self.history_revisions_max
            or self.history_bytes > self.history_bytes_max
        ):
            # Once for all of them: the oldest revisions beyond the bounds are the same
            # whether they were evicted after each record or after the last (a shorter
            # history never holds more than a longer one that ends later).
            self._evict()

    def restart(self, revision: int) -> None:
        """The state was replaced by a snapshot at `revision` (installed from the leader):
        nothing before it can be told change by change any more."""
        self._revisions, self._changes, self._sizes_bytes = [], [], []
        self._first = 0
        self.history_bytes = 0
        self.applied_revision = self.compact_revision = revision
        for watcher in self._watchers:
            if watcher.on_change is not None:
                watcher.on_change()  # it may be lagged now: let it find out

    # --- watchers -----------------------------------------------------------------------

    def watch(
        self,
        *,
        prefix: str = "",
        key: str | None = None,
        start_revision: int | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> Watcher:
        """A watcher of `key` (or of every key under `prefix`) from `start_revision` (default:
        the next revision this node applies). Raises `CompactedError` if the history no
        longer reaches back to it, `TooManyWatchersError` past `watchers_max`."""
        start = self.applied_revision + 1 if start_revision is None else start_revision
        if start <= self.compact_revision:
            raise CompactedError(self.compact_revision)
        if len(self._watchers) >= self.watchers_max:
            raise TooManyWatchersError(f"this node serves {self.watchers_max} watchers already")
        watcher = Watcher(self, prefix, key, start, on_change)
        self._watchers.add(watcher)
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def _take(self, watcher: Watcher, changes_max: int) -> list[Change] | Lagged:
        if watcher.position <= self.compact_revision:
            return Lagged(watcher.position - 1)
        revisions = self._revisions
        at = bisect.bisect_left(revisions, watcher.position, lo=self._first)
        taken: list[Change] = []
        while at < len(revisions) and len(taken) < changes_max:
            taken.extend(c for c in self._changes_at(at) if watcher.matches(c.key))
            watcher.position = revisions[at] + 1
            at += 1
        if at == len(revisions):
            # Everything applied has been examined (also revisions without changes).
            watcher.position = max(watcher.position, self.applied_revision + 1)
        return taken

    def _changes_at(self, at: int) -> tuple[Change, ...]:
        """The changes of the history's revision at position `at`; a `PlainPut` recorded by
        `record_plain_puts` becomes its `Change` here, once."""
        changes = self._changes[at]
        if changes and isinstance(changes[0], int):
            built = (plain_put_change(changes),)
            self._changes[at] = built
            return built
        return changes

    def _evict(self) -> None:
        """Evict the oldest revisions until the history is within both bounds."""
        first = self._first
        revisions = self._revisions
        # Beyond the count bound, all at once (a replay of many puts evicts one per put).
        over = len(revisions) - first - self.history_revisions_max
        if over > 0:
            end = first + over
            self.history_bytes -= sum(self._sizes_bytes[first:end])
            self.compact_revision = revisions[end - 1]
            # Let go of the evicted values now (nothing reads below compact_revision); only
            # the small bookkeeping waits for the amortised trim below. Keeping them until
            # then held up to 1,024 evicted revisions: with 1 MiB values, a gibibyte.
            self._changes[first:end] = [()] * over
            first = end
        while first < len(revisions) and self.history_bytes > self.history_bytes_max:
            self.history_bytes -= self._sizes_bytes[first]
            self.compact_revision = revisions[first]
            self._changes[first] = ()
            first += 1
        self._first = first
        if self._first > 1024 and self._first * 2 > len(self._revisions):
            # Drop the evicted front now and then: amortised O(1) per revision.
            del self._revisions[: self._first]
            del self._changes[: self._first]
            del self._sizes_bytes[: self._first]
            self._first = 0
