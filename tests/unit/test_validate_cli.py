"""`mlsys validate`: exit status, JSON shape and messages, on the real YouTube CSVs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlsys.cli import app
from mlsys.validation.suites import load_suite

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", *args])
    return result.exit_code, result.output


def test_youtube_folder_passes_raw_suite_in_quarantine_mode(youtube_dir: Path) -> None:
    code, out = _run(
        "run", "--suite", "raw", "--source", str(youtube_dir), "--mode", "quarantine", "--json"
    )
    assert code == 0, out
    report = json.loads(out)
    assert (report["rows_in"], report["rows_passed"], report["rows_quarantined"]) == (
        1956,
        1953,
        3,
    )
    assert [f["expectation"] for f in report["failed"]] == ["expect_column_values_to_be_unique"]
    warned = {(w["column"], w["count"]) for w in report["warnings"]}
    assert ("date", 245) in warned  # Eminem's empty dates: reported, not dropped


def test_fail_mode_exits_1_listing_the_failed_expectation(youtube_dir: Path) -> None:
    code, out = _run("run", "--suite", "raw", "--source", str(youtube_dir))
    assert code == 1
    assert "FAILED comment_id: expect_column_values_to_be_unique failed on 6 rows" in out
    assert out.rstrip().endswith("FAILED")


def test_quarantine_out_writes_rows_with_reasons(youtube_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "q.parquet"
    code, _ = _run(
        "run",
        "--suite",
        "raw",
        "--source",
        str(youtube_dir),
        "--mode",
        "quarantine",
        "--quarantine-out",
        str(target),
    )
    assert code == 0
    rows = pd.read_parquet(target)
    assert len(rows) == 3
    assert set(rows["quarantine_reason"]) == {"comment_id: expect_column_values_to_be_unique"}


def test_unreadable_source_exits_2_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, out = _run("run", "--suite", "raw", "--source", str(empty))
    assert code == 2
    assert "empty.csv is empty" in out


def test_bad_mode_and_unknown_suite_are_named(youtube_dir: Path) -> None:
    code, out = _run("run", "--suite", "raw", "--source", str(youtube_dir), "--mode", "lenient")
    assert code == 2 and "'lenient'" in out
    code, out = _run("run", "--suite", "nightly", "--source", str(youtube_dir))
    assert code == 2 and "unknown suite 'nightly'" in out


def test_skew_of_serving_input_against_training_data(youtube_dir: Path, tmp_path: Path) -> None:
    psy = tmp_path / "psy"
    psy.mkdir()
    shutil.copy(youtube_dir / "Youtube01-Psy.csv", psy)
    code, out = _run(
        "run",
        "--suite",
        "serving",
        "--source",
        str(psy),
        "--reference",
        str(youtube_dir),
        "--skew",
        "--json",
    )
    assert code == 0, out
    (drift,) = json.loads(out)["drift"]
    assert drift["kind"] == "skew" and drift["feature"] == "text" and drift["on"] == "length"
    assert 0 < drift["value"] < 1


def test_infer_writes_a_suite_that_the_batch_passes(youtube_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "inferred.json"
    code, out = _run(
        "infer",
        "--source",
        str(youtube_dir),
        "--suite",
        "raw",
        "--id-column",
        "comment_id",
        "--output",
        str(target),
    )
    assert code == 0, out
    suite = load_suite(target)
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_unique", "comment_id") in kinds
    assert ("expect_column_value_lengths_to_be_between", "text") in kinds
    assert ("expect_column_values_to_be_in_set", "label") in kinds
    assert suite["meta"]["mlsys"]["version"] == 1

    code, out = _run(
        "infer", "--source", str(youtube_dir), "--suite", "raw", "--output", str(target)
    )
    assert code == 2 and "exists; pass --force" in out


@pytest.mark.parametrize("suite", ["raw", "training", "serving"])
def test_shipped_suites_load(suite: str) -> None:
    document = load_suite(
        Path(__file__).resolve().parents[2] / "gx" / "expectations" / f"{suite}.json"
    )
    assert document["name"] == suite and document["expectations"]
