"""Tests for kvraft.config: the shipped configs, every refusal rule, rendering and resolution."""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft import statemachine
from kvraft.config import (
    BATCH_BYTES_MAX_HIGHEST,
    CLUSTER_ID_CHARS_MAX,
    CONFIG_FILE_BYTES_MAX,
    DATA_DIR_BYTES_MAX,
    ELECTION_TICKS_MAX,
    INFLIGHT_MAX_HIGHEST,
    KEY_BYTES_MAX_HIGHEST,
    NODE_ID_MAX,
    NODES_MAX,
    PORT_MAX,
    PROPOSALS_PENDING_MAX_HIGHEST,
    REQUEST_TIMEOUT_MS_MAX,
    SEGMENT_BYTES_MAX_HIGHEST,
    SEGMENT_BYTES_MAX_LOWEST,
    SNAPSHOT_THRESHOLD_ENTRIES_MAX,
    SNAPSHOTS_KEPT_MAX,
    TICK_MS_MAX,
    VALUE_BYTES_MAX_HIGHEST,
    ClusterConfig,
    ConfigError,
    LimitSettings,
    NodeSpec,
    PeerTlsSettings,
    RaftSettings,
    StorageSettings,
    TlsSettings,
    load_config,
    local_cluster_config,
    parse_config,
    render_config,
)
from kvraft.raft import codec
from kvraft.raft.log import ENTRY_OVERHEAD_BYTES
from kvraft.shell import READY_ENTRY_BYTES_MAX
from kvraft.storage import wal

__all__: list[str] = []

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
BASE_DIR = pathlib.Path("/srv/kvraft")

# A valid three-node config in the contract's layout; each refusal test changes one line.
VALID = """\
cluster_id = "kvraft-test"

[raft]
tick_ms = 50
election_ticks = 8
heartbeat_ticks = 2
inflight_max = 64
batch_bytes_max = 1048576
pre_vote = true
check_quorum = true

[storage]
fsync = true
segment_bytes_max = 67108864
snapshot_threshold_entries = 10000
snapshots_kept = 2

[limits]
key_bytes_max = 1024
value_bytes_max = 1048576
request_timeout_ms = 5000
proposals_pending_max = 10000

[[nodes]]
id = 1
raft_address = "127.0.0.1:7001"
http_address = "127.0.0.1:8001"
data_dir = "data/node1"

[[nodes]]
id = 2
raft_address = "127.0.0.1:7002"
http_address = "127.0.0.1:8002"
data_dir = "data/node2"
voter = true

[[nodes]]
id = 3
raft_address = "127.0.0.1:7003"
http_address = "127.0.0.1:8003"
data_dir = "data/node3"
voter = false
"""


def edit(old: str, new: str, text: str = VALID) -> str:
    """`text` with its one occurrence of `old` replaced (so each case changes what it says)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def refusal(text: str) -> str:
    """The ConfigError message for `text` (which must be refused)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, BASE_DIR)
    return str(caught.value)


# --- The shipped configs ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_shipped_local_configs_describe_a_loopback_cluster_under_the_repo_data_dir(
    size: int,
) -> None:
    config = load_config(CONFIGS / f"cluster-{size}.toml")
    assert [node.id for node in config.nodes] == list(range(1, size + 1))
    for node in config.nodes:
        assert node.raft_address == f"127.0.0.1:{7000 + node.id}"
        assert node.http_url == f"http://127.0.0.1:{8000 + node.id}"
        assert node.data_dir == REPO / "data" / f"cluster-{size}" / f"node{node.id}"
        assert node.voter
    assert config.storage.fsync, "the shipped configs must be durable"
    assert config.path == CONFIGS / f"cluster-{size}.toml"


def test_the_two_local_configs_name_different_clusters_so_their_nodes_never_mix() -> None:
    three = load_config(CONFIGS / "cluster-3.toml")
    five = load_config(CONFIGS / "cluster-5.toml")
    assert three.cluster_id != five.cluster_id


@pytest.mark.parametrize("name", ["cluster-3.toml", "cluster-5.toml"])
def test_shipped_configs_document_every_setting_with_a_comment(name: str) -> None:
    lines = (CONFIGS / name).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"{name}:{number + 1} has no comment: {line}"


@pytest.mark.parametrize("name", ["cluster-3.toml", "cluster-5.toml"])
def test_ranges_stated_in_the_shipped_comments_are_the_ranges_enforced(name: str) -> None:
    # A comment ending "(lo..hi)" documents the key below it; both ends must load and one past
    # either end must be refused, so the documentation cannot drift from the validator.
    text = (CONFIGS / name).read_text(encoding="utf-8")
    # Make room for the cross-rule heartbeat_ticks < election_ticks at both ends of each.
    text, replaced = re.subn(
        r"(?m)^election_ticks = \d+$", f"election_ticks = {ELECTION_TICKS_MAX}", text
    )
    assert replaced == 1
    text = text.replace("heartbeat_ticks = 2", "heartbeat_ticks = 1")
    lines = text.splitlines()
    section = ""
    checked = 0
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        if "=" not in line or line.startswith("#") or not lines[number - 1].endswith(")"):
            continue
        stated = lines[number - 1].rsplit("(", 1)[1].rstrip(")")
        lowest, highest = (int(bound) for bound in stated.split(".."))
        key = line.split("=")[0].strip()
        for value, accepted in [
            (lowest, True),
            (highest, True),
            (lowest - 1, False),
            (highest + 1, False),
        ]:
            changed = "\n".join([*lines[:number], f"{key} = {value}", *lines[number + 1 :]])
            if accepted:
                parse_config(changed, CONFIGS)
            else:
                assert f"{section}.{key}" in refusal(changed)
        checked += 1
    assert checked == 21, "every integer setting states its range"


