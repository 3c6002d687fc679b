"""Leases in the simulator (#19): lease clients, the nodes' lease timers, and the lease checker.

The workload
------------
A few lease clients (processes of their own, apart from the register and bank clients) each
hold up to `HELD_MAX` leases. They grant leases of a few seconds (`SIM_TICK_MS` says what a
simulated tick stands for: the shortest TTL the daemon allows is 3 longest election
timeouts), attach `LEASE_KEYS` to them with puts, keep some alive (every third of their TTL
as the client library does, or later), stop keeping others alive so that they expire, revoke
some, read the lease keys, put to leases they know are gone, and detach keys with a plain
put or a delete; all while the nemesis crashes, partitions and moves leadership. A keepalive
goes through the node exactly as the daemon's does (`kvraft.server.RaftNode.keepalive_lease`,
done by `SimCluster`): the tick count taken before a ReadIndex round, then the lease looked
up, its checkpoint cleared through the log if it has one, and `LeaseTimer.keepalive`. Expiries
and checkpoints are the leader's own `LeaseTimer` at work inside the node's shell, as in the
daemon, with a checkpoint interval short enough (drawn per seed) to checkpoint sim leases.

The checker
-----------
The truth is what the nodes applied: each index's first application anywhere (State Machine
Safety makes every node apply the same entries). Two properties, the issue's:

1. A lease's keys go with it.
   - After every entry any node applies that may change a lease key (one that names a lease
     key, a revoke or expiry, the first after a snapshot replaced the node's state; after
     the last of a run of plain puts the shell applied in one step): each
     lease key it holds is attached to exactly the lease its last write named (none for a
     plain write), that lease exists, and the key holds no value written under a lease whose
     revoke or expiry applied at or before that index.
   - A put attached to a lease applies while the lease exists and is refused
     (`lease_not_found`) once the lease's revoke applied before it; a revoke succeeds once.
   - No read of a lease key answered at read index >= i returns a value written under a
     lease revoked at i, and no keepalive answered at read index >= i is acknowledged.
2. No lease expires before its TTL. Every expiry that applied was proposed by a leader at
   least the lease's TTL after the lease's last reference, in simulated time (see below):
   the first application of its grant (on any node), or the
   arrival of any keepalive a client got a success answer for (arrival: where the node read
   its tick count, before the ReadIndex round). Unanswered keepalives do not count: they
   promise the client nothing.

Time, and why the bound is exact
--------------------------------
The simulator knows the true time, its step, and every node ticks once per `TICK_STEPS`
steps: the expiry must be proposed at least TTL x `TICK_STEPS` steps after the reference. A
correct leader meets that within a tick: a keepalive arrives between two of its ticks and
its deadline counts TTL ticks from the next one (`LeaseTimer._deadline`), a grant it applies
likewise; a leader elected later was elected after the old leader's ReadIndex round
confirmed it, so after the keepalive arrived, and gives the lease a full TTL from after its
own election, or the remainder a checkpoint recorded (in real time no less than what was
left), which a keepalive clears before it is acknowledged. A shell waiting on a term write
may skip a tick, which only makes its leases live longer, and a leader never waits so.

Why not count the proposer's own ticks, the leader's clock the issue speaks of: a new leader
that starts a lease from a checkpoint continues another leader's countdown, so its own ticks
since the reference may be far fewer than the time that passed (it was down, say); and a
count of ticks cannot see a lease expire part of a tick early, as one counted from the tick
before the arrival does (kvraft's did, before `LeaseTimer._deadline` counted from the next
tick; ``lease_deadline_from_last_tick`` below brings it back, and steps catch it).

Test-only bugs the checker must catch (`LEASE_BUGS`): a new leader that counts deadlines from
when it applied each grant, forgetting the keepalives its predecessor acknowledged; deadlines
counted from a tick count up to a tick old; a keepalive acknowledged without clearing its
lease's checkpoint, so that a new leader starts the lease from a stale remainder.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from kvraft.leases import LeaseTimer, lease_ttl_s_min
from kvraft.raft.messages import Entry, EntryKind
from kvraft.sim.checkers import Violation
from kvraft.statemachine import (
    OP_LEASE_CHECKPOINT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    ApplyResult,
    ErrorCode,
    encode_delete,
    encode_lease_grant,
    encode_lease_revoke,
    encode_put,
)

__all__ = [
    "CHECKPOINT_INTERVAL_TICKS_CHOICES",
    "HELD_MAX",
    "LEASE_BUGS",
    "LEASE_KEYS",
    "SIM_TICK_MS",
    "LeaseCall",
    "LeaseChecker",
    "LeaseWorkload",
    "SimLeaseTimer",
    "sim_lease_timer",
    "ttl_ticks",
]

SIM_TICK_MS = 50
"""What one simulated tick stands for, to the lease timers: the daemon's default tick. With
the simulator's 10 election ticks, the shortest TTL the daemon allows (3 longest election
timeouts) is 3 s, 60 ticks: a lease outlives ordinary elections and expires many times in a
run."""

LEASE_KEY_PREFIX = "lease/"
LEASE_KEYS = tuple(f"{LEASE_KEY_PREFIX}{number}" for number in range(3))
"""The keys the lease clients attach to leases: none of the register or bank keys, so that
the linearizability and bank checks do not have to model keys deleted by an expiry."""

HELD_MAX = 3
"""Leases one client holds at most (granted and not known to be gone)."""

TTL_EXTRA_S_MAX = 2
"""A grant asks for the shortest TTL plus 0..this many seconds."""

KEEP_PROBABILITY = 0.6
"""A granted lease is kept alive; the others are left to expire."""

KEEPALIVE_PERIODS = (1 / 3, 2 / 3, 0.9)
"""A kept lease's keepalives come every this much of its TTL, drawn per lease: a third, as
the client library sends them, or late, so that an expiry often races the next keepalive
(and a new leader that starts a lease from a stale checkpoint beats it)."""

ABANDON_PROBABILITY = 0.03
"""Per operation that is not a due keepalive: the client stops keeping one lease alive."""

GONE_KEPT_MAX = 4
"""Lease ids a client remembers as gone (or abandoned), to put to them now and then."""

CHECKPOINT_INTERVAL_TICKS_CHOICES = (25, 70, 1000)
"""How often a leader checkpoints remaining TTLs (`kvraft.leases`), drawn per seed: the
daemon's interval (60 s) is longer than any run, so the simulator shortens it until every
lease (25), those longer than 70 ticks or none (1000) are checkpointed; a keepalive of a
checkpointed lease writes its clear first."""

TIMER_BUGS = frozenset({"lease_no_promote_extension", "lease_deadline_from_last_tick"})
"""Test-only bugs of the lease timers (`SimLeaseTimer`)."""

LEASE_BUGS = TIMER_BUGS | {"lease_keepalive_no_clear"}
"""Every test-only lease bug; ``lease_keepalive_no_clear`` is the keepalive path's
(`kvraft.sim.cluster`): a keepalive acknowledged with its lease's checkpoint left in the log,
so a new leader starts the lease from a stale remainder."""

_FIXARRAY_2 = 0x92
_FIXARRAY_3 = 0x93
_FIXARRAY_7 = 0x97
_MSGPACK_TRUE = 0xC3
_LEASE_KEY_PREFIX_BYTES = LEASE_KEY_PREFIX.encode()


def ttl_ticks(ttl_s: int) -> int:
    """A TTL in simulated ticks, rounded up as `LeaseTimer.ttl_ticks` does."""
    return math.ceil(ttl_s * 1000 / SIM_TICK_MS)


class SimLeaseTimer(LeaseTimer):
    """`LeaseTimer` with test-only bugs (`LEASE_BUGS`), built only when one is on: a clean run
    uses `LeaseTimer` itself.

    - ``lease_no_promote_extension``: a new leader gives each lease its TTL from the tick at
      which this node applied the grant, not from its first tick as leader, so the
      keepalives its predecessor acknowledged count for nothing.
    - ``lease_deadline_from_last_tick``: a deadline counts TTL ticks from the tick count at
      the keepalive's arrival or the grant's apply, which may be most of a tick old (what
      `LeaseTimer._deadline` once did), not from the next tick.
    """

    def __init__(
        self, election_ticks: int, checkpoint_interval_ticks: int, bugs: frozenset[str]
    ) -> None:
        super().__init__(SIM_TICK_MS, election_ticks, checkpoint_interval_ticks)
        self.bugs = bugs
        self._granted_ticks: dict[int, int] = {}

    def _deadline(self, from_ticks: int, ttl_ticks: int) -> int:  # type: ignore[override]
        if "lease_deadline_from_last_tick" in self.bugs:
            return from_ticks + ttl_ticks
        return LeaseTimer._deadline(from_ticks, ttl_ticks)

    def granted(self, lease_id: int, ttl_s: int) -> None:
        # Called for every grant applied here, leading or not.
        self._granted_ticks.setdefault(lease_id, self.now_ticks)
        super().granted(lease_id, ttl_s)

    def promote(self, term: int, leases: Iterable[tuple[int, int, int]]) -> None:
        super().promote(term, leases)
        if "lease_no_promote_extension" not in self.bugs:
            return
        # The bug reaches into the timer's deadlines: there is no public way to be wrong.
        for lease_id, ttl in self._ttl_ticks.items():
            granted = self._granted_ticks.get(lease_id)
            if granted is not None:
                self._deadline_ticks[lease_id] = self._deadline(granted, ttl)


def sim_lease_timer(
    election_ticks: int, checkpoint_interval_ticks: int, bugs: frozenset[str] = frozenset()
) -> LeaseTimer:
    """A simulated node's lease timer (`SIM_TICK_MS`), with the test-only `bugs` asked for."""
    if bugs & TIMER_BUGS:
        return SimLeaseTimer(election_ticks, checkpoint_interval_ticks, bugs)
    return LeaseTimer(SIM_TICK_MS, election_ticks, checkpoint_interval_ticks)


