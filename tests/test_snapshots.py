"""Tests for kvraft.storage.snapshots and how snapshots meet the log at recovery.

What a node relies on: a snapshot's chunks come back exactly as written, damage is detected
before a damaged snapshot is used, only the newest `snapshots_kept` stay on disk, compaction
deletes the log a snapshot covers and recovery still works, and a leader's snapshot saved
just before a crash is honoured.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kvraft.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from kvraft.storage import snapshots as snapshots_module
from kvraft.storage.api import StorageCorruptionError, StorageError
from kvraft.storage.disk import DiskStorage
from kvraft.storage.engine import SNAPSHOT_DIRECTORY_NAME, WAL_DIRECTORY_NAME, StorageEngine
from kvraft.storage.memory import MemoryDisk, MemoryStorage
from kvraft.storage.snapshots import (
    SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_HEADER_BYTES,
    SNAPSHOTS_KEPT_MAX,
    SnapshotStore,
    encode_snapshot_meta,
    snapshot_file_name,
)
from kvraft.storage.wal import SEGMENT_BYTES_MAX_LOWEST
from tests.file_ops_doubles import HoldingFileOps

CONFIGURATION = Configuration(
    voters=frozenset({1, 2, 3}), learners=frozenset({4}), context=b"addresses"
)


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, CONFIGURATION)


def make_entries(first: int, count: int, term: int, size: int = 40) -> list[Entry]:
    return [
        Entry(term, index, EntryKind.NORMAL, f"{index}@{term}".encode().ljust(size, b"-"))
        for index in range(first, first + count)
    ]


def read_all(store: SnapshotStore, snapshot_meta: SnapshotMeta, chunk_bytes: int) -> list[bytes]:
    reader = store.open_reader(snapshot_meta)
    try:
        chunks = []
        while chunk := reader.read_chunk(chunk_bytes):
            chunks.append(chunk)
        return chunks
    finally:
        reader.close()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(data)


# --- the snapshot store ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [[], [b""], [b"x"], [b"ab", b"", b"cdef"], [bytes(range(256)) * 40, b"tail"]],
    ids=["no chunks", "empty chunk", "one byte", "several", "larger than a read"],
)
def test_chunks_and_meta_come_back_exactly_as_written(tmp_path: Path, chunks: list[bytes]) -> None:
    store = SnapshotStore.open(tmp_path)
    written = store.write(meta(7, 2), chunks)
    assert written.data_bytes == sum(map(len, chunks))
    reopened = SnapshotStore.open(tmp_path)
    assert reopened.newest is not None and reopened.newest.meta == meta(7, 2)
    read = read_all(reopened, meta(7, 2), chunk_bytes=1000)
    assert b"".join(read) == b"".join(chunks)
    assert all(0 < len(chunk) <= 1000 for chunk in read)


def test_a_data_byte_flipped_on_disk_is_detected_before_the_last_chunk_is_returned(
    tmp_path: Path,
) -> None:
    store = SnapshotStore.open(tmp_path)
    snapshot = store.write(meta(5), [b"a" * 3000])
    flip_byte(snapshot.path, snapshot.path.stat().st_size - 10)
    reader = store.open_reader(meta(5))
    assert reader.read_chunk(1000) == b"a" * 1000
    assert reader.read_chunk(1000) == b"a" * 1000
    with pytest.raises(StorageCorruptionError, match="data checksum mismatch") as refused:
        reader.read_chunk(1000)
    reader.close()
    assert refused.value.path == snapshot.path


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(0, "bad magic"), (20, "header checksum"), (SNAPSHOT_HEADER_BYTES + 1, "meta checksum")],
)
def test_damage_to_the_header_or_meta_is_detected_at_open(
    tmp_path: Path, offset: int, reason: str
) -> None:
    store = SnapshotStore.open(tmp_path)
    snapshot = store.write(meta(5), [b"state"])
    flip_byte(snapshot.path, offset)
    with pytest.raises(StorageCorruptionError, match=reason):
        store.open_reader(meta(5))


def test_a_truncated_snapshot_file_is_detected(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    snapshot = store.write(meta(5), [b"state" * 100])
    with snapshot.path.open("r+b") as file:
        file.truncate(snapshot.path.stat().st_size - 1)
    with pytest.raises(StorageCorruptionError, match="header describes"):
        store.open_reader(meta(5))


def test_a_damaged_newest_snapshot_is_set_aside_and_the_older_one_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore.open(tmp_path)
    store.write(meta(5), [b"older"])
    newest = store.write(meta(9), [b"newer"])
    flip_byte(newest.path, newest.path.stat().st_size - 1)
    reopened = SnapshotStore.open(tmp_path)
    assert reopened.newest is not None and reopened.newest.meta == meta(5)
    assert [path.name for path in reopened.quarantined] == [newest.path.name + ".corrupt"]
    assert not newest.path.exists()
    assert "damaged snapshot set aside" in caplog.text
    # Set aside for good: the next open does not consider it again.
    assert SnapshotStore.open(tmp_path).quarantined == []


def test_unfinished_temp_files_are_deleted_at_open_and_never_used(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    writer = store.begin(meta(9))
    writer.write(b"half of a snapshot")
    # The node stops here: no commit. The next incarnation finds only the temp file.
    leftover = writer.temp_path
    assert leftover.exists()
    reopened = SnapshotStore.open(tmp_path)
    assert reopened.newest is None
    assert not leftover.exists()
    store.abort(writer)


@pytest.mark.parametrize("snapshots_kept", [1, 2, 3])
def test_only_the_newest_snapshots_kept_stay_on_disk(tmp_path: Path, snapshots_kept: int) -> None:
    store = SnapshotStore.open(tmp_path, snapshots_kept=snapshots_kept)
    for index in range(1, 6):
        store.write(meta(index * 10), [b"state %d" % index])
        deleted = store.prune()
        assert all(not path.exists() for path in deleted)
    names = sorted(path.name for path in tmp_path.iterdir())
    expected = [snapshot_file_name(index * 10, 1) for index in range(6 - snapshots_kept, 6)]
    assert names == expected
    assert [kept.meta.index for kept in store.kept] == [
        index * 10 for index in range(6 - snapshots_kept, 6)
    ]


def test_snapshots_kept_is_checked_at_both_ends(tmp_path: Path) -> None:
    for accepted in (1, SNAPSHOTS_KEPT_MAX):
        SnapshotStore.open(tmp_path / str(accepted), snapshots_kept=accepted)
    for refused in (0, SNAPSHOTS_KEPT_MAX + 1):
        with pytest.raises(ValueError, match="snapshots_kept"):
            SnapshotStore.open(tmp_path / str(refused), snapshots_kept=refused)


def test_a_snapshot_older_than_the_newest_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    store.write(meta(10), [b"state"])
    with pytest.raises(ValueError, match="older"):
        store.begin(meta(9))


def test_snapshot_data_is_accepted_up_to_its_limit_and_refused_one_byte_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_DATA_BYTES_MAX", 100)
    store = SnapshotStore.open(tmp_path)
    store.write(meta(1), [b"x" * 60, b"y" * 40])
    writer = store.begin(meta(2))
    writer.write(b"x" * 100)
    with pytest.raises(ValueError, match="exceeds 100 bytes"):
        writer.write(b"y")
    store.abort(writer)
    # A file claiming more data than the limit is refused when read.
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_DATA_BYTES_MAX", 99)
    with pytest.raises(StorageCorruptionError, match="over the limits"):
        store.open_reader(meta(1))


def test_snapshot_meta_is_accepted_up_to_its_limit_and_refused_one_byte_past(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = len(encode_snapshot_meta(meta(3)))
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_META_BYTES_MAX", size)
    encode_snapshot_meta(meta(3))
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_META_BYTES_MAX", size - 1)
    with pytest.raises(ValueError, match="snapshot meta"):
        encode_snapshot_meta(meta(3))


def test_a_file_whose_meta_contradicts_its_name_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore.open(tmp_path)
    snapshot = store.write(meta(5), [b"state"])
    snapshot.path.rename(tmp_path / snapshot_file_name(6, 1))
    reopened = SnapshotStore.open(tmp_path)
    assert reopened.newest is None
    assert [path.name for path in reopened.quarantined] == [snapshot_file_name(6, 1) + ".corrupt"]
    assert "contradicts the name" in caplog.text


# --- snapshots and the log at recovery ----------------------------------------------------------


def engine(data_dir: Path, snapshots_kept: int = 2) -> StorageEngine:
    return StorageEngine.open(
        data_dir, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST, snapshots_kept=snapshots_kept
    )


def fill(storage: StorageEngine, count: int) -> None:
    for index in range(1, count + 1):
        storage.save(make_entries(index, 1, 1), HardState(1, 1, index), sync=False)
    storage.save([], None, sync=True)


def test_compaction_deletes_fully_covered_segments_and_recovery_still_works(
    tmp_path: Path,
) -> None:
    storage = engine(tmp_path, snapshots_kept=1)
    fill(storage, 200)
    segments_before = storage.wal_segment_paths
    storage.save_snapshot(meta(150), [b"state through 150"])
    deleted = storage.compact(150)
    assert deleted > 0 and storage.wal_segment_paths == segments_before[deleted:]
    storage.close()
    storage = engine(tmp_path, snapshots_kept=1)
    assert storage.recovered.snapshot_meta == meta(150)
    assert storage.recovered.entries == make_entries(151, 50, 1)
    assert storage.recovered.hard_state == HardState(1, 1, 200)
    storage.close()


def test_compaction_keeps_the_log_the_fallback_snapshot_needs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = engine(tmp_path, snapshots_kept=2)
    fill(storage, 200)
    storage.save_snapshot(meta(50), [b"state through 50"])
    storage.save_snapshot(meta(150), [b"state through 150"])
    storage.compact(150)
    storage.close()
    newest = tmp_path / SNAPSHOT_DIRECTORY_NAME / snapshot_file_name(150, 1)
    flip_byte(newest, newest.stat().st_size - 1)
    storage = engine(tmp_path, snapshots_kept=2)
    assert storage.recovered.snapshot_meta == meta(50)
    assert storage.recovered.entries == make_entries(51, 150, 1)
    assert "damaged snapshot set aside" in caplog.text
    storage.close()


def test_without_a_usable_snapshot_a_compacted_log_is_refused(tmp_path: Path) -> None:
    storage = engine(tmp_path, snapshots_kept=1)
    fill(storage, 200)
    storage.save_snapshot(meta(150), [b"state through 150"])
    storage.compact(150)
    storage.close()
    only = tmp_path / SNAPSHOT_DIRECTORY_NAME / snapshot_file_name(150, 1)
    flip_byte(only, only.stat().st_size - 1)
    with pytest.raises(StorageCorruptionError, match="no snapshot covers") as refused:
        engine(tmp_path, snapshots_kept=1)
    assert "delete its data directory" in str(refused.value)


def test_snapshots_without_a_wal_are_refused(tmp_path: Path) -> None:
    storage = engine(tmp_path)
    fill(storage, 5)
    storage.save_snapshot(meta(5), [b"state"])
    storage.close()
    shutil.rmtree(tmp_path / WAL_DIRECTORY_NAME)
    with pytest.raises(StorageCorruptionError, match="term and vote are lost"):
        engine(tmp_path)


@pytest.mark.parametrize(("term", "entries_kept"), [(1, True), (2, False)])
def test_a_leader_snapshot_saved_just_before_a_crash_is_applied_at_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, term: int, entries_kept: bool
) -> None:
    storage = engine(tmp_path)
    fill(storage, 10)
    storage.close()
    # The crash: the snapshot file is durable but the WAL never recorded the install.
    SnapshotStore.open(tmp_path / SNAPSHOT_DIRECTORY_NAME).write(meta(8, term), [b"leader"])
    for _ in range(2):  # the repair is recorded, so a second restart agrees
        storage = engine(tmp_path)
        assert storage.recovered.snapshot_meta == meta(8, term)
        expected = make_entries(9, 2, 1) if entries_kept else []
        assert storage.recovered.entries == expected
        storage.close()
    assert ("conflicts with the snapshot" in caplog.text) is not entries_kept


def test_an_installed_snapshot_keeps_only_a_matching_suffix_across_restarts(
    tmp_path: Path,
) -> None:
    storage = engine(tmp_path)
    fill(storage, 10)
    assert storage.install_snapshot(meta(6, 1), b"matching") is True
    assert storage.install_snapshot(meta(9, 4), b"conflicting") is False
    storage.save(make_entries(10, 2, 4), HardState(4, 2, 9))
    storage.close()
    storage = engine(tmp_path)
    assert storage.recovered.snapshot_meta == meta(9, 4)
    assert storage.recovered.entries == make_entries(10, 2, 4)
    storage.close()


def test_a_local_snapshot_must_match_the_log(tmp_path: Path) -> None:
    storage = engine(tmp_path)
    fill(storage, 10)
    with pytest.raises(ValueError, match="does not match the log"):
        storage.save_snapshot(meta(5, 2), [b"wrong term"])
    with pytest.raises(ValueError, match="does not match the log"):
        storage.save_snapshot(meta(11, 1), [b"beyond the log"])
    storage.close()


# --- the async API ------------------------------------------------------------------------------

Opener = Callable[[], Awaitable[DiskStorage | MemoryStorage]]


@pytest.fixture(params=["disk", "memory"])
def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    memory_disk = MemoryDisk()

    async def opener() -> DiskStorage | MemoryStorage:
        if request.param == "disk":
            return await DiskStorage.open(tmp_path)
        return await MemoryStorage.open(memory_disk)

    return opener


async def test_snapshot_chunks_round_trip_through_the_storage_api(open_storage: Opener) -> None:
    storage = await open_storage()
    await storage.save(make_entries(1, 3, 1), HardState(1, 1, 3))
    buffer = bytearray(SNAPSHOT_CHUNK_BYTES)

    def produce() -> Iterator[bytearray]:
        # One buffer refilled for every chunk: each chunk is written before the next is made.
        for number in range(3):
            buffer[:] = bytes([number]) * SNAPSHOT_CHUNK_BYTES
            yield buffer

    await storage.save_snapshot(meta(3), produce())
    await storage.close()
    storage = await open_storage()
    assert storage.recovered.snapshot_meta == meta(3)
    chunks = [chunk async for chunk in storage.open_snapshot_chunks(meta(3))]
    assert all(len(chunk) <= SNAPSHOT_CHUNK_BYTES for chunk in chunks)
    assert b"".join(chunks) == b"".join(bytes([n]) * SNAPSHOT_CHUNK_BYTES for n in range(3))
    await storage.close()


async def test_reading_a_snapshot_that_is_not_kept_raises_storage_error(
    open_storage: Opener,
) -> None:
    storage = await open_storage()
    with pytest.raises(StorageError, match="not kept"):
        async for _ in storage.open_snapshot_chunks(meta(3)):
            pass
    await storage.close()


async def test_installing_a_leader_snapshot_through_the_api_replaces_the_log(
    open_storage: Opener,
) -> None:
    storage = await open_storage()
    await storage.save(make_entries(1, 5, 1), HardState(1, 1, 2))
    await storage.install_snapshot(meta(40, 3), b"leader state")
    await storage.close()
    storage = await open_storage()
    assert storage.recovered.snapshot_meta == meta(40, 3)
    assert storage.recovered.entries == []
    assert b"".join([c async for c in storage.open_snapshot_chunks(meta(40, 3))]) == (
        b"leader state"
    )
    await storage.close()


async def test_a_damaged_snapshot_read_through_disk_storage_raises_and_storage_stays_usable(
    tmp_path: Path,
) -> None:
    storage = await DiskStorage.open(tmp_path)
    await storage.save(make_entries(1, 3, 1), None)
    await storage.save_snapshot(meta(3), [b"z" * 5000])
    path = tmp_path / SNAPSHOT_DIRECTORY_NAME / snapshot_file_name(3, 1)
    flip_byte(path, path.stat().st_size - 1)
    with pytest.raises(StorageCorruptionError, match="data checksum mismatch"):
        async for _ in storage.open_snapshot_chunks(meta(3)):
            pass
    await storage.save(make_entries(4, 1, 1), None)
    await storage.close()


async def test_the_recovered_snapshot_path_names_the_snapshot_file(tmp_path: Path) -> None:
    storage = await DiskStorage.open(tmp_path)
    await storage.save(make_entries(1, 3, 1), None)
    await storage.save_snapshot(meta(2), [b"state"])
    await storage.close()
    storage = await DiskStorage.open(tmp_path)
    assert storage.recovered.snapshot_path == (
        tmp_path / SNAPSHOT_DIRECTORY_NAME / snapshot_file_name(2, 1)
    )
    await storage.close()


async def test_a_failing_chunk_producer_leaves_no_snapshot_behind(tmp_path: Path) -> None:
    storage = await DiskStorage.open(tmp_path)
    await storage.save(make_entries(1, 3, 1), None)

    def produce() -> Iterator[bytes]:
        yield b"first chunk"
        raise RuntimeError("the state machine gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        await storage.save_snapshot(meta(3), produce())
    await storage.save([], None, True)  # queued after the clean-up: it has run when this returns
    assert list((tmp_path / SNAPSHOT_DIRECTORY_NAME).iterdir()) == []
    await storage.save_snapshot(meta(3), [b"second try"])
    assert b"".join([c async for c in storage.open_snapshot_chunks(meta(3))]) == b"second try"
    await storage.close()


async def test_snapshot_reads_proceed_while_the_writer_thread_is_busy(tmp_path: Path) -> None:
    file_ops = HoldingFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    await storage.save(make_entries(1, 3, 1), None)
    await storage.save_snapshot(meta(3), [b"s" * (2 * SNAPSHOT_CHUNK_BYTES + 1)])
    file_ops.release.clear()
    blocked_save = asyncio.ensure_future(storage.save(make_entries(4, 1, 1), None))
    await asyncio.to_thread(file_ops.holding.wait, 10)
    # The writer thread is stuck in a write; streaming the snapshot does not need it.
    chunks = [chunk async for chunk in storage.open_snapshot_chunks(meta(3))]
    assert not blocked_save.done()
    file_ops.release.set()
    await blocked_save
    assert b"".join(chunks) == b"s" * (2 * SNAPSHOT_CHUNK_BYTES + 1)
    await storage.close()
