"""Durable storage for a node: the write-ahead log, hard state and snapshots.

- `kvraft.storage.api`: the `Storage` protocol the daemon uses, `RecoveredState`, the errors.
- `kvraft.storage.disk`: `DiskStorage`, the real thing (writer thread, group commit, fsync).
- `kvraft.storage.memory`: `MemoryStorage`, its in-memory twin.
- `kvraft.storage.engine`: `StorageEngine`, the synchronous core behind `DiskStorage`.
- `kvraft.storage.wal`, `kvraft.storage.snapshots`: the file formats and their recovery rules.
- `kvraft.storage.fileops`: the file-system calls, replaceable to inject faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvraft.storage.api import (
    RecoveredState,
    Storage,
    StorageCorruptionError,
    StorageError,
    StorageFailedError,
)
from kvraft.storage.disk import DiskStorage
from kvraft.storage.engine import StorageEngine
from kvraft.storage.fileops import FileOps
from kvraft.storage.memory import MemoryDisk, MemoryStorage
from kvraft.storage.wal import WriteAheadLog

__all__ = [
    "DiskStorage",
    "FileOps",
    "MemoryDisk",
    "MemoryStorage",
    "RecoveredState",
    "Storage",
    "StorageCorruptionError",
    "StorageEngine",
    "StorageError",
    "StorageFailedError",
    "WriteAheadLog",
]

if TYPE_CHECKING:
    # Both implementations must satisfy the protocol; mypy checks these assignments.
    def _implements_storage(disk: DiskStorage, memory: MemoryStorage) -> tuple[Storage, Storage]:
        return disk, memory
