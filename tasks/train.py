"""Tasks of the train flow: load the labeled batch, fit with the chosen strategy, evaluate on
gold test rows, log and register the model."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from torch import nn

from mlsys.data import read_parquet_bytes
from mlsys.data.definition import DatasetDefinition
from mlsys.data.s3 import S3Uri, get_bytes
from mlsys.labeling.batch import class_probabilities, selection_rows, training_rows
from mlsys.labeling.end_model import (
    EndModelChoice,
    default_end_model_grid,
    end_model_data,
    select_end_model,
)
from mlsys.models.pyfunc import log_text_classifier
from mlsys.models.text import (
    HashingFeaturizer,
    TextDataset,
    build_text_classifier,
    score_texts,
)
from mlsys.settings import Settings
from mlsys.training import Callback, FitResult, fit
from mlsys.training.evaluate import (
    classification_metrics,
    decide,
    per_class_report,
    plot_confusion,
    plot_history,
)
from mlsys.training.fit import latest_checkpoint
from mlsys.training.gpipe_hosts import GPipeHosts
from mlsys.training.schedule import (
    load_trace,
    measured_bubble,
    plot_timeline,
    theoretical_bubble,
)
from mlsys.training.spill import Spill
from mlsys.training.trainers import GPipeTrainer, TrainerSpec
from mlsys.validation.checkpoint import CheckpointReport
from tasks.gpipe_hosts import DaskStageLauncher, hosts_strategy
from tasks.retry import outage_tolerant
from tasks.tracking import TrackedRun, mark_model_version
from tasks.validate import validate_batch


class TrackingCallback(Callback):
    """Per-epoch metrics to MLflow, a Prefect progress artifact over all steps, and each
    epoch's checkpoint uploaded to the MLflow run (``checkpoints/``)."""

    def __init__(self, run: TrackedRun, *, label: str) -> None:
        self.run = run
        self.client = run.client()
        self.label = label
        self.artifact_id: Any = None
        self.total = 1
        self.done = 0
        self.last_update = 0.0

    def on_train_begin(self, *, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.total = max(epochs * steps_per_epoch, 1)
        self.done = start_epoch * steps_per_epoch
        self.artifact_id = create_progress_artifact(
            100.0 * self.done / self.total,
            key="training-progress",
            description=f"Training ({self.label}): optimizer steps done",
        )

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.done += 1
        now = time.monotonic()
        if self.artifact_id is not None and now - self.last_update > 1.0:
            self.last_update = now
            update_progress_artifact(self.artifact_id, 100.0 * self.done / self.total)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                self.client.log_metric(self.run.run_id, f"train_{key}", float(value), step=epoch)
        get_run_logger().info(
            "epoch %d: loss %.4f (%d examples, %.1f s)",
            epoch + 1,
            record["loss"],
            record["examples"],
            record["seconds"],
        )

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.client.log_artifact(self.run.run_id, str(path), "checkpoints")

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0)


@task(name="load-labeled-batch", cache_policy=NO_CACHE)
@outage_tolerant
def load_labeled_batch(settings: Settings, uri: str) -> pd.DataFrame:
    df = read_parquet_bytes(get_bytes(settings.s3_client(), uri))
    needed = {"text", "split", "label", "label_source", "weight", "gold_label"}
    missing = sorted(needed - set(df.columns))
    if missing:
        raise ValueError(
            f"{uri} is not a labeled batch (from weak_label): it lacks {', '.join(missing)}"
        )
    get_run_logger().info("read %d rows from %s", len(df), uri)
    return df


def load_validated_batch(
    run: TrackedRun,
    settings: Settings,
    uri: str,
    *,
    dataset: str,
    validation: Literal["fail", "quarantine"],
) -> pd.DataFrame:
    """The labeled batch at ``uri``, checked with the ``training`` suite: in "fail" mode a
    failed critical expectation stops the run, in "quarantine" mode failing rows are left
    out (and written to quarantine/training/)."""
    df = load_labeled_batch(settings, uri)
    report: CheckpointReport = validate_batch(
        run,
        settings,
        df,
        suite="training",
        mode=validation,
        dataset=dataset,
        batch=PurePosixPath(S3Uri.parse(uri).key).stem,
    )
    return report.passed


