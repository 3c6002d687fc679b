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

Three refinements keep it fast on the histories kvraft produces:

* Read-only operations (reads, and CAS that reported failure) that are legal in
  the current state are linearized at once, without a choice point: moving a
  legal read-only op earlier to "now" never invalidates a linearization, because
  it does not change the state and every op still pending returned after it
  was called.
* ``info`` operations (outcome unknown) have no return event: they may take
  effect at any time after their call, or never. They are offered as choices
  only after the ``ok`` candidates, and only if they change the state
  (an ``info`` op that leaves the state alone is the same as one that never
  happened).
* A state with fewer ``info`` operations spent can do everything a state with
  more spent can, so a dead end recorded for (bitset of ``ok`` ops, state, set
  of ``info`` ops) also condemns any state with the same ``ok`` bitset and
  model state and a superset of those ``info`` ops. Only finished dead ends
  are recorded, which keeps this pruning sound.

Events at the same timestamp are treated as overlapping (calls sort before
returns), so a violation is never reported on the strength of a tie.

For a non-linearizable key the checker also returns a witness: a sub-history
that is itself non-linearizable and that implies the whole history is not.
It is cut at the earliest return time for which the prefix still fails (ops
still running at the cut are reported as ``info``, which only loosens them),
and then read-only operations are removed while the remainder still fails;
both steps are sound reductions, so the witness never shows a violation that
the full history does not have.

Pure: no IO and no wall clock; the optional time budget reads an injected
monotonic clock.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "CLOCK_READ_INTERVAL_STEPS",
    "HISTORY_OPERATIONS_MAX",
    "OPERATION_KINDS",
    "OPERATION_STATUSES",
    "SEARCH_CACHE_ENTRIES_MAX",
    "WITNESS_MINIMISE_CHECKS_MAX",
    "CheckResult",
    "HistoryError",
    "KeyResult",
    "Model",
    "Operation",
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
``unknown``. Each entry costs roughly a hundred bytes plus the non-contiguous
part of the bitset, so this caps one key's cache at a few hundred MiB."""

CLOCK_READ_INTERVAL_STEPS = 1024
"""Search steps between two reads of the budget clock: often enough to stop
within milliseconds of the deadline, rare enough that the clock costs nothing."""

WITNESS_MINIMISE_CHECKS_MAX = 100
"""Most re-checks spent shrinking the witness of one non-linearizable key; the
witness is sound after any number of them, only less small."""

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
        value: the value written (write) or the new value (cas); else ignored.
        expected: cas only: the value it compares against (None means absent).
        output: read: the value returned (None means absent); cas: True if it
            applied, False if not; ignored for write and delete.
        call: when the client sent it (logical ticks or monotonic ns).
        ret: when the client got the answer; None when the outcome is unknown.
        status: ``ok`` (happened once between call and ret, with that output),
            ``fail`` (definitely did not happen) or ``info`` (may have taken
            effect at any time after call, or never).
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

    def read_only(self, op: Operation) -> bool:
        """True if `op` never changes any state it is legal in.

        The checker linearizes such ops as soon as they are legal and drops them
        when their outcome is unknown; answering False is always safe, only slower.
        """
        ...

    def blind(self, op: Operation) -> bool:
        """True if `op` is legal in every state and its next state ignores the state.

        (A plain overwrite.) The checker never tries an unknown-outcome op just to
        influence such an op; answering False is always safe, only slower.
        """
        ...


