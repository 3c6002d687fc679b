"""The claims of the Raft paper and dissertation, one test each, checked against `RaftCore`.

Each test is named for the claim it checks; its docstring states the claim and
cites the section of the paper (Ongaro & Ousterhout 2014, "In Search of an
Understandable Consensus Algorithm") or of the dissertation (Ongaro 2014,
"Consensus: Bridging Theory and Practice"). Clusters are driven by hand through
`raft_harness.RaftCluster`; single messages are fed to lone cores built with
`raft_harness.make_core`.
"""

from __future__ import annotations

from typing import Any

import pytest
from raft_harness import (
    RaftCluster,
    between,
    entries_from_terms,
    make_core,
    of_type,
    sent,
    votes_only,
)

from kvraft.raft.core import (
    ConfigurationChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Role,
)
from kvraft.raft.messages import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from kvraft.raft.ready import ReadState

__all__: list[str] = []

ELECTION_TICKS = 10  # RaftConfig's default, spelled out because tests count ticks against it


def voters(*node_ids: int) -> Configuration:
    return Configuration(voters=frozenset(node_ids))


def tick_until_role_changes(core: RaftCore) -> int:
    """Tick a lone follower until it campaigns; returns the number of ticks it took."""
    for ticks in range(1, 4 * core.config.election_ticks):
        core.tick()
        if core.role != Role.FOLLOWER:
            return ticks
    raise AssertionError("the follower never campaigned")


def lone_leader(
    node_id: int = 1, voter_ids: tuple[int, ...] = (1, 2, 3), **overrides: Any
) -> RaftCore:
    """A lone core made leader of its term by granting it every vote by hand."""
    core = make_core(node_id, voter_ids, pre_vote=False, **overrides)
    tick_until_role_changes(core)
    for peer in voter_ids:
        if peer != node_id:
            core.step(RequestVoteResponse(core.term, peer, node_id, True))
    assert core.role == Role.LEADER
    return core


# --- §5.1 terms ----------------------------------------------------------------------------


def test_node_rejects_append_entries_from_a_leader_of_an_older_term() -> None:
    """A server rejects a request with a stale term number, and tells the sender its term.

    Reference: §5.1 ("If a server receives a request with a stale term number, it
    rejects the request"); Figure 2, AppendEntries receiver rule 1.
    """
    core = make_core(2, log_terms=[1, 1], term=5)
    core.ready()
    core.step(AppendEntries(3, 1, 2, 2, 1, tuple(entries_from_terms([3], 3)), 3))
    ready = core.ready()
    assert [e.term for e in core.log.entries] == [1, 1]
    assert core.term == 5
    assert core.leader_id == NO_NODE
    assert sent(ready) == [AppendEntriesResponse(5, 2, 1, False)]


def test_node_does_not_grant_its_vote_to_a_candidate_of_an_older_term() -> None:
    """A vote request of an older term is refused.

    Reference: §5.1; Figure 2, RequestVote rule 1 ("Reply false if term < currentTerm").
    """
    core = make_core(2, term=5)
    core.ready()
    core.step(RequestVote(4, 3, 2, 10, 4))
    ready = core.ready()
    assert core.voted_for == NO_NODE
    assert core.term == 5
    assert not any(isinstance(m, RequestVoteResponse) and m.vote_granted for m in sent(ready))


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("message_type", [AppendEntries, Heartbeat, AppendEntriesResponse])
def test_node_that_sees_a_higher_term_adopts_it_and_becomes_follower(
    role: Role, message_type: type
) -> None:
    """If a server's current term is smaller than another's, it updates its term; a
    candidate or leader that discovers a newer term reverts to follower.

    Reference: §5.1; Figure 2, "Rules for all servers".
    """
    core = make_core(1, pre_vote=role == Role.PRE_CANDIDATE)
    if role == Role.LEADER:
        core = lone_leader()
    elif role != Role.FOLLOWER:
        tick_until_role_changes(core)
    assert core.role == role
    higher = core.term + 3
    message: Message
    if message_type is AppendEntries:
        message = AppendEntries(higher, 2, 1, 0, 0, (), 0)
    elif message_type is Heartbeat:
        message = Heartbeat(higher, 2, 1, 0)
    else:
        message = AppendEntriesResponse(higher, 2, 1, False)
    core.step(message)
    assert core.role == Role.FOLLOWER
    assert core.term == higher
    assert core.voted_for == NO_NODE
    sender_leads = message_type is not AppendEntriesResponse
    assert core.leader_id == (2 if sender_leads else NO_NODE)


def test_node_that_gets_a_vote_request_of_a_higher_term_adopts_the_term() -> None:
    """A RequestVote of a higher term moves a node (that hears from no leader) to that term.

    Reference: §5.1; Figure 2, "Rules for all servers".
    """
    core = make_core(2, log_terms=[1], term=1)
    core.step(RequestVote(7, 3, 2, 1, 1))
    assert core.term == 7
    assert core.voted_for == 3


# --- §5.2 leader election ------------------------------------------------------------------


def test_follower_that_hears_nothing_starts_a_prevote_round_without_changing_its_term() -> None:
    """A follower that receives no communication over the election timeout begins an
    election; with PreVote it first asks whether it could win, in the term it would
    use, changing neither its term nor its vote.

    Reference: §5.2; dissertation §9.6.
    """
    core = make_core(1, log_terms=[1, 1], term=1)
    core.ready()
    tick_until_role_changes(core)
    assert core.role == Role.PRE_CANDIDATE
    assert (core.term, core.voted_for) == (1, NO_NODE)
    ready = core.ready()
    assert sorted(sent(ready), key=lambda m: m.target) == [
        RequestVote(2, 1, peer, 2, 1, pre_vote=True) for peer in (2, 3)
    ]
    assert ready.hard_state is None  # nothing durable changed

    core.step(RequestVoteResponse(2, 2, 1, True, pre_vote=True))
    assert core.status().role == Role.CANDIDATE
    assert (core.term, core.voted_for) == (2, 1)
    ready = core.ready()
    assert ready.hard_state == HardState(2, 1, 0)
    assert sorted(sent(ready), key=lambda m: m.target) == [
        RequestVote(2, 1, peer, 2, 1) for peer in (2, 3)
    ]


def test_follower_that_hears_nothing_starts_an_election_for_the_next_term() -> None:
    """Without PreVote: increment the term, vote for itself, ask everyone for votes.

    Reference: §5.2 ("it increments its current term ... votes for itself and issues
    RequestVote RPCs in parallel to each of the other servers").
    """
    core = make_core(1, (1, 2, 3, 4, 5), log_terms=[1], term=1, pre_vote=False)
    core.ready()
    tick_until_role_changes(core)
    assert core.role == Role.CANDIDATE
    assert (core.term, core.voted_for) == (2, 1)
    requests = sorted(sent(core.ready()), key=lambda m: m.target)
    assert requests == [RequestVote(2, 1, peer, 1, 1) for peer in (2, 3, 4, 5)]