@pytest.mark.parametrize("size", [3, 5])
def test_docker_configs_name_compose_services_and_the_data_volume(size: int) -> None:
    config = load_config(CONFIGS / f"docker-{size}.toml")
    assert [node.id for node in config.nodes] == list(range(1, size + 1))
    for node in config.nodes:
        assert node.raft_address == f"node{node.id}:{7000 + node.id}"
        assert node.http_address == f"node{node.id}:{8000 + node.id}"
        assert node.data_dir == pathlib.Path("/data")
        # A service name: listen everywhere, so the container's 127.0.0.1 health check works.
        assert node.raft_listen_host is None
        assert node.http_listen_host is None
    local = load_config(CONFIGS / f"cluster-{size}.toml")
    assert (config.raft, config.storage, config.limits) == (local.raft, local.storage, local.limits)


# --- Refusals: keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('cluster_id = "kvraft-test"', 'cluster_id = "kvraft-test"\ncolour = "red"', "'colour'"),
        ("tick_ms = 50", "tick_ms = 50\ntick = 5", "unknown key 'raft.tick'"),
        ("fsync = true", "fsync = true\nsync = 1", "unknown key 'storage.sync'"),
        ("key_bytes_max = 1024", "key_bytes_max = 1024\nkeys_max = 1", "'limits.keys_max'"),
        ("id = 2", "id = 2\nport = 1", "unknown key 'nodes[1].port'"),
        ("[limits]", "[logging]\nlevel = 1\n\n[limits]", "unknown key 'logging'"),
    ],
)
def test_unknown_keys_are_refused_by_their_full_path(old: str, new: str, message: str) -> None:
    assert message in refusal(edit(old, new))


@pytest.mark.parametrize(
    ("old", "key_path"),
    [
        ('cluster_id = "kvraft-test"\n', "cluster_id"),
        ("pre_vote = true\n", "raft.pre_vote"),
        ("snapshots_kept = 2\n", "storage.snapshots_kept"),
        ("request_timeout_ms = 5000\n", "limits.request_timeout_ms"),
        ('data_dir = "data/node1"\n', "nodes[0].data_dir"),
        ('http_address = "127.0.0.1:8002"\n', "nodes[1].http_address"),
        ("id = 3\n", "nodes[2].id"),
    ],
)
def test_missing_required_keys_are_refused_by_their_full_path(old: str, key_path: str) -> None:
    assert f"{key_path}: missing required key" in refusal(edit(old, ""))


def test_a_missing_table_is_refused_by_name() -> None:
    text = VALID.replace("[storage]", "[storage_settings]")
    assert "unknown key 'storage_settings'" in refusal(text)
    storage_lines = VALID.split("[storage]")[1].split("[limits]")[0]
    assert "storage: missing required key" in refusal(edit("[storage]" + storage_lines, ""))


def test_a_config_without_nodes_is_refused() -> None:
    before_nodes = VALID.split("[[nodes]]")[0]
    assert "nodes: missing required key" in refusal(before_nodes)
    assert "nodes: must have 1.." in refusal("nodes = []\n" + before_nodes)


def test_voter_is_optional_and_defaults_to_true() -> None:
    config = parse_config(VALID, BASE_DIR)
    assert [node.voter for node in config.nodes] == [True, True, False]


# --- Refusals: types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("tick_ms = 50", "tick_ms = true", "raft.tick_ms: expected an integer, got a boolean"),
        ("tick_ms = 50", "tick_ms = 50.0", "raft.tick_ms: expected an integer, got a float"),
        ("tick_ms = 50", 'tick_ms = "50"', "raft.tick_ms: expected an integer, got a string"),
        ("tick_ms = 50", "tick_ms = 1979-05-27", "raft.tick_ms: expected an integer, got date"),
        ("pre_vote = true", "pre_vote = 1", "raft.pre_vote: expected true or false"),
        ("fsync = true", 'fsync = "yes"', "storage.fsync: expected true or false"),
        ("id = 1", 'id = "1"', "nodes[0].id: expected an integer"),
        ("id = 2", "id = true", "nodes[1].id: expected an integer, got a boolean"),
        ("voter = false", 'voter = "no"', "nodes[2].voter: expected true or false"),
        ('raft_address = "127.0.0.1:7001"', "raft_address = 7001", "nodes[0].raft_address"),
        ('data_dir = "data/node2"', "data_dir = [1]", "nodes[1].data_dir: expected a string"),
        ('cluster_id = "kvraft-test"', "cluster_id = 7", "cluster_id: expected a string"),
    ],
)
def test_values_of_the_wrong_type_are_refused_by_key(old: str, new: str, message: str) -> None:
    assert message in refusal(edit(old, new))


def test_a_settings_table_must_be_a_table() -> None:
    raft_table = "[raft]" + VALID.split("[storage]")[0].split("[raft]")[1]
    text = edit('cluster_id = "kvraft-test"', 'cluster_id = "kvraft-test"\nraft = 5')
    text = edit(raft_table, "", text)
    assert refusal(text) == "raft: expected a table, got an integer"


