"""Tasks of the weak_label flow: each loads or saves, calls one labeling engine, and logs."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.catalog import lf_partition_key, lf_partitions_prefix, raw_prefix
from mlsys.data.definition import DatasetDefinition, load_dataset
from mlsys.data.s3 import S3Uri, delete_prefix, get_bytes, latest_key, put_bytes
from mlsys.labeling import (
    LFApplyResult,
    MergeResult,
    TuningResult,
    Weighting,
    WeightModel,
    apply_lfs,
    build_labeled_batch,
    fit_labeler,
    gold_array,
    lf_summary,
    plot_lf_summary,
    split_counts,
)
from mlsys.labeling.batch import jsonable, lf_fields, lf_view, split_unlabelable
from mlsys.labeling.split import SplitCounts, gold_split
from mlsys.settings import Settings
from tasks.retry import outage_tolerant
from tasks.tracking import TrackedRun

PARQUET = "application/vnd.apache.parquet"


@task(name="find-raw-batch", cache_policy=NO_CACHE)
@outage_tolerant
def find_raw_batch(settings: Settings, dataset: str, raw_batch: str | None) -> str:
    """The raw batch to label: ``raw_batch`` as given, else the newest one of ``dataset``."""
    if raw_batch:
        S3Uri.parse(raw_batch)  # a clear error for anything but s3://bucket/key
        return raw_batch
    uri = latest_key(settings.s3_client(), settings.bucket, raw_prefix(dataset))
    get_run_logger().info("newest raw batch of %s: %s", dataset, uri)
    return uri


@task(name="load-raw-batch", cache_policy=NO_CACHE)
@outage_tolerant
def load_raw_batch(settings: Settings, uri: str) -> pd.DataFrame:
    df = read_parquet_bytes(get_bytes(settings.s3_client(), uri))
    get_run_logger().info("read %d rows from %s", len(df), uri)
    return df


@task(name="split-batch", cache_policy=NO_CACHE)
def split_batch(
    df: pd.DataFrame, definition: DatasetDefinition
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine rows the LFs cannot read, then split the rest into train / dev / test as
    the dataset's gold policy says."""
    if df.empty:
        raise ValueError("the raw batch is empty: there is nothing to label")
    ok, quarantined = split_unlabelable(df)
    split = gold_split(ok, definition.gold)
    counts = split_counts(split)
    get_run_logger().info(
        "split %d rows: train %d, dev %d, test %d; quarantined %d",
        len(df),
        counts.train,
        counts.dev,
        counts.test,
        len(quarantined),
    )
    return split, quarantined


@task(name="apply-lfs", cache_policy=NO_CACHE)
def apply_labeling_functions(
    df: pd.DataFrame, definition: DatasetDefinition, lf_set: str, errors: str, n_jobs: int | None
) -> LFApplyResult:
    """The label matrix of the dataset's LF set over the batch, with a Prefect progress
    artifact. LFs see ``text`` and the kept columns (a missing kept value as "")."""
    lfs = definition.lf_set(lf_set)
    view, fields = lf_view(df, definition.lf_columns, definition.id_column)
    artifact_id: Any = create_progress_artifact(  # a UUID in a synchronous flow
        0.0, key="lf-apply-progress", description=f"Labeling functions ({lf_set}) over the batch"
    )
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 1.0:
            last[0] = now
            update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))

    result = apply_lfs(
        view,
        lfs,
        fields=fields,
        errors=errors,  # type: ignore[arg-type]
        n_jobs=n_jobs,
        id_column=definition.id_column,
        progress=progress,
    )
    update_progress_artifact(artifact_id, 100.0)
    get_run_logger().info(
        "applied %d LFs to %d rows (%d distinct) in %.2f s; LF errors counted as abstain: %s",
        len(lfs),
        len(df),
        result.unique_rows,
        result.seconds,
        result.errors or "none",
    )
    return result


