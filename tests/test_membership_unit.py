"""The pure membership helpers: the address book in the log, change planning, catch-up and
transfer-target decisions, request validation (`kvraft.membership`), and the joined node's
identity file (`kvraft.commands.serve`)."""

from __future__ import annotations

import json
from collections.abc import Set
from pathlib import Path

import msgpack
import pytest

from kvraft.commands.member import render_members_table
from kvraft.commands.serve import (
    IDENTITY_FILE_BYTES_MAX,
    IDENTITY_FILE_NAME,
    JoinError,
    NodeIdentity,
    join_cluster,
    read_identity,
    write_identity,
)
from kvraft.config import ADDRESS_CHARS_MAX, NodeSpec
from kvraft.launcher import free_ports
from kvraft.membership import (
    ADDRESS_BOOK_BYTES_MAX,
    ADDRESS_BOOK_MEMBERS_MAX,
    CATCH_UP_LAG_ENTRIES_MAX,
    LOOKUP_INTERVAL_S,
    PEER_IDS_TRACKED_MAX,
    LookupThrottle,
    MemberAddress,
    MembershipConflictError,
    MembershipError,
    UnknownMemberError,
    address_book_of,
    decode_address_book,
    encode_address_book,
    is_caught_up,
    parse_add_request,
    parse_member,
    parse_transfer_request,
    pick_transfer_target,
    plan_learner_add,
    plan_promotion,
    plan_removal,
)
from kvraft.raft.codec import NODE_ID_MAX, decode_configuration, encode_configuration
from kvraft.raft.messages import Configuration
from kvraft.tls import NodeTls
from tests.kv_fake_server import FakeCluster, Fault


def member(node_id: int) -> MemberAddress:
    return parse_member(node_id, f"10.0.0.{node_id}:7000", f"10.0.0.{node_id}:8000")


def book_of(*ids: int) -> dict[int, MemberAddress]:
    return {node_id: member(node_id) for node_id in ids}


def configuration(voters: Set[int], learners: Set[int] = frozenset()) -> Configuration:
    book = book_of(*voters, *learners)
    return Configuration(frozenset(voters), frozenset(learners), encode_address_book(book))


# --- the address book -------------------------------------------------------------------


def test_address_book_round_trips_ip_v6_and_dns_names() -> None:
    book = {
        1: parse_member(1, "[::1]:7001", "[::1]:8001"),
        2: parse_member(2, "Node2.Example.com:7002", "node2.example.com:8002"),
        NODE_ID_MAX: parse_member(NODE_ID_MAX, "192.168.1.9:1", "192.168.1.9:65535"),
    }
    decoded = decode_address_book(encode_address_book(book))
    assert decoded == book
    assert decoded[1].raft_address == "[::1]:7001"
    assert decoded[2].http_url == "http://node2.example.com:8002"  # host names are lower-cased


def test_the_address_book_survives_the_configuration_codec() -> None:
    original = configuration({1, 2, 3}, {4})
    again = decode_configuration(encode_configuration(original))
    assert address_book_of(again, {}) == book_of(1, 2, 3, 4)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never valid msgpack
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb({1: ["10.0.0.1:7000", "10.0.0.1:8000"]}) + b"\x00",  # trailing bytes
        msgpack.packb({"1": ["10.0.0.1:7000", "10.0.0.1:8000"]}),  # id is text
        msgpack.packb({True: ["10.0.0.1:7000", "10.0.0.1:8000"]}),  # id is a bool
        msgpack.packb({0: ["10.0.0.1:7000", "10.0.0.1:8000"]}),  # id 0 means nobody
        msgpack.packb({NODE_ID_MAX + 1: ["10.0.0.1:7000", "10.0.0.1:8000"]}),
        msgpack.packb({1: ["10.0.0.1:7000"]}),  # one address
        msgpack.packb({1: "10.0.0.1:7000"}),  # not a list
        msgpack.packb({1: ["10.0.0.1:7000", 8000]}),  # not a string
        msgpack.packb({1: ["0.0.0.0:7000", "10.0.0.1:8000"]}),  # not dialable
        msgpack.packb({1: ["10.0.0.1:70000", "10.0.0.1:8000"]}),  # no such port
        msgpack.packb({1: [b"10.0.0.1:7000", "10.0.0.1:8000"]}, use_bin_type=True),  # bytes
        msgpack.packb({1: ["10.0.0.1:7000", "10.0.0.1:7000"]}),  # the same address twice
        msgpack.packb({1: ["10.0.0.1:7000", "h" * ADDRESS_CHARS_MAX + ":1"]}),  # too long
    ],
)
def test_a_malformed_address_book_is_refused_with_its_own_error(data: bytes) -> None:
    with pytest.raises(MembershipError):
        decode_address_book(data)


