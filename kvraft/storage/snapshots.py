"""Snapshot files: write them crash-safely, verify them, keep the last few, stream them back.

A snapshot is one file ``snapshot-<index:020d>-<term:020d>.snap``::

    header (32 bytes, little-endian) = magic "KVSN" | version u16 | reserved u16
        | meta length u32 | data length u64 | data CRC32 u32 | meta CRC32 u32
        | CRC32 of the header's first 28 bytes u32
    meta = msgpack [index, term, encode_configuration(configuration)]
    data = the state machine's bytes

Writing streams the chunks into ``<name>.<pid>.<n>.tmp`` behind a zeroed header, fills in the
header (lengths and checksums are known only at the end), fsyncs, renames to the final name
and fsyncs the directory: a crash leaves either the old set of snapshots plus a temp file
(deleted at the next open) or the new snapshot, complete.

At open the newest snapshot is verified in full (its data checksum is read through); if it is
damaged it is renamed to ``<name>.corrupt`` (kept for the operator, ignored from then on), a
warning is logged and the next older one is tried. Older snapshots only have their header
and meta checked at open; they are the fallback, verified in full if they are ever needed.
Whether the log still connects to the snapshot chosen is the caller's check
(`kvraft.storage.engine`), which refuses to start if it does not.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from kvraft.raft.codec import CodecError, decode_configuration, encode_configuration
from kvraft.raft.messages import SnapshotMeta
from kvraft.storage.api import StorageCorruptionError, StorageError
from kvraft.storage.fileops import FileOps, make_directories, write_all
from kvraft.storage.wal import INDEX_MAX, TERM_MAX

__all__ = [
    "SNAPSHOTS_KEPT_DEFAULT",
    "SNAPSHOTS_KEPT_MAX",
    "SNAPSHOT_CHUNK_BYTES",
    "SNAPSHOT_DATA_BYTES_MAX",
    "SNAPSHOT_FORMAT_VERSION",
    "SNAPSHOT_HEADER_BYTES",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_META_BYTES_MAX",
    "SnapshotFile",
    "SnapshotReader",
    "SnapshotStore",
    "SnapshotWriter",
    "decode_snapshot_meta",
    "encode_snapshot_meta",
    "snapshot_file_name",
]

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"KVSN"
"""The first bytes of every snapshot file."""

SNAPSHOT_FORMAT_VERSION = 1
"""The only snapshot file version this code reads."""

_HEADER = struct.Struct("<4sHHIQIII")
SNAPSHOT_HEADER_BYTES = _HEADER.size
"""Size of the fixed header (32 bytes)."""

SNAPSHOT_META_BYTES_MAX = 1024 * 1024
"""The largest encoded meta (a configuration is at most 64 members and 64 KiB of context)."""

SNAPSHOT_DATA_BYTES_MAX = 1024**4
"""The largest snapshot data accepted (1 TiB): a header claiming more is corruption, and a
writer refuses to grow past it."""

SNAPSHOT_CHUNK_BYTES = 1024 * 1024
"""How much one read returns when streaming a snapshot (and when verifying one)."""

SNAPSHOTS_KEPT_DEFAULT = 2
"""Snapshots kept: the newest, and one fallback in case the newest is found damaged."""

SNAPSHOTS_KEPT_MAX = 16
"""The most snapshots `snapshots_kept` may ask for."""

_NAME = re.compile(r"^snapshot-(\d{20})-(\d{20})\.snap$")
_TEMP_SUFFIX = ".tmp"
_QUARANTINE_SUFFIX = ".corrupt"
_temp_numbers = itertools.count(1)


def snapshot_file_name(index: int, term: int) -> str:
    """The file name of the snapshot at (index, term)."""
    return f"snapshot-{index:020d}-{term:020d}.snap"


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    """The bytes of a snapshot's meta; ValueError if it is out of range."""
    if type(meta.index) is not int or not 1 <= meta.index <= INDEX_MAX:
        raise ValueError(f"snapshot index {meta.index!r} is out of range")
    if type(meta.term) is not int or not 1 <= meta.term <= TERM_MAX:
        raise ValueError(f"snapshot term {meta.term!r} is out of range")
    encoded: bytes = msgpack.packb(
        [meta.index, meta.term, encode_configuration(meta.configuration)], use_bin_type=True
    )
    if len(encoded) > SNAPSHOT_META_BYTES_MAX:
        raise ValueError(f"snapshot meta is {len(encoded)} bytes, over {SNAPSHOT_META_BYTES_MAX}")
    return encoded


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    """Decode what `encode_snapshot_meta` made; ValueError on anything else."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises many types on garbage
        raise ValueError(f"snapshot meta is not valid msgpack ({error})") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise ValueError("snapshot meta: expected [index, term, configuration]")
    index, term, configuration = obj
    if type(index) is not int or not 1 <= index <= INDEX_MAX:
        raise ValueError(f"snapshot meta: index {index!r} out of range")
    if type(term) is not int or not 1 <= term <= TERM_MAX:
        raise ValueError(f"snapshot meta: term {term!r} out of range")
    if not isinstance(configuration, bytes):
        raise ValueError("snapshot meta: configuration is not bytes")
    try:
        decoded = decode_configuration(configuration)
    except CodecError as error:
        raise ValueError(f"snapshot meta: {error}") from None
    return SnapshotMeta(index=index, term=term, configuration=decoded)


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot on disk.

    Fields:
        meta: what it covers.
        path: its file.
        data_bytes: the size of the state machine's data in it.
    """

    meta: SnapshotMeta
    path: Path
    data_bytes: int


