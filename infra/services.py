"""The services of the local stack: how each starts, and how we know it is healthy."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from infra.config import StackSettings
from mlsys.atomic import write_text_atomic
from mlsys.settings import CREDENTIALS_FILE

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found at {path}; run `make install` first")
    return str(path)


def base_env(settings: StackSettings) -> dict[str, str]:
    """The caller's environment with the stack's settings on top.

    Settings of another Prefect or MLflow (from the user's shell) are dropped so a
    private stack, e.g. the tests', can never talk to the user's own servers.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLSYS_", "PREFECT_", "MLFLOW_", "AWS_"))
    }
    env.update(settings.shell_env())
    env["PREFECT_HOME"] = str((settings.stack_dir / "prefect").resolve())
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_CLI_PROMPT"] = "false"
    env["MLSYS_PROJECT_DIR"] = str(PROJECT_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), from its first byte,
    atomically: a crash mid-write never leaves half a credentials file."""
    write_text_atomic(path, text, permissions=0o600)


def stack_secret(settings: StackSettings, key: str) -> str:
    """A secret `stack up` generated into ``<stack_dir>/credentials.json``."""
    path = settings.stack_dir / CREDENTIALS_FILE
    value = json.loads(path.read_text()).get(key) if path.is_file() else None
    if not value:
        raise FileNotFoundError(f"{path} holds no {key!r}; run `mlsys stack up`")
    return str(value)


@dataclass(frozen=True)
class Endpoint:
    label: str
    url: str


class Service(ABC):
    """One process of the stack."""

    name: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @abstractmethod
    def argv(self) -> list[str]: ...

    def env(self) -> dict[str, str]:
        return base_env(self.settings)

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Ports this service listens on, by role (checked free before start)."""

    @abstractmethod
    def healthy(self) -> bool: ...

    def prepare(self) -> None:  # noqa: B027 - optional hook, most services need nothing
        """Write what the service needs before it starts (configuration, keys); idempotent."""

    def endpoints(self) -> list[Endpoint]:
        return []


class MLflowServer(Service):
    """MLflow tracking server proxying artifacts to S3, behind MLflow's basic-auth app.

    Every request but ``/health`` needs the generated admin's credential; users added
    later start with no permission at all. Host headers other than the server's own
    address are refused (DNS rebinding) and CORS admits only the UI's own origin.
    """

    name = "mlflow"

    @property
    def auth_config(self) -> Path:
        return self.settings.stack_dir / "mlflow" / "basic_auth.ini"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.mlflow_port}

    def prepare(self) -> None:
        s = self.settings
        folder = s.stack_dir / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        if s.database_url is None:
            _sqlite_wal(folder / "mlflow.db")
            _sqlite_wal(folder / "basic_auth.db")
        write_private(
            self.auth_config,
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            # ConfigParser reads '%' as interpolation: URL escapes are doubled.
            f"database_uri = {s.mlflow_auth_db_uri().replace('%', '%%')}\n"
            f"admin_username = {s.mlflow_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
            # A password check is a PBKDF2 hash; remember a good one for a while so that
            # a busy run does not pay it on every request.
            "auth_cache_ttl_seconds = 300\n",
        )

    def argv(self) -> list[str]:
        s = self.settings
        origin = f"{s.host}:{s.mlflow_port}"
        return [
            _bin("mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            s.host,
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
            "--serve-artifacts",
            "--artifacts-destination",
            s.s3_uri("mlflow-artifacts"),
            "--allowed-hosts",
            f"{origin},{s.host},localhost:{s.mlflow_port},localhost",
            "--cors-allowed-origins",
            f"http://{origin}",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Via the environment, not argv, so a password never shows in `ps`.
        env["MLFLOW_BACKEND_STORE_URI"] = self.settings.mlflow_backend_uri()
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config.resolve())
        if self.settings.mlflow_password is not None:
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.settings.mlflow_password.get_secret_value()
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = stack_secret(self.settings, "mlflow_flask_secret")
        # MLflow's background job runner (GenAI evaluation jobs) is unused here and
        # costs seven processes; keep the server to one worker on small machines.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # Artifact calls fail fast when S3 is down (the client's task retries them for
        # the outage tolerance) instead of hanging in boto3's own retries.
        env["AWS_MAX_ATTEMPTS"] = "2"
        env["AWS_RETRY_MODE"] = "standard"
        return env

    def healthy(self) -> bool:
        # /health answers without credentials; the listing proves the credential works.
        try:
            url = f"{self.settings.tracking_uri}/api/2.0/mlflow/experiments/search"
            response = httpx.get(
                url, params={"max_results": 1}, auth=self.settings.mlflow_auth(), timeout=5
            )
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("MLflow UI", self.settings.tracking_uri)]


