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

- A keepalive refreshes the leader's in-memory deadline to TTL ticks after the tick at which
  the keepalive arrived; it writes nothing to the log. The lease expires (its expiry entry
  is proposed) at the tick that reaches that deadline, exactly TTL ticks after the last
  keepalive the leader acknowledged.
- A lease granted while this node leads gets a full TTL from when its grant applied here.
- A new leader gives every lease a full TTL from its first tick as leader (etcd's
  ``Promote``): it cannot know when the old leader last heard a keepalive, so nothing
  expires early because leadership changed. The price is that a lease whose holder died
  lives up to one TTL longer per failover. (etcd also checkpoints the remaining TTL through
  the log so long leases do not restart in full at every failover; kvraft does not yet.)
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
from collections.abc import Iterable

import msgpack

from kvraft.statemachine import (
    LEASE_TTL_S_MAX,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    encode_lease_revoke,
)

__all__ = [
    "EXPIRY_RETRY_ELECTION_TIMEOUTS",
    "LEASE_TTL_ELECTION_TIMEOUTS_MIN",
    "LeaseTimer",
    "lease_ttl_s_min",
]

LEASE_TTL_ELECTION_TIMEOUTS_MIN = 3
"""The shortest lease TTL, in longest election timeouts (see `lease_ttl_s_min`)."""

EXPIRY_RETRY_ELECTION_TIMEOUTS = 2
"""An expiry proposal not applied after this many election timeouts is proposed again."""

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

    def __init__(self, tick_ms: int, election_ticks: int) -> None:
        self.tick_ms = tick_ms
        self.now_ticks = 0
        self.leader_term: int | None = None
        self._retry_ticks = EXPIRY_RETRY_ELECTION_TIMEOUTS * 2 * election_ticks
        self._ttl_ticks: dict[int, int] = {}
        self._deadline_ticks: dict[int, int] = {}
        self._expiry_proposed_ticks: dict[int, int] = {}

    def ttl_ticks(self, ttl_s: int) -> int:
        """A TTL in ticks, rounded up: a lease never lives shorter than asked."""
        return math.ceil(ttl_s * 1000 / self.tick_ms)

    # --- leadership -------------------------------------------------------------------------

    def promote(self, term: int, leases: Iterable[tuple[int, int]]) -> None:
        """This node leads `term`: every lease (id, ttl_s) gets a full TTL from now."""
        self.leader_term = term
        self._ttl_ticks = {lease_id: self.ttl_ticks(ttl_s) for lease_id, ttl_s in leases}
        self._deadline_ticks = {
            lease_id: self.now_ticks + ttl for lease_id, ttl in self._ttl_ticks.items()
        }
        self._expiry_proposed_ticks = {}

    def demote(self) -> None:
        """This node no longer leads: it forgets every deadline (the next leader decides)."""
        self.leader_term = None
        self._ttl_ticks = {}
        self._deadline_ticks = {}
        self._expiry_proposed_ticks = {}

    # --- the log ----------------------------------------------------------------------------

    def granted(self, lease_id: int, ttl_s: int) -> None:
        """A grant applied here: while leading, the lease's TTL runs from now."""
        if self.leader_term is not None:
            ttl = self._ttl_ticks[lease_id] = self.ttl_ticks(ttl_s)
            self._deadline_ticks[lease_id] = self.now_ticks + ttl

    def revoked(self, lease_id: int) -> None:
        """A revoke or expiry applied here: the lease is gone."""
        self._ttl_ticks.pop(lease_id, None)
        self._deadline_ticks.pop(lease_id, None)
        self._expiry_proposed_ticks.pop(lease_id, None)

    def applied(self, data: bytes, index: int, ok: bool) -> None:
        """An entry applied (`ok`: it took effect): follow grants and revokes. Looks at the
        first two bytes only, so the other commands cost next to nothing."""
        if not ok or len(data) < 2:
            return
        if data[0] == _MSGPACK_FIXARRAY_2 and data[1] == OP_LEASE_GRANT:
            _, ttl_s = msgpack.unpackb(data)
            self.granted(index, ttl_s)
        elif data[0] == _MSGPACK_FIXARRAY_3 and data[1] == OP_LEASE_REVOKE:
            _, lease_id, _ = msgpack.unpackb(data)
            self.revoked(lease_id)

    def restored(self, leases: Iterable[tuple[int, int]]) -> None:
        """A snapshot replaced the state: keep the deadlines of leases still there, give new
        ones a full TTL, forget the rest."""
        if self.leader_term is None:
            return
        current = dict(leases)
        for lease_id in [i for i in self._deadline_ticks if i not in current]:
            self.revoked(lease_id)
        for lease_id, ttl_s in current.items():
            if lease_id not in self._deadline_ticks:
                self.granted(lease_id, ttl_s)

    # --- time -------------------------------------------------------------------------------

    def keepalive(self, lease_id: int, arrived_ticks: int) -> bool:
        """Refresh `lease_id` to TTL ticks after `arrived_ticks` (the tick count when the
        keepalive arrived); False if this node has no deadline for it (not leading, or the
        lease is gone) or has proposed its expiry already: a keepalive acknowledged now could
        not stop that entry from applying."""
        deadline = self._deadline_ticks.get(lease_id)
        if deadline is None or lease_id in self._expiry_proposed_ticks:
            return False
        self._deadline_ticks[lease_id] = max(deadline, arrived_ticks + self._ttl_ticks[lease_id])
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
