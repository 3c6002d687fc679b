"""Backups: the file format, downloading one from the leader, and restoring one into a new cluster.

Theory of operation
-------------------
`GET /v1/backup` (`kvraft.backup_http`) is served by the leader. It confirms its leadership
(ReadIndex, as a linearizable read does), so the backup holds every write acknowledged before
the request, and captures the state machine's own snapshot (`KVStateMachine.snapshot_chunks`)
in the same event-loop step as its revision (the applied index) and the membership. The
snapshot is then streamed in records of at most `BACKUP_DATA_RECORD_BYTES_MAX` bytes; nothing
holds the whole backup in memory. The state-machine bytes are opaque here: whatever format
`snapshot_chunks` writes, `KVStateMachine.restore` reads (and fully validates) back.

A streamed answer cannot carry a checksum header (it is known only at the end), so the file
is framed and ends with a checksum record. Backup file format, version `BACKUP_FORMAT_VERSION`::

    magic      8 bytes  b"KVBACKUP"
    record*    kind u8 | payload length u32 (big-endian) | payload
      HEADER   kind 1, exactly once, first: a msgpack map
                 {"format": 1, "cluster_id": str, "node_id": int, "revision": int, "keys": int,
                  "voters": [int], "learners": [int],
                  "members": [{"id": int, "raft_address": str, "http_address": str}],
                  "kvraft_version": str, "created_unix_s": float}
               (at most BACKUP_HEADER_BYTES_MAX bytes)
      DATA     kind 2, zero or more: the next piece of the state machine's snapshot stream
               (at most BACKUP_DATA_RECORD_BYTES_MAX bytes each)
      END      kind 3, exactly once, last: data bytes u64 (big-endian) | SHA-256 (32 bytes) of
               every byte of the file before this record, magic included
    nothing after END.

A file is accepted only whole: a missing END (truncated), a checksum that does not match
(corrupted), a record over its limit, an unknown kind or bytes after END are refused with a
`BackupFormatError` saying which. The downloader checks the stream the same way as it writes
it, into a temporary file renamed over the target only once the END record matched.

Restore (`restore_backup`) builds the data directories of a *new* cluster: for each node the
state machine's snapshot at (revision, term 1) with a configuration of voters 1..N, and a WAL
that starts from it with term 1 (`StorageEngine.seed_snapshot`), plus the cluster's config
file with a new cluster id. Every node starts with exactly the backed-up state at the
backed-up revision; the first election is in term 2 and the first new write gets a revision
above the backup's. The old membership is recorded in the header for the operator; the new
cluster's members are the ones `restore` is told (the backup may come from a cluster whose
machines are gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

from kvraft.config import ClusterConfig, local_cluster_config, render_config
from kvraft.raft.messages import Configuration, SnapshotMeta
from kvraft.statemachine import KVStateMachine, SnapshotFormatError
from kvraft.storage import StorageEngine

__all__ = [
    "BACKUP_DATA_RECORD_BYTES_MAX",
    "BACKUP_FORMAT_VERSION",
    "BACKUP_HEADER_BYTES_MAX",
    "BACKUP_MAGIC",
    "BACKUP_READ_BYTES",
    "DOWNLOAD_IDLE_TIMEOUT_S",
    "RESTORED_TERM",
    "BackupFormatError",
    "BackupHeader",
    "BackupParser",
    "BackupUnavailable",
    "BackupWriter",
    "RestoreError",
    "RestoreSummary",
    "download_backup",
    "read_backup",
    "restore_backup",
    "verify_backup",
]

BACKUP_MAGIC = b"KVBACKUP"
"""The first 8 bytes of every backup file."""

BACKUP_FORMAT_VERSION = 1
"""The backup file format this module writes and the only one it reads."""

BACKUP_HEADER_BYTES_MAX = 1024 * 1024
"""The largest HEADER payload: the membership is at most 64 members of a few short strings."""

BACKUP_DATA_RECORD_BYTES_MAX = 1024 * 1024
"""The largest DATA payload: the server cuts snapshot chunks to this, so a reader holds at
most one such record (plus the bytes it is fed at once) in memory."""

BACKUP_READ_BYTES = 64 * 1024
"""How much a download or a restore reads at once."""

DOWNLOAD_IDLE_TIMEOUT_S = 30.0
"""How long a download waits for the next bytes of a started stream before giving up on it."""

RESTORED_TERM = 1
"""The term of the restored snapshot and of every new node's hard state."""

