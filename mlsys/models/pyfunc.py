"""The text classifier as an MLflow pyfunc model that takes raw text, and how to log it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, Schema, TensorSpec
from torch import nn

from mlsys.models.cnn import build_digit_cnn
from mlsys.models.text import (
    HashingFeaturizer,
    TextClassifierSpec,
    check_threshold,
    predict_proba,
    predict_texts,
    proba_columns,
    probabilities_frame,
    probabilities_records,
)

__all__ = [
    "TEXT_COLUMN",
    "DigitCNNModel",
    "TextClassifierModel",
    "load_digit_cnn",
    "log_digit_cnn",
    "log_text_classifier",
    "text_classifier_output",
    "text_classifier_signature",
]

TEXT_COLUMN = "text"
"""The input column of the logged model."""

_FEATURIZER = "featurizer"
_CLASSIFIER = "classifier"
_WEIGHTS = "weights"
# How outputs are named and decided (class names, their columns, threshold); models logged
# before it existed lack it and answer with class indices and argmax.
_OUTPUT = "output"
# Distributions the model needs at load time, pinned to what it was logged with.
_REQUIREMENTS = ("mlflow", "torch", "pandas", "numpy")
# The model is logged as code (MLflow's "models from code"): at load time MLflow runs this
# script instead of unpickling a model object, so loading works with
# MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false.
_MODEL_SCRIPT = "mlsys_text_classifier.py"
_MODEL_SCRIPT_SOURCE = (
    "# Run by MLflow to load an mlsys text classifier (models from code).\n"
    "import mlflow\n\n"
    "from mlsys.models.pyfunc import TextClassifierModel\n\n"
    "mlflow.models.set_model(TextClassifierModel())\n"
)


class TextClassifierModel(PythonModel):
    """Scores raw texts with a trained text classifier; what ``log_text_classifier`` logs.

    Loaded through MLflow (``mlflow.pyfunc.load_model(uri).predict(frame)``), it reads its
    artifacts: the featurizer's settings (JSON), the network's ``TextClassifierSpec`` (JSON),
    its ``state_dict`` (``torch.save``, loaded with ``weights_only=True``), so loading
    unpickles no model class, and how outputs are named and decided (JSON: class names,
    their probability columns, threshold and positive class). The input is a DataFrame with
    a ``text`` column; MLflow's schema check, which runs first, also turns a Series named
    ``text`` into one, but rejects a bare list of strings, since the signature names its
    column (score in-memory lists with ``predict_texts``).

    The output is one row per text: ``label`` (the class name), ``probability`` (the
    predicted class's probability) and one ``proba_<class name>`` column per class
    (float64). A model logged without class names answers with class indices instead
    (``label`` int64, ``proba_0`` ...), as models logged before class names existed do.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the featurizer, the network and the output settings from the artifacts."""
        artifacts = context.artifacts
        featurizer_config = json.loads(Path(artifacts[_FEATURIZER]).read_text())
        spec_config = json.loads(Path(artifacts[_CLASSIFIER]).read_text())
        self.featurizer = HashingFeaturizer.from_dict(featurizer_config)
        network = TextClassifierSpec.from_dict(spec_config).build()
        state = torch.load(artifacts[_WEIGHTS], map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        self.network = network.eval()
        output: dict[str, Any] = (
            json.loads(Path(artifacts[_OUTPUT]).read_text()) if _OUTPUT in artifacts else {}
        )
        names = output.get("class_names")
        self.class_names: list[str] | None = None if names is None else list(names)
        self.threshold: float | None = output.get("threshold")
        self.positive: int = int(output.get("positive", 1))
        # The columns as logged, whatever a later version would make of the names.
        columns = output.get("proba_columns")
        self.proba_columns: list[str] | None = None if columns is None else list(columns)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Predictions for the ``text`` column of ``model_input``, in row order.

        Raises:
            ValueError: the column is absent, or a text is missing (the message names its row).
        """
        if TEXT_COLUMN not in model_input.columns:
            raise ValueError(
                f"model input needs a {TEXT_COLUMN!r} column, got columns "
                f"{list(model_input.columns)}"
            )
        frame = predict_texts(
            self.network,
            self.featurizer,
            model_input[TEXT_COLUMN].tolist(),
            class_names=self.class_names,
            threshold=self.threshold,
            positive=self.positive,
        )
        if self.proba_columns is not None:
            frame.columns = pd.Index(["label", "probability", *self.proba_columns])
        return frame

    def predict_records(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """What :meth:`predict` answers for a frame of ``texts``, as one dict of plain
        Python values per row (the frame's ``tolist()`` values), without the frames in and
        out: a model server scores its requests' texts through this.

        Raises:
            ValueError: a text is missing (the message names its row).
        """
        columns = None
        if self.proba_columns is not None:
            columns = ["label", "probability", *self.proba_columns]
        return probabilities_records(
            predict_proba(self.network, self.featurizer, texts),
            self.class_names,
            threshold=self.threshold,
            positive=self.positive,
            columns=columns,
        )


def text_classifier_signature(
    n_classes: int, class_names: Sequence[str] | None = None
) -> ModelSignature:
    """The logged model's signature: string ``text`` in; ``label``, ``probability`` (double)
    and one double column per class out: ``proba_<class name>`` and a string ``label`` with
    ``class_names``, else ``proba_0`` ... ``proba_{n_classes-1}`` and a long ``label``."""
    if class_names is None:
        label_type, columns = "long", [f"proba_{k}" for k in range(n_classes)]
    else:
        label_type, columns = "string", proba_columns(class_names)
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(label_type, "label"),
        ColSpec("double", "probability"),
    ]
    outputs += [ColSpec("double", column) for column in columns]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema(outputs))


