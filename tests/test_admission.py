"""Shedding load: the byte budget of writes a node holds, the wait of the oldest proposal a
leader works on, and the byte count of the log a leader keeps in memory (issue #16)."""

from __future__ import annotations

import random

from kvraft.admission import WaitingProposals, WriteAdmission
from kvraft.raft.log import RaftLog
from kvraft.raft.messages import Configuration, Entry, EntryKind, SnapshotMeta


def test_writes_are_held_up_to_the_budget_and_let_go_when_answered() -> None:
    admission = WriteAdmission(bytes_max=100)
    assert admission.try_hold(60)
    assert admission.try_hold(40)  # exactly at the budget
    assert not admission.try_hold(1)  # one byte past it
    assert admission.refused_total == 1 and admission.bytes_held == 100
    admission.release(40)
    assert admission.try_hold(40)
    admission.release(40)
    admission.release(60)
    assert admission.bytes_held == 0 and admission.requests_held == 0


def test_a_write_larger_than_the_whole_budget_gets_in_alone() -> None:
    admission = WriteAdmission(bytes_max=100)
    assert admission.try_hold(500)  # nothing else held: a small budget slows, never bars
    assert not admission.try_hold(1)
    admission.release(500)
    assert admission.try_hold(1)


def test_new_proposals_are_refused_while_the_oldest_has_waited_past_the_limit() -> None:
    waiting = WaitingProposals(wait_s_max=1.0)
    first = waiting.admit(now_s=10.0)
    assert first is not None
    assert waiting.admit(now_s=11.0) is not None  # the oldest waited exactly the limit
    assert waiting.admit(now_s=11.001) is None  # a moment past it
    assert waiting.refused_total == 1
    waiting.done(first)  # the oldest is answered: the next oldest (11.0) is young
    assert waiting.oldest_wait_s(11.5) == 0.5
    assert waiting.admit(now_s=11.5) is not None


def test_an_idle_leader_admits_whatever_the_time() -> None:
    waiting = WaitingProposals(wait_s_max=1.0)
    token = waiting.admit(now_s=0.0)
    assert token is not None
    waiting.done(token)
    assert waiting.oldest_wait_s(1e9) == 0.0 and waiting.admit(now_s=1e9) is not None


def test_the_log_counts_the_bytes_it_keeps_through_appends_cuts_applies_and_compactions() -> None:
    rng = random.Random(16)
    meta = SnapshotMeta(0, 0, Configuration(voters=frozenset({1})))
    log = RaftLog(meta, [], 0)
    for _ in range(2000):
        action = rng.random()
        if action < 0.5:
            size = rng.choice((0, 1, 100, 10_000))
            index = log.last_index() + 1
            log.append([Entry(1, index, EntryKind.NORMAL, b"x" * size)])
        elif action < 0.6 and log.last_index() > log.commit_index:
            log.truncate_from(rng.randint(log.commit_index + 1, log.last_index()))
        elif action < 0.8:
            log.commit_to(rng.randint(log.commit_index, log.last_index()))
            log.take_committed(log.commit_index, rng.randint(1, 10))
        elif action < 0.95 and log.applied_index > log.snapshot.index:
            log.compact(rng.randint(log.snapshot.index + 1, log.applied_index))
        elif action >= 0.99:
            log.restore(SnapshotMeta(log.last_index() + 5, 1, meta.configuration))
        assert log.entry_bytes == sum(len(entry.data) for entry in log.entries)
        applied = [entry for entry in log.entries if entry.index <= log.applied_index]
        assert log.applied_entry_bytes == sum(len(entry.data) for entry in applied)
