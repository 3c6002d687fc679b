"""The chaos lock workload (`kvraft.chaos.locks`) and its check (`kvraft.chaos.lock_check`):
the check on hand-built histories (a passing one and one per way to fail), the clients end to
end against an in-memory lock store (a correct one passes; one that skips the fence check is
caught), the report, and real runs: nodes that ignore fences (``--broken-fence``) are caught
by the lock check, and the same run with fences checked passes."""

from __future__ import annotations

import base64
import json
import pathlib
import threading
import time
import urllib.parse
from typing import Any

import pytest

from kvraft.chaos.checks import pair_operations
from kvraft.chaos.history import EventLog, HistoryRecorder, load_events
from kvraft.chaos.lock_check import LockCheck, check_locks
from kvraft.chaos.locks import (
    JOURNAL_PREFIX,
    LOCK_ACQUIRE,
    LOCK_FINAL,
    LOCK_GRANT,
    LOCK_HOLDER,
    LOCK_JOURNAL,
    LOCK_KEEPALIVE,
    LOCK_NAME,
    LOCK_PROCESS_BASE,
    LOCK_RELEASE,
    LOCK_REVOKE,
    LOCK_STALL,
    LOCK_WRITE,
    REGISTER_KEY,
    LockWorkload,
    classify,
    parse_write_value,
    write_value,
)
from kvraft.chaos.report import build_report, render_text, report_json
from kvraft.chaos.runner import ChaosOptions, replay_command
from kvraft.chaos.watch_check import writes_from_history
from kvraft.chaos.workload import Endpoint
from kvraft.client import FailureKind, HttpRequest, HttpResponse, TransportFailure
from kvraft.linearizability import CheckResult, HistoryError
from tests.test_chaos import assert_nothing_left_behind, facts, passing_set, run_chaos_command

# --------------------------------------------------------------------------- hand-built histories


