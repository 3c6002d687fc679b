"""Run every benchmark (``make bench``), print their tables and save the numbers as JSON.

Run as ``python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--results PATH]``. Each
benchmark runs in its own interpreter, one after the other (so one's memory and threads do
not disturb the next), with its output shown as it comes. The results of this run, the
machine and each benchmark's full output go to ``benchmarks/results/latest.json``
(git-ignored). Benchmarks print numbers; nothing here judges them. The exit code is 1 if a
benchmark itself failed (crashed, or the node under test never served).

- ``sim``: `benchmarks.bench_sim`, the simulator's ticks, messages and client ops per second.
- ``storage``: `benchmarks.bench_storage`, fdatasync rate, WAL appends, WAL recovery.
- ``recovery``: `benchmarks.bench_recovery`, a real node restarting from 1,000,000 log
  entries or a 1,000,000-key snapshot.
- ``linearizability``: `benchmarks.bench_linearizability`, the checker's speed.
- ``watch``: `benchmarks.bench_watch`, put throughput with and without 1,000 watchers on one
  node, and how long a change takes to reach them.
- ``leases``: `benchmarks.bench_leases`, a 3-node cluster's leader keeping 10,000 leases
  alive as fast as client processes can ask (keepalives/s, latency, none may expire), the
  memory of 10,000 leases with and without a key attached, grants per second (about 1.5
  minutes).
- ``overload``: `benchmarks.bench_overload`, a 3-node cluster (fsync on) offered 4x the
  writes it commits for a minute with 100 B, 64 KiB and 1 MiB values: throughput, latency,
  share shed, /healthz and /v1/status latency, RSS of each node, leader changes (about 5
  minutes).
- ``vs_etcd``: `benchmarks.bench_vs_etcd`, kvraft against a local etcd cluster (3 and 5
  nodes): throughput and latency under wrk in four shapes of load (100-byte values on 1,000
  keys; 1 KiB values; 100,000 keys; 50/50 random puts and gets), failover time, elections
  under load, memory, the disk's raw fdatasync latency (about 36 minutes, 10 of them two
  5-minute soaks; installs ``wrk`` and ``etcd-server`` with apt-get if missing). Its tables
  also go to ``benchmarks/results/vs_etcd.md``.
- ``tls``: `benchmarks.bench_tls`, what TLS costs: puts on two 3-node clusters at 1 and 64
  connections under wrk, one plain, one with HTTPS and peer mutual TLS, in alternating turns
  (about 2 minutes; installs ``wrk`` if missing).

``--quick`` (a few minutes) runs fewer seeds, shorter storage loops, 100,000 entries instead
of 1,000,000, and short rows with one kill against etcd; its numbers are for smoke-testing,
not for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import RESULTS_DIRECTORY, machine_info, print_table, write_json

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_TIMEOUT_S",
    "STORAGE_QUICK_SETTINGS",
    "Benchmark",
    "main",
    "parse_linearizability_output",
    "parse_storage_output",
]

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
"""Where the benchmarks run from (``-m benchmarks.<name>`` needs it on the path)."""

BENCHMARK_TIMEOUT_S = 30 * 60
"""A benchmark still running after this long is stopped and reported as failed: a hang must
not block ``make bench`` forever (most take a few minutes; `Benchmark.timeout_s` gives the
longer ones more)."""

STOP_GRACE_S = 30.0
"""How long a stopped benchmark may take to clean up (its node, its temp dirs) before it is
killed."""

STORAGE_QUICK_SETTINGS: dict[str, object] = {
    "FSYNC_PROBE_SECONDS": 0.5,
    "APPEND_RUN_SECONDS": 0.3,
    "APPEND_CONFIGURATIONS": [(1, 1), (1, 16), (100, 16), (1000, 4)],
    "RECOVERY_ENTRIES": 100_000,
}
"""`benchmarks.bench_storage` module constants overridden by --quick (the file itself is
left as written; its functions read these at call time)."""


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One benchmark run.py knows.

    Fields:
        name: what --only takes.
        module: the module run with ``python -m``.
        writes_json: it takes ``--json PATH`` and writes its results there; otherwise its
            printed output is parsed by `parse`.
        takes_quick: it takes ``--quick`` itself.
        parse: turns the printed output into numbers (for those without --json).
        timeout_s: how long it may run before it is stopped as hung.
    """

    name: str
    module: str
    writes_json: bool
    takes_quick: bool
    parse: Callable[[str], dict[str, Any]] | None = None
    timeout_s: float = BENCHMARK_TIMEOUT_S


