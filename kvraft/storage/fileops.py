"""The file-system calls storage makes, in one replaceable object.

Storage never calls `os` directly: it goes through a `FileOps`, so a test can hand it a double
whose `write` or `sync_data` raises `EIO`/`ENOSPC` on cue and watch the real storage code react,
without mocking the storage itself. Every method is a thin wrapper; `OSError` passes through.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["FileOps", "make_directories", "read_whole_file", "write_all"]

_OPEN_FLAGS_ALWAYS = getattr(os, "O_CLOEXEC", 0)
"""Our descriptors must not leak into child processes (the chaos tests spawn nodes)."""


class FileOps:
    """The real file system. Subclass and override to inject faults."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | _OPEN_FLAGS_ALWAYS, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def seek(self, fd: int, offset: int) -> None:
        """Set where the next `write` on `fd` goes."""
        os.lseek(fd, offset, os.SEEK_SET)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk blocks for `length` bytes from `offset`, growing the file to cover
        them (they read as zeros). Where the file system cannot reserve, the C library writes
        the zeros itself."""
        os.posix_fallocate(fd, offset, length)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def sync_data(self, fd: int) -> None:
        """Make the file's data (and the size needed to read it back) durable."""
        # fdatasync skips timestamps we never read; fall back where it does not exist (macOS).
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - platform dependent
            os.fsync(fd)

    def sync_directory(self, path: Path) -> None:
        """Make the directory's entries (created, renamed, deleted files) durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _OPEN_FLAGS_ALWAYS)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def list_directory(self, path: Path) -> list[str]:
        return os.listdir(path)

    def make_directory(self, path: Path) -> bool:
        """Create `path` if missing; True if it was created (its parent then needs a sync)."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not path.is_dir():
                raise
            return False
        return True

    def lock(self, fd: int) -> None:
        """Take an exclusive lock, failing at once (BlockingIOError) if another process has it.

        POSIX record locks belong to the process, so reopening in the same process (a test
        that simulates a crash by reopening without closing) does not deadlock on itself.
        """
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def make_directories(file_ops: FileOps, path: Path, *, sync: bool) -> None:
    """Create `path` and any missing parents; with `sync`, make each new entry durable by
    syncing the directory that holds it (a new directory is only durable once its parent is)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        if file_ops.make_directory(directory) and sync:
            file_ops.sync_directory(directory.parent)


def write_all(file_ops: FileOps, fd: int, data: bytes) -> None:
    """Write all of `data`: one `write` call unless the kernel takes fewer bytes."""
    view = memoryview(data)
    while view:
        written = file_ops.write(fd, view)
        if written <= 0:
            # A regular file that accepts nothing is out of space in all but name.
            raise OSError(errno.EIO, "write accepted no bytes")
        view = view[written:]


def read_whole_file(file_ops: FileOps, path: Path, length_max: int) -> bytes:
    """Read a whole file of at most `length_max` bytes (ValueError if it is larger)."""
    fd = file_ops.open(path, os.O_RDONLY)
    try:
        length = file_ops.size(fd)
        if length > length_max:
            raise ValueError(f"{path} is {length} bytes, more than {length_max}")
        parts: list[bytes] = []
        offset = 0
        while offset < length:
            part = file_ops.pread(fd, length - offset, offset)
            if not part:
                break  # shrank under us; the caller sees the shorter content
            parts.append(part)
            offset += len(part)
        return b"".join(parts)
    finally:
        file_ops.close(fd)