_KIND_HEADER = 1
_KIND_DATA = 2
_KIND_END = 3
_RECORD_PREFIX = struct.Struct(">BI")
_END_PAYLOAD = struct.Struct(">Q32s")
_HEADER_KEYS = frozenset(
    {
        "format",
        "cluster_id",
        "node_id",
        "revision",
        "keys",
        "voters",
        "learners",
        "members",
        "kvraft_version",
        "created_unix_s",
    }
)
_REVISION_MAX = 2**63 - 1


class BackupFormatError(ValueError):
    """The backup bytes are truncated, corrupted or not a kvraft backup."""


class BackupUnavailable(Exception):
    """No endpoint gave a complete backup before the deadline; the message says what each did."""


class RestoreError(Exception):
    """A restore cannot be done (the target is not empty, the backup is refused, ...)."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup says about itself (see the format in the module docstring).

    Fields:
        cluster_id: the cluster it was taken from.
        node_id: the leader that served it.
        revision: the applied index the state is at: every key's revision is at most this.
        keys: how many keys it holds.
        voters, learners: the membership when it was taken.
        members: each member's id, raft_address and http_address then.
        kvraft_version: the release that wrote it.
        created_unix_s: when it was taken (the leader's clock).
    """

    cluster_id: str
    node_id: int
    revision: int
    keys: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    members: tuple[dict[str, Any], ...]
    kvraft_version: str
    created_unix_s: float

    def to_payload(self) -> bytes:
        document = {
            "format": BACKUP_FORMAT_VERSION,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "revision": self.revision,
            "keys": self.keys,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "members": [dict(member) for member in self.members],
            "kvraft_version": self.kvraft_version,
            "created_unix_s": self.created_unix_s,
        }
        payload: bytes = msgpack.packb(document, use_bin_type=True)
        return payload

    @classmethod
    def from_payload(cls, payload: bytes) -> BackupHeader:
        """Parse and check an untrusted HEADER payload; BackupFormatError if anything is off."""
        try:
            document = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as error:
            raise BackupFormatError(f"backup header is not msgpack: {error}") from None
        if not isinstance(document, dict) or set(document) != _HEADER_KEYS:
            raise BackupFormatError("backup header does not have the expected fields")
        if document["format"] != BACKUP_FORMAT_VERSION or type(document["format"]) is not int:
            raise BackupFormatError(
                f"backup format {document['format']!r} is not supported (this release reads "
                f"{BACKUP_FORMAT_VERSION})"
            )
        ints = ("node_id", "revision", "keys")
        if not all(
            type(document[name]) is int and 0 <= document[name] <= _REVISION_MAX for name in ints
        ):
            raise BackupFormatError("backup header: node_id, revision and keys must be integers")
        lists = ("voters", "learners", "members")
        if not all(isinstance(document[name], list) for name in lists):
            raise BackupFormatError("backup header: voters, learners and members must be lists")
        if not all(type(i) is int for i in document["voters"] + document["learners"]):
            raise BackupFormatError("backup header: member ids must be integers")
        if not all(isinstance(member, dict) for member in document["members"]):
            raise BackupFormatError("backup header: each member must be a map")
        text = ("cluster_id", "kvraft_version")
        if not all(isinstance(document[name], str) for name in text):
            raise BackupFormatError("backup header: cluster_id and kvraft_version must be strings")
        if not isinstance(document["created_unix_s"], int | float):
            raise BackupFormatError("backup header: created_unix_s must be a number")
        return cls(
            cluster_id=document["cluster_id"],
            node_id=document["node_id"],
            revision=document["revision"],
            keys=document["keys"],
            voters=tuple(document["voters"]),
            learners=tuple(document["learners"]),
            members=tuple(document["members"]),
            kvraft_version=document["kvraft_version"],
            created_unix_s=float(document["created_unix_s"]),
        )


def _record(kind: int, payload: bytes | memoryview) -> bytes:
    return _RECORD_PREFIX.pack(kind, len(payload)) + bytes(payload)


