"""Metrics updated on every request, kept cheaply for the event loop's own thread.

prometheus_client's `Histogram` and `Counter` take a lock and (for a histogram) walk every
bucket on each observation: on the request path that was a few percent of a PUT's CPU. These
keep plain numbers that only the event loop's thread touches, and a collector turns them into
Prometheus families when `/metrics` is scraped (on the same thread, so no locks are needed).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["LATENCY_BUCKETS_S", "LoopCounter", "LoopHistogram", "LoopMetrics"]

LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)  # fmt: skip
"""Upper bounds of the latency buckets, in seconds: 1-2.5-5 steps from 50 µs to 5 s. An fsync
on an SSD or a local request takes well under prometheus_client's lowest default bucket
(5 ms; 3,805 of 3,821 fsyncs fell in it), and anything past 5 s has timed out anyway."""


class LoopHistogram:
    """Counts per bucket and a sum; `observe` is a bisect and two additions."""

    __slots__ = ("counts", "sum", "upper_bounds")

    def __init__(self, upper_bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.upper_bounds = upper_bounds
        self.counts = [0] * (len(upper_bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A bucket counts the observations <= its bound: the first bound >= value.
        self.counts[bisect.bisect_left(self.upper_bounds, value)] += 1
        self.sum += value

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        """(bound, observations <= bound) pairs, ending with +Inf, as Prometheus wants."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.upper_bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets


class LoopCounter:
    """A counter that only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


_Child = TypeVar("_Child")
_Family = tuple[str, tuple[str, ...], dict[tuple[str, ...], _Child]]
"""(documentation, label names, child by label values)."""


class LoopMetrics:
    """Histograms and counters by name and label values, exported by `collect` (register
    the object with a `prometheus_client.CollectorRegistry`)."""

    def __init__(self) -> None:
        self._histograms: dict[str, _Family[LoopHistogram]] = {}
        self._counters: dict[str, _Family[LoopCounter]] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def histogram(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self._histograms[name] = (documentation, labels, {})

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self._counters[name] = (documentation, labels, {})

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value `read` gives when `/metrics` is scraped (a count the owner
        keeps anyway, such as open connections, costs nothing until then)."""
        self._gauges[name] = (documentation, read)

    def histogram_child(self, name: str, *label_values: str) -> LoopHistogram:
        """The histogram of `name` with these label values (made on first use); look it
        up once and keep it, as the request path does."""
        children = self._histograms[name][2]
        child = children.get(label_values)
        if child is None:
            child = children[label_values] = LoopHistogram()
        return child

    def counter_child(self, name: str, *label_values: str) -> LoopCounter:
        children = self._counters[name][2]
        child = children.get(label_values)
        if child is None:
            child = children[label_values] = LoopCounter()
        return child

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, labels, histograms) in self._histograms.items():
            histogram_family = HistogramMetricFamily(name, documentation, labels=list(labels))
            for label_values, histogram in histograms.items():
                histogram_family.add_metric(
                    list(label_values), histogram.cumulative_buckets(), histogram.sum
                )
            yield histogram_family
        for name, (documentation, labels, counters) in self._counters.items():
            counter_family = CounterMetricFamily(name, documentation, labels=list(labels))
            for label_values, counter in counters.items():
                counter_family.add_metric(list(label_values), counter.value)
            yield counter_family
        for name, (documentation, read) in self._gauges.items():
            gauge_family = GaugeMetricFamily(name, documentation)
            gauge_family.add_metric([], read())
            yield gauge_family
