"""The cluster configuration file: read, validate and write the TOML that describes a cluster.

One file describes the whole cluster (every node reads the same file and is told its own id),
so a node knows its peers' addresses before it has spoken to any of them. The file is
untrusted input: `parse_config` refuses anything it does not understand, with a `ConfigError`
whose message names the offending key path (``raft.election_ticks``, ``nodes[1].id``), rather
than letting a typo fall back to a default or an impossible value surface later as a crash.

Layout::

    cluster_id = "kvraft-local"
    peer_secret_file = "peer-secret"   (optional: the file holding the peers' shared secret)
    [raft]     tick_ms, election_ticks, heartbeat_ticks, inflight_max, batch_bytes_max,
               pre_vote, check_quorum
    [storage]  fsync, segment_bytes_max, snapshot_threshold_entries, snapshots_kept,
               snapshot_threshold_bytes (optional), snapshot_entries_per_record (optional)
    [limits]   key_bytes_max, value_bytes_max, request_timeout_ms, proposals_pending_max,
               watch_history_revisions_max, watch_history_bytes_max, watchers_max,
               write_bytes_pending_max, request_header_timeout_ms, request_body_timeout_ms,
               http_connections_max, events_kept_max (optional)
    [[nodes]]  id, raft_address, http_address, data_dir, voter (optional, default true)
    [tls]      cert, key, client_ca (optional), ca (optional)      (optional table)
    [peer_tls] cert, key, ca                                       (optional table)
    [auth]     metrics_require_auth                                (optional table)

``[tls]`` serves the HTTP API over HTTPS with ``cert``/``key``; with ``client_ca`` every
client must present a certificate signed by it; ``ca`` is what a node trusts when it is the
client of another node's HTTPS API (a follower forwarding to the leader; default: the
system's trust store). ``[peer_tls]`` is mutual TLS between peers: each node presents
``cert`` (which must name its node id, see `kvraft.tls`) and accepts only peers whose
certificate ``ca`` signed and names the node id they claim. Every node reads the same file,
so ``{id}`` in these paths is replaced by the node's id (``certs/node{id}.crt``); relative
paths are relative to the config file's directory. Both tables are optional: a file without
them serves plain HTTP and plain TCP (issue #20's TLS slice).

``peer_secret_file`` names the file (relative to the config file's directory) holding the
cluster's peer secret, hex (issue #20; `read_peer_secret`). Peers prove they know it at every
handshake; without it a node runs with unauthenticated peers, and warns.

Every key is required except ``voter`` and the ones marked optional, which were added later
(a file written before them gets their defaults). Relative ``data_dir`` paths are relative to the
directory holding the config file.

Addresses are ``host:port`` where the host is an IP literal (IPv6 in brackets), ``localhost``
or a DNS name (so a Docker service name such as ``node2`` works). The address is what peers
and clients *dial*; where a node *listens* follows from it (`NodeSpec.raft_listen_host`): an
IP literal or ``localhost`` is bound as written, but a DNS name makes the node listen on that
port on all interfaces, because inside a container the name may resolve to an address that
the container's own loopback health check and the published ports do not reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import pathlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvraft import statemachine
from kvraft.events import EVENTS_KEPT_MAX_DEFAULT, EVENTS_KEPT_MAX_HIGHEST
from kvraft.raft import codec
from kvraft.watch import (
    WATCH_HISTORY_BYTES_MAX_DEFAULT,
    WATCH_HISTORY_REVISIONS_MAX_DEFAULT,
    WATCHERS_MAX_DEFAULT,
)

__all__ = [
    "ADDRESS_CHARS_MAX",
    "BATCH_BYTES_MAX_HIGHEST",
    "CLUSTER_ID_CHARS_MAX",
    "CONFIG_FILE_BYTES_MAX",
    "DATA_DIR_BYTES_MAX",
    "ELECTION_TICKS_MAX",
    "HOST_CHARS_MAX",
    "HTTP_CONNECTIONS_MAX_HIGHEST",
    "INFLIGHT_MAX_HIGHEST",
    "KEY_BYTES_MAX_HIGHEST",
    "NODES_MAX",
    "NODE_ID_MAX",
    "PEER_SECRET_BYTES",
    "PEER_SECRET_FILE_BYTES_MAX",
    "PEER_SECRET_FILE_NAME",
    "PORT_MAX",
    "PROPOSALS_PENDING_MAX_HIGHEST",
    "REQUEST_BODY_TIMEOUT_MS_MAX",
    "REQUEST_HEADER_TIMEOUT_MS_MAX",
    "REQUEST_TIMEOUT_MS_MAX",
    "SEGMENT_BYTES_MAX_HIGHEST",
    "SEGMENT_BYTES_MAX_LOWEST",
    "SNAPSHOTS_KEPT_MAX",
    "SNAPSHOT_THRESHOLD_ENTRIES_MAX",
    "TICK_MS_MAX",
    "VALUE_BYTES_MAX_HIGHEST",
    "AuthSettings",
    "ClusterConfig",
    "ConfigError",
    "LimitSettings",
    "NodeSpec",
    "PeerTlsSettings",
    "RaftSettings",
    "StorageSettings",
    "TlsSettings",
    "load_config",
    "local_cluster_config",
    "new_peer_secret",
    "parse_address",
    "parse_config",
    "read_peer_secret",
    "render_config",
    "write_peer_secret",
]

# --- Limits ---------------------------------------------------------------------------------

CONFIG_FILE_BYTES_MAX = 1024 * 1024
"""The largest config file `load_config` reads: a 64-node cluster needs a few KiB, and the
cap keeps a wrong path (a log file, a device) from being slurped into memory."""

CLUSTER_ID_CHARS_MAX = 64
"""The longest cluster id (characters from ``[A-Za-z0-9._-]``, so also bytes); it travels in
every peer handshake, which allows more (`kvraft.transport.frames.CLUSTER_ID_BYTES_MAX`)."""

NODES_MAX = codec.MEMBERS_MAX
"""The most ``[[nodes]]``: a Raft configuration entry cannot name more members than this."""

NODE_ID_MAX = codec.NODE_ID_MAX
"""The largest node id (ids are 1..NODE_ID_MAX, as on the wire; 0 means "nobody")."""

PORT_MAX = 65535
"""The largest TCP port; ports are 1..PORT_MAX (0 would mean "any free port", not dialable)."""

HOST_CHARS_MAX = 253
"""The longest host name (the DNS limit for a name in text form)."""

ADDRESS_CHARS_MAX = HOST_CHARS_MAX + len("[]:") + len(str(PORT_MAX))
"""The longest ``host:port`` string: the longest host, brackets, colon and a 5-digit port."""

DATA_DIR_BYTES_MAX = 4096
"""The longest ``data_dir`` in UTF-8 bytes (Linux's PATH_MAX), checked after resolution."""

TICK_MS_MAX = 10_000
"""The longest Raft tick. Ticks drive heartbeats; a tick over 10 s makes failure detection
slower than any client would wait for."""

ELECTION_TICKS_MAX = 1000
"""The most ticks in an election timeout: elections stay well under an hour at the largest
tick, and the randomised timeout's range ``[e, 2e)`` stays small enough to draw from."""

INFLIGHT_MAX_HIGHEST = 4096
"""The most unacknowledged AppendEntries per follower that ``raft.inflight_max`` may allow;
with ``batch_bytes_max`` this bounds the memory the leader holds for one slow follower."""

BATCH_BYTES_MAX_HIGHEST = 32 * 1024 * 1024
"""The largest ``raft.batch_bytes_max``: half of `kvraft.raft.codec.MESSAGE_BYTES_MAX`, so a
full batch plus one more (over-sized) entry and the headers still fit in one message."""

SEGMENT_BYTES_MAX_LOWEST = 4 * 1024
"""The smallest ``storage.segment_bytes_max``, the same as the WAL's own lower bound
(`kvraft.storage.wal.SEGMENT_BYTES_MAX_LOWEST`): smaller segments mean a file per few entries."""

SEGMENT_BYTES_MAX_HIGHEST = 1024 * 1024 * 1024
"""The largest ``storage.segment_bytes_max``, the WAL's own upper bound: a segment is read
whole on recovery."""

SNAPSHOT_THRESHOLD_ENTRIES_MAX = 100_000_000
"""The largest ``storage.snapshot_threshold_entries``: beyond it the log (and recovery time)
grows without bound in practice."""

SNAPSHOT_ENTRIES_PER_RECORD_MAX = 1000
"""The largest ``storage.snapshot_entries_per_record``: beyond it the log since the last
snapshot (and the replay at restart) would be a thousand times the state."""

SNAPSHOT_THRESHOLD_BYTES_DEFAULT = 128 * 1024 * 1024
"""``storage.snapshot_threshold_bytes`` when not given: every entry since the last snapshot is
kept in memory, so with large values the log is bounded by bytes as well as by entries."""

SNAPSHOT_THRESHOLD_BYTES_LOWEST = 1024 * 1024
"""The smallest ``storage.snapshot_threshold_bytes``: below it a node would snapshot its
whole state every few large writes."""

SNAPSHOT_THRESHOLD_BYTES_HIGHEST = 64 * 1024 * 1024 * 1024
"""The largest ``storage.snapshot_threshold_bytes`` (64 GiB): the log it allows is in memory."""

WRITE_BYTES_PENDING_PER_VALUE = 64
"""When ``limits.write_bytes_pending_max`` is not given, it is this many of the largest
requests (``value_bytes_max`` plus its key): a node admits a burst of 64 maximal writes at once,
and sheds the rest with 503 rather than hold them all in memory."""

_KEY_BYTES_MAX_DEFAULT = 1024
_VALUE_BYTES_MAX_DEFAULT = 1024 * 1024

WRITE_BYTES_PENDING_MAX_HIGHEST = 64 * 1024 * 1024 * 1024
"""The largest ``limits.write_bytes_pending_max`` (64 GiB)."""

SNAPSHOTS_KEPT_MAX = 100
"""The most snapshots ``storage.snapshots_kept`` may keep on disk (each is a full copy)."""

KEY_BYTES_MAX_HIGHEST = min(64 * 1024, statemachine.KEY_BYTES_MAX)
"""The largest ``limits.key_bytes_max``: 64 KiB, and never more than the state machine itself
accepts (`kvraft.statemachine.KEY_BYTES_MAX`), which would refuse longer keys anyway."""

VALUE_BYTES_MAX_HIGHEST = min(64 * 1024 * 1024, statemachine.VALUE_BYTES_MAX)
"""The largest ``limits.value_bytes_max``: 64 MiB, and never more than the state machine itself
accepts (`kvraft.statemachine.VALUE_BYTES_MAX`), which would refuse larger values anyway."""

REQUEST_TIMEOUT_MS_MAX = 600_000
"""The longest ``limits.request_timeout_ms`` (10 minutes): a client request holds a waiter and
a connection for this long."""

WATCH_HISTORY_REVISIONS_MAX_HIGHEST = 10_000_000
"""The largest ``limits.watch_history_revisions_max``."""

WATCH_HISTORY_BYTES_MAX_HIGHEST = 16 * 1024 * 1024 * 1024
"""The largest ``limits.watch_history_bytes_max`` (16 GiB): the history is kept in memory."""

WATCHERS_MAX_HIGHEST = 1_000_000
"""The largest ``limits.watchers_max``."""

REQUEST_HEADER_TIMEOUT_MS_MAX = 600_000
"""The longest ``limits.request_header_timeout_ms`` (10 minutes)."""

REQUEST_BODY_TIMEOUT_MS_MAX = 3_600_000
"""The longest ``limits.request_body_timeout_ms`` (an hour: a 64 MiB value over a slow link)."""

HTTP_CONNECTIONS_MAX_HIGHEST = 1_000_000
"""The largest ``limits.http_connections_max``; the descriptor limit caps it further at
start (`kvraft.http_guard.http_connections_allowed`)."""

PROPOSALS_PENDING_MAX_HIGHEST = 1_000_000
"""The largest ``limits.proposals_pending_max``: each pending proposal holds its command bytes
in memory, so the queue must stay bounded."""

# The parts of a host that is not an IP literal. A label is letters, digits, '-' and (for
# Docker/compose service names, which resolve although RFC 952 forbids it) '_'; no label
# starts or ends with '-'; a label is at most 63 characters (the DNS limit).
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ALL_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
_CLUSTER_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{CLUSTER_ID_CHARS_MAX}}}")
_PORT_TEXT = re.compile(r"[0-9]{1,5}")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key path."""


# --- Values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """The ``[raft]`` table: timing and replication knobs of the consensus core.

    Fields:
        tick_ms: the length of one Raft tick, in milliseconds.
        election_ticks: the election timeout is drawn from ``[election_ticks,
            2 * election_ticks)`` ticks; must exceed ``heartbeat_ticks``.
        heartbeat_ticks: a leader sends heartbeats every this many ticks.
        inflight_max: unacknowledged AppendEntries per follower.
        batch_bytes_max: entry bytes per AppendEntries.
        pre_vote: run the PreVote phase before an election (§9.6).
        check_quorum: a leader steps down when it loses contact with a quorum (§6.2).
    """

    tick_ms: int = 50
    election_ticks: int = 6
    heartbeat_ticks: int = 2
    inflight_max: int = 64
    batch_bytes_max: int = 1024 * 1024
    pre_vote: bool = True
    check_quorum: bool = True


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The ``[storage]`` table: how a node keeps its log and snapshots on disk.

    Fields:
        fsync: fsync the WAL before acknowledging; false is unsafe (benchmarks and tests).
        segment_bytes_max: a WAL segment file is closed and a new one started past this size.
        snapshot_threshold_entries: snapshot and compact the log once this many entries have
            been applied since the last snapshot (or more: see
            `snapshot_entries_per_record`).
        snapshots_kept: how many snapshots to keep on disk.
        snapshot_threshold_bytes: also snapshot once the entries applied since the last
            snapshot hold this many bytes of data. Optional.
        snapshot_entries_per_record: snapshot no sooner than this many applied entries per
            record in the state (keys, leases, idempotency records): a snapshot copies the
            whole state, so a large state is snapshotted less often and the cost per entry
            stays bounded, as does the log replayed at restart (at most this many entries
            per record, or `snapshot_threshold_entries`). 0: every
            `snapshot_threshold_entries`, whatever the state's size. Optional.
    """

    fsync: bool = True
    segment_bytes_max: int = 64 * 1024 * 1024
    snapshot_threshold_entries: int = 10_000
    snapshots_kept: int = 2
    snapshot_threshold_bytes: int = SNAPSHOT_THRESHOLD_BYTES_DEFAULT
    snapshot_entries_per_record: int = 1


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The ``[limits]`` table: what one node accepts from clients.

    Fields:
        key_bytes_max: the longest key, in UTF-8 bytes.
        value_bytes_max: the largest value, in bytes.
        request_timeout_ms: a proposal or read waits this long, then 503 / outcome unknown.
        proposals_pending_max: client requests waiting in one node; beyond it, 503.
        watch_history_revisions_max, watch_history_bytes_max: how many revisions with
            changes, and how many bytes of keys and values, a node keeps for watchers
            (`kvraft.watch`); a watch from an older revision answers 410. Optional.
        watchers_max: watchers one node serves at once; beyond it, 503. Optional.
        write_bytes_pending_max: the bytes of client writes one node holds at once, from the
            moment a request's size is known (before its body is read) until it is answered:
            on a leader, the writes waiting to be committed and applied. Beyond it, 503
            ``overloaded``. Optional; without it, `WRITE_BYTES_PENDING_PER_VALUE` maximal
            requests.
        request_header_timeout_ms: a client connection must deliver a whole request head
            within this long from when it is accepted, or from the first byte of its next
            request; else it is closed (slowloris). An idle kept-alive connection is not
            timed by it. Optional.
        request_body_timeout_ms: reading a request's body may take this long; then 408
            ``request_timeout`` and the connection is closed. Optional.
        http_connections_max: client (HTTP) connections open at once; beyond it a new one
            gets a 503 and is closed. At start it is lowered to what the descriptor limit
            allows after those kept for peers and files (logged). Optional.
        events_kept_max: the node's last events kept for `GET /v1/events` readers
            (`kvraft.events`); a reader further behind gets a ``lagged`` event. Optional.
    """

    key_bytes_max: int = _KEY_BYTES_MAX_DEFAULT
    value_bytes_max: int = _VALUE_BYTES_MAX_DEFAULT
    request_timeout_ms: int = 5000
    proposals_pending_max: int = 10_000
    watch_history_revisions_max: int = WATCH_HISTORY_REVISIONS_MAX_DEFAULT
    watch_history_bytes_max: int = WATCH_HISTORY_BYTES_MAX_DEFAULT
    watchers_max: int = WATCHERS_MAX_DEFAULT
    write_bytes_pending_max: int = WRITE_BYTES_PENDING_PER_VALUE * (
        _VALUE_BYTES_MAX_DEFAULT + _KEY_BYTES_MAX_DEFAULT
    )
    request_header_timeout_ms: int = 5000
    request_body_timeout_ms: int = 10_000
    http_connections_max: int = 10_000
    events_kept_max: int = EVENTS_KEPT_MAX_DEFAULT


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One ``[[nodes]]`` entry: a member of the cluster and where to reach it.

    Fields:
        id: the node id, 1..NODE_ID_MAX, unique in the cluster.
        raft_host, raft_port: where peers dial this node (``raft_address``).
        http_host, http_port: where clients dial this node (``http_address``).
        data_dir: the node's directory for its WAL and snapshots (absolute).
        voter: false means the node starts as a learner (it replicates but does not vote).
    """

    id: int
    raft_host: str
    raft_port: int
    http_host: str
    http_port: int
    data_dir: pathlib.Path
    voter: bool = True

    @property
    def raft_address(self) -> str:
        """``host:port`` that peers dial (IPv6 hosts in brackets)."""
        return _join_address(self.raft_host, self.raft_port)

    @property
    def http_address(self) -> str:
        """``host:port`` that clients dial (IPv6 hosts in brackets)."""
        return _join_address(self.http_host, self.http_port)

    @property
    def http_url(self) -> str:
        """The base URL of the node's HTTP API, e.g. ``http://127.0.0.1:8001``."""
        return f"http://{self.http_address}"

    @property
    def raft_listen_host(self) -> str | None:
        """The host to bind the Raft listener to; None means all interfaces (asyncio's
        ``host=None``). See `_listen_host` for the rule."""
        return _listen_host(self.raft_host)

    @property
    def http_listen_host(self) -> str | None:
        """The host to bind the HTTP listener to; None means all interfaces."""
        return _listen_host(self.http_host)

    @property
    def raft_source_host(self) -> str | None:
        """The local address outbound peer connections bind to: the raft host when it is an
        IP literal (so peers see connections come from the address they know, which matters
        when each node has its own loopback address), else None (the kernel chooses: a name
        may resolve to several addresses, or to another family than the peer's)."""
        return self.raft_host if _is_ip_literal(self.raft_host) else None


