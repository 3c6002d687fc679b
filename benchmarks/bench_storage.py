"""Measure durable storage: the disk's fdatasync rate, WAL append throughput, recovery time.

Run as ``python -m benchmarks.bench_storage [--directory DIR]``. It prints, asserts nothing:

1. the raw fdatasync rate of the disk under DIR (100-byte append + fdatasync, in a loop), the
   ceiling for any log that syncs each write on its own;
2. append throughput of 100-byte entries through `DiskStorage` (fsync on), for several
   entries per save and saves in flight: with more than one save in flight the writer thread
   coalesces queued saves (group commit), so entries per fdatasync rise above entries per save;
3. recovery time of a WAL holding 1,000,000 entries of 100 bytes (written with fsync off in
   10,000-entry batches), opened with `StorageEngine.open`;
4. reopening a WAL whose tail is a torn write of a 1 MiB value made of frame headers (every
   8 bytes the magic and a length), in preallocated space, torn three ways: the file ends
   inside it, its last sector or its first sector never reached the disk (issue #15: the old
   tail search checksummed each candidate's claimed payload, minutes per restart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from kvraft.raft.messages import Entry, EntryKind, HardState
from kvraft.storage.disk import DiskStorage
from kvraft.storage.engine import WAL_DIRECTORY_NAME, StorageEngine
from kvraft.storage.fileops import FileOps
from kvraft.storage.wal import (
    FRAME_MAGIC,
    FRAME_OVERHEAD_BYTES,
    SECTOR_BYTES,
    WriteAheadLog,
    prepare_batch,
)

__all__ = ["main"]

ENTRY_DATA_BYTES = 100
"""The size of every entry's data in these measurements."""

FSYNC_PROBE_SECONDS = 2.0
"""How long the raw fdatasync loop runs."""

APPEND_RUN_SECONDS = 1.5
"""How long each append configuration runs."""

RECOVERY_ENTRIES = 1_000_000
"""Entries in the WAL whose recovery is timed."""

GENERATION_BATCH_ENTRIES = 10_000
"""Entries per batch when generating that WAL."""

TORN_VALUE_BYTES = 1024 * 1024
"""The size of the torn value in the torn-tail measurement (the largest value a client may
write)."""

APPEND_CONFIGURATIONS = [(1, 1), (1, 16), (10, 1), (10, 16), (100, 1), (100, 16), (1000, 4)]
"""(entries per save, saves in flight) pairs measured."""


class CountingFileOps(FileOps):
    """Counts writes and data syncs, to show how many saves one fdatasync carried."""

    def __init__(self) -> None:
        self.writes = 0
        self.syncs = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        return super().write(fd, data)

    def sync_data(self, fd: int) -> None:
        self.syncs += 1
        super().sync_data(fd)


def make_entries(first: int, count: int, term: int = 1) -> list[Entry]:
    data = b"v" * ENTRY_DATA_BYTES
    return [Entry(term, index, EntryKind.NORMAL, data) for index in range(first, first + count)]


def measure_fdatasync(directory: Path) -> None:
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        record = b"x" * ENTRY_DATA_BYTES
        count = 0
        started = time.perf_counter()
        deadline = started + FSYNC_PROBE_SECONDS
        while time.perf_counter() < deadline:
            os.write(fd, record)
            os.fdatasync(fd)
            count += 1
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    print(f"raw fdatasync: {count / elapsed:,.0f} syncs/s ({elapsed / count * 1e6:,.0f} us each)")


async def measure_appends(directory: Path, entries_per_save: int, in_flight: int) -> None:
    data_dir = directory / f"append-{entries_per_save}-{in_flight}"
    file_ops = CountingFileOps()
    storage = await DiskStorage.open(data_dir, file_ops=file_ops)
    next_index = 1
    saves = 0
    writes_before, syncs_before = file_ops.writes, file_ops.syncs
    deadline = time.perf_counter() + APPEND_RUN_SECONDS

    async def worker() -> None:
        nonlocal next_index, saves
        while time.perf_counter() < deadline:
            # Take the indexes and call save without awaiting in between: save validates
            # (and queues) at call time, so the calls stay in index order across workers.
            first = next_index
            next_index += entries_per_save
            await storage.save(make_entries(first, entries_per_save), HardState(1, 1, first - 1))
            saves += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    await storage.close()
    shutil.rmtree(data_dir)
    entries = next_index - 1
    syncs = max(file_ops.syncs - syncs_before, 1)
    print(
        f"append {entries_per_save:>5} entries/save, {in_flight:>2} in flight: "
        f"{entries / elapsed:>11,.0f} entries/s {entries * ENTRY_DATA_BYTES / elapsed / 1e6:>7.2f}"
        f" MB/s  {saves / elapsed:>8,.0f} saves/s  {saves / syncs:5.1f} saves/fdatasync  "
        f"{(file_ops.writes - writes_before) / syncs:4.1f} writes/fdatasync"
    )


