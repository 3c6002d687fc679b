"""What scripts and log shippers read: a node's JSON logs (`--log-format json`,
`KVRAFT_LOG_FORMAT`, `KVRAFT_LOG_LEVEL`), its version (`/v1/status`, `kvraft --version`),
and `--output json` of `status`, `member list`, `get` and `list`, against a real node on
127.0.0.1 (stopped by its pid after the test, even when it fails)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvraft import __version__, launcher
from kvraft.cli import main
from kvraft.config import local_cluster_config, render_config
from kvraft.exit_codes import EXIT_CONFIG

START_TIMEOUT_S = 30.0


@dataclass
class RunningNode:
    url: str
    log_path: Path


def _put(url: str, key: str, value: bytes) -> bool:
    request = urllib.request.Request(f"{url}/v1/kv/{key}", data=value, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    """A one-node cluster (fsync off) logging JSON, chosen by the environment, holding
    greet/a = "hello"."""
    http_port, raft_port = launcher.free_ports(2)
    config = local_cluster_config(1, tmp_path / "data", cluster_id="ops-output")
    spec = replace(config.nodes[0], http_port=http_port, raft_port=raft_port)
    text = render_config(replace(config, nodes=(spec,))).replace("fsync = true", "fsync = false")
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(text)
    log_path = tmp_path / "node1.log"
    process = launcher.start(
        launcher.serve_command(1, config_path),
        log_path,
        env={"KVRAFT_LOG_FORMAT": "json", "KVRAFT_LOG_LEVEL": "debug"},
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        launcher.wait_ready(
            process,
            log_path,
            lambda: _put(url, "greet/a", b"hello"),
            what="node 1",
            timeout_s=START_TIMEOUT_S,
        )
        yield RunningNode(url, log_path)
    finally:
        launcher.stop({1: process}, timeout_s=15)


def _kvraft(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_json_logs_are_one_object_per_line_with_fixed_keys(node: RunningNode) -> None:
    lines = node.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, or this raises
    assert all({"time", "level", "logger", "node", "message"} <= entry.keys() for entry in entries)
    assert all(entry["node"] == 1 and entry["time"].endswith("Z") for entry in entries)
    assert any(entry["message"].startswith("node 1 serving") for entry in entries)


@pytest.mark.parametrize(
    ("level", "logged"), [("error", True), ("critical", False)], ids=["error", "critical"]
)
def test_the_log_level_and_format_come_from_the_environment(
    tmp_path: Path, level: str, logged: bool
) -> None:
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "kvraft", "serve", "--config", str(missing), "--id", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KVRAFT_LOG_FORMAT": "json", "KVRAFT_LOG_LEVEL": level},
    )
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.splitlines()
    if not logged:  # the config error is logged at ERROR, below CRITICAL
        assert lines == []
        return
    (entry,) = (json.loads(line) for line in lines)
    assert entry["level"] == "ERROR" and str(missing) in entry["message"]


def test_the_version_is_in_status_and_in_kvraft_version(node: RunningNode) -> None:
    with urllib.request.urlopen(f"{node.url}/v1/status", timeout=5) as answer:
        assert json.loads(answer.read())["version"] == __version__
    code, stdout, _ = _kvraft("--version")
    assert code == 0 and stdout == f"kvraft, version {__version__}\n"


def test_status_and_member_list_print_json_for_scripts(node: RunningNode) -> None:
    code, stdout, stderr = _kvraft("status", "--output", "json", "--endpoints", node.url)
    assert code == 0, stderr
    status = json.loads(stdout)["nodes"][node.url]
    assert (status["id"], status["role"], status["version"]) == (1, "leader", __version__)

    code, stdout, stderr = _kvraft("member", "list", "--output", "json", "--endpoints", node.url)
    assert code == 0, stderr
    view = json.loads(stdout)
    assert view["leader_id"] == 1 and [member["id"] for member in view["members"]] == [1]


def test_get_and_list_print_json_with_base64_values(node: RunningNode) -> None:
    assert _put(node.url, "greet/b", b"\xff\x00binary")
    code, stdout, stderr = _kvraft("get", "greet/b", "--output", "json", "--endpoints", node.url)
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got["key"] == "greet/b" and base64.b64decode(got["value_b64"]) == b"\xff\x00binary"
    assert got["revision"] > 0

    code, stdout, stderr = _kvraft(
        "list", "greet/", "--limit", "1", "--output", "json", "--endpoints", node.url
    )
    assert code == 0, stderr
    listed = json.loads(stdout)
    assert [item["key"] for item in listed["items"]] == ["greet/a"]
    assert base64.b64decode(listed["items"][0]["value_b64"]) == b"hello"
    assert listed["continuation"] == "greet/a"  # more keys follow the limit

    code, _, stderr = _kvraft("status", "--output", "json", "--endpoints", "127.0.0.1:1")
    assert code == 1 and "no node answered" in stderr
