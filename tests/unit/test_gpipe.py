"""GPipe: equals plain training, forwards callbacks, checkpoints and resumes, runs the
schedule it documents, recomputes dropout exactly, and fails fast on bad input or a dead
stage process.

Stage processes take seconds to start (an interpreter and torch each), so the equivalence
grid runs on one long-lived group of workers per stage count."""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.training import Callback, fit
from mlsys.training.fit import load_checkpoint, weighted_mean
from mlsys.training.gpipe import GPipe, GPipeWorkers, StageError, StageModule, _MiniBatchLoss
from mlsys.training.schedule import (
    clock_table,
    format_table,
    load_trace,
    measured_bubble,
    stage_order,
    theoretical_bubble,
)

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
ADAM = functools.partial(torch.optim.Adam, lr=0.01)
CE = nn.CrossEntropyLoss(reduction="none")
BATCH = 16


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """Seven layers; with ``dropout`` a Dropout follows each hidden activation."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 16), nn.Tanh()]
    for _ in range(2):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    layers.append(nn.Linear(16, 3))
    if dropout:
        for index in (6, 4, 2):
            layers.insert(index, nn.Dropout(dropout))
    return nn.Sequential(*layers)


def dataset(n: int = 48, weighted: bool = False, weight_at: dict[int, float] | None = None) -> Any:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if not weighted and not weight_at:
        return TensorDataset(x, y)
    w = torch.rand(n, generator=g) + 0.1 if weighted else torch.ones(n)
    for index, value in (weight_at or {}).items():
        w[index] = value
    return TensorDataset(x, y, w)


@pytest.fixture(scope="module")
def workers() -> Iterator[Any]:
    """``workers(k)``: a group of k stage processes shared by the module's tests (started
    again if a test closed it)."""
    groups: dict[int, GPipeWorkers] = {}

    def get(stages: int) -> GPipeWorkers:
        if stages not in groups or groups[stages].closed:
            groups[stages] = GPipeWorkers(stages)
        return groups[stages]

    yield get
    for group in groups.values():
        group.close()


@functools.cache
def plain(weighted: bool, epochs: int = 2) -> tuple[dict[str, torch.Tensor], list[float]]:
    result = fit(
        mlp(), dataset(weighted=weighted), optimizer=SGD, loss=CE, epochs=epochs, batch_size=BATCH
    )
    return result.model.state_dict(), [r["loss"] for r in result.history]


def assert_same_parameters(got: nn.Module, want: dict[str, torch.Tensor], atol: float) -> None:
    state = got.state_dict()
    assert state.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=atol, msg=key)


GRID = [
    pytest.param(k, m, schedule, checkpoint, weighted, id=f"K{k}-M{m}-{schedule}-{checkpoint}-{w}")
    for k in (2, 3)
    for m in (1, 4, 8)
    for schedule in ("gpipe", "1f1b")
    if not (schedule == "1f1b" and m < k)  # refused: see test_bad_arguments_are_named
    for checkpoint in ("never", "always")
    for weighted, w in ((False, "unweighted"), (True, "weighted"))
]


@pytest.mark.parametrize(("k", "m", "schedule", "checkpoint", "weighted"), GRID)
def test_gpipe_equals_plain_training(
    workers: Any, k: int, m: int, schedule: Any, checkpoint: Any, weighted: bool
) -> None:
    strategy = GPipe(
        k, m, balance="size", schedule=schedule, checkpoint=checkpoint, workers=workers(k)
    )
    result = fit(
        mlp(),
        dataset(weighted=weighted),
        strategy=strategy,
        optimizer=SGD,
        loss=CE,
        epochs=2,
        batch_size=BATCH,
    )
    want_state, want_losses = plain(weighted)
    assert_same_parameters(result.model, want_state, atol=1e-5)
    assert [r["loss"] for r in result.history] == pytest.approx(want_losses, abs=1e-6)
    assert [(r["epoch"], r["examples"]) for r in result.history] == [(0, 48), (1, 48)]


def test_micro_batch_losses_add_up_to_the_weighted_mean_of_the_mini_batch() -> None:
    """Each micro-batch's loss is its share of sum(w*l)/sum(w) over the whole mini-batch,
    so the schedule's sum of micro-batch losses (and of their gradients) is the mini-batch
    loss; the mean of per-micro-batch weighted means would be another number."""
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    w = torch.rand(16, generator=g) + 0.1
    loss = _MiniBatchLoss(CE)
    loss.set_batch(y, w)
    rows = torch.arange(16).tensor_split(4)
    total = sum(loss(out[r], r) for r in rows)
    torch.testing.assert_close(total, weighted_mean(CE(out, y), w))
    per_micro = sum(weighted_mean(CE(out[r], y[r]), w[r]) for r in rows) / 4
    assert not torch.isclose(per_micro, total)  # type: ignore[arg-type]


def test_last_smaller_batch_and_time_balance(workers: Any) -> None:
    """40 examples in batches of 16 leave a last batch of 8: it runs as 4 micro-batches of
    2 on a second stage/schedule pair; the balance comes from profiled times."""
    data = dataset(n=40, weighted=True)
    result = fit(
        mlp(),
        data,
        strategy=GPipe(2, 4, workers=workers(2)),
        optimizer=SGD,
        loss=CE,
        epochs=2,
        batch_size=BATCH,
    )
    want = fit(mlp(), data, optimizer=SGD, loss=CE, epochs=2, batch_size=BATCH)
    assert_same_parameters(result.model, want.model.state_dict(), atol=1e-5)
    assert [r["examples"] for r in result.history] == [40, 40]


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


def test_callbacks_see_what_plain_training_shows(workers: Any, tmp_path: Path) -> None:
    data = dataset(weighted=True)
    seen, expected = Recorder(), Recorder()
    fit(
        mlp(),
        data,
        strategy=GPipe(2, 4, workers=workers(2)),
        optimizer=SGD,
        loss=CE,
        epochs=2,
        batch_size=BATCH,
        checkpoint_dir=tmp_path / "gpipe",
        callbacks=[seen],
    )
    fit(
        mlp(),
        data,
        optimizer=SGD,
        loss=CE,
        epochs=2,
        batch_size=BATCH,
        checkpoint_dir=tmp_path / "plain",
        callbacks=[expected],
    )
    assert seen.events == expected.events
    assert seen.events[-2:] == [("checkpoint", ("epoch-0001.pt", 1)), ("end", 2)]


def test_resume_equals_uninterrupted_training_with_dropout(workers: Any, tmp_path: Path) -> None:
    """Adam, shuffling, weights and dropout: the resumed run draws the same batches and
    dropout masks as the uninterrupted one (each stage seeds its RNG per epoch)."""
    data = dataset(weighted=True)
    strategy = GPipe(
        2, 4, balance=[4, 6], checkpoint="except_last", schedule="1f1b", workers=workers(2)
    )
    args: dict[str, Any] = {"optimizer": ADAM, "loss": CE, "batch_size": BATCH, "shuffle": True}
    full = fit(mlp(dropout=0.2), data, strategy=strategy, epochs=3, **args)
    fit(mlp(dropout=0.2), data, strategy=strategy, epochs=2, checkpoint_dir=tmp_path, **args)

    saved = load_checkpoint(tmp_path / "epoch-0001.pt")
    assert saved["model"].keys() == mlp(dropout=0.2).state_dict().keys()
    assert len(saved["optimizers"]) == 2
    assert saved["strategy"] == "gpipe balance=4,6"

    events = Recorder()
    resumed = fit(
        mlp(seed=99, dropout=0.2),
        data,
        strategy=strategy,
        epochs=3,
        checkpoint_dir=tmp_path,
        resume=True,
        callbacks=[events],
        **args,
    )
    assert events.events[0] == ("begin", (3, 3, 2))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert_same_parameters(resumed.model, full.model.state_dict(), atol=1e-6)

    with pytest.raises(ValueError, match=r"written with 2 stages \(balance \[4, 6\]\)"):
        fit(
            mlp(dropout=0.2),
            data,
            strategy=GPipe(3, 4),
            epochs=3,
            checkpoint_dir=tmp_path,
            resume=True,
            **args,
        )
    with pytest.raises(ValueError, match=r"balance \[4, 6\] but balance=\[5, 5\] was asked"):
        fit(
            mlp(dropout=0.2),
            data,
            strategy=GPipe(2, 4, balance=[5, 5]),
            epochs=3,
            checkpoint_dir=tmp_path,
            resume=True,
            **args,
        )


def test_plain_checkpoints_are_not_resumed_as_gpipe(tmp_path: Path) -> None:
    before = set(multiprocessing.active_children())
    fit(mlp(), dataset(), optimizer=SGD, loss=CE, batch_size=BATCH, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="written by the 'plain' strategy"):
        fit(
            mlp(),
            dataset(),
            strategy=GPipe(2, 4),
            optimizer=SGD,
            loss=CE,
            epochs=2,
            batch_size=BATCH,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    assert set(multiprocessing.active_children()) == before


def test_recomputed_dropout_draws_the_same_mask() -> None:
    """Checkpointing replays the RNG state, so a recomputing stage gets exactly the
    gradients of one that stores its activations (plain training and GPipe draw from
    different streams, so this is the equivalence that holds with dropout)."""
    layers = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Tanh(), nn.Linear(32, 3))
    x = torch.randn(8, 6)
    grads = []
    for recompute in (False, True):
        stage = StageModule(copy.deepcopy(layers), recompute=recompute)
        torch.manual_seed(3)
        stage(x).square().sum().backward()
        grads.append([p.grad for p in stage.parameters()])
    for plain_grad, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain_grad, rtol=0, atol=0)
    torch.manual_seed(4)  # another mask gives other gradients: dropout is really on
    other = StageModule(copy.deepcopy(layers), recompute=True)
    other(x).square().sum().backward()
    assert not torch.allclose(next(other.parameters()).grad, grads[0][0])  # type: ignore[arg-type]


def test_checkpointing_with_dropout_trains_identically(workers: Any) -> None:
    data = dataset(weighted=True)
    results = [
        fit(
            mlp(dropout=0.3),
            data,
            strategy=GPipe(3, 4, balance="size", checkpoint=mode, workers=workers(3)),
            optimizer=SGD,
            loss=CE,
            epochs=2,
            batch_size=BATCH,
        ).model
        for mode in ("never", "always")
    ]
    assert_same_parameters(results[1], results[0].state_dict(), atol=0)


# --- the schedule -----------------------------------------------------------------------------

WRITTEN_TABLES = {
    ("gpipe", 2, 4): """