def test_election_timeout_is_randomized_between_one_and_two_election_timeouts() -> None:
    """Election timeouts are chosen randomly from a fixed interval, here
    [election_ticks, 2 * election_ticks), so that split votes are rare.

    Reference: §5.2 ("randomized election timeouts").
    """
    seen = set()
    for seed in range(60):
        core = make_core(1, seed=seed, election_ticks=ELECTION_TICKS)
        ticks = tick_until_role_changes(core)
        assert ELECTION_TICKS <= ticks < 2 * ELECTION_TICKS
        seen.add(ticks)
    assert len(seen) >= ELECTION_TICKS // 2  # really spread, not one fixed value


def test_follower_that_hears_from_its_leader_never_starts_an_election() -> None:
    """A server remains follower as long as it receives valid RPCs from a leader.

    Reference: §5.2.
    """
    core = make_core(2, election_ticks=ELECTION_TICKS)
    for _ in range(20 * ELECTION_TICKS):
        core.tick()
        if core.election_elapsed == ELECTION_TICKS - 1:
            core.step(Heartbeat(1, 1, 2, 0))
        assert core.role == Role.FOLLOWER
    assert core.term == 1


def test_leader_sends_heartbeats_to_keep_its_authority() -> None:
    """Leaders send periodic heartbeats to all followers to maintain their authority.

    Reference: §5.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    heartbeat_ticks = cluster.core(1).config.heartbeat_ticks
    cluster.tick(1, count=heartbeat_ticks)
    assert sorted(m.target for m in cluster.pending(of_type(Heartbeat))) == [2, 3]
    cluster.run(20 * ELECTION_TICKS)
    assert cluster.leaders() == [1]
    assert {cluster.core(i).term for i in (1, 2, 3)} == {cluster.core(1).term}


@pytest.mark.parametrize(("granted_by", "wins"), [((2,), False), ((2, 3), True), ((2, 3, 4), True)])
def test_candidate_that_wins_a_majority_of_votes_becomes_leader(
    granted_by: tuple[int, ...], wins: bool
) -> None:
    """A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term.

    Reference: §5.2.
    """
    core = make_core(1, (1, 2, 3, 4, 5), pre_vote=False)
    tick_until_role_changes(core)
    for peer in granted_by:
        core.step(RequestVoteResponse(core.term, peer, 1, True))
    assert core.role == (Role.LEADER if wins else Role.CANDIDATE)


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("message_type", [AppendEntries, Heartbeat])
def test_candidate_that_hears_from_a_leader_of_its_term_becomes_follower(
    pre_vote: bool, message_type: type
) -> None:
    """If a candidate receives an AppendEntries RPC from another server claiming to be
    leader whose term is at least as large as the candidate's, it returns to follower.

    Reference: §5.2.
    """
    core = make_core(1, log_terms=[1], pre_vote=pre_vote)
    tick_until_role_changes(core)
    term = core.term
    message: Message = (
        AppendEntries(term, 3, 1, 1, 1, (), 1)
        if message_type is AppendEntries
        else Heartbeat(term, 3, 1, 1)
    )
    core.step(message)
    assert core.role == Role.FOLLOWER
    assert (core.term, core.leader_id) == (term, 3)


def test_node_votes_for_at_most_one_candidate_per_term_first_come_first_served() -> None:
    """Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis (a repeated request from the same candidate is
    granted again: it may be a retransmission).

    Reference: §5.2; Figure 2 RequestVote receiver rule 2.
    """
    core = make_core(1, log_terms=[1], term=1)
    core.ready()
    core.step(RequestVote(2, 2, 1, 1, 1))
    core.step(RequestVote(2, 3, 1, 1, 1))
    core.step(RequestVote(2, 2, 1, 1, 1))
    answers = [m for m in sent(core.ready()) if isinstance(m, RequestVoteResponse)]
    assert [(m.target, m.vote_granted) for m in answers] == [(2, True), (3, False), (2, True)]
    assert (core.term, core.voted_for) == (2, 2)


def test_split_vote_is_resolved_by_a_new_election() -> None:
    """When no candidate obtains a majority, each times out and starts a new election
    by incrementing its term; randomized timeouts make a winner likely.

    Reference: §5.2.
    """
    cluster = RaftCluster([1, 2, 3, 4])
    cluster.campaign(1)
    cluster.campaign(2)
    cluster.stabilize(lambda m: isinstance(m, RequestVote | RequestVoteResponse) and m.pre_vote)
    assert {cluster.core(1).role, cluster.core(2).role} == {Role.CANDIDATE}
    # Node 3 hears from candidate 1 first and node 4 from candidate 2: two votes each.
    cluster.deliver(lambda m: (m.source, m.target) in {(1, 3), (2, 4)})
    cluster.stabilize(votes_only)
    assert cluster.leaders() == []
    assert {cluster.core(i).term for i in (1, 2, 3, 4)} == {1}

    for _ in range(10 * ELECTION_TICKS):
        cluster.run(1)
        if cluster.leaders():
            break
    leaders = cluster.leaders()
    assert len(leaders) == 1
    assert cluster.core(leaders[0]).term > 1


# --- §5.3 log replication ------------------------------------------------------------------


def test_new_leader_appends_a_noop_entry_of_its_term() -> None:
    """A leader commits a blank no-op entry at the start of its term.

    Reference: §5.4.2 / §8 ("each leader commit a blank no-op entry into the log at the
    start of its term"); dissertation §6.4.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    last = cluster.log(1)[-1]
    assert (last.kind, last.term, last.data) == (EntryKind.NOOP, cluster.core(1).term, b"")
    assert all(cluster.log(i) == cluster.log(1) for i in (2, 3))


def test_entry_is_committed_once_a_majority_stores_it() -> None:
    """A log entry is committed once the leader that created it has replicated it on a
    majority of the servers; the leader then applies it.

    Reference: §5.3.
    """
    cluster = RaftCluster([1, 2, 3, 4, 5])
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.stabilize(between(1, 2))  # the messages to 3, 4, 5 wait in the network
    assert cluster.core(1).log.commit_index < index
    assert b"x" not in cluster.node(1).commands

    cluster.deliver(lambda m: isinstance(m, AppendEntries) and m.target == 3)
    cluster.deliver(lambda m: isinstance(m, AppendEntriesResponse) and m.source == 3)
    assert cluster.core(1).log.commit_index >= index
    assert cluster.node(1).commands == [b"x"]


def test_followers_apply_an_entry_once_the_leader_tells_them_it_is_committed() -> None:
    """Once a follower learns that a log entry is committed (from leader_commit in a
    later AppendEntries or heartbeat), it applies the entry, in log order.

    Reference: §5.3.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.deliver(of_type(AppendEntries))
    assert all(cluster.log(i)[-1].data == b"x" for i in (2, 3))
    assert cluster.node(2).commands == [] and cluster.node(3).commands == []
    cluster.deliver(of_type(AppendEntriesResponse))
    assert cluster.core(1).log.commit_index == index
    cluster.stabilize()
    # The leader does not announce the new commit index on its own: the followers learn it
    # from the next AppendEntries or heartbeat.
    assert cluster.node(1).commands == [b"x"]
    assert cluster.node(2).commands == [] and cluster.node(3).commands == []
    cluster.heartbeat(1)
    assert [cluster.node(i).commands for i in (1, 2, 3)] == [[b"x"]] * 3


@pytest.mark.parametrize(
    ("prev_log_index", "prev_log_term"), [(3, 1), (2, 2), (4, 2), (9, 2)], ids=str
)
def test_follower_rejects_append_entries_whose_previous_entry_does_not_match(
    prev_log_index: int, prev_log_term: int
) -> None:
    """If the follower does not find an entry with the same index and term as the
    entry preceding the new ones, it refuses them (the consistency check).

    Reference: §5.3; Figure 2, AppendEntries receiver rule 2.
    """
    core = make_core(2, log_terms=[1, 1, 2], term=2)
    core.ready()
    new_entry = entries_from_terms([2], prev_log_index + 1)
    core.step(AppendEntries(2, 1, 2, prev_log_index, prev_log_term, tuple(new_entry), 0))
    (answer,) = sent(core.ready())
    assert isinstance(answer, AppendEntriesResponse)
    assert not answer.success
    assert answer.reject_index == prev_log_index
    assert [e.term for e in core.log.entries] == [1, 1, 2]


def test_follower_accepts_append_entries_whose_previous_entry_matches() -> None:
    """Reference: §5.3 (the induction step of the consistency check)."""
    core = make_core(2, log_terms=[1, 1, 2], term=2)
    core.ready()
    core.step(AppendEntries(2, 1, 2, 3, 2, tuple(entries_from_terms([2], 4)), 0))
    (answer,) = sent(core.ready())
    assert answer == AppendEntriesResponse(2, 2, 1, True, match_index=4)
    assert [e.term for e in core.log.entries] == [1, 1, 2, 2]


# Figure 7: the leader of term 8 and six possible follower logs.
FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower", sorted(FIGURE7_FOLLOWERS))
def test_leader_forces_a_conflicting_follower_log_to_duplicate_its_own(follower: str) -> None:
    """The leader handles inconsistencies by forcing the followers' logs to duplicate
    its own: it backs up to the latest entry where the logs agree, and the follower
    deletes everything after it. With the conflict hint, one rejection skips a whole
    conflicting term. The leader never deletes or overwrites its own entries.

    Reference: §5.3 and Figure 7 (including the "optimization" paragraph); Figure 3,
    Leader Append-Only.
    """
    follower_terms = FIGURE7_FOLLOWERS[follower]
    cluster = RaftCluster(
        [1, 2, 3],
        logs={1: entries_from_terms(FIGURE7_LEADER), 2: entries_from_terms(follower_terms)},
        hard_states={node_id: HardState(term=7) for node_id in (1, 2, 3)},
    )
    leader_log_before = cluster.log(1)
    cluster.elect(1)
    assert cluster.core(1).term == 8
    cluster.stabilize()
    assert cluster.log(1)[: len(leader_log_before)] == leader_log_before
    assert cluster.log(2) == cluster.log(1)
    rejections = [
        m
        for m in cluster.history
        if isinstance(m, AppendEntriesResponse) and m.source == 2 and not m.success
    ]
    # At least one whole term per round trip (plus one for a follower log that is short).
    assert len(rejections) <= len(set(follower_terms)) + 1
    cluster.run(cluster.core(1).config.heartbeat_ticks)  # the next heartbeat carries the commit
    assert cluster.core(2).log.commit_index == len(cluster.log(1))


def test_follower_never_drops_entries_on_a_delayed_shorter_append_entries() -> None:
    """Only a conflicting entry (same index, different term) and those after it are
    deleted: a delayed, shorter AppendEntries from the same leader truncates nothing.

    Reference: Figure 2, AppendEntries receiver rule 3.
    """
    core = make_core(2, log_terms=[1, 1, 1], term=1, commit_index=1)
    core.step(AppendEntries(1, 1, 2, 1, 1, tuple(entries_from_terms([1], 2)), 1))
    assert [e.term for e in core.log.entries] == [1, 1, 1]


def test_follower_never_truncates_a_committed_entry() -> None:
    """An entry known committed is never removed from a follower's log, even by an
    AppendEntries that claims a conflict below the commit index.

    Reference: §5.3 / §5.4 (committed entries are durable and never overwritten).
    """
    core = make_core(2, log_terms=[1, 1, 1], term=1, commit_index=3)
    core.ready()
    core.step(AppendEntries(2, 1, 2, 1, 1, tuple(entries_from_terms([2], 2)), 3))
    (answer,) = sent(core.ready())
    assert [e.term for e in core.log.entries] == [1, 1, 1]
    assert answer == AppendEntriesResponse(2, 2, 1, True, match_index=3)


# --- §5.4.1 election restriction -----------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize(
    ("candidate_last_term", "candidate_last_index", "granted"),
    [(1, 10, False), (2, 2, False), (2, 3, True), (2, 4, True), (3, 1, True)],
    ids=str,
)
def test_voter_refuses_a_candidate_whose_log_is_less_up_to_date(
    pre_vote: bool, candidate_last_term: int, candidate_last_index: int, granted: bool
) -> None:
    """The voter denies its vote if its own log is more up-to-date than the candidate's:
    the log whose last entry has the later term is more up-to-date; with equal last
    terms, the longer log is.

    Reference: §5.4.1.
    """
    core = make_core(1, log_terms=[1, 2, 2], term=2)
    core.ready()
    core.step(RequestVote(3, 2, 1, candidate_last_index, candidate_last_term, pre_vote=pre_vote))
    (answer,) = sent(core.ready())
    assert isinstance(answer, RequestVoteResponse)
    assert answer.vote_granted == granted
    assert core.voted_for == (2 if granted and not pre_vote else NO_NODE)


# --- §5.4.2 Figure 8 -----------------------------------------------------------------------


def figure8_until_c() -> RaftCluster:
    """Figure 8 (a)-(c), with the index of each entry shifted by our no-ops:

    (a) S1 leads term 2 and replicates its index-2 entry to S2 only;
    (b) S1 crashes; S5 is elected for term 3 by S3, S4, S5 and appends index 2 (term 3);
    (c) S5 crashes; S1 restarts, is elected for term 4 and replicates index 2 (term 2)
        to S3 and S4, but its term-4 entry (index 3) reaches nobody before it crashes.
    Plain Raft as in the paper: no PreVote or CheckQuorum; one entry per AppendEntries.
    """
    everyone = (1, 2, 3, 4, 5)
    cluster = RaftCluster(
        everyone,
        logs={node_id: entries_from_terms([1]) for node_id in everyone},
        hard_states={node_id: HardState(term=1, commit_index=1) for node_id in everyone},
        pre_vote=False,
        check_quorum=False,
        batch_bytes_max=1,
    )
    # (a)
    cluster.elect(1, votes_only)
    assert cluster.core(1).term == 2
    cluster.stabilize(between(1, 2))
    cluster.drop()
    assert [cluster.log_terms(i) for i in everyone] == [[1, 2], [1, 2], [1], [1], [1]]
    cluster.crash(1)
    # (b)
    cluster.elect(5, votes_only)
    assert cluster.core(5).term == 3
    cluster.drop()
    cluster.crash(5)
    assert cluster.log_terms(5) == [1, 3]
    # (c)
    cluster.restart(1)
    cluster.elect(1, votes_only)
    assert cluster.core(1).term == 4
    assert cluster.log_terms(1) == [1, 2, 4]

    def appends_to_3_and_4(message: Message) -> bool:
        return isinstance(message, AppendEntries) and message.target in (3, 4)

    def answers_of_3_and_4(message: Message) -> bool:
        return isinstance(message, AppendEntriesResponse) and message.source in (3, 4)

    cluster.deliver(appends_to_3_and_4)  # S1's probes fail: S3, S4 lack index 2
    cluster.deliver(answers_of_3_and_4)
    cluster.deliver(appends_to_3_and_4)  # S1 backs up: index 2 only (one entry per message)
    cluster.deliver(answers_of_3_and_4)
    assert [cluster.log_terms(i) for i in everyone] == [[1, 2, 4], [1, 2], [1, 2], [1, 2], [1, 3]]
    return cluster


def test_leader_does_not_commit_an_entry_of_an_earlier_term_by_counting_replicas() -> None:
    """Figure 8 (c): the term-2 entry at index 2 is stored on a majority (S1, S2, S3,
    S4), acknowledged in term 4, yet S1 must not consider it committed.

    Reference: §5.4.2, Figure 8 ("Raft never commits log entries from previous terms by
    counting replicas").
    """
    cluster = figure8_until_c()
    peers = cluster.core(1).status().peers
    assert peers[3].match_index >= 2 and peers[4].match_index >= 2
    assert cluster.core(1).log.commit_index == 1
    assert all(index < 2 for index in cluster.applied_by_index)


def test_uncommitted_entry_of_an_earlier_term_can_be_overwritten_by_a_later_leader() -> None:
    """Figure 8 (d): S1 crashes; S5 (last log term 3) is elected with votes from S2, S3
    and S4 and overwrites index 2 everywhere with its own term-3 entry. This is why
    (c) must not have committed it.

    Reference: §5.4.2, Figure 8 (d).
    """
    cluster = figure8_until_c()
    cluster.crash(1)
    cluster.drop()
    cluster.restart(5)
    cluster.elect(5, votes_only)
    assert cluster.core(5).term == 5
    cluster.stabilize()
    assert [cluster.log_terms(i) for i in (2, 3, 4, 5)] == [[1, 3, 5]] * 4
    assert cluster.core(5).log.commit_index == 3
    assert cluster.applied_by_index[2].term == 3  # the term-2 entry was never applied


def test_earlier_term_entry_commits_together_with_an_entry_of_the_leaders_term() -> None:
    """Figure 8 (e): once S1 replicates an entry of its own term (4) on a majority, that
    entry is committed and, by the Log Matching Property, so is index 2 (term 2); S5
    can then no longer be elected.

    Reference: §5.4.2, Figure 8 (e).
    """
    cluster = figure8_until_c()
    cluster.stabilize()  # S1's term-4 entry now reaches S2, S3 and S4
    assert cluster.core(1).log.commit_index == 3
    assert [e.term for e in cluster.node(1).store.entries] == [1, 2, 4]
    assert cluster.applied_by_index[2].term == 2

    cluster.restart(5)
    for _ in range(10 * ELECTION_TICKS):
        cluster.tick(5)
        cluster.stabilize()
        assert cluster.core(5).role != Role.LEADER
    assert all(cluster.log_terms(i)[:2] == [1, 2] for i in (1, 2, 3, 4))


# --- §5.4.3 Leader Completeness ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_newly_elected_leader_holds_every_committed_entry(seed: int) -> None:
    """Leader Completeness: if an entry is committed in a term, it is present in the
    logs of the leaders of all higher terms, even when lagging nodes take part in the
    election.

    Reference: §5.4.3, Figure 3.
    """
    cluster = RaftCluster([1, 2, 3, 4, 5], seed=seed)
    cluster.elect(1)
    cluster.partition([1, 2, 3], [4, 5])
    for number in range(5):
        cluster.propose(1, f"v{number}".encode())
        cluster.stabilize()
    committed = [e for e in cluster.log(1) if e.index <= cluster.core(1).log.commit_index]
    assert [e.data for e in committed if e.kind == EntryKind.NORMAL] == [
        f"v{n}".encode() for n in range(5)
    ]
    cluster.crash(1)
    cluster.heal()
    for _ in range(20 * ELECTION_TICKS):
        cluster.run(1)
        if cluster.leaders():
            break
    (new_leader,) = cluster.leaders()
    assert new_leader in (2, 3)
    new_log = {e.index: e for e in cluster.log(new_leader)}
    assert all(new_log.get(e.index) == e for e in committed)


# --- §6.2 CheckQuorum and leases -----------------------------------------------------------


def test_leader_that_hears_from_no_majority_within_an_election_timeout_steps_down() -> None:
    """With CheckQuorum, a leader that has not heard from a majority of the cluster
    within an election timeout steps down, so clients look for the real leader.

    Reference: dissertation §6.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    term = cluster.core(1).term
    cluster.run(5 * ELECTION_TICKS)  # a healthy leader stays
    assert cluster.leaders() == [1]
    cluster.isolate(1)
    cluster.run(2 * ELECTION_TICKS, 1)
    assert cluster.core(1).role == Role.FOLLOWER
    assert cluster.core(1).term == term


def test_follower_that_recently_heard_from_its_leader_ignores_vote_requests() -> None:
    """A server that heard from a current leader within the minimum election timeout
    does not grant a vote or update its term on RequestVote (nor PreVote) (the lease).

    Reference: dissertation §4.2.3 and §6.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.run(3)
    follower = cluster.core(2)
    term, voted_for = follower.term, follower.voted_for
    last = follower.log.entries[-1]
    for pre_vote in (True, False):
        follower.step(RequestVote(term + 1, 3, 2, last.index + 5, term + 1, pre_vote=pre_vote))
        cluster.process(2)
    assert (follower.term, follower.voted_for, follower.leader_id) == (term, voted_for, 1)
    assert cluster.pending(lambda m: m.source == 2) == []


def test_partitioned_node_that_rejoins_does_not_disrupt_the_leader() -> None:
    """A node cut off from the cluster keeps timing out, but with PreVote its term does
    not grow, so when it rejoins it neither forces the leader down nor changes the
    term; it simply follows the leader again.

    Reference: dissertation §9.6 and §6.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"before")
    cluster.stabilize()
    term = cluster.core(1).term
    cluster.isolate(3)
    cluster.run(10 * ELECTION_TICKS)
    assert cluster.core(3).term == term
    cluster.heal()
    cluster.run(5 * ELECTION_TICKS)
    assert cluster.leaders() == [1]
    assert {cluster.core(i).term for i in (1, 2, 3)} == {term}
    assert cluster.core(3).leader_id == 1
    assert cluster.node(3).commands == [b"before"]


# --- §9.6 PreVote --------------------------------------------------------------------------


@pytest.mark.parametrize(("pre_vote", "term_grows"), [(True, False), (False, True)])
def test_partitioned_node_does_not_increase_its_term_with_prevote(
    pre_vote: bool, term_grows: bool
) -> None:
    """With PreVote, a node that cannot win an election (it cannot reach a majority)
    never increments its term; without it, the term grows with every timeout.

    Reference: dissertation §9.6.
    """
    cluster = RaftCluster([1, 2, 3], pre_vote=pre_vote)
    cluster.elect(1)
    term = cluster.core(3).term
    cluster.isolate(3)
    cluster.run(10 * ELECTION_TICKS, 3)
    assert (cluster.core(3).term > term) == term_grows
    if pre_vote:
        sent_by_3 = [m for m in cluster.history if m.source == 3 and isinstance(m, RequestVote)]
        assert sent_by_3 and all(m.pre_vote for m in sent_by_3)


# --- §6.4 ReadIndex ------------------------------------------------------------------------


def test_read_is_answered_only_after_a_majority_acknowledges_a_heartbeat_round() -> None:
    """ReadIndex: the leader records its commit index, then confirms it is still leader
    by a round of heartbeats acknowledged by a majority; only then may the read be
    served, at an index that includes every write committed before the read began.

    Reference: dissertation §6.4, steps 1-3.
    """
    cluster = RaftCluster([1, 2, 3, 4, 5])
    cluster.elect(1)
    write_index = cluster.propose(1, b"w")
    cluster.stabilize()
    cluster.read_index(1, 7)
    assert sorted(m.target for m in cluster.pending(of_type(Heartbeat))) == [2, 3, 4, 5]
    cluster.deliver(lambda m: isinstance(m, Heartbeat) and m.target == 2)
    cluster.deliver(of_type(HeartbeatResponse))
    assert cluster.node(1).read_states == []  # leader + 1 of 5 is no majority
    cluster.deliver(lambda m: isinstance(m, Heartbeat) and m.target == 3)
    cluster.deliver(of_type(HeartbeatResponse))
    (read_state,) = cluster.node(1).read_states
    assert read_state.read_id == 7
    assert read_state.read_index >= write_index


def test_reads_queued_before_one_ready_share_one_heartbeat_round() -> None:
    """Reads that arrive together are confirmed by a single round of heartbeats.

    Reference: dissertation §6.4 ("batching" of read-only queries).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    for read_id in range(1, 6):
        cluster.core(1).read_index(read_id)
    cluster.process(1)
    assert sorted(m.target for m in cluster.pending(of_type(Heartbeat))) == [2, 3]
    cluster.stabilize()
    assert sorted(r.read_id for r in cluster.node(1).read_states) == [1, 2, 3, 4, 5]


def test_new_leader_answers_reads_only_after_its_noop_commits() -> None:
    """A new leader does not know its commit index until an entry of its own term is
    committed; it serves reads only after its no-op commits.

    Reference: dissertation §6.4 step 1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1, votes_only)
    noop_index = cluster.log(1)[-1].index
    cluster.read_index(1, 9)
    assert cluster.pending(of_type(Heartbeat)) == []
    cluster.stabilize()
    assert cluster.node(1).read_states == [ReadState(9, cluster.core(1).log.commit_index)]
    assert cluster.node(1).read_states[0].read_index >= noop_index


