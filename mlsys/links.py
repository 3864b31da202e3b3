"""Links into the MLflow UI, opened in its model-training views.

MLflow 3's UI starts in its GenAI views (traces, evaluations) unless the URL asks for
``workflowType=machine_learning``; runs and models of this project are training runs.
"""

from __future__ import annotations

from urllib.parse import quote

_VIEW = "?workflowType=machine_learning"


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{_VIEW}"


def mlflow_model_link(tracking_uri: str, name: str, version: str | int | None = None) -> str:
    """The MLflow UI page of a registered model, or of one of its versions."""
    page = f"{tracking_uri.rstrip('/')}/#/models/{quote(name, safe='')}"
    if version is not None:
        page += f"/versions/{version}"
    return page + _VIEW
