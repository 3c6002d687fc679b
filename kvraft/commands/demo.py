"""`kvraft demo`: a guided failover tour on a local 3-node cluster, narrated, then cleaned up.

What it does, in order:

1. Writes a config for three nodes in a temporary directory (or `--data-dir`, which must not
   hold a cluster yet) on free ports, starts the nodes (`kvraft.launcher`) and prints the
   dashboard URL (`/ui` of node 1; the page follows every member).
2. Runs a light write load through the client library (`--writes-per-s` writes of
   ``demo/NNNNNN``, each with an idempotency key so a retry across a failover is safe) and
   remembers every write that was acknowledged.
3. Every `--step-seconds` does one step of a fixed cycle: kill the leader (SIGKILL), restart
   it, transfer leadership, and -- as root with iptables -- isolate the leader, then heal.
   Each step is narrated: what was done, who leads afterwards, and how long the members saw
   no leader (the largest `no_leader_ms` of the new term's `leader_elected` events, read
   from `GET /v1/events`). Meanwhile the status narration of `cluster up`
   (`kvraft.commands.cluster.observe`) prints what the cluster does, as it happens.
4. After `--steps` steps (default: as many as fit in `--duration`), restarts any node still
   down, heals any cut, stops the load and reads every acknowledged write back
   (linearizable list of ``demo/``). Exit 0 if all of them are there with their values;
   exit 1 with a message otherwise.

Every node, the iptables chain and the temporary directory are removed on the way out,
also on Ctrl-C (exit 130), SIGTERM and failure. Only processes this command started are
signalled, through their `Popen`.

Isolation needs each node on its own loopback address, so that a DROP rule on an address
pair cuts exactly the links of one node (see `kvraft.chaos.netfilter`): with iptables the
nodes listen on ``127.B.C.1..3`` (`kvraft.chaos.cluster.loopback_block`), otherwise on
127.0.0.1, which every system has. The chain is named like a chaos run's
(`netfilter.chain_name` of this pid), so a demo killed with SIGKILL leaves a chain that the
next demo or chaos run recognises as stale and removes.

The dashboard's timeline needs nothing from the demo: each step shows up there through
events the page already explains (the leader going down, a node coming back, a leadership
transfer, peers losing each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import click

from kvraft import launcher
from kvraft.chaos.cluster import loopback_block, node_host
from kvraft.chaos.netfilter import Firewall, FirewallError, chain_name, find_iptables
from kvraft.client import AsyncKVClient, KVError, OutcomeUnknown, normalize_endpoint
from kvraft.commands.cluster import (
    CONFIG_FILE_NAME,
    ClusterSnapshot,
    WatchState,
    observation_from_status,
    observe,
)
from kvraft.config import (
    PEER_SECRET_FILE_NAME,
    ClusterConfig,
    local_cluster_config,
    new_peer_secret,
    parse_config,
    render_config,
    write_peer_secret,
)
from kvraft.event_stream import merged_events
from kvraft.exit_codes import EXIT_INTERRUPTED

__all__ = [
    "DEMO_KEY_PREFIX",
    "STEP_HEAL",
    "STEP_ISOLATE",
    "STEP_KILL",
    "STEP_RESTART",
    "STEP_TRANSFER",
    "demo",
    "step_plan",
]

DEMO_NODES = 3
DEMO_KEY_PREFIX = "demo/"
DURATION_S_DEFAULT = 60.0
STEP_SECONDS_DEFAULT = 5.0
WRITES_PER_S_DEFAULT = 5.0

READY_TIMEOUT_S = 30.0
"""How long the nodes may take to start and elect a first leader (Python start-up on a slow
machine is seconds)."""

SETTLE_TIMEOUT_S = 15.0
"""How long a step waits for the cluster to do what the step provokes (a new leader, a node
back as a follower): elections take about a second; more means something is wrong, and the
demo says so and goes on."""

POLL_INTERVAL_S = 0.1
"""How often the status is polled, for the narration and for a step's wait."""

