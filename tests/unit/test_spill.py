"""Spill: sizes shards from the budget, equals plain training, runs the schedule it
documents, checkpoints and resumes, and fails clearly on a bad folder or a full disk."""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.memory import TORCH_HUGE_PAGES_ENV, huge_pages_hint, transparent_huge_pages
from mlsys.training import Callback, fit, spill
from mlsys.training.fit import latest_checkpoint, load_checkpoint
from mlsys.training.spill import (
    LayerFootprint,
    Spill,
    SpillIOError,
    layer_footprints,
    pack,
    shard_footprint,
)

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
ADAM = functools.partial(torch.optim.Adam, lr=0.01)
CE = nn.CrossEntropyLoss(reduction="none")
BATCH = 16
# Each 16x16 Linear with Adam and a batch of 16 needs about 11 KB: this budget cuts the
# models below into several shards (with prefetch, shards get half of it).
BUDGET = 24_000

skip_if_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mlp(seed: int = 0, *, fancy: bool = False) -> nn.Sequential:
    """Seven layers; ``fancy`` adds dropout, batch norm and an in-place ReLU (state that a
    recomputed forward must replay exactly)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 16), nn.Tanh()]
    if fancy:
        layers += [nn.Dropout(0.3), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True)]
    else:
        layers += [nn.Linear(16, 16), nn.Tanh()]
    layers += [nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def dataset(n: int = 40, weighted: bool = True) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if weighted:
        return TensorDataset(x, y, torch.rand(n, generator=g) + 0.1)
    return TensorDataset(x, y)


def train(strategy: Any = "plain", **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "optimizer": SGD,
        "loss": CE,
        "epochs": 2,
        "batch_size": BATCH,
        "seed": 3,
        **kwargs,
    }
    fancy, weighted = args.pop("fancy", False), args.pop("weighted", True)
    model = args.pop("model", None)
    data = args.pop("data", None)
    if model is None:
        model = mlp(fancy=fancy)
    if data is None:
        data = dataset(weighted=weighted)
    return fit(model, data, strategy=strategy, **args)


def assert_same(got: Any, want: Any, atol: float = 1e-6) -> None:
    state, expected = got.model.state_dict(), want.model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=atol, msg=key)
    assert [r["loss"] for r in got.history] == pytest.approx(
        [r["loss"] for r in want.history], abs=1e-6
    )
    assert [(r["epoch"], r["examples"]) for r in got.history] == [
        (r["epoch"], r["examples"]) for r in want.history
    ]


def footprint(index: int, params: int, output: int = 0, state: int = 0) -> LayerFootprint:
    return LayerFootprint(
        index=index, name=str(index), kind="Linear", params=params, buffers=0, grads=params,
        optimizer_state=state, largest_param=params, input_bytes=0, output_bytes=output,
    )  # fmt: skip


# --- planning ---------------------------------------------------------------------------


def test_pack_fills_shards_greedily_up_to_the_budget() -> None:
    # Per layer: weights 100 + gradients 100; per shard: scratch 2 x the largest (200).
    layers = [footprint(i, 100) for i in range(5)]
    assert shard_footprint(layers[:1]) == 400
    assert shard_footprint(layers[:4]) == 1000
    assert pack(layers, 1000, prefetch=False) == [4, 1]
    assert pack(layers, 999, prefetch=False) == [3, 2]
    assert pack(layers, 1000, prefetch=True) == [1, 1, 1, 1, 1]  # half the budget: 500
    assert pack(layers, 1200, prefetch=True) == [2, 2, 1]  # 600: two layers each
    for budget, prefetch in ((700, False), (1000, False), (1600, True)):
        counts = pack(layers, budget, prefetch=prefetch)
        starts = [sum(counts[:i]) for i in range(len(counts))]
        cap = budget // 2 if prefetch else budget
        assert sum(counts) == 5
        shards = [layers[a : a + c] for a, c in zip(starts, counts, strict=True)]
        assert all(shard_footprint(shard) <= cap for shard in shards)


def test_a_layer_too_big_for_half_the_budget_gets_a_shard_of_its_own() -> None:
    layers = [footprint(0, 10), footprint(1, 200), footprint(2, 10)]
    assert pack(layers, 1000, prefetch=True) == [1, 1, 1]  # 800 > 500, but <= 1000


def test_budget_below_the_largest_layer_names_it() -> None:
    layers = [footprint(0, 10), footprint(1, 300, state=600), footprint(2, 10)]
    with pytest.raises(
        ValueError, match=r"layer 1 \(Linear\) needs 1800 bytes .* budget_bytes=1000"
    ):
        pack(layers, 1000, prefetch=False)


def test_too_small_budget_fails_before_training_and_names_the_layer() -> None:
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) needs \d+ bytes on the device"):
        train(Spill(1000))


@pytest.mark.parametrize(
    ("optimizer", "state_per_param"),
    [
        (functools.partial(torch.optim.SGD, lr=0.1), 0),
        (functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), 1),
        (functools.partial(torch.optim.Adam, lr=0.1), 2),
        (functools.partial(torch.optim.AdamW, lr=0.1, amsgrad=True), 3),
    ],
)
def test_footprints_measure_optimizer_state_and_activations(
    optimizer: Any, state_per_param: int
) -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    found = layer_footprints(model, torch.zeros(1, 6), optimizer, batch_size=8)
    params = (6 * 16 + 16) * 4
    steps = 2 * 4 if "Adam" in repr(optimizer) else 0  # a float32 step count per tensor
    assert (found[0].params, found[0].grads) == (params, params)
    assert found[0].optimizer_state == state_per_param * params + steps
    assert (found[0].input_bytes, found[0].output_bytes) == (8 * 6 * 4, 8 * 16 * 4)
    assert (found[1].params, found[1].optimizer_state, found[1].output_bytes) == (0, 0, 8 * 16 * 4)


def test_model_must_be_sequential() -> None:
    with pytest.raises(TypeError, match=r"nn\.Sequential .* got Linear"):
        Spill(BUDGET).check(nn.Linear(6, 3), None, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_bytes": 0}, "budget_bytes must be a positive integer, got 0"),
        ({"budget_bytes": 1.5}, "budget_bytes must be a positive integer"),
        ({"budget_bytes": 1, "offload": "tape"}, "offload must be one of"),
        ({"budget_bytes": 1, "device": "tpu"}, 'device must be "cpu" or "cuda"'),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Spill(**kwargs)


# --- equivalence with plain training -----------------------------------------------------


@functools.cache
def plain(optimizer: str, shuffle: bool, weighted: bool = True, fancy: bool = False) -> Any:
    opt = SGD if optimizer == "sgd" else ADAM
    return train(optimizer=opt, shuffle=shuffle, weighted=weighted, fancy=fancy)


GRID = [
    pytest.param(
        o, off, p, sh, id=f"{o}-{off}-{'prefetch' if p else 'sync'}-{'shuf' if sh else 'ord'}"
    )
    for o in ("sgd", "adam")
    for off in ("host", "disk")
    for p in (True, False)
    for sh in (True, False)
]


@pytest.mark.parametrize(("optimizer", "offload", "prefetch", "shuffle"), GRID)
def test_spill_equals_plain_training(
    optimizer: str, offload: Any, prefetch: bool, shuffle: bool, tmp_path: Path
) -> None:
    strategy = Spill(BUDGET, offload=offload, prefetch=prefetch, folder=tmp_path)
    got = train(strategy, optimizer=SGD if optimizer == "sgd" else ADAM, shuffle=shuffle)
    assert_same(got, plain(optimizer, shuffle))
    assert list(tmp_path.iterdir()) == []  # the private folder is gone


@pytest.mark.parametrize("offload", ["host", "disk"])
def test_fused_adam_equals_plain_training(offload: Any, tmp_path: Path) -> None:
    """``Adam(fused=True)`` (one kernel per parameter, a tensor step count) spills its
    state with the shard like the default Adam, and trains as plain training does."""
    fused = functools.partial(torch.optim.Adam, lr=0.01, fused=True)
    got = train(Spill(BUDGET, offload=offload, folder=tmp_path), optimizer=fused, shuffle=True)
    assert_same(got, train(optimizer=fused, shuffle=True))


def test_the_budget_really_cuts_the_model_into_shards() -> None:
    plan = Spill(BUDGET).plan(mlp(), torch.zeros(1, 6), ADAM, BATCH)
    assert len(plan.counts) >= 3
    assert all(plan.footprint(s) <= BUDGET // 2 for s in range(len(plan.counts)))


def test_unweighted_data_equals_plain() -> None:
    assert_same(train(Spill(BUDGET), weighted=False), plain("sgd", False, weighted=False))


def test_weights_reach_the_loss() -> None:
    weighted = train(Spill(BUDGET), weighted=True).model
    unweighted = train(Spill(BUDGET), weighted=False).model
    assert not torch.allclose(weighted[0].weight, unweighted[0].weight)


@pytest.mark.parametrize("offload", ["host", "disk"])
def test_dropout_batch_norm_and_in_place_layers_replay_exactly(offload: Any) -> None:
    """Recomputed forwards draw the same dropout masks and see the same batch-norm
    statistics; the statistics move once per step; an in-place first layer of a shard
    doesn't corrupt its saved input."""
    got = train(Spill(BUDGET, offload=offload), optimizer=ADAM, shuffle=True, fancy=True)
    assert_same(got, plain("adam", True, fancy=True))