cycle:  0   1   2   3   4   5   6   7   8   9
stage 0 F0  F1  F2  F3  .   .   B0  B1  B2  B3
stage 1 .   F0  F1  F2  F3  B0  B1  B2  B3  .""",
    ("1f1b", 2, 4): """
cycle:  0   1   2   3   4   5   6   7   8   9
stage 0 F0  F1  .   B0  F2  B1  F3  B2  .   B3
stage 1 .   F0  B0  F1  B1  F2  B2  F3  B3  .""",
    ("gpipe", 3, 2): """
cycle:  0   1   2   3   4   5   6   7
stage 0 F0  F1  .   .   .   .   B0  B1
stage 1 .   F0  F1  .   .   B0  B1  .
stage 2 .   .   F0  F1  B0  B1  .   .""",
    ("1f1b", 3, 4): """
cycle:  0   1   2   3   4   5   6   7   8   9   10  11
stage 0 F0  F1  F2  .   .   B0  F3  B1  .   B2  .   B3
stage 1 .   F0  F1  .   B0  F2  B1  F3  B2  .   B3  .
stage 2 .   .   F0  B0  F1  B1  F2  B2  F3  B3  .   .""",
}


@pytest.mark.parametrize("case", list(WRITTEN_TABLES), ids=lambda c: f"{c[0]}-K{c[1]}-M{c[2]}")
def test_clock_table_matches_the_written_fill_drain_table(case: tuple[Any, int, int]) -> None:
    assert format_table(clock_table(*case)) == WRITTEN_TABLES[case].strip("\n")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_table_bubble_is_the_theoretical_bubble(schedule: Any) -> None:
    for k in range(1, 5):
        for m in range(k if schedule == "1f1b" else 1, 9):
            table = clock_table(schedule, k, m)
            idle = sum(cell == "" for row in table for cell in row) / (k * len(table[0]))
            assert idle == pytest.approx(theoretical_bubble(k, m)), (k, m)


@pytest.mark.parametrize("k", [2, 3])
def test_gpipe_without_receive_prefetch_equals_plain_training(workers: Any, k: int) -> None:
    """prefetch=False is torch's own ScheduleGPipe; the default posts receives ahead."""
    strategy = GPipe(k, 4, balance="size", prefetch=False, workers=workers(k))
    result = fit(mlp(), dataset(weighted=True), strategy=strategy, optimizer=SGD, loss=CE,
                 epochs=2, batch_size=BATCH)  # fmt: skip
    want_state, want_losses = plain(True)
    assert_same_parameters(result.model, want_state, atol=1e-5)
    assert [r["loss"] for r in result.history] == pytest.approx(want_losses, abs=1e-6)


