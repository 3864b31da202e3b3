"""Tests for mlsys.serving.metrics: the Prometheus text a server exposes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mlsys.serving.metrics import ServingMetrics, VersionInfo


def samples(metrics: ServingMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_text_parses_and_carries_counts_histograms_and_readings() -> None:
    metrics = ServingMetrics()
    hits = [3]
    metrics.read("cache_hits_total", "Rows answered from the cache.", lambda: hits[0])
    metrics.read("queue_rows", "Rows waiting.", lambda: 7, kind="gauge")
    metrics.versions(lambda: [VersionInfo("spam", "champion", "4", "serving")])
    metrics.requests.labels(path="/invocations", code="200").inc(2)
    metrics.requests.labels(path="/invocations", code="401").inc()
    metrics.latency.observe(0.003)
    metrics.observe_batch(rows=16, service_ms=4.0)
    hits[0] = 5
    got = samples(metrics)
    assert got[("mlsys_serve_requests_total", (("code", "200"), ("path", "/invocations")))] == 2
    assert got[("mlsys_serve_requests_total", (("code", "401"), ("path", "/invocations")))] == 1
    assert got[("mlsys_serve_request_seconds_count", ())] == 1
    assert got[("mlsys_serve_batch_rows_bucket", (("le", "16.0"),))] == 1
    assert got[("mlsys_serve_batch_rows_bucket", (("le", "8.0"),))] == 0
    assert got[("mlsys_serve_batch_seconds_sum", ())] == 0.004
    assert got[("mlsys_serve_cache_hits_total", ())] == 5  # read at scrape time
    assert got[("mlsys_serve_queue_rows", ())] == 7
    version = (("alias", "champion"), ("model", "spam"), ("role", "serving"), ("version", "4"))
    assert got[("mlsys_serve_model_version", version)] == 1


def test_two_servers_in_one_process_count_apart() -> None:
    a, b = ServingMetrics(), ServingMetrics()
    a.requests.labels(path="/ping", code="200").inc()
    assert ("mlsys_serve_requests_total", (("code", "200"), ("path", "/ping"))) not in samples(b)
