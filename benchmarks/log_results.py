"""Log the figures in benchmarks/results/ to MLflow: one run per benchmark in the experiment
``benchmarks``, every number of its JSON as a metric (nested keys joined by ``.``), the
JSON itself and any picture of the same name as artifacts.

    .venv/bin/python benchmarks/log_results.py --tracking-uri http://127.0.0.1:5000
    .venv/bin/python benchmarks/log_results.py --tracking-uri ... --only incremental validate

Run a benchmark first (``make bench`` runs them all); this only publishes what they wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlsys.links import mlflow_run_link

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENT = "benchmarks"
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]+")


def numbers(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every int or float leaf of ``value`` with its dotted path (list items by index, or
    by their ``workload``/``name``/``rows`` field when they have one)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            label = index
            if isinstance(item, dict):
                label = next((item[k] for k in ("workload", "name", "rows") if k in item), index)
            yield from numbers(item, f"{prefix}.{label}" if prefix else str(label))


def metric_name(path: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. /``), at most 250 characters."""
    return _UNSAFE.sub("_", path)[:250]


def log_result(client: Any, experiment_id: str, path: Path) -> str:
    """One run for the result file ``path``; returns its run id."""
    report = json.loads(path.read_text())
    run = client.create_run(experiment_id, run_name=path.stem, tags={"benchmark": path.stem})
    run_id = str(run.info.run_id)
    seen: set[str] = set()
    for name, value in numbers(report):
        key = metric_name(name)
        if key and key not in seen:
            seen.add(key)
            client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(path))
    for picture in sorted(RESULTS.glob(f"{path.stem}*.png")):
        client.log_artifact(run_id, str(picture))
    client.set_terminated(run_id)
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, "
        "which `source .stack/env` sets); without one nothing is logged",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="benchmark names (result file stems) to log; default: every results/*.json",
    )
    args = parser.parse_args()
    if not args.tracking_uri:
        print("no MLflow tracking URI (--tracking-uri or $MLFLOW_TRACKING_URI): nothing logged")
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    files = sorted(RESULTS.glob("*.json"))
    if args.only is not None:
        missing = sorted(set(args.only) - {f.stem for f in files})
        if missing:
            parser.error(f"no results for {missing}; found {[f.stem for f in files]}")
        files = [f for f in files if f.stem in args.only]
    for path in files:
        run_id = log_result(client, experiment_id, path)
        print(f"{path.stem}: {mlflow_run_link(args.tracking_uri, experiment_id, run_id)}")


if __name__ == "__main__":
    main()
