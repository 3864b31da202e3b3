"""The deployments' run forms list the defined datasets and their LF sets.

Prefect builds a deployment's run form from the flow's signature when `prefect deploy`
runs. Flows take ``dataset: str`` and ``lf_set: str`` (so that adding a dataset needs no
change to any flow), which the form would show as free text; after every deploy,
:func:`offer_dataset_choices` turns those fields into drop-downs of what ``datasets/``
holds now. A dataset added later appears after the next ``mlsys stack up``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from mlsys.data.definition import DatasetError, list_datasets, load_dataset
from mlsys.settings import Settings

__all__ = ["dataset_choices", "offer_dataset_choices", "with_choices"]

Say = Callable[[str], None]


def dataset_choices(say: Say = print, search: str | None = None) -> tuple[list[str], list[str]]:
    """The defined datasets, and the LF set names any of them defines (``default``
    first). A dataset whose definition or LF module is broken is left out, with a word.

    ``search`` (folders joined by ``:``, as ``MLSYS_DATASETS_DIR``) is searched before the
    project's datasets/, as the stack's worker searches it."""
    datasets: list[str] = []
    lf_sets: dict[str, None] = {"default": None}
    for name in list_datasets(search=search):
        try:
            names = load_dataset(name, search=search).lf_set_names()
        except DatasetError as exc:
            say(f"  run forms       leaving out dataset {name!r}: {exc}")
            continue
        datasets.append(name)
        lf_sets.update(dict.fromkeys(names))
    return datasets, list(lf_sets)


def _fields(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (name, property) of the form, top-level and inside grouped options."""
    yield from schema.get("properties", {}).items()
    for definition in schema.get("definitions", {}).values():
        yield from definition.get("properties", {}).items()


def with_choices(schema: dict[str, Any], datasets: list[str], lf_sets: list[str]) -> dict[str, Any]:
    """``schema`` with ``dataset`` and ``lf_set`` string fields offering those choices
    (fields of other names and types left as they are), and no parameter beyond the
    flow's own: the server then refuses a run with an unknown parameter (a typo) at
    once, from the UI or the API, instead of the run crashing at start."""
    out = copy.deepcopy(schema)
    out["additionalProperties"] = False
    for name, prop in _fields(out):
        choices = {"dataset": datasets, "lf_set": lf_sets}.get(name)
        if choices and prop.get("type") == "string":
            prop["enum"] = list(choices)
    return out


def offer_dataset_choices(settings: Settings, say: Say = print) -> int:
    """Update every deployment whose form has a ``dataset`` or ``lf_set`` field; returns
    how many were updated."""
    from prefect.client.schemas.actions import DeploymentUpdate

    from infra.prefect_api import prefect_client

    datasets, lf_sets = dataset_choices(say, settings.datasets_dir)
    updated = 0
    with prefect_client(settings) as client:
        for deployment in client.read_deployments():
            schema = deployment.parameter_openapi_schema or {}
            if not any(name in ("dataset", "lf_set") for name, _ in _fields(schema)):
                continue
            new = with_choices(schema, datasets, lf_sets)
            if new != schema:
                client.update_deployment(
                    deployment.id, DeploymentUpdate(parameter_openapi_schema=new)
                )
                updated += 1
    offered = ", ".join(datasets) or "(none)"
    say(f"  run forms       datasets: {offered}; LF sets: {', '.join(lf_sets)}")
    return updated
