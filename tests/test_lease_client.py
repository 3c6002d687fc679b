"""The client's lease calls (issue #19): `lease_grant`, `lease_keepalive`, `lease_info`,
`leases`, `lease_revoke`, `put(..., lease=)` and the async `lease()` context manager, on
an in-process 3-node cluster; the request builders' retry decisions without a server."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvraft.client import (
    AsyncKVClient,
    ClientError,
    LeaseNotFound,
    build_lease_grant,
    build_lease_keepalive,
    build_lease_revoke,
    build_put,
)
from tests.in_process_cluster import DEADLINE_S, InProcessNode

__all__: list[str] = []

TTL_S = 3
"""A short TTL the default config allows (the shortest is `kvraft.leases.lease_ttl_s_min`,
3 of the longest election timeouts: 2 s)."""


def test_lease_requests_follow_the_contract_and_say_what_may_be_repeated() -> None:
    grant = build_lease_grant(10)
    assert (grant.method, grant.target, grant.body) == ("POST", "/v1/leases", b'{"ttl_s": 10}')
    # An unknown-outcome grant only leaks a keyless lease that expires by itself.
    assert grant.retry_after_send
    keepalive = build_lease_keepalive(7)
    assert (keepalive.method, keepalive.target) == ("POST", "/v1/leases/7/keepalive")
    assert keepalive.retry_after_send and not keepalive.is_write
    revoke = build_lease_revoke(7)
    assert (revoke.method, revoke.target, revoke.retry_after_send) == (
        "DELETE",
        "/v1/leases/7",
        True,
    )
    assert build_put("a b", b"v", lease=7).target == "/v1/kv/a%20b?lease=7"
    for bad in (0, -1, "7", True):
        with pytest.raises(ClientError):
            build_lease_keepalive(bad)  # type: ignore[arg-type]
    with pytest.raises(ClientError):
        build_lease_grant(0)


async def test_grant_attach_inspect_keepalive_and_revoke(members: list[InProcessNode]) -> None:
    async with AsyncKVClient([m.url for m in members], timeout_s=DEADLINE_S) as client:
        grant = await client.lease_grant(60)
        assert grant.ttl_s == 60
        await client.put("svc/b", b"up", lease=grant.id)
        await client.put("svc/a", b"up", lease=grant.id)
        info = await client.lease_info(grant.id)
        assert (info.id, info.ttl_s, info.keys) == (grant.id, 60, ("svc/a", "svc/b"))
        assert 0 < info.remaining_s <= 60
        assert [(one.id, one.ttl_s) for one in await client.leases()] == [(grant.id, 60)]
        assert await client.lease_keepalive(grant.id) == 60

        _, deleted = await client.lease_revoke(grant.id)
        assert deleted == 2
        assert await client.get("svc/a") is None and await client.get("svc/b") is None
        assert await client.leases() == []
        for call in (client.lease_keepalive, client.lease_info, client.lease_revoke):
            with pytest.raises(LeaseNotFound) as raised:
                await call(grant.id)
            assert (raised.value.code, raised.value.lease_id) == ("lease_not_found", grant.id)
        with pytest.raises(LeaseNotFound):
            await client.put("svc/c", b"up", lease=grant.id)
        with pytest.raises(ClientError) as refused:
            await client.lease_grant(1)
        assert refused.value.code == "bad_ttl"


async def test_async_lease_keeps_its_key_past_the_ttl_and_revokes_on_exit(
    members: list[InProcessNode],
) -> None:
    async with AsyncKVClient([m.url for m in members], timeout_s=DEADLINE_S) as client:
        async with client.lease(TTL_S) as lease:
            await client.put("workers/w1", b"up", lease=lease.id)
            # Outlive two TTLs: only the background keepalives can keep the key.
            outlived_s = time.monotonic() + 2 * TTL_S
            while time.monotonic() < outlived_s:
                assert await client.get("workers/w1") is not None
                assert not lease.lost.is_set()
                await asyncio.sleep(0.2)  # polling interval
            lease_id = lease.id
        # Leaving the block revoked it: the key is gone at once, no TTL to wait for.
        assert await client.get("workers/w1") is None
        with pytest.raises(LeaseNotFound):
            await client.lease_info(lease_id)


async def test_async_lease_reports_loss_when_revoked_behind_its_back(
    members: list[InProcessNode],
) -> None:
    async with AsyncKVClient([m.url for m in members], timeout_s=DEADLINE_S) as client:
        async with client.lease(TTL_S) as lease:
            await client.put("workers/w2", b"up", lease=lease.id)
            await client.lease_revoke(lease.id)  # as if it had expired
            await asyncio.wait_for(lease.lost.wait(), DEADLINE_S)
        assert await client.get("workers/w2") is None
