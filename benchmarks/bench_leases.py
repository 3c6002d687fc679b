"""Leases (issue 19): keepalives per second with 10,000 live leases, what 10,000 leases cost in
memory, and grants per second.

Run as ``python -m benchmarks.bench_leases [--quick] [--leases N] [--row-seconds S] [--json
PATH]``. Every part gets a fresh real 3-node cluster (default settings, fsync on, as users run
it; `kvraft.launcher` on free ports of 127.0.0.1), and every part first warms the code paths
up (`WARMUP` grants, keyed puts, keepalives and revokes) so that the memory measured is what
the leases hold, not code loaded on first use:

1. **Grants, then keepalives.** `LEASES` leases of `KEEPALIVE_TTL_S` are granted through the
   leader by `GRANT_CONNECTIONS` closed-loop connections (grants/s and latency; RSS of every
   node before and after: the memory of leases without keys). Then they are kept alive as fast
   as possible: each row of `KEEPALIVE_ROWS` runs client processes (each its own asyncio loop
   and connections) that cycle through their share of the leases, one keepalive at a time per
   connection, for `ROW_S` seconds; the rows follow each other with no pause, so every lease
   is kept alive throughout. Reported per row: keepalives/s, latency p50/p99/max, the CPU the
   leader, the followers and the client processes used, and the Raft messages the leader sent
   per keepalive (a keepalive writes nothing to the log, but waits for a ReadIndex heartbeat
   round, which concurrent ones share). At the end ``GET /v1/leases`` must still list every
   lease, and the longest time any lease went without an acknowledged keepalive is printed: a
   lease that expired although that gap stayed under its TTL would be a bug, and is printed as
   one. A last row, for comparison, does linearizable gets of one key (the same ReadIndex
   round, no lease) from `REFERENCE_ROW`.
2. **Leases with one key each.** `LEASES` leases (TTL `MEMORY_TTL_S`, long enough that none
   needs a keepalive while it is measured), each with one key attached (``PUT ?lease=ID``, a
   100-byte value): RSS of every node before and after.
3. **Keys alone.** `LEASES` plain puts of the same keys and values, no lease: RSS before and
   after, to tell the lease's share from the key's.
4. **The leader's tick.** `LeaseTimer.tick`, which a leader runs every Raft tick and which
   looks at every lease, timed in this process with 10,000, 100,000 and 1,000,000 leases.

Memory is VmRSS of each node process, read when every node has applied everything the leader
committed; the growth divided by `LEASES` is the cost per lease. It includes the Raft log
entries the node still holds in memory (a snapshot compacts the log every 10,000 applied
entries by default), which the table lists next to it. The client processes share the 2 cores
with the three nodes; their CPU use is in the output, and so is the CPU that other work on the
machine took during each row (all busy CPU time in /proc/stat, less the nodes' and clients').

Prints numbers; asserts nothing about them. Every node, client process and temp directory is
removed at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    machine_info,
    print_table,
    process_cpu_seconds,
    process_memory_kib,
    write_json,
)
from kvraft import launcher
from kvraft.config import ClusterConfig, RaftSettings, local_cluster_config, render_config
from kvraft.leases import LeaseTimer

NODES = 3
LEASES = 10_000
LEASES_QUICK = 1_000
KEEPALIVE_TTL_S = 20
"""The TTL of the leases kept alive: a few times the longest gap the keepalive cycle leaves
(10,000 leases at 1,000 keepalives/s come round every 10 s), and short enough that a lease
nobody kept alive would expire during the rows."""
MEMORY_TTL_S = 600
"""The TTL of the leases only measured (no keepalives): none expires during its part."""
GRANT_CONNECTIONS = 32
KEEPALIVE_ROWS: tuple[tuple[int, int], ...] = ((1, 8), (1, 32), (1, 128), (2, 64))
"""(client processes, connections in all) per keepalive row, one after the other."""
REFERENCE_ROW = (1, 32)
"""(client processes, connections) of the reference row: linearizable gets of one key, the
same ReadIndex round as a keepalive without the lease."""
REFERENCE_KEY = "bench/reference"
TICK_LEASES = (10_000, 100_000, 1_000_000)
TICK_LEASES_QUICK = (10_000,)
TICK_REPEATS_LEASES = 2_000_000
"""`LeaseTimer.tick` is timed over this many leases in all (at least 5 ticks)."""
ROW_S = 10.0
ROW_QUICK_S = 2.0
WARMUP = 200
VALUE = b"v" * 100
KEY_PREFIX = "bench/lease-"
REQUEST_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0
APPLIED_TIMEOUT_S = 30.0
SETTLE_S = 1.0
"""Pause before reading RSS: the nodes finish what the last answers started (a snapshot, the
followers' applies)."""
STOP_TIMEOUT_S = 15.0
CLIENT_START_TIMEOUT_S = 30.0

_PEER_MESSAGES_SENT = re.compile(
    r'^kvraft_peer_sent_messages_total\{peer="\d+"\} ([0-9.e+]+)$', re.MULTILINE
)


# --- the cluster ----------------------------------------------------------------------------


def _get_json(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            parsed: dict[str, Any] = json.loads(answer.read())
            return parsed
    except (OSError, ValueError):
        return None


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting on I/O) since
    boot (/proc/stat): less what the nodes and clients used, it is what other work took."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    jiffies = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(jiffies) - jiffies[3] - jiffies[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _answers_status(url: str) -> bool:
    return _get_json(f"{url}/v1/status") is not None


@dataclass
class _Cluster:
    """A running 3-node cluster: its nodes' URLs and processes, and which one leads."""

    urls: dict[int, str]
    processes: dict[int, subprocess.Popen[bytes]]
    leader_id: int = 0

    @property
    def leader_url(self) -> str:
        return self.urls[self.leader_id]

    @property
    def follower_ids(self) -> list[int]:
        return [node_id for node_id in self.urls if node_id != self.leader_id]

    def pid(self, node_id: int) -> int:
        return self.processes[node_id].pid

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds each node has used so far (user + system, all its threads)."""
        return {node_id: process_cpu_seconds(self.pid(node_id)) or 0.0 for node_id in self.urls}

    def peer_messages_sent(self, node_id: int) -> float | None:
        """Raft messages `node_id` has written to its peers so far (its /metrics)."""
        try:
            with urllib.request.urlopen(f"{self.urls[node_id]}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        return sum(float(value) for value in _PEER_MESSAGES_SENT.findall(text))

    def statuses(self) -> dict[int, dict[str, Any]]:
        return {node_id: _get_json(f"{url}/v1/status") or {} for node_id, url in self.urls.items()}

    def wait_for_leader(self) -> int:
        """The leader every node agrees on (polling until `LEADER_TIMEOUT_S`)."""
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        while time.monotonic() < deadline:
            statuses = self.statuses()
            leaders = {status.get("leader_id") for status in statuses.values()}
            if (
                len(leaders) == 1
                and (leader_id := leaders.pop()) in statuses
                and statuses[leader_id].get("role") == "leader"
            ):
                self.leader_id = int(leader_id)
                return self.leader_id
            time.sleep(0.05)  # polling interval
        raise TimeoutError(f"no agreed leader within {LEADER_TIMEOUT_S:g} s")

    def wait_applied(self) -> dict[int, dict[str, Any]]:
        """Wait until every node has applied the leader's commit index; their statuses."""
        target = self.statuses()[self.leader_id].get("commit_index", 0)
        deadline = time.monotonic() + APPLIED_TIMEOUT_S
        while True:
            statuses = self.statuses()
            if all(status.get("applied_index", -1) >= target for status in statuses.values()):
                return statuses
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the nodes did not apply index {target} in time")
            time.sleep(0.05)  # polling interval

    def memory(self) -> dict[int, dict[str, Any]]:
        """Per node, once every node applied what the leader committed: VmRSS (KiB) and the
        Raft log entries it holds in memory (after its last snapshot)."""
        self.wait_applied()
        time.sleep(SETTLE_S)  # let a snapshot the last entries started finish
        statuses = self.wait_applied()
        return {
            node_id: {
                "rss_kib": process_memory_kib(self.pid(node_id)).get("VmRSS", 0),
                "log_entries": statuses[node_id]["last_log_index"]
                - statuses[node_id]["snapshot_index"],
                "applied_index": statuses[node_id]["applied_index"],
            }
            for node_id in self.urls
        }


def _cluster_config(root: Path, label: str) -> ClusterConfig:
    ports = launcher.free_ports(2 * NODES)
    config = local_cluster_config(NODES, root, cluster_id=f"kvraft-bench-leases-{label}")
    config = replace(
        config,
        nodes=tuple(
            replace(spec, http_port=ports[index], raft_port=ports[NODES + index])
            for index, spec in enumerate(config.nodes)
        ),
    )
    assert config.storage.fsync  # users run with fsync on, the default
    return config


@contextlib.contextmanager
def _running_cluster(label: str) -> Iterator[_Cluster]:
    """A fresh 3-node cluster in a temp dir, stopped and removed on the way out."""
    with tempfile.TemporaryDirectory(prefix=f"kvraft-bench-leases-{label}-") as directory:
        root = Path(directory)
        config = _cluster_config(root, label)
        config_path = root / "cluster.toml"
        config_path.write_text(render_config(config))
        cluster = _Cluster({spec.id: spec.http_url for spec in config.nodes}, {})
        try:
            for spec in config.nodes:
                cluster.processes[spec.id] = launcher.start(
                    launcher.serve_command(spec.id, config_path), root / f"node{spec.id}.log"
                )
            for spec in config.nodes:
                launcher.wait_ready(
                    cluster.processes[spec.id],
                    root / f"node{spec.id}.log",
                    functools.partial(_answers_status, cluster.urls[spec.id]),
                    what=f"node {spec.id} answering",
                    timeout_s=STARTUP_TIMEOUT_S,
                )
            cluster.wait_for_leader()
            yield cluster
        finally:
            launcher.stop(cluster.processes, timeout_s=STOP_TIMEOUT_S)


# --- requests -------------------------------------------------------------------------------


def _run_async(coroutine: Awaitable[Any]) -> Any:
    """Run on uvloop when it is installed (the `fast` extra, as the nodes do): less client CPU
    per request on the cores the nodes share."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    return uvloop.run(coroutine)  # type: ignore[arg-type]


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=connections),
    )


class _Unexpected(Exception):
    """A request answered something other than what the benchmark needs to go on."""


async def _grant(session: aiohttp.ClientSession, url: str, ttl_s: int) -> int:
    async with session.post(f"{url}/v1/leases", json={"ttl_s": ttl_s}) as answer:
        body = await answer.read()
        if answer.status != 200:
            raise _Unexpected(f"grant: HTTP {answer.status} {body[:200]!r}")
        return int(json.loads(body)["id"])


async def _put(
    session: aiohttp.ClientSession, url: str, key: str, lease_id: int | None = None
) -> None:
    target = f"{url}/v1/kv/{key}" + ("" if lease_id is None else f"?lease={lease_id}")
    async with session.put(target, data=VALUE) as answer:
        body = await answer.read()
        if answer.status != 200:
            raise _Unexpected(f"put {key}: HTTP {answer.status} {body[:200]!r}")


async def _keepalive(session: aiohttp.ClientSession, url: str, lease_id: int) -> int:
    async with session.post(f"{url}/v1/leases/{lease_id}/keepalive") as answer:
        await answer.read()
        return answer.status


async def _revoke(session: aiohttp.ClientSession, url: str, lease_id: int) -> None:
    async with session.delete(f"{url}/v1/leases/{lease_id}") as answer:
        body = await answer.read()
        if answer.status != 200:
            raise _Unexpected(f"revoke {lease_id}: HTTP {answer.status} {body[:200]!r}")


async def _warm_up(url: str) -> None:
    """Every code path the parts use, `WARMUP` times, leaving no lease or key behind."""
    async with _session(16) as session:

        async def one(number: int) -> None:
            lease_id = await _grant(session, url, MEMORY_TTL_S)
            await _put(session, url, f"warmup/{number}", lease_id)
            await _put(session, url, f"warmup/plain-{number}")
            if await _keepalive(session, url, lease_id) != 200:
                raise _Unexpected(f"warm-up keepalive of lease {lease_id} failed")
            await _revoke(session, url, lease_id)
            async with session.delete(f"{url}/v1/kv/warmup/plain-{number}") as answer:
                await answer.read()

        await asyncio.gather(*(one(number) for number in range(WARMUP)))


async def _closed_loop(
    count: int, connections: int, one: Callable[[aiohttp.ClientSession, int], Awaitable[Any]]
) -> tuple[list[Any], list[float], float]:
    """`one(session, number)` for numbers 0..count-1 from `connections` closed loops: the
    results in order, each call's latency (ms) and the seconds it all took."""
    results: list[Any] = [None] * count
    latencies_ms: list[float] = []
    next_number = 0
    async with _session(connections) as session:

        async def loop() -> None:
            nonlocal next_number
            while next_number < count:
                number = next_number
                next_number += 1
                sent = time.monotonic()
                results[number] = await one(session, number)
                latencies_ms.append((time.monotonic() - sent) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed_s = time.monotonic() - started
    return results, latencies_ms, elapsed_s


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 2) if ordered else None,
        "p99_ms": None if not ordered else round(_percentile(ordered, 0.99) or 0.0, 2),
        "max_ms": round(ordered[-1], 2) if ordered else None,
    }


