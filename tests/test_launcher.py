"""The launcher of node processes, as its users rely on it: ports that can be bound, a node
that answers once ready, stopping by pid that leaves nothing behind, and an early exit
reported with its code and log instead of a long wait."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvraft import launcher
from kvraft.config import local_cluster_config, render_config

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 30.0


def _status(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as answer:
            body: dict[str, object] = json.loads(answer.read())
            return body
    except OSError:
        return None


def _gone(pid: int) -> bool:
    """No process with this pid (not even a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """A one-node cluster started through the launcher; (process, log path, HTTP port)."""
    http_port, raft_port = launcher.free_ports(2)
    config = local_cluster_config(1, tmp_path / "data")
    node = replace(config.nodes[0], http_port=http_port, raft_port=raft_port)
    config = replace(config, nodes=(node,))
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(render_config(config))
    log_path = tmp_path / "node1.log"
    process = launcher.start(launcher.serve_command(1, config_path), log_path, header="--- test")
    try:
        yield process, log_path, http_port
    finally:
        launcher.stop({1: process}, timeout_s=10)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = launcher.free_ports(8)
    assert len(set(ports)) == 8
    probes = []
    try:
        for port in ports:
            probe = socket.socket()
            probes.append(probe)
            probe.bind(("127.0.0.1", port))
    finally:
        for probe in probes:
            probe.close()


def test_serve_command_runs_this_interpreter_with_the_flags_asked_for(tmp_path: Path) -> None:
    assert launcher.serve_command(2, tmp_path / "c.toml") == [
        sys.executable, "-m", "kvraft", "serve", "--config", str(tmp_path / "c.toml"), "--id", "2",
    ]  # fmt: skip
    command = launcher.serve_command(
        4,
        raft_address="127.0.0.1:7004",
        http_address="127.0.0.1:8004",
        data_dir=tmp_path / "node4",
        join="http://127.0.0.1:8001",
        learner=True,
    )
    assert command[4:] == [
        "--id", "4", "--raft-address", "127.0.0.1:7004", "--http-address", "127.0.0.1:8004",
        "--data-dir", str(tmp_path / "node4"), "--join", "http://127.0.0.1:8001", "--learner",
    ]  # fmt: skip


def test_a_launched_node_answers_status_and_stopping_it_by_pid_leaves_no_process(
    one_node: tuple[subprocess.Popen[bytes], Path, int],
) -> None:
    process, log_path, http_port = one_node
    launcher.wait_ready(
        process,
        log_path,
        lambda: _status(http_port) is not None,
        what="a /v1/status answer",
        timeout_s=START_TIMEOUT_S,
    )
    status = _status(http_port)
    assert status is not None and status["pid"] == process.pid and status["id"] == 1
    assert os.getsid(process.pid) == process.pid  # its own session: our Ctrl-C is not its
    assert log_path.read_text().startswith("--- test\n")

    stopped = launcher.stop({1: process}, timeout_s=10)

    assert stopped == {1: launcher.Stopped(0, False)}  # SIGTERM: a clean exit, no SIGKILL
    assert _gone(process.pid)
    assert _status(http_port) is None


def test_kill_is_a_crash_and_a_paused_node_is_still_stopped_in_time(
    one_node: tuple[subprocess.Popen[bytes], Path, int],
) -> None:
    process, log_path, http_port = one_node
    launcher.wait_ready(
        process,
        log_path,
        lambda: _status(http_port) is not None,
        what="a /v1/status answer",
        timeout_s=START_TIMEOUT_S,
    )
    launcher.pause(process)
    started = time.monotonic()
    assert launcher.stop({1: process}, timeout_s=10) == {1: launcher.Stopped(0, False)}
    assert time.monotonic() - started < 10
    assert _gone(process.pid)

    sleeper = launcher.start([sys.executable, "-c", "import time; time.sleep(60)"], log_path)
    assert launcher.kill(sleeper) == -signal.SIGKILL
    assert _gone(sleeper.pid)


def test_a_node_that_exits_early_is_reported_with_its_code_and_log_at_once(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "node1.log"
    missing = tmp_path / "no-such.toml"
    process = launcher.start(launcher.serve_command(1, missing), log_path)
    started = time.monotonic()
    try:
        with pytest.raises(launcher.NodeExited) as raised:
            launcher.wait_ready(
                process, log_path, lambda: False, what="a /v1/status answer", timeout_s=60
            )
    finally:
        launcher.stop({1: process}, timeout_s=10)
    assert time.monotonic() - started < 30  # not the 60 s deadline
    assert raised.value.code == process.returncode != 0
    assert "no-such.toml" in raised.value.log_tail
    assert f"exited with code {raised.value.code} before a /v1/status answer" in str(raised.value)


def test_a_node_not_ready_by_the_deadline_is_reported_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "sleeper.log"
    command = [
        sys.executable,
        "-c",
        "print('still starting', flush=True); import time; time.sleep(60)",
    ]
    process = launcher.start(command, log_path)
    try:
        launcher.wait_ready(
            process,
            log_path,
            lambda: "still starting" in log_path.read_text(),
            what="the first line",
            timeout_s=START_TIMEOUT_S,
        )
        with pytest.raises(launcher.NotReady) as raised:
            launcher.wait_ready(process, log_path, lambda: False, what="readiness", timeout_s=0.5)
    finally:
        stopped = launcher.stop({"sleeper": process}, timeout_s=10)
    assert str(raised.value) == "no readiness within 0.5 s:\nstill starting"
    assert stopped["sleeper"].code == -signal.SIGTERM
    assert _gone(process.pid)