def test_nodes_must_be_an_array_of_tables() -> None:
    before_nodes = VALID.split("[[nodes]]")[0]
    assert "nodes: expected an array of tables" in refusal("nodes = 5\n" + before_nodes)
    assert "nodes[1]: expected a table, got an integer" in refusal(
        before_nodes.replace("cluster_id", "nodes = [{}, 7]\ncluster_id")
    )


# --- Refusals: ranges -------------------------------------------------------------------------

# (TOML line in VALID_EDGES, key path, lowest accepted, highest accepted).
SETTING_RANGES = [
    ("tick_ms = 50", "raft.tick_ms", 1, TICK_MS_MAX),
    ("election_ticks = 1000", "raft.election_ticks", 2, ELECTION_TICKS_MAX),
    ("heartbeat_ticks = 1", "raft.heartbeat_ticks", 1, ELECTION_TICKS_MAX - 1),
    ("inflight_max = 64", "raft.inflight_max", 1, INFLIGHT_MAX_HIGHEST),
    ("batch_bytes_max = 1048576", "raft.batch_bytes_max", 1, BATCH_BYTES_MAX_HIGHEST),
    (
        "segment_bytes_max = 67108864",
        "storage.segment_bytes_max",
        SEGMENT_BYTES_MAX_LOWEST,
        SEGMENT_BYTES_MAX_HIGHEST,
    ),
    (
        "snapshot_threshold_entries = 10000",
        "storage.snapshot_threshold_entries",
        1,
        SNAPSHOT_THRESHOLD_ENTRIES_MAX,
    ),
    ("snapshots_kept = 2", "storage.snapshots_kept", 1, SNAPSHOTS_KEPT_MAX),
    ("key_bytes_max = 1024", "limits.key_bytes_max", 1, KEY_BYTES_MAX_HIGHEST),
    ("value_bytes_max = 1048576", "limits.value_bytes_max", 1, VALUE_BYTES_MAX_HIGHEST),
    ("request_timeout_ms = 5000", "limits.request_timeout_ms", 1, REQUEST_TIMEOUT_MS_MAX),
    (
        "proposals_pending_max = 10000",
        "limits.proposals_pending_max",
        1,
        PROPOSALS_PENDING_MAX_HIGHEST,
    ),
    ("id = 1", "nodes[0].id", 1, NODE_ID_MAX),
]
# heartbeat 1 and election at its maximum leave room to move either to both of its edges.
VALID_EDGES = edit(
    "heartbeat_ticks = 2",
    "heartbeat_ticks = 1",
    edit("election_ticks = 8", f"election_ticks = {ELECTION_TICKS_MAX}"),
)


@pytest.mark.parametrize(("line", "key_path", "lowest", "highest"), SETTING_RANGES)
def test_integer_settings_are_accepted_at_both_edges_and_refused_past_them(
    line: str, key_path: str, lowest: int, highest: int
) -> None:
    key = line.split(" = ")[0]
    # A node id must stay distinct from the other nodes' 2 and 3.
    taken = {2, 3} if key == "id" else set()
    for value in {lowest, highest} - taken:
        parse_config(edit(line, f"{key} = {value}", VALID_EDGES), BASE_DIR)
    for value in (lowest - 1, highest + 1):
        message = refusal(edit(line, f"{key} = {value}", VALID_EDGES))
        assert message == f"{key_path}: must be in {lowest}..{highest}, got {value}"


def test_limits_stay_within_what_the_rest_of_the_system_accepts() -> None:
    # The contract's ceilings, and never more than the state machine applies or the WAL and
    # the wire can carry: a config may only narrow what the layers below accept.
    assert min(65536, statemachine.KEY_BYTES_MAX) >= KEY_BYTES_MAX_HIGHEST
    assert min(64 * 1024 * 1024, statemachine.VALUE_BYTES_MAX) >= VALUE_BYTES_MAX_HIGHEST
    assert SEGMENT_BYTES_MAX_LOWEST >= wal.SEGMENT_BYTES_MAX_LOWEST
    assert SEGMENT_BYTES_MAX_HIGHEST <= wal.SEGMENT_BYTES_MAX_HIGHEST
    assert BATCH_BYTES_MAX_HIGHEST + statemachine.COMMAND_BYTES_MAX < codec.MESSAGE_BYTES_MAX
    assert NODES_MAX <= codec.MEMBERS_MAX
    assert NODE_ID_MAX == 2**31 - 1
    assert PORT_MAX == 65535


def test_every_write_a_node_builds_fits_one_wal_frame_whatever_the_settings() -> None:
    # The shell feeds at most READY_ENTRY_BYTES_MAX per Ready, then one more input: one
    # proposal, or one AppendEntries of the largest batch plus the entry that overflows it.
    # Storage refuses a larger write as a disk failure, so this must hold for every config.
    largest_input = BATCH_BYTES_MAX_HIGHEST + statemachine.COMMAND_BYTES_MAX + ENTRY_OVERHEAD_BYTES
    hard_state_bytes = 64
    assert READY_ENTRY_BYTES_MAX + largest_input + hard_state_bytes < wal.RECORD_PAYLOAD_BYTES_MAX


def test_the_write_admission_budget_defaults_to_64_largest_writes() -> None:
    derived = parse_config(edit("value_bytes_max = 1048576", "value_bytes_max = 1000"), BASE_DIR)
    assert derived.limits.write_bytes_pending_max == 64 * (1000 + 1024)
    given = parse_config(
        edit("value_bytes_max = 1048576", "value_bytes_max = 1048576\nwrite_bytes_pending_max = 5"),
        BASE_DIR,
    )
    assert given.limits.write_bytes_pending_max == 5


