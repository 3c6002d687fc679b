"""The storage seam as the daemon sees it: the async `Storage` protocol, what recovery
returns, and the errors.

Two implementations follow this contract: `kvraft.storage.disk.DiskStorage` (files, a writer
thread, fsync) and `kvraft.storage.memory.MemoryStorage` (its in-memory twin for tests and the
simulator). Errors say whose fault it was:

- `ValueError`: the caller broke the contract (a gap in the log, a snapshot older than the
  newest one, ...). Nothing was written; the storage stays usable.
- `StorageCorruptionError`: the bytes on disk are damaged; the node cannot start on its own.
- `StorageFailedError`: the disk failed under us (an `OSError` from a write, an fsync, a read).
  Nothing written since can be trusted, so the storage refuses all further work and the node
  must stop: retrying a failed fsync could report lost data as durable ("fsyncgate").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kvraft.raft.messages import Entry, HardState, SnapshotMeta

__all__ = [
    "RecoveredState",
    "Storage",
    "StorageCorruptionError",
    "StorageError",
    "StorageFailedError",
]

OPERATOR_ADVICE = (
    "this node cannot repair it on its own: stop the node, delete its data directory and "
    "start it again empty so that it rejoins the cluster and receives the leader's snapshot"
)
"""What every corruption message tells the operator to do."""


class StorageError(Exception):
    """Base class of the storage errors."""


class StorageCorruptionError(StorageError):
    """The bytes on disk are damaged in a way a crash cannot explain.

    Fields:
        path: the damaged file.
        offset: the byte offset of the damage in that file.
        reason: what is wrong there.
    """

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path} at offset {offset}: {reason}; {OPERATOR_ADVICE}")


class StorageFailedError(StorageError):
    """The disk failed earlier (see `__cause__`); no operation can be trusted any more."""


@dataclass(frozen=True, slots=True)
class RecoveredState:
    """What a node restarts from.

    Fields:
        hard_state: the last hard state written (all zero on a new node).
        snapshot_meta: the newest valid snapshot, or None.
        snapshot_path: that snapshot's file (None without one, and always None in memory).
        entries: the log after the snapshot: consecutive, from `snapshot_meta.index + 1`
            (or from 1 without a snapshot).
    """

    hard_state: HardState
    snapshot_meta: SnapshotMeta | None
    snapshot_path: Path | None
    entries: list[Entry]


class Storage(Protocol):
    """What the node's driver loop calls; every coroutine resolves only once its work is done
    (durable, when it asked for durability)."""

    @property
    def recovered(self) -> RecoveredState:
        """The state found at open."""
        ...

    async def save(
        self, entries: Sequence[Entry], hard_state: HardState | None, sync: bool = True
    ) -> None:
        """Persist one Ready's log writes: delete every stored entry at index >=
        `entries[0].index`, append `entries`, then record `hard_state` if given. With `sync`
        the writes are on stable storage when this returns. `save([], None, True)` is a
        barrier that makes every earlier unsynced save durable."""
        ...

    def start_save(
        self,
        entries: Sequence[Entry],
        hard_state: HardState | None,
        sync: bool = True,
        on_done: Callable[[], object] | None = None,
    ) -> asyncio.Future[None]:
        """`save`, started now: the future completes when `save` would have returned (with
        its error, if any). Saves complete in the order they were started.

        `on_done`, if given, is called on the loop as soon as the future is done (not if it
        was cancelled), never from inside this call: in the same loop turn that settles the
        future, one turn before the future's own callbacks run. The daemon's driver sends a
        follower's acknowledgement from it, so the turn saved is on every commit's path."""
        ...

    async def save_snapshot(
        self, meta: SnapshotMeta, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        """Store the state machine's own snapshot (iterated on the caller's thread); the log
        is left as it is (call `compact` to drop what the snapshot covers)."""
        ...

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot received from the leader (`Ready.snapshot`) and replace the log
        by it (§7: entries after `meta.index` survive only if the log holds `meta.index` with
        `meta.term`). Ordered before any `save` called after it."""
        ...

    async def compact(self, index: int) -> int:
        """Drop log storage that snapshots cover, up to `index`; returns how many units
        (segments) were deleted."""
        ...

    def open_snapshot_chunks(self, meta: SnapshotMeta) -> AsyncIterator[bytes]:
        """Stream a kept snapshot's data; its checksum is verified by the end of the stream."""
        ...

    async def close(self) -> None:
        """Release files and threads; raises `StorageFailedError` if the storage failed."""
        ...