class History:
    """Lock workload events, a clock that moves 10 ns per event, one process per client."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.now = 0
        self.journal: list[list[Any]] = []

    def _event(self, who: int, kind: str, f: str, key: str = LOCK_NAME, **fields: Any) -> None:
        self.now += 10
        self.events.append(
            {"process": LOCK_PROCESS_BASE + who, "type": kind, "f": f, "key": key,
             "value": None, "expected": None, "output": None, "time": self.now, "node": 1,
             **fields}
        )  # fmt: skip

    def op(
        self, client: int, rnd: int, f: str, kind: str = "ok", *, invoke: Any = None, **done: Any
    ) -> None:
        ident = {"client": client, "round": rnd, **(invoke or {})}
        self._event(client, "invoke", f, **ident)
        outcome = {"ok": "ok", "fail": "refused", "info": "unknown"}[kind]
        self._event(client, kind, f, **{"outcome": outcome, **done})

    def grant(self, client: int, rnd: int, lease: int) -> None:
        self.op(client, rnd, LOCK_GRANT, invoke={"value": 3}, output=lease, status=200)

    def acquire(self, client: int, rnd: int, lease: int, token: int) -> None:
        self.op(client, rnd, LOCK_ACQUIRE, invoke={"value": lease, "lease": lease},
                output={"token": token, "lease": lease}, status=200)  # fmt: skip

    def read(self, client: int, rnd: int, revision: int, holder: int | None) -> None:
        self.op(client, rnd, LOCK_HOLDER, output={"holder": holder, "waiters": []},
                revision=revision, status=200)  # fmt: skip

    def write(
        self,
        client: int,
        rnd: int,
        token: int,
        revision: int | None,
        *,
        kind: str = "ok",
        applied_at: int | None = None,
        after_stall: bool = False,
    ) -> tuple[str, str]:
        """A fenced write answered `kind` (ok at `revision`; fail is a 412); `applied_at`
        puts it in the journal (default: an ok write's revision)."""
        seq = sum(1 for e in self.events if e["f"] == LOCK_WRITE and e["type"] == "invoke")
        tail = f"{client}-{seq}"
        key, value = JOURNAL_PREFIX + tail, write_value(client, token, seq, tail)
        invoke = {"value": {REGISTER_KEY: value, key: value}, "token": token, "seq": seq,
                  "journal": key, "after_stall": after_stall}  # fmt: skip
        self._event(client, "invoke", LOCK_WRITE, REGISTER_KEY, client=client, round=rnd, **invoke)
        done: dict[str, Any] = {"outcome": {"ok": "ok", "fail": "refused", "info": "unknown"}[kind]}
        if kind == "ok":
            done.update(output=True, revision=revision, status=200)
        elif kind == "fail":
            done.update(status=412, code="fence_failed")
        self._event(client, kind, LOCK_WRITE, REGISTER_KEY, **done)
        at = applied_at if applied_at is not None else (revision if kind == "ok" else None)
        if at is not None:
            self.journal.append([key, value, at])
        return key, value

    def stall(self, client: int, rnd: int) -> None:
        self.op(client, rnd, LOCK_STALL, invoke={"value": 4.0}, output={"stopped": False})

    def release(self, client: int, rnd: int, kind: str = "ok") -> None:
        fields = {"status": 200} if kind == "ok" else {"status": 409, "code": "lock_not_held"}
        self.op(client, rnd, LOCK_RELEASE, kind, **fields)

    def final_reads(self, *, register: tuple[str | None, int] | None = None) -> None:
        final = 9
        self._event(final, "invoke", LOCK_JOURNAL, JOURNAL_PREFIX)
        self._event(final, "ok", LOCK_JOURNAL, JOURNAL_PREFIX, output=self.journal,
                    last_page=True, outcome="ok")  # fmt: skip
        if register is None:
            value, revision = max(self.journal, key=lambda entry: entry[2])[1:]
            register = (value, revision)
        self._event(final, "invoke", LOCK_FINAL, REGISTER_KEY)
        self._event(final, "ok", LOCK_FINAL, REGISTER_KEY, output=register[0],
                    revision=register[1], outcome="ok")  # fmt: skip

    def check(self) -> LockCheck:
        return check_locks(self.events)


def two_holders() -> History:
    """Client 0 holds token 3 and writes at 4, 5; client 1 waits, gets token 8 after the
    release at 6, writes at 10 and 11 and once more with an unknown outcome (applied at 12);
    client 0 comes back with token 14, stalls, and its late write is refused: client 1 took
    the lock over with token 16 meanwhile and wrote at 18."""
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.read(0, 1, revision=3, holder=3)
    history.write(0, 1, token=3, revision=4)
    history.write(0, 1, token=3, revision=5)
    history.grant(1, 1, lease=7)
    history.release(0, 1)
    history.acquire(1, 1, lease=7, token=8)
    history.read(1, 1, revision=9, holder=8)
    history.write(1, 1, token=8, revision=10)
    history.write(1, 1, token=8, revision=11)
    history.write(1, 1, token=8, revision=None, kind="info", applied_at=12)
    history.release(1, 1)
    history.grant(0, 2, lease=13)
    history.acquire(0, 2, lease=13, token=14)
    history.stall(0, 2)
    history.grant(1, 2, lease=15)
    history.acquire(1, 2, lease=15, token=16)
    history.write(1, 2, token=16, revision=18)
    history.read(0, 2, revision=19, holder=16)
    history.write(0, 2, token=14, revision=None, kind="fail", after_stall=True)
    history.release(0, 2, kind="fail")
    history.release(1, 2)
    return history


def test_holders_that_follow_each_other_pass() -> None:
    history = two_holders()
    history.final_reads()
    result = history.check()
    assert result.passed, result.failures()
    assert (result.rounds, result.held, result.clients, result.ttl_s) == (4, 4, 2, 3)
    assert result.completed == 2  # client 1's unknown write and client 0's stall spoil two
    assert result.accepted == 6 and result.holders == 3 and result.holder_reads == 3
    assert result.stalls == 1 and result.stale_writes["refused"] == 1
    assert result.operations["write"] == {"ok": 5, "refused": 1, "unavailable": 0, "unknown": 1}


def test_a_write_of_unknown_outcome_may_be_missing() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.write(0, 1, token=3, revision=4)
    history.write(0, 1, token=3, revision=None, kind="info")  # never applied
    history.final_reads()
    assert history.check().passed


def test_a_stale_holder_s_write_after_the_next_holder_s_breaks_the_order() -> None:
    history = two_holders()
    # Client 0's late write was applied after client 1's at 18 (a store without fences).
    history.write(0, 2, token=14, revision=20, after_stall=True)
    history.final_reads(register=(history.journal[-1][1], 20))
    result = history.check()
    assert not result.passed
    assert result.counts["order"] == 1 and result.counts["holder"] == 1
    assert result.first is not None and result.first.property == "order"
    assert (
        "token 14 (revision 20) was accepted after client 1's write with token 16"
        in (result.failures()[0])
    )


def test_interleaved_holders_are_caught_even_when_the_tokens_grow() -> None:
    history = History()
    for client, lease, token in ((0, 2, 3), (1, 5, 6)):
        history.grant(client, 1, lease)
        history.acquire(client, 1, lease, token)
    history.write(0, 1, token=3, revision=7)
    history.write(1, 1, token=6, revision=8)
    history.write(0, 1, token=3, revision=9)  # token 3 again, after token 6's write
    history.final_reads()
    result = history.check()
    assert result.counts == {"order": 1, "exclusive": 1}
    assert any("after token 3's last write at revision 7" in v.detail for v in result.violations)


def test_a_write_after_a_read_saw_the_lock_move_on_is_caught_without_a_later_write() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.write(0, 1, token=3, revision=4)
    history.grant(1, 1, lease=5)
    history.acquire(1, 1, lease=5, token=6)
    history.read(1, 1, revision=7, holder=6)
    history.write(0, 1, token=3, revision=8, after_stall=True)  # token 6 held it at 7
    history.final_reads()
    result = history.check()
    assert result.counts == {"holder": 1}, result.violations
    assert "saw token 6 holding it at revision 7" in result.violations[0].detail


def test_a_write_after_a_read_saw_nobody_holding_the_lock_is_caught() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.read(1, 1, revision=6, holder=None)  # token 3's lease expired at 5
    history.write(0, 1, token=3, revision=7)
    history.final_reads()
    result = history.check()
    assert result.counts == {"holder": 1}
    assert "saw nobody holding it at revision 6" in result.violations[0].detail


def test_a_token_given_to_two_clients_is_caught() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.grant(1, 1, lease=4)
    history.acquire(1, 1, lease=4, token=3)
    history.write(0, 1, token=3, revision=5)
    history.write(1, 1, token=3, revision=6)
    history.final_reads()
    result = history.check()
    assert result.counts["exclusive"] >= 2
    assert any("given to client 0 (round 1) and to client 1" in v.detail for v in result.violations)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("lost", "is not in the journal: lost"),
        ("refused-applied", "was applied although it was answered refused"),
        ("invented", "no client wrote it"),
        ("moved", "was acknowledged at revision 4"),
        ("stale-register", "the register's final value is from revision 4"),
    ],
)
def test_the_journal_must_hold_exactly_what_was_accepted(damage: str, needle: str) -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.write(0, 1, token=3, revision=4)
    register = None
    if damage == "lost":
        history.write(0, 1, token=3, revision=5)
        history.journal.pop()
    elif damage == "refused-applied":
        history.write(0, 1, token=3, revision=None, kind="fail", applied_at=5)
    elif damage == "invented":
        history.journal.append([JOURNAL_PREFIX + "x", write_value(7, 3, 0, "x"), 5])
    elif damage == "moved":
        history.journal[-1][2] = 5
    else:
        history.write(0, 1, token=3, revision=5)
        register = (history.journal[0][1], 4)
    history.final_reads(register=register)
    result = history.check()
    assert set(result.counts) == {"durable"}, result.violations
    assert needle in result.violations[0].detail