@task(name="stage-lf-partitions", cache_policy=NO_CACHE)
@outage_tolerant
def stage_lf_partitions(
    settings: Settings,
    df: pd.DataFrame,
    definition: DatasetDefinition,
    batch: str,
    partition_rows: int,
) -> list[str]:
    """What the LFs see of the batch (text, kept columns, id), cut into row partitions of
    ``partition_rows`` in order, each PUT to S3 for the task that labels it; their URIs."""
    view, _ = lf_view(df, definition.lf_columns, definition.id_column)
    client = settings.s3_client()
    uris = []
    for part, start in enumerate(range(0, len(view), partition_rows)):
        rows = view.iloc[start : start + partition_rows]
        uri = settings.s3_uri(lf_partition_key(definition.name, batch, part, "rows"))
        put_bytes(client, uri, write_parquet_bytes(rows), PARQUET)
        uris.append(uri)
    get_run_logger().info(
        "%d rows in %d partitions of up to %d for the LFs, under %s",
        len(view),
        len(uris),
        partition_rows,
        settings.s3_uri(lf_partitions_prefix(definition.name, batch)),
    )
    return uris


@task(name="apply-lfs-partition", cache_policy=NO_CACHE)
@outage_tolerant
def apply_lfs_partition(
    settings: Settings, dataset: str, lf_set: str, errors: str, rows_uri: str
) -> dict[str, Any]:
    """On a Dask worker: the dataset's LF set (loaded there by name, so the LF module need
    not travel) over one row partition read from S3; its votes PUT back beside it. Returns
    the votes' URI and the partition's counts; only these pass through the scheduler."""
    began = time.perf_counter()
    definition = load_dataset(dataset, search=settings.datasets_dir)
    client = settings.s3_client()
    view = read_parquet_bytes(get_bytes(client, rows_uri))
    result = apply_lfs(
        view,
        definition.lf_set(lf_set),
        fields=list(lf_fields(definition.lf_columns)),
        errors=errors,  # type: ignore[arg-type]
        n_jobs=1,
        id_column=definition.id_column,
    )
    votes_uri = rows_uri.removesuffix(".rows.parquet") + ".votes.parquet"
    votes = pd.DataFrame(result.matrix, columns=pd.Index(result.lf_names))
    put_bytes(client, votes_uri, write_parquet_bytes(votes), PARQUET)
    return {
        "rows": rows_uri,
        "votes": votes_uri,
        "n_rows": len(view),
        "errors": result.errors,
        "unique_rows": result.unique_rows,
        "seconds": time.perf_counter() - began,
    }


@task(name="drop-lf-partitions", cache_policy=NO_CACHE)
@outage_tolerant
def drop_lf_partitions(settings: Settings, dataset: str, batch: str) -> int:
    """Remove a batch's LF partitions (rows and votes) from S3; how many objects."""
    return delete_prefix(
        settings.s3_client(), settings.bucket, lf_partitions_prefix(dataset, batch)
    )


@task(name="gather-lf-votes", cache_policy=NO_CACHE)
@outage_tolerant
def gather_lf_votes(
    settings: Settings,
    parts: list[dict[str, Any]],
    n_rows: int,
    dataset: str,
    batch: str,
    seconds: float,
) -> LFApplyResult:
    """The label matrix of the whole batch from the partitions' votes, in row order, checked
    against the batch's row count; the partitions' objects removed from S3."""
    client = settings.s3_client()
    frames = [read_parquet_bytes(get_bytes(client, part["votes"])) for part in parts]
    for part, frame in zip(parts, frames, strict=True):
        if len(frame) != part["n_rows"]:
            raise RuntimeError(
                f"{part['votes']} holds {len(frame)} rows of votes for {part['n_rows']} rows"
            )
    matrix = np.concatenate([f.to_numpy(dtype=np.int64) for f in frames], axis=0)
    if len(matrix) != n_rows:
        raise RuntimeError(f"the partitions' votes cover {len(matrix)} of {n_rows} rows")
    errors: dict[str, int] = {}
    for part in parts:
        for name, count in part["errors"].items():
            errors[name] = errors.get(name, 0) + int(count)
    drop_lf_partitions.fn(settings, dataset, batch)
    result = LFApplyResult(
        matrix=matrix,
        lf_names=[str(c) for c in frames[0].columns],
        errors=errors,
        unique_rows=sum(int(p["unique_rows"]) for p in parts),
        seconds=seconds,
    )
    get_run_logger().info(
        "applied %d LFs to %d rows in %d partitions on the cluster in %.2f s "
        "(%d distinct within partitions); LF errors counted as abstain: %s",
        len(result.lf_names),
        n_rows,
        len(parts),
        seconds,
        result.unique_rows,
        errors or "none",
    )
    return result


