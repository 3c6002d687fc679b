"""Measure how long a real node takes to restart from a large log or a large snapshot.

The issue's "done when": *a node with 1,000,000 log entries or a 1,000,000-key snapshot
restarts and is serving within a few seconds*. Run as ``python -m benchmarks.bench_recovery
[--quick] [--entries N] [--only empty|log|snapshot] [--profile] [--json PATH]``.

Every case runs the real daemon (``python -m kvraft serve --config FILE --id 1``) as a cluster
of one voter (`kvraft.config.local_cluster_config`, default settings, fsync on, free ports on
127.0.0.1) on a data directory generated beforehand, directly through `kvraft.storage` with
fsync off and then fsynced file by file (generation is not what is measured):

- ``empty``: a node that never ran: the fixed cost (interpreter, imports, first election).
- ``log``: a WAL of N entries, each a `kvraft.statemachine.encode_put` of a distinct key
  with a 100-byte value, and a hard state (term 1, voted for 1) whose commit index is N. At
  start the node replays the WAL and applies all N entries.
- ``snapshot``: a snapshot of a `KVStateMachine` holding N keys x 100-byte values (built by
  applying N puts), installed at index N, plus a short log of `SHORT_LOG_ENTRIES` puts that
  overwrite the first keys, committed. At start the node restores the snapshot, then applies
  the short log.

Restart table: the clock starts just before the process is spawned (interpreter start-up and
imports count). "http up" is the first ``GET /healthz`` answered, "ready" the first ``GET
/readyz`` answered 200 (a leader is known and the commit index is applied), "serving" the
moment linearizable ``GET /v1/kv/<key>`` reads have returned the expected value (a key only
the snapshot or the oldest entries wrote, and the key written last; ``empty``: a 404). The
node log's own timestamps (millisecond resolution) add when it logged what it recovered
(storage opened, snapshot restored, core built) and when it saw itself elected. "node CPU s"
is the node's user + system time until serving: when other work shares the cores, wall time
grows and this does not. "slowest /readyz" is the longest any one readiness poll waited for
its answer between "http up" and "ready": how long the event loop was held (a node replaying
its log answers nothing meanwhile, not even /healthz). RSS is VmRSS of the node once it is
serving; the peak is VmHWM.

Breakdown table: before each restart the same steps run one by one in this process (CPU
seconds; `measure_components`), to show where the time goes. ``--profile`` also runs the
node under cProfile (main thread only, about 3x slower) and prints the top functions.

Prints, asserts nothing. Every process and temp directory is cleaned up, even on failure.
The page cache is warm (the data was just written), so this is a process restart, not a cold
boot of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import logging
import os
import pstats
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import (
    print_table,
    process_cpu_seconds,
    process_memory_kib,
    write_json,
)
from kvraft import launcher
from kvraft.config import local_cluster_config, render_config
from kvraft.raft.core import RaftConfig, RaftCore
from kvraft.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from kvraft.statemachine import KVStateMachine, encode_put
from kvraft.storage.engine import SNAPSHOT_DIRECTORY_NAME, WAL_DIRECTORY_NAME, StorageEngine
from kvraft.storage.wal import WriteAheadLog, prepare_batch

__all__ = [
    "CASE_NAMES",
    "ENTRIES_FULL",
    "ENTRIES_QUICK",
    "SHORT_LOG_ENTRIES",
    "VALUE_BYTES",
    "BenchmarkError",
    "Check",
    "PreparedCase",
    "key_for",
    "main",
    "measure_components",
    "measure_restart",
    "prepare_empty_case",
    "prepare_log_case",
    "prepare_snapshot_case",
    "print_targets",
    "run",
    "value_for",
]

ENTRIES_FULL = 1_000_000
"""Log entries (case ``log``) and snapshot keys (case ``snapshot``): the issue's figure."""

ENTRIES_QUICK = 100_000
"""The same with --quick."""

