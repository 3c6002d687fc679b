"""`kvraft watch`: print the changes under a prefix (or of one key) as they happen.

Built on `KVClient.watch`, so it resumes on another node when its node dies and shows
every change once, in order. By default one line per change, for people:

    put KEY VALUE
    delete KEY

with the key and value shown as text, anything unprintable (or not UTF-8) escaped, so a
line is always one line. `--json` prints each event as the server's JSON object instead
(`type`, `key`, `value_b64`, `revision`, `prev_revision`), one per line, for programs.
Ctrl-C ends it with status 0. If the history it needs was compacted (after a long outage,
or an old `--from-revision`) it says so and exits 1: list the keys again and watch from
the list's revision + 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from kvraft.client import WatchCompacted, WatchEvent
from kvraft.commands.kv import client_options, display_text, make_client, reported_errors

__all__ = ["WATCH_TIMEOUT_S_DEFAULT", "format_event", "watch"]

WATCH_TIMEOUT_S_DEFAULT = 60.0
"""How long `kvraft watch` keeps trying while no node serves it, once it has been served:
long enough to ride out a restart of the whole local cluster, short enough to notice a dead
one. Before any node has served it, it gives up when no member has answered for
`UNREACHABLE_TIMEOUT_S` (3 s), like the other client commands: wrong endpoints or a stopped
cluster are reported at once."""


def format_event(event: WatchEvent, as_json: bool = False) -> str:
    """One output line for `event`: `put KEY VALUE`, `delete KEY`, or its JSON object."""
    if as_json:
        return json.dumps(event.to_json(), ensure_ascii=False)
    key = display_text(event.key or "")
    if event.type == "put":
        value = (event.value or b"").decode("utf-8", "backslashreplace")
        return f"put {key} {display_text(value)}"
    if event.type == "delete":
        return f"delete {key}"
    return f"{event.type} {event.revision}"


@click.command()
@click.argument("prefix", default="")
@click.option("--key", default=None, help="Watch this one key instead of a prefix.")
@click.option(
    "--from-revision",
    "from_revision",
    type=click.IntRange(min=1),
    default=None,
    help="Start at this revision (default: changes from now on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON object.")
@client_options(WATCH_TIMEOUT_S_DEFAULT, tls_key_flag="--tls-key")  # --key: the key to watch
def watch(
    prefix: str,
    key: str | None,
    from_revision: int | None,
    as_json: bool,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Print every change of the keys starting with PREFIX (all keys if omitted), or of
    --key, as it happens, until Ctrl-C."""
    if key is not None and prefix:
        raise click.UsageError("give PREFIX or --key, not both")
    client = make_client(endpoints_text, timeout_s)
    events = client.watch(prefix, key=key, start_revision=from_revision)
    try:
        with contextlib.closing(events), reported_errors():
            try:
                for event in events:
                    click.echo(format_event(event, as_json))
            except WatchCompacted as error:
                raise click.ClickException(
                    f"history compacted: changes up to revision {error.compact_revision} are "
                    "gone; run `kvraft list` and watch again from a later --from-revision"
                ) from None
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # The reader went away (`kvraft watch | head`): stop quietly, as other tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