@dataclass(slots=True)
class LeaseCall:
    """One lease client operation, and what the cluster learnt answering it.

    Fields:
        kind: grant | put (attached to `lease_id`) | detach (a plain put) | delete |
            revoke | keepalive | read.
        key: the lease key of a put, detach, delete or read.
        lease_id: the lease of a put, revoke or keepalive.
        ttl_s: a grant's TTL.
        value: what a put or detach writes.
        node_id: the node that answered a keepalive.
        read_index: where the ReadIndex round released a read or keepalive.
        read_revision: the revision a read returned (0: the key was absent).
        not_found: a keepalive answered "this lease does not exist (any more)".
    """

    kind: str
    key: str = ""
    lease_id: int = 0
    ttl_s: int = 0
    value: bytes = b""
    node_id: int = 0
    read_index: int = 0
    read_revision: int = 0
    not_found: bool = False

    def command(self) -> bytes:
        """The log entry of a write (a read or keepalive writes nothing)."""
        if self.kind == "grant":
            return encode_lease_grant(self.ttl_s)
        if self.kind == "put":
            return encode_put(self.key, self.value, lease_id=self.lease_id)
        if self.kind == "detach":
            return encode_put(self.key, self.value)
        if self.kind == "delete":
            return encode_delete(self.key)
        assert self.kind == "revoke", self.kind
        return encode_lease_revoke(self.lease_id)