class BackupWriter:
    """The bytes of a backup, piece by piece, with the running checksum (sans-IO)."""

    def __init__(self, header: BackupHeader) -> None:
        self._header = header
        self._hash = hashlib.sha256()
        self._data_bytes = 0

    def _hashed(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data

    def start(self) -> bytes:
        """The magic and the HEADER record."""
        payload = self._header.to_payload()
        if len(payload) > BACKUP_HEADER_BYTES_MAX:
            raise ValueError(f"backup header over {BACKUP_HEADER_BYTES_MAX} bytes")
        return self._hashed(BACKUP_MAGIC + _record(_KIND_HEADER, payload))

    def data(self, chunk: bytes) -> Iterator[bytes]:
        """DATA records for one snapshot chunk, cut to `BACKUP_DATA_RECORD_BYTES_MAX`."""
        view = memoryview(chunk)
        for start in range(0, len(view), BACKUP_DATA_RECORD_BYTES_MAX):
            piece = view[start : start + BACKUP_DATA_RECORD_BYTES_MAX]
            self._data_bytes += len(piece)
            yield self._hashed(_record(_KIND_DATA, piece))

    def end(self) -> bytes:
        """The END record (nothing may follow it)."""
        return _record(_KIND_END, _END_PAYLOAD.pack(self._data_bytes, self._hash.digest()))


class BackupParser:
    """Checks a backup stream as it arrives (sans-IO): `feed` bytes in any pieces, get the
    HEADER and DATA payloads out; `finish` at the end of the stream. Holds at most one record
    plus the bytes of one `feed`. Raises `BackupFormatError` at the first thing wrong."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._offset = 0  # file offset of the start of `_buffer`
        self._magic_seen = False
        self.header: BackupHeader | None = None
        """The HEADER, once parsed."""
        self.data_bytes = 0
        """DATA bytes seen so far."""
        self.ended = False
        """The END record was read and matched."""

    def feed(self, data: bytes) -> list[bytes]:
        """The DATA payloads completed by `data`, in order."""
        if self.ended:
            if data:
                raise BackupFormatError(
                    f"backup has bytes after its end record (offset {self._offset})"
                )
            return []
        self._buffer += data
        payloads: list[bytes] = []
        if not self._magic_seen:
            if len(self._buffer) < len(BACKUP_MAGIC):
                if not BACKUP_MAGIC.startswith(bytes(self._buffer)):
                    raise BackupFormatError("not a kvraft backup file (bad magic)")
                return payloads
            if bytes(self._buffer[: len(BACKUP_MAGIC)]) != BACKUP_MAGIC:
                raise BackupFormatError("not a kvraft backup file (bad magic)")
            self._consume(len(BACKUP_MAGIC))
            self._magic_seen = True
        while len(self._buffer) >= _RECORD_PREFIX.size:
            kind, length = _RECORD_PREFIX.unpack_from(self._buffer)
            self._check_prefix(kind, length)
            if len(self._buffer) < _RECORD_PREFIX.size + length:
                break
            payload = bytes(self._buffer[_RECORD_PREFIX.size : _RECORD_PREFIX.size + length])
            if kind == _KIND_END:
                self._end(payload)
                del self._buffer[: _RECORD_PREFIX.size + length]
                if self._buffer:
                    raise BackupFormatError("backup has bytes after its end record")
                break
            self._consume(_RECORD_PREFIX.size + length)
            if kind == _KIND_HEADER:
                self.header = BackupHeader.from_payload(payload)
            else:
                self.data_bytes += len(payload)
                payloads.append(payload)
        return payloads

    def finish(self) -> BackupHeader:
        """At the end of the stream: the header, or BackupFormatError if it was cut short."""
        if not self.ended:
            raise BackupFormatError(
                f"backup is truncated: it ends at byte {self._offset + len(self._buffer)} "
                "without its end record (an interrupted download or a partial copy)"
            )
        assert self.header is not None
        return self.header

    def _consume(self, count: int) -> None:
        self._hash.update(self._buffer[:count])
        del self._buffer[:count]
        self._offset += count

    def _check_prefix(self, kind: int, length: int) -> None:
        where = f"record at offset {self._offset}"
        if kind not in (_KIND_HEADER, _KIND_DATA, _KIND_END):
            raise BackupFormatError(f"backup is corrupted: {where} has unknown kind {kind}")
        if (kind == _KIND_HEADER) != (self.header is None):
            raise BackupFormatError(
                f"backup is corrupted: {where}: the header must come first, once"
            )
        limit = {
            _KIND_HEADER: BACKUP_HEADER_BYTES_MAX,
            _KIND_DATA: BACKUP_DATA_RECORD_BYTES_MAX,
            _KIND_END: _END_PAYLOAD.size,
        }[kind]
        if length > limit or (kind == _KIND_END and length != _END_PAYLOAD.size):
            raise BackupFormatError(
                f"backup is corrupted: {where} claims {length} bytes (limit {limit})"
            )

    def _end(self, payload: bytes) -> None:
        data_bytes, digest = _END_PAYLOAD.unpack(payload)
        if digest != self._hash.digest() or data_bytes != self.data_bytes:
            raise BackupFormatError(
                "backup is corrupted: its SHA-256 checksum does not match its contents"
            )
        self.ended = True


def _read_pieces(file: IO[bytes]) -> Iterator[bytes]:
    while piece := file.read(BACKUP_READ_BYTES):
        yield piece


def verify_backup(path: Path) -> BackupHeader:
    """Read the whole file and check its framing and checksum; the header, or
    BackupFormatError / OSError."""
    parser = BackupParser()
    with open(path, "rb") as file:
        for piece in _read_pieces(file):
            parser.feed(piece)
    return parser.finish()


def read_backup(path: Path) -> tuple[BackupHeader, KVStateMachine]:
    """Verify the file (checksum first, so a damaged file is reported as such), then rebuild
    the state machine from it; BackupFormatError if either fails."""
    header = verify_backup(path)
    parser = BackupParser()

    def data_chunks(file: IO[bytes]) -> Iterator[bytes]:
        for piece in _read_pieces(file):
            yield from parser.feed(piece)

    with open(path, "rb") as file:
        try:
            machine = KVStateMachine.restore(data_chunks(file))
        except SnapshotFormatError as error:
            raise BackupFormatError(
                f"backup's state machine snapshot is refused: {error}"
            ) from None
    if machine.applied_index != header.revision or len(machine) != header.keys:
        raise BackupFormatError(
            f"backup header says revision {header.revision} and {header.keys} keys, its data "
            f"holds revision {machine.applied_index} and {len(machine)} keys"
        )
    return header, machine


# --- download ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadSummary:
    """A finished download: its header, the file's size and which endpoint served it."""

    header: BackupHeader
    file_bytes: int
    endpoint: str


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _download_once(
    url: str,
    path: Path,
    idle_timeout_s: float,
    progress: Callable[[int], None] | None,
    ssl_context: ssl.SSLContext | None = None,
    authorization: str | None = None,
) -> tuple[BackupHeader, int]:
    """One attempt: stream `url` into a temporary file next to `path`, checking it; rename it
    over `path` only once it is complete and fsynced."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    request = urllib.request.Request(url, method="GET")
    if authorization is not None:  # a bearer token, once auth is enabled (#20)
        request.add_header("Authorization", authorization)
    parser = BackupParser()
    file_bytes = 0
    try:
        # urllib follows the follower's 307 to the leader (a GET may be redirected as is).
        with (
            urllib.request.urlopen(
                request, timeout=idle_timeout_s, context=ssl_context
            ) as response,
            open(temporary, "wb") as file,
        ):
            while piece := response.read(BACKUP_READ_BYTES):
                parser.feed(piece)
                file.write(piece)
                file_bytes += len(piece)
                if progress is not None:
                    progress(file_bytes)
            header = parser.finish()
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
        return header, file_bytes
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _http_error_text(error: urllib.error.HTTPError) -> str:
    with contextlib.suppress(Exception):
        body = error.read(4096)
        message = _json_error_message(body)
        if message:
            return f"HTTP {error.code}: {message}"
    return f"HTTP {error.code}"


def _json_error_message(body: bytes) -> str:
    """The `message` of a node's JSON error body, or ''."""
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            return str(document["message"])[:200]
    return ""


RETRY_PAUSE_S = 0.2
"""The pause between two rounds over the endpoints while none gives a backup."""


def download_backup(
    endpoints: Sequence[str],
    path: Path,
    *,
    timeout_s: float,
    idle_timeout_s: float = DOWNLOAD_IDLE_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    authorization: str | None = None,
) -> DownloadSummary:
    """Download a backup from the cluster into `path` (atomically: a temporary file renamed).

    Tries each endpoint in turn (a follower redirects to the leader) until one streams a
    complete, checked backup, for up to `timeout_s` to *start* one; a started stream may take
    as long as it needs while bytes keep arriving within `idle_timeout_s`. A client's error
    (4xx) ends at once; anything else moves on to the next endpoint. `BackupUnavailable` if no
    endpoint gave one, naming what each did. `ssl_context`: for https:// endpoints;
    `authorization`: an ``Authorization`` header value (``Bearer <token>``), kept across the
    follower's redirect to the leader.
    """
    if not endpoints:
        raise ValueError("no endpoints")
    deadline_s = time.monotonic() + timeout_s
    failures: dict[str, str] = {}
    while True:
        for endpoint in endpoints:
            url = endpoint.rstrip("/") + "/v1/backup"
            try:
                header, file_bytes = _download_once(
                    url, path, idle_timeout_s, progress, ssl_context, authorization
                )
                return DownloadSummary(header, file_bytes, endpoint)
            except urllib.error.HTTPError as error:
                failures[endpoint] = _http_error_text(error)
                if 400 <= error.code < 500:
                    raise BackupUnavailable(f"{endpoint}: {failures[endpoint]}") from None
            except BackupFormatError as error:
                failures[endpoint] = f"sent a damaged backup: {error}"
            except (OSError, urllib.error.URLError) as error:
                reason = getattr(error, "reason", None) or error
                failures[endpoint] = f"{type(error).__name__}: {reason}"
            if time.monotonic() >= deadline_s:
                tried = "; ".join(f"{where}: {what}" for where, what in failures.items())
                raise BackupUnavailable(f"no backup within {timeout_s:g} s ({tried})")
        time.sleep(RETRY_PAUSE_S)  # a pause between rounds, e.g. during an election


# --- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    """A finished restore: the backup's header and the new cluster's config."""

    header: BackupHeader
    config: ClusterConfig
    config_path: Path


CONFIG_FILE_NAME = "cluster.toml"
"""The config file a restore writes: the one `kvraft cluster up --data-dir DIR` reads."""


def new_cluster_id() -> str:
    """A fresh cluster id, so the restored nodes never talk to the old cluster's."""
    return f"kvraft-restored-{secrets.token_hex(4)}"


def restore_backup(
    backup_path: Path,
    data_dir: Path,
    *,
    nodes: int,
    cluster_id: str | None = None,
    http_port_base: int = 8001,
    raft_port_base: int = 7001,
    host: str = "127.0.0.1",
) -> RestoreSummary:
    """Build `data_dir` for a new cluster of `nodes` voters that starts at the backup's state:
    `data_dir/cluster.toml` (as `cluster up` would write it, with `cluster_id` or a new one)
    and `data_dir/node{i}` for each node. Refuses (RestoreError) a `data_dir` that already
    holds a config or a non-empty node directory, and a backup that does not verify; on any
    failure it removes what it created."""
    config_path = data_dir / CONFIG_FILE_NAME
    if config_path.exists():
        raise RestoreError(
            f"{config_path} exists: restore builds a new cluster in an empty directory"
        )
    try:
        config = local_cluster_config(
            nodes,
            data_dir,
            http_port_base=http_port_base,
            raft_port_base=raft_port_base,
            host=host,
            cluster_id=cluster_id or new_cluster_id(),
        )
    except ValueError as error:  # ConfigError is a ValueError
        raise RestoreError(str(error)) from None
    for spec in config.nodes:
        if spec.data_dir.exists() and any(spec.data_dir.iterdir()):
            raise RestoreError(
                f"{spec.data_dir} is not empty: restore never overwrites a node's data"
            )
    try:
        header, machine = read_backup(backup_path)
    except BackupFormatError as error:
        raise RestoreError(f"{backup_path}: {error}; nothing was restored") from None
    except OSError as error:
        raise RestoreError(f"{backup_path}: {error.strerror or error}") from None
    if header.revision < 1:
        raise RestoreError(
            f"{backup_path}: the backup is at revision 0 (an empty log): nothing to restore"
        )
    meta = SnapshotMeta(
        index=header.revision,
        term=RESTORED_TERM,
        # No context: the nodes take their addresses from the config file until the first
        # membership change (`kvraft.address_book`).
        configuration=Configuration(voters=frozenset(spec.id for spec in config.nodes)),
    )
    created: list[Path] = []
    data_dir_existed = data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for spec in config.nodes:
            if not spec.data_dir.exists():
                created.append(spec.data_dir)
            engine = StorageEngine.open(spec.data_dir)
            try:
                engine.seed_snapshot(meta, machine.snapshot_chunks())
            finally:
                engine.close()
            # Read it back as the node will at start: the snapshot and the WAL must connect.
            check = StorageEngine.open(spec.data_dir)
            try:
                if check.recovered.snapshot_meta != meta:
                    raise RestoreError(f"{spec.data_dir}: the restored snapshot did not read back")
            finally:
                check.close()
        temporary = config_path.with_name(config_path.name + ".tmp")
        temporary.write_text(render_config(config), encoding="utf-8")
        os.replace(temporary, config_path)
    except BaseException:
        for directory in created:
            shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            config_path.with_name(config_path.name + ".tmp").unlink()
        if not data_dir_existed:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return RestoreSummary(header, config, config_path)
