"""The loop-thread metrics export what Prometheus expects of a histogram and a counter."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

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