def test_address_book_member_count_is_limited_at_the_configuration_limit() -> None:
    full = {node_id: member(node_id) for node_id in range(1, ADDRESS_BOOK_MEMBERS_MAX + 1)}
    assert decode_address_book(encode_address_book(full)) == full
    over = {**full, ADDRESS_BOOK_MEMBERS_MAX + 1: member(ADDRESS_BOOK_MEMBERS_MAX + 1)}
    with pytest.raises(MembershipError):
        encode_address_book(over)
    raw = msgpack.packb({n: [a.raft_address, a.http_address] for n, a in over.items()})
    with pytest.raises(MembershipError):
        decode_address_book(raw)


def test_a_full_book_of_the_longest_addresses_fits_in_a_context() -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    longest = {
        NODE_ID_MAX - i: parse_member(NODE_ID_MAX - i, f"{host}:{10000 + i}", f"{host}:{20000 + i}")
        for i in range(ADDRESS_BOOK_MEMBERS_MAX)
    }
    data = encode_address_book(longest)
    assert len(data) <= ADDRESS_BOOK_BYTES_MAX
    assert decode_address_book(data) == longest


def test_address_book_bytes_are_limited_before_unpacking() -> None:
    with pytest.raises(MembershipError, match="limit"):
        decode_address_book(b"\x80" + b"\x00" * ADDRESS_BOOK_BYTES_MAX)


def test_a_configuration_without_context_takes_the_config_file_addresses() -> None:
    bootstrap = Configuration(frozenset({1, 2}), frozenset({3}))
    file_book = book_of(1, 2, 3, 9)
    assert address_book_of(bootstrap, file_book) == book_of(1, 2, 3)


def test_a_context_that_does_not_name_exactly_the_members_is_refused() -> None:
    short = Configuration(frozenset({1, 2, 3}), context=encode_address_book(book_of(1, 2)))
    extra = Configuration(frozenset({1}), context=encode_address_book(book_of(1, 2)))
    for bad in (short, extra):
        with pytest.raises(MembershipError, match="members"):
            address_book_of(bad, book_of(1, 2, 3))


# --- planning changes -------------------------------------------------------------------


def test_a_new_node_is_added_as_a_learner_with_every_address_in_the_context() -> None:
    current = configuration({1, 2, 3})
    planned = plan_learner_add(current, book_of(1, 2, 3), member(4))
    assert planned is not None
    assert planned.voters == {1, 2, 3} and planned.learners == {4}
    assert address_book_of(planned, {}) == book_of(1, 2, 3, 4)


def test_adding_a_member_again_at_the_same_addresses_changes_nothing() -> None:
    current = configuration({1, 2, 3}, {4})
    assert plan_learner_add(current, book_of(1, 2, 3, 4), member(4)) is None
    voter = configuration({1, 2, 3, 4})
    assert plan_learner_add(voter, book_of(1, 2, 3, 4), member(4)) is None


def test_adding_an_existing_id_at_other_addresses_is_a_conflict() -> None:
    current = configuration({1, 2, 3})
    moved = parse_member(3, "10.9.9.9:7000", "10.9.9.9:8000")
    with pytest.raises(MembershipConflictError, match="already a member"):
        plan_learner_add(current, book_of(1, 2, 3), moved)


def test_a_new_node_may_not_take_a_members_address() -> None:
    current = configuration({1, 2, 3})
    thief = parse_member(4, "10.0.0.4:7000", "10.0.0.2:7000")  # node 2's raft address
    with pytest.raises(MembershipConflictError, match="node 2"):
        plan_learner_add(current, book_of(1, 2, 3), thief)