@dataclass(slots=True)
class _Held:
    ttl_s: int
    keep: bool
    refreshed_at: int
    """The step at which the client sent the grant or the last keepalive that succeeded."""
    period_steps: int
    """How long after `refreshed_at` the next keepalive is due."""


@dataclass(slots=True)
class _LeaseClient:
    held: dict[int, _Held] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)
    """Leases known or presumed gone (revoked, expired, abandoned), newest last."""
    counter: int = 0


class LeaseWorkload:
    """What each lease client does next, and what it learns from the answers."""

    def __init__(self, rng: random.Random, election_ticks: int, tick_steps: int) -> None:
        self.rng = rng
        self.tick_steps = tick_steps
        self.ttl_s_min = lease_ttl_s_min(SIM_TICK_MS, election_ticks)
        self.clients: dict[int, _LeaseClient] = {}

    def next_call(self, process: int, now: int) -> LeaseCall:
        client = self.clients.setdefault(process, _LeaseClient())
        rng = self.rng
        # A kept lease is refreshed every period, and retried at once while that fails:
        # nothing else comes first.
        due = [
            (now - held.refreshed_at - held.period_steps, lease_id)
            for lease_id, held in client.held.items()
            if held.keep
        ]
        overdue = max(due, default=None)
        if overdue is not None and overdue[0] >= 0:
            return LeaseCall("keepalive", lease_id=overdue[1])
        self._forget_abandoned(client, now)
        kept = [lease_id for lease_id, held in client.held.items() if held.keep]
        if kept and rng.random() < ABANDON_PROBABILITY:
            client.held[rng.choice(kept)].keep = False
        held = sorted(client.held)
        key = rng.choice(LEASE_KEYS)
        client.counter += 1
        value = f"{process}-{client.counter}".encode()
        roll = rng.random()
        if not held or (roll < 0.15 and len(held) < HELD_MAX):
            return LeaseCall("grant", ttl_s=self.ttl_s_min + rng.randint(0, TTL_EXTRA_S_MAX))
        if roll < 0.45:
            return LeaseCall("put", key, rng.choice(held), value=value)
        if roll < 0.65:
            return LeaseCall("read", key)
        if roll < 0.72:
            return LeaseCall("revoke", lease_id=rng.choice(held))
        if roll < 0.78 and client.gone:
            return LeaseCall("put", key, rng.choice(client.gone), value=value)
        if roll < 0.84:
            return LeaseCall("detach", key, value=value)
        if roll < 0.88:
            return LeaseCall("delete", key)
        if roll < 0.94:
            # A keepalive that is not due, maybe of a lease no longer kept alive.
            return LeaseCall("keepalive", lease_id=rng.choice(held))
        return LeaseCall("read", key)

    def _forget_abandoned(self, client: _LeaseClient, now: int) -> None:
        """A lease left alone for two TTLs is presumed expired (it may live on after a
        failover: a put to it may go either way, and the checker knows which is right)."""
        for lease_id, held in list(client.held.items()):
            if not held.keep and now - held.refreshed_at > 2 * ttl_ticks(held.ttl_s) * (
                self.tick_steps
            ):
                self._gone(client, lease_id)

    def _gone(self, client: _LeaseClient, lease_id: int) -> None:
        client.held.pop(lease_id, None)
        if lease_id not in client.gone:
            client.gone.append(lease_id)
            del client.gone[:-GONE_KEPT_MAX]

    def answered(
        self, process: int, call: LeaseCall, status: str, output: Any, called_at: int
    ) -> None:
        """The client learns what happened to `call` (sent at step `called_at`)."""
        client = self.clients[process]
        if call.kind == "keepalive":
            held = client.held.get(call.lease_id)
            if status == "ok" and held is not None:
                held.refreshed_at = max(held.refreshed_at, called_at)
            elif call.not_found:
                self._gone(client, call.lease_id)
            return
        if status != "ok" or call.kind == "read":
            return
        assert isinstance(output, ApplyResult)
        if call.kind == "grant":
            if not output.ok:
                raise Violation("lease revoke", f"a grant was refused: {output.message}")
            keep = self.rng.random() < KEEP_PROBABILITY
            period = self.rng.choice(KEEPALIVE_PERIODS) * ttl_ticks(call.ttl_s) * self.tick_steps
            client.held[output.revision] = _Held(call.ttl_s, keep, called_at, int(period))
        elif call.kind == "revoke" or (
            call.kind == "put" and output.error == ErrorCode.LEASE_NOT_FOUND
        ):
            self._gone(client, call.lease_id)


