"""Unit tests for mlsys.data.sources: reading folders, files and URLs into raw batches."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlsys.data.definition import DatasetDefinition, load_dataset
from mlsys.data.sources import (
    SourceError,
    read_dataset,
    read_parquet_bytes,
    read_table,
    source_format,
    write_parquet_bytes,
)

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "youtube-spam"
HEADER = "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\n"
RAW_COLUMNS = ["comment_id", "text", "label", "author", "date", "source_file", "source_row"]


def define(**fields: Any) -> DatasetDefinition:
    """A definition built in the test (defaults: the YouTube CSV layout)."""
    data: dict[str, Any] = {
        "name": "test-data",
        "columns": {"id": "COMMENT_ID", "text": "CONTENT", "label": "CLASS",
                    "keep": ["AUTHOR", "DATE"]},
        "classes": ["ham", "spam"],
    }  # fmt: skip
    data.update(fields)
    return DatasetDefinition.from_mapping(data, where="test")


SPAM = define()


def read_source(source: Any, definition: DatasetDefinition = SPAM, **kwargs: Any) -> pd.DataFrame:
    return read_dataset(definition, source, **kwargs)


def write_csv(path: Path, body: str, header: str = HEADER) -> Path:
    path.write_text(header + body, encoding="utf-8")
    return path


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    # Written out of order on purpose: the reader must sort by file name.
    write_csv(folder / "b.csv", "id3,Carol,,buy now,1\n")
    write_csv(folder / "a.csv", "id1,Alice,2014-01-01,hello,0\nid2,Bob,2014-01-02,NA,1\n")
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    return folder


def test_csv_folder_concatenates_files_in_name_order_with_provenance(csv_folder: Path) -> None:
    df = read_source(csv_folder)

    assert list(df.columns) == RAW_COLUMNS
    assert df["comment_id"].tolist() == ["id1", "id2", "id3"]
    assert df["source_file"].tolist() == ["a.csv", "a.csv", "b.csv"]
    assert df["source_row"].tolist() == [0, 1, 0]
    assert df["label"].tolist() == [0, 1, 1]
    assert isinstance(df.index, pd.RangeIndex) and df.index.tolist() == [0, 1, 2]


def test_dtypes_are_string_int64_label_and_int64_row(csv_folder: Path) -> None:
    df = read_source(csv_folder)

    for column in ("comment_id", "author", "date", "text", "source_file"):
        assert df[column].dtype == "string", column
    assert df["label"].dtype == "Int64"
    assert df["source_row"].dtype == "int64"


def test_empty_cell_becomes_missing_but_na_text_is_kept(csv_folder: Path) -> None:
    df = read_source(csv_folder).set_index("comment_id")

    assert df.loc["id3", "date"] is pd.NA
    # "NA" is a plausible comment; only truly empty cells count as missing.
    assert df.loc["id2", "text"] == "NA"


def test_single_csv_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "one.csv", "id1,Alice,2014-01-01,hi,0\n")

    df = read_source(str(path))

    assert df["text"].tolist() == ["hi"]
    assert df["source_file"].tolist() == ["one.csv"]


def test_local_parquet_file_is_normalized_like_csv(tmp_path: Path) -> None:
    path = tmp_path / "batch.parquet"
    pd.DataFrame(
        {
            "COMMENT_ID": ["id1", "id2"],
            "AUTHOR": ["Alice", "Bob"],
            "DATE": ["", "2014-01-02"],
            "CONTENT": ["hi", "there"],
            "CLASS": [1, 0],
        }
    ).to_parquet(path, index=False)

    df = read_source(path)

    assert df["label"].dtype == "Int64" and df["label"].tolist() == [1, 0]
    assert df["date"].dtype == "string" and df["date"].isna().tolist() == [True, False]
    assert df["source_file"].tolist() == ["batch.parquet", "batch.parquet"]


def test_unlabeled_batch_has_an_all_missing_label_column(tmp_path: Path) -> None:
    header = "COMMENT_ID,AUTHOR,DATE,CONTENT\n"
    path = write_csv(tmp_path / "new.csv", "id1,Alice,2014-01-01,hi\n", header=header)

    df = read_source(path)

    assert list(df.columns) == RAW_COLUMNS
    assert df["label"].dtype == "Int64" and df["label"].isna().all()
    assert df["text"].tolist() == ["hi"]


def test_mixed_labeled_and_unlabeled_files_keep_label_dtype(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", "id1,A,,hi\n", header="COMMENT_ID,AUTHOR,DATE,CONTENT\n")
    write_csv(tmp_path / "b.csv", "id2,B,,yo,1\n")

    df = read_source(tmp_path)

    assert df["label"].dtype == "Int64"
    assert df["label"].isna().tolist() == [True, False]
    assert list(df.columns)[-2:] == ["source_file", "source_row"]


def test_kept_columns_are_snake_cased_and_unnamed_ones_dropped(tmp_path: Path) -> None:
    header = "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS,VideoTitle,Like Count,split\n"
    path = write_csv(tmp_path / "x.csv", "id1,A,,hi,0,Psy,3,train\n", header=header)
    definition = define(
        columns={"id": "COMMENT_ID", "text": "CONTENT", "label": "CLASS",
                 "keep": ["VideoTitle", "Like Count", "split"]}
    )  # fmt: skip

    df = read_source(path, definition)

    assert list(df.columns) == [
        "comment_id", "text", "label", "video_title", "like_count", "source_split",
        "source_file", "source_row",
    ]  # fmt: skip
    assert df["video_title"].tolist() == ["Psy"]
    assert df["like_count"].tolist() == ["3"]
    assert df["like_count"].dtype == "string"
    # A kept column named like a column the pipeline writes gets a source_ prefix.
    assert df["source_split"].tolist() == ["train"]


def test_bom_in_header_does_not_corrupt_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + HEADER + "id1,A,,\ufeffhi,0\n").encode("utf-8"))

    df = read_source(path)

    assert df["comment_id"].tolist() == ["id1"]
    # A BOM inside a value is a real data quirk and must survive for validation to see.
    assert df["text"].tolist() == ["\ufeffhi"]


def test_empty_folder_names_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no CSV, TSV, JSON Lines or Parquet file") as info:
        read_source(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(SourceError, match="source not found") as info:
        read_source(missing)
    assert str(missing) in str(info.value)


def test_missing_named_column_names_column_file_and_columns_found(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", "id1,A,,hi,0\n")
    bad = write_csv(tmp_path / "b.csv", "id2,B,,1\n", header="COMMENT_ID,AUTHOR,DATE,CLASS\n")

    with pytest.raises(SourceError) as info:
        read_source(tmp_path)
    message = str(info.value)
    assert "CONTENT" in message
    assert str(bad) in message
    assert "found columns: COMMENT_ID, AUTHOR, DATE, CLASS" in message


def test_bad_label_values_are_named_with_their_count_and_the_classes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id1,A,,hi,0\nid2,B,,yo,eggs\nid3,C,,x,7\nid4,D,,y,7\n")

    with pytest.raises(SourceError) as info:
        read_source(path)
    message = str(info.value)
    assert "'eggs', '7'" in message
    assert "3 label value(s)" in message
    assert "row 2" in message
    assert "a.csv" in message
    assert "['ham', 'spam']" in message


def test_bad_label_values_can_be_kept_for_the_raw_suite_to_quarantine(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id1,A,,hi,0\nid2,B,,yo,eggs\nid3,C,,x,7\nid4,D,,y,spam\n")

    df = read_source(path, unknown_labels="keep")
    assert df["label"].tolist() == [0, -1, 7, 1]  # whole numbers kept, others -1
    (problem,) = df.attrs["unknown_labels"]
    assert "'eggs', '7'" in problem and "2 label value(s)" in problem
    with pytest.raises(ValueError, match="unknown_labels must be 'error' or 'keep', got 'drop'"):
        read_source(path, unknown_labels="drop")


def test_many_bad_label_values_are_shown_ten_at_most(tmp_path: Path) -> None:
    body = "".join(f"id{i},A,,t,bad{i:02d}\n" for i in range(12))
    path = write_csv(tmp_path / "a.csv", body)

    with pytest.raises(SourceError) as info:
        read_source(path)
    message = str(info.value)
    assert "'bad09'" in message and "'bad10'" not in message
    assert "and 2 more" in message and "12 label value(s)" in message


def test_labels_may_be_class_names_or_indices(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv", "a,A,,t1,spam\nb,B,,t2,0\nc,C,,t3, ham \nd,D,,t4,1\ne,E,,t5,\n"
    )

    df = read_source(path)

    assert df["label"].tolist() == [1, 0, 0, 1, pd.NA]


def test_numeric_class_names_win_over_indices(tmp_path: Path) -> None:
    path = tmp_path / "stars.jsonl"
    path.write_text('{"t": "good", "stars": 5}\n{"t": "bad", "stars": 1.0}\n{"t": "ok"}\n')
    definition = define(columns={"text": "t", "label": "stars"}, classes=["1", "2", "3", "4", "5"])

    df = read_source(path, definition)

    assert df["label"].tolist() == [4, 0, pd.NA]


def test_header_only_source_has_no_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "empty.csv", "")

    with pytest.raises(SourceError, match="has no rows") as info:
        read_source(path)
    assert str(path) in str(info.value)


def test_two_roles_landing_on_one_column_name_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id1,A,,hi,0\n")
    definition = define(columns={"id": "COMMENT_ID", "text": "CONTENT", "keep": ["COMMENT_ID"]})

    with pytest.raises(SourceError, match="comment_id"):
        read_source(path, definition)


def test_unsupported_scheme_names_source() -> None:
    with pytest.raises(SourceError, match="unsupported source scheme") as info:
        read_source("gs://bucket/a.csv")
    assert "gs://bucket/a.csv" in str(info.value)


def test_s3_without_client_asks_for_one() -> None:
    with pytest.raises(SourceError, match="S3 client") as info:
        read_source("s3://bucket/raw/batch.parquet", s3_client=None)
    assert "s3://bucket/raw/batch.parquet" in str(info.value)


def test_parquet_bytes_round_trip_keeps_dtypes(csv_folder: Path) -> None:
    df = read_source(csv_folder)

    back = read_parquet_bytes(write_parquet_bytes(df))

    pd.testing.assert_frame_equal(back, df)


def test_read_parquet_bytes_rejects_garbage() -> None:
    with pytest.raises(SourceError, match="Parquet"):
        read_parquet_bytes(b"not parquet")


# --- http(s) sources, served from loopback ---------------------------------------------------


@dataclass
class Server:
    base_url: str
    requests: list[str]


def make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Youtube02-b.csv", HEADER + "id3,C,,three,1\n")
        archive.writestr("Youtube01-a.csv", HEADER + "id1,A,,one,0\nid2,B,,two,1\n")
        archive.writestr("__MACOSX/._Youtube01-a.csv", b"\x00\x05junk")
        archive.writestr("README.txt", "ignore me")
    return buffer.getvalue()


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    (root / "spam.zip").write_bytes(make_zip())
    write_csv(root / "one.csv", "id9,Z,,served,1\n")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_zip_url_reads_csv_members_and_skips_junk(http_server: Server, tmp_path: Path) -> None:
    df = read_source(f"{http_server.base_url}/spam.zip", timeout_s=5)

    assert df["comment_id"].tolist() == ["id1", "id2", "id3"]
    assert df["source_file"].tolist() == ["Youtube01-a.csv", "Youtube01-a.csv", "Youtube02-b.csv"]
    assert df["label"].tolist() == [0, 1, 1]


def test_url_download_is_reused_from_cache_dir(http_server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"{http_server.base_url}/spam.zip"

    first = read_source(url, cache_dir=cache, timeout_s=5)
    second = read_source(url, cache_dir=cache, timeout_s=5)

    pd.testing.assert_frame_equal(first, second)
    assert http_server.requests == ["/spam.zip"]
    assert [p.name.endswith("-spam.zip") for p in cache.iterdir()] == [True]


def test_csv_url_is_read_directly(http_server: Server) -> None:
    df = read_source(f"{http_server.base_url}/one.csv", timeout_s=5)

    assert df["text"].tolist() == ["served"]
    assert df["source_file"].tolist() == ["one.csv"]


def test_http_404_names_url_and_status(http_server: Server) -> None:
    url = f"{http_server.base_url}/missing.zip"

    with pytest.raises(SourceError) as info:
        read_source(url, timeout_s=5)
    assert url in str(info.value)
    assert "404" in str(info.value)


# --- the real dataset ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real dataset not found at {REAL_DATA}")
def test_real_youtube_spam_folder_keeps_its_quirks() -> None:
    df = read_source(REAL_DATA, load_dataset("youtube-spam"))

    assert len(df) == 1956
    assert df["label"].value_counts().to_dict() == {1: 1005, 0: 951}
    assert df["source_file"].nunique() == 5
    eminem = df[df["source_file"] == "Youtube04-Eminem.csv"]
    assert int(eminem["date"].isna().sum()) == 245
    # The missing dates are exactly Eminem's spam rows (SOURCE.md); nothing was filled in.
    assert (eminem.loc[eminem["date"].isna(), "label"] == 1).all()
    assert int(df["comment_id"].duplicated().sum()) == 3
    assert df["text"].str.contains("\ufeff", regex=False).any()


def test_normalized_batch_reads_back_unchanged(tmp_path: Path) -> None:
    """A raw batch written by ingest is a valid source again, provenance kept."""
    folder = tmp_path / "csvs"
    folder.mkdir()
    (folder / "a.csv").write_text(
        "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\nc1,x,2014-01-01,hello,1\nc2,y,,bye,0\n"
    )
    first = read_source(folder)
    path = tmp_path / "batch.parquet"
    path.write_bytes(write_parquet_bytes(first))
    again = read_source(path)
    pd.testing.assert_frame_equal(again, first)
    assert list(again["source_file"]) == ["a.csv", "a.csv"]


# --- formats and generated ids ----------------------------------------------------------------


def test_headerless_tsv_takes_names_from_the_definition(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text('r1\tpos\tsaid "great" film\tx\nr2\tneg\tdull\ty\n', encoding="utf-8")
    definition = define(
        header=False,
        column_names=["rid", "sentiment", "review", "extra"],
        columns={"id": "rid", "text": "review", "label": "sentiment"},
        classes=["neg", "pos"],
    )

    df = read_source(path, definition)

    assert list(df.columns) == ["rid", "text", "label", "source_file", "source_row"]
    # TSV has no quoting: a quote is an ordinary character.
    assert df["text"].tolist() == ['said "great" film', "dull"]
    assert df["label"].tolist() == [1, 0]


def test_tsv_row_with_more_fields_than_column_names_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("r1\tpos\tfine\tspill\n", encoding="utf-8")
    definition = define(
        header=False,
        column_names=["rid", "sentiment", "review"],
        columns={"id": "rid", "text": "review", "label": "sentiment"},
        classes=["neg", "pos"],
    )

    with pytest.raises(SourceError, match="more fields than the column_names") as info:
        read_source(path, definition)
    assert str(path) in str(info.value)


def test_json_lines_with_a_template_and_a_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "rel.jsonl"
    rows = [
        {"sentence": "The cup holds tea .", "e1": "tea", "e2": "cup", "rel": "Content"},
        {"sentence": "Smoke caused it .", "e1": "smoke", "rel": "Cause"},
        {"sentence": "A B .", "e1": "a", "e2": "", "rel": None},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    definition = define(
        columns={"template": "{sentence} [{e1} -> {e2}]", "label": "rel", "keep": ["e1"]},
        classes=["Cause", "Content"],
    )

    df = read_source(path, definition)

    assert list(df.columns) == ["id", "text", "label", "e1", "source_file", "source_row"]
    assert df["text"].tolist() == ["The cup holds tea . [tea -> cup]", pd.NA, pd.NA]
    assert df["label"].tolist() == [1, 0, pd.NA]
    assert df["e1"].tolist() == ["tea", "smoke", "a"]


def test_json_lines_that_is_not_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": "ok"}\n{"t": broken}\n', encoding="utf-8")
    definition = define(columns={"text": "t"})

    with pytest.raises(SourceError, match="line 2 is not JSON") as info:
        read_source(path, definition)
    assert str(path) in str(info.value)


def test_parquet_with_class_name_labels(tmp_path: Path) -> None:
    path = tmp_path / "batch.parquet"
    pd.DataFrame(
        {"msg": ["win cash", "hi mum", "later"], "tag": ["spam", "ham", None], "n": [1, 2, 3]}
    ).to_parquet(path, index=False)
    definition = define(columns={"text": "msg", "label": "tag", "keep": ["n"]})

    df = read_source(path, definition)

    assert df["label"].tolist() == [1, 0, pd.NA]
    assert df["n"].dtype == "string" and df["n"].tolist() == ["1", "2", "3"]


def test_folder_of_json_lines_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "b.jsonl").write_text('{"t": "three", "y": "spam"}\n', encoding="utf-8")
    (folder / "a.jsonl").write_text('{"t": "one"}\n{"t": "two", "y": 0}\n', encoding="utf-8")
    (folder / ".hidden.jsonl").write_text("not json\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    definition = define(columns={"text": "t", "label": "y"})

    df = read_source(folder, definition)

    assert df["text"].tolist() == ["one", "two", "three"]
    assert df["source_file"].tolist() == ["a.jsonl", "a.jsonl", "b.jsonl"]
    assert df["source_row"].tolist() == [0, 1, 0]
    assert df["label"].tolist() == [pd.NA, 0, 1]


def test_folder_of_mixed_formats_asks_for_a_format(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", "id1,A,,hi,0\n")
    (tmp_path / "b.jsonl").write_text('{"CONTENT": "x"}\n', encoding="utf-8")

    with pytest.raises(SourceError, match="several formats"):
        read_source(tmp_path)
    assert read_source(tmp_path, define(format="csv"))["text"].tolist() == ["hi"]


def test_generated_ids_are_stable_and_distinct_for_duplicate_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "x,A,,same,0\ny,A,,same,1\nz,B,,other,0\n")
    definition = define(columns={"text": "CONTENT", "label": "CLASS", "keep": ["AUTHOR"]})

    first = read_source(path, definition)
    again = read_source(path, definition)

    assert first["id"].is_unique and first["id"].notna().all()
    assert first["id"].tolist() == again["id"].tolist()
    # The id depends on the row's content, not on its label or file: an unlabeled copy of
    # the same rows, in another file, gets the same ids.
    copy = write_csv(
        tmp_path / "b.csv",
        "p,A,,same\nq,A,,same\nr,B,,other\n",
        header="COMMENT_ID,AUTHOR,DATE,CONTENT\n",
    )
    assert read_source(copy, definition)["id"].tolist() == first["id"].tolist()


def test_generated_ids_survive_a_parquet_round_trip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "x,A,,same,0\ny,A,,same,1\n")
    definition = define(columns={"text": "CONTENT", "label": "CLASS"})
    first = read_source(path, definition)
    batch = tmp_path / "batch.parquet"
    batch.write_bytes(write_parquet_bytes(first))

    pd.testing.assert_frame_equal(read_source(batch, definition), first)


def test_default_source_is_the_definitions(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id1,A,,hi,0\n")

    df = read_dataset(define(source=str(path)))

    assert df["text"].tolist() == ["hi"]


def test_read_table_gives_the_sources_own_columns_as_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1, "b": true, "c": [1]}\n{"a": 2.5, "b": ""}\n{"a": 3}\n')

    table = read_table(path, max_rows=2)

    assert list(table.columns) == ["a", "b", "c"]
    assert table["a"].tolist() == ["1", "2.5"]
    assert table["b"].tolist() == ["true", pd.NA]
    assert table["c"].tolist() == ["[1]", pd.NA]


def test_source_format_follows_the_suffixes(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", "")
    assert source_format(tmp_path) == "csv"
    assert source_format("s3://b/k/data.tsv") == "tsv"
    assert source_format("https://x.org/d.jsonl") == "jsonl"
    assert source_format(tmp_path / "x.txt") is None


def test_source_files_lists_a_folder_in_reading_order_with_sizes(csv_folder: Path) -> None:
    from mlsys.data.definition import load_dataset
    from mlsys.data.sources import source_files

    files = source_files(load_dataset("youtube-spam"), csv_folder)
    names = sorted(p.name for p in csv_folder.iterdir() if p.suffix == ".csv")
    assert [Path(f.location).name for f in files] == names
    assert [f.size for f in files] == [(csv_folder / n).stat().st_size for n in names]
    single = source_files(load_dataset("youtube-spam"), csv_folder / names[0])
    assert [(f.location, f.size) for f in single] == [(str(csv_folder / names[0]), None)]


def test_group_files_cuts_in_order_at_about_the_target() -> None:
    from mlsys.data.sources import SourceFile, group_files

    files = [SourceFile(n, s) for n, s in [("a", 40), ("b", 70), ("c", 300), ("d", 10), ("e", 5)]]
    assert group_files(files, 100) == [["a", "b"], ["c"], ["d", "e"]]
    assert group_files(files, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert group_files([SourceFile("x"), SourceFile("y", 1)], 100) == [["x"], ["y"]]
    with pytest.raises(ValueError, match="target_bytes must be at least 1, got 0"):
        group_files(files, 0)
