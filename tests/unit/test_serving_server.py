"""Tests for mlsys.serving.server: `mlsys serve` as a process, over real sockets, until SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import httpx
import pytest
import torch
from mlflow import MlflowClient

from mlsys.models import HashingFeaturizer, build_text_classifier
from mlsys.models.pyfunc import log_text_classifier

KEY = "process-key"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("serve", artifact_location=(root / "art").as_uri())
    client.set_registered_model_alias("served", "champion", _register(uri, seed=0))
    return uri


class Output:
    """A process's output, collected by a thread; ``wait_for`` a pattern to appear."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(re.search(pattern, line) for line in self.lines), timeout
            )
        assert found, "".join(self.lines)[-3000:]
        return next(m for line in self.lines if (m := re.search(pattern, line)))

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def server(tracking_uri: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSYS_", "MLFLOW_"))}
    env.update(
        MLSYS_MLFLOW_TRACKING_URI=tracking_uri,
        MLSYS_SERVE_KEY=KEY,
        MLSYS_STACK_DIR=str(tmp_path / "stack"),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    argv = [str(BIN / "mlsys"), "serve", "--model", "served", "--port", "0", "--no-log"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc, Output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_over_http_and_exits_0_on_sigterm(
    server: tuple[subprocess.Popen[str], Output],
) -> None:
    proc, output = server
    ready = output.wait_for(r"ready: models:/served@champion at (http://127\.0\.0\.1:\d+)/")
    url = ready.group(1)
    assert "serving version 1" in ready.string
    auth = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(
        f"{url}/invocations",
        json={"dataframe_split": {"columns": ["text"], "data": [["check out my channel"]]}},
        headers=auth,
        timeout=30,
    )
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    assert answer.json()["predictions"][0]["label"] in ("ham", "spam")
    # A body over the limit is answered 413, not a reset connection.
    huge = httpx.post(
        f"{url}/invocations",
        content=b"x" * (2 << 20),
        headers={**auth, "Content-Type": "application/json"},
        timeout=30,
    )
    assert huge.status_code == 413
    assert httpx.get(f"{url}/ping", timeout=10).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, output.text()[-3000:]
    output.thread.join(timeout=10)
    assert "stopped: queue drained" in output.text()
    assert "Traceback" not in output.text()


# --- one send per answer -----------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


class _Loop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def run_soon(self) -> None:
        callbacks, self.soon = self.soon, []
        for callback in callbacks:
            callback()


def test_a_response_head_and_its_body_go_in_one_write() -> None:
    from mlsys.serving.protocol import CorkedTransport

    transport, loop = _Transport(), _Loop()
    corked = CorkedTransport(transport, loop)  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == []
    corked.write(b"{}")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    loop.run_soon()  # the fallback finds nothing held
    corked.write(b"more")  # not a head: straight through
    assert transport.writes[1:] == [b"more"]
    assert corked.get_extra_info("peername") == "info peername"


def test_a_head_without_a_body_goes_at_the_next_turn_or_before_a_close() -> None:
    from mlsys.serving.protocol import CorkedTransport

    transport, loop = _Transport(), _Loop()
    corked = CorkedTransport(transport, loop)  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    loop.run_soon()
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    corked.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    corked.close()
    assert transport.writes[1:] == [b"HTTP/1.1 204 No Content\r\n\r\n"] and transport.closed
    loop.run_soon()
    assert len(transport.writes) == 2
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the peer went away before the next turn
    loop.run_soon()
    assert len(transport.writes) == 2


# --- several workers ---------------------------------------------------------------------


def _register(uri: str, seed: int) -> str:
    """A new version of the test registry's model "served", its weights seeded."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("serve")
    assert experiment is not None
    run_id = client.create_run(experiment.experiment_id).info.run_id
    torch.manual_seed(seed)
    info = log_text_classifier(
        build_text_classifier(256, hidden=(4,)),
        HashingFeaturizer(n_features=256),
        run_id=run_id,
        tracking_uri=uri,
        registered_model_name="served",
        class_names=["ham", "spam"],
    )
    return str(info.registered_model_version)


def _workers(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, subprocess.Popen[str], Output]:
    """A registry with version 1 of "served" as champion, and `mlsys serve --workers 2`
    for it (polling every 600 s)."""
    root = tmp_path_factory.mktemp("workers-registry")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("serve", artifact_location=(root / "art").as_uri())
    MlflowClient(uri).set_registered_model_alias("served", "champion", _register(uri, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSYS_", "MLFLOW_"))}
    env.update(
        MLSYS_MLFLOW_TRACKING_URI=uri,
        MLSYS_SERVE_KEY=KEY,
        MLSYS_STACK_DIR=str(tmp_path / "stack"),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    argv = [str(BIN / "mlsys"), "serve", "--model", "served", "--port", "0", "--no-log",
            "--workers", "2", "--poll-s", "600"]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return uri, proc, Output(proc)


def test_workers_share_the_port_sum_their_metrics_and_all_reload(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    uri, proc, output = _workers(tmp_path, tmp_path_factory)
    client = MlflowClient(uri)
    try:
        ready = output.wait_for(r"ready: models:/served@champion at (http://127\.0\.0\.1:\d+)/")
        url = ready.group(1)
        assert "serving version 1" in ready.string and "2 workers" in ready.string
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"dataframe_split": {"columns": ["text"], "data": [["check out my channel"]]}}

        def versions(n: int) -> list[str]:
            # A new connection each: the kernel spreads them over the workers.
            answers = [
                httpx.post(f"{url}/invocations", json=body, headers=auth, timeout=30)
                for _ in range(n)
            ]
            assert all(a.status_code == 200 for a in answers)
            return [a.headers["x-model-version"] for a in answers]

        assert set(versions(40)) == {"1"}
        scrape = httpx.get(f"{url}/metrics", headers=auth, timeout=30)
        assert scrape.status_code == 200
        assert 'mlsys_serve_requests_total{code="200",path="/invocations"} 40.0' in scrape.text
        assert "mlsys_serve_workers 2.0" in scrape.text

        # A promotion, told to one worker: every worker serves version 2 at once (the
        # alias is polled every 600 s, so only the reload explains it).
        client.set_registered_model_alias("served", "champion", _register(uri, 1))
        reload = httpx.post(f"{url}/admin/reload", headers=auth, timeout=120)
        assert reload.status_code == 200, reload.text
        workers = reload.json()["workers"]
        assert [(w["worker"], w["version"], w["changed"]) for w in workers] == [
            (0, "2", True),
            (1, "2", True),
        ]
        assert set(versions(40)) == {"2"}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, output.text()[-3000:]
        output.thread.join(timeout=10)
        text = output.text()
        assert "stopped (worker 0): queue drained" in text
        assert "stopped (worker 1): queue drained" in text
        assert "stopped: 2 workers" in text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_that_dies_stops_the_server_with_status_1(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, proc, output = _workers(tmp_path, tmp_path_factory)
    try:
        output.wait_for(r"ready: models:/served@champion at .* 2 workers")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [
            int(pid)
            for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1, output.text()[-3000:]
        output.thread.join(timeout=10)
        assert "exited with status -9" in output.text()
        # The other worker was stopped, not left holding the port.
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(workers[1], 0)
                threading.Event().wait(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
