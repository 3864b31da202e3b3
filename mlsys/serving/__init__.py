"""Online serving: a registered model behind an HTTP API (``mlsys serve``).

MLflow's scoring protocol in front of Clipper's ideas: adaptive batching under a latency
objective with admission control (batching.py), a prediction cache (cache.py), the
serving suite's row rules compiled to plain checks (rules.py), versions that follow an
alias without a dropped request (model.py), a shadow model's agreement (shadow.py), and
a prediction log in S3 for validation (predlog.py). app.py wires them into a Starlette
app, server.py runs it on uvicorn; `mlsys serve` (infra/cli/serve.py) is the command.

Usage::

    from mlsys.serving import PredictionLog, RowRules, S3Sink, ServeConfig, serve

    config = ServeConfig(tracking_uri=uri, model_name="spam", dataset="youtube-spam",
                         api_key=key)
    serve(config, rules=RowRules.from_suite(suite),
          prediction_log=PredictionLog(S3Sink(s3, "mlsys"), "youtube-spam"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsys.serving.app import create_app
    from mlsys.serving.batching import (
        AdaptiveBatcher,
        AimdBatchSize,
        Draining,
        Overloaded,
        ServiceEstimate,
    )
    from mlsys.serving.cache import PredictionCache
    from mlsys.serving.config import ServeConfig
    from mlsys.serving.metrics import ServingMetrics
    from mlsys.serving.model import LoadedModel, ModelLoadError, ModelWatcher, load_version
    from mlsys.serving.payload import PayloadError, Rows
    from mlsys.serving.predlog import FolderSink, PredictionLog, S3Sink, Sink
    from mlsys.serving.rules import Refusal, RowRules
    from mlsys.serving.server import serve
    from mlsys.serving.shadow import Agreement, AgreementLogger

_MODULES = {
    "create_app": "mlsys.serving.app",
    "AdaptiveBatcher": "mlsys.serving.batching",
    "AimdBatchSize": "mlsys.serving.batching",
    "Draining": "mlsys.serving.batching",
    "Overloaded": "mlsys.serving.batching",
    "ServiceEstimate": "mlsys.serving.batching",
    "PredictionCache": "mlsys.serving.cache",
    "ServeConfig": "mlsys.serving.config",
    "ServingMetrics": "mlsys.serving.metrics",
    "LoadedModel": "mlsys.serving.model",
    "ModelLoadError": "mlsys.serving.model",
    "ModelWatcher": "mlsys.serving.model",
    "load_version": "mlsys.serving.model",
    "PayloadError": "mlsys.serving.payload",
    "Rows": "mlsys.serving.payload",
    "FolderSink": "mlsys.serving.predlog",
    "PredictionLog": "mlsys.serving.predlog",
    "S3Sink": "mlsys.serving.predlog",
    "Sink": "mlsys.serving.predlog",
    "Refusal": "mlsys.serving.rules",
    "RowRules": "mlsys.serving.rules",
    "serve": "mlsys.serving.server",
    "Agreement": "mlsys.serving.shadow",
    "AgreementLogger": "mlsys.serving.shadow",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that `mlsys --help` does not import MLflow, torch or uvicorn.
    try:
        module = _MODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AdaptiveBatcher",
    "Agreement",
    "AgreementLogger",
    "AimdBatchSize",
    "Draining",
    "FolderSink",
    "LoadedModel",
    "ModelLoadError",
    "ModelWatcher",
    "Overloaded",
    "PayloadError",
    "PredictionCache",
    "PredictionLog",
    "Refusal",
    "RowRules",
    "Rows",
    "S3Sink",
    "ServeConfig",
    "ServiceEstimate",
    "ServingMetrics",
    "Sink",
    "create_app",
    "load_version",
    "serve",
]