class StateMachineView(Protocol):
    """What the checker reads of a node's state machine (`KVStateMachine`'s reads)."""

    def get(self, key: str) -> tuple[bytes, int] | None: ...

    def lease(self, lease_id: int) -> tuple[int, list[str]] | None: ...

    def lease_of(self, key: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class _Expiry:
    lease_id: int
    index: int
    proposer: int
    step: int


class LeaseChecker:
    """The lease properties (see the module docstring), fed by `SimCluster` as nodes append
    and apply entries, and checked against the clients' answers at the end of a run."""

    def __init__(self, tick_steps: int) -> None:
        self.tick_steps = tick_steps
        self._truth_index = 0
        """The highest index applied anywhere: first applications come in index order."""
        self.ttl_ticks: dict[int, int] = {}
        """Every lease granted (applied), to its TTL in ticks."""
        self.granted_at: dict[int, int] = {}
        """The step at which the lease's grant first applied anywhere."""
        self.revoked_at: dict[int, int] = {}
        """A lease to the index of the revoke or expiry that removed it."""
        self.written_under: dict[int, int] = {}
        """The revision of every put attached to a lease that applied, to that lease."""
        self._expiry_proposals: dict[tuple[int, int], tuple[int, int]] = {}
        """(index, term) of an expiry entry to (node, step) where it was first
        seen: in its leader's Ready, when the leader appended it (§5.3: one leader per term
        writes an index once; followers get it later, in a message)."""
        self.expiries: list[_Expiry] = []
        self.counts = {"checkpoints": 0, "checkpoint_clears": 0}
        """Checkpoint entries applied: with a remainder, and clears (a keepalive's)."""
        self._machines: dict[int, StateMachineView] = {}
        """Each node's state machine when its lease keys were last checked."""
        self.now = 0
        """The simulator's step, kept up to date by the cluster (for the findings' text)."""

    # --- fed by the cluster -------------------------------------------------------------

    def appended(self, node_id: int, entries: list[Entry]) -> None:
        """`node_id` started writing `entries` (one Ready's): note expiries it proposed."""
        for entry in entries:
            data = entry.data
            if (
                len(data) > 3
                and data[1] == OP_LEASE_REVOKE
                and data[0] == _FIXARRAY_3
                and data[-1] == _MSGPACK_TRUE
                and entry.kind == EntryKind.NORMAL
            ):
                self._expiry_proposals.setdefault((entry.index, entry.term), (node_id, self.now))

    def applied(
        self, node_id: int, machine: StateMachineView, entry: Entry, result: object
    ) -> None:
        """`node_id` applied `entry` with `result`; `machine` is its state after it."""
        index = entry.index
        first = index > self._truth_index
        if first:
            self._truth_index = index
        data = entry.data
        op_changes_keys = False
        if entry.kind == EntryKind.NORMAL and len(data) > 1:
            op = data[1]
            if op == OP_PUT and data[0] == _FIXARRAY_7:
                assert isinstance(result, ApplyResult)
                self._leased_put(node_id, entry, result, first)
            elif op == OP_LEASE_GRANT and data[0] == _FIXARRAY_2:
                assert isinstance(result, ApplyResult)
                self._grant(entry, result, first)
            elif op == OP_LEASE_REVOKE and data[0] == _FIXARRAY_3:
                assert isinstance(result, ApplyResult)
                self._revoke(node_id, machine, entry, result, first)
                op_changes_keys = True
            elif op == OP_LEASE_CHECKPOINT and data[0] == _FIXARRAY_2 and first:
                _, flat = msgpack.unpackb(data)
                kind = "checkpoints" if any(flat[1::2]) else "checkpoint_clears"
                self.counts[kind] += 1
        # Only an entry that names a lease key or revokes a lease changes the lease keys; a
        # snapshot restored replaces the machine (whatever it was, it is checked once).
        if (
            op_changes_keys
            or _LEASE_KEY_PREFIX_BYTES in data
            or self._machines.get(node_id) is not machine
        ):
            self._machines[node_id] = machine
            self._check_keys(node_id, machine, index)

    def applied_plain_puts(
        self, node_id: int, machine: StateMachineView, entries: Sequence[Entry]
    ) -> None:
        """`node_id` applied `entries`, a run of plain puts, in one step (the shell's batch
        path, `kvraft.shell.NodeShell._apply_all`); `machine` is its state after the last.
        What `applied` of each would check: a plain put grants, revokes and checkpoints no
        lease, and only a lease key it writes changes (detached from its lease: the "detach"
        call). Those keys are checked once, on the state after the run, at its last index:
        nothing but these puts applied in between, so a lease key the run does not write
        holds there what it held after each of them, and one it writes must be detached."""
        last = entries[-1].index
        if last > self._truth_index:
            self._truth_index = last
        if self._machines.get(node_id) is not machine or any(
            _LEASE_KEY_PREFIX_BYTES in entry.data for entry in entries
        ):
            self._machines[node_id] = machine
            self._check_keys(node_id, machine, last)

    def _grant(self, entry: Entry, result: ApplyResult, first: bool) -> None:
        if not result.ok:
            raise Violation("lease revoke", f"the grant at {entry.index} was refused")
        if first:
            _, ttl_s = msgpack.unpackb(entry.data)
            self.ttl_ticks[entry.index] = ttl_ticks(ttl_s)
            self.granted_at[entry.index] = self.now

    def _leased_put(self, node_id: int, entry: Entry, result: ApplyResult, first: bool) -> None:
        fields = msgpack.unpackb(entry.data)
        key, lease_id = fields[1], fields[6]
        revoked = self.revoked_at.get(lease_id)
        # (A node behind applies the put after others applied a later revoke.)
        if (revoked is not None and revoked < entry.index) or lease_id not in self.ttl_ticks:
            if result.ok or result.error != ErrorCode.LEASE_NOT_FOUND:
                raise Violation(
                    "lease revoke",
                    f"n{node_id} applied the put of {key!r} attached to lease {lease_id} at "
                    f"{entry.index} ({'ok' if result.ok else result.error}), after the lease's "
                    f"revoke at {revoked}",
                )
        elif not result.ok:
            raise Violation(
                "lease revoke",
                f"n{node_id} refused the put of {key!r} attached to live lease {lease_id} at "
                f"{entry.index}: {result.message}",
            )
        elif first:
            self.written_under[entry.index] = lease_id

    def _revoke(
        self,
        node_id: int,
        machine: StateMachineView,
        entry: Entry,
        result: ApplyResult,
        first: bool,
    ) -> None:
        _, lease_id, expired = msgpack.unpackb(entry.data)
        revoked = self.revoked_at.get(lease_id)
        live = (revoked is None or revoked >= entry.index) and lease_id in self.ttl_ticks
        if result.ok != live or (not live and result.error != ErrorCode.LEASE_NOT_FOUND):
            raise Violation(
                "lease revoke",
                f"n{node_id} applied the revoke of lease {lease_id} at {entry.index} "
                f"({'ok' if result.ok else result.error}); the lease was "
                + ("live" if live else f"revoked at {revoked}"),
            )
        if machine.lease(lease_id) is not None:
            raise Violation(
                "lease revoke",
                f"n{node_id} still holds lease {lease_id} after its revoke at {entry.index}",
            )
        if not (first and result.ok):
            return
        self.revoked_at[lease_id] = entry.index
        if expired:
            proposal = self._expiry_proposals.get((entry.index, entry.term))
            # Every entry is in its leader's Ready before anyone applies it.
            assert proposal is not None, f"expiry at {entry.index} applied, never appended"
            proposer, step = proposal
            self.expiries.append(_Expiry(lease_id, entry.index, proposer, step))

    def _check_keys(self, node_id: int, machine: StateMachineView, index: int) -> None:
        """Every lease key is attached to the lease its value was written under, that lease
        exists, and no value outlives its lease's revoke."""
        for key in LEASE_KEYS:
            found = machine.get(key)
            attached = machine.lease_of(key)
            if found is None:
                if attached is not None:
                    raise Violation(
                        "lease revoke",
                        f"n{node_id} at {index}: {key!r} is gone but attached to {attached}",
                    )
                continue
            revision = found[1]
            written_under = self.written_under.get(revision)
            if attached != written_under:
                raise Violation(
                    "lease revoke",
                    f"n{node_id} at {index}: {key!r} (revision {revision}, written under "
                    f"lease {written_under}) is attached to lease {attached}",
                )
            if written_under is None:
                continue
            revoked = self.revoked_at.get(written_under)
            if revoked is not None and revoked <= index:
                raise Violation(
                    "lease revoke",
                    f"n{node_id} at {index}: {key!r} still holds revision {revision}, written "
                    f"under lease {written_under}, which was revoked at {revoked}",
                )
            if machine.lease(written_under) is None:
                raise Violation(
                    "lease revoke",
                    f"n{node_id} at {index}: {key!r} is attached to lease {written_under}, "
                    "which it does not hold",
                )

    # --- at the end of a run ------------------------------------------------------------

    def check(self, answered: Iterable[tuple[int, LeaseCall]]) -> dict[str, int]:
        """Check the clients' successful reads and keepalives, (step sent, call) each, and
        every expiry that applied; returns counts of what was checked."""
        latest: dict[int, tuple[int, LeaseCall]] = {}
        keepalives = 0
        for called_at, call in answered:
            if call.kind == "read":
                self._check_read(call)
            elif call.kind == "keepalive":
                keepalives += 1
                revoked = self.revoked_at.get(call.lease_id)
                if revoked is not None and revoked <= call.read_index:
                    raise Violation(
                        "lease revoke",
                        f"n{call.node_id} acknowledged a keepalive of lease {call.lease_id} at "
                        f"read index {call.read_index}, after its revoke at {revoked}",
                    )
                if call.lease_id not in latest or latest[call.lease_id][0] < called_at:
                    latest[call.lease_id] = (called_at, call)
        failovers = 0
        for expiry in self.expiries:
            failovers += self._check_expiry(expiry, latest.get(expiry.lease_id))
        return {
            "granted": len(self.ttl_ticks),
            "revoked": len(self.revoked_at) - len(self.expiries),
            "expired": len(self.expiries),
            "expired_after_failover": failovers,
            "keepalives_acknowledged": keepalives,
            **self.counts,
        }

    def _check_read(self, call: LeaseCall) -> None:
        lease_id = self.written_under.get(call.read_revision)
        if lease_id is None:
            return
        revoked = self.revoked_at.get(lease_id)
        if revoked is not None and revoked <= call.read_index:
            raise Violation(
                "lease revoke",
                f"a read of {call.key!r} at read index {call.read_index} returned revision "
                f"{call.read_revision}, written under lease {lease_id}, revoked at {revoked}",
            )

    def _check_expiry(self, expiry: _Expiry, keepalive: tuple[int, LeaseCall] | None) -> int:
        """Property 2 for one expiry; 1 if the lease's last reference is a keepalive another
        node acknowledged than the one that expired it (the bound held through a failover)."""
        lease_id, proposer = expiry.lease_id, expiry.proposer
        ttl = self.ttl_ticks[lease_id]
        since = self.granted_at[lease_id]
        what, where = f"the first apply of its grant (step {since})", proposer
        if keepalive is not None and keepalive[0] >= since:
            since, call = keepalive
            what = f"the keepalive n{call.node_id} acknowledged, sent at step {since}"
            where = call.node_id
        steps = expiry.step - since
        if steps < ttl * self.tick_steps:
            raise Violation(
                "lease ttl",
                f"lease {lease_id} (TTL {ttl} ticks) expired by entry {expiry.index}, which "
                f"n{proposer} proposed at step {expiry.step}, {steps / self.tick_steps:g} "
                f"ticks after {what}",
            )
        return int(where != proposer)
