"""Tasks of `weak_label` in partitions: each runs on a Dask worker over one row range of the
raw batch, read in place from S3, and sends back only counts, checks and the few rows the
driver decides on (see :mod:`mlsys.labeling.parts`). What a later pass needs of a partition
(its votes, its rows set aside, its labeled rows) waits beside it in S3, under
``work/weak_label/<dataset>/<batch>/``, removed when the run ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.catalog import label_part_key
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import get_bytes, put_bytes
from mlsys.inference.batch import ParquetRows
from mlsys.inference.inputs import S3Object
from mlsys.labeling import Labeler, WeightModel, apply_lfs
from mlsys.labeling.batch import lf_fields, lf_view, split_unlabelable
from mlsys.labeling.parts import (
    PART,
    ROW,
    candidate_columns,
    gold_candidates,
    label_partition,
    splits_by_partition,
    train_sample,
    vote_columns,
)
from mlsys.settings import Settings
from mlsys.validation.checkpoint import split_rows
from mlsys.validation.drift import ReferenceProfile
from mlsys.validation.partitioned import PartitionCheck, check_partition, key_values
from tasks.parts import Streamed, stream_parts
from tasks.retry import outage_tolerant
from tasks.validate import PARQUET

SAMPLE_ROWS = 500
"""Train rows per range sent back for the weights' plot (every gold row is sent)."""


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, start + rows)`` of the raw batch at ``uri``: one partition."""

    uri: str
    part: int
    start: int
    rows: int


def plan_ranges(settings: Settings, uri: str, partition_rows: int) -> list[RowRange]:
    """The raw batch's rows in ranges of ``partition_rows`` (its footer read in place)."""
    total = ParquetRows(S3Object(settings.s3_client(), uri), batch_rows=1).num_rows
    return [
        RowRange(uri, part, start, min(partition_rows, total - start))
        for part, start in enumerate(range(0, total, partition_rows))
    ]


def read_range(settings: Settings, rows: RowRange) -> pd.DataFrame:
    """The range's rows as the whole batch's reader gives them (same dtypes), numbered
    0..n-1; only row groups holding them are fetched and decoded."""
    reader = ParquetRows(S3Object(settings.s3_client(), rows.uri), batch_rows=rows.rows)
    frame: pd.DataFrame = reader.read(rows.start, rows.rows).to_pandas()
    return frame.reset_index(drop=True)


