"""Tests for mlsys.serving.app (and the model watcher behind it): the HTTP API end to end
in-process, with real MLflow pyfunc models in a private registry where versions matter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import httpx
import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from mlsys.models import HashingFeaturizer, build_text_classifier
from mlsys.models.pyfunc import log_text_classifier
from mlsys.serving.app import create_app
from mlsys.serving.config import ServeConfig
from mlsys.serving.model import LoadedModel, ModelLoadError, ModelWatcher, load_version
from mlsys.serving.predlog import FolderSink, PredictionLog
from mlsys.serving.rules import RowRules

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SUITE = Path(__file__).resolve().parents[2] / "datasets/youtube-spam/suites/serving.json"
TEXTS = ["check out my channel", "love this song", "WIN a free iPhone now!!!"]
CLASSES = ["ham", "spam"]


@dataclass
class Registry:
    """A private MLflow tracking store with one run to log model versions into."""

    uri: str
    run_id: str

    def register(self, name: str, favour: str, alias: str | None = "champion") -> str:
        """Log a text classifier that predicts ``favour`` for any text as a new version of
        ``name`` (pointing ``alias`` at it); its version."""
        torch.manual_seed(len(favour))
        model = build_text_classifier(256, hidden=(4,))
        last = model[-1]
        assert isinstance(last, torch.nn.Linear)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([6.0, -6.0] if favour == "ham" else [-6.0, 6.0]))
        info = log_text_classifier(
            model,
            HashingFeaturizer(n_features=256),
            run_id=self.run_id,
            tracking_uri=self.uri,
            registered_model_name=name,
            class_names=CLASSES,
        )
        version = str(info.registered_model_version)
        if alias is not None:
            MlflowClient(self.uri).set_registered_model_alias(name, alias, version)
        return version

    def expected(self, name: str, version: str, texts: list[str]) -> pd.DataFrame:
        """What the pyfunc model itself answers."""
        mlflow.set_tracking_uri(self.uri)
        try:
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            answer: pd.DataFrame = model.predict(pd.DataFrame({"text": texts}))
            return answer
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("serve", artifact_location=(root / "art").as_uri())
    return Registry(uri, client.create_run(experiment).info.run_id)


def config(name: str, registry: Registry | None = None, **changes: Any) -> ServeConfig:
    settings: dict[str, Any] = {
        "tracking_uri": None if registry is None else registry.uri,
        "model_name": name,
        "dataset": "youtube-spam",
        "api_key": KEY,
        "poll_s": 0,
        **changes,
    }
    return ServeConfig(**settings)


def suite_rules() -> RowRules:
    return RowRules.from_suite(json.loads(SUITE.read_text()))


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) with a client authenticated by default; shut down after."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://serve", headers=AUTH) as client,
    ):
        yield client


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def one_row(text: object) -> dict[str, Any]:
    return {"dataframe_split": {"columns": ["text"], "data": [[text]]}}


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


# --- a fake model, where the registry does not matter ------------------------------------


class FakeModel:
    """Answers ``spam`` with probability 0.75 for any text; ``gate`` (closed) holds every
    call in the worker thread, so that requests pile up in the queue."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[list[str]] = []

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.gate.wait(timeout=30)
        self.calls.append(frame["text"].tolist())
        n = len(frame)
        return pd.DataFrame(
            {"label": ["spam"] * n, "probability": [0.75] * n, "proba_spam": [0.75] * n}
        )

    def loaded(self, version: str = "7") -> LoadedModel:
        inputs = (("text", "string"),)
        return LoadedModel(
            name="fake",
            version=version,
            inputs=inputs,
            classes=("ham", "spam"),
            predict_frame=self.predict,
            rules=RowRules.from_signature(inputs),
        )


@pytest.fixture
def fake() -> Iterator[tuple[FakeModel, ModelWatcher]]:
    model = FakeModel()
    watcher = ModelWatcher(None, "fake", poll_s=0)
    watcher.current = model.loaded()
    yield model, watcher
    model.gate.set()


