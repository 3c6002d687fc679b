"""Network partitions on loopback: iptables rules that drop packets between node addresses.

Theory of operation
-------------------
Each chaos node owns one loopback address (127.B.C.i) for both its Raft and its
HTTP port, and binds its outbound peer connections to it, so a packet's source
and destination addresses name the two nodes of a link. One DROP rule for
``-s sender -d receiver`` therefore cuts exactly one direction of one link.

All rules live in a chain of the run's own, ``KVRAFT-CHAOS-<pid>``, entered from
INPUT only for packets from 127.0.0.0/8 to 127.0.0.0/8: nothing outside loopback
is ever touched, healing is one flush of the chain, and removing the chain
removes every trace. Only INPUT is hooked: every loopback packet passes INPUT
on its way in, and a drop there looks to the sender like a lost packet (as in
a real partition), whereas a drop in OUTPUT can surface as an immediate error
in the sending process.

A run that dies without cleaning up (SIGKILL) leaves its chain behind; the
next run removes chains whose owning pid no longer exists (`stale_chain_commands`).

The rule texts and the listing parser are pure; `Firewall` runs the commands.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CHAIN_NAME_CHARS_MAX",
    "CHAIN_PREFIX",
    "HOOK_DELETES_MAX",
    "IPTABLES_CANDIDATES",
    "IPTABLES_LOCK_WAIT_S",
    "IPTABLES_TIMEOUT_S",
    "LOOPBACK_NETWORK",
    "Firewall",
    "FirewallError",
    "IptablesRunner",
    "chain_name",
    "check_loopback",
    "drop_rule_args",
    "find_iptables",
    "hook_args",
    "pid_alive",
    "stale_chain_commands",
]

CHAIN_PREFIX = "KVRAFT-CHAOS-"
"""Every chain the chaos harness creates is named this plus the owning process id."""

CHAIN_NAME_CHARS_MAX = 28
"""The longest chain name iptables accepts (xtables keeps 29 bytes with the NUL)."""

IPTABLES_CANDIDATES = ("iptables", "iptables-legacy")
"""Tried in order; the first whose ``-S`` works is used (Debian's default is the nft
backend; some kernels only have the legacy tables)."""

IPTABLES_LOCK_WAIT_S = 5
"""``-w``: how long one command waits for the xtables lock held by another process."""

IPTABLES_TIMEOUT_S = 15.0
"""How long one iptables command may run before it is treated as failed."""

LOOPBACK_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
"""Rules are only ever written for addresses in here."""

HOOK_DELETES_MAX = 8
"""`Firewall.remove` deletes the INPUT hook until none is left, at most this many times
(`install` adds one; the bound only guards against a loop on a misbehaving iptables)."""


class FirewallError(RuntimeError):
    """iptables is missing, not permitted, or refused a command; the message says which."""


IptablesRunner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
"""Runs one iptables command line (executable first) and returns its result."""


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=IPTABLES_TIMEOUT_S,
            check=False,
            # Its own session: a Ctrl-C in the terminal must not kill a cleanup command.
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FirewallError(f"{shlex.join(command)}: {error}") from None


def chain_name(pid: int) -> str:
    """The chain of the run with this process id; FirewallError if it would be too long."""
    name = f"{CHAIN_PREFIX}{pid}"
    if pid < 0 or len(name) > CHAIN_NAME_CHARS_MAX:
        raise FirewallError(f"no valid chain name for pid {pid} ({name!r})")
    return name


def check_loopback(host: str) -> str:
    """The canonical form of `host` if it is an IPv4 loopback address, else FirewallError."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise FirewallError(f"{host!r} is not an IPv4 address") from None
    if address not in LOOPBACK_NETWORK:
        raise FirewallError(f"{host} is outside {LOOPBACK_NETWORK}: refusing to write a rule")
    return str(address)


def hook_args(chain: str) -> list[str]:
    """The INPUT rule that sends loopback packets through `chain` (without -I/-D)."""
    network = str(LOOPBACK_NETWORK)
    return ["INPUT", "-s", network, "-d", network, "-j", chain]


def drop_rule_args(chain: str, source: str, destination: str) -> list[str]:
    """The rule that drops packets from `source` to `destination` (both loopback)."""
    return [
        "-A",
        chain,
        "-s",
        f"{check_loopback(source)}/32",
        "-d",
        f"{check_loopback(destination)}/32",
        "-j",
        "DROP",
    ]


