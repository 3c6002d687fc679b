"""The `kvraft` command line: a click group; each subcommand lives in `kvraft.commands`."""

from __future__ import annotations

import importlib

import click

from kvraft import __version__

__all__ = ["main"]

# (module under kvraft.commands, attribute): each attribute is a click command or group.
SUBCOMMANDS = (
    ("serve", "serve"),
    ("cluster", "cluster"),
    ("cluster", "dev"),
    ("certs", "certs"),
    ("certs", "peer_secret"),
    ("kv", "put"),
    ("kv", "get"),
    ("kv", "delete"),
    ("kv", "list_keys"),
    ("kv", "status"),
    ("txn", "txn"),
    ("watch", "watch"),
    ("lease", "lease"),
    ("lock", "lock"),
    ("lock", "elect"),
    ("lock", "locks"),
    ("events", "events"),
    ("demo", "demo"),
    ("member", "member"),
    ("member", "leader"),
    ("auth", "user"),
    ("auth", "role"),
    ("auth", "auth"),
    ("backup", "backup"),
    ("backup", "restore"),
    ("sim", "sim"),
    ("chaos", "chaos"),
    ("bench", "bench"),
)


@click.group()
@click.version_option(__version__, prog_name="kvraft")
def main() -> None:
    """kvraft: a Raft-replicated key-value store."""


for _module_name, _attribute in SUBCOMMANDS:
    _module = importlib.import_module(f"kvraft.commands.{_module_name}")
    main.add_command(getattr(_module, _attribute))
