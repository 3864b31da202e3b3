"""Tests for mlsys.inference.incremental: exactness against the full model, the cost model,
stats and errors; and the CNN builders it runs on (mlsys.models.cnn)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mlsys.inference import FrameStats, IncrementalCNN, IncrementalStats
from mlsys.inference.incremental import _cut_regions, _merge_overlapping, _span
from mlsys.models.cnn import VGG11_WIDTHS, build_digit_cnn, build_vgg_trunk

TOLERANCE = 1e-5

# The model itself (torch's Conv2d, not the incremental path) warns about "same" padding
# with an even kernel.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    torch.manual_seed(0)


def _randomize_batch_norm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode batch norm is not
    the identity."""
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(layer.weight, 0.5, 1.5)
            nn.init.uniform_(layer.bias, -0.2, 0.2)
    return model.eval()


# Each builder gives (model, input shape C x H x W).
def _strided_mixed() -> tuple[nn.Module, tuple[int, int, int]]:
    # kernel 5 stride 2 pad 2, max pool with padding, avg pool leaving padding out of its
    # divisor, a 1x1 stride-2 conv that skips every other row.
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Conv2d(8, 4, 1, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ), (3, 61, 61)


def _big_kernels() -> tuple[nn.Module, tuple[int, int, int]]:
    # kernel 7 stride 2 pad 3, unpadded kernel 3, avg pools with padding counted, pad 2,
    # a head with its own ReLU and dropout.
    return nn.Sequential(
        nn.Conv2d(2, 6, 7, stride=2, padding=3),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 5, 3, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.Flatten(),
        nn.Linear(5 * 11 * 11, 8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    ), (2, 40, 40)


def _odd_shapes() -> tuple[nn.Module, tuple[int, int, int]]:
    # Rectangular frame and kernel, "same" padding with an even kernel (asymmetric pad),
    # dilation, groups, a stride that drops trailing rows; no head (returns feature maps).
    return nn.Sequential(
        nn.Conv2d(3, 6, 1),
        nn.ReLU(),
        nn.Conv2d(6, 6, (3, 5), stride=(2, 1), padding=(1, 2)),
        nn.Conv2d(6, 6, 4, padding="same"),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3),
        nn.MaxPool2d(2, stride=3),
        nn.LeakyReLU(0.1),
    ), (3, 33, 47)


def _leading_pointwise() -> tuple[nn.Module, tuple[int, int, int]]:
    # Batch norm and an in-place ReLU before the first convolution; nested Sequentials.
    return nn.Sequential(
        nn.BatchNorm2d(3),
        nn.ReLU(inplace=True),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.ReLU(inplace=True),
        nn.Linear(16, 2),
    ), (3, 20, 20)


def _digit_cnn() -> tuple[nn.Module, tuple[int, int, int]]:
    return build_digit_cnn(), (1, 64, 64)


