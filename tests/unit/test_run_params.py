"""`mlsys run` checks parameters against the deployment's form before any run exists, and
asks the Prefect API patiently, creating a run at most once.

The forms are the parameter schemas Prefect builds from the real flows (as `prefect
deploy` sends them), with the dataset and LF set choices `infra.forms` adds. No server.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

import infra.runs as runs
from infra.forms import with_choices
from infra.runs import RunError, check_parameters, parse_params, trigger
from mlsys.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def form(entrypoint: str) -> dict[str, Any]:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    schema = parameter_schema(getattr(module, name).fn).model_dump_for_openapi()
    return with_choices(schema, ["youtube-spam", "sms"], ["default", "extended"])


@pytest.fixture(scope="module")
def end_to_end() -> dict[str, Any]:
    return form("flows/end_to_end.py:end_to_end")


def refusal(schema: dict[str, Any], params: dict[str, Any], name: str = "end_to_end") -> str:
    with pytest.raises(RunError) as info:
        check_parameters(schema, params, name)
    return str(info.value)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_the_parameters_prefect_yaml_gives_pass(deployment: dict[str, Any]) -> None:
    check_parameters(form(deployment["entrypoint"]), deployment.get("parameters") or {})


def test_good_parameters_pass(end_to_end: dict[str, Any]) -> None:
    check_parameters(
        end_to_end,
        {
            "dataset": "sms",
            "batch": "20260101",
            "source": None,
            "label": {"lf_set": "extended", "weighting": "per_source"},
            "training": {"trainer": {"kind": "gpipe"}, "epochs": 3, "lr": 0.1, "hidden": [64]},
            "inference": {"workers": None, "chunk_rows": 1000},
            "promote": False,
        },
    )


def test_an_unknown_nested_field_is_refused_naming_it_and_the_known_ones(
    end_to_end: dict[str, Any],
) -> None:
    message = refusal(end_to_end, {"training": {"epoch": 3}})
    assert message == (
        "parameter training.epoch: unknown field; did you mean 'epochs'? (known: trainer, "
        "epochs, batch_size, lr, hidden, dropout, n_features, char_ngrams, use_weights, seed, "
        "choose)"
    )
    assert refusal(end_to_end, {"training": {"nonsense": 3}}).startswith(
        "parameter training.nonsense: unknown field (known: trainer, epochs,"
    )
    assert refusal(end_to_end, {"inference": {"worker": 2}}).startswith(
        "parameter inference.worker: unknown field; did you mean 'workers'?"
    )


def test_an_unknown_parameter_is_refused_naming_it(end_to_end: dict[str, Any]) -> None:
    message = refusal(end_to_end, {"epochs": 3})
    assert message.startswith("parameter epochs: unknown parameter of end_to_end (known: source,")
    assert "did you mean 'promote'?" in refusal(end_to_end, {"promot": True})


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"training": {"epochs": "x"}}, "parameter training.epochs: 'x' is not of type 'integer'"),
        ({"training": {"lr": "fast"}}, "parameter training.lr: 'fast' is not of type 'number'"),
        ({"training": {"hidden": ["a"]}}, "parameter training.hidden[0]: 'a' is not of type"),
        ({"training": {"epochs": 0}}, "parameter training.epochs: 0 is less than the minimum"),
        ({"inference": {"workers": "x"}}, "parameter inference.workers: 'x' is not of type"),
        ({"inference": {"workers": 0}}, "parameter inference.workers: 0 is less than the"),
        ({"training": {"char_ngrams": [1]}}, "parameter training.char_ngrams: [1] is too short"),
        ({"label": "strict"}, "parameter label: 'strict' is not of type 'object'"),
        ({"promote": "yes"}, "parameter promote: 'yes' is not of type 'boolean'"),
        ({"batch": 7}, "parameter batch: 7 is not of type 'string'"),
    ],
)
def test_wrong_types_and_bounds_are_refused_naming_the_field(
    end_to_end: dict[str, Any], params: dict[str, Any], expected: str
) -> None:
    message = refusal(end_to_end, params)
    assert message.startswith(expected), message
    assert "\n" not in message


@pytest.mark.parametrize(
    "params,field,choices",
    [
        (
            {"training": {"trainer": {"kind": "magic"}}},
            "training.trainer.kind",
            "['gpipe', 'plain', 'spill']",
        ),
        ({"label": {"weighting": "equal"}}, "label.weighting", "['calibrated', 'confidence',"),
        ({"dataset": "nope"}, "dataset", "['youtube-spam', 'sms']"),
        ({"label": {"lf_set": "nope"}}, "label.lf_set", "['default', 'extended']"),
    ],
)
def test_values_outside_the_choices_are_refused_naming_them(
    end_to_end: dict[str, Any], params: dict[str, Any], field: str, choices: str
) -> None:
    message = refusal(end_to_end, params)
    assert message.startswith(f"parameter {field}: ")
    assert f"is not one of {choices}" in message


def test_several_problems_are_one_line_each(end_to_end: dict[str, Any]) -> None:
    message = refusal(
        end_to_end, {"promot": True, "training": {"epochs": "x", "bogus": 1}, "dataset": "nope"}
    )
    lines = message.split("\nerror: ")
    assert [line.split(":")[0] for line in lines] == [
        "parameter promot",
        "parameter dataset",
        "parameter training.bogus",
        "parameter training.epochs",
    ]
    assert all("Traceback" not in line for line in lines)


def test_other_flows_are_checked_too() -> None:
    train = form("flows/train.py:train")
    assert refusal(train, {"training": {"trainer": {"kind": "magic"}}}, "train").startswith(
        "parameter training.trainer.kind: 'magic' is not one of ['gpipe', 'plain', 'spill']"
    )
    assert refusal(train, {"training": {"trainer": "gpipe"}}, "train") == (
        'parameter training.trainer: "gpipe" is not an object; give one like {"kind": "gpipe"} '
        "(kind: one of ['gpipe', 'plain', 'spill'])"
    )
    assert refusal(train, {"training": {"trainer": {"kind": "gpipe", "stage": 3}}}, "train") == (
        "parameter training.trainer.stage: unknown field; did you mean 'stages'? "
        "(known: kind, stages, microbatches, hosts, rendezvous)"
    )
    assert refusal(
        train, {"training": {"trainer": {"kind": "spill", "budget_mb": 0}}}, "train"
    ) == ("parameter training.trainer.budget_mb: 0 is less than the minimum of 1")
    assert refusal(train, {"training": {"hiden": [64]}}, "train").startswith(
        "parameter training.hiden: unknown field; did you mean 'hidden'?"
    )
    assert refusal(train, {"promot": False}, "train").startswith(
        "parameter promot: unknown parameter of train; did you mean 'promote'?"
    )
    weak_label = form("flows/weak_label.py:weak_label")
    assert refusal(weak_label, {"label": {"lf_set": "nope"}}).startswith(
        "parameter label.lf_set: 'nope' is not"
    )
    batch_infer = form("flows/batch_infer.py:batch_infer")
    assert refusal(batch_infer, {"inference": {"chunk_rows": "many"}}).startswith(
        "parameter inference.chunk_rows: 'many' is not of type 'integer'"
    )


def test_a_value_written_as_a_number_stays_text_where_the_parameter_is_text(
    end_to_end: dict[str, Any],
) -> None:
    params = parse_params(
        ["batch=20260101", 'training={"epochs": 3}', "dataset=sms", "promote=false", "source=null"],
        end_to_end,
    )
    assert params == {
        "batch": "20260101",
        "training": {"epochs": 3},
        "dataset": "sms",
        "promote": False,
        "source": None,
    }
    assert parse_params(["batch=20260101"]) == {"batch": 20260101}  # without a form: JSON
    with pytest.raises(RunError, match="'epochs' is not KEY=VALUE"):
        parse_params(["epochs"])


def test_the_flows_option_models_forbid_unknown_fields() -> None:
    from flows.end_to_end import end_to_end
    from flows.options import InferOptions, LabelOptions, TrainOptions

    for model, bad in ((TrainOptions, "epoch"), (LabelOptions, "lfset"), (InferOptions, "worker")):
        with pytest.raises(ValidationError, match=bad):
            model(**{bad: 1})
    with pytest.raises(Exception, match="epoch"):
        end_to_end.validate_parameters({"training": {"epoch": 3}})


# ---- trigger against a fake Prefect API ------------------------------------------------------


def http_error(status: int, detail: str = "busy") -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect.test/api/deployments/x/create_flow_run")
    response = httpx.Response(status, json={"detail": detail}, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


class FakeClient:
    """The few calls `trigger` makes; ``create_errors`` are raised by the first creates."""

    def __init__(self, schema: dict[str, Any], create_errors: list[Exception]) -> None:
        self.deployment = SimpleNamespace(
            id="dep-1", parameters={"dataset": "youtube-spam"}, parameter_openapi_schema=schema
        )
        self.create_errors = create_errors
        self.creates: list[dict[str, Any]] = []

    def read_deployment_by_name(self, name: str) -> Any:
        return self.deployment

    def create_flow_run_from_deployment(self, deployment_id: str, **kwargs: Any) -> Any:
        self.creates.append(kwargs)
        if self.create_errors:
            raise self.create_errors.pop(0)
        return SimpleNamespace(id="run-1", name="brave-otter")


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch, end_to_end: dict[str, Any]) -> Iterator[Any]:
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(runs, "_sleep", sleep)
    monkeypatch.setattr(runs, "_clock", lambda: now[0])
    holder = SimpleNamespace(client=None, slept=slept)

    @contextmanager
    def client(settings: Settings) -> Iterator[FakeClient]:
        assert holder.client is not None
        yield holder.client

    monkeypatch.setattr(runs, "_prefect_client", client)
    yield holder


def run(params: list[str]) -> tuple[Any, list[str]]:
    said: list[str] = []
    outcome = trigger(
        Settings(), "end_to_end/end_to_end", params, wait=False, say=said.append, patience_s=60
    )
    return outcome, said


def test_refused_parameters_create_no_run(fake_api: Any, end_to_end: dict[str, Any]) -> None:
    fake_api.client = FakeClient(end_to_end, [])
    with pytest.raises(RunError, match=r"^parameter training\.epoch: unknown field"):
        run(['training={"epoch": 3}'])
    assert fake_api.client.creates == []


def test_a_busy_api_is_asked_again_with_one_idempotency_key(
    fake_api: Any, end_to_end: dict[str, Any]
) -> None:
    fake_api.client = FakeClient(
        end_to_end,
        [
            http_error(503),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            http_error(500),
        ],
    )
    outcome, said = run(["batch=20260101", 'training={"epochs": 2}'])
    assert outcome.flow_run_id == "run-1"
    creates = fake_api.client.creates
    assert len(creates) == 5
    keys = {c["idempotency_key"] for c in creates}
    assert len(keys) == 1 and next(iter(keys)).startswith("mlsys-run-")
    assert creates[-1]["parameters"] == {"batch": "20260101", "training": {"epochs": 2}}
    assert fake_api.slept == [1.0, 2.0, 4.0, 8.0]
    assert len([line for line in said if "busy or unreachable" in line]) == 1


def test_an_api_failing_past_the_patience_is_a_one_line_error(
    fake_api: Any, end_to_end: dict[str, Any]
) -> None:
    fake_api.client = FakeClient(end_to_end, [http_error(503)] * 100)
    with pytest.raises(RunError) as info:
        run([])
    assert str(info.value).startswith(
        "no run of end_to_end/end_to_end created: cannot create the flow run: the Prefect API "
        "at http://127.0.0.1:4200/api kept failing for 60 s (HTTP 503: busy)"
    )
    assert sum(fake_api.slept) == pytest.approx(60)


def test_a_refusal_by_the_server_is_not_tried_again(
    fake_api: Any, end_to_end: dict[str, Any]
) -> None:
    fake_api.client = FakeClient(end_to_end, [http_error(409, "Error creating flow run: nope")])
    with pytest.raises(RunError, match=r"refused the run of end_to_end/end_to_end: HTTP 409: "):
        run([])
    assert len(fake_api.client.creates) == 1
    assert fake_api.slept == []
