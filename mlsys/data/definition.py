"""Dataset definitions: ``datasets/<name>/dataset.yaml`` and the labeling functions beside it.

A definition says where a dataset's data is, how to read it, which columns play which
role, the classes, the metric every choice and report uses, and which rows keep gold
labels. Every flow takes a dataset name and reads the rest from here; engines receive
what they need as arguments and know no dataset by name.

Usage::

    spec = load_dataset("youtube-spam")
    spec.classes            # ("ham", "spam")
    spec.metric             # "accuracy"
    lfs = spec.lf_set()     # the "default" LF set, labels resolved to class indices

The YAML (every field but ``name``, ``columns`` and ``classes`` optional)::

    name: sms-spam
    source: data/sms.csv            # default source; relative paths: to the project folder
    format: csv                     # csv | tsv | jsonl | parquet; default: by file suffix
    header: true                    # false: give the column names under column_names
    columns:
      id: msg_id                    # or omit: a stable id hashed from the row's content
      text: message                 # or template: "{sentence} | {entity1} | {entity2}"
      label: label                  # the gold label column; omit for unlabeled data
      keep: [sender]                # columns kept as they are (LFs see them by name)
    classes: [ham, spam]            # in order: class i is index i
    positive: spam                  # binary only: the class F1 is about
    metric: f1                      # accuracy | f1 | macro_f1
    gold:                           # which labeled rows keep gold labels (dev + test)
      by: fraction                  # file | column | fraction
      fraction: 0.2
      test_size: 0.5                # of the gold rows: a count, or a share below 1
      seed: 123
    suites: {slack: 0.1, max_categories: 20}
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlsys.data.lf_module import LFModuleError, import_lf_module, lf_sets_of

__all__ = [
    "DATASET_FILE",
    "DEFAULT_LF_SET",
    "FORMATS",
    "METRICS",
    "RESERVED_COLUMNS",
    "ColumnRoles",
    "DatasetDefinition",
    "DatasetError",
    "GoldPolicy",
    "SuiteSettings",
    "dataset_root",
    "dataset_roots",
    "list_datasets",
    "load_dataset",
    "snake_case",
]

DATASET_FILE = "dataset.yaml"
DEFAULT_LF_SET = "default"
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet")
METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1")
SUITES: tuple[str, ...] = ("raw", "training", "serving")
PROJECT_DIR = Path(__file__).resolve().parents[2]

RESERVED_COLUMNS: frozenset[str] = frozenset(
    {
        "text",
        "label",
        "split",
        "gold_label",
        "weak_label",
        "confidence",
        "label_source",
        "weight",
        "probability",
        "source_file",
        "source_row",
    }
)
"""Normalized names the pipeline writes itself. A kept column whose name is one of these
(or starts with ``proba_``) is renamed ``source_<name>`` when read."""

Format = Literal["csv", "tsv", "jsonl", "parquet"]
Metric = Literal["accuracy", "f1", "macro_f1"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FIELD_RE = re.compile(r"\{([^{}]+)\}")


class DatasetError(ValueError):
    """A definition is missing or wrong; the message names the file, the field and the value."""


def snake_case(name: str) -> str:
    """The normalized name of a source column: ``COMMENT_ID`` -> ``comment_id``,
    ``sentenceText`` -> ``sentence_text``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.lstrip("\ufeff").strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", spaced).strip("_").lower() or "column"


def kept_name(column: str) -> str:
    """The normalized name under which a kept source column appears in a batch."""
    name = snake_case(column)
    return f"source_{name}" if name in RESERVED_COLUMNS or name.startswith("proba_") else name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnRoles(_Strict):
    """Which source columns play which role (names as in the source, before normalizing)."""

    id: str | None = Field(
        None, description="Row id column; empty: a stable id hashed from the row's content."
    )
    text: str | None = Field(None, description="The text column LFs and the model read.")
    template: str | None = Field(
        None, description="Instead of text: a template over source columns, e.g. '{a} | {b}'."
    )
    label: str | None = Field(None, description="The gold label column; empty: unlabeled data.")
    keep: tuple[str, ...] = Field((), description="Columns kept as they are.")

    @model_validator(mode="after")
    def _one_text(self) -> ColumnRoles:
        if (self.text is None) == (self.template is None):
            raise ValueError(
                "give exactly one of columns.text (a column) and columns.template "
                f"(a template over columns); found text={self.text!r}, "
                f"template={self.template!r}"
            )
        if self.template is not None and not _FIELD_RE.search(self.template):
            raise ValueError(
                f"columns.template {self.template!r} names no column; write e.g. "
                "'{sentence} | {entity1}'"
            )
        return self

    @property
    def id_column(self) -> str:
        """The normalized name of the id column (``id`` when generated)."""
        return snake_case(self.id) if self.id is not None else "id"

    def template_fields(self) -> list[str]:
        """Source columns the template joins (empty without a template)."""
        return _FIELD_RE.findall(self.template) if self.template else []

    def source_columns(self) -> list[str]:
        """Every source column the definition names, in role order, without repeats."""
        named = [self.id, self.text, *self.template_fields(), self.label, *self.keep]
        return list(dict.fromkeys(c for c in named if c is not None))


