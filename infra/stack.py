"""Bring the local stack up and down: SeaweedFS S3, MLflow, Prefect server, pool, worker."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg2
from psycopg2 import sql

from infra import process
from infra.forms import offer_dataset_choices
from infra.services import (
    PROJECT_DIR,
    Endpoint,
    MLflowServer,
    PrefectServer,
    PrefectWorker,
    SeaweedFS,
    Service,
    _bin,
    base_env,
)
from mlsys.settings import CREDENTIALS_FILE, Settings, redact_url

Say = Callable[[str], None]


class StackError(RuntimeError):
    """A service could not be started; the message says which and why."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    managed: bool
    endpoints: list[Endpoint]


def services(settings: Settings) -> list[Service]:
    """The services this stack runs locally, in start order.

    A service pointed elsewhere by settings (a remote S3, MLflow or Prefect) is not
    started here; the worker always runs locally.
    """
    chosen: list[Service] = []
    if settings.s3_endpoint_url is None:
        chosen.append(SeaweedFS(settings))
    if settings.mlflow_tracking_uri is None:
        chosen.append(MLflowServer(settings))
    if settings.prefect_api_url is None:
        chosen.append(PrefectServer(settings))
    chosen.append(PrefectWorker(settings))
    return chosen


ALL_SERVICES = ("seaweedfs", "mlflow", "prefect-server", "prefect-worker")


# ---- credentials -----------------------------------------------------------------
def ensure_credentials(settings: Settings) -> Settings:
    """Generate S3 keys on first start (mode 0600) unless the environment gives them."""
    stack = settings.stack_dir
    stack.mkdir(parents=True, exist_ok=True)
    creds_path = stack / CREDENTIALS_FILE
    if settings.s3_endpoint_url is None and not creds_path.exists():
        data = {
            "access_key": "MLSYS" + secrets.token_hex(8).upper(),
            "secret_key": secrets.token_urlsafe(30),
        }
        _write_private(creds_path, json.dumps(data))
    settings = settings.with_stack_credentials()
    if settings.s3_endpoint_url is None:
        assert settings.s3_access_key is not None and settings.s3_secret_key is not None
        identities = {
            "identities": [
                {
                    "name": "mlsys",
                    "credentials": [
                        {
                            "accessKey": settings.s3_access_key.get_secret_value(),
                            "secretKey": settings.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _write_private(stack / "seaweedfs-s3.json", json.dumps(identities, indent=2))
    return settings


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


# ---- up --------------------------------------------------------------------------
def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def _wait(check: Callable[[], bool], timeout_s: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(0.5)
    return check()


def _prepare_database(settings: Settings) -> None:
    """Create MLflow's schema in PostgreSQL (Prefect migrates its own tables)."""
    if settings.database_url is None:
        return
    url = settings.database_url.get_secret_value()
    try:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier("mlflow")))
    except psycopg2.Error as exc:
        raise StackError(f"cannot prepare PostgreSQL at {redact_url(url)}: {exc}") from exc


def start_service(service: Service, timeout_s: float, say: Say) -> None:
    stack = service.settings.stack_dir
    record = process.read_record(stack, service.name)
    if record is not None and record.alive():
        if _wait(service.healthy, timeout_s, record.alive):
            say(f"  {service.name:<15} already running (pid {record.pid})")
            return
        raise StackError(
            f"{service.name} (pid {record.pid}) is running but not healthy; "
            f"see `mlsys stack logs {service.name}` or run `mlsys stack down`"
        )
    busy = {
        role: p for role, p in service.ports().items() if not _port_free(service.settings.host, p)
    }
    if busy:
        ports = ", ".join(f"{p} ({role})" for role, p in busy.items())
        raise StackError(
            f"cannot start {service.name}: port(s) {ports} on {service.settings.host} are in use "
            "by another process; choose others with MLSYS_*_PORT settings"
        )
    started = time.monotonic()
    record = process.spawn(stack, service.name, service.argv(), service.env(), cwd=PROJECT_DIR)
    if not _wait(service.healthy, timeout_s, record.alive):
        log = process.tail(process.log_path(stack, service.name), 30)
        state = "exited" if not record.alive() else f"not healthy after {timeout_s:.0f} s"
        process.stop(record)
        process.forget(stack, service.name)
        raise StackError(f"{service.name} {state}; last lines of its log:\n{log}")
    say(f"  {service.name:<15} started (pid {record.pid}) in {time.monotonic() - started:.1f} s")


def ensure_bucket(settings: Settings) -> None:
    client = settings.s3_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        client.create_bucket(Bucket=settings.bucket)


def _prefect(settings: Settings, *args: str, timeout_s: float = 300) -> None:
    result = subprocess.run(
        [_bin("prefect"), *args],
        env=base_env(settings),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        raise StackError(
            f"`prefect {' '.join(args)}` failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def ensure_work_pool(settings: Settings) -> None:
    url = f"{settings.api_url}/work_pools/{settings.work_pool}"
    if httpx.get(url, timeout=10).status_code == 200:
        return
    _prefect(settings, "work-pool", "create", settings.work_pool, "--type", "process")


def deploy(settings: Settings) -> None:
    """Register every deployment of prefect.yaml (idempotent: updates in place)."""
    _prefect(settings, "--no-prompt", "deploy", "--all")


def write_env_file(settings: Settings) -> Path:
    path = settings.stack_dir / "env"
    lines = [f"export {k}={_shell_quote(v)}" for k, v in sorted(settings.shell_env().items())]
    _write_private(
        path, "# source this file to use the mlsys stack from a shell\n" + "\n".join(lines) + "\n"
    )
    return path


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def up(settings: Settings, *, timeout_s: float = 120, say: Say = print) -> Settings:
    """Start whatever is not running yet, wait until healthy, deploy; idempotent."""
    settings = ensure_credentials(settings)
    _prepare_database(settings)
    say(f"mlsys stack in {settings.stack_dir.resolve()}")
    for service in services(settings):
        if isinstance(service, PrefectWorker):
            ensure_work_pool(settings)
            say("  deployments     prefect deploy --all")
            deploy(settings)
            offer_dataset_choices(settings, say)
        start_service(service, timeout_s, say)
        if isinstance(service, SeaweedFS):
            ensure_bucket(settings)
    if settings.s3_endpoint_url is not None:
        ensure_bucket(settings)
    env_path = write_env_file(settings)
    say("")
    for service in services(settings):
        for endpoint in service.endpoints():
            say(f"  {endpoint.label:<12} {endpoint.url}")
    say(f"\n  shell settings: source {env_path}")
    return settings


# ---- down, status, logs -----------------------------------------------------------
def down(settings: Settings, *, say: Say = print) -> list[str]:
    """Stop the processes this stack started (by recorded pid), worker first."""
    stopped: list[str] = []
    for name in reversed(ALL_SERVICES):
        record = process.read_record(settings.stack_dir, name)
        if record is None:
            continue
        if process.stop(record):
            stopped.append(name)
            say(f"  {name:<15} stopped (pid {record.pid})")
        process.forget(settings.stack_dir, name)
    if not stopped:
        say("  nothing was running")
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    settings = settings.with_stack_credentials()
    result = []
    local = {s.name: s for s in services(settings)}
    for name in ALL_SERVICES:
        record = process.read_record(settings.stack_dir, name)
        running = record is not None and record.alive()
        service = local.get(name)
        result.append(
            ServiceStatus(
                name=name,
                pid=record.pid if record and running else None,
                running=running,
                healthy=bool(service and running and service.healthy()),
                managed=service is not None,
                endpoints=service.endpoints() if service else [],
            )
        )
    return result
