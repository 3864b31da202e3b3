"""The text featurizer against scikit-learn's ``HashingVectorizer``: speed on the same texts,
and the accuracy of the same linear model trained on each featurization.

Featurizers (every one 2**15 columns, sparse rows out, single process):

- mlsys: ``pipeline_featurizer()`` as the flows build it (word 1-2-grams and character
  1-4-grams of each space-padded word hashed by CRC-32 into the same 2**15 buckets, sign
  from the hash, ``1 + log(count)`` per distinct gram, rows scaled to unit L2 norm), called
  as ``predict_texts`` calls it: ``_hash_rows`` on chunks of 1,024 texts, with its
  per-process caches warm from the earlier rounds, as a long-lived scoring process has them.
- sklearn (closest): the nearest scikit-learn set-up, ``HashingVectorizer(analyzer="word",
  ngram_range=(1, 2), token_pattern=r"(?u)\\b\\w+\\b")`` plus ``HashingVectorizer(
  analyzer="char_wb", ngram_range=(1, 4))`` (character grams of each space-padded word),
  both lowercase, ``alternate_sign=True``, ``norm=None``, 2**15 features, their matrices
  summed (one bucket space, as ours), then ``sign * (1 + log|v|)`` on each stored value and
  ``sklearn.preprocessing.normalize`` (L2). Differences left: MurmurHash3 for CRC-32;
  ``char_wb`` splits words at whitespace (punctuation stays in them) where ours takes
  ``\\w+`` runs; the sublinear tf applies to bucket sums, not to each gram before they
  collide; a character gram can share a hash with an equal word.
- sklearn (union): what the scikit-learn documentation would have a user write:
  ``make_union`` of the same two vectorizers at 2**14 features each (2**15 columns in all),
  each with its default L2 norm, no sublinear tf.

Inputs, ``--rows`` texts each (default 100,000), every featurizer fed the same list:

- distinct: texts drawn by a seeded generator over the YouTube comments' own words: a word
  bigram chain (each next word one that follows the current word somewhere in the
  comments, or with probability 0.1, or when none does, a word drawn by its frequency),
  lengths in words drawn from the comments' lengths, repeats dropped, so every text of a
  round is distinct. Each round draws new texts (seed + round). The vocabulary is the
  1,956 comments' (about 7,000 whitespace-separated words), smaller than a real stream's:
  that helps the caches of ours, whose words' character grams all stay cached.
- repeated: the 1,956 YouTube comments cycled to ``--rows`` (the earlier text
  benchmarks' input; every text is seen ~50 times, so ours finds every gram cached).

Rounds are interleaved: each round times every featurizer on the distinct texts, then
every featurizer on the repeated texts, the featurizers' order rotating from round to
round; one untimed warm-up pass of each on 2,048 other texts comes first. The figure is the
median of the rounds' rows/s (wall clock), with the median rows per CPU second of this
process beside it (every featurizer here runs on one thread, so CPU time is its work, less
disturbed by other jobs on a shared machine than the wall clock); the 1-minute load average
before each round is recorded.

Accuracy (the same model for each featurization: scikit-learn ``LogisticRegression``
(lbfgs, max_iter 2000) with its C chosen from 0.1, 1, 10, 100 on dev accuracy, test scored
once with that C):

- youtube-spam, its dataset's split (datasets/youtube-spam/dataset.yaml: gold rows the
  Shakira video's, 250 of them test, the rest dev): trained on the train rows with the
  source's own labels (the pipeline hides those labels and weakly labels the rows; here
  they are gold, so the comparison is of the features, not of the labeler);
- wrench-semeval (9 relation classes): trained on WRENCH train's gold labels, C chosen on
  valid, test reported; the texts are what the pipeline's end model reads
  (``WrenchSplit.model_texts``: the stretch between the two entity mentions).

Beside each test accuracy: the test rows, and McNemar's exact test of each sklearn
featurization against ours on the same rows (the rows one gets right and the other wrong),
so a difference can be told from noise.

    .venv/bin/python benchmarks/featurizer.py [--rows 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from scipy.stats import binomtest
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_union
from sklearn.preprocessing import normalize

from mlsys.models.text import PREDICT_CHUNK_ROWS, HashingFeaturizer, pipeline_featurizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "featurizer.json"
N_FEATURES = 2**15
C_GRID = (0.1, 1.0, 10.0, 100.0)
BACKOFF = 0.1

Featurize = Callable[[list[str]], sp.csr_matrix]


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


# --- featurizers ------------------------------------------------------------------------------


def mlsys_featurize(featurizer: HashingFeaturizer) -> Featurize:
    """Ours, as a scipy CSR matrix (what the accuracy model takes)."""

    def featurize(texts: list[str]) -> sp.csr_matrix:
        rows = featurizer._hash_rows(texts)
        return sp.csr_matrix(
            (rows.values, rows.indices, rows.indptr), shape=(len(texts), featurizer.n_features)
        )

    return featurize


def sklearn_closest(n_features: int = N_FEATURES) -> Featurize:
    """The nearest HashingVectorizer set-up to ours (see the module docstring)."""
    common: dict[str, Any] = {
        "n_features": n_features,
        "lowercase": True,
        "alternate_sign": True,
        "norm": None,
    }
    words = HashingVectorizer(
        analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common
    )
    chars = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), **common)

    def featurize(texts: list[str]) -> sp.csr_matrix:
        matrix = (words.transform(texts) + chars.transform(texts)).tocsr()
        matrix.eliminate_zeros()  # grams whose signs cancelled
        data = matrix.data
        matrix.data = np.sign(data) * (1.0 + np.log(np.abs(data)))
        out: sp.csr_matrix = normalize(matrix, norm="l2", copy=False)
        return out

    return featurize


def sklearn_union(n_features: int = N_FEATURES) -> Featurize:
    """``make_union`` of the two vectorizers at half the features each, defaults otherwise."""
    union = make_union(
        HashingVectorizer(
            analyzer="word",
            ngram_range=(1, 2),
            token_pattern=r"(?u)\b\w+\b",
            n_features=n_features // 2,
        ),
        HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), n_features=n_features // 2),
    )

    def featurize(texts: list[str]) -> sp.csr_matrix:
        out: sp.csr_matrix = union.transform(texts).tocsr()
        return out

    return featurize


FEATURIZERS: dict[str, str] = {
    "mlsys": "pipeline_featurizer(): CRC-32 of word 1-2-grams and char 1-4-grams of "
    "padded \\w+ words into one 2**15 space, sign from the hash, 1+log(count) per gram, L2",
    "sklearn (closest)": "HashingVectorizer word (1,2) + char_wb (1,4), 2**15 each, summed, "
    "alternate_sign, sign*(1+log|v|), normalize L2",
    "sklearn (union)": "make_union(HashingVectorizer word (1,2), char_wb (1,4)), 2**14 "
    "features each, defaults (alternate_sign, L2 norm each)",
}


def build_featurizers() -> dict[str, Featurize]:
    return {
        "mlsys": mlsys_featurize(pipeline_featurizer()),
        "sklearn (closest)": sklearn_closest(),
        "sklearn (union)": sklearn_union(),
    }


# --- inputs -----------------------------------------------------------------------------------


class TextGenerator:
    """Seeded texts over a corpus's whitespace-separated words: a word bigram chain with
    frequency back-off, lengths drawn from the corpus's texts' lengths."""

    def __init__(self, corpus: Sequence[str]) -> None:
        tokens = [text.split() for text in corpus]
        self.lengths = [len(t) for t in tokens if t]
        counts = Counter(word for t in tokens for word in t)
        self.words = list(counts)
        weights = np.asarray([counts[w] for w in self.words], dtype=np.float64)
        self.weights = weights / weights.sum()
        following: dict[str, list[str]] = defaultdict(list)
        for t in tokens:
            for current, after in itertools.pairwise(t):
                following[current].append(after)
        self.following = dict(following)
        self.bigrams = {pair for t in tokens for pair in itertools.pairwise(t)}

    def texts(self, n: int, seed: int) -> list[str]:
        """``n`` distinct texts, the same for the same seed."""
        rng = random.Random(seed)
        draws = np.random.default_rng(seed).choice(len(self.words), size=1 << 20, p=self.weights)
        position = 0

        def frequent() -> str:
            nonlocal draws, position
            if position == len(draws):
                draws = np.random.default_rng(rng.getrandbits(64)).choice(
                    len(self.words), size=1 << 20, p=self.weights
                )
                position = 0
            position += 1
            return self.words[int(draws[position - 1])]

        seen: set[str] = set()
        out: list[str] = []
        while len(out) < n:
            word = frequent()
            text = [word]
            for _ in range(rng.choice(self.lengths) - 1):
                after = self.following.get(word)
                word = rng.choice(after) if after and rng.random() >= BACKOFF else frequent()
                text.append(word)
            joined = " ".join(text)
            if joined not in seen:
                seen.add(joined)
                out.append(joined)
        return out

    def describe(self, texts: Sequence[str]) -> dict[str, Any]:
        tokens = [t.split() for t in texts]
        words = {w for t in tokens for w in t}
        bigrams = {pair for t in tokens for pair in itertools.pairwise(t)}
        return {
            "texts": len(texts),
            "distinct_texts": len(set(texts)),
            "mean_words": round(sum(map(len, tokens)) / len(tokens), 2),
            "distinct_words": len(words),
            "distinct_word_bigrams": len(bigrams),
            "word_bigrams_not_in_source": len(bigrams - self.bigrams),
            "source_vocabulary": len(self.words),
        }


def youtube_comments() -> Any:
    from mlsys.data import load_dataset, read_dataset

    definition = load_dataset("youtube-spam")
    return definition, read_dataset(definition, str(DATA / "youtube-spam"))


# --- speed ------------------------------------------------------------------------------------


def time_featurizer(featurize: Featurize, texts: list[str], chunk_rows: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process's) to featurize ``texts`` in chunks of
    ``chunk_rows``, as scoring does."""
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), chunk_rows):
        featurize(texts[start : start + chunk_rows])
    return time.perf_counter() - started, time.process_time() - cpu


