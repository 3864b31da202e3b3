"""Tests for mlsys.models.pyfunc: logging the text classifier to MLflow and loading it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.models import Model
from mlflow.models.model import ModelInfo
from torch import nn

from mlsys.models import HashingFeaturizer, build_text_classifier, predict_texts
from mlsys.models.pyfunc import log_text_classifier

TEXTS = ["check out my channel", "love this song", "WIN a free iPhone now!!!", ""]
REGISTERED_NAME = "spam-classifier"


@dataclass(frozen=True)
class Logged:
    """One model logged to a private tracking store, and what the test needs to check it."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    info: ModelInfo
    model: nn.Sequential
    featurizer: HashingFeaturizer
    uri_before: tuple[bool, str]
    uri_after: tuple[bool, str]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri)
    # A non-default experiment with its artifacts in tmp: the model must land in it.
    experiment_id = client.create_experiment("text", artifact_location=(root / "art").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    torch.manual_seed(0)
    featurizer = HashingFeaturizer(n_features=1024)
    model = build_text_classifier(1024, hidden=(8,), dropout=0.1)
    uri_before = (mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri())
    info = log_text_classifier(
        model,
        featurizer,
        run_id=run_id,
        tracking_uri=tracking_uri,
        registered_model_name=REGISTERED_NAME,
        input_example_texts=TEXTS[:2],
    )
    return Logged(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_id=run_id,
        info=info,
        model=model,
        featurizer=featurizer,
        uri_before=uri_before,
        uri_after=(mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri()),
    )


@pytest.fixture
def tracking(logged: Logged) -> Iterator[Logged]:
    """The logged model with MLflow pointed at its store, as a reader would have it."""
    mlflow.set_tracking_uri(logged.tracking_uri)
    try:
        yield logged
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_loaded_model_predicts_like_the_in_memory_model(tracking: Logged) -> None:
    loaded = mlflow.pyfunc.load_model(tracking.info.model_uri)
    got = loaded.predict(pd.DataFrame({"text": TEXTS}))
    expected = predict_texts(tracking.model, tracking.featurizer, TEXTS)
    assert list(got.columns) == ["label", "probability", "proba_0", "proba_1"]
    assert got["label"].dtype == "int64" and got["probability"].dtype == "float64"
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6, rtol=0)
    # A Series named after the input column is turned into that column by MLflow.
    by_series = loaded.predict(pd.Series(TEXTS, name="text"))
    pd.testing.assert_frame_equal(by_series, got)


def test_registered_version_one_loads(tracking: Logged) -> None:
    assert tracking.info.registered_model_version == 1
    version = mlflow.MlflowClient(tracking.tracking_uri).get_model_version(REGISTERED_NAME, "1")
    assert version.run_id == tracking.run_id
    loaded = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}/1")
    assert loaded.predict(pd.DataFrame({"text": TEXTS}))["label"].tolist() == (
        predict_texts(tracking.model, tracking.featurizer, TEXTS)["label"].tolist()
    )


def test_signature_takes_text_and_example_is_stored(tracking: Logged) -> None:
    signature = tracking.info.signature
    assert signature.inputs.to_dict() == [{"type": "string", "name": "text", "required": True}]
    assert signature.outputs.input_names() == ["label", "probability", "proba_0", "proba_1"]
    local = mlflow.artifacts.download_artifacts(tracking.info.model_uri)
    example = Model.load(local).load_input_example(local)
    pd.testing.assert_frame_equal(example, pd.DataFrame({"text": TEXTS[:2]}), check_dtype=False)
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "pandas", "torch"]


def test_logging_leaves_the_run_and_tracking_state_alone(logged: Logged) -> None:
    client = mlflow.MlflowClient(logged.tracking_uri)
    assert client.get_run(logged.run_id).info.status == "RUNNING"
    assert client.get_logged_model(logged.info.model_id).experiment_id == logged.experiment_id
    assert logged.info.run_id == logged.run_id
    assert mlflow.active_run() is None
    assert logged.uri_after == logged.uri_before