def test_the_member_limit_is_enforced_when_adding() -> None:
    ids = set(range(1, ADDRESS_BOOK_MEMBERS_MAX))
    almost_full = configuration(ids)
    book = book_of(*ids)
    last = plan_learner_add(almost_full, book, member(ADDRESS_BOOK_MEMBERS_MAX))
    assert last is not None and len(last.members) == ADDRESS_BOOK_MEMBERS_MAX
    full_book = {**book, ADDRESS_BOOK_MEMBERS_MAX: member(ADDRESS_BOOK_MEMBERS_MAX)}
    with pytest.raises(MembershipConflictError, match="members"):
        plan_learner_add(last, full_book, member(ADDRESS_BOOK_MEMBERS_MAX + 1))


def test_a_member_without_a_known_address_blocks_a_change() -> None:
    current = Configuration(frozenset({1, 2, 3}))
    with pytest.raises(MembershipConflictError, match="no address"):
        plan_learner_add(current, book_of(1, 2), member(4))


def test_promotion_turns_a_learner_into_a_voter_and_is_idempotent() -> None:
    current = configuration({1, 2, 3}, {4})
    promoted = plan_promotion(current, book_of(1, 2, 3, 4), 4)
    assert promoted is not None
    assert promoted.voters == {1, 2, 3, 4} and not promoted.learners
    assert plan_promotion(promoted, book_of(1, 2, 3, 4), 4) is None
    with pytest.raises(UnknownMemberError):
        plan_promotion(current, book_of(1, 2, 3, 4), 5)


def test_removal_drops_a_voter_or_a_learner_and_its_address() -> None:
    current = configuration({1, 2, 3}, {4})
    book = book_of(1, 2, 3, 4)
    without_voter = plan_removal(current, book, 2)
    assert without_voter.voters == {1, 3} and without_voter.learners == {4}
    assert set(address_book_of(without_voter, {})) == {1, 3, 4}
    without_learner = plan_removal(current, book, 4)
    assert without_learner.voters == {1, 2, 3} and not without_learner.learners


def test_removing_a_non_member_or_the_last_voter_is_refused() -> None:
    with pytest.raises(UnknownMemberError):
        plan_removal(configuration({1, 2, 3}), book_of(1, 2, 3), 7)
    with pytest.raises(MembershipConflictError, match="only voter"):
        plan_removal(configuration({1}, {2}), book_of(1, 2), 1)


def test_every_planned_change_moves_at_most_one_voter() -> None:
    # The core refuses anything else (§4.1); the plans must never ask for it.
    current = configuration({1, 2, 3})
    book = book_of(1, 2, 3)
    added = plan_learner_add(current, book, member(4))
    assert added is not None
    promoted = plan_promotion(added, book_of(1, 2, 3, 4), 4)
    assert promoted is not None
    removed = plan_removal(promoted, book_of(1, 2, 3, 4), 1)
    for before, after in ((current, added), (added, promoted), (promoted, removed)):
        assert len(before.voters ^ after.voters) <= 1


# --- decisions --------------------------------------------------------------------------


def test_a_learner_within_the_lag_limit_has_caught_up() -> None:
    commit = 50_000
    assert is_caught_up(commit - CATCH_UP_LAG_ENTRIES_MAX, commit, replicating=True)
    assert not is_caught_up(commit - CATCH_UP_LAG_ENTRIES_MAX - 1, commit, replicating=True)
    assert is_caught_up(commit, commit, replicating=True)


def test_a_learner_that_is_still_probing_or_has_acknowledged_nothing_has_not_caught_up() -> None:
    # A short log is within the lag limit of a node that has nothing at all.
    assert not is_caught_up(0, 5, replicating=True)
    assert not is_caught_up(5, 5, replicating=False)  # probing, or receiving a snapshot


