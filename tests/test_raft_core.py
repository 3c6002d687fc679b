"""Tests for kvraft.raft.core beyond the paper's claims: its API contract, its limits at
their edges, its input checks, and its robustness to lost, duplicated and reordered
messages. (The paper's claims are in test_raft_paper.py.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from raft_harness import (
    DELIVERY_ROUNDS_MAX,
    RaftCluster,
    between,
    entries_from_terms,
    make_core,
    of_type,
    sent,
    votes_only,
)

from kvraft.raft.core import (
    KNOWN_BUGS,
    ConfigurationChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    Role,
)
from kvraft.raft.log import LogInvariantError
from kvraft.raft.messages import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

__all__: list[str] = []


def single_node_leader(**overrides: Any) -> RaftCore:
    """A lone one-voter core that has won its election and committed its no-op."""
    core = make_core(1, (1,), **overrides)
    for _ in range(2 * core.config.election_ticks):
        core.tick()
        if core.role == Role.LEADER:
            break
    assert core.role == Role.LEADER
    ready = core.ready()
    core.persisted(ready.entries[-1].index, ready.entries[-1].term)
    core.ready()
    assert core.log.commit_index == ready.entries[-1].index
    return core


def voters(*node_ids: int) -> Configuration:
    return Configuration(voters=frozenset(node_ids))


# --- RaftConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"node_id": 0},
        {"node_id": -1},
        {"node_id": 1, "heartbeat_ticks": 0},
        {"node_id": 1, "election_ticks": 2, "heartbeat_ticks": 2},
        {"node_id": 1, "election_ticks": 2, "heartbeat_ticks": 3},
        {"node_id": 1, "bugs": frozenset({"no_such_bug"})},
    ],
    ids=str,
)
def test_config_refuses_impossible_settings(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RaftConfig(**fields)  # type: ignore[arg-type]


def test_config_accepts_settings_at_their_edges() -> None:
    config = RaftConfig(node_id=1, election_ticks=2, heartbeat_ticks=1, bugs=KNOWN_BUGS)
    assert (config.node_id, config.election_ticks, config.heartbeat_ticks) == (1, 2, 1)


# --- inputs the core must shrug off --------------------------------------------------------


def test_message_for_another_node_or_from_itself_is_ignored() -> None:
    core = make_core(2, log_terms=[1], term=1)
    core.ready()
    core.step(AppendEntries(5, 1, 3, 1, 1, tuple(entries_from_terms([5], 2)), 2))
    core.step(AppendEntries(5, 2, 2, 1, 1, tuple(entries_from_terms([5], 2)), 2))
    assert core.term == 1
    assert len(core.log.entries) == 1
    assert not core.has_ready()


def test_leader_ignores_answers_from_nodes_outside_its_configuration() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    core = cluster.core(1)
    core.step(AppendEntriesResponse(core.term, 9, 1, True, match_index=100))
    core.step(HeartbeatResponse(core.term, 9, 1, 1))
    assert core.role == Role.LEADER
    assert 9 not in core.status().peers


def test_duplicate_vote_from_the_same_peer_counts_once() -> None:
    core = make_core(1, (1, 2, 3, 4, 5), pre_vote=False)
    for _ in range(2 * core.config.election_ticks):
        core.tick()
    assert core.role == Role.CANDIDATE
    for _ in range(3):
        core.step(RequestVoteResponse(core.term, 2, 1, True))
    assert core.role == Role.CANDIDATE


def test_candidate_rejected_by_a_majority_returns_to_follower_at_once() -> None:
    core = make_core(1, (1, 2, 3), pre_vote=False)
    for _ in range(2 * core.config.election_ticks):
        core.tick()
        if core.role != Role.FOLLOWER:
            break
    term = core.term
    core.step(RequestVoteResponse(term, 2, 1, False))
    core.step(RequestVoteResponse(term, 3, 1, False))
    assert (core.role, core.term) == (Role.FOLLOWER, term)


def test_stale_node_learns_the_current_term_from_a_refused_prevote() -> None:
    """A PreVote of an old term is refused with the voter's term, so the sender catches up."""
    voter = make_core(2, log_terms=[1], term=6)
    voter.ready()
    voter.step(RequestVote(4, 1, 2, 1, 1, pre_vote=True))
    (answer,) = sent(voter.ready())
    assert answer == RequestVoteResponse(6, 2, 1, False, pre_vote=True)

    candidate = make_core(1, log_terms=[1], term=3)
    for _ in range(2 * candidate.config.election_ticks):
        candidate.tick()
        if candidate.role != Role.FOLLOWER:
            break
    assert candidate.role == Role.PRE_CANDIDATE
    candidate.step(answer)
    assert (candidate.role, candidate.term) == (Role.FOLLOWER, 6)


