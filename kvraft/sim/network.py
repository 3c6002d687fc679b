"""A simulated network: delays, drops, duplicates, reordering and partitions, from one seed.

Time is counted in simulator steps (a node ticks every `TICK_STEPS` steps).
Messages wait in a priority queue until their delivery step; reordering comes
from independent random delays. Partitions are a set of cut directed links, so
every Jepsen shape (isolated node, halves, bridge, majorities ring) is just a
different set.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass

from kvraft.raft.messages import Message

__all__ = ["NetworkFaults", "SimNetwork", "partition_links"]


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """How hostile the network is. Probabilities are per message."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_steps_min: int = 1
    delay_steps_max: int = 3


class SimNetwork:
    """Messages in flight between simulated nodes."""

    def __init__(self, rng: random.Random, faults: NetworkFaults) -> None:
        self._rng = rng
        self.faults = faults
        self._queue: list[tuple[int, int, Message]] = []
        self._sequence = 0
        self.cut_links: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0

    def send(self, now: int, message: Message) -> None:
        self.sent += 1
        if (message.source, message.target) in self.cut_links:
            self.dropped += 1
            return
        if self._rng.random() < self.faults.drop_probability:
            self.dropped += 1
            return
        copies = 2 if self._rng.random() < self.faults.duplicate_probability else 1
        for _ in range(copies):
            delay = self._rng.randint(self.faults.delay_steps_min, self.faults.delay_steps_max)
            self._sequence += 1
            heapq.heappush(self._queue, (now + delay, self._sequence, message))

    def due(self, now: int) -> list[Message]:
        """Messages whose delivery step has come; a link cut meanwhile loses them."""
        delivered: list[Message] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, message = heapq.heappop(self._queue)
            if (message.source, message.target) in self.cut_links:
                self.dropped += 1
                continue
            delivered.append(message)
        return delivered

    def heal(self) -> None:
        self.cut_links.clear()

    def partition(self, links: Iterable[tuple[int, int]]) -> None:
        self.cut_links = set(links)


def links_between(side_a: Iterable[int], side_b: Iterable[int]) -> set[tuple[int, int]]:
    """The directed links between two groups of nodes, both ways: cutting them splits the
    groups apart and leaves each group's inner links alone."""
    links = set()
    for a in side_a:
        for b in side_b:
            links.add((a, b))
            links.add((b, a))
    return links


def partition_links(
    shape: str, nodes: list[int], rng: random.Random, leader: int | None
) -> set[tuple[int, int]]:
    """The directed links a Jepsen-style partition `shape` cuts.

    Shapes: `isolate` (one random node), `isolate_leader`, `halves` (a majority and
    a minority), `bridge` (two halves joined by one node that sees both),
    `ring` (majorities ring: each node sees its neighbours only, so every node sees
    a majority but no two see the same one).
    """
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    cut_between = links_between
    if shape == "isolate":
        return cut_between([shuffled[0]], shuffled[1:])
    if shape == "isolate_leader":
        target = leader if leader is not None else shuffled[0]
        return cut_between([target], [n for n in nodes if n != target])
    if shape == "halves":
        minority = len(nodes) // 2
        return cut_between(shuffled[:minority], shuffled[minority:])
    if shape == "bridge":
        half = len(nodes) // 2
        left, right = shuffled[:half], shuffled[half + 1 :]
        return cut_between(left, right)  # shuffled[half] is the bridge and sees everyone
    if shape == "ring":
        # Each node sees itself and its ring neighbours within `reach`: a majority, but a
        # different majority for every node. With 3 nodes any ring is fully connected,
        # so isolate one node instead.
        size = len(nodes)
        reach = (size // 2) // 2
        if reach == 0 or size < 5:
            return cut_between([shuffled[0]], shuffled[1:])
        links = set()
        for position, a in enumerate(shuffled):
            visible = {shuffled[(position + offset) % size] for offset in range(-reach, reach + 1)}
            for b in nodes:
                if b not in visible:
                    links.add((a, b))
        return links
    raise ValueError(f"unknown partition shape {shape!r}")
