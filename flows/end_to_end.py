"""Flow `end_to_end`: ingest -> weak_label -> train -> evaluate, register, promote if better ->
batch_infer with the champion, each stage a subflow whose MLflow run nests under this one's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow

from flows.batch_infer import batch_infer
from flows.ingest import ingest
from flows.options import InferOptions, LabelOptions, TrainOptions
from flows.train import train
from flows.weak_label import weak_label
from mlsys.links import mlflow_model_link
from mlsys.settings import Settings
from tasks.hooks import STAGE_HOOKS
from tasks.retry import tolerant
from tasks.stages import (
    Stages,
    naming_stage,
    path_fingerprint,
    s3_fingerprint,
    s3_object_exists,
)
from tasks.tracking import TrackedFlow, stage_metrics


@flow(name="end_to_end", log_prints=True, **STAGE_HOOKS)
def end_to_end(
    source: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    model_name: str | None = None,
    label: LabelOptions = LabelOptions(),  # noqa: B008 - a default the Prefect UI form shows
    training: TrainOptions = TrainOptions(),  # noqa: B008
    inference: InferOptions = InferOptions(),  # noqa: B008
    promote: bool = True,
    refresh: bool = False,
) -> dict[str, Any]:
    """The whole pipeline on one batch of data, as `make demo` runs it.

    ingest (raw suite) -> weak_label (raw and training suites) -> train (training suite;
    evaluated on the gold test rows, registered as @challenger) -> promoted to @champion
    only if it beats the current champion on the test rows (otherwise the champion stays
    and the summary says why) -> batch_infer of the batch with @champion (serving suite
    and skew check).

    Args:
        source: What to ingest: a file or folder in the dataset's format, local, s3:// or
            https://. Empty: the dataset definition's default source.
        dataset: A dataset defined under datasets/ (`mlsys dataset list`): its columns,
            classes, metric, gold policy, LFs and suites drive every stage.
        batch: Batch id of every stage's output. Empty: the current UTC time.
        model_name: Registered model name in MLflow. Empty: the dataset's.
        label: Weak-labeling options.
        training: Training options (trainer, epochs, batch size, learning rate, widths).
        inference: Batch-inference options.
        promote: Let a better model become @champion (off: register @challenger only).
        refresh: Run every stage, even one whose result an earlier run with the same
            inputs stored (by default such a stage is reused: a failed run resumes).

    Returns:
        Every stage's output URI, the registered version, its test score by the
        dataset's metric and its test accuracy, the promotion decision and its reason,
        and the predictions' manifest.
    """
    tracked = TrackedFlow("end-to-end-summary", dataset)
    settings, definition = tracked.settings, tracked.definition
    definition.lf_set(label.lf_set)  # an unknown LF set fails before any stage runs
    model_name = model_name or definition.registered_model_name
    batch = batch or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    params = {
        "source": source,
        "dataset": dataset,
        "batch": batch,
        "model_name": model_name,
        "promote": promote,
        "refresh": refresh,
        **{f"label.{k}": v for k, v in label.params().items()},
        **{f"training.{k}": v for k, v in training.params().items()},
        **{f"inference.{k}": v for k, v in inference.model_dump().items()},
    }
    with tracked.track(params) as run:
        stages = Stages(settings, refresh=refresh)
        raw = stages.run(
            "ingest",
            ingest,
            inputs={"source": path_fingerprint(source), "dataset": dataset, "batch": batch},
            still_valid=lambda uri: s3_object_exists(settings, uri),
            source=source,
            dataset=dataset,
            batch=batch,
        )
        labeled = stages.run(
            "weak_label",
            weak_label,
            inputs={"raw": s3_fingerprint(settings, raw), **label.model_dump()},
            still_valid=lambda uri: s3_object_exists(settings, uri),
            raw_batch=raw,
            dataset=dataset,
            batch=batch,
            label=label,
        )
        registered = stages.run(
            "train",
            train,
            inputs={
                "labeled": s3_fingerprint(settings, labeled),
                "model_name": model_name,
                "promote": promote,
                **training.model_dump(),
            },
            still_valid=lambda out: _version_exists(settings, model_name, out["version"]),
            labeled_batch=labeled,
            dataset=dataset,
            training=training,
            model_name=model_name,
            promote=promote,
        )
        # Not cached: the champion may have changed, and batch_infer resumes by itself,
        # skipping the chunks it has already written.
        with naming_stage("batch_infer"):
            manifest = batch_infer(
                source=raw,
                dataset=dataset,
                batch=batch,
                model_name=model_name,
                alias="champion",
                inference=inference,
            )
        rows = stages.rows + [r for r in stage_metrics(run) if r["stage"] == "batch_infer"]
        promotion = registered["promotion"]
        if "train" in stages.reused:
            promotion = (
                f"no new model: an earlier run trained version {registered['version']} on the "
                f"same data and options (its promotion then: {promotion})"
            )
        client = run.client()
        client.set_tag(run.run_id, "mlsys.promotion", promotion)
        client.set_tag(run.run_id, "mlsys.model_version", registered["version"])
        client.set_tag(run.run_id, "mlsys.reused_stages", ",".join(stages.reused) or "none")
        metric = f"test_{definition.metric}"
        client.log_metric(run.run_id, "test_accuracy", float(registered["test_accuracy"]))
        client.log_metric(run.run_id, metric, float(registered[metric]))
        outcome = {
            "raw_batch": raw,
            "labeled_batch": labeled,
            "model_version": registered["version"],
            "model_uri": registered["model_uri"],
            "test_accuracy": float(registered["test_accuracy"]),
            "metric": definition.metric,
            metric: float(registered[metric]),
            "champion": registered["champion"],
            "reused_stages": stages.reused,
            "promotion": promotion,
            "predictions_manifest": manifest,
            "mlflow_run": run.url,
        }
        tracked.summarize(
            _summary(outcome, rows, model_name, settings),
            description=f"End-to-end run on {dataset}/{batch}",
        )
    return outcome


def _summary(
    outcome: dict[str, Any], rows: list[dict[str, Any]], model_name: str, settings: Settings
) -> str:
    lines = [
        "# End to end",
        "",
        "| stage | rows in | rows out | quarantined | MLflow run |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        link = f"[{row['run_name']}]({row['url']})" if "url" in row else ""
        if row.get("reused"):
            link += " (reused: an earlier run had the same inputs)"
        lines.append(
            f"| {row['stage']} | {row.get('rows_in', '')} | {row.get('rows_out', '')} "
            f"| {row.get('rows_quarantined', '')} | {link} |"
        )
    model_url = mlflow_model_link(settings.tracking_uri, model_name, outcome["model_version"])
    lines += [
        "",
        f"Model: [`{model_name}` version {outcome['model_version']}]({model_url}), test "
        f"{outcome['metric']} {outcome['test_' + outcome['metric']]:.4f} (accuracy "
        f"{outcome['test_accuracy']:.4f}) on the gold test rows.  ",
        f"Promotion: {outcome['promotion']}  ",
        f"Predictions: `{outcome['predictions_manifest']}`  ",
        f"MLflow run: [{outcome['mlflow_run']}]({outcome['mlflow_run']})",
    ]
    return "\n".join(lines) + "\n"


def _version_exists(settings: Settings, model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tolerant(MlflowClient(tracking_uri=settings.tracking_uri)).get_model_version(
            model_name, version
        )
    except MlflowException:
        return False
    return True


if __name__ == "__main__":
    end_to_end()
