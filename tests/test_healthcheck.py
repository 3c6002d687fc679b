"""The container's health check (`python -m kvraft.healthcheck`) and the image's default
command (`kvraft dev --host 0.0.0.0`), run as real processes on this machine: Docker cannot
run here, so this plays the container's part. The node is stopped by its pid even when the
test fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kvraft import launcher
from kvraft.healthcheck import HTTP_URL_FILE_VARIABLE

START_TIMEOUT_S = 30.0
CHECK_PROCESS_TIMEOUT_S = 20.0
"""A check process: the interpreter's start plus the check's own 3 s timeout, on a busy box."""


def run_check(url_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft.healthcheck", *options],
        env={**os.environ, HTTP_URL_FILE_VARIABLE: str(url_file)},
        capture_output=True,
        text=True,
        timeout=CHECK_PROCESS_TIMEOUT_S,
    )


def test_the_check_fails_with_a_reason_when_no_node_wrote_its_address(tmp_path: Path) -> None:
    result = run_check(tmp_path / "http-url")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_the_check_fails_when_the_node_at_the_address_does_not_answer(tmp_path: Path) -> None:
    (port,) = launcher.free_ports(1)
    url_file = tmp_path / "http-url"
    url_file.write_text(f"http://127.0.0.1:{port}\n")
    for options in ((), ("--ready",)):
        result = run_check(url_file, *options)
        assert result.returncode == 1, result
        assert f"127.0.0.1:{port}" in result.stderr


def test_the_image_default_dev_listens_everywhere_and_its_check_follows_its_port(
    tmp_path: Path,
) -> None:
    http_port, raft_port = launcher.free_ports(2)
    url_file = tmp_path / "http-url"
    output_path = tmp_path / "dev.out"
    with open(output_path, "wb") as output:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvraft",
                "dev",
                "--host",
                "0.0.0.0",
                "--http-port",
                str(http_port),
                "--raft-port",
                str(raft_port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                HTTP_URL_FILE_VARIABLE: str(url_file),
                "TMPDIR": str(tmp_path),
                "PYTHONUNBUFFERED": "1",
            },
        )
    node_pid = None
    try:
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while (ready := run_check(url_file, "--ready")).returncode != 0:
            assert dev.poll() is None, output_path.read_text()
            assert time.monotonic() < deadline_s, f"{ready.stderr}\n{output_path.read_text()}"
            time.sleep(0.2)  # polling interval
        assert f"http://127.0.0.1:{http_port}/readyz: 200" in ready.stdout
        assert run_check(url_file).returncode == 0  # /healthz
        assert url_file.read_text().strip() == f"http://127.0.0.1:{http_port}"
        # Every interface, not only the loopback address: 127.0.0.2 is another address of
        # this machine, which a node bound to 127.0.0.1 would refuse.
        with urllib.request.urlopen(f"http://127.0.0.2:{http_port}/v1/status", timeout=5) as r:
            status = json.loads(r.read())
        node_pid = status["pid"]
        (member,) = status["members"]
        assert member["http_address"] == f"{socket.gethostname()}:{http_port}"
        assert "listening on every interface" in output_path.read_text()
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=30) == 0, output_path.read_text()
        # The node took its address with it: the check now fails instead of asking a stranger.
        assert not url_file.exists()
        assert run_check(url_file).returncode == 1
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if node_pid is not None and Path(f"/proc/{node_pid}").exists():
            os.kill(node_pid, signal.SIGKILL)  # the node `dev` started, if it outlived it


def test_over_https_the_url_file_names_the_tls_files_and_the_check_says_when_it_cannot_use_them(
    tmp_path: Path,
) -> None:
    from kvraft.healthcheck import remove_url_file, write_url_file

    url_file = tmp_path / "http-url"
    url = "https://127.0.0.1:8001"
    write_url_file(url_file, url, cacert=tmp_path / "ca.crt", cert=tmp_path / "node1.crt")
    assert url_file.read_text().splitlines() == [
        url,
        f"cacert {tmp_path / 'ca.crt'}",
        f"cert {tmp_path / 'node1.crt'}",
    ]
    result = run_check(url_file)
    assert result.returncode == 1
    assert "cannot use the TLS files" in result.stderr  # ca.crt does not exist
    remove_url_file(url_file, "https://127.0.0.1:8002")  # another node's: kept
    assert url_file.exists()
    remove_url_file(url_file, url)
    assert not url_file.exists()
