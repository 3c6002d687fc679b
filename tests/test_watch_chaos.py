"""Tests of the chaos watch check and watchers: each property on hand-built streams (a passing
and a violating case), the logs read back, the report, and the watchers against an in-process
fake serving the NDJSON contract, including the deliberately broken modes the check must
catch."""

from __future__ import annotations

import base64
import json
import pathlib
import time
from typing import Any

import pytest

from kvraft.chaos.history import EventLog, HistoryRecorder, load_events
from kvraft.chaos.report import build_report, render_text, report_json
from kvraft.chaos.watch_check import (
    WATCH_FILE_NAME,
    WatchCheck,
    WatchItem,
    WatchStream,
    WriteRecord,
    check_watch,
    parse_watch_item,
    streams_from_events,
    writes_from_history,
)
from kvraft.chaos.watchers import DROP_ONE_AT, Watchers, watch_target
from kvraft.chaos.workload import Workload
from kvraft.linearizability import CheckResult, HistoryError
from tests.test_chaos import facts, passing_set
from tests.watch_fake_server import FakeWatchNodes

# --------------------------------------------------------------------------- building blocks


def put(revision: int, key: str, value: str, prev: int | None = None) -> WatchItem:
    return WatchItem("put", revision, key, value, prev)


def progress(revision: int) -> WatchItem:
    return WatchItem("progress", revision)


def stream(
    *items: WatchItem,
    watcher: int = 0,
    number: int = 0,
    start: int = 1,
    prefix: str = "",
    end: str = "stopped",
    end_revision: int | None = None,
    node: int = 1,
) -> WatchStream:
    return WatchStream(watcher, number, node, prefix, start, tuple(items), end, end_revision)


def acked(revision: int, key: str, value: str) -> WriteRecord:
    return WriteRecord(key, value, "ok", revision)


# Three acknowledged writes: a at 2, b at 3 (both key r/0), c at 5 (set/c).
WRITES = [acked(2, "r/0", "a"), acked(3, "r/0", "b"), acked(5, "set/c", "c")]
CLEAN = (put(2, "r/0", "a"), put(3, "r/0", "b", 2), put(5, "set/c", "c"), progress(6))


def verdict(streams: list[WatchStream], writes: list[WriteRecord] = WRITES) -> WatchCheck:
    return check_watch(streams, writes)


def assert_violates(result: WatchCheck, prop: str, revision: int | None = None) -> None:
    assert result.verdict == "violated", result
    assert prop in result.counts, result.violations
    if revision is not None:
        assert any(v.property == prop and v.revision == revision for v in result.violations)


# --------------------------------------------------------------------------- each property


def test_a_clean_stream_and_its_resumption_pass() -> None:
    first = stream(*CLEAN[:2], end="error")
    resumed = stream(CLEAN[2], CLEAN[3], number=1, start=4, node=2)
    result = verdict([first, resumed, stream(*CLEAN, watcher=1, node=3)])
    assert result.verdict == "ok" and result.passed, result.violations
    assert (result.watchers, result.streams, result.resumes, result.events) == (2, 3, 1, 6)
    assert result.highest_revision == 6


def test_ordered_revisions_never_go_back_within_a_watcher() -> None:
    back = stream(put(3, "r/0", "b", 2), put(2, "r/0", "a"), put(5, "set/c", "c"))
    assert_violates(verdict([back]), "ordered", 2)
    # Going back across a resume is just as wrong.
    first = stream(*CLEAN[:2], end="error")
    resumed = stream(put(2, "r/0", "a"), CLEAN[2], number=1, start=4)
    assert_violates(verdict([first, resumed]), "ordered", 2)


def test_unique_no_event_is_delivered_twice() -> None:
    twice = stream(CLEAN[0], CLEAN[0], *CLEAN[1:])
    result = verdict([twice])
    assert_violates(result, "unique", 2)
    assert "ordered" not in result.counts


