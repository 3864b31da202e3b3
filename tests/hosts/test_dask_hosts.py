"""batch_infer, weak_label's LFs and ingest on a Dask cluster of three hosts (network
namespaces, see :mod:`tests.hosts.netns`): a scheduler on one host and a worker on each of
two others, all over mutual TLS, reached through ``MLSYS_DASK_ADDRESS``. The predictions
equal one machine's row for row, from an S3 input and from a local file (put in S3 for the
workers); the LFs give Snorkel's label matrix; ingest read file by file gives one pass's
batch and quarantine; and a worker killed (SIGKILL) in the middle of a stage loses and
duplicates no row.

The test's own stack (SeaweedFS, MLflow, Prefect) serves the hosts from this machine,
bound to this machine's private address on the hosts' switch only
(:meth:`~tests.hosts.netns.Hosts.join_this_machine`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.catalog import (
    predictions_prefix,
    quarantine_key,
    quarantine_prefix,
    staging_prefix,
)
from mlsys.data.s3 import get_bytes, list_keys, put_bytes
from mlsys.memory import STREAMING_ENV
from mlsys.settings import Settings
from tests.conftest import put_labeled_youtube, read_youtube, stack_settings
from tests.hosts.netns import Hosts, unavailable

why_not = unavailable()
pytestmark = [
    pytest.mark.skipif(why_not is not None, reason=why_not or ""),
    pytest.mark.timeout(3600),
]

PROJECT_DIR = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
SCHEDULER_PORT = 8786
MODEL = "hosts-bi"
DATASET = "youtube-spam"


@dataclass
class Cluster:
    hosts: Hosts
    stack: Settings
    address: str
    tls: dict[str, str]
    workers: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def logged_since(self, worker: str, offset: int) -> bytes:
        """What ``worker`` wrote to its log after ``offset`` bytes."""
        with self.logs[worker].open("rb") as log:
            log.seek(offset)
            return log.read()

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout="120s", set_as_default=False)


def _tls_flags(pki: Any) -> list[str]:
    leaf = pki.leaves["dask"]
    return ["--tls-ca-file", str(pki.ca), "--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key)]


def _host_env(folder: Path) -> dict[str, str]:
    """What a Dask process on a host is started with: the code and nothing of the stack.
    The S3, MLflow and Prefect endpoints and credentials reach each task with it."""
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **STREAMING_ENV,
    }


def _register_model(stack: Settings, texts: list[str]) -> str:
    """A text classifier (seeded weights) registered as MODEL@champion; its version."""
    import torch
    from mlflow.tracking import MlflowClient

    from mlsys.models.pyfunc import log_text_classifier
    from mlsys.models.text import build_text_classifier, pipeline_featurizer

    torch.manual_seed(7)
    tracking = MlflowClient(stack.tracking_uri)
    experiment = tracking.get_experiment_by_name(stack.mlflow_experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else tracking.create_experiment(stack.mlflow_experiment)
    )
    run_id = tracking.create_run(experiment_id).info.run_id
    featurizer = pipeline_featurizer()
    info = log_text_classifier(
        build_text_classifier(n_features=featurizer.n_features, hidden=[8]),
        featurizer,
        run_id=run_id,
        tracking_uri=stack.tracking_uri,
        registered_model_name=MODEL,
        input_example_texts=texts[:3],
        class_names=["ham", "spam"],
    )
    tracking.set_terminated(run_id)
    version = str(info.registered_model_version)
    tracking.set_registered_model_alias(MODEL, "champion", version)
    return version


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, youtube_dir: Path) -> Iterator[Cluster]:
    """Hosts 0-2, this machine on their switch serving the test's stack, a scheduler on
    host 0 and a worker on each of hosts 1 and 2 (one thread each, no nanny: a killed
    worker stays dead)."""
    import dask.config
    import distributed  # noqa: F401  (its configuration defaults, before they are set)

    from infra.stack import down, up
    from infra.tls import ensure_pki

    folder = tmp_path_factory.mktemp("dask-hosts")
    # The session stack's MLflow credential, if another module started it, is put back
    # at the end: later modules' clients read it from the environment.
    credential_keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in credential_keys}
    with Hosts(3) as hosts:
        here = hosts.join_this_machine()
        stack = stack_settings(folder / "stack", host=here)
        try:
            stack = up(stack, timeout_s=300, say=lambda line: None)
            pki = ensure_pki(
                folder / "dask-tls", ["dask"], [hosts.address(i) for i in range(3)] + [here]
            )
            leaf = pki.leaves["dask"]
            tls = {
                "distributed.comm.tls.ca-file": str(pki.ca),
                "distributed.comm.tls.client.cert": str(leaf.cert),
                "distributed.comm.tls.client.key": str(leaf.key),
            }
            address = f"tls://{hosts.address(0)}:{SCHEDULER_PORT}"
            found = Cluster(hosts, stack, address, tls)
            env = _host_env(folder)
            found.logs["scheduler"] = folder / "scheduler.log"
            with found.logs["scheduler"].open("w") as log:
                hosts.popen(
                    0,
                    [DASK, "scheduler", "--host", hosts.address(0), "--port",
                     str(SCHEDULER_PORT), "--protocol", "tls", "--no-dashboard",
                     *_tls_flags(pki)],
                    env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            for host in (1, 2):
                name = f"worker-{host}"
                found.logs[hosts.address(host)] = folder / f"{name}.log"
                with found.logs[hosts.address(host)].open("w") as log:
                    found.workers[hosts.address(host)] = hosts.popen(
                        host,
                        [DASK, "worker", address, "--host", hosts.address(host),
                         "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name,
                         "--local-directory", str(folder / name), *_tls_flags(pki)],
                        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                    )  # fmt: skip
            with dask.config.set(tls):
                with found.client() as client:
                    client.wait_for_workers(2, timeout=600)
                raw = read_youtube(youtube_dir)
                with stack.mlflow_credentials():
                    _register_model(stack, raw["text"].astype(str).tolist())
                yield found
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            down(stack, say=lambda line: None)


@pytest.fixture
def flows_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The test's stack for flows run in this process (see tests/conftest.py's stack_env),
    with the cluster's TLS configuration; MLSYS_DASK_ADDRESS is set by each run."""
    import dask.config
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    from infra.prefect_api import prefect_settings

    for key, value in cluster.stack.shell_env().items():
        monkeypatch.setenv(key, value)
    with (
        prefect_settings(cluster.stack),
        temporary_settings(updates={PREFECT_UI_URL: cluster.stack.ui_url}),
        dask.config.set(cluster.tls),
    ):
        yield cluster
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def _score(
    monkeypatch: pytest.MonkeyPatch, address: str | None, source: str, batch: str, **options: Any
) -> dict[str, Any]:
    """batch_infer of ``source`` as ``batch``: on the cluster at ``address``, or (None)
    on this machine; its manifest."""
    from flows.batch_infer import batch_infer
    from flows.options import InferOptions

    if address is None:
        monkeypatch.delenv("MLSYS_DASK_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("MLSYS_DASK_ADDRESS", address)
    inference = InferOptions(**options)
    uri = batch_infer(
        source=source, dataset=DATASET, batch=batch, model_name=MODEL, inference=inference
    )
    settings = Settings.load()
    return dict(json.loads(get_bytes(settings.s3_client(), uri)))


def _parts(stack: Settings, prefix: str) -> pd.DataFrame:
    client = stack.s3_client()
    keys = sorted(k for _, k in list_keys(client, stack.bucket, prefix) if k.endswith(".parquet"))
    frames = [read_parquet_bytes(get_bytes(client, stack.s3_uri(k))) for k in keys]
    return pd.concat(frames, ignore_index=True)


def _counts(manifest: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        manifest["rows_in"],
        manifest["rows_out"],
        manifest["rows_quarantined"],
        manifest["chunks"],
    )


def _input(youtube_dir: Path, copies: int) -> pd.DataFrame:
    """The youtube comments (unique ids) ``copies`` times, each copy's ids its own; two
    texts missing, for the serving suite to quarantine."""
    raw = read_youtube(youtube_dir)
    raw = raw[~raw["comment_id"].duplicated()].reset_index(drop=True)
    frames = [raw.assign(comment_id=raw["comment_id"] + f"-{k}") for k in range(copies)]
    frame = pd.concat(frames, ignore_index=True)
    frame.loc[[5, 700], "text"] = pd.NA
    return frame


def test_three_hosts_score_exactly_as_one_machine_from_s3_and_from_a_local_file(
    flows_env: Cluster, youtube_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, stack = flows_env, flows_env.stack
    frame = _input(youtube_dir, copies=1)
    source = stack.s3_uri("serving/hosts-in.parquet")
    put_bytes(stack.s3_client(), source, write_parquet_bytes(frame))
    local = tmp_path / "hosts-in.parquet"
    local.write_bytes(write_parquet_bytes(frame))

    one = _score(monkeypatch, None, source, "one-machine", chunk_rows=100, workers=1)
    hosts = _score(monkeypatch, cluster.address, source, "three-hosts", chunk_rows=100)
    staged = _score(monkeypatch, cluster.address, str(local), "three-hosts-local", chunk_rows=100)

    assert _counts(one) == (len(frame), len(frame) - 2, 2, -(-len(frame) // 100))
    for manifest in (hosts, staged):
        assert _counts(manifest) == _counts(one) and manifest["chunks_skipped"] == 0
        assert manifest["model"] == one["model"]
    expected = _parts(stack, predictions_prefix(DATASET, "one-machine"))
    assert len(expected) == len(frame) - 2
    assert expected["comment_id"].tolist() == frame.drop(index=[5, 700])["comment_id"].tolist()
    held = _parts(stack, quarantine_prefix("serving", DATASET, "one-machine"))
    for batch in ("three-hosts", "three-hosts-local"):
        pd.testing.assert_frame_equal(_parts(stack, predictions_prefix(DATASET, batch)), expected)
        pd.testing.assert_frame_equal(
            _parts(stack, quarantine_prefix("serving", DATASET, batch)), held
        )
    # The local file went to S3 for the workers, and was removed once scored.
    assert (
        list_keys(stack.s3_client(), stack.bucket, staging_prefix(DATASET, "three-hosts-local"))
        == []
    )

    # Both hosts' workers scored: each logged parts its score-partition tasks wrote.
    for worker, log in cluster.logs.items():
        if worker != "scheduler":
            assert "score-partition" in log.read_text(), worker


def test_three_hosts_apply_lfs_as_snorkel_does_on_one_machine(
    flows_env: Cluster, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """weak_label's LF application with MLSYS_DASK_ADDRESS set: one task per row partition
    on the hosts' workers (each loading the LF module itself and reading and writing its
    partition in S3) gives PandasLFApplier's label matrix of the whole batch."""
    from snorkel.labeling import PandasLFApplier

    from flows.options import LabelOptions
    from flows.weak_label import label_matrix
    from mlsys.data.definition import load_dataset
    from mlsys.labeling.batch import lf_view
    from mlsys.labeling.split import gold_split

    cluster = flows_env
    monkeypatch.setenv("MLSYS_DASK_ADDRESS", cluster.address)
    youtube = load_dataset(DATASET)
    df = gold_split(read_youtube(youtube_dir), youtube.gold)
    logged = {w: cluster.logs[w].stat().st_size for w in cluster.workers}
    label = LabelOptions(lf_set="tutorial", partition_rows=250)
    result = label_matrix(Settings.load(), df, youtube, "hosts-lfs", label)

    view, _ = lf_view(df, youtube.lf_columns, youtube.id_column)
    expected = PandasLFApplier(youtube.lf_set("tutorial")).apply(view, progress_bar=False)
    np.testing.assert_array_equal(result.matrix, expected)
    for worker in logged:  # both hosts' workers labeled partitions
        assert b"apply-lfs-partition" in cluster.logged_since(worker, logged[worker]), worker


def test_three_hosts_ingest_file_by_file_as_one_pass(
    flows_env: Cluster, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest of an S3 folder with MLSYS_DASK_ADDRESS set: one task per file on the hosts'
    workers reads and checks it, and the batch, the quarantine and the counts equal a
    one-pass ingest's on this machine."""
    from flows.ingest import ingest

    cluster, stack = flows_env, flows_env.stack
    client = stack.s3_client()
    extra = (
        "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\n"
        "x-empty,Ann,2014-01-01,,1\nx-label,Bo,2014-01-01,hi,7\n"
    )
    files = {p.name: p.read_bytes() for p in sorted(youtube_dir.glob("*.csv"))}
    files["Youtube06-extra.csv"] = extra.encode()
    for name, data in files.items():
        put_bytes(client, stack.s3_uri(f"incoming/hosts-ingest/{name}"), data)
    source = stack.s3_uri("incoming/hosts-ingest/")
    logged = {w: cluster.logs[w].stat().st_size for w in cluster.workers}

    monkeypatch.setenv("MLSYS_DASK_ADDRESS", cluster.address)
    hosts = ingest(source=source, dataset=DATASET, batch="hosts-parts", part_mb=0.0001)
    monkeypatch.delenv("MLSYS_DASK_ADDRESS")
    one = ingest(source=source, dataset=DATASET, batch="hosts-one")

    batch = read_parquet_bytes(get_bytes(client, one))
    pd.testing.assert_frame_equal(read_parquet_bytes(get_bytes(client, hosts)), batch)
    assert len(batch) == 1956 + 2 - 5  # 3 repeated ids, an empty text, a label no class
    held = [
        read_parquet_bytes(get_bytes(client, stack.s3_uri(quarantine_key("raw", DATASET, b))))
        for b in ("hosts-parts", "hosts-one")
    ]
    pd.testing.assert_frame_equal(held[0], held[1])
    assert {"x-empty", "x-label"} <= set(held[0]["comment_id"])
    assert list_keys(client, stack.bucket, "work/ingest/") == []
    for worker in logged:  # both hosts' workers read files
        assert b"read-check-part" in cluster.logged_since(worker, logged[worker]), worker


def test_three_hosts_label_a_batch_in_parts_as_one_pass(
    flows_env: Cluster, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """weak_label with partitioned=true and MLSYS_DASK_ADDRESS set: the three passes over
    the raw batch's ranges run on the hosts' workers (each reading its range from S3), and
    the labeled batch equals one pass's on this machine, row for row by id."""
    from flows.options import LabelOptions
    from flows.weak_label import weak_label
    from mlsys.data.catalog import label_parts_prefix

    cluster, stack = flows_env, flows_env.stack
    client = stack.s3_client()
    raw_uri = stack.s3_uri(f"raw/{DATASET}/hosts-wl-raw.parquet")
    put_bytes(client, raw_uri, write_parquet_bytes(read_youtube(youtube_dir)))
    monkeypatch.delenv("MLSYS_DASK_ADDRESS", raising=False)
    one = read_parquet_bytes(get_bytes(client, weak_label(raw_batch=raw_uri, batch="hosts-wl-one")))

    logged = {w: cluster.logs[w].stat().st_size for w in cluster.workers}
    monkeypatch.setenv("MLSYS_DASK_ADDRESS", cluster.address)
    label = LabelOptions(partition_rows=400)
    uri = weak_label(raw_batch=raw_uri, batch="hosts-wl-parts", label=label, partitioned=True)
    monkeypatch.delenv("MLSYS_DASK_ADDRESS")

    def by_id(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values("comment_id", kind="stable").reset_index(drop=True)

    parts = read_parquet_bytes(get_bytes(client, uri))
    pd.testing.assert_frame_equal(by_id(parts), by_id(one), check_exact=False, rtol=1e-9)
    assert len(one) == 1956 - 3  # the later copies of 3 repeated ids
    assert list_keys(client, stack.bucket, label_parts_prefix(DATASET, "hosts-wl-parts")) == []
    for worker in logged:  # both hosts' workers voted on ranges
        assert b"vote-range" in cluster.logged_since(worker, logged[worker]), worker


def test_the_train_flow_runs_gpipe_stages_on_two_hosts_as_on_this_machine(
    flows_env: Cluster, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train flow with a gpipe trainer given hosts 1 and 2 (the cluster's workers
    start a torchrun node each, meeting through its c10d rendezvous on host 1) registers a
    model predicting what the same trainer gives with its stages on this machine."""
    import mlflow

    from flows.options import TrainOptions
    from flows.train import train
    from mlsys.training.trainers import GPipeTrainer

    cluster, stack = flows_env, flows_env.stack
    comments = read_youtube(youtube_dir)
    comments = comments[~comments["comment_id"].duplicated()]
    uri = put_labeled_youtube(stack, comments, "hosts-train")
    options = {"choose": False, "epochs": 2, "batch_size": 64, "hidden": [64, 32]}
    hosts = [cluster.hosts.address(1), cluster.hosts.address(2)]

    monkeypatch.delenv("MLSYS_DASK_ADDRESS", raising=False)
    here = train(
        labeled_batch=uri,
        training=TrainOptions(trainer=GPipeTrainer(stages=2, microbatches=4), **options),
        model_name="hosts-gpipe-here",
        promote=False,
    )
    monkeypatch.setenv("MLSYS_DASK_ADDRESS", cluster.address)
    there = train(
        labeled_batch=uri,
        training=TrainOptions(
            trainer=GPipeTrainer(stages=2, microbatches=4, hosts=hosts), **options
        ),
        model_name="hosts-gpipe",
        promote=False,
    )

    texts = pd.DataFrame({"text": comments["text"].astype(str).tolist()[:300]})
    with stack.mlflow_credentials():
        predicted = [
            mlflow.pyfunc.load_model(f"models:/{name}/{registered['version']}").predict(texts)
            for name, registered in (("hosts-gpipe-here", here), ("hosts-gpipe", there))
        ]
    columns = [c for c in predicted[0].columns if str(c).startswith("proba")]
    assert columns
    np.testing.assert_allclose(predicted[1][columns], predicted[0][columns], atol=1e-5)
    # Where each stage ran, as the train task logged it to the flow run.
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from infra.prefect_api import prefect_client

    APILogWorker.drain_all(timeout=30)

    tracking = MlflowClient(stack.tracking_uri)
    with stack.mlflow_credentials():
        run_id = tracking.get_model_version("hosts-gpipe", there["version"]).run_id
        flow_run = tracking.get_run(run_id).data.tags["prefect.flow_run_id"]
    with prefect_client(stack) as prefect:
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])))
    placed = "\n".join(log.message for log in logs)
    assert f"stage 0 ran on host {hosts[0]}" in placed, placed
    assert f"stage 1 ran on host {hosts[1]}" in placed, placed


def test_a_worker_killed_mid_stage_loses_and_duplicates_no_row(
    flows_env: Cluster, youtube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, stack = flows_env, flows_env.stack
    frame = _input(youtube_dir, copies=3)
    source = stack.s3_uri("serving/hosts-fault.parquet")
    put_bytes(stack.s3_client(), source, write_parquet_bytes(frame))
    chunk_rows = 50
    chunks = -(-len(frame) // chunk_rows)
    one = _score(monkeypatch, None, source, "fault-one", chunk_rows=chunk_rows, workers=1)

    prefix = predictions_prefix(DATASET, "fault-hosts")
    killed: dict[str, Any] = {}
    stop = threading.Event()
    # What each worker logs from here on: the parts its task scores in this run.
    logged = {w: cluster.logs[w].stat().st_size for w in cluster.workers}

    def scored_here(worker: str) -> int:
        return cluster.logged_since(worker, logged[worker]).count(b"predicted")

    def kill_a_busy_worker() -> None:
        """SIGKILL a worker while its score-partition task runs, once that task has
        written a part and before the manifest: in the middle of the stage."""
        s3 = stack.s3_client()
        with cluster.client() as client:
            while not stop.is_set():
                names = [k for _, k in list_keys(s3, stack.bucket, prefix)]
                done = any(k.endswith("_manifest.json") for k in names)
                busy = [
                    w.removeprefix("tls://").rsplit(":", 1)[0]
                    for w, keys in client.processing().items()
                    if keys
                ]
                ready = [w for w in busy if scored_here(w) >= 1]
                if ready and not done:
                    victim = ready[0]
                    cluster.workers[victim].send_signal(signal.SIGKILL)
                    killed.update(
                        worker=victim,
                        parts=sum(k.endswith(".parquet") for k in names),
                        scored=scored_here(victim),
                    )
                    return
                time.sleep(0.3)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    try:
        hosts = _score(
            monkeypatch, cluster.address, source, "fault-hosts", chunk_rows=chunk_rows, workers=2
        )
    finally:
        stop.set()
        killer.join(timeout=120)

    assert killed, "no worker was busy with parts written and no manifest: nothing was killed"
    assert cluster.workers[killed["worker"]].wait(timeout=60) == -signal.SIGKILL
    assert killed["parts"] < chunks  # the stage was under way
    assert _counts(one) == (len(frame), len(frame) - 2, 2, chunks)
    assert _counts(hosts) == _counts(one)
    # The killed task ran again on the other host and kept the parts it had written.
    assert hosts["chunks_skipped"] >= killed["scored"] >= 1, (hosts["chunks_skipped"], killed)
    assert sorted(p["name"] for p in hosts["parts"]) == sorted(p["name"] for p in one["parts"])
    scored = _parts(stack, prefix)
    assert not scored["comment_id"].duplicated().any()
    pd.testing.assert_frame_equal(scored, _parts(stack, predictions_prefix(DATASET, "fault-one")))
    pd.testing.assert_frame_equal(
        _parts(stack, quarantine_prefix("serving", DATASET, "fault-hosts")),
        _parts(stack, quarantine_prefix("serving", DATASET, "fault-one")),
    )