@pytest.mark.parametrize(
    ("k", "m", "schedule", "prefetch"),
    [(2, 4, "gpipe", True), (2, 4, "gpipe", False), (2, 4, "1f1b", True), (3, 4, "1f1b", True)],
)
def test_torch_runs_the_documented_order(
    workers: Any, tmp_path: Path, k: int, m: int, schedule: Any, prefetch: bool
) -> None:
    fit(
        mlp(),
        dataset(n=32),
        strategy=GPipe(
            k,
            m,
            balance="size",
            schedule=schedule,
            trace_dir=tmp_path,
            workers=workers(k),
            prefetch=prefetch,
        ),
        optimizer=SGD,
        loss=CE,
        batch_size=BATCH,
    )
    steps = load_trace(tmp_path)
    assert len(steps) == 2
    for step in steps:
        for s, intervals in enumerate(step):
            assert [(kind, mb) for kind, mb, _, _ in intervals] == stage_order(schedule, k, m, s)
            assert all(a <= b for _, _, a, b in intervals)
        assert 0.0 <= measured_bubble(step) < 1.0


# --- bad input: errors before any process starts --------------------------------------------

BAD = [
    ({"stages": 8, "microbatches": 1}, {}, "stages=8 but the model has 7 layers"),
    ({"stages": 0, "microbatches": 1}, {}, "stages must be a positive integer, got 0"),
    ({"stages": 2, "microbatches": 32}, {}, "microbatches=32 is larger than batch_size=16"),
    ({"stages": 2, "microbatches": 3}, {}, "batch_size=16 does not split into microbatches=3"),
    ({"stages": 2, "microbatches": 8}, {"n": 44}, r"last batch of each epoch holds 12 examples"),
    ({"stages": 2, "microbatches": 1, "balance": [3, 3]}, {}, r"\[3, 3\] sums to 6 but the model"),
    ({"stages": 2, "microbatches": 1, "balance": [7]}, {}, r"\[7\] has 1 entries but stages=2"),
    ({"stages": 2, "microbatches": 1, "balance": "fast"}, {}, 'balance must be "time", "size"'),
    ({"stages": 2, "microbatches": 1, "schedule": "1f1b"}, {}, "needs microbatches >= stages"),
    ({"stages": 2, "microbatches": 1, "schedule": "zb"}, {}, "schedule must be one of"),
    ({"stages": 2, "microbatches": 1, "checkpoint": "often"}, {}, "checkpoint must be one of"),
    ({"stages": 2, "microbatches": 1, "devices": ["cpu"]}, {}, "one device per stage"),
    ({"stages": 2, "microbatches": 1, "devices": ["cuda:0", "cuda:1"]}, {}, "visible CUDA"),
]


