"""batch_infer against the real stack: a model trained and promoted by the train flow,
predictions as Parquet parts in S3 matching the pyfunc's (class names and one probability
column per class), resumption, quarantine, skew in MLflow, the Dask runner, the deployment
on the worker, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.options import InferOptions
from infra.runs import mlflow_run_of, trigger
from mlsys.data import DatasetError, read_parquet_bytes, write_parquet_bytes
from mlsys.data.s3 import get_bytes, list_keys, put_bytes
from mlsys.settings import Settings
from mlsys.validation.checkpoint import ValidationFailed
from tests.conftest import put_labeled_youtube, read_youtube

pytestmark = pytest.mark.integration

MODEL = "it-bi"


@pytest.fixture(scope="module")
def raw(youtube_dir: Path) -> pd.DataFrame:
    df = read_youtube(youtube_dir)
    return df[~df["comment_id"].duplicated()].reset_index(drop=True)


@pytest.fixture(scope="module")
def champion(stack: Settings, raw: pd.DataFrame) -> str:
    """Version 1 of MODEL, trained by the train flow and promoted to @champion."""
    uri = put_labeled_youtube(stack, raw, "it-bi")
    outcome = trigger(
        stack,
        "train/train",
        {"labeled_batch": uri, "training": {"epochs": 2, "choose": False}, "model_name": MODEL},
        timeout_s=400,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message
    version = MlflowClient(stack.tracking_uri).get_model_version_by_alias(MODEL, "champion")
    return str(version.version)


def _put(settings: Settings, df: pd.DataFrame, key: str) -> str:
    uri = settings.s3_uri(key)
    put_bytes(settings.s3_client(), uri, write_parquet_bytes(df))
    return uri


def _predictions(settings: Settings, prefix: str) -> pd.DataFrame:
    keys = sorted(
        k
        for _, k in list_keys(settings.s3_client(), settings.bucket, prefix)
        if k.endswith(".parquet")
    )
    parts = [read_parquet_bytes(get_bytes(settings.s3_client(), settings.s3_uri(k))) for k in keys]
    return pd.concat(parts, ignore_index=True)


def test_scores_in_parts_matching_the_pyfunc_and_resumes(
    stack_env: Settings, raw: pd.DataFrame, champion: str
) -> None:
    from flows.batch_infer import batch_infer

    settings = stack_env
    bad = raw.copy()
    bad.loc[[5, 700], "text"] = pd.NA  # the serving suite quarantines these
    source = _put(settings, bad, "serving/it-bi-in.parquet")
    manifest_uri = batch_infer(
        source=source, model_name=MODEL, batch="it-bi-a", inference=InferOptions(chunk_rows=500)
    )

    manifest = json.loads(get_bytes(settings.s3_client(), manifest_uri))
    assert manifest["model"]["version"] == champion
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (
        len(raw),
        len(raw) - 2,
        2,
    )
    assert manifest["chunks"] == 4 and manifest["chunks_skipped"] == 0
    out = _predictions(settings, "predictions/youtube-spam/it-bi-a/")
    assert len(out) == len(raw) - 2
    assert list(out.columns) == [
        "comment_id", "label", "probability", "proba_ham", "proba_spam",
        "model_name", "model_version", "run_id",
    ]  # fmt: skip
    assert set(out["label"]) == {"ham", "spam"}
    assert all(out[c].dtype == "float64" for c in ["probability", "proba_ham", "proba_spam"])
    assert set(out["model_version"]) == {champion} and set(out["model_name"]) == {MODEL}

    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    kept = bad.drop(index=[5, 700])
    expected = model.predict(pd.DataFrame({"text": kept["text"].astype(str).tolist()}))
    assert out["comment_id"].tolist() == kept["comment_id"].tolist()
    assert out["label"].tolist() == expected["label"].tolist()
    pd.testing.assert_series_equal(out["probability"], expected["probability"], check_names=False)
    pd.testing.assert_frame_equal(
        out[["proba_ham", "proba_spam"]], expected[["proba_ham", "proba_spam"]]
    )

    held = _predictions(settings, "quarantine/serving/youtube-spam/it-bi-a/")
    assert set(held["comment_id"]) == set(raw.loc[[5, 700], "comment_id"])
    assert set(held["quarantine_reason"]) == {"text: expect_column_values_to_not_be_null"}

    # Skew of the serving input against the training data, and counts, in MLflow.
    client = MlflowClient(settings.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
        filter_string="params.batch = 'it-bi-a'",
    )
    metrics = runs[0].data.metrics
    assert 0 <= metrics["validate.serving.skew_js_text_length"] < 0.2
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"]

    # A re-run after losing one part and the manifest redoes only that part.
    s3 = settings.s3_client()
    s3.delete_object(
        Bucket=settings.bucket, Key="predictions/youtube-spam/it-bi-a/part-0000-00002.parquet"
    )
    s3.delete_object(Bucket=settings.bucket, Key="predictions/youtube-spam/it-bi-a/_manifest.json")
    again = batch_infer(
        source=source, model_name=MODEL, batch="it-bi-a", inference=InferOptions(chunk_rows=500)
    )
    resumed = json.loads(get_bytes(s3, again))
    assert resumed["chunks_skipped"] == 3
    assert resumed["rows_out"] == manifest["rows_out"]
    pd.testing.assert_frame_equal(_predictions(settings, "predictions/youtube-spam/it-bi-a/"), out)

    # The same batch id with other chunking is refused, not mixed in.
    with pytest.raises(ValueError, match="choose another batch id"):
        batch_infer(
            source=source, model_name=MODEL, batch="it-bi-a", inference=InferOptions(chunk_rows=400)
        )


def test_dask_workers_give_the_same_predictions(
    stack_env: Settings, raw: pd.DataFrame, champion: str
) -> None:
    from flows.batch_infer import batch_infer

    source = _put(stack_env, raw.iloc[:900], "serving/it-bi-dask.parquet")
    batch_infer(
        source=source, model_name=MODEL, batch="it-bi-1w", inference=InferOptions(chunk_rows=200)
    )
    batch_infer(
        source=source,
        model_name=MODEL,
        batch="it-bi-2w",
        inference=InferOptions(chunk_rows=200, workers=2),
    )
    one = _predictions(stack_env, "predictions/youtube-spam/it-bi-1w/")
    two = _predictions(stack_env, "predictions/youtube-spam/it-bi-2w/")
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 900


def test_deployment_scores_a_csv_folder_on_the_worker(
    stack: Settings, youtube_dir: Path, champion: str
) -> None:
    outcome = trigger(
        stack,
        "batch_infer/batch_infer",
        {"source": str(youtube_dir), "model_name": MODEL, "batch": "it-bi-csv"},
        timeout_s=400,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message
    _, run = mlflow_run_of(stack, outcome.flow_run_id)
    # Raw CSVs: the later copy of a repeated id is scored too (the serving suite does not
    # ask for unique ids); every row is scored once.
    assert run.data.metrics["rows_in"] == run.data.metrics["rows_out"] == 1956
    assert run.data.tags["mlsys.model_uri"] == f"models:/{MODEL}/{champion}"


def test_bad_input_is_named_and_nothing_is_written(
    stack_env: Settings, raw: pd.DataFrame, champion: str
) -> None:
    from flows.batch_infer import batch_infer

    source = _put(stack_env, raw.iloc[:50], "serving/it-bi-bad.parquet")
    with pytest.raises(ValueError, match="model 'it-bi' has no alias 'gold'"):
        batch_infer(source=source, model_name=MODEL, alias="gold", batch="it-bi-x")
    with pytest.raises(ValueError, match="model 'it-bi' has no version '99'"):
        batch_infer(source=source, model_name=MODEL, model_version="99", batch="it-bi-x")
    with pytest.raises(ValueError, match="no registered model 'nope'"):
        batch_infer(source=source, model_name="nope", batch="it-bi-x")
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'.*defined datasets: .*youtube"):
        batch_infer(source=source, dataset="nope", model_name=MODEL, batch="it-bi-x")

    no_text = _put(stack_env, raw.iloc[:50].drop(columns=["text"]), "serving/it-bi-notext.parquet")
    with pytest.raises(ValidationFailed, match="expect_table_columns_to_match_set"):
        batch_infer(source=no_text, model_name=MODEL, batch="it-bi-x")
    empty = _put(stack_env, raw.iloc[:0], "serving/it-bi-empty.parquet")
    with pytest.raises(ValueError, match="holds no rows"):
        batch_infer(source=empty, model_name=MODEL, batch="it-bi-x")
    assert (
        list_keys(stack_env.s3_client(), stack_env.bucket, "predictions/youtube-spam/it-bi-x/")
        == []
    )
