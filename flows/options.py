"""The options of each stage, one pydantic model per stage: the stage's flow takes it as
one parameter, `end_to_end` takes the same model for that stage, and the Prefect run
form of both shows its fields with their defaults and descriptions. A default lives here
and nowhere else.

Each model forbids unknown fields (a misspelt option fails, naming it) and checks what
can be checked before any work (the trainer against the model's depth). ``params()``
gives the flat MLflow parameters a stage run logs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlsys.data.definition import DEFAULT_LF_SET
from mlsys.models.text import PIPELINE_CHAR_NGRAMS, PIPELINE_N_FEATURES
from mlsys.training.trainers import PlainTrainer, TrainerSpec

__all__ = ["InferOptions", "LabelOptions", "TrainOptions"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def params(self) -> dict[str, Any]:
        """The flat MLflow parameters of these options."""
        return self.model_dump()


class LabelOptions(_Options):
    """How `weak_label` labels a raw batch (gold rows come from the dataset's gold policy)."""

    lf_set: str = Field(
        DEFAULT_LF_SET,
        description="An LF set of the dataset's LF module (LF_SETS); `default` unless told "
        "(`mlsys dataset show NAME` lists them).",
    )
    weighting: Literal["calibrated", "confidence", "per_source"] = Field(
        "calibrated",
        description="Weight of a weak label: P(correct | confidence) fitted on dev, the "
        "label model's own confidence, or the weak labels' dev accuracy. Gold labels weigh 1.",
    )
    seed: int = Field(
        123, description="Seed of the label model fits (the split's seed is the gold policy's)."
    )
    lf_errors: Literal["raise", "abstain"] = Field(
        "raise",
        description='"raise": an LF that fails names the LF and the row and fails the run; '
        '"abstain": its vote counts as abstain and failures are counted in MLflow.',
    )
    n_jobs: int | None = Field(
        None,
        ge=1,
        description="Processes for row-by-row LFs when they run in the flow's process (a "
        "batch of one partition, no MLSYS_DASK_ADDRESS). Empty: one per CPU.",
    )
    partition_rows: int = Field(
        50_000,
        ge=1,
        description="Rows per partition: a larger batch has its LFs applied by one task per "
        "partition on a Dask cluster (made on this machine, or the one at "
        "MLSYS_DASK_ADDRESS, used for every batch), each reading its rows from S3 and "
        "writing its votes there. With `partitioned`, the rows of each range a task "
        "checks, votes on and labels.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Worker processes of the Dask cluster made on this machine for the "
        "LFs. Empty: one per CPU, at most one per partition (a cluster at "
        "MLSYS_DASK_ADDRESS runs the partitions on all of its workers).",
    )


class TrainOptions(_Options):
    """How the dataset's text classifier is trained."""

    trainer: TrainerSpec = Field(
        default_factory=PlainTrainer,
        description='{"kind": "plain"}: one process; {"kind": "gpipe", "stages": 2, '
        '"microbatches": 4}: pipeline-parallel, a process per stage, each mini-batch cut '
        'into micro-batches (needs hidden layers); with "hosts": ["10.0.0.1", "10.0.0.2"] '
        "(one per stage) each stage runs on its host under torchrun, started by a worker of "
        'the Dask cluster at MLSYS_DASK_ADDRESS; {"kind": "spill", "budget_mb": 32}: one '
        "shard at a time within a memory budget, the others spilled to disk.",
    )
    epochs: int = Field(8, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(
        64, ge=1, description="Examples per optimizer step (gpipe: a multiple of microbatches)."
    )
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    hidden: list[int] = Field(
        default_factory=list,
        description="Hidden layer widths. Empty: a linear model (logistic regression over "
        "the hashed features); gpipe needs at least one, e.g. [64].",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    n_features: int = Field(
        PIPELINE_N_FEATURES, ge=16, description="Hashed text features (a power of two)."
    )
    char_ngrams: list[int] | None = Field(
        default_factory=lambda: list(PIPELINE_CHAR_NGRAMS),
        min_length=2,
        max_length=2,
        description="[min, max] character n-gram lengths hashed beside the word n-grams "
        "(they want many features: 32768 for [1, 4]). Empty: words only.",
    )
    use_weights: bool = Field(
        True, description="Weigh each example by its label's quality (gold 1, weak < 1)."
    )
    seed: int = Field(123, description="Seed of initialization, shuffling and dropout.")
    choose: bool = Field(
        True,
        description="Choose lr, hidden widths, epochs and class balancing (and a binary F1 "
        "threshold) on the gold dev rows by the dataset's metric, among candidates trained "
        "on the weak train rows, then train that with the trainer (the lr, hidden and epochs "
        "above are then ignored); off: train with the values above.",
    )

    @model_validator(mode="after")
    def _trainer_fits_the_model(self) -> TrainOptions:
        self.trainer.check(hidden=self.hidden, dropout=self.dropout)
        return self

    @property
    def char_range(self) -> tuple[int, int] | None:
        """``char_ngrams`` as the (min, max) pair the featurizer takes; None for words only."""
        return (self.char_ngrams[0], self.char_ngrams[1]) if self.char_ngrams else None

    def params(self) -> dict[str, Any]:
        """The flat MLflow parameters: the trainer's kind and its own options, then the rest."""
        return {**self.trainer.params(), **self.model_dump(exclude={"trainer"})}


class InferOptions(_Options):
    """How `batch_infer` scores an input."""

    chunk_rows: int = Field(
        50_000, ge=1, description="Rows read, checked and scored at a time; bounds memory."
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Partitions scored in parallel, each by one task that reads its own "
        "chunks: on the Dask cluster at MLSYS_DASK_ADDRESS when that is set (a local input is "
        "first put in S3 under staging/), else on a Dask cluster on this machine when > 1. "
        "Empty: one per CPU (per worker thread of the given cluster), at most one per chunk.",
    )
