"""The study behind the text classifier's defaults: which featurizer and model family the
pipeline should use, ranked on the gold dev rows only; the test rows are scored once,
for the chosen candidate, after the choice.

Data: youtube-spam as the pipeline sees it (its definition's gold policy, the default LF
set, the labeler `weak_label` chooses on dev). Each candidate is a featurizer (word
1-2-grams, with or without character n-grams, hashed into some buckets) and a model
family (linear, or one hidden layer of 128); the learning rate and the epoch are chosen
as `train` with `choose` on chooses them (`select_end_model` over the two learning rates
of the default grid, up to 10 epochs, on the labeler's class probabilities of the
covered train rows).

Ranking: repeated stratified k-fold over the dev rows. In each fold the pipeline's own
choice runs on the other folds (they choose the learning rate and the epoch) and the
held-out fold scores the result, so a candidate is scored on dev rows its choice never
saw. The mean over folds and repeats ranks the candidates (ties: the earlier one). The
chosen candidate is then trained the way the pipeline trains it (all dev rows choose)
with several seeds, and scored on the test rows: the only test figures this script
computes.

    .venv/bin/python benchmarks/defaults_study.py [--folds 5] [--repeats 2] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from mlsys.data import read_dataset
from mlsys.data.definition import load_dataset
from mlsys.labeling import ABSTAIN, apply_lfs, fit_labeler, gold_array, gold_split
from mlsys.labeling.end_model import EndModelConfig, default_end_model_grid, select_end_model
from mlsys.models.text import PIPELINE_CHAR_NGRAMS, PIPELINE_N_FEATURES, pipeline_featurizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "defaults_study.json"


@dataclass(frozen=True)
class Candidate:
    """A featurizer and a model family."""

    name: str
    n_features: int
    char_ngrams: tuple[int, int] | None
    hidden: tuple[int, ...]

    def featurizer(self) -> Any:
        return pipeline_featurizer(self.n_features, self.char_ngrams)

    def grid(self, metric: str) -> list[EndModelConfig]:
        """The default grid's configurations of this model family."""
        return [c for c in default_end_model_grid(metric) if c.hidden == self.hidden]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_features": self.n_features,
            "char_ngrams": list(self.char_ngrams) if self.char_ngrams else None,
            "hidden": list(self.hidden),
        }


CANDIDATES = [
    Candidate("linear, words", 2**13, None, ()),
    Candidate("linear, words + chars 2-5", 2**15, (2, 5), ()),
    Candidate("linear, words + chars 3-5", 2**15, (3, 5), ()),
    Candidate("linear, words + chars 1-4", 2**15, (1, 4), ()),
    Candidate("linear, words + chars 1-4, 2^17", 2**17, (1, 4), ()),
    Candidate("MLP [128], words", 2**13, None, (128,)),
    Candidate("MLP [128], words + chars 1-4", 2**15, (1, 4), (128,)),
]


def pipeline_data(dataset: str, lf_set: str) -> dict[str, Any]:
    """The dataset as `weak_label` leaves it: split by the gold policy, the labeler chosen
    on dev, its class probabilities for the covered train rows."""
    definition = load_dataset(dataset)
    raw = read_dataset(definition, str(DATA) if dataset == "youtube-spam" else None)
    raw = raw[~raw[definition.id_column].duplicated()]  # as the raw suite leaves them
    df = gold_split(raw, definition.gold)
    L = apply_lfs(df, definition.lf_set(lf_set), n_jobs=1).matrix
    y = gold_array(df)
    split = df["split"].to_numpy()
    train, dev, test = (split == s for s in ("train", "dev", "test"))
    tuning = fit_labeler(
        L[train], L_dev=L[dev], y_dev=y[dev], cardinality=definition.k,
        metric=definition.metric, positive=definition.positive_index,
    )  # fmt: skip
    covered = train & (L != ABSTAIN).any(axis=1)
    texts = df["text"].astype(str).to_numpy()
    return {
        "definition": definition,
        "train_texts": list(texts[covered]),
        "train_proba": tuning.best.predict_proba(L[covered]),
        "dev_texts": texts[dev],
        "dev_y": y[dev].astype(np.int64),
        "test_texts": texts[test],
        "test_y": y[test].astype(np.int64),
        "labeler": tuning.best.config.describe(),
    }


