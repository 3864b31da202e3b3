"""Every deployment in prefect.yaml resolves to a flow whose run form (the parameter schema
Prefect builds from the signature and docstring, as `prefect deploy` sends it to the UI)
gives each parameter a default and a description."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _form(entrypoint: str) -> dict[str, Any]:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return parameter_schema(getattr(module, name).fn).model_dump_for_openapi()


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_each_parameter_has_a_default_and_a_description(deployment: dict[str, Any]) -> None:
    form = _form(deployment["entrypoint"])
    properties = form["properties"]
    assert properties, f"{deployment['name']} has no parameters"
    undocumented = sorted(k for k, v in properties.items() if not v.get("description"))
    without_default = sorted(k for k, v in properties.items() if "default" not in v)
    assert undocumented == [], f"{deployment['name']}: no description for {undocumented}"
    assert without_default == [], f"{deployment['name']}: no default for {without_default}"
    # Values set in prefect.yaml must be parameters of the flow.
    unknown = sorted(set(deployment.get("parameters") or {}) - set(properties))
    assert unknown == [], f"{deployment['name']}: prefect.yaml sets unknown {unknown}"


def test_end_to_end_groups_its_options_as_pydantic_models_with_described_fields() -> None:
    form = _form("flows/end_to_end.py:end_to_end")
    for group in ("LabelOptions", "TrainOptions", "InferOptions"):
        fields = form["definitions"][group]["properties"]
        assert all(field.get("description") for field in fields.values()), group
    assert form["properties"]["training"]["default"]["char_ngrams"] == [1, 4]
