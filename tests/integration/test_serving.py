"""`mlsys serve` against the real stack: a server started before any champion exists picks
up the one the train flow promotes (the flow tells it), answers MLflow's scoring protocol
with the pyfunc's predictions, refuses what it must (no key, bad rows, bodies, types), swaps
to a new version under steady load without a failed request, exits 0 on SIGTERM after
flushing its prediction log to S3, and `serving_report` reads that log back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from infra.runs import mlflow_run_of, trigger
from infra.stack import status
from mlsys.data import read_parquet_bytes
from mlsys.data.catalog import online_predictions_prefix
from mlsys.settings import Settings
from tests.conftest import put_labeled_youtube, read_youtube

pytestmark = pytest.mark.integration

MODEL = "it-serve"
BIN = Path(sys.executable).parent


@dataclass
class Served:
    settings: Settings
    url: str
    key: str
    proc: subprocess.Popen[bytes]
    log: Path
    answered: Counter[str] = field(default_factory=Counter)

    def post(self, body: object, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return httpx.post(
            f"{self.url}/invocations", json=body, headers=headers, timeout=30, **kwargs
        )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def comments(youtube_dir: Path) -> pd.DataFrame:
    df = read_youtube(youtube_dir)
    return df[~df["comment_id"].duplicated()].reset_index(drop=True)


@pytest.fixture(scope="module")
def labeled_uri(stack: Settings, comments: pd.DataFrame) -> str:
    return put_labeled_youtube(stack, comments, "it-serve")


@pytest.fixture(scope="module")
def served(
    stack: Settings, labeled_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`mlsys serve` for MODEL on the stack's serving port, started before MODEL has a
    champion; polling rarely, so that only the flow's reload explains a prompt switch."""
    assert stack.serve_key is not None
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSYS_", "MLFLOW_"))}
    env.update(stack.shell_env())
    argv = [
        str(BIN / "mlsys"),
        "serve",
        "--model",
        MODEL,
        "--dataset",
        "youtube-spam",
        "--port",
        str(stack.serve_port),
        "--poll-s",
        "600",
        "--slo-ms",
        "2000",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Served(stack, stack.serving_url, stack.serve_key.get_secret_value(), proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{server.url}/ping", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def champion(served: Served, labeled_uri: str) -> str:
    """Version 1 of MODEL, trained and promoted by the train flow, which tells the server."""
    outcome = trigger(
        served.settings,
        "train/train",
        {
            "labeled_batch": labeled_uri,
            "training": {"epochs": 2, "choose": False},
            "model_name": MODEL,
        },
        timeout_s=600,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message
    return str(
        MlflowClient(served.settings.tracking_uri)
        .get_model_version_by_alias(MODEL, "champion")
        .version
    )


def one_row(text: str) -> dict[str, object]:
    return {"dataframe_split": {"columns": ["text"], "data": [[text]]}}


def test_the_promoted_champion_is_served_at_once(served: Served, champion: str) -> None:
    # The server polls every 600 s: answering with the new version within seconds of the
    # flow's end means the flow's /admin/reload reached it.
    deadline = time.monotonic() + 60
    while True:
        answer = served.post(one_row("check out my channel"))
        if answer.status_code == 200:
            break
        assert time.monotonic() < deadline, (answer.status_code, answer.text)
        time.sleep(0.5)
    assert answer.headers["x-model-version"] == champion


def test_every_input_format_gives_the_pyfunc_predictions(
    served: Served, champion: str, comments: pd.DataFrame
) -> None:
    texts = comments["text"].head(5).tolist()
    mlflow.set_tracking_uri(served.settings.tracking_uri)
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL}/{champion}").predict(
        pd.DataFrame({"text": texts})
    )
    bodies = [
        {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}},
        {"dataframe_records": [{"text": t} for t in texts]},
        {"inputs": {"text": texts}},
    ]
    for body in bodies:
        answer = served.post(body)
        assert answer.status_code == 200, (body, answer.text)
        got = pd.DataFrame(answer.json()["predictions"])
        assert got["label"].tolist() == expected["label"].tolist(), body
        pd.testing.assert_series_equal(
            got["probability"],
            expected["probability"].reset_index(drop=True),
            check_names=False,
            rtol=1e-6,
        )
        assert answer.headers["x-model-version"] == champion


