"""`mlsys dataset …`: define a dataset from its data, list the defined ones, show one.

``init`` reads a sample of a source, guesses the definition (format, the id, text and label
columns, the classes, the metric, the gold policy), reads the whole source through it (so
a bad guess fails at once, naming the value), infers the dataset's three suites and writes
a starter LF module. Every guess can be overridden by an option. The guesses and the
starter LF module are mlsys.data.propose's; this module is the command around them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mlsys.data.definition import (
    DATASET_FILE,
    FORMATS,
    METRICS,
    SUITES,
    DatasetDefinition,
    DatasetError,
    dataset_root,
    list_datasets,
    load_dataset,
)
from mlsys.data.propose import propose_definition, starter_lfs, stored_source

app = typer.Typer(
    help="Datasets as configuration: define a dataset from its data, list and show them.",
    no_args_is_help=True,
)

SAMPLE_ROWS = 100_000

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
