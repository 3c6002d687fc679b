"""`kvraft cluster up|down`: run a local cluster, one OS process per node, and narrate it.

`cluster up` writes (or reuses) `DIR/cluster.toml`, starts every node as
`python -m kvraft serve --config DIR/cluster.toml --id N` in its own session (so a
Ctrl-C in the terminal reaches only this supervisor, which then stops the nodes in
order), and polls every node's `/v1/status` about ten times a second, printing what
changed: elections, nodes becoming unreachable or coming back, processes exiting. It
never restarts a node: killing nodes and watching the cluster cope is the point.

`cluster up --tls` makes the cluster's certificates in `DIR/certs` (`kvraft.certs`: a CA,
one per node, one for clients) and writes `[tls]` (HTTPS, no client certificate required)
and `[peer_tls]` (mutual TLS between peers) into the config; the banner's curl commands then
carry `--cacert`. A resumed cluster keeps whatever its config says.

The narration is sans-IO: `observe(state, snapshot)` is a pure function from the previous
watch state and one poll's observations to the new state and the event lines, so every
rule is tested without processes or sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import click

from kvraft import launcher
from kvraft.client import AsyncKVClient, KVError, normalize_endpoint
from kvraft.config import (
    PEER_SECRET_FILE_NAME,
    ClusterConfig,
    ConfigError,
    PeerTlsSettings,
    TlsSettings,
    load_config,
    local_cluster_config,
    new_peer_secret,
    render_config,
    write_peer_secret,
)
from kvraft.healthcheck import HTTP_URL_FILE_VARIABLE
from kvraft.pidfile import process_start_ticks, running_pid

__all__ = [
    "CERTS_DIR_NAME",
    "CLUSTER_NODES_MAX",
    "CONFIG_FILE_NAME",
    "PIDS_FILE_BYTES_MAX",
    "PIDS_FILE_NAME",
    "POLL_INTERVAL_S",
    "POLL_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ClusterEvent",
    "ClusterSnapshot",
    "NodeObservation",
    "WatchState",
    "cluster",
    "dev",
    "observation_from_status",
    "observe",
    "parse_pids_file",
    "prepare_config",
]

CLUSTER_NODES_MAX = 9
"""The most nodes `cluster up` starts: a local demo; each node is a Python process."""

CONFIG_FILE_NAME = "cluster.toml"
CERTS_DIR_NAME = "certs"
"""`cluster up --tls` keeps the cluster's CA, node and client certificates in `DIR/certs`."""
PIDS_FILE_NAME = "pids"
"""`DIR/pids` lists `node_id pid` per running node, for `cluster down`."""

PIDS_FILE_BYTES_MAX = 4096
"""A pids file is a few short lines; anything longer is not ours."""

POLL_INTERVAL_S = 0.1
"""How often every node's status is polled: fine enough to time an election (hundreds of
milliseconds) without loading the nodes."""

POLL_TIMEOUT_S = 0.5
"""How long one status poll waits for a node; a frozen node delays a round by at most this."""

STOP_TIMEOUT_S = 10.0
"""How long stopping waits for nodes to exit after SIGTERM before it sends SIGKILL: a node
transfers leadership and flushes its log on the way out."""

_DEFAULT_DATA_DIR = pathlib.Path("data/cluster")
_HTTP_PORT_BASE_DEFAULT = 8001
_RAFT_PORT_BASE_DEFAULT = 7001
_HOST_DEFAULT = "127.0.0.1"
_EVERY_INTERFACE = ("0.0.0.0", "::")


# --- the narration (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeObservation:
    """What one poll learned about one node.

    Fields:
        reachable: its `/v1/status` answered.
        role: `leader`, `follower`, `candidate`, `learner` (or `?` if it sent garbage).
        term: its current term (0 if unknown).
        pid: its process id as it reports it (0 if unknown); a new pid means a restart.
    """

    reachable: bool
    role: str = ""
    term: int = 0
    pid: int = 0


