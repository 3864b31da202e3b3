"""Weak labeling: labeling functions, their fast application, label model, gold+weak merge."""

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
