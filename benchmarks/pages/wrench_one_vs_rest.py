"""The section for benchmarks/wrench_one_vs_rest.py (results/wrench_one_vs_rest.json)."""

from __future__ import annotations

from ._format import Results, bold, fmt


def render_wrench_one_vs_rest(results: Results) -> str:
    """Section: one SemEval relation against the rest, scored by F1."""
    lines = [
        "Imbalanced binary tasks made from SemEval (`benchmarks/wrench_one_vs_rest.py`; one",
        "relation against the rest: an LF's vote for it is a positive vote, for any other",
        "relation a negative one; metric F1, valid chooses, test reports; one run, figures in",
        "`benchmarks/results/wrench_one_vs_rest.json`). A check of the choices on data they were",
        "not tuned on, for the failure an accuracy-chosen end model shows on imbalanced sets (F1",
        "near 0, predicting only the majority class):",
        "",
        "| positive class | positives train / valid / test | majority vote F1 | chosen labeler F1 "
        "| end model F1 (accuracy) |",
        "|---|---|---|---|---|",
    ]
    collapsed, below = [], []
    for name, task in results["tasks"].items():
        rows = task["positive_rows"]
        share = task["positive_share"]["test"] * 100
        labeler, end = task["label_model"], task["end_model"]
        kind = labeler["config"]["kind"].replace("_", " ")
        lines.append(
            f"| {name} ({share:.2g} %) | {rows['train']} / {rows['valid']} / {rows['test']} | "
            f"{fmt(task['majority_vote']['f1'], 3)} | {fmt(labeler['f1'], 3)} ({kind}) | "
            f"{bold(fmt(end['f1'], 3), end['f1'] > labeler['f1'])} ({fmt(end['accuracy'], 3)}) |"
        )
        if end["f1"] == 0 or labeler["f1"] == 0:
            collapsed.append(name)
        if end["f1"] < labeler["f1"]:
            below.append(task)
    tasks = len(results["tasks"])
    if not collapsed:
        verdict = "Neither collapses" if tasks == 2 else "None collapses"
    else:
        verdict = f"{', '.join(collapsed)} collapses"
    text = f"{verdict} to the majority class."
    for task in below:
        end = task["end_model"]
        balance = "class-balanced" if end["config"]["balance"] != "none" else "unweighted"
        threshold = f", threshold {fmt(end['threshold'])}" if end["threshold"] is not None else ""
        text += (
            f" With {task['positive_rows']['valid']} positive valid rows the end model's\n"
            f"choice ({balance}{threshold}) falls below the labeler on test; valid's\n"
            f"cross-validated F1 ({fmt(end['valid_f1'])}) did not show it."
        )
    return "\n".join([*lines, "", text])