def test_election_ticks_must_exceed_heartbeat_ticks() -> None:
    equal = edit("election_ticks = 8", "election_ticks = 2")
    assert refusal(equal) == "raft.election_ticks: must be > heartbeat_ticks (2), got 2"
    below = edit("heartbeat_ticks = 2", "heartbeat_ticks = 9")
    assert refusal(below) == "raft.election_ticks: must be > heartbeat_ticks (9), got 8"
    parse_config(edit("election_ticks = 8", "election_ticks = 3"), BASE_DIR)


@pytest.mark.parametrize(
    ("cluster_id", "accepted"),
    [
        ("a", True),
        ("A-z_0.9", True),
        ("x" * CLUSTER_ID_CHARS_MAX, True),
        ("x" * (CLUSTER_ID_CHARS_MAX + 1), False),
        ("", False),
        ("has space", False),
        ("slash/name", False),
        ("naïve", False),
        ("trailing\n", False),
    ],
)
def test_cluster_id_is_short_and_plain(cluster_id: str, accepted: bool) -> None:
    text = edit('cluster_id = "kvraft-test"', f"cluster_id = {json.dumps(cluster_id)}")
    if accepted:
        assert parse_config(text, BASE_DIR).cluster_id == cluster_id
    else:
        assert refusal(text).startswith("cluster_id: must be 1..64 characters")


def test_the_cluster_id_rule_holds_for_ids_built_in_code() -> None:
    with pytest.raises(ConfigError, match="cluster_id"):
        local_cluster_config(1, pathlib.Path("/tmp/x"), cluster_id="bad id")


# --- Refusals: nodes --------------------------------------------------------------------------


def test_duplicate_node_ids_are_refused() -> None:
    assert refusal(edit("id = 2", "id = 1")) == "nodes[1].id: duplicate id 1"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"127.0.0.1:7002"',
            '"127.0.0.1:7001"',
            "nodes[1].raft_address: duplicate address 127.0.0.1:7001"
            " (already nodes[0].raft_address)",
        ),
        (
            '"127.0.0.1:8003"',
            '"127.0.0.1:8002"',
            "nodes[2].http_address: duplicate address 127.0.0.1:8002"
            " (already nodes[1].http_address)",
        ),
        (
            '"127.0.0.1:8002"',
            '"127.0.0.1:7001"',
            "nodes[1].http_address: duplicate address 127.0.0.1:7001"
            " (already nodes[0].raft_address)",
        ),
        (
            '"127.0.0.1:8001"',
            '"127.0.0.1:7001"',
            "nodes[0].http_address: duplicate address 127.0.0.1:7001"
            " (already nodes[0].raft_address)",
        ),
    ],
)
def test_every_address_is_used_once_across_raft_and_http(old: str, new: str, message: str) -> None:
    assert refusal(edit(old, new)) == message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("localhost:7001", "LOCALHOST:7001"),
        ("[::1]:7001", "[0:0::1]:7001"),
        ("n1:7001", "n1.:7001"),
    ],
)
def test_addresses_that_differ_only_in_spelling_are_duplicates(first: str, second: str) -> None:
    text = edit('"127.0.0.1:7001"', f'"{first}"')
    text = edit('"127.0.0.1:7002"', f'"{second}"', text)
    assert "nodes[1].raft_address: duplicate address" in refusal(text)


def test_at_least_one_node_must_vote() -> None:
    text = edit("id = 1\n", "id = 1\nvoter = false\n")
    text = edit("voter = true", "voter = false", text)
    assert refusal(text).startswith("nodes: at least one node must be a voter")


def test_the_node_count_is_bounded() -> None:
    def nodes_text(count: int) -> str:
        before_nodes = VALID.split("[[nodes]]")[0]
        return before_nodes + "".join(
            f'[[nodes]]\nid = {i}\nraft_address = "10.0.0.1:{10000 + i}"\n'
            f'http_address = "10.0.0.1:{20000 + i}"\ndata_dir = "n{i}"\n'
            for i in range(1, count + 1)
        )

    assert len(parse_config(nodes_text(NODES_MAX), BASE_DIR).nodes) == NODES_MAX
    assert refusal(nodes_text(NODES_MAX + 1)) == (
        f"nodes: must have 1..{NODES_MAX} [[nodes]] tables, got {NODES_MAX + 1}"
    )


# --- Addresses --------------------------------------------------------------------------------

