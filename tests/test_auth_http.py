"""Users, roles and tokens over HTTP (#20), on in-process 3-node clusters: 401 and 403 per
endpoint and per prefix, forwarding with the Authorization header, expiring and invalidated
tokens, the login limiter, no secret shown, watches within the caller's prefixes, and the auth
state carried to a node by InstallSnapshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvraft.config import AuthSettings, ConfigError, parse_config, render_config
from kvraft.storage.memory import MemoryDisk
from kvraft.transport.memory import MemoryNetwork
from tests.in_process_cluster import (
    InProcessNode,
    cluster_config,
    crash,
    leader_of,
    start_node,
    wait_until,
)

__all__: list[str] = []

ROOT_PASSWORD = "root-secret-pw"
ALICE_PASSWORD = "alice-secret-pw"


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    payload = data if data is not None else (None if body is None else json.dumps(body))
    async with http.request(method, url, data=payload, headers=headers) as response:
        text = await response.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return response.status, parsed, response.headers


def split(members: list[InProcessNode]) -> tuple[InProcessNode, InProcessNode]:
    leader = leader_of(members)
    assert leader is not None
    return leader, next(m for m in members if m is not leader)


async def set_up_auth(http: aiohttp.ClientSession, node: InProcessNode) -> None:
    """Roles admin, app (readwrite app/, read pub/), reader (read pub/); users root, alice
    (app), bob (reader); auth enabled. All through `node` (a follower forwards)."""
    for name, role in {
        "admin": {"admin": True},
        "app": {
            "permissions": [
                {"prefix": "app/", "access": "readwrite"},
                {"prefix": "pub/", "access": "read"},
            ]
        },
        "reader": {"permissions": [{"prefix": "pub/", "access": "read"}]},
    }.items():
        status, body, _ = await call(http, "PUT", f"{node.url}/v1/auth/roles/{name}", role)
        assert status == 200, body
    for name, password, roles in (
        ("root", ROOT_PASSWORD, ["admin"]),
        ("alice", ALICE_PASSWORD, ["app"]),
        ("bob", "bob-secret-pw", ["reader"]),
    ):
        user = {"password": password, "roles": roles}
        status, body, _ = await call(http, "PUT", f"{node.url}/v1/auth/users/{name}", user)
        assert status == 200, body
    status, body, _ = await call(http, "POST", f"{node.url}/v1/auth/enable")
    assert status == 200 and body["enabled"] is True, body


async def all_applied(members: list[InProcessNode]) -> None:
    leader = leader_of(members)
    assert leader is not None
    index = leader.node.state_machine.applied_index
    await wait_until(
        lambda: all(m.node.state_machine.applied_index >= index for m in members), "all applied"
    )


async def token_for(
    http: aiohttp.ClientSession, node: InProcessNode, user: str, password: str
) -> str:
    status, body, _ = await call(
        http, "POST", f"{node.url}/v1/auth/token", {"user": user, "password": password}
    )
    assert status == 200, body
    assert body["expires_s"] == 600
    token: str = body["token"]
    return token


async def test_everything_is_open_until_enabled_and_enable_needs_root(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    status, body, _ = await call(http, "PUT", f"{follower.url}/v1/kv/a", data=b"1")
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{leader.url}/v1/auth/status")
    assert (status, body) == (200, {"enabled": False})
    status, body, _ = await call(http, "POST", f"{follower.url}/v1/auth/enable")
    assert status == 409 and body["error"] == "root_required", body
    status, body, _ = await call(
        http, "POST", f"{leader.url}/v1/auth/token", {"user": "root", "password": "x"}
    )
    assert status == 409 and body["error"] == "auth_disabled"


async def test_rules_per_endpoint_and_prefix(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    await set_up_auth(http, follower)
    await all_applied(members)
    for node in (leader, follower):
        url = node.url
        # Without credentials: 401 naming what is missing; health stays open.
        for method, path in (
            ("PUT", "/v1/kv/app/x"),
            ("GET", "/v1/kv/app/x"),
            ("GET", "/v1/kv?prefix=app/"),
            ("GET", "/v1/members"),
            ("GET", "/v1/auth/users"),
            ("POST", "/v1/leases"),
            ("GET", "/v1/events"),
        ):
            status, body, headers = await call(http, method, url + path)
            assert status == 401 and body["error"] == "unauthenticated", (path, body)
            assert "Bearer" in headers["WWW-Authenticate"]
        for path in ("/healthz", "/readyz", "/metrics", "/v1/status", "/v1/auth/status"):
            status, _, _ = await call(http, "GET", url + path)
            assert status == 200, path
        status, body, _ = await call(
            http, "PUT", f"{url}/v1/kv/app/x", data=b"1", token="kv1.bad.token"
        )
        assert status == 401 and "not valid" in body["message"]

    alice = await token_for(http, follower, "alice", ALICE_PASSWORD)
    root = await token_for(http, leader, "root", ROOT_PASSWORD)
    bob = await token_for(http, leader, "bob", "bob-secret-pw")
    f = follower.url
    # Allowed: a write through a follower (forwarded with the header, checked again).
    status, body, _ = await call(http, "PUT", f"{f}/v1/kv/app/x", data=b"v", token=alice)
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{f}/v1/kv/app/x", token=alice)
    assert (status, body) == (200, "v")
    status, body, _ = await call(http, "PUT", f"{f}/v1/kv/pub/news", data=b"n", token=root)
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{f}/v1/kv/pub/news", token=alice)
    assert status == 200
    status, body, _ = await call(http, "GET", f"{f}/v1/kv?prefix=app/", token=alice)
    assert status == 200 and [i["key"] for i in body["items"]] == ["app/x"]

    def denied(status: int, body: Any, *words: str) -> None:
        assert status == 403 and body["error"] == "permission_denied", body
        for word in words:
            assert word in body["message"], body

    # 403 per key and access, naming the permission and the key or prefix.
    denied(*(await call(http, "PUT", f"{f}/v1/kv/pub/x", data=b"1", token=alice))[:2],
           "readwrite", "'pub/x'")  # fmt: skip
    denied(*(await call(http, "GET", f"{f}/v1/kv/secret", token=alice))[:2], "read", "'secret'")
    denied(*(await call(http, "DELETE", f"{f}/v1/kv/secret", token=alice))[:2], "readwrite")
    # Ranges must lie inside one permission: "app" is broader than "app/".
    denied(*(await call(http, "GET", f"{f}/v1/kv?prefix=app", token=alice))[:2], "'app'")
    denied(*(await call(http, "GET", f"{f}/v1/kv?prefix=", token=alice))[:2], "prefix")
    denied(*(await call(http, "DELETE", f"{f}/v1/kv?prefix=pub/", token=alice))[:2], "pub/")
    status, body, _ = await call(http, "GET", f"{f}/v1/kv?prefix=app/sub", token=alice)
    assert status == 200
    # Admin-only routes.
    for method, path, payload in (
        ("POST", "/v1/members", {"id": 9, "raft_address": "x:1", "http_address": "x:2"}),
        ("DELETE", "/v1/members/3", None),
        ("POST", "/v1/leader/transfer", {}),
        ("GET", "/v1/backup", None),
        ("GET", "/v1/auth/users", None),
        ("PUT", "/v1/auth/users/eve", {"password": "x", "roles": []}),
        ("POST", "/v1/auth/disable", None),
    ):
        status, body, _ = await call(http, method, f"{f}{path}", payload, token=alice)
        denied(status, body, "admin")
    # Any user: the member list.
    for path in ("/v1/members",):
        status, body, _ = await call(http, "GET", f"{f}{path}", token=bob)
        assert status == 200, (path, body)
    # Transactions: every key of both branches, before proposing.
    txn = {
        "compare": [{"key": "app/x", "target": "revision", "op": ">", "value": 0}],
        "success": [{"op": "put", "key": "app/y", "value": "1"}],
        "failure": [{"op": "delete_prefix", "prefix": "pub/"}],
    }
    denied(*(await call(http, "POST", f"{f}/v1/txn", txn, token=alice))[:2], "'pub/'")
    txn["failure"] = [{"op": "get", "key": "pub/news"}]
    status, body, _ = await call(http, "POST", f"{f}/v1/txn", txn, token=alice)
    assert status == 200 and body["succeeded"] is True, body
    # Leases need some readwrite permission; locks readwrite on their name.
    status, lease, _ = await call(http, "POST", f"{f}/v1/leases", {"ttl_s": 30}, token=alice)
    assert status == 200, lease
    denied(*(await call(http, "POST", f"{f}/v1/leases", {"ttl_s": 30}, token=bob))[:2], "lease")
    status, body, _ = await call(
        http, "POST", f"{f}/v1/locks/app/lock", {"lease": lease["id"], "wait_s": 1}, token=alice
    )
    assert status == 200, body
    denied(*(await call(http, "POST", f"{f}/v1/locks/jobs", {"lease": lease["id"]},
                        token=alice))[:2], "'jobs'")  # fmt: skip
    status, body, _ = await call(http, "GET", f"{f}/v1/locks", token=bob)
    assert status == 200 and body["locks"] == []  # bob may not read app/lock
    status, body, _ = await call(http, "GET", f"{f}/v1/locks", token=alice)
    assert [one["name"] for one in body["locks"]] == ["app/lock"]
    # Admin sees users and roles, never a hash or the signing key.
    status, users, _ = await call(http, "GET", f"{f}/v1/auth/users", token=root)
    assert status == 200 and [u["name"] for u in users["users"]] == ["alice", "bob", "root"]
    assert set(users["users"][0]) == {"name", "roles"}


async def test_no_secret_in_status_listings_or_errors(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    await set_up_auth(http, leader)
    await all_applied(members)
    root = await token_for(http, leader, "root", ROOT_PASSWORD)
    auth = leader.node.state_machine.auth
    secrets_shown = [
        auth.signing_key.hex(),
        base64.b64encode(auth.signing_key).decode(),
        base64.urlsafe_b64encode(auth.signing_key).decode().rstrip("="),
        *(user.password.digest.hex() for user in auth.users.values()),
        *(base64.b64encode(user.password.digest).decode() for user in auth.users.values()),
        ROOT_PASSWORD,
        ALICE_PASSWORD,
    ]
    texts = []
    for path in ("/v1/status", "/v1/auth/users", "/v1/auth/roles", "/metrics", "/v1/members"):
        async with http.get(
            f"{follower.url}{path}", headers={"Authorization": f"Bearer {root}"}
        ) as response:
            assert response.status == 200, path
            texts.append(await response.text())
    for payload in ({"user": "root", "password": "wrong"}, {"user": "nobody", "password": "x"}):
        _, body, _ = await call(http, "POST", f"{follower.url}/v1/auth/token", payload)
        texts.append(json.dumps(body))
    for text in texts:
        for secret in secrets_shown:
            assert secret not in text


async def test_changing_a_password_or_deleting_a_user_invalidates_its_tokens(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    await set_up_auth(http, leader)
    root = await token_for(http, leader, "root", ROOT_PASSWORD)
    alice = await token_for(http, leader, "alice", ALICE_PASSWORD)
    status, _, _ = await call(http, "GET", f"{leader.url}/v1/kv/app/x", token=alice)
    assert status == 404
    # A role change keeps the token (roles are looked up per request).
    status, body, _ = await call(
        http, "PUT", f"{follower.url}/v1/auth/users/alice", {"roles": ["reader"]}, token=root
    )
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{leader.url}/v1/kv/app/x", token=alice)
    assert status == 403
    status, body, _ = await call(
        http, "PUT", f"{leader.url}/v1/auth/users/alice", {"password": "new-pw-1"}, token=root
    )
    assert status == 200 and body["roles"] == ["reader"], body
    status, body, _ = await call(http, "GET", f"{leader.url}/v1/kv/pub/x", token=alice)
    assert status == 401 and "password changed" in body["message"], body
    alice = await token_for(http, leader, "alice", "new-pw-1")
    status, _, _ = await call(http, "GET", f"{leader.url}/v1/kv/pub/x", token=alice)
    assert status == 404
    status, body, _ = await call(http, "DELETE", f"{leader.url}/v1/auth/users/alice", token=root)
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{leader.url}/v1/kv/pub/x", token=alice)
    assert status == 401
    # root cannot go while auth is on.
    status, body, _ = await call(http, "DELETE", f"{leader.url}/v1/auth/users/root", token=root)
    assert status == 409 and body["error"] == "root_required", body
    # Disabling opens everything again.
    status, body, _ = await call(http, "POST", f"{follower.url}/v1/auth/disable", token=root)
    assert status == 200, body
    await all_applied(members)
    status, _, _ = await call(http, "PUT", f"{follower.url}/v1/kv/any", data=b"1")
    assert status == 200


async def test_tokens_expire(members: list[InProcessNode], http: aiohttp.ClientSession) -> None:
    leader, _ = split(members)
    await set_up_auth(http, leader)
    leader.api.authorizer.token_ttl_s = 1
    status, body, _ = await call(
        http, "POST", f"{leader.url}/v1/auth/token", {"user": "root", "password": ROOT_PASSWORD}
    )
    assert status == 200 and body["expires_s"] == 1
    token = body["token"]
    status, _, _ = await call(http, "GET", f"{leader.url}/v1/members", token=token)
    assert status == 200
    await asyncio.sleep(1.1)
    status, body, _ = await call(http, "GET", f"{leader.url}/v1/members", token=token)
    assert status == 401 and "expired" in body["message"], body


async def test_failed_logins_are_rate_limited(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, _ = split(members)
    await set_up_auth(http, leader)
    url = f"{leader.url}/v1/auth/token"
    for _ in range(5):
        status, body, _ = await call(http, "POST", url, {"user": "alice", "password": "nope"})
        assert status == 401 and body["message"] == "wrong user name or password"
    status, body, headers = await call(http, "POST", url, {"user": "alice", "password": "nope"})
    assert status == 429 and body["error"] == "too_many_attempts", body
    assert int(headers["Retry-After"]) >= 1
    # Even the right password waits: the bucket is empty (per user and per address).
    status, _, _ = await call(http, "POST", url, {"user": "alice", "password": ALICE_PASSWORD})
    assert status == 429
    status, _, _ = await call(http, "POST", url, {"user": "root", "password": ROOT_PASSWORD})
    assert status == 429  # the same address


async def read_lines(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    lines = []
    while len(lines) < count:
        line = await asyncio.wait_for(response.content.readline(), 10)
        event = json.loads(line)
        if event["type"] != "progress":
            lines.append(event)
    return lines


async def test_a_watch_never_sees_keys_outside_the_callers_prefixes(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    await set_up_auth(http, leader)
    await all_applied(members)
    alice = await token_for(http, follower, "alice", ALICE_PASSWORD)
    root = await token_for(http, leader, "root", ROOT_PASSWORD)
    bearer = {"Authorization": f"Bearer {alice}"}
    # A range broader than her permissions is refused, not narrowed (etcd's rule).
    for query in ("prefix=", "prefix=ap", "key=secret/a", ""):
        status, body, _ = await call(http, "GET", f"{follower.url}/v1/watch?{query}", token=alice)
        assert status == 403 and body["error"] == "permission_denied", (query, body)
    async with http.get(
        f"{follower.url}/v1/watch?prefix=app/&progress_s=1", headers=bearer
    ) as response:
        assert response.status == 200
        for key in ("secret/a", "app/1", "pubx", "app/2", "appx"):
            status, _, _ = await call(
                http, "PUT", f"{leader.url}/v1/kv/{key}", data=b"v", token=root
            )
            assert status == 200
        events = await read_lines(response, 2)
    assert [e["key"] for e in events] == ["app/1", "app/2"]


@contextlib.asynccontextmanager
async def snapshotting_cluster(
    tmp_path: Path,
) -> AsyncIterator[tuple[MemoryNetwork, list[InProcessNode]]]:
    config = cluster_config(tmp_path, 3)
    config = replace(
        config,
        storage=replace(
            config.storage, snapshot_threshold_entries=20, snapshot_entries_per_record=0
        ),
    )
    network = MemoryNetwork()
    members: list[InProcessNode] = []
    try:
        for spec in config.nodes:
            members.append(await start_node(config, spec.id, network, MemoryDisk()))
        await wait_until(lambda: leader_of(members) is not None, "a leader")
        yield network, members
    finally:
        for member in members:
            with contextlib.suppress(Exception):
                await crash(member)


async def test_auth_state_reaches_a_node_by_snapshot_install(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with snapshotting_cluster(tmp_path) as (network, members):
        leader, follower = split(members)
        others = [m.node.id for m in members if m is not follower]
        for other in others:  # the follower misses everything below
            network.disconnect(follower.node.id, other)
            network.disconnect(other, follower.node.id)
        await set_up_auth(http, leader)
        root = await token_for(http, leader, "root", ROOT_PASSWORD)
        for n in range(60):  # past the snapshot threshold: the log before it is compacted
            status, _, _ = await call(
                http, "PUT", f"{leader.url}/v1/kv/app/{n}", data=b"v", token=root
            )
            assert status == 200
        await wait_until(
            lambda: leader.node.status()["snapshot_index"] > 10, "the leader took a snapshot"
        )
        assert not follower.node.state_machine.auth.users
        installed = follower.node.status()["snapshot_index"]
        for other in others:  # back: only a snapshot can bring it up to date
            network.connect(follower.node.id, other)
            network.connect(other, follower.node.id)
        fresh = follower
        await all_applied(members)
        assert fresh.node.status()["snapshot_index"] > installed
        assert fresh.node.state_machine.auth == leader.node.state_machine.auth
        assert fresh.node.state_machine.auth.enabled
        # It judges requests by what the snapshot gave it: a stale read is served locally.
        status, body, _ = await call(http, "GET", f"{fresh.url}/v1/kv/app/1?consistency=stale")
        assert status == 401, body
        alice = await token_for(http, fresh, "alice", ALICE_PASSWORD)
        status, body, _ = await call(
            http, "GET", f"{fresh.url}/v1/kv/app/1?consistency=stale", token=alice
        )
        assert (status, body) == (200, "v")
        status, body, _ = await call(
            http, "GET", f"{fresh.url}/v1/kv/secret?consistency=stale", token=alice
        )
        assert status == 403


async def test_a_token_from_the_leader_works_at_once_on_a_follower_and_back(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    await set_up_auth(http, follower)  # forwarded: the follower waited to apply each
    assert follower.node.state_machine.auth.enabled
    root = await token_for(http, follower, "root", ROOT_PASSWORD)
    for n in range(5):
        user = {"password": f"pw-{n}", "roles": ["app"]}
        status, body, _ = await call(
            http, "PUT", f"{leader.url}/v1/auth/users/u{n}", user, token=root
        )
        assert status == 200, body
        # The follower may not have applied the user yet: it catches up to the token's
        # generation (a log index) before judging.
        token = await token_for(http, leader, f"u{n}", f"pw-{n}")
        status, body, _ = await call(
            http, "GET", f"{follower.url}/v1/kv/app/x?consistency=stale", token=token
        )
        assert status == 404, body


def test_the_auth_table_is_optional_and_checked(tmp_path: Path) -> None:
    base = cluster_config(tmp_path, 1)
    text = render_config(base)
    assert "[auth]" not in text  # an old config loads, and a default one renders the same
    assert parse_config(text, tmp_path).auth == AuthSettings()
    strict = replace(base, auth=AuthSettings(metrics_require_auth=True))
    assert parse_config(render_config(strict), tmp_path) == strict
    for bad in ("[auth]\nmetrics_require_auth = 1\n", "[auth]\nmetrics = true\n"):
        with pytest.raises(ConfigError, match="auth"):
            parse_config(text + bad, tmp_path)


async def test_metrics_want_a_token_when_the_config_says_so(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader, follower = split(members)
    follower.api.authorizer.metrics_require_auth = True
    await set_up_auth(http, leader)
    await all_applied(members)
    status, _, _ = await call(http, "GET", f"{follower.url}/metrics")
    assert status == 401
    status, _, _ = await call(http, "GET", f"{leader.url}/metrics")
    assert status == 200  # the default: open
    bob = await token_for(http, follower, "bob", "bob-secret-pw")
    status, _, _ = await call(http, "GET", f"{follower.url}/metrics", token=bob)
    assert status == 200


OPEN_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/status",
    "/ui",
    "/v1/auth/token",
    "/v1/auth/status",
}


async def test_every_route_but_the_open_ones_wants_a_token(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    """Walks the API's own route table, so a route added later cannot be left open by
    mistake: 401 for every method of every route, but the health, metrics, dashboard and
    login routes, and a CORS preflight."""
    leader, follower = split(members)
    await set_up_auth(http, leader)
    await all_applied(members)
    api = follower.api
    samples = {
        api._key_route.name: "/v1/kv/app/x",
        api._lease_route.name: "/v1/leases/1",
        api._lease_keepalive_route.name: "/v1/leases/1/keepalive",
        api._member_route.name: "/v1/members/3",
        api._lock_route.name: "/v1/locks/app/l",
        api._auth_user_route.name: "/v1/auth/users/alice",
        api._auth_role_route.name: "/v1/auth/roles/app",
    }
    routes = [
        *((route, route.name) for route in api._exact_routes.values()),
        *((api._route(path), path) for path in samples.values()),
    ]
    checked = 0
    for route, path in routes:
        assert route is not None, path
        for method in route.handlers:
            status, body, _ = await call(http, method, f"{follower.url}{path}")
            if method == "OPTIONS":
                # A CORS preflight (the dashboard's, `kvraft.ui`): never credentials, open,
                # and it answers nothing but headers.
                assert status == 204 and not body, (method, path, status, body)
            elif route.name in OPEN_ROUTES:
                assert status != 401, (method, path, body)
            else:
                assert status == 401, (method, path, status, body)
                checked += 1
    assert checked >= 30
