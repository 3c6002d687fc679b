"""The leader's view of one follower's log: how far it matches, what to send next.

A follower is in one of three states (the flow control of etcd-raft, which the
paper leaves to the implementation, §5.3 and §10.2.1):

- PROBE: we do not know where its log matches ours; send one AppendEntries at a
  time and wait for the answer (or the next heartbeat) before sending again.
- REPLICATE: its log matches up to `match_index`; stream AppendEntries
  optimistically (pipelining), at most `inflight_max` unacknowledged at once.
- SNAPSHOT: the entries it needs are compacted away; an InstallSnapshot is in
  flight, and nothing else is sent until it is answered.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one peer, kept by the leader."""

    __slots__ = (
        "inflight",
        "inflight_max",
        "match_index",
        "next_index",
        "paused",
        "recent_active",
        "snapshot_index",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, inflight_max: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        # In PROBE: an AppendEntries is outstanding; wait for its answer or a heartbeat.
        self.paused = False
        # Last index of each unacknowledged AppendEntries, oldest first (REPLICATE).
        self.inflight: deque[int] = deque()
        self.inflight_max = inflight_max
        # Heard from this peer since the last CheckQuorum round (§6.2).
        self.recent_active = False
        self.snapshot_index = 0
        self.snapshot_ticks = 0

    def become_probe(self) -> None:
        # After a snapshot, continue right after it; otherwise right after the match.
        if self.state == ProgressState.SNAPSHOT:
            self.next_index = max(self.match_index, self.snapshot_index) + 1
        else:
            self.next_index = self.match_index + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()
        self.snapshot_index = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.paused = False
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = snapshot_index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def can_send(self) -> bool:
        """May the leader send an AppendEntries to this peer now?"""
        if self.state == ProgressState.PROBE:
            return not self.paused
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) < self.inflight_max
        return False

    def on_sent(self, last_index: int) -> None:
        """An AppendEntries ending at `last_index` went out."""
        if self.state == ProgressState.REPLICATE:
            self.next_index = last_index + 1
            self.inflight.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.paused = True

    def on_match(self, match_index: int) -> bool:
        """The peer acknowledged entries up to `match_index`; True if that is news."""
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        if match_index <= self.match_index:
            return False
        self.match_index = match_index
        self.next_index = max(self.next_index, match_index + 1)
        self.paused = False
        return True

    def on_reject(self, reject_index: int, hint_next_index: int) -> bool:
        """The peer's log did not match at `reject_index`; True if we should retry now.

        Stale rejections (answers to messages sent before we learned more) are ignored.
        """
        if self.state == ProgressState.REPLICATE:
            if reject_index <= self.match_index:
                return False
            self.become_probe()
        elif self.next_index - 1 != reject_index:
            return False
        self.next_index = max(self.match_index + 1, min(hint_next_index, reject_index))
        self.paused = False
        return True

    def on_heartbeat_response(self) -> None:
        """A heartbeat answer means the peer is alive: unblock a stuck pipeline or probe."""
        self.paused = False
        if self.state == ProgressState.REPLICATE and len(self.inflight) >= self.inflight_max:
            # A lost AppendEntries would otherwise keep the window full forever.
            self.inflight.popleft()
