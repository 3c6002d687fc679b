"""`kvraft serve`: run one node in this process until SIGTERM/SIGINT or a disk failure.

A node named in the config file (`--config FILE --id N`) is a founding member and takes its
addresses and data directory from the file. Any other node gives them on the command line
(`--raft-address`, `--http-address`, `--data-dir`) and starts with an empty configuration;
with `--join URL` it asks the cluster, through any member, to add it. The cluster adds it as a
learner, sends it a snapshot and the log, and promotes it to voter once it has caught up. From
then on its membership and its peers' addresses are in its own log, so a restart needs no
`--join` (the cluster id it joined is kept in `DATA_DIR/node.json` for a restart without
`--config`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import json
import logging
import os
import random
import re
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
from aiohttp import web

from kvraft.exit_codes import (
    EXIT_ADDRESS_UNAVAILABLE,
    EXIT_CONFIG,
    EXIT_JOIN_REFUSED,
    EXIT_STORAGE_CORRUPT,
    EXIT_STORAGE_FAILED,
)
from kvraft.healthcheck import (
    HTTP_URL_FILE_VARIABLE,
    local_http_url,
    remove_url_file,
    write_url_file,
)
from kvraft.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from kvraft.pidfile import remove_pid_file, write_pid_file

__all__ = [
    "EXIT_ADDRESS_UNAVAILABLE",
    "EXIT_CONFIG",
    "EXIT_JOIN_REFUSED",
    "EXIT_STORAGE_CORRUPT",
    "EXIT_STORAGE_FAILED",
    "HTTP_LISTEN_BACKLOG",
    "IDENTITY_FILE_BYTES_MAX",
    "IDENTITY_FILE_NAME",
    "JOIN_ATTEMPT_TIMEOUT_S",
    "JOIN_BACKOFF_S_MAX",
    "JOIN_CONNECT_TIMEOUT_S",
    "JOIN_TIMEOUT_S",
    "JoinError",
    "NodeIdentity",
    "fetch_cluster_id",
    "join_cluster",
    "read_identity",
    "serve",
    "write_identity",
]

log = logging.getLogger("kvraft.serve")

HTTP_LISTEN_BACKLOG = 4096
"""Client connections the kernel may hold for the node before it accepts them (it caps this
at ``net.core.somaxconn``). aiohttp's default of 128 overflowed under a burst of clients:
the kernel then drops new connections' SYNs, and a client -- a health check included --
retries only after 1 s, then 3 s, so the node looked stalled for seconds while it was not."""

IDENTITY_FILE_NAME = "node.json"
"""In a joined node's data directory: the cluster id and node id it joined with."""

IDENTITY_FILE_BYTES_MAX = 4096
"""The largest identity file read: it holds two short fields."""

JOIN_TIMEOUT_S = 300.0
"""How long a joining node keeps asking to be added (through elections, a busy cluster or
one change after another) before it gives up and exits."""

JOIN_ATTEMPT_TIMEOUT_S = 60.0
"""How long one join request may take: the cluster adds the node as a learner, waits for it
to catch up and promotes it, each step bounded by the cluster's request timeout."""

JOIN_BACKOFF_S_MAX = 2.0
"""The longest pause between join attempts."""

JOIN_CONNECT_TIMEOUT_S = 2.0
"""How long connecting to the join URL may take in one attempt."""

GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds in a node (CPython's default is 700, 10, 10).
A request's objects die young, by reference counting, but with 64 requests in flight a
collection every 700 allocations finds thousands of them alive, scans them and moves them
on to older generations, where they are scanned again. With a collection every 10,000 most
are gone by then. With 3 nodes and wrk at 64 connections, puts went from about 2,600/s to
2,800-3,100/s and their p99 from 44-62 ms to 31-37 ms, alike for a threshold of 10,000 or
20,000, with or without the freeze (BENCHMARKS.md). Only garbage in reference cycles waits
for the collector, and it is rare here."""

_CLUSTER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Answers that mean "not now": ask again after a pause.
_JOIN_RETRY_STATUSES = frozenset({409, 502, 503, 504})


class JoinError(Exception):
    """Joining cannot work: a bad join URL, an identity mismatch, or the cluster refused."""


class JoinRefusedError(JoinError):
    """The cluster at the join URL cannot be asked, or is another cluster than this node's."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a joined node keeps in `IDENTITY_FILE_NAME`: its `cluster_id` and `node_id`."""

    cluster_id: str
    node_id: int


def read_identity(data_dir: Path) -> NodeIdentity | None:
    """The identity kept in `data_dir` (None if there is none); JoinError if it is damaged."""
    path = data_dir / IDENTITY_FILE_NAME
    try:
        with open(path, "rb") as file:
            data = file.read(IDENTITY_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise JoinError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > IDENTITY_FILE_BYTES_MAX:
        raise JoinError(f"{path}: larger than {IDENTITY_FILE_BYTES_MAX} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise JoinError(f"{path}: not valid JSON") from None
    cluster_id = obj.get("cluster_id") if isinstance(obj, dict) else None
    node_id = obj.get("node_id") if isinstance(obj, dict) else None
    if not isinstance(cluster_id, str) or _CLUSTER_ID.fullmatch(cluster_id) is None:
        raise JoinError(f"{path}: 'cluster_id' is missing or invalid")
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 1:
        raise JoinError(f"{path}: 'node_id' is missing or invalid")
    return NodeIdentity(cluster_id, node_id)


def write_identity(data_dir: Path, identity: NodeIdentity) -> None:
    """Keep `identity` in `data_dir`, atomically (a crash leaves the old file or the new)."""
    path = data_dir / IDENTITY_FILE_NAME
    temporary = path.with_suffix(".tmp")
    text = json.dumps({"cluster_id": identity.cluster_id, "node_id": identity.node_id})
    with open(temporary, "w") as file:
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(
        total=JOIN_ATTEMPT_TIMEOUT_S, sock_connect=JOIN_CONNECT_TIMEOUT_S
    )
    async with session.get(url, timeout=timeout) as response:
        body = await response.read()
    try:
        return response.status, json.loads(body)
    except (ValueError, RecursionError):
        return response.status, None


async def fetch_cluster_id(join_url: str, ssl_context: ssl.SSLContext | None = None) -> str:
    """The cluster id of the cluster at `join_url` (asked once; JoinError if it fails);
    `ssl_context` for an https:// URL (default: the system's trust store)."""
    connector = aiohttp.TCPConnector(ssl=ssl_context or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            status, body = await _get_json(session, join_url + "/v1/status")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise JoinRefusedError(
                f"{join_url}: cannot ask for the cluster id: {error!r}"
            ) from None
    cluster_id = body.get("cluster_id") if isinstance(body, dict) else None
    if status != 200 or not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
        raise JoinRefusedError(f"{join_url}/v1/status (HTTP {status}) gave no valid cluster_id")
    return cluster_id


async def join_cluster(
    node: Any, join_url: str, voter: bool = True, timeout_s: float = JOIN_TIMEOUT_S
) -> None:
    """Ask the cluster at `join_url` to add `node` (a RaftNode), retrying what may succeed
    later with backoff for up to `timeout_s`. JoinError if the cluster refuses, or time
    runs out.

    Each attempt is one request (`AsyncKVClient.members` / `add_member` with
    `endpoint=join_url`); the retrying is done here: after any failure to read the members,
    and after an add that got no answer, a 409 other than `member_conflict` (another change
    in progress), a 502, 503 (e.g. `not_caught_up`) or 504. Any other answer is a refusal.
    """
    from kvraft.client import (
        AsyncKVClient,
        ClientError,
        KVError,
        OutcomeUnknown,
        ProtocolError,
        Unavailable,
    )
    from kvraft.membership import MembershipError, parse_member

    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    rng = random.Random()
    attempt = 0
    spec = node.spec
    learned = False
    async with AsyncKVClient(
        [join_url],
        timeout_s=JOIN_ATTEMPT_TIMEOUT_S,
        attempt_timeout_s=JOIN_ATTEMPT_TIMEOUT_S,
        connect_timeout_s=JOIN_CONNECT_TIMEOUT_S,
        ssl_context=node.tls.https_client,
    ) as client:
        while True:
            problem: str
            if not learned:
                # First the members' addresses: the leader's first messages must be
                # answerable before the log can tell this node who the leader is.
                try:
                    view = await client.members(endpoint=join_url)
                except KVError as error:
                    problem = f"GET /v1/members: {error}"
                else:
                    book = {}
                    for item in view["members"]:
                        if not isinstance(item, dict):
                            continue
                        with contextlib.suppress(MembershipError):
                            member = parse_member(
                                item.get("id"), item.get("raft_address"), item.get("http_address")
                            )
                            book[member.id] = member
                    node.learn_addresses(book)
                    learned = True
                    log.info("node %d: the cluster's members are %s", node.id, sorted(book))
                    continue
            else:
                try:
                    await client.add_member(
                        node.id,
                        spec.raft_address,
                        spec.http_address,
                        voter=voter,
                        endpoint=join_url,
                    )
                except (ClientError, Unavailable, OutcomeUnknown) as error:
                    status = error.status
                    if (status is not None and status not in _JOIN_RETRY_STATUSES) or (
                        isinstance(error, ClientError) and error.code == "member_conflict"
                    ):
                        raise JoinError(
                            f"the cluster refused to add node {node.id}: {error}"
                        ) from None
                    problem = f"POST /v1/members: {error}"
                except ProtocolError as error:
                    raise JoinError(f"the cluster refused to add node {node.id}: {error}") from None
                else:
                    log.info("node %d: joined the cluster through %s", node.id, join_url)
                    return
            attempt += 1
            pause_s = min(JOIN_BACKOFF_S_MAX, 0.1 * 2 ** min(attempt, 10)) * rng.uniform(0.5, 1)
            if loop.time() + pause_s > deadline_s:
                raise JoinError(f"could not join within {timeout_s:g} s (last: {problem})")
            log.warning("node %d: join attempt %d: %s; retrying", node.id, attempt, problem)
            await asyncio.sleep(pause_s)


async def _resolve(
    config_path: Path | None,
    node_id: int,
    raft_address: str | None,
    http_address: str | None,
    data_dir: Path | None,
    join_url: str | None,
) -> tuple[Any, Any, bool, Any]:
    """(ClusterConfig, NodeSpec, founding, NodeTls) from the options; ConfigError,
    TlsFileError or JoinError when they do not describe a node. Without a config file or an
    identity file yet, the cluster id comes from the join URL (over HTTPS with the config's
    ``[tls]``, if any)."""
    import dataclasses

    from kvraft.config import (
        ClusterConfig,
        ConfigError,
        LimitSettings,
        NodeSpec,
        RaftSettings,
        StorageSettings,
        load_config,
    )
    from kvraft.membership import MembershipError, parse_member
    from kvraft.tls import node_tls

    config = load_config(config_path) if config_path is not None else None
    # Every certificate and key is read now: a bad path is a configuration error at start,
    # not a failure at the first peer connection or request.
    tls = node_tls(
        config.tls if config is not None else None,
        config.peer_tls if config is not None else None,
        node_id,
    )
    given = [
        name
        for name, value in (
            ("--raft-address", raft_address),
            ("--http-address", http_address),
            ("--data-dir", data_dir),
            ("--join", join_url),
        )
        if value is not None
    ]
    if config is not None and any(node.id == node_id for node in config.nodes):
        if given:
            raise ConfigError(
                f"node {node_id} is in {config_path}: its addresses and data dir come from "
                f"there, and it is a founding member (drop {', '.join(given)})"
            )
        return config, config.node(node_id), True, tls
    if raft_address is None or http_address is None or data_dir is None:
        where = f"not in {config_path}" if config is not None else "not described by --config"
        raise ConfigError(
            f"node {node_id} is {where}: give --raft-address, --http-address and --data-dir "
            "(and --join URL to add it to a running cluster)"
        )
    try:
        address = parse_member(node_id, raft_address, http_address)
    except MembershipError as error:
        raise ConfigError(str(error)) from None
    data_dir = Path(os.path.abspath(data_dir))
    identity = read_identity(data_dir)
    if identity is not None and identity.node_id != node_id:
        raise JoinError(f"{data_dir} belongs to node {identity.node_id}, not {node_id}")
    cluster_id: str | None = config.cluster_id if config is not None else None
    if identity is not None:
        if cluster_id is not None and cluster_id != identity.cluster_id:
            raise JoinError(
                f"{data_dir} belongs to cluster {identity.cluster_id!r}, "
                f"but {config_path} is for {cluster_id!r}"
            )
        cluster_id = identity.cluster_id
    if join_url is not None:
        joined_id = await fetch_cluster_id(join_url, tls.https_client)
        if cluster_id is not None and joined_id != cluster_id:
            raise JoinRefusedError(f"{join_url} serves cluster {joined_id!r}, not {cluster_id!r}")
        cluster_id = joined_id
    if cluster_id is None:
        raise ConfigError(
            f"node {node_id} has never joined a cluster from {data_dir}: give --join URL "
            "(or --config FILE)"
        )
    spec = NodeSpec(
        id=node_id,
        raft_host=address.raft_host,
        raft_port=address.raft_port,
        http_host=address.http_host,
        http_port=address.http_port,
        data_dir=data_dir,
    )
    if config is None:
        config = ClusterConfig(
            cluster_id, (), RaftSettings(), StorageSettings(), LimitSettings(), path=None
        )
    else:
        config = dataclasses.replace(config, cluster_id=cluster_id)
    return config, spec, False, tls


def _os_error_text(error: OSError) -> str:
    """ "Address already in use" rather than asyncio's "[Errno 98] error while attempting to
    bind on address ('127.0.0.1', 7001): address already in use"."""
    return os.strerror(error.errno) if error.errno else str(error)


async def run_node(
    config_path: Path | None,
    node_id: int,
    *,
    raft_address: str | None = None,
    http_address: str | None = None,
    data_dir: Path | None = None,
    join_url: str | None = None,
    learner: bool = False,
    peer_secret_file: Path | None = None,
) -> int:
    from kvraft.client import ClientError, normalize_endpoint
    from kvraft.config import ConfigError, read_peer_secret
    from kvraft.descriptors import handle_loop_exception, raise_descriptor_limit
    from kvraft.http_api import HttpApi
    from kvraft.http_guard import http_connections_allowed
    from kvraft.server import RaftNode
    from kvraft.storage.api import StorageCorruptionError, StorageError
    from kvraft.tls import TlsFileError
    from kvraft.transport.tcp import PeerTransport

    try:
        if join_url is not None:
            try:
                join_url = normalize_endpoint(join_url)
            except ClientError as error:
                raise JoinError(f"--join: {error}") from None
        config, spec, founding, tls = await _resolve(
            config_path, node_id, raft_address, http_address, data_dir, join_url
        )
        # The flag (or KVRAFT_PEER_SECRET_FILE) wins over the config's key: a joining node,
        # or a container given the secret as a file, has it from outside the config.
        secret_path = peer_secret_file or config.peer_secret_file
        peer_secret = read_peer_secret(secret_path) if secret_path is not None else None
    except (ConfigError, TlsFileError) as error:
        # The error names the file (load_config prefixes its path) or the flags at fault.
        log.error("node %d cannot start: %s", node_id, error)
        return EXIT_CONFIG
    except JoinRefusedError as error:
        log.error("node %d cannot join: %s", node_id, error)
        return EXIT_JOIN_REFUSED
    except JoinError as error:
        log.error("node %d cannot start: %s", node_id, error)
        return EXIT_CONFIG
    # Before anything opens a descriptor: accepts that run out are counted and logged once in
    # a while rather than a traceback each (asyncio retries them every second).
    asyncio.get_running_loop().set_exception_handler(handle_loop_exception)
    descriptors_max, descriptors_hard_max = raise_descriptor_limit()
    http_connections_max, descriptors_reserved = http_connections_allowed(
        config.limits.http_connections_max, descriptors_max
    )
    log.info(
        "node %d: descriptor limit %d (hard %d); at most %d client connections"
        " (limits.http_connections_max %d), %d descriptors kept for peers, files and forwarding",
        node_id,
        descriptors_max,
        descriptors_hard_max,
        http_connections_max,
        config.limits.http_connections_max,
        descriptors_reserved,
    )
    if peer_secret is None:
        # Issue #20: the safe choice would be to refuse to start, but configs written before
        # peer authentication have no secret, and a rolling upgrade must not stop a running
        # cluster. `cluster up`, compose and the shipped configs all have one; a node
        # without one says so at every start, and /metrics shows kvraft_peer_auth_enabled 0.
        log.warning(
            "node %d: NO PEER AUTHENTICATION: anything that reaches %s can act as a member of"
            " this cluster (forge votes and writes). Give it the cluster's secret with"
            " --peer-secret-file, KVRAFT_PEER_SECRET_FILE or peer_secret_file in the config.",
            node_id,
            spec.raft_address,
        )
    else:
        log.info("node %d: peers must prove the cluster's peer secret", node_id)
    if tls.peer_server is not None:
        log.info("node %d: peers must connect with mutual TLS and their own certificate", node_id)
    node = RaftNode(
        config, node_id, spec=None if founding else spec, peer_secret=peer_secret, tls=tls
    )
    # What a start recovers (up to millions of log entries) lives on and is frozen below: a
    # collection meanwhile would only scan it, again and again as it grows (#22: 0.15 s of
    # the 0.75 s a 1,000,000-entry WAL takes to open).
    gc.disable()
    try:
        await node.start()
    except StorageCorruptionError as error:
        log.error("node %d refuses to start: %s", node_id, error)
        return EXIT_STORAGE_CORRUPT
    except StorageError as error:
        log.error("node %d cannot open its storage: %s", node_id, error)
        return EXIT_STORAGE_FAILED
    except OSError as error:
        transport = node.transport
        if not isinstance(transport, PeerTransport) or transport.running:
            raise  # not the peer listener failing to bind: unexpected, keep the traceback
        log.error(
            "node %d cannot listen for peers on %s: %s",
            node_id,
            spec.raft_address,
            _os_error_text(error),
        )
        return EXIT_ADDRESS_UNAVAILABLE
    # Holding the data directory's lock now: say which process serves it, so that
    # `cluster down` can stop this node whoever started it (kvraft.pidfile).
    try:
        write_pid_file(spec.data_dir)
        atexit.register(remove_pid_file, spec.data_dir)
    except OSError as error:
        log.warning(
            "node %d cannot write its pid file (cluster down will miss it): %s", node_id, error
        )
    if not founding:
        try:
            write_identity(spec.data_dir, NodeIdentity(config.cluster_id, node_id))
        except OSError as error:
            log.error("node %d cannot write its identity file: %s", node_id, error)
            await node.stop(transfer_leadership=False)
            return EXIT_STORAGE_FAILED
    # What the node loaded at start (its state machine, its log) lives on: collections need
    # not scan it again and again.
    gc.freeze()
    gc.enable()
    api = HttpApi(node, http_connections_max=http_connections_max)
    runner = web.ServerRunner(api.server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        spec.http_listen_host,
        spec.http_port,
        reuse_address=True,
        backlog=HTTP_LISTEN_BACKLOG,
        ssl_context=tls.https_server,
    )
    try:
        await site.start()
    except OSError as error:
        log.error(
            "node %d cannot listen for clients on %s: %s",
            node_id,
            spec.http_address,
            _os_error_text(error),
        )
        await runner.cleanup()
        await api.close()
        await node.stop(transfer_leadership=False)
        return EXIT_ADDRESS_UNAVAILABLE
    # The container health check follows this node's own address (kvraft.healthcheck).
    url_file_name = os.environ.get(HTTP_URL_FILE_VARIABLE)
    if url_file_name:
        url_file = Path(url_file_name)
        local_url = local_http_url(spec.http_listen_host, spec.http_port, tls.http_scheme)
        try:
            write_url_file(
                url_file, local_url, cacert=tls.ca_file, cert=tls.cert_file, key=tls.key_file
            )
            atexit.register(remove_url_file, url_file, local_url)
        except OSError as error:
            log.warning(
                "node %d cannot write %s (health checks will fail): %s", node_id, url_file, error
            )
    log.info(
        "node %d serving: %s %s, raft %s%s, data %s",
        node_id,
        tls.http_scheme,
        spec.http_address,
        spec.raft_address,
        " (mutual TLS)" if tls.peer_server is not None else "",
        spec.data_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    assert node.failed is not None
    stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    failed: asyncio.Future[Any] = node.failed
    waiting: list[asyncio.Future[Any]] = [stop_waiter, failed]
    joining: asyncio.Task[None] | None = None
    if join_url is not None:
        joining = asyncio.create_task(join_cluster(node, join_url, voter=not learner))
        waiting.append(joining)
    elif not node.peer_addresses.keys() - {node_id} and not founding:
        log.warning("node %d knows no cluster yet: start it with --join URL", node_id)
    while True:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if joining is not None and joining in done:
            waiting.remove(joining)
            join_error = joining.exception()
            if join_error is None:
                joining = None
                continue
            log.error("node %d could not join: %s", node_id, join_error)
            stop_waiter.cancel()
            await site.stop()
            await node.stop(transfer_leadership=False)
            await runner.cleanup()
            await api.close()
            return EXIT_JOIN_REFUSED
        break
    if joining is not None:
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await joining
    if node.failed.done():
        log.critical("node %d exits: its storage failed (%s)", node_id, node.failed.result())
        stop_waiter.cancel()
        await runner.cleanup()
        await api.close()
        await node.stop(transfer_leadership=False)
        return EXIT_STORAGE_FAILED
    log.info("node %d stopping", node_id)
    # Stop taking new requests, hand leadership over (§3.10), flush, exit 0.
    await site.stop()
    await node.stop(transfer_leadership=True)
    await runner.cleanup()
    await api.close()
    log.info("node %d stopped", node_id)
    return 0


@click.command()
@click.option(
    "--config",
    "config_path",
    # Not `exists=True`: a config file that cannot be read is a configuration error
    # (EXIT_CONFIG), not a usage error.
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cluster configuration (TOML): a founding node's entry, or the settings of a new one.",
)
@click.option("--id", "node_id", type=click.IntRange(1), required=True, help="This node's id.")
@click.option("--raft-address", default=None, help="host:port peers dial (a node not in --config).")
@click.option(
    "--http-address", default=None, help="host:port clients dial (a node not in --config)."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="This node's WAL and snapshots (a node not in --config).",
)
@click.option(
    "--join",
    "join_url",
    default=None,
    help="URL of any member: ask the cluster to add this node (a node not in --config).",
)
@click.option(
    "--learner", is_flag=True, help="With --join: stay a learner (replicates, never votes)."
)
@click.option(
    "--peer-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="KVRAFT_PEER_SECRET_FILE",
    default=None,
    help="The cluster's peer secret (hex), which every peer must prove it knows; overrides"
    " the config's peer_secret_file; env KVRAFT_PEER_SECRET_FILE. Without one, peers are"
    " not authenticated.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    envvar="KVRAFT_LOG_LEVEL",
    default="INFO",
    show_default=True,
    help="The least severe messages logged; env KVRAFT_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="KVRAFT_LOG_FORMAT",
    default="text",
    show_default=True,
    help="text: one line per message; json: one JSON object per line; env KVRAFT_LOG_FORMAT.",
)
def serve(
    config_path: Path | None,
    node_id: int,
    raft_address: str | None,
    http_address: str | None,
    data_dir: Path | None,
    join_url: str | None,
    learner: bool,
    peer_secret_file: Path | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run one kvraft node.

    \b
    A founding member:      kvraft serve --config cluster.toml --id 1
    A new node joining:     kvraft serve --id 4 --raft-address 127.0.0.1:7004 \\
                              --http-address 127.0.0.1:8004 --data-dir data/node4 \\
                              --peer-secret-file data/peer-secret \\
                              --join http://127.0.0.1:8001 [--config cluster.toml]
    """
    if config_path is None and raft_address is None and http_address is None:
        raise click.UsageError("give --config FILE, or --raft-address/--http-address/--data-dir")
    if learner and join_url is None:
        raise click.UsageError("--learner is for a node that joins: add --join URL")
    configure_logging(node_id, log_level, log_format)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    sys.exit(
        runner(
            run_node(
                config_path,
                node_id,
                raft_address=raft_address,
                http_address=http_address,
                data_dir=data_dir,
                join_url=join_url,
                learner=learner,
                peer_secret_file=peer_secret_file,
            )
        )
    )
