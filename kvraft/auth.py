"""Users, roles, tokens and permissions: the pure part of authentication (issue #20).

Theory of operation
-------------------
Who may do what is *replicated state*: users (a salted scrypt hash of their password, their
roles and a *generation*), roles (an `admin` flag and `read` / `readwrite` permissions on key
prefixes), whether authentication is enabled and the key that signs tokens. All of it lives
in an `AuthState` inside `kvraft.statemachine.KVStateMachine`, changes only by committed log
entries (``OP_AUTH_*``), at the same index on every node, and travels in snapshots (one AUTH
frame, snapshot format 5). Applying an entry needs no clock and no randomness: the node that
receives a request draws the password's salt and computes its scrypt hash (`hash_password`)
and, when authentication is enabled, draws the signing key (`SIGNING_KEY_BYTES` from
`secrets`, in `kvraft.http_api`); the entry carries the results and apply only stores them.
This module draws no randomness and reads no clock (a test checks its imports).

A user's generation is the log index of the entry that last set its password, so deleting a
user, re-creating it or changing its password gives it a new generation and every token
signed for the old one stops verifying, on every node alike.

Tokens (`sign_token` / `verify_token`) are ``kv1.<payload>.<mac>``, both base64url: the payload
is JSON ``[user, generation, expires_ms]`` and the MAC is HMAC-SHA256 under the cluster's
signing key. A token is checked against the verifying node's wall clock (expiry is not state)
and its own applied state (the user and the generation must still be there). Every secret is
compared with `hmac.compare_digest`.

Permissions: a role's permission ``(prefix, access)`` covers every key that starts with
``prefix`` (``""``: every key). A key is readable if some permission covers it, writable if some
``readwrite`` permission covers it. A *range* (a listing, a watch, a range delete, a
transaction's list or delete_prefix of prefix P) is allowed only when one permission covers
all of it, that is when the permission's prefix is a prefix of P: a broader range is refused
(etcd's rule for ranges and watches), never silently narrowed. `admin` allows everything:
every key, membership, leadership transfer, backup, and auth itself.

Failed logins are rate limited (`LoginLimiter`: token buckets per user name and per source
address, in the daemon's monotonic time, which the caller passes in). Nothing here does IO or
reads a clock on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "ACCESS_READ",
    "ACCESS_READWRITE",
    "AUTH_NAME_BYTES_MAX",
    "AUTH_ROLES_MAX",
    "AUTH_USERS_MAX",
    "LOGIN_FAILURES_BURST",
    "LOGIN_FAILURE_REFILL_S",
    "LOGIN_LIMITER_ENTRIES_MAX",
    "PASSWORD_BYTES_MAX",
    "PASSWORD_HASHES_CONCURRENT_MAX",
    "ROLE_PERMISSIONS_MAX",
    "ROOT_USER",
    "SALT_BYTES",
    "SIGNING_KEY_BYTES",
    "TOKEN_TTL_S_DEFAULT",
    "USER_ROLES_MAX",
    "AuthRefused",
    "AuthState",
    "LoginLimiter",
    "PasswordHash",
    "Permission",
    "Role",
    "TokenError",
    "User",
    "hash_password",
    "sign_token",
    "verify_password",
    "verify_token",
]

# --- Limits ---------------------------------------------------------------------------------

ROOT_USER = "root"
"""The user that must exist, with a role granting `admin`, before auth can be enabled (and
that cannot be deleted or lose `admin` while auth is enabled): the way back in."""

AUTH_NAME_BYTES_MAX = 128
"""The longest user or role name, in UTF-8 bytes."""

AUTH_USERS_MAX = 1000
"""The most users. With `USER_ROLES_MAX` and `AUTH_NAME_BYTES_MAX` this keeps the users
within about 4 MiB, so the whole auth state fits one snapshot frame."""

AUTH_ROLES_MAX = 256
"""The most roles (with `ROLE_PERMISSIONS_MAX` prefixes of at most 1 KiB: 8 MiB at most)."""

USER_ROLES_MAX = 32
"""The most roles one user has."""

ROLE_PERMISSIONS_MAX = 32
"""The most permissions one role has."""

PASSWORD_BYTES_MAX = 1024
"""The longest password, in UTF-8 bytes (scrypt reads all of it)."""

TOKEN_TTL_S_DEFAULT = 600
"""How long a token from ``POST /v1/auth/token`` is valid: 10 minutes. Short, because a
token cannot be revoked by itself (only by deleting its user or changing the password)."""

SIGNING_KEY_BYTES = 32
"""The size of the cluster's token signing key (HMAC-SHA256's block-sized key)."""

LOGIN_FAILURES_BURST = 5
"""Failed logins a user name, or a source address, may have in a row before it must wait."""

LOGIN_FAILURE_REFILL_S = 2.0
"""After the burst, one more attempt per user name and per address every this many seconds."""

PASSWORD_HASHES_CONCURRENT_MAX = 2
"""scrypt hashes a node computes at once (logins and password changes); more wait their
turn. Each takes 16 MiB and a core for about 50 ms: logins from many addresses at once must
not take every core and the memory from the Raft work."""

LOGIN_LIMITER_ENTRIES_MAX = 10_000
"""Buckets the limiter keeps (the least recently failed go first): memory stays bounded
however many names or addresses try."""

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
"""scrypt's cost (16 MiB, about 50 ms on this project's machine): the hash is computed once
when a password is set and once per login, never per request (requests carry tokens)."""

_SCRYPT_MEMORY_BYTES_MAX = 64 * 1024 * 1024
"""The most memory a stored hash's parameters may ask for (a hostile or corrupt entry must not
make every login allocate gigabytes)."""

SALT_BYTES = 16
"""The size of a password salt the receiving node draws."""
_HASH_BYTES = 32
_TOKEN_PREFIX = "kv1"
_TOKEN_BYTES_MAX = 4096
_MAC_CONTEXT = b"kvraft-token-v1\x00"

ACCESS_READ = "read"
ACCESS_READWRITE = "readwrite"
_ACCESSES = (ACCESS_READ, ACCESS_READWRITE)


class AuthRefused(ValueError):
    """A user/role/enable entry or request that cannot apply: `code` is the statemachine's
    `ErrorCode` value (``bad_auth``, ``user_not_found``, ``role_not_found``,
    ``root_required``), the message says why without any secret in it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TokenError(ValueError):
    """A bearer token does not verify; the message says why, for the client (no secret)."""


