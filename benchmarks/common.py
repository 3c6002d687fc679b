"""Helpers shared by the benchmarks: machine facts, tables, process memory, JSON.

Benchmarks print numbers and never assert timings; these helpers only describe and format.
Tables are printed as Markdown so that a run's output can be pasted into BENCHMARKS.md as is.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIRECTORY",
    "fdatasync_latency_us",
    "format_table",
    "machine_info",
    "nearest_rank_percentile",
    "print_table",
    "process_cpu_seconds",
    "process_memory_kib",
    "write_json",
]

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
"""Where `benchmarks.run` writes ``latest.json`` (git-ignored)."""

_MEMINFO_PATH = Path("/proc/meminfo")
_CPUINFO_PATH = Path("/proc/cpuinfo")
_STATUS_FIELD = re.compile(r"^(Vm\w+):\s+(\d+) kB$", re.MULTILINE)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, memory, Python, OS, CPU model."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": None,
        "memory_total_mib": None,
    }
    try:
        for line in _CPUINFO_PATH.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in _MEMINFO_PATH.read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_total_mib"] = int(line.split()[1]) // 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        # The commit the numbers belong to (the working tree may hold uncommitted changes).
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
        info["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


FDATASYNC_PROBE_SYNCS = 1_000
FDATASYNC_PROBE_RECORD_BYTES = 300
"""The raw fdatasync probe: this many appends of this many bytes, each followed by an
fdatasync (about what one small put costs a WAL)."""


def nearest_rank_percentile(sorted_values: Sequence[float], percent: float) -> float:
    """The smallest value with at least `percent` % of `sorted_values` at or below it
    (0 for no values)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * percent // 100))  # ceil, at least the first
    return float(sorted_values[int(rank) - 1])


def fdatasync_latency_us(
    directory: Path,
    syncs: int = FDATASYNC_PROBE_SYNCS,
    record_bytes: int = FDATASYNC_PROBE_RECORD_BYTES,
) -> dict[str, float]:
    """The disk's own durable-write latency under `directory`: `syncs` appends of
    `record_bytes` bytes to a temporary file there, each followed by os.fdatasync, timed one
    by one. p50, p99, mean and max in microseconds, with the counts; the file is removed."""
    record = b"x" * record_bytes
    latencies: list[float] = []
    descriptor, name = tempfile.mkstemp(prefix="fdatasync-probe-", dir=directory)
    try:
        for _ in range(syncs):
            started = time.perf_counter()
            os.write(descriptor, record)
            os.fdatasync(descriptor)
            latencies.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(descriptor)
        os.unlink(name)
    latencies.sort()
    return {
        "syncs": syncs,
        "record_bytes": record_bytes,
        "p50": nearest_rank_percentile(latencies, 50),
        "p99": nearest_rank_percentile(latencies, 99),
        "mean": sum(latencies) / len(latencies) if latencies else 0.0,
        "max": latencies[-1] if latencies else 0.0,
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: the first column (what the row is) left-aligned, the others (the
    quantities) right-aligned."""
    cells = [[str(header) for header in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: list[str], body: bool) -> str:
        padded = [
            cell.ljust(width) if column == 0 or not body else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1), *("-" * (w + 1) + ":" for w in widths[1:])])
    return "\n".join([line(cells[0], False), rule + "|", *(line(row, True) for row in cells[1:])])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n### {title}\n", flush=True)
    print(format_table(headers, rows), flush=True)


def process_memory_kib(pid: int) -> dict[str, int]:
    """The Vm* fields of /proc/<pid>/status in KiB (VmRSS: resident now, VmHWM: its peak);
    empty if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {name: int(value) for name, value in _STATUS_FIELD.findall(text)}


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (/proc/<pid>/stat), or None if it
    is gone. Unlike wall time, this hardly depends on what else runs on the machine."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces, so split after its ')'): the
    # state is field 3 of the file, utime field 14, stime field 15.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_json(path: Path, data: object) -> None:
    """Write `data` as indented JSON, atomically (a temp file renamed over `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)
