"""`weak_label` on a batch that never enters the flow's process: three passes of one task
per row range of the raw batch on a Dask cluster (the one at `MLSYS_DASK_ADDRESS`, or one
made here), each reading its range from S3 in place, and the driver deciding from what
they send back (see mlsys/labeling/parts.py):

1. `check-raw-range`: the raw suite's checks, merged into one pass's verdict;
2. `vote-range`: the LF votes of the rows that passed (PUT beside the range) and the gold
   policy's candidates; the driver splits the candidates into dev and test as one pass
   would, fits the labelers on the train rows' votes and the dev rows, and the weights on
   the dev rows;
3. `label-range`: the labeled rows (PUT beside the range) and the training suite's checks,
   merged into one verdict; `write-labeled-parts` streams them, less the rows the suite
   sets aside, into the labeled batch.

The flow's process holds the gold rows' and (up to a sample) the train rows' votes, never
the batch; a worker holds one range."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait

from flows.options import LabelOptions
from mlsys.data.catalog import labeled_key, quarantine_key
from mlsys.data.definition import load_dataset
from mlsys.labeling import TuningResult, WeightModel, evaluate_labelers
from mlsys.labeling.batch import vote_coverage
from mlsys.labeling.parts import GoldRows, add_label_counts, splits_by_partition
from mlsys.settings import Settings
from mlsys.validation.checkpoint import Mode
from mlsys.validation.drift import ReferenceProfile
from mlsys.validation.partitioned import Merge, PartitionCheck, PartitionedVerdict, unmergeable
from tasks.ingest import part_key_values, profile_reference
from tasks.tracking import TrackedRun
from tasks.validate import active_suite, record_verdict
from tasks.weak_label import analyze_lfs, label_metrics, tune_label_model
from tasks.weak_label_parts import (
    LabeledPart,
    RowRange,
    VotedPart,
    check_raw_range,
    label_range,
    range_key_values,
    read_train_votes,
    vote_range,
    write_aside_parts,
    write_labeled_parts,
)

T = TypeVar("T")


def _all(futures: Sequence[PrefectFuture[T]]) -> list[T]:
    """Every task's result, after every task has finished (no task writes after a failure
    has gone on to the clean-up)."""
    wait(list(futures))
    return [f.result() for f in futures]


def parts_refused(suites: dict[str, dict[str, Any]], accept_schema_update: bool) -> list[str]:
    """Why a batch cannot be labeled in partitions (empty: it can)."""
    reasons = []
    if accept_schema_update:
        reasons.append("accept_schema_update widens the training suite from the whole batch")
    for name, suite in suites.items():
        if odd := unmergeable(suite):
            reasons.append(f"the {name} suite's {', '.join(odd)} do not merge from parts")
    return reasons


@dataclass(frozen=True)
class LabelOutcome:
    """What labeling a batch (in one pass or in partitions) gives the flow to track: its
    metrics and URIs, the selected labeler and weights, rows per (split, label source), and
    labeled rows to plot the weights on (all of them, or every gold row and a sample)."""

    uris: dict[str, str]
    metrics: dict[str, float]
    tuning: TuningResult
    weights: WeightModel
    counts: pd.DataFrame
    sample: pd.DataFrame


def _verdict(
    suite: dict[str, Any],
    checks: list[PartitionCheck],
    mode: Mode,
    values: Callable[[int, str, list[int]], PrefectFuture[list[Any]]],
    profiles: list[ReferenceProfile] | None = None,
) -> PartitionedVerdict:
    """The merged verdict, asking ``values(part, column, rows)`` (a future) for the values
    of a unique column where hashes repeat."""
    merge = Merge(suite, checks)
    asked = {
        key: values(key[0], merge.key_column(key[1]), rows)
        for key, rows in merge.repeated_keys().items()
    }
    return merge.verdict(
        mode=mode, key_values={k: f.result() for k, f in asked.items()}, profiles=profiles
    )


@flow(name="weak-label-parts")
def weak_label_parts(
    run: TrackedRun,
    settings: Settings,
    dataset: str,
    raw_uri: str,
    ranges: list[RowRange],
    batch: str,
    label: LabelOptions,
    mode: Mode,
    reference_uri: str | None,
) -> LabelOutcome:
    """The three passes over the raw batch's ``ranges`` and the driver's decisions between
    them; the verdicts logged to ``run`` as they are reached (a failing one raises)."""
    logger = get_run_logger()
    definition = load_dataset(dataset, search=settings.datasets_dir)
    raw_suite, raw_origin = active_suite(settings, dataset, "raw")
    training_suite, training_origin = active_suite(settings, dataset, "training")
    if not ranges:
        raise ValueError(f"the raw batch {raw_uri} is empty: there is nothing to label")

    # 1. the raw suite, per range
    def raw_values(part: int, column: str, rows: list[int]) -> PrefectFuture[list[Any]]:
        return range_key_values.submit(settings, ranges[part], column, rows)

    raw = _verdict(
        raw_suite,
        _all([check_raw_range.submit(settings, r, raw_suite) for r in ranges]),
        mode,
        raw_values,
    )  # the checks (a hash per id) are let go once merged
    raw_quarantine = settings.s3_uri(quarantine_key("raw", dataset, batch))
    record_verdict(run, raw, raw_origin, raw_quarantine if raw.rows_quarantined else None)

    # 2. the LFs' votes, per range; the gold rows and the labelers, here
    began = time.perf_counter()
    voted: list[VotedPart] = _all(
        [
            vote_range.submit(
                settings, dataset, batch, label.lf_set, label.lf_errors, r, raw.drops[r.part]
            )
            for r in ranges
        ]
    )
    lf_seconds = time.perf_counter() - began
    lf_names = voted[0].lf_names
    candidates = pd.concat([v.candidates for v in voted], ignore_index=True)
    gold = GoldRows.of(candidates, definition.gold, len(lf_names))
    L_train = read_train_votes(settings, voted, gold.frame, label.seed)
    logger.info(
        "%d rows voted on in %d ranges in %.1f s: %d gold (dev %d, test %d); labelers fitted "
        "on %d train rows",
        sum(v.rows_ok for v in voted),
        len(ranges),
        lf_seconds,
        len(gold.frame),
        int(gold.dev.sum()),
        int((~gold.dev).sum()),
        len(L_train),
    )
    L_dev, y_dev = gold.votes[gold.dev], gold.labels[gold.dev]
    analyze_lfs(run, L_train, lf_names, L_dev, y_dev)
    tuning = tune_label_model(L_train, L_dev, y_dev, definition, label.seed)
    weights = gold.weights(tuning.best, label.weighting)

    # 3. the labeled rows and the training suite, per range
    profiles = (
        profile_reference.submit(settings, training_suite, reference_uri) if reference_uri else None
    )
    splits = splits_by_partition(gold.frame, len(ranges))
    labeled_parts: list[LabeledPart] = _all(
        [
            label_range.submit(
                settings,
                dataset,
                batch,
                r,
                raw.drops[r.part],
                voted[r.part].votes_uri,
                splits[r.part],
                tuning.best,
                weights,
                training_suite,
                profiles,  # type: ignore[arg-type]  # Prefect resolves the future
            )
            for r in ranges
        ]
    )

    labeled = [p.uri for p in labeled_parts]
    tables = [p.counts for p in labeled_parts]
    sample = pd.concat([p.sample for p in labeled_parts], ignore_index=True)
    checks = [p.check for p in labeled_parts]
    del labeled_parts

    def labeled_values(part: int, column: str, rows: list[int]) -> PrefectFuture[list[Any]]:
        return part_key_values.submit(settings, labeled[part], column, rows)

    training = _verdict(
        training_suite,
        checks,
        mode,
        labeled_values,
        profiles.result() if profiles is not None else None,
    )
    del checks  # a hash per id, let go once merged
    training_quarantine = settings.s3_uri(quarantine_key("training", dataset, batch))
    record_verdict(
        run,
        training,
        training_origin,
        training_quarantine if training.rows_quarantined else None,
    )

    # 4. the labeled batch and the quarantines
    target = settings.s3_uri(labeled_key(dataset, batch))
    written = write_labeled_parts.submit(
        settings, labeled, training.drops, target, training_quarantine
    )
    asides = {
        stage: write_aside_parts.submit(
            settings,
            [v.aside_uris[stage] for v in voted if stage in v.aside_uris],
            settings.s3_uri(quarantine_key(stage, dataset, batch)),
        )
        for stage in ("raw", "weak_label")
        if any(stage in v.aside_uris for v in voted)
    }
    out = written.result()
    aside = {stage: future.result() for stage, future in asides.items()}

    unlabelable = sum(v.rows_unlabelable for v in voted)
    quarantined = raw.rows_quarantined + unlabelable + training.rows_quarantined
    if out.rows + quarantined != raw.rows_in:
        raise RuntimeError(
            f"row count mismatch: {raw.rows_in} in, {out.rows} labeled + {quarantined} quarantined"
        )
    counts, per_split, sources = add_label_counts(tables)
    evaluation = evaluate_labelers(tuning, gold.votes, gold.frame)
    evaluation["lf_coverage_train"] = vote_coverage(L_train)  # the fit's rows, not gold's
    metrics = label_metrics(
        rows_in=raw.rows_in,
        rows_out=out.rows,
        quarantined=quarantined,
        counts=per_split,
        lfs={
            "lf_apply_seconds": lf_seconds,
            "lf_unique_rows": sum(v.unique_rows for v in voted),
            "lf_errors": sum(sum(v.errors.values()) for v in voted),
        },
        sources=sources,
        evaluation=evaluation,
    )
    uris = {"raw_batch": raw_uri, "labeled_batch": target}
    if "weak_label" in aside and aside["weak_label"].uri:
        uris["quarantine_batch"] = str(aside["weak_label"].uri)
    return LabelOutcome(
        uris=uris,
        metrics=metrics,
        tuning=tuning,
        weights=weights,
        counts=counts,
        sample=sample,
    )