def text_classifier_output(
    n_classes: int,
    class_names: Sequence[str] | None = None,
    threshold: float | None = None,
    positive: int = 1,
) -> dict[str, Any]:
    """How a text classifier names and decides its outputs, as logged with it (JSON, and
    the MLflow model's metadata): ``class_names``, ``proba_columns``, ``threshold`` and
    ``positive``.

    Raises:
        ValueError: the names are not ``n_classes`` distinct names that make distinct
            columns, or the threshold does not fit (both named).
        TypeError: a class name is not a string.
    """
    check_threshold(threshold, n_classes, positive)
    names = None if class_names is None else list(class_names)
    columns = None if names is None else proba_columns(names)
    if names is not None and len(names) != n_classes:
        raise ValueError(f"{len(names)} class names {names} for a model of {n_classes} classes")
    return {
        "class_names": names,
        "proba_columns": columns,
        "threshold": None if threshold is None else float(threshold),
        "positive": int(positive),
    }


def log_text_classifier(
    model: nn.Sequential,
    featurizer: HashingFeaturizer,
    *,
    run_id: str,
    tracking_uri: str,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example_texts: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float | None = None,
    positive: int = 1,
) -> ModelInfo:
    """Log ``model`` with its ``featurizer`` as a pyfunc model of the run ``run_id``.

    The model goes into the run's own experiment and is linked to the run as an output,
    without making the run active, so the run's status is left alone and nothing depends
    on which run (if any) is active in this thread. MLflow's tracking URI is process-global:
    it is set to ``tracking_uri`` for the call and restored afterwards, so concurrent calls
    must use the same URI.

    The artifact is self-contained and loads without unpickling anything: it is logged as
    code, a generated script that MLflow runs at load time and that imports
    ``TextClassifierModel`` from the ``mlsys.models`` sources travelling in the artifact's
    ``code`` folder; its pip requirements pin the installed mlflow, torch, pandas and numpy.

    Args:
        model: a network with the layout ``build_text_classifier`` makes (on any device).
        featurizer: the featurizer it was trained on.
        run_id: the MLflow run to log into.
        tracking_uri: where that run lives.
        name: the logged model's name.
        registered_model_name: if given, register the model under this name (creating the
            registered model if needed); ``ModelInfo.registered_model_version`` says which
            version it became.
        input_example_texts: texts stored as the model's input example (and checked to
            score when logging).
        class_names: the name of each class, class i at index i (e.g. ``["ham", "spam"]``):
            the model then answers with names (``label``) and ``proba_<name>`` columns,
            a name that is not a safe column suffix made one (``"not spam"`` ->
            ``proba_not_spam``). None: class indices (``label``) and ``proba_0`` ....
        threshold: binary models only: predict ``positive`` when its probability is at
            least this, else the other class. None: the most probable class.
        positive: the index of the positive class (0 or 1) the threshold is about.

    Raises:
        ValueError: the model's input width differs from ``featurizer.n_features``, the
            model is not laid out like a text classifier, the class names are not one
            distinct name per class or two of them make the same column, or the threshold
            does not fit the model (each named).
    """
    spec = TextClassifierSpec.from_model(model)
    if spec.n_features != featurizer.n_features:
        raise ValueError(
            f"model takes {spec.n_features} features but the featurizer makes "
            f"{featurizer.n_features}"
        )
    output = text_classifier_output(spec.n_classes, class_names, threshold, positive)
    input_example = (
        None
        if input_example_texts is None
        else pd.DataFrame({TEXT_COLUMN: list(input_example_texts)})
    )
    with tempfile.TemporaryDirectory(prefix="mlsys-pyfunc-") as tmp:
        staging = Path(tmp)
        artifacts = {
            _FEATURIZER: staging / "featurizer.json",
            _CLASSIFIER: staging / "classifier.json",
            _WEIGHTS: staging / "weights.pt",
            _OUTPUT: staging / "output.json",
        }
        artifacts[_FEATURIZER].write_text(json.dumps(featurizer.to_dict(), indent=2))
        artifacts[_CLASSIFIER].write_text(json.dumps(spec.to_dict(), indent=2))
        artifacts[_OUTPUT].write_text(json.dumps(output, indent=2, ensure_ascii=False))
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        torch.save(state, artifacts[_WEIGHTS])
        return _log_pyfunc(
            staging,
            script=(_MODEL_SCRIPT, _MODEL_SCRIPT_SOURCE),
            artifacts=artifacts,
            signature=text_classifier_signature(spec.n_classes, class_names),
            input_example=input_example,
            run_id=run_id,
            tracking_uri=tracking_uri,
            name=name,
            registered_model_name=registered_model_name,
            metadata=output,
        )


