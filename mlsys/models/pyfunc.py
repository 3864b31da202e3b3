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

from mlsys.models.text import HashingFeaturizer, TextClassifierSpec, predict_texts

__all__ = [
    "TEXT_COLUMN",
    "TextClassifierModel",
    "log_text_classifier",
    "text_classifier_signature",
]

TEXT_COLUMN = "text"
"""The input column of the logged model."""

_FEATURIZER = "featurizer"
_CLASSIFIER = "classifier"
_WEIGHTS = "weights"
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

    Loaded through MLflow (``mlflow.pyfunc.load_model(uri).predict(frame)``), it reads three
    artifacts: the featurizer's settings (JSON), the network's ``TextClassifierSpec`` (JSON)
    and its ``state_dict`` (``torch.save``, loaded with ``weights_only=True``), so loading
    unpickles no model class. The input is a DataFrame with a ``text`` column; MLflow's
    schema check, which runs first, also turns a Series named ``text`` into one, but rejects
    a bare list of strings, since the signature names its column (score in-memory lists
    with ``predict_texts``). The output is one row per text as ``predict_texts`` makes it:
    ``label``, ``probability``, ``proba_0``, ...
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the featurizer and the network from the logged artifacts."""
        artifacts = context.artifacts
        featurizer_config = json.loads(Path(artifacts[_FEATURIZER]).read_text())
        spec_config = json.loads(Path(artifacts[_CLASSIFIER]).read_text())
        self.featurizer = HashingFeaturizer.from_dict(featurizer_config)
        network = TextClassifierSpec.from_dict(spec_config).build()
        state = torch.load(artifacts[_WEIGHTS], map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        self.network = network.eval()

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
        return predict_texts(self.network, self.featurizer, model_input[TEXT_COLUMN].tolist())


def text_classifier_signature(n_classes: int) -> ModelSignature:
    """The logged model's signature: string ``text`` in; ``label`` (long), ``probability``
    and ``proba_0`` ... ``proba_{n_classes-1}`` (double) out."""
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec("long", "label"),
        ColSpec("double", "probability"),
    ]
    outputs += [ColSpec("double", f"proba_{k}") for k in range(n_classes)]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema(outputs))


def log_text_classifier(
    model: nn.Sequential,
    featurizer: HashingFeaturizer,
    *,
    run_id: str,
    tracking_uri: str,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example_texts: Sequence[str] | None = None,
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

    Raises:
        ValueError: the model's input width differs from ``featurizer.n_features``, or the
            model is not laid out like a text classifier.
    """
    spec = TextClassifierSpec.from_model(model)
    if spec.n_features != featurizer.n_features:
        raise ValueError(
            f"model takes {spec.n_features} features but the featurizer makes "
            f"{featurizer.n_features}"
        )
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
        }
        artifacts[_FEATURIZER].write_text(json.dumps(featurizer.to_dict(), indent=2))
        artifacts[_CLASSIFIER].write_text(json.dumps(spec.to_dict(), indent=2))
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        torch.save(state, artifacts[_WEIGHTS])
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
                python_model=str(_write_model_script(staging)),
                artifacts={key: str(path) for key, path in artifacts.items()},
                code_paths=[str(_stage_code(staging / "code"))],
                signature=text_classifier_signature(spec.n_classes),
                input_example=input_example,
                pip_requirements=_pinned_requirements(),
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


def _write_model_script(folder: Path) -> Path:
    """The models-from-code script, written into ``folder``."""
    script = folder / _MODEL_SCRIPT
    script.write_text(_MODEL_SCRIPT_SOURCE)
    return script


def _pinned_requirements() -> list[str]:
    """``name==version`` of the installed distributions the model needs, without local
    version labels (``2.13.0+cpu`` becomes ``2.13.0``) so pip can resolve them from PyPI."""
    return [f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS]
