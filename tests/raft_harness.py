"""A hand-driven Raft cluster for tests: real `RaftCore`s, a network and disks the test controls.

Theory of operation
-------------------
`RaftCluster` owns one node per id, a FIFO of messages in flight, and per node a
`FakeStore` (the durable disk). A node is the daemon's own `kvraft.shell.NodeShell`
around a `RaftCore` and a tiny state machine (the list of commands applied), so the
order in which Readies are worked through (`kvraft.raft.ready`) is the shell's, the
same as in the daemon and the simulator. Nothing happens by itself: a test ticks
chosen nodes, feeds client requests to the core, and decides which in-flight
messages are delivered, kept waiting or dropped. After every input the node's shell
builds Readies until it has nothing left to do: their messages enter the network,
their writes go to the store, and `read_states` and `dropped_read_ids` are recorded
for the test.

A node's disk can be paused (`pause_disk`): its writes then wait, while the shell
keeps building Readies (pipelined, as §10.2.1 allows), until `resume_disk`, which
models a slow fsync running in parallel with the leader's replication.

As a cheap global check, every applied entry is compared with what any other
node applied at the same index (State Machine Safety, §5.4.3): a mismatch fails
the test at once, whatever the test itself asserts.

Randomness is a seeded `random.Random` per node (and per restart), so every test
is deterministic.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack

from kvraft.raft.core import RaftConfig, RaftCore, Role
from kvraft.raft.messages import (
    NO_NODE,
    AppendEntries,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
)
from kvraft.raft.ready import ReadState, Ready
from kvraft.shell import NodeShell, Persist

__all__ = [
    "DELIVERY_ROUNDS_MAX",
    "ELECTION_ATTEMPTS_MAX",
    "FakeStore",
    "MessageFilter",
    "RaftCluster",
    "SimNode",
    "appends_with_term",
    "between",
    "entries_from_terms",
    "make_core",
    "of_type",
    "sent",
    "votes_only",
]

DELIVERY_ROUNDS_MAX = 1_000
"""`stabilize` gives up after this many rounds: a livelock must fail the test, not hang it."""

ELECTION_ATTEMPTS_MAX = 10
"""`elect` gives a node this many election timeouts to win before failing the test."""

SNAPSHOT_THRESHOLD_NEVER = 1 << 62
"""The harness's shells never snapshot on their own."""

MessageFilter = Callable[[Message], bool]
"""Chooses messages in flight (to deliver or to drop)."""


def of_type(*types: type) -> MessageFilter:
    """Messages of any of `types`."""
    return lambda message: isinstance(message, types)


def between(*node_ids: int) -> MessageFilter:
    """Messages whose sender and receiver are both among `node_ids`."""
    group = frozenset(node_ids)
    return lambda message: message.source in group and message.target in group


votes_only: MessageFilter = of_type(RequestVote, RequestVoteResponse)
"""(Pre-)vote requests and answers: lets an election finish without any replication."""


def appends_with_term(term: int) -> MessageFilter:
    """AppendEntries carrying at least one entry of `term`."""
    return lambda m: isinstance(m, AppendEntries) and any(e.term == term for e in m.entries)


def entries_from_terms(terms: Sequence[int], first_index: int = 1) -> list[Entry]:
    """A log whose entry at `first_index + i` has term `terms[i]`, each with distinct data."""
    return [
        Entry(
            term, first_index + offset, EntryKind.NORMAL, f"t{term}i{first_index + offset}".encode()
        )
        for offset, term in enumerate(terms)
    ]


def make_core(
    node_id: int,
    voters: Iterable[int] = (1, 2, 3),
    *,
    learners: Iterable[int] = (),
    log_terms: Sequence[int] = (),
    term: int | None = None,
    voted_for: int = NO_NODE,
    commit_index: int = 0,
    seed: int = 0,
    **config_overrides: Any,
) -> RaftCore:
    """A lone core, for tests that feed it messages by hand and read its Ready.

    Its log holds entries with `log_terms` (all durable); its term defaults to the last one.
    """
    configuration = Configuration(voters=frozenset(voters), learners=frozenset(learners))
    if term is None:
        term = log_terms[-1] if log_terms else 0
    return RaftCore(
        RaftConfig(node_id=node_id, **config_overrides),
        random.Random(f"{seed}/{node_id}"),
        hard_state=HardState(term, voted_for, commit_index),
        snapshot=SnapshotMeta(configuration=configuration),
        entries=entries_from_terms(log_terms),
    )