@pytest.mark.parametrize("how", ["higher_term", "check_quorum"])
def test_deposed_leader_drops_its_pending_reads(how: str) -> None:
    """A leader that loses leadership before confirming a read must not answer it: the
    read is reported dropped so the client can retry elsewhere.

    Reference: dissertation §6.4 (leadership must be confirmed for each read).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    term = cluster.core(1).term
    cluster.read_index(1, 42)
    cluster.drop()
    cluster.isolate(1)
    if how == "check_quorum":
        cluster.run(2 * ELECTION_TICKS, 1)
    else:
        for _ in range(10 * ELECTION_TICKS):
            cluster.run(1, 2, 3)
            if cluster.leaders() != [1]:
                break
        cluster.heal()
        cluster.run(cluster.core(1).config.heartbeat_ticks)  # the new leader's heartbeat
        assert cluster.core(1).term > term
    assert cluster.core(1).role == Role.FOLLOWER
    assert cluster.node(1).dropped_read_ids == [42]
    assert cluster.node(1).read_states == []


def test_single_node_cluster_answers_reads_at_once() -> None:
    """With one voter, the leader is its own majority: no heartbeat round is needed.

    Reference: dissertation §6.4.
    """
    cluster = RaftCluster([1])
    cluster.elect(1)
    cluster.read_index(1, 3)
    assert cluster.node(1).read_states == [ReadState(3, cluster.core(1).log.commit_index)]
    assert cluster.in_flight == []


# --- §3.10 leadership transfer -------------------------------------------------------------


def test_transfer_to_an_up_to_date_follower_makes_it_leader_at_once() -> None:
    """The leader sends TimeoutNow to an up-to-date target, which starts an election
    at once and wins it, even though the other voters still hear from the old leader
    (its RequestVote is marked as a transfer, which lifts the lease).

    Reference: dissertation §3.10.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.run(3)
    term = cluster.core(1).term
    cluster.transfer_leadership(1, 2)
    assert cluster.pending() == [TimeoutNow(term, 1, 2)]
    cluster.deliver()
    # Only node 3, which is in its lease, gets to vote.
    cluster.drop(lambda m: isinstance(m, RequestVote) and m.target == 1)
    cluster.stabilize()
    assert cluster.leaders() == [2]
    assert cluster.core(2).term == term + 1
    assert cluster.core(3).voted_for == 2
    cluster.stabilize()
    cluster.tick(1)
    cluster.stabilize()
    assert cluster.core(1).role == Role.FOLLOWER


