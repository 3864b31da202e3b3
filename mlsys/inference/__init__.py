"""Inference engines: streaming batch scoring (batch.py) and incremental (Krypton-style) CNN
inference over video frames (incremental.py)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsys.inference.incremental import FrameStats, IncrementalCNN, IncrementalStats

_MODULES = {
    "FrameStats": "mlsys.inference.incremental",
    "IncrementalCNN": "mlsys.inference.incremental",
    "IncrementalStats": "mlsys.inference.incremental",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so importing a sibling module does not import torch.
    try:
        module = _MODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


__all__ = ["FrameStats", "IncrementalCNN", "IncrementalStats"]
