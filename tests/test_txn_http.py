"""Issue #18 over real HTTP: transactions, range deletes, counts, previous values, the no-op
delete, and the refusal of everything the API does not understand. Three real nodes and their
HTTP APIs in one event loop (`tests/in_process_cluster.py`); requests go to a follower where
forwarding matters."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp

from kvraft.statemachine import TXN_BYTES_MAX, TXN_OPERATIONS_MAX
from tests.in_process_cluster import InProcessNode, leader_of


def leader(members: list[InProcessNode]) -> InProcessNode:
    found = leader_of(members)
    assert found is not None
    return found


def follower(members: list[InProcessNode]) -> InProcessNode:
    return next(m for m in members if m is not leader(members))


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    payload = json.dumps(body).encode() if body is not None else data
    # A stream, not bytes: aiohttp warns that a large bytes body would hold the event loop.
    stream = io.BytesIO(payload) if payload is not None else None
    async with http.request(method, url, data=stream, headers=headers) as response:
        text = await response.read()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def put(http: aiohttp.ClientSession, node: InProcessNode, key: str, value: bytes) -> int:
    status, body = await call(http, "PUT", f"{node.url}/v1/kv/{key}", data=value)
    assert status == 200, body
    revision: int = body["revision"]
    return revision


async def value_of(http: aiohttp.ClientSession, node: InProcessNode, key: str) -> bytes | None:
    async with http.get(f"{node.url}/v1/kv/{key}") as response:
        if response.status == 404:
            return None
        assert response.status == 200
        return await response.read()


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# --- refusals ---------------------------------------------------------------------------------


async def test_consul_cas_is_refused_with_kvraft_s_equivalent_and_changes_nothing(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    await put(http, node, "k", b"original")
    status, body = await call(http, "PUT", f"{node.url}/v1/kv/k?cas=0", data=b"overwritten")
    assert status == 400
    assert body["error"] == "unknown_parameter"
    assert "'cas'" in body["message"] and "If-None-Match" in body["message"]
    assert await value_of(http, node, "k") == b"original"


async def test_consul_recurse_delete_is_refused_and_deletes_nothing(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    await put(http, node, "a/x", b"1")
    status, body = await call(http, "DELETE", f"{node.url}/v1/kv/a/?recurse=true")
    assert status == 400 and body["error"] == "unknown_parameter"
    assert "'recurse'" in body["message"] and "DELETE /v1/kv?prefix=" in body["message"]
    assert await value_of(http, node, "a/x") == b"1"


REFUSED = [
    ("GET", "/v1/kv/k?index=5", {}, "'index'"),
    ("GET", "/v1/kv?prefix=a&keys=true", {}, "'keys'"),
    ("GET", "/v1/kv?prefix=a&prefix=b", {}, "'prefix'"),
    ("GET", "/v1/watch?prefix=a&wait_s=1", {}, "'wait_s'"),
    ("GET", "/v1/status?verbose=1", {}, "'verbose'"),
    ("GET", "/healthz?x=1", {}, "'x'"),
    ("GET", "/metrics?name=a", {}, "'name'"),
    ("GET", "/v1/members?stale", {}, "'stale'"),
    ("PUT", "/v1/kv/k", {"X-Consul-Token": "t"}, "'X-Consul-Token'"),
    ("PUT", "/v1/kv/k", {"If-Unmodified-Since": "Mon, 1 Jan 2024"}, "'If-Unmodified-Since'"),
    ("POST", "/v1/txn", {"If-Match": '"1"'}, "'If-Match'"),
    ("DELETE", "/v1/kv?prefix=k", {"If-Match": '"1"'}, "'If-Match'"),
    ("GET", "/v1/kv/k", {"If-Match": '"1"'}, "'If-Match'"),
]
"""(method, target, headers, what the message must name): one of each kind of refusal."""


async def test_every_route_refuses_what_it_does_not_understand(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    await put(http, node, "k", b"kept")
    # One cluster for every case: starting one per case would cost most of a second each.
    for method, target, headers, named in REFUSED:
        status, body = await call(http, method, f"{node.url}{target}", data=b"new", headers=headers)
        assert status == 400, (target, body)
        assert named in body["message"], (target, body)
    assert await value_of(http, node, "k") == b"kept"


async def test_cache_revalidation_headers_on_a_read_are_answered_in_full(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    await put(http, node, "k", b"v")
    status, body = await call(http, "GET", f"{node.url}/v1/kv/k", headers={"If-None-Match": '"1"'})
    assert (status, body) == (200, b"v")


# --- single-key details -----------------------------------------------------------------------


async def test_deleting_a_missing_key_answers_the_current_revision_without_a_log_entry(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    revision = await put(http, follower(members), "present", b"1")
    core = leader(members).node.core
    assert core is not None
    last_index = core.log.last_index()
    status, body = await call(http, "DELETE", f"{follower(members).url}/v1/kv/missing?prev=true")
    assert status == 200
    assert body == {"deleted": False, "revision": body["revision"], "prev": None}
    assert body["revision"] >= revision
    assert core.log.last_index() == last_index
    status, body = await call(
        http, "DELETE", f"{follower(members).url}/v1/kv/missing", headers={"If-Match": '"7"'}
    )
    assert (status, body["error"], body["revision"]) == (412, "condition_failed", 0)


async def test_prev_true_tells_the_value_and_revision_a_put_and_a_delete_replaced(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    status, first = await call(http, "PUT", f"{node.url}/v1/kv/k?prev=true", data=b"one")
    assert status == 200 and first["prev"] is None
    status, second = await call(http, "PUT", f"{node.url}/v1/kv/k?prev=true", data=b"two")
    assert second["prev"] == {"value_b64": b64(b"one"), "revision": first["revision"]}
    status, deleted = await call(http, "DELETE", f"{node.url}/v1/kv/k?prev=true")
    assert deleted["deleted"] is True
    assert deleted["prev"] == {"value_b64": b64(b"two"), "revision": second["revision"]}
    # A retry answered from the idempotency table does not know the previous value: it
    # leaves `prev` out rather than claim the key was absent.
    keyed = {"Idempotency-Key": "put-once"}
    url = f"{node.url}/v1/kv/k?prev=true"
    status, first_try = await call(http, "PUT", url, data=b"three", headers=keyed)
    status, retry = await call(http, "PUT", url, data=b"three", headers=keyed)
    assert first_try == {"revision": first_try["revision"], "prev": None}
    assert retry == {"revision": first_try["revision"]}


# --- ranges -----------------------------------------------------------------------------------


async def test_a_range_delete_removes_the_prefix_in_one_revision(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    for key in ("app/a", "app/b", "app/c", "other"):
        await put(http, node, key, b"x")
    status, body = await call(http, "DELETE", f"{node.url}/v1/kv")
    assert status == 400 and "prefix=" in body["message"]
    status, body = await call(http, "DELETE", f"{node.url}/v1/kv?prefix=app/")
    assert status == 200 and body["deleted"] == 3
    revision = body["revision"]
    for key in ("app/a", "app/b", "app/c"):
        # A blocking read from before the delete tells the revision that deleted the key.
        status, gone = await call(
            http, "GET", f"{node.url}/v1/kv/{key}?wait_revision={revision - 1}&wait_s=5"
        )
        assert (status, gone["revision"]) == (404, revision)
    status, body = await call(http, "DELETE", f"{node.url}/v1/kv?prefix=")
    assert (status, body["deleted"]) == (200, 1)
    assert await value_of(http, node, "other") is None


async def test_keys_only_and_count_only_lists(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    for key in ("p/a", "p/b", "q"):
        revision = await put(http, node, key, b"value")
    status, body = await call(http, "GET", f"{node.url}/v1/kv?prefix=p/&keys_only=true")
    assert status == 200
    assert [sorted(item) for item in body["items"]] == [["key", "revision"]] * 2
    status, body = await call(http, "GET", f"{node.url}/v1/kv?prefix=p/&count_only=true")
    assert status == 200 and body["count"] == 2 and body["revision"] >= revision
    status, body = await call(http, "GET", f"{node.url}/v1/kv?count_only=true&limit=5")
    assert status == 400


# --- transactions -----------------------------------------------------------------------------


def transfer(a_revision: int, b_revision: int, a_value: str, b_value: str) -> dict[str, Any]:
    return {
        "compare": [
            {"key": "acct/a", "target": "revision", "op": "==", "value": a_revision},
            {"key": "acct/b", "target": "revision", "op": "==", "value": b_revision},
        ],
        "success": [
            {"op": "put", "key": "acct/a", "value": a_value},
            {"op": "put", "key": "acct/b", "value": b_value},
        ],
        "failure": [{"op": "get", "key": "acct/a"}, {"op": "get", "key": "acct/b"}],
    }


async def test_a_transfer_is_atomic_and_a_stale_one_takes_the_failure_branch(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    a = await put(http, node, "acct/a", b"100")
    b = await put(http, node, "acct/b", b"0")
    status, body = await call(http, "POST", f"{node.url}/v1/txn", body=transfer(a, b, "70", "30"))
    assert status == 200, body
    assert body["succeeded"] is True
    revision = body["revision"]
    assert body["results"] == [{"revision": revision}, {"revision": revision}]
    status, body = await call(http, "POST", f"{node.url}/v1/txn", body=transfer(a, b, "0", "100"))
    assert status == 200 and body["succeeded"] is False
    assert body["results"] == [
        {"key": "acct/a", "value_b64": b64(b"70"), "revision": revision},
        {"key": "acct/b", "value_b64": b64(b"30"), "revision": revision},
    ]
    status, body = await call(
        http,
        "POST",
        f"{node.url}/v1/txn",
        body={
            "compare": [{"key": "acct/none", "target": "exists", "op": "==", "value": False}],
            "success": [
                {"op": "delete", "key": "acct/b"},
                {"op": "list", "prefix": "acct/", "limit": 10},
                {"op": "get", "key": "acct/b"},
            ],
        },
    )
    assert status == 200 and body["succeeded"] is True
    assert body["results"][0] == {"deleted": True}
    assert [item["key"] for item in body["results"][1]["items"]] == ["acct/a"]
    assert body["results"][2] == {"key": "acct/b", "revision": 0}


async def test_a_keyed_transaction_retried_applies_once(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    a = await put(http, node, "acct/a", b"100")
    b = await put(http, node, "acct/b", b"0")
    answers = [
        await call(
            http,
            "POST",
            f"{node.url}/v1/txn",
            body={**transfer(a, b, "90", "10"), "failure": []},
            headers={"Idempotency-Key": "transfer-7"},
        )
        for _ in range(2)
    ]
    assert answers[0] == answers[1]
    assert answers[0][1]["succeeded"] is True
    status, body = await call(
        http,
        "POST",
        f"{node.url}/v1/txn",
        body={"success": [{"op": "get", "key": "acct/a"}]},
        headers={"Idempotency-Key": "reads-not-remembered"},
    )
    assert (status, body["error"]) == (400, "bad_idempotency_key")


MALFORMED: list[tuple[dict[str, Any], int, str]] = [
    ({"compare": [{"key": "a", "target": "age", "op": "==", "value": 1}]}, 400, "bad_compare"),
    ({"compare": [{"key": "a", "target": "revision", "op": "=", "value": 1}]}, 400, "bad_compare"),
    (
        {"compare": [{"key": "a", "target": "revision", "op": "==", "value": "1"}]},
        400,
        "bad_compare",
    ),
    ({"compare": [{"key": "a", "target": "exists", "op": "<", "value": True}]}, 400, "bad_compare"),
    (
        {"compare": [{"key": "a", "target": "value", "op": "==", "value_b64": "!"}]},
        400,
        "bad_compare",
    ),
    ({"compare": [{"target": "revision", "op": "==", "value": 1}]}, 400, "bad_compare"),
    (
        {"compare": [{"key": "a", "target": "revision", "op": "==", "value": 1, "x": 1}]},
        400,
        "bad_compare",
    ),
    ({"success": [{"op": "cas", "key": "a"}]}, 400, "bad_operation"),
    ({"success": [{"op": "put", "key": "a"}]}, 400, "bad_operation"),
    (
        {"success": [{"op": "put", "key": "a", "value": "1"}, {"op": "delete", "key": "a"}]},
        400,
        "duplicate_key",
    ),
    ({"success": [{"op": "list", "prefix": "", "limit": 0}]}, 400, "bad_operation"),
    ({"then": []}, 400, "bad_request"),
    ({"success": [{"op": "get", "key": "a"}] * (TXN_OPERATIONS_MAX + 1)}, 413, "txn_too_large"),
    (
        {
            "success": [
                {"op": "put", "key": f"k{i}", "value": "x" * (TXN_BYTES_MAX // 4)} for i in range(5)
            ]
        },
        413,
        "txn_too_large",
    ),
]
"""(body, status, error code) of transactions refused before they reach the log."""


async def test_a_malformed_or_over_limit_transaction_is_refused(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = follower(members)
    for body, status, code in MALFORMED:
        answered, answer = await call(http, "POST", f"{node.url}/v1/txn", body=body)
        assert (answered, answer["error"]) == (status, code), (body, answer)