_FDATASYNC = re.compile(r"raw fdatasync: ([\d,]+) syncs/s \(([\d,]+) us each\)")
_APPEND = re.compile(
    r"append\s+(\d+) entries/save,\s+(\d+) in flight:\s+([\d,]+) entries/s\s+([\d.]+) MB/s\s+"
    r"([\d,]+) saves/s\s+([\d.]+) saves/fdatasync"
)
_GENERATED = re.compile(r"generated a WAL of ([\d,]+) entries \(([\d,]+) MB\) in ([\d.]+) s")
_RECOVERED = re.compile(r"recovery: ([\d,]+) entries in ([\d.]+) s \(([\d,]+) entries/s")
_CHECKED = re.compile(
    r"^(.+?)\s+(\d+) ops\s+verdict=(\w+)\s+([\d.]+) s\s+([\d,]+) ops/s\s+witness=(\d+) ops$"
)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_storage_output(output: str) -> dict[str, Any]:
    """The numbers `benchmarks.bench_storage` printed (lines it did not print are absent)."""
    parsed: dict[str, Any] = {"appends": []}
    if match := _FDATASYNC.search(output):
        parsed["fdatasync_per_s"] = _number(match.group(1))
        parsed["fdatasync_us"] = _number(match.group(2))
    for match in _APPEND.finditer(output):
        parsed["appends"].append(
            {
                "entries_per_save": int(match.group(1)),
                "saves_in_flight": int(match.group(2)),
                "entries_per_s": _number(match.group(3)),
                "mb_per_s": _number(match.group(4)),
                "saves_per_s": _number(match.group(5)),
                "saves_per_fdatasync": _number(match.group(6)),
            }
        )
    if match := _GENERATED.search(output):
        parsed["recovery_wal_entries"] = int(_number(match.group(1)))
        parsed["recovery_wal_mb"] = _number(match.group(2))
    if match := _RECOVERED.search(output):
        parsed["recovery_entries"] = int(_number(match.group(1)))
        parsed["recovery_s"] = _number(match.group(2))
        parsed["recovery_entries_per_s"] = _number(match.group(3))
    return parsed


def parse_linearizability_output(output: str) -> dict[str, Any]:
    """The rows `benchmarks.bench_linearizability` printed."""
    rows = []
    for line in output.splitlines():
        if match := _CHECKED.match(line.strip()):
            rows.append(
                {
                    "history": match.group(1).strip(),
                    "operations": int(match.group(2)),
                    "verdict": match.group(3),
                    "elapsed_s": _number(match.group(4)),
                    "ops_per_s": _number(match.group(5)),
                    "witness_ops": int(match.group(6)),
                }
            )
    return {"rows": rows}


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("sim", "benchmarks.bench_sim", writes_json=True, takes_quick=True),
        Benchmark(
            "storage",
            "benchmarks.bench_storage",
            writes_json=False,
            takes_quick=False,
            parse=parse_storage_output,
        ),
        Benchmark("recovery", "benchmarks.bench_recovery", writes_json=True, takes_quick=True),
        Benchmark(
            "linearizability",
            "benchmarks.bench_linearizability",
            writes_json=False,
            takes_quick=False,
            parse=parse_linearizability_output,
        ),
        Benchmark("watch", "benchmarks.bench_watch", writes_json=True, takes_quick=True),
        Benchmark("leases", "benchmarks.bench_leases", writes_json=True, takes_quick=True),
        Benchmark("overload", "benchmarks.bench_overload", writes_json=True, takes_quick=True),
        Benchmark(
            "vs_etcd",
            "benchmarks.bench_vs_etcd",
            writes_json=True,
            takes_quick=True,
            # About 36 minutes in full (13 throughput rows per cluster size, two soaks).
            timeout_s=75 * 60,
        ),
        Benchmark("tls", "benchmarks.bench_tls", writes_json=True, takes_quick=True),
    )
}
"""Every benchmark, in the order they run."""