def test_check_quorum_off_leaves_an_isolated_leader_in_place() -> None:
    cluster = RaftCluster([1, 2, 3], check_quorum=False)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.run(10 * cluster.core(1).config.election_ticks, 1)
    assert cluster.core(1).role == Role.LEADER


# --- client requests -----------------------------------------------------------------------


def test_requests_to_a_follower_raise_not_leader_naming_the_leader() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    follower = cluster.core(2)
    calls: list[Callable[[], object]] = [
        lambda: follower.propose(b"x"),
        lambda: follower.propose_batch([b"x", b"y"]),
        lambda: follower.propose_configuration(voters(1, 2)),
        lambda: follower.read_index(1),
        lambda: follower.transfer_leadership(3),
    ]
    for call in calls:
        with pytest.raises(NotLeaderError) as raised:
            call()
        assert raised.value.leader_id == 1
    fresh = make_core(1)
    with pytest.raises(NotLeaderError) as raised:
        fresh.propose(b"x")
    assert raised.value.leader_id == NO_NODE


def test_proposals_get_consecutive_indexes_and_commit_with_them() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    first = cluster.propose(1, b"a")
    batch = cluster.propose_batch(1, [b"b", b"c"])
    assert batch == [first + 1, first + 2]
    cluster.stabilize()
    applied = {e.index: e for e in cluster.log(2)}
    assert [applied[i].data for i in (first, *batch)] == [b"a", b"b", b"c"]
    assert {applied[i].term for i in (first, *batch)} == {cluster.core(1).term}


def test_lost_proposal_shows_up_as_a_different_entry_at_its_index() -> None:
    """propose()'s contract: a different entry committed at the index means "lost"."""
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    old_term = cluster.core(1).term
    index = cluster.propose(1, b"never")
    cluster.drop()
    cluster.isolate(1)
    for _ in range(20 * cluster.core(2).config.election_ticks):
        cluster.run(1, 2, 3)
        if 2 in cluster.leaders() or 3 in cluster.leaders():
            break
    new_leader = cluster.leaders()[0]
    cluster.propose(new_leader, b"won")
    cluster.stabilize()
    cluster.heal()
    cluster.run(3 * cluster.core(1).config.heartbeat_ticks)
    entry = cluster.applied_by_index[index]
    assert entry.term != old_term
    assert b"never" not in cluster.node(1).commands
    assert cluster.node(1).commands == [b"won"]


def test_transfer_to_self_or_twice_to_the_same_target_sends_nothing_new() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.transfer_leadership(1, 1)
    assert cluster.in_flight == []
    assert cluster.core(1).status().leadership_transfer_to == NO_NODE
    cluster.transfer_leadership(1, 2)
    cluster.transfer_leadership(1, 2)
    assert cluster.pending(of_type(TimeoutNow)) == [TimeoutNow(cluster.core(1).term, 1, 2)]


def test_transfer_to_a_learner_is_refused() -> None:
    cluster = RaftCluster([1, 2, 3], learners=[4])
    cluster.elect(1)
    with pytest.raises(ConfigurationChangeError):
        cluster.transfer_leadership(1, 4)
    with pytest.raises(ConfigurationChangeError):
        cluster.transfer_leadership(1, 9)


@pytest.mark.parametrize(
    "configuration",
    [
        Configuration(voters=frozenset()),
        Configuration(voters=frozenset({1, 2, 3}), learners=frozenset({3})),
    ],
    ids=["no_voters", "voter_and_learner"],
)
def test_impossible_configuration_is_refused(configuration: Configuration) -> None:
    cluster = RaftCluster([1] if not configuration.voters else [1, 2, 3])
    cluster.elect(1)
    with pytest.raises(ConfigurationChangeError):
        cluster.propose_configuration(1, configuration)


def test_learners_may_change_freely_alongside_one_voter() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    new = Configuration(voters=frozenset({1, 2, 3}), learners=frozenset({4, 5, 6}))
    index = cluster.propose_configuration(1, new)
    assert cluster.core(1).status().pending_configuration_index == index


