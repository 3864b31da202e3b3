"""A run whose creation meets an MLflow outage is created once: a server that created it
and died before answering leaves no second, forever-RUNNING run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

import tasks.retry as retry
import tasks.tracking as tracking
from tasks.retry import Outage


class LostAnswer(Exception):
    """The server created the run, then died while answering."""


class FakeClient:
    runs: ClassVar[list[SimpleNamespace]] = []
    lose_first_answer = True

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def create_run(self, experiment_id: str, *, tags: dict[str, str], run_name: Any) -> Any:
        run = SimpleNamespace(info=SimpleNamespace(run_id=f"r{len(self.runs)}"), tags=tags)
        FakeClient.runs.append(run)
        if FakeClient.lose_first_answer and len(FakeClient.runs) == 1:
            raise LostAnswer("Connection broken: IncompleteRead")
        return run

    def search_runs(self, experiment_ids: list[str], query: str, max_results: int) -> list[Any]:
        token = query.split("'")[1]
        return [r for r in FakeClient.runs if r.tags.get(tracking.TAG_CREATE_TOKEN) == token]


@pytest.fixture
def fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    FakeClient.runs = []
    monkeypatch.setattr(tracking, "MlflowClient", FakeClient)
    outage = Outage("MLflow", "http://127.0.0.1:5000", "unreachable", "IncompleteRead")
    monkeypatch.setattr(
        retry, "classify", lambda exc: outage if isinstance(exc, LostAnswer) else None
    )
    monkeypatch.setattr(retry, "_sleep", lambda seconds: None)
    return FakeClient


def test_a_run_created_before_the_answer_was_lost_is_taken_not_made_again(
    fake_mlflow: type[FakeClient],
) -> None:
    fake_mlflow.lose_first_answer = True
    run = tracking.create_run_once("http://mlflow", "1", tags={"a": "b"}, run_name="x")
    assert len(fake_mlflow.runs) == 1
    assert run is fake_mlflow.runs[0]
    assert run.tags["a"] == "b" and len(run.tags[tracking.TAG_CREATE_TOKEN]) == 32


def test_without_an_outage_one_call_creates_one_run(fake_mlflow: type[FakeClient]) -> None:
    fake_mlflow.lose_first_answer = False
    first = tracking.create_run_once("http://mlflow", "1", tags={}, run_name=None)
    second = tracking.create_run_once("http://mlflow", "1", tags={}, run_name=None)
    assert [r.info.run_id for r in fake_mlflow.runs] == ["r0", "r1"]
    assert first.tags[tracking.TAG_CREATE_TOKEN] != second.tags[tracking.TAG_CREATE_TOKEN]
