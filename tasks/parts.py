"""Parts of a batch in S3 streamed into one object: what the flows that work in partitions
(ingest, weak_label) write last, on a worker, one part in memory at a time."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlsys.data import read_parquet_bytes
from mlsys.data.s3 import get_bytes, put_file
from mlsys.data.stream import ParquetStream
from mlsys.settings import Settings
from mlsys.validation.checkpoint import split_rows

PARQUET = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class Streamed:
    """What ``stream-parts`` wrote: rows into the target (None: not written) and rows set
    aside into the quarantine object (None: none)."""

    uri: str | None
    rows: int
    quarantine_uri: str | None
    rows_aside: int


def stream_parts(
    settings: Settings,
    parts: Sequence[str],
    drops: Sequence[dict[int, list[str]]] | None,
    *,
    target: str | None,
    quarantine: str | None,
    each: Callable[[pd.DataFrame], None] | None = None,
) -> Streamed:
    """The ``parts`` (s3:// Parquet objects), in order and one at a time, streamed into
    ``target`` less the rows ``drops`` names (one row group per part), and those rows with
    their reasons into ``quarantine``; ``each(kept)`` sees every part's kept rows.
    ``target`` None: nothing is written but the quarantine; ``drops`` None: no row dropped."""
    client = settings.s3_client()
    with tempfile.TemporaryDirectory(prefix="mlsys-parts-") as tmp:
        passed_path, aside_path = Path(tmp, "passed.parquet"), Path(tmp, "aside.parquet")
        with ParquetStream(passed_path) as passed, ParquetStream(aside_path) as aside:
            for n, uri in enumerate(parts):
                frame = read_parquet_bytes(get_bytes(client, uri))
                kept, dropped = split_rows(frame, drops[n] if drops is not None else {})
                if target is not None:
                    passed.write(kept)
                if len(dropped) and quarantine is not None:
                    aside.write(dropped)
                if each is not None:
                    each(kept)
        if target is not None:
            put_file(client, target, str(passed_path), PARQUET)
        if aside.rows and quarantine is not None:
            put_file(client, quarantine, str(aside_path), PARQUET)
    return Streamed(
        target,
        passed.rows,
        quarantine if aside.rows and quarantine is not None else None,
        aside.rows,
    )
