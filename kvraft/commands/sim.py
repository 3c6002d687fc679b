"""`kvraft sim`: the deterministic cluster simulator over many seeds."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterator

import click

from kvraft.sim.runner import (
    ALL_FAULTS,
    WRITE_DELAY_STEPS_MAX_DEFAULT,
    SimOptions,
    SimResult,
    run_seed,
)

__all__ = ["sim"]


def parse_seeds(text: str) -> list[int]:
    """'7', '1-2000' or '1,5,9-12' -> the seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if high else first
        except ValueError:
            raise click.BadParameter(f"{part!r} is not a seed or a range like 1-2000") from None
        if last < first:
            raise click.BadParameter(f"empty range {part!r}")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise click.BadParameter("no seeds given")
    return seeds


def parse_faults(text: str) -> frozenset[str]:
    if text in ("all", ""):
        return ALL_FAULTS
    if text == "none":
        return frozenset()
    faults = frozenset(f.strip() for f in text.split(",") if f.strip())
    unknown = faults - ALL_FAULTS
    if unknown:
        raise click.BadParameter(
            f"unknown faults {sorted(unknown)}; choose from {sorted(ALL_FAULTS)}"
        )
    return faults


def _run_one(job: tuple[int, SimOptions]) -> SimResult:
    seed, options = job
    return run_seed(seed, options)


def _run_all(seeds: list[int], options: SimOptions, jobs: int) -> Iterator[SimResult]:
    work = [(seed, options) for seed in seeds]
    if jobs <= 1 or len(seeds) == 1:
        yield from map(_run_one, work)
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(jobs) as pool:
        yield from pool.imap_unordered(_run_one, work, chunksize=4)


def replay_command(seed: int, options: SimOptions, faults_text: str) -> str:
    parts = [
        "kvraft sim",
        f"--seed {seed}",
        f"--nodes {options.nodes}",
        f"--ticks {options.chaos_ticks}",
        f"--faults {faults_text}",
        f"--write-delay-steps {options.write_delay_steps_max}",
    ]
    parts.extend(f"--bug {bug}" for bug in sorted(options.bugs))
    return " ".join(parts) + " --trace"


@click.command()
@click.option("--seeds", "seeds_text", default=None, help="Seeds: 7, 1-2000 or 1,5,9-12.")
@click.option("--seed", type=int, default=None, help="One seed (same as --seeds N).")
@click.option("--nodes", type=click.IntRange(1, 9), default=5, show_default=True)
@click.option(
    "--faults",
    "faults_text",
    default="all",
    show_default=True,
    help=f"Comma-separated from {','.join(sorted(ALL_FAULTS))}, or all, or none.",
)
@click.option(
    "--ticks",
    type=click.IntRange(50, 10**6),
    default=1500,
    show_default=True,
    help="Length of the chaos phase in Raft ticks.",
)
@click.option(
    "--write-delay-steps",
    type=click.IntRange(0, 100),
    default=WRITE_DELAY_STEPS_MAX_DEFAULT,
    show_default=True,
    help="A write completes 0..N steps after it is issued while the node goes on building "
    "Readies (pipelined, as the daemon may); 0 completes each write at once.",
)
@click.option("--jobs", type=int, default=os.cpu_count() or 1, show_default=True)
@click.option("--trace", is_flag=True, help="Print the event trace (single seed).")
@click.option("--bug", "bugs", multiple=True, hidden=True, help="Test only: inject a known bug.")
def sim(
    seeds_text: str | None,
    seed: int | None,
    nodes: int,
    faults_text: str,
    ticks: int,
    write_delay_steps: int,
    jobs: int,
    trace: bool,
    bugs: tuple[str, ...],
) -> None:
    """Run the deterministic cluster simulator over many seeds and check Raft's properties.

    Exits non-zero on any violation, printing the seed, the property and a command that
    replays exactly that run with its event trace.
    """
    if seed is not None:
        seeds = [seed]
    elif seeds_text is not None:
        seeds = parse_seeds(seeds_text)
    else:
        raise click.UsageError("give --seed N or --seeds 1-2000")
    faults = parse_faults(faults_text)
    options = SimOptions(
        nodes=nodes,
        faults=faults,
        chaos_ticks=ticks,
        bugs=frozenset(bugs),
        write_delay_steps_max=write_delay_steps,
    )
    if trace:
        if len(seeds) != 1:
            raise click.UsageError("--trace replays one seed: use --seed N")
        result = run_seed(seeds[0], options, trace=click.echo)
        _print_summary([result], options, faults_text, elapsed_s=None)
        sys.exit(1 if result.violation else 0)
    started = time.monotonic()
    results: list[SimResult] = []
    show_bar = sys.stderr.isatty()
    with click.progressbar(
        _run_all(seeds, options, jobs),
        length=len(seeds),
        label=f"simulating {nodes} nodes",
        file=sys.stderr if show_bar else open(os.devnull, "w"),
        show_pos=True,
    ) as bar:
        for result in bar:
            results.append(result)
    _print_summary(results, options, faults_text, time.monotonic() - started)
    sys.exit(1 if any(r.violation for r in results) else 0)


def _print_summary(
    results: list[SimResult], options: SimOptions, faults_text: str, elapsed_s: float | None
) -> None:
    violations = sorted((r for r in results if r.violation), key=lambda r: r.seed)
    for result in violations[:10]:
        click.echo(f"VIOLATION seed {result.seed}: {result.violation}")
        click.echo(f"  replay: {replay_command(result.seed, options, faults_text)}")
    ticks = sum(r.ticks for r in results)
    ops: dict[str, int] = {}
    for result in results:
        for status, count in result.operations.items():
            ops[status] = ops.get(status, 0) + count
    applies: dict[str, int] = {}
    for result in results:
        for kind, count in result.applies.items():
            applies[kind] = applies.get(kind, 0) + count
    hook_seeds = sum(r.apply_path == "hook" for r in results)
    rate = f", {ticks / elapsed_s:,.0f} ticks/s" if elapsed_s else ""
    timing = f" in {elapsed_s:.1f}s" if elapsed_s is not None else ""
    click.echo(
        f"kvraft sim: {len(results)} seeds, {options.nodes} nodes, faults={faults_text}, "
        f"writes in flight up to {options.write_delay_steps_max} steps: "
        f"{len(violations)} violations; {ticks:,} ticks{timing}{rate}; "
        f"ops ok={ops.get('ok', 0):,} fail={ops.get('fail', 0):,} info={ops.get('info', 0):,}; "
        f"elections={sum(r.elections for r in results):,}; "
        f"applied one by one={applies.get('one_by_one', 0):,}, "
        f"as plain puts in runs={applies.get('plain_puts', 0):,} "
        f"({applies.get('plain_put_runs', 0):,} runs; {hook_seeds} seeds by on_apply hook)"
    )
