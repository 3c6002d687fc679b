"""`kvraft demo`: the script it follows, and real runs (to the end, and interrupted) that must
narrate every step, keep every acknowledged write, and leave no process, directory or
iptables chain behind."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from kvraft.chaos.netfilter import Firewall, chain_name, find_iptables
from kvraft.commands.demo import (
    STEP_HEAL,
    STEP_ISOLATE,
    STEP_KILL,
    STEP_RESTART,
    STEP_TRANSFER,
    stable_leader,
    step_plan,
)
from kvraft.exit_codes import EXIT_INTERRUPTED

RUN_TIMEOUT_S = 120.0

# The line each step prints when it acts.
STEP_NARRATION = {
    STEP_KILL: "killing the leader, node",
    STEP_RESTART: "restarting node",
    STEP_TRANSFER: "to hand leadership to node",
    STEP_ISOLATE: "isolating the leader, node",
    STEP_HEAL: "healing the network",
}


def test_the_script_cycles_through_kill_restart_transfer_and_isolates_only_when_it_can() -> None:
    assert step_plan(4, isolation=False) == [STEP_KILL, STEP_RESTART, STEP_TRANSFER, STEP_KILL]
    assert step_plan(6, isolation=True) == [
        STEP_KILL, STEP_RESTART, STEP_TRANSFER, STEP_ISOLATE, STEP_HEAL, STEP_KILL,
    ]  # fmt: skip


def test_a_leader_counts_only_when_a_majority_follows_it_in_its_term() -> None:
    follower_of_2 = {"role": "follower", "term": 4, "leader_id": 2}
    new_leader = {"role": "leader", "term": 4, "leader_id": 2}
    deposed = {"role": "leader", "term": 3, "leader_id": 1}  # cut off, not yet stepped down
    assert stable_leader({1: deposed, 2: new_leader, 3: follower_of_2}) == (2, 4)
    assert stable_leader({1: deposed, 2: None, 3: None}) is None
    assert stable_leader({1: None, 2: new_leader, 3: None}) is None


def _isolation_possible() -> bool:
    executable, _ = find_iptables()
    return executable is not None


def _processes_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line mentions `text` (the demo's directory)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # exited meanwhile
        if text.encode() in command:
            found.append(int(entry.name))
    return found


def _assert_nothing_left(temporary_root: pathlib.Path, demo_pid: int) -> None:
    assert list(temporary_root.iterdir()) == []  # the cluster's directory is gone
    assert _processes_mentioning(str(temporary_root)) == []  # so is every node
    executable, _ = find_iptables()
    if executable is not None:
        assert not Firewall(executable, chain_name(demo_pid)).exists()


def _demo_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "kvraft", "demo", "--step-seconds", "1", *options]


def _environment(temporary_root: pathlib.Path) -> dict[str, str]:
    # The demo's temporary directory goes under TMPDIR: here, a directory of the test's own.
    return {**os.environ, "TMPDIR": str(temporary_root)}


@pytest.mark.slow
def test_the_demo_runs_every_step_to_the_end_and_keeps_every_acknowledged_write(
    tmp_path: pathlib.Path,
) -> None:
    temporary_root = tmp_path / "tmp"
    temporary_root.mkdir()
    plan = step_plan(5 if _isolation_possible() else 3, isolation=_isolation_possible())
    process = subprocess.Popen(
        _demo_command("--steps", str(len(plan)), "--writes-per-s", "10"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(temporary_root),
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()  # the demo itself hung: its own cleanup cannot run
            process.wait()
    assert process.returncode == 0, output
    assert "dashboard: http://" in output
    for number, step in enumerate(plan, start=1):
        assert f"step {number}/{len(plan)}: {step}" in output, output
        assert STEP_NARRATION[step] in output, output
    if STEP_ISOLATE not in plan:
        assert "note: the isolate step is skipped" in output
    assert output.count("the members saw no leader for") >= 2, output  # kill and transfer
    assert "acknowledged writes are readable" in output, output
    _assert_nothing_left(temporary_root, process.pid)


@pytest.mark.slow
def test_an_interrupted_demo_stops_every_node_and_removes_what_it_made(
    tmp_path: pathlib.Path,
) -> None:
    temporary_root = tmp_path / "tmp"
    temporary_root.mkdir()
    process = subprocess.Popen(
        _demo_command("--steps", "3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(temporary_root),
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline_s = time.monotonic() + RUN_TIMEOUT_S
        # After the first kill, so that a restarted node's process exists to be cleaned up too.
        while not any("restarting node" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline_s, "".join(lines)
            time.sleep(0.05)  # polling interval
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    assert process.stdout is not None
    process.stdout.close()
    assert code == EXIT_INTERRUPTED, "".join(lines)
    assert any("interrupted: cleaning up" in line for line in lines), "".join(lines)
    _assert_nothing_left(temporary_root, process.pid)