def sent(ready: Ready) -> list[Message]:
    """Every message of a Ready, whichever list it is in."""
    return [*ready.messages, *ready.messages_after_persist]


def encode_state(applied_index: int, commands: Sequence[tuple[int, bytes]]) -> bytes:
    """The state machine's snapshot bytes: its applied index and (index, command) pairs."""
    data: bytes = msgpack.packb([applied_index, [[index, command] for index, command in commands]])
    return data


def decode_state(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    if not data:
        return 0, []
    applied_index, commands = msgpack.unpackb(data)
    return int(applied_index), [(int(index), bytes(command)) for index, command in commands]


class FakeStore:
    """One node's durable storage: what survives a crash."""

    def __init__(
        self,
        snapshot: SnapshotMeta,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self.snapshot = snapshot
        self.snapshot_data = b""
        self.hard_state = hard_state or HardState()
        self.entries: list[Entry] = list(entries)

    def write(self, persist: Persist) -> None:
        """Step 2 of `kvraft.raft.ready`: snapshot, then entries, then hard state."""
        if persist.snapshot is not None:
            self.snapshot = persist.snapshot.meta
            self.snapshot_data = persist.snapshot.data
            # The core replaced its whole log with the snapshot: so does the disk, or a
            # restart would resurrect entries the core no longer has.
            self.entries = []
        if persist.entries:
            first = persist.entries[0].index
            self.entries = [entry for entry in self.entries if entry.index < first]
            self.entries.extend(persist.entries)
        if persist.hard_state is not None:
            self.hard_state = persist.hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """The node compacted its own log after snapshotting its state machine."""
        self.snapshot = meta
        self.snapshot_data = data
        self.entries = [entry for entry in self.entries if entry.index > meta.index]


class CommandList:
    """The harness's state machine: the (index, command) pairs applied, in order."""

    def __init__(self, state: list[tuple[int, bytes]], applied_index: int) -> None:
        self.state = state
        self.applied_index = applied_index

    @classmethod
    def restore(cls, data: bytes) -> CommandList:
        applied_index, state = decode_state(data)
        return cls(state, applied_index)

    def apply(self, index: int, command: bytes) -> int:
        self.mark_applied(index)
        self.state.append((index, command))
        return index

    def mark_applied(self, index: int) -> None:
        assert index == self.applied_index + 1, f"applied {index} after {self.applied_index}"
        self.applied_index = index

    def snapshot_chunks(self) -> Iterator[bytes]:
        yield encode_state(self.applied_index, self.state)

    @property
    def snapshot_records(self) -> int:
        return len(self.state)


class SimNode:
    """One node: the daemon's shell around its core and state machine, its disk, and what
    the test saw."""

    def __init__(self, config: RaftConfig, seed: int, store: FakeStore) -> None:
        self.id = config.node_id
        self.config = config
        self.seed = seed
        self.store = store
        self.up = True
        self.boots = 0
        self.disk_paused = False
        self.writes_waiting: list[Persist] = []
        self.read_states: list[ReadState] = []
        self.dropped_read_ids: list[int] = []
        self.restored_snapshots: list[SnapshotMeta] = []
        self.on_apply: Callable[[SimNode, Entry], None] | None = None
        self.shell = self.boot()

    def boot(self) -> NodeShell:
        """(Re)build the node from the disk alone, as after a crash."""
        self.boots += 1
        self.writes_waiting = []
        self.disk_paused = False
        core = RaftCore(
            self.config,
            random.Random(f"{self.seed}/{self.id}/{self.boots}"),
            hard_state=self.store.hard_state,
            snapshot=self.store.snapshot,
            entries=list(self.store.entries),
        )
        shell = NodeShell(
            core,
            CommandList.restore(self.store.snapshot_data),
            restore=CommandList.restore,
            # Tests compact by hand (`RaftCluster.compact`), at the index they choose.
            snapshot_threshold_entries=SNAPSHOT_THRESHOLD_NEVER,
        )
        shell.on_apply.append(
            lambda entry, _: self.on_apply(self, entry) if self.on_apply else None
        )
        return shell

    @property
    def core(self) -> RaftCore:
        return self.shell.core

    @property
    def _commands(self) -> CommandList:
        state_machine = self.shell.state_machine
        assert isinstance(state_machine, CommandList)
        return state_machine

    @property
    def state(self) -> list[tuple[int, bytes]]:
        return self._commands.state

    @property
    def applied_index(self) -> int:
        return self._commands.applied_index

    @property
    def commands(self) -> list[bytes]:
        """The state machine's commands, in the order applied."""
        return [command for _, command in self.state]


class RaftCluster:
    """Cores wired by an in-memory network that the test drives step by step."""

    def __init__(
        self,
        voters: Iterable[int],
        *,
        learners: Iterable[int] = (),
        seed: int = 0,
        logs: Mapping[int, Sequence[Entry]] | None = None,
        hard_states: Mapping[int, HardState] | None = None,
        **config_overrides: Any,
    ) -> None:
        """Start a brand-new cluster: every member knows the initial configuration.

        `logs` and `hard_states` let a test start nodes from a given disk (as after a
        restart); `config_overrides` are `RaftConfig` fields shared by every node.
        """
        self.seed = seed
        self.config_overrides = config_overrides
        configuration = Configuration(voters=frozenset(voters), learners=frozenset(learners))
        initial = SnapshotMeta(configuration=configuration)
        self.nodes: dict[int, SimNode] = {}
        for node_id in sorted(configuration.members):
            store = FakeStore(
                initial,
                (hard_states or {}).get(node_id),
                (logs or {}).get(node_id, ()),
            )
            self.nodes[node_id] = self._new_node(node_id, store)
        self.in_flight: list[Message] = []
        """Messages sent and not yet delivered or dropped, oldest first."""
        self.history: list[Message] = []
        """Every message ever sent, in order (a test's record of what happened)."""
        self.blocked_links: set[tuple[int, int]] = set()
        self.applied_by_index: dict[int, Entry] = {}
        for node in self.nodes.values():
            self.process(node.id)

    def _config(self, node_id: int) -> RaftConfig:
        return RaftConfig(node_id=node_id, **self.config_overrides)

    def _new_node(self, node_id: int, store: FakeStore) -> SimNode:
        node = SimNode(self._config(node_id), self.seed, store)
        node.on_apply = self._check_apply
        return node

    # --- looking ------------------------------------------------------------------------

    def core(self, node_id: int) -> RaftCore:
        return self.nodes[node_id].core

    def node(self, node_id: int) -> SimNode:
        return self.nodes[node_id]

    def leaders(self) -> list[int]:
        """Live nodes that believe they lead, highest term first."""
        found = [n for n in self.nodes.values() if n.up and n.core.role == Role.LEADER]
        return [n.id for n in sorted(found, key=lambda n: -n.core.term)]

    def log(self, node_id: int) -> list[Entry]:
        """The entries node `node_id` keeps after its snapshot."""
        return list(self.core(node_id).log.entries)

    def log_terms(self, node_id: int) -> list[int]:
        return [entry.term for entry in self.log(node_id)]

    def pending(self, select: MessageFilter | None = None) -> list[Message]:
        """Messages in flight that `select` chooses."""
        return [m for m in self.in_flight if select is None or select(m)]

    # --- client requests ----------------------------------------------------------------

    def propose(self, node_id: int, data: bytes) -> int:
        index = self.core(node_id).propose(data)
        self.process(node_id)
        return index

    def propose_batch(self, node_id: int, commands: list[bytes]) -> list[int]:
        indexes = self.core(node_id).propose_batch(commands)
        self.process(node_id)
        return indexes

    def propose_configuration(self, node_id: int, configuration: Configuration) -> int:
        index = self.core(node_id).propose_configuration(configuration)
        self.process(node_id)
        return index

    def read_index(self, node_id: int, read_id: int) -> None:
        self.core(node_id).read_index(read_id)
        self.process(node_id)

    def transfer_leadership(self, node_id: int, target: int) -> None:
        self.core(node_id).transfer_leadership(target)
        self.process(node_id)

    def compact(self, node_id: int, index: int | None = None) -> SnapshotMeta:
        """Snapshot the node's state machine at `index` (default: all applied) and compact."""
        node = self.nodes[node_id]
        index = node.applied_index if index is None else index
        data = encode_state(index, [(i, command) for i, command in node.state if i <= index])
        meta = node.core.compact(index)
        node.store.save_snapshot(meta, data)
        return meta

    # --- time ---------------------------------------------------------------------------

    def tick(self, *node_ids: int, count: int = 1) -> None:
        """Tick the nodes (every live node if none is named) `count` times; deliver nothing."""
        chosen = node_ids or tuple(n.id for n in self.nodes.values() if n.up)
        for _ in range(count):
            for node_id in chosen:
                if self.nodes[node_id].up:
                    self.core(node_id).tick()
                    self.process(node_id)

    def run(self, ticks: int, *node_ids: int) -> None:
        """`ticks` rounds of: tick the nodes, then deliver until the network is quiet."""
        for _ in range(ticks):
            self.tick(*node_ids)
            self.stabilize()

    def heartbeat(self, leader_id: int) -> None:
        """Tick only the leader until its next heartbeat leaves, then deliver until quiet: the
        heartbeat carries the commit index to followers that have the entries (§5.3)."""
        self.tick(leader_id, count=self.core(leader_id).config.heartbeat_ticks)
        self.stabilize()

    def campaign(self, node_id: int) -> None:
        """Tick only `node_id` until its election timer fires; deliver nothing."""
        core = self.core(node_id)
        for _ in range(2 * core.config.election_ticks + 1):
            if core.role != Role.FOLLOWER:
                return
            self.tick(node_id)
        raise AssertionError(f"node {node_id} did not campaign within 2 * election_ticks")

    def elect(self, node_id: int, select: MessageFilter | None = None) -> None:
        """Make `node_id` leader: tick only it, delivering `select` (all by default) after
        each tick, until it wins. Others are not ticked, so only `node_id` campaigns."""
        core = self.core(node_id)
        for _ in range(ELECTION_ATTEMPTS_MAX * 2 * core.config.election_ticks):
            self.tick(node_id)
            self.stabilize(select)
            if core.role == Role.LEADER:
                return
        raise AssertionError(f"node {node_id} was not elected")

    # --- network ------------------------------------------------------------------------

    def deliver(self, select: MessageFilter | None = None) -> list[Message]:
        """Deliver every message now in flight that `select` chooses (all by default).

        Messages they provoke stay in flight for the next call. Messages on a cut link
        or to a crashed node are lost.
        """
        chosen = [m for m in self.in_flight if select is None or select(m)]
        if not chosen:
            return []
        chosen_ids = {id(m) for m in chosen}
        self.in_flight = [m for m in self.in_flight if id(m) not in chosen_ids]
        delivered = []
        for message in chosen:
            target = self.nodes.get(message.target)
            if target is None or not target.up:
                continue
            if (message.source, message.target) in self.blocked_links:
                continue
            target.core.step(message)
            delivered.append(message)
            self.process(message.target)
        return delivered

    def stabilize(self, select: MessageFilter | None = None) -> None:
        """Deliver chosen messages, and the messages they provoke, until none is left."""
        for _ in range(DELIVERY_ROUNDS_MAX):
            if not any(select is None or select(m) for m in self.in_flight):
                return
            self.deliver(select)
        raise AssertionError(f"still delivering after {DELIVERY_ROUNDS_MAX} rounds")

    def drop(self, select: MessageFilter | None = None) -> list[Message]:
        """Lose the chosen messages in flight (all by default)."""
        dropped: list[Message] = []
        kept: list[Message] = []
        for message in self.in_flight:
            # One call of `select` per message: it may be random.
            (dropped if select is None or select(message) else kept).append(message)
        self.in_flight = kept
        return dropped

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between nodes of different groups (nodes not named: alone)."""
        group_of: dict[int, int] = {}
        for number, group in enumerate(groups):
            for node_id in group:
                group_of[node_id] = number
        self.blocked_links = {
            (a, b)
            for a in self.nodes
            for b in self.nodes
            if a != b and group_of.get(a, -a) != group_of.get(b, -b)
        }

    def isolate(self, node_id: int) -> None:
        """Cut `node_id` off from everyone (in addition to cuts already made)."""
        for other in self.nodes:
            if other != node_id:
                self.blocked_links |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.blocked_links = set()

    # --- faults and membership ----------------------------------------------------------

    def crash(self, node_id: int) -> None:
        """Stop the node; only its disk survives (writes still pending are lost)."""
        node = self.nodes[node_id]
        node.up = False
        node.writes_waiting = []

    def restart(self, node_id: int) -> None:
        """Boot the node again from its disk."""
        node = self.nodes[node_id]
        node.shell = node.boot()
        node.up = True
        self.process(node_id)

    def join(self, node_id: int) -> None:
        """A brand-new node with an empty disk and no configuration: it waits for a leader."""
        self.nodes[node_id] = self._new_node(node_id, FakeStore(SnapshotMeta()))

    def pause_disk(self, node_id: int) -> None:
        """Writes of this node wait (messages that need no write still go out)."""
        self.nodes[node_id].disk_paused = True

    def resume_disk(self, node_id: int) -> None:
        """Finish the waiting writes in order, then run normally."""
        node = self.nodes[node_id]
        node.disk_paused = False
        waiting, node.writes_waiting = node.writes_waiting, []
        for persist in waiting:
            self._write(node, persist)
        self.process(node_id)

    # --- the IO around the daemon's shell -----------------------------------------------

    def process(self, node_id: int) -> None:
        """Let the node's shell build Readies until it has nothing more to do."""
        node = self.nodes[node_id]
        shell = node.shell
        for _ in range(DELIVERY_ROUNDS_MAX):
            if not node.up or not shell.wants_advance:
                return
            persist = shell.advance()
            self._observe(node)
            self._send_all(node)
            if persist is not None:
                if node.disk_paused:
                    node.writes_waiting.append(persist)
                else:
                    self._write(node, persist)
        raise AssertionError(f"node {node_id} never ran out of Ready")

    def _write(self, node: SimNode, persist: Persist) -> None:
        node.store.write(persist)
        node.shell.persisted(persist.token)
        if persist.snapshot is not None:
            node.restored_snapshots.append(persist.snapshot.meta)
        self._send_all(node)

    def _observe(self, node: SimNode) -> None:
        ready = node.shell.last_ready
        if ready is not None:
            node.read_states.extend(ready.read_states)
            node.dropped_read_ids.extend(ready.dropped_read_ids)

    def _send_all(self, node: SimNode) -> None:
        for message in node.shell.take_messages():
            self._send(node, message)

    def _send(self, node: SimNode, message: Message) -> None:
        if isinstance(message, InstallSnapshot):
            # The core names the snapshot; the shell attaches the state machine's bytes.
            assert message.meta == node.store.snapshot, "InstallSnapshot names an unsaved snapshot"
            message = dataclasses.replace(message, data=node.store.snapshot_data)
        self.in_flight.append(message)
        self.history.append(message)

    def _check_apply(self, node: SimNode, entry: Entry) -> None:
        assert any(e == entry for e in node.store.entries), (
            f"node {node.id} applied entry {entry.index} before it was durable"
        )
        first = self.applied_by_index.setdefault(entry.index, entry)
        assert first == entry, (
            f"State Machine Safety violated at index {entry.index}: {first} vs {entry}"
        )
