"""The kvraft-vs-etcd benchmark reads wrk's results from the line its Lua scripts print,
and builds its rows' shapes of load, labels and preloading transactions."""

from __future__ import annotations

import argparse
import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.bench_vs_etcd import (
    BASE_SHAPE,
    PREPOPULATE_BATCH,
    SHAPES,
    EtcdCluster,
    KvraftCluster,
    Processes,
    WrkResult,
    _shapes,
    benchmark_key,
    benchmark_value,
    key_batches,
    merge_wrk_results,
    parse_wrk_output,
    quick_shapes,
    ratio,
    row_label,
    wrk_script_arguments,
)
from benchmarks.common import fdatasync_latency_us, nearest_rank_percentile
from kvraft.http_api import parse_txn
from kvraft.statemachine import TXN_OPERATIONS_MAX, TxnPut

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40001
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.31ms    5.02ms  40.60ms   70.12%
    Req/Sec     1.15k    98.10     1.30k    71.00%
  11430 requests in 10.00s, 4.80MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   1142.95
Transfer/sec:    491.23KB
WRK_JSON {"requests": 11430, "duration_us": 10000500, "bytes": 5033000, "errors": \
{"connect": 1, "read": 2, "write": 0, "status": 12, "timeout": 3}, "latency_us": \
{"min": 385, "mean": 13310.5, "max": 40600, "stdev": 5020.0, "p50": 13310, "p90": 20000, \
"p99": 40600, "p99_9": 40600}, "histogram_us": [[385, 1], [13310, 11428], [40600, 1]]}
"""


def test_reads_counts_errors_and_latencies_from_the_scripts_line() -> None:
    result = parse_wrk_output(WRK_OUTPUT)
    assert result.requests == 11430
    assert result.duration_s == pytest.approx(10.0005)
    assert result.status_errors == 12  # wrk's "Non-2xx or 3xx responses"
    assert result.socket_errors == 6  # connect + read + write + timeout
    assert result.errors == 18
    assert result.latency_us["p50"] == 13310
    assert result.latency_us["p99"] == 40600
    # Only successful answers count as throughput.
    assert result.ok_per_s == pytest.approx((11430 - 12) / 10.0005)


def test_output_without_the_scripts_line_is_an_error() -> None:
    # What wrk prints when it cannot connect: no done() line.
    with pytest.raises(ValueError, match="no WRK_JSON line"):
        parse_wrk_output("unable to connect to 127.0.0.1:40001 Connection refused\n")


def test_a_malformed_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_wrk_output('WRK_JSON {"requests": 1}\n')


def test_ratio_of_nothing_is_none() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None


def test_values_have_the_benchmarks_size_and_name_their_key() -> None:
    assert len(benchmark_value(7)) == 100
    assert benchmark_value(7).startswith(b"value-000007-")


def test_the_latency_histogram_is_read_in_order() -> None:
    histogram = parse_wrk_output(WRK_OUTPUT).histogram_us
    assert histogram == ((385, 1), (13310, 11428), (40600, 1))


def _run_of(latencies_us: list[int], status_errors: int = 0) -> WrkResult:
    counts: dict[int, int] = {}
    for latency in latencies_us:
        counts[latency] = counts.get(latency, 0) + 1
    return WrkResult(
        requests=len(latencies_us),
        duration_s=2.0,
        status_errors=status_errors,
        socket_errors=1,
        latency_us={},
        histogram_us=tuple(sorted(counts.items())),
    )


def _wrk_percentile(latencies_us: list[int], percent: float) -> int:
    """wrk's rule, from its sorted samples: rank round(percent / 100 * n + 0.5)."""
    ordered = sorted(latencies_us)
    rank = round(percent / 100 * len(ordered) + 0.5)
    return ordered[rank - 1]