def test_atomic_a_revision_is_never_split_or_partial() -> None:
    writes = [acked(2, "r/0", "a"), acked(3, "r/1", "x")]
    # Two keys changed at revision 4 (a multi-key revision seen by another watcher).
    both = stream(put(2, "r/0", "a"), put(3, "r/1", "x"), put(4, "r/0", "p", 2),
                  put(4, "r/1", "q", 3), progress(4), watcher=1)  # fmt: skip
    other = [acked(4, "r/0", "p"), acked(4, "r/1", "q")]
    whole = [WriteRecord("r/0", "p", "info"), WriteRecord("r/1", "q", "info")]
    assert check_watch([both], writes + whole).passed
    split = stream(put(4, "r/0", "p", 2), put(5, "r/2", "z"), put(4, "r/1", "q", 3), start=4)
    assert_violates(check_watch([split], [*writes, *whole, acked(5, "r/2", "z")]), "atomic", 4)
    partial = stream(put(2, "r/0", "a"), put(3, "r/1", "x"), put(4, "r/0", "p", 2), progress(4))
    result = check_watch([partial, both], writes + whole)
    assert_violates(result, "atomic", 4)
    assert result.first is not None and result.first.watcher == 0
    assert other  # (both writes at one revision cannot be acknowledged separately)


def test_bookmarkable_nothing_at_or_below_a_progress_revision_comes_after_it() -> None:
    late = stream(CLEAN[0], progress(3), CLEAN[1], CLEAN[2], progress(6))
    assert_violates(verdict([late]), "bookmarkable", 3)
    assert verdict([stream(CLEAN[0], progress(2), *CLEAN[1:])]).passed


def test_resumable_a_resume_gets_exactly_the_first_event_after_it() -> None:
    first = stream(CLEAN[0], progress(2), end="error")
    good = stream(*CLEAN[1:], number=1, start=3)
    assert verdict([first, good]).passed
    skipped = stream(*CLEAN[2:], number=1, start=3)
    result = verdict([first, skipped])
    assert_violates(result, "resumable", 3)
    assert result.first is not None and result.first.property == "resumable"
    early = stream(*CLEAN, number=1, start=3)
    assert_violates(verdict([first, early]), "resumable", 2)
    # A progress line first may not vouch past an event it never sent.
    assert_violates(verdict([first, stream(progress(4), number=1, start=3)]), "resumable", 3)
    # Nor may a resume begin partway into a multi-key revision: that is the skip, not a split.
    writes = [*WRITES, acked(4, "r/1", "p"), acked(4, "r/2", "q")]
    whole = stream(*CLEAN[:2], put(4, "r/1", "p"), put(4, "r/2", "q"), progress(4), watcher=1)
    through_3 = stream(*CLEAN[:2], progress(3), end="error")
    partway = stream(put(4, "r/2", "q"), progress(4), number=1, start=4)
    result = check_watch([through_3, partway, whole], writes)
    assert [(v.property, v.revision) for v in result.violations] == [("resumable", 4)]
    # The same when nobody else saw that event and no write of it was acknowledged (a
    # transfer of unknown outcome): the key's next event names it in its prev_revision.
    unknown = [
        *WRITES,
        *(WriteRecord(k, v, "info") for k, v in [("r/1", "p"), ("r/2", "q"), ("r/1", "s")]),
    ]
    later = stream(put(4, "r/2", "q"), CLEAN[2], put(7, "r/1", "s", 4), progress(7),
                   number=1, start=4)  # fmt: skip
    result = check_watch([through_3, later], unknown)
    assert result.first is not None, result
    assert (result.first.property, result.first.revision) == ("resumable", 4), result.violations


def test_reliable_no_acknowledged_write_is_missing_from_a_stream_that_covered_it() -> None:
    gap = stream(CLEAN[0], CLEAN[2], progress(6))
    assert_violates(verdict([gap]), "reliable", 3)
    # A stream that never vouched for revision 5 may end before it ...
    assert verdict([stream(*CLEAN[:2], end="error")]).passed
    # ... and a prefix that does not match is not a gap.
    assert verdict([stream(CLEAN[2], progress(6), prefix="set/")]).passed
    # An event only another watcher saw (an unknown-outcome write that landed) counts too.
    writes = [*WRITES, WriteRecord("r/9", "u", "info")]
    seen = stream(*CLEAN[:3], put(6, "r/9", "u"), progress(6), watcher=1)
    assert check_watch([seen], writes).passed
    assert_violates(check_watch([stream(*CLEAN), seen], writes), "reliable", 6)