@task(name="fit-model", cache_policy=NO_CACHE)
def fit_model(
    run: TrackedRun,
    df: pd.DataFrame,
    *,
    n_classes: int,
    trainer: TrainerSpec,
    featurizer: HashingFeaturizer,
    hidden: list[int],
    dropout: float,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    use_weights: bool,
    resume_from_run: str | None,
    chosen: EndModelChoice | None = None,
    dask_address: str | None = None,
) -> FitResult:
    """Train the text classifier with the chosen strategy; checkpoints go to the MLflow run.

    Without ``chosen``: the train and dev rows with a label (weak on train, gold on dev),
    each weighted by its label's quality unless ``use_weights`` is off. With ``chosen`` (an
    end model chosen on dev): its configuration, trained as it was chosen, on the weak
    train rows' class probabilities only, so that dev stays out of training.

    A GPipe trainer with ``hosts`` runs its stages there, started by the workers of the
    Dask cluster at ``dask_address`` (``MLSYS_DASK_ADDRESS``); the callbacks see the
    stages' events once the run has finished."""
    if chosen is None:
        rows = training_rows(df, use_weights)
        data: Any = TextDataset.from_frame(rows, featurizer, n_classes=n_classes)
        weight_decay = 0.0
    else:
        rows = selection_rows(df, use_weights)["train"]
        data = end_model_data(
            rows["text"].tolist(),
            class_probabilities(rows, n_classes),
            rows["weight"].to_numpy(dtype=np.float64),
            chosen.config,
            n_classes=n_classes,
            featurizer=featurizer,
        )
        weight_decay = chosen.config.weight_decay
    torch.manual_seed(seed)
    model = build_text_classifier(
        featurizer.n_features, hidden=hidden, dropout=dropout, n_classes=n_classes
    )
    client = run.client()
    client.log_metric(run.run_id, "rows_train", len(rows))
    for source, count in rows["label_source"].value_counts().items():
        client.log_metric(run.run_id, f"rows_train_{source}", int(count))
    adam = functools.partial(torch.optim.Adam, lr=lr, weight_decay=weight_decay)
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Path(folder)
        if resume_from_run:
            _download_latest_checkpoint(client, resume_from_run, checkpoints)
        if isinstance(trainer, GPipeTrainer) and trainer.hosts:
            strategy: Any = hosts_strategy(trainer, checkpoints, dask_address)
        else:
            strategy = trainer.strategy(checkpoints)
        if isinstance(strategy, Spill):
            plan = strategy.plan(model, data[0][0].unsqueeze(0), adam, batch_size)
            get_run_logger().info("spilling in %d shards:\n%s", len(plan.counts), plan.describe())
            client.log_metric(run.run_id, "spill_shards", len(plan.counts))
            client.log_text(run.run_id, plan.describe(), "train/spill_plan.txt")
        result = fit(
            model,
            data,
            strategy=strategy,
            optimizer=adam,
            loss=nn.CrossEntropyLoss(reduction="none"),
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            shuffle=True,
            drop_last=trainer.drop_last,
            checkpoint_dir=checkpoints,
            resume=bool(resume_from_run),
            callbacks=[TrackingCallback(run, label=trainer.kind)],
        )
        if isinstance(strategy, GPipeHosts):
            _log_placements(strategy)
        elif isinstance(trainer, GPipeTrainer):
            _log_pipeline_schedule(run, checkpoints / "trace", trainer.stages, trainer.microbatches)
        return result


@task(name="choose-end-model", cache_policy=NO_CACHE)
@outage_tolerant
def choose_end_model(
    run: TrackedRun,
    df: pd.DataFrame,
    definition: DatasetDefinition,
    featurizer: HashingFeaturizer,
    *,
    use_weights: bool,
    seed: int,
    layered: bool = False,
) -> EndModelChoice:
    """Choose the end model's learning rate, widths, epochs and class balancing (and, for
    a binary dataset scored by F1, its decision threshold) on the gold dev rows by the
    dataset's metric: each candidate learns the weak train rows' class probabilities only.
    Every candidate goes to MLflow (``train/end_model_trials.csv``), the chosen
    configuration as ``chosen.*`` params. ``layered`` keeps only candidates with hidden
    layers (a pipeline trainer needs several layers)."""
    logger = get_run_logger()
    rows = selection_rows(df, use_weights)
    train, dev = rows["train"], rows["dev"]
    choice = select_end_model(
        train["text"].tolist(),
        class_probabilities(train, definition.k),
        train["weight"].to_numpy(dtype=np.float64),
        dev["text"].tolist(),
        dev["gold_label"].to_numpy(dtype=np.int64),
        n_classes=definition.k,
        metric=definition.metric,
        positive=definition.positive_index,
        featurizer=featurizer,
        grid=[c for c in default_end_model_grid(definition.metric) if c.hidden or not layered],
        seed=seed,
        progress=logger.info,
    )
    client = run.client()
    client.log_text(
        run.run_id, pd.DataFrame(choice.trials).to_csv(index=False), "train/end_model_trials.csv"
    )
    client.log_metric(run.run_id, f"chosen_dev_{definition.metric}", choice.dev[definition.metric])
    client.log_metric(run.run_id, "choose_seconds", choice.seconds)
    if choice.threshold is not None:
        client.log_metric(run.run_id, "threshold", choice.threshold)
    config = choice.config
    for key, value in (("lr", config.lr), ("hidden", list(config.hidden)),
                       ("epochs", choice.epochs), ("balance", config.balance)):  # fmt: skip
        client.log_param(run.run_id, f"chosen.{key}", str(value))
    return choice