class _UnobservedValue:
    """The one value standing for every value that no operation of the key observes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unobserved value>"


_UNOBSERVED = _UnobservedValue()


class RegisterModel:
    """A single register: the state is the current value, None when absent.

    `specialise` returns a register in which every written value that no read
    returns and no cas compares against is replaced by one token: such values
    can never make an op legal or illegal, and merging them lets the search
    treat the states they lead to as one.
    """

    __slots__ = ("_observed_values",)

    def __init__(self, observed_values: frozenset[object] | None = None) -> None:
        # None: every value is kept as it is (no specialisation).
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

    def read_only(self, op: Operation) -> bool:
        return op.kind == "read" or (op.kind == "cas" and op.status == "ok" and op.output is False)

    def blind(self, op: Operation) -> bool:
        return op.kind in ("write", "delete")


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    Fields:
        key: the key.
        verdict: ``yes``, ``no`` or ``unknown``.
        operation_count: the ops of this key that were checked (after dropping
            ``fail`` ops and ``info`` read-only ops).
        reason: why the verdict is ``no`` or ``unknown``; empty for ``yes``.
        witness: for ``no``: a non-linearizable sub-history of this key, in call
            order (ops still running at the cut are shown as ``info``).
        stuck_operation: for ``no``: in the witness, the op that had to take
            effect before it returned but could not at the deepest point the
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
        per_key: each key's result.
        key: for ``no``: the first (in sorted order) non-linearizable key.
        witness: for ``no``: that key's witness (see `KeyResult.witness`).
    """

    verdict: Verdict
    per_key: Mapping[str, KeyResult] = field(default_factory=dict)
    key: str | None = None
    witness: tuple[Operation, ...] = ()

    def describe(self) -> str:
        """A human-readable summary, with the witness for a violation."""
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
            for op in self.witness:
                marker = "  <- cannot take effect in time" if op is stuck else ""
                lines.append("  " + format_operation(op) + marker)
        return "\n".join(lines)


# --------------------------------------------------------------------------- search


class _BudgetExhausted(Exception):
    """The time budget ran out mid-search."""


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict
    reason: str = ""
    stuck_operation: Operation | None = None


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
        choices: list[tuple[int, Hashable]],
        cache_key: tuple[int, int, Hashable] | None,
        block_node: int,
    ) -> None:
        self.state = state
        self.read_only_lifted = read_only_lifted
        # (op, next state); ok ops as their index, info ops as -(index + 1).
        self.choices = choices
        self.position = 0
        self.chosen = 0
        # None marks a frame already known dead: it must not be recorded again.
        self.cache_key = cache_key
        # The first return event: its op must take effect before anything later.
        self.block_node = block_node
        self.info_offered = cache_key is None


