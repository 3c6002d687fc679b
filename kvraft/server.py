"""One kvraft node: the driver loop that wires the pure core to the disk, the network
and the clients.

The flow of a write, as this module runs it (see `kvraft.raft.ready` for the rules):

    propose() queues the command          -> the driver batches every queued command
    core.propose_batch()                   -> Ready: messages (AppendEntries) go out now
    storage.save() (writer thread, fsync)  -> Ready: messages_after_persist go out
    committed_entries -> state machine      -> the waiter for that index resolves
    core.persisted()                        -> the leader counts its own copy (§10.2.1)

Only the driver task touches the core. Everything else (HTTP handlers, the tick
timer, the transport's receive callback) puts work in a queue and wakes the driver,
so the core sees one input at a time and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kvraft.config import ClusterConfig, NodeSpec
from kvraft.raft.codec import CodecError, decode_message, encode_message
from kvraft.raft.core import (
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
    InstallSnapshot,
    Message,
    SnapshotMeta,
)
from kvraft.raft.ready import Ready
from kvraft.statemachine import ApplyResult, KVStateMachine
from kvraft.storage.api import Storage, StorageError
from kvraft.storage.disk import DiskStorage
from kvraft.transport.tcp import PeerTransport

__all__ = [
    "NodeStoppedError",
    "NotLeader",
    "OutcomeUnknown",
    "ProposalLost",
    "RaftNode",
    "Unavailable",
]

log = logging.getLogger("kvraft.server")

INBOUND_MESSAGES_MAX = 100_000
"""Peer messages waiting for the driver; beyond this they are dropped (Raft tolerates loss)."""


class NotLeader(Exception):
    """This node cannot serve the request; `leader_id` may (0: no leader known)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader; leader is {leader_id or 'unknown'}")
        self.leader_id = leader_id


class Unavailable(Exception):
    """The cluster cannot take the request now (no leader, no quorum, overloaded); retry."""


class ProposalLost(Unavailable):
    """The proposal was definitely not committed (another entry took its index); retry."""


class OutcomeUnknown(Exception):
    """The command was proposed but its fate is unknown (timeout): it may still apply."""


class NodeStoppedError(Unavailable):
    """The node is shutting down or has failed."""


@dataclass(slots=True)
class _Proposal:
    command: bytes
    future: asyncio.Future[ApplyResult]


@dataclass(slots=True)
class _Waiter:
    term: int
    future: asyncio.Future[ApplyResult]


