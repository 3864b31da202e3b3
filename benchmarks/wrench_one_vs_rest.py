"""Imbalanced binary tasks made from WRENCH SemEval: one relation against the rest, scored
by F1, as a check that the labeler and end-model choices hold on data they were not
tuned on (the failure this guards against: an end model chosen by accuracy that predicts
only the majority class, F1 near 0).

Each task keeps SemEval's texts and LFs: an LF vote for the chosen relation becomes a
positive vote, a vote for any other relation a negative one, abstains stay abstains; the
gold label is 1 for the relation, 0 otherwise. Protocol as ``mlsys label evaluate
--wrench DIR --end-model --metric f1``: train fits, valid chooses, test only reports.
Baseline in the same run: majority vote on the same votes.

    .venv/bin/python benchmarks/wrench_one_vs_rest.py [--data DIR] [--classes 1 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.labeling.wrench import WrenchDataset, WrenchSplit, evaluate_wrench, load_wrench

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wrench-semeval"
RESULTS = Path(__file__).resolve().parent / "results" / "wrench_one_vs_rest.json"


def one_vs_rest(data: WrenchDataset, positive: int) -> WrenchDataset:
    """``data`` as the binary task "class ``positive`` or not"."""

    def split(part: WrenchSplit) -> WrenchSplit:
        matrix = part.L
        votes = np.where(matrix < 0, matrix, (matrix == positive).astype(matrix.dtype))
        return dataclasses.replace(part, L=votes, labels=(part.labels == positive).astype(np.int64))

    return dataclasses.replace(
        data,
        train=split(data.train),
        valid=split(data.valid),
        test=split(data.test),
        cardinality=2,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the WRENCH SemEval folder")
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[1, 5],
        help="relations to make positive, one task each (default: 1, about 20 %% of rows, "
        "and 5, about 3 %%)",
    )
    args = parser.parse_args()
    data = load_wrench(args.data)
    names = json.loads((args.data / "label.json").read_text(encoding="utf-8"))
    figures: dict[str, Any] = {"dataset": args.data.name, "python": platform.python_version()}
    tasks: dict[str, Any] = {}
    print(f"{'positive class':<22}{'share (test)':>13}{'MV F1':>8}{'labeler F1':>12}"
          f"{'end model F1':>14}{'end acc':>9}")  # fmt: skip
    for positive in args.classes:
        task = one_vs_rest(data, positive)
        started = time.perf_counter()
        report = evaluate_wrench(task, metric="f1", end_model=True, progress=None)
        name = names.get(str(positive), str(positive))
        share = {s: float(getattr(task, s).labels.mean()) for s in ("train", "valid", "test")}
        tasks[name] = {
            "positive_share": share,
            "positive_rows": {s: int(getattr(task, s).labels.sum()) for s in share},
            "majority_vote": report["majority_vote"],
            "label_model": report["label_model"],
            "end_model": report["end_model"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"{name:<22}{share['test']:>13.3f}{report['majority_vote']['f1']:>8.3f}"
            f"{report['label_model']['f1']:>12.3f}{report['end_model']['f1']:>14.3f}"
            f"{report['end_model']['accuracy']:>9.3f}",
            flush=True,
        )
    figures["tasks"] = tasks
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