def _search_key(
    ops: Sequence[Operation], model: Model, budget: _Budget, cache_entries_max: int
) -> _Outcome:
    """Decide whether the ops of one key are linearizable (see the module docstring)."""
    ok_ops = sorted((op for op in ops if op.status == "ok"), key=lambda op: (op.call, op.ret))
    info_ops = sorted((op for op in ops if op.status == "info"), key=lambda op: op.call)
    ok_count = len(ok_ops)
    if ok_count == 0:
        return _Outcome("yes")
    model = model.specialise(ops)
    info_calls = [op.call for op in info_ops]
    info_blind = [model.blind(op) for op in info_ops]
    step = model.step
    read_only = [model.read_only(op) for op in ok_ops]

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

    def candidate_nodes(block_node: int) -> list[int]:
        # Every node before the first return event is the call of a linearizable op.
        nodes = []
        node = following[0]
        while node != block_node:
            nodes.append(node)
            node = following[node]
        return nodes

    def order_choices(
        choices: list[tuple[int, Hashable]], blocked_index: int
    ) -> list[tuple[int, Hashable]]:
        # Heuristic only (every choice is tried before giving up): the blocked op
        # itself, or an op that makes it legal, is most likely to come next.
        blocked = ok_ops[blocked_index]
        first = [
            choice
            for choice in choices
            if choice[0] == blocked_index or step(choice[1], blocked)[0]
        ]
        if not first or len(first) == len(choices):
            return choices
        return first + [choice for choice in choices if choice not in first]

    def unlift(index: int) -> None:
        # Reverse order of `lift`: the unlinked nodes still point at their old neighbours.
        node = return_node[index]
        following[preceding[node]] = node
        preceding[following[node]] = node
        node = call_node[index]
        following[preceding[node]] = node
        preceding[following[node]] = node

    state = model.init()
    done_ok = 0
    done_info = 0
    info_spent = bytearray(len(info_ops))  # done_info as flags, cheaper to test one by one
    remaining_ok = ok_count
    frames: list[_Frame] = []
    # Dead ends: (lowest not-done ok index, done ok bits above it, state) -> info sets.
    dead_ends: dict[tuple[int, int, Hashable], list[int]] = {}
    dead_end_count = 0
    deepest = -1
    stuck_index = -1
    steps = 0
    descend = True

    while True:
        steps += 1
        if steps % CLOCK_READ_INTERVAL_STEPS == 0 and budget.exhausted():
            raise _BudgetExhausted
        if descend:
            descend = False
            # Read-only closure: one pass suffices because the state does not change.
            lifted: list[int] = []
            choices: list[tuple[int, Hashable]] = []
            node = following[0]
            while node_is_call[node]:
                index = node_op[node]
                if read_only[index]:
                    if step(state, ok_ops[index])[0]:
                        lift(index)
                        lifted.append(index)
                        done_ok |= 1 << index
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
                return _Outcome("yes")
            # `node` is now the first return event: the op that blocks progress.
            if len(choices) > 1:
                choices = order_choices(choices, node_op[node])
            done_count = ok_count - remaining_ok
            if done_count > deepest:
                deepest = done_count
                stuck_index = node_op[node]
            lowest_open = (~done_ok & (done_ok + 1)).bit_length() - 1
            cache_key: tuple[int, int, Hashable] | None = (
                lowest_open,
                done_ok >> lowest_open,
                state,
            )
            spent_sets = dead_ends.get(cache_key)  # type: ignore[arg-type]
            if spent_sets is not None and any(
                (spent | done_info) == done_info for spent in spent_sets
            ):
                choices = []
                cache_key = None
            frames.append(_Frame(state, lifted, choices, cache_key, node))

        frame = frames[-1]
        if frame.position == len(frame.choices) and not frame.info_offered:
            # Info ops go last: the ok ops must be linearized anyway, info ops need not be.
            frame.info_offered = True
            block_node = frame.block_node
            frame.choices.extend(
                _info_choices(
                    info_ops,
                    bisect.bisect_right(info_calls, node_time[block_node]),
                    info_spent,
                    state,
                    step,
                    ok_ops[node_op[block_node]],
                    [ok_ops[node_op[node]] for node in candidate_nodes(block_node)],
                    info_blind,
                )
            )
        if frame.position < len(frame.choices):
            chosen, next_state = frame.choices[frame.position]
            frame.position += 1
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
                return _Outcome("unknown", f"search cache exceeded {cache_entries_max} states")
        for index in reversed(frame.read_only_lifted):
            unlift(index)
            done_ok ^= 1 << index
        remaining_ok += len(frame.read_only_lifted)
        frames.pop()
        if not frames:
            stuck = ok_ops[stuck_index]
            return _Outcome(
                "no",
                f"{format_operation(stuck)} cannot take effect before it returned",
                stuck,
            )
        parent = frames[-1]
        chosen = parent.chosen
        if chosen >= 0:
            unlift(chosen)
            done_ok ^= 1 << chosen
            remaining_ok += 1
        else:
            done_info ^= 1 << (-chosen - 1)
            info_spent[-chosen - 1] = 0
        state = parent.state


def _info_choices(
    info_ops: Sequence[Operation],
    available_count: int,
    info_spent: bytearray,
    state: Hashable,
    step: Callable[[Hashable, Operation], tuple[bool, Hashable]],
    blocked: Operation,
    ok_candidates: Sequence[Operation],
    info_blind: Sequence[bool],
) -> list[tuple[int, Hashable]]:
    """The info ops worth linearizing now: those that matter to an op that could follow.

    Normal form: take any linearization. An info op that does not change the
    state where it stands can be dropped (it may never have happened). An info
    op W followed by an op Y that W does not affect (Y is legal without W and
    reaches the same state) can be moved after Y, or dropped when that leaves
    the state as it was. Repeating this gives a linearization in which every
    info op changes the state and is immediately followed by an op it affects:
    an ok op legal only after W or with another next state, or an info op that
    changes the state after W and did not do the same without W. Such an op is
    a candidate now, so it suffices to offer W when one exists. Ops that affect
    `blocked` (the op whose return blocks progress) are offered first.

    Symmetry: blind info ops with the same effect that are both available now
    stay available forever, so they are interchangeable and only the earliest
    not yet spent is offered.
    """
    pending_info = [index for index in range(available_count) if not info_spent[index]]
    ok_targets = [(op, *step(state, op)) for op in ok_candidates]
    info_targets = [
        (info_ops[index], *step(state, info_ops[index]))
        for index in pending_info
        if not info_blind[index]
    ]
    blind_effects_offered: set[Hashable] = set()
    urgent: list[tuple[int, Hashable]] = []
    later: list[tuple[int, Hashable]] = []
    for index in pending_info:
        writer = info_ops[index]
        legal, next_state = step(state, writer)
        if not legal or next_state == state:
            continue
        if info_blind[index]:
            if next_state in blind_effects_offered:
                continue
            blind_effects_offered.add(next_state)
        affects: Operation | None = None
        for target, legal_before, state_before in ok_targets:
            legal_after, state_after = step(next_state, target)
            if legal_after and (not legal_before or state_after != state_before):
                affects = target
                if target is blocked:
                    break
        if affects is None:
            for target, legal_before, state_before in info_targets:
                if target is writer:
                    continue
                legal_after, state_after = step(next_state, target)
                if (
                    legal_after
                    and state_after != next_state
                    and (not legal_before or state_after != state_before)
                ):
                    affects = target
                    break
        if affects is not None:
            (urgent if affects is blocked else later).append((-index - 1, next_state))
    return urgent + later


