"""The chaos watchers: watch streams held open for the whole run, recorded line by line.

Theory of operation
-------------------
A few watchers (`WATCHERS`), each a thread, stream
``GET /v1/watch?prefix=P&start_revision=R&progress_s=S`` (NDJSON) from the nodes, watcher
i starting on node i, with prefixes that cover every key the register and set clients
write (`WATCH_PREFIXES`: everything, the registers only, the set only). The first stream
starts at revision 1; every later one resumes from the last revision seen (an event's or a
progress announcement's) + 1:

* ``lagged`` (the node's history moved on): resume on the same node from its revision + 1;
* the connection breaks, is refused, answers anything but 200/410, or stays silent for
  `STREAM_IDLE_TIMEOUT_S` (progress is asked for every `PROGRESS_S`, so a live stream is
  never that quiet; a paused node is): reconnect to the next node, after a short pause;
* ``410 compacted``: the history no longer reaches back to the resume point. The watcher
  records the compaction, re-lists its prefix from that node (``consistency=stale``: its
  state is at or past the compaction), and watches from ``compact_revision + 1``;
* ``404``: the nodes do not serve watches at all (a build without the endpoint): the
  watcher records it and stops; the report says the watch check was skipped.

Everything goes to ``DIR/watch.jsonl`` (`kvraft.chaos.watch_check.WATCH_FILE_NAME`), one
JSON object per line: ``open`` (watcher, stream, node, prefix, start_revision), ``item``
(each line received, as received), ``end`` (how, revision, detail) and ``relist``.
`kvraft.chaos.watch_check` reads it back.

Streams are read with `http.client` (one connection per stream, a fresh one per resume),
line by line, each line at most `LINE_BYTES_MAX`. `Watchers.stop` shuts the open sockets
down, so no thread waits for a quiet stream to end.

`broken` (tests only; ``kvraft chaos --broken-watch MODE``) damages what the watchers
record, on the client side, to prove the checker notices: ``skip-resume`` drops the first
event of every resumed stream (its revision still counts as seen), ``drop-one`` drops the
`DROP_ONE_AT`-th event of watcher 0.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from kvraft.chaos.burst import BURST_KEY_PREFIX
from kvraft.chaos.history import EventLog
from kvraft.chaos.watch_check import parse_watch_item
from kvraft.chaos.workload import Endpoint, exchange
from kvraft.client import HttpResponse, KVError, build_list, interpret_list
from kvraft.statemachine import LIST_LIMIT_MAX

__all__ = [
    "BROKEN_WATCH_MODES",
    "CONNECT_TIMEOUT_S",
    "DROP_ONE_AT",
    "LINE_BYTES_MAX",
    "PROGRESS_S",
    "RECONNECT_PAUSE_S",
    "RELIST_PAGES_MAX",
    "STREAM_IDLE_TIMEOUT_S",
    "WATCHERS",
    "WATCH_PREFIXES",
    "Watchers",
    "watch_target",
]

WATCHERS = 3
"""Watchers per run: one per node of a 3-node cluster, each on its own prefix."""

WATCH_PREFIXES = ("", "r/", "set/")
"""Watcher i watches prefix i (mod the count): all keys, the registers, the set."""

PROGRESS_S = 1.0
"""How often the watchers ask for a progress line on a quiet stream."""

STREAM_IDLE_TIMEOUT_S = 3 * PROGRESS_S + 2.0
"""A stream silent this long is dead (a paused or partitioned-away node): reconnect."""

CONNECT_TIMEOUT_S = 1.0
"""How long a watcher waits to connect (loopback: at once, or the node is gone)."""

RECONNECT_PAUSE_S = 0.2
"""The pause before reconnecting after a failed or broken stream."""

LINE_BYTES_MAX = 8 * 1024 * 1024
"""The longest NDJSON line read: a put of the largest value (base64) fits."""

RELIST_PAGES_MAX = 1000
"""The most pages a re-list after a compaction follows."""

DROP_ONE_AT = 5
"""``drop-one`` drops watcher 0's event number `DROP_ONE_AT` (counting from 1)."""

BROKEN_WATCH_MODES = ("skip-resume", "drop-one")


def watch_target(prefix: str, start_revision: int, progress_s: float) -> str:
    """The request target of a watch (path and query, percent-encoded)."""
    query = urllib.parse.urlencode(
        [
            ("prefix", prefix),
            ("start_revision", str(start_revision)),
            ("progress_s", f"{progress_s:g}"),
        ],
        quote_via=urllib.parse.quote,
        safe="",
    )
    return f"/v1/watch?{query}"


class _Stopped(Exception):
    """The harness stopped the watchers."""


