"""The model server's Prometheus metrics, exposed as text on ``GET /metrics``.

Each server has its own registry (never prometheus_client's global one), so several
servers, or tests, in one process do not mix their counts. What happens per request or per
batch is counted as it happens (requests by status, latencies, batch sizes); what the
parts of the server already count (cache hits, shed requests, queue depth, versions
served, shadow agreement, prediction log rows) is read from them at scrape time through
:meth:`ServingMetrics.read`, so the parts keep plain integers and know nothing of
Prometheus.

=========================================  ======  ========================================
metric                                     type    what
=========================================  ======  ========================================
``mlsys_serve_requests_total{path,code}``  counter  requests answered, by route and status
``mlsys_serve_request_seconds``            histo.  time to answer a served prediction
``mlsys_serve_shed_seconds``               histo.  time to refuse a request (503, shed)
``mlsys_serve_batch_rows``                 histo.  rows per scored batch
``mlsys_serve_batch_seconds``              histo.  scoring time per batch
``mlsys_serve_queue_rows``                 gauge   rows waiting in the queue
``mlsys_serve_batch_limit_rows``           gauge   the batch size AIMD allows now
``mlsys_serve_loop_lag_seconds``           gauge   how long a callback waits for the event
                                                   loop now (admission control counts it)
``mlsys_serve_loop_lag_worst_seconds``     gauge   the longest a probe has waited
``mlsys_serve_cache_hits_total``           counter  rows answered from the cache
``mlsys_serve_cache_misses_total``         counter  rows the cache did not have
``mlsys_serve_shed_total``                 counter  requests refused by admission control
``mlsys_serve_model_version{model,...}``   gauge   1 for each version served (role
                                                   ``serving`` or ``shadow``)
``mlsys_serve_shadow_rows_total``          counter  rows the shadow model also scored
``mlsys_serve_shadow_agreed_rows_total``   counter  of those, rows where both agreed
``mlsys_serve_log_rows_total``             counter  rows written to the prediction log
``mlsys_serve_log_dropped_rows_total``     counter  rows the log gave up on
=========================================  ======  ========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServingMetrics", "VersionInfo"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_PREFIX = "mlsys_serve"
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0
)  # fmt: skip
_BATCH_BUCKETS = tuple(float(2**k) for k in range(11))


@dataclass(frozen=True)
class VersionInfo:
    """One served version, for ``mlsys_serve_model_version``."""

    model: str
    alias: str
    version: str
    role: str


@dataclass(frozen=True)
class _Reading:
    name: str
    documentation: str
    kind: str
    read: Callable[[], float]


class _Readings(Collector):
    """Values read from the server's parts at scrape time."""

    def __init__(self) -> None:
        self.readings: list[_Reading] = []
        self.versions: Callable[[], Sequence[VersionInfo]] = tuple

    def collect(self) -> Iterator[Metric]:
        for reading in self.readings:
            family = CounterMetricFamily if reading.kind == "counter" else GaugeMetricFamily
            yield family(reading.name, reading.documentation, value=float(reading.read()))
        served = GaugeMetricFamily(
            f"{_PREFIX}_model_version",
            "1 for each model version being served (role serving) or shadowed (role shadow).",
            labels=("model", "alias", "version", "role"),
        )
        for info in self.versions():
            served.add_metric((info.model, info.alias, info.version, info.role), 1.0)
        yield served


class ServingMetrics:
    """The metrics of one server (see the module docstring for the list).

    Usage::

        metrics = ServingMetrics()
        metrics.read("cache_hits_total", "Rows answered from the cache.", lambda: cache.hits)
        metrics.requests.labels(path="/invocations", code="200").inc()
        body = metrics.render()
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            f"{_PREFIX}_requests",
            "Requests answered, by route and HTTP status.",
            ("path", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{_PREFIX}_request_seconds",
            "Time from a prediction request's arrival to its answer (status 200).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shed_latency = Histogram(
            f"{_PREFIX}_shed_seconds",
            "Time from a prediction request's arrival to its refusal by admission control (503).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            f"{_PREFIX}_batch_rows",
            "Rows per batch scored by the model.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            f"{_PREFIX}_batch_seconds",
            "Scoring time per batch.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._readings = _Readings()
        self.registry.register(self._readings)
        self._counted: dict[tuple[str, int], Counter] = {}

    def read(
        self, name: str, documentation: str, read: Callable[[], float], kind: str = "counter"
    ) -> None:
        """Expose ``read()`` as ``mlsys_serve_<name>`` (``counter`` or ``gauge``),
        evaluated at each scrape."""
        if kind not in ("counter", "gauge"):
            raise ValueError(f"kind must be 'counter' or 'gauge', got {kind!r}")
        if kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]  # prometheus_client adds it back
        self._readings.readings.append(_Reading(f"{_PREFIX}_{name}", documentation, kind, read))

    def versions(self, read: Callable[[], Sequence[VersionInfo]]) -> None:
        """Expose the versions ``read()`` returns as ``mlsys_serve_model_version``."""
        self._readings.versions = read

    def count(self, path: str, code: int) -> None:
        """One more answer on ``path`` with status ``code`` (``requests_total``); the
        labelled child is looked up once per pair, not per request."""
        child = self._counted.get((path, code))
        if child is None:
            child = self._counted[path, code] = self.requests.labels(path=path, code=str(code))
        child.inc()

    def observe_batch(self, rows: int, service_ms: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(service_ms / 1000)

    def render(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