def lagging_node_3() -> RaftCluster:
    """Node 1 leads with entries that node 3 (down until now) has never seen."""
    cluster = RaftCluster([1, 2, 3])
    cluster.crash(3)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.propose(1, b"y")
    cluster.stabilize()
    cluster.restart(3)
    return cluster


def test_transfer_to_a_lagging_follower_first_catches_it_up() -> None:
    """The leader first brings the target's log up to date, and only then sends
    TimeoutNow; the target then wins with a complete log.

    Reference: dissertation §3.10 step 2.
    """
    cluster = lagging_node_3()
    cluster.transfer_leadership(1, 3)
    assert cluster.pending(of_type(TimeoutNow)) == []
    for _ in range(ELECTION_TICKS):
        if cluster.pending(of_type(TimeoutNow)):
            break
        cluster.tick(1)
        cluster.stabilize(lambda m: not isinstance(m, TimeoutNow))
    assert cluster.pending(of_type(TimeoutNow)) == [TimeoutNow(cluster.core(1).term, 1, 3)]
    assert cluster.log(3) == cluster.log(1)
    cluster.stabilize()
    assert cluster.leaders() == [3]
    assert cluster.node(3).commands == [b"x", b"y"]


def test_leader_refuses_proposals_during_a_transfer() -> None:
    """While it hands over, the old leader stops accepting client requests.

    Reference: dissertation §3.10 step 1.
    """
    cluster = lagging_node_3()
    cluster.transfer_leadership(1, 3)
    with pytest.raises(ProposalDroppedError):
        cluster.propose(1, b"z")
    assert cluster.core(1).status().leadership_transfer_to == 3


