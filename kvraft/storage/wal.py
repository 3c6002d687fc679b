"""The write-ahead log: the Raft log and the hard state in checksummed, segmented files.

Theory of operation
===================

Files. The log lives in one directory as *segments* named ``<seq:020d>.wal``, numbered without
gaps (compaction deletes the oldest, so the first number may be above 1). A segment is a
sequence of *frames*. Every write the log makes is one ``write`` call of one or more whole
frames, so the frame is the unit a crash can tear::

    frame   = header (40 bytes, little-endian) + payload + trailer "KVWE"
    header  = magic "KVW2" | payload length u32 | segment seq u64 | frame offset u64
              | settled offset u64 | payload CRC32 u32 | header CRC32 (of the 36 bytes before) u32
    payload = a msgpack array of records:
      [0, format version, segment seq, last index, seed]      START (first record of a segment)
      [1, first index, [[term, count], ...], kinds, [data]]   ENTRIES, consecutive indexes
      [2, term, voted_for, commit_index]                      HARD_STATE
      [3, index, term, kept]                                  SNAPSHOT (the log was replaced)

Both checksums start from the segment's *seed*, a random 32-bit number drawn when the segment
is created and recorded in its START record (the START frame itself uses seed 0). A frame copied
into a client's value - right segment, offset and layout - therefore does not verify: the client
cannot know the seed. The format version is 2; a segment of format 1 (magic "KVWL", one
checksum, no seed or trailer) is refused with a message saying so, as is any other version.

One batch (one Ready's writes: entries, then hard state) never spans frames. Batches queued
together (group commit) share one frame - several, in the same write, if they exceed
RECORD_PAYLOAD_BYTES_MAX - followed by at most one fdatasync.

Replay. Reading the records in order rebuilds the log:

- ENTRIES starting at index j first deletes every entry >= j (suffix truncation), then appends.
  The truncation is implied by the very record that carries the new entries, inside one
  checksummed frame: a crash leaves either both or neither, so an old suffix can never come
  back once its replacement was durable.
- SNAPSHOT records the §7 decision taken when a leader's snapshot was installed: with ``kept``
  the log held ``index`` with ``term`` and the entries after it survive; otherwise the whole log
  was discarded. Either way the log continues at index + 1. The decision is recorded rather
  than recomputed because compaction may have deleted the entries it was based on.
- START carries the log's last index when the segment was created, so replay can begin at any
  segment once older ones are compacted; the START frame also repeats the current hard state,
  so deleting old segments never loses it. A later segment's START must agree with the log
  replayed so far, which catches a missing or foreign segment.

Torn tail versus corruption
===========================

A frame is *acknowledged* once an fdatasync that covers it has returned (in relaxed mode: once
written). Each frame header records its *settled offset*: how far its segment was known to be
on stable storage when the frame was written. So a frame vouches for the frames before its
settled offset, and nothing vouches for the last synced frame but its own bytes. The rule:
what was acknowledged is never silently dropped; what was not may be dropped only where it
provably is a write that a crash cut short.

Recovery reads every segment front to back; the first frame at offset B that is incomplete,
fails a check (magic, header checksum, trailer, payload checksum) or does not belong at its
position is *bad*:

- In any segment but the last one, a bad frame is corruption: a segment is synced in full
  before the next one is created, so nothing in it can be a torn write.
- A frame whose header checksum is good but which does not belong there (another segment,
  another offset: a foreign or misnamed segment), or a checksummed frame whose records are
  malformed, is corruption anywhere: a crash writes no such thing.
- An all-zero rest of the last segment is free space (see Preallocation).
- Otherwise, in the last segment, the frame is a *torn write* only if it has the shape a write
  cut short leaves. Frames are only ever written over zeros (preallocated space, or space the
  file grows by), and a sector (SECTOR_BYTES, 512) that did not reach the disk reads as it was
  before: whole and zero, from the frame's first byte on. So the evidence is the file ending
  inside the frame, or a zero sector where a complete frame has a non-zero byte: the sector
  of the header's first byte (the magic) or of the payload's first byte (a msgpack array
  header), or - when the header's checksum is good, so its length can be trusted - the sector
  of the frame's last byte (the trailer, there for this purpose: a payload may end in zeros).
  A zero sector in the middle proves nothing (a value may be zeros). Anything else - a
  flipped bit, zeros over part of a sector, stray bytes where a frame would begin - is
  corruption, also in the last synced frame (a vote lost that way lets a node vote twice in a
  term).
- A torn write is still corruption if a frame after it records a settled offset beyond B:
  the torn bytes had been made durable before that frame was written. The search for such
  frames looks for the magic and takes only authentic headers (right segment and offset, the
  header checksum with the segment's seed, checked after the cheap fields); it skips the whole
  extent of a frame whose header is intact, the torn one included, so bytes inside a frame (a
  client's value) are never taken for frames, and it never checksums a payload: it is linear
  in the bytes after B. When the START frame itself is the bad one there is no seed yet, and
  the cheap fields alone decide (which can only turn a cut into a refusal).

A torn write is truncated (logged with file and offset), with everything after it: frames
written after B without an fsync in between can legitimately reach the disk before B does, and
none of them was acknowledged, or its successor would vouch for B. Corruption raises
`StorageCorruptionError` naming the file and offset; nothing is truncated.

What no format can tell apart without another durable write per commit: damage that is
exactly the shape of a torn write (the frame's first or last sector, or the whole frame,
reading as zeros) to the frames since the last settled offset that a later frame records -
normally just the last frame. A sector that reads back as zeros after an fdatasync returned is
a lost write by the device; it is taken as a torn one, as etcd does. A write torn so that
the frame's first and last sectors reached the disk but one in between did not is refused (the
safe side: a restart then needs the operator).

In relaxed mode (no fsync) a frame counts as settled once written, so mid-log damage is still
refused; a power loss in that mode may then lose acknowledged writes or leave a log that is
refused at open (on a file system that shows stale blocks after a crash, as ext4 with
data=writeback can, a torn write is not zeros). A process crash (page cache intact) is safe in
both modes.

Preallocation
=============

With fsync on, the active segment's file is grown ahead of its frames, PREALLOCATION_BYTES at
a time and never past ``segment_bytes_max``, by ``posix_fallocate``. The fdatasync after a
write then finds the file's size and blocks already on disk and has only the data to flush:
with three nodes sharing one disk, a sync took about a quarter less time (BENCHMARKS.md).

The space after the last frame reads as zeros, so recovery takes an all-zero remainder of the
last segment as free space: kept, not reported as a torn tail, and the next frame is written
where the frames end. A write torn inside preallocated space leaves no shorter file, only the
sectors that did not reach the disk still zero: that is the evidence above. Anything else after
the last valid frame is judged as above (a torn tail that is cut takes its free space with it;
the next write allocates again, over zeros). Before a
full segment is closed for the next one, its file is cut back to its frames and synced, so
only the last segment ever has free space; in any other segment, zeros are damage. When the
disk has too little space left to allocate ahead (ENOSPC, EDQUOT), the WAL writes without (a
warning, once) and fails only when a write itself does not fit; any other error from the
allocation fails it like a failed write.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise, repeat
from pathlib import Path
from typing import Any, NoReturn, cast

import msgpack

from kvraft.raft.codec import NODE_ID_MAX
from kvraft.raft.messages import Entry, EntryKind, HardState
from kvraft.storage.api import StorageCorruptionError, StorageError, StorageFailedError
from kvraft.storage.fileops import FileOps, make_directories, read_whole_file, write_all

__all__ = [
    "FRAME_HEADER_BYTES",
    "FRAME_MAGIC",
    "FRAME_OVERHEAD_BYTES",
    "FRAME_TRAILER",
    "INDEX_MAX",
    "PREALLOCATION_BYTES",
    "RECORD_PAYLOAD_BYTES_MAX",
    "SECTOR_BYTES",
    "SEGMENT_BYTES_MAX_DEFAULT",
    "SEGMENT_BYTES_MAX_HIGHEST",
    "SEGMENT_BYTES_MAX_LOWEST",
    "SEGMENT_FILE_BYTES_MAX",
    "TERM_MAX",
    "WAL_FORMAT_VERSION",
    "LogState",
    "WalBatch",
    "WalRecovery",
    "WriteAheadLog",
    "prepare_batch",
    "segment_file_name",
]

logger = logging.getLogger(__name__)

WAL_FORMAT_VERSION = 2
"""The version in every START record; any other value is refused. Version 1 (frames with one
checksum and the magic "KVWL") is refused by its magic, with a message saying so."""

FRAME_MAGIC = b"KVW2"
"""The first bytes of every frame: what the search for later frames looks for."""

_FORMAT_1_MAGIC = b"KVWL"
"""The magic of format 1's frames: a segment starting with it was written by an older build."""

