"""`kvraft put|get|delete|list|status`: the key-value store from the command line.

Every command talks to the cluster through `kvraft.client.KVClient`, so it inherits its
failover, retry and safety rules. Output is for people except `get`, which writes the raw
value to stdout so it can be piped. Failures print one line to stderr and exit 1 (2 for
usage errors, as click does).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import click

from kvraft.client import (
    ATTEMPT_TIMEOUT_S_DEFAULT,
    CONSISTENCY_LEVELS,
    LIST_LIMIT_MAX,
    LIST_PAGE_SIZE_DEFAULT,
    TIMEOUT_S_DEFAULT,
    ClientError,
    ConditionFailed,
    Fence,
    Item,
    KVClient,
    KVError,
    OutcomeUnknown,
    ProtocolError,
    Unavailable,
)

__all__ = [
    "ENDPOINTS_DEFAULT",
    "ENDPOINTS_ENV",
    "LAG_ENTRIES_WARN",
    "LIST_SHOWN_MAX",
    "STATUS_ATTEMPT_TIMEOUT_S",
    "TLS_OPTIONS",
    "UNREACHABLE_TIMEOUT_S",
    "VALUE_INPUT_BYTES_MAX",
    "VALUE_PREVIEW_CHARS_MAX",
    "WATCH_INTERVAL_S_MIN",
    "auth_client_options",
    "delete",
    "display_text",
    "echo_json",
    "get",
    "item_json",
    "list_keys",
    "output_option",
    "put",
    "render_status_table",
    "status",
    "status_json",
    "tls_client_options",
    "tls_ssl_context",
]

ENDPOINTS_ENV = "KVRAFT_ENDPOINTS"
"""Environment variable read when `--endpoints` is not given."""

TLS_OPTIONS = (
    ("cacert", "KVRAFT_CACERT", "CA certificate (PEM) to verify https:// endpoints with"),
    ("cert", "KVRAFT_CERT", "Client certificate (PEM), for a cluster that requires one"),
    ("key", "KVRAFT_KEY", "The client certificate's private key (PEM)"),
)
"""`--cacert`, `--cert`, `--key`: (name, environment variable, help) of each, taken by every
client command (`client_options`) and read back with `tls_client_options`."""

ENDPOINTS_DEFAULT = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003"
"""The local cluster that `kvraft cluster up` starts by default."""

VALUE_INPUT_BYTES_MAX = 64 * 1024 * 1024
"""The most `put --file` / stdin reads: the largest value a cluster may be configured to
accept. Refusing early beats reading a mistaken multi-gigabyte file into memory."""

VALUE_PREVIEW_CHARS_MAX = 60
"""`list` shows at most this many characters of each value, so one line stays one line."""

LIST_SHOWN_MAX = 100_000
"""The most keys one `list` prints; a larger dump belongs in a program using the client."""

WATCH_INTERVAL_S_MIN = 0.1
"""`status --watch` refreshes at most ten times a second: faster only loads the cluster."""

STATUS_ATTEMPT_TIMEOUT_S = 2.0
"""How long `status` waits for one node: a frozen node must not stall the whole table."""

UNREACHABLE_TIMEOUT_S = 3.0
"""A command gives up when no member has given any HTTP answer for this long (all refuse
connections or time out), naming what each endpoint did, rather than retrying for its whole
`--timeout` (120 s for `member`). A cluster in an election still answers (503), so this
only cuts short the wait on a cluster that is down or an endpoint list that is wrong."""

LAG_ENTRIES_WARN = 1000
"""A node whose applied index trails the highest commit index seen by more than this many
entries is shown as lagging (it is catching up, e.g. after a restart)."""

_F = TypeVar("_F", bound=Callable[..., Any])


# --- shared options and error handling ---------------------------------------------------------


def _remember_tls_option(ctx: click.Context, param: click.Parameter, value: object) -> None:
    # Kept in the context rather than passed to the command: every client command takes
    # them, and `make_client` reads them, without each command's signature naming them
    # (and `--key` without clashing with the commands' KEY argument).
    if value is not None:
        ctx.meta[f"kvraft.{param.name}"] = value


def tls_client_options() -> dict[str, Any]:
    """The `cacert`, `cert` and `key` given to the running command (flags or environment),
    as keyword arguments for `KVClient`; empty outside a command or when none was given.
    (`tls_ssl_context` turns them into the context the client commands use.)"""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {
        name: ctx.meta[f"kvraft.tls_{name}"]
        for name, _, _ in TLS_OPTIONS
        if f"kvraft.tls_{name}" in ctx.meta
    }


def tls_ssl_context() -> ssl.SSLContext | None:
    """The SSL context the TLS options describe (None: none given), for commands that speak
    HTTP without `KVClient`; a file that cannot be used is a usage error."""
    from kvraft.tls import TlsFileError, https_client_context

    options = tls_client_options()
    if not options:
        return None
    try:
        return https_client_context(options.get("cacert"), options.get("cert"), options.get("key"))
    except TlsFileError as error:
        # The setting is the option's name: "cacert", or "cert/key" for a pair at odds.
        hint = "/".join(f"'--{name}'" for name in error.setting.split("/"))
        raise click.BadParameter(error.detail, param_hint=hint) from None


USER_ENV = "KVRAFT_USER"
PASSWORD_ENV = "KVRAFT_PASSWORD"
TOKEN_ENV = "KVRAFT_TOKEN"
"""Who a client command is, on a cluster with authentication enabled (#20): `--user` (the
password from $KVRAFT_PASSWORD, else asked for on the terminal) or `--token`."""


def _remember_auth_option(ctx: click.Context, param: click.Parameter, value: object) -> None:
    if value:
        ctx.meta[f"kvraft.{param.name}"] = value


def auth_client_options() -> dict[str, Any]:
    """`user` and `password`, or `token`, for `KVClient`, from the running command's
    `--user` / `--token` (or their variables); the password from $KVRAFT_PASSWORD or a
    prompt. Empty when neither was given (a cluster without auth)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    token = ctx.meta.get("kvraft.auth_token")
    user = ctx.meta.get("kvraft.auth_user")
    if user is None:
        return {} if token is None else {"token": token}
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise click.UsageError(
                f"--user {user}: set ${PASSWORD_ENV} (no terminal to ask the password on)"
            )
        password = click.prompt(f"password for {user}", hide_input=True, err=True)
    return {"user": user, "password": password}


