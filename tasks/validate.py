"""Checkpoint task: run a suite on a batch, quarantine, log, publish Data Docs.

Every flow that reads data calls :func:`validate_batch`. It finds the active version of
the suite (the newest accepted update in S3, else the one in git), runs the GX
checkpoint, writes failing rows with their reasons to
``s3://<bucket>/quarantine/<suite>/<dataset>/<batch>.parquet``, logs row counts, drift
and the suite version to the flow's MLflow run, uploads the Data Docs site there and
links it from Prefect. In ``fail`` mode (or on a batch-level failure in ``quarantine``
mode) it raises :class:`~mlsys.validation.checkpoint.ValidationFailed`, whose message
lists each failed expectation with its observed value.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mlsys.data import read_parquet_bytes, write_parquet_bytes
from mlsys.data.catalog import quarantine_key, schema_prefix
from mlsys.data.definition import load_dataset
from mlsys.data.s3 import S3Uri, get_bytes, list_keys, put_bytes
from mlsys.settings import Settings
from mlsys.validation.checkpoint import (
    CheckpointReport,
    Mode,
    ValidationFailed,
    Verdict,
    run_checkpoint,
)
from mlsys.validation.drift import DriftKind
from mlsys.validation.suites import (
    dump_suite,
    evolve_suite,
    load_suite,
    suite_version,
    validate_suite,
)
from tasks.retry import outage_tolerant, tolerant
from tasks.tracking import TrackedRun

PARQUET = "application/vnd.apache.parquet"
_VERSION_KEY = re.compile(r"/v(\d{4,})\.json$")


def dataset_suite(dataset: str, name: str) -> tuple[dict[str, Any], str]:
    """The suite ``name`` of ``dataset`` as its definition folder holds it, and its path.

    Raises:
        FileNotFoundError: the dataset has no such suite; the message says how to make one.
    """
    path = load_dataset(dataset).suite_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {dataset!r} has no {name} suite at {path}; infer one with "
            f"`mlsys validate infer --dataset {dataset} --suite {name} --source ...` "
            f"(`mlsys dataset init` writes all three)"
        )
    return load_suite(path), str(path)


def active_suite(settings: Settings, dataset: str, name: str) -> tuple[dict[str, Any], str]:
    """The suite to run and where it came from: the newest accepted version in S3 when it
    is newer than the dataset's own (``datasets/<dataset>/suites/<name>.json``), else that."""
    shipped, path = dataset_suite(dataset, name)
    client = settings.s3_client()
    versions = [
        (int(m.group(1)), key)
        for _, key in list_keys(client, settings.bucket, schema_prefix(dataset, name), ".json")
        if (m := _VERSION_KEY.search("/" + key))
    ]
    if versions:
        version, key = max(versions)
        if version > suite_version(shipped):
            uri = settings.s3_uri(key)
            suite = json.loads(get_bytes(client, uri))
            validate_suite(suite)
            return suite, uri
    return shipped, path


def previous_batch(settings: Settings, prefix: str, current_uri: str | None) -> str | None:
    """The newest Parquet batch under ``prefix`` other than ``current_uri``, if any: the
    reference a batch's drift is measured against."""
    current = S3Uri.parse(current_uri).key if current_uri else None
    client = tolerant(settings.s3_client())  # called in flows, outside any task
    for _, key in list_keys(client, settings.bucket, prefix, ".parquet"):
        if key != current:
            return settings.s3_uri(key)
    return None


