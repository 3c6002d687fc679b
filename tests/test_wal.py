"""Tests for kvraft.storage.wal and the log side of the storage API.

What a node relies on: every acknowledged write comes back after a crash, a torn write at the
tail is cut and nothing else, damage before the tail is refused (never silently dropped), a
truncated suffix never comes back, and segments roll over and compact as documented. The last
part runs the same contract against `DiskStorage` and `MemoryStorage`, and a model-based
property test drives `StorageEngine` through random appends, truncations, snapshots,
compactions and crashes.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from kvraft.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from kvraft.storage import disk as disk_module
from kvraft.storage import wal as wal_module
from kvraft.storage.api import StorageCorruptionError, StorageError
from kvraft.storage.disk import DiskStorage
from kvraft.storage.engine import StorageEngine
from kvraft.storage.memory import MemoryDisk, MemoryStorage
from kvraft.storage.wal import (
    FRAME_HEADER_BYTES,
    PREALLOCATION_BYTES,
    SEGMENT_BYTES_MAX_DEFAULT,
    SEGMENT_BYTES_MAX_HIGHEST,
    SEGMENT_BYTES_MAX_LOWEST,
    LogState,
    WalRecovery,
    WriteAheadLog,
    prepare_batch,
    segment_file_name,
)
from tests.file_ops_doubles import HoldingFileOps

CONFIGURATION = Configuration(voters=frozenset({1, 2, 3}))

SECTOR_BYTES = 512
"""The unit a torn write tears at (documented): a sector that did not reach the disk reads as it
was before the write, which in a preallocated segment is zeros."""


def sector_start(offset: int) -> int:
    return offset - offset % SECTOR_BYTES


def make_entries(first: int, count: int, term: int, size: int = 12) -> list[Entry]:
    return [
        Entry(term, index, EntryKind.NORMAL, f"{index}@{term}".encode().ljust(size, b"-"))
        for index in range(first, first + count)
    ]


def positions(entries: list[Entry]) -> list[tuple[int, int]]:
    return [(entry.index, entry.term) for entry in entries]


def reopen(directory: Path, segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT) -> WalRecovery:
    """Recover and close again. fsync is off: recovery reads the same bytes either way, and
    skipping the fdatasync keeps the byte-by-byte loops fast."""
    wal, recovery = WriteAheadLog.open(directory, fsync=False, segment_bytes_max=segment_bytes_max)
    wal.close()
    return recovery


def recovered_entries(recovery: WalRecovery) -> list[Entry]:
    assert recovery.log.entries is not None
    return list(recovery.log.entries)


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """Frame boundaries by the documented layout: 40-byte header starting with the magic,
    payload length at 4..8, payload, 4-byte trailer. They end where the magic does
    (preallocated free space is zeros)."""
    spans = []
    offset = 0
    while offset + 40 <= len(data) and data[offset : offset + 4] == b"KVW2":
        (length,) = struct.unpack_from("<I", data, offset + 4)
        spans.append((offset, offset + 44 + length))
        offset += 44 + length
    return spans


def frames_end(path: Path) -> int:
    """Where a segment's frames end; the file may go on with preallocated free space."""
    spans = frame_spans(path.read_bytes())
    return spans[-1][1] if spans else 0


def documented_frame(payload: bytes, seq: int, offset: int, settled: int, seed: int) -> bytes:
    """A frame built from the module docstring's layout, independently of the writer."""
    fields = struct.pack(
        "<4sIQQQI", b"KVW2", len(payload), seq, offset, settled, zlib.crc32(payload, seed)
    )
    return fields + struct.pack("<I", zlib.crc32(fields, seed)) + payload + b"KVWE"


def segment_seed(data: bytes) -> int:
    """The checksum seed a segment's START record holds (the fifth field of its first
    record, in the first frame)."""
    start, end = frame_spans(data)[0]
    seed: int = msgpack.unpackb(data[start + 40 : end - 4])[0][4]
    return seed


@dataclass
class History:
    """A WAL written batch by batch; index k describes the state after k batches."""

    ends: list[tuple[Path, int]]
    """The active segment and where its frames end after each batch (k = 0: right after
    open)."""
    states: list[tuple[list[Entry], HardState]]


def write_history(
    directory: Path,
    batch_count: int,
    seed: int,
    *,
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
    sync_pattern: Callable[[int], bool] = lambda _: True,
    entry_bytes_max: int = 40,
) -> History:
    """Random batches (appends, sometimes truncating a suffix under a new term, with hard
    states), each written as one batch, with a model of the log after each."""
    rng = random.Random(seed)
    wal, _ = WriteAheadLog.open(directory, segment_bytes_max=segment_bytes_max)
    log: list[Entry] = []
    hard_state = HardState()
    term = 1
    ends = [(wal.segment_paths[-1], frames_end(wal.segment_paths[-1]))]
    states: list[tuple[list[Entry], HardState]] = [([], hard_state)]
    for batch_number in range(batch_count):
        if log and rng.random() < 0.25:
            term += 1
            first = rng.randint(max(1, len(log) - 3), len(log))
        else:
            first = len(log) + 1
        batch = make_entries(first, rng.randint(1, 3), term, size=rng.randint(4, entry_bytes_max))
        hard_state = HardState(term, rng.randint(0, 5), rng.randint(0, first - 1))
        wal.append(batch, hard_state, sync=sync_pattern(batch_number))
        del log[first - 1 :]
        log.extend(batch)
        path = wal.segment_paths[-1]
        ends.append((path, frames_end(path)))
        states.append((list(log), hard_state))
    wal.close()
    return History(ends, states)


# --- appending, truncating, reopening ---


def test_new_directory_recovers_an_empty_log_and_zero_hard_state(tmp_path: Path) -> None:
    recovery = reopen(tmp_path / "wal")
    assert recovered_entries(recovery) == []
    assert recovery.hard_state == HardState()
    assert (recovery.log.first_index, recovery.log.last_index) == (1, 0)


def test_entries_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    entries = [*make_entries(1, 3, 1), Entry(1, 4, EntryKind.CONFIG, b"\x93\x91\x01\x90\xc4\x00")]
    entries.append(Entry(2, 5, EntryKind.NOOP))
    wal.append(entries, HardState(2, 3, 4))
    wal.close()
    recovery = reopen(tmp_path)
    assert recovered_entries(recovery) == entries
    assert recovery.hard_state == HardState(2, 3, 4)


def test_a_batch_replaces_every_entry_from_its_first_index(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 10, 1))
    wal.append(make_entries(5, 2, 2))
    assert (wal.log.last_index, wal.log.term_at(5), wal.log.term_at(4)) == (6, 2, 1)
    wal.close()
    assert recovered_entries(reopen(tmp_path)) == make_entries(1, 4, 1) + make_entries(5, 2, 2)


def test_truncated_suffix_never_comes_back_after_a_crash(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 20, 1), HardState(1, 1, 5))
    wal.append(make_entries(8, 2, 2), HardState(2, 2, 5))
    # A crash: the next incarnation opens the directory while this one never closed it.
    after_crash = reopen(tmp_path)
    assert recovered_entries(after_crash) == make_entries(1, 7, 1) + make_entries(8, 2, 2)
    wal.append(make_entries(10, 3, 2))
    after_second_crash = reopen(tmp_path)
    wal.close()
    assert recovered_entries(after_second_crash) == (
        make_entries(1, 7, 1) + make_entries(8, 2, 2) + make_entries(10, 3, 2)
    )
    assert after_second_crash.hard_state == HardState(2, 2, 5)


