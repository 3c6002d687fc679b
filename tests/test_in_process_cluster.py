"""Three real nodes and their HTTP APIs in one event loop (`tests/in_process_cluster.py`)."""

from __future__ import annotations

from pathlib import Path

from kvraft.client import AsyncKVClient
from tests.in_process_cluster import crash, in_process_cluster, leader_of, wait_until


async def test_a_put_through_a_follower_survives_the_leaders_crash(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3) as members:
        await wait_until(lambda: leader_of(members) is not None, "a leader")
        leader = leader_of(members)
        assert leader is not None and leader.node.core is not None
        old_term = leader.node.core.term
        follower = next(m for m in members if m is not leader)
        async with AsyncKVClient([follower.url]) as client:
            revision = await client.put("greeting", b"hello")
        assert revision > 0

        await crash(leader)
        survivors = [m for m in members if m is not leader]
        await wait_until(
            lambda: (
                (new := leader_of(survivors)) is not None
                and new.node.core is not None
                and new.node.core.term > old_term
            ),
            "a new leader",
        )
        async with AsyncKVClient([m.url for m in survivors]) as client:
            found = await client.get("greeting")  # linearizable: through the new leader
        assert found == (b"hello", revision)
