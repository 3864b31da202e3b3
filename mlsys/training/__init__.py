"""Trainers: ``fit(model, data, strategy=...)`` with plain, pipeline-parallel (GPipe) and
spilling strategies."""

from mlsys.training.fit import Callback, FitResult, FitSpec, Strategy, fit
from mlsys.training.gpipe import GPipe, GPipeWorkers, StageError
from mlsys.training.spill import Spill, SpillIOError

__all__ = [
    "Callback",
    "FitResult",
    "FitSpec",
    "GPipe",
    "GPipeWorkers",
    "Spill",
    "SpillIOError",
    "StageError",
    "Strategy",
    "fit",
]
