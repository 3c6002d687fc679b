"""One kvraft node: the driver loop that wires the pure core to the disk, the network
and the clients.

The flow of a write, as this module runs it (`kvraft.shell` keeps the order, which
`kvraft.raft.ready` prescribes):

    propose() queues the command in the shell -> the driver feeds every queued input at once
    shell.advance(): core.propose_batch()     -> Ready: messages (AppendEntries) go out now
    storage.start_save() (writer thread)      -> shell.persisted(): messages_after_persist
      (the driver goes on stepping meanwhile: WRITES_IN_FLIGHT_MAX)
    committed_entries -> state machine         -> the future for that index resolves
    core.persisted()                           -> the leader counts its own copy (§10.2.1)

This module is the IO around `kvraft.shell.NodeShell`: the disk (`Storage`), the
network (`PeerTransport`, or any transport with its API, such as `MemoryTransport`),
timers and futures. Only the driver task calls `advance()`. Everything else (HTTP
handlers, the tick timer, the transport's receive callback) queues work in the shell
and wakes the driver, so the core sees one batch of inputs at a time and the event
loop never waits on the disk.

Membership lives in two modules of its own. `kvraft.address_book` (`AddressBook`) knows
where each peer is and tells the transport which peers exist: the driver hands it the
latest configuration in the log before each Ready's messages go out (§4.1: a
configuration is in force once appended, committed or not). `kvraft.reconfiguration`
(`Reconfiguration`) is the leader's side of a change: learner, catch-up and promotion
(§4.2.1), removal, leadership transfer (§3.10); it proposes each configuration through
`RaftNode.propose_configuration`, like a write through the driver. `kvraft.membership`
holds the pure planning both use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from typing import Any, Protocol, TypeVar

from kvraft.address_book import LOOKUP_TIMEOUT_S, AddressBook
from kvraft.admission import WaitingProposals, WriteAdmission
from kvraft.config import ClusterConfig, NodeSpec
from kvraft.errors import NodeStoppedError, NotLeader, OutcomeUnknown, Overloaded, Unavailable
from kvraft.events import CoreEvents, EventLog
from kvraft.leases import LeaseTimer
from kvraft.locks import LockWaiting
from kvraft.membership import MemberAddress, pick_transfer_target
from kvraft.raft.codec import (
    INSTALL_SNAPSHOT_BYTES_MAX,
    CodecError,
    decode_message,
    encode_install_snapshot_head,
    encode_message,
)
from kvraft.raft.core import RaftConfig, RaftCore, Role
from kvraft.raft.messages import (
    NO_NODE,
    Configuration,
    InstallSnapshot,
    Message,
    SnapshotMeta,
)
from kvraft.reconfiguration import MEMBERSHIP_REQUEST_TIMEOUTS, Reconfiguration
from kvraft.shell import NodeShell, Persist, SnapshotToSave, StateMachine
from kvraft.statemachine import ApplyResult, KVStateMachine, encode_lease_checkpoint
from kvraft.storage.api import Storage, StorageError
from kvraft.storage.disk import DiskStorage
from kvraft.tls import NodeTls
from kvraft.transport.tcp import PeerTransport
from kvraft.watch import WatchHub

# The two constants live in `kvraft.address_book` and `kvraft.reconfiguration` now; they stay
# importable from here for code written before the move.
__all__ = [
    "LOOKUP_TIMEOUT_S",
    "MEMBERSHIP_REQUEST_TIMEOUTS",
    "PROPOSAL_WAIT_S_MAX",
    "RaftNode",
    "Transport",
    "TransportFactory",
]

log = logging.getLogger("kvraft.server")

PROPOSAL_WAIT_S_MAX = 1.0
"""A leader refuses new writes (503 overloaded) while the oldest write it is still working on
has waited longer than this (`kvraft.admission.WaitingProposals`): under overload, what is
admitted is answered in about a second and the rest is shed at once, instead of everything
queueing until it times out with an unknown outcome."""

WRITES_IN_FLIGHT_MAX = 4
"""Readies whose disk writes a node lets run at once. While a write is in flight the driver
goes on stepping what arrives (the followers' acknowledgements, new proposals) and builds
the next Readies: a leader commits with two followers' durable copies without waiting for
its own (§10.2.1), and a follower writes the next AppendEntries while the last is syncing.
The shell keeps the order (`NodeShell.persisted`: Readies finish in the order they were
started); past this many, the driver waits for the oldest write.

A write still running after one tick holds the driver as well, until it is done: a node
whose disk hangs must stop heartbeating, so that the others elect a leader that can
commit, instead of leading on and applying nothing."""


class Transport(Protocol):
    """What the node needs of its peer transport (`PeerTransport`, `MemoryTransport`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def set_peer_address(self, node_id: int, host: str, port: int) -> None: ...

    def remove_peer(self, node_id: int) -> None: ...

    def send(self, node_id: int, payload: bytes, bulk: bool = False) -> bool: ...

    async def send_parts(
        self, node_id: int, parts: Sequence[bytes], bulk: bool = False
    ) -> bool: ...

    def bulk_pending(self, node_id: int) -> bool: ...

    def flush(self, node_id: int | None = None) -> None: ...

    def peer_stats(self) -> dict[int, dict[str, int]]: ...


TransportFactory = Callable[[Callable[[int, bytes], None], Callable[[int], bool]], Transport]
"""Builds a node's transport from its two callbacks: `on_message(source_id, payload)` and
`is_known_peer(node_id)`. The default builds a `PeerTransport` on the node's raft port."""


def _fail_unless_done(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


_T = TypeVar("_T")


async def _restore_streaming(chunks: AsyncIterator[bytes]) -> KVStateMachine:
    """Rebuild the state machine on a worker thread, one snapshot chunk at a time: holding
    every chunk first would add the whole snapshot to the peak memory of a start."""
    loop = asyncio.get_running_loop()

    async def next_chunk() -> bytes | None:
        return await anext(chunks, None)

    def pulled_from_loop() -> Iterator[bytes]:
        while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
            yield chunk

    try:
        return await asyncio.to_thread(KVStateMachine.restore, pulled_from_loop())
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()


class RaftNode:
    """A running node. `start()`, serve requests, `stop()`."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: int,
        *,
        spec: NodeSpec | None = None,
        storage: Storage | None = None,
        transport: TransportFactory | None = None,
        rng: random.Random | None = None,
        peer_secret: bytes | None = None,
        tls: NodeTls | None = None,
    ) -> None:
        """A node of `config`'s cluster. A node named in `config.nodes` is a founding member:
        it starts from the file's configuration. Any other node (a joining one) passes its own
        `spec` and starts with an empty configuration until the cluster adds it.

        `storage` (default: a `DiskStorage` in the spec's data directory) and `transport`
        (default: a `PeerTransport` on the spec's raft port) are the node's seams: with
        `MemoryStorage` and `MemoryTransport`, whole clusters run in one event loop.

        `tls` (`kvraft.tls.node_tls`): the node's SSL contexts, for peer mTLS on the default
        transport and for reaching other nodes' HTTPS API; default: none (plain)."""
        self.config = config
        self._founding = any(node.id == node_id for node in config.nodes)
        self.spec: NodeSpec = config.node(node_id) if spec is None else spec
        if self.spec.id != node_id:
            raise ValueError(f"spec is for node {self.spec.id}, not {node_id}")
        self.id = node_id
        self._rng = rng or random.Random()
        self._storage_override = storage
        self._transport_factory = transport
        self._peer_secret = peer_secret  # the default transport's; never logged (issue #20)
        self.tls = tls or NodeTls()
        self.storage: Storage | None = None
        self.shell: NodeShell | None = None
        self._state_machine_before_start = KVStateMachine()
        self.watch_hub = WatchHub(0)
        """The committed changes this node applied, for watchers (`kvraft.watch`)."""
        self.lock_waiting = LockWaiting()
        """The requests waiting for a lock to pass to them (`kvraft.locks`)."""
        self.transport: Transport | None = None
        self.started_at = time.monotonic()
        self._wake = asyncio.Event()
        self._writes: deque[tuple[int, asyncio.Future[Any], float]] = deque()
        """The Readies' writes started and not yet reported to the shell, oldest first, with
        their tokens and start times on the loop's clock (`WRITES_IN_FLIGHT_MAX`)."""
        self.write_hold_s = config.raft.tick_ms / 1000
        """A write running longer than this holds the driver until it is done (one tick:
        see `WRITES_IN_FLIGHT_MAX`)."""
        self._pending_client_requests = 0
        self.write_admission = WriteAdmission(config.limits.write_bytes_pending_max)
        self.waiting_proposals = WaitingProposals(PROPOSAL_WAIT_S_MAX)
        # Life cycle.
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        """No new work is taken: the node is stopping, or its storage failed."""
        self._stopped = False
        self.failed: asyncio.Future[BaseException] | None = None
        self._snapshot_data_cache: tuple[int, list[bytes]] | None = None
        """The data of the last snapshot sent or installed (its index, its chunks)."""
        self._snapshot_sending: set[int] = set()
        """The peers a snapshot is being made ready for (`_send_snapshot` running)."""
        self._snapshot_too_large_logged = 0
        # Observability.
        self.leader_changes = 0
        self.last_leader_id = 0
        self.fsync_observer: Callable[[float], None] | None = None
        self.events = EventLog(node_id, config.limits.events_kept_max)
        """What this node lives through, for `GET /v1/events` (`kvraft.events`)."""
        self._core_events: CoreEvents | None = None
        # Membership: where each peer is (and which may connect), and the leader's side of
        # a change.
        self.address_book = AddressBook(
            node_id,
            MemberAddress.of_spec(self.spec),
            {node.id: MemberAddress.of_spec(node) for node in config.nodes},
            founding=self._founding,
            is_stopping=lambda: self._stopping,
            https_client=self.tls.https_client,
        )
        self.reconfiguration = Reconfiguration(self)
        self._state_changed = asyncio.Event()
        self._state_waiters = 0  # coroutines in wait_until: only then is a new Event needed

    @property
    def core(self) -> RaftCore | None:
        """The Raft core, once started."""
        return self.shell.core if self.shell is not None else None

    @property
    def state_machine(self) -> KVStateMachine:
        """The state machine the applied log built (replaced when a snapshot is installed)."""
        if self.shell is None:
            return self._state_machine_before_start
        state_machine = self.shell.state_machine
        assert isinstance(state_machine, KVStateMachine)
        return state_machine

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
        state_machine = KVStateMachine()
        if recovered.snapshot_meta is not None:
            state_machine = await _restore_streaming(
                self.storage.open_snapshot_chunks(recovered.snapshot_meta)
            )
            snapshot = recovered.snapshot_meta
        else:
            snapshot = SnapshotMeta(configuration=self._bootstrap_configuration())
        raft = self.config.raft
        core = RaftCore(
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
        self.shell = NodeShell(
            core,
            state_machine,
            restore=KVStateMachine.restore_bytes,
            snapshot_threshold_entries=settings.snapshot_threshold_entries,
            snapshot_threshold_bytes=settings.snapshot_threshold_bytes,
            snapshot_entries_per_record=settings.snapshot_entries_per_record,
            lease_timer=LeaseTimer(raft.tick_ms, raft.election_ticks),
        )
        # Watchers can go back as far as the state this node starts from; the log replayed
        # from here on refills the history.
        limits = self.config.limits
        self.watch_hub = WatchHub(
            state_machine.applied_index,
            history_revisions_max=limits.watch_history_revisions_max,
            history_bytes_max=limits.watch_history_bytes_max,
            watchers_max=limits.watchers_max,
        )
        self.watch_hub.follow(self.shell)
        self.lock_waiting.follow(self.shell)
        self._core_events = CoreEvents(self.events, core, time.monotonic())
        self.events.emit(
            "node_started",
            core.term,
            last_log_index=core.log.last_index(),
            commit_index=core.log.commit_index,
        )
        log.info(
            "node %d: recovered term %d, snapshot %d, log %d..%d, commit %d",
            self.id,
            recovered.hard_state.term,
            snapshot.index,
            snapshot.index + 1,
            core.log.last_index(),
            core.log.commit_index,
        )
        if self._transport_factory is not None:
            self.transport = self._transport_factory(
                self._on_peer_payload, self.address_book.is_known_peer
            )
        else:
            # A node named by a DNS name (a compose service) listens on every interface; one
            # with an IP address binds it, and its outbound connections come from it too.
            self.transport = PeerTransport(
                self.id,
                self.config.cluster_id,
                self.spec.raft_listen_host or "0.0.0.0",
                self.spec.raft_port,
                self._on_peer_payload,
                self.address_book.is_known_peer,
                rng=random.Random(self._rng.getrandbits(64)),
                peer_secret=self._peer_secret,
                tls_server_context=self.tls.peer_server,
                tls_client_context=self.tls.peer_client,
            )
        if isinstance(self.transport, PeerTransport):
            self.transport.on_peer_reachability = self._on_peer_reachability
        self.address_book.attach_transport(self.transport)
        self.address_book.follow_configuration(core.log.configuration())
        if not core.log.configuration().members:
            log.info("node %d: not a member of any configuration yet; waiting to be added", self.id)
        await self.transport.start()
        self._tasks.append(asyncio.create_task(self._drive(), name=f"kvraft-driver-{self.id}"))
        self._tasks.append(asyncio.create_task(self._tick_timer(), name=f"kvraft-tick-{self.id}"))

    def _bootstrap_configuration(self) -> Configuration:
        # The file's addresses are used while the configuration has no context (see
        # `address_book_of`), so the file stays authoritative until the first change.
        if not self._founding:
            return Configuration()
        voters = frozenset(n.id for n in self.config.nodes if n.voter)
        learners = frozenset(n.id for n in self.config.nodes if not n.voter)
        return Configuration(voters=voters, learners=learners)

    async def stop(self, *, transfer_leadership: bool = True) -> None:
        """Stop serving: hand leadership over if we have it (§3.10), then shut down. A node
        whose storage failed is already stopping but still has its sockets and files."""
        if self._stopped:
            return
        self._stopped = True
        if (
            transfer_leadership
            and not self._stopping
            and self.core is not None
            and self.core.role == Role.LEADER
        ):
            await self._hand_over_leadership(timeout_s=1.0)
        self._stopping = True
        self._wake.set()
        tasks = list(self._tasks)  # a finished task leaves the list
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_all_waiters(NodeStoppedError("node is shutting down"))
        self._notify_state_changed()
        await self.address_book.close()
        if self.transport is not None:
            await self.transport.stop()
        if self.storage is not None:
            with contextlib.suppress(StorageError):
                unwritten = self.shell.hard_state_unwritten if self.shell is not None else None
                if unwritten is not None:
                    await self.storage.save([], unwritten, sync=True)
                await self.storage.close()

    async def _hand_over_leadership(self, timeout_s: float) -> None:
        core = self.core
        assert core is not None
        matches = {peer: progress.match_index for peer, progress in core.progress.items()}
        target = pick_transfer_target(core.log.configuration().voters, self.id, matches)
        if target is None:
            return
        self.request_leadership_transfer(target)
        deadline = time.monotonic() + timeout_s
        while core.role == Role.LEADER and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.info("node %d: handed leadership to %d before stopping", self.id, target)

    def _fail(self, error: BaseException) -> None:
        """A local disk failure: stop acknowledging anything, and tell the process to exit."""
        log.critical("node %d: storage failed, stopping: %s", self.id, error)
        self._emit("fail_stop", error=str(error) or type(error).__name__)
        self._stopping = True
        self._fail_all_waiters(NodeStoppedError("node storage failed"))
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(error)

    def _fail_all_waiters(self, error: Exception) -> None:
        if self.shell is not None:
            self.shell.fail_all(error)

    # --- client requests ----------------------------------------------------------------

    def _admit(self) -> None:
        if self._stopping:
            raise NodeStoppedError("node is shutting down")
        core = self.core
        assert core is not None
        if core.role != Role.LEADER:
            raise NotLeader(core.leader_id)
        if self._pending_client_requests >= self.config.limits.proposals_pending_max:
            raise Overloaded("too many requests in flight on this node")

    async def propose(self, command: bytes, timeout_s: float) -> ApplyResult:
        """Replicate and apply a command; the answer means committed on a majority and applied.

        Raises NotLeader (nothing proposed), Unavailable/ProposalLost (definitely not
        applied: safe to retry) or OutcomeUnknown (may or may not apply).
        """
        self._admit()
        shell = self.shell
        assert shell is not None
        if shell.log_full:
            raise Overloaded(
                f"the log kept in memory holds {shell.core.log.entry_bytes} bytes until a"
                " snapshot compacts it; retry later"
            )
        loop = asyncio.get_running_loop()
        token = self.waiting_proposals.admit(loop.time())
        if token is None:
            raise Overloaded(
                f"the oldest write this leader is working on has waited over"
                f" {PROPOSAL_WAIT_S_MAX:g} s; retry later"
            )
        try:
            future: asyncio.Future[ApplyResult] = loop.create_future()
            shell.propose(command, future)
            self._wake.set()
            return await self._wait_for_answer(
                future,
                timeout_s,
                OutcomeUnknown("timed out after proposing; the write may still apply"),
            )
        finally:
            self.waiting_proposals.done(token)

    async def read_barrier(self, timeout_s: float) -> None:
        """Wait until local reads are linearizable (ReadIndex, §6.4)."""
        self._admit()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        shell = self.shell
        assert shell is not None
        shell.read(future)
        self._wake.set()
        await self._wait_for_answer(
            future, timeout_s, Unavailable("could not confirm leadership in time (no quorum?)")
        )

    async def keepalive_lease(self, lease_id: int, timeout_s: float) -> int | None:
        """Refresh lease `lease_id`'s deadline on this leader, with no log write; its TTL in
        seconds, or None if it does not exist or its expiry is under way.

        Leadership is confirmed first (a ReadIndex round, §6.4), and the deadline counts from
        the tick before that round: a new leader elected after the confirmation gives the
        lease a full TTL from its election (`kvraft.leases`), so the acknowledged keepalive
        holds through the failover. Raises NotLeader (forwarded) or Unavailable.
        """
        shell = self.shell
        assert shell is not None and shell.lease_timer is not None
        arrived_ticks = shell.lease_timer.now_ticks
        await self.read_barrier(timeout_s)
        while True:
            found = self.state_machine.lease(lease_id)
            if found is None:
                return None
            timer = shell.leases_follow_leadership()
            assert timer is not None
            if timer.leader_term is None:
                raise NotLeader(shell.core.leader_id)
            checkpointed_ms = self.state_machine.lease_checkpoint_ms(lease_id)
            if not timer.needs_clear(lease_id, checkpointed_ms):
                break
            # A checkpoint would make a new leader forget this keepalive: clear it first
            # (once per checkpoint interval; `kvraft.leases`). Checked again afterwards, with
            # no await between the check and the refresh, so no checkpoint slips in between.
            await self.propose(encode_lease_checkpoint([(lease_id, 0)]), timeout_s)
        return found[0] if timer.keepalive(lease_id, arrived_ticks) else None

    async def lease_remaining_s(self, lease_id: int) -> float | None:
        """Seconds until lease `lease_id` expires by this leader's clock, or None if this
        node keeps no deadline for it (call after a read barrier)."""
        shell = self.shell
        assert shell is not None
        timer = shell.leases_follow_leadership()
        if timer is None:
            return None
        remaining_ticks = timer.remaining_ticks(lease_id)
        if remaining_ticks is None:
            return None
        return remaining_ticks * self.config.raft.tick_ms / 1000

    async def _wait_for_answer(
        self, future: asyncio.Future[_T], timeout_s: float, timed_out: Exception
    ) -> _T:
        """Await the driver's answer to one client request, or fail it with `timed_out`.

        One timer that fails the future itself, rather than `asyncio.wait_for` around a
        shield: this is the hot path of every request, and the driver skips a request whose
        future is already done (a proposal not yet in the log is then never proposed)."""
        self._pending_client_requests += 1
        timer = asyncio.get_running_loop().call_later(
            timeout_s, _fail_unless_done, future, timed_out
        )
        try:
            return await future
        finally:
            timer.cancel()
            self._pending_client_requests -= 1

    def request_leadership_transfer(self, target: int) -> None:
        shell = self.shell
        assert shell is not None
        shell.transfer_leadership(target)
        self._wake.set()

    # --- inputs -------------------------------------------------------------------------

    async def _tick_timer(self) -> None:
        interval_s = self.config.raft.tick_ms / 1000
        shell = self.shell
        assert shell is not None
        while True:
            await asyncio.sleep(interval_s)
            shell.tick()
            self._wake.set()

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
        shell = self.shell
        if shell is not None:
            core_events = self._core_events
            if core_events is not None and node_id == shell.core.leader_id:
                core_events.heard_from_leader(time.monotonic())
            if shell.receive(message):
                self._wake.set()

    # --- the driver ---------------------------------------------------------------------

    async def _drive(self) -> None:
        shell = self.shell
        assert shell is not None
        core = shell.core
        writes = self._writes
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while not self._stopping:
                    self._finish_writes(shell, writes)
                    if not shell.wants_advance:
                        break
                    if writes and (
                        len(writes) >= WRITES_IN_FLIGHT_MAX
                        or loop.time() - writes[0][2] > self.write_hold_s
                    ):
                        await asyncio.wait((writes[0][1],))
                        continue
                    persist = shell.advance()
                    # Configurations in force are the latest in the log (§4.1), including
                    # the entries of this Ready and an accepted snapshot's: the new peers
                    # must be known before the messages to them go out.
                    self.address_book.follow_configuration(core.log.configuration())
                    self._send_messages(shell.take_messages())
                    self._observe_events(core)
                    if persist is not None:
                        # The write runs while the loop goes on: the next Readies step what
                        # arrives meanwhile (WRITES_IN_FLIGHT_MAX).
                        write = self._start_write(persist)
                        writes.append((persist.token, write, loop.time()))
                    # Let HTTP, ticks and peers in between Readies: a long backlog of
                    # committed entries (a restart) must not starve them. Under load this turn
                    # is also what gathers the next Ready's requests: without it when nothing
                    # more was due, linearizable gets at 16-64 connections started 40 % more
                    # read rounds (BENCHMARKS.md, "One connection: where a put's time goes").
                    await asyncio.sleep(0)
                    self._maybe_snapshot(shell)
                    # Waiters (a transfer, a catch-up, a new leader) cannot wait for a quiet
                    # moment: under steady load this loop may not end for a long time.
                    self._notify_state_changed()
                self.address_book.follow_configuration(core.log.configuration())
                self._observe_leader(core)
                self._notify_state_changed()
        except StorageError as error:
            self._fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug: never keep serving in an unknown state
            log.exception("node %d: driver crashed", self.id)
            self._fail(error)
        finally:
            for _, write, _ in writes:
                write.cancel()
            writes.clear()

    def _write_done(self, _: object = None) -> None:
        """A write finished: the shell hears of it (and the peers get its acknowledgements)
        now, from this callback, as soon as the loop learns of it, not at the driver's next
        turn; the driver then applies what it released."""
        shell = self.shell
        assert shell is not None
        try:
            self._finish_writes(shell, self._writes)
        except asyncio.CancelledError:
            return  # the node is stopping
        except StorageError as error:
            self._fail(error)
        except Exception as error:  # a bug: never keep serving in an unknown state
            log.exception("node %d: finishing a write failed", self.id)
            self._fail(error)
        self._wake.set()

    def _finish_writes(
        self, shell: NodeShell, writes: deque[tuple[int, asyncio.Future[Any], float]]
    ) -> None:
        """Report the writes that are done to the shell, oldest first (a write's error, such
        as `StorageError`, is raised here), and send what they release at once."""
        while writes and writes[0][1].done():
            token, write, _ = writes.popleft()
            shell.persisted(token, write.result())
            after_persist = shell.take_messages()
            if after_persist:
                self._send_messages(after_persist)
                # Acknowledge now: applying comes next and may take a while, and the
                # leader's commit waits on this answer.
                self._flush()

    def _start_write(self, persist: Persist) -> asyncio.Future[Any]:
        """Step 2 of a Ready, started: the future's result is the state machine rebuilt from
        the Ready's snapshot, if it had one (else None), once the write is done; then
        `_write_done` runs."""
        if persist.snapshot is not None:
            installing = asyncio.ensure_future(self._install_and_write(persist))
            installing.add_done_callback(self._write_done)
            return installing
        return self._start_log_write(persist, on_done=self._write_done)

    def _start_log_write(
        self, persist: Persist, on_done: Callable[[], object] | None = None
    ) -> asyncio.Future[Any]:
        """The Ready's log entries and HardState, started: the storage writer's own future
        (result None). `on_done` runs in the loop turn that learns the write is done, with
        no task and no future callback in between: a follower's acknowledgement leaves
        then, a loop turn sooner than from the future's callbacks."""
        storage = self.storage
        assert storage is not None
        if not persist.entries and persist.hard_state is None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()
            done.set_result(None)  # nothing to write
            if on_done is not None:
                loop.call_soon(on_done)
            return done
        observer = self.fsync_observer
        when_done = on_done
        if observer is not None and persist.sync:
            started = time.perf_counter()

            def observed() -> None:
                if saved.exception() is None:  # (never called for a cancelled write)
                    observer(time.perf_counter() - started)
                if on_done is not None:
                    on_done()

            when_done = observed
        saved = storage.start_save(
            persist.entries, persist.hard_state, sync=persist.sync, on_done=when_done
        )
        return saved

    async def _install_and_write(self, persist: Persist) -> StateMachine:
        """Step 2 of a Ready that carries a snapshot from the leader: install it, rebuild the
        state machine from it, then write the Ready's log entries and HardState."""
        storage = self.storage
        assert storage is not None and persist.snapshot is not None
        data = persist.snapshot.data
        await storage.install_snapshot(persist.snapshot.meta, data)
        # Decoding a large snapshot would hold the event loop: a thread does it.
        restored = await asyncio.to_thread(KVStateMachine.restore_bytes, data)
        self._snapshot_data_cache = (persist.snapshot.meta.index, [data])
        log.info("node %d: installed snapshot at %d", self.id, persist.snapshot.meta.index)
        self._emit("snapshot_installed", index=persist.snapshot.meta.index)
        await self._start_log_write(persist)
        return restored

    def _send_messages(self, messages: list[Message]) -> None:
        transport = self.transport
        assert transport is not None
        last = len(messages) - 1
        for position, message in enumerate(messages):
            self._send(message)
            if position == last or messages[position + 1].target != message.target:
                # Out before the next peer's message is even encoded, and before our own
                # write: the leader's disk write runs in parallel with the followers'
                # (§10.2.1), and theirs is on the commit's path.
                transport.flush(message.target)

    def _flush(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.flush()

    def _observe_events(self, core: RaftCore) -> None:
        core_events = self._core_events
        if core_events is not None:
            core_events.observe(core, time.monotonic())

    def _emit(self, event_type: str, **fields: Any) -> None:
        """Record an event the core cannot tell about (disk, network, snapshots)."""
        core = self.core
        self.events.emit(event_type, core.term if core is not None else 0, **fields)

    def _on_peer_reachability(
        self, peer_id: int, reachable: bool, address: str, reason: str
    ) -> None:
        if reachable:
            self._emit("peer_connected", peer_id=peer_id, address=address)
        else:
            self._emit("peer_disconnected", peer_id=peer_id, address=address, reason=reason)

    def _observe_leader(self, core: RaftCore) -> None:
        if core.leader_id != self.last_leader_id:
            if core.leader_id:
                self.leader_changes += 1
                log.info("node %d: leader is now %d (term %d)", self.id, core.leader_id, core.term)
            self.last_leader_id = core.leader_id

    # --- snapshots ----------------------------------------------------------------------

    def _maybe_snapshot(self, shell: NodeShell) -> None:
        snapshot = shell.take_snapshot_to_save()
        if snapshot is not None:
            # Encoding runs on a thread while the driver keeps applying.
            self._start_task(self._write_snapshot(shell, snapshot))

    async def _write_snapshot(self, shell: NodeShell, snapshot: SnapshotToSave) -> None:
        storage = self.storage
        assert storage is not None
        meta = snapshot.meta
        try:
            # Encoded a chunk (about 1 MiB) at a time on the loop, each written before the
            # next is made: the loop is free while the disk works, and the node never holds
            # the whole encoded snapshot (it once did, in a list built on a thread: with
            # large values, one more copy of all the data per snapshot in progress).
            await storage.save_snapshot(meta, snapshot.chunks)
            shell.snapshot_saved(meta)
            await storage.compact(meta.index)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            shell.snapshot_saved(None)
            if meta.index <= shell.core.log.snapshot.index:
                # A snapshot from the leader arrived while this one was being encoded: the
                # storage refuses to go back to an older one, and nothing is lost.
                log.info("node %d: snapshot at %d superseded by the leader's", self.id, meta.index)
                return
            self._fail(error)  # a disk error, or a bug: either way stop, never guess
            return
        log.info("node %d: snapshot at %d, log compacted", self.id, meta.index)
        self._emit("snapshot_taken", index=meta.index)

    def _start_task(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task of this node whose failure is never silent: an exception
        it did not handle stops the node like a driver crash would."""
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("node %d: background task failed", self.id, exc_info=error)
            self._fail(error)

    # --- sending ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(message, InstallSnapshot):
            # Reading a damaged snapshot raises StorageCorruptionError: the node stops, as
            # for any damage to what it stored, instead of retrying it forever.
            self._start_task(self._send_snapshot(message))
            return
        transport.send(message.target, encode_message(message))

    async def _send_snapshot(self, message: InstallSnapshot) -> None:
        storage = self.storage
        transport = self.transport
        assert storage is not None and transport is not None
        target = message.target
        if target in self._snapshot_sending or transport.bulk_pending(target):
            # The core resends an unanswered InstallSnapshot every `snapshot_retry_ticks`;
            # while the last one is still being made ready or on its way, another copy of
            # a large snapshot would only cost the loop time and memory (and be dropped by
            # the bulk lane's queue). The next retry after it is gone sends it again.
            return
        self._snapshot_sending.add(target)
        try:
            await self._send_snapshot_parts(message, storage, transport)
        finally:
            self._snapshot_sending.discard(target)

    async def _send_snapshot_parts(
        self, message: InstallSnapshot, storage: Storage, transport: Transport
    ) -> None:
        cached = self._snapshot_data_cache
        if cached is not None and cached[0] == message.meta.index:
            chunks = cached[1]
        else:
            # Kept as read, a chunk at a time: joined, a large snapshot held the loop.
            chunks = [c async for c in storage.open_snapshot_chunks(message.meta)]
            self._snapshot_data_cache = (message.meta.index, chunks)
        data_bytes = sum(len(chunk) for chunk in chunks)
        fits = data_bytes <= INSTALL_SNAPSHOT_BYTES_MAX
        head = encode_install_snapshot_head(message, data_bytes) if fits else b""
        if not fits or len(head) + data_bytes > INSTALL_SNAPSHOT_BYTES_MAX:
            # No peer accepts an InstallSnapshot past the limit: the follower cannot catch up
            # this way. Say so (once per snapshot) instead of failing at every retry.
            if self._snapshot_too_large_logged != message.meta.index:
                self._snapshot_too_large_logged = message.meta.index
                log.error(
                    "node %d: cannot send node %d the snapshot at index %d: its %d bytes are "
                    "over the InstallSnapshot limit of %d; it cannot catch up until the "
                    "snapshot is smaller",
                    self.id,
                    message.target,
                    message.meta.index,
                    data_bytes,
                    INSTALL_SNAPSHOT_BYTES_MAX,
                )
            return
        # The encoded message is the head, then the data: never copied into one payload
        # (the loop runs between two frames of it). Larger than a frame, it goes in pieces
        # on the bulk lane.
        await transport.send_parts(message.target, [head, *chunks], bulk=True)
        self._emit("snapshot_sent", to=message.target, index=message.meta.index)

    # --- membership ---------------------------------------------------------------------

    @property
    def peer_addresses(self) -> dict[int, MemberAddress]:
        """Where every member (this node too) and every provisionally known peer can be
        reached (`kvraft.address_book`)."""
        return self.address_book.addresses

    def learn_addresses(self, book: dict[int, MemberAddress]) -> None:
        """Addresses learned outside the log (the join answer), for ids the log does not
        name yet (`AddressBook.learn_addresses`)."""
        self.address_book.learn_addresses(book)

    def propose_configuration(
        self, configuration: Configuration, base: Configuration, future: asyncio.Future[None]
    ) -> None:
        """Queue the change to `configuration`, planned from `base` (refused if the latest
        configuration is no longer `base`); `future` resolves once it commits. Only
        `kvraft.reconfiguration` proposes one, on the leader."""
        shell = self.shell
        assert shell is not None
        shell.propose_configuration(configuration, base, future)
        self._wake.set()

    # --- waiting for the node's state ---------------------------------------------------

    @property
    def stopping(self) -> bool:
        """No new work is taken: the node is stopping, or its storage failed."""
        return self._stopping

    async def wait_for_new_leader(self, previous_leader_id: int, deadline_s: float) -> int:
        """Wait (until `deadline_s` on the loop's clock) until a leader other than
        `previous_leader_id` is known: its id, or NO_NODE if none was by then."""

        def elected() -> bool:
            core = self.core
            return core is not None and core.leader_id not in (NO_NODE, previous_leader_id)

        if not await self.wait_until(elected, deadline_s):
            return NO_NODE
        core = self.core
        assert core is not None
        return core.leader_id

    def _notify_state_changed(self) -> None:
        if self._state_waiters:
            event, self._state_changed = self._state_changed, asyncio.Event()
            event.set()

    async def wait_until(self, condition: Callable[[], bool], deadline_s: float) -> bool:
        """Wait (on the loop's clock) until `condition()` holds; False at the deadline, or
        once the node stops taking work."""
        loop = asyncio.get_running_loop()
        while not condition():
            remaining_s = deadline_s - loop.time()
            if remaining_s <= 0 or self._stopping:
                return False
            event = self._state_changed
            self._state_waiters += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining_s)
            finally:
                self._state_waiters -= 1
        return True

    # --- status -------------------------------------------------------------------------

    def role_name(self) -> str:
        core = self.core
        assert core is not None
        if core.role == Role.LEADER:
            return "leader"
        if core.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            return "candidate"
        configuration = core.log.configuration()
        if self.id in configuration.learners:
            return "learner"
        if self.id not in configuration.voters:
            return "non_member"  # joining, or removed
        return "follower"

    def leader_spec(self) -> MemberAddress | None:
        core = self.core
        if core is None or not core.leader_id:
            return None
        return self.peer_addresses.get(core.leader_id)

    def status(self) -> dict[str, Any]:
        core = self.core
        assert core is not None
        status = core.status()
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
            "members": self.reconfiguration.member_items(core),
            "membership_change_pending": self.reconfiguration.change_pending(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "watchers": self.watch_hub.watcher_count,
            "watch_compact_revision": self.watch_hub.compact_revision,
            "write_bytes_pending": self.write_admission.bytes_held,
            "writes_shed": self.write_admission.refused_total,
            "events_kept": len(self.events),
            "events_last_seq": self.events.last_seq,
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