UNREACHABLE = NodeObservation(reachable=False)


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """One poll of the whole cluster.

    Fields:
        at_ms: when it was taken (monotonic milliseconds).
        nodes: an observation for every node of the cluster.
        exit_codes: the nodes whose process (started by `cluster up`) has exited, with
            the exit code (negative: killed by that signal).
    """

    at_ms: float
    nodes: Mapping[int, NodeObservation]
    exit_codes: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """One line of narration: `kind` (e.g. `leader_elected`), the node it is about, and the
    `text` shown to the user."""

    kind: str
    node_id: int
    text: str


@dataclass(frozen=True, slots=True)
class WatchState:
    """What the narration remembers between polls.

    Fields:
        nodes: the last observation of each node.
        seen: nodes that have answered at least once.
        exits_reported: nodes whose process exit was already reported.
        quiet_until_back: exited nodes; their unreachability is not reported again.
        leader: (node id, term) of the current leader, or None.
        leaderless_since_ms: since when there has been no leader (None while there is one,
            and before any node has answered).
    """

    nodes: Mapping[int, NodeObservation]
    seen: frozenset[int]
    exits_reported: frozenset[int]
    quiet_until_back: frozenset[int]
    leader: tuple[int, int] | None
    leaderless_since_ms: float | None

    @classmethod
    def initial(cls) -> WatchState:
        """Before the first poll: nothing seen, no leader. The first election is timed from
        the moment the first node answers, not from process start (Python start-up)."""
        return cls({}, frozenset(), frozenset(), frozenset(), None, None)


def observation_from_status(result: Mapping[str, Any] | KVError | None) -> NodeObservation:
    """A node's observation from its `/v1/status` answer (untrusted) or the error."""
    if result is None or isinstance(result, KVError):
        return UNREACHABLE
    role, term, pid = result.get("role"), result.get("term"), result.get("pid")
    return NodeObservation(
        reachable=True,
        role=role if isinstance(role, str) and role.isalpha() and len(role) <= 20 else "?",
        term=term if type(term) is int and term >= 0 else 0,
        pid=pid if type(pid) is int and pid > 0 else 0,
    )


def _leader(nodes: Mapping[int, NodeObservation]) -> tuple[int, int] | None:
    """The node that says it leads in the highest term (a deposed leader in a minority may
    still say so in an older term; Raft allows one leader per term, §5.2)."""
    leaders = [
        (observation.term, -node_id)
        for node_id, observation in nodes.items()
        if observation.reachable and observation.role == "leader"
    ]
    if not leaders:
        return None
    term, negative_id = max(leaders)
    return -negative_id, term


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"code {code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