# --- Values ---------------------------------------------------------------------------------


class PasswordHash(NamedTuple):
    """A salted scrypt hash and the parameters it was made with."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def wire(self) -> list[Any]:
        return [self.n, self.r, self.p, self.salt, self.digest]


class Permission(NamedTuple):
    """`access` ("read" or "readwrite") on every key starting with `prefix`."""

    prefix: str
    access: str


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    admin: bool = False
    permissions: tuple[Permission, ...] = ()


@dataclass(frozen=True, slots=True)
class User:
    """`generation`: the log index that last set the password (tokens name it)."""

    name: str
    password: PasswordHash
    generation: int
    roles: tuple[str, ...] = ()


# --- Validation -----------------------------------------------------------------------------


def check_name(name: object, what: str) -> str:
    """A user or role name: a non-empty str of at most `AUTH_NAME_BYTES_MAX` UTF-8 bytes,
    printable, without "/" (it is a path segment)."""
    if not isinstance(name, str) or not name:
        raise AuthRefused("bad_auth", f"a {what} name must be a non-empty string")
    if len(name) > AUTH_NAME_BYTES_MAX or not name.isprintable() or "/" in name:
        raise AuthRefused(
            "bad_auth",
            f"a {what} name must be printable, without '/', at most {AUTH_NAME_BYTES_MAX} bytes",
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise AuthRefused("bad_auth", f"a {what} name must be valid Unicode") from None
    if size > AUTH_NAME_BYTES_MAX:
        raise AuthRefused("bad_auth", f"a {what} name is over {AUTH_NAME_BYTES_MAX} bytes")
    return name


def check_password_hash(raw: object) -> PasswordHash:
    if not isinstance(raw, list | tuple) or len(raw) != 5:
        raise AuthRefused("bad_auth", "a password hash must be [n, r, p, salt, digest]")
    n, r, p, salt, digest = raw
    if (
        type(n) is not int
        or type(r) is not int
        or type(p) is not int
        or not 2 <= n <= 2**20
        or n & (n - 1)
        or not 1 <= r <= 32
        or not 1 <= p <= 16
        or 128 * n * r * p > _SCRYPT_MEMORY_BYTES_MAX
    ):
        raise AuthRefused("bad_auth", "a password hash has out-of-range scrypt parameters")
    if not isinstance(salt, bytes) or not 16 <= len(salt) <= 64:
        raise AuthRefused("bad_auth", "a password salt must be 16..64 bytes")
    if not isinstance(digest, bytes) or len(digest) != _HASH_BYTES:
        raise AuthRefused("bad_auth", f"a password digest must be {_HASH_BYTES} bytes")
    return PasswordHash(n, r, p, salt, digest)


def check_prefix(prefix: object) -> str:
    if (
        not isinstance(prefix, str)
        or "\x00" in prefix
        or len(prefix) > 1024
        or len(prefix.encode("utf-8", "surrogatepass")) > 1024
    ):
        raise AuthRefused("bad_auth", "a permission prefix must be a key prefix of <= 1 KiB")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise AuthRefused("bad_auth", "a permission prefix must be valid Unicode") from None
    return prefix


def check_permissions(raw: object) -> tuple[Permission, ...]:
    """Permissions from their wire form ``[prefix, access, prefix, access, ...]``."""
    if not isinstance(raw, list | tuple) or len(raw) % 2:
        raise AuthRefused("bad_auth", "permissions must be [prefix, access, ...]")
    if len(raw) > 2 * ROLE_PERMISSIONS_MAX:
        raise AuthRefused("bad_auth", f"a role has at most {ROLE_PERMISSIONS_MAX} permissions")
    permissions = []
    for position in range(0, len(raw), 2):
        prefix, access = raw[position], raw[position + 1]
        if access not in _ACCESSES:
            raise AuthRefused("bad_auth", "a permission's access must be 'read' or 'readwrite'")
        permissions.append(Permission(check_prefix(prefix), access))
    if len(set(permissions)) != len(permissions):
        raise AuthRefused("bad_auth", "a role names one permission twice")
    return tuple(permissions)


def check_role_names(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple):
        raise AuthRefused("bad_auth", "roles must be a list of role names")
    if len(raw) > USER_ROLES_MAX:
        raise AuthRefused("bad_auth", f"a user has at most {USER_ROLES_MAX} roles")
    names = tuple(check_name(name, "role") for name in raw)
    if len(set(names)) != len(names):
        raise AuthRefused("bad_auth", "a user names one role twice")
    return tuple(sorted(names))


def permissions_wire(permissions: Iterable[Permission]) -> list[str]:
    flat: list[str] = []
    for permission in permissions:
        flat.extend((permission.prefix, permission.access))
    return flat


# --- Passwords, keys and tokens (the receiving node's side: salt, clock) ---------------------


def hash_password(password: str, salt: bytes) -> PasswordHash:
    """Hash `password` with scrypt and `salt` (`SALT_BYTES` random bytes the receiving node
    draws; CPU-heavy: call it off the event loop)."""
    return PasswordHash(
        SCRYPT_N,
        SCRYPT_R,
        SCRYPT_P,
        salt,
        _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P),
    )


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_SCRYPT_MEMORY_BYTES_MAX + 1024 * 1024,
        dklen=_HASH_BYTES,
    )


_DUMMY_HASH = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\x00" * SALT_BYTES, b"\x00" * 32)


def verify_password(stored: PasswordHash | None, password: str) -> bool:
    """Whether `password` matches `stored`, in constant time; an unknown user (`stored`
    None) costs the same scrypt, so timing does not tell which user names exist."""
    hashed = stored if stored is not None else _DUMMY_HASH
    digest = _scrypt(password, hashed.salt, hashed.n, hashed.r, hashed.p)
    return hmac.compare_digest(digest, hashed.digest) and stored is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(signing_key: bytes, payload: bytes) -> bytes:
    return hmac.new(signing_key, _MAC_CONTEXT + payload, hashlib.sha256).digest()


def sign_token(signing_key: bytes, user: str, generation: int, expires_ms: int) -> str:
    """A bearer token for `user` (of `generation`) valid until `expires_ms` (wall clock)."""
    payload = json.dumps([user, generation, expires_ms], separators=(",", ":")).encode()
    return f"{_TOKEN_PREFIX}.{_b64(payload)}.{_b64(_mac(signing_key, payload))}"


def verify_token(signing_key: bytes, token: str, now_ms: int) -> tuple[str, int]:
    """(user, generation) that `token` names, if its MAC verifies under `signing_key` and it
    has not expired at `now_ms`; `TokenError` otherwise. The caller checks that the user still
    has that generation."""
    invalid = TokenError(
        "the token is not valid (malformed, or not signed by this cluster's current key)"
    )
    if len(token) > _TOKEN_BYTES_MAX or not token.isascii():
        raise invalid
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _TOKEN_PREFIX or not signing_key:
        raise invalid
    try:
        payload, mac = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise invalid from None
    if not hmac.compare_digest(mac, _mac(signing_key, payload)):
        raise invalid
    try:
        user, generation, expires_ms = json.loads(payload)
    except (ValueError, TypeError):
        raise invalid from None
    if not isinstance(user, str) or type(generation) is not int or type(expires_ms) is not int:
        raise invalid
    if expires_ms <= now_ms:
        raise TokenError("the token has expired: get a new one from POST /v1/auth/token")
    return user, generation


# --- The replicated state -------------------------------------------------------------------


@dataclass(slots=True)
class AuthState:
    """Users, roles, the enabled flag and the signing key, as every node holds them.

    Every `apply_*` method is deterministic (its arguments were validated and decoded from
    the log entry) and either changes the state or raises `AuthRefused` having changed nothing.
    """

    enabled: bool = False
    signing_key: bytes = b""
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)

    # --- queries ------------------------------------------------------------------------

    def is_admin(self, user: str) -> bool:
        found = self.users.get(user)
        if found is None:
            return False
        return any(
            (role := self.roles.get(name)) is not None and role.admin for name in found.roles
        )

    def permissions_of(self, user: str) -> list[Permission]:
        found = self.users.get(user)
        if found is None:
            return []
        permissions: list[Permission] = []
        for name in found.roles:
            role = self.roles.get(name)
            if role is not None:
                permissions.extend(role.permissions)
        return permissions

    def allows_key(self, user: str, key: str, *, write: bool) -> bool:
        if self.is_admin(user):
            return True
        return any(
            key.startswith(p.prefix) and (not write or p.access == ACCESS_READWRITE)
            for p in self.permissions_of(user)
        )

    def allows_range(self, user: str, prefix: str, *, write: bool) -> bool:
        """One permission covers every key under `prefix` (its prefix is a prefix of it)."""
        return self.allows_key(user, prefix, write=write)

    def may_write_somewhere(self, user: str) -> bool:
        return self.is_admin(user) or any(
            p.access == ACCESS_READWRITE for p in self.permissions_of(user)
        )

    def generation_of(self, user: str) -> int | None:
        found = self.users.get(user)
        return None if found is None else found.generation

    def _root_is_admin(self, users: dict[str, User], roles: dict[str, Role]) -> bool:
        root = users.get(ROOT_USER)
        return root is not None and any(
            (role := roles.get(name)) is not None and role.admin for name in root.roles
        )

    # --- apply (committed entries only) -------------------------------------------------

    def apply_user_put(
        self, index: int, name: str, password: PasswordHash | None, roles: tuple[str, ...]
    ) -> None:
        existing = self.users.get(name)
        for role in roles:
            if role not in self.roles:
                raise AuthRefused("role_not_found", f"role {role!r} does not exist")
        if existing is None:
            if password is None:
                raise AuthRefused("bad_auth", f"user {name!r} is new: it needs a password")
            if len(self.users) >= AUTH_USERS_MAX:
                raise AuthRefused("bad_auth", f"there are {AUTH_USERS_MAX} users already")
            user = User(name, password, index, roles)
        elif password is None:
            user = User(name, existing.password, existing.generation, roles)
        else:
            user = User(name, password, index, roles)
        if self.enabled and name == ROOT_USER:
            self._keep_root_admin({**self.users, name: user}, self.roles)
        self.users[name] = user

    def apply_user_delete(self, name: str) -> None:
        if name not in self.users:
            raise AuthRefused("user_not_found", f"user {name!r} does not exist")
        if self.enabled and name == ROOT_USER:
            raise AuthRefused(
                "root_required", "user 'root' cannot be deleted while auth is enabled"
            )
        del self.users[name]

    def apply_role_put(self, name: str, admin: bool, permissions: tuple[Permission, ...]) -> None:
        if name not in self.roles and len(self.roles) >= AUTH_ROLES_MAX:
            raise AuthRefused("bad_auth", f"there are {AUTH_ROLES_MAX} roles already")
        role = Role(name, admin, permissions)
        if self.enabled:
            self._keep_root_admin(self.users, {**self.roles, name: role})
        self.roles[name] = role

    def apply_role_delete(self, name: str) -> None:
        if name not in self.roles:
            raise AuthRefused("role_not_found", f"role {name!r} does not exist")
        roles = {k: v for k, v in self.roles.items() if k != name}
        if self.enabled:
            self._keep_root_admin(self.users, roles)
        self.roles = roles
        # Users lose the role, in name order (the order does not matter, but stays defined).
        for user_name in sorted(self.users):
            user = self.users[user_name]
            if name in user.roles:
                kept = tuple(r for r in user.roles if r != name)
                self.users[user_name] = User(user.name, user.password, user.generation, kept)

    def apply_enable(self, enabled: bool, signing_key: bytes) -> None:
        if not enabled:
            self.enabled, self.signing_key = False, b""
            return
        if self.enabled:
            return  # a repeated enable keeps the key, so tokens already given stay valid
        if not self._root_is_admin(self.users, self.roles):
            raise AuthRefused(
                "root_required",
                "enabling auth needs a user 'root' with a role that has admin",
            )
        if len(signing_key) != SIGNING_KEY_BYTES:
            raise AuthRefused("bad_auth", f"a signing key must be {SIGNING_KEY_BYTES} bytes")
        self.enabled, self.signing_key = True, signing_key

    def _keep_root_admin(self, users: dict[str, User], roles: dict[str, Role]) -> None:
        if not self._root_is_admin(users, roles):
            raise AuthRefused(
                "root_required",
                "user 'root' must keep a role with admin while auth is enabled",
            )

    # --- snapshots (the AUTH frame's payload) -----------------------------------------------

    def to_wire(self) -> list[Any]:
        """``[enabled, signing_key, users, roles]``: users ``[name, generation, hash,
        roles]`` and roles ``[name, admin, permissions]``, each in name order."""
        return [
            self.enabled,
            self.signing_key,
            [
                [u.name, u.generation, u.password.wire(), list(u.roles)]
                for u in (self.users[name] for name in sorted(self.users))
            ],
            [
                [r.name, r.admin, permissions_wire(r.permissions)]
                for r in (self.roles[name] for name in sorted(self.roles))
            ],
        ]

    @classmethod
    def from_wire(cls, raw: object, applied_index: int) -> AuthState:
        """The state an AUTH frame holds; `ValueError` (an `AuthRefused`) on anything wrong."""
        if not isinstance(raw, list) or len(raw) != 4:
            raise AuthRefused("bad_auth", "auth state must be [enabled, key, users, roles]")
        enabled, signing_key, raw_users, raw_roles = raw
        if type(enabled) is not bool or not isinstance(signing_key, bytes):
            raise AuthRefused("bad_auth", "auth state flag or key has the wrong type")
        if len(signing_key) != (SIGNING_KEY_BYTES if enabled else 0):
            raise AuthRefused("bad_auth", "auth signing key does not match the enabled flag")
        if not isinstance(raw_roles, list) or len(raw_roles) > AUTH_ROLES_MAX:
            raise AuthRefused("bad_auth", "auth roles must be a list within the limit")
        if not isinstance(raw_users, list) or len(raw_users) > AUTH_USERS_MAX:
            raise AuthRefused("bad_auth", "auth users must be a list within the limit")
        state = cls()
        for record in raw_roles:
            if not isinstance(record, list) or len(record) != 3 or type(record[1]) is not bool:
                raise AuthRefused("bad_auth", "a role record must be [name, admin, permissions]")
            name = check_name(record[0], "role")
            if state.roles and name <= next(reversed(state.roles)):
                raise AuthRefused("bad_auth", "role names are not in increasing order")
            state.roles[name] = Role(name, record[1], check_permissions(record[2]))
        for record in raw_users:
            if not isinstance(record, list) or len(record) != 4:
                raise AuthRefused("bad_auth", "a user record must be [name, gen, hash, roles]")
            name = check_name(record[0], "user")
            if state.users and name <= next(reversed(state.users)):
                raise AuthRefused("bad_auth", "user names are not in increasing order")
            generation = record[1]
            if type(generation) is not int or not 1 <= generation <= applied_index:
                raise AuthRefused("bad_auth", "a user's generation is out of range")
            roles = check_role_names(record[3])
            for role in roles:
                if role not in state.roles:
                    raise AuthRefused("bad_auth", f"user {name!r} names an absent role")
            if list(roles) != record[3]:
                raise AuthRefused("bad_auth", "a user's roles are not in order")
            state.users[name] = User(name, check_password_hash(record[2]), generation, roles)
        if enabled and not state._root_is_admin(state.users, state.roles):
            raise AuthRefused("bad_auth", "auth is enabled without a root user with admin")
        state.enabled, state.signing_key = enabled, signing_key
        return state

    # --- what the API shows (no hashes, no key) ------------------------------------------

    def users_json(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "roles": list(self.users[name].roles)} for name in sorted(self.users)
        ]

    def roles_json(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "admin": self.roles[name].admin,
                "permissions": [
                    {"prefix": p.prefix, "access": p.access} for p in self.roles[name].permissions
                ],
            }
            for name in sorted(self.roles)
        ]


# --- Failed logins --------------------------------------------------------------------------


class LoginLimiter:
    """Token buckets of failed logins, per user name and per source address.

    Each bucket holds `burst` attempts and regains one every `refill_s`; only failures take
    one. `retry_after_s` says how long the caller must wait (0: it may try now). Time is the
    caller's monotonic clock, in seconds.
    """

    def __init__(
        self,
        burst: int = LOGIN_FAILURES_BURST,
        refill_s: float = LOGIN_FAILURE_REFILL_S,
        entries_max: int = LOGIN_LIMITER_ENTRIES_MAX,
    ) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.entries_max = entries_max
        # (kind, name) -> (tokens, at_s); the least recently failed first.
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def _tokens(self, bucket: tuple[str, str], now_s: float) -> float:
        found = self._buckets.get(bucket)
        if found is None:
            return float(self.burst)
        tokens, at_s = found
        return min(float(self.burst), tokens + (now_s - at_s) / self.refill_s)

    def retry_after_s(self, user: str, address: str, now_s: float) -> float:
        wait_s = 0.0
        for bucket in (("user", user), ("address", address)):
            tokens = self._tokens(bucket, now_s)
            if tokens < 1.0:
                wait_s = max(wait_s, (1.0 - tokens) * self.refill_s)
        return wait_s

    def record_failure(self, user: str, address: str, now_s: float) -> None:
        for bucket in (("user", user), ("address", address)):
            tokens = max(self._tokens(bucket, now_s) - 1.0, 0.0)
            self._buckets[bucket] = (tokens, now_s)
            self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.entries_max:
            self._buckets.popitem(last=False)