def _log_placements(strategy: GPipeHosts) -> None:
    """Where each stage ran (a run across hosts keeps no timeline: its hosts share no
    clock)."""
    if isinstance(strategy.launch, DaskStageLauncher):
        for placed in strategy.launch.placements:
            get_run_logger().info(
                "stage %d ran on host %s (address %s, Dask worker %s)",
                placed.stage,
                placed.host,
                placed.address,
                placed.worker,
            )


def _log_pipeline_schedule(run: TrackedRun, trace: Path, stages: int, microbatches: int) -> None:
    """The last mini-batch's per-stage timeline as a picture, and its measured bubble."""
    steps = load_trace(trace)
    if not steps:
        return
    last = steps[-1]
    bubble = measured_bubble(last)
    theory = theoretical_bubble(stages, microbatches)
    title = f"K={stages}, M={microbatches}: measured bubble {bubble:.3f}, theory {theory:.3f}"
    picture = plot_timeline([(title, last)], trace / "pipeline_schedule.png")
    client = run.client()
    client.log_artifact(run.run_id, str(picture), "train")
    client.log_metric(run.run_id, "pipeline_bubble_measured", bubble)
    client.log_metric(run.run_id, "pipeline_bubble_theory", theory)


def _download_latest_checkpoint(client: MlflowClient, run_id: str, folder: Path) -> None:
    names = sorted(a.path for a in client.list_artifacts(run_id, "checkpoints"))
    if not names:
        raise ValueError(f"MLflow run {run_id} has no checkpoints/ to resume from")
    (folder / "download").mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, names[-1], str(folder / "download")))
    target = folder / local.name
    local.replace(target)
    if latest_checkpoint(folder) != target:
        raise ValueError(f"MLflow run {run_id}: {names[-1]} is not an epoch checkpoint")
    get_run_logger().info("resuming from %s of MLflow run %s", target.name, run_id)


@task(name="evaluate-model", cache_policy=NO_CACHE)
@outage_tolerant
def evaluate_model(
    run: TrackedRun,
    result: FitResult,
    df: pd.DataFrame,
    featurizer: HashingFeaturizer,
    definition: DatasetDefinition,
    *,
    threshold: float | None = None,
) -> dict[str, float]:
    """Accuracy, F1, macro F1 and log loss on the gold test rows (and on train/dev rows'
    labels), per-class precision and recall, a confusion matrix named by class and the
    loss curve, logged to MLflow. ``test_<metric>`` is the dataset's metric on test.
    A binary ``threshold`` decides as the registered model will."""
    metrics: dict[str, float] = {}
    client = run.client()
    test = df[(df["split"] == "test") & df["gold_label"].notna()]
    if test.empty:
        raise ValueError("the labeled batch has no gold test rows to evaluate on")
    names = list(definition.classes)
    for name, rows, column in (
        ("test", test, "gold_label"),
        ("train", training_rows(df, True), "label"),
    ):
        _, proba = score_texts(result.model, featurizer, rows["text"], rows[column])
        y = rows[column].to_numpy(dtype=np.int64)
        positive = definition.positive_index
        scores = classification_metrics(y, proba, positive=positive, threshold=threshold)
        metrics.update({f"{name}_{key}": value for key, value in scores.items()})
        if name == "test":
            predicted = decide(proba, positive=positive, threshold=threshold)
            fig = plot_confusion(y, predicted, names, title="Gold test rows")
            client.log_figure(run.run_id, fig, "train/confusion_test.png")
            report = per_class_report(y, predicted, names)
            client.log_text(run.run_id, report.to_csv(index=False), "train/per_class_test.csv")
            for row in report.to_dict(orient="records"):
                for key in ("precision", "recall"):
                    metrics[f"test_{key}_{_metric_safe(str(row['class']))}"] = float(row[key])
    metrics["test_metric"] = metrics[f"test_{definition.metric}"]
    for key, value in metrics.items():
        client.log_metric(run.run_id, key, value)
    client.set_tag(run.run_id, "mlsys.metric", definition.metric)
    client.log_figure(
        run.run_id, plot_history(result.history, title="Training loss"), "train/loss.png"
    )
    get_run_logger().info(
        "test %s %.3f (accuracy %.3f) on %d gold rows",
        definition.metric,
        metrics[f"test_{definition.metric}"],
        metrics["test_accuracy"],
        int(metrics["test_rows"]),
    )
    return metrics


