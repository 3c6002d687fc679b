"""File-system doubles shared by the storage and node tests: the real `FileOps`, with a hook."""

from __future__ import annotations

import threading

from kvraft.storage.fileops import FileOps

HOLD_TIMEOUT_S = 10.0
"""The longest a held write waits for `release` (a test that forgets to release still ends)."""


class HoldingFileOps(FileOps):
    """The real file system, except that writes wait while `release` is clear: the writer
    thread can be held inside its next write, as by a slow disk."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.holding = threading.Event()
        """Set once a write is being held."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if not self.release.is_set():
            self.holding.set()
            self.release.wait(HOLD_TIMEOUT_S)
        return super().write(fd, data)