def _for_node(path: pathlib.Path, node_id: int) -> pathlib.Path:
    return pathlib.Path(str(path).replace(NODE_ID_PLACEHOLDER, str(node_id)))


NODE_ID_PLACEHOLDER = "{id}"
"""Replaced by the node's id in the paths of ``[tls]`` and ``[peer_tls]``: every node reads
the same file but presents its own certificate."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The ``[tls]`` table: HTTPS for the HTTP API (issue #20).

    Fields (absolute paths, possibly holding ``{id}``; `for_node` replaces it):
        cert, key: the node's certificate (PEM, chain allowed) and its private key.
        client_ca: clients must present a certificate signed by this CA; None: any client.
        ca: what the node trusts as a client of the other nodes' HTTPS (forwarding);
            None: the system's trust store.
    """

    cert: pathlib.Path
    key: pathlib.Path
    client_ca: pathlib.Path | None = None
    ca: pathlib.Path | None = None

    def for_node(self, node_id: int) -> TlsSettings:
        """These settings with ``{id}`` replaced by `node_id`."""
        return TlsSettings(
            _for_node(self.cert, node_id),
            _for_node(self.key, node_id),
            None if self.client_ca is None else _for_node(self.client_ca, node_id),
            None if self.ca is None else _for_node(self.ca, node_id),
        )


