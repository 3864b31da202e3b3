"""The trainer a run asks for, as one typed choice: ``plain``, ``gpipe`` (stages,
micro-batches) or ``spill`` (a memory budget).

A flow parameter or run-form field of type :data:`TrainerSpec` is decoded once, by
pydantic, into one of these classes; each carries its own options, its checks (made before
any data is read) and builds its own strategy for :func:`~mlsys.training.fit`. Adding a
trainer is adding a class here and to :data:`TrainerSpec`.

In JSON (a run form, ``mlsys run --param``, prefect.yaml) a trainer is an object named by
``kind``: ``{"kind": "plain"}``, ``{"kind": "gpipe", "stages": 2, "microbatches": 4}``,
``{"kind": "spill", "budget_mb": 96}``; in Python the class, or the same dict. A GPipe
trainer with ``hosts`` runs its stages on those hosts:
``{"kind": "gpipe", "stages": 2, "microbatches": 4, "hosts": ["10.0.0.1", "10.0.0.2"]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlsys.models.text import text_classifier_layers
from mlsys.training.gpipe import GPipe
from mlsys.training.gpipe_hosts import RENDEZVOUS_PORT, GPipeHosts, StageLauncher, check_hosts
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
    ``microbatches`` (:class:`~mlsys.training.GPipe`); with ``hosts``, stage ``s`` runs on
    ``hosts[s]`` (:class:`~mlsys.training.gpipe_hosts.GPipeHosts`)."""

    model_config = ConfigDict(title="gpipe")
    kind: Literal["gpipe"] = "gpipe"
    stages: int = Field(2, ge=2, description="Pipeline stages, one process each.")
    microbatches: int = Field(4, ge=1, description="Micro-batches per mini-batch.")
    hosts: list[str] | None = Field(
        None,
        description="One host per stage (names or IPv4 addresses, all different), e.g. "
        '["10.0.0.1", "10.0.0.2"]: each stage runs there under torchrun, the hosts meeting '
        "through torchrun's c10d rendezvous, over gloo on CPU; needs a Dask worker on each "
        "host of the cluster at MLSYS_DASK_ADDRESS. Empty: every stage on this machine.",
    )
    rendezvous: str | None = Field(
        None,
        description=f'With hosts: "host:port" of the c10d rendezvous, on one of the hosts. '
        f"Empty: the first host, port {RENDEZVOUS_PORT}.",
    )

    drop_last: ClassVar[bool] = True
    layered: ClassVar[bool] = True

    @model_validator(mode="after")
    def _hosts_fit_the_stages(self) -> GPipeTrainer:
        if self.hosts is not None:
            check_hosts(self.hosts, self.stages, self.rendezvous)
        elif self.rendezvous is not None:
            raise ValueError(
                f"rendezvous={self.rendezvous!r} is for stages on several hosts: give hosts "
                f"too, one per stage"
            )
        return self

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

    def params(self) -> dict[str, Any]:
        """The trainer's MLflow parameters; ``hosts`` and ``rendezvous`` when given."""
        return {"trainer": self.kind, **self.model_dump(exclude={"kind"}, exclude_none=True)}

    def strategy(self, work_dir: Path, launch: StageLauncher | None = None) -> GPipe | GPipeHosts:
        """The local :class:`GPipe`, or with ``hosts`` the stages on those hosts, started
        there by ``launch``."""
        if self.hosts is None:
            return GPipe(
                stages=self.stages, microbatches=self.microbatches, trace_dir=work_dir / "trace"
            )
        if launch is None:
            raise ValueError(
                f"trainer 'gpipe' with hosts={self.hosts} needs a launcher that starts each "
                f"stage on its host"
            )
        gpipe = GPipe(stages=self.stages, microbatches=self.microbatches)
        return GPipeHosts(gpipe, list(self.hosts), launch, rendezvous=self.rendezvous)


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