@task(name="validate-batch", cache_policy=NO_CACHE)
@outage_tolerant
def validate_batch(
    run: TrackedRun,
    settings: Settings,
    df: pd.DataFrame,
    *,
    suite: str,
    mode: Mode,
    dataset: str,
    batch: str,
    reference_uri: str | None = None,
    drift_kind: DriftKind = "drift",
    accept_schema_update: bool = False,
    source: str | None = None,
    write_quarantine: bool = True,
) -> CheckpointReport:
    """Validate ``df`` with ``suite``; return the report (passed rows in ``.passed``).

    Args:
        run: the flow's MLflow run, which gets metrics ``validate.<suite>.*``, the suite
            version and source as tags, the JSON report and the Data Docs.
        df: the batch.
        suite: ``raw``, ``training`` or ``serving``.
        mode: ``fail`` or ``quarantine`` (see :func:`~mlsys.validation.run_checkpoint`).
        dataset, batch: name the quarantine object.
        reference_uri: s3:// Parquet to measure drift (or skew) against; None: none.
        drift_kind: ``drift`` (against an earlier batch) or ``skew`` (against training data).
        accept_schema_update: when the batch breaks only bounds, value sets or null
            fractions and drifts within the suite's thresholds, store a new suite version
            that accepts it (S3, linked from MLflow) and validate with that.
        source: what the batch was read from, recorded in an accepted update.
        write_quarantine: write quarantined rows to S3 (off when the caller quarantines
            the same rows itself, e.g. a preview of the first chunk).
    """
    logger = get_run_logger()
    client = settings.s3_client()
    document, origin = active_suite(settings, dataset, suite)
    reference = None
    if reference_uri is not None:
        reference = read_parquet_bytes(get_bytes(client, reference_uri))
        logger.info("%s of %s measured against %s", drift_kind, suite, reference_uri)
    with tempfile.TemporaryDirectory(prefix="mlsys-docs-") as tmp:
        docs = Path(tmp) / "data_docs"
        report = run_checkpoint(
            df, document, mode=mode, reference=reference, drift_kind=drift_kind, docs_dir=docs
        )
        if accept_schema_update:
            updated = _accept_update(
                settings, run, document, report, df, source or batch, dataset=dataset
            )
            if updated is not None:
                document, origin = updated
                report = run_checkpoint(
                    df,
                    document,
                    mode=mode,
                    reference=reference,
                    drift_kind=drift_kind,
                    docs_dir=docs,
                )
        _log(run, report, origin, docs)
    if report.rows_passed + report.rows_quarantined != report.rows_in:
        raise RuntimeError(f"row count mismatch in suite {suite}: {report.summary()}")
    quarantine_uri = None
    if report.rows_quarantined and write_quarantine:
        quarantine_uri = settings.s3_uri(quarantine_key(suite, dataset, batch))
        put_bytes(client, quarantine_uri, write_parquet_bytes(report.quarantined), PARQUET)
        run.client().set_tag(run.run_id, f"mlsys.quarantine.{suite}", quarantine_uri)
    logger.info("%s", report.summary())
    _artifacts(run, report, origin, quarantine_uri)
    if not report.ok:
        raise ValidationFailed(report)
    return report


@task(name="record-verdict", cache_policy=NO_CACHE)
@outage_tolerant
def record_verdict(
    run: TrackedRun, verdict: Verdict, origin: str, quarantine_uri: str | None = None
) -> Verdict:
    """Log a verdict reached without one GX run over the batch (a batch checked in
    partitions: no Data Docs) as :func:`validate_batch` logs its own; raise
    :class:`ValidationFailed` when the run may not go on."""
    if verdict.rows_passed + verdict.rows_quarantined != verdict.rows_in:
        raise RuntimeError(f"row count mismatch in suite {verdict.suite}: {verdict.summary()}")
    _log(run, verdict, origin, None)
    if quarantine_uri is not None:
        run.client().set_tag(run.run_id, f"mlsys.quarantine.{verdict.suite}", quarantine_uri)
    get_run_logger().info("%s", verdict.summary())
    _artifacts(run, verdict, origin, quarantine_uri)
    if not verdict.ok:
        raise ValidationFailed(verdict)
    return verdict


