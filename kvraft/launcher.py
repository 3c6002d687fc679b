"""Node processes on this machine: free ports, the `kvraft serve` command, start, wait, stop.

Theory of operation
-------------------
Everything that runs kvraft nodes as local processes -- `kvraft cluster up`, `kvraft
chaos`, the benchmarks and the integration tests -- launches them through this module,
so there is one way to do each step:

1. **Ports.** `free_ports(count, host)` binds `count` sockets on `host` at once (the
   kernel picks each port, so they are distinct), reads their ports and closes them.
   The ports were free a moment ago; a node that loses the race to another process
   fails to bind and exits, which `wait_ready` reports.

2. **Command.** `serve_command` builds ``python -m kvraft serve`` with this
   interpreter (`sys.executable`), so a node runs the same code and virtual
   environment as its launcher (and its ``PYTHONPATH``, which is inherited).

3. **Start.** `start` runs a command in its own session (``setsid``): a Ctrl-C in the
   terminal reaches only the launcher, which then stops its nodes in order instead of
   every node at once. Standard output and error are appended to a log file, after an
   optional header line, and ``PYTHONUNBUFFERED=1`` makes the log complete up to the
   moment the node dies. stdin is /dev/null.

4. **Ready.** `wait_ready` polls a caller's readiness check (e.g. "``/v1/status``
   answers") until it passes or a deadline. Between polls it looks at the process: a
   node that exited is reported at once as `NodeExited`, with its exit code and the
   tail of its log, rather than after the whole deadline; a node still not ready at the
   deadline is `NotReady`, with the log tail too. Sleeps are only the polling interval.

5. **Stop.** Processes are signalled through their `subprocess.Popen`, i.e. by the pid
   of a child this process started and has not reaped, so a pid never refers to a
   stranger. `stop` sends every live one SIGCONT (a paused node cannot act on SIGTERM)
   and then SIGTERM -- a node hands leadership over and flushes its log -- waits for
   them all until one deadline, SIGKILLs those still running and reaps every one.
   `kill` is kill -9 (a crash), `pause` and `resume` are SIGSTOP and SIGCONT.

Nodes started by another process (`kvraft cluster down` stopping what a killed
`cluster up` left behind) cannot be waited for and are not handled here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

__all__ = [
    "LOG_TAIL_LINES",
    "LOOPBACK",
    "READY_POLL_INTERVAL_S",
    "NodeExited",
    "NotReady",
    "Stopped",
    "free_ports",
    "kill",
    "log_tail",
    "pause",
    "resume",
    "serve_command",
    "start",
    "stop",
    "wait_ready",
]

LOOPBACK = "127.0.0.1"

LOG_TAIL_LINES = 30
"""How many of a node's last log lines a failure report shows."""

READY_POLL_INTERVAL_S = 0.05
"""The default pause between two readiness checks."""

K = TypeVar("K")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct TCP ports on `host` that were free a moment ago (bound together,
    so the kernel gives distinct ones, then closed). Take every port a cluster needs in one
    call: two calls may return the same port, since the first call's are closed again."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            bound = socket.socket()
            sockets.append(bound)
            bound.bind((host, 0))
        return [bound.getsockname()[1] for bound in sockets]
    finally:
        for bound in sockets:
            bound.close()


def serve_command(
    node_id: int,
    config_path: Path | None = None,
    *,
    raft_address: str | None = None,
    http_address: str | None = None,
    data_dir: Path | None = None,
    join: str | None = None,
    learner: bool = False,
    python_options: Sequence[str] = (),
) -> list[str]:
    """``python [python_options] -m kvraft serve`` with the given flags, in this order:
    ``--config --id --raft-address --http-address --data-dir --join --learner``."""
    command = [sys.executable, *python_options, "-m", "kvraft", "serve"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    command += ["--id", str(node_id)]
    if raft_address is not None:
        command += ["--raft-address", raft_address]
    if http_address is not None:
        command += ["--http-address", http_address]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if join is not None:
        command += ["--join", join]
    if learner:
        command.append("--learner")
    return command


def start(
    command: Sequence[str],
    log_path: Path,
    *,
    header: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Run `command` in a session of its own, its output appended to `log_path` (after
    the line `header`, if given), with this environment plus `env` and
    ``PYTHONUNBUFFERED=1``."""
    with open(log_path, "ab") as log:
        if header is not None:
            log.write(f"{header}\n".encode())
            log.flush()
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, or ``(no log)`` if it cannot be read."""
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


class NodeExited(Exception):
    """The process ended before it was ready."""

    def __init__(self, what: str, code: int, tail: str) -> None:
        super().__init__(f"the node exited with code {code} before {what}:\n{tail}")
        self.code = code
        self.log_tail = tail


class NotReady(TimeoutError):
    """The process still ran but was not ready by the deadline."""

    def __init__(self, what: str, timeout_s: float, tail: str) -> None:
        super().__init__(f"no {what} within {timeout_s:g} s:\n{tail}")
        self.log_tail = tail


def wait_ready(
    process: subprocess.Popen[bytes],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = READY_POLL_INTERVAL_S,
) -> None:
    """Poll `ready` until it returns true. NodeExited as soon as the process has exited,
    NotReady after `timeout_s`; both carry the tail of `log_path`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        code = process.poll()
        if code is not None:
            raise NodeExited(what, code, log_tail(log_path))
        if time.monotonic() >= deadline:
            raise NotReady(what, timeout_s, log_tail(log_path))
        time.sleep(interval_s)  # polling interval


class Stopped(NamedTuple):
    """How a process ended: its exit code (negative: killed by that signal), and whether
    `stop` had to SIGKILL it after the deadline."""

    code: int
    killed: bool


def stop(
    processes: Mapping[K, subprocess.Popen[bytes]],
    *,
    timeout_s: float,
    signal_number: signal.Signals = signal.SIGTERM,
) -> dict[K, Stopped]:
    """SIGCONT and `signal_number` to every live process, then wait for each until one
    deadline `timeout_s` away; SIGKILL any still running then. Every process is reaped;
    how each ended, in the order of `processes` (those already gone included)."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            process.send_signal(signal_number)
    deadline = time.monotonic() + timeout_s
    stopped: dict[K, Stopped] = {}
    for key, process in processes.items():
        try:
            stopped[key] = Stopped(process.wait(max(0.0, deadline - time.monotonic())), False)
        except subprocess.TimeoutExpired:
            process.kill()
            stopped[key] = Stopped(process.wait(), True)
    return stopped


def kill(process: subprocess.Popen[bytes]) -> int:
    """kill -9 (a crash) and reap; the exit code."""
    process.kill()
    return process.wait()


def pause(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP: the process keeps its sockets but does nothing."""
    process.send_signal(signal.SIGSTOP)


def resume(process: subprocess.Popen[bytes]) -> None:
    """SIGCONT a paused process."""
    process.send_signal(signal.SIGCONT)
