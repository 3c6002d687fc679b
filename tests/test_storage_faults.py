"""Fault injection: what the storage does when the disk fails (kvraft.storage.disk, .engine,
.wal, .fileops).

The real storage code runs against `FailingFileOps`, a file layer that raises EIO/ENOSPC on
cue (in writes, syncs, reads or preallocation). What a node relies on: the operation that hit
the error fails with `StorageFailedError`, so does everything queued behind it and everything
after it; nothing is retried (after a failed fsync a successful retry could report lost data
as durable) and nothing is reported durable after the failure; a restart recovers everything
acknowledged before it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvraft.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from kvraft.storage.api import StorageFailedError
from kvraft.storage.disk import DiskStorage
from kvraft.storage.engine import SNAPSHOT_DIRECTORY_NAME
from kvraft.storage.fileops import FileOps
from kvraft.storage.memory import MemoryStorage
from kvraft.storage.wal import PREALLOCATION_BYTES, WriteAheadLog

SNAPSHOT = SnapshotMeta(3, 1, Configuration(voters=frozenset({1})))


def make_entries(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, b"value %d" % i) for i in range(first, first + count)]


class FailingFileOps(FileOps):
    """The real file system, except that writes, syncs or reads fail on cue, and the writer
    thread can be held inside a write. Counts every call, failed or not."""

    def __init__(self) -> None:
        self.writes = 0
        self.syncs = 0
        self.reads = 0
        self._write_errno: int | None = None
        self._writes_before_failure = 0
        self._sync_errno: int | None = None
        self._read_errno: int | None = None
        self._allocate_errno: int | None = None
        self.release = threading.Event()
        self.release.set()
        self.holding = threading.Event()

    def fail_writes(self, code: int | None, after: int = 0) -> None:
        """Let `after` more writes through, then fail every write with `code` (None: heal)."""
        self._write_errno = code
        self._writes_before_failure = after

    def fail_syncs(self, code: int | None) -> None:
        self._sync_errno = code

    def fail_reads(self, code: int | None) -> None:
        self._read_errno = code

    def fail_allocations(self, code: int | None) -> None:
        self._allocate_errno = code

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self._allocate_errno is not None:
            raise OSError(self._allocate_errno, os.strerror(self._allocate_errno))
        super().allocate(fd, offset, length)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        if not self.release.is_set():
            self.holding.set()
            self.release.wait(10)
        if self._write_errno is not None:
            if self._writes_before_failure == 0:
                raise OSError(self._write_errno, os.strerror(self._write_errno))
            self._writes_before_failure -= 1
        return super().write(fd, data)

    def sync_data(self, fd: int) -> None:
        self.syncs += 1
        if self._sync_errno is not None:
            raise OSError(self._sync_errno, os.strerror(self._sync_errno))
        super().sync_data(fd)

    def sync_directory(self, path: Path) -> None:
        self.syncs += 1
        if self._sync_errno is not None:
            raise OSError(self._sync_errno, os.strerror(self._sync_errno))
        super().sync_directory(path)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self.reads += 1
        if self._read_errno is not None:
            raise OSError(self._read_errno, os.strerror(self._read_errno))
        return super().pread(fd, length, offset)


async def wait_until(predicate: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def entries_after_restart(directory: Path) -> list[Entry]:
    """The log a node restarted on a healthy disk recovers."""
    storage = await DiskStorage.open(directory)
    try:
        return list(storage.recovered.entries)
    finally:
        await storage.close()


async def assert_everything_fails(storage: DiskStorage | MemoryStorage) -> None:
    """Every operation refuses, and close reports the failure after releasing everything."""
    with pytest.raises(StorageFailedError):
        await storage.save(make_entries(50, 1), None)
    with pytest.raises(StorageFailedError):
        await storage.save([], HardState(9, 9, 0))
    with pytest.raises(StorageFailedError):
        await storage.save_snapshot(SNAPSHOT, [b"state"])
    with pytest.raises(StorageFailedError):
        await storage.install_snapshot(SnapshotMeta(60, 9), b"leader state")
    with pytest.raises(StorageFailedError):
        await storage.compact(1)
    with pytest.raises(StorageFailedError):
        async for _ in storage.open_snapshot_chunks(SNAPSHOT):
            pass
    with pytest.raises(StorageFailedError):
        await storage.close()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
async def test_a_failed_write_fails_the_save_and_everything_after_it(
    tmp_path: Path, code: int
) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3), HardState(1, 1, 0))
    file_ops.fail_writes(code)
    with pytest.raises(StorageFailedError) as failed:
        await storage.save(make_entries(4, 1), HardState(1, 1, 3))
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == code
    assert isinstance(storage.failure, OSError) and storage.failure.errno == code
    file_ops.fail_writes(None)  # the disk "recovers": a retry would now succeed
    writes, syncs = file_ops.writes, file_ops.syncs
    await assert_everything_fails(storage)
    assert (file_ops.writes, file_ops.syncs) == (writes, syncs)  # nothing was retried
    await wait_until(lambda: not storage.writer_alive)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
async def test_a_failed_fsync_is_never_retried_and_the_save_is_not_reported_durable(
    tmp_path: Path, code: int
) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3), HardState(1, 1, 0))
    file_ops.fail_syncs(code)
    with pytest.raises(StorageFailedError) as failed:
        await storage.save(make_entries(4, 1), HardState(2, 2, 3), sync=True)
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == code
    file_ops.fail_syncs(None)
    syncs = file_ops.syncs
    # Not even a save that asks for no fsync is accepted once an fsync failed.
    with pytest.raises(StorageFailedError):
        await storage.save(make_entries(5, 1), None, sync=False)
    await assert_everything_fails(storage)
    assert file_ops.syncs == syncs


async def test_a_failed_save_runs_its_on_done_with_the_failure_already_in_its_future(
    tmp_path: Path,
) -> None:
    """The driver learns of a failed write from `on_done` (and then fails the node): it runs
    once, with the error already in the future."""
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.fail_syncs(errno.EIO)
    seen: list[BaseException | None] = []
    save = storage.start_save(
        make_entries(1, 1), HardState(1, 1, 0), on_done=lambda: seen.append(save.exception())
    )
    with pytest.raises(StorageFailedError):
        await save
    await wait_until(lambda: len(seen) == 1)
    assert isinstance(seen[0], StorageFailedError)
    assert isinstance(seen[0].__cause__, OSError) and seen[0].__cause__.errno == errno.EIO
    with pytest.raises(StorageFailedError):
        await storage.close()
    assert len(seen) == 1


async def test_every_operation_queued_behind_the_failure_fails_too(tmp_path: Path) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.release.clear()
    first = asyncio.ensure_future(storage.save(make_entries(1, 1), HardState(1, 1, 0)))
    await wait_until(file_ops.holding.is_set)
    queued = [
        asyncio.ensure_future(storage.save(make_entries(2, 1), None)),
        asyncio.ensure_future(storage.save(make_entries(3, 1), None, sync=False)),
        asyncio.ensure_future(storage.install_snapshot(SnapshotMeta(10, 2), b"leader")),
        asyncio.ensure_future(storage.save(make_entries(11, 1, term=2), None)),
    ]
    await wait_until(lambda: storage.queued_operations == len(queued))
    file_ops.fail_writes(errno.EIO)  # the held write fails when released
    file_ops.release.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(result, StorageFailedError) for result in results), results
    with pytest.raises(StorageFailedError):
        await storage.close()


async def test_a_failed_group_commit_fails_every_save_in_it_but_not_those_acknowledged_before(
    tmp_path: Path,
) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.release.clear()
    first = asyncio.ensure_future(storage.save(make_entries(1, 1), HardState(1, 1, 0)))
    await wait_until(file_ops.holding.is_set)
    group = [asyncio.ensure_future(storage.save(make_entries(i, 1), None)) for i in (2, 3, 4)]
    await wait_until(lambda: storage.queued_operations == len(group))
    file_ops.fail_writes(errno.EIO, after=1)  # the held write passes, the group's write fails
    file_ops.release.set()
    await first
    results = await asyncio.gather(*group, return_exceptions=True)
    assert all(isinstance(result, StorageFailedError) for result in results), results
    with pytest.raises(StorageFailedError):
        await storage.close()
    assert (await entries_after_restart(tmp_path))[:1] == make_entries(1, 1)


async def test_a_restart_after_a_failure_recovers_every_acknowledged_save(tmp_path: Path) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    for index in range(1, 6):
        await storage.save(make_entries(index, 1), HardState(1, 1, index - 1))
    file_ops.fail_syncs(errno.EIO)
    with pytest.raises(StorageFailedError):
        await storage.save(make_entries(6, 1), HardState(1, 1, 5))
    with pytest.raises(StorageFailedError):
        await storage.close()
    recovered = await entries_after_restart(tmp_path)
    # The failed save may or may not have reached the disk; what was acknowledged did.
    assert recovered[:5] == make_entries(1, 5)
    assert len(recovered) <= 6


async def test_a_disk_too_full_to_preallocate_still_takes_the_writes_that_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file_ops = FailingFileOps()
    file_ops.fail_allocations(errno.ENOSPC)
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    for index in range(1, 4):
        await storage.save(make_entries(index, 1), HardState(1, 1, index - 1))
    await storage.close()
    assert caplog.text.count("no disk space to preallocate") == 1
    assert await entries_after_restart(tmp_path) == make_entries(1, 3)


async def test_a_failed_preallocation_for_another_reason_fails_the_save_and_everything_after_it(
    tmp_path: Path,
) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3), HardState(1, 1, 0))
    file_ops.fail_allocations(errno.EIO)
    # Past the space allocated so far, so the WAL must allocate more before writing it.
    large = Entry(1, 4, EntryKind.NORMAL, bytes(PREALLOCATION_BYTES + 1))
    with pytest.raises(StorageFailedError):
        await storage.save([large], None)
    await assert_everything_fails(storage)
    assert await entries_after_restart(tmp_path) == make_entries(1, 3)


async def test_a_failed_snapshot_write_fails_the_storage_and_leaves_no_snapshot(
    tmp_path: Path,
) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3), None)
    file_ops.fail_writes(errno.ENOSPC, after=1)  # the header gets out, the first chunk fails
    with pytest.raises(StorageFailedError):
        await storage.save_snapshot(SNAPSHOT, [b"state" * 100, b"more"])
    await assert_everything_fails(storage)
    storage = await DiskStorage.open(tmp_path)
    assert storage.recovered.snapshot_meta is None
    assert storage.recovered.entries == make_entries(1, 3)
    assert list((tmp_path / SNAPSHOT_DIRECTORY_NAME).iterdir()) == []  # temp file removed
    await storage.close()


async def test_a_failed_snapshot_read_fails_the_storage(tmp_path: Path) -> None:
    file_ops = FailingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3), None)
    await storage.save_snapshot(SNAPSHOT, [b"state"])
    file_ops.fail_reads(errno.EIO)
    with pytest.raises(StorageFailedError):
        async for _ in storage.open_snapshot_chunks(SNAPSHOT):
            pass
    await assert_everything_fails(storage)


async def test_a_disk_error_during_recovery_fails_open_and_ends_the_writer_thread(
    tmp_path: Path,
) -> None:
    storage = await DiskStorage.open(tmp_path)
    await storage.save(make_entries(1, 3), None)
    await storage.close()
    writers_before = sum(t.name == "kvraft-storage-writer" for t in threading.enumerate())
    file_ops = FailingFileOps()
    file_ops.fail_syncs(errno.EIO)
    with pytest.raises(StorageFailedError):
        await DiskStorage.open(tmp_path, file_ops=file_ops)
    await wait_until(
        lambda: (
            sum(t.name == "kvraft-storage-writer" for t in threading.enumerate()) <= writers_before
        )
    )
    storage = await DiskStorage.open(tmp_path)  # the lock was released
    assert storage.recovered.entries == make_entries(1, 3)
    await storage.close()


def test_the_wal_refuses_all_work_after_a_failed_write(tmp_path: Path) -> None:
    file_ops = FailingFileOps()
    wal, _ = WriteAheadLog.open(tmp_path, file_ops=file_ops)
    wal.append(make_entries(1, 2), HardState(1, 1, 0))
    file_ops.fail_writes(errno.EIO)
    with pytest.raises(StorageFailedError) as failed:
        wal.append(make_entries(3, 1))
    assert isinstance(failed.value.__cause__, OSError)
    file_ops.fail_writes(None)
    writes, syncs = file_ops.writes, file_ops.syncs
    with pytest.raises(StorageFailedError):
        wal.append(make_entries(3, 1))
    with pytest.raises(StorageFailedError):
        wal.sync()
    with pytest.raises(StorageFailedError):
        wal.record_snapshot(2, 1)
    with pytest.raises(StorageFailedError):
        wal.compact(1)
    assert (file_ops.writes, file_ops.syncs) == (writes, syncs)
    assert wal.log.last_index == 2  # the failed batch never became part of the log
    wal.close()


async def test_memory_storage_models_a_disk_failure() -> None:
    storage = await MemoryStorage.open()
    await storage.save(make_entries(1, 3), None)
    await storage.save_snapshot(SNAPSHOT, [b"state"])
    storage.fail(OSError(errno.EIO, "injected"))
    assert isinstance(storage.failure, OSError)
    await assert_everything_fails(storage)