def client_options(timeout_s_default: float, *, tls_key_flag: str = "--key") -> Callable[[_F], _F]:
    """The `--endpoints`, `--timeout`, `--cacert`, `--cert` and `--key` options every client
    command takes (the last three are read with `tls_client_options`). A command whose own
    `--key` means a key of the store (`kvraft watch --key K`) names the private key's option
    `tls_key_flag` instead (`--tls-key`; the variable stays KVRAFT_KEY)."""

    def decorate(command: _F) -> _F:
        command = click.option(
            "--token",
            "auth_token",
            envvar=TOKEN_ENV,
            default=None,
            expose_value=False,
            callback=_remember_auth_option,
            help=f"A bearer token (from POST /v1/auth/token) instead of --user; env {TOKEN_ENV}.",
        )(command)
        command = click.option(
            "--user",
            "auth_user",
            envvar=USER_ENV,
            default=None,
            expose_value=False,
            callback=_remember_auth_option,
            help=f"Authenticate as this user (password: ${PASSWORD_ENV}, else asked); env "
            f"{USER_ENV}.",
        )(command)
        for name, variable, text in reversed(TLS_OPTIONS):
            command = click.option(
                tls_key_flag if name == "key" else f"--{name}",
                f"tls_{name}",
                envvar=variable,
                type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
                default=None,
                expose_value=False,
                callback=_remember_tls_option,
                help=f"{text}; env {variable}.",
            )(command)
        command = click.option(
            "--timeout",
            "timeout_s",
            type=click.FloatRange(min=0, min_open=True),
            default=timeout_s_default,
            show_default=True,
            help="Seconds to keep trying across all endpoints.",
        )(command)
        command = click.option(
            "--endpoints",
            "endpoints_text",
            envvar=ENDPOINTS_ENV,
            default=ENDPOINTS_DEFAULT,
            show_default=True,
            help=f"Comma-separated node URLs (or host:port); env {ENDPOINTS_ENV}.",
        )(command)
        return command

    return decorate


