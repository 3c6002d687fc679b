"""The lease contract over HTTP (issue #19), on an in-process 3-node cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kvraft.leases import lease_ttl_s_min
from kvraft.statemachine import LEASE_TTL_S_MAX
from tests.in_process_cluster import DEADLINE_S, InProcessNode, leader_of

__all__: list[str] = []

TTL_S = 3
"""A short TTL the default config allows (the shortest is `lease_ttl_s_min`: 2 s)."""


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data) as response:
        return response.status, await response.json()


def leader_and_follower(members: list[InProcessNode]) -> tuple[InProcessNode, InProcessNode]:
    leader = leader_of(members)
    assert leader is not None
    return leader, next(m for m in members if m is not leader)


async def grant(http: aiohttp.ClientSession, node: InProcessNode, ttl_s: int = TTL_S) -> str:
    status, body = await call(http, "POST", f"{node.url}/v1/leases", {"ttl_s": ttl_s})
    assert status == 200, body
    assert body["ttl_s"] == ttl_s and body["id"].isdecimal()
    lease_id: str = body["id"]
    return lease_id


async def test_grant_attach_inspect_keepalive_and_revoke(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    lease_id = await grant(http, follower, 60)  # a follower forwards it to the leader
    for key in ("svc/b", "svc/a"):
        async with http.put(f"{follower.url}/v1/kv/{key}?lease={lease_id}", data=b"up") as put:
            assert put.status == 200
    status, body = await call(http, "GET", f"{follower.url}/v1/leases/{lease_id}")
    assert status == 200
    assert body["id"] == lease_id and body["ttl_s"] == 60
    assert body["keys"] == ["svc/a", "svc/b"]
    assert 0 < body["remaining_s"] <= 60
    status, body = await call(http, "GET", f"{leader.url}/v1/leases")
    assert status == 200 and [(one["id"], one["ttl_s"]) for one in body["leases"]] == [
        (lease_id, 60)
    ]
    url = f"{follower.url}/v1/leases/{lease_id}/keepalive"
    assert await call(http, "POST", url) == (200, {"id": lease_id, "ttl_s": 60})

    status, body = await call(http, "DELETE", f"{follower.url}/v1/leases/{lease_id}")
    assert status == 200 and body["deleted"] == 2
    async with http.get(f"{follower.url}/v1/kv/svc/a") as gone:
        assert gone.status == 404
    not_found = (404, "lease_not_found")
    for method, path in (
        ("POST", f"/v1/leases/{lease_id}/keepalive"),
        ("GET", f"/v1/leases/{lease_id}"),
        ("DELETE", f"/v1/leases/{lease_id}"),
    ):
        status, body = await call(http, method, follower.url + path)
        assert (status, body["error"]) == not_found, (method, path)


async def test_a_put_with_an_unknown_lease_is_refused_and_writes_nothing(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, _ = leader_and_follower(members)
    async with http.put(f"{leader.url}/v1/kv/k?lease=424242", data=b"v") as put:
        assert put.status == 404 and (await put.json())["error"] == "lease_not_found"
    async with http.put(f"{leader.url}/v1/kv/k?lease=abc", data=b"v") as put:
        assert put.status == 400 and (await put.json())["error"] == "bad_lease"
    async with http.get(f"{leader.url}/v1/kv/k") as get:
        assert get.status == 404


async def test_ttls_outside_the_bounds_are_refused(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, _ = leader_and_follower(members)
    raft = leader.node.config.raft
    ttl_s_min = lease_ttl_s_min(raft.tick_ms, raft.election_ticks)
    for ttl_s in (ttl_s_min - 1, LEASE_TTL_S_MAX + 1, 2.5, "10", None):
        status, body = await call(http, "POST", f"{leader.url}/v1/leases", {"ttl_s": ttl_s})
        assert (status, body["error"]) == (400, "bad_ttl"), ttl_s
    status, body = await call(http, "POST", f"{leader.url}/v1/leases", {"ttl": 10})
    assert status == 400
    status, body = await call(http, "POST", f"{leader.url}/v1/leases", {"ttl_s": ttl_s_min})
    assert (status, body["ttl_s"]) == (200, ttl_s_min)


async def test_lease_routes_refuse_query_parameters_they_do_not_know(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, _ = leader_and_follower(members)
    status, body = await call(http, "GET", f"{leader.url}/v1/leases?lease=1")
    assert (status, body["error"]) == (400, "unknown_parameter")
    async with http.delete(f"{leader.url}/v1/kv/k?lease=1") as delete:
        assert delete.status == 400


async def test_a_key_vanishes_after_its_lease_expires_and_a_watcher_sees_the_delete(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = leader_and_follower(members)
    loop = asyncio.get_running_loop()
    lease_id = await grant(http, leader)
    kept_id = await grant(http, leader)
    async with http.put(f"{leader.url}/v1/kv/eph/a?lease={lease_id}", data=b"x") as put:
        put_revision = (await put.json())["revision"]
    async with http.put(f"{leader.url}/v1/kv/eph/kept?lease={kept_id}", data=b"y") as put:
        assert put.status == 200
    url = f"{follower.url}/v1/watch?key=eph/a&start_revision={put_revision + 1}"
    async with http.get(url) as stream:
        granted_s = loop.time()
        # The other lease is kept alive past the first one's TTL: only the first goes.
        while loop.time() < granted_s + TTL_S + 1:
            keepalive = f"{leader.url}/v1/leases/{kept_id}/keepalive"
            assert (await call(http, "POST", keepalive))[0] == 200
            await asyncio.sleep(0.5)
        line = await asyncio.wait_for(stream.content.readline(), DEADLINE_S)
    event = json.loads(line)
    assert (event["type"], event["key"], event["prev_revision"]) == (
        "delete",
        "eph/a",
        put_revision,
    )
    async with http.get(f"{follower.url}/v1/kv/eph/a") as gone:
        assert gone.status == 404
    async with http.get(f"{follower.url}/v1/kv/eph/kept") as kept:
        assert kept.status == 200
    status, _ = await call(http, "GET", f"{leader.url}/v1/leases/{lease_id}")
    assert status == 404