def test_missing_text_names_the_row(tracking: Logged) -> None:
    loaded = mlflow.pyfunc.load_model(tracking.info.model_uri)
    with pytest.raises(ValueError, match="text in row 2 is missing"):
        loaded.predict(pd.DataFrame({"text": ["a", "b", None]}))
    with pytest.raises(mlflow.MlflowException, match=r"missing inputs \['text'\]"):
        loaded.predict(pd.DataFrame({"comment": ["a"]}))


def test_model_loads_without_mlsys_installed_and_without_pickle(
    tracking: Logged, tmp_path: Path
) -> None:
    # A fresh interpreter that cannot import the installed mlsys: the model's own code
    # folder must supply it, and loading must not need pickle.
    script = f"""
import importlib.machinery, json, os, sys

class OnlyModelCode:
    # Finds the top-level mlsys package only in a model's code folder, however it is installed.
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "mlsys":
            return None
        code_dirs = [p for p in sys.path if p.endswith(os.sep + "code")]
        spec = importlib.machinery.PathFinder.find_spec(name, code_dirs)
        if spec is None:
            raise ModuleNotFoundError("mlsys is hidden outside a model's code folder")
        return spec

sys.meta_path.insert(0, OnlyModelCode)
try:
    import mlsys
    sys.exit("mlsys is still importable: " + str(mlsys.__file__))
except ModuleNotFoundError:
    pass
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({tracking.info.model_uri!r})
import mlsys.models.text
print(json.dumps({{
    "module": mlsys.models.text.__file__,
    "proba": model.predict(pd.DataFrame({{"text": {TEXTS!r}}}))["proba_1"].tolist(),
}}))
"""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/mlsys/models/text.py" in result["module"]
    expected = predict_texts(tracking.model, tracking.featurizer, TEXTS)["proba_1"].tolist()
    assert result["proba"] == pytest.approx(expected, abs=1e-6)


def test_rejects_a_featurizer_of_another_width(logged: Logged) -> None:
    with pytest.raises(ValueError, match="model takes 1024 features but the featurizer makes 64"):
        log_text_classifier(
            logged.model,
            HashingFeaturizer(n_features=64),
            run_id=logged.run_id,
            tracking_uri=logged.tracking_uri,
        )


def test_digit_cnn_logs_as_pyfunc_and_rebuilds_as_layers(tmp_path: Path) -> None:
    from mlsys.models.cnn import build_digit_cnn
    from mlsys.models.pyfunc import load_digit_cnn, log_digit_cnn

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("cnn", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    torch.manual_seed(0)
    config = {"channels": [4, 8], "n_classes": 10, "in_channels": 1}
    model = build_digit_cnn(**config).eval()
    frames = torch.rand(3, 1, 32, 32)
    info = log_digit_cnn(
        model,
        config,
        run_id=run_id,
        tracking_uri=tracking_uri,
        example=frames[:2],
        registered_model_name="digits",
    )
    assert info.registered_model_version == 1

    rebuilt = load_digit_cnn("models:/digits/1", tracking_uri)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(frames), model(frames))
        expected = torch.softmax(model(frames), dim=1).argmax(dim=1).tolist()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        out = mlflow.pyfunc.load_model("models:/digits/1").predict(frames.numpy())
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert out["label"].tolist() == expected
    with pytest.raises(ValueError, match="not a digit CNN"):
        log_text = client.create_run(experiment_id).info.run_id
        log_text_classifier(
            build_text_classifier(64, hidden=(4,)),
            HashingFeaturizer(n_features=64),
            run_id=log_text,
            tracking_uri=tracking_uri,
            registered_model_name="text",
        )
        load_digit_cnn("models:/text/1", tracking_uri)


# --- class names and thresholds ------------------------------------------------------------

