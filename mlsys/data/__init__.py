"""Data sources and raw-batch handling for mlsys."""

from mlsys.data.sources import (
    DATASETS,
    PROVENANCE_COLUMNS,
    YOUTUBE_SPAM,
    DatasetSpec,
    SourceError,
    get_dataset,
    read_parquet_bytes,
    read_source,
    write_parquet_bytes,
)

__all__ = [
    "DATASETS",
    "PROVENANCE_COLUMNS",
    "YOUTUBE_SPAM",
    "DatasetSpec",
    "SourceError",
    "get_dataset",
    "read_parquet_bytes",
    "read_source",
    "write_parquet_bytes",
]
