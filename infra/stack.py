"""Bring the local stack up and down: SeaweedFS S3, MLflow, Prefect server, pool, worker."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2
from psycopg2 import sql

from infra import process
from infra.config import StackSettings, redact_url
from infra.dask_cluster import DaskScheduler, DaskWorkers
from infra.forms import offer_dataset_choices
from infra.seaweed import SeaweedFS
from infra.services import (
    PROJECT_DIR,
    Endpoint,
    MLflowServer,
    ModelServer,
    PrefectServer,
    PrefectWorker,
    Service,
    _bin,
    base_env,
    write_private,
)
from mlsys.settings import CREDENTIALS_FILE

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
    foreign: list[str] = field(default_factory=list)


def services(settings: StackSettings) -> list[Service]:
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
    if settings.dask:
        chosen += [DaskScheduler(settings), DaskWorkers(settings)]
    chosen.append(PrefectWorker(settings))
    if settings.serve and settings.serve_url is None:
        chosen.append(ModelServer(settings))
    return chosen


# Every service a stack may run, in start order (`down` stops them in reverse).
ALL_SERVICES = ("seaweedfs", "mlflow", "prefect-server", "dask-scheduler", "dask-workers",
                "prefect-worker", "serve")  # fmt: skip


# ---- credentials -----------------------------------------------------------------
def ensure_credentials(settings: StackSettings) -> StackSettings:
    """Generate the credentials of every service this stack runs, on first start.

    Kept in ``<stack_dir>/credentials.json`` (mode 0600, in a 0700 folder); a credential
    missing from the file (a stack from an older version) is added, the others are
    kept, so a restart never locks the stack out of its own data.
    """
    stack = ensure_stack_dir(settings.stack_dir)
    creds_path = stack / CREDENTIALS_FILE
    data: dict[str, str] = json.loads(creds_path.read_text()) if creds_path.is_file() else {}
    wanted: dict[str, Callable[[], str]] = {}
    if settings.s3_endpoint_url is None:
        wanted["access_key"] = lambda: "MLSYS" + secrets.token_hex(8).upper()
        wanted["secret_key"] = lambda: secrets.token_urlsafe(30)
    if settings.prefect_api_url is None:
        wanted["prefect_auth_string"] = lambda: "mlsys:" + secrets.token_urlsafe(24)
    if settings.mlflow_tracking_uri is None:
        wanted["mlflow_username"] = lambda: "mlsys-admin"
        wanted["mlflow_password"] = lambda: secrets.token_urlsafe(24)
        # Flask's session and CSRF signing key, the same across restarts.
        wanted["mlflow_flask_secret"] = lambda: secrets.token_urlsafe(32)
    if settings.serve_url is None:
        wanted["serve_key"] = lambda: secrets.token_urlsafe(32)
    missing = {key: make() for key, make in wanted.items() if not data.get(key)}
    if missing or not creds_path.is_file():
        write_private(creds_path, json.dumps({**data, **missing}, indent=2))
    return settings.with_stack_credentials()


def ensure_stack_dir(stack_dir: Path) -> Path:
    """The stack folder, created or narrowed to mode 0700, and everything in it to its
    owner only: its databases, logs, keys and SeaweedFS volumes are nobody else's to read
    (a stack made by an older version is narrowed on its next `up`)."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack_dir, 0o700)
    for root, dirs, files in os.walk(stack_dir):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & 0o700)
    return stack_dir


