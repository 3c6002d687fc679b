"""The threads of a chaos workload's clients: each repeats one step until the run stops.

The register and set clients (`kvraft.chaos.workload`) and the bank's (`kvraft.chaos.bank`)
run alike: a step is one operation; between steps a client thinks for a random moment (a
rate limit, not synchronisation); an exception out of a step is a bug of the harness,
recorded in `errors` for the report and never hidden, after which the client goes on as a
new logical process (the operation it left open stays unknown, under the old one).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

__all__ = ["ClientState", "ClientThreads"]


class ClientState:
    """A client's identity: its slot, its current logical process, and its randomness.

    Processes are numbered from `process_base` (so two workloads of one run never share a
    number); `rng_name` names the client's random stream, drawn from the run's seed."""

    def __init__(
        self,
        slot: int,
        slots_total: int,
        seed: int,
        *,
        process_base: int = 0,
        rng_name: str = "kvraft-chaos",
    ) -> None:
        self.slot = slot
        self.slots_total = slots_total
        self.process_base = process_base
        self.generation = 0
        self.counter = 0
        # A string seed is hashed deterministically (random.seed's version 2).
        self.rng = random.Random(f"{rng_name}/{seed}/{slot}")

    @property
    def process(self) -> int:
        return self.process_base + self.slot + self.generation * self.slots_total

    def crashed(self) -> None:
        """The last operation's outcome is unknown: continue as a new process."""
        self.generation += 1

    def unique(self, prefix: str = "") -> str:
        """`prefix` and a name no other operation of the run has: slot and counter."""
        self.counter += 1
        return f"{prefix}{self.slot}-{self.counter}"


class ClientThreads:
    """Client threads sharing one stop signal and one error list; each pauses up to
    `think_s_max` between steps, and `stop` waits `join_timeout_s` for each."""

    def __init__(
        self,
        stop: threading.Event,
        errors: list[str],
        *,
        think_s_max: float,
        join_timeout_s: float,
    ) -> None:
        self._stop = stop
        self.errors = errors
        self.think_s_max = think_s_max
        self.join_timeout_s = join_timeout_s
        self._threads: list[threading.Thread] = []

    def add(
        self,
        name: str,
        step: Callable[[], None],
        crashed: Callable[[], None],
        rng: random.Random,
        label: str,
    ) -> None:
        """A client thread `name` that repeats `step`; `crashed` starts its next process;
        `label` names it in an error."""
        self._threads.append(
            threading.Thread(
                target=self._loop, args=(step, crashed, rng, label), name=name, daemon=True
            )
        )

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[str]:
        """Stop the clients and wait for them; the names of any that did not finish."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout_s)
        return [thread.name for thread in self._threads if thread.is_alive()]

    def _loop(
        self,
        step: Callable[[], None],
        crashed: Callable[[], None],
        rng: random.Random,
        label: str,
    ) -> None:
        while not self._stop.is_set():
            try:
                step()
            except Exception as error:  # a harness bug: report it, never hide it
                if not self._stop.is_set():
                    self.errors.append(f"{label}: {error!r}")
                crashed()
            self._stop.wait(rng.uniform(0.0, self.think_s_max))
