"""The Raft safety properties (paper Figure 3), checked after every simulator step.

- Election Safety: at most one leader per term.
- Leader Append-Only: a leader never overwrites or deletes entries in its log.
- Log Matching: two logs with an entry of the same index and term are identical
  up to that index.
- Leader Completeness: a leader's log holds every entry committed before its term.
- State Machine Safety: no two nodes apply different entries at the same index.
- Commit index never moves back (within one process lifetime).

A broken property raises `Violation`, which the runner reports with the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import Entry, Message, RequestVote, RequestVoteResponse

__all__ = ["SafetyCheckers", "Violation"]


class Violation(Exception):
    """A safety or liveness property does not hold."""

    def __init__(self, property_name: str, detail: str) -> None:
        super().__init__(f"{property_name}: {detail}")
        self.property_name = property_name
        self.detail = detail


@dataclass(slots=True)
class _LeaderTail:
    term: int
    last_index: int
    last_term: int


class SafetyCheckers:
    """Keeps what every node has done and checks each new observation against it."""

    def __init__(self) -> None:
        self.leaders_by_term: dict[int, int] = {}
        # The first entry ever applied at each index, by any node.
        self.applied: dict[int, Entry] = {}
        self.commit_index: dict[int, int] = {}
        self.leader_tails: dict[int, _LeaderTail] = {}

    def node_restarted(self, node_id: int) -> None:
        self.commit_index.pop(node_id, None)
        self.leader_tails.pop(node_id, None)

    def on_apply(self, node_id: int, entry: Entry) -> None:
        """State Machine Safety."""
        first = self.applied.setdefault(entry.index, entry)
        if first != entry:
            raise Violation(
                "state machine safety",
                f"node {node_id} applied {entry} at index {entry.index}, another node applied "
                f"{first}",
            )

    def on_send(self, node_id: int, message: Message, durable_term: int) -> None:
        """No message leaves before the term it speaks for is durable (`kvraft.raft.ready`):
        otherwise a crash could make the node win the same term twice and write two
        different entries at one (index, term). PreVote messages carry a future term by
        design (§9.6) and promise nothing."""
        pre_vote = isinstance(message, RequestVote | RequestVoteResponse) and message.pre_vote
        if message.term > durable_term and not pre_vote:
            raise Violation(
                "persist before send",
                f"node {node_id} sent {type(message).__name__} of term {message.term} while "
                f"its disk held term {durable_term}",
            )

    def after_step(self, cores: list[RaftCore]) -> None:
        for core in cores:
            self._check_commit_monotonic(core)
            if core.role == Role.LEADER:
                self._check_leader(core)
            else:
                self.leader_tails.pop(core.id, None)

    def _check_commit_monotonic(self, core: RaftCore) -> None:
        previous = self.commit_index.get(core.id, 0)
        if core.log.commit_index < previous:
            raise Violation(
                "commit index monotonic",
                f"node {core.id} commit index went back from {previous} to {core.log.commit_index}",
            )
        self.commit_index[core.id] = core.log.commit_index

    def _check_leader(self, core: RaftCore) -> None:
        known = self.leaders_by_term.setdefault(core.term, core.id)
        if known != core.id:
            raise Violation(
                "election safety", f"nodes {known} and {core.id} both leader in term {core.term}"
            )
        tail = self.leader_tails.get(core.id)
        if tail is None or tail.term != core.term:
            self._check_leader_completeness(core)
        else:
            term_now = core.log.term_at(tail.last_index)
            compacted = tail.last_index <= core.log.snapshot.index
            if core.log.last_index() < tail.last_index or (
                not compacted and term_now != tail.last_term
            ):
                raise Violation(
                    "leader append-only",
                    f"leader {core.id} of term {core.term} lost or changed entry "
                    f"{tail.last_index} (term {tail.last_term})",
                )
        self.leader_tails[core.id] = _LeaderTail(
            core.term, core.log.last_index(), core.log.last_term()
        )

    def _check_leader_completeness(self, core: RaftCore) -> None:
        for index, entry in self.applied.items():
            if index <= core.log.snapshot.index:
                continue
            if core.log.term_at(index) != entry.term:
                raise Violation(
                    "leader completeness",
                    f"leader {core.id} of term {core.term} lacks committed entry {index} "
                    f"(term {entry.term}); its log has term {core.log.term_at(index)}",
                )

    def check_log_matching(self, cores: list[RaftCore]) -> None:
        """Same index and term => same entry and same previous term; by induction, the
        same prefix (Log Matching, §5.3)."""
        seen: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        for core in cores:
            log = core.log
            previous_term = log.snapshot.term
            for entry in log.entries:
                key = (entry.index, entry.term)
                value = (entry.data, int(entry.kind), previous_term)
                other = seen.setdefault(key, value)
                if other != value:
                    raise Violation(
                        "log matching",
                        f"node {core.id} has a different entry or prefix at index "
                        f"{entry.index} term {entry.term}",
                    )
                previous_term = entry.term
