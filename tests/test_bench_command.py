"""`kvraft bench` (kvraft.commands.bench) run for real against a real 3-node cluster: each
workload completes requests without errors, writes what it says it writes and reports it as
text and JSON; bad options and an unreachable cluster are refused with a clear message.
No timing is asserted: the numbers belong in benchmarks."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kv_fake_server import refused_endpoint

from kvraft.commands.bench import LatencyHistogram, bench
from tests.cluster_harness import Cluster, running

pytestmark = pytest.mark.slow

RUN_S = "1.5"
"""Long enough for a few hundred requests on a loaded machine; no test depends on how many."""

SUMMARY_FIELDS = {
    "workload",
    "clients",
    "duration_s",
    "warmup_s",
    "value_bytes",
    "keys",
    "key_prefix",
    "read_fraction",
    "consistency",
    "endpoints",
    "target_endpoint",
    "leader_id",
    "prefilled_keys",
    "ops",
    "ops_per_s",
    "reads",
    "writes",
    "not_found",
    "errors_total",
    "errors",
    "latency_ms",
    "generator_cpu_percent",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # One cluster for the module: each test writes under its own key prefix.
    yield from running(Cluster(tmp_path_factory.mktemp("bench-cluster"), 3))


def _endpoints(cluster: Cluster) -> str:
    return ",".join(cluster.url(node.id) for node in cluster.config.nodes)


def run_bench(endpoints: str, *args: str) -> Result:
    return CliRunner().invoke(bench, ["--endpoints", endpoints, *args])


def run_ok(cluster: Cluster, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run bench for RUN_S seconds; check it succeeded and return its JSON summary."""
    json_path = tmp_path / "summary.json"
    result = run_bench(
        _endpoints(cluster), "--duration", RUN_S, "--clients", "4", "--json", str(json_path), *args
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary: dict[str, Any] = json.loads(json_path.read_text())
    assert set(summary) == SUMMARY_FIELDS
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    assert summary["ops"] > 0
    assert summary["ops"] == summary["reads"] + summary["writes"]
    assert summary["ops_per_s"] > 0
    assert (summary["errors_total"], summary["errors"]) == (0, {})
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    # The same numbers, for people.
    assert f"ops         {summary['ops']:,} in" in result.stdout
    assert "errors      0\n" in result.stdout
    assert "latency ms  p50 " in result.stdout
    assert f"sending to the leader, node {summary['leader_id']}" in result.stdout
    return summary


def stored(cluster: Cluster, prefix: str) -> dict[str, str]:
    """Every key under `prefix` and its base64 value, read through the API."""
    answer = cluster.request(1, "GET", f"/v1/kv?prefix={prefix}&limit=1000")
    assert answer.status == 200, answer
    return {item["key"]: item["value_b64"] for item in answer.json()["items"]}


def test_put_writes_values_of_the_given_size(cluster: Cluster, tmp_path: Path) -> None:
    summary = run_ok(
        cluster, tmp_path, "--workload", "put", "--keys", "5", "--value-size", "64",
        "--key-prefix", "put/",
    )  # fmt: skip
    assert summary["writes"] == summary["ops"] and summary["reads"] == 0
    assert summary["prefilled_keys"] == 0
    keys = stored(cluster, "put/")
    assert keys and set(keys) <= {f"put/{index}" for index in range(5)}
    some_key = sorted(keys)[0]
    read_back = cluster.request(2, "GET", f"/v1/kv/{some_key}")
    assert read_back.status == 200 and len(read_back.body) == 64


def test_get_prefills_the_keyspace_and_finds_every_key(cluster: Cluster, tmp_path: Path) -> None:
    summary = run_ok(cluster, tmp_path, "--workload", "get", "--keys", "30", "--key-prefix", "get/")
    assert summary["reads"] == summary["ops"] and summary["writes"] == 0
    assert summary["not_found"] == 0
    assert summary["prefilled_keys"] == 30
    assert set(stored(cluster, "get/")) == {f"get/{index:02d}" for index in range(30)}


def test_mixed_reads_and_writes(cluster: Cluster, tmp_path: Path) -> None:
    summary = run_ok(
        cluster, tmp_path, "--workload", "mixed", "--read-fraction", "0.25", "--keys", "20",
        "--key-prefix", "mixed/", "--consistency", "stale", "--warmup", "0.2",
    )  # fmt: skip
    assert summary["reads"] > 0 and summary["writes"] > 0
    assert (summary["read_fraction"], summary["consistency"]) == (0.25, "stale")
    assert summary["not_found"] == 0
    assert len(stored(cluster, "mixed/")) == 20


def test_every_request_failing_exits_non_zero_with_the_errors(
    cluster: Cluster, tmp_path: Path
) -> None:
    json_path = tmp_path / "summary.json"
    # Over the server's 1 MiB value limit: every put is refused with 413.
    result = run_bench(
        _endpoints(cluster), "--duration", "0.5", "--clients", "1", "--value-size", "1100000",
        "--key-prefix", "refused/", "--json", str(json_path),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "every request failed" in result.stderr, (result.stdout, result.stderr)
    assert "HTTP 413 value_too_large" in result.stdout
    summary = json.loads(json_path.read_text())
    assert summary["ops"] == 0
    assert set(summary["errors"]) == {"HTTP 413 value_too_large"}
    assert summary["errors_total"] > 0
    assert stored(cluster, "refused/") == {}


def test_an_unreachable_cluster_exits_non_zero_with_a_clear_error() -> None:
    endpoint = refused_endpoint()
    result = run_bench(endpoint, "--duration", "1", "--timeout", "0.5")
    assert result.exit_code == 1
    assert "cannot reach the cluster within 0.5 s" in result.stderr
    assert f"{endpoint}: connection refused" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "Invalid value for '--clients': 0 is not in the range 1<=x<=512"),
        (["--workload", "foo"], "Invalid value for '--workload': 'foo' is not one of"),
        (["--duration", "0"], "Invalid value for '--duration'"),
        (["--keys", "0"], "Invalid value for '--keys'"),
        (["--value-size", "-1"], "Invalid value for '--value-size'"),
        (["--read-fraction", "0.5"], "--read-fraction applies to --workload mixed only"),
        (["--workload", "mixed", "--read-fraction", "2"], "Invalid value for '--read-fraction'"),
        (["--endpoints", "ftp://x"], "only http and https are supported"),
    ],
)
def test_bad_options_are_refused_before_any_request(args: list[str], message: str) -> None:
    # Nothing listens at the endpoint: a request would fail differently (exit 1, not 2).
    result = run_bench(refused_endpoint(), *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr


def test_latency_percentiles_are_within_one_percent() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(math.log(0.005), 1.0) for _ in range(10_000)]
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)
    for fraction in (0.5, 0.9, 0.99):
        exact = ordered[math.ceil(fraction * len(ordered)) - 1]
        assert exact <= histogram.percentile_s(fraction) <= exact * 1.01
    assert histogram.max_s == ordered[-1]
    assert histogram.mean_s() == pytest.approx(sum(samples) / len(samples))
    assert LatencyHistogram().percentile_s(0.99) == 0.0