def test_reliable_every_event_agrees_with_the_client_history() -> None:
    failed = [*WRITES, WriteRecord("r/0", "f", "fail")]
    assert_violates(check_watch([stream(put(4, "r/0", "f", 3))], failed), "reliable", 4)
    assert_violates(verdict([stream(put(4, "r/0", "never", 3))]), "reliable", 4)
    moved = stream(put(2, "r/0", "a"), put(4, "r/0", "b", 2))
    assert_violates(verdict([moved]), "reliable", 4)
    wrong_at = stream(put(2, "r/0", "a"), put(3, "r/0", "zz", 2))
    assert_violates(check_watch([wrong_at], [*WRITES, WriteRecord("r/0", "zz", "info")]),
                    "reliable", 3)  # fmt: skip
    deleted = stream(WatchItem("delete", 4, "r/0", None, 3))
    assert_violates(verdict([deleted]), "reliable", 4)
    assert verdict([stream(WatchItem("delete", 4, "r/0", None, 3), start=4)],
                   [*WRITES, WriteRecord("r/0", None, "ok", 4)]).passed  # fmt: skip
    unknown = [WriteRecord("r/0", "u", "info")]
    twice = [stream(put(7, "r/0", "u")), stream(put(9, "r/0", "u"), watcher=1, start=8)]
    assert_violates(check_watch(twice, unknown), "reliable", 9)


def test_reliable_a_watcher_must_catch_up_once_the_cluster_converged() -> None:
    behind = [stream(*CLEAN[:2], progress(3))]
    assert check_watch(behind, WRITES).passed
    result = check_watch(behind, WRITES, caught_up_required=True)
    assert_violates(result, "reliable", 5)
    assert check_watch([stream(*CLEAN)], WRITES, caught_up_required=True).passed


def test_agreement_every_watcher_sees_the_same_change_at_a_revision() -> None:
    writes = [WriteRecord("r/0", "x", "info"), WriteRecord("r/0", "y", "info")]
    one = stream(put(4, "r/0", "x"), start=4)
    other = stream(put(4, "r/0", "y"), watcher=1, start=4)
    assert check_watch([one, stream(put(4, "r/0", "x"), watcher=1, start=4)], writes).passed
    assert_violates(check_watch([one, other], writes), "agreement", 4)


def test_prev_revision_names_the_keys_previous_change() -> None:
    assert_violates(verdict([stream(CLEAN[0], put(3, "r/0", "b", None))]), "prev_revision", 3)
    assert_violates(verdict([stream(CLEAN[0], put(3, "r/0", "b", 3))]), "prev_revision", 3)
    cross = stream(CLEAN[0], CLEAN[1], put(5, "set/c", "c", 3))
    assert_violates(verdict([cross]), "prev_revision", 5)


def test_protocol_a_malformed_line_is_a_violation() -> None:
    bad = stream(CLEAN[0], end="malformed")
    assert_violates(verdict([bad]), "protocol")


def test_a_compacted_stream_covers_nothing_and_is_counted() -> None:
    compacted = stream(end="compacted", end_revision=4)
    resumed = stream(CLEAN[2], CLEAN[3], number=1, start=5)
    result = check_watch([compacted, resumed], WRITES, relists=1)
    assert result.passed and result.compactions == 1 and result.relists == 1


def test_lines_outside_the_contract_are_named() -> None:
    value = base64.b64encode(b"v").decode()
    assert parse_watch_item(
        {"type": "put", "key": "k", "value_b64": value, "revision": 3, "prev_revision": None}
    ) == WatchItem("put", 3, "k", "v", None)
    assert parse_watch_item({"type": "lagged", "revision": 9}) == WatchItem("lagged", 9)
    for bad in [
        [],
        {"type": "put", "key": "k", "value_b64": "!!", "revision": 3},
        {"type": "put", "key": 5, "value_b64": value, "revision": 3},
        {"type": "progress", "revision": -1},
        {"type": "put", "key": "k", "value_b64": value, "revision": 0},
        {"type": "progress", "revision": True},
        {"type": "delete", "key": "k", "revision": 3, "prev_revision": "2"},
        {"type": "expire", "key": "k", "revision": 3},
    ]:
        assert isinstance(parse_watch_item(bad), str), bad


# --------------------------------------------------------------------------- logs and report


