"""Tests for mlsys.serving.predlog: served rows written as Parquet parts."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlsys.serving.payload import Rows
from mlsys.serving.predlog import FolderSink, PredictionLog, S3Sink, summarize

ROWS = Rows({"text": ["check out my channel", "nice song"]}, 2)
OUTPUTS = [
    {"label": "spam", "probability": 0.9, "proba_ham": 0.1, "proba_spam": 0.9},
    {"label": "ham", "probability": 0.8, "proba_ham": 0.8, "proba_spam": 0.2},
]


def parts(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def append(log: PredictionLog, request_id: str = "r1", version: str = "3") -> bool:
    return log.append(
        ROWS, OUTPUTS, model="spam", version=version, latency_ms=1.5, request_id=request_id
    )


def test_close_writes_the_rows_as_a_parquet_part_under_the_day(tmp_path: Path) -> None:
    log = PredictionLog(FolderSink(tmp_path), "youtube-spam", flush_s=3600)
    assert append(log)
    log.close()
    (part,) = parts(tmp_path)
    day = datetime.now(UTC).date().isoformat()
    relative = part.relative_to(tmp_path).as_posix()
    assert re.fullmatch(
        rf"predictions/online/youtube-spam/{day}/part-\d{{6}}-[0-9a-f]{{8}}\.parquet", relative
    )
    frame = pd.read_parquet(part)
    assert frame["text"].tolist() == ROWS.columns["text"]
    assert frame["label"].tolist() == ["spam", "ham"]
    assert frame["model_version"].tolist() == ["3", "3"]
    assert frame["request_id"].tolist() == ["r1", "r1"]
    assert frame["latency_ms"].tolist() == [1.5, 1.5]
    assert str(frame["served_at"].dt.tz) == "UTC"
    assert log.rows_written == 2


def test_flush_rows_triggers_a_write_before_the_interval(tmp_path: Path) -> None:
    log = PredictionLog(FolderSink(tmp_path), "d", flush_s=3600, flush_rows=4)
    append(log, "r1")
    append(log, "r2")
    for _ in range(3000):
        if parts(tmp_path):
            break
        time.sleep(0.01)
    assert len(parts(tmp_path)) == 1
    log.close()
    assert log.rows_written == 4


def test_requests_are_sampled_whole(tmp_path: Path) -> None:
    draws = iter([0.05, 0.5, 0.2])
    log = PredictionLog(FolderSink(tmp_path), "d", fraction=0.25, sample=lambda: next(draws))
    assert [append(log, f"r{i}") for i in range(3)] == [True, False, True]
    log.close()
    frame = pd.concat(pd.read_parquet(p) for p in parts(tmp_path))
    assert sorted(frame["request_id"]) == ["r0", "r0", "r2", "r2"]


class Flaky:
    """A sink that fails its first ``failures`` puts."""

    def __init__(self, failures: int, target: FolderSink) -> None:
        self.failures = failures
        self.target = target
        self.calls = 0

    def put(self, key: str, data: bytes) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("S3 is down")
        self.target.put(key, data)


def test_a_failed_put_is_retried_and_kept_for_the_next_flush(tmp_path: Path) -> None:
    sink = Flaky(failures=3, target=FolderSink(tmp_path))
    log = PredictionLog(sink, "d", flush_s=3600, retries=2, backoff_s=0)
    append(log, "r1")
    assert log.flush() == 0 and sink.calls == 2  # two attempts, both failed
    append(log, "r2")
    assert log.flush() == 4  # the kept part (third attempt fails, fourth works) and the new
    log.close()
    frame = pd.concat(pd.read_parquet(p) for p in parts(tmp_path))
    assert sorted(set(frame["request_id"])) == ["r1", "r2"]
    assert log.rows_dropped == 0


def test_a_sink_that_never_works_loses_rows_counted_not_raised(tmp_path: Path) -> None:
    sink = Flaky(failures=10**9, target=FolderSink(tmp_path))
    log = PredictionLog(sink, "d", retries=1, backoff_s=0, max_pending_rows=2)
    append(log, "r1")
    log.flush()
    append(log, "r2")
    log.flush()  # over max_pending_rows: the oldest part goes
    assert log.rows_dropped == 2
    log.close()
    assert log.rows_dropped == 4 and parts(tmp_path) == []


def test_the_stop_line_says_what_the_log_wrote_and_lost(tmp_path: Path) -> None:
    from mlsys.serving.server import _log_outcome

    assert _log_outcome(None) == ""
    good = PredictionLog(FolderSink(tmp_path / "good"), "d", backoff_s=0)
    append(good)
    good.close()
    assert _log_outcome(good) == ", prediction log: 2 rows written"
    bad = PredictionLog(Flaky(10**9, FolderSink(tmp_path / "bad")), "d", retries=1, backoff_s=0)
    append(bad)
    bad.close()
    said = _log_outcome(bad)
    assert said == ", prediction log: 0 rows written, 2 rows lost (see the errors above)", said


def test_s3_sink_puts_the_object() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls: list[dict[str, object]] = []

        def put_object(self, **kwargs: object) -> None:
            self.calls.append(kwargs)

    client = Client()
    S3Sink(client, "bucket").put("predictions/online/d/x.parquet", b"data")
    assert client.calls == [
        {
            "Bucket": "bucket",
            "Key": "predictions/online/d/x.parquet",
            "Body": b"data",
            "ContentType": "application/vnd.apache.parquet",
        }
    ]


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        PredictionLog(FolderSink(tmp_path), "d", fraction=1.5)


def test_a_summary_gives_rows_latency_versions_and_class_shares() -> None:
    frame = pd.DataFrame(
        {
            "label": ["spam", "ham", "spam", "spam"],
            "model_version": ["2", "1", "2", "2"],
            "latency_ms": [1.0, 2.0, 3.0, 4.0],
        }
    )
    summary = summarize(frame)
    assert (summary.rows, summary.versions) == (4, ("1", "2"))
    assert summary.shares == {"ham": 0.25, "spam": 0.75}
    assert summary.latency_p50_ms == 2.5
    assert summarize(frame.drop(columns="latency_ms")).latency_p99_ms is None
