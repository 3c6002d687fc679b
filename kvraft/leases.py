"""The leader's lease timers, in ticks: pure, driven by the shell's tick and apply hooks.

Theory of operation
-------------------
Every node holds the same leases (`kvraft.statemachine`: a grant's log index is the lease's
id), but only the leader decides when one expires, by its own clock counted in Raft ticks;
followers keep no timers. Expiry takes effect through the log: the leader proposes a revoke
with ``expired=True`` (`expire_command`), and every node deletes the lease's keys when it
applies that entry, at the same index. No wall clock is read here: `NodeShell` calls `tick`
once per Raft tick, in the daemon and in the simulator alike.

The rules, after etcd's lessor (server/lease/lessor.go):

- A keepalive refreshes the leader's in-memory deadline to TTL ticks after the first tick
  that follows its arrival; it writes nothing to the log. The lease expires (its expiry
  entry is proposed) at the tick that reaches that deadline: never less than TTL after the
  last keepalive the leader acknowledged, since ticks never run ahead of the wall clock.
- A lease granted while this node leads gets a full TTL from when its grant applied here.
- A new leader gives every lease a full TTL from its first tick as leader (etcd's
  ``Promote``), once it has applied an entry of its own term (so its state machine holds
  every checkpoint and clear its predecessors committed; `NodeShell.leases_follow_leadership`):
  it cannot know when the old leader last heard a keepalive, so nothing expires early
  because leadership changed. The price is that a lease whose holder died
  lives up to one TTL longer per failover -- except for long leases, which are checkpointed.
- Checkpoints (etcd's ``LeaseCheckpoint``): every `LEASE_CHECKPOINT_INTERVAL_S`, the leader
  writes the remaining TTL of every lease longer than that interval into the log
  (`checkpoint_commands`), and a new leader starts such a lease from its checkpointed
  remainder instead of a full TTL, so a day-long lease of a dead holder does not live
  another day per failover. This is safe only if no keepalive acknowledged after a
  checkpoint is forgotten by it: so a keepalive of a lease with a checkpoint in the log (or
  proposed by this leader and no clear of its own applied after it: `needs_clear`) first
  writes a checkpoint of 0 (cleared: the full TTL again) and is acknowledged only once that
  applied -- one log write per checkpoint interval for a lease kept alive, none for the
  others. A clear applied while leading gives the lease a full TTL from then, since it may
  be the old leader's, written for a keepalive this leader never saw.
- The HTTP layer confirms leadership (a ReadIndex round, Raft §6.4) before it acknowledges
  a keepalive, and takes the tick count from before that round: a deposed leader cannot
  acknowledge a keepalive that the new leader, elected after the confirmation, would not
  honour for a full TTL.
- An expiry proposal that was lost (leadership changed, the proposal dropped) is proposed
  again after `EXPIRY_RETRY_ELECTION_TIMEOUTS` election timeouts while the lease is still
  there; a second expiry of a gone lease applies as a harmless `lease_not_found`.

TTL bounds: at most `kvraft.statemachine.LEASE_TTL_S_MAX`; at least `lease_ttl_s_min`, which
is `LEASE_TTL_ELECTION_TIMEOUTS_MIN` of the longest election timeouts (2 x election_ticks x
tick_ms): a shorter lease could expire during an ordinary election, before its holder had
any leader to send a keepalive to (etcd's minimum is 1.5 election timeouts).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import msgpack

from kvraft.statemachine import (
    LEASE_CHECKPOINT_LEASES_MAX,
    LEASE_TTL_S_MAX,
    OP_LEASE_CHECKPOINT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    encode_lease_checkpoint,
    encode_lease_revoke,
)

__all__ = [
    "EXPIRY_RETRY_ELECTION_TIMEOUTS",
    "LEASE_CHECKPOINT_INTERVAL_S",
    "LEASE_TTL_ELECTION_TIMEOUTS_MIN",
    "LeaseTimer",
    "lease_ttl_s_min",
]

LEASE_TTL_ELECTION_TIMEOUTS_MIN = 3
"""The shortest lease TTL, in longest election timeouts (see `lease_ttl_s_min`)."""

EXPIRY_RETRY_ELECTION_TIMEOUTS = 2
"""An expiry proposal not applied after this many election timeouts is proposed again."""

LEASE_CHECKPOINT_INTERVAL_S = 60
"""How often the leader checkpoints the remaining TTL of leases longer than this (etcd: 5
minutes). Shorter means less extra life for a dead holder's lease after a failover, and more
log writes: one entry per interval for all long leases, and one per interval for each long
lease that is kept alive (see the module docstring)."""

_MSGPACK_FIXARRAY_2 = 0x92
_MSGPACK_FIXARRAY_3 = 0x93


def lease_ttl_s_min(tick_ms: int, election_ticks: int) -> int:
    """The shortest TTL a client may ask for, in whole seconds (at least 1)."""
    election_timeout_max_ms = 2 * election_ticks * tick_ms
    return max(1, math.ceil(LEASE_TTL_ELECTION_TIMEOUTS_MIN * election_timeout_max_ms / 1000))


def ttl_bounds_s(tick_ms: int, election_ticks: int) -> tuple[int, int]:
    """(shortest, longest) TTL in seconds a client may ask for."""
    return lease_ttl_s_min(tick_ms, election_ticks), LEASE_TTL_S_MAX


class LeaseTimer:
    """One node's lease deadlines, kept only while it leads; see the module docstring.

    Attributes:
        now_ticks: ticks counted by this node since it started (never reset: a keepalive's
            tick stays comparable across terms).
        leader_term: the term this node is leading and has deadlines for, or None.
    """

    def __init__(
        self, tick_ms: int, election_ticks: int, checkpoint_interval_ticks: int | None = None
    ) -> None:
        """`checkpoint_interval_ticks`: `LEASE_CHECKPOINT_INTERVAL_S` in ticks unless given
        (the simulator gives a short one, so that its short leases are checkpointed too)."""
        self.tick_ms = tick_ms
        self.now_ticks = 0
        self.leader_term: int | None = None
        self._retry_ticks = EXPIRY_RETRY_ELECTION_TIMEOUTS * 2 * election_ticks
        self.checkpoint_interval_ticks = (
            checkpoint_interval_ticks
            if checkpoint_interval_ticks is not None
            else self.ttl_ticks(LEASE_CHECKPOINT_INTERVAL_S)
        )
        self._ttl_ticks: dict[int, int] = {}
        self._deadline_ticks: dict[int, int] = {}
        self._expiry_proposed_ticks: dict[int, int] = {}
        self._next_checkpoint_ticks = 0
        # Per lease, while leading: how many checkpoints of it this leader proposed, how many
        # of those the clears applied so far cover, and what each clear proposed and not yet
        # applied will cover, oldest first (`needs_clear`).
        self._checkpoints_proposed: dict[int, int] = {}
        self._checkpoints_cleared: dict[int, int] = {}
        self._clears_pending: dict[int, deque[int]] = {}

    @staticmethod
    def _deadline(from_ticks: int, ttl_ticks: int) -> int:
        """The tick at which a lease whose TTL started at tick count `from_ticks` expires:
        TTL ticks after the *next* tick. The count is up to one tick old when a keepalive or
        a grant arrives (ticks only ever lag the wall clock), so counting from it would cut
        the TTL short by up to a tick; counting from the next tick never does."""
        return from_ticks + 1 + ttl_ticks

    def ttl_ticks(self, ttl_s: int) -> int:
        """A TTL in ticks, rounded up: a lease never lives shorter than asked."""
        return math.ceil(ttl_s * 1000 / self.tick_ms)

    # --- leadership -------------------------------------------------------------------------

    def promote(self, term: int, leases: Iterable[tuple[int, int, int]]) -> None:
        """This node leads `term`: every lease (id, ttl_s, checkpointed remaining_ms or 0)
        gets its checkpointed remainder, or else a full TTL, from now."""
        self.leader_term = term
        self._ttl_ticks = {}
        self._deadline_ticks = {}
        for lease_id, ttl_s, remaining_ms in leases:
            ttl = self._ttl_ticks[lease_id] = self.ttl_ticks(ttl_s)
            if remaining_ms:
                ttl = min(ttl, math.ceil(remaining_ms / self.tick_ms))
            self._deadline_ticks[lease_id] = self._deadline(self.now_ticks, ttl)
        self._expiry_proposed_ticks = {}
        self._forget_checkpoints()
        self._next_checkpoint_ticks = self.now_ticks + self.checkpoint_interval_ticks

    def demote(self) -> None:
        """This node no longer leads: it forgets every deadline (the next leader decides)."""
        self.leader_term = None
        self._ttl_ticks = {}
        self._deadline_ticks = {}
        self._expiry_proposed_ticks = {}
        self._forget_checkpoints()

    def _forget_checkpoints(self) -> None:
        self._checkpoints_proposed = {}
        self._checkpoints_cleared = {}
        self._clears_pending = {}

    # --- the log ----------------------------------------------------------------------------

    def granted(self, lease_id: int, ttl_s: int) -> None:
        """A grant applied here: while leading, the lease's TTL runs from now."""
        if self.leader_term is not None:
            ttl = self._ttl_ticks[lease_id] = self.ttl_ticks(ttl_s)
            self._deadline_ticks[lease_id] = self._deadline(self.now_ticks, ttl)

    def revoked(self, lease_id: int) -> None:
        """A revoke or expiry applied here: the lease is gone."""
        self._ttl_ticks.pop(lease_id, None)
        self._deadline_ticks.pop(lease_id, None)
        self._expiry_proposed_ticks.pop(lease_id, None)
        self._checkpoints_proposed.pop(lease_id, None)
        self._checkpoints_cleared.pop(lease_id, None)
        self._clears_pending.pop(lease_id, None)

    def checkpointed(self, lease_id: int, remaining_ms: int) -> None:
        """A checkpoint of `lease_id` applied here. A clear (0) applied while leading gives
        the lease a full TTL from now: it may be the old leader's, for a keepalive this
        leader never heard (see the module docstring)."""
        if remaining_ms != 0:
            return
        clears = self._clears_pending.get(lease_id)
        if clears:
            # This leader's oldest clear (log order is proposal order): every checkpoint it
            # had proposed before it is behind it now. A clear proposed and dropped leaves
            # its count here to be taken by the next one, which then covers less: safe.
            covered = clears.popleft()
            cleared = self._checkpoints_cleared.get(lease_id, 0)
            self._checkpoints_cleared[lease_id] = max(cleared, covered)
        deadline = self._deadline_ticks.get(lease_id)
        if deadline is not None:
            self._deadline_ticks[lease_id] = max(
                deadline, self._deadline(self.now_ticks, self._ttl_ticks[lease_id])
            )

    def applied(self, data: bytes, index: int, ok: bool) -> None:
        """An entry applied (`ok`: it took effect): follow grants, revokes and checkpoints.
        Looks at the first two bytes only, so the other commands cost next to nothing."""
        if not ok or len(data) < 2:
            return
        if data[0] == _MSGPACK_FIXARRAY_2 and data[1] == OP_LEASE_GRANT:
            _, ttl_s = msgpack.unpackb(data)
            self.granted(index, ttl_s)
        elif data[0] == _MSGPACK_FIXARRAY_3 and data[1] == OP_LEASE_REVOKE:
            _, lease_id, _ = msgpack.unpackb(data)
            self.revoked(lease_id)
        elif data[0] == _MSGPACK_FIXARRAY_2 and data[1] == OP_LEASE_CHECKPOINT:
            _, flat = msgpack.unpackb(data)
            for position in range(0, len(flat), 2):
                self.checkpointed(flat[position], flat[position + 1])

    def restored(self, leases: Iterable[tuple[int, int, int]]) -> None:
        """A snapshot replaced the state: keep the deadlines of leases still there, give new
        ones a full TTL, forget the rest. (A clear inside the snapshot that this leader did
        not apply cannot be told apart; the snapshot came from a leader of a later term, so
        this node is no longer leading anyway.)"""
        if self.leader_term is None:
            return
        current = {lease_id: ttl_s for lease_id, ttl_s, _ in leases}
        for lease_id in [i for i in self._deadline_ticks if i not in current]:
            self.revoked(lease_id)
        for lease_id, ttl_s in current.items():
            if lease_id not in self._deadline_ticks:
                self.granted(lease_id, ttl_s)

    # --- time -------------------------------------------------------------------------------

    def needs_clear(self, lease_id: int, checkpointed_ms: int) -> bool:
        """Whether a keepalive of `lease_id` must first write a cleared checkpoint: one is in
        the log (`checkpointed_ms`, from the state machine), or this leader proposed one that
        no clear of its own has applied after. True obliges the caller to propose the clear
        at once (no await between): it is counted as following every checkpoint proposed so
        far. (A clear does not simply cover "the pending checkpoint": a keepalive's clear
        proposed before the next checkpoint applies before it, and the checkpoint's older
        remainder would then outlive a keepalive acknowledged in between.)"""
        proposed = self._checkpoints_proposed.get(lease_id, 0)
        if checkpointed_ms == 0 and proposed == self._checkpoints_cleared.get(lease_id, 0):
            return False
        self._clears_pending.setdefault(lease_id, deque()).append(proposed)
        return True

    def checkpoint_commands(self) -> list[bytes]:
        """The checkpoint entries to propose now (every `checkpoint_interval_ticks` while
        leading): the remaining TTL of each lease longer than the interval, in id order."""
        if self.leader_term is None or self.now_ticks < self._next_checkpoint_ticks:
            return []
        self._next_checkpoint_ticks = self.now_ticks + self.checkpoint_interval_ticks
        long_leases = [
            (lease_id, (deadline - self.now_ticks) * self.tick_ms)
            for lease_id, deadline in sorted(self._deadline_ticks.items())
            if self._ttl_ticks[lease_id] > self.checkpoint_interval_ticks
            and deadline > self.now_ticks
            and lease_id not in self._expiry_proposed_ticks
        ]
        for lease_id, _ in long_leases:
            self._checkpoints_proposed[lease_id] = self._checkpoints_proposed.get(lease_id, 0) + 1
        return [
            encode_lease_checkpoint(long_leases[start : start + LEASE_CHECKPOINT_LEASES_MAX])
            for start in range(0, len(long_leases), LEASE_CHECKPOINT_LEASES_MAX)
        ]

    def keepalive(self, lease_id: int, arrived_ticks: int) -> bool:
        """Refresh `lease_id` to TTL ticks after `arrived_ticks` (the tick count when the
        keepalive arrived); False if this node has no deadline for it (not leading, or the
        lease is gone) or has proposed its expiry already: a keepalive acknowledged now could
        not stop that entry from applying."""
        deadline = self._deadline_ticks.get(lease_id)
        if deadline is None or lease_id in self._expiry_proposed_ticks:
            return False
        self._deadline_ticks[lease_id] = max(
            deadline, self._deadline(arrived_ticks, self._ttl_ticks[lease_id])
        )
        return True

    def remaining_ticks(self, lease_id: int) -> int | None:
        """Ticks until `lease_id` expires (0: its expiry is under way), or None if this node
        has no deadline for it."""
        deadline = self._deadline_ticks.get(lease_id)
        return None if deadline is None else max(0, deadline - self.now_ticks)

    def tick(self) -> list[int]:
        """One tick passed: the leases whose expiry the leader must propose now, in id order."""
        self.now_ticks = now = self.now_ticks + 1
        if self.leader_term is None:
            return []
        proposed = self._expiry_proposed_ticks
        expired = []
        for lease_id, deadline in self._deadline_ticks.items():
            if deadline <= now:
                when = proposed.get(lease_id)
                if when is None or now - when >= self._retry_ticks:
                    proposed[lease_id] = now
                    expired.append(lease_id)
        return sorted(expired)

    @staticmethod
    def expire_command(lease_id: int) -> bytes:
        """The log entry that expires `lease_id`."""
        return encode_lease_revoke(lease_id, expired=True)