def test_leadership_goes_to_the_most_caught_up_other_voter() -> None:
    voters = frozenset({1, 2, 3, 4})
    assert pick_transfer_target(voters, 1, {1: 90, 2: 80, 3: 85, 4: 10}) == 3
    assert pick_transfer_target(voters, 3, {2: 80, 4: 80}) == 2  # a tie: the lowest id
    assert pick_transfer_target(voters, 1, {}) == 2  # nothing known: still someone
    assert pick_transfer_target(frozenset({5}), 5, {5: 100}) is None


def test_an_unknown_peer_is_looked_up_at_most_once_per_interval() -> None:
    throttle = LookupThrottle()
    assert throttle.allow(7, now_s=100.0)
    assert not throttle.allow(7, now_s=100.0 + LOOKUP_INTERVAL_S - 0.001)
    assert throttle.allow(8, now_s=100.5)  # each id has its own interval
    assert throttle.allow(7, now_s=100.0 + LOOKUP_INTERVAL_S)


def test_a_removed_node_is_never_looked_up_until_it_rejoins() -> None:
    throttle = LookupThrottle()
    throttle.removed(3)
    assert not throttle.allow(3, now_s=0.0) and not throttle.allow(3, now_s=1e9)
    throttle.rejoined(3)
    assert throttle.allow(3, now_s=1e9)


def test_the_throttle_forgets_the_oldest_ids_beyond_its_limit() -> None:
    throttle = LookupThrottle()
    for node_id in range(1, PEER_IDS_TRACKED_MAX + 1):
        throttle.removed(node_id)
    assert throttle.is_removed(1)  # exactly at the limit: all remembered
    throttle.removed(PEER_IDS_TRACKED_MAX + 1)
    assert not throttle.is_removed(1) and throttle.is_removed(2)
    for node_id in range(1, PEER_IDS_TRACKED_MAX + 2):
        assert throttle.allow(10_000 + node_id, now_s=0.0)
    assert not throttle.allow(10_002, now_s=0.0)  # remembered: not yet
    assert throttle.allow(10_001, now_s=0.0)  # forgotten, so allowed again at once


# --- requests ---------------------------------------------------------------------------


def test_an_add_request_is_validated_field_by_field() -> None:
    good = {"id": 4, "raft_address": "127.0.0.1:7004", "http_address": "127.0.0.1:8004"}
    parsed = parse_add_request(good)
    assert parsed.member == parse_member(4, "127.0.0.1:7004", "127.0.0.1:8004")
    assert parsed.voter is True
    assert parse_add_request({**good, "voter": False}).voter is False
    bad_bodies = [
        [good],
        {k: v for k, v in good.items() if k != "http_address"},
        {**good, "role": "voter"},
        {**good, "voter": "yes"},
        {**good, "id": True},
        {**good, "id": 0},
        {**good, "id": 4.0},
        {**good, "raft_address": "127.0.0.1"},
        {**good, "http_address": good["raft_address"]},
    ]
    for body in bad_bodies:
        with pytest.raises(MembershipError):
            parse_add_request(body)


def test_a_transfer_request_names_a_voter_or_nobody() -> None:
    assert parse_transfer_request(None) is None
    assert parse_transfer_request({}) is None
    assert parse_transfer_request({"to": 3}) == 3
    for body in ([3], {"to": "3"}, {"to": -1}, {"target": 3}):
        with pytest.raises(MembershipError):
            parse_transfer_request(body)


def test_the_members_table_shows_learners_and_a_change_in_progress() -> None:
    view = {
        "leader_id": 1,
        "change_pending": True,
        "members": [
            {"id": 1, "raft_address": "a:1", "http_address": "a:2", "voter": True,
             "match_index": 7, "caught_up": True},
            {"id": 4, "raft_address": "\x1b[2Jd:1", "http_address": "d:2", "voter": False,
             "match_index": 2, "caught_up": False},
            "garbage",
        ],
    }  # fmt: skip
    lines = render_members_table(view).splitlines()
    assert lines[1].split() == ["1", "a:1", "a:2", "voter", "7", "yes"]
    assert lines[2].split()[3:] == ["learner", "2", "no"]
    assert "\x1b" not in lines[2]  # terminal escapes from the server are neutralised
    assert lines[-1] == "leader: 1; a membership change is in progress"


# --- the joined node's identity file ----------------------------------------------------


