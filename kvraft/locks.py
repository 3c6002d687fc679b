"""Waiting for a lock: who is woken when a lock's queue of waiters changes.

Theory of operation
-------------------
A lock is state of the key-value machine (`kvraft.statemachine`): a queue of waiters, each
a lease and its fencing token, the first of which holds the lock. Nothing about a lock is
decided here; this module only tells a waiting request to look again. `LockWaiting`
follows the shell like the watch hub does (`follow`): every applied entry whose result
names locks in `locks_changed` (an acquire, a release, the revoke or expiry of a lease
that waited) wakes whoever waits on those names, and a snapshot installed from the leader
wakes everybody (the queues were replaced wholesale). A woken request reads the machine
again: it holds the lock exactly when its token is first in the queue *as applied*, so a
request answered "held" on any node names a state the log committed.

A lock passes on only through the log: when a holder's lease expires, the next waiter is
woken by the expiry entry applying, never by a timer of its own (the chaos lock workload's
broken mode breaks exactly this rule, and its checker must notice).

No IO and no clock; `asyncio.Event` is the only event-loop object, and it is created by
the waiter on the loop that waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kvraft.raft.messages import Entry, SnapshotMeta
from kvraft.statemachine import ApplyResult, PlainPut

if TYPE_CHECKING:  # the shell is what feeds the waiting; nothing of it is needed at run time
    from kvraft.shell import NodeShell

__all__ = ["LockWaiting"]


class LockWaiting:
    """The requests waiting for locks, by lock name; see the module docstring."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def follow(self, shell: NodeShell) -> None:
        """Wake waiters as `shell` applies entries and installs snapshots."""
        shell.followers.append(self)
        shell.on_restore.append(self._restored)

    @property
    def waiting_count(self) -> int:
        """How many requests wait for some lock right now."""
        return sum(len(events) for events in self._waiting.values())

    @contextmanager
    def waiting(self, name: str) -> Iterator[asyncio.Event]:
        """An event set whenever lock `name`'s queue may have changed, for as long as the
        `with` block runs. Clear it *before* reading the machine, then wait on it: a change
        applied in between sets it again, so none is missed."""
        event = asyncio.Event()
        events = self._waiting.setdefault(name, set())
        events.add(event)
        try:
            yield event
        finally:
            events.discard(event)
            if not events:
                del self._waiting[name]

    def applied_plain_puts(self, puts: Sequence[PlainPut], entries: Sequence[Entry]) -> None:
        """Plain puts were applied (`kvraft.shell.ApplyFollower`): they change no lock."""

    def applied(self, entry: Entry, result: Any) -> None:
        """The shell applied `entry` with `result` (`kvraft.shell.ApplyFollower`)."""
        if not isinstance(result, ApplyResult) or not result.locks_changed or not self._waiting:
            return
        for name in result.locks_changed:
            for event in self._waiting.get(name, ()):
                event.set()

    def _restored(self, meta: SnapshotMeta) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()
