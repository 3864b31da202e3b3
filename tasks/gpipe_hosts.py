"""GPipe stages on the hosts of the flows' Dask cluster (``MLSYS_DASK_ADDRESS``): the launcher
the train task gives :class:`~mlsys.training.gpipe_hosts.GPipeHosts`.

Each stage is one Dask task pinned to a worker on its host (the host's address among the
workers'), which runs :func:`~mlsys.training.gpipe_hosts.run_stage` there: torchrun as one
node of the run. Only the stage's job (bytes) goes out through the scheduler and only its
output comes back, so no path of this machine needs to exist on the hosts.

While it waits, the launcher fails the run, naming the stage and its host, as soon as a
stage fails or its worker leaves the cluster; it then sets a Dask ``Event`` that the other
stages' tasks poll, and they stop their torchrun, so that none is left in a collective.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsys.training.gpipe import StageError
from mlsys.training.gpipe_hosts import GPipeHosts, HostStage, StageOutput, run_stage
from mlsys.training.trainers import GPipeTrainer

__all__ = ["DaskStageLauncher", "Placement", "hosts_strategy", "run_pinned_stage"]

_POLL_S = 0.2
_CLUSTER_POLL_S = 2.0
_SETTLE_S = 3.0
"""After a stage fails, how long the others' failures (and a lost worker, the likelier
cause) may take to arrive before the first is reported."""
_FAILED = ("error", "cancelled", "lost")


@dataclass(frozen=True)
class Placement:
    """Where a stage ran: its host, the Dask worker that started it, and the address its
    stage process reached the rendezvous from."""

    stage: int
    host: str
    worker: str
    address: str


def hosts_strategy(trainer: GPipeTrainer, work_dir: Path, address: str | None) -> GPipeHosts:
    """The trainer's stages on its hosts, started through the Dask cluster at ``address``
    (``MLSYS_DASK_ADDRESS``); ValueError when there is none."""
    if not address:
        raise ValueError(
            f"trainer 'gpipe' with hosts={trainer.hosts} starts its stages through a Dask "
            f"cluster with a worker on each host: set MLSYS_DASK_ADDRESS to its scheduler"
        )
    strategy = trainer.strategy(work_dir, launch=DaskStageLauncher(address))
    assert isinstance(strategy, GPipeHosts)  # hosts given
    return strategy


class DaskStageLauncher:
    """Runs each stage on a Dask worker of its host; a
    :data:`~mlsys.training.gpipe_hosts.StageLauncher`::

        launcher = DaskStageLauncher("tls://10.0.0.9:8786")
        fit(model, data, strategy=GPipeHosts(gpipe, hosts, launcher), ...)
        launcher.placements  # where each stage ran

    Connects with Dask's own configuration (its TLS settings included).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.placements: list[Placement] = []

    def __call__(self, stages: Sequence[HostStage]) -> list[StageOutput]:
        from distributed import Client, Event

        connect: Any = Client  # untyped
        event: Any = Event
        try:
            client = connect(self.address, timeout="60s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(
                f"cannot reach the Dask scheduler at MLSYS_DASK_ADDRESS={self.address}: {exc}"
            ) from exc
        with client:
            workers = _workers(client)
            pinned = [_worker_on(stage, workers, self.address) for stage in stages]
            stop = f"{stages[0].run_id}-stop"
            futures = [
                client.submit(
                    run_pinned_stage,
                    stage,
                    stop,
                    key=f"gpipe-stage-{stage.stage}-{stage.run_id}",
                    workers=[worker],
                    allow_other_workers=False,
                    pure=False,
                    retries=0,
                )
                for stage, worker in zip(stages, pinned, strict=True)
            ]
            try:
                outputs: list[StageOutput] = _wait(client, futures, stages, pinned)
            except BaseException:
                event(stop, client=client).set()
                client.cancel(futures, force=True)
                raise
        self.placements = [
            Placement(stage.stage, stage.host, worker, output.address)
            for stage, worker, output in zip(stages, pinned, outputs, strict=True)
        ]
        return outputs


def run_pinned_stage(stage: HostStage, stop: str) -> StageOutput:
    """On a worker of the stage's host: run the stage until it ends, or until the launcher
    sets the Dask ``Event`` named ``stop``."""
    from distributed import Event

    event: Any = Event  # untyped
    return run_stage(stage, should_stop=event(stop).is_set)


def _workers(client: Any) -> dict[str, Any]:
    """The cluster's workers by address, with what the scheduler knows of each."""
    return dict(client.scheduler_info(n_workers=-1)["workers"])


def _worker_on(stage: HostStage, workers: dict[str, Any], address: str) -> str:
    """A worker on the stage's host (the first by address), found by the host's name or
    address; ValueError naming the hosts the cluster has when there is none."""
    names = {stage.host}
    with contextlib.suppress(OSError):
        names.add(socket.gethostbyname(stage.host))
    there = sorted(w for w, info in workers.items() if info.get("host") in names)
    if not there:
        hosts = sorted({str(info.get("host")) for info in workers.values()})
        raise ValueError(
            f"stage {stage.stage} is to run on host {stage.host!r}, but no worker of the Dask "
            f"cluster at {address} runs there (its workers are on {hosts}): start one there, "
            f"e.g. `dask worker {address} --host {stage.host}`"
        )
    return there[0]


def _wait(
    client: Any, futures: list[Any], stages: Sequence[HostStage], pinned: list[str]
) -> list[StageOutput]:
    """The stages' outputs once all have finished; StageError as soon as one has failed
    (after ``_SETTLE_S`` for the others' news) or its worker has left the cluster."""
    first_seen: dict[int, float] = {}
    next_check = 0.0
    while True:
        now = time.monotonic()
        statuses = [future.status for future in futures]
        if now >= next_check or first_seen:
            alive = _workers(client)
            for s, worker in enumerate(pinned):
                if worker not in alive and statuses[s] != "finished":
                    raise StageError(
                        s,
                        len(stages),
                        f"on host {stages[s].host}: its Dask worker {worker} left the cluster",
                    )
            next_check = now + _CLUSTER_POLL_S
        for s, status in enumerate(statuses):
            if status in _FAILED:
                first_seen.setdefault(s, now)
        if first_seen:
            settled = all(status != "pending" for status in statuses)
            if settled or now - min(first_seen.values()) > _SETTLE_S:
                raise _first_failure(futures, statuses, first_seen, stages, pinned)
        elif all(status == "finished" for status in statuses):
            outputs: list[StageOutput] = client.gather(futures)
            return outputs
        time.sleep(_POLL_S)


def _first_failure(
    futures: list[Any],
    statuses: list[str],
    first_seen: dict[int, float],
    stages: Sequence[HostStage],
    pinned: list[str],
) -> StageError:
    """The cause: the stage that failed of itself rather than because a neighbour's
    connection closed (``peer``), seen first (the lower stage on a tie); with the others'
    summaries."""
    k = len(stages)

    def error(s: int) -> StageError:
        exc = futures[s].exception(timeout=60) if statuses[s] == "error" else None
        if isinstance(exc, StageError):
            return exc
        cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        return StageError(
            s, k, f"on host {stages[s].host}: its task on worker {pinned[s]} {statuses[s]}{cause}"
        )

    errors = sorted(map(error, first_seen), key=lambda e: (e.peer, first_seen[e.stage], e.stage))
    first, summary = errors[0], errors[0].summary
    if len(errors) > 1:
        summary += "; then " + "; ".join(f"stage {e.stage} {e.summary}" for e in errors[1:])
    return StageError(first.stage, k, summary, first.child_traceback, first.peer)
