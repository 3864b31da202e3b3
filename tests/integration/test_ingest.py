"""The ingest flow end to end: a deployment run by the real worker, and bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from infra.runs import mlflow_run_of, trigger
from mlsys.data import SourceError, read_parquet_bytes
from mlsys.data.s3 import get_bytes
from mlsys.settings import Settings

pytestmark = pytest.mark.integration


def test_deployment_runs_on_worker_to_completed(stack: Settings) -> None:
    outcome = trigger(
        stack, "ingest/ingest", {"batch": "it-deploy"}, timeout_s=300, say=lambda line: None
    )
    assert outcome.state == "COMPLETED", outcome.message

    client, run = mlflow_run_of(stack, outcome.flow_run_id)
    tags = run.data.tags
    assert tags["prefect.flow_name"] == "ingest"
    assert tags["prefect.deployment_name"] == "ingest"
    assert tags["prefect.flow_run_url"] == outcome.prefect_url
    assert run.info.status == "FINISHED"
    # The raw suite quarantines the later copy of each of the 3 repeated comment ids.
    metrics = run.data.metrics
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_quarantined"]) == (1956, 1953, 3)
    assert metrics["validate.raw.rows_quarantined"] == 3

    inputs = run.inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["youtube-spam/it-deploy"]
    assert "raw/youtube-spam/it-deploy.parquet" in inputs[0].dataset.source

    df = read_parquet_bytes(
        get_bytes(stack.s3_client(), stack.s3_uri("raw/youtube-spam/it-deploy.parquet"))
    )
    assert len(df) == 1953 and df["comment_id"].is_unique
    assert int((df["label"] == 1).sum()) == 1005 - 2  # the Eminem copies are spam
    quarantined = read_parquet_bytes(
        get_bytes(stack.s3_client(), stack.s3_uri("quarantine/raw/youtube-spam/it-deploy.parquet"))
    )
    assert len(quarantined) == 3
    assert set(quarantined["quarantine_reason"]) == {
        "comment_id: expect_column_values_to_be_unique"
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "ingest")}
    assert artifacts == {"ingest/summary.json", "ingest/rows_per_file.png"}


def test_flow_run_has_link_artifact_to_mlflow(stack_env: Settings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    outcome = trigger(
        stack_env, "ingest/ingest", {"batch": "it-link"}, timeout_s=300, say=lambda line: None
    )
    assert outcome.state == "COMPLETED", outcome.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mlflow-run"]))
        )
    links = [a for a in artifacts if str(a.flow_run_id) == outcome.flow_run_id]
    assert len(links) == 1
    assert outcome.mlflow_url is not None and outcome.mlflow_url in str(links[0].data)


def test_missing_source_fails_the_deployment_naming_the_path(
    stack: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder"
    outcome = trigger(
        stack, "ingest/ingest", {"source": str(missing)}, timeout_s=300, say=lambda line: None
    )
    assert outcome.state == "FAILED"
    assert str(missing) in (outcome.message or "")
    _, run = mlflow_run_of(stack, outcome.flow_run_id)
    assert run.info.status == "FAILED"


def test_empty_folder_stops_the_flow(stack_env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest

    with pytest.raises(SourceError, match=str(tmp_path)):
        ingest(source=str(tmp_path), batch="it-empty")
    # The failed run is recorded by the stack's own Prefect server.
    response = httpx.post(
        f"{stack_env.api_url}/flow_runs/filter", json={}, headers=stack_env.prefect_headers()
    )
    runs = [r for r in response.json() if r["parameters"].get("batch") == "it-empty"]
    assert [r["state_type"] for r in runs] == ["FAILED"]


def test_csv_without_expected_column_names_it(stack_env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest

    (tmp_path / "comments.csv").write_text("COMMENT_ID,AUTHOR,DATE\n1,a,2014-01-01\n")
    with pytest.raises(SourceError, match="CONTENT") as err:
        ingest(source=str(tmp_path), batch="it-nocol")
    assert "comments.csv" in str(err.value)


def test_ingest_reads_back_from_s3(stack_env: Settings) -> None:
    """An s3:// Parquet source: the batch written by one ingest feeds another."""
    from flows.ingest import ingest

    stack = stack_env
    first = ingest(batch="it-s3-a")
    second = ingest(source=first, batch="it-s3-b")
    a = read_parquet_bytes(get_bytes(stack.s3_client(), first))
    b = read_parquet_bytes(get_bytes(stack.s3_client(), second))
    assert len(a) == len(b) == 1953
    assert a["text"].equals(b["text"])


def test_no_secret_in_any_log(stack: Settings) -> None:
    assert stack.s3_secret_key is not None
    secret = stack.s3_secret_key.get_secret_value()
    logs = list((stack.stack_dir / "logs").glob("*.log"))
    assert len(logs) >= 4
    for log in logs:
        assert secret not in log.read_text(errors="replace"), f"secret key found in {log}"


def test_data_show_reads_the_batch_from_s3(stack_env: Settings) -> None:
    from typer.testing import CliRunner

    from flows.ingest import ingest
    from infra.cli import app

    uri = ingest(batch="it-show")
    result = CliRunner().invoke(app, ["data", "show", uri, "-n", "2"])
    assert result.exit_code == 0, result.output
    assert f"{uri}: 1953 rows" in result.output
    assert "labels:  0=950, 1=1003" in result.output
