"""``TrackedFlow``, the opening and closing every flow shares: the settings read once, the
dataset's definition on first use, the MLflow run opened with the parameters given, and
the summary artifact published under the key named at the opening; steps that end
without it fail the run. Every flow in flows/ opens and closes through it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tasks.tracking as tracking

FLOWS = Path(__file__).resolve().parents[2] / "flows"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """What the helper asked of MLflow, Prefect and the dataset definitions."""
    calls: dict[str, list[Any]] = {"runs": [], "artifacts": [], "definitions": []}
    settings = SimpleNamespace(tracking_uri="http://mlflow.invalid")

    @contextmanager
    def fake_tracking(given: Any, *, params: Mapping[str, Any]) -> Iterator[Any]:
        run = {"settings": given, "params": dict(params), "status": "RUNNING"}
        calls["runs"].append(run)
        try:
            yield SimpleNamespace(run_id="r1")
        except BaseException:
            run["status"] = "FAILED"
            raise
        run["status"] = "FINISHED"

    def fake_load_dataset(name: str) -> Any:
        calls["definitions"].append(name)
        return SimpleNamespace(name=name)

    monkeypatch.setattr(tracking.Settings, "load", classmethod(lambda cls: settings))
    monkeypatch.setattr(tracking, "flow_run_tracking", fake_tracking)
    monkeypatch.setattr(tracking, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(
        tracking, "create_markdown_artifact", lambda **kw: calls["artifacts"].append(kw)
    )
    calls["settings"] = [settings]
    return calls


def test_opening_and_closing(recorded: dict[str, list[Any]]) -> None:
    tracked = tracking.TrackedFlow("demo-summary", "tiny")
    assert tracked.settings is recorded["settings"][0]
    assert recorded["definitions"] == []  # not before it is asked for
    assert tracked.definition.name == "tiny"
    assert tracked.definition is tracked.definition
    assert recorded["definitions"] == ["tiny"]
    with tracked.track({"dataset": "tiny"}) as run:
        assert run.run_id == "r1"
        tracked.summarize("# Demo\n", description="what happened")
    assert recorded["runs"] == [
        {"settings": tracked.settings, "params": {"dataset": "tiny"}, "status": "FINISHED"}
    ]
    assert recorded["artifacts"] == [
        {"key": "demo-summary", "markdown": "# Demo\n", "description": "what happened"}
    ]


def test_steps_without_a_summary_fail_the_run(recorded: dict[str, list[Any]]) -> None:
    tracked = tracking.TrackedFlow("demo-summary")
    with pytest.raises(RuntimeError, match="demo-summary"), tracked.track({}):
        pass
    assert recorded["runs"][0]["status"] == "FAILED"
    assert recorded["artifacts"] == []


def test_a_failing_step_fails_the_run(recorded: dict[str, list[Any]]) -> None:
    tracked = tracking.TrackedFlow("demo-summary")
    with pytest.raises(KeyError), tracked.track({}):
        raise KeyError("step")
    assert recorded["runs"][0]["status"] == "FAILED"


def test_no_definition_without_a_dataset(recorded: dict[str, list[Any]]) -> None:
    with pytest.raises(ValueError, match="without a dataset"):
        _ = tracking.TrackedFlow("demo-summary").definition


SUBFLOWS_ONLY = ("weak_label_parts.py",)
"""Modules of subflows only, which run inside their parent's tracked run (weak_label's)."""


@pytest.mark.parametrize("path", sorted(FLOWS.glob("*.py")), ids=lambda p: p.name)
def test_every_flow_opens_and_closes_through_it(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    for own in ("Settings.load(", "flow_run_tracking", "create_markdown_artifact"):
        assert own not in source, f"{path.name}: {own} (use tasks.tracking.TrackedFlow)"
    flows = source.count("@flow(name=")
    tracked = source.count("TrackedFlow(")
    assert tracked <= flows
    if path.name not in ("__init__.py", "options.py", *SUBFLOWS_ONLY):
        assert tracked >= 1