def _masks(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {name: (df["split"] == name).to_numpy() for name in ("train", "dev", "test")}


@task(name="analyze-lfs", cache_policy=NO_CACHE)
@outage_tolerant
def analyze_lfs(
    run: TrackedRun,
    L_train: np.ndarray,
    lf_names: list[str],
    L_dev: np.ndarray,
    y_dev: np.ndarray,
) -> pd.DataFrame:
    """Coverage, overlaps, conflicts (train rows) and accuracy on the gold dev rows, as a
    Prefect table artifact and MLflow CSV + chart."""
    summary = lf_summary(L_train, lf_names, L_dev=L_dev, y_dev=y_dev)
    table = summary.reset_index()
    create_table_artifact(
        table=jsonable(
            [
                {str(k): v for k, v in row.items()}
                for row in table.round(4).to_dict(orient="records")
            ]
        ),
        key="lf-summary",
        description="Labeling functions: coverage, overlaps, conflicts on train; accuracy on dev.",
    )
    client = run.client()
    client.log_text(run.run_id, table.to_csv(index=False), "weak_label/lf_summary.csv")
    fig = plot_lf_summary(summary, title="Labeling functions (train rows; accuracy on dev)")
    client.log_figure(run.run_id, fig, "weak_label/lf_summary.png")
    return summary


def split_votes(
    result: LFApplyResult, df: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train rows' votes, the dev rows' votes and the dev rows' gold labels of a
    split batch (``df`` with ``split``) and its label matrix."""
    masks = _masks(df)
    y = gold_array(df)
    return result.matrix[masks["train"]], result.matrix[masks["dev"]], y[masks["dev"]]


@task(name="tune-label-model", cache_policy=NO_CACHE)
def tune_label_model(
    L_train: np.ndarray,
    L_dev: np.ndarray,
    y_dev: np.ndarray,
    definition: DatasetDefinition,
    seed: int,
) -> TuningResult:
    """Fit the candidate labelers on train; keep the best on the gold dev rows by the
    dataset's metric."""
    tuning = fit_labeler(
        L_train,
        L_dev=L_dev,
        y_dev=y_dev,
        cardinality=definition.k,
        metric=definition.metric,
        positive=definition.positive_index,
        seed=seed,
    )
    create_table_artifact(
        table=jsonable(tuning.trials),
        key="label-model-trials",
        description="Label model tuning: every config tried, scored on the gold dev rows.",
    )
    get_run_logger().info("selected %s", tuning.best)
    return tuning


@task(name="merge-labels", cache_policy=NO_CACHE)
def merge_gold_and_weak(
    df: pd.DataFrame, result: LFApplyResult, tuning: TuningResult, weighting: Weighting
) -> MergeResult:
    """Every row's weak label and probabilities; gold wins on dev rows; quality weights."""
    merged = build_labeled_batch(df, result.matrix, tuning.best, weighting=weighting)
    get_run_logger().info("label sources: %s", merged.counts)
    return merged


@task(name="write-labeled-batch", cache_policy=NO_CACHE)
@outage_tolerant
def write_batch(settings: Settings, df: pd.DataFrame, key: str) -> str:
    """Write ``df`` as Parquet to s3://<bucket>/<key>."""
    uri = settings.s3_uri(key)
    put_bytes(settings.s3_client(), uri, write_parquet_bytes(df), PARQUET)
    get_run_logger().info("wrote %d rows to %s", len(df), uri)
    return uri


def label_metrics(
    *,
    rows_in: int,
    rows_out: int,
    quarantined: int,
    counts: SplitCounts,
    lfs: LFApplyResult | dict[str, float],
    sources: dict[str, int],
    evaluation: dict[str, float],
) -> dict[str, float]:
    """The weak_label run's metrics: row counts, the LFs' cost (``lf_apply_seconds``,
    ``lf_unique_rows``, ``lf_errors``: from ``lfs``, a result or those three), rows per
    label source, and the labelers' scores (:func:`evaluate_labelers`)."""
    if isinstance(lfs, LFApplyResult):
        lfs = {
            "lf_apply_seconds": lfs.seconds,
            "lf_unique_rows": lfs.unique_rows,
            "lf_errors": sum(lfs.errors.values()),
        }
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": quarantined,
        "rows_train": counts.train,
        "rows_dev": counts.dev,
        "rows_test": counts.test,
        **lfs,
        **{f"label_source_{name}": n for name, n in sources.items()},
        **evaluation,
    }


def label_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows per (split, label source) of a labeled batch, as a table ``split``,
    ``label_source``, ``rows``."""
    table = frame.groupby(["split", "label_source"], observed=True).size().rename("rows")
    return table.reset_index()


@task(name="track-weak-label", cache_policy=NO_CACHE)
@outage_tolerant
def track_weak_label(
    run: TrackedRun,
    *,
    metrics: dict[str, float],
    tuning: TuningResult,
    weight_model: WeightModel,
    counts: pd.DataFrame,
    uris: dict[str, str],
) -> dict[str, float]:
    """The run's metrics (:func:`label_metrics`) to MLflow; the selected labeler as
    parameters; the trials, weight model, label model and rows per (split, label source,
    :func:`label_counts`) as artifacts."""
    client = run.client()
    for key, value in metrics.items():
        client.log_metric(run.run_id, key, float(value))
    best = tuning.best.config
    client.log_param(run.run_id, "labeler", best.kind)
    client.log_param(run.run_id, "labeler.describe", best.describe())
    client.log_param(run.run_id, "labeler.metric", tuning.metric)
    if tuning.threshold is not None:
        client.log_param(run.run_id, "labeler.threshold", f"{tuning.threshold:.4f}")
    for key, value in best.as_row().items():
        if key != "kind" and value is not None:
            client.log_param(run.run_id, f"labeler.{key}", str(value))
    for name, uri in uris.items():
        client.set_tag(run.run_id, f"mlsys.{name}", uri)
    client.log_text(
        run.run_id, pd.DataFrame(tuning.trials).to_csv(index=False), "weak_label/trials.csv"
    )
    client.log_dict(run.run_id, asdict(weight_model), "weak_label/weight_model.json")
    model = tuning.best.model
    if model is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "label_model.pkl"
            model.save(str(path))
            client.log_artifact(run.run_id, str(path), "weak_label")
    client.log_text(run.run_id, counts.to_csv(index=False), "weak_label/label_counts.csv")
    return metrics


def summary_markdown(
    *,
    definition: DatasetDefinition,
    metrics: dict[str, Any],
    tuning: TuningResult,
    uris: dict[str, str],
    run: Any,
) -> str:
    """The run's summary for the Prefect UI, scored by the dataset's metric."""

    def fmt(key: str) -> str:
        value = metrics.get(key)
        return "–" if value is None else f"{value:.3f}"

    metric = definition.metric
    rows = []
    for name in ("selected", "weighted_vote", "label_model", "majority_vote"):
        rows.append(
            f"| {name.replace('_', ' ')} | {fmt(f'{name}_dev_{metric}')} | "
            f"{fmt(f'{name}_test_{metric}')} | {fmt(f'{name}_test_accuracy')} |"
        )
    quarantine = (
        f"  \nQuarantined: `{uris['quarantine_batch']}`" if "quarantine_batch" in uris else ""
    )
    return (
        f"# Weak labeling {definition.name}\n\n"
        "| rows in | rows out | quarantined | gold | weak | no label |\n"
        "|---|---|---|---|---|---|\n"
        f"| {metrics['rows_in']} | {metrics['rows_out']} | {metrics['rows_quarantined']} "
        f"| {metrics['label_source_gold']} | {metrics['label_source_weak']} "
        f"| {metrics['label_source_none']} |\n\n"
        f"| labeler | dev {metric} | test {metric} | test accuracy |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nSelected on the gold dev rows by {metric} (cross-validated): "
        f"**{tuning.best.config.describe()}**. "
        f"LF coverage on train: {metrics['lf_coverage_train']:.3f}. Classes: "
        f"{', '.join(definition.classes)}.\n\n"
        f"Labeled batch: `{uris['labeled_batch']}`  \nRaw batch: `{uris['raw_batch']}`"
        f"{quarantine}  \nMLflow run: [{run.run_id}]({run.url})\n"
    )