def observe(state: WatchState, snapshot: ClusterSnapshot) -> tuple[WatchState, list[ClusterEvent]]:
    """The narration of one poll: the new state and the events, in this order: process
    exits, per-node changes (by node id), then leadership."""
    events: list[ClusterEvent] = []
    exits_reported = set(state.exits_reported)
    quiet = set(state.quiet_until_back)
    seen = set(state.seen)
    for node_id in sorted(snapshot.exit_codes):
        if node_id not in exits_reported:
            exits_reported.add(node_id)
            quiet.add(node_id)
            code = snapshot.exit_codes[node_id]
            events.append(
                ClusterEvent(
                    "process_exited",
                    node_id,
                    f"node {node_id} process exited ({_exit_text(code)})",
                )
            )
    for node_id in sorted(snapshot.nodes):
        now = snapshot.nodes[node_id]
        before = state.nodes.get(node_id, UNREACHABLE)
        if now.reachable and not before.reachable:
            if node_id in seen:
                events.append(
                    ClusterEvent("node_back", node_id, f"node {node_id} back ({now.role})")
                )
            else:
                events.append(ClusterEvent("node_up", node_id, f"node {node_id} up ({now.role})"))
            seen.add(node_id)
            quiet.discard(node_id)
        elif before.reachable and not now.reachable:
            if node_id not in quiet:
                events.append(
                    ClusterEvent("node_unreachable", node_id, f"node {node_id} unreachable")
                )
        elif now.reachable:
            if before.pid and now.pid and before.pid != now.pid:
                events.append(
                    ClusterEvent(
                        "node_restarted",
                        node_id,
                        f"node {node_id} restarted (pid {before.pid} -> {now.pid}, {now.role})",
                    )
                )
            elif now.role != before.role and now.role != "leader":
                # Becoming leader is told by the leadership events below.
                events.append(
                    ClusterEvent(
                        "role_changed",
                        node_id,
                        f"node {node_id}: {before.role} -> {now.role} (term {now.term})",
                    )
                )
    leader = _leader(snapshot.nodes)
    leaderless_since_ms = state.leaderless_since_ms
    if state.leader is None and leaderless_since_ms is None and seen:
        leaderless_since_ms = snapshot.at_ms
    if leader != state.leader:
        if leader is None:
            assert state.leader is not None
            old_id, old_term = state.leader
            events.append(
                ClusterEvent("leader_lost", old_id, f"leader lost: node {old_id} (term {old_term})")
            )
            leaderless_since_ms = snapshot.at_ms
        else:
            node_id, term = leader
            if state.leader is not None and state.leader[0] == node_id:
                how = f" again (was term {state.leader[1]})"
            elif state.leader is not None:
                how = f", replacing node {state.leader[0]} (term {state.leader[1]})"
            elif state.leaderless_since_ms is not None:
                waited_ms = snapshot.at_ms - state.leaderless_since_ms
                how = f" after {waited_ms:.0f} ms without a leader"
            else:
                how = ""  # a leader already on the first answer: nothing was timed
            text = f"leader elected: node {node_id} (term {term}){how}"
            events.append(ClusterEvent("leader_elected", node_id, text))
            leaderless_since_ms = None
    new_state = replace(
        state,
        nodes=dict(snapshot.nodes),
        seen=frozenset(seen),
        exits_reported=frozenset(exits_reported),
        quiet_until_back=frozenset(quiet),
        leader=leader,
        leaderless_since_ms=leaderless_since_ms,
    )
    return new_state, events


# --- config and the pids file ----------------------------------------------------------------


def prepare_config(
    data_dir: pathlib.Path,
    *,
    nodes: int | None,
    http_port_base: int | None,
    raft_port_base: int | None,
    host: str | None,
    tls: bool = False,
) -> tuple[ClusterConfig, bool]:
    """Load `data_dir/cluster.toml`, or write a new one; return (config, created).

    Options left None take the file's values (or the defaults for a new file); an option
    given explicitly that contradicts an existing file raises click.UsageError, so a
    second `cluster up` on the same directory resumes the same cluster with its data.
    With `tls`, a new config serves HTTPS and peer mTLS with certificates made in
    `data_dir/certs` (an existing one must already have ``[tls]``; missing certificates
    are made again).
    """
    path = data_dir / CONFIG_FILE_NAME
    wanted_nodes = nodes if nodes is not None else 3
    try:
        if path.exists():
            existing = load_config(path)
            _check_agrees(existing, path, nodes, http_port_base, raft_port_base, host)
            if tls and existing.tls is None:
                raise click.UsageError(
                    f"{path} describes a cluster without TLS: drop --tls, or use another"
                    f" --data-dir, or delete {path} (and its data)"
                )
            if tls:
                _make_certificates(data_dir, existing)
            return existing, False
        # Every new cluster gets its own random peer secret (issue #20), in a file only its
        # owner reads, beside the config; it is never printed or logged.
        secret_path = data_dir / PEER_SECRET_FILE_NAME
        config = local_cluster_config(
            wanted_nodes,
            data_dir,
            http_port_base=http_port_base or _HTTP_PORT_BASE_DEFAULT,
            raft_port_base=raft_port_base or _RAFT_PORT_BASE_DEFAULT,
            host=host or _HOST_DEFAULT,
            peer_secret_file=secret_path.resolve(),
            **(_tls_settings(data_dir) if tls else {}),
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        write_peer_secret(secret_path, new_peer_secret())
        if tls:
            _make_certificates(data_dir, config)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(render_config(config), encoding="utf-8")
        os.replace(temporary, path)  # never leave a half-written config behind
        return load_config(path), True
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror or error}") from None


