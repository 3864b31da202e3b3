"""The summary row for benchmarks/lf_cluster.py (results/lf_cluster.json)."""

from __future__ import annotations

from ._format import Results, bold, commas, size_label, times


def lf_cluster_row(results: Results) -> str:
    """Summary row: weak_label's LFs on a Dask cluster against the in-process applier on
    the same cores, and the cluster's scaling from one worker."""
    head = results["headline"]
    n, targets = head["workers"], head["targets"]
    rate = results["rows_per_s"]
    ratio, scaling = head["cluster_vs_in_process"], head["workers_vs_one"]
    return (
        f"| `lf_cluster.py`: weak_label's LFs on a Dask cluster made for the run ({n} workers; "
        f"{results['partitions']} partitions through S3, cluster start and close included) "
        f"over {size_label(results['rows'])} distinct comments, {results['lfs']} LFs "
        f"| the in-process applier (`apply_lfs`, {n} processes), label matrices checked "
        f"identical | {bold(times(ratio), targets['cluster_vs_in_process']['met'])} "
        f"({commas(rate[f'cluster_{n}'])} vs {commas(rate[f'in_process_{n}'])} rows/s; target "
        f"{targets['cluster_vs_in_process']['target']}x); {n} workers {times(scaling)} one "
        f"(target {targets['workers_vs_one']['target']}x"
        + ("" if targets["workers_vs_one"]["met"] else ", NOT met")
        + ") |"
    )
