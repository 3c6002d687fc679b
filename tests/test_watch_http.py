"""The watch contract over HTTP (issue #17): list revisions, `GET /v1/watch` as NDJSON and
as Server-Sent Events, 410 below the kept history, `lagged`, blocking reads, limits. Three
real nodes and their HTTP APIs in one event loop (`tests/in_process_cluster.py`)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp

from tests.in_process_cluster import DEADLINE_S, InProcessNode, leader_of, wait_until


async def put(http: aiohttp.ClientSession, node: InProcessNode, key: str, value: bytes) -> int:
    async with http.put(f"{node.url}/v1/kv/{key}", data=value) as response:
        assert response.status == 200, await response.text()
        revision: int = (await response.json())["revision"]
        return revision


async def delete(http: aiohttp.ClientSession, node: InProcessNode, key: str) -> int:
    async with http.delete(f"{node.url}/v1/kv/{key}") as response:
        assert response.status == 200, await response.text()
        revision: int = (await response.json())["revision"]
        return revision


async def read_lines(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    lines = []
    while len(lines) < count:
        line = await asyncio.wait_for(response.content.readline(), DEADLINE_S)
        assert line, f"the stream ended after {lines}"
        lines.append(json.loads(line))
    return lines


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


async def test_a_list_says_its_revision_and_a_watch_from_the_next_one_misses_nothing(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader = leader_of(members)
    assert leader is not None
    follower = next(m for m in members if m is not leader)
    first = await put(http, leader, "app/a", b"one")
    async with http.get(f"{follower.url}/v1/kv?prefix=app/") as listed:
        body = await listed.json()
        assert int(listed.headers["X-Kvraft-Revision"]) == body["revision"]
    assert body["revision"] >= first
    assert [item["key"] for item in body["items"]] == ["app/a"]
    url = f"{follower.url}/v1/watch?prefix=app/&start_revision={body['revision'] + 1}"
    async with http.get(url) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("application/x-ndjson")
        second = await put(http, leader, "app/a", b"two")
        await put(http, leader, "elsewhere", b"not watched")
        removed = await delete(http, leader, "app/a")
        events = await read_lines(stream, 2)
    assert events == [
        {
            "type": "put",
            "key": "app/a",
            "value_b64": b64(b"two"),
            "revision": second,
            "prev_revision": first,
        },
        {"type": "delete", "key": "app/a", "revision": removed, "prev_revision": second},
    ]


async def test_a_watch_replays_from_a_past_revision_and_bookmarks_with_progress(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader = leader_of(members)
    assert leader is not None
    revisions = [await put(http, leader, "k", str(n).encode()) for n in range(3)]
    url = f"{leader.url}/v1/watch?key=k&start_revision={revisions[1]}&progress_s=0.05"
    async with http.get(url) as stream:
        replayed = await read_lines(stream, 2)
        progress = (await read_lines(stream, 1))[0]
    assert [event["revision"] for event in replayed] == revisions[1:]
    assert progress["type"] == "progress" and progress["revision"] >= revisions[-1]


async def test_server_sent_events_carry_the_revision_as_their_id_and_resume_after_it(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader = leader_of(members)
    assert leader is not None
    first = await put(http, leader, "k", b"one")
    second = await put(http, leader, "k", b"two")
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(first)}
    # An EventSource reconnects with the URL it started with: the later revision wins.
    url = f"{leader.url}/v1/watch?key=k&progress_s=0&start_revision={first}"
    async with http.get(url, headers=headers) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = [
            (await asyncio.wait_for(stream.content.readline(), DEADLINE_S)).decode()
            for _ in range(3)
        ]
    assert lines[0] == f"id: {second}\n"
    assert json.loads(lines[1].removeprefix("data: "))["revision"] == second
    assert lines[2] == "\n"


async def test_a_watch_below_the_kept_history_is_answered_410_with_the_compact_revision(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader = leader_of(members)
    assert leader is not None
    leader.node.watch_hub.history_revisions_max = 2
    revisions = [await put(http, leader, "k", str(n).encode()) for n in range(4)]
    async with http.get(f"{leader.url}/v1/watch?start_revision={revisions[0]}") as refused:
        assert refused.status == 410
        body = await refused.json()
    assert body["error"] == "compacted"
    assert body["compact_revision"] == leader.node.watch_hub.compact_revision >= revisions[1]


async def test_a_watcher_whose_history_restarted_ends_with_lagged(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    # A snapshot installed from the leader replaces the state wholesale (the shell calls
    # `restart`); the stream says where its reader stands instead of skipping silently.
    leader = leader_of(members)
    assert leader is not None
    follower = next(m for m in members if m is not leader)
    revision = await put(http, leader, "k", b"v")
    await wait_until(lambda: follower.node.state_machine.applied_index >= revision, "applied")
    url = f"{follower.url}/v1/watch?key=k&start_revision={revision}&progress_s=0"
    async with http.get(url) as stream:
        (event,) = await read_lines(stream, 1)
        hub = follower.node.watch_hub
        hub.restart(hub.applied_revision + 10)
        (lagged,) = await read_lines(stream, 1)
        assert await asyncio.wait_for(stream.content.read(), DEADLINE_S) == b""
    assert event["revision"] == revision
    assert lagged == {"type": "lagged", "revision": revision}


async def test_a_blocking_read_answers_when_the_key_changes_or_when_the_wait_is_over(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    leader = leader_of(members)
    assert leader is not None
    follower = next(m for m in members if m is not leader)
    first = await put(http, leader, "k", b"one")
    url = f"{follower.url}/v1/kv/k?wait_revision={first}&wait_s=30"
    waiting = asyncio.create_task(http.get(url))
    # A linearizable blocking read waits on the leader (the follower forwards it at once).
    hub = leader.node.watch_hub
    await wait_until(lambda: hub.watcher_count == 1, "the read waiting on the leader")
    second = await put(http, leader, "k", b"two")
    async with await waiting as answer:
        assert answer.status == 200
        assert await answer.read() == b"two"
        assert answer.headers["ETag"] == f'"{second}"'
    removed = await delete(http, leader, "k")
    async with http.get(f"{follower.url}/v1/kv/k?wait_revision={second}&wait_s=30") as gone:
        assert gone.status == 404
        assert (await gone.json())["revision"] == removed
    async with http.get(f"{follower.url}/v1/kv/k?wait_revision={removed}&wait_s=0.1") as idle:
        assert idle.status == 404  # nothing changed in time: the current state


async def test_watch_requests_out_of_range_are_refused(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    node = members[0]
    for query in (
        "start_revision=0",
        "start_revision=x",
        "start_revision=\u00b2",  # a digit to str.isdigit, not to int()
        "progress_s=-1",
        "progress_s=nan",
    ):
        async with http.get(f"{node.url}/v1/watch?{query}") as refused:
            assert refused.status == 400, query
    async with http.get(f"{node.url}/v1/kv/k?wait_revision=1&wait_s=100000") as refused:
        assert refused.status == 400
    node.node.watch_hub.watchers_max = 0
    async with http.get(f"{node.url}/v1/watch") as full:
        assert full.status == 503
        assert full.headers["Retry-After"]
        assert (await full.json())["error"] == "too_many_watchers"


async def test_a_stream_whose_client_left_gives_its_watcher_up(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    # aiohttp does not cancel a handler whose client went away: an idle stream must notice
    # by itself, or a node would keep a watcher per abandoned connection forever.
    node = members[0]
    hub = node.node.watch_hub
    stream = await http.get(f"{node.url}/v1/watch?progress_s=0")
    await wait_until(lambda: hub.watcher_count == 1, "the watcher")
    stream.close()
    await wait_until(lambda: hub.watcher_count == 0, "the watcher given up")


async def test_a_blocking_read_through_a_follower_may_wait_longer_than_the_request_timeout(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    # Nothing changes: after `wait_s` the answer is the current state, even though `wait_s`
    # is longer than the request timeout the forwarding follower would otherwise allow.
    leader = leader_of(members)
    assert leader is not None
    follower = next(m for m in members if m is not leader)
    revision = await put(http, leader, "k", b"still")
    timeout_s = follower.node.config.limits.request_timeout_ms / 1000
    url = f"{follower.url}/v1/kv/k?wait_revision={revision}&wait_s={timeout_s + 3}"
    async with http.get(url) as answer:
        assert answer.status == 200, await answer.text()
        assert await answer.read() == b"still"


async def test_a_blocking_read_of_an_unchanged_key_waits_even_below_the_kept_history(
    members: list[InProcessNode], http: aiohttp.ClientSession
) -> None:
    # After a restart a node keeps no history before its snapshot; a key whose revision is
    # at most `wait_revision` has not changed since, so the read still waits for a change.
    leader = leader_of(members)
    assert leader is not None
    first = await put(http, leader, "k", b"one")
    await put(http, leader, "other", b"later")
    hub = leader.node.watch_hub
    hub.restart(hub.applied_revision)  # as after a restart from a snapshot taken now
    assert hub.compact_revision > first
    url = f"{leader.url}/v1/kv/k?wait_revision={first}&wait_s=30"
    waiting = asyncio.create_task(http.get(url))
    await wait_until(lambda: hub.watcher_count == 1, "the read waiting")
    await put(http, leader, "k", b"two")
    async with await waiting as answer:
        assert await answer.read() == b"two"