def _tls_settings(data_dir: pathlib.Path) -> dict[str, Any]:
    """`local_cluster_config`'s `tls` and `peer_tls` for certificates in `data_dir/certs`:
    HTTPS without client certificates, and peer mTLS, each node with its own certificate."""
    certs = data_dir.resolve() / CERTS_DIR_NAME
    cert, key, ca = certs / "node{id}.crt", certs / "node{id}.key", certs / "ca.crt"
    return {"tls": TlsSettings(cert, key, ca=ca), "peer_tls": PeerTlsSettings(cert, key, ca)}


def _make_certificates(data_dir: pathlib.Path, config: ClusterConfig) -> None:
    """The CA, node and client certificates of `config` in `data_dir/certs`, naming each
    node's hosts; what exists is kept (`kvraft.certs`)."""
    from kvraft.certs import CertificatesError, init_certificates

    try:
        init_certificates(
            data_dir / CERTS_DIR_NAME,
            [spec.id for spec in config.nodes],
            hosts_of_node={spec.id: [spec.http_host, spec.raft_host] for spec in config.nodes},
        )
    except CertificatesError as error:
        raise click.ClickException(str(error)) from None


def _client_tls(config: ClusterConfig) -> dict[str, Any]:
    """How `cluster up` itself reaches its nodes: the cluster's CA and, where the nodes
    require client certificates, the first node's own (node certificates may connect)."""
    if config.tls is None:
        return {}
    first = config.tls.for_node(config.nodes[0].id)
    options: dict[str, Any] = {"cacert": first.ca}
    if first.client_ca is not None:
        options.update(cert=first.cert, key=first.key)
    return options


def _check_agrees(
    existing: ClusterConfig,
    path: pathlib.Path,
    nodes: int | None,
    http_port_base: int | None,
    raft_port_base: int | None,
    host: str | None,
) -> None:
    hint = f"use the same options, or another --data-dir, or delete {path} (and its data)"
    if nodes is not None and nodes != len(existing.nodes):
        raise click.UsageError(
            f"{path} describes a cluster of {len(existing.nodes)} nodes, not {nodes}: {hint}"
        )
    if http_port_base is None and raft_port_base is None and host is None:
        return
    wanted = local_cluster_config(
        len(existing.nodes),
        path.parent,
        http_port_base=http_port_base or _HTTP_PORT_BASE_DEFAULT,
        raft_port_base=raft_port_base or _RAFT_PORT_BASE_DEFAULT,
        host=host or _HOST_DEFAULT,
    )
    checks: list[tuple[str, Callable[[Any], object]]] = []
    if http_port_base is not None:
        checks.append(("--http-port-base", lambda spec: spec.http_port))
    if raft_port_base is not None:
        checks.append(("--raft-port-base", lambda spec: spec.raft_port))
    if host is not None:
        checks.append(("--host", lambda spec: (spec.http_host, spec.raft_host)))
    by_id = {spec.id: spec for spec in existing.nodes}
    for option, field_of in checks:
        for spec in wanted.nodes:
            have = by_id.get(spec.id)
            if have is None or field_of(have) != field_of(spec):
                raise click.UsageError(f"{path} contradicts {option}: {hint}")


