"""Services of a private stack killed with SIGKILL during runs, and many runs submitted
at once: runs complete when the service returns within the tolerance, fail naming the
service when it doesn't, leave nothing RUNNING, and lose nothing.

Slow (minutes each): run with `make test-faults`, not part of `make test`.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest

from infra import process
from infra.runs import trigger
from infra.stack import down, up
from mlsys.settings import Settings
from tests.conftest import fresh_postgres_database, stack_settings
from tests.faults.helpers import (
    TOLERANCE_S,
    UNRESPONSIVE_S,
    kill,
    no_running_runs,
    registry,
    run_logs,
    s3_snapshot,
    start,
    wait_state,
)

pytestmark = pytest.mark.integration


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


@pytest.mark.parametrize(
    ("service", "deployment", "params", "name"),
    [
        ("seaweedfs", "weak_label/weak_label", {"batch": "s3-gone"}, "S3"),
        ("mlflow", "train/train", {"training": {"epochs": 2, "choose": False}}, "MLflow"),
    ],
    ids=["seaweedfs-weak_label", "mlflow-train"],
)
def test_service_gone_for_good_the_run_fails_naming_it_in_time(
    fault_stack: Settings, service: str, deployment: str, params: dict[str, Any], name: str
) -> None:
    if deployment.startswith("train"):  # something to train on, made while all is up
        labeled = trigger(fault_stack, "weak_label/weak_label", {"batch": f"{service}-gone"},
                          say=lambda _: None)  # fmt: skip
        assert labeled.state == "COMPLETED", labeled.message
    objects = s3_snapshot(fault_stack, "")
    models = registry(fault_stack)
    kill(fault_stack, service)
    killed = time.monotonic()
    run_id = start(fault_stack, deployment, params)
    try:
        run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), 600)
        took = time.monotonic() - killed
    finally:
        up(fault_stack, timeout_s=180, say=lambda line: None)
    assert run.state.type.value in ("FAILED", "CRASHED")
    # The tolerance, plus 30 s, plus the run's own start-up on a busy 2-core machine.
    assert took < TOLERANCE_S + 30 + 30, f"failed {took:.0f} s after the kill"
    url = fault_stack.s3_endpoint if service == "seaweedfs" else fault_stack.tracking_uri
    said = f"{run.state.message}\n{run_logs(fault_stack, run_id, stages=True)}"
    assert f"{name} at {str(url).rstrip('/')}" in said, said[-2000:]
    after = s3_snapshot(fault_stack, "")
    assert {k: v for k, v in after.items() if k in objects} == objects, "objects changed"
    assert registry(fault_stack) == models, "model versions or aliases changed"
    assert not process.leftovers(fault_stack.stack_dir), "processes left behind"
    assert not no_running_runs(fault_stack)


def test_mlflow_back_within_the_tolerance_the_run_completes(fault_stack: Settings) -> None:
    from mlflow.tracking import MlflowClient

    labeled = trigger(fault_stack, "weak_label/weak_label", {"batch": "for-train"},
                      say=lambda _: None)  # fmt: skip
    assert labeled.state == "COMPLETED", labeled.message
    client = MlflowClient(tracking_uri=fault_stack.tracking_uri)
    before = {(m.name, m.version) for m in client.search_model_versions()}
    kill(fault_stack, "mlflow")
    run_id = start(fault_stack, "train/train", {"training": {"epochs": 2, "choose": False}})
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
    run_id = start(fault_stack, "train/train", {"training": {"epochs": 2, "choose": False}})
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


def test_run_dying_with_its_worker_is_crashed_by_the_server_without_up(
    fault_stack: Settings,
) -> None:
    """The run's process and its worker killed together, the Prefect server up, and no one
    running `up`: the heartbeat automation marks the run CRASHED."""
    labeled = trigger(fault_stack, "weak_label/weak_label", {"batch": "unresponsive"},
                      say=lambda _: None)  # fmt: skip
    assert labeled.state == "COMPLETED", labeled.message
    run_id = start(fault_stack, "train/train", {"training": {"epochs": 2, "choose": False}})
    wait_state(fault_stack, run_id, lambda r: r.state.is_running(), 300)
    time.sleep(5)  # its first heartbeat, sent as it starts, has reached the server
    kill(fault_stack, "prefect-worker")
    killed = time.monotonic()
    try:
        run = wait_state(fault_stack, run_id, lambda r: r.state.is_final(), UNRESPONSIVE_S + 120)
        took = time.monotonic() - killed
    finally:
        up(fault_stack, timeout_s=180, say=lambda line: None)
    assert run.state.type.value == "CRASHED", run.state.message
    assert "no heartbeat" in str(run.state.message), run.state.message
    # Crashed after the limit (no earlier: the last heartbeat came before the kill), and
    # within a minute of it (the server checks proactive triggers every few seconds).
    assert UNRESPONSIVE_S - 30 <= took <= UNRESPONSIVE_S + 60, f"crashed {took:.0f} s after"
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
