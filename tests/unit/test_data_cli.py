"""`mlsys data show` on a local batch, and its error for a missing file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from infra.cli.data import app
from mlsys.data import write_parquet_bytes


def test_show_prints_counts_and_head(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "text": pd.array(["check out my channel", "great song"], dtype="string"),
            "label": pd.array([1, 0], dtype="Int64"),
            "source_file": pd.array(["a.csv", "a.csv"], dtype="string"),
        }
    )
    path = tmp_path / "b.parquet"
    path.write_bytes(write_parquet_bytes(df))
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 rows, 3 columns" in result.output
    assert "labels:  0=1, 1=1" in result.output
    assert "great song" in result.output


def test_show_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    result = CliRunner().invoke(app, ["show", str(missing)])
    assert result.exit_code == 1
    assert str(missing) in result.output


def test_show_counts_splits_and_label_sources_of_a_labeled_batch(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "text": pd.array(["a", "b", "c"], dtype="string"),
            "split": pd.array(["train", "train", "dev"], dtype="string"),
            "label_source": pd.array(["weak", "none", "gold"], dtype="string"),
        }
    )
    path = tmp_path / "labeled.parquet"
    path.write_bytes(write_parquet_bytes(df))
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "splits:  dev=1, train=2" in result.output
    assert "sources: gold=1, none=1, weak=1" in result.output
