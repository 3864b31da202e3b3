"""The streaming scorer: chunking, casting to the signature, resumption, counts, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlsys.inference.batch import (
    FolderSink,
    ParquetRows,
    cast_to_signature,
    count_chunks,
    iter_chunks,
    part_name,
    score_chunks,
)
from mlsys.models.text import probabilities_frame

CONSTANTS = {"model_name": "m", "model_version": "3", "run_id": "r1"}


def _predict(frame: pd.DataFrame) -> pd.DataFrame:
    """A stand-in model: spam when the text is long."""
    label = (frame["text"].str.len() > 20).astype("int64")
    return pd.DataFrame({"label": label.to_numpy(), "probability": 0.9})


def _input(tmp_path: Path, rows: int = 25) -> Path:
    df = pd.DataFrame(
        {
            "comment_id": [f"c{i}" for i in range(rows)],
            "text": ["short" if i % 3 else "a much longer comment text" for i in range(rows)],
        }
    )
    path = tmp_path / "in.parquet"
    df.to_parquet(path, row_group_size=7)
    return path


def _all(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def test_chunks_cover_every_row_once_in_order(tmp_path: Path) -> None:
    path = _input(tmp_path)
    chunks = list(iter_chunks([path, path], chunk_rows=10))
    assert [(c.file, c.index, c.rows) for c in chunks] == [
        (0, 0, 10), (0, 1, 10), (0, 2, 5), (1, 0, 10), (1, 1, 10), (1, 2, 5),
    ]  # fmt: skip
    assert chunks[1].read().index[0] == 10 and chunks[1].name == part_name(0, 1)
    assert chunks[0].read()["text"].dtype == pd.StringDtype()


def test_csv_chunks_are_renamed_and_empty_cells_missing(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("COMMENT_ID,CONTENT\na,hello\nb,\nc,bye\n", encoding="utf-8")
    (chunk,) = iter_chunks([path], 5, rename={"COMMENT_ID": "comment_id", "CONTENT": "text"})
    assert list(chunk.read().columns) == ["comment_id", "text"]
    assert chunk.read()["text"].isna().tolist() == [False, True, False]


def test_scores_all_chunks_and_counts_add_up(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path / "out")
    results = score_chunks(
        iter_chunks([_input(tmp_path)], 10),
        _predict,
        sink,
        id_column="comment_id",
        constants=CONSTANTS,
    )
    assert [r.rows_in for r in results] == [10, 10, 5]
    assert all(r.rows_out == r.rows_in and not r.skipped for r in results)
    out = _all(tmp_path / "out")
    assert list(out.columns) == [
        "comment_id", "label", "probability", "model_name", "model_version", "run_id"
    ]  # fmt: skip
    assert out["comment_id"].tolist() == [f"c{i}" for i in range(25)]
    assert out["label"].tolist() == [0 if i % 3 else 1 for i in range(25)]
    assert set(out["model_version"]) == {"3"}


def test_rerun_skips_written_chunks_and_redoes_a_missing_one(tmp_path: Path) -> None:
    path, out = _input(tmp_path), tmp_path / "out"
    score_chunks(iter_chunks([path], 10), _predict, FolderSink(out), id_column="comment_id")
    first = _all(out)
    (out / part_name(0, 1)).unlink()
    calls: list[int] = []

    def counting(frame: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(frame))
        return _predict(frame)

    results = score_chunks(
        iter_chunks([path], 10), counting, FolderSink(out), id_column="comment_id"
    )
    assert [r.skipped for r in results] == [True, False, True]
    assert calls == [10]  # only the missing chunk was scored again
    pd.testing.assert_frame_equal(_all(out), first)


def test_partitions_split_the_chunks_between_workers(tmp_path: Path) -> None:
    path, out = _input(tmp_path), tmp_path / "out"
    a = score_chunks(iter_chunks([path], 5), _predict, FolderSink(out), partition=(0, 2))
    b = score_chunks(iter_chunks([path], 5), _predict, FolderSink(out), partition=(1, 2))
    assert [r.name for r in a] == [part_name(0, i) for i in (0, 2, 4)]
    assert [r.name for r in b] == [part_name(0, i) for i in (1, 3)]
    assert len(_all(out)) == 25
    assert _all(out)["row"].tolist() == [f"0:{i}" for i in range(25)]  # no id column given


def test_quarantined_rows_are_written_and_counted(tmp_path: Path) -> None:
    def check(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        bad = frame["text"] == "short"
        held = frame[bad].assign(quarantine_reason="too short")
        return frame[~bad], held

    quarantine = FolderSink(tmp_path / "q")
    results = score_chunks(
        iter_chunks([_input(tmp_path)], 10),
        _predict,
        FolderSink(tmp_path / "out"),
        id_column="comment_id",
        check=check,
        quarantine=quarantine,
    )
    assert sum(r.rows_out for r in results) == 9 and sum(r.rows_quarantined for r in results) == 16
    held = pd.read_parquet(tmp_path / "q" / part_name(0, 0))
    assert set(held["quarantine_reason"]) == {"too short"}
    # A rerun counts the quarantined rows of skipped chunks from their parts.
    again = score_chunks(
        iter_chunks([_input(tmp_path)], 10),
        _predict,
        FolderSink(tmp_path / "out"),
        id_column="comment_id",
        check=check,
        quarantine=quarantine,
    )
    assert [(r.rows_out, r.rows_quarantined, r.skipped) for r in again] == [
        (r.rows_out, r.rows_quarantined, True) for r in results
    ]


def test_cast_to_signature_types_and_errors() -> None:
    frame = pd.DataFrame(
        {"text": pd.array(["a", "b"], dtype="string"), "n": ["1", "2"], "x": ["0.5", "1"]}
    )
    cast = cast_to_signature(frame, [("text", "string"), ("n", "long"), ("x", "double")])
    assert cast["text"].dtype == object and cast["text"].tolist() == ["a", "b"]
    assert cast["n"].dtype == "int64" and cast["x"].dtype == "float64"
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['body'\]"):
        cast_to_signature(frame, [("body", "string")])
    with pytest.raises(ValueError, match="column 'n' cannot be cast to long: row 1 holds 'two'"):
        cast_to_signature(frame.assign(n=["1", "two"]), [("n", "long")])
    with pytest.raises(ValueError, match="column 'text' is missing a value in row 0"):
        cast_to_signature(
            frame.assign(text=pd.array([None, "b"], dtype="string")), [("text", "string")]
        )


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows must be a positive int"):
        list(iter_chunks([_input(tmp_path)], 0))
    with pytest.raises(ValueError, match=r"neither \.parquet nor \.csv"):
        list(iter_chunks([tmp_path / "in.json"], 10))
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype="string")}).to_parquet(empty)
    with pytest.raises(ValueError, match=r"'empty\.parquet' holds no rows"):
        list(iter_chunks([empty], 10))
    with pytest.raises(ValueError, match="id column 'id' is not in the input"):
        score_chunks(
            iter_chunks([_input(tmp_path)], 10),
            _predict,
            FolderSink(tmp_path / "o"),
            id_column="id",
        )
    with pytest.raises(ValueError, match=r"partition must be \(i, n\)"):
        score_chunks([], _predict, FolderSink(tmp_path / "o"), partition=(2, 2))


def test_a_model_returning_the_wrong_row_count_fails_the_chunk(tmp_path: Path) -> None:
    def short(frame: pd.DataFrame) -> pd.DataFrame:
        return _predict(frame).iloc[:-1]

    with pytest.raises(ValueError, match="returned 9 rows for 10 inputs"):
        score_chunks(iter_chunks([_input(tmp_path)], 10), short, FolderSink(tmp_path / "o"))
    assert not list((tmp_path / "o").glob("part-*"))  # nothing half-written
    assert pq.read_metadata(_input(tmp_path)).num_rows == 25


def test_count_chunks_matches_iter_chunks(tmp_path: Path) -> None:
    parquet = _input(tmp_path)
    csv = tmp_path / "in.csv"
    pd.read_parquet(parquet).to_csv(csv, index=False)
    for chunk_rows in (1, 7, 10, 25, 100):
        made = len(list(iter_chunks([parquet, csv], chunk_rows)))
        assert count_chunks([parquet, csv], chunk_rows) == made, chunk_rows


def _numbered(tmp_path: Path, rows: int, row_group: int) -> Path:
    path = tmp_path / f"n{rows}-{row_group}.parquet"
    pd.DataFrame({"n": range(rows), "text": [f"t{i}" for i in range(rows)]}).to_parquet(
        path, row_group_size=row_group
    )
    return path


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the Parquet reader decodes, batch by batch (pyarrow's iterator, counted)."""
    sizes: list[int] = []
    real = pq.ParquetFile.iter_batches

    def counting(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        for batch in real(self, *args, **kwargs):
            sizes.append(len(batch))
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    return sizes


@pytest.mark.parametrize("row_group", [3, 10, 16, 100])
def test_parquet_ranges_read_in_any_order_equal_the_file(tmp_path: Path, row_group: int) -> None:
    path = _numbered(tmp_path, 100, row_group)
    whole = pq.read_table(path)
    rows = ParquetRows(path, batch_rows=7)
    ranges = [(0, 10), (10, 10), (25, 5), (24, 1), (99, 1), (0, 100), (40, 33), (3, 0)]
    draw = random.Random(0)
    ranges += [(s, draw.randint(0, 100 - s)) for s in draw.sample(range(100), 20)]
    for start, count in ranges:
        assert rows.read(start, count).equals(whole.slice(start, count)), (start, count)
    with pytest.raises(ValueError, match=r"rows \[95, 105\) are outside .* which holds 100"):
        rows.read(95, 10)


def test_a_partition_decodes_only_the_row_groups_of_its_chunks(
    tmp_path: Path, decoded: list[int]
) -> None:
    path = _numbered(tmp_path, 100, 10)
    out = tmp_path / "out"
    score_chunks(iter_chunks([path], 10), _predict, FolderSink(out), partition=(1, 2))
    assert sum(decoded) == 50  # chunks 1, 3, 5, 7, 9: five row groups of ten
    decoded.clear()
    score_chunks(iter_chunks([path], 10), _predict, FolderSink(out), partition=(0, 2))
    assert sum(decoded) == 50
    assert _all(out)["row"].tolist() == [f"0:{i}" for i in range(100)]
    decoded.clear()
    again = score_chunks(iter_chunks([path], 10), _predict, FolderSink(out))
    assert all(r.skipped for r in again) and [r.rows_in for r in again] == [10] * 10
    assert decoded == []  # a resumed run reads nothing of the chunks done before


def test_a_row_group_spanning_chunks_is_decoded_once_per_worker(
    tmp_path: Path, decoded: list[int]
) -> None:
    path = _numbered(tmp_path, 100, 60)  # row groups [0, 60) and [60, 100)
    score_chunks(iter_chunks([path], 10), _predict, FolderSink(tmp_path / "o"), partition=(1, 3))
    # Chunks 1, 4, 7: rows [0, 50) of the first group are decoded once, in order; the
    # second group is entered at its start (60), not continued from row 50.
    assert sum(decoded) == 50 + 20 and max(decoded) <= 10


HELD_BETWEEN_READS = """
    import json, os, sys
    import pyarrow as pa, pyarrow.parquet as pq
    from pathlib import Path
    from mlsys.inference.batch import ParquetRows
    path = Path(sys.argv[1])
    texts = [os.urandom(256).hex() for _ in range(80_000)]  # incompressible, ~40 MiB
    pq.write_table(pa.table({"text": texts}), path, row_group_size=2_000)  # 40 groups
    del texts
    rows = ParquetRows(path, batch_rows=2_000)
    table = rows.read(0, 2_000)
    one_group = table.nbytes
    del table
    print(json.dumps({"held": pa.total_allocated_bytes(), "group": one_group}))
"""


def test_reading_a_chunk_holds_no_more_of_the_file_than_its_row_group(tmp_path: Path) -> None:
    """Between reads the reader holds a few row groups' worth (decoding buffers), however
    many follow:
    with pyarrow's default pre-buffering, the first read cached every later row group's
    column chunks, so a stream's memory grew with its input. In a fresh process, where
    Arrow's Python and C++ pools are one and its counter sees both."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HELD_BETWEEN_READS), str(tmp_path / "t.parquet")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["group"] > 1_000_000
    # Measured: about 4 groups' worth without pre-buffering, 35 of the 40 with it.
    assert found["held"] < 8 * found["group"], found


CLASSES = ("ham", "spam", "music")


def _predict_three(frame: pd.DataFrame) -> pd.DataFrame:
    """A stand-in 3-class model answering as the text classifier's pyfunc does: long
    texts spam, middling ones music, short ones ham."""
    length = frame["text"].str.len().to_numpy()[:, None]
    proba = np.where(
        length > 20,
        [[0.1, 0.7, 0.2]],
        np.where(length > 5, [[0.2, 0.2, 0.6]], [[0.8, 0.1, 0.1]]),
    )
    return probabilities_frame(proba, CLASSES)


THREE_OUTPUTS = [("label", "string"), ("probability", "double")] + [
    (f"proba_{name}", "double") for name in CLASSES
]


def test_parts_of_a_three_class_model_carry_names_and_every_class_probability(
    tmp_path: Path,
) -> None:
    texts = ["short", "middling", "a much longer comment text"] * 4
    path = tmp_path / "in.parquet"
    pd.DataFrame({"comment_id": [f"c{i}" for i in range(12)], "text": texts}).to_parquet(path)

    def check(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        held = frame.index >= 10  # the last chunk: every row quarantined
        return frame[~held], frame[held].assign(quarantine_reason="held")

    score_chunks(
        iter_chunks([path], 5),
        _predict_three,
        FolderSink(tmp_path / "out"),
        outputs=THREE_OUTPUTS,
        id_column="comment_id",
        constants=CONSTANTS,
        check=check,
        quarantine=FolderSink(tmp_path / "q"),
    )
    columns = ["comment_id", "label", "probability", "proba_ham", "proba_spam", "proba_music"]
    schemas = {p.name: pq.read_schema(p) for p in sorted((tmp_path / "out").glob("part-*.parquet"))}
    assert len(schemas) == 3 and len({str(s) for s in schemas.values()}) == 1  # one schema
    schema = schemas[part_name(0, 2)]  # the empty part
    assert schema.names == [*columns, *CONSTANTS]
    types = [schema.field(c).type for c in columns]
    assert all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types[:2])
    assert all(pa.types.is_float64(t) for t in types[2:])
    out = _all(tmp_path / "out")
    assert len(out) == 10
    assert out["label"].tolist() == ["ham", "music", "spam"] * 3 + ["ham"]
    assert out[["proba_ham", "proba_spam", "proba_music"]].sum(axis=1).tolist() == pytest.approx(
        [1.0] * 10
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["false", "FALSE", " no ", "0", "true", "True", "yes", "1"], [False] * 4 + [True] * 4),
        ([0, 1, 1], [False, True, True]),
        ([True, False], [True, False]),
    ],
)
def test_booleans_cast_from_words_and_numbers(values: list[Any], expected: list[bool]) -> None:
    cast = cast_to_signature(pd.DataFrame({"flag": values}), [("flag", "boolean")])
    assert cast["flag"].dtype == bool and cast["flag"].tolist() == expected


def test_a_value_that_is_no_boolean_is_named() -> None:
    frame = pd.DataFrame({"flag": pd.array(["true", "false", "maybe"], dtype="string")})
    with pytest.raises(ValueError, match="'flag' cannot be cast to boolean: row 2 holds 'maybe'"):
        cast_to_signature(frame, [("flag", "boolean")])
    with pytest.raises(ValueError, match="cannot be cast to boolean: row 1 holds 2"):
        cast_to_signature(pd.DataFrame({"flag": [1, 2]}), [("flag", "boolean")])


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_boolean_is_refused_not_read_as_false(blank: str) -> None:
    # A blank is no answer: refused with its row, as a missing value is (CSV reads an empty
    # field as missing), rather than taken as False the way Python's bool("") would.
    frame = pd.DataFrame({"flag": pd.array(["no", blank], dtype="string")})
    with pytest.raises(
        ValueError, match=f"'flag' cannot be cast to boolean: row 1 holds '{blank}'"
    ):
        cast_to_signature(frame, [("flag", "boolean")])


def test_uncastable_values_are_found_by_the_type_asked_for() -> None:
    # "1.5" is a number (so a numeric search would pass it) but no integer.
    frame = pd.DataFrame({"n": pd.array(["1", "1.5", "x"], dtype="string")})
    with pytest.raises(ValueError, match=r"cast to long: row 1 holds '1\.5'"):
        cast_to_signature(frame, [("n", "long")])
    with pytest.raises(ValueError, match="cast to double: row 2 holds 'x'"):
        cast_to_signature(frame, [("n", "double")])
    with pytest.raises(ValueError, match="signature type 'binary', which is not supported"):
        cast_to_signature(frame, [("n", "binary")])
