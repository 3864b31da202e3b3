"""Flows `train_digits` and `video_infer`: a digit CNN for moving-digit videos, and
Krypton-style incremental inference over such a video."""

from __future__ import annotations

from prefect import flow

from mlsys.data.video import digit_training_set, moving_digits
from tasks.tracking import TrackedFlow
from tasks.video import infer_video, load_cnn, register_digit_cnn, track_video, train_digit_cnn


@flow(name="train_digits", log_prints=True)
def train_digits(
    n_images: int = 3000,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 0.003,
    channels: list[int] | None = None,
    seed: int = 0,
    model_name: str = "digit-cnn",
    alias: str = "champion",
) -> str:
    """Train the digit CNN on 64x64 frames of one scikit-learn digit at a random place over
    the video background, score it on digit images kept for videos, and register it.

    Args:
        n_images: Training frames.
        epochs: Passes over them.
        batch_size: Frames per optimizer step.
        lr: Adam learning rate.
        channels: Output channels of the conv blocks (each conv 3x3, batch norm, ReLU,
            2x2 max pool). Empty: [16, 32, 64].
        seed: Seed of the data and the initialization.
        model_name: Registered model name in MLflow.
        alias: Alias set on the new version.

    Returns:
        The registered version.
    """
    tracked = TrackedFlow("train-digits-summary")
    channels = channels or [16, 32, 64]
    params = {
        "n_images": n_images,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "channels": channels,
        "seed": seed,
        "model_name": model_name,
    }
    with tracked.track(params) as run:
        trained = train_digit_cnn(
            run,
            n_images=n_images,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            channels=channels,
            seed=seed,
        )
        example = digit_training_set(n=2, seed=seed + 2).images
        version = register_digit_cnn(run, trained, name=model_name, alias=alias, example=example)
        tracked.summarize(
            (
                f"# Digit CNN\n\nTest accuracy {trained.test_accuracy:.3f} on 500 unseen digit "
                f"images.  \nModel: `{model_name}` version {version} (@{alias})  \n"
                f"MLflow run: [{run.run_id}]({run.url})\n"
            ),
            description="Digit CNN trained and registered",
        )
    return version


@flow(name="video_infer", log_prints=True)
def video_infer(
    model_name: str = "digit-cnn",
    alias: str = "champion",
    n_frames: int = 120,
    digits: int = 1,
    max_speed: float = 2.0,
    seed: int = 0,
    threshold: float = 0.0,
    max_recompute_fraction: float = 0.5,
    compare_full: bool = True,
    video: str | None = None,
) -> str:
    """Label every frame of a moving-digit video with the registered digit CNN, by
    incremental inference: the first frame runs in full and its activations are kept;
    each later frame recomputes only the region its changed pixels reach.

    Writes per-frame predictions (label, probabilities, mode, fraction of the trunk
    recomputed, seconds) to s3://<bucket>/predictions/video/<video>.parquet and logs the
    work saved, frame accuracy and, with compare_full, the speed-up over full inference
    and the largest difference from it.

    Args:
        model_name: Registered digit CNN (from train_digits).
        alias: Alias of the version to use.
        n_frames: Frames in the video.
        digits: Digits moving in it.
        max_speed: Largest digit speed, pixels per frame.
        seed: Seed of the video (digits, start, direction, speed).
        threshold: Pixel changes up to this are ignored; 0 is exact.
        max_recompute_fraction: Above this fraction of a full pass, a frame runs in full
            and becomes the new base frame.
        compare_full: Also run every frame through the whole model, to time it and check
            the outputs agree.
        video: Id of the predictions. Empty: digits<digits>-seed<seed>.

    Returns:
        The s3:// URI of the predictions.
    """
    tracked = TrackedFlow("video-infer-summary")
    settings = tracked.settings
    video = video or f"digits{digits}-seed{seed}"
    params = {
        "model_name": model_name,
        "alias": alias,
        "n_frames": n_frames,
        "digits": digits,
        "max_speed": max_speed,
        "seed": seed,
        "threshold": threshold,
        "max_recompute_fraction": max_recompute_fraction,
        "video": video,
    }
    model, version = load_cnn(settings, model_name, alias)
    clip = moving_digits(n_frames=n_frames, digits=digits, max_speed=max_speed, seed=seed)
    with tracked.track(params) as run:
        run.client().set_tag(run.run_id, "mlsys.model_uri", f"models:/{model_name}/{version}")
        result = infer_video(
            model,
            clip,
            threshold=threshold,
            max_recompute_fraction=max_recompute_fraction,
            compare_full=compare_full,
        )
        uri = track_video(run, settings, result, f"predictions/video/{video}.parquet", clip)
        m = result.metrics
        speed = f"| {m['speedup']:.2f}x |" if "speedup" in m else "| – |"
        tracked.summarize(
            (
                f"# Incremental inference: {video}\n\n"
                f"| frames | incremental | full | unchanged | work saved | speed-up |\n"
                f"|---|---|---|---|---|---|\n"
                f"| {int(m['frames'])} | {int(m['frames_incremental'])} "
                f"| {int(m['frames_full'])} | {int(m['frames_unchanged'])} "
                f"| {100 * m['work_saved']:.1f}% {speed}\n\n"
                f"Model: `models:/{model_name}/{version}`  \nPredictions: `{uri}`  \n"
                f"MLflow run: [{run.run_id}]({run.url})\n"
            ),
            description=f"Incremental inference over {video}",
        )
    return uri