def _check_key_ops(
    ops: Sequence[Operation], model: Model, budget: _Budget, cache_entries_max: int
) -> _Outcome:
    if budget.exhausted():
        return _Outcome("unknown", "time budget exhausted")
    try:
        return _search_key(ops, model, budget, cache_entries_max)
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
            if model.read_only(op):
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
    best: list[Operation] = [op for op in ops if not (op.status == "info" and model.read_only(op))]
    stuck = first_outcome.stuck_operation

    def fails(candidate: list[Operation]) -> _Outcome | None:
        nonlocal checks_left
        checks_left -= 1
        outcome = _check_key_ops(candidate, model, budget, cache_entries_max)
        return outcome if outcome.verdict == "no" else None

    # 1. The earliest cut whose prefix still fails (failing is monotone in the cut).
    cut_times = sorted({op.ret for op in best if op.status == "ok" and op.ret is not None})
    low, high = 0, len(cut_times) - 1  # the prefix cut at cut_times[high] is known to fail
    while low < high and checks_left > 0 and not budget.exhausted():
        middle = (low + high) // 2
        outcome = fails(_truncate(best, cut_times[middle], model))
        if outcome is not None:
            high = middle
            stuck = outcome.stuck_operation
        else:
            low = middle + 1
    if cut_times:
        best = _truncate(best, cut_times[high], model)

    # 2. Drop read-only ok ops in shrinking chunks while the rest still fails
    #    (removing an op that never changes the state cannot create a violation).
    removable = [i for i, op in enumerate(best) if op.status == "ok" and model.read_only(op)]
    kept = [True] * len(best)
    chunk = max(1, len(removable) // 2)
    while removable and checks_left > 0 and not budget.exhausted():
        start = 0
        while start < len(removable) and checks_left > 0 and not budget.exhausted():
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
    witness = sorted(
        (op for i, op in enumerate(best) if kept[i]),
        key=lambda op: (op.call, op.process),
    )
    return tuple(witness), stuck


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
        if op.status == "fail" or (op.status == "info" and model.read_only(op)):
            continue
        by_key.setdefault(op.key, []).append(op)

    per_key: dict[str, KeyResult] = {}
    for key in sorted(by_key):
        key_ops = by_key[key]
        outcome = _check_key_ops(key_ops, model, budget, cache_entries_max)
        if outcome.verdict == "no":
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
            return Operation(
                process=invoke["process"],  # type: ignore[arg-type]
                kind=invoke["f"],  # type: ignore[arg-type]
                key=invoke["key"],  # type: ignore[arg-type]
                value=invoke.get("value"),
                expected=invoke.get("expected"),
                output=None if completion is None else completion.get("output"),
                call=invoke["time"],  # type: ignore[arg-type]
                ret=ret,  # type: ignore[arg-type]
                status=status,
            )
        except HistoryError as error:
            raise HistoryError(f"event {number}: {error}") from None

    for number, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise HistoryError(f"event {number}: expected an object, got {type(event).__name__}")
        process = _event_field(event, "process", number)
        if not _is_int(process):
            raise HistoryError(f"event {number}: process must be an int, got {process!r}")
        assert isinstance(process, int)
        event_type = _event_field(event, "type", number)
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
        elif event_type in _COMPLETION_TYPES:
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
        else:
            raise HistoryError(f"event {number}: unknown event type {event_type!r}")
    for slot, invoke, number in pending.values():
        slots[slot] = build(invoke, None, number)
    return [op for op in slots if op is not None]