# --- limits at their edges -----------------------------------------------------------------


def test_apply_batch_max_limits_committed_entries_per_ready() -> None:
    apply_batch_max = 2
    core = single_node_leader(apply_batch_max=apply_batch_max)
    indexes = core.propose_batch([b"a", b"b", b"c", b"d", b"e"])
    written = core.ready().entries
    core.persisted(written[-1].index, written[-1].term)
    batches = []
    while core.has_ready():
        batches.append([e.index for e in core.ready().committed_entries])
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [i for b in batches for i in b] == indexes


def test_snapshot_is_resent_after_snapshot_retry_ticks_and_not_before() -> None:
    retry_ticks = 8
    cluster = RaftCluster([1, 2, 3], snapshot_retry_ticks=retry_ticks)
    cluster.crash(3)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilize()
    cluster.compact(1)
    cluster.restart(3)

    def is_snapshot_to_3(message: Message) -> bool:
        return isinstance(message, InstallSnapshot) and message.target == 3

    for _ in range(retry_ticks):
        cluster.tick(1)
        cluster.stabilize(lambda m: not is_snapshot_to_3(m))
        if cluster.pending(is_snapshot_to_3):
            break
    assert len(cluster.drop(is_snapshot_to_3)) == 1
    ticks = 0
    while not cluster.pending(is_snapshot_to_3):
        cluster.tick(1)
        ticks += 1
        cluster.stabilize(lambda m: not is_snapshot_to_3(m))
        assert ticks <= retry_ticks + cluster.core(1).config.heartbeat_ticks
    assert ticks >= retry_ticks
    cluster.stabilize()
    assert cluster.node(3).commands == [b"x"]


# --- Ready bookkeeping ---------------------------------------------------------------------


def test_a_drained_core_has_nothing_ready() -> None:
    core = make_core(1, log_terms=[1], term=1, commit_index=1)
    assert core.has_ready()  # the committed entry must be applied
    assert [e.index for e in core.ready().committed_entries] == [1]
    assert not core.has_ready()
    assert core.ready().is_empty()
    core.tick()
    assert not core.has_ready()


def test_commit_only_change_needs_no_sync_but_term_and_entries_do() -> None:
    follower = make_core(2, log_terms=[1, 1], term=1)
    follower.ready()
    follower.step(Heartbeat(1, 1, 2, 2))
    ready = follower.ready()
    assert ready.hard_state == HardState(1, NO_NODE, 2)
    assert not ready.must_sync

    follower.step(Heartbeat(2, 1, 2, 2))
    ready = follower.ready()
    assert ready.hard_state == HardState(2, NO_NODE, 2) and ready.must_sync

    follower.step(AppendEntries(2, 1, 2, 2, 1, tuple(entries_from_terms([2], 3)), 2))
    ready = follower.ready()
    assert ready.hard_state is None
    assert ready.entries and ready.must_sync


def test_persisted_report_for_the_wrong_term_does_not_count() -> None:
    core = single_node_leader()
    index = core.propose(b"x")
    written = core.ready().entries
    core.persisted(index, written[-1].term + 1)
    assert core.log.commit_index < index
    core.persisted(index, written[-1].term)
    assert core.log.commit_index == index
    core.persisted(index - 1, written[-1].term)  # an old report never moves backwards
    assert core.log.commit_index == index


def test_compact_drops_applied_entries_and_refuses_unapplied_ones() -> None:
    core = single_node_leader()
    index = core.propose(b"x")
    core.propose(b"y")
    written = core.ready().entries
    core.persisted(index, written[0].term)
    core.ready()  # x is applied, y is neither persisted nor committed
    with pytest.raises(LogInvariantError):
        core.compact(index + 1)
    meta = core.compact(index)
    assert (meta.index, meta.term) == (index, written[0].term)
    assert meta.configuration == voters(1)
    assert core.status().snapshot_index == index
    assert core.log.term_at(index - 1) is None
    assert core.compact(index - 1) == meta  # at or below the snapshot: nothing to do


def test_status_reports_the_leaders_view_of_each_peer() -> None:
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilize()
    status = cluster.core(1).status()
    last = cluster.log(1)[-1].index
    assert (status.role, status.leader_id, status.last_log_index) == (Role.LEADER, 1, last)
    assert status.commit_index == status.applied_index == last
    assert {p: (s.match_index, s.state) for p, s in status.peers.items() if p != 1} == {
        2: (last, "replicate"),
        3: (last, "replicate"),
    }
    follower_status = cluster.core(2).status()
    assert (follower_status.role, follower_status.leader_id) == (Role.FOLLOWER, 1)
    assert follower_status.peers == {}