def _labelable(
    settings: Settings, rows: RowRange, drops: dict[int, list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A range's rows that passed the raw suite and the LFs can read (numbered 0..n-1),
    those the raw suite set aside, and those the LFs cannot read."""
    passed, aside = split_rows(read_range(settings, rows), drops)
    ok, unlabelable = split_unlabelable(passed)
    return ok.reset_index(drop=True), aside, unlabelable


def _put(settings: Settings, key: str, frame: pd.DataFrame) -> str:
    uri = settings.s3_uri(key)
    put_bytes(settings.s3_client(), uri, write_parquet_bytes(frame), PARQUET)
    return uri


@task(name="check-raw-range", cache_policy=NO_CACHE)
@outage_tolerant
def check_raw_range(settings: Settings, rows: RowRange, suite: dict[str, Any]) -> PartitionCheck:
    """On a worker: the raw suite's checks of one range (row rules per row, statistics
    for the merge)."""
    return check_partition(read_range(settings, rows), suite)


@task(name="range-key-values", cache_policy=NO_CACHE)
@outage_tolerant
def range_key_values(settings: Settings, rows: RowRange, column: str, at: list[int]) -> list[Any]:
    """On a worker: the values of ``column`` at rows ``at`` of one range."""
    return key_values(read_range(settings, rows), column, at)


@dataclass(frozen=True)
class VotedPart:
    """What ``vote-range`` sends back: counts, the gold candidates with their votes, and
    where its votes and set-aside rows wait."""

    part: int
    rows_ok: int
    rows_raw_aside: int
    rows_unlabelable: int
    candidates: pd.DataFrame
    lf_names: list[str]
    errors: dict[str, int]
    unique_rows: int
    seconds: float
    votes_uri: str
    aside_uris: dict[str, str] = field(default_factory=dict)


@task(name="vote-range", cache_policy=NO_CACHE)
@outage_tolerant
def vote_range(
    settings: Settings,
    dataset: str,
    batch: str,
    lf_set: str,
    errors: str,
    rows: RowRange,
    drops: dict[int, list[str]],
) -> VotedPart:
    """On a worker: one range less the rows the raw suite set aside and those the LFs
    cannot read; the LF set's votes on the rest (the LF module loaded here by name), PUT
    beside the range with the rows set aside; the gold policy's candidates sent back."""
    began = time.perf_counter()
    definition = load_dataset(dataset, search=settings.datasets_dir)
    fields = lf_fields(definition.lf_columns)
    ok, aside, unlabelable = _labelable(settings, rows, drops)
    view, _ = lf_view(ok, definition.lf_columns, definition.id_column)
    result = apply_lfs(
        view,
        definition.lf_set(lf_set),
        fields=list(fields),
        errors=errors,  # type: ignore[arg-type]
        n_jobs=1,
        id_column=definition.id_column,
    )
    small = np.int8 if definition.k < 127 else np.int16
    votes = pd.DataFrame(result.matrix.astype(small), columns=pd.Index(result.lf_names))
    votes_uri = _put(settings, label_part_key(dataset, batch, rows.part, "votes"), votes)
    aside_uris = {}
    for stage, frame in (("raw", aside), ("weak_label", unlabelable)):
        if len(frame):
            aside_uris[stage] = _put(
                settings, label_part_key(dataset, batch, rows.part, f"aside-{stage}"), frame
            )
    mask = gold_candidates(ok, definition.gold)
    candidates = ok.loc[mask, candidate_columns(definition.gold)].copy()
    candidates[PART] = rows.part
    candidates[ROW] = np.flatnonzero(mask)
    for name, column in zip(vote_columns(result.lf_names), result.matrix.T, strict=True):
        candidates[name] = column[mask]
    return VotedPart(
        part=rows.part,
        rows_ok=len(ok),
        rows_raw_aside=len(aside),
        rows_unlabelable=len(unlabelable),
        candidates=candidates.reset_index(drop=True),
        lf_names=list(result.lf_names),
        errors=dict(result.errors),
        unique_rows=result.unique_rows,
        seconds=time.perf_counter() - began,
        votes_uri=votes_uri,
        aside_uris=aside_uris,
    )


def read_votes(settings: Settings, uri: str) -> np.ndarray:
    """A partition's votes as PUT by ``vote-range``."""
    return read_parquet_bytes(get_bytes(settings.s3_client(), uri)).to_numpy(dtype=np.int64)


@task(name="read-train-votes", cache_policy=NO_CACHE)
@outage_tolerant
def read_train_votes(
    settings: Settings, voted: list[VotedPart], gold: pd.DataFrame, seed: int
) -> np.ndarray:
    """The train rows' votes the labelers are fitted on: every train row's up to
    TRAIN_SAMPLE_ROWS, else a seeded sample (read from each range's votes, one at a time)."""
    by_part = splits_by_partition(gold, len(voted))
    total = sum(v.rows_ok for v in voted) - len(gold)
    pieces = []
    for v in voted:
        votes = read_votes(settings, v.votes_uri)
        train = np.ones(len(votes), dtype=bool)
        train[list(by_part[v.part])] = False
        votes = votes[train]
        pieces.append(votes[train_sample(len(votes), total, v.part, seed)])
    return np.concatenate(pieces)


@dataclass(frozen=True)
class LabeledPart:
    """What ``label-range`` sends back: where the labeled rows wait, the training suite's
    checks of them, rows per (split, label source), and rows for the weights' plot."""

    part: int
    uri: str
    check: PartitionCheck
    counts: pd.DataFrame
    sample: pd.DataFrame


@task(name="label-range", cache_policy=NO_CACHE)
@outage_tolerant
def label_range(
    settings: Settings,
    dataset: str,
    batch: str,
    rows: RowRange,
    drops: dict[int, list[str]],
    votes_uri: str,
    splits: dict[int, str],
    labeler: Labeler,
    weights: WeightModel,
    suite: dict[str, Any],
    profiles: list[ReferenceProfile] | None,
) -> LabeledPart:
    """On a worker: one range's labeled rows (the rows ``vote-range`` voted on, with its
    votes, the driver's dev and test rows, labeler and weights), PUT beside it and checked
    with the training suite."""
    ok, _, _ = _labelable(settings, rows, drops)
    frame = label_partition(ok, read_votes(settings, votes_uri), splits, labeler, weights)
    uri = _put(settings, label_part_key(dataset, batch, rows.part, "labeled"), frame)
    check = check_partition(frame, suite, profiles=profiles)
    counts = frame.groupby(["split", "label_source"], observed=True).size().rename("rows")
    train = frame["split"] == "train"
    plotted = ["split", "label_source", "confidence", "weak_label", "gold_label", "weight"]
    sample = pd.concat([frame.loc[~train, plotted], frame.loc[train, plotted].head(SAMPLE_ROWS)])
    return LabeledPart(rows.part, uri, check, counts.reset_index(), sample)


@task(name="write-labeled-parts", cache_policy=NO_CACHE)
@outage_tolerant
def write_labeled_parts(
    settings: Settings,
    parts: list[str],
    drops: list[dict[int, list[str]]],
    target: str | None,
    quarantine: str,
) -> Streamed:
    """On a worker: the labeled parts less the rows the training suite set aside streamed
    into the labeled batch (``target`` None: only those rows are written), and those rows
    into the training quarantine."""
    written = stream_parts(settings, parts, drops, target=target, quarantine=quarantine)
    get_run_logger().info(
        "wrote %d labeled rows to %s, %d set aside", written.rows, target, written.rows_aside
    )
    return written


@task(name="write-aside-parts", cache_policy=NO_CACHE)
@outage_tolerant
def write_aside_parts(settings: Settings, parts: list[str], target: str) -> Streamed:
    """On a worker: the rows set aside by the partitions (each part with its reasons)
    concatenated into one quarantine object."""
    return stream_parts(settings, parts, None, target=target, quarantine=None)
