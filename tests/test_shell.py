"""`kvraft.shell.NodeShell`: the one object that turns Readies into work, for the daemon,
the simulator and the test harness alike.

These tests drive a shell by hand, as its IO layers do: queue inputs, `advance()`, carry
out (or hold) the writes it returns, send what `take_messages()` gives.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from pathlib import Path
from typing import Any

from raft_harness import RaftCluster, make_core

from kvraft.config import BATCH_BYTES_MAX_HIGHEST
from kvraft.errors import NotLeader, OutcomeUnknown, ProposalLost
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import (
    AppendEntries,
    Configuration,
    Entry,
    EntryKind,
    Heartbeat,
    InstallSnapshot,
    Message,
    RequestVoteResponse,
    SnapshotMeta,
)
from kvraft.shell import (
    INBOUND_ENTRY_BYTES_MAX,
    LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD,
    READY_ENTRY_BYTES_MAX,
    NodeShell,
    Persist,
)
from kvraft.sim.cluster import SimCluster
from kvraft.sim.network import NetworkFaults, SimNetwork
from kvraft.statemachine import VALUE_BYTES_MAX, ApplyResult, KVStateMachine, encode_put
from kvraft.storage.wal import prepare_batch

ADVANCES_MAX = 100
"""A shell with nothing new to do must run out of work well within this many advances."""


def shell_of(core_node_id: int = 1, **core_arguments: object) -> NodeShell:
    return kv_shell(make_core(core_node_id, **core_arguments))  # type: ignore[arg-type]


def kv_shell(core: RaftCore, **settings: Any) -> NodeShell:
    """A shell around `core` and an empty `KVStateMachine`; `settings` for `NodeShell`
    (snapshots every 1,000 entries unless they say otherwise)."""
    settings.setdefault("snapshot_threshold_entries", 1_000)
    return NodeShell(core, KVStateMachine(), restore=KVStateMachine.restore_bytes, **settings)


def run_until_idle(shell: NodeShell) -> list[Message]:
    """Advance, completing every write at once, until the shell has nothing to do; what
    it sent. Fails the test if it never runs out of work."""
    sent: list[Message] = []
    for _ in range(ADVANCES_MAX):
        if not shell.wants_advance:
            return sent
        persist = shell.advance()
        sent += shell.take_messages()
        if persist is not None:
            shell.persisted(persist.token)
            sent += shell.take_messages()
    raise AssertionError(f"the shell still wants to advance after {ADVANCES_MAX} advances")


def campaign(shell: NodeShell) -> None:
    core = shell.core
    for _ in range(4 * core.config.election_ticks):
        shell.tick()
        run_until_idle(shell)
        if core.role != Role.FOLLOWER:
            return
    raise AssertionError("no election started")


class Recorded:
    """An `Answer` that remembers what it was given."""

    def __init__(self) -> None:
        self.result: object = None
        self.exception: BaseException | None = None
        self.answered = False

    def done(self) -> bool:
        return self.answered

    def set_result(self, result: object) -> None:
        assert not self.answered, "answered twice"
        self.answered, self.result = True, result

    def set_exception(self, exception: BaseException) -> None:
        assert not self.answered, "answered twice"
        self.answered, self.exception = True, exception


def test_a_leader_that_steps_down_within_one_batch_of_messages_runs_out_of_work() -> None:
    # One batch holds the vote that wins the election and then a rejection from a newer
    # term: the node leads and steps down before the shell builds a Ready. Nothing is owed
    # afterwards; a leftover broadcast flag once kept the daemon's driver spinning on
    # empty Readies forever.
    shell = shell_of(pre_vote=False)
    core = shell.core
    campaign(shell)
    assert core.role == Role.CANDIDATE
    term = core.term
    shell.receive(RequestVoteResponse(term, 2, 1, True))
    shell.receive(RequestVoteResponse(term + 1, 3, 1, False))
    run_until_idle(shell)
    assert core.role == Role.FOLLOWER and core.term == term + 1
    assert not core.has_ready()


def test_no_message_leaves_before_the_term_it_speaks_for_is_durable() -> None:
    # A single voter wins inside a tick; its learner's first AppendEntries speaks for the
    # new term. Had it left before the term was written, a crash and a second win of the
    # same term (the vote forgotten) could put two different entries at one (index, term).
    shell = shell_of(voters=(1,), learners=(2,))
    core = shell.core
    writes: list[Persist] = []
    sent: list[Message] = []
    for _ in range(4 * core.config.election_ticks):
        shell.tick()
        while shell.wants_advance:
            persist = shell.advance()
            sent += shell.take_messages()
            if persist is not None:
                writes.append(persist)  # held: the disk is slow
        if core.role == Role.LEADER:
            break
    assert core.role == Role.LEADER
    (write,) = writes
    assert write.hard_state is not None and write.hard_state.term == core.term
    assert sent == []
    # Nothing is built on top of the unwritten term, whatever arrives meanwhile.
    shell.propose(encode_put("k", b"v"), Recorded())
    assert not shell.wants_advance
    shell.persisted(write.token)
    sent += shell.take_messages()
    sent += run_until_idle(shell)
    appends = [m for m in sent if isinstance(m, AppendEntries)]
    assert appends and all(m.target == 2 and m.term == core.term for m in appends)


def test_pipelined_writes_answer_no_proposal_before_its_write() -> None:
    # The leader of a one-voter cluster commits what it has written. Writes finish in
    # order, and what follows a write (applying, answering) waits for every earlier one.
    shell = shell_of(voters=(1,))
    core = shell.core
    campaign(shell)
    run_until_idle(shell)
    assert core.role == Role.LEADER
    answers = [Recorded(), Recorded()]
    writes: list[Persist] = []
    for number, answer in enumerate(answers):
        shell.propose(encode_put(f"k{number}", b"v"), answer)
        while shell.wants_advance:
            persist = shell.advance()
            if persist is not None:
                writes.append(persist)
    assert len(writes) == 2 and shell.writes_in_flight == 2
    assert not any(answer.answered for answer in answers)
    shell.persisted(writes[0].token)
    run_until_idle(shell)
    first, second = answers
    assert not second.answered
    shell.persisted(writes[1].token)
    run_until_idle(shell)
    assert isinstance(first.result, ApplyResult) and first.result.ok
    assert isinstance(second.result, ApplyResult) and second.result.ok
    assert first.result.revision < second.result.revision


def test_a_proposal_to_a_follower_is_refused_with_the_leader_it_knows() -> None:
    shell = shell_of(log_terms=(1,))
    shell.receive(Heartbeat(1, 3, 1, 0, 0))
    answer = Recorded()
    shell.propose(encode_put("k", b"v"), answer)
    run_until_idle(shell)
    assert isinstance(answer.exception, NotLeader) and answer.exception.leader_id == 3


def test_an_answer_whose_client_gave_up_is_never_proposed() -> None:
    shell = shell_of(voters=(1,))
    campaign(shell)
    run_until_idle(shell)
    last_index = shell.core.log.last_index()
    gave_up = Recorded()
    gave_up.set_exception(OutcomeUnknown("timed out"))
    shell.propose(encode_put("k", b"v"), gave_up)
    run_until_idle(shell)
    assert shell.core.log.last_index() == last_index


def test_a_proposal_overwritten_by_a_newer_leader_is_lost() -> None:
    # Node 1 proposes as leader of term 2, is cut off, and node 2's entries of a newer term
    # take the index: the answer says the write was not applied (safe to retry).
    cluster = RaftCluster([1, 2, 3], check_quorum=False)
    cluster.elect(1)
    answer = Recorded()
    cluster.node(1).shell.propose(encode_put("k", b"lost"), answer)
    cluster.partition([1], [2, 3])
    cluster.process(1)
    cluster.drop()
    cluster.elect(2)
    cluster.propose(2, b"won")
    cluster.stabilize()
    cluster.heal()
    cluster.heartbeat(2)
    cluster.stabilize()
    assert isinstance(answer.exception, ProposalLost), answer.exception


def test_the_daemon_the_simulator_and_the_harness_drive_the_one_shell(tmp_path: Path) -> None:
    # One class turns Readies into work; nobody else builds or works through a Ready.
    from kvraft import server
    from kvraft.config import local_cluster_config
    from kvraft.sim import cluster as sim_cluster
    from kvraft.storage.memory import MemoryStorage
    from kvraft.transport.memory import MemoryNetwork, MemoryTransport

    async def daemon_shell() -> NodeShell | None:
        config = local_cluster_config(1, tmp_path)
        network = MemoryNetwork()
        node = server.RaftNode(
            config,
            1,
            storage=await MemoryStorage.open(),
            transport=lambda on_message, is_known: MemoryTransport(
                network, 1, on_message, is_known
            ),
        )
        await node.start()
        try:
            return node.shell
        finally:
            await node.stop(transfer_leadership=False)

    assert isinstance(asyncio.run(daemon_shell()), NodeShell)
    simulated = SimCluster(
        random.Random(1), SimNetwork(random.Random(2), NetworkFaults()), 3, 0, _sim_config
    )
    assert all(isinstance(node.shell, NodeShell) for node in simulated.nodes.values())
    assert isinstance(RaftCluster([1, 2, 3]).node(1).shell, NodeShell)
    import raft_harness

    # (raft_harness also has helpers for tests that read a lone core's Ready by hand.)
    drivers = (server, sim_cluster, raft_harness.RaftCluster, raft_harness.SimNode)
    for driver in drivers:
        source = inspect.getsource(driver)
        for ready_handling in (".ready()", ".committed_entries", ".messages_after_persist"):
            assert ready_handling not in source, (driver.__name__, ready_handling)


def _sim_config(node_id: int) -> object:
    from kvraft.raft.core import RaftConfig

    return RaftConfig(node_id=node_id)


def test_a_configuration_planned_from_an_older_one_is_refused() -> None:
    from kvraft.errors import ChangeInProgress

    shell = shell_of(voters=(1,))
    campaign(shell)
    run_until_idle(shell)
    answer = Recorded()
    stale = Configuration(voters=frozenset({1, 2}))
    shell.propose_configuration(Configuration(voters=frozenset({1, 3})), stale, answer)
    run_until_idle(shell)
    assert isinstance(answer.exception, ChangeInProgress)


def test_a_snapshot_from_the_leader_cancels_an_older_one_of_our_own() -> None:
    # Applying crosses the snapshot threshold, and in the same batch the leader's snapshot
    # of a later index arrives. Storing ours afterwards would roll the stored snapshot back
    # (the daemon's storage refuses it, and the node used to stop on that refusal).
    core = make_core(2, log_terms=(), term=1)
    shell = NodeShell(
        core, KVStateMachine(), restore=KVStateMachine.restore_bytes, snapshot_threshold_entries=2
    )
    entries = tuple(
        Entry(1, index, EntryKind.NORMAL, encode_put(f"k{index}", b"v")) for index in (1, 2, 3)
    )
    shell.receive(AppendEntries(1, 1, 2, 0, 0, entries, 3))
    persist = shell.advance()
    assert persist is not None
    shell.persisted(persist.token)
    leader_state = KVStateMachine()
    for entry in entries:
        leader_state.apply(entry.index, entry.data)
    for index in range(4, 11):
        leader_state.apply(index, encode_put(f"k{index}", b"v"))
    meta = SnapshotMeta(10, 1, core.log.configuration())
    shell.receive(InstallSnapshot(1, 1, 2, meta, leader_state.snapshot()))
    sent = run_until_idle_keeping_snapshots(shell)
    assert shell.core.log.snapshot.index == 10
    assert all(saved.index > 10 for saved in sent)
    assert shell.state_machine.applied_index == 10


def run_until_idle_keeping_snapshots(shell: NodeShell) -> list[SnapshotMeta]:
    """Like `run_until_idle`, taking the snapshots the shell hands out after every step,
    as the IO layers do; the metas of those it handed out."""
    handed_out = []
    for _ in range(ADVANCES_MAX):
        snapshot = shell.take_snapshot_to_save()
        if snapshot is not None:
            handed_out.append(snapshot.meta)
            shell.snapshot_saved(snapshot.meta)
        if not shell.wants_advance:
            return handed_out
        persist = shell.advance()
        shell.take_messages()
        if persist is not None:
            shell.persisted(persist.token)
    raise AssertionError("the shell still wants to advance")


# --- bounded by bytes (issue #16) ----------------------------------------------------------


def largest_put(index: int) -> bytes:
    """A put of the largest value the state machine accepts."""
    return encode_put(f"k{index}", b"v" * VALUE_BYTES_MAX)


def fits_one_wal_frame(persist: Persist) -> bool:
    """What storage checks before writing: refused (ValueError) if not one frame."""
    try:
        prepare_batch(persist.entries, persist.hard_state)
    except ValueError:
        return False
    return True


def test_a_burst_of_the_largest_proposals_is_written_in_frames_that_fit() -> None:
    # 200 concurrent 1 MiB PUTs once reached the leader's shell as one batch: one write of
    # about 200 MiB, which storage refuses (a disk failure: the node stopped).
    shell = shell_of(voters=(1,))
    campaign(shell)
    run_until_idle(shell)
    answers = [Recorded() for _ in range(200)]
    for index, answer in enumerate(answers):
        shell.propose(largest_put(index), answer)
    writes = 0
    for _ in range(10 * ADVANCES_MAX):
        if not shell.wants_advance:
            break
        persist = shell.advance()
        shell.take_messages()
        if persist is not None:
            assert fits_one_wal_frame(persist)
            writes += 1
            shell.persisted(persist.token)
    assert all(answer.answered and answer.exception is None for answer in answers)
    assert writes >= 200 * VALUE_BYTES_MAX // READY_ENTRY_BYTES_MAX


def test_a_follower_writes_a_window_of_full_appendentries_in_frames_that_fit() -> None:
    # A leader with 64 AppendEntries in flight to a follower, each up to the largest batch:
    # the follower once stepped them all in one batch and stopped on its disk's refusal.
    batch_bytes_max = BATCH_BYTES_MAX_HIGHEST
    per_message = batch_bytes_max // len(largest_put(0)) + 1
    shell = shell_of(2, log_terms=(), term=1, batch_bytes_max=batch_bytes_max)
    messages = []
    index = 0
    for _ in range(8):
        entries = []
        for _ in range(per_message):
            index += 1
            entries.append(Entry(1, index, EntryKind.NORMAL, largest_put(index)))
        prev = entries[0].index - 1
        messages.append(AppendEntries(1, 1, 2, prev, 1 if prev else 0, tuple(entries), 0))
    for _ in range(ADVANCES_MAX):
        while messages and shell.receive(messages[0]):  # as many as the queue takes
            messages.pop(0)
        if not shell.wants_advance:
            break
        persist = shell.advance()
        shell.take_messages()
        if persist is not None:
            assert fits_one_wal_frame(persist)
            shell.persisted(persist.token)
    assert shell.core.log.last_index() == index


def test_peer_messages_waiting_are_bounded_by_their_entry_bytes() -> None:
    shell = shell_of(2, log_terms=(), term=1)
    entry = Entry(1, 1, EntryKind.NORMAL, b"x" * (INBOUND_ENTRY_BYTES_MAX // 4))
    accepted = sum(shell.receive(AppendEntries(1, 1, 2, 0, 0, (entry,), 0)) for _ in range(8))
    assert accepted == 3  # a fourth would pass the bound (each costs a little overhead)
    assert shell.receive(Heartbeat(1, 1, 2, 0, 0))  # messages without entries still get in
    shell.inbound.clear()
    shell.inbound_entry_bytes = 0
    huge = Entry(1, 1, EntryKind.NORMAL, b"x" * (INBOUND_ENTRY_BYTES_MAX + 1))
    assert shell.receive(AppendEntries(1, 1, 2, 0, 0, (huge,), 0))  # an empty queue takes one


def test_nothing_is_fed_to_the_core_while_a_term_write_is_pending() -> None:
    # Inputs fed behind the barrier would pile their entries into the one Ready after it.
    shell = shell_of(2, log_terms=(), term=0)
    shell.receive(Heartbeat(1, 1, 2, 0, 0))  # a new term: the next write is a barrier
    persist = shell.advance()
    assert persist is not None and persist.hard_state is not None
    entry = Entry(1, 1, EntryKind.NORMAL, encode_put("k", b"v"))
    shell.receive(AppendEntries(1, 1, 2, 0, 0, (entry,), 0))
    assert shell.advance() is None
    assert shell.core.log.last_index() == 0 and len(shell.inbound) == 1
    shell.persisted(persist.token)
    later = shell.advance()
    assert later is not None and [e.index for e in later.entries] == [1]


def test_a_log_of_large_entries_is_snapshotted_by_bytes_before_its_entry_count() -> None:
    core = make_core(1, voters=(1,))
    shell = kv_shell(core, snapshot_threshold_bytes=4 * VALUE_BYTES_MAX)
    campaign(shell)
    run_until_idle(shell)
    snapshots = []
    for index in range(6):
        shell.propose(largest_put(index), Recorded())
        snapshots += run_until_idle_keeping_snapshots(shell)
    assert len(snapshots) == 1 and snapshots[0].index <= 6
    assert shell.core.log.applied_entry_bytes < 4 * VALUE_BYTES_MAX


def test_a_large_state_is_snapshotted_once_per_entry_per_record_not_every_threshold() -> None:
    # Each snapshot copies the whole state: with 40 keys and 2 entries per record, one comes
    # every 80 entries, not every 10 (the fixed threshold), and one per 10 with the rule off.
    def snapshot_indexes(entries_per_record: int) -> list[int]:
        core = make_core(1, voters=(1,))
        shell = kv_shell(
            core, snapshot_threshold_entries=10, snapshot_entries_per_record=entries_per_record
        )
        campaign(shell)
        run_until_idle(shell)
        taken: list[int] = []
        for index in range(200):
            shell.propose(encode_put(f"key{index % 40}", b"v"), Recorded())
            taken += [meta.index for meta in run_until_idle_keeping_snapshots(shell)]
        assert shell.state_machine.snapshot_records == 40
        return taken

    assert snapshot_indexes(2) == [80, 160]  # once 40 keys exist, every 2 x 40 entries
    assert snapshot_indexes(0) == list(range(10, 201, 10))


def test_a_log_twice_past_its_snapshot_threshold_takes_no_new_entries_until_compacted() -> None:
    # A snapshot slower than the writes must not let the log in memory grow without bound:
    # a follower drops AppendEntries that carry entries (the leader resends them later).
    core = make_core(2, log_terms=(), term=1)
    threshold = 2 * VALUE_BYTES_MAX
    shell = kv_shell(core, snapshot_threshold_bytes=threshold)
    index = 0
    while not shell.log_full:
        index += 1
        entry = Entry(1, index, EntryKind.NORMAL, largest_put(index))
        assert shell.receive(AppendEntries(1, 1, 2, index - 1, 1 if index > 1 else 0, (entry,), 0))
        run_until_idle(shell)  # nothing commits: no snapshot can compact it
    assert shell.core.log.entry_bytes > LOG_BYTES_MAX_PER_SNAPSHOT_THRESHOLD * threshold
    more = Entry(1, index + 1, EntryKind.NORMAL, largest_put(index + 1))
    assert not shell.receive(AppendEntries(1, 1, 2, index, 1, (more,), 0))
    assert shell.receive(Heartbeat(1, 1, 2, index, index))  # the leader is still heard
    run_until_idle_keeping_snapshots(shell)  # it commits, applies and snapshots
    assert not shell.log_full
    assert shell.receive(AppendEntries(1, 1, 2, index, 1, (more,), index))


def test_a_new_leader_counts_no_lease_down_before_it_applied_an_entry_of_its_term() -> None:
    """Found by the simulator's lease checker (`kvraft.sim.leases`): the old leader wrote a
    lease's checkpoint, then its clear for a keepalive it acknowledged; the new leader
    holds the clear in its log but had not applied it when it promoted, and started the
    lease from the checkpoint's older remainder (350 ms), expiring it early."""
    from kvraft.leases import LeaseTimer
    from kvraft.raft.core import RaftConfig, RaftCore
    from kvraft.raft.messages import AppendEntriesResponse, HardState, RequestVote
    from kvraft.statemachine import encode_lease_checkpoint, encode_lease_grant

    commands = [
        encode_lease_grant(3),
        encode_lease_checkpoint([(1, 350)]),
        encode_lease_checkpoint([(1, 0)]),  # committed, but node 1 does not know it yet
    ]
    core = RaftCore(
        RaftConfig(node_id=1),
        random.Random(1),
        hard_state=HardState(1, 0, 2),
        snapshot=SnapshotMeta(configuration=Configuration(voters=frozenset({1, 2, 3}))),
        entries=[Entry(1, index, EntryKind.NORMAL, data) for index, data in enumerate(commands, 1)],
    )
    timer = LeaseTimer(100, core.config.election_ticks, checkpoint_interval_ticks=10)
    shell = kv_shell(core, lease_timer=timer)
    for _ in range(4 * core.config.election_ticks):  # node 2 grants every (pre-)vote
        shell.tick()
        for message in run_until_idle(shell):
            if isinstance(message, RequestVote) and message.target == 2:
                shell.receive(RequestVoteResponse(message.term, 2, 1, True, message.pre_vote))
        if core.role == Role.LEADER:
            break
    assert core.role == Role.LEADER and shell.state_machine.applied_index == 2
    for _ in range(10):
        shell.tick()
        run_until_idle(shell)
    assert timer.leader_term is None and timer.remaining_ticks(1) is None
    # Node 2 acknowledges the no-op: the clear applies before it, then the lease's TTL runs.
    last = core.log.last_index()
    shell.receive(AppendEntriesResponse(core.term, 2, 1, True, match_index=last))
    run_until_idle(shell)
    assert shell.state_machine.applied_index == last
    shell.tick()
    run_until_idle(shell)
    assert timer.leader_term == core.term and timer.remaining_ticks(1) == 30  # a full TTL
