"""Flow `train`: a labeled batch in S3 -> the dataset's text classifier trained with the chosen
strategy, evaluated on the gold test rows and registered in MLflow with alias `challenger`."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.options import TrainOptions
from mlsys.data.catalog import labeled_prefix
from mlsys.data.s3 import latest_key
from mlsys.models.text import pipeline_featurizer
from tasks.retry import tolerant
from tasks.serving import reload_model_server
from tasks.tracking import TrackedFlow
from tasks.train import (
    choose_end_model,
    evaluate_model,
    fit_model,
    load_validated_batch,
    promote_if_better,
    register_model,
)


@flow(name="train", log_prints=True)
def train(
    labeled_batch: str | None = None,
    dataset: str = "youtube-spam",
    training: TrainOptions = TrainOptions(),  # noqa: B008 - a default the Prefect UI form shows
    model_name: str | None = None,
    alias: str = "challenger",
    resume_from_run: str | None = None,
    validation: Literal["fail", "quarantine"] = "fail",
    promote: bool = True,
) -> dict[str, str]:
    """Train the dataset's text classifier on a labeled batch and register it as `alias`.

    Learns from the train and dev rows that have a label (weak labels on train rows,
    gold on dev rows), each weighted by its label's quality unless `use_weights` is off;
    evaluates on the gold test rows by the dataset's metric (logged as `test_<metric>`,
    e.g. `test_f1`); logs per-epoch loss, test metrics, per-class precision and recall,
    a confusion matrix named by class, the loss curve and each epoch's checkpoint to
    MLflow; registers a pyfunc that takes raw text and answers with class names.

    Args:
        labeled_batch: s3:// URI of a batch written by `weak_label`. Empty: the newest
            under labeled/<dataset>/.
        dataset: A dataset defined under datasets/: its classes, metric and suites.
        training: The trainer ({"kind": "plain"}, {"kind": "gpipe", "stages": 2,
            "microbatches": 4} or {"kind": "spill", "budget_mb": 32}; a gpipe trainer with
            "hosts": ["10.0.0.1", "10.0.0.2"] runs each stage on its host under torchrun,
            started by the workers of the Dask cluster at MLSYS_DASK_ADDRESS), the model and the
            optimization; with `choose` on (the default) the learning rate, widths,
            epochs and class balancing are chosen on the gold dev rows by the dataset's
            metric (dev rows stay out of training).
        model_name: Registered model name in MLflow. Empty: the dataset's
            (`model_name` in its definition, else `<dataset>-classifier`).
        alias: Alias set on the new model version.
        resume_from_run: MLflow run id whose newest checkpoint to resume from.
        validation: The labeled batch is checked with the `training` suite first.
            "fail": any failed critical expectation stops the run before training;
            "quarantine": failing rows are left out (and written to quarantine/training/).
        promote: Also set alias `champion` on the new version when its test score by the
            dataset's metric beats the current champion's (or there is none yet).

    Returns:
        The registered model's name, version, alias, model URI, test accuracy, the
        dataset's metric and its test score, "champion" ("yes" when promoted) and
        "promotion" (what was decided and why).
    """
    tracked = TrackedFlow("train-summary", dataset)
    settings, definition = tracked.settings, tracked.definition
    model_name = model_name or definition.registered_model_name
    uri = labeled_batch or latest_key(
        tolerant(settings.s3_client()), settings.bucket, labeled_prefix(dataset)
    )
    trainer = training.trainer
    featurizer = pipeline_featurizer(training.n_features, training.char_range)
    params = {
        "labeled_batch": uri,
        "dataset": dataset,
        "classes": list(definition.classes),
        "metric": definition.metric,
        **training.params(),
        "model_name": model_name,
        "resume_from_run": resume_from_run,
        "validation": validation,
        "promote": promote,
    }
    with tracked.track(params) as run:
        df = load_validated_batch(run, settings, uri, dataset=dataset, validation=validation)
        chosen = None
        if training.choose:
            chosen = choose_end_model(
                run, df, definition, featurizer, use_weights=training.use_weights,
                seed=training.seed, layered=trainer.layered,
            )  # fmt: skip
        threshold = chosen.threshold if chosen else None
        result = fit_model(
            run,
            df,
            n_classes=definition.k,
            trainer=trainer,
            featurizer=featurizer,
            hidden=list(chosen.config.hidden) if chosen else training.hidden,
            dropout=training.dropout,
            lr=chosen.config.lr if chosen else training.lr,
            epochs=chosen.epochs if chosen else training.epochs,
            batch_size=training.batch_size,
            seed=training.seed,
            use_weights=training.use_weights,
            resume_from_run=resume_from_run,
            chosen=chosen,
            dask_address=settings.dask_address,
        )
        metrics = evaluate_model(run, result, df, featurizer, definition, threshold=threshold)
        examples = df.loc[df["split"] == "test", "text"].head(3).tolist()
        registered = register_model(
            run, result, featurizer, definition, name=model_name, alias=alias,
            examples=examples, metrics=metrics, threshold=threshold,
        )  # fmt: skip
        metric = f"test_{definition.metric}"
        promoted, reason = (
            promote_if_better(
                run,
                name=model_name,
                version=registered["version"],
                metrics=metrics,
                metric=metric,
            )
            if promote
            else (False, "promotion not asked for (promote=false)")
        )
        registered["champion"] = "yes" if promoted else "no"
        if promoted:
            # A model server follows the alias by polling; told now, it swaps at once.
            reload_model_server(settings, model_name)
        registered["promotion"] = reason
        registered["test_accuracy"] = f"{metrics['test_accuracy']:.4f}"
        registered["metric"] = definition.metric
        registered[metric] = f"{metrics[metric]:.4f}"
        tracked.summarize(
            (
                f"# Train {dataset} ({trainer.kind})\n\n"
                f"| test {definition.metric} | test accuracy | test macro F1 | test rows "
                f"| epochs | final loss |\n"
                f"|---|---|---|---|---|---|\n"
                f"| {metrics[metric]:.3f} | {metrics['test_accuracy']:.3f} "
                f"| {metrics['test_macro_f1']:.3f} "
                f"| {int(metrics['test_rows'])} | {len(result.history)} "
                f"| {result.history[-1]['loss']:.4f} |\n\n"
                f"Model: `{registered['name']}` version {registered['version']} "
                f"(@{registered['alias']}; promoted to @champion: {registered['champion']})  \n"
                f"Promotion: {registered['promotion']}  \n"
                f"Data: `{uri}`  \n"
                f"MLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Training of {model_name} on {uri}",
        )
    return registered


if __name__ == "__main__":
    train()