def _metric_safe(name: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . / and space)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


@task(name="register-model", cache_policy=NO_CACHE)
@outage_tolerant
def register_model(
    run: TrackedRun,
    result: FitResult,
    featurizer: HashingFeaturizer,
    definition: DatasetDefinition,
    *,
    name: str,
    alias: str,
    examples: list[str],
    metrics: dict[str, float],
    threshold: float | None = None,
) -> dict[str, str]:
    """Log the pyfunc (raw text in; class names out) to the run, register a version, set
    ``alias`` and tag the version with the Prefect flow run it came from and its test
    scores. Logs how long that took as ``log_register_seconds``."""
    started = time.perf_counter()
    info = log_text_classifier(
        result.model,
        featurizer,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        registered_model_name=name,
        input_example_texts=examples,
        class_names=list(definition.classes),
        threshold=threshold,
        positive=definition.positive_index,
    )
    version = str(info.registered_model_version)
    scores: dict[str, float] = {
        key: metrics[key]
        for key in ("test_accuracy", "test_f1", "test_macro_f1", "test_metric")
        if key in metrics
    }
    mark_model_version(run, name, version, alias=alias, scores=scores)
    run.client().set_model_version_tag(name, version, "metric", definition.metric)
    seconds = time.perf_counter() - started
    run.client().log_metric(run.run_id, "log_register_seconds", seconds)
    get_run_logger().info(
        "registered %s version %s as @%s (logged and registered in %.2f s)",
        name,
        version,
        alias,
        seconds,
    )
    return {"name": name, "version": version, "alias": alias, "model_uri": info.model_uri}


@task(name="promote-if-better", cache_policy=NO_CACHE)
@outage_tolerant
def promote_if_better(
    run: TrackedRun,
    *,
    name: str,
    version: str,
    metrics: dict[str, float],
    metric: str,
    alias: str = "champion",
) -> tuple[bool, str]:
    """Point ``alias`` at ``version`` if its ``metric`` on the gold test rows (e.g.
    ``test_f1``, the dataset's metric) beats the current holder's (ties keep the holder),
    or if no version holds the alias yet. A holder scored by another metric (its
    ``metric`` tag differs) is replaced: the two are not comparable.

    Returns whether it did and why, in words; the run gets the tags ``mlsys.promoted``
    (true/false) and ``mlsys.promotion`` (the reason)."""
    from mlflow.exceptions import MlflowException

    client = run.client()
    logger = get_run_logger()
    new = metrics[metric]
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    old = holder.tags.get(metric) if holder is not None else None
    if holder is not None and holder.tags.get("metric", "accuracy") != metric.removeprefix("test_"):
        old = None
    if holder is not None and old is not None and new <= float(old):
        reason = (
            f"kept {name} version {holder.version} as @{alias}: its {metric} {float(old):.4f} "
            f"is at least version {version}'s {new:.4f}"
        )
        promoted = False
    else:
        was = f"version {holder.version} ({metric} {old})" if holder is not None else "no version"
        reason = (
            f"promoted {name} version {version} to @{alias}: {metric} {new:.4f} (before: {was})"
        )
        client.set_registered_model_alias(name, alias, version)
        promoted = True
    logger.info(reason)
    client.set_tag(run.run_id, "mlsys.promoted", "true" if promoted else "false")
    client.set_tag(run.run_id, "mlsys.promotion", reason)
    return promoted, reason
