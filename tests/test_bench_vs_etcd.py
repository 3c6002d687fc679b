"""The kvraft-vs-etcd benchmark reads wrk's results from the line its Lua scripts print."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.bench_vs_etcd import (
    WrkResult,
    benchmark_value,
    merge_wrk_results,
    parse_wrk_output,
    ratio,
)

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