def test_refusals_name_their_reason(served: Served, champion: str) -> None:
    url = f"{served.url}/invocations"
    body = json.dumps(one_row("hello"))
    assert (
        httpx.post(
            url, content=body, headers={"Content-Type": "application/json"}, timeout=10
        ).status_code
        == 401
    )
    wrong = {"Content-Type": "application/json", "Authorization": "Bearer not-the-key"}
    assert httpx.post(url, content=body, headers=wrong, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {served.key}"}
    malformed = httpx.post(
        url, content=b"{not json", timeout=10, headers={**auth, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400, malformed.text
    typed = httpx.post(
        url, content=b"text", timeout=10, headers={**auth, "Content-Type": "application/x-foo"}
    )
    assert typed.status_code == 415, typed.text
    huge = httpx.post(
        url,
        content=b"x" * (2 << 20),
        timeout=30,
        headers={**auth, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413, huge.text
    empty = served.post(one_row(""))
    assert empty.status_code == 422, empty.text
    assert "text" in empty.text and "expect_column_value" in empty.text, empty.text
    missing = served.post({"dataframe_records": [{"comment": "no text column"}]})
    assert missing.status_code == 422 and "text" in missing.text, missing.text
    assert httpx.get(f"{served.url}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(f"{served.url}/metrics", headers=auth, timeout=10)
    assert metrics.status_code == 200 and "401" in metrics.text


def test_a_promotion_under_steady_load_fails_no_request(
    served: Served, champion: str, comments: pd.DataFrame
) -> None:
    from mlsys.models.pyfunc import log_text_classifier
    from mlsys.models.text import build_text_classifier, pipeline_featurizer

    texts = comments["text"].tolist()
    versions: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {served.key}"}, timeout=30) as c:
            i = offset
            while not stop.is_set():
                answer = c.post(f"{served.url}/invocations", json=one_row(texts[i % len(texts)]))
                i += 7
                if answer.status_code == 200:
                    versions[answer.headers["x-model-version"]] += 1
                else:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        tracking = MlflowClient(served.settings.tracking_uri)
        run_id = tracking.create_run(
            tracking.get_experiment_by_name(served.settings.mlflow_experiment).experiment_id
        ).info.run_id
        featurizer = pipeline_featurizer()
        info = log_text_classifier(
            build_text_classifier(n_features=featurizer.n_features, hidden=[]),
            featurizer,
            run_id=run_id,
            tracking_uri=served.settings.tracking_uri,
            registered_model_name=MODEL,
            input_example_texts=texts[:3],
            class_names=["ham", "spam"],
        )
        tracking.set_terminated(run_id)
        new = str(info.registered_model_version)
        tracking.set_registered_model_alias(MODEL, "champion", new)
        reload = httpx.post(
            f"{served.url}/admin/reload",
            timeout=120,
            headers={"Authorization": f"Bearer {served.key}"},
        )
        assert reload.status_code == 200, reload.text
        assert str(reload.json()["version"]) == new
        deadline = time.monotonic() + 30
        while versions[new] < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert versions[champion] > 0 and versions[new] >= 50, versions


def test_sigterm_drains_flushes_the_log_and_serving_report_reads_it(
    served: Served, champion: str
) -> None:
    s3 = served.settings.s3_client()
    day = datetime.now(UTC).date().isoformat()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0, served.log.read_text()[-3000:]
    prefix = online_predictions_prefix("youtube-spam", day)
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=served.settings.bucket, Prefix=prefix).get(
            "Contents", []
        )
    ]
    assert keys, f"no prediction log under {prefix}"
    outcome = trigger(
        served.settings,
        "serving_report/serving_report",
        {"dataset": "youtube-spam", "day": day, "model_name": MODEL},
        timeout_s=600,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message
    _, run = mlflow_run_of(served.settings, outcome.flow_run_id)
    logged = sum(
        len(read_parquet_bytes(s3.get_object(Bucket=served.settings.bucket, Key=k)["Body"].read()))
        for k in keys
    )
    assert run.data.metrics["rows"] == logged > 0
    assert run.data.metrics["rows_failing"] == 0
    # Version 1 and the one the promotion test swapped in.
    versions = run.data.tags["mlsys.versions_served"].split(",")
    assert champion in versions and len(versions) == 2, versions


def test_the_stack_runs_the_server_as_a_service(serving_stack: Settings) -> None:
    rows = {row.name: row for row in status(serving_stack)}
    assert rows["serve"].healthy and rows["serve"].pid, rows["serve"]
    url = serving_stack.serving_url
    assert httpx.get(f"{url}/ping", timeout=5).status_code == 200
    assert httpx.post(f"{url}/invocations", json=one_row("hi"), timeout=5).status_code == 401
    # MLSYS_SERVE_WORKERS=2: both processes answer the merged /metrics.
    assert serving_stack.serve_key is not None
    key = {"Authorization": f"Bearer {serving_stack.serve_key.get_secret_value()}"}
    metrics = httpx.get(f"{url}/metrics", headers=key, timeout=10)
    assert metrics.status_code == 200, metrics.text
    assert "\nmlsys_serve_workers 2" in metrics.text, metrics.text[:2000]
