"""`MemoryStorage`: the in-memory twin of `DiskStorage`, for daemon tests and the simulator.

Same async API, same validation and the same log rules (suffix truncation, §7 on installed
snapshots, compaction up to the oldest kept snapshot), through the same `LogState`. What
"survives a restart" is a `MemoryDisk`: open a new `MemoryStorage` on the same disk object to
model a node coming back. Every save is applied at once, so a restart never loses anything
acknowledged (there is no torn tail in memory). `fail()` models a disk failure: from then on
every operation raises `StorageFailedError`, like `DiskStorage` after an `OSError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from kvraft.raft.messages import Entry, HardState, SnapshotMeta
from kvraft.storage.api import RecoveredState, StorageError, StorageFailedError
from kvraft.storage.engine import check_installed_snapshot, check_snapshot_fits
from kvraft.storage.snapshots import (
    SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_DATA_BYTES_MAX,
    SNAPSHOTS_KEPT_DEFAULT,
    SNAPSHOTS_KEPT_MAX,
)
from kvraft.storage.wal import LogState, prepare_batch

__all__ = ["MemoryDisk", "MemoryStorage"]


class MemoryDisk:
    """What a `MemoryStorage` keeps across restarts.

    Fields:
        hard_state: the last hard state saved.
        log: the log, with its entries.
        snapshots: the snapshots kept, oldest first, as (meta, data).
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.log = LogState(keep_entries=True)
        self.snapshots: list[tuple[SnapshotMeta, bytes]] = []


class MemoryStorage:
    """See the module docstring. Create with `open`."""

    def __init__(self, disk: MemoryDisk, snapshots_kept: int) -> None:
        self.disk = disk
        self._snapshots_kept = snapshots_kept
        self._failure: BaseException | None = None
        self._closed = False
        newest = disk.snapshots[-1][0] if disk.snapshots else None
        entries = disk.log.entries or []
        skip = (newest.index + 1 - disk.log.first_index) if newest is not None else 0
        self._recovered = RecoveredState(
            hard_state=disk.hard_state,
            snapshot_meta=newest,
            snapshot_path=None,
            entries=list(entries[max(skip, 0) :]),
        )

    @classmethod
    async def open(
        cls, disk: MemoryDisk | None = None, *, snapshots_kept: int = SNAPSHOTS_KEPT_DEFAULT
    ) -> MemoryStorage:
        """Open storage on `disk` (a new empty one if None)."""
        if type(snapshots_kept) is not int or not 1 <= snapshots_kept <= SNAPSHOTS_KEPT_MAX:
            raise ValueError(f"snapshots_kept must be in 1..{SNAPSHOTS_KEPT_MAX}")
        return cls(disk if disk is not None else MemoryDisk(), snapshots_kept)

    @property
    def recovered(self) -> RecoveredState:
        return self._recovered

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def fail(self, cause: BaseException | None = None) -> None:
        """Model a disk failure: every operation from now on raises `StorageFailedError`."""
        if self._failure is None:
            self._failure = cause or OSError("injected disk failure")

    # -- the API --

    async def save(
        self, entries: Sequence[Entry], hard_state: HardState | None, sync: bool = True
    ) -> None:
        self._save(entries, hard_state)

    def start_save(
        self,
        entries: Sequence[Entry],
        hard_state: HardState | None,
        sync: bool = True,
        on_done: Callable[[], object] | None = None,
    ) -> asyncio.Future[None]:
        """Done at once, as `save`: memory has nothing to wait for (`on_done` is called at the
        loop's next turn, never from inside this call)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            self._save(entries, hard_state)
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(None)
        if on_done is not None:
            loop.call_soon(on_done)
        return future

    def _save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self._check_usable()
        batch = prepare_batch(entries, hard_state)
        self.disk.log.check_batch(batch, self._newest_index())
        self.disk.log.apply_batch(batch)
        if hard_state is not None:
            self.disk.hard_state = hard_state

    async def save_snapshot(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        self._check_usable()
        check_snapshot_fits(meta, self.disk.log, self._newest())
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = (bytes(chunks),)
        parts = []
        data_bytes = 0
        for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise ValueError(f"snapshot chunks must be bytes, not {type(chunk)}")
            data_bytes += len(chunk)
            if data_bytes > SNAPSHOT_DATA_BYTES_MAX:
                raise ValueError(f"snapshot data exceeds {SNAPSHOT_DATA_BYTES_MAX} bytes")
            parts.append(bytes(chunk))
        self._check_usable()
        self._keep(meta, b"".join(parts))

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._check_usable()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"snapshot data must be bytes, not {type(data)}")
        check_installed_snapshot(meta, len(data), self._newest())
        self._keep(meta, bytes(data))
        self.disk.log.reset(meta.index, meta.term)

    async def compact(self, index: int) -> int:
        """Drop the entries up to min(index, oldest kept snapshot); returns how many."""
        self._check_usable()
        newest = self._newest()
        if newest is None or index > newest.index:
            raise ValueError(f"no snapshot covers index {index}: compaction would lose entries")
        log = self.disk.log
        through = min(index, self.disk.snapshots[0][0].index, log.last_index)
        dropped = max(0, through + 1 - log.first_index)
        log.drop_through(through)
        return dropped

    async def open_snapshot_chunks(self, meta: SnapshotMeta) -> AsyncIterator[bytes]:
        self._check_usable()
        found = [
            data
            for kept, data in self.disk.snapshots
            if (kept.index, kept.term) == (meta.index, meta.term)
        ]
        if not found:
            raise StorageError(f"no such snapshot ({meta.index}, {meta.term}): it is not kept")
        data = found[0]
        for offset in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
            self._check_usable()
            yield data[offset : offset + SNAPSHOT_CHUNK_BYTES]

    async def close(self) -> None:
        self._closed = True
        if self._failure is not None:
            raise StorageFailedError(f"storage failed earlier: {self._failure!r}") from (
                self._failure
            )

    # -- internals --

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageFailedError(f"storage failed earlier: {self._failure!r}") from (
                self._failure
            )
        if self._closed:
            raise StorageError("storage is closed")

    def _newest(self) -> SnapshotMeta | None:
        return self.disk.snapshots[-1][0] if self.disk.snapshots else None

    def _newest_index(self) -> int:
        newest = self._newest()
        return newest.index if newest is not None else 0

    def _keep(self, meta: SnapshotMeta, data: bytes) -> None:
        snapshots = [
            kept
            for kept in self.disk.snapshots
            if (kept[0].index, kept[0].term) != (meta.index, meta.term)
        ]
        snapshots.append((meta, data))
        snapshots.sort(key=lambda kept: (kept[0].index, kept[0].term))
        self.disk.snapshots = snapshots[-self._snapshots_kept :]
