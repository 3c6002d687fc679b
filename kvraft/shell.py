"""The node without its IO: one object that turns the core's Readies into work, in order.

Theory of operation
-------------------
`RaftCore` says *what* must happen (`kvraft.raft.ready`); `NodeShell` makes it happen
in the right order and keeps the books a node needs around the core, with no IO, no
clock and no asyncio of its own. The daemon (`kvraft.server`), the simulator
(`kvraft.sim.cluster`) and the test harness (`tests/raft_harness.py`) all drive this
one class; what differs between them is only how a write reaches a disk and a message
reaches a peer.

Inputs are queued, and fed to the core in one batch by `advance()`, the way a busy
node meets them: at most one tick, every message that arrived, every proposal (as one
`propose_batch`), configuration changes, reads, a leadership transfer. `advance()`
then builds one Ready and starts it:

1. its `messages` go to the outbox at once (the IO layer sends them before writing);
2. what must be written comes back as a `Persist`, which the IO layer carries out and
   reports with `persisted(token)`. A HardState that moved only the commit index is
   not worth a write of its own (Figure 2 keeps the commit index volatile; a restarted
   node learns it from the leader): it rides on the next write.
3. Once its write, and every earlier one, is done (`persisted(token)`), its
   `messages_after_persist` go to the outbox, to be sent before anything else; the
   next `advance()` runs the rest: the snapshot restored, committed entries
   applied (answering the proposals waiting on them by index *and term*: another
   entry at that index means the proposal lost, §5.3), reads released once the state
   machine reached their read index (§6.4), `RaftCore.persisted`, and the snapshot
   threshold checked.

Readies pipeline (§10.2.1): the IO layer may call `advance()` again while writes are
in flight, and completes them in order. The one thing that stops the pipeline is a
Ready that changes the term or the vote: nothing is built after it until it is
durable, so no message speaks for a term this node has not stored.

Client requests carry an `Answer` (an `asyncio.Future` fits; the simulator and the
tests bring their own). Answers say whose fault a failure was with `kvraft.errors`:
`NotLeader`, `Unavailable`/`ProposalLost` (definitely not applied) or `OutcomeUnknown`.
An answer that is already done (its client gave up) is skipped, never answered twice.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kvraft.errors import (
    ChangeInProgress,
    NotLeader,
    OutcomeUnknown,
    ProposalLost,
    Unavailable,
)
from kvraft.leases import LeaseTimer
from kvraft.membership import MembershipConflictError
from kvraft.raft.core import (
    ConfigurationChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Role,
)
from kvraft.raft.log import ENTRY_OVERHEAD_BYTES
from kvraft.raft.messages import (
    AppendEntries,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    SnapshotMeta,
)
from kvraft.raft.ready import Ready, SnapshotToRestore
from kvraft.statemachine import PlainPut

__all__ = [
    "INBOUND_ENTRY_BYTES_MAX",
    "INBOUND_MESSAGES_MAX",
    "LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD",
    "READY_ENTRY_BYTES_MAX",
    "Answer",
    "ApplyFollower",
    "NodeShell",
    "Persist",
    "SnapshotToSave",
    "StateMachine",
]

INBOUND_MESSAGES_MAX = 100_000
"""Peer messages waiting to be stepped; beyond this they are dropped (Raft tolerates loss)."""

INBOUND_ENTRY_BYTES_MAX = 64 * 1024 * 1024
"""Entry bytes in peer messages waiting to be stepped; a message that would go beyond this
is dropped (the leader resends it, §5.3), unless the queue is empty: a leader's one large
AppendEntries always gets in."""

LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD = 2
"""The log a node keeps in memory may hold this many times `snapshot_threshold_bytes` of
entry data (`NodeShell.log_full`): a snapshot is due at one times, so only a snapshot slower
than the writes (one runs at a time, and under load it is slow) gets there. Then a leader
refuses new writes and a follower drops AppendEntries that carry entries (the leader resends
them, §5.3) until a snapshot compacts the log: memory stays bounded, nothing is lost."""

READY_ENTRY_BYTES_MAX = 8 * 1024 * 1024
"""The entry bytes (proposed commands, and entries carried by AppendEntries) that one
`advance()` feeds the core before it builds a Ready; the rest waits for the next one. A
Ready's entries are then at most this plus one input (one proposal, or one AppendEntries of
`raft.batch_bytes_max` and one more entry); with the largest settings `kvraft.config`
allows, that still fits one WAL frame (`tests/test_config.py` checks the sum), so no mix of
legal requests builds a write that storage refuses."""

_T_contra = TypeVar("_T_contra", contravariant=True)


class Answer(Protocol[_T_contra]):
    """Where a client request's outcome goes (`asyncio.Future` is one)."""

    def done(self) -> bool: ...

    def set_result(self, result: _T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class StateMachine(Protocol):
    """What the shell applies committed entries to (`kvraft.statemachine.KVStateMachine`)."""

    @property
    def applied_index(self) -> int: ...

    def apply(self, index: int, command: bytes) -> Any: ...

    def mark_applied(self, index: int) -> None: ...

    def snapshot_chunks(self) -> Iterator[bytes]: ...

    @property
    def snapshot_records(self) -> int: ...


class ApplyFollower(Protocol):
    """Told of every entry the shell applies, in log order, after the state machine took it
    (the watch hub, the lock waiting). Most entries come one by one with the state
    machine's result; a run of plain puts nobody waits on (a restart's replay, a follower's
    apply) comes as one `applied_plain_puts`, with no result object per entry (see
    `NodeShell._apply_all`). What a follower learns is the same either way: a plain put's
    result is `ok` at its own index, with the one change its `PlainPut` describes."""

    def applied(self, entry: Entry, result: Any) -> None:
        """`entry` was applied with `result` (None for an entry that carries no command)."""
        ...

    def applied_plain_puts(self, puts: Sequence[PlainPut], entries: Sequence[Entry]) -> None:
        """These plain puts were applied, in order, and nothing else between them; `puts[i]`
        is what `entries[i]` changed. The entries are there for whoever checks each applied
        entry itself (the simulator's State Machine Safety checker): the watch hub and the
        lock waiting need only the puts."""
        ...


@dataclass(frozen=True, slots=True)
class Persist:
    """Step 2 of a Ready, for the IO layer: install `snapshot` (replacing the log), then
    write `entries` (replacing any stored at their indexes and after) and `hard_state`;
    durably before answering if `sync`. Report it done with `NodeShell.persisted(token)`.

    Fields:
        token: the number to report back; tokens complete in the order they were handed out.
        snapshot: a snapshot from the leader to store, or None.
        entries: log entries to write.
        hard_state: term, vote and commit index to write, or None.
        sync: the writes must be durable (fsync) before `persisted` is called.
    """

    token: int
    snapshot: SnapshotToRestore | None
    entries: list[Entry]
    hard_state: HardState | None
    sync: bool


@dataclass(frozen=True, slots=True)
class SnapshotToSave:
    """The state machine reached the snapshot threshold: store `chunks` under `meta`, then
    call `NodeShell.snapshot_saved(meta)` so the core drops the log it covers."""

    meta: SnapshotMeta
    chunks: Iterator[bytes]


@dataclass(slots=True)
class _Started:
    """A Ready whose write (if any) is in flight; steps 3 to 6 wait for it."""

    ready: Ready
    token: int
    written: bool = False
    released: bool = False
    """Its write and every earlier one are done, and its `messages_after_persist` are in
    the outbox; applying it is left to the next `advance()`."""
    restored: StateMachine | None = None


@dataclass(slots=True)
class _ConfigProposal:
    configuration: Configuration
    base: Configuration  # the configuration the change was planned from
    answer: Answer[None]


class NodeShell:
    """One node's core, state machine and waiting clients; see the module docstring."""

    def __init__(
        self,
        core: RaftCore,
        state_machine: StateMachine,
        *,
        restore: Callable[[bytes], StateMachine],
        snapshot_threshold_entries: int,
        snapshot_threshold_bytes: int | None = None,
        snapshot_entries_per_record: int = 0,
        lease_timer: LeaseTimer | None = None,
    ) -> None:
        self.core = core
        self.lease_timer = lease_timer
        """The leader's lease deadlines (`kvraft.leases`), ticked here and told of every
        applied grant and revoke; None: this node keeps no lease timers (leases then never
        expire while it leads). Only for a state machine with `leases()`."""
        self.state_machine = state_machine
        self._restore = restore
        self.snapshot_threshold_entries = snapshot_threshold_entries
        self.snapshot_threshold_bytes = snapshot_threshold_bytes
        """Also snapshot once the applied entries kept in memory hold this many data bytes
        (None: count entries only). The core keeps every entry since the last snapshot in
        memory: with large values, counting entries alone would let it grow to gigabytes."""
        self.snapshot_entries_per_record = snapshot_entries_per_record
        """Snapshot no sooner than this many entries per record of the state (0: every
        `snapshot_threshold_entries`). A snapshot copies and encodes the whole state (about
        1 µs a key): every 10,000 entries over 100,000 keys it cost 10 µs per entry and
        tripled the put p99 under load (BENCHMARKS.md). Counted in records, snapshotting
        costs a bounded amount per entry, and the log replayed at restart stays a bounded
        multiple of the state."""
        self.followers: list[ApplyFollower] = []
        """Told of every entry applied, in order, after the state machine took it (runs of
        plain puts nobody waits on in one call: `ApplyFollower`)."""
        self.on_apply: list[Callable[[Entry, Any], None]] = []
        """Called with every entry applied and the state machine's result (None for an
        entry that carries no command), after the state machine and the followers took it.
        While one is registered (tests; the simulator's checks on seeds that draw the hook
        path, `kvraft.sim.cluster.APPLY_PATHS`), every entry gets its result object: nothing
        takes the plain puts' batch path. Whoever can take runs of plain puts at once is an
        `ApplyFollower` instead (the simulator's checks on its other seeds)."""
        self.on_restore: list[Callable[[SnapshotMeta], None]] = []
        """Called when a snapshot from the leader replaced the state machine."""
        # Inputs, fed to the core by advance().
        self._tick_due = False
        self.inbound: deque[Message] = deque()
        self.inbound_entry_bytes = 0
        self.ready_entry_bytes_max = READY_ENTRY_BYTES_MAX
        """The byte budget of one `advance()`'s inputs (the simulator makes it small)."""
        self._proposals: list[tuple[bytes, Answer[Any]]] = []
        self._config_proposals: list[_ConfigProposal] = []
        self._reads: list[tuple[int, Answer[int]]] = []
        self._next_read_id = 0
        self._transfer_to: int | None = None
        # Outputs.
        self._outbox: list[Message] = []
        self._snapshot_to_save: SnapshotToSave | None = None
        self._snapshot_in_progress = False
        self.hard_state_unwritten: HardState | None = None
        """A HardState that moved only the commit index, to be written with the next write
        (or when the node stops)."""
        # Readies started and not finished, oldest first.
        self._started: deque[_Started] = deque()
        self._next_token = 0
        self._barrier_token: int | None = None
        self.last_ready: Ready | None = None
        """The Ready the last `advance()` started (None if it started none): for tests and
        tracing, which look at what the core asked for."""
        # Clients waiting.
        self._waiters: dict[int, tuple[int, Answer[Any]]] = {}
        self._config_waiters: dict[int, tuple[int, Answer[None]]] = {}
        self._read_answers: dict[int, Answer[int]] = {}
        self._reads_waiting_apply: list[tuple[int, Answer[int]]] = []

    # --- inputs -------------------------------------------------------------------------

    def tick(self) -> None:
        """Time passed. Ticks do not pile up while the driver is busy: a stalled node that
        resumed with a burst of ticks would start a needless election."""
        self._tick_due = True

    def receive(self, message: Message) -> bool:
        """Queue a peer's message; False if the queue is full and it was dropped."""
        inbound = self.inbound
        if len(inbound) >= INBOUND_MESSAGES_MAX:
            return False
        size = _entry_bytes(message)
        if size and (
            (inbound and self.inbound_entry_bytes + size > INBOUND_ENTRY_BYTES_MAX) or self.log_full
        ):
            return False
        self.inbound_entry_bytes += size
        inbound.append(message)
        return True

    def propose(self, command: bytes, answer: Answer[Any]) -> None:
        """Replicate and apply `command`; `answer` gets the state machine's result."""
        self._proposals.append((command, answer))

    def propose_configuration(
        self, configuration: Configuration, base: Configuration, answer: Answer[None]
    ) -> None:
        """Change the membership to `configuration`, planned from `base` (refused if the
        latest configuration is no longer `base`); `answer` is resolved once it commits."""
        self._config_proposals.append(_ConfigProposal(configuration, base, answer))

    def read(self, answer: Answer[int]) -> None:
        """Confirm leadership for a linearizable read (ReadIndex, §6.4); `answer` gets the
        read index once the state machine has applied up to it."""
        self._next_read_id += 1
        self._reads.append((self._next_read_id, answer))

    def transfer_leadership(self, target: int) -> None:
        self._transfer_to = target

    # --- driving ------------------------------------------------------------------------

    @property
    def wants_advance(self) -> bool:
        """`advance()` has something to do."""
        if self._started and self._started[0].released:
            return True
        if self._barrier_token is not None:
            return False
        return bool(
            self._tick_due
            or self.inbound
            or self._proposals
            or self._config_proposals
            or self._reads
            or self._transfer_to is not None
            or self.core.has_ready()
        )

    @property
    def log_full(self) -> bool:
        """The log kept in memory holds more than `LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD`
        times `snapshot_threshold_bytes`: take no new entries until a snapshot compacts it."""
        threshold = self.snapshot_threshold_bytes
        return threshold is not None and self.core.log.entry_bytes > (
            LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD * threshold
        )

    @property
    def writes_in_flight(self) -> int:
        return sum(1 for started in self._started if not started.written)

    def advance(self) -> Persist | None:
        """Finish the Readies whose writes are done (steps 4 to 6), feed the queued inputs and
        start one Ready: its `messages` go to the outbox; what it must write is returned
        (None: nothing to write, and it has finished already if nothing before it waits)."""
        core = self.core
        self._finish_released()
        self.last_ready = None
        if self._barrier_token is not None:
            # Inputs wait too: fed now, their entries would pile up in the core and all
            # land in the Ready after the barrier, past READY_ENTRY_BYTES_MAX.
            return None
        self._feed(core)
        if not core.has_ready():
            return None
        ready = self.last_ready = core.ready()
        self._outbox.extend(ready.messages)
        self._next_token += 1
        started = _Started(ready, self._next_token)
        self._started.append(started)
        persist: Persist | None = None
        if ready.snapshot is None and not ready.entries and not ready.must_sync:
            if ready.hard_state is not None:
                self.hard_state_unwritten = ready.hard_state
            started.written = True
        else:
            persist = Persist(
                started.token,
                ready.snapshot,
                ready.entries,
                ready.hard_state or self.hard_state_unwritten,
                ready.must_sync,
            )
            self.hard_state_unwritten = None
            if ready.term_or_vote_changed:
                self._barrier_token = started.token
        if persist is None:
            self._release_written()
            self._finish_released()
        return persist

    def persisted(self, token: int, restored: StateMachine | None = None) -> None:
        """The write of `token` is done (durable if it asked to be). `restored` is the state
        machine the IO layer rebuilt from the write's snapshot, if it had one (else the
        shell restores it here).

        The Readies this completes release their `messages_after_persist` to the outbox at
        once (step 3: send them before anything else, the leader's commit waits on these
        acknowledgements); they are applied by the next `advance()`."""
        for started in self._started:
            if started.token == token:
                started.written = True
                started.restored = restored
                break
        else:
            raise ValueError(f"no write with token {token} is in flight")
        if token == self._barrier_token:
            self._barrier_token = None
        self._release_written()

    def take_messages(self) -> list[Message]:
        """The messages to send now, in order."""
        messages, self._outbox = self._outbox, []
        return messages

    def take_snapshot_to_save(self) -> SnapshotToSave | None:
        """A snapshot of the state machine for the IO layer to store, if one is due."""
        snapshot, self._snapshot_to_save = self._snapshot_to_save, None
        if snapshot is not None and snapshot.meta.index <= self.core.log.snapshot.index:
            # A snapshot from the leader, newer than ours, was accepted since ours was
            # captured: storing ours now would roll the stored snapshot back.
            self._snapshot_in_progress = False
            return None
        return snapshot

    def snapshot_saved(self, meta: SnapshotMeta | None) -> None:
        """The snapshot handed out is stored (None: it was not, and may be tried again)."""
        self._snapshot_in_progress = False
        log = self.core.log
        if meta is not None and log.snapshot.index < meta.index <= log.applied_index:
            self.core.compact(meta.index)

    def fail_all(self, error: Exception) -> None:
        """The node stops (or crashed): answer everyone. A command already in the log may
        still commit elsewhere, so its fate is unknown; anything not yet proposed, and every
        read, simply did not happen."""
        for _, answer in self._waiters.values():
            _fail(answer, OutcomeUnknown(f"{error}; the write may still apply"))
        for _, config_answer in self._config_waiters.values():
            _fail(config_answer, OutcomeUnknown(f"{error}; the membership change may still apply"))
        answers: list[Answer[Any]] = [answer for _, answer in self._proposals]
        answers += [proposal.answer for proposal in self._config_proposals]
        answers += [answer for _, answer in self._reads]
        answers += list(self._read_answers.values())
        answers += [answer for _, answer in self._reads_waiting_apply]
        for answer in answers:
            _fail(answer, error)
        self._waiters.clear()
        self._config_waiters.clear()
        self._proposals.clear()
        self._config_proposals.clear()
        self._reads.clear()
        self._read_answers.clear()
        self._reads_waiting_apply.clear()

    # --- feeding the core ---------------------------------------------------------------

    def _feed(self, core: RaftCore) -> None:
        if self._tick_due:
            self._tick_due = False
            core.tick()
            self._tick_leases()
        # Entries fed are bounded by bytes (READY_ENTRY_BYTES_MAX), always at least one input.
        budget_bytes = self.ready_entry_bytes_max
        inbound = self.inbound
        while inbound and budget_bytes > 0:
            message = inbound.popleft()
            size = _entry_bytes(message)
            self.inbound_entry_bytes -= size
            budget_bytes -= size
            core.step(message)
        if self._proposals and budget_bytes > 0:
            proposals = self._proposals
            taken = 0
            while taken < len(proposals) and budget_bytes > 0:
                budget_bytes -= len(proposals[taken][0]) + ENTRY_OVERHEAD_BYTES
                taken += 1
            if taken == len(proposals):
                self._proposals = []
            else:
                proposals, self._proposals = proposals[:taken], proposals[taken:]
            live = [(command, answer) for command, answer in proposals if not answer.done()]
            try:
                indexes = core.propose_batch([command for command, _ in live]) if live else []
            except NotLeaderError as error:
                for _, answer in live:
                    answer.set_exception(NotLeader(error.leader_id))
            except ProposalDroppedError as error:
                for _, answer in live:
                    answer.set_exception(Unavailable(str(error)))
            else:
                for (_, answer), index in zip(live, indexes, strict=True):
                    earlier = self._waiters.get(index)
                    if earlier is not None:
                        # This node's log was cut below `index` since the earlier proposal:
                        # whether it committed elsewhere is not this node's to say.
                        _fail(earlier[1], OutcomeUnknown("the log was cut; it may have applied"))
                    self._waiters[index] = (core.term, answer)
        if self._config_proposals:
            config_proposals, self._config_proposals = self._config_proposals, []
            for config_proposal in config_proposals:
                if not config_proposal.answer.done():
                    self._propose_configuration(core, config_proposal)
        if self._reads:
            reads, self._reads = self._reads, []
            for read_id, read_answer in reads:
                if read_answer.done():  # its client gave up before the core saw it
                    continue
                try:
                    core.read_index(read_id)
                except NotLeaderError as error:
                    read_answer.set_exception(NotLeader(error.leader_id))
                else:
                    self._read_answers[read_id] = read_answer
        if self._transfer_to is not None:
            target, self._transfer_to = self._transfer_to, None
            # Refused (no longer leader, not a voter): the caller sees nothing move.
            with contextlib.suppress(NotLeaderError, ConfigurationChangeError):
                core.transfer_leadership(target)

    def leases_follow_leadership(self) -> LeaseTimer | None:
        """Bring the lease timer in line with the core's role: a node that became leader gives
        every lease a full TTL (or its checkpointed remainder) from now (etcd's Promote),
        one that stopped leading forgets
        its deadlines. Called every tick, and by a keepalive before it refreshes a deadline
        (it may arrive before the new leader's first tick).

        A new leader promotes only once it has applied an entry of its own term: until then
        its state machine may lack entries its predecessors committed, such as the clear of
        a checkpoint written for a keepalive they acknowledged, and a deadline taken from
        the older checkpoint would expire the lease early (found by the simulator's lease
        checker, `kvraft.sim.leases`). Its leases do not count down meanwhile."""
        timer = self.lease_timer
        if timer is None:
            return None
        core = self.core
        if core.role == Role.LEADER and (
            core.log.term_at(self.state_machine.applied_index) == core.term
        ):
            if timer.leader_term != core.term:
                timer.promote(core.term, self.state_machine.lease_remaining_ms())  # type: ignore[attr-defined]
        elif timer.leader_term is not None:
            timer.demote()
        return timer

    def _tick_leases(self) -> None:
        timer = self.leases_follow_leadership()
        if timer is None:
            return
        # Proposed like a client's write, with nobody waiting: a lost one is retried by the
        # timer, and fed to the core in this same advance().
        for lease_id in timer.tick():
            self._proposals.append((timer.expire_command(lease_id), _NOBODY))
        for command in timer.checkpoint_commands():
            self._proposals.append((command, _NOBODY))

    def _propose_configuration(self, core: RaftCore, proposal: _ConfigProposal) -> None:
        answer = proposal.answer
        if core.role != Role.LEADER:
            answer.set_exception(NotLeader(core.leader_id))
            return
        if core.log.configuration() != proposal.base:
            # Planned from a configuration that is no longer the latest: proposing it would
            # undo whatever changed in between.
            answer.set_exception(ChangeInProgress("the membership changed meanwhile; retry"))
            return
        if core.log.pending_configuration_index():
            answer.set_exception(ChangeInProgress("another membership change is in progress"))
            return
        if core.log.term_at(core.log.commit_index) != core.term:
            answer.set_exception(
                ChangeInProgress("the new leader has not committed an entry of its term yet")
            )
            return
        try:
            index = core.propose_configuration(proposal.configuration)
        except NotLeaderError as error:
            answer.set_exception(NotLeader(error.leader_id))
        except ProposalDroppedError as error:
            answer.set_exception(Unavailable(str(error)))
        except ConfigurationChangeError as error:
            answer.set_exception(MembershipConflictError(str(error)))
        else:
            self._config_waiters[index] = (core.term, answer)

    # --- finishing Readies --------------------------------------------------------------

    def _release_written(self) -> None:
        """Step 3 for every Ready whose write, and every earlier one, is done."""
        for started in self._started:
            if not started.written:
                return
            if not started.released:
                started.released = True
                self._outbox.extend(started.ready.messages_after_persist)

    def _finish_released(self) -> None:
        """Steps 4 to 6, in order, for the Readies released so far."""
        started = self._started
        while started and started[0].released:
            self._finish(started.popleft())

    def _finish(self, started: _Started) -> None:
        ready = started.ready
        core = self.core
        if ready.snapshot is not None:
            restored = started.restored
            if restored is None:  # (not `or`: an empty state machine is falsy)
                restored = self._restore(ready.snapshot.data)
            self._restored(ready.snapshot.meta, restored)
        self._apply_all(ready.committed_entries)
        for read_state in ready.read_states:
            answer = self._read_answers.pop(read_state.read_id, None)
            if answer is not None and not answer.done():
                self._reads_waiting_apply.append((read_state.read_index, answer))
        for read_id in ready.dropped_read_ids:
            dropped = self._read_answers.pop(read_id, None)
            if dropped is not None:
                _fail(dropped, Unavailable("leadership lost before the read was confirmed"))
        self._release_reads()
        if ready.entries:
            core.persisted(ready.entries[-1].index, ready.entries[-1].term)
        self._maybe_snapshot()

    def _restored(self, meta: SnapshotMeta, state_machine: StateMachine) -> None:
        """A snapshot from the leader replaced the state machine (§7)."""
        self.state_machine = state_machine
        pending = self._snapshot_to_save
        if pending is not None and pending.meta.index <= meta.index:
            # Our own snapshot, captured before this one arrived, is older than what the
            # disk now holds: saving it would roll the snapshot back.
            self._snapshot_to_save = None
            self._snapshot_in_progress = False
        # Entries up to the snapshot are never applied here one by one: a proposal waiting
        # on one of them may or may not have committed (the snapshot does not say).
        for index in [i for i in self._waiters if i <= meta.index]:
            _fail(self._waiters.pop(index)[1], OutcomeUnknown("replaced by a snapshot"))
        for index in [i for i in self._config_waiters if i <= meta.index]:
            _fail(self._config_waiters.pop(index)[1], OutcomeUnknown("replaced by a snapshot"))
        if self.lease_timer is not None:
            self.lease_timer.restored(state_machine.lease_remaining_ms())  # type: ignore[attr-defined]
        for restore_hook in self.on_restore:
            restore_hook(meta)

    def _apply_all(self, entries: list[Entry]) -> None:
        """Apply committed entries in order: the state machine, the lease timer, the
        followers and hooks, then whoever waits on each index (up to `apply_batch_max`
        entries per Ready; a million, 4,096 at a time, at a restart).

        Entries below every index someone waits on (a proposal or a membership change of
        this node's) need no result object: runs of plain puts among them go to the state
        machine's `apply_plain_puts` and to the followers' `applied_plain_puts` in one call
        each. That leaves the same state, history and lease timers as applying them one by
        one (a plain put grants, revokes and checkpoints no lease and changes no lock), for
        about half the CPU of a replay. Everything else, and every entry while an `on_apply`
        hook wants each result, is applied one by one (`_apply_each`)."""
        # Optional: `kvraft.statemachine.KVStateMachine.apply_plain_puts`.
        apply_plain_puts = getattr(self.state_machine, "apply_plain_puts", None)
        count = len(entries)
        if (
            apply_plain_puts is None
            or self.on_apply
            or not count
            # Consecutive indexes (as a log's are), so a position tells an index: the state
            # machine applies only increasing ones.
            or entries[-1].index - entries[0].index != count - 1
        ):
            self._apply_each(entries, 0, count)
            return
        waited = min(itertools.chain(self._waiters, self._config_waiters), default=None)
        unwaited_count = count if waited is None else max(0, min(count, waited - entries[0].index))
        followers = self.followers
        position = 0
        while position < unwaited_count:
            puts: list[PlainPut] = []
            run_start = position
            position = apply_plain_puts(entries, position, unwaited_count, puts)
            if puts:
                # A copy of the run's references: about 2 ms per million entries replayed.
                run = entries[run_start:position]
                for follower in followers:
                    follower.applied_plain_puts(puts, run)
            if position < unwaited_count:  # an entry that is not a plain put
                self._apply_each(entries, position, position + 1)
                position += 1
        self._apply_each(entries, unwaited_count, count)

    def _apply_each(self, entries: list[Entry], start: int, stop: int) -> None:
        """Apply `entries[start:stop]` one by one, each with its result for the lease timer,
        the followers, the hooks and whoever waits on it."""
        if start >= stop:
            return
        state_machine = self.state_machine
        apply = state_machine.apply
        lease_timer = self.lease_timer
        followers = self.followers
        hooks = self.on_apply
        waiters = self._waiters
        config_waiters = self._config_waiters
        normal = EntryKind.NORMAL
        for entry in entries[start:stop]:
            if entry.kind == normal:
                result = apply(entry.index, entry.data)
                if lease_timer is not None:
                    lease_timer.applied(entry.data, entry.index, bool(result.ok))
            else:
                state_machine.mark_applied(entry.index)
                result = None
            for follower in followers:
                follower.applied(entry, result)
            for hook in hooks:
                hook(entry, result)
            if config_waiters:
                self._answer_config_waiter(entry)
            if waiters:
                waiter = waiters.pop(entry.index, None)
                if waiter is None or waiter[1].done():
                    continue
                term, answer = waiter
                if term != entry.term or result is None:
                    answer.set_exception(
                        ProposalLost("leadership changed; the write was not applied")
                    )
                else:
                    answer.set_result(result)

    def _answer_config_waiter(self, entry: Entry) -> None:
        config_waiter = self._config_waiters.pop(entry.index, None)
        if config_waiter is not None:
            # Whatever entry holds our index is ours only if it has our term (§5.3: one
            # leader per term writes each index once).
            term, config_answer = config_waiter
            if term == entry.term and entry.kind == EntryKind.CONFIG:
                if not config_answer.done():
                    config_answer.set_result(None)
            else:
                _fail(
                    config_answer,
                    ProposalLost("leadership changed; the membership change was not applied"),
                )

    def _release_reads(self) -> None:
        if not self._reads_waiting_apply:
            return
        applied = self.state_machine.applied_index
        still = []
        for read_index, answer in self._reads_waiting_apply:
            if answer.done():
                continue
            if read_index <= applied:
                answer.set_result(read_index)
            else:
                still.append((read_index, answer))
        self._reads_waiting_apply = still

    def _maybe_snapshot(self) -> None:
        applied = self.state_machine.applied_index
        log = self.core.log
        if self._snapshot_in_progress:
            return
        if log.commit_index - applied > self.core.config.apply_batch_max:
            # More committed entries are waiting than one Ready applies (a restart replaying
            # its log, a follower catching up): they are in memory already, and a snapshot
            # now would be outdated within the next Readies. One is taken once they are
            # applied; each taken during a replay copied and encoded the whole state again.
            return
        bytes_threshold = self.snapshot_threshold_bytes
        entries_threshold = max(
            self.snapshot_threshold_entries,
            self.snapshot_entries_per_record * self.state_machine.snapshot_records,
        )
        if applied - log.snapshot.index < entries_threshold and (
            bytes_threshold is None or log.applied_entry_bytes < bytes_threshold
        ):
            return
        term = log.term_at(applied)
        if term is None:
            return
        # The state is captured now; the IO layer may encode it elsewhere while applying
        # goes on.
        meta = SnapshotMeta(applied, term, log.configuration_at(applied))
        self._snapshot_to_save = SnapshotToSave(meta, self.state_machine.snapshot_chunks())
        self._snapshot_in_progress = True


def _entry_bytes(message: Message) -> int:
    """The entry bytes a peer's message adds to a write (only AppendEntries carries entries)."""
    if isinstance(message, AppendEntries):
        return sum(len(entry.data) + ENTRY_OVERHEAD_BYTES for entry in message.entries)
    return 0


class _Nobody:
    """The answer of a proposal nobody waits for (the leader's lease expiries)."""

    def done(self) -> bool:
        return False

    def set_result(self, result: object, /) -> None:
        pass

    def set_exception(self, exception: BaseException, /) -> None:
        pass


_NOBODY = _Nobody()


def _fail(answer: Answer[Any], error: BaseException) -> None:
    if not answer.done():
        answer.set_exception(error)
