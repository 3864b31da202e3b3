"""Incremental (Krypton-style) CNN inference against running the model on every frame.

The baseline is what a user would otherwise call: ``model(frame)`` under
``torch.inference_mode``, one frame at a time, with the same threads. Workloads:

(a) VGG-11 (``build_vgg_trunk``: full widths 64-128-256-256-512-512-512-512 unless
    ``--width-divisor``; batch norm; a Flatten + Linear head) on 1 x 3 x 224 x 224 frames,
    each the previous one with one ``--patch`` x ``--patch`` square at a random place
    redrawn with new random pixels (the 3x target is for this row). Then the same with two
    squares per frame, once with one bounding box (``max_regions=1``) and once with
    separate boxes (``--max-regions``).
(b) The moving-digits video (``mlsys.data.video``, 64 x 64, one channel) through the small
    digit CNN (``build_digit_cnn``), trained for ``--train-epochs`` on the matching training
    set so its predictions mean something (accuracy on the one-digit video is printed);
    with one digit, and with two (bounding box, then separate boxes).

Frames are timed interleaved (full, then each incremental engine, frame after frame) so all
see the same machine load; the first ``--warmup`` frames are left out (they include oneDNN's
kernel generation for new region shapes). Times are per-frame medians; the ratio is the
full median over the incremental median. Exactness: the largest absolute difference between
the incremental and the full outputs over all frames, and on VGG's 512 x 7 x 7 feature maps
(an IncrementalCNN on the trunk alone, over the first frames, not timed).

    .venv/bin/python benchmarks/incremental.py [--frames 40] [--threads 1,2] [--width-divisor 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsys.data.video import digit_training_set, moving_digits
from mlsys.inference import FrameStats, IncrementalCNN
from mlsys.models.cnn import VGG11_WIDTHS, build_digit_cnn, build_vgg_trunk
from mlsys.training import fit

RESULTS = Path(__file__).resolve().parent / "results" / "incremental.json"
TARGET_RATIO = 3.0  # VGG, 16x16 patch: incremental at least 3x faster per frame


def patch_frames(n: int, size: int, patch: int, patches: int, seed: int) -> torch.Tensor:
    """``n + 1`` frames: a random base frame, then each the one before with ``patches``
    random ``patch`` x ``patch`` squares redrawn at random places."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.empty(n + 1, 3, size, size)
    frames[0] = torch.rand(3, size, size, generator=generator)
    for i in range(1, n + 1):
        frames[i] = frames[i - 1]
        for _ in range(patches):
            top, left = torch.randint(0, size - patch + 1, (2,), generator=generator).tolist()
            frames[i, :, top : top + patch, left : left + patch] = torch.rand(
                3, patch, patch, generator=generator
            )
    return frames


