"""Tracking glue: one MLflow parent run per Prefect flow run, linked both ways.

``TrackedFlow`` is the opening and closing every flow shares: settings, dataset
definition, this run, and the flow's summary artifact.

MLflow's "active run" is per thread and Prefect runs tasks on other threads, so
nothing here relies on it: every call names its run id explicitly. Every client made here
rides out an MLflow outage call by call (``tasks.retry.tolerant``): a task that loses
MLflow says so in the run's log and goes on when it is back, within the outage tolerance.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from mlsys.data.definition import DatasetDefinition, load_dataset
from mlsys.links import mlflow_run_link
from mlsys.settings import Settings
from tasks.retry import ride_out, run_logger, tolerant

# Tags written on every parent run; the UI and `mlsys run` search by them.
TAG_FLOW_RUN_ID = "prefect.flow_run_id"
TAG_FLOW_RUN_NAME = "prefect.flow_run_name"
TAG_FLOW_NAME = "prefect.flow_name"
TAG_DEPLOYMENT = "prefect.deployment_name"
TAG_FLOW_RUN_URL = "prefect.flow_run_url"
TAG_CREATE_TOKEN = "mlsys.create_token"
"""A random tag each run is created with, so that creating it can be tried again."""


@dataclass(frozen=True)
class TrackedRun:
    """An MLflow run that tasks log into by id."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    @property
    def url(self) -> str:
        return mlflow_run_link(self.tracking_uri, self.experiment_id, self.run_id)

    def client(self) -> MlflowClient:
        """A client of the run's tracking server whose calls ride out an MLflow outage."""
        return tolerant(MlflowClient(tracking_uri=self.tracking_uri))


# The run of the flow run in progress: a subflow's run nests under it (mlflow.parentRunId).
_CURRENT_RUN: ContextVar[TrackedRun | None] = ContextVar("mlsys_current_run", default=None)


def current_run() -> TrackedRun | None:
    """The MLflow run of the flow run in progress in this context, if any."""
    return _CURRENT_RUN.get()


# The MLflow UI shows an experiment of this kind with its model-training views
# (runs, metrics, models) rather than the GenAI ones (traces, evaluations).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, tags=EXPERIMENT_KIND))
    except MlflowException:
        # Another flow run created it between our look-up and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def prefect_context(settings: Settings) -> dict[str, str]:
    """Tags that tie an MLflow run to the Prefect flow run it belongs to."""
    flow_run_id = runtime.flow_run.id
    tags = {
        TAG_FLOW_RUN_ID: str(flow_run_id or ""),
        TAG_FLOW_RUN_NAME: str(runtime.flow_run.name or ""),
        TAG_FLOW_NAME: str(runtime.flow_run.flow_name or ""),
        TAG_DEPLOYMENT: str(runtime.deployment.name or ""),
    }
    if flow_run_id:
        tags[TAG_FLOW_RUN_URL] = f"{settings.ui_url}/runs/flow-run/{flow_run_id}"
    return tags


