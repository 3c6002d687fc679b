"""The driver loop of `RaftNode`, in-process: three real nodes on one event loop, talking
over TCP on 127.0.0.1, each on a real `DiskStorage` whose writes a test can hold.

Holding a node's disk holds its driver inside a Ready, as a slow disk or a paused process
would, while its peers, its timers and its clients carry on. What a node relies on: whatever
piled up meanwhile (answers that already timed out, messages from a newer term) is handled
when the driver resumes, and the node keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft.config import ClusterConfig, local_cluster_config
from kvraft.raft.core import Role
from kvraft.raft.messages import AppendEntries, Heartbeat
from kvraft.server import RaftNode, Unavailable
from kvraft.statemachine import encode_put
from kvraft.storage.disk import DiskStorage
from tests.cluster_harness import free_ports
from tests.file_ops_doubles import HoldingFileOps

DEADLINE_S = 20.0


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def three_node_config(tmp_path: Path) -> ClusterConfig:
    config = local_cluster_config(3, tmp_path)
    ports = free_ports(6)
    nodes = tuple(
        replace(node, http_port=ports[2 * i], raft_port=ports[2 * i + 1])
        for i, node in enumerate(config.nodes)
    )
    return replace(config, nodes=nodes)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[int, tuple[RaftNode, HoldingFileOps]]]:
    config = three_node_config(tmp_path)
    nodes: dict[int, tuple[RaftNode, HoldingFileOps]] = {}
    try:
        for spec in config.nodes:
            file_ops = HoldingFileOps()
            storage = await DiskStorage.open(spec.data_dir, fsync=False, file_ops=file_ops)
            node = RaftNode(config, spec.id, storage=storage)
            nodes[spec.id] = (node, file_ops)
            await node.start()
        yield nodes
    finally:
        for _, file_ops in nodes.values():
            file_ops.release.set()
        for node, _ in nodes.values():
            await node.stop(transfer_leadership=False)


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
            for message in old._inbound
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