def _chain_pid(name: str) -> int | None:
    suffix = name.removeprefix(CHAIN_PREFIX)
    if suffix == name or not suffix.isdigit() or not suffix.isascii():
        return None
    return int(suffix)


def stale_chain_commands(listing: str, alive: Callable[[int], bool]) -> list[list[str]]:
    """Commands (without the executable) that remove every chaos chain in an ``iptables -S``
    `listing` whose owner pid is not `alive`: its jump rules first, then the chain."""
    stale: set[str] = set()
    for line in listing.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "-N":
            pid = _chain_pid(words[1])
            if pid is not None and not alive(pid):
                stale.add(words[1])
    commands: list[list[str]] = []
    for line in listing.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue  # not a rule we wrote
        if (
            len(words) >= 3
            and words[0] == "-A"
            and words[1] not in stale
            and words[-2:-1] == ["-j"]
            and words[-1] in stale
        ):
            commands.append(["-D", *words[1:]])
    for chain in sorted(stale):
        commands += [["-F", chain], ["-X", chain]]
    return commands


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_iptables(run: IptablesRunner = _run) -> tuple[str | None, str]:
    """(the iptables executable to use, "") or (None, why partitions are impossible)."""
    if os.geteuid() != 0:
        return None, f"not running as root (uid {os.geteuid()}); iptables needs root"
    reasons: list[str] = []
    for candidate in IPTABLES_CANDIDATES:
        path = shutil.which(candidate)
        if path is None:
            continue
        try:
            result = run([path, "-w", str(IPTABLES_LOCK_WAIT_S), "-S"])
        except FirewallError as error:
            reasons.append(str(error))
            continue
        if result.returncode == 0:
            return path, ""
        reasons.append(f"{candidate} -S failed: {result.stderr.strip() or result.returncode}")
    if not reasons:
        return None, "iptables is not installed (Debian: apt-get install iptables)"
    return None, "; ".join(reasons)


class Firewall:
    """The run's own iptables chain: install it, cut links, heal, remove it."""

    def __init__(self, executable: str, chain: str, run: IptablesRunner = _run) -> None:
        self.executable = executable
        self.chain = chain
        self._run = run

    def _command(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self._run([self.executable, "-w", str(IPTABLES_LOCK_WAIT_S), *args])

    def _must(self, args: Sequence[str]) -> None:
        result = self._command(args)
        if result.returncode != 0:
            raise FirewallError(
                f"iptables {shlex.join(args)} failed: {result.stderr.strip() or result.returncode}"
            )

    def listing(self) -> str:
        """``iptables -S`` of the whole filter table."""
        result = self._command(["-S"])
        if result.returncode != 0:
            raise FirewallError(f"iptables -S failed: {result.stderr.strip()}")
        return result.stdout

    def remove_stale_chains(self, alive: Callable[[int], bool] = pid_alive) -> list[str]:
        """Remove chaos chains left by runs that died; returns their names."""
        commands = stale_chain_commands(self.listing(), alive)
        for command in commands:
            self._command(command)  # best effort: another run may be cleaning up too
        return [command[1] for command in commands if command[0] == "-X"]

    def install(self) -> None:
        """Create the chain (empty) and hook it into INPUT."""
        self._must(["-N", self.chain])
        try:
            self._must(["-I", *hook_args(self.chain)])
        except FirewallError:
            self._command(["-X", self.chain])
            raise

    def cut(self, links: Iterable[tuple[str, str]]) -> None:
        """Drop packets for each (source host, destination host)."""
        for source, destination in links:
            self._must(drop_rule_args(self.chain, source, destination))

    def heal(self) -> None:
        """Remove every cut (flush the chain; the hook stays)."""
        self._must(["-F", self.chain])

    def rules(self) -> list[str]:
        """The chain's rules as ``iptables -S`` prints them (without the ``-N`` line)."""
        result = self._command(["-S", self.chain])
        if result.returncode != 0:
            return []
        return [line for line in result.stdout.splitlines() if not line.startswith("-N ")]

    def exists(self) -> bool:
        """Whether the chain is still there."""
        return self._command(["-S", self.chain]).returncode == 0

    def remove(self) -> None:
        """Unhook, flush and delete the chain; FirewallError if it is still there after."""
        # -D removes one matching rule per call; a hook inserted twice needs two.
        for _ in range(HOOK_DELETES_MAX):
            if self._command(["-D", *hook_args(self.chain)]).returncode != 0:
                break
        self._command(["-F", self.chain])
        self._command(["-X", self.chain])
        if self.exists():
            raise FirewallError(f"could not remove iptables chain {self.chain}")
