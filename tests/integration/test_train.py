"""The train flow against the real stack: a deployment run by the worker trains on a labeled
batch in S3, registers a raw-text pyfunc as @challenger tied to its flow run; resume from a
checkpoint; the GPipe trainer; bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.options import TrainOptions
from infra.runs import mlflow_run_of, trigger
from mlsys.data import write_parquet_bytes
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import put_bytes
from mlsys.labeling import apply_lfs, build_labeled_batch, fit_labeler, gold_array
from mlsys.labeling.split import gold_split
from mlsys.settings import Settings
from mlsys.training.trainers import GPipeTrainer, SpillTrainer
from tests.conftest import read_youtube

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def labeled(stack: Settings, youtube_dir: Path) -> tuple[str, pd.DataFrame]:
    """A labeled batch made by the weak-labeling engines, in the stack's S3 (from unique
    comment ids, as the raw suite leaves them)."""
    raw = read_youtube(str(youtube_dir))
    youtube = load_dataset("youtube-spam")
    df = gold_split(raw[~raw["comment_id"].duplicated()], youtube.gold)
    L = apply_lfs(df, youtube.lf_set("tutorial"), n_jobs=1).matrix
    y = gold_array(df)
    train, dev = (df["split"] == "train").to_numpy(), (df["split"] == "dev").to_numpy()
    tuning = fit_labeler(L[train], L_dev=L[dev], y_dev=y[dev], cardinality=2)
    frame = build_labeled_batch(df, L, tuning.best).frame
    uri = stack.s3_uri("labeled/youtube-spam/it-train.parquet")
    put_bytes(stack.s3_client(), uri, write_parquet_bytes(frame))
    return uri, frame


def _plain(**options: Any) -> TrainOptions:
    """These options without choosing on dev: the given epochs and widths are trained."""
    return TrainOptions(choose=False, **options)


def test_deployment_trains_registers_and_links_the_model(
    stack: Settings, labeled: tuple[str, pd.DataFrame]
) -> None:
    uri, frame = labeled
    params = {
        "labeled_batch": uri,
        "training": {"epochs": 3, "choose": False},
        "model_name": "it-spam",
    }
    outcome = trigger(stack, "train/train", params, timeout_s=400, say=lambda line: None)
    assert outcome.state == "COMPLETED", outcome.message

    client, run = mlflow_run_of(stack, outcome.flow_run_id)
    metrics = run.data.metrics
    assert metrics["test_rows"] == 250
    # 3 epochs reach 0.952 (238 of 250) in each of 3 runs; the bound leaves 3 rows for
    # another machine's floating point.
    assert metrics["test_accuracy"] >= 0.94
    assert metrics["rows_train"] == int(
        (frame["split"].isin(["train", "dev"]) & frame["label"].notna()).sum()
    )
    assert metrics["log_register_seconds"] < 30  # docs/flows.md states what it measures here
    assert metrics["system/cpu_utilization_percentage"] >= 0  # MLflow's system metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [0, 1, 2]
    assert losses[-1].value < losses[0].value
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {f"checkpoints/epoch-000{i}.pt" for i in range(3)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {"train/confusion_test.png", "train/loss.png"} <= plots

    version = client.get_model_version_by_alias("it-spam", "challenger")
    assert version.run_id == run.info.run_id
    assert version.tags["prefect.flow_run_id"] == outcome.flow_run_id
    assert version.tags["prefect.flow_run_url"] == outcome.prefect_url

    # The registered model takes raw text; its test accuracy is the one the run logged.
    mlflow.set_tracking_uri(stack.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/it-spam@challenger")
    test = frame[frame["split"] == "test"]
    predicted = model.predict(pd.DataFrame({"text": test["text"].astype(str)}))
    assert list(predicted.columns) == ["label", "probability", "proba_ham", "proba_spam"]
    names = np.array(["ham", "spam"])[test["gold_label"].to_numpy(dtype=np.int64)]
    accuracy = float(np.mean(predicted["label"].to_numpy() == names))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert metrics["test_metric"] == metrics["test_accuracy"]  # youtube-spam's metric
    assert version.tags["metric"] == "accuracy"
    assert {"test_precision_spam", "test_recall_ham", "test_macro_f1"} <= set(metrics)
    signature = model.metadata.get_input_schema().to_dict()
    assert signature == [{"type": "string", "name": "text", "required": True}]


def test_resume_continues_from_the_last_checkpoint(
    stack_env: Settings, labeled: tuple[str, pd.DataFrame]
) -> None:
    from flows.train import train

    uri, _ = labeled
    first = train(labeled_batch=uri, training=_plain(epochs=2), model_name="it-resume")
    client = MlflowClient(tracking_uri=stack_env.tracking_uri)
    first_run = client.get_model_version("it-resume", first["version"]).run_id
    second = train(
        labeled_batch=uri,
        training=_plain(epochs=3),
        model_name="it-resume",
        resume_from_run=first_run,
    )
    second_run = client.get_model_version("it-resume", second["version"]).run_id
    steps = [m.step for m in client.get_metric_history(second_run, "train_loss")]
    assert steps == [2]  # epochs 0 and 1 came from the checkpoint
    checkpoints = {a.path for a in client.list_artifacts(second_run, "checkpoints")}
    assert checkpoints == {"checkpoints/epoch-0002.pt"}
    assert client.get_model_version_by_alias("it-resume", "challenger").version == "2"


def test_gpipe_trainer_trains_the_same_model_family(
    stack_env: Settings, labeled: tuple[str, pd.DataFrame]
) -> None:
    from flows.train import train

    uri, _ = labeled
    registered = train(
        labeled_batch=uri,
        training=_plain(
            trainer=GPipeTrainer(stages=2, microbatches=4), epochs=2, batch_size=64, hidden=[64, 32]
        ),
        model_name="it-gpipe",
    )
    client = MlflowClient(tracking_uri=stack_env.tracking_uri)
    run = client.get_run(client.get_model_version("it-gpipe", registered["version"]).run_id)
    assert run.data.params["trainer"] == "gpipe"
    # 2 epochs of this smaller model reach 0.932 (233 of 250) in each of 4 runs; the
    # bound leaves 3 rows for another machine's floating point.
    assert run.data.metrics["test_accuracy"] >= 0.92
    assert 0.0 < run.data.metrics["pipeline_bubble_measured"] < 1.0
    assert run.data.metrics["pipeline_bubble_theory"] == pytest.approx(1 / 5)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert "train/pipeline_schedule.png" in plots


def test_a_raw_batch_is_refused_naming_the_missing_columns(
    stack_env: Settings, youtube_dir: Path
) -> None:
    from flows.train import train

    raw = read_youtube(str(youtube_dir))
    uri = stack_env.s3_uri("raw/youtube-spam/it-train-raw.parquet")
    put_bytes(stack_env.s3_client(), uri, write_parquet_bytes(raw))
    with pytest.raises(ValueError, match=r"not a labeled batch .* lacks gold_label, label_source"):
        train(labeled_batch=uri, training=_plain(epochs=1), model_name="it-bad")


def test_spill_trainer_trains_in_shards_within_the_budget(
    stack_env: Settings, labeled: tuple[str, pd.DataFrame]
) -> None:
    from flows.train import train

    uri, _ = labeled
    registered = train(
        labeled_batch=uri,
        training=_plain(trainer=SpillTrainer(budget_mb=96), hidden=[64], epochs=2),
        model_name="it-spill",
    )
    client = MlflowClient(tracking_uri=stack_env.tracking_uri)
    run = client.get_run(client.get_model_version("it-spill", registered["version"]).run_id)
    assert run.data.params["trainer"] == "spill"
    assert run.data.params["budget_mb"] == "96"
    # The 32768-feature input layer of 64 units with Adam and its activations needs about
    # 64 MB: it takes a shard alone, the rest of the model a second one.
    assert run.data.metrics["spill_shards"] == 2
    # 2 epochs reach 0.952 (238 of 250) in each of 4 runs; 3 rows of margin.
    assert run.data.metrics["test_accuracy"] >= 0.94
    plan = client.download_artifacts(run.info.run_id, "train/spill_plan.txt")
    assert Path(plan).read_text().startswith("shard 0: layers 0..0")


def test_select_models_ranks_a_grid_and_registers_the_best_on_dev(
    stack_env: Settings, labeled: tuple[str, pd.DataFrame]
) -> None:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    uri, _ = labeled
    params = {
        "labeled_batch": uri,
        "lrs": [0.01, 0.03],
        "widths": [16],
        "depths": [0, 1],
        "epochs": 2,
        "workers": 2,
        "model_name": "it-select",
    }
    outcome = trigger(stack_env, "select_models/select_models", params, timeout_s=500,
                      say=lambda line: None)  # fmt: skip
    assert outcome.state == "COMPLETED", outcome.message
    client, parent = mlflow_run_of(stack_env, outcome.flow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    names = sorted(c.info.run_name for c in children)
    assert names == ["lr0.01-linear", "lr0.01-w16-d1", "lr0.03-linear", "lr0.03-w16-d1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["dev_rows"] > 100
        assert child.data.metrics["test_rows"] == 250
        losses = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in losses] == [0, 1]
    best = max(children, key=lambda c: (c.data.metrics["dev_accuracy"],
                                        -c.data.metrics["dev_log_loss"]))  # fmt: skip
    version = client.get_model_version_by_alias("it-select", "challenger")
    assert version.run_id == best.info.run_id
    assert parent.data.tags["mlsys.best_model"] == best.info.run_name
    gantt = {a.path for a in client.list_artifacts(parent.info.run_id, "selection")}
    assert gantt == {"selection/sharp_gantt.png"}

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["model-ranking"]))
        )
    tables = [a for a in artifacts if str(a.flow_run_id) == outcome.flow_run_id]
    assert len(tables) == 1
    table = tables[0].data if isinstance(tables[0].data, list) else json.loads(tables[0].data)
    assert [row["rank"] for row in table] == [1, 2, 3, 4]
    assert table[0]["model"] == best.info.run_name
    accuracies = [row["dev_accuracy"] for row in table]
    assert accuracies == sorted(accuracies, reverse=True)
