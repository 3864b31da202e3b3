"""The summary row and section for benchmarks/featurizer.py (results/featurizer.json)."""

from __future__ import annotations

from ._format import Results, commas, fmt, pct, power_of_two, size_label, span, times, word

_FEATURIZER_TASKS = ("youtube-spam", "wrench-semeval")
_FEATURIZER_LABELS = {
    "mlsys": "mlsys `pipeline_featurizer()`",
    "sklearn (closest)": "scikit-learn, closest: word (1,2) + char_wb (1,4), summed, sublinear, L2",
    "sklearn (union)": "scikit-learn, `make_union` of the two at 2^14 each, defaults",
}
FEATURIZER_NOISE_P = 0.05  # McNemar p-value under which an accuracy difference is not noise


def _featurizer_fastest_library(results: Results) -> tuple[str, Results]:
    """The scikit-learn set-up with the most rows/s on distinct texts: the strongest baseline."""
    runs = results["speed"]["distinct"]
    name = max((n for n in runs if n != "mlsys"), key=lambda n: runs[n]["median_rows_per_s"])
    return name, runs[name]


def _featurizer_equal_accuracy(results: Results, name: str) -> bool:
    """True when no task's test accuracy differs from ours beyond noise (McNemar)."""
    return all(
        results["accuracy"][task]["featurizers"][name]["against_mlsys"]["p_value"]
        >= FEATURIZER_NOISE_P
        for task in _FEATURIZER_TASKS
    )


def _featurizer_accuracies(results: Results, name: str) -> str:
    return ", ".join(
        f"{task} {fmt(results['accuracy'][task]['featurizers'][name]['test_accuracy'], 3)}"
        for task in _FEATURIZER_TASKS
    )


def featurizer_row(results: Results) -> str:
    """Summary row: our hashing featurizer against scikit-learn's HashingVectorizer."""
    name, library = _featurizer_fastest_library(results)
    ours = results["speed"]["distinct"]["mlsys"]
    repeated = results["speed"]["repeated"]
    ratio = ours["median_rows_per_s"] / library["median_rows_per_s"]
    repeated_ratio = repeated["mlsys"]["median_rows_per_s"] / repeated[name]["median_rows_per_s"]
    equal = _featurizer_equal_accuracy(results, name)
    keeps = library["over_mlsys"] <= 1 or library["over_mlsys_cpu"] <= 1 or not equal
    return (
        f"| `featurizer.py`: text featurizer, {size_label(results['rows'])} distinct texts "
        f"(seeded generator over the YouTube comments' words), one process | scikit-learn "
        f"`HashingVectorizer` ({_FEATURIZER_LABELS[name].split(', ', 1)[1]}) on the same texts "
        f"| **{times(ratio)}** ({commas(ours['median_rows_per_s'])} vs "
        f"{commas(library['median_rows_per_s'])} rows/s; {times(1 / library['over_mlsys_cpu'])} "
        f"per CPU second); {times(repeated_ratio)} on the "
        f"repeated comments; test accuracy {'equal within noise' if equal else 'differs'} "
        f"(ours {_featurizer_accuracies(results, 'mlsys')}; theirs "
        f"{_featurizer_accuracies(results, name)})"
        f"; the pipeline {'keeps its own featurizer' if keeps else 'moves to scikit-learn'}; "
        "see below |"
    )