STATUS_TIMEOUT_S = 0.5
"""One status request: an isolated or dead node must not hold a poll up for long."""

WRITE_TIMEOUT_S = 5.0
"""How long one write of the load keeps trying across endpoints: longer than a failover, so
most writes issued during one are acknowledged after it."""

STOP_TIMEOUT_S = 10.0
"""SIGTERM, then SIGKILL after this: a node hands leadership over and flushes on the way out."""

STEP_KILL = "kill-leader"
STEP_RESTART = "restart"
STEP_TRANSFER = "transfer"
STEP_ISOLATE = "isolate"
STEP_HEAL = "heal"

T = TypeVar("T")


class DemoFailure(Exception):
    """The demo itself could not go on (the cluster did not start, a port was taken)."""


def step_plan(count: int, isolation: bool) -> list[str]:
    """The first `count` steps of the cycle: kill the leader, restart it, transfer
    leadership, and with `isolation` also isolate the leader and heal."""
    cycle = [STEP_KILL, STEP_RESTART, STEP_TRANSFER]
    if isolation:
        cycle += [STEP_ISOLATE, STEP_HEAL]
    return [cycle[index % len(cycle)] for index in range(count)]


def demo_config(data_dir: pathlib.Path, hosts: Mapping[int, str]) -> ClusterConfig:
    """Three voters with default settings, node i on `hosts[i]` with free ports."""
    base = local_cluster_config(DEMO_NODES, data_dir, cluster_id="kvraft-demo")
    specs = []
    for spec in base.nodes:
        host = hosts[spec.id]
        raft_port, http_port = launcher.free_ports(2, host)
        specs.append(
            dataclasses.replace(
                spec, raft_host=host, raft_port=raft_port, http_host=host, http_port=http_port
            )
        )
    # Through the file's own validation, like every other config.
    return parse_config(render_config(dataclasses.replace(base, nodes=tuple(specs))), data_dir)


def _integer(value: object) -> int:
    """A non-negative integer field of an (untrusted) status answer, else 0."""
    return value if type(value) is int and value >= 0 else 0


def stable_leader(statuses: Mapping[int, Mapping[str, Any] | None]) -> tuple[int, int] | None:
    """(leader id, term) when a node leads and a majority of the members (itself included)
    say so in that term; None otherwise (an election on, or a deposed leader in a minority)."""
    for node_id, status in statuses.items():
        if status is None or status.get("role") != "leader":
            continue
        term = _integer(status.get("term"))
        agreeing = sum(
            1
            for other in statuses.values()
            if other is not None
            and _integer(other.get("term")) == term
            and _integer(other.get("leader_id")) == node_id
        )
        if agreeing * 2 > len(statuses):
            return node_id, term
    return None


