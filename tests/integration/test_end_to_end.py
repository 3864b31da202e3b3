"""The end_to_end deployment as a user drives it: triggered through Prefect's API, run by the
worker to Completed, every stage a child MLflow run of its run; run again on the same data
it registers a new version but keeps the champion, and says why."""

from __future__ import annotations

from typing import Any

import pytest

from infra.runs import mlflow_run_of, trigger
from mlsys.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "it-e2e"


def run_pipeline(stack: Settings, batch: str) -> tuple[Any, Any, Any]:
    params = {"batch": batch, "model_name": MODEL, "training": {"epochs": 4}}
    outcome = trigger(stack, "end_to_end/end_to_end", params, timeout_s=900,
                      say=lambda line: None)  # fmt: skip
    assert outcome.state == "COMPLETED", outcome.message
    client, parent = mlflow_run_of(stack, outcome.flow_run_id)
    return outcome, client, parent


def test_end_to_end_runs_every_stage_and_promotes_only_a_better_model(stack: Settings) -> None:
    _, client, parent = run_pipeline(stack, "it-e2e-1")
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

    # The same data again: the same model, which doesn't beat the champion.
    _, client, again = run_pipeline(stack, "it-e2e-2")
    reason = again.data.tags["mlsys.promotion"]
    assert reason.startswith(f"kept {MODEL} version 1 as @champion"), reason
    assert "is at least version 2's" in reason
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
