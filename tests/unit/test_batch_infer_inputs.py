"""batch_infer's inputs where they are: S3 objects read in place by ranged GETs (the same
chunks, parts and counts as the local file), the staging keys of a local input, the
cluster setting."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlsys.data.catalog import staged_input_key, staging_prefix
from mlsys.data.s3 import S3Error
from mlsys.inference.batch import FolderSink, count_chunks, iter_chunks, score_chunks
from mlsys.inference.inputs import S3Object, is_s3, resolve_inputs
from mlsys.settings import Settings


class FakeS3:
    """A stand-in S3 client holding objects in memory: HEAD and ranged GET, counted."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets = 0
        self.served = 0
        self.fail: Exception | None = None

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"ContentLength": len(self.objects[f"{Bucket}/{Key}"])}

    def get_object(self, Bucket: str, Key: str, Range: str) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        data = self.objects[f"{Bucket}/{Key}"]
        first, last = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        piece = data[first : last + 1]
        self.gets += 1
        self.served += len(piece)
        return {"Body": io.BytesIO(piece)}


def _predict(frame: pd.DataFrame) -> pd.DataFrame:
    label = (frame["text"].str.len() > 3).astype("int64")
    return pd.DataFrame({"label": label.to_numpy(), "probability": 0.75})


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "comment_id": [f"c{i}" for i in range(rows)],
            "text": [f"t{i}" * (i % 4) or "x" for i in range(rows)],
        }
    )


def _files(tmp_path: Path, rows: int = 80, row_group: int = 10) -> tuple[Path, Path, FakeS3]:
    parquet, csv = tmp_path / "in.parquet", tmp_path / "in.csv"
    _frame(rows).to_parquet(parquet, row_group_size=row_group)
    _frame(rows).to_csv(csv, index=False)
    s3 = FakeS3({"b/in/in.parquet": parquet.read_bytes(), "b/in/in.csv": csv.read_bytes()})
    return parquet, csv, s3


def test_an_s3_object_reads_and_seeks_like_a_file() -> None:
    data = bytes(range(256)) * 100
    s3 = FakeS3({"b/k/x.bin": data})
    obj = S3Object(s3, "s3://b/k/x.bin")
    assert (obj.name, obj.suffix, obj.uri) == ("x.bin", ".bin", "s3://b/k/x.bin")
    with obj.open("rb") as handle:
        handle.seek(-10, io.SEEK_END)
        assert handle.read() == data[-10:]
        handle.seek(1000)
        assert handle.read(5) == data[1000:1005]
        handle.seek(0)
        assert handle.read() == data
    with pytest.raises(ValueError, match="reading only"):
        obj.open("wb")


def test_chunks_read_in_place_from_s3_equal_the_local_files(tmp_path: Path) -> None:
    parquet, csv, s3 = _files(tmp_path)
    objects = [S3Object(s3, "s3://b/in/in.parquet"), S3Object(s3, "s3://b/in/in.csv")]
    for chunk_rows in (7, 25, 100):
        local = list(iter_chunks([parquet, csv], chunk_rows, rename={"text": "body"}))
        remote = list(iter_chunks(objects, chunk_rows, rename={"text": "body"}))
        assert [c.name for c in remote] == [c.name for c in local]
        for a, b in zip(local, remote, strict=True):
            pd.testing.assert_frame_equal(a.read(), b.read())
        assert count_chunks(objects, chunk_rows) == count_chunks([parquet, csv], chunk_rows)


def test_a_partition_fetches_only_its_row_groups(tmp_path: Path) -> None:
    _, _, s3 = _files(tmp_path, rows=80_000, row_group=10_000)
    size = len(s3.objects["b/in/in.parquet"])
    predicted = score_chunks(
        iter_chunks([S3Object(s3, "s3://b/in/in.parquet")], 10_000),
        _predict,
        FolderSink(tmp_path / "out"),
        partition=(0, 4),
    )
    assert [r.name for r in predicted] == ["part-0000-00000.parquet", "part-0000-00004.parquet"]
    # Two of eight row groups, and the footer: well under half the object.
    assert 0 < s3.served < size / 2, (s3.served, size, s3.gets)


