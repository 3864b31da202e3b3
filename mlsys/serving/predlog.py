"""The prediction log: what the server answered, appended to S3 as Parquet for validation.

TFX closes the loop between serving and training by validating what is served like what is
trained on; the ``serving_report`` flow does that with a day of this log (the serving suite,
and skew against the model's training data). Each served row is one log row: its input
columns, the model's outputs, and

==================  ============================================================
``model_name``      the registered model
``model_version``   the version that answered
``latency_ms``      the request's time in the server, arrival to answer
``request_id``      the request's id (``X-Request-Id``), shared by its rows
``served_at``       when it was answered (UTC timestamp)
==================  ============================================================

Requests are sampled by ``fraction`` (all rows of a sampled request are kept). Rows are
buffered in memory and written by a background thread every ``flush_s`` seconds or
``flush_rows`` rows, one Parquet part per UTC day of the rows:
``predictions/online/<dataset>/<YYYY-MM-DD>/part-<HHMMSS>-<uuid8>.parquet``. A failed
write is retried with backoff, then kept for the next flush (up to ``max_pending_rows``;
beyond that the oldest parts are dropped and counted); it never reaches the request path.
:meth:`PredictionLog.close` writes what is left.

Usage::

    log = PredictionLog(S3Sink(s3_client, "mlsys"), "youtube-spam", fraction=1.0)
    log.append(rows, outputs, model="spam", version="3", latency_ms=1.2, request_id="a1")
    log.close()
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from mlsys.atomic import write_bytes_atomic
from mlsys.data.catalog import online_predictions_prefix
from mlsys.data.s3 import put_bytes
from mlsys.data.sources import write_parquet_bytes
from mlsys.serving.cache import Record
from mlsys.serving.payload import Rows

__all__ = ["FolderSink", "LogSummary", "PredictionLog", "S3Sink", "Sink", "part_key", "summarize"]

_log = logging.getLogger(__name__)

META_COLUMNS = ("model_name", "model_version", "latency_ms", "request_id", "served_at")


class Sink(Protocol):
    """Where log parts go."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (raise on failure)."""


class S3Sink:
    """Parts as objects of ``bucket`` (a boto3 S3 client)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, key: str, data: bytes) -> None:
        put_bytes(self.client, f"s3://{self.bucket}/{key}", data, "application/vnd.apache.parquet")


class FolderSink:
    """Parts as files under a local folder, at the same keys (tests, local runs)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def put(self, key: str, data: bytes) -> None:
        target = self.path / key
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)