@dataclass(frozen=True, slots=True)
class PeerTlsSettings:
    """The ``[peer_tls]`` table: mutual TLS between peers (issue #20).

    Fields (absolute paths, possibly holding ``{id}``):
        cert, key: the node's certificate, which names its node id, and its private key.
        ca: the CA that signed every member's certificate; peers it did not sign are refused.
    """

    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path

    def for_node(self, node_id: int) -> PeerTlsSettings:
        """These settings with ``{id}`` replaced by `node_id`."""
        return PeerTlsSettings(
            _for_node(self.cert, node_id), _for_node(self.key, node_id), _for_node(self.ca, node_id)
        )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` table (issue #20; users and roles themselves are replicated state,
    see `kvraft.auth`).

    Fields:
        metrics_require_auth: while authentication is enabled, ``/metrics`` wants a token
            like any other route (default: it stays open, as ``/healthz`` and ``/readyz``).
    """

    metrics_require_auth: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole, validated cluster configuration.

    Fields:
        cluster_id: names the cluster; peers with another id are refused.
        nodes: the members, in file order.
        peer_secret_file: the file holding the peers' shared secret (absolute), or None:
            peers are then not authenticated.
        tls: HTTPS for the HTTP API, or None (plain HTTP).
        peer_tls: mutual TLS between peers, or None (plain TCP).
        raft, storage, limits: the settings tables.
        path: the file it was loaded from (absolute), or None; not part of equality, so a
            config rendered and parsed back compares equal to the original.
    """

    cluster_id: str
    nodes: tuple[NodeSpec, ...]
    raft: RaftSettings
    storage: StorageSettings
    limits: LimitSettings
    path: pathlib.Path | None = field(default=None, compare=False)
    peer_secret_file: pathlib.Path | None = None
    tls: TlsSettings | None = None
    peer_tls: PeerTlsSettings | None = None
    auth: AuthSettings = AuthSettings()

    @property
    def http_scheme(self) -> str:
        """``https`` when the nodes serve HTTPS (``[tls]``), else ``http``."""
        return "http" if self.tls is None else "https"

    def url(self, spec: NodeSpec) -> str:
        """The base URL of a node's HTTP API in this cluster, e.g.
        ``https://127.0.0.1:8001`` (`NodeSpec.http_url` is always plain HTTP)."""
        return f"{self.http_scheme}://{spec.http_address}"

    def node(self, node_id: int) -> NodeSpec:
        """The node with this id; ConfigError if the cluster has none."""
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        known = ", ".join(str(spec.id) for spec in self.nodes)
        raise ConfigError(f"nodes: no node with id {node_id!r} (ids are {known})")


# --- Public functions -----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate the config file at `path`; relative data dirs are resolved against
    its directory. ConfigError (prefixed with the path) on any problem, including IO."""
    file_path = pathlib.Path(os.path.abspath(path))
    try:
        with open(file_path, "rb") as file:
            # Read one byte past the cap so "exactly at the cap" and "over it" differ.
            data = file.read(CONFIG_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{file_path}: cannot read config: {exc.strerror or exc}") from exc
    if len(data) > CONFIG_FILE_BYTES_MAX:
        raise ConfigError(f"{file_path}: config file is larger than {CONFIG_FILE_BYTES_MAX} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file_path}: config file is not UTF-8: {exc}") from exc
    try:
        config = parse_config(text, file_path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{file_path}: {exc}") from exc
    return dataclasses.replace(config, path=file_path)


def parse_config(text: str, base_dir: pathlib.Path) -> ClusterConfig:
    """Parse and validate config TOML; relative data dirs are resolved against `base_dir`."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from exc
    except RecursionError as exc:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError("invalid TOML: arrays or inline tables nested too deeply") from exc
    return _config_from_table(table, base_dir)


def render_config(config: ClusterConfig) -> str:
    """TOML text for `config` that `parse_config` reads back equal (data dirs are written
    absolute, so the text does not depend on where it is saved)."""
    lines = [
        "# kvraft cluster configuration (see kvraft/config.py for every key).",
        f"cluster_id = {_toml_string(config.cluster_id)}",
    ]
    if config.peer_secret_file is not None:
        lines.append(f"peer_secret_file = {_toml_string(str(config.peer_secret_file))}")
    for table_name, settings in (
        ("raft", config.raft),
        ("storage", config.storage),
        ("limits", config.limits),
    ):
        lines += ["", f"[{table_name}]"]
        for key in _SETTINGS_KEYS[table_name]:
            lines.append(f"{key} = {_toml_scalar(getattr(settings, key))}")
    for table_name, tls_settings, keys in (
        ("tls", config.tls, _TLS_KEYS),
        ("peer_tls", config.peer_tls, _PEER_TLS_KEYS),
    ):
        if tls_settings is None:
            continue
        lines += ["", f"[{table_name}]"]
        for key in keys:
            path = getattr(tls_settings, key)
            if path is not None:
                lines.append(f"{key} = {_toml_string(str(path))}")
    if config.auth != AuthSettings():
        lines += ["", "[auth]"]
        lines.append(f"metrics_require_auth = {_toml_scalar(config.auth.metrics_require_auth)}")
    for spec in config.nodes:
        lines += [
            "",
            "[[nodes]]",
            f"id = {_toml_scalar(spec.id)}",
            f"raft_address = {_toml_string(spec.raft_address)}",
            f"http_address = {_toml_string(spec.http_address)}",
            f"data_dir = {_toml_string(str(spec.data_dir))}",
            f"voter = {_toml_scalar(spec.voter)}",
        ]
    return "\n".join(lines) + "\n"


def local_cluster_config(
    nodes: int,
    data_dir: pathlib.Path,
    *,
    http_port_base: int = 8001,
    raft_port_base: int = 7001,
    host: str = "127.0.0.1",
    cluster_id: str = "kvraft-local",
    peer_secret_file: pathlib.Path | None = None,
    tls: TlsSettings | None = None,
    peer_tls: PeerTlsSettings | None = None,
) -> ClusterConfig:
    """A cluster of `nodes` voters (ids 1..nodes) on one host: node i gets http port
    ``http_port_base + i - 1``, raft port ``raft_port_base + i - 1`` and data dir
    ``data_dir/node{i}``; default settings, and `tls`/`peer_tls` as given. Validated like a
    file (ConfigError)."""
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        raise ConfigError(f"nodes: expected an integer node count, got {_type_name(nodes)}")
    if not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"nodes: must be in 1..{NODES_MAX}, got {nodes}")
    base_dir = pathlib.Path(os.path.abspath(data_dir))
    defaults: dict[str, Any] = {
        "raft": RaftSettings(),
        "storage": StorageSettings(),
        "limits": LimitSettings(),
    }
    table: dict[str, Any] = {"cluster_id": cluster_id}
    if peer_secret_file is not None:
        table["peer_secret_file"] = str(peer_secret_file)
    for table_name, settings in defaults.items():
        table[table_name] = {key: getattr(settings, key) for key in _SETTINGS_KEYS[table_name]}
    bracketed_host = f"[{host}]" if ":" in host else host
    table["nodes"] = [
        {
            "id": node_id,
            "raft_address": f"{bracketed_host}:{raft_port_base + node_id - 1}",
            "http_address": f"{bracketed_host}:{http_port_base + node_id - 1}",
            "data_dir": f"node{node_id}",
        }
        for node_id in range(1, nodes + 1)
    ]
    for table_name, tls_settings in (("tls", tls), ("peer_tls", peer_tls)):
        if tls_settings is not None:
            table[table_name] = {
                item.name: str(getattr(tls_settings, item.name))
                for item in dataclasses.fields(tls_settings)
                if getattr(tls_settings, item.name) is not None
            }
    return _config_from_table(table, base_dir)


# --- Validation -----------------------------------------------------------------------------

_TOP_LEVEL_KEYS = (
    "cluster_id",
    "raft",
    "storage",
    "limits",
    "nodes",
    "peer_secret_file",
    "tls",
    "peer_tls",
    "auth",
)
_TLS_KEYS = ("cert", "key", "client_ca", "ca")
_PEER_TLS_KEYS = ("cert", "key", "ca")
_TOP_LEVEL_REQUIRED_KEYS = ("cluster_id", "raft", "storage", "limits", "nodes")

# Each settings key with (minimum, maximum) for ints, or None for booleans. The order is the
# order `render_config` writes them in.
_SETTINGS_RANGES: dict[str, dict[str, tuple[int, int] | None]] = {
    "raft": {
        "tick_ms": (1, TICK_MS_MAX),
        "election_ticks": (2, ELECTION_TICKS_MAX),
        "heartbeat_ticks": (1, ELECTION_TICKS_MAX - 1),
        "inflight_max": (1, INFLIGHT_MAX_HIGHEST),
        "batch_bytes_max": (1, BATCH_BYTES_MAX_HIGHEST),
        "pre_vote": None,
        "check_quorum": None,
    },
    "storage": {
        "fsync": None,
        "segment_bytes_max": (SEGMENT_BYTES_MAX_LOWEST, SEGMENT_BYTES_MAX_HIGHEST),
        "snapshot_threshold_entries": (1, SNAPSHOT_THRESHOLD_ENTRIES_MAX),
        "snapshots_kept": (1, SNAPSHOTS_KEPT_MAX),
        "snapshot_threshold_bytes": (
            SNAPSHOT_THRESHOLD_BYTES_LOWEST,
            SNAPSHOT_THRESHOLD_BYTES_HIGHEST,
        ),
        "snapshot_entries_per_record": (0, SNAPSHOT_ENTRIES_PER_RECORD_MAX),
    },
    "limits": {
        "key_bytes_max": (1, KEY_BYTES_MAX_HIGHEST),
        "value_bytes_max": (1, VALUE_BYTES_MAX_HIGHEST),
        "request_timeout_ms": (1, REQUEST_TIMEOUT_MS_MAX),
        "proposals_pending_max": (1, PROPOSALS_PENDING_MAX_HIGHEST),
        "watch_history_revisions_max": (1, WATCH_HISTORY_REVISIONS_MAX_HIGHEST),
        "watch_history_bytes_max": (1, WATCH_HISTORY_BYTES_MAX_HIGHEST),
        "watchers_max": (0, WATCHERS_MAX_HIGHEST),
        "write_bytes_pending_max": (1, WRITE_BYTES_PENDING_MAX_HIGHEST),
        "request_header_timeout_ms": (1, REQUEST_HEADER_TIMEOUT_MS_MAX),
        "request_body_timeout_ms": (1, REQUEST_BODY_TIMEOUT_MS_MAX),
        "http_connections_max": (1, HTTP_CONNECTIONS_MAX_HIGHEST),
        "events_kept_max": (1, EVENTS_KEPT_MAX_HIGHEST),
    },
}
_SETTINGS_OPTIONAL = {
    "storage": frozenset({"snapshot_threshold_bytes", "snapshot_entries_per_record"}),
    "limits": frozenset(
        {
            "watch_history_revisions_max",
            "watch_history_bytes_max",
            "watchers_max",
            "write_bytes_pending_max",
            "request_header_timeout_ms",
            "request_body_timeout_ms",
            "http_connections_max",
            "events_kept_max",
        }
    ),
}
"""Keys added after files were written without them: a file that leaves one out gets its
default (every other key is required)."""
_SETTINGS_KEYS = {name: tuple(keys) for name, keys in _SETTINGS_RANGES.items()}
_NODE_KEYS = ("id", "raft_address", "http_address", "data_dir", "voter")
_NODE_REQUIRED_KEYS = ("id", "raft_address", "http_address", "data_dir")


def _config_from_table(table: Mapping[str, Any], base_dir: pathlib.Path) -> ClusterConfig:
    """Validate a TOML-shaped mapping and build the config, or raise ConfigError."""
    _check_keys(table, "", _TOP_LEVEL_KEYS, _TOP_LEVEL_REQUIRED_KEYS)
    cluster_id = table["cluster_id"]
    if not isinstance(cluster_id, str):
        raise ConfigError(f"cluster_id: expected a string, got {_type_name(cluster_id)}")
    if _CLUSTER_ID.fullmatch(cluster_id) is None:
        raise ConfigError(
            f"cluster_id: must be 1..{CLUSTER_ID_CHARS_MAX} characters from [A-Za-z0-9._-],"
            f" got {cluster_id[: CLUSTER_ID_CHARS_MAX + 1]!r}"
        )
    settings = {name: _settings_from_table(table[name], name) for name in _SETTINGS_RANGES}
    if settings["raft"]["election_ticks"] <= settings["raft"]["heartbeat_ticks"]:
        raise ConfigError(
            f"raft.election_ticks: must be > heartbeat_ticks"
            f" ({settings['raft']['heartbeat_ticks']}), got {settings['raft']['election_ticks']}"
        )
    limits = settings["limits"]
    if "write_bytes_pending_max" not in limits:
        limits["write_bytes_pending_max"] = WRITE_BYTES_PENDING_PER_VALUE * (
            limits["value_bytes_max"] + limits["key_bytes_max"]
        )
    nodes = _nodes_from_table(table["nodes"], pathlib.Path(os.path.abspath(base_dir)))
    peer_secret_file: pathlib.Path | None = None
    if "peer_secret_file" in table:
        name = table["peer_secret_file"]
        if not isinstance(name, str) or not name or len(name.encode()) > DATA_DIR_BYTES_MAX:
            raise ConfigError(
                f"peer_secret_file: expected a path of 1..{DATA_DIR_BYTES_MAX} bytes,"
                f" got {_type_name(name)}"
            )
        peer_secret_file = pathlib.Path(os.path.abspath(pathlib.Path(base_dir) / name))
    tls: TlsSettings | None = None
    if "tls" in table:
        paths = _tls_table(table["tls"], "tls", _TLS_KEYS, ("cert", "key"), base_dir)
        tls = TlsSettings(**paths)
    peer_tls: PeerTlsSettings | None = None
    if "peer_tls" in table:
        paths = _tls_table(table["peer_tls"], "peer_tls", _PEER_TLS_KEYS, _PEER_TLS_KEYS, base_dir)
        peer_tls = PeerTlsSettings(**paths)
    auth = AuthSettings()
    if "auth" in table:
        value = table["auth"]
        if not isinstance(value, dict):
            raise ConfigError(f"auth: expected a table, got {_type_name(value)}")
        _check_keys(value, "auth.", ("metrics_require_auth",), ())
        metrics_require_auth = value.get("metrics_require_auth", False)
        if not isinstance(metrics_require_auth, bool):
            raise ConfigError(
                "auth.metrics_require_auth: expected a boolean,"
                f" got {_type_name(metrics_require_auth)}"
            )
        auth = AuthSettings(metrics_require_auth)
    return ClusterConfig(
        auth=auth,
        peer_secret_file=peer_secret_file,
        tls=tls,
        peer_tls=peer_tls,
        cluster_id=cluster_id,
        nodes=nodes,
        raft=RaftSettings(**settings["raft"]),
        storage=StorageSettings(**settings["storage"]),
        limits=LimitSettings(**settings["limits"]),
    )


def _tls_table(
    value: object,
    name: str,
    keys: tuple[str, ...],
    required: tuple[str, ...],
    base_dir: pathlib.Path,
) -> dict[str, pathlib.Path]:
    """Check a ``[tls]``/``[peer_tls]`` table: every value a path, resolved against the
    config's directory (``{id}`` kept for `TlsSettings.for_node`)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table, got {_type_name(value)}")
    _check_keys(value, f"{name}.", keys, required)
    paths: dict[str, pathlib.Path] = {}
    for key in keys:
        if key not in value:
            continue
        text = value[key]
        if (
            not isinstance(text, str)
            or not text
            or "\x00" in text
            or len(text.encode("utf-8", "surrogatepass")) > DATA_DIR_BYTES_MAX
        ):
            raise ConfigError(
                f"{name}.{key}: expected a file path of 1..{DATA_DIR_BYTES_MAX} bytes,"
                f" got {_type_name(text)}"
            )
        braces = text.replace(NODE_ID_PLACEHOLDER, "")
        if "{" in braces or "}" in braces:
            raise ConfigError(
                f"{name}.{key}: the only placeholder is {NODE_ID_PLACEHOLDER} (the node's id),"
                f" got {text!r}"
            )
        paths[key] = pathlib.Path(os.path.normpath(os.path.join(base_dir, text)))
    return paths


def _check_keys(
    table: Mapping[str, Any], prefix: str, allowed: tuple[str, ...], required: tuple[str, ...]
) -> None:
    """Refuse keys not in `allowed` (typos must not silently fall back to defaults) and
    report the first missing key of `required`."""
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key {prefix + key!r}")
    for key in required:
        if key not in table:
            raise ConfigError(f"{prefix}{key}: missing required key")


def _settings_from_table(value: object, name: str) -> dict[str, Any]:
    """Check one settings table against `_SETTINGS_RANGES[name]`; the values by key."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table, got {_type_name(value)}")
    keys = _SETTINGS_KEYS[name]
    optional = _SETTINGS_OPTIONAL.get(name, frozenset())
    _check_keys(value, f"{name}.", keys, tuple(key for key in keys if key not in optional))
    result: dict[str, Any] = {}
    for key, bounds in _SETTINGS_RANGES[name].items():
        if key not in value:
            continue  # optional: the settings class's default
        if bounds is None:
            result[key] = _check_bool(value[key], f"{name}.{key}")
        else:
            result[key] = _check_int(value[key], f"{name}.{key}", *bounds)
    return result


def _nodes_from_table(value: object, base_dir: pathlib.Path) -> tuple[NodeSpec, ...]:
    """Check the ``[[nodes]]`` array and everything that must hold across nodes."""
    if not isinstance(value, list):
        raise ConfigError(
            f"nodes: expected an array of tables ([[nodes]]), got {_type_name(value)}"
        )
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"nodes[{position}]: expected a table, got {_type_name(item)}")
    if not 1 <= len(value) <= NODES_MAX:
        raise ConfigError(f"nodes: must have 1..{NODES_MAX} [[nodes]] tables, got {len(value)}")
    specs: list[NodeSpec] = []
    ids_seen: set[int] = set()
    # Address text (normalised host:port) -> the key path that first used it.
    addresses_seen: dict[str, str] = {}
    for position, item in enumerate(value):
        prefix = f"nodes[{position}]"
        _check_keys(item, f"{prefix}.", _NODE_KEYS, _NODE_REQUIRED_KEYS)
        node_id = _check_int(item["id"], f"{prefix}.id", 1, NODE_ID_MAX)
        if node_id in ids_seen:
            raise ConfigError(f"{prefix}.id: duplicate id {node_id}")
        ids_seen.add(node_id)
        hosts_ports: dict[str, tuple[str, int]] = {}
        for key in ("raft_address", "http_address"):
            host, port = parse_address(item[key], f"{prefix}.{key}")
            address = _join_address(host, port)
            if address in addresses_seen:
                raise ConfigError(
                    f"{prefix}.{key}: duplicate address {address}"
                    f" (already {addresses_seen[address]})"
                )
            addresses_seen[address] = f"{prefix}.{key}"
            hosts_ports[key] = (host, port)
        voter = _check_bool(item.get("voter", True), f"{prefix}.voter")
        specs.append(
            NodeSpec(
                id=node_id,
                raft_host=hosts_ports["raft_address"][0],
                raft_port=hosts_ports["raft_address"][1],
                http_host=hosts_ports["http_address"][0],
                http_port=hosts_ports["http_address"][1],
                data_dir=_resolve_data_dir(item["data_dir"], f"{prefix}.data_dir", base_dir),
                voter=voter,
            )
        )
    if not any(spec.voter for spec in specs):
        raise ConfigError("nodes: at least one node must be a voter (voter = true)")
    return tuple(specs)


def _check_int(value: object, key_path: str, minimum: int, maximum: int) -> int:
    # bool is a subclass of int in Python; `true` where a number belongs is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key_path}: expected an integer, got {_type_name(value)}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{key_path}: must be in {minimum}..{maximum}, got {value}")
    return value


def _check_bool(value: object, key_path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key_path}: expected true or false, got {_type_name(value)}")
    return value


def parse_address(value: object, key_path: str) -> tuple[str, int]:
    """``host:port`` -> (normalised host, port); IPv6 literals must be bracketed."""
    if not isinstance(value, str):
        raise ConfigError(f"{key_path}: expected a string host:port, got {_type_name(value)}")
    if len(value) > ADDRESS_CHARS_MAX:
        raise ConfigError(f"{key_path}: longer than {ADDRESS_CHARS_MAX} characters")
    host_text, colon, port_text = value.rpartition(":")
    if not colon or not host_text or _PORT_TEXT.fullmatch(port_text) is None:
        raise ConfigError(f"{key_path}: expected host:port, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= PORT_MAX:
        raise ConfigError(f"{key_path}: port must be in 1..{PORT_MAX}, got {port}")
    return _parse_host(host_text, key_path), port


def _parse_host(text: str, key_path: str) -> str:
    """The normalised host (IP in canonical form, names lower-case), or ConfigError."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if text.startswith("[") and text.endswith("]"):
        try:
            address = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise ConfigError(f"{key_path}: {text!r} is not an IPv6 address in brackets") from None
    elif ":" in text:
        raise ConfigError(f"{key_path}: expected host:port (an IPv6 host goes in brackets)")
    elif _ALL_DIGITS_AND_DOTS.fullmatch(text):
        # Digits and dots only: it is meant as an IPv4 address, never as a name.
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            raise ConfigError(f"{key_path}: {text!r} is not a valid IPv4 address") from None
    else:
        name = text.lower()
        labels = name.removesuffix(".").split(".")
        if len(name) > HOST_CHARS_MAX or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(
                f"{key_path}: host {text[:HOST_CHARS_MAX]!r} is not an IP address,"
                f" 'localhost' or a DNS name"
            )
        return name.removesuffix(".")
    if address.is_unspecified:
        # 0.0.0.0 / :: mean "every interface" to bind() but are not addresses a peer can dial.
        raise ConfigError(
            f"{key_path}: {address} is not an address peers or clients can connect to"
            f" (write the node's reachable address; a DNS name listens on all interfaces)"
        )
    return str(address)


def _resolve_data_dir(value: object, key_path: str, base_dir: pathlib.Path) -> pathlib.Path:
    if not isinstance(value, str):
        raise ConfigError(f"{key_path}: expected a string path, got {_type_name(value)}")
    if not value:
        raise ConfigError(f"{key_path}: must not be empty")
    if "\x00" in value:
        raise ConfigError(f"{key_path}: must not contain NUL characters")
    # normpath, not resolve(): the directory need not exist yet and symlinks are the
    # operator's business; only "." and ".." are folded so equal configs compare equal.
    resolved = os.path.normpath(os.path.join(base_dir, value))
    try:
        resolved_bytes = len(resolved.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (undecodable file names) cannot be written back as TOML.
        raise ConfigError(f"{key_path}: not valid Unicode") from None
    if resolved_bytes > DATA_DIR_BYTES_MAX:
        raise ConfigError(f"{key_path}: longer than {DATA_DIR_BYTES_MAX} bytes once resolved")
    return pathlib.Path(resolved)


# --- Helpers --------------------------------------------------------------------------------


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _listen_host(host: str) -> str | None:
    """Where to bind for an address whose host is `host`.

    An IP literal or ``localhost`` is bound as written, so a local cluster stays on loopback.
    Any other name is a name the node is *reached* by (a Docker service name, a DNS record
    for a load balancer or NAT) and need not resolve to an address of this machine, or may
    resolve to one that does not cover loopback; the node then listens on that port on all
    interfaces (None, asyncio's ``host=None``).
    """
    if host == "localhost" or _is_ip_literal(host):
        return host
    return None


def _join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    """The TOML-ish name of a value's type, for error messages (dates show their class)."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


# TOML basic strings must escape '"', '\\' and every control character (U+0000..U+001F and
# U+007F); everything else may appear as is.
_TOML_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    parts = ['"']
    for char in text:
        if char in _TOML_SHORT_ESCAPES:
            parts.append(_TOML_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            parts.append(f"\\u{ord(char):04X}")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)


def _toml_scalar(value: int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- The peer secret (issue #20) ------------------------------------------------------------

PEER_SECRET_FILE_NAME = "peer-secret"
"""The file `cluster up` writes the secret to, beside `cluster.toml` (mode 0600)."""

PEER_SECRET_BYTES = 32
"""The size of a generated peer secret (`secrets.token_bytes`): 256 bits."""

PEER_SECRET_FILE_BYTES_MAX = 4096
"""The largest peer secret file read: a hex secret and a newline fit many times over."""

PEER_SECRET_BYTES_MIN = 16
"""The shortest secret accepted (128 bits): a shorter one could be guessed offline from a
recorded handshake. The same bound as `kvraft.transport.frames.PEER_SECRET_BYTES_MIN`."""


def new_peer_secret() -> bytes:
    """A fresh random peer secret."""
    import secrets

    return secrets.token_bytes(PEER_SECRET_BYTES)


def write_peer_secret(path: pathlib.Path, secret: bytes) -> None:
    """Write `secret` as hex to `path`, readable by its owner only (created 0600, never
    widened first), replacing the file atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def read_peer_secret(path: pathlib.Path) -> bytes:
    """The secret in `path`: hex (surrounding whitespace ignored) of at least
    PEER_SECRET_BYTES_MIN bytes. ConfigError naming the file, never its content."""
    try:
        with open(path, "rb") as file:
            data = file.read(PEER_SECRET_FILE_BYTES_MAX + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no peer secret there; make one with `kvraft peer-secret init {path}`"
            " and give every node of the cluster the same file"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the peer secret: {exc.strerror or exc}") from exc
    if len(data) > PEER_SECRET_FILE_BYTES_MAX:
        raise ConfigError(f"{path}: peer secret file is larger than {PEER_SECRET_FILE_BYTES_MAX}")
    try:
        secret = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path}: the peer secret is not hex") from None
    if len(secret) < PEER_SECRET_BYTES_MIN:
        raise ConfigError(
            f"{path}: the peer secret is {len(secret)} bytes, at least {PEER_SECRET_BYTES_MIN}"
            " are needed (kvraft cluster up makes 32)"
        )
    return secret
