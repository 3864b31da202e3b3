"""WRENCH folders: loading, errors naming file and id, evaluation, and `mlsys label evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from snorkel.labeling.model import MajorityLabelVoter
from typer.testing import CliRunner

from infra.cli.label import app
from mlsys.labeling.label_model import LabelModelConfig
from mlsys.labeling.wrench import WrenchError, evaluate_wrench, load_wrench

ACCURACIES = [0.95, 0.9, 0.7, 0.6]
SIZES = {"train": 60, "valid": 30, "test": 30}


def split_rows(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows: dict[str, Any] = {}
    for i in range(n):
        label = int(rng.integers(0, 2))
        votes = []
        for acc in ACCURACIES:
            if rng.random() < 0.3:
                votes.append(-1)
            else:
                votes.append(label if rng.random() < acc else 1 - label)
        rows[str(i)] = {
            "label": label,
            "weak_labels": votes,
            "data": {"text": f"comment {i} {'spam' if label else 'ham'}"},
        }
    return rows


@pytest.fixture
def wrench_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "youtube"
    folder.mkdir()
    for seed, (name, n) in enumerate(SIZES.items()):
        (folder / f"{name}.json").write_text(json.dumps(split_rows(n, seed)))
    (folder / "label.json").write_text(json.dumps({"0": "ham", "1": "spam"}))
    return folder


def test_load_reads_ids_texts_labels_and_label_matrix(wrench_dir: Path) -> None:
    data = load_wrench(wrench_dir)
    assert (len(data.train), len(data.valid), len(data.test)) == (60, 30, 30)
    assert data.train.L.shape == (60, 4) and data.train.L.dtype == np.int64
    assert data.train.labels.dtype == np.int64
    assert data.train.ids[:2] == ["0", "1"]
    assert data.train.texts[0].startswith("comment 0 ")
    assert data.cardinality == 2 and data.n_lfs == 4
    raw = json.loads((wrench_dir / "test.json").read_text())
    assert data.test.L[5].tolist() == raw["5"]["weak_labels"]


def test_missing_folder_and_missing_split_are_named(tmp_path: Path, wrench_dir: Path) -> None:
    with pytest.raises(WrenchError, match="WRENCH folder not found"):
        load_wrench(tmp_path / "nope")
    (wrench_dir / "test.json").unlink()
    with pytest.raises(WrenchError, match=r"split file not found: .*test\.json"):
        load_wrench(wrench_dir)


def test_invalid_json_names_the_file(wrench_dir: Path) -> None:
    (wrench_dir / "valid.json").write_text('{"0": {"label": 1,')
    with pytest.raises(WrenchError, match=r"valid\.json is not valid JSON"):
        load_wrench(wrench_dir)


def test_rows_with_another_number_of_lfs_name_the_id_and_both_counts(wrench_dir: Path) -> None:
    rows = json.loads((wrench_dir / "train.json").read_text())
    rows["7"]["weak_labels"] = [1, 0, 1]
    (wrench_dir / "train.json").write_text(json.dumps(rows))
    with pytest.raises(WrenchError, match=r"train\.json id '7' has 3 weak labels but id '0' has 4"):
        load_wrench(wrench_dir)


def test_splits_with_different_lf_counts_name_both_files(wrench_dir: Path) -> None:
    rows = json.loads((wrench_dir / "test.json").read_text())
    for row in rows.values():
        row["weak_labels"] = row["weak_labels"][:3]
    (wrench_dir / "test.json").write_text(json.dumps(rows))
    with pytest.raises(WrenchError, match=r"test\.json: rows have 3 weak labels but .*valid\.json"):
        load_wrench(wrench_dir)


def test_missing_keys_name_the_file_id_and_key(wrench_dir: Path) -> None:
    rows = json.loads((wrench_dir / "valid.json").read_text())
    del rows["3"]["weak_labels"]
    (wrench_dir / "valid.json").write_text(json.dumps(rows))
    with pytest.raises(WrenchError, match=r"valid\.json id '3': missing key\(s\) weak_labels"):
        load_wrench(wrench_dir)
    rows["3"]["weak_labels"] = [0, 0, 0, 0]
    rows["3"]["data"] = {"title": "no text"}
    (wrench_dir / "valid.json").write_text(json.dumps(rows))
    with pytest.raises(WrenchError, match=r"id '3': 'data' must be an object with a 'text' key"):
        load_wrench(wrench_dir)


def test_evaluate_scores_label_model_and_majority_vote_on_test(wrench_dir: Path) -> None:
    grid = [LabelModelConfig("label_model", n_epochs=100)]
    report = evaluate_wrench(wrench_dir, grid=grid)
    assert set(report) == {"metric", "label_model", "majority_vote"}
    assert report["metric"] == "accuracy"
    for name in ("label_model", "majority_vote"):
        scores = report[name]
        assert {"accuracy", "f1", "macro_f1", "valid_accuracy", "config"} <= set(scores)
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["f1"] <= 1.0
    assert report["majority_vote"]["config"] == {"kind": "majority_vote"}
    test = load_wrench(wrench_dir).test
    snorkel_mv = MajorityLabelVoter(cardinality=2).score(
        test.L, test.labels, tie_break_policy="random"
    )
    assert report["majority_vote"]["accuracy"] == pytest.approx(snorkel_mv["accuracy"])


def test_cli_json_prints_one_parseable_object(wrench_dir: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--wrench", str(wrench_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"metric", "label_model", "majority_vote"}
    assert {"accuracy", "f1", "macro_f1", "config"} <= set(report["label_model"])
    assert "fitting" in result.stderr and "chose" in result.stderr  # progress, not stdout


def test_cli_table_and_error_naming_the_path(tmp_path: Path, wrench_dir: Path) -> None:
    table = CliRunner().invoke(app, ["evaluate", "--wrench", str(wrench_dir), "--seed", "7"])
    assert table.exit_code == 0, table.output
    assert "label_model" in table.output and "majority_vote" in table.output
    missing = tmp_path / "missing"
    error = CliRunner().invoke(app, ["evaluate", "--wrench", str(missing)])
    assert error.exit_code == 1
    assert str(missing) in error.output


def test_end_model_learns_from_the_label_model_and_is_chosen_on_valid(wrench_dir: Path) -> None:
    """Texts that say their class: the end model generalizes past the LFs' noise."""
    from mlsys.labeling.end_model import EndModelConfig

    for name in SIZES:
        file = wrench_dir / f"{name}.json"
        rows = json.loads(file.read_text())
        for row in rows.values():
            row["data"]["text"] = "buy cheap pills now" if row["label"] else "what a lovely song"
        file.write_text(json.dumps(rows))
    grid = [EndModelConfig(lr=0.1, hidden=(), epochs=e, batch_size=8) for e in (1, 20)]
    report = evaluate_wrench(wrench_dir, end_model=True, end_model_grid=grid)
    end = report["end_model"]
    data = load_wrench(wrench_dir)
    assert end["train_rows"] == int((data.train.L != -1).any(axis=1).sum())
    assert end["config"]["epochs"] in (1, 20) and end["config"]["hidden"] == []
    assert 1 <= end["epochs"] <= end["config"]["epochs"]
    assert end["accuracy"] == 1.0 > report["label_model"]["accuracy"]


