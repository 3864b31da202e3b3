"""Where each stage's objects live in the bucket: one place that names every S3 key."""

from __future__ import annotations

__all__ = [
    "ingest_part_key",
    "ingest_parts_prefix",
    "label_part_key",
    "label_parts_prefix",
    "labeled_key",
    "labeled_prefix",
    "lf_partition_key",
    "lf_partitions_prefix",
    "online_predictions_prefix",
    "predictions_prefix",
    "quarantine_key",
    "quarantine_prefix",
    "raw_key",
    "raw_prefix",
    "schema_prefix",
    "staged_input_key",
    "staging_prefix",
]


def raw_prefix(dataset: str) -> str:
    """Folder of a dataset's raw batches (written by ``ingest``)."""
    return f"raw/{dataset}/"


def raw_key(dataset: str, batch: str) -> str:
    """One raw batch: ``raw/<dataset>/<batch>.parquet``."""
    return f"{raw_prefix(dataset)}{batch}.parquet"


def labeled_prefix(dataset: str) -> str:
    """Folder of a dataset's labeled batches (written by ``weak_label``)."""
    return f"labeled/{dataset}/"


def labeled_key(dataset: str, batch: str) -> str:
    """One labeled batch: ``labeled/<dataset>/<batch>.parquet``."""
    return f"{labeled_prefix(dataset)}{batch}.parquet"


def quarantine_key(stage: str, dataset: str, batch: str) -> str:
    """Rows a stage (a suite name or ``weak_label``) set aside, with their reasons."""
    return f"quarantine/{stage}/{dataset}/{batch}.parquet"


def quarantine_prefix(stage: str, dataset: str, batch: str) -> str:
    """Folder of a stage's quarantined parts of one batch (``batch_infer``'s chunks)."""
    return f"quarantine/{stage}/{dataset}/{batch}/"


def predictions_prefix(dataset: str, batch: str) -> str:
    """Folder of one scored batch's parts and manifest (written by ``batch_infer``)."""
    return f"predictions/{dataset}/{batch}/"


def lf_partitions_prefix(dataset: str, batch: str) -> str:
    """Folder of a batch's row partitions while ``weak_label`` applies its LFs on a Dask
    cluster: ``work/lf/<dataset>/<batch>/``, removed once the label matrix is gathered."""
    return f"work/lf/{dataset}/{batch}/"


def lf_partition_key(dataset: str, batch: str, part: int, what: str) -> str:
    """Row partition ``part`` of a batch, as the LFs read it (``what="rows"``: text and kept
    columns) or their votes on it (``"votes"``): ``.../<part:05d>.<what>.parquet``."""
    return f"{lf_partitions_prefix(dataset, batch)}{part:05d}.{what}.parquet"


def label_parts_prefix(dataset: str, batch: str) -> str:
    """Folder of what ``weak_label`` keeps of each row range of a batch labeled in
    partitions between its passes: ``work/weak_label/<dataset>/<batch>/``, removed when
    the run ends."""
    return f"work/weak_label/{dataset}/{batch}/"


def label_part_key(dataset: str, batch: str, part: int, what: str) -> str:
    """Range ``part``'s ``what`` (``votes``, ``labeled``, ``aside-<stage>``):
    ``.../<part:05d>.<what>.parquet``."""
    return f"{label_parts_prefix(dataset, batch)}{part:05d}.{what}.parquet"


def ingest_parts_prefix(dataset: str, batch: str) -> str:
    """Folder of a batch's parts while ``ingest`` reads and checks its source's files on a
    Dask cluster: ``work/ingest/<dataset>/<batch>/``, removed once the batch is written."""
    return f"work/ingest/{dataset}/{batch}/"


def ingest_part_key(dataset: str, batch: str, part: int) -> str:
    """Part ``part`` (the source file's place in the source's order), as read:
    ``.../<part:05d>.parquet``."""
    return f"{ingest_parts_prefix(dataset, batch)}{part:05d}.parquet"


def staging_prefix(dataset: str, batch: str) -> str:
    """Folder of a local input put in S3 for ``batch_infer``'s workers on other hosts:
    ``staging/<dataset>/<batch>/``, removed once the predictions are complete."""
    return f"staging/{dataset}/{batch}/"


def staged_input_key(dataset: str, batch: str, file: int, name: str) -> str:
    """Input file number ``file`` (its place in the input's order) of a staged input,
    under its own name: ``staging/<dataset>/<batch>/<file:04d>/<name>``."""
    return f"{staging_prefix(dataset, batch)}{file:04d}/{name}"


def online_predictions_prefix(dataset: str, day: str) -> str:
    """Folder of one UTC day of the model server's prediction log (``mlsys serve``):
    ``predictions/online/<dataset>/<YYYY-MM-DD>/``, Parquet parts."""
    return f"predictions/online/{dataset}/{day}/"


def schema_prefix(dataset: str, suite: str) -> str:
    """Where accepted versions of a dataset's suite are kept: ``.../vNNNN.json``."""
    return f"schemas/{dataset}/{suite}/"
