"""Tasks of the select_models flow: train a grid of the dataset's text classifiers at once
with SHARP, log each as an MLflow child run, and rank them on the gold dev rows."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from torch import nn

from mlsys.models.text import (
    HashingFeaturizer,
    TextDataset,
    build_text_classifier,
    score_texts,
)
from mlsys.training import FitResult, Job, ManyResult, train_many
from mlsys.training.evaluate import classification_metrics, plot_history
from mlsys.training.selection import GridPoint
from mlsys.training.sharp import lower_bound, plot_gantt
from tasks.retry import outage_tolerant
from tasks.tracking import TrackedRun, child_run


@task(name="train-grid", cache_policy=NO_CACHE)
def train_grid(
    run: TrackedRun,
    train: pd.DataFrame,
    points: list[GridPoint],
    *,
    featurizer: HashingFeaturizer,
    n_classes: int,
    dropout: float,
    epochs: int,
    batch_size: int,
    seed: int,
    workers: int,
    budget_bytes: int | None,
) -> ManyResult:
    """Every grid point trained at once by ``train_many`` on ``workers`` processes; the
    device timeline is logged to the parent run as a Gantt chart."""
    logger = get_run_logger()
    data = TextDataset.from_frame(train, featurizer, n_classes=n_classes)
    jobs = []
    for point in points:
        torch.manual_seed(seed)
        jobs.append(
            Job(
                model=build_text_classifier(
                    featurizer.n_features, point.hidden, dropout, n_classes=n_classes
                ),
                data=data,
                optimizer=functools.partial(torch.optim.Adam, lr=point.lr),
                loss=nn.CrossEntropyLoss(reduction="none"),
                epochs=epochs,
                batch_size=batch_size,
                seed=seed,
                shuffle=True,
                name=point.name,
            )
        )
    artifact: Any = create_progress_artifact(
        0.0, key="selection-progress", description=f"Training {len(jobs)} models (SHARP)"
    )
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or done == total:
            last[0] = now
            update_progress_artifact(artifact, 100.0 * done / max(total, 1))

    logger.info(
        "training %d models on %d worker(s), %d rows, %d epochs",
        len(jobs),
        workers,
        len(data),
        epochs,
    )
    result = train_many(jobs, devices=workers, budget_bytes=budget_bytes, progress=progress)
    client = run.client()
    client.log_metric(run.run_id, "sharp_makespan_seconds", result.makespan)
    client.log_metric(run.run_id, "sharp_setup_seconds", result.setup_seconds)
    if result.timeline:
        bound = lower_bound(result.timeline, workers)
        client.log_metric(run.run_id, "sharp_lower_bound_seconds", bound)
        with tempfile.TemporaryDirectory() as folder:
            picture = plot_gantt(
                result.timeline,
                Path(folder) / "sharp_gantt.png",
                names=[p.name for p in points],
                title=(
                    f"{len(jobs)} models on {workers} worker(s): makespan "
                    f"{result.makespan:.1f} s (lower bound {bound:.1f} s)"
                ),
            )
            client.log_artifact(run.run_id, str(picture), "selection")
    for name, text in result.failures.items():
        logger.error("model %s failed:\n%s", name, text)
    return result


@task(name="log-candidates", cache_policy=NO_CACHE)
@outage_tolerant
def log_candidates(
    run: TrackedRun,
    points: list[GridPoint],
    result: ManyResult,
    rows: dict[str, pd.DataFrame],
    featurizer: HashingFeaturizer,
    *,
    common: dict[str, Any],
    positive: int = 1,
) -> list[dict[str, Any]]:
    """One MLflow child run per grid point (its parameters, per-epoch loss, dev and test
    metrics, loss curve; a failed one its traceback, status FAILED); returns a row each."""
    candidates = []
    for point, fitted in zip(points, result.results, strict=True):
        row: dict[str, Any] = {
            "model": point.name,
            "lr": point.lr,
            "width": point.width if point.depth else None,
            "depth": point.depth,
        }
        params = {**common, "lr": point.lr, "hidden": point.hidden}
        with child_run(run, point.name, params=params) as child:
            row["run_id"] = child.run_id
            row["run_url"] = child.url
            client = child.client()
            if fitted is None:
                error = result.failures.get(point.name, "failed")
                client.log_text(child.run_id, error, "error.txt")
                row["error"] = error.strip().splitlines()[-1]
                child.fail()
                candidates.append(row)
                continue
            for record in fitted.history:
                client.log_metric(
                    child.run_id, "train_loss", float(record["loss"]), step=int(record["epoch"])
                )
            metrics = score(fitted, rows, featurizer, positive=positive)
            for key, value in metrics.items():
                client.log_metric(child.run_id, key, value)
            client.log_figure(
                child.run_id, plot_history(fitted.history, title=point.name), "train/loss.png"
            )
            row.update(metrics)
            row["final_loss"] = float(fitted.history[-1]["loss"])
            candidates.append(row)
    return candidates


def score(
    fitted: FitResult,
    rows: dict[str, pd.DataFrame],
    featurizer: HashingFeaturizer,
    *,
    positive: int = 1,
) -> dict[str, float]:
    """Accuracy, F1 (of class ``positive`` when binary), macro F1 and log loss on the gold
    dev and test rows."""
    metrics = {}
    for split in ("dev", "test"):
        frame = rows[split]
        _, proba = score_texts(fitted.model, featurizer, frame["text"], frame["gold_label"])
        y = frame["gold_label"].to_numpy(dtype=np.int64)
        scores = classification_metrics(y, proba, positive=positive)
        metrics.update({f"{split}_{key}": value for key, value in scores.items()})
    return metrics
