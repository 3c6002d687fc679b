"""Tests for kvraft.client: the sans-IO request/retry logic, and both clients end to end
against `FakeCluster`, a test double of the server's HTTP API (tests/kv_fake_server.py).

Every end-to-end behaviour runs for the blocking `KVClient` and for `AsyncKVClient`
(driven on a private event loop by `AsyncOnLoop`, so one test body covers both).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kv_fake_server import FakeCluster, Fault, refused_endpoint

from kvraft.client import (
    BACKOFF_S_MAX,
    BACKOFF_S_MIN,
    ENDPOINTS_MAX,
    IDEMPOTENCY_KEY_CHARS_MAX,
    LIST_LIMIT_MAX,
    RETRY_AFTER_S_MAX,
    AsyncKVClient,
    ClientError,
    ConditionFailed,
    EndpointRouter,
    FailureKind,
    HttpResponse,
    KVClient,
    OutcomeUnknown,
    ProtocolError,
    RetryPolicy,
    Send,
    TransportFailure,
    Unavailable,
    Wait,
    backoff_delay_s,
    build_add_member,
    build_get,
    build_list,
    build_members,
    build_put,
    build_remove_member,
    build_transfer_leadership,
    interpret_get,
    interpret_list,
    interpret_members,
    interpret_put,
    interpret_transfer,
    key_path,
    normalize_endpoint,
    parse_retry_after_s,
    plan_exchange,
    plan_single_attempt,
)

AWKWARD_KEYS = [
    "plain",
    "a/b/c",
    "with space/and\ttab",
    "ünïcödé/日本語/😀",
    "100%",
    "literally%2Fescaped",
    "query?and#fragment&x=y+z",
    "dots/./and/../segments",
    "trailing/",
    "double//slash",
]


class AsyncOnLoop:
    """The real `AsyncKVClient`, each call run to completion on a private event loop, so the
    same test body drives the blocking and the asyncio client."""

    def __init__(self, endpoints: list[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = AsyncKVClient(endpoints, **options)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):

                async def collect() -> list[Any]:
                    return [item async for item in result]

                return iter(self._loop.run_until_complete(collect()))
            return self._loop.run_until_complete(result)

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self.client.close())
        self._loop.close()


ClientFactory = Callable[..., Any]


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(3) as fake:
        yield fake


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    made: list[AsyncOnLoop] = []

    def factory(endpoints: list[str], **options: Any) -> Any:
        if request.param == "sync":
            return KVClient(endpoints, **options)
        client = AsyncOnLoop(endpoints, **options)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


# --- keys and request building ------------------------------------------------------------------


def test_key_path_keeps_slash_as_separator_and_percent_encodes_the_rest() -> None:
    assert key_path("a/b c/100%/ü") == "/v1/kv/a/b%20c/100%25/%C3%BC"
    assert key_path("x?y#z") == "/v1/kv/x%3Fy%23z"


def test_dot_segments_are_encoded_so_no_normaliser_can_collapse_them() -> None:
    assert key_path("a/../b/.") == "/v1/kv/a/%2E%2E/b/%2E"


@pytest.mark.parametrize("key", ["", None, b"bytes"])
def test_a_key_must_be_non_empty_text(key: Any) -> None:
    with pytest.raises(ClientError) as caught:
        key_path(key)
    assert caught.value.code == "bad_key"
    assert caught.value.status is None  # rejected locally, nothing sent


def test_idempotency_key_is_limited_to_the_servers_length_and_visible_ascii() -> None:
    at_limit = "k" * IDEMPOTENCY_KEY_CHARS_MAX
    request = build_put("key", b"v", idempotency_key=at_limit)
    assert ("Idempotency-Key", at_limit) in request.headers
    assert request.retry_after_send
    for bad in ["k" * (IDEMPOTENCY_KEY_CHARS_MAX + 1), "", "has space", "ünicode"]:
        with pytest.raises(ClientError):
            build_put("key", b"v", idempotency_key=bad)


def test_a_put_without_idempotency_key_is_not_safe_to_repeat() -> None:
    assert not build_put("key", b"v").retry_after_send
    assert not build_put("key", b"v", if_revision=3).retry_after_send


def test_conditional_put_takes_one_condition() -> None:
    with pytest.raises(ClientError):
        build_put("key", b"v", if_revision=1, if_absent=True)
    headers = dict(build_put("key", b"v", if_absent=True).headers)
    assert headers["If-None-Match"] == "*"
    assert dict(build_put("key", b"v", if_revision=7).headers)["If-Match"] == '"7"'


def test_list_limit_is_checked_at_the_servers_edge() -> None:
    assert f"limit={LIST_LIMIT_MAX}" in build_list("p", limit=LIST_LIMIT_MAX).target
    for bad in [0, LIST_LIMIT_MAX + 1]:
        with pytest.raises(ClientError):
            build_list("p", limit=bad)


def test_consistency_must_be_a_known_level() -> None:
    assert build_get("k", consistency="stale").target.endswith("consistency=stale")
    with pytest.raises(ClientError):
        build_get("k", consistency="eventual")


# --- endpoints ----------------------------------------------------------------------------------


def test_endpoints_are_normalized_to_origins() -> None:
    assert normalize_endpoint("127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert normalize_endpoint(" http://node1:8001/ ") == "http://node1:8001"
    assert normalize_endpoint("https://[::1]:8443") == "https://[::1]:8443"
    for bad in ["ftp://x:1", "http://x:1/path", "http://:80", "http://x:99999", "http://x:1?q"]:
        with pytest.raises(ClientError) as caught:
            normalize_endpoint(bad)
        assert caught.value.code == "bad_endpoint"


def test_endpoint_count_is_limited() -> None:
    endpoints = [f"http://127.0.0.1:{8000 + n}" for n in range(ENDPOINTS_MAX + 1)]
    assert len(EndpointRouter(endpoints[:ENDPOINTS_MAX]).endpoints) == ENDPOINTS_MAX
    with pytest.raises(ClientError):
        EndpointRouter(endpoints)
    with pytest.raises(ClientError):
        EndpointRouter([])


# --- the retry plan, without IO ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _response(status: int, headers: dict[str, str] | None = None, body: Any = None) -> HttpResponse:
    data = json.dumps(body if body is not None else {"error": "unavailable"}).encode()
    return HttpResponse(status, headers or {}, data)


REFUSED = TransportFailure(FailureKind.NOT_SENT, "connection refused")
DROPPED = TransportFailure(FailureKind.AFTER_SEND, "connection reset")


def _start(request: Any, endpoints: list[str], timeout_s: float = 10.0) -> tuple[Any, FakeClock]:
    clock = FakeClock()
    plan = plan_exchange(
        request,
        EndpointRouter(endpoints),
        RetryPolicy(timeout_s=timeout_s),
        clock,
        random.Random(1),
    )
    return plan, clock


def test_refused_connections_try_every_endpoint_before_backing_off() -> None:
    plan, _ = _start(build_get("k"), ["http://a:1", "http://b:1", "http://c:1"])
    first = next(plan)
    assert isinstance(first, Send) and first.endpoint == "http://a:1"
    second = plan.send(REFUSED)
    assert isinstance(second, Send) and second.endpoint == "http://b:1"
    third = plan.send(REFUSED)
    assert isinstance(third, Send) and third.endpoint == "http://c:1"
    pause = plan.send(REFUSED)
    assert isinstance(pause, Wait) and BACKOFF_S_MIN / 2 <= pause.delay_s <= BACKOFF_S_MIN
    again = plan.send(None)
    assert isinstance(again, Send) and again.endpoint == "http://a:1"


def test_retry_after_is_honoured() -> None:
    plan, _ = _start(build_put("k", b"v"), ["http://a:1", "http://b:1"])
    next(plan)
    pause = plan.send(_response(503, {"retry-after": "1"}))
    assert isinstance(pause, Wait) and pause.delay_s >= 1.0


def test_a_huge_retry_after_is_capped() -> None:
    plan, _ = _start(build_put("k", b"v"), ["http://a:1"])
    next(plan)
    pause = plan.send(_response(503, {"retry-after": "86400"}))
    assert isinstance(pause, Wait) and pause.delay_s == RETRY_AFTER_S_MAX


def test_a_wait_past_the_deadline_gives_up_at_once_as_unavailable() -> None:
    plan, clock = _start(build_put("k", b"v"), ["http://a:1"], timeout_s=3.0)
    next(plan)
    clock.now_s = 1.5
    with pytest.raises(Unavailable):
        plan.send(_response(503, {"retry-after": "2"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("-3", 0.0),
        (str(RETRY_AFTER_S_MAX), RETRY_AFTER_S_MAX),
        (str(RETRY_AFTER_S_MAX + 1), RETRY_AFTER_S_MAX),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(text: str | None, expected: float | None) -> None:
    assert parse_retry_after_s(text) == expected


def test_an_ambiguous_failure_of_an_unkeyed_write_is_outcome_unknown() -> None:
    for outcome in [DROPPED, _response(504, body={"error": "outcome_unknown"})]:
        plan, _ = _start(build_put("k", b"v"), ["http://a:1", "http://b:1"])
        next(plan)
        with pytest.raises(OutcomeUnknown):
            plan.send(outcome)


def test_a_keyed_write_that_may_have_applied_ends_outcome_unknown_not_unavailable() -> None:
    plan, clock = _start(build_put("k", b"v", idempotency_key="id-1"), ["http://a:1"], 1.0)
    next(plan)
    step = plan.send(DROPPED)  # may have applied; retried because it carries a key
    with pytest.raises(OutcomeUnknown):
        while True:
            if isinstance(step, Wait):
                clock.now_s += step.delay_s
                step = plan.send(None)
            else:
                step = plan.send(_response(503))


def test_reads_are_retried_after_ambiguous_failures() -> None:
    plan, _ = _start(build_get("k"), ["http://a:1", "http://b:1"])
    next(plan)
    step = plan.send(DROPPED)
    assert isinstance(step, Send) and step.endpoint == "http://b:1"


def test_backoff_grows_from_its_minimum_to_its_cap_with_jitter() -> None:
    rng = random.Random(7)
    for _ in range(100):
        assert BACKOFF_S_MIN / 2 <= backoff_delay_s(0, rng) <= BACKOFF_S_MIN
        assert BACKOFF_S_MAX / 2 <= backoff_delay_s(10_000, rng) <= BACKOFF_S_MAX


def test_leader_header_steers_the_router_once_the_leader_endpoint_is_known() -> None:
    router = EndpointRouter(["http://a:1", "http://b:1", "http://c:1"])
    router.learn_members(
        [{"id": n, "http_address": f"{name}:1"} for n, name in [(1, "a"), (2, "b"), (3, "c")]]
    )
    router.answered(
        "http://a:1", _response(200, {"x-kvraft-node-id": "1", "x-kvraft-leader-id": "3"})
    )
    assert router.preferred == "http://c:1"
    router.answered("http://c:1", _response(200, {"x-kvraft-leader-id": "garbage"}))
    assert router.preferred == "http://c:1"


# --- interpreting answers -------------------------------------------------------------------


def test_get_requires_a_quoted_revision_etag() -> None:
    assert interpret_get(HttpResponse(200, {"etag": '"12"'}, b"v")) == (b"v", 12)
    for etag in ["12", '"-1"', '"x"', ""]:
        with pytest.raises(ProtocolError):
            interpret_get(HttpResponse(200, {"etag": etag}, b"v"))


def test_malformed_list_pages_are_protocol_errors() -> None:
    for body in [
        {"items": "no"},
        {"items": [{"key": "k", "revision": 1, "value_b64": "!!"}], "continuation": None},
        {"items": [{"key": "k", "revision": "1", "value_b64": ""}], "continuation": None},
        {"items": [], "continuation": 5},
    ]:
        with pytest.raises(ProtocolError):
            interpret_list(HttpResponse(200, {}, json.dumps(body).encode()))


def test_4xx_answers_are_client_errors_with_the_servers_code() -> None:
    answer = HttpResponse(413, {}, b'{"error": "value_too_large", "message": "too big"}')
    with pytest.raises(ClientError) as caught:
        interpret_put(answer)
    assert (caught.value.code, caught.value.status, caught.value.message) == (
        "value_too_large",
        413,
        "too big",
    )


# --- end to end against the fake server (both clients) -----------------------------------------


def test_awkward_keys_round_trip_exactly(cluster: FakeCluster, make_client: ClientFactory) -> None:
    client = make_client(cluster.endpoints)
    for number, key in enumerate(AWKWARD_KEYS):
        client.put(key, f"value {number}".encode())
    for number, key in enumerate(AWKWARD_KEYS):
        assert client.get(key) == (f"value {number}".encode(), number + 1)
    # The server decoded exactly the key the caller gave.
    assert [r.key for r in cluster.requests("PUT")] == AWKWARD_KEYS
    assert [item.key for item in client.iter_prefix("")] == sorted(AWKWARD_KEYS)


def test_get_of_a_missing_key_is_none(cluster: FakeCluster, make_client: ClientFactory) -> None:
    assert make_client(cluster.endpoints).get("nothing here") is None


def test_503_with_retry_after_is_retried_and_applied_once(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client([cluster.endpoint(1)])
    cluster.inject(1, Fault(status=503, retry_after="1"))
    assert client.put("k", b"v") == 1
    assert len(cluster.requests("PUT")) == 2
    assert cluster.stored("k") == (b"v", 1)


def test_connection_refused_fails_over_to_the_next_endpoint(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client([refused_endpoint(), cluster.endpoint(2)])
    assert client.put("k", b"v") == 1
    assert client.get("k") == (b"v", 1)
    assert [r.node_id for r in cluster.requests()] == [2, 2]


def test_all_endpoints_refused_is_unavailable(make_client: ClientFactory) -> None:
    client = make_client([refused_endpoint(), refused_endpoint()], timeout_s=1.5)
    with pytest.raises(Unavailable, match="connection refused"):
        client.get("k")


def test_a_dropped_unkeyed_write_is_not_retried(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(1, Fault(drop=True, apply_first=True))
    with pytest.raises(OutcomeUnknown):
        client.put("k", b"v")
    # It did apply, once: repeating it blindly could have applied it twice.
    assert len(cluster.requests("PUT")) == 1
    assert cluster.stored("k") == (b"v", 1)


def test_a_504_unkeyed_write_is_outcome_unknown_without_retry(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(1, Fault(status=504, error="outcome_unknown", apply_first=True))
    with pytest.raises(OutcomeUnknown):
        client.delete("k")
    assert len(cluster.requests("DELETE")) == 1


def test_a_dropped_keyed_write_is_retried_and_applied_exactly_once(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(1, Fault(drop=True, apply_first=True))
    revision = client.put("k", b"v", idempotency_key="write-1")
    assert len(cluster.requests("PUT")) == 2
    assert cluster.stored("k") == (b"v", revision) == (b"v", 1)


def test_auto_idempotency_keys_make_ambiguous_writes_retryable(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints, auto_idempotency_keys=True)
    cluster.inject(1, Fault(drop=True, apply_first=True))
    assert client.delete("k") == (1, False)
    first, second = cluster.requests("DELETE")
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_a_dropped_read_is_retried(cluster: FakeCluster, make_client: ClientFactory) -> None:
    client = make_client(cluster.endpoints)
    client.put("k", b"v")
    cluster.inject(1, Fault(drop=True))
    assert client.get("k") == (b"v", 1)
    assert len(cluster.requests("GET")) == 2


def test_failed_conditions_report_the_current_revision(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    revision = client.put("k", b"v1")
    with pytest.raises(ConditionFailed) as caught:
        client.put("k", b"v2", if_revision=revision + 1)
    assert caught.value.revision == revision
    with pytest.raises(ConditionFailed) as caught:
        client.put("k", b"v2", if_absent=True)
    assert caught.value.revision == revision
    with pytest.raises(ConditionFailed) as caught:
        client.delete("k", if_revision=revision + 5)
    assert caught.value.revision == revision
    assert cluster.stored("k") == (b"v1", revision)
    newer = client.put("k", b"v2", if_revision=revision)
    assert client.delete("k", if_revision=newer) == (newer + 1, True)


def test_iter_prefix_follows_continuations(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    keys = [f"p/{n:02}" for n in range(25)]
    for key in [*keys, "q/other", "o/other"]:
        client.put(key, key.encode())
    items = list(client.iter_prefix("p/", page_size=10))
    assert [item.key for item in items] == keys
    assert all(item.value == item.key.encode() for item in items)
    assert len(cluster.requests("GET")) == 3
    page, continuation = client.list("p/", 10)
    assert continuation == keys[9]
    assert [item.key for item in page] == keys[:10]


def test_requests_go_to_the_leader_once_its_endpoint_is_known(make_client: ClientFactory) -> None:
    with FakeCluster(3, leader_id=3) as cluster:
        client = make_client(cluster.endpoints)
        client.status()  # learns the members' endpoints
        client.put("k", b"v")
        assert cluster.requests("PUT")[0].node_id == 3


def test_status_all_reports_every_endpoint(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    dead = refused_endpoint()
    client = make_client([cluster.endpoint(1), dead], timeout_s=1.0)
    results = client.status_all()
    assert results[cluster.endpoint(1)]["role"] == "leader"
    assert isinstance(results[dead], Unavailable)


def test_client_errors_are_not_retried(cluster: FakeCluster, make_client: ClientFactory) -> None:
    client = make_client(cluster.endpoints)
    with pytest.raises(ClientError) as caught:
        client.put("k" * 65, b"v")  # the fake's key limit is 64 bytes
    assert (caught.value.code, caught.value.status) == ("key_too_large", 413)
    assert len(cluster.requests("PUT")) == 1


def test_a_malformed_answer_is_a_protocol_error(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(1, Fault(body=b"<html>not json</html>"))
    with pytest.raises(ProtocolError):
        client.put("k", b"v")


def test_response_size_limit_edge(cluster: FakeCluster, make_client: ClientFactory) -> None:
    limit = 64  # above the fake's small JSON answers to a put
    client = make_client(cluster.endpoints, response_bytes_max=limit)
    client.put("fits", b"x" * limit)
    client.put("over", b"x" * (limit + 1))
    assert client.get("fits") == (b"x" * limit, 1)
    with pytest.raises(ProtocolError, match=f"larger than {limit} bytes"):
        client.get("over")


# --- membership: requests, answers, retries -------------------------------------------------


def test_membership_requests_are_what_the_api_documents() -> None:
    members = build_members()
    assert (members.method, members.target, members.body) == ("GET", "/v1/members", b"")
    assert (members.is_write, members.retry_after_send) == (False, True)
    add = build_add_member(4, "10.0.0.4:7000", "10.0.0.4:8000", voter=False)
    assert (add.method, add.target) == ("POST", "/v1/members")
    assert json.loads(add.body) == {
        "id": 4,
        "raft_address": "10.0.0.4:7000",
        "http_address": "10.0.0.4:8000",
        "voter": False,
    }
    assert ("Content-Type", "application/json") in add.headers
    assert (add.is_write, add.retry_after_send) == (True, True)  # a repeated add is harmless
    remove = build_remove_member(2)
    assert (remove.method, remove.target, remove.body) == ("DELETE", "/v1/members/2", b"")
    assert (remove.is_write, remove.retry_after_send) == (True, False)
    named = build_transfer_leadership(3)
    assert (named.method, named.target, json.loads(named.body)) == (
        "POST",
        "/v1/leader/transfer",
        {"to": 3},
    )
    assert build_transfer_leadership().body == b""  # the leader picks the most caught up
    assert build_transfer_leadership().retry_after_send


@pytest.mark.parametrize("node_id", [0, -1, True, "2", 2.0])
def test_a_bad_node_id_is_refused_before_sending(node_id: Any) -> None:
    for build in [
        lambda: build_add_member(node_id, "h:1", "h:2"),
        lambda: build_remove_member(node_id),
        lambda: build_transfer_leadership(node_id),
    ]:
        with pytest.raises(ClientError) as caught:
            build()
        assert (caught.value.code, caught.value.status) == ("bad_request", None)
    with pytest.raises(ClientError):
        build_remove_member(None)  # type: ignore[arg-type]


def test_membership_answers_are_interpreted_and_errors_typed() -> None:
    view = {"leader_id": 1, "term": 2, "change_pending": False, "members": [{"id": 1}]}
    assert interpret_members(_response(200, body=view)) == view
    with pytest.raises(ProtocolError, match="'members' is not a list"):
        interpret_members(_response(200, body={"leader_id": 1, "members": {"1": {}}}))
    for status, code in [
        (404, "unknown_member"),
        (409, "member_conflict"),
        (409, "change_in_progress"),
        (400, "bad_request"),
    ]:
        with pytest.raises(ClientError) as caught:
            interpret_members(_response(status, body={"error": code, "message": "no"}))
        assert (caught.value.code, caught.value.status) == (code, status)
    moved = {"leader_id": 3, "previous_leader_id": 1}
    assert interpret_transfer(_response(200, body=moved)) == moved


def test_an_ambiguous_removal_is_outcome_unknown_without_retry() -> None:
    for outcome in [DROPPED, _response(504, body={"error": "outcome_unknown"})]:
        plan, _ = _start(build_remove_member(2), ["http://a:1", "http://b:1"])
        next(plan)
        with pytest.raises(OutcomeUnknown):
            plan.send(outcome)


def test_an_add_is_retried_while_the_new_node_catches_up() -> None:
    plan, _ = _start(build_add_member(4, "h:1", "h:2"), ["http://a:1"])
    next(plan)
    not_caught_up = _response(503, {"retry-after": "1"}, {"error": "not_caught_up"})
    pause = plan.send(not_caught_up)
    assert isinstance(pause, Wait) and pause.delay_s >= 1.0
    again = plan.send(None)
    assert isinstance(again, Send) and again.request.target == "/v1/members"
    step = plan.send(DROPPED)  # it may have been applied; repeating an add is harmless
    assert isinstance(step, (Send, Wait))


def test_one_attempt_says_what_that_attempt_did() -> None:
    router, policy = EndpointRouter(["http://a:1", "http://b:1"]), RetryPolicy()

    def attempt(request: Any, outcome: Any) -> Any:
        plan = plan_single_attempt("http://a:1", request, router, policy)
        step = next(plan)
        assert isinstance(step, Send) and step.endpoint == "http://a:1"
        return plan.send(outcome)

    add = build_add_member(4, "h:1", "h:2")
    with pytest.raises(Unavailable) as unavailable:
        attempt(add, _response(503, body={"error": "not_caught_up"}))
    assert unavailable.value.status == 503
    with pytest.raises(Unavailable) as refused:
        attempt(add, REFUSED)
    assert refused.value.status is None
    for outcome, status in [(DROPPED, None), (_response(504), 504), (_response(502), 502)]:
        with pytest.raises(OutcomeUnknown) as unknown:
            attempt(add, outcome)  # even a write safe to repeat: this attempt is all there is
        assert unknown.value.status == status
    with pytest.raises(Unavailable):
        attempt(build_members(), DROPPED)  # a read has no effect to be unknown
    with pytest.raises(StopIteration) as done:
        attempt(add, _response(409, body={"error": "change_in_progress"}))
    assert done.value.value.status == 409  # any answer below 500 is the caller's to read


def test_the_last_status_is_kept_when_retries_run_out() -> None:
    plan, clock = _start(build_members(), ["http://a:1"], timeout_s=1.0)
    next(plan)
    clock.now_s = 0.9
    with pytest.raises(Unavailable) as caught:
        plan.send(_response(503, {"retry-after": "1"}))
    assert caught.value.status == 503


def test_members_lists_the_leaders_view(cluster: FakeCluster, make_client: ClientFactory) -> None:
    client = make_client([cluster.endpoint(2)])
    view = client.members()
    assert [member["id"] for member in view["members"]] == [1, 2, 3]
    assert (view["leader_id"], view["change_pending"]) == (1, False)
    (sent,) = cluster.requests()
    assert (sent.method, sent.raw_path, sent.body) == ("GET", "/v1/members", b"")


def test_add_member_posts_the_node_and_returns_the_members(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    view = client.add_member(4, "127.0.0.1:7004", "127.0.0.1:8004", voter=False)
    added = {member["id"]: member for member in view["members"]}[4]
    assert (added["http_address"], added["voter"]) == ("127.0.0.1:8004", False)
    (sent,) = cluster.requests("POST")
    assert (sent.raw_path, json.loads(sent.body)) == (
        "/v1/members",
        {"id": 4, "raft_address": "127.0.0.1:7004", "http_address": "127.0.0.1:8004",
         "voter": False},
    )  # fmt: skip
    assert sent.headers["Content-Type"] == "application/json"
    assert cluster.member_ids() == [1, 2, 3, 4]


def test_add_member_keeps_asking_while_the_node_catches_up_and_after_a_lost_answer(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client([cluster.endpoint(1)])
    cluster.inject(
        1,
        Fault(status=503, error="not_caught_up", retry_after="0"),
        Fault(drop=True, apply_first=True),
    )
    view = client.add_member(4, "127.0.0.1:7004", "127.0.0.1:8004")
    assert 4 in [member["id"] for member in view["members"]]
    assert len(cluster.requests("POST")) == 3
    assert cluster.member_ids() == [1, 2, 3, 4]


def test_membership_refusals_are_client_errors_and_not_retried(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    with pytest.raises(ClientError) as unknown:
        client.remove_member(9)
    assert (unknown.value.code, unknown.value.status) == ("unknown_member", 404)
    cluster.inject(1, Fault(status=409, error="change_in_progress"))
    with pytest.raises(ClientError) as busy:
        client.add_member(4, "127.0.0.1:7004", "127.0.0.1:8004")
    assert (busy.value.code, busy.value.status) == ("change_in_progress", 409)
    with pytest.raises(ClientError) as conflict:
        client.add_member(2, "127.0.0.1:7999", "127.0.0.1:8999")
    assert (conflict.value.code, conflict.value.status) == ("member_conflict", 409)
    assert len(cluster.requests("DELETE")) == 1 and len(cluster.requests("POST")) == 2
    assert cluster.member_ids() == [1, 2, 3]


def test_remove_member_is_not_repeated_after_a_lost_answer(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(1, Fault(drop=True, apply_first=True))
    with pytest.raises(OutcomeUnknown):
        client.remove_member(3)
    # It did apply; a retry would have been answered 404 and looked like a failure.
    assert len(cluster.requests("DELETE")) == 1
    assert cluster.member_ids() == [1, 2]
    assert [member["id"] for member in client.members()["members"]] == [1, 2]


def test_membership_calls_follow_the_leader(make_client: ClientFactory) -> None:
    with FakeCluster(3, leader_id=3) as cluster:
        client = make_client(cluster.endpoints)
        client.members()  # answered by node 1: learns every member's endpoint, leader 3
        client.remove_member(2)
        assert [r.node_id for r in cluster.requests("DELETE")] == [3]
        moved = client.transfer_leadership(1)
        assert moved == {"leader_id": 1, "previous_leader_id": 3}
        (sent,) = cluster.requests("POST")
        assert (sent.node_id, sent.raw_path, json.loads(sent.body)) == (
            3,
            "/v1/leader/transfer",
            {"to": 1},
        )
        client.members()
        assert cluster.requests("GET")[-1].node_id == 1  # the new leader, from the answer


def test_transfer_leadership_without_a_target_sends_no_body(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    assert client.transfer_leadership() == {"leader_id": 2, "previous_leader_id": 1}
    (sent,) = cluster.requests("POST")
    assert sent.body == b""
    with pytest.raises(ClientError) as caught:
        client.transfer_leadership(7)
    assert (caught.value.code, caught.value.status) == ("unknown_member", 404)


def test_a_membership_call_at_one_endpoint_makes_one_attempt(
    cluster: FakeCluster, make_client: ClientFactory
) -> None:
    client = make_client(cluster.endpoints)
    cluster.inject(2, Fault(status=503, error="not_caught_up", retry_after="0"))
    with pytest.raises(Unavailable) as caught:
        client.add_member(4, "127.0.0.1:7004", "127.0.0.1:8004", endpoint=cluster.endpoint(2))
    assert caught.value.status == 503
    assert [r.node_id for r in cluster.requests()] == [2]  # no retry, no other node
    view = client.members(endpoint=cluster.endpoint(2))
    assert [member["id"] for member in view["members"]] == [1, 2, 3]
    with pytest.raises(Unavailable):
        client.members(endpoint=refused_endpoint())


# --- the asyncio client in its natural habitat ----------------------------------------------


async def test_async_client_serves_concurrent_callers(cluster: FakeCluster) -> None:
    async with AsyncKVClient(cluster.endpoints) as client:
        revisions = await asyncio.gather(*(client.put(f"c/{n}", b"v") for n in range(20)))
        assert sorted(revisions) == list(range(1, 21))
        keys = [item.key async for item in client.iter_prefix("c/", page_size=7)]
        assert keys == sorted(f"c/{n}" for n in range(20))
