"""`ingest` in parts on a Dask cluster made for the run, against the real stack: one task
per source file reads and checks it, the checks merge into one pass's verdict; the batch,
the quarantine, the counts, the drift and the validation report equal a one-pass ingest's."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlsys.data import read_parquet_bytes
from mlsys.data.s3 import get_bytes, list_keys, put_bytes
from mlsys.settings import Settings
from mlsys.validation.checkpoint import ValidationFailed
from tests.integration.dask_kill import kill_a_worker_when

pytestmark = pytest.mark.integration

HEADER = "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\n"


def _source(tmp_path: Path, youtube_dir: Path) -> Path:
    """The five videos' files plus a file of rows the raw suite judges: an empty text,
    HTML (a warning), a label that is no class, and ids that repeat rows of other files."""
    folder = tmp_path / "src"
    shutil.copytree(youtube_dir, folder)
    first = pd.read_csv(youtube_dir / "Youtube01-Psy.csv", dtype=str, keep_default_na=False)
    last = pd.read_csv(youtube_dir / "Youtube05-Shakira.csv", dtype=str, keep_default_na=False)
    rows = [
        "x-empty,Ann,2014-01-01,,1",
        "x-html,Bob,2014-01-01,<b>free</b> stuff,1",
        "x-label,Cy,2014-01-01,hello there,7",
        f"{first['COMMENT_ID'][0]},Dee,2014-01-01,a copy of an id,0",
        f"{last['COMMENT_ID'][3]},Eve,2014-01-01,another copy,0",
        "x-ok,Fay,2014-01-02,a fine comment,0",
    ]
    (folder / "Youtube06-extra.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return folder


def _run(settings: Settings, batch: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"params.batch = '{batch}'"
    )
    return client, run


def _report(settings: Settings, batch: str, folder: Path) -> dict[str, Any]:
    client, run = _run(settings, batch)
    path = client.download_artifacts(run.info.run_id, "validation/raw/report.json", str(folder))
    report: dict[str, Any] = json.loads(Path(path).read_text())
    return report


def test_ingest_in_parts_equals_one_pass(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest

    source = str(_source(tmp_path, youtube_dir))
    s3 = stack_env.s3_client()
    # Drift is measured against the newest earlier batch: the parts' run against the
    # first one-pass batch, the second one-pass run against the parts' batch (equal).
    ingest(source=source, batch="it-parts-ref", partitioned=False)
    # Six files of 57-82 kB in tasks of about 150 kB: two groups of three files.
    parts_uri = ingest(source=source, batch="it-parts", partitioned=True, workers=2, part_mb=0.15)
    one_uri = ingest(source=source, batch="it-parts-one", partitioned=False)

    written = get_bytes(s3, parts_uri)
    assert pq.ParquetFile(io.BytesIO(written)).num_row_groups == 2  # a row group per task
    parts = read_parquet_bytes(written)
    one = read_parquet_bytes(get_bytes(s3, one_uri))
    pd.testing.assert_frame_equal(parts, one)
    # Set aside: the later copy of each repeated id (3 in the videos, 2 added), the empty
    # text and the label that is no class; HTML is a warning only.
    assert len(one) == 1956 + 6 - 7
    assert {"x-ok", "x-html"} <= set(one["comment_id"])

    quarantined = {
        batch: read_parquet_bytes(
            get_bytes(s3, stack_env.s3_uri(f"quarantine/raw/youtube-spam/{batch}.parquet"))
        )
        for batch in ("it-parts", "it-parts-one")
    }
    pd.testing.assert_frame_equal(quarantined["it-parts"], quarantined["it-parts-one"])
    reasons = set(quarantined["it-parts"]["quarantine_reason"])
    assert "comment_id: expect_column_values_to_be_unique" in reasons
    assert {"x-empty", "x-label"} <= set(quarantined["it-parts"]["comment_id"])

    report = _report(stack_env, "it-parts", tmp_path / "a")
    assert report == _report(stack_env, "it-parts-one", tmp_path / "b")
    assert report["drift"] and report["rows_in"] == 1956 + 6

    metrics = [  # the pipeline's own, not the host's system metrics
        {k: v for k, v in _run(stack_env, b)[1].data.metrics.items() if not k.startswith("system/")}
        for b in ("it-parts", "it-parts-one")
    ]
    assert metrics[0] == metrics[1]
    assert metrics[0]["rows_in"] == metrics[0]["rows_out"] + metrics[0]["rows_quarantined"]
    assert metrics[0]["source_files"] == 6
    # The parts are gone once the batch is written.
    assert list_keys(s3, stack_env.bucket, "work/ingest/youtube-spam/") == []


def test_ingest_in_parts_from_an_s3_folder_in_fail_mode_writes_nothing(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest

    s3 = stack_env.s3_client()
    folder = _source(tmp_path, youtube_dir)
    for path in sorted(folder.iterdir()):
        put_bytes(s3, stack_env.s3_uri(f"incoming/it-parts-fail/{path.name}"), path.read_bytes())
    with pytest.raises(ValidationFailed) as err:
        ingest(
            source=stack_env.s3_uri("incoming/it-parts-fail/"),
            batch="it-parts-fail",
            partitioned=True,
            validation="fail",
            part_mb=0.0001,  # a task per file
        )
    message = str(err.value)
    assert "label: expect_column_values_to_be_in_set failed on 1 rows" in message
    assert "comment_id: expect_column_values_to_be_unique failed on" in message
    assert list_keys(s3, stack_env.bucket, "raw/youtube-spam/it-parts-fail") == []
    assert list_keys(s3, stack_env.bucket, "quarantine/raw/youtube-spam/it-parts-fail") == []
    assert list_keys(s3, stack_env.bucket, "work/ingest/youtube-spam/") == []


def test_parts_asked_of_a_dataset_without_ids_are_refused_naming_why() -> None:
    from flows.ingest import in_parts
    from mlsys.data.definition import load_dataset
    from mlsys.data.sources import SourceFile

    youtube = load_dataset("youtube-spam")
    no_ids = youtube.model_copy(update={"columns": youtube.columns.model_copy(update={"id": None})})
    suite: dict[str, Any] = {"expectations": []}
    two, one = [SourceFile("a"), SourceFile("b")], [SourceFile("a")]
    with pytest.raises(ValueError, match="no id column"):
        in_parts(two, no_ids, suite, partitioned=True, accept_schema_update=False, address=None)
    assert not in_parts(
        two, no_ids, suite, partitioned=None, accept_schema_update=False, address="tls://x"
    )
    assert in_parts(two, youtube, suite, partitioned=None, accept_schema_update=False,
                    address="tls://x")  # fmt: skip
    assert not in_parts(
        one, youtube, suite, partitioned=None, accept_schema_update=False, address="tls://x"
    )


def test_a_bad_file_in_parts_fails_the_run_naming_it_and_leaves_no_part(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    from flows.ingest import ingest
    from mlsys.data import SourceError

    folder = _source(tmp_path, youtube_dir)
    (folder / "Youtube07-broken.csv").write_text("COMMENT_ID,AUTHOR,DATE\n1,a,2014-01-01\n")
    with pytest.raises(SourceError, match="CONTENT") as err:
        ingest(source=str(folder), batch="it-parts-bad", partitioned=True, part_mb=0.0001)
    assert "Youtube07-broken.csv" in str(err.value)
    s3 = stack_env.s3_client()
    assert list_keys(s3, stack_env.bucket, "raw/youtube-spam/it-parts-bad") == []
    assert list_keys(s3, stack_env.bucket, "work/ingest/youtube-spam/") == []


def test_a_worker_killed_mid_ingest_loses_and_duplicates_no_row(
    stack_env: Settings, tmp_path: Path, youtube_dir: Path
) -> None:
    """SIGKILL a Dask worker of the run's cluster once some files' parts are written and
    before all are: Dask runs the lost tasks again on the other worker (each writes its
    own part key, so a rerun overwrites it), and the raw batch and the quarantine equal a
    one-pass ingest's, no row lost or repeated."""
    from flows.ingest import ingest
    from mlsys.data.catalog import ingest_parts_prefix

    # 24 files of about 80 rows (a task each), so that the parts appear over seconds.
    folder = tmp_path / "many"
    folder.mkdir()
    whole = _source(tmp_path, youtube_dir)
    files = sorted(whole.glob("*.csv"))
    rows = pd.concat(
        [pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True
    )
    pieces = 24
    for number, start in enumerate(range(0, len(rows), -(-len(rows) // pieces))):
        piece = rows.iloc[start : start + -(-len(rows) // pieces)]
        piece.to_csv(folder / f"part-{number:02d}.csv", index=False)
    s3 = stack_env.s3_client()
    one_uri = ingest(source=str(folder), batch="it-kill-one", partitioned=False)

    prefix = ingest_parts_prefix("youtube-spam", "it-kill")

    def some_parts_written() -> int:
        written = len(list_keys(s3, stack_env.bucket, prefix))
        return written if 1 <= written < pieces - 4 else 0

    with kill_a_worker_when(some_parts_written) as killed:
        uri = ingest(source=str(folder), batch="it-kill", partitioned=True, workers=2, part_mb=1e-6)
    assert killed, "no worker was killed while the files were read"
    parts = read_parquet_bytes(get_bytes(s3, uri))
    one = read_parquet_bytes(get_bytes(s3, one_uri))
    assert not parts["comment_id"].duplicated().any()
    pd.testing.assert_frame_equal(parts, one)
    quarantined = [
        read_parquet_bytes(
            get_bytes(s3, stack_env.s3_uri(f"quarantine/raw/youtube-spam/{batch}.parquet"))
        )
        for batch in ("it-kill", "it-kill-one")
    ]
    pd.testing.assert_frame_equal(quarantined[0], quarantined[1])
    assert len(parts) + len(quarantined[0]) == len(rows)  # rows in = out + quarantined
    assert list_keys(s3, stack_env.bucket, prefix) == []
