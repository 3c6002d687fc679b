"""The watch check: do the recorded watch streams keep the watch guarantees?

What is checked
---------------
The properties are those of etcd's watch API guarantees
(https://etcd.io/docs/v3.6/learning/api_guarantees/#watch-apis) as its robustness suite
validates them (``tests/robustness/validate/watch.go`` in etcd-io/etcd: ordered, unique,
atomic, bookmarkable, reliable, resumable, plus the previous-revision check), restated for
kvraft's NDJSON stream (``GET /v1/watch?prefix=P&start_revision=R&progress_s=S``):

* ``protocol``: every line the watcher received was an object of the contract (a line
  that is not is recorded by the watcher as a stream that ended ``malformed``);
* ``ordered``: within one watcher's sequence of streams (each resumed from the last
  revision seen + 1) event revisions never go back;
* ``unique``: no event (revision, key) is delivered twice to one watcher;
* ``atomic``: the events of one revision come out together: never interleaved with
  another revision's, and a stream that delivered some of a revision's events and went
  past it delivered all of them (as far as observable: all the events of that revision
  known from the client history and the other watchers);
* ``bookmarkable``: after ``{"type": "progress", "revision": P}`` no event at or below P
  arrives on that stream;
* ``resumable``: a watch from revision S starts with the first matching event at or after
  S: nothing below S, and no known event skipped before the first one it delivers (nor
  one of the first revision's own events, when the stream covered that revision);
* ``reliable``: no gap: every known event (an acknowledged write, or an event another
  watcher received) on a watched key whose revision a stream *covered* is in that stream;
  and every event agrees with the client history: a put carries the value a client wrote
  to that key, never one whose write was answered ``fail``, at the revision the write was
  acknowledged with; the revision of an acknowledged write carries that write and no
  other; a value is applied at one revision only. With ``caught_up_required`` (the cluster
  converged and the watchers kept streaming after it), each watcher's last stream must
  cover the last acknowledged revision;
* ``agreement``: every watcher, on every node, sees the same revision carry the same
  type, key and value;
* ``prev_revision``: an event's ``prev_revision`` is below its revision, not below the
  key's last known earlier change (null only if that was a delete), and never the
  revision of another key's change.

A stream *covers* the revisions from its ``start_revision`` through the highest revision
it vouched for: a progress announcement, the revision of a ``lagged`` end, or, for any
event, the revision before it (a revision is only known complete once something after it
arrived). A stream answered ``410 compacted`` covers nothing; the watcher re-lists and
resumes above the compaction, which is reported, not a violation.

Inputs are the watch log (`WATCH_FILE_NAME`, written by `kvraft.chaos.watchers`) and the
client history (`kvraft.chaos.history`), whose completions of acknowledged writes carry the
``revision`` the node answered with. Pure: events in, verdict out. Malformed records
raise `kvraft.linearizability.HistoryError`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvraft.chaos.bank import BANK_TRANSFER
from kvraft.chaos.checks import SET_ADD, pair_operations
from kvraft.chaos.locks import LOCK_WRITE
from kvraft.linearizability import HistoryError

__all__ = [
    "PROPERTIES",
    "STREAM_ENDS",
    "VIOLATIONS_KEPT_MAX",
    "WATCH_FILE_NAME",
    "WRITE_FUNCTIONS",
    "WatchCheck",
    "WatchItem",
    "WatchStream",
    "WatchViolation",
    "WriteRecord",
    "check_watch",
    "parse_watch_item",
    "streams_from_events",
    "writes_from_history",
]

WATCH_FILE_NAME = "watch.jsonl"

PROPERTIES = (
    "protocol",
    "ordered",
    "unique",
    "atomic",
    "bookmarkable",
    "resumable",
    "reliable",
    "agreement",
    "prev_revision",
)
"""The properties checked; a violation's rank among them breaks ties in reporting order."""

STREAM_ENDS = frozenset(
    {"lagged", "compacted", "error", "refused", "closed", "malformed", "stopped", "unsupported"}
)
"""How a stream can end: ``lagged`` (the node's history moved on; resume from its revision
+ 1), ``compacted`` (410 before any event), ``error`` (the connection broke or went
silent), ``refused`` (no stream: connection refused or a non-200 answer), ``closed`` (the
node ended the stream without a ``lagged`` line), ``malformed`` (a line outside the
contract), ``stopped`` (the harness stopped it), ``unsupported`` (404: no watch here)."""

