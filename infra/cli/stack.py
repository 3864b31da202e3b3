"""`mlsys stack …` and `mlsys run`: the local stack and deployment runs from the shell."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from infra.config import StackSettings

stack_app = typer.Typer(
    help="Run the local stack: SeaweedFS S3, MLflow, Prefect server and worker.",
    no_args_is_help=True,
)

StackDir = Annotated[
    Path | None,
    typer.Option(
        "--stack-dir", help="State folder of the stack (default: MLSYS_STACK_DIR or .stack)."
    ),
]


def _settings(stack_dir: Path | None) -> StackSettings:
    return StackSettings.load(**({"stack_dir": stack_dir} if stack_dir else {}))


@stack_app.command("up")
def up_cmd(
    stack_dir: StackDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each service to become healthy.")
    ] = 120,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Also run `mlsys serve` for the champion of MLSYS_SERVE_DATASET "
            "(default youtube-spam) on MLSYS_SERVE_PORT (8080). Default: MLSYS_SERVE.",
        ),
    ] = None,
    dask: Annotated[
        bool | None,
        typer.Option(
            "--dask/--no-dask",
            help="Also run a Dask scheduler and MLSYS_DASK_WORKERS workers (default: one "
            "per CPU) on MLSYS_DASK_PORT (8786), over mutual TLS, for the flows' "
            "partitioned stages (no cluster started per run). Default: MLSYS_DASK.",
        ),
    ] = None,
) -> None:
    """Start every service not yet running, wait until healthy, deploy flows, print URLs."""
    from infra.stack import StackError, up

    settings = _settings(stack_dir)
    if serve is not None:
        settings = settings.model_copy(update={"serve": serve})
    if dask is not None and dask != settings.dask:
        # Validated again, so that the flows' MLSYS_DASK_ADDRESS follows.
        own = settings.dask_address == settings.stack_dask_address
        settings = type(settings).model_validate(
            {
                **settings.model_dump(),
                "dask": dask,
                "dask_address": None if own else settings.dask_address,
            }
        )
    try:
        up(settings, timeout_s=timeout)
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc


@stack_app.command("worker")
def worker_cmd(
    name: Annotated[
        str | None,
        typer.Option(help="The worker's name in the Prefect UI (default: <pool>-<this host>)."),
    ] = None,
    stack_dir: StackDir = None,
) -> None:
    """Run a Prefect worker of the stack's work pool on this host, in the foreground: it
    takes runs from the same pool as the stack's own worker and starts them in this
    checkout. For a stack served from another host, first `source` a copy of that host's
    .stack/env (it holds the credentials: copy it privately), and start that stack with
    MLSYS_HOST set to an address this host reaches."""
    from infra.stack import StackError
    from infra.worker import run_worker

    try:
        code = run_worker(_settings(stack_dir), name=name)
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


@stack_app.command("down")
def down_cmd(stack_dir: StackDir = None) -> None:
    """Stop exactly the processes `up` started (recorded pids), and nothing else."""
    from infra.stack import down

    down(_settings(stack_dir))


@stack_app.command("status")
def status_cmd(stack_dir: StackDir = None) -> None:
    """Show each service: pid, running, healthy, URL, and any of its ports answered by a
    process that is not the recorded one. Exit 1 if any is down or its port is taken."""
    from infra.stack import status

    rows = status(_settings(stack_dir))
    ok = True
    for row in rows:
        if not row.managed:
            typer.echo(f"{row.name:<15} remote (not run by this stack)")
            continue
        state = "healthy" if row.healthy else ("running, unhealthy" if row.running else "stopped")
        ok &= row.healthy and not row.foreign
        urls = "  ".join(e.url for e in row.endpoints)
        pid = f"pid {row.pid}" if row.pid else ""
        typer.echo(f"{row.name:<15} {state:<19} {pid:<11} {urls}")
        for port in row.foreign:
            typer.secho(f"{'':<15} warning: {port}", fg="yellow")
    raise typer.Exit(0 if ok else 1)


@stack_app.command("logs")
def logs_cmd(
    service: Annotated[
        str, typer.Argument(help="seaweedfs, mlflow, prefect-server or prefect-worker.")
    ],
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    stack_dir: StackDir = None,
) -> None:
    """Print the end of a service's log."""
    from infra import process
    from infra.stack import ALL_SERVICES

    if service not in ALL_SERVICES:
        typer.secho(
            f"error: unknown service {service!r}; choose from {', '.join(ALL_SERVICES)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    path = process.log_path(_settings(stack_dir).stack_dir, service)
    typer.echo(process.tail(path, lines))
    if follow:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)


def run_cmd(
    deployment: Annotated[str, typer.Argument(help="Deployment as FLOW/NAME, e.g. ingest/ingest.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="Flow parameter KEY=VALUE (VALUE parsed as JSON when it can be)."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the run to finish and report its state.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before giving up.")] = 1800,
    stack_dir: StackDir = None,
) -> None:
    """Trigger a deployment through the Prefect API, as the UI does, and follow it."""
    from infra.runs import RunError, trigger

    try:
        outcome = trigger(
            _settings(stack_dir), deployment, param or [], wait=wait, timeout_s=timeout
        )
    except RunError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    if wait and outcome.state != "COMPLETED":
        raise typer.Exit(1)
