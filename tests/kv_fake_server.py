"""A test double of a kvraft cluster's HTTP API, for the client and CLI tests.

It is a fake of the *server*: several nodes, each on its own loopback port, sharing one
in-memory store, following the documented API (`/v1/kv`, `/v1/status`, the
`X-Kvraft-*` headers, conditions, idempotency keys, list pagination, and the membership
routes `/v1/members` and `/v1/leader/transfer`, answered by any node as if forwarded to
the leader), and the watch side of it: `/v1/watch` NDJSON streams from a shared change
history (with bookmarks, a settable compaction point answered 410), list answers with their
`revision`, `X-Kvraft-Revision` on every answer and blocking reads (`wait_revision`).
Tests script faults per node (an error status with `Retry-After`, a dropped connection,
a malformed answer; for a watch, a stream cut after some events, a `lagged` end, raw
lines such as repeats or garbage), optionally after applying the request, kill a node
(its streams are cut and its port refuses), and read back every request each node
received. It runs its own event loop in a background thread so blocking
clients, `CliRunner` and asyncio clients can all talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

__all__ = ["FakeCluster", "Fault", "RecordedRequest", "refused_endpoint"]

START_TIMEOUT_S = 10.0
"""The longest starting or stopping the fake may take."""


def refused_endpoint() -> str:
    """An http endpoint on which nothing listens, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True, slots=True)
class Fault:
    """What a node does with the next request it receives instead of answering normally.

    Fields:
        status: answer with this HTTP status and a JSON error body.
        error: the error code in that body.
        retry_after: the `Retry-After` header value, if any.
        apply_first: carry out the request before failing (the ambiguous case).
        drop: close the connection without any answer.
        body: answer 200 with these raw bytes (a malformed answer).

    Only a watch (`/v1/watch`) heeds these, and streams normally otherwise:
        prelude: raw bytes written first (repeated or old events, garbage).
        cut_after_events: close the connection after this many events (0: before any).
        tail: raw bytes written just before that cut (e.g. half a line).
        lagged_after_events: after this many events end with `lagged`.

    `Fault()`, with none of status, drop and body, answers normally: a placeholder that
    lets the next fault hit a later request.
    """

    status: int | None = None
    error: str = "unavailable"
    retry_after: str | None = None
    apply_first: bool = False
    drop: bool = False
    body: bytes | None = None
    prelude: bytes = b""
    cut_after_events: int | None = None
    tail: bytes = b""
    lagged_after_events: int | None = None

    @property
    def passes(self) -> bool:
        return self.status is None and not self.drop and self.body is None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request a node received: the node, method, decoded key (or None), the raw
    path, headers and body."""

    node_id: int
    method: str
    key: str | None
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _State:
    store: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    revision: int = 0
    idempotent_answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: dict[int, collections.deque[Fault]] = field(default_factory=dict)
    members: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    deleted_at: dict[str, int] = field(default_factory=dict)
    compact_revision: int = 0


class BackgroundServers:
    """Fake nodes served on an event loop of their own, in a thread, so that a test's
    blocking client can talk to them. `with` starts them (`_start`, on that loop) and stops
    them (`_stop`); subclasses define both."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