LONGEST_NAME = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:7001", "127.0.0.1", 7001),
        ("10.1.2.3:1", "10.1.2.3", 1),
        (f"192.168.0.1:{PORT_MAX}", "192.168.0.1", PORT_MAX),
        ("[::1]:7001", "::1", 7001),
        ("[2001:DB8:0:0::1]:7001", "2001:db8::1", 7001),
        ("localhost:7001", "localhost", 7001),
        ("node1:7001", "node1", 7001),
        ("kv_node-2:7001", "kv_node-2", 7001),
        ("Node1.Example.COM.:7001", "node1.example.com", 7001),
        (f"{'a' * 63}:7001", "a" * 63, 7001),
        (f"{LONGEST_NAME}:7001", LONGEST_NAME, 7001),
    ],
)
def test_addresses_accept_ip_literals_localhost_and_dns_names(
    address: str, host: str, port: int
) -> None:
    node = parse_config(edit('"127.0.0.1:7001"', f'"{address}"'), BASE_DIR).nodes[0]
    assert (node.raft_host, node.raft_port) == (host, port)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "expected host:port"),
        (":7001", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        ("127.0.0.1:+80", "expected host:port"),
        ("127.0.0.1: 80", "expected host:port"),
        ("127.0.0.1:123456", "expected host:port"),
        ("::1:7001", "expected host:port (an IPv6 host goes in brackets)"),
        ("127.0.0.1:0", f"port must be in 1..{PORT_MAX}, got 0"),
        (f"127.0.0.1:{PORT_MAX + 1}", f"port must be in 1..{PORT_MAX}, got {PORT_MAX + 1}"),
        ("[zz]:7001", "'[zz]' is not an IPv6 address in brackets"),
        ("[127.0.0.1]:7001", "is not an IPv6 address in brackets"),
        ("256.1.1.1:7001", "'256.1.1.1' is not a valid IPv4 address"),
        ("1234:7001", "'1234' is not a valid IPv4 address"),
        ("0.0.0.0:7001", "0.0.0.0 is not an address peers or clients can connect to"),
        ("[::]:7001", ":: is not an address peers or clients can connect to"),
        ("bad host:7001", "host 'bad host' is not an IP address, 'localhost' or a DNS name"),
        ("-node:7001", "is not an IP address, 'localhost' or a DNS name"),
        ("node-:7001", "is not an IP address, 'localhost' or a DNS name"),
        ("a..b:7001", "is not an IP address, 'localhost' or a DNS name"),
        (f"{'a' * 64}:7001", "is not an IP address, 'localhost' or a DNS name"),
        (f"{LONGEST_NAME}b:7001", "is not an IP address, 'localhost' or a DNS name"),
        ("http://node1:7001", "expected host:port"),
        ("x" * 300 + ":7001", "longer than"),
    ],
)
def test_malformed_addresses_are_refused_by_key(address: str, message: str) -> None:
    assert refusal(edit('"127.0.0.1:8001"', f'"{address}"')).startswith("nodes[0].http_address: ")
    assert message in refusal(edit('"127.0.0.1:8001"', f'"{address}"'))


def test_node_addresses_render_ipv6_in_brackets() -> None:
    node = NodeSpec(
        id=1,
        raft_host="::1",
        raft_port=7001,
        http_host="fe80::2",
        http_port=8001,
        data_dir=pathlib.Path("/d"),
    )
    assert node.raft_address == "[::1]:7001"
    assert node.http_address == "[fe80::2]:8001"
    assert node.http_url == "http://[fe80::2]:8001"


@pytest.mark.parametrize(
    ("host", "listen_host", "source_host"),
    [
        ("127.0.0.2", "127.0.0.2", "127.0.0.2"),
        ("::1", "::1", "::1"),
        ("localhost", "localhost", None),
        ("node1", None, None),
        ("kv.example.com", None, None),
    ],
)
def test_nodes_listen_on_ip_literals_and_localhost_but_everywhere_for_dns_names(
    host: str, listen_host: str | None, source_host: str | None
) -> None:
    node = NodeSpec(
        id=1,
        raft_host=host,
        raft_port=7001,
        http_host=host,
        http_port=8001,
        data_dir=pathlib.Path("/d"),
    )
    assert node.raft_listen_host == listen_host
    assert node.http_listen_host == listen_host
    assert node.raft_source_host == source_host


# --- Data directories -------------------------------------------------------------------------


def test_relative_data_dirs_are_resolved_against_the_config_files_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "kvraft"
    config_dir.mkdir(parents=True)
    text = edit('data_dir = "data/node2"', 'data_dir = "../../var/./node2"')
    text = edit('data_dir = "data/node3"', 'data_dir = "/abs/node3"', text)
    (config_dir / "cluster.toml").write_text(text, encoding="utf-8")
    # Loading from elsewhere, by a relative path, must not change where the data lives.
    monkeypatch.chdir(tmp_path / "etc")
    config = load_config(pathlib.Path("kvraft/cluster.toml"))
    assert [node.data_dir for node in config.nodes] == [
        config_dir / "data" / "node1",
        tmp_path / "var" / "node2",
        pathlib.Path("/abs/node3"),
    ]
    assert config.path == config_dir / "cluster.toml"


def test_parse_config_resolves_against_the_given_base_dir() -> None:
    config = parse_config(VALID, BASE_DIR)
    assert config.nodes[0].data_dir == BASE_DIR / "data" / "node1"
    assert config.path is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('""', "nodes[1].data_dir: must not be empty"),
        ('"a\\u0000b"', "nodes[1].data_dir: must not contain NUL characters"),
        (f'"/{"a" * DATA_DIR_BYTES_MAX}"', f"longer than {DATA_DIR_BYTES_MAX} bytes"),
    ],
)
def test_unusable_data_dirs_are_refused(value: str, message: str) -> None:
    assert message in refusal(edit('data_dir = "data/node2"', f"data_dir = {value}"))


def test_a_data_dir_of_exactly_the_longest_length_is_accepted() -> None:
    longest = "/" + "a" * (DATA_DIR_BYTES_MAX - 1)
    config = parse_config(edit('data_dir = "data/node2"', f'data_dir = "{longest}"'), BASE_DIR)
    assert str(config.nodes[1].data_dir) == longest


# --- Files ------------------------------------------------------------------------------------


