"""Users, roles and the auth switch in kvraft.statemachine and the rules of kvraft.auth (#20)."""

from __future__ import annotations

import ast
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kvraft.auth import (
    ROOT_USER,
    SIGNING_KEY_BYTES,
    AuthState,
    LoginLimiter,
    Permission,
    TokenError,
    hash_password,
    sign_token,
    verify_password,
    verify_token,
)
from kvraft.statemachine import (
    CommandError,
    ErrorCode,
    KVStateMachine,
    SnapshotFormatError,
    encode_auth_enable,
    encode_auth_role_delete,
    encode_auth_role_put,
    encode_auth_user_delete,
    encode_auth_user_put,
    encode_put,
)

# One hash for every test: scrypt is deliberately slow.
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD, b"s" * 16)
KEY = b"k" * SIGNING_KEY_BYTES


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def frame(kind: int, payload: bytes) -> bytes:
    return pack([kind, zlib.crc32(bytes([kind]) + payload), payload])


def enabled_machine() -> KVStateMachine:
    """root (admin) and alice (readwrite on app/, read on pub/); auth enabled at index 5."""
    machine = KVStateMachine()
    assert machine.apply(1, encode_auth_role_put("admin", True, [])).ok
    perms = [Permission("app/", "readwrite"), Permission("pub/", "read")]
    assert machine.apply(2, encode_auth_role_put("app", False, perms)).ok
    assert machine.apply(3, encode_auth_user_put(ROOT_USER, HASH, ["admin"])).ok
    assert machine.apply(4, encode_auth_user_put("alice", HASH, ["app"])).ok
    assert machine.apply(5, encode_auth_enable(True, KEY)).ok
    return machine


