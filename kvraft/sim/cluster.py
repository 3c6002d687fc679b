"""A deterministic in-process cluster: N Raft cores, a simulated network and disks.

Everything random comes from one `random.Random(seed)`, so a seed replays a run
exactly. A simulated node drives its core the way the daemon does (see
`kvraft.raft.ready`): send `messages`, persist, send `messages_after_persist`,
apply, answer reads, report persistence. Its disk keeps only what was synced:
a crash loses unsynced writes, and a crash in the middle of a write may keep
only a prefix of it (a torn write, which recovery sees as a shorter log).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvraft.raft.core import (
    ConfigurationChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    Role,
)
from kvraft.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    SnapshotMeta,
)
from kvraft.raft.ready import Ready
from kvraft.sim.checkers import SafetyCheckers
from kvraft.sim.network import SimNetwork
from kvraft.statemachine import KVStateMachine, encode_delete, encode_put

__all__ = ["TICK_STEPS", "ClientOp", "SimCluster", "SimDisk", "SimNode"]

TICK_STEPS = 10
"""Simulator steps per Raft tick: messages take a few steps, so many fit in one tick."""


class SimDisk:
    """What survives a crash: only synced writes."""

    def __init__(self, initial: SnapshotMeta) -> None:
        self.hard_state = HardState()
        self.snapshot = initial
        self.snapshot_data = KVStateMachine().snapshot()
        self.entries: list[Entry] = []
        self._unsynced_hard_state: HardState | None = None

    def write(self, ready: Ready, entries_kept: int | None = None) -> None:
        """Persist a Ready; `entries_kept` simulates a torn write (crash mid-write)."""
        if ready.snapshot is not None:
            # A snapshot from the leader replaces the whole log: stale entries after it
            # must not come back at recovery.
            self.snapshot = ready.snapshot.meta
            self.snapshot_data = ready.snapshot.data
            self.entries = []
        if ready.entries:
            first = ready.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            written = ready.entries if entries_kept is None else ready.entries[:entries_kept]
            self.entries.extend(written)
            if entries_kept is not None:
                return  # the crash came before the hard state was written
        if ready.hard_state is not None:
            if ready.must_sync:
                self.hard_state = ready.hard_state
                self._unsynced_hard_state = None
            else:
                self._unsynced_hard_state = ready.hard_state
        elif ready.must_sync and self._unsynced_hard_state is not None:
            self.hard_state = self._unsynced_hard_state
            self._unsynced_hard_state = None

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self.snapshot = meta
        self.snapshot_data = data
        self.entries = [e for e in self.entries if e.index > meta.index]

    def crash(self) -> None:
        self._unsynced_hard_state = None


@dataclass(slots=True)
class ClientOp:
    """One client operation, recorded for the linearizability checker."""

    process: int
    kind: str  # read | write | cas | delete
    key: str
    value: str | None = None
    expected: str | None = None
    output: object = None
    call: int = 0
    ret: int | None = None
    status: str = "pending"  # pending | ok | fail | info
    # For the session that issued it:
    node_id: int = 0
    term: int = 0
    index: int = 0
    read_index: int = -1
    deadline: int = 0
    revision_seen: int = 0


@dataclass(slots=True)
class SimNode:
    """One simulated node: a core, a state machine, a disk, and its pending requests."""

    id: int
    config: RaftConfig
    disk: SimDisk
    rng: random.Random
    core: RaftCore = field(init=False)
    state_machine: KVStateMachine = field(init=False)
    alive: bool = True
    tick_phase: int = 0
    proposals: dict[int, ClientOp] = field(default_factory=dict)
    reads: dict[int, ClientOp] = field(default_factory=dict)
    reads_ready: list[ClientOp] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        """(Re)start from what the disk kept."""
        self.core = RaftCore(
            self.config,
            self.rng,
            hard_state=self.disk.hard_state,
            snapshot=self.disk.snapshot,
            entries=list(self.disk.entries),
        )
        self.state_machine = KVStateMachine.restore_bytes(self.disk.snapshot_data)
        self.alive = True
        self.proposals = {}
        self.reads = {}
        self.reads_ready = []


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
        snapshot_threshold_entries: int = 64,
    ) -> None:
        self.rng = rng
        self.network = network
        self.now = 0
        self.checkers = SafetyCheckers()
        self.trace = trace
        self.snapshot_threshold_entries = snapshot_threshold_entries
        initial = SnapshotMeta(configuration=Configuration(voters=frozenset(range(1, voters + 1))))
        self.nodes: dict[int, SimNode] = {}
        for node_id in range(1, voters + spares + 1):
            # Spares join later: they start knowing no configuration at all.
            start = initial if node_id <= voters else SnapshotMeta()
            self.nodes[node_id] = SimNode(
                node_id,
                make_config(node_id),
                SimDisk(start),
                random.Random(rng.getrandbits(64)),
                tick_phase=rng.randrange(TICK_STEPS),
            )
        self.torn_write_probability = 0.0
        self.completed: list[ClientOp] = []
        self._read_ids = 0
        # A core was fed outside step() (a client request, the nemesis): check next step.
        self._changed = False
        self._roles: dict[int, tuple[Role, int]] = {}

    # --- driving ------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now:7d} {text}")

    def step(self) -> None:
        """Advance one step: ticks due now, then messages due now, then checks."""
        self.now += 1
        changed = self._changed
        self._changed = False
        for node in self.nodes.values():
            if node.alive and (self.now + node.tick_phase) % TICK_STEPS == 0:
                node.core.tick()
                self._process(node)
                changed = True
        for message in self.network.due(self.now):
            target = self.nodes.get(message.target)
            if target is None or not target.alive:
                continue
            target.core.step(message)
            self._process(target)
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

    def _process(self, node: SimNode) -> None:
        """Work through the node's Ready in the order `kvraft.raft.ready` prescribes."""
        core = node.core
        self._changed = True
        while node.alive and core.has_ready():
            ready = core.ready()
            for message in ready.messages:
                self._send(node, message)
            torn = (ready.entries or ready.hard_state) and (
                self.rng.random() < self.torn_write_probability
            )
            if torn:
                kept = self.rng.randrange(len(ready.entries)) if ready.entries else 0
                node.disk.write(ready, entries_kept=kept)
                self.log(f"n{node.id} crashed mid-write, kept {kept}/{len(ready.entries)}")
                self.crash(node.id)
                return
            node.disk.write(ready)
            for message in ready.messages_after_persist:
                self._send(node, message)
            if ready.snapshot is not None:
                node.state_machine = KVStateMachine.restore_bytes(ready.snapshot.data)
                self.log(f"n{node.id} restored snapshot at {ready.snapshot.meta.index}")
            for entry in ready.committed_entries:
                self._apply(node, entry)
            for read_state in ready.read_states:
                op = node.reads.pop(read_state.read_id, None)
                if op is not None:
                    op.read_index = read_state.read_index
                    node.reads_ready.append(op)
            for read_id in ready.dropped_read_ids:
                op = node.reads.pop(read_id, None)
                if op is not None:
                    self._finish(op, "fail")
            self._serve_reads(node)
            if ready.entries:
                last = ready.entries[-1]
                core.persisted(last.index, last.term)
            self._maybe_snapshot(node)

    def _send(self, node: SimNode, message: Message) -> None:
        if isinstance(message, InstallSnapshot):
            # The core names the snapshot; the shell attaches its bytes.
            message = InstallSnapshot(
                message.term, message.source, message.target, message.meta, node.disk.snapshot_data
            )
            self.log(f"n{node.id} sends snapshot {message.meta.index} to n{message.target}")
        self.network.send(self.now, message)

    def _apply(self, node: SimNode, entry: Entry) -> None:
        self.checkers.on_apply(node.id, entry)
        if entry.kind == EntryKind.NORMAL:
            result = node.state_machine.apply(entry.index, entry.data)
        else:
            node.state_machine.mark_applied(entry.index)
            result = None
        op = node.proposals.pop(entry.index, None)
        if op is None:
            return
        if entry.term != op.term:
            # Another entry won this index: ours was never committed and never will be.
            self._finish(op, "fail")
            return
        assert result is not None
        if op.kind == "cas":
            op.output = result.ok
        self._finish(op, "ok")

    def _serve_reads(self, node: SimNode) -> None:
        waiting = []
        for op in node.reads_ready:
            if node.state_machine.applied_index >= op.read_index:
                found = node.state_machine.get(op.key)
                op.output = found[0].decode() if found else None
                op.revision_seen = found[1] if found else 0
                self._finish(op, "ok")
            else:
                waiting.append(op)
        node.reads_ready = waiting

    def _maybe_snapshot(self, node: SimNode) -> None:
        log = node.core.log
        if log.applied_index - log.snapshot.index < self.snapshot_threshold_entries:
            return
        data = node.state_machine.snapshot()
        meta = node.core.compact(log.applied_index)
        node.disk.save_snapshot(meta, data)

    # --- faults -------------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        node.disk.crash()
        for op in [*node.proposals.values(), *node.reads.values(), *node.reads_ready]:
            # A proposal may still commit without us: its outcome is unknown.
            self._finish(op, "info" if op.kind != "read" else "fail")
        self.log(f"n{node_id} crashed")

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        node.start()
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
        core = node.core
        try:
            if op.kind == "read":
                self._read_ids += 1
                core.read_index(self._read_ids)
                node.reads[self._read_ids] = op
            else:
                op.index = core.propose(self._command(op))
                op.term = core.term
                earlier = node.proposals.pop(op.index, None)
                if earlier is not None:
                    # This node's log was cut below that index since: the earlier entry is
                    # gone from here, and whether it committed elsewhere is not ours to say.
                    self._finish(earlier, "info")
                node.proposals[op.index] = op
        except (NotLeaderError, ProposalDroppedError):
            self._finish(op, "fail")
            return
        self._process(node)

    def _command(self, op: ClientOp) -> bytes:
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
        for node in self.nodes.values():
            for collection in (node.proposals, node.reads):
                expired = [key for key, op in collection.items() if op.deadline <= self.now]
                for key in expired:
                    op = collection.pop(key)
                    self._finish(op, "info" if op.kind != "read" else "fail")
            expired_reads = [op for op in node.reads_ready if op.deadline <= self.now]
            for op in expired_reads:
                node.reads_ready.remove(op)
                self._finish(op, "fail")

    # --- membership ---------------------------------------------------------------------

    def change_membership(self, change: Callable[[Configuration], Configuration | None]) -> None:
        leader = self.leader()
        if leader is None:
            return
        current = leader.core.log.configuration()
        proposed = change(current)
        if proposed is None:
            return
        try:
            leader.core.propose_configuration(proposed)
        except (ConfigurationChangeError, NotLeaderError, ProposalDroppedError) as error:
            self.log(f"n{leader.id} refused membership change: {error}")
            return
        self.log(
            f"n{leader.id} proposes voters={sorted(proposed.voters)} "
            f"learners={sorted(proposed.learners)}"
        )
        self._process(leader)