def part_key(dataset: str, day: str, when: datetime) -> str:
    """The key of a new part of ``dataset``'s log for UTC ``day``, written at ``when``."""
    return (
        f"{online_predictions_prefix(dataset, day)}"
        f"part-{when:%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    )


@dataclass
class _Part:
    key: str
    data: bytes
    rows: int


class PredictionLog:
    """Buffers served rows and writes them as Parquet parts (see the module docstring).

    Args:
        sink: where parts go (:class:`S3Sink`, :class:`FolderSink`).
        dataset: names the key prefix.
        fraction: share of requests logged, in [0, 1].
        flush_s: seconds between writes.
        flush_rows: buffered rows that trigger a write before ``flush_s``.
        retries: attempts per part and flush.
        backoff_s: wait before the second attempt, doubled for each next one.
        max_pending_rows: rows kept across failed flushes (default ``10 * flush_rows``).
        sample: returns a number in [0, 1) per request (tests pass a fixed one).
    """

    def __init__(
        self,
        sink: Sink,
        dataset: str,
        fraction: float = 1.0,
        flush_s: float = 60.0,
        flush_rows: int = 10_000,
        *,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_pending_rows: int | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        if flush_s <= 0 or flush_rows < 1 or retries < 1:
            raise ValueError(
                f"need flush_s > 0, flush_rows >= 1 and retries >= 1, got {flush_s!r}, "
                f"{flush_rows!r}, {retries!r}"
            )
        self.sink = sink
        self.dataset = dataset
        self.fraction = fraction
        self.flush_s = flush_s
        self.flush_rows = flush_rows
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_pending_rows = 10 * flush_rows if max_pending_rows is None else max_pending_rows
        self.rows_written = 0
        self.rows_dropped = 0
        self._sample = sample
        self._buffer: list[dict[str, Any]] = []
        self._pending: list[_Part] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(
        self,
        rows: Rows,
        outputs: Sequence[Record],
        *,
        model: str,
        version: str,
        latency_ms: float,
        request_id: str,
    ) -> bool:
        """Buffer one answered request's rows if it is sampled; whether it was."""
        if self._closed.is_set() or self.fraction == 0 or self._sample() >= self.fraction:
            return False
        served_at = datetime.now(UTC)
        meta = {
            "model_name": model,
            "model_version": version,
            "latency_ms": float(latency_ms),
            "request_id": request_id,
            "served_at": served_at,
        }
        names = list(rows.columns)
        logged = [
            {**{n: rows.columns[n][i] for n in names}, **outputs[i], **meta}
            for i in range(rows.count)
        ]
        with self._lock:
            self._buffer.extend(logged)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write the buffered rows now (and parts that failed before); rows written."""
        with self._flush_lock:
            with self._lock:
                taken, self._buffer = self._buffer, []
            if taken:
                self._pending.extend(self._parts(taken))
            written = 0
            kept: list[_Part] = []
            for part in self._pending:
                if self._put(part):
                    written += part.rows
                else:
                    kept.append(part)
            self._pending = self._bounded(kept)
            self.rows_written += written
            return written

    def close(self) -> None:
        """Stop the background thread and write everything still buffered."""
        self._closed.set()
        self._wake.set()
        self._thread.join()
        self.flush()
        if self._pending:
            lost = sum(part.rows for part in self._pending)
            self.rows_dropped += lost
            _log.error(
                "prediction log: %d rows of %s could not be written before closing",
                lost,
                self.dataset,
            )
            self._pending = []

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self.flush()
            except Exception:
                _log.exception("prediction log: flush failed")

    def _parts(self, rows: list[dict[str, Any]]) -> list[_Part]:
        """One part per UTC day of the rows' ``served_at``."""
        now = datetime.now(UTC)
        frame = pd.DataFrame(rows)
        parts = []
        for day, group in frame.groupby(frame["served_at"].dt.strftime("%Y-%m-%d"), sort=True):
            try:
                data = write_parquet_bytes(group.reset_index(drop=True))
            except Exception as exc:  # pyarrow raises several types for unwritable values
                self.rows_dropped += len(group)
                _log.error("prediction log: %d rows cannot be written as Parquet: %s",
                           len(group), exc)  # fmt: skip
                continue
            parts.append(_Part(part_key(self.dataset, str(day), now), data, len(group)))
        return parts

    def _put(self, part: _Part) -> bool:
        for attempt in range(self.retries):
            try:
                self.sink.put(part.key, part.data)
                return True
            except Exception as exc:
                _log.warning("prediction log: writing %s failed (attempt %d of %d): %s",
                             part.key, attempt + 1, self.retries, exc)  # fmt: skip
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
        return False

    def _bounded(self, parts: list[_Part]) -> list[_Part]:
        """``parts`` without the oldest ones beyond ``max_pending_rows``."""
        total = sum(part.rows for part in parts)
        while parts and total > self.max_pending_rows:
            oldest = parts.pop(0)
            total -= oldest.rows
            self.rows_dropped += oldest.rows
            _log.error("prediction log: dropped %d rows (%s) after failed writes",
                       oldest.rows, oldest.key)  # fmt: skip
        return parts


@dataclass(frozen=True)
class LogSummary:
    """What a stretch of the prediction log shows: rows, latency percentiles (ms, None
    without a latency column or rows), the versions that answered, each class's share."""

    rows: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    versions: tuple[str, ...]
    shares: dict[str, float]


def summarize(frame: pd.DataFrame) -> LogSummary:
    """The :class:`LogSummary` of prediction-log rows (the columns a part holds)."""
    latency = (
        frame["latency_ms"].astype("float64") if "latency_ms" in frame and len(frame) else None
    )
    shares = (
        frame["label"].astype(str).value_counts(normalize=True).sort_index()
        if "label" in frame
        else pd.Series(dtype="float64")
    )
    return LogSummary(
        rows=len(frame),
        latency_p50_ms=None if latency is None else float(latency.quantile(0.5)),
        latency_p99_ms=None if latency is None else float(latency.quantile(0.99)),
        versions=tuple(sorted(frame["model_version"].astype(str).unique()))
        if "model_version" in frame
        else (),
        shares={str(name): float(share) for name, share in shares.items()},
    )