def test_unexpected_answers_fail_the_check() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.write(0, 1, token=3, revision=4)
    history.op(0, 1, LOCK_RELEASE, "fail", status=400, code="bad_lock", error="HTTP 400")
    history.op(0, 1, LOCK_REVOKE, "info", status=500, error="HTTP 500 boom")
    history.final_reads()
    result = history.check()
    assert result.counts == {"unexpected": 2}
    assert "release: HTTP 400" in result.failures()[0]


def test_nothing_is_proven_without_a_write_or_the_whole_journal() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.final_reads(register=(None, 0))
    assert "no fenced write was accepted in 1 rounds" in history.check().failures()[0]
    history = History()
    history.grant(0, 1, lease=2)
    history.acquire(0, 1, lease=2, token=3)
    history.write(0, 1, token=3, revision=4)
    assert history.check().failures() == [
        "lock: the register's journal could not be read to its end after healing"
    ]


def test_malformed_lock_records_are_refused() -> None:
    history = History()
    history.grant(0, 1, lease=2)
    history.op(0, 1, LOCK_ACQUIRE, output="not a hold", status=200)
    with pytest.raises(HistoryError, match="acquire's output"):
        history.check()


def test_answers_map_to_the_outcomes_the_api_promises() -> None:
    def answer(status: int, code: str = "x") -> HttpResponse:
        return HttpResponse(status, {}, json.dumps({"error": code}).encode())

    assert classify(answer(200)).outcome == "ok"
    fenced = classify(answer(412, "fence_failed"))
    assert (fenced.type, fenced.outcome, fenced.code) == ("fail", "refused", "fence_failed")
    assert (classify(answer(503)).type, classify(answer(503)).outcome) == ("fail", "unavailable")
    assert (classify(answer(504)).type, classify(answer(504)).outcome) == ("info", "unknown")
    lost = classify(TransportFailure(FailureKind.AFTER_SEND, "reset"))
    never = classify(TransportFailure(FailureKind.NOT_SENT, "refused"))
    assert (lost.type, never.type, never.outcome) == ("info", "fail", "unavailable")
    assert parse_write_value(write_value(2, 17, 1, "2-5")) == (2, 17)
    assert parse_write_value("v1-1") is None


