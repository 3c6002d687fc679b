"""Locks through the client and the CLI against real node processes (issue #19): a held
`lock()` survives a SIGKILL of the leader; `kvraft lock NAME -- COMMAND` passes the token
and fences the command's own writes; a `kvraft lock` paused past its TTL loses the lock to
the next holder, its late fenced write is refused, and its command is stopped (exit 9);
`kvraft elect` hands leadership over when the leader resigns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.client import FenceFailed, KVClient
from kvraft.commands import kv
from kvraft.exit_codes import EXIT_LOCK_LOST
from tests.cluster_harness import Cluster, running, wait_for

__all__: list[str] = []

TTL_S = 3
"""A short TTL the default config allows (the shortest is `kvraft.leases.lease_ttl_s_min`,
3 of the longest election timeouts: 2 s)."""

WAIT_S = 30.0
"""How long a step of a test may take on a slow host."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3))


def endpoints_of(cluster: Cluster) -> str:
    return ",".join(cluster.url(node.id) for node in cluster.config.nodes)


def kvraft(cluster: Cluster, *args: str, **popen: object) -> subprocess.Popen[str]:
    """A `kvraft` command as its own process, talking to `cluster`."""
    environment = {**os.environ, kv.ENDPOINTS_ENV: endpoints_of(cluster)}
    environment.pop("KVRAFT_FENCE", None)
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "kvraft", *args],
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group: `reap` ends its command's processes too
        **popen,
    )


def reap(process: subprocess.Popen[str] | None) -> None:
    """End `process` if it still runs (resumed first, if stopped) and close its pipes."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def finished(process: subprocess.Popen[str], timeout_s: float = WAIT_S) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout_s)
    return process.returncode, out, err


def test_a_held_lock_survives_a_leader_kill(cluster: Cluster) -> None:
    client = KVClient([cluster.url(n.id) for n in cluster.config.nodes], timeout_s=20.0)
    with client.lock("primary", ttl_s=TTL_S, value="n1") as held:
        client.put("primary/state", b"before", fence=held.fence)
        cluster.kill(cluster.leader())
        cluster.leader(among=sorted(cluster.processes))
        client.put("primary/state", b"after", fence=held.fence)  # still the holder
        info = client.lock_info("primary")
        assert info.holder is not None and info.holder.fencing_token == held.fencing_token
        assert not held.lost.is_set()
    assert client.lock_info("primary").holder is None


def test_kvraft_lock_runs_the_command_with_its_token_and_fence(
    cluster: Cluster, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    script = (
        "import os, pathlib, subprocess, sys;"
        f"pathlib.Path({str(token_file)!r}).write_text(os.environ['KVRAFT_FENCING_TOKEN']);"
        "subprocess.run([sys.executable, '-m', 'kvraft', 'put', 'job/out', 'done'], check=True);"
        "sys.exit(7)"
    )
    code, _, err = finished(
        kvraft(cluster, "lock", "job", "--ttl", "10", "--", sys.executable, "-c", script)
    )
    assert code == 7, err  # the command's own status
    token = int(token_file.read_text())
    assert f"fencing token {token}" in err
    client = KVClient([cluster.url(n.id) for n in cluster.config.nodes], timeout_s=20.0)
    found = client.get("job/out")
    assert found is not None and found[0] == b"done" and found[1] > token
    assert client.lock_info("job").holder is None  # released when the command ended
    assert client.leases() == []


def test_a_holder_paused_past_its_ttl_loses_the_lock_and_its_command(
    cluster: Cluster,
) -> None:
    client = KVClient([cluster.url(n.id) for n in cluster.config.nodes], timeout_s=20.0)
    first = kvraft(cluster, "lock", "reg", "--ttl", str(TTL_S), "--", "sleep", "3600")
    try:
        wait_for(lambda: client.lock_info("reg").holder is not None, WAIT_S, "the first to hold")
        first_hold = client.lock_info("reg").holder
        assert first_hold is not None
        first.send_signal(signal.SIGSTOP)  # a long GC pause, past the TTL
        with client.lock("reg", ttl_s=TTL_S) as second:  # once the first's lease expired
            assert second.fencing_token > first_hold.fencing_token
            client.put("register", b"second", fence=second.fence)
            # What the paused holder would write when it wakes: refused.
            with pytest.raises(FenceFailed):
                client.put("register", b"first", fence=first_hold.fence)
            first.send_signal(signal.SIGCONT)
            code, _, err = finished(first)
            assert code == EXIT_LOCK_LOST, err
            assert "lost lock 'reg'" in err
        found = client.get("register")
        assert found is not None and found[0] == b"second"
    finally:
        reap(first)


def test_kvraft_elect_hands_over_when_the_leader_resigns(cluster: Cluster) -> None:
    client = KVClient([cluster.url(n.id) for n in cluster.config.nodes], timeout_s=20.0)
    alpha = kvraft(cluster, "elect", "service", "alpha:8080", "--ttl", "10")
    beta: subprocess.Popen[str] | None = None
    try:
        assert alpha.stdout is not None
        assert alpha.stdout.readline().startswith("elected: service = alpha:8080")
        beta = kvraft(cluster, "elect", "service", "beta:8080", "--ttl", "10")
        wait_for(lambda: bool(client.lock_info("service").waiters), WAIT_S, "beta to campaign")
        alpha.send_signal(signal.SIGINT)  # resign
        assert finished(alpha)[0] == 0
        assert beta.stdout is not None
        assert beta.stdout.readline().startswith("elected: service = beta:8080")
        holder = client.lock_info("service").holder
        assert holder is not None and holder.value == "beta:8080"
    finally:
        reap(alpha)
        reap(beta)
