"""A simulated network: delays, drops, duplicates, reordering and partitions, from one seed.

Time is counted in simulator steps (a node ticks every `TICK_STEPS` steps).
Messages wait in a priority queue until their delivery step; reordering comes
from independent random delays. A partition is a set of cut directed links: the
Jepsen shapes (isolated node, halves, bridge, majorities ring) are defined in
`kvraft.partitions`, shared with the chaos harness.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass

from kvraft.raft.messages import Message

__all__ = ["NetworkFaults", "SimNetwork"]


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
