"""Proposing a dataset's definition from its data: the guesses behind `mlsys dataset init`.

:func:`propose_definition` takes a sample of a source (as :func:`read_table` gives it) and
guesses the definition: the id, text and label columns, the classes, the metric, the gold
policy; every argument given replaces its guess, and each guess comes with one line saying
why. :func:`stored_source` is how a definition stores the source it was made from, and
:func:`starter_lfs` writes a starter LF module (two example keyword LFs, learned from the
labeled rows when there are any).

Usage::

    table = read_table("data/sms.csv", format="csv", max_rows=100_000)
    proposal = propose_definition("sms-spam", table, source=stored_source("data/sms.csv"),
                                  format="csv")
    definition = DatasetDefinition.from_mapping(proposal.fields, where="sms-spam",
                                                folder=folder)
    lfs_py = starter_lfs(definition, read_dataset(definition))
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsys.data.definition import (
    PROJECT_DIR,
    DatasetDefinition,
    kept_name,
    snake_case,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Proposal", "propose_definition", "starter_lfs", "stored_source"]

MAX_CLASSES = 50
LABEL_NAMES = (
    "label", "labels", "class", "category", "relation", "target", "y", "sentiment", "polarity"
)  # fmt: skip
GOLD_NAMES = ("split", "fold", "set", "subset", "partition")
DEV_VALUES = ("valid", "validation", "dev")
TEST_VALUES = ("test",)
DEFAULT_GOLD_FRACTION = 0.2
MINORITY_F1 = 0.35
IMBALANCE_RATIO = 3.0
KEYWORDS_PER_LF = 3
_WORD_RE = re.compile(r"[a-z][a-z']{3,}")
_STOPWORDS = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "also",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "itself",
        "just",
        "more",
        "most",
        "once",
        "only",
        "other",
        "ought",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "whom",
        "will",
        "with",
        "would",
        "your",
        "yours",
        "yourself",
    ]
)


# --- guessing ------------------------------------------------------------------------------


@dataclass
class Proposal:
    """A proposed definition (the YAML's fields) and one line per guess, saying why."""

    fields: dict[str, Any]
    guesses: list[str] = field(default_factory=list)


def _sorted_classes(values: list[str]) -> list[str]:
    """Class names sorted, numbers numerically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _guess_id(table: pd.DataFrame) -> str | None:
    candidates = [
        c for c in table.columns if snake_case(c) == "id" or snake_case(c).endswith("_id")
    ]
    candidates.sort(key=lambda c: snake_case(c) != "id")
    for column in candidates:
        values = table[column]
        if values.notna().all() and values.is_unique:
            return str(column)
    return None


def _guess_label(table: pd.DataFrame, taken: set[str]) -> str | None:
    by_name = {snake_case(c): str(c) for c in table.columns if c not in taken}
    for wanted in LABEL_NAMES:
        column = by_name.get(wanted)
        if column is not None and 2 <= table[column].nunique() <= MAX_CLASSES:
            return column
    return None


def _gold_values(values: pd.Series) -> tuple[list[str], list[str]]:
    """The dev-like and test-like values of a split column."""
    distinct = sorted(str(v) for v in values.dropna().unique())
    dev = [v for v in distinct if v.strip().lower() in DEV_VALUES]
    test = [v for v in distinct if v.strip().lower() in TEST_VALUES]
    return dev, test


def _guess_gold_column(table: pd.DataFrame, taken: set[str]) -> str | None:
    for column in table.columns:
        name = snake_case(column)
        if column in taken or not (name in GOLD_NAMES or name.endswith("_split")):
            continue
        dev, test = _gold_values(table[column])
        if dev and test:
            return str(column)
    return None


def _guess_text(table: pd.DataFrame, taken: set[str]) -> str | None:
    lengths = {
        str(c): float(table[c].dropna().str.len().mean())
        for c in table.columns
        if c not in taken and table[c].notna().any()
    }
    return max(lengths, key=lambda c: lengths[c]) if lengths else None


def _guess_metric(counts: Counter[str], k: int) -> tuple[str, str]:
    if not counts or len(counts) < 2:
        return "accuracy", "no labels to judge the balance by"
    total = sum(counts.values())
    smallest, largest = min(counts.values()), max(counts.values())
    if k == 2:
        share = smallest / total
        if share < MINORITY_F1:
            return "f1", f"the minority class is {share:.0%} of labeled rows"
        return "accuracy", f"the minority class is {share:.0%} of labeled rows"
    ratio = largest / smallest
    if ratio > IMBALANCE_RATIO:
        return "macro_f1", f"the largest class is {ratio:.1f}x the smallest"
    return "accuracy", f"the largest class is {ratio:.1f}x the smallest"


def propose_definition(
    name: str,
    table: pd.DataFrame,
    *,
    source: str,
    format: str,
    header: bool = True,
    column_names: list[str] | None = None,
    text: str | None = None,
    template: str | None = None,
    label: str | None = None,
    id_column: str | None = None,
    keep: list[str] | None = None,
    classes: list[str] | None = None,
    positive: str | None = None,
    metric: str | None = None,
    gold_column: str | None = None,
    gold_dev: list[str] | None = None,
    gold_test: list[str] | None = None,
    gold_fraction: float | None = None,
    test_size: float | None = None,
    seed: int = 123,
) -> Proposal:
    """Guess a definition of ``table`` (a sample of the source, as :func:`read_table` gives
    it); every argument given replaces its guess.

    Raises:
        ValueError: a role cannot be guessed, or a named column is not in the sample.
    """
    found = [str(c) for c in table.columns]
    named = [id_column, text, label, gold_column, *(keep or [])]
    unknown = [c for c in named if c is not None and c not in found]
    if unknown:
        raise ValueError(f"column(s) {unknown} are not in the source; its columns: {found}")
    guesses: list[str] = []

    def note(role: str, value: Any, why: str, given: bool) -> None:
        guesses.append(f"{role:<9} {value}" + ("" if given else f"  (guessed: {why})"))

    if id_column is None:
        id_column = _guess_id(table)
        why = "named like an id, values unique" if id_column else "none found: hashed from rows"
        note("id", id_column or "(generated)", why, False)
    else:
        note("id", id_column, "", True)
    taken = {c for c in (id_column,) if c}
    if label is None:
        label = _guess_label(table, taken | {text} if text else taken)
        why = f"named like {'/'.join(LABEL_NAMES)}, few distinct values"
        note("label", label or "(none: unlabeled)", why if label else "none found", False)
    else:
        note("label", label, "", True)
    taken |= {label} if label else set()
    if gold_column is None and gold_fraction is None:
        gold_column = _guess_gold_column(table, taken | ({text} if text else set()))
    taken |= {gold_column} if gold_column else set()
    if template is None and text is None:
        text = _guess_text(table, taken)
        if text is None:
            raise ValueError(
                f"no column is left to be the text (columns: {found}); pass --text or --template"
            )
        note("text", text, "the string column with the longest mean length", False)
    else:
        note("text" if text else "template", text or template, "", True)
    taken |= {text} if text else set()
    if keep is None:
        keep = [c for c in found if c not in taken]
        note("keep", keep or "(none)", "every other column", False)
    else:
        note("keep", keep or "(none)", "", True)

    counts: Counter[str] = Counter()
    if label is not None:
        counts = Counter(str(v).strip() for v in table[label].dropna())
        counts.pop("", None)
    if classes is None:
        if not counts:
            raise ValueError(
                "no label column to take the classes from; pass --label COLUMN, or "
                "--classes a,b for unlabeled data"
            )
        classes = _sorted_classes(list(counts))
        note("classes", ", ".join(classes), f"the {label} column's values", False)
    else:
        note("classes", ", ".join(classes), "", True)
    class_counts = Counter({c: counts.get(c, 0) for c in classes if counts.get(c, 0)})
    if len(classes) == 2 and positive is None:
        positive = min(classes, key=lambda c: (class_counts.get(c, 0), -classes.index(c)))
        note("positive", positive, "the minority class", False)
    elif positive is not None:
        note("positive", positive, "", True)
    if metric is None:
        metric, why = _guess_metric(class_counts, len(classes))
        note("metric", metric, why, False)
    else:
        note("metric", metric, "", True)

    gold: dict[str, Any]
    if gold_column is not None and gold_fraction is None:
        dev, test = _gold_values(table[gold_column])
        gold = {
            "by": "column",
            "column": gold_column,
            "dev": gold_dev if gold_dev is not None else dev,
            "test": gold_test if gold_test is not None else test,
        }
        note(
            "gold",
            f"by column {gold_column}: dev {gold['dev']}, test {gold['test']}",
            "a split column with dev and test values",
            gold_dev is not None,
        )
    else:
        gold = {"by": "fraction", "fraction": gold_fraction or DEFAULT_GOLD_FRACTION}
        gold["test_size"] = test_size if test_size is not None else 0.5
        note(
            "gold",
            f"a fraction {gold['fraction']} of labeled rows, test_size {gold['test_size']}",
            "no split column with dev and test values",
            gold_fraction is not None,
        )
    if test_size is not None and gold["by"] != "fraction":
        gold["test_size"] = test_size
    gold["seed"] = seed

    columns: dict[str, Any] = {}
    for role, value in (("id", id_column), ("text", text), ("template", template)):
        if value is not None:
            columns[role] = value
    if label is not None:
        columns["label"] = label
    if keep:
        columns["keep"] = keep
    fields: dict[str, Any] = {"name": name, "source": source, "format": format}
    if not header:
        fields["header"] = False
    if column_names:
        fields["column_names"] = column_names
    fields.update({"columns": columns, "classes": classes, "metric": metric, "gold": gold})
    if positive is not None:
        fields["positive"] = positive
    return Proposal(fields=fields, guesses=guesses)


def stored_source(source: str, project_dir: Path = PROJECT_DIR) -> str:
    """How a definition stores ``source``: URLs and absolute paths as given; a relative
    path relative to the project folder when the data is inside it or beside it (at most
    one ``..``; a folder beside it may be a symbolic link), else absolute. It resolves
    back to the same file either way."""
    if "://" in source or Path(source).is_absolute():
        return source
    absolute = Path(source).resolve()
    # Relative as the path was given (links kept), checked by where it leads.
    relative = Path(os.path.relpath(os.path.abspath(source), project_dir.resolve()))
    ups = len([p for p in relative.parts if p == ".."])
    if ups <= 1 and (project_dir / relative).resolve() == absolute:
        return relative.as_posix()
    return str(absolute)


# --- the starter LF module -----------------------------------------------------------------


def _example_keywords(
    definition: DatasetDefinition, raw: pd.DataFrame
) -> list[tuple[str, list[str]]]:
    """Up to two (class, keywords) pairs: words frequent in one class and rare in the others
    among the labeled rows (the gold dev rows when the gold policy names them)."""
    rows = raw[raw["label"].notna() & raw["text"].notna()]
    if definition.gold.by == "column" and definition.gold.column is not None:
        split = kept_name(definition.gold.column)
        dev = rows[rows[split].isin(list(definition.gold.dev))]
        rows = dev if len(dev) else rows
    if rows.empty:
        return []
    in_class: dict[int, Counter[str]] = {}
    overall: Counter[str] = Counter()
    sizes = Counter(int(v) for v in rows["label"])
    for text, label in zip(rows["text"], rows["label"], strict=True):
        words = set(_WORD_RE.findall(str(text).lower())) - _STOPWORDS
        in_class.setdefault(int(label), Counter()).update(words)
        overall.update(words)
    best: list[tuple[float, int, list[str]]] = []
    for index, counts in in_class.items():
        least = max(2, math.ceil(0.02 * sizes[index]))
        scored = sorted(
            (
                (count / overall[word], count, word)
                for word, count in counts.items()
                if count >= least and count / overall[word] >= 0.6
            ),
            reverse=True,
        )[:KEYWORDS_PER_LF]
        if scored:
            best.append((scored[0][0] * scored[0][1], index, [w for _, _, w in scored]))
    best.sort(reverse=True)
    return [(definition.classes[index], words) for _, index, words in best[:2]]


def _literal(value: str) -> str:
    """A Python string literal in double quotes (JSON's escapes are Python's too)."""
    return json.dumps(value, ensure_ascii=False)


def starter_lfs(definition: DatasetDefinition, raw: pd.DataFrame) -> str:
    """The text of a starter LF module for ``definition``: how to write LFs, two example
    keyword LFs (from the labeled rows of ``raw`` when it has labels, else placeholders)
    and ``LF_SETS``."""
    examples = _example_keywords(definition, raw)
    learned = bool(examples)
    if not learned:
        examples = [(c, [f"a word typical of {c.lower()}"]) for c in definition.classes[:2]]
    names: list[str] = []
    code: list[str] = []
    for class_name, words in examples:
        variable = f"keyword_{snake_case(class_name)}"
        while variable in names:
            variable += "_2"
        names.append(variable)
        arguments = f"[{', '.join(_literal(w) for w in words)}], {_literal(class_name)}, " + (
            f"name={_literal(variable)}"
        )
        line = f"{variable} = keyword_lf({arguments})"
        code.append(line if len(line) <= 100 else f"{variable} = keyword_lf(\n    {arguments}\n)")
    kept = ", ".join(f"``x.{c}``" for c in definition.kept_columns) or "none"
    indices = ", ".join(f"{c} = {i}" for i, c in enumerate(definition.classes))
    origin = (
        "were picked by `mlsys dataset init` from words frequent in one class and rare in "
        "the others among the labeled rows"
        if learned
        else "are placeholders (the data had no labels to pick words from): their keywords "
        "never match"
    )
    last = _literal(definition.classes[-1])
    paragraphs = [
        f"Labeling functions of the dataset {definition.name!r}; this is where its LFs go.",
        "An LF looks at one row and votes for a class, or abstains. A row shows its text "
        f"as ``x.text`` and each kept column under its own name ({kept}). Labels may be "
        f"class names or class indices ({indices}); the dataset resolves names when it "
        "loads its LF sets.",
        "Keyword and regex rules use the factories of ``mlsys.labeling.lf``, which run on "
        "a whole column at once (a keyword matches as a substring of the lower-cased "
        "text, so keywords are lower case)::",
        f'    keyword_free = keyword_lf(["free", "win"], {last})\n'
        f'    regex_gift = regex_lf(r"free.*gift", {last})',
        "Anything else is a Snorkel labeling function::",
        "    @labeling_function()\n"
        "    def many_exclamations(x: Any) -> int | str:\n"
        f'        return {last} if x.text.count("!") > 3 else ABSTAIN',
        "Return ``ABSTAIN`` when the rule does not apply, and give every LF a unique name. "
        'Put LFs in a set of ``LF_SETS``; the pipeline uses ``LF_SETS["default"]`` unless '
        "told otherwise.",
        f"The two example LFs below {origin}: replace them with your own.",
    ]
    doc = "\n\n".join(p if p.startswith("    ") else textwrap.fill(p, width=88) for p in paragraphs)
    return (
        f'"""{doc}\n"""\n\n'
        "from __future__ import annotations\n\n"
        "from typing import Any  # noqa: F401\n\n"
        "from mlsys.labeling.lf import ABSTAIN, keyword_lf, labeling_function, regex_lf  "
        "# noqa: F401\n\n"
        + "\n".join(code)
        + f'\n\nLF_SETS = {{"default": [{", ".join(names)}]}}\n'
    )
