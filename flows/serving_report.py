"""Flow `serving_report`: a day of the model server's prediction log checked like the data a
model is trained on: the dataset's serving suite, and skew against the served model's
training data (the loop from serving back to validation)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from prefect import flow

from mlsys.data.catalog import online_predictions_prefix
from mlsys.serving.predlog import summarize
from tasks.batch_infer import resolve_model
from tasks.serving import read_prediction_log
from tasks.tracking import TrackedFlow
from tasks.validate import validate_batch


@flow(name="serving_report", log_prints=True)
def serving_report(
    dataset: str = "youtube-spam",
    day: str = "today",
    model_name: str | None = None,
    alias: str = "champion",
) -> dict[str, str]:
    """Check what the model server answered on one day: read every part of
    s3://<bucket>/predictions/online/<dataset>/<day>/, validate the served inputs with the
    dataset's `serving` suite and measure their skew against the training data of the
    model that `alias` points at (MLflow metrics `validate.serving.*`, Data Docs); log
    rows, latency percentiles, the versions served and the predicted class shares.

    Args:
        dataset: A dataset defined under datasets/ (its serving suite and model).
        day: The UTC day to report on: YYYY-MM-DD, "today" or "yesterday".
        model_name: Registered model whose training data is the skew reference. Empty:
            the dataset's model.
        alias: Alias of the version whose training data is the reference.

    Returns:
        Rows read, rows that failed a row rule, versions served, and the verdict.

    Raises:
        ValueError: ``day`` is not a date, or the dataset or model is unknown (named).
        FileNotFoundError: nothing was logged for that day (the prefix is named).
    """
    tracked = TrackedFlow("serving-report", dataset)
    settings = tracked.settings
    day = _day(day)
    definition = tracked.definition
    model_name = model_name or definition.registered_model_name
    params = {"dataset": dataset, "day": day, "model_name": model_name, "alias": alias}
    ref = resolve_model(settings, model_name, alias, None, definition.classes)
    with tracked.track(params) as run:
        frame, parts = read_prediction_log(settings, dataset, day)
        report = validate_batch(
            run,
            settings,
            frame,
            suite="serving",
            mode="quarantine",
            dataset=dataset,
            batch=f"online-{day}",
            reference_uri=ref.training_batch,
            drift_kind="skew",
            write_quarantine=False,
        )
        client = run.client()
        summary = summarize(frame)
        rows, versions = summary.rows, list(summary.versions)
        failed = report.rows_quarantined
        metrics: dict[str, float] = {"rows": rows, "parts": parts, "rows_failing": failed}
        if summary.latency_p50_ms is not None and summary.latency_p99_ms is not None:
            metrics.update(
                latency_p50_ms=summary.latency_p50_ms, latency_p99_ms=summary.latency_p99_ms
            )
        metrics.update({f"share_{name}": share for name, share in summary.shares.items()})
        for key, value in metrics.items():
            client.log_metric(run.run_id, key, float(value))
        client.set_tag(run.run_id, "mlsys.versions_served", ",".join(versions))
        verdict = "passed" if report.ok and not failed else "rows failed a rule"
        client.set_tag(run.run_id, "mlsys.verdict", verdict)
        log_uri = settings.s3_uri(online_predictions_prefix(dataset, day))
        latency_text = (
            f"{metrics['latency_p50_ms']:.1f} / {metrics['latency_p99_ms']:.1f}"
            if "latency_p50_ms" in metrics
            else "n/a"
        )
        tracked.summarize(
            (
                f"# Serving report {dataset} {day}\n\n"
                f"| rows | parts | failing a row rule | latency p50 / p99 ms | versions | suite |\n"
                f"|---|---|---|---|---|---|\n"
                f"| {rows} | {parts} | {failed} | {latency_text} "
                f"| {', '.join(versions) or 'n/a'} | {verdict} |\n\n"
                f"Log: `{log_uri}`  \nSkew reference: `{ref.training_batch or 'none'}` "
                f"({ref.uri})  \nMLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Online predictions of {dataset} on {day}",
        )
        print(f"{rows} served rows on {day}: {failed} failing a row rule; suite {verdict}")
    return {
        "rows": str(rows),
        "rows_failing": str(failed),
        "versions": ",".join(versions),
        "verdict": verdict,
    }


def _day(day: str) -> str:
    today = datetime.now(UTC).date()
    named = {"today": today, "yesterday": today - timedelta(days=1)}
    if day in named:
        return named[day].isoformat()
    try:
        return date.fromisoformat(day).isoformat()
    except ValueError as exc:
        raise ValueError(f"day must be YYYY-MM-DD, 'today' or 'yesterday', got {day!r}") from exc


if __name__ == "__main__":
    serving_report()
