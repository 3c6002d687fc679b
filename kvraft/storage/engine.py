"""The node's durable state, synchronously: WAL, snapshots, recovery and fail-stop in one object.

`StorageEngine` is what the writer thread of `kvraft.storage.disk.DiskStorage` drives, and what
tests drive directly. Layout of a data directory::

    DATA_DIR/lock          an exclusive lock: one process per data directory
    DATA_DIR/wal/          the write-ahead log (`kvraft.storage.wal`)
    DATA_DIR/snapshots/    the snapshot files (`kvraft.storage.snapshots`)

Recovery at open:

1. Snapshots: the newest one that passes its checksum is used; damaged newer ones are set aside
   with a warning (see `kvraft.storage.snapshots`).
2. The WAL is replayed (torn tail cut, corruption refused; see `kvraft.storage.wal`).
3. The two must connect. With a snapshot at (s, t): if the log starts after s + 1, entries are
   missing and `StorageCorruptionError` is raised (this is also what happens when the newest
   snapshot was damaged and the WAL was already compacted past the older one). If the log holds
   s with term t, or starts at s + 1, the entries after s are the recovered log. Otherwise the
   log is behind s or conflicts with it at s: a leader's snapshot was saved and the node stopped
   before the WAL recorded it, so §7's rule discards the log, and that decision is written to
   the WAL before anything else. Without a snapshot the log must start at 1. A WAL with no
   records next to existing snapshots means the term and vote were lost: corruption.

Compaction deletes WAL segments only up to the *oldest* kept snapshot (not the newest), so the
fallback snapshot is usable if the newest is ever found damaged.

Fail-stop: an `OSError` from any file operation puts the engine in a failed state; that call and
every later one raise `StorageFailedError`. Nothing is retried: after a failed fsync the kernel
may have dropped the dirty pages, and a retry that succeeds would report lost data as durable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from kvraft.raft.messages import Entry, HardState, SnapshotMeta
from kvraft.storage.api import (
    RecoveredState,
    StorageCorruptionError,
    StorageError,
    StorageFailedError,
)
from kvraft.storage.fileops import FileOps, make_directories
from kvraft.storage.snapshots import (
    SNAPSHOT_DATA_BYTES_MAX,
    SNAPSHOTS_KEPT_DEFAULT,
    SNAPSHOTS_KEPT_MAX,
    SnapshotFile,
    SnapshotReader,
    SnapshotStore,
    SnapshotWriter,
    encode_snapshot_meta,
)
from kvraft.storage.wal import (
    SEGMENT_BYTES_MAX_DEFAULT,
    SEGMENT_BYTES_MAX_HIGHEST,
    SEGMENT_BYTES_MAX_LOWEST,
    LogState,
    WalBatch,
    WalRecovery,
    WriteAheadLog,
    prepare_batch,
)

__all__ = [
    "LOCK_FILE_NAME",
    "SNAPSHOT_DIRECTORY_NAME",
    "WAL_DIRECTORY_NAME",
    "StorageEngine",
    "check_installed_snapshot",
    "check_snapshot_fits",
]

logger = logging.getLogger(__name__)

WAL_DIRECTORY_NAME = "wal"
"""The WAL's directory under the data directory."""

SNAPSHOT_DIRECTORY_NAME = "snapshots"
"""The snapshots' directory under the data directory."""

LOCK_FILE_NAME = "lock"
"""The file locked while a process uses the data directory."""


def check_snapshot_fits(meta: SnapshotMeta, log: LogState, newest: SnapshotMeta | None) -> None:
    """ValueError unless the state machine's own snapshot `meta` may be saved now: not older
    than the newest snapshot, and matching the log at its index (it covers applied entries,
    which the log holds)."""
    encode_snapshot_meta(meta)
    if newest is not None:
        if meta.index < newest.index:
            raise ValueError(f"snapshot at {meta.index} is older than the one at {newest.index}")
        if meta.index == newest.index:
            if meta.term != newest.term:
                raise ValueError(f"snapshot at {meta.index} contradicts the one already there")
            return
    if log.term_at(meta.index) != meta.term:
        raise ValueError(
            f"snapshot ({meta.index}, {meta.term}) does not match the log (term there: "
            f"{log.term_at(meta.index)})"
        )