def _storage_quick_code() -> str:
    """A program that runs bench_storage's main() with `STORAGE_QUICK_SETTINGS`, refusing to
    run if a setting no longer exists (a silently ignored override would be a full run)."""
    return (
        "import benchmarks.bench_storage as bench\n"
        f"for name, value in {STORAGE_QUICK_SETTINGS!r}.items():\n"
        "    if not hasattr(bench, name):\n"
        "        raise SystemExit(f'benchmarks.bench_storage has no {name} to override')\n"
        "    setattr(bench, name, value)\n"
        "bench.main([])\n"
    )


def _command(benchmark: Benchmark, quick: bool, json_path: Path) -> list[str]:
    if benchmark.name == "storage" and quick:
        return [sys.executable, "-c", _storage_quick_code()]
    command = [sys.executable, "-m", benchmark.module]
    if quick and benchmark.takes_quick:
        command.append("--quick")
    if benchmark.writes_json:
        command += ["--json", str(json_path)]
    return command


def _wait_or_kill(process: subprocess.Popen[str]) -> None:
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _run_one(benchmark: Benchmark, quick: bool) -> dict[str, Any]:
    """Run one benchmark, echoing its output; its record for latest.json."""
    print(f"\n## {benchmark.name}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="kvraft-bench-run-") as temporary:
        json_path = Path(temporary) / f"{benchmark.name}.json"
        command = _command(benchmark, quick, json_path)
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        lines: list[str] = []
        record: dict[str, Any] = {
            "command": command,
            "load_average_1m_before": os.getloadavg()[0],
        }
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        timed_out = threading.Event()

        def stop_when_late() -> None:
            timed_out.set()
            # SIGINT, as Ctrl-C would: the benchmarks clean up (stop the node, delete temp
            # dirs) on KeyboardInterrupt.
            process.send_signal(signal.SIGINT)
            _wait_or_kill(process)

        watchdog = threading.Timer(benchmark.timeout_s, stop_when_late)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line)
            process.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the benchmark too (same process group): let it clean up.
            _wait_or_kill(process)
            raise
        except BaseException:
            # We are being stopped (SIGTERM): stop the benchmark the way it cleans up after.
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            _wait_or_kill(process)
            raise
        finally:
            watchdog.cancel()
        output = "".join(lines)
        record["elapsed_s"] = time.perf_counter() - started
        record["returncode"] = process.returncode
        record["ok"] = process.returncode == 0 and not timed_out.is_set()
        if timed_out.is_set():
            record["error"] = f"stopped after {benchmark.timeout_s:.0f} s"
        record["output"] = output
        if benchmark.writes_json and json_path.exists():
            record["results"] = json.loads(json_path.read_text())
        elif benchmark.parse is not None:
            record["results"] = benchmark.parse(output)
        return record


def _print_storage(results: dict[str, Any]) -> None:
    appends = results.get("appends", [])
    if appends:
        print_table(
            "WAL appends of 100-byte entries, fsync on (group commit when saves are in flight)",
            ["entries/save", "saves in flight", "entries/s", "MB/s", "saves/s", "saves/fdatasync"],
            [
                [
                    row["entries_per_save"],
                    row["saves_in_flight"],
                    f"{row['entries_per_s']:,.0f}",
                    f"{row['mb_per_s']:.2f}",
                    f"{row['saves_per_s']:,.0f}",
                    f"{row['saves_per_fdatasync']:.1f}",
                ]
                for row in appends
            ],
        )
    if "recovery_s" in results:
        print_table(
            "WAL recovery (StorageEngine.open, 100-byte entries)",
            ["entries", "WAL MB", "seconds", "entries/s"],
            [
                [
                    f"{results['recovery_entries']:,}",
                    f"{results.get('recovery_wal_mb', 0):,.0f}",
                    f"{results['recovery_s']:.2f}",
                    f"{results['recovery_entries_per_s']:,.0f}",
                ]
            ],
        )


