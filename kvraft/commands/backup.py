"""`kvraft backup FILE` and `kvraft restore FILE --data-dir DIR` (format and rules:
`kvraft.backup`)."""

from __future__ import annotations

import datetime
import pathlib
import sys
import time

import click

from kvraft.backup import BackupUnavailable, RestoreError, download_backup, restore_backup
from kvraft.commands.cluster import CLUSTER_NODES_MAX
from kvraft.commands.kv import client_options, make_client, reported_errors, tls_ssl_context

__all__ = ["BACKUP_TIMEOUT_S_DEFAULT", "PROGRESS_INTERVAL_S", "backup", "restore"]

BACKUP_TIMEOUT_S_DEFAULT = 30.0
"""How long `kvraft backup` keeps trying to *start* a download (through an election, say);
a started download takes as long as the data needs."""

PROGRESS_INTERVAL_S = 0.5
"""How often the progress line is redrawn on a terminal."""

_MIB = 1024 * 1024


class _Progress:
    """One progress line on stderr, redrawn in place, only when stderr is a terminal (a log
    file or a pipe gets just the final summary)."""

    def __init__(self) -> None:
        self._shown_at_s = 0.0
        self._enabled = sys.stderr.isatty()
        self._drawn = False

    def __call__(self, received_bytes: int) -> None:
        now_s = time.monotonic()
        if self._enabled and now_s - self._shown_at_s >= PROGRESS_INTERVAL_S:
            self._shown_at_s = now_s
            self._drawn = True
            click.echo(f"\rreceived {received_bytes / _MIB:.1f} MiB", nl=False, err=True)

    def done(self) -> None:
        if self._drawn:
            click.echo("", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@client_options(BACKUP_TIMEOUT_S_DEFAULT)
def backup(file: pathlib.Path, endpoints_text: str, timeout_s: float) -> None:
    """Save a consistent backup of the whole cluster to FILE (from the leader, checksummed;
    FILE appears only once complete)."""
    client = make_client(endpoints_text, timeout_s)
    endpoints = client.endpoints  # validated, normalized
    with reported_errors():
        authorization = client.authorization()  # a token, with --user or --token (#20)
    progress = _Progress()
    try:
        summary = download_backup(
            endpoints,
            file,
            timeout_s=timeout_s,
            progress=progress,
            ssl_context=tls_ssl_context(),
            authorization=authorization,
        )
    except BackupUnavailable as error:
        progress.done()
        raise click.ClickException(f"unavailable: {error}") from None
    except OSError as error:
        progress.done()
        raise click.ClickException(f"{file}: {error.strerror or error}") from None
    progress.done()
    header = summary.header
    click.echo(
        f"backup of cluster {header.cluster_id!r} at revision {header.revision} "
        f"({header.keys} keys, {summary.file_bytes} bytes, from node {header.node_id}) "
        f"written to {file}"
    )


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=pathlib.Path))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    required=True,
    help="An empty (or new) directory: gets cluster.toml and node1..nodeN.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, CLUSTER_NODES_MAX),
    default=3,
    show_default=True,
    help="Voters of the new cluster.",
)
@click.option(
    "--cluster-id",
    default=None,
    help="The new cluster's id (default: a new random one, so it never meets the old nodes).",
)
@click.option(
    "--http-port-base",
    type=click.IntRange(1, 65535),
    default=8001,
    show_default=True,
    help="Node N serves HTTP on this + N - 1.",
)
@click.option(
    "--raft-port-base",
    type=click.IntRange(1, 65535),
    default=7001,
    show_default=True,
    help="Node N talks Raft on this + N - 1.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every node binds.")
def restore(
    file: pathlib.Path,
    data_dir: pathlib.Path,
    nodes: int,
    cluster_id: str | None,
    http_port_base: int,
    raft_port_base: int,
    host: str,
) -> None:
    """Build a new cluster in DIR that starts with exactly the state of the backup FILE."""
    try:
        summary = restore_backup(
            file,
            data_dir,
            nodes=nodes,
            cluster_id=cluster_id,
            http_port_base=http_port_base,
            raft_port_base=raft_port_base,
            host=host,
        )
    except RestoreError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{data_dir}: {error.strerror or error}") from None
    header = summary.header
    taken = datetime.datetime.fromtimestamp(header.created_unix_s).isoformat(timespec="seconds")
    click.echo(
        f"restored revision {header.revision} ({header.keys} keys) of cluster "
        f"{header.cluster_id!r}, taken {taken}, as new cluster {summary.config.cluster_id!r} "
        f"of {nodes} nodes in {data_dir}"
    )
    click.echo(f"start it:  kvraft cluster up --data-dir {data_dir}")
    click.echo(f"     or:   kvraft serve --config {summary.config_path} --id N  (each node)")