@dataclass(frozen=True, slots=True)
class _Header:
    meta: SnapshotMeta
    data_offset: int
    data_bytes: int
    data_checksum: int


def _read_header(file_ops: FileOps, fd: int, path: Path) -> _Header:
    size = file_ops.size(fd)
    raw = file_ops.pread(fd, SNAPSHOT_HEADER_BYTES, 0)
    if len(raw) < SNAPSHOT_HEADER_BYTES:
        raise StorageCorruptionError(path, 0, "incomplete snapshot header")
    magic, version, _, meta_bytes, data_bytes, data_checksum, meta_checksum, checksum = (
        _HEADER.unpack(raw)
    )
    if magic != SNAPSHOT_MAGIC:
        raise StorageCorruptionError(path, 0, "not a snapshot file (bad magic)")
    if zlib.crc32(raw[: SNAPSHOT_HEADER_BYTES - 4]) != checksum:
        raise StorageCorruptionError(path, 0, "snapshot header checksum mismatch")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise StorageCorruptionError(path, 0, f"unsupported snapshot format version {version}")
    if meta_bytes > SNAPSHOT_META_BYTES_MAX or data_bytes > SNAPSHOT_DATA_BYTES_MAX:
        raise StorageCorruptionError(path, 0, "snapshot header claims sizes over the limits")
    if SNAPSHOT_HEADER_BYTES + meta_bytes + data_bytes != size:
        raise StorageCorruptionError(
            path,
            0,
            f"the file is {size} bytes but its header describes "
            f"{SNAPSHOT_HEADER_BYTES + meta_bytes + data_bytes}",
        )
    meta_raw = file_ops.pread(fd, meta_bytes, SNAPSHOT_HEADER_BYTES)
    if len(meta_raw) != meta_bytes or zlib.crc32(meta_raw) != meta_checksum:
        raise StorageCorruptionError(path, SNAPSHOT_HEADER_BYTES, "snapshot meta checksum mismatch")
    try:
        meta = decode_snapshot_meta(meta_raw)
    except ValueError as error:
        raise StorageCorruptionError(path, SNAPSHOT_HEADER_BYTES, str(error)) from None
    match = _NAME.match(path.name)
    if match is not None and (int(match.group(1)), int(match.group(2))) != (meta.index, meta.term):
        raise StorageCorruptionError(
            path, SNAPSHOT_HEADER_BYTES, f"meta ({meta.index}, {meta.term}) contradicts the name"
        )
    return _Header(meta, SNAPSHOT_HEADER_BYTES + meta_bytes, data_bytes, data_checksum)


class SnapshotReader:
    """Reads one snapshot's data in chunks and checks its checksum.

    The chunk that ends the data is only returned once the checksum over all of it matched
    (otherwise `StorageCorruptionError`), so a consumer that reached the end of the stream
    has seen exactly the bytes that were written. After that, `read_chunk` returns b"".
    """

    def __init__(self, file_ops: FileOps, path: Path, fd: int, header: _Header) -> None:
        self._file_ops = file_ops
        self._path = path
        self._fd = fd
        self._header = header
        self._offset = header.data_offset
        self._remaining = header.data_bytes
        self._checksum = 0
        self._verified = False

    @classmethod
    def open(cls, file_ops: FileOps, path: Path, expected: SnapshotMeta | None) -> SnapshotReader:
        """Open `path`; `StorageError` if it is missing, `StorageCorruptionError` if its header
        is damaged or it is not the snapshot `expected` (compared by index and term)."""
        try:
            fd = file_ops.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"{path}: no such snapshot (it is not kept)") from None
        try:
            header = _read_header(file_ops, fd, path)
            if expected is not None and (header.meta.index, header.meta.term) != (
                expected.index,
                expected.term,
            ):
                raise StorageCorruptionError(path, SNAPSHOT_HEADER_BYTES, "unexpected snapshot")
        except BaseException:
            file_ops.close(fd)
            raise
        return cls(file_ops, path, fd, header)

    @property
    def meta(self) -> SnapshotMeta:
        return self._header.meta

    @property
    def data_bytes(self) -> int:
        return self._header.data_bytes

    def read_chunk(self, chunk_bytes: int = SNAPSHOT_CHUNK_BYTES) -> bytes:
        """The next chunk of data (at most `chunk_bytes`), or b"" after the end."""
        if self._remaining == 0:
            self._verify()
            return b""
        length = min(chunk_bytes, self._remaining)
        chunk = self._file_ops.pread(self._fd, length, self._offset)
        if not chunk:
            raise StorageCorruptionError(self._path, self._offset, "snapshot file shrank")
        self._checksum = zlib.crc32(chunk, self._checksum)
        self._offset += len(chunk)
        self._remaining -= len(chunk)
        if self._remaining == 0:
            self._verify()
        return chunk

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._file_ops.close(fd)

    def _verify(self) -> None:
        if self._verified:
            return
        if self._checksum != self._header.data_checksum:
            raise StorageCorruptionError(
                self._path, self._header.data_offset, "snapshot data checksum mismatch"
            )
        self._verified = True