_HEADER_FIELDS = struct.Struct("<4sIQQQI")
_HEADER_CRC = struct.Struct("<I")
FRAME_HEADER_BYTES = _HEADER_FIELDS.size + _HEADER_CRC.size
"""Size of a frame header (40 bytes)."""

FRAME_TRAILER = b"KVWE"
"""The last bytes of every frame. Not zero, so the sector holding a frame's end can never
legitimately read as all zeros: if it does, that sector did not reach the disk."""

FRAME_OVERHEAD_BYTES = FRAME_HEADER_BYTES + len(FRAME_TRAILER)
"""What a frame adds to its payload (44 bytes)."""

SECTOR_BYTES = 512
"""The smallest unit a write can tear at: each aligned sector of a file holds either what was
written to it or what it held before (zeros, in a preallocated segment), never a mix."""

_START_FRAME_SEED = 0
"""The checksum seed of START frames: the segment's own seed is inside that frame."""

RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024
"""The largest frame payload. A header claiming more is corruption; one batch that would
encode to more is refused (ValueError) - the core's own batch limits keep Readys far below."""

SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
"""A new segment is started once a write would take the current one past this size."""

PREALLOCATION_BYTES = 4 * 1024 * 1024
"""How far ahead of its frames the active segment's file is allocated when fsync is on (see
Preallocation); the most disk space the free tail takes."""

SEGMENT_BYTES_MAX_LOWEST = 4 * 1024
"""The smallest accepted `segment_bytes_max`: smaller would make a segment per frame."""

SEGMENT_BYTES_MAX_HIGHEST = 1024 * 1024 * 1024
"""The largest accepted `segment_bytes_max`: recovery reads a whole segment into memory."""

SEGMENT_FILE_BYTES_MAX = SEGMENT_BYTES_MAX_HIGHEST + FRAME_OVERHEAD_BYTES + RECORD_PAYLOAD_BYTES_MAX
"""No segment we write can be larger (the limit plus one oversized frame); a larger file is
refused as corruption before it is read."""

INDEX_MAX = 2**63 - 1
"""The largest log index accepted (fits the signed 64-bit integers other tools expect)."""

TERM_MAX = 2**63 - 1
"""The largest term accepted."""

_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")

_START = 0
_ENTRIES = 1
_HARD_STATE = 2
_SNAPSHOT = 3

_KIND_BY_CODE = {kind.value: kind for kind in EntryKind}
_KIND_CODES = bytes(sorted(_KIND_BY_CODE))
_NORMAL = EntryKind.NORMAL
_ENTRY_OVERHEAD_BYTES = 16
"""Rough encoded size of an entry besides its data, for the batch size estimate."""

_ARRAY_HEADER_BYTES_MAX = 5
"""The largest msgpack array header: what a frame's payload holds besides its records."""