def test_fenced_writes_are_known_to_the_watch_check() -> None:
    history = two_holders()
    writes = writes_from_history(history.events)
    lock_writes = [w for w in writes if w.key == REGISTER_KEY]
    assert [(w.status, w.revision) for w in lock_writes] == [
        ("ok", 4), ("ok", 5), ("ok", 10), ("ok", 11), ("info", None), ("ok", 18), ("fail", None),
    ]  # fmt: skip
    assert len(writes) == 2 * len(lock_writes)  # the journal key at the same revision


def test_the_report_has_a_lock_line_and_fails_on_a_violation() -> None:
    history = two_holders()
    history.final_reads()
    passing = build_report(
        facts(), [], [], passing_set(), CheckResult("yes", {}), lock=history.check()
    )
    text = render_text(passing)
    assert passing.passed and "lock: ok (2 clients, lease TTL 3 s: 4 rounds, 4 held" in text
    assert report_json(passing)["lock"]["accepted"] == 6
    history = two_holders()
    _, value = history.write(0, 2, token=14, revision=20, after_stall=True)
    history.final_reads(register=(value, 20))
    broken = build_report(
        facts(broken_fence=True), [], [], passing_set(), CheckResult("yes", {}),
        lock=history.check(),
    )  # fmt: skip
    text = render_text(broken)
    assert not broken.passed and "lock: violated" in text and "BROKEN MODE" in text
    assert any(f.startswith("lock: violated (order 1") for f in broken.failures)
    options = ChaosOptions(3, 5.0, frozenset(), 1, pathlib.Path("x"), broken_fence=True)
    assert replay_command(options).endswith(" --broken-fence")


# --------------------------------------------------------------------------- an in-memory store


