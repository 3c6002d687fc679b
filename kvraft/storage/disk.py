"""`DiskStorage`: the asyncio face of `StorageEngine`, with all file work on a writer thread.

The event loop never waits on the disk. Every operation is queued to one writer thread that
owns the `StorageEngine`; the coroutine awaits a future that the thread settles through
`loop.call_soon_threadsafe` once the work is done (durable, when it asked for durability).
Operations run in the order they were called, which is the order the Ready protocol needs
(an installed snapshot before the entries that follow it).

Group commit: when several `save` calls are queued when the thread becomes free, it takes all
of them (up to BATCH_COALESCE_BYTES_MAX) and writes them as one frame with one write call and
at most one fdatasync, then resolves them together.

Validation happens on the loop, at call time, against a mirror of the log's shape (the same
`LogState` operations the WAL applies), so a caller's mistake raises `ValueError` at once and
never reaches the disk.

Failure: the first error from the disk (an `OSError` anywhere, or anything unexpected on the
writer thread) fails the storage for good. The operation that hit it, every operation queued
behind it and every later call raise `StorageFailedError` (its `__cause__` is the first error);
nothing is retried, nothing further is reported durable. The daemon is expected to exit
non-zero. Snapshot reads run on a separate reader thread (so a follower's InstallSnapshot
stream does not delay log writes); their disk errors fail the storage the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvraft.raft.messages import Entry, HardState, SnapshotMeta
from kvraft.storage.api import RecoveredState, StorageError, StorageFailedError
from kvraft.storage.engine import StorageEngine, check_installed_snapshot, check_snapshot_fits
from kvraft.storage.fileops import FileOps
from kvraft.storage.snapshots import SNAPSHOT_DATA_BYTES_MAX, SNAPSHOTS_KEPT_DEFAULT
from kvraft.storage.wal import SEGMENT_BYTES_MAX_DEFAULT, WalBatch, prepare_batch

__all__ = ["BATCH_COALESCE_BYTES_MAX", "WRITER_QUEUE_OPERATIONS_MAX", "DiskStorage"]

logger = logging.getLogger(__name__)

BATCH_COALESCE_BYTES_MAX = 8 * 1024 * 1024
"""The most encoded bytes of queued saves one group commit takes: bounds the latency and
memory of a single write. A larger single save is still written, alone."""

WRITER_QUEUE_OPERATIONS_MAX = 4096
"""The most operations waiting for the writer thread. The driver loop awaits its saves, so the
queue stays short; reaching this means a caller is not waiting, and `StorageError` stops it."""

_T = TypeVar("_T")


@dataclass(slots=True, eq=False)
class _Operation:
    """One unit of work for the writer thread: a save (`batch`) or a call (`work`)."""

    future: asyncio.Future[Any] | None
    batch: WalBatch | None = None
    sync: bool = False
    work: Callable[[], object] | None = None
    passes: tuple[type[BaseException], ...] = ()
    """Errors of `work` that go to the caller without failing the storage."""
    stops: bool = False
    """The close operation: it runs even after a failure, and the thread ends after it."""
    on_done: Callable[[], object] | None = None
    """Called on the loop right after `future` is settled (see `Storage.start_save`)."""


def _settle(
    future: asyncio.Future[Any],
    result: object,
    error: BaseException | None,
    on_done: Callable[[], object] | None = None,
) -> None:
    if future.done():  # the caller was cancelled; the work happened anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    if on_done is not None:
        on_done()


def _failed_error(cause: BaseException) -> StorageFailedError:
    error = StorageFailedError(f"storage failed earlier: {cause!r}")
    error.__cause__ = cause
    return error


class _Writer:
    """The writer thread and its queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: collections.deque[_Operation] = collections.deque()
        self._condition = threading.Condition()
        self.failure: BaseException | None = None
        self.engine: StorageEngine | None = None
        self._thread = threading.Thread(target=self._run, name="kvraft-storage-writer", daemon=True)
        self._thread.start()

    def submit(self, operation: _Operation, *, bypass_limit: bool = False) -> None:
        with self._condition:
            if not bypass_limit and len(self._queue) >= WRITER_QUEUE_OPERATIONS_MAX:
                raise StorageError(
                    f"{WRITER_QUEUE_OPERATIONS_MAX} storage operations are already waiting"
                )
            self._queue.append(operation)
            self._condition.notify()

    def fail(self, error: BaseException) -> None:
        with self._condition:
            if self.failure is None:
                self.failure = error
                logger.error("storage failed, refusing all further work: %r", error)
        if self.engine is not None:
            self.engine.fail(error)

    @property
    def queued(self) -> int:
        with self._condition:
            return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _take(self) -> list[_Operation]:
        with self._condition:
            while not self._queue:
                self._condition.wait()
            group = [self._queue.popleft()]
            if group[0].batch is not None:
                size = len(group[0].batch.encoded)
                while self._queue and (following := self._queue[0].batch) is not None:
                    if size + len(following.encoded) > BATCH_COALESCE_BYTES_MAX:
                        break
                    group.append(self._queue.popleft())
                    size += len(following.encoded)
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            try:
                stop = self._process(group)
            except BaseException as error:  # a bug in this loop: fail rather than hang callers
                self.fail(error)
                for operation in group:
                    self._answer(operation, None, _failed_error(error))
                stop = group[0].stops
            if stop:
                return

    def _process(self, group: list[_Operation]) -> bool:
        head = group[0]
        if self.failure is not None and not head.stops:
            for operation in group:
                self._answer(operation, None, _failed_error(self.failure))
            return False
        try:
            if head.batch is not None:
                assert self.engine is not None
                batches = [operation.batch for operation in group if operation.batch is not None]
                self.engine.save_batches(batches, sync=any(op.sync for op in group))
                result: object = None
            else:
                assert head.work is not None
                result = head.work()
        except BaseException as error:
            if head.work is not None and isinstance(error, head.passes):
                self._answer(head, None, error)
                return head.stops
            cause = error.__cause__ if isinstance(error, StorageFailedError) else error
            self.fail(cause or error)
            for operation in group:
                self._answer(operation, None, _failed_error(cause or error))
            return head.stops
        for operation in group:
            self._answer(operation, result, None)
        return head.stops

    def _answer(self, operation: _Operation, result: object, error: BaseException | None) -> None:
        if operation.future is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(
                _settle, operation.future, result, error, operation.on_done
            )


