"""A new user's own dataset, end to end on the real stack: `mlsys dataset init` on a raw JSON
Lines file of 9-class relations (gold rows from its `split` column) and on a header-less TSV;
an LF module the user writes; the end_to_end deployment run by the worker to a registered
model scored on the dataset's test rows, answering with class names."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from infra.runs import mlflow_run_of, trigger
from mlsys.data import read_parquet_bytes
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import get_bytes, list_keys
from mlsys.models.text import proba_columns
from mlsys.settings import Settings

pytestmark = pytest.mark.integration

RELATIONS = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "semeval-raw" / "relations.jsonl"
)
LFS = Path(__file__).parent / "data" / "semeval_lfs.py"
NAME = "it-relations"


def _init(*args: str) -> str:
    result = CliRunner().invoke(app, ["dataset", "init", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def relations(stack: Settings) -> Path:
    """The relations dataset as a user defines it: `mlsys dataset init`, then their LFs."""
    assert stack.datasets_dir is not None
    root = Path(stack.datasets_dir)
    _init(NAME, "--source", str(RELATIONS), "--root", str(root), "--text", "sentence",
          "--keep", "entity1,entity2")  # fmt: skip
    folder = root / NAME
    shutil.copy(LFS, folder / "lfs.py")
    return folder


def test_init_proposes_the_relations_definition(relations: Path) -> None:
    written = yaml.safe_load((relations / "dataset.yaml").read_text())
    definition = load_dataset(relations)
    assert definition.k == 9 and definition.classes[0] == "Cause-Effect"
    assert written["columns"]["text"] == "sentence"
    assert (definition.gold.by, definition.gold.column) == ("column", "split")
    assert (list(definition.gold.dev), list(definition.gold.test)) == (["valid"], ["test"])
    assert definition.metric in ("accuracy", "macro_f1")
    for suite in ("raw", "training", "serving"):
        assert (relations / "suites" / f"{suite}.json").is_file(), suite


def test_end_to_end_deployment_trains_the_users_dataset(stack: Settings, relations: Path) -> None:
    definition = load_dataset(relations)
    params = {
        "dataset": NAME,
        "batch": "it-rel-1",
        "training": {"epochs": 6, "hidden": [], "lr": 0.03},
    }
    outcome = trigger(stack, "end_to_end/end_to_end", params, timeout_s=900,
                      say=lambda line: None)  # fmt: skip
    assert outcome.state == "COMPLETED", outcome.message
    client, parent = mlflow_run_of(stack, outcome.flow_run_id)
    metric = f"test_{definition.metric}"
    assert metric in parent.data.metrics

    # The model is scored on the dataset's own test rows: the `split` values "test".
    rows = pd.read_json(RELATIONS, lines=True)
    test = rows[rows["split"] == "test"]
    model_name = definition.registered_model_name
    version = client.get_model_version_by_alias(model_name, "champion")
    train_run = client.get_run(version.run_id)
    assert train_run.data.metrics["test_rows"] == len(test) == 600
    assert version.tags["metric"] == definition.metric

    mlflow.set_tracking_uri(stack.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    predicted = model.predict(pd.DataFrame({"text": test["sentence"].astype(str)}))
    assert set(predicted["label"]) <= set(definition.classes)
    # One probability column per class, named after it ("Cause-Effect": proba_Cause_Effect).
    assert [c for c in predicted.columns if c.startswith("proba_")] == proba_columns(
        definition.classes
    )
    assert "proba_Cause_Effect" in predicted.columns
    accuracy = float(np.mean(predicted["label"].to_numpy() == test["relation"].to_numpy()))
    assert accuracy == pytest.approx(train_run.data.metrics["test_accuracy"], abs=1e-9)
    # Better than always answering the most frequent class of the test rows.
    majority = float(test["relation"].value_counts(normalize=True).iloc[0])
    assert accuracy > majority + 0.05, (accuracy, majority)

    # Every row that ingest kept is scored by batch_infer, named by class.
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    stages = {c.data.tags["prefect.flow_name"]: c.data.metrics for c in children}
    prefix = f"predictions/{NAME}/it-rel-1/"
    keys = [k for _, k in list_keys(stack.s3_client(), stack.bucket, prefix, ".parquet")]
    parts = pd.concat(
        read_parquet_bytes(get_bytes(stack.s3_client(), stack.s3_uri(k))) for k in keys
    )
    scored = stages["batch_infer"]
    assert scored["rows_in"] == stages["ingest"]["rows_out"] == len(rows)
    assert len(parts) == scored["rows_out"] == scored["rows_in"] - scored["rows_quarantined"]
    assert set(parts["label"]) <= set(definition.classes)


def test_init_reads_a_headerless_tsv_and_ingest_loads_it(
    stack_env: Settings, tmp_path: Path
) -> None:
    from flows.ingest import ingest

    rng = np.random.default_rng(5)
    words = {"pos": ["great", "love", "fine"], "neg": ["awful", "hate", "broken"]}
    lines = []
    for i in range(120):
        label = "pos" if i % 3 else "neg"
        text = " ".join(rng.choice(words[label], size=4)) + f" item {i}"
        lines.append(f"m{i:04d}\t{label}\t{text}")
    source = tmp_path / "reviews.tsv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert stack_env.datasets_dir is not None
    root = Path(stack_env.datasets_dir)
    _init("it-reviews", "--source", str(source), "--root", str(root), "--format", "tsv",
          "--no-header", "--columns", "id,label,text")  # fmt: skip
    definition = load_dataset(root / "it-reviews")
    assert definition.classes == ("neg", "pos") and definition.positive == "neg"
    assert definition.metric == "f1"  # a third of the rows are the positive class "neg"
    uri = ingest(dataset="it-reviews", batch="it-tsv-1")
    batch = read_parquet_bytes(get_bytes(stack_env.s3_client(), uri))
    assert len(batch) == 120
    assert batch["id"].tolist()[:2] == ["m0000", "m0001"]
    assert batch["label"].tolist()[:3] == [0, 1, 1]  # neg is class 0, pos class 1
