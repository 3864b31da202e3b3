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


def test_run_forms_offer_the_defined_datasets_and_lf_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.forms import dataset_choices, with_choices

    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "dataset.yaml").write_text(
        "name: reviews\ncolumns: {text: body, label: stars}\nclasses: [bad, good]\n"
    )
    (folder / "lfs.py").write_text(
        "from mlsys.labeling.lf import keyword_lf\n"
        "LF_SETS = {'default': [keyword_lf(['great'], 'good')], 'strict': []}\n"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.yaml").write_text("name: broken\nclasses: [a]\n")
    monkeypatch.setenv("MLSYS_DATASETS_DIR", str(tmp_path))
    said: list[str] = []
    datasets, lf_sets = dataset_choices(said.append)
    assert datasets == ["reviews", "youtube-spam"]
    assert lf_sets == ["default", "strict", "tutorial", "extended"]
    assert len(said) == 1 and "leaving out dataset 'broken'" in said[0]

    form = with_choices(_form("flows/end_to_end.py:end_to_end"), datasets, lf_sets)
    assert form["properties"]["dataset"]["enum"] == datasets
    assert form["definitions"]["LabelOptions"]["properties"]["lf_set"]["enum"] == lf_sets
    assert "enum" not in form["properties"]["batch"]
    weak_label = with_choices(_form("flows/weak_label.py:weak_label"), datasets, lf_sets)
    assert weak_label["definitions"]["LabelOptions"]["properties"]["lf_set"]["enum"] == lf_sets
