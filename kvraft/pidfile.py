"""`DATA_DIR/kvraft.pid`: which process serves a data directory, for `kvraft cluster down`.

`kvraft serve` writes it once it holds the data directory's lock (so at most one live process
can have written it) and removes it when it exits normally. A node killed with SIGKILL leaves
it behind, and its pid may since belong to another process: the file therefore also records
the process's start time (field 22 of `/proc/PID/stat`, clock ticks since boot), and a pid is
trusted only while the process with that pid started at that very time. Nothing else is
signalled. Without `/proc` (not Linux) no process is ever trusted.

Format: one ASCII line ``PID START_TICKS``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "PID_FILE_BYTES_MAX",
    "PID_FILE_NAME",
    "process_start_ticks",
    "read_pid_file",
    "remove_pid_file",
    "running_pid",
    "write_pid_file",
]

PID_FILE_NAME = "kvraft.pid"

PID_FILE_BYTES_MAX = 64
"""Two integers and a newline; anything longer is not ours."""

_STAT_START_TIME_FIELD = 22
"""`starttime` in proc(5)'s numbering of `/proc/PID/stat` fields (from 1)."""


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if it is not running
    (gone, or a zombie) or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after
    # the last ')'. What follows starts with field 3.
    fields = stat[stat.rfind(b")") + 1 :].split()
    position = _STAT_START_TIME_FIELD - 3
    if len(fields) <= position or not fields[position].isdigit():
        return None
    if fields[0] in (b"Z", b"X"):  # exited, not yet reaped by its parent: not running
        return None
    return int(fields[position])


def write_pid_file(data_dir: Path) -> None:
    """Record this process as the one serving `data_dir` (atomically: temp file + rename)."""
    pid = os.getpid()
    start_ticks = process_start_ticks(pid)
    path = data_dir / PID_FILE_NAME
    temporary = path.with_name(f"{PID_FILE_NAME}.{pid}.tmp")
    temporary.write_text(f"{pid} {start_ticks if start_ticks is not None else 0}\n")
    os.replace(temporary, path)


def read_pid_file(data_dir: Path) -> tuple[int, int] | None:
    """(pid, start ticks) from `data_dir`'s pid file, or None if there is none or it is not
    one (the file is untrusted: a stranger's or a damaged file is ignored, never acted on)."""
    try:
        with open(data_dir / PID_FILE_NAME, "rb") as file:
            data = file.read(PID_FILE_BYTES_MAX + 1)
    except OSError:
        return None
    parts = data.split()
    if len(data) > PID_FILE_BYTES_MAX or len(parts) != 2:
        return None
    if not all(part.isdigit() for part in parts):
        return None
    pid, start_ticks = int(parts[0]), int(parts[1])
    return (pid, start_ticks) if pid > 1 and start_ticks > 0 else None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the live process that wrote `data_dir`'s pid file, or None (no file, or
    that process is gone and its pid possibly reused)."""
    recorded = read_pid_file(data_dir)
    if recorded is None:
        return None
    pid, start_ticks = recorded
    return pid if process_start_ticks(pid) == start_ticks else None


def remove_pid_file(data_dir: Path) -> None:
    """Remove `data_dir`'s pid file if it names this process."""
    recorded = read_pid_file(data_dir)
    if recorded is not None and recorded[0] == os.getpid():
        with contextlib.suppress(OSError):
            (data_dir / PID_FILE_NAME).unlink()
