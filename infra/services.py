"""The services of the local stack: how each starts, and how we know it is healthy."""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlsys.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found at {path}; run `make install` first")
    return str(path)


def base_env(settings: Settings) -> dict[str, str]:
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


@dataclass(frozen=True)
class Endpoint:
    label: str
    url: str


class Service(ABC):
    """One process of the stack."""

    name: str

    def __init__(self, settings: Settings) -> None:
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

    def endpoints(self) -> list[Endpoint]:
        return []


class SeaweedFS(Service):
    """SeaweedFS all-in-one (`weed mini`) serving S3, with keys from an identities file."""

    name = "seaweedfs"

    @property
    def s3_config(self) -> Path:
        return self.settings.stack_dir / "seaweedfs-s3.json"

    def ports(self) -> dict[str, int]:
        s, off = self.settings, self.settings.weed_grpc_offset
        http = {
            "s3": s.s3_port,
            "master": s.weed_master_port,
            "volume": s.weed_volume_port,
            "filer": s.weed_filer_port,
            "admin": s.weed_admin_port,
        }
        return {**http, **{f"{k}-grpc": v + off for k, v in http.items()}}

    def argv(self) -> list[str]:
        s = self.settings
        p = self.ports()
        data = (s.stack_dir / "seaweedfs").resolve()
        data.mkdir(parents=True, exist_ok=True)
        return [
            _bin("weed"),
            "mini",
            f"-dir={data}",
            f"-ip={s.host}",
            f"-ip.bind={s.host}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master-grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume-grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer-grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3-grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin-grpc']}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            f"-s3.config={self.s3_config.resolve()}",
        ]

    def healthy(self) -> bool:
        try:
            self.settings.s3_client().list_buckets()
            return True
        except Exception:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("S3 endpoint", f"http://{self.settings.host}:{self.settings.s3_port}")]


class MLflowServer(Service):
    """MLflow tracking server proxying artifacts to S3."""

    name = "mlflow"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.mlflow_port}

    def argv(self) -> list[str]:
        s = self.settings
        (s.stack_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        return [
            _bin("mlflow"),
            "server",
            "--host",
            s.host,
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
            "--serve-artifacts",
            "--artifacts-destination",
            s.s3_uri("mlflow-artifacts"),
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Via the environment, not argv, so a database password never shows in `ps`.
        env["MLFLOW_BACKEND_STORE_URI"] = self.settings.mlflow_backend_uri()
        # MLflow's background job runner (GenAI evaluation jobs) is unused here and
        # costs seven processes; keep the server to one worker on small machines.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return env

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.tracking_uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("MLflow UI", self.settings.tracking_uri)]


class PrefectServer(Service):
    """Prefect API server and UI."""

    name = "prefect-server"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.prefect_port}

    def argv(self) -> list[str]:
        s = self.settings
        (s.stack_dir / "prefect").mkdir(parents=True, exist_ok=True)
        return [
            _bin("prefect"),
            "server",
            "start",
            "--host",
            s.host,
            "--port",
            str(s.prefect_port),
            "--analytics-off",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.settings.prefect_database_uri()
        env["PREFECT_UI_API_URL"] = self.settings.api_url
        env["PREFECT_SERVER_API_HOST"] = self.settings.host
        env["PREFECT_SERVER_API_PORT"] = str(self.settings.prefect_port)
        return env

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("Prefect UI", self.settings.ui_url)]


class PrefectWorker(Service):
    """A process worker on the stack's work pool; flow runs inherit its environment."""

    name = "prefect-worker"

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
            f"{self.settings.work_pool}-worker",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Poll every 2 s (default 10 s) so a triggered run starts promptly.
        env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
        return env

    def healthy(self) -> bool:
        url = f"{self.settings.api_url}/work_pools/{self.settings.work_pool}/workers/filter"
        try:
            response = httpx.post(url, json={}, timeout=2)
            if response.status_code != 200:
                return False
            return any(w.get("status") == "ONLINE" for w in response.json())
        except httpx.HTTPError:
            return False

    def endpoints(self) -> list[Endpoint]:
        pool = self.settings.work_pool
        return [Endpoint("Work pool", f"{self.settings.ui_url}/work-pools/work-pool/{pool}")]