def _small_vgg() -> tuple[nn.Module, tuple[int, int, int]]:
    return build_vgg_trunk([w // 16 for w in VGG11_WIDTHS], image_size=64), (3, 64, 64)


ARCHITECTURES: dict[str, Callable[[], tuple[nn.Module, tuple[int, int, int]]]] = {
    "strided_mixed": _strided_mixed,
    "big_kernels": _big_kernels,
    "odd_shapes": _odd_shapes,
    "leading_pointwise": _leading_pointwise,
    "digit_cnn": _digit_cnn,
    "small_vgg": _small_vgg,
}


def _model(name: str) -> tuple[nn.Sequential, tuple[int, int, int]]:
    model, shape = ARCHITECTURES[name]()
    assert isinstance(model, nn.Sequential)
    _randomize_batch_norm(model)
    return model, shape


def _full(model: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(frame.unsqueeze(0).clone())


def _change(frame: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = box
    new = frame.clone()
    new[:, top:bottom, left:right] = torch.randn(frame.shape[0], bottom - top, right - left)
    return new


def _random_box(h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
    top, bottom = sorted(rng.sample(range(h + 1), 2))
    left, right = sorted(rng.sample(range(w + 1), 2))
    return top, bottom, left, right


def _assert_close(inc: IncrementalCNN, model: nn.Module, frame: torch.Tensor) -> FrameStats:
    out = inc.infer(frame)
    expected = _full(model, frame)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= TOLERANCE
    assert inc.last_stats is not None
    return inc.last_stats


# --- receptive-field arithmetic ----------------------------------------------------------


def test_span_matches_module_docstring_examples() -> None:
    assert _span(10, 12, 3, 1, 1, 100) == (9, 13)  # a 3x3 same conv grows a span by one
    assert _span(9, 13, 2, 2, 0, 100) == (4, 7)  # a 2x2 pool halves it, rounding out
    assert _span(0, 1, 3, 1, 1, 100) == (0, 2)  # clamped at the border
    assert _span(3, 4, 1, 2, 0, 10) == (2, 2)  # row 3 is skipped by a 1x1 stride-2 window


def test_span_is_exactly_the_windows_that_meet_the_change() -> None:
    for kernel in (1, 2, 3, 5):
        for stride in (1, 2, 3):
            for pad in range(kernel // 2 + 1):
                n_in = 17
                n_out = (n_in + 2 * pad - kernel) // stride + 1
                for a in range(n_in):
                    for b in range(a + 1, n_in + 1):
                        hits = [
                            o
                            for o in range(n_out)
                            if o * stride - pad < b and o * stride - pad + kernel > a
                        ]
                        first, last = _span(a, b, kernel, stride, pad, n_out)
                        assert list(range(first, last)) == hits


# --- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_random_change_boxes_match_the_full_model(name: str) -> None:
    model, shape = _model(name)
    rng = random.Random(name)
    inc = IncrementalCNN(model, max_recompute_fraction=1.0)  # never fall back
    frame = torch.randn(shape)
    prime_out = inc.prime(frame)
    assert torch.equal(prime_out, _full(model, frame))
    for step in range(10):  # consecutive frames, each against the one before
        for _ in range(1 + step % 3):  # one, two or three changed boxes
            frame = _change(frame, _random_box(shape[1], shape[2], rng))
        stats = _assert_close(inc, model, frame)
        assert stats.mode == "incremental"
        assert 0.0 <= stats.recomputed_fraction <= 1.0


@pytest.mark.parametrize("name", ["strided_mixed", "odd_shapes", "small_vgg"])
def test_changes_at_edges_and_corners_match_the_full_model(name: str) -> None:
    model, (c, h, w) = _model(name)
    inc = IncrementalCNN(model, max_recompute_fraction=1.0)
    frame = torch.randn(c, h, w)
    inc.prime(frame)
    boxes = [
        (0, 1, 0, 1),  # top-left pixel
        (h - 1, h, w - 1, w),  # bottom-right pixel
        (0, 3, w - 4, w),  # top-right corner
        (h - 5, h, 0, 2),  # bottom-left corner
        (0, h, 0, 1),  # the whole left column
        (h - 1, h, 0, w),  # the whole bottom row
        (0, 2, 0, w),  # the top two rows
        (h // 2, h // 2 + 1, w // 2, w // 2 + 1),  # one pixel in the middle
    ]
    for box in boxes:
        frame = _change(frame, box)
        stats = _assert_close(inc, model, frame)
        assert stats.changed_box == box


def test_small_change_recomputes_little_and_is_exact() -> None:
    model, shape = _model("small_vgg")
    inc = IncrementalCNN(model)
    frame = torch.randn(shape)
    inc.prime(frame)
    stats = _assert_close(inc, model, _change(frame, (30, 34, 30, 34)))
    assert stats.mode == "incremental"
    assert not stats.fell_back
    assert 0 < stats.recomputed_fraction < 0.5
    assert stats.recomputed_fraction == stats.planned_fraction


def test_change_only_in_rows_a_strided_layer_skips_recomputes_nothing_after_it() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, stride=2), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    inc = IncrementalCNN(model)
    frame = torch.randn(1, 10, 10)
    before = inc.prime(frame)
    changed = _change(frame, (3, 4, 0, 10))  # row 3 is never read by a stride-2 1x1 conv
    out = inc.infer(changed)
    assert inc.last_stats is not None
    assert inc.last_stats.mode == "incremental"
    assert inc.last_stats.recomputed_fraction == 0.0
    assert torch.equal(out, before)
    assert torch.equal(out, _full(model, changed))
    _assert_close(inc, model, _change(changed, (4, 5, 2, 3)))  # and the next frame is exact


def test_separate_changes_are_recomputed_apart_when_cheaper() -> None:
    # Wide enough (160 M multiply-adds) that the saving outweighs the per-box overhead.
    model = _randomize_batch_norm(build_vgg_trunk([w // 2 for w in VGG11_WIDTHS], image_size=64))
    frame = torch.randn(3, 64, 64)
    changed = _change(_change(frame, (2, 6, 3, 7)), (55, 60, 50, 62))  # two far corners
    split = IncrementalCNN(model, max_regions=4, max_recompute_fraction=1.0)
    single = IncrementalCNN(model, max_recompute_fraction=1.0)  # one bounding box
    split.prime(frame)
    single.prime(frame)
    stats = _assert_close(split, model, changed)
    one = _assert_close(single, model, changed)
    assert stats.regions == ((2, 6, 3, 7), (55, 60, 50, 62))
    assert one.regions == ((2, 60, 3, 62),) and one.changed_box == stats.changed_box
    assert stats.mode == one.mode == "incremental"
    assert stats.recomputed_fraction < one.recomputed_fraction / 1.5


def test_xy_cuts_split_at_the_widest_unchanged_band() -> None:
    pixels = torch.zeros(20, 30, dtype=torch.bool)
    pixels[1:4, 2:5] = True  # top-left
    pixels[2:5, 20:25] = True  # top-right: 15 free columns from the first
    pixels[15:18, 3:6] = True  # bottom-left: 10 free rows from the first
    box = (1, 18, 2, 25)
    assert _cut_regions(pixels.numpy(), box, 1) == [box]
    assert _cut_regions(pixels.numpy(), box, 2) == [(1, 18, 2, 6), (2, 5, 20, 25)]
    assert _cut_regions(pixels.numpy(), box, 4) == [(1, 4, 2, 5), (15, 18, 3, 6), (2, 5, 20, 25)]


def test_overlapping_boxes_merge() -> None:
    assert _merge_overlapping([(0, 4, 0, 4), (10, 12, 10, 12)]) == [
        (0, 4, 0, 4),
        (10, 12, 10, 12),
    ]
    assert _merge_overlapping([(0, 4, 0, 4), (3, 6, 3, 6), (20, 22, 0, 2)]) == [
        (0, 6, 0, 6),
        (20, 22, 0, 2),
    ]
    # Side by side: their bounding box costs no more than the two apart.
    assert _merge_overlapping([(0, 4, 0, 4), (0, 4, 4, 8)]) == [(0, 4, 0, 8)]


# --- identical frames, fallback, threshold ---------------------------------------------------


def test_identical_frame_recomputes_nothing() -> None:
    model, shape = _model("digit_cnn")
    inc = IncrementalCNN(model)
    frame = torch.randn(shape)
    first = inc.prime(frame)
    out = inc.infer(frame.clone())
    assert torch.equal(out, first)
    assert inc.last_stats == FrameStats(
        mode="cached",
        recomputed_fraction=0.0,
        planned_fraction=0.0,
        fell_back=False,
        changed_box=None,
        regions=(),
        seconds=inc.last_stats.seconds,
    )
    assert not out.is_inference()
    out.add_(1.0)  # the caller's tensor is its own: the cache is untouched
    assert torch.equal(inc.infer(frame), first)


def test_full_frame_change_falls_back_to_a_full_pass() -> None:
    model, shape = _model("strided_mixed")
    inc = IncrementalCNN(model, max_recompute_fraction=0.5)
    inc.prime(torch.randn(shape))
    new = torch.randn(shape)
    stats = _assert_close(inc, model, new)
    assert stats.mode == "full"
    assert stats.fell_back
    assert stats.recomputed_fraction == 1.0
    assert stats.planned_fraction > 0.5
    assert stats.changed_box == (0, shape[1], 0, shape[2])
    # The fallback frame is the new base: a small change after it is incremental and exact.
    stats = _assert_close(inc, model, _change(new, (5, 8, 5, 8)))
    assert stats.mode == "incremental"


def test_max_recompute_fraction_zero_always_falls_back_on_change() -> None:
    model, shape = _model("digit_cnn")
    inc = IncrementalCNN(model, max_recompute_fraction=0.0)
    frame = torch.randn(shape)
    inc.prime(frame)
    assert _assert_close(inc, model, _change(frame, (1, 2, 1, 2))).fell_back


def test_threshold_ignores_small_changes_and_catches_large_ones() -> None:
    model, shape = _model("digit_cnn")
    inc = IncrementalCNN(model, threshold=0.1)
    frame = torch.randn(shape)
    base = inc.prime(frame)
    noisy = frame + 0.05 * torch.rand(shape)
    assert torch.equal(inc.infer(noisy), base)
    assert inc.last_stats is not None and inc.last_stats.mode == "cached"
    moved = noisy.clone()
    moved[:, 10:14, 20:24] += 1.0
    inc.infer(moved)
    assert inc.last_stats.mode == "incremental"
    assert inc.last_stats.changed_box == (10, 14, 20, 24)


# --- batches of frames, stats ----------------------------------------------------------------


def test_infer_many_equals_the_model_on_the_whole_video() -> None:
    from mlsys.data.video import moving_digits

    model, _ = _model("digit_cnn")
    video = moving_digits(n_frames=12, digits=1, seed=4).frames
    inc = IncrementalCNN(model)
    outputs, stats = inc.infer_many(video)  # the first frame primes
    with torch.inference_mode():
        expected = model(video)
    assert outputs.shape == expected.shape == (12, 10)
    assert (outputs - expected).abs().max().item() <= TOLERANCE
    assert stats[0].mode == "prime"
    assert {s.mode for s in stats[1:]} <= {"incremental", "full", "cached"}
    assert any(s.mode == "incremental" for s in stats)
    # A second call continues from the last frame, one after the other.
    again, stats = inc.infer_many(video[:3])
    assert stats[0].mode != "prime"
    assert (again - expected[:3]).abs().max().item() <= TOLERANCE


def test_infer_many_needs_a_batch_of_frames() -> None:
    model, shape = _model("digit_cnn")
    with pytest.raises(ValueError, match=r"N x C x H x W tensor, got \(1, 64, 64\)"):
        IncrementalCNN(model).infer_many(torch.randn(shape))
    with pytest.raises(ValueError, match=r"got \(0, 1, 64, 64\)"):
        IncrementalCNN(model).infer_many(torch.randn(0, *shape))


def test_stats_add_up_over_calls() -> None:
    model, shape = _model("strided_mixed")
    inc = IncrementalCNN(model)
    frame = torch.randn(shape)
    inc.prime(frame)
    inc.infer(frame)
    small = inc.infer(_change(frame, (2, 4, 2, 4)))
    inc.infer(torch.randn(shape))
    assert inc.last_stats is not None
    assert inc.stats.frames == 4
    assert (inc.stats.primes, inc.stats.cached, inc.stats.incremental, inc.stats.full) == (
        1,
        1,
        1,
        1,
    )
    assert small.shape == (1, 5)
    fractions = [1.0, 0.0, inc.stats.recomputed_work - 2.0, 1.0]
    assert 0 < fractions[2] < 0.5
    assert inc.stats.mean_recomputed_fraction == pytest.approx(sum(fractions) / 4)
    inc.reset_stats()
    assert inc.stats == IncrementalStats()


# --- frame shapes ----------------------------------------------------------------------------


def test_a_c_h_w_frame_is_a_batch_of_one() -> None:
    model, shape = _model("strided_mixed")
    inc = IncrementalCNN(model)
    frame = torch.randn(shape)
    assert inc.prime(frame).shape == (1, 5)
    assert inc.infer(frame.unsqueeze(0)).shape == (1, 5)  # 1 x C x H x W is the same frame


def test_frame_of_another_shape_is_an_error_naming_both_shapes() -> None:
    model, _ = _model("digit_cnn")
    inc = IncrementalCNN(model)
    inc.prime(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(1, 1, 48, 64\).*\(1, 1, 64, 64\)"):
        inc.infer(torch.randn(1, 1, 48, 64))
    with pytest.raises(ValueError, match=r"\(2, 64, 64\).*\(1, 1, 64, 64\)"):
        inc.infer(torch.randn(2, 64, 64))
    with pytest.raises(ValueError, match="float64"):
        inc.infer(torch.randn(1, 1, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"infer_many"):
        inc.infer(torch.randn(2, 1, 64, 64))


def test_prime_again_takes_a_new_size() -> None:
    model, _ = _model("digit_cnn")
    inc = IncrementalCNN(model)
    inc.prime(torch.randn(1, 64, 64))
    frame = torch.randn(1, 32, 48)
    inc.prime(frame)
    _assert_close(inc, model, _change(frame, (0, 5, 40, 48)))


def test_infer_before_prime_is_an_error() -> None:
    model, shape = _model("digit_cnn")
    with pytest.raises(RuntimeError, match=r"call prime\(frame\) first"):
        IncrementalCNN(model).infer(torch.randn(shape))


def test_frames_are_not_modified() -> None:
    model, shape = _model("leading_pointwise")  # starts with an in-place ReLU
    inc = IncrementalCNN(model)
    frame = torch.randn(shape)
    kept = frame.clone()
    inc.prime(frame)
    changed = _change(frame, (1, 3, 1, 3))
    kept_changed = changed.clone()
    _assert_close(inc, model, changed)
    assert torch.equal(frame, kept)
    assert torch.equal(changed, kept_changed)


# --- unsupported models -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Upsample(scale_factor=2)], r"layer 2 \(Upsample\)"),
        ([nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")], r"layer 0 \(Conv2d\).*reflect"),
        ([nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True)], r"layer 1 \(MaxPool2d\).*ceil"),
        ([nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Conv1d(1, 1, 1)], r"layer 2 \(Conv1d\).*head"),
        ([nn.Sequential(nn.Conv2d(1, 2, 3), nn.LPPool2d(2, 2))], r"layer 0\.1 \(LPPool2d\)"),
        ([nn.Flatten(), nn.Linear(4, 2)], "no spatial layers"),
    ],
)
def test_unsupported_layers_are_named(layers: list[nn.Module], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IncrementalCNN(nn.Sequential(*layers))


def test_model_must_be_sequential() -> None:
    with pytest.raises(TypeError, match="Conv2d"):
        IncrementalCNN(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -0.1}, "threshold must be a finite number >= 0, got -0.1"),
        ({"max_recompute_fraction": 1.5}, r"max_recompute_fraction must be in \[0, 1\], got 1.5"),
        ({"max_regions": 0}, "max_regions must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IncrementalCNN(nn.Sequential(nn.Conv2d(1, 1, 1)), **kwargs)  # type: ignore[arg-type]


def test_batch_norm_in_training_mode_is_an_error() -> None:
    model = build_digit_cnn().train()
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\) is in training mode"):
        IncrementalCNN(model)
    inc = IncrementalCNN(model.eval())
    frame = torch.randn(1, 64, 64)
    inc.prime(frame)
    model.train()  # switched after construction: caught at the next call
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\) is in training mode"):
        inc.infer(frame)
    model.eval()
    assert inc.infer(frame).shape == (1, 10)


def test_dropout_in_training_mode_is_an_error() -> None:
    model = build_digit_cnn().eval()
    model[-2].train()  # the head's dropout
    with pytest.raises(ValueError, match=r"layer 14 \(Dropout\)"):
        IncrementalCNN(model)


# --- the builders --------------------------------------------------------------------------


def test_builders_give_the_documented_shapes() -> None:
    digit = build_digit_cnn().eval()
    assert digit(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    vgg = build_vgg_trunk([8] * 8, image_size=64).eval()
    assert sum(isinstance(m, nn.Conv2d) for m in vgg) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg) == 5
    assert vgg(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    trunk = build_vgg_trunk([4] * 8, n_classes=None, image_size=64, batch_norm=False).eval()
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, 4, 2, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_vgg_trunk([64] * 7), "widths must have 8 entries, got 7"),
        (lambda: build_vgg_trunk(image_size=100), r"multiple of 32 \(five 2x2 pools\), got 100"),
        (lambda: build_digit_cnn(channels=(16, 0)), r"channels must be positive ints"),
        (lambda: build_digit_cnn(n_classes=1), "n_classes must be an int >= 2, got 1"),
    ],
)
def test_builders_name_bad_arguments(call: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
