"""Decide whether a recorded history of key-value operations is linearizable.

Theory of operation
-------------------
A history is a set of `Operation`s, each with the time its client called it and
the time the answer came back. It is linearizable (Herlihy & Wing 1990) when
every operation can be given one instant between its call and its return such
that, taken in that order, the operations are a legal run of the sequential
`Model` (a register per key). Keys are independent registers, so the history is
split per key and each key is checked on its own (linearizability is local).

The search is Wing & Gong's, as refined by Lowe ("Testing for linearizability",
2017) and used by Knossos and Porcupine:

* Call and return events of the key's ``ok`` operations sit in a doubly linked
  list sorted by time. An operation may be linearized next only if its call
  comes before the first return still in the list: the op owning that return
  must take effect before it returned. Linearizing an op unlinks both of its
  events; backtracking relinks them in reverse order ("dancing links").
* The set of linearized operations is a bitset held in a Python int; every
  (bitset, model state) already proven to be a dead end is memoized, so the
  exponential tree collapses to the states that are actually distinct.
* The search is an explicit stack of frames, never recursion, so a key with
  100,000 operations does not hit the interpreter's recursion limit.

Refinements that keep it fast on the histories kvraft produces (each one only
prunes branches that cannot hold the sole linearization; see the comments):

* Read-only operations (reads, CAS that reported failure) that are legal in
  the current state are linearized at once, without a choice point: moving a
  legal read-only op earlier to "now" never invalidates a linearization, because
  it does not change the state and every op still pending returned after it
  was called.
* ``info`` operations (outcome unknown) have no return event: they may take
  effect at any time after their call, or never. They are tried only after the
  ``ok`` candidates, and only "just in time": right before an op they affect
  (see `_InfoIndex`). Interchangeable ones (same overwrite) are tried once.
* A state with fewer ``info`` operations spent can do everything a state with
  more spent can, so a dead end recorded for (bitset of ``ok`` ops, state, set
  of ``info`` ops) also condemns any state with the same ``ok`` bitset and
  model state and a superset of those ``info`` ops. Only finished dead ends
  are recorded, which keeps this pruning sound.
* `RegisterModel.specialise` merges all values that no op of the key observes
  into one token, so states that differ only in such a value are one state.
* Starvation (`_Supply`): leaving a state that some pending op can only take
  effect in, when nothing left can ever restore it, is cut at once. A stale
  read thus fails the search at the overwrite it missed, not much later.

What the search may assume about an op comes from `Model.traits`
(`OperationTraits`); a model that answers ``OperationTraits()`` for every op
is checked correctly, only without these shortcuts.

Events at the same timestamp are treated as overlapping (calls sort before
returns), so a violation is never reported on the strength of a tie.

For a non-linearizable key the checker also returns a witness: a sub-history
that is itself non-linearizable and that implies the whole history is not.
It is cut at the earliest return time for which the prefix still fails (ops
still running at the cut are reported as ``info``, which only loosens them);
then read-only operations, and then overwrites whose value nothing left
refers to, are removed while the remainder still fails. Each step is a sound
reduction (see `_truncate` and `_unreferenced_overwrites`), so the witness
never shows a violation that the full history does not have. Shrinking is
bounded in re-checks and search steps, not seconds, so it is reproducible.

Pure: no IO and no wall clock; the optional time budget reads an injected
monotonic clock.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

__all__ = [
    "CLOCK_READ_INTERVAL_STEPS",
    "HISTORY_OPERATIONS_MAX",
    "OPERATION_KINDS",
    "OPERATION_STATUSES",
    "REPORT_WITNESS_LINES_MAX",
    "SEARCH_CACHE_ENTRIES_MAX",
    "WITNESS_MINIMISE_CHECKS_MAX",
    "WITNESS_MINIMISE_STEPS_FACTOR",
    "WITNESS_MINIMISE_STEPS_MIN",
    "CheckResult",
    "HistoryError",
    "KeyResult",
    "Model",
    "Operation",
    "OperationTraits",
    "RegisterModel",
    "Verdict",
    "check_history",
    "format_operation",
    "history_from_events",
]

Verdict = Literal["yes", "no", "unknown"]
"""``yes``: linearizable; ``no``: proven not; ``unknown``: gave up (never a pass)."""

OPERATION_KINDS = frozenset({"read", "write", "cas", "delete"})
"""The operations a client can perform on one key."""

OPERATION_STATUSES = frozenset({"ok", "fail", "info"})
"""How an operation ended: happened, definitely did not happen, or unknown."""

HISTORY_OPERATIONS_MAX = 2_000_000
"""Most operations one history may hold (20x the chaos harness's largest run).

The search keeps a few Python objects per operation and bitsets as wide as a
key's history, so an unbounded input could exhaust memory before the time
budget is ever consulted."""

SEARCH_CACHE_ENTRIES_MAX = 2_000_000
"""Most dead-end states memoized for one key before the search gives up with
``unknown``. Each entry costs roughly a hundred bytes plus the part of the
bitset above the lowest open op, so this caps one key's cache at a few
hundred MiB."""

CLOCK_READ_INTERVAL_STEPS = 1024
"""Search steps between two reads of the budget clock: often enough to stop
within milliseconds of the deadline, rare enough that the clock costs nothing."""

WITNESS_MINIMISE_CHECKS_MAX = 100
"""Most re-checks spent shrinking the witness of one non-linearizable key; the
witness is sound after any number of them, only less small."""

WITNESS_MINIMISE_STEPS_FACTOR = 4
"""Search steps that shrinking one key's witness may spend, as a multiple of the
steps that found the violation (re-checks that fail cost about as much as the
first search). Counted in steps, not seconds, so the witness is reproducible."""

WITNESS_MINIMISE_STEPS_MIN = 200_000
"""Search steps that shrinking a witness may always spend, however quickly the
violation was found (a fraction of a second)."""

REPORT_WITNESS_LINES_MAX = 60
"""Most witness operations `CheckResult.describe` prints (the last ones, where
the violation is); the full witness stays in `CheckResult.witness`."""

_INVOKE = "invoke"
_COMPLETION_TYPES = frozenset({"ok", "fail", "info"})


class HistoryError(ValueError):
    """The history handed to the checker is malformed (the caller's fault)."""


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is never a meaningful timestamp or process id.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client operation on one key, as the client saw it.

    Fields:
        process: the client (logical thread) that issued it.
        kind: ``read``, ``write``, ``cas`` or ``delete``.
        key: the key it acted on.
        call: when the client sent it (logical ticks or monotonic ns).
        ret: when the client got the answer; None when the outcome is unknown.
        status: ``ok`` (happened once between call and ret, with that output),
            ``fail`` (definitely did not happen) or ``info`` (may have taken
            effect at any time after call, or never).
        value: the value written (write) or the new value (cas); else ignored.
        expected: cas only: the value it compares against (None means absent).
        output: read: the value returned (None means absent); cas: True if it
            applied, False if not; ignored for write and delete.
    """

    process: int
    kind: str
    key: str
    call: int
    ret: int | None
    status: str = "ok"
    value: object = None
    expected: object = None
    output: object = None

    def __post_init__(self) -> None:
        if not _is_int(self.process):
            raise HistoryError(f"process must be an int, got {self.process!r}")
        if self.kind not in OPERATION_KINDS:
            raise HistoryError(f"unknown operation kind {self.kind!r}")
        if not isinstance(self.key, str):
            raise HistoryError(f"key must be a str, got {self.key!r}")
        if self.status not in OPERATION_STATUSES:
            raise HistoryError(f"unknown operation status {self.status!r}")
        if not _is_int(self.call):
            raise HistoryError(f"call time must be an int, got {self.call!r}")
        if self.ret is None:
            if self.status == "ok":
                raise HistoryError("an ok operation needs a return time")
        elif not _is_int(self.ret):
            raise HistoryError(f"return time must be an int or None, got {self.ret!r}")
        elif self.ret < self.call:
            raise HistoryError(
                f"operation returned at {self.ret} before it was called at {self.call}"
            )
        if self.kind == "cas" and self.status == "ok" and not isinstance(self.output, bool):
            raise HistoryError(f"an ok cas must report True or False, got {self.output!r}")
        for name in ("value", "expected", "output"):
            try:
                hash(getattr(self, name))
            except TypeError:
                # Values become part of memoized model states, which must be hashable.
                raise HistoryError(f"{name} must be hashable: {getattr(self, name)!r}") from None


def format_operation(op: Operation) -> str:
    """One line describing `op` for a violation report."""
    if op.kind == "read":
        detail = f"-> {op.output!r}"
    elif op.kind == "write":
        detail = f"{op.value!r}"
    elif op.kind == "delete":
        detail = ""
    else:
        detail = f"{op.expected!r} -> {op.value!r}"
        if op.status == "ok":
            detail += f" : {op.output!r}"
    ret = "?" if op.ret is None or op.status == "info" else str(op.ret)
    return f"[{op.call}, {ret}] p{op.process} {op.status} {op.kind}({op.key!r}) {detail}".rstrip()


@dataclass(frozen=True, slots=True)
class OperationTraits:
    """What the search may assume about one operation; the defaults are always safe.

    Fields:
        read_only: the op never changes any state in which it is legal. Legal
            read-only ops are linearized at once; ``info`` ones are dropped.
        blind: the op is legal in every state and its next state does not
            depend on the state (a plain overwrite).
        trigger_state: ``(t,)`` when in every state other than ``t`` the op
            leaves the state unchanged and is legal in all of them or in none
            (a read of ``t``, a cas expecting ``t``); None when no such state.
        legal_only_in_trigger_state: with `trigger_state`, the op is illegal
            in every other state (a read, a cas that reported success).
    """

    read_only: bool = False
    blind: bool = False
    trigger_state: tuple[Hashable] | None = None
    legal_only_in_trigger_state: bool = False


class Model(Protocol):
    """A sequential specification of one key. States must be hashable."""

    def specialise(self, ops: Sequence[Operation]) -> Model:
        """A model for checking exactly these ops of one key; `self` if nothing is gained.

        Lets a model shrink its state space using the whole history, e.g. by
        merging values that no op ever observes.
        """
        ...

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Whether `op` (with its recorded output) is legal in `state`, and the next state."""
        ...

    def traits(self, op: Operation) -> OperationTraits:
        """Facts about `op` that let the search prune; ``OperationTraits()`` is always correct."""
        ...


class _UnobservedValue:
    """The one value standing for every value that no operation of the key observes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unobserved value>"


_UNOBSERVED = _UnobservedValue()

_BLIND = OperationTraits(blind=True)


class RegisterModel:
    """A single register: the state is the current value, None when absent.

    `specialise` returns a register in which every written value that no read
    returns and no cas compares against is replaced by one token: such values
    can never make an op legal or illegal, and merging them lets the search
    treat the states they lead to as one.
    """

    __slots__ = ("_observed_values",)

    def __init__(self, observed_values: frozenset[object] | None = None) -> None:
        # None: every value is kept as it is (not specialised).
        self._observed_values = observed_values

    def specialise(self, ops: Sequence[Operation]) -> Model:
        observed: set[object] = set()
        for op in ops:
            if op.kind == "read" and op.status == "ok":
                observed.add(op.output)
            elif op.kind == "cas":
                observed.add(op.expected)
        return RegisterModel(frozenset(observed))

    def _stored(self, value: object) -> Hashable:
        observed = self._observed_values
        if observed is None or value is None or value in observed:
            return value
        return _UNOBSERVED

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        kind = op.kind
        if kind == "read":
            return op.output == state, state
        if kind == "write":
            return True, self._stored(op.value)
        if kind == "delete":
            return True, None
        matches = state == op.expected
        if op.status == "info":
            # Had it happened, it would have applied exactly when the value matched.
            return True, (self._stored(op.value) if matches else state)
        if op.output is True:
            return matches, (self._stored(op.value) if matches else state)
        return not matches, state

    def traits(self, op: Operation) -> OperationTraits:
        kind = op.kind
        if kind in ("write", "delete"):
            return _BLIND
        if kind == "read":
            return OperationTraits(
                read_only=True, trigger_state=(op.output,), legal_only_in_trigger_state=True
            )
        # A cas only ever does anything when the value is the expected one.
        succeeded = op.status == "ok" and op.output is True
        return OperationTraits(
            read_only=(op.status == "ok" and not succeeded) or op.value == op.expected,
            trigger_state=(op.expected,),
            legal_only_in_trigger_state=succeeded,
        )


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    Fields:
        key: the key.
        verdict: ``yes``, ``no`` or ``unknown``.
        operation_count: the ops of this key that were checked (after dropping
            ``fail`` ops and read-only ``info`` ops).
        reason: why the verdict is ``no`` or ``unknown``; empty for ``yes``.
        witness: for ``no``: a non-linearizable sub-history of this key, in call
            order (ops still running at the cut are shown as ``info``).
        stuck_operation: for ``no``: in the witness, the op that had to take
            effect before it returned but could not, at the deepest point the
            search reached.
    """

    key: str
    verdict: Verdict
    operation_count: int
    reason: str = ""
    witness: tuple[Operation, ...] = ()
    stuck_operation: Operation | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history.

    Fields:
        verdict: ``no`` if any key is not linearizable, else ``unknown`` if any
            key could not be decided, else ``yes``.
        per_key: each key's result, in sorted key order (a key whose ops were
            all dropped has none).
        key: for ``no``: the first (in sorted order) non-linearizable key.
        witness: for ``no``: that key's witness (see `KeyResult.witness`).
    """

    verdict: Verdict
    per_key: Mapping[str, KeyResult] = field(default_factory=dict)
    key: str | None = None
    witness: tuple[Operation, ...] = ()

    def describe(self) -> str:
        """A human-readable summary, with (the end of) the witness for a violation."""
        counts = {verdict: 0 for verdict in ("yes", "no", "unknown")}
        for result in self.per_key.values():
            counts[result.verdict] += 1
        lines = [
            f"linearizable: {self.verdict} ({len(self.per_key)} keys: {counts['yes']} yes, "
            f"{counts['no']} no, {counts['unknown']} unknown)"
        ]
        for result in self.per_key.values():
            if result.verdict != "yes":
                lines.append(f"key {result.key!r}: {result.verdict}: {result.reason}")
        if self.key is not None:
            stuck = self.per_key[self.key].stuck_operation
            lines.append(f"witness for key {self.key!r} ({len(self.witness)} ops):")
            shown = self.witness[-REPORT_WITNESS_LINES_MAX:]
            if len(shown) < len(self.witness):
                lines.append(f"  ... {len(self.witness) - len(shown)} earlier ops not shown")
            for op in shown:
                marker = "  <- cannot take effect in time" if op is stuck else ""
                lines.append("  " + format_operation(op) + marker)
        return "\n".join(lines)


# --------------------------------------------------------------------------- search

_Step = Callable[[Hashable, Operation], tuple[bool, Hashable]]
_Choice = tuple[int, Hashable]
"""An op to linearize next and the state after it: ok ops as their index,
info ops as -(index + 1)."""


class _BudgetExhausted(Exception):
    """The time budget or the step allowance ran out mid-search."""


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict
    reason: str = ""
    stuck_operation: Operation | None = None
    steps: int = 0  # search steps spent
    proof: tuple[Operation, ...] = ()  # a ready-made witness, when one is known


@dataclass(slots=True)
class _Budget:
    deadline: float | None
    clock: Callable[[], float]

    def exhausted(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline


class _Frame:
    """One choice point of the search: a state after the read-only closure."""

    __slots__ = (
        "block_node",
        "cache_key",
        "choices",
        "chosen",
        "info_offered",
        "position",
        "read_only_lifted",
        "state",
    )

    def __init__(
        self,
        state: Hashable,
        read_only_lifted: list[int],
        choices: list[_Choice],
        cache_key: tuple[int, int, Hashable] | None,
        block_node: int,
    ) -> None:
        self.state = state
        self.read_only_lifted = read_only_lifted
        self.choices = choices
        self.position = 0
        self.chosen = 0
        # None marks a frame already known dead: it is not recorded again.
        self.cache_key = cache_key
        # The first return event: its op must take effect before anything later.
        self.block_node = block_node
        self.info_offered = cache_key is None


class _InfoIndex:
    """The ``info`` ops of one key, indexed to find the ones worth trying now.

    Normal form: take any linearization. An info op that leaves the state as it
    was can be dropped (it may never have happened). An info op W followed by
    an op Y that W does not affect can be moved after Y, or dropped when Y
    reaches the same state either way. Y is unaffected when it is legal without
    W and either reaches the same state with or without W, or leaves the state
    alone both with and without W. Repeating this gives a linearization where
    every info op changes the state and is immediately followed by an op it
    affects: an ok op that could be linearized now, or another info op that
    changes the state after W and not without it (a chain that ends at such an
    ok op). So W only needs to be tried when such an op exists.

    Symmetry: blind info ops with the same effect that are both available stay
    available forever, so they are interchangeable and only the earliest one
    not yet spent is tried.

    `OperationTraits.trigger_state` turns "does W affect Y" into lookups: an op
    with trigger t is affected only when W leads to t or the current state is
    t, and an info op with trigger t changes the state only from t, to a state
    known in advance. Chains are then found backwards from the states the ok
    candidates need. Info ops without a trigger state are tested one by one.
    """

    __slots__ = (
        "_blind_groups",
        "_by_trigger",
        "_by_trigger_effect",
        "_ops",
        "_step",
        "_trigger_of",
        "_untriggered",
    )

    def __init__(self, info_ops: Sequence[Operation], model: Model) -> None:
        self._ops = info_ops
        self._step: _Step = model.step
        # Blind ops by their (state-independent) next state, earliest first.
        self._blind_groups: dict[Hashable, list[int]] = {}
        # Triggered ops by trigger state, and by the state they lead to from it.
        self._by_trigger: dict[Hashable, list[int]] = {}
        self._by_trigger_effect: dict[Hashable, list[int]] = {}
        self._trigger_of: dict[int, Hashable] = {}
        self._untriggered: list[int] = []
        init = model.init()
        for index, op in enumerate(info_ops):
            traits = model.traits(op)
            if traits.blind:
                self._blind_groups.setdefault(model.step(init, op)[1], []).append(index)
            elif traits.trigger_state is not None:
                trigger = traits.trigger_state[0]
                legal, effect = model.step(trigger, op)
                if legal and effect != trigger:  # else it never changes any state
                    self._by_trigger.setdefault(trigger, []).append(index)
                    self._by_trigger_effect.setdefault(effect, []).append(index)
                    self._trigger_of[index] = trigger
            else:
                self._untriggered.append(index)

    def choices(
        self,
        state: Hashable,
        available_count: int,
        spent: bytearray,
        blocked: Operation,
        ok_targets: Sequence[tuple[Operation, tuple[Hashable] | None]],
    ) -> list[_Choice]:
        """The info ops to try from `state`, those affecting `blocked` first.

        `available_count` info ops (in call order) were called before the first
        pending return; `spent` flags those already linearized; `ok_targets`
        are the ok ops that could be linearized now, with their trigger state.
        """
        step = self._step
        ops = self._ops
        pending = self._pending
        # Non-blind info ops that change the state now (few: typically cas).
        shaped: list[_Choice] = []
        for group in (self._by_trigger.get(state, ()), self._untriggered):
            for index in pending(group, available_count, spent):
                legal, next_state = step(state, ops[index])
                if legal and next_state != state:
                    shaped.append((index, next_state))
        every_writer: list[_Choice] | None = None

        def writers_leading_to(effect: Hashable) -> list[_Choice]:
            found = [choice for choice in shaped if choice[1] == effect]
            if effect != state:
                index = self._first_pending(
                    self._blind_groups.get(effect, ()), available_count, spent
                )
                if index >= 0:
                    found.append((index, effect))
            return found

        def all_writers() -> list[_Choice]:
            nonlocal every_writer
            if every_writer is None:
                every_writer = list(shaped)
                # Groups were created in call order of their first member, so the
                # first group not yet called ends the scan.
                for effect, members in self._blind_groups.items():
                    if members[0] >= available_count:
                        break
                    if effect != state:
                        index = self._first_pending(members, available_count, spent)
                        if index >= 0:
                            every_writer.append((index, effect))
            return every_writer

        urgent: dict[int, Hashable] = {}
        offered: dict[int, Hashable] = {}
        wanted_states: list[Hashable] = []  # states some ok candidate needs
        any_state_wanted = False
        for op, trigger in ok_targets:
            legal_before, state_before = step(state, op)
            if trigger is not None and trigger[0] != state:
                # Outside its trigger state the op behaves the same everywhere.
                wanted_states.append(trigger[0])
                writers = writers_leading_to(trigger[0])
            else:
                any_state_wanted = True
                writers = all_writers()
            is_blocked = op is blocked
            for index, effect in writers:
                if index in urgent or (index in offered and not is_blocked):
                    continue
                legal_after, state_after = step(effect, op)
                if legal_after and not (
                    legal_before
                    and (
                        state_after == state_before
                        or (state_before == state and state_after == effect)
                    )
                ):
                    (urgent if is_blocked else offered)[index] = effect

        # Chains, found backwards: a triggered info op Y that leads to a wanted
        # state makes Y's trigger state wanted in turn.
        if any_state_wanted:
            wanted_states = [
                self._trigger_of[index]
                for members in self._by_trigger.values()
                for index in pending(members, available_count, spent)
            ]
        seen: set[Hashable] = set()
        chain_states: list[Hashable] = []
        while wanted_states:
            wanted = wanted_states.pop()
            for index in pending(self._by_trigger_effect.get(wanted, ()), available_count, spent):
                needed = self._trigger_of[index]
                if needed != state and needed not in seen:
                    seen.add(needed)
                    chain_states.append(needed)
                    wanted_states.append(needed)
        for needed in chain_states:
            for index, effect in writers_leading_to(needed):
                if (
                    index not in urgent
                    and index not in offered
                    and self._changes_after(
                        index, effect, state, self._by_trigger[needed], available_count, spent
                    )
                ):
                    offered[index] = effect
        if self._untriggered:
            for index, effect in all_writers():
                if (
                    index not in urgent
                    and index not in offered
                    and self._changes_after(
                        index, effect, state, self._untriggered, available_count, spent
                    )
                ):
                    offered[index] = effect
        # Earliest called first within each tier: a stable order keeps runs reproducible.
        return [(-index - 1, urgent[index]) for index in sorted(urgent)] + [
            (-index - 1, offered[index]) for index in sorted(offered) if index not in urgent
        ]

    def _changes_after(
        self,
        writer: int,
        effect: Hashable,
        state: Hashable,
        group: Iterable[int],
        available_count: int,
        spent: bytearray,
    ) -> bool:
        """Whether an available op of `group` changes the state after `writer`, thanks to it."""
        step = self._step
        for index in self._pending(group, available_count, spent):
            if index == writer:
                continue
            target = self._ops[index]
            legal_after, state_after = step(effect, target)
            if not legal_after or state_after == effect:
                continue
            legal_before, state_before = step(state, target)
            if not (legal_before and state_after == state_before):
                return True
        return False

    @staticmethod
    def _first_pending(group: Sequence[int], available_count: int, spent: bytearray) -> int:
        for index in group:
            if index >= available_count:
                return -1
            if not spent[index]:
                return index
        return -1

    @staticmethod
    def _pending(group: Iterable[int], available_count: int, spent: bytearray) -> Iterable[int]:
        for index in group:
            if index >= available_count:
                return
            if not spent[index]:
                yield index


_BLOCKED = "cannot take effect before it returned"
_NEVER_PRODUCED = "cannot take effect: no operation ever produces the state it needs"
_OVERWRITTEN = (
    "cannot take effect: every write of the state it needs was overwritten before it was called"
)
_STARVED = "cannot take effect: no operation left can produce the state it needs"

_ABSENT = object()
"""Marks "no state" where any hashable, None included, could be a state."""


class _Supply:
    """Per state: how many open ops need it, and how many open ops could still produce it.

    Starvation rule: a state s is stranded when an open ok op is legal only in
    s and no open op (ok, or info not yet spent) can ever lead to s. Unless
    the current state is s, that op can never be linearized and the branch is
    dead; so is leaving s while it is stranded. This ends a stale read's search
    at the overwrite it missed instead of at the read, and a read of a value
    never written at once. It needs every op's possible next state to be known
    in advance: for a blind op it is fixed, for an op with a trigger state it
    is the state it leads to from there; with any other state-changing op the
    rule is off.
    """

    __slots__ = (
        "enabled",
        "info_effect",
        "needers",
        "ok_effect",
        "ok_need",
        "stranded",
        "writers",
    )

    def __init__(
        self,
        ok_ops: Sequence[Operation],
        ok_traits: Sequence[OperationTraits],
        info_ops: Sequence[Operation],
        model: Model,
    ) -> None:
        self.enabled = True
        init = model.init()

        def effect_of(op: Operation, traits: OperationTraits) -> object:
            if traits.read_only:
                return _ABSENT
            if traits.blind:
                return model.step(init, op)[1]
            if traits.trigger_state is not None:
                trigger = traits.trigger_state[0]
                legal, effect = model.step(trigger, op)
                return effect if legal and effect != trigger else _ABSENT
            self.enabled = False
            return _ABSENT

        self.ok_need: list[object] = [
            traits.trigger_state[0]
            if traits.trigger_state is not None and traits.legal_only_in_trigger_state
            else _ABSENT
            for traits in ok_traits
        ]
        self.ok_effect = [
            effect_of(op, traits) for op, traits in zip(ok_ops, ok_traits, strict=True)
        ]
        self.info_effect = [effect_of(op, model.traits(op)) for op in info_ops]
        self.needers: dict[object, int] = {}
        self.writers: dict[object, int] = {}
        for need in self.ok_need:
            if need is not _ABSENT:
                self.needers[need] = self.needers.get(need, 0) + 1
        for effect in itertools.chain(self.ok_effect, self.info_effect):
            if effect is not _ABSENT:
                self.writers[effect] = self.writers.get(effect, 0) + 1
        self.stranded: set[object] = {
            need for need, count in self.needers.items() if count and not self.writers.get(need)
        }

    def _recount(self, value: object) -> None:
        if self.needers.get(value, 0) > 0 and self.writers.get(value, 0) == 0:
            self.stranded.add(value)
        else:
            self.stranded.discard(value)

    def take_ok(self, index: int, amount: int) -> None:
        """Account for ok op `index` being linearized (amount 1) or undone (-1)."""
        need = self.ok_need[index]
        if need is not _ABSENT:
            self.needers[need] -= amount
            self._recount(need)
        effect = self.ok_effect[index]
        if effect is not _ABSENT:
            self.writers[effect] -= amount
            self._recount(effect)

    def take_info(self, index: int, amount: int) -> None:
        """Account for info op `index` being spent (amount 1) or given back (-1)."""
        effect = self.info_effect[index]
        if effect is not _ABSENT:
            self.writers[effect] -= amount
            self._recount(effect)

    def doomed(self, state: Hashable) -> bool:
        """Whether some stranded state differs from `state` (see the class docstring)."""
        stranded = self.stranded
        return len(stranded) > 1 or (len(stranded) == 1 and state not in stranded)


def _search_key(
    ops: Sequence[Operation],
    model: Model,
    budget: _Budget,
    cache_entries_max: int,
    steps_max: int | None,
) -> _Outcome:
    """Decide whether the ops of one key are linearizable (see the module docstring)."""
    model = model.specialise(ops)
    ok_ops = sorted((op for op in ops if op.status == "ok"), key=lambda op: (op.call, op.ret))
    info_ops = sorted((op for op in ops if op.status == "info"), key=lambda op: op.call)
    ok_count = len(ok_ops)
    if ok_count == 0:
        return _Outcome("yes")
    step = model.step
    ok_traits = [model.traits(op) for op in ok_ops]
    read_only = [traits.read_only for traits in ok_traits]
    info_calls = [op.call for op in info_ops]
    info_index = _InfoIndex(info_ops, model)
    supply = _Supply(ok_ops, ok_traits, info_ops, model)
    starvation = supply.enabled
    ok_need = supply.ok_need

    # Linked list of events: node 0 is the head, node 2n+1 the tail, 1..2n the events.
    # At equal times calls sort before returns: a tie counts as overlap.
    events: list[tuple[int, int, int]] = []
    for index, op in enumerate(ok_ops):
        assert op.ret is not None  # Operation guarantees it for ok ops
        events.append((op.call, 0, index))
        events.append((op.ret, 1, index))
    events.sort()
    tail = 2 * ok_count + 1
    node_is_call = [False] * (tail + 1)
    node_op = [-1] * (tail + 1)
    node_time = [0] * (tail + 1)
    call_node = [0] * ok_count
    return_node = [0] * ok_count
    for position, (moment, is_return, index) in enumerate(events, start=1):
        node_op[position] = index
        node_time[position] = moment
        if is_return:
            return_node[index] = position
        else:
            node_is_call[position] = True
            call_node[index] = position
    following = list(range(1, tail + 2))
    preceding = list(range(-1, tail))

    def lift(index: int) -> None:
        node = call_node[index]
        before, after = preceding[node], following[node]
        following[before], preceding[after] = after, before
        node = return_node[index]
        before, after = preceding[node], following[node]
        following[before], preceding[after] = after, before

    def unlift(index: int) -> None:
        # Reverse order of `lift`: the unlinked nodes still point at their old neighbours.
        node = return_node[index]
        following[preceding[node]] = node
        preceding[following[node]] = node
        node = call_node[index]
        following[preceding[node]] = node
        preceding[following[node]] = node

    def order_choices(choices: list[_Choice], blocked_index: int) -> list[_Choice]:
        # Heuristic only (every choice is tried before giving up): the blocked op
        # itself, or an op that makes it legal, is the most likely to come next.
        blocked = ok_ops[blocked_index]
        first = [
            choice
            for choice in choices
            if choice[0] == blocked_index or step(choice[1], blocked)[0]
        ]
        if not first or len(first) == len(choices):
            return choices
        return first + [choice for choice in choices if choice not in first]

    def info_choices(frame: _Frame) -> list[_Choice]:
        block_node = frame.block_node
        targets = []
        node = following[0]
        while node != block_node:  # every node before the first return is a call
            index = node_op[node]
            if not ok_traits[index].blind:  # an overwrite is affected by nothing
                targets.append((ok_ops[index], ok_traits[index].trigger_state))
            node = following[node]
        return info_index.choices(
            frame.state,
            bisect.bisect_right(info_calls, node_time[block_node]),
            info_spent,
            ok_ops[node_op[block_node]],
            targets,
        )

    state = model.init()
    done_ok = 0
    done_info = 0
    info_spent = bytearray(len(info_ops))  # done_info as flags, cheaper to test one by one
    remaining_ok = ok_count
    frames: list[_Frame] = []
    # Dead ends: (lowest open ok index, done ok bits from it up, state) -> info sets.
    dead_ends: dict[tuple[int, int, Hashable], list[int]] = {}
    dead_end_count = 0
    deepest = -1
    stuck_index = -1
    # Depth, stranded states and linearized ok ops of the latest starvation cut
    # (for the report).
    starved_depth = -1
    starved_at: tuple[frozenset[object], int] = (frozenset(), 0)
    if starvation:
        sandwich = _overwritten_before_call(ok_ops, supply, state)
        if sandwich is not None:
            stuck = sandwich[0]
            explanation = _OVERWRITTEN if len(sandwich) > 1 else _NEVER_PRODUCED
            return _Outcome("no", f"{format_operation(stuck)} {explanation}", stuck, proof=sandwich)
    if starvation and supply.doomed(state):
        # Some op needs a state that nothing can produce: no linearization at all.
        stuck = ok_ops[_first_open_needer(ok_ops, ok_need, frozenset(supply.stranded), 0)]
        return _Outcome("no", f"{format_operation(stuck)} {_STARVED}", stuck)
    steps = 0
    descend = True

    while True:
        steps += 1
        if steps % CLOCK_READ_INTERVAL_STEPS == 0 and (
            budget.exhausted() or (steps_max is not None and steps > steps_max)
        ):
            raise _BudgetExhausted
        if descend:
            descend = False
            # Read-only closure: one pass suffices because the state does not change.
            lifted: list[int] = []
            choices: list[_Choice] = []
            node = following[0]
            while node_is_call[node]:
                index = node_op[node]
                if read_only[index]:
                    if step(state, ok_ops[index])[0]:
                        lift(index)
                        lifted.append(index)
                        done_ok |= 1 << index
                        if starvation and ok_need[index] is not _ABSENT:
                            supply.take_ok(index, 1)
                        node = following[node]
                        if node == return_node[index]:
                            node = following[node]
                        continue
                else:
                    legal, next_state = step(state, ok_ops[index])
                    if legal:
                        choices.append((index, next_state))
                node = following[node]
            remaining_ok -= len(lifted)
            if remaining_ok == 0:
                return _Outcome("yes", steps=steps)
            # `node` is now the first return event: the op that blocks progress.
            if len(choices) > 1:
                choices = order_choices(choices, node_op[node])
            done_count = ok_count - remaining_ok
            if done_count > deepest:
                deepest = done_count
                stuck_index = node_op[node]
            lowest_open = (~done_ok & (done_ok + 1)).bit_length() - 1
            cache_key = (lowest_open, done_ok >> lowest_open, state)
            spent_sets = dead_ends.get(cache_key)
            if spent_sets is not None and any(
                (spent | done_info) == done_info for spent in spent_sets
            ):
                # Dominated by a dead end: no choices, and nothing new to record.
                frames.append(_Frame(state, lifted, [], None, node))
            else:
                frames.append(_Frame(state, lifted, choices, cache_key, node))

        frame = frames[-1]
        if frame.position == len(frame.choices) and not frame.info_offered:
            # Info ops go last: the ok ops must be linearized anyway, info ops need not be.
            frame.info_offered = True
            frame.choices.extend(info_choices(frame))
        if frame.position < len(frame.choices):
            chosen, next_state = frame.choices[frame.position]
            frame.position += 1
            if starvation:
                if chosen >= 0:
                    supply.take_ok(chosen, 1)
                else:
                    supply.take_info(-chosen - 1, 1)
                if supply.doomed(next_state):
                    if ok_count - remaining_ok >= deepest:
                        starved_depth = ok_count - remaining_ok
                        starved_at = (frozenset(supply.stranded - {next_state}), done_ok)
                    if chosen >= 0:
                        supply.take_ok(chosen, -1)
                    else:
                        supply.take_info(-chosen - 1, -1)
                    continue
            frame.chosen = chosen
            if chosen >= 0:
                lift(chosen)
                done_ok |= 1 << chosen
                remaining_ok -= 1
            else:
                done_info |= 1 << (-chosen - 1)
                info_spent[-chosen - 1] = 1
            state = next_state
            descend = True
            continue

        # Every choice failed: this state is a dead end.
        if frame.cache_key is not None:
            dead_ends.setdefault(frame.cache_key, []).append(done_info)
            dead_end_count += 1
            if dead_end_count > cache_entries_max:
                return _Outcome(
                    "unknown", f"search cache exceeded {cache_entries_max} states", steps=steps
                )
        for index in reversed(frame.read_only_lifted):
            unlift(index)
            done_ok ^= 1 << index
            if starvation and ok_need[index] is not _ABSENT:
                supply.take_ok(index, -1)
        remaining_ok += len(frame.read_only_lifted)
        frames.pop()
        if not frames:
            # Where the search got furthest: the op that blocked it there, or the
            # op stranded by the cut that stopped it there.
            explanation = _BLOCKED
            if starved_depth >= deepest:
                stuck_index = _first_open_needer(ok_ops, ok_need, *starved_at)
                explanation = _STARVED
            stuck = ok_ops[stuck_index]
            return _Outcome("no", f"{format_operation(stuck)} {explanation}", stuck, steps)
        parent = frames[-1]
        chosen = parent.chosen
        if chosen >= 0:
            unlift(chosen)
            done_ok ^= 1 << chosen
            remaining_ok += 1
            if starvation:
                supply.take_ok(chosen, -1)
        else:
            done_info ^= 1 << (-chosen - 1)
            info_spent[-chosen - 1] = 0
            if starvation:
                supply.take_info(-chosen - 1, -1)
        state = parent.state


def _overwritten_before_call(
    ok_ops: Sequence[Operation], supply: _Supply, init: Hashable
) -> tuple[Operation, ...] | None:
    """A quick proof of the commonest violation, or None: (the op, then its witness).

    An ok op R legal only in state v, where every op that can lead to v is an
    ok op W (or v is the initial state, set "before time"), each followed by an
    ok op X that surely leads away from v (one whose only possible next state
    is another) with W returned < X called and X returned < R called. Whichever
    W set v last before R, its X came between them, so R can never see v. The
    ops R, every W and their X are then a witness.
    """
    ok_effect = supply.ok_effect
    info_written = {effect for effect in supply.info_effect if effect is not _ABSENT}
    writers: dict[object, list[int]] = {}
    for index, effect in enumerate(ok_effect):
        if effect is not _ABSENT:
            writers.setdefault(effect, []).append(index)
    # State-changing ok ops by call time, with suffix minima of their return time:
    # the earliest-returning one called after a given time, and the earliest with
    # another effect (so one of the two leaves any given state).
    changers = sorted(
        (ok_ops[index].call, index)
        for index, effect in enumerate(ok_effect)
        if effect is not _ABSENT
    )
    calls = [call for call, _ in changers]
    earliest: list[int] = [-1] * (len(changers) + 1)
    earliest_other: list[int] = [-1] * (len(changers) + 1)

    def returned(index: int) -> int:
        return ok_ops[index].ret or 0  # ok ops always have one

    for position in range(len(changers) - 1, -1, -1):
        index = changers[position][1]
        best, other = earliest[position + 1], earliest_other[position + 1]
        if best < 0 or returned(index) < returned(best):
            if best >= 0 and ok_effect[best] != ok_effect[index]:
                other = best
            best = index
        elif ok_effect[index] != ok_effect[best] and (
            other < 0 or returned(index) < returned(other)
        ):
            other = index
        earliest[position], earliest_other[position] = best, other

    def overwrite_between(after: int | None, before: int, value: object) -> int:
        position = 0 if after is None else bisect.bisect_right(calls, after)
        found = earliest[position]
        if found >= 0 and ok_effect[found] == value:
            found = earliest_other[position]
        return found if found >= 0 and returned(found) < before else -1

    for needer in sorted(
        (index for index, need in enumerate(supply.ok_need) if need is not _ABSENT),
        key=lambda index: (returned(index), index),
    ):
        value = supply.ok_need[needer]
        if value in info_written:
            continue  # an info op may have written it at any time
        call = ok_ops[needer].call
        proof = [needer]
        sources: list[int | None] = list(writers.get(value, ()))
        if value == init:
            sources.append(None)  # the initial state: written before anything
        for source in sources:
            overwrite = overwrite_between(None if source is None else returned(source), call, value)
            if overwrite < 0:
                break
            proof += [overwrite] if source is None else [source, overwrite]
        else:
            witness = sorted({*proof[1:]}, key=lambda index: (ok_ops[index].call, index))
            return (ok_ops[needer], *(ok_ops[index] for index in witness))
    return None


def _first_open_needer(
    ok_ops: Sequence[Operation], ok_need: Sequence[object], states: frozenset[object], done_ok: int
) -> int:
    """The earliest-returning ok op not yet linearized that is legal only in one of `states`."""
    open_needers = [
        index
        for index, need in enumerate(ok_need)
        if need is not _ABSENT and need in states and not done_ok >> index & 1
    ]
    # Not empty: a starvation cut needs an open op that is legal only in such a state.
    return min(open_needers, key=lambda index: (ok_ops[index].ret or 0, index))


def _check_key_ops(
    ops: Sequence[Operation],
    model: Model,
    budget: _Budget,
    cache_entries_max: int,
    steps_max: int | None = None,
) -> _Outcome:
    if budget.exhausted():
        return _Outcome("unknown", "time budget exhausted")
    try:
        return _search_key(ops, model, budget, cache_entries_max, steps_max)
    except _BudgetExhausted:
        return _Outcome("unknown", "time budget exhausted")


# --------------------------------------------------------------------------- witness


def _truncate(ops: Sequence[Operation], cut_time: int, model: Model) -> list[Operation]:
    """The ops called by `cut_time`, those still running then loosened to ``info``.

    Sound: any linearization of the full history, restricted to these ops, is one
    of the prefix (ops called later cannot precede any op that completed by the
    cut, and ops still running at the cut may as well never have happened).
    """
    kept: list[Operation] = []
    for op in ops:
        if op.call > cut_time:
            continue
        if op.status == "ok" and op.ret is not None and op.ret > cut_time:
            op = dataclasses.replace(op, status="info", output=None)
            if model.traits(op).read_only:
                continue  # an info read-only op has no effect at all
        kept.append(op)
    return kept


def _minimise_witness(
    ops: Sequence[Operation],
    model: Model,
    budget: _Budget,
    cache_entries_max: int,
    first_outcome: _Outcome,
) -> tuple[tuple[Operation, ...], Operation | None]:
    """A small non-linearizable sub-history of one key's (non-linearizable) ops."""
    checks_left = WITNESS_MINIMISE_CHECKS_MAX
    steps_left = max(
        WITNESS_MINIMISE_STEPS_MIN, WITNESS_MINIMISE_STEPS_FACTOR * first_outcome.steps
    )
    best: list[Operation] = [
        op for op in ops if not (op.status == "info" and model.traits(op).read_only)
    ]
    stuck = first_outcome.stuck_operation

    def can_try() -> bool:
        return checks_left > 0 and steps_left > 0 and not budget.exhausted()

    def fails(candidate: list[Operation]) -> _Outcome | None:
        nonlocal checks_left, steps_left
        checks_left -= 1
        outcome = _check_key_ops(candidate, model, budget, cache_entries_max, steps_left)
        if outcome.verdict == "unknown":
            steps_left = 0  # out of allowance: keep what is proven so far
            return None
        steps_left -= outcome.steps
        return outcome if outcome.verdict == "no" else None

    # 1. The earliest cut whose prefix still fails (failing is monotone in the cut).
    #    Checks that fail cost far more than checks that pass, so probe first at
    #    the return of the op the search got stuck on, the likeliest answer.
    cut_times = sorted({op.ret for op in best if op.status == "ok" and op.ret is not None})
    low, high = 0, len(cut_times) - 1  # the prefix cut at cut_times[high] is known to fail
    if stuck is not None and stuck.ret is not None and can_try():
        probe = bisect.bisect_left(cut_times, stuck.ret)
        if probe < high:
            outcome = fails(_truncate(best, cut_times[probe], model))
            if outcome is not None:
                high = probe
                stuck = outcome.stuck_operation
    while low < high and can_try():
        middle = (low + high) // 2
        outcome = fails(_truncate(best, cut_times[middle], model))
        if outcome is not None:
            high = middle
            stuck = outcome.stuck_operation
        else:
            low = middle + 1
    if cut_times:
        best = _truncate(best, cut_times[high], model)

    # 2. Drop read-only ok ops while the rest still fails (removing an op that
    #    never changes the state cannot create a violation).
    kept = [True] * len(best)

    def drop_while_failing(removable: list[int]) -> None:
        # Chunks that halve in size (a simple delta debugging).
        nonlocal stuck
        chunk = max(1, len(removable) // 2)
        while removable and can_try():
            start = 0
            while start < len(removable) and can_try():
                trial = removable[start : start + chunk]
                for i in trial:
                    kept[i] = False
                outcome = fails([op for i, op in enumerate(best) if kept[i]])
                if outcome is not None:
                    del removable[start : start + chunk]
                    stuck = outcome.stuck_operation
                else:
                    for i in trial:
                        kept[i] = True
                    start += chunk
            if chunk == 1:
                break
            chunk //= 2

    drop_while_failing(
        [i for i, op in enumerate(best) if op.status == "ok" and model.traits(op).read_only]
    )
    # 3. Drop overwrites whose value nothing left refers to.
    drop_while_failing(_unreferenced_overwrites(best, kept, model))
    witness = sorted(
        (op for i, op in enumerate(best) if kept[i]),
        key=lambda op: (op.call, op.process),
    )
    return tuple(witness), stuck


def _unreferenced_overwrites(
    ops: Sequence[Operation], kept: Sequence[bool], model: Model
) -> list[int]:
    """Positions of kept blind ops whose removal cannot create a violation.

    A blind op X leading to v, where no kept op has trigger state v: in any
    linearization, the ops between X and the next op that changes the state
    are legal in v; if each kept op is blind or has a trigger state and, when
    ok, is illegal outside it (or is info, and may be left out), those ops are
    all info (left out) or blind, and the op that next changes the state is
    blind, so deleting X leaves a linearization. If some kept op could behave
    differently (an ok op legal outside its trigger state, like a failed cas,
    or an op with no trigger state), nothing is removable.
    """
    referenced: set[object] = set()
    for position, op in enumerate(ops):
        if not kept[position]:
            continue
        traits = model.traits(op)
        if traits.blind:
            continue
        if traits.trigger_state is None:
            return []
        if op.status == "ok" and not traits.legal_only_in_trigger_state:
            return []
        referenced.add(traits.trigger_state[0])
    init = model.init()
    return [
        position
        for position, op in enumerate(ops)
        if kept[position] and model.traits(op).blind and model.step(init, op)[1] not in referenced
    ]


# --------------------------------------------------------------------------- API


def check_history(
    ops: Iterable[Operation],
    model: Model | None = None,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    cache_entries_max: int = SEARCH_CACHE_ENTRIES_MAX,
    operations_max: int = HISTORY_OPERATIONS_MAX,
) -> CheckResult:
    """Check a history key by key against `model` (a register per key by default).

    `fail` ops are dropped, and so are `info` ops that the model calls read-only.
    With `time_budget_s`, the whole check (every key and the witness) stops once
    `clock` (monotonic seconds) passes the budget, and undecided keys are
    ``unknown``. Raises `HistoryError` for a malformed history or one longer
    than `operations_max`.
    """
    if model is None:
        model = RegisterModel()
    deadline = None if time_budget_s is None else clock() + time_budget_s
    budget = _Budget(deadline, clock)
    by_key: dict[str, list[Operation]] = {}
    counted = 0
    for op in ops:
        if not isinstance(op, Operation):
            raise HistoryError(f"expected an Operation, got {type(op).__name__}")
        counted += 1
        if counted > operations_max:
            raise HistoryError(f"history holds more than {operations_max} operations")
        if op.status == "fail" or (op.status == "info" and model.traits(op).read_only):
            continue
        by_key.setdefault(op.key, []).append(op)

    per_key: dict[str, KeyResult] = {}
    for key in sorted(by_key):
        key_ops = by_key[key]
        outcome = _check_key_ops(key_ops, model, budget, cache_entries_max)
        if outcome.verdict == "no" and outcome.proof:
            witness = tuple(sorted(outcome.proof, key=lambda op: (op.call, op.process)))
            per_key[key] = KeyResult(
                key, "no", len(key_ops), outcome.reason, witness, outcome.stuck_operation
            )
        elif outcome.verdict == "no":
            witness, stuck = _minimise_witness(key_ops, model, budget, cache_entries_max, outcome)
            per_key[key] = KeyResult(key, "no", len(key_ops), outcome.reason, witness, stuck)
        else:
            per_key[key] = KeyResult(key, outcome.verdict, len(key_ops), outcome.reason)

    failed = [result for result in per_key.values() if result.verdict == "no"]
    if failed:
        return CheckResult("no", per_key, failed[0].key, failed[0].witness)
    if any(result.verdict == "unknown" for result in per_key.values()):
        return CheckResult("unknown", per_key)
    return CheckResult("yes", per_key)


def _event_field(event: Mapping[str, object], name: str, number: int) -> object:
    if name not in event:
        raise HistoryError(f"event {number}: missing field {name!r}")
    return event[name]


def history_from_events(
    events: Iterable[Mapping[str, object]], *, operations_max: int = HISTORY_OPERATIONS_MAX
) -> list[Operation]:
    """Pair invoke/completion events (one JSON object per line in chaos logs) into ops.

    Each event is ``{"process", "type": "invoke"|"ok"|"fail"|"info", "f": kind,
    "key", "value", "expected", "output", "time"}``; ``value`` and ``expected``
    are taken from the invoke, ``output`` from the completion. Each invoke pairs
    with the next completion of the same process; an invoke left without one is
    ``info``. Ops are returned in invoke order. Raises `HistoryError` for any
    malformed event.
    """
    pending: dict[int, tuple[int, Mapping[str, object], int]] = {}
    slots: list[Operation | None] = []

    def build(
        invoke: Mapping[str, object], completion: Mapping[str, object] | None, number: int
    ) -> Operation:
        status = "info" if completion is None else str(completion["type"])
        ret = None if completion is None else completion["time"]
        try:
            # The casts are checked at run time by Operation itself.
            return Operation(
                process=cast(int, invoke["process"]),
                kind=cast(str, invoke["f"]),
                key=cast(str, invoke["key"]),
                value=invoke.get("value"),
                expected=invoke.get("expected"),
                output=None if completion is None else completion.get("output"),
                call=cast(int, invoke["time"]),
                ret=cast("int | None", ret),
                status=status,
            )
        except HistoryError as error:
            raise HistoryError(f"event {number}: {error}") from None

    for number, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise HistoryError(f"event {number}: expected an object, got {type(event).__name__}")
        raw_process = _event_field(event, "process", number)
        if not _is_int(raw_process):
            raise HistoryError(f"event {number}: process must be an int, got {raw_process!r}")
        process = cast(int, raw_process)
        event_type = _event_field(event, "type", number)
        # Checked before any set lookup: a JSON list or object is not hashable.
        if not isinstance(event_type, str) or (
            event_type != _INVOKE and event_type not in _COMPLETION_TYPES
        ):
            raise HistoryError(f"event {number}: unknown event type {event_type!r}")
        moment = _event_field(event, "time", number)
        if not _is_int(moment):
            raise HistoryError(f"event {number}: time must be an int, got {moment!r}")
        if event_type == _INVOKE:
            for name in ("f", "key"):
                _event_field(event, name, number)
            if process in pending:
                raise HistoryError(
                    f"event {number}: process {process} invoked again before its previous "
                    "operation completed"
                )
            if len(slots) >= operations_max:
                raise HistoryError(f"history holds more than {operations_max} operations")
            pending[process] = (len(slots), event, number)
            slots.append(None)
        else:
            if process not in pending:
                raise HistoryError(
                    f"event {number}: process {process} completed an operation it never invoked"
                )
            slot, invoke, _ = pending.pop(process)
            for name in ("f", "key"):
                if name in event and event[name] != invoke[name]:
                    raise HistoryError(
                        f"event {number}: completion {name}={event[name]!r} does not match "
                        f"its invoke's {invoke[name]!r}"
                    )
            slots[slot] = build(invoke, event, number)
    for slot, invoke, number in pending.values():
        slots[slot] = build(invoke, None, number)
    return [op for op in slots if op is not None]
