"""Watch under load: put throughput with and without 1,000 watchers, and how long a change
takes to reach them.

Run as ``python -m benchmarks.bench_watch [--quick] [--json PATH]``. One real node (a
one-voter cluster, fsync on, started by `kvraft.launcher`) on 127.0.0.1:

1. puts, 16 concurrent writers, for a few seconds: the baseline;
2. 1,000 watchers open ``GET /v1/watch?prefix=bench/`` on the node (one asyncio client,
   every stream read line by line);
3. the same puts again, with every watcher receiving every change;
4. paced puts (20 a second, one at a time): for every (watcher, change) the time from the
   put being sent to the change arriving at the watcher, p50/p99/max.

Prints numbers; asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import print_table, process_cpu_seconds, process_memory_kib, write_json
from kvraft import launcher
from kvraft.config import local_cluster_config, render_config

WATCHERS = 1_000
WRITERS = 16
THROUGHPUT_S = 5.0
PACED_PUTS = 100
PACED_INTERVAL_S = 0.05
STARTUP_TIMEOUT_S = 30.0


async def _put_loop(
    session: aiohttp.ClientSession, url: str, deadline: float, counter: list[int]
) -> None:
    number = 0
    while time.monotonic() < deadline:
        number += 1
        async with session.put(f"{url}/v1/kv/bench/w{id(counter)}-{number}", data=b"x" * 100) as r:
            if r.status == 200:
                counter[0] += 1


async def _throughput(session: aiohttp.ClientSession, url: str, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    counters = [[0] for _ in range(WRITERS)]
    started = time.monotonic()
    await asyncio.gather(*(_put_loop(session, url, deadline, c) for c in counters))
    return sum(c[0] for c in counters) / (time.monotonic() - started)


class _Watchers:
    def __init__(self) -> None:
        self.events = 0
        self.arrivals: dict[str, list[float]] = {}
        self.connected = 0

    async def watch(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(f"{url}/v1/watch?prefix=bench/&progress_s=0") as stream:
            self.connected += 1
            async for line in stream.content:
                event = json.loads(line)
                self.events += 1
                if event["key"].startswith("bench/paced-"):
                    value = base64.b64decode(event["value_b64"]).decode()
                    self.arrivals.setdefault(value, []).append(time.monotonic())


async def _run(url: str, watcher_count: int, seconds: float, paced: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        baseline = await _throughput(session, url, seconds)
        watchers = _Watchers()
        tasks = [asyncio.create_task(watchers.watch(session, url)) for _ in range(watcher_count)]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while watchers.connected < watcher_count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling, not synchronisation
        with_watchers = await _throughput(session, url, seconds)
        events_during = watchers.events
        sent: dict[str, float] = {}
        for number in range(paced):
            value = f"{number}"
            sent[value] = time.monotonic()
            async with session.put(f"{url}/v1/kv/bench/paced-{number}", data=value) as r:
                await r.read()
            await asyncio.sleep(PACED_INTERVAL_S)  # pacing the load, not synchronisation
        drain_deadline = time.monotonic() + 10
        while time.monotonic() < drain_deadline and any(
            len(watchers.arrivals.get(v, ())) < watcher_count for v in sent
        ):
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies_ms = sorted(
        (arrival - sent[value]) * 1000
        for value, arrivals in watchers.arrivals.items()
        for arrival in arrivals
    )
    delivered = len(latencies_ms)
    return {
        "watchers": watcher_count,
        "puts_per_s_without_watchers": round(baseline),
        "puts_per_s_with_watchers": round(with_watchers),
        "events_delivered_during_throughput": events_during,
        "paced_changes_delivered": delivered,
        "paced_changes_expected": paced * watcher_count,
        "latency_ms_p50": round(statistics.median(latencies_ms), 2) if delivered else None,
        "latency_ms_p99": round(latencies_ms[int(delivered * 0.99) - 1], 2) if delivered else None,
        "latency_ms_max": round(latencies_ms[-1], 2) if delivered else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 watchers, short rows")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    watcher_count = 100 if arguments.quick else WATCHERS
    seconds = 1.0 if arguments.quick else THROUGHPUT_S
    paced = 20 if arguments.quick else PACED_PUTS
    with tempfile.TemporaryDirectory(prefix="kvraft-bench-watch-") as directory:
        root = Path(directory)
        http_port, raft_port = launcher.free_ports(2)
        config = local_cluster_config(1, root, http_port_base=http_port, raft_port_base=raft_port)
        config_path = root / "cluster.toml"
        config_path.write_text(render_config(config))
        log_path = root / "node1.log"
        process = launcher.start(launcher.serve_command(1, config_path), log_path)
        url = f"http://127.0.0.1:{http_port}"
        try:
            launcher.wait_ready(
                process,
                log_path,
                lambda: _ready(url),
                what="the node",
                timeout_s=STARTUP_TIMEOUT_S,
            )
            cpu_before = process_cpu_seconds(process.pid) or 0.0
            results = asyncio.run(_run(url, watcher_count, seconds, paced))
            results["node_cpu_s"] = round((process_cpu_seconds(process.pid) or 0.0) - cpu_before, 1)
            results["node_rss_mib"] = round(
                process_memory_kib(process.pid).get("VmHWM", 0) / 1024, 1
            )
        finally:
            launcher.stop({1: process}, timeout_s=10)
    print_table(
        f"watch: one node, {watcher_count} watchers on one prefix",
        ["measure", "value"],
        [[name, value] for name, value in results.items()],
    )
    if arguments.json is not None:
        write_json(arguments.json, results)


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    main()
