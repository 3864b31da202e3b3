"""Shared fixtures: a seeded RNG, the shared data folder, and a private stack per session."""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

# Isolate every test run from the user's own Prefect/MLflow/S3 settings before
# anything imports prefect or mlflow.
for _key in list(os.environ):
    if _key.startswith(("MLSYS_", "PREFECT_", "MLFLOW_", "AWS_")):
        del os.environ[_key]
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="mlsys-test-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

from infra.config import StackSettings, free_stack_ports, private_stack_settings  # noqa: E402
from mlsys.settings import Settings  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"
YOUTUBE_DIR = SHARED_DATA / "youtube-spam"
GRPC_OFFSET = 10000


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)


def closed_port() -> int:
    """A port of 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def youtube_dir() -> Path:
    if not YOUTUBE_DIR.is_dir():
        pytest.fail(f"the shared dataset is missing: {YOUTUBE_DIR}")
    return YOUTUBE_DIR


def read_youtube(source: str | os.PathLike[str]) -> pd.DataFrame:
    """``source`` read as the youtube-spam dataset defines it (datasets/youtube-spam)."""
    from mlsys.data import read_dataset
    from mlsys.data.definition import load_dataset

    return read_dataset(load_dataset("youtube-spam"), os.fspath(source))


def put_labeled_youtube(settings: Settings, comments: pd.DataFrame, name: str) -> str:
    """The comments weakly labeled as the pipeline labels them (gold split, the tutorial
    LFs, the labeler chosen on the gold dev rows), written to
    labeled/youtube-spam/<name>.parquet in the stack's bucket; its s3:// URI."""
    from mlsys.data import write_parquet_bytes
    from mlsys.data.definition import load_dataset
    from mlsys.data.s3 import put_bytes
    from mlsys.labeling import apply_lfs, build_labeled_batch, fit_labeler, gold_array
    from mlsys.labeling.split import gold_split

    youtube = load_dataset("youtube-spam")
    df = gold_split(comments, youtube.gold)
    L = apply_lfs(df, youtube.lf_set("tutorial"), n_jobs=1).matrix
    y = gold_array(df)
    train, dev = (df["split"] == "train").to_numpy(), (df["split"] == "dev").to_numpy()
    labeler = fit_labeler(L[train], L_dev=L[dev], y_dev=y[dev], cardinality=2).best
    uri = settings.s3_uri(f"labeled/youtube-spam/{name}.parquet")
    put_bytes(
        settings.s3_client(), uri, write_parquet_bytes(build_labeled_batch(df, L, labeler).frame)
    )
    return uri


def stack_settings(stack_dir: Path, **extra: object) -> StackSettings:
    """Settings of a private stack, from arguments only (never from MLSYS_* variables,
    which may point at the session's stack)."""
    return private_stack_settings(stack_dir, weed_grpc_offset=GRPC_OFFSET, **extra)


POSTGRES_ADMIN_URL = os.environ.get(
    "MLSYS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_unreachable(url: str, timeout_s: float = 3.0) -> str | None:
    """Why no PostgreSQL server can be reached at ``url`` (nothing listens on its host and
    port, the host is unknown or does not answer), or None when something accepts a
    connection there. A server that answers and then refuses the connection (a wrong
    password, an unknown role or database) is reachable: that is a failure, not a reason
    to skip. A URL without a host (libpq's default Unix socket) is not probed (None)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
    port = parts.port or 5432
    if not host:
        return None
    try:
        if host.startswith("/"):  # a folder holding the server's Unix socket
            path = os.path.join(host, f".s.PGSQL.{port}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(path)
        else:
            socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port}: {exc}"
    return None


@contextmanager
def fresh_postgres_database(
    prefix: str = "mlsys_test", admin_url: str = POSTGRES_ADMIN_URL
) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards. The test is
    skipped, with the reason, only where no server answers at ``admin_url``
    (MLSYS_TEST_DATABASE_URL); a server that refuses the connection fails it."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    unreachable = postgres_unreachable(admin_url)
    if unreachable is not None:
        pytest.skip(
            f"no PostgreSQL reachable at {admin_url} (set MLSYS_TEST_DATABASE_URL): {unreachable}"
        )
    admin = psycopg2.connect(admin_url, connect_timeout=3)
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """A private stack on free ports (SeaweedFS, MLflow, Prefect server, worker), shared
    by the session and stopped at its end."""
    from infra.stack import down, up

    # Datasets a test defines go here (searched before the project's datasets/), so
    # that the stack's worker finds them too and the checkout stays untouched.
    datasets = tmp_path_factory.mktemp("datasets")
    settings = stack_settings(tmp_path_factory.mktemp("stack"), datasets_dir=str(datasets))
    try:
        settings = up(settings, timeout_s=180, say=lambda line: None)
        # MLflow's client reads its credential from the environment.
        settings.export_mlflow_credentials()
        yield settings
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        down(settings, say=lambda line: None)


@pytest.fixture(scope="session")
def serving_stack(stack: StackSettings) -> StackSettings:
    """The session stack with its model server as a stack service (`stack up --serve`),
    on a port of its own (the stack's serve_port stays free for a test's own server), in
    two processes sharing the port (MLSYS_SERVE_WORKERS=2)."""
    from infra.stack import up

    port = free_stack_ports()["serve_port"]
    served = stack.model_copy(update={"serve": True, "serve_port": port, "serve_workers": 2})
    return up(served, timeout_s=180, say=lambda line: None)


@pytest.fixture
def stack_env(stack: StackSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackSettings]:
    """The session stack's settings for flows run in this process.

    Prefect reads its settings once, when first imported, so the API URL is also set
    through Prefect's settings context; without it a flow would start an ephemeral
    server of its own.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    from infra.prefect_api import prefect_settings

    for key, value in stack.shell_env().items():
        monkeypatch.setenv(key, value)
    with prefect_settings(stack), temporary_settings(updates={PREFECT_UI_URL: stack.ui_url}):
        yield stack
        # Send buffered flow-run logs and events while the server is still up: left for
        # the session's end, they retry against a stopped server for minutes.
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Imports a script of benchmarks/ by its file name (benchmarks/ is not a package), as
    module ``benchmarks_<stem>``, once per session: ``benchmark_script("report.py")``."""

    def load(file: str) -> ModuleType:
        name = f"benchmarks_{Path(file).stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "benchmarks" / file
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load
