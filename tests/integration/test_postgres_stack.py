"""A second stack with PostgreSQL behind both MLflow and Prefect, and a clean `down`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from infra import process
from infra.runs import trigger
from infra.stack import ALL_SERVICES, down, services, up
from mlsys.settings import Settings
from tests.conftest import fresh_postgres_database, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database for this test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


def _family(stack_dir: Path) -> list[psutil.Process]:
    procs = []
    for name in ALL_SERVICES:
        record = process.read_record(stack_dir, name)
        if record is not None and record.alive():
            leader = psutil.Process(record.pid)
            procs += [leader, *leader.children(recursive=True)]
    return procs


def test_postgres_backed_stack_runs_a_deployment_and_stops_clean(
    database: str, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path / "pg-stack", database_url=database)
    try:
        settings = up(settings, timeout_s=180, say=lambda line: None)
        with settings.mlflow_credentials():
            _run_a_deployment(settings, database)
    finally:
        family = _family(settings.stack_dir)
        bystander = psutil.Popen(["sleep", "60"])
        stopped = down(settings, say=lambda line: None)
    try:
        assert set(stopped) == {s.name for s in services(settings)}
        assert family, "no stack processes were found before down"
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running after down: {[p.pid for p in alive]}"
        assert bystander.is_running(), "down killed a process it did not start"
        assert not list((settings.stack_dir / "pids").glob("*.json"))
    finally:
        bystander.kill()
        bystander.wait()


def _run_a_deployment(settings: Settings, database: str) -> None:
    """An ingest run on the PostgreSQL-backed stack: its rows in both servers' tables."""
    outcome = trigger(
        settings, "ingest/ingest", {"batch": "pg"}, timeout_s=300, say=lambda line: None
    )
    assert outcome.state == "COMPLETED", outcome.message
    assert outcome.mlflow_url is not None

    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        # MLflow's run rows live in its own schema...
        cur.execute("SELECT count(*) FROM mlflow.runs")
        assert cur.fetchone()[0] >= 1
        cur.execute(
            "SELECT count(*) FROM mlflow.tags WHERE key = 'prefect.flow_run_id' AND value = %s",
            (outcome.flow_run_id,),
        )
        assert cur.fetchone()[0] == 1
        # ...and Prefect's flow run is in Prefect's tables of the same database.
        cur.execute("SELECT state_type FROM public.flow_run WHERE id = %s", (outcome.flow_run_id,))
        assert cur.fetchone()[0] == "COMPLETED"
    assert not (settings.stack_dir / "mlflow" / "mlflow.db").exists()
    assert not (settings.stack_dir / "prefect" / "prefect.db").exists()

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{outcome.flow_run_id}'",
    )
    assert runs[0].data.metrics["rows_out"] == 1953
