"""The Dask cluster the data-parallel stages run on: the one at ``MLSYS_DASK_ADDRESS`` (with
Dask's own TLS configuration) when that is set, else one the flow makes on this machine for
the stage. The same tasks run in both cases; only locations and counts pass through the
scheduler, each task reading and writing its own partition in S3."""

from __future__ import annotations

import os
from typing import Any

from mlsys.memory import STREAMING_ENV

__all__ = ["cluster_threads", "dask_runner", "default_workers"]


def default_workers(parts: int, threads: int | None = None) -> int:
    """Workers for ``parts`` partitions when none are asked for: one per worker thread of
    the cluster (``threads``), else one per CPU here, at most one per partition."""
    return max(1, min(threads or os.cpu_count() or 1, parts))


def dask_runner(workers: int, address: str | None = None) -> Any:
    """A Prefect task runner on the cluster at ``address`` (``MLSYS_DASK_ADDRESS``), else on
    a cluster of ``workers`` processes of one thread each on this machine, made for the run
    and closed after it."""
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            # Mutual TLS with a certificate made for this cluster: another process on
            # the host cannot connect to the scheduler and run code as this user.
            "security": True,
            # Set in each worker process before it imports pyarrow (see STREAMING_ENV).
            "env": dict(STREAMING_ENV),
        }
    )


def cluster_threads(address: str) -> int:
    """Worker threads of the Dask cluster at ``address`` (at least 1), asked of its
    scheduler with Dask's own security configuration.

    Raises:
        ValueError: a ``tls://`` address without Dask's TLS configuration.
        RuntimeError: the scheduler cannot be reached; the message names the setting.
    """
    import dask.config
    from distributed import Client

    connect: Any = Client  # untyped
    if address.startswith("tls://") and not dask.config.get("distributed.comm.tls.ca-file"):
        raise ValueError(
            f"MLSYS_DASK_ADDRESS={address} needs Dask's TLS configuration: "
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT "
            "and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (or the same keys in a Dask "
            "configuration file)"
        )
    try:
        with connect(address, timeout="60s", set_as_default=False) as cluster:
            return max(1, int(sum(cluster.nthreads().values())))
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(
            f"cannot reach the Dask scheduler at MLSYS_DASK_ADDRESS={address}: {exc}"
        ) from exc
