"""Tests for mlsys.serving.peers: several workers' metrics merged into one scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mlsys.serving.metrics import ServingMetrics, VersionInfo
from mlsys.serving.peers import merge_metrics, worker_socket


def worker(requests: int, shed: int, queue: int, lag_s: float, version: str) -> bytes:
    metrics = ServingMetrics()
    metrics.read("workers", "Processes.", lambda: 1, "gauge")
    metrics.read("queue_rows", "Rows waiting.", lambda: queue, "gauge")
    metrics.read("loop_lag_worst_seconds", "Worst lag.", lambda: lag_s, "gauge")
    metrics.read("shed_total", "Shed.", lambda: shed)
    metrics.versions(lambda: [VersionInfo("spam", "champion", version, "serving")])
    for _ in range(requests):
        metrics.count("/invocations", 200)
        metrics.latency.observe(0.003)
    metrics.latency.observe(0.3)
    return metrics.render()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_are_summed_and_state_gauges_take_the_worst() -> None:
    merged = samples(merge_metrics([worker(3, 1, 2, 0.010, "4"), worker(5, 2, 1, 0.030, "5")]))
    assert merged["mlsys_serve_requests_total", (("code", "200"), ("path", "/invocations"))] == 8
    assert merged["mlsys_serve_shed_total", ()] == 3
    assert merged["mlsys_serve_request_seconds_count", ()] == 10
    assert merged["mlsys_serve_request_seconds_bucket", (("le", "0.005"),)] == 8
    assert merged["mlsys_serve_request_seconds_bucket", (("le", "+Inf"),)] == 10
    assert abs(merged["mlsys_serve_request_seconds_sum", ()] - (8 * 0.003 + 2 * 0.3)) < 1e-9
    assert merged["mlsys_serve_workers", ()] == 2
    assert merged["mlsys_serve_queue_rows", ()] == 3  # rows waiting in either queue
    assert merged["mlsys_serve_loop_lag_worst_seconds", ()] == 0.030
    # A promotion half-way: each version served by some worker, once.
    versions = {
        dict(labels)["version"]: value
        for (name, labels), value in merged.items()
        if name == "mlsys_serve_model_version"
    }
    assert versions == {"4": 1.0, "5": 1.0}


def test_each_family_is_described_once_and_created_times_are_the_earliest() -> None:
    first, second = worker(1, 0, 0, 0.0, "4"), worker(1, 0, 0, 0.0, "4")
    text = merge_metrics([first, second]).decode()
    assert text.count("# TYPE mlsys_serve_requests_total counter") == 1
    assert text.count("# HELP mlsys_serve_request_seconds ") == 1
    created = [samples(t)["mlsys_serve_request_seconds_created", ()] for t in (first, second)]
    merged = samples(text.encode())
    assert merged["mlsys_serve_request_seconds_created", ()] == min(created)
    # One worker's text comes back as it was.
    assert samples(merge_metrics([first])) == samples(first)


def test_worker_sockets_are_numbered_in_the_folder() -> None:
    assert worker_socket("/tmp/mlsys-serve-x", 1) == "/tmp/mlsys-serve-x/worker-1.sock"
