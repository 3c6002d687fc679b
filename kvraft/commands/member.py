"""`kvraft member list|add|remove` and `kvraft leader transfer`: change the cluster online.

Each command makes one membership call of `kvraft.client.KVClient` (`members`, `add_member`,
`remove_member`, `transfer_leadership`), with its retry machinery: any node accepts the
request and forwards it to the leader. Adding a member and moving leadership are safe to
repeat, so they are retried after an ambiguous failure, and `member add` keeps asking while
the new node is still catching up (503 `not_caught_up`) until `--timeout`. Removing is not
repeated after an ambiguous failure: the command says the outcome is unknown and `member
list` tells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import click

from kvraft.client import ClientError, KVClient
from kvraft.commands.kv import (
    UNREACHABLE_TIMEOUT_S,
    auth_client_options,
    client_options,
    display_text,
    echo_json,
    output_option,
    reported_errors,
    tls_ssl_context,
)

__all__ = [
    "MEMBER_ATTEMPT_TIMEOUT_S",
    "MEMBER_TIMEOUT_S_DEFAULT",
    "leader",
    "member",
    "render_members_table",
]

MEMBER_TIMEOUT_S_DEFAULT = 120.0
"""How long a membership command keeps trying: a new node may need a while to receive a
snapshot before it can be promoted, and every retry of an add is harmless."""

MEMBER_ATTEMPT_TIMEOUT_S = 30.0
"""How long one attempt waits: longer than the server's own bound on a membership request
(three request timeouts, 15 s by default) plus a forwarding hop."""

_MEMBERS_COLUMNS = ("NODE", "RAFT ADDRESS", "HTTP ADDRESS", "ROLE", "MATCH", "CAUGHT UP")
_F = TypeVar("_F", bound=Callable[..., Any])


def render_members_table(view: Mapping[str, Any]) -> str:
    """The members of a `GET /v1/members` answer (untrusted) as a table, and a summary line."""
    rows: list[tuple[str, ...]] = []
    members = view.get("members")
    for item in members if isinstance(members, list) else []:
        if not isinstance(item, dict):
            continue
        match_index = item.get("match_index")
        caught_up = item.get("caught_up")
        rows.append(
            (
                _text(item.get("id")),
                _text(item.get("raft_address")),
                _text(item.get("http_address")),
                "voter" if item.get("voter") is True else "learner",
                _text(match_index) if match_index is not None else "-",
                ("yes" if caught_up else "no") if isinstance(caught_up, bool) else "-",
            )
        )
    widths = [
        max(len(column), *(len(row[index]) for row in rows))
        for index, column in enumerate(_MEMBERS_COLUMNS)
    ]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_MEMBERS_COLUMNS, *rows]
    ]
    leader_id = view.get("leader_id")
    pending = "a membership change is in progress" if view.get("change_pending") is True else ""
    summary = f"leader: {_text(leader_id) if leader_id else 'unknown'}"
    lines.append(summary + (f"; {pending}" if pending else ""))
    return "\n".join(lines)


def _text(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "?"
    return display_text(str(value)[:64]) or "?"


# --- shared options ---------------------------------------------------------------------


_options = client_options(MEMBER_TIMEOUT_S_DEFAULT)


def _client(endpoints_text: str, timeout_s: float) -> KVClient:
    endpoints: Sequence[str] = [part for part in endpoints_text.split(",") if part.strip()]
    try:
        return KVClient(
            endpoints,
            timeout_s=timeout_s,
            attempt_timeout_s=min(timeout_s, MEMBER_ATTEMPT_TIMEOUT_S),
            unreachable_timeout_s=UNREACHABLE_TIMEOUT_S,
            ssl_context=tls_ssl_context(),
            **auth_client_options(),
        )
    except ClientError as error:
        raise click.BadParameter(error.message, param_hint="--endpoints") from None


def _reported_errors() -> AbstractContextManager[None]:
    """A client error becomes one line on stderr and exit status 1."""
    return reported_errors(" (see `kvraft member list`)")


# --- commands ---------------------------------------------------------------------------


@click.group()
def member() -> None:
    """List, add and remove cluster members, online."""


@member.command("list")
@output_option
@_options
def list_members(output: str, endpoints_text: str, timeout_s: float) -> None:
    """Show every member: addresses, voter or learner, and how far it has replicated
    (--output json: the leader's `GET /v1/members` answer)."""
    with _reported_errors():
        view = _client(endpoints_text, timeout_s).members()
    if output == "json":
        echo_json(view)
        return
    click.echo(render_members_table(view))


@member.command("add")
@click.argument("node_id", metavar="ID", type=click.IntRange(1))
@click.argument("raft_address")
@click.argument("http_address")
@click.option("--learner", is_flag=True, help="Keep it a learner (replicates, never votes).")
@_options
def add_member(
    node_id: int,
    raft_address: str,
    http_address: str,
    learner: bool,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Add node ID at RAFT_ADDRESS / HTTP_ADDRESS: it joins as a learner, catches up and is
    promoted to voter. Start the node itself with `kvraft serve --id ID ... --join URL`."""
    with _reported_errors():
        view = _client(endpoints_text, timeout_s).add_member(
            node_id, raft_address, http_address, voter=not learner
        )
    click.echo(render_members_table(view))


@member.command("remove")
@click.argument("node_id", metavar="ID", type=click.IntRange(1))
@_options
def remove_member(node_id: int, endpoints_text: str, timeout_s: float) -> None:
    """Remove node ID (the leader hands leadership over first if it is the one removed)."""
    with _reported_errors():
        view = _client(endpoints_text, timeout_s).remove_member(node_id)
    click.echo(render_members_table(view))
    click.echo(f"node {node_id} is no longer a member; it can be stopped", err=True)


@click.group()
def leader() -> None:
    """Move leadership."""


@leader.command("transfer")
@click.option("--to", "target", type=click.IntRange(1), default=None, help="The new leader.")
@_options
def transfer(target: int | None, endpoints_text: str, timeout_s: float) -> None:
    """Hand leadership to --to (default: the most caught-up voter)."""
    with _reported_errors():
        answer = _client(endpoints_text, timeout_s).transfer_leadership(target)
    click.echo(f"leader: {_text(answer.get('leader_id'))}")