# ---- up --------------------------------------------------------------------------
def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def wait_for(check: Callable[[], bool], timeout_s: float, alive: Callable[[], bool]) -> bool:
    """Whether ``check`` holds within ``timeout_s`` (polled every 0.5 s); False at once
    when ``alive`` stops holding."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(0.5)
    return check()


def _prepare_database(settings: StackSettings) -> None:
    """Create MLflow's schemas in PostgreSQL, its tracking store's and its users' (Prefect
    migrates its own tables)."""
    if settings.database_url is None:
        return
    url = settings.database_url.get_secret_value()
    try:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            for schema in ("mlflow", "mlflow_auth"):
                cur.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
    except psycopg2.Error as exc:
        raise StackError(f"cannot prepare PostgreSQL at {redact_url(url)}: {exc}") from exc


def start_service(service: Service, timeout_s: float, say: Say) -> None:
    stack = service.settings.stack_dir
    record = process.read_record(stack, service.name)
    if record is not None and record.alive():
        if wait_for(service.healthy, timeout_s, record.alive):
            say(f"  {service.name:<15} already running (pid {record.pid})")
            return
        raise StackError(
            f"{service.name} (pid {record.pid}) is running but not healthy; "
            f"see `mlsys stack logs {service.name}` or run `mlsys stack down`"
        )
    stop_leftovers(service.settings, service.name, record, say)
    busy = {
        role: p for role, p in service.ports().items() if not _port_free(service.settings.host, p)
    }
    if busy:
        ports = ", ".join(
            f"{p} ({role}{port_holder(service.settings.host, p)})" for role, p in busy.items()
        )
        raise StackError(
            f"cannot start {service.name}: port(s) {ports} on {service.settings.host} are in use "
            "by another process; choose others with MLSYS_*_PORT settings"
        )
    service.prepare()
    started = time.monotonic()
    record = process.spawn(stack, service.name, service.argv(), service.env(), cwd=PROJECT_DIR)
    if not wait_for(service.healthy, timeout_s, record.alive):
        log = process.tail(process.log_path(stack, service.name), 30)
        state = "exited" if not record.alive() else f"not healthy after {timeout_s:.0f} s"
        process.stop(record)
        process.forget(stack, service.name)
        raise StackError(f"{service.name} {state}; last lines of its log:\n{log}")
    say(f"  {service.name:<15} started (pid {record.pid}) in {time.monotonic() - started:.1f} s")


def stop_leftovers(
    settings: StackSettings, name: str, record: process.ProcessRecord | None, say: Say
) -> None:
    """Stop what a crashed run of service ``name`` left: the rest of its recorded process
    group (a server's workers outlive a leader killed with SIGKILL) and any process
    started for this stack folder as that service. Other users' processes, and processes
    of other stacks, are never touched."""
    found = False
    if record is not None:
        found |= process.stop(record)
    leftovers = process.leftovers(settings.stack_dir, name)
    if leftovers:
        found |= process.terminate(leftovers)
    if found:
        say(f"  {name:<15} stopped what a crashed run left behind")


def port_holder(host: str, port: int) -> str:
    """`` held by pid N (command)`` for a listening port, or '' where it can't be seen."""
    proc = process.listener(host, port)
    if proc is None:
        return ""
    try:
        command = " ".join(proc.cmdline()[:3])
    except Exception:
        command = "?"
    return f", held by pid {proc.pid}: {command}"


def ensure_bucket(settings: StackSettings) -> None:
    client = settings.s3_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        client.create_bucket(Bucket=settings.bucket)


def _prefect(settings: StackSettings, *args: str, timeout_s: float = 300) -> None:
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


def ensure_work_pool(settings: StackSettings, say: Say = print) -> None:
    """The stack's process pool, with its concurrency limit: runs beyond it wait in the
    queue (Late, then picked up) instead of starving each other of the machine's cores.

    A Prefect server that has just started may answer 503 while its database is busy:
    each call is tried again through that for up to a minute."""
    from infra.runs import PatientApi

    url = f"{settings.api_url}/work_pools/{settings.work_pool}"
    headers = settings.prefect_headers()
    patient = PatientApi(settings.api_url, say)

    def answered(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 500:
            response.raise_for_status()  # transient: tried again
        return response

    found = patient.call(
        "read the work pool",
        lambda: answered(httpx.get(url, headers=headers, timeout=30)),
        patience_s=60,
    )
    if found.status_code != 200:
        _prefect(settings, "work-pool", "create", settings.work_pool, "--type", "process")
    response = patient.call(
        "set the work pool's concurrency limit",
        lambda: answered(
            httpx.patch(
                url,
                json={"concurrency_limit": settings.pool_concurrency},
                headers=headers,
                timeout=30,
            )
        ),
        patience_s=60,
    )
    if response.status_code >= 400:
        raise StackError(
            f"cannot set work pool {settings.work_pool!r}'s concurrency limit to "
            f"{settings.pool_concurrency}: {response.status_code} {response.text[:300]}"
        )


UNRESPONSIVE_AUTOMATION = "mlsys: crash unresponsive runs"
"""Name of the automation `up` keeps on the Prefect server (one per server)."""


def ensure_unresponsive_runs_crash(settings: StackSettings) -> None:
    """Prefect's zombie detection: an automation that marks CRASHED a flow run whose
    heartbeats stop for ``unresponsive_after_s`` without it reaching a final state.

    It covers what `up`'s :func:`mark_crashed_runs` needs someone to run `up` for: the
    run's process and its worker gone together (the machine's OOM killer, a host lost),
    with the Prefect server still up. Flow runs send heartbeats because the worker's
    environment sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY. Replaced on every `up`, so a
    changed setting takes effect.
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from infra.prefect_api import prefect_client

    after = timedelta(seconds=settings.unresponsive_after_s)
    automation = AutomationCore(
        name=UNRESPONSIVE_AUTOMATION,
        description=(
            "Marks CRASHED a flow run that sent no heartbeat for "
            f"{settings.unresponsive_after_s:g} s and did not end (its process is gone)."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=after,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {settings.unresponsive_after_s:g} s: the run's process "
                    "stopped without reporting (killed, or its host lost)"
                ),
            )
        ],
    )
    with prefect_client(settings) as client:
        for old in client.read_automations_by_name(UNRESPONSIVE_AUTOMATION):
            client.delete_automation(old.id)
        client.create_automation(automation)


def deploy(settings: StackSettings) -> None:
    """Register every deployment of prefect.yaml (idempotent: updates in place)."""
    _prefect(settings, "--no-prompt", "deploy", "--all")


def write_env_file(settings: StackSettings) -> Path:
    path = settings.stack_dir / "env"
    lines = [f"export {k}={_shell_quote(v)}" for k, v in sorted(settings.shell_env().items())]
    write_private(
        path, "# source this file to use the mlsys stack from a shell\n" + "\n".join(lines) + "\n"
    )
    return path


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def up(settings: StackSettings, *, timeout_s: float = 120, say: Say = print) -> StackSettings:
    """Start whatever is not running yet, wait until healthy, deploy; idempotent.

    Files it and the services write are their owner's only (umask 077).
    """
    previous = os.umask(0o077)
    try:
        return _up(settings, timeout_s=timeout_s, say=say)
    finally:
        os.umask(previous)


def _up(settings: StackSettings, *, timeout_s: float, say: Say) -> StackSettings:
    settings = ensure_credentials(settings)
    _prepare_database(settings)
    say(f"mlsys stack in {settings.stack_dir.resolve()}")
    for service in services(settings):
        if isinstance(service, PrefectWorker):
            ensure_work_pool(settings, say)
            ensure_unresponsive_runs_crash(settings)
            say("  deployments     prefect deploy --all")
            deploy(settings)
            offer_dataset_choices(settings, say)
        start_service(service, timeout_s, say)
        if isinstance(service, SeaweedFS):
            ensure_bucket(settings)
        if isinstance(service, PrefectWorker):
            crashed = mark_crashed_runs(settings)
            if crashed:
                say(f"  crashed runs    {len(crashed)} left running by a stopped process: CRASHED")
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
def down(settings: StackSettings, *, say: Say = print) -> list[str]:
    """Stop the processes this stack started (their process groups, and any process
    started for this stack folder that outlived its record), worker first."""
    stopped: list[str] = []
    for name in reversed(ALL_SERVICES):
        record = process.read_record(settings.stack_dir, name)
        ran = record is not None and process.stop(record)
        leftovers = process.leftovers(settings.stack_dir, name)
        ran |= bool(leftovers) and process.terminate(leftovers)
        if ran:
            stopped.append(name)
            say(f"  {name:<15} stopped" + (f" (pid {record.pid})" if record else ""))
        process.forget(settings.stack_dir, name)
    if not stopped:
        say("  nothing was running")
    return stopped


def status(settings: StackSettings) -> list[ServiceStatus]:
    settings = settings.with_stack_credentials()
    result = []
    local = {s.name: s for s in services(settings)}
    for name in ALL_SERVICES:
        record = process.read_record(settings.stack_dir, name)
        running = record is not None and record.alive()
        service = local.get(name)
        if name in (DaskScheduler.name, DaskWorkers.name) and service is None:
            if record is None:
                continue  # the stack runs no Dask cluster (`up --dask` starts one)
            service = {s.name: s for s in (DaskScheduler(settings), DaskWorkers(settings))}[name]
        if name == ModelServer.name and service is None:
            if record is None and settings.serve_url is None:
                continue  # the stack runs no model server (`up --serve` starts one)
            if settings.serve_url is None:
                service = ModelServer(_as_started(settings, record))
        result.append(
            ServiceStatus(
                name=name,
                pid=record.pid if record and running else None,
                running=running,
                healthy=bool(service and running and service.healthy()),
                managed=service is not None,
                endpoints=service.endpoints() if service else [],
                foreign=_foreign_ports(service, record) if service else [],
            )
        )
    return result


def _as_started(settings: StackSettings, record: process.ProcessRecord | None) -> StackSettings:
    """``settings`` with the port a running model server listens on: `up --serve` may
    have started it with another MLSYS_SERVE_PORT than the one asking now."""
    if record is None or not record.alive():
        return settings
    for pid in process.family_pids(record):
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    return settings.model_copy(update={"serve_port": conn.laddr.port})
    return settings


def _foreign_ports(service: Service, record: process.ProcessRecord | None) -> list[str]:
    """Ports of ``service`` answered by a process that is not the recorded one (or one it
    started): e.g. a server's worker left behind by a killed leader, or another program."""
    alive = record is not None and record.alive()
    ours = process.family_pids(record) if alive and record is not None else set()
    stack = service.settings.stack_dir
    left = {p.pid for p in process.leftovers(stack, service.name)}
    if record is not None and not alive:
        left |= process.family_pids(record)
    found = []
    for role, port in service.ports().items():
        holder = process.listener(service.settings.host, port)
        where = f"port {port} ({role}{port_holder(service.settings.host, port)})"
        if holder is not None and holder.pid in left:
            found.append(f"{where}, left behind by a stopped {service.name}")
        elif holder is not None and holder.pid not in ours:
            found.append(f"{where}, not the recorded process")
        elif holder is None and not alive and not _port_free(service.settings.host, port):
            found.append(f"port {port} ({role}) is held by a process this user cannot see")
    return found


# ---- runs left behind -------------------------------------------------------------
def mark_crashed_runs(settings: StackSettings) -> list[str]:
    """Mark CRASHED the flow runs a stopped process left RUNNING; their names.

    A run the worker started records its process id (``infrastructure_pid``); if no
    process of this stack has it any more, the run and its running subflows are marked
    CRASHED, the parent's message naming the stages that were running. A subflow left
    RUNNING under a parent already in a final state (the server went away while the
    parent ended) is marked CRASHED too.
    """
    from infra.prefect_api import prefect_client

    folder = str(settings.stack_dir.resolve())
    crashed: list[Any] = []
    with prefect_client(settings) as client:
        for run in _running_runs(client):
            if any(done.id == run.id for done in crashed):
                continue  # a subflow of a run crashed above
            if run.parent_task_run_id is None:
                if not _run_process_alive(run.infrastructure_pid, folder):
                    _crash(client, run, "its process stopped", crashed, "; see the worker's log")
                continue
            parent = client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)
            if parent.state is not None and parent.state.is_final():
                _crash(client, run, f"its parent run {parent.name} ended while it ran", crashed)
    _close_mlflow_runs(settings, [str(run.id) for run in crashed])
    return [run.name for run in crashed]


def _running_runs(client: Any, parent_id: Any = None) -> list[Any]:
    """Flow runs in state RUNNING (only the subflows of ``parent_id``, if given)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    parent = None if parent_id is None else FlowRunFilterParentFlowRunId(any_=[parent_id])
    flow_filter = FlowRunFilter(state=running, parent_flow_run_id=parent)
    return list(client.read_flow_runs(flow_run_filter=flow_filter, limit=200))


def _crash(client: Any, run: Any, why: str, crashed: list[Any], note: str = "") -> None:
    """Mark ``run`` CRASHED, its running subflows first (to any depth), saying ``why``,
    the stages that were running (by flow name: ``train (run wise-fox)``), and ``note``."""
    from prefect.states import Crashed

    stages = _running_runs(client, run.id)
    for stage in stages:
        _crash(client, stage, "its process stopped while it ran", crashed)
    names = sorted(f"{client.read_flow(s.flow_id).name} (run {s.name})" for s in stages)
    during = f" during stage(s) {', '.join(names)}" if stages else ""
    client.set_flow_run_state(run.id, Crashed(message=f"{why}{during}{note}"), force=True)
    crashed.append(run)


def _close_mlflow_runs(settings: StackSettings, flow_run_ids: list[str]) -> None:
    """Mark KILLED the MLflow runs of crashed flow runs (tag ``prefect.flow_run_id``) still
    RUNNING: the process that would have ended them is gone. Best effort: where MLflow
    cannot be reached they stay as they are, and `up` goes on."""
    if not flow_run_ids:
        return
    from mlflow.tracking import MlflowClient

    try:
        with settings.mlflow_credentials():
            client = MlflowClient(tracking_uri=settings.tracking_uri)
            experiment = client.get_experiment_by_name(settings.mlflow_experiment)
            if experiment is None:
                return
            for flow_run_id in flow_run_ids:
                for mlflow_run in client.search_runs(
                    [experiment.experiment_id],
                    f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
                    "AND attributes.status = 'RUNNING'",
                ):
                    client.set_terminated(mlflow_run.info.run_id, status="KILLED")
    except Exception:  # Prefect's state is the record; this only tidies MLflow's view
        return


def _run_process_alive(infrastructure_pid: str | None, stack_folder: str) -> bool:
    """Whether the process a worker recorded for a run still runs for this stack."""
    if not infrastructure_pid:
        return True  # not started by a worker (a flow called in a Python session)
    try:
        pid = int(str(infrastructure_pid).rsplit(":", 1)[-1])
        proc = psutil.Process(pid)
        return proc.environ().get(process.STACK_DIR_ENV) == stack_folder
    except (ValueError, psutil.Error, OSError):
        return False
