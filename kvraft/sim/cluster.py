"""A deterministic in-process cluster: N nodes, a simulated network and disks.

Everything random comes from one `random.Random(seed)`, so a seed replays a run
exactly. Each simulated node is the daemon's own `kvraft.shell.NodeShell` around a
`RaftCore` and a `KVStateMachine`, fed the way the daemon feeds it: at most one tick
and every message that arrived by this step in one batch, then Readies built until
there is nothing left to do. Only the IO is simulated:

- the network (`kvraft.sim.network`) delays, drops, duplicates and reorders;
- each node's disk completes writes in order, each after a random number of steps
  (0 to `write_delay_steps_max`), while the shell keeps building Readies (pipelined,
  §10.2.1). The disk keeps only completed writes: a crash loses the writes in
  flight, and a crash in the middle of a write may keep only a prefix of it (a torn
  write, which recovery sees as a shorter log).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kvraft.errors import NodeStoppedError, OutcomeUnknown, Unavailable
from kvraft.events import CoreEvents, EventLog
from kvraft.raft.core import RaftConfig, RaftCore, Role
from kvraft.raft.messages import (
    Configuration,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    SnapshotMeta,
)
from kvraft.shell import NodeShell, Persist
from kvraft.sim.bank import BankTxn
from kvraft.sim.checkers import SafetyCheckers, Violation
from kvraft.sim.leases import (
    CHECKPOINT_INTERVAL_TICKS_CHOICES,
    LeaseCall,
    LeaseChecker,
    sim_lease_timer,
)
from kvraft.sim.network import SimNetwork
from kvraft.statemachine import (
    ApplyResult,
    Change,
    KVStateMachine,
    PlainPut,
    encode_delete,
    encode_lease_checkpoint,
    encode_put,
    plain_put_change,
)
from kvraft.watch import WatchHub, changes_of

__all__ = ["APPLY_PATHS", "TICK_STEPS", "ClientOp", "SimCluster", "SimDisk", "SimNode"]

TICK_STEPS = 10
"""Simulator steps per Raft tick: messages take a few steps, so many fit in one tick."""

SIM_EVENTS_KEPT_MAX = 64
"""Each simulated node's event ring: the check reads `CoreEvents.elected_leaders`, not the ring."""

SNAPSHOT_THRESHOLD_ENTRIES = 64
"""Entries applied beyond the last snapshot before a node takes a new one (small, so runs
exercise snapshots and InstallSnapshot often)."""

SNAPSHOT_ENTRIES_PER_RECORD_CHOICES = (0, 1, 16)
"""`NodeShell.snapshot_entries_per_record` values a seed picks from: snapshots every
`SNAPSHOT_THRESHOLD_ENTRIES` entries whatever the state (0), or later as the state grows (the
daemon's default 1, and a longer log: the seeds' states hold a few dozen records)."""


APPLY_PATHS = ("followers", "hook")
"""How the simulator's checks see what each node applies, drawn per seed. "followers": as a
`kvraft.shell.ApplyFollower`, as the daemon's watch hub and lock waiting do, so that runs of
plain puts nobody waits on (a follower's apply, a restart's replay) take the shell's batch path
(`KVStateMachine.apply_plain_puts`), as in the daemon. "hook": as an `on_apply` hook, which
makes the shell apply every entry one by one with its result. Either way a node ends in the
same state and a seed runs the same (the same trace): only the shell's path differs."""


class SimDisk:
    """What survives a crash: only completed writes."""

    def __init__(self, initial: SnapshotMeta) -> None:
        self.hard_state = HardState()
        self.snapshot = initial
        self.snapshot_data = KVStateMachine().snapshot()
        self.entries: list[Entry] = []

    def write(self, persist: Persist, entries_kept: int | None = None) -> None:
        """Carry out one write; `entries_kept` simulates a torn write (crash mid-write)."""
        if persist.snapshot is not None:
            # A snapshot from the leader replaces the whole log: stale entries after it
            # must not come back at recovery.
            self.snapshot = persist.snapshot.meta
            self.snapshot_data = persist.snapshot.data
            self.entries = []
        if persist.entries:
            first = persist.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            kept = persist.entries if entries_kept is None else persist.entries[:entries_kept]
            self.entries.extend(kept)
            if entries_kept is not None:
                return  # the crash came before the hard state was written
        if persist.hard_state is not None:
            self.hard_state = persist.hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        # The storage refuses a snapshot older than the one it holds (as the daemon's does).
        assert meta.index > self.snapshot.index, f"snapshot {meta.index} after {self.snapshot}"
        self.snapshot = meta
        self.snapshot_data = data
        self.entries = [e for e in self.entries if e.index > meta.index]


