"""The weak_label flow against the real stack: a deployment run by the worker, the labeled
batch in S3, metrics in MLflow that match the engines, artifacts in Prefect, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infra.runs import mlflow_run_of, trigger
from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import get_bytes, put_bytes
from mlsys.labeling import apply_lfs, evaluate_labelers, fit_labeler, gold_array
from mlsys.labeling.batch import lf_view
from mlsys.labeling.split import gold_split
from mlsys.settings import Settings
from tests.conftest import read_youtube

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def raw(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(str(youtube_dir))


def _put_raw(settings: Settings, df: pd.DataFrame, batch: str) -> str:
    uri = settings.s3_uri(f"raw/youtube-spam/{batch}.parquet")
    put_bytes(settings.s3_client(), uri, write_parquet_bytes(df))
    return uri


def test_deployment_labels_the_batch_and_tracks_it(stack: Settings, raw: pd.DataFrame) -> None:
    raw_uri = _put_raw(stack, raw, "it-wl")
    outcome = trigger(
        stack,
        "weak_label/weak_label",
        {"raw_batch": raw_uri, "label": {"lf_set": "tutorial"}},
        timeout_s=300,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message

    labeled = read_parquet_bytes(
        get_bytes(stack.s3_client(), stack.s3_uri("labeled/youtube-spam/it-wl.parquet"))
    )
    # The raw suite quarantines the later copy of each of the 3 repeated comment ids.
    clean = raw[~raw["comment_id"].duplicated()]
    assert len(labeled) == len(clean) == 1953
    assert sorted(labeled["comment_id"]) == sorted(clean["comment_id"])
    counts = labeled["label_source"].value_counts().to_dict()
    assert counts["gold"] == 119  # the dev rows: Shakira's 369 unique rows less 250 test
    assert sum(counts.values()) == 1953
    gold = labeled[labeled["label_source"] == "gold"]
    assert (gold["split"] == "dev").all() and (gold["weight"] == 1.0).all()
    assert gold["label"].equals(gold["gold_label"])
    weak = labeled[labeled["label_source"] == "weak"]
    assert weak["weight"].between(0.0, 1.0, inclusive="right").all()
    assert (weak["label"] == weak["weak_label"]).all()
    none = labeled[labeled["label_source"] == "none"]
    assert none["label"].isna().all() and (none["weight"] == 0.0).all()
    # Train rows' gold labels are hidden from everything downstream.
    assert labeled.loc[labeled["split"] == "train", "gold_label"].isna().all()
    proba = labeled[["proba_0", "proba_1"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(labeled["confidence"], proba.max(axis=1))

    # The flow's metrics are the engines' on the same data and seed.
    youtube = load_dataset("youtube-spam")
    df = gold_split(clean, youtube.gold)
    view, fields = lf_view(df, ["author", "date"], "comment_id")
    L = apply_lfs(view, youtube.lf_set("tutorial"), fields=fields, n_jobs=1).matrix
    y = gold_array(df)
    train, dev = (df["split"] == "train").to_numpy(), (df["split"] == "dev").to_numpy()
    tuning = fit_labeler(
        L[train], L_dev=L[dev], y_dev=y[dev], cardinality=2, metric="accuracy", positive=1
    )
    expected = evaluate_labelers(tuning, L, df)
    client, run = mlflow_run_of(stack, outcome.flow_run_id)
    metrics = run.data.metrics
    for key in (
        "label_model_test_accuracy",
        "label_model_dev_accuracy",
        "majority_vote_test_accuracy",
        "majority_vote_dev_accuracy",
        "lf_coverage_train",
    ):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9), key
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (1956, 1953, 3)
    assert metrics["validate.raw.rows_quarantined"] == 3
    assert metrics["validate.training.rows_in"] == metrics["validate.training.rows_passed"] == 1953
    assert metrics["label_source_gold"] + metrics["label_source_weak"] + metrics[
        "label_source_none"
    ] == pytest.approx(1953)
    assert run.data.tags["mlsys.labeled_batch"].endswith("labeled/youtube-spam/it-wl.parquet")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "weak_label")}
    assert {
        "weak_label/lf_summary.csv",
        "weak_label/lf_summary.png",
        "weak_label/trials.csv",
        "weak_label/weights.png",
        "weak_label/weight_model.json",
    } <= artifacts
    summary = client.download_artifacts(run.info.run_id, "weak_label/lf_summary.csv")
    table = pd.read_csv(summary)
    assert list(table["lf"]) == [lf.name for lf in youtube.lf_set("tutorial")]
    assert table["coverage"].between(0, 1).all() and table["dev_accuracy"].notna().any()


def test_flow_run_publishes_lf_summary_and_trials(stack_env: Settings, raw: pd.DataFrame) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.options import LabelOptions
    from flows.weak_label import weak_label

    extended = LabelOptions(lf_set="extended")
    uri = weak_label(raw_batch=_put_raw(stack_env, raw, "it-wl-art"), label=extended)
    assert uri.endswith("labeled/youtube-spam/it-wl-art.parquet")
    keys = ["lf-summary", "label-model-trials", "weak-label-summary", "lf-apply-progress"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    latest: dict[str, object] = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        latest[artifact.key] = artifact
    assert set(latest) == set(keys)
    table = str(latest["lf-summary"].data)  # type: ignore[attr-defined]
    assert "keyword_artist" in table and "dev_accuracy" in table
    assert latest["lf-apply-progress"].data == 100.0  # type: ignore[attr-defined]
    assert "it-wl-art.parquet" in str(latest["weak-label-summary"].data)  # type: ignore[attr-defined]


def test_rows_without_text_are_quarantined_and_counted(
    stack_env: Settings, raw: pd.DataFrame
) -> None:
    from flows.weak_label import weak_label

    broken = raw.copy()
    train_ids = broken.index[broken["source_file"] != broken["source_file"].max()][:3]
    broken.loc[train_ids, "text"] = pd.NA
    uri = weak_label(raw_batch=_put_raw(stack_env, broken, "it-wl-bad"))
    labeled = read_parquet_bytes(get_bytes(stack_env.s3_client(), uri))
    quarantined = read_parquet_bytes(
        get_bytes(
            stack_env.s3_client(),
            stack_env.s3_uri("quarantine/raw/youtube-spam/it-wl-bad.parquet"),
        )
    )
    assert len(labeled) + len(quarantined) == len(raw)
    assert len(quarantined) == 3 + 3  # no text, and the later copies of repeated ids
    reasons = quarantined.set_index("comment_id")["quarantine_reason"]
    no_text = set(raw.loc[train_ids, "comment_id"])
    assert set(reasons[reasons == "text: expect_column_values_to_not_be_null"].index) == no_text


def test_empty_batch_fails_naming_it(stack_env: Settings, raw: pd.DataFrame) -> None:
    from flows.weak_label import weak_label

    with pytest.raises(ValueError, match="no rows"):
        weak_label(raw_batch=_put_raw(stack_env, raw.iloc[:0], "it-wl-empty"))


def test_missing_raw_batch_names_the_uri(stack_env: Settings) -> None:
    from flows.weak_label import weak_label
    from mlsys.data.s3 import S3Error

    missing = stack_env.s3_uri("raw/youtube-spam/no-such-batch.parquet")
    with pytest.raises(S3Error, match=r"no-such-batch\.parquet"):
        weak_label(raw_batch=missing)


def test_lfs_on_a_dask_cluster_give_snorkels_label_matrix(
    stack_env: Settings, raw: pd.DataFrame
) -> None:
    """A batch of several partitions has its LFs applied on a Dask cluster made for the run
    (two workers), one task per partition reading its rows from S3 and writing its votes
    there: the label matrix equals Snorkel's PandasLFApplier on the whole batch for every LF
    kind (keywords and a regex, vectorized; row-by-row LFs, two sharing a memoized
    preprocessor), and the partitions' objects are removed afterwards."""
    from snorkel.labeling import PandasLFApplier

    from flows.options import LabelOptions
    from flows.weak_label import label_matrix
    from mlsys.data.catalog import lf_partitions_prefix
    from mlsys.data.s3 import list_keys

    youtube = load_dataset("youtube-spam")
    df = gold_split(raw, youtube.gold)
    lfs = youtube.lf_set("tutorial")
    names = [lf.name for lf in lfs]
    assert {"keyword_my", "regex_check_out", "short_comment", "textblob_polarity"} <= set(names)
    label = LabelOptions(lf_set="tutorial", partition_rows=500)
    result = label_matrix(stack_env, df, youtube, "it-wl-dask", label)

    view, _ = lf_view(df, youtube.lf_columns, youtube.id_column)
    expected = PandasLFApplier(lfs).apply(view, progress_bar=False)
    assert result.lf_names == names
    assert result.matrix.shape == (len(df), len(lfs)) == expected.shape
    np.testing.assert_array_equal(result.matrix, expected)
    assert (result.matrix != -1).any(axis=0).all()  # every LF voted somewhere
    prefix = lf_partitions_prefix("youtube-spam", "it-wl-dask")
    assert list_keys(stack_env.s3_client(), stack_env.bucket, prefix) == []