def _log_pyfunc(
    staging: Path,
    *,
    script: tuple[str, str],
    artifacts: dict[str, Path],
    signature: ModelSignature,
    input_example: Any,
    run_id: str,
    tracking_uri: str,
    name: str,
    registered_model_name: str | None,
    metadata: dict[str, Any] | None = None,
) -> ModelInfo:
    """Log a models-from-code pyfunc (``script`` = file name and source) with its
    ``artifacts``, the ``mlsys.models`` sources and ``metadata`` (kept in the MLmodel
    file, readable without loading the model) into the run ``run_id``."""
    script_path = staging / script[0]
    script_path.write_text(script[1])
    with _tracking_uri(tracking_uri):
        client = mlflow.MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        # Created here, not by Model.log: without an active run, Model.log would file
        # the model under the default experiment instead of the run's.
        logged = client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=name,
            source_run_id=run_id,
            params=dict(run.data.params),
        )
        # Model.log is what mlflow.pyfunc.log_model calls, minus the run_id it lacks.
        info: ModelInfo = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            registered_model_name=registered_model_name,
            python_model=str(script_path),
            artifacts={key: str(path) for key, path in artifacts.items()},
            code_paths=[str(_stage_code(staging / "code"))],
            signature=signature,
            input_example=input_example,
            pip_requirements=_pinned_requirements(),
            metadata=metadata,
        )
        return info


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow at ``uri`` for the duration of the block, then restore what was set."""
    is_set: bool = mlflow.is_tracking_uri_set()  # type: ignore[no-untyped-call]
    previous = mlflow.get_tracking_uri() if is_set else None
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None unsets the URI at run time; MLflow's type hint leaves it out.
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
        # set_tracking_uri also writes MLFLOW_TRACKING_URI; give back the caller's value.
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


_CNN_CONFIG = "cnn"
_CNN_SCRIPT = "mlsys_digit_cnn.py"
_CNN_SCRIPT_SOURCE = (
    "# Run by MLflow to load an mlsys digit CNN (models from code).\n"
    "import mlflow\n\n"
    "from mlsys.models.pyfunc import DigitCNNModel\n\n"
    "mlflow.models.set_model(DigitCNNModel())\n"
)


def _build_cnn(config_path: str, weights_path: str) -> nn.Sequential:
    config = json.loads(Path(config_path).read_text())
    network = build_digit_cnn(**config)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.eval()


class DigitCNNModel(PythonModel):
    """Labels video frames with a digit CNN; what :func:`log_digit_cnn` logs.

    Input: a float32 array ``(N, C, H, W)``. Output: one row per frame with ``label``,
    ``probability`` and ``proba_0`` ... ``proba_9``. Loading reads the network's settings
    (JSON) and ``state_dict`` (``weights_only``), so nothing is unpickled.
    """

    def load_context(self, context: PythonModelContext) -> None:
        artifacts = context.artifacts
        self.network = _build_cnn(artifacts[_CNN_CONFIG], artifacts[_WEIGHTS])

    # model_input is left unannotated: MLflow reads a type hint as an input schema, and
    # the tensor signature logged with the model already says what goes in.
    def predict(  # type: ignore[no-untyped-def]
        self,
        context: PythonModelContext,
        model_input,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        frames = torch.as_tensor(model_input, dtype=torch.float32)
        if frames.ndim != 4:
            raise ValueError(
                f"model input must be (N, C, H, W) frames, got shape {tuple(frames.shape)}"
            )
        with torch.inference_mode():
            proba = torch.softmax(self.network(frames), dim=1).double().numpy()
        return probabilities_frame(proba)


def log_digit_cnn(
    model: nn.Sequential,
    config: dict[str, Any],
    *,
    run_id: str,
    tracking_uri: str,
    example: torch.Tensor,
    name: str = "model",
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log a CNN made by ``build_digit_cnn(**config)`` as a pyfunc of the run ``run_id``,
    with a tensor signature taken from ``example`` (a few frames ``(N, C, H, W)``)."""
    rebuilt = build_digit_cnn(**config)
    rebuilt.load_state_dict(model.state_dict())  # the config must describe this model
    n_classes = int(config.get("n_classes", 10))
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec("long", "label"),
        ColSpec("double", "probability"),
    ]
    outputs += [ColSpec("double", f"proba_{k}") for k in range(n_classes)]
    import numpy as np

    example_array = example.detach().cpu().numpy().astype(np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example_array.shape[1:]))]),
        outputs=Schema(outputs),
    )
    with tempfile.TemporaryDirectory(prefix="mlsys-pyfunc-") as tmp:
        staging = Path(tmp)
        artifacts = {_CNN_CONFIG: staging / "cnn.json", _WEIGHTS: staging / "weights.pt"}
        artifacts[_CNN_CONFIG].write_text(json.dumps(config, indent=2))
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        torch.save(state, artifacts[_WEIGHTS])
        return _log_pyfunc(
            staging,
            script=(_CNN_SCRIPT, _CNN_SCRIPT_SOURCE),
            artifacts=artifacts,
            signature=signature,
            input_example=example_array,
            run_id=run_id,
            tracking_uri=tracking_uri,
            name=name,
            registered_model_name=registered_model_name,
        )


