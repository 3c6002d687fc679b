"""The Raft log as the core sees it: a snapshot point followed by entries.

The core keeps every entry after its last snapshot in memory; the shell's
storage is the durable copy. `RaftLog` enforces the log's own invariants
(consecutive indexes, never truncating a committed entry) and tracks which
entries have not yet been handed to the shell for persistence (`unstable`).
"""

from __future__ import annotations

from operator import attrgetter

from kvraft.raft.codec import decode_configuration
from kvraft.raft.messages import Configuration, Entry, EntryKind, SnapshotMeta

__all__ = ["ENTRY_OVERHEAD_BYTES", "LogInvariantError", "RaftLog"]

ENTRY_OVERHEAD_BYTES = 32
"""What an entry costs beyond its data when batches are sized by bytes (its index, term and
kind, encoded): it keeps a batch of many tiny entries bounded too."""


_index_of = attrgetter("index")
_data_of = attrgetter("data")
_kind_of = attrgetter("kind")


class LogInvariantError(AssertionError):
    """The core was asked to break a log invariant: a bug, never bad input."""


class RaftLog:
    """Entries `snapshot.index + 1 .. last_index()` plus the snapshot point before them."""

    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry], commit_index: int) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        self.commit_index = snapshot.index
        self.applied_index = snapshot.index
        # Data bytes of the kept entries up to applied_index: what a snapshot would free.
        self.applied_entry_bytes = 0
        # Data bytes of every kept entry: what the log holds in memory.
        self.entry_bytes = 0
        # Index of the first entry not yet handed to the shell to persist.
        self.unstable_index = snapshot.index + 1
        # (index, configuration) of every CONFIG entry still in the log, in order.
        self.configurations: list[tuple[int, Configuration]] = []
        kept = entries
        if entries and entries[0].index <= snapshot.index:
            kept = [entry for entry in entries if entry.index > snapshot.index]
        first = snapshot.index + 1
        if list(map(_index_of, kept)) == list(range(first, first + len(kept))):
            # The common case (a restart recovering its log, up to a million entries) with
            # builtins instead of a call per entry.
            self.entries = list(kept)
            self.entry_bytes = sum(map(len, map(_data_of, kept)))
            if EntryKind.CONFIG in map(_kind_of, kept):
                for entry in kept:
                    if entry.kind == EntryKind.CONFIG:
                        self.configurations.append((entry.index, decode_configuration(entry.data)))
        else:
            for entry in entries:
                if entry.index <= snapshot.index:
                    continue
                if entry.index != self.last_index() + 1:
                    raise LogInvariantError(f"entry {entry.index} follows {self.last_index()}")
                self._append_one(entry)
        self.unstable_index = self.last_index() + 1
        # The last index the shell reported durable (`RaftCore.persisted`). A leader counts
        # itself for commit only up to here (§10.2.1).
        self.persisted_index = self.last_index()
        self.commit_index = max(snapshot.index, min(commit_index, self.last_index()))

    # --- reading ------------------------------------------------------------------------

    def first_index(self) -> int:
        """The first index whose entry is kept (one past the snapshot)."""
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None when compacted away or past the end."""
        if index == self.snapshot.index:
            return self.snapshot.term
        offset = index - self.snapshot.index - 1
        if offset < 0 or offset >= len(self.entries):
            return None
        return self.entries[offset].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entry_at(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        """Entries `low .. high-1`, stopping once `bytes_max` is reached (always at least one)."""
        start = low - self.snapshot.index - 1
        stop = high - self.snapshot.index - 1
        if start < 0 or stop > len(self.entries):
            raise LogInvariantError(f"slice {low}..{high} outside {self.first_index()}..")
        selected: list[Entry] = []
        size = 0
        for entry in self.entries[start:stop]:
            size += len(entry.data) + ENTRY_OVERHEAD_BYTES
            if selected and size > bytes_max:
                break
            selected.append(entry)
        return selected

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (last_index, last_term) at least as up-to-date as ours? (§5.4.1)"""
        return last_term > self.last_term() or (
            last_term == self.last_term() and last_index >= self.last_index()
        )

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries with the same term as `index` (kept entries)."""
        term = self.term_at(index)
        while index > self.first_index() and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int, at_most: int) -> int:
        """The last index <= at_most whose entry has `term`; 0 when none is kept."""
        index = min(at_most, self.last_index())
        while index >= self.snapshot.index:
            entry_term = self.term_at(index)
            if entry_term is None or entry_term < term:
                return 0
            if entry_term == term:
                return index
            index -= 1
        return 0

    def configuration(self) -> Configuration:
        """The latest configuration in the log, committed or not: it is in force (§4.1)."""
        if self.configurations:
            return self.configurations[-1][1]
        return self.snapshot.configuration

    def configuration_at(self, index: int) -> Configuration:
        """The latest configuration at or before `index` (for snapshot metadata)."""
        found = self.snapshot.configuration
        for config_index, configuration in self.configurations:
            if config_index > index:
                break
            found = configuration
        return found

    def pending_configuration_index(self) -> int:
        """The index of an uncommitted CONFIG entry, or 0."""
        if self.configurations and self.configurations[-1][0] > self.commit_index:
            return self.configurations[-1][0]
        return 0

    # --- changing -----------------------------------------------------------------------

    def _append_one(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.entry_bytes += len(entry.data)
        if entry.kind == EntryKind.CONFIG:
            self.configurations.append((entry.index, decode_configuration(entry.data)))

    def append(self, entries: list[Entry]) -> None:
        """Append entries that continue the log (the leader's own proposals)."""
        for entry in entries:
            if entry.index != self.last_index() + 1:
                raise LogInvariantError(f"append {entry.index} after {self.last_index()}")
            self._append_one(entry)

    def truncate_from(self, index: int) -> None:
        """Delete entries at `index` and after; a committed entry is never deleted (§5.3)."""
        if index <= self.commit_index:
            raise LogInvariantError(f"truncating committed entry {index} <= {self.commit_index}")
        cut = self.entries[index - self.snapshot.index - 1 :]
        self.entry_bytes -= sum(len(entry.data) for entry in cut)
        del self.entries[index - self.snapshot.index - 1 :]
        while self.configurations and self.configurations[-1][0] >= index:
            self.configurations.pop()
        self.unstable_index = min(self.unstable_index, index)
        self.persisted_index = min(self.persisted_index, index - 1)

    def maybe_append(
        self, prev_log_index: int, prev_log_term: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """The follower's side of AppendEntries (§5.3, Figure 2 receiver rules 2-4).

        Returns the index of the last entry known to match the leader's, or None when
        the consistency check fails.
        """
        if not self.match_term(prev_log_index, prev_log_term):
            return None
        last_new_index = prev_log_index + len(entries)
        for position, entry in enumerate(entries):
            existing_term = self.term_at(entry.index)
            if existing_term == entry.term:
                continue  # already have it: Log Matching says the prefix is the same
            if entry.index <= self.last_index():
                # Rule 3: a conflicting entry and all that follow it are deleted.
                self.truncate_from(entry.index)
            self.append(list(entries[position:]))
            break
        return last_new_index

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it); True when it moved."""
        index = min(index, self.last_index())
        if index <= self.commit_index:
            return False
        self.commit_index = index
        return True

    def take_unstable(self) -> list[Entry]:
        """Entries not yet handed to the shell for persistence; marks them handed."""
        start = self.unstable_index - self.snapshot.index - 1
        if start >= len(self.entries):
            return []
        taken = self.entries[max(start, 0) :]
        self.unstable_index = self.last_index() + 1
        return taken

    def take_committed(self, up_to: int, count_max: int) -> list[Entry]:
        """Entries after `applied_index` up to `up_to`, at most `count_max`; marks them applied."""
        high = min(up_to, self.last_index(), self.applied_index + count_max)
        if high <= self.applied_index:
            return []
        taken = self.entries[self.applied_index - self.snapshot.index : high - self.snapshot.index]
        self.applied_index = high
        self.applied_entry_bytes += sum(len(entry.data) for entry in taken)
        return taken

    def compact(self, index: int) -> SnapshotMeta:
        """Drop entries up to `index`, which the state machine has snapshotted (§7)."""
        if index <= self.snapshot.index:
            return self.snapshot
        if index > self.applied_index:
            raise LogInvariantError(f"compacting {index} past applied {self.applied_index}")
        term = self.term_at(index)
        if term is None:
            raise LogInvariantError(f"compacting unknown index {index}")
        meta = SnapshotMeta(index=index, term=term, configuration=self.configuration_at(index))
        dropped_bytes = sum(
            len(entry.data) for entry in self.entries[: index - self.snapshot.index]
        )
        self.applied_entry_bytes -= dropped_bytes
        self.entry_bytes -= dropped_bytes
        del self.entries[: index - self.snapshot.index]
        self.configurations = [(i, c) for i, c in self.configurations if i > index]
        self.snapshot = meta
        return meta

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log with a snapshot received from the leader (§7)."""
        self.snapshot = snapshot
        self.entries = []
        self.configurations = []
        self.commit_index = snapshot.index
        self.applied_index = snapshot.index
        self.applied_entry_bytes = 0
        self.entry_bytes = 0
        self.unstable_index = snapshot.index + 1
        self.persisted_index = snapshot.index