def measure_recovery(directory: Path) -> None:
    data_dir = directory / "recovery"
    wal, _ = WriteAheadLog.open(data_dir / WAL_DIRECTORY_NAME, fsync=False)
    started = time.perf_counter()
    for first in range(1, RECOVERY_ENTRIES + 1, GENERATION_BATCH_ENTRIES):
        count = min(GENERATION_BATCH_ENTRIES, RECOVERY_ENTRIES + 1 - first)
        batch = prepare_batch(make_entries(first, count), HardState(1, 1, first + count - 1))
        wal.append_batches([batch], sync=False)
    wal.close()
    generated = time.perf_counter() - started
    wal_bytes = sum(path.stat().st_size for path in (data_dir / WAL_DIRECTORY_NAME).iterdir())
    print(
        f"generated a WAL of {RECOVERY_ENTRIES:,} entries ({wal_bytes / 1e6:,.0f} MB) "
        f"in {generated:.2f} s"
    )
    started = time.perf_counter()
    engine = StorageEngine.open(data_dir)
    elapsed = time.perf_counter() - started
    recovered = len(engine.recovered.entries)
    engine.close()
    shutil.rmtree(data_dir)
    print(
        f"recovery: {recovered:,} entries in {elapsed:.2f} s "
        f"({recovered / elapsed:,.0f} entries/s, {wal_bytes / elapsed / 1e6:,.0f} MB/s)"
    )


def measure_torn_tail_recovery(directory: Path) -> None:
    value = (FRAME_MAGIC + struct.pack("<I", TORN_VALUE_BYTES)) * (TORN_VALUE_BYTES // 8)
    for tear in ("end of file", "last sector", "first sector"):
        wal_dir = directory / "torn-tail"
        wal, _ = WriteAheadLog.open(wal_dir)
        wal.append(make_entries(1, 3), HardState(1, 1, 0))
        path = wal.segment_paths[-1]
        wal.append([Entry(1, 4, EntryKind.NORMAL, value)], sync=False)
        wal.close()
        data = bytearray(path.read_bytes())
        start = data.rfind(FRAME_MAGIC, 0, data.find(value[:16]))  # the value's frame
        end = start + FRAME_OVERHEAD_BYTES + struct.unpack_from("<I", data, start + 4)[0]
        if tear == "end of file":
            del data[end - 1000 :]
        elif tear == "last sector":
            boundary = (end - 1) // SECTOR_BYTES * SECTOR_BYTES
            data[boundary:] = bytes(len(data) - boundary)
        else:
            boundary = (start // SECTOR_BYTES + 1) * SECTOR_BYTES
            data[start:boundary] = bytes(boundary - start)
        path.write_bytes(data)
        started = time.perf_counter()
        wal, recovery = WriteAheadLog.open(wal_dir, fsync=False)
        elapsed = time.perf_counter() - started
        wal.close()
        shutil.rmtree(wal_dir)
        assert recovery.torn_tail is not None and recovery.log.last_index == 3
        print(
            f"reopen with a torn {TORN_VALUE_BYTES // 1024} KiB value of frame headers "
            f"({tear}, {len(data) / 1e6:.1f} MB segment): {elapsed * 1e3:.1f} ms"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--directory", type=Path, help="where to measure (default: a temp dir)")
    arguments = parser.parse_args(argv)
    base = arguments.directory or Path(tempfile.gettempdir())
    directory = Path(tempfile.mkdtemp(prefix="kvraft-bench-storage-", dir=base))
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"directory: {directory}")
    try:
        measure_fdatasync(directory)
        for entries_per_save, in_flight in APPEND_CONFIGURATIONS:
            asyncio.run(measure_appends(directory, entries_per_save, in_flight))
        measure_recovery(directory)
        measure_torn_tail_recovery(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
