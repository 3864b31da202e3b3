"""What the fault tests do to a stack and what they look at: kill a service, start a run,
follow it, and take stock of S3, MLflow and Prefect before and after."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import psutil

from infra import process
from infra.runs import trigger
from mlsys.settings import Settings

TOLERANCE_S = 40.0
"""The fault stack's outage tolerance (MLSYS_OUTAGE_TOLERANCE_S)."""

UNRESPONSIVE_S = 90.0
"""The fault stack's unresponsive-run limit (MLSYS_UNRESPONSIVE_AFTER_S): three missed
heartbeats, so that a busy machine delaying one does not crash a live run."""


def kill(settings: Settings, service: str) -> None:
    """SIGKILL the service's process, its process group and every process it started
    (for the worker: the flow-run processes too, which Prefect starts in sessions of
    their own), as an OOM kill of the whole cgroup or a power cut would."""
    record = process.read_record(settings.stack_dir, service)
    assert record is not None and record.alive(), f"{service} was not running"
    for pid in process.family_pids(record):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    psutil.wait_procs([psutil.Process(record.pid)], timeout=10)


def kill_group(settings: Settings, service: str) -> None:
    """SIGKILL the service's process group (``kill -9 -PGID``): the service and the
    processes it started in its group, not those it started in sessions of their own."""
    record = process.read_record(settings.stack_dir, service)
    assert record is not None and record.alive(), f"{service} was not running"
    assert record.pgid is not None, f"{service}'s record has no process group"
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == record.pgid:
                members.append(proc)
    os.killpg(record.pgid, signal.SIGKILL)
    psutil.wait_procs(members, timeout=10)


def start(settings: Settings, deployment: str, params: dict[str, Any]) -> str:
    outcome = trigger(settings, deployment, params, wait=False, say=lambda _: None)
    return outcome.flow_run_id


def wait_state(settings: Settings, run_id: str, done: Any, timeout_s: float) -> Any:
    from infra.prefect_api import prefect_client

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with prefect_client(settings) as client:
                run = client.read_flow_run(run_id)
            if done(run):
                return run
        except Exception:
            pass  # the server may be the one that is down
        assert time.monotonic() < deadline, f"run {run_id} not done in {timeout_s:.0f} s"
        time.sleep(1)


def wait_begun(settings: Settings, run_id: str, stage: str | None, timeout_s: float) -> Any:
    """The flow run once its work has begun: RUNNING, with a task run started. With
    ``stage`` (a flow name), the RUNNING subflow run of that flow under ``run_id`` once a
    task run of it has started."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from infra.prefect_api import prefect_client

    deadline = time.monotonic() + timeout_s
    while True:
        with prefect_client(settings) as client:
            run = client.read_flow_run(run_id)
            assert not run.state.is_final(), (
                f"run {run.name} ended {run.state.type.value} before the kill: {run.state.message}"
            )
            if stage is not None:
                stages = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                    ),
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[stage])),
                )
                run = next((s for s in stages if s.state and s.state.is_running()), None)
            if run is not None and run.state.is_running():
                tasks = client.read_task_runs(
                    task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))
                )
                if any(t.state and (t.state.is_running() or t.state.is_final()) for t in tasks):
                    return run
        assert time.monotonic() < deadline, f"run {run_id} did not begin in {timeout_s:.0f} s"
        time.sleep(0.5)


def subflow_runs(settings: Settings, run_id: Any) -> list[Any]:
    """The subflow runs under ``run_id``, to any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from infra.prefect_api import prefect_client

    found: list[Any] = []
    with prefect_client(settings) as client:
        todo = [run_id]
        while todo:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[todo.pop()])
                )
            )
            found += children
            todo += [child.id for child in children]
    return found


def run_logs(settings: Settings, run_id: str, *, stages: bool = False) -> str:
    """The run's log lines (its task runs' among them); with ``stages``, its subflow
    runs' too."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from infra.prefect_api import prefect_client

    ids = [run_id, *(r.id for r in subflow_runs(settings, run_id))] if stages else [run_id]
    with prefect_client(settings) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
    return "\n".join(log.message for log in logs)


def no_running_runs(settings: Settings) -> list[str]:
    """Names of the flow runs in state RUNNING."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType as TypeFilter
    from prefect.client.schemas.objects import StateType

    from infra.prefect_api import prefect_client

    with prefect_client(settings) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=TypeFilter(any_=[StateType.RUNNING]))
            )
        )
    return [r.name for r in runs]


def s3_snapshot(settings: Settings, prefix: str) -> dict[str, str]:
    """Every object under ``prefix``: key -> ETag."""
    s3 = settings.s3_client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def registry(settings: Settings) -> dict[str, Any]:
    """Every registered model's versions and aliases."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    return {
        m.name: (sorted(v.version for v in client.search_model_versions(f"name='{m.name}'")),
                 dict(m.aliases))
        for m in client.search_registered_models()
    }  # fmt: skip


def mlflow_runs(settings: Settings) -> dict[str, tuple[str, int | None]]:
    """Every MLflow run of the stack's experiment: run id -> (status, end time)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return {}
    runs: dict[str, tuple[str, int | None]] = {}
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs.update({r.info.run_id: (r.info.status, r.info.end_time) for r in page})
        token = page.token
        if not token:
            return runs


def settle(settings: Settings, run_id: str, say: Any = print) -> None:
    """Leave the stack as the next case expects it after a case failed part way: every
    service up, the case's run final (cancelled if it will not end), no MLflow run left
    RUNNING and no process left behind, so that one failure is reported once instead of
    again in every later case's "before" snapshot. What it had to do is printed."""
    from mlflow.tracking import MlflowClient
    from prefect.states import Cancelled

    from infra.prefect_api import prefect_client
    from infra.stack import up

    for attempt in range(3):
        try:
            up(settings, timeout_s=180, say=lambda line: None)
            break
        except Exception as e:  # the failure is the case's; keep trying to recover
            say(f"settle: up failed ({attempt + 1}/3): {e}")
            time.sleep(5)
    try:
        wait_state(settings, run_id, lambda r: r.state.is_final(), 300)
    except AssertionError:
        say(f"settle: run {run_id} not final, cancelled")
        with prefect_client(settings) as client:
            client.set_flow_run_state(run_id, Cancelled(message="fault test cleanup"), force=True)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for mlflow_run, (status, _) in mlflow_runs(settings).items():
        if status == "RUNNING":
            say(f"settle: MLflow run {mlflow_run} left RUNNING, marked KILLED")
            client.set_terminated(mlflow_run, "KILLED")
    for proc in process.leftovers(settings.stack_dir):
        say(f"settle: process {proc.pid} left behind, killed")
        with contextlib.suppress(psutil.Error):
            proc.kill()
