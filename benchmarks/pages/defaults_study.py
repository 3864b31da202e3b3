"""The section for benchmarks/defaults_study.py (results/defaults_study.json)."""

from __future__ import annotations

from ._format import Results, bold, commas, fmt, power_of_two


def render_defaults_study(results: Results) -> str:
    """Section: the study behind the text classifier's defaults, ranked on dev only."""
    metric = results["metric"]
    config, data = results["config"], results["data"]
    lines = [
        f"Defaults of the text classifier (`benchmarks/defaults_study.py`, {config['dataset']}, "
        f"LF set `{config['lf_set']}`; labeler",
        f"{data['labeler']}; {commas(data['covered_train_rows'])} covered train rows). Each "
        "candidate is ranked by",
        f"{config['repeats']} x {config['folds']}-fold cross-validation over the "
        f"{data['dev_rows']} gold dev rows: in each fold the pipeline's own",
        "choice (learning rate and epoch, `train` with `choose` on) runs on the other folds "
        "and the held-out fold",
        f"scores it. Only the chosen candidate is scored on the {data['test_rows']} test rows, "
        "after the choice:",
        "",
        f"| candidate | dev {metric}, cross-validated (sd) |",
        "|---|---|",
    ]
    for row in results["candidates"]:
        chosen = row["name"] == results["chosen"]
        default = " (the pipeline's default)" if row["name"] == results["pipeline_default"] else ""
        lines.append(
            f"| {bold(row['name'] + default, chosen)} | {bold(fmt(row['cv_mean'], 4), chosen)} "
            f"({fmt(row['cv_std'], 3)}) |"
        )
    test = results["test"]
    best = max(row["cv_mean"] for row in results["candidates"])
    tied = [row["name"] for row in results["candidates"] if row["cv_mean"] == best]
    chosen = next(row for row in results["candidates"] if row["name"] == results["chosen"])
    default = next(
        row for row in results["candidates"] if row["name"] == results["pipeline_default"]
    )
    same_features = (chosen["n_features"], chosen["char_ngrams"]) == (
        default["n_features"],
        default["char_ngrams"],
    )
    verdict = (
        "the pipeline's defaults exactly"
        if results["default_is_chosen"]
        else (
            f"the pipeline's default featurizer ({power_of_two(default['n_features'])} "
            "features) "
            + ("with" if same_features else "NOT: the default featurizer differs; with")
            + f" {'a hidden layer' if chosen['hidden'] else 'no hidden layer'}, where the "
            "default model is "
            + ("linear" if not default["hidden"] else f"MLP {default['hidden']}")
            + ". With `choose` on (the default) the pipeline picks linear or MLP [128] on dev "
            "in every run, so the model family is a per-run choice; only the featurizer is a "
            "fixed default"
        )
    )
    if len(tied) > 1:
        verdict += (
            f"; {len(tied)} candidates tie at {fmt(best, 4)} ({', '.join(tied)}) and the script "
            "takes the first listed, so dev does not tell these apart"
        )
    lines += [
        "",
        f"Chosen on dev: {results['chosen']}: {verdict}. Its test {metric} over "
        f"{len(test['seeds'])} seeds: {', '.join(fmt(t, 3) for t in test['seeds'])} (mean "
        f"{fmt(test['mean'], 3)}).",
    ]
    return "\n".join(lines)