_client_options = client_options(TIMEOUT_S_DEFAULT)


def _parse_fence(
    context: click.Context, parameter: click.Parameter, text: str | None
) -> Fence | None:
    if not text:
        return None
    name, _, token = text.rpartition(":")
    if not name or not token.isascii() or not token.isdecimal() or int(token) < 1:
        raise click.BadParameter("give LOCK:TOKEN, as `kvraft lock` passes it", param=parameter)
    return Fence(name, int(token))


FENCE_ENV = "KVRAFT_FENCE"
"""Where `--fence` comes from when not given: `kvraft lock` sets it for its command."""

fence_option = click.option(
    "--fence",
    type=str,
    default=None,
    envvar=FENCE_ENV,
    callback=_parse_fence,
    metavar="LOCK:TOKEN",
    help="Apply only while TOKEN holds LOCK (412 fence_failed otherwise); default "
    f"${FENCE_ENV}, which `kvraft lock` sets for its command.",
)
"""`--fence LOCK:TOKEN` of every write command."""


def make_client(
    endpoints_text: str, timeout_s: float, attempt_timeout_s: float | None = None
) -> KVClient:
    endpoints = [part for part in endpoints_text.split(",") if part.strip()]
    try:
        return KVClient(
            endpoints,
            timeout_s=timeout_s,
            attempt_timeout_s=min(timeout_s, attempt_timeout_s or ATTEMPT_TIMEOUT_S_DEFAULT),
            unreachable_timeout_s=UNREACHABLE_TIMEOUT_S,
            ssl_context=tls_ssl_context(),
            **auth_client_options(),
        )
    except ClientError as error:
        raise click.BadParameter(error.message, param_hint="--endpoints") from None


@contextmanager
def reported_errors(outcome_unknown_hint: str = "") -> Iterator[None]:
    """Turn a client error into one line on stderr and exit status 1."""
    try:
        yield
    except ConditionFailed as error:
        raise click.ClickException(str(error)) from None
    except OutcomeUnknown as error:
        raise click.ClickException(f"outcome unknown: {error}{outcome_unknown_hint}") from None
    except Unavailable as error:
        raise click.ClickException(f"unavailable: {error}") from None
    except ProtocolError as error:
        raise click.ClickException(f"bad answer from the server: {error}") from None
    except ClientError as error:
        raise click.ClickException(f"rejected ({error.code}): {error.message}") from None
    except KVError as error:  # any future subclass
        raise click.ClickException(str(error)) from None


output_option = click.option(
    "--output",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="text: for people; json: one JSON document on one line, for scripts.",
)
"""`--output text|json`, for the commands whose answer a script may want to read."""


def echo_json(document: object) -> None:
    """One JSON document on one line (ASCII only: safe on any terminal and in any pipe)."""
    click.echo(json.dumps(document, sort_keys=True))


def item_json(key: str, value: bytes, revision: int) -> dict[str, object]:
    """A key as the HTTP API's list shows it: the value in base64, since it is bytes."""
    return {"key": key, "value_b64": base64.b64encode(value).decode("ascii"), "revision": revision}


