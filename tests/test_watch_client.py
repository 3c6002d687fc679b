"""Tests for the client side of watch (kvraft.client): the NDJSON stream parser, the
cursor that makes resumes exactly-once, the sans-IO resume plan, and both clients end to
end against `FakeCluster` (tests/kv_fake_server.py) with streams cut, nodes killed, lagged
ends, repeated and old events, 410 and 503; also `list_with_revision` and blocking reads.
The `kvraft watch` command is tested in tests/test_watch_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kv_fake_server import FakeCluster, Fault, refused_endpoint

from kvraft.client import (
    AsyncKVClient,
    ClientError,
    CloseStream,
    EndpointRouter,
    FailureKind,
    HttpResponse,
    KeyState,
    KVClient,
    OpenStream,
    ProtocolError,
    ReadStream,
    RetryPolicy,
    TransportFailure,
    Unavailable,
    Wait,
    WatchCompacted,
    WatchCursor,
    WatchEvent,
    WatchStreamParser,
    build_watch,
    parse_watch_message,
    plan_watch,
)

DEADLINE_S = 10.0
"""How long a test waits for something that should happen within milliseconds."""


def put_line(key: str, value: bytes, revision: int, prev: int | None = None) -> bytes:
    obj = {
        "type": "put",
        "key": key,
        "value_b64": base64.b64encode(value).decode(),
        "revision": revision,
        "prev_revision": prev,
    }
    return json.dumps(obj).encode() + b"\n"


def put_event(key: str, value: bytes, revision: int, prev: int | None = None) -> WatchEvent:
    return WatchEvent("put", key, value, revision, prev)


# --- the parser ---------------------------------------------------------------------------------


def test_lines_split_anywhere_across_chunks_parse_the_same() -> None:
    stream = (
        put_line("a", b"\x00\xff", 1)
        + b"\n"  # a blank keep-alive line
        + b'{"type": "delete", "key": "a", "revision": 2, "prev_revision": 1}\r\n'
        + b'{"type": "progress", "revision": 7}\n'
    )
    expected = [
        put_event("a", b"\x00\xff", 1),
        WatchEvent("delete", "a", None, 2, 1),
        WatchEvent("progress", None, None, 7),
    ]
    assert WatchStreamParser().feed(stream) == expected
    for size in (1, 2, 3, 7):
        parser = WatchStreamParser()
        events = []
        for at in range(0, len(stream), size):
            events += parser.feed(stream[at : at + size])
        assert events == expected


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"revision": 1}',
        b'{"type": 7, "revision": 1}',
        b'{"type": "put", "key": "a", "value_b64": "!!", "revision": 1}',
        b'{"type": "put", "key": "a", "revision": 1}',
        b'{"type": "put", "key": "", "value_b64": "", "revision": 1}',
        b'{"type": "put", "key": "a", "value_b64": "", "revision": true}',
        b'{"type": "put", "key": "a", "value_b64": "", "revision": 0}',
        b'{"type": "put", "key": "a", "value_b64": "", "revision": 3, "prev_revision": 3}',
        b'{"type": "delete", "key": ["a"], "revision": 3}',
        b'{"type": "progress", "revision": -1}',
        b'{"type": "lagged", "revision": "9"}',
    ],
)
def test_garbage_lines_are_protocol_errors(line: bytes) -> None:
    parser = WatchStreamParser()
    assert parser.feed(put_line("ok", b"", 1)) == [put_event("ok", b"", 1)]
    with pytest.raises(ProtocolError):
        parser.feed(line + b"\n")


def test_an_unknown_event_type_is_skipped_for_forward_compatibility() -> None:
    assert parse_watch_message({"type": "something_new", "revision": 3}) is None
    assert WatchStreamParser().feed(b'{"type": "something_new"}\n' + put_line("k", b"", 2)) == [
        put_event("k", b"", 2)
    ]


def test_line_size_limit_edge() -> None:
    line = put_line("k", b"x" * 30, 1)
    limit = len(line) - 1  # the line without its newline fits exactly
    assert WatchStreamParser(limit).feed(line) == [put_event("k", b"x" * 30, 1)]
    with pytest.raises(ProtocolError, match="longer than"):
        WatchStreamParser(limit - 1).feed(line)
    # A line that never ends is refused as soon as it is too long, not buffered forever.
    parser = WatchStreamParser(limit)
    parser.feed(line[:limit])
    with pytest.raises(ProtocolError, match="longer than"):
        parser.feed(b"x")


# --- the cursor ---------------------------------------------------------------------------------


def test_cursor_drops_repeats_and_old_events_and_completes_revisions() -> None:
    cursor = WatchCursor("a/", None, 5)
    assert cursor.accept(put_event("a/x", b"", 4)) is None  # below the start
    first = put_event("a/x", b"1", 5)
    assert cursor.accept(first) is first
    assert cursor.next_revision == 5  # revision 5 may hold more changes
    assert cursor.accept(put_event("a/x", b"1", 5)) is None  # the same change again
    second_of_5 = put_event("a/y", b"2", 5)
    assert cursor.accept(second_of_5) is second_of_5  # another change of revision 5
    later = WatchEvent("delete", "a/x", None, 8, 5)
    assert cursor.accept(later) is later
    assert cursor.accept(second_of_5) is None
    progress = WatchEvent("progress", None, None, 9)
    assert cursor.accept(progress) is progress
    assert cursor.next_revision == 10
    assert cursor.accept(WatchEvent("progress", None, None, 9)) is None  # nothing new
    assert cursor.accept(later) is None
    cursor.lagged(12)
    assert cursor.next_revision == 13


def test_cursor_refuses_a_change_it_did_not_ask_for() -> None:
    with pytest.raises(ProtocolError, match="not watched"):
        WatchCursor("a/", None, 1).accept(put_event("b/x", b"", 1))
    with pytest.raises(ProtocolError, match="not watched"):
        WatchCursor("", "k", 1).accept(put_event("k2", b"", 1))


def test_a_watch_from_now_resumes_from_the_first_nodes_revision() -> None:
    cursor = WatchCursor("", None, None)
    cursor.opened({"x-kvraft-revision": "41"})
    assert cursor.next_revision == 42
    cursor.opened({"x-kvraft-revision": "50"})  # a later node's "now" changes nothing
    assert cursor.next_revision == 42


def test_watch_requests_are_what_the_api_documents() -> None:
    request = build_watch("a b/", start_revision=3, progress_s=0)
    assert request.target == "/v1/watch?prefix=a%20b%2F&start_revision=3&progress_s=0"
    assert dict(request.headers)["Accept"] == "application/x-ndjson"
    assert build_watch(key="k/1").target == "/v1/watch?key=k%2F1&progress_s=5"
    for bad in (
        lambda: build_watch("p", key="k"),
        lambda: build_watch(key=""),
        lambda: build_watch(start_revision=0),
        lambda: build_watch(progress_s=-1),
    ):
        with pytest.raises(ClientError):
            bad()


# --- the resume plan, scripted --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


NDJSON = {"content-type": "application/x-ndjson"}


def drive(plan: Any, replies: list[Any], clock: Clock) -> tuple[list[Any], list[WatchEvent]]:
    """Run `plan`, answering each OpenStream/ReadStream with the next reply; returns the
    steps seen and the events delivered (stops when the replies run out)."""
    steps: list[Any] = []
    events: list[WatchEvent] = []
    reply: Any = None
    while True:
        item = plan.send(reply)
        reply = None
        if isinstance(item, WatchEvent):
            events.append(item)
            continue
        steps.append(item)
        if isinstance(item, Wait):
            clock.now += item.delay_s
        elif isinstance(item, OpenStream | ReadStream):
            if not replies:
                return steps, events
            reply = replies.pop(0)


def new_plan(clock: Clock, start: int | None = 1, **options: Any) -> Any:
    router = EndpointRouter(["http://a:1", "http://b:1"])
    policy = RetryPolicy(timeout_s=5.0)
    cursor = WatchCursor("", None, start)
    return plan_watch(cursor, router, policy, clock, random.Random(0), **options)


def test_plan_resumes_on_the_next_node_from_the_cursor() -> None:
    clock = Clock()
    refused = TransportFailure(FailureKind.NOT_SENT, "connection refused")
    cut = TransportFailure(FailureKind.AFTER_SEND, "connection reset")
    steps, events = drive(
        new_plan(clock),
        [
            refused,
            HttpResponse(200, NDJSON, b""),
            put_line("k", b"1", 1) + put_line("k", b"2", 2, 1)[:10],
            cut,
            HttpResponse(200, NDJSON, b""),
            put_line("k", b"1", 1) + put_line("k", b"2", 2, 1),
        ],
        clock,
    )
    opens = [step for step in steps if isinstance(step, OpenStream)]
    assert [(o.endpoint, o.request.target) for o in opens] == [
        ("http://a:1", "/v1/watch?prefix=&start_revision=1&progress_s=5"),
        ("http://b:1", "/v1/watch?prefix=&start_revision=1&progress_s=5"),
        ("http://a:1", "/v1/watch?prefix=&start_revision=1&progress_s=5"),
    ]
    assert sum(isinstance(step, CloseStream) for step in steps) == 1
    assert events == [put_event("k", b"1", 1), put_event("k", b"2", 2, 1)]


def test_plan_gives_up_as_unavailable_only_when_no_node_serves_for_the_timeout() -> None:
    clock = Clock()
    refused = TransportFailure(FailureKind.NOT_SENT, "connection refused")
    with pytest.raises(Unavailable, match="no node served the watch"):
        drive(new_plan(clock), [refused] * 1000, clock)
    assert clock.now <= 5.0


def test_plan_410_is_watch_compacted_and_503_waits_as_told() -> None:
    clock = Clock()
    busy = HttpResponse(503, {"retry-after": "2"}, b'{"error": "too_many_watchers"}')
    gone = HttpResponse(410, {}, b'{"error": "compacted", "compact_revision": 40}')
    with pytest.raises(WatchCompacted) as caught:
        drive(new_plan(clock), [busy, gone], clock)
    assert caught.value.compact_revision == 40
    assert clock.now >= 2.0
    with pytest.raises(ProtocolError):
        drive(new_plan(clock), [HttpResponse(410, {}, b'{"error": "compacted"}')], clock)


def test_plan_refuses_a_stream_that_is_not_ndjson() -> None:
    clock = Clock()
    with pytest.raises(ProtocolError, match="text/html"):
        drive(new_plan(clock), [HttpResponse(200, {"content-type": "text/html"}, b"")], clock)


def test_plan_delivers_progress_only_when_asked() -> None:
    for progress in (False, True):
        clock = Clock()
        _, events = drive(
            new_plan(clock, progress=progress),
            [HttpResponse(200, NDJSON, b""), b'{"type": "progress", "revision": 3}\n'],
            clock,
        )
        assert events == ([WatchEvent("progress", None, None, 3)] if progress else [])


# --- end to end against the fake --------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(3) as fake:
        yield fake


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


CLIENT_OPTIONS: dict[str, Any] = {
    "timeout_s": 5.0,
    "watch_progress_s": 0.2,
    "watch_idle_timeout_s": 3.0,
}


class Watching:
    """A watch consumed in a background thread by either client; `events` fills up as
    changes arrive. Bookmarks (asked for every 0.2 s) wake the consumer so it can stop."""

    def __init__(self, kind: str, endpoints: list[str], prefix: str = "", **watch: Any) -> None:
        self.events: list[WatchEvent] = []
        self.progress: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(kind, endpoints, prefix, watch))
        self._thread.start()

    def _take(self, event: WatchEvent) -> bool:
        if event.type == "progress":
            self.progress.append(event.revision)
        else:
            self.events.append(event)
        return self._stop.is_set()

    def _run(self, kind: str, endpoints: list[str], prefix: str, watch: dict[str, Any]) -> None:
        try:
            if kind == "sync":
                events = KVClient(endpoints, **CLIENT_OPTIONS).watch(prefix, progress=True, **watch)
                with contextlib.closing(events):
                    for event in events:
                        if self._take(event):
                            return
            else:
                asyncio.run(self._run_async(endpoints, prefix, watch))
        except BaseException as error:  # handed to the test
            self.error = error

    async def _run_async(self, endpoints: list[str], prefix: str, watch: dict[str, Any]) -> None:
        async with AsyncKVClient(endpoints, **CLIENT_OPTIONS) as client:
            events = client.watch(prefix, progress=True, **watch)
            try:
                async for event in events:
                    if self._take(event):
                        return
            finally:
                await events.aclose()

    def wait_for(self, count: int) -> list[WatchEvent]:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.events) < count and self.error is None:
            assert time.monotonic() < deadline, f"only {self.events} arrived"
            time.sleep(0.01)
        return list(self.events)

    def wait_for_progress(self, revision: int) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not any(r >= revision for r in self.progress) and self.error is None:
            assert time.monotonic() < deadline, f"bookmarks so far: {self.progress}"
            time.sleep(0.01)

    def finish(self) -> BaseException | None:
        self._stop.set()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive()
        return self.error


def fill(cluster: FakeCluster, count: int, prefix: str = "a/") -> list[WatchEvent]:
    client = KVClient(cluster.endpoints)
    expected = []
    for index in range(count):
        revision = client.put(f"{prefix}{index}", b"v%d" % index)
        expected.append(put_event(f"{prefix}{index}", b"v%d" % index, revision))
    return expected


def watch_starts(cluster: FakeCluster) -> list[tuple[int, str]]:
    return [(r.node_id, r.raw_path) for r in cluster.requests("GET") if "/v1/watch" in r.raw_path]


def test_a_watch_from_a_revision_gets_every_change_in_order(
    cluster: FakeCluster, kind: str
) -> None:
    expected = fill(cluster, 3, "a/")
    fill(cluster, 2, "b/")
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=1)
    assert watching.wait_for(3) == expected
    client = KVClient(cluster.endpoints)
    revision, _ = client.delete("a/0")
    assert watching.wait_for(4)[3] == WatchEvent("delete", "a/0", None, revision, 1)
    assert watching.finish() is None


def test_a_cut_stream_resumes_elsewhere_exactly_once_in_order(
    cluster: FakeCluster, kind: str
) -> None:
    expected = fill(cluster, 5)
    # Node 1 sends two events and half of the third line, then the connection is cut.
    cluster.inject(1, Fault(cut_after_events=2, tail=put_line("a/2", b"v2", 3)[:12]))
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=1)
    assert watching.wait_for(5) == expected
    assert watching.finish() is None
    starts = watch_starts(cluster)
    assert starts[0][0] == 1 and "start_revision=1&" in starts[0][1]
    # Resumed on another node, from the last revision delivered (it may hold more changes).
    assert starts[1][0] != 1 and "start_revision=2&" in starts[1][1]


def test_a_killed_node_and_a_dead_endpoint_do_not_lose_or_repeat_changes(
    cluster: FakeCluster, kind: str
) -> None:
    expected = fill(cluster, 2)
    endpoints = [cluster.endpoint(1), refused_endpoint(), cluster.endpoint(2)]
    watching = Watching(kind, endpoints, "a/", start_revision=1)
    watching.wait_for(2)
    assert cluster.watch_streams(1) == 1
    cluster.kill(1)
    expected += fill(cluster, 3, "a/more")
    assert watching.wait_for(5) == expected
    assert watching.finish() is None
    assert watch_starts(cluster)[-1][0] == 2


def test_a_lagged_end_resumes_from_the_revision_it_names(cluster: FakeCluster, kind: str) -> None:
    expected = fill(cluster, 4)
    cluster.inject(1, Fault(lagged_after_events=2))
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=1)
    assert watching.wait_for(4) == expected
    assert watching.finish() is None
    starts = watch_starts(cluster)
    assert starts[1][0] == 1 and "start_revision=3&" in starts[1][1]  # the same node


def test_repeated_and_old_events_from_a_buggy_server_are_dropped(
    cluster: FakeCluster, kind: str
) -> None:
    expected = fill(cluster, 4)
    # The server first repeats old history (and a change of revision 2 it already sends).
    junk = put_line("a/old", b"x", 1) + put_line("a/1", b"v1", 2) + put_line("a/0", b"v0", 1)
    cluster.inject(1, Fault(prelude=junk))
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=2)
    assert watching.wait_for(3) == expected[1:]
    cluster.inject(1, Fault(cut_after_events=1))
    assert watching.finish() is None


def test_garbage_on_the_stream_is_a_protocol_error(cluster: FakeCluster, kind: str) -> None:
    cluster.inject(1, Fault(prelude=b"<html>oops</html>\n"))
    watching = Watching(kind, cluster.endpoints, "a/")
    deadline = time.monotonic() + DEADLINE_S
    while watching.error is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert isinstance(watching.finish(), ProtocolError)


def test_compacted_history_is_told_then_list_and_watch_recovers(
    cluster: FakeCluster, kind: str
) -> None:
    fill(cluster, 3)
    cluster.compact(2)
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=2)
    error = watching.finish()
    assert isinstance(error, WatchCompacted) and error.compact_revision == 2
    # The recipe: list (with the answer's revision), then watch from revision + 1.
    answer = KVClient(cluster.endpoints).list_with_revision("a/")
    assert [item.key for item in answer.items] == ["a/0", "a/1", "a/2"]
    assert answer.revision == 3
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=answer.revision + 1)
    watching.wait_for_progress(3)
    later = fill(cluster, 1, "a/new")
    assert watching.wait_for(1) == later
    assert watching.finish() is None


def test_too_many_watchers_is_retried_elsewhere(cluster: FakeCluster, kind: str) -> None:
    expected = fill(cluster, 2)
    cluster.inject(1, Fault(status=503, error="too_many_watchers", retry_after="0"))
    watching = Watching(kind, cluster.endpoints, "a/", start_revision=1)
    assert watching.wait_for(2) == expected
    assert watching.finish() is None


def test_a_watch_from_now_misses_nothing_across_a_failover(cluster: FakeCluster, kind: str) -> None:
    fill(cluster, 2)  # before the watch: not reported
    watching = Watching(kind, cluster.endpoints, "a/")
    watching.wait_for_progress(2)
    cluster.kill(1)
    expected = fill(cluster, 2, "a/new")
    assert watching.wait_for(2) == expected
    assert watching.finish() is None
    # The resume asked from the first node's revision + 1, not from the new node's now.
    assert "start_revision=3&" in watch_starts(cluster)[-1][1]


def test_a_key_watch_sees_only_that_key(cluster: FakeCluster, kind: str) -> None:
    client = KVClient(cluster.endpoints)
    client.put("k", b"1")
    client.put("k2", b"x")
    revision = client.put("k", b"2")
    watching = Watching(kind, cluster.endpoints, key="k", start_revision=1)
    assert watching.wait_for(2) == [put_event("k", b"1", 1), put_event("k", b"2", revision, 1)]
    assert watching.finish() is None
    assert "key=k&" in watch_starts(cluster)[0][1]


# --- list revision and blocking reads ---------------------------------------------------------


def test_list_keeps_its_shape_and_list_with_revision_adds_the_revision(
    cluster: FakeCluster,
) -> None:
    fill(cluster, 3)
    client = KVClient(cluster.endpoints)
    items, continuation = client.list("a/", 2)
    assert [item.key for item in items] == ["a/0", "a/1"] and continuation == "a/1"
    answer = client.list_with_revision("a/", 2)
    assert (answer.items, answer.continuation, answer.revision) == (items, continuation, 3)


def test_blocking_reads(cluster: FakeCluster, kind: str) -> None:
    writer = KVClient(cluster.endpoints)
    revision = writer.put("k", b"1")

    def read(**options: Any) -> Any:
        if kind == "sync":
            return KVClient(cluster.endpoints).get("k", **options)

        async def body() -> Any:
            async with AsyncKVClient(cluster.endpoints) as client:
                return await client.get("k", **options)

        return asyncio.run(body())

    # Already above: at once. Not above: its current state after wait_s.
    assert read(wait_revision=0, wait_s=30) == (b"1", revision)
    assert read(wait_revision=revision, wait_s=0.1) == (b"1", revision)
    # A change while waiting ends the wait (whether it lands before or during it).
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(read(wait_revision=1, wait_s=30)))
    started = time.monotonic()
    waiter.start()
    second = writer.put("k", b"2")
    waiter.join(DEADLINE_S)
    assert result == [(b"2", second)] and time.monotonic() - started < DEADLINE_S
    deleted, _ = writer.delete("k")
    assert read(wait_revision=second, wait_s=30) is None
    assert KVClient(cluster.endpoints).wait_key("k", second, 30) == KeyState(None, deleted)
    with pytest.raises(ClientError):
        read(wait_revision=1)
    with pytest.raises(ClientError):
        read(wait_revision=1, wait_s=0)
