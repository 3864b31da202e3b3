"""GX checkpoints on the shipped suites: the real YouTube quirks, bad input, labeled batches.

Every test runs real Great Expectations (no mocks) on a scratch copy of ``gx/``. One run
takes about 0.2 s once GX is imported, so the real-data reports are module fixtures.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlsys.data import (
    SourceError,
    read_parquet_bytes,
    write_parquet_bytes,
)
from mlsys.data.definition import load_dataset
from mlsys.labeling.apply import apply_lfs
from mlsys.labeling.batch import build_labeled_batch, split_unlabelable
from mlsys.labeling.label_model import LabelModelConfig, fit_label_model
from mlsys.labeling.split import holdout_split
from mlsys.validation.checkpoint import (
    REASON_COLUMN,
    CheckpointReport,
    Failure,
    ValidationFailed,
    ensure_project,
    gx_dir,
    load_shipped_suite,
    run_checkpoint,
)
from tests.conftest import read_youtube

PSY = "Youtube01-Psy.csv"
UNIQUE = "expect_column_values_to_be_unique"
COLUMN_SET = "expect_table_columns_to_match_set"
TYPE_LIST = "expect_column_values_to_be_in_type_list"
HEADER = "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\n"
HTML = r"<[A-Za-z/][^>]*>|&(amp|lt|gt|quot|#\d+);"


@pytest.fixture(scope="module")
def youtube(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir)


@pytest.fixture(scope="module")
def psy(youtube_dir: Path) -> pd.DataFrame:
    return read_youtube(youtube_dir / PSY)


@pytest.fixture(scope="module")
def raw_suite() -> dict[str, object]:
    return load_shipped_suite("raw")


@pytest.fixture(scope="module")
def quarantined(youtube: pd.DataFrame, raw_suite: dict[str, object]) -> CheckpointReport:
    return run_checkpoint(youtube, raw_suite, mode="quarantine")


@pytest.fixture(scope="module")
def failed(youtube: pd.DataFrame, raw_suite: dict[str, object]) -> CheckpointReport:
    return run_checkpoint(youtube, raw_suite, mode="fail")


@pytest.fixture(scope="module")
def labeled(youtube: pd.DataFrame) -> pd.DataFrame:
    """The labeled batch as the weak-labeling stage writes it: tutorial LFs, majority vote
    (no LabelModel fit, to stay fast), through Parquet as it is stored."""
    df, _ = split_unlabelable(youtube)
    df = holdout_split(df)
    lfs = load_dataset("youtube-spam").lf_set("tutorial")
    matrix = apply_lfs(df, lfs, id_column="comment_id", n_jobs=1).matrix
    train = (df["split"] == "train").to_numpy()
    labeler = fit_label_model(matrix[train], LabelModelConfig("majority_vote"))
    frame = build_labeled_batch(df, matrix, labeler).frame
    return read_parquet_bytes(write_parquet_bytes(frame))


@pytest.fixture(scope="module")
def clean_labeled(labeled: pd.DataFrame) -> pd.DataFrame:
    return labeled.drop_duplicates("comment_id").reset_index(drop=True)


def _only(failures: list[Failure], expectation: str, column: str | None = None) -> Failure:
    found = [f for f in failures if f.expectation == expectation and f.column == column]
    assert len(found) == 1, f"expected one {expectation} on {column}, got {failures}"
    return found[0]


def _conserved(report: CheckpointReport) -> None:
    assert report.rows_in == report.rows_passed + report.rows_quarantined
    json.dumps(report.to_dict())  # the --json output never chokes on GX's numpy values


# --- the raw suite on the real YouTube folder --------------------------------------------------


def test_raw_quarantine_sets_aside_the_later_copy_of_each_repeated_id(
    youtube: pd.DataFrame, quarantined: CheckpointReport
) -> None:
    report = quarantined
    assert report.ok
    assert (report.rows_in, report.rows_passed, report.rows_quarantined) == (1956, 1953, 3)
    _conserved(report)
    repeated = youtube[youtube["comment_id"].duplicated(keep=False)]
    later = repeated[repeated["comment_id"].duplicated(keep="first")]
    first = repeated[~repeated["comment_id"].duplicated(keep="first")]
    where = ["source_file", "source_row"]
    assert report.quarantined[where].values.tolist() == later[where].values.tolist()
    assert sorted(later["source_row"].tolist()) == [212, 283, 305]
    kept = report.passed.merge(first[where], on=where)
    assert sorted(kept["comment_id"]) == sorted(first["comment_id"])
    assert report.passed["comment_id"].is_unique
    assert report.quarantined[REASON_COLUMN].tolist() == [f"comment_id: {UNIQUE}"] * 3
    (failure,) = report.failures
    assert (failure.expectation, failure.column, failure.count, failure.row_rule) == (
        UNIQUE,
        "comment_id",
        6,
        True,
    )
    assert sorted(failure.observed) == sorted(later["comment_id"])


def test_raw_reports_eminem_empty_dates_bom_and_html_as_warnings(
    youtube: pd.DataFrame, quarantined: CheckpointReport
) -> None:
    report = quarantined
    assert {w.severity for w in report.warnings} == {"warning"}
    dates = _only(report.warnings, "expect_column_values_to_not_be_null", "date")
    no_date = youtube[youtube["date"].isna()]
    assert dates.count == len(no_date) == 245
    assert set(no_date["source_file"]) == {"Youtube04-Eminem.csv"}
    # A warning never quarantines: every dateless row not repeated is among the passed rows.
    assert not report.quarantined[REASON_COLUMN].str.contains("date").any()
    assert report.passed["date"].isna().sum() + report.quarantined["date"].isna().sum() == 245

    text_rules = [w for w in report.warnings if w.column == "text"]
    by_regex = {w.kwargs["regex"]: w for w in text_rules}
    assert set(by_regex) == {"\ufeff", HTML}
    assert by_regex["\ufeff"].count == youtube["text"].str.contains("\ufeff").sum() > 1000
    html = youtube.loc[youtube["text"].map(lambda text: bool(re.search(HTML, text))), "text"]
    assert by_regex[HTML].count == len(html) > 100
    assert all("\ufeff" in example for example in by_regex["\ufeff"].observed)
    # Examples are cut to 80 characters, so the markup may lie beyond the cut.
    for example in by_regex[HTML].observed:
        assert html.str.startswith(example.split("... (")[0]).any()
    assert not [f for f in report.failures if f.column in ("date", "text")]
    assert "WARNING date: expect_column_values_to_not_be_null failed on 245 rows" in (
        report.summary()
    )


def test_raw_fail_mode_fails_on_uniqueness_and_keeps_every_row(
    failed: CheckpointReport,
) -> None:
    assert not failed.ok
    assert failed.to_dict()["success"] is False
    (failure,) = failed.failures
    assert (failure.expectation, failure.column, failure.row_rule) == (UNIQUE, "comment_id", True)
    assert (failed.rows_passed, failed.rows_quarantined) == (1956, 0)
    assert list(failed.quarantined.columns)[-1] == REASON_COLUMN
    error = ValidationFailed(failed)
    assert error.report is failed
    assert f"FAILED comment_id: {UNIQUE} failed on 6 rows (critical)" in str(error)


# --- bad input: a clear error or a quarantine, never a crash and never a lost row ---------------


def test_csv_missing_a_required_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "no-content.csv"
    path.write_text("COMMENT_ID,AUTHOR,DATE,CLASS\nc1,ann,2015-01-01,0\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"has no column CONTENT"):
        read_youtube(path)


def test_frame_missing_author_fails_the_batch_naming_it(
    psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    report = run_checkpoint(psy.drop(columns="author"), raw_suite, mode="quarantine")
    assert not report.ok
    columns = _only(report.batch_failures, COLUMN_SET)
    assert "author" in columns.kwargs["column_set"]
    assert "author" not in columns.observed
    assert any("author" in str(f.observed) for f in report.failures if f.column == "author")
    assert (report.rows_passed, report.rows_quarantined) == (len(psy), 0)
    _conserved(report)


def test_extra_column_fails_the_batch_naming_it(
    tmp_path: Path, psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    # A source's columns that the dataset's definition does not name are not read...
    path = tmp_path / "extra.csv"
    path.write_text(HEADER[:-1] + ",LIKES\nc1,ann,2015-01-01,hello,0,12\n", encoding="utf-8")
    assert "likes" not in read_youtube(path).columns
    # ...and a batch that has one anyway fails the raw suite's column set.
    batch = psy.head(1).assign(likes=pd.array(["12"], dtype="string"))
    report = run_checkpoint(batch, raw_suite, mode="quarantine")
    assert not report.ok
    (failure,) = report.failures
    assert failure.expectation == COLUMN_SET and not failure.row_rule
    assert set(failure.observed) - set(failure.kwargs["column_set"]) == {"likes"}
    assert "likes" in str(failure)
    _conserved(report)


def test_labels_as_strings_fail_the_type_check_with_the_observed_type(
    psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    report = run_checkpoint(
        psy.assign(label=psy["label"].astype(str)), raw_suite, mode="quarantine"
    )
    assert not report.ok
    types = _only(report.batch_failures, TYPE_LIST, "label")
    assert types.observed == "str"
    assert types.kwargs["type_list"] == ["Int64Dtype"]
    # The value-set rule also fails on every row, but a batch failure quarantines nothing.
    assert report.rows_quarantined == 0
    _conserved(report)


def test_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.csv is empty"):
        read_youtube(path)
    path.write_text(HEADER, encoding="utf-8")
    with pytest.raises(SourceError, match="has no rows"):
        read_youtube(path)


def test_non_utf8_bytes_raise(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "c1,José,2015-01-01,café olé,0\n").encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin1\.csv is not valid UTF-8.*0xe9"):
        read_youtube(path)


def test_one_megabyte_comment_is_quarantined_for_its_length(
    tmp_path: Path, psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    as_in_csv = {
        "comment_id": "COMMENT_ID",
        "author": "AUTHOR",
        "date": "DATE",
        "text": "CONTENT",
        "label": "CLASS",
    }
    batch = psy.drop(columns=["source_file", "source_row"]).rename(columns=as_in_csv)
    batch.loc[7, "CONTENT"] = "spam " * 200_000
    path = tmp_path / "long.csv"
    batch.to_csv(path, index=False)
    report = run_checkpoint(read_youtube(path), raw_suite, mode="quarantine")
    assert report.ok
    assert report.rows_quarantined == 1
    row = report.quarantined.iloc[0]
    assert row["source_row"] == 7 and len(row["text"]) == 1_000_000
    assert row[REASON_COLUMN] == "text: expect_column_value_lengths_to_be_between"
    length = _only(report.failures, "expect_column_value_lengths_to_be_between", "text")
    assert length.count == 1 and length.kwargs["max_value"] == 10_000
    # The example is cut, not the 1 MB value.
    assert len(length.observed[0]) < 120
    _conserved(report)


def test_long_example_reports_the_real_length(
    psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    batch = psy.copy()
    batch.loc[7, "text"] = "x" * 1_000_000
    report = run_checkpoint(batch, raw_suite, mode="quarantine")
    length = _only(report.failures, "expect_column_value_lengths_to_be_between", "text")
    assert length.observed == ["x" * 80 + "... (1000000 chars)"]


@pytest.mark.parametrize("column", ["text", "author"])
def test_all_null_column_quarantines_every_row_with_the_reason(
    psy: pd.DataFrame, raw_suite: dict[str, object], column: str
) -> None:
    batch = psy.assign(**{column: pd.array([None] * len(psy), dtype="string")})
    report = run_checkpoint(batch, raw_suite, mode="quarantine")
    assert report.ok
    assert (report.rows_passed, report.rows_quarantined) == (0, len(psy))
    reasons = set(report.quarantined[REASON_COLUMN])
    assert reasons == {f"{column}: expect_column_values_to_not_be_null"}
    nulls = _only(report.failures, "expect_column_values_to_not_be_null", column)
    assert nulls.count == len(psy) and nulls.row_rule
    _conserved(report)


def test_unterminated_quote_raises(tmp_path: Path) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(
        HEADER + 'c1,ann,2015-01-01,"never closed,0\nc2,bob,2015-01-02,fine,1\n', encoding="utf-8"
    )
    with pytest.raises(SourceError, match=r"cannot parse CSV .*quote\.csv.*EOF inside string"):
        read_youtube(path)


def test_unquoted_comma_in_the_first_row_is_caught(tmp_path: Path) -> None:
    """One field too many in the first data row would make pandas take the first column
    as an index, shifting every value one column left: the reader refuses the file."""
    path = tmp_path / "comma.csv"
    path.write_text(
        HEADER + "c1,ann,2015-01-01,hello, world,0\nc2,bob,2015-01-02,fine,1\n", encoding="utf-8"
    )
    with pytest.raises(SourceError, match=r"comma\.csv: a row has more fields than the header"):
        read_youtube(path)


def test_parquet_with_another_schema(tmp_path: Path, raw_suite: dict[str, object]) -> None:
    path = tmp_path / "other.parquet"
    pd.DataFrame({"id": [1, 2], "body": ["a", "b"], "score": [0.1, 0.2]}).to_parquet(path)
    with pytest.raises(SourceError, match=r"other\.parquet has no column"):
        read_youtube(path)
    report = run_checkpoint(pd.read_parquet(path), raw_suite, mode="quarantine")
    assert not report.ok
    columns = _only(report.batch_failures, COLUMN_SET)
    assert sorted(columns.observed) == ["body", "id", "score"]
    # The column rules cannot run; GX's error is reported, not raised.
    missing = [f for f in report.failures if f.column == "comment_id"]
    assert missing and all(f.observed == "column 'comment_id' is missing" for f in missing)
    assert (report.rows_passed, report.rows_quarantined) == (2, 0)


def test_bad_mode_and_unknown_suite_are_rejected(
    psy: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'strict'"):
        run_checkpoint(psy, raw_suite, mode="strict")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no validation definition for suite 'gold'"):
        run_checkpoint(psy, {**raw_suite, "name": "gold"})
    with pytest.raises(ValueError, match=r"unknown suite 'gold'.*raw, serving, training"):
        load_shipped_suite("gold")


# --- the training suite on a labeled batch --------------------------------------------------------


def test_training_suite_on_the_labeled_batch(labeled: pd.DataFrame) -> None:
    report = run_checkpoint(labeled, load_shipped_suite("training"), mode="quarantine")
    assert report.ok
    assert not report.batch_failures
    assert report.rows_quarantined == 3
    assert set(report.quarantined[REASON_COLUMN]) == {f"comment_id: {UNIQUE}"}
    _conserved(report)


def test_training_class_balance_fails_the_batch(clean_labeled: pd.DataFrame) -> None:
    batch = clean_labeled.assign(label=pd.array([1] * len(clean_labeled), dtype="Int64"))
    report = run_checkpoint(batch, load_shipped_suite("training"), mode="quarantine")
    assert not report.ok
    (failure,) = report.failures
    assert (failure.expectation, failure.column, failure.observed, failure.row_rule) == (
        "expect_column_mean_to_be_between",
        "label",
        1.0,
        False,
    )
    assert (failure.kwargs["min_value"], failure.kwargs["max_value"]) == (0.2, 0.8)
    assert report.rows_quarantined == 0


def test_training_quarantines_overconfident_and_zero_weight_weak_rows(
    clean_labeled: pd.DataFrame,
) -> None:
    batch = clean_labeled.copy()
    weak = batch.index[batch["label_source"] == "weak"][57]
    gold = batch.index[batch["label_source"] == "gold"][3]
    batch.loc[weak, "weight"] = 0.0
    batch.loc[gold, "confidence"] = 1.5
    unlabeled = batch.index[batch["label_source"] == "none"]
    assert len(unlabeled) > 0 and (batch.loc[unlabeled, "weight"] == 0).all()

    report = run_checkpoint(batch, load_shipped_suite("training"), mode="quarantine")
    assert report.ok
    reasons = dict(
        zip(report.quarantined["comment_id"], report.quarantined[REASON_COLUMN], strict=True)
    )
    assert reasons == {
        batch.loc[weak, "comment_id"]: "weight: expect_column_values_to_be_between",
        batch.loc[gold, "comment_id"]: "confidence: expect_column_values_to_be_between",
    }
    # Weight 0 is fine where no label exists: the rule only looks at labeled rows.
    assert set(batch.loc[unlabeled, "comment_id"]) <= set(report.passed["comment_id"])
    conditioned = _only(report.failures, "expect_column_values_to_be_between", "weight")
    assert conditioned.observed == [0.0] and conditioned.kwargs["strict_min"] is True
    _conserved(report)


# --- the serving suite and skew -------------------------------------------------------------------


def test_serving_skew_against_training_data(clean_labeled: pd.DataFrame) -> None:
    suite = load_shipped_suite("serving")
    training = clean_labeled[clean_labeled["split"] == "train"]
    serving = clean_labeled.loc[clean_labeled["split"] != "train", ["text"]]
    near = run_checkpoint(serving, suite, reference=training, drift_kind="skew")
    assert near.ok and not near.failures
    (entry,) = near.drift
    assert (entry.metric_name, entry.kind, entry.on) == ("skew_js_text_length", "skew", "length")
    assert 0 <= entry.value < entry.threshold and not entry.drifted

    longer = pd.DataFrame({"text": (serving["text"] + " ") * 8})
    far = run_checkpoint(longer, suite, reference=training, drift_kind="skew")
    (moved,) = far.drift
    assert moved.drifted and moved.value > entry.value
    assert far.ok  # the shipped skew threshold is a warning
    assert "DRIFT skew of text length" in far.summary()
    assert far.to_dict()["drift"][0]["feature"] == "text"

    strict = {**suite, "meta": {"mlsys": {**suite["meta"]["mlsys"]}}}
    strict["meta"]["mlsys"]["drift"] = [
        {**suite["meta"]["mlsys"]["drift"][0], "severity": "critical"}
    ]
    stopped = run_checkpoint(
        longer, strict, mode="quarantine", reference=training, drift_kind="skew"
    )
    assert not stopped.ok and stopped.critical_drift


# --- the GX project ------------------------------------------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "uncommitted" not in p.parts
    }


def test_ensure_project_is_idempotent_on_the_shipped_project(tmp_path: Path) -> None:
    shutil.copytree(gx_dir(), tmp_path / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    before = _digests(tmp_path / "gx")
    assert ensure_project(tmp_path) == []
    assert ensure_project(tmp_path) == []
    assert _digests(tmp_path / "gx") == before


def test_ensure_project_creates_a_missing_project_once(
    tmp_path: Path, clean_labeled: pd.DataFrame
) -> None:
    (tmp_path / "gx" / "expectations").mkdir(parents=True)
    suite = gx_dir() / "expectations" / "serving.json"
    shutil.copy(suite, tmp_path / "gx" / "expectations")
    created = ensure_project(tmp_path)
    assert created == [
        "setting progress_bars off",
        "data source mlsys",
        "asset serving",
        "batch definition serving/whole-batch",
        "validation definition serving",
        "checkpoint serving",
    ]
    after_first = _digests(tmp_path / "gx")
    assert ensure_project(tmp_path) == []
    assert _digests(tmp_path / "gx") == after_first
    assert (tmp_path / "gx" / "expectations" / "serving.json").read_bytes() == suite.read_bytes()
    report = run_checkpoint(
        clean_labeled[["text"]].head(50), load_shipped_suite("serving"), project_root=tmp_path
    )
    assert report.ok and report.rows_passed == 50


def test_a_batch_without_rows_is_refused(raw_suite: dict[str, object]) -> None:
    empty = pd.DataFrame({"comment_id": pd.Series([], dtype="string")})
    with pytest.raises(
        ValueError, match="the batch has no rows: nothing to validate with suite 'raw'"
    ):
        run_checkpoint(empty, raw_suite)


def test_a_checkpoint_keeps_no_reference_to_the_batch(
    youtube: pd.DataFrame, raw_suite: dict[str, object]
) -> None:
    """GX keeps the last context it made, and through it the last batch it validated, as
    its module-wide current project; run_checkpoint lets go of it, so a stream of chunks
    does not hold the previous chunk while it reads the next."""
    import gc

    from great_expectations.execution_engine.pandas_batch_data import PandasBatchData

    report = run_checkpoint(youtube, raw_suite, mode="quarantine")
    gc.collect()
    assert report.rows_in == len(youtube)
    assert [o for o in gc.get_objects() if isinstance(o, PandasBatchData)] == []
