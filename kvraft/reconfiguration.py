"""The leader's side of a membership change: add a learner, wait for it to catch up, promote
it, remove a member, hand leadership over; and the leader's view of the members.

Theory of operation. A change is one configuration entry, proposed through the node's driver
like a write, and one member at a time (§4.1), so any majority of the old voters overlaps any
majority of the new. `kvraft.membership` plans each entry (with the address book in its
context); this module runs the steps on the leader and waits for each to commit:

- Adding a voter (§4.2.1) takes three steps, each bounded by one request timeout
  (`MEMBERSHIP_REQUEST_TIMEOUTS` in all): the new node joins as a learner, which replicates
  but neither votes nor counts for commit; the leader waits until it has caught up (its match
  index close to the commit index, entries streaming); only then does it propose the
  promotion. A voter that joined empty would stall commits while it catches up. Each step is
  idempotent: a repeated request finds the learner there and goes on from where it stopped.
- Removing a member is one step. A leader removing itself first hands leadership to the most
  caught-up voter (§3.10) and answers `HandedOver`: the new leader does the removal, and the
  old one, no longer a member, stays quiet (§4.2.3).
- Transferring leadership asks the core to hand over (§3.10), asking again until the
  deadline: the core abandons a transfer after an election timeout.

A new leader changes the membership only once an entry of its own term has committed: a change
of an earlier term that never committed could otherwise combine with a new one into two steps
whose majorities need not overlap. One change runs at a time, including the steps of an add
that leave nothing pending in the log (waiting for the learner): a second request is refused
(`ChangeInProgress`), never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from kvraft.config import ClusterConfig
from kvraft.errors import (
    ChangeInProgress,
    HandedOver,
    NodeStoppedError,
    NotCaughtUp,
    NotLeader,
    OutcomeUnknown,
    Unavailable,
)
from kvraft.membership import (
    MemberAddress,
    MembershipConflictError,
    UnknownMemberError,
    is_caught_up,
    pick_transfer_target,
    plan_learner_add,
    plan_promotion,
    plan_removal,
)
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import NO_NODE, Configuration
from kvraft.raft.progress import Progress, ProgressState

__all__ = ["MEMBERSHIP_REQUEST_TIMEOUTS", "ReconfigurableNode", "Reconfiguration"]

# The node's log lines keep the logger name they always had: the daemon's log format prints
# it, and operators filter on it.
log = logging.getLogger("kvraft.server")

MEMBERSHIP_REQUEST_TIMEOUTS = 3
"""A membership change may take this many `limits.request_timeout_ms`: adding a voter commits
the learner, waits for it to catch up, then commits its promotion, each bounded by one."""


class ReconfigurableNode(Protocol):
    """What a membership change needs of its node (`kvraft.server.RaftNode`)."""

    @property
    def id(self) -> int: ...

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def core(self) -> RaftCore | None: ...

    @property
    def peer_addresses(self) -> Mapping[int, MemberAddress]: ...

    @property
    def stopping(self) -> bool: ...

    async def wait_until(self, condition: Callable[[], bool], deadline_s: float) -> bool: ...

    def propose_configuration(
        self, configuration: Configuration, base: Configuration, future: asyncio.Future[None]
    ) -> None: ...

    def request_leadership_transfer(self, target: int) -> None: ...


class Reconfiguration:
    """Membership changes run by one node while it leads, one at a time."""

    def __init__(self, node: ReconfigurableNode) -> None:
        self._node = node
        self._lock = asyncio.Lock()

    @property
    def timeout_s(self) -> float:
        """The longest a membership request takes before it answers 503/504."""
        return MEMBERSHIP_REQUEST_TIMEOUTS * self._node.config.limits.request_timeout_ms / 1000

    # --- the changes --------------------------------------------------------------------

    async def add_member(self, member: MemberAddress, *, voter: bool = True) -> dict[str, Any]:
        """Add `member` as a learner, wait until it has caught up and, if `voter`, promote it
        (§4.2.1). Idempotent: a member already there at the same addresses is not re-added.

        Raises NotLeader, ChangeInProgress, MembershipError (and subclasses), NotCaughtUp,
        Unavailable or OutcomeUnknown; returns `members_view()` once everything committed.
        """
        core = self._leader_core()
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + self.timeout_s
        async with self._exclusive_change():
            await self._wait_for_first_commit(core, deadline_s)
            core = self._leader_core()
            base = core.log.configuration()
            if not voter and member.id in base.voters:
                raise MembershipConflictError(
                    f"node {member.id} is a voter; remove it to add it back as a learner"
                )
            learner = plan_learner_add(base, self._book_of(base), member)
            if learner is not None:
                await self._commit_configuration(learner, base, deadline_s)
                log.info("node %d: added node %d as a learner", self._node.id, member.id)
            if voter and member.id not in self._leader_core().log.configuration().voters:
                await self._wait_caught_up(member.id, deadline_s)
                base = self._leader_core().log.configuration()
                promotion = plan_promotion(base, self._book_of(base), member.id)
                if promotion is not None:
                    await self._commit_configuration(promotion, base, deadline_s)
                    log.info("node %d: promoted node %d to voter", self._node.id, member.id)
        return self.members_view()

    async def remove_member(self, node_id: int) -> dict[str, Any]:
        """Remove `node_id` from the cluster. The leader removing itself first hands
        leadership to the most caught-up voter (§3.10) and raises HandedOver: the new leader
        does the removal, and the old one, no longer a member, stays quiet (§4.2.3)."""
        core = self._leader_core()
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + self.timeout_s
        if node_id == self._node.id:
            plan_removal(core.log.configuration(), self._node.peer_addresses, node_id)  # validate
            new_leader = await self.transfer_leadership(None)
            raise HandedOver(new_leader)
        async with self._exclusive_change():
            await self._wait_for_first_commit(core, deadline_s)
            base = self._leader_core().log.configuration()
            change = plan_removal(base, self._book_of(base), node_id)
            await self._commit_configuration(change, base, deadline_s)
            log.info("node %d: removed node %d", self._node.id, node_id)
        return self.members_view()

    async def transfer_leadership(self, target: int | None) -> int:
        """Hand leadership to `target` (None: the most caught-up voter) and wait until it
        moved; returns the new leader's id. Raises NotLeader, MembershipError (unknown or
        non-voting target), Unavailable (nothing moved in time) or OutcomeUnknown (this node
        stepped down but no new leader is known yet)."""
        node = self._node
        core = self._leader_core()
        configuration = core.log.configuration()
        if target is None:
            matches = {peer: progress.match_index for peer, progress in core.progress.items()}
            target = pick_transfer_target(configuration.voters, node.id, matches)
            if target is None:
                raise MembershipConflictError("there is no other voter to hand leadership to")
        elif target == node.id:
            return node.id
        elif target not in configuration.members:
            raise UnknownMemberError(f"node {target} is not a member")
        elif target not in configuration.voters:
            raise MembershipConflictError(f"node {target} is a learner; only a voter can lead")
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + node.config.limits.request_timeout_ms / 1000
        # The core abandons a transfer after an election timeout (§3.10): ask again until the
        # deadline, so a target that was briefly slow still gets it.
        retry_s = 2 * node.config.raft.election_ticks * node.config.raft.tick_ms / 1000
        while core.role == Role.LEADER and loop.time() < deadline_s:
            node.request_leadership_transfer(target)
            await node.wait_until(
                lambda: core.role != Role.LEADER, min(deadline_s, loop.time() + retry_s)
            )
        if core.role == Role.LEADER:
            raise Unavailable(f"node {target} did not take leadership in time; nothing changed")
        if not await node.wait_until(lambda: core.leader_id not in (NO_NODE, node.id), deadline_s):
            raise OutcomeUnknown("this node stepped down but no new leader is known yet")
        log.info("node %d: handed leadership to node %d", node.id, core.leader_id)
        return core.leader_id

    # --- the leader's view --------------------------------------------------------------

    def change_pending(self) -> bool:
        """A membership change is uncommitted, or a leader is in the middle of one."""
        core = self._node.core
        assert core is not None
        return bool(core.log.pending_configuration_index()) or self._lock.locked()

    def members_view(self) -> dict[str, Any]:
        """`GET /v1/members`: every member, and on the leader how far each has replicated."""
        core = self._node.core
        assert core is not None
        return {
            "leader_id": core.leader_id,
            "term": core.term,
            "change_pending": self.change_pending(),
            "members": self.member_items(core),
        }

    def member_items(self, core: RaftCore) -> list[dict[str, Any]]:
        """Every member of the latest configuration with its addresses; on the leader also
        how far each has replicated and whether it has caught up."""
        configuration = core.log.configuration()
        addresses = self._node.peer_addresses
        items = []
        for member in sorted(configuration.members):
            address = addresses.get(member)
            item: dict[str, Any] = {
                "id": member,
                "raft_address": address.raft_address if address else None,
                "http_address": address.http_address if address else None,
                "voter": member in configuration.voters,
            }
            if core.role == Role.LEADER:
                progress = core.progress.get(member)
                item["match_index"] = progress.match_index if progress else 0
                item["caught_up"] = member == self._node.id or (
                    progress is not None and _progress_caught_up(core, progress)
                )
            items.append(item)
        return items

    # --- the steps ----------------------------------------------------------------------

    def _leader_core(self) -> RaftCore:
        if self._node.stopping:
            raise NodeStoppedError("node is shutting down")
        core = self._node.core
        assert core is not None
        if core.role != Role.LEADER:
            raise NotLeader(core.leader_id)
        return core

    @contextlib.asynccontextmanager
    async def _exclusive_change(self) -> AsyncIterator[None]:
        # One change at a time, including the steps of an add that leave nothing pending in
        # the log (waiting for the learner): a second request is refused, never queued.
        if self._lock.locked():
            raise ChangeInProgress("another membership change is in progress on the leader")
        async with self._lock:
            yield

    def _book_of(self, configuration: Configuration) -> dict[int, MemberAddress]:
        return {i: a for i, a in self._node.peer_addresses.items() if i in configuration.members}

    async def _wait_for_first_commit(self, core: RaftCore, deadline_s: float) -> None:
        # A new leader may change the membership only once an entry of its term commits;
        # that usually takes one round trip, so wait for it rather than refuse at once.
        raft = self._node.config.raft
        election_s = raft.election_ticks * raft.tick_ms / 1000
        loop = asyncio.get_running_loop()

        def committed_in_term() -> bool:
            return core.log.term_at(core.log.commit_index) == core.term

        await self._node.wait_until(
            lambda: core.role != Role.LEADER or committed_in_term(),
            min(deadline_s, loop.time() + election_s),
        )

    async def _commit_configuration(
        self, configuration: Configuration, base: Configuration, deadline_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        request_timeout_s = self._node.config.limits.request_timeout_ms / 1000
        remaining_s = min(deadline_s - loop.time(), request_timeout_s)
        if remaining_s <= 0:
            raise Unavailable("no time left to propose the membership change")
        future: asyncio.Future[None] = loop.create_future()
        self._node.propose_configuration(configuration, base, future)
        try:
            await asyncio.wait_for(asyncio.shield(future), remaining_s)
        except TimeoutError:
            raise OutcomeUnknown(
                "the membership change was proposed but not committed in time (no quorum?); "
                "it may still apply"
            ) from None

    async def _wait_caught_up(self, node_id: int, deadline_s: float) -> None:
        core = self._leader_core()

        def caught_up() -> bool:
            progress = core.progress.get(node_id)
            if core.role != Role.LEADER:
                return True  # stop waiting: the caller finds out it is no longer the leader
            return progress is not None and _progress_caught_up(core, progress)

        # Catching up gets its own request timeout (a snapshot can take a while), leaving the
        # last one for the promotion.
        loop = asyncio.get_running_loop()
        request_timeout_s = self._node.config.limits.request_timeout_ms / 1000
        caught_up_by_s = min(deadline_s, loop.time() + request_timeout_s)
        if not await self._node.wait_until(caught_up, caught_up_by_s):
            progress = core.progress.get(node_id)
            match_index = progress.match_index if progress is not None else 0
            raise NotCaughtUp(
                f"node {node_id} is a learner but has not caught up yet (match index "
                f"{match_index}, commit index {core.log.commit_index}); retry to promote it"
            )
        self._leader_core()  # still the leader?


def _progress_caught_up(core: RaftCore, progress: Progress) -> bool:
    """Whether the member `progress` follows is close enough to the leader to be promoted."""
    return is_caught_up(
        progress.match_index,
        core.log.commit_index,
        replicating=progress.state == ProgressState.REPLICATE,
    )