def test_a_model_that_fits_in_one_shard_equals_plain() -> None:
    got = train(Spill(10**9, offload="disk"), optimizer=ADAM, shuffle=True)
    assert_same(got, plain("adam", True))


def test_a_meta_model_is_materialised_as_a_cpu_model_built_with_the_seed() -> None:
    with torch.device("meta"):
        lazy = mlp(seed=0)
    assert lazy[0].weight.is_meta
    got = train(Spill(BUDGET, offload="disk", init_seed=0), model=lazy, optimizer=ADAM)
    assert_same(got, plain("adam", False))


def test_a_meta_layer_without_reset_parameters_is_refused() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    with torch.device("meta"):
        lazy = nn.Sequential(nn.Linear(6, 16), Scale(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"layer 1 \(Scale\) is on the meta device .* no reset"):
        train(Spill(BUDGET), model=lazy)


def test_tied_weights_across_shards_are_refused() -> None:
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(6, 16), shared, nn.Tanh(), shared, nn.Linear(16, 3))
    with pytest.raises(ValueError, match="tied weights must stay in one shard"):
        train(Spill(BUDGET), model=model)


def test_result_model_is_on_cpu_and_outlives_the_folder(tmp_path: Path) -> None:
    result = train(Spill(BUDGET, offload="disk", folder=tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    with torch.no_grad():
        out = result.model(torch.zeros(2, 6))
    assert out.shape == (2, 3)
    result.model[0].weight.data.add_(1.0)  # writable: a private mapping


# --- the schedule -------------------------------------------------------------------------

# One steady step over three shards with prefetch, as the module docstring's table shows:
# what the main thread does, and the I/O jobs it hands out, in order.
DOCUMENTED_STEP = [
    ("load", 1, "weights"),
    ("write", 0, "input"),
    ("forward", 0, ""),
    ("write", 0, "weights+state"),
    ("load", 2, "weights+state"),
    ("write", 1, "input"),
    ("forward", 1, ""),
    ("load", 1, "weights+state+input"),
    ("forward+backward", 2, ""),
    ("write", 2, "weights+state"),
    ("load", 0, "weights+state+input"),
    ("backward", 1, ""),
    ("write", 1, "weights+state"),
    ("backward", 0, ""),
]


def test_schedule_matches_the_documented_table() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(12, 8), torch.randint(0, 3, (12,)))
    trace: list[tuple[str, int, str]] = []
    strategy = Spill(4100, offload="disk", trace=trace)
    assert strategy.plan(model, data.tensors[0][:1], SGD, 4).counts == (1, 1, 1)
    fit(model, data, strategy=strategy, optimizer=SGD, loss=CE, batch_size=4)
    steps = [i for i, event in enumerate(trace) if event == ("write", 0, "input")]
    assert len(steps) == 3
    second_step = trace[steps[1] - 1 : steps[2] - 1]
    assert second_step == DOCUMENTED_STEP


def test_without_prefetch_nothing_is_loaded_ahead() -> None:
    trace: list[tuple[str, int, str]] = []
    train(Spill(BUDGET, offload="disk", prefetch=False, trace=trace), epochs=1)
    for before, after in itertools.pairwise(trace):
        if before[0] == "load":
            assert after[1] == before[1], f"{before} was loaded ahead of {after}"


def test_a_loaded_shard_is_its_file_so_writing_it_back_copies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU device a shard is loaded as a shared mapping of its file: the optimizer's
    updates land in the file, so a shard's weights are written once (when set up) and its
    optimizer state once (when the first step creates it), however many steps follow."""
    from mlsys.training.shards import store

    written: list[str] = []
    real = store.write_file

    def write(path: Path, data: memoryview) -> None:
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(store, "write_file", write)
    strategy = Spill(BUDGET, offload="disk", folder=tmp_path)
    plan = strategy.plan(mlp(), dataset().tensors[0][:1], ADAM, BATCH)
    with_params = [
        s for s in range(len(plan.counts)) if any(layer.params for layer in plan.shard_layers(s))
    ]
    got = train(strategy, optimizer=ADAM, epochs=3)
    assert_same(got, train(optimizer=ADAM, epochs=3))
    weights = sorted(name for name in written if name.endswith(".weights.bin"))
    state = sorted(name for name in written if name.endswith(".state.bin"))
    assert len(with_params) > 1
    assert weights == sorted(f"shard-{s}.weights.bin" for s in with_params)
    assert state == sorted(f"shard-{s}.state.bin" for s in with_params)


def test_the_pool_reuses_buffers_by_size_and_lets_the_longest_waiting_go_first() -> None:
    from mlsys.training.shards.store import Pool

    mib = 1 << 20
    pool = Pool(limit=3 * mib)
    a, b, c = pool.take(mib, False), pool.take(2 * mib, False), pool.take(mib, False)
    pool.give(a)
    pool.give(b)
    pool.give(c)  # 4 MiB would wait: a, the longest waiting, is let go
    assert pool.take(2 * mib, False).data_ptr() == b.data_ptr()
    assert pool.take(mib, False).data_ptr() == c.data_ptr()
    assert pool.take(mib, False).data_ptr() not in (a.data_ptr(), c.data_ptr())
    foreign = torch.empty(mib, dtype=torch.uint8)
    pool.give(foreign)  # not the pool's own: not kept
    assert pool.take(mib, False).data_ptr() != foreign.data_ptr()


# --- checkpoints, resume, callbacks ----------------------------------------------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_train_begin(self, *, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.events.append(("begin", (epochs, steps_per_epoch, start_epoch)))

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.events.append(("step", (epoch, step, round(loss, 5))))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.events.append(("epoch", (record["epoch"], round(record["loss"], 5))))

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.events.append(("checkpoint", (path.name, epoch)))

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        self.events.append(("end", len(history)))


def test_callbacks_and_checkpoints_are_what_plain_training_gives(tmp_path: Path) -> None:
    seen, expected = Recorder(), Recorder()
    got = train(Spill(BUDGET, offload="disk"), checkpoint_dir=tmp_path / "s", callbacks=[seen])
    want = train(checkpoint_dir=tmp_path / "p", callbacks=[expected])
    assert seen.events == expected.events
    spilled = load_checkpoint(tmp_path / "s" / "epoch-0001.pt")
    reference = load_checkpoint(tmp_path / "p" / "epoch-0001.pt")
    assert spilled["strategy"].startswith("spill shards=")
    assert spilled["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        torch.testing.assert_close(spilled["model"][key], value, rtol=0, atol=1e-6)
    assert len(spilled["optimizers"]) == len(spilled["strategy"].split(","))
    assert_same(got, want)


@pytest.mark.parametrize("first", ["spill", "plain"])
def test_resume_equals_uninterrupted_under_another_budget(first: str, tmp_path: Path) -> None:
    """Checkpoints don't depend on the partition: resume a Spill run (or a plain one) with
    another budget, so other shards."""
    full = train(optimizer=ADAM, epochs=4, shuffle=True)
    strategy = Spill(BUDGET, offload="disk") if first == "spill" else "plain"
    train(strategy, optimizer=ADAM, epochs=2, shuffle=True, checkpoint_dir=tmp_path)
    recorder = Recorder()
    resumed = train(
        Spill(3 * BUDGET, offload="disk"), model=mlp(seed=99), optimizer=ADAM, epochs=4,
        shuffle=True, checkpoint_dir=tmp_path, resume=True, callbacks=[recorder],
    )  # fmt: skip
    assert recorder.events[0] == ("begin", (4, 3, 2))
    assert_same(resumed, full)


# --- failures ----------------------------------------------------------------------------------


def test_a_folder_that_is_not_a_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"Spill folder .*a-file/spill is not a directory"):
        train(Spill(BUDGET, offload="disk", folder=blocker / "spill"))
    with pytest.raises(ValueError, match=r"Spill folder .*missing is not a directory"):
        train(Spill(BUDGET, offload="disk", folder=tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable for this process: by its mode, or for root (whom modes
    don't stop) by the immutable attribute; skips the test where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("root can't be kept out of a folder here: no chattr")
    done = subprocess.run([chattr, "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"root can't be kept out of {folder}: chattr +i failed ({done.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_a_read_only_folder_is_named(tmp_path: Path) -> None:
    with (
        read_only(tmp_path),
        pytest.raises(ValueError, match=f"Spill folder {tmp_path} is not writable"),
    ):
        train(Spill(BUDGET, offload="disk", folder=tmp_path))


def enospc_after(calls: int, real: Any) -> Any:
    """A write that works ``calls`` times, then half-writes and finds the disk full."""
    count = {"n": 0}

    def write(*args: Any) -> Any:
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    return write


def test_disk_full_while_spilling_names_the_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsys.training.shards import store

    monkeypatch.setattr(store, "write_file", enospc_after(20, store.write_file))
    with pytest.raises(SpillIOError, match=r"writing .* bytes\) to .*shard-.*No space left"):
        train(Spill(BUDGET, offload="disk", folder=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_a_checkpoint_leaves_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsys.training import spill

    ckpt = tmp_path / "ckpt"
    train(Spill(BUDGET, offload="disk"), epochs=1, checkpoint_dir=ckpt)
    good = (ckpt / "epoch-0000.pt").read_bytes()

    real = spill._PageDroppingWriter.write
    written = {"bytes": 0}

    def half_then_full(self: Any, data: Any) -> int:
        if written["bytes"] > 2000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(self, data)
        written["bytes"] += n
        return n

    monkeypatch.setattr(spill._PageDroppingWriter, "write", half_then_full)
    with pytest.raises(SpillIOError, match=r"writing checkpoint .*epoch-0001\.pt failed: No space"):
        train(Spill(BUDGET, offload="disk"), epochs=2, checkpoint_dir=ckpt, resume=True)
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0000.pt"]
    assert latest_checkpoint(ckpt) == ckpt / "epoch-0000.pt"
    assert (ckpt / "epoch-0000.pt").read_bytes() == good


def test_a_non_finite_loss_stops_with_where_it_happened(tmp_path: Path) -> None:
    data = TensorDataset(torch.full((8, 6), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        train(Spill(BUDGET, offload="disk", folder=tmp_path), data=data)
    assert list(tmp_path.iterdir()) == []


# --- CUDA -----------------------------------------------------------------------------------


@skip_if_no_cuda
@pytest.mark.parametrize("offload", ["host", "disk"])
def test_cuda_equals_plain_training(offload: Any) -> None:
    got = train(Spill(BUDGET, device="cuda", offload=offload), optimizer=ADAM, shuffle=True)
    assert_same(got, plain("adam", True), atol=1e-5)


def test_disk_offload_says_how_to_get_huge_pages_where_they_would_help(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once per process (the setting is read when torch starts, so Spill can only say it),
    and only where the kernel gives huge pages on request and torch wasn't asked."""
    monkeypatch.delenv(TORCH_HUGE_PAGES_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="mlsys.training.spill"):
        spill._return_freed_memory.__wrapped__()  # type: ignore[attr-defined]
    hint = huge_pages_hint()
    assert (hint is not None) == (transparent_huge_pages() == "madvise")
    assert (f"{TORCH_HUGE_PAGES_ENV}=1" in caplog.text) == (hint is not None)
    caplog.clear()
    monkeypatch.setenv(TORCH_HUGE_PAGES_ENV, "1")
    with caplog.at_level(logging.INFO, logger="mlsys.training.spill"):
        spill._return_freed_memory.__wrapped__()  # type: ignore[attr-defined]
    assert TORCH_HUGE_PAGES_ENV not in caplog.text
