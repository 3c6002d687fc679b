"""`kvraft certs init` and `kvraft peer-secret init`: the credentials of a cluster (issue #20).

`certs init --dir D --nodes N` makes a private CA, a certificate per node naming its node id
and its addresses, and a client certificate (`kvraft.certs`); `--config FILE` takes the node
ids and each node's hosts from a cluster config instead, so the certificates name the
addresses that config's nodes are dialled at (a compose service name, a 127.0.0.x address).
It never overwrites a file: run again, it keeps what exists and issues what is missing with
the same CA.

`peer-secret init FILE` writes a new random peer secret (hex, mode 0600) unless FILE exists,
for a config that names a ``peer_secret_file`` (`kvraft cluster up` makes its own); with
`KVRAFT_PEER_SECRET` set it writes that secret instead, which is how docker compose gives every
node the same one.
"""

from __future__ import annotations

import os
import pathlib

import click

from kvraft.config import (
    NODES_MAX,
    PEER_SECRET_BYTES_MIN,
    ConfigError,
    load_config,
    new_peer_secret,
    read_peer_secret,
    write_peer_secret,
)

__all__ = ["PEER_SECRET_VARIABLE", "certs", "peer_secret"]

PEER_SECRET_VARIABLE = "KVRAFT_PEER_SECRET"
"""`peer-secret init` writes the hex secret in this variable, when set, instead of a new one."""


@click.group()
def certs() -> None:
    """Make the certificates of a cluster with TLS."""


@certs.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    required=True,
    help="Where to write ca.crt, node<N>.crt, client.crt and their keys (created 0700).",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, NODES_MAX),
    default=None,
    help="Node ids 1..N (default 3, or every node of --config).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="A cluster config: a certificate for each of its nodes, naming its hosts.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Another name or address every node certificate carries (repeatable).",
)
def init(
    directory: pathlib.Path,
    nodes: int | None,
    config_path: pathlib.Path | None,
    hosts: tuple[str, ...],
) -> None:
    """Make a CA, a certificate per node (naming its node id, localhost, 127.0.0.1, ::1 and
    its config's hosts) and a client certificate. Existing files are kept."""
    from kvraft.certs import CertificatesError, init_certificates

    hosts_of_node: dict[int, list[str]] = {}
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
        node_ids = [spec.id for spec in config.nodes]
        if nodes is not None and nodes != len(node_ids):
            raise click.UsageError(
                f"--nodes {nodes} contradicts {config_path}, which has {len(node_ids)} nodes"
            )
        hosts_of_node = {spec.id: [spec.http_host, spec.raft_host] for spec in config.nodes}
    else:
        node_ids = list(range(1, (nodes or 3) + 1))
    try:
        files = init_certificates(
            directory, node_ids, hosts_of_node=hosts_of_node, extra_hosts=hosts
        )
    except CertificatesError as error:
        raise click.ClickException(str(error)) from None
    made = set(files.created)
    listed = [
        files.ca_cert,
        directory / "ca.key",
        *(
            path
            for node_id in node_ids
            for path in (files.node_cert(node_id), files.node_key(node_id))
        ),
        files.client_cert,
        files.client_key,
    ]
    for path in listed:
        click.echo(f"{'created' if path in made else 'kept   '}  {path}")
    if len(made) < len(listed):
        click.echo("(existing files are kept: delete one to issue it again)")
    click.echo(
        "use them: [tls] cert/key = node{id}.crt/.key, ca = ca.crt (client_ca = ca.crt to require"
        " client certificates); [peer_tls] the same cert/key with ca = ca.crt;"
        f" clients: --cacert {files.ca_cert}"
    )


@click.group("peer-secret")
def peer_secret() -> None:
    """Make the secret peers prove to each other (for configs you write yourself)."""


@peer_secret.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
def peer_secret_init(file: pathlib.Path) -> None:
    """Write a new random peer secret to FILE (hex, mode 0600), unless FILE already holds one.

    With KVRAFT_PEER_SECRET set (hex, at least 16 bytes), that secret is written instead,
    replacing FILE's if it differs: every node given the same variable gets the same secret.
    The secret is never printed.
    """
    given = os.environ.get(PEER_SECRET_VARIABLE, "").strip()
    try:
        if given:
            try:
                secret = bytes.fromhex(given)
            except ValueError:
                raise click.ClickException(f"{PEER_SECRET_VARIABLE} is not hex") from None
            if len(secret) < PEER_SECRET_BYTES_MIN:
                raise click.ClickException(
                    f"{PEER_SECRET_VARIABLE} holds {len(secret)} bytes; at least"
                    f" {PEER_SECRET_BYTES_MIN} are needed"
                )
            if file.exists() and read_peer_secret(file) == secret:
                click.echo(f"{file} already holds the secret in {PEER_SECRET_VARIABLE}")
                return
            file.parent.mkdir(parents=True, exist_ok=True)
            write_peer_secret(file, secret)
            click.echo(f"wrote the secret in {PEER_SECRET_VARIABLE} to {file} (mode 0600)")
            return
        if file.exists():
            read_peer_secret(file)  # it must be usable, or the nodes would refuse to start
            click.echo(f"kept the peer secret in {file}")
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        write_peer_secret(file, new_peer_secret())
        click.echo(f"wrote a new peer secret to {file} (mode 0600)")
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{file}: {error.strerror or error}") from None
