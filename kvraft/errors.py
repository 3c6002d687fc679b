"""One vocabulary of errors, from the node's shell to the HTTP answer.

Each says whose fault it was and what the client may do:

- `NotLeader`: this node cannot serve the request; `leader_id` may (nothing happened).
- `Unavailable` (and `ProposalLost`, `NodeStoppedError`, `NotCaughtUp`): the cluster
  cannot take the request now; it definitely did not apply, so a retry is safe (503).
- `OutcomeUnknown`: the command was proposed and may still apply (504).
- `ChangeInProgress`: another membership change must finish first (409).

The pure core raises its own (`kvraft.raft.core.NotLeaderError`, ...); `kvraft.shell`
translates them into these, once.
"""

from __future__ import annotations

__all__ = [
    "ChangeInProgress",
    "HandedOver",
    "NodeStoppedError",
    "NotCaughtUp",
    "NotLeader",
    "OutcomeUnknown",
    "Overloaded",
    "ProposalLost",
    "Unavailable",
]


class NotLeader(Exception):
    """This node cannot serve the request; `leader_id` may (0: no leader known)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader; leader is {leader_id or 'unknown'}")
        self.leader_id = leader_id


class Unavailable(Exception):
    """The cluster cannot take the request now (no leader, no quorum, overloaded); retry."""


class Overloaded(Unavailable):
    """This node holds as much client work as its limits allow; nothing was done. Retry
    later (503 ``overloaded``)."""


class ProposalLost(Unavailable):
    """The proposal was definitely not committed (another entry took its index); retry."""


class OutcomeUnknown(Exception):
    """The command was proposed but its fate is unknown (timeout): it may still apply."""


class NodeStoppedError(Unavailable):
    """The node is shutting down or has failed."""


class NotCaughtUp(Unavailable):
    """The new member is a learner but has not caught up in time; retrying promotes it."""


class ChangeInProgress(Exception):
    """Another membership change is not finished yet (or the leader has not committed an
    entry of its term yet, §4.1 and the 2015 single-server change fix): retry later."""


class HandedOver(NotLeader):
    """This leader handed leadership to `leader_id` so that the new leader can finish the
    request (removing the old leader); the request is to be forwarded there."""
