"""Data: dataset definitions, reading their sources into raw batches, S3 I/O."""

from mlsys.data.definition import (
    DatasetDefinition,
    DatasetError,
    list_datasets,
    load_dataset,
)
from mlsys.data.sources import (
    PROVENANCE_COLUMNS,
    SourceError,
    read_dataset,
    read_parquet_bytes,
    read_table,
    write_parquet_bytes,
)

__all__ = [
    "PROVENANCE_COLUMNS",
    "DatasetDefinition",
    "DatasetError",
    "SourceError",
    "list_datasets",
    "load_dataset",
    "read_dataset",
    "read_parquet_bytes",
    "read_table",
    "write_parquet_bytes",
]