FAILING_LFS = """
from mlsys.labeling.lf import ABSTAIN, keyword_lf, labeling_function


@labeling_function()
def breaks_on_subscribe(x):
    if "subscribe" in x.text.lower():
        raise RuntimeError("this LF cannot read the row")
    return ABSTAIN


LF_SETS = {
    "default": [
        keyword_lf(["my"], "spam"),
        keyword_lf(["song"], "ham"),
        keyword_lf(["http"], "spam"),
        breaks_on_subscribe,
    ]
}
"""


def test_an_lf_failing_on_the_cluster_names_itself_and_leaves_no_partition(
    stack_env: Settings, raw: pd.DataFrame
) -> None:
    """An LF that raises in a partition's task fails the LF application naming the LF, and
    the batch's partitions in S3 are removed all the same."""
    import shutil

    from flows.options import LabelOptions
    from flows.weak_label import label_matrix
    from mlsys.data.catalog import lf_partitions_prefix
    from mlsys.data.s3 import list_keys

    assert stack_env.datasets_dir is not None
    folder = Path(stack_env.datasets_dir) / "it-failing-lf"
    shutil.copytree(load_dataset("youtube-spam").path(), folder)
    yaml_file = folder / "dataset.yaml"
    text = yaml_file.read_text(encoding="utf-8").replace(
        "name: youtube-spam", "name: it-failing-lf"
    )
    yaml_file.write_text(text, encoding="utf-8")
    (folder / "lfs.py").write_text(FAILING_LFS, encoding="utf-8")
    definition = load_dataset("it-failing-lf")
    df = gold_split(raw, definition.gold)

    with pytest.raises(Exception, match="breaks_on_subscribe"):
        label_matrix(stack_env, df, definition, "it-wl-fail", LabelOptions(partition_rows=500))
    prefix = lf_partitions_prefix("it-failing-lf", "it-wl-fail")
    assert list_keys(stack_env.s3_client(), stack_env.bucket, prefix) == []