def test_a_crash_inside_a_truncating_write_keeps_the_old_log_whole(tmp_path: Path) -> None:
    source = tmp_path / "source"
    wal, _ = WriteAheadLog.open(source)
    wal.append(make_entries(1, 20, 1))
    before = wal.segment_paths[-1].stat().st_size
    wal.append(make_entries(5, 2, 2))
    data = wal.segment_paths[-1].read_bytes()
    name = wal.segment_paths[-1].name
    wal.close()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for cut in range(before, len(data)):
        (scratch / name).write_bytes(data[:cut])
        # Either the truncation and its new entries are both durable, or neither is.
        assert recovered_entries(reopen(scratch)) == make_entries(1, 20, 1), cut


def test_a_gap_or_a_badly_formed_batch_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 3, 2))
    size = wal.segment_paths[-1].stat().st_size
    with pytest.raises(ValueError, match="gap"):
        wal.append(make_entries(5, 1, 2))
    with pytest.raises(ValueError, match="consecutive"):
        wal.append([Entry(2, 4), Entry(2, 6)])
    with pytest.raises(ValueError, match="term"):
        wal.append([Entry(3, 4), Entry(2, 5)])
    with pytest.raises(ValueError, match="below the term"):
        wal.append([Entry(1, 4)])
    with pytest.raises(ValueError, match="bytes"):
        wal.append([Entry(2, 4, EntryKind.NORMAL, "text")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hard state"):
        wal.append([], HardState(term=-1))
    assert wal.segment_paths[-1].stat().st_size == size
    wal.close()
    assert recovered_entries(reopen(tmp_path)) == make_entries(1, 3, 2)


def test_a_hard_state_alone_is_recorded(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 2, 1), HardState(1, 1, 0))
    wal.append([], HardState(5, 2, 2))
    wal.close()
    recovery = reopen(tmp_path)
    assert recovery.hard_state == HardState(5, 2, 2)
    assert recovered_entries(recovery) == make_entries(1, 2, 1)


def test_recorded_snapshot_keeps_the_suffix_only_when_the_log_matches_it(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 10, 1))
    assert wal.record_snapshot(6, 1) is True  # §7: the log holds (6, 1): keep 7..10
    assert (wal.log.first_index, wal.log.last_index) == (7, 10)
    assert wal.record_snapshot(8, 3) is False  # the log has term 1 at 8: discard it all
    assert (wal.log.first_index, wal.log.last_index) == (9, 8)
    wal.append(make_entries(9, 2, 3))
    wal.close()
    recovery = reopen(tmp_path)
    assert recovered_entries(recovery) == make_entries(9, 2, 3)
    assert recovery.log.first_index == 9


# --- torn tails and corruption ---


@pytest.mark.parametrize("preallocated", [False, True], ids=["end of file", "preallocated"])
def test_cutting_the_last_frames_at_every_byte_or_sector_recovers_exactly_the_complete_batches(
    tmp_path: Path, preallocated: bool
) -> None:
    # A write torn at `cut`: in a file that ends there (any byte), or in a preallocated file
    # where every sector from `cut` on did not reach the disk and reads as zeros (whole
    # sectors, or the end of a write: a sector holds all that was written to it or nothing).
    history = write_history(
        tmp_path / "source", 16, seed=11, entry_bytes_max=600 if preallocated else 40
    )
    path, _ = history.ends[-1]
    frame_ends = [end for _, end in history.ends]
    data = path.read_bytes()[: frame_ends[-1]]
    if preallocated:
        sectors = range(sector_start(frame_ends[-6]) + SECTOR_BYTES, len(data), SECTOR_BYTES)
        cuts = sorted({*sectors, *frame_ends[-6:]})
        assert len(sectors) >= 5
    else:
        cuts = list(range(frame_ends[-4], len(data) + 1))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    free_space_bytes = 4096 if preallocated else 0
    for cut in cuts:
        (scratch / path.name).write_bytes(data[:cut] + bytes(free_space_bytes))
        recovery = reopen(scratch)
        complete = max(k for k, end in enumerate(frame_ends) if end <= cut)
        entries, hard_state = history.states[complete]
        assert recovered_entries(recovery) == entries, cut
        assert recovery.hard_state == hard_state, cut
        # The torn bytes are gone from the file, so new frames follow the last good one;
        # free space right after the last good frame is kept as it is.
        at_a_frame_end = cut == frame_ends[complete]
        expected_size = cut + free_space_bytes if at_a_frame_end else frame_ends[complete]
        assert (scratch / path.name).stat().st_size == expected_size, cut


def test_recovery_after_cutting_a_torn_tail_keeps_appending_correctly(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 5, 1))
    wal.append(make_entries(6, 5, 1))
    path = wal.segment_paths[-1]
    wal.close()
    os.truncate(path, frames_end(path) - 7)
    wal, recovery = WriteAheadLog.open(tmp_path)
    assert recovery.torn_tail is not None and recovery.torn_tail[0] == path
    wal.append(make_entries(6, 2, 2))
    wal.close()
    assert recovered_entries(reopen(tmp_path)) == make_entries(1, 5, 1) + make_entries(6, 2, 2)


def test_torn_tail_is_logged_with_file_and_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = write_history(tmp_path, 3, seed=2)
    path, end = history.ends[-1]
    _, previous_end = history.ends[-2]
    os.truncate(path, end - 1)
    reopen(tmp_path)
    assert f"{path}: torn write at offset {previous_end}" in caplog.text


def test_the_active_segment_is_preallocated_ahead_of_its_frames_only_when_fsync_is_on(
    tmp_path: Path,
) -> None:
    for fsync in (True, False):
        wal, _ = WriteAheadLog.open(tmp_path / str(fsync), fsync=fsync)
        wal.append(make_entries(1, 3, 1))
        path = wal.segment_paths[-1]
        end = frames_end(path)
        status = path.stat()
        if fsync:
            assert status.st_size == end + PREALLOCATION_BYTES
            assert status.st_blocks * 512 >= status.st_size  # reserved on disk, not a hole
        else:
            assert status.st_size == end
        wal.close()


def test_free_space_after_the_last_frame_is_kept_and_written_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = write_history(tmp_path, 5, seed=3)
    path, end = history.ends[-1]
    size = path.stat().st_size
    assert size > end
    wal, recovery = WriteAheadLog.open(tmp_path)
    assert recovered_entries(recovery) == history.states[-1][0]
    assert recovery.torn_tail is None and "torn" not in caplog.text
    assert path.stat().st_size == size
    last_index = wal.log.last_index
    wal.append(make_entries(last_index + 1, 2, 50))
    wal.close()
    assert frame_spans(path.read_bytes())[-1][0] == end  # the next frame went where they ended
    assert path.stat().st_size == size
    expected = history.states[-1][0] + make_entries(last_index + 1, 2, 50)
    assert recovered_entries(reopen(tmp_path)) == expected


