"""Tasks of `train_digits` and `video_infer`: the digit CNN and incremental video inference."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from mlsys.data import write_parquet_bytes
from mlsys.data.s3 import put_bytes
from mlsys.data.video import DigitVideo, digit_training_set
from mlsys.inference.incremental import IncrementalCNN
from mlsys.models.cnn import build_digit_cnn
from mlsys.models.pyfunc import load_digit_cnn, log_digit_cnn
from mlsys.models.text import probabilities_frame
from mlsys.settings import Settings
from mlsys.training import fit
from tasks.retry import outage_tolerant, tolerant
from tasks.tracking import TrackedRun, mark_model_version
from tasks.train import TrackingCallback


@dataclass(frozen=True)
class DigitModel:
    """The trained CNN with the settings that rebuild it and its held-out accuracy."""

    model: nn.Sequential
    config: dict[str, Any]
    test_accuracy: float


@task(name="train-digit-cnn", cache_policy=NO_CACHE)
def train_digit_cnn(
    run: TrackedRun,
    *,
    n_images: int,
    epochs: int,
    batch_size: int,
    lr: float,
    channels: list[int],
    seed: int,
) -> DigitModel:
    """Train ``build_digit_cnn`` on digits at random places over the video background;
    score it on digit images kept for videos (never trained on)."""
    config: dict[str, Any] = {"channels": channels, "n_classes": 10, "in_channels": 1}
    train = digit_training_set(n=n_images, seed=seed, glyphs="train")
    test = digit_training_set(n=500, seed=seed + 1, glyphs="video")
    torch.manual_seed(seed)
    result = fit(
        build_digit_cnn(**config),
        train.dataset(),
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
        loss=nn.CrossEntropyLoss(reduction="none"),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle=True,
        callbacks=[TrackingCallback(run, label="digit CNN")],
    )
    model = result.model.eval()
    with torch.inference_mode():
        accuracy = float((model(test.images).argmax(dim=1) == test.labels).float().mean())
    client = run.client()
    client.log_metric(run.run_id, "test_accuracy", accuracy)
    client.log_metric(run.run_id, "train_images", n_images)
    get_run_logger().info("digit CNN: test accuracy %.3f on 500 unseen digit images", accuracy)
    return DigitModel(model=model, config=config, test_accuracy=accuracy)


@task(name="register-digit-cnn", cache_policy=NO_CACHE)
@outage_tolerant
def register_digit_cnn(
    run: TrackedRun, trained: DigitModel, *, name: str, alias: str, example: torch.Tensor
) -> str:
    """Log the CNN as a pyfunc (frames in, labels out), register it, set ``alias``."""
    info = log_digit_cnn(
        trained.model,
        trained.config,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        example=example,
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    mark_model_version(
        run, name, version, alias=alias, scores={"test_accuracy": trained.test_accuracy}
    )
    get_run_logger().info("registered %s version %s as @%s", name, version, alias)
    return version


@task(name="load-digit-cnn", cache_policy=NO_CACHE)
@outage_tolerant
def load_cnn(settings: Settings, name: str, alias: str) -> tuple[nn.Sequential, str]:
    """The registered CNN as an ``nn.Sequential`` (incremental inference needs its layers)
    and the version ``alias`` points at."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = tolerant(MlflowClient(settings.tracking_uri))
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ValueError(
            f"model {name!r} has no version with alias {alias!r}; run the train_digits flow"
        ) from exc
    uri = f"models:/{name}/{version.version}"
    return load_digit_cnn(uri, settings.tracking_uri), str(version.version)


@dataclass(frozen=True)
class VideoResult:
    """Per-frame predictions and what incremental inference saved."""

    frames: pd.DataFrame
    metrics: dict[str, float]


