"""The Raft consensus algorithm as a pure state machine.

Theory of operation
-------------------
`RaftCore` does no IO and reads no clock. The shell (the daemon's driver loop,
or the simulator) feeds it four kinds of input:

- `tick()`: one unit of logical time has passed. Election and heartbeat
  timeouts are counted in ticks; the randomized election timeout comes from the
  `random.Random` the shell injects, so a seed replays a run exactly.
- `step(message)`: a message from a peer arrived.
- `propose(...)`, `read_index(...)`, `transfer_leadership(...)`,
  `propose_configuration(...)`: a client asked for something.
- `persisted(index, term)`: entries the core handed out earlier are durable.

and after any of them asks `ready()` for what to do, as data: what to write,
which messages to send before and after the write, which entries are committed
and may be applied, which reads may be answered (see `kvraft.raft.ready`).

The rules are the Raft paper's (Ongaro & Ousterhout 2014, Figure 2) and the
dissertation's (Ongaro 2014): PreVote (§9.6) and CheckQuorum (§6.2) keep a
partitioned or removed node from disrupting a healthy cluster; a new leader
appends a no-op and commits only entries of its own term by counting replicas
(§5.4.2); ReadIndex serves linearizable reads without writing the log (§6.4);
TimeoutNow transfers leadership (§3.10); membership changes one server at a
time, configurations taking effect when appended (§4.1), with learners that
catch up before they vote (§4.2.1).

Each role has its own step function (`_step_leader`, `_step_candidate`,
`_step_follower`) and `_become_<role>` sets it, as in etcd-raft.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvraft.raft.codec import encode_configuration
from kvraft.raft.log import RaftLog
from kvraft.raft.messages import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from kvraft.raft.progress import Progress, ProgressState
from kvraft.raft.ready import ReadState, Ready, SnapshotToRestore

__all__ = [
    "ConfigurationChangeError",
    "NotLeaderError",
    "PeerStatus",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftCore",
    "Role",
    "Status",
]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeaderError(Exception):
    """This node is not the leader; `leader_id` is the one it knows of (or NO_NODE)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(Exception):
    """The leader refuses new proposals for now (transfer in progress, too much uncommitted)."""


class ConfigurationChangeError(Exception):
    """A membership change that is not allowed now or at all."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tuning and identity of one node's core. Times are in ticks.

    Fields:
        node_id: this node's id (positive).
        election_ticks: the minimum election timeout; each timeout is drawn from
            [election_ticks, 2 * election_ticks) (§5.2). Also the CheckQuorum period.
        heartbeat_ticks: the leader sends heartbeats this often; must be well below
            election_ticks (§5.6: broadcastTime << electionTimeout).
        inflight_max: unacknowledged AppendEntries per follower while pipelining.
        batch_bytes_max: the most entry bytes in one AppendEntries (at least one entry).
        apply_batch_max: the most committed entries handed out in one Ready.
        uncommitted_entries_max: the leader refuses proposals beyond this many
            uncommitted entries, so a leader without quorum cannot grow its log forever.
        pre_vote: run a PreVote round before a real election (§9.6).
        check_quorum: a leader steps down when it has not heard from a majority within an
            election timeout, and followers ignore votes while they hear from a leader (§6.2).
        snapshot_retry_ticks: resend an unanswered InstallSnapshot after this long.
        bugs: test-only switches that inject known bugs, to prove the checkers bite.
    """

    node_id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    inflight_max: int = 64
    batch_bytes_max: int = 1024 * 1024
    apply_batch_max: int = 4096
    uncommitted_entries_max: int = 100_000
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_retry_ticks: int = 40
    bugs: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.node_id < 1:
            raise ValueError("node_id must be positive")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        unknown = self.bugs - KNOWN_BUGS
        if unknown:
            raise ValueError(f"unknown bug switches: {sorted(unknown)}")


