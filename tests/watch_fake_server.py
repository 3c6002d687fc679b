"""A tiny in-process fake of kvraft nodes serving the watch contract, for the chaos watcher
tests (until the real endpoint lands, and to script faults it cannot show on demand).

Several nodes, each on its own loopback port, share one store and one log: a write
(``PUT /v1/kv/{key}``, ``If-Match`` honoured) gets the next revision and is recorded in
every node's `kvraft.watch.WatchHub`, so each node streams changes from its own hub
exactly as the contract says (``GET /v1/watch``: NDJSON put/delete/progress lines, a last
``lagged`` line, ``410 compacted``). ``GET /v1/kv/{key}`` and ``GET /v1/kv?prefix=`` read
the store. Tests cut a node's open streams (`cut`), make a node's streams end ``lagged``
(`lag`), or build the fake without the watch route (``watch=False``: a 404, like a build
without the endpoint). It runs its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
from typing import Any

from aiohttp import web

from kvraft.chaos.workload import Endpoint
from kvraft.statemachine import Change
from kvraft.watch import CompactedError, Lagged, WatchHub, change_json
from tests.kv_fake_server import BackgroundServers

__all__ = ["FakeWatchNodes"]


class FakeWatchNodes(BackgroundServers):
    """`nodes` fake nodes; use as a context manager; `endpoints` for the chaos clients."""

    def __init__(self, nodes: int = 3, *, watch: bool = True, compact_revision: int = 0) -> None:
        self.node_ids = list(range(1, nodes + 1))
        self.watch = watch
        self.revision = compact_revision
        self.store: dict[str, tuple[bytes, int]] = {}
        self.hubs = {node: WatchHub(compact_revision) for node in self.node_ids}
        self._streams: dict[int, set[asyncio.Event]] = {node: set() for node in self.node_ids}
        self._cut: dict[int, int] = dict.fromkeys(self.node_ids, 0)
        self._lag: dict[int, int] = dict.fromkeys(self.node_ids, 0)
        super().__init__()
        self._runners: list[web.AppRunner] = []
        self.ports: dict[int, int] = {}

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(node, "127.0.0.1", self.ports[node]) for node in self.node_ids]

    def cut(self, node: int) -> None:
        """Break every stream the node has open (as if it died)."""
        self._loop.call_soon_threadsafe(self._poke, node, self._cut)

    def lag(self, node: int) -> None:
        """End every stream the node has open with a ``lagged`` line."""
        self._loop.call_soon_threadsafe(self._poke, node, self._lag)

    def _poke(self, node: int, counters: dict[int, int]) -> None:
        counters[node] += 1
        for wake in self._streams[node]:
            wake.set()

    async def _start(self) -> None:
        for node in self.node_ids:
            app = web.Application()
            app.router.add_put("/v1/kv/{key:.+}", self._put)
            app.router.add_get("/v1/kv/{key:.+}", self._get)
            app.router.add_get("/v1/kv", self._list)
            if self.watch:
                app.router.add_get("/v1/watch", functools.partial(self._watch, node=node))
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            server = site._server
            assert server is not None
            self.ports[node] = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for node in self.node_ids:
            self._poke(node, self._cut)
        for runner in self._runners:
            await runner.cleanup()

    # --- the KV routes -----------------------------------------------------------------

    async def _put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        value = await request.read()
        current = self.store.get(key)
        if_match = request.headers.get("If-Match")
        if if_match is not None:
            expected = int(if_match.strip('"'))
            if (current[1] if current else 0) != expected:
                return web.json_response(
                    {"error": "condition_failed", "revision": current[1] if current else 0},
                    status=412,
                )
        self.revision += 1
        self.store[key] = (value, self.revision)
        change = Change("put", key, self.revision, current[1] if current else None, value)
        for hub in self.hubs.values():
            hub.record(self.revision, (change,))
        return web.json_response({"revision": self.revision})

    async def _get(self, request: web.Request) -> web.Response:
        found = self.store.get(request.match_info["key"])
        if found is None:
            return web.json_response({"error": "not_found", "message": "no key"}, status=404)
        return web.Response(body=found[0], headers={"ETag": f'"{found[1]}"'})

    async def _list(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        items = [
            {"key": k, "revision": r, "value_b64": base64.b64encode(v).decode("ascii")}
            for k, (v, r) in sorted(self.store.items())
            if k.startswith(prefix)
        ]
        return web.json_response({"items": items, "continuation": None})

    # --- the watch route -----------------------------------------------------------------

    async def _watch(self, request: web.Request, *, node: int) -> web.StreamResponse:
        hub = self.hubs[node]
        wake = asyncio.Event()
        try:
            watcher = hub.watch(
                prefix=request.query.get("prefix", ""),
                start_revision=int(request.query["start_revision"]),
                on_change=wake.set,
            )
        except CompactedError as error:
            return web.json_response(
                {"error": "compacted", "compact_revision": error.compact_revision}, status=410
            )
        progress_s = float(request.query.get("progress_s", "1"))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        cut, lag = self._cut[node], self._lag[node]
        self._streams[node].add(wake)

        async def send(obj: dict[str, Any]) -> None:
            await response.write(json.dumps(obj).encode() + b"\n")

        try:
            while True:
                wake.clear()
                if self._cut[node] != cut:
                    if request.transport is not None:
                        request.transport.close()  # a broken connection, no last line
                    return response
                if self._lag[node] != lag:
                    await send({"type": "lagged", "revision": watcher.progress_revision})
                    return response
                taken = watcher.take()
                if isinstance(taken, Lagged):
                    await send({"type": "lagged", "revision": taken.revision})
                    return response
                for change in taken:
                    await send(change_json(change))
                if taken:
                    continue
                await send({"type": "progress", "revision": watcher.progress_revision})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), progress_s)
        except (ConnectionResetError, RuntimeError):
            return response
        finally:
            self._streams[node].discard(wake)
            hub.cancel(watcher)