@contextmanager
def flow_run_tracking(
    settings: Settings, *, run_name: str | None = None, params: Mapping[str, Any] | None = None
) -> Iterator[TrackedRun]:
    """Open the MLflow run of the current Prefect flow run.

    Tags it with the flow run id, flow and deployment names and the Prefect UI URL,
    publishes a Prefect link artifact pointing at it, and closes it as FINISHED or
    FAILED with the flow. Called in a subflow (e.g. a stage of `end_to_end`), the run is
    a child of the calling flow's run.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    client = tolerant(MlflowClient(tracking_uri=settings.tracking_uri))
    exp_id = experiment_id(client, settings.mlflow_experiment)
    tags = prefect_context(settings)
    name = run_name or tags[TAG_FLOW_RUN_NAME] or tags[TAG_FLOW_NAME] or None
    outer = _CURRENT_RUN.get()
    if outer is not None:
        tags["mlflow.parentRunId"] = outer.run_id
        name = f"{tags[TAG_FLOW_NAME] or name}"
    run = create_run_once(settings.tracking_uri, exp_id, tags=tags, run_name=name)
    tracked = TrackedRun(run.info.run_id, exp_id, settings.tracking_uri)
    for key, value in (params or {}).items():
        client.log_param(tracked.run_id, key, "" if value is None else str(value)[:6000])
    if tags[TAG_FLOW_RUN_ID]:
        create_link_artifact(
            link=tracked.url,
            link_text=f"MLflow run {name}",
            key="mlflow-run",
            description="MLflow run of this flow run: parameters, metrics, datasets, artifacts.",
        )
    token = _CURRENT_RUN.set(tracked)
    monitor = start_system_metrics(tracked)
    try:
        yield tracked
    except BaseException:
        stop_system_metrics(monitor)
        _mark_failed(tracked)
        raise
    finally:
        _CURRENT_RUN.reset(token)
    stop_system_metrics(monitor)
    client.set_terminated(tracked.run_id, RunStatus.to_string(RunStatus.FINISHED))


class TrackedFlow:
    """The opening and closing every flow in ``flows/`` shares, so that its body is its
    steps::

        tracked = TrackedFlow("ingest-summary", dataset)  # Settings.load()
        settings, definition = tracked.settings, tracked.definition
        params = {...}
        with tracked.track(params) as run:  # flow_run_tracking
            ...  # the steps, given run and settings
            tracked.summarize(markdown, description=...)  # the markdown artifact

    The settings are read once, here; the dataset's definition when first asked for
    (an unknown dataset fails there, before any work). ``track`` opens the flow run's
    MLflow run with the parameters to log and closes it FINISHED, or FAILED on an
    exception or when the steps ended without ``summarize``.
    """

    def __init__(self, summary: str, dataset: str | None = None) -> None:
        self.summary_key = summary
        self.dataset = dataset
        self.settings = Settings.load()
        self._summarized = False

    @cached_property
    def definition(self) -> DatasetDefinition:
        """The dataset's definition (``load_dataset``), loaded on first use."""
        if self.dataset is None:
            raise ValueError("this flow was opened without a dataset")
        return load_dataset(self.dataset)

    @contextmanager
    def track(self, params: Mapping[str, Any]) -> Iterator[TrackedRun]:
        """The flow run's MLflow run (``flow_run_tracking``) with ``params`` logged."""
        with flow_run_tracking(self.settings, params=params) as run:
            yield run
            if not self._summarized:
                raise RuntimeError(
                    f"the flow's steps ended without its summary artifact {self.summary_key!r}"
                )

    def summarize(self, markdown: str, *, description: str) -> None:
        """Publish the flow run's summary: the Prefect markdown artifact named at the
        opening."""
        create_markdown_artifact(key=self.summary_key, markdown=markdown, description=description)
        self._summarized = True


