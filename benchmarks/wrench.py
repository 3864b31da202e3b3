"""Weak labeling on WRENCH SemEval (9 classes, 164 LFs): how long choosing the labeler and
the end model takes, and how their test scores compare with majority vote and with
WRENCH's published figures.

The protocol of ``mlsys label evaluate --wrench``: labelers are fitted on train's label
matrix and chosen on valid by cross-validation, the end model is trained on the chosen
labeler's class probabilities of the train rows and chosen on valid, test is only
scored. Baselines measured in the same run:

- majority vote (WRENCH's strongest published label model on this set, 77.33);
- Snorkel's stock ``LabelModel.fit`` against the same objective computed without its
  dense (m*k)^2 mask (``_BlockMaskedLabelModel``): the same parameters, timed on one fit.

Published (WRENCH, Zhang et al. 2021): MV 77.33, best label model 77.33, end models on weak
labels: logistic regression up to 85.73, MLP up to 85.53.

    .venv/bin/python benchmarks/wrench.py [--data DIR] [--no-end-model]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from snorkel.labeling.model import LabelModel

from mlsys.labeling.label_model import LabelModelConfig, _fit_snorkel
from mlsys.labeling.wrench import evaluate_wrench, load_wrench

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wrench-semeval"
RESULTS = Path(__file__).resolve().parent / "results" / "wrench.json"
PUBLISHED = {"majority_vote": 0.7733, "best_label_model": 0.7733, "lr": 0.8573, "mlp": 0.8553}


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _snorkel_speed(folder: Path, epochs: int) -> dict[str, Any]:
    """One LabelModel fit, stock Snorkel against the block-masked loss: seconds and the
    largest difference of their test probabilities."""
    data = load_wrench(folder)
    config = LabelModelConfig("label_model", n_epochs=epochs)
    _fit_snorkel(data.train.L, LabelModelConfig("label_model", n_epochs=1), data.cardinality)
    started = time.perf_counter()
    ours = _fit_snorkel(data.train.L, config, data.cardinality)
    ours_s = time.perf_counter() - started
    stock = LabelModel(cardinality=data.cardinality, verbose=False)
    started = time.perf_counter()
    stock.fit(data.train.L, n_epochs=epochs, seed=config.seed, progress_bar=False)
    stock_s = time.perf_counter() - started
    difference = np.abs(ours.predict_proba(data.test.L) - stock.predict_proba(data.test.L)).max()
    return {
        "epochs": epochs,
        "stock_seconds": round(stock_s, 3),
        "block_masked_seconds": round(ours_s, 3),
        "ratio": round(stock_s / ours_s, 1),
        "max_proba_difference": float(difference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the WRENCH SemEval folder")
    parser.add_argument("--no-end-model", action="store_true", help="label models only")
    args = parser.parse_args()

    figures: dict[str, Any] = {
        "dataset": str(args.data.name),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "published": PUBLISHED,
        "snorkel_fit": _snorkel_speed(args.data, epochs=100),
        "runs": {},
    }
    fit = figures["snorkel_fit"]
    print(
        f"LabelModel fit, {fit['epochs']} epochs: stock Snorkel {fit['stock_seconds']:.2f} s, "
        f"block-masked loss {fit['block_masked_seconds']:.2f} s ({fit['ratio']:.1f}x), "
        f"probabilities within {fit['max_proba_difference']:.1e}"
    )
    for metric, with_end_model in (("accuracy", not args.no_end_model), ("macro_f1", False)):
        print(f"metric {metric}:", file=sys.stderr)
        started = time.perf_counter()
        report = evaluate_wrench(
            args.data, metric=metric, end_model=with_end_model, progress=_progress
        )
        report["total_seconds"] = round(time.perf_counter() - started, 2)
        figures["runs"][metric] = report
        mv = report["majority_vote"]
        print(f"\nchoices by {metric} (test scores; valid chooses)")
        print(f"{'model':<16}{'accuracy':>10}{'macro_f1':>10}{'vs MV':>8}{'vs publ.':>10}  time")
        rows = [("majority_vote", "majority_vote"), ("label_model", "best_label_model")]
        if "end_model" in report:
            rows.append(("end_model", "lr"))
        for name, published in rows:
            scores = report[name]
            seconds = scores.get("seconds")
            print(
                f"{name:<16}{scores['accuracy']:>10.4f}{scores['macro_f1']:>10.4f}"
                f"{scores['accuracy'] / mv['accuracy']:>7.3f}x"
                f"{scores['accuracy'] / PUBLISHED[published]:>9.3f}x"
                f"  {'' if seconds is None else f'{seconds:.1f} s'}"
            )
        chosen = report["label_model"]["config"]
        print(f"labeler chosen: {chosen}")
        if "end_model" in report:
            end = report["end_model"]
            print(f"end model chosen: {end['config']} at epoch {end['epochs']}")
            print(f"end model vs published MLP 85.53: {end['accuracy'] / PUBLISHED['mlp']:.3f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