# --- lost, delayed, duplicated and reordered messages --------------------------------------


def test_delayed_appends_overtaken_by_heartbeats_still_converge() -> None:
    """Appends held back while heartbeats (and the empty appends they provoke) go through
    first must not break replication when they finally arrive."""
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.propose(1, b"b")
    held = cluster.drop(lambda m: isinstance(m, AppendEntries) and m.target == 3)
    cluster.run(2 * cluster.core(1).config.heartbeat_ticks)
    cluster.in_flight.extend(held)
    cluster.stabilize()
    cluster.run(2 * cluster.core(1).config.heartbeat_ticks)
    assert cluster.log(3) == cluster.log(1)
    assert cluster.node(3).commands == [b"a", b"b"]


@pytest.mark.parametrize("seed", range(6))
def test_cluster_stays_safe_and_converges_despite_a_hostile_network(seed: int) -> None:
    """Loss, duplication, reordering, skipped ticks, crashes and an isolated leader every
    few rounds: every apply is checked against every other node's (the harness fails on
    any divergence), and once the network heals the cluster converges on one log that
    keeps every entry applied anywhere before."""
    rng = random.Random(seed)
    cluster = RaftCluster([1, 2, 3, 4, 5], seed=seed)
    leaders_seen: set[tuple[int, int]] = set()
    proposed = 0
    for round_number in range(200):
        if round_number % 25 == 0:
            cluster.heal()
            if rng.random() < 0.7:
                cluster.isolate(rng.choice(cluster.leaders() or [1]))
        for node_id in cluster.nodes:
            if rng.random() < 0.9:  # clocks drift: not every node ticks every round
                cluster.tick(node_id)
        for _ in range(3):
            rng.shuffle(cluster.in_flight)
            cluster.drop(lambda m: rng.random() < 0.2)
            cluster.in_flight.extend(m for m in list(cluster.in_flight) if rng.random() < 0.05)
            cluster.deliver()
        for leader in cluster.leaders()[:1]:
            leaders_seen.add((leader, cluster.core(leader).term))
            try:
                cluster.propose(leader, f"c{proposed}".encode())
                proposed += 1
            except ProposalDroppedError:
                pass  # a leader over its uncommitted limit may refuse
        if rng.random() < 0.03:
            victim = rng.choice(list(cluster.nodes))
            cluster.crash(victim)
            cluster.restart(victim)
        if rng.random() < 0.05:
            cluster.compact(rng.choice(list(cluster.nodes)))  # lagging peers need snapshots
    assert len(leaders_seen) >= 2  # the run did exercise elections
    applied_before_heal = dict(cluster.applied_by_index)
    cluster.heal()
    for _ in range(40 * cluster.core(1).config.election_ticks):
        cluster.run(1)
        logs = {tuple(cluster.log(i)) for i in cluster.nodes}
        applied = {cluster.node(i).applied_index for i in cluster.nodes}
        if len(cluster.leaders()) == 1 and len(logs) == 1 and len(applied) == 1:
            break
    assert len({tuple(cluster.node(i).state) for i in cluster.nodes}) == 1
    final = {e.index: e for e in cluster.log(1)}
    assert all(final[i] == e for i, e in applied_before_heal.items() if i in final)
    assert len(cluster.node(1).commands) > 0


# --- the test-only bug switches really inject their bug ------------------------------------


@pytest.mark.parametrize(("bugs", "commits_early"), [(frozenset(), False), (KNOWN_BUGS, True)])
def test_commit_previous_term_switch_counts_replicas_of_an_old_entry(
    bugs: frozenset[str], commits_early: bool
) -> None:
    """Node 1 (term 2) gets its term-1 entry at index 2 onto node 2 but not its no-op: only
    the "commit_previous_term" bug commits index 2 by counting replicas (§5.4.2)."""
    cluster = RaftCluster(
        [1, 2, 3],
        logs={
            1: entries_from_terms([1, 1]),
            2: entries_from_terms([1]),
            3: entries_from_terms([1]),
        },
        hard_states={i: HardState(term=1, commit_index=1) for i in (1, 2, 3)},
        batch_bytes_max=1,
        bugs=bugs & {"commit_previous_term"},
    )
    cluster.elect(1, votes_only)
    cluster.deliver(lambda m: isinstance(m, AppendEntries) and m.target == 2)  # probe fails
    cluster.deliver(of_type(AppendEntriesResponse))
    cluster.deliver(lambda m: isinstance(m, AppendEntries) and m.target == 2)  # index 2 only
    cluster.deliver(of_type(AppendEntriesResponse))
    assert cluster.log_terms(2) == [1, 1]
    assert (cluster.core(1).log.commit_index >= 2) == commits_early