def test_a_joined_nodes_identity_round_trips(tmp_path: Path) -> None:
    assert read_identity(tmp_path) is None
    write_identity(tmp_path, NodeIdentity("kvraft-local", 4))
    assert read_identity(tmp_path) == NodeIdentity("kvraft-local", 4)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps(["kvraft-local", 4]),
        json.dumps({"cluster_id": "has space", "node_id": 4}),
        json.dumps({"cluster_id": "ok", "node_id": True}),
        json.dumps({"cluster_id": "ok", "node_id": 0}),
        json.dumps({"node_id": 4}),
    ],
)
def test_a_damaged_identity_file_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / IDENTITY_FILE_NAME).write_text(text)
    with pytest.raises(JoinError):
        read_identity(tmp_path)


def test_the_identity_file_size_is_limited(tmp_path: Path) -> None:
    body = json.dumps({"cluster_id": "ok", "node_id": 4})
    at_limit = body + " " * (IDENTITY_FILE_BYTES_MAX - len(body))
    (tmp_path / IDENTITY_FILE_NAME).write_text(at_limit)
    assert read_identity(tmp_path) == NodeIdentity("ok", 4)
    (tmp_path / IDENTITY_FILE_NAME).write_text(at_limit + " ")
    with pytest.raises(JoinError, match="larger"):
        read_identity(tmp_path)


class _JoiningNode:
    """What `join_cluster` uses of a node: its id, its addresses, its TLS contexts (none:
    plain HTTP), and where to put what it learns about the cluster."""

    def __init__(self) -> None:
        self.id = 4
        self.spec = NodeSpec(4, "127.0.0.1", 7004, "127.0.0.1", 8004, Path("/unused"))
        self.tls = NodeTls()
        self.learned: dict[int, MemberAddress] = {}

    def learn_addresses(self, book: dict[int, MemberAddress]) -> None:
        self.learned.update(book)


async def test_joining_an_unreachable_cluster_gives_up_at_its_timeout() -> None:
    (closed_port,) = free_ports(1)  # nothing listens there: every attempt is refused
    node = _JoiningNode()
    with pytest.raises(JoinError, match=r"could not join within 0\.3 s"):
        await join_cluster(node, f"http://127.0.0.1:{closed_port}", timeout_s=0.3)
    assert node.learned == {}


async def test_joining_learns_the_members_then_retries_what_may_succeed_later() -> None:
    node = _JoiningNode()
    with FakeCluster(3) as cluster:
        cluster.inject(
            2,
            Fault(status=503, error="unavailable"),  # GET /v1/members: asked again
            Fault(),  # GET /v1/members answered
            Fault(status=409, error="change_in_progress"),  # another change: asked again
            Fault(status=503, error="not_caught_up"),  # still catching up: asked again
        )
        await join_cluster(node, cluster.endpoint(2), voter=False, timeout_s=30)
        assert sorted(node.learned) == [1, 2, 3]
        assert node.learned[3].http_address == cluster.endpoint(3).removeprefix("http://")
        sent = [(r.node_id, r.method, r.raw_path) for r in cluster.requests()]
        assert sent == [(2, "GET", "/v1/members")] * 2 + [(2, "POST", "/v1/members")] * 3
        assert json.loads(cluster.requests("POST")[-1].body) == {
            "id": 4,
            "raft_address": "127.0.0.1:7004",
            "http_address": "127.0.0.1:8004",
            "voter": False,
        }
        assert cluster.member_ids() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        (Fault(status=409, error="member_conflict"), "member_conflict: injected by the test"),
        (Fault(status=400, error="bad_request"), "bad_request: injected by the test"),
        (Fault(status=500, error="error"), "HTTP 500 error: injected by the test"),
    ],
)
async def test_joining_gives_up_at_once_when_the_cluster_refuses(fault: Fault, detail: str) -> None:
    node = _JoiningNode()
    with FakeCluster(3) as cluster:
        cluster.inject(1, Fault(), fault)  # the members are read first, untouched
        with pytest.raises(JoinError, match="the cluster refused to add node 4: ") as caught:
            await join_cluster(node, cluster.endpoint(1), timeout_s=30)
        assert detail in str(caught.value)
