"""The ``burst`` nemesis: a sudden flood of large writes at one node, and its check.

A burst fault sends waves of `BURST_WRITES` concurrent PUTs of `BURST_VALUE_BYTES` each to
one node (the leader, or a follower that forwards them) while the fault is held, at most
`BURST_WAVES_MAX` waves. The keys are ``burst/0`` .. ``burst/199`` in every wave, so the
data a run leaves on each node stays bounded, and each value names its key and wave
(`burst_value`), so the final value of a key says which write won.

What a user may rely on, and what `check_bursts` checks (the register and set workload
running meanwhile is checked as always; its operations are the ones that must stay
linearizable, the burst is load):

* every answer is 200, 503 (shed: nothing applied) or 504 (outcome unknown); a connection
  that fails is counted, not judged (a node may refuse connections beyond its limit);
* no node exits (the runner's exit monitor already fails the run on that);
* after healing, each burst key holds the value of its last acknowledged write, or of a
  write whose outcome was unknown (it may have been applied later, Figure 2's log keeps
  no order promise for an unanswered request); never the value of a write answered 503,
  and never a value nobody wrote.

The waves are logged in the nemesis log (``{"type": "burst", ...}``) with every key's
outcome; the check reads them back from there. Keys under `BURST_KEY_PREFIX` are not part
of the workload's history: the watch check skips them (`kvraft.chaos.watch_check`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "BURST_KEY_PREFIX",
    "BURST_TIMEOUT_S",
    "BURST_VALUE_BYTES",
    "BURST_WAVES_MAX",
    "BURST_WRITES",
    "BurstWave",
    "burst_digest",
    "burst_keys",
    "burst_value",
    "check_bursts",
    "read_back",
    "run_burst",
    "waves_from_events",
]

BURST_KEY_PREFIX = "burst/"
BURST_WRITES = 200
"""Concurrent PUTs in one wave: the flood that once stopped both followers of a 3-node
cluster (each write legal, together more than one WAL frame)."""

BURST_VALUE_BYTES = 1024 * 1024
"""Each value: the default ``limits.value_bytes_max``."""

BURST_WAVES_MAX = 3
"""Waves per fault at most: each leaves up to 200 MiB of values on every node."""

BURST_TIMEOUT_S = 30.0
"""A PUT of the burst unanswered after this long counts as a failed connection."""

SHED_OR_DONE = frozenset({200, 503, 504})
"""The answers a burst write may get."""

_ERROR = "error"


@dataclass(frozen=True, slots=True)
class BurstWave:
    """One wave: its number (unique in the run), the node it hit, and each key's outcome:
    the HTTP status as text, or ``error`` when no answer came."""

    wave: int
    node: int
    outcomes: Mapping[str, str]

    def statuses(self) -> Counter[str]:
        return Counter(self.outcomes.values())


def burst_keys() -> list[str]:
    return [f"{BURST_KEY_PREFIX}{index}" for index in range(BURST_WRITES)]


def burst_value(key: str, wave: int) -> bytes:
    """The value wave `wave` writes to `key`: its name, then padding to the full size."""
    head = f"{key}@{wave}:".encode()
    return head + b"." * (BURST_VALUE_BYTES - len(head))


def burst_digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


async def _wave(url: str, wave: int) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=BURST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def put(key: str) -> None:
            try:
                async with session.put(f"{url}/v1/kv/{key}", data=burst_value(key, wave)) as answer:
                    await answer.read()
                    outcomes[key] = str(answer.status)
            except (aiohttp.ClientError, TimeoutError, OSError):
                outcomes[key] = _ERROR

        await asyncio.gather(*(put(key) for key in burst_keys()))
    return outcomes


def run_burst(
    url: str, node: int, duration_s: float, first_wave: int, *, broken: bool = False
) -> list[BurstWave]:
    """Send waves at `url` (node `node`) for `duration_s`, at most `BURST_WAVES_MAX`, each
    once the previous one is fully answered; numbered from `first_wave`. `broken` (tests
    only) reports the first acknowledged write of each wave as shed, a lie the check must
    catch."""
    deadline_s = time.monotonic() + duration_s
    waves = []
    for number in range(first_wave, first_wave + BURST_WAVES_MAX):
        if time.monotonic() >= deadline_s:
            break
        outcomes = asyncio.run(_wave(url, number))
        if broken:
            acknowledged = sorted(key for key, outcome in outcomes.items() if outcome == "200")
            if acknowledged:
                outcomes[acknowledged[0]] = "503"
        waves.append(BurstWave(number, node, outcomes))
    return waves


def waves_from_events(nemesis_events: Sequence[Mapping[str, Any]]) -> list[BurstWave]:
    """The waves logged in the nemesis log, in order (malformed records are skipped: the
    log is a file the harness wrote, but a torn last line must not crash the check)."""
    waves = []
    for event in nemesis_events:
        if event.get("type") != "burst":
            continue
        wave, node, outcomes = event.get("wave"), event.get("node"), event.get("outcomes")
        if type(wave) is not int or type(node) is not int or not isinstance(outcomes, dict):
            continue
        waves.append(
            BurstWave(wave, node, {str(k): str(v) for k, v in outcomes.items()})  # as logged
        )
    return sorted(waves, key=lambda wave: wave.wave)


def check_bursts(waves: Sequence[BurstWave], final_digests: Mapping[str, str | None]) -> list[str]:
    """What went wrong (empty: nothing). `final_digests` maps each burst key to the
    `burst_digest` of the value read after healing (None: absent); a key missing from it
    was not read, which the runner reports as an incomplete final read."""
    failures = []
    for wave in waves:
        odd = {status for status in wave.statuses() if status != _ERROR}
        odd -= {str(status) for status in SHED_OR_DONE}
        if odd:
            failures.append(f"burst wave {wave.wave} on node {wave.node} got answers {sorted(odd)}")
    for key in burst_keys():
        if key not in final_digests:
            continue
        acknowledged: int | None = None
        allowed: set[str | None] = set()
        shed: set[str] = set()
        for wave in waves:
            outcome = wave.outcomes.get(key)
            digest = burst_digest(burst_value(key, wave.wave))
            if outcome == "200":
                acknowledged = wave.wave
            elif outcome == "503":
                shed.add(digest)
            elif outcome is not None:
                allowed.add(digest)  # 504 or no answer: may have been applied, even later
        if acknowledged is not None:
            allowed.add(burst_digest(burst_value(key, acknowledged)))
        else:
            allowed.add(None)  # never acknowledged: absent is fine too
        final = final_digests[key]
        if final in shed:
            failures.append(f"{key} holds a value whose write was answered 503 (shed)")
        elif final not in allowed:
            expected = "its last acknowledged value" if acknowledged is not None else "no value"
            failures.append(f"{key} does not hold {expected} or an unknown-outcome write's")
    return failures


async def _read_back(urls: Sequence[str], deadline_s: float) -> dict[str, str | None]:
    digests: dict[str, str | None] = {}
    timeout = aiohttp.ClientTimeout(total=BURST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        attempt = 0
        for key in burst_keys():
            while time.monotonic() < deadline_s:
                url = urls[attempt % len(urls)]
                attempt += 1
                try:
                    async with session.get(f"{url}/v1/kv/{key}") as answer:
                        body = await answer.read()
                        if answer.status in (200, 404):
                            digests[key] = burst_digest(body) if answer.status == 200 else None
                            break
                except (aiohttp.ClientError, TimeoutError, OSError):
                    continue
    return digests


def read_back(urls: Sequence[str], deadline_s: float) -> dict[str, str | None]:
    """Each burst key's value after healing (linearizable reads, trying `urls` in turn until
    one answers, until the monotonic `deadline_s`), as `burst_digest`; None when absent. A
    key that could not be read is left out."""
    return asyncio.run(_read_back(urls, deadline_s))
