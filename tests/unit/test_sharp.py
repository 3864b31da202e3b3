"""SHARP (train_many): each model trains exactly as it would alone, units of one model never
overlap, every device runs one unit at a time, a failing job leaves the others to finish,
and bad input is refused before any work starts."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.training import Callback, fit
from mlsys.training.shards.store import Mappings, create, file_layout, map_file, slot_views
from mlsys.training.sharp import (
    Job,
    UnitRecord,
    _carry_path,
    _create_state,
    _job_dir,
    _load,
    _save,
    _saved_path,
    _Worker,
    lower_bound,
    plot_gantt,
    simulate_lrtf,
    train_many,
    unit_chain,
)
from mlsys.training.sharp_schedule import Unit

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
ADAM = functools.partial(torch.optim.Adam, lr=0.01)
CE = nn.CrossEntropyLoss(reduction="none")
# Cuts the models below into two to four shards (half of it per shard, as with prefetch).
BUDGET = 24_000


def mlp(seed: int, *, width: int = 16, fancy: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, width), nn.Tanh()]
    if fancy:
        layers += [nn.Dropout(0.3), nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    layers += [nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3)]
    return nn.Sequential(*layers)


def dataset(n: int = 40, weighted: bool = True) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if weighted:
        return TensorDataset(x, y, torch.rand(n, generator=g) + 0.1)
    return TensorDataset(x, y)


def job(name: str, model: nn.Sequential, optimizer: Any = ADAM, **kwargs: Any) -> Job:
    defaults: dict[str, Any] = {
        "data": dataset(),
        "loss": CE,
        "epochs": 2,
        "batch_size": 8,
        "seed": 3,
        "shuffle": True,
    }
    defaults.update(kwargs)
    return Job(model=model, optimizer=optimizer, name=name, **defaults)


def alone(j: Job, model: nn.Sequential) -> Any:
    return fit(
        model,
        j.data,
        optimizer=j.optimizer,
        loss=j.loss,
        epochs=j.epochs,
        batch_size=j.batch_size,
        seed=j.seed,
        shuffle=j.shuffle,
        drop_last=j.drop_last,
    )


def assert_same(a: nn.Module, b: nn.Module, tol: float) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x.float(), y.float(), atol=tol, rtol=0), (
            name,
            float((x.float() - y.float()).abs().max()),
        )


def test_unit_chain_is_forward_then_last_then_backward() -> None:
    assert unit_chain(1) == [("L", 0)]
    assert unit_chain(3) == [("F", 0), ("F", 1), ("L", 2), ("B", 1), ("B", 0)]


class Steps(Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.epochs: list[dict[str, Any]] = []
        self.ended = False

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.steps.append((epoch, step))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        self.ended = True


@pytest.mark.parametrize(("devices", "offload"), [(1, "disk"), (2, "disk"), (2, "host")])
def test_every_model_equals_training_it_alone(devices: int, offload: str, tmp_path: Path) -> None:
    """Also when models move between devices: with 2 devices some model usually moves
    between a shard's forward and backward units (offload="host" keeps the saved input in
    memory until then; the hand-over itself is tested deterministically below)."""
    callbacks = Steps()
    jobs = [
        # SGD: under Adam the bias before batch norm (zero gradient but for rounding) moves
        # by whatever rounding gives, so one thread vs two would already differ.
        job("sgd-dropout-bn", mlp(0, fancy=True), SGD, callbacks=[callbacks]),
        job("adam", mlp(1), epochs=3),
        job("unweighted-wide", mlp(2, width=24), data=dataset(weighted=False), seed=9),
        job("in-order", mlp(3), shuffle=False, batch_size=12, drop_last=True),
    ]
    references = [alone(j, mlp(i, fancy=i == 0, width=24 if i == 2 else 16))
                  for i, j in enumerate(jobs)]  # fmt: skip
    folder = tmp_path if offload == "disk" else None
    result = train_many(
        jobs,
        devices=devices,
        budget_bytes=BUDGET,
        offload=offload,  # type: ignore[arg-type]
        folder=folder,
    )
    assert result.failures == {}

    assert sorted(len(bounds) for bounds in result.shards) == [2, 2, 2, 3], result.shards
    for j, ref, got in zip(jobs, references, result.results, strict=True):
        assert got is not None, j.name
        assert_same(got.model, ref.model, 1e-6)
        assert [h["loss"] for h in got.history] == pytest.approx(
            [h["loss"] for h in ref.history], abs=1e-6
        ), j.name
        assert [h["examples"] for h in got.history] == [h["examples"] for h in ref.history]
    assert callbacks.steps == [(e, s) for e in range(2) for s in range(5)]
    assert [r["loss"] for r in callbacks.epochs] == [h["loss"] for h in result.results[0].history]
    assert callbacks.ended
    # Nothing is left behind in the offload folder.
    assert list(tmp_path.iterdir()) == []


def test_whole_models_without_a_budget_are_one_shard_each() -> None:
    jobs = [job(f"m{i}", mlp(i)) for i in range(3)]
    references = [alone(j, mlp(i)) for i, j in enumerate(jobs)]
    result = train_many(jobs, devices=2)
    assert result.shards == [[(0, 5)]] * 3
    for ref, got in zip(references, result.results, strict=True):
        assert got is not None
        assert_same(got.model, ref.model, 1e-6)


def check_schedule(timeline: list[UnitRecord], n_jobs: int) -> None:
    by_device: dict[int, list[UnitRecord]] = {}
    by_job: dict[int, list[UnitRecord]] = {}
    for record in timeline:
        by_device.setdefault(record.device, []).append(record)
        by_job.setdefault(record.job, []).append(record)
    for records in by_device.values():
        records.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(records):
            assert a.end <= b.start, ("a device ran two units at once", a, b)
    assert len(by_job) == n_jobs
    for records in by_job.values():
        records.sort(key=lambda r: r.start)
        assert [r.seq for r in records] == list(range(len(records))), "units out of order"
        for a, b in itertools.pairwise(records):
            assert a.end <= b.start, ("a model ran on two devices at once", a, b)


def test_the_schedule_keeps_devices_and_models_sequential() -> None:
    jobs = [job(f"m{i}", mlp(i), epochs=1) for i in range(4)]
    result = train_many(jobs, devices=2, budget_bytes=BUDGET)
    check_schedule(result.timeline, 4)
    n_units = sum(len(unit_chain(len(b))) * 5 for b in result.shards)
    assert len(result.timeline) == n_units
    assert {r.device for r in result.timeline} == {0, 1}, "both devices worked"
    assert result.makespan > 0
    bound = lower_bound(result.timeline, 2)
    assert 0 < bound <= simulate_lrtf(result.timeline, 2) + 1e-12


def test_a_failing_job_leaves_the_others_to_finish() -> None:
    x, y, w = dataset().tensors
    y = y.clone()
    y[30] = 7  # three classes: the loss fails on the batch holding example 30
    bad = TensorDataset(x, y, w)
    jobs = [job("ok-0", mlp(0)), job("bad-label", mlp(1), data=bad), job("ok-2", mlp(2))]
    references = {0: alone(jobs[0], mlp(0)), 2: alone(jobs[2], mlp(2))}
    result = train_many(jobs, devices=2, budget_bytes=BUDGET)
    assert list(result.failures) == ["bad-label"]
    assert "Traceback" in result.failures["bad-label"]
    assert "Target 7 is out of bounds" in result.failures["bad-label"]
    assert result.results[1] is None
    for index, ref in references.items():
        got = result.results[index]
        assert got is not None
        assert_same(got.model, ref.model, 1e-6)
    with pytest.raises(RuntimeError, match="bad-label"):
        result.raise_failures()


def test_lower_bound_and_simulator_on_a_known_timeline() -> None:
    def unit(job: int, seq: int, cost: float) -> UnitRecord:
        return UnitRecord(0, job, seq, "L", 0, 0.0, cost, cost, 0.0)

    # Job 0: 3+3 s, job 1: 1 s, job 2: 1 s. On 2 devices: all work / 2 = 4 s, but job 0's
    # chain alone takes 6 s.
    timeline = [unit(0, 0, 3), unit(0, 1, 3), unit(1, 0, 1), unit(2, 0, 1)]
    assert lower_bound(timeline, 2) == 6
    assert simulate_lrtf(timeline, 2) == 6
    assert lower_bound(timeline, 1) == 8
    assert simulate_lrtf(timeline, 1) == 8
    # Four equal single-unit jobs on two devices pack perfectly.
    even = [unit(j, 0, 2) for j in range(4)]
    assert lower_bound(even, 2) == simulate_lrtf(even, 2) == 4


class NotSequential(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_bad_input_is_refused_naming_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one job"):
        train_many([])
    with pytest.raises(TypeError, match=r"job odd: model must be an nn\.Sequential.*NotSequential"):
        train_many([job("odd", NotSequential())])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'twin' appears twice"):
        train_many([job("twin", mlp(0)), job("twin", mlp(1))])
    with pytest.raises(ValueError, match="devices must be a positive integer, got 0"):
        train_many([job("a", mlp(0))], devices=0)
    with pytest.raises(ValueError, match="'tpu'"):
        train_many([job("a", mlp(0))], devices=["tpu"])
    with pytest.raises(ValueError, match="job a: epochs must be a positive integer, got 0"):
        train_many([job("a", mlp(0), epochs=0)])
    with pytest.raises(TypeError, match="job a can't be sent to the worker processes"):
        train_many([job("a", mlp(0), lambda params: torch.optim.SGD(params, lr=0.1))])
    with pytest.raises(ValueError, match=r"job a: layer 0 \(Linear\) needs \d+ bytes"):
        train_many([job("a", mlp(0))], budget_bytes=1000)
    with pytest.raises(ValueError, match="is not a directory"):
        train_many([job("a", mlp(0))], offload="disk", folder=tmp_path / "missing")
    with pytest.raises(ValueError, match="is for offload='disk'"):
        train_many([job("a", mlp(0))], folder=tmp_path)
    with pytest.raises(ValueError, match="offload must be"):
        train_many([job("a", mlp(0))], offload="ssd")  # type: ignore[arg-type]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anyway
            with pytest.raises(ValueError, match="is not writable"):
                train_many([job("a", mlp(0))], offload="disk", folder=locked)
    finally:
        locked.chmod(0o700)


def test_a_first_step_state_write_publishes_its_metadata_last(tmp_path: Path) -> None:
    """A shard's first optimizer state is written behind the unit that made it; a device
    that takes the shard next waits for the metadata, so the metadata must appear only
    once the state file is whole, and never when writing the state failed."""
    tensors = [
        ("0.exp_avg", torch.randn(3, 5)),
        ("0.step", torch.tensor(4.0)),
        ("1.exp_avg", torch.randn(5, 3).t()),  # not contiguous
        ("1.half", torch.randn(7, dtype=torch.bfloat16)),
    ]
    state, meta = tmp_path / "opt.bin", tmp_path / "opt.meta"
    slots, nbytes = file_layout(tensors)
    _create_state(state, tensors, meta, {"nbytes": nbytes})
    assert _load(meta, timeout=1) == {"nbytes": nbytes}
    views = slot_views(map_file(state, nbytes), slots)
    for key, tensor in tensors:
        assert torch.equal(views[key], tensor), key

    missing = tmp_path / "gone" / "opt.bin"  # its folder does not exist: the write fails
    with pytest.raises(OSError, match="gone"):
        _create_state(missing, tensors, tmp_path / "gone.meta", {"nbytes": nbytes})
    assert not (tmp_path / "gone.meta").exists()
    # No partial file; a marker tells the device waiting for the metadata that it won't come.
    assert {p.name for p in tmp_path.iterdir()} == {"opt.bin", "opt.meta", "gone.meta.failed"}
    with pytest.raises(OSError, match=r"gone\.meta will not appear.*No such file"):
        _load(tmp_path / "gone.meta", timeout=60)


def test_a_failed_write_fails_its_reader_at_once(tmp_path: Path) -> None:
    """A carry or saved input whose write failed on one device fails the device waiting
    for it with the writer's error, instead of a wait of READ_TIMEOUT_S."""

    class FullDisk:
        def __reduce__(self) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

    unwritable = tmp_path / "carry-000000003.pt"
    with pytest.raises(OSError, match=r"writing .*carry-000000003\.pt failed: No space"):
        _save(unwritable, {"x": torch.zeros(3), "y": FullDisk()})
    assert not unwritable.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    started = time.monotonic()
    with pytest.raises(OSError, match=r"carry-000000003\.pt will not appear.*No space left"):
        _load(unwritable, timeout=60)
    assert time.monotonic() - started < 5


