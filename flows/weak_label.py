"""Flow `weak_label`: a raw batch in S3 -> labeled Parquet batch in S3, tracked in MLflow."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Literal

from prefect import flow

from flows.options import LabelOptions
from mlsys.data.catalog import labeled_key, labeled_prefix, quarantine_key
from mlsys.data.s3 import S3Uri
from mlsys.labeling.analysis import plot_weights
from tasks.tracking import TrackedFlow
from tasks.validate import previous_batch, validate_batch
from tasks.weak_label import (
    analyze_lfs,
    apply_labeling_functions,
    find_raw_batch,
    load_raw_batch,
    merge_gold_and_weak,
    split_batch,
    summary_markdown,
    track_weak_label,
    tune_label_model,
    write_batch,
)


@flow(name="weak_label", log_prints=True)
def weak_label(
    raw_batch: str | None = None,
    dataset: str = "youtube-spam",
    batch: str | None = None,
    label: LabelOptions = LabelOptions(),  # noqa: B008 - a default the Prefect UI form shows
    validation: Literal["quarantine", "fail"] = "quarantine",
    accept_schema_update: bool = False,
) -> str:
    """Label a raw batch with labeling functions and a label model; merge gold labels in.

    Writes s3://<bucket>/labeled/<dataset>/<batch>.parquet: every row with its split
    (train/dev/test, from the dataset's gold policy), weak label, class probabilities,
    confidence, final label, label_source (gold | weak | none) and training weight. The
    raw batch is checked with the dataset's `raw` suite and the labeled batch with its
    `training` suite (drift against the previous labeled batch); failing rows go to
    s3://<bucket>/quarantine/<raw|training>/<dataset>/<batch>.parquet with their reasons,
    rows the LFs cannot read to quarantine/weak_label/...; rows in = out + quarantined.

    Args:
        raw_batch: s3:// URI of a raw batch written by `ingest`. Empty: the newest
            batch under raw/<dataset>/.
        dataset: A dataset defined under datasets/: its LF module, classes, metric, gold
            policy and suites.
        batch: Id of the labeled batch. Empty: the raw batch's id.
        label: The LF set (`default` unless told), how weak labels are weighted, the
            label model's seed, what an LF that fails does, and the processes applying
            row-by-row LFs.
        validation: "quarantine": rows failing a suite's row rules are set aside and the
            rest go on; "fail": any failed critical expectation stops the run.
        accept_schema_update: Let this batch widen the training suite when it drifts
            within the suite's thresholds (new version in s3://<bucket>/schemas/training/).

    Returns:
        The s3:// URI of the labeled batch.
    """
    tracked = TrackedFlow("weak-label-summary", dataset)
    settings, definition = tracked.settings, tracked.definition
    definition.lf_set(label.lf_set)  # an unknown set or a bad LF fails here, before any work
    raw_uri = find_raw_batch(settings, dataset, raw_batch)
    batch = batch or PurePosixPath(S3Uri.parse(raw_uri).key).stem
    params = {
        "raw_batch": raw_uri,
        "dataset": dataset,
        "batch": batch,
        **label.params(),
        "classes": list(definition.classes),
        "metric": definition.metric,
        "gold_policy": definition.gold.by,
        "validation": validation,
        "accept_schema_update": accept_schema_update,
    }
    with tracked.track(params) as run:
        raw = load_raw_batch(settings, raw_uri)
        checked = validate_batch(
            run, settings, raw, suite="raw", mode=validation, dataset=dataset, batch=batch
        )
        df, quarantined = split_batch(checked.passed, definition)
        result = apply_labeling_functions(
            df, definition, label.lf_set, label.lf_errors, label.n_jobs
        )
        analyze_lfs(run, result, df)
        tuning = tune_label_model(result, df, definition, label.seed)
        merged = merge_gold_and_weak(df, result, tuning, label.weighting)
        target = settings.s3_uri(labeled_key(dataset, batch))
        training = validate_batch(
            run,
            settings,
            merged.frame,
            suite="training",
            mode=validation,
            dataset=dataset,
            batch=batch,
            reference_uri=previous_batch(settings, labeled_prefix(dataset), target),
            accept_schema_update=accept_schema_update,
            source=raw_uri,
        )
        labeled = training.passed
        rows_quarantined = checked.rows_quarantined + len(quarantined) + training.rows_quarantined
        if len(labeled) + rows_quarantined != len(raw):
            raise RuntimeError(
                f"row count mismatch: {len(raw)} in, {len(labeled)} labeled + "
                f"{rows_quarantined} quarantined"
            )
        uris = {
            "raw_batch": raw_uri,
            "labeled_batch": write_batch(settings, labeled, labeled_key(dataset, batch)),
        }
        if len(quarantined):
            uris["quarantine_batch"] = write_batch(
                settings, quarantined, quarantine_key("weak_label", dataset, batch)
            )
        metrics = track_weak_label(
            run,
            df=df,
            rows_in=len(raw),
            rows_out=len(labeled),
            quarantined=rows_quarantined,
            result=result,
            tuning=tuning,
            merged=merged,
            uris=uris,
        )
        run.client().log_figure(
            run.run_id, plot_weights(merged.frame, merged.weight_model), "weak_label/weights.png"
        )
        tracked.summarize(
            summary_markdown(
                definition=definition, metrics=metrics, tuning=tuning, uris=uris, run=run
            ),
            description=f"Weak labeling of {raw_uri}",
        )
        print(f"weight model: {asdict(merged.weight_model)}")
    return uris["labeled_batch"]


if __name__ == "__main__":
    weak_label()