VALUE_BYTES = 100
"""The size of every value written."""

SHORT_LOG_ENTRIES = 1_000
"""Entries after the snapshot in case ``snapshot``: what a node writes between snapshots is
bounded by ``storage.snapshot_threshold_entries`` (10,000 by default), so a short log."""

GENERATION_BATCH_ENTRIES = 10_000
"""Entries per WAL frame when generating the log (one batch per frame, like a busy leader)."""

NODE_ID = 1
"""The only node of the cluster."""

TERM = 1
"""The term of every generated entry and of the hard state."""

SERVING_TIMEOUT_S = 600.0
"""Give up waiting for the node to serve after this long (a result, not a hang)."""

REQUEST_TIMEOUT_S = 30.0
"""One HTTP request's timeout: the node's event loop may be busy applying entries, so a
request may wait; a timed-out request is retried until `SERVING_TIMEOUT_S`."""

POLL_INTERVAL_S = 0.01
"""Pause between two polls of the node (10 ms: the resolution of the timings)."""

STOP_TIMEOUT_S = 60.0
"""How long a SIGTERM'd node may take to stop before it is killed."""

PROFILE_LINES = 30
"""Functions printed per ordering of a --profile run."""

_NODE_LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
_NODE_LOG_MARKS = {
    "recovered": ": recovered term ",
    "http_listening": " serving: http ",
    "leader_elected": ": leader is now ",
    "snapshot_written": ": snapshot at ",
}


class BenchmarkError(Exception):
    """The node did not start or serve as expected; the message says what happened."""


@dataclass(frozen=True, slots=True)
class Check:
    """A linearizable read that must return `value` (None: 404, no such key) once the node
    serves."""

    key: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class PreparedCase:
    """A generated data directory and what to check after the restart.

    Fields:
        name: ``empty``, ``log`` or ``snapshot``.
        config_path: the cluster file the node is started with.
        data_dir: the node's data directory.
        http_port: the node's HTTP port.
        checks: reads that must succeed.
        generation_s: how long generating the data took.
        wal_bytes: the WAL's size on disk.
        snapshot_bytes: the snapshot files' size on disk.
        log_entries: entries in the WAL after the snapshot (all of them without one).
        keys: keys in the state the node must rebuild.
    """

    name: str
    config_path: Path
    data_dir: Path
    http_port: int
    checks: tuple[Check, ...]
    generation_s: float
    wal_bytes: int
    snapshot_bytes: int
    log_entries: int
    keys: int


def key_for(number: int) -> str:
    return f"bench/{number:08d}"


def value_for(number: int, generation: int) -> bytes:
    """A `VALUE_BYTES` value naming its key number and the write that made it."""
    return f"g{generation}-{number:08d}-".encode().ljust(VALUE_BYTES, b".")


def _directory_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())


def _write_config(base: Path) -> tuple[Path, Path, int]:
    """Write a one-voter cluster file on free ports; (config path, node data dir, http port)."""
    http_port, raft_port = launcher.free_ports(2)
    config = local_cluster_config(
        1,
        base / "cluster",
        http_port_base=http_port,
        raft_port_base=raft_port,
        cluster_id="kvraft-bench-recovery",
    )
    config_path = base / "cluster" / "cluster.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_config(config))
    return config_path, config.node(NODE_ID).data_dir, http_port


def _sync_tree(directory: Path) -> None:
    """fsync every file and directory under `directory`: the data was generated with fsync
    off, and a restarted node finds its data durable (otherwise its first fdatasync at open
    would pay for the generation's writeback)."""
    for path in [*sorted(directory.rglob("*"), reverse=True), directory]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def prepare_empty_case(base: Path) -> PreparedCase:
    """A node that has never run: the fixed cost of a start (interpreter, imports, election)."""
    config_path, data_dir, http_port = _write_config(base)
    return PreparedCase(
        name="empty",
        config_path=config_path,
        data_dir=data_dir,
        http_port=http_port,
        checks=(Check(key_for(1), None),),
        generation_s=0.0,
        wal_bytes=0,
        snapshot_bytes=0,
        log_entries=0,
        keys=0,
    )