class SnapshotWriter:
    """A snapshot being written to its temp file (see `SnapshotStore.begin`)."""

    def __init__(
        self, file_ops: FileOps, meta: SnapshotMeta, meta_raw: bytes, temp: Path, final: Path
    ) -> None:
        self.meta = meta
        self.temp_path = temp
        self.final_path = final
        self._file_ops = file_ops
        self._meta_raw = meta_raw
        self._fd = -1
        self._checksum = 0
        self.data_bytes = 0

    def _open(self) -> None:
        self._fd = self._file_ops.open(
            self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC
        )
        # The real header is written last, when lengths and checksums are known; until then
        # the zeros fail the magic check, so a half-written file can never pass for a snapshot.
        write_all(self._file_ops, self._fd, bytes(SNAPSHOT_HEADER_BYTES) + self._meta_raw)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk of data; ValueError past SNAPSHOT_DATA_BYTES_MAX."""
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ValueError(f"snapshot chunks must be bytes, not {type(chunk)}")
        if self._fd < 0:
            raise StorageError(f"{self.temp_path}: this snapshot writer is finished")
        if self.data_bytes + len(chunk) > SNAPSHOT_DATA_BYTES_MAX:
            raise ValueError(f"snapshot data exceeds {SNAPSHOT_DATA_BYTES_MAX} bytes")
        write_all(self._file_ops, self._fd, bytes(chunk))
        self._checksum = zlib.crc32(chunk, self._checksum)
        self.data_bytes += len(chunk)

    def _finish(self, fsync: bool) -> None:
        prefix = _HEADER.pack(
            SNAPSHOT_MAGIC,
            SNAPSHOT_FORMAT_VERSION,
            0,
            len(self._meta_raw),
            self.data_bytes,
            self._checksum,
            zlib.crc32(self._meta_raw),
            0,
        )[: SNAPSHOT_HEADER_BYTES - 4]
        header = prefix + struct.pack("<I", zlib.crc32(prefix))
        if self._file_ops.pwrite(self._fd, header, 0) != len(header):
            raise OSError("short write of the snapshot header")
        if fsync:
            self._file_ops.sync_data(self._fd)
        fd, self._fd = self._fd, -1
        self._file_ops.close(fd)

    def _abandon(self) -> None:
        """Close and delete the temp file, ignoring errors (best effort cleanup; leftovers
        are deleted at the next open)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                self._file_ops.close(fd)
        with contextlib.suppress(OSError):
            self._file_ops.unlink(self.temp_path)


