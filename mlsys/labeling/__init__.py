"""Weak labeling: labeling functions, their fast application, label model, gold+weak merge."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsys.labeling.analysis import lf_summary, plot_lf_summary
    from mlsys.labeling.apply import MIN_LFS, LFApplyResult, LFError, apply_lfs
    from mlsys.labeling.batch import build_labeled_batch, evaluate_labelers, gold_array
    from mlsys.labeling.label_model import (
        Labeler,
        LabelModelConfig,
        TuningResult,
        default_grid,
        fit_label_model,
        fit_labeler,
        weak_label_frame,
    )
    from mlsys.labeling.lf import (
        ABSTAIN,
        HAM,
        SPAM,
        LabelingFunction,
        VectorSpec,
        keyword_lf,
        labeling_function,
        preprocessor,
        regex_lf,
        vector_spec,
    )
    from mlsys.labeling.lfs import youtube_lfs
    from mlsys.labeling.merge import MergeResult, Weighting, WeightModel, merge_labels
    from mlsys.labeling.split import holdout_split, split_counts
    from mlsys.labeling.wrench import WrenchDataset, WrenchError, evaluate_wrench, load_wrench

_MODULES = {
    "ABSTAIN": "mlsys.labeling.lf",
    "HAM": "mlsys.labeling.lf",
    "LFApplyResult": "mlsys.labeling.apply",
    "LFError": "mlsys.labeling.apply",
    "LabelModelConfig": "mlsys.labeling.label_model",
    "Labeler": "mlsys.labeling.label_model",
    "LabelingFunction": "mlsys.labeling.lf",
    "MIN_LFS": "mlsys.labeling.apply",
    "MergeResult": "mlsys.labeling.merge",
    "SPAM": "mlsys.labeling.lf",
    "TuningResult": "mlsys.labeling.label_model",
    "VectorSpec": "mlsys.labeling.lf",
    "WeightModel": "mlsys.labeling.merge",
    "Weighting": "mlsys.labeling.merge",
    "WrenchDataset": "mlsys.labeling.wrench",
    "WrenchError": "mlsys.labeling.wrench",
    "apply_lfs": "mlsys.labeling.apply",
    "build_labeled_batch": "mlsys.labeling.batch",
    "default_grid": "mlsys.labeling.label_model",
    "evaluate_labelers": "mlsys.labeling.batch",
    "evaluate_wrench": "mlsys.labeling.wrench",
    "fit_label_model": "mlsys.labeling.label_model",
    "fit_labeler": "mlsys.labeling.label_model",
    "gold_array": "mlsys.labeling.batch",
    "holdout_split": "mlsys.labeling.split",
    "keyword_lf": "mlsys.labeling.lf",
    "labeling_function": "mlsys.labeling.lf",
    "lf_summary": "mlsys.labeling.analysis",
    "load_wrench": "mlsys.labeling.wrench",
    "merge_labels": "mlsys.labeling.merge",
    "plot_lf_summary": "mlsys.labeling.analysis",
    "preprocessor": "mlsys.labeling.lf",
    "regex_lf": "mlsys.labeling.lf",
    "split_counts": "mlsys.labeling.split",
    "vector_spec": "mlsys.labeling.lf",
    "weak_label_frame": "mlsys.labeling.label_model",
    "youtube_lfs": "mlsys.labeling.lfs",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing a submodule (e.g. for the `mlsys label` command)
    # then costs only that submodule, not Snorkel, torch and matplotlib for all of them.
    try:
        module = _MODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ABSTAIN",
    "HAM",
    "MIN_LFS",
    "SPAM",
    "LFApplyResult",
    "LFError",
    "LabelModelConfig",
    "Labeler",
    "LabelingFunction",
    "MergeResult",
    "TuningResult",
    "VectorSpec",
    "WeightModel",
    "Weighting",
    "WrenchDataset",
    "WrenchError",
    "apply_lfs",
    "build_labeled_batch",
    "default_grid",
    "evaluate_labelers",
    "evaluate_wrench",
    "fit_label_model",
    "fit_labeler",
    "gold_array",
    "holdout_split",
    "keyword_lf",
    "labeling_function",
    "lf_summary",
    "load_wrench",
    "merge_labels",
    "plot_lf_summary",
    "preprocessor",
    "regex_lf",
    "split_counts",
    "vector_spec",
    "weak_label_frame",
    "youtube_lfs",
]
