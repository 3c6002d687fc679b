"""`kvraft bench`: a built-in load generator for a running cluster, for users without wrk.

`--clients` workers share one aiohttp session with as many keep-alive connections; each
worker sends one request at a time (PUT and/or GET of a key drawn uniformly from
`--keys` keys under `--key-prefix`) until `--duration` is over, and the command prints
throughput, errors by kind and latency percentiles (and writes them with `--json`).

Decisions:

* aiohttp directly, not `AsyncKVClient`: the client opens a fresh connection per call
  (for write safety) and runs its retry plan per call. That costs more CPU than the
  request itself on a machine the generator shares with the cluster, and a load
  generator must not retry anyway: a hidden retry hides errors and skews latencies.
  What the client knows about finding the leader is reused (`EndpointRouter`).
* Requests go to the leader, so the numbers do not include a follower's forwarding hop:
  the leader is found with `/v1/status` before the run and followed during it through
  the `X-Kvraft-Leader-Id` answer header. Only `--endpoints` are used: a member's
  advertised address may not be reachable from here (Docker, NAT).
* When the time is up, no new request starts and the ones in flight are awaited and
  counted: every request sent is accounted for, and the elapsed time includes them.
* Every failed request is counted by kind (`HTTP 503 unavailable`, `timeout`, ...) and
  excluded from the latencies; the worker pauses briefly so that a cluster that is down
  is not spun on.
* aiohttp may re-send a PUT once when a kept-alive connection drops (aiohttp issue
  #10790); here that writes the same bytes to the same key again, which is harmless.
* Latencies go into log-scale buckets 1 % wide: percentiles are within 1 % (max and mean
  are exact) and memory stays bounded however long the run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import math
import os
import pathlib
import random
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any, TypeVar

import aiohttp
import click
import yarl

from kvraft.client import (
    ATTEMPT_TIMEOUT_S_DEFAULT,
    BACKOFF_S_MIN,
    CONNECT_TIMEOUT_S_DEFAULT,
    CONSISTENCY_LEVELS,
    TIMEOUT_S_DEFAULT,
    ClientError,
    EndpointRouter,
    KVError,
    key_path,
)
from kvraft.commands.kv import (
    STATUS_ATTEMPT_TIMEOUT_S,
    VALUE_INPUT_BYTES_MAX,
    client_options,
    display_text,
    make_client,
    tls_ssl_context,
)

__all__ = [
    "CLIENTS_MAX",
    "DURATION_S_MAX",
    "ERROR_PAUSE_S",
    "KEYS_MAX",
    "KEY_PREFIX_DEFAULT",
    "PREFILL_ATTEMPTS_MAX",
    "READ_FRACTION_MIXED_DEFAULT",
    "REQUEST_TIMEOUT_S",
    "WORKLOADS",
    "BenchPlan",
    "BenchSummary",
    "LatencyHistogram",
    "bench",
    "render_summary",
]

WORKLOADS = ("put", "get", "mixed")
"""`put`: writes only; `get`: reads only (after a prefill); `mixed`: both, after a prefill."""

CLIENTS_MAX = 512
"""Each client holds a connection (a file descriptor) here and on the node; more than
this only queues requests inside the leader."""

KEYS_MAX = 10**9
"""Keys are numbered, so the keyspace costs nothing until written; this bounds the
number of digits in a key."""

DURATION_S_MAX = 24 * 3600.0
"""The longest run (and warmup): a day."""

KEY_PREFIX_DEFAULT = "bench/"
"""Where the generated keys live, so that a run does not overwrite other data."""

READ_FRACTION_MIXED_DEFAULT = 0.5
"""The share of reads in the mixed workload when `--read-fraction` is not given."""

REQUEST_TIMEOUT_S = ATTEMPT_TIMEOUT_S_DEFAULT
"""How long one request may take before it counts as a timeout: longer than the server's
default request timeout (5 s), so a slow commit is answered by the server (503/504)."""

ERROR_PAUSE_S = BACKOFF_S_MIN
"""A worker's pause after a failed request: a cluster that is down or refusing is not
hammered in a tight loop (which would also burn the CPU the cluster needs)."""

PREFILL_ATTEMPTS_MAX = 5
"""Attempts per key while prefilling before the run gives up: a failover during the
prefill costs a retry or two; more failures mean the cluster cannot take writes."""

DISCOVERY_POLL_S = 0.2
"""How often the leader search asks every endpoint again while no leader is known."""

PROGRESS_INTERVAL_S_TTY = 0.5
"""How often the live line on a terminal is redrawn."""

PROGRESS_INTERVAL_S_PLAIN = 5.0
"""How often a progress line is printed when stderr is not a terminal (logs, CI): often
enough to show the run is alive, rarely enough not to flood the log."""

LARGE_BODY_BYTES = 2**20
"""Bodies above this size are handed to aiohttp as a stream (aiohttp's own threshold)."""

LATENCY_S_MIN = 1e-6
"""Latencies below a microsecond share the first bucket."""

LATENCY_BUCKET_GROWTH = 1.01
"""Each latency bucket is 1 % wider than the previous one."""

LATENCY_BUCKETS = 2500
"""Buckets from 1 µs up to about 1e-6 * 1.01**2500 s (≈ 65,000 s): every possible latency."""

_LEADER_HEADER = "X-Kvraft-Leader-Id"
_NODE_HEADER = "X-Kvraft-Node-Id"
_LOG_GROWTH = math.log(LATENCY_BUCKET_GROWTH)

T = TypeVar("T")


# --- latencies -----------------------------------------------------------------------------


class LatencyHistogram:
    """Latencies in log-scale buckets 1 % wide; exact count, mean and max."""

    __slots__ = ("_counts", "count", "max_s", "total_s")

    def __init__(self) -> None:
        self._counts = [0] * LATENCY_BUCKETS
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, latency_s: float) -> None:
        if latency_s <= LATENCY_S_MIN:
            index = 0
        else:
            index = min(
                int(math.log(latency_s / LATENCY_S_MIN) / _LOG_GROWTH) + 1, LATENCY_BUCKETS - 1
            )
        self._counts[index] += 1
        self.count += 1
        self.total_s += latency_s
        if latency_s > self.max_s:
            self.max_s = latency_s

    def percentile_s(self, fraction: float) -> float:
        """The latency below which `fraction` of the samples lie (nearest rank), reported as
        the upper edge of its bucket but never above the largest sample; 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, bucket_count in enumerate(self._counts):
            seen += bucket_count
            if seen >= rank:
                return min(LATENCY_S_MIN * LATENCY_BUCKET_GROWTH**index, self.max_s)
        return self.max_s

    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0


class _Tally:
    """What one phase (prefill, warmup, the measured run) counted."""

    __slots__ = ("errors", "latency", "not_found", "reads", "writes")

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self.not_found = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latency = LatencyHistogram()

    @property
    def ok(self) -> int:
        return self.reads + self.writes

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())


# --- what to run and what came out ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchPlan:
    """The options of one run, checked."""

    workload: str
    clients: int
    duration_s: float
    warmup_s: float
    value_bytes: int
    keys: int
    key_prefix: str
    read_fraction: float
    consistency: str

    @property
    def prefill(self) -> bool:
        """Reads need the keys to exist, or every get would measure a 404."""
        return self.read_fraction > 0

    def key(self, index: int) -> str:
        return f"{self.key_prefix}{index:0{len(str(self.keys - 1))}d}"


@dataclass(frozen=True, slots=True)
class BenchSummary:
    """What `--json` writes; `latency_ms` has p50, p90, p99, max and mean of successful
    requests; `errors` counts failed requests by kind; `generator_cpu_percent` is this
    process's CPU time during the run as a share of one core."""

    workload: str
    clients: int
    duration_s: float
    warmup_s: float
    value_bytes: int
    keys: int
    key_prefix: str
    read_fraction: float
    consistency: str
    endpoints: list[str]
    target_endpoint: str
    leader_id: int
    prefilled_keys: int
    ops: int
    ops_per_s: float
    reads: int
    writes: int
    not_found: int
    errors_total: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    generator_cpu_percent: float