class SnapshotStore:
    """The snapshot directory. Not thread-safe: one thread writes; readers (`open_reader`)
    use their own descriptors and may run on other threads."""

    def __init__(
        self,
        directory: Path,
        file_ops: FileOps,
        *,
        fsync: bool,
        snapshots_kept: int,
        kept: list[SnapshotFile],
        quarantined: list[Path],
    ) -> None:
        self._directory = directory
        self._file_ops = file_ops
        self._fsync = fsync
        self._snapshots_kept = snapshots_kept
        self._kept = kept
        self.quarantined = quarantined
        """Damaged snapshots renamed aside at open."""

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        file_ops: FileOps | None = None,
        fsync: bool = True,
        snapshots_kept: int = SNAPSHOTS_KEPT_DEFAULT,
    ) -> SnapshotStore:
        """Find the snapshots in `directory` (created if missing): delete leftover temp files,
        verify the newest, set damaged ones aside, prune to `snapshots_kept`. OSError passes."""
        if type(snapshots_kept) is not int or not 1 <= snapshots_kept <= SNAPSHOTS_KEPT_MAX:
            raise ValueError(f"snapshots_kept must be in 1..{SNAPSHOTS_KEPT_MAX}")
        file_ops = file_ops or FileOps()
        make_directories(file_ops, directory, sync=fsync)
        changed = False
        candidates: list[tuple[int, int, Path]] = []
        for name in file_ops.list_directory(directory):
            if name.endswith(_TEMP_SUFFIX):
                logger.info("%s: deleting an unfinished snapshot", directory / name)
                file_ops.unlink(directory / name)
                changed = True
                continue
            match = _NAME.match(name)
            if match is not None:
                candidates.append((int(match.group(1)), int(match.group(2)), directory / name))
        candidates.sort()
        kept: list[SnapshotFile] = []
        quarantined: list[Path] = []
        for _, _, path in reversed(candidates):
            try:
                snapshot = cls._verify(file_ops, path, full=not kept)
            except StorageCorruptionError as error:
                aside = path.with_name(path.name + _QUARANTINE_SUFFIX)
                logger.warning("damaged snapshot set aside as %s: %s", aside.name, error)
                file_ops.replace(path, aside)
                quarantined.append(aside)
                changed = True
                continue
            kept.insert(0, snapshot)
        if changed and fsync:
            file_ops.sync_directory(directory)
        store = cls(
            directory,
            file_ops,
            fsync=fsync,
            snapshots_kept=snapshots_kept,
            kept=kept,
            quarantined=quarantined,
        )
        store.prune()
        return store

    @staticmethod
    def _verify(file_ops: FileOps, path: Path, *, full: bool) -> SnapshotFile:
        reader = SnapshotReader.open(file_ops, path, None)
        try:
            if full:
                while reader.read_chunk():
                    pass
            return SnapshotFile(reader.meta, path, reader.data_bytes)
        finally:
            reader.close()

    def verify(self, snapshot: SnapshotFile) -> None:
        """Read `snapshot` through; StorageCorruptionError if it is damaged."""
        self._verify(self._file_ops, snapshot.path, full=True)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def kept(self) -> list[SnapshotFile]:
        """The snapshots kept, oldest first."""
        return list(self._kept)

    @property
    def newest(self) -> SnapshotFile | None:
        """The newest snapshot (verified at open, or written since)."""
        return self._kept[-1] if self._kept else None

    def path_for(self, meta: SnapshotMeta) -> Path:
        return self._directory / snapshot_file_name(meta.index, meta.term)

    def begin(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Start writing a snapshot; ValueError if `meta` is invalid or older than the newest
        snapshot (a stale snapshot would be pruned at once, or replace a newer state)."""
        meta_raw = encode_snapshot_meta(meta)
        newest = self.newest
        if newest is not None and meta.index < newest.meta.index:
            raise ValueError(
                f"snapshot at {meta.index} is older than the newest one at {newest.meta.index}"
            )
        final = self.path_for(meta)
        temp = final.with_name(f"{final.name}.{os.getpid()}.{next(_temp_numbers)}{_TEMP_SUFFIX}")
        writer = SnapshotWriter(self._file_ops, meta, meta_raw, temp, final)
        try:
            writer._open()
        except BaseException:
            writer._abandon()
            raise
        return writer

    def commit(self, writer: SnapshotWriter) -> SnapshotFile:
        """Make the written snapshot durable and visible under its final name."""
        writer._finish(self._fsync)
        self._file_ops.replace(writer.temp_path, writer.final_path)
        if self._fsync:
            self._file_ops.sync_directory(self._directory)
        snapshot = SnapshotFile(writer.meta, writer.final_path, writer.data_bytes)
        self._kept = [kept for kept in self._kept if kept.path != snapshot.path]
        self._kept.append(snapshot)
        self._kept.sort(key=lambda kept: (kept.meta.index, kept.meta.term))
        return snapshot

    def abort(self, writer: SnapshotWriter) -> None:
        """Give up on a snapshot being written and delete its temp file."""
        writer._abandon()

    def write(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> SnapshotFile:
        """Write a whole snapshot from `chunks` (begin, write each, commit)."""
        writer = self.begin(meta)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return self.commit(writer)
        except BaseException:
            writer._abandon()
            raise

    def prune(self) -> list[Path]:
        """Delete all but the newest `snapshots_kept` snapshots; returns the deleted files."""
        excess = len(self._kept) - self._snapshots_kept
        if excess <= 0:
            return []
        doomed, self._kept = self._kept[:excess], self._kept[excess:]
        for snapshot in doomed:
            self._file_ops.unlink(snapshot.path)
        if self._fsync:
            self._file_ops.sync_directory(self._directory)
        return [snapshot.path for snapshot in doomed]

    def open_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        """Open the kept snapshot `meta` for reading (see `SnapshotReader.open`)."""
        return SnapshotReader.open(self._file_ops, self.path_for(meta), meta)