def create_run_once(
    tracking_uri: str, experiment_id: str, *, tags: Mapping[str, str], run_name: str | None
) -> Run:
    """``MlflowClient.create_run``, ridden through an MLflow outage without creating the
    run twice.

    A server killed while it answered may have created the run before the answer was
    lost ("Connection broken: IncompleteRead"); creating it again would leave that first
    run RUNNING for good. Each run is created with a random ``mlsys.create_token`` tag,
    and every try after the first looks for a run with it before creating one.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    token = uuid.uuid4().hex
    tagged = {**tags, TAG_CREATE_TOKEN: token}
    tried = [False]

    def create_run() -> Run:
        if tried[0]:
            found = client.search_runs(
                [experiment_id], f"tags.`{TAG_CREATE_TOKEN}` = '{token}'", max_results=1
            )
            if found:
                return found[0]
        tried[0] = True
        return client.create_run(experiment_id, tags=tagged, run_name=run_name)

    return ride_out(create_run)


def _mark_failed(run: TrackedRun) -> None:
    """Close ``run`` as FAILED, once and without riding out an outage: the run is failing
    already (perhaps because MLflow is out), and its own error is the one to report."""
    try:
        MlflowClient(tracking_uri=run.tracking_uri).set_terminated(
            run.run_id, RunStatus.to_string(RunStatus.FAILED)
        )
    except Exception as exc:
        run_logger().warning("could not mark MLflow run %s FAILED: %s", run.run_id, exc)


def start_system_metrics(run: TrackedRun) -> Any:
    """Sample CPU, memory, disk and network use into ``run`` (MLflow's ``system/*``
    metrics, the run page's "System metrics" tab) every ``MLSYS_SYSTEM_METRICS_INTERVAL_S``
    seconds (default 5; 0 turns it off). Returns the monitor, or None when off or when it
    cannot start (the flow goes on without it)."""
    interval = float(os.environ.get("MLSYS_SYSTEM_METRICS_INTERVAL_S", "5"))
    if interval <= 0:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
            run.run_id, sampling_interval=interval, tracking_uri=run.tracking_uri
        )
        monitor.start()  # type: ignore[no-untyped-call]
    except Exception as exc:  # psutil missing or a platform it cannot read
        logging.getLogger(__name__).warning("no system metrics for this run: %s", exc)
        return None
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    """Stop a monitor from ``start_system_metrics`` and send what it sampled."""
    if monitor is None:
        return
    monitor.finish()
    # MLflow's monitor samples at once, then publishes only after a whole interval: a
    # run shorter than that would end without system metrics. Send what it sampled.
    try:
        left = monitor.aggregate_metrics()
        if left:
            monitor.publish_metrics(left)
            monitor.mlflow_logger.flush()
    except Exception as exc:  # the run's results stand without them
        logging.getLogger(__name__).warning("system metrics not sent: %s", exc)


def mark_model_version(
    run: TrackedRun, name: str, version: str, *, alias: str, scores: dict[str, float]
) -> None:
    """Point ``alias`` at a newly registered version and tag it with the Prefect flow run
    that made it (the tags of ``run``, its MLflow run) and its test scores (one tag per
    entry of ``scores``, e.g. ``test_accuracy``, ``test_f1``)."""
    client = run.client()
    client.set_registered_model_alias(name, alias, version)
    tags = client.get_run(run.run_id).data.tags
    for key in (TAG_FLOW_RUN_ID, TAG_FLOW_NAME, TAG_DEPLOYMENT, TAG_FLOW_RUN_URL):
        if tags.get(key):
            client.set_model_version_tag(name, version, key, tags[key])
    for key, value in scores.items():
        client.set_model_version_tag(name, version, key, f"{value:.4f}")


def stage_metrics(run: TrackedRun) -> list[dict[str, Any]]:
    """The child runs of ``run`` (the stages of a pipeline), oldest first: flow name, run
    name and URL, and their row counts where they logged them."""
    client = run.client()
    children = client.search_runs(
        [run.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    rows = []
    for child in children:
        child_run = TrackedRun(child.info.run_id, run.experiment_id, run.tracking_uri)
        row: dict[str, Any] = {
            "stage": child.data.tags.get(TAG_FLOW_NAME, child.info.run_name),
            "run_name": child.info.run_name,
            "url": child_run.url,
        }
        for key in ("rows_in", "rows_out", "rows_quarantined"):
            if key in child.data.metrics:
                row[key] = int(child.data.metrics[key])
        if "rows_in" not in row and "rows_train" in child.data.metrics:
            row["rows_in"] = int(child.data.metrics["rows_train"])  # what training learned from
        rows.append(row)
    return rows


@dataclass(frozen=True)
class ChildRun(TrackedRun):
    """A child run of a flow run's parent run; ``fail()`` marks it FAILED at its end."""

    failed: list[bool] = field(default_factory=lambda: [False], compare=False)

    def fail(self) -> None:
        self.failed[0] = True


@contextmanager
def child_run(
    parent: TrackedRun, name: str, *, params: Mapping[str, Any] | None = None
) -> Iterator[ChildRun]:
    """An MLflow run nested under ``parent`` (the UI shows it beneath it), with the parent's
    Prefect tags, closed FINISHED, or FAILED on an exception or ``fail()``."""
    client = parent.client()
    inherited = client.get_run(parent.run_id).data.tags
    tags = {k: v for k, v in inherited.items() if k.startswith("prefect.")}
    tags["mlflow.parentRunId"] = parent.run_id
    run = create_run_once(parent.tracking_uri, parent.experiment_id, tags=tags, run_name=name)
    child = ChildRun(run.info.run_id, parent.experiment_id, parent.tracking_uri)
    for key, value in (params or {}).items():
        client.log_param(child.run_id, key, "" if value is None else str(value)[:6000])
    try:
        yield child
    except BaseException:
        _mark_failed(child)
        raise
    status = RunStatus.FAILED if child.failed[0] else RunStatus.FINISHED
    client.set_terminated(child.run_id, RunStatus.to_string(status))
