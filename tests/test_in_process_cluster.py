"""Three real nodes and their HTTP APIs in one event loop (`tests/in_process_cluster.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from kvraft.client import AsyncKVClient
from kvraft.statemachine import (
    Change,
    PlainPut,
    TxnDelete,
    TxnPut,
    encode_delete,
    encode_lease_grant,
    encode_lease_revoke,
    encode_lock_acquire,
    encode_put,
    encode_txn,
)
from kvraft.watch import WatchHub
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


async def test_followers_applying_plain_puts_in_runs_end_as_the_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower applies the plain puts nobody waits on in runs (`NodeShell._apply_all`),
    the leader each of its own proposals with its result: same state, same watch history."""
    runs: dict[int, int] = {}
    record_plain_puts = WatchHub.record_plain_puts

    def counting(hub: WatchHub, puts: Sequence[PlainPut]) -> None:
        runs[id(hub)] = runs.get(id(hub), 0) + len(puts)
        record_plain_puts(hub, puts)

    monkeypatch.setattr(WatchHub, "record_plain_puts", counting)
    async with in_process_cluster(tmp_path, 3) as members:
        await wait_until(lambda: leader_of(members) is not None, "a leader")
        leader = leader_of(members)
        assert leader is not None
        node = leader.node
        grant = await node.propose(encode_lease_grant(60), 5.0)
        lease_id = grant.index
        commands = [
            *(encode_put(f"k{number % 13}", f"v{number}".encode()) for number in range(60)),
            encode_put("leased", b"1", lease_id=lease_id),
            encode_put("leased", b"detached by a plain put"),
            encode_delete("k1"),
            encode_txn([], [TxnPut("t", b"txn"), TxnDelete("k2")]),
            encode_lock_acquire("lock", lease_id, "me"),
            b"\xc1",  # garbage: refused alike everywhere
            *(encode_put(f"k{number % 7}", b"again") for number in range(40)),
            encode_lease_revoke(lease_id),
            *(encode_put(f"n{number}", b"new") for number in range(40)),
        ]
        # Concurrently, so that Readies carry many entries.
        await asyncio.gather(*(node.propose(command, 5.0) for command in commands))
        commit_index = node.state_machine.applied_index
        await wait_until(
            lambda: all(m.node.state_machine.applied_index >= commit_index for m in members),
            "every node applied everything",
        )
        snapshots = {m.node.state_machine.snapshot() for m in members}
        assert len(snapshots) == 1
        histories = []
        for member in members:
            hub = member.node.watch_hub
            watcher = hub.watch(start_revision=hub.compact_revision + 1)
            history: list[Change] = []
            while taken := watcher.take():
                assert isinstance(taken, list)
                history += taken
            histories.append((hub.compact_revision, hub.history_bytes, history))
        assert histories[0] == histories[1] == histories[2]
        followers = [m.node.watch_hub for m in members if m is not leader]
        assert all(runs.get(id(hub), 0) > 0 for hub in followers)
