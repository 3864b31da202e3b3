"""Trainers: ``fit(model, data, strategy=...)`` with plain, pipeline-parallel (GPipe) and
spilling strategies; ``train_many(jobs, devices=...)`` trains many models at once (SHARP)."""

from mlsys.training.fit import Callback, FitResult, FitSpec, Strategy, fit
from mlsys.training.gpipe import GPipe, GPipeWorkers, StageError
from mlsys.training.sharp import Job, ManyResult, train_many
from mlsys.training.spill import Spill, SpillIOError

__all__ = [
    "Callback",
    "FitResult",
    "FitSpec",
    "GPipe",
    "GPipeWorkers",
    "Job",
    "ManyResult",
    "Spill",
    "SpillIOError",
    "StageError",
    "Strategy",
    "fit",
    "train_many",
]