def test_the_logs_read_back_into_streams_and_writes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / WATCH_FILE_NAME
    value = base64.b64encode(b"a").decode()
    with EventLog(path) as log:
        log.append({"type": "open", "watcher": 0, "stream": 0, "node": 2, "prefix": "r/",
                    "start_revision": 1})  # fmt: skip
        item = {"type": "put", "key": "r/0", "value_b64": value, "revision": 2,
                "prev_revision": None}  # fmt: skip
        log.append({"type": "item", "watcher": 0, "stream": 0, "item": item})
        log.append({"type": "end", "watcher": 0, "stream": 0, "how": "lagged", "revision": 4})
        log.append({"type": "open", "watcher": 0, "stream": 1, "node": 2, "prefix": "r/",
                    "start_revision": 5})  # fmt: skip
        log.append({"type": "relist", "watcher": 0, "node": 2, "items": 1, "complete": True})
    streams, relists = streams_from_events(load_events(path))
    assert relists == 1 and len(streams) == 2
    assert streams[0].items == (put(2, "r/0", "a"),) and streams[0].covered_through == 4
    assert streams[1].end == "stopped" and streams[1].covered_through == 4
    with EventLog(tmp_path / "history.jsonl") as log:
        recorder = HistoryRecorder(log)
        recorder.invoke(0, "write", "r/0", value="a")
        recorder.complete(0, "ok", "write", "r/0", extra={"revision": 2})
        recorder.invoke(1, "cas", "r/0", value="b", expected="a")
        recorder.complete(1, "ok", "cas", "r/0", output=False)
        recorder.invoke(2, "add", "set/e", value="e")
    writes = writes_from_history(load_events(tmp_path / "history.jsonl"))
    assert writes == [
        WriteRecord("r/0", "a", "ok", 2),
        WriteRecord("r/0", "b", "fail"),
        WriteRecord("set/e", "e", "info"),
    ]


@pytest.mark.parametrize(
    "records",
    [
        [{"type": "item", "watcher": 0, "stream": 0, "item": {}}],
        [{"type": "open", "watcher": 0, "stream": 0, "node": 1, "prefix": "", "start_revision": 0}],
        [{"type": "open", "watcher": "0", "stream": 0}],
        [{"type": "open", "watcher": 0, "stream": 0, "node": 1, "prefix": "", "start_revision": 1},
         {"type": "item", "watcher": 0, "stream": 0, "item": {"type": "progress"}}],
        [{"type": "open", "watcher": 0, "stream": 0, "node": 1, "prefix": "", "start_revision": 1},
         {"type": "end", "watcher": 0, "stream": 0, "how": "vanished"}],
    ],
)  # fmt: skip
def test_malformed_watch_logs_are_refused(records: list[Any]) -> None:
    with pytest.raises(HistoryError):
        streams_from_events(records)


def test_a_watch_violation_fails_the_run_and_the_report_names_it() -> None:
    bad = verdict([stream(CLEAN[0], CLEAN[2], progress(6))])
    built = build_report(facts(), [], [], passing_set(), CheckResult("yes"), bad)
    assert not built.passed
    assert any(f.startswith("watch: violated") for f in built.failures)
    text = render_text(built)
    assert "watch: violated" in text and "first: reliable: watcher 0 stream 0" in text
    summary = report_json(built)
    assert summary["watch"]["verdict"] == "violated"
    assert summary["watch"]["violations"][0]["property"] == "reliable"
    good = build_report(
        facts(), [], [], passing_set(), CheckResult("yes"), verdict([stream(*CLEAN)])
    )
    assert good.passed and "watch: ok (1 watchers" in render_text(good)
    skipped = check_watch([], WRITES, skipped="node 1 answered 404")
    built = build_report(facts(), [], [], passing_set(), CheckResult("yes"), skipped)
    # Every node serves watches now: one that answers 404 is a broken build, not a pass.
    assert not built.passed and "watch: skipped" in render_text(built)
    assert any(f.startswith("watch: not served") for f in built.failures)


def test_watch_targets_are_percent_encoded() -> None:
    assert (
        watch_target("r/ x&", 7, 1.0)
        == "/v1/watch?prefix=r%2F%20x%26&start_revision=7&progress_s=1"
    )


# --------------------------------------------------------------------------- against a fake


