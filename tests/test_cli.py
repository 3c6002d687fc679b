"""Tests for the user-facing commands: `kvraft put|get|delete|list|status` (kvraft.commands.kv)
run with click's CliRunner against `FakeCluster` (a test double of the server's HTTP API),
and `kvraft cluster` (kvraft.commands.cluster): its pure event narration, table-driven,
its config handling and its pids file. Real-process runs of `cluster up` live elsewhere.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner, Result
from kv_fake_server import FakeCluster, Fault, refused_endpoint

from kvraft.client import Unavailable
from kvraft.commands import cluster as cluster_module
from kvraft.commands import kv
from kvraft.commands.cluster import (
    CONFIG_FILE_NAME,
    PIDS_FILE_BYTES_MAX,
    ClusterSnapshot,
    NodeObservation,
    WatchState,
    observation_from_status,
    observe,
    parse_pids_file,
    prepare_config,
)
from kvraft.commands.member import leader as leader_command
from kvraft.commands.member import member as member_command
from kvraft.config import ClusterConfig, load_config


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(3) as fake:
        yield fake


def run(
    fake: FakeCluster | None,
    command: click.Command,
    *args: str,
    stdin: bytes | None = None,
    endpoints: list[str] | None = None,
) -> Result:
    """Run `command` with KVRAFT_ENDPOINTS pointing at the fake (or `endpoints`)."""
    chosen = endpoints if endpoints is not None else (fake.endpoints if fake else [])
    runner = CliRunner(env={kv.ENDPOINTS_ENV: ",".join(chosen)})
    return runner.invoke(command, list(args), input=stdin)


# --- put / get / delete ------------------------------------------------------------------------


def test_put_then_get_prints_the_exact_bytes(cluster: FakeCluster) -> None:
    value = b"\x00binary\xff\nvalue"
    put = run(cluster, kv.put, "dir/key one", "-", stdin=value)
    assert put.exit_code == 0, put.output
    assert put.stdout == "revision 1\n"
    got = run(cluster, kv.get, "dir/key one")
    assert got.exit_code == 0
    assert got.stdout_bytes == value
    assert cluster.stored("dir/key one") == (value, 1)


def test_put_reads_a_file(cluster: FakeCluster, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "value.bin"
    source.write_bytes(b"from a file")
    assert run(cluster, kv.put, "k", "--file", str(source)).exit_code == 0
    assert cluster.stored("k") == (b"from a file", 1)


def test_value_input_limit_edge(
    cluster: FakeCluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "VALUE_INPUT_BYTES_MAX", 8)
    assert run(cluster, kv.put, "fits", "-", stdin=b"x" * 8).exit_code == 0
    over = run(cluster, kv.put, "over", "-", stdin=b"x" * 9)
    assert over.exit_code == 1
    assert "more than 8 bytes" in over.stderr
    assert cluster.stored("over") is None


def test_put_needs_exactly_one_value_source(cluster: FakeCluster, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "v"
    source.write_bytes(b"v")
    assert run(cluster, kv.put, "k").exit_code == 2
    assert run(cluster, kv.put, "k", "v", "--file", str(source)).exit_code == 2
    assert run(cluster, kv.put, "k", "v", "--if-revision", "1", "--if-absent").exit_code == 2
    assert cluster.requests() == []


def test_get_of_a_missing_key_fails_with_one_line(cluster: FakeCluster) -> None:
    result = run(cluster, kv.get, "missing")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "'missing' not found" in result.stderr


def test_get_show_revision_goes_to_stderr(cluster: FakeCluster) -> None:
    run(cluster, kv.put, "k", "v")
    result = run(cluster, kv.get, "k", "--show-revision", "--stale")
    assert (result.stdout, result.stderr) == ("v", "revision 1\n")
    assert "consistency=stale" in cluster.requests("GET")[-1].raw_path


def test_a_failed_condition_prints_the_current_revision(cluster: FakeCluster) -> None:
    run(cluster, kv.put, "k", "v1")
    run(cluster, kv.put, "k", "v2")
    result = run(cluster, kv.put, "k", "v3", "--if-revision", "1")
    assert result.exit_code == 1
    assert "revision 2" in result.stderr
    absent = run(cluster, kv.put, "k", "v3", "--if-absent")
    assert absent.exit_code == 1 and "revision 2" in absent.stderr
    ok = run(cluster, kv.put, "k", "v3", "--if-revision", "2")
    assert (ok.exit_code, ok.stdout) == (0, "revision 3\n")


def test_delete_reports_whether_the_key_existed(cluster: FakeCluster) -> None:
    run(cluster, kv.put, "k", "v")
    first = run(cluster, kv.delete, "k")
    second = run(cluster, kv.delete, "k")
    assert (first.exit_code, second.exit_code) == (0, 0)
    assert "deleted 'k'" in first.stdout
    assert "did not exist" in second.stdout
    assert cluster.stored("k") is None


def test_idempotency_key_is_passed_through(cluster: FakeCluster) -> None:
    assert run(cluster, kv.put, "k", "v", "--idempotency-key", "once").exit_code == 0
    assert run(cluster, kv.put, "k", "v", "--idempotency-key", "once").stdout == "revision 1\n"
    assert cluster.requests("PUT")[0].headers["Idempotency-Key"] == "once"


# --- endpoints and failures --------------------------------------------------------------------


def test_endpoints_option_overrides_the_environment(cluster: FakeCluster) -> None:
    result = run(
        None,
        kv.put,
        "k",
        "v",
        "--endpoints",
        cluster.endpoint(2),
        endpoints=[refused_endpoint()],
    )
    assert result.exit_code == 0
    assert [r.node_id for r in cluster.requests()] == [2]


def test_a_bad_endpoint_is_a_usage_error(cluster: FakeCluster) -> None:
    result = run(cluster, kv.get, "k", "--endpoints", "ftp://nowhere:21")
    assert result.exit_code == 2
    assert "--endpoints" in result.stderr


def test_an_unreachable_cluster_is_one_line_and_exit_1() -> None:
    result = run(None, kv.get, "k", "--timeout", "0.3", endpoints=[refused_endpoint()])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: unavailable:")
    assert result.stderr.count("\n") == 1


# --- member / leader ----------------------------------------------------------------------------


def test_member_list_add_remove_print_the_members_table(cluster: FakeCluster) -> None:
    listed = run(cluster, member_command, "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NODE", "RAFT", "ADDRESS", "HTTP", "ADDRESS", "ROLE", "MATCH",
                                "CAUGHT", "UP"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:-1]] == ["1", "2", "3"]
    assert lines[-1] == "leader: 1"
    added = run(cluster, member_command, "add", "4", "127.0.0.1:7004", "127.0.0.1:8004",
                "--learner")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert added.stdout.splitlines()[4].split() == [
        "4", "127.0.0.1:7004", "127.0.0.1:8004", "learner", "0", "yes"
    ]  # fmt: skip
    removed = run(cluster, member_command, "remove", "2")
    assert removed.exit_code == 0, removed.output
    assert [line.split()[0] for line in removed.stdout.splitlines()[1:-1]] == ["1", "3", "4"]
    assert removed.stderr == "node 2 is no longer a member; it can be stopped\n"
    assert cluster.member_ids() == [1, 3, 4]


def test_member_refusals_are_one_line_and_exit_1(cluster: FakeCluster) -> None:
    missing = run(cluster, member_command, "remove", "9")
    assert (missing.exit_code, missing.stderr) == (
        1,
        "Error: rejected (unknown_member): no node 9\n",
    )
    cluster.inject(1, Fault(status=409, error="change_in_progress"))
    busy = run(cluster, member_command, "add", "4", "127.0.0.1:7004", "127.0.0.1:8004")
    assert (busy.exit_code, busy.stderr) == (
        1,
        "Error: rejected (change_in_progress): injected by the test\n",
    )
    cluster.inject(1, Fault(drop=True, apply_first=True))
    unknown = run(cluster, member_command, "remove", "3")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("Error: outcome unknown: remove node 3: ")
    assert unknown.stderr.endswith(" (see `kvraft member list`)\n")
    assert len(cluster.requests("DELETE")) == 2  # the ambiguous removal was not repeated


def test_leader_transfer_prints_the_new_leader(cluster: FakeCluster) -> None:
    moved = run(cluster, leader_command, "transfer", "--to", "3")
    assert (moved.exit_code, moved.stdout) == (0, "leader: 3\n")
    assert run(cluster, leader_command, "transfer").stdout == "leader: 1\n"


# --- list --------------------------------------------------------------------------------------


def test_list_shows_keys_revisions_and_value_previews(cluster: FakeCluster) -> None:
    run(cluster, kv.put, "p/a", "alpha")
    run(cluster, kv.put, "p/b", "-", stdin=b"\x1b[31mred\x00")
    run(cluster, kv.put, "q/c", "other")
    result = run(cluster, kv.list_keys, "p/")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "REVISION", "VALUE"]
    assert lines[1].split() == ["p/a", "1", "alpha"]
    # Control characters from the store are escaped, never sent to the terminal raw.
    assert "\x1b" not in result.stdout
    assert lines[2].split()[:2] == ["p/b", "2"] and "\\x1b[31mred\\x00" in lines[2]
    assert len(lines) == 3


def test_list_previews_long_values_within_the_limit(cluster: FakeCluster) -> None:
    run(cluster, kv.put, "long", "y" * (kv.VALUE_PREVIEW_CHARS_MAX + 20))
    run(cluster, kv.put, "edge", "z" * kv.VALUE_PREVIEW_CHARS_MAX)
    lines = run(cluster, kv.list_keys).stdout.splitlines()
    assert lines[1].split()[-1] == "z" * kv.VALUE_PREVIEW_CHARS_MAX
    assert len(lines[2].split()[-1]) == kv.VALUE_PREVIEW_CHARS_MAX
    assert lines[2].endswith("…")


def test_list_limit_stops_and_says_more_may_follow(cluster: FakeCluster) -> None:
    for n in range(5):
        run(cluster, kv.put, f"k{n}", "v")
    result = run(cluster, kv.list_keys, "--limit", "3", "--keys-only")
    assert result.stdout.splitlines() == ["k0", "k1", "k2"]
    assert "more keys may follow 'k2'" in result.stderr
    everything = run(cluster, kv.list_keys, "--keys-only")
    assert everything.stdout.splitlines() == [f"k{n}" for n in range(5)]
    assert everything.stderr == ""


def test_list_of_nothing_says_so(cluster: FakeCluster) -> None:
    result = run(cluster, kv.list_keys, "none/")
    assert (result.exit_code, result.stdout) == (0, "")
    assert "no keys start with 'none/'" in result.stderr


# --- status ------------------------------------------------------------------------------------


def test_status_shows_a_row_per_node_including_unreachable_ones(cluster: FakeCluster) -> None:
    dead = refused_endpoint()
    result = run(cluster, kv.status, endpoints=[*cluster.endpoints, dead])
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == list(kv._STATUS_COLUMNS)
    assert [row.split()[:3] for row in rows[:3]] == [
        ["1", cluster.endpoint(1), "leader"],
        ["2", cluster.endpoint(2), "follower"],
        ["3", cluster.endpoint(3), "follower"],
    ]
    assert all(row.endswith("ok") for row in rows[:3])
    assert dead in rows[3] and "unreachable (connection refused)" in rows[3]


def test_status_with_no_node_answering_exits_1() -> None:
    result = run(None, kv.status, endpoints=[refused_endpoint()])
    assert result.exit_code == 1
    assert "no node answered" in result.stderr


def test_status_watch_reprints_without_ansi_when_not_a_terminal(cluster: FakeCluster) -> None:
    result = run(cluster, kv.status, "--watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0
    assert result.stdout.count("kvraft status at") == 2
    assert result.stdout.count(cluster.endpoint(1)) == 2
    assert "\x1b" not in result.stdout


def test_status_watch_interval_has_a_floor(cluster: FakeCluster) -> None:
    below = str(kv.WATCH_INTERVAL_S_MIN / 2)
    assert run(cluster, kv.status, "--watch", "--interval", below).exit_code == 2


def _status(
    role: str = "follower", leader_id: int = 1, commit: int = 5000, applied: int = 5000
) -> dict[str, object]:
    return {
        "id": 1,
        "role": role,
        "term": 3,
        "leader_id": leader_id,
        "commit_index": commit,
        "applied_index": applied,
    }


def test_status_health_flags_lag_beyond_the_threshold_and_a_missing_leader() -> None:
    commit = 10_000
    at_edge = commit - kv.LAG_ENTRIES_WARN
    table = kv.render_status_table(
        {
            "http://a:1": _status("leader", commit=commit, applied=commit),
            "http://b:1": _status(commit=commit, applied=at_edge),
            "http://c:1": _status(commit=commit, applied=at_edge - 1),
            "http://d:1": _status(leader_id=0, commit=commit, applied=commit),
            "http://e:1": Unavailable("http://e:1: timed out"),
        }
    )
    rows = table.splitlines()[1:]
    assert rows[0].endswith("ok") and rows[1].endswith("ok")
    assert rows[2].endswith(f"lagging ({kv.LAG_ENTRIES_WARN + 1} entries behind)")
    assert rows[3].endswith("no leader")
    assert rows[4].endswith("unreachable (timed out)")


def test_status_health_says_when_a_membership_change_is_pending() -> None:
    pending = {**_status("leader", commit=7, applied=7), "membership_change_pending": True}
    not_a_flag = {**_status(commit=7, applied=7), "membership_change_pending": "yes"}
    table = kv.render_status_table({"http://a:1": pending, "http://b:1": not_a_flag})
    rows = table.splitlines()[1:]
    assert rows[0].endswith("ok; membership change pending")
    assert rows[1].endswith("ok")


def test_status_table_escapes_hostile_fields() -> None:
    table = kv.render_status_table({"http://a:1": {"role": "\x1b[2Jleader", "term": "x"}})
    assert "\x1b" not in table


# --- cluster: the narration --------------------------------------------------------------------

UP = NodeObservation(reachable=True, role="follower", term=1, pid=100)
DOWN = NodeObservation(reachable=False)


def leader(term: int, pid: int = 100) -> NodeObservation:
    return NodeObservation(reachable=True, role="leader", term=term, pid=pid)


def follower(term: int, pid: int = 100) -> NodeObservation:
    return NodeObservation(reachable=True, role="follower", term=term, pid=pid)


def narrate(
    *polls: tuple[float, dict[int, NodeObservation], dict[int, int]],
) -> list[list[str]]:
    """Feed polls (at_ms, nodes, exit codes) through `observe`; the event texts per poll."""
    state = WatchState.initial()
    texts = []
    for at_ms, nodes, exit_codes in polls:
        state, events = observe(state, ClusterSnapshot(at_ms, nodes, exit_codes))
        texts.append([event.text for event in events])
    return texts


@pytest.mark.parametrize(
    ("polls", "expected"),
    [
        pytest.param(
            [
                (0, {1: DOWN, 2: DOWN}, {}),
                (100, {1: follower(0), 2: DOWN}, {}),
                (350, {1: follower(1), 2: follower(1)}, {}),
                (912, {1: follower(1), 2: leader(1)}, {}),
            ],
            [
                [],
                ["node 1 up (follower)"],
                ["node 2 up (follower)"],
                ["leader elected: node 2 (term 1) after 812 ms without a leader"],
            ],
            id="first-election-timed-from-the-first-answer",
        ),
        pytest.param(
            [(5, {1: leader(4), 2: follower(4)}, {})],
            [["node 1 up (leader)", "node 2 up (follower)", "leader elected: node 1 (term 4)"]],
            id="leader-already-there",
        ),
        pytest.param(
            [
                (0, {1: leader(2), 2: follower(2), 3: follower(2)}, {}),
                (100, {1: DOWN, 2: follower(2), 3: follower(2)}, {1: -9}),
                (200, {1: DOWN, 2: follower(2), 3: follower(2)}, {1: -9}),
                (700, {1: DOWN, 2: follower(3), 3: leader(3)}, {1: -9}),
            ],
            [
                [
                    "node 1 up (leader)",
                    "node 2 up (follower)",
                    "node 3 up (follower)",
                    "leader elected: node 1 (term 2)",
                ],
                ["node 1 process exited (code -9, SIGKILL)", "leader lost: node 1 (term 2)"],
                [],
                ["leader elected: node 3 (term 3) after 600 ms without a leader"],
            ],
            id="leader-killed-then-replaced",
        ),
        pytest.param(
            [
                (0, {1: leader(2), 2: follower(2)}, {}),
                (100, {1: leader(2), 2: DOWN}, {}),
                (200, {1: leader(2), 2: follower(2, pid=200)}, {}),
            ],
            [
                ["node 1 up (leader)", "node 2 up (follower)", "leader elected: node 1 (term 2)"],
                ["node 2 unreachable"],
                ["node 2 back (follower)"],
            ],
            id="follower-unreachable-then-back",
        ),
        pytest.param(
            [
                (0, {1: follower(1)}, {}),
                (100, {1: DOWN}, {1: 1}),
                (200, {1: DOWN}, {1: 1}),
                (300, {1: follower(1, pid=555)}, {1: 1}),
                (400, {1: DOWN}, {1: 1}),
            ],
            [
                ["node 1 up (follower)"],
                ["node 1 process exited (code 1)"],
                [],
                ["node 1 back (follower)"],
                ["node 1 unreachable"],
            ],
            id="exit-reported-once-and-restart-by-hand-tracked",
        ),
        pytest.param(
            [
                (0, {1: leader(2), 2: follower(2)}, {}),
                (100, {1: follower(3), 2: leader(3)}, {}),
                (200, {1: follower(3), 2: leader(5)}, {}),
            ],
            [
                ["node 1 up (leader)", "node 2 up (follower)", "leader elected: node 1 (term 2)"],
                [
                    "node 1: leader -> follower (term 3)",
                    "leader elected: node 2 (term 3), replacing node 1 (term 2)",
                ],
                ["leader elected: node 2 (term 5) again (was term 3)"],
            ],
            id="leadership-moves-without-a-gap",
        ),
        pytest.param(
            [
                (0, {1: leader(2), 2: follower(2), 3: follower(2)}, {}),
                (100, {1: leader(2), 2: leader(3), 3: follower(3)}, {}),
            ],
            [
                [
                    "node 1 up (leader)",
                    "node 2 up (follower)",
                    "node 3 up (follower)",
                    "leader elected: node 1 (term 2)",
                ],
                ["leader elected: node 2 (term 3), replacing node 1 (term 2)"],
            ],
            id="a-deposed-leader-in-an-older-term-is-not-the-leader",
        ),
        pytest.param(
            [
                (0, {1: follower(1, pid=10)}, {}),
                (100, {1: follower(1, pid=11)}, {}),
                (200, {1: NodeObservation(True, "candidate", 2, 11)}, {}),
            ],
            [
                ["node 1 up (follower)"],
                ["node 1 restarted (pid 10 -> 11, follower)"],
                ["node 1: follower -> candidate (term 2)"],
            ],
            id="restart-between-polls-and-role-change",
        ),
    ],
)
def test_cluster_events(
    polls: list[tuple[float, dict[int, NodeObservation], dict[int, int]]],
    expected: list[list[str]],
) -> None:
    assert narrate(*polls) == expected


def test_observation_from_untrusted_status() -> None:
    assert observation_from_status(Unavailable("x")) == DOWN
    assert observation_from_status(None) == DOWN
    assert observation_from_status({"role": "leader", "term": 4, "pid": 9}) == leader(4, pid=9)
    garbage = observation_from_status({"role": "\x1b[2J", "term": True, "pid": -1})
    assert garbage == NodeObservation(reachable=True, role="?", term=0, pid=0)


# --- cluster: config and pids file -------------------------------------------------------------


def _prepare(
    data_dir: pathlib.Path,
    nodes: int | None = None,
    http_port_base: int | None = None,
    raft_port_base: int | None = None,
    host: str | None = None,
) -> tuple[ClusterConfig, bool]:
    return prepare_config(
        data_dir,
        nodes=nodes,
        http_port_base=http_port_base,
        raft_port_base=raft_port_base,
        host=host,
    )


def test_cluster_config_is_written_once_and_then_reused(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "cluster"
    config, created = _prepare(data_dir, nodes=5, http_port_base=9101)
    assert created
    assert [spec.http_port for spec in config.nodes] == [9101, 9102, 9103, 9104, 9105]
    assert load_config(data_dir / CONFIG_FILE_NAME) == config
    again, created_again = _prepare(data_dir)
    assert not created_again and again == config
    same, _ = _prepare(data_dir, nodes=5, http_port_base=9101)
    assert same == config


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"nodes": 3}, "5 nodes, not 3"),
        ({"http_port_base": 8001}, "--http-port-base"),
        ({"raft_port_base": 9999}, "--raft-port-base"),
        ({"host": "127.0.0.2"}, "--host"),
    ],
)
def test_cluster_config_refuses_contradicting_options(
    tmp_path: pathlib.Path, options: dict[str, object], named: str
) -> None:
    _prepare(tmp_path, nodes=5, http_port_base=9101)
    with pytest.raises(click.UsageError, match=named):
        _prepare(tmp_path, **options)  # type: ignore[arg-type]


def test_pids_file_parsing() -> None:
    assert parse_pids_file(b"1 100\n2 200\n\n3 300\n") == {1: 100, 2: 200, 3: 300}
    for bad in [b"1\n", b"1 x\n", b"1 100\n1 101\n", b"0 100\n", b"1 100 7\n", b"-1 5\n"]:
        with pytest.raises(ValueError):
            parse_pids_file(bad)


def test_pids_file_size_limit_edge() -> None:
    line = b"1 100\n"
    at_limit = line + b" " * (PIDS_FILE_BYTES_MAX - len(line))
    assert parse_pids_file(at_limit) == {1: 100}
    with pytest.raises(ValueError):
        parse_pids_file(at_limit + b" ")


def test_cluster_down_without_a_pids_file_stops_nothing(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(cluster_module.cluster, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "no running nodes" in result.stdout


@pytest.mark.skipif(
    not pathlib.Path("/proc/self/cmdline").exists(), reason="needs /proc to tell processes apart"
)
def test_cluster_down_skips_pids_that_are_not_our_nodes(tmp_path: pathlib.Path) -> None:
    # This test process is alive but is not `kvraft serve` for this config: never signalled.
    (tmp_path / "pids").write_text(f"1 {os.getpid()}\n")
    result = CliRunner().invoke(cluster_module.cluster, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "skipped" in result.stdout


# --- TLS (issue #20) -----------------------------------------------------------------------------


def _commands(group: click.Group, path: str = "kvraft") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_client_command_takes_the_ca_a_client_certificate_and_its_key() -> None:
    from kvraft.cli import main

    client_commands = [
        (path, command)
        for path, command in _commands(main)
        if any(parameter.name == "endpoints_text" for parameter in command.params)
    ]
    assert len(client_commands) >= 15  # put, get, ..., member, leader, backup, bench, events
    for path, command in client_commands:
        options = {
            option: parameter
            for parameter in command.params
            if isinstance(parameter, click.Option)
            for option in parameter.opts
        }
        # `kvraft watch --key K` watches a key: its private key's option is --tls-key.
        key_flag = "--tls-key" if path == "kvraft watch" else "--key"
        for option, variable in (
            ("--cacert", "KVRAFT_CACERT"),
            ("--cert", "KVRAFT_CERT"),
            (key_flag, "KVRAFT_KEY"),
        ):
            assert option in options, f"{path} has no {option}"
            assert options[option].envvar == variable, path


def test_a_tls_option_naming_a_missing_file_is_a_usage_error(cluster: FakeCluster) -> None:
    result = run(cluster, kv.get, "k", "--cacert", "/nonexistent/ca.crt")
    assert result.exit_code == 2
    assert "--cacert" in result.stderr
    # A file that is not PEM is refused before anything is sent, naming the option.
    not_pem = run(cluster, kv.get, "k", "--cacert", __file__)
    assert not_pem.exit_code == 2
    assert "'--cacert'" in not_pem.stderr and "not a PEM CA" in not_pem.stderr
    not_a_file = run(cluster, kv.get, "k", "--cacert", "/dev/null")
    assert not_a_file.exit_code == 2 and "/dev/null is not a regular file" in not_a_file.stderr


def test_cluster_up_tls_writes_https_and_peer_tls_with_certificates_beside_the_config(
    tmp_path: pathlib.Path,
) -> None:
    data_dir = tmp_path / "cluster"
    config, created = prepare_config(
        data_dir, nodes=3, http_port_base=9101, raft_port_base=9201, host=None, tls=True
    )
    assert created and config.tls is not None and config.peer_tls is not None
    certs = data_dir.resolve() / cluster_module.CERTS_DIR_NAME
    assert config.tls.for_node(2).cert == certs / "node2.crt"
    assert config.tls.client_ca is None  # clients need the CA, not a certificate
    assert config.peer_tls.ca == certs / "ca.crt"
    for name in ("ca.crt", "node1.crt", "node3.key", "client.crt"):
        assert (certs / name).exists(), name
    assert config.url(config.nodes[0]) == "https://127.0.0.1:9101"
    # Resumed, with or without --tls, it is the same TLS cluster; a plain one refuses --tls.
    assert (
        prepare_config(data_dir, nodes=None, http_port_base=None, raft_port_base=None, host=None)[0]
        == config
    )
    (certs / "node3.crt").unlink()
    (certs / "node3.key").unlink()
    again, _ = prepare_config(
        data_dir, nodes=None, http_port_base=None, raft_port_base=None, host=None, tls=True
    )
    assert again == config and (certs / "node3.crt").exists()  # missing ones made again
    plain = tmp_path / "plain"
    _prepare(plain)
    with pytest.raises(click.UsageError, match="without TLS"):
        prepare_config(
            plain, nodes=None, http_port_base=None, raft_port_base=None, host=None, tls=True
        )
