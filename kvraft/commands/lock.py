"""`kvraft lock NAME -- COMMAND...`, `kvraft elect NAME VALUE`, `kvraft locks [NAME]`.

`lock` holds a lock while a command runs: the command gets the lock's fencing token in
``KVRAFT_FENCING_TOKEN`` (and ``KVRAFT_FENCE``, ``name:token``, which `kvraft put`,
`kvraft delete` and `kvraft txn` take as their fence by default, so the command's own
kvraft writes are fenced without saying so). If the lock's lease expires while the command
runs (no keepalive reached the cluster for a whole TTL), the command is stopped --
SIGTERM, then SIGKILL after `STOP_GRACE_S` -- and `lock` exits `EXIT_LOCK_LOST`: another
holder may be running already. Without a command it holds the lock until Ctrl-C.

`elect` campaigns for leadership of NAME with VALUE (a lock whose holder is the leader and
whose value names it, as etcd's election recipe), prints when elected, and resigns on
Ctrl-C. `locks` shows who holds what.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType

import click

from kvraft.client import TIMEOUT_S_DEFAULT, Lock, LockHold
from kvraft.commands.kv import (
    FENCE_ENV,
    client_options,
    display_text,
    echo_json,
    make_client,
    output_option,
    reported_errors,
)
from kvraft.exit_codes import EXIT_INTERRUPTED, EXIT_LOCK_LOST

__all__ = ["FENCE_ENV", "FENCING_TOKEN_ENV", "STOP_GRACE_S", "elect", "lock", "locks"]

FENCING_TOKEN_ENV = "KVRAFT_FENCING_TOKEN"
"""The fencing token, for the command `kvraft lock` runs to hand to what it protects."""

STOP_GRACE_S = 5.0
"""How long a command whose lock was lost has between SIGTERM and SIGKILL."""

LOST_POLL_S = 0.1
"""How often `lock` looks whether the lease was lost while its command runs."""

_client_options = client_options(TIMEOUT_S_DEFAULT)
_TTL_OPTION = click.option(
    "--ttl",
    "ttl_s",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="The lease's TTL: how long the lock outlives this process if it dies or hangs.",
)


def hold_json(hold: LockHold) -> dict[str, object]:
    """A lock hold as the HTTP API shows it."""
    return {
        "name": hold.name,
        "key": hold.key,
        "fencing_token": hold.fencing_token,
        "lease": str(hold.lease),
        "value": hold.value,
    }


def _interrupt(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager's stop, `kill`) ends `lock` and `elect` as Ctrl-C does:
    the command is stopped, the lock released and the lease revoked, so the next holder
    need not wait out a TTL."""
    signal.signal(signal.SIGTERM, _interrupt)


def _wait_until_lost_or_interrupted(held: Lock) -> bool:
    """Block until the lease is lost (True) or Ctrl-C (False)."""
    try:
        while not held.lost.wait(LOST_POLL_S):
            pass
    except KeyboardInterrupt:
        return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_TTL_OPTION
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up (exit 1) if the lock is not acquired within this many seconds "
    "(default: wait as long as it takes).",
)
@click.option("--value", default="", help="Shown to others as the holder's value.")
@_client_options
def lock(
    name: str,
    command: tuple[str, ...],
    ttl_s: int,
    wait_s: float | None,
    value: str,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Hold lock NAME while COMMAND runs (after `--`), with the fencing token in
    $KVRAFT_FENCING_TOKEN; exit with COMMAND's status. Stops COMMAND and exits 9 if the
    lock is lost. Without COMMAND, hold it until Ctrl-C."""
    client = make_client(endpoints_text, timeout_s)
    shown = display_text(name)
    _stop_on_sigterm()
    with reported_errors(), client.lock(name, ttl_s=ttl_s, wait_s=wait_s, value=value) as held:
        token = held.fencing_token
        click.echo(
            f"holding lock {shown!r}: fencing token {token}, lease {held.hold.lease}", err=True
        )
        if not command:
            if _wait_until_lost_or_interrupted(held):
                raise click.exceptions.Exit(_lost(shown))
            click.echo(f"released lock {shown!r}", err=True)
            return
        environment = {**os.environ, FENCING_TOKEN_ENV: str(token), FENCE_ENV: held.fence.header}
        try:
            process = subprocess.Popen(command, env=environment)
        except OSError as error:
            raise click.ClickException(f"cannot run {command[0]!r}: {error}") from None
        lost = False
        try:
            while process.poll() is None:
                if held.lost.wait(LOST_POLL_S):
                    lost = True
                    _stop(process)
        except KeyboardInterrupt:
            # Ctrl-C reached the command too; SIGTERM did not: stop it either way.
            _stop(process)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if lost:
        raise click.exceptions.Exit(_lost(shown))
    raise click.exceptions.Exit(
        process.returncode if process.returncode >= 0 else 128 - process.returncode
    )


def _lost(shown: str) -> int:
    click.echo(
        f"Error: lost lock {shown!r}: its lease expired (no keepalive reached the cluster in "
        "time); another holder may have it now",
        err=True,
    )
    return EXIT_LOCK_LOST


@click.command()
@click.argument("name")
@click.argument("value")
@_TTL_OPTION
@_client_options
def elect(name: str, value: str, ttl_s: int, endpoints_text: str, timeout_s: float) -> None:
    """Campaign to lead NAME as VALUE: wait until elected, print it, lead until Ctrl-C or
    SIGTERM (then resign). Exits 9 if leadership is lost (its lease expired)."""
    client = make_client(endpoints_text, timeout_s)
    _stop_on_sigterm()
    shown = display_text(name)
    with reported_errors():
        current = client.lock_info(name).holder
    if current is not None:
        click.echo(f"{shown}: {display_text(current.value)!r} leads; waiting", err=True)
    with reported_errors(), client.lock(name, ttl_s=ttl_s, value=value) as held:
        click.echo(f"elected: {shown} = {display_text(value)} (fencing token {held.fencing_token})")
        if _wait_until_lost_or_interrupted(held):
            raise click.exceptions.Exit(_lost(shown))
    click.echo(f"resigned: {shown}", err=True)


@click.command()
@click.argument("name", required=False)
@output_option
@_client_options
def locks(name: str | None, output: str, endpoints_text: str, timeout_s: float) -> None:
    """Show who holds every lock, or who holds and waits for lock NAME."""
    client = make_client(endpoints_text, timeout_s)
    if name is None:
        with reported_errors():
            holders = client.locks()
        if output == "json":
            echo_json({"locks": [hold_json(one) for one in holders]})
        elif not holders:
            click.echo("no locks held")
        for one in holders if output != "json" else ():
            click.echo(_hold_line(one))
        return
    with reported_errors():
        found = client.lock_info(name)
    if output == "json":
        echo_json(
            {
                "name": found.name,
                "holder": None if found.holder is None else hold_json(found.holder),
                "waiters": [hold_json(one) for one in found.waiters],
                "revision": found.revision,
            }
        )
        return
    if found.holder is None:
        click.echo(f"{display_text(name)!r} is not held")
        return
    click.echo(_hold_line(found.holder))
    for one in found.waiters:
        click.echo(f"  waiting: {_hold_line(one)}")


def _hold_line(hold: LockHold) -> str:
    value = f" value {display_text(hold.value)!r}" if hold.value else ""
    return (
        f"{display_text(hold.name)}: fencing token {hold.fencing_token}, lease {hold.lease}{value}"
    )