def test_end_model_flag_adds_end_model_to_the_json(
    wrench_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsys.labeling import end_model

    small = [end_model.EndModelConfig(lr=0.03, hidden=(), epochs=2, batch_size=16)]
    monkeypatch.setattr(end_model, "default_end_model_grid", lambda metric="accuracy": small)
    args = ["evaluate", "--wrench", str(wrench_dir), "--json", "--end-model"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"metric", "label_model", "majority_vote", "end_model"}
    assert 0.0 <= report["end_model"]["f1"] <= 1.0
    assert {"accuracy", "macro_f1", "config", "epochs"} <= set(report["end_model"])


def test_cli_metric_is_used_for_the_choice_and_reported(wrench_dir: Path) -> None:
    args = ["evaluate", "--wrench", str(wrench_dir), "--json", "--metric", "f1", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metric"] == "f1"
    assert "valid_f1" in report["label_model"] and "valid_f1" in report["majority_vote"]
    assert result.stderr == ""


def test_cli_rejects_an_unknown_metric_naming_it(wrench_dir: Path) -> None:
    args = ["evaluate", "--wrench", str(wrench_dir), "--metric", "auc"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown metric 'auc'" in result.output and "macro_f1" in result.output


def test_three_classes_are_read_from_label_json_and_scored_with_macro_f1(
    wrench_dir: Path,
) -> None:
    (wrench_dir / "label.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    data = load_wrench(wrench_dir)
    assert data.cardinality == 3
    grid = [LabelModelConfig("weighted_vote")]
    report = evaluate_wrench(data, grid=grid, metric="macro_f1")
    assert report["metric"] == "macro_f1"
    assert "valid_macro_f1" in report["label_model"]


def test_relation_rows_give_the_end_model_the_span_between_the_entities(
    wrench_dir: Path,
) -> None:
    rows = json.loads((wrench_dir / "train.json").read_text())
    rows["0"]["data"] = {
        "text": "Fog caused delays at the airport .",
        "entity1": "Fog",
        "entity2": "delays",
        "span1": [0, 3],
        "span2": [11, 17],
    }
    rows["1"]["data"]["span1"] = [5, 999]  # outside the text: the whole text is kept
    rows["1"]["data"]["span2"] = [0, 2]
    (wrench_dir / "train.json").write_text(json.dumps(rows))
    train = load_wrench(wrench_dir).train
    assert train.texts[0] == "Fog caused delays at the airport ."
    assert train.model_texts[0] == "Fog caused delays"
    assert train.model_texts[1] == train.texts[1]
    assert train.model_texts[2] == train.texts[2]  # no spans


LF_FILE = """
from snorkel.labeling import labeling_function
from mlsys.labeling.lf import keyword_lf

@labeling_function()
def entity_is_a(x):
    return 1 if x.entity1 == "a" else -1

LF_SETS = {
    "default": [
        keyword_lf(["spam"], "spam", name="says_spam"),
        keyword_lf(["ham"], 0, name="says_ham"),
        entity_is_a,
    ],
}
"""


def _votes(text: str, entity1: str) -> list[int]:
    """What LF_FILE's LFs vote on a row."""
    return [
        1 if "spam" in text else -1,
        0 if "ham" in text else -1,
        1 if entity1 == "a" else -1,
    ]


@pytest.fixture
def voted_dir(tmp_path: Path) -> Path:
    """A folder whose train and valid votes are its LFs' votes on its rows, and whose test
    votes belong to other rows (each row's votes are the next row's)."""
    folder = tmp_path / "voted"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, n in SIZES.items():
        rows = {}
        for i in range(n):
            label = int(rng.integers(0, 2))
            word = ("spam" if label else "ham") if rng.random() < 0.8 else "song"
            entity1 = "a" if label and rng.random() < 0.5 else "b"
            text = f"row {i} {word}"
            data = {"text": text, "entity1": entity1, "span1": [0, 3]}
            rows[str(i)] = {"label": label, "weak_labels": _votes(text, entity1), "data": data}
        if name == "test":
            ids = list(rows)
            shifted = [rows[ids[(k + 1) % n]]["weak_labels"] for k in range(n)]
            for row_id, votes in zip(ids, shifted, strict=True):
                rows[row_id]["weak_labels"] = votes
        (folder / f"{name}.json").write_text(json.dumps(rows))
    (folder / "label.json").write_text(json.dumps({"0": "ham", "1": "spam"}))
    (tmp_path / "lfs.py").write_text(LF_FILE)
    return folder


def test_votes_are_checked_against_the_lfs_and_revote_scores_the_lfs_own(
    voted_dir: Path,
) -> None:
    from mlsys.labeling.wrench import check_votes, load_lf_file

    lfs = load_lf_file(voted_dir.parent / "lfs.py")
    data = load_wrench(voted_dir)
    checks, matrices = check_votes(data, lfs)
    assert checks["train"] == {"rows": 60, "rows_matching": 1.0, "lfs_differing": {}}
    assert checks["valid"]["rows_matching"] == 1.0
    test = checks["test"]
    assert test["rows"] == 30 and test["rows_matching"] < 0.9
    assert set(test["lfs_differing"]) <= {"says_spam", "says_ham", "entity_is_a"}
    assert all(0.0 <= share < 1.0 for share in test["lfs_differing"].values())
    truth = np.array([_votes(d["text"], d["entity1"]) for d in data.test.data])
    assert (matrices["test"] == truth).all() and (matrices["train"] == data.train.L).all()

    # Scoring on the LFs' own votes is scoring a folder whose files hold them.
    revoted = evaluate_wrench(voted_dir, lfs=lfs, revote=True)
    rows = json.loads((voted_dir / "test.json").read_text())
    for row in rows.values():
        row["weak_labels"] = _votes(row["data"]["text"], row["data"]["entity1"])
    (voted_dir / "test.json").write_text(json.dumps(rows))
    clean = evaluate_wrench(voted_dir)
    assert revoted["votes"]["revoted"] is True
    for report in (revoted, clean):
        del report["label_model"]["seconds"]
    assert revoted["label_model"] == clean["label_model"]
    assert revoted["majority_vote"] == clean["majority_vote"]


def test_cli_warns_of_votes_that_do_not_match_the_lfs(voted_dir: Path) -> None:
    lf_file = str(voted_dir.parent / "lfs.py")
    args = ["evaluate", "--wrench", str(voted_dir), "--lfs", lf_file, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["votes"]["train"]["rows_matching"] == 1.0 and not report["votes"]["revoted"]
    assert "warning: in test, the file's votes differ from the LFs'" in result.stderr
    assert "--revote" in result.stderr and "in train" not in result.stderr
    table = CliRunner().invoke(app, [*args[:-1], "--revote", "--quiet"])
    assert table.exit_code == 0, table.output
    assert "label_model" in table.stdout and "measure the file's votes" in table.stderr

    alone = CliRunner().invoke(app, ["evaluate", "--wrench", str(voted_dir), "--revote"])
    assert alone.exit_code == 2 and "--revote needs --lfs" in alone.output
    unknown = CliRunner().invoke(app, [*args, "--lf-set", "other"])
    assert unknown.exit_code == 1 and "no LF set 'other'" in unknown.output
    assert "['default']" in unknown.output


def test_lfs_that_do_not_fit_the_folder_are_refused_naming_why(
    voted_dir: Path, tmp_path: Path
) -> None:
    from mlsys.labeling.wrench import check_votes, load_lf_file

    data = load_wrench(voted_dir)
    lfs = load_lf_file(voted_dir.parent / "lfs.py")
    with pytest.raises(WrenchError, match=r"2 LFs given, but the rows of .* have 3 weak labels"):
        check_votes(data, lfs[:2])
    bad = tmp_path / "bad.py"
    bad.write_text(LF_FILE.replace('"spam", name=', '"eggs", name='))
    with pytest.raises(WrenchError, match="'eggs' is not one of the classes \\['ham', 'spam'\\]"):
        check_votes(data, load_lf_file(bad))
    with pytest.raises(WrenchError, match="LF file not found"):
        load_lf_file(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no')")
    with pytest.raises(WrenchError, match="failed to import: RuntimeError"):
        load_lf_file(broken)