def test_turns_merge_into_the_statistics_of_one_long_run() -> None:
    fast = [900 + (i * 37) % 400 for i in range(700)]  # a quiet minute
    slow = [2_000 + (i * 53) % 3_000 for i in range(300)]  # the disk slowed down
    merged = merge_wrk_results([_run_of(fast, status_errors=2), _run_of(slow)])
    everything = fast + slow
    assert merged.requests == 1000 and merged.duration_s == 4.0
    assert merged.status_errors == 2 and merged.socket_errors == 2
    assert merged.ok_per_s == pytest.approx(998 / 4.0)
    for name, percent in (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9)):
        assert merged.latency_us[name] == _wrk_percentile(everything, percent), name
    assert merged.latency_us["min"] == min(everything)
    assert merged.latency_us["max"] == max(everything)
    assert merged.latency_us["mean"] == pytest.approx(sum(everything) / 1000)
    # The median of the two turns' medians would be wrong here; the merged one is not.
    assert merged.latency_us["p50"] < 2_000


def test_a_run_without_its_histogram_cannot_be_merged() -> None:
    with pytest.raises(ValueError, match="histogram"):
        merge_wrk_results([replace(_run_of([1000, 2000]), histogram_us=())])
    assert merge_wrk_results([]).requests == 0


MIXED_OUTPUT = (
    'WRK_JSON {"requests": 10, "duration_us": 1000000, "bytes": 1, "errors": {"connect": 0, '
    '"read": 0, "write": 0, "status": 0, "timeout": 0}, "sent": {"put": 6, "get": 5}, '
    '"latency_us": {"min": 1, "mean": 1, "max": 1, "stdev": 0, "p50": 1, "p90": 1, "p99": 1, '
    '"p99_9": 1}, "histogram_us": [[1000, 4], [3000, 6]]}\n'
)


def test_a_mixed_runs_sent_puts_and_gets_are_read_and_add_up_over_turns() -> None:
    one = parse_wrk_output(MIXED_OUTPUT)
    assert (one.puts_sent, one.gets_sent) == (6, 5)
    assert one.put_share == pytest.approx(6 / 11)
    merged = merge_wrk_results([one, replace(one, puts_sent=4, gets_sent=5)])
    assert (merged.puts_sent, merged.gets_sent) == (10, 10)
    assert merged.put_share == 0.5
    # Puts and gets are one population: p50 and p99 come from all 20 latencies.
    assert merged.requests == 20
    assert merged.latency_us["p50"] == 3000
    assert merged.latency_us["p99"] == 3000
    assert merged.as_dict()["put_share"] == 0.5


def test_a_run_of_one_kind_of_request_counts_no_mix() -> None:
    # Lines of scripts from before the counters had no "sent".
    result = parse_wrk_output(WRK_OUTPUT)
    assert (result.puts_sent, result.gets_sent) == (0, 0)
    assert result.put_share is None


def test_the_scripts_get_the_shapes_keys_value_size_and_mix() -> None:
    assert wrk_script_arguments("put") == ["put", "1000", "100"]
    assert wrk_script_arguments("get", SHAPES["100k"]) == ["get", "100000", "100"]
    assert wrk_script_arguments("put", SHAPES["1k"]) == ["put", "1000", "1024"]
    assert wrk_script_arguments("mixed", SHAPES["mixed"]) == ["mixed", "1000", "100", "50"]
    with pytest.raises(ValueError, match="unknown operation"):
        wrk_script_arguments("delete")


def test_each_shape_runs_at_its_connections_among_those_chosen() -> None:
    chosen = (1, 16, 64)
    assert BASE_SHAPE.connections_in(chosen) == (1, 16, 64)
    assert SHAPES["1k"].connections_in(chosen) == (1, 16, 64)
    assert SHAPES["mixed"].connections_in(chosen) == (16, 64)
    assert SHAPES["100k"].connections_in(chosen) == (64,)
    assert SHAPES["100k"].connections_in((1, 16)) == ()