def run_against_fake(
    tmp_path: pathlib.Path,
    nodes: FakeWatchNodes,
    *,
    broken: str | None = None,
    seconds: float = 1.5,
    faults: bool = True,
) -> tuple[WatchCheck, Watchers]:
    """The register/set clients and the watchers against `nodes` for `seconds`, cutting and
    lagging streams meanwhile; the watch check of what was recorded."""
    history = EventLog(tmp_path / "history.jsonl")
    watch_log = EventLog(tmp_path / WATCH_FILE_NAME)
    workload = Workload(nodes.endpoints, HistoryRecorder(history), seed=1, clients_per_key=1)
    watchers = Watchers(nodes.endpoints, watch_log, progress_s=0.2, broken=broken)
    try:
        watchers.start()
        workload.start()
        for step in range(3):
            time.sleep(seconds / 4)  # let writes and streams happen between faults
            if faults:
                (nodes.cut if step % 2 == 0 else nodes.lag)(1 + step % len(nodes.node_ids))
        time.sleep(seconds / 4)
        assert workload.stop() == []
        assert watchers.wait_caught_up(workload.highest_revision, deadline(5.0))
    finally:
        workload.stop()
        assert watchers.stop() == []
        history.close()
        watch_log.close()
    assert workload.errors == [] and watchers.errors == []
    streams, relists = streams_from_events(load_events(tmp_path / WATCH_FILE_NAME))
    writes = writes_from_history(load_events(tmp_path / "history.jsonl"))
    return check_watch(streams, writes, relists=relists, caught_up_required=True), watchers


def deadline(seconds: float) -> Any:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def test_watchers_resume_across_broken_and_lagged_streams_and_pass(tmp_path: pathlib.Path) -> None:
    with FakeWatchNodes(3) as nodes:
        result, _ = run_against_fake(tmp_path, nodes)
    assert result.verdict == "ok", result.violations[:3]
    assert result.watchers == 3 and result.resumes >= 2 and result.events > 20
    assert result.ends.get("error", 0) + result.ends.get("closed", 0) >= 1
    assert result.ends.get("lagged", 0) >= 1 and result.ends.get("stopped", 0) == 3
    # Every watcher's stream ended in the last revision acknowledged.
    lines = [json.loads(line) for line in (tmp_path / WATCH_FILE_NAME).read_text().splitlines()]
    assert {line["prefix"] for line in lines if line["type"] == "open"} == {"", "r/", "set/"}


def test_skipping_the_first_event_after_each_resume_is_caught(tmp_path: pathlib.Path) -> None:
    with FakeWatchNodes(3) as nodes:
        result, _ = run_against_fake(tmp_path, nodes, broken="skip-resume")
    assert result.verdict == "violated"
    assert result.first is not None and result.first.property == "resumable", result.first
    assert result.first.stream > 0


def test_dropping_one_event_is_caught(tmp_path: pathlib.Path) -> None:
    with FakeWatchNodes(3) as nodes:
        result, _ = run_against_fake(tmp_path, nodes, broken="drop-one", faults=False)
    assert result.verdict == "violated"
    assert result.first is not None and result.first.watcher == 0
    assert result.first.property in ("reliable", "resumable")
    assert result.events >= DROP_ONE_AT


def test_a_compacted_history_is_re_listed_and_resumed_above_it(tmp_path: pathlib.Path) -> None:
    with FakeWatchNodes(3, compact_revision=10) as nodes:
        result, _ = run_against_fake(tmp_path, nodes, seconds=0.8, faults=False)
    assert result.verdict == "ok", result.violations[:3]
    assert result.compactions == 3 and result.relists == 3  # each watcher's first stream


def test_nodes_without_the_watch_endpoint_skip_the_check(tmp_path: pathlib.Path) -> None:
    with FakeWatchNodes(3, watch=False) as nodes:
        watch_log = EventLog(tmp_path / WATCH_FILE_NAME)
        watchers = Watchers(nodes.endpoints, watch_log)
        watchers.start()
        assert not watchers.wait_caught_up(1, deadline(5.0))
        assert watchers.stop() == []
        watch_log.close()
    assert watchers.unsupported is not None and "404" in watchers.unsupported
    streams, _ = streams_from_events(load_events(tmp_path / WATCH_FILE_NAME))
    assert "unsupported" in {s.end for s in streams} <= {"unsupported", "stopped"}
    result = check_watch(streams, WRITES, caught_up_required=True, skipped=watchers.unsupported)
    assert result.verdict == "skipped" and result.passed