def test_the_key_is_required_except_on_the_probes(fake: tuple[FakeModel, ModelWatcher]) -> None:
    _, watcher = fake
    app = create_app(config("fake"), watcher, rules=suite_rules())

    async def scenario() -> None:
        async with serving(app) as client:
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
                refused = await client.post("/invocations", json=one_row("hi"), headers=headers)
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert refused.json()["error_code"] == "UNAUTHENTICATED"
            no_key = httpx.Headers({"Authorization": ""})
            for path in ("/metrics", "/nowhere"):
                assert (await client.get(path, headers=no_key)).status_code == 401
            assert (await client.post("/admin/reload", headers=no_key)).status_code == 401
            for path in ("/ping", "/health", "/version"):
                assert (await client.get(path, headers=no_key)).status_code == 200, path
            lower = {"Authorization": f"bearer {KEY}"}
            assert (await client.post("/invocations", json=one_row("hi"), headers=lower)).is_success
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_requests_total", path="/invocations", code="401") == 2
            assert metric(text, "mlsys_serve_requests_total", path="other", code="401") == 1
            version = (await client.get("/version")).json()
            assert (version["model"], version["alias"], version["version"]) == (
                "fake",
                "champion",
                "7",
            )

    run(scenario)


def test_refused_requests_get_their_status_and_reach_nothing(
    fake: tuple[FakeModel, ModelWatcher], tmp_path: Path
) -> None:
    model, watcher = fake
    log = PredictionLog(FolderSink(tmp_path), "youtube-spam", flush_s=3600)
    app = create_app(config("fake", max_body_bytes=1000), watcher, rules=suite_rules(),
                     prediction_log=log)  # fmt: skip

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 400

    async def scenario() -> None:
        async with serving(app) as client:
            post = client.post
            json_type = {"Content-Type": "application/json"}
            malformed = await post("/invocations", content=b"{oops", headers=json_type)
            assert malformed.status_code == 400 and "not valid JSON" in malformed.text
            too_big = await post("/invocations", content=b"x" * 1001, headers=json_type)
            assert too_big.status_code == 413 and "1001 bytes" in too_big.text
            streamed = await post("/invocations", content=chunks(), headers=json_type)
            assert streamed.status_code == 413 and "limit of 1000" in streamed.text
            typed = await post("/invocations", content=b"x", headers={"Content-Type": "a/b"})
            assert typed.status_code == 415 and "'a/b'" in typed.text
            empty = await post("/invocations", json=one_row(""))
            assert empty.status_code == 422
            body = empty.json()
            assert body["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "expect_column_value_lengths_to_be_between" in body["message"]
            assert body["refusals"] == [
                {
                    "row": 0,
                    "rule": "expect_column_value_lengths_to_be_between",
                    "column": "text",
                    "reason": "length 0 is outside [1, 10000]",
                }
            ]
            missing = await post("/invocations", json={"dataframe_records": [{"comment": "x"}]})
            assert missing.status_code == 422 and "'text'" in missing.json()["message"]
            typed_row = await post("/invocations", json={"inputs": {"text": [1]}})
            assert typed_row.status_code == 422 and "type_list" in typed_row.text
            no_rows = await post(
                "/invocations", json={"dataframe_split": {"columns": ["text"], "data": []}}
            )
            assert no_rows.status_code == 200 and no_rows.json() == {"predictions": []}
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_batch_rows_count") == 0
            assert metric(text, "mlsys_serve_cache_misses_total") == 0

    run(scenario)
    assert model.calls == []
    assert list(tmp_path.rglob("*.parquet")) == [] and log.rows_written == 0


def test_answers_name_their_version_and_go_to_the_log(
    fake: tuple[FakeModel, ModelWatcher], tmp_path: Path
) -> None:
    _, watcher = fake
    log = PredictionLog(FolderSink(tmp_path), "youtube-spam", flush_s=3600)
    app = create_app(config("fake"), watcher, rules=suite_rules(), prediction_log=log)
    ids = []

    async def scenario() -> None:
        async with serving(app) as client:
            for i, text in enumerate(TEXTS):
                answer = await client.post(
                    "/invocations",
                    json={"dataframe_records": [{"text": text, "video": i}]},
                    headers={"X-Request-Id": f"req-{i}"},
                )
                assert answer.status_code == 200
                assert answer.headers["x-model-version"] == "7"
                assert answer.headers["x-model-name"] == "fake"
                ids.append(answer.headers["x-request-id"])
                assert answer.json() == {
                    "predictions": [{"label": "spam", "probability": 0.75, "proba_spam": 0.75}]
                }

    run(scenario)  # the shutdown closes the log: everything answered is written
    assert ids == ["req-0", "req-1", "req-2"]
    frame = pd.concat(pd.read_parquet(p) for p in sorted(tmp_path.rglob("*.parquet")))
    frame = frame.sort_values("request_id")
    assert frame["request_id"].tolist() == ids
    assert frame["text"].tolist() == TEXTS
    assert "video" not in frame  # a column neither the suite nor the model names
    assert set(frame["model_version"]) == {"7"} and set(frame["label"]) == {"spam"}


def test_cache_hits_skip_the_queue(fake: tuple[FakeModel, ModelWatcher]) -> None:
    model, watcher = fake
    app = create_app(config("fake"), watcher, rules=suite_rules())

    async def scenario() -> None:
        async with serving(app) as client:
            first = await client.post("/invocations", json={"inputs": {"text": ["a", "b"]}})
            again = await client.post("/invocations", json={"inputs": {"text": ["b", "c"]}})
            assert first.status_code == again.status_code == 200
            assert len(again.json()["predictions"]) == 2
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_cache_hits_total") == 1

    run(scenario)
    assert model.calls == [["a", "b"], ["c"]]


def test_overload_is_refused_at_once_with_retry_after(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    model, watcher = fake
    app = create_app(config("fake", slo_ms=50), watcher, rules=suite_rules())
    server = app.state.serving

    async def scenario() -> None:
        async with serving(app) as client:
            server.batcher.estimate.observe(rows=1, service_ms=80.0)  # one row: over 50 ms
            shed = await client.post("/invocations", json=one_row("hello"))
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            assert "50 ms objective" in shed.json()["message"]
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_shed_total") == 1

    run(scenario)
    assert model.calls == []


def test_shutdown_answers_every_queued_request(fake: tuple[FakeModel, ModelWatcher]) -> None:
    model, watcher = fake
    model.gate.clear()
    app = create_app(config("fake", cache_entries=0), watcher, rules=suite_rules())
    server = app.state.serving

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s", headers=AUTH) as c:
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            requests = [
                asyncio.ensure_future(c.post("/invocations", json=one_row(f"text {i}")))
                for i in range(12)
            ]
            for _ in range(3000):  # the first batch runs (held), the rest wait in the queue
                if server.batcher.queued_rows == 11:
                    break
                await asyncio.sleep(0.01)
            assert server.batcher.queued_rows == 11
            shutdown = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
            await asyncio.sleep(0.05)
            late = await c.post("/invocations", json=one_row("late"))
            assert late.status_code == 503 and "shutting down" in late.text
            model.gate.set()
            answers = await asyncio.gather(*requests)
            await shutdown
        assert [a.status_code for a in answers] == [200] * 12

    run(scenario)
    assert sorted(t for call in model.calls for t in call) == sorted(f"text {i}" for i in range(12))


# --- real models from the registry -------------------------------------------------------


def test_every_input_format_gives_the_pyfunc_predictions(registry: Registry) -> None:
    version = registry.register("formats", favour="spam")
    expected = registry.expected("formats", version, TEXTS)
    watcher = ModelWatcher(registry.uri, "formats", poll_s=0, classes=CLASSES)
    assert watcher.start().version == version
    app = create_app(config("formats", registry), watcher, rules=suite_rules())
    bodies: list[tuple[dict[str, str], bytes]] = [
        (
            {"Content-Type": "application/json"},
            json.dumps(
                {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
            ).encode(),
        ),
        (
            {"Content-Type": "application/json"},
            json.dumps({"dataframe_records": [{"text": t} for t in TEXTS]}).encode(),
        ),
        ({"Content-Type": "application/json"}, json.dumps({"inputs": {"text": TEXTS}}).encode()),
        ({"Content-Type": "application/json"}, json.dumps({"inputs": TEXTS}).encode()),
        (
            {"Content-Type": "text/csv; charset=utf-8"},
            pd.DataFrame({"text": TEXTS}).to_csv(index=False).encode(),
        ),
    ]

    async def scenario() -> None:
        async with serving(app) as client:
            for headers, body in bodies:
                answer = await client.post("/invocations", content=body, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-model-version"] == version
                got = pd.DataFrame(answer.json()["predictions"])
                assert list(got.columns) == list(expected.columns)
                assert got["label"].tolist() == expected["label"].tolist()
                pd.testing.assert_frame_equal(
                    got.drop(columns="label"),
                    expected.drop(columns="label"),
                    check_exact=False,
                    atol=1e-9,
                )

    run(scenario)
    watcher.close()


def test_a_promotion_swaps_versions_without_a_failed_request(registry: Registry) -> None:
    first = registry.register("swap", favour="spam")
    watcher = ModelWatcher(registry.uri, "swap", poll_s=0)
    watcher.start()
    # The clients run on the server's own event loop: their waits are its lag, and a
    # client answered without a pause never lets the lag probe run again.
    settings = config("swap", registry, cache_entries=0, loop_lag_admission=False)
    app = create_app(settings, watcher, rules=suite_rules())
    answers: Counter[tuple[int, str, str]] = Counter()
    stop = asyncio.Event()
    promoted: list[str] = []

    async def client_loop(client: httpx.AsyncClient, k: int) -> None:
        i = 0
        while not stop.is_set():
            answer = await client.post("/invocations", json=one_row(f"client {k} text {i}"))
            label = answer.json()["predictions"][0]["label"] if answer.is_success else ""
            answers[(answer.status_code, answer.headers.get("x-model-version", ""), label)] += 1
            i += 1

    async def scenario() -> None:
        async with serving(app) as client:
            clients = [asyncio.ensure_future(client_loop(client, k)) for k in range(4)]
            while sum(answers.values()) < 20:
                await asyncio.sleep(0.01)
            second = await asyncio.to_thread(registry.register, "swap", "ham")
            promoted.append(second)
            reloaded = await client.post("/admin/reload")
            assert reloaded.status_code == 200
            assert reloaded.json()["version"] == second
            assert reloaded.json()["previous"] == first and reloaded.json()["changed"]
            seen = sum(answers.values())
            while sum(answers.values()) < seen + 20:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*clients)
            after = await client.post("/invocations", json=one_row("after the swap"))
            assert after.headers["x-model-version"] == second
            assert (await client.get("/version")).json()["version"] == second
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_model_version", version=second, role="serving") == 1

    run(scenario)
    watcher.close()
    # Every answer succeeded, and each came whole from the version its header names.
    assert {status for status, _, _ in answers} == {200}
    assert {(version, label) for _, version, label in answers} == {
        (first, "spam"),
        (promoted[0], "ham"),
    }


def test_while_a_version_loads_a_late_request_is_answered_not_refused(
    registry: Registry,
) -> None:
    """A load takes the cores the served version scores on: while it runs, admission
    answers what would finish within 4x the objective; once it has settled, it refuses
    beyond 1x again."""
    first = registry.register("settle", favour="spam")
    loading, release = threading.Event(), threading.Event()

    def loader(uri: str | None, name: str, version: str) -> LoadedModel:
        if version != first:
            loading.set()
            assert release.wait(60)
        return load_version(uri, name, version)

    watcher = ModelWatcher(registry.uri, "settle", poll_s=0, loader=loader, settle_s=0.0)
    watcher.start()
    assert not watcher.settling()
    settings = config("settle", registry, slo_ms=50, cache_entries=0, loop_lag_admission=False)
    app = create_app(settings, watcher, rules=suite_rules())
    server = app.state.serving

    async def scenario() -> None:
        async with serving(app) as client:
            second = await asyncio.to_thread(registry.register, "settle", "ham")
            reload = asyncio.ensure_future(client.post("/admin/reload"))
            await asyncio.to_thread(loading.wait, 60)
            assert watcher.settling()
            server.batcher.estimate.observe(rows=1, service_ms=80.0)  # over 50, under 200
            answered = await client.post("/invocations", json=one_row("during the load"))
            assert answered.status_code == 200 and answered.headers["x-model-version"] == first
            release.set()
            assert (await reload).json()["version"] == second and not watcher.settling()
            server.batcher.estimate.observe(rows=1, service_ms=400.0)  # over 200: refused
            refused = await client.post("/invocations", json=one_row("after the load"))
            assert refused.status_code == 503 and "50 ms objective" in refused.json()["message"]

    run(scenario)
    watcher.close()


def test_a_failed_load_keeps_the_old_version_serving(registry: Registry) -> None:
    good = registry.register("broken", favour="spam")

    def loader(uri: str | None, name: str, version: str) -> LoadedModel:
        if version != good:
            raise ModelLoadError(f"cannot load models:/{name}/{version}: corrupt weights")
        return load_version(uri, name, version)

    watcher = ModelWatcher(registry.uri, "broken", poll_s=0, loader=loader)
    watcher.start()
    bad = registry.register("broken", favour="ham")
    app = create_app(config("broken", registry), watcher, rules=suite_rules())

    async def scenario() -> None:
        async with serving(app) as client:
            reload = await client.post("/admin/reload")
            assert reload.status_code == 500
            assert (
                f"models:/broken/{bad}" in reload.text
                and f"still serving version {good}" in (reload.json()["message"])
            )
            answer = await client.post("/invocations", json=one_row("hello"))
            assert answer.status_code == 200 and answer.headers["x-model-version"] == good

    run(scenario)
    watcher.close()


def test_a_version_of_other_classes_is_not_loaded(registry: Registry) -> None:
    registry.register("classes", favour="spam")
    watcher = ModelWatcher(registry.uri, "classes", poll_s=0, classes=["no", "yes"])
    assert watcher.start().version is None and watcher.current is None
    with pytest.raises(ModelLoadError, match=r"classes \['ham', 'spam'\].*\['no', 'yes'\]"):
        watcher.reload()


def test_the_server_waits_for_an_alias_that_does_not_exist_yet(registry: Registry) -> None:
    watcher = ModelWatcher(registry.uri, "later", poll_s=0)
    assert watcher.start().version is None
    app = create_app(config("later", registry), watcher, rules=suite_rules())

    async def scenario() -> None:
        async with serving(app) as client:
            assert (await client.get("/ping")).status_code == 200
            assert (await client.get("/health")).status_code == 503
            early = await client.post("/invocations", json=one_row("hello"))
            assert early.status_code == 503 and "models:/later@champion" in early.text
            assert (await client.post("/admin/reload")).status_code == 404
            version = await asyncio.to_thread(registry.register, "later", "spam")
            assert (await client.post("/admin/reload")).json()["version"] == version
            assert (await client.get("/health")).status_code == 200
            answer = await client.post("/invocations", json=one_row("hello"))
            assert answer.status_code == 200 and answer.headers["x-model-version"] == version

    run(scenario)
    watcher.close()


def test_the_watcher_polls_the_alias(registry: Registry) -> None:
    first = registry.register("polled", favour="spam")
    watcher = ModelWatcher(registry.uri, "polled", poll_s=0.05)
    watcher.start()
    assert watcher.current is not None and watcher.current.version == first
    second = registry.register("polled", favour="ham")
    for _ in range(3000):
        if watcher.current.version == second:
            break
        threading.Event().wait(0.01)
    watcher.close()
    assert watcher.current.version == second


def test_the_shadow_scores_a_sample_and_its_agreement_goes_to_mlflow(registry: Registry) -> None:
    served = registry.register("shadowed", favour="spam")
    challenger = registry.register("shadowed", favour="ham", alias="challenger")
    watcher = ModelWatcher(registry.uri, "shadowed", poll_s=0, shadow_alias="challenger")
    watcher.start()
    draws = iter([0.0, 0.9, 0.0])  # the first and third requests are sampled
    app = create_app(
        config("shadowed", registry, shadow_alias="challenger", shadow_fraction=0.5),
        watcher,
        rules=suite_rules(),
        sample=lambda: next(draws),
    )

    async def scenario() -> None:
        async with serving(app) as client:
            for text in TEXTS:
                answer = await client.post("/invocations", json=one_row(text))
                assert answer.headers["x-model-version"] == served
            version = (await client.get("/version")).json()
            assert version["shadow_version"] == challenger

    run(scenario)
    watcher.close()
    agreement = app.state.serving.agreement
    assert (agreement.rows, agreement.agreed) == (2, 0)  # spam vs ham: never agree
    client = MlflowClient(registry.uri)
    experiment = client.get_experiment_by_name("serving")
    assert experiment is not None
    (run_,) = client.search_runs([experiment.experiment_id])
    assert run_.info.run_name == f"shadow shadowed@champion v{served} vs @challenger v{challenger}"
    assert run_.data.metrics == {"shadow_agreement": 0.0, "shadow_rows": 2.0}
    assert run_.info.status == "FINISHED"


# --- the fast path of POST /invocations --------------------------------------------------


def _requests() -> list[tuple[str, dict[str, str], bytes]]:
    """One request per input format and per refusal: (what, headers, body)."""
    json_type = {"Content-Type": "application/json", "X-Request-Id": "same-id"}

    def as_json(document: object) -> bytes:
        return json.dumps(document).encode()

    return [
        ("dataframe_split", json_type, as_json(one_row("love this song"))),
        ("dataframe_records", json_type, as_json({"dataframe_records": [{"text": "a"}]})),
        ("inputs columns", json_type, as_json({"inputs": {"text": ["a", "b"]}})),
        ("inputs list", json_type, as_json({"inputs": ["a", "b", "c"]})),
        ("instances", json_type, as_json({"instances": [{"text": "a"}]})),
        ("params", json_type, as_json({"inputs": ["a"], "params": {"k": 1}})),
        ("no rows", json_type, as_json({"dataframe_split": {"columns": ["text"], "data": []}})),
        (
            "csv",
            {"Content-Type": "text/csv; charset=utf-8", "X-Request-Id": "same-id"},
            pd.DataFrame({"text": TEXTS}).to_csv(index=False).encode(),
        ),
        (
            "parquet",
            {"Content-Type": "application/vnd.apache.parquet", "X-Request-Id": "same-id"},
            pd.DataFrame({"text": TEXTS}).to_parquet(),
        ),
        ("malformed JSON", json_type, b"{oops"),
        ("no format", json_type, as_json({"rows": []})),
        ("too large", json_type, b"x" * 5001),
        ("content type", {"Content-Type": "a/b"}, b"x"),
        ("no content type", {}, b"x"),
        ("charset", {"Content-Type": "application/json; charset=latin-1"}, b"{}"),
        ("rule", json_type, as_json(one_row(""))),
        ("signature", json_type, as_json({"inputs": {"text": [1]}})),
        ("missing column", json_type, as_json({"dataframe_records": [{"comment": "x"}]})),
        ("bad length", {**json_type, "Content-Length": "12x"}, b"{}"),
        ("no key", {**json_type, "Authorization": ""}, as_json(one_row("a"))),
        ("wrong key", {**json_type, "Authorization": "Bearer nope"}, as_json(one_row("a"))),
        ("lower-case scheme", {**json_type, "Authorization": f"bearer {KEY}"}, b'{"inputs":["a"]}'),
    ]


async def _answers(app: Starlette) -> list[tuple[str, int, list[tuple[bytes, bytes]], bytes]]:
    async with serving(app) as client:
        answers = []
        for what, headers, body in _requests():
            answer = await client.post("/invocations", content=body, headers=headers)
            answers.append((what, answer.status_code, list(answer.headers.raw), answer.content))
        answer = await client.get("/invocations")  # not a POST: the router's 405
        answers.append(("GET", answer.status_code, list(answer.headers.raw), answer.content))
        metrics_text = (await client.get("/metrics")).text
    counts = [
        (s.labels["path"], s.labels["code"], s.value)
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == "mlsys_serve_requests_total"
    ]
    answers.append(("counts", 0, [], json.dumps(sorted(counts)).encode()))
    return answers


def test_the_fast_path_answers_exactly_like_the_routed_path(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    """Status, headers (names, values, order) and body bytes of every format and refusal,
    and the request counts in the metrics, are the same with and without the fast path."""
    model, watcher = fake

    def answers(fast_path: bool) -> list[tuple[str, int, list[tuple[bytes, bytes]], bytes]]:
        app = create_app(
            config("fake", max_body_bytes=5000, cache_entries=0),
            watcher,
            rules=suite_rules(),
            fast_path=fast_path,
        )
        return asyncio.run(_answers(app))

    fast, routed = answers(True), answers(False)
    assert [a[0] for a in fast] == [a[0] for a in routed]
    for got, expected in zip(fast, routed, strict=True):
        assert got == expected, got[0]
    statuses = {what: status for what, status, _, _ in fast}
    assert statuses["dataframe_split"] == statuses["parquet"] == statuses["no rows"] == 200
    assert (statuses["malformed JSON"], statuses["too large"], statuses["content type"]) == (
        400,
        413,
        415,
    )
    assert (statuses["rule"], statuses["no key"], statuses["GET"]) == (422, 401, 405)
    assert dict(fast[0][2])[b"x-request-id"] == b"same-id"
    half = len(model.calls) // 2  # the same batches reached the model both times
    assert half > 0 and model.calls[:half] == model.calls[half:]


def test_the_fast_path_reads_a_body_in_chunks_and_refuses_one_over_the_limit(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    _, watcher = fake
    app = create_app(config("fake", max_body_bytes=1000), watcher, rules=suite_rules())

    async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    async def scenario() -> None:
        async with serving(app) as client:
            json_type = {"Content-Type": "application/json"}
            body = json.dumps(one_row("x" * 300)).encode()
            split = await client.post("/invocations", content=chunks(body, 7), headers=json_type)
            assert split.status_code == 200 and len(split.json()["predictions"]) == 1
            big = await client.post("/invocations", content=chunks(b"x" * 1200, 400),
                                    headers=json_type)  # fmt: skip
            assert big.status_code == 413 and "over the limit of 1000" in big.text

    run(scenario)


def test_new_request_ids_are_distinct_and_shaped_like_uuid4_hex(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    _, watcher = fake
    app = create_app(config("fake"), watcher, rules=suite_rules())

    async def scenario() -> None:
        async with serving(app) as client:
            ids = [
                (await client.post("/invocations", json=one_row(f"t{i}"))).headers["x-request-id"]
                for i in range(20)
            ]
            assert len(set(ids)) == 20
            assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)

    run(scenario)


# --- admission by the event loop's lag ---------------------------------------------------


def test_a_loop_that_stays_behind_refuses_requests_until_it_catches_up(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    model, watcher = fake
    app = create_app(config("fake", slo_ms=50), watcher, rules=suite_rules())
    server = app.state.serving

    async def scenario() -> None:
        async with serving(app) as client:
            lag = server.loop_lag
            lag.stop()  # the figures below are the test's, not the probe's
            for _ in range(lag.window):
                lag.observe(20.0)  # three turns of 20 ms: past the 50 ms objective
            shed = await client.post("/invocations", json=one_row("hello"))
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            assert "50 ms objective" in shed.json()["message"]
            lag.observe(1.0)  # one quick turn: the loop has caught up
            answered = await client.post("/invocations", json=one_row("hello"))
            assert answered.status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "mlsys_serve_shed_total") == 1
            assert metric(text, "mlsys_serve_loop_lag_seconds") == pytest.approx(0.001)
            assert metric(text, "mlsys_serve_loop_lag_worst_seconds") >= 0.02

    run(scenario)
    assert model.calls == [["hello"]]


def test_one_late_turn_of_the_loop_refuses_nothing(fake: tuple[FakeModel, ModelWatcher]) -> None:
    _, watcher = fake
    app = create_app(config("fake", slo_ms=50), watcher, rules=suite_rules())
    server = app.state.serving

    async def scenario() -> None:
        async with serving(app) as client:
            lag = server.loop_lag
            lag.stop()
            for wait_ms in [0.5] * (lag.window - 1) + [500.0]:
                lag.observe(wait_ms)
            answer = await client.post("/invocations", json=one_row("hello"))
            assert answer.status_code == 200

    run(scenario)


# --- several workers ---------------------------------------------------------------------


def test_a_worker_that_does_not_answer_fails_the_scrape_and_the_reload(
    registry: Registry, tmp_path: Path
) -> None:
    from mlsys.serving.peers import WORKER_ONLY, Peers

    version = registry.register("peers", "ham")
    watcher = ModelWatcher(registry.uri, "peers", poll_s=0)
    watcher.start()
    gone = str(tmp_path / "worker-1.sock")  # no worker listens there
    app = create_app(
        config("peers", registry), watcher, rules=suite_rules(), peers=Peers(0, 2, (gone,))
    )

    async def scenario() -> None:
        async with serving(app) as client:
            scrape = await client.get("/metrics")
            assert scrape.status_code == 503 and gone in scrape.json()["message"]
            reload = await client.post("/admin/reload")
            assert reload.status_code == 500
            workers = reload.json()["workers"]
            assert [(w["worker"], w["status"]) for w in workers] == [(0, 200), (1, 500)]
            assert workers[0]["version"] == version
            assert "worker 1 did not answer" in reload.json()["message"]
            # Asked for itself alone (as the other workers ask), it answers, uncounted.
            own = await client.get("/metrics", headers={WORKER_ONLY: "1"})
            assert own.status_code == 200
            assert metric(own.text, "mlsys_serve_workers") == 1
            assert metric(own.text, "mlsys_serve_requests_total", path="/metrics", code="503") == 1
            with pytest.raises(KeyError):
                metric(own.text, "mlsys_serve_requests_total", path="/metrics", code="200")
            alone = await client.post("/admin/reload", headers={WORKER_ONLY: "1"})
            assert alone.status_code == 200 and "workers" not in alone.json()

    run(scenario)
    watcher.close()


def test_a_text_classifier_is_scored_without_frames_and_answers_the_same(
    registry: Registry,
) -> None:
    import dataclasses

    version = registry.register("records", "spam")
    model = load_version(registry.uri, "records", version)
    assert model.score_texts is not None  # TextClassifierModel.predict_records
    through_frames = dataclasses.replace(model, score_texts=None)
    texts = [*TEXTS, *(f"comment {i}: see http://x.io/{i}" for i in range(100))]
    got = model.records({"text": texts})
    assert got == through_frames.records({"text": texts})  # exactly, not approximately
    assert got[0]["label"] == "spam" and list(got[0]) == list(
        registry.expected("records", version, texts[:1]).columns
    )


# --- refusals from the HTTP protocol -------------------------------------------------------


class _Uvicorn:
    """``app`` under uvicorn on a free port of 127.0.0.1, in a thread, with the server's
    HTTP protocol (``early``: refusing overloaded requests from their headers)."""

    def __init__(self, app: Starlette, early: bool) -> None:
        import uvicorn

        from mlsys.serving.protocol import http_protocol

        shed = app.state.serving.shed_early if early else None
        self.reached: list[str] = []  # the paths of the requests that reached the app

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.reached.append(scope["path"])
            await app(scope, receive, send)

        self.server = uvicorn.Server(
            uvicorn.Config(
                counted, host="127.0.0.1", port=0, http=http_protocol(shed), lifespan="on",
                log_config=None, log_level="warning", access_log=False,
            )
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Uvicorn:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _raw_post(body: bytes, key: str | None = KEY, close: bool = False) -> bytes:
    head = b"POST /invocations HTTP/1.1\r\nHost: serve\r\nContent-Type: application/json\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n".encode()
    if close:
        head += b"Connection: close\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _read_answers(sock: Any, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP answers read from ``sock``: status, headers (lower-case), body."""
    reader = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(reader.readline().split()[1])
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        answers.append((status, headers, reader.read(int(headers["content-length"]))))
    return answers


def test_an_overloaded_request_is_refused_from_its_headers_as_the_app_refuses_it(
    fake: tuple[FakeModel, ModelWatcher],
) -> None:
    """The HTTP protocol refuses an overloaded ``POST /invocations`` before its body, with
    the answer the app gives (status, headers, body), counted the same; the body is
    discarded and the connection goes on; a request without the key still gets 401, and
    one asking to close is closed."""
    import socket

    model, _ = fake
    bodies = {}
    for early in (False, True):
        watcher = ModelWatcher(None, "fake", poll_s=0)
        watcher.current = model.loaded()
        app = create_app(config("fake", slo_ms=50), watcher, rules=suite_rules())
        batcher = app.state.serving.batcher
        with (
            _Uvicorn(app, early) as served,
            socket.create_connection(("127.0.0.1", served.port)) as sock,
        ):
            port = served.port
            batcher.estimate.observe(rows=1, service_ms=80.0)  # one row: over 50 ms
            row = json.dumps(one_row("hello")).encode()
            # Pipelined: the refused request's body, then two more requests, in one write.
            sock.sendall(_raw_post(row) + _raw_post(row) + _raw_post(row, key=None))
            (shed, shed_headers, shed_body), (again, _, _), (unauthorized, _, _) = _read_answers(
                sock, 3
            )
            assert (shed, again, unauthorized) == (503, 503, 401)
            bodies[early] = (shed_headers, shed_body)
            batcher.estimate.batch_ms = 1.0  # calm again
            sock.sendall(_raw_post(row))
            [(answered, _, predicted)] = _read_answers(sock, 1)
            assert answered == 200 and json.loads(predicted)["predictions"][0]["label"] == "spam"
            with socket.create_connection(("127.0.0.1", port)) as metrics_sock:
                metrics_sock.sendall(
                    f"GET /metrics HTTP/1.1\r\nHost: serve\r\nAuthorization: Bearer {KEY}\r\n"
                    "\r\n".encode()
                )
                [(_, _, text)] = _read_answers(metrics_sock, 1)
            assert metric(text.decode(), "mlsys_serve_shed_total") == 2
            codes = {
                code: metric(text.decode(), "mlsys_serve_requests_total", path="/invocations",
                             code=code)
                for code in ("200", "401", "503")
            }  # fmt: skip
            assert codes == {"200": 1, "401": 1, "503": 2}
            batcher.estimate.batch_ms = 80.0
            sock.sendall(_raw_post(row, close=True))
            [(closing, closing_headers, _)] = _read_answers(sock, 1)
            assert closing == 503 and closing_headers["connection"] == "close"
            assert sock.recv(1) == b""  # closed by the server
        # Refused early, the three overloaded requests never reached the app.
        invocations = served.reached.count("/invocations")
        assert invocations == (2 if early else 5), served.reached
    # The same refusal either way, but for the date.
    for headers, _ in bodies.values():
        headers.pop("date")
    assert bodies[True] == bodies[False]
    assert bodies[True][0]["retry-after"] == "1"
    assert "50 ms objective" in json.loads(bodies[True][1])["message"]
    assert model.calls == [["hello"], ["hello"]]
