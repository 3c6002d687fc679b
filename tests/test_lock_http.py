"""Locks and fenced writes over HTTP (issue #19), on an in-process 3-node cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.in_process_cluster import DEADLINE_S, InProcessNode
from tests.test_lease_http import call, grant, leader_and_follower

__all__: list[str] = []


async def acquire(
    http: aiohttp.ClientSession, node: InProcessNode, name: str, lease: str, **body: Any
) -> tuple[int, dict[str, Any]]:
    return await call(http, "POST", f"{node.url}/v1/locks/{name}", {"lease": lease, **body})


async def fenced_put(
    http: aiohttp.ClientSession, node: InProcessNode, key: str, value: bytes, fence: str
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Kvraft-Fence": fence}
    async with http.put(f"{node.url}/v1/kv/{key}", data=value, headers=headers) as response:
        return response.status, await response.json()


async def test_a_lock_is_held_by_the_first_and_passed_on_release_in_order(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    first, second = await grant(http, leader, 60), await grant(http, follower, 60)
    status, held = await acquire(http, follower, "jobs/nightly", first, value="worker-1")
    assert status == 200, held
    assert held["name"] == "jobs/nightly" and held["lease"] == first
    assert held["key"] == f"jobs/nightly/{held['fencing_token']}"
    waiting = asyncio.ensure_future(acquire(http, leader, "jobs/nightly", second, wait_s=30))
    deadline_s = asyncio.get_running_loop().time() + DEADLINE_S
    status, lock = await call(http, "GET", f"{follower.url}/v1/locks/jobs/nightly")
    while not lock["waiters"]:  # the second waiter queues behind the holder
        assert asyncio.get_running_loop().time() < deadline_s, "the second never queued"
        status, lock = await call(http, "GET", f"{follower.url}/v1/locks/jobs/nightly")
    assert lock["holder"]["value"] == "worker-1"
    assert not waiting.done()
    token = held["fencing_token"]
    status, released = await call(
        http, "DELETE", f"{follower.url}/v1/locks/jobs/nightly", {"fencing_token": token}
    )
    assert status == 200 and released["released"] is True, released
    status, next_holder = await waiting
    assert status == 200
    assert next_holder["fencing_token"] > token and next_holder["lease"] == second
    status, listed = await call(http, "GET", f"{leader.url}/v1/locks")
    assert [(one["name"], one["holder"]["lease"]) for one in listed["locks"]] == [
        ("jobs/nightly", second)
    ]
    status, again = await call(
        http, "DELETE", f"{leader.url}/v1/locks/jobs/nightly", {"fencing_token": token}
    )
    assert (status, again["error"]) == (409, "lock_not_held")


async def test_a_waiter_that_runs_out_of_time_gets_409_and_loses_its_place(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    holder, late = await grant(http, leader, 60), await grant(http, leader, 60)
    assert (await acquire(http, leader, "l", holder))[0] == 200
    status, body = await acquire(http, follower, "l", late, wait_s=0.2)
    assert (status, body["error"]) == (409, "lock_not_acquired")
    status, lock = await call(http, "GET", f"{leader.url}/v1/locks/l")
    assert lock["holder"]["lease"] == holder and lock["waiters"] == []


async def test_acquiring_again_with_the_same_lease_returns_the_same_token(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    lease = await grant(http, leader, 60)
    first = await acquire(http, leader, "l", lease)
    retry = await acquire(http, follower, "l", lease)
    assert first[0] == retry[0] == 200
    assert first[1]["fencing_token"] == retry[1]["fencing_token"]


async def test_a_fenced_write_of_a_deposed_holder_is_refused_with_412(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    old, new = await grant(http, leader, 60), await grant(http, leader, 60)
    _, old_lock = await acquire(http, leader, "reg", old)
    old_fence = f"reg:{old_lock['fencing_token']}"
    assert (await fenced_put(http, follower, "register", b"old", old_fence))[0] == 200
    # The old holder's lease is revoked (as if it expired while it was paused).
    waiting = asyncio.ensure_future(acquire(http, leader, "reg", new, wait_s=30))
    assert (await call(http, "DELETE", f"{leader.url}/v1/leases/{old}"))[0] == 200
    status, new_lock = await waiting
    assert status == 200
    new_fence = f"reg:{new_lock['fencing_token']}"
    assert (await fenced_put(http, leader, "register", b"new", new_fence))[0] == 200
    status, refused = await fenced_put(http, follower, "register", b"late", old_fence)
    assert (status, refused["error"]) == (412, "fence_failed")
    async with http.get(f"{follower.url}/v1/kv/register") as read:
        assert await read.read() == b"new"
    # Every write takes a fence: delete, range delete and transaction.
    headers = {"X-Kvraft-Fence": old_fence}
    async with http.delete(f"{follower.url}/v1/kv/register", headers=headers) as delete:
        assert (delete.status, (await delete.json())["error"]) == (412, "fence_failed")
    async with http.delete(f"{follower.url}/v1/kv/absent", headers=headers) as delete:
        assert delete.status == 412  # even a delete of an absent key checks the fence
    async with http.delete(f"{leader.url}/v1/kv?prefix=reg", headers=headers) as delete:
        assert delete.status == 412
    txn = {"success": [{"op": "put", "key": "register", "value": "txn"}]}
    async with http.post(f"{leader.url}/v1/txn", data=json.dumps(txn), headers=headers) as post:
        assert post.status == 412
    async with http.get(f"{leader.url}/v1/kv/register") as read:
        assert await read.read() == b"new"


async def test_bad_lock_requests_are_the_clients_fault(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, _ = leader_and_follower(members)
    lease = await grant(http, leader, 60)
    for body, code in (
        ({"lease": "x"}, "bad_lease"),
        ({"lease": lease, "wait_s": -1}, "bad_request"),
        ({"lease": lease, "wait_s": 601}, "bad_request"),
        ({"lease": lease, "ttl": 1}, "bad_request"),
        ({"lease": lease, "value": 5}, "bad_lock"),
    ):
        status, answer = await call(http, "POST", f"{leader.url}/v1/locks/l", body)
        assert (status, answer["error"]) == (400, code), body
    status, answer = await acquire(http, leader, "l", "424242")
    assert (status, answer["error"]) == (404, "lease_not_found")
    for fence in ("nocolon", "l:", "l:abc", ":5"):
        status, answer = await fenced_put(http, leader, "k", b"v", fence)
        assert (status, answer["error"]) == (400, "bad_fence"), fence
    async with http.get(f"{leader.url}/v1/kv/k", headers={"X-Kvraft-Fence": "l:5"}) as get:
        assert get.status == 400  # a read cannot be fenced: refused, not ignored