def test_a_device_keeps_its_mappings_until_a_file_is_replaced(tmp_path: Path) -> None:
    """A device maps a shard's file once and keeps the mapping for the units after; what
    another device writes through its own mapping shows through the kept one, and a file
    replaced since (a new optimizer state layout) is mapped again, never read stale."""
    job = tmp_path / "job-0000"
    job.mkdir()
    path = job / "weights-00.bin"
    first = [("w", torch.arange(6.0).reshape(2, 3))]
    slots, nbytes = file_layout(first)
    create(path, first)
    mappings = Mappings()
    kept = mappings.get(path, nbytes)
    assert mappings.get(path, nbytes) is kept  # no new mapping, no new page faults

    slot_views(map_file(path, nbytes), slots)["w"].add_(10)  # another device's unit
    assert torch.equal(slot_views(kept, slots)["w"], torch.arange(6.0).reshape(2, 3) + 10)

    replaced = [("w", torch.full((2, 3), -1.0))]
    create(path, replaced)  # a new file under the same name
    again = mappings.get(path, nbytes)
    assert again is not kept
    assert torch.equal(slot_views(again, slots)["w"], replaced[0][1])
    assert torch.equal(slot_views(kept, slots)["w"], torch.arange(6.0).reshape(2, 3) + 10)

    other = tmp_path / "job-0001" / "weights-00.bin"
    other.parent.mkdir()
    create(other, first)
    kept_other = mappings.get(other, nbytes)
    mappings.forget(job)  # job 0 finished: its mappings go, job 1's stay
    assert mappings.get(other, nbytes) is kept_other
    assert mappings.get(path, nbytes) is not again


