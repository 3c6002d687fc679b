"""`kvraft user|role|auth`: users, roles and the authentication switch (#20).

Each command is one or two calls of `kvraft.client.KVClient` (`user_put`, `role_put`, ...),
so it takes the usual client options, `--user`/`--token` included: once authentication is
enabled these commands need a user with an admin role (root). A new password is asked on the
terminal twice, or read from stdin with `--password-stdin` (one line), never from the command
line, where other users of the machine could see it.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from kvraft.client import KVClient
from kvraft.commands.kv import (
    _client_options,
    display_text,
    echo_json,
    make_client,
    output_option,
    reported_errors,
)

__all__ = ["auth", "role", "user"]


def _new_password(password_stdin: bool, name: str) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise click.UsageError("no terminal to ask the new password on: use --password-stdin")
        password = click.prompt(
            f"new password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    if not password:
        raise click.UsageError("the password must not be empty")
    return password


password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the new password from stdin (one line)."
)


def _user_roles(client: KVClient, name: str) -> list[str]:
    for one in client.users():
        if one.get("name") == name:
            return list(one.get("roles", []))
    raise click.ClickException(f"no user {name!r}")


def _role(client: KVClient, name: str) -> dict[str, Any]:
    for one in client.roles():
        if one.get("name") == name:
            return one
    raise click.ClickException(f"no role {name!r}")


# --- kvraft user -------------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Users: a password and roles (auth must be off, or you an admin)."""


@user.command("add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role to give (repeatable).")
@password_stdin_option
@_client_options
def user_add(
    name: str, roles: tuple[str, ...], password_stdin: bool, endpoints_text: str, timeout_s: float
) -> None:
    """Create user NAME (or set its password and roles)."""
    password = _new_password(password_stdin, name)
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        answer = client.user_put(name, password=password, roles=list(roles))
    click.echo(f"user {display_text(name)} roles {answer.get('roles')} at revision "
               f"{answer.get('revision')}")  # fmt: skip


@user.command("passwd")
@click.argument("name")
@password_stdin_option
@_client_options
def user_passwd(name: str, password_stdin: bool, endpoints_text: str, timeout_s: float) -> None:
    """Change the password of user NAME (its tokens stop working)."""
    password = _new_password(password_stdin, name)
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        answer = client.user_put(name, password=password)
    click.echo(f"password of {display_text(name)} changed at revision {answer.get('revision')}")


@user.command("delete")
@click.argument("name")
@_client_options
def user_delete(name: str, endpoints_text: str, timeout_s: float) -> None:
    """Delete user NAME (its tokens stop working)."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        answer = client.user_delete(name)
    click.echo(f"user {display_text(name)} deleted at revision {answer.get('revision')}")


@user.command("grant-role")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@_client_options
def user_grant_role(name: str, role_name: str, endpoints_text: str, timeout_s: float) -> None:
    """Give user NAME the role ROLE."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        roles = _user_roles(client, name)
        if role_name not in roles:
            roles.append(role_name)
        answer = client.user_put(name, roles=roles)
    click.echo(f"user {display_text(name)} roles {answer.get('roles')}")


@user.command("revoke-role")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@_client_options
def user_revoke_role(name: str, role_name: str, endpoints_text: str, timeout_s: float) -> None:
    """Take the role ROLE from user NAME."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        roles = [one for one in _user_roles(client, name) if one != role_name]
        answer = client.user_put(name, roles=roles)
    click.echo(f"user {display_text(name)} roles {answer.get('roles')}")


@user.command("list")
@output_option
@_client_options
def user_list(output: str, endpoints_text: str, timeout_s: float) -> None:
    """Every user and its roles (never a password)."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        users = client.users()
    if output == "json":
        echo_json({"users": users})
        return
    for one in users:
        click.echo(f"{display_text(one['name'])}  {', '.join(one['roles']) or '-'}")


# --- kvraft role -------------------------------------------------------------------------------


@click.group()
def role() -> None:
    """Roles: read / readwrite permissions on key prefixes, and admin."""


@role.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Membership, leadership, backup, auth: everything.")
@_client_options
def role_add(name: str, admin: bool, endpoints_text: str, timeout_s: float) -> None:
    """Create role NAME (no permissions yet; see `role grant`)."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        answer = client.role_put(name, admin=admin)
    click.echo(f"role {display_text(name)} (admin: {answer.get('admin')})")


@role.command("grant")
@click.argument("name")
@click.argument("prefix")
@click.argument("access", type=click.Choice(("read", "readwrite")))
@_client_options
def role_grant(name: str, prefix: str, access: str, endpoints_text: str, timeout_s: float) -> None:
    """Give role NAME ACCESS (read or readwrite) on every key starting with PREFIX."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        current = _role(client, name)
        permissions = [
            (p["prefix"], p["access"]) for p in current["permissions"] if p["prefix"] != prefix
        ]
        permissions.append((prefix, access))
        client.role_put(name, permissions=permissions, admin=bool(current["admin"]))
    click.echo(f"role {display_text(name)}: {access} on {display_text(prefix)!r}")


@role.command("revoke")
@click.argument("name")
@click.argument("prefix")
@_client_options
def role_revoke(name: str, prefix: str, endpoints_text: str, timeout_s: float) -> None:
    """Take role NAME's permission on PREFIX away."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        current = _role(client, name)
        permissions = [
            (p["prefix"], p["access"]) for p in current["permissions"] if p["prefix"] != prefix
        ]
        client.role_put(name, permissions=permissions, admin=bool(current["admin"]))
    click.echo(f"role {display_text(name)}: nothing on {display_text(prefix)!r}")


@role.command("delete")
@click.argument("name")
@_client_options
def role_delete(name: str, endpoints_text: str, timeout_s: float) -> None:
    """Delete role NAME (its users lose it)."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        client.role_delete(name)
    click.echo(f"role {display_text(name)} deleted")


@role.command("list")
@output_option
@_client_options
def role_list(output: str, endpoints_text: str, timeout_s: float) -> None:
    """Every role and its permissions."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        roles = client.roles()
    if output == "json":
        echo_json({"roles": roles})
        return
    for one in roles:
        grants = ", ".join(f"{p['access']} {p['prefix']!r}" for p in one["permissions"])
        admin = "admin" if one["admin"] else ""
        click.echo(display_text(f"{one['name']}  {' '.join(x for x in (admin, grants) if x)}"))


# --- kvraft auth -------------------------------------------------------------------------------


@click.group()
def auth() -> None:
    """The authentication switch (enabling needs user root with an admin role)."""


@auth.command("enable")
@_client_options
def auth_enable(endpoints_text: str, timeout_s: float) -> None:
    """Require a token (or --user) for every request but /healthz, /readyz, /metrics."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        revision = client.auth_enable()
    click.echo(f"authentication enabled at revision {revision}")


@auth.command("disable")
@_client_options
def auth_disable(endpoints_text: str, timeout_s: float) -> None:
    """Let every request in again (users and roles are kept)."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        revision = client.auth_disable()
    click.echo(f"authentication disabled at revision {revision}")


@auth.command("status")
@_client_options
def auth_status(endpoints_text: str, timeout_s: float) -> None:
    """Whether authentication is enabled."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        enabled = client.auth_status()
    click.echo("authentication is " + ("enabled" if enabled else "disabled"))