def _summarize(
    plan: BenchPlan,
    router: EndpointRouter,
    leader_id: int,
    tally: _Tally,
    elapsed_s: float,
    cpu_s: float,
) -> BenchSummary:
    latency = tally.latency
    return BenchSummary(
        workload=plan.workload,
        clients=plan.clients,
        duration_s=round(elapsed_s, 3),
        warmup_s=plan.warmup_s,
        value_bytes=plan.value_bytes,
        keys=plan.keys,
        key_prefix=plan.key_prefix,
        read_fraction=plan.read_fraction,
        consistency=plan.consistency,
        endpoints=list(router.endpoints),
        target_endpoint=router.preferred,
        leader_id=leader_id,
        prefilled_keys=plan.keys if plan.prefill else 0,
        ops=tally.ok,
        ops_per_s=round(tally.ok / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        reads=tally.reads,
        writes=tally.writes,
        not_found=tally.not_found,
        errors_total=tally.errors_total,
        errors=dict(tally.errors.most_common()),
        latency_ms={
            "p50": round(latency.percentile_s(0.50) * 1000, 3),
            "p90": round(latency.percentile_s(0.90) * 1000, 3),
            "p99": round(latency.percentile_s(0.99) * 1000, 3),
            "max": round(latency.max_s * 1000, 3),
            "mean": round(latency.mean_s() * 1000, 3),
        },
        generator_cpu_percent=round(100 * cpu_s / elapsed_s, 1) if elapsed_s > 0 else 0.0,
    )


def render_summary(summary: BenchSummary) -> str:
    """The summary for people, a few aligned lines."""
    latency = summary.latency_ms
    lines = [
        f"ops         {summary.ops:,} in {summary.duration_s:.1f} s: "
        f"{summary.ops_per_s:,.1f} ops/s ({summary.reads:,} reads, {summary.writes:,} writes)",
    ]
    if summary.not_found:
        lines.append(f"not found   {summary.not_found:,} reads (counted as ok)")
    errors = f"errors      {summary.errors_total:,}"
    if summary.errors:
        errors += " (" + ", ".join(f"{kind}: {n:,}" for kind, n in summary.errors.items()) + ")"
    lines.append(errors)
    if summary.ops:
        lines.append(
            f"latency ms  p50 {latency['p50']:.2f}  p90 {latency['p90']:.2f}  "
            f"p99 {latency['p99']:.2f}  max {latency['max']:.2f}  (mean {latency['mean']:.2f})"
        )
    lines.append(f"generator   {summary.generator_cpu_percent:.0f}% of one CPU")
    return "\n".join(lines)


# --- progress ------------------------------------------------------------------------------


class _Progress:
    """Phase lines and a live status line on stderr: redrawn in place on a terminal,
    printed now and then otherwise, so a log shows the run is alive without filling up."""

    def __init__(self, stream: IO[str], is_tty: bool) -> None:
        self._stream = stream
        self._is_tty = is_tty
        self._live_shown = False
        self.interval_s = PROGRESS_INTERVAL_S_TTY if is_tty else PROGRESS_INTERVAL_S_PLAIN

    def line(self, text: str) -> None:
        self.clear()
        click.echo(text, file=self._stream)

    def live(self, text: str) -> None:
        if self._is_tty:
            click.echo(f"\r{text}\x1b[K", file=self._stream, nl=False)
            self._live_shown = True
        else:
            click.echo(text, file=self._stream)

    def clear(self) -> None:
        if self._live_shown:
            click.echo("\r\x1b[K", file=self._stream, nl=False)
            self._live_shown = False


def _bar(done_fraction: float, width: int = 20) -> str:
    filled = round(min(max(done_fraction, 0.0), 1.0) * width)
    return "#" * filled + "." * (width - filled)


# --- the load ------------------------------------------------------------------------------


class _Load:
    """The workers and what they share: the session, the router, the current tally."""

    def __init__(
        self, plan: BenchPlan, router: EndpointRouter, session: aiohttp.ClientSession
    ) -> None:
        self.plan = plan
        self.router = router
        self.session = session
        self.tally = _Tally()
        self._value = os.urandom(plan.value_bytes)
        self._rng = random.Random()
        self._read_query = f"?consistency={plan.consistency}"
        self.stopping = False
        self._value_is_large = plan.value_bytes > LARGE_BODY_BYTES

    async def one(self, is_read: bool, index: int, tally: _Tally) -> str | None:
        """Send one request and count it in `tally`; the error kind, or None if it succeeded."""
        endpoint = self.router.preferred
        target = key_path(self.plan.key(index))
        started_s = time.perf_counter()
        try:
            if is_read:
                url = yarl.URL(endpoint + target + self._read_query, encoded=True)
                request = self.session.get(url)
            else:
                url = yarl.URL(endpoint + target, encoded=True)
                # aiohttp warns about a bytes body over 1 MiB (it is written in one go,
                # which can hold the event loop); a BytesIO over the same bytes is sent in
                # chunks without a copy.
                data = io.BytesIO(self._value) if self._value_is_large else self._value
                request = self.session.put(url, data=data)
            async with request as response:
                body = await response.read()
                status = response.status
                leader_text = response.headers.get(_LEADER_HEADER)
                node_text = response.headers.get(_NODE_HEADER)
        except aiohttp.ClientConnectorError:
            self.router.failed(endpoint)
            return self._failed(tally, "cannot connect")
        except TimeoutError:
            # Longer than the server's own request timeout: the node is frozen or cut off.
            self.router.failed(endpoint)
            return self._failed(tally, "timeout")
        except aiohttp.ClientError:
            self.router.failed(endpoint)
            return self._failed(tally, "connection lost")
        latency_s = time.perf_counter() - started_s
        if leader_text != node_text and leader_text is not None and leader_text.isdigit():
            # A follower answered (forwarding): move to the leader if it is an endpoint.
            self.router.prefer_leader(int(leader_text))
        if status == 200 or (status == 404 and is_read):
            if is_read:
                tally.reads += 1
                tally.not_found += status == 404
            else:
                tally.writes += 1
            tally.latency.record(latency_s)
            return None
        return self._failed(tally, f"HTTP {status} {_error_code(body)}".rstrip())

    @staticmethod
    def _failed(tally: _Tally, kind: str) -> str:
        tally.errors[kind] += 1
        return kind

    async def prefill(self, progress: _Progress) -> None:
        """Write every key once (with all workers); raise ClickException if a key could not
        be written in `PREFILL_ATTEMPTS_MAX` attempts."""
        tally = _Tally()
        indexes = iter(range(self.plan.keys))
        failure: list[str] = []

        async def worker() -> None:
            for index in indexes:
                if failure:
                    return
                for attempt in range(1, PREFILL_ATTEMPTS_MAX + 1):
                    kind = await self.one(False, index, tally)
                    if kind is None:
                        break
                    if attempt == PREFILL_ATTEMPTS_MAX:
                        key = display_text(self.plan.key(index))
                        failure.append(f"{key!r}: {kind} ({PREFILL_ATTEMPTS_MAX} attempts)")
                        return
                    await asyncio.sleep(ERROR_PAUSE_S * attempt)

        def status_text(elapsed_s: float) -> str:
            done = tally.writes
            return (
                f"prefilling [{_bar(done / self.plan.keys)}] {done:,}/{self.plan.keys:,} keys"
                f"  {tally.errors_total:,} errors"
            )

        await _with_progress(
            asyncio.gather(*(worker() for _ in range(min(self.plan.clients, self.plan.keys)))),
            progress,
            status_text,
        )
        if failure:
            raise click.ClickException(f"prefill failed: {failure[0]}")

    async def worker(self) -> None:
        plan = self.plan
        rng = self._rng
        while not self.stopping:
            is_read = rng.random() < plan.read_fraction
            kind = await self.one(is_read, rng.randrange(plan.keys), self.tally)
            if kind is not None and not self.stopping:
                await asyncio.sleep(ERROR_PAUSE_S)


def _error_code(body: bytes) -> str:
    """The `error` code of an API error body, or '' (errors are rare: parsing is cheap)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    code = payload.get("error") if isinstance(payload, dict) else None
    return display_text(code[:40]) if isinstance(code, str) else ""


async def _with_progress(
    work: Coroutine[Any, Any, T] | asyncio.Future[T],
    progress: _Progress,
    status_text: Callable[[float], str],
) -> T:
    """Await `work` while showing `status_text(elapsed_s)` every progress interval."""
    started_s = time.monotonic()
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=progress.interval_s)
            if done:
                return task.result()
            progress.live(status_text(time.monotonic() - started_s))
    finally:
        task.cancel()
        progress.clear()


async def _run_load(
    plan: BenchPlan,
    router: EndpointRouter,
    leader_id: int,
    progress: _Progress,
    ssl_context: ssl.SSLContext | None = None,
) -> BenchSummary:
    connector = aiohttp.TCPConnector(limit=plan.clients, ssl=ssl_context or True)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S_DEFAULT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        load = _Load(plan, router, session)
        if plan.prefill:
            progress.line(
                f"prefilling {plan.keys:,} keys under {display_text(plan.key_prefix)!r} "
                "so that reads find them"
            )
            await load.prefill(progress)
        stop = asyncio.Event()
        with _stop_on_interrupt(stop):
            workers = [asyncio.create_task(load.worker()) for _ in range(plan.clients)]
            try:
                if plan.warmup_s > 0:
                    progress.line(f"warming up for {plan.warmup_s:g} s")
                    await _until(
                        stop,
                        plan.warmup_s,
                        progress,
                        lambda elapsed_s: (
                            f"warming up [{_bar(elapsed_s / plan.warmup_s)}] "
                            f"{elapsed_s:4.1f}/{plan.warmup_s:g} s"
                        ),
                    )
                    load.tally = _Tally()
                progress.line(
                    f"running {plan.workload} for {plan.duration_s:g} s with {plan.clients} "
                    "clients (Ctrl-C stops early)"
                )
                started_s = time.perf_counter()
                cpu_started_s = time.process_time()

                def status_text(elapsed_s: float) -> str:
                    tally = load.tally
                    rate = tally.ok / elapsed_s if elapsed_s > 0 else 0.0
                    return (
                        f"[{_bar(elapsed_s / plan.duration_s)}] {elapsed_s:5.1f}/"
                        f"{plan.duration_s:g} s  {tally.ok:,} ops  {rate:,.0f} ops/s  "
                        f"{tally.errors_total:,} errors"
                    )

                await _until(stop, plan.duration_s, progress, status_text)
                load.stopping = True
                if not stop.is_set():
                    # Time is up: the requests in flight finish and count (each worker
                    # adds at most one request's latency to the elapsed time), so every
                    # request sent is accounted for. Ctrl-C does not wait for them.
                    await asyncio.wait(workers, timeout=REQUEST_TIMEOUT_S)
                elapsed_s = time.perf_counter() - started_s
                cpu_s = time.process_time() - cpu_started_s
                tally = load.tally
            finally:
                for task in workers:
                    task.cancel()
                outcomes = await asyncio.gather(*workers, return_exceptions=True)
    for outcome in outcomes:
        # A worker that died of a bug must not pass for a quiet run.
        if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
    return _summarize(plan, router, leader_id, tally, elapsed_s, cpu_s)


async def _until(
    stop: asyncio.Event, duration_s: float, progress: _Progress, status_text: Callable[[float], str]
) -> None:
    """Wait `duration_s` or until `stop` is set, showing progress."""
    with contextlib.suppress(TimeoutError):
        await _with_progress(asyncio.wait_for(stop.wait(), duration_s), progress, status_text)


@contextlib.contextmanager
def _stop_on_interrupt(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C ends the run early (with a summary) instead of discarding it."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# --- finding the leader --------------------------------------------------------------------


def _find_leader(endpoints_text: str, timeout_s: float) -> tuple[EndpointRouter, int]:
    """Ask every endpoint for its status until one knows the leader; return a router that
    prefers the leader (or, if it is not among the endpoints, a node that answered) and
    the leader's id. Raise ClickException if no node answers or no leader emerges within
    `timeout_s`."""
    client = make_client(endpoints_text, timeout_s, STATUS_ATTEMPT_TIMEOUT_S)
    router = EndpointRouter(client.endpoints)
    deadline_s = time.monotonic() + timeout_s
    while True:
        results = client.status_all()
        answered = {
            endpoint: status
            for endpoint, status in results.items()
            if not isinstance(status, KVError)
        }
        leader_id = _leader_id(answered, router)
        if leader_id:
            if router.endpoint_of(leader_id) is not None:
                router.prefer_leader(leader_id)
            else:
                router.prefer_leader(_int(next(iter(answered.values())).get("id")))
            return router, leader_id
        if time.monotonic() + DISCOVERY_POLL_S >= deadline_s:
            if not answered:
                reasons = "; ".join(str(error) for error in results.values())
                raise click.ClickException(
                    f"cannot reach the cluster within {timeout_s:g} s: {reasons}"
                )
            raise click.ClickException(
                f"no leader within {timeout_s:g} s ({len(answered)} of {len(results)} nodes "
                "answered); see `kvraft status`"
            )
        time.sleep(DISCOVERY_POLL_S)


def _leader_id(answered: Mapping[str, Mapping[str, Any]], router: EndpointRouter) -> int:
    """The leader named by the node in the highest term (0: none known); teaches `router`
    which node answers at which endpoint."""
    best_term = -1
    leader_id = 0
    for endpoint, status in answered.items():
        router.learn_members(status.get("members"))
        # The node itself answered at this endpoint, whatever address it advertises.
        netloc = urllib.parse.urlsplit(endpoint).netloc
        router.learn_members([{"id": status.get("id"), "http_address": netloc}])
        term = _int(status.get("term"))
        if term > best_term:
            best_term, leader_id = term, _int(status.get("leader_id"))
    return leader_id


def _int(value: object) -> int:
    """A non-negative integer field of an (untrusted) status, or 0."""
    return value if type(value) is int and value > 0 else 0


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (the `fast` extra): less CPU per request."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(coroutine)
    result: T = uvloop.run(coroutine)
    return result


def _describe_target(router: EndpointRouter, leader_id: int) -> str:
    if router.endpoint_of(leader_id) == router.preferred:
        return f"sending to the leader, node {leader_id}, at {router.preferred}"
    return (
        f"the leader, node {leader_id}, is not among --endpoints: sending to "
        f"{router.preferred}, which forwards"
    )


# --- the command ---------------------------------------------------------------------------


@click.command()
@click.option(
    "--workload",
    type=click.Choice(WORKLOADS),
    default="put",
    show_default=True,
    help="put: writes; get: reads of prefilled keys; mixed: both (see --read-fraction).",
)
@click.option(
    "--clients",
    type=click.IntRange(1, CLIENTS_MAX),
    default=16,
    show_default=True,
    help="Concurrent requests, each on its own keep-alive connection.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(0, DURATION_S_MAX, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to measure.",
)
@click.option(
    "--warmup",
    "warmup_s",
    type=click.FloatRange(0, DURATION_S_MAX),
    default=0.0,
    show_default=True,
    help="Seconds of load before measuring (not counted).",
)
@click.option(
    "--value-size",
    "value_bytes",
    type=click.IntRange(0, VALUE_INPUT_BYTES_MAX),
    default=100,
    show_default=True,
    help="Bytes per written value.",
)
@click.option(
    "--keys",
    type=click.IntRange(1, KEYS_MAX),
    default=1000,
    show_default=True,
    help="Size of the keyspace; each request picks a key uniformly.",
)
@click.option(
    "--key-prefix",
    default=KEY_PREFIX_DEFAULT,
    show_default=True,
    help="The keys are PREFIX0, PREFIX1, ... (zero-padded); they are overwritten.",
)
@click.option(
    "--read-fraction",
    type=click.FloatRange(0, 1),
    default=None,
    help=f"mixed only: the share of reads [default: {READ_FRACTION_MIXED_DEFAULT}].",
)
@click.option(
    "--consistency",
    type=click.Choice(CONSISTENCY_LEVELS),
    default=CONSISTENCY_LEVELS[0],
    show_default=True,
    help="Consistency of the reads.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=pathlib.Path),
    default=None,
    help="Also write the summary to this file as JSON.",
)
@client_options(TIMEOUT_S_DEFAULT)
def bench(
    workload: str,
    clients: int,
    duration_s: float,
    warmup_s: float,
    value_bytes: int,
    keys: int,
    key_prefix: str,
    read_fraction: float | None,
    consistency: str,
    json_path: pathlib.Path | None,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Load the cluster for --duration seconds and report throughput and latencies.

    Requests go to the leader (found through /v1/status and followed through the
    X-Kvraft-Leader-Id header). The summary gives ops/s, errors by kind and the p50, p90,
    p99 and max latency of successful requests; --json writes it for scripts. Exits 1 if
    the cluster cannot be reached or no request succeeded.
    """
    if read_fraction is not None and workload != "mixed":
        raise click.UsageError("--read-fraction applies to --workload mixed only")
    fraction = {"put": 0.0, "get": 1.0}.get(workload, read_fraction)
    try:
        key_path(f"{key_prefix}0")
    except ClientError as error:
        raise click.BadParameter(error.message, param_hint="--key-prefix") from None
    plan = BenchPlan(
        workload=workload,
        clients=clients,
        duration_s=duration_s,
        warmup_s=warmup_s,
        value_bytes=value_bytes,
        keys=keys,
        key_prefix=key_prefix,
        read_fraction=READ_FRACTION_MIXED_DEFAULT if fraction is None else fraction,
        consistency=consistency,
    )
    progress = _Progress(sys.stderr, sys.stderr.isatty())
    router, leader_id = _find_leader(endpoints_text, timeout_s)
    click.echo(
        f"kvraft bench: {workload}, {clients} clients, {keys:,} keys, {value_bytes:,}-byte "
        f"values; {_describe_target(router, leader_id)}"
    )
    summary = _run_async(_run_load(plan, router, leader_id, progress, tls_ssl_context()))
    click.echo(render_summary(summary))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        except OSError as error:
            raise click.ClickException(f"cannot write {json_path}: {error.strerror}") from None
    if summary.ops == 0:
        raise click.ClickException(
            "every request failed" if summary.errors_total else "no request completed"
        )