class RaftNode:
    """A running node. `start()`, serve requests, `stop()`."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: int,
        *,
        storage: Storage | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.spec: NodeSpec = config.node(node_id)
        self.id = node_id
        self._rng = rng or random.Random()
        self._storage_override = storage
        self.storage: Storage | None = None
        self.core: RaftCore | None = None
        self.state_machine = KVStateMachine()
        self.transport: PeerTransport | None = None
        self.started_at = time.monotonic()
        # Inputs for the driver.
        self._wake = asyncio.Event()
        self._ticks_due = 0
        self._inbound: deque[Message] = deque()
        self._proposals: list[_Proposal] = []
        self._reads: list[tuple[int, asyncio.Future[None]]] = []
        self._transfer_to: int | None = None
        # Waiting clients.
        self._waiters: dict[int, _Waiter] = {}
        self._read_futures: dict[int, asyncio.Future[None]] = {}
        self._reads_waiting_apply: list[tuple[int, asyncio.Future[None]]] = []
        self._next_read_id = 0
        self._pending_client_requests = 0
        # Life cycle.
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.failed: asyncio.Future[BaseException] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_data_cache: tuple[int, bytes] | None = None
        # Observability.
        self.leader_changes = 0
        self.last_leader_id = 0
        self.on_apply_hooks: list[Callable[[Entry], None]] = []
        self.fsync_observer: Callable[[float], None] | None = None
        self.peer_addresses: dict[int, NodeSpec] = {node.id: node for node in config.nodes}

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.failed = loop.create_future()
        settings = self.config.storage
        if not settings.fsync:
            log.warning(
                "node %d: fsync is OFF: acknowledged writes can be lost in a crash; "
                "use this only for tests and benchmarks",
                self.id,
            )
        self.storage = self._storage_override or await DiskStorage.open(
            self.spec.data_dir,
            fsync=settings.fsync,
            segment_bytes_max=settings.segment_bytes_max,
            snapshots_kept=settings.snapshots_kept,
        )
        recovered = self.storage.recovered
        if recovered.snapshot_meta is not None:
            chunks = [c async for c in self.storage.open_snapshot_chunks(recovered.snapshot_meta)]
            self.state_machine = await asyncio.to_thread(KVStateMachine.restore, chunks)
            snapshot = recovered.snapshot_meta
        else:
            snapshot = SnapshotMeta(configuration=self._bootstrap_configuration())
        raft = self.config.raft
        self.core = RaftCore(
            RaftConfig(
                node_id=self.id,
                election_ticks=raft.election_ticks,
                heartbeat_ticks=raft.heartbeat_ticks,
                inflight_max=raft.inflight_max,
                batch_bytes_max=raft.batch_bytes_max,
                pre_vote=raft.pre_vote,
                check_quorum=raft.check_quorum,
            ),
            self._rng,
            hard_state=recovered.hard_state,
            snapshot=snapshot,
            entries=recovered.entries,
        )
        log.info(
            "node %d: recovered term %d, snapshot %d, log %d..%d, commit %d",
            self.id,
            recovered.hard_state.term,
            snapshot.index,
            snapshot.index + 1,
            self.core.log.last_index(),
            self.core.log.commit_index,
        )
        # A node named by a DNS name (a compose service) listens on every interface; one
        # with an IP address binds it, and its outbound connections come from it too.
        self.transport = PeerTransport(
            self.id,
            self.config.cluster_id,
            self.spec.raft_listen_host or "0.0.0.0",
            self.spec.raft_port,
            self._on_peer_payload,
            self._is_known_peer,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        for node in self.peer_addresses.values():
            if node.id != self.id:
                self.transport.set_peer_address(node.id, node.raft_host, node.raft_port)
        await self.transport.start()
        self._tasks.append(asyncio.create_task(self._drive(), name=f"kvraft-driver-{self.id}"))
        self._tasks.append(asyncio.create_task(self._tick_timer(), name=f"kvraft-tick-{self.id}"))

    def _bootstrap_configuration(self) -> Configuration:
        voters = frozenset(n.id for n in self.config.nodes if n.voter)
        learners = frozenset(n.id for n in self.config.nodes if not n.voter)
        return Configuration(voters=voters, learners=learners)

    async def stop(self, *, transfer_leadership: bool = True) -> None:
        """Stop serving: hand leadership over if we have it (§3.10), then shut down."""
        if self._stopping:
            return
        if transfer_leadership and self.core is not None and self.core.role == Role.LEADER:
            await self._hand_over_leadership(timeout_s=1.0)
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._snapshot_task
        self._fail_all_waiters(NodeStoppedError("node is shutting down"))
        if self.transport is not None:
            await self.transport.stop()
        if self.storage is not None:
            with contextlib.suppress(StorageError):
                await self.storage.close()

    async def _hand_over_leadership(self, timeout_s: float) -> None:
        core = self.core
        assert core is not None
        peers = core.status().peers
        voters = core.log.configuration().voters - {self.id}
        if not voters:
            return
        target = max(voters, key=lambda v: peers[v].match_index if v in peers else -1)
        self.request_leadership_transfer(target)
        deadline = time.monotonic() + timeout_s
        while core.role == Role.LEADER and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.info("node %d: handed leadership to %d before stopping", self.id, target)

    def _fail(self, error: BaseException) -> None:
        """A local disk failure: stop acknowledging anything, and tell the process to exit."""
        log.critical("node %d: storage failed, stopping: %s", self.id, error)
        self._stopping = True
        self._fail_all_waiters(NodeStoppedError("node storage failed"))
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(error)

    def _fail_all_waiters(self, error: Exception) -> None:
        # A command already in the log may still commit (followers have it, or the disk
        # kept it after all): its fate is unknown. Anything not yet proposed, and every
        # read, simply did not happen.
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(OutcomeUnknown(f"{error}; the write may still apply"))
        futures: list[asyncio.Future[Any]] = [p.future for p in self._proposals]
        futures += [f for _, f in self._reads] + list(self._read_futures.values())
        futures += [f for _, f in self._reads_waiting_apply]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        self._proposals.clear()
        self._reads.clear()
        self._read_futures.clear()
        self._reads_waiting_apply.clear()

    # --- client requests ----------------------------------------------------------------

    def _admit(self) -> None:
        if self._stopping:
            raise NodeStoppedError("node is shutting down")
        core = self.core
        assert core is not None
        if core.role != Role.LEADER:
            raise NotLeader(core.leader_id)
        if self._pending_client_requests >= self.config.limits.proposals_pending_max:
            raise Unavailable("too many requests in flight on this node")

    async def propose(self, command: bytes, timeout_s: float) -> ApplyResult:
        """Replicate and apply a command; the answer means committed on a majority and applied.

        Raises NotLeader (nothing proposed), Unavailable/ProposalLost (definitely not
        applied: safe to retry) or OutcomeUnknown (may or may not apply).
        """
        self._admit()
        future: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._proposals.append(_Proposal(command, future))
        self._wake.set()
        self._pending_client_requests += 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise OutcomeUnknown("timed out after proposing; the write may still apply") from None
        finally:
            self._pending_client_requests -= 1

    async def read_barrier(self, timeout_s: float) -> None:
        """Wait until local reads are linearizable (ReadIndex, §6.4)."""
        self._admit()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next_read_id += 1
        self._reads.append((self._next_read_id, future))
        self._wake.set()
        self._pending_client_requests += 1
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise Unavailable("could not confirm leadership in time (no quorum?)") from None
        finally:
            self._pending_client_requests -= 1

    def request_leadership_transfer(self, target: int) -> None:
        self._transfer_to = target
        self._wake.set()

    # --- inputs -------------------------------------------------------------------------

    async def _tick_timer(self) -> None:
        # One tick per timer firing: if the loop stalls, time does not pile up into a burst
        # of ticks that would start a needless election once it resumes.
        interval_s = self.config.raft.tick_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._ticks_due = 1
            self._wake.set()

    def _is_known_peer(self, node_id: int) -> bool:
        return node_id in self.peer_addresses and node_id != self.id

    def _on_peer_payload(self, node_id: int, payload: bytes) -> None:
        try:
            message = decode_message(payload)
        except CodecError as error:
            log.warning("node %d: undecodable message from node %d: %s", self.id, node_id, error)
            return
        if message.source != node_id:
            log.warning(
                "node %d: node %d sent a message claiming to be from %d; dropped",
                self.id,
                node_id,
                message.source,
            )
            return
        if len(self._inbound) >= INBOUND_MESSAGES_MAX:
            return
        self._inbound.append(message)
        self._wake.set()

    # --- the driver ---------------------------------------------------------------------

    async def _drive(self) -> None:
        core = self.core
        assert core is not None
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                self._feed(core)
                while core.has_ready() and not self._stopping:
                    await self._handle_ready(core, core.ready())
                    self._feed(core)  # what arrived while we waited on the disk
                self._observe_leader(core)
        except StorageError as error:
            self._fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug: never keep serving in an unknown state
            log.exception("node %d: driver crashed", self.id)
            self._fail(error)

    def _feed(self, core: RaftCore) -> None:
        if self._ticks_due:
            self._ticks_due = 0
            core.tick()
        while self._inbound:
            core.step(self._inbound.popleft())
        if self._proposals:
            proposals, self._proposals = self._proposals, []
            live = [p for p in proposals if not p.future.done()]
            try:
                indexes = core.propose_batch([p.command for p in live]) if live else []
            except NotLeaderError as error:
                for proposal in live:
                    proposal.future.set_exception(NotLeader(error.leader_id))
            except ProposalDroppedError as error:
                for proposal in live:
                    proposal.future.set_exception(Unavailable(str(error)))
            else:
                for proposal, index in zip(live, indexes, strict=True):
                    self._waiters[index] = _Waiter(core.term, proposal.future)
        if self._reads:
            reads, self._reads = self._reads, []
            for read_id, future in reads:
                try:
                    core.read_index(read_id)
                except NotLeaderError as error:
                    future.set_exception(NotLeader(error.leader_id))
                else:
                    self._read_futures[read_id] = future
        if self._transfer_to is not None:
            target, self._transfer_to = self._transfer_to, None
            with contextlib.suppress(Exception):
                core.transfer_leadership(target)

    async def _handle_ready(self, core: RaftCore, ready: Ready) -> None:
        storage = self.storage
        assert storage is not None
        for message in ready.messages:
            self._send(message)
        if ready.snapshot is not None:
            await storage.install_snapshot(ready.snapshot.meta, ready.snapshot.data)
        if ready.entries or ready.hard_state is not None:
            started = time.perf_counter()
            await storage.save(ready.entries, ready.hard_state, sync=ready.must_sync)
            if self.fsync_observer is not None and ready.must_sync:
                self.fsync_observer(time.perf_counter() - started)
        for message in ready.messages_after_persist:
            self._send(message)
        if ready.snapshot is not None:
            data = ready.snapshot.data
            self.state_machine = await asyncio.to_thread(KVStateMachine.restore_bytes, data)
            self._snapshot_data_cache = (ready.snapshot.meta.index, data)
            log.info("node %d: installed snapshot at %d", self.id, ready.snapshot.meta.index)
        for entry in ready.committed_entries:
            self._apply(entry)
        for read_state in ready.read_states:
            future = self._read_futures.pop(read_state.read_id, None)
            if future is not None and not future.done():
                self._reads_waiting_apply.append((read_state.read_index, future))
        for read_id in ready.dropped_read_ids:
            future = self._read_futures.pop(read_id, None)
            if future is not None and not future.done():
                future.set_exception(Unavailable("leadership lost before the read was confirmed"))
        self._release_reads()
        if ready.entries:
            core.persisted(ready.entries[-1].index, ready.entries[-1].term)
        self._maybe_snapshot(core)

    def _apply(self, entry: Entry) -> None:
        if entry.kind == EntryKind.NORMAL:
            result = self.state_machine.apply(entry.index, entry.data)
        else:
            self.state_machine.mark_applied(entry.index)
            result = None
        for hook in self.on_apply_hooks:
            hook(entry)
        waiter = self._waiters.pop(entry.index, None)
        if waiter is None or waiter.future.done():
            return
        if waiter.term != entry.term or result is None:
            waiter.future.set_exception(
                ProposalLost("leadership changed; the write was not applied")
            )
        else:
            waiter.future.set_result(result)

    def _release_reads(self) -> None:
        applied = self.state_machine.applied_index
        still = []
        for read_index, future in self._reads_waiting_apply:
            if future.done():
                continue
            if read_index <= applied:
                future.set_result(None)
            else:
                still.append((read_index, future))
        self._reads_waiting_apply = still

    def _observe_leader(self, core: RaftCore) -> None:
        if core.leader_id != self.last_leader_id:
            if core.leader_id:
                self.leader_changes += 1
                log.info("node %d: leader is now %d (term %d)", self.id, core.leader_id, core.term)
            self.last_leader_id = core.leader_id

    # --- snapshots ----------------------------------------------------------------------

    def _maybe_snapshot(self, core: RaftCore) -> None:
        threshold = self.config.storage.snapshot_threshold_entries
        applied = core.log.applied_index
        if applied - core.log.snapshot.index < threshold:
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        # The state is captured now; encoding it runs on a thread while we keep applying.
        chunks = self.state_machine.snapshot_chunks()
        self._snapshot_task = asyncio.create_task(self._write_snapshot(applied, chunks))

    async def _write_snapshot(self, index: int, chunk_iterator: Iterator[bytes]) -> None:
        core = self.core
        storage = self.storage
        assert core is not None and storage is not None
        term = core.log.term_at(index)
        if term is None or index <= core.log.snapshot.index:
            return
        meta = SnapshotMeta(index, term, core.log.configuration_at(index))
        try:
            chunks = await asyncio.to_thread(list, chunk_iterator)
            await storage.save_snapshot(meta, chunks)
            if index > core.log.snapshot.index and index <= core.log.applied_index:
                core.compact(index)
            await storage.compact(index)
        except StorageError as error:
            self._fail(error)
            return
        log.info("node %d: snapshot at %d, log compacted", self.id, index)

    # --- sending ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(message, InstallSnapshot):
            task = asyncio.create_task(self._send_snapshot(message))
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
            return
        transport.send(message.target, encode_message(message))

    async def _send_snapshot(self, message: InstallSnapshot) -> None:
        storage = self.storage
        transport = self.transport
        assert storage is not None and transport is not None
        cached = self._snapshot_data_cache
        if cached is not None and cached[0] == message.meta.index:
            data = cached[1]
        else:
            data = b"".join([c async for c in storage.open_snapshot_chunks(message.meta)])
            self._snapshot_data_cache = (message.meta.index, data)
        full = InstallSnapshot(message.term, message.source, message.target, message.meta, data)
        transport.send(message.target, encode_message(full), bulk=True)

    # --- status -------------------------------------------------------------------------

    def role_name(self) -> str:
        core = self.core
        assert core is not None
        if core.role == Role.LEADER:
            return "leader"
        if core.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            return "candidate"
        if self.id in core.log.configuration().learners:
            return "learner"
        return "follower"

    def leader_spec(self) -> NodeSpec | None:
        core = self.core
        if core is None or not core.leader_id:
            return None
        return self.peer_addresses.get(core.leader_id)

    def status(self) -> dict[str, Any]:
        core = self.core
        assert core is not None
        status = core.status()
        members = []
        configuration = status.configuration
        for member in sorted(configuration.members):
            spec = self.peer_addresses.get(member)
            item: dict[str, Any] = {
                "id": member,
                "raft_address": spec.raft_address if spec else None,
                "http_address": spec.http_address if spec else None,
                "voter": member in configuration.voters,
            }
            if core.role == Role.LEADER:
                peer = status.peers.get(member)
                item["match_index"] = peer.match_index if peer else 0
            members.append(item)
        return {
            "id": self.id,
            "pid": os.getpid(),
            "cluster_id": self.config.cluster_id,
            "role": self.role_name(),
            "term": status.term,
            "leader_id": status.leader_id,
            "commit_index": status.commit_index,
            "applied_index": self.state_machine.applied_index,
            "last_log_index": status.last_log_index,
            "snapshot_index": status.snapshot_index,
            "members": members,
            "membership_change_pending": bool(status.pending_configuration_index),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    def is_ready(self) -> bool:
        """Knows a leader and has applied everything it knows committed."""
        core = self.core
        return (
            core is not None
            and not self._stopping
            and core.leader_id != 0
            and self.state_machine.applied_index >= core.log.commit_index
        )