def _accept_update(
    settings: Settings,
    run: TrackedRun,
    document: dict[str, Any],
    report: CheckpointReport,
    df: pd.DataFrame,
    source: str,
    *,
    dataset: str,
) -> tuple[dict[str, Any], str] | None:
    updated, changes = evolve_suite(document, df, updated_from=source, drift=report.drift)
    if not changes:
        get_run_logger().info("accept_schema_update: the batch already fits %s", report.suite)
        return None
    version = suite_version(updated)
    uri = settings.s3_uri(f"{schema_prefix(dataset, report.suite)}v{version:04d}.json")
    put_bytes(settings.s3_client(), uri, dump_suite(updated).encode(), "application/json")
    client = run.client()
    client.set_tag(run.run_id, f"mlsys.schema_update.{report.suite}", uri)
    client.log_dict(run.run_id, updated, f"validation/{report.suite}/suite-v{version:04d}.json")
    get_run_logger().warning(
        "accepted schema update %s v%d -> v%d (%s): %s",
        report.suite,
        report.version,
        version,
        uri,
        "; ".join(changes),
    )
    return updated, uri


def _log(run: TrackedRun, report: Verdict, origin: str, docs: Path | None) -> None:
    client = run.client()
    prefix = f"validate.{report.suite}"
    metrics: dict[str, float] = {
        f"{prefix}.rows_in": report.rows_in,
        f"{prefix}.rows_passed": report.rows_passed,
        f"{prefix}.rows_quarantined": report.rows_quarantined,
        f"{prefix}.failed_expectations": len(report.failures),
        f"{prefix}.warnings": len(report.warnings),
    }
    metrics.update({f"{prefix}.{d.metric_name}": d.value for d in report.drift})
    for key, value in metrics.items():
        client.log_metric(run.run_id, key, value)
    client.set_tag(run.run_id, f"mlsys.suite.{report.suite}", f"v{report.version} {origin}")
    client.log_dict(run.run_id, report.to_dict(), f"validation/{report.suite}/report.json")
    if docs is not None and docs.is_dir():
        client.log_artifacts(run.run_id, str(docs), f"validation/{report.suite}/data_docs")


def _artifacts(run: TrackedRun, report: Verdict, origin: str, quarantine_uri: str | None) -> None:
    key = f"validation-{report.suite}"
    docs_url = f"{run.url}/artifacts/validation/{report.suite}/data_docs/index.html"
    docs = isinstance(report, CheckpointReport) and report.docs_dir is not None
    if docs:
        create_link_artifact(
            key=f"{key}-docs",
            link=docs_url,
            link_text=f"Data Docs: suite {report.suite} v{report.version}",
            description=f"Great Expectations Data Docs of this run's {report.suite} checkpoint",
        )
    rows = [
        f"| {f.severity} | {f.column or '(table)'} | {f.expectation} | {f.count or ''} | "
        f"{_cell(f.observed)} |"
        for f in [*report.failures, *report.warnings]
    ]
    drift = [
        f"| {d.feature}{' length' if d.on == 'length' else ''} | {d.statistic} | "
        f"{d.value:.4f} | {d.threshold:g} | {'**yes**' if d.drifted else 'no'} |"
        for d in report.drift
    ]
    verdict = "passed" if report.ok else "FAILED"
    markdown = (
        f"# Checkpoint {report.suite} v{report.version}: {verdict} ({report.mode} mode)\n\n"
        f"| rows in | passed | quarantined |\n|---|---|---|\n"
        f"| {report.rows_in} | {report.rows_passed} | {report.rows_quarantined} |\n\n"
        f"Suite: `{origin}`  \n"
        + (f"Quarantine: `{quarantine_uri}`  \n" if quarantine_uri else "")
        + (f"[Data Docs]({docs_url})\n\n" if docs else "Checked in partitions: no Data Docs.\n\n")
        + (
            "## Expectations not met\n\n| severity | column | expectation | rows | observed |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            if rows
            else "All expectations met.\n\n"
        )
        + (
            "## Drift\n\n| feature | statistic | value | threshold | drifted |\n"
            "|---|---|---|---|---|\n" + "\n".join(drift) + "\n"
            if drift
            else ""
        )
    )
    create_markdown_artifact(key=key, markdown=markdown, description=report.summary()[:500])


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = text if len(text) <= 120 else text[:117] + "..."
    return text.replace("|", "\\|")
