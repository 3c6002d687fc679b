"""The leader's pure lease timer (kvraft.leases): expiry in ticks, and leadership changes."""

from __future__ import annotations

from kvraft.leases import LeaseTimer, lease_ttl_s_min
from kvraft.statemachine import (
    KVStateMachine,
    decode_command,
    encode_lease_checkpoint,
    encode_lease_grant,
    encode_lease_revoke,
)

__all__: list[str] = []

TICK_MS = 100
ELECTION_TICKS = 10


def ticks_until_expiry(timer: LeaseTimer, lease_id: int, ticks_max: int = 10_000) -> int:
    """How many ticks pass until the timer asks for `lease_id`'s expiry."""
    for passed in range(1, ticks_max + 1):
        if lease_id in timer.tick():
            return passed
    raise AssertionError(f"lease {lease_id} never expired")


def leading_timer(*leases: tuple[int, int], checkpoint_interval_ticks: int = 600) -> LeaseTimer:
    """A timer leading term 1 with leases (id, ttl_s), none of them checkpointed."""
    timer = LeaseTimer(TICK_MS, ELECTION_TICKS, checkpoint_interval_ticks)
    timer.promote(1, [(lease_id, ttl_s, 0) for lease_id, ttl_s in leases])
    return timer


def test_a_lease_expires_its_ttl_after_the_tick_that_followed_its_grant() -> None:
    timer = leading_timer()
    timer.granted(7, 2)  # 2 s of 100 ms ticks, from the next tick (the count may be old)
    assert timer.remaining_ticks(7) == 21
    assert ticks_until_expiry(timer, 7) == 21


def test_a_lease_expires_its_ttl_after_the_tick_that_followed_the_last_keepalive() -> None:
    timer = leading_timer((7, 2))
    for _ in range(15):
        assert timer.tick() == []
    assert timer.keepalive(7, timer.now_ticks)
    assert ticks_until_expiry(timer, 7) == 21


def test_a_keepalive_counts_from_when_it_arrived_not_when_it_was_confirmed() -> None:
    timer = leading_timer((7, 2))
    arrived = timer.now_ticks
    for _ in range(3):
        timer.tick()  # the ReadIndex round takes a few ticks
    assert timer.keepalive(7, arrived)
    assert ticks_until_expiry(timer, 7) == 18


def test_a_ttl_in_ticks_rounds_up() -> None:
    timer = LeaseTimer(300, ELECTION_TICKS)
    assert timer.ttl_ticks(1) == 4  # 1.2 s: never shorter than asked


def test_a_new_leader_gives_every_lease_a_full_ttl_from_its_election() -> None:
    old = leading_timer((7, 2))
    for _ in range(19):
        old.tick()  # one tick from expiry on the old leader
    new = LeaseTimer(TICK_MS, ELECTION_TICKS)
    for _ in range(50):
        assert new.tick() == []  # a follower keeps no deadlines
    new.promote(2, [(7, 2, 0)])
    assert ticks_until_expiry(new, 7) == 21


def test_a_deposed_leader_forgets_its_deadlines() -> None:
    timer = leading_timer((7, 2))
    timer.demote()
    assert not timer.keepalive(7, timer.now_ticks)
    assert all(timer.tick() == [] for _ in range(100))


def test_no_keepalive_is_acknowledged_once_the_expiry_is_proposed() -> None:
    timer = leading_timer((7, 2))
    ticks_until_expiry(timer, 7)
    assert not timer.keepalive(7, timer.now_ticks)


def test_a_lost_expiry_is_proposed_again_after_two_election_timeouts() -> None:
    timer = leading_timer((7, 2))
    ticks_until_expiry(timer, 7)
    assert ticks_until_expiry(timer, 7) == 2 * 2 * ELECTION_TICKS


def test_applied_grants_and_revokes_drive_the_timer() -> None:
    machine = KVStateMachine()
    timer = leading_timer()
    for index, command in ((1, encode_lease_grant(1)), (2, encode_lease_grant(5))):
        timer.applied(command, index, machine.apply(index, command).ok)
    revoke = encode_lease_revoke(1)
    timer.applied(revoke, 3, machine.apply(3, revoke).ok)
    assert timer.remaining_ticks(1) is None and timer.remaining_ticks(2) == 51
    timer.restored([])
    assert timer.remaining_ticks(2) is None


