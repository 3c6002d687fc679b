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

__all__ = [
    "LOOP_LAG_DECAY",
    "LOOP_LAG_SHED_REQUESTS_MIN",
    "LOOP_LAG_S_MAX",
    "REQUEST_OVERHEAD_BYTES",
    "WaitingProposals",
    "WriteAdmission",
]

REQUEST_OVERHEAD_BYTES = 1024
"""What a write costs beyond its body (headers, key, the waiter, the log entry's bookkeeping):
counted for every request, so a flood of empty-bodied writes is bounded too."""


LOOP_LAG_S_MAX = 0.05
"""A node sheds new writes while its event loop runs this far behind (and it holds at least
`LOOP_LAG_SHED_REQUESTS_MIN` writes): every request, health checks and heartbeats included,
waits that long for the loop, so more admitted work only makes everyone later."""

LOOP_LAG_SHED_REQUESTS_MIN = 16
"""Loop lag alone sheds nothing while fewer writes than this are held: a lagging loop with
few writes is slow for another reason (a snapshot, a collection), and a lone client must not
get 503 for it."""

LOOP_LAG_DECAY = 0.5
"""Each new lag measurement keeps this share of the previous estimate (which is at least the
newest measurement): a stall is remembered for a few ticks, not for ever."""


class WriteAdmission:
    """The bytes of client writes a node holds, against a limit, and the loop's lag."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_held = 0
        self.requests_held = 0
        self.refused_total = 0
        """Requests refused since the node started (for metrics)."""
        self.loop_lag_s = 0.0
        """How late the event loop runs its timers, recently (`record_loop_lag`)."""
        self.refusal = ""
        """Why the last refused request was refused."""

    def record_loop_lag(self, lag_s: float) -> None:
        """A timer due some time ago ran `lag_s` late."""
        self.loop_lag_s = max(lag_s, self.loop_lag_s * LOOP_LAG_DECAY)

    def try_hold(self, size_bytes: int) -> bool:
        """Hold `size_bytes` for one request; False (and nothing held, `refusal` says why)
        if that would pass the limit, or while the loop lags with many writes held. A
        request larger than the whole limit still gets in when nothing else is held, so a
        small limit slows large writes down but never refuses one forever."""
        if self.requests_held and self.bytes_held + size_bytes > self.bytes_max:
            self.refused_total += 1
            self.refusal = (
                f"this node holds {self.bytes_held} bytes of writes, its limit is {self.bytes_max}"
            )
            return False
        if self.loop_lag_s > LOOP_LAG_S_MAX and self.requests_held >= LOOP_LAG_SHED_REQUESTS_MIN:
            self.refused_total += 1
            self.refusal = (
                f"this node's event loop is {self.loop_lag_s * 1000:.0f} ms behind with"
                f" {self.requests_held} writes held"
            )
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
