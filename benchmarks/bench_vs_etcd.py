"""kvraft against etcd, side by side, in one run on this machine (issue 7).

Run as ``python -m benchmarks.bench_vs_etcd [--quick] [--nodes 3,5] [--row-seconds 10]
[--warmup-seconds 3] [--rounds 5] [--connections 1,16,64] [--shapes base,mixed,1k,100k]
[--failover-kills 10] [--memory-keys N] [--soak-seconds N]
[--sections throughput,failover,soak,memory] [--json PATH]``.

For each cluster size (3, then 5 nodes) it starts an etcd cluster (Debian's ``etcd-server``,
default settings: it fsyncs its WAL) and a kvraft cluster (``kvraft serve`` per node,
default settings: fsync on), every node on 127.0.0.1 with its data on disk, and then:

- **throughput**: wrk (``benchmarks/lua/``) drives each system's leader with puts and
  linearizable gets (kvraft ``GET /v1/kv/{key}``, ReadIndex; etcd ``POST /v3/kv/range``,
  not serializable), keys drawn uniformly (all written beforehand, so every get finds its
  key), in four shapes of load (``--shapes``, all by default; `SHAPES`):

  - ``base``: 100-byte values on 1,000 keys, puts and then gets at each of ``--connections``;
  - ``mixed``: each request a put or a get at random, half and half (the scripts count
    what they sent), 100-byte values on 1,000 keys, at 16 and 64 connections; ops/s, p50 and
    p99 are those of all requests together;
  - ``1k``: puts of 1,024-byte values on 1,000 keys at each of ``--connections``;
  - ``100k``: puts and gets of 100-byte values on 100,000 keys at 64 connections; the keys
    are written first, `PREPOPULATE_BATCH` puts per transaction (one Raft entry),
    `PREPOPULATE_CONCURRENCY` transactions at a time, and how long that takes is shown.
    These rows come last for each cluster size, after the failover and the soak, so that
    those run on the 1,000-key store they always had.

  A shape runs only at those of its connection counts that ``--connections`` has; with
  ``--quick`` the shapes but base run only at the largest (one row per operation). Each row's
  label says its operation (or mix), connections, value size and key count. One wrk thread.
  Each row is a warm-up (excluded) and a measured run per system, split into
  `ROUNDS_DEFAULT` short turns that alternate between etcd and kvraft (who goes first
  alternating too), so that drift on the machine hits both alike; each system's turns are
  merged (their latency histograms too) into its row. Only one system is under load at a
  time (the other idles). ops/s counts 2xx answers only; "errors" are non-2xx answers plus
  socket errors and timeouts. Each system's term and leader are read before and after each
  row: "new terms" is how many elections happened meanwhile.
- **failover**: the benchmark itself writes at a constant `FAILOVER_WRITES_PER_S` (open loop:
  a new PUT every 20 ms whatever the others do, each to the next live node in turn, followers
  forwarding), then ``kill -9``s the leader. The failover time is from the kill until the
  first write *sent after the kill* succeeds. The killed node is restarted and must catch up
  (apply what the leader had committed when it came back) before the next kill; the kills
  alternate between the two systems.
- **soak** (``--soak-seconds N``, 300 by default, off with ``--quick``): puts at 64
  connections on kvraft for N seconds per cluster size, sampling every node's term and leader
  each second: the target is no election (no false election from an event-loop stall).
- **memory**: a kvraft cluster (the smallest size) started on a prepared 1,000,000-key
  snapshot (100-byte values; built directly through `kvraft.storage`, as
  `benchmarks.bench_recovery` does), VmRSS of every node once it serves. The RSS of both
  systems' nodes after the 1,000-key rows, and after the 100,000-key rows, is shown next to
  it.

Before any node starts, a probe times the disk's raw fdatasync where the data directories
are (1,000 appends of 300 bytes, each followed by fdatasync): its p50 and p99 head the
tables and go into the JSON (``fdatasync_us``), so that a run's numbers can be read against
the disk they had.

``wrk`` and ``etcd`` are installed with apt-get when missing (as root only). Prints the
tables and writes them to ``benchmarks/results/vs_etcd.md`` and ``vs_etcd.json``
(git-ignored). Prints, asserts nothing. Every process and temp directory is cleaned up, even
on failure and Ctrl-C. A full run takes about 36 minutes (26 throughput rows of about 40 s,
two 5-minute soaks, 40 kills, the memory run), --quick about 4.

The nodes run this working tree's kvraft (``python -m kvraft serve``) with this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp

from benchmarks.bench_recovery import key_for as memory_key_for
from benchmarks.bench_recovery import value_for as memory_value_for
from benchmarks.common import (
    RESULTS_DIRECTORY,
    fdatasync_latency_us,
    format_table,
    machine_info,
    process_cpu_seconds,
    process_memory_kib,
    write_json,
)
from kvraft import launcher
from kvraft.config import local_cluster_config, render_config
from kvraft.raft.messages import NO_NODE, Configuration, HardState, SnapshotMeta
from kvraft.statemachine import TXN_OPERATIONS_MAX, KVStateMachine, encode_put
from kvraft.storage.engine import StorageEngine

__all__ = [
    "CONNECTIONS_DEFAULT",
    "KEYS",
    "NODE_COUNTS_DEFAULT",
    "OPERATIONS",
    "VALUE_BYTES",
    "BenchmarkError",
    "EtcdCluster",
    "KvraftCluster",
    "Settings",
    "WrkResult",
    "benchmark_key",
    "benchmark_value",
    "ensure_installed",
    "main",
    "parse_wrk_output",
    "ratio",
    "run",
]

KEYS = 1_000
"""Keys the load spreads over (the same in the Lua scripts, passed as an argument)."""

VALUE_BYTES = 100
"""The size of every value written."""

OPERATIONS = ("put", "get", "mixed")
"""What a throughput row does; ``get`` is a linearizable read on both systems, ``mixed``
makes each request a put or a get at random (`Shape.put_percent` puts)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One shape of load: the throughput rows of one kind (``--shapes``).

    Fields:
        name: what ``--shapes`` takes.
        operations: its rows' operations, in order (`OPERATIONS`).
        keys: how many keys the requests draw from, uniformly; all of them are written
            before the shape's first row, so that every get finds its key.
        value_bytes: the size of every value written.
        connections: the connection counts it runs at, those of them in ``--connections``;
            None: every one of ``--connections``.
        put_percent: a mixed row's share of puts, in percent.
    """

    name: str
    operations: tuple[str, ...]
    keys: int = KEYS
    value_bytes: int = VALUE_BYTES
    connections: tuple[int, ...] | None = None
    put_percent: int = 50

    def connections_in(self, chosen: Sequence[int]) -> tuple[int, ...]:
        """The connection counts of its rows, given ``--connections``."""
        if self.connections is None:
            return tuple(chosen)
        return tuple(count for count in chosen if count in self.connections)


BASE_SHAPE = Shape("base", ("put", "get"))
"""Puts, then linearizable gets, of 100-byte values on 1,000 keys (the issue-7 rows)."""

SHAPES = {
    shape.name: shape
    for shape in (
        BASE_SHAPE,
        Shape("mixed", ("mixed",), connections=(16, 64)),
        Shape("1k", ("put",), value_bytes=1024),
        Shape("100k", ("put", "get"), keys=100_000, connections=(64,)),
    )
}
"""Every shape, in the order a run measures them: the 1,000-key shapes first (the mixed
row's gets still read 100-byte values), then, after the failover and the soak, the 100,000
keys, which stay in the store."""

CONNECTIONS_DEFAULT = (1, 16, 64)
"""wrk connections per row (each a closed loop: one request at a time)."""

NODE_COUNTS_DEFAULT = (3, 5)
"""Cluster sizes, one after the other."""

ROW_SECONDS_DEFAULT = 10
WARMUP_SECONDS_DEFAULT = 3
ROW_SECONDS_QUICK = 2
WARMUP_SECONDS_QUICK = 1
"""wrk takes whole seconds."""

ROUNDS_DEFAULT = 5
ROUNDS_QUICK = 1
"""Each row is measured in this many rounds, each system's share of a round
`row_seconds / rounds` long, the two systems taking turns (the first of a round alternates).
The machine's disk and CPU drift by tens of percent within a minute; a 10 s run of one
system and then of the other can land on different sides of a change, short turns cannot.
Percentiles come from the merged latency histograms, so they are those of one long run."""

SEGMENT_WARMUP_SECONDS = 1
"""The warm-up before every round after the first (the first has the full warm-up): the
connections are new each round."""

WRK_THREADS_DEFAULT = 1
"""One wrk thread handles 64 connections at a few thousand requests/s with CPU to spare, and
leaves the machine's cores to the servers."""

WRK_TIMEOUT_S = 10
"""A request slower than this counts as a timeout error (wrk's default, 2 s, would drop slow
requests from the latencies instead of showing them)."""

FAILOVER_KILLS_DEFAULT = 10
FAILOVER_KILLS_QUICK = 1

FAILOVER_WRITES_PER_S = 50
"""The failover load: modest, so that the kill, not the load, decides the outcome; one write
every 20 ms is also the resolution of the failover time."""

FAILOVER_WRITE_TIMEOUT_S = 2.0
"""One failover write gives up after this long (writes sent after it keep probing)."""

FAILOVER_WRITES_OUTSTANDING_MAX = 500
"""A safety cap on writes in flight (50/s with a 2 s timeout stays near 100)."""

FAILOVER_STEADY_S = 1.0
"""Load before each kill, so that the kill hits a cluster busy with writes."""

FAILOVER_RECOVERY_TIMEOUT_S = 60.0
"""Give up waiting for a write to succeed after a kill (a result worth failing on)."""

MEMORY_KEYS_DEFAULT = 1_000_000
MEMORY_KEYS_QUICK = 100_000

SOAK_CONNECTIONS = 64
SOAK_SECONDS_DEFAULT = 300
"""The issue's bar: no leader change during a 5-minute full-load run."""
SOAK_SAMPLE_INTERVAL_S = 1.0

PREPOPULATE_CONCURRENCY = 32
PREPOPULATE_ATTEMPTS = 5
PREPOPULATE_BATCH = TXN_OPERATIONS_MAX
"""Keys written per request before the rows: one transaction of this many puts (kvraft's
limit, 64; etcd's default ``--max-txn-ops`` is 128), one Raft entry on either system."""

START_TIMEOUT_S = 120.0
"""How long a cluster may take to elect a leader and serve (a 1,000,000-key snapshot takes
a few seconds per node, on shared cores)."""

SETTLE_TIMEOUT_S = 60.0
"""How long a restarted node may take to catch up."""

STOP_TIMEOUT_S = 15.0
"""How long SIGTERM'd nodes may take to exit before they are killed."""

STATUS_TIMEOUT_S = 2.0
"""One status request (a busy leader may answer late; it is asked again)."""

POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 30

LUA_DIRECTORY = Path(__file__).resolve().parent / "lua"
RESULTS_MARKDOWN_PATH = RESULTS_DIRECTORY / "vs_etcd.md"
RESULTS_JSON_PATH = RESULTS_DIRECTORY / "vs_etcd.json"

HOST = "127.0.0.1"
WRK_JSON_PREFIX = "WRK_JSON "
"""The line the Lua scripts' done() prints (benchmarks/lua/common.lua)."""

_T = TypeVar("_T")


class BenchmarkError(Exception):
    """A system did not start, serve or recover as expected; the message says what."""


# --- Tools ------------------------------------------------------------------------------------


def ensure_installed(binary: str, package: str) -> str:
    """The path of `binary`; installs Debian's `package` with apt-get first if it is missing
    (as root only). BenchmarkError, saying what to do, if that is impossible or fails."""
    found = shutil.which(binary)
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise BenchmarkError(
            f"`{binary}` is not installed and there is no apt-get here to install it: "
            f"install the `{package}` package (or put `{binary}` on PATH) and run again"
        )
    if os.geteuid() != 0:
        raise BenchmarkError(
            f"`{binary}` is not installed; install it as root: apt-get install -y {package}"
        )
    print(f"installing `{binary}`: apt-get install -y {package}", flush=True)
    install = ["install", "-y", "--no-install-recommends", package]
    completed = _apt_get(install)
    if completed.returncode != 0:
        # The package lists may be missing (a fresh container) or stale.
        updated = _apt_get(["update"])
        completed = _apt_get(install) if updated.returncode == 0 else updated
    found = shutil.which(binary)
    if found is None:
        output = completed.stdout + completed.stderr
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise BenchmarkError(f"`apt-get install -y {package}` did not provide `{binary}`:\n{tail}")
    return found


def _apt_get(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", *arguments],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _version_line(command: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10)
        lines = (completed.stdout + completed.stderr).strip().splitlines()
        if lines:
            return lines[0].strip()
    return "unknown"


# --- wrk --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run, as the Lua scripts' done() reported it.

    Fields:
        requests: answers received (any status).
        duration_s: how long the run measured.
        status_errors: answers that were not 2xx/3xx (wrk's "Non-2xx or 3xx responses").
        socket_errors: connect, read and write errors and timeouts.
        latency_us: min, mean, max, stdev, p50, p90, p99, p99_9 in microseconds (every
            answer, whatever its status).
        histogram_us: every latency seen, as (microseconds, count) pairs in increasing
            order, so that runs can be merged into exact percentiles (`merge_wrk_results`).
        puts_sent, gets_sent: the requests the script sent of each kind (a mixed run's mix;
            the latencies are those of all requests together).
    """

    requests: int
    duration_s: float
    status_errors: int
    socket_errors: int
    latency_us: dict[str, float]
    histogram_us: tuple[tuple[int, int], ...] = ()
    puts_sent: int = 0
    gets_sent: int = 0

    @property
    def ok_per_s(self) -> float:
        """Successful answers per second."""
        return (self.requests - self.status_errors) / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def put_share(self) -> float | None:
        """The share of puts among the requests sent, or None if the script counted none."""
        return ratio(self.puts_sent, self.puts_sent + self.gets_sent)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "ok_per_s": self.ok_per_s,
            "status_errors": self.status_errors,
            "socket_errors": self.socket_errors,
            "puts_sent": self.puts_sent,
            "gets_sent": self.gets_sent,
            "put_share": self.put_share,
            "latency_us": self.latency_us,
        }


def parse_wrk_output(output: str) -> WrkResult:
    """The result line the Lua scripts print at the end of wrk's output; ValueError if there
    is none (wrk failed before the end) or it is malformed."""
    lines = [line for line in output.splitlines() if line.startswith(WRK_JSON_PREFIX)]
    if not lines:
        raise ValueError("no WRK_JSON line in wrk's output")
    try:
        data = json.loads(lines[-1][len(WRK_JSON_PREFIX) :])
        errors = data["errors"]
        return WrkResult(
            requests=int(data["requests"]),
            duration_s=int(data["duration_us"]) / 1e6,
            status_errors=int(errors["status"]),
            socket_errors=sum(
                int(errors[name]) for name in ("connect", "read", "write", "timeout")
            ),
            latency_us={name: float(value) for name, value in data["latency_us"].items()},
            histogram_us=tuple((int(us), int(count)) for us, count in data.get("histogram_us", ())),
            puts_sent=int(data.get("sent", {}).get("put", 0)),
            gets_sent=int(data.get("sent", {}).get("get", 0)),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed WRK_JSON line: {lines[-1]!r}") from error


def _percentile_us(histogram: Sequence[tuple[int, int]], count: int, percent: float) -> float:
    """wrk's own rule (stats_percentile): the smallest latency whose cumulative count reaches
    the rank round(percent / 100 * count + 0.5)."""
    rank = round(percent / 100 * count + 0.5)
    total = 0
    for us, seen in histogram:
        total += seen
        if total >= rank:
            return float(us)
    return 0.0


def merge_wrk_results(results: Sequence[WrkResult]) -> WrkResult:
    """Several runs as one: counts and durations add up, and the latency statistics come
    from the runs' merged histograms (the same numbers one long run would have printed)."""
    merged: dict[int, int] = {}
    for result in results:
        if result.requests and not result.histogram_us:
            raise ValueError("a run without its latency histogram cannot be merged")
        for us, seen in result.histogram_us:
            merged[us] = merged.get(us, 0) + seen
    histogram = tuple(sorted(merged.items()))
    count = sum(seen for _, seen in histogram)
    latency_us: dict[str, float] = dict.fromkeys(
        ("min", "mean", "max", "stdev", "p50", "p90", "p99", "p99_9"), 0.0
    )
    if count:
        mean = sum(us * seen for us, seen in histogram) / count
        variance = sum(seen * (us - mean) ** 2 for us, seen in histogram) / max(count - 1, 1)
        latency_us.update(
            min=float(histogram[0][0]),
            max=float(histogram[-1][0]),
            mean=mean,
            stdev=variance**0.5,
            **{
                name: _percentile_us(histogram, count, percent)
                for name, percent in (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9))
            },
        )
    return WrkResult(
        requests=sum(result.requests for result in results),
        duration_s=sum(result.duration_s for result in results),
        status_errors=sum(result.status_errors for result in results),
        socket_errors=sum(result.socket_errors for result in results),
        latency_us=latency_us,
        histogram_us=histogram,
        puts_sent=sum(result.puts_sent for result in results),
        gets_sent=sum(result.gets_sent for result in results),
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is 0."""
    return numerator / denominator if denominator else None


# --- Processes and HTTP -----------------------------------------------------------------------


class Processes:
    """Every process this benchmark starts, so that each is stopped on the way out."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        # In its own session: our Ctrl-C stops the nodes in order here, not all at once.
        process = launcher.start(command, log_path)
        self._started.append(process)
        return process

    def spawn_piped(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """A process whose output is read (wrk): small, so a pipe cannot fill."""
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._started.append(process)
        return process

    def stop(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        """SIGTERM every running one, then SIGKILL those still running after the grace."""
        launcher.stop(dict(enumerate(processes)), timeout_s=STOP_TIMEOUT_S)
        self._started = [process for process in self._started if process.poll() is None]

    def stop_all(self) -> None:
        self.stop(list(self._started))


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout_s: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes] | None:
    """(status, body), or None if nothing answered in time; over HTTPS with `context`."""
    connection = (
        http.client.HTTPSConnection(HOST, port, timeout=timeout_s, context=context)
        if context is not None
        else http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    )
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _request_json(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> dict[str, Any] | None:
    answer = _request(port, method, path, body, STATUS_TIMEOUT_S, context)
    if answer is None or answer[0] != 200:
        return None
    try:
        data = json.loads(answer[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _wait_for(what: str, check: Callable[[], _T | None], timeout_s: float) -> _T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def benchmark_key(number: int) -> str:
    """The key wrk's scripts use for `number` (common.lua's key())."""
    return f"bench/{number:06d}"


def benchmark_value(number: int, value_bytes: int = VALUE_BYTES) -> bytes:
    """The value wrk's scripts write for `number` (common.lua's value())."""
    return f"value-{number:06d}-".encode().ljust(value_bytes, b".")[:value_bytes]


# --- The two systems --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What one node says about itself, in either system's terms.

    Fields:
        member_id: its own id (kvraft: the node id; etcd: the member id), as text.
        leader_id: the leader it follows ("0": none).
        term: its current term.
        commit_index, applied_index: its Raft commit index and what it has applied.
        pid: its process id if it reports one (kvraft).
    """

    member_id: str
    leader_id: str
    term: int
    commit_index: int
    applied_index: int
    pid: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.leader_id != "0" and self.leader_id == self.member_id


@dataclass(slots=True)
class Node:
    """One member of a cluster: how to start it and the process running it.

    Fields:
        number: 1..N (kvraft's node id; etcd's member is named ``e<number>``).
        http_port: where clients and wrk reach it.
        command: how to start (and restart) it.
        log_path: its stdout and stderr.
        process: the running (or last) process.
        expected_up: false while it is down on purpose (killed by the failover test).
        scheme: ``https`` for a kvraft node serving HTTPS (`benchmarks.bench_tls`).
    """

    number: int
    http_port: int
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    expected_up: bool = False
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write in a system's HTTP encoding."""

    method: str
    path: str
    body: bytes
    content_type: str


class Cluster:
    """A cluster of either system on 127.0.0.1: start, find the leader, kill and restart
    nodes. Subclasses say how to start a node, read its status and encode a write."""

    system = ""
    lua_script = Path()

    def __init__(self, processes: Processes, nodes: list[Node]) -> None:
        self.processes = processes
        self.nodes = nodes

    # Subclasses:
    def status(self, node: Node) -> MemberStatus | None:
        raise NotImplementedError

    def write_request(self, key: str, value: bytes) -> WriteRequest:
        raise NotImplementedError

    def batch_write_request(self, items: Sequence[tuple[str, bytes]]) -> WriteRequest:
        """One transaction that puts every (key, value) of `items` (at most
        `PREPOPULATE_BATCH`)."""
        raise NotImplementedError

    # Lifecycle:
    def start(self) -> None:
        for node in self.nodes:
            self.start_node(node)

    def start_node(self, node: Node) -> None:
        node.process = self.processes.spawn(node.command, node.log_path)
        node.expected_up = True

    def kill(self, node: Node) -> None:
        """kill -9, as a crash."""
        assert node.process is not None
        node.expected_up = False
        launcher.kill(node.process)

    def stop(self) -> None:
        self.processes.stop([node.process for node in self.nodes if node.process is not None])
        for node in self.nodes:
            node.expected_up = False

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.expected_up]

    def pids(self) -> list[int]:
        return [node.process.pid for node in self.live_nodes() if node.process is not None]

    def check_running(self) -> None:
        """BenchmarkError if a node that should run has exited (with its log's tail)."""
        for node in self.live_nodes():
            assert node.process is not None
            if node.process.poll() is not None:
                raise BenchmarkError(
                    f"{self.system} node {node.number} exited with code "
                    f"{node.process.returncode}:\n{launcher.log_tail(node.log_path)}"
                )

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) or 0.0 for pid in self.pids())

    # Leadership:
    def leader(self, timeout_s: float = START_TIMEOUT_S) -> tuple[Node, MemberStatus]:
        """Wait until every live node answers and follows the same leader, which says it
        leads; that leader and its status."""

        def agreed() -> tuple[Node, MemberStatus] | None:
            self.check_running()
            statuses: list[tuple[Node, MemberStatus]] = []
            for node in self.live_nodes():
                status = self.status(node)
                if status is None:
                    return None
                statuses.append((node, status))
            leaders = [(node, status) for node, status in statuses if status.is_leader]
            if len(leaders) != 1:
                return None
            leader = leaders[0]
            if any(status.leader_id != leader[1].member_id for _, status in statuses):
                return None
            return leader

        return _wait_for(f"agreed {self.system} leader", agreed, timeout_s)

    def wait_caught_up(self, node: Node, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until `node` follows the leader and has applied what the leader had
        committed when `node` first answered."""
        leader, _ = self.leader(timeout_s)
        target = _wait_for(
            f"{self.system} leader status",
            lambda: self.status(leader),
            timeout_s,
        ).commit_index

        def caught_up() -> bool | None:
            self.check_running()
            status = self.status(node)
            if status is None or status.leader_id == "0" or status.applied_index < target:
                return None
            return True

        _wait_for(f"{self.system} node {node.number} catching up", caught_up, timeout_s)

    def wait_settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """A leader everyone follows, and every follower caught up."""
        leader, _ = self.leader(timeout_s)
        for node in self.live_nodes():
            if node is not leader:
                self.wait_caught_up(node, timeout_s)


class EtcdCluster(Cluster):
    """etcd with its default settings (WAL fsync on every commit, heartbeat 100 ms,
    election timeout 1 s), spoken to through its JSON gateway."""

    system = "etcd"
    lua_script = LUA_DIRECTORY / "etcd.lua"

    @classmethod
    def create(
        cls,
        processes: Processes,
        etcd: str,
        base: Path,
        client_ports: list[int],
        peer_ports: list[int],
    ) -> EtcdCluster:
        base.mkdir(parents=True)
        count = len(client_ports)
        initial_cluster = ",".join(
            f"e{number}=http://{HOST}:{peer_ports[number - 1]}" for number in range(1, count + 1)
        )
        nodes = []
        for number in range(1, count + 1):
            client_url = f"http://{HOST}:{client_ports[number - 1]}"
            peer_url = f"http://{HOST}:{peer_ports[number - 1]}"
            command = [
                etcd,
                "--name", f"e{number}",
                "--data-dir", str(base / f"e{number}"),
                "--listen-client-urls", client_url,
                "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial_cluster,
                # Ignored on a restart (the data directory holds the membership).
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-{base.name}",
                "--logger", "zap",
                "--log-outputs", "stderr",
            ]  # fmt: skip
            nodes.append(Node(number, client_ports[number - 1], command, base / f"e{number}.log"))
        return cls(processes, nodes)

    def status(self, node: Node) -> MemberStatus | None:
        data = _request_json(node.http_port, "POST", "/v3/maintenance/status", b"{}")
        if data is None:
            return None
        try:
            # The gateway writes 64-bit integers as strings.
            return MemberStatus(
                member_id=str(data["header"]["member_id"]),
                leader_id=str(data.get("leader", "0")),
                term=int(data.get("raftTerm", 0)),
                commit_index=int(data.get("raftIndex", 0)),
                applied_index=int(data.get("raftAppliedIndex", data.get("raftIndex", 0))),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def write_request(self, key: str, value: bytes) -> WriteRequest:
        body = json.dumps(
            {
                "key": base64.b64encode(key.encode()).decode(),
                "value": base64.b64encode(value).decode(),
            }
        ).encode()
        return WriteRequest("POST", "/v3/kv/put", body, "application/json")

    def batch_write_request(self, items: Sequence[tuple[str, bytes]]) -> WriteRequest:
        operations = [
            {
                "requestPut": {
                    "key": base64.b64encode(key.encode()).decode(),
                    "value": base64.b64encode(value).decode(),
                }
            }
            for key, value in items
        ]
        body = json.dumps({"success": operations}).encode()
        return WriteRequest("POST", "/v3/kv/txn", body, "application/json")


class KvraftCluster(Cluster):
    """kvraft with its default settings (fsync on) from a generated cluster file."""

    system = "kvraft"
    lua_script = LUA_DIRECTORY / "kvraft.lua"

    @classmethod
    def create(
        cls, processes: Processes, base: Path, http_ports: list[int], raft_ports: list[int]
    ) -> KvraftCluster:
        count = len(http_ports)
        config = local_cluster_config(count, base, cluster_id=f"kvraft-bench-{base.name}")
        config = replace(
            config,
            nodes=tuple(
                replace(spec, http_port=http_ports[index], raft_port=raft_ports[index])
                for index, spec in enumerate(config.nodes)
            ),
        )
        base.mkdir(parents=True, exist_ok=True)
        config_path = base / "cluster.toml"
        config_path.write_text(render_config(config))
        nodes = [
            Node(
                spec.id,
                spec.http_port,
                launcher.serve_command(spec.id, config_path),
                base / f"node{spec.id}.log",
            )
            for spec in config.nodes
        ]
        return cls(processes, nodes, {spec.id: spec.data_dir for spec in config.nodes})

    def __init__(self, processes: Processes, nodes: list[Node], data_dirs: dict[int, Path]):
        super().__init__(processes, nodes)
        self.data_dirs = data_dirs  # by node number
        self.client_context: ssl.SSLContext | None = None
        """For a cluster serving HTTPS (`benchmarks.bench_tls`): how to ask its status."""

    def status(self, node: Node) -> MemberStatus | None:
        data = _request_json(node.http_port, "GET", "/v1/status", context=self.client_context)
        if data is None:
            return None
        try:
            return MemberStatus(
                member_id=str(data["id"]),
                leader_id=str(data.get("leader_id") or 0),
                term=int(data["term"]),
                commit_index=int(data["commit_index"]),
                applied_index=int(data["applied_index"]),
                pid=int(data["pid"]) if data.get("pid") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def write_request(self, key: str, value: bytes) -> WriteRequest:
        return WriteRequest("PUT", f"/v1/kv/{key}", value, "application/octet-stream")

    def batch_write_request(self, items: Sequence[tuple[str, bytes]]) -> WriteRequest:
        operations = [
            {"op": "put", "key": key, "value_b64": base64.b64encode(value).decode()}
            for key, value in items
        ]
        body = json.dumps({"success": operations}).encode()
        return WriteRequest("POST", "/v1/txn", body, "application/json")


@contextlib.contextmanager
def _running(clusters: Sequence[Cluster]) -> Iterator[None]:
    for cluster in clusters:
        cluster.start()
    try:
        yield
    finally:
        for cluster in clusters:
            cluster.stop()


# --- Throughput -------------------------------------------------------------------------------


SECTIONS = ("throughput", "failover", "soak", "memory")
"""What a run can measure (--sections); --soak-seconds sets the soak's length (0: none)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run measures and for how long."""

    node_counts: tuple[int, ...] = NODE_COUNTS_DEFAULT
    connections: tuple[int, ...] = CONNECTIONS_DEFAULT
    row_seconds: int = ROW_SECONDS_DEFAULT
    warmup_seconds: int = WARMUP_SECONDS_DEFAULT
    rounds: int = ROUNDS_DEFAULT
    wrk_threads: int = WRK_THREADS_DEFAULT
    failover_kills: int = FAILOVER_KILLS_DEFAULT
    memory_keys: int = MEMORY_KEYS_DEFAULT
    soak_seconds: int = 0
    sections: tuple[str, ...] = SECTIONS
    shapes: tuple[Shape, ...] = tuple(SHAPES.values())
    quick: bool = False


def wrk_script_arguments(operation: str, shape: Shape = BASE_SHAPE) -> list[str]:
    """What the Lua scripts take after wrk's ``--`` (common.lua's options())."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    arguments = [operation, str(shape.keys), str(shape.value_bytes)]
    if operation == "mixed":
        arguments.append(str(shape.put_percent))
    return arguments


def _wrk_command(
    wrk: str,
    cluster: Cluster,
    url: str,
    operation: str,
    connections: int,
    seconds: int,
    threads: int,
    shape: Shape = BASE_SHAPE,
) -> list[str]:
    return [
        wrk,
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        f"--script={cluster.lua_script}",
        url,
        "--",
        *wrk_script_arguments(operation, shape),
    ]


def _finish_wrk(processes: Processes, process: subprocess.Popen[bytes], seconds: int) -> WrkResult:
    try:
        output, _ = process.communicate(timeout=seconds + WRK_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        raise BenchmarkError("wrk did not finish") from None
    finally:
        processes.stop([process])
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise BenchmarkError(f"wrk exited with code {process.returncode}:\n{text}")
    try:
        return parse_wrk_output(text)
    except ValueError as error:
        raise BenchmarkError(f"{error}:\n{text}") from None


def _run_wrk(
    processes: Processes,
    wrk: str,
    cluster: Cluster,
    url: str,
    operation: str,
    connections: int,
    seconds: int,
    threads: int,
    shape: Shape = BASE_SHAPE,
) -> WrkResult:
    command = _wrk_command(wrk, cluster, url, operation, connections, seconds, threads, shape)
    return _finish_wrk(processes, processes.spawn_piped(command), seconds)


@dataclass(frozen=True, slots=True)
class _Segment:
    """One measured stretch of a row on one system."""

    result: WrkResult
    node_cpu_s: float
    leader_before: int
    leader_after: int
    term_before: int
    term_after: int


def _measure_segment(
    processes: Processes,
    wrk: str,
    cluster: Cluster,
    operation: str,
    connections: int,
    warmup_seconds: int,
    seconds: int,
    settings: Settings,
    shape: Shape = BASE_SHAPE,
) -> _Segment:
    leader, before = cluster.leader()

    def run_for(run_seconds: int) -> WrkResult:
        return _run_wrk(
            processes,
            wrk,
            cluster,
            leader.url,
            operation,
            connections,
            run_seconds,
            settings.wrk_threads,
            shape,
        )

    if warmup_seconds > 0:
        run_for(warmup_seconds)
    cpu_before_s = cluster.cpu_seconds()
    result = run_for(seconds)
    cpu_s = cluster.cpu_seconds() - cpu_before_s
    leader_after, after = cluster.leader()
    return _Segment(result, cpu_s, leader.number, leader_after.number, before.term, after.term)


def operation_label(operation: str, put_percent: int = 50) -> str:
    """How a row's operation reads in the tables: put, get, or the mix."""
    if operation == "mixed":
        return f"{put_percent}/{100 - put_percent} put/get"
    return operation


def row_label(row: dict[str, Any]) -> str:
    """A throughput row's first column: nodes, operation (the mix, for a mixed row),
    connections, value size and key count (rows written before shapes have neither: 100 B,
    1,000 keys)."""
    operation = operation_label(row["operation"], row.get("put_percent", 50))
    return (
        f"{row['nodes']} / {operation} / {row['connections']} / "
        f"{row.get('value_bytes', VALUE_BYTES):,} B, {row.get('keys', KEYS):,} keys"
    )


def _row_of_segments(
    cluster: Cluster,
    operation: str,
    connections: int,
    segments: Sequence[_Segment],
    shape: Shape = BASE_SHAPE,
) -> dict[str, Any]:
    """One system's row: its segments merged as if they had been one run."""
    result = merge_wrk_results([segment.result for segment in segments])
    cpu_s = sum(segment.node_cpu_s for segment in segments)
    ok_requests = result.requests - result.status_errors
    row = result.as_dict()
    row.update(
        segments=len(segments),
        leader_before=segments[0].leader_before,
        leader_after=segments[-1].leader_after,
        term_before=segments[0].term_before,
        term_after=segments[-1].term_after,
        new_terms=segments[-1].term_after - segments[0].term_before,
        node_cpu_s=cpu_s,
        cpu_us_per_op=cpu_s * 1e6 / ok_requests if ok_requests else None,
    )
    label = row_label(
        {
            "nodes": len(cluster.nodes),
            "operation": operation,
            "connections": connections,
            "keys": shape.keys,
            "value_bytes": shape.value_bytes,
            "put_percent": shape.put_percent,
        }
    )
    mix = (
        f"  puts {result.put_share:.1%} of sent"
        if operation == "mixed" and result.put_share is not None
        else ""
    )
    print(
        f"  {cluster.system:>6} {label:<42} "
        f"{result.ok_per_s:8,.0f} ops/s  p50 {result.latency_us['p50'] / 1000:7.2f} ms  "
        f"p99 {result.latency_us['p99'] / 1000:7.2f} ms  errors {result.errors}  "
        f"new terms {row['new_terms']}  CPU {row['cpu_us_per_op'] or 0:,.0f} us/op{mix}",
        flush=True,
    )
    return row


def key_batches(keys: int, batch: int = PREPOPULATE_BATCH) -> list[range]:
    """The key numbers 0..keys-1 in consecutive batches of at most `batch`."""
    return [range(start, min(start + batch, keys)) for start in range(0, keys, batch)]


async def _prepopulate_async(cluster: Cluster, leader: Node, keys: int, value_bytes: int) -> None:
    semaphore = asyncio.Semaphore(PREPOPULATE_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)

    async def put(session: aiohttp.ClientSession, numbers: range) -> None:
        request = cluster.batch_write_request(
            [(benchmark_key(number), benchmark_value(number, value_bytes)) for number in numbers]
        )
        answer: object = None
        for _ in range(PREPOPULATE_ATTEMPTS):
            try:
                async with (
                    semaphore,
                    session.request(
                        request.method,
                        leader.url + request.path,
                        data=request.body,
                        headers={"Content-Type": request.content_type},
                    ) as response,
                ):
                    answer = f"{response.status} {(await response.read())[:200]!r}"
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError) as error:
                answer = error
        raise BenchmarkError(
            f"{cluster.system}: writing {benchmark_key(numbers[0])}..."
            f"{benchmark_key(numbers[-1])} failed: {answer}"
        )

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(put(session, numbers) for numbers in key_batches(keys)))


def _prepopulate(cluster: Cluster, keys: int = KEYS, value_bytes: int = VALUE_BYTES) -> float:
    """Write every key once, so that every linearizable get finds its key (kvraft answers a
    missing key with 404, which wrk would count as an error): `PREPOPULATE_BATCH` keys per
    transaction, `PREPOPULATE_CONCURRENCY` transactions at a time. How long it took."""
    leader, _ = cluster.leader()
    started = time.perf_counter()
    asyncio.run(_prepopulate_async(cluster, leader, keys, value_bytes))
    return time.perf_counter() - started


def _throughput(
    processes: Processes,
    wrk: str,
    clusters: Sequence[Cluster],
    settings: Settings,
    first_row_index: int,
    shape: Shape = BASE_SHAPE,
) -> list[dict[str, Any]]:
    """The rows of one shape, each system's turns alternating."""
    rows: list[dict[str, Any]] = []
    segment_seconds = max(1, round(settings.row_seconds / settings.rounds))

    def order(row_index: int, round_index: int) -> list[Cluster]:
        # Alternate which system goes first from round to round (and row to row), so that
        # drift on the machine within a row hits both alike.
        flip = (row_index + round_index) % 2
        return list(clusters) if flip == 0 else list(reversed(clusters))

    for operation in shape.operations:
        for connections in shape.connections_in(settings.connections):
            row_index = first_row_index + len(rows)
            row: dict[str, Any] = {
                "nodes": len(clusters[0].nodes),
                "shape": shape.name,
                "operation": operation,
                "connections": connections,
                "keys": shape.keys,
                "value_bytes": shape.value_bytes,
                "first": order(row_index, 0)[0].system,
                "load_average_1m_before": os.getloadavg()[0],
            }
            if operation == "mixed":
                row["put_percent"] = shape.put_percent
            segments: dict[str, list[_Segment]] = {cluster.system: [] for cluster in clusters}
            for round_index in range(settings.rounds):
                warmup_seconds = (
                    settings.warmup_seconds
                    if round_index == 0
                    else min(settings.warmup_seconds, SEGMENT_WARMUP_SECONDS)
                )
                for cluster in order(row_index, round_index):
                    segments[cluster.system].append(
                        _measure_segment(
                            processes,
                            wrk,
                            cluster,
                            operation,
                            connections,
                            warmup_seconds,
                            segment_seconds,
                            settings,
                            shape,
                        )
                    )
            for cluster in clusters:
                row[cluster.system] = _row_of_segments(
                    cluster, operation, connections, segments[cluster.system], shape
                )
            etcd, kvraft = row["etcd"], row["kvraft"]
            row["ratio_ops"] = ratio(kvraft["ok_per_s"], etcd["ok_per_s"])
            row["ratio_p50"] = ratio(kvraft["latency_us"]["p50"], etcd["latency_us"]["p50"])
            row["ratio_p99"] = ratio(kvraft["latency_us"]["p99"], etcd["latency_us"]["p99"])
            rows.append(row)
    return rows


# --- Failover ---------------------------------------------------------------------------------


class OpenLoopWriter:
    """Writes at a constant rate whatever the answers, each write to the next target in
    turn; tells when the first write sent after a given moment succeeded."""

    def __init__(self, session: aiohttp.ClientSession, cluster: Cluster, targets: list[str]):
        self.session = session
        self.cluster = cluster
        self.targets = targets
        self.ok_count = 0
        self.failed_count = 0
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[float, asyncio.Future[float]]] = []

    async def run(self) -> None:
        interval_s = 1.0 / FAILOVER_WRITES_PER_S
        next_at = time.perf_counter()
        sequence = 0
        while not self._stopping:
            if len(self._in_flight) < FAILOVER_WRITES_OUTSTANDING_MAX:
                target = self.targets[sequence % len(self.targets)]
                task = asyncio.create_task(self._write(target, sequence))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            sequence += 1
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def _write(self, target: str, sequence: int) -> None:
        number = sequence % KEYS
        request = self.cluster.write_request(f"failover/{number:06d}", benchmark_value(number))
        started = time.perf_counter()
        ok = False
        try:
            async with self.session.request(
                request.method,
                target + request.path,
                data=request.body,
                headers={"Content-Type": request.content_type},
                timeout=aiohttp.ClientTimeout(total=FAILOVER_WRITE_TIMEOUT_S),
            ) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        finished = time.perf_counter()
        if not ok:
            self.failed_count += 1
            return
        self.ok_count += 1
        for sent_after, future in self._waiters:
            if started >= sent_after and not future.done():
                future.set_result(finished)

    async def first_success_sent_after(self, moment: float, timeout_s: float) -> float:
        """When (perf_counter) the first write sent at or after `moment` succeeded."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((moment, future))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BenchmarkError(
                f"{self.cluster.system}: no write succeeded within {timeout_s:.0f} s of the kill"
            ) from None

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)


async def _one_failover(session: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    await asyncio.to_thread(cluster.wait_settled)
    writer = OpenLoopWriter(session, cluster, [node.url for node in cluster.live_nodes()])
    writing = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(FAILOVER_STEADY_S)  # the load runs a while before the kill
        leader, before = await asyncio.to_thread(cluster.leader)
        if writer.ok_count == 0:
            raise BenchmarkError(f"{cluster.system}: no write succeeded before the kill")
        assert leader.process is not None
        if before.pid is not None and before.pid != leader.process.pid:
            raise BenchmarkError(
                f"{cluster.system}: the leader reports pid {before.pid}, "
                f"but node {leader.number} runs as {leader.process.pid}"
            )
        writer.targets = [node.url for node in cluster.live_nodes() if node is not leader]
        killed_at = time.perf_counter()
        cluster.kill(leader)
        recovered_at = await writer.first_success_sent_after(killed_at, FAILOVER_RECOVERY_TIMEOUT_S)
        new_leader, after = await asyncio.to_thread(cluster.leader)
        restarted_at = time.perf_counter()
        cluster.start_node(leader)
        await asyncio.to_thread(cluster.wait_caught_up, leader)
        rejoined_at = time.perf_counter()
    finally:
        await writer.stop()
        await writing
    result = {
        "killed": leader.number,
        "new_leader": new_leader.number,
        "term_before": before.term,
        "term_after": after.term,
        "recovery_s": recovered_at - killed_at,
        "rejoin_s": rejoined_at - restarted_at,
        "writes_ok": writer.ok_count,
        "writes_failed": writer.failed_count,
    }
    print(
        f"  {cluster.system:>6} {len(cluster.nodes)} nodes: killed leader {leader.number}, "
        f"writes again after {result['recovery_s']:.3f} s (new leader {new_leader.number}, "
        f"term {before.term}->{after.term}); restarted node caught up in "
        f"{result['rejoin_s']:.1f} s",
        flush=True,
    )
    return result


async def _failovers_async(
    clusters: Sequence[Cluster], kills: int, results: dict[str, list[dict[str, Any]]]
) -> None:
    """Kill each system's leader `kills` times, alternating systems; each kill's result is
    appended to results[system] as it comes (a failure keeps the earlier ones)."""
    # No connection limit: a write waiting on a dead leader must not delay the next one.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for kill_number in range(kills):
            order = list(clusters) if kill_number % 2 == 0 else list(reversed(clusters))
            for cluster in order:
                results[cluster.system].append(await _one_failover(session, cluster))


def _summarise_failovers(kills: list[dict[str, Any]]) -> dict[str, Any]:
    recoveries = [kill["recovery_s"] for kill in kills]
    rejoins = [kill["rejoin_s"] for kill in kills]
    return {
        "kills": len(kills),
        "recovery_s_median": statistics.median(recoveries),
        "recovery_s_min": min(recoveries),
        "recovery_s_max": max(recoveries),
        "rejoin_s_median": statistics.median(rejoins),
        "writes_failed": sum(kill["writes_failed"] for kill in kills),
        "writes_ok": sum(kill["writes_ok"] for kill in kills),
    }


# --- Soak -------------------------------------------------------------------------------------


def _soak(processes: Processes, wrk: str, cluster: Cluster, settings: Settings) -> dict[str, Any]:
    """Puts at 64 connections on `cluster`'s leader for soak_seconds, sampling every node's
    term and leader each second."""
    leader, before = cluster.leader()
    seconds = settings.soak_seconds
    print(
        f"  soak: {cluster.system} {len(cluster.nodes)} nodes, puts c={SOAK_CONNECTIONS} "
        f"for {seconds} s",
        flush=True,
    )
    command = _wrk_command(
        wrk, cluster, leader.url, "put", SOAK_CONNECTIONS, seconds, settings.wrk_threads
    )
    process = processes.spawn_piped(command)
    # Each leader seen in a newer term, with when it was first seen.
    changes: list[dict[str, Any]] = []
    newest_term = before.term
    started = time.perf_counter()
    # Sample until the run's time is up, then read wrk's output (`_finish_wrk`): waiting for
    # it to exit first would deadlock once its result (the latency histogram) fills the pipe.
    while process.poll() is None and time.perf_counter() - started < seconds:
        time.sleep(SOAK_SAMPLE_INTERVAL_S)  # sampling the cluster, not waiting for it
        cluster.check_running()
        for node in cluster.live_nodes():
            status = cluster.status(node)
            if status is not None and status.leader_id != "0" and status.term > newest_term:
                newest_term = status.term
                changes.append(
                    {
                        "at_s": time.perf_counter() - started,
                        "leader_id": status.leader_id,
                        "term": status.term,
                    }
                )
    result = _finish_wrk(processes, process, seconds)
    _, after = cluster.leader()
    return {
        "system": cluster.system,
        "nodes": len(cluster.nodes),
        "seconds": seconds,
        "connections": SOAK_CONNECTIONS,
        **result.as_dict(),
        "term_before": before.term,
        "term_after": after.term,
        "new_terms": after.term - before.term,
        "leader_before": before.member_id,
        "leader_after": after.member_id,
        "leader_changes_seen": changes,
    }


# --- Memory -----------------------------------------------------------------------------------


def _prepare_snapshot_cluster(cluster: KvraftCluster, keys: int) -> float:
    """Install a `keys`-key snapshot (100-byte values) on every node, as if each had received
    it from a leader; returns how long that took."""
    started = time.perf_counter()
    machine = KVStateMachine()
    for index in range(1, keys + 1):
        machine.apply(index, encode_put(memory_key_for(index), memory_value_for(index, 1)))
    data = b"".join(machine.snapshot_chunks())
    del machine  # about 250 MB for 10**6 keys: the nodes need the memory more
    voters = frozenset(node.number for node in cluster.nodes)
    meta = SnapshotMeta(keys, 1, Configuration(voters=voters))
    for node in cluster.nodes:
        engine = StorageEngine.open(cluster.data_dirs[node.number])
        try:
            engine.install_snapshot(meta, data)
            engine.save([], HardState(1, NO_NODE, keys))
        finally:
            engine.close()
    return time.perf_counter() - started


def _memory(processes: Processes, base: Path, node_count: int, keys: int) -> dict[str, Any]:
    http_ports_and_raft_ports = launcher.free_ports(2 * node_count)
    cluster = KvraftCluster.create(
        processes,
        base,
        http_ports_and_raft_ports[:node_count],
        http_ports_and_raft_ports[node_count:],
    )
    print(f"  memory: building a {keys:,}-key snapshot for {node_count} kvraft nodes", flush=True)
    generation_s = _prepare_snapshot_cluster(cluster, keys)
    with _running([cluster]):
        started = time.perf_counter()
        leader, _ = cluster.leader()
        key = memory_key_for(keys)
        answer = _request(leader.http_port, "GET", f"/v1/kv/{key}", timeout_s=30)
        if answer is None or answer[:2] != (200, memory_value_for(keys, 1)):
            raise BenchmarkError(f"kvraft did not serve {key} from the snapshot: {answer!r}")
        serving_s = time.perf_counter() - started
        cluster.wait_settled()
        per_node = []
        for node in cluster.nodes:
            assert node.process is not None
            memory = process_memory_kib(node.process.pid)
            per_node.append(
                {
                    "node": node.number,
                    "leader": node is leader,
                    "rss_mib": memory.get("VmRSS", 0) / 1024,
                    "rss_peak_mib": memory.get("VmHWM", 0) / 1024,
                }
            )
    print(
        f"  memory: snapshot built and installed in {generation_s:.1f} s; serving after "
        f"{serving_s:.1f} s; RSS "
        + ", ".join(f"node {node['node']} {node['rss_mib']:,.0f} MiB" for node in per_node),
        flush=True,
    )
    return {
        "keys": keys,
        "value_bytes": VALUE_BYTES,
        "nodes": per_node,
        "generation_s": generation_s,
        "serving_s": serving_s,
    }


def _rss_after_load(cluster: Cluster) -> list[dict[str, Any]]:
    rows = []
    for node in cluster.live_nodes():
        assert node.process is not None
        memory = process_memory_kib(node.process.pid)
        rows.append(
            {
                "node": node.number,
                "rss_mib": memory.get("VmRSS", 0) / 1024,
                "rss_peak_mib": memory.get("VmHWM", 0) / 1024,
            }
        )
    return rows


# --- Tables -----------------------------------------------------------------------------------


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _throughput_tables(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    if not rows:
        return []
    main = format_table(
        [
            "nodes / op / conns / values, keys",
            "etcd ops/s",
            "etcd p50 ms",
            "etcd p99 ms",
            "etcd errors",
            "kvraft ops/s",
            "kvraft p50 ms",
            "kvraft p99 ms",
            "kvraft errors",
            "kvraft/etcd ops/s",
            "kvraft/etcd p50",
            "kvraft/etcd p99",
        ],
        [
            [
                row_label(row),
                f"{row['etcd']['ok_per_s']:,.0f}",
                _ms(row["etcd"]["latency_us"]["p50"]),
                _ms(row["etcd"]["latency_us"]["p99"]),
                row["etcd"]["status_errors"] + row["etcd"]["socket_errors"],
                f"{row['kvraft']['ok_per_s']:,.0f}",
                _ms(row["kvraft"]["latency_us"]["p50"]),
                _ms(row["kvraft"]["latency_us"]["p99"]),
                row["kvraft"]["status_errors"] + row["kvraft"]["socket_errors"],
                _times(row["ratio_ops"]),
                _times(row["ratio_p50"]),
                _times(row["ratio_p99"]),
            ]
            for row in rows
        ],
    )

    def leaders(result: dict[str, Any]) -> str:
        if result["leader_before"] == result["leader_after"]:
            return str(result["leader_before"])
        return f"{result['leader_before']} -> {result['leader_after']}"

    def cpu(result: dict[str, Any]) -> str:
        value = result["cpu_us_per_op"]
        return "-" if value is None else f"{value:,.0f}"

    extra = format_table(
        [
            "nodes / op / conns / values, keys",
            "first",
            "etcd new terms",
            "etcd leader",
            "kvraft new terms",
            "kvraft leader",
            "etcd CPU us/op",
            "kvraft CPU us/op",
            "load avg before",
        ],
        [
            [
                row_label(row),
                row["first"],
                row["etcd"]["new_terms"],
                leaders(row["etcd"]),
                row["kvraft"]["new_terms"],
                leaders(row["kvraft"]),
                cpu(row["etcd"]),
                cpu(row["kvraft"]),
                f"{row['load_average_1m_before']:.1f}",
            ]
            for row in rows
        ],
    )
    return [
        (
            "Throughput and latency, leader driven by wrk (keys drawn uniformly, all written "
            "beforehand; get = linearizable read; put/get = each request a put or a get at "
            "random, latencies of all requests together; ops/s counts 2xx answers)",
            main,
        ),
        (
            "Elections during each row (new terms between just before the warm-up and just "
            "after the run; leader by node number) and node CPU (all nodes, user + system) "
            "per successful operation",
            extra,
        ),
    ]


def _failover_table(failover: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for nodes, by_system in failover.items():
        for system in ("etcd", "kvraft"):
            summary = by_system.get(f"{system}_summary")
            if summary is None:
                continue
            rows.append(
                [
                    f"{nodes} / {system}",
                    summary["kills"],
                    f"{summary['recovery_s_median']:.3f}",
                    f"{summary['recovery_s_min']:.3f}",
                    f"{summary['recovery_s_max']:.3f}",
                    f"{summary['rejoin_s_median']:.1f}",
                    f"{summary['writes_ok']:,}",
                    f"{summary['writes_failed']:,}",
                ]
            )
    if not rows:
        return []
    table = format_table(
        [
            "nodes / system",
            "kills",
            "median s",
            "min s",
            "max s",
            "restarted node catches up, median s",
            "writes ok",
            "writes failed",
        ],
        rows,
    )
    return [
        (
            f"Failover: kill -9 of the leader under {FAILOVER_WRITES_PER_S} writes/s (open "
            "loop, round-robin over live nodes), time until the first write sent after the "
            "kill succeeds",
            table,
        )
    ]


def _soak_table(soaks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    if not soaks:
        return []
    table = format_table(
        [
            "nodes / system",
            "seconds",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "new terms",
            "leader changes seen",
        ],
        [
            [
                f"{soak['nodes']} / {soak['system']}",
                soak["seconds"],
                f"{soak['ok_per_s']:,.0f}",
                _ms(soak["latency_us"]["p50"]),
                _ms(soak["latency_us"]["p99"]),
                soak["status_errors"] + soak["socket_errors"],
                soak["new_terms"],
                len(soak["leader_changes_seen"]),
            ]
            for soak in soaks
        ],
    )
    return [(f"Soak: puts at {SOAK_CONNECTIONS} connections on the leader", table)]


def _memory_table(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    memory = results.get("memory")
    if memory:
        for node in memory["nodes"]:
            rows.append(
                [
                    f"kvraft node {node['node']}{' (leader)' if node['leader'] else ''}",
                    f"{memory['keys']:,}",
                    f"{node['rss_mib']:,.0f}",
                    f"{node['rss_peak_mib']:,.0f}",
                ]
            )
    for nodes, by_system in results.get("rss_after_load", {}).items():
        for system, per_node in by_system.items():
            for node in per_node:
                rows.append(
                    [
                        f"{system} node {node['node']} of {nodes}, after the {KEYS:,}-key rows",
                        f"{KEYS:,}",
                        f"{node['rss_mib']:,.0f}",
                        f"{node['rss_peak_mib']:,.0f}",
                    ]
                )
    for nodes, by_system in results.get("rss_after_preload", {}).items():
        for system, per_node in by_system.items():
            if system == "keys":
                continue
            for node in per_node:
                rows.append(
                    [
                        f"{system} node {node['node']} of {nodes}, after the "
                        f"{by_system['keys']:,}-key rows",
                        f"{by_system['keys']:,}",
                        f"{node['rss_mib']:,.0f}",
                        f"{node['rss_peak_mib']:,.0f}",
                    ]
                )
    if not rows:
        return []
    table = format_table(["node", "keys", "RSS MiB", "peak RSS MiB"], rows)
    return [
        (
            f"Memory (VmRSS; the snapshot and the many keys hold {VALUE_BYTES}-byte values, the "
            f"{KEYS:,} keys what the load rows wrote last)",
            table,
        )
    ]


def _preload_table(preloads: list[dict[str, Any]]) -> list[tuple[str, str]]:
    if not preloads:
        return []
    table = format_table(
        ["nodes / system", "keys", "seconds", "keys/s"],
        [
            [
                f"{preload['nodes']} / {preload['system']}",
                f"{preload['keys']:,}",
                f"{preload['seconds']:.1f}",
                f"{preload['keys_per_s'] or 0:,.0f}",
            ]
            for preload in preloads
        ],
    )
    return [
        (
            f"Writing the keys before the many-key rows ({VALUE_BYTES}-byte values, "
            f"{PREPOPULATE_BATCH} puts per transaction, {PREPOPULATE_CONCURRENCY} transactions "
            "at a time)",
            table,
        )
    ]


def _tables(results: dict[str, Any]) -> list[tuple[str, str]]:
    return (
        _throughput_tables(results["throughput"])
        + _preload_table(results.get("preload", []))
        + _failover_table(results["failover"])
        + _soak_table(results["soak"])
        + _memory_table(results)
    )


def _fdatasync_line(fdatasync: dict[str, Any]) -> str:
    return (
        f"raw fdatasync on the data directories' disk: p50 {fdatasync['p50']:,.0f} us, "
        f"p99 {fdatasync['p99']:,.0f} us ({fdatasync['syncs']:,} appends of "
        f"{fdatasync['record_bytes']} bytes, each followed by fdatasync, before the clusters "
        "started)"
    )


def _write_markdown(results: dict[str, Any], path: Path) -> None:
    settings = results["settings"]
    lines = [
        f"# kvraft vs etcd ({results['started_at']}, {'quick' if settings['quick'] else 'full'})",
        "",
        f"- {results['versions']['etcd']}; {results['versions']['wrk']}; kvraft "
        f"{results['machine'].get('git_commit')}",
        f"- machine: {results['machine']['nproc']} CPUs ({results['machine']['cpu_model']}), "
        f"{results['machine']['memory_total_mib']:,} MiB",
        f"- rows: {settings['warmup_seconds']} s warm-up + {settings['row_seconds']} s per "
        f"system, in {settings.get('rounds', 1)} turns each (the systems alternating; "
        f"{SEGMENT_WARMUP_SECONDS} s warm-up before every later turn), "
        f"{settings['wrk_threads']} wrk thread(s); durable settings on both (fsync)",
    ]
    if results.get("fdatasync_us"):
        lines.append(f"- {_fdatasync_line(results['fdatasync_us'])}")
    for title, table in _tables(results):
        lines += ["", f"## {title}", "", table]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# --- The run ----------------------------------------------------------------------------------


def _preload(cluster: Cluster, keys: int) -> dict[str, Any]:
    """Write keys 0..keys-1 before the rows that draw from them; how long that took."""
    print(f"  {cluster.system:>6} {len(cluster.nodes)} nodes: writing {keys:,} keys", flush=True)
    seconds = _prepopulate(cluster, keys)
    print(
        f"  {cluster.system:>6} {len(cluster.nodes)} nodes: {keys:,} keys written in "
        f"{seconds:.1f} s ({keys / seconds:,.0f} keys/s, {PREPOPULATE_BATCH} per transaction, "
        f"{PREPOPULATE_CONCURRENCY} transactions at a time)",
        flush=True,
    )
    return {
        "system": cluster.system,
        "nodes": len(cluster.nodes),
        "keys": keys,
        "value_bytes": VALUE_BYTES,
        "seconds": seconds,
        "keys_per_s": keys / seconds if seconds else None,
    }


def _measure_size(
    processes: Processes,
    wrk: str,
    etcd: str,
    base: Path,
    node_count: int,
    settings: Settings,
    results: dict[str, Any],
) -> None:
    """Start both systems with `node_count` nodes, measure them, stop them; the results go
    into `results` as they come (a failure later keeps them)."""
    ports = launcher.free_ports(4 * node_count)
    port_groups = [ports[index * node_count : (index + 1) * node_count] for index in range(4)]
    etcd_cluster = EtcdCluster.create(
        processes, etcd, base / f"etcd{node_count}", port_groups[0], port_groups[1]
    )
    kvraft_cluster = KvraftCluster.create(
        processes, base / f"kvraft{node_count}", port_groups[2], port_groups[3]
    )
    # The soak alone needs only kvraft.
    clusters: list[Cluster] = (
        [etcd_cluster, kvraft_cluster]
        if {"throughput", "failover"} & set(settings.sections)
        else [kvraft_cluster]
    )
    print(
        f"\n{node_count} nodes: starting {' and '.join(cluster.system for cluster in clusters)}",
        flush=True,
    )
    # The shapes on more keys than `KEYS` come last, after the failover and the soak, so that
    # those run on the small store they always had (and the many keys stay once written).
    shapes = [
        shape
        for shape in settings.shapes
        if "throughput" in settings.sections and shape.connections_in(settings.connections)
    ]
    few_keys = [shape for shape in shapes if shape.keys <= KEYS]
    many_keys = [shape for shape in shapes if shape.keys > KEYS]
    with _running(clusters):
        for cluster in clusters:
            _prepopulate(cluster)
        for shape in few_keys:
            results["throughput"] += _throughput(
                processes, wrk, clusters, settings, len(results["throughput"]), shape
            )
        if few_keys:
            results["rss_after_load"][str(node_count)] = {
                cluster.system: _rss_after_load(cluster) for cluster in clusters
            }
        if "failover" in settings.sections and settings.failover_kills > 0:
            kills: dict[str, list[dict[str, Any]]] = {cluster.system: [] for cluster in clusters}
            record: dict[str, Any] = {"kills": kills}
            results["failover"][str(node_count)] = record
            try:
                asyncio.run(_failovers_async(clusters, settings.failover_kills, kills))
            finally:
                for system, per_system in kills.items():
                    if per_system:
                        record[f"{system}_summary"] = _summarise_failovers(per_system)
        if "soak" in settings.sections and settings.soak_seconds > 0:
            results["soak"].append(_soak(processes, wrk, kvraft_cluster, settings))
        loaded_keys = KEYS
        for shape in many_keys:
            if shape.keys > loaded_keys:
                for cluster in clusters:
                    results["preload"].append(_preload(cluster, shape.keys))
                loaded_keys = shape.keys
            results["throughput"] += _throughput(
                processes, wrk, clusters, settings, len(results["throughput"]), shape
            )
        if many_keys:
            results["rss_after_preload"][str(node_count)] = {
                "keys": loaded_keys,
                **{cluster.system: _rss_after_load(cluster) for cluster in clusters},
            }


def run(settings: Settings, directory: Path | None = None) -> dict[str, Any]:
    """Measure everything `settings` asks for; print the tables; return the results."""
    wrk = ensure_installed("wrk", "wrk")
    etcd = ensure_installed("etcd", "etcd-server")
    results: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "node_counts": list(settings.node_counts),
            "connections": list(settings.connections),
            "row_seconds": settings.row_seconds,
            "warmup_seconds": settings.warmup_seconds,
            "rounds": settings.rounds,
            "wrk_threads": settings.wrk_threads,
            "failover_kills": settings.failover_kills,
            "failover_writes_per_s": FAILOVER_WRITES_PER_S,
            "memory_keys": settings.memory_keys,
            "soak_seconds": settings.soak_seconds,
            "sections": list(settings.sections),
            "shapes": [shape.name for shape in settings.shapes],
            "keys": KEYS,
            "value_bytes": VALUE_BYTES,
            "quick": settings.quick,
        },
        "versions": {
            "etcd": _version_line([etcd, "--version"]),
            "wrk": _version_line([wrk, "-v"]).split(" Copyright")[0],
        },
        "machine": machine_info(),
        "fdatasync_us": None,
        "throughput": [],
        "preload": [],
        "failover": {},
        "soak": [],
        "rss_after_load": {},
        "rss_after_preload": {},
        "memory": None,
    }
    print(
        f"kvraft vs etcd: {results['versions']['etcd']}, {results['versions']['wrk']}; "
        f"nodes {', '.join(map(str, settings.node_counts))}; sections "
        f"{', '.join(settings.sections)}"
        + (
            f" (shapes {', '.join(shape.name for shape in settings.shapes)})"
            if "throughput" in settings.sections
            else ""
        )
        + (f" (soak {settings.soak_seconds} s)" if "soak" in settings.sections else ""),
        flush=True,
    )
    processes = Processes()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="kvraft-bench-vs-etcd-", dir=directory))
    try:
        # The disk's own figure, on the disk of the data directories, before any node runs.
        results["fdatasync_us"] = fdatasync_latency_us(base)
        print(_fdatasync_line(results["fdatasync_us"]), flush=True)
        if {"throughput", "failover", "soak"} & set(settings.sections):
            for node_count in settings.node_counts:
                _measure_size(processes, wrk, etcd, base, node_count, settings, results)
        if "memory" in settings.sections:
            print("", flush=True)
            results["memory"] = _memory(
                processes, base / "memory", min(settings.node_counts), settings.memory_keys
            )
    finally:
        processes.stop_all()
        shutil.rmtree(base, ignore_errors=True)
        if results["fdatasync_us"] is not None:
            print(f"\n{_fdatasync_line(results['fdatasync_us'])}", flush=True)
        for title, table in _tables(results):
            print(f"\n### {title}\n\n{table}", flush=True)
        write_json(RESULTS_JSON_PATH, results)
        _write_markdown(results, RESULTS_MARKDOWN_PATH)
        print(f"\nresults: {RESULTS_MARKDOWN_PATH}, {RESULTS_JSON_PATH}", flush=True)
    return results


def _integers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    return names


def _shapes(text: str) -> tuple[Shape, ...]:
    """The shapes named, in the order a run measures them (`SHAPES`)."""
    names = {item.strip() for item in text.split(",") if item.strip()}
    unknown = sorted(names - set(SHAPES))
    if unknown or not names:
        what = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown shape {what}; choose from {', '.join(SHAPES)}")
    return tuple(shape for name, shape in SHAPES.items() if name in names)


def quick_shapes(shapes: Sequence[Shape], connections: Sequence[int]) -> tuple[Shape, ...]:
    """What --quick measures of `shapes`: the base shape as it is, every other shape only
    at the largest of its connection counts (one row per operation)."""
    quick = []
    for shape in shapes:
        counts = shape.connections_in(connections)
        if shape is not BASE_SHAPE and counts:
            shape = replace(shape, connections=(max(counts),))
        quick.append(shape)
    return tuple(quick)


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> None:
    # SIGTERM becomes SystemExit, so the `finally` blocks stop every node and delete the data.
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{WARMUP_SECONDS_QUICK} s + {ROW_SECONDS_QUICK} s rows, {FAILOVER_KILLS_QUICK} "
        f"kill, {MEMORY_KEYS_QUICK:,} keys in memory (a smoke test)",
    )
    parser.add_argument("--nodes", type=_integers, default=NODE_COUNTS_DEFAULT)
    parser.add_argument("--connections", type=_integers, default=CONNECTIONS_DEFAULT)
    parser.add_argument("--row-seconds", type=int, default=None, help="measured seconds per row")
    parser.add_argument("--warmup-seconds", type=int, default=None, help="excluded seconds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"turns per row between the systems (default {ROUNDS_DEFAULT}; "
        f"{ROUNDS_QUICK} with --quick)",
    )
    parser.add_argument("--wrk-threads", type=int, default=WRK_THREADS_DEFAULT)
    parser.add_argument("--failover-kills", type=int, default=None, help="per system and size")
    parser.add_argument("--memory-keys", type=int, default=None)
    parser.add_argument(
        "--soak-seconds",
        type=int,
        default=None,
        help=f"also run puts at {SOAK_CONNECTIONS} connections on kvraft this long per size, "
        f"counting elections (default: {SOAK_SECONDS_DEFAULT}; 0 with --quick)",
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        default=SECTIONS,
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=tuple(SHAPES.values()),
        help="the throughput rows' shapes of load, comma-separated (default: all): base = "
        f"puts and gets, {VALUE_BYTES}-byte values, {KEYS:,} keys, at every --connections; "
        "mixed = 50/50 random puts and gets at 16 and 64; 1k = puts of 1,024-byte values at "
        "every --connections; 100k = puts and gets over 100,000 keys at 64 (each shape "
        "only at those of its counts in --connections; with --quick the shapes other than "
        "base only at the largest)",
    )
    parser.add_argument("--directory", type=Path, default=None, help="where to put the data")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    quick = arguments.quick

    def chosen(value: int | None, full: int, quick_value: int) -> int:
        return value if value is not None else (quick_value if quick else full)

    settings = Settings(
        node_counts=arguments.nodes,
        connections=arguments.connections,
        row_seconds=chosen(arguments.row_seconds, ROW_SECONDS_DEFAULT, ROW_SECONDS_QUICK),
        warmup_seconds=chosen(
            arguments.warmup_seconds, WARMUP_SECONDS_DEFAULT, WARMUP_SECONDS_QUICK
        ),
        rounds=max(1, chosen(arguments.rounds, ROUNDS_DEFAULT, ROUNDS_QUICK)),
        wrk_threads=max(1, arguments.wrk_threads),
        failover_kills=chosen(
            arguments.failover_kills, FAILOVER_KILLS_DEFAULT, FAILOVER_KILLS_QUICK
        ),
        memory_keys=chosen(arguments.memory_keys, MEMORY_KEYS_DEFAULT, MEMORY_KEYS_QUICK),
        soak_seconds=max(0, chosen(arguments.soak_seconds, SOAK_SECONDS_DEFAULT, 0)),
        sections=arguments.sections,
        shapes=(
            quick_shapes(arguments.shapes, arguments.connections) if quick else arguments.shapes
        ),
        quick=quick,
    )
    if settings.row_seconds < 1:
        parser.error("--row-seconds must be at least 1 (wrk takes whole seconds)")
    if settings.memory_keys < 1:
        parser.error("--memory-keys must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = run(settings, arguments.directory)
    except BenchmarkError as error:
        print(f"kvraft vs etcd benchmark failed: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        # Everything started is stopped and deleted by now; the tables so far are printed.
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
