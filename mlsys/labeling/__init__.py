"""Weak labeling: labeling functions, their fast application, label model, gold+weak merge."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsys.labeling.analysis import lf_summary, plot_lf_summary
    from mlsys.labeling.apply import MIN_LFS, LFApplyResult, LFError, apply_lfs
    from mlsys.labeling.batch import build_labeled_batch, evaluate_labelers, gold_array
    from mlsys.labeling.end_model import select_end_model
    from mlsys.labeling.label_model import (
        Labeler,
        LabelModelConfig,
        TuningResult,
        class_prior,
        default_grid,
        fit_label_model,
        fit_labeler,
        weak_label_frame,
    )
    from mlsys.labeling.lf import (
        ABSTAIN,
        LabelingFunction,
        VectorSpec,
        bind_class_labels,
        keyword_lf,
        labeling_function,
        preprocessor,
        regex_lf,
        vector_spec,
    )
    from mlsys.labeling.merge import MergeResult, Weighting, WeightModel, merge_labels
    from mlsys.labeling.split import gold_split, holdout_split, split_counts
    from mlsys.labeling.wrench import WrenchDataset, WrenchError, evaluate_wrench, load_wrench

_MODULES = {
    "ABSTAIN": "mlsys.labeling.lf",
    "LFApplyResult": "mlsys.labeling.apply",
    "LFError": "mlsys.labeling.apply",
    "LabelModelConfig": "mlsys.labeling.label_model",
    "Labeler": "mlsys.labeling.label_model",
    "LabelingFunction": "mlsys.labeling.lf",
    "MIN_LFS": "mlsys.labeling.apply",
    "MergeResult": "mlsys.labeling.merge",
    "TuningResult": "mlsys.labeling.label_model",
    "VectorSpec": "mlsys.labeling.lf",
    "WeightModel": "mlsys.labeling.merge",
    "Weighting": "mlsys.labeling.merge",
    "WrenchDataset": "mlsys.labeling.wrench",
    "WrenchError": "mlsys.labeling.wrench",
    "apply_lfs": "mlsys.labeling.apply",
    "bind_class_labels": "mlsys.labeling.lf",
    "class_prior": "mlsys.labeling.label_model",
    "gold_split": "mlsys.labeling.split",
    "select_end_model": "mlsys.labeling.end_model",
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
    "MIN_LFS",
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
    "bind_class_labels",
    "build_labeled_batch",
    "class_prior",
    "default_grid",
    "evaluate_labelers",
    "evaluate_wrench",
    "fit_label_model",
    "fit_labeler",
    "gold_array",
    "gold_split",
    "holdout_split",
    "keyword_lf",
    "labeling_function",
    "lf_summary",
    "load_wrench",
    "merge_labels",
    "plot_lf_summary",
    "preprocessor",
    "regex_lf",
    "select_end_model",
    "split_counts",
    "vector_spec",
    "weak_label_frame",
]
