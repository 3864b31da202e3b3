"""Checkpoints inside the flows, against the real stack: quarantine objects in S3, MLflow
metrics and Data Docs, Prefect artifacts, fail mode, schema updates, the CLI on s3://."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.s3 import get_bytes, list_keys, put_bytes
from mlsys.settings import Settings
from mlsys.validation.checkpoint import ValidationFailed
from tests.conftest import read_youtube

pytestmark = pytest.mark.integration

HEADER = "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\n"
LONG = "spam " * 200_000  # a 1 MB comment


def _folder(tmp_path: Path, youtube_dir: Path, extra_rows: str) -> Path:
    """Psy's file plus a file of extra rows."""
    folder = tmp_path / "src"
    folder.mkdir()
    psy = youtube_dir / "Youtube01-Psy.csv"
    (folder / psy.name).write_bytes(psy.read_bytes())
    (folder / "extra.csv").write_text(HEADER + extra_rows, encoding="utf-8")
    return folder


@pytest.fixture
def clean_schemas(stack_env: Settings) -> Iterator[Settings]:
    """Accepted suite versions live in the session's bucket: remove them afterwards so
    other tests keep running the suites in git."""
    yield stack_env
    client = stack_env.s3_client()
    for _, key in list_keys(client, stack_env.bucket, "schemas/"):
        client.delete_object(Bucket=stack_env.bucket, Key=key)


def _mlflow_run(settings: Settings, batch: str) -> tuple[object, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.batch = '{batch}'",
        order_by=["attributes.start_time DESC"],
    )
    assert runs, f"no MLflow run for batch {batch}"
    return client, runs[0]


def test_ingest_quarantines_bad_rows_with_reasons_and_publishes_docs(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ingest import ingest

    extra = (
        f'x-long,Ann,2014-01-01T00:00:00,"{LONG}",1\n'
        "x-empty,Bob,2014-01-01T00:00:00,,0\n"
        "x-date,Cy,yesterday,hello there,0\n"
        "x-ok,Dee,2014-01-02T10:00:00,a fine comment,0\n"
    )
    previous = read_youtube(str(youtube_dir))
    put_bytes(
        stack_env.s3_client(),
        stack_env.s3_uri("raw/youtube-spam/it-val-q-previous.parquet"),
        write_parquet_bytes(previous),
    )
    uri = ingest(source=str(_folder(tmp_path, youtube_dir, extra)), batch="it-val-q")
    client = stack_env.s3_client()
    passed = read_parquet_bytes(get_bytes(client, uri))
    quarantined = read_parquet_bytes(
        get_bytes(client, stack_env.s3_uri("quarantine/raw/youtube-spam/it-val-q.parquet"))
    )
    assert len(passed) + len(quarantined) == 350 + 4
    reasons = quarantined.set_index("comment_id")["quarantine_reason"].to_dict()
    assert reasons == {
        "x-long": "text: expect_column_value_lengths_to_be_between",
        "x-empty": "text: expect_column_values_to_not_be_null",
        "x-date": "date: expect_column_values_to_match_regex",
    }
    assert "x-ok" in set(passed["comment_id"])

    mlflow, run = _mlflow_run(stack_env, "it-val-q")
    metrics = run.data.metrics  # type: ignore[attr-defined]
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (354, 351, 3)
    assert metrics["validate.raw.rows_passed"] == 351
    # Drift against the previous raw batch: Psy's comments against all five videos'.
    assert 0 < metrics["validate.raw.drift_js_text_length"] < 0.2
    assert metrics["validate.raw.drift_linf_label"] < 0.15
    run_id = run.info.run_id  # type: ignore[attr-defined]
    docs = {a.path for a in mlflow.list_artifacts(run_id, "validation/raw/data_docs")}  # type: ignore[attr-defined]
    assert "validation/raw/data_docs/index.html" in docs
    report_path = mlflow.download_artifacts(run_id, "validation/raw/report.json", str(tmp_path))  # type: ignore[attr-defined]
    report = json.loads(Path(report_path).read_text())
    assert report["rows_in"] == 354 and report["rows_quarantined"] == 3
    assert run.data.tags["mlsys.suite.raw"].startswith("v1 ") and run.data.tags[
        "mlsys.suite.raw"
    ].endswith("datasets/youtube-spam/suites/raw.json")  # type: ignore[attr-defined]

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["validation-raw", "validation-raw-docs"])
            )
        )
    latest = {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}
    assert run_id in str(latest["validation-raw-docs"].data)
    assert "quarantine/raw/youtube-spam/it-val-q.parquet" in str(latest["validation-raw"].data)


