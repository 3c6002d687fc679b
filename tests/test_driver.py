"""The driver loop of `RaftNode`, in-process: three real nodes on one event loop, talking
over TCP on 127.0.0.1, each on a real `DiskStorage` whose writes a test can hold.

Holding a node's disk holds its driver once the held write has run for a tick (before
that the driver goes on stepping: `WRITES_IN_FLIGHT_MAX`), as a slow disk or a paused
process would, while its peers, its timers and its clients carry on. What a node relies on: whatever
piled up meanwhile (answers that already timed out, messages from a newer term) is handled
when the driver resumes, and the node keeps running. The same cluster, with a small
InstallSnapshot limit, shows what a leader does with a snapshot no peer would accept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft import server as server_module
from kvraft.config import ClusterConfig, local_cluster_config
from kvraft.errors import OutcomeUnknown, Unavailable
from kvraft.launcher import free_ports
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import AppendEntries, Heartbeat, SnapshotMeta
from kvraft.server import RaftNode
from kvraft.statemachine import encode_put
from kvraft.storage.api import StorageCorruptionError
from kvraft.storage.disk import DiskStorage
from kvraft.storage.memory import MemoryStorage
from kvraft.transport.memory import MemoryNetwork, MemoryTransport
from tests.file_ops_doubles import HoldingFileOps
from tests.in_process_cluster import wait_until

DEADLINE_S = 20.0


def three_node_config(tmp_path: Path) -> ClusterConfig:
    config = local_cluster_config(3, tmp_path)
    ports = free_ports(6)
    nodes = tuple(
        replace(node, http_port=ports[2 * i], raft_port=ports[2 * i + 1])
        for i, node in enumerate(config.nodes)
    )
    return replace(config, nodes=nodes)


async def start_node(
    config: ClusterConfig, node_id: int, nodes: dict[int, tuple[RaftNode, HoldingFileOps]]
) -> RaftNode:
    """Start (or restart, on its data) node `node_id`, entered in `nodes` for the clean-up."""
    file_ops = HoldingFileOps()
    storage = await DiskStorage.open(config.node(node_id).data_dir, fsync=False, file_ops=file_ops)
    node = RaftNode(config, node_id, storage=storage)
    nodes[node_id] = (node, file_ops)
    await node.start()
    return node


@contextlib.asynccontextmanager
async def running_cluster(
    config: ClusterConfig, started: set[int] | None = None
) -> AsyncIterator[dict[int, tuple[RaftNode, HoldingFileOps]]]:
    """The nodes of `config` (or those `started`) running; every node in the dictionary,
    also one a test started later, is stopped at the end, whatever happened."""
    nodes: dict[int, tuple[RaftNode, HoldingFileOps]] = {}
    try:
        for spec in config.nodes:
            if started is None or spec.id in started:
                await start_node(config, spec.id, nodes)
        yield nodes
    finally:
        for _, file_ops in nodes.values():
            file_ops.release.set()
        for node, _ in nodes.values():
            await node.stop(transfer_leadership=False)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[int, tuple[RaftNode, HoldingFileOps]]]:
    async with running_cluster(three_node_config(tmp_path)) as nodes:
        yield nodes


def snapshotting_config(tmp_path: Path) -> ClusterConfig:
    """Three nodes that snapshot every 5 entries and retry a snapshot every 0.4 s."""
    config = three_node_config(tmp_path)
    return replace(
        config,
        raft=replace(config.raft, tick_ms=10),
        storage=replace(
            config.storage, snapshot_threshold_entries=5, snapshot_entries_per_record=0
        ),
    )


async def leader_with_compacted_log(
    nodes: dict[int, tuple[RaftNode, HoldingFileOps]],
) -> RaftNode:
    """The leader, once 12 writes are in and its last snapshot is taken: with the no-op,
    13 entries give snapshots at 5 or more and at 10 or more, then no more."""
    await wait_until(lambda: leader_of(nodes) is not None, "a leader")
    leader = leader_of(nodes)
    assert leader is not None and leader.core is not None
    core = leader.core
    for number in range(12):
        await leader.propose(encode_put(f"key-{number}", b"value"), timeout_s=DEADLINE_S)
    await wait_until(lambda: core.log.snapshot.index >= 10, "the leader's last snapshot")
    return leader


def leader_of(nodes: dict[int, tuple[RaftNode, HoldingFileOps]]) -> RaftNode | None:
    leaders = [n for n, _ in nodes.values() if n.core is not None and n.core.role == Role.LEADER]
    return max(leaders, key=lambda n: n.core.term if n.core else 0, default=None)


async def test_a_read_that_timed_out_while_the_leader_was_held_is_skipped_after_it_steps_down(
    cluster: dict[int, tuple[RaftNode, HoldingFileOps]],
) -> None:
    await wait_until(lambda: leader_of(cluster) is not None, "a leader")
    old = leader_of(cluster)
    assert old is not None and old.core is not None and old.failed is not None
    failed = old.failed
    old_term = old.core.term
    held = cluster[old.id][1]
    held.release.clear()
    # A write holds the driver inside its Ready, waiting on the disk.
    write = asyncio.create_task(old.propose(encode_put("k", b"v"), timeout_s=DEADLINE_S))
    await wait_until(held.holding.is_set, "the leader's driver held in a disk write")
    # Still the leader when it is admitted; its answer times out before the driver gets to it.
    with pytest.raises(Unavailable):
        await old.read_barrier(timeout_s=0.05)
    # The others elect a new leader, whose messages wait for the held driver (a PreVote of a
    # newer term would not depose it).
    await wait_until(
        lambda: any(
            isinstance(message, AppendEntries | Heartbeat) and message.term > old_term
            for message in (old.shell.inbound if old.shell else ())
        ),
        "a new leader's message queued for the held node",
    )
    held.release.set()
    # The driver steps the newer term (the node steps down), then meets the read it can no
    # longer serve, whose client has already been answered.
    await wait_until(
        lambda: failed.done() or old.core is None or old.core.role != Role.LEADER,
        "step-down",
    )
    assert not failed.done(), failed.result() if failed.done() else None
    await wait_until(
        lambda: old.core is not None and old.core.leader_id not in (0, old.id), "the new leader"
    )
    assert not failed.done()
    await asyncio.gather(write, return_exceptions=True)


async def leader_with_its_disk_held(
    cluster: dict[int, tuple[RaftNode, HoldingFileOps]],
) -> tuple[RaftNode, HoldingFileOps]:
    """The leader, with its next disk writes held (release them with `.release.set()`) and
    its driver stepping on however long they are held."""
    await wait_until(lambda: leader_of(cluster) is not None, "a leader")
    leader = leader_of(cluster)
    assert leader is not None
    leader.write_hold_s = DEADLINE_S
    held = cluster[leader.id][1]
    held.release.clear()
    return leader, held


async def test_a_leader_commits_with_its_followers_copies_while_its_own_write_is_held(
    cluster: dict[int, tuple[RaftNode, HoldingFileOps]],
) -> None:
    # §10.2.1: the leader writes its log in parallel with its followers, and an entry on a
    # majority of disks is committed, the leader's own or not. Its driver steps the
    # followers' answers while its own write is in flight.
    leader, held = await leader_with_its_disk_held(cluster)
    assert leader.core is not None
    core = leader.core
    write = asyncio.create_task(leader.propose(encode_put("k", b"v"), timeout_s=DEADLINE_S))
    await wait_until(held.holding.is_set, "the leader's own write held")
    index = core.log.last_index()
    await wait_until(lambda: core.log.commit_index >= index, "committed by the followers")
    assert core.log.persisted_index < index  # not on the leader's disk yet
    # It answers once its own write is done too (Readies finish in the order they started).
    assert not write.done()
    held.release.set()
    result = await write
    assert result.ok and result.revision == index


async def test_a_node_keeps_at_most_writes_in_flight_max_disk_writes_running(
    cluster: dict[int, tuple[RaftNode, HoldingFileOps]],
) -> None:
    leader, held = await leader_with_its_disk_held(cluster)
    assert leader.shell is not None
    shell = leader.shell
    most = server_module.WRITES_IN_FLIGHT_MAX
    writes = []
    for number in range(3 * most):
        put = encode_put(f"k{number}", b"v")
        writes.append(asyncio.create_task(leader.propose(put, timeout_s=DEADLINE_S)))
        # Each proposal its own Ready (and write), until the driver waits for the oldest.
        expected = min(number + 1, most)
        await wait_until(lambda n=expected: shell.writes_in_flight >= n, f"{expected} writes")
    await wait_until(lambda: shell.wants_advance, "the last proposals queued in the shell")
    assert shell.writes_in_flight == most  # the rest wait for the oldest write
    held.release.set()
    results = await asyncio.gather(*writes)
    assert all(result.ok for result in results)
    assert [result.revision for result in results] == sorted(r.revision for r in results)


def snapshot_retries(core: RaftCore, node_id: int, count: int) -> Callable[[], bool]:
    """A condition for `wait_until`: the leader `core` has started sending `node_id` its
    snapshot again at least `count` times (each retry starts the snapshot's clock again).
    Call it often enough to see every restart of the clock."""
    retries = 0
    ticks_seen = 0

    def retried() -> bool:
        nonlocal retries, ticks_seen
        progress = core.progress.get(node_id)
        ticks = progress.snapshot_ticks if progress is not None else 0
        if ticks < ticks_seen:
            retries += 1
        ticks_seen = ticks
        return retries >= count

    return retried


async def test_a_snapshot_over_the_install_snapshot_limit_is_not_sent_and_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A node that joins after the leader compacted its log can only catch up from a
    # snapshot. If the snapshot is over the InstallSnapshot limit no peer would accept it:
    # the leader says so once per snapshot (not at every retry) and keeps serving; once the
    # snapshot fits, the node catches up.
    config = snapshotting_config(tmp_path)
    monkeypatch.setattr(server_module, "INSTALL_SNAPSHOT_BYTES_MAX", 16)
    # Node 3 starts late: nothing but the leader's first probe can be queued for it (a node
    # stopped later would find the appends queued before compaction, and need no snapshot).
    async with running_cluster(config, started={1, 2}) as nodes:
        leader = await leader_with_compacted_log(nodes)
        assert leader.core is not None and leader.failed is not None
        core = leader.core
        late = await start_node(config, 3, nodes)
        await wait_until(snapshot_retries(core, 3, 2), "two snapshot retries")
        refusals = [
            r.message for r in caplog.records if "over the InstallSnapshot limit" in r.message
        ]
        assert len(refusals) == len(set(refusals)), refusals  # each snapshot at most once
        snapshot_index = core.log.snapshot.index
        latest = [m for m in refusals if f"snapshot at index {snapshot_index}:" in m]
        assert len(latest) == 1, refusals
        assert "cannot send node 3 the snapshot" in latest[0]
        assert late.state_machine.get("key-0") is None
        assert core.role == Role.LEADER and not leader.failed.done()

        monkeypatch.undo()
        await wait_until(lambda: late.state_machine.applied_index >= snapshot_index, "catch-up")
        found = late.state_machine.get("key-0")
        assert found is not None and found[0] == b"value"


async def test_a_snapshot_still_on_its_way_to_a_peer_is_not_made_and_queued_again(
    tmp_path: Path,
) -> None:
    # The chaos seed 12 run: with a 200 MiB snapshot, every retry (each `snapshot_retry_ticks`)
    # copied it again on the leader's loop and queued another one while the first was still
    # being written to the learner; the loop missed heartbeats and the voters elected a new
    # leader about every second. While a send to the peer is still queued or in flight on
    # the bulk lane, the retries send nothing; once it is gone, the next retry sends again.
    config = snapshotting_config(tmp_path)
    async with running_cluster(config, started={1, 2}) as nodes:
        leader = await leader_with_compacted_log(nodes)
        assert leader.core is not None and leader.transport is not None
        core = leader.core
        transport = leader.transport
        sent: list[int] = []  # the bulk payloads offered to node 3, none delivered
        stuck = True  # node 3 reads nothing: what was sent stays on the bulk lane
        real_send, real_send_parts = transport.send, transport.send_parts

        def send(node_id: int, payload: bytes, bulk: bool = False) -> bool:
            if node_id == 3 and bulk and stuck:
                sent.append(len(payload))
                return True
            return real_send(node_id, payload, bulk)

        async def send_parts(node_id: int, parts: Sequence[bytes], bulk: bool = False) -> bool:
            if node_id == 3 and bulk and stuck:
                sent.append(sum(len(part) for part in parts))
                return True
            return await real_send_parts(node_id, parts, bulk)

        real_pending = transport.bulk_pending
        transport.send = send  # type: ignore[method-assign]
        transport.send_parts = send_parts  # type: ignore[method-assign]
        transport.bulk_pending = lambda node_id: (  # type: ignore[method-assign]
            (node_id == 3 and stuck and bool(sent)) or real_pending(node_id)
        )
        late = await start_node(config, 3, nodes)
        await wait_until(snapshot_retries(core, 3, 3), "three snapshot retries")
        assert len(sent) == 1, sent
        stuck = False  # the first send is gone: the next retry sends it again, for real
        snapshot_index = core.log.snapshot.index
        await wait_until(lambda: late.state_machine.applied_index >= snapshot_index, "catch-up")
        found = late.state_machine.get("key-0")
        assert found is not None and found[0] == b"value"


async def test_a_leader_whose_snapshot_is_damaged_on_disk_stops_instead_of_retrying_forever(
    tmp_path: Path,
) -> None:
    # A node that joins after the leader compacted its log needs the leader's snapshot. If
    # that file was damaged on the leader's disk, reading it fails its checksum: the leader
    # must stop (like any damage to what it stored), not retry a send that fails silently
    # at every snapshot retry.
    config = snapshotting_config(tmp_path)
    async with running_cluster(config, started={1, 2}) as nodes:
        leader = await leader_with_compacted_log(nodes)
        assert leader.core is not None and leader.failed is not None
        core = leader.core
        newest = max(config.node(leader.id).data_dir.rglob("*.snap"))
        assert f"snapshot-{core.log.snapshot.index:020d}-" in newest.name
        damaged = bytearray(newest.read_bytes())
        damaged[-1] ^= 0xFF
        newest.write_bytes(bytes(damaged))
        await start_node(config, 3, nodes)
        failed = leader.failed
        await wait_until(failed.done, "the leader to stop")
        assert isinstance(failed.result(), StorageCorruptionError), failed.result()


async def test_a_snapshot_that_fails_to_save_for_any_reason_stops_the_node(
    tmp_path: Path,
) -> None:
    # Not only a StorageError: whatever breaks while saving a snapshot leaves the node's
    # storage in a state nobody checked, so the node stops rather than serve on.
    config = local_cluster_config(1, tmp_path)
    config = replace(
        config,
        storage=replace(
            config.storage, snapshot_threshold_entries=3, snapshot_entries_per_record=0
        ),
    )
    storage = await MemoryStorage.open()

    async def save_snapshot(meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        raise RuntimeError("the snapshot writer broke")

    storage.save_snapshot = save_snapshot  # type: ignore[method-assign]
    network = MemoryNetwork()
    node = RaftNode(
        config,
        1,
        storage=storage,
        transport=lambda on_message, is_known: MemoryTransport(network, 1, on_message, is_known),
    )
    await node.start()
    try:
        assert node.failed is not None
        failed = node.failed
        await wait_until(lambda: node.core is not None and node.core.role == Role.LEADER, "lead")
        for number in range(5):
            if failed.done():
                break
            with contextlib.suppress(Unavailable, OutcomeUnknown):
                await node.propose(encode_put(f"key-{number}", b"value"), timeout_s=DEADLINE_S)
        await wait_until(failed.done, "the node to stop")
        assert isinstance(failed.result(), RuntimeError)
    finally:
        await node.stop(transfer_leadership=False)
