"""GPipe under torchrun, one stage per rank, against plain training of the same model.

Run by torchrun (on one host or several); each rank writes ``<folder>/rank-<r>.json``:
the largest parameter difference from plain training, the epochs trained, the optimizer
steps its callbacks saw (only the last rank's run) and the host it ran on
(``MLSYS_TEST_HOST``, set by the test).

Usage: ``torchrun ... tests/scripts/gpipe_torchrun.py FOLDER``
"""

import functools
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.training import Callback, fit
from mlsys.training.gpipe import GPipe


class Count(Callback):
    steps = 0

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        Count.steps += 1


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def main(folder: str) -> None:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(48, 6, generator=g),
        torch.randint(0, 3, (48,), generator=g),
        torch.rand(48, generator=g) + 0.1,
    )
    args = dict(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        loss=nn.CrossEntropyLoss(reduction="none"),
        epochs=2,
        batch_size=16,
    )
    piped = fit(mlp(), data, strategy=GPipe(2, 4, schedule="1f1b"), callbacks=[Count()], **args)
    plain = fit(mlp(), data, **args)
    pairs = zip(piped.model.parameters(), plain.model.parameters(), strict=True)
    diff = max((a - b).abs().max().item() for a, b in pairs)
    result = {
        "diff": diff,
        "epochs": len(piped.history),
        "steps_seen": Count.steps,
        "host": os.environ.get("MLSYS_TEST_HOST"),
    }
    with open(f"{folder}/rank-{dist.get_rank()}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
