"""The client's locks and fenced writes (issue #19): `lock()` (sync and async),
`lock_acquire`/`lock_release`/`lock_info`/`locks`, and `fence=` on every write, on an
in-process 3-node cluster; the request builders without a server."""

from __future__ import annotations

import asyncio
import json

import pytest

from kvraft.client import (
    AsyncKVClient,
    ClientError,
    Fence,
    FenceFailed,
    KVClient,
    LockNotAcquired,
    LockNotHeld,
    build_lock_acquire,
    build_lock_release,
    build_put,
)
from kvraft.txn import put as txn_put
from tests.in_process_cluster import DEADLINE_S, InProcessNode

__all__: list[str] = []


def test_lock_requests_follow_the_contract_and_may_be_repeated() -> None:
    acquire = build_lock_acquire("jobs/a b", 7, wait_s=5, value="me")
    assert (acquire.method, acquire.target) == ("POST", "/v1/locks/jobs/a%20b")
    assert json.loads(acquire.body) == {"lease": "7", "wait_s": 5, "value": "me"}
    assert acquire.retry_after_send  # the same lease gets the same place
    release = build_lock_release("jobs/a b", 12)
    assert (release.method, json.loads(release.body)) == ("DELETE", {"fencing_token": 12})
    assert release.retry_after_send
    put = build_put("k", b"v", fence=Fence("jobs/a b", 12))
    assert ("X-Kvraft-Fence", "jobs/a b:12") in put.headers
    for bad_wait in (-1, 601, "5"):
        with pytest.raises(ClientError):
            build_lock_acquire("l", 7, wait_s=bad_wait)  # type: ignore[arg-type]
    with pytest.raises(ClientError):
        build_lock_release("", 12)


async def test_async_lock_passes_in_order_and_fences_the_deposed(
    members: list[InProcessNode],
) -> None:
    endpoints = [m.url for m in members]
    async with AsyncKVClient(endpoints, timeout_s=DEADLINE_S) as client:
        async with client.lock("jobs/nightly", ttl_s=30, value="first") as first:
            await client.put("register", b"1", fence=first.fence)
            info = await client.lock_info("jobs/nightly")
            assert info.holder is not None and info.holder.value == "first"
            assert [hold.name for hold in await client.locks()] == ["jobs/nightly"]
            with pytest.raises(LockNotAcquired):
                async with client.lock("jobs/nightly", ttl_s=30, wait_s=0.3):
                    pass
            second_task = asyncio.ensure_future(_hold_and_write(client, "second"))
            deadline_s = asyncio.get_running_loop().time() + DEADLINE_S
            while not (await client.lock_info("jobs/nightly")).waiters:  # the second queues
                assert asyncio.get_running_loop().time() < deadline_s, "never queued"
            first_fence = first.fence
        second_token = await second_task
        assert second_token > first_fence.fencing_token
        with pytest.raises(FenceFailed):
            await client.put("register", b"late", fence=first_fence)
        with pytest.raises(FenceFailed):
            await client.delete("register", fence=first_fence)
        with pytest.raises(FenceFailed):
            await client.txn(success=[txn_put("register", b"t")], fence=first_fence)
        with pytest.raises(LockNotHeld):
            await client.lock_release("jobs/nightly", first_fence.fencing_token)
        assert (await client.get("register"))[0] == b"second"  # type: ignore[index]
        assert (await client.lock_info("jobs/nightly")).holder is None
        assert await client.leases() == []  # each lock's lease was revoked on leaving


async def _hold_and_write(client: AsyncKVClient, value: str) -> int:
    async with client.lock("jobs/nightly", ttl_s=30, value=value) as lock:
        await client.put("register", value.encode(), fence=lock.fence)
        return lock.fencing_token


async def test_the_blocking_lock_holds_and_releases(members: list[InProcessNode]) -> None:
    endpoints = [m.url for m in members]

    def hold() -> tuple[int, str | None]:
        client = KVClient(endpoints, timeout_s=DEADLINE_S)
        with client.lock("sync", ttl_s=30, value="thread") as lock:
            client.put("sync-register", b"x", fence=lock.fence)
            holder = client.lock_info("sync").holder
            return lock.fencing_token, None if holder is None else holder.value

    token, holder_value = await asyncio.to_thread(hold)
    assert token > 0 and holder_value == "thread"
    async with AsyncKVClient(endpoints, timeout_s=DEADLINE_S) as client:
        assert (await client.lock_info("sync")).holder is None
