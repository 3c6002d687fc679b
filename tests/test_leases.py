"""The leader's pure lease timer (kvraft.leases): expiry in ticks, and leadership changes."""

from __future__ import annotations

from kvraft.leases import LeaseTimer, lease_ttl_s_min
from kvraft.statemachine import KVStateMachine, encode_lease_grant, encode_lease_revoke

__all__: list[str] = []

TICK_MS = 100
ELECTION_TICKS = 10


def ticks_until_expiry(timer: LeaseTimer, lease_id: int, ticks_max: int = 10_000) -> int:
    """How many ticks pass until the timer asks for `lease_id`'s expiry."""
    for passed in range(1, ticks_max + 1):
        if lease_id in timer.tick():
            return passed
    raise AssertionError(f"lease {lease_id} never expired")


def leading_timer(*leases: tuple[int, int]) -> LeaseTimer:
    timer = LeaseTimer(TICK_MS, ELECTION_TICKS)
    timer.promote(1, leases)
    return timer


def test_a_lease_expires_exactly_its_ttl_in_ticks_after_it_was_granted() -> None:
    timer = leading_timer()
    timer.granted(7, 2)  # 2 s of 100 ms ticks
    assert timer.remaining_ticks(7) == 20
    assert ticks_until_expiry(timer, 7) == 20


def test_a_lease_expires_exactly_its_ttl_after_the_last_keepalive() -> None:
    timer = leading_timer((7, 2))
    for _ in range(15):
        assert timer.tick() == []
    assert timer.keepalive(7, timer.now_ticks)
    assert ticks_until_expiry(timer, 7) == 20


def test_a_keepalive_counts_from_when_it_arrived_not_when_it_was_confirmed() -> None:
    timer = leading_timer((7, 2))
    arrived = timer.now_ticks
    for _ in range(3):
        timer.tick()  # the ReadIndex round takes a few ticks
    assert timer.keepalive(7, arrived)
    assert ticks_until_expiry(timer, 7) == 17


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
    new.promote(2, [(7, 2)])
    assert ticks_until_expiry(new, 7) == 20


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
    assert timer.remaining_ticks(1) is None and timer.remaining_ticks(2) == 50
    timer.restored([])
    assert timer.remaining_ticks(2) is None


def test_the_shortest_ttl_is_three_of_the_longest_election_timeouts() -> None:
    assert lease_ttl_s_min(50, 8) == 3  # 3 x 800 ms, rounded up to whole seconds
    assert lease_ttl_s_min(1, 2) == 1