# --- client processes ----------------------------------------------------------------------


@dataclass
class _ClientResult:
    """What one client process saw in one row (sent back to the parent). For keepalives,
    per lease: when its first and last keepalive of the row were acknowledged and the
    longest time between two acknowledged ones."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    first_ack: dict[int, float] = field(default_factory=dict)
    last_ack: dict[int, float] = field(default_factory=dict)
    max_gap_s: dict[int, float] = field(default_factory=dict)
    not_found: list[int] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    cpu_s: float = 0.0
    machine_busy_s: float = 0.0


async def _load(
    url: str, operation: str, lease_ids: list[int], connections: int, seconds: float
) -> _ClientResult:
    """`connections` closed loops for `seconds`: keepalives cycling through `lease_ids`
    (`operation` "keepalive"), or linearizable gets of `REFERENCE_KEY` ("get")."""
    result = _ClientResult()
    cursor = 0
    count = len(lease_ids)
    statuses = result.statuses
    latencies = result.latencies_ms
    first_ack, last_ack, max_gap = result.first_ack, result.last_ack, result.max_gap_s
    async with _session(connections) as session:

        async def keepalives(deadline: float) -> None:
            nonlocal cursor
            while (sent := time.monotonic()) < deadline:
                lease_id = lease_ids[cursor % count]
                cursor += 1
                try:
                    status = await _keepalive(session, url, lease_id)
                except (aiohttp.ClientError, TimeoutError) as error:
                    statuses[f"error {type(error).__name__}"] += 1
                    continue
                answered = time.monotonic()
                statuses[str(status)] += 1
                if status == 200:
                    latencies.append((answered - sent) * 1000)
                    previous = last_ack.get(lease_id)
                    if previous is None:
                        first_ack[lease_id] = answered
                    elif answered - previous > max_gap.get(lease_id, 0.0):
                        max_gap[lease_id] = answered - previous
                    last_ack[lease_id] = answered
                elif status == 404:
                    result.not_found.append(lease_id)

        async def gets(deadline: float) -> None:
            target = f"{url}/v1/kv/{REFERENCE_KEY}"
            while (sent := time.monotonic()) < deadline:
                try:
                    async with session.get(target) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError) as error:
                    statuses[f"error {type(error).__name__}"] += 1
                    continue
                statuses[str(status)] += 1
                if status == 200:
                    latencies.append((time.monotonic() - sent) * 1000)

        loop = keepalives if operation == "keepalive" else gets
        cpu_before = time.process_time()
        busy_before = _machine_busy_seconds()
        result.started = time.monotonic()
        await asyncio.gather(*(loop(result.started + seconds) for _ in range(connections)))
        result.ended = time.monotonic()
        result.machine_busy_s = _machine_busy_seconds() - busy_before
        result.cpu_s = time.process_time() - cpu_before
    return result


def _client_process(
    url: str,
    operation: str,
    lease_ids: list[int],
    connections: int,
    seconds: float,
    connection: multiprocessing.connection.Connection,
) -> None:
    """Entry point of a client process: ready, wait for go, run, send the result back."""
    try:
        connection.send("ready")
        if connection.recv() == "go":
            result = _run_async(_load(url, operation, lease_ids, connections, seconds))
            connection.send(result)
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the whole process group; the parent cleans up
    finally:
        connection.close()


def _run_clients(
    url: str,
    operation: str,
    lease_ids: list[int],
    processes: int,
    connections: int,
    seconds: float,
) -> list[_ClientResult]:
    """`processes` client processes (lease i to process i % processes) sharing `connections`,
    started together once all are ready; their results."""
    context = multiprocessing.get_context("spawn")
    started: list[tuple[multiprocessing.process.BaseProcess, Any]] = []
    try:
        for index in range(processes):
            receiver, sender = context.Pipe()
            share = connections // processes + (1 if index < connections % processes else 0)
            process: multiprocessing.process.BaseProcess = context.Process(
                target=_client_process,
                args=(url, operation, lease_ids[index::processes], share, seconds, sender),
                daemon=True,
            )
            process.start()
            sender.close()
            started.append((process, receiver))
        for _, receiver in started:
            if not receiver.poll(CLIENT_START_TIMEOUT_S) or receiver.recv() != "ready":
                raise RuntimeError("a client process did not start")
        for _, receiver in started:
            receiver.send("go")
        results = []
        for _, receiver in started:
            if not receiver.poll(seconds + REQUEST_TIMEOUT_S + 30):
                raise RuntimeError("a client process sent no result")
            results.append(receiver.recv())
        return results
    finally:
        for process, receiver in started:
            receiver.close()
            process.join(5)
            if process.is_alive():
                process.terminate()  # a process this function started
                process.join(5)


def _row(
    cluster: _Cluster,
    operation: str,
    lease_ids: list[int],
    processes: int,
    connections: int,
    seconds: float,
) -> tuple[dict[str, Any], list[_ClientResult]]:
    """One row of load on the leader: its summary, and the client processes' results."""
    cpu_before = cluster.cpu_seconds()
    messages_before = cluster.peer_messages_sent(cluster.leader_id)
    clients = _run_clients(
        cluster.leader_url, operation, lease_ids, processes, connections, seconds
    )
    messages_after = cluster.peer_messages_sent(cluster.leader_id)
    cpu_after = cluster.cpu_seconds()
    busy_s = sum(client.machine_busy_s for client in clients) / len(clients)
    node_cpu = {node_id: cpu_after[node_id] - cpu_before[node_id] for node_id in cpu_before}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    for client in clients:
        statuses.update(client.statuses)
        latencies.extend(client.latencies_ms)
    elapsed_s = max(c.ended for c in clients) - min(c.started for c in clients)
    acked = statuses.get("200", 0)
    leader_cpu = node_cpu[cluster.leader_id]
    messages = (
        None
        if messages_before is None or messages_after is None or not acked
        else round((messages_after - messages_before) / acked, 3)
    )
    summary = {
        "operation": operation,
        "processes": processes,
        "connections": connections,
        "seconds": round(elapsed_s, 2),
        "acked": acked,
        "acked_per_s": round(acked / elapsed_s, 1),
        "answers": dict(statuses),
        **_latency_summary(latencies),
        "leader_cpu_s": round(leader_cpu, 2),
        "leader_cpu_us_per_op": round(leader_cpu / acked * 1e6, 1) if acked else None,
        "leader_peer_messages_per_op": messages,
        "followers_cpu_s": round(sum(node_cpu[n] for n in cluster.follower_ids), 2),
        "client_cpu_s": round(sum(c.cpu_s for c in clients), 2),
        # Busy CPU of the whole machine while the clients ran, less the nodes' and clients'
        # own (the nodes' is measured over a little longer, so this errs low).
        "other_cpu_s": round(
            max(0.0, busy_s - sum(node_cpu.values()) - sum(c.cpu_s for c in clients)), 2
        ),
        "cores_busy": round(busy_s / elapsed_s, 2),
    }
    return summary, clients