def _print_recovery(results: dict[str, Any]) -> None:
    """The restart rows again, with the issue's targets, after the benchmark's own tables."""
    rows = results.get("rows", [])
    if not rows:
        return
    print_table(
        "Restart (bench_recovery): seconds from spawn until linearizable reads are served",
        ["case", "keys", "log entries", "serving s", "node CPU s", "RSS MiB", "peak RSS MiB"],
        [
            [
                row["case"],
                f"{row['keys']:,}",
                f"{row['log_entries']:,}",
                f"{row['serving_s']:.2f}",
                f"{row['node_cpu_s'] or 0:.2f}",
                f"{row['rss_mib']:,.0f}",
                f"{row['rss_peak_mib']:,.0f}",
            ]
            for row in rows
        ],
    )
    from benchmarks.bench_recovery import print_targets

    print_targets(rows, results.get("entries", 0))


def _print_linearizability(results: dict[str, Any]) -> None:
    rows = results.get("rows", [])
    if rows:
        print_table(
            "Linearizability checker",
            ["history", "ops", "verdict", "seconds", "ops/s", "witness ops"],
            [
                [
                    row["history"],
                    f"{row['operations']:,}",
                    row["verdict"],
                    f"{row['elapsed_s']:.3f}",
                    f"{row['ops_per_s']:,.0f}",
                    row["witness_ops"],
                ]
                for row in rows
            ],
        )


def _select(only: list[str]) -> list[Benchmark]:
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    if not names:
        return list(BENCHMARKS.values())
    return [benchmark for name, benchmark in BENCHMARKS.items() if name in names]


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="about a minute, smaller runs")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIRECTORY / "latest.json",
        help="where to write the JSON results",
    )
    arguments = parser.parse_args(argv)
    selected = _select(arguments.only)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    machine = machine_info()
    print(
        f"kvraft benchmarks ({'quick' if arguments.quick else 'full'}): "
        f"{', '.join(b.name for b in selected)}\n"
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_total_mib']:,} MiB, Python {machine['python']}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    report: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if arguments.quick else "full",
        "machine": machine,
        "benchmarks": {},
    }
    started = time.perf_counter()
    try:
        for benchmark in selected:
            record = _run_one(benchmark, arguments.quick)
            report["benchmarks"][benchmark.name] = record
            if benchmark.name == "storage":
                _print_storage(record.get("results", {}))
            elif benchmark.name == "linearizability":
                _print_linearizability(record.get("results", {}))
            elif benchmark.name == "recovery":
                _print_recovery(record.get("results", {}))
    except KeyboardInterrupt:
        report["interrupted"] = True
        print("\ninterrupted; writing what was measured", flush=True)
    except SystemExit:
        report["interrupted"] = True
        raise
    finally:
        report["elapsed_s"] = time.perf_counter() - started
        storage = report["benchmarks"].get("storage", {}).get("results", {})
        if "fdatasync_per_s" in storage:
            machine["fdatasync_per_s"] = storage["fdatasync_per_s"]
        write_json(arguments.results, report)
    records = report["benchmarks"]
    print_table(
        "Summary",
        ["benchmark", "status", "wall s"],
        [
            [
                name,
                "ok" if record["ok"] else f"FAILED ({record['returncode']})",
                f"{record['elapsed_s']:.1f}",
            ]
            for name, record in records.items()
        ],
    )
    print(f"\nresults: {arguments.results} (total {report['elapsed_s']:.0f} s)", flush=True)
    if report.get("interrupted") or not all(record["ok"] for record in records.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
