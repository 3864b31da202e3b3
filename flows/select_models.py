"""Flow `select_models`: a grid of the dataset's text classifiers (learning rate x width x
depth) trained at once with SHARP, each an MLflow child run, the best on the gold dev rows
registered as `challenger`, the ranking a Prefect table artifact."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.artifacts import create_table_artifact

from mlsys.data.catalog import labeled_prefix
from mlsys.data.s3 import latest_key
from mlsys.labeling.batch import selection_rows
from mlsys.models.text import PIPELINE_CHAR_NGRAMS, PIPELINE_N_FEATURES, pipeline_featurizer
from mlsys.training.selection import expand_grid, rank
from tasks.retry import tolerant
from tasks.select import log_candidates, train_grid
from tasks.serving import reload_model_server
from tasks.tracking import TrackedFlow
from tasks.train import load_validated_batch, promote_if_better, register_model


@flow(name="select_models", log_prints=True)
def select_models(
    labeled_batch: str | None = None,
    dataset: str = "youtube-spam",
    lrs: list[float] | None = None,
    widths: list[int] | None = None,
    depths: list[int] | None = None,
    epochs: int = 8,
    batch_size: int = 64,
    dropout: float = 0.0,
    n_features: int = PIPELINE_N_FEATURES,
    char_ngrams: tuple[int, int] | None = PIPELINE_CHAR_NGRAMS,
    use_weights: bool = True,
    workers: int = 2,
    budget_mb: int | None = None,
    seed: int = 123,
    model_name: str | None = None,
    alias: str = "challenger",
    validation: Literal["fail", "quarantine"] = "fail",
    promote: bool = False,
) -> dict[str, str]:
    """Train a grid of the dataset's text classifiers at once (SHARP) and register the best
    on the gold dev rows as `alias`.

    Every model learns from the weakly labeled train rows only (weighted by label quality
    unless `use_weights` is off), is chosen by the dataset's metric on the gold dev rows
    (ties: lower dev log loss) and reported on the gold test rows. Each model is an MLflow
    child run of this flow run's run; the ranking is the Prefect table artifact `model-ranking`, the
    device timeline a Gantt chart in the parent run (selection/sharp_gantt.png).

    Args:
        labeled_batch: s3:// URI of a batch written by `weak_label`. Empty: the newest
            under labeled/<dataset>/.
        dataset: A dataset defined under datasets/: its classes, metric and suites.
        lrs: Adam learning rates of the grid. Empty: [0.003, 0.01, 0.03].
        widths: Hidden layer widths of the grid. Empty: [32, 128].
        depths: Numbers of hidden layers of the grid (0: a linear model). Empty: [0, 1].
        epochs: Passes over the training rows, for every model.
        batch_size: Examples per optimizer step.
        dropout: Dropout after each hidden layer.
        n_features: Hashed text features (a power of two).
        char_ngrams: [min, max] lengths of character n-grams hashed beside the word
            n-grams, as in `train`. Empty: words only.
        use_weights: Weigh each example by its label's quality.
        workers: Worker processes (one thread each) sharing the models, shard by shard.
        budget_mb: Memory per worker for model shards, in MiB; each model is cut into shards
            of at most half of it. Empty: every model is one shard.
        seed: Seed of initialization, shuffling and dropout (the same for every model).
        model_name: Registered model name in MLflow. Empty: the dataset's.
        alias: Alias set on the best model's new version.
        validation: The labeled batch is checked with the `training` suite first.
            "fail": any failed critical expectation stops the run before training;
            "quarantine": failing rows are left out.
        promote: Also set alias `champion` on the best model when its test score by the
            dataset's metric beats the current champion's.

    Returns:
        The registered model's name, version, alias, model URI, the chosen grid point and
        "champion" ("yes" when promoted).
    """
    tracked = TrackedFlow("selection-summary", dataset)
    settings, definition = tracked.settings, tracked.definition
    model_name = model_name or definition.registered_model_name
    ranked_by = f"dev_{definition.metric}"
    points = expand_grid(lrs or [0.003, 0.01, 0.03], widths or [32, 128], depths or [0, 1])
    if budget_mb is not None and budget_mb < 1:
        raise ValueError(f"budget_mb must be a positive number of MiB, got {budget_mb}")
    uri = labeled_batch or latest_key(
        tolerant(settings.s3_client()), settings.bucket, labeled_prefix(dataset)
    )
    featurizer = pipeline_featurizer(n_features, char_ngrams)
    common = {
        "labeled_batch": uri,
        "epochs": epochs,
        "batch_size": batch_size,
        "dropout": dropout,
        "n_features": n_features,
        "char_ngrams": list(char_ngrams) if char_ngrams else None,
        "use_weights": use_weights,
        "seed": seed,
    }
    params = {
        **common,
        "grid": [p.name for p in points],
        "workers": workers,
        "budget_mb": budget_mb,
        "model_name": model_name,
        "ranked_by": ranked_by,
    }
    with tracked.track(params) as run:
        df = load_validated_batch(run, settings, uri, dataset=dataset, validation=validation)
        rows = selection_rows(df, use_weights)
        result = train_grid(
            run,
            rows["train"],
            points,
            featurizer=featurizer,
            n_classes=definition.k,
            dropout=dropout,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            workers=workers,
            budget_bytes=None if budget_mb is None else budget_mb * 2**20,
        )
        candidates = log_candidates(
            run, points, result, rows, featurizer, common=common,
            positive=definition.positive_index,
        )  # fmt: skip
        ranked = rank(candidates, ranked_by, tie_breaker="dev_log_loss")
        create_table_artifact(
            key="model-ranking",
            table=[_table_row(c) for c in ranked],
            description=f"{len(ranked)} models ranked by {ranked_by} on the gold dev rows",
        )
        best = ranked[0]
        if best["rank"] is None:
            raise RuntimeError(
                f"all {len(ranked)} models failed; the first error: {best.get('error')}"
            )
        index = [p.name for p in points].index(best["model"])
        fitted = result.results[index]
        assert fitted is not None
        client = run.client()
        client.set_tag(run.run_id, "mlsys.best_model", best["model"])
        for key in ("dev_accuracy", "dev_f1", "dev_macro_f1", "test_accuracy", "test_f1"):
            client.log_metric(run.run_id, f"best_{key}", float(best[key]))
        metrics = {k: float(v) for k, v in best.items() if k.startswith(("dev_", "test_"))}
        metrics["test_metric"] = metrics[f"test_{definition.metric}"]
        examples = rows["test"]["text"].head(3).tolist()
        best_run = run.__class__(best["run_id"], run.experiment_id, run.tracking_uri)
        registered = register_model(
            best_run, fitted, featurizer, definition, name=model_name, alias=alias,
            examples=examples, metrics=metrics,
        )  # fmt: skip
        promoted, reason = (
            promote_if_better(
                best_run,
                name=model_name,
                version=registered["version"],
                metrics=metrics,
                metric=f"test_{definition.metric}",
            )
            if promote
            else (False, "promotion not asked for (promote=false)")
        )
        registered["champion"] = "yes" if promoted else "no"
        if promoted:
            # A model server follows the alias by polling; told now, it swaps at once.
            reload_model_server(settings, model_name)
        registered["promotion"] = reason
        registered["model"] = best["model"]
        tracked.summarize(
            _summary(ranked, registered, result.makespan, workers, uri, run.url, definition.metric),
            description=f"Model selection of {model_name} on {uri}",
        )
    return registered


def _table_row(c: dict[str, object]) -> dict[str, object]:
    def fmt(key: str) -> object:
        value = c.get(key)
        return round(value, 4) if isinstance(value, float) else value

    return {
        "rank": c["rank"],
        "model": c["model"],
        "lr": c["lr"],
        "width": c["width"],
        "depth": c["depth"],
        "dev_accuracy": fmt("dev_accuracy"),
        "dev_f1": fmt("dev_f1"),
        "dev_macro_f1": fmt("dev_macro_f1"),
        "dev_log_loss": fmt("dev_log_loss"),
        "test_accuracy": fmt("test_accuracy"),
        "final_train_loss": fmt("final_loss"),
        "mlflow_run": c.get("run_url"),
        "error": c.get("error", ""),
    }


def _summary(
    ranked: list[dict[str, object]],
    registered: dict[str, str],
    makespan: float,
    workers: int,
    uri: str,
    run_url: str,
    metric: str,
) -> str:
    best = ranked[0]
    failed = [c["model"] for c in ranked if c["rank"] is None]
    lines = [
        "# Model selection",
        "",
        f"{len(ranked)} models trained at once on {workers} worker(s) in {makespan:.1f} s "
        f"(SHARP); {len(failed)} failed{': ' + ', '.join(map(str, failed)) if failed else ''}.",
        "",
        f"Best on the gold dev rows by {metric}: **{best['model']}**: dev {metric} "
        f"{float(best['dev_' + metric]):.3f}, test {metric} "  # type: ignore[arg-type]
        f"{float(best['test_' + metric]):.3f}.",  # type: ignore[arg-type]
        "",
        f"Registered: `{registered['name']}` version {registered['version']} "
        f"(@{registered['alias']}; promoted to @champion: {registered['champion']})  ",
        f"Data: `{uri}`  ",
        f"MLflow run: [{run_url}]({run_url})",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    select_models()
