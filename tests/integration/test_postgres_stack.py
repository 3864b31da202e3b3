"""A second stack with PostgreSQL behind both MLflow and Prefect, and a clean `down`."""

from __future__ import annotations

import socket
import struct
import threading
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
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    closed_port,
    fresh_postgres_database,
    postgres_unreachable,
    stack_settings,
)

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


# The skip rule of fresh_postgres_database: skipped only where nothing answers.


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """The port of a server that speaks PostgreSQL's protocol up to the startup message and
    answers it as a server whose password check failed (SQLSTATE 28P01)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        while True:
            head = conn.recv(8, socket.MSG_WAITALL)
            if len(head) < 8:  # a client that only probed the port
                return
            length, code = struct.unpack("!ii", head)
            conn.recv(length - 8, socket.MSG_WAITALL)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "no"
                conn.sendall(b"N")
                continue
            fields = b"".join(
                key + value + b"\0"
                for key, value in [
                    (b"S", b"FATAL"),
                    (b"V", b"FATAL"),
                    (b"C", b"28P01"),
                    (b"M", b'password authentication failed for user "postgres"'),
                ]
            )
            body = fields + b"\0"
            conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
            return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def _outcome_of_fresh_database(url: str) -> BaseException | None:
    """What fresh_postgres_database(admin_url=url) raised on entry (a skip included)."""
    try:
        with fresh_postgres_database(admin_url=url):
            return None
    except BaseException as exc:  # pytest.skip raises no Exception subclass
        return exc


def test_a_refused_login_fails_instead_of_skipping(refusing_server: int) -> None:
    url = f"postgresql://postgres:wrong@127.0.0.1:{refusing_server}/test"
    assert postgres_unreachable(url) is None
    outcome = _outcome_of_fresh_database(url)
    assert not isinstance(outcome, pytest.skip.Exception), f"skipped: {outcome}"
    assert isinstance(outcome, psycopg2.OperationalError), repr(outcome)
    assert "password authentication failed" in str(outcome)


def test_no_server_listening_skips_with_the_reason() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    reason = postgres_unreachable(url)
    assert reason is not None and "refused" in reason.lower()
    outcome = _outcome_of_fresh_database(url)
    assert isinstance(outcome, pytest.skip.Exception), repr(outcome)
    assert "no PostgreSQL reachable" in str(outcome) and "refused" in str(outcome).lower()


def test_an_unknown_database_on_the_real_server_fails_instead_of_skipping() -> None:
    reason = postgres_unreachable(POSTGRES_ADMIN_URL)
    if reason is not None:
        pytest.skip(reason)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    outcome = _outcome_of_fresh_database(f"{base}/mlsys_no_such_database")
    assert not isinstance(outcome, pytest.skip.Exception), f"skipped: {outcome}"
    assert isinstance(outcome, psycopg2.OperationalError), repr(outcome)
    assert "mlsys_no_such_database" in str(outcome)
