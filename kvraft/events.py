"""What a node lives through, as a stream of events (`GET /v1/events`, `kvraft events`, `/ui`).

Two pieces, both without IO, so the daemon (`kvraft.server`) and the simulator
(`kvraft.sim.cluster`) use the same ones:

- `EventLog`: a ring of the last `EVENTS_KEPT_MAX_DEFAULT` events of one node, each with a
  sequence number of its own (1, 2, ... from the node's start), its wall time, term, node id,
  type and fields. Emitting never blocks and never allocates beyond the ring: a reader that
  fell behind the ring (it asked for a sequence number the ring no longer holds) gets one
  `lagged` event saying how many it missed, then resumes at the oldest event kept.
- `CoreEvents`: derives events from the Raft core's public state (role, term, leader, vote,
  configuration, leadership transfer, commit and apply indexes), compared with what it saw
  the previous time it looked. The core itself (`kvraft.raft`) knows nothing about events: the
  shell around it calls `observe()` after each Ready.

Event types (each event's `fields` in parentheses):

    node_started (last_log_index, commit_index)   role_changed (from, to)
    election_started (pre_vote)                   vote_granted (candidate)
    leader_elected (leader_id, no_leader_ms)      leader_lost (leader_id, silent_ms)
    membership_changed (voters, learners)         leadership_transfer (to)
    progress (commit_index, applied_index, last_log_index, commits_per_s, applies_per_s)
    peer_connected (peer_id, address)             peer_disconnected (peer_id, address, reason)
    snapshot_taken (index)                        snapshot_installed (index)
    snapshot_sent (to, index)                     fail_stop (error)
    lagged (missed_events): only in a reader's stream, never kept in the ring.

`no_leader_ms` is how long this node saw no leader: from the last message it had from the
previous leader (or from when it started) to the moment it learned the new one. After the
leader dies it is the unavailability this node saw: failure detection plus election.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import NO_NODE

__all__ = [
    "EVENTS_KEPT_MAX_DEFAULT",
    "EVENTS_KEPT_MAX_HIGHEST",
    "PROGRESS_SAMPLE_INTERVAL_S",
    "CoreEvents",
    "EventLog",
    "NodeEvent",
]

EVENTS_KEPT_MAX_DEFAULT = 1000
"""Events one node keeps for readers (``limits.events_kept_max``). An event is a few hundred
bytes, so the ring stays well under a megabyte; an election makes about ten events per node,
and sampled progress at most 1 / `PROGRESS_SAMPLE_INTERVAL_S` a second, so a thousand is
minutes of a busy node's life: enough for a dashboard that reconnects after a failover."""

EVENTS_KEPT_MAX_HIGHEST = 1_000_000
"""The largest ``limits.events_kept_max``: the ring is in memory."""

PROGRESS_SAMPLE_INTERVAL_S = 0.5
"""Commit and apply progress is an event at most this often (two a second): each Ready moves
the indexes, and one event per Ready would flood the ring and every reader under load."""


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """One event of one node; see the module docstring for the types and their fields."""

    seq: int
    time_s: float
    """Wall-clock time (seconds since the epoch) when the node recorded it."""
    node_id: int
    term: int
    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": round(self.time_s, 3),
            "node_id": self.node_id,
            "term": self.term,
            "type": self.type,
            "fields": self.fields,
        }


