"""Prometheus metrics of one app, in a registry of its own (no global state between apps).

Gauges of tasks by status and queue depth are read from the store at scrape
time, so they are right after a restart; the duration histogram and the token
counter count what this process saw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric

#: Tasks run for seconds to an hour; buckets spread over that.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class _StoreCollector(Collector):
    """Reads task counts at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self._counts()
        by_status = GaugeMetricFamily(
            "taskbox_tasks", "Tasks in the store by status.", labels=["status"]
        )
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "taskbox_queue_depth", "Tasks waiting to start.", value=counts.get("queued", 0)
        )


class TaskMetrics:
    """The app's metrics; also the task service's observer."""

    def __init__(self) -> None:
        """A fresh registry with the duration histogram and the token counter."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.durations = Histogram(
            "taskbox_task_duration_seconds",
            "Wall time of finished runs, by final status.",
            labelnames=["status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "taskbox_model_tokens",
            "Model tokens used by runs, by kind (input or output).",
            labelnames=["kind"],
            registry=self.registry,
        )
        for kind in ("input", "output"):
            self.tokens.labels(kind=kind)

    def watch_store(self, counts: Callable[[], dict[str, int]]) -> None:
        """Report ``counts()`` (tasks by status) at each scrape."""
        self.registry.register(_StoreCollector(counts))

    def task_finished(self, status: str, seconds: float) -> None:
        """Observe one finished run."""
        self.durations.labels(status=status).observe(max(seconds, 0.0))

    def model_tokens(self, kind: str, count: int) -> None:
        """Count tokens of one model round."""
        self.tokens.labels(kind=kind).inc(count)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