def test_saved_inputs_stay_in_memory_until_the_model_may_move(tmp_path: Path) -> None:
    """A forward unit's saved input stays in the device's memory while the model's next
    unit is queued here; when it isn't, the model may move, so its saved inputs (not other
    models') and its carry go to files that another device can read."""
    import multiprocessing

    here, _ = multiprocessing.Pipe()
    worker = _Worker(here, 0, "cpu", tmp_path, keep_inputs=True)
    for job in (0, 1):
        _job_dir(tmp_path, job).mkdir()
    inputs = {
        (0, 3, 0): {"x": torch.randn(4, 2), "rng": {}, "buffers": []},
        (0, 3, 1): {"x": torch.randn(4, 2), "rng": {}, "buffers": []},
        (1, 0, 0): {"x": torch.randn(4, 2), "rng": {}, "buffers": []},
    }
    worker.inputs = dict(inputs)

    def unit(seq: int) -> Unit:  # job 0, 3 shards: F0 F1 L2 B1 B0 per step
        return Unit(job=0, seq=seq, kind="L", shard=2, epoch=0, step=3, version=3,
                    last_step=False, final=False)  # fmt: skip

    out = {"grad": torch.randn(4, 2), "rng": {}}
    worker.pending.append(unit(18))
    worker._pass_on(unit(17), out)  # its next unit runs here: nothing is written
    assert worker.inputs == inputs
    assert worker.carry is not None and worker.carry[:2] == (0, 18)

    worker.pending.clear()
    worker.carry = None
    worker._pass_on(unit(17), out)  # nothing of job 0 queued here: it may move
    worker.io.shutdown(wait=True)
    assert [f.exception() for _, f in worker.writes] == [None, None, None]
    assert set(worker.inputs) == {(1, 0, 0)}
    for job, version, shard in [(0, 3, 0), (0, 3, 1)]:
        saved = _load(_saved_path(tmp_path, job, version, shard), timeout=1)
        assert torch.equal(saved["x"], inputs[(job, version, shard)]["x"])
    assert torch.equal(_load(_carry_path(tmp_path, 0, 18), timeout=1)["grad"], out["grad"])
    assert not _saved_path(tmp_path, 1, 0, 0).exists()


