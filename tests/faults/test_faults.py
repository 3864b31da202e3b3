"""Services of a private stack killed with SIGKILL during runs, and many runs submitted
at once: runs complete when the service returns within the tolerance, fail naming the
service when it doesn't, leave nothing RUNNING, and lose nothing.

Slow (minutes each): run with `make test-faults`, not part of `make test`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from infra import process
from infra.runs import trigger
from infra.stack import down, up
from mlsys.settings import Settings
from tests.conftest import fresh_postgres_database, stack_settings

pytestmark = pytest.mark.integration

TOLERANCE_S = 40.0


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of its own (its services get killed), with a short outage tolerance."""
    settings = stack_settings(
        tmp_path_factory.mktemp("fault-stack"), outage_tolerance_s=TOLERANCE_S
    )
    try:
        settings = up(settings, timeout_s=180, say=lambda line: None)
        settings.export_mlflow_credentials()
        first = trigger(settings, "ingest/ingest", {"batch": "base"}, say=lambda _: None)
        assert first.state == "COMPLETED", first.message
        yield settings
    finally:
        down(settings, say=lambda line: None)


def kill(settings: Settings, service: str) -> None:
    """SIGKILL the service's whole process group, as a crash (or the OOM killer) would."""
    record = process.read_record(settings.stack_dir, service)
    assert record is not None and record.alive(), f"{service} was not running"
    for pid in process.family_pids(record):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    psutil.wait_procs([psutil.Process(record.pid)], timeout=10)


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


def run_logs(settings: Settings, run_id: str) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from infra.prefect_api import prefect_client

    with prefect_client(settings) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return "\n".join(log.message for log in logs)


def s3_snapshot(settings: Settings, prefix: str) -> dict[str, str]:
    s3 = settings.s3_client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def start(settings: Settings, deployment: str, params: dict[str, Any]) -> str:
    outcome = trigger(settings, deployment, params, wait=False, say=lambda _: None)
    return outcome.flow_run_id


def no_running_runs(settings: Settings) -> list[str]:
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


def test_s3_back_within_the_tolerance_the_run_completes(fault_stack: Settings) -> None:
    raw = s3_snapshot(fault_stack, "raw/")
    # Killed before the run starts, so that the run surely meets the outage.
    kill(fault_stack, "seaweedfs")
    run_id = start(fault_stack, "weak_label/weak_label", {"batch": "s3-back"})
    wait_state(fault_stack, run_id, lambda r: r.state.is_running(), 300)
    time.sleep(TOLERANCE_S / 3)
    said = run_logs(fault_stack, run_id)
    up(fault_stack, timeout_s=180, say=lambda line: None)
    run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), 900)
    assert run.state.type.value == "COMPLETED", run.state.message
    assert "S3" in said and str(fault_stack.s3_endpoint) in said, said[-2000:]
    assert s3_snapshot(fault_stack, "raw/") == raw, "objects changed across the outage"
    assert not no_running_runs(fault_stack)


def test_s3_gone_for_good_the_run_fails_naming_it_in_time(fault_stack: Settings) -> None:
    objects = s3_snapshot(fault_stack, "")
    models = registry(fault_stack)
    kill(fault_stack, "seaweedfs")
    killed = time.monotonic()
    run_id = start(fault_stack, "weak_label/weak_label", {"batch": "s3-gone"})
    try:
        run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), 600)
        took = time.monotonic() - killed
    finally:
        up(fault_stack, timeout_s=180, say=lambda line: None)
    assert run.state.type.value in ("FAILED", "CRASHED")
    assert took < TOLERANCE_S + 30 + 30, f"failed {took:.0f} s after the kill"
    said = f"{run.state.message}\n{run_logs(fault_stack, run_id)}"
    assert "S3" in said and str(fault_stack.s3_endpoint) in said, said[-2000:]
    after = s3_snapshot(fault_stack, "")
    assert {k: v for k, v in after.items() if k in objects} == objects, "objects changed"
    assert registry(fault_stack) == models, "model versions or aliases changed"
    assert not process.leftovers(fault_stack.stack_dir), "processes left behind"
    assert not no_running_runs(fault_stack)