class Demo:
    """One run: the processes, the firewall, the load's acknowledged writes and the narration."""

    def __init__(
        self,
        config: ClusterConfig,
        config_path: pathlib.Path,
        processes: dict[int, subprocess.Popen[bytes]],
        firewall: Firewall | None,
        echo: Callable[[str], None],
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.processes = processes
        self.firewall = firewall
        self.echo = echo
        self.started_s = time.monotonic()
        self.endpoint_of = {spec.id: normalize_endpoint(spec.http_url) for spec in config.nodes}
        self.host_of = {spec.id: spec.http_host for spec in config.nodes}
        self.acknowledged: dict[str, bytes] = {}
        self.writes_failed = 0
        self.writes_unknown = 0
        self.killed: list[int] = []
        self.isolated: int | None = None
        self.status_client = AsyncKVClient(
            list(self.endpoint_of.values()),
            timeout_s=STATUS_TIMEOUT_S,
            attempt_timeout_s=STATUS_TIMEOUT_S,
            connect_timeout_s=STATUS_TIMEOUT_S,
        )
        # Keyed writes are retried across a failover without the risk of applying one twice.
        self.client = AsyncKVClient(
            list(self.endpoint_of.values()),
            timeout_s=WRITE_TIMEOUT_S,
            auto_idempotency_keys=True,
        )

    def say(self, text: str) -> None:
        self.echo(f"[{time.monotonic() - self.started_s:6.1f}s] {text}")

    def log_path(self, node_id: int) -> pathlib.Path:
        return self.config_path.parent / f"node{node_id}.log"

    def start_node(self, node_id: int) -> subprocess.Popen[bytes]:
        process = launcher.start(
            launcher.serve_command(node_id, self.config_path),
            self.log_path(node_id),
            header=f"--- kvraft demo: starting node {node_id} ---",
        )
        self.processes[node_id] = process
        return process

    async def statuses(self) -> dict[int, dict[str, Any] | None]:
        results = await self.status_client.status_all()
        return {
            node_id: answer if isinstance(answer := results.get(endpoint), dict) else None
            for node_id, endpoint in self.endpoint_of.items()
        }

    async def wait_for(
        self, condition: Callable[[dict[int, dict[str, Any] | None]], T | None], timeout_s: float
    ) -> T | None:
        """Poll the status until `condition` returns something, or None at the deadline."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            found = condition(await self.statuses())
            if found is not None:
                return found
            if time.monotonic() >= deadline_s:
                return None
            await asyncio.sleep(POLL_INTERVAL_S)  # polling interval

    async def wait_leader(
        self, *, not_node: int | None = None, node: int | None = None
    ) -> tuple[int, int] | None:
        def condition(statuses: dict[int, dict[str, Any] | None]) -> tuple[int, int] | None:
            leader = stable_leader(statuses)
            if leader is None or leader[0] == not_node or (node is not None and leader[0] != node):
                return None
            return leader

        return await self.wait_for(condition, SETTLE_TIMEOUT_S)

    async def no_leader_ms(self, term: int) -> float | None:
        """How long the members saw no leader before the leader of `term`: the largest
        `no_leader_ms` of that term's `leader_elected` events (one per member that saw it)."""
        reported = [
            float(event["fields"]["no_leader_ms"])
            async for event in merged_events(
                list(self.endpoint_of.values()), follow=False, timeout_s=1.0
            )
            if event.get("type") == "leader_elected"
            and event.get("term") == term
            and isinstance(event.get("fields"), dict)
            and isinstance(event["fields"].get("no_leader_ms"), int | float)
        ]
        return max(reported) if reported else None

    async def report_leader(self, leader: tuple[int, int] | None, previous: int | None) -> None:
        if leader is None:
            self.say(f"  no stable leader within {SETTLE_TIMEOUT_S:g} s: going on all the same")
            return
        node_id, term = leader
        unavailable_ms = await self.no_leader_ms(term)
        unavailable = (
            f"the members saw no leader for {unavailable_ms:.0f} ms"
            if unavailable_ms is not None
            else "no member reported how long it had no leader"
        )
        change = "" if previous is None else f" (was node {previous})"
        self.say(f"  now node {node_id} leads{change}, term {term}; {unavailable}")

    async def current_leader(self) -> tuple[int, int] | None:
        leader = await self.wait_leader()
        if leader is None:
            self.say(f"  no stable leader within {SETTLE_TIMEOUT_S:g} s: step skipped")
        return leader

    # --- the steps ---------------------------------------------------------------------------

    async def kill_leader(self) -> None:
        leader = await self.current_leader()
        if leader is None:
            return
        node_id = leader[0]
        process = self.processes[node_id]
        self.say(f"killing the leader, node {node_id} (pid {process.pid}), with SIGKILL")
        await asyncio.to_thread(launcher.kill, process)
        self.killed.append(node_id)
        await self.report_leader(await self.wait_leader(not_node=node_id), node_id)

    async def restart(self) -> None:
        if not self.killed:
            self.say("no node is down: nothing to restart")
            return
        node_id = self.killed.pop(0)
        process = self.start_node(node_id)
        self.say(f"restarting node {node_id} (pid {process.pid})")
        await self.wait_back(node_id)

    async def wait_back(self, node_id: int) -> None:
        """Wait until `node_id` follows the current leader, and say how far it has caught up."""

        def condition(statuses: dict[int, dict[str, Any] | None]) -> dict[str, Any] | None:
            leader = stable_leader(statuses)
            status = statuses.get(node_id)
            if leader is None or status is None or status.get("role") != "follower":
                return None
            return status if _integer(status.get("leader_id")) == leader[0] else None

        status = await self.wait_for(condition, SETTLE_TIMEOUT_S)
        if status is None:
            self.say(f"  node {node_id} is not following a leader within {SETTLE_TIMEOUT_S:g} s")
            return
        self.say(
            f"  node {node_id} is back as a follower of node {status.get('leader_id')} "
            f"(term {status.get('term')}, applied index {status.get('applied_index')})"
        )

    async def transfer(self) -> None:
        leader = await self.current_leader()
        if leader is None:
            return
        node_id = leader[0]
        up = [other for other in sorted(self.processes) if other not in self.killed]
        # The next node after the leader, in id order: every node gets its turn.
        later = [other for other in up if other > node_id] or [o for o in up if o != node_id]
        if not later:
            self.say("no other node is up: no transfer")
            return
        target = later[0]
        self.say(f"asking node {node_id} to hand leadership to node {target}")
        try:
            await self.client.transfer_leadership(target)
        except KVError as error:
            self.say(f"  the transfer was refused: {error}")
            return
        await self.report_leader(await self.wait_leader(node=target), node_id)

    async def isolate(self) -> None:
        assert self.firewall is not None
        leader = await self.current_leader()
        if leader is None:
            return
        node_id = leader[0]
        host = self.host_of[node_id]
        others = [self.host_of[other] for other in self.host_of if other != node_id]
        self.say(
            f"isolating the leader, node {node_id} ({host}): iptables drops its packets "
            "to and from the other nodes"
        )
        links = [(host, other) for other in others] + [(other, host) for other in others]
        await asyncio.to_thread(self.firewall.cut, links)
        self.isolated = node_id
        await self.report_leader(await self.wait_leader(not_node=node_id), node_id)
        status = (await self.statuses()).get(node_id)
        if status is not None:
            self.say(
                f"  node {node_id}, cut off, says: {status.get('role')} in term "
                f"{status.get('term')}"
            )

    async def heal(self) -> None:
        if self.firewall is None or self.isolated is None:
            self.say("no node is isolated: nothing to heal")
            return
        node_id, self.isolated = self.isolated, None
        self.say(f"healing the network: node {node_id} can reach the others again")
        await asyncio.to_thread(self.firewall.heal)
        await self.wait_back(node_id)

    # --- the load, the narration and the check -------------------------------------------------

    async def write_load(self, writes_per_s: float) -> None:
        interval_s = 1.0 / writes_per_s
        next_s = time.monotonic()
        for index in range(1_000_000_000):
            key = f"{DEMO_KEY_PREFIX}{index:06d}"
            value = f"write {index} of the demo".encode()
            try:
                await self.client.put(key, value)
            except OutcomeUnknown:
                self.writes_unknown += 1  # maybe applied, never acknowledged: not checked
            except KVError:
                self.writes_failed += 1
            else:
                self.acknowledged[key] = value
            next_s = max(next_s + interval_s, time.monotonic() - interval_s)
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))  # the load's pace

    async def narrate(self) -> None:
        """`cluster up`'s narration of the status, indented under the steps."""
        state = WatchState.initial()
        while True:
            statuses = await self.statuses()
            snapshot = ClusterSnapshot(
                at_ms=time.monotonic() * 1000,
                nodes={node_id: observation_from_status(s) for node_id, s in statuses.items()},
                exit_codes={
                    node_id: code
                    for node_id, process in self.processes.items()
                    if (code := process.poll()) is not None
                },
            )
            state, events = observe(state, snapshot)
            for event in events:
                self.say(f"    | {event.text}")
            await asyncio.sleep(POLL_INTERVAL_S)  # polling interval

    async def settle(self) -> None:
        """Bring every node back before the check: the check is about lost writes, not
        about a node that the script happened to leave down."""
        while self.killed:
            await self.restart()
        if self.isolated is not None:
            await self.heal()

    async def missing_writes(self) -> list[str]:
        """The acknowledged writes that a linearizable read of the prefix does not show."""
        stored: dict[str, bytes] = {}
        start_after: str | None = None
        while True:
            items, start_after = await self.client.list(DEMO_KEY_PREFIX, start_after=start_after)
            stored.update((item.key, item.value) for item in items)
            if start_after is None:
                break
        return [key for key, value in self.acknowledged.items() if stored.get(key) != value]

    async def close(self) -> None:
        await self.status_client.close()
        await self.client.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run(
    demo: Demo, steps: list[str], step_seconds: float, writes_per_s: float, dashboard: str
) -> list[str]:
    """Run the script; the acknowledged writes that are missing at the end."""
    actions: dict[str, Callable[[], Awaitable[None]]] = {
        STEP_KILL: demo.kill_leader,
        STEP_RESTART: demo.restart,
        STEP_TRANSFER: demo.transfer,
        STEP_ISOLATE: demo.isolate,
        STEP_HEAL: demo.heal,
    }
    narration = asyncio.create_task(demo.narrate())
    load: asyncio.Task[None] | None = None
    try:
        leader = await demo.wait_for(stable_leader, READY_TIMEOUT_S)
        if leader is None:
            raise DemoFailure(f"no leader within {READY_TIMEOUT_S:g} s of starting the nodes")
        demo.say(f"the cluster is up: node {leader[0]} leads (term {leader[1]})")
        demo.say(f"dashboard: {dashboard}")
        demo.say(f"writing {writes_per_s:g} keys a second under {DEMO_KEY_PREFIX}")
        load = asyncio.create_task(demo.write_load(writes_per_s))
        for number, step in enumerate(steps, start=1):
            await asyncio.sleep(step_seconds)  # the demo's pace: time to watch the page
            demo.say(f"step {number}/{len(steps)}: {step}")
            await actions[step]()
        await asyncio.sleep(step_seconds)
        demo.say("the script is done: bringing every node back")
        await demo.settle()
        await _cancel(load)
        demo.say(
            f"the load stopped: {len(demo.acknowledged)} writes acknowledged, "
            f"{demo.writes_failed} refused and {demo.writes_unknown} with an unknown outcome "
            "(neither kind is expected to be readable)"
        )
        if not demo.acknowledged:
            raise DemoFailure("no write was acknowledged")
        return await demo.missing_writes()
    finally:
        await _cancel(narration)
        if load is not None:
            await _cancel(load)
        await demo.close()


