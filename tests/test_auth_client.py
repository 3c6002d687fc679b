"""The client's authentication (#20): `KVClient(user=, password=)` fetches a token, sends it,
renews it after a 401 (the token expired or was invalidated); the auth management calls; a
watch with a token; the sans-IO step wrapper without a server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib

import pytest

from kvraft.client import (
    AsyncKVClient,
    ClientError,
    Credentials,
    HttpResponse,
    KVClient,
    Send,
    Unavailable,
    build_get,
    plan_authenticated,
)
from tests.in_process_cluster import InProcessNode

__all__: list[str] = []


def test_the_wrapper_logs_in_first_and_once_more_after_a_401() -> None:
    def plan() -> object:
        reply = yield Send("http://n1", build_get("k"), 1.0)
        return reply.status  # type: ignore[attr-defined]

    credentials = Credentials("alice", "pw")
    steps = plan_authenticated(plan(), credentials)  # type: ignore[arg-type]
    login = next(steps)
    assert login.request.target == "/v1/auth/token"
    assert json.loads(login.request.body) == {"user": "alice", "password": "pw"}
    token = json.dumps({"token": "t1", "expires_s": 600}).encode()
    get = steps.send(HttpResponse(200, {}, token))
    assert ("Authorization", "Bearer t1") in get.request.headers
    # A 401 (the token was invalidated): a new token, and the request once more.
    login = steps.send(HttpResponse(401, {}, b'{"error": "unauthenticated"}'))
    assert login.request.target == "/v1/auth/token"
    again = steps.send(HttpResponse(200, {}, token.replace(b"t1", b"t2")))
    assert ("Authorization", "Bearer t2") in again.request.headers
    with pytest.raises(StopIteration) as done:
        steps.send(HttpResponse(200, {}, b"v"))
    assert done.value.value == 200


def test_a_wrong_password_is_a_client_error_and_a_fixed_token_is_sent_as_is() -> None:
    def plan() -> object:
        yield Send("http://n1", build_get("k"), 1.0)

    steps = plan_authenticated(plan(), Credentials("alice", "nope"))  # type: ignore[arg-type]
    next(steps)
    with pytest.raises(ClientError) as error:
        steps.send(HttpResponse(401, {}, b'{"error": "unauthenticated", "message": "wrong"}'))
    assert error.value.code == "unauthenticated"
    fixed = plan_authenticated(plan(), Credentials(token="abc"))  # type: ignore[arg-type]
    assert ("Authorization", "Bearer abc") in next(fixed).request.headers
    with pytest.raises(ClientError):
        Credentials(user="alice")


async def test_a_client_with_a_user_works_under_auth_and_renews_its_token(
    members: list[InProcessNode],
) -> None:
    endpoints = [m.url for m in members]

    def scenario() -> None:
        admin = KVClient(endpoints, timeout_s=10)
        assert admin.auth_status() is False
        admin.role_put("admin", admin=True)
        admin.role_put("app", permissions=[("app/", "readwrite")])
        admin.user_put("root", password="root-pw", roles=["admin"])
        admin.user_put("alice", password="alice-pw", roles=["app"])
        admin.auth_enable()
        with pytest.raises(ClientError) as error:
            admin.put("app/x", b"1")
        assert error.value.code == "unauthenticated" and error.value.status == 401
        root = KVClient(endpoints, timeout_s=10, user="root", password="root-pw")
        assert root.auth_status() is True
        assert [u["name"] for u in root.users()] == ["alice", "root"]
        assert [r["name"] for r in root.roles()] == ["admin", "app"]
        alice = KVClient(endpoints, timeout_s=10, user="alice", password="alice-pw")
        revision = alice.put("app/x", b"1")
        assert alice.get("app/x") == (b"1", revision)
        with pytest.raises(ClientError) as error:
            alice.put("other", b"1")
        assert error.value.code == "permission_denied" and error.value.status == 403
        # Her token is invalidated by a password change: the client logs in again, once.
        root.user_put("alice", password="alice-pw")
        assert alice.get("app/x") == (b"1", revision)
        # A watch carries the token too.
        events = alice.watch("app/", start_revision=revision)
        with contextlib.closing(events):
            assert next(events).key == "app/x"
        with pytest.raises(ClientError):
            KVClient(endpoints, timeout_s=10, user="alice", password="wrong").get("app/x")
        root.auth_disable()

    await asyncio.to_thread(scenario)


async def test_the_async_client_sends_a_token(members: list[InProcessNode]) -> None:
    endpoints = [m.url for m in members]

    def set_up() -> None:
        admin = KVClient(endpoints, timeout_s=10)
        admin.role_put("admin", admin=True)
        admin.user_put("root", password="root-pw", roles=["admin"])
        admin.auth_enable()

    await asyncio.to_thread(set_up)
    async with AsyncKVClient(endpoints, timeout_s=10, user="root", password="root-pw") as root:
        revision = await root.put("k", b"v")
        assert await root.get("k") == (b"v", revision)
    async with AsyncKVClient(endpoints, timeout_s=10) as anonymous:
        with pytest.raises(ClientError):
            await anonymous.get("k")


async def test_a_backup_needs_an_admin_token(
    members: list[InProcessNode], tmp_path: pathlib.Path
) -> None:
    endpoints = [m.url for m in members]

    def scenario() -> None:
        admin = KVClient(endpoints, timeout_s=10)
        admin.role_put("admin", admin=True)
        admin.role_put("app", permissions=[("app/", "readwrite")])
        admin.user_put("root", password="root-pw", roles=["admin"])
        admin.user_put("alice", password="alice-pw", roles=["app"])
        admin.auth_enable()
        root = KVClient(endpoints, timeout_s=10, user="root", password="root-pw")
        root.put("app/x", b"1")
        info = root.backup(tmp_path / "root.kvbackup")
        assert info.keys == 1
        for client in (
            KVClient(endpoints, timeout_s=2),
            KVClient(endpoints, timeout_s=2, user="alice", password="alice-pw"),
        ):
            with pytest.raises(Unavailable, match=r"40[13]"):
                client.backup(tmp_path / "refused.kvbackup")
        assert not (tmp_path / "refused.kvbackup").exists()

    await asyncio.to_thread(scenario)
