"""The trainer a run asks for, as one typed choice: ``plain``, ``gpipe`` (stages,
micro-batches) or ``spill`` (a memory budget).

A flow parameter or run-form field of type :data:`TrainerSpec` is decoded once, by
pydantic, into one of these classes; each carries its own options, its checks (made before
any data is read) and builds its own strategy for :func:`~mlsys.training.fit`. Adding a
trainer is adding a class here and to :data:`TrainerSpec`.

In JSON (a run form, ``mlsys run --param``, prefect.yaml) a trainer is an object named by
``kind``: ``{"kind": "plain"}``, ``{"kind": "gpipe", "stages": 2, "microbatches": 4}``,
``{"kind": "spill", "budget_mb": 96}``; in Python the class, or the same dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlsys.models.text import text_classifier_layers
from mlsys.training.gpipe import GPipe
from mlsys.training.spill import Spill

__all__ = ["GPipeTrainer", "PlainTrainer", "SpillTrainer", "TrainerSpec"]

MB = 2**20


class _Trainer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelt option fails

    drop_last: ClassVar[bool] = False
    """Whether a last, short mini-batch of an epoch is left out."""
    layered: ClassVar[bool] = False
    """Whether the model must have hidden layers (several layers to cut between)."""

    def check(self, *, hidden: list[int], dropout: float) -> None:
        """Refuse, naming the values, a text classifier this trainer cannot train (what
        depends on the data, e.g. GPipe's batch sizes, :meth:`GPipe.check` refuses when
        training starts)."""

    def strategy(self, work_dir: Path) -> Any:
        """What :func:`~mlsys.training.fit` takes as ``strategy``; ``work_dir`` is an
        existing folder of the run's, removed after it."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The trainer as flat MLflow parameters: ``trainer`` and its options."""
        return {"trainer": self.kind, **self.model_dump(exclude={"kind"})}  # type: ignore[attr-defined]


class PlainTrainer(_Trainer):
    """One process: ``fit(..., strategy="plain")``."""

    model_config = ConfigDict(title="plain")
    kind: Literal["plain"] = "plain"

    def strategy(self, work_dir: Path) -> Any:
        return "plain"


class GPipeTrainer(_Trainer):
    """Pipeline-parallel: the model cut into ``stages`` processes, each mini-batch into
    ``microbatches`` (:class:`~mlsys.training.GPipe`)."""

    model_config = ConfigDict(title="gpipe")
    kind: Literal["gpipe"] = "gpipe"
    stages: int = Field(2, ge=2, description="Pipeline stages, one process each.")
    microbatches: int = Field(4, ge=1, description="Micro-batches per mini-batch.")

    drop_last: ClassVar[bool] = True
    layered: ClassVar[bool] = True

    def check(self, *, hidden: list[int], dropout: float) -> None:
        layers = text_classifier_layers(hidden, dropout)
        if layers < self.stages:
            raise ValueError(
                f"trainer 'gpipe' cuts the model into stages={self.stages} stages, but "
                f"hidden={hidden} gives {layers} layer{'s' if layers > 1 else ''} "
                + (
                    "(a linear model): give it hidden layers, e.g. hidden=[64]"
                    if not hidden
                    else "(Linear and ReLU per hidden layer): add hidden layers or use fewer stages"
                )
            )

    def strategy(self, work_dir: Path) -> GPipe:
        return GPipe(
            stages=self.stages, microbatches=self.microbatches, trace_dir=work_dir / "trace"
        )


class SpillTrainer(_Trainer):
    """One shard at a time within ``budget_mb``, the others spilled to disk
    (:class:`~mlsys.training.Spill`)."""

    model_config = ConfigDict(title="spill")
    kind: Literal["spill"] = "spill"
    budget_mb: int = Field(
        32,
        ge=1,
        description="MiB for shards (weights, gradients, Adam state, activations); shards "
        "are cut to half of it. A model with hidden=[64] over 32768 features needs 96.",
    )

    def strategy(self, work_dir: Path) -> Spill:
        return Spill(self.budget_mb * MB, offload="disk", folder=work_dir)


TrainerSpec = Annotated[
    PlainTrainer | GPipeTrainer | SpillTrainer,
    Field(discriminator="kind", description="plain, gpipe or spill, with its options."),
]
"""The trainer choice, decoded by its ``kind``."""