class FakeCluster(BackgroundServers):
    """`with FakeCluster(3) as cluster:` gives `cluster.endpoints` of three live nodes."""

    def __init__(self, nodes: int = 3, *, leader_id: int = 1, term: int = 4) -> None:
        self.node_ids = list(range(1, nodes + 1))
        self.leader_id = leader_id
        self.term = term
        self.endpoints: list[str] = []
        self._ports: dict[int, int] = {}
        self._state = _State()
        self._lock = threading.Lock()
        super().__init__()
        self._runners: list[web.AppRunner] = []
        self._sites: dict[int, web.TCPSite] = {}
        self._streams: dict[int, set[asyncio.BaseTransport]] = {}
        self._changed: asyncio.Event | None = None

    # -- life cycle ----------------------------------------------------------------

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        for node_id in self.node_ids:
            app = web.Application()
            app.router.add_get("/v1/watch", self._watch_handler(node_id))
            app.router.add_route("*", "/v1/kv/{key:.+}", self._handler(node_id, self._kv))
            app.router.add_get("/v1/kv", self._handler(node_id, self._list))
            app.router.add_get("/v1/status", self._handler(node_id, self._status))
            app.router.add_route("*", "/v1/members", self._handler(node_id, self._members))
            app.router.add_delete(
                "/v1/members/{member_id}", self._handler(node_id, self._remove_member)
            )
            app.router.add_post("/v1/leader/transfer", self._handler(node_id, self._transfer))
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            self._sites[node_id] = site
            self._streams[node_id] = set()
            port = runner.addresses[0][1]
            self._ports[node_id] = port
            self.endpoints.append(f"http://127.0.0.1:{port}")
        for node_id in self.node_ids:
            self._state.members[node_id] = {
                "id": node_id,
                "raft_address": f"127.0.0.1:{7000 + node_id}",
                "http_address": f"127.0.0.1:{self._ports[node_id]}",
                "voter": True,
            }

    async def _stop(self) -> None:
        for streams in self._streams.values():
            for transport in list(streams):
                transport.abort()
        self._wake()  # the watch handlers see their connections gone and return
        for runner in self._runners:
            await runner.cleanup()

    async def _kill(self, node_id: int) -> None:
        site = self._sites.pop(node_id, None)
        if site is not None:
            await site.stop()
        for transport in list(self._streams[node_id]):
            transport.abort()
        self._wake()

    def _wake(self) -> None:
        """Runs on the loop: wake every watch and blocking read to look at the store."""
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what tests use ------------------------------------------------------------

    def endpoint(self, node_id: int) -> str:
        return f"http://127.0.0.1:{self._ports[node_id]}"

    def inject(self, node_id: int, *faults: Fault) -> None:
        """Queue `faults` for the next requests to `node_id`, one fault per request."""
        with self._lock:
            self._state.faults.setdefault(node_id, collections.deque()).extend(faults)

    def requests(self, method: str | None = None) -> list[RecordedRequest]:
        """Every request received so far (optionally only one method), in order."""
        with self._lock:
            return [r for r in self._state.requests if method is None or r.method == method]

    def kill(self, node_id: int) -> None:
        """Take `node_id` down: its watch streams are cut and its port refuses connections."""
        asyncio.run_coroutine_threadsafe(self._kill(node_id), self._loop).result(START_TIMEOUT_S)

    def compact(self, revision: int) -> None:
        """Forget the change history up to `revision`: a watch from there gets a 410."""
        with self._lock:
            self._state.compact_revision = revision

    def watch_streams(self, node_id: int) -> int:
        """How many watch streams `node_id` is serving now."""
        return len(self._streams[node_id])

    def stored(self, key: str) -> tuple[bytes, int] | None:
        with self._lock:
            return self._state.store.get(key)

    def member_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._state.members)

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._state.store))

    # -- the server ----------------------------------------------------------------

    def _handler(self, node_id: int, inner: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            key = request.match_info.get("key")
            if key is not None and request.method == "GET" and "wait_revision" in request.query:
                try:
                    wait_revision = int(request.query["wait_revision"])
                    wait_s = float(request.query.get("wait_s", "10"))
                except ValueError:
                    return web.json_response(
                        {"error": "bad_request", "message": "wait"}, status=400
                    )
                await self._wait_for_key(key, wait_revision, wait_s)
            with self._lock:
                self._state.requests.append(
                    RecordedRequest(
                        node_id, request.method, key, request.raw_path, dict(request.headers), body
                    )
                )
                queue = self._state.faults.get(node_id)
                fault = queue.popleft() if queue else None
                if fault is not None and fault.passes:
                    fault = None
                if fault is None or fault.apply_first:
                    status, payload, headers = inner(node_id, request, body)
            response: web.StreamResponse
            if fault is None:
                response = _respond(status, payload, headers)
            elif fault.drop:
                assert request.transport is not None
                request.transport.abort()
                response = web.Response()
            elif fault.body is not None:
                response = web.Response(status=200, body=fault.body)
            else:
                assert fault.status is not None
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                response = web.json_response(
                    {"error": fault.error, "message": "injected by the test"},
                    status=fault.status,
                    headers=extra,
                )
            self._node_headers(node_id, response)
            if request.method != "GET":
                self._wake()
            return response

        return handle

    def _node_headers(self, node_id: int, response: web.StreamResponse) -> None:
        response.headers["X-Kvraft-Node-Id"] = str(node_id)
        response.headers["X-Kvraft-Leader-Id"] = str(self.leader_id)
        response.headers["X-Kvraft-Term"] = str(self.term)
        with self._lock:
            response.headers["X-Kvraft-Revision"] = str(self._state.revision)

    def _key_revision(self, key: str) -> int:
        """Runs under the lock: the revision of the key's last write or deletion, or 0."""
        entry = self._state.store.get(key)
        return entry[1] if entry is not None else self._state.deleted_at.get(key, 0)

    async def _wait_for_key(self, key: str, wait_revision: int, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            changed = self._changed
            assert changed is not None
            with self._lock:
                if self._key_revision(key) > wait_revision:
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    def _watch_handler(self, node_id: int) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            with self._lock:
                self._state.requests.append(
                    RecordedRequest(
                        node_id, request.method, None, request.raw_path, dict(request.headers), b""
                    )
                )
                queue = self._state.faults.get(node_id)
                fault = queue.popleft() if queue else None
            response: web.StreamResponse
            if fault is not None and fault.drop:
                assert request.transport is not None
                request.transport.abort()
                response = web.Response()
            elif fault is not None and fault.body is not None:
                response = web.Response(status=200, body=fault.body)
            elif fault is not None and fault.status is not None:
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                response = web.json_response(
                    {"error": fault.error, "message": "injected by the test"},
                    status=fault.status,
                    headers=extra,
                )
            else:
                return await self._watch(node_id, request, fault)
            self._node_headers(node_id, response)
            return response

        return handle

    async def _watch(
        self, node_id: int, request: web.Request, fault: Fault | None
    ) -> web.StreamResponse:
        query = request.query
        prefix, key = query.get("prefix", ""), query.get("key")
        try:
            progress_s = float(query.get("progress_s", "10"))
            start = int(query["start_revision"]) if "start_revision" in query else None
        except ValueError:
            return web.json_response({"error": "bad_request", "message": "watch"}, status=400)
        with self._lock:
            applied, compact = self._state.revision, self._state.compact_revision
        position = applied + 1 if start is None else start
        if position <= compact:
            response: web.StreamResponse = web.json_response(
                {"error": "compacted", "compact_revision": compact}, status=410
            )
            self._node_headers(node_id, response)
            return response
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        self._node_headers(node_id, response)
        await response.prepare(request)
        transport = request.transport
        assert transport is not None
        streams = self._streams[node_id]
        streams.add(transport)
        fault = fault or Fault()
        loop = asyncio.get_running_loop()

        def line(obj: dict[str, Any]) -> bytes:
            return json.dumps(obj).encode() + b"\n"

        try:
            if fault.prelude:
                await response.write(fault.prelude)
            sent = 0
            last_progress = loop.time()
            while not transport.is_closing():
                if fault.cut_after_events == sent:
                    if fault.tail:
                        await response.write(fault.tail)
                    transport.close()  # flushes what was written, then closes mid-stream
                    return response
                changed = self._changed
                assert changed is not None
                with self._lock:
                    applied = self._state.revision
                    pending = [
                        change
                        for change in self._state.history
                        if change["revision"] >= position
                        and (
                            change["key"] == key
                            if key is not None
                            else change["key"].startswith(prefix)
                        )
                    ]
                for change in pending:
                    await response.write(line(change))
                    sent += 1
                    position = change["revision"] + 1
                    if fault.cut_after_events == sent:
                        break
                    if fault.lagged_after_events == sent:
                        await response.write(line({"type": "lagged", "revision": position - 1}))
                        await response.write_eof()
                        return response
                else:
                    position = max(position, applied + 1)
                if fault.cut_after_events == sent:
                    continue
                now = loop.time()
                if progress_s > 0 and now - last_progress >= progress_s:
                    await response.write(line({"type": "progress", "revision": position - 1}))
                    last_progress = now
                timeout_s = progress_s - (now - last_progress) if progress_s > 0 else 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(timeout_s, 0.01))
        except (ConnectionError, RuntimeError):
            pass  # the client went away, or the node was killed
        finally:
            streams.discard(transport)
        return response

    def _kv(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """Runs under the lock."""
        state = self._state
        key = request.match_info["key"]
        if request.method == "GET":
            if request.query.get("consistency", "linearizable") not in ("linearizable", "stale"):
                return 400, {"error": "bad_request", "message": "bad consistency"}, {}
            entry = state.store.get(key)
            if entry is None:
                missing: dict[str, Any] = {"error": "not_found", "message": f"no key {key!r}"}
                if key in state.deleted_at:
                    missing["revision"] = state.deleted_at[key]
                return 404, missing, {}
            return 200, entry[0], {"ETag": f'"{entry[1]}"'}
        if request.method not in ("PUT", "DELETE"):
            return 405, {"error": "bad_request", "message": "method"}, {}
        if len(key.encode()) > 64:
            return 413, {"error": "key_too_large", "message": "key longer than 64 bytes"}, {}
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and idempotency_key in state.idempotent_answers:
            status, remembered = state.idempotent_answers[idempotency_key]
            return status, remembered, {}
        current = state.store.get(key)
        current_revision = current[1] if current else 0
        if_match = request.headers.get("If-Match")
        if (if_match is not None and if_match != f'"{current_revision}"') or (
            request.headers.get("If-None-Match") == "*" and current is not None
        ):
            return 412, {"error": "condition_failed", "revision": current_revision}, {}
        state.revision += 1
        change = {"key": key, "revision": state.revision, "prev_revision": current_revision or None}
        if request.method == "PUT":
            state.store[key] = (body, state.revision)
            state.deleted_at.pop(key, None)
            state.history.append(
                {"type": "put", **change, "value_b64": base64.b64encode(body).decode()}
            )
            payload: dict[str, Any] = {"revision": state.revision}
        else:
            state.store.pop(key, None)
            if current is not None:
                state.deleted_at[key] = state.revision
                state.history.append({"type": "delete", **change})
            payload = {"revision": state.revision, "deleted": current is not None}
        if idempotency_key is not None:
            state.idempotent_answers[idempotency_key] = (200, payload)
        return 200, payload, {}

    def _list(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        prefix = request.query.get("prefix", "")
        start_after = request.query.get("start_after")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return 400, {"error": "bad_request", "message": "limit"}, {}
        keys = sorted(
            k
            for k in self._state.store
            if k.startswith(prefix) and (start_after is None or k > start_after)
        )
        page = keys[:limit]
        items = [
            {
                "key": k,
                "revision": self._state.store[k][1],
                "value_b64": base64.b64encode(self._state.store[k][0]).decode(),
            }
            for k in page
        ]
        continuation = page[-1] if len(keys) > limit else None
        return (
            200,
            {"items": items, "continuation": continuation, "revision": self._state.revision},
            {},
        )

    def _members_view(self) -> dict[str, Any]:
        """Runs under the lock: what the leader answers to `GET /v1/members`."""
        commit = self._state.revision
        items = [
            {**member, "match_index": commit, "caught_up": True}
            for _, member in sorted(self._state.members.items())
        ]
        return {"leader_id": self.leader_id, "term": self.term, "change_pending": False,
                "members": items}  # fmt: skip

    def _members(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """`GET /v1/members`, and `POST /v1/members` (add a node; harmless to repeat)."""
        if request.method == "GET":
            return 200, self._members_view(), {}
        if request.method != "POST":
            return 405, {"error": "method_not_allowed", "message": request.method}, {}
        try:
            add = json.loads(body)
            new_id, raft, http = add["id"], add["raft_address"], add["http_address"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "bad_request", "message": "not an add request"}, {}
        member = {"id": new_id, "raft_address": raft, "http_address": http,
                  "voter": add.get("voter", True)}  # fmt: skip
        known = self._state.members.get(new_id)
        if known is not None and (known["raft_address"], known["http_address"]) != (raft, http):
            return 409, {"error": "member_conflict", "message": "at another address"}, {}
        self._state.members[new_id] = member
        return 200, self._members_view(), {}

    def _remove_member(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        member_id = int(request.match_info["member_id"])
        if self._state.members.pop(member_id, None) is None:
            return 404, {"error": "unknown_member", "message": f"no node {member_id}"}, {}
        return 200, self._members_view(), {}

    def _transfer(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        target = json.loads(body).get("to") if body.strip() else None
        voters = sorted(n for n, m in self._state.members.items() if m["voter"])
        if target is None:
            target = next(n for n in voters if n != self.leader_id)
        elif target not in voters:
            return 404, {"error": "unknown_member", "message": f"no voter {target}"}, {}
        previous, self.leader_id = self.leader_id, target
        return 200, {"leader_id": target, "previous_leader_id": previous}, {}

    def _status(
        self, node_id: int, request: web.Request, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        members = [
            {key: member[key] for key in ("id", "raft_address", "http_address", "voter")}
            for _, member in sorted(self._state.members.items())
        ]
        return (
            200,
            {
                "id": node_id,
                "pid": os.getpid(),
                "role": "leader" if node_id == self.leader_id else "follower",
                "term": self.term,
                "leader_id": self.leader_id,
                "commit_index": self._state.revision,
                "applied_index": self._state.revision,
                "last_log_index": self._state.revision,
                "snapshot_index": 0,
                "cluster_id": "fake",
                "members": members,
                "membership_change_pending": False,
            },
            {},
        )


def _respond(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
    if isinstance(payload, bytes):
        return web.Response(status=status, body=payload, headers=headers)
    return web.Response(
        status=status, text=json.dumps(payload), content_type="application/json", headers=headers
    )