def choose(data: dict[str, Any], candidate: Candidate, dev: np.ndarray, seed: int) -> Any:
    """The pipeline's own choice for ``candidate``, the dev rows ``dev`` choosing."""
    definition = data["definition"]
    return select_end_model(
        data["train_texts"], data["train_proba"], None,
        list(data["dev_texts"][dev]), data["dev_y"][dev],
        n_classes=definition.k, metric=definition.metric,
        positive=definition.positive_index, featurizer=candidate.featurizer(),
        grid=candidate.grid(definition.metric), seed=seed,
    )  # fmt: skip


def cross_validate(
    data: dict[str, Any], candidate: Candidate, folds: int, repeats: int, seed: int
) -> dict[str, Any]:
    """The candidate's held-out dev score in every fold of every repeat."""
    metric = data["definition"].metric
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    scores = []
    started = time.perf_counter()
    for chooser, held in splitter.split(data["dev_texts"], data["dev_y"]):
        choice = choose(data, candidate, chooser, seed)
        scored = choice.scores(list(data["dev_texts"][held]), data["dev_y"][held])
        scores.append(float(scored[metric]))
    return {
        **candidate.as_dict(),
        "metric": metric,
        "cv_mean": float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "folds": scores,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="youtube-spam", help="a defined dataset")
    parser.add_argument("--lf-set", default="default", help="the LF set weak_label uses")
    parser.add_argument("--folds", type=int, default=5, help="folds of the dev rows")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the k-fold")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the chosen one's test")
    parser.add_argument("--seed", type=int, default=123, help="seed of folds and training")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    for name in ("folds", "repeats", "seeds"):
        if getattr(args, name) < (2 if name == "folds" else 1):
            parser.error(f"--{name} is too small: {getattr(args, name)}")

    data = pipeline_data(args.dataset, args.lf_set)
    metric = data["definition"].metric
    print(
        f"{args.dataset}: {len(data['train_texts'])} covered train rows, "
        f"{len(data['dev_y'])} dev, {len(data['test_y'])} test; metric {metric}; "
        f"{args.repeats} x {args.folds}-fold over dev",
        flush=True,
    )
    ranked = []
    for candidate in CANDIDATES:
        row = cross_validate(data, candidate, args.folds, args.repeats, args.seed)
        ranked.append(row)
        print(
            f"  {candidate.name:<34} dev {metric} {row['cv_mean']:.4f} "
            f"(sd {row['cv_std']:.4f}, {row['seconds']:.0f} s)",
            flush=True,
        )
    best_i = max(range(len(ranked)), key=lambda i: (ranked[i]["cv_mean"], -i))
    best = CANDIDATES[best_i]
    everything = np.arange(len(data["dev_y"]))
    tests = []
    for s in range(args.seeds):
        choice = choose(data, best, everything, args.seed + s)
        tests.append(float(choice.scores(list(data["test_texts"]), data["test_y"])[metric]))
    default = next(
        (r["name"] for r in ranked
         if r["n_features"] == PIPELINE_N_FEATURES and r["hidden"] == []
         and r["char_ngrams"] == list(PIPELINE_CHAR_NGRAMS)),
        None,
    )  # fmt: skip
    print(
        f"chosen on dev: {best.name}; test {metric} over {args.seeds} seeds: "
        f"{', '.join(f'{t:.3f}' for t in tests)} (mean {np.mean(tests):.4f}); the pipeline's "
        f"default is {default!r}",
        flush=True,
    )
    figures = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "covered_train_rows": len(data["train_texts"]),
            "dev_rows": len(data["dev_y"]),
            "test_rows": len(data["test_y"]),
            "labeler": data["labeler"],
        },
        "metric": metric,
        "candidates": ranked,
        "chosen": best.name,
        "pipeline_default": default,
        "default_is_chosen": default == best.name,
        "test": {"seeds": tests, "mean": float(np.mean(tests))},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.output}")


if __name__ == "__main__":
    main()
