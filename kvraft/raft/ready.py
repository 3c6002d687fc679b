"""What the core asks the shell to do, in the order it must be done.

After feeding the core (`tick`, `step`, `propose`, ...), the shell takes a
`Ready` and works through it top to bottom:

1. `messages` may go out at once: they promise nothing about this node's disk
   (the leader's AppendEntries, heartbeats, InstallSnapshot, TimeoutNow). The
   leader writes its own log in parallel with replicating it (dissertation
   §10.2.1); it counts itself for commit only once the shell reports the
   write with `RaftCore.persisted`.
2. Persist: if `snapshot` is set, save it and drop the log it covers; then, if
   `entries` is non-empty, delete every stored entry at index >=
   `entries[0].index` and append `entries`; then save `hard_state` if set. When
   `must_sync` is true these writes must be durable (fsync) before step 3.
3. `messages_after_persist` go out only now: each one promises that something
   is on stable storage (a vote, an acknowledged append, a term).
4. Apply: restore `snapshot` into the state machine if set, then apply
   `committed_entries` in order (they are already durable: a committed entry is
   always persisted first in the same or an earlier Ready).
5. Answer reads: each `ReadState` may be served once the state machine has
   applied up to its `read_index` (§6.4).
6. Report persistence back with `RaftCore.persisted(last_index, last_term)` for
   the entries written in step 2.

The rule behind steps 1 and 3 (etcd's): **no message leaves before the
HardState it implies is persisted.** A Ready that changes the term or the vote
(`term_or_vote_changed`) therefore has all its messages in
`messages_after_persist`, even a new leader's first AppendEntries.

Pipelining. A shell may build and start the next Ready while the previous one's
write is still in flight (§10.2.1: the disk and the network work in parallel),
under three conditions:

- writes reach the disk in the order their Readies were built;
- steps 3 to 6 of a Ready run after its own write *and every earlier one*
  finished, Ready by Ready in order (an acknowledgement in a later Ready may
  speak for entries an earlier write carries, and a committed entry may sit in
  an earlier Ready's write);
- no Ready is built while one with `term_or_vote_changed` is unpersisted: the
  next Ready's `messages` would leave at once, speaking for a term this node
  has not stored yet.

`kvraft.shell.NodeShell` keeps these rules once, for the daemon, the simulator
and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvraft.raft.messages import Entry, HardState, Message, SnapshotMeta

__all__ = ["ReadState", "Ready", "SnapshotToRestore"]


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read (§6.4) may be served once `applied_index >= read_index`.

    Fields:
        read_id: the id the shell gave `RaftCore.read_index`.
        read_index: the commit index when leadership was confirmed for this read.
    """

    read_id: int
    read_index: int


@dataclass(frozen=True, slots=True)
class SnapshotToRestore:
    """A snapshot received from the leader that replaces this node's state (§7)."""

    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the shell; see the module docstring for the order."""

    messages: list[Message] = field(default_factory=list)
    snapshot: SnapshotToRestore | None = None
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    must_sync: bool = False
    term_or_vote_changed: bool = False
    """`hard_state` changes the term or the vote: every message of this Ready is in
    `messages_after_persist`, and the shell builds no later Ready (whose messages could
    leave at once) until this one is persisted."""
    messages_after_persist: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_read_ids: list[int] = field(default_factory=list)
    """Reads that can no longer be confirmed (leadership lost): answer them with an error."""

    def is_empty(self) -> bool:
        return not (
            self.messages
            or self.snapshot
            or self.entries
            or self.hard_state
            or self.messages_after_persist
            or self.committed_entries
            or self.read_states
            or self.dropped_read_ids
        )