def display_text(text: str) -> str:
    """`text` safe to print on a terminal: control and other unprintable characters are
    escaped, so a stored key or value cannot move the cursor or inject escape sequences."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _consistency(stale: bool) -> str:
    return CONSISTENCY_LEVELS[1] if stale else CONSISTENCY_LEVELS[0]


# --- put / get / delete ------------------------------------------------------------------------


def _read_value(stream: IO[bytes], source: str) -> bytes:
    data = stream.read(VALUE_INPUT_BYTES_MAX + 1)
    if len(data) > VALUE_INPUT_BYTES_MAX:
        raise click.ClickException(f"{source} holds more than {VALUE_INPUT_BYTES_MAX} bytes")
    return data


@click.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--file",
    "value_file",
    type=click.File("rb"),
    default=None,
    help="Read the value from this file ('-' for stdin) instead of VALUE.",
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=0),
    default=None,
    help="Write only if the key is at this revision.",
)
@click.option("--if-absent", is_flag=True, help="Write only if the key does not exist.")
@click.option(
    "--idempotency-key",
    default=None,
    help="Makes retries of this write exactly-once (reuse it to retry the same write).",
)
@click.option(
    "--lease",
    "lease_id",
    type=click.IntRange(min=1),
    default=None,
    help="Attach the key to this lease: it is deleted when the lease is revoked or expires.",
)
@fence_option
@_client_options
def put(
    key: str,
    value: str | None,
    value_file: IO[bytes] | None,
    if_revision: int | None,
    if_absent: bool,
    idempotency_key: str | None,
    lease_id: int | None,
    fence: Fence | None,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Store VALUE under KEY (VALUE '-' reads stdin) and print the write's revision."""
    if (value is None) == (value_file is None):
        raise click.UsageError("give exactly one of VALUE or --file")
    if if_revision is not None and if_absent:
        raise click.UsageError("give --if-revision or --if-absent, not both")
    if value_file is not None:
        data = _read_value(value_file, value_file.name)
    elif value == "-":
        data = _read_value(sys.stdin.buffer, "stdin")
    else:
        assert value is not None
        # os.fsencode gives back the exact bytes the shell passed, even if not UTF-8.
        data = os.fsencode(value)
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        revision = client.put(
            key,
            data,
            if_revision=if_revision,
            if_absent=if_absent,
            idempotency_key=idempotency_key,
            lease=lease_id,
            fence=fence,
        )
    click.echo(f"revision {revision}")


