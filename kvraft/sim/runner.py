"""One simulator run from one seed: a workload, a nemesis, checkers, a liveness phase.

A run has two phases:

1. Chaos: clients issue reads, writes, compare-and-sets, deletes and bank transactions
   (`kvraft.sim.bank`: transfers and audits, each one log entry), and lease clients
   grant, keep alive, attach keys to, revoke and abandon leases (`kvraft.sim.leases`),
   while the nemesis partitions the network, crashes and restarts nodes (sometimes in the
   middle of a write), changes membership and transfers leadership, and the
   network drops, duplicates and reorders messages. The safety checkers run
   after every step.
2. Liveness: every fault is healed and every node restarted. Within a bounded
   number of ticks a leader must emerge, every member must catch up, and a
   read of every key and an audit of the bank must succeed, and every node that applied
   the same prefix of the log must hold the same state, byte for byte. Then the whole client
   history is checked for linearizability (transactions projected per key), every
   audit for the bank's total (`kvraft.sim.bank` says why this way), and every lease
   expiry against the keepalives acknowledged before it (`kvraft.sim.leases`).

`run_seed` never raises for a finding: it returns a `SimResult` naming the
violated property, so the caller can print the seed and a replay command.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvraft.linearizability import Operation, check_history
from kvraft.partitions import SHAPES as PARTITION_SHAPES
from kvraft.partitions import isolate, partition_links
from kvraft.raft.core import RaftConfig
from kvraft.raft.messages import Configuration
from kvraft.sim import bank
from kvraft.sim.bank import BankTxn
from kvraft.sim.checkers import Violation
from kvraft.sim.cluster import (
    APPLY_PATHS,
    SNAPSHOT_ENTRIES_PER_RECORD_CHOICES,
    TICK_STEPS,
    ClientOp,
    SimCluster,
    SimNode,
)
from kvraft.sim.leases import CHECKPOINT_INTERVAL_TICKS_CHOICES, LEASE_BUGS, LeaseWorkload
from kvraft.sim.network import NetworkFaults, SimNetwork
from kvraft.sim.watchers import SimWatchers
from kvraft.statemachine import ApplyResult

__all__ = [
    "ALL_FAULTS",
    "WRITE_DELAY_STEPS_MAX_DEFAULT",
    "SimOptions",
    "SimResult",
    "run_seed",
]

SIM_BUGS = frozenset({"watch_skip_after_resume"}) | LEASE_BUGS
"""Test-only bug switches of the simulator itself: a watch client that drops the first change
after each resume (the watch checker must see the gap); lease timers and keepalives that
shorten a lease (`kvraft.sim.leases.LEASE_BUGS`: the lease checker must see a lease expire
less than a TTL after its grant or an acknowledged keepalive)."""

WRITE_DELAY_STEPS_MAX_DEFAULT = 3
"""Writes stay in flight up to this many simulator steps by default: a Ready's write
overlaps the next Readies and messages, as the dissertation's §10.2.1 allows."""

