"""Measure the deterministic simulator's speed: simulated Raft ticks, messages and client
operations per second of wall time, for 3 and 5 nodes, in one process and over a pool.

Run as ``python -m benchmarks.bench_sim [--quick] [--seeds N] [--json PATH]``. Each case runs
the same seeds (1..N) through `kvraft.sim.runner.run_seed` with the default `SimOptions`
(1,500 chaos ticks, then the healed liveness phase and the linearizability check, which are
included in the time). "jobs 2" runs the seeds over a fork pool of two processes, like
``kvraft sim --jobs 2``; its rate is total work over wall time, pool start-up included.

Columns: ticks/s counts simulated Raft ticks (every node ticks once per tick); messages/s
counts messages handed to the simulated network; ops/s counts client operations that
finished (ok, fail or info) and ok ops/s only the successful ones. Faults ``all`` is the
mix `make test` uses; ``none`` is a healthy cluster, where far more messages and operations
flow per tick. CPU s is the finished seeds' own CPU time (user + system, in whichever process
ran them), so ticks/CPU s stays comparable when other work shares the cores (then "jobs 2"
cannot show a speed-up; "load before" is the 1-minute load average when the case started).

A seed that runs past `SEED_WALL_S_MAX` (fault-free: 5 times that) is stopped, listed with
a replay command, and left out of the rates (see `measure_case`): a hung seed is a finding,
not a reason for ``make bench`` to hang. Prints, asserts nothing; violations are listed by
seed, not raised.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import print_table, write_json
from kvraft.sim.runner import ALL_FAULTS, SimOptions, SimResult, run_seed

__all__ = [
    "CASES",
    "SEEDS_FULL",
    "SEEDS_QUICK",
    "SEED_WALL_S_MAX",
    "SeedRun",
    "SeedTimeout",
    "SimCase",
    "main",
    "measure_case",
    "run",
]

SEEDS_FULL = 24
"""Seeds per mixed-fault case in a full run (about 10-20 s of CPU per case)."""

SEEDS_QUICK = 4
"""Seeds per mixed-fault case with --quick."""

HEALTHY_SEEDS_DIVISOR = 5
"""A fault-free seed does about 5 times the work of a mixed-fault one (messages flow on
every tick), so the ``none`` cases run this many times fewer seeds."""

SEED_WALL_S_MAX = 30.0
"""A mixed-fault seed still running after this long is stopped and reported (by number)
instead of hanging the benchmark: a normal one takes under a second on an idle core and a
few seconds on a loaded one. A fault-free seed gets `HEALTHY_SEEDS_DIVISOR` times as long."""

POOL_CHUNK_SEEDS = 1
"""Seeds handed to a pool worker at a time: one, so two workers finish together even
when the seed count is small."""


@dataclass(frozen=True, slots=True)
class SimCase:
    """One row of the table.

    Fields:
        nodes: initial voters.
        faults_label: ``all`` (every fault) or ``none``.
        jobs: worker processes (1: in this process).
    """

    nodes: int
    faults_label: str
    jobs: int

    @property
    def faults(self) -> frozenset[str]:
        return ALL_FAULTS if self.faults_label == "all" else frozenset()


CASES = (
    SimCase(3, "all", 1),
    SimCase(3, "all", 2),
    SimCase(5, "all", 1),
    SimCase(5, "all", 2),
    SimCase(3, "none", 1),
    SimCase(5, "none", 1),
)
"""The cases measured, in table order."""


class SeedTimeout(BaseException):
    """A seed ran past `SEED_WALL_S_MAX`. A BaseException, because `run_seed` turns every
    Exception into a finding and would swallow it."""


@dataclass(frozen=True, slots=True)
class SeedRun:
    """One seed's outcome.

    Fields:
        seed: the seed.
        result: what `run_seed` returned; None if the seed timed out.
        wall_s, cpu_s: the seed's own wall and CPU time (in the process that ran it).
    """

    seed: int
    result: SimResult | None
    wall_s: float
    cpu_s: float


def _seed_wall_s_max(case: SimCase) -> float:
    return SEED_WALL_S_MAX * (1 if case.faults_label == "all" else HEALTHY_SEEDS_DIVISOR)


def _on_alarm(signal_number: int, frame: FrameType | None) -> None:
    raise SeedTimeout


def _run_one(job: tuple[int, SimOptions, float]) -> SeedRun:
    """Run one seed with a wall-clock limit (SIGALRM, in whichever process runs it)."""
    seed, options, wall_s_max = job
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    started, cpu_started = time.perf_counter(), time.process_time()
    signal.setitimer(signal.ITIMER_REAL, wall_s_max)
    result: SimResult | None
    try:
        result = run_seed(seed, options)
    except SeedTimeout:
        result = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return SeedRun(seed, result, time.perf_counter() - started, time.process_time() - cpu_started)


def measure_case(case: SimCase, seeds: int) -> dict[str, Any]:
    """Run seeds 1..`seeds` for `case` and return the totals and rates.

    Rates count the seeds that finished. A seed that ran past its limit is listed
    under ``timed_out_seeds`` and its time is taken out: all of it in one process, its share
    (time / jobs) over a pool, which is approximate.
    """
    options = SimOptions(nodes=case.nodes, faults=case.faults)
    work = [(seed, options, _seed_wall_s_max(case)) for seed in range(1, seeds + 1)]
    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    if case.jobs <= 1:
        runs = [_run_one(job) for job in work]
    else:
        # fork, as `kvraft sim` does on Linux: the workers inherit the imported modules.
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = context.Pool(case.jobs)
        try:
            runs = list(pool.imap_unordered(_run_one, work, chunksize=POOL_CHUNK_SEEDS))
        finally:
            pool.terminate()
    elapsed_s = time.perf_counter() - started
    finished = [run.result for run in runs if run.result is not None]
    timed_out = sorted((run for run in runs if run.result is None), key=lambda run: run.seed)
    wall_s = max(elapsed_s - sum(run.wall_s for run in timed_out) / case.jobs, 1e-9)
    cpu_s = sum(run.cpu_s for run in runs if run.result is not None)
    ticks = sum(result.ticks for result in finished)
    messages = sum(result.messages for result in finished)
    operations = sum(sum(result.operations.values()) for result in finished)
    operations_ok = sum(result.operations.get("ok", 0) for result in finished)
    return {
        "nodes": case.nodes,
        "faults": case.faults_label,
        "jobs": case.jobs,
        "seeds": seeds,
        "seeds_finished": len(finished),
        "timed_out_seeds": [run.seed for run in timed_out],
        "violation_seeds": sorted(result.seed for result in finished if result.violation),
        "elapsed_s": elapsed_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "load_average_1m_before": load_average,
        "ticks": ticks,
        "messages": messages,
        "client_ops": operations,
        "client_ops_ok": operations_ok,
        "ticks_per_s": ticks / wall_s,
        "messages_per_s": messages / wall_s,
        "client_ops_per_s": operations / wall_s,
        "client_ops_ok_per_s": operations_ok / wall_s,
        "ticks_per_cpu_s": ticks / cpu_s if cpu_s > 0 else None,
    }


def _seed_list(seeds: list[int]) -> str:
    return ",".join(str(seed) for seed in seeds) if seeds else "-"


def run(quick: bool = False, seeds: int | None = None) -> dict[str, Any]:
    """Measure every case in `CASES`, print the table, return the rows."""
    seeds_all = seeds or (SEEDS_QUICK if quick else SEEDS_FULL)
    rows: list[dict[str, Any]] = []
    for case in CASES:
        count = (
            seeds_all if case.faults_label == "all" else max(1, seeds_all // HEALTHY_SEEDS_DIVISOR)
        )
        row = measure_case(case, count)
        rows.append(row)
        print(
            f"sim {case.nodes} nodes, faults {case.faults_label}, jobs {case.jobs}: "
            f"{count} seeds in {row['elapsed_s']:.1f} s",
            flush=True,
        )
        for seed in row["timed_out_seeds"]:
            print(
                f"  seed {seed} did not finish within {_seed_wall_s_max(case):.0f} s; replay: "
                f"kvraft sim --seed {seed} --nodes {case.nodes} --faults {case.faults_label} "
                "--trace",
                flush=True,
            )
    print_table(
        "Simulator speed (default SimOptions: 1,500 chaos ticks per seed; rates per wall second"
        " unless marked CPU)",
        [
            "nodes",
            "faults",
            "jobs",
            "seeds done",
            "wall s",
            "CPU s",
            "ticks/s",
            "ticks/CPU s",
            "messages/s",
            "client ops/s",
            "ok ops/s",
            "violation seeds",
            "timed-out seeds",
            "load before",
        ],
        [
            [
                row["nodes"],
                row["faults"],
                row["jobs"],
                f"{row['seeds_finished']}/{row['seeds']}",
                f"{row['elapsed_s']:.1f}",
                f"{row['cpu_s']:.1f}",
                f"{row['ticks_per_s']:,.0f}",
                f"{row['ticks_per_cpu_s'] or 0:,.0f}",
                f"{row['messages_per_s']:,.0f}",
                f"{row['client_ops_per_s']:,.0f}",
                f"{row['client_ops_ok_per_s']:,.0f}",
                _seed_list(row["violation_seeds"]),
                _seed_list(row["timed_out_seeds"]),
                f"{row['load_average_1m_before']:.1f}",
            ]
            for row in rows
        ],
    )
    return {"rows": rows}


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through `finally`, which terminates the pool's workers.
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{SEEDS_QUICK} seeds per case")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per mixed-fault case")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    arguments = parser.parse_args(argv)
    if arguments.seeds is not None and arguments.seeds < 1:
        parser.error("--seeds must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = run(quick=arguments.quick, seeds=arguments.seeds)
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