@click.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read from the answering node without a quorum check.")
@click.option("--show-revision", is_flag=True, help="Also print the key's revision to stderr.")
@output_option
@_client_options
def get(
    key: str,
    stale: bool,
    show_revision: bool,
    output: str,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Write the value of KEY to stdout, exactly as stored (exit 1 if there is none); with
    --output json, {"key", "value_b64", "revision"}."""
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        found = client.get(key, consistency=_consistency(stale))
    if found is None:
        raise click.ClickException(f"key {display_text(key)!r} not found")
    value, revision = found
    if output == "json":
        echo_json(item_json(key, value, revision))
        return
    sys.stdout.flush()
    stdout = sys.stdout.buffer
    stdout.write(value)
    if stdout.isatty() and not value.endswith(b"\n"):
        stdout.write(b"\n")  # keep the shell prompt off the value's last line
    stdout.flush()
    if show_revision:
        click.echo(f"revision {revision}", err=True)


@click.command()
@click.argument("key", required=False)
@click.option(
    "--prefix",
    default=None,
    help="Delete every key starting with this prefix, in one revision, instead of KEY "
    "(--prefix '' deletes every key).",
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=0),
    default=None,
    help="Delete only if the key is at this revision.",
)
@click.option("--idempotency-key", default=None, help="Makes retries of this delete exactly-once.")
@fence_option
@_client_options
def delete(
    key: str | None,
    prefix: str | None,
    if_revision: int | None,
    idempotency_key: str | None,
    fence: Fence | None,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Delete KEY (or, with --prefix, a range). Deleting a key that does not exist succeeds
    and says so."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give exactly one of KEY or --prefix")
    client = make_client(endpoints_text, timeout_s)
    if prefix is not None:
        if if_revision is not None:
            raise click.UsageError("--if-revision is for one key; use `kvraft txn` for a range")
        with reported_errors():
            revision, count = client.delete_prefix(
                prefix, idempotency_key=idempotency_key, fence=fence
            )
        click.echo(f"deleted {count} keys under {display_text(prefix)!r} at revision {revision}")
        return
    assert key is not None
    with reported_errors():
        revision, deleted = client.delete(
            key, if_revision=if_revision, idempotency_key=idempotency_key, fence=fence
        )
    shown = display_text(key)
    if deleted:
        click.echo(f"deleted {shown!r} at revision {revision}")
    else:
        click.echo(f"{shown!r} did not exist (revision {revision})")


# --- list --------------------------------------------------------------------------------------


def _preview(value: bytes) -> str:
    text = display_text(value.decode("utf-8", "backslashreplace"))
    if len(text) > VALUE_PREVIEW_CHARS_MAX:
        return text[: VALUE_PREVIEW_CHARS_MAX - 1] + "…"
    return text


def _format_items(items: Sequence[Item]) -> list[str]:
    keys = [display_text(item.key) for item in items]
    revisions = [str(item.revision) for item in items]
    key_width = max([len("KEY"), *map(len, keys)])
    revision_width = max([len("REVISION"), *map(len, revisions)])
    lines = [f"{'KEY':<{key_width}}  {'REVISION':>{revision_width}}  VALUE"]
    for key, revision, item in zip(keys, revisions, items, strict=True):
        lines.append(f"{key:<{key_width}}  {revision:>{revision_width}}  {_preview(item.value)}")
    return lines


@click.command("list")
@click.argument("prefix", default="")
@click.option(
    "--limit",
    type=click.IntRange(1, LIST_SHOWN_MAX),
    default=LIST_PAGE_SIZE_DEFAULT,
    show_default=True,
    help="Show at most this many keys.",
)
@click.option("--keys-only", is_flag=True, help="Print only the keys, one per line.")
@click.option("--stale", is_flag=True, help="Read from the answering node without a quorum check.")
@output_option
@_client_options
def list_keys(
    prefix: str,
    limit: int,
    keys_only: bool,
    stale: bool,
    output: str,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """List the keys starting with PREFIX (all keys if omitted), in key order; with --output
    json, {"items": [{"key", "value_b64", "revision"}], "continuation"} (continuation: where
    more keys may follow --limit, else null)."""
    client = make_client(endpoints_text, timeout_s)
    shown: list[Item] = []
    continuation: str | None = None
    with reported_errors():
        while len(shown) < limit:
            page_size = min(limit - len(shown), LIST_LIMIT_MAX)
            items, continuation = client.list(prefix, page_size, continuation, _consistency(stale))
            shown.extend(items)
            if continuation is None:
                break
    if output == "json":
        listed = [item_json(item.key, item.value, item.revision) for item in shown]
        echo_json({"items": listed, "continuation": continuation})
        return
    if keys_only:
        for item in shown:
            click.echo(display_text(item.key))
    elif shown:
        for line in _format_items(shown):
            click.echo(line)
    if continuation is not None:
        click.echo(
            f"(stopped at --limit {limit}; more keys may follow {display_text(continuation)!r})",
            err=True,
        )
    elif not shown:
        click.echo(f"no keys start with {display_text(prefix)!r}", err=True)


# --- status ------------------------------------------------------------------------------------


def status_json(results: Mapping[str, Mapping[str, Any] | KVError]) -> dict[str, object]:
    """`status_all` results as JSON: {"nodes": {endpoint: status, or {"error": message}}}."""
    return {
        "nodes": {
            endpoint: {"error": str(result)} if isinstance(result, KVError) else dict(result)
            for endpoint, result in results.items()
        }
    }


def _status_json(client: KVClient, watch: bool, interval_s: float, count: int) -> None:
    refreshes = 0
    try:
        while True:
            started_s = time.monotonic()
            results = client.status_all()
            echo_json(status_json(results))
            refreshes += 1
            if not watch and all(isinstance(result, KVError) for result in results.values()):
                raise click.ClickException(f"no node answered; tried {', '.join(results)}")
            if not watch or (count and refreshes >= count):
                return
            time.sleep(max(0.0, interval_s - (time.monotonic() - started_s)))
    except KeyboardInterrupt:
        return


_STATUS_COLUMNS = ("NODE", "ENDPOINT", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "HEALTH")


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "?"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return display_text(value[:40]) or "?"
    return "?"


def _int_field(status: Mapping[str, Any], name: str) -> int | None:
    value = status.get(name)
    return value if type(value) is int else None


def render_status_table(results: Mapping[str, Mapping[str, Any] | KVError]) -> str:
    """A table of every node's status (rows in the order given); a node that did not
    answer gets a row saying why. Status fields are untrusted and shown defensively."""
    commits = [
        commit
        for result in results.values()
        if not isinstance(result, KVError)
        for commit in [_int_field(result, "commit_index")]
        if commit is not None
    ]
    commit_max = max(commits, default=0)
    rows: list[tuple[str, ...]] = []
    for endpoint, result in results.items():
        if isinstance(result, KVError):
            reason = str(result).removeprefix(f"{endpoint}: ")
            rows.append(("?", endpoint, "-", "-", "-", "-", "-", f"unreachable ({reason})"))
            continue
        leader_id = _int_field(result, "leader_id")
        applied = _int_field(result, "applied_index")
        if leader_id == 0:
            health = "no leader"
        elif applied is not None and commit_max - applied > LAG_ENTRIES_WARN:
            health = f"lagging ({commit_max - applied} entries behind)"
        else:
            health = "ok"
        if result.get("membership_change_pending") is True:
            # Worth seeing at a glance: the next change is refused until this one settles.
            health += "; membership change pending"
        rows.append(
            (
                _cell(result.get("id")),
                endpoint,
                _cell(result.get("role")),
                _cell(result.get("term")),
                "-" if leader_id == 0 else _cell(leader_id),
                _cell(result.get("commit_index")),
                _cell(result.get("applied_index")),
                health,
            )
        )
    widths = [
        max(len(column), *(len(row[index]) for row in rows))
        for index, column in enumerate(_STATUS_COLUMNS)
    ]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_STATUS_COLUMNS, *rows]
    ]
    return "\n".join(lines)


@click.command()
@click.option("--watch", is_flag=True, help="Refresh the table until Ctrl-C.")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=WATCH_INTERVAL_S_MIN),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    help="With --watch: stop after this many refreshes (0: until Ctrl-C).",
)
@output_option
@_client_options
def status(
    watch: bool,
    interval_s: float,
    count: int,
    output: str,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Show every node: id, role, term, leader, commit and applied index, health (and
    whether a membership change is still pending). With --output json: per endpoint, its
    `/v1/status` or {"error"}; with --watch, one such line per refresh."""
    client = make_client(endpoints_text, timeout_s, STATUS_ATTEMPT_TIMEOUT_S)
    if output == "json":
        _status_json(client, watch, interval_s, count)
        return
    if not watch:
        results = client.status_all()
        click.echo(render_status_table(results))
        if all(isinstance(result, KVError) for result in results.values()):
            raise click.ClickException(f"no node answered; tried {', '.join(results)}")
        return
    redraw = sys.stdout.isatty()
    lines_drawn = 0
    refreshes = 0
    try:
        while True:
            started_s = time.monotonic()
            table = render_status_table(client.status_all())
            header = (
                f"kvraft status at {time.strftime('%H:%M:%S')} "
                f"(every {interval_s:g} s; Ctrl-C to stop)"
            )
            text = f"{header}\n{table}"
            if redraw and lines_drawn:
                # Move to the start of the previous table and clear to the end of the screen.
                click.echo(f"\x1b[{lines_drawn}F\x1b[J", nl=False)
            elif refreshes:
                click.echo()
            click.echo(text)
            lines_drawn = text.count("\n") + 1
            refreshes += 1
            if count and refreshes >= count:
                return
            time.sleep(max(0.0, interval_s - (time.monotonic() - started_s)))
    except KeyboardInterrupt:
        return