def render_featurizer(results: Results) -> str:
    """Section: the text featurizer against scikit-learn's HashingVectorizer."""
    speed, accuracy = results["speed"], results["accuracy"]
    distinct = speed["inputs"]["distinct"]
    repeated = speed["inputs"]["repeated"]
    loads = speed["load_average_1min_before_rounds"]
    lines = [
        f"Text featurizer against scikit-learn (`benchmarks/featurizer.py`; "
        f"{commas(results['rows'])} texts per input,",
        f"one process, chunks of {commas(results['chunk_rows'])} texts as scoring featurizes "
        f"them, {power_of_two(results['n_features'])} features; median rows/s of",
        f"{word(speed['rounds'])} interleaved rounds, wall clock and per CPU second of the "
        "process (one thread each;",
        f"the machine is shared: 1-minute load average {span(loads)} before the rounds); "
        "test accuracy of",
        "scikit-learn's `LogisticRegression` on each featurization, C chosen on dev/valid):",
        "",
        "| featurizer | distinct texts, rows/s | per CPU second | repeated texts, rows/s "
        "| per CPU second | youtube-spam test | wrench-semeval test |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in speed["distinct"].items():
        again = speed["repeated"][name]
        cells = []
        for task in _FEATURIZER_TASKS:
            score = accuracy[task]["featurizers"][name]
            cell = fmt(score["test_accuracy"], 3)
            if "against_mlsys" in score:
                cell += f" (p {fmt(score['against_mlsys']['p_value'], 2)})"
            cells.append(cell)
        speeds = []
        for figures in (run, again):
            for key, over in (("median_rows_per_s", "over_mlsys"),
                              ("median_rows_per_cpu_s", "over_mlsys_cpu")):  # fmt: skip
                ratio = "" if name == "mlsys" else f" ({times(figures[over])})"
                speeds.append(f"{commas(figures[key])}{ratio}")
        lines.append(
            f"| {_FEATURIZER_LABELS.get(name, name)} | {' | '.join(speeds)} | {cells[0]} "
            f"| {cells[1]} |"
        )
    youtube, semeval = accuracy["youtube-spam"], accuracy["wrench-semeval"]
    lines += [
        "",
        f"Distinct texts: each round {commas(distinct['texts'])} new texts, all distinct, drawn "
        "by a seeded word-bigram chain",
        f"over the {commas(distinct['source_vocabulary'])} words of the 1,956 YouTube comments "
        f"({fmt(distinct['mean_words'], 1)} words a text; the first round's hold",
        f"{commas(distinct['distinct_words'])} distinct words and "
        f"{commas(distinct['distinct_word_bigrams'])} word bigrams, "
        f"{commas(distinct['word_bigrams_not_in_source'])} of them not in the comments). The "
        "vocabulary",
        "is smaller than a real stream's, which helps our featurizer's per-process caches. "
        "Repeated texts: the",
        f"comments cycled ({commas(repeated['distinct_texts'])} distinct of "
        f"{commas(repeated['texts'])}), the earlier text benchmarks' input, where our caches "
        "always hit.",
        "",
        f"Accuracy: youtube-spam trains on its {commas(youtube['rows']['train'])} train rows "
        "with the source's labels (the pipeline",
        "weakly labels them instead), chooses C on the "
        f"{commas(youtube['rows']['dev'])} gold dev rows and scores the "
        f"{commas(youtube['rows']['test'])} gold test rows;",
        f"wrench-semeval trains on WRENCH train's {commas(semeval['rows']['train'])} gold "
        f"labels, chooses C on valid ({commas(semeval['rows']['valid'])} rows) and scores test",
        f"({commas(semeval['rows']['test'])} rows). p: McNemar's exact test against ours on the "
        "same test rows.",
        "",
    ]
    name, library = _featurizer_fastest_library(results)
    equal = _featurizer_equal_accuracy(results, name)
    share = f"{pct(library['over_mlsys'])} % (per CPU second {pct(library['over_mlsys_cpu'])} %)"
    if library["over_mlsys"] > 1 and library["over_mlsys_cpu"] > 1 and equal:
        lines.append(
            f"scikit-learn ({name.split(' ', 1)[1].strip('()')}) featurizes {share} of our speed "
            "at equal accuracy: the pipeline moves to it as a new featurizer version."
        )
    else:
        reason = "at equal accuracy" if equal else "and its accuracy differs beyond noise"
        if max(library["over_mlsys"], library["over_mlsys_cpu"]) > 1:
            reason += " (wall clock and CPU time disagree on which is faster: no gain beyond noise)"
        lines.append(
            f"The fastest scikit-learn set-up featurizes distinct texts at {share} of our speed "
            f"{reason}, so the pipeline\nkeeps its own featurizer. Both build each text's grams "
            "in Python; ours keeps each word's character grams\nin a per-process cache, "
            "scikit-learn's `char_wb` analyzer builds them anew for every word."
        )
    return "\n".join(lines)
