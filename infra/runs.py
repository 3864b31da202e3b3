"""Trigger a deployment through the Prefect API, follow it, and find its MLflow run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlsys.links import mlflow_run_link
from mlsys.settings import Settings

Say = Callable[[str], None]


class RunError(RuntimeError):
    """The deployment could not be run or followed; the message says why."""


@dataclass(frozen=True)
class RunOutcome:
    flow_run_id: str
    flow_run_name: str
    state: str
    message: str | None
    prefect_url: str
    mlflow_url: str | None


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", …]`` -> ``{k: v}``, values parsed as JSON when they parse."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RunError(f"parameter {pair!r} is not KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def mlflow_runs_of(settings: Settings, flow_run_id: str) -> list[Any]:
    """The MLflow parent runs tagged with this Prefect flow run (one per flow run; child
    runs, which carry the same tags, are left out)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    )
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def mlflow_run_of(settings: Settings, flow_run_id: str) -> tuple[Any, Any]:
    """An MLflow client and the parent run of a Prefect flow run; LookupError unless there
    is exactly one."""
    from mlflow.tracking import MlflowClient

    runs = mlflow_runs_of(settings, flow_run_id)
    if len(runs) != 1:
        raise LookupError(f"expected one MLflow run for flow run {flow_run_id}, got {len(runs)}")
    return MlflowClient(tracking_uri=settings.tracking_uri), runs[0]


def mlflow_run_url(settings: Settings, flow_run_id: str) -> str | None:
    """The URL of the MLflow run tagged with this Prefect flow run, if there is one."""
    runs = mlflow_runs_of(settings, flow_run_id)
    if not runs:
        return None
    info = runs[0].info
    return mlflow_run_link(settings.tracking_uri, info.experiment_id, info.run_id)


def trigger(
    settings: Settings,
    deployment: str,
    params: Sequence[str] | dict[str, Any],
    *,
    wait: bool = True,
    timeout_s: float = 1800,
    say: Say = print,
) -> RunOutcome:
    """Create a flow run of ``deployment`` (FLOW/NAME) and, with ``wait``, follow it to the end."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parameters = params if isinstance(params, dict) else parse_params(params)
    with (
        temporary_settings(updates={PREFECT_API_URL: settings.api_url}),
        get_client(sync_client=True) as client,
    ):
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            known = sorted(f"{d.name}" for d in client.read_deployments())
            raise RunError(
                f"deployment {deployment!r} not found at {settings.api_url} "
                f"(deployments there: {', '.join(known) or 'none'}); is the stack up?"
            ) from None
        except Exception as exc:
            raise RunError(f"cannot reach the Prefect API at {settings.api_url}: {exc}") from exc
        if _names_a_new_dataset(dep.parameter_openapi_schema or {}, parameters):
            # A dataset defined since the last deploy: offer it in the forms first, or
            # Prefect refuses the value as outside the form's choices.
            from infra.forms import offer_dataset_choices

            offer_dataset_choices(settings, say=lambda _: None)
        flow_run = client.create_flow_run_from_deployment(dep.id, parameters=parameters)
        url = f"{settings.ui_url}/runs/flow-run/{flow_run.id}"
        say(f"flow run {flow_run.name} of {deployment}: {url}")
        if not wait:
            return RunOutcome(str(flow_run.id), flow_run.name, "SCHEDULED", None, url, None)
        deadline = time.monotonic() + timeout_s
        last = None
        started = time.monotonic()
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.name != last:
                last = state.name
                say(f"  {time.monotonic() - started:6.1f} s  {state.name}")
            if state is not None and state.is_final():
                break
            if time.monotonic() > deadline:
                raise RunError(f"flow run {flow_run.id} still {last} after {timeout_s:.0f} s")
            time.sleep(1)
    outcome = RunOutcome(
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        state=state.type.value,
        message=state.message,
        prefect_url=url,
        mlflow_url=mlflow_run_url(settings, str(flow_run.id)),
    )
    say(
        f"\n{deployment}: {outcome.state}"
        + (f" ({outcome.message})" if outcome.message and outcome.state != "COMPLETED" else "")
    )
    say(f"  Prefect flow run: {outcome.prefect_url}")
    say(f"  MLflow run:       {outcome.mlflow_url or '(none found)'}")
    return outcome


def _names_a_new_dataset(schema: dict[str, Any], parameters: dict[str, Any]) -> bool:
    """Whether ``parameters`` give a dataset that the deployment's form does not offer."""
    dataset = parameters.get("dataset")
    choices = schema.get("properties", {}).get("dataset", {}).get("enum")
    return isinstance(dataset, str) and choices is not None and dataset not in choices
