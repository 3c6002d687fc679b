"""Leases in the simulator (`kvraft.sim.leases`, #19): clean seeds keep both lease properties
while leases really expire through failovers; lease timers and keepalives that shorten a
lease are caught; and each rule of the checker bites on a history that breaks it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvraft.raft.messages import Entry
from kvraft.sim.checkers import Violation
from kvraft.sim.cluster import TICK_STEPS
from kvraft.sim.leases import LeaseCall, LeaseChecker, ttl_ticks
from kvraft.sim.runner import SimOptions, SimResult, run_seed
from kvraft.statemachine import (
    KVStateMachine,
    encode_lease_grant,
    encode_lease_revoke,
    encode_put,
)

BUG_SEEDS_MAX = 10
"""A broken lease timer must be caught within this many short seeds."""

CLEAR_BUG_SEEDS_MAX = 40
"""A keepalive that leaves its lease's checkpoint needs a failover inside a checkpoint
interval after it: caught in about one full-length 3-node seed in ten (seed 2 now)."""


def _first_violation(
    bug: str, nodes: int, ticks: int = 300, seeds: int = BUG_SEEDS_MAX
) -> SimResult:
    options = SimOptions(nodes=nodes, chaos_ticks=ticks, bugs=frozenset({bug}))
    for seed in range(1, seeds + 1):
        result = run_seed(seed, options)
        if result.violation is not None:
            return result
    raise AssertionError(f"bug {bug} was not caught within {seeds} seeds")


@pytest.mark.parametrize("nodes", [3, 5])
def test_a_new_leader_that_counts_ttls_from_the_grant_is_caught(nodes: int) -> None:
    """The test-only timer gives a new leader no full-TTL grace: a lease its predecessor
    kept alive expires at the new leader's first tick, well within a TTL of the last
    acknowledged keepalive."""
    result = _first_violation("lease_no_promote_extension", nodes)
    assert result.property_name == "lease ttl", result
    assert "keepalive n" in (result.violation or ""), result


@pytest.mark.parametrize("nodes", [3, 5])
def test_a_deadline_counted_from_a_tick_old_count_is_caught(nodes: int) -> None:
    """A keepalive or grant arrives between two ticks: counting TTL ticks from the count
    before it (as `LeaseTimer` once did) expires the lease up to a tick early."""
    result = _first_violation("lease_deadline_from_last_tick", nodes)
    assert result.property_name == "lease ttl", result


def test_a_keepalive_that_leaves_its_checkpoint_in_the_log_is_caught() -> None:
    """A new leader starts a checkpointed lease from the checkpoint's remainder: a
    keepalive acknowledged without clearing it first is forgotten at the failover."""
    result = _first_violation("lease_keepalive_no_clear", 3, 1500, CLEAR_BUG_SEEDS_MAX)
    assert result.property_name == "lease ttl", result


@pytest.mark.parametrize("nodes", [3, 5])
def test_clean_seeds_keep_both_lease_properties_through_failovers(nodes: int) -> None:
    totals: dict[str, int] = {}
    for seed in range(1, 5):
        result = run_seed(seed, SimOptions(nodes=nodes))
        assert result.violation is None, (seed, result.violation)
        for name, count in result.leases.items():
            totals[name] = totals.get(name, 0) + count
    # The checker had work: leases were revoked, kept alive (clearing checkpoints) and
    # expired, some by a leader other than the one that acknowledged their last keepalive.
    assert totals["revoked"] > 0 and totals["keepalives_acknowledged"] > 0, totals
    assert totals["expired"] > 0 and totals["expired_after_failover"] > 0, totals
    assert totals["checkpoints"] > 0 and totals["checkpoint_clears"] > 0, totals


def test_a_lease_bug_is_a_cli_flag_that_fails_the_run() -> None:
    bug = "lease_no_promote_extension"
    arguments = ["--seeds", f"1-{BUG_SEEDS_MAX}", "--nodes", "5", "--ticks", "300", "--bug", bug]
    result = subprocess.run(
        [sys.executable, "-m", "kvraft", "sim", *arguments, "--jobs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lease ttl" in result.stdout
    assert f"--bug {bug}" in result.stdout  # the replay command keeps it


# --- the checker's rules, one by one --------------------------------------------------------


class _Node:
    """One node's state machine, fed entries as the shell would, reporting to the checker."""

    def __init__(self, checker: LeaseChecker, node_id: int = 1) -> None:
        self.checker = checker
        self.node_id = node_id
        self.machine = KVStateMachine()

    def apply(self, command: bytes, *, shown: KVStateMachine | None = None) -> int:
        """Apply `command` at the next index; the checker sees `shown` (a broken node's
        state) if given."""
        index = self.machine.applied_index + 1
        entry = Entry(1, index, data=command)
        result = self.machine.apply(index, command)
        self.checker.applied(self.node_id, shown or self.machine, entry, result)
        return index