def _entry_builder() -> Callable[[int, int, EntryKind, bytes], Entry]:
    """A faster `Entry(term, index, kind, data)` for replay, where a million entries may be
    built: it fills a plain draft with the same slots and turns it into an Entry (`__class__`
    may change between classes of one layout; Python checks that), skipping the frozen
    dataclass's `__init__` and its `object.__setattr__` per field (0.35 -> 0.21 s per million;
    setting the slots through their descriptors was in between). Used only while Entry is
    exactly those four fields with no `__post_init__`; otherwise the constructor itself."""
    names = tuple(field.name for field in dataclasses.fields(Entry))
    if names != ("term", "index", "kind", "data") or hasattr(Entry, "__post_init__"):
        return Entry
    draft_class = type("_EntryDraft", (), {"__slots__": names})
    try:
        draft_class().__class__ = Entry
    except TypeError:
        return Entry

    def build(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
        draft: Any = draft_class()
        draft.term = term
        draft.index = index
        draft.kind = kind
        draft.data = data
        draft.__class__ = Entry
        return cast(Entry, draft)

    return build


_build_entry = _entry_builder()


def segment_file_name(seq: int) -> str:
    """The file name of segment number `seq`."""
    return f"{seq:020d}.wal"


class _BadRecord(Exception):
    """A checksummed frame whose content is malformed; becomes StorageCorruptionError."""


# --- the shape of a log ------------------------------------------------------------------


class LogState:
    """The positions and terms of a log as runs of equal terms, optionally with its entries.

    Recovery, the live WAL, the daemon-side mirror in `DiskStorage` and `MemoryStorage` all
    apply the same operations through this class, so they cannot disagree about where the log
    ends or what a truncation or an installed snapshot does.

    Fields:
        first_index: the first index the log holds (last_index + 1 when it is empty).
        last_index: the last index (the position after a snapshot when it is empty).
        entries: the entries first_index..last_index, or None when only the shape is kept.
    """

    __slots__ = ("_run_starts", "_run_terms", "entries", "first_index", "last_index")

    def __init__(self, *, keep_entries: bool = False) -> None:
        self.first_index = 1
        self.last_index = 0
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []
        self.entries: list[Entry] | None = [] if keep_entries else None

    def copy(self) -> LogState:
        """A copy of the shape, without entries."""
        other = LogState()
        other.first_index = self.first_index
        other.last_index = self.last_index
        other._run_starts = list(self._run_starts)
        other._run_terms = list(self._run_terms)
        return other

    def term_at(self, index: int) -> int | None:
        """The term of entry `index`, or None if the log does not hold it."""
        if not self.first_index <= index <= self.last_index:
            return None
        return self._run_terms[bisect_right(self._run_starts, index) - 1]

    def check_batch(self, batch: WalBatch, floor_index: int = 0) -> None:
        """Raise ValueError unless `batch` may be appended now (see `append`)."""
        first = batch.first_index
        if not batch.term_runs:
            return
        if first <= floor_index:
            raise ValueError(
                f"entry {first} is covered by the snapshot at {floor_index}: entries a snapshot "
                "covers are committed and never rewritten"
            )
        if first > self.last_index + 1:
            raise ValueError(f"entry {first} would leave a gap after entry {self.last_index}")
        previous_term = self.term_at(first - 1)
        if previous_term is not None and batch.term_runs[0][0] < previous_term:
            raise ValueError(
                f"entry {first} has term {batch.term_runs[0][0]}, below the term {previous_term} "
                "of the entry before it"
            )

    def apply_batch(self, batch: WalBatch) -> None:
        """Apply a batch that passed `check_batch`."""
        if batch.term_runs:
            entries = list(batch.entries) if self.entries is not None else None
            self.append(batch.first_index, batch.term_runs, entries)

    def append(
        self,
        first_index: int,
        term_runs: Sequence[tuple[int, int]],
        entries: list[Entry] | None = None,
    ) -> None:
        """Delete the entries >= first_index and append runs of (term, count) there (and
        `entries`, when this log keeps entries)."""
        if first_index > self.last_index + 1:
            raise ValueError(f"entry {first_index} would leave a gap after {self.last_index}")
        if first_index < self.first_index:
            # Truncating below what the log holds (its prefix was compacted): start afresh.
            self._run_starts.clear()
            self._run_terms.clear()
            self.first_index = first_index
            if self.entries is not None:
                self.entries.clear()
        else:
            cut = bisect_left(self._run_starts, first_index)
            del self._run_starts[cut:]
            del self._run_terms[cut:]
            if self.entries is not None:
                del self.entries[first_index - self.first_index :]
        last = first_index - 1
        for term, count in term_runs:
            if not self._run_terms or self._run_terms[-1] != term:
                self._run_starts.append(last + 1)
                self._run_terms.append(term)
            last += count
        self.last_index = last
        if self.entries is not None and entries is not None:
            if self.entries:
                self.entries.extend(entries)
            else:
                self.entries = entries  # replay hands over a fresh list: no copy

    def reset(self, index: int, term: int) -> bool:
        """Install a snapshot at (index, term) with §7's rule; returns whether the entries
        after `index` were kept (the log held `index` with `term`)."""
        kept = self.term_at(index) == term
        self.apply_reset(index, kept=kept)
        return kept

    def apply_reset(self, index: int, *, kept: bool) -> None:
        """Apply a recorded §7 decision: drop the entries through `index` (kept) or all."""
        if kept:
            self.drop_through(index)
            return
        self._run_starts.clear()
        self._run_terms.clear()
        self.first_index = index + 1
        self.last_index = index
        if self.entries is not None:
            self.entries.clear()

    def drop_through(self, index: int) -> None:
        """Forget the entries up to `index` (covered by a snapshot); the rest stays."""
        if index < self.first_index:
            return
        if index >= self.last_index:
            self.apply_reset(index, kept=False)
            return
        keep_from = index + 1
        run = bisect_right(self._run_starts, keep_from) - 1
        self._run_starts = [keep_from, *self._run_starts[run + 1 :]]
        self._run_terms = self._run_terms[run:]
        if self.entries is not None:
            del self.entries[: keep_from - self.first_index]
        self.first_index = keep_from

    def start_at(self, last_index: int) -> None:
        """Position an empty log after `last_index` (replay starting at a compacted segment)."""
        self.apply_reset(last_index, kept=False)


# --- batches --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalBatch:
    """One Ready's log writes, validated and encoded by `prepare_batch`.

    Fields:
        entries: the entries to append (empty: hard state only).
        hard_state: the hard state to record after them, or None.
        first_index, last_index: their index range (0, 0 without entries).
        term_runs: their terms as (term, count) runs, terms rising.
        encoded: the batch's records (entries first, then the hard state), msgpack-encoded
            one after the other: what goes into a frame's payload.
        record_count: how many records `encoded` holds (0, 1 or 2).
    """

    entries: tuple[Entry, ...]
    hard_state: HardState | None
    first_index: int
    last_index: int
    term_runs: tuple[tuple[int, int], ...]
    encoded: bytes
    record_count: int


def _hard_state_record(hard_state: HardState) -> list[Any]:
    term, voted_for, commit_index = hard_state.term, hard_state.voted_for, hard_state.commit_index
    if not (
        type(term) is int
        and type(voted_for) is int
        and type(commit_index) is int
        and 0 <= term <= TERM_MAX
        and 0 <= voted_for <= NODE_ID_MAX
        and 0 <= commit_index <= INDEX_MAX
    ):
        raise ValueError(f"hard state out of range: {hard_state!r}")
    return [_HARD_STATE, term, voted_for, commit_index]


def prepare_batch(entries: Sequence[Entry], hard_state: HardState | None) -> WalBatch:
    """Validate one batch on its own (consecutive indexes, rising terms, known kinds, bytes
    data, ranges) and encode its records; ValueError on anything wrong. Where the batch may go
    in the log is checked separately (`LogState.check_batch`)."""
    records: list[list[Any]] = []
    term_runs: list[tuple[int, int]] = []
    estimated_bytes = 0
    first_index = last_index = 0
    if entries:
        first_index = entries[0].index
        if type(first_index) is not int or not 1 <= first_index <= INDEX_MAX - len(entries) + 1:
            raise ValueError(f"entry index {first_index!r} is out of range")
        run_term = 0
        run_count = 0
        expected_index = first_index
        data_list: list[bytes] = []
        kind_codes = bytearray()
        for entry in entries:
            if not isinstance(entry, Entry):
                raise ValueError(f"not an Entry: {entry!r}")
            if entry.index != expected_index:
                raise ValueError(
                    f"entries are not consecutive: {entry.index} follows {expected_index - 1}"
                )
            expected_index += 1
            term = entry.term
            if term != run_term:
                if type(term) is not int or not run_term < term <= TERM_MAX:
                    raise ValueError(f"entry {entry.index} has term {term!r}, after {run_term}")
                if run_count:
                    term_runs.append((run_term, run_count))
                run_term = term
                run_count = 0
            run_count += 1
            data = entry.data
            if type(data) is not bytes:
                raise ValueError(f"entry {entry.index}: data must be bytes, not {type(data)}")
            if entry.kind not in _KIND_BY_CODE:
                raise ValueError(f"entry {entry.index}: unknown kind {entry.kind!r}")
            data_list.append(data)
            kind_codes.append(entry.kind)
            estimated_bytes += len(data) + _ENTRY_OVERHEAD_BYTES
        term_runs.append((run_term, run_count))
        last_index = expected_index - 1
        records.append(
            [_ENTRIES, first_index, [list(run) for run in term_runs], bytes(kind_codes), data_list]
        )
    if hard_state is not None:
        if not isinstance(hard_state, HardState):
            raise ValueError(f"not a HardState: {hard_state!r}")
        records.append(_hard_state_record(hard_state))
        estimated_bytes += 32
    if estimated_bytes > RECORD_PAYLOAD_BYTES_MAX:  # before encoding it
        raise ValueError(
            f"the batch would encode to about {estimated_bytes} bytes, more than one frame may "
            f"hold ({RECORD_PAYLOAD_BYTES_MAX}); split it"
        )
    # Encoded here, on the caller's thread, so the writer thread only frames the bytes. A
    # packer of its own: batches may be prepared on several threads.
    pack = msgpack.Packer(use_bin_type=True).pack
    encoded = b"".join([pack(record) for record in records])
    if len(encoded) > RECORD_PAYLOAD_BYTES_MAX - _ARRAY_HEADER_BYTES_MAX:
        raise ValueError(
            f"the batch encodes to {len(encoded)} bytes, more than one frame may hold "
            f"({RECORD_PAYLOAD_BYTES_MAX}); split it"
        )
    return WalBatch(
        entries=tuple(entries),
        hard_state=hard_state,
        first_index=first_index,
        last_index=last_index,
        term_runs=tuple(term_runs),
        encoded=encoded,
        record_count=len(records),
    )


# --- frames ---------------------------------------------------------------------------------


def _encode_frame(payload: bytes, seq: int, offset: int, settled_offset: int, seed: int) -> bytes:
    fields = _HEADER_FIELDS.pack(
        FRAME_MAGIC, len(payload), seq, offset, settled_offset, zlib.crc32(payload, seed)
    )
    header_checksum = _HEADER_CRC.pack(zlib.crc32(fields, seed))
    return b"".join((fields, header_checksum, payload, FRAME_TRAILER))


def _new_segment_seed() -> int:
    """A random checksum seed for a new segment's frames (never the START frames' seed)."""
    return int.from_bytes(os.urandom(4), "little") or 1


@dataclass(frozen=True, slots=True)
class _BadFrame:
    """Why the bytes at an offset are not a valid frame."""

    reason: str
    frame_end: int | None
    """Where the frame ends by its header, if the header itself is intact (its checksum is
    good, so its length can be trusted); None if it is not."""
    never_torn: bool = False
    """A whole, checksummed header at the wrong place (or a segment of another format): no
    crash writes that, so it is corruption wherever it is."""


def _check_frame(
    data: bytes, view: memoryview, offset: int, seq: int, seed: int
) -> int | _BadFrame:
    """The end offset of the valid frame at `offset` of segment `seq` (checksums seeded with
    `seed`), or why it is not one. The header's checksum is checked before the payload's, so
    bytes that merely start like a header cost a header's worth of checksum, not a payload's."""
    if offset == 0 and data.startswith(_FORMAT_1_MAGIC):
        return _BadFrame(
            f"the segment is in WAL format 1, written by an older kvraft; this build reads "
            f"format {WAL_FORMAT_VERSION} only",
            None,
            never_torn=True,
        )
    if len(data) - offset < FRAME_HEADER_BYTES:
        return _BadFrame("incomplete frame header", None)
    magic, length, frame_seq, frame_offset, settled, payload_checksum = _HEADER_FIELDS.unpack_from(
        data, offset
    )
    if magic != FRAME_MAGIC:
        return _BadFrame("no frame starts here (bad magic)", None)
    if length > RECORD_PAYLOAD_BYTES_MAX:
        return _BadFrame(
            f"frame header claims {length} payload bytes, more than {RECORD_PAYLOAD_BYTES_MAX}",
            None,
        )
    (header_checksum,) = _HEADER_CRC.unpack_from(data, offset + _HEADER_FIELDS.size)
    if zlib.crc32(view[offset : offset + _HEADER_FIELDS.size], seed) != header_checksum:
        return _BadFrame("frame header checksum mismatch", None)
    if frame_seq != seq or frame_offset != offset or settled > offset:
        return _BadFrame(
            f"a valid frame of segment {frame_seq} written for offset {frame_offset} "
            f"(settled {settled}) is at this position",
            None,
            never_torn=True,
        )
    payload_start = offset + FRAME_HEADER_BYTES
    payload_end: int = payload_start + length
    end = payload_end + len(FRAME_TRAILER)
    if end > len(data):
        return _BadFrame("frame extends past the end of the file", end)
    # The trailer first: a write cut short usually lacks it, and then the payload's checksum
    # (a megabyte, for a large value) need not be computed to know the frame is bad.
    if data[payload_end:end] != FRAME_TRAILER:
        return _BadFrame("frame trailer damaged or missing", end)
    if zlib.crc32(view[payload_start:payload_end], seed) != payload_checksum:
        return _BadFrame("frame checksum mismatch", end)
    return end


def _torn_write_shape(data: bytes, bad_offset: int, frame_end: int | None) -> str | None:
    """How the bad frame at `bad_offset` of the last segment shows that the write which put it
    there was cut short, or None if it does not: then its damage is corruption.

    A write cut short leaves either a file that ends inside the frame, or sectors that read as
    they were before the write - zeros, since frames are only ever written over zeros (the
    preallocated space, or space the file grew by). So a sector that a complete frame would
    fill with a non-zero byte, read back as zeros from the frame's first byte on, is that
    evidence: the sector holding its header's first byte (the magic) or its payload's first
    byte (a msgpack array header), or - when the header is intact - the sector holding the
    frame's last byte (FRAME_TRAILER). A zero sector elsewhere proves nothing (a value may be
    zeros), and any other damage (a flipped bit, stray bytes) is no crash's doing.
    """
    size = len(data)
    if frame_end is not None:
        if frame_end > size:
            return "the file ends inside the frame"
        evidence = [bad_offset + FRAME_HEADER_BYTES, frame_end - 1]
    else:
        if size - bad_offset <= FRAME_HEADER_BYTES:  # every frame has a payload byte
            return "the file ends inside the frame"
        evidence = [bad_offset, bad_offset + FRAME_HEADER_BYTES]
    for position in evidence:
        sector_start = position - position % SECTOR_BYTES
        first = max(sector_start, bad_offset)
        last = min(sector_start + SECTOR_BYTES, size)
        if data.count(0, first, last) == last - first:
            return f"the sector at offset {sector_start} never reached the disk (it reads as zeros)"
    return None


def _vouching_frame(
    data: bytes, view: memoryview, search_start: int, bad_offset: int, seq: int, seed: int | None
) -> int | None:
    """The offset of a frame from `search_start` on whose header records that `bad_offset` was
    already on stable storage when it was written, or None.

    Only authentic headers count: the right segment and offset, and a header checksum seeded
    with the segment's secret seed, which a frame forged inside a client's value cannot match.
    Candidates are found by a regular expression for the magic followed by the segment's
    number, so bytes that merely contain the magic (a value made of it) cost no Python code;
    a candidate is checked for its cheap fields before its checksum, and the payload of an
    authentic frame is skipped (no frame header lives inside another frame), so the search is
    linear in the bytes after the damage. Without a seed (the START frame itself is the bad
    one) the cheap fields alone decide, which can only turn a cut into a refusal.
    """
    size = len(data)
    # The magic is consumed and the rest only looked at: the magic cannot overlap itself, so
    # no header starting inside a match is skipped.
    candidates = re.compile(
        re.escape(FRAME_MAGIC) + b"(?=[\\s\\S]{4}" + re.escape(struct.pack("<Q", seq)) + b")"
    )
    match = candidates.search(data, search_start)
    while match is not None:
        position = match.start()
        if size - position >= FRAME_HEADER_BYTES:
            _, length, frame_seq, frame_offset, settled, _ = _HEADER_FIELDS.unpack_from(
                data, position
            )
            authentic = (
                frame_seq == seq
                and frame_offset == position
                and settled <= position
                and length <= RECORD_PAYLOAD_BYTES_MAX
                and (
                    seed is None
                    or zlib.crc32(view[position : position + _HEADER_FIELDS.size], seed)
                    == _HEADER_CRC.unpack_from(data, position + _HEADER_FIELDS.size)[0]
                )
            )
            if authentic:
                if settled > bad_offset:
                    return position
                frame_end = position + FRAME_HEADER_BYTES + length + len(FRAME_TRAILER)
                match = candidates.search(data, frame_end)
                continue
        match = candidates.search(data, position + 1)
    return None


# --- recovery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalRecovery:
    """What replaying the WAL found.

    Fields:
        hard_state: the last hard state recorded (all zero if none).
        log: the replayed log, with its entries.
        started: whether any segment was replayed (False: the WAL was empty or new).
        torn_tail: (file, offset) where a torn tail was cut off, or None.
    """

    hard_state: HardState
    log: LogState
    started: bool
    torn_tail: tuple[Path, int] | None


@dataclass(frozen=True, slots=True)
class _Payload:
    """One frame's payload to write, with what a segment started just before it must say."""

    data: bytes
    index_max: int
    """The highest entry or snapshot index its records hold."""
    last_index_before: int
    """The log's last index before these records (for a START record)."""
    hard_state_before: HardState
    """The hard state before these records (repeated in a START frame)."""


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    index_max: int
    """The highest entry or snapshot index recorded in the segment (0: none)."""
    seed: int
    """The checksum seed of its frames after the START frame (recorded in START)."""


class _Replay:
    """Applies the records of the segments, in order, to a log."""

    def __init__(self) -> None:
        self.log = LogState(keep_entries=True)
        self.hard_state = HardState()
        self.started = False
        self.index_max = 0
        self.segment_seed = 0
        """The seed of the segment being replayed, once its START record was read."""

    def frame(self, payload: memoryview, first_in_segment: bool, seq: int) -> None:
        try:
            records = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
        except Exception as error:  # msgpack raises many types on malformed input
            raise _BadRecord(f"checksummed frame is not valid msgpack ({error})") from None
        if type(records) is not list or not records:
            raise _BadRecord("frame holds no records")
        for position, record in enumerate(records):
            if type(record) is not list or not record:
                raise _BadRecord("record is not a non-empty array")
            code = record[0]
            if first_in_segment and position == 0:
                if code != _START:
                    raise _BadRecord("segment does not begin with a START record")
                self._start(record, seq)
            elif code == _ENTRIES:
                self._entries(record)
            elif code == _HARD_STATE:
                self._hard_state(record)
            elif code == _SNAPSHOT:
                self._snapshot(record)
            else:
                raise _BadRecord(f"unexpected record type {code!r}")

    def _start(self, record: list[Any], seq: int) -> None:
        if len(record) < 2 or record[1] != WAL_FORMAT_VERSION:
            version = record[1] if len(record) > 1 else None
            raise _BadRecord(f"unsupported WAL format version {version!r}")
        if len(record) != 5:
            raise _BadRecord("malformed START record")
        _, _, record_seq, last_index, seed = record
        if record_seq != seq:
            raise _BadRecord(f"START record names segment {record_seq!r}, not {seq}")
        if type(last_index) is not int or not 0 <= last_index <= INDEX_MAX:
            raise _BadRecord(f"START record has last index {last_index!r}")
        if type(seed) is not int or not 0 < seed < 2**32:
            raise _BadRecord(f"START record has checksum seed {seed!r}")
        self.segment_seed = seed
        if not self.started:
            self.log.start_at(last_index)
            self.started = True
        elif last_index != self.log.last_index:
            raise _BadRecord(
                f"segment starts after index {last_index} but the segments before it end at "
                f"{self.log.last_index} (a segment is missing or foreign)"
            )

    def _entries(self, record: list[Any]) -> None:
        if len(record) != 5:
            raise _BadRecord("malformed ENTRIES record")
        _, first, runs, kinds, data_list = record
        if type(first) is not int or not 1 <= first <= INDEX_MAX:
            raise _BadRecord(f"ENTRIES record starts at index {first!r}")
        if type(data_list) is not list or type(kinds) is not bytes or type(runs) is not list:
            raise _BadRecord("malformed ENTRIES record")
        count = len(data_list)
        if count == 0 or len(kinds) != count or not runs:
            raise _BadRecord("ENTRIES record with inconsistent counts")
        term_runs: list[tuple[int, int]] = []
        total = 0
        previous_term = 0
        for run in runs:
            if type(run) is not list or len(run) != 2:
                raise _BadRecord("malformed term run")
            term, run_count = run
            if type(term) is not int or type(run_count) is not int:
                raise _BadRecord("malformed term run")
            if not previous_term < term <= TERM_MAX or run_count < 1:
                raise _BadRecord(f"term run ({term}, {run_count}) out of order or range")
            term_runs.append((term, run_count))
            total += run_count
            previous_term = term
        last = first + count - 1
        if total != count or last > INDEX_MAX:
            raise _BadRecord("ENTRIES record with inconsistent counts")
        if kinds.translate(None, _KIND_CODES):
            raise _BadRecord("ENTRIES record with an unknown entry kind")
        if set(map(type, data_list)) != {bytes}:
            raise _BadRecord("ENTRIES record with data that is not bytes")
        if not self.started:
            raise _BadRecord("ENTRIES record before any START record")
        if first > self.log.last_index + 1:
            raise _BadRecord(
                f"entries from {first} leave a gap after the last entry {self.log.last_index}"
            )
        terms: Iterable[int]
        if len(term_runs) == 1:
            terms = repeat(term_runs[0][0], count)
        else:
            terms = chain.from_iterable(repeat(term, n) for term, n in term_runs)
        kind_objects: Iterable[EntryKind]
        if kinds.count(0) == count:
            kind_objects = repeat(_NORMAL, count)
        else:
            kind_objects = map(_KIND_BY_CODE.__getitem__, kinds)
        entries = list(map(_build_entry, terms, range(first, last + 1), kind_objects, data_list))
        self.log.append(first, term_runs, entries)
        self.index_max = max(self.index_max, last)

    def _hard_state(self, record: list[Any]) -> None:
        if len(record) != 4:
            raise _BadRecord("malformed HARD_STATE record")
        _, term, voted_for, commit_index = record
        if not (
            type(term) is int
            and type(voted_for) is int
            and type(commit_index) is int
            and 0 <= term <= TERM_MAX
            and 0 <= voted_for <= NODE_ID_MAX
            and 0 <= commit_index <= INDEX_MAX
        ):
            raise _BadRecord("HARD_STATE record out of range")
        self.hard_state = HardState(term=term, voted_for=voted_for, commit_index=commit_index)

    def _snapshot(self, record: list[Any]) -> None:
        if len(record) != 4:
            raise _BadRecord("malformed SNAPSHOT record")
        _, index, term, kept = record
        if type(index) is not int or type(term) is not int or type(kept) is not bool:
            raise _BadRecord("malformed SNAPSHOT record")
        if not (1 <= index <= INDEX_MAX and 1 <= term <= TERM_MAX):
            raise _BadRecord("SNAPSHOT record out of range")
        if kept:
            known_term = self.log.term_at(index)
            if index > self.log.last_index or known_term not in (None, term):
                raise _BadRecord("SNAPSHOT record keeps entries the log does not hold")
        self.log.apply_reset(index, kept=kept)
        self.index_max = max(self.index_max, index)


def _list_segments(file_ops: FileOps, directory: Path) -> list[tuple[int, Path]]:
    segments = []
    for name in file_ops.list_directory(directory):
        match = _SEGMENT_NAME.match(name)
        if match is None:
            logger.warning("%s: ignoring a file that is not a WAL segment", directory / name)
            continue
        seq = int(match.group(1))
        if seq == 0:
            raise StorageCorruptionError(directory / name, 0, "segment number 0 is never used")
        segments.append((seq, directory / name))
    segments.sort()
    for (seq, _), (next_seq, next_path) in pairwise(segments):
        if next_seq != seq + 1:
            raise StorageCorruptionError(
                next_path, 0, f"segments {seq + 1}..{next_seq - 1} are missing before it"
            )
    return segments


# --- the log --------------------------------------------------------------------------------


class WriteAheadLog:
    """The synchronous WAL over one directory; see the module docstring.

    Not thread-safe: one thread (the storage writer thread, or a test) drives it. An `OSError`
    from any file operation puts it in a failed state: that call and every later one raise
    `StorageFailedError` (chained to the first error), and nothing more is written.
    """

    def __init__(
        self,
        directory: Path,
        file_ops: FileOps,
        *,
        fsync: bool,
        segment_bytes_max: int,
        segments: list[_Segment],
        log: LogState,
        hard_state: HardState,
    ) -> None:
        self._directory = directory
        self._file_ops = file_ops
        self._fsync = fsync
        self._segment_bytes_max = segment_bytes_max
        self._segments = segments
        self._log = log
        self._hard_state = hard_state
        self._fd = -1
        self._size = 0
        """Where the active segment's frames end: the next frame's offset."""
        self._allocated = 0
        """The active segment's file size; beyond `_size` it is preallocated free space."""
        self._preallocation_refused = False
        """Whether a full disk refused a preallocation (logged once)."""
        self._settled = 0
        self._has_frames = False
        self._failure: BaseException | None = None
        self._closed = False
        self._packer = msgpack.Packer(use_bin_type=True)

    # -- opening --

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        file_ops: FileOps | None = None,
        fsync: bool = True,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
    ) -> tuple[WriteAheadLog, WalRecovery]:
        """Recover the log in `directory` (created with its parents if missing) and open it
        for appending.

        Raises `StorageCorruptionError` for damage a crash cannot explain, and
        `StorageFailedError` if the file system fails while recovering.
        """
        if not SEGMENT_BYTES_MAX_LOWEST <= segment_bytes_max <= SEGMENT_BYTES_MAX_HIGHEST:
            raise ValueError(
                f"segment_bytes_max must be in {SEGMENT_BYTES_MAX_LOWEST}.."
                f"{SEGMENT_BYTES_MAX_HIGHEST}, not {segment_bytes_max}"
            )
        file_ops = file_ops or FileOps()
        try:
            return cls._open(directory, file_ops, fsync, segment_bytes_max)
        except OSError as error:
            raise StorageFailedError(f"{directory}: recovering the WAL failed: {error}") from error

    @classmethod
    def _open(
        cls, directory: Path, file_ops: FileOps, fsync: bool, segment_bytes_max: int
    ) -> tuple[WriteAheadLog, WalRecovery]:
        make_directories(file_ops, directory, sync=fsync)
        found = _list_segments(file_ops, directory)
        replay = _Replay()
        segments: list[_Segment] = []
        torn_tail: tuple[Path, int] | None = None
        active_size = active_allocated = 0
        active_first_frame_end = 0
        for position, (seq, path) in enumerate(found):
            is_last = position == len(found) - 1
            replay.index_max = 0
            replay.segment_seed = 0
            valid_end, first_frame_end, file_size, free_tail = cls._replay_segment(
                replay, file_ops, path, seq, is_last
            )
            if valid_end < file_size and not free_tail:
                torn_tail = (path, valid_end)
                cls._cut_torn_tail(file_ops, path, valid_end, file_size, fsync)
                file_size = valid_end
            if valid_end == 0:
                # Only the last segment gets here: it was being created when the node stopped.
                file_ops.unlink(path)
                if fsync:
                    file_ops.sync_directory(directory)
                continue
            segments.append(_Segment(seq, path, replay.index_max, replay.segment_seed))
            active_size = valid_end
            active_allocated = file_size
            active_first_frame_end = first_frame_end
        log = replay.log
        recovery = WalRecovery(
            hard_state=replay.hard_state, log=log, started=replay.started, torn_tail=torn_tail
        )
        wal = cls(
            directory,
            file_ops,
            fsync=fsync,
            segment_bytes_max=segment_bytes_max,
            segments=segments,
            log=log.copy(),
            hard_state=replay.hard_state,
        )
        if segments:
            wal._fd = file_ops.open(segments[-1].path, os.O_WRONLY)
            file_ops.seek(wal._fd, active_size)
            wal._size = active_size
            wal._allocated = active_allocated
            wal._has_frames = active_size > active_first_frame_end
            if fsync:
                # What the last process wrote may still sit in the page cache; it is reported
                # as the recovered log, so it must be durable before anyone acts on it.
                file_ops.sync_data(wal._fd)
            wal._settled = active_size
        else:
            wal._create_segment(found[-1][0] if found else 1, log.last_index, replay.hard_state)
        return wal, recovery

    @staticmethod
    def _replay_segment(
        replay: _Replay, file_ops: FileOps, path: Path, seq: int, is_last: bool
    ) -> tuple[int, int, int, bool]:
        """Replay one segment; (end of its valid frames, end of its first frame, file size,
        whether all bytes after the valid frames are preallocated free space)."""
        try:
            data = read_whole_file(file_ops, path, SEGMENT_FILE_BYTES_MAX)
        except ValueError as error:
            raise StorageCorruptionError(path, 0, str(error)) from None
        view = memoryview(data)
        size = len(data)
        offset = 0
        first_frame_end = 0
        bad = _BadFrame("", None)
        while offset < size:
            seed = replay.segment_seed if offset else _START_FRAME_SEED
            checked = _check_frame(data, view, offset, seq, seed)
            if isinstance(checked, _BadFrame):
                bad = checked
                break
            try:
                replay.frame(
                    view[offset + FRAME_HEADER_BYTES : checked - len(FRAME_TRAILER)],
                    offset == 0,
                    seq,
                )
            except _BadRecord as error:
                raise StorageCorruptionError(path, offset, str(error)) from None
            if offset == 0:
                first_frame_end = checked
            offset = checked
        if offset == size:
            if size == 0 and not is_last:
                raise StorageCorruptionError(path, 0, "empty segment before the last one")
            return size, first_frame_end, size, False
        if bad.never_torn:
            raise StorageCorruptionError(path, offset, bad.reason)
        if is_last and data.count(0, offset) == size - offset:
            return offset, first_frame_end, size, True
        if not is_last:
            raise StorageCorruptionError(
                path,
                offset,
                f"{bad.reason}, in a segment that is not the last one (it was synced in full "
                "before the next was created, so this is not a torn write)",
            )
        shape = _torn_write_shape(data, offset, bad.frame_end)
        if shape is None:
            raise StorageCorruptionError(
                path,
                offset,
                f"{bad.reason}, and the damage is not what a write cut short leaves (the file "
                "ending inside the frame, or its first or last sector reading as zeros), so "
                "the frame may have been acknowledged as durable",
            )
        # The frames after a torn write may be dropped with it only if none of them records
        # that the torn bytes had already been made durable. A frame with an intact header
        # is skipped whole: the bytes inside it (a client's value) are never taken for frames.
        search_start = offset + 1 if bad.frame_end is None else bad.frame_end
        search_seed = replay.segment_seed if offset else None
        proof = _vouching_frame(data, view, search_start, offset, seq, search_seed)
        if proof is not None:
            raise StorageCorruptionError(
                path,
                offset,
                f"{bad.reason} ({shape}), yet the frame at offset {proof} records that these "
                "bytes were already on stable storage (damage, not a torn write)",
            )
        return offset, first_frame_end, size, False

    @staticmethod
    def _cut_torn_tail(
        file_ops: FileOps, path: Path, valid_end: int, file_size: int, fsync: bool
    ) -> None:
        logger.warning(
            "%s: torn write at offset %d; cutting the last %d bytes (a write cut short by a "
            "crash, and nothing after it records that it was durable)",
            path,
            valid_end,
            file_size - valid_end,
        )
        fd = file_ops.open(path, os.O_WRONLY)
        try:
            file_ops.truncate(fd, valid_end)
            if fsync:
                file_ops.sync_data(fd)
        finally:
            file_ops.close(fd)

    # -- reading the state --

    @property
    def log(self) -> LogState:
        """The log's shape as written so far (read-only: do not mutate)."""
        return self._log

    @property
    def hard_state(self) -> HardState:
        """The last hard state written."""
        return self._hard_state

    @property
    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first."""
        return [segment.path for segment in self._segments]

    # -- writing --

    def append(
        self, entries: Sequence[Entry], hard_state: HardState | None = None, *, sync: bool = True
    ) -> None:
        """Write one batch (see `append_batches`)."""
        self.append_batches([prepare_batch(entries, hard_state)], sync=sync)

    def append_batches(self, batches: Sequence[WalBatch], *, sync: bool) -> None:
        """Write batches in order with one write call (one frame unless they exceed a frame,
        or a segment fills up) and, when `sync` and fsync is on, one fdatasync.

        Raises ValueError (nothing written) if a batch does not fit the log: its first index
        must be at most `log.last_index + 1`. With no records and `sync`, this is a barrier
        that makes earlier unsynced writes durable.
        """
        self._check_usable()
        probe = self._log.copy()
        for batch in batches:
            probe.check_batch(batch)
            probe.apply_batch(batch)
        hard_states = [batch.hard_state for batch in batches if batch.hard_state is not None]
        try:
            payloads = self._payloads(batches)
            self._write_payloads(payloads, sync=sync)
        except OSError as error:
            self._fail(error)
        self._log = probe
        if hard_states:
            self._hard_state = hard_states[-1]

    def record_snapshot(self, index: int, term: int, *, sync: bool = True) -> bool:
        """Record that a snapshot at (index, term) replaced the log (§7) and return whether
        the entries after `index` were kept (the log held `index` with `term`)."""
        self._check_usable()
        if type(index) is not int or type(term) is not int:
            raise ValueError("snapshot index and term must be integers")
        if not (1 <= index <= INDEX_MAX and 1 <= term <= TERM_MAX):
            raise ValueError(f"snapshot ({index}, {term}) out of range")
        probe = self._log.copy()
        kept = probe.reset(index, term)
        payload = _Payload(
            self._packer.pack([[_SNAPSHOT, index, term, kept]]),
            index_max=index,
            last_index_before=self._log.last_index,
            hard_state_before=self._hard_state,
        )
        try:
            self._write_payloads([payload], sync=sync)
        except OSError as error:
            self._fail(error)
        self._log = probe
        return kept

    def sync(self) -> None:
        """Make everything written so far durable (a no-op in relaxed mode)."""
        self.append_batches([], sync=True)

    def compact(self, index: int) -> int:
        """Delete the oldest segments whose entries are all <= `index` (never the segment
        being written); returns how many were deleted. The caller makes sure a durable
        snapshot covers `index`."""
        self._check_usable()
        deleted = 0
        try:
            while len(self._segments) > 1 and self._segments[0].index_max <= index:
                # Oldest first, so a crash half-way still leaves a gap-free run of segments.
                self._file_ops.unlink(self._segments[0].path)
                del self._segments[0]
                deleted += 1
            if deleted and self._fsync:
                self._file_ops.sync_directory(self._directory)
        except OSError as error:
            self._fail(error)
        return deleted

    def close(self) -> None:
        """Close the active segment. Writes nothing: every acknowledged write is already where
        it will be after a crash, so closing and crashing leave the same bytes."""
        if self._closed:
            return
        self._closed = True
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                self._file_ops.close(fd)
            except OSError as error:
                if self._failure is None:
                    self._fail(error)

    # -- internals --

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageFailedError(f"{self._directory}: the WAL failed earlier") from (
                self._failure
            )
        if self._closed:
            raise StorageError(f"{self._directory}: the WAL is closed")

    def _fail(self, error: OSError) -> NoReturn:
        if self._failure is None:
            self._failure = error
            logger.error("%s: disk failure, the WAL stops: %s", self._directory, error)
        raise StorageFailedError(f"{self._directory}: disk failure: {error}") from error

    def _payloads(self, batches: Sequence[WalBatch]) -> list[_Payload]:
        """Frame payloads, split at batch boundaries only when one frame would exceed
        RECORD_PAYLOAD_BYTES_MAX."""
        payloads: list[_Payload] = []
        parts: list[bytes] = []
        record_count = part_bytes = index_max = 0
        # The log position and hard state as the records so far leave them, and as they
        # were when the frame being assembled began.
        last_index, hard_state = self._log.last_index, self._hard_state
        frame_last_index, frame_hard_state = last_index, hard_state
        records_bytes_max = RECORD_PAYLOAD_BYTES_MAX - _ARRAY_HEADER_BYTES_MAX

        def finish_frame() -> None:
            data = self._packer.pack_array_header(record_count) + b"".join(parts)
            payloads.append(_Payload(data, index_max, frame_last_index, frame_hard_state))

        for batch in batches:
            if not batch.record_count:
                continue
            encoded = batch.encoded
            if parts and part_bytes + len(encoded) > records_bytes_max:
                finish_frame()
                parts, record_count, part_bytes, index_max = [], 0, 0, 0
                frame_last_index, frame_hard_state = last_index, hard_state
            parts.append(encoded)
            record_count += batch.record_count
            part_bytes += len(encoded)
            index_max = max(index_max, batch.last_index)
            if batch.term_runs:
                last_index = batch.last_index  # a batch ends the log at its last entry
            if batch.hard_state is not None:
                hard_state = batch.hard_state
        if parts:
            finish_frame()
        return payloads

    def _write_payloads(self, payloads: list[_Payload], *, sync: bool) -> None:
        pending: list[bytes] = []
        pending_bytes = 0
        for payload in payloads:
            frame_bytes = FRAME_OVERHEAD_BYTES + len(payload.data)
            over = self._size + pending_bytes + frame_bytes > self._segment_bytes_max
            if over and (self._has_frames or pending):
                self._flush(pending)
                pending, pending_bytes = [], 0
                self._roll(payload.last_index_before, payload.hard_state_before)
            segment = self._segments[-1]
            pending.append(
                _encode_frame(
                    payload.data,
                    segment.seq,
                    self._size + pending_bytes,
                    self._settled,
                    segment.seed,
                )
            )
            pending_bytes += frame_bytes
            segment.index_max = max(segment.index_max, payload.index_max)
        self._flush(pending)
        if sync and self._fsync and self._settled < self._size:
            self._file_ops.sync_data(self._fd)
            self._settled = self._size

    def _flush(self, frames: list[bytes]) -> None:
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        end = self._size + len(data)
        if self._fsync and end > self._allocated:
            self._preallocate(min(end + PREALLOCATION_BYTES, self._segment_bytes_max))
        write_all(self._file_ops, self._fd, data)
        self._size = end
        self._allocated = max(self._allocated, end)
        self._has_frames = True
        if not self._fsync:
            # Relaxed mode never syncs: written is as settled as it gets, and treating it so
            # keeps mid-log damage detectable.
            self._settled = self._size

    def _preallocate(self, allocated: int) -> None:
        """Allocate the active segment up to `allocated` bytes (see Preallocation)."""
        if allocated <= self._allocated:
            return
        try:
            self._file_ops.allocate(self._fd, self._allocated, allocated - self._allocated)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Too little space to reserve ahead is not yet too little for the write itself:
            # write without, and fail only when a write does not fit. A failed allocation
            # may have grown the file part of the way (zeros), so ask for its size.
            if not self._preallocation_refused:
                self._preallocation_refused = True
                logger.warning(
                    "%s: no disk space to preallocate %d bytes ahead (%s); writing without",
                    self._directory,
                    allocated - self._allocated,
                    error.strerror,
                )
            self._allocated = max(self._allocated, self._file_ops.size(self._fd))
            return
        self._allocated = allocated

    def _roll(self, last_index: int, hard_state: HardState) -> None:
        """Close the full segment (cut back to its frames and synced in full: no torn writes
        and no free space before the last segment) and start the next one, at log position
        `last_index` with `hard_state`."""
        cut = self._allocated > self._size
        if cut:
            self._file_ops.truncate(self._fd, self._size)
        if self._fsync and (cut or self._settled < self._size):
            self._file_ops.sync_data(self._fd)
        fd, self._fd = self._fd, -1
        self._file_ops.close(fd)
        self._create_segment(self._segments[-1].seq + 1, last_index, hard_state)

    def _create_segment(self, seq: int, last_index: int, hard_state: HardState) -> None:
        path = self._directory / segment_file_name(seq)
        self._fd = self._file_ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        seed = _new_segment_seed()
        self._segments.append(_Segment(seq, path, 0, seed))
        payload = self._packer.pack(
            [
                [_START, WAL_FORMAT_VERSION, seq, last_index, seed],
                _hard_state_record(hard_state),
            ]
        )
        frame = _encode_frame(payload, seq, 0, 0, _START_FRAME_SEED)
        write_all(self._file_ops, self._fd, frame)
        self._size = self._allocated = len(frame)
        self._has_frames = False
        if self._fsync:
            self._file_ops.sync_data(self._fd)
            self._file_ops.sync_directory(self._directory)
        self._settled = self._size
