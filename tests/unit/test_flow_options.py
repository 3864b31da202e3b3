"""The flows' parameter checks that run before any work: the end_to_end form's training
options and the train flow's GPipe depth check."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from flows.end_to_end import TrainOptions
from tasks.train import check_gpipe_depth


def test_the_default_model_is_linear_over_word_and_character_grams() -> None:
    options = TrainOptions()
    assert options.hidden == []
    assert options.char_ngrams == [1, 4]
    assert options.n_features == 2**15


def test_gpipe_on_the_linear_default_is_refused_naming_hidden() -> None:
    with pytest.raises(ValidationError, match=r"stages=2 stages, but hidden=\[\] gives 1 layer"):
        TrainOptions(trainer="gpipe")
    assert TrainOptions(trainer="gpipe", hidden=[64]).hidden == [64]


@pytest.mark.parametrize(
    ("hidden", "stages", "dropout", "layers"),
    [([], 2, 0.0, 1), ([64], 4, 0.0, 3), ([64], 5, 0.1, 4)],
)
def test_gpipe_depth_counts_every_layer(
    hidden: list[int], stages: int, dropout: float, layers: int
) -> None:
    check_gpipe_depth(hidden, stages=layers, dropout=dropout)
    with pytest.raises(ValueError, match=re.escape(f"hidden={hidden} gives {layers} layer")):
        check_gpipe_depth(hidden, stages=stages, dropout=dropout)


def _arrow_pool() -> str:
    import pyarrow as pa

    return str(pa.default_memory_pool().backend_name)


def test_batch_infer_dask_workers_start_with_arrows_pool_as_the_system_allocator() -> None:
    """The cluster batch_infer asks for sets STREAMING_ENV in each worker before pyarrow
    is imported there: Arrow's own pool in the worker is the system allocator."""
    from distributed import Client, LocalCluster

    from flows.batch_infer import _dask_runner

    kwargs = dict(_dask_runner(2).cluster_kwargs) | {"n_workers": 1}
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