def parse_pids_file(data: bytes) -> dict[int, int]:
    """`node_id pid` lines -> {node_id: pid}; ValueError for anything else."""
    if len(data) > PIDS_FILE_BYTES_MAX:
        raise ValueError(f"longer than {PIDS_FILE_BYTES_MAX} bytes")
    pids: dict[int, int] = {}
    for number, line in enumerate(data.decode("ascii", "replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(part.isdigit() and part.isascii() for part in parts):
            raise ValueError(f"line {number} is not 'node_id pid'")
        node_id, pid = int(parts[0]), int(parts[1])
        if node_id < 1 or pid < 2 or node_id in pids:
            raise ValueError(f"line {number}: bad or repeated node id or pid")
        pids[node_id] = pid
    return pids


def _read_pids(path: pathlib.Path) -> dict[int, int]:
    try:
        with open(path, "rb") as file:
            data = file.read(PIDS_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror or error}") from None
    try:
        return parse_pids_file(data)
    except ValueError as error:
        raise click.ClickException(f"{path}: not a pids file: {error}") from None


def _is_our_node(pid: int, node_id: int, config_path: pathlib.Path) -> bool:
    """Whether `pid` is still `kvraft serve --config <config_path> --id <node_id>`: a pid
    from an old file may since belong to an unrelated process, which must not be signalled.
    Without /proc (not Linux) only liveness can be checked."""
    cmdline_path = pathlib.Path(f"/proc/{pid}/cmdline")
    if not pathlib.Path("/proc/self/cmdline").exists():
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        arguments = cmdline_path.read_bytes().split(b"\0")
    except OSError:
        return False
    text = [os.fsdecode(argument) for argument in arguments]
    if "serve" not in text or "--config" not in text or "--id" not in text:
        return False
    config_index, id_index = text.index("--config") + 1, text.index("--id") + 1
    if config_index >= len(text) or id_index >= len(text):
        return False
    return os.path.abspath(text[config_index]) == str(config_path) and text[id_index] == str(
        node_id
    )


def _running_nodes(data_dir: pathlib.Path) -> dict[int, int]:
    """{node_id: pid} of every node of `data_dir`'s cluster that is running, whoever started
    it: those in each node's own pid file (written by `serve`, checked against the process's
    start time) and those `cluster up` recorded in DIR/pids (checked against its command)."""
    config_path = data_dir.resolve() / CONFIG_FILE_NAME
    running = {
        node_id: pid
        for node_id, pid in _read_pids(data_dir / PIDS_FILE_NAME).items()
        if _is_our_node(pid, node_id, config_path)
    }
    try:
        config = load_config(config_path) if config_path.exists() else None
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    for spec in config.nodes if config is not None else ():
        pid = running_pid(spec.data_dir)
        if pid is not None:
            running[spec.id] = pid  # the node's own word is the newest
    return running


def _write_pids(path: pathlib.Path, pids: Mapping[int, int]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(f"{node_id} {pid}\n" for node_id, pid in sorted(pids.items())))
    os.replace(temporary, path)


# --- processes -----------------------------------------------------------------------------------


def _start_node(
    config_path: pathlib.Path, node_id: int, log_path: pathlib.Path
) -> subprocess.Popen[bytes]:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    # Its own session: a terminal Ctrl-C reaches only this supervisor, which then stops
    # the nodes with SIGTERM in an orderly way.
    return launcher.start(
        launcher.serve_command(node_id, config_path),
        log_path,
        header=f"--- kvraft cluster up: starting node {node_id} at {stamp} ---",
    )


def _stop_processes(
    processes: Mapping[int, subprocess.Popen[bytes]], echo: Callable[[str], None]
) -> None:
    """SIGTERM every live process, wait up to STOP_TIMEOUT_S, then SIGKILL stragglers."""
    stopped = launcher.stop(dict(sorted(processes.items())), timeout_s=STOP_TIMEOUT_S)
    for node_id, (code, killed) in stopped.items():
        if killed:
            echo(f"node {node_id} did not stop within {STOP_TIMEOUT_S:g} s: SIGKILL")
        echo(f"node {node_id} stopped ({_exit_text(code)})")


def _interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


async def _narrate(
    config: ClusterConfig,
    processes: Mapping[int, subprocess.Popen[bytes]],
    log_paths: Mapping[int, pathlib.Path],
    restart_hint: Callable[[int], str],
    echo: Callable[[str], None],
) -> WatchState:
    """Poll and print events until SIGINT or SIGTERM; return the last watch state."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    endpoint_of = {spec.id: normalize_endpoint(config.url(spec)) for spec in config.nodes}
    async with AsyncKVClient(
        list(endpoint_of.values()),
        timeout_s=POLL_TIMEOUT_S,
        attempt_timeout_s=POLL_TIMEOUT_S,
        connect_timeout_s=POLL_TIMEOUT_S,
        **_client_tls(config),
    ) as client:
        state = WatchState.initial()
        while not stop.is_set():
            started_s = time.monotonic()
            results = await client.status_all()
            exit_codes = {
                node_id: code
                for node_id, process in processes.items()
                if (code := process.poll()) is not None
            }
            snapshot = ClusterSnapshot(
                at_ms=time.monotonic() * 1000,
                nodes={
                    node_id: observation_from_status(results.get(endpoint))
                    for node_id, endpoint in endpoint_of.items()
                },
                exit_codes=exit_codes,
            )
            state, events = observe(state, snapshot)
            for event in events:
                echo(f"{_timestamp()}  {event.text}")
                if event.kind == "process_exited":
                    echo(f"              log: {log_paths[event.node_id]}")
                    # The node's last words usually say why (a port in use, a bad config).
                    echo(
                        f"              last line: {launcher.log_tail(log_paths[event.node_id], 1)}"
                    )
                    echo(f"              restart: {restart_hint(event.node_id)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.0, POLL_INTERVAL_S - (time.monotonic() - started_s))
                )
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signal_number)
    return state


def _banner(
    config: ClusterConfig,
    config_shown: str,
    processes: Mapping[int, subprocess.Popen[bytes]],
    log_paths: Mapping[int, pathlib.Path],
    created: bool,
) -> list[str]:
    action = "created" if created else "resumed from"
    rows = [("NODE", "HTTP", "RAFT", "PID", "LOG")]
    for spec in config.nodes:
        rows.append(
            (
                str(spec.id),
                config.url(spec),
                spec.raft_address,
                str(processes[spec.id].pid),
                str(log_paths[spec.id]),
            )
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    table = [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    first, second = config.nodes[0], config.nodes[-1]
    endpoints = ",".join(config.url(spec) for spec in config.nodes)
    curl = "curl"
    client_flags = ""
    tls_lines: list[str] = []
    if config.tls is not None:
        mine = config.tls.for_node(first.id)
        if mine.ca is not None:
            client_flags += f" --cacert {_shown_path(mine.ca)}"
        if mine.client_ca is not None:
            # The client certificate `--tls` makes sits beside the node certificates.
            client_cert = _shown_path(mine.cert.with_name("client.crt"))
            client_key = _shown_path(mine.key.with_name("client.key"))
            client_flags += f" --cert {client_cert} --key {client_key}"
        curl += client_flags
        what = "clients use HTTPS"
        if mine.client_ca is not None:
            what += " with a client certificate"
        if config.peer_tls is not None:
            what += "; peers use mutual TLS, each with a certificate naming its node id"
        tls_lines.append(what)
    elif config.peer_tls is not None:
        tls_lines.append("peers use mutual TLS, each with a certificate naming its node id")
    return [
        f"kvraft cluster {config.cluster_id!r}: {len(config.nodes)} nodes, config {action} "
        f"{config_shown}",
        (
            f"peers authenticate with the secret in {config.peer_secret_file} (owner-only)"
            if config.peer_secret_file is not None
            else "peers are NOT authenticated: this config names no peer_secret_file"
        ),
        *tls_lines,
        *table,
        "",
        f"restart a killed node:  kvraft serve --config {config_shown} --id N",
        "try:",
        f"  {curl} -X PUT --data-binary hello {config.url(first)}/v1/kv/greeting",
        f"  {curl} {config.url(second)}/v1/kv/greeting",
        f"  {curl} {config.url(first)}/v1/status",
        f"  kvraft status --endpoints {endpoints}{client_flags}",
        "Ctrl-C stops every node.",
        "",
    ]


def _shown_path(path: pathlib.Path) -> str:
    """`path` relative to the working directory when it is under it (shorter to copy)."""
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


# --- commands --------------------------------------------------------------------------------


@click.group()
def cluster() -> None:
    """Run a local cluster of kvraft nodes, one process each."""


@cluster.command()
@click.option(
    "--nodes",
    type=click.IntRange(1, CLUSTER_NODES_MAX),
    default=None,
    help="Number of nodes (default 3, or what DIR/cluster.toml says).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=_DEFAULT_DATA_DIR,
    show_default=True,
    help="Holds cluster.toml, each node's data and logs.",
)
@click.option(
    "--http-port-base",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Node N serves HTTP on this + N - 1 (default {_HTTP_PORT_BASE_DEFAULT}).",
)
@click.option(
    "--raft-port-base",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Node N talks Raft on this + N - 1 (default {_RAFT_PORT_BASE_DEFAULT}).",
)
@click.option("--host", default=None, help=f"Address every node binds (default {_HOST_DEFAULT}).")
@click.option(
    "--tls",
    is_flag=True,
    help=f"A new cluster serves HTTPS and its peers use mutual TLS, with certificates made in"
    f" DIR/{CERTS_DIR_NAME} (curl --cacert DIR/{CERTS_DIR_NAME}/ca.crt).",
)
def up(
    nodes: int | None,
    data_dir: pathlib.Path,
    http_port_base: int | None,
    raft_port_base: int | None,
    host: str | None,
    tls: bool = False,
) -> None:
    """Start a local cluster and narrate its events until Ctrl-C, then stop it."""
    config, created = prepare_config(
        data_dir,
        nodes=nodes,
        http_port_base=http_port_base,
        raft_port_base=raft_port_base,
        host=host,
        tls=tls,
    )
    config_path = data_dir.resolve() / CONFIG_FILE_NAME
    config_shown = str(data_dir / CONFIG_FILE_NAME)
    pids_path = data_dir / PIDS_FILE_NAME
    running = _running_nodes(data_dir)
    if running:
        listed = ", ".join(f"node {node_id} pid {pid}" for node_id, pid in sorted(running.items()))
        raise click.ClickException(
            f"a cluster from {data_dir} is already running ({listed}); "
            f"stop it with: kvraft cluster down --data-dir {data_dir}"
        )
    # Until the narration loop installs its own handlers, SIGTERM must also unwind through
    # the `finally` below rather than kill this process and orphan the nodes.
    signal.signal(signal.SIGTERM, _interrupt)
    log_paths = {spec.id: data_dir / f"node{spec.id}.log" for spec in config.nodes}
    processes: dict[int, subprocess.Popen[bytes]] = {}
    if len(config.nodes) > 1:
        # The health check's URL file names one node: several nodes would overwrite each
        # other's (kvraft.healthcheck). It is for one node per container (`kvraft dev`).
        os.environ.pop(HTTP_URL_FILE_VARIABLE, None)

    def restart_hint(node_id: int) -> str:
        return f"kvraft serve --config {config_shown} --id {node_id}"

    try:
        for spec in config.nodes:
            processes[spec.id] = _start_node(config_path, spec.id, log_paths[spec.id])
        _write_pids(pids_path, {node_id: p.pid for node_id, p in processes.items()})
        for line in _banner(config, config_shown, processes, log_paths, created):
            click.echo(line)
        final_state = asyncio.run(_narrate(config, processes, log_paths, restart_hint, click.echo))
    except KeyboardInterrupt:
        final_state = None  # interrupted before the narration took over: stop all the same
    finally:
        click.echo("stopping the cluster...")
        _stop_processes(processes, click.echo)
        pids_path.unlink(missing_ok=True)
    for node_id, observation in sorted((final_state.nodes if final_state else {}).items()):
        started = processes.get(node_id)
        if observation.reachable and observation.pid and started and observation.pid != started.pid:
            # Restarted by hand: not ours to stop.
            click.echo(
                f"node {node_id} (pid {observation.pid}) was started outside `cluster up` "
                "and is still running"
            )
    click.echo(f"stopped; `kvraft cluster up --data-dir {data_dir}` resumes it with its data")


@cluster.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=_DEFAULT_DATA_DIR,
    show_default=True,
    help="The directory given to `cluster up`.",
)
def down(data_dir: pathlib.Path) -> None:
    """Stop every running node of the cluster in DIR, whoever started it (`cluster up`, or
    `kvraft serve` by hand): each node's pid file, checked against the process, says which."""
    pids_path = data_dir / PIDS_FILE_NAME
    ours = _running_nodes(data_dir)
    # Each process is followed by its start time from here on: once it exits, its pid may
    # be reused at once, and the stranger must not be SIGKILLed below.
    started = {node_id: process_start_ticks(pid) for node_id, pid in ours.items()}
    for node_id, pid in sorted(_read_pids(pids_path).items()):
        if node_id not in ours:
            click.echo(f"node {node_id}: pid {pid} is not running (or is not that node): skipped")
    for pid in ours.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
            os.kill(pid, signal.SIGTERM)
    deadline_s = time.monotonic() + STOP_TIMEOUT_S
    alive = dict(ours)
    while alive and time.monotonic() < deadline_s:
        alive = {
            n: pid
            for n, pid in alive.items()
            if started[n] is not None and process_start_ticks(pid) == started[n]
        }
        if alive:
            time.sleep(POLL_INTERVAL_S)  # these are not our children: no wait() to block on
    for node_id, pid in sorted(alive.items()):
        click.echo(f"node {node_id} (pid {pid}) did not stop within {STOP_TIMEOUT_S:g} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node_id, pid in sorted(ours.items()):
        click.echo(f"node {node_id} (pid {pid}) stopped")
    pids_path.unlink(missing_ok=True)
    if not ours:
        click.echo(f"no running nodes of the cluster in {data_dir}")


@click.command()
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=_HTTP_PORT_BASE_DEFAULT,
    show_default=True,
    help="The node's HTTP port.",
)
@click.option(
    "--raft-port",
    type=click.IntRange(1, 65535),
    default=_RAFT_PORT_BASE_DEFAULT,
    show_default=True,
    help="The node's Raft port (it has no peers, but listens all the same).",
)
@click.option(
    "--host",
    default=_HOST_DEFAULT,
    show_default=True,
    help=(
        "Address the node binds. 0.0.0.0 (or ::): every interface, with this machine's "
        "host name as the node's address (in a container: reachable through a published port)."
    ),
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory (printed) after Ctrl-C.")
@click.pass_context
def dev(ctx: click.Context, http_port: int, raft_port: int, host: str, keep: bool) -> None:
    """A one-node cluster in a temporary directory, for trying the API in one command.

    Its data is thrown away on Ctrl-C (unless --keep): it is `cluster up --nodes 1` on a
    fresh directory. A single node is its own majority, so every write is acknowledged
    after its own fsync: nothing survives the loss of the machine.
    """
    if host in _EVERY_INTERFACE:
        # A config address is one that clients dial, so 0.0.0.0 is refused there; a node
        # whose address is a name listens on every interface (config._listen_host). The
        # host name is such a name, and resolves on its own machine (in a container too).
        host = socket.gethostname()
        click.echo(f"listening on every interface; the node's address is {host}")
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="kvraft-dev-"))
    try:
        ctx.invoke(
            up,
            nodes=1,
            data_dir=data_dir,
            http_port_base=http_port,
            raft_port_base=raft_port,
            host=host,
        )
    finally:
        if keep:
            click.echo(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
