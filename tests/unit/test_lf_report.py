"""`mlsys label lfs`: a dataset's LF set summarized on its own data, in the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import app
from mlsys.data import read_dataset
from mlsys.data.definition import load_dataset
from mlsys.labeling.report import lf_report

LFS = """
from mlsys.labeling.lf import keyword_lf

LF_SETS = {
    "default": [
        keyword_lf(["win"], "spam"),
        keyword_lf(["thanks"], "ham"),
        keyword_lf(["meeting"], 0, name="meeting_is_ham"),
    ],
    "broken": [keyword_lf(["x"], "eggs")],
}
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A binary dataset of 40 messages: rows 0-29 train, 30-34 dev, 35-39 test."""
    rows = ["id,text,label,part"]
    for i in range(40):
        spam = i % 2 == 1
        text = ("win a prize now" if spam else "thanks for the meeting") + f" {i}"
        part = "test" if i >= 35 else "dev" if i >= 30 else "train"
        rows.append(f"m{i},{text},{'spam' if spam else 'ham'},{part}")
    source = tmp_path / "messages.csv"
    source.write_text("\n".join(rows) + "\n")
    folder = tmp_path / "datasets" / "tiny"
    folder.mkdir(parents=True)
    (folder / "dataset.yaml").write_text(
        f"name: tiny\nsource: {source}\ncolumns: {{id: id, text: text, label: label}}\n"
        "classes: [ham, spam]\npositive: spam\nmetric: f1\n"
        "gold: {by: column, column: part, dev: [dev], test: [test]}\n"
    )
    (folder / "lfs.py").write_text(LFS)
    monkeypatch.setenv("MLSYS_DATASETS_DIR", str(tmp_path / "datasets"))
    return folder


def test_report_summarizes_each_lf_on_train_and_dev(tiny: Path) -> None:
    definition = load_dataset("tiny")
    report = lf_report(definition, read_dataset(definition), n_jobs=1)
    summary = report.summary
    assert list(summary.index) == ["keyword_win", "keyword_thanks", "meeting_is_ham"]
    assert summary.loc["keyword_win", "polarity"] == ["spam"]
    assert summary.loc["meeting_is_ham", "polarity"] == ["ham"]
    assert summary["coverage"].tolist() == [0.5, 0.5, 0.5]
    assert summary["dev_accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert report.coverage_train == 1.0 and report.majority_vote_dev == 1.0
    assert report.rows["unreadable"] == 0 and report.rows["train"] == 30
    assert "keyword_thanks" in report.table()


def test_cli_prints_the_table_and_json(tiny: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["label", "lfs", "tiny", "--n-jobs", "1"])
    assert table.exit_code == 0, table.output
    assert "keyword_win" in table.output and "coverage on train 1.000" in table.output
    result = runner.invoke(app, ["label", "lfs", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["lf"] for row in report["lfs"]] == [
        "keyword_win", "keyword_thanks", "meeting_is_ham",
    ]  # fmt: skip
    assert report["rows"] == {"train": 30, "dev": 5, "test": 5, "unreadable": 0}


def test_cli_names_an_lf_voting_a_class_that_does_not_exist(tiny: Path) -> None:
    result = CliRunner().invoke(app, ["label", "lfs", "tiny", "--lf-set", "broken"])
    assert result.exit_code == 2
    assert "'eggs' is not a class" in result.output and "['ham', 'spam']" in result.output


def test_cli_names_an_unknown_lf_set(tiny: Path) -> None:
    result = CliRunner().invoke(app, ["label", "lfs", "tiny", "--lf-set", "nope"])
    assert result.exit_code == 2 and "no LF set 'nope'" in result.output
