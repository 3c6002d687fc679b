"""`GET /v1/events`: a node's events (`kvraft.events`) over HTTP, and the client that merges
every member's stream (`kvraft events`).

Server side (`serve_events`):

- Server-Sent Events by default (``Accept: text/event-stream``, or anything else that does not
  ask for NDJSON): ``id:`` is the event's sequence number, ``data:`` its JSON object (whose
  ``type`` says what happened), so a browser's `EventSource` resumes by itself (``Last-Event-ID``).
- NDJSON with ``Accept: application/x-ndjson``: one JSON object per line.
- ``?since=SEQ``: start after that sequence number (default 0: every event the node kept).
  ``Last-Event-ID`` wins when it is later.
- ``?follow=0``: send what is kept and end (default: keep the stream open, with an SSE
  comment every `EVENTS_KEEPALIVE_S` so proxies and dead clients are noticed).

A reader never holds the node up: the node only appends to its ring; each reader copies
from it at its own pace and, when it fell behind the ring, gets a ``lagged`` event first.

Client side (`read_member_events`, `merged_events`): ask one node for the members, then
read every member's NDJSON stream, and yield the events merged (sorted by wall time when not
following; as they arrive when following). A member that is down is retried every
`EVENTS_RECONNECT_S` while following, resuming after the last sequence number it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from kvraft.events import EventLog

__all__ = [
    "EVENTS_KEEPALIVE_S",
    "EVENTS_PATH",
    "EVENTS_QUERY_PARAMETERS",
    "EVENTS_RECONNECT_S",
    "member_endpoints",
    "merged_events",
    "read_member_events",
    "serve_events",
]

EVENTS_PATH = "/v1/events"
EVENTS_QUERY_PARAMETERS = frozenset({"since", "follow"})
"""The query parameters `GET /v1/events` knows (for a per-route check of unknown ones)."""

EVENTS_KEEPALIVE_S = 15.0
"""A following stream with nothing to say sends an SSE comment (or an empty NDJSON line) this
often: a client that went away is noticed at the next write, not never."""

EVENTS_SSE_RETRY_MS = 1000
"""How long a browser's EventSource waits before reconnecting to a node that went away."""

EVENTS_RECONNECT_S = 1.0
"""While following, a member that cannot be reached is tried again this often."""

_NDJSON = "application/x-ndjson"


class BadEventsRequest(ValueError):
    """A query parameter of `GET /v1/events` is not what it should be."""


def _since(request: web.BaseRequest) -> int:
    text = request.query.get("since", "0")
    if not (text.isascii() and text.isdecimal()):
        raise BadEventsRequest(f"since: expected a sequence number >= 0, got {text!r}")
    since = int(text)
    last_event_id = request.headers.get("Last-Event-ID", "")
    if last_event_id.isascii() and last_event_id.isdecimal():
        # A browser's EventSource resumes after the last event it received, with the URL it
        # was opened with: the later of the two wins.
        since = max(since, int(last_event_id))
    return since


def _follow(request: web.BaseRequest) -> bool:
    text = request.query.get("follow", "1").lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise BadEventsRequest(f"follow: expected 0 or 1, got {text!r}")


async def serve_events(
    request: web.BaseRequest, events: EventLog, extra_headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """The handler of `GET /v1/events` on the node whose ring is `events`; `extra_headers`
    go on the answer (cross-origin permission for a member's dashboard, `kvraft.ui`)."""
    try:
        since = _since(request)
        follow = _follow(request)
    except BadEventsRequest as error:
        return web.json_response(
            {"error": "bad_request", "message": str(error)}, status=400, headers=extra_headers
        )
    ndjson = _NDJSON in request.headers.get("Accept", "")
    response = web.StreamResponse(
        headers={
            "Content-Type": _NDJSON if ndjson else "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Kvraft-Node-Id": str(events.node_id),
            **(extra_headers or {}),
        }
    )
    await response.prepare(request)
    if not ndjson:
        # A browser's EventSource waits 3 s by default before reconnecting: after a node
        # restarts, the dashboard should see it sooner.
        await response.write(b"retry: %d\n\n" % EVENTS_SSE_RETRY_MS)
    wake = asyncio.Event()
    events.listeners.add(wake.set)
    try:
        loop = asyncio.get_running_loop()
        keepalive_at = loop.time() + EVENTS_KEEPALIVE_S
        transport = request.transport
        while transport is not None and not transport.is_closing():
            wake.clear()  # before reading: an event emitted after this wakes the next wait
            batch = events.read(since)
            if batch:
                since = batch[-1].seq
                await response.write(b"".join(_frame(event.to_json(), ndjson) for event in batch))
                keepalive_at = loop.time() + EVENTS_KEEPALIVE_S
                continue
            if not follow:
                break
            if loop.time() >= keepalive_at:
                await response.write(b"\n" if ndjson else b": keepalive\n\n")
                keepalive_at = loop.time() + EVENTS_KEEPALIVE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, keepalive_at - loop.time()))
    except (ConnectionResetError, ConnectionError):
        pass  # the reader went away
    finally:
        events.listeners.discard(wake.set)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def _frame(body: dict[str, Any], ndjson: bool) -> bytes:
    line = json.dumps(body, separators=(",", ":")).encode()
    if ndjson:
        return line + b"\n"
    # No ``event:`` line: every event reaches an EventSource's `onmessage`, type in its data.
    return b"id: %d\ndata: %s\n\n" % (body["seq"], line)


