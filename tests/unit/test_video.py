"""Tests for mlsys.data.video: moving-digit videos and the matching training set."""

from __future__ import annotations

import pytest
import torch

from mlsys.data.video import (
    background,
    digit_glyphs,
    digit_training_set,
    moving_digits,
)


def test_same_seed_same_video_other_seed_other_video() -> None:
    a = moving_digits(n_frames=10, digits=2, seed=7)
    b = moving_digits(n_frames=10, digits=2, seed=7)
    c = moving_digits(n_frames=10, digits=2, seed=8)
    assert torch.equal(a.frames, b.frames)
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.frames, c.frames)


def test_video_shapes_and_ranges() -> None:
    video = moving_digits(n_frames=6, size=48, digits=3, digit_size=12, seed=1)
    assert video.frames.shape == (6, 1, 48, 48)
    assert video.frames.dtype == torch.float32
    assert video.labels.shape == (3,)
    assert video.labels.dtype == torch.int64
    assert video.positions.shape == (6, 3, 2)
    assert float(video.frames.min()) >= 0.0 and float(video.frames.max()) <= 1.0
    assert set(video.labels.tolist()) <= set(range(10))


def test_digits_move_stay_inside_and_bounce() -> None:
    video = moving_digits(n_frames=200, size=40, digits=2, digit_size=16, max_speed=3, seed=2)
    pos = video.positions
    assert int(pos.min()) >= 0 and int(pos.max()) <= 40 - 16
    steps = (pos[1:] - pos[:-1]).abs()
    assert bool((steps.sum(dim=2) > 0).all())  # every digit moves between every two frames
    assert int(steps.max()) <= 4  # at most max_speed, rounded
    # Bouncing: the direction of motion along some axis reverses at some point.
    signs = torch.sign(pos[1:] - pos[:-1])
    assert bool((signs[1:] * signs[:-1] < 0).any())


def test_only_pixels_near_the_digits_change_between_frames() -> None:
    video = moving_digits(n_frames=8, digits=1, digit_size=16, seed=3)
    for t in range(1, 8):
        changed = (video.frames[t, 0] != video.frames[t - 1, 0]).nonzero()
        assert len(changed) > 0
        (top0, left0), (top1, left1) = video.positions[t - 1, 0], video.positions[t, 0]
        rows, cols = changed[:, 0], changed[:, 1]
        assert int(rows.min()) >= min(top0, top1) and int(rows.max()) < max(top0, top1) + 16
        assert int(cols.min()) >= min(left0, left1) and int(cols.max()) < max(left0, left1) + 16


def test_background_is_fixed_and_dim() -> None:
    first = background(32, 40, seed=5)
    assert first.shape == (32, 40)
    assert torch.equal(first, background(32, 40, seed=5))
    assert not torch.equal(first, background(32, 40, seed=6))
    assert float(first.min()) >= 0.0 and float(first.max()) <= 0.3
    video = moving_digits(n_frames=3, size=32, digits=1, seed=0, background_seed=5)
    ground = background(32, 32, seed=5)
    assert bool((video.frames[:, 0] >= ground).all())  # digits are drawn as a maximum
    assert torch.equal(video.frames[0, 0, :, :1], ground[:, :1]) or torch.equal(
        video.frames[0, 0, :, -1:], ground[:, -1:]
    )  # a 16-wide digit in a 32-wide frame leaves the left or right column untouched


def test_training_set_shows_one_labelled_digit_over_the_background() -> None:
    train = digit_training_set(n=50, size=40, digit_size=16, seed=1)
    assert train.images.shape == (50, 1, 40, 40)
    assert train.labels.shape == (50,)
    assert train.positions.shape == (50, 2)
    assert set(train.labels.tolist()) <= set(range(10))
    ground = background(40, 40)
    for i in range(50):
        top, left = train.positions[i].tolist()
        outside = train.images[i, 0].clone()
        outside[top : top + 16, left : left + 16] = ground[top : top + 16, left : left + 16]
        assert torch.equal(outside, ground)  # only the digit's square differs
        assert float(train.images[i, 0, top : top + 16, left : left + 16].max()) > 0.5
    x, y = train.dataset()[3]
    assert torch.equal(x, train.images[3]) and int(y) == int(train.labels[3])
    assert torch.equal(train.images, digit_training_set(n=50, size=40, seed=1).images)


def test_glyph_splits_are_disjoint_and_cover_all() -> None:
    all_images, all_labels = digit_glyphs(8)
    train, _ = digit_glyphs(8, "train")
    video, _ = digit_glyphs(8, "video")
    assert len(train) + len(video) == len(all_images) == len(all_labels) == 1797
    assert torch.equal(video, all_images[::5])
    big, _ = digit_glyphs(24, "video")
    assert big.shape == (360, 24, 24)
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: moving_digits(n_frames=0), "n_frames must be a positive int, got 0"),
        (lambda: moving_digits(digits=0), "digits must be a positive int, got 0"),
        (lambda: moving_digits(size=12, digit_size=16), r"size must be an int >= digit_size"),
        (lambda: moving_digits(max_speed=0.5), r"max_speed must be in \[1, 49\]"),
        (lambda: digit_training_set(n=-1), "n must be a positive int, got -1"),
        (lambda: digit_glyphs(4), "size must be an int >= 8, got 4"),
        (lambda: digit_glyphs(16, "test"), "glyphs must be 'train', 'video' or 'all'"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
