"""The lock check: did the fenced register only take writes of the lock's current holder?

What is checked
---------------
The lock workload (`kvraft.chaos.locks`) records every grant, keepalive, acquire, lock read,
fenced write, stall, release and revoke in the history, and after healing the register's
journal (its complete history: each accepted write with its revision) and the register's
final value.

Revisions, fencing tokens and the lock reads' revisions are all log indices (a token is the
index of its acquire), so they compare with each other. The check (`check_locks`), over the
history as written to disk:

* ``order``: in revision order, the tokens of the journal's writes never decrease;
* ``exclusive``: no two holders' writes interleave: once a write with a token T' other than
  T is accepted after T's, no write with token T is accepted again; and every token was
  given to one client (its acquire answers and the journal agree);
* ``holder``: every observation of who holds the lock fits one sequence of holders whose
  tokens only grow: each lock read says who held it at its revision X (or that nobody did:
  then no token up to X holds it afterwards), each accepted write that its token held the
  lock at the write's revision R (and R > T: the acquire came first);
* ``durable``: every acknowledged write is in the journal at the revision it was
  acknowledged with; everything in the journal is a write a client sent, with the value it
  sent, and none answered 412 or 503 (nothing applied); the register's final value is the
  journal's last write (or a later write of unknown outcome);
* progress: at least one write was accepted, and the journal was read to its end after
  healing (otherwise nothing is proven).

A store that skips the fence check (`kvraft.http_api.BROKEN_FENCE_ENV`, which ``kvraft chaos
--broken-fence`` sets on every node) accepts a stalled holder's writes after the next
holder's, or after a lock read showed the lock had moved on: ``order``, ``exclusive`` or
``holder`` fail (`tests/test_lock_chaos.py` asserts it). Answers an operation should never
get (`kvraft.chaos.locks.EXPECTED_REFUSALS`, malformed 200s, 5xx other than 503/504) are
``unexpected``.

Pure: events in, verdict out. Malformed records raise `kvraft.linearizability.HistoryError`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.chaos.checks import pair_operations
from kvraft.chaos.locks import (
    EXPECTED_REFUSALS,
    LOCK_ACQUIRE,
    LOCK_FINAL,
    LOCK_FUNCTIONS,
    LOCK_GRANT,
    LOCK_HOLDER,
    LOCK_JOURNAL,
    LOCK_KEEPALIVE,
    LOCK_RELEASE,
    LOCK_REVOKE,
    LOCK_STALL,
    LOCK_WRITE,
    OK,
    OUTCOMES,
    REFUSED,
    REGISTER_KEY,
    UNAVAILABLE,
    UNKNOWN,
    parse_write_value,
)
from kvraft.linearizability import HistoryError

__all__ = [
    "LOCK_PROPERTIES",
    "VIOLATIONS_KEPT_MAX",
    "LockCheck",
    "LockViolation",
    "check_locks",
]

LOCK_PROPERTIES = ("order", "exclusive", "holder", "durable", "unexpected")
"""What the check reports violations of (see the module docstring)."""

VIOLATIONS_KEPT_MAX = 100
"""The most violations kept in a check's result (the earliest by revision); the counts cover
all of them."""


@dataclass(frozen=True, slots=True)
class LockViolation:
    """One violated property (`LOCK_PROPERTIES`), at a revision when one is to blame."""

    property: str
    revision: int | None
    detail: str

    def describe(self) -> str:
        at = f" at revision {self.revision}" if self.revision is not None else ""
        return f"{self.property}{at}: {self.detail}"


@dataclass(frozen=True, slots=True)
class LockCheck:
    """The lock check's result.

    Fields:
        clients: lock clients seen in the history.
        ttl_s: the leases' TTL (None: no grant was sent).
        rounds: rounds started (a grant sent).
        held: rounds whose acquire was answered with the lock.
        completed: held rounds whose every write was accepted and whose release was too.
        operations: per operation (``grant``, ``keepalive``, ``acquire``, ``holder``,
            ``write``, ``release``, ``revoke``), how many ended ``ok``, ``refused`` (a 4xx:
            412 for a write), ``unavailable`` (503, no connection) or ``unknown``.
        stalls: holders that stalled past their lease (the nemesis's share).
        stale_writes: the writes those holders made after their stall, by outcome.
        accepted: writes in the journal (the register's history), unknown ones included.
        holders: distinct tokens among them.
        holder_reads: lock reads that answered (observations for ``holder``).
        journal_complete: the journal was read to its last page after healing.
        final_register: (value, revision) of the register read after healing (value None:
            absent), or None if it was never read.
        violations: the earliest violations by revision (at most `VIOLATIONS_KEPT_MAX`).
        counts: violations per property, all of them.
    """

    clients: int
    ttl_s: int | None
    rounds: int
    held: int
    completed: int
    operations: Mapping[str, Mapping[str, int]]
    stalls: int
    stale_writes: Mapping[str, int]
    accepted: int
    holders: int
    holder_reads: int
    journal_complete: bool
    final_register: tuple[str | None, int] | None
    violations: tuple[LockViolation, ...]
    counts: Mapping[str, int]

    @property
    def passed(self) -> bool:
        return (
            not self.counts
            and self.journal_complete
            and self.final_register is not None
            and self.accepted > 0
        )

    @property
    def first(self) -> LockViolation | None:
        return self.violations[0] if self.violations else None

    def failures(self) -> list[str]:
        """What failed, one line each (none when passed)."""
        found = []
        if self.counts:
            counts = ", ".join(f"{name} {count}" for name, count in self.counts.items())
            assert self.first is not None
            found.append(f"lock: violated ({counts}), first: {self.first.describe()}")
        if not self.journal_complete:
            found.append("lock: the register's journal could not be read to its end after healing")
        elif self.final_register is None:
            found.append("lock: the register could not be read after healing")
        if self.accepted == 0 and self.journal_complete:
            found.append(
                f"lock: no fenced write was accepted in {self.rounds} rounds (no progress: "
                "nothing was tested)"
            )
        return found


@dataclass(slots=True)
class _Attempt:
    client: int
    round: int
    token: int
    value: str
    status: str
    outcome: str
    revision: int | None


@dataclass(frozen=True, slots=True)
class _Observation:
    """Who held the lock at `revision` (`token`; None: nobody), and what says so."""

    revision: int
    token: int | None
    source: str
    is_read: bool


@dataclass(slots=True)
class _Round:
    held: bool = False
    writes: int = 0
    writes_ok: int = 0
    released: bool = False


_SHORT_NAMES = {
    LOCK_GRANT: "grant",
    LOCK_KEEPALIVE: "keepalive",
    LOCK_ACQUIRE: "acquire",
    LOCK_HOLDER: "holder",
    LOCK_WRITE: "write",
    LOCK_RELEASE: "release",
    LOCK_REVOKE: "revoke",
}


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise HistoryError(f"{what} must be an int, got {value!r}")
    return value


def _optional_int(value: object) -> int | None:
    return value if type(value) is int else None


class _Findings:
    def __init__(self) -> None:
        self.all: list[LockViolation] = []

    def add(self, name: str, revision: int | None, detail: str) -> None:
        self.all.append(LockViolation(name, revision, detail))


def _outcome(completion: Mapping[str, Any] | None) -> str:
    if completion is None:
        return UNKNOWN
    outcome = completion.get("outcome")
    if outcome in OUTCOMES:
        return str(outcome)
    return {"ok": OK, "fail": UNAVAILABLE}.get(str(completion.get("type")), UNKNOWN)


def _unexpected(f: str, completion: Mapping[str, Any] | None) -> str | None:
    """Why an answer is one `f` should never get, or None."""
    if completion is None:
        return None
    status = completion.get("status")
    if completion.get("malformed") is True:
        return f"{f}: a 200 that does not follow the API ({completion.get('error')})"
    if type(status) is int and status >= 500 and status not in (503, 504):
        return f"{f}: {completion.get('error')}"
    code = completion.get("code")
    if completion.get("outcome") == REFUSED and code not in EXPECTED_REFUSALS.get(f, ()):
        return f"{f}: {completion.get('error')}"
    return None


def check_locks(events: Iterable[Mapping[str, Any]]) -> LockCheck:
    """Check the lock workload's operations in a chaos history (see the module docstring)."""
    found = _Findings()
    operations: dict[str, dict[str, int]] = {
        name: dict.fromkeys(OUTCOMES, 0) for name in _SHORT_NAMES.values()
    }
    stale_writes = dict.fromkeys(OUTCOMES, 0)
    rounds: dict[tuple[int, int], _Round] = {}
    clients: set[int] = set()
    ttl_s: int | None = None
    stalls = 0
    token_owner: dict[int, tuple[int, int]] = {}
    attempts: dict[str, _Attempt] = {}
    observations: list[_Observation] = []
    journal: dict[str, tuple[str, int]] = {}
    journal_complete = False
    final: tuple[str | None, int] | None = None
    for invoke, completion in pair_operations(events, LOCK_FUNCTIONS):
        f = str(invoke["f"])
        status = "info" if completion is None else str(completion.get("type"))
        outcome = _outcome(completion)
        why = _unexpected(f, completion)
        if why is not None:
            found.add("unexpected", None, why)
        if f in _SHORT_NAMES:
            operations[_SHORT_NAMES[f]][outcome] += 1
        if f == LOCK_JOURNAL:
            if status == "ok" and completion is not None:
                _journal_page(completion, journal)
                journal_complete = journal_complete or completion.get("last_page") is True
            continue
        if f == LOCK_FINAL:
            if status == "ok" and completion is not None:
                value = completion.get("output")
                if value is not None and not isinstance(value, str):
                    raise HistoryError(f"the register's final value must be a string: {value!r}")
                final = (value, _int(completion.get("revision"), "the final read's revision"))
            continue
        if f == LOCK_KEEPALIVE:
            continue
        client = _int(invoke.get("client"), f"{f}'s client")
        key = (client, _int(invoke.get("round"), f"{f}'s round"))
        output = completion.get("output") if completion is not None and status == "ok" else None
        this_round = rounds.setdefault(key, _Round())
        if f == LOCK_GRANT:
            clients.add(client)
            ttl_s = _optional_int(invoke.get("value")) or ttl_s
        elif f == LOCK_ACQUIRE and status == "ok":
            _acquired(invoke, output, key, token_owner, found)
            this_round.held = True
        elif f == LOCK_HOLDER and status == "ok" and completion is not None:
            if not isinstance(output, dict):
                raise HistoryError(f"a lock read's output must be an object, got {output!r}")
            revision = _int(completion.get("revision"), "a lock read's revision")
            holder = _optional_int(output.get("holder"))
            seen = f"token {holder}" if holder is not None else "nobody"
            source = f"client {client}'s lock read saw {seen} holding it"
            observations.append(_Observation(revision, holder, source, True))
        elif f == LOCK_STALL:
            stalls += 1
        elif f == LOCK_WRITE:
            attempt = _attempt(invoke, completion, client, key[1], status, outcome)
            attempts[str(invoke.get("journal"))] = attempt
            this_round.writes += 1
            this_round.writes_ok += status == "ok"
            if invoke.get("after_stall") is True:
                stale_writes[outcome] += 1
        elif f == LOCK_RELEASE and status == "ok":
            this_round.released = True

    entries = _journal_entries(journal, attempts, journal_complete, found)
    _check_order(entries, token_owner, found)
    _check_holders(entries, observations, found)
    if final is not None and journal_complete:
        _check_final(final, journal, attempts, found)

    violations = sorted(
        found.all,
        key=lambda v: (v.revision if v.revision is not None else -1,
                       LOCK_PROPERTIES.index(v.property)),
    )  # fmt: skip
    counts: dict[str, int] = {}
    for violation in violations:
        counts[violation.property] = counts.get(violation.property, 0) + 1
    return LockCheck(
        clients=len(clients),
        ttl_s=ttl_s,
        rounds=len(rounds),
        held=sum(1 for r in rounds.values() if r.held),
        completed=sum(
            1 for r in rounds.values() if r.held and r.released and r.writes == r.writes_ok > 0
        ),
        operations=operations,
        stalls=stalls,
        stale_writes=stale_writes,
        accepted=len(entries),
        holders=len({entry.token for entry in entries}),
        holder_reads=len(observations),
        journal_complete=journal_complete,
        final_register=final,
        violations=tuple(violations[:VIOLATIONS_KEPT_MAX]),
        counts=counts,
    )


def _journal_page(completion: Mapping[str, Any], journal: dict[str, tuple[str, int]]) -> None:
    page = completion.get("output")
    if not isinstance(page, list):
        raise HistoryError(f"a journal page's output must be a list, got {page!r}")
    for item in page:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or type(item[2]) is not int
        ):
            raise HistoryError(f"a journal entry must be [key, value, revision], got {item!r}")
        journal[item[0]] = (item[1], item[2])


def _acquired(
    invoke: Mapping[str, Any],
    output: object,
    key: tuple[int, int],
    token_owner: dict[int, tuple[int, int]],
    found: _Findings,
) -> None:
    if not isinstance(output, dict):
        raise HistoryError(f"an acquire's output must be an object, got {output!r}")
    token = _int(output.get("token"), "an acquire's token")
    client, round_number = key
    if output.get("lease") != invoke.get("value"):
        found.add(
            "exclusive",
            token,
            f"client {client} acquired with lease {invoke.get('value')} and was answered "
            f"lease {output.get('lease')}'s place (token {token})",
        )
    owner = token_owner.setdefault(token, key)
    if owner != key:
        found.add(
            "exclusive",
            token,
            f"token {token} was given to client {owner[0]} (round {owner[1]}) and to client "
            f"{client} (round {round_number})",
        )


def _attempt(
    invoke: Mapping[str, Any],
    completion: Mapping[str, Any] | None,
    client: int,
    round_number: int,
    status: str,
    outcome: str,
) -> _Attempt:
    values = invoke.get("value")
    journal = invoke.get("journal")
    if (
        not isinstance(values, dict)
        or not isinstance(journal, str)
        or not isinstance(values.get(journal), str)
        or values.get(REGISTER_KEY) != values.get(journal)
    ):
        raise HistoryError(f"a lock write needs its journal key and value, got {invoke}")
    revision = None
    if completion is not None and status == "ok":
        revision = _optional_int(completion.get("revision"))
    return _Attempt(
        client,
        round_number,
        _int(invoke.get("token"), "a lock write's token"),
        values[journal],
        status,
        outcome,
        revision,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    """An accepted write: its revision, the client and token its value names, its key."""

    revision: int
    token: int
    client: int
    key: str

    @property
    def writer(self) -> str:
        return f"client {self.client}'s write with token {self.token}"

    def describe(self) -> str:
        return f"{self.writer} (revision {self.revision})"


def _journal_entries(
    journal: Mapping[str, tuple[str, int]],
    attempts: Mapping[str, _Attempt],
    journal_complete: bool,
    found: _Findings,
) -> list[_Entry]:
    """The journal as accepted writes, in revision order; ``durable`` against the writes
    sent."""
    entries = []
    for key, (value, revision) in journal.items():
        attempt = attempts.get(key)
        named = parse_write_value(value)
        if attempt is None or named is None:
            found.add("durable", revision, f"{key} = {value!r}: no client wrote it")
            continue
        if value != attempt.value or named != (attempt.client, attempt.token):
            found.add(
                "durable",
                revision,
                f"{key} holds {value!r}, but client {attempt.client} wrote {attempt.value!r}",
            )
            continue
        entry = _Entry(revision, attempt.token, attempt.client, key)
        entries.append(entry)
        if attempt.status == "fail":
            found.add(
                "durable",
                revision,
                f"{entry.describe()} was applied although it was answered {attempt.outcome} "
                "(nothing applied)",
            )
        elif attempt.revision is not None and attempt.revision != revision:
            found.add(
                "durable",
                revision,
                f"{entry.describe()} was acknowledged at revision {attempt.revision}",
            )
    if journal_complete:
        for key, attempt in attempts.items():
            if attempt.status == "ok" and key not in journal:
                found.add(
                    "durable",
                    attempt.revision,
                    f"client {attempt.client}'s acknowledged write with token {attempt.token} "
                    f"({key}) is not in the journal: lost",
                )
    entries.sort(key=lambda entry: entry.revision)
    return entries


def _check_order(
    entries: Sequence[_Entry], token_owner: Mapping[int, tuple[int, int]], found: _Findings
) -> None:
    """``order`` and ``exclusive`` over the register's history (the journal)."""
    highest: _Entry | None = None
    current: _Entry | None = None
    finished: dict[int, _Entry] = {}
    clients_of: dict[int, set[int]] = defaultdict(set)
    for entry in entries:
        clients_of[entry.token].add(entry.client)
        owner = token_owner.get(entry.token)
        if owner is not None and owner[0] != entry.client:
            found.add(
                "exclusive",
                entry.revision,
                f"{entry.describe()}, but token {entry.token} was given to client {owner[0]}",
            )
        if highest is not None and entry.token < highest.token:
            found.add("order", entry.revision,
                      f"{entry.describe()} was accepted after {highest.describe()}")  # fmt: skip
        if current is not None and entry.token != current.token:
            finished.setdefault(current.token, current)
            ended = finished.get(entry.token)
            if ended is not None:
                found.add(
                    "exclusive",
                    entry.revision,
                    f"{entry.describe()} was accepted after {current.describe()}, which came "
                    f"after token {entry.token}'s last write at revision {ended.revision}",
                )
        current = entry
        if highest is None or entry.token > highest.token:
            highest = entry
    for token, clients in sorted(clients_of.items()):
        if len(clients) > 1:
            found.add(
                "exclusive",
                None,
                f"writes with token {token} name clients {', '.join(map(str, sorted(clients)))}",
            )


def _check_holders(
    entries: Sequence[_Entry], reads: Sequence[_Observation], found: _Findings
) -> None:
    """``holder``: the lock reads and the accepted writes fit one sequence of holders whose
    tokens only grow (two writes out of order are ``order``'s, not reported again here)."""
    observations = list(reads)
    for entry in entries:
        if entry.token >= entry.revision:
            found.add("holder", entry.revision,
                      f"{entry.describe()} applied before its token's acquire")  # fmt: skip
        observations.append(_Observation(entry.revision, entry.token, entry.writer, False))
    by_revision: dict[int, list[_Observation]] = defaultdict(list)
    for observation in observations:
        by_revision[observation.revision].append(observation)
    highest: dict[bool, _Observation] = {}  # the highest token seen, by reads and by writes
    empty: _Observation | None = None  # the latest observation of nobody holding the lock
    for revision in sorted(by_revision):
        group = by_revision[revision]
        held = [o for o in group if o.token is not None]
        nobody = [o for o in group if o.token is None]
        for other in held[1:]:
            if other.token != held[0].token:
                found.add("holder", revision, f"{held[0].source}, and {other.source}")
        if held and nobody:
            found.add("holder", revision, f"{held[0].source}, but {nobody[0].source}")
        for observation in held:
            assert observation.token is not None
            # A write below an earlier write is `order`'s to report; a read is in any pair.
            for earlier in [highest.get(True), highest.get(False) if observation.is_read else None]:
                if earlier is not None and observation.token < (earlier.token or 0):
                    found.add(
                        "holder",
                        revision,
                        f"{observation.source} at revision {revision}, after {earlier.source} "
                        f"at revision {earlier.revision}",
                    )
                    break
            if empty is not None and observation.token <= empty.revision:
                found.add(
                    "holder",
                    revision,
                    f"{observation.source} at revision {revision}, but {empty.source} at "
                    f"revision {empty.revision}, after that token's acquire",
                )
        for observation in held:
            best = highest.get(observation.is_read)
            if best is None or (observation.token or 0) > (best.token or 0):
                highest[observation.is_read] = observation
        if nobody:
            empty = nobody[0]


def _check_final(
    final: tuple[str | None, int],
    journal: Mapping[str, tuple[str, int]],
    attempts: Mapping[str, _Attempt],
    found: _Findings,
) -> None:
    """The register's final value is the journal's last write (read before it), or a later
    write of unknown outcome."""
    value, revision = final
    if not journal:
        if value is not None:
            found.add("durable", revision, f"the register holds {value!r}, the journal nothing")
        return
    last_value, last_revision = max(journal.values(), key=lambda item: item[1])
    if value is None:
        found.add(
            "durable",
            None,
            f"the register is absent after healing, but the journal's last write is at "
            f"revision {last_revision}",
        )
    elif revision < last_revision:
        found.add(
            "durable",
            revision,
            f"the register's final value is from revision {revision}, but the journal's last "
            f"write is at revision {last_revision}",
        )
    elif revision == last_revision and value != last_value:
        found.add(
            "durable",
            revision,
            f"the register holds {value!r}, but the journal's write at its revision is "
            f"{last_value!r}",
        )
    elif revision > last_revision and not any(
        a.value == value and a.status == "info" for a in attempts.values()
    ):
        found.add(
            "durable",
            revision,
            f"the register holds {value!r} from after the journal's last write, and no write "
            "of unknown outcome sent it",
        )
