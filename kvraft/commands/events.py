"""`kvraft events`: what every member of the cluster lived through, merged.

Asks one of `--endpoints` for the members, reads each member's `GET /v1/events`
(`kvraft.event_stream.merged_events`) and prints one line per event, oldest first:

    12:03:04.512 node 2 term 3 leader_elected leader_id=2 no_leader_ms=1187.4

`--json` prints each event as the node's JSON object instead (seq, time, node_id, term, type,
fields). `--follow` keeps printing as events happen (a member that goes down is followed again
when it returns) until Ctrl-C; without it, the events the members kept, sorted by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import ssl
import sys
from typing import Any

import click

from kvraft.client import ClientError, KVClient, normalize_endpoint
from kvraft.commands.kv import client_options, make_client, reported_errors, tls_ssl_context
from kvraft.event_stream import merged_events

__all__ = ["events", "format_event"]

EVENTS_TIMEOUT_S_DEFAULT = 5.0
"""How long each member may take to answer."""


def format_event(event: dict[str, Any], as_json: bool = False) -> str:
    """One output line for `event`."""
    if as_json:
        return json.dumps(event, separators=(",", ":"))
    moment = datetime.datetime.fromtimestamp(float(event.get("time", 0)))
    fields = " ".join(f"{name}={value}" for name, value in (event.get("fields") or {}).items())
    return (
        f"{moment:%H:%M:%S.%f}"[:-3]
        + f" node {event.get('node_id')} term {event.get('term')} {event.get('type')} {fields}"
    ).rstrip()


async def _print_events(
    endpoints: list[str],
    follow: bool,
    as_json: bool,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    client: KVClient | None = None,
) -> int:
    printed = 0

    async def authorization() -> str | None:
        # The client fetches (and renews) a token when --user or --token was given (#20).
        return None if client is None else await asyncio.to_thread(client.authorization)

    async for event in merged_events(
        endpoints,
        follow=follow,
        timeout_s=timeout_s,
        ssl_context=ssl_context,
        authorization=authorization,
    ):
        click.echo(format_event(event, as_json))
        printed += 1
    return printed


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object.")
@client_options(EVENTS_TIMEOUT_S_DEFAULT)
def events(follow: bool, as_json: bool, endpoints_text: str, timeout_s: float) -> None:
    """Print the events of every member (elections, leaders, peers, snapshots, progress),
    merged in time order."""
    try:
        endpoints = [normalize_endpoint(part) for part in endpoints_text.split(",") if part.strip()]
    except ClientError as error:
        raise click.BadParameter(error.message, param_hint="--endpoints") from None
    client = make_client(endpoints_text, timeout_s)
    try:
        with reported_errors():  # a wrong --user password, say
            printed = asyncio.run(
                _print_events(endpoints, follow, as_json, timeout_s, tls_ssl_context(), client)
            )
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # The reader went away (`kvraft events | head`): stop quietly, as other tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if not printed and not follow:
        raise click.ClickException(f"no node answered at {', '.join(endpoints)}")
