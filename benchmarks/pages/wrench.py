"""The summary row for benchmarks/wrench.py (results/wrench.json)."""

from __future__ import annotations

from ._format import Results, fmt, times

# Targets the benchmarks' JSON does not carry itself (each is a goal, not a result).
WRENCH_END_MODEL_TARGET = 1.0  # end model test accuracy over WRENCH's published LR's


def render_wrench(results: Results) -> str:
    """Summary row: the WRENCH protocol on SemEval against the published figures."""
    run = results["runs"]["accuracy"]
    published = results["published"]
    labeler = run["label_model"]
    kind = labeler["config"]["kind"].replace("_", " ")
    accuracy = labeler["accuracy"]
    over_vote = times(accuracy / run["majority_vote"]["accuracy"], 3)
    over_best = times(accuracy / published["best_label_model"], 3)
    versus = (
        f"{over_vote} majority vote and the best published label model"
        if over_vote == over_best
        else f"{over_vote} majority vote, {over_best} the best published label model"
    )
    result = (
        f"chosen labeler (a {kind}) **{fmt(accuracy, 3)}** test accuracy, {versus}, chosen in "
        f"{fmt(labeler['seconds'], 1)} s"
    )
    if "end_model" in run:
        end = run["end_model"]["accuracy"]
        over_lr = end / published["lr"]
        met = "met" if over_lr >= WRENCH_END_MODEL_TARGET else "not met"
        result += (
            f"; end model **{fmt(end, 3)}**, {times(over_lr, 3)} the published LR (target {met})"
        )
    snorkel = results["snorkel_fit"]
    result += (
        f"; Snorkel fit {times(snorkel['ratio'], 0)} faster "
        f"({fmt(snorkel['block_masked_seconds'])} s vs {fmt(snorkel['stock_seconds'], 1)} s "
        f"for {snorkel['epochs']} epochs)"
    )
    return (
        f"| `wrench.py`: WRENCH protocol on `{results['dataset']}` (valid chooses, test reports)"
        f" | majority vote; WRENCH's published label models (best "
        f"{fmt(published['best_label_model'] * 100)}) and end models on weak labels (LR "
        f"{fmt(published['lr'] * 100)}, MLP {fmt(published['mlp'] * 100)}); stock Snorkel "
        f"`LabelModel.fit` | {result} |"
    )