def race(
    model: nn.Module,
    frames: torch.Tensor,
    warmup: int,
    max_fraction: float,
    region_counts: tuple[int, ...] = (1,),
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Time ``model(frame)`` and, for each of ``region_counts``, an ``IncrementalCNN`` with
    that ``max_regions``, frame after frame (interleaved); the first frame primes. Returns
    one row per region count and the full model's outputs."""
    incs = [
        IncrementalCNN(model, max_recompute_fraction=max_fraction, max_regions=n)
        for n in region_counts
    ]
    full_s: list[float] = []
    inc_s: list[list[float]] = [[] for _ in incs]
    stats: list[list[FrameStats]] = [[] for _ in incs]
    max_diff = [0.0 for _ in incs]
    full_outputs = []
    with torch.inference_mode():
        for inc in incs:
            inc.prime(frames[0:1])
        for i in range(1, len(frames)):
            frame = frames[i : i + 1]
            start = time.perf_counter()
            expected = model(frame)
            full_s.append(time.perf_counter() - start)
            full_outputs.append(expected)
            for k, inc in enumerate(incs):
                start = time.perf_counter()
                out = inc.infer(frame)
                inc_s[k].append(time.perf_counter() - start)
                assert inc.last_stats is not None
                stats[k].append(inc.last_stats)
                max_diff[k] = max(max_diff[k], float((out - expected).abs().max()))
    outputs = torch.cat(full_outputs)
    full = full_s[warmup:]
    full_ms = statistics.median(full) * 1e3
    rows = []
    for k, n in enumerate(region_counts):
        times, kept = inc_s[k][warmup:], stats[k][warmup:]
        inc_ms = statistics.median(times) * 1e3
        rows.append(
            {
                "max_regions": n,
                "frames_timed": len(times),
                "full_median_ms": round(full_ms, 3),
                "incremental_median_ms": round(inc_ms, 3),
                "ratio": round(full_ms / inc_ms, 2),
                "ratio_of_totals": round(sum(full) / sum(times), 2),
                "mean_recomputed_fraction": round(
                    statistics.mean(s.recomputed_fraction for s in kept), 4
                ),
                "incremental_frames": sum(s.mode == "incremental" for s in kept),
                "full_fallbacks": sum(s.fell_back for s in kept),
                "cached_frames": sum(s.mode == "cached" for s in kept),
                "max_abs_diff": max_diff[k],
                "max_abs_output": float(outputs.abs().max()),
            }
        )
    return rows, outputs


def max_diff_over(model: nn.Module, frames: torch.Tensor) -> float:
    """Largest |incremental - full| of ``model`` over ``frames`` (not timed)."""
    inc = IncrementalCNN(model, max_recompute_fraction=1.0)
    with torch.inference_mode():
        outputs, _ = inc.infer_many(frames)
        return float((outputs - model(frames)).abs().max())


def vgg(args: argparse.Namespace, patches: int) -> list[dict[str, Any]]:
    widths = [max(1, w // args.width_divisor) for w in VGG11_WIDTHS]
    torch.manual_seed(args.seed)
    model = build_vgg_trunk(widths, image_size=args.image_size).eval()
    n = args.frames + args.warmup
    frames = patch_frames(n, args.image_size, args.patch, patches, args.seed)
    counts = (1,) if patches == 1 else (1, args.max_regions)
    rows, _ = race(model, frames, args.warmup, args.max_recompute_fraction, counts)
    trunk = nn.Sequential(*list(model)[:-2])  # the same layers without Flatten + Linear
    features_diff = max_diff_over(trunk, frames[: min(len(frames), 8)])
    name = f"VGG-11/{args.width_divisor} {args.image_size}px, {patches}x{args.patch}px"
    for row in rows:
        row.update(workload=name, patches=patches, max_abs_diff_features=features_diff)
    return rows


def digit_model(args: argparse.Namespace) -> tuple[nn.Module, float]:
    torch.manual_seed(args.seed)
    model = build_digit_cnn()
    start = time.perf_counter()
    if args.train_epochs > 0:
        train = digit_training_set(n=args.train_examples, seed=args.seed)
        fit(
            model,
            train.dataset(),
            optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
            loss=nn.CrossEntropyLoss(reduction="none"),
            epochs=args.train_epochs,
            batch_size=64,
            shuffle=True,
            seed=args.seed,
        )
    return model.eval(), time.perf_counter() - start


def video(args: argparse.Namespace, model: nn.Module, digits: int) -> list[dict[str, Any]]:
    clip = moving_digits(n_frames=args.video_frames + args.warmup + 1, digits=digits, seed=1)
    counts = (1,) if digits == 1 else (1, args.max_regions)
    rows, outputs = race(model, clip.frames, args.warmup, args.max_recompute_fraction, counts)
    name = f"digit video 64px, {digits} digit{'s' if digits > 1 else ''}"
    for row in rows:
        row.update(workload=name, digits=digits)
        if digits == 1:  # the classifier names the one digit in the frame
            predictions = outputs[1 + args.warmup :].argmax(dim=1)
            row["accuracy"] = round(float((predictions == clip.labels[0]).float().mean()), 4)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="VGG frames timed per method")
    parser.add_argument(
        "--warmup", type=int, default=5, help="frames run first and left out of the timing"
    )
    parser.add_argument("--patch", type=int, default=16, help="side of the changed square")
    parser.add_argument("--image-size", type=int, default=224, help="side of the VGG frames")
    parser.add_argument(
        "--width-divisor",
        type=int,
        default=1,
        help="divide VGG-11's convolution widths by this (1: 64 ... 512)",
    )
    parser.add_argument(
        "--threads",
        default="1,2",
        help="comma-separated torch intra-op thread counts; every workload runs with each, "
        "both methods with the same count",
    )
    parser.add_argument(
        "--max-regions",
        type=int,
        default=4,
        help="max_regions of the second IncrementalCNN on the two-change workloads "
        "(the first uses 1, a single bounding box)",
    )
    parser.add_argument(
        "--max-recompute-fraction",
        type=float,
        default=0.5,
        help="IncrementalCNN falls back to a full pass above this fraction of the trunk",
    )
    parser.add_argument("--video-frames", type=int, default=100, help="digit-video frames timed")
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=3,
        help="epochs to train the digit CNN before timing (0: random weights)",
    )
    parser.add_argument("--train-examples", type=int, default=3000, help="digit training-set size")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, frames and videos")
    args = parser.parse_args()
    if min(args.frames, args.video_frames) < 1 or args.warmup < 0:
        parser.error("--frames and --video-frames must be >= 1 and --warmup >= 0")
    if not 1 <= args.patch <= args.image_size:
        parser.error(f"--patch must be in [1, --image-size], got {args.patch}")
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated ints, got {args.threads!r}")
    if not thread_counts or min(thread_counts) < 1:
        parser.error(f"--threads must be positive, got {args.threads!r}")

    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            # Other work on the machine slows both methods (and two threads more than one:
            # they wait on each other); keep the load with the figures.
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "max_recompute_fraction": args.max_recompute_fraction,
        "vgg_widths": [max(1, w // args.width_divisor) for w in VGG11_WIDTHS],
        "target_ratio": TARGET_RATIO,
    }
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, load "
        f"{figures['machine']['load_average_1min_at_start']}; VGG-11 widths "
        f"{figures['vgg_widths']}"
    )
    torch.set_num_threads(max(thread_counts))
    model, train_s = digit_model(args)
    figures["digit_cnn"] = {
        "train_epochs": args.train_epochs,
        "train_examples": args.train_examples,
        "train_seconds": round(train_s, 1),
    }
    header = (
        f"{'threads':>7}  {'workload':<30} {'regions':>7} {'full ms':>8} {'incr ms':>8} "
        f"{'ratio':>6} {'recomp':>7} {'fallbk':>6} {'max |diff|':>10}"
    )
    print(header)
    rows: list[dict[str, Any]] = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        batch = vgg(args, patches=1)
        batch[0]["target_met"] = batch[0]["ratio"] >= TARGET_RATIO
        batch += vgg(args, patches=2)
        batch += video(args, model, digits=1)
        batch += video(args, model, digits=2)
        for row in batch:
            row["threads"] = torch.get_num_threads()
            accuracy = f"  accuracy {row['accuracy']:.2f}" if "accuracy" in row else ""
            print(
                f"{threads:>7}  {row['workload']:<30} {row['max_regions']:>7} "
                f"{row['full_median_ms']:>8.2f} {row['incremental_median_ms']:>8.2f} "
                f"{row['ratio']:>5.1f}x {row['mean_recomputed_fraction']:>7.3f} "
                f"{row['full_fallbacks']:>6} {row['max_abs_diff']:>10.1e}{accuracy}"
            )
        rows += batch
    figures["rows"] = rows

    for row in rows:
        if "target_met" in row:
            print(
                f"VGG, one {args.patch}px patch, {row['threads']} thread(s): {row['ratio']:.1f}x "
                f"faster per frame (medians; target {TARGET_RATIO}x: "
                f"{'met' if row['target_met'] else 'NOT met'}), ratio of totals "
                f"{row['ratio_of_totals']:.1f}x; max |diff| output {row['max_abs_diff']:.1e} "
                f"(outputs up to {row['max_abs_output']:.2f}), feature maps "
                f"{row['max_abs_diff_features']:.1e}"
            )
    figures["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