def _checker() -> LeaseChecker:
    return LeaseChecker(TICK_STEPS)


def test_a_correct_revoke_passes_and_a_key_that_outlives_its_lease_is_caught() -> None:
    checker = _checker()
    node = _Node(checker)
    lease = node.apply(encode_lease_grant(3))
    node.apply(encode_put("lease/0", b"v", lease_id=lease))
    before_revoke = KVStateMachine.restore_bytes(node.machine.snapshot())
    node.apply(encode_lease_revoke(lease))
    assert checker.revoked_at == {lease: 3}
    # Another node applies the same entries, but its revoke leaves the key (and the lease).
    other = _Node(checker, node_id=2)
    other.apply(encode_lease_grant(3))
    other.apply(encode_put("lease/0", b"v", lease_id=lease))
    with pytest.raises(Violation) as found:
        other.apply(encode_lease_revoke(lease), shown=before_revoke)
    assert found.value.property_name == "lease revoke"


def test_a_put_attached_to_a_revoked_lease_must_be_refused() -> None:
    checker = _checker()
    node = _Node(checker)
    lease = node.apply(encode_lease_grant(3))
    node.apply(encode_lease_revoke(lease))
    node.apply(encode_put("lease/1", b"late", lease_id=lease))  # refused: fine
    # A node whose revoke did nothing would take the put.
    lagging = _Node(checker, node_id=2)
    lagging.apply(encode_lease_grant(3))
    lagging.machine.apply(2, encode_put("other", b"x"))  # its "revoke" changed nothing
    entry = Entry(1, 3, data=encode_put("lease/1", b"late", lease_id=lease))
    result = lagging.machine.apply(3, entry.data)
    assert result.ok
    with pytest.raises(Violation) as found:
        checker.applied(2, lagging.machine, entry, result)
    assert found.value.property_name == "lease revoke"


def test_reads_and_keepalives_at_or_after_a_revoke_must_not_see_the_lease() -> None:
    checker = _checker()
    node = _Node(checker)
    lease = node.apply(encode_lease_grant(3))
    written = node.apply(encode_put("lease/2", b"v", lease_id=lease))
    revoke = node.apply(encode_lease_revoke(lease))
    before = LeaseCall("read", "lease/2", read_index=revoke - 1, read_revision=written)
    checker.check([(0, before)])
    stale = LeaseCall("read", "lease/2", read_index=revoke, read_revision=written)
    with pytest.raises(Violation, match="revoked at 3"):
        checker.check([(0, stale)])
    keepalive = LeaseCall("keepalive", lease_id=lease, read_index=revoke)
    with pytest.raises(Violation, match="after its revoke"):
        checker.check([(0, keepalive)])


@pytest.mark.parametrize("extra_steps", [-1, 0, 5])
def test_an_expiry_is_checked_in_steps_since_the_last_acknowledged_keepalive(
    extra_steps: int,
) -> None:
    """TTL after the acknowledged keepalive's arrival, in simulated steps, is the earliest a
    correct leader expires a lease; a step earlier is a violation."""
    checker = _checker()
    node = _Node(checker)
    lease = node.apply(encode_lease_grant(3))  # at step 0
    ttl = ttl_ticks(3)
    # A keepalive arrives at n2 at step 400 and is acknowledged; n1, leading later,
    # proposes the expiry.
    keepalive = LeaseCall("keepalive", lease_id=lease, node_id=2)
    checker.now = 400 + ttl * TICK_STEPS + extra_steps
    expiry = Entry(2, 2, data=encode_lease_revoke(lease, expired=True))
    checker.appended(1, [expiry])
    checker.applied(1, node.machine, expiry, node.machine.apply(2, expiry.data))
    if extra_steps < 0:
        with pytest.raises(Violation) as found:
            checker.check([(400, keepalive)])
        assert found.value.property_name == "lease ttl"
        assert "after the keepalive n2 acknowledged, sent at step 400" in str(found.value)
    else:
        counts = checker.check([(400, keepalive)])
        assert counts["expired"] == 1 and counts["expired_after_failover"] == 1
    # Without that keepalive, the grant (applied at step 0) is the reference.
    assert checker.check([])["expired"] == 1