# --- part 1: grants, then keepalives --------------------------------------------------------


def _grants_and_keepalives(
    leases: int, row_s: float, rows: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    print(f"\npart 1: {leases:,} leases of {KEEPALIVE_TTL_S} s, then keepalives", flush=True)
    with _running_cluster("part1") as cluster:
        url = cluster.leader_url
        _run_async(_warm_up(url))
        memory_before = cluster.memory()
        term_before = cluster.statuses()[cluster.leader_id].get("term")

        async def grant(session: aiohttp.ClientSession, number: int) -> tuple[int, float]:
            return await _grant(session, url, KEEPALIVE_TTL_S), time.monotonic()

        cpu_before = cluster.cpu_seconds()
        granted, grant_latencies_ms, grant_s = _run_async(
            _closed_loop(leases, GRANT_CONNECTIONS, grant)
        )
        cpu_after = cluster.cpu_seconds()
        print(f"  granted {leases:,} in {grant_s:.1f} s", flush=True)
        memory_after = cluster.memory()
        lease_ids = [lease_id for lease_id, _ in granted]
        # Per lease: when its last keepalive (at first, its grant) was acknowledged, and the
        # longest time it went without one.
        last_ack = {lease_id: acked for lease_id, acked in granted}
        max_gap = dict.fromkeys(lease_ids, 0.0)
        not_found: set[int] = set()
        row_results = []
        for processes, connections in rows:
            row, clients = _row(cluster, "keepalive", lease_ids, processes, connections, row_s)
            row_results.append(row)
            for client in clients:
                not_found.update(client.not_found)
                for lease_id, first in client.first_ack.items():
                    max_gap[lease_id] = max(
                        max_gap[lease_id],
                        first - last_ack[lease_id],
                        client.max_gap_s.get(lease_id, 0.0),
                    )
                    last_ack[lease_id] = client.last_ack[lease_id]
            print(
                f"  {processes} client process(es), {connections} connections: "
                f"{row['acked_per_s']:,.0f} keepalives/s",
                flush=True,
            )
        listed = _get_json(f"{url}/v1/leases", timeout_s=30.0)
        checked_at = time.monotonic()
        for lease_id in lease_ids:
            max_gap[lease_id] = max(max_gap[lease_id], checked_at - last_ack[lease_id])
        term_after = cluster.statuses()[cluster.leader_id].get("term")
        # The same ReadIndex round without a lease, for comparison (after the check: no
        # keepalives are sent during it).
        _run_async(_put_reference(url))
        reference, _ = _row(cluster, "get", [], *REFERENCE_ROW, row_s)
        print(f"  reference: {reference['acked_per_s']:,.0f} linearizable gets/s", flush=True)
    if listed is None:
        raise RuntimeError("GET /v1/leases on the leader failed after the keepalive rows")
    live = {int(item["id"]) for item in listed["leases"]}
    missing = [lease_id for lease_id in lease_ids if lease_id not in live]
    gaps = sorted(max_gap.values())
    return {
        "leases": leases,
        "ttl_s": KEEPALIVE_TTL_S,
        "grant": {
            "seconds": round(grant_s, 2),
            "leases_per_s": round(leases / grant_s, 1),
            "connections": GRANT_CONNECTIONS,
            **_latency_summary(grant_latencies_ms),
            "leader_cpu_us_per_grant": round(
                (cpu_after[cluster.leader_id] - cpu_before[cluster.leader_id]) / leases * 1e6, 1
            ),
        },
        "memory": _memory_summary(cluster, memory_before, memory_after, leases),
        "rows": row_results,
        "reference_get": reference,
        "listed_at_end": len(live),
        "missing_at_end": len(missing),
        "answered_404": len(not_found),
        "expired_although_kept_alive": sum(
            1 for lease_id in missing if max_gap[lease_id] < KEEPALIVE_TTL_S
        ),
        "max_gap_s": round(gaps[-1], 2) if gaps else None,
        "p99_gap_s": round(_percentile(gaps, 0.99) or 0.0, 2) if gaps else None,
        "term_before": term_before,
        "term_after": term_after,
        "leader_id": cluster.leader_id,
    }


async def _put_reference(url: str) -> None:
    async with _session(1) as session:
        await _put(session, url, REFERENCE_KEY)


# --- parts 2 and 3: memory ------------------------------------------------------------------


def _memory_summary(
    cluster: _Cluster,
    before: dict[int, dict[str, Any]],
    after: dict[int, dict[str, Any]],
    count: int,
) -> dict[int, dict[str, Any]]:
    return {
        node_id: {
            "role": "leader" if node_id == cluster.leader_id else "follower",
            "rss_before_mib": round(before[node_id]["rss_kib"] / 1024, 1),
            "rss_after_mib": round(after[node_id]["rss_kib"] / 1024, 1),
            "bytes_per_item": round(
                (after[node_id]["rss_kib"] - before[node_id]["rss_kib"]) * 1024 / count
            ),
            "log_entries_before": before[node_id]["log_entries"],
            "log_entries_after": after[node_id]["log_entries"],
        }
        for node_id in cluster.urls
    }


def _memory_part(part: int, leases: int, with_lease: bool) -> dict[str, Any]:
    what = "leases with one key each" if with_lease else "keys without a lease"
    print(f"\npart {part}: {leases:,} {what}", flush=True)
    with _running_cluster(f"part{part}") as cluster:
        url = cluster.leader_url
        _run_async(_warm_up(url))
        before = cluster.memory()

        async def one(session: aiohttp.ClientSession, number: int) -> None:
            lease_id = await _grant(session, url, MEMORY_TTL_S) if with_lease else None
            await _put(session, url, f"{KEY_PREFIX}{number:06d}", lease_id)

        _, latencies_ms, seconds = _run_async(_closed_loop(leases, GRANT_CONNECTIONS, one))
        print(f"  done in {seconds:.1f} s", flush=True)
        after = cluster.memory()
        return {
            "what": what,
            "count": leases,
            "seconds": round(seconds, 2),
            "per_s": round(leases / seconds, 1),
            **_latency_summary(latencies_ms),
            "memory": _memory_summary(cluster, before, after, leases),
        }


# --- part 4: the leader's tick ---------------------------------------------------------------


def _tick_cost(counts: Sequence[int]) -> list[dict[str, Any]]:
    """`LeaseTimer.tick` in this process (pure code, no cluster), with every lease live: the
    one piece of lease work a leader does per Raft tick whatever the load, and proportional to
    the number of leases."""
    settings = RaftSettings()
    rows = []
    for count in counts:
        timer = LeaseTimer(settings.tick_ms, settings.election_ticks)
        # (id, TTL, no checkpointed remainder): every lease gets a full TTL.
        timer.promote(1, ((lease_id, MEMORY_TTL_S, 0) for lease_id in range(1, count + 1)))
        repeats = max(5, TICK_REPEATS_LEASES // count)
        started = time.perf_counter()
        for _ in range(repeats):
            timer.tick()
        per_tick_s = (time.perf_counter() - started) / repeats
        rows.append(
            {
                "leases": count,
                "us_per_tick": round(per_tick_s * 1e6, 1),
                "ns_per_lease": round(per_tick_s * 1e9 / count, 1),
                "tick_ms": settings.tick_ms,
                "core_percent": round(100 * per_tick_s * 1000 / settings.tick_ms, 1),
            }
        )
    return rows


# --- output ---------------------------------------------------------------------------------


def _answers(answers: dict[str, int]) -> str:
    """The answers other than 200, or 0."""
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(answers.items()) if k != "200") or "0"


def _print(results: dict[str, Any]) -> None:
    part = results["keepalive"]
    grant = part["grant"]
    print_table(
        f"leases: grants ({grant['connections']} closed-loop connections to the leader, fsync on)",
        ["what", "count", "seconds", "per s", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "grant (no key)",
                f"{part['leases']:,}",
                grant["seconds"],
                f"{grant['leases_per_s']:,.0f}",
                grant["p50_ms"],
                grant["p99_ms"],
                grant["max_ms"],
            ],
            *(
                [
                    "grant, then put ?lease"
                    if m["what"].startswith("leases")
                    else "put (no lease)",
                    f"{m['count']:,}",
                    m["seconds"],
                    f"{m['per_s']:,.0f}",
                    m["p50_ms"],
                    m["p99_ms"],
                    m["max_ms"],
                ]
                for m in results["memory"]
            ),
        ],
    )
    print(f"\nleader CPU per grant: {grant['leader_cpu_us_per_grant']} us", flush=True)
    print_table(
        f"leases: keepalives to the leader with {part['leases']:,} live leases "
        f"(TTL {part['ttl_s']} s; rows back to back; last row: linearizable gets of one key)",
        [
            "operation",
            "client processes",
            "connections",
            "seconds",
            "per s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "other answers",
            "leader CPU s",
            "leader CPU us/op",
            "leader peer msgs/op",
            "followers CPU s",
            "client CPU s",
            "other work CPU s",
        ],
        [
            [
                row["operation"],
                row["processes"],
                row["connections"],
                row["seconds"],
                f"{row['acked_per_s']:,.0f}",
                row["p50_ms"],
                row["p99_ms"],
                row["max_ms"],
                _answers(row["answers"]),
                row["leader_cpu_s"],
                row["leader_cpu_us_per_op"],
                row["leader_peer_messages_per_op"],
                row["followers_cpu_s"],
                row["client_cpu_s"],
                row["other_cpu_s"],
            ]
            for row in [*part["rows"], part["reference_get"]]
        ],
    )
    print(
        f"\nexpiry check: {part['listed_at_end']:,} of {part['leases']:,} leases still listed "
        f"after the keepalive rows, {part['answered_404']} keepalives answered 404; the longest "
        f"a lease went without an acknowledged keepalive: {part['max_gap_s']} s (p99 over "
        f"leases {part['p99_gap_s']} s) of its {part['ttl_s']} s TTL; leader term "
        f"{part['term_before']} -> {part['term_after']}",
        flush=True,
    )
    if part["expired_although_kept_alive"]:
        print(
            f"\n!!! BUG: {part['expired_although_kept_alive']} leases expired although none went "
            f"{part['ttl_s']} s without an acknowledged keepalive",
            flush=True,
        )
    rows = []
    for label, memory in [
        (f"{part['leases']:,} leases, no key", part["memory"]),
        *((f"{m['count']:,} {m['what']}", m["memory"]) for m in results["memory"]),
    ]:
        for node_id, node in memory.items():
            rows.append(
                [
                    label,
                    f"{node_id} {node['role']}",
                    node["rss_before_mib"],
                    node["rss_after_mib"],
                    f"{node['bytes_per_item']:,}",
                    f"{node['log_entries_before']:,} -> {node['log_entries_after']:,}",
                ]
            )
    print_table(
        "leases: memory (VmRSS once every node applied everything; each part a fresh cluster)",
        ["what", "node", "RSS before MiB", "RSS after MiB", "bytes each", "log entries held"],
        rows,
    )
    print_table(
        "leases: LeaseTimer.tick() on the leader, every lease live (in this process)",
        ["leases", "us per tick", "ns per lease", "share of a core (one tick per tick_ms)"],
        [
            [
                f"{row['leases']:,}",
                f"{row['us_per_tick']:,.1f}",
                row["ns_per_lease"],
                f"{row['core_percent']} % ({row['tick_ms']} ms ticks)",
            ]
            for row in results["tick"]
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"{LEASES_QUICK:,} leases, {ROW_QUICK_S:g} s rows"
    )
    parser.add_argument("--leases", type=int, default=None, help=f"default {LEASES:,}")
    parser.add_argument("--row-seconds", type=float, default=None, help=f"default {ROW_S:g}")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args(argv)
    leases = arguments.leases or (LEASES_QUICK if arguments.quick else LEASES)
    row_s = arguments.row_seconds or (ROW_QUICK_S if arguments.quick else ROW_S)
    machine = machine_info()
    print(
        f"leases: {NODES} nodes, fsync on, {machine['nproc']} CPUs shared by the nodes and the "
        f"client processes; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine,
        "quick": arguments.quick,
        "load_average_1m_before": os.getloadavg()[0],
        "keepalive": _grants_and_keepalives(leases, row_s, KEEPALIVE_ROWS),
        "memory": [
            _memory_part(2, leases, with_lease=True),
            _memory_part(3, leases, with_lease=False),
        ],
        "tick": _tick_cost(TICK_LEASES_QUICK if arguments.quick else TICK_LEASES),
    }
    results["load_average_1m_after"] = os.getloadavg()[0]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    _print(results)
    print(
        f"\nleases: {results['elapsed_s']:.0f} s in all; load average "
        f"{results['load_average_1m_before']:.1f} before, {results['load_average_1m_after']:.1f}"
        " after",
        flush=True,
    )
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
