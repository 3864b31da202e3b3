"""train_digits and video_infer against the real stack: the CNN registered as a pyfunc and
rebuilt as layers, incremental inference over a video, predictions in S3, MLflow metrics."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from infra.runs import mlflow_run_of, trigger
from mlsys.data import read_parquet_bytes
from mlsys.data.s3 import get_bytes
from mlsys.data.video import digit_training_set
from mlsys.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "it-digits"


@pytest.fixture(scope="module")
def registered(stack: Settings) -> str:
    outcome = trigger(
        stack,
        "train_digits/train_digits",
        {"n_images": 400, "epochs": 1, "model_name": MODEL, "channels": [8, 16]},
        timeout_s=400,
        say=lambda line: None,
    )
    assert outcome.state == "COMPLETED", outcome.message
    _, run = mlflow_run_of(stack, outcome.flow_run_id)
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    version = MlflowClient(stack.tracking_uri).get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == run.info.run_id
    assert version.tags["prefect.flow_run_id"] == outcome.flow_run_id
    assert version.tags["test_accuracy"] == f"{run.data.metrics['test_accuracy']:.4f}"
    return str(version.version)


def test_registered_cnn_is_a_pyfunc_over_frames(stack: Settings, registered: str) -> None:
    mlflow.set_tracking_uri(stack.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    frames = digit_training_set(n=3, seed=9).images.numpy()
    out = model.predict(frames)
    assert list(out.columns[:2]) == ["label", "probability"] and len(out) == 3
    np.testing.assert_allclose(out[[f"proba_{k}" for k in range(10)]].sum(axis=1), 1.0, atol=1e-6)


def test_video_infer_saves_work_and_matches_full_inference(
    stack_env: Settings, registered: str
) -> None:
    from flows.video import video_infer

    uri = video_infer(model_name=MODEL, n_frames=24, seed=3, video="it-video")
    frames = read_parquet_bytes(get_bytes(stack_env.s3_client(), uri))
    assert frames["frame"].tolist() == list(range(24))
    assert frames["mode"].iloc[0] == "prime"
    assert (frames["recomputed_fraction"].iloc[1:] < 1.0).any()

    client = MlflowClient(stack_env.tracking_uri)
    experiment = client.get_experiment_by_name(stack_env.mlflow_experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="params.video = 'it-video'"
    )
    metrics = run.data.metrics
    assert metrics["max_abs_diff"] <= 1e-5
    assert 0.0 < metrics["work_saved"] < 1.0
    assert metrics["frames"] == 24
    assert run.data.tags["mlsys.model_uri"] == f"models:/{MODEL}/{registered}"
    history = client.get_metric_history(run.info.run_id, "recomputed_fraction")
    assert len(history) == 24
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "video")}
    assert {"video/recomputed_fraction.png", "video/summary.json"} <= artifacts


def test_unknown_alias_is_named(stack_env: Settings, registered: str) -> None:
    from flows.video import video_infer

    with pytest.raises(ValueError, match="model 'it-digits' has no version with alias 'gold'"):
        video_infer(model_name=MODEL, alias="gold", n_frames=4)
