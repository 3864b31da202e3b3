"""Moving-digit videos over a static background, made from scikit-learn's bundled digits.

In the style of Moving MNIST (Srivastava, Mansimov and Salakhutdinov, "Unsupervised
Learning of Video Representations using LSTMs", ICML 2015), but with the 8x8 digits that
ship inside scikit-learn (``sklearn.datasets.load_digits``: 1,797 images, no download),
upscaled. Digits move with constant velocity and bounce off the frame's edges over a fixed
textured background, so consecutive frames differ only around the digits: the workload of
incremental inference (``mlsys.inference.incremental``). A matching training set (one digit
at a random place over the same background) trains a classifier for those frames.

The digit images are split once: every fifth image (360) is for videos, the rest (1,437)
for training sets, so a classifier is scored on digits it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = [
    "DigitImages",
    "DigitVideo",
    "Glyphs",
    "background",
    "digit_glyphs",
    "digit_training_set",
    "moving_digits",
]

Glyphs = Literal["train", "video", "all"]
"""Which digit images to draw from: ``train`` (1,437), ``video`` (every fifth, 360) or all."""

_SPLIT_EVERY = 5


@dataclass(frozen=True)
class DigitVideo:
    """A video of moving digits.

    Attributes:
        frames: ``(T, 1, H, W)`` float32 in [0, 1].
        labels: ``(digits,)`` int64, the class of each digit (the same in every frame).
        positions: ``(T, digits, 2)`` int64, each digit's top-left ``(row, col)`` per frame.
        digit_size: the side of a digit's square, in pixels.
    """

    frames: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    digit_size: int


@dataclass(frozen=True)
class DigitImages:
    """Frames that each show one digit at a random place.

    Attributes:
        images: ``(N, 1, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 digit classes.
        positions: ``(N, 2)`` int64 top-left ``(row, col)`` of each digit.
    """

    images: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor

    def dataset(self) -> TensorDataset:
        """The ``(image, label)`` pairs as a dataset for ``mlsys.training.fit``."""
        return TensorDataset(self.images, self.labels)


@lru_cache(maxsize=8)
def _glyphs(size: int, glyphs: Glyphs) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    if glyphs != "all":
        in_video = torch.arange(len(labels)) % _SPLIT_EVERY == 0
        keep = in_video if glyphs == "video" else ~in_video
        images, labels = images[keep], labels[keep]
    if size != 8:
        images = F.interpolate(images[:, None], size=(size, size), mode="bilinear")[:, 0]
    return images.clamp_(0.0, 1.0).contiguous(), labels


def digit_glyphs(size: int = 16, glyphs: Glyphs = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digit images scaled to ``size x size`` (bilinear), in [0, 1].

    Returns ``(images (N, size, size) float32, labels (N,) int64)``; ``glyphs`` picks the
    split (see :data:`Glyphs`).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if glyphs not in ("train", "video", "all"):
        raise ValueError(f"glyphs must be 'train', 'video' or 'all', got {glyphs!r}")
    images, labels = _glyphs(size, glyphs)
    return images.clone(), labels.clone()


def background(height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed texture, ``(height, width)`` float32 in [0, 0.3]: a diagonal gradient plus
    smoothed noise, the same for the same ``seed``. Digits (up to 1) stand out against it."""
    if min(height, width) < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    gradient = 0.5 * (rows + cols)
    noise = torch.from_numpy(rng.random((1, 1, height, width), dtype=np.float32))
    smooth = F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    texture = 0.15 * torch.from_numpy(gradient) + 0.15 * smooth
    return texture.clamp_(0.0, 0.3)


def _check_frame_args(size: int, digit_size: int) -> None:
    if isinstance(digit_size, bool) or not isinstance(digit_size, int) or digit_size < 8:
        raise ValueError(f"digit_size must be an int >= 8, got {digit_size!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < digit_size:
        raise ValueError(f"size must be an int >= digit_size ({digit_size}), got {size!r}")


def moving_digits(
    n_frames: int = 32,
    size: int = 64,
    digits: int = 2,
    digit_size: int = 16,
    max_speed: float = 3.0,
    seed: int = 0,
    background_seed: int = 0,
    glyphs: Glyphs = "video",
) -> DigitVideo:
    """A ``size x size`` video of ``digits`` digits moving and bouncing over a background.

    Usage::

        video = moving_digits(n_frames=100, digits=1, seed=3)
        video.frames.shape        # (100, 1, 64, 64)
        video.labels              # tensor([7])

    Each digit starts at a random place with a random direction and a speed drawn from
    ``[1, max_speed]`` pixels per frame; it moves in a straight line and reflects off the
    frame's edges, and is drawn at its rounded position. A pixel is the maximum of the
    background and the digits over it. The same arguments give the same video.
    """
    _check_frame_args(size, digit_size)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive int, got {digits!r}")
    if not 1.0 <= max_speed <= size - digit_size + 1:
        raise ValueError(
            f"max_speed must be in [1, {size - digit_size + 1}] pixels per frame, got {max_speed!r}"
        )
    images, classes = digit_glyphs(digit_size, glyphs)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(classes), size=digits, replace=False)
    limit = float(size - digit_size)
    position = rng.uniform(0.0, limit, size=(digits, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=digits)
    speed = rng.uniform(1.0, max_speed, size=digits)
    velocity = np.stack([np.sin(angle), np.cos(angle)], axis=1) * speed[:, None]
    base = background(size, size, background_seed)
    frames = base.expand(n_frames, 1, size, size).clone()
    positions = np.empty((n_frames, digits, 2), dtype=np.int64)
    for t in range(n_frames):
        positions[t] = np.rint(position).astype(np.int64)
        for d in range(digits):
            top, left = positions[t, d]
            patch = frames[t, 0, top : top + digit_size, left : left + digit_size]
            torch.maximum(patch, images[chosen[d]], out=patch)
        position += velocity
        # Reflect off the edges: a digit past an edge comes back by as much, moving away.
        low, high = position < 0, position > limit
        position[low] = -position[low]
        position[high] = 2 * limit - position[high]
        velocity[low | high] *= -1
        np.clip(position, 0.0, limit, out=position)
    return DigitVideo(
        frames=frames,
        labels=classes[torch.from_numpy(chosen)],
        positions=torch.from_numpy(positions),
        digit_size=digit_size,
    )


def digit_training_set(
    n: int = 2000,
    size: int = 64,
    digit_size: int = 16,
    seed: int = 0,
    background_seed: int = 0,
    glyphs: Glyphs = "train",
) -> DigitImages:
    """``n`` frames like those of :func:`moving_digits` with one digit each, at a uniformly
    random place over the same background, labelled with the digit's class.

    Usage::

        train = digit_training_set(n=3000)
        result = fit(build_digit_cnn(), train.dataset(), optimizer=..., loss=..., epochs=3)
    """
    _check_frame_args(size, digit_size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    images, classes = digit_glyphs(digit_size, glyphs)
    rng = np.random.default_rng(seed)
    chosen = torch.from_numpy(rng.integers(0, len(classes), size=n))
    positions = torch.from_numpy(rng.integers(0, size - digit_size + 1, size=(n, 2)))
    out = background(size, size, background_seed).expand(n, 1, size, size).clone()
    for i in range(n):
        top, left = int(positions[i, 0]), int(positions[i, 1])
        patch = out[i, 0, top : top + digit_size, left : left + digit_size]
        torch.maximum(patch, images[chosen[i]], out=patch)
    return DigitImages(images=out, labels=classes[chosen], positions=positions)