def prepare_log_case(base: Path, entries: int) -> PreparedCase:
    """A node whose WAL holds `entries` committed puts of distinct keys (no snapshot)."""
    config_path, data_dir, http_port = _write_config(base)
    started = time.perf_counter()
    wal, _ = WriteAheadLog.open(data_dir / WAL_DIRECTORY_NAME, fsync=False)
    try:
        for first in range(1, entries + 1, GENERATION_BATCH_ENTRIES):
            last = min(first + GENERATION_BATCH_ENTRIES - 1, entries)
            batch = [
                Entry(
                    TERM, index, EntryKind.NORMAL, encode_put(key_for(index), value_for(index, 1))
                )
                for index in range(first, last + 1)
            ]
            wal.append_batches([prepare_batch(batch, HardState(TERM, NODE_ID, last))], sync=False)
    finally:
        wal.close()
    _sync_tree(data_dir)
    generation_s = time.perf_counter() - started
    return PreparedCase(
        name="log",
        config_path=config_path,
        data_dir=data_dir,
        http_port=http_port,
        checks=(
            Check(key_for(1), value_for(1, 1)),
            Check(key_for(entries), value_for(entries, 1)),
        ),
        generation_s=generation_s,
        wal_bytes=_directory_bytes(data_dir / WAL_DIRECTORY_NAME),
        snapshot_bytes=0,
        log_entries=entries,
        keys=entries,
    )


