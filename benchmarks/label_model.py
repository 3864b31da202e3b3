"""Label quality on YouTube spam, the Snorkel tutorial split: test accuracy and F1 of the
label model and majority vote, for the tutorial LF set and the extended one.

The tutorial split (SOURCE.md): train = the first four files with labels hidden; the last
file, shuffled with seed 123, gives 250 stratified test rows and 120 dev rows. Labelers
are fitted on the train rows' label matrix and chosen on dev; the test rows are scored
once, here. Rows no LF votes on count as a random guess (Snorkel's tie-break), so
accuracy is over all 250 test rows.

Rows printed per LF set:
- selected on dev: what the weak_label flow uses, the best of majority vote and the
  default LabelModel grid (``fit_labeler``) by dev accuracy, majority vote on a tie;
- best LabelModel on dev: the grid's best LabelModel, even where majority vote won;
- tutorial config: LabelModel(n_epochs=500, lr=0.01, seed=123), the tutorial's own call;
- majority vote.

    .venv/bin/python benchmarks/label_model.py
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.data import read_dataset
from mlsys.data.definition import load_dataset
from mlsys.labeling import LabelModelConfig, apply_lfs, fit_label_model, fit_labeler, gold_array
from mlsys.labeling.split import gold_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "label_model.json"
TARGET = 0.87  # label-model test accuracy


def main() -> None:
    youtube = load_dataset("youtube-spam")
    df = gold_split(read_dataset(youtube, str(DATA)), youtube.gold)
    y = gold_array(df)
    masks = {s: (df["split"] == s).to_numpy() for s in ("train", "dev", "test")}
    report: dict[str, Any] = {"python": platform.python_version(), "target": TARGET, "sets": {}}
    print(f"{'LF set':<10}{'labeler':<58}{'dev acc':>9}{'test acc':>10}{'test F1':>9}")
    for name in ("tutorial", "extended"):
        L = apply_lfs(df, youtube.lf_set(name), n_jobs=1).matrix
        train, dev, test = (L[masks[s]] for s in ("train", "dev", "test"))
        tuning = fit_labeler(train, L_dev=dev, y_dev=y[masks["dev"]], seed=123)
        tutorial = fit_label_model(train, LabelModelConfig("label_model", n_epochs=500, lr=0.01))
        assert tuning.label_model is not None
        rows = {
            f"selected on dev: {tuning.best.config.describe()}": tuning.best,
            f"best LabelModel on dev: {tuning.label_model.config.describe()}": tuning.label_model,
            "LabelModel, tutorial config: 500 ep": tutorial,
            "majority vote": tuning.majority_vote,
        }
        results = {}
        for label, labeler in rows.items():
            dev_scores = labeler.metrics(dev, y[masks["dev"]])
            test_scores = labeler.metrics(test, y[masks["test"]])
            results[label] = {
                "dev_accuracy": dev_scores["accuracy"],
                "test_accuracy": test_scores["accuracy"],
                "test_f1": test_scores["f1"],
                "test_coverage": test_scores["coverage"],
            }
            print(
                f"{name:<10}{label:<58}{dev_scores['accuracy']:>9.3f}"
                f"{test_scores['accuracy']:>10.3f}{test_scores['f1']:>9.3f}"
            )
        report["sets"][name] = {
            "lfs": int(L.shape[1]),
            "train_coverage": float((train != -1).any(axis=1).mean()),
            "labelers": results,
        }
    for name, entry in report["sets"].items():
        for label, scores in list(entry["labelers"].items())[:2]:
            accuracy = scores["test_accuracy"]
            verdict = "meets" if accuracy >= TARGET else "misses"
            print(f"{name}, {label}: test accuracy {accuracy:.3f} {verdict} the target {TARGET}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    print(f"results: {RESULTS}")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


if __name__ == "__main__":
    main()