CLASSES = ["ham", "spam", "not sure?"]


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """A 3-class model logged with class names, in a store of its own."""
    root = tmp_path_factory.mktemp("mlflow3")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("k3", artifact_location=(root / "art").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    torch.manual_seed(1)
    featurizer = HashingFeaturizer(n_features=256)
    model = build_text_classifier(256, hidden=(8,), n_classes=3)
    info = log_text_classifier(
        model,
        featurizer,
        run_id=run_id,
        tracking_uri=tracking_uri,
        registered_model_name="k3",
        input_example_texts=TEXTS[:2],
        class_names=CLASSES,
    )
    return Logged(
        tracking_uri, experiment_id, run_id, info, model, featurizer, (False, ""), (False, "")
    )


def _load(logged: Logged, uri: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    mlflow.set_tracking_uri(logged.tracking_uri)
    try:
        return mlflow.pyfunc.load_model(uri or logged.info.model_uri)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_a_three_class_model_answers_with_class_names(three_classes: Logged) -> None:
    got = _load(three_classes, "models:/k3/1").predict(pd.DataFrame({"text": TEXTS}))
    columns = ["proba_ham", "proba_spam", "proba_not_sure"]
    assert list(got.columns) == ["label", "probability", *columns]
    assert pd.api.types.is_string_dtype(got["label"]) and set(got["label"]) <= set(CLASSES)
    assert all(got[c].dtype == "float64" for c in ["probability", *columns])
    indices = predict_texts(three_classes.model, three_classes.featurizer, TEXTS)
    assert got["label"].tolist() == [CLASSES[i] for i in indices["label"]]
    np_proba = got[columns].to_numpy()
    assert np_proba == pytest.approx(
        indices[["proba_0", "proba_1", "proba_2"]].to_numpy(), abs=1e-6
    )
    assert got["probability"].tolist() == pytest.approx(np_proba.max(axis=1).tolist())


def test_class_names_are_saved_in_the_config_and_the_signature(three_classes: Logged) -> None:
    signature = three_classes.info.signature
    assert signature.outputs.input_names() == [
        "label", "probability", "proba_ham", "proba_spam", "proba_not_sure"
    ]  # fmt: skip
    assert signature.outputs.to_dict()[0] == {"type": "string", "name": "label", "required": True}
    assert three_classes.info.metadata["class_names"] == CLASSES
    mlflow.set_tracking_uri(three_classes.tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(three_classes.info.model_uri))
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    config = json.loads((local / "artifacts" / "output.json").read_text())
    assert config == {
        "class_names": CLASSES,
        "proba_columns": ["proba_ham", "proba_spam", "proba_not_sure"],
        "threshold": None,
        "positive": 1,
    }


def test_a_binary_threshold_decides_for_the_positive_class(tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    torch.manual_seed(2)
    featurizer = HashingFeaturizer(n_features=64)
    model = build_text_classifier(64, hidden=(4,))
    texts = [f"comment number {i} with words {i * 7}" for i in range(40)]
    proba_spam = predict_texts(model, featurizer, texts)["proba_1"]
    threshold = float(proba_spam.median())  # half the rows on each side
    info = log_text_classifier(
        model,
        featurizer,
        run_id=run_id,
        tracking_uri=tracking_uri,
        class_names=["ham", "spam"],
        threshold=threshold,
    )
    logged = Logged(
        tracking_uri, experiment_id, run_id, info, model, featurizer, *[(False, "")] * 2
    )
    got = _load(logged).predict(pd.DataFrame({"text": texts}))
    expected = ["spam" if p >= threshold else "ham" for p in got["proba_spam"]]
    assert got["label"].tolist() == expected and set(expected) == {"ham", "spam"}
    chosen = [row[f"proba_{row['label']}"] for _, row in got.iterrows()]
    assert got["probability"].tolist() == pytest.approx(chosen)
    assert info.metadata["threshold"] == threshold
    assert_records_match_frames(_load(logged), texts)


def assert_records_match_frames(loaded: mlflow.pyfunc.PyFuncModel, texts: list[str]) -> None:
    """``predict_records`` answers exactly (==, not approximately) what ``predict``'s frame
    holds, as its columns' ``tolist()`` give the values."""
    frame = loaded.predict(pd.DataFrame({"text": texts}))
    expected = [
        dict(zip(frame.columns, row, strict=True))
        for row in zip(*(frame[c].tolist() for c in frame.columns), strict=True)
    ]
    got = loaded._model_impl.python_model.predict_records(texts)
    assert got == expected
    assert [list(r) for r in got] == [list(r) for r in expected]  # the same key order
    assert [type(v) for r in got for v in r.values()] == [
        type(v) for r in expected for v in r.values()
    ]


def test_records_are_the_frames_values_exactly(logged: Logged, three_classes: Logged) -> None:
    many = [*TEXTS, *(f"comment {i} with a link http://x.io/{i} ??" for i in range(300))]
    assert_records_match_frames(_load(logged), many)  # class indices
    assert_records_match_frames(_load(three_classes, "models:/k3/1"), many)  # class names
    assert _load(logged)._model_impl.python_model.predict_records([]) == []


def test_a_model_logged_before_class_names_answers_with_indices(tmp_path: Path) -> None:
    """The artifacts a model had before the output settings: featurizer, spec, weights."""
    from mlsys.models import pyfunc

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    featurizer = HashingFeaturizer(n_features=64)
    model = build_text_classifier(64, hidden=(), n_classes=3)
    staging = tmp_path / "staging"
    staging.mkdir()
    artifacts = {
        "featurizer": staging / "featurizer.json",
        "classifier": staging / "classifier.json",
        "weights": staging / "weights.pt",
    }
    artifacts["featurizer"].write_text(json.dumps(featurizer.to_dict()))
    artifacts["classifier"].write_text(json.dumps({"n_features": 64, "hidden": [], "n_classes": 3}))
    torch.save(model.state_dict(), artifacts["weights"])
    info = pyfunc._log_pyfunc(
        staging,
        script=(pyfunc._MODEL_SCRIPT, pyfunc._MODEL_SCRIPT_SOURCE),
        artifacts=artifacts,
        signature=pyfunc.text_classifier_signature(3),
        input_example=None,
        run_id=run_id,
        tracking_uri=tracking_uri,
        name="model",
        registered_model_name=None,
    )
    logged = Logged(
        tracking_uri, experiment_id, run_id, info, model, featurizer, *[(False, "")] * 2
    )
    got = _load(logged).predict(pd.DataFrame({"text": TEXTS}))
    assert list(got.columns) == ["label", "probability", "proba_0", "proba_1", "proba_2"]
    assert got["label"].dtype == "int64"
    pd.testing.assert_frame_equal(got, predict_texts(model, featurizer, TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"class_names": ["a b", "a-b", "c"]},
            r"collide as column names: \['a b', 'a-b'\] all make 'proba_a_b'",
        ),
        ({"class_names": ["ham", "spam"]}, r"2 class names \['ham', 'spam'\] for a model of 3"),
        ({"class_names": ["x", "y", "x"]}, r"class names repeat \['x'\]"),
        ({"threshold": 0.5}, "a threshold is for binary models; this one has 3 classes"),
        ({"threshold": 1.5, "n_classes": 2}, r"threshold must be a number in \[0, 1\].*1\.5"),
        ({"positive": 2, "n_classes": 2}, r"positive is 2, outside the class indices \[0, 2\)"),
    ],
)
def test_bad_class_names_and_thresholds_are_refused_naming_them(
    logged: Logged, options: dict[str, object], message: str
) -> None:
    options = dict(options)
    n_classes = int(options.pop("n_classes", 3))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=message):
        log_text_classifier(
            build_text_classifier(64, hidden=(), n_classes=n_classes),
            HashingFeaturizer(n_features=64),
            run_id=logged.run_id,
            tracking_uri=logged.tracking_uri,
            **options,  # type: ignore[arg-type]
        )