class FakeLockStore:
    """Leases, one lock queue, fenced transactions and the reads the workload makes, served
    from memory as the HTTP API answers them. A lease expires `ttl_s` after its last
    keepalive (checked at every request, like a leader's tick); `check_fence=False` is the
    broken store."""

    def __init__(self, ttl_s: float, *, check_fence: bool = True) -> None:
        self.ttl_s = ttl_s
        self.check_fence = check_fence
        self.lock = threading.Lock()
        self.index = 0
        self.leases: dict[int, float] = {}  # id -> deadline (monotonic s)
        self.queue: list[tuple[int, int]] = []  # (token, lease), the first holds the lock
        self.kv: dict[str, tuple[str, int]] = {}
        self.keepalives: list[float] = []

    def _next(self) -> int:
        self.index += 1
        return self.index

    def _expire(self) -> None:
        now = time.monotonic()
        for lease, deadline in list(self.leases.items()):
            if deadline <= now:
                self._revoke(lease)

    def _revoke(self, lease: int) -> None:
        del self.leases[lease]
        self._next()
        self.queue = [(token, owner) for token, owner in self.queue if owner != lease]

    def _hold(self, token: int, lease: int) -> dict[str, Any]:
        return {"name": LOCK_NAME, "key": f"{LOCK_NAME}/{token}", "fencing_token": token,
                "lease": str(lease), "value": ""}  # fmt: skip

    def __call__(self, endpoint: Endpoint, request: HttpRequest, **_: Any) -> HttpResponse:
        path, _, query = request.target.partition("?")
        body = json.loads(request.body) if request.body.startswith(b"{") else {}
        if request.method == "POST" and path == f"/v1/locks/{LOCK_NAME}":
            return self._acquire(int(body["lease"]), float(body["wait_s"]))
        with self.lock:
            self._expire()
            return self._serve(request, path, urllib.parse.parse_qs(query), body)

    def _acquire(self, lease: int, wait_s: float) -> HttpResponse:
        with self.lock:
            self._expire()
            if lease not in self.leases:
                return answer(404, {"error": "lease_not_found"})
            token = self._next()
            self.queue.append((token, lease))
        deadline = time.monotonic() + wait_s
        while True:
            with self.lock:
                self._expire()
                if self.queue and self.queue[0][0] == token:
                    return answer(200, {**self._hold(token, lease), "revision": token})
                if (token, lease) not in self.queue:
                    return answer(409, {"error": "lock_not_acquired"})
                if time.monotonic() >= deadline:
                    self.queue.remove((token, lease))
                    return answer(409, {"error": "lock_not_acquired"})
            time.sleep(0.005)  # the fake's polling interval

    def _serve(
        self, request: HttpRequest, path: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> HttpResponse:
        if request.method == "POST" and path == "/v1/leases":
            lease = self._next()
            self.leases[lease] = time.monotonic() + self.ttl_s
            return answer(200, {"id": str(lease), "ttl_s": body["ttl_s"]})
        if path.startswith("/v1/leases/"):
            lease = int(path.split("/")[3])
            if lease not in self.leases:
                return answer(404, {"error": "lease_not_found"})
            if path.endswith("/keepalive"):
                self.keepalives.append(time.monotonic())
                self.leases[lease] = time.monotonic() + self.ttl_s
                return answer(200, {"id": str(lease), "ttl_s": 1})
            self._revoke(lease)
            return answer(200, {"id": str(lease), "revision": self.index, "deleted": 0})
        if path == f"/v1/locks/{LOCK_NAME}" and request.method == "GET":
            holds = [self._hold(token, lease) for token, lease in self.queue]
            return answer(200, {"name": LOCK_NAME, "holder": holds[0] if holds else None,
                                "waiters": holds[1:], "revision": self.index})  # fmt: skip
        if path == f"/v1/locks/{LOCK_NAME}" and request.method == "DELETE":
            for place in self.queue:
                if place[0] == body["fencing_token"]:
                    self.queue.remove(place)
                    return answer(200, {"name": LOCK_NAME, "released": True,
                                        "revision": self._next()})  # fmt: skip
            return answer(409, {"error": "lock_not_held"})
        if path == "/v1/txn":
            fence = dict(request.headers)["X-Kvraft-Fence"].rpartition(":")[2]
            if self.check_fence and (not self.queue or self.queue[0][0] != int(fence)):
                return answer(412, {"error": "fence_failed"})
            revision = self._next()
            for op in body["success"]:
                self.kv[op["key"]] = (base64.b64decode(op["value_b64"]).decode(), revision)
            results = [{"revision": revision}] * len(body["success"])
            return answer(200, {"succeeded": True, "revision": revision, "results": results})
        if path == "/v1/kv":
            prefix = query["prefix"][0]
            items = [{"key": k, "value_b64": base64.b64encode(v.encode()).decode(), "revision": r}
                     for k, (v, r) in sorted(self.kv.items()) if k.startswith(prefix)]  # fmt: skip
            return answer(200, {"items": items, "continuation": None})
        if path == f"/v1/kv/{REGISTER_KEY}":
            if REGISTER_KEY not in self.kv:
                return answer(404, {"error": "not_found"})
            value, revision = self.kv[REGISTER_KEY]
            return HttpResponse(200, {"etag": f'"{revision}"'}, value.encode())
        raise AssertionError(f"the fake does not serve {request.method} {request.target}")


def answer(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps(body).encode())


def run_against(store: FakeLockStore, path: pathlib.Path, run_s: float) -> LockCheck:
    with EventLog(path) as log:
        workload = LockWorkload(
            [Endpoint(1, "127.0.0.1", 1)],
            HistoryRecorder(log),
            seed=3,
            ttl_s=1,
            clients=3,
            stall_probability=0.5,
            acquire_wait_s=2.0,
            stall_s=(1.4, 1.4),
            exchange_function=store,
        )
        workload.start()
        deadline = time.monotonic() + run_s
        while time.monotonic() < deadline:
            time.sleep(0.05)  # the run's length: the clients work meanwhile
        assert workload.stop() == []
        assert workload.final_reads(lambda: False)
        assert workload.errors == []
    return check_locks(load_events(path))


def test_clients_against_a_store_that_checks_fences_pass(tmp_path: pathlib.Path) -> None:
    store = FakeLockStore(ttl_s=1.0)
    result = run_against(store, tmp_path / "h.jsonl", run_s=3.0)
    assert result.passed, result.failures()
    assert result.held >= 3 and result.accepted >= 3 and result.stalls >= 1
    # A stalled holder's lease expired (no keepalive for longer than its TTL) and its late
    # writes were refused.
    assert result.stale_writes["refused"] >= 1 and result.stale_writes["ok"] == 0
    events = load_events(tmp_path / "h.jsonl")
    keepalives = [e for e in events if e["f"] == LOCK_KEEPALIVE and e["type"] == "invoke"]
    assert keepalives
    for invoke, completion in pair_operations(events, frozenset({LOCK_STALL})):
        assert completion is not None
        during = [
            e for e in keepalives
            if e["client"] == invoke["client"] and invoke["time"] < e["time"] < completion["time"]
        ]  # fmt: skip
        assert len(during) <= 1  # one that had checked the lease just before the stall


def test_clients_against_a_store_that_ignores_fences_are_caught(tmp_path: pathlib.Path) -> None:
    store = FakeLockStore(ttl_s=1.0, check_fence=False)
    result = run_against(store, tmp_path / "h.jsonl", run_s=3.0)
    assert not result.passed
    assert result.stale_writes["ok"] >= 1
    assert {"order", "holder"} & set(result.counts), result.violations


# --------------------------------------------------------------------------- real runs


def lock_run(tmp_path: pathlib.Path, *extra: str) -> tuple[Any, dict[str, Any]]:
    """A short run whose only faults are the lock holders' own stalls (seed 2: client 0
    stalls in its first two rounds), so that whether a stalled holder's lease expires does
    not depend on a leader change the nemesis caused (a new leader gives every lease a full
    TTL). Faults of every kind with the lock workload: `tests/test_chaos.py`'s short run."""
    report_dir = tmp_path / "run"
    done = run_chaos_command(
        "--nodes", "3", "--time", "12", "--seed", "2", "--nemesis", "none", "--no-watch",
        "--no-bank", "--report", str(report_dir), *extra,
    )  # fmt: skip
    summary = json.loads((report_dir / "report.json").read_text())
    assert_nothing_left_behind(report_dir, summary["firewall_chain"])
    return done, summary


@pytest.mark.slow
def test_nodes_that_ignore_fences_are_caught_by_the_lock_check(tmp_path: pathlib.Path) -> None:
    done, summary = lock_run(tmp_path, "--broken-fence")
    assert "lock: violated" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1
    assert summary["failures"] and all(f.startswith("lock: ") for f in summary["failures"])
    lock = summary["lock"]
    assert lock["stalls"] >= 1 and lock["stale_writes"]["ok"] >= 1
    assert {"order", "exclusive", "holder"} & set(lock["violation_counts"])
    assert summary["options"]["broken_fence"] and summary["linearizable"] == "yes"


@pytest.mark.slow
def test_the_same_run_with_fences_checked_passes(tmp_path: pathlib.Path) -> None:
    done, summary = lock_run(tmp_path)
    assert "lock: ok" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    lock = summary["lock"]
    assert lock["passed"] and lock["completed"] >= 5 and lock["stalls"] >= 1
    assert lock["stale_writes"]["refused"] >= 1  # the stalled holder's lease had expired
    logs = (tmp_path / "run" / "nodes").glob("node*.log")
    assert not any("NOT checked" in log.read_text() for log in logs)