def test_load_errors_name_the_file_and_the_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(edit("id = 2", "id = 1"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: nodes[1].id: duplicate id 1"


def test_a_missing_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_a_directory_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_files_up_to_the_size_cap_load_and_larger_ones_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "padded.toml"
    padding = CONFIG_FILE_BYTES_MAX - len(VALID.encode()) - 2
    path.write_text(VALID + "#" + "x" * padding + "\n", encoding="utf-8")
    assert path.stat().st_size == CONFIG_FILE_BYTES_MAX
    assert len(load_config(path).nodes) == 3
    path.write_text(VALID + "#" + "x" * (padding + 1) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"larger than {CONFIG_FILE_BYTES_MAX} bytes"):
        load_config(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    "text",
    [
        "cluster_id = ",
        "[raft\n",
        'cluster_id = "a"\ncluster_id = "b"\n',
        "x = " + "[" * 100_000,
        "x = " + "{a = " * 100_000,
    ],
)
def test_invalid_toml_is_a_config_error(text: str) -> None:
    assert refusal(text).startswith("invalid TOML")


def test_looking_up_an_unknown_node_id_is_a_config_error() -> None:
    config = parse_config(VALID, BASE_DIR)
    assert config.node(2).http_address == "127.0.0.1:8002"
    with pytest.raises(ConfigError, match=r"no node with id 7 \(ids are 1, 2, 3\)"):
        config.node(7)


# --- local_cluster_config ---------------------------------------------------------------------


def test_local_cluster_config_numbers_nodes_ports_and_data_dirs_from_the_bases(
    tmp_path: pathlib.Path,
) -> None:
    config = local_cluster_config(
        4, tmp_path, http_port_base=9100, raft_port_base=9200, cluster_id="t"
    )
    assert config.cluster_id == "t"
    assert [(n.id, n.http_address, n.raft_address, n.data_dir, n.voter) for n in config.nodes] == [
        (i, f"127.0.0.1:{9099 + i}", f"127.0.0.1:{9199 + i}", tmp_path / f"node{i}", True)
        for i in range(1, 5)
    ]
    assert (config.raft, config.storage, config.limits) == (
        RaftSettings(),
        StorageSettings(),
        LimitSettings(),
    )


def test_local_cluster_config_defaults_match_the_contract(tmp_path: pathlib.Path) -> None:
    config = local_cluster_config(3, tmp_path)
    assert [n.http_port for n in config.nodes] == [8001, 8002, 8003]
    assert [n.raft_port for n in config.nodes] == [7001, 7002, 7003]
    assert config.cluster_id == "kvraft-local"
    assert config.raft == RaftSettings(50, 6, 2, 64, 1048576, True, True)
    assert config.storage == StorageSettings(True, 67108864, 10000, 2)
    assert config.limits == LimitSettings(1024, 1048576, 5000, 10000)


def test_local_cluster_config_resolves_a_relative_data_dir_against_the_cwd(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = local_cluster_config(1, pathlib.Path("data"))
    assert config.nodes[0].data_dir == tmp_path / "data" / "node1"


def test_local_cluster_config_supports_ipv6_loopback(tmp_path: pathlib.Path) -> None:
    config = local_cluster_config(2, tmp_path, host="::1")
    assert [n.raft_address for n in config.nodes] == ["[::1]:7001", "[::1]:7002"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "nodes: must be in 1..64, got 0"),
        ({"nodes": NODES_MAX + 1}, f"nodes: must be in 1..64, got {NODES_MAX + 1}"),
        ({"nodes": True}, "nodes: expected an integer node count"),
        ({"nodes": 2, "http_port_base": PORT_MAX}, "nodes[1].http_address: port must be in"),
        (
            {"nodes": 2, "http_port_base": 7002},
            "nodes[1].raft_address: duplicate address 127.0.0.1:7002"
            " (already nodes[0].http_address)",
        ),
        ({"nodes": 1, "host": "0.0.0.0"}, "nodes[0].raft_address"),
    ],
)
def test_local_cluster_config_refuses_what_a_file_would(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        local_cluster_config(data_dir=pathlib.Path("/tmp/kv"), **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_local_cluster_config_accepts_the_largest_cluster(tmp_path: pathlib.Path) -> None:
    config = local_cluster_config(NODES_MAX, tmp_path, http_port_base=PORT_MAX - NODES_MAX + 1)
    assert config.nodes[-1].http_port == PORT_MAX


# --- render_config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "cluster-3.toml",
        "cluster-5.toml",
        "docker-3.toml",
        "docker-5.toml",
        "docker-3-tls.toml",
        "docker-5-tls.toml",
    ],
)
def test_shipped_configs_render_and_parse_back_equal(name: str, tmp_path: pathlib.Path) -> None:
    config = load_config(CONFIGS / name)
    # Parsed from another directory: rendered data dirs are absolute, so nothing moves.
    assert parse_config(render_config(config), tmp_path) == config


def test_equality_ignores_where_a_config_was_loaded_from(tmp_path: pathlib.Path) -> None:
    loaded = load_config(CONFIGS / "cluster-3.toml")
    saved = tmp_path / "copy.toml"
    saved.write_text(render_config(loaded), encoding="utf-8")
    again = load_config(saved)
    assert again == loaded
    assert again.path == saved


HOSTS = st.one_of(
    st.ip_addresses().filter(lambda address: not address.is_unspecified).map(str),
    st.sampled_from(["localhost", "node1", "kv_2", "db-3.example.com"]),
)
PATH_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=30,
)