def test_fail_mode_stops_the_flow_listing_each_failed_expectation(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest

    extra = f'x-long,Ann,2014-01-01T00:00:00,"{LONG}",1\nx-bad,Bob,2014-01-01,hi,7\n'
    with pytest.raises(ValidationFailed) as err:
        ingest(
            source=str(_folder(tmp_path, youtube_dir, extra)), batch="it-val-f", validation="fail"
        )
    message = str(err.value)
    assert "text: expect_column_value_lengths_to_be_between failed on 1 rows" in message
    assert "(1000000 chars)" in message  # the observed value, cut
    assert "label: expect_column_values_to_be_in_set failed on 1 rows" in message
    assert "observed [7]" in message
    objects = list_keys(stack_env.s3_client(), stack_env.bucket, "raw/youtube-spam/it-val-f")
    assert objects == []  # nothing written


def test_schema_update_only_when_accepted(
    clean_schemas: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest

    settings = clean_schemas
    longer = "x" * 12_000  # over the raw suite's 10,000 characters
    extra = f"x-l1,Ann,2014-01-01,{longer},1\n"
    source = str(_folder(tmp_path, youtube_dir, extra))

    ingest(source=source, batch="it-val-noupd")
    assert list_keys(settings.s3_client(), settings.bucket, "schemas/") == []

    uri = ingest(source=source, batch="it-val-upd", accept_schema_update=True)
    keys = [
        k for _, k in list_keys(settings.s3_client(), settings.bucket, "schemas/youtube-spam/raw/")
    ]
    assert keys == ["schemas/youtube-spam/raw/v0002.json"]
    suite = json.loads(get_bytes(settings.s3_client(), settings.s3_uri(keys[0])))
    meta = suite["meta"]["mlsys"]
    assert (meta["version"], meta["parent"]) == (2, 1)
    assert meta["updated_from"] == source
    assert any("text length: max 10000 -> 12000" in c for c in meta["changes"])
    passed = read_parquet_bytes(get_bytes(settings.s3_client(), uri))
    assert "x-l1" in set(passed["comment_id"])  # validated with the new version
    _, run = _mlflow_run(settings, "it-val-upd")
    tags = run.data.tags  # type: ignore[attr-defined]
    assert tags["mlsys.schema_update.raw"] == settings.s3_uri(keys[0])
    assert tags["mlsys.suite.raw"].startswith("v2 s3://")

    # The next run uses the accepted version without being told.
    again = ingest(source=source, batch="it-val-after")
    assert "x-l1" in set(read_parquet_bytes(get_bytes(settings.s3_client(), again))["comment_id"])


def test_schema_update_refused_when_the_batch_drifts(
    clean_schemas: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest
    from mlsys.validation.suites import SchemaUpdateRefused

    settings = clean_schemas
    ingest(source=str(youtube_dir), batch="it-val-ref")
    # Every comment far longer than the reference: text-length drift above 0.2.
    rows = "".join(f"x-{i},A,2014-01-01,{'y' * 11_000},0\n" for i in range(50))
    folder = tmp_path / "drifted"
    folder.mkdir()
    (folder / "long.csv").write_text(HEADER + rows)
    with pytest.raises(SchemaUpdateRefused, match="drift of text length"):
        ingest(source=str(folder), batch="it-val-drift", accept_schema_update=True)
    assert list_keys(settings.s3_client(), settings.bucket, "schemas/") == []


def test_train_refuses_a_batch_that_fails_the_training_suite(
    stack_env: Settings, youtube_dir: Path
) -> None:
    from flows.options import TrainOptions
    from flows.train import train
    from flows.weak_label import weak_label

    raw = read_youtube(str(youtube_dir))
    raw = raw[~raw["comment_id"].duplicated()]
    raw_uri = stack_env.s3_uri("raw/youtube-spam/it-val-train.parquet")
    put_bytes(stack_env.s3_client(), raw_uri, write_parquet_bytes(raw))
    labeled_uri = weak_label(raw_batch=raw_uri)
    labeled = read_parquet_bytes(get_bytes(stack_env.s3_client(), labeled_uri))
    labeled.loc[labeled.index[:4], "confidence"] = 1.5
    bad_uri = stack_env.s3_uri("labeled/youtube-spam/it-val-train-bad.parquet")
    put_bytes(stack_env.s3_client(), bad_uri, write_parquet_bytes(labeled))
    with pytest.raises(ValidationFailed, match="confidence: expect_column_values_to_be_between"):
        train(labeled_batch=bad_uri, training=TrainOptions(epochs=1, choose=False))


def test_cli_validates_an_s3_batch(stack_env: Settings, youtube_dir: Path) -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    raw = read_youtube(str(youtube_dir))
    uri = stack_env.s3_uri("raw/youtube-spam/it-val-cli.parquet")
    put_bytes(stack_env.s3_client(), uri, write_parquet_bytes(raw))
    result = CliRunner().invoke(
        app,
        ["validate", "run", "--suite", "raw", "--source", uri, "--mode", "quarantine", "--json"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["rows_in"], out["rows_passed"], out["rows_quarantined"]) == (1956, 1953, 3)
    bad = raw.drop(columns=["author"])
    put_bytes(stack_env.s3_client(), uri, write_parquet_bytes(bad))
    result = CliRunner().invoke(app, ["validate", "run", "--suite", "raw", "--source", uri])
    assert result.exit_code == 1
    assert "expect_table_columns_to_match_set" in result.output and "author" in result.output