class DiskStorage:
    """The daemon's storage on disk; see the module docstring. Create with `open`."""

    def __init__(
        self, writer: _Writer, engine: StorageEngine, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._writer = writer
        self._engine = engine
        self._loop = loop
        self._recovered = engine.recovered
        self._log = engine.log.copy()
        newest = engine.newest_snapshot
        self._newest: SnapshotMeta | None = newest.meta if newest is not None else None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="kvraft-snapshot-reader")
        self._closed = False

    @classmethod
    async def open(
        cls,
        data_dir: Path | str,
        *,
        fsync: bool = True,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        snapshots_kept: int = SNAPSHOTS_KEPT_DEFAULT,
        file_ops: FileOps | None = None,
    ) -> DiskStorage:
        """Recover `data_dir` on the writer thread and return the open storage.

        Raises what `StorageEngine.open` raises (`StorageCorruptionError`,
        `StorageFailedError`, `StorageError`, `ValueError`).
        """
        loop = asyncio.get_running_loop()
        writer = _Writer(loop)

        def open_engine() -> StorageEngine:
            engine = StorageEngine.open(
                data_dir,
                fsync=fsync,
                segment_bytes_max=segment_bytes_max,
                snapshots_kept=snapshots_kept,
                file_ops=file_ops,
            )
            writer.engine = engine
            return engine

        future: asyncio.Future[StorageEngine] = loop.create_future()
        writer.submit(_Operation(future, work=open_engine, passes=(Exception,)))
        try:
            engine = await future
        except BaseException:
            writer.submit(_Operation(None, work=lambda: None, stops=True), bypass_limit=True)
            raise
        return cls(writer, engine, loop)

    @property
    def recovered(self) -> RecoveredState:
        return self._recovered

    @property
    def failure(self) -> BaseException | None:
        """The disk error that failed the storage, or None."""
        return self._writer.failure

    @property
    def queued_operations(self) -> int:
        """Operations waiting for the writer thread (not counting the one it is doing): a
        gauge for metrics, and what tests poll to know their saves are queued."""
        return self._writer.queued

    @property
    def writer_alive(self) -> bool:
        """Whether the writer thread still runs (it ends after `close`)."""
        return self._writer.alive

    # -- the API --

    async def save(
        self, entries: Sequence[Entry], hard_state: HardState | None, sync: bool = True
    ) -> None:
        """See `kvraft.storage.api.Storage.save`."""
        await self.start_save(entries, hard_state, sync)

    def start_save(
        self,
        entries: Sequence[Entry],
        hard_state: HardState | None,
        sync: bool = True,
        on_done: Callable[[], object] | None = None,
    ) -> asyncio.Future[None]:
        """See `kvraft.storage.api.Storage.start_save`: the writer thread takes operations in
        the order they are submitted."""
        self._check_usable()
        batch = prepare_batch(entries, hard_state)
        self._log.check_batch(batch, self._newest.index if self._newest else 0)
        future = self._submit(_Operation(None, batch=batch, sync=sync, on_done=on_done))
        self._log.apply_batch(batch)
        return future

    async def save_snapshot(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        """See `kvraft.storage.api.Storage.save_snapshot`. The chunks are taken one at a time
        on the loop (the state machine lives there) and each is written before the next is
        taken, so a bytearray chunk may be reused by the producer."""
        self._check_usable()
        check_snapshot_fits(meta, self._log, self._newest)
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = (bytes(chunks),)
        engine = self._engine
        writer = await self._submit(
            _Operation(None, work=functools.partial(engine.begin_snapshot, meta))
        )
        committed = False
        try:
            data_bytes = 0
            for chunk in chunks:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise ValueError(f"snapshot chunks must be bytes, not {type(chunk)}")
                data_bytes += len(chunk)
                if data_bytes > SNAPSHOT_DATA_BYTES_MAX:
                    raise ValueError(f"snapshot data exceeds {SNAPSHOT_DATA_BYTES_MAX} bytes")
                self._check_usable()
                work = functools.partial(engine.write_snapshot_chunk, writer, chunk)
                await self._submit(_Operation(None, work=work))
            self._check_usable()
            await self._submit(
                _Operation(None, work=functools.partial(engine.commit_snapshot, writer))
            )
            committed = True
        finally:
            if not committed and self._writer.failure is None and not self._closed:
                # Not awaited: this also runs when the caller is being cancelled.
                with contextlib.suppress(StorageError):
                    abort = functools.partial(engine.abort_snapshot, writer)
                    self._writer.submit(_Operation(None, work=abort), bypass_limit=True)
        if self._newest is None or meta.index > self._newest.index:
            self._newest = meta

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """See `kvraft.storage.api.Storage.install_snapshot`."""
        self._check_usable()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"snapshot data must be bytes, not {type(data)}")
        check_installed_snapshot(meta, len(data), self._newest)
        data = bytes(data)  # the thread writes it later: take a copy the caller cannot change
        work = functools.partial(self._engine.install_snapshot, meta, data)
        future = self._submit(_Operation(None, work=work))
        self._log.reset(meta.index, meta.term)
        self._newest = meta
        await future

    async def compact(self, index: int) -> int:
        """See `kvraft.storage.api.Storage.compact`: returns the WAL segments deleted."""
        self._check_usable()
        if self._newest is None or index > self._newest.index:
            raise ValueError(f"no snapshot covers index {index}: compaction would lose entries")
        deleted: int = await self._submit(
            _Operation(None, work=functools.partial(self._engine.compact, index))
        )
        return deleted

    async def open_snapshot_chunks(self, meta: SnapshotMeta) -> AsyncIterator[bytes]:
        """See `kvraft.storage.api.Storage.open_snapshot_chunks`. Raises `StorageError` if the
        snapshot is not kept, `StorageCorruptionError` (by the last chunk) if it is damaged."""
        self._check_usable()
        reader = await self._read(functools.partial(self._engine.open_snapshot_reader, meta))
        try:
            while True:
                self._check_usable()
                chunk = await self._read(reader.read_chunk)
                if not chunk:
                    return
                yield chunk
        finally:
            # Closing a read-only descriptor does not wait on the disk.
            with contextlib.suppress(OSError):
                reader.close()

    async def close(self) -> None:
        """Finish the queued work, release files, the lock and the threads. Raises
        `StorageFailedError` if the storage failed (after releasing everything)."""
        if not self._closed:
            self._closed = True
            future: asyncio.Future[Any] = self._loop.create_future()
            self._writer.submit(
                _Operation(future, work=self._engine.close, stops=True), bypass_limit=True
            )
            await future
            self._reader.shutdown(wait=False)
        if self._writer.failure is not None:
            raise _failed_error(self._writer.failure)

    # -- internals --

    def _check_usable(self) -> None:
        if self._writer.failure is not None:
            raise _failed_error(self._writer.failure)
        if self._closed:
            raise StorageError("storage is closed")

    def _submit(self, operation: _Operation) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        operation.future = future
        self._writer.submit(operation)
        return future

    async def _read(self, work: Callable[[], _T]) -> _T:
        """Run a snapshot read on the reader thread; a disk error fails the storage."""
        try:
            return await self._loop.run_in_executor(self._reader, work)
        except StorageError:
            raise
        except OSError as error:
            self._writer.fail(error)
            raise _failed_error(error) from error
