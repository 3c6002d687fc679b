"""The deterministic simulator: it finds nothing in a correct core, finds known bugs, replays."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvraft.partitions import partition_links
from kvraft.sim.runner import SimOptions, SimResult, run_seed

CI_SEEDS = 300
"""Mixed-fault seeds per cluster size in `make test` (the issue's floor)."""

CI_TICKS = 300
"""Chaos-phase length per seed in CI; `make sim` runs the full default (1500)."""

BUG_SEEDS_MAX = 40
"""A known bug must be caught within this many seeds."""


def _sim(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", "sim", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
def test_mixed_fault_seeds_report_no_violation(nodes: int) -> None:
    result = _sim(
        "--seeds", f"1-{CI_SEEDS}", "--nodes", str(nodes), "--ticks", str(CI_TICKS), "--jobs", "2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CI_SEEDS} seeds, {nodes} nodes" in result.stdout
    assert ": 0 violations;" in result.stdout


def test_a_seed_replays_exactly() -> None:
    options = SimOptions(nodes=5, chaos_ticks=200)
    first: list[str] = []
    second: list[str] = []
    result_one = run_seed(17, options, trace=first.append)
    result_two = run_seed(17, options, trace=second.append)
    assert first == second
    assert result_one == result_two
    assert len(first) > 10  # the trace says what happened


def _first_violation(bug: str, nodes: int) -> SimResult:
    options = SimOptions(nodes=nodes, chaos_ticks=300, bugs=frozenset({bug}))
    for seed in range(1, BUG_SEEDS_MAX + 1):
        result = run_seed(seed, options)
        if result.violation is not None:
            return result
    raise AssertionError(f"bug {bug} was not caught within {BUG_SEEDS_MAX} seeds")


def test_granting_two_votes_in_a_term_is_caught_as_an_election_safety_violation() -> None:
    assert _first_violation("double_vote", nodes=5).property_name == "election safety"


def test_committing_a_previous_term_entry_by_counting_replicas_is_caught() -> None:
    """Figure 8 (§5.4.2): a leader that counts replicas of an older term's entry commits
    something a later leader may overwrite; the Figure 8 nemesis makes that later leader."""
    result = _first_violation("commit_previous_term", nodes=3)
    assert result.property_name in ("leader completeness", "state machine safety"), result


def test_applying_before_commit_is_caught() -> None:
    """An entry applied before it commits may be overwritten: another node applies a
    different one at its index, or a later leader lacks what some node applied (the
    checkers take what was applied as committed)."""
    result = _first_violation("apply_before_commit", nodes=5)
    assert result.property_name in (
        "state machine safety",
        "leader completeness",
        "linearizability",
    )


def test_sending_before_the_term_is_durable_is_caught() -> None:
    """A single voter wins its election inside a tick; its first AppendEntries (to a
    learner) must wait until the new term is on disk. With writes in flight for a few
    steps, letting it go with the write is caught at once."""
    result = _first_violation("send_before_persist", nodes=1)
    assert result.property_name == "persist before send", result


def test_a_watch_client_that_skips_a_change_after_resuming_is_caught() -> None:
    """Watch clients move between nodes (crashes, lagged streams, at random); one that drops
    the first change after each resume leaves a gap the watch checker must see."""
    result = _first_violation("watch_skip_after_resume", nodes=3)
    assert result.property_name == "watch reliable", result


def test_a_single_voter_with_learners_keeps_every_property() -> None:
    options = SimOptions(nodes=1, chaos_ticks=CI_TICKS)
    for seed in range(1, BUG_SEEDS_MAX + 1):
        result = run_seed(seed, options)
        assert result.violation is None, (seed, result.violation)


def test_a_violation_exits_non_zero_and_prints_a_replay_command() -> None:
    result = _sim(
        "--seeds", f"1-{BUG_SEEDS_MAX}", "--nodes", "5", "--ticks", "300", "--bug", "double_vote"
    )
    assert result.returncode == 1
    assert "VIOLATION seed" in result.stdout
    assert "election safety" in result.stdout
    replay = next(line for line in result.stdout.splitlines() if "replay:" in line)
    command = replay.split("replay:", 1)[1].split()
    assert command[:2] == ["kvraft", "sim"] and "--trace" in command
    replayed = _sim(*command[2:])
    assert replayed.returncode == 1
    assert "election safety" in replayed.stdout
    assert " leader of term " in replayed.stdout  # the readable trace


def test_partition_shapes_cut_what_jepsen_means() -> None:
    import random

    nodes = [1, 2, 3, 4, 5]
    rng = random.Random(1)

    def reachable(links: set[tuple[int, int]], a: int) -> set[int]:
        return {b for b in nodes if (a, b) not in links}

    isolated = partition_links("isolate-leader", nodes, 3, rng)
    assert reachable(isolated, 3) == {3}
    halves = partition_links("halves", nodes, None, rng)
    sides = {frozenset(reachable(halves, a)) for a in nodes}
    assert sorted(len(side) for side in sides) == [2, 3]
    ring = partition_links("majorities-ring", nodes, None, rng)
    views = [frozenset(reachable(ring, a)) for a in nodes]
    assert all(len(view) == 3 for view in views)  # everyone sees a majority...
    assert len(set(views)) == 5  # ...but no two the same one
    bridge = partition_links("bridge", nodes, None, rng)
    assert sorted(len(reachable(bridge, a)) for a in nodes) == [3, 3, 3, 3, 5]