class Watchers:
    """The watcher threads of one run; `start`, then `stop` (also safe if never started)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        log: EventLog,
        *,
        count: int = WATCHERS,
        prefixes: Sequence[str] = WATCH_PREFIXES,
        progress_s: float = PROGRESS_S,
        idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S,
        broken: str | None = None,
        exchange_function: Callable[..., Any] = exchange,
    ) -> None:
        if not endpoints:
            raise ValueError("watchers need at least one endpoint")
        if broken is not None and broken not in BROKEN_WATCH_MODES:
            raise ValueError(f"unknown broken watch mode {broken!r}")
        self.endpoints = list(endpoints)
        self.log = log
        self.count = count
        self.prefixes = list(prefixes)
        self.progress_s = progress_s
        self.idle_timeout_s = idle_timeout_s
        self.broken = broken
        self._exchange = exchange_function
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connections: dict[int, http.client.HTTPConnection] = {}
        self._covered: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self.unsupported: str | None = None
        """Why watches are not served (a 404), or None."""
        self.errors: list[str] = []
        """Unexpected exceptions in watcher threads (harness bugs), as text."""

    def follow_membership(self, endpoints: Sequence[Endpoint]) -> None:
        """Reconnect to `endpoints` (the current members) from now on."""
        if endpoints:
            with self._lock:
                self.endpoints = list(endpoints)

    def start(self) -> None:
        for watcher in range(self.count):
            thread = threading.Thread(
                target=self._run, args=(watcher,), name=f"chaos-watch-{watcher}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, join_timeout_s: float = CONNECT_TIMEOUT_S + 5.0) -> list[str]:
        """Stop every watcher (open streams are cut); the names of threads still alive."""
        self._stop.set()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            _shut(connection)
        for thread in self._threads:
            thread.join(join_timeout_s)
        return [thread.name for thread in self._threads if thread.is_alive()]

    def covered(self) -> dict[int, int]:
        """Each watcher's highest revision vouched for so far (see `_seen`)."""
        with self._lock:
            return dict(self._covered)

    def wait_caught_up(self, revision: int, deadline_passed: Callable[[], bool]) -> bool:
        """Wait until every watcher has seen `revision` (or the deadline passes, or watches
        are not served); whether they all did."""
        while not deadline_passed():
            if self.unsupported is not None:
                return False
            seen = self.covered()
            if len(seen) == self.count and min(seen.values()) >= revision:
                return True
            time.sleep(0.05)  # polling interval
        return False

    # --- one watcher ------------------------------------------------------------------------

    def _endpoint(self, index: int) -> Endpoint:
        with self._lock:
            return self.endpoints[index % len(self.endpoints)]

    def _run(self, watcher: int) -> None:
        prefix = self.prefixes[watcher % len(self.prefixes)]
        state = {"start": 1, "node_index": watcher, "stream": 0, "events": 0}
        while not self._stop.is_set():
            endpoint = self._endpoint(state["node_index"])
            try:
                again_here = self._stream(watcher, prefix, endpoint, state)
            except _Stopped:
                return
            except Exception as error:  # a harness bug: report it, never hide it
                if not self._stop.is_set():
                    self.errors.append(f"watcher {watcher}: {error!r}")
                again_here = False
            if self.unsupported is not None:
                return
            if not again_here:
                state["node_index"] += 1
                self._stop.wait(RECONNECT_PAUSE_S)

    def _record(self, record: dict[str, Any]) -> None:
        self.log.append({"time": time.monotonic_ns(), **record})

    def _stream(self, watcher: int, prefix: str, endpoint: Endpoint, state: dict[str, int]) -> bool:
        """One stream; whether to resume on the same node."""
        stream = state["stream"]
        state["stream"] += 1
        start = state["start"]
        ident = {"watcher": watcher, "stream": stream}
        self._record(
            {"type": "open", **ident, "node": endpoint.node_id, "prefix": prefix,
             "start_revision": start}
        )  # fmt: skip

        def end(how: str, detail: str = "", revision: int | None = None) -> None:
            if self._stop.is_set() and how in ("error", "refused", "closed"):
                how, detail = "stopped", ""
            self._record({"type": "end", **ident, "how": how, "revision": revision,
                          "detail": detail[:300]})  # fmt: skip

        connection = http.client.HTTPConnection(
            endpoint.host, endpoint.port, timeout=CONNECT_TIMEOUT_S
        )
        with self._lock:
            if self._stop.is_set():
                end("stopped")
                raise _Stopped
            self._connections[watcher] = connection
        try:
            try:
                connection.connect()
            except OSError as error:
                end("refused", f"connect: {error!r}")
                return False
            assert connection.sock is not None
            connection.sock.settimeout(self.idle_timeout_s)
            try:
                connection.request(
                    "GET",
                    watch_target(prefix, start, self.progress_s),
                    headers={"Accept": "application/x-ndjson"},
                )
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as error:
                end("refused", f"no answer: {error!r}")
                return False
            if response.status == 404:
                body = response.read(300).decode("utf-8", "replace")
                self.unsupported = f"node {endpoint.node_id} answered 404 to GET /v1/watch: {body}"
                end("unsupported", self.unsupported)
                return False
            if response.status == 410:
                return self._compacted(watcher, prefix, endpoint, state, response, end)
            if response.status != 200:
                body = response.read(300).decode("utf-8", "replace")
                end("refused", f"HTTP {response.status} {body}")
                return False
            return self._read_lines(watcher, stream, response, state, ident, end)
        finally:
            with self._lock:
                self._connections.pop(watcher, None)
            connection.close()

    def _read_lines(
        self,
        watcher: int,
        stream: int,
        response: http.client.HTTPResponse,
        state: dict[str, int],
        ident: dict[str, int],
        end: Callable[..., None],
    ) -> bool:
        first_event = True
        while True:
            if self._stop.is_set():
                end("stopped")
                raise _Stopped
            try:
                line = response.readline(LINE_BYTES_MAX + 1)
            except (OSError, http.client.HTTPException) as error:
                end("error", f"reading: {error!r}")
                return False
            if not line:
                end("closed", "the node ended the stream")
                return False
            if len(line) > LINE_BYTES_MAX:
                end("malformed", f"a line longer than {LINE_BYTES_MAX} bytes")
                return False
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as error:
                end("malformed", f"not JSON ({error}): {line[:120]!r}")
                return False
            item = parse_watch_item(obj)
            if isinstance(item, str):
                end("malformed", f"{item}: {line[:120]!r}")
                return False
            if item.type == "lagged":
                self._seen(watcher, state, item.revision, event=False)
                end("lagged", "the node's history moved on", item.revision)
                return True
            if item.is_event:
                state["events"] += 1
                skip = (self.broken == "skip-resume" and stream > 0 and first_event) or (
                    self.broken == "drop-one" and watcher == 0 and state["events"] == DROP_ONE_AT
                )
                first_event = False
                if skip:
                    self._seen(watcher, state, item.revision, event=True)
                    continue
            if item.is_event and str(item.key).startswith(BURST_KEY_PREFIX):
                # The burst nemesis's writes are load, not history (`kvraft.chaos.burst`
                # checks them): recorded as what they vouch for, the revisions before them,
                # without their 1 MiB values.
                obj = {"type": "progress", "revision": item.revision - 1}
            self._record({"type": "item", **ident, "item": obj})
            self._seen(watcher, state, item.revision, event=item.is_event)

    def _seen(self, watcher: int, state: dict[str, int], revision: int, *, event: bool) -> None:
        state["start"] = max(state["start"], revision + 1)
        # What the stream vouches for, as the checker counts it: a bookmark or `lagged` for
        # its revision, an event only for the revisions before it (more of its own revision
        # could follow).
        vouched = revision - 1 if event else revision
        with self._lock:
            self._covered[watcher] = max(self._covered.get(watcher, 0), vouched)

    def _compacted(
        self,
        watcher: int,
        prefix: str,
        endpoint: Endpoint,
        state: dict[str, int],
        response: http.client.HTTPResponse,
        end: Callable[..., None],
    ) -> bool:
        body = response.read(4096)
        try:
            compact = json.loads(body).get("compact_revision")
        except (ValueError, AttributeError):
            compact = None
        if type(compact) is not int or compact < 0:
            end("malformed", f"410 without a compact_revision: {body[:120]!r}")
            return False
        end("compacted", f"history starts after revision {compact}", compact)
        items, complete = self._relist(prefix, endpoint)
        self._record({"type": "relist", "watcher": watcher, "node": endpoint.node_id,
                      "prefix": prefix, "items": items, "complete": complete})  # fmt: skip
        self._seen(watcher, state, compact, event=False)
        return complete

    def _relist(self, prefix: str, endpoint: Endpoint) -> tuple[int, bool]:
        """List `prefix` on `endpoint` (its own state); (items, whether every page came)."""
        items = 0
        start_after: str | None = None
        for _ in range(RELIST_PAGES_MAX):
            request = build_list(
                prefix, limit=LIST_LIMIT_MAX, start_after=start_after, consistency="stale"
            )
            answer = self._exchange(endpoint, request)
            if not isinstance(answer, HttpResponse):
                return items, False
            try:
                page, continuation = interpret_list(answer)
            except KVError:
                return items, False
            items += len(page)
            if continuation is None:
                return items, True
            start_after = continuation
        return items, False


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