def test_the_shortest_ttl_is_three_of_the_longest_election_timeouts() -> None:
    assert lease_ttl_s_min(50, 8) == 3  # 3 x 800 ms, rounded up to whole seconds
    assert lease_ttl_s_min(1, 2) == 1


def test_the_default_checkpoint_interval_is_a_minute() -> None:
    assert LeaseTimer(TICK_MS, ELECTION_TICKS).checkpoint_interval_ticks == 600


def test_long_leases_are_checkpointed_every_interval_with_their_remaining_ttl() -> None:
    timer = leading_timer((7, 100), (8, 5), checkpoint_interval_ticks=300)
    commands = []
    for _ in range(300):
        timer.tick()
        commands += timer.checkpoint_commands()
    assert [decode_command(c) for c in commands] == [
        decode_command(encode_lease_checkpoint([(7, 70_100)]))
    ]
    assert timer.needs_clear(7, 0)  # proposed, not applied yet
    assert not timer.needs_clear(8, 0)  # shorter than the interval: never checkpointed


def test_a_clear_proposed_before_a_checkpoint_does_not_cover_it() -> None:
    """Found by the simulator's lease checker (`kvraft.sim.leases`): a keepalive's clear is
    proposed, then the timer proposes a checkpoint (of the deadline before the keepalive),
    then the clear applies. The checkpoint is still to come, with its older remainder: the
    keepalive must clear again before it is acknowledged, or a new leader would start the
    lease from that remainder and forget the keepalive."""
    timer = leading_timer((7, 100), checkpoint_interval_ticks=300)
    assert not timer.needs_clear(7, 0)
    assert timer.needs_clear(7, 1)  # the machine holds an older checkpoint: clear it
    for _ in range(300):
        timer.tick()
        commands = timer.checkpoint_commands()
    [checkpoint] = commands  # proposed after the clear
    clear = encode_lease_checkpoint([(7, 0)])
    timer.applied(clear, 10, True)
    assert timer.needs_clear(7, 0)  # the checkpoint is behind that clear, not before it
    timer.applied(checkpoint, 11, True)
    timer.applied(clear, 12, True)  # the second clear, proposed after the checkpoint
    assert not timer.needs_clear(7, 0)


def test_a_dropped_clear_costs_another_clear_never_a_stuck_keepalive() -> None:
    timer = leading_timer((7, 100), checkpoint_interval_ticks=300)
    for _ in range(300):
        timer.tick()
        timer.checkpoint_commands()
    assert timer.needs_clear(7, 0)  # its clear is dropped (never in the log)
    assert timer.needs_clear(7, 0)  # so the next keepalive proposes one
    timer.applied(encode_lease_checkpoint([(7, 0)]), 10, True)
    assert not timer.needs_clear(7, 0)


def test_a_new_leader_starts_a_checkpointed_lease_from_its_remainder() -> None:
    new = LeaseTimer(TICK_MS, ELECTION_TICKS)
    new.promote(2, [(7, 100, 30_000), (8, 100, 0)])
    assert new.remaining_ticks(7) == 301
    assert new.remaining_ticks(8) == 1001


def test_a_cleared_checkpoint_gives_the_lease_a_full_ttl_from_when_it_applied() -> None:
    # The old leader acknowledged a keepalive after clearing the checkpoint; this leader
    # promoted before it applied the clear, from the older checkpoint.
    new = LeaseTimer(TICK_MS, ELECTION_TICKS)
    new.promote(2, [(7, 100, 30_000)])
    for _ in range(10):
        new.tick()
    clear = encode_lease_checkpoint([(7, 0)])
    new.applied(clear, 5, True)
    assert new.remaining_ticks(7) == 1001
    assert not new.needs_clear(7, 0)
    assert new.needs_clear(7, 1)  # the machine still holds one: clear it