def check_installed_snapshot(
    meta: SnapshotMeta, data_bytes: int, newest: SnapshotMeta | None
) -> None:
    """ValueError unless a leader's snapshot `meta` may be installed now."""
    encode_snapshot_meta(meta)
    if newest is not None and meta.index < newest.index:
        raise ValueError(f"snapshot at {meta.index} is older than the one at {newest.index}")
    if data_bytes > SNAPSHOT_DATA_BYTES_MAX:
        raise ValueError(f"snapshot data exceeds {SNAPSHOT_DATA_BYTES_MAX} bytes")


class StorageEngine:
    """WAL + snapshots of one data directory. Single-threaded (except `open_snapshot_reader`,
    which only opens its own descriptor)."""

    def __init__(
        self,
        data_dir: Path,
        file_ops: FileOps,
        lock_fd: int,
        wal: WriteAheadLog,
        store: SnapshotStore,
        recovered: RecoveredState,
    ) -> None:
        self._data_dir = data_dir
        self._file_ops = file_ops
        self._lock_fd = lock_fd
        self._wal = wal
        self._store = store
        self.recovered = recovered
        """What `open` recovered (the caller may drop it once the node has taken it)."""
        self._writers: set[SnapshotWriter] = set()
        self._failure: BaseException | None = None
        self._closed = False
        self._fail_stop = _FailStop(self)

    # -- opening --

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        *,
        fsync: bool = True,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        snapshots_kept: int = SNAPSHOTS_KEPT_DEFAULT,
        file_ops: FileOps | None = None,
    ) -> StorageEngine:
        """Lock `data_dir` (created if missing), recover and open it.

        Raises `StorageCorruptionError` if the data cannot be trusted, `StorageFailedError` if
        the file system fails, `StorageError` if another process holds the directory.
        """
        data_dir = Path(data_dir)
        file_ops = file_ops or FileOps()
        # Check the settings before touching the disk: a bad one must not cost a prune.
        if not SEGMENT_BYTES_MAX_LOWEST <= segment_bytes_max <= SEGMENT_BYTES_MAX_HIGHEST:
            raise ValueError(
                f"segment_bytes_max must be in {SEGMENT_BYTES_MAX_LOWEST}.."
                f"{SEGMENT_BYTES_MAX_HIGHEST}, not {segment_bytes_max}"
            )
        if type(snapshots_kept) is not int or not 1 <= snapshots_kept <= SNAPSHOTS_KEPT_MAX:
            raise ValueError(f"snapshots_kept must be in 1..{SNAPSHOTS_KEPT_MAX}")
        if not fsync:
            logger.warning(
                "%s: fsync is off: a power loss can lose acknowledged writes or leave a log "
                "that refuses to open; use this only for tests and benchmarks",
                data_dir,
            )
        try:
            make_directories(file_ops, data_dir, sync=fsync)
            lock_fd = file_ops.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            raise StorageFailedError(f"{data_dir}: cannot open: {error}") from error
        try:
            try:
                file_ops.lock(lock_fd)
            except OSError as error:
                raise StorageError(
                    f"{data_dir} is in use by another process ({error}); one node per directory"
                ) from None
            try:
                store = SnapshotStore.open(
                    data_dir / SNAPSHOT_DIRECTORY_NAME,
                    file_ops=file_ops,
                    fsync=fsync,
                    snapshots_kept=snapshots_kept,
                )
            except OSError as error:
                raise StorageFailedError(f"{data_dir}: reading snapshots failed: {error}") from (
                    error
                )
            wal, wal_recovery = WriteAheadLog.open(
                data_dir / WAL_DIRECTORY_NAME,
                file_ops=file_ops,
                fsync=fsync,
                segment_bytes_max=segment_bytes_max,
            )
            try:
                recovered = cls._connect(data_dir, wal, wal_recovery, store)
            except BaseException:
                wal.close()
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                file_ops.close(lock_fd)
            raise
        return cls(data_dir, file_ops, lock_fd, wal, store, recovered)

    @staticmethod
    def _connect(
        data_dir: Path, wal: WriteAheadLog, recovery: WalRecovery, store: SnapshotStore
    ) -> RecoveredState:
        """Join the newest snapshot and the replayed log (module docstring, step 3)."""
        log = recovery.log
        entries = log.entries if log.entries is not None else []
        wal_directory = data_dir / WAL_DIRECTORY_NAME
        newest = store.newest
        if not recovery.started and (store.kept or store.quarantined):
            raise StorageCorruptionError(
                wal_directory,
                0,
                "the WAL holds no records but snapshots exist: the node's term and vote are lost",
            )
        if newest is None:
            if log.first_index != 1:
                raise StorageCorruptionError(
                    wal.segment_paths[0],
                    0,
                    f"the log starts at index {log.first_index} but no snapshot covers the "
                    "entries before it",
                )
            return RecoveredState(recovery.hard_state, None, None, entries)
        index, term = newest.meta.index, newest.meta.term
        if log.first_index > index + 1:
            raise StorageCorruptionError(
                wal.segment_paths[0],
                0,
                f"the log starts at index {log.first_index} but the newest valid snapshot ends "
                f"at {index}: entries {index + 1}..{log.first_index - 1} are lost",
            )
        if log.first_index == index + 1:
            after = entries
        elif log.term_at(index) == term:
            after = entries[index + 1 - log.first_index :]
        else:
            logger.warning(
                "%s: the log is behind or conflicts with the snapshot at (%d, %d), which was "
                "installed just before the node stopped; discarding the log as §7 requires",
                data_dir,
                index,
                term,
            )
            wal.record_snapshot(index, term, sync=True)
            after = []
        return RecoveredState(recovery.hard_state, newest.meta, newest.path, after)

    # -- state --

    @property
    def log(self) -> LogState:
        """The log's shape as written (read-only)."""
        return self._wal.log

    @property
    def hard_state(self) -> HardState:
        return self._wal.hard_state

    @property
    def newest_snapshot(self) -> SnapshotFile | None:
        return self._store.newest

    @property
    def kept_snapshots(self) -> list[SnapshotFile]:
        """The snapshots kept, oldest first."""
        return self._store.kept

    @property
    def wal_segment_paths(self) -> list[Path]:
        return self._wal.segment_paths

    @property
    def failure(self) -> BaseException | None:
        """The error that failed the engine, or None."""
        return self._failure

    # -- writing --

    def save(
        self, entries: Sequence[Entry], hard_state: HardState | None, *, sync: bool = True
    ) -> None:
        """Persist one Ready's log writes (suffix truncation implied; see the WAL)."""
        self.save_batches([prepare_batch(entries, hard_state)], sync=sync)

    def save_batches(self, batches: Sequence[WalBatch], *, sync: bool) -> None:
        """Persist several prepared batches with one write and at most one fdatasync."""
        with self._fail_stop:
            newest = self._store.newest
            floor = newest.meta.index if newest is not None else 0
            for batch in batches:
                if batch.term_runs and batch.first_index <= floor:
                    raise ValueError(
                        f"entry {batch.first_index} is covered by the snapshot at {floor}"
                    )
            self._wal.append_batches(batches, sync=sync)

    def begin_snapshot(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Start writing the state machine's own snapshot (see `check_snapshot_fits`)."""
        with self._fail_stop:
            newest = self._store.newest
            check_snapshot_fits(meta, self._wal.log, newest.meta if newest else None)
            writer = self._store.begin(meta)
            self._writers.add(writer)
            return writer

    def write_snapshot_chunk(
        self, writer: SnapshotWriter, chunk: bytes | bytearray | memoryview
    ) -> None:
        with self._fail_stop:
            writer.write(chunk)

    def commit_snapshot(self, writer: SnapshotWriter) -> SnapshotFile:
        """Make the snapshot durable, then prune old ones. The log is left alone."""
        with self._fail_stop:
            self._writers.discard(writer)
            snapshot = self._store.commit(writer)
            self._store.prune()
            return snapshot

    def abort_snapshot(self, writer: SnapshotWriter) -> None:
        self._writers.discard(writer)
        self._store.abort(writer)

    def save_snapshot(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> SnapshotFile:
        """Write the state machine's own snapshot from `chunks` in one call."""
        writer = self.begin_snapshot(meta)
        try:
            for chunk in chunks:
                self.write_snapshot_chunk(writer, chunk)
            return self.commit_snapshot(writer)
        finally:
            if writer in self._writers:
                self.abort_snapshot(writer)

    def install_snapshot(self, meta: SnapshotMeta, data: bytes | bytearray | memoryview) -> bool:
        """Save a leader's snapshot, then record in the WAL that it replaced the log (§7);
        returns whether the entries after it were kept. The snapshot file is durable before
        the WAL record, so a crash between the two is repaired at open (module docstring)."""
        with self._fail_stop:
            newest = self._store.newest
            check_installed_snapshot(meta, len(data), newest.meta if newest else None)
            self._store.write(meta, [data])
            kept = self._wal.record_snapshot(meta.index, meta.term, sync=True)
            self._store.prune()
            return kept

    def seed_snapshot(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        """Start an empty data directory from a snapshot (a restore from a backup): store the
        snapshot from `chunks` (streamed), record in the WAL that it is the log's start, and
        set the term to `meta.term`. ValueError unless the directory holds nothing yet."""
        with self._fail_stop:
            log = self._wal.log
            if self._store.kept or log.last_index or self._wal.hard_state.term:
                raise ValueError(f"{self._data_dir} is not empty: a snapshot seeds only a new node")
            encode_snapshot_meta(meta)
            self._store.write(meta, chunks)
            self._wal.record_snapshot(meta.index, meta.term, sync=False)
            self._wal.append_batches([prepare_batch([], HardState(term=meta.term))], sync=True)

    def compact(self, index: int) -> int:
        """Delete WAL segments whose entries are all <= min(index, oldest kept snapshot);
        returns how many. ValueError if no snapshot covers `index`."""
        with self._fail_stop:
            kept = self._store.kept
            if not kept or index > kept[-1].meta.index:
                raise ValueError(f"no snapshot covers index {index}: compaction would lose entries")
            return self._wal.compact(min(index, kept[0].meta.index))

    def open_snapshot_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        """Open a kept snapshot for reading; callable from another thread (own descriptor)."""
        return self._store.open_reader(meta)

    def fail(self, error: BaseException) -> None:
        """Enter the failed state because of `error` (a disk error seen elsewhere)."""
        if self._failure is None:
            self._failure = error
            logger.error("%s: disk failure, storage stops: %s", self._data_dir, error)

    def close(self) -> None:
        """Release the files and the lock; writes nothing (see `WriteAheadLog.close`)."""
        if self._closed:
            return
        self._closed = True
        for writer in list(self._writers):
            self.abort_snapshot(writer)
        with contextlib.suppress(StorageError):
            self._wal.close()
        with contextlib.suppress(OSError):
            self._file_ops.close(self._lock_fd)

    # -- internals --

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageFailedError(f"{self._data_dir}: storage failed earlier") from (
                self._failure
            )
        if self._closed:
            raise StorageError(f"{self._data_dir}: storage is closed")

    def _failed_during_work(self, error: BaseException) -> None:
        """Fail the engine for a disk error raised by its file work (an `OSError` is raised
        again as `StorageFailedError`); other errors leave it usable."""
        if isinstance(error, StorageFailedError):
            self.fail(error.__cause__ or error)
        elif isinstance(error, OSError):
            self.fail(error)
            raise StorageFailedError(f"{self._data_dir}: disk failure: {error}") from error


class _FailStop:
    """The guard around `StorageEngine`'s file work (module docstring, Fail-stop). A class
    rather than a generator context manager: it wraps every write, and costs a third."""

    __slots__ = ("_engine",)

    def __init__(self, engine: StorageEngine) -> None:
        self._engine = engine

    def __enter__(self) -> None:
        self._engine._check_usable()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self._engine._failed_during_work(error)