WRITE_FUNCTIONS = frozenset({"write", "cas", SET_ADD})
"""The history's operations that write one key (the value is the invoke's ``value``)."""

VIOLATIONS_KEPT_MAX = 1000
"""The most violations kept (the earliest by revision); the counts cover all of them."""

_RANK = {name: rank for rank, name in enumerate(PROPERTIES)}


@dataclass(frozen=True, slots=True)
class WatchItem:
    """One line of a watch stream: ``put``/``delete`` (an event) or ``progress``.

    `value` is a put's value as text (see `kvraft.chaos.workload.decode_value`)."""

    type: str
    revision: int
    key: str | None = None
    value: str | None = None
    prev_revision: int | None = None

    @property
    def is_event(self) -> bool:
        return self.type in ("put", "delete")


@dataclass(frozen=True, slots=True)
class WatchStream:
    """One watch request and what came of it, in the order received.

    Fields:
        watcher: the watcher (one logical subscriber, resuming from stream to stream).
        stream: its number within the watcher's sequence (0, 1, ...).
        node: the node asked.
        prefix: the keys watched.
        start_revision: the ``start_revision`` asked for.
        items: the events and progress announcements received, in order.
        end: how it ended (one of `STREAM_ENDS`); ``stopped`` if the log has no end.
        end_revision: the ``lagged`` revision, or the ``compact_revision`` of a 410.
        detail: what the watcher said about the end.
    """

    watcher: int
    stream: int
    node: int
    prefix: str
    start_revision: int
    items: tuple[WatchItem, ...]
    end: str = "stopped"
    end_revision: int | None = None
    detail: str = ""

    @property
    def events(self) -> list[WatchItem]:
        return [item for item in self.items if item.is_event]

    @property
    def covered_through(self) -> int:
        """The highest revision this stream vouched for (see the module docstring)."""
        through = self.start_revision - 1
        for item in self.items:
            through = max(through, item.revision if item.type == "progress" else item.revision - 1)
        if self.end == "lagged" and self.end_revision is not None:
            through = max(through, self.end_revision)
        return through

    def covers(self, revision: int, key: str) -> bool:
        return (
            key.startswith(self.prefix)
            and self.start_revision <= revision <= self.covered_through
            and self.end != "compacted"
        )


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One client write from the history: `value` None is a delete; `status` ok/fail/info
    (a cas that did not apply is ``fail``); `revision` as answered (ok writes only)."""

    key: str
    value: str | None
    status: str
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class WatchViolation:
    """A broken property: which, where (watcher, stream, node, revision) and what."""

    property: str
    watcher: int
    stream: int
    node: int
    revision: int
    detail: str

    def describe(self) -> str:
        return (
            f"{self.property}: watcher {self.watcher} stream {self.stream} (node {self.node}) "
            f"at revision {self.revision}: {self.detail}"
        )


@dataclass(frozen=True, slots=True)
class WatchCheck:
    """The watch check's result.

    Fields:
        watchers, streams, events, progress: what was recorded (events and progress lines
            over every stream).
        resumes: streams that continued an earlier stream of the same watcher.
        compactions: streams answered ``410 compacted`` (the watcher re-listed).
        relists: re-lists done after a compaction.
        ends: how many streams ended each way.
        highest_revision: the highest revision any watcher vouched for.
        violations: the earliest violations (by revision, then property), at most
            `VIOLATIONS_KEPT_MAX`.
        counts: violations per property (all of them).
        skipped: why nothing was checked (the nodes do not serve watches), else None.
    """

    watchers: int
    streams: int
    events: int
    progress: int
    resumes: int
    compactions: int
    relists: int
    ends: Mapping[str, int]
    highest_revision: int
    violations: tuple[WatchViolation, ...]
    counts: Mapping[str, int] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def verdict(self) -> str:
        if self.violations:
            return "violated"
        return "skipped" if self.skipped is not None else "ok"

    @property
    def first(self) -> WatchViolation | None:
        return self.violations[0] if self.violations else None


# --- reading the logs ------------------------------------------------------------------------


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _decode_value(value_b64: str) -> str | None:
    try:
        raw = base64.b64decode(value_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<undecodable {raw[:64].hex()}>"


def parse_watch_item(obj: object) -> WatchItem | str:
    """One NDJSON line's object as a `WatchItem` (``lagged`` included, as a progress-like
    item of type ``lagged``), or why it is outside the contract."""
    if not isinstance(obj, Mapping):
        return f"expected a JSON object, got {type(obj).__name__}"
    kind = obj.get("type")
    revision = _int(obj.get("revision"))
    if revision is None or revision < 0:
        return f"'revision' must be a non-negative integer, got {obj.get('revision')!r}"
    if kind in ("progress", "lagged"):
        return WatchItem(str(kind), revision)  # 0: nothing applied yet
    if revision == 0:
        return "an event's 'revision' must be positive, got 0"
    if kind not in ("put", "delete"):
        return f"unknown type {kind!r}"
    key = obj.get("key")
    if not isinstance(key, str):
        return f"'key' must be a string, got {key!r}"
    prev = obj.get("prev_revision")
    if prev is not None and (_int(prev) is None or prev < 1):
        return f"'prev_revision' must be null or a positive integer, got {prev!r}"
    value = None
    if kind == "put":
        value_b64 = obj.get("value_b64")
        value = _decode_value(value_b64) if isinstance(value_b64, str) else None
        if value is None:
            return f"'value_b64' must be base64, got {value_b64!r}"[:200]
    return WatchItem(str(kind), revision, key, value, prev)


def streams_from_events(events: Iterable[Mapping[str, Any]]) -> tuple[list[WatchStream], int]:
    """The streams of a watch log, in the order they were opened, and the number of
    re-lists. Records: ``open`` (watcher, stream, node, prefix, start_revision), ``item``
    (watcher, stream, item: the object received), ``end`` (watcher, stream, how, revision,
    detail) and ``relist``."""
    opened: dict[tuple[int, int], dict[str, Any]] = {}
    order: list[tuple[int, int]] = []
    relists = 0
    for number, event in enumerate(events):
        kind = event.get("type")
        if kind == "relist":
            relists += 1
            continue
        watcher, stream = _int(event.get("watcher")), _int(event.get("stream"))
        if watcher is None or stream is None:
            raise HistoryError(f"watch record {number}: watcher and stream must be integers")
        ident = (watcher, stream)
        if kind == "open":
            node, start = _int(event.get("node")), _int(event.get("start_revision"))
            prefix = event.get("prefix")
            if node is None or start is None or start < 1 or not isinstance(prefix, str):
                raise HistoryError(
                    f"watch record {number}: an open needs node, prefix and start_revision >= 1"
                )
            if ident in opened:
                raise HistoryError(f"watch record {number}: stream {ident} opened twice")
            opened[ident] = {"node": node, "prefix": prefix, "start": start, "items": []}
            order.append(ident)
            continue
        record = opened.get(ident)
        if record is None:
            raise HistoryError(f"watch record {number}: stream {ident} was never opened")
        if "end" in record:
            raise HistoryError(f"watch record {number}: stream {ident} already ended")
        if kind == "item":
            item = parse_watch_item(event.get("item"))
            if isinstance(item, str) or item.type == "lagged":
                why = item if isinstance(item, str) else "a lagged line is recorded as an end"
                raise HistoryError(f"watch record {number}: {why}")
            record["items"].append(item)
        elif kind == "end":
            how = event.get("how")
            if how not in STREAM_ENDS:
                raise HistoryError(f"watch record {number}: unknown end {how!r}")
            record["end"] = how
            record["end_revision"] = _int(event.get("revision"))
            record["detail"] = str(event.get("detail") or "")[:300]
        else:
            raise HistoryError(f"watch record {number}: unknown record type {kind!r}")
    streams = [
        WatchStream(
            watcher=watcher,
            stream=stream,
            node=record["node"],
            prefix=record["prefix"],
            start_revision=record["start"],
            items=tuple(record["items"]),
            end=record.get("end", "stopped"),
            end_revision=record.get("end_revision"),
            detail=record.get("detail", ""),
        )
        for (watcher, stream), record in ((ident, opened[ident]) for ident in order)
    ]
    return streams, relists


def writes_from_history(events: Iterable[Mapping[str, Any]]) -> list[WriteRecord]:
    """The client writes of a chaos history (`WRITE_FUNCTIONS`, each put of a bank transfer,
    `kvraft.chaos.bank`, and of a fenced lock write, `kvraft.chaos.locks`), with their
    outcomes."""
    events = list(events)
    writes = _bank_writes(events)
    for invoke, completion in pair_operations(events, WRITE_FUNCTIONS):
        key, value = invoke.get("key"), invoke.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise HistoryError(f"a write needs a string key and value, got {key!r}={value!r}")
        status = "info" if completion is None else str(completion.get("type"))
        revision = None
        if completion is not None and status == "ok":
            if invoke.get("f") == "cas" and completion.get("output") is not True:
                status = "fail"  # answered 412: the condition failed, nothing was applied
            else:
                revision = _int(completion.get("revision"))
        writes.append(WriteRecord(key, value, status, revision))
    return writes


def _bank_writes(events: Iterable[Mapping[str, Any]]) -> list[WriteRecord]:
    """A transfer writes its keys at one revision (one transaction); one whose compare
    failed wrote nothing (``fail``). A fenced lock write is a transaction of the same shape
    (its value maps the register and its journal key to the value; refused, 412, is
    ``fail``)."""
    writes = []
    for invoke, completion in pair_operations(events, frozenset({BANK_TRANSFER, LOCK_WRITE})):
        values = invoke.get("value")
        if not isinstance(values, dict):
            raise HistoryError(f"a transfer needs its writes, got {values!r}")
        status = "info" if completion is None else str(completion.get("type"))
        revision = None
        if completion is not None and status == "ok":
            if completion.get("output") is not True:
                status = "fail"
            else:
                revision = _int(completion.get("revision"))
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise HistoryError(f"a transfer writes strings, got {key!r}={value!r}")
            writes.append(WriteRecord(key, value, status, revision))
    return writes


# --- the check -------------------------------------------------------------------------------


class _Findings:
    def __init__(self) -> None:
        self.all: list[WatchViolation] = []

    def add(self, name: str, stream: WatchStream, revision: int, detail: str) -> None:
        self.all.append(
            WatchViolation(name, stream.watcher, stream.stream, stream.node, revision, detail)
        )


def _describe(item: WatchItem) -> str:
    if item.type == "put":
        return f"put {item.key}={item.value!r}"
    return f"{item.type} {item.key}"


def check_watch(
    streams: Sequence[WatchStream],
    writes: Sequence[WriteRecord],
    *,
    relists: int = 0,
    caught_up_required: bool = False,
    skipped: str | None = None,
) -> WatchCheck:
    """Check every property of the module docstring over `streams` against `writes`."""
    found = _Findings()
    by_value: dict[tuple[str, str], WriteRecord] = {}
    # A revision may hold several acknowledged writes: a transaction's.
    acked_at: dict[int, dict[str, WriteRecord]] = defaultdict(dict)
    deletes: set[str] = set()
    for write in writes:
        if write.value is None:
            deletes.add(write.key)
        else:
            by_value.setdefault((write.key, write.value), write)
        if write.status == "ok" and write.revision is not None:
            acked_at[write.revision][write.key] = write

    # What happened at each revision, as far as anyone can tell: (revision, key) -> item,
    # from the events received (the first sighting) and the acknowledged writes.
    known: dict[tuple[int, str], WatchItem] = {}
    for stream in streams:
        for item in stream.events:
            assert item.key is not None
            seen = known.setdefault((item.revision, item.key), item)
            if (seen.type, seen.value) != (item.type, item.value):
                found.add(
                    "agreement",
                    stream,
                    item.revision,
                    f"{_describe(item)}, but another watcher got {_describe(seen)}",
                )
    for revision, acked in acked_at.items():
        for write in acked.values():
            if write.value is not None:
                known.setdefault(
                    (revision, write.key), WatchItem("put", revision, write.key, write.value)
                )
    keys_at: dict[int, set[str]] = defaultdict(set)
    per_key: dict[str, list[int]] = defaultdict(list)
    for revision, key in known:
        keys_at[revision].add(key)
        per_key[key].append(revision)
    # An event's prev_revision names a put of its key at that revision: a change that every
    # stream covering it must deliver, even one no watcher recorded and no client saw
    # acknowledged (a transaction of unknown outcome, whose one key a skipping watcher
    # missed: the stream then began partway into that revision).
    for stream in streams:
        for item in stream.events:
            prev = item.prev_revision
            if item.key is not None and prev is not None and 0 < prev < item.revision:
                keys_at[prev].add(item.key)
    known_revisions = sorted(keys_at)
    for revisions in per_key.values():
        revisions.sort()

    _check_history_agreement(streams, by_value, acked_at, deletes, found)
    _check_prev_revisions(streams, known, per_key, found)
    watchers: dict[int, list[WatchStream]] = defaultdict(list)
    for stream in streams:
        watchers[stream.watcher].append(stream)
        _check_stream(stream, known_revisions, keys_at, found)
    for sequence in watchers.values():
        _check_watcher(sorted(sequence, key=lambda s: s.stream), found)

    if caught_up_required and acked_at and skipped is None:
        last = max(acked_at)
        for sequence in watchers.values():
            final = max(sequence, key=lambda s: s.stream)
            if max(s.covered_through for s in sequence) < last:
                found.add(
                    "reliable",
                    final,
                    last,
                    f"the watcher never got past revision {final.covered_through} although "
                    f"the cluster converged and revision {last} was acknowledged",
                )

    violations = sorted(found.all, key=lambda v: (v.revision, _RANK[v.property], v.watcher))
    counts: dict[str, int] = {}
    for violation in violations:
        counts[violation.property] = counts.get(violation.property, 0) + 1
    ends: dict[str, int] = {}
    for stream in streams:
        ends[stream.end] = ends.get(stream.end, 0) + 1
    return WatchCheck(
        watchers=len(watchers),
        streams=len(streams),
        events=sum(len(s.events) for s in streams),
        progress=sum(1 for s in streams for item in s.items if item.type == "progress"),
        resumes=sum(1 for s in streams if s.stream > 0),
        compactions=ends.get("compacted", 0),
        relists=relists,
        ends=ends,
        highest_revision=max((s.covered_through for s in streams), default=0),
        violations=tuple(violations[:VIOLATIONS_KEPT_MAX]),
        counts=counts,
        skipped=skipped,
    )


def _check_history_agreement(
    streams: Sequence[WatchStream],
    by_value: Mapping[tuple[str, str], WriteRecord],
    acked_at: Mapping[int, Mapping[str, WriteRecord]],
    deletes: set[str],
    found: _Findings,
) -> None:
    """Every event agrees with the client history (`reliable`)."""
    applied_at: dict[tuple[str, str], tuple[int, WatchStream]] = {}
    for stream in streams:
        for item in stream.events:
            assert item.key is not None
            acked = acked_at.get(item.revision)
            write_here = acked.get(item.key) if acked else None
            if acked and (write_here is None or write_here.value != item.value):
                written = ", ".join(f"{w.key}={w.value!r}" for w in acked.values())
                found.add(
                    "reliable",
                    stream,
                    item.revision,
                    f"{_describe(item)}, but revision {item.revision} is the acknowledged "
                    f"write {written}",
                )
                continue
            if item.type == "delete":
                if item.key not in deletes:
                    found.add("reliable", stream, item.revision, f"{_describe(item)}: no client "
                              "deleted that key")  # fmt: skip
                continue
            assert item.value is not None
            write = by_value.get((item.key, item.value))
            if write is None:
                found.add(
                    "reliable", stream, item.revision, f"{_describe(item)}: no client wrote that"
                )
                continue
            if write.status == "fail":
                found.add(
                    "reliable",
                    stream,
                    item.revision,
                    f"{_describe(item)}: its write was answered fail (nothing applied)",
                )
            elif write.revision is not None and write.revision != item.revision:
                found.add(
                    "reliable",
                    stream,
                    item.revision,
                    f"{_describe(item)}: its write was acknowledged at revision {write.revision}",
                )
            first = applied_at.setdefault((item.key, item.value), (item.revision, stream))
            if first[0] != item.revision:
                found.add(
                    "reliable",
                    stream,
                    item.revision,
                    f"{_describe(item)}: the same write also appears at revision {first[0]}",
                )


def _check_prev_revisions(
    streams: Sequence[WatchStream],
    known: Mapping[tuple[int, str], WatchItem],
    per_key: Mapping[str, list[int]],
    found: _Findings,
) -> None:
    other_keys: dict[int, set[str]] = defaultdict(set)
    for revision, key in known:
        other_keys[revision].add(key)
    for stream in streams:
        for item in stream.events:
            assert item.key is not None
            prev = item.prev_revision
            if prev is not None and prev >= item.revision:
                found.add("prev_revision", stream, item.revision,
                          f"{_describe(item)} with prev_revision {prev}, not below it")  # fmt: skip
                continue
            if prev is not None and other_keys.get(prev) and item.key not in other_keys[prev]:
                found.add(
                    "prev_revision",
                    stream,
                    item.revision,
                    f"{_describe(item)} with prev_revision {prev}, a change of "
                    f"{sorted(other_keys[prev])[0]} only",
                )
                continue
            revisions = per_key.get(item.key, [])
            at = bisect.bisect_left(revisions, item.revision)
            if at == 0:
                continue
            last = revisions[at - 1]
            last_item = known[(last, item.key)]
            if last_item.type == "put" and (prev is None or prev < last):
                found.add(
                    "prev_revision",
                    stream,
                    item.revision,
                    f"{_describe(item)} with prev_revision {prev}, but the key was put at "
                    f"revision {last}",
                )
            elif last_item.type == "delete" and prev is not None and prev <= last:
                found.add(
                    "prev_revision",
                    stream,
                    item.revision,
                    f"{_describe(item)} with prev_revision {prev}, but the key was deleted at "
                    f"revision {last}",
                )


def _check_stream(
    stream: WatchStream,
    known_revisions: Sequence[int],
    keys_at: Mapping[int, set[str]],
    found: _Findings,
) -> None:
    """The properties of one stream: protocol, atomic, bookmarkable, resumable, reliable."""
    if stream.end == "malformed":
        found.add("protocol", stream, stream.covered_through + 1, stream.detail or "malformed")
    progress = 0
    current: int | None = None
    done: set[int] = set()
    got: dict[int, set[str]] = defaultdict(set)
    for item in stream.items:
        if item.type == "progress":
            progress = max(progress, item.revision)
            continue
        assert item.key is not None
        if item.revision <= progress:
            found.add("bookmarkable", stream, item.revision,
                      f"{_describe(item)} after progress {progress}")  # fmt: skip
        if item.revision != current:
            if item.revision in done:
                found.add("atomic", stream, item.revision,
                          f"{_describe(item)} after revision {current}'s events: revision "
                          f"{item.revision} was split")  # fmt: skip
            if current is not None:
                done.add(current)
            current = item.revision
        got[item.revision].add(item.key)

    # Resumable: the stream's first line is the first matching known event at or after
    # its start (or a progress not past it).
    start, prefix = stream.start_revision, stream.prefix
    first = stream.items[0] if stream.items else None
    if first is not None:
        if first.is_event and first.revision < start:
            found.add("resumable", stream, first.revision,
                      f"{_describe(first)} below the start revision {start}")  # fmt: skip
        else:
            limit = first.revision if first.type == "progress" else first.revision - 1
            at = bisect.bisect_left(known_revisions, start)
            while at < len(known_revisions) and known_revisions[at] <= limit:
                revision = known_revisions[at]
                missing = sorted(k for k in keys_at[revision] if k.startswith(prefix))
                if missing:
                    what = _describe(first) if first.is_event else f"progress {first.revision}"
                    found.add(
                        "resumable",
                        stream,
                        revision,
                        f"a watch from revision {start} began with {what}, skipping "
                        f"{missing[0]} at revision {revision}",
                    )
                    break
                at += 1

    # Reliable (no gap) and atomic (no partial revision) over what the stream covered.
    if stream.end == "compacted":
        return
    through = stream.covered_through
    at = bisect.bisect_left(known_revisions, start)
    while at < len(known_revisions) and known_revisions[at] <= through:
        revision = known_revisions[at]
        at += 1
        expected = {k for k in keys_at[revision] if k.startswith(prefix)}
        missing = sorted(expected - got.get(revision, set()))
        if not missing:
            continue
        if got.get(revision) and first is not None and first.revision == revision:
            # The stream's first revision came without some of its events: the resume
            # skipped them, the stream did not split a revision it began whole.
            found.add("resumable", stream, revision,
                      f"a watch from revision {start} began partway into revision "
                      f"{revision}: {missing[0]} is missing")  # fmt: skip
        elif got.get(revision):
            found.add("atomic", stream, revision,
                      f"got only part of revision {revision}: {missing[0]} is missing")  # fmt: skip
        else:
            found.add(
                "reliable",
                stream,
                revision,
                f"missing the change of {missing[0]} at revision {revision} (the stream "
                f"covered revisions {start}..{through})",
            )


def _check_watcher(sequence: Sequence[WatchStream], found: _Findings) -> None:
    """Ordered and unique over one watcher's streams, in order."""
    last: int | None = None
    seen: set[tuple[int, str]] = set()
    for stream in sequence:
        for item in stream.events:
            assert item.key is not None
            if last is not None and item.revision < last:
                found.add("ordered", stream, item.revision,
                          f"{_describe(item)} after an event at revision {last}")  # fmt: skip
            ident = (item.revision, item.key)
            if ident in seen:
                found.add("unique", stream, item.revision, f"{_describe(item)} delivered again")
            seen.add(ident)
            last = item.revision if last is None else max(last, item.revision)