def test_transfer_that_cannot_finish_is_abandoned_after_an_election_timeout() -> None:
    """If the transfer does not complete within an election timeout, the leader aborts
    it and resumes accepting client requests.

    Reference: dissertation §3.10.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.crash(3)
    cluster.transfer_leadership(1, 3)
    cluster.run(ELECTION_TICKS - 1)
    assert cluster.core(1).status().leadership_transfer_to == 3
    with pytest.raises(ProposalDroppedError):
        cluster.propose(1, b"early")
    cluster.run(1)
    assert cluster.core(1).status().leadership_transfer_to == NO_NODE
    assert cluster.leaders() == [1]
    cluster.propose(1, b"after")
    cluster.stabilize()
    cluster.heartbeat(1)
    assert cluster.node(2).commands == [b"after"]


# --- §4 membership changes -----------------------------------------------------------------


def test_configuration_takes_effect_when_appended_not_when_committed() -> None:
    """A server always uses the latest configuration in its log, regardless of
    whether the entry is committed.

    Reference: dissertation §4.1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.join(4)
    new = voters(1, 2, 3, 4)
    index = cluster.propose_configuration(1, new)
    assert cluster.core(1).status().configuration == new
    assert 4 in cluster.core(1).status().peers
    cluster.deliver(lambda m: isinstance(m, AppendEntries) and m.target == 2)
    assert cluster.core(2).log.commit_index < index
    assert cluster.core(2).status().configuration == new
    # With four voters, two acknowledgements are no longer a majority.
    cluster.stabilize(between(1, 2))
    assert cluster.core(1).log.commit_index < index
    cluster.stabilize()
    assert cluster.core(1).log.commit_index >= index