# --- client ----------------------------------------------------------------------------------


async def member_endpoints(
    session: aiohttp.ClientSession,
    endpoints: Sequence[str],
    timeout_s: float,
    authorization: Callable[[], Awaitable[str | None]] | None = None,
) -> list[str]:
    """The HTTP base URL of every member, from the first endpoint whose `GET /v1/status`
    answers (any member answers it, with or without a leader); the endpoints themselves if
    none does."""
    for endpoint in endpoints:
        value = None if authorization is None else await authorization()
        headers = {} if value is None else {"Authorization": value}
        try:
            async with session.get(
                endpoint + "/v1/status",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as answer:
                if answer.status != 200:
                    continue
                body = await answer.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
        # The members serve the scheme this endpoint does (`[tls]` is the cluster's).
        scheme = endpoint.partition("://")[0] if "://" in endpoint else "http"
        urls = [
            f"{scheme}://{member['http_address']}"
            for member in body.get("members", [])
            if isinstance(member, dict) and member.get("http_address")
        ]
        if urls:
            return urls
    return list(endpoints)


async def read_member_events(
    session: aiohttp.ClientSession,
    endpoint: str,
    *,
    follow: bool,
    since: int = 0,
    timeout_s: float = 5.0,
    authorization: Callable[[], Awaitable[str | None]] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """One member's events as JSON objects. Following, it reconnects (resuming after the last
    sequence number seen) until cancelled; otherwise it ends after what the node kept, or at
    once if the node cannot be reached. `authorization`: gives the ``Authorization`` header
    of each connection (a token, renewed when due, once auth is enabled: #20)."""
    params = {"since": str(since), "follow": "1" if follow else "0"}
    while True:
        headers = {"Accept": _NDJSON}
        if authorization is not None:
            value = await authorization()
            if value is not None:
                headers["Authorization"] = value
        try:
            async with session.get(
                endpoint + "/v1/events",
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None if follow else timeout_s,
                    sock_connect=timeout_s,
                    sock_read=None if follow else timeout_s,
                ),
            ) as answer:
                answer.raise_for_status()
                async for raw in answer.content:
                    line = raw.strip()
                    if not line:
                        continue
                    event = json.loads(line)
                    if isinstance(event, dict):
                        params["since"] = str(event.get("seq", params["since"]))
                        yield event
        except (aiohttp.ClientError, TimeoutError, ValueError):
            if not follow:
                return
        if not follow:
            return
        await asyncio.sleep(EVENTS_RECONNECT_S)  # a pause between attempts, not a wait on state


async def merged_events(
    endpoints: Sequence[str],
    *,
    follow: bool,
    timeout_s: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    authorization: Callable[[], Awaitable[str | None]] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every member's events: sorted by wall time (then node) when not following; as they
    arrive when following, until cancelled. `ssl_context`: for https:// endpoints;
    `authorization`: see `read_member_events`."""
    connector = aiohttp.TCPConnector(ssl=ssl_context or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        members = await member_endpoints(session, endpoints, timeout_s, authorization)
        if not follow:
            collected: list[dict[str, Any]] = []
            for endpoint in members:
                async for event in read_member_events(
                    session,
                    endpoint,
                    follow=False,
                    timeout_s=timeout_s,
                    authorization=authorization,
                ):
                    collected.append(event)
            collected.sort(key=lambda e: (e.get("time", 0), e.get("node_id", 0), e.get("seq", 0)))
            for event in collected:
                yield event
            return
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump(endpoint: str) -> None:
            async for event in read_member_events(
                session, endpoint, follow=True, timeout_s=timeout_s, authorization=authorization
            ):
                await queue.put(event)

        tasks = [asyncio.create_task(pump(endpoint)) for endpoint in members]
        try:
            while True:
                yield await queue.get()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
