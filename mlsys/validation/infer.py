"""A dataset's three suites (raw, training, serving), inferred from one raw batch.

What each suite holds follows the batches the pipeline writes:

=========  =====================================================================
raw        the raw batch (``read_dataset``): the id unique and not null, the text
           not null within length bounds, the label a class index or missing
           (unlabeled batches are allowed), the kept columns as inferred, the
           provenance columns
training   a labeled batch from weak labeling: the raw columns but ``label``,
           plus ``split``, ``gold_label``, ``weak_label``, ``proba_0`` ..
           ``proba_{k-1}``, ``confidence``, ``label``, ``label_source`` and
           ``weight``, with LF coverage and (binary) class balance as warnings
serving    what batch inference scores: the raw suite without the label; other
           columns may come along
=========  =====================================================================

Bounds are taken from the whole batch (every row of the reference passes its own
suite) and widened by the definition's ``suites.slack``; a person tightens them by
editing the JSON, as with any inferred suite.

Usage::

    suites = infer_dataset_suites(definition, read_dataset(definition), inferred_from=src)
    for name, suite in suites.items():
        definition.suite_path(name).write_text(dump_suite(suite))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from mlsys.data.definition import DatasetDefinition
from mlsys.data.sources import PROVENANCE_COLUMNS
from mlsys.validation.drift import schema_drift_specs
from mlsys.validation.profile import FeatureSchema, Schema, infer_schema
from mlsys.validation.suites import (
    Suite,
    column_subset,
    expectation,
    mlsys_meta,
    suite_from_schema,
    validate_suite,
)

__all__ = ["LABEL_SOURCES", "SPLITS", "infer_dataset_suites"]

SPLITS: tuple[str, ...] = ("train", "dev", "test")
LABEL_SOURCES: tuple[str, ...] = ("gold", "weak", "none")
DEFAULT_DRIFT_THRESHOLD = 0.1
MIN_COVERAGE = 0.6
BALANCE_MARGIN = 0.3


def infer_dataset_suites(
    definition: DatasetDefinition, raw: pd.DataFrame, *, inferred_from: str
) -> dict[str, Suite]:
    """The ``raw``, ``training`` and ``serving`` suites of ``definition``'s dataset, inferred
    from ``raw``, a raw batch of it (as ``read_dataset`` returns).

    Args:
        definition: the dataset; its ``suites`` settings give the slack of the bounds, the
            most categories a value set may have and the drift thresholds.
        raw: the reference batch, at least one row.
        inferred_from: where ``raw`` came from, recorded in each suite's meta.

    Raises:
        ValueError: ``raw`` is empty or lacks a column of the dataset's raw batch (named).
    """
    raw_suite = _raw_suite(definition, raw, inferred_from)
    suites = {
        "raw": raw_suite,
        "training": _training_suite(definition, raw, raw_suite),
        "serving": _serving_suite(definition, raw_suite),
    }
    for suite in suites.values():
        validate_suite(suite)
    return suites


def _raw_columns(definition: DatasetDefinition) -> list[str]:
    return [
        definition.id_column,
        "text",
        "label",
        *definition.kept_columns,
        *PROVENANCE_COLUMNS,
    ]


def _raw_suite(definition: DatasetDefinition, raw: pd.DataFrame, inferred_from: str) -> Suite:
    columns = _raw_columns(definition)
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise ValueError(
            f"the batch lacks column(s) {missing} of dataset {definition.name!r}'s raw batch "
            f"{columns}; found {[str(c) for c in raw.columns]}"
        )
    if raw.empty:
        raise ValueError(f"cannot infer the suites of {definition.name!r} from an empty batch")
    settings = definition.suites
    threshold = settings.drift_threshold or DEFAULT_DRIFT_THRESHOLD
    id_column, kept = definition.id_column, definition.kept_columns

    def infer(names: list[str], texts: list[str], ids: list[str]) -> Schema:
        return infer_schema(
            raw[names],
            text_columns=texts,
            id_columns=ids,
            max_categories=settings.max_categories,
            # Every row of the reference must pass its own suite: bound by min and max.
            quantiles=(0.0, 1.0),
            slack=settings.slack,
            js_threshold=threshold,
            linf_threshold=threshold,
        )

    features: list[FeatureSchema] = []
    id_nulls = float(raw[id_column].isna().mean())
    features.append(
        FeatureSchema(
            name=id_column,
            kind="id",
            dtype=str(raw[id_column].dtype),
            null_fraction=id_nulls,
            max_null_fraction=0.0,
            unique=True,
        )
    )
    if raw["text"].notna().any():
        text = infer(["text"], ["text"], []).feature("text")
        features.append(
            dataclasses.replace(
                text, max_null_fraction=0.0, min_length=max(1, text.min_length or 1)
            )
        )
    else:
        features.append(_plain("text", raw["text"], nullable=False))
    labels = raw["label"]
    features.append(
        FeatureSchema(
            name="label",
            kind="categorical",
            dtype=str(labels.dtype),
            null_fraction=float(labels.isna().mean()),
            max_null_fraction=1.0,  # unlabeled batches are allowed
            value_set=tuple(range(definition.k)),
            drift_statistic="linf",
            drift_threshold=threshold,
        )
    )
    for column in kept:
        features.append(_kept_feature(column, raw[column], infer))
    features.append(_plain("source_file", raw["source_file"], nullable=False))
    features.append(
        FeatureSchema(
            name="source_row",
            kind="numeric",
            dtype=str(raw["source_row"].dtype),
            null_fraction=0.0,
            max_null_fraction=0.0,
        )
    )
    suite = suite_from_schema(
        Schema(tuple(features)),
        "raw",
        notes=(
            f"Raw rows of dataset {definition.name!r} as read from its source, provenance "
            "kept. Inferred; row rules quarantine, review and tighten the bounds."
        ),
        inferred_from=inferred_from,
    )
    # A row number has a floor but no ceiling: the next batch may be longer.
    suite["expectations"].append(
        expectation(
            "expect_column_values_to_be_between", column="source_row", min_value=0, max_value=None
        )
    )
    return suite


def _kept_feature(column: str, values: pd.Series, infer: Any) -> FeatureSchema:
    """A kept column as inferred, except that it is never declared unique (a reference where
    every value differs says little about the next batch) and an empty one gets no value set."""
    if values.isna().all():
        return _plain(column, values, nullable=True)
    feature: FeatureSchema = infer([column], [], []).feature(column)
    if feature.kind == "id":
        feature = infer([column], [column], []).feature(column)
    return feature


def _plain(name: str, values: pd.Series, *, nullable: bool) -> FeatureSchema:
    """A column checked for its type (and for nulls unless ``nullable``) only."""
    nulls = float(values.isna().mean())
    return FeatureSchema(
        name=name,
        kind="text",
        dtype=str(values.dtype),
        null_fraction=nulls,
        max_null_fraction=1.0 if nullable else 0.0,
    )


def _labeling_features(definition: DatasetDefinition, threshold: float) -> list[FeatureSchema]:
    """What weak labeling adds to a raw batch (see ``mlsys.labeling.batch``)."""
    classes = tuple(range(definition.k))

    def bounded(name: str, *, drift: bool = False) -> FeatureSchema:
        return FeatureSchema(
            name=name,
            kind="numeric",
            dtype="float64",
            null_fraction=0.0,
            max_null_fraction=0.0,
            min_value=0.0,
            max_value=1.0,
            drift_statistic="js" if drift else None,
            drift_threshold=threshold if drift else None,
        )

    def categorical(
        name: str, dtype: str, values: tuple[Any, ...], *, nullable: bool, drift: bool = False
    ) -> FeatureSchema:
        return FeatureSchema(
            name=name,
            kind="categorical",
            dtype=dtype,
            null_fraction=0.0,
            max_null_fraction=1.0 if nullable else 0.0,
            value_set=values,
            drift_statistic="linf" if drift else None,
            drift_threshold=threshold if drift else None,
        )

    return [
        categorical("split", "string", SPLITS, nullable=False),
        categorical("gold_label", "Int64", classes, nullable=True),
        categorical("weak_label", "int64", (-1, *classes), nullable=False),
        *(bounded(f"proba_{c}") for c in classes),
        bounded("confidence", drift=True),
        categorical("label", "Int64", classes, nullable=True, drift=True),
        categorical("label_source", "string", LABEL_SOURCES, nullable=False),
        bounded("weight"),
    ]


def _training_suite(definition: DatasetDefinition, raw: pd.DataFrame, raw_suite: Suite) -> Suite:
    threshold = definition.suites.drift_threshold or DEFAULT_DRIFT_THRESHOLD
    suite = column_subset(raw_suite, ["label"], "training")
    added = Schema(tuple(_labeling_features(definition, threshold)))
    extra = suite_from_schema(added, "training")["expectations"]
    table, *rest = extra
    for exp in suite["expectations"]:
        if exp["type"] == "expect_table_columns_to_match_set":
            exp["kwargs"]["column_set"] += table["kwargs"]["column_set"]
    suite["expectations"] += rest
    suite["expectations"].append(
        expectation(
            "expect_column_values_to_not_be_in_set",
            column="weak_label",
            value_set=[-1],
            mostly=MIN_COVERAGE,
            severity="warning",
            meta={
                "why": f"LF coverage: at least {MIN_COVERAGE:.0%} of rows get a weak label "
                "(make it critical once the dataset's LFs are written)"
            },
        )
    )
    suite["expectations"].append(
        expectation(
            "expect_column_values_to_be_between",
            column="weight",
            min_value=0.0,
            max_value=1.0,
            strict_min=True,
            row_condition='label_source != "none"',
            condition_parser="pandas",
            meta={"why": "every labeled row weighs something; unlabeled rows weigh 0"},
        )
    )
    labeled = raw["label"].dropna()
    if definition.k == 2 and len(labeled):
        share = float(labeled.astype(float).mean())
        low = round(max(0.0, share - BALANCE_MARGIN), 3)
        high = round(min(1.0, share + BALANCE_MARGIN), 3)
        suite["expectations"].append(
            expectation(
                "expect_column_mean_to_be_between",
                column="label",
                min_value=low,
                max_value=high,
                severity="warning",
                meta={
                    "why": f"class balance: the {definition.classes[1]!r} share of labeled "
                    f"rows (the reference's gold labels: {share:.3f})"
                },
            )
        )
    meta = mlsys_meta(suite)
    meta["drift"] = [*meta.get("drift", []), *(d.to_dict() for d in schema_drift_specs(added))]
    suite["notes"] = (
        f"A labeled batch of dataset {definition.name!r} from weak labeling: labels, class "
        "probabilities, confidence and weights a trainer may use. Inferred; LF coverage and "
        "class balance are warnings until the LFs are settled."
    )
    return suite


def _serving_suite(definition: DatasetDefinition, raw_suite: Suite) -> Suite:
    suite = column_subset(raw_suite, ["label"], "serving")
    for exp in suite["expectations"]:
        if exp["type"] == "expect_table_columns_to_match_set":
            exp["kwargs"]["exact_match"] = False
            exp["meta"] = {
                "why": "a raw batch to score may carry its labels; other columns pass "
                "through to the predictions"
            }
    suite["notes"] = (
        f"Serving input of dataset {definition.name!r}: the raw batch without the label; "
        "skew is measured against the training data. Inferred."
    )
    return suite
