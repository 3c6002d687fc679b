"""Overload (issue #16): a 3-node cluster offered 4x the writes it can commit, for a minute.

Run as ``python -m benchmarks.bench_overload [--quick] [--sizes 100,65536,1048576] [--json
PATH]``. For each value size (100 B, 64 KiB, 1 MiB) a fresh real 3-node cluster (default
settings, fsync on, as users run it; `kvraft.launcher` on free ports of 127.0.0.1):

1. **Capacity**: a closed loop of `CAPACITY_WRITERS` writers PUT to the leader for
   `CAPACITY_S` seconds; the acknowledged puts per second are what the cluster commits. It
   also fills the key set, so the data size is the same during the whole overload phase.
2. **Overload**: an *open-loop* generator offers `OVERLOAD_FACTOR` times that rate for
   `OVERLOAD_S` seconds: request i is due at ``start + i / rate`` whatever the answers to
   the earlier ones. Half go to the leader, a quarter to each follower (which forward them;
   each node sheds by its own budget). The keys cycle over a bounded set (`KEYS_BY_SIZE`),
   so the data stops growing and a growing RSS would mean queued work, not data. A request
   due while `IN_FLIGHT_MAX` are unanswered is not sent ("not sent: client limit"); one
   that this process could not start within `START_LAG_MAX_S` of its due time (its CPU is
   shared with the three nodes) is dropped too ("not sent: client behind"). Both are
   reported, and "offered/s" is what was actually sent: with 100-byte values a Python
   client on 2 cores may not reach 4x, and the table says so rather than hiding it.
3. **Probes**, in a separate process so the generator's loop does not delay them: every
   `PROBE_INTERVAL_S`, ``GET /healthz`` and ``GET /v1/status`` on every node (p50/p99/max
   latency; the issue's target is p99 < 100 ms while shedding), the leader and term each
   node reports, and every second each node's VmRSS.

Reported per size: acknowledged puts/s and their latency (from the moment each was sent), the
share of answers that were 503 (shed), 504 (outcome unknown), anything else (a bug: printed
loudly) and client errors; the probes; RSS before the phase, the peak in its first and last
quarter (flat or growing), the peak in the phase and the process's VmHWM; leader changes
(the highest term before and after, the largest ``kvraft_leader_changes_total`` increment of the
three nodes -- each node counts every new leader it learns of -- and the leader ids the probes
saw). ``kvraft_leader_changes_total`` also counts a follower that heard nothing from the leader for
an election timeout (its pre-vote then fails) and relearns the same leader in the same term:
an increment without a new term is such a flap, not an election. Latencies measured by this
machine's client processes include their own scheduling delays on shared cores.

Prints numbers; asserts nothing about them. Every node process and temp directory is removed
at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import machine_info, print_table, process_memory_kib, write_json
from kvraft import launcher
from kvraft.config import ClusterConfig, local_cluster_config, render_config

KIB = 1024
MIB = 1024 * 1024
NODES = 3
VALUE_SIZES_BYTES = (100, 64 * KIB, MIB)
KEYS_BY_SIZE = {100: 1_000, 64 * KIB: 1_000, MIB: 100}
"""The key set each size cycles over: 1 MiB x 100 keys is 100 MiB of data per node."""
KEYS_DEFAULT = 1_000
CAPACITY_WRITERS = 16
CAPACITY_S = 10.0
CAPACITY_QUICK_S = 3.0
OVERLOAD_FACTOR = 4.0
OVERLOAD_S = 60.0
OVERLOAD_QUICK_S = 10.0
IN_FLIGHT_MAX = 4_000
START_LAG_MAX_S = 0.5
"""A request this late (the generator's loop was busy) is dropped, not sent in a burst."""
GENERATOR_TICK_S = 0.002
REQUEST_TIMEOUT_S = 30.0
"""The client's own limit; a node answers 504 after its request_timeout_ms (5 s) first."""
DRAIN_TIMEOUT_S = REQUEST_TIMEOUT_S + 5.0
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 5.0
RSS_INTERVAL_S = 1.0
STARTUP_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PROBE_START_TIMEOUT_S = 30.0
EXPECTED_STATUSES = {200, 503, 504}

_LEADER_CHANGES = re.compile(r"^kvraft_leader_changes_total ([0-9.e+]+)$", re.MULTILINE)


# --- the cluster ----------------------------------------------------------------------------


def _cluster_config(root: Path) -> ClusterConfig:
    ports = launcher.free_ports(2 * NODES)
    config = local_cluster_config(NODES, root, cluster_id=f"kvraft-bench-overload-{root.name}")
    config = replace(
        config,
        nodes=tuple(
            replace(spec, http_port=ports[index], raft_port=ports[NODES + index])
            for index, spec in enumerate(config.nodes)
        ),
    )
    # Users run with fsync on; the default is on, and this benchmark is about their setup.
    assert config.storage.fsync
    return config


def _get_json(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            parsed: dict[str, Any] = json.loads(answer.read())
            return parsed
    except (OSError, ValueError):
        return None


def _answers(url: str) -> bool:
    return _get_json(f"{url}/v1/status") is not None


def _get_text(url: str, timeout_s: float = 5.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def _wait_for_leader(urls: dict[int, str]) -> int:
    """The leader all nodes agree on (polling until `LEADER_TIMEOUT_S`)."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = [_get_json(f"{url}/v1/status") for url in urls.values()]
        if all(status is not None for status in statuses):
            leaders = {status["leader_id"] for status in statuses if status is not None}
            if len(leaders) == 1 and 0 not in leaders:
                leader_id = int(leaders.pop())
                if any(
                    s is not None and s["id"] == leader_id and s["role"] == "leader"
                    for s in statuses
                ):
                    return leader_id
        time.sleep(0.05)  # polling interval
    raise TimeoutError(f"no agreed leader within {LEADER_TIMEOUT_S:g} s")


def _cluster_state(urls: dict[int, str]) -> dict[int, dict[str, Any]]:
    """Per node: its term, leader, pending write bytes, writes shed, and the
    ``kvraft_leader_changes_total`` counter (None where a node did not answer)."""
    state: dict[int, dict[str, Any]] = {}
    for node_id, url in urls.items():
        status = _get_json(f"{url}/v1/status", timeout_s=10.0) or {}
        metrics = _get_text(f"{url}/metrics", timeout_s=10.0) or ""
        match = _LEADER_CHANGES.search(metrics)
        state[node_id] = {
            "term": status.get("term"),
            "leader_id": status.get("leader_id"),
            "write_bytes_pending": status.get("write_bytes_pending"),
            "writes_shed": status.get("writes_shed"),
            "leader_changes": int(float(match.group(1))) if match else None,
        }
    return state


# --- load -----------------------------------------------------------------------------------


def _key(index: int, keys: int) -> str:
    return f"bench/k{index % keys}"


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _latency_summary(values_ms: list[float]) -> dict[str, float | None]:
    ordered = sorted(values_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
        "p99_ms": _round(_percentile(ordered, 0.99)),
        "max_ms": _round(ordered[-1] if ordered else None),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


async def _capacity(url: str, value: bytes, keys: int, seconds: float) -> dict[str, Any]:
    """Closed loop: `CAPACITY_WRITERS` writers, each waits for its answer before the next."""
    acked_latencies_ms: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:

        async def writer(writer_index: int) -> None:
            number = writer_index
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    async with session.put(f"{url}/v1/kv/{_key(number, keys)}", data=value) as r:
                        await r.read()
                        statuses[str(r.status)] += 1
                        if r.status == 200:
                            acked_latencies_ms.append((time.monotonic() - sent) * 1000)
                except (aiohttp.ClientError, TimeoutError) as error:
                    statuses[type(error).__name__] += 1
                number += CAPACITY_WRITERS  # writers interleave, so every key gets written

        started = time.monotonic()
        await asyncio.gather(*(writer(index) for index in range(CAPACITY_WRITERS)))
        elapsed_s = time.monotonic() - started
    return {
        "seconds": round(elapsed_s, 1),
        "acked": len(acked_latencies_ms),
        "puts_per_s": round(len(acked_latencies_ms) / elapsed_s, 1),
        "answers": dict(statuses),
        **_latency_summary(acked_latencies_ms),
    }


class _OpenLoop:
    """The overload phase's generator and what its requests were answered."""

    def __init__(self, targets: list[str], value: bytes, keys: int, rate_per_s: float) -> None:
        self.targets = targets
        self.value = value
        self.keys = keys
        self.rate_per_s = rate_per_s
        self.due = 0
        self.sent = 0
        self.not_sent_client_limit = 0
        self.not_sent_client_behind = 0
        self.in_flight = 0
        self.in_flight_peak = 0
        self.answers: Counter[str] = Counter()
        self.answers_by_target: dict[int, Counter[str]] = {
            index: Counter() for index in range(len(targets))
        }
        self.acked_latencies_ms: list[float] = []
        self.acked_in_phase = 0
        self.start_lags_ms: list[float] = []
        self.phase_end = 0.0

    async def run(self, seconds: float) -> float:
        """Offer load for `seconds`, then wait for every answer; the phase's length."""
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            started = time.monotonic()
            self.phase_end = started + seconds
            while (now := time.monotonic()) < self.phase_end:
                due_now = int((now - started) * self.rate_per_s)
                while self.due < due_now:
                    number = self.due
                    self.due += 1
                    due_at = started + number / self.rate_per_s
                    if now - due_at > START_LAG_MAX_S:
                        self.not_sent_client_behind += 1
                    elif self.in_flight >= IN_FLIGHT_MAX:
                        self.not_sent_client_limit += 1
                    else:
                        self.in_flight += 1
                        self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
                        task = asyncio.create_task(self._put(session, number, due_at))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                await asyncio.sleep(GENERATOR_TICK_S)  # pacing the schedule
            elapsed_s = time.monotonic() - started
            if tasks:
                await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
            for task in tasks:
                task.cancel()
        return elapsed_s

    async def _put(self, session: aiohttp.ClientSession, number: int, due_at: float) -> None:
        sent = time.monotonic()
        self.sent += 1
        self.start_lags_ms.append((sent - due_at) * 1000)
        # Half to the leader (target 0), a quarter to each follower: 0, 0, 1, 2, 0, 0, 1, 2...
        target = (0, 0, 1, 2)[number % 4] if len(self.targets) == 3 else 0
        url = f"{self.targets[target]}/v1/kv/{_key(number, self.keys)}"
        try:
            async with session.put(url, data=self.value) as answer:
                await answer.read()
                outcome = str(answer.status)
                if answer.status == 200:
                    answered = time.monotonic()
                    self.acked_latencies_ms.append((answered - sent) * 1000)
                    if answered <= self.phase_end:
                        self.acked_in_phase += 1
        except (aiohttp.ClientError, TimeoutError) as error:
            outcome = f"error {type(error).__name__}"
        finally:
            self.in_flight -= 1
        self.answers[outcome] += 1
        self.answers_by_target[target][outcome] += 1


# --- probes (a separate process) ------------------------------------------------------------


def _probe_process(
    urls: dict[int, str],
    pids: dict[int, int],
    seconds: float,
    connection: multiprocessing.connection.Connection,
) -> None:
    """Entry point of the probe process: probe, then send the samples back on `connection`."""
    try:
        connection.send(asyncio.run(_probe(urls, pids, seconds, connection)))
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the whole process group; the parent cleans up
    finally:
        connection.close()


async def _probe(
    urls: dict[int, str],
    pids: dict[int, int],
    seconds: float,
    connection: multiprocessing.connection.Connection,
) -> dict[str, Any]:
    latencies_ms: dict[str, list[float]] = {
        f"{n}/{kind}": [] for n in urls for kind in ("healthz", "status")
    }
    failures: Counter[str] = Counter()
    leaders_seen: dict[int, set[int]] = {node_id: set() for node_id in urls}
    terms_seen: dict[int, set[int]] = {node_id: set() for node_id in urls}
    rss_samples: list[tuple[float, int, int]] = []
    own_lags_ms: list[float] = []
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:

        async def probe(node_id: int, kind: str) -> None:
            path = "/healthz" if kind == "healthz" else "/v1/status"
            sent = time.monotonic()
            try:
                async with session.get(f"{urls[node_id]}{path}") as answer:
                    body = await answer.read()
                    if answer.status != 200:
                        failures[f"{node_id}/{kind} {answer.status}"] += 1
                        return
                latencies_ms[f"{node_id}/{kind}"].append((time.monotonic() - sent) * 1000)
                if kind == "status":
                    status = json.loads(body)
                    leaders_seen[node_id].add(int(status["leader_id"]))
                    terms_seen[node_id].add(int(status["term"]))
            except (aiohttp.ClientError, TimeoutError) as error:
                failures[f"{node_id}/{kind} {type(error).__name__}"] += 1

        # Ready: the parent starts the load only now, so the first samples are not lost.
        connection.send("ready")
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        tick = 0
        next_rss_s = 0.0
        while (elapsed_s := time.monotonic() - started) < seconds:
            for node_id in urls:
                for kind in ("healthz", "status"):
                    task = asyncio.create_task(probe(node_id, kind))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if elapsed_s >= next_rss_s:
                for node_id, pid in pids.items():
                    rss_kib = process_memory_kib(pid).get("VmRSS")
                    if rss_kib is not None:
                        rss_samples.append((elapsed_s, node_id, rss_kib))
                next_rss_s += RSS_INTERVAL_S
            tick += 1
            # Probes run on a fixed schedule; a slow answer does not delay the next probe.
            tick_at = started + tick * PROBE_INTERVAL_S
            await asyncio.sleep(max(0.0, tick_at - time.monotonic()))
            # How late this process woke: the part of every probe latency that is this
            # process waiting for a core, not the node answering late.
            own_lags_ms.append(max(0.0, time.monotonic() - tick_at) * 1000)
        if tasks:
            await asyncio.wait(tasks, timeout=PROBE_TIMEOUT_S + 1)
    return {
        "latencies_ms": latencies_ms,
        "failures": dict(failures),
        "leaders_seen": {n: sorted(ids) for n, ids in leaders_seen.items()},
        "terms_seen": {n: sorted(terms) for n, terms in terms_seen.items()},
        "rss_samples": rss_samples,
        "own_lag": _latency_summary(own_lags_ms),
        "seconds": seconds,
    }


def _save_metrics(urls: dict[int, str], logs_directory: Path, value_bytes: int) -> None:
    """Each node's /metrics after the phase, next to its log (for looking into a run)."""
    logs_directory.mkdir(parents=True, exist_ok=True)
    for node_id, url in urls.items():
        text = _get_text(f"{url}/metrics", timeout_s=10.0)
        if text is not None:
            (logs_directory / f"{value_bytes}-node{node_id}.metrics").write_text(text)


def _rss_summary(probes: dict[str, Any], node_id: int) -> dict[str, float | None]:
    samples = [(t, kib) for t, n, kib in probes["rss_samples"] if n == node_id]
    quarter_s = probes["seconds"] / 4

    def peak_mib(values: list[int]) -> float | None:
        return round(max(values) / 1024, 1) if values else None

    return {
        "first_quarter_peak_mib": peak_mib([kib for t, kib in samples if t < quarter_s]),
        "last_quarter_peak_mib": peak_mib([kib for t, kib in samples if t >= 3 * quarter_s]),
        "phase_peak_mib": peak_mib([kib for _, kib in samples]),
        "phase_last_mib": peak_mib([samples[-1][1]]) if samples else None,
    }


# --- one value size -------------------------------------------------------------------------


def _run_size(value_bytes: int, quick: bool, logs_directory: Path | None) -> dict[str, Any]:
    keys = KEYS_BY_SIZE.get(value_bytes, KEYS_DEFAULT)
    value = b"v" * value_bytes
    capacity_s = CAPACITY_QUICK_S if quick else CAPACITY_S
    overload_s = OVERLOAD_QUICK_S if quick else OVERLOAD_S
    print(f"\n{value_bytes:,}-byte values, {keys:,} keys: starting 3 nodes", flush=True)
    with tempfile.TemporaryDirectory(prefix="kvraft-bench-overload-") as directory:
        root = Path(directory)
        config = _cluster_config(root)
        config_path = root / "cluster.toml"
        config_path.write_text(render_config(config))
        urls = {spec.id: spec.http_url for spec in config.nodes}
        processes: dict[int, subprocess.Popen[bytes]] = {}
        probe_process: multiprocessing.process.BaseProcess | None = None
        try:
            for spec in config.nodes:
                log_path = root / f"node{spec.id}.log"
                processes[spec.id] = launcher.start(
                    launcher.serve_command(spec.id, config_path), log_path
                )
            for spec in config.nodes:
                launcher.wait_ready(
                    processes[spec.id],
                    root / f"node{spec.id}.log",
                    functools.partial(_answers, urls[spec.id]),
                    what=f"node {spec.id} answering",
                    timeout_s=STARTUP_TIMEOUT_S,
                )
            leader_id = _wait_for_leader(urls)
            followers = [node_id for node_id in urls if node_id != leader_id]
            print(
                f"  leader {leader_id}; capacity: {CAPACITY_WRITERS} writers, {capacity_s:g} s",
                flush=True,
            )
            capacity = asyncio.run(_capacity(urls[leader_id], value, keys, capacity_s))
            rate_per_s = OVERLOAD_FACTOR * capacity["puts_per_s"]
            print(
                f"  capacity {capacity['puts_per_s']:,.1f} puts/s; offering {rate_per_s:,.1f}/s "
                f"for {overload_s:g} s",
                flush=True,
            )
            pids = {node_id: process.pid for node_id, process in processes.items()}
            rss_before_mib = {
                node_id: round(process_memory_kib(pid).get("VmRSS", 0) / 1024, 1)
                for node_id, pid in pids.items()
            }
            before = _cluster_state(urls)

            context = multiprocessing.get_context("spawn")
            receiver, sender = context.Pipe(duplex=False)
            probe_process = context.Process(
                target=_probe_process, args=(urls, pids, overload_s, sender), daemon=True
            )
            probe_process.start()
            sender.close()
            if not receiver.poll(PROBE_START_TIMEOUT_S) or receiver.recv() != "ready":
                raise RuntimeError("the probe process did not start")
            generator = _OpenLoop(
                [urls[leader_id], *(urls[node_id] for node_id in followers)],
                value,
                keys,
                rate_per_s,
            )
            phase_s = asyncio.run(generator.run(overload_s))
            if not receiver.poll(PROBE_TIMEOUT_S + 30):
                raise RuntimeError("the probe process sent no samples")
            probes: dict[str, Any] = receiver.recv()
            probe_process.join(10)
            after = _cluster_state(urls)
            if logs_directory is not None:
                _save_metrics(urls, logs_directory, value_bytes)
            exited = {node_id: p.poll() for node_id, p in processes.items() if p.poll() is not None}
            high_water_mib = {
                node_id: round(process_memory_kib(pid).get("VmHWM", 0) / 1024, 1)
                for node_id, pid in pids.items()
            }
        finally:
            if probe_process is not None and probe_process.is_alive():
                probe_process.terminate()  # the process this function started
                probe_process.join(10)
            stopped = launcher.stop(processes, timeout_s=STOP_TIMEOUT_S)
            if logs_directory is not None:
                logs_directory.mkdir(parents=True, exist_ok=True)
                for node_id in processes:
                    log_path = root / f"node{node_id}.log"
                    if log_path.exists():
                        shutil.copy(log_path, logs_directory / f"{value_bytes}-node{node_id}.log")
    roles = {leader_id: "leader", **{node_id: "follower" for node_id in followers}}
    return _summarise(
        value_bytes=value_bytes,
        keys=keys,
        capacity=capacity,
        rate_per_s=rate_per_s,
        phase_s=phase_s,
        generator=generator,
        probes=probes,
        roles=roles,
        before=before,
        after=after,
        rss_before_mib=rss_before_mib,
        high_water_mib=high_water_mib,
        exited=exited,
        stopped={node_id: s.code for node_id, s in stopped.items()},
    )


def _summarise(
    *,
    value_bytes: int,
    keys: int,
    capacity: dict[str, Any],
    rate_per_s: float,
    phase_s: float,
    generator: _OpenLoop,
    probes: dict[str, Any],
    roles: dict[int, str],
    before: dict[int, dict[str, Any]],
    after: dict[int, dict[str, Any]],
    rss_before_mib: dict[int, float],
    high_water_mib: dict[int, float],
    exited: dict[int, int | None],
    stopped: dict[int, int],
) -> dict[str, Any]:
    answered = sum(generator.answers.values())
    unexpected = {
        outcome: count
        for outcome, count in generator.answers.items()
        if not outcome.startswith("error") and int(outcome) not in EXPECTED_STATUSES
    }
    errors = {o: c for o, c in generator.answers.items() if o.startswith("error")}

    def share(outcome: str) -> float:
        return round(100 * generator.answers.get(outcome, 0) / answered, 1) if answered else 0.0

    leader_changes = {
        node_id: (
            after[node_id]["leader_changes"] - before[node_id]["leader_changes"]
            if after[node_id]["leader_changes"] is not None
            and before[node_id]["leader_changes"] is not None
            else None
        )
        for node_id in roles
    }
    nodes = {}
    for node_id, role in roles.items():
        node_probes = {
            kind: {
                **_latency_summary(probes["latencies_ms"][f"{node_id}/{kind}"]),
                "answered": len(probes["latencies_ms"][f"{node_id}/{kind}"]),
                "failed": sum(
                    count
                    for name, count in probes["failures"].items()
                    if name.startswith(f"{node_id}/{kind} ")
                ),
            }
            for kind in ("healthz", "status")
        }
        nodes[node_id] = {
            "role": role,
            "probes": node_probes,
            "rss_before_phase_mib": rss_before_mib[node_id],
            **_rss_summary(probes, node_id),
            "vm_hwm_mib": high_water_mib[node_id],
            "leader_changes": leader_changes[node_id],
            "leaders_seen": probes["leaders_seen"][node_id],
            "terms_seen": probes["terms_seen"][node_id],
            "write_bytes_pending_after": after[node_id]["write_bytes_pending"],
            "writes_shed": (
                after[node_id]["writes_shed"] - before[node_id]["writes_shed"]
                if after[node_id]["writes_shed"] is not None
                and before[node_id]["writes_shed"] is not None
                else None
            ),
            "answers": dict(generator.answers_by_target[_target_index(roles, node_id)]),
            "exit_code_during_run": exited.get(node_id),
            "exit_code_at_stop": stopped.get(node_id),
        }
    return {
        "value_bytes": value_bytes,
        "keys": keys,
        "capacity": capacity,
        "offered_target_per_s": round(rate_per_s, 1),
        "phase_s": round(phase_s, 1),
        "due": generator.due,
        "sent": generator.sent,
        "offered_per_s": round(generator.sent / phase_s, 1),
        "not_sent_client_limit": generator.not_sent_client_limit,
        "not_sent_client_behind": generator.not_sent_client_behind,
        "in_flight_peak": generator.in_flight_peak,
        "start_lag": _latency_summary(generator.start_lags_ms),
        "answered": answered,
        "answers": dict(generator.answers),
        "acked": generator.answers.get("200", 0),
        "acked_per_s": round(generator.acked_in_phase / phase_s, 1),
        "acked_latency": _latency_summary(generator.acked_latencies_ms),
        "shed_503_percent": share("503"),
        "timeout_504_percent": share("504"),
        "unexpected_statuses": unexpected,
        "client_errors": errors,
        "term_before": max((state["term"] or 0 for state in before.values()), default=None),
        "term_after": max((state["term"] or 0 for state in after.values()), default=None),
        "leader_changes": max((c for c in leader_changes.values() if c is not None), default=None),
        "probe_process_lag": probes["own_lag"],
        "nodes": nodes,
    }


def _target_index(roles: dict[int, str], node_id: int) -> int:
    """The generator's target index of `node_id`: 0 the leader, then the followers in order."""
    ordered = [n for n, role in roles.items() if role == "leader"] + [
        n for n, role in roles.items() if role != "leader"
    ]
    return ordered.index(node_id)


# --- output ---------------------------------------------------------------------------------


def _size_label(value_bytes: int) -> str:
    if value_bytes >= MIB and value_bytes % MIB == 0:
        return f"{value_bytes // MIB} MiB"
    if value_bytes >= KIB and value_bytes % KIB == 0:
        return f"{value_bytes // KIB} KiB"
    return f"{value_bytes} B"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print(results: list[dict[str, Any]], overload_s: float) -> None:
    print_table(
        f"overload: load (capacity: {CAPACITY_WRITERS} closed-loop writers to the leader; "
        f"then {OVERLOAD_FACTOR:g}x offered open-loop for {overload_s:g} s, half to the leader)",
        [
            "value",
            "keys",
            "capacity puts/s",
            "target offered/s",
            "offered/s",
            "not sent: client limit",
            "not sent: client behind",
            "start lag p99 ms",
            "in flight peak",
        ],
        [
            [
                _size_label(r["value_bytes"]),
                f"{r['keys']:,}",
                f"{r['capacity']['puts_per_s']:,.1f}",
                f"{r['offered_target_per_s']:,.1f}",
                f"{r['offered_per_s']:,.1f}",
                f"{r['not_sent_client_limit']:,}",
                f"{r['not_sent_client_behind']:,}",
                _ms(r["start_lag"]["p99_ms"]),
                f"{r['in_flight_peak']:,}",
            ]
            for r in results
        ],
    )
    print_table(
        "overload: answers during the overload phase",
        [
            "value",
            "sent",
            "acked puts/s",
            "acked p50 ms",
            "acked p99 ms",
            "503 shed %",
            "504 %",
            "other statuses",
            "client errors",
            "kvraft_leader_changes_total",
            "term before -> after",
        ],
        [
            [
                _size_label(r["value_bytes"]),
                f"{r['sent']:,}",
                f"{r['acked_per_s']:,.1f}",
                _ms(r["acked_latency"]["p50_ms"]),
                _ms(r["acked_latency"]["p99_ms"]),
                f"{r['shed_503_percent']:.1f}",
                f"{r['timeout_504_percent']:.1f}",
                _counts(r["unexpected_statuses"]),
                _counts(r["client_errors"]),
                r["leader_changes"],
                f"{r['term_before']} -> {r['term_after']}",
            ]
            for r in results
        ],
    )
    print_table(
        f"overload: /healthz and /v1/status every {PROBE_INTERVAL_S * 1000:g} ms on every node "
        "(ms; a separate process)",
        [
            "value",
            "node",
            "healthz p50",
            "healthz p99",
            "healthz max",
            "status p50",
            "status p99",
            "status max",
            "probes failed",
            "leaders seen",
        ],
        [
            [
                _size_label(r["value_bytes"]),
                f"{node_id} {node['role']}",
                _ms(node["probes"]["healthz"]["p50_ms"]),
                _ms(node["probes"]["healthz"]["p99_ms"]),
                _ms(node["probes"]["healthz"]["max_ms"]),
                _ms(node["probes"]["status"]["p50_ms"]),
                _ms(node["probes"]["status"]["p99_ms"]),
                _ms(node["probes"]["status"]["max_ms"]),
                node["probes"]["healthz"]["failed"] + node["probes"]["status"]["failed"],
                ",".join(str(n) for n in node["leaders_seen"]),
            ]
            for r in results
            for node_id, node in r["nodes"].items()
        ]
        + [
            [
                _size_label(r["value_bytes"]),
                "probe process's own wake-up lag",
                "-",
                "-",
                "-",
                _ms(r["probe_process_lag"]["p50_ms"]),
                _ms(r["probe_process_lag"]["p99_ms"]),
                _ms(r["probe_process_lag"]["max_ms"]),
                "-",
                "-",
            ]
            for r in results
        ],
    )
    print_table(
        "overload: RSS of each node (MiB; sampled every second during the overload phase)",
        [
            "value",
            "node",
            "before phase",
            "peak 1st quarter",
            "peak last quarter",
            "peak in phase",
            "VmHWM",
            "writes shed",
            "pending bytes after",
        ],
        [
            [
                _size_label(r["value_bytes"]),
                f"{node_id} {node['role']}",
                _ms(node["rss_before_phase_mib"]),
                _ms(node["first_quarter_peak_mib"]),
                _ms(node["last_quarter_peak_mib"]),
                _ms(node["phase_peak_mib"]),
                _ms(node["vm_hwm_mib"]),
                "-" if node["writes_shed"] is None else f"{node['writes_shed']:,}",
                "-"
                if node["write_bytes_pending_after"] is None
                else f"{node['write_bytes_pending_after']:,}",
            ]
            for r in results
            for node_id, node in r["nodes"].items()
        ],
    )
    for r in results:
        label = _size_label(r["value_bytes"])
        if r["unexpected_statuses"]:
            print(f"\n!!! {label}: answers other than 200/503/504: {r['unexpected_statuses']}")
        for node_id, node in r["nodes"].items():
            if node["exit_code_during_run"] is not None:
                print(f"\n!!! {label}: node {node_id} exited with {node['exit_code_during_run']}")
        if r["offered_per_s"] < 0.95 * r["offered_target_per_s"]:
            print(
                f"\nnote: {label}: this client offered {r['offered_per_s']:,.0f}/s of the "
                f"{r['offered_target_per_s']:,.0f}/s asked ({r['not_sent_client_behind']:,} "
                f"requests too late to send, {r['not_sent_client_limit']:,} over the "
                f"{IN_FLIGHT_MAX:,} in flight): the load generator, not the cluster, set the pace",
                flush=True,
            )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count:,}" for name, count in sorted(counts.items())) or "0"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"{OVERLOAD_QUICK_S:g}-second overload phases"
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in VALUE_SIZES_BYTES),
        help="value sizes in bytes, comma-separated",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--logs",
        type=Path,
        default=None,
        metavar="DIRECTORY",
        help="keep each node's log and final /metrics here (the temp dirs are removed)",
    )
    arguments = parser.parse_args(argv)
    sizes = [int(size) for size in arguments.sizes.split(",") if size.strip()]
    overload_s = OVERLOAD_QUICK_S if arguments.quick else OVERLOAD_S
    machine = machine_info()
    print(
        f"overload: {NODES} nodes, fsync on, {machine['nproc']} CPUs shared by the nodes, the "
        f"load generator and the probes",
        flush=True,
    )
    started = time.monotonic()
    results = [_run_size(size, arguments.quick, arguments.logs) for size in sizes]
    _print(results, overload_s)
    print(f"\noverload: {time.monotonic() - started:.0f} s in all", flush=True)
    if arguments.json is not None:
        write_json(arguments.json, {"machine": machine, "quick": arguments.quick, "sizes": results})


if __name__ == "__main__":
    main()