@dataclass(slots=True)
class ClientOp:
    """One client operation, recorded for the linearizability checker."""

    process: int
    kind: str  # read | write | cas | delete | txn | lease (a lease client's write)
    key: str
    value: str | None = None
    expected: str | None = None
    output: object = None
    call: int = 0
    ret: int | None = None
    status: str = "pending"  # pending | ok | fail | info
    node_id: int = 0
    deadline: int = 0
    revision_seen: int = 0
    txn: BankTxn | None = None
    """For a txn: the bank transaction (`kvraft.sim.bank`); its output is the ApplyResult."""
    lease: LeaseCall | None = None
    """For a lease client's operation (`kvraft.sim.leases`): kind "lease" for its writes
    (their output is the ApplyResult), "read" for its reads and keepalives (ReadIndex rounds:
    one that times out did not happen). Kept out of the linearizability check."""


@dataclass(slots=True)
class SimNode:
    """One simulated node: the daemon's shell, a disk, and the writes in flight to it."""

    id: int
    config: RaftConfig
    disk: SimDisk
    rng: random.Random
    shell: NodeShell = field(init=False)
    watch_hub: WatchHub = field(init=False)
    alive: bool = True
    tick_phase: int = 0
    writes_in_flight: deque[tuple[int, Persist]] = field(default_factory=deque)
    """(step the write completes at, the write), in the order they were issued."""
    core_events: CoreEvents = field(init=False)
    """The daemon's event derivation (`kvraft.events`), fed after every Ready as there."""
    lease_checkpoint_interval_ticks: int = CHECKPOINT_INTERVAL_TICKS_CHOICES[0]
    """How often this node, leading, checkpoints remaining TTLs (`kvraft.leases`)."""
    lease_bugs: frozenset[str] = frozenset()
    """Test-only bugs of this node's lease timer (`kvraft.sim.leases.SimLeaseTimer`)."""
    snapshot_entries_per_record: int = 0
    """This node's `NodeShell.snapshot_entries_per_record`."""

    def __post_init__(self) -> None:
        self.start()

    @property
    def core(self) -> RaftCore:
        return self.shell.core

    @property
    def state_machine(self) -> KVStateMachine:
        state_machine = self.shell.state_machine
        assert isinstance(state_machine, KVStateMachine)
        return state_machine

    def start(self) -> None:
        """(Re)start from what the disk kept."""
        core = RaftCore(
            self.config,
            self.rng,
            hard_state=self.disk.hard_state,
            snapshot=self.disk.snapshot,
            entries=list(self.disk.entries),
        )
        self.shell = NodeShell(
            core,
            KVStateMachine.restore_bytes(self.disk.snapshot_data),
            restore=KVStateMachine.restore_bytes,
            snapshot_threshold_entries=SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_entries_per_record=self.snapshot_entries_per_record,
            # One tick stands for the daemon's default (`kvraft.sim.leases.SIM_TICK_MS`).
            lease_timer=sim_lease_timer(
                self.config.election_ticks,
                self.lease_checkpoint_interval_ticks,
                self.lease_bugs,
            ),
        )
        # A byte budget per Ready as small as the seed's AppendEntries batches, so runs
        # split proposals and peer messages across Readies (what 1 MiB values do in the
        # daemon), with inputs left waiting while faults strike.
        self.shell.ready_entry_bytes_max = 2 * self.config.batch_bytes_max
        self.watch_hub = WatchHub(self.shell.state_machine.applied_index)
        self.watch_hub.follow(self.shell)
        self.alive = True
        self.writes_in_flight = deque()
        # A small ring: only the derivation is checked, not what a reader would see.
        events = EventLog(self.id, capacity=SIM_EVENTS_KEPT_MAX, wall_clock=lambda: 0.0)
        self.core_events = CoreEvents(events, core, 0.0)