def test_only_one_membership_change_may_be_in_progress() -> None:
    """A leader does not begin a new configuration change until the previous one is
    committed.

    Reference: dissertation §4.1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose_configuration(1, Configuration(voters(1, 2, 3).voters, frozenset({4})))
    with pytest.raises(ConfigurationChangeError):
        cluster.propose_configuration(1, Configuration(voters(1, 2, 3).voters, frozenset({5})))
    cluster.stabilize()
    cluster.propose_configuration(1, Configuration(voters(1, 2, 3).voters, frozenset({5})))


@pytest.mark.parametrize(
    "new_voters", [(1, 2, 3, 4, 5), (1,), (1, 2, 4)], ids=["add_two", "remove_two", "swap_one"]
)
def test_changing_more_than_one_voter_at_once_is_refused(new_voters: tuple[int, ...]) -> None:
    """Single-server changes only: adding or removing one voter keeps every majority of
    the old and new configurations overlapping.

    Reference: dissertation §4.1, Figure 4.2/4.3.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    with pytest.raises(ConfigurationChangeError):
        cluster.propose_configuration(1, voters(*new_voters))
    assert cluster.core(1).status().pending_configuration_index == 0


def test_membership_change_is_refused_until_the_leader_commits_an_entry_of_its_term() -> None:
    """A leader may not append a configuration entry until it has committed an entry
    of its current term (the 2015 fix to single-server changes).

    Reference: dissertation §4.1 erratum (raft-dev, "bug in single-server membership
    changes", 2015).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1, votes_only)
    with pytest.raises(ConfigurationChangeError):
        cluster.propose_configuration(1, voters(1, 2))
    cluster.stabilize()
    cluster.propose_configuration(1, voters(1, 2))


def test_learner_receives_entries_but_neither_votes_nor_counts_toward_commit() -> None:
    """A non-voting member replicates the log but is not counted for majorities (for
    elections, commitment or CheckQuorum) and never campaigns.

    Reference: dissertation §4.2.1.
    """
    cluster = RaftCluster([1, 2, 3], learners=[4])
    cluster.elect(1)
    assert not any(isinstance(m, RequestVote) and m.target == 4 for m in cluster.history)
    cluster.propose(1, b"x")
    cluster.stabilize()
    cluster.heartbeat(1)
    assert cluster.node(4).commands == [b"x"]

    cluster.partition([1, 4], [2, 3])
    index = cluster.propose(1, b"y")
    cluster.stabilize()
    assert cluster.log(4)[-1].index == index
    assert cluster.core(1).log.commit_index < index
    cluster.run(2 * ELECTION_TICKS, 1, 4)
    assert cluster.core(1).role == Role.FOLLOWER  # a learner is no quorum either
    cluster.run(10 * ELECTION_TICKS, 4)
    assert cluster.core(4).role == Role.FOLLOWER
    assert not any(isinstance(m, RequestVote) and m.source == 4 for m in cluster.history)


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    """A leader removed from the configuration manages the cluster until the new
    configuration commits (without counting itself), then steps down and no longer
    campaigns; the remaining voters elect a leader among themselves.

    Reference: dissertation §4.2.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose_configuration(1, voters(2, 3))
    assert cluster.core(1).role == Role.LEADER
    cluster.stabilize(between(1, 2))  # 1 and 2 are not a majority of {2, 3}
    assert cluster.core(1).role == Role.LEADER
    cluster.stabilize()
    assert cluster.core(1).role == Role.FOLLOWER
    sent_before = len(cluster.history)
    for _ in range(20 * ELECTION_TICKS):
        cluster.run(1)
        if cluster.leaders():
            break
    assert cluster.leaders()[0] in (2, 3)
    assert not any(
        isinstance(m, RequestVote) and m.source == 1 for m in cluster.history[sent_before:]
    )


def test_removed_follower_that_never_learns_of_its_removal_cannot_disrupt_the_cluster() -> None:
    """Once the leader appends the configuration without a server, that server gets no
    more heartbeats and times out; PreVote and the lease keep it from deposing the
    leader or raising the term.

    Reference: dissertation §4.2.3.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose_configuration(1, voters(1, 2))
    cluster.stabilize()
    term = cluster.core(1).term
    cluster.run(10 * ELECTION_TICKS)
    assert cluster.leaders() == [1]
    assert cluster.core(1).term == term
    assert cluster.core(2).term == term
    cluster.propose(1, b"after")
    cluster.stabilize()
    cluster.heartbeat(1)
    assert cluster.node(2).commands == [b"after"]


def test_node_not_in_its_configuration_never_starts_an_election() -> None:
    """A server that knows it is not a voter (removed, learner, or not yet added)
    never campaigns.

    Reference: dissertation §4.2.2 and §4.2.1.
    """
    core = make_core(3, (1, 2), log_terms=[1], term=1)
    core.ready()
    for _ in range(10 * ELECTION_TICKS):
        core.tick()
    assert core.role == Role.FOLLOWER
    assert core.term == 1
    assert sent(core.ready()) == []


def test_new_node_with_an_empty_configuration_gets_the_log_from_the_leader() -> None:
    """A new server joins knowing no configuration; the leader brings its log up to
    date (here as a learner first, then promoted to voter).

    Reference: dissertation §4.2.1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.stabilize()
    cluster.join(4)
    cluster.run(5 * ELECTION_TICKS, 4)
    assert cluster.core(4).role == Role.FOLLOWER  # knows no configuration: never campaigns
    cluster.propose_configuration(1, Configuration(voters(1, 2, 3).voters, frozenset({4})))
    cluster.stabilize()
    assert cluster.log(4) == cluster.log(1)
    cluster.heartbeat(1)
    assert cluster.node(4).commands == [b"a"]
    cluster.propose_configuration(1, voters(1, 2, 3, 4))
    cluster.propose(1, b"b")
    cluster.stabilize()
    assert cluster.core(4).status().configuration == voters(1, 2, 3, 4)
    cluster.heartbeat(1)
    assert cluster.node(4).commands == [b"a", b"b"]


