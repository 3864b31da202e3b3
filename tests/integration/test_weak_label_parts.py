"""`weak_label` in partitions on a Dask cluster made for the run, against the real stack:
no process holds the batch, and the labeled batch, the quarantine, the validation reports
and the MLflow metrics equal one pass's (rows keep the raw batch's order instead of the
gold policy's shuffle, so rows are compared by id)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.s3 import get_bytes, list_keys, put_bytes
from mlsys.settings import Settings
from tests.conftest import read_youtube
from tests.integration.dask_kill import kill_a_worker_when

pytestmark = pytest.mark.integration


def _run(settings: Settings, batch: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.batch = '{batch}'",
    )
    return client, run


def _report(settings: Settings, batch: str, suite: str, folder: Path) -> dict[str, Any]:
    client, run = _run(settings, batch)
    path = client.download_artifacts(
        run.info.run_id, f"validation/{suite}/report.json", str(folder)
    )
    report: dict[str, Any] = json.loads(Path(path).read_text())
    return report


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("comment_id", kind="stable").reset_index(drop=True)


def test_weak_label_in_parts_equals_one_pass(
    stack_env: Settings, youtube_dir: Path, tmp_path: Path
) -> None:
    from flows.options import LabelOptions
    from flows.weak_label import weak_label

    raw = read_youtube(str(youtube_dir))
    broken = raw.copy()
    train = broken.index[broken["source_file"] != "Youtube05-Shakira.csv"]
    broken.loc[train[[5, 900, 1500]], "text"] = pd.NA  # the raw suite sets these aside
    s3 = stack_env.s3_client()
    raw_uri = stack_env.s3_uri("raw/youtube-spam/it-wlp-raw.parquet")
    put_bytes(s3, raw_uri, write_parquet_bytes(broken))

    # The training suite's drift is measured against the newest earlier labeled batch:
    # the parts' run against the first one-pass batch, the second one-pass run against
    # the parts' batch (the same rows).
    weak_label(raw_batch=raw_uri, batch="it-wlp-ref")
    label = LabelOptions(partition_rows=500, workers=2)
    parts_uri = weak_label(raw_batch=raw_uri, batch="it-wlp-parts", label=label, partitioned=True)
    one_uri = weak_label(raw_batch=raw_uri, batch="it-wlp-one")

    parts = read_parquet_bytes(get_bytes(s3, parts_uri))
    one = read_parquet_bytes(get_bytes(s3, one_uri))
    kept = broken["text"].notna() & ~broken["comment_id"].duplicated()
    # The raw batch's order, less the rows set aside.
    assert list(parts["comment_id"]) == list(broken.loc[kept, "comment_id"])
    pd.testing.assert_frame_equal(_by_id(parts), _by_id(one), check_exact=False, rtol=1e-9)
    assert len(one) == len(raw) - 3 - 3  # no text; later copies of repeated ids

    quarantined = [
        _by_id(read_parquet_bytes(get_bytes(s3, stack_env.s3_uri(f"quarantine/raw/{b}.parquet"))))
        for b in ("youtube-spam/it-wlp-parts", "youtube-spam/it-wlp-one")
    ]
    pd.testing.assert_frame_equal(*quarantined)

    for suite in ("raw", "training"):
        reports = [
            _report(stack_env, b, suite, tmp_path / f"{suite}-{b}")
            for b in ("it-wlp-parts", "it-wlp-one")
        ]
        assert reports[0] == reports[1], suite
    assert reports[1]["drift"]  # training: measured against the batch before

    (client, parts_run), (_, one_run) = (
        _run(stack_env, "it-wlp-parts"),
        _run(stack_env, "it-wlp-one"),
    )
    cost = {"lf_apply_seconds", "lf_unique_rows"}  # time; distinct texts within ranges
    metrics = [
        {k: v for k, v in run.data.metrics.items() if not k.startswith("system/") and k not in cost}
        for run in (parts_run, one_run)
    ]
    assert metrics[0].keys() == metrics[1].keys()
    for key, value in metrics[1].items():
        assert metrics[0][key] == pytest.approx(value, rel=1e-9), key
    assert metrics[0]["rows_in"] == metrics[0]["rows_out"] + metrics[0]["rows_quarantined"]
    params = [run.data.params for run in (parts_run, one_run)]
    assert params[0]["labeler.describe"] == params[1]["labeler.describe"]
    assert params[0]["partitioned"] == "True"
    artifacts = {a.path for a in client.list_artifacts(parts_run.info.run_id, "weak_label")}
    assert "weak_label/weights.png" in artifacts and "weak_label/label_counts.csv" in artifacts
    # What the ranges left between passes is gone.
    assert list_keys(s3, stack_env.bucket, "work/weak_label/youtube-spam/") == []


def test_parts_with_a_schema_update_are_refused_naming_why(stack_env: Settings) -> None:
    from flows.weak_label import weak_label

    with pytest.raises(ValueError, match="accept_schema_update widens the training suite"):
        weak_label(
            raw_batch=stack_env.s3_uri("raw/youtube-spam/it-wlp-raw.parquet"),
            batch="it-wlp-refused",
            partitioned=True,
            accept_schema_update=True,
        )


def test_a_worker_killed_mid_stage_loses_and_duplicates_no_row(
    stack_env: Settings, youtube_dir: Path
) -> None:
    """SIGKILL a Dask worker of the run's cluster once some ranges have their votes and
    before the labeled batch exists: Dask runs its tasks again on the other worker (every
    task's writes overwrite), and the labeled batch equals one pass's, no row lost or
    repeated."""
    from flows.options import LabelOptions
    from flows.weak_label import weak_label
    from mlsys.data.catalog import label_parts_prefix

    s3 = stack_env.s3_client()
    raw_uri = stack_env.s3_uri("raw/youtube-spam/it-wlp-kill-raw.parquet")
    put_bytes(s3, raw_uri, write_parquet_bytes(read_youtube(str(youtube_dir))))
    one = read_parquet_bytes(get_bytes(s3, weak_label(raw_batch=raw_uri, batch="it-wlp-kill-one")))

    prefix = label_parts_prefix("youtube-spam", "it-wlp-kill")

    def some_ranges_voted() -> int:
        votes = [k for _, k in list_keys(s3, stack_env.bucket, prefix) if "votes" in k]
        return len(votes) if 1 <= len(votes) < 10 else 0

    with kill_a_worker_when(some_ranges_voted) as killed:
        label = LabelOptions(partition_rows=200, workers=2)  # 10 ranges
        uri = weak_label(raw_batch=raw_uri, batch="it-wlp-kill", label=label, partitioned=True)
    assert killed, "no worker was killed while the ranges were voted on"
    parts = read_parquet_bytes(get_bytes(s3, uri))
    assert not parts["comment_id"].duplicated().any()
    pd.testing.assert_frame_equal(_by_id(parts), _by_id(one), check_exact=False, rtol=1e-9)
    assert list_keys(s3, stack_env.bucket, prefix) == []
