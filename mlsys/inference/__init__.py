"""Inference engines: streaming batch scoring (batch.py) and incremental (Krypton-style) CNN
inference over video frames (incremental.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlsys.lazy import lazy_getattr

if TYPE_CHECKING:
    from mlsys.inference.incremental import FrameStats, IncrementalCNN, IncrementalStats

_MODULES = {
    "FrameStats": "mlsys.inference.incremental",
    "IncrementalCNN": "mlsys.inference.incremental",
    "IncrementalStats": "mlsys.inference.incremental",
}


# Loaded on first use, so importing a sibling module does not import torch.
__getattr__ = lazy_getattr(__name__, _MODULES)


__all__ = ["FrameStats", "IncrementalCNN", "IncrementalStats"]