class EventLog:
    """The ring of one node's last `capacity` events; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        capacity: int = EVENTS_KEPT_MAX_DEFAULT,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.node_id = node_id
        self.capacity = capacity
        self._ring: deque[NodeEvent] = deque(maxlen=capacity)
        self._wall_clock = wall_clock
        self.last_seq = 0
        self.listeners: set[Callable[[], None]] = set()
        """Called (with no arguments, on the emitter's thread) after each event: readers
        waiting for the next one set their wake-up event here. A listener must not block."""

    def emit(self, event_type: str, term: int, **fields: Any) -> NodeEvent:
        """Record an event; the oldest one kept falls out of a full ring."""
        self.last_seq += 1
        event = NodeEvent(self.last_seq, self._wall_clock(), self.node_id, term, event_type, fields)
        self._ring.append(event)
        for listener in list(self.listeners):
            listener()
        return event

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest event kept (last_seq + 1 when none is)."""
        return self._ring[0].seq if self._ring else self.last_seq + 1

    def read(self, after_seq: int) -> list[NodeEvent]:
        """The events after `after_seq`, oldest first; a `lagged` event first if some of them
        fell out of the ring. A sequence number beyond the last one is from before this
        node restarted (the numbers began again at 1): everything kept is returned."""
        if after_seq > self.last_seq:
            after_seq = 0
        first_seq = self.first_seq
        events: list[NodeEvent] = []
        if after_seq < first_seq - 1:
            missed = first_seq - 1 - after_seq
            term = self._ring[0].term if self._ring else 0
            # Numbered as the last event missed, so resuming after it starts at the oldest kept.
            events.append(
                NodeEvent(
                    first_seq - 1,
                    self._wall_clock(),
                    self.node_id,
                    term,
                    "lagged",
                    {"missed_events": missed},
                )
            )
            after_seq = first_seq - 1
        events.extend(itertools.islice(self._ring, max(0, after_seq - first_seq + 1), None))
        return events

    def __len__(self) -> int:
        return len(self._ring)


_ELECTION_ROLES = (Role.PRE_CANDIDATE, Role.CANDIDATE)


class CoreEvents:
    """Turns what changed in a core between two looks into events; see the module docstring.

    `observe()` after every Ready (cheap: a few attribute reads and comparisons), with a
    monotonic clock for durations; `heard_from_leader()` when a message from the leader
    arrives, so that `no_leader_ms` starts when the leader fell silent, not when this node's
    election timer noticed."""

    def __init__(self, events: EventLog, core: RaftCore, now_s: float) -> None:
        self.events = events
        self._role = core.role
        self._term = core.term
        self._voted_for = core.voted_for
        self._leader_id = NO_NODE
        self._configuration = core.log.configuration()
        self._transferee = NO_NODE
        self._leader_heard_s = now_s
        """When this node last knew the leader was alive: its last message, or now if we
        lead. Until a first leader is known: the node's start."""
        self._progress_at_s = now_s
        self._progress_commit = core.log.commit_index
        self._progress_applied = core.log.applied_index
        self.elected_leaders: list[tuple[int, int]] = []
        """(term, leader id) of every `leader_elected` emitted, for the simulator's check."""

    def heard_from_leader(self, now_s: float) -> None:
        self._leader_heard_s = now_s

    def observe(self, core: RaftCore, now_s: float) -> None:
        emit = self.events.emit
        term = core.term
        role = core.role
        if role != self._role:
            emit("role_changed", term, **{"from": self._role.value, "to": role.value})
            if role in _ELECTION_ROLES:
                emit("election_started", term, pre_vote=role == Role.PRE_CANDIDATE)
        elif role == Role.CANDIDATE and term != self._term:
            emit("election_started", term, pre_vote=False)  # another round: a split vote
        self._role = role
        voted_for = core.voted_for
        if voted_for != self._voted_for or term != self._term:
            if voted_for not in (NO_NODE, core.id):
                emit("vote_granted", term, candidate=voted_for)
            self._voted_for = voted_for
        self._term = term
        leader_id = core.leader_id
        if leader_id != self._leader_id:
            if self._leader_id != NO_NODE:
                silent_ms = round((now_s - self._leader_heard_s) * 1000, 1)
                emit("leader_lost", term, leader_id=self._leader_id, silent_ms=silent_ms)
            if leader_id != NO_NODE:
                no_leader_ms = round((now_s - self._leader_heard_s) * 1000, 1)
                emit("leader_elected", term, leader_id=leader_id, no_leader_ms=no_leader_ms)
                self.elected_leaders.append((term, leader_id))
                self._leader_heard_s = now_s
            self._leader_id = leader_id
        elif leader_id == core.id:
            self._leader_heard_s = now_s
        configuration = core.log.configuration()
        if configuration != self._configuration:
            emit(
                "membership_changed",
                term,
                voters=sorted(configuration.voters),
                learners=sorted(configuration.learners),
            )
            self._configuration = configuration
        transferee = core.lead_transferee
        if transferee != self._transferee:
            if transferee != NO_NODE:
                emit("leadership_transfer", term, to=transferee)
            self._transferee = transferee
        elapsed_s = now_s - self._progress_at_s
        if elapsed_s >= PROGRESS_SAMPLE_INTERVAL_S:
            commit_index = core.log.commit_index
            applied_index = core.log.applied_index
            if commit_index != self._progress_commit or applied_index != self._progress_applied:
                emit(
                    "progress",
                    term,
                    commit_index=commit_index,
                    applied_index=applied_index,
                    last_log_index=core.log.last_index(),
                    commits_per_s=round((commit_index - self._progress_commit) / elapsed_s, 1),
                    applies_per_s=round((applied_index - self._progress_applied) / elapsed_s, 1),
                )
            self._progress_at_s = now_s
            self._progress_commit = commit_index
            self._progress_applied = applied_index