KNOWN_BUGS = frozenset(
    {"commit_previous_term", "double_vote", "apply_before_commit", "send_before_persist"}
)
"""Test-only bug switches (see tests/test_sim_checkers_bite.py):

- commit_previous_term: count replicas of an entry from an earlier term to commit it,
  the mistake §5.4.2 / Figure 8 warns about;
- double_vote: grant a vote to a second candidate in the same term;
- apply_before_commit: hand entries to the state machine before they commit;
- send_before_persist: let a leader's messages leave with the Ready that changes its term,
  before that term is durable.
"""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match_index: int
    next_index: int
    state: str
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    node_id: int
    role: Role
    term: int
    voted_for: int
    leader_id: int
    commit_index: int
    applied_index: int
    last_log_index: int
    last_log_term: int
    snapshot_index: int
    configuration: Configuration
    pending_configuration_index: int
    leadership_transfer_to: int
    peers: dict[int, PeerStatus]


class RaftCore:
    """One node's Raft state machine. See the module docstring."""

    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        """Start (or restart) from what storage recovered.

        A brand-new cluster's nodes all start with the same `snapshot` at index 0
        whose configuration names the initial voters. A node joining an existing
        cluster starts with an empty configuration and waits to hear from a leader.
        """
        self.config = config
        self.id = config.node_id
        self._rng = rng
        hard_state = hard_state or HardState()
        self.term = hard_state.term
        self.voted_for = hard_state.voted_for
        self.log = RaftLog(snapshot or SnapshotMeta(), entries or [], hard_state.commit_index)
        self.leader_id = NO_NODE
        self.role = Role.FOLLOWER
        self._step: Callable[[Message], None] = self._step_follower
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = config.election_ticks
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.lead_transferee = NO_NODE
        # ReadIndex (§6.4): reads wait for the leader's first commit in its term, then
        # for a heartbeat round acknowledged by a majority.
        self.reads_waiting_for_commit: list[int] = []
        self.reads_unassigned: list[tuple[int, int]] = []
        self.reads_in_round: list[tuple[int, int, int]] = []
        self.read_round = 0
        self.read_round_acked: dict[int, int] = {}
        # Outputs, handed over by ready().
        self._messages: list[Message] = []
        self._messages_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_read_ids: list[int] = []
        self._snapshot_to_restore: SnapshotToRestore | None = None
        self._broadcast_pending = False
        self._last_hard_state = HardState(self.term, self.voted_for, self.log.commit_index)
        self._become_follower(self.term, NO_NODE)

    # --- inputs -------------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time passed."""
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, message: Message) -> None:
        """Handle one message from a peer (any term, any order, possibly duplicated)."""
        if message.target != self.id or message.source == self.id:
            return
        if message.term > self.term:
            if isinstance(message, RequestVote):
                in_lease = (
                    self.config.check_quorum
                    and self.leader_id != NO_NODE
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and not message.leadership_transfer:
                    # We heard from a live leader less than an election timeout ago: this
                    # candidate is disrupting a healthy cluster (§4.2.3, §9.6). Ignore it.
                    return
                if message.pre_vote:
                    self._handle_request_vote(message)
                    return
            if (
                isinstance(message, RequestVoteResponse)
                and message.pre_vote
                and message.vote_granted
            ):
                self._step(message)  # a granted PreVote echoes the future term
                return
            leader = (
                message.source
                if isinstance(message, AppendEntries | Heartbeat | InstallSnapshot)
                else NO_NODE
            )
            self._become_follower(message.term, leader)
        elif message.term < self.term:
            if isinstance(message, AppendEntries | Heartbeat) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader that cannot reach us with its term would otherwise never
                # learn of ours; with PreVote/CheckQuorum our term can be higher than
                # anyone can win elections with. Tell it, so it steps down.
                self._send(AppendEntriesResponse(self.term, self.id, message.source, False))
            elif isinstance(message, RequestVote) and message.pre_vote:
                self._send(
                    RequestVoteResponse(self.term, self.id, message.source, False, pre_vote=True)
                )
            return
        if isinstance(message, RequestVote):
            self._handle_request_vote(message)
            return
        self._step(message)

    def propose(self, data: bytes) -> int:
        """Append a state-machine command to the leader's log; returns its index.

        The caller learns the outcome when an entry with that index and this term
        appears in `Ready.committed_entries` (committed) or a different one does (lost).
        """
        return self.propose_batch([data])[0]

    def propose_batch(self, commands: list[bytes]) -> list[int]:
        """Append several commands at once (one replication round for all of them)."""
        self._check_can_propose(len(commands))
        first = self.log.last_index() + 1
        self._append_entries(
            [Entry(self.term, first + i, EntryKind.NORMAL, data) for i, data in enumerate(commands)]
        )
        return list(range(first, first + len(commands)))

    def propose_configuration(self, configuration: Configuration) -> int:
        """Propose a new membership: at most one voter added or removed (§4.1).

        Refused while another change is uncommitted, and until the leader has committed
        an entry of its own term (the fix to the single-server change bug the
        dissertation's author reported in 2015: an old leader's uncommitted change
        could otherwise combine with a new one into two disjoint majorities).
        """
        self._check_can_propose(1)
        current = self.log.configuration()
        if self.log.pending_configuration_index():
            raise ConfigurationChangeError("another membership change is in progress")
        if self.log.term_at(self.log.commit_index) != self.term:
            raise ConfigurationChangeError("the leader has not committed in its term yet")
        if len(current.voters ^ configuration.voters) > 1:
            raise ConfigurationChangeError("change at most one voter at a time")
        if not configuration.voters:
            raise ConfigurationChangeError("a configuration needs at least one voter")
        if configuration.voters & configuration.learners:
            raise ConfigurationChangeError("a node cannot be both voter and learner")
        index = self.log.last_index() + 1
        data = encode_configuration(configuration)
        self._append_entries([Entry(self.term, index, EntryKind.CONFIG, data)])
        return index

    def read_index(self, read_id: int) -> None:
        """Ask to serve a linearizable read (§6.4); answered by a `ReadState` in a Ready."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.log.term_at(self.log.commit_index) != self.term:
            # Until an entry of this term commits, the leader does not know the latest
            # commit index (§6.4 step 1): wait for the no-op.
            self.reads_waiting_for_commit.append(read_id)
            return
        self._queue_read(read_id)

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target` (§3.10): catch it up, then send TimeoutNow."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if target == self.id:
            return
        if target not in self.log.configuration().voters:
            raise ConfigurationChangeError(f"node {target} is not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        # The transfer must finish within an election timeout or it is abandoned.
        self.election_elapsed = 0
        progress = self.progress[target]
        if progress.match_index == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target, progress)

    def persisted(self, index: int, term: int) -> None:
        """The shell made entries up to `index` (whose entry has `term`) durable."""
        if index > self.log.persisted_index and self.log.match_term(index, term):
            self.log.persisted_index = index
            if self.role == Role.LEADER:
                self._update_self_progress()

    def compact(self, index: int) -> SnapshotMeta:
        """The state machine snapshotted everything up to `index`: drop those entries."""
        return self.log.compact(index)

    # --- output -------------------------------------------------------------------------

    def ready(self) -> Ready:
        """Everything the shell must do now, in order (see `kvraft.raft.ready`)."""
        if self.role == Role.LEADER:
            if self._broadcast_pending:
                self._broadcast_pending = False
                self._broadcast_append()
            if self.reads_unassigned:
                self._start_read_round()
        ready = Ready(
            messages=self._messages,
            messages_after_persist=self._messages_after_persist,
            read_states=self._read_states,
            dropped_read_ids=self._dropped_read_ids,
            snapshot=self._snapshot_to_restore,
        )
        self._messages, self._messages_after_persist = [], []
        self._read_states, self._dropped_read_ids = [], []
        self._snapshot_to_restore = None
        ready.entries = self.log.take_unstable()
        hard_state = HardState(self.term, self.voted_for, self.log.commit_index)
        if hard_state != self._last_hard_state:
            ready.hard_state = hard_state
            ready.term_or_vote_changed = (hard_state.term, hard_state.voted_for) != (
                self._last_hard_state.term,
                self._last_hard_state.voted_for,
            )
            self._last_hard_state = hard_state
        if (
            ready.term_or_vote_changed
            and ready.messages
            and "send_before_persist" not in self.config.bugs
        ):
            # Every message speaks for this node's term: a leader's AppendEntries of a term
            # it has not stored yet could, after a crash and a second win of the same term
            # with the vote forgotten, sit beside a different entry at the same (index,
            # term). No message leaves before the HardState it implies is durable (etcd's
            # rule; see `kvraft.raft.ready`).
            ready.messages_after_persist = [*ready.messages, *ready.messages_after_persist]
            ready.messages = []
        ready.must_sync = (
            ready.term_or_vote_changed or bool(ready.entries) or ready.snapshot is not None
        )
        apply_up_to = self.log.commit_index
        if "apply_before_commit" in self.config.bugs:
            apply_up_to = self.log.last_index()
        ready.committed_entries = self.log.take_committed(apply_up_to, self.config.apply_batch_max)
        return ready

    def has_ready(self) -> bool:
        # Called on every turn of the driver: the HardState is compared field by field, not
        # built and compared as a dataclass.
        last = self._last_hard_state
        return bool(
            self._messages
            or self._messages_after_persist
            or self._read_states
            or self._dropped_read_ids
            or self._snapshot_to_restore
            or self._broadcast_pending
            or self.reads_unassigned
            or self.log.unstable_index <= self.log.last_index()
            or self.log.applied_index < self.log.commit_index
            or self.log.commit_index != last.commit_index
            or self.term != last.term
            or self.voted_for != last.voted_for
        )

    def status(self) -> Status:
        return Status(
            node_id=self.id,
            role=self.role,
            term=self.term,
            voted_for=self.voted_for,
            leader_id=self.leader_id,
            commit_index=self.log.commit_index,
            applied_index=self.log.applied_index,
            last_log_index=self.log.last_index(),
            last_log_term=self.log.last_term(),
            snapshot_index=self.log.snapshot.index,
            configuration=self.log.configuration(),
            pending_configuration_index=self.log.pending_configuration_index(),
            leadership_transfer_to=self.lead_transferee,
            peers={
                peer: PeerStatus(p.match_index, p.next_index, p.state.value, p.recent_active)
                for peer, p in self.progress.items()
            },
        )

    # --- roles --------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = NO_NODE
        self.leader_id = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self.votes = {}
        self.progress = {}
        self.lead_transferee = NO_NODE
        # A broadcast owed by a leader that stepped down within one batch of inputs is owed
        # by nobody: left set, `has_ready()` would stay true with nothing to hand out.
        self._broadcast_pending = False
        self._drop_pending_reads()

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self._step = self._step_follower
        self.leader_id = leader_id

    def _become_pre_candidate(self) -> None:
        # A PreVote round changes neither term nor vote (§9.6): a node that cannot win
        # cannot force the cluster to a higher term.
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._step = self._step_candidate

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.voted_for = self.id
        self.role = Role.CANDIDATE
        self._step = self._step_candidate

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self._step = self._step_leader
        self.leader_id = self.id
        for peer in self.log.configuration().members:
            self._add_progress(peer)
        self._update_self_progress()
        # A no-op of the new term lets the leader commit its predecessors' entries
        # (§5.4.2) and learn the commit index for ReadIndex (§6.4).
        self._append_entries([Entry(self.term, self.log.last_index() + 1, EntryKind.NOOP)])

    def _add_progress(self, peer: int) -> None:
        progress = Progress(self.log.last_index() + 1, self.config.inflight_max)
        progress.recent_active = True  # give a new member one CheckQuorum round
        self.progress[peer] = progress

    def _campaign(self, *, pre_vote: bool, leadership_transfer: bool = False) -> None:
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally_votes():
            return
        for peer in sorted(self.log.configuration().voters - {self.id}):
            self._send(
                RequestVote(
                    term,
                    self.id,
                    peer,
                    self.log.last_index(),
                    self.log.last_term(),
                    pre_vote=pre_vote,
                    leadership_transfer=leadership_transfer,
                )
            )

    def _tally_votes(self) -> bool:
        """Count votes; win or lose the (pre-)election when a majority has spoken."""
        voters = self.log.configuration().voters
        granted = sum(1 for peer, vote in self.votes.items() if vote and peer in voters)
        rejected = sum(1 for peer, vote in self.votes.items() if not vote and peer in voters)
        quorum = len(voters) // 2 + 1
        if granted >= quorum:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return True
        if rejected >= quorum:
            self._become_follower(self.term, NO_NODE)
            return True
        return False

    def _promotable(self) -> bool:
        return self.id in self.log.configuration().voters

    # --- ticks --------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_ticks and self._promotable():
            self.election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for progress in self.progress.values():
            if progress.state == ProgressState.SNAPSHOT:
                progress.snapshot_ticks += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                # §6.2: a leader that cannot reach a majority steps down, so clients
                # go looking for the real one instead of waiting on it.
                self._become_follower(self.term, NO_NODE)
                return
            self.lead_transferee = NO_NODE  # a transfer that did not finish is abandoned
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        voters = self.log.configuration().voters
        active = sum(
            1
            for peer in voters
            if peer == self.id or (peer in self.progress and self.progress[peer].recent_active)
        )
        for peer, progress in self.progress.items():
            progress.recent_active = peer == self.id
        return active >= len(voters) // 2 + 1

    # --- voting -------------------------------------------------------------------------

    def _handle_request_vote(self, message: RequestVote) -> None:
        if message.pre_vote:
            # Grant a PreVote for a future term if the log is up to date; nothing changes.
            can_vote = message.term > self.term
        else:
            can_vote = self.voted_for == message.source or (
                self.voted_for == NO_NODE and self.leader_id == NO_NODE
            )
            if "double_vote" in self.config.bugs:
                can_vote = True
        if can_vote and self.log.is_up_to_date(message.last_log_index, message.last_log_term):
            if not message.pre_vote:
                self.voted_for = message.source
                self.election_elapsed = 0
            self._send(
                RequestVoteResponse(
                    message.term, self.id, message.source, True, pre_vote=message.pre_vote
                )
            )
        else:
            self._send(
                RequestVoteResponse(
                    self.term, self.id, message.source, False, pre_vote=message.pre_vote
                )
            )

    # --- per-role step functions --------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, AppendEntries):
            self.election_elapsed = 0
            self.leader_id = message.source
            self._handle_append_entries(message)
        elif isinstance(message, Heartbeat):
            self.election_elapsed = 0
            self.leader_id = message.source
            self.log.commit_to(message.leader_commit)
            self._send(HeartbeatResponse(self.term, self.id, message.source, message.read_round))
        elif isinstance(message, InstallSnapshot):
            self.election_elapsed = 0
            self.leader_id = message.source
            self._handle_install_snapshot(message)
        elif isinstance(message, TimeoutNow) and self._promotable():
            # §3.10: start an election at once, skipping PreVote: the leader asked.
            self._campaign(pre_vote=False, leadership_transfer=True)

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, AppendEntries | Heartbeat | InstallSnapshot):
            # Someone won this term (§5.2): follow it.
            self._become_follower(message.term, message.source)
            self._step_follower(message)
        elif isinstance(message, RequestVoteResponse):
            expected_pre_vote = self.role == Role.PRE_CANDIDATE
            if message.pre_vote != expected_pre_vote:
                return
            self.votes[message.source] = message.vote_granted
            self._tally_votes()

    def _step_leader(self, message: Message) -> None:
        progress = self.progress.get(message.source)
        if progress is None:
            return
        if isinstance(message, AppendEntriesResponse):
            progress.recent_active = True
            self._handle_append_response(message, progress)
        elif isinstance(message, HeartbeatResponse):
            progress.recent_active = True
            progress.on_heartbeat_response()
            if (
                progress.state == ProgressState.SNAPSHOT
                and progress.snapshot_ticks >= self.config.snapshot_retry_ticks
            ):
                progress.become_probe()  # the snapshot or its answer was lost: start over
            if progress.match_index < self.log.last_index():
                # Even with nothing new to send (next_index is past our log because the
                # pipelined appends were lost), an empty AppendEntries draws a rejection
                # whose hint puts the follower back on track.
                self._send_append(message.source, progress, allow_empty=True)
            self._ack_read_round(message.source, message.read_round)

    # --- replication: follower side -----------------------------------------------------

    def _handle_append_entries(self, message: AppendEntries) -> None:
        if message.prev_log_index < self.log.commit_index:
            # Everything up to our commit index is already known to match (§5.4).
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, message.source, True, match_index=self.log.commit_index
                )
            )
            return
        last_new_index = self.log.maybe_append(
            message.prev_log_index, message.prev_log_term, message.entries
        )
        if last_new_index is not None:
            # Figure 2, AppendEntries rule 5: commit no further than what we know matches.
            self.log.commit_to(min(message.leader_commit, last_new_index))
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, message.source, True, match_index=last_new_index
                )
            )
            return
        # Fast backtracking hint (§5.3): skip a whole conflicting term per round trip.
        if message.prev_log_index > self.log.last_index():
            conflict_index, conflict_term = self.log.last_index() + 1, 0
        else:
            conflict_term = self.log.term_at(message.prev_log_index) or 0
            conflict_index = self.log.first_index_of_term(message.prev_log_index)
        self._send(
            AppendEntriesResponse(
                self.term,
                self.id,
                message.source,
                False,
                reject_index=message.prev_log_index,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
            )
        )

    def _handle_install_snapshot(self, message: InstallSnapshot) -> None:
        meta = message.meta
        if meta.index <= self.log.commit_index:
            match_index = self.log.commit_index
        elif self.log.match_term(meta.index, meta.term):
            # We already hold that entry: everything up to it is committed (§7: "retain
            # log entries following it").
            self.log.commit_to(meta.index)
            match_index = meta.index
        else:
            self.log.restore(meta)
            self._snapshot_to_restore = SnapshotToRestore(meta, message.data)
            match_index = meta.index
        self._send(
            AppendEntriesResponse(self.term, self.id, message.source, True, match_index=match_index)
        )

    # --- replication: leader side -------------------------------------------------------

    def _check_can_propose(self, count: int) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.lead_transferee != NO_NODE:
            # §3.10: the old leader stops accepting requests while it hands over.
            raise ProposalDroppedError("leadership transfer in progress")
        uncommitted = self.log.last_index() - self.log.commit_index
        if uncommitted + count > self.config.uncommitted_entries_max:
            raise ProposalDroppedError("too many uncommitted entries (no quorum?)")

    def _append_entries(self, entries: list[Entry]) -> None:
        before = self.log.configuration()
        self.log.append(entries)
        after = self.log.configuration()
        if after is not before:
            self._apply_configuration(after)
        self._broadcast_pending = True

    def _apply_configuration(self, configuration: Configuration) -> None:
        """A new configuration is in force as soon as it is in the log (§4.1)."""
        if self.role != Role.LEADER:
            return
        for peer in configuration.members:
            if peer not in self.progress:
                self._add_progress(peer)
                # Probe the newcomer at once rather than at the next heartbeat: its answer
                # tells where its log ends.
                self._send_append(peer, self.progress[peer], allow_empty=True)
        for peer in list(self.progress):
            if peer not in configuration.members and peer != self.id:
                del self.progress[peer]
                self.read_round_acked.pop(peer, None)
        if self.lead_transferee not in configuration.voters:
            self.lead_transferee = NO_NODE
        self._release_confirmed_reads()
        self._maybe_commit()

    def _update_self_progress(self) -> None:
        progress = self.progress.get(self.id)
        if progress is not None and progress.on_match(self.log.persisted_index):
            self._maybe_commit()

    def _send_append(self, peer: int, progress: Progress, *, allow_empty: bool = False) -> None:
        """Send what `peer` needs next: entries, or a snapshot if they are compacted away."""
        if peer == self.id or not progress.can_send():
            return
        prev_index = progress.next_index - 1
        prev_term = self.log.term_at(prev_index)
        if prev_term is None:
            meta = self.log.snapshot
            self._send(InstallSnapshot(self.term, self.id, peer, meta))
            progress.become_snapshot(meta.index)
            return
        if progress.next_index > self.log.last_index():
            if not allow_empty:
                return
            entries: list[Entry] = []
        else:
            entries = self.log.slice(
                progress.next_index, self.log.last_index() + 1, self.config.batch_bytes_max
            )
        self._send(
            AppendEntries(
                self.term,
                self.id,
                peer,
                prev_index,
                prev_term,
                tuple(entries),
                self.log.commit_index,
            )
        )
        progress.on_sent(prev_index + len(entries))

    def _broadcast_append(self) -> None:
        for peer, progress in self.progress.items():
            self._send_append(peer, progress)
            # In REPLICATE we may fill the window at once; in PROBE one message at a time.
            while (
                progress.state == ProgressState.REPLICATE
                and progress.next_index <= self.log.last_index()
                and progress.can_send()
            ):
                self._send_append(peer, progress)

    def _broadcast_heartbeat(self) -> None:
        for peer, progress in self.progress.items():
            if peer == self.id:
                continue
            commit = min(progress.match_index, self.log.commit_index)
            self._send(Heartbeat(self.term, self.id, peer, commit, self.read_round))

    def _handle_append_response(self, message: AppendEntriesResponse, progress: Progress) -> None:
        peer = message.source
        if not message.success:
            if message.reject_index == 0 and message.conflict_index == 0:
                return  # an answer to a stale-term message: nothing to learn
            hint = message.conflict_index
            if message.conflict_term:
                leader_last = self.log.last_index_of_term(
                    message.conflict_term, message.reject_index
                )
                if leader_last:
                    hint = leader_last + 1
            if progress.on_reject(message.reject_index, max(hint, 1)):
                self._send_append(peer, progress, allow_empty=True)
            return
        if not progress.on_match(message.match_index):
            return
        if progress.state == ProgressState.PROBE or (
            progress.state == ProgressState.SNAPSHOT
            and progress.match_index >= progress.snapshot_index
        ):
            progress.become_replicate()
        # A new commit index reaches the followers with the next AppendEntries or heartbeat
        # ("including heartbeats", §5.3), not with a broadcast of its own: one would double
        # the messages of every replication round, and the client's answer does not wait
        # for the followers to learn it.
        self._maybe_commit()
        if self.role != Role.LEADER:
            # Committing the configuration that removed this leader made it step down
            # (§4.2.2): `progress` is stale, and an AppendEntries now would make the peer
            # take a removed node for its leader.
            return
        self._send_append(peer, progress)
        if peer == self.lead_transferee and progress.match_index == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, peer))

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters has (§5.3, §5.4.2)."""
        voters = self.log.configuration().voters
        if not voters:
            return False
        matches = sorted(
            (self.progress[peer].match_index if peer in self.progress else 0 for peer in voters),
            reverse=True,
        )
        candidate = matches[len(voters) // 2]
        if candidate <= self.log.commit_index:
            return False
        # §5.4.2: only an entry of the current term is committed by counting replicas;
        # earlier entries commit indirectly with it (Figure 8).
        if (
            self.log.term_at(candidate) != self.term
            and "commit_previous_term" not in self.config.bugs
        ):
            return False
        had_committed_in_term = self.log.term_at(self.log.commit_index) == self.term
        self.log.commit_to(candidate)
        if not had_committed_in_term and self.log.term_at(self.log.commit_index) == self.term:
            for read_id in self.reads_waiting_for_commit:
                self._queue_read(read_id)
            self.reads_waiting_for_commit = []
        self._maybe_step_down_after_removal()
        return True

    def _maybe_step_down_after_removal(self) -> None:
        """A leader not in the committed configuration steps down (§4.2.2)."""
        configuration = self.log.configuration()
        if self.id not in configuration.voters and not self.log.pending_configuration_index():
            self._become_follower(self.term, NO_NODE)

    # --- ReadIndex (§6.4) ---------------------------------------------------------------

    def _queue_read(self, read_id: int) -> None:
        voters = self.log.configuration().voters
        if voters == {self.id}:
            self._read_states.append(ReadState(read_id, self.log.commit_index))
            return
        self.reads_unassigned.append((read_id, self.log.commit_index))

    def _start_read_round(self) -> None:
        """All reads queued since the last round share one heartbeat round (batching)."""
        self.read_round += 1
        self.reads_in_round.extend(
            (read_id, read_index, self.read_round) for read_id, read_index in self.reads_unassigned
        )
        self.reads_unassigned = []
        self.heartbeat_elapsed = 0
        self._broadcast_heartbeat()
        self._release_confirmed_reads()

    def _ack_read_round(self, peer: int, read_round: int) -> None:
        if read_round <= self.read_round_acked.get(peer, 0):
            return
        self.read_round_acked[peer] = read_round
        self._release_confirmed_reads()

    def _release_confirmed_reads(self) -> None:
        """Hand out the reads whose heartbeat round a majority of voters acknowledged.

        Called on each acknowledgement, when a round starts (a leader that is the only voter
        confirms its own round at once) and when the voters change (a smaller majority may
        have acknowledged already; with no one left to answer a heartbeat, a read waiting for
        one would otherwise wait forever)."""
        voters = self.log.configuration().voters
        if not self.reads_in_round or not voters:
            return
        acked = sorted(
            (
                self.read_round if peer_id == self.id else self.read_round_acked.get(peer_id, 0)
                for peer_id in voters
            ),
            reverse=True,
        )
        confirmed_round = acked[len(voters) // 2]
        still_waiting = []
        for read_id, read_index, round_number in self.reads_in_round:
            if round_number <= confirmed_round:
                self._read_states.append(ReadState(read_id, read_index))
            else:
                still_waiting.append((read_id, read_index, round_number))
        self.reads_in_round = still_waiting

    def _drop_pending_reads(self) -> None:
        self._dropped_read_ids.extend(self.reads_waiting_for_commit)
        self._dropped_read_ids.extend(read_id for read_id, _ in self.reads_unassigned)
        self._dropped_read_ids.extend(read_id for read_id, _, _ in self.reads_in_round)
        self.reads_waiting_for_commit = []
        self.reads_unassigned = []
        self.reads_in_round = []
        self.read_round_acked = {}

    # --- sending ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        # The leader's outgoing replication promises nothing about its own disk, so it
        # may leave before the write (§10.2.1); every other message (votes, answers, a
        # candidate's RequestVote) speaks for state that must be durable first.
        if self.role == Role.LEADER and isinstance(
            message, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow
        ):
            self._messages.append(message)
        else:
            self._messages_after_persist.append(message)