def test_the_gantt_chart_has_a_row_per_device_and_its_legend_below(tmp_path: Path) -> None:
    import matplotlib.image

    timeline = [
        UnitRecord(
            d, (s + d) % 8, s, "F", 0, start=0.1 * s, end=0.1 * s + 0.08, compute=0.07, wait=0.01
        )
        for d in range(2)
        for s in range(10)
    ]
    picture = plot_gantt(timeline, tmp_path / "gantt.png", names=[f"m{i}" for i in range(8)])
    height, width, _ = matplotlib.image.imread(picture).shape
    assert width == 11 * 110
    # 2 device rows and 2 legend rows (8 models and the hatch key, 5 per row).
    assert height == round((1.2 + 0.5 * 2 + 0.3 * 2) * 110)
    with pytest.raises(ValueError, match="timeline is empty"):
        plot_gantt([], tmp_path / "empty.png")


def test_layers_working_on_their_input_in_place_start_shards_safely() -> None:
    """A shard whose first layer works on its input in place (dropout with inplace=True)
    must neither change the input its forward unit saved for the backward unit nor write
    into the leaf the backward unit differentiates."""

    def model(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Linear(6, 16), nn.Tanh()]
        for _ in range(3):
            layers += [nn.Linear(16, 16), nn.Dropout(0.3, inplace=True)]
        layers[-1] = nn.Linear(16, 3)
        return nn.Sequential(*layers)

    reference = alone(job("in-place", model(0), SGD), model(0))
    result = train_many([job("in-place", model(0), SGD)], devices=2, budget_bytes=20_000)
    assert result.failures == {}
    starts = [model(0)[start] for start, _ in result.shards[0][1:]]
    assert any(getattr(layer, "inplace", False) for layer in starts), result.shards
    got = result.results[0]
    assert got is not None
    assert_same(got.model, reference.model, 1e-6)
    assert [h["loss"] for h in got.history] == pytest.approx(
        [h["loss"] for h in reference.history], abs=1e-6
    )