def test_new_node_joining_after_compaction_gets_a_snapshot() -> None:
    """When the entries a new server needs were compacted away, the leader sends it a
    snapshot, including the configuration, then the entries after it.

    Reference: dissertation §4.2.1 and §5 (paper §7).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    for number in range(4):
        cluster.propose(1, f"a{number}".encode())
        cluster.stabilize()
    cluster.compact(1)
    cluster.join(4)
    cluster.propose_configuration(1, Configuration(voters(1, 2, 3).voters, frozenset({4})))
    cluster.propose(1, b"b")
    cluster.stabilize()
    assert [meta.index for meta in cluster.node(4).restored_snapshots] == [
        cluster.core(1).log.snapshot.index
    ]
    assert cluster.node(4).commands == cluster.node(1).commands
    assert cluster.core(4).status().configuration.learners == {4}


# --- §7 log compaction ---------------------------------------------------------------------


def test_leader_sends_a_snapshot_to_a_follower_that_needs_compacted_entries() -> None:
    """The leader sends InstallSnapshot to followers that lag too far behind; the
    follower replaces its state with the snapshot and then receives the entries that
    follow it.

    Reference: paper §7.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.crash(3)
    cluster.elect(1)
    for number in range(5):
        cluster.propose(1, f"x{number}".encode())
        cluster.stabilize()
    meta = cluster.compact(1)
    cluster.propose(1, b"after")
    cluster.stabilize()
    cluster.restart(3)
    cluster.run(3 * ELECTION_TICKS)
    snapshots_to_3 = [
        m for m in cluster.history if isinstance(m, InstallSnapshot) and m.target == 3
    ]
    assert snapshots_to_3 and snapshots_to_3[0].meta == meta
    assert cluster.node(3).restored_snapshots == [meta]
    assert cluster.node(3).commands == cluster.node(1).commands
    assert cluster.node(3).commands[-1] == b"after"
    assert cluster.log(3) == cluster.log(1)


@pytest.mark.parametrize("snapshot_index", [3, 5])
def test_follower_ignores_a_snapshot_at_or_below_its_commit_index_but_answers_it(
    snapshot_index: int,
) -> None:
    """A snapshot that holds nothing the follower has not committed is not installed,
    but it is acknowledged so the leader can move on.

    Reference: paper §7 (and Figure 13, the receiver's rules).
    """
    core = make_core(2, log_terms=[1, 1, 1, 1, 1, 1], term=1, commit_index=5)
    core.ready()
    meta = SnapshotMeta(snapshot_index, 1, voters(1, 2, 3))
    core.step(InstallSnapshot(1, 1, 2, meta, b"state"))
    ready = core.ready()
    assert ready.snapshot is None
    assert sent(ready) == [AppendEntriesResponse(1, 2, 1, True, match_index=5)]
    assert len(core.log.entries) == 6


def test_follower_that_holds_the_snapshots_last_entry_keeps_the_entries_after_it() -> None:
    """If the follower already has the entry the snapshot ends with, it keeps the log
    entries following it (and they are committed up to the snapshot).

    Reference: paper §7 / Figure 13 receiver rule 6.
    """
    core = make_core(2, log_terms=[1, 1, 1, 1, 1], term=1, commit_index=2)
    core.ready()
    core.step(InstallSnapshot(1, 1, 2, SnapshotMeta(4, 1, voters(1, 2, 3)), b"state"))
    ready = core.ready()
    assert ready.snapshot is None
    assert len(core.log.entries) == 5
    assert core.log.commit_index == 4
    assert sent(ready) == [AppendEntriesResponse(1, 2, 1, True, match_index=4)]


# --- §10.2.1 writing to disk in parallel ---------------------------------------------------


def test_leader_counts_itself_toward_commit_only_once_its_entries_are_durable() -> None:
    """The leader may send AppendEntries before its own disk write; it counts itself in
    the majority only once the write is done.

    Reference: dissertation §10.2.1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.pause_disk(1)
    index = cluster.propose(1, b"x")
    assert cluster.pending(of_type(AppendEntries))  # sent before the leader's write
    cluster.stabilize(between(1, 2))
    assert cluster.core(1).status().peers[2].match_index == index
    assert cluster.core(1).log.commit_index < index
    cluster.resume_disk(1)
    assert cluster.core(1).log.commit_index == index
    assert cluster.node(1).commands == [b"x"]


def test_followers_alone_can_commit_while_the_leaders_write_is_slow() -> None:
    """A majority of followers suffices: the entry commits before the leader's own
    write ends, but the leader applies it only after that write.

    Reference: dissertation §10.2.1.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.pause_disk(1)
    index = cluster.propose(1, b"x")
    cluster.stabilize()
    assert cluster.core(1).log.commit_index == index
    assert cluster.node(1).commands == []
    cluster.resume_disk(1)
    assert cluster.node(1).commands == [b"x"]


def test_ready_sends_replication_at_once_and_answers_only_after_the_write() -> None:
    """Ready.messages (the leader's AppendEntries) may leave before the write;
    Ready.messages_after_persist (votes, a candidate's requests, append acknowledgements)
    only after it, because each promises that something is on stable storage.

    Reference: dissertation §10.2.1; Figure 2 ("Persistent state ... updated on stable
    storage before responding to RPCs").
    """
    leader = lone_leader()
    noop = leader.ready().entries[-1]
    for peer in (2, 3):  # the followers acknowledge the no-op: replication may stream
        leader.step(AppendEntriesResponse(leader.term, peer, 1, True, match_index=noop.index))
    leader.ready()
    leader.propose(b"x")
    ready = leader.ready()
    assert ready.entries and ready.messages_after_persist == []
    assert {type(m) for m in ready.messages} == {AppendEntries}

    follower = make_core(2, log_terms=[1], term=1)
    follower.ready()
    follower.step(AppendEntries(1, 1, 2, 1, 1, tuple(entries_from_terms([1], 2)), 1))
    ready = follower.ready()
    assert ready.entries and ready.messages == []
    assert [type(m) for m in ready.messages_after_persist] == [AppendEntriesResponse]

    voter = make_core(3, log_terms=[1], term=1)
    voter.ready()
    voter.step(RequestVote(2, 1, 3, 1, 1))
    ready = voter.ready()
    assert ready.hard_state == HardState(2, 1, 0) and ready.must_sync
    assert ready.messages == []
    assert ready.messages_after_persist == [RequestVoteResponse(2, 3, 1, True)]

    candidate = make_core(1, log_terms=[1], term=1, pre_vote=False)
    candidate.ready()
    tick_until_role_changes(candidate)
    ready = candidate.ready()
    assert ready.hard_state == HardState(2, 1, 0) and ready.must_sync
    assert ready.messages == []
    assert {type(m) for m in ready.messages_after_persist} == {RequestVote}


# --- flow control (the paper leaves it to the implementation; dissertation §10.2) ----------


def test_replicating_follower_has_at_most_inflight_max_appends_outstanding() -> None:
    """Pipelining: the leader streams AppendEntries without waiting, but never more than
    inflight_max unacknowledged ones per follower.

    Reference: dissertation §10.2.2 (pipelining), etcd-raft flow control.
    """
    cluster = RaftCluster([1, 2, 3], inflight_max=2)
    cluster.elect(1)
    for number in range(5):
        cluster.propose(1, f"x{number}".encode())
    to_2 = cluster.pending(lambda m: isinstance(m, AppendEntries) and m.target == 2)
    assert len(to_2) == 2
    cluster.stabilize()
    cluster.heartbeat(1)
    assert cluster.node(2).commands == [f"x{n}".encode() for n in range(5)]