def test_a_full_segment_is_cut_back_to_its_frames_before_the_next_one_starts(
    tmp_path: Path,
) -> None:
    segment_bytes_max = 64 * 1024
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=segment_bytes_max)
    for index in range(1, 201):
        wal.append(make_entries(index, 1, 1, size=1000))
    paths = wal.segment_paths
    wal.close()
    assert len(paths) >= 3
    for path in paths[:-1]:
        assert path.stat().st_size == frames_end(path)
    # The active segment's free space never goes past the segment's limit.
    assert frames_end(paths[-1]) < paths[-1].stat().st_size <= segment_bytes_max
    assert recovered_entries(reopen(tmp_path, segment_bytes_max)) == [
        entry for index in range(1, 201) for entry in make_entries(index, 1, 1, size=1000)
    ]


def test_zeros_after_the_frames_of_a_segment_that_is_not_the_last_are_refused(
    tmp_path: Path,
) -> None:
    write_history(tmp_path, 90, seed=9, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    assert (tmp_path / segment_file_name(2)).exists()
    first = tmp_path / segment_file_name(1)
    end = first.stat().st_size
    with first.open("ab") as file:
        file.write(bytes(100))
    with pytest.raises(StorageCorruptionError, match="not the last one") as refused:
        reopen(tmp_path, SEGMENT_BYTES_MAX_LOWEST)
    assert refused.value.path == first and refused.value.offset == end


@pytest.mark.parametrize("zeroed", ["whole frame", "last sector"])
def test_zeros_over_the_end_of_the_last_frame_are_a_torn_write(tmp_path: Path, zeroed: str) -> None:
    # Zeros exactly where a crash leaves them: the whole frame (the write never reached the
    # disk: free space, kept) or its last sector (a write cut short: cut). Over a frame that
    # was synced the same zeros cannot be told from these without a later frame (see the
    # module docstring); zeros in any other shape are refused (the tests below).
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    wal.append(make_entries(4, 2, 1, size=700), HardState(1, 1, 3))
    path = wal.segment_paths[-1]
    wal.close()
    start, end = frame_spans(path.read_bytes())[-1]
    zero_from = start if zeroed == "whole frame" else sector_start(end - 1)
    assert zero_from >= start
    with path.open("r+b") as file:
        file.seek(zero_from)
        file.write(bytes(end - zero_from))
    recovery = reopen(tmp_path)
    assert recovered_entries(recovery) == make_entries(1, 3, 1)
    assert recovery.hard_state == HardState(1, 1, 0)
    assert recovery.torn_tail == (None if zeroed == "whole frame" else (path, start))


def test_single_bit_flips_are_refused_naming_file_and_offset_unless_in_free_space(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    history = write_history(source, 90, seed=5, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    segments = sorted(source.iterdir())
    assert len(segments) >= 3  # the scenario must cover damage in non-last segments too
    originals = {path.name: path.read_bytes() for path in segments}
    last_name = segments[-1].name
    last_frame_start, last_frames_end = frame_spans(originals[last_name])[-1]
    assert len(originals[last_name]) > last_frames_end  # free space is damaged too
    # Free space from the sector after the one where a next frame would begin: the zeros of
    # that sector show that no frame was written there. A flipped bit inside that sector is
    # stray bytes where a frame would begin, which no crash leaves: refused.
    next_frame_sector = sector_start(last_frames_end)
    assert sector_start(last_frames_end + FRAME_HEADER_BYTES) == next_frame_sector
    free_space_start = next_frame_sector + SECTOR_BYTES
    scratch = tmp_path / "scratch"
    rng = random.Random(20240611)
    outcomes = {"last frame refused": 0, "refused": 0, "free space": 0}
    for _ in range(120):
        name = rng.choice(sorted(originals))
        # Aim at the last frame and at the free space often enough to see every outcome.
        low, high = 0, len(originals[name])
        if name == last_name and rng.random() < 0.5:
            low, high = rng.choice([(last_frame_start, last_frames_end), (free_space_start, high)])
        offset = rng.randrange(low, high)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        for other, data in originals.items():
            damaged = bytearray(data)
            if other == name:
                damaged[offset] ^= 1 << rng.randrange(8)
            (scratch / other).write_bytes(damaged)
        frame_start = max(start for start, _ in frame_spans(originals[name]) if start <= offset)
        if name == last_name and last_frames_end <= offset < free_space_start:
            frame_start = last_frames_end
        if name == last_name and offset >= free_space_start:
            # Garbage in the free space after the last frame vouches for nothing: it is cut.
            assert recovered_entries(reopen(scratch)) == history.states[-1][0]
            assert (scratch / name).stat().st_size == last_frames_end
            outcomes["free space"] += 1
        else:
            # Also in the last frame: it was synced, and a flipped bit is no torn write.
            if frame_start == last_frame_start and name == last_name:
                outcomes["last frame refused"] += 1
            with pytest.raises(StorageCorruptionError) as refused:
                reopen(scratch)
            assert refused.value.path == scratch / name
            assert refused.value.offset == frame_start
            assert f"{scratch / name} at offset {frame_start}" in str(refused.value)
            assert "delete its data directory" in str(refused.value)
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 5, outcomes


def test_garbage_followed_by_a_good_frame_is_refused_not_cut(tmp_path: Path) -> None:
    history = write_history(tmp_path, 10, seed=6)
    path, _ = history.ends[-1]
    _, damaged_start = history.ends[5]
    with path.open("r+b") as file:
        file.seek(damaged_start + 40)
        file.write(b"\xde\xad\xbe\xef")
    size = path.stat().st_size
    with pytest.raises(StorageCorruptionError) as refused:
        reopen(tmp_path)
    assert refused.value.offset == damaged_start
    assert path.stat().st_size == size  # nothing was truncated


def write_large_frame_then_small_ones(directory: Path, syncs_after: list[bool]) -> tuple[Path, int]:
    """Entries 1..3 (synced), entries 4..5 in one frame of several sectors written without
    fsync, then one single-entry frame per item of `syncs_after` (fsynced or not); the segment
    and where the large frame starts."""
    wal, _ = WriteAheadLog.open(directory)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    wal.append(make_entries(4, 2, 1, size=700), sync=False)
    for index, sync in enumerate(syncs_after, start=6):
        wal.append(make_entries(index, 1, 1), sync=sync)
    path = wal.segment_paths[-1]
    wal.close()
    start, end = frame_spans(path.read_bytes())[2]  # after START and entries 1..3
    assert end - start > 2 * SECTOR_BYTES
    return path, start


def damage(path: Path, offset: int, replacement: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(replacement)


@pytest.mark.parametrize("damaged", ["first sector lost", "bit flip"])
def test_torn_unsynced_frames_are_dropped_with_the_unsynced_frames_after_them(
    tmp_path: Path, damaged: str
) -> None:
    # The large frame and the one after it were written without fsync: the disk may persist
    # the later one and not the large one's first sector, so that is a torn write and the
    # later frame goes with it. A flipped bit is no crash's doing: refused (a barrier sync
    # after the last frame would have made both durable, and nothing records whether one ran).
    path, start = write_large_frame_then_small_ones(tmp_path, [False])
    if damaged == "first sector lost":
        first_sector_end = sector_start(start) + SECTOR_BYTES
        damage(path, start, bytes(first_sector_end - start))
        recovery = reopen(tmp_path)
        assert recovered_entries(recovery) == make_entries(1, 3, 1)
        assert recovery.torn_tail == (path, start)
    else:
        damage(path, start + FRAME_HEADER_BYTES + 2, b"\xff")
        with pytest.raises(StorageCorruptionError) as refused:
            reopen(tmp_path)
        assert refused.value.offset == start


def test_a_later_frame_that_vouches_for_damaged_bytes_makes_them_corruption(
    tmp_path: Path,
) -> None:
    # The large frame unsynced, the next synced (covering it), the last written after that
    # fsync: its header records that the large frame was durable, so its lost first sector
    # (which alone would read as a torn write) is damage.
    path, start = write_large_frame_then_small_ones(tmp_path, [True, True])
    damage(path, start, bytes(sector_start(start) + SECTOR_BYTES - start))
    with pytest.raises(StorageCorruptionError, match="already on stable storage") as refused:
        reopen(tmp_path)
    assert refused.value.offset == start


def test_damage_at_the_very_end_of_a_segment_that_is_not_the_last_is_refused(
    tmp_path: Path,
) -> None:
    write_history(tmp_path, 60, seed=9, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    first = tmp_path / segment_file_name(1)
    os.truncate(first, first.stat().st_size - 1)
    with pytest.raises(StorageCorruptionError, match="not the last one") as refused:
        reopen(tmp_path)
    assert refused.value.path == first


def test_a_missing_segment_is_refused(tmp_path: Path) -> None:
    write_history(tmp_path, 90, seed=10, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    (tmp_path / segment_file_name(2)).unlink()
    with pytest.raises(StorageCorruptionError, match="missing") as refused:
        reopen(tmp_path)
    assert refused.value.path == tmp_path / segment_file_name(3)


def test_a_segment_under_the_wrong_name_is_refused_not_cut(tmp_path: Path) -> None:
    write_history(tmp_path, 60, seed=12, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    last = sorted(tmp_path.iterdir())[-1]
    shutil.copy(tmp_path / segment_file_name(1), last)
    with pytest.raises(StorageCorruptionError, match="valid frame of segment 1"):
        reopen(tmp_path)
    assert last.read_bytes() == (tmp_path / segment_file_name(1)).read_bytes()


def test_an_empty_last_segment_left_by_a_crash_during_rollover_is_removed(tmp_path: Path) -> None:
    history = write_history(tmp_path, 30, seed=13, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    segments = sorted(tmp_path.iterdir())
    # A rollover first cuts the full segment back to its frames and syncs it.
    os.truncate(segments[-1], frames_end(segments[-1]))
    empty = tmp_path / segment_file_name(len(segments) + 1)
    empty.write_bytes(b"")
    wal, recovery = WriteAheadLog.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    assert recovered_entries(recovery) == history.states[-1][0]
    last_index = wal.log.last_index
    wal.append(make_entries(last_index + 1, 1, 99))
    wal.close()
    assert recovered_entries(reopen(tmp_path))[-1] == make_entries(last_index + 1, 1, 99)[0]


def test_a_checksummed_frame_with_malformed_records_is_refused_even_at_the_tail(
    tmp_path: Path,
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 2, 1))
    path = wal.segment_paths[-1]
    wal.close()
    size = frames_end(path)
    bad_records = msgpack.packb([[1, 1, [[1, 5]], b"\x00", [b"one entry, five claimed"]]])
    with path.open("r+b") as file:
        file.seek(size)
        file.write(documented_frame(bad_records, 1, size, size, segment_seed(path.read_bytes())))
    with pytest.raises(StorageCorruptionError, match="inconsistent counts") as refused:
        reopen(tmp_path)
    assert refused.value.offset == size


# --- the last synced frame, and what may prove a tail torn (issue #15, findings 5 and 6) ---


def write_vote_after_entries(directory: Path) -> tuple[Path, int, int]:
    """Entries, then a vote (term 2, voted_for 3) on its own, each fsynced before returning;
    the segment file, and where the vote's frame starts and ends."""
    wal, _ = WriteAheadLog.open(directory)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    wal.append([], HardState(2, 3, 0))
    path = wal.segment_paths[-1]
    wal.close()
    start, end = frame_spans(path.read_bytes())[-1]
    return path, start, end


def test_a_bit_flip_anywhere_in_the_last_synced_frame_is_refused_not_cut(tmp_path: Path) -> None:
    # The vote was fsynced and acknowledged: dropping it would let this node vote twice in
    # term 2. No later frame vouches for it, yet a flipped bit is no torn write.
    source = tmp_path / "source"
    path, start, end = write_vote_after_entries(source)
    original = path.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for offset in range(start, end):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << bit
            (scratch / path.name).write_bytes(damaged)
            with pytest.raises(StorageCorruptionError) as refused:
                reopen(scratch)
            assert refused.value.offset == start, (offset, bit)
            assert (scratch / path.name).read_bytes() == damaged  # nothing was cut


@pytest.mark.parametrize("zeroed", ["header", "payload", "last 10 bytes", "last byte"])
def test_zeroed_bytes_in_the_last_synced_frame_that_no_torn_write_leaves_are_refused(
    tmp_path: Path, zeroed: str
) -> None:
    # A write cut short leaves whole sectors as they were (zeros); zeros over part of a sector
    # whose other bytes are the frame's are damage to a frame that was acknowledged.
    path, start, end = write_vote_after_entries(tmp_path)
    payload_start = start + FRAME_HEADER_BYTES
    nonzero = [offset for offset in range(start, end) if path.read_bytes()[offset]]
    span = {
        "header": (start, payload_start),
        "payload": (payload_start, payload_start + 4),
        "last 10 bytes": (nonzero[-10], end),
        "last byte": (nonzero[-1], end),
    }[zeroed]
    assert span[0] // SECTOR_BYTES == (span[1] - 1) // SECTOR_BYTES  # within one sector
    with path.open("r+b") as file:
        file.seek(span[0])
        file.write(bytes(span[1] - span[0]))
    damaged = path.read_bytes()
    with pytest.raises(StorageCorruptionError) as refused:
        reopen(tmp_path)
    assert refused.value.offset == start
    assert path.read_bytes() == damaged


def test_a_write_torn_at_a_sector_boundary_or_the_end_of_the_file_is_cut(tmp_path: Path) -> None:
    # The last save was never synced (so never acknowledged) and is large enough to span
    # sectors. What a crash leaves of it: the file ends inside it (no preallocation), or in a
    # preallocated segment the sectors that did not reach the disk read as zeros - the end of
    # the write (written in order) or its first sector (the disk persisted out of order).
    source = tmp_path / "source"
    wal, _ = WriteAheadLog.open(source)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    wal.append(make_entries(4, 3, 1, size=1500), HardState(1, 1, 3), sync=False)
    path = wal.segment_paths[-1]
    wal.close()
    original = path.read_bytes()
    start, end = frame_spans(original)[-1]
    first_boundary = (start // SECTOR_BYTES + 1) * SECTOR_BYTES
    tears: list[bytes] = []
    for cut in range(start + 1, end, 97):  # the file ends at `cut`
        tears.append(original[:cut])
    for boundary in range(first_boundary, end, SECTOR_BYTES):  # zeros from a sector on
        tears.append(original[:boundary] + bytes(len(original) - boundary))
    first_sector_lost = bytearray(original)
    first_sector_lost[start:first_boundary] = bytes(first_boundary - start)
    tears.append(bytes(first_sector_lost))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for number, torn in enumerate(tears):
        (scratch / path.name).write_bytes(torn)
        recovery = reopen(scratch)
        assert recovered_entries(recovery) == make_entries(1, 3, 1), number
        assert recovery.hard_state == HardState(1, 1, 0), number
        assert recovery.torn_tail == (scratch / path.name, start), number
        assert (scratch / path.name).stat().st_size == start, number


def forged_frame_value(position: int, seq: int, settled: int, length: int, seed: int) -> bytes:
    """Value bytes a client could send: a frame by the documented layout, checksummed, naming
    the segment, the offset it will land at and a settled offset past the torn write."""
    return documented_frame(b"\x91\x93\x02\x09\x09" + bytes(length), seq, position, settled, seed)


@pytest.mark.parametrize(
    ("tear", "seed_known"),
    [
        ("end of file", False),
        ("last sector", False),
        ("first sector", False),
        # Even with the segment's secret seed the forgery is never read: the torn frame's
        # header is intact, so the search starts after its last byte.
        ("end of file", True),
        ("last sector", True),
    ],
)
def test_a_forged_frame_in_a_value_does_not_turn_a_torn_write_into_corruption(
    tmp_path: Path, tear: str, seed_known: bool
) -> None:
    source = tmp_path / "source"
    wal, _ = WriteAheadLog.open(source)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    placeholder = b"\xaa" * 3000
    wal.append([Entry(1, 4, EntryKind.NORMAL, placeholder)], sync=False)
    path = wal.segment_paths[-1]
    wal.close()
    data = bytearray(path.read_bytes())
    start, end = frame_spans(bytes(data))[-1]
    position = data.find(placeholder) + 1000  # well inside the value, past its first sector
    # A client cannot read the segment's seed; it can guess (here: the START frames' seed).
    seed = segment_seed(bytes(data)) if seed_known else 0
    forged = forged_frame_value(position, 1, start + 1, 100, seed)
    data[position : position + len(forged)] = forged
    if tear == "end of file":
        torn = data[: position + len(forged) + 10]
    elif tear == "last sector":
        boundary = (end - 1) // SECTOR_BYTES * SECTOR_BYTES
        assert boundary > position + len(forged)
        torn = data[:boundary] + bytes(len(data) - boundary)
    else:
        boundary = (start // SECTOR_BYTES + 1) * SECTOR_BYTES
        assert boundary < position
        torn = data[:start] + bytes(boundary - start) + data[boundary:]
    path.write_bytes(torn)
    recovery = reopen(source)  # the forged frame vouches for nothing: the write is cut
    assert recovered_entries(recovery) == make_entries(1, 3, 1)
    assert recovery.torn_tail == (path, start)


class CrcBudget:
    """Counts the bytes checksummed through `zlib.crc32` and fails once they pass a budget,
    so a search that is quadratic in the torn bytes fails at once instead of running on."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.checksummed_bytes = 0
        self._crc32 = zlib.crc32

    def __call__(self, data: bytes | memoryview, value: int = 0) -> int:
        self.checksummed_bytes += len(data)
        assert self.checksummed_bytes <= self.budget_bytes, "checksummed more than the budget"
        return self._crc32(data, value)


@pytest.mark.parametrize("tear", ["end of file", "last sector", "first sector"])
def test_recovering_a_torn_1_mib_value_full_of_frame_magic_checksums_each_byte_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tear: str
) -> None:
    # Every 8 bytes of the value look like the start of a frame header claiming 1 MiB: a
    # search that checksums each candidate's claimed payload would checksum terabytes.
    value_bytes = 1024 * 1024
    value = (wal_module.FRAME_MAGIC + struct.pack("<I", value_bytes)) * (value_bytes // 8)
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 3, 1), HardState(1, 1, 0))
    wal.append([Entry(1, 4, EntryKind.NORMAL, value)], sync=False)
    path = wal.segment_paths[-1]
    wal.close()
    data = bytearray(path.read_bytes())
    start, end = frame_spans(bytes(data))[-1]
    if tear == "end of file":
        del data[end - 1000 :]
    elif tear == "last sector":
        boundary = (end - 1) // SECTOR_BYTES * SECTOR_BYTES
        data[boundary:] = bytes(len(data) - boundary)
    else:
        boundary = (start // SECTOR_BYTES + 1) * SECTOR_BYTES
        data[start:boundary] = bytes(boundary - start)
    path.write_bytes(data)
    budget = CrcBudget(2 * end)  # linear: each byte of the frames about once
    monkeypatch.setattr(zlib, "crc32", budget)
    recovery = reopen(tmp_path)
    assert recovered_entries(recovery) == make_entries(1, 3, 1)
    assert recovery.torn_tail == (path, start)


def test_a_segment_of_wal_format_1_is_refused_saying_so(tmp_path: Path) -> None:
    # Format 1 (one checksum, magic "KVWL") is not read: the message says why, not "damage".
    prefix = struct.pack("<4sIQQQ", b"KVWL", 3, 1, 0, 0)
    payload = b"\x91\x91\x00"
    header = prefix + struct.pack("<I", zlib.crc32(payload, zlib.crc32(prefix)))
    (tmp_path / segment_file_name(1)).write_bytes(header + payload)
    with pytest.raises(StorageCorruptionError, match="WAL format 1") as refused:
        reopen(tmp_path)
    assert refused.value.offset == 0


def test_files_that_are_not_segments_are_ignored(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 2, 1))
    wal.close()
    (tmp_path / "notes.txt").write_text("operator notes")
    assert recovered_entries(reopen(tmp_path)) == make_entries(1, 2, 1)


# --- segments and limits ---


def test_segment_bytes_max_is_checked_at_both_ends(tmp_path: Path) -> None:
    for accepted in (SEGMENT_BYTES_MAX_LOWEST, SEGMENT_BYTES_MAX_HIGHEST):
        WriteAheadLog.open(tmp_path / str(accepted), segment_bytes_max=accepted)[0].close()
    for refused in (SEGMENT_BYTES_MAX_LOWEST - 1, SEGMENT_BYTES_MAX_HIGHEST + 1):
        with pytest.raises(ValueError, match="segment_bytes_max"):
            WriteAheadLog.open(tmp_path / str(refused), segment_bytes_max=refused)


def frame_growth(tmp_path: Path, data_bytes: int) -> int:
    """How many bytes one single-entry batch with `data_bytes` of data adds to a segment."""
    directory = tmp_path / f"probe-{data_bytes}"
    wal, _ = WriteAheadLog.open(directory, fsync=False)
    before = wal.segment_paths[-1].stat().st_size
    wal.append([Entry(1, 1, EntryKind.NORMAL, bytes(data_bytes))])
    growth = wal.segment_paths[-1].stat().st_size - before
    wal.close()
    return growth


@pytest.mark.parametrize(("extra_bytes", "segments_expected"), [(0, 1), (1, 2)])
def test_a_segment_is_filled_exactly_to_segment_bytes_max_and_not_one_byte_more(
    tmp_path: Path, extra_bytes: int, segments_expected: int
) -> None:
    limit = SEGMENT_BYTES_MAX_LOWEST
    directory = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(directory, fsync=False, segment_bytes_max=limit)
    wal.append([Entry(1, 1, EntryKind.NORMAL, b"first")])
    used = wal.segment_paths[-1].stat().st_size
    # Frame size grows byte for byte with the data within one msgpack length class (300..).
    filler = 300 + (limit - used - frame_growth(tmp_path, 300)) + extra_bytes
    wal.append([Entry(1, 2, EntryKind.NORMAL, bytes(filler))])
    assert len(wal.segment_paths) == segments_expected
    if segments_expected == 1:
        assert wal.segment_paths[0].stat().st_size == limit
    wal.close()
    assert [len(entry.data) for entry in recovered_entries(reopen(directory))] == [5, filler]


def test_a_frame_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    wal.append(make_entries(1, 1, 1))
    wal.append([Entry(1, 2, EntryKind.NORMAL, bytes(3 * SEGMENT_BYTES_MAX_LOWEST))])
    wal.append(make_entries(3, 1, 1))
    assert len(wal.segment_paths) == 3
    wal.close()
    recovery = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    assert [entry.index for entry in recovered_entries(recovery)] == [1, 2, 3]


def test_batches_split_over_frames_and_segments_in_one_write_replay_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frame holds at most 3000 bytes here, so three 1400-byte batches need three frames,
    # and a 4 KiB segment cannot take them all: the new segment starts between two frames
    # of the same write and must start where the frames before it left the log.
    monkeypatch.setattr(wal_module, "RECORD_PAYLOAD_BYTES_MAX", 3000)
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    batches = [
        prepare_batch(make_entries(1, 2, 1, size=700), HardState(1, 1, 0)),
        prepare_batch(make_entries(3, 2, 1, size=700), HardState(1, 1, 2)),
        prepare_batch(make_entries(2, 2, 2, size=700), HardState(2, 2, 3)),
    ]
    wal.append_batches(batches, sync=True)
    assert len(wal.segment_paths) == 2
    wal.close()
    recovery = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    assert recovered_entries(recovery) == (
        make_entries(1, 1, 1, size=700) + make_entries(2, 2, 2, size=700)
    )
    assert recovery.hard_state == HardState(2, 2, 3)


def test_the_largest_batch_accepted_fits_a_frame_and_one_byte_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_module, "RECORD_PAYLOAD_BYTES_MAX", 4096)

    def accepted(data_bytes: int) -> bool:
        try:
            prepare_batch([Entry(1, 1, EntryKind.NORMAL, bytes(data_bytes))], HardState(1, 1, 0))
        except ValueError:
            return False
        return True

    low, high = 0, 4096  # accepted(low) and not accepted(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if accepted(middle) else (low, middle)
    assert low > 4096 - 200  # the size estimate is an upper bound, but not a wasteful one
    wal, _ = WriteAheadLog.open(tmp_path, fsync=False)
    wal.append([Entry(1, 1, EntryKind.NORMAL, bytes(low))], HardState(1, 1, 0))
    wal.close()
    assert len(recovered_entries(reopen(tmp_path))[0].data) == low


def test_a_frame_of_exactly_the_payload_limit_is_read_and_one_claiming_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 4096
    monkeypatch.setattr(wal_module, "RECORD_PAYLOAD_BYTES_MAX", limit)

    def entries_payload(data_bytes: int) -> bytes:
        payload: bytes = msgpack.packb([[1, 1, [[1, 1]], b"\x00", [bytes(data_bytes)]]])
        return payload

    data_bytes = 300 + limit - len(entries_payload(300))
    payload = entries_payload(data_bytes)
    assert len(payload) == limit
    wal, _ = WriteAheadLog.open(tmp_path, fsync=False)
    path = wal.segment_paths[-1]
    wal.close()
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(documented_frame(payload, 1, size, size, segment_seed(path.read_bytes())))
    assert len(recovered_entries(reopen(tmp_path))[0].data) == data_bytes
    # A header claiming one byte more than the limit is refused before anything is read;
    # in a segment that is not the last one that is corruption, and the reason says why.
    os.truncate(path, size)
    with path.open("ab") as file:
        file.write(struct.pack("<4sIQQQII", b"KVW2", limit + 1, 1, size, size, 0, 0))
    (tmp_path / segment_file_name(2)).write_bytes(b"")  # segment 1 is no longer the last
    with pytest.raises(StorageCorruptionError, match=f"claims {limit + 1} payload bytes"):
        reopen(tmp_path)


def test_a_segment_file_over_the_size_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(make_entries(1, 3, 1))
    size = wal.segment_paths[-1].stat().st_size
    wal.close()
    monkeypatch.setattr(wal_module, "SEGMENT_FILE_BYTES_MAX", size)
    assert len(recovered_entries(reopen(tmp_path))) == 3
    monkeypatch.setattr(wal_module, "SEGMENT_FILE_BYTES_MAX", size - 1)
    with pytest.raises(StorageCorruptionError, match=f"more than {size - 1}"):
        reopen(tmp_path)


def test_compaction_deletes_only_whole_segments_below_the_index_and_never_the_last(
    tmp_path: Path,
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    for index in range(1, 121):
        wal.append(make_entries(index, 1, 1, size=60), HardState(1, 1, index))
    segments_before = wal.segment_paths
    assert len(segments_before) >= 4
    deleted = wal.compact(60)
    kept = wal.segment_paths
    assert deleted == len(segments_before) - len(kept) > 0
    assert segments_before[deleted:] == kept
    # The first kept segment still holds index 61 (or something before it).
    recovery = reopen(tmp_path)
    assert recovery.log.first_index <= 61
    assert positions(recovered_entries(recovery))[-60:] == [(i, 1) for i in range(61, 121)]
    assert recovery.hard_state == HardState(1, 1, 120)
    wal.compact(10**6)
    assert wal.segment_paths == kept[-1:]
    wal.close()


def test_compacting_at_each_index_in_turn_never_loses_an_entry_above_it(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, fsync=False, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    for index in range(1, 61):
        wal.append(make_entries(index, 1, 1, size=400))  # about 8 entries per segment
    deleted_total = 0
    for index in range(0, 61):
        deleted_total += wal.compact(index)
        recovery = reopen(tmp_path)
        assert recovery.log.first_index <= index + 1, index
        assert recovered_entries(recovery)[index + 1 - recovery.log.first_index :] == (
            make_entries(index + 1, 60 - index, 1, size=400)
        )
    assert len(wal.segment_paths) == 1 and deleted_total > 5
    wal.close()


def test_the_hard_state_survives_deleting_every_segment_that_recorded_it(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
    wal.append([], HardState(7, 3, 0))
    for index in range(1, 80):
        wal.append(make_entries(index, 1, 7, size=60))
    wal.compact(10**6)
    assert len(wal.segment_paths) == 1
    wal.close()
    recovery = reopen(tmp_path)
    assert recovery.hard_state == HardState(7, 3, 0)
    assert recovery.log.last_index == 79


# --- the storage API (DiskStorage and MemoryStorage) ---


class GatedFileOps(HoldingFileOps):
    """Counts writes and syncs, and can hold the writer thread inside its next write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.syncs = 0
        self.directory_syncs = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        written = super().write(fd, data)
        self.writes += 1
        return written

    def sync_data(self, fd: int) -> None:
        self.syncs += 1
        super().sync_data(fd)

    def sync_directory(self, path: Path) -> None:
        self.directory_syncs += 1
        super().sync_directory(path)


async def wait_until(predicate: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


Opener = Callable[[], Awaitable[DiskStorage | MemoryStorage]]


@pytest.fixture(params=["disk", "memory"])
def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the storage of one kind on the same place each time (a restart)."""
    memory_disk = MemoryDisk()

    async def opener() -> DiskStorage | MemoryStorage:
        if request.param == "disk":
            return await DiskStorage.open(tmp_path, segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST)
        return await MemoryStorage.open(memory_disk)

    return opener


async def test_saves_are_recovered_by_the_next_open(open_storage: Opener) -> None:
    storage = await open_storage()
    assert storage.recovered.entries == [] and storage.recovered.hard_state == HardState()
    await storage.save(make_entries(1, 5, 1), HardState(1, 1, 0))
    await storage.save(make_entries(4, 3, 2), HardState(2, 2, 3), sync=False)
    await storage.save([], None, True)  # a barrier for the unsynced save
    await storage.close()
    storage = await open_storage()
    assert storage.recovered.entries == make_entries(1, 3, 1) + make_entries(4, 3, 2)
    assert storage.recovered.hard_state == HardState(2, 2, 3)
    assert storage.recovered.snapshot_meta is None
    await storage.close()


async def test_caller_mistakes_raise_value_error_and_leave_storage_usable(
    open_storage: Opener,
) -> None:
    storage = await open_storage()
    await storage.save(make_entries(1, 10, 1), None)
    with pytest.raises(ValueError, match="gap"):
        await storage.save(make_entries(12, 1, 1), None)
    await storage.save_snapshot(SnapshotMeta(5, 1, CONFIGURATION), [b"state"])
    with pytest.raises(ValueError, match="covered by the snapshot"):
        await storage.save(make_entries(5, 1, 2), None)
    with pytest.raises(ValueError, match="no snapshot covers"):
        await storage.compact(6)
    await storage.save(make_entries(11, 1, 1), None)
    await storage.close()
    storage = await open_storage()
    assert positions(storage.recovered.entries) == [(i, 1) for i in range(6, 12)]
    await storage.close()


async def test_operations_after_close_raise_storage_error(open_storage: Opener) -> None:
    storage = await open_storage()
    await storage.close()
    with pytest.raises(StorageError, match="closed"):
        await storage.save(make_entries(1, 1, 1), None)


async def test_an_installed_snapshot_is_ordered_before_saves_called_after_it(
    open_storage: Opener,
) -> None:
    storage = await open_storage()
    await storage.save(make_entries(1, 8, 1), None)
    # Called back to back without awaiting in between: the order of calls is what counts.
    install = asyncio.ensure_future(
        storage.install_snapshot(SnapshotMeta(20, 3, CONFIGURATION), b"leader state")
    )
    follow = asyncio.ensure_future(storage.save(make_entries(21, 2, 3), HardState(3, 2, 20)))
    await asyncio.gather(install, follow)
    await storage.close()
    storage = await open_storage()
    assert storage.recovered.snapshot_meta == SnapshotMeta(20, 3, CONFIGURATION)
    assert storage.recovered.entries == make_entries(21, 2, 3)
    await storage.close()


async def test_start_save_calls_on_done_once_each_in_order_with_the_future_already_settled(
    open_storage: Opener,
) -> None:
    """The driver sends a follower's acknowledgement from `on_done`: it must find its write
    done, never run inside `start_save`, and run before the future's own callbacks (that is
    the loop turn it saves). A failed write: `tests/test_storage_faults.py`."""
    storage = await open_storage()
    seen: list[tuple[str, int, bool]] = []
    saves: list[asyncio.Future[None]] = []

    def on_done(number: int) -> Callable[[], None]:
        return lambda: seen.append(("on_done", number, saves[number - 1].done()))

    for number in (1, 2, 3):
        save = storage.start_save(make_entries(number, 1, 1), None, on_done=on_done(number))
        save.add_done_callback(lambda _, number=number: seen.append(("callback", number, True)))
        saves.append(save)
    assert seen == []  # not called from inside start_save
    await asyncio.gather(*saves)
    await wait_until(lambda: len(seen) == 6)
    assert [event for event in seen if event[0] == "on_done"] == [
        ("on_done", 1, True),
        ("on_done", 2, True),
        ("on_done", 3, True),
    ]
    for number in (1, 2, 3):
        assert seen.index(("on_done", number, True)) < seen.index(("callback", number, True))
    await storage.close()


async def test_queued_saves_are_written_with_one_write_and_one_fsync(tmp_path: Path) -> None:
    file_ops = GatedFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.release.clear()
    first = asyncio.ensure_future(storage.save(make_entries(1, 1, 1), HardState(1, 1, 0)))
    await wait_until(file_ops.holding.is_set)
    writes, syncs = file_ops.writes, file_ops.syncs
    rest = [asyncio.ensure_future(storage.save(make_entries(i, 1, 1), None)) for i in range(2, 7)]
    await wait_until(lambda: storage.queued_operations == 5)
    file_ops.release.set()
    await asyncio.gather(first, *rest)
    assert (file_ops.writes - writes, file_ops.syncs - syncs) == (2, 2)
    await storage.close()
    storage = await DiskStorage.open(tmp_path)
    assert storage.recovered.entries == make_entries(1, 6, 1)
    await storage.close()


@pytest.mark.parametrize(("limit_adjustment", "writes_expected"), [(0, 1), (-1, 2)])
async def test_group_commit_takes_saves_up_to_batch_coalesce_bytes_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit_adjustment: int, writes_expected: int
) -> None:
    second, third = make_entries(2, 3, 1, size=500), make_entries(5, 2, 1, size=700)
    limit = len(prepare_batch(second, None).encoded) + len(prepare_batch(third, None).encoded)
    monkeypatch.setattr(disk_module, "BATCH_COALESCE_BYTES_MAX", limit + limit_adjustment)
    file_ops = GatedFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.release.clear()
    first = asyncio.ensure_future(storage.save(make_entries(1, 1, 1), None))
    await wait_until(file_ops.holding.is_set)
    writes = file_ops.writes
    queued = [asyncio.ensure_future(storage.save(batch, None)) for batch in (second, third)]
    await wait_until(lambda: storage.queued_operations == 2)
    file_ops.release.set()
    await asyncio.gather(first, *queued)
    assert file_ops.writes - writes == 1 + writes_expected
    await storage.close()


async def test_the_writer_queue_refuses_operations_past_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_module, "WRITER_QUEUE_OPERATIONS_MAX", 3)
    file_ops = GatedFileOps()
    storage = await DiskStorage.open(tmp_path, file_ops=file_ops)
    file_ops.release.clear()
    in_progress = asyncio.ensure_future(storage.save(make_entries(1, 1, 1), None))
    await wait_until(file_ops.holding.is_set)
    queued = [asyncio.ensure_future(storage.save(make_entries(i, 1, 1), None)) for i in (2, 3, 4)]
    await wait_until(lambda: storage.queued_operations == 3)
    with pytest.raises(StorageError, match="already waiting"):
        await storage.save(make_entries(5, 1, 1), None)
    file_ops.release.set()
    await asyncio.gather(in_progress, *queued)
    await storage.save(make_entries(5, 1, 1), None)  # room again
    await storage.close()


async def test_relaxed_mode_warns_at_open_and_never_syncs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file_ops = GatedFileOps()
    storage = await DiskStorage.open(tmp_path, fsync=False, file_ops=file_ops)
    await storage.save(make_entries(1, 3, 1), HardState(1, 1, 0), sync=True)
    await storage.save_snapshot(SnapshotMeta(2, 1, CONFIGURATION), [b"state"])
    await storage.close()
    assert (file_ops.syncs, file_ops.directory_syncs) == (0, 0)
    warnings = [record for record in caplog.records if "fsync is off" in record.getMessage()]
    assert len(warnings) == 1


def test_a_second_process_cannot_open_the_same_data_directory(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, fsync=False)
    try:
        script = (
            "import sys\n"
            "from kvraft.storage.api import StorageError\n"
            "from kvraft.storage.engine import StorageEngine\n"
            "try:\n"
            "    StorageEngine.open(sys.argv[1], fsync=False)\n"
            "except StorageError as error:\n"
            "    print(error)\n"
            "    sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        engine.close()
    assert result.returncode == 3, result.stderr
    assert "in use by another process" in result.stdout


def test_log_state_keeps_runs_of_terms_through_truncations_and_resets() -> None:
    log = LogState(keep_entries=True)
    log.apply_batch(prepare_batch(make_entries(1, 3, 1) + make_entries(4, 3, 2), None))
    log.apply_batch(prepare_batch(make_entries(5, 2, 3), None))
    assert [log.term_at(i) for i in range(0, 8)] == [None, 1, 1, 1, 2, 3, 3, None]
    assert log.reset(5, 3) is True
    assert (log.first_index, log.last_index, log.term_at(6)) == (6, 6, 3)
    copy = log.copy()
    assert copy.entries is None and copy.term_at(6) == 3
    assert log.reset(9, 4) is False
    assert (log.first_index, log.last_index, log.entries) == (10, 9, [])


# --- model-based property test ---


class StorageAgainstModel(RuleBasedStateMachine):
    """Random appends (with suffix truncation), hard states, local snapshots, installed
    snapshots, compactions and crashes against a plain list model of the log."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="kvraft-wal-model-"))
        self.snapshots_kept = 1
        self.engine: StorageEngine | None = None
        self.log: list[Entry] = []  # the model: entries from index `first`
        self.first = 1
        self.hard_state = HardState()
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None
        self.term = 1
        self.deleted_segments = 0

    def _open(self) -> StorageEngine:
        return StorageEngine.open(
            self.directory,
            fsync=False,
            segment_bytes_max=SEGMENT_BYTES_MAX_LOWEST,
            snapshots_kept=self.snapshots_kept,
        )

    @initialize(snapshots_kept=st.integers(1, 3))
    def open_engine(self, snapshots_kept: int) -> None:
        self.snapshots_kept = snapshots_kept
        self.engine = self._open()

    @property
    def storage(self) -> StorageEngine:
        assert self.engine is not None
        return self.engine

    @property
    def last(self) -> int:
        return self.first + len(self.log) - 1

    @property
    def floor(self) -> int:
        return self.snapshot[0].index if self.snapshot else 0

    def term_at(self, index: int) -> int | None:
        if self.first <= index <= self.last:
            return self.log[index - self.first].term
        return None

    @rule(
        count=st.integers(1, 4),
        back=st.integers(0, 3),
        new_term=st.booleans(),
        sync=st.booleans(),
        size=st.integers(0, 1500),  # a few entries fill a 4 KiB segment: compaction deletes
    )
    def append(self, count: int, back: int, new_term: bool, sync: bool, size: int) -> None:
        first = max(self.floor + 1, self.last + 1 - back)
        self.term += new_term
        entries = make_entries(first, count, self.term, size=size)
        hard_state = HardState(self.term, 1, self.floor)
        self.storage.save(entries, hard_state, sync=sync)
        if first < self.first:
            self.log, self.first = [], first
        del self.log[first - self.first :]
        self.log.extend(entries)
        self.hard_state = hard_state

    @rule(voted_for=st.integers(0, 5))
    def save_hard_state(self, voted_for: int) -> None:
        self.hard_state = HardState(self.term, voted_for, self.floor)
        self.storage.save([], self.hard_state)

    @precondition(lambda self: self.last > self.floor)
    @rule(data=st.data(), compact=st.booleans())
    def take_snapshot(self, data: st.DataObject, compact: bool) -> None:
        index = data.draw(st.integers(max(self.floor + 1, self.first), self.last))
        term = self.term_at(index)
        assert term is not None
        meta = SnapshotMeta(index, term, CONFIGURATION)
        state = f"state through {index}".encode()
        self.storage.save_snapshot(meta, [state[:4], state[4:]])
        self.snapshot = (meta, state)
        if compact:
            self.deleted_segments += self.storage.compact(index)

    @rule(data=st.data(), matching=st.booleans())
    def install_snapshot(self, data: st.DataObject, matching: bool) -> None:
        index = data.draw(st.integers(self.floor + 1, self.last + 3))
        term = self.term_at(index) if matching else None
        if term is None:
            self.term += 1
            term = self.term
        meta = SnapshotMeta(index, term, CONFIGURATION)
        state = f"leader state through {index}".encode()
        kept = self.storage.install_snapshot(meta, state)
        assert kept == (self.term_at(index) == term)
        self.log = self.log[index + 1 - self.first :] if kept else []
        self.first = index + 1
        self.snapshot = (meta, state)

    @precondition(lambda self: self.snapshot is not None)
    @rule()
    def compact(self) -> None:
        self.deleted_segments += self.storage.compact(self.floor)

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        if clean:
            self.storage.close()
            self.engine = self._open()
        else:
            crashed = self.storage  # never closed before the next open: a crash
            self.engine = self._open()
            crashed.close()
        event(f"restart after deleting segments: {self.deleted_segments > 0}")
        recovered = self.storage.recovered
        assert recovered.hard_state == self.hard_state
        assert recovered.entries == [entry for entry in self.log if entry.index > self.floor]
        if self.snapshot is None:
            assert recovered.snapshot_meta is None
        else:
            meta, state = self.snapshot
            assert recovered.snapshot_meta == meta
            reader = self.storage.open_snapshot_reader(meta)
            chunks = []
            while chunk := reader.read_chunk():
                chunks.append(chunk)
            reader.close()
            assert b"".join(chunks) == state

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestStorageAgainstModel = StorageAgainstModel.TestCase
TestStorageAgainstModel.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