class PrefectServer(Service):
    """Prefect API server and UI (infra/prefect_server.py), with the API's basic auth,
    CORS for the UI's own origin only, and foreign Host headers refused."""

    name = "prefect-server"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.prefect_port}

    def argv(self) -> list[str]:
        s = self.settings
        (s.stack_dir / "prefect").mkdir(parents=True, exist_ok=True)
        return [
            sys.executable,
            "-m",
            "infra.prefect_server",
            "--host",
            s.host,
            "--port",
            str(s.prefect_port),
        ]

    def env(self) -> dict[str, str]:
        s = self.settings
        env = super().env()
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = s.prefect_database_uri()
        # SQLite under load: wait for a lock rather than fail a request.
        env["PREFECT_SERVER_DATABASE_TIMEOUT"] = "60"
        env["PREFECT_UI_API_URL"] = s.api_url
        env["PREFECT_SERVER_API_HOST"] = s.host
        env["PREFECT_SERVER_API_PORT"] = str(s.prefect_port)
        env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] = _origin(s.ui_url)
        if s.prefect_auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = s.prefect_auth_string.get_secret_value()
        return env

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("Prefect UI", self.settings.ui_url)]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _sqlite_wal(path: Path) -> None:
    """Put a SQLite database (created if missing) in write-ahead-log mode, which readers
    and one writer share without "database is locked"; the mode stays with the file."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


class PrefectWorker(Service):
    """A process worker on the stack's work pool; flow runs inherit its environment.

    ``worker_name`` names it in the Prefect UI (default ``<pool>-worker``, the stack's own);
    a worker on another host (`mlsys stack worker`) gives its host's name.
    """

    name = "prefect-worker"

    def __init__(self, settings: StackSettings, worker_name: str | None = None) -> None:
        super().__init__(settings)
        self.worker_name = worker_name or f"{settings.work_pool}-worker"

    def ports(self) -> dict[str, int]:
        return {}

    def argv(self) -> list[str]:
        return [
            _bin("prefect"),
            "worker",
            "start",
            "--pool",
            self.settings.work_pool,
            "--type",
            "process",
            "--name",
            self.worker_name,
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Poll every 2 s (default 10 s) so a triggered run starts promptly.
        env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
        # Flow runs send a heartbeat event every 30 s (Prefect's shortest), which the
        # stack's automation watches (infra/stack.py, ensure_unresponsive_runs_crash).
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
        return env

    def healthy(self) -> bool:
        """Whether this worker (by name) is ONLINE in the pool."""
        url = f"{self.settings.api_url}/work_pools/{self.settings.work_pool}/workers/filter"
        try:
            response = httpx.post(url, json={}, headers=self.settings.prefect_headers(), timeout=2)
            if response.status_code != 200:
                return False
            return any(
                w.get("status") == "ONLINE" and w.get("name") == self.worker_name
                for w in response.json()
            )
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        pool = self.settings.work_pool
        return [Endpoint("Work pool", f"{self.settings.ui_url}/work-pools/work-pool/{pool}")]


HEARTBEAT_S = 30
"""Seconds between a flow run's heartbeat events (Prefect allows no less than 30)."""


class ModelServer(Service):
    """`mlsys serve`: the champion of ``serve_dataset`` over HTTP (mlsys/serving), with
    the stack's generated API key; it answers /ping before a champion exists and loads
    one when the alias appears (it polls the registry, and flows call /admin/reload)."""

    name = "serve"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.serve_port}

    def argv(self) -> list[str]:
        s = self.settings
        return [
            _bin("mlsys"),
            "serve",
            "--dataset",
            s.serve_dataset,
            "--host",
            s.host,
            "--port",
            str(s.serve_port),
            "--workers",
            str(s.serve_workers),
        ]

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.serving_url}/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("Serving", f"{self.settings.serving_url}/invocations")]