class _ApplyChecks:
    """The simulator's checks of every entry one node's shell applies: State Machine Safety,
    the lease checker, the watchers' truth (`SimCluster.on_changes`). A
    `kvraft.shell.ApplyFollower`, or its `applied` alone as an `on_apply` hook (`APPLY_PATHS`);
    counts what came which way in `SimCluster.apply_counts`."""

    def __init__(self, cluster: SimCluster, node_id: int, shell: NodeShell) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.shell = shell

    def _machine(self) -> KVStateMachine:
        machine = self.shell.state_machine  # (replaced when a snapshot is restored)
        assert isinstance(machine, KVStateMachine)
        return machine

    def applied(self, entry: Entry, result: object) -> None:
        cluster = self.cluster
        cluster.checkers.on_apply(self.node_id, entry)
        cluster.lease_checker.applied(self.node_id, self._machine(), entry, result)
        if cluster.on_changes is not None:
            cluster.on_changes(entry.index, changes_of(entry, result))
        cluster.apply_counts["one_by_one"] += 1

    def applied_plain_puts(self, puts: Sequence[PlainPut], entries: Sequence[Entry]) -> None:
        """What `applied` of each entry with its result would check: the same Entry to State
        Machine Safety, the same change to the watchers (`plain_put_change` is the change of
        a plain put's result), the run to the lease checker at once (its state is after the
        run's last entry, see `LeaseChecker.applied_plain_puts`)."""
        cluster = self.cluster
        on_apply = cluster.checkers.on_apply
        for put, entry in zip(puts, entries, strict=True):
            if put[0] != entry.index:
                raise Violation(
                    "plain puts",
                    f"n{self.node_id} reported the plain put of entry {entry.index} at "
                    f"revision {put[0]}",
                )
            on_apply(self.node_id, entry)
        cluster.lease_checker.applied_plain_puts(self.node_id, self._machine(), entries)
        on_changes = cluster.on_changes
        if on_changes is not None:
            for put in puts:
                on_changes(put[0], (plain_put_change(put),))
        cluster.apply_counts["plain_put_runs"] += 1
        cluster.apply_counts["plain_puts"] += len(puts)


def _client_answer(cluster: SimCluster, node: SimNode, op: ClientOp) -> Future[Any]:
    """Where the shell answers one client operation: it finishes the op in the history. A
    `concurrent.futures.Future` runs its callback at once, inside the shell's step."""

    def answered(answer: Future[Any]) -> None:
        error = answer.exception()
        if error is not None:
            # A write that may still apply is indeterminate; anything else definitely failed.
            cluster._finish(op, "info" if isinstance(error, OutcomeUnknown) else "fail")
            return
        if op.kind == "read":
            # Released at its read index or later (§6.4): read the state machine now.
            found = node.state_machine.get(op.key)
            op.output = found[0].decode() if found else None
            op.revision_seen = found[1] if found else 0
            if op.lease is not None:
                op.lease.read_index = answer.result()
                op.lease.read_revision = op.revision_seen
        elif op.kind == "cas":
            result = answer.result()
            assert isinstance(result, ApplyResult)
            op.output = result.ok
        elif op.kind in ("txn", "lease"):
            op.output = answer.result()
        cluster._finish(op, "ok")

    answer: Future[Any] = Future()
    answer.add_done_callback(answered)
    return answer


def _keepalive_answer(
    cluster: SimCluster, shell: NodeShell, op: ClientOp, arrived_ticks: int
) -> Future[int]:
    """A lease keepalive after its ReadIndex round, exactly as the daemon's
    (`kvraft.server.RaftNode.keepalive_lease`): once the read is released, the lease must
    still exist and this node still lead; a checkpoint of the lease in the log (or proposed)
    is cleared first, through the log, and all of it is checked again once the clear
    applied; then the deadline counts from `arrived_ticks`. (Each step waits within the
    operation's one deadline, where the daemon gives each await its own timeout.)"""
    call = op.lease
    assert call is not None

    def fail(not_found: bool = False) -> None:
        call.not_found = not_found
        cluster._finish(op, "fail")

    def keepalive() -> None:
        machine = shell.state_machine
        assert isinstance(machine, KVStateMachine)
        found = machine.lease(call.lease_id)
        if found is None:
            fail(not_found=True)
            return
        timer = shell.leases_follow_leadership()
        assert timer is not None
        if timer.leader_term is None:  # NotLeader
            fail()
            return
        checkpointed_ms = machine.lease_checkpoint_ms(call.lease_id)
        if cluster.lease_keepalive_clears and timer.needs_clear(call.lease_id, checkpointed_ms):
            cleared: Future[Any] = Future()
            cleared.add_done_callback(after(keepalive))
            cluster._pending.append((op, cleared))
            # Inside the shell's advance: the loop in SimCluster._advance feeds it.
            shell.propose(encode_lease_checkpoint([(call.lease_id, 0)]), cleared)
            return
        if not timer.keepalive(call.lease_id, arrived_ticks):
            fail(not_found=True)
            return
        op.output = found[0]
        cluster._finish(op, "ok")

    def after(then: Callable[[], None]) -> Callable[[Future[Any]], None]:
        def answered(answer: Future[Any]) -> None:
            if answer.exception() is not None:
                fail()
            else:
                then()

        return answered

    def read_released(answer: Future[int]) -> None:
        if answer.exception() is None:
            call.read_index = answer.result()
        after(keepalive)(answer)

    answer: Future[int] = Future()
    answer.add_done_callback(read_released)
    return answer


