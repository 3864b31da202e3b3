"""Shadow scoring: how often the challenger agrees with the served model on live traffic.

With a shadow alias, a sampled share of requests is scored again by the shadow model after
the answer has gone out (on its own batcher and thread, so the served path never waits
for it). :class:`Agreement` counts, per pair of versions, the rows both scored and those
on which their ``label`` is the same. :class:`AgreementLogger` writes the rates to MLflow,
one run per version pair in the experiment ``serving``, named
``shadow <model>@<alias> v<served> vs @<shadow> v<shadow>`` (one per worker process, with
`` (worker <n>)`` after it, when the server runs several): metrics ``shadow_agreement``
(the rate so far) and ``shadow_rows``, logged every few seconds and at shutdown.

Usage::

    agreement = Agreement()
    agreement.record("3", "4", served_records, shadow_records)
    AgreementLogger(tracking_uri, "spam", "champion", "challenger").log(agreement)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlsys.serving.cache import Record

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["EXPERIMENT", "Agreement", "AgreementLogger", "Tally"]

EXPERIMENT = "serving"
"""The MLflow experiment the agreement runs go to."""

_log = logging.getLogger(__name__)


@dataclass
class Tally:
    rows: int = 0
    agreed: int = 0

    @property
    def rate(self) -> float:
        return self.agreed / self.rows if self.rows else 0.0


class Agreement:
    """Rows scored by both models and rows they agreed on, per ``(served, shadow)``
    version pair; safe to record from any thread."""

    def __init__(self) -> None:
        self.rows = 0
        self.agreed = 0
        self._pairs: dict[tuple[str, str], Tally] = {}
        self._lock = threading.Lock()

    def record(
        self,
        served_version: str,
        shadow_version: str,
        served: Sequence[Record],
        shadow: Sequence[Record],
    ) -> None:
        """Compare the two models' outputs for the same rows (by ``label``, else by the
        first output column)."""
        if len(served) != len(shadow):
            raise ValueError(f"{len(served)} served and {len(shadow)} shadow predictions")
        agreed = sum(_decision(a) == _decision(b) for a, b in zip(served, shadow, strict=True))
        with self._lock:
            tally = self._pairs.setdefault((served_version, shadow_version), Tally())
            tally.rows += len(served)
            tally.agreed += agreed
            self.rows += len(served)
            self.agreed += agreed

    def snapshot(self) -> dict[tuple[str, str], Tally]:
        """A copy of the tallies per version pair."""
        with self._lock:
            return {pair: Tally(t.rows, t.agreed) for pair, t in self._pairs.items()}


def _decision(record: Record) -> object:
    if "label" in record:
        return record["label"]
    return next(iter(record.values()), None)


class AgreementLogger:
    """Writes :class:`Agreement` tallies to MLflow (see the module docstring); failures are
    logged, never raised: the server keeps serving whatever MLflow does."""

    def __init__(
        self,
        tracking_uri: str,
        model: str,
        alias: str,
        shadow_alias: str,
        *,
        worker: int | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.worker = worker
        self.model = model
        self.alias = alias
        self.shadow_alias = shadow_alias
        self._runs: dict[tuple[str, str], str] = {}
        self._logged: dict[tuple[str, str], int] = {}
        self._step = 0

    def log(self, agreement: Agreement) -> None:
        """Log the rate of each version pair that scored rows since the last call."""
        try:
            self._log(agreement)
        except Exception as exc:
            _log.warning("cannot log shadow agreement to %s: %s", self.tracking_uri, exc)

    def close(self) -> None:
        """Mark the runs finished (failures logged)."""
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        for run_id in self._runs.values():
            try:
                client.set_terminated(run_id)
            except Exception as exc:
                _log.warning("cannot finish shadow run %s: %s", run_id, exc)

    def _log(self, agreement: Agreement) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(self.tracking_uri)
        self._step += 1
        now = int(time.time() * 1000)
        for pair, tally in agreement.snapshot().items():
            if tally.rows == self._logged.get(pair):
                continue
            run_id = self._runs.get(pair) or self._start(client, pair)
            client.log_batch(
                run_id,
                metrics=[
                    Metric("shadow_agreement", tally.rate, now, self._step),
                    Metric("shadow_rows", float(tally.rows), now, self._step),
                ],
            )
            self._logged[pair] = tally.rows

    def _start(self, client: MlflowClient, pair: tuple[str, str]) -> str:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(EXPERIMENT)
        )
        served, shadow = pair
        name = f"shadow {self.model}@{self.alias} v{served} vs @{self.shadow_alias} v{shadow}"
        tags = {
            "mlsys.serving.model": self.model,
            "mlsys.serving.alias": self.alias,
            "mlsys.serving.version": served,
            "mlsys.serving.shadow_alias": self.shadow_alias,
            "mlsys.serving.shadow_version": shadow,
        }
        if self.worker is not None:
            name += f" (worker {self.worker})"
            tags["mlsys.serving.worker"] = str(self.worker)
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        run_id = str(run.info.run_id)
        self._runs[pair] = run_id
        return run_id
