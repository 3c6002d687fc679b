"""Whole clusters of real nodes (`RaftNode` + `HttpApi`) in one event loop, built from their
seams as hashicorp/raft's `MakeCluster` builds them: `MemoryStorage` for the disk and
`MemoryTransport` for the Raft network. Only the HTTP API listens on a socket (127.0.0.1),
so the clients and the follower's forwarding are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from kvraft.config import ClusterConfig, local_cluster_config
from kvraft.http_api import HttpApi
from kvraft.launcher import free_ports
from kvraft.raft.core import Role
from kvraft.server import RaftNode
from kvraft.storage.memory import MemoryDisk, MemoryStorage
from kvraft.transport.memory import MemoryNetwork, MemoryTransport

DEADLINE_S = 20.0


@dataclass
class InProcessNode:
    node: RaftNode
    api: HttpApi
    runner: web.ServerRunner
    url: str
    disk: MemoryDisk


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def cluster_config(tmp_path: Path, nodes: int) -> ClusterConfig:
    config = local_cluster_config(nodes, tmp_path)
    ports = free_ports(nodes)
    return replace(
        config,
        nodes=tuple(
            replace(n, http_port=port) for n, port in zip(config.nodes, ports, strict=True)
        ),
    )


async def start_node(
    config: ClusterConfig, node_id: int, network: MemoryNetwork, disk: MemoryDisk
) -> InProcessNode:
    def transport(
        on_message: Callable[[int, bytes], None], is_known_peer: Callable[[int], bool]
    ) -> MemoryTransport:
        return MemoryTransport(network, node_id, on_message, is_known_peer)

    node = RaftNode(config, node_id, storage=await MemoryStorage.open(disk), transport=transport)
    await node.start()
    api = HttpApi(node)
    runner = web.ServerRunner(api.server, handle_signals=False)
    await runner.setup()
    spec = config.node(node_id)
    await web.TCPSite(runner, spec.http_host, spec.http_port).start()
    return InProcessNode(node, api, runner, f"http://{spec.http_host}:{spec.http_port}", disk)


async def crash(member: InProcessNode) -> None:
    """Stop serving at once: no leadership hand-over, the HTTP port closed."""
    await member.runner.cleanup()
    await member.api.close()
    await member.node.stop(transfer_leadership=False)


@contextlib.asynccontextmanager
async def in_process_cluster(tmp_path: Path, nodes: int) -> AsyncIterator[list[InProcessNode]]:
    config = cluster_config(tmp_path, nodes)
    network = MemoryNetwork()
    members: list[InProcessNode] = []
    try:
        for spec in config.nodes:
            members.append(await start_node(config, spec.id, network, MemoryDisk()))
        yield members
    finally:
        for member in members:
            with contextlib.suppress(Exception):
                await crash(member)


def leader_of(members: list[InProcessNode]) -> InProcessNode | None:
    leaders = [m for m in members if m.node.core is not None and m.node.core.role == Role.LEADER]
    return max(leaders, key=lambda m: m.node.core.term if m.node.core else 0, default=None)