def registry(settings: Settings) -> dict[str, Any]:
    """Every registered model's versions and aliases."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    return {
        m.name: (sorted(v.version for v in client.search_model_versions(f"name='{m.name}'")),
                 dict(m.aliases))
        for m in client.search_registered_models()
    }  # fmt: skip


def test_mlflow_back_within_the_tolerance_the_run_completes(fault_stack: Settings) -> None:
    from mlflow.tracking import MlflowClient

    labeled = trigger(fault_stack, "weak_label/weak_label", {"batch": "for-train"},
                      say=lambda _: None)  # fmt: skip
    assert labeled.state == "COMPLETED", labeled.message
    client = MlflowClient(tracking_uri=fault_stack.tracking_uri)
    before = {(m.name, m.version) for m in client.search_model_versions()}
    kill(fault_stack, "mlflow")
    run_id = start(fault_stack, "train/train", {"epochs": 2})
    wait_state(fault_stack, run_id, lambda r: r.state.is_running(), 300)
    time.sleep(TOLERANCE_S / 3)
    up(fault_stack, timeout_s=180, say=lambda line: None)
    run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), 900)
    assert run.state.type.value == "COMPLETED", run.state.message
    after = {(m.name, m.version) for m in client.search_model_versions()}
    assert before <= after and len(after - before) == 1, (before, after)
    assert not no_running_runs(fault_stack)
    assert not process.leftovers(fault_stack.stack_dir), "processes left behind"


def test_prefect_server_killed_no_run_stays_running(fault_stack: Settings) -> None:
    run_id = start(fault_stack, "train/train", {"epochs": 2})
    wait_state(fault_stack, run_id, lambda r: r.state.is_running(), 300)
    time.sleep(2)
    kill(fault_stack, "prefect-server")
    time.sleep(10)
    up(fault_stack, timeout_s=180, say=lambda line: None)
    run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), 900)
    assert run.state.type.value in ("COMPLETED", "FAILED", "CRASHED")
    deadline = time.monotonic() + 120
    while no_running_runs(fault_stack) and time.monotonic() < deadline:
        time.sleep(5)
        up(fault_stack, timeout_s=180, say=lambda line: None)
    assert not no_running_runs(fault_stack)


def submit_at_once(settings: Settings, runs: int) -> list[str]:
    """``runs`` ingest runs submitted at once from as many threads; every submission must
    be accepted once, and every run must complete (the pool runs as many as the machine
    has cores; the rest wait in the queue)."""

    def submit(i: int) -> str:
        params = {"batch": f"load-{i:03d}"}
        outcome = trigger(settings, "ingest/ingest", params, wait=False, say=lambda _: None)
        return outcome.flow_run_id

    with concurrent.futures.ThreadPoolExecutor(max_workers=runs) as pool:
        ids = list(pool.map(submit, range(runs)))
    assert len(set(ids)) == runs
    states = [
        wait_state(settings, run_id, lambda r: r.state.is_final(), 7200).state.type.value
        for run_id in ids
    ]
    assert states == ["COMPLETED"] * runs, {s: states.count(s) for s in set(states)}
    # On SQLite the server's log shows "database is locked" when two writers collide;
    # Prefect answers those requests with 503, which its clients retry: nothing is lost.
    return ids


def test_50_runs_submitted_at_once_on_sqlite_all_complete(fault_stack: Settings) -> None:
    submit_at_once(fault_stack, 50)


def test_200_runs_submitted_at_once_on_postgresql_all_complete(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with fresh_postgres_database("mlsys_load") as database:
        settings = stack_settings(tmp_path_factory.mktemp("load-pg-stack"), database_url=database)
        try:
            settings = up(settings, timeout_s=180, say=lambda line: None)
            with settings.mlflow_credentials():
                submit_at_once(settings, 200)
        finally:
            down(settings, say=lambda line: None)