def test_parts_scored_from_s3_equal_those_scored_from_the_local_file(tmp_path: Path) -> None:
    parquet, csv, s3 = _files(tmp_path)
    objects = resolve_inputs(["s3://b/in/in.parquet", "s3://b/in/in.csv"], lambda: s3)
    for name, files in (("local", [parquet, csv]), ("s3", objects)):
        for i in range(3):
            score_chunks(
                iter_chunks(files, 9),
                _predict,
                FolderSink(tmp_path / name),
                id_column="comment_id",
                partition=(i, 3),
            )
    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert local == sorted(p.name for p in (tmp_path / "s3").iterdir()) and len(local) == 18
    for part in local:
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "local" / part), pd.read_parquet(tmp_path / "s3" / part)
        )


def test_a_failed_read_is_an_s3_error_that_names_the_object_and_keeps_its_cause(
    tmp_path: Path,
) -> None:
    from botocore.exceptions import EndpointConnectionError

    from tasks.retry import is_transient

    _, _, s3 = _files(tmp_path)
    obj = S3Object(s3, "s3://b/in/in.parquet")
    chunks = iter(iter_chunks([obj], 10))
    first = next(chunks)
    s3.fail = EndpointConnectionError(endpoint_url="http://10.0.0.9:8333/b/in/in.parquet")
    with pytest.raises(S3Error, match=r"cannot read s3://b/in/in\.parquet") as raised:
        first.read()
    assert is_transient(raised.value)  # an outage: the task rides it out


def test_locations_resolve_in_order_and_the_client_is_made_once_if_needed(
    tmp_path: Path,
) -> None:
    made: list[FakeS3] = []

    def client() -> FakeS3:
        made.append(FakeS3({}))
        return made[-1]

    assert resolve_inputs([str(tmp_path / "a.csv")], client) == [tmp_path / "a.csv"]
    assert made == []
    files = resolve_inputs(["s3://b/x.parquet", str(tmp_path / "a.csv"), "s3://b/y.csv"], client)
    assert [type(f).__name__ for f in files] == ["S3Object", "PosixPath", "S3Object"]
    assert len(made) == 1 and is_s3("s3://b/x") and not is_s3("/data/x.csv")


def test_staged_keys_keep_the_input_order_and_names() -> None:
    keys = [staged_input_key("ds", "b1", i, name) for i, name in enumerate(["z.csv"] * 12)]
    assert keys[0] == "staging/ds/b1/0000/z.csv"
    assert sorted(keys) == keys and all(k.startswith(staging_prefix("ds", "b1")) for k in keys)


def test_list_input_orders_local_files_and_names_a_missing_source(tmp_path: Path) -> None:
    from tasks.batch_infer import list_input

    for name in ("b.csv", "a.parquet", "notes.txt"):
        (tmp_path / name).write_text("x")
    settings = Settings(stack_dir=tmp_path / "stack")
    assert list_input.fn(settings, str(tmp_path)) == [
        str(tmp_path / "a.parquet"),
        str(tmp_path / "b.csv"),
    ]
    with pytest.raises(ValueError, match="neither an s3:// URI nor an existing file"):
        list_input.fn(settings, str(tmp_path / "nope"))


def test_the_dask_address_is_a_setting_passed_to_the_stack_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(stack_dir=tmp_path).dask_address is None
    assert "MLSYS_DASK_ADDRESS" not in Settings(stack_dir=tmp_path).shell_env()
    monkeypatch.setenv("MLSYS_DASK_ADDRESS", "tls://10.0.0.5:8786")
    settings = Settings(stack_dir=tmp_path)
    assert settings.dask_address == "tls://10.0.0.5:8786"
    assert settings.shell_env()["MLSYS_DASK_ADDRESS"] == "tls://10.0.0.5:8786"


def test_a_tls_scheduler_without_dask_tls_configuration_is_refused_by_name() -> None:
    import dask.config
    import distributed  # noqa: F401  (its configuration defaults, before they are set)

    from tasks.cluster import cluster_threads

    with (
        dask.config.set({"distributed.comm.tls.ca-file": None}),
        pytest.raises(ValueError, match="DASK_DISTRIBUTED__COMM__TLS__CA_FILE"),
    ):
        cluster_threads("tls://10.0.0.5:8786")
