"""Admission control: how many bytes of client writes one node holds at once.

A write costs memory from the moment its request arrives until it is answered: its body,
its command, its log entry on the leader until the entry is committed and applied (and in
every follower's queues meanwhile). A burst of legal requests that the cluster cannot commit
as fast as they come would otherwise pile up until the node runs out of memory or its loop is
too busy to send heartbeats. So a node *holds* a request's bytes before it reads the body
(the size is known from ``Content-Length``) and lets go when the request is answered; a
request that would take the total past `WriteAdmission.bytes_max` is refused at once with
503 ``overloaded`` and a Retry-After, having cost nothing. etcd does the same in spirit with
``ErrTooManyRequests`` (applied index lagging the committed one by 5,000 entries); counting
bytes rather than entries is what keeps memory bounded when values are large.

A follower holds a request while it forwards it, and the leader holds it again when the
forward arrives: each node's limit bounds its own memory.

Bytes bound memory; `WaitingProposals` bounds delay: a leader sheds new writes while the
oldest one it is still working on has waited too long.
"""

from __future__ import annotations

__all__ = ["REQUEST_OVERHEAD_BYTES", "WaitingProposals", "WriteAdmission"]

REQUEST_OVERHEAD_BYTES = 1024
"""What a write costs beyond its body (headers, key, the waiter, the log entry's bookkeeping):
counted for every request, so a flood of empty-bodied writes is bounded too."""


class WriteAdmission:
    """The bytes of client writes a node holds, against a limit."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_held = 0
        self.requests_held = 0
        self.refused_total = 0
        """Requests refused since the node started (for metrics)."""

    def try_hold(self, size_bytes: int) -> bool:
        """Hold `size_bytes` for one request; False (and nothing held) if that would pass
        the limit. A request larger than the whole limit still gets in when nothing else
        is held, so a small limit slows large writes down but never refuses one forever."""
        if self.requests_held and self.bytes_held + size_bytes > self.bytes_max:
            self.refused_total += 1
            return False
        self.bytes_held += size_bytes
        self.requests_held += 1
        return True

    def release(self, size_bytes: int) -> None:
        """The request holding `size_bytes` was answered."""
        self.bytes_held -= size_bytes
        self.requests_held -= 1


class WaitingProposals:
    """The client proposals a leader waits on, oldest first, to shed by waiting time.

    Bytes bound memory, not delay: a flood of small writes fits the byte budget many times
    over and would just queue, each answered later and later until requests time out
    unanswered (504: outcome unknown, the worst answer a client can get). So a leader also
    refuses a new proposal while the oldest one still waiting has waited longer than
    `wait_s_max`: the queue then holds about that much work, the latency of what is admitted
    stays near it, and the rest gets a clean 503 (nothing applied) at once. The oldest
    waiter is the signal, as in CoDel's sojourn time, because it measures the queue itself
    and needs no estimate of the cluster's throughput.
    """

    def __init__(self, wait_s_max: float) -> None:
        self.wait_s_max = wait_s_max
        self._started_s: dict[int, float] = {}  # insertion order is arrival order
        self._next_token = 0
        self.refused_total = 0

    def oldest_wait_s(self, now_s: float) -> float:
        """How long the oldest proposal still waiting has waited (0 when none waits)."""
        for started_s in self._started_s.values():
            return now_s - started_s
        return 0.0

    def admit(self, now_s: float) -> int | None:
        """A token for a new proposal, or None (refused) when the oldest has waited too long."""
        if self.oldest_wait_s(now_s) > self.wait_s_max:
            self.refused_total += 1
            return None
        self._next_token += 1
        self._started_s[self._next_token] = now_s
        return self._next_token

    def done(self, token: int) -> None:
        """The proposal of `token` was answered (or gave up)."""
        del self._started_s[token]
