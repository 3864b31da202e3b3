"""Outages of S3 and MLflow are ridden out for a bounded time; nothing else is retried.

Real clients pointed at a closed port (or at a tiny in-process HTTP server that answers
errors) give the real exceptions; no service runs. Waiting is simulated with a fake clock.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError, SSLError

import tasks.retry as retry
from mlsys.data.s3 import S3Error, get_bytes
from mlsys.settings import Settings
from tasks.retry import ServiceOutage, classify, outage_tolerant, ride_out, tolerant
from tests.conftest import closed_port


def s3_client(url: str) -> Any:
    return Settings(s3_endpoint_url=url, s3_access_key="k", s3_secret_key="s").s3_client()


def raised(fn: Any, *args: Any, **kwargs: Any) -> BaseException:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


@pytest.fixture
def mlflow_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client without its own HTTP retries (they only make the tests slow)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


class _Answer(BaseHTTPRequestHandler):
    status = 503
    body = b"busy"
    content_type = "text/plain"
    missing = 0  # bytes promised by Content-Length but never sent (a server killed mid-answer)

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body) + self.missing))
        self.end_headers()
        self.wfile.write(self.body)
        if self.missing:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Answer]]]:
    """An in-process HTTP server answering every request with ``handler.status``."""
    handler = type("Handler", (_Answer,), {})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", handler
    httpd.shutdown()
    httpd.server_close()


# ---- classification: S3 ------------------------------------------------------------------


def test_s3_down_is_an_s3_outage_naming_its_url_within_seconds() -> None:
    port = closed_port()
    started = time.monotonic()
    exc = raised(s3_client(f"http://127.0.0.1:{port}").get_object, Bucket="b", Key="k")
    assert time.monotonic() - started < 15  # the client gives up quickly
    outage = classify(exc)
    assert outage is not None
    assert outage.where == f"S3 at http://127.0.0.1:{port}"
    assert outage.problem == "unreachable"
    assert "Connection refused" in outage.reason


def test_s3_error_wrapping_a_connection_error_is_an_outage() -> None:
    port = closed_port()
    exc = raised(get_bytes, s3_client(f"http://127.0.0.1:{port}"), "s3://b/k.parquet")
    assert isinstance(exc, S3Error)
    outage = classify(exc)
    assert outage is not None and outage.service == "S3"


def test_a_value_error_raised_from_a_connection_error_is_an_outage() -> None:
    """As mlsys.data.sources.SourceError (a ValueError) wraps a failed S3 read."""
    port = closed_port()
    cause = raised(s3_client(f"http://127.0.0.1:{port}").get_object, Bucket="b", Key="k")
    try:
        raise ValueError("cannot read S3 object s3://b/k") from cause
    except ValueError as exc:
        assert classify(exc) is not None


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    "code,status",
    [("InternalError", 500), ("503", 503), ("SlowDown", 503), ("ServiceUnavailable", 503)],
)
def test_s3_server_errors_are_outages(code: str, status: int) -> None:
    outage = classify(client_error(code, status))
    assert outage is not None and outage.service == "S3"
    assert outage.problem == f"failing (HTTP {status})"


@pytest.mark.parametrize(
    "code,status",
    [("NoSuchKey", 404), ("NoSuchBucket", 404), ("403", 403), ("InvalidAccessKeyId", 403)],
)
def test_missing_objects_and_refused_credentials_are_deterministic(code: str, status: int) -> None:
    assert classify(client_error(code, status)) is None
    try:
        raise S3Error("cannot read s3://b/k") from client_error(code, status)
    except S3Error as exc:
        assert exc.permanent
        assert classify(exc) is None


def test_s3_answering_404_and_403_is_deterministic(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    for status in (404, 403):
        handler.status = status
        exc = raised(s3_client(url).get_object, Bucket="b", Key="k")
        assert isinstance(exc, ClientError)
        assert classify(exc) is None


def test_s3_answering_503_is_an_outage(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    handler.status = 503
    outage = classify(raised(s3_client(url).get_object, Bucket="b", Key="k"))
    assert outage is not None and outage.problem == "failing (HTTP 503)"


def test_certificate_errors_and_explicitly_permanent_errors_are_deterministic() -> None:
    assert classify(SSLError(endpoint_url="https://s3.example", error="bad cert")) is None
    assert classify(S3Error("no .parquet object under s3://b/raw/", permanent=True)) is None
    assert classify(S3Error("connection reset")) is None  # nothing says which service


# ---- classification: MLflow --------------------------------------------------------------


def test_mlflow_down_is_an_mlflow_outage_naming_its_url(mlflow_fast: None) -> None:
    from mlflow.tracking import MlflowClient

    port = closed_port()
    exc = raised(MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name, "x")
    outage = classify(exc)
    assert outage is not None
    assert outage.where == f"MLflow at http://127.0.0.1:{port}"
    assert outage.problem == "unreachable"
    assert "Connection refused" in outage.reason


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_mlflow_answering_5xx_is_an_outage(
    mlflow_fast: None, server: tuple[str, type[_Answer]], status: int
) -> None:
    from mlflow.tracking import MlflowClient

    url, handler = server
    handler.status = status
    outage = classify(raised(MlflowClient(url).get_experiment_by_name, "x"))
    assert outage is not None
    assert outage.where == f"MLflow at {url}"
    assert outage.problem == f"failing (HTTP {status})"


def test_mlflow_dying_mid_answer_is_an_outage(
    mlflow_fast: None, server: tuple[str, type[_Answer]]
) -> None:
    """Killed while it sent an answer: the client reads fewer bytes than promised
    ("Connection broken: IncompleteRead"), seen when MLflow was killed during a run."""
    from mlflow.tracking import MlflowClient

    url, handler = server
    handler.status, handler.body, handler.missing = 200, b'{"experiment": {', 1130
    handler.content_type = "application/json"
    exc = raised(MlflowClient(url).get_experiment_by_name, "x")
    assert "IncompleteRead" in str(exc)
    outage = classify(exc)
    assert outage is not None
    assert outage.where == f"MLflow at {url}"
    assert outage.problem == "unreachable"


@pytest.mark.parametrize(
    "status,body",
    [
        (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}),
        (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}),
        (401, {"error_code": "UNAUTHENTICATED", "message": "who are you"}),
        (403, {"error_code": "PERMISSION_DENIED", "message": "not yours"}),
        (404, None),
    ],
)
def test_mlflow_4xx_answers_are_deterministic(
    mlflow_fast: None, server: tuple[str, type[_Answer]], status: int, body: Any
) -> None:
    from mlflow.tracking import MlflowClient

    url, handler = server
    handler.status = status
    if body is not None:
        handler.body = json.dumps(body).encode()
        handler.content_type = "application/json"
    exc = raised(MlflowClient(url).get_run, "0" * 32)
    assert classify(exc) is None


def test_mlflow_failing_on_an_artifact_names_s3_when_s3_is_down(
    mlflow_fast: None,
    server: tuple[str, type[_Answer]],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow proxies artifacts to S3: with S3 gone, it answers 500 on artifacts."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    url, handler = server
    handler.status = 500
    repo = HttpArtifactRepository(f"{url}/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts")
    (tmp_path / "summary.json").write_text("{}")
    port = closed_port()
    monkeypatch.setenv("MLSYS_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    outage = classify(raised(repo.log_artifact, str(tmp_path / "summary.json")))
    assert outage is not None
    assert outage.where == f"S3 at http://127.0.0.1:{port}"
    assert outage.reason.startswith(f"Connection refused; MLflow at {url} cannot store")
    monkeypatch.setenv("MLSYS_S3_ENDPOINT_URL", url)  # S3 answers: MLflow's own failure
    outage = classify(raised(repo.log_artifact, str(tmp_path / "summary.json")))
    assert outage is not None and outage.where == f"MLflow at {url}"


def test_other_errors_are_deterministic() -> None:
    from mlflow.exceptions import MlflowException

    for exc in (
        ValueError("bad column"),
        KeyError("text"),
        RuntimeError("row count mismatch"),
        FileNotFoundError("no suite"),
        MlflowException("Invalid metric name"),
        ConnectionError("reset"),  # neither S3 nor MLflow
    ):
        assert classify(exc) is None, exc


def test_a_service_outage_that_was_waited_out_is_never_retried_again() -> None:
    port = closed_port()
    cause = raised(s3_client(f"http://127.0.0.1:{port}").get_object, Bucket="b", Key="k")
    outage = classify(cause)
    assert outage is not None
    try:
        raise ServiceOutage(outage, 120, 120) from cause
    except ServiceOutage as exc:
        assert classify(exc) is None


# ---- riding it out -----------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retry, "_clock", fake.clock)
    monkeypatch.setattr(retry, "_sleep", fake.sleep)
    return fake


class Lines(logging.Handler):
    """The lines logged to the outage logger (outside a run; inside, the run's logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("mlsys.outage")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def s3_down() -> BaseException:
    """A real "S3 unreachable" error, made once."""
    port = closed_port()
    return raised(s3_client(f"http://127.0.0.1:{port}").get_object, Bucket="b", Key="k")


def test_an_outage_is_logged_at_once_and_the_call_goes_on_when_the_service_is_back(
    fake_time: FakeTime, s3_down: BaseException, lines: Lines
) -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        if len(calls) <= 3:
            raise s3_down
        return "data"

    assert ride_out(read) == "data"
    assert len(calls) == 4
    warnings = lines.at(logging.WARNING)
    assert len(warnings) == 1  # one line at once, not one per try
    url = retry.classify(s3_down).url  # type: ignore[union-attr]
    assert warnings[0].startswith(f"S3 at {url} unreachable (EndpointConnectionError")
    assert "during read; trying again for up to 120 s (MLSYS_OUTAGE_TOLERANCE_S)" in warnings[0]
    back = lines.at(logging.INFO)
    assert back == [f"S3 at {url} is back after 7 s; read went through"]
    assert fake_time.sleeps == [1, 2, 4]


def test_a_lasting_outage_fails_after_the_tolerance_naming_service_url_and_time(
    fake_time: FakeTime,
    s3_down: BaseException,
    monkeypatch: pytest.MonkeyPatch,
    lines: Lines,
) -> None:
    monkeypatch.setenv("MLSYS_OUTAGE_TOLERANCE_S", "75")
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        raise s3_down

    with pytest.raises(ServiceOutage) as info:
        ride_out(write)
    url = retry.classify(s3_down).url  # type: ignore[union-attr]
    assert str(info.value) == (
        f"S3 at {url} unreachable for 75 s, gave up (MLSYS_OUTAGE_TOLERANCE_S=75): "
        "EndpointConnectionError: Connection refused"
    )
    assert info.value.__cause__ is s3_down
    assert sum(fake_time.sleeps) == pytest.approx(75)
    assert max(fake_time.sleeps) <= 10
    assert len(calls) == len(fake_time.sleeps) + 1
    notes = [line for line in lines.at(logging.WARNING) if "still unreachable" in line]
    assert 1 <= len(notes) <= 3  # a reminder every 30 s, not every try


def test_tolerance_zero_fails_at_the_first_outage(
    fake_time: FakeTime, s3_down: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSYS_OUTAGE_TOLERANCE_S", "0")

    def write() -> None:
        raise s3_down

    with pytest.raises(ServiceOutage, match=r"unreachable for 0 s"):
        ride_out(write)
    assert fake_time.sleeps == []


def test_deterministic_errors_are_raised_at_once(fake_time: FakeTime) -> None:
    calls: list[int] = []

    @outage_tolerant
    def label() -> None:
        calls.append(1)
        raise ValueError("the raw batch is empty")

    with pytest.raises(ValueError, match="empty"):
        label()
    assert calls == [1]
    assert fake_time.sleeps == []


def test_a_tolerant_call_inside_a_tolerant_task_does_not_wait_twice(
    fake_time: FakeTime, s3_down: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSYS_OUTAGE_TOLERANCE_S", "20")

    class Client:
        def put_object(self, **kwargs: Any) -> None:
            raise s3_down

    tasks_run: list[int] = []

    @outage_tolerant
    def task_body() -> None:
        tasks_run.append(1)
        tolerant(Client()).put_object(Bucket="b", Key="k")

    with pytest.raises(ServiceOutage):
        task_body()
    assert tasks_run == [1]
    assert sum(fake_time.sleeps) == pytest.approx(20)


def test_a_tolerant_client_retries_the_call_only(fake_time: FakeTime, mlflow_fast: None) -> None:
    from mlflow.tracking import MlflowClient

    port = closed_port()
    down = raised(MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name, "x")
    answers: list[Any] = [down, down, "experiment"]

    class Client:
        tracking_uri = "http://example"

        def get_experiment_by_name(self, name: str) -> Any:
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    client = tolerant(Client())
    assert client.tracking_uri == "http://example"
    assert client.get_experiment_by_name("x") == "experiment"
    assert fake_time.sleeps == [1, 2]


def test_the_tolerance_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert retry.outage_tolerance_s() == 120
    monkeypatch.setenv("MLSYS_OUTAGE_TOLERANCE_S", "7.5")
    assert retry.outage_tolerance_s() == 7.5


def test_prefect_tasks_keep_their_signature_and_have_no_prefect_retries() -> None:
    from tasks.ingest import read_source_task
    from tasks.train import promote_if_better
    from tasks.weak_label import load_raw_batch

    assert list(inspect.signature(load_raw_batch.fn).parameters) == ["settings", "uri"]
    for task in (read_source_task, load_raw_batch, promote_if_better):
        assert task.retries == 0
        assert task.retry_condition_fn is None
