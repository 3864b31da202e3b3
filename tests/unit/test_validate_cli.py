"""`mlsys validate`: exit status, JSON shape and messages, on the real YouTube CSVs and on a
dataset defined in the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from infra.cli import app
from mlsys.data.definition import PROJECT_DIR
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
    document = load_suite(PROJECT_DIR / "gx" / "expectations" / f"{suite}.json")
    assert document["name"] == suite and document["expectations"]
    # The YouTube dataset's own suites start as the GX project's.
    own = load_suite(PROJECT_DIR / "datasets" / "youtube-spam" / "suites" / f"{suite}.json")
    assert own["expectations"] == document["expectations"]


# --- a dataset defined in the test -----------------------------------------------------------


@pytest.fixture
def relations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A JSON Lines dataset "relations" under a datasets folder given by the environment."""
    rows = [
        {"sid": f"s{i}", "sentence": f"sentence {i} about things", "rel": ["A", "B", "C"][i % 3]}
        for i in range(30)
    ]
    source = tmp_path / "relations.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    folder = tmp_path / "datasets" / "relations"
    folder.mkdir(parents=True)
    (folder / "dataset.yaml").write_text(
        "name: relations\n"
        f"source: {source}\n"
        "columns: {id: sid, text: sentence, label: rel}\n"
        "classes: [A, B, C]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MLSYS_DATASETS_DIR", str(tmp_path / "datasets"))
    return source


def test_infer_writes_into_the_datasets_suites_folder_by_default(relations: Path) -> None:
    target = relations.parent / "datasets" / "relations" / "suites" / "raw.json"

    code, out = _run(
        "infer", "--dataset", "relations", "--source", str(relations), "--suite", "raw",
        "--id-column", "sid",
    )  # fmt: skip

    assert code == 0, out
    assert str(target) in out
    suite = load_suite(target)
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    assert {"sid", "text", "label", "source_file", "source_row"} <= columns


def test_run_reads_json_lines_through_the_definition_with_its_suite(relations: Path) -> None:
    code, out = _run(
        "infer", "--dataset", "relations", "--source", str(relations), "--suite", "raw",
        "--id-column", "sid",
    )  # fmt: skip
    assert code == 0, out

    code, out = _run(
        "run", "--dataset", "relations", "--suite", "raw", "--source", str(relations), "--json"
    )

    assert code == 0, out
    report = json.loads(out)
    assert (report["rows_in"], report["rows_passed"]) == (30, 30)


def test_run_without_the_datasets_suite_names_the_missing_file(relations: Path) -> None:
    code, out = _run("run", "--dataset", "relations", "--suite", "raw", "--source", str(relations))
    assert code == 2 and "no suite file" in out and "relations/suites/raw.json" in out


def test_unknown_dataset_is_named_with_the_defined_ones(youtube_dir: Path) -> None:
    code, out = _run("run", "--dataset", "imagenet", "--suite", "raw", "--source", str(youtube_dir))
    assert code == 2 and "unknown dataset 'imagenet'" in out and "youtube-spam" in out