def test_the_auth_module_is_pure() -> None:
    """No clock, no randomness, no IO in kvraft.auth: apply must be deterministic."""
    tree = ast.parse((Path(__file__).parent.parent / "kvraft" / "auth.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"time", "random", "secrets", "os", "asyncio", "socket", "uuid"}


def test_enable_needs_root_with_admin() -> None:
    machine = KVStateMachine()
    result = machine.apply(1, encode_auth_enable(True, KEY))
    assert result.error == ErrorCode.ROOT_REQUIRED and not machine.auth.enabled
    machine.apply(2, encode_auth_role_put("plain", False, []))
    machine.apply(3, encode_auth_user_put(ROOT_USER, HASH, ["plain"]))
    assert machine.apply(4, encode_auth_enable(True, KEY)).error == ErrorCode.ROOT_REQUIRED
    machine.apply(5, encode_auth_role_put("plain", True, []))
    assert machine.apply(6, encode_auth_enable(True, KEY)).ok
    assert machine.auth.enabled and machine.auth.signing_key == KEY


def test_a_repeated_enable_keeps_the_signing_key_and_disable_drops_it() -> None:
    machine = enabled_machine()
    assert machine.apply(6, encode_auth_enable(True, b"o" * SIGNING_KEY_BYTES)).ok
    assert machine.auth.signing_key == KEY
    assert machine.apply(7, encode_auth_enable(False)).ok
    assert not machine.auth.enabled and machine.auth.signing_key == b""


def test_root_keeps_admin_while_auth_is_enabled() -> None:
    machine = enabled_machine()
    refused = [
        encode_auth_user_delete(ROOT_USER),
        encode_auth_user_put(ROOT_USER, None, ["app"]),
        encode_auth_role_put("admin", False, []),
        encode_auth_role_delete("admin"),
    ]
    before = machine.snapshot()
    for index, command in enumerate(refused, start=6):
        assert machine.apply(index, command).error == ErrorCode.ROOT_REQUIRED
    # Nothing changed but the applied index.
    after = KVStateMachine.restore_bytes(machine.snapshot())
    assert after.auth == KVStateMachine.restore_bytes(before).auth
    # Once disabled, root may go.
    machine.apply(10, encode_auth_enable(False))
    assert machine.apply(11, encode_auth_user_delete(ROOT_USER)).ok


def test_users_need_existing_roles_and_a_password_when_new() -> None:
    machine = enabled_machine()
    assert machine.apply(6, encode_auth_user_put("bob", HASH, ["nope"])).error == (
        ErrorCode.ROLE_NOT_FOUND
    )
    assert machine.apply(7, encode_auth_user_put("bob", None, [])).error == ErrorCode.BAD_AUTH
    assert machine.apply(8, encode_auth_user_delete("bob")).error == ErrorCode.USER_NOT_FOUND
    assert machine.apply(9, encode_auth_role_delete("nope")).error == ErrorCode.ROLE_NOT_FOUND


def test_the_generation_is_the_index_that_last_set_the_password() -> None:
    machine = enabled_machine()
    assert machine.auth.generation_of("alice") == 4
    machine.apply(6, encode_auth_user_put("alice", None, []))  # roles only
    assert machine.auth.generation_of("alice") == 4
    machine.apply(7, encode_auth_user_put("alice", HASH, ["app"]))  # a new password
    assert machine.auth.generation_of("alice") == 7
    machine.apply(8, encode_auth_user_delete("alice"))
    machine.apply(9, encode_auth_user_put("alice", HASH, ["app"]))
    assert machine.auth.generation_of("alice") == 9


def test_deleting_a_role_takes_it_from_its_users() -> None:
    machine = enabled_machine()
    assert machine.apply(6, encode_auth_role_delete("app")).ok
    assert machine.auth.users["alice"].roles == ()
    assert not machine.auth.allows_key("alice", "app/x", write=False)


def test_permissions_by_prefix_and_ranges() -> None:
    auth = enabled_machine().auth
    assert auth.allows_key("alice", "app/x", write=True)
    assert auth.allows_key("pub/x", "pub/x", write=False) is False  # not a user
    assert auth.allows_key("alice", "pub/x", write=False)
    assert not auth.allows_key("alice", "pub/x", write=True)
    assert not auth.allows_key("alice", "secret", write=False)
    # A range must lie inside one permission: app/sub is, app (broader) is not.
    assert auth.allows_range("alice", "app/sub", write=True)
    assert not auth.allows_range("alice", "app", write=False)
    assert not auth.allows_range("alice", "", write=False)
    assert auth.allows_range(ROOT_USER, "", write=True)  # admin: everything
    assert auth.may_write_somewhere("alice") and auth.is_admin(ROOT_USER)


def test_bad_commands_never_reach_the_log() -> None:
    for bad in (
        lambda: encode_auth_user_put("", HASH, []),
        lambda: encode_auth_user_put("a/b", HASH, []),
        lambda: encode_auth_user_put("x" * 200, HASH, []),
        lambda: encode_auth_user_put("bob", HASH, ["r", "r"]),
        lambda: encode_auth_role_put("r", False, [Permission("a", "write")]),
        lambda: encode_auth_role_put("r", False, [Permission("a", "read")] * 2),
        lambda: encode_auth_enable(True, b"x" * 100),
    ):
        with pytest.raises(CommandError):
            bad()


def test_garbage_auth_entries_change_nothing() -> None:
    machine = enabled_machine()
    before = machine.auth.to_wire()
    for index, command in enumerate(
        [
            pack([10, "bob", [1, 1, 1, b"s", b"d"], []]),  # a bad hash
            pack([10, "bob", [2**30, 8, 1, b"s" * 16, b"d" * 32], []]),  # huge scrypt
            pack([12, "r", "yes", []]),
            pack([14, True]),
            pack([11]),
        ],
        start=6,
    ):
        result = machine.apply(index, command)
        assert not result.ok and result.error is not None
    assert machine.auth.to_wire() == before


def test_auth_survives_a_snapshot_and_stays_identical() -> None:
    machine = enabled_machine()
    machine.apply(6, encode_put("app/x", b"1"))
    restored = KVStateMachine.restore_bytes(machine.snapshot())
    assert restored.snapshot() == machine.snapshot()
    assert restored.auth == machine.auth
    assert restored.auth.enabled and restored.auth.signing_key == KEY
    for one in (machine, restored):
        one.apply(7, encode_auth_user_delete("alice"))
    assert restored.snapshot() == machine.snapshot()


def crafted(auth: Any, *, version: int = 5, applied_index: int = 9, frames: int = 1) -> bytes:
    header = ["kvraft-kv-snapshot", version, applied_index, 0, 0, 0, 0]
    parts = [frame(0, pack(header))]
    parts += [frame(6, pack(auth))] * frames
    parts.append(frame(3, b""))
    return b"".join(parts)


HASH_WIRE = HASH.wire()
GOOD = [
    True,
    KEY,
    [["alice", 4, HASH_WIRE, ["app"]], ["root", 3, HASH_WIRE, ["admin"]]],
    [["admin", True, []], ["app", False, ["app/", "readwrite"]]],
]


def test_a_crafted_snapshot_with_consistent_auth_restores() -> None:
    machine = KVStateMachine.restore_bytes(crafted(GOOD))
    assert machine.auth.enabled and machine.auth.allows_key("alice", "app/1", write=True)


def with_(position: int, value: Any) -> list[Any]:
    copy = list(GOOD)
    copy[position] = value
    return copy


@pytest.mark.parametrize(
    "auth",
    [
        with_(1, b""),  # enabled without a key
        with_(0, False),  # a key while disabled
        with_(2, [["root", 3, HASH_WIRE, ["admin"]], ["alice", 4, HASH_WIRE, ["app"]]]),
        with_(2, [["alice", 4, HASH_WIRE, ["ghost"]], ["root", 3, HASH_WIRE, ["admin"]]]),
        with_(2, [["alice", 10, HASH_WIRE, ["app"]], ["root", 3, HASH_WIRE, ["admin"]]]),
        with_(2, [["alice", 4, [1, 2, 3], ["app"]], ["root", 3, HASH_WIRE, ["admin"]]]),
        with_(2, [["alice", 4, HASH_WIRE, ["app"]]]),  # enabled without root
        with_(3, [["app", False, ["app/", "readwrite"]], ["admin", True, []]]),
        with_(3, [["admin", True, []], ["app", False, ["app/", "all"]]]),
        [True, KEY, []],  # wrong shape
    ],
)
def test_a_snapshot_with_inconsistent_auth_is_refused(auth: Any) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(crafted(auth))


def test_a_version_5_snapshot_needs_exactly_one_auth_frame() -> None:
    for frames in (0, 2):
        with pytest.raises(SnapshotFormatError):
            KVStateMachine.restore_bytes(crafted(GOOD, frames=frames))


def test_a_version_4_snapshot_restores_with_auth_off_and_refuses_an_auth_frame() -> None:
    header = ["kvraft-kv-snapshot", 4, 9, 0, 0, 0, 0]
    machine = KVStateMachine.restore_bytes(frame(0, pack(header)) + frame(3, b""))
    assert machine.auth == AuthState()
    with pytest.raises(SnapshotFormatError):
        KVStateMachine.restore_bytes(crafted(GOOD, version=4))


# --- tokens, passwords, the login limiter ---------------------------------------------------


def test_passwords_verify_in_constant_time_terms() -> None:
    assert verify_password(HASH, PASSWORD)
    assert not verify_password(HASH, PASSWORD + "x")
    assert not verify_password(None, PASSWORD)  # an unknown user costs a hash too


def test_tokens_verify_expire_and_need_the_key() -> None:
    token = sign_token(KEY, "alice", 4, expires_ms=10_000)
    assert verify_token(KEY, token, now_ms=9_999) == ("alice", 4)
    with pytest.raises(TokenError, match="expired"):
        verify_token(KEY, token, now_ms=10_000)
    with pytest.raises(TokenError, match="not valid"):
        verify_token(b"o" * SIGNING_KEY_BYTES, token, now_ms=0)
    prefix, _payload, mac = token.split(".")
    forged = sign_token(KEY, "root", 3, 10_000).split(".")[1]
    for bad in (f"{prefix}.{forged}.{mac}", token + "x", "kv1..", "garbage", "é" * 10):
        with pytest.raises(TokenError):
            verify_token(KEY, bad, now_ms=0)
    with pytest.raises(TokenError):
        verify_token(b"", token, now_ms=0)


def test_failed_logins_are_limited_per_user_and_per_address() -> None:
    limiter = LoginLimiter(burst=3, refill_s=2.0, entries_max=4)
    for _ in range(3):
        assert limiter.retry_after_s("alice", "1.1.1.1", 0.0) == 0
        limiter.record_failure("alice", "1.1.1.1", 0.0)
    assert limiter.retry_after_s("alice", "2.2.2.2", 0.0) == pytest.approx(2.0)
    assert limiter.retry_after_s("bob", "1.1.1.1", 0.0) == pytest.approx(2.0)
    assert limiter.retry_after_s("bob", "2.2.2.2", 0.0) == 0
    assert limiter.retry_after_s("alice", "1.1.1.1", 2.0) == 0  # one attempt back
    # Bounded: the least recently failed buckets go first.
    for n in range(10):
        limiter.record_failure(f"u{n}", f"a{n}", 3.0)
    assert len(limiter._buckets) == 4
