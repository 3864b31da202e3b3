"""`mlsys serve`: a dataset's registered model over HTTP, in the foreground until interrupted.

Exit status: 0 after SIGINT or SIGTERM (the queue drained, the prediction log flushed);
1 when one of several workers exited on its own (the others stopped); 2 when an option,
the dataset or the API key is wrong (one line saying which).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mlsys.serving.config import ServeConfig
    from mlsys.serving.predlog import PredictionLog

KEY_HINT = (
    "set MLSYS_SERVE_KEY to the key clients send as 'Authorization: Bearer <key>', e.g. "
    "export MLSYS_SERVE_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') "
    "(`mlsys stack up` generates one into .stack/env)"
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


def serve_cmd(
    dataset: Annotated[
        str,
        typer.Option(help="Dataset whose serving suite checks each row and whose log it is."),
    ] = "youtube-spam",
    model: Annotated[
        str | None,
        typer.Option(help="Registered model to serve. Default: the dataset's model name."),
    ] = None,
    alias: Annotated[
        str, typer.Option(help="Alias served; the server follows it when it moves.")
    ] = "champion",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on (0: any free port).")] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the port, each with its own batcher, cache and "
            "alias watcher (one process uses about one core); /metrics sums them, "
            "/admin/reload reaches them all."
        ),
    ] = 1,
    slo_ms: Annotated[
        float,
        typer.Option(
            help="Latency objective in ms: batches are sized, and requests admitted, to answer "
            "within it; a request that cannot is refused at once with 503 and Retry-After."
        ),
    ] = 50.0,
    batching: Annotated[
        bool,
        typer.Option(
            "--batching/--no-batching",
            help="Adaptive batching (AIMD under the objective); off: one request per model call.",
        ),
    ] = True,
    max_batch: Annotated[int, typer.Option(help="Largest batch, in rows.")] = 256,
    cache_entries: Annotated[
        int, typer.Option(help="Predictions kept in the LRU cache (0: no cache).")
    ] = 10_000,
    poll_s: Annotated[
        float,
        typer.Option(help="Seconds between polls of the alias (0: only on POST /admin/reload)."),
    ] = 10.0,
    shadow: Annotated[
        str | None,
        typer.Option(
            help="Alias (e.g. challenger) that also scores a sample of requests, off the "
            "request path; its agreement rate goes to MLflow (experiment 'serving')."
        ),
    ] = None,
    shadow_fraction: Annotated[
        float, typer.Option(help="Share of requests the shadow model scores, in [0, 1].")
    ] = 0.1,
    log_fraction: Annotated[
        float,
        typer.Option(
            help="Share of requests written to the prediction log "
            "(s3://<bucket>/predictions/online/<dataset>/<day>/), in [0, 1]."
        ),
    ] = 1.0,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Write no prediction log (no S3 needed).")
    ] = False,
) -> None:
    """Serve a registered model over HTTP with MLflow's scoring protocol (POST
    /invocations), adaptive batching under a latency objective, a prediction cache, hot
    swaps when the alias moves, and a prediction log for `serving_report`. Every request
    but /ping, /health and /version needs the key in MLSYS_SERVE_KEY. Runs until SIGINT or
    SIGTERM, then drains its queue and exits 0."""
    from mlsys.data.definition import load_dataset
    from mlsys.serving.config import ServeConfig
    from mlsys.serving.rules import RowRules
    from mlsys.serving.server import WorkerFailed, serve
    from mlsys.settings import Settings

    settings = Settings.load()
    if settings.serve_key is None or not settings.serve_key.get_secret_value().strip():
        raise _fail(f"no API key: {KEY_HINT}")
    try:
        definition = load_dataset(dataset)
        config = ServeConfig(
            tracking_uri=settings.tracking_uri,
            model_name=model or definition.registered_model_name,
            dataset=definition.name,
            api_key=settings.serve_key.get_secret_value(),
            alias=alias,
            host=host,
            port=port,
            workers=workers,
            slo_ms=slo_ms,
            batching=batching,
            max_batch=max_batch,
            cache_entries=cache_entries,
            poll_s=poll_s,
            shadow_alias=shadow,
            shadow_fraction=shadow_fraction,
            log_fraction=0.0 if no_log else log_fraction,
        )
        suite_path = definition.suite_path("serving")
        if not suite_path.is_file():
            raise ValueError(
                f"dataset {definition.name!r} has no serving suite at {suite_path}; infer one "
                f"with `mlsys validate infer --suite serving --dataset {definition.name}`"
            )
        rules = RowRules.from_suite(json.loads(suite_path.read_text()))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    prediction_log = None if config.log_fraction == 0 else partial(_open_log, config)
    try:
        serve(config, rules=rules, prediction_log=prediction_log, classes=definition.classes)
    except WorkerFailed as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def _open_log(config: ServeConfig) -> PredictionLog:
    """The prediction log of one server process (each worker opens its own, in its own
    process: it holds a thread and an S3 client)."""
    from mlsys.serving.predlog import PredictionLog, S3Sink
    from mlsys.settings import Settings

    settings = Settings.load()
    return PredictionLog(
        S3Sink(settings.s3_client(), settings.bucket),
        config.dataset,
        fraction=config.log_fraction,
        flush_s=config.log_flush_s,
        flush_rows=config.log_flush_rows,
    )