def test_quick_keeps_the_base_rows_and_one_row_per_operation_of_the_others() -> None:
    quick = quick_shapes(tuple(SHAPES.values()), (1, 16, 64))
    assert [shape.name for shape in quick] == list(SHAPES)
    assert quick[0] is BASE_SHAPE
    assert {shape.name: shape.connections_in((1, 16, 64)) for shape in quick[1:]} == {
        "mixed": (64,),
        "1k": (64,),
        "100k": (64,),
    }


def test_shapes_are_chosen_by_name_and_run_in_a_fixed_order() -> None:
    # The 100,000 keys stay in the store, so that shape comes last whatever the order given.
    assert [shape.name for shape in _shapes("100k, base,1k")] == ["base", "1k", "100k"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown shape 10k"):
        _shapes("base,10k")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown shape ''"):
        _shapes("")


def test_row_labels_say_the_operation_mix_value_size_and_keys() -> None:
    row = {"nodes": 3, "operation": "put", "connections": 64, "keys": 1000, "value_bytes": 1024}
    assert row_label(row) == "3 / put / 64 / 1,024 B, 1,000 keys"
    mixed = {**row, "operation": "mixed", "put_percent": 50, "value_bytes": 100}
    assert row_label(mixed) == "3 / 50/50 put/get / 64 / 100 B, 1,000 keys"
    # A row written before shapes existed: the base shape.
    assert row_label({"nodes": 5, "operation": "get", "connections": 1}) == (
        "5 / get / 1 / 100 B, 1,000 keys"
    )


def test_the_keys_are_written_in_batches_that_cover_each_once() -> None:
    batches = key_batches(1000)
    assert PREPOPULATE_BATCH == TXN_OPERATIONS_MAX
    assert all(len(batch) <= PREPOPULATE_BATCH for batch in batches)
    assert [number for batch in batches for number in batch] == list(range(1000))
    assert key_batches(0) == []


def test_a_kvraft_batch_is_a_transaction_kvraft_accepts() -> None:
    cluster = KvraftCluster(Processes(), [], {})
    items = [(benchmark_key(number), benchmark_value(number)) for number in range(64)]
    request = cluster.batch_write_request(items)
    assert (request.method, request.path) == ("POST", "/v1/txn")
    compare, success, failure = parse_txn(request.body, 1024, 1 << 20)
    assert compare == [] and failure == []
    assert success == [TxnPut(key, value) for key, value in items]


def test_an_etcd_batch_is_one_txn_of_base64_puts() -> None:
    cluster = EtcdCluster(Processes(), [])
    request = cluster.batch_write_request([("bench/000001", b"value-000001-...")])
    assert (request.method, request.path) == ("POST", "/v3/kv/txn")
    body = json.loads(request.body)
    [operation] = body["success"]
    put = operation["requestPut"]
    assert base64.b64decode(put["key"]) == b"bench/000001"
    assert base64.b64decode(put["value"]) == b"value-000001-..."


def test_values_of_other_sizes_keep_naming_their_key() -> None:
    assert len(benchmark_value(99_999, 1024)) == 1024
    assert benchmark_value(99_999, 1024).startswith(b"value-099999-")


def test_nearest_rank_percentiles() -> None:
    values = [float(value) for value in range(1, 101)]
    assert nearest_rank_percentile(values, 50) == 50
    assert nearest_rank_percentile(values, 99) == 99
    assert nearest_rank_percentile(values, 100) == 100
    assert nearest_rank_percentile([7.0], 99) == 7
    assert nearest_rank_percentile([], 50) == 0


def test_the_fdatasync_probe_times_each_sync_and_leaves_nothing(tmp_path: Path) -> None:
    probe = fdatasync_latency_us(tmp_path, syncs=20, record_bytes=300)
    assert probe["syncs"] == 20 and probe["record_bytes"] == 300
    assert 0 < probe["p50"] <= probe["p99"] <= probe["max"]
    assert list(tmp_path.iterdir()) == []