class GoldPolicy(_Strict):
    """Which labeled rows keep their gold labels (dev to choose by, test to report on);
    every other row is weakly labeled and its label hidden."""

    by: Literal["file", "column", "fraction"] = Field(
        "fraction", description="file: rows of `files`; column: `column`'s values; fraction."
    )
    files: tuple[str, ...] = Field((), description="by file: the gold files' names.")
    column: str | None = Field(None, description="by column: the source column to read.")
    dev: tuple[str, ...] = Field((), description="by column: values marking dev rows.")
    test: tuple[str, ...] = Field((), description="by column: values marking test rows.")
    fraction: float | None = Field(
        None, gt=0, lt=1, description="by fraction: share of labeled rows kept gold."
    )
    test_size: float = Field(
        0.5, gt=0, description="by file/fraction: gold rows held out as test (count or share)."
    )
    seed: int = Field(123, description="Seed of the shuffles and splits.")

    @field_validator("dev", "test", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> GoldPolicy:
        if self.by == "file" and not self.files:
            raise ValueError("gold.by is 'file' but gold.files is empty; list the gold files")
        if self.by == "column":
            if not self.column:
                raise ValueError("gold.by is 'column' but gold.column is not given")
            if not self.dev or not self.test:
                raise ValueError(
                    f"gold.by is 'column' ({self.column!r}): give its dev and test values "
                    f"(found dev={list(self.dev)}, test={list(self.test)})"
                )
            both = sorted(set(self.dev) & set(self.test))
            if both:
                raise ValueError(f"gold.dev and gold.test share value(s) {both}")
        if self.by == "fraction" and self.fraction is None:
            raise ValueError("gold.by is 'fraction' but gold.fraction is not given (e.g. 0.2)")
        if self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ValueError(
                f"gold.test_size must be a row count or a share below 1, got {self.test_size}"
            )
        return self


class SuiteSettings(_Strict):
    """How `mlsys dataset init` infers the dataset's suites (thresholds of the checks)."""

    slack: float = Field(0.1, ge=0, description="Relative widening of inferred bounds.")
    max_categories: int = Field(
        20, ge=1, description="Most distinct values a column may have to get a value set."
    )
    drift_threshold: float | None = Field(
        None, gt=0, description="Drift threshold of every compared feature; empty: inferred."
    )


class DatasetDefinition(_Strict):
    """One dataset, as ``datasets/<name>/dataset.yaml`` defines it (see the module doc)."""

    name: str
    description: str = ""
    source: str | None = None
    download: str | None = None
    format: Format | None = None
    header: bool = True
    column_names: tuple[str, ...] | None = None
    columns: ColumnRoles
    classes: tuple[str, ...]
    positive: str | None = None
    metric: Metric = "accuracy"
    # Without a gold section: a fifth of the labeled rows keep gold labels.
    gold: GoldPolicy = Field(default_factory=lambda: GoldPolicy.model_validate({"fraction": 0.2}))
    suites: SuiteSettings = Field(default_factory=lambda: SuiteSettings.model_validate({}))
    lf_module: str = "lfs.py"
    model_name: str | None = None
    folder: Path | None = Field(None, exclude=True)

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value

    @field_validator("positive", mode="before")
    @classmethod
    def _positive_name(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetDefinition:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name {self.name!r} must be lower-case letters, digits, '-' or '_' "
                "(it becomes part of S3 keys and model names)"
            )
        if len(self.classes) < 2:
            raise ValueError(f"classes needs at least 2 class names, found {list(self.classes)}")
        repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if repeated:
            raise ValueError(f"classes repeats {repeated}: {list(self.classes)}")
        if self.positive is not None and self.positive not in self.classes:
            raise ValueError(
                f"positive {self.positive!r} is not one of the classes {list(self.classes)}"
            )
        if self.positive is not None and len(self.classes) != 2:
            raise ValueError(
                f"positive is for binary datasets; this one has {len(self.classes)} classes"
            )
        if self.metric == "f1" and len(self.classes) != 2:
            raise ValueError(
                f"metric 'f1' is the positive class's F1 of a binary dataset; this one has "
                f"{len(self.classes)} classes: use 'macro_f1' or 'accuracy'"
            )
        if not self.header and not self.column_names:
            raise ValueError("header is false: give the columns' names in column_names")
        if self.column_names is not None:
            missing = [c for c in self.columns.source_columns() if c not in self.column_names]
            if missing:
                raise ValueError(
                    f"columns name {missing}, which are not in column_names "
                    f"{list(self.column_names)}"
                )
        gold_column = self.gold.column if self.gold.by == "column" else None
        if gold_column is not None and self.column_names and gold_column not in self.column_names:
            raise ValueError(
                f"gold.column {gold_column!r} is not in column_names {list(self.column_names)}"
            )
        if not self.lf_module.endswith(".py") or "/" in self.lf_module:
            raise ValueError(
                f"lf_module must be a .py file beside the definition, got {self.lf_module!r}"
            )
        return self

    # --- classes ------------------------------------------------------------------------

    @property
    def k(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def positive_index(self) -> int:
        """Index of the positive class of a binary dataset (class 1 when not given)."""
        return self.classes.index(self.positive) if self.positive is not None else 1

    @property
    def id_column(self) -> str:
        """The normalized name of the id column in every batch of this dataset."""
        return self.columns.id_column

    @property
    def lf_columns(self) -> list[str]:
        """Normalized names of the kept columns LFs see beside ``text`` (the gold policy's
        column is not one of them)."""
        return [kept_name(c) for c in self.columns.keep]

    @property
    def kept_columns(self) -> list[str]:
        """Normalized names of the kept columns (and of the gold policy's column)."""
        names = [kept_name(c) for c in self.columns.keep]
        if self.gold.by == "column" and self.gold.column is not None:
            names.append(kept_name(self.gold.column))
        return list(dict.fromkeys(names))

    @property
    def registered_model_name(self) -> str:
        """The MLflow registered model name: ``model_name``, else ``<name>-classifier``."""
        return self.model_name or f"{self.name}-classifier"

    def class_index(self, value: object) -> int:
        """The index of a class given by name or by index (``"spam"``, ``1``, ``"1"``).

        Raises:
            DatasetError: naming the value and the classes.
        """
        if isinstance(value, str):
            text = value.strip()
            if text in self.classes:
                return self.classes.index(text)
            if re.fullmatch(r"[0-9]+", text) and int(text) < self.k:
                return int(text)
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.k:
            return value
        raise DatasetError(
            f"dataset {self.name!r}: {value!r} is not a class; classes are "
            f"{list(self.classes)} (or their indices 0..{self.k - 1})"
        )

    # --- files beside the definition -----------------------------------------------------

    def path(self, *parts: str) -> Path:
        """A path inside the definition's folder."""
        if self.folder is None:
            raise DatasetError(f"dataset {self.name!r} was not loaded from a folder")
        return self.folder.joinpath(*parts)

    def suite_path(self, suite: str) -> Path:
        """Where the dataset's ``raw``, ``training`` or ``serving`` suite is kept."""
        if suite not in SUITES:
            raise DatasetError(f"unknown suite {suite!r}; suites are {list(SUITES)}")
        return self.path("suites", f"{suite}.json")

    def resolved_source(self, project_dir: Path = PROJECT_DIR) -> str:
        """The default source as a location to read: URLs as they are, relative paths
        taken from the project folder; ``download`` (a URL) when ``source`` is a local
        path that does not exist.

        Raises:
            DatasetError: the definition has no default source.
        """
        if not self.source:
            if self.download:
                return self.download
            raise DatasetError(
                f"dataset {self.name!r} has no default source: pass one, or set `source` in "
                f"{self.path(DATASET_FILE)}"
            )
        if "://" in self.source:
            return self.source
        path = Path(self.source)
        local = path if path.is_absolute() else (project_dir / path).resolve()
        if not local.exists() and self.download:
            return self.download
        return str(local)

    def lf_module_object(self) -> ModuleType:
        """The dataset's LF module, imported once per process under a stable name (so its
        LFs pickle by reference)."""
        file = self.path(self.lf_module)
        if not file.is_file():
            raise DatasetError(
                f"dataset {self.name!r} has no LF module {file}; write one (see "
                "`mlsys dataset init`) with LF_SETS = {'default': [...]}"
            )
        try:
            return import_lf_module(
                file, f"mlsys_datasets.{self.name.replace('-', '_')}.{file.stem}"
            )
        except LFModuleError as exc:
            raise DatasetError(str(exc)) from exc

    def lf_set_names(self) -> list[str]:
        """Names of the LF sets the dataset's module defines."""
        return list(self._lf_sets())

    def lf_set(self, name: str = DEFAULT_LF_SET) -> list[Any]:
        """The LF set ``name`` with every label resolved to a class index.

        Raises:
            DatasetError: no such set (naming the known ones), an LF is not a Snorkel
                LabelingFunction, LF names repeat, or a label is not a class.
        """
        from mlsys.labeling.lf import bind_class_labels

        sets = self._lf_sets()
        if name not in sets:
            raise DatasetError(
                f"dataset {self.name!r} has no LF set {name!r}; its LF module defines "
                f"{sorted(sets)}"
            )
        try:
            return bind_class_labels(list(sets[name]), self.class_index)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"dataset {self.name!r}, LF set {name!r}: {exc}") from exc

    def _lf_sets(self) -> Mapping[str, Sequence[Any]]:
        module = self.lf_module_object()
        try:
            return lf_sets_of(module, self.path(self.lf_module))
        except LFModuleError as exc:
            raise DatasetError(str(exc)) from exc

    # --- YAML ---------------------------------------------------------------------------

    def to_yaml(self) -> str:
        """The definition as YAML, the fields in a readable order, defaults left out."""
        data = self.model_dump(mode="json", exclude_defaults=True, exclude={"folder"})
        data["columns"] = self.columns.model_dump(mode="json", exclude_none=True)
        if not data["columns"].get("keep"):
            data["columns"].pop("keep", None)
        data["classes"] = list(self.classes)
        data["metric"] = self.metric
        gold = self.gold.model_dump(mode="json", exclude_none=True)
        if float(gold["test_size"]).is_integer() and gold["test_size"] >= 1:
            gold["test_size"] = int(gold["test_size"])  # a row count
        data["gold"] = {key: value for key, value in gold.items() if value != []}
        order = ["name", "description", "source", "download", "format", "header", "column_names",
                 "columns", "classes", "positive", "metric", "gold", "suites",
                 "lf_module", "model_name"]  # fmt: skip
        ordered = {key: data[key] for key in order if key in data}
        return str(yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True))

    @classmethod
    def from_mapping(
        cls, data: Any, *, where: str, folder: Path | None = None
    ) -> DatasetDefinition:
        """Validate a parsed YAML document; errors name ``where``, each bad field and the
        value found there."""
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"{where}: expected a mapping of fields, found {type(data).__name__}"
            )
        try:
            return cls.model_validate({**data, "folder": folder})
        except ValidationError as exc:
            raise DatasetError(f"{where}: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(definition)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (a typo?)"
        found = error.get("input")
        shown = "" if error["type"] in ("value_error", "missing") else f" (found {found!r})"
        lines.append(f"field {field}: {message}{shown}")
    return "; ".join(lines)


# --- finding definitions -------------------------------------------------------------------


def dataset_roots(
    root: str | os.PathLike[str] | None = None, *, search: str | None = None
) -> list[Path]:
    """The folders holding one folder per dataset, searched in order: ``root`` alone when
    given; else each folder of ``search`` (several joined by ``:``; default
    ``$MLSYS_DATASETS_DIR``), then ``datasets/`` in the project folder."""
    if root is not None:
        return [Path(root)]
    if search is None:
        search = os.environ.get("MLSYS_DATASETS_DIR", "")
    extra = [Path(part) for part in search.split(os.pathsep) if part]
    return [*extra, PROJECT_DIR / "datasets"]


def dataset_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where new definitions go: ``root``, else the first of :func:`dataset_roots`."""
    return dataset_roots(root)[0]


def list_datasets(
    root: str | os.PathLike[str] | None = None, *, search: str | None = None
) -> list[str]:
    """Names of the defined datasets (folders with a dataset.yaml) in every root of
    :func:`dataset_roots`, sorted."""
    names: set[str] = set()
    for folder in dataset_roots(root, search=search):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if (p / DATASET_FILE).is_file())
    return sorted(names)


def load_dataset(
    name: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    search: str | None = None,
) -> DatasetDefinition:
    """The definition of dataset ``name`` (or of the folder / dataset.yaml at that path).

    Raises:
        DatasetError: no such dataset (naming the defined ones), unreadable YAML, or a bad
            field (naming it and what was found).
    """
    text = os.fspath(name)
    candidate = Path(text)
    if candidate.name == DATASET_FILE and candidate.is_file():
        file = candidate
    elif (candidate / DATASET_FILE).is_file() and (os.sep in text or text.startswith(".")):
        file = candidate / DATASET_FILE
    else:
        roots = dataset_roots(root, search=search)
        found = [f for f in (r / text / DATASET_FILE for r in roots) if f.is_file()]
        if not found:
            known = ", ".join(list_datasets(root, search=search)) or "(none)"
            where = ", ".join(str(r) for r in roots)
            raise DatasetError(
                f"unknown dataset {text!r}: no {text}/{DATASET_FILE} in {where}; defined "
                f"datasets: {known} (create one with `mlsys dataset init {text} --source PATH`)"
            )
        file = found[0]
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read {file}: {exc}") from exc
    definition = DatasetDefinition.from_mapping(data, where=str(file), folder=file.parent.resolve())
    if definition.name != file.parent.name:
        raise DatasetError(
            f"{file}: field name: {definition.name!r} differs from its folder's name "
            f"{file.parent.name!r}"
        )
    return definition