def prepare_snapshot_case(base: Path, keys: int) -> PreparedCase:
    """A node with a snapshot of `keys` keys at index `keys` and a short committed log after
    it that overwrites the first `SHORT_LOG_ENTRIES` keys."""
    config_path, data_dir, http_port = _write_config(base)
    short_log = min(SHORT_LOG_ENTRIES, keys)
    started = time.perf_counter()
    machine = KVStateMachine()
    for index in range(1, keys + 1):
        machine.apply(index, encode_put(key_for(index), value_for(index, 1)))
    data = b"".join(machine.snapshot_chunks())
    del machine  # about 250 MB for 10**6 keys; the node will need the memory more
    meta = SnapshotMeta(keys, TERM, Configuration(voters=frozenset({NODE_ID})))
    tail = [
        Entry(
            TERM, keys + number, EntryKind.NORMAL, encode_put(key_for(number), value_for(number, 2))
        )
        for number in range(1, short_log + 1)
    ]
    engine = StorageEngine.open(data_dir, fsync=False)
    try:
        # A snapshot that replaced the log, then the entries after it, as a node that had
        # received the leader's snapshot and kept going would have them.
        engine.install_snapshot(meta, data)
        engine.save(tail, HardState(TERM, NODE_ID, keys + short_log), sync=False)
    finally:
        engine.close()
    _sync_tree(data_dir)
    generation_s = time.perf_counter() - started
    return PreparedCase(
        name="snapshot",
        config_path=config_path,
        data_dir=data_dir,
        http_port=http_port,
        checks=(
            Check(key_for(1), value_for(1, 2)),  # the log overwrote it
            Check(key_for(keys), value_for(keys, 1)),  # only the snapshot has it
        ),
        generation_s=generation_s,
        wal_bytes=_directory_bytes(data_dir / WAL_DIRECTORY_NAME),
        snapshot_bytes=_directory_bytes(data_dir / SNAPSHOT_DIRECTORY_NAME),
        log_entries=short_log,
        keys=keys,
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_components(case: PreparedCase) -> dict[str, float]:
    """CPU seconds of the steps a node takes between spawn and serving, run here one by one
    without asyncio, with the same code on the same data: open the storage (WAL replay,
    snapshot verification), read and restore the snapshot, build the Raft core, apply the
    committed log. Interpreter start-up and imports are measured in a fresh interpreter.
    CPU time rather than wall time, so that other work on the machine hardly changes it."""
    timings: dict[str, float] = {}
    started = _children_cpu_seconds()
    subprocess.run(
        [sys.executable, "-c", "import kvraft.cli, kvraft.server, kvraft.http_api"], check=True
    )
    timings["imports_s"] = _children_cpu_seconds() - started
    started = time.process_time()
    engine = StorageEngine.open(case.data_dir)
    timings["storage_open_s"] = time.process_time() - started
    try:
        recovered = engine.recovered
        if recovered.snapshot_meta is not None:
            started = time.process_time()
            reader = engine.open_snapshot_reader(recovered.snapshot_meta)
            try:
                chunks = list(iter(reader.read_chunk, b""))
            finally:
                reader.close()
            timings["snapshot_read_s"] = time.process_time() - started
            started = time.process_time()
            machine = KVStateMachine.restore(chunks)
            timings["snapshot_restore_s"] = time.process_time() - started
            del chunks
            snapshot = recovered.snapshot_meta
        else:
            machine = KVStateMachine()
            snapshot = SnapshotMeta(configuration=Configuration(voters=frozenset({NODE_ID})))
        started = time.process_time()
        core = RaftCore(
            RaftConfig(node_id=NODE_ID),
            random.Random(0),
            hard_state=recovered.hard_state,
            snapshot=snapshot,
            entries=recovered.entries,
        )
        timings["core_build_s"] = time.process_time() - started
        commit_index = core.log.commit_index
        committed = [entry for entry in recovered.entries if entry.index <= commit_index]
        started = time.process_time()
        # As the shell applies entries nobody waits on: runs of plain puts in one call
        # (`KVStateMachine.apply_plain_puts`), anything else one by one.
        position = 0
        while position < len(committed):
            position = machine.apply_plain_puts(committed, position, len(committed), [])
            if position < len(committed):
                entry = committed[position]
                if entry.kind == EntryKind.NORMAL:
                    machine.apply(entry.index, entry.data)
                else:
                    machine.mark_applied(entry.index)
                position += 1
        timings["apply_s"] = time.process_time() - started
        del core, machine
    finally:
        engine.close()
    gc.collect()
    return timings


def _request(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None if the node did not answer (not listening, busy)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _node_log_times(log_path: Path, spawned_at_wall_s: float) -> dict[str, float]:
    """Seconds after the spawn at which the node first logged each of `_NODE_LOG_MARKS`."""
    marks: dict[str, float] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        for name, needle in _NODE_LOG_MARKS.items():
            if name in marks or needle not in line:
                continue
            with contextlib.suppress(ValueError):
                stamp = datetime.strptime(line[:23], _NODE_LOG_TIME_FORMAT).timestamp()
                marks[name] = stamp - spawned_at_wall_s
    return marks


@contextlib.contextmanager
def _node_process(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the node (in its own session: our Ctrl-C is handled here, not by the node on its
    own); on the way out stop it with SIGTERM, or kill it if it does not stop."""
    process = launcher.start(command, log_path)
    try:
        yield process
    finally:
        launcher.stop({NODE_ID: process}, timeout_s=STOP_TIMEOUT_S)


def _wait_until(
    process: subprocess.Popen[bytes], log_path: Path, what: str, ready: Any, deadline: float
) -> None:
    """Poll `ready` until the monotonic `deadline`; BenchmarkError if the node exits first
    or the deadline passes."""
    try:
        launcher.wait_ready(
            process,
            log_path,
            ready,
            what=what,
            timeout_s=max(0.0, deadline - time.monotonic()),
            interval_s=POLL_INTERVAL_S,
        )
    except launcher.NodeExited as error:
        raise BenchmarkError(str(error)) from None
    except launcher.NotReady as error:
        raise BenchmarkError(f"no {what} within {SERVING_TIMEOUT_S} s:\n{error.log_tail}") from None


def measure_restart(case: PreparedCase, work_dir: Path, profile: bool = False) -> dict[str, Any]:
    """Start the node on `case`'s data and time it until it serves; then stop it."""
    log_path = work_dir / f"node-{case.name}.log"
    profile_path = work_dir / f"node-{case.name}.prof"
    command = launcher.serve_command(
        NODE_ID,
        case.config_path,
        python_options=["-m", "cProfile", "-o", str(profile_path)] if profile else [],
    )
    port = case.http_port
    result: dict[str, Any] = {"case": case.name, "profiled": profile}
    spawned_at_wall_s = time.time()
    started = time.perf_counter()
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    with _node_process(command, log_path) as process:
        _wait_until(
            process,
            log_path,
            "HTTP answer",
            lambda: _request(port, "/healthz") is not None,
            deadline,
        )
        result["http_up_s"] = time.perf_counter() - started

        stall_s_max = [0.0]

        def is_ready() -> bool:
            # How long one answer took: the event loop answers /readyz at once unless
            # something (replaying the log) holds it.
            asked = time.perf_counter()
            answer = _request(port, "/readyz")
            stall_s_max[0] = max(stall_s_max[0], time.perf_counter() - asked)
            return answer is not None and answer[0] == 200

        _wait_until(process, log_path, "readiness", is_ready, deadline)
        result["ready_s"] = time.perf_counter() - started
        result["readyz_answer_s_max"] = stall_s_max[0]
        for check in case.checks:
            seen: list[tuple[int, bytes] | None] = [None]

            def read_back(check: Check = check, seen: list[Any] = seen) -> bool:
                # 503 (no leader yet, or the read timed out) is retried; 200 and 404 answer.
                seen[0] = answer = _request(port, f"/v1/kv/{check.key}")
                return answer is not None and answer[0] in (200, 404)

            _wait_until(process, log_path, f"a read of {check.key}", read_back, deadline)
            answer = seen[0]
            assert answer is not None  # read_back returned True
            expected = (200, check.value) if check.value is not None else (404,)
            if answer[: len(expected)] != expected:
                raise BenchmarkError(
                    f"GET {check.key} answered {answer[0]} {answer[1][:40]!r}..., expected "
                    f"{expected[0]} {check.value[:40] if check.value else b''!r}..."
                )
        result["serving_s"] = time.perf_counter() - started
        result["node_cpu_s"] = process_cpu_seconds(process.pid)
        memory = process_memory_kib(process.pid)
        result["rss_mib"] = memory.get("VmRSS", 0) / 1024
        result["rss_peak_mib"] = memory.get("VmHWM", 0) / 1024
        status = _request(port, "/v1/status")
        result["status"] = None
        if status is not None and status[0] == 200:
            with contextlib.suppress(ValueError):
                result["status"] = json.loads(status[1])
        stop_started = time.perf_counter()
    result["stop_s"] = time.perf_counter() - stop_started
    result["exit_code"] = process.returncode
    result["node_log_s"] = _node_log_times(log_path, spawned_at_wall_s)
    if profile and profile_path.exists():
        _print_profile(profile_path)
    return result


def _print_profile(profile_path: Path) -> None:
    """The node's main thread only (cProfile does not follow the storage writer thread or
    `asyncio.to_thread` work)."""
    print(f"\nprofile of the node's main thread ({profile_path.name}):", flush=True)
    stats = pstats.Stats(str(profile_path), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    sys.stdout.flush()


CASE_NAMES = ("empty", "log", "snapshot")
"""The cases, in the order they run."""


def _prepare(name: str, case_dir: Path, count: int) -> PreparedCase:
    if name == "empty":
        return prepare_empty_case(case_dir)
    if name == "log":
        return prepare_log_case(case_dir, count)
    return prepare_snapshot_case(case_dir, count)


def run(
    quick: bool = False,
    entries: int | None = None,
    only: str | None = None,
    profile: bool = False,
    directory: Path | None = None,
) -> dict[str, Any]:
    """Generate, break down, restart and time each case; print the tables; return the rows."""
    count = entries or (ENTRIES_QUICK if quick else ENTRIES_FULL)
    names = [only] if only else list(CASE_NAMES)
    # The storage warns that fsync is off while generating: expected here, and noise.
    logging.getLogger("kvraft.storage").setLevel(logging.ERROR)
    rows: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="kvraft-bench-recovery-", dir=directory))
    try:
        for name in names:
            case_dir = base / name
            case_dir.mkdir()
            if name != "empty":
                what = "entries" if name == "log" else "keys"
                print(f"recovery/{name}: generating {count:,} {what}", flush=True)
            case = _prepare(name, case_dir, count)
            print(
                f"recovery/{name}: generated in {case.generation_s:.1f} s (WAL "
                f"{case.wal_bytes / 1e6:,.1f} MB, snapshot {case.snapshot_bytes / 1e6:,.1f} MB)",
                flush=True,
            )
            # Before the restart: the node snapshots and compacts a long log once it runs.
            components = measure_components(case) if name != "empty" else {}
            load_average = os.getloadavg()[0]
            row = measure_restart(case, case_dir, profile=profile)
            row.update(
                keys=case.keys,
                log_entries=case.log_entries,
                wal_bytes=case.wal_bytes,
                snapshot_bytes=case.snapshot_bytes,
                generation_s=case.generation_s,
                components_s=components,
                load_average_1m_before=load_average,
            )
            rows.append(row)
            print(
                f"recovery/{name}: serving after {row['serving_s']:.2f} s, "
                f"RSS {row['rss_mib']:,.0f} MiB",
                flush=True,
            )
            shutil.rmtree(case_dir, ignore_errors=True)  # free the disk before the next case
    finally:
        shutil.rmtree(base, ignore_errors=True)
    _print_rows(rows)
    print_targets(rows, count)
    return {"rows": rows, "entries": count}


TARGET_LOG_SERVING_S = 4.0
"""Issue #22: a node with 1,000,000 log entries after its snapshot serves within this."""

TARGET_SNAPSHOT_SERVING_S = 3.0
"""Issue #22: a node with a 1,000,000-key snapshot serves within this."""

TARGET_PEAK_RSS_RATIO = 1.3
"""Issue #22: the peak RSS of a 1,000,000-key restore stays under this times the RSS once
serving."""


def print_targets(rows: list[dict[str, Any]], count: int) -> None:
    """The issue's restart targets against `rows` (a run of `run`); also printed by
    `benchmarks.run` at the end of `make bench`."""
    by_case = {row["case"]: row for row in rows}
    lines: list[list[str]] = []

    def verdict(met: bool) -> str:
        if count != ENTRIES_FULL:
            return f"n/a ({count:,}, not {ENTRIES_FULL:,})"
        return "met" if met else "NOT met"

    if "log" in by_case:
        row = by_case["log"]
        lines.append(
            [
                f"{count:,}-entry log: serving <= {TARGET_LOG_SERVING_S:.0f} s",
                f"{row['serving_s']:.2f} s (node CPU {row['node_cpu_s'] or 0:.2f} s, "
                f"load {row['load_average_1m_before']:.1f})",
                verdict(row["serving_s"] <= TARGET_LOG_SERVING_S),
            ]
        )
    if "snapshot" in by_case:
        row = by_case["snapshot"]
        lines.append(
            [
                f"{count:,}-key snapshot: serving <= {TARGET_SNAPSHOT_SERVING_S:.0f} s",
                f"{row['serving_s']:.2f} s (node CPU {row['node_cpu_s'] or 0:.2f} s, "
                f"load {row['load_average_1m_before']:.1f})",
                verdict(row["serving_s"] <= TARGET_SNAPSHOT_SERVING_S),
            ]
        )
        ratio = row["rss_peak_mib"] / row["rss_mib"] if row["rss_mib"] else 0.0
        lines.append(
            [
                f"{count:,}-key snapshot: peak RSS < {TARGET_PEAK_RSS_RATIO}x RSS serving",
                f"{row['rss_peak_mib']:,.0f} / {row['rss_mib']:,.0f} MiB = {ratio:.2f}x",
                verdict(ratio < TARGET_PEAK_RSS_RATIO),
            ]
        )
    if lines:
        print_table("Restart targets (issue #22)", ["target", "measured", "verdict"], lines)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    def mark(row: dict[str, Any], name: str) -> str:
        value = row["node_log_s"].get(name)
        return "-" if value is None else f"{value:.2f}"

    print_table(
        "Restart of a one-node cluster until it serves (seconds from process spawn)",
        [
            "case",
            "keys",
            "log entries",
            "WAL MB",
            "snapshot MB",
            "recovered (node log)",
            "http up",
            "leader (node log)",
            "ready",
            "serving",
            "node CPU s",
            "slowest /readyz s",
            "RSS MiB",
            "peak RSS MiB",
            "stop s",
            "load before",
        ],
        [
            [
                row["case"] + (" (profiled)" if row["profiled"] else ""),
                f"{row['keys']:,}",
                f"{row['log_entries']:,}",
                f"{row['wal_bytes'] / 1e6:,.1f}",
                f"{row['snapshot_bytes'] / 1e6:,.1f}",
                mark(row, "recovered"),
                f"{row['http_up_s']:.2f}",
                mark(row, "leader_elected"),
                f"{row['ready_s']:.2f}",
                f"{row['serving_s']:.2f}",
                f"{row['node_cpu_s'] or 0:.2f}",
                f"{row['readyz_answer_s_max']:.2f}",
                f"{row['rss_mib']:,.0f}",
                f"{row['rss_peak_mib']:,.0f}",
                f"{row['stop_s']:.2f}",
                f"{row['load_average_1m_before']:.1f}",
            ]
            for row in rows
        ],
    )
    broken_down = [row for row in rows if row["components_s"]]
    if not broken_down:
        return
    steps = [
        ("imports_s", "interpreter + imports"),
        ("storage_open_s", "storage open (WAL replay, snapshot check)"),
        ("snapshot_read_s", "snapshot read"),
        ("snapshot_restore_s", "snapshot restore"),
        ("core_build_s", "Raft core build"),
        ("apply_s", "apply committed log"),
    ]
    print_table(
        "Where the time goes: the same steps in one process, without asyncio (CPU seconds)",
        ["case"] + [label for _, label in steps] + ["sum"],
        [
            [row["case"]]
            + [
                f"{row['components_s'][key]:.2f}" if key in row["components_s"] else "-"
                for key, _ in steps
            ]
            + [f"{sum(row['components_s'].values()):.2f}"]
            for row in broken_down
        ],
    )


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so that the `finally` blocks stop the node and delete
    # the temp directory.
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{ENTRIES_QUICK:,} entries/keys")
    parser.add_argument("--entries", type=int, default=None, help="entries and keys per case")
    parser.add_argument("--only", choices=CASE_NAMES, default=None, help="run one case")
    parser.add_argument("--profile", action="store_true", help="run the node under cProfile")
    parser.add_argument("--directory", type=Path, default=None, help="where to put the data")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    arguments = parser.parse_args(argv)
    if arguments.entries is not None and arguments.entries < 1:
        parser.error("--entries must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = run(
            quick=arguments.quick,
            entries=arguments.entries,
            only=arguments.only,
            profile=arguments.profile,
            directory=arguments.directory,
        )
    except BenchmarkError as error:
        print(f"recovery benchmark failed: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