def speed(
    featurizers: dict[str, Featurize],
    generator: TextGenerator,
    comments: list[str],
    rows: int,
    rounds: int,
    seed: int,
    chunk_rows: int,
) -> dict[str, Any]:
    repeated = (comments * (rows // len(comments) + 1))[:rows]
    warm_up = generator.texts(2048, seed - 1)
    for name, featurize in featurizers.items():
        time_featurizer(featurize, warm_up, chunk_rows)
        time_featurizer(featurize, comments[:2048], chunk_rows)
        _progress(f"warmed up {name}")
    names = list(featurizers)
    seconds: dict[str, dict[str, list[tuple[float, float]]]] = {
        case: {name: [] for name in names} for case in ("distinct", "repeated")
    }
    loads: list[float] = []
    described: dict[str, Any] = {}
    for round_ in range(rounds):
        distinct = generator.texts(rows, seed + round_)
        if round_ == 0:
            described = generator.describe(distinct)
        loads.append(round(os.getloadavg()[0], 2))
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for case, texts in (("distinct", distinct), ("repeated", repeated)):
            for name in order:
                elapsed, cpu = time_featurizer(featurizers[name], texts, chunk_rows)
                seconds[case][name].append((elapsed, cpu))
                _progress(
                    f"round {round_ + 1}/{rounds} {case:8} {name:18} {rows / elapsed:7.0f} rows/s"
                    f" ({rows / cpu:.0f} per CPU second)"
                )
    figures: dict[str, Any] = {
        "rounds": rounds,
        "load_average_1min_before_rounds": loads,
        "inputs": {
            "distinct": {
                "what": "seeded word-bigram-chain texts over the YouTube comments' words, "
                "distinct within a round; new texts each round",
                **described,
            },
            "repeated": {
                "what": f"the {len(comments):,} YouTube comments cycled to {rows:,} rows "
                "(repeated texts: ours finds every gram cached)",
                "texts": rows,
                "distinct_texts": len(set(repeated)),
            },
        },
    }
    for case, by_name in seconds.items():
        runs: dict[str, dict[str, Any]] = {}
        for name, times in by_name.items():
            walls = [wall for wall, _ in times]
            cpus = [cpu for _, cpu in times]
            runs[name] = {
                "seconds": [round(t, 3) for t in walls],
                "cpu_seconds": [round(t, 3) for t in cpus],
                "rows_per_s": [round(rows / t, 1) for t in walls],
                "median_rows_per_s": round(statistics.median(rows / t for t in walls), 1),
                "median_rows_per_cpu_s": round(statistics.median(rows / t for t in cpus), 1),
            }
        ours, ours_cpu = (runs["mlsys"][k] for k in ("median_rows_per_s", "median_rows_per_cpu_s"))
        for run in runs.values():
            run["over_mlsys"] = round(run["median_rows_per_s"] / ours, 3)
            run["over_mlsys_cpu"] = round(run["median_rows_per_cpu_s"] / ours_cpu, 3)
        figures[case] = runs
    return figures


# --- accuracy ---------------------------------------------------------------------------------


def fit_and_score(
    featurize: Featurize,
    train: tuple[list[str], np.ndarray],
    dev: tuple[list[str], np.ndarray],
    test: tuple[list[str], np.ndarray],
) -> tuple[dict[str, Any], np.ndarray]:
    """LogisticRegression with C chosen on dev; test scored once. Also the test hits."""
    x_train, x_dev, x_test = (featurize(texts) for texts, _ in (train, dev, test))
    by_c: dict[float, float] = {}
    models: dict[float, LogisticRegression] = {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x_train, train[1])
        models[c] = model
        by_c[c] = float((model.predict(x_dev) == dev[1]).mean())
    best = max(C_GRID, key=lambda c: (by_c[c], -c))  # ties: the stronger regularization
    hits = models[best].predict(x_test) == test[1]
    return {
        "C": best,
        "dev_accuracy_by_C": {str(c): round(a, 4) for c, a in by_c.items()},
        "dev_accuracy": round(by_c[best], 4),
        "test_accuracy": round(float(hits.mean()), 4),
        "test_rows": len(hits),
    }, hits


def mcnemar(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on paired test rows: only rows one gets right and the other wrong."""
    only_ours = int((ours & ~theirs).sum())
    only_theirs = int((theirs & ~ours).sum())
    discordant = only_ours + only_theirs
    p = binomtest(only_ours, discordant, 0.5).pvalue if discordant else 1.0
    return {"only_mlsys_right": only_ours, "only_this_right": only_theirs, "p_value": round(p, 4)}


def accuracy(featurizers: dict[str, Featurize], definition: Any, comments: Any) -> dict[str, Any]:
    from mlsys.labeling.split import gold_split
    from mlsys.labeling.wrench import load_wrench

    split = gold_split(comments, definition.gold)
    parts = {
        name: (
            split.loc[split["split"] == name, "text"].tolist(),
            split.loc[split["split"] == name, "label"].to_numpy(dtype=np.int64),
        )
        for name in ("train", "dev", "test")
    }
    wrench = load_wrench(DATA / "wrench-semeval")
    semeval = {
        name: (getattr(wrench, name).model_texts, np.asarray(getattr(wrench, name).labels))
        for name in ("train", "valid", "test")
    }
    tasks: dict[str, dict[str, Any]] = {
        "youtube-spam": {
            "protocol": "train rows with the source's labels; C chosen on the gold dev rows; "
            "gold test rows scored once",
            "rows": {name: len(part[1]) for name, part in parts.items()},
            "sets": (parts["train"], parts["dev"], parts["test"]),
        },
        "wrench-semeval": {
            "protocol": "WRENCH train with its gold labels; C chosen on valid; test scored once "
            "(texts: the span between the two entity mentions)",
            "rows": {name: len(part[1]) for name, part in semeval.items()},
            "sets": (semeval["train"], semeval["valid"], semeval["test"]),
        },
    }
    out: dict[str, Any] = {}
    for task, spec in tasks.items():
        scores: dict[str, Any] = {}
        hits: dict[str, np.ndarray] = {}
        for name, featurize in featurizers.items():
            scores[name], hits[name] = fit_and_score(featurize, *spec["sets"])
            _progress(f"{task:15} {name:18} test accuracy {scores[name]['test_accuracy']:.4f}")
        for name in featurizers:
            if name != "mlsys":
                scores[name]["against_mlsys"] = mcnemar(hits["mlsys"], hits[name])
        out[task] = {"protocol": spec["protocol"], "rows": spec["rows"], "featurizers": scores}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="texts per input and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=20240, help="seed of the distinct texts")
    parser.add_argument("--chunk-rows", type=int, default=PREDICT_CHUNK_ROWS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    definition, comments = youtube_comments()
    texts = comments["text"].tolist()
    generator = TextGenerator(texts)
    featurizers = build_featurizers()
    figures: dict[str, Any] = {
        "benchmark": "featurizer",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "cpus": os.cpu_count(),
        "processes": 1,
        "n_features": N_FEATURES,
        "rows": args.rows,
        "chunk_rows": args.chunk_rows,
        "seed": args.seed,
        "featurizers": FEATURIZERS,
    }
    figures["accuracy"] = accuracy(featurizers, definition, comments)
    figures["speed"] = speed(
        featurizers, generator, texts, args.rows, args.rounds, args.seed, args.chunk_rows
    )
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    for case in ("distinct", "repeated"):
        runs = figures["speed"][case]
        line = ", ".join(
            f"{name} {run['median_rows_per_s']:.0f} rows/s ({run['over_mlsys']:.2f}x)"
            for name, run in runs.items()
        )
        print(f"{case}: {line}")
    for task, result in figures["accuracy"].items():
        line = ", ".join(
            f"{name} {score['test_accuracy']:.4f}" for name, score in result["featurizers"].items()
        )
        print(f"{task} test accuracy: {line}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
