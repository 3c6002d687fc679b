"""Jepsen's network partition shapes, defined once for the simulator and the chaos harness.

A shape says which nodes can still talk to which, given the members, the current leader
and a `random.Random`. It is given as the set of directed links it cuts (`Link`: messages
from the first node to the second are lost); the simulator drops messages on those links
(`kvraft.sim.network.SimNetwork.partition`) and the chaos harness turns them into
iptables rules (`kvraft.chaos.nemesis` grudges, `kvraft.chaos.netfilter`).

The shapes are those of Jepsen's nemesis (``jepsen.nemesis`` in jepsen-io/jepsen:
``partition-random-node``, ``partition-random-halves``, ``bridge``,
``partition-majorities-ring``; its combined nemesis also aims partitions at the
primaries, here the Raft leader):

* ``isolate-one``: one random node is cut from every other; the others talk freely.
* ``isolate-leader``: the same with the current leader (a random node if none is known).
* ``halves``: a random minority (``n // 2`` nodes) is cut from the majority; each side
  talks freely inside.
* ``bridge``: two sides that cannot talk to each other and one node, the bridge, that
  talks to both: with five nodes ``{a, b} | c | {d, e}``. The bridge is the middle of the
  random order, so with an even count the second side is one node smaller.
* ``majorities-ring``: the nodes sit in a random ring and each talks only to those within
  `ring_reach` positions on either side. With five nodes that is its two neighbours: every
  node sees a majority (itself included), and no two nodes see the same one. With fewer
  than five nodes the shape isolates one node instead (with three, any ring is fully
  connected). For six or seven nodes a reach of one is less than a majority; the chaos
  harness uses the ring with five nodes only.

Every shape is symmetric: if a cannot reach b, b cannot reach a.

Randomness: `draw_order` shuffles the members once (one ``rng.shuffle`` of the list in the
order given), and every shape is a pure function of that order (`shape_links`). So a
caller that keeps the order (the chaos harness plans its faults ahead) can compute the
shape again later, with the leader or the members of that moment.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence

__all__ = [
    "SHAPES",
    "Link",
    "draw_order",
    "isolate",
    "links_between",
    "partition_links",
    "reachable",
    "ring_reach",
    "shape_links",
]

SHAPES = ("isolate-one", "isolate-leader", "halves", "bridge", "majorities-ring")
"""Every shape, in a fixed order (the simulator draws from it by index)."""

Link = tuple[int, int]
"""A directed link (sender, receiver): a cut one loses the sender's messages to the receiver."""


def links_between(side_a: Iterable[int], side_b: Iterable[int]) -> set[Link]:
    """The links between two groups of nodes, both ways: cutting them splits the groups
    apart and leaves each group's inner links alone."""
    second = list(side_b)
    links: set[Link] = set()
    for a in side_a:
        for b in second:
            links.add((a, b))
            links.add((b, a))
    return links


def isolate(node: int, members: Iterable[int]) -> set[Link]:
    """The links that cut `node` from every other member."""
    return links_between([node], [other for other in members if other != node])


def ring_reach(count: int) -> int:
    """How many ring positions on either side a node of a `majorities-ring` of `count`
    nodes still reaches: ``count // 4`` (one for five nodes)."""
    return (count // 2) // 2


def draw_order(members: Iterable[int], rng: random.Random) -> list[int]:
    """The random order every shape is cut from: one ``rng.shuffle`` of `members`."""
    order = list(members)
    rng.shuffle(order)
    return order


def shape_links(shape: str, order: Sequence[int], leader: int | None = None) -> set[Link]:
    """The links `shape` cuts among the nodes of `order` (see the module docstring); the
    first node of `order` is the one isolated, and the leader only matters to
    ``isolate-leader`` (ignored when it is None or not in `order`). ValueError for an
    unknown shape."""
    nodes = list(order)
    if shape in ("isolate-one", "isolate-leader"):
        if not nodes:
            return set()
        target = leader if shape == "isolate-leader" and leader in nodes else nodes[0]
        assert target is not None
        return isolate(target, nodes)
    if shape == "halves":
        minority = len(nodes) // 2
        return links_between(nodes[:minority], nodes[minority:])
    if shape == "bridge":
        half = len(nodes) // 2
        return links_between(nodes[:half], nodes[half + 1 :])  # nodes[half] sees everyone
    if shape == "majorities-ring":
        size, reach = len(nodes), ring_reach(len(nodes))
        if reach == 0 or size < 5:
            return isolate(nodes[0], nodes) if nodes else set()
        links: set[Link] = set()
        for position, a in enumerate(nodes):
            seen = {nodes[(position + offset) % size] for offset in range(-reach, reach + 1)}
            links.update((a, b) for b in nodes if b not in seen)
        return links
    raise ValueError(f"unknown partition shape {shape!r}; choose from {', '.join(SHAPES)}")


def partition_links(
    shape: str, members: Iterable[int], leader: int | None, rng: random.Random
) -> set[Link]:
    """The links `shape` cuts among `members`, drawn with `rng` (`draw_order`) and aimed at
    `leader` for ``isolate-leader``."""
    return shape_links(shape, draw_order(members, rng), leader)


def reachable(links: Collection[Link], node: int, members: Iterable[int]) -> frozenset[int]:
    """The members `node` can still exchange messages with, both ways, itself included."""
    return frozenset(
        other
        for other in members
        if other == node or ((node, other) not in links and (other, node) not in links)
    )