def _logged_answer(cluster: SimCluster, what: str) -> Future[None]:
    """The nemesis's membership change: nobody waits, the trace says what happened."""

    def answered(answer: Future[None]) -> None:
        error = answer.exception()
        outcome = "committed" if error is None else f"{type(error).__name__}: {error}"
        cluster.log(f"{what}: {outcome}")

    answer: Future[None] = Future()
    answer.add_done_callback(answered)
    return answer


class SimCluster:
    """Nodes, network, client sessions and checkers, advanced one step at a time."""

    def __init__(
        self,
        rng: random.Random,
        network: SimNetwork,
        voters: int,
        spares: int,
        make_config: Callable[[int], RaftConfig],
        trace: Callable[[str], None] | None = None,
        write_delay_steps_max: int = 3,
        lease_checkpoint_interval_ticks: int = CHECKPOINT_INTERVAL_TICKS_CHOICES[0],
        lease_bugs: frozenset[str] = frozenset(),
        snapshot_entries_per_record: int = 0,
        apply_path: str = APPLY_PATHS[0],
    ) -> None:
        if apply_path not in APPLY_PATHS:
            raise ValueError(f"apply_path {apply_path!r} is not one of {APPLY_PATHS}")
        self.apply_path = apply_path
        """How the checks see what each node applies (`APPLY_PATHS`)."""
        self.apply_counts = {"one_by_one": 0, "plain_put_runs": 0, "plain_puts": 0}
        """Entries the checks saw applied one by one, and runs of plain puts (and the puts in
        them) applied in one step by the shell's batch path, summed over the nodes."""
        self.rng = rng
        self.network = network
        self.now = 0
        self.checkers = SafetyCheckers()
        self.lease_checker = LeaseChecker(TICK_STEPS)
        self.lease_keepalive_clears = "lease_keepalive_no_clear" not in lease_bugs
        """False: the test-only bug `lease_keepalive_no_clear` (`kvraft.sim.leases`)."""
        self.trace = trace
        self.write_delay_steps_max = write_delay_steps_max
        """0: every write completes before the next Ready is built (no pipelining)."""
        initial = SnapshotMeta(configuration=Configuration(voters=frozenset(range(1, voters + 1))))
        self.nodes: dict[int, SimNode] = {}
        for node_id in range(1, voters + spares + 1):
            # Spares join later: they start knowing no configuration at all.
            start = initial if node_id <= voters else SnapshotMeta()
            node = SimNode(
                node_id,
                make_config(node_id),
                SimDisk(start),
                random.Random(rng.getrandbits(64)),
                tick_phase=rng.randrange(TICK_STEPS),
                lease_checkpoint_interval_ticks=lease_checkpoint_interval_ticks,
                lease_bugs=lease_bugs,
                snapshot_entries_per_record=snapshot_entries_per_record,
            )
            self._watch_applies(node)
            self.nodes[node_id] = node
        self.torn_write_probability = 0.0
        self.on_changes: Callable[[int, tuple[Change, ...]], None] | None = None
        """Told what every applied entry changed, on every node (the watchers' truth)."""
        self.completed: list[ClientOp] = []
        self._pending: list[tuple[ClientOp, Future[Any]]] = []
        # A core was fed outside step() (a client request, the nemesis): check next step.
        self._changed = False
        self._roles: dict[int, tuple[Role, int]] = {}

    # --- driving ------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now:7d} {text}")

    def step(self) -> None:
        """Advance one step: ticks and messages due now are fed to each node as one batch
        (the daemon's way), writes due now complete, then the checkers run."""
        self.now += 1
        self.lease_checker.now = self.now
        changed = self._changed
        self._changed = False
        fed: dict[int, SimNode] = {}
        for node in self.nodes.values():
            if node.alive and (self.now + node.tick_phase) % TICK_STEPS == 0:
                node.shell.tick()
                fed[node.id] = node
        for message in self.network.due(self.now):
            target = self.nodes.get(message.target)
            if target is None or not target.alive:
                continue
            target.shell.receive(message)
            fed[target.id] = target
        for node in self.nodes.values():
            if node.alive and node.writes_in_flight and node.writes_in_flight[0][0] <= self.now:
                self._complete_due_writes(node)
                fed[node.id] = node
        for node in fed.values():
            self._advance(node)
            changed = True
        if self.now % TICK_STEPS == 0:
            self._expire_client_ops()
        if changed:
            # Cores change only when fed; checking only then is checking after every change.
            self.checkers.after_step(self.live_cores())
            self._trace_roles()

    def live_cores(self) -> list[RaftCore]:
        return [node.core for node in self.nodes.values() if node.alive]

    def _trace_roles(self) -> None:
        for node in self.nodes.values():
            if not node.alive:
                continue
            role = (node.core.role, node.core.term)
            if self._roles.get(node.id) != role:
                self._roles[node.id] = role
                if node.core.role == Role.LEADER:
                    self.log(f"n{node.id} leader of term {node.core.term}")
                    if (node.core.term, node.id) not in node.core_events.elected_leaders:
                        raise Violation(
                            "events",
                            f"n{node.id} leads term {node.core.term} but its events never said"
                            " leader_elected",
                        )

    def _watch_applies(self, node: SimNode) -> None:
        checks = _ApplyChecks(self, node.id, node.shell)
        if self.apply_path == "hook":
            node.shell.on_apply.append(checks.applied)
        else:
            node.shell.followers.append(checks)

    def watch_hubs(self) -> dict[int, WatchHub | None]:
        """Each node's watch hub; None for a node that is down."""
        return {node.id: node.watch_hub if node.alive else None for node in self.nodes.values()}

    def _advance(self, node: SimNode) -> None:
        """Build and start Readies until the shell has nothing left to do (or waits on a
        write that changes the term or the vote)."""
        shell = node.shell
        self._changed = True
        while node.alive and shell.wants_advance:
            persist = shell.advance()
            ready = shell.last_ready
            if ready is not None and ready.entries:
                self.lease_checker.appended(node.id, ready.entries)
            node.core_events.observe(node.core, float(self.now))
            self._send_all(node)
            if persist is not None:
                delay_steps = self.rng.randint(0, self.write_delay_steps_max)
                completes_at = self.now + delay_steps
                if node.writes_in_flight:
                    completes_at = max(completes_at, node.writes_in_flight[-1][0])
                node.writes_in_flight.append((completes_at, persist))
                self._complete_due_writes(node)
            self._save_snapshot(node)

    def _complete_due_writes(self, node: SimNode) -> None:
        """Finish, in order, the writes due by now."""
        while node.alive and node.writes_in_flight and node.writes_in_flight[0][0] <= self.now:
            _, persist = node.writes_in_flight.popleft()
            if (persist.entries or persist.hard_state) and (
                self.rng.random() < self.torn_write_probability
            ):
                kept = self.rng.randrange(len(persist.entries)) if persist.entries else 0
                node.disk.write(persist, entries_kept=kept)
                self.log(f"n{node.id} crashed mid-write, kept {kept}/{len(persist.entries)}")
                self.crash(node.id)
                return
            node.disk.write(persist)
            node.shell.persisted(persist.token)
            if persist.snapshot is not None:
                self.log(f"n{node.id} restored snapshot at {persist.snapshot.meta.index}")
            self._send_all(node)
            self._save_snapshot(node)

    def _save_snapshot(self, node: SimNode) -> None:
        snapshot = node.shell.take_snapshot_to_save()
        if snapshot is not None:
            node.disk.save_snapshot(snapshot.meta, b"".join(snapshot.chunks))
            node.shell.snapshot_saved(snapshot.meta)

    def _send_all(self, node: SimNode) -> None:
        for message in node.shell.take_messages():
            self._send(node, message)

    def _send(self, node: SimNode, message: Message) -> None:
        self.checkers.on_send(node.id, message, node.disk.hard_state.term)
        if isinstance(message, InstallSnapshot):
            # The core names the snapshot; the IO attaches its bytes.
            assert message.meta == node.disk.snapshot, "InstallSnapshot names an unsaved snapshot"
            message = InstallSnapshot(
                message.term, message.source, message.target, message.meta, node.disk.snapshot_data
            )
            self.log(f"n{node.id} sends snapshot {message.meta.index} to n{message.target}")
        self.network.send(self.now, message)

    # --- faults -------------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        node.writes_in_flight.clear()  # never reached the disk
        # A proposal in the log may still commit without us: its outcome is unknown.
        node.shell.fail_all(NodeStoppedError(f"n{node_id} crashed"))
        self.log(f"n{node_id} crashed")

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        node.start()
        self._watch_applies(node)
        self.checkers.node_restarted(node_id)
        self.log(f"n{node_id} restarted (term {node.core.term}, log {node.core.log.last_index()})")

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        leaders = [n for n in self.nodes.values() if n.alive and n.core.role == Role.LEADER]
        return max(leaders, key=lambda n: n.core.term, default=None)

    # --- clients ------------------------------------------------------------------------

    def submit(self, op: ClientOp, node_id: int, timeout_steps: int) -> None:
        """A client hands `op` to `node_id`; the answer comes back through `completed`."""
        node = self.nodes[node_id]
        op.call = self.now
        op.node_id = node_id
        op.deadline = self.now + timeout_steps
        if not node.alive:
            self._finish(op, "fail")
            return
        if op.lease is not None and op.lease.kind == "keepalive":
            timer = node.shell.lease_timer
            assert timer is not None
            # The tick count before the ReadIndex round, as the daemon takes it.
            arrived_ticks = timer.now_ticks
            op.lease.node_id = node_id
            keepalive = _keepalive_answer(self, node.shell, op, arrived_ticks)
            self._pending.append((op, keepalive))
            node.shell.read(keepalive)
            self._advance(node)
            return
        answer = _client_answer(self, node, op)
        self._pending.append((op, answer))
        if op.kind == "read":
            node.shell.read(answer)
        else:
            node.shell.propose(self._command(op), answer)
        self._advance(node)

    def transfer_leadership(self, node: SimNode, target: int) -> None:
        node.shell.transfer_leadership(target)
        self._advance(node)

    def _command(self, op: ClientOp) -> bytes:
        if op.txn is not None:
            return op.txn.command()
        if op.lease is not None:
            return op.lease.command()
        if op.kind == "delete":
            return encode_delete(op.key)
        assert op.value is not None
        if op.kind == "cas":
            if op.expected is None:
                return encode_put(op.key, op.value.encode(), if_absent=True)
            return encode_put(op.key, op.value.encode(), if_revision=op.revision_seen)
        return encode_put(op.key, op.value.encode())

    def _finish(self, op: ClientOp, status: str) -> None:
        if op.status != "pending":
            return
        op.status = status
        op.ret = self.now if status == "ok" else None
        self.completed.append(op)

    def _expire_client_ops(self) -> None:
        # The client gives up, as the daemon's HTTP handler does: the shell then skips the
        # answer. A write may still apply; a read simply did not happen.
        still = []
        for op, answer in self._pending:
            if answer.done():
                continue
            if op.deadline <= self.now:
                if op.kind == "read":
                    answer.set_exception(Unavailable("timed out"))
                else:
                    answer.set_exception(OutcomeUnknown("timed out"))
            else:
                still.append((op, answer))
        self._pending = still

    # --- membership ---------------------------------------------------------------------

    def change_membership(self, change: Callable[[Configuration], Configuration | None]) -> None:
        leader = self.leader()
        if leader is None:
            return
        current = leader.core.log.configuration()
        proposed = change(current)
        if proposed is None:
            return
        what = (
            f"n{leader.id} proposes voters={sorted(proposed.voters)} "
            f"learners={sorted(proposed.learners)}"
        )
        self.log(what)
        leader.shell.propose_configuration(proposed, current, _logged_answer(self, what))
        self._advance(leader)