ALL_FAULTS = frozenset(
    {"drop", "duplicate", "delay", "partition", "crash", "torn", "membership", "transfer"}
)
KEYS = ("a", "b", "c")
BANK_PROBABILITY = 0.2
"""The part of client operations that are bank transactions (`kvraft.sim.bank`)."""
TRANSFER_PROBABILITY = 0.7
"""Of those, the part that are transfers (when the client has seen two accounts); the rest
are audits."""
LEASE_IDLE_STEPS_MAX = 6 * TICK_STEPS
"""A lease client waits 1 tick to this long between operations."""
FIGURE8_PHASE_TICKS_MAX = 60
"""How long the Figure 8 nemesis waits for the election or commit that ends a phase before
it heals the network and gives up (several election timeouts)."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    """What one run does.

    Fields:
        nodes: initial voters.
        faults: which faults the nemesis and the network use (see ALL_FAULTS).
        chaos_ticks: length of the chaos phase.
        liveness_ticks_max: how long the healed cluster has to recover and answer.
        clients: concurrent client processes.
        spares: extra nodes that start outside the cluster, for membership changes.
        bugs: test-only switches that inject known bugs, to prove the checkers bite: the
            core's (`RaftConfig.bugs`) and the simulator's own (SIM_BUGS).
        watchers: watch clients that move between nodes (`kvraft.sim.watchers`).
        lease_clients: clients that grant, keep alive, use and revoke leases
            (`kvraft.sim.leases`), besides `clients`.
        write_delay_steps_max: each write completes 0..this many steps after it is issued,
            while the node keeps building Readies (0: every write completes at once).
        apply_path: how the checks see what the nodes apply (`kvraft.sim.cluster.APPLY_PATHS`);
            None: each seed draws one.
    """

    nodes: int = 5
    faults: frozenset[str] = ALL_FAULTS
    chaos_ticks: int = 1500
    liveness_ticks_max: int = 400
    clients: int = 6
    spares: int = 2
    bugs: frozenset[str] = frozenset()
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    write_delay_steps_max: int = WRITE_DELAY_STEPS_MAX_DEFAULT
    watchers: int = 3
    lease_clients: int = 2
    apply_path: str | None = None


@dataclass(slots=True)
class SimResult:
    seed: int
    violation: str | None = None
    property_name: str | None = None
    steps: int = 0
    ticks: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    elections: int = 0
    messages: int = 0
    leases: dict[str, int] = field(default_factory=dict)
    """What the lease checker checked (`LeaseChecker.check`): granted, expired, ..."""
    apply_path: str = ""
    """How the checks saw the nodes apply (`kvraft.sim.cluster.APPLY_PATHS`)."""
    applies: dict[str, int] = field(default_factory=dict)
    """`SimCluster.apply_counts`: entries applied one by one, and runs of plain puts applied
    in one step (the shell's batch path) with the puts in them, over all nodes."""


@dataclass(slots=True)
class _Figure8:
    """Where the Figure 8 nemesis is (`_Run._drive_figure8`)."""

    first: int
    """The leader cut off first, with the tail it appends while alone."""
    term: int
    """The newest leader term the plan has acted on; it waits for a newer one."""
    phase: int = 1
    deadline: int = 0
    """The step at which the plan gives up on its phase, heals and ends."""
    second: int = 0
    """The next leader, cut off as soon as it is elected."""
    committer: tuple[int, int, int] | None = None
    """(leader, term, commit index) of the latest leader seen in phase 2."""


@dataclass(slots=True)
class _Client:
    process: int
    op: ClientOp | None = None
    idle_until: int = 0
    counter: int = 0
    last_read: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    accounts: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    """The bank accounts as this client last saw them: (balance text or None, revision)."""


class _Run:
    def __init__(self, seed: int, options: SimOptions, trace: Callable[[str], None] | None):
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        faults = options.faults
        network_faults = NetworkFaults(
            drop_probability=0.05 if "drop" in faults else 0.0,
            duplicate_probability=0.03 if "duplicate" in faults else 0.0,
            delay_steps_min=1,
            delay_steps_max=12 if "delay" in faults else 2,
        )
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)), network_faults)
        spares = options.spares if "membership" in faults else 0
        # The lease clients (numbered after the final reads' process) and the leases'
        # checkpoint interval draw from a generator of their own (as the watchers do).
        self.lease_rng = random.Random(f"{seed}/leases")
        # Flow-control settings vary by seed: one entry per AppendEntries and a window of
        # one reach interleavings (like Figure 8's) that large batches hide.
        batch_bytes_max = self.rng.choice((1, 256, 4096))
        inflight_max = self.rng.choice((1, 4, 16))

        def make_config(node_id: int) -> RaftConfig:
            return RaftConfig(
                node_id=node_id,
                election_ticks=options.election_ticks,
                heartbeat_ticks=options.heartbeat_ticks,
                inflight_max=inflight_max,
                batch_bytes_max=batch_bytes_max,
                bugs=options.bugs - SIM_BUGS,
            )

        self.cluster = SimCluster(
            random.Random(self.rng.getrandbits(64)),
            self.network,
            options.nodes,
            spares,
            make_config,
            trace,
            write_delay_steps_max=options.write_delay_steps_max,
            lease_checkpoint_interval_ticks=self.lease_rng.choice(
                CHECKPOINT_INTERVAL_TICKS_CHOICES
            ),
            lease_bugs=options.bugs & LEASE_BUGS,
            # From a generator of its own too, so the choice left every other draw as it was.
            snapshot_entries_per_record=random.Random(f"{seed}/snapshots").choice(
                SNAPSHOT_ENTRIES_PER_RECORD_CHOICES
            ),
            # Both paths leave the same run; each seed checks one, from a generator of its own.
            apply_path=options.apply_path or random.Random(f"{seed}/apply").choice(APPLY_PATHS),
        )
        # The watchers draw from a generator of their own, so adding them left every other
        # draw of a seed as it was.
        self.watchers = SimWatchers(
            random.Random(f"{seed}/watchers"),
            options.watchers,
            skip_after_resume="watch_skip_after_resume" in options.bugs,
        )
        self.cluster.on_changes = self.watchers.applied
        if "torn" in faults and "crash" in faults:
            self.cluster.torn_write_probability = 0.001
        self.clients = [_Client(process) for process in range(options.clients)]
        # Bank transactions draw from a generator of their own (as the watchers do).
        self.bank_rng = random.Random(f"{seed}/bank")
        self.lease_workload = LeaseWorkload(self.lease_rng, options.election_ticks, TICK_STEPS)
        self.lease_clients = [
            _Client(options.clients + 1 + number) for number in range(options.lease_clients)
        ]
        self.lease_counts: dict[str, int] = {}
        self.next_nemesis = TICK_STEPS * self.rng.randint(20, 60)
        self.heal_at: int | None = None
        self.leaders_seen: set[tuple[int, int]] = set()
        # "Crash the next new leader soon after it is elected": the window in which it has
        # replicated its predecessors' entries but not yet its own no-op (Figure 8).
        self.hunt_leader_after_term: int | None = None
        self.hunt_on_first_commit = False
        self.hunt_isolates = False
        self.hunt_commit_baseline: tuple[tuple[int, int], int] | None = None
        self.hunts_remaining = 0
        self.restart_at: dict[int, int] = {}
        self.hunted_crash_at: tuple[int, int] | None = None
        self.figure8: _Figure8 | None = None

    # --- workload -----------------------------------------------------------------------

    def drive_clients(self) -> None:
        cluster = self.cluster
        leader: SimNode | None = None
        leader_known = False
        for client in self.clients:
            if client.op is not None:
                if client.op.status == "pending":
                    continue
                self._remember(client, client.op)
                client.op = None
                client.idle_until = cluster.now + self.rng.randint(1, 3 * TICK_STEPS)
            if cluster.now < client.idle_until:
                continue
            client.op = self._next_op(client)
            if not leader_known:
                leader, leader_known = cluster.leader(), True
            if leader is not None and self.rng.random() < 0.85:
                target = leader.id
            else:
                target = self.rng.choice(list(cluster.nodes))
            cluster.submit(client.op, target, timeout_steps=40 * TICK_STEPS)
        self._drive_lease_clients()

    def _drive_lease_clients(self) -> None:
        cluster = self.cluster
        rng = self.lease_rng
        for client in self.lease_clients:
            op = client.op
            if op is not None:
                if op.status == "pending":
                    continue
                assert op.lease is not None
                self.lease_workload.answered(
                    client.process, op.lease, op.status, op.output, op.call
                )
                client.op = None
                # Slower than the register clients (1..6 ticks between operations), so the
                # leases cost the run little; a due keepalive waits at most that long.
                client.idle_until = cluster.now + rng.randint(TICK_STEPS, LEASE_IDLE_STEPS_MAX)
            if cluster.now < client.idle_until:
                continue
            call = self.lease_workload.next_call(client.process, cluster.now)
            # Reads and keepalives are ReadIndex rounds: a timed-out one did not happen.
            kind = "read" if call.kind in ("read", "keepalive") else "lease"
            client.op = ClientOp(client.process, kind, call.key, lease=call)
            leader = cluster.leader()
            if leader is not None and rng.random() < 0.85:
                target = leader.id
            else:
                target = rng.choice(list(cluster.nodes))
            # A keepalive gives up sooner: the client library sends one every third of a TTL.
            ticks = 10 if call.kind == "keepalive" else 40
            cluster.submit(client.op, target, timeout_steps=ticks * TICK_STEPS)

    def _next_op(self, client: _Client) -> ClientOp:
        if self.bank_rng.random() < BANK_PROBABILITY:
            transfer = None
            if self.bank_rng.random() < TRANSFER_PROBABILITY:
                transfer = BankTxn.transfer(self.bank_rng, client.accounts)
            txn = transfer or BankTxn.audit()
            return ClientOp(client.process, "txn", txn.kind, txn=txn)
        key = self.rng.choice(KEYS)
        roll = self.rng.random()
        client.counter += 1
        value = f"{client.process}-{client.counter}"
        if roll < 0.4:
            return ClientOp(client.process, "read", key)
        if roll < 0.7:
            return ClientOp(client.process, "write", key, value=value)
        if roll < 0.9 and key in client.last_read:
            expected, revision = client.last_read[key]
            op = ClientOp(client.process, "cas", key, value=value, expected=expected)
            op.revision_seen = revision
            return op
        return ClientOp(client.process, "delete", key)

    def _remember(self, client: _Client, op: ClientOp) -> None:
        if op.kind == "read" and op.status == "ok":
            output = op.output if isinstance(op.output, str) else None
            client.last_read[op.key] = (output, op.revision_seen)
        if op.txn is not None and op.status == "ok":
            result = op.output
            assert isinstance(result, ApplyResult)
            if result.error is not None:
                raise Violation("bank", f"a bank transaction was refused: {result.message}")
            if op.txn.kind == "transfer" and result.succeeded:
                balances = op.txn.new_balances()
                for (account, _, _), balance in zip(op.txn.seen, balances, strict=True):
                    client.accounts[account] = (balance, result.revision)
            else:
                for account, seen, revision in bank.balances_of(result):
                    client.accounts[account] = (seen, revision)
            if op.txn.kind == "audit":
                bank.check_audit(result, f"client {client.process}")

    # --- nemesis ------------------------------------------------------------------------

    def drive_nemesis(self) -> None:
        cluster = self.cluster
        if self.heal_at is not None and cluster.now >= self.heal_at:
            self.heal_at = None
            cluster.network.heal()
            cluster.log("nemesis: heal")
        if self.figure8 is not None:
            self._drive_figure8(self.figure8)
            return
        if cluster.now < self.next_nemesis:
            return
        self.next_nemesis = cluster.now + TICK_STEPS * self.rng.randint(10, 60)
        actions: list[str] = [
            a for a in ("partition", "crash", "membership", "transfer") if a in self.options.faults
        ]
        if "crash" in self.options.faults:
            actions += ["restart", "crash_new_leader"]
        if "partition" in self.options.faults:
            actions.append("figure8")
        if not actions:
            return
        action = self.rng.choice(actions)
        getattr(self, f"_nemesis_{action}")()

    def _nemesis_partition(self) -> None:
        cluster = self.cluster
        shape = self.rng.choice(PARTITION_SHAPES)
        leader = cluster.leader()
        links = partition_links(
            shape, sorted(cluster.nodes), leader.id if leader else None, self.rng
        )
        cluster.network.partition(links)
        self.heal_at = cluster.now + TICK_STEPS * self.rng.randint(20, 120)
        cluster.log(f"nemesis: partition {shape} ({len(links)} links cut)")

    def _nemesis_crash(self) -> None:
        cluster = self.cluster
        alive = [n for n in cluster.nodes.values() if n.alive]
        if not alive:
            return
        leader = cluster.leader()
        roll = self.rng.random()
        if roll < 0.4 and leader is not None:
            victims = [leader.id]
        elif roll < 0.55:
            count = len(cluster.nodes) // 2 + 1  # a majority, briefly
            victims = [n.id for n in self.rng.sample(alive, min(count, len(alive)))]
        else:
            victims = [self.rng.choice(alive).id]
        for victim in victims:
            cluster.crash(victim)

    def _nemesis_crash_new_leader(self) -> None:
        leader = self.cluster.leader()
        self.hunt_leader_after_term = leader.core.term if leader else 0
        # Leader churn: several new leaders in a row, each cut off early and brought back
        # soon, so stale log tails of different terms pile up on different nodes.
        self.hunts_remaining = self.rng.randint(2, 8)
        self._arm_hunt()

    def _arm_hunt(self) -> None:
        # Strike right after the election, or right after the leader's first commit in its
        # term, when followers hold partial logs; isolating also loses what is in flight
        # (such as the new leader's no-op on its way to the follower that just acked).
        self.hunt_on_first_commit = self.rng.random() < 0.5
        self.hunt_isolates = "partition" in self.options.faults and self.rng.random() < 0.5
        when = "first commit" if self.hunt_on_first_commit else "election"
        what = "isolate" if self.hunt_isolates else "crash"
        self.cluster.log(f"nemesis: will {what} the next new leader soon after its {when}")

    def _hunt_leader(self) -> None:
        cluster = self.cluster
        if self.hunted_crash_at is not None:
            at, node_id = self.hunted_crash_at
            if cluster.now >= at:
                self.hunted_crash_at = None
                if self.hunt_isolates:
                    cluster.network.partition(isolate(node_id, cluster.nodes))
                    self.heal_at = cluster.now + TICK_STEPS * self.rng.randint(5, 30)
                    cluster.log(f"nemesis: isolate n{node_id}")
                else:
                    cluster.crash(node_id)
                    self.restart_at[node_id] = cluster.now + TICK_STEPS * self.rng.randint(2, 30)
                if self.hunts_remaining > 0:
                    self.hunts_remaining -= 1
                    self.hunt_leader_after_term = max(n.core.term for n in cluster.nodes.values())
                    self._arm_hunt()
            return
        if self.hunt_leader_after_term is None:
            return
        leader = cluster.leader()
        if leader is None or leader.core.term <= self.hunt_leader_after_term:
            return
        if self.hunt_on_first_commit:
            key = (leader.core.term, leader.id)
            if self.hunt_commit_baseline is None or self.hunt_commit_baseline[0] != key:
                self.hunt_commit_baseline = (key, leader.core.log.commit_index)
                return
            if leader.core.log.commit_index <= self.hunt_commit_baseline[1]:
                return
        self.hunt_leader_after_term = None
        self.hunt_commit_baseline = None
        delay = self.rng.randint(0, 2 if self.hunt_on_first_commit else 2 * TICK_STEPS)
        self.hunted_crash_at = (cluster.now + delay, leader.id)

    def _nemesis_figure8(self) -> None:
        leader = self.cluster.leader()
        if leader is None:
            return
        self.heal_at = None  # the plan owns the network until it ends
        self.figure8 = _Figure8(first=leader.id, term=leader.core.term)
        self._figure8_phase(self.figure8, 1, f"cut off leader n{leader.id}", leader.id)

    def _figure8_phase(self, plan: _Figure8, phase: int, what: str, cut_off: int) -> None:
        """Enter `phase`: `cut_off` alone on one side, every other node together."""
        cluster = self.cluster
        plan.phase = phase
        plan.deadline = cluster.now + TICK_STEPS * FIGURE8_PHASE_TICKS_MAX
        cluster.network.partition(isolate(cut_off, cluster.nodes))
        cluster.log(f"nemesis: figure 8, phase {phase}: {what}")

    def _drive_figure8(self, plan: _Figure8) -> None:
        """The paper's Figure 8 schedule on whatever cluster this is: two leaders in a row
        each keep an uncommitted tail of their own term to themselves; then a leader of a
        newer term commits, and is cut off at that very step, so that the second leader,
        whose tail has the newest term but an older leader's index, may try to win
        (§5.4.2: it must not, once anything of an older term counted as committed)."""
        cluster = self.cluster
        if cluster.now >= plan.deadline:
            cluster.network.heal()
            cluster.log(f"nemesis: figure 8 ends in phase {plan.phase}")
            self.figure8 = None
            return
        leader = cluster.leader()
        if leader is None or leader.core.term <= plan.term:
            return
        if plan.phase == 1:
            # A new leader among the others: cut it off before its no-op leaves it, and
            # let the first leader back in with its tail.
            plan.second, plan.term = leader.id, leader.core.term
            self._figure8_phase(
                plan, 2, f"cut off new leader n{leader.id}, bring n{plan.first} back", leader.id
            )
        elif plan.phase == 2:
            if plan.committer is None or plan.committer[:2] != (leader.id, leader.core.term):
                plan.committer = (leader.id, leader.core.term, leader.core.log.commit_index)
            elif leader.core.log.commit_index > plan.committer[2]:
                plan.term = leader.core.term
                self._figure8_phase(
                    plan,
                    3,
                    f"cut off n{leader.id} at its first commit, bring n{plan.second} back",
                    leader.id,
                )
        elif plan.phase == 3:
            # The next leader is elected: whatever it overwrote, the checkers have seen.
            plan.deadline = min(plan.deadline, cluster.now + TICK_STEPS * 10)

    def _nemesis_restart(self) -> None:
        for node in self.cluster.nodes.values():
            if not node.alive:
                self.cluster.restart(node.id)

    def _nemesis_transfer(self) -> None:
        cluster = self.cluster
        leader = cluster.leader()
        if leader is None:
            return
        voters = sorted(leader.core.log.configuration().voters - {leader.id})
        if not voters:
            return
        target = self.rng.choice(voters)
        cluster.log(f"nemesis: transfer leadership n{leader.id} -> n{target}")
        cluster.transfer_leadership(leader, target)

    def _nemesis_membership(self) -> None:
        cluster = self.cluster
        all_nodes = set(cluster.nodes)
        rng = self.rng

        def change(current: Configuration) -> Configuration | None:
            outsiders = sorted(all_nodes - current.members)
            learners = sorted(current.learners)
            voters = sorted(current.voters)
            choices = []
            if outsiders:
                choices.append("add_learner")
            if learners:
                choices.append("promote")
                choices.append("remove_learner")
            if len(voters) > 3:
                choices.append("remove_voter")
            if not choices:
                return None
            choice = rng.choice(choices)
            if choice == "add_learner":
                return Configuration(current.voters, current.learners | {rng.choice(outsiders)})
            if choice == "promote":
                node = rng.choice(learners)
                return Configuration(current.voters | {node}, current.learners - {node})
            if choice == "remove_learner":
                return Configuration(current.voters, current.learners - {rng.choice(learners)})
            return Configuration(current.voters - {rng.choice(voters)}, current.learners)

        cluster.change_membership(change)

    # --- phases -------------------------------------------------------------------------

    def step(self) -> None:
        for node_id, at in list(self.restart_at.items()):
            if self.cluster.now >= at:
                del self.restart_at[node_id]
                self.cluster.restart(node_id)
        self._hunt_leader()
        self.cluster.step()
        self.watchers.step(self.cluster.now, self.cluster.watch_hubs())
        if self.cluster.now % TICK_STEPS == 0:
            leader = self.cluster.leader()
            if leader is not None:
                self.leaders_seen.add((leader.core.term, leader.id))

    def run(self) -> SimResult:
        cluster = self.cluster
        chaos_steps = self.options.chaos_ticks * TICK_STEPS
        log_matching_every = 50 * TICK_STEPS
        while cluster.now < chaos_steps:
            self.drive_nemesis()
            self.drive_clients()
            self.step()
            if cluster.now % log_matching_every == 0:
                cluster.checkers.check_log_matching(cluster.live_cores())
        self._liveness()
        cluster.checkers.check_log_matching(cluster.live_cores())
        self.watchers.drain(cluster.watch_hubs())
        self.watchers.check()
        self.lease_counts = cluster.lease_checker.check(
            (op.call, op.lease)
            for op in cluster.completed
            if op.lease is not None and op.status == "ok"
        )
        self._check_linearizable()
        return self._result()

    def _liveness(self) -> None:
        cluster = self.cluster
        cluster.log("liveness: heal everything, restart every node")
        self.hunt_leader_after_term = self.hunted_crash_at = None
        self.hunts_remaining = 0
        self.restart_at.clear()
        self.figure8 = None
        cluster.network.heal()
        cluster.network.faults = NetworkFaults()
        cluster.torn_write_probability = 0.0
        for node_id in cluster.nodes:
            cluster.restart(node_id)
        deadline = cluster.now + self.options.liveness_ticks_max * TICK_STEPS
        # Let the clients' last operations finish (they time out at worst).
        while any(
            c.op is not None and c.op.status == "pending" for c in self.clients + self.lease_clients
        ):
            if cluster.now >= deadline:
                raise Violation("liveness", "client operations still pending after healing")
            self.step()
        final_reads = {key: ClientOp(len(self.clients), "read", key) for key in KEYS}
        final_audit = BankTxn.audit()
        final_reads["audit"] = ClientOp(len(self.clients), "txn", "audit", txn=final_audit)
        pending = dict(final_reads)
        answered: dict[str, ClientOp] = {}
        while pending or not self._caught_up():
            if cluster.now >= deadline:
                leader = cluster.leader()
                raise Violation(
                    "liveness",
                    f"after {self.options.liveness_ticks_max} healed ticks: leader "
                    f"{leader.id if leader else None}, reads pending {sorted(pending)}, "
                    f"caught up {self._caught_up()}",
                )
            leader = cluster.leader()
            for key, op in list(pending.items()):
                if op.status == "ok":
                    answered[key] = op
                    del pending[key]
                elif (op.status != "pending" or op.call == 0) and leader is not None:
                    retry = ClientOp(op.process, op.kind, op.key, txn=op.txn)
                    pending[key] = retry
                    cluster.submit(retry, leader.id, timeout_steps=20 * TICK_STEPS)
            self.step()
        audit = answered["audit"].output
        assert isinstance(audit, ApplyResult)
        bank.check_audit(audit, "the final audit")
        self._check_states_agree()

    def _check_states_agree(self) -> None:
        """Nodes that applied the same prefix of the log hold the same state, byte for byte
        (a snapshot's encoding is canonical): a node whose state machine went wrong on its
        own, in a way no read happened to show, is caught here."""
        by_index: dict[int, tuple[int, bytes]] = {}
        for node in self.cluster.nodes.values():
            if not node.alive:
                continue
            machine = node.state_machine
            state = b"".join(machine.snapshot_chunks())
            first = by_index.setdefault(machine.applied_index, (node.id, state))
            if first[1] != state:
                raise Violation(
                    "state agreement",
                    f"n{node.id} and n{first[0]} applied the log through index "
                    f"{machine.applied_index} and hold different states",
                )

    def _caught_up(self) -> bool:
        leader = self.cluster.leader()
        if leader is None:
            return False
        commit = leader.core.log.commit_index
        return all(
            self.cluster.nodes[member].core.log.applied_index >= commit
            for member in leader.core.log.configuration().members
        )

    def _check_linearizable(self) -> None:
        operations: list[Operation] = []
        for op in self.cluster.completed:
            if op.lease is not None:
                continue  # lease keys are checked by the lease checker (`kvraft.sim.leases`)
            if op.txn is not None:
                operations += bank.project(
                    op.process, op.txn, op.call, op.ret, op.status, op.output
                )
                continue
            operations.append(
                Operation(
                    process=op.process,
                    kind=op.kind,
                    key=op.key,
                    call=op.call,
                    ret=op.ret,
                    status=op.status,
                    value=op.value,
                    expected=op.expected,
                    output=op.output,
                )
            )
        result = check_history(operations, time_budget_s=20.0)
        if result.verdict != "yes":
            raise Violation("linearizability", result.describe())

    def _result(self) -> SimResult:
        counts: dict[str, int] = {}
        for op in self.cluster.completed:
            counts[op.status] = counts.get(op.status, 0) + 1
        return SimResult(
            seed=self.seed,
            steps=self.cluster.now,
            ticks=self.cluster.now // TICK_STEPS,
            operations=counts,
            elections=len(self.leaders_seen),
            messages=self.network.sent,
            leases=dict(self.lease_counts),
            apply_path=self.cluster.apply_path,
            applies=dict(self.cluster.apply_counts),
        )


def run_seed(
    seed: int, options: SimOptions, trace: Callable[[str], None] | None = None
) -> SimResult:
    """Run one seeded simulation; a finding is returned, never raised."""
    run = _Run(seed, options, trace)
    try:
        return run.run()
    except Violation as violation:
        result = run._result()
        result.violation = str(violation)
        result.property_name = violation.property_name
        return result
    except Exception as error:  # a crash of the core is a finding too
        result = run._result()
        result.violation = f"exception: {type(error).__name__}: {error}"
        result.property_name = "exception"
        return result