def test_lost_append_entries_is_recovered_after_a_rejection_sends_the_follower_to_probe() -> None:
    """A lost AppendEntries leaves a gap; the next one fails the consistency check at
    the follower, and the leader falls back to probing and resends from the match.

    Reference: §5.3 (the leader retries after a rejection).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"lost")
    cluster.drop(lambda m: isinstance(m, AppendEntries) and m.target == 3)
    cluster.stabilize()
    cluster.propose(1, b"next")
    cluster.stabilize()
    assert cluster.node(3).commands == [b"lost", b"next"]
    assert any(
        isinstance(m, AppendEntriesResponse) and m.source == 3 and not m.success
        for m in cluster.history
    )


def test_heartbeat_answer_frees_a_pipeline_window_full_of_lost_appends() -> None:
    """When every message of the window is lost, a heartbeat answer proves the
    follower alive and reopens the window, so replication resumes.

    Reference: dissertation §10.2 (flow control); etcd-raft's heartbeat response rule.
    """
    cluster = RaftCluster([1, 2, 3], inflight_max=1)
    cluster.elect(1)
    cluster.propose(1, b"lost")
    cluster.drop(lambda m: isinstance(m, AppendEntries) and m.target == 3)
    cluster.stabilize()
    cluster.propose(1, b"blocked")
    assert cluster.pending(lambda m: isinstance(m, AppendEntries) and m.target == 3) == []
    cluster.stabilize()
    cluster.run(3 * cluster.core(1).config.heartbeat_ticks)
    assert cluster.node(3).commands == [b"lost", b"blocked"]


def test_lost_append_entries_is_recovered_by_heartbeats_alone() -> None:
    """A lost AppendEntries must not stall replication: heartbeats continue, and the
    leader retries indefinitely until every follower stores every entry, even if no
    client sends anything new.

    Reference: §5.3 ("the leader retries AppendEntries RPCs indefinitely ... until all
    followers eventually store all log entries").
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.drop(of_type(AppendEntries))
    cluster.run(5 * ELECTION_TICKS)
    assert cluster.core(1).log.commit_index >= index
    assert [cluster.node(i).commands for i in (1, 2, 3)] == [[b"x"]] * 3


def test_batch_bytes_max_limits_entries_per_append_but_always_sends_one() -> None:
    """An AppendEntries carries at most batch_bytes_max bytes of entries, except that a
    single larger entry is still sent on its own (or it could never be replicated).

    Reference: dissertation §10.2 (batching), RaftConfig.batch_bytes_max.
    """
    batch_bytes_max = 200
    cluster = RaftCluster([1, 2, 3], batch_bytes_max=batch_bytes_max)
    cluster.elect(1)
    small = [bytes([65 + n]) * 20 for n in range(12)]
    big = b"B" * (3 * batch_bytes_max)
    cluster.propose_batch(1, [*small, big, b"tail"])
    cluster.stabilize()
    appends = [m for m in cluster.history if isinstance(m, AppendEntries) and m.entries]
    for message in appends:
        if len(message.entries) > 1:
            assert sum(len(e.data) for e in message.entries) <= batch_bytes_max
    assert any(m.entries == tuple(e for e in m.entries if e.data == big) for m in appends)
    assert max(len(m.entries) for m in appends) > 1  # batching does happen
    cluster.heartbeat(1)
    assert cluster.node(2).commands == [*small, big, b"tail"]


def test_leader_refuses_proposals_beyond_uncommitted_entries_max() -> None:
    """A leader that cannot commit (no quorum) refuses new proposals once
    uncommitted_entries_max entries wait, so its log cannot grow without bound.

    Reference: TIGER_STYLE "put a limit on everything"; RaftConfig.uncommitted_entries_max.
    """
    limit = 3
    cluster = RaftCluster([1, 2, 3], uncommitted_entries_max=limit)
    cluster.elect(1)
    cluster.isolate(1)
    with pytest.raises(ProposalDroppedError):
        cluster.propose_batch(1, [b"x"] * (limit + 1))
    for number in range(limit):
        cluster.propose(1, f"x{number}".encode())
    with pytest.raises(ProposalDroppedError):
        cluster.propose(1, b"one too many")
    cluster.heal()
    cluster.run(3 * cluster.core(1).config.heartbeat_ticks)
    cluster.propose(1, b"accepted again")
    cluster.stabilize()
    cluster.heartbeat(1)
    assert cluster.node(2).commands[-1] == b"accepted again"


# --- restart -------------------------------------------------------------------------------


def test_restarted_node_keeps_its_term_and_vote_and_cannot_vote_twice_in_a_term() -> None:
    """currentTerm and votedFor are persistent state: a node rebuilt from its disk
    still knows whom it voted for and refuses another candidate in the same term.

    Reference: Figure 2 ("Persistent state on all servers"); §5.2.
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.campaign(1)
    cluster.stabilize(lambda m: votes_only(m) and between(1, 3)(m))
    assert cluster.core(1).role == Role.LEADER
    term = cluster.core(1).term
    cluster.crash(3)
    cluster.restart(3)
    core = cluster.core(3)
    assert (core.term, core.voted_for) == (term, 1)
    last = cluster.log(1)[-1]
    core.step(RequestVote(term, 2, 3, last.index + 1, last.term))
    core.step(RequestVote(term, 1, 3, last.index, last.term))
    answers = [m for m in sent(core.ready()) if isinstance(m, RequestVoteResponse)]
    assert [(m.target, m.vote_granted) for m in answers] == [(2, False), (1, True)]


def test_restarted_node_reapplies_committed_entries_from_its_disk() -> None:
    """A restarted node recovers its log from stable storage and applies the committed
    entries again to a fresh state machine, from its own disk: the leader's heartbeat
    only tells it how far they are committed (the commit index is volatile, and a
    write of its own only when it moves alone would cost a disk round trip per commit).

    Reference: §5.1 / Figure 2 (state machine and commit index are volatile; the log is
    persistent).
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.propose(1, b"b")
    cluster.stabilize()
    cluster.run(2)
    cluster.crash(2)
    cluster.restart(2)
    assert [entry.data for entry in cluster.log(2)][-2:] == [b"a", b"b"]
    assert cluster.core(2).term == cluster.core(1).term
    restarted_at = len(cluster.history)
    cluster.heartbeat(1)
    assert cluster.node(2).commands == [b"a", b"b"]
    resent = [
        m
        for m in cluster.history[restarted_at:]
        if isinstance(m, AppendEntries) and m.target == 2 and m.entries
    ]
    assert resent == []  # applied from its own disk


def test_not_leader_is_reported_with_the_known_leader() -> None:
    """Clients that contact a follower are redirected to the leader it knows.

    Reference: §8 ("If the client's first choice is not the leader, that server will
    reject the client's request and supply information about the most recent leader").
    """
    cluster = RaftCluster([1, 2, 3])
    cluster.elect(1)
    with pytest.raises(NotLeaderError) as raised:
        cluster.propose(2, b"x")
    assert raised.value.leader_id == 1
    with pytest.raises(NotLeaderError):
        cluster.read_index(2, 1)
