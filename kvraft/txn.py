"""Transactions for clients: a small builder, the `POST /v1/txn` body, its answer, and the
command line's one-line forms. Sans-IO: `kvraft.client` sends what this module builds.

The builder reads like python-etcd3's `transaction(compare=..., success=..., failure=...)`::

    from kvraft import txn
    t = (
        txn.Txn()
        .compare(txn.revision("acct/a") == 5, txn.value("flag") != b"off")
        .then(txn.put("acct/a", b"70"), txn.put("acct/b", b"30"))
        .else_(txn.get("acct/a"))
    )
    answer = client.txn(t)  # TxnAnswer(succeeded, revision, results)

`revision(key)`, `value(key)` and `exists(key)` make compares with `==`, `!=`, `<` and `>`
(`exists` with `==`/`!=` only; `present(key)` and `absent(key)` say it shorter). The server's
rules (`kvraft.statemachine.TxnCommand`): the compares are evaluated and one branch applied as
one log entry at one revision; no branch writes a key twice; at most `TXN_OPERATIONS_MAX`
compares and operations and `TXN_BYTES_MAX` bytes of keys and values.

On the command line (`kvraft txn --if 'rev(a)==5' --then 'put a 1' --else 'get a'`) a compare
is ``rev(KEY)``, ``value(KEY)`` or ``exists(KEY)``, an operator and a value (an integer, text
or true/false), and an operation is ``put KEY VALUE``, ``del KEY``, ``delprefix PREFIX``,
``get KEY`` or ``list PREFIX [LIMIT]`` (split like a shell line, so quote spaces).
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvraft.statemachine import LIST_LIMIT_MAX, TXN_BYTES_MAX, TXN_OPERATIONS_MAX

__all__ = [
    "LIST_LIMIT_DEFAULT",
    "TXN_BYTES_MAX",
    "TXN_OPERATIONS_MAX",
    "Txn",
    "TxnAnswer",
    "TxnCompare",
    "TxnOp",
    "TxnOpResult",
    "TxnSyntaxError",
    "absent",
    "delete",
    "delete_prefix",
    "exists",
    "get",
    "list_prefix",
    "parse_compare",
    "parse_operation",
    "parse_txn_answer",
    "present",
    "put",
    "revision",
    "txn_from_json",
    "value",
]

LIST_LIMIT_DEFAULT = 100
"""A transaction's `list` returns this many keys when no limit is given (as the server)."""

_OPERATORS = ("==", "!=", "<", ">")


class TxnSyntaxError(ValueError):
    """A transaction (a builder call, a JSON body or a command-line form) is malformed."""


@dataclass(frozen=True, slots=True)
class TxnCompare:
    """`target(key) op value`, as `POST /v1/txn` takes it."""

    key: str
    target: str
    op: str
    value: int | bytes | bool

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": self.key, "target": self.target, "op": self.op}
        if isinstance(self.value, bytes):
            body["value_b64"] = base64.b64encode(self.value).decode("ascii")
        else:
            body["value"] = self.value
        return body


class _Target:
    """`revision(key)`, `value(key)` or `exists(key)`, waiting for an operator."""

    __slots__ = ("_key", "_target")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, key: str, target: str) -> None:
        if not isinstance(key, str) or not key:
            raise TxnSyntaxError("a compare's key must be a non-empty string")
        self._key = key
        self._target = target

    def _compare(self, op: str, other: object) -> TxnCompare:
        if self._target == "revision":
            if type(other) is not int or other < 0:
                raise TxnSyntaxError("a revision compares with an integer >= 0")
            return TxnCompare(self._key, self._target, op, other)
        if self._target == "value":
            if isinstance(other, str):
                other = other.encode("utf-8")
            if not isinstance(other, bytes):
                raise TxnSyntaxError("a value compares with bytes or text")
            return TxnCompare(self._key, self._target, op, other)
        if type(other) is not bool or op not in ("==", "!="):
            raise TxnSyntaxError("exists compares with == or != and True or False")
        return TxnCompare(self._key, self._target, op, other)

    def __eq__(self, other: object) -> TxnCompare:  # type: ignore[override]
        return self._compare("==", other)

    def __ne__(self, other: object) -> TxnCompare:  # type: ignore[override]
        return self._compare("!=", other)

    def __lt__(self, other: object) -> TxnCompare:
        return self._compare("<", other)

    def __gt__(self, other: object) -> TxnCompare:
        return self._compare(">", other)


