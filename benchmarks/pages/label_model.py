"""The summary row and section for benchmarks/label_model.py (results/label_model.json)."""

from __future__ import annotations

import re

from ._format import Results, bold, fmt


def _labeler_name(name: str) -> str:
    """A label_model.json labeler as the table names it."""
    best = re.fullmatch(r"best LabelModel on dev: LabelModel \((.*)\)", name)
    if best:
        parts = []
        for part in best.group(1).split(", "):
            if part.startswith(("lr ", "l2 ")):
                continue
            prior = re.fullmatch(r"fit prior (\w+)", part)
            parts.append(f"{prior.group(1)} fit prior" if prior else part)
        return f"best LabelModel on dev ({', '.join(parts)})"
    tutorial = re.fullmatch(r"LabelModel, tutorial config: (\d+) ep", name)
    if tutorial:
        return f"LabelModel, the tutorial's config ({tutorial.group(1)} epochs)"
    return name


def _tutorial_epochs(name: str) -> str | None:
    match = re.fullmatch(r"LabelModel, tutorial config: (\d+) ep", name)
    return match.group(1) if match else None


def render_label_model(results: Results) -> str:
    """Section: label quality of each labeler on the YouTube tutorial split."""
    lines = [
        "Label quality (`benchmarks/label_model.py`; test rows scored once, labelers chosen on",
        'the dev rows by accuracy, cross-validated; "dev acc" is each labeler scored on all',
        "of dev, so it flatters whatever was estimated there):",
        "",
        "| LF set | labeler | dev acc | test acc | test F1 |",
        "|---|---|---|---|---|",
    ]
    for set_name, lf_set in results["sets"].items():
        for i, (name, scores) in enumerate(lf_set["labelers"].items()):
            shown_set = f"{set_name} ({lf_set['lfs']} LFs)" if i == 0 else set_name
            chosen_here = name.startswith("selected on dev")
            lines.append(
                f"| {shown_set} | {_labeler_name(name)} | {fmt(scores['dev_accuracy'], 3)} | "
                f"{bold(fmt(scores['test_accuracy'], 3), chosen_here)} | "
                f"{fmt(scores['test_f1'], 3)} |"
            )
    sets = results["sets"]
    tutorial, extended = sets["tutorial"], sets["extended"]
    target = results["target"]

    def selected(lf_set: Results) -> tuple[str, Results]:
        return next((n, s) for n, s in lf_set["labelers"].items() if n.startswith("selected"))

    name, chosen = selected(tutorial)
    vote = tutorial["labelers"]["majority vote"]["test_accuracy"]
    accuracy = chosen["test_accuracy"]
    what = (
        "a vote weighted by each LF's accuracy on\ndev, smoothed"
        if "weighted vote" in name
        else _labeler_name(name)
    )
    against_target = "above" if accuracy >= target else "below"
    against_vote = "above" if accuracy > vote else "not above"
    lines += [
        "",
        f"With the tutorial's LFs the chosen labeler ({what}) reaches {fmt(accuracy, 3)} on "
        f"test, {against_target} the {fmt(target)} target and {against_vote} majority vote\n"
        f"({fmt(vote, 3)}); with the extended set {fmt(selected(extended)[1]['test_accuracy'], 3)}."
        " Majority vote now gives rows\nno LF votes on the dev class prior instead of a coin flip.",
    ]
    config = next((n for n in extended["labelers"] if _tutorial_epochs(n)), None)
    if config is not None:
        before = tutorial["labelers"].get(config, {}).get("test_accuracy")
        after = extended["labelers"][config]["test_accuracy"]
        verb = "falls to" if before is not None and after < before else "reaches"
        lines[-1] += (
            f" With {extended['lfs']} LFs\nthe tutorial's own LabelModel call (no class prior, "
            f"{_tutorial_epochs(config)} epochs) {verb} {fmt(after)}."
        )
    return "\n".join(lines)


def label_model_row(results: Results) -> str:
    return (
        "| `label_model.py`: test accuracy on the tutorial split | majority vote, and the "
        "Snorkel tutorial's LabelModel call | see below |"
    )
