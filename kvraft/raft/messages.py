"""The values that cross the Raft core's boundary.

Everything here is a frozen, slotted value object: log entries, the persistent
hard state, snapshot metadata, cluster configurations and the RPC messages of
the Raft paper (Ongaro & Ousterhout 2014, Figure 2) plus the few that the
dissertation adds (PreVote §9.6, TimeoutNow §3.10, heartbeats for ReadIndex
§6.4). The core produces and consumes these; the codec (`kvraft.raft.codec`)
turns them into bytes and back; the shell never builds them by hand except for
client-facing requests.

Node ids are positive integers. Index 0 and term 0 mean "nothing": the log
starts at index 1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "NO_NODE",
    "AppendEntries",
    "AppendEntriesResponse",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "RequestVote",
    "RequestVoteResponse",
    "SnapshotMeta",
    "TimeoutNow",
]

NO_NODE = 0
"""The node id that means "nobody" (no vote cast, no leader known)."""


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """An opaque state-machine command (the shell's bytes)."""
    NOOP = 1
    """The empty entry a new leader appends to commit its predecessors' entries (§5.4.2, §6.4)."""
    CONFIG = 2
    """A new cluster configuration; it takes effect as soon as it is appended (§4.1)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.

    Fields:
        term: the leader's term when the entry was created.
        index: the entry's position in the log, from 1.
        kind: what `data` holds (see `EntryKind`).
        data: a state-machine command (NORMAL), empty (NOOP) or an encoded
            `Configuration` (CONFIG; see `kvraft.raft.codec.encode_configuration`).
    """

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Configuration:
    """Who is in the cluster: voters elect and count for commit; learners only replicate.

    Fields:
        voters: ids of the voting members.
        learners: ids of the non-voting members that catch up before promotion (§4.2.1).
        context: opaque bytes for the shell (the members' addresses); the core never reads them.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    context: bytes = b""

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def quorum(self) -> int:
        """The size of a majority of the voters (§5.2)."""
        return len(self.voters) // 2 + 1


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before the node acts on it (Figure 2, "Persistent state").

    Fields:
        term: the latest term this node has seen.
        voted_for: the candidate that received this node's vote in `term`, or NO_NODE.
        commit_index: the highest index known committed. Persisting it is not required for
            safety; it lets a restarted node re-apply its committed entries without waiting
            for a leader.
    """

    term: int = 0
    voted_for: int = NO_NODE
    commit_index: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot of the state machine covers (§7).

    Fields:
        index: the last log index the snapshot includes.
        term: the term of that entry.
        configuration: the latest configuration at or before `index`.
    """

    index: int = 0
    term: int = 0
    configuration: Configuration = field(default_factory=Configuration)


# --- RPC messages -------------------------------------------------------------------------
# Every message carries `term`, the sender `source` and the receiver `target`.


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)candidate asks for a vote (§5.2; PreVote §9.6).

    Fields:
        last_log_index, last_log_term: the candidate's last entry, for the up-to-date
            check (§5.4.1).
        pre_vote: a PreVote round: `term` is the term the candidate *would* use; no one
            changes its term or vote because of it.
        leadership_transfer: sent after TimeoutNow (§3.10): voters grant it even while they
            still hear from the current leader.
    """

    term: int
    source: int
    target: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    leadership_transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    """The answer to RequestVote. For a granted PreVote, `term` echoes the request's term."""

    term: int
    source: int
    target: int
    vote_granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """The leader replicates entries (§5.3).

    Fields:
        prev_log_index, prev_log_term: the entry just before `entries`, for the consistency check.
        entries: the entries to append, consecutive from prev_log_index + 1.
        leader_commit: the leader's commit index.
    """

    term: int
    source: int
    target: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """The answer to AppendEntries or InstallSnapshot.

    Fields:
        success: the consistency check passed and the entries are durable.
        match_index: on success, the last index known to match the leader's log.
        reject_index: on failure, the prev_log_index that failed the check.
        conflict_index, conflict_term: on failure, a hint for fast backtracking (§5.3, the
            "optimization" paragraph): the follower's last index if its log is shorter,
            otherwise the first index of the conflicting term `conflict_term` (0: none).
    """

    term: int
    source: int
    target: int
    success: bool
    match_index: int = 0
    reject_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The leader sends a snapshot to a follower whose next entry it no longer keeps (§7).

    The core fills in `meta` only. `data` is the state machine's bytes: the shell
    (or the simulator) attaches them before sending, and hands them back with the
    accepted snapshot in `Ready.snapshot`.
    """

    term: int
    source: int
    target: int
    meta: SnapshotMeta
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader's heartbeat; separate from AppendEntries so that it needs no log check.

    Fields:
        leader_commit: min(the leader's commit index, the follower's known match index),
            so a follower never commits past what it is known to share with the leader.
        read_round: the ReadIndex round (§6.4) this heartbeat confirms leadership for.
    """

    term: int
    source: int
    target: int
    leader_commit: int
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """The answer to a Heartbeat, echoing its `read_round`."""

    term: int
    source: int
    target: int
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the target should start an election at once (§3.10)."""

    term: int
    source: int
    target: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
)
