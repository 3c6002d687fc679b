"""The loop-thread metrics export what Prometheus expects of a histogram and a counter, and a
node's `/metrics` follows Prometheus's conventions (names, types, units, buckets)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvraft import launcher
from kvraft.config import local_cluster_config, render_config
from kvraft.metrics import LoopHistogram, LoopMetrics


def test_a_histogram_bucket_counts_observations_up_to_and_including_its_bound() -> None:
    histogram = LoopHistogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative_buckets() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 1.0 + 7.0


def test_families_are_scraped_with_their_labels_counts_and_sums() -> None:
    metrics = LoopMetrics()
    metrics.histogram("kvraft_test_seconds", "test latency", ("route",))
    metrics.counter("kvraft_test_events", "test events", ("outcome",))
    metrics.histogram_child("kvraft_test_seconds", "/a").observe(0.002)
    metrics.histogram_child("kvraft_test_seconds", "/a").observe(3.0)
    metrics.counter_child("kvraft_test_events", "ok").inc()
    metrics.counter_child("kvraft_test_events", "ok").inc(2)
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    assert 'kvraft_test_seconds_bucket{le="0.005",route="/a"} 1.0' in text
    assert 'kvraft_test_seconds_bucket{le="+Inf",route="/a"} 2.0' in text
    assert 'kvraft_test_seconds_count{route="/a"} 2.0' in text
    assert 'kvraft_test_seconds_sum{route="/a"} 3.002' in text
    assert 'kvraft_test_events_total{outcome="ok"} 3.0' in text


# --- a real node's /metrics, read as Prometheus reads it -------------------------------------


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def node_url(tmp_path: Path) -> Iterator[str]:
    """A one-node cluster (fsync on, so the fsync histogram fills) that has taken a write."""
    http_port, raft_port = launcher.free_ports(2)
    config = local_cluster_config(1, tmp_path / "data", cluster_id="metrics")
    spec = replace(config.nodes[0], http_port=http_port, raft_port=raft_port)
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(render_config(replace(config, nodes=(spec,))))
    log_path = tmp_path / "node1.log"
    process = launcher.start(launcher.serve_command(1, config_path), log_path)
    url = f"http://127.0.0.1:{http_port}"
    try:

        def wrote() -> bool:
            try:
                return _http("PUT", f"{url}/v1/kv/k", b"v")[0] == 200
            except OSError:
                return False

        launcher.wait_ready(process, log_path, wrote, what="node 1", timeout_s=30)
        yield url
    finally:
        launcher.stop({1: process}, timeout_s=15)


def test_a_node_exports_its_metrics_by_the_prometheus_conventions(node_url: str) -> None:
    for _ in range(3):  # one series, counted on every request (the node keeps it at hand)
        assert _http("GET", f"{node_url}/v1/kv/absent")[0] == 404
    for _ in range(2):  # a made-up method is counted as "other", not as a series of its own
        assert _http("PROPFIND", f"{node_url}/v1/kv/absent")[0] == 405
    status, body = _http("GET", f"{node_url}/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    types = {name: family.type for name, family in families.items()}

    # Counters: typed so, exported with `_total`; nothing else claims `_total`.
    for name in (
        "kvraft_leader_changes",
        "kvraft_writes_shed",
        "kvraft_proposals",
        "kvraft_peer_sent_messages",
        "kvraft_peer_dropped_messages",
        "kvraft_descriptors_exhausted",
        "kvraft_http_connections_closed",
    ):
        assert types.get(name) == "counter", (name, types.get(name))
    for family in families.values():
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name == family.name + "_total", sample.name
            if family.type == "gauge":
                assert not sample.name.endswith("_total"), sample.name
    assert families["kvraft_leader_changes"].samples[0].value >= 1  # it elected itself

    # Gauges, with their unit last where they have one.
    for name in ("kvraft_term", "kvraft_is_leader", "kvraft_keys", "kvraft_writes_pending_bytes"):
        assert types.get(name) == "gauge", name
    assert "kvraft_write_bytes_pending" not in types

    # Latency histograms in seconds that resolve 50 µs to 5 s.
    for name in ("kvraft_fsync_seconds", "kvraft_request_seconds"):
        assert types.get(name) == "histogram", name
        bounds = sorted(
            {
                float(sample.labels["le"])
                for sample in families[name].samples
                if sample.name.endswith("_bucket")
            }
        )
        assert bounds[0] == 0.00005 and bounds[-2] == 5.0 and bounds[-1] == float("inf"), bounds
    fsyncs = [s for s in families["kvraft_fsync_seconds"].samples if s.name.endswith("_count")]
    assert fsyncs and fsyncs[0].value >= 1

    # Requests counted by route and status.
    counts = {
        (sample.labels["method"], sample.labels["route"], sample.labels["status"]): sample.value
        for sample in families["kvraft_request_seconds"].samples
        if sample.name.endswith("_count")
    }
    assert counts[("GET", "/v1/kv/{key}", "404")] == 3
    assert counts[("other", "/v1/kv/{key}", "405")] == 2
    assert not any(method == "PROPFIND" for method, _, _ in counts)
    assert counts[("PUT", "/v1/kv/{key}", "200")] >= 1

    # prometheus_client's default collectors: process, platform and garbage collector.
    for name in ("process_cpu_seconds", "process_open_fds", "process_resident_memory_bytes"):
        assert name in types, name
    assert types.get("python_info") == "gauge"
    assert types.get("python_gc_collections") == "counter"
