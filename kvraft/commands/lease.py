"""`kvraft lease grant|keepalive|revoke|list|info`: leases from the command line.

Each command is one lease call of `kvraft.client.KVClient`, with its failover and retry
rules. `keepalive --follow` keeps a lease alive (every TTL / 3, as the client's `lease()`
does) until Ctrl-C, and exits 1 as soon as the cluster says the lease is gone, so a script
that runs it beside its work can tell. Attach a key with `kvraft put KEY VALUE --lease ID`.
"""

from __future__ import annotations

import time

import click

from kvraft.client import (
    KEEPALIVES_PER_TTL,
    TIMEOUT_S_DEFAULT,
    KVError,
    LeaseInfo,
    LeaseNotFound,
)
from kvraft.commands.kv import (
    client_options,
    echo_json,
    make_client,
    output_option,
    reported_errors,
)

__all__ = ["lease", "lease_json", "render_leases_table"]

_client_options = client_options(TIMEOUT_S_DEFAULT)
_LEASE_ID = click.IntRange(min=1)
_LEASES_COLUMNS = ("LEASE", "TTL S", "REMAINING S")


def lease_json(info: LeaseInfo) -> dict[str, object]:
    """A lease as the HTTP API shows it (the id as a decimal string, as the API spells it)."""
    document: dict[str, object] = {
        "id": str(info.id),
        "ttl_s": info.ttl_s,
        "remaining_s": info.remaining_s,
    }
    if info.keys is not None:
        document["keys"] = list(info.keys)
    return document


def render_leases_table(leases: list[LeaseInfo]) -> str:
    """One row per lease, or a line saying there is none."""
    if not leases:
        return "no leases"
    rows = [_LEASES_COLUMNS] + [
        (str(one.id), str(one.ttl_s), f"{one.remaining_s:.1f}") for one in leases
    ]
    widths = [max(len(row[index]) for row in rows) for index in range(len(_LEASES_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _gone(lease_id: int) -> click.ClickException:
    return click.ClickException(
        f"lease {lease_id} is gone (it expired or was revoked); its keys were deleted"
    )


@click.group()
def lease() -> None:
    """Leases: keys attached to one are deleted when it is revoked or expires."""


@lease.command()
@click.argument("ttl_s", metavar="TTL_S", type=click.IntRange(min=1))
@output_option
@_client_options
def grant(ttl_s: int, output: str, endpoints_text: str, timeout_s: float) -> None:
    """Grant a lease of TTL_S seconds and print its id."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        granted = client.lease_grant(ttl_s)
    if output == "json":
        echo_json({"id": str(granted.id), "ttl_s": granted.ttl_s})
    else:
        click.echo(f"lease {granted.id} granted, TTL {granted.ttl_s} s")


@lease.command()
@click.argument("lease_id", metavar="ID", type=_LEASE_ID)
@click.option(
    "--follow", is_flag=True, help="Keep it alive every TTL / 3 until Ctrl-C (exit 1 if lost)."
)
@_client_options
def keepalive(lease_id: int, follow: bool, endpoints_text: str, timeout_s: float) -> None:
    """Restart lease ID's TTL once, or keep doing so with --follow."""
    client = make_client(endpoints_text, timeout_s)
    try:
        with reported_errors():
            try:
                ttl_s = client.lease_keepalive(lease_id)
            except LeaseNotFound:
                raise _gone(lease_id) from None
        click.echo(f"lease {lease_id} kept alive, TTL {ttl_s} s")
        if not follow:
            return
        period_s = ttl_s / KEEPALIVES_PER_TTL
        while True:
            time.sleep(period_s)  # the keepalive schedule itself
            try:
                client.lease_keepalive(lease_id)
            except LeaseNotFound:
                raise _gone(lease_id) from None
            except KVError as error:
                # The lease may outlive an outage; only the cluster can say it is gone.
                click.echo(f"keepalive failed, trying again: {error}", err=True)
    except KeyboardInterrupt:
        return


@lease.command()
@click.argument("lease_id", metavar="ID", type=_LEASE_ID)
@_client_options
def revoke(lease_id: int, endpoints_text: str, timeout_s: float) -> None:
    """Revoke lease ID: it and its keys are deleted in one revision."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        try:
            revision, deleted = client.lease_revoke(lease_id)
        except LeaseNotFound:
            raise _gone(lease_id) from None
    keys = "key" if deleted == 1 else "keys"
    click.echo(f"lease {lease_id} revoked, {deleted} {keys} deleted (revision {revision})")


@lease.command(name="list")
@output_option
@_client_options
def list_leases(output: str, endpoints_text: str, timeout_s: float) -> None:
    """List every live lease with its TTL and the seconds it has left."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        leases = client.leases()
    if output == "json":
        echo_json({"leases": [lease_json(one) for one in leases]})
    else:
        click.echo(render_leases_table(leases))


@lease.command()
@click.argument("lease_id", metavar="ID", type=_LEASE_ID)
@output_option
@_client_options
def info(lease_id: int, output: str, endpoints_text: str, timeout_s: float) -> None:
    """Show lease ID's TTL, the seconds it has left and its keys."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        try:
            found = client.lease_info(lease_id)
        except LeaseNotFound:
            raise _gone(lease_id) from None
    if output == "json":
        echo_json(lease_json(found))
        return
    click.echo(f"lease {found.id}: TTL {found.ttl_s} s, {found.remaining_s:.1f} s left")
    for key in found.keys or ():
        click.echo(f"  {key}")