@pytest.mark.parametrize(("bugs", "grants_twice"), [(frozenset(), False), (KNOWN_BUGS, True)])
def test_double_vote_switch_grants_two_votes_in_one_term(
    bugs: frozenset[str], grants_twice: bool
) -> None:
    core = make_core(1, log_terms=[1], term=1, bugs=bugs & {"double_vote"})
    core.ready()
    core.step(RequestVote(2, 2, 1, 1, 1))
    core.step(RequestVote(2, 3, 1, 1, 1))
    granted = [
        m.target
        for m in sent(core.ready())
        if isinstance(m, RequestVoteResponse) and m.vote_granted
    ]
    assert granted == ([2, 3] if grants_twice else [2])


@pytest.mark.parametrize(("bugs", "applies_early"), [(frozenset(), False), (KNOWN_BUGS, True)])
def test_apply_before_commit_switch_hands_out_uncommitted_entries(
    bugs: frozenset[str], applies_early: bool
) -> None:
    core = make_core(2, log_terms=[1], term=1, commit_index=1, bugs=bugs & {"apply_before_commit"})
    core.ready()
    core.step(AppendEntries(1, 1, 2, 1, 1, tuple(entries_from_terms([1], 2)), 1))
    applied = [e.index for e in core.ready().committed_entries]
    assert applied == ([2] if applies_early else [])
    assert core.log.commit_index == 1


def test_between_filter_keeps_other_links_waiting() -> None:
    """The harness itself: messages outside the chosen links stay in flight, unharmed."""
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1, votes_only)
    waiting = cluster.pending(lambda m: m.target == 3)
    cluster.stabilize(between(1, 2))
    assert cluster.pending(lambda m: m.target == 3) == waiting


def test_a_leader_removed_by_its_own_commit_sends_nothing_more_as_leader() -> None:
    # Committing the configuration that removes the leader makes it step down (§4.2.2).
    # The acknowledgement that commits it must not also draw one more AppendEntries from
    # it: its receiver would take a removed node for its leader and, with CheckQuorum,
    # ignore votes for an election timeout.
    # One entry per AppendEntries, one in flight: when the acknowledgement that commits the removal
    # arrives, the leader still has an entry to send that follower.
    cluster = RaftCluster([1, 2, 3], batch_bytes_max=1, inflight_max=1)
    cluster.elect(1)
    cluster.propose_configuration(1, Configuration(voters=frozenset({2, 3})))
    cluster.propose(1, b"after the removal")
    for _ in range(DELIVERY_ROUNDS_MAX):
        # One message at a time, to see what the one that commits the removal draws.
        sent_before = len(cluster.history)
        (oldest, *_) = cluster.pending()
        cluster.deliver(lambda message, oldest=oldest: message is oldest)
        if cluster.core(1).role != Role.LEADER:
            break
    assert cluster.core(1).role == Role.FOLLOWER
    sent_when_stepping_down = cluster.history[sent_before:]
    from_removed = [
        m for m in sent_when_stepping_down if m.source == 1 and isinstance(m, AppendEntries)
    ]
    assert from_removed == []


def test_reads_waiting_on_a_heartbeat_round_are_released_when_the_leader_is_left_alone() -> None:
    # The read's round was sent to node 2, which is gone. Once the configuration without
    # node 2 is appended (in force at once, §4.1) the leader is the whole majority: the
    # read is confirmed by the leader alone instead of waiting for an answer that never
    # comes (§6.4).
    cluster = RaftCluster([1, 2])
    cluster.elect(1)
    cluster.stabilize()
    cluster.isolate(2)
    cluster.read_index(1, 7)
    cluster.drop()
    assert cluster.node(1).read_states == []
    cluster.propose_configuration(1, Configuration(voters=frozenset({1})))
    assert [read.read_id for read in cluster.node(1).read_states] == [7]
    assert cluster.node(1).dropped_read_ids == []
