"""The stack's own Dask cluster (`mlsys stack up --dask`): a scheduler and worker processes
over mutual TLS with the stack's CA, which flows reach through MLSYS_DASK_ADDRESS (from the
stack's environment) instead of starting a cluster per run; a client with another CA's
certificate is refused; `down` stops it all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infra.config import StackSettings
from mlsys.data.definition import load_dataset
from mlsys.labeling.batch import lf_view
from mlsys.labeling.split import gold_split
from tests.conftest import read_youtube, stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dask_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    from infra.stack import down, up

    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in keys}
    settings = stack_settings(tmp_path_factory.mktemp("dask-stack"), dask=True, dask_workers=2)
    try:
        settings = up(settings, timeout_s=240, say=lambda line: None)
        yield settings
    finally:
        down(settings, say=lambda line: None)
        for key, value in saved.items():  # the session stack's credential, if any
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_flows_run_their_partitions_on_the_stacks_cluster(
    dask_stack: StackSettings, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask.config
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from snorkel.labeling import PandasLFApplier

    from flows.options import LabelOptions
    from flows.weak_label import label_matrix
    from infra import process
    from infra.prefect_api import prefect_settings

    env = dask_stack.shell_env()
    assert env["MLSYS_DASK_ADDRESS"] == f"tls://127.0.0.1:{dask_stack.dask_port}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tls = {
        "distributed.comm.tls.ca-file": env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
        "distributed.comm.tls.client.cert": env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"],
        "distributed.comm.tls.client.key": env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
    }
    youtube = load_dataset("youtube-spam")
    df = gold_split(read_youtube(youtube_dir), youtube.gold)
    workers_log = process.log_path(dask_stack.stack_dir, "dask-workers")
    logged = workers_log.stat().st_size
    with prefect_settings(dask_stack), dask.config.set(tls), dask_stack.mlflow_credentials():
        settings = StackSettings.load()
        assert settings.dask_address == dask_stack.stack_dask_address
        label = LabelOptions(lf_set="tutorial", partition_rows=1000)
        result = label_matrix(settings, df, youtube, "stack-dask", label)
        # This stack stops with the module: send its logs and events while it is up.
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)

    view, _ = lf_view(df, youtube.lf_columns, youtube.id_column)
    expected = PandasLFApplier(youtube.lf_set("tutorial")).apply(view, progress_bar=False)
    np.testing.assert_array_equal(result.matrix, expected)
    with workers_log.open("rb") as log:  # the partitions ran on the stack's workers
        log.seek(logged)
        assert log.read().count(b"apply-lfs-partition") >= 2


def test_a_client_with_another_cas_certificate_is_refused(
    dask_stack: StackSettings, tmp_path: Path
) -> None:
    from distributed import Client
    from distributed.security import Security

    from infra.tls import ensure_pki

    other = ensure_pki(tmp_path / "other-ca", ["intruder"], ["127.0.0.1"])
    leaf = other.leaves["intruder"]
    security = Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(other.ca),
        tls_client_cert=str(leaf.cert),
        tls_client_key=str(leaf.key),
        require_encryption=True,
    )
    with pytest.raises((OSError, TimeoutError)):
        Client(dask_stack.stack_dask_address, security=security, timeout="5s")


def test_down_stops_the_scheduler_and_every_worker(dask_stack: StackSettings) -> None:
    import psutil

    from infra import process
    from infra.stack import down, up

    records = [
        process.read_record(dask_stack.stack_dir, n) for n in ("dask-scheduler", "dask-workers")
    ]
    assert all(r is not None and r.alive() for r in records)
    pids = {pid for r in records if r is not None for pid in process.family_pids(r)}
    assert len(pids) >= 3  # the scheduler, the workers' nanny and its worker processes
    stopped = down(dask_stack, say=lambda line: None)
    assert {"dask-scheduler", "dask-workers"} <= set(stopped)
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert process.leftovers(dask_stack.stack_dir) == []
    up(dask_stack, timeout_s=240, say=lambda line: None)  # for the fixture's own down