@st.composite
def cluster_configs(draw: st.DrawFn) -> ClusterConfig:
    """Small valid configs with awkward strings (quotes, backslashes, control characters)."""
    count = draw(st.integers(1, 5))
    ids = draw(st.lists(st.integers(1, NODE_ID_MAX), min_size=count, max_size=count, unique=True))
    ports = draw(
        st.lists(st.integers(1, PORT_MAX), min_size=2 * count, max_size=2 * count, unique=True)
    )
    voters = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    voters[draw(st.integers(0, count - 1))] = True
    nodes = tuple(
        NodeSpec(
            id=node_id,
            raft_host=draw(HOSTS),
            raft_port=ports[2 * i],
            http_host=draw(HOSTS),
            http_port=ports[2 * i + 1],
            data_dir=pathlib.Path(os.path.normpath("/base/" + draw(PATH_TEXT))),
            voter=voters[i],
        )
        for i, node_id in enumerate(ids)
    )
    heartbeat_ticks = draw(st.integers(1, ELECTION_TICKS_MAX - 1))
    return ClusterConfig(
        cluster_id=draw(st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)),
        nodes=nodes,
        raft=RaftSettings(
            tick_ms=draw(st.integers(1, TICK_MS_MAX)),
            election_ticks=draw(st.integers(heartbeat_ticks + 1, ELECTION_TICKS_MAX)),
            heartbeat_ticks=heartbeat_ticks,
            inflight_max=draw(st.integers(1, INFLIGHT_MAX_HIGHEST)),
            batch_bytes_max=draw(st.integers(1, BATCH_BYTES_MAX_HIGHEST)),
            pre_vote=draw(st.booleans()),
            check_quorum=draw(st.booleans()),
        ),
        storage=StorageSettings(
            fsync=draw(st.booleans()),
            segment_bytes_max=draw(
                st.integers(SEGMENT_BYTES_MAX_LOWEST, SEGMENT_BYTES_MAX_HIGHEST)
            ),
            snapshot_threshold_entries=draw(st.integers(1, SNAPSHOT_THRESHOLD_ENTRIES_MAX)),
            snapshots_kept=draw(st.integers(1, SNAPSHOTS_KEPT_MAX)),
        ),
        limits=LimitSettings(
            key_bytes_max=draw(st.integers(1, KEY_BYTES_MAX_HIGHEST)),
            value_bytes_max=draw(st.integers(1, VALUE_BYTES_MAX_HIGHEST)),
            request_timeout_ms=draw(st.integers(1, REQUEST_TIMEOUT_MS_MAX)),
            proposals_pending_max=draw(st.integers(1, PROPOSALS_PENDING_MAX_HIGHEST)),
        ),
    )


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_configs())
def test_any_valid_config_renders_to_toml_that_parses_back_equal(config: ClusterConfig) -> None:
    text = render_config(config)
    again = parse_config(text, pathlib.Path("/elsewhere"))
    assert again == config
    assert render_config(again) == text


def test_the_watch_limits_are_optional_and_read_when_given() -> None:
    # Files written before the watch limits existed still load, with the defaults.
    assert parse_config(VALID, CONFIGS).limits == LimitSettings(
        key_bytes_max=1024,
        value_bytes_max=1048576,
        request_timeout_ms=5000,
        proposals_pending_max=10000,
    )
    given = edit(
        "proposals_pending_max = 10000",
        "proposals_pending_max = 10000\nwatchers_max = 7\nwatch_history_bytes_max = 4096",
    )
    limits = parse_config(given, CONFIGS).limits
    assert (limits.watchers_max, limits.watch_history_bytes_max) == (7, 4096)
    assert "limits.watchers_max" in refusal(
        edit("proposals_pending_max = 10000", "proposals_pending_max = 10000\nwatchers_max = -1")
    )


def test_the_slow_client_and_connection_limits_are_optional_and_read_when_given() -> None:
    # Files written before these limits existed still load, with the defaults.
    limits = parse_config(VALID, CONFIGS).limits
    assert (
        limits.request_header_timeout_ms,
        limits.request_body_timeout_ms,
        limits.http_connections_max,
    ) == (5000, 10_000, 10_000)
    given = edit(
        "proposals_pending_max = 10000",
        "proposals_pending_max = 10000\nrequest_header_timeout_ms = 1\n"
        "request_body_timeout_ms = 2\nhttp_connections_max = 3",
    )
    limits = parse_config(given, CONFIGS).limits
    assert (
        limits.request_header_timeout_ms,
        limits.request_body_timeout_ms,
        limits.http_connections_max,
    ) == (1, 2, 3)
    for key in ("request_header_timeout_ms", "request_body_timeout_ms", "http_connections_max"):
        assert f"limits.{key}" in refusal(
            edit("proposals_pending_max = 10000", f"proposals_pending_max = 10000\n{key} = 0")
        )


def test_the_peer_secret_file_is_relative_to_the_config_and_read_as_hex(
    tmp_path: pathlib.Path,
) -> None:
    from kvraft.config import new_peer_secret, read_peer_secret, write_peer_secret

    text = render_config(local_cluster_config(1, tmp_path / "data"))
    config = parse_config('peer_secret_file = "secrets/peer"\n' + text, tmp_path)
    assert config.peer_secret_file == tmp_path / "secrets" / "peer"
    assert parse_config(render_config(config), tmp_path) == config
    (tmp_path / "secrets").mkdir()
    secret = new_peer_secret()
    write_peer_secret(config.peer_secret_file, secret)
    assert config.peer_secret_file.stat().st_mode & 0o777 == 0o600
    assert read_peer_secret(config.peer_secret_file) == secret
    config.peer_secret_file.write_text("00" * 8 + "\n")
    with pytest.raises(ConfigError, match="at least 16") as short:
        read_peer_secret(config.peer_secret_file)
    assert "00" * 8 not in str(short.value)  # an error names the file, never the secret
    config.peer_secret_file.write_text("not hex")
    with pytest.raises(ConfigError, match="not hex"):
        read_peer_secret(config.peer_secret_file)
    config.peer_secret_file.unlink()
    with pytest.raises(ConfigError, match="kvraft peer-secret init"):
        read_peer_secret(config.peer_secret_file)  # a fresh machine: it says how to make one


