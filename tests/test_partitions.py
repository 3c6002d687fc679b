"""The Jepsen partition shapes of `kvraft.partitions`: each shape keeps its promise about who
can talk to whom, for every member order a seed can draw, and the draws themselves are
what the simulator and the chaos harness rely on (one shuffle)."""

from __future__ import annotations

import itertools
import random

import pytest

from kvraft.partitions import (
    SHAPES,
    Link,
    draw_order,
    isolate,
    links_between,
    partition_links,
    reachable,
    ring_reach,
    shape_links,
)

FIVE = [1, 2, 3, 4, 5]


def views(links: set[Link], members: list[int]) -> dict[int, frozenset[int]]:
    """For each member, whom it can still talk to (both ways, itself included)."""
    return {node: reachable(links, node, members) for node in members}


def is_symmetric(links: set[Link]) -> bool:
    return all((b, a) in links for a, b in links)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [3, 4, 5, 6, 7])
def test_every_shape_is_symmetric_and_stays_among_the_members(shape: str, count: int) -> None:
    members = list(range(1, count + 1))
    for seed in range(30):
        links = partition_links(shape, members, 2, random.Random(seed))
        assert links and is_symmetric(links)
        assert all(a != b and a in members and b in members for a, b in links)


def test_isolate_cuts_one_node_from_all_and_leaves_the_rest_alone() -> None:
    for order in itertools.permutations(FIVE):
        seen = views(shape_links("isolate-one", order), FIVE)
        lone = order[0]
        assert seen[lone] == {lone}
        assert all(seen[node] == set(FIVE) - {lone} for node in FIVE if node != lone)


def test_isolate_leader_cuts_the_leader_or_a_drawn_node_without_one() -> None:
    order = [4, 1, 5, 2, 3]
    assert views(shape_links("isolate-leader", order, leader=2), FIVE)[2] == {2}
    for unknown in (None, 9):  # no leader known, or one that is not a member any more
        assert views(shape_links("isolate-leader", order, leader=unknown), FIVE)[4] == {4}
    assert isolate(3, FIVE) == shape_links("isolate-leader", order, leader=3)


@pytest.mark.parametrize("count", [3, 4, 5, 6, 7])
def test_halves_split_a_minority_from_a_majority(count: int) -> None:
    members = list(range(1, count + 1))
    for seed in range(30):
        seen = views(partition_links("halves", members, None, random.Random(seed)), members)
        sides = set(seen.values())
        assert sorted(len(side) for side in sides) == [count // 2, count - count // 2]
        assert frozenset().union(*sides) == set(members)  # two sides, every node in one


@pytest.mark.parametrize("count", [3, 4, 5, 6, 7])
def test_a_bridge_leaves_exactly_one_node_talking_to_both_sides(count: int) -> None:
    members = list(range(1, count + 1))
    for seed in range(30):
        order = draw_order(members, random.Random(seed))
        seen = views(shape_links("bridge", order), members)
        bridges = [node for node in members if seen[node] == set(members)]
        assert bridges == [order[count // 2]]
        left, right = set(order[: count // 2]), set(order[count // 2 + 1 :])
        assert all(seen[node] == left | {bridges[0]} for node in left)
        assert all(seen[node] == right | {bridges[0]} for node in right)
        if count % 2:
            assert len(left) == len(right)  # even counts: the second side is one smaller


def test_a_majorities_ring_of_five_gives_each_node_its_two_neighbours() -> None:
    for order in itertools.permutations(FIVE):
        seen = views(shape_links("majorities-ring", order), FIVE)
        for position, node in enumerate(order):
            neighbours = {order[(position - 1) % 5], order[(position + 1) % 5]}
            assert seen[node] == {node} | neighbours  # a majority of five...
        assert len(set(seen.values())) == 5  # ...and no two nodes see the same one


def test_a_ring_reach_grows_with_the_cluster_and_small_rings_isolate_one_node() -> None:
    assert [ring_reach(count) for count in range(1, 10)] == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    for count in (3, 4):
        members = list(range(1, count + 1))
        order = draw_order(members, random.Random(count))
        assert shape_links("majorities-ring", order) == isolate(order[0], members)
    nine = list(range(1, 10))
    seen = views(shape_links("majorities-ring", nine), nine)
    assert all(len(view) == 5 for view in seen.values())  # 2 on either side: a majority


def test_one_shuffle_is_the_only_draw() -> None:
    """The simulator's results per seed depend on exactly this draw."""
    for seed in range(20):
        for shape in SHAPES:
            rng, twin = random.Random(seed), random.Random(seed)
            order = list(FIVE)
            twin.shuffle(order)
            assert partition_links(shape, FIVE, 3, rng) == shape_links(shape, order, 3)
            assert rng.random() == twin.random()  # the generators are still in step


def test_links_between_cut_both_ways_and_only_across() -> None:
    assert links_between([1], [2, 3]) == {(1, 2), (2, 1), (1, 3), (3, 1)}
    assert links_between([1, 2], []) == set()


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown partition shape 'ring'"):
        shape_links("ring", FIVE)
