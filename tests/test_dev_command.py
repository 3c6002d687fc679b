"""`kvraft dev`: one command gives a working one-node cluster in a temporary directory, and
Ctrl-C stops the node and removes the directory. A real process on 127.0.0.1, stopped by its
pid even when the test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kvraft import launcher

START_TIMEOUT_S = 30.0


def _put(url: str) -> bool:
    request = urllib.request.Request(f"{url}/v1/kv/greeting", data=b"hello", method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_dev_runs_one_node_in_a_temporary_directory_and_removes_it(tmp_path: Path) -> None:
    http_port, raft_port = launcher.free_ports(2)
    scratch = tmp_path / "tmp"  # where the command makes its temporary directory
    scratch.mkdir()
    output_path = tmp_path / "dev.out"
    url = f"http://127.0.0.1:{http_port}"
    with open(output_path, "wb") as output:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvraft",
                "dev",
                "--http-port",
                str(http_port),
                "--raft-port",
                str(raft_port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
        )
    node_pid = None
    try:
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not _put(url):
            assert dev.poll() is None, output_path.read_text()
            assert time.monotonic() < deadline_s, output_path.read_text()
            time.sleep(0.1)  # polling interval
        with urllib.request.urlopen(f"{url}/v1/status", timeout=5) as answer:
            status = json.loads(answer.read())
        node_pid = status["pid"]
        assert (status["role"], [m["id"] for m in status["members"]]) == ("leader", [1])
        (made,) = scratch.iterdir()
        assert made.name.startswith("kvraft-dev-") and (made / "cluster.toml").exists()
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=30) == 0, output_path.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if node_pid is not None and Path(f"/proc/{node_pid}").exists():
            os.kill(node_pid, signal.SIGKILL)  # the node `dev` started, if it outlived it
    assert list(scratch.iterdir()) == []  # the data went with it
    assert not Path(f"/proc/{node_pid}").exists()
