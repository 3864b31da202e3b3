"""The trainer contract on the plain strategy: weighted loss, batches, checkpoints, errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mlsys.training import Callback, fit
from mlsys.training.fit import collate, epoch_batches, latest_checkpoint, weighted_mean

SGD = functools.partial(torch.optim.SGD, lr=0.1)
CE = nn.CrossEntropyLoss(reduction="none")


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def dataset(n: int = 40, weighted: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if weighted:
        return TensorDataset(x, y, torch.rand(n, generator=g) + 0.1)
    return TensorDataset(x, y)


def reference_training(
    model: nn.Sequential, data: TensorDataset, batch_size: int, epochs: int
) -> nn.Sequential:
    """The same training written out by hand: weighted mean over each whole mini-batch."""
    optimizer = SGD(model.parameters())
    tensors = data.tensors
    for _ in range(epochs):
        for start in range(0, len(data), batch_size):
            x, y = tensors[0][start : start + batch_size], tensors[1][start : start + batch_size]
            w = tensors[2][start : start + batch_size] if len(tensors) == 3 else torch.ones(len(y))
            optimizer.zero_grad()
            ((CE(model(x), y) * w).sum() / w.sum()).backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("weighted", [False, True])
def test_plain_fit_equals_hand_written_training(weighted: bool) -> None:
    data = dataset(weighted=weighted)
    result = fit(mlp(), data, optimizer=SGD, loss=CE, epochs=3, batch_size=16)
    expected = reference_training(mlp(), data, 16, 3)
    for got, want in zip(result.model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert all(r["examples"] == 40 for r in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_weights_change_the_result() -> None:
    plain = fit(mlp(), dataset(), optimizer=SGD, loss=CE, epochs=1, batch_size=16).model
    weighted = fit(mlp(), dataset(weighted=True), optimizer=SGD, loss=CE, batch_size=16).model
    assert not torch.allclose(plain[0].weight, weighted[0].weight)


def test_epoch_batches_are_deterministic_per_seed_and_epoch() -> None:
    a = epoch_batches(10, 4, epoch=0, seed=3, shuffle=True, drop_last=False)
    b = epoch_batches(10, 4, epoch=0, seed=3, shuffle=True, drop_last=False)
    c = epoch_batches(10, 4, epoch=1, seed=3, shuffle=True, drop_last=False)
    assert [t.tolist() for t in a] == [t.tolist() for t in b] != [t.tolist() for t in c]
    assert sorted(torch.cat(a).tolist()) == list(range(10))
    assert [len(t) for t in a] == [4, 4, 2]
    dropped = epoch_batches(10, 4, epoch=0, seed=3, shuffle=False, drop_last=True)
    assert [t.tolist() for t in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_collate_names_the_bad_item() -> None:
    class Bad(Dataset[Any]):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> Any:
            return (torch.zeros(2), 0, -1.0 if i == 2 else 1.0)

    with pytest.raises(ValueError, match=r"data\[2\] has weight -1.0"):
        collate(Bad(), torch.arange(3))
    with pytest.raises(ValueError, match=r"data\[0\] must be \(x, y\) or \(x, y, weight\)"):
        collate([torch.zeros(2)], torch.arange(1))  # type: ignore[arg-type]


def test_collate_of_a_tensor_dataset_equals_item_by_item() -> None:
    """TensorDatasets are gathered a tensor at a time; a subclass (which may change
    __getitem__) goes item by item. Both give the same batch and the same errors."""

    class ItemByItem(TensorDataset):
        pass

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    w = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
    indices = torch.tensor([7, 0, 19, 7, 3])
    for tensors in ((x, y), (x, y, w), (x, y, w.reshape(20, 1))):
        fast, slow = (
            collate(TensorDataset(*tensors), indices),
            collate(ItemByItem(*tensors), indices),
        )
        for a, b in zip(fast, slow, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    w_bad = w.clone()
    w_bad[3] = float("nan")
    for kind in (TensorDataset, ItemByItem):
        with pytest.raises(ValueError, match=r"data\[3\] has weight nan"):
            collate(kind(x, y, w_bad), indices)


def test_loss_must_be_per_example() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        weighted_mean(torch.tensor(1.0), torch.ones(4))
    with pytest.raises(ValueError, match="reduction='none'"):
        fit(mlp(), dataset(), optimizer=SGD, loss=nn.CrossEntropyLoss(), batch_size=8)


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_train_begin(self, *, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.events.append(("begin", (epochs, steps_per_epoch, start_epoch)))

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.events.append(("step", (epoch, step)))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.events.append(("epoch", record["epoch"]))

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.events.append(("checkpoint", (path.name, epoch)))

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        self.events.append(("end", len(history)))


def test_checkpoint_every_epoch_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data = dataset(weighted=True)
    adam = functools.partial(torch.optim.Adam, lr=0.01)
    full = fit(mlp(), data, optimizer=adam, loss=CE, epochs=4, batch_size=16, shuffle=True)

    recorder = Recorder()
    fit(
        mlp(), data, optimizer=adam, loss=CE, epochs=2, batch_size=16, shuffle=True,
        checkpoint_dir=tmp_path, callbacks=[recorder],
    )  # fmt: skip
    assert ("checkpoint", ("epoch-0001.pt", 1)) in recorder.events
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0001.pt"

    resumed_events = Recorder()
    resumed = fit(
        mlp(seed=99), data, optimizer=adam, loss=CE, epochs=4, batch_size=16, shuffle=True,
        checkpoint_dir=tmp_path, resume=True, callbacks=[resumed_events],
    )  # fmt: skip
    assert resumed_events.events[0] == ("begin", (4, 3, 2))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    for got, want in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_callbacks_see_every_step_and_epoch() -> None:
    recorder = Recorder()
    fit(mlp(), dataset(), optimizer=SGD, loss=CE, epochs=2, batch_size=16, callbacks=[recorder])
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["begin"] + ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch", "end"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
        ({"batch_size": 64, "drop_last": True}, "batch_size 64 is larger than the 40"),
        ({"resume": True}, "resume=True needs a checkpoint_dir"),
        ({"strategy": "gpipe"}, "got 'gpipe'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"optimizer": SGD, "loss": CE, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(mlp(), dataset(), **args)


def test_model_must_be_sequential() -> None:
    with pytest.raises(TypeError, match=r"nn\.Sequential .* got Linear"):
        fit(nn.Linear(6, 3), dataset(), optimizer=SGD, loss=CE)  # type: ignore[arg-type]


def test_nan_loss_stops_with_where_it_happened() -> None:
    data = TensorDataset(torch.full((8, 6), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        fit(mlp(), data, optimizer=SGD, loss=CE, batch_size=4)
