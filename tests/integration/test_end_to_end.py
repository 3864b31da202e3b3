"""The end_to_end deployment as a user drives it: triggered through Prefect's API, run by the
worker to Completed, every stage a child MLflow run of its run; the Prefect and MLflow UIs
show the run and the model in a real browser; run again on the same data it registers a
new version but keeps the champion, and says why."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from infra.runs import RunOutcome, mlflow_run_of, trigger
from mlsys.links import mlflow_model_link, mlflow_run_link
from mlsys.settings import Settings
from tests.integration.browser import browser_missing, chromium

pytestmark = pytest.mark.integration

MODEL = "it-e2e"


def run_pipeline(stack: Settings, batch: str) -> tuple[RunOutcome, Any, Any]:
    params = {"batch": batch, "model_name": MODEL, "training": {"epochs": 4}}
    outcome = trigger(stack, "end_to_end/end_to_end", params, timeout_s=900,
                      say=lambda line: None)  # fmt: skip
    assert outcome.state == "COMPLETED", outcome.message
    client, parent = mlflow_run_of(stack, outcome.flow_run_id)
    return outcome, client, parent


@pytest.fixture(scope="module")
def first_run(stack: Settings) -> tuple[RunOutcome, Any, Any]:
    """The first end_to_end run of the module: it registers version 1 and promotes it."""
    return run_pipeline(stack, "it-e2e-1")


def test_end_to_end_runs_every_stage_and_promotes_the_first_model(
    first_run: tuple[RunOutcome, Any, Any],
) -> None:
    _, client, parent = first_run
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    stages = {c.data.tags["prefect.flow_name"]: c for c in children}
    assert set(stages) == {"ingest", "weak_label", "train", "batch_infer"}
    for name in ("ingest", "weak_label", "batch_infer"):
        m = stages[name].data.metrics
        assert m["rows_in"] == m["rows_out"] + m["rows_quarantined"], name
    assert stages["ingest"].data.metrics["rows_out"] == 1953
    assert stages["batch_infer"].data.metrics["rows_out"] == 1953
    tags = parent.data.tags
    assert tags["mlsys.promotion"].startswith(f"promoted {MODEL} version 1 to @champion")
    assert parent.data.metrics["test_accuracy"] > 0.85
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"


def test_the_uis_show_the_flow_run_its_mlflow_run_and_the_model(
    stack: Settings, first_run: tuple[RunOutcome, Any, Any]
) -> None:
    """What a user opens after a run, in headless Chromium: the Prefect UI's flow run page
    and the deployment's run form, the MLflow UI's run page and registered model page."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    outcome, _, parent = first_run
    from infra.prefect_api import prefect_client

    with prefect_client(stack) as prefect:
        deployment = prefect.read_deployment_by_name("end_to_end/end_to_end")
    run_name = parent.info.run_name
    with chromium() as page:
        assert stack.prefect_auth_string is not None
        page.sign_in_prefect(stack.ui_url, stack.prefect_auth_string.get_secret_value())
        text = page.show(
            outcome.prefect_url, [outcome.flow_run_name, "Completed"], shot="prefect-flow-run"
        )
        assert "end_to_end" in text
        summary = httpx.post(
            f"{stack.api_url}/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["end-to-end-summary"]},
                                "flow_run_id": {"any_": [outcome.flow_run_id]}}},
            headers=stack.prefect_headers(),
            timeout=30,
        ).json()  # fmt: skip
        assert len(summary) == 1, summary
        page.show(
            f"{stack.ui_url}/artifacts/artifact/{summary[0]['id']}",
            ["rows in", "Promotion: promoted", f"{MODEL} version 1"],
            shot="prefect-summary-artifact",
        )
        text = page.show(
            f"{stack.ui_url}/deployments/deployment/{deployment.id}/run",
            ["Training", "Passes over the training rows."],
            shot="prefect-deployment-run-form",
        )
        auth = stack.mlflow_auth()
        assert auth is not None
        page.sign_in_mlflow(*auth)
        run_url = mlflow_run_link(stack.tracking_uri, parent.info.experiment_id, parent.info.run_id)
        page.show(run_url, [run_name, "test_accuracy", "Child runs", "train"], shot="mlflow-run")
        page.show(
            mlflow_model_link(stack.tracking_uri, MODEL),
            [MODEL, "Version 1", "champion"],
            shot="mlflow-registered-model",
        )


def stage_names(client: Any, parent: Any) -> set[str]:
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    return {c.data.tags["prefect.flow_name"] for c in children}


def test_a_failed_run_resumes_at_the_failed_stage_and_keeps_the_champion(
    stack: Settings, first_run: tuple[RunOutcome, Any, Any]
) -> None:
    """A mistake the form accepts (gpipe needs a batch size that its 4 micro-batches
    divide) fails the run at train; the corrected run reuses ingest and weak_label from
    Prefect's stored results, trains, and keeps the champion, saying why."""
    training = {"epochs": 4, "trainer": {"kind": "gpipe"}, "hidden": [64], "batch_size": 30}
    bad = {"batch": "it-e2e-2", "model_name": MODEL, "training": training}
    failed = trigger(stack, "end_to_end/end_to_end", bad, timeout_s=900, say=lambda line: None)
    assert failed.state == "FAILED", failed.message
    client, failed_parent = mlflow_run_of(stack, failed.flow_run_id)
    assert stage_names(client, failed_parent) == {"ingest", "weak_label", "train"}

    _, client, again = run_pipeline(stack, "it-e2e-2")
    assert again.data.tags["mlsys.reused_stages"] == "ingest,weak_label"
    assert stage_names(client, again) == {"train", "batch_infer"}
    reason = again.data.tags["mlsys.promotion"]
    assert reason.startswith(f"kept {MODEL} version 1 as @champion"), reason
    assert "is at least version 2's" in reason
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"


def test_the_same_run_again_reuses_every_stage_up_to_batch_infer(
    stack: Settings, first_run: tuple[RunOutcome, Any, Any]
) -> None:
    _, client, again = run_pipeline(stack, "it-e2e-1")
    assert again.data.tags["mlsys.reused_stages"] == "ingest,weak_label,train"
    assert stage_names(client, again) == {"batch_infer"}
    assert again.data.tags["mlsys.promotion"].startswith("no new model: an earlier run trained")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
