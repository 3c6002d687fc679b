"""Tests for `kvraft watch` (kvraft.commands.watch): the line format, and the real
command in a subprocess against `FakeCluster`: output as changes happen, resuming when
its node is killed, `--json`, and a real SIGINT ending it with status 0 and no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from kv_fake_server import FakeCluster, refused_endpoint

from kvraft.client import KVClient, WatchEvent
from kvraft.commands import kv
from kvraft.commands.watch import WATCH_TIMEOUT_S_DEFAULT, format_event, watch

DEADLINE_S = 15.0
"""How long a test waits for the subprocess to show something."""


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(3) as fake:
        yield fake


def test_event_lines_are_one_line_each_with_unprintable_bytes_escaped() -> None:
    put = WatchEvent("put", "greeting", b"hello", 3, None)
    assert format_event(put) == "put greeting hello"
    assert format_event(WatchEvent("delete", "greeting", None, 4, 3)) == "delete greeting"
    hostile = WatchEvent("put", "k\x1b[2J", b"two\nlines\xff\x00", 5, None)
    assert format_event(hostile) == "put k\\x1b[2J two\\nlines\\xff\\x00"
    assert json.loads(format_event(put, as_json=True)) == {
        "type": "put",
        "key": "greeting",
        "value_b64": "aGVsbG8=",
        "revision": 3,
        "prev_revision": None,
    }


def test_prefix_and_key_together_are_a_usage_error(cluster: FakeCluster) -> None:
    runner = CliRunner(env={kv.ENDPOINTS_ENV: ",".join(cluster.endpoints)})
    result = runner.invoke(watch, ["a/", "--key", "k"])
    assert result.exit_code == 2
    assert cluster.requests() == []


def test_compacted_history_is_one_line_and_exit_1(cluster: FakeCluster) -> None:
    KVClient(cluster.endpoints).put("k", b"v")
    cluster.compact(1)
    runner = CliRunner(env={kv.ENDPOINTS_ENV: ",".join(cluster.endpoints)})
    result = runner.invoke(watch, ["--from-revision", "1"])
    assert result.exit_code == 1
    assert "history compacted" in result.stderr and "revision 1" in result.stderr
    assert "Traceback" not in result.stderr


class WatchProcess:
    """`python -m kvraft watch ...` with its stdout read line by line in a thread."""

    def __init__(self, endpoints: list[str], *args: str) -> None:
        env = {**os.environ, kv.ENDPOINTS_ENV: ",".join(endpoints), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvraft", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            # Python turns SIGINT into KeyboardInterrupt only if it is not ignored, and a
            # test run in the background may have inherited it ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        stdout = self.process.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter_lines(stdout)))
        self._reader.start()

    def wait_for_lines(self, count: int) -> list[str]:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.lines) < count:
            assert self.process.poll() is None, self.finish()
            assert time.monotonic() < deadline, f"only {self.lines} arrived"
            time.sleep(0.01)
        return list(self.lines)

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[int, str]:
        try:
            self.process.wait(DEADLINE_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(DEADLINE_S)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.process.returncode, stderr


def iter_lines(stream: object) -> Iterator[str]:
    for line in stream:  # type: ignore[attr-defined]
        yield line.rstrip("\n")


def wait_for_stream(cluster: FakeCluster, count: int = 1) -> None:
    """Until the command's watch is being served (so that writes after it are seen)."""
    deadline = time.monotonic() + DEADLINE_S
    while sum(cluster.watch_streams(n) for n in cluster.node_ids) < count:
        assert time.monotonic() < deadline, "the watch never started"
        time.sleep(0.01)


def test_watch_prints_changes_survives_a_killed_node_and_exits_0_on_sigint(
    cluster: FakeCluster,
) -> None:
    client = KVClient(cluster.endpoints)
    client.put("other", b"not watched")
    process = WatchProcess(cluster.endpoints, "greet/")
    try:
        wait_for_stream(cluster)
        client.put("greet/en", b"hello")
        client.put("greet/bin", b"\x00\xff")
        client.delete("greet/en")
        assert process.wait_for_lines(3) == [
            "put greet/en hello",
            "put greet/bin \\x00\\xff",
            "delete greet/en",
        ]
        serving = next(n for n in cluster.node_ids if cluster.watch_streams(n))
        cluster.kill(serving)
        client = KVClient([cluster.endpoint(n) for n in cluster.node_ids if n != serving])
        client.put("greet/fr", b"bonjour")
        assert process.wait_for_lines(4)[3] == "put greet/fr bonjour"
    finally:
        status, stderr = process.interrupt()
    assert status == 0, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert len(process.lines) == 4


def test_watch_json_from_a_revision(cluster: FakeCluster) -> None:
    client = KVClient(cluster.endpoints)
    client.put("k", b"v1")
    second = client.put("k", b"v2")
    process = WatchProcess(cluster.endpoints, "--key", "k", "--from-revision", "2", "--json")
    try:
        lines = process.wait_for_lines(1)
    finally:
        status, stderr = process.interrupt()
    assert json.loads(lines[0]) == {
        "type": "put",
        "key": "k",
        "value_b64": "djI=",
        "revision": second,
        "prev_revision": 1,
    }
    assert status == 0, stderr


def test_watch_gives_up_within_seconds_naming_each_endpoint_when_no_member_answers() -> None:
    endpoints = [refused_endpoint(), refused_endpoint()]
    started_s = time.monotonic()
    process = WatchProcess(endpoints, "greet/")
    status, stderr = process.finish()  # waits up to DEADLINE_S, then kills it
    elapsed_s = time.monotonic() - started_s
    assert status == 1, stderr
    # Seconds (the client's unreachable timeout, 3 s, plus the interpreter's start), not
    # the 60 s a served watch waits out a restart of the cluster.
    assert elapsed_s < DEADLINE_S < WATCH_TIMEOUT_S_DEFAULT
    assert "no member answered" in stderr
    assert all(endpoint in stderr for endpoint in endpoints), stderr
    assert "Traceback" not in stderr
    assert process.lines == []
