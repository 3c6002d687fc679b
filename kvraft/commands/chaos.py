"""`kvraft chaos`: fault-test a real local cluster and check its history (see `kvraft.chaos`)."""

from __future__ import annotations

import datetime
import pathlib
import secrets
import sys

import click

from kvraft.chaos.bank import BROKEN_BANK_MODES
from kvraft.chaos.checks import CHECK_TIME_BUDGET_S_DEFAULT
from kvraft.chaos.history import HistoryFileError
from kvraft.chaos.nemesis import NODE_COUNTS, RUN_S_MAX, NemesisError, parse_nemesis_kinds
from kvraft.chaos.report import render_text
from kvraft.chaos.runner import ChaosError, ChaosOptions, run_chaos
from kvraft.chaos.watchers import BROKEN_WATCH_MODES
from kvraft.exit_codes import EXIT_CHAOS_HARNESS_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from kvraft.linearizability import HistoryError

__all__ = [
    "CHECK_BUDGET_S_MAX",
    "EXIT_FAILED",
    "EXIT_HARNESS_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_PASSED",
    "SEED_MAX",
    "chaos",
]

EXIT_PASSED = EXIT_OK
"""Every check passed."""

# EXIT_FAILED (1): a check failed, or the linearizability verdict is unknown (never a pass).

EXIT_HARNESS_ERROR = EXIT_CHAOS_HARNESS_ERROR
"""The harness could not run (report directory in use, a cluster that never started, ...)."""

# EXIT_INTERRUPTED (130): Ctrl-C, SIGTERM, SIGHUP; everything started was cleaned up.

SEED_MAX = 2**63 - 1
"""The largest seed accepted (seeds are printed and typed back, so they stay integers)."""

CHECK_BUDGET_S_MAX = 24 * 3600.0
"""The longest time budget the linearizability search may be given."""

_DEFAULT_REPORT_ROOT = pathlib.Path("data/chaos")


@click.command()
@click.option(
    "--nodes",
    type=click.Choice([str(count) for count in NODE_COUNTS]),
    default="3",
    show_default=True,
    help="Cluster size.",
)
@click.option(
    "--time",
    "time_s",
    type=click.IntRange(1, RUN_S_MAX),
    default=60,
    show_default=True,
    help="Seconds of workload and faults (healing and checking come after).",
)
@click.option(
    "--nemesis",
    "nemesis_text",
    default="kill,pause,partition",
    show_default=True,
    help="Faults to inject: any of kill,pause,partition,member,transfer,burst, or none "
    "(member: add spare nodes, remove voters, the leader too; transfer: move leadership; "
    "burst: flood a node with waves of 200 concurrent 1 MiB writes).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, SEED_MAX),
    default=None,
    help="Decides the fault schedule and the clients' choices (default: random, printed).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="An empty or new directory for the config, data, logs, history and report "
    "(default: data/chaos/<time>-seed<N>).",
)
@click.option(
    "--check-budget",
    "check_budget_s",
    type=click.FloatRange(min=0, max=CHECK_BUDGET_S_MAX, min_open=True),
    default=CHECK_TIME_BUDGET_S_DEFAULT,
    show_default=True,
    help="Seconds the linearizability search may take before it answers unknown.",
)
@click.option(
    "--broken-stale-reads",
    is_flag=True,
    hidden=True,
    help="Tests only: read stale state from any node while calling it linearizable.",
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="Hold watch streams open on the nodes for the whole run and check what they "
    "delivered (ordered, unique, atomic, bookmarkable, resumable, reliable).",
)
@click.option(
    "--broken-watch",
    type=click.Choice(BROKEN_WATCH_MODES),
    default=None,
    hidden=True,
    help="Tests only: the watchers drop events on their side; the watch check must notice.",
)
@click.option(
    "--broken-burst",
    is_flag=True,
    hidden=True,
    help="Tests only: the burst client reports one acknowledged write per wave as shed "
    "(503); the burst check must notice.",
)
@click.option(
    "--bank/--no-bank",
    default=True,
    show_default=True,
    help="Move money between accounts with transactions and audit them in one transaction "
    "each; check every audit's total and each account's order of transfers.",
)
@click.option(
    "--broken-bank",
    type=click.Choice(BROKEN_BANK_MODES),
    default=None,
    hidden=True,
    help="Tests only: send a transfer's two puts as two transactions; the bank check must notice.",
)
@click.option(
    "--lock/--no-lock",
    default=True,
    show_default=True,
    help="Take a lock with short leases, write a register fenced with the lock's token, and "
    "stall some holders past their lease; check that the register's accepted writes carry "
    "tokens that never decrease and that no two holders' writes interleave.",
)
@click.option(
    "--broken-fence",
    is_flag=True,
    hidden=True,
    help="Tests only: start the nodes with fenced writes unchecked; the lock check must notice.",
)
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the nodes' data directories in DIR after a passing run (a failing run's "
    "are always kept).",
)
def chaos(
    nodes: str,
    time_s: int,
    nemesis_text: str,
    seed: int | None,
    report_dir: pathlib.Path | None,
    check_budget_s: float,
    broken_stale_reads: bool,
    watch: bool,
    broken_watch: str | None,
    broken_burst: bool,
    bank: bool,
    broken_bank: str | None,
    lock: bool,
    broken_fence: bool,
    keep_data: bool,
) -> None:
    """Fault-test a real local cluster (kill -9, SIGSTOP, iptables partitions, membership
    changes, leadership transfers, bursts of large writes) and check that what the clients
    saw was linearizable, that no acknowledged write was lost, that watch streams missed
    nothing, that the bank's transfers were atomic and kept the total, that a lock's fenced
    register only took writes of its current holder, and that a burst was shed (503) without
    a node dying or a shed write applying.

    Exits 0 only when every check passed; the report is printed and written to DIR.
    """
    try:
        kinds = parse_nemesis_kinds(nemesis_text)
    except NemesisError as error:
        raise click.BadParameter(str(error), param_hint="--nemesis") from None
    if seed is None:
        seed = secrets.randbelow(1_000_000)
    if report_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        report_dir = _DEFAULT_REPORT_ROOT / f"{stamp}-seed{seed}"
    options = ChaosOptions(
        nodes=int(nodes),
        time_s=float(time_s),
        nemeses=kinds,
        seed=seed,
        report_dir=report_dir,
        broken_stale_reads=broken_stale_reads,
        check_time_budget_s=check_budget_s,
        watch=watch or broken_watch is not None,
        broken_watch=broken_watch,
        broken_burst=broken_burst,
        bank=bank or broken_bank is not None,
        broken_bank=broken_bank,
        lock=lock or broken_fence,
        broken_fence=broken_fence,
        keep_data=keep_data,
    )
    try:
        report = run_chaos(options, echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo("interrupted: every node stopped and every rule removed", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (ChaosError, HistoryFileError, HistoryError, OSError) as error:
        click.echo(f"kvraft chaos: {error}", err=True)
        sys.exit(EXIT_HARNESS_ERROR)
    click.echo(render_text(report), nl=False)
    sys.exit(EXIT_PASSED if report.passed else EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover - `python -m kvraft.commands.chaos`
    chaos()
