"""Exit codes and failure messages as an operator meets them: every failure of `kvraft serve`
ends with its own code (never click's 1 or 2, except for a bad flag, which is click's usage
error) and one log line naming the cause, without a traceback; the README's table lists
them; `cluster up` shows a node's last log line when it exits; client commands give up
within seconds when no member answers, naming the endpoints.

Real processes on 127.0.0.1; every one is stopped (by its pid) and every socket closed, even
when a test fails; temporary directories are pytest's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kvraft import launcher
from kvraft.config import local_cluster_config, render_config
from kvraft.exit_codes import (
    EXIT_ADDRESS_UNAVAILABLE,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_JOIN_REFUSED,
    EXIT_STORAGE_CORRUPT,
    EXIT_STORAGE_FAILED,
    EXIT_USAGE,
)

README = Path(__file__).resolve().parent.parent / "README.md"
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0
CLIENT_GIVE_UP_S_MAX = 7.0
"""A client command against endpoints where nothing listens must fail within this long:
`UNREACHABLE_TIMEOUT_S` (3 s), plus the interpreter's start on a busy machine."""


@dataclass
class Node:
    config_path: Path
    data_dir: Path
    http_port: int
    raft_port: int


def _write_config(directory: Path) -> Node:
    http_port, raft_port = launcher.free_ports(2)
    config = local_cluster_config(1, directory / "data", cluster_id="exit-codes")
    spec = replace(config.nodes[0], http_port=http_port, raft_port=raft_port)
    config = replace(config, nodes=(spec,))
    config_path = directory / "cluster.toml"
    config_path.write_text(render_config(config))
    return Node(config_path, spec.data_dir, http_port, raft_port)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _the_error_line(stderr: str) -> str:
    """The one line that says why (a log line at ERROR or CRITICAL, or click's ``Error:``),
    after checking that there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [
        line
        for line in stderr.splitlines()
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Error:")
    ]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[Node]:
    """A one-node cluster (fsync off) that has committed a write; stopped after the test."""
    node = _write_config(tmp_path)
    text = node.config_path.read_text().replace("fsync = true", "fsync = false")
    node.config_path.write_text(text)
    log_path = tmp_path / "node1.log"
    process = launcher.start(launcher.serve_command(1, node.config_path), log_path)
    try:

        def ready() -> bool:
            try:
                url = f"http://127.0.0.1:{node.http_port}/v1/kv/before"
                request = urllib.request.Request(url, data=b"x", method="PUT")
                with urllib.request.urlopen(request, timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        launcher.wait_ready(process, log_path, ready, what="node 1", timeout_s=START_TIMEOUT_S)
        yield node
    finally:
        launcher.stop({1: process}, timeout_s=15)


# --- the table -------------------------------------------------------------------------------


def test_every_exit_code_has_one_meaning_and_a_row_in_the_readme() -> None:
    readme = README.read_text()
    for code, (commands, meaning) in EXIT_CODES.items():
        assert f"| {code} | {commands} | {meaning} |" in readme, code
    assert all("|" not in meaning for _, meaning in EXIT_CODES.values())  # keeps the table
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ", section, flags=re.MULTILINE)
    assert sorted(int(code) for code in rows) == sorted(EXIT_CODES)
    serve_codes = [code for code, (commands, _) in EXIT_CODES.items() if "serve" in commands]
    assert all(code > EXIT_USAGE for code in serve_codes)  # never click's 1 or 2


# --- kvraft serve ----------------------------------------------------------------------------


def test_a_config_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cluster.toml"
    result = _run(["serve", "--config", str(missing), "--id", "1"])
    assert result.returncode == EXIT_CONFIG, result.stderr
    line = _the_error_line(result.stderr)
    assert str(missing) in line and "No such file" in line


def test_an_invalid_config_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    node = _write_config(tmp_path)
    text = node.config_path.read_text()
    invalid, replaced = re.subn(r"(?m)^election_ticks = \d+$", "election_ticks = 1", text)
    assert replaced == 1
    node.config_path.write_text(invalid)
    result = _run(["serve", "--config", str(node.config_path), "--id", "1"])
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "raft.election_ticks" in _the_error_line(result.stderr)


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--log-level", "bogus", "--log-level"), ("--log-format", "xml", "--log-format")],
)
def test_a_bad_flag_value_is_clicks_usage_error(
    tmp_path: Path, flag: str, value: str, named: str
) -> None:
    node = _write_config(tmp_path)
    result = _run(["serve", "--config", str(node.config_path), "--id", "1", flag, value])
    assert result.returncode == EXIT_USAGE, result.stderr
    line = _the_error_line(result.stderr)
    assert named in line and value in line


@pytest.mark.parametrize("taken", ["raft", "http"])
def test_a_port_in_use_is_one_line_naming_the_address(tmp_path: Path, taken: str) -> None:
    node = _write_config(tmp_path)
    port = node.raft_port if taken == "raft" else node.http_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = _run(["serve", "--config", str(node.config_path), "--id", "1"])
    assert result.returncode == EXIT_ADDRESS_UNAVAILABLE, result.stderr
    line = _the_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "Address already in use" in line
    assert ("peers" if taken == "raft" else "clients") in line


def test_a_second_copy_of_a_running_node_is_a_storage_failure(running_node: Node) -> None:
    result = _run(["serve", "--config", str(running_node.config_path), "--id", "1"])
    assert result.returncode == EXIT_STORAGE_FAILED, result.stderr
    assert "in use by another process" in _the_error_line(result.stderr)


def test_a_node_the_cluster_refuses_to_add_exits_join_refused(
    running_node: Node, tmp_path: Path
) -> None:
    # Node 1 is already a member at other addresses: the cluster answers member_conflict.
    raft_port, http_port = launcher.free_ports(2)
    result = _run(
        [
            "serve",
            "--id",
            "1",
            "--raft-address",
            f"127.0.0.1:{raft_port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
            "--data-dir",
            str(tmp_path / "impostor"),
            "--join",
            f"http://127.0.0.1:{running_node.http_port}",
        ]
    )
    assert result.returncode == EXIT_JOIN_REFUSED, result.stderr
    assert "refused to add node 1" in _the_error_line(result.stderr)


def test_a_join_url_where_nothing_answers_exits_join_refused(tmp_path: Path) -> None:
    raft_port, http_port, nothing_port = launcher.free_ports(3)
    result = _run(
        [
            "serve",
            "--id",
            "4",
            "--raft-address",
            f"127.0.0.1:{raft_port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
            "--data-dir",
            str(tmp_path / "node4"),
            "--join",
            f"http://127.0.0.1:{nothing_port}",
        ]
    )
    assert result.returncode == EXIT_JOIN_REFUSED, result.stderr
    assert f"127.0.0.1:{nothing_port}" in _the_error_line(result.stderr)


def test_a_corrupt_wal_refuses_to_start_with_its_own_code(tmp_path: Path) -> None:
    node = _write_config(tmp_path)
    log_path = tmp_path / "node1.log"
    process = launcher.start(launcher.serve_command(1, node.config_path), log_path)
    try:

        def wrote() -> bool:
            url = f"http://127.0.0.1:{node.http_port}/v1/kv/k"
            try:
                request = urllib.request.Request(url, data=b"v", method="PUT")
                with urllib.request.urlopen(request, timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        launcher.wait_ready(process, log_path, wrote, what="node 1", timeout_s=START_TIMEOUT_S)
    finally:
        assert launcher.stop({1: process}, timeout_s=15)[1].code == 0
    segments = sorted((node.data_dir / "wal").glob("*.wal"))
    assert segments
    data = bytearray(segments[0].read_bytes())
    data[10] ^= 0x10  # inside the first frame, which later frames follow: corruption
    segments[0].write_bytes(data)
    result = _run(["serve", "--config", str(node.config_path), "--id", "1"])
    assert result.returncode == EXIT_STORAGE_CORRUPT, result.stderr
    line = _the_error_line(result.stderr)
    assert "refuses to start" in line and segments[0].name in line


# --- cluster up ------------------------------------------------------------------------------


def test_cluster_up_shows_the_last_log_line_of_a_node_that_exits(tmp_path: Path) -> None:
    http_port, raft_port = launcher.free_ports(2)
    output_path = tmp_path / "up.out"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", raft_port))
        holder.listen()
        with open(output_path, "wb") as output:
            up = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kvraft",
                    "cluster",
                    "up",
                    "--nodes",
                    "1",
                    "--data-dir",
                    str(tmp_path / "cluster"),
                    "--http-port-base",
                    str(http_port),
                    "--raft-port-base",
                    str(raft_port),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            deadline_s = time.monotonic() + START_TIMEOUT_S
            while "last line:" not in output_path.read_text() and up.poll() is None:
                assert time.monotonic() < deadline_s, output_path.read_text()
                time.sleep(0.1)  # polling interval
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
    text = output_path.read_text()
    assert f"node 1 process exited (code {EXIT_ADDRESS_UNAVAILABLE})" in text, text
    last_line = next(line for line in text.splitlines() if "last line:" in line)
    assert f"cannot listen for peers on 127.0.0.1:{raft_port}" in last_line, text


# --- client commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["member", "list"], ["get", "k"], ["put", "k", "v"], ["list"], ["status"]],
    ids=" ".join,
)
def test_client_commands_give_up_within_seconds_naming_the_endpoints(command: list[str]) -> None:
    # Their --timeout is 10 s (120 s for `member`): giving up sooner is the point.
    ports = launcher.free_ports(2)  # nothing listens there
    endpoints = [f"http://127.0.0.1:{port}" for port in ports]
    started_s = time.monotonic()
    result = _run([*command, "--endpoints", ",".join(endpoints)])
    took_s = time.monotonic() - started_s
    assert took_s < CLIENT_GIVE_UP_S_MAX, took_s
    assert result.returncode == EXIT_FAILED, result.stderr
    line = _the_error_line(result.stderr)
    assert all(endpoint in line for endpoint in endpoints), line
    if command[0] != "status":
        assert "connection refused" in line, line