def _interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def _setup_firewall(echo: Callable[[str], None]) -> Firewall | None:
    executable, why_not = find_iptables()
    if executable is None:
        echo(f"note: the isolate step is skipped: {why_not}")
        return None
    firewall = Firewall(executable, chain_name(os.getpid()))
    try:
        firewall.remove_stale_chains()
        firewall.install()
    except FirewallError as error:
        echo(f"note: the isolate step is skipped: {error}")
        with contextlib.suppress(FirewallError):
            firewall.remove()
        return None
    return firewall


@click.command()
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=DURATION_S_DEFAULT,
    show_default=True,
    help="Seconds of steps (their number is this over --step-seconds).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Number of steps (overrides --duration).",
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(min=0),
    default=STEP_SECONDS_DEFAULT,
    show_default=True,
    help="Pause before each step: time to watch the dashboard.",
)
@click.option(
    "--writes-per-s",
    type=click.FloatRange(min=0, min_open=True, max=1000),
    default=WRITES_PER_S_DEFAULT,
    show_default=True,
    help="The write load.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Run the cluster here and keep it (default: a temporary directory, removed).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    duration_s: float,
    steps: int | None,
    step_seconds: float,
    writes_per_s: float,
    data_dir: pathlib.Path | None,
) -> None:
    """A guided failover: start 3 nodes, write to them, kill / restart / transfer / isolate
    the leader step by step, narrate it, check that no acknowledged write was lost, and
    clean everything up."""
    if data_dir is not None and (data_dir / CONFIG_FILE_NAME).exists():
        raise click.UsageError(f"{data_dir} already holds a cluster: give an empty directory")
    # Until asyncio runs, SIGTERM must unwind through the `finally` below like Ctrl-C, or
    # the nodes would be orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    temporary = data_dir is None
    directory = (
        pathlib.Path(tempfile.mkdtemp(prefix="kvraft-demo-")) if data_dir is None else data_dir
    )
    processes: dict[int, subprocess.Popen[bytes]] = {}
    firewall: Firewall | None = None
    failure: str | None = None
    interrupted = False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        firewall = _setup_firewall(click.echo)
        block = loopback_block(os.getpid())
        hosts = {
            node_id: node_host(block, node_id) if firewall is not None else launcher.LOOPBACK
            for node_id in range(1, DEMO_NODES + 1)
        }
        config = demo_config(directory, hosts)
        # The demo's peers authenticate too, as every cluster's do by default (issue #20).
        secret_path = (directory / PEER_SECRET_FILE_NAME).resolve()
        write_peer_secret(secret_path, new_peer_secret())
        config = dataclasses.replace(config, peer_secret_file=secret_path)
        config_path = directory.resolve() / CONFIG_FILE_NAME
        config_path.write_text(render_config(config), encoding="utf-8")
        run = Demo(config, config_path, processes, firewall, click.echo)
        for spec in config.nodes:
            process = run.start_node(spec.id)
            click.echo(
                f"node {spec.id}: pid {process.pid}, {spec.http_url}, log {run.log_path(spec.id)}"
            )
        click.echo(f"data: {directory}{' (removed at the end)' if temporary else ''}")
        plan = step_plan(
            steps or max(1, int(duration_s // max(step_seconds, 1.0))), firewall is not None
        )
        click.echo(f"script: {', '.join(plan)} ({len(plan)} steps, one every {step_seconds:g} s)")
        dashboard = f"{config.nodes[0].http_url}/ui"
        missing = asyncio.run(_run(run, plan, step_seconds, writes_per_s, dashboard))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            failure = (
                f"{len(missing)} of {len(run.acknowledged)} acknowledged writes are not "
                f"readable: {shown}"
            )
        else:
            click.echo(f"check: all {len(run.acknowledged)} acknowledged writes are readable")
    except KeyboardInterrupt:
        interrupted = True
        click.echo("interrupted: cleaning up")
    except (DemoFailure, KVError, OSError, FirewallError) as error:
        failure = str(error)
    finally:
        stopped = launcher.stop(dict(sorted(processes.items())), timeout_s=STOP_TIMEOUT_S)
        click.echo(
            "stopped " + ", ".join(f"node {node_id}" for node_id in stopped)
            if stopped
            else "no node to stop"
        )
        if firewall is not None:
            try:
                firewall.remove()
                click.echo(f"removed iptables chain {firewall.chain}")
            except FirewallError as error:
                failure = failure or str(error)
                click.echo(f"could not remove iptables chain {firewall.chain}: {error}", err=True)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
            click.echo(f"removed {directory}")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        ctx.exit(EXIT_INTERRUPTED)
    if failure is not None:
        raise click.ClickException(failure)
