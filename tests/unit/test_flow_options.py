"""The flows' parameter checks that run before any work: the end_to_end form's training
options and the trainer choice's own checks (GPipe's depth)."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from flows.options import TrainOptions
from mlsys.training.trainers import GPipeTrainer, PlainTrainer, SpillTrainer


def test_the_default_model_is_linear_over_word_and_character_grams() -> None:
    options = TrainOptions()
    assert options.hidden == []
    assert options.char_ngrams == [1, 4]
    assert options.n_features == 2**15


def test_gpipe_on_the_linear_default_is_refused_naming_hidden() -> None:
    with pytest.raises(ValidationError, match=r"stages=2 stages, but hidden=\[\] gives 1 layer"):
        TrainOptions.model_validate({"trainer": {"kind": "gpipe"}})
    options = TrainOptions.model_validate({"trainer": {"kind": "gpipe"}, "hidden": [64]})
    assert options.trainer == GPipeTrainer(stages=2, microbatches=4)
    with pytest.raises(ValidationError, match=r"stages=4 stages, but hidden=\[64\] gives 3"):
        TrainOptions.model_validate({"trainer": {"kind": "gpipe", "stages": 4}, "hidden": [64]})


def test_the_trainer_is_decoded_once_by_its_kind_with_its_own_options() -> None:
    assert TrainOptions().trainer == PlainTrainer()
    spill = TrainOptions.model_validate({"trainer": {"kind": "spill", "budget_mb": 96}})
    assert spill.trainer == SpillTrainer(budget_mb=96)
    assert spill.trainer.params() == {"trainer": "spill", "budget_mb": 96}
    for bad, named in [
        ({"kind": "magic"}, "'magic'"),
        ({"kind": "spill", "stages": 2}, "spill.stages"),  # another kind's option
        ({"kind": "gpipe", "stages": 1}, "gpipe.stages"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(named)):
            TrainOptions.model_validate({"trainer": bad, "hidden": [64]})


@pytest.mark.parametrize(
    ("hidden", "stages", "dropout", "layers"),
    [([64], 4, 0.0, 3), ([64, 32], 6, 0.0, 5), ([64], 5, 0.1, 4)],
)
def test_gpipe_depth_counts_every_layer(
    hidden: list[int], stages: int, dropout: float, layers: int
) -> None:
    GPipeTrainer(stages=layers).check(hidden=hidden, dropout=dropout)
    with pytest.raises(ValueError, match=re.escape(f"hidden={hidden} gives {layers} layer")):
        GPipeTrainer(stages=stages).check(hidden=hidden, dropout=dropout)


# What the worker runs travels pickled: a module-level function by reference, so the worker
# would have to import this test module (it can under `python -m pytest`, whose working
# directory is on sys.path, not under the bare `pytest` script); a lambda travels by value.
_arrow_pool = lambda: str(__import__("pyarrow").default_memory_pool().backend_name)  # noqa: E731


def test_batch_infer_dask_workers_start_with_arrows_pool_as_the_system_allocator() -> None:
    """The cluster batch_infer asks for sets STREAMING_ENV in each worker before pyarrow
    is imported there: Arrow's own pool in the worker is the system allocator."""
    from distributed import Client, LocalCluster

    from tasks.cluster import dask_runner

    kwargs = dict(dask_runner(2).cluster_kwargs) | {"n_workers": 1}
    # Dask's nanny writes its pre-spawn variables (MALLOC_TRIM_THRESHOLD_,
    # OMP_NUM_THREADS) into this process's environment; later tests' subprocesses must
    # not inherit them.
    saved = dict(os.environ)
    try:
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert client.submit(_arrow_pool, pure=False).result(timeout=60) == "system"
    finally:
        os.environ.clear()
        os.environ.update(saved)
