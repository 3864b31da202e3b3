"""`mlsys dataset …`: define a dataset from its data, list the defined ones, show one.

``init`` reads a sample of a source, guesses the definition (format, the id, text and label
columns, the classes, the metric, the gold policy), reads the whole source through it (so
a bad guess fails at once, naming the value), infers the dataset's three suites and writes
a starter LF module. Every guess can be overridden by an option.

Why one module: the guesses and the starter LF module serve `mlsys dataset init` only; the
commands' help text is a good part of the length.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlsys.data.definition import (
    DATASET_FILE,
    FORMATS,
    METRICS,
    PROJECT_DIR,
    SUITES,
    DatasetDefinition,
    DatasetError,
    dataset_root,
    kept_name,
    list_datasets,
    load_dataset,
    snake_case,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Proposal", "app", "propose_definition", "starter_lfs", "stored_source"]

app = typer.Typer(
    help="Datasets as configuration: define a dataset from its data, list and show them.",
    no_args_is_help=True,
)

SAMPLE_ROWS = 100_000
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

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="The folder of dataset folders. Default: $MLSYS_DATASETS_DIR, else datasets/ in "
        "the project.",
    ),
]


@app.callback()
def _group() -> None:
    """Datasets as configuration: define a dataset from its data, list and show them."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def _split(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


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
    one ``..``), else absolute. It resolves back to the same file either way."""
    if "://" in source or Path(source).is_absolute():
        return source
    absolute = Path(source).resolve()
    relative = Path(os.path.relpath(absolute, project_dir.resolve()))
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


# --- commands ------------------------------------------------------------------------------


@app.command("init")
def init(
    name: Annotated[str, typer.Argument(help="The dataset's name (lower case, digits, - or _).")],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="The data: a file, a folder of files, a .zip, an s3:// object or an https:// "
            "URL. Stored in the definition as its default source.",
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", help="csv, tsv, jsonl or parquet. Default: by file suffix."),
    ] = None,
    no_header: Annotated[
        bool, typer.Option("--no-header", help="CSV/TSV files have no header row (give --columns).")
    ] = False,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="The column names, comma-separated (with --no-header)."),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="The text column. Default: the longest one.")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template", help="Instead of --text: a template over columns, e.g. '{a} | {b}'."
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="The gold label column. Default: one named like label."),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option("--id", help="The id column. Default: a unique column named like id."),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option("--keep", help="Columns to keep, comma-separated. Default: all others."),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Class names in order, comma-separated. Default: labels."),
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option("--positive", help="Binary only: the class F1 is about. Default: minority."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="accuracy, f1 or macro_f1. Default: by class balance."),
    ] = None,
    gold_column: Annotated[
        str | None,
        typer.Option("--gold-column", help="Keep gold labels by this column's values."),
    ] = None,
    gold_dev: Annotated[
        str | None,
        typer.Option("--gold-dev", help="Values of --gold-column marking dev rows (a,b)."),
    ] = None,
    gold_test: Annotated[
        str | None,
        typer.Option("--gold-test", help="Values of --gold-column marking test rows (a,b)."),
    ] = None,
    gold_fraction: Annotated[
        float | None,
        typer.Option("--gold-fraction", help="Keep gold labels on this share of labeled rows."),
    ] = None,
    test_size: Annotated[
        float | None,
        typer.Option("--test-size", help="Gold rows held out as test: a count or a share < 1."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the gold split.")] = 123,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite an existing dataset.yaml and suites (lfs.py is kept)."
        ),
    ] = False,
    root: RootOption = None,
) -> None:
    """Define a dataset from its data: guess the definition, check it on the whole source,
    infer its suites and write a starter LF module."""
    from mlsys.data.sources import read_dataset, read_table, source_format
    from mlsys.validation.infer import infer_dataset_suites
    from mlsys.validation.suites import dump_suite

    folder = dataset_root(root) / name
    target = folder / DATASET_FILE
    if target.exists() and not force:
        raise _fail(f"{target} exists; pass --force to overwrite it")
    if format is not None and format not in FORMATS:
        raise _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if metric is not None and metric not in METRICS:
        raise _fail(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    names = _split(columns)
    if no_header and not names:
        raise _fail("--no-header needs the column names: --columns a,b,...")
    fmt = format or source_format(source)
    if fmt is None:
        raise _fail(f"cannot tell the format of {source} from its suffix; pass --format")
    # A downloaded source is fetched once, for the sample and the full read.
    with tempfile.TemporaryDirectory(prefix="mlsys-download-") as downloads:
        cache = Path(downloads)
        try:
            table = read_table(
                source,
                format=fmt,
                header=not no_header,
                column_names=names,
                max_rows=SAMPLE_ROWS,
                cache_dir=cache,
            )
            proposal = propose_definition(
                name,
                table,
                source=stored_source(source),
                format=fmt,
                header=not no_header,
                column_names=names,
                text=text,
                template=template,
                label=label,
                id_column=id_column,
                keep=_split(keep),
                classes=_split(classes),
                positive=positive,
                metric=metric,
                gold_column=gold_column,
                gold_dev=_split(gold_dev),
                gold_test=_split(gold_test),
                gold_fraction=gold_fraction,
                test_size=test_size,
                seed=seed,
            )
            definition = DatasetDefinition.from_mapping(
                proposal.fields, where=f"the definition of {name!r}", folder=folder.resolve()
            )
        except (ValueError, OSError) as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"dataset {name}: read {len(table)} sample rows of {source}")
        for line in proposal.guesses:
            typer.echo(f"  {line}")
        try:
            raw = read_dataset(definition, cache_dir=cache)
            suites = infer_dataset_suites(definition, raw, inferred_from=str(definition.source))
        except (ValueError, OSError) as exc:
            typer.secho(definition.to_yaml(), err=True)
            raise _fail(
                f"the source does not fit the definition above, nothing was written: {exc} "
                "(override a guess with --label, --classes, --text, --id, ...)"
            ) from exc

    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f"# Written by `mlsys dataset init`; review it, it is yours now.\n{definition.to_yaml()}",
        encoding="utf-8",
    )
    written = [target]
    for suite_name in SUITES:
        path = definition.suite_path(suite_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_suite(suites[suite_name]), encoding="utf-8")
        written.append(path)
    lfs = definition.path(definition.lf_module)
    if lfs.exists():
        typer.echo(f"kept the existing {lfs}")
    else:
        lfs.write_text(starter_lfs(definition, raw), encoding="utf-8")
        written.append(lfs)
    try:
        load_dataset(name, root=dataset_root(root))
    except DatasetError as exc:
        raise _fail(f"the written definition does not load: {exc}") from exc
    labeled = int(raw["label"].notna().sum())
    typer.echo(f"read {len(raw)} rows ({labeled} labeled) through the definition; wrote:")
    for path in written:
        typer.echo(f"  {path}")
    root_flag = f" --root {root}" if root is not None else ""
    env = f"MLSYS_DATASETS_DIR={root} " if root is not None else ""
    typer.echo(
        "next:\n"
        f"  edit {lfs} (the labeling functions)\n"
        f"  mlsys dataset show {name}{root_flag}\n"
        f"  {env}mlsys label lfs {name}   (each LF's coverage, conflicts, dev accuracy)\n"
        f"  {env}mlsys validate run --dataset {name} --suite raw --source {source} "
        "--mode quarantine\n"
        f"  {env}mlsys run end_to_end/end_to_end -p dataset={name}   (the stack up: "
        "mlsys stack up; it registers the model "
        f"{definition.registered_model_name})"
    )


@app.command("list")
def list_(root: RootOption = None) -> None:
    """List the defined datasets: name, classes, metric and source."""
    names = list_datasets(root)
    if not names:
        typer.echo(
            f"no datasets in {dataset_root(root)}; define one with "
            "`mlsys dataset init NAME --source PATH`"
        )
        return
    for name in names:
        try:
            definition = load_dataset(name, root)
        except DatasetError as exc:
            typer.secho(f"{name}  (bad definition: {exc})", fg="red")
            continue
        typer.echo(
            f"{name}  k={definition.k}  metric={definition.metric}  "
            f"source={definition.source or '(none)'}"
        )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The dataset's name (or its folder).")],
    root: RootOption = None,
) -> None:
    """Show a dataset: its definition, its LF sets and which suites it has."""
    from mlsys.validation.suites import load_suite, suite_version

    try:
        definition = load_dataset(name, root)
    except DatasetError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"# {definition.path(DATASET_FILE)}")
    typer.echo(definition.to_yaml().rstrip())
    typer.echo("LF sets:")
    try:
        sets = definition.lf_set_names()
    except DatasetError as exc:
        typer.secho(f"  error: {exc}", fg="red")
        sets = []
    for set_name in sets:
        try:
            lfs = definition.lf_set(set_name)
        except DatasetError as exc:
            typer.secho(f"  {set_name}: error: {exc}", fg="red")
            continue
        shown = ", ".join(str(getattr(lf, "name", lf)) for lf in lfs)
        typer.echo(f"  {set_name}: {len(lfs)} LFs ({shown})")
    typer.echo("suites:")
    for suite_name in SUITES:
        path = definition.suite_path(suite_name)
        if not path.is_file():
            typer.echo(f"  {suite_name}: missing ({path})")
            continue
        try:
            suite = load_suite(path)
            typer.echo(
                f"  {suite_name}: {len(suite['expectations'])} expectations, "
                f"v{suite_version(suite)} ({path})"
            )
        except (ValueError, OSError) as exc:
            typer.secho(f"  {suite_name}: invalid: {exc}", fg="red")