@pytest.mark.parametrize(("strategy", "extra", "message"), BAD)
def test_bad_arguments_are_named(
    strategy: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    data, before = dataset(n=extra.get("n", 48)), set(multiprocessing.active_children())
    with pytest.raises(ValueError, match=message):
        fit(mlp(), data, strategy=GPipe(**strategy), optimizer=SGD, loss=CE, batch_size=BATCH)
    assert set(multiprocessing.active_children()) == before


def test_model_must_be_a_sequential() -> None:
    with pytest.raises(
        TypeError, match=r"GPipe splits an nn\.Sequential between layers, got Linear"
    ):
        GPipe(2, 2).check(nn.Linear(6, 3), None, 48)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "balance", "loss", "error", "message"),
    [
        (
            nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(5, 3)),
            [1, 2],
            CE,
            ValueError,
            r"layer 2 \(Linear\) fails on an input of shape \(4, 8\)",
        ),
        (mlp(), "size", nn.CrossEntropyLoss(), ValueError, "reduction='none'"),
        (mlp(), "size", lambda out, y: CE(out, y), TypeError, "must be picklable"),
        (
            nn.Sequential(*([nn.Linear(6, 6)] * 2), nn.Linear(6, 3)),
            [1, 2],
            CE,
            ValueError,
            "tied weights must stay in one stage",
        ),
    ],
    ids=["layers-do-not-chain", "loss-not-per-example", "unpicklable-loss", "tied-weights"],
)
def test_models_that_cannot_be_pipelined_fail_before_any_process(
    model: nn.Sequential, balance: Any, loss: Any, error: type[Exception], message: str
) -> None:
    before = set(multiprocessing.active_children())
    with pytest.raises(error, match=message):
        fit(
            model,
            dataset(),
            strategy=GPipe(2, 4, balance=balance),
            optimizer=SGD,
            loss=loss,
            batch_size=BATCH,
        )
    assert set(multiprocessing.active_children()) == before