def revision(key: str) -> _Target:
    """The key's revision (0 when absent), for a compare: `revision("a") == 5`."""
    return _Target(key, "revision")


def value(key: str) -> _Target:
    """The key's value, for a compare: `value("a") == b"x"` (false for an absent key)."""
    return _Target(key, "value")


def exists(key: str) -> _Target:
    """Whether the key exists, for a compare: `exists("a") != True`."""
    return _Target(key, "exists")


def present(key: str) -> TxnCompare:
    """The compare "the key exists"."""
    return TxnCompare(key, "exists", "==", True)


def absent(key: str) -> TxnCompare:
    """The compare "the key does not exist"."""
    return TxnCompare(key, "exists", "==", False)


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One operation of a branch; build it with `put`, `delete`, `delete_prefix`, `get` or
    `list_prefix`."""

    op: str
    key: str = ""
    value: bytes = b""
    limit: int = LIST_LIMIT_DEFAULT

    @property
    def writes(self) -> bool:
        return self.op in ("put", "delete", "delete_prefix")

    def to_json(self) -> dict[str, Any]:
        if self.op == "put":
            encoded = base64.b64encode(self.value).decode("ascii")
            return {"op": "put", "key": self.key, "value_b64": encoded}
        if self.op == "delete_prefix":
            return {"op": "delete_prefix", "prefix": self.key}
        if self.op == "list":
            return {"op": "list", "prefix": self.key, "limit": self.limit}
        return {"op": self.op, "key": self.key}


def _key(key: object, what: str = "key", *, allow_empty: bool = False) -> str:
    if not isinstance(key, str) or (not key and not allow_empty):
        raise TxnSyntaxError(f"a {what} must be a {'' if allow_empty else 'non-empty '}string")
    return key


def put(key: str, data: bytes) -> TxnOp:
    """Set `key` to `data`."""
    if not isinstance(data, bytes | bytearray):
        raise TxnSyntaxError("a put's value must be bytes")
    return TxnOp("put", _key(key), bytes(data))


def delete(key: str) -> TxnOp:
    """Remove `key` (its result says whether it existed)."""
    return TxnOp("delete", _key(key))


def delete_prefix(prefix: str) -> TxnOp:
    """Remove every key starting with `prefix` ("" is every key); the result is the count."""
    return TxnOp("delete_prefix", _key(prefix, "prefix", allow_empty=True))


def get(key: str) -> TxnOp:
    """Read `key` as the transaction sees it."""
    return TxnOp("get", _key(key))


def list_prefix(prefix: str, limit: int = LIST_LIMIT_DEFAULT) -> TxnOp:
    """Read up to `limit` keys starting with `prefix`, in key order."""
    if type(limit) is not int or not 1 <= limit <= LIST_LIMIT_MAX:
        raise TxnSyntaxError(f"a list limit is an integer in 1..{LIST_LIMIT_MAX}")
    return TxnOp("list", _key(prefix, "prefix", allow_empty=True), limit=limit)


@dataclass(frozen=True, slots=True)
class Txn:
    """A transaction: if every compare holds, `success` runs, else `failure`."""

    compares: tuple[TxnCompare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()

    def compare(self, *compares: TxnCompare) -> Txn:
        """This transaction with more compares (all must hold)."""
        for one in compares:
            if not isinstance(one, TxnCompare):
                raise TxnSyntaxError(f"not a compare: {one!r} (write revision(key) == 5)")
        return replace(self, compares=self.compares + compares)

    def then(self, *operations: TxnOp) -> Txn:
        """This transaction with more operations for when the compares hold."""
        return replace(self, success=self.success + _operations(operations))

    def else_(self, *operations: TxnOp) -> Txn:
        """This transaction with more operations for when a compare fails."""
        return replace(self, failure=self.failure + _operations(operations))

    @property
    def writes(self) -> bool:
        """Whether either branch writes (a transaction that only reads is safe to repeat)."""
        return any(op.writes for op in self.success + self.failure)

    @property
    def reads(self) -> bool:
        """Whether either branch reads (get or list): such a transaction cannot carry an
        idempotency key, because a retry answered from what the server remembered would
        have no values to give back."""
        return any(op.op in ("get", "list") for op in self.success + self.failure)

    def to_json(self) -> dict[str, Any]:
        """The `POST /v1/txn` body."""
        return {
            "compare": [c.to_json() for c in self.compares],
            "success": [o.to_json() for o in self.success],
            "failure": [o.to_json() for o in self.failure],
        }


def _operations(operations: Sequence[TxnOp]) -> tuple[TxnOp, ...]:
    for one in operations:
        if not isinstance(one, TxnOp):
            raise TxnSyntaxError(f"not an operation: {one!r} (write txn.put(key, value))")
    return tuple(operations)


# --- the answer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxnOpResult:
    """The result of one operation of the branch taken.

    Fields:
        op: the operation ("put", "delete", "delete_prefix", "get", "list").
        revision: a put's revision; a get's key revision (0 when absent); else None.
        deleted: a delete's True/False, a delete_prefix's count; else None.
        key, value: a get's key and value (value None when absent).
        items, continuation: a list's keys as (key, value, revision) and where the next
            page would start (None when none follows).
    """

    op: str
    revision: int | None = None
    deleted: bool | int | None = None
    key: str | None = None
    value: bytes | None = None
    items: list[tuple[str, bytes, int]] = field(default_factory=list)
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class TxnAnswer:
    """What `POST /v1/txn` answered: whether the compares held, the transaction's revision,
    and one result per operation of the branch taken."""

    succeeded: bool
    revision: int
    results: list[TxnOpResult]


def _int(obj: Mapping[str, Any], name: str) -> int:
    found = obj.get(name)
    if type(found) is not int or found < 0:
        raise TxnSyntaxError(f"the answer's {name!r} is not an integer >= 0")
    return found


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TxnSyntaxError("the answer's value_b64 is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise TxnSyntaxError("the answer's value_b64 is not base64") from None


def _result(op: TxnOp, obj: object) -> TxnOpResult:
    if not isinstance(obj, dict):
        raise TxnSyntaxError("a result is not a JSON object")
    if op.op == "put":
        return TxnOpResult("put", revision=_int(obj, "revision"))
    if op.op == "delete":
        deleted = obj.get("deleted")
        if type(deleted) is not bool:
            raise TxnSyntaxError("a delete's result has no boolean 'deleted'")
        return TxnOpResult("delete", deleted=deleted)
    if op.op == "delete_prefix":
        return TxnOpResult("delete_prefix", deleted=_int(obj, "deleted"))
    if op.op == "get":
        found = obj.get("value_b64")
        data = None if found is None else _b64(found)
        return TxnOpResult("get", revision=_int(obj, "revision"), key=op.key, value=data)
    raw_items = obj.get("items")
    continuation = obj.get("continuation")
    if not isinstance(raw_items, list) or not (
        continuation is None or isinstance(continuation, str)
    ):
        raise TxnSyntaxError("a list's result has no items or a bad continuation")
    items = []
    for item in raw_items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TxnSyntaxError("a listed item is malformed")
        items.append((item["key"], _b64(item.get("value_b64")), _int(item, "revision")))
    return TxnOpResult("list", items=items, continuation=continuation)


def parse_txn_answer(txn: Txn, body: object) -> TxnAnswer:
    """The answer to `txn` from its JSON body; `TxnSyntaxError` if it does not fit `txn`."""
    if not isinstance(body, dict) or type(body.get("succeeded")) is not bool:
        raise TxnSyntaxError("the answer has no boolean 'succeeded'")
    succeeded: bool = body["succeeded"]
    branch = txn.success if succeeded else txn.failure
    results = body.get("results")
    if not isinstance(results, list) or len(results) != len(branch):
        raise TxnSyntaxError(f"the answer does not hold {len(branch)} results")
    return TxnAnswer(
        succeeded,
        _int(body, "revision"),
        [_result(op, one) for op, one in zip(branch, results, strict=True)],
    )


# --- JSON bodies and command-line forms -----------------------------------------------------


def txn_from_json(body: object) -> Txn:
    """A `Txn` from a `POST /v1/txn` body (as `kvraft txn` reads it from a file), checked
    enough to build it; the server checks the rest."""
    if not isinstance(body, dict) or set(body) - {"compare", "success", "failure"}:
        raise TxnSyntaxError("a transaction is an object with compare, success and failure")
    compares = [_compare_from_json(c) for c in _array(body, "compare")]
    success = [_operation_from_json(o) for o in _array(body, "success")]
    failure = [_operation_from_json(o) for o in _array(body, "failure")]
    return Txn().compare(*compares).then(*success).else_(*failure)


def _array(body: Mapping[str, Any], name: str) -> list[Any]:
    part = body.get(name, [])
    if not isinstance(part, list):
        raise TxnSyntaxError(f"{name!r} must be an array")
    return part


def _bytes_of(obj: Mapping[str, Any], what: str) -> bytes:
    if "value_b64" in obj:
        return _b64(obj["value_b64"])
    text = obj.get("value")
    if not isinstance(text, str):
        raise TxnSyntaxError(f"{what} needs 'value' (text) or 'value_b64'")
    return text.encode("utf-8")


def _compare_from_json(obj: object) -> TxnCompare:
    if not isinstance(obj, dict):
        raise TxnSyntaxError("a compare is an object")
    target, op = obj.get("target"), obj.get("op")
    if target not in ("revision", "value", "exists") or op not in _OPERATORS:
        raise TxnSyntaxError(f"a compare needs a known target and op, not {target!r} {op!r}")
    subject = _Target(_key(obj.get("key")), target)
    operand: object = _bytes_of(obj, "a value compare") if target == "value" else obj.get("value")
    return subject._compare(op, operand)


def _operation_from_json(obj: object) -> TxnOp:
    if not isinstance(obj, dict):
        raise TxnSyntaxError("an operation is an object")
    kind = obj.get("op")
    if kind == "put":
        return put(_key(obj.get("key")), _bytes_of(obj, "a put"))
    if kind == "delete":
        return delete(_key(obj.get("key")))
    if kind == "get":
        return get(_key(obj.get("key")))
    if kind == "delete_prefix":
        return delete_prefix(_key(obj.get("prefix"), "prefix", allow_empty=True))
    if kind == "list":
        prefix = _key(obj.get("prefix"), "prefix", allow_empty=True)
        return list_prefix(prefix, obj.get("limit", LIST_LIMIT_DEFAULT))
    raise TxnSyntaxError(f"unknown operation {kind!r}")


_COMPARE_FORM = re.compile(
    r"^\s*(rev|revision|value|exists)\((.+)\)\s*(==|!=|<|>)\s*(.*?)\s*$", re.S
)


def parse_compare(text: str) -> TxnCompare:
    """A compare from its command-line form: ``rev(a)==5``, ``value(k)!=off``,
    ``exists(k)==false``."""
    match = _COMPARE_FORM.match(text)
    if match is None:
        raise TxnSyntaxError(
            f"cannot read the compare {text!r}: write rev(KEY)==N, value(KEY)==TEXT or "
            "exists(KEY)==true|false (operators ==, !=, <, >)"
        )
    name, key, op, operand = match.groups()
    if name in ("rev", "revision"):
        if not operand.isdigit():
            raise TxnSyntaxError(f"{text!r}: a revision is a non-negative integer")
        return revision(key)._compare(op, int(operand))
    if name == "value":
        return value(key)._compare(op, operand.encode("utf-8"))
    if operand not in ("true", "false"):
        raise TxnSyntaxError(f"{text!r}: exists compares with true or false")
    return exists(key)._compare(op, operand == "true")


def parse_operation(text: str) -> TxnOp:
    """An operation from its command-line form: ``put KEY VALUE``, ``del KEY``,
    ``delprefix PREFIX``, ``get KEY``, ``list PREFIX [LIMIT]``."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise TxnSyntaxError(f"cannot read the operation {text!r}: {error}") from None
    forms = {
        "put": (3, 3),
        "del": (2, 2),
        "delete": (2, 2),
        "delprefix": (2, 2),
        "delete_prefix": (2, 2),
        "get": (2, 2),
        "list": (2, 3),
    }
    if (
        not words
        or words[0] not in forms
        or not forms[words[0]][0] <= len(words) <= forms[words[0]][1]
    ):
        raise TxnSyntaxError(
            f"cannot read the operation {text!r}: write put KEY VALUE, del KEY, "
            "delprefix PREFIX, get KEY or list PREFIX [LIMIT]"
        )
    kind = words[0]
    if kind == "put":
        return put(words[1], words[2].encode("utf-8"))
    if kind in ("del", "delete"):
        return delete(words[1])
    if kind in ("delprefix", "delete_prefix"):
        return delete_prefix(words[1])
    if kind == "get":
        return get(words[1])
    if len(words) == 3 and not words[2].isdigit():
        raise TxnSyntaxError(f"{text!r}: a list limit is an integer")
    return list_prefix(words[1], int(words[2]) if len(words) == 3 else LIST_LIMIT_DEFAULT)