@task(name="incremental-inference", cache_policy=NO_CACHE)
def infer_video(
    model: nn.Sequential,
    video: DigitVideo,
    *,
    threshold: float,
    max_recompute_fraction: float,
    compare_full: bool,
) -> VideoResult:
    """Every frame through :class:`IncrementalCNN`; with ``compare_full`` also through
    the whole model, to time it and check the outputs agree."""
    inc = IncrementalCNN(model, threshold=threshold, max_recompute_fraction=max_recompute_fraction)
    began = time.perf_counter()
    logits, stats = inc.infer_many(video.frames)
    incremental_s = time.perf_counter() - began
    proba = torch.softmax(logits, dim=1).double().numpy()
    frames = probabilities_frame(proba)
    frames.insert(0, "frame", range(len(frames)))
    frames["true_label"] = int(video.labels[0]) if len(video.labels) == 1 else -1
    frames["mode"] = [s.mode for s in stats]
    frames["recomputed_fraction"] = [s.recomputed_fraction for s in stats]
    frames["seconds"] = [s.seconds for s in stats]
    total = inc.stats
    metrics: dict[str, float] = {
        "frames": float(total.frames),
        "frames_incremental": float(total.incremental),
        "frames_full": float(total.full + total.primes),
        "frames_unchanged": float(total.cached),
        "mean_recomputed_fraction": total.mean_recomputed_fraction,
        "work_saved": 1.0 - total.mean_recomputed_fraction,
        "incremental_seconds": incremental_s,
    }
    if len(video.labels) == 1:
        metrics["frame_accuracy"] = float((frames["label"] == frames["true_label"]).mean())
    if compare_full:
        with torch.inference_mode():
            began = time.perf_counter()
            full = torch.cat([model(video.frames[i : i + 1]) for i in range(len(video.frames))])
            metrics["full_seconds"] = time.perf_counter() - began
        metrics["max_abs_diff"] = float((full - logits).abs().max())
        metrics["speedup"] = metrics["full_seconds"] / max(incremental_s, 1e-9)
        diff = metrics["max_abs_diff"]
        if diff > 1e-4:
            raise RuntimeError(f"incremental inference differs from the full model by {diff:.2e}")
    get_run_logger().info(
        "%d frames: %.1f%% of the trunk work saved, %s",
        len(frames),
        100 * metrics["work_saved"],
        f"{metrics['speedup']:.2f}x faster than full inference" if compare_full else "",
    )
    return VideoResult(frames=frames, metrics=metrics)


@task(name="track-video", cache_policy=NO_CACHE)
@outage_tolerant
def track_video(
    run: TrackedRun, settings: Settings, result: VideoResult, key: str, video: DigitVideo
) -> str:
    """Predictions to S3; metrics, the per-frame work plot and a strip of frames to MLflow."""
    uri = settings.s3_uri(key)
    put_bytes(settings.s3_client(), uri, write_parquet_bytes(result.frames))
    client = run.client()
    for name, value in result.metrics.items():
        client.log_metric(run.run_id, name, value)
    for frame, fraction in zip(
        result.frames["frame"].tolist(), result.frames["recomputed_fraction"].tolist(), strict=True
    ):
        client.log_metric(run.run_id, "recomputed_fraction", float(fraction), step=int(frame))
    client.set_tag(run.run_id, "mlsys.predictions", uri)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), gridspec_kw={"height_ratios": [1, 2]})
    shown = min(8, len(video.frames))
    step = max(1, len(video.frames) // shown)
    strip = torch.cat([video.frames[i, 0] for i in range(0, step * shown, step)], dim=1)
    top.imshow(strip.numpy(), cmap="gray")
    top.set_axis_off()
    top.set_title(f"every {step}th frame")
    bottom.plot(result.frames["frame"], result.frames["recomputed_fraction"], marker=".")
    bottom.set_xlabel("frame")
    bottom.set_ylabel("trunk work recomputed")
    bottom.set_ylim(0, 1.05)
    bottom.set_title(f"work saved: {100 * result.metrics['work_saved']:.1f}%")
    fig.tight_layout()
    client.log_figure(run.run_id, fig, "video/recomputed_fraction.png")
    plt.close(fig)
    client.log_dict(
        run.run_id, {**result.metrics, "video": asdict_video(video)}, "video/summary.json"
    )
    return uri


def asdict_video(video: DigitVideo) -> dict[str, Any]:
    return {
        "frames": int(video.frames.shape[0]),
        "size": list(video.frames.shape[1:]),
        "labels": video.labels.tolist(),
        "digit_size": video.digit_size,
    }