# --- Peer authentication and TLS in the shipped configs (issue #20) -----------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_shipped_configs_authenticate_peers_by_default(size: int) -> None:
    local = load_config(CONFIGS / f"cluster-{size}.toml")
    # Beside the nodes' data, where `kvraft peer-secret init` is told to write it.
    assert local.peer_secret_file == REPO / "data" / f"cluster-{size}" / "peer-secret"
    assert local.tls is None and local.peer_tls is None  # TLS is documented, commented out
    for name in (f"docker-{size}.toml", f"docker-{size}-tls.toml"):
        docker = load_config(CONFIGS / name)
        # In the `secrets` volume compose's init service fills.
        assert docker.peer_secret_file == pathlib.Path("/var/lib/kvraft/secrets/peer-secret")


@pytest.mark.parametrize("size", [3, 5])
def test_the_docker_tls_configs_are_the_docker_configs_with_https_and_peer_tls(size: int) -> None:
    plain = load_config(CONFIGS / f"docker-{size}.toml")
    tls = load_config(CONFIGS / f"docker-{size}-tls.toml")
    assert tls.tls is not None and tls.peer_tls is not None
    assert (tls.tls.client_ca, tls.url(tls.nodes[0])) == (None, "https://node1:8001")
    certs = pathlib.Path("/var/lib/kvraft/secrets/certs")
    assert tls.tls == TlsSettings(
        certs / "node{id}.crt", certs / "node{id}.key", ca=certs / "ca.crt"
    )
    assert tls.peer_tls == PeerTlsSettings(tls.tls.cert, tls.tls.key, certs / "ca.crt")
    assert (tls.cluster_id, tls.nodes, tls.raft, tls.storage, tls.limits) == (
        plain.cluster_id,
        plain.nodes,
        plain.raft,
        plain.storage,
        plain.limits,
    )


@pytest.mark.parametrize("size", [3, 5])
def test_the_tls_tables_commented_in_the_local_configs_load_once_uncommented(size: int) -> None:
    text = (CONFIGS / f"cluster-{size}.toml").read_text(encoding="utf-8")
    uncommented = re.sub(r"^# (\[(?:peer_)?tls\]|\w+ = \"\.\./data/.*)$", r"\1", text, flags=re.M)
    config = parse_config(uncommented, CONFIGS)
    assert config.tls is not None and config.peer_tls is not None
    certs = REPO / "data" / f"cluster-{size}" / "certs"
    assert config.tls.for_node(2) == TlsSettings(
        certs / "node2.crt", certs / "node2.key", client_ca=certs / "ca.crt", ca=certs / "ca.crt"
    )


TLS_TABLES = """
[tls]
cert = "certs/node{id}.crt"
key = "certs/node{id}.key"

[peer_tls]
cert = "/etc/kvraft/node{id}.pem"
key = "/etc/kvraft/node{id}-key.pem"
ca = "/etc/kvraft/ca.pem"
"""


def test_tls_tables_resolve_their_paths_and_replace_id_for_each_node() -> None:
    config = parse_config(VALID + TLS_TABLES, BASE_DIR)
    assert config.tls == TlsSettings(
        BASE_DIR / "certs/node{id}.crt", BASE_DIR / "certs/node{id}.key"
    )
    assert config.tls.for_node(3).key == BASE_DIR / "certs" / "node3.key"
    assert config.peer_tls is not None
    assert config.peer_tls.for_node(12).cert == pathlib.Path("/etc/kvraft/node12.pem")
    assert config.http_scheme == "https"
    assert config.url(config.node(2)) == "https://127.0.0.1:8002"
    assert config.node(2).http_url == "http://127.0.0.1:8002"  # a spec alone knows no TLS
    assert parse_config(render_config(config), pathlib.Path("/elsewhere")) == config
    plain = parse_config(VALID, BASE_DIR)  # a file from before TLS
    assert (plain.tls, plain.peer_tls, plain.http_scheme) == (None, None, "http")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('key = "certs/node{id}.key"\n', "", "tls.key: missing required key"),
        ('ca = "/etc/kvraft/ca.pem"\n', "", "peer_tls.ca: missing required key"),
        (
            'key = "certs/node{id}.key"',
            'key = "x"\nclient_cert = "y"',
            "unknown key 'tls.client_cert'",
        ),
        (
            'cert = "certs/node{id}.crt"',
            'cert = "certs/{name}.crt"',
            "the only placeholder is {id}",
        ),
        ('cert = "certs/node{id}.crt"', "cert = 7", "tls.cert: expected a file path"),
        ('cert = "certs/node{id}.crt"', 'cert = ""', "tls.cert: expected a file path"),
    ],
)
def test_tls_tables_refuse_what_they_do_not_understand(old: str, new: str, message: str) -> None:
    text = VALID + TLS_TABLES
    assert text.count(old) == 1, old
    assert message in refusal(text.replace(old, new))
    assert "peer_tls: expected a table" in refusal("peer_tls = 1\n" + VALID)