# --- a stage process that fails or dies -------------------------------------------------------


def test_a_failing_stage_raises_its_traceback_and_leaves_no_processes() -> None:
    """Item 40 carries a negative weight; only the stage processes ever load it."""
    before = set(multiprocessing.active_children())
    started = time.monotonic()
    with pytest.raises(StageError, match=r"data\[40\] has weight -1.0") as caught:
        fit(
            mlp(),
            dataset(weight_at={40: -1.0}),
            strategy=GPipe(2, 4),
            optimizer=SGD,
            loss=CE,
            batch_size=BATCH,
        )
    assert "Traceback in the stage process" in str(caught.value)
    assert "in collate" in caught.value.child_traceback
    assert time.monotonic() - started < 60
    assert set(multiprocessing.active_children()) == before


def test_a_nan_loss_stops_training_with_where_it_happened() -> None:
    before = set(multiprocessing.active_children())
    data = TensorDataset(torch.full((16, 6), float("nan")), torch.zeros(16, dtype=torch.long))
    with pytest.raises(StageError, match=r"FloatingPointError: loss is nan at epoch 0, step 0"):
        fit(mlp(), data, strategy=GPipe(2, 4), optimizer=SGD, loss=CE, batch_size=BATCH)
    assert set(multiprocessing.active_children()) == before


class KillAtFirstStep(Callback):
    """SIGKILLs a stage process when the first step is reported: mid-training, no
    traceback, the stage's peers blocked in the pipeline."""

    def __init__(self, pid: int) -> None:
        self.pid, self.killed_at = pid, 0.0

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        if not self.killed_at:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()


@pytest.mark.timeout(180)
def test_a_killed_stage_fails_fit_promptly_and_leaves_no_orphans() -> None:
    before = set(multiprocessing.active_children())
    with GPipeWorkers(2) as group:
        pids = [pid for pid in group.pids if pid is not None]
        killer = KillAtFirstStep(pids[1])
        with pytest.raises(StageError, match=r"stage 1 of 2 failed: .* killed by SIGKILL"):
            fit(
                mlp(),
                dataset(),
                strategy=GPipe(2, 4, workers=group),
                optimizer=SGD,
                loss=CE,
                epochs=10_000,
                batch_size=BATCH,
                callbacks=[killer],
            )
        failed_at = time.monotonic()
    assert 0 < failed_at - killer.killed_at < 5
    assert set(multiprocessing.active_children()) == before
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with pytest.raises(ValueError, match="these GPipeWorkers are closed"):
        fit(mlp(), dataset(), strategy=GPipe(2, 4, workers=group), optimizer=SGD, loss=CE)


# --- torchrun: the same code, one process per stage started by torchrun ---------------------

TORCHRUN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpipe_torchrun.py"
"""GPipe under torchrun against plain training; also run across hosts (tests/hosts)."""


def test_torchrun_runs_the_same_code_one_stage_per_rank(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(TORCHRUN_SCRIPT),
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert all(r["diff"] < 1e-5 and r["epochs"] == 2 for r in ranks)
    assert [r["steps_seen"] for r in ranks] == [0, 6]  # callbacks run on the last rank