def load_digit_cnn(model_uri: str, tracking_uri: str) -> nn.Sequential:
    """The ``nn.Sequential`` of a digit CNN logged by :func:`log_digit_cnn` (e.g.
    ``models:/digit-cnn@champion``), rebuilt from its artifacts in eval mode: what
    incremental inference needs, where the pyfunc only gives predictions."""
    with _tracking_uri(tracking_uri), tempfile.TemporaryDirectory(prefix="mlsys-cnn-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        config = local / "artifacts" / "cnn.json"
        weights = local / "artifacts" / "weights.pt"
        if not config.is_file() or not weights.is_file():
            raise ValueError(f"{model_uri} is not a digit CNN logged by log_digit_cnn")
        return _build_cnn(str(config), str(weights))


def _stage_code(target: Path) -> Path:
    """A copy of the ``mlsys.models`` sources under ``target/mlsys``, for ``code_paths``.

    MLflow copies each code path into the model's ``code`` folder and puts that folder on
    ``sys.path`` at load time, so ``code/mlsys/models/pyfunc.py`` keeps its import name
    ``mlsys.models.pyfunc`` where mlsys is not installed. The package ``__init__`` is a
    stub: the real one may grow imports the model does not need.
    """
    package = target / "mlsys"
    shutil.copytree(
        Path(__file__).resolve().parent,
        package / "models",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (package / "__init__.py").write_text(
        '"""mlsys, reduced to the modules a logged model needs."""\n'
    )
    return package


def _pinned_requirements() -> list[str]:
    """``name==version`` of the installed distributions the model needs, without local
    version labels (``2.13.0+cpu`` becomes ``2.13.0``) so pip can resolve them from PyPI."""
    return [f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS]
