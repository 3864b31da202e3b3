"""`mlsys dataset init | list | show`, and the suites init infers, run as checkpoints."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from mlsys.data.definition import PROJECT_DIR, DatasetDefinition, load_dataset
from mlsys.data.propose import stored_source
from mlsys.data.sources import read_dataset
from mlsys.validation.checkpoint import run_checkpoint
from mlsys.validation.infer import infer_dataset_suites
from mlsys.validation.suites import load_suite

SEMEVAL = PROJECT_DIR.parent / "shared" / "data" / "semeval-raw" / "relations.jsonl"
runner = CliRunner()
needs_semeval = pytest.mark.skipif(not SEMEVAL.is_file(), reason=f"{SEMEVAL} not found")


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["dataset", *args])
    return result.exit_code, result.output


def _yaml(root: Path, name: str) -> dict[str, object]:
    data = yaml.safe_load((root / name / "dataset.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def reviews_tsv(tmp_path: Path) -> Path:
    """A header-less TSV: 60 reviews, a fifth of them negative, no id column."""
    rng = random.Random(7)
    lines = []
    for i in range(60):
        negative = i % 5 == 0
        words = ["awful", "boring", "refund"] if negative else ["lovely", "great", "moving"]
        text = f"review {i}: {rng.choice(words)} film, {rng.choice(words)} acting"
        lines.append(f"{'neg' if negative else 'pos'}\t{text}\tuser{i % 7}")
    path = tmp_path / "reviews.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def semeval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SEMEVAL.is_file():
        pytest.skip(f"{SEMEVAL} not found")
    root = tmp_path_factory.mktemp("datasets")
    result = runner.invoke(
        app, ["dataset", "init", "semeval", "--source", str(SEMEVAL), "--root", str(root)]
    )
    assert result.exit_code == 0, result.output
    return root


# --- init ------------------------------------------------------------------------------------


@needs_semeval
def test_init_guesses_the_semeval_definition(semeval_root: Path) -> None:
    data = _yaml(semeval_root, "semeval")

    assert data["source"] == str(SEMEVAL)
    assert data["format"] == "jsonl"
    assert data["columns"] == {
        "id": "id",
        "text": "sentence",
        "label": "relation",
        "keep": ["entity1", "entity2"],
    }
    classes = data["classes"]
    assert isinstance(classes, list) and len(classes) == 9 and classes == sorted(classes)
    assert "Member-Collection" in classes
    # 763 Member-Collection rows against 72 Product-Producer: imbalanced, so macro F1.
    assert data["metric"] == "macro_f1"
    assert "positive" not in data
    assert data["gold"] == {
        "by": "column",
        "column": "split",
        "dev": ["valid"],
        "test": ["test"],
        "test_size": 0.5,
        "seed": 123,
    }


@needs_semeval
def test_init_writes_suites_and_a_starter_lf_module_that_loads(semeval_root: Path) -> None:
    definition = load_dataset("semeval", semeval_root)

    for suite in ("raw", "training", "serving"):
        assert load_suite(definition.suite_path(suite))["name"] == suite
    lfs = definition.lf_set()
    assert len(lfs) == 2
    assert len({lf.name for lf in lfs}) == 2
    module = definition.lf_module_object()
    assert module.LF_SETS["default"]
    text = definition.path("lfs.py").read_text(encoding="utf-8")
    assert "keyword_lf" in text and "x.text" in text and "ABSTAIN" in text


@needs_semeval
def test_init_prints_its_guesses_and_the_next_commands(tmp_path: Path) -> None:
    code, out = _run("init", "semeval", "--source", str(SEMEVAL), "--root", str(tmp_path))

    assert code == 0, out
    assert "metric    macro_f1  (guessed:" in out
    assert "gold      by column split: dev ['valid'], test ['test']" in out
    assert "read 2527 rows (2527 labeled)" in out
    assert str(tmp_path / "semeval" / "dataset.yaml") in out
    assert "mlsys validate run --dataset semeval" in out


def test_init_on_a_headerless_tsv_with_column_names(reviews_tsv: Path, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    code, out = _run(
        "init",
        "reviews",
        "--source",
        str(reviews_tsv),
        "--no-header",
        "--columns",
        "sentiment,review,user",
        "--root",
        str(root),
    )

    assert code == 0, out
    data = _yaml(root, "reviews")
    assert data["header"] is False
    assert data["column_names"] == ["sentiment", "review", "user"]
    assert data["format"] == "tsv"
    assert data["columns"] == {"text": "review", "label": "sentiment", "keep": ["user"]}
    assert data["classes"] == ["neg", "pos"]
    # neg is 20 % of the labeled rows: the minority class, and F1 about it.
    assert data["positive"] == "neg" and data["metric"] == "f1"
    assert data["gold"] == {"by": "fraction", "fraction": 0.2, "test_size": 0.5, "seed": 123}
    definition = load_dataset("reviews", root)
    raw = read_dataset(definition)
    assert list(raw.columns) == ["id", "text", "label", "user", "source_file", "source_row"]
    assert raw["id"].is_unique
    assert {lf.name for lf in definition.lf_set()} == {"keyword_neg", "keyword_pos"}


def test_init_overrides_replace_the_guesses(reviews_tsv: Path, tmp_path: Path) -> None:
    code, out = _run(
        "init",
        "reviews",
        "--source",
        str(reviews_tsv),
        "--no-header",
        "--columns",
        "sentiment,review,user",
        "--keep",
        "",
        "--metric",
        "accuracy",
        "--positive",
        "pos",
        "--gold-fraction",
        "0.3",
        "--test-size",
        "10",
        "--seed",
        "5",
        "--root",
        str(tmp_path),
    )

    assert code == 0, out
    data = _yaml(tmp_path, "reviews")
    assert data["columns"] == {"text": "review", "label": "sentiment"}
    assert data["metric"] == "accuracy" and data["positive"] == "pos"
    assert data["gold"] == {"by": "fraction", "fraction": 0.3, "test_size": 10, "seed": 5}


def test_init_without_labels_writes_placeholder_lfs(tmp_path: Path) -> None:
    source = tmp_path / "posts.csv"
    source.write_text("post_id,body\np1,hello there\np2,buy now\n", encoding="utf-8")
    root = tmp_path / "datasets"

    code, out = _run(
        "init", "posts", "--source", str(source), "--classes", "ok,abuse", "--root", str(root)
    )

    assert code == 0, out
    definition = load_dataset("posts", root)
    assert definition.columns.label is None and definition.id_column == "post_id"
    assert len(definition.lf_set()) == 2
    assert "placeholders" in definition.path("lfs.py").read_text(encoding="utf-8")


def test_init_refuses_to_overwrite_without_force_and_keeps_lfs(
    reviews_tsv: Path, tmp_path: Path
) -> None:
    args = ["init", "reviews", "--source", str(reviews_tsv), "--no-header"]
    args += ["--columns", "sentiment,review,user", "--root", str(tmp_path)]
    assert _run(*args)[0] == 0
    lfs = tmp_path / "reviews" / "lfs.py"
    lfs.write_text("LF_SETS = {'default': []}\n", encoding="utf-8")

    code, out = _run(*args)
    assert code == 2 and "exists; pass --force" in out

    code, out = _run(*args, "--force", "--metric", "accuracy")
    assert code == 0, out
    assert _yaml(tmp_path, "reviews")["metric"] == "accuracy"
    assert lfs.read_text(encoding="utf-8") == "LF_SETS = {'default': []}\n"
    assert "kept the existing" in out


@needs_semeval
def test_a_bad_guess_fails_naming_the_value_and_writes_nothing(tmp_path: Path) -> None:
    code, out = _run(
        "init",
        "semeval",
        "--source",
        str(SEMEVAL),
        "--classes",
        "Cause-Effect,Component-Whole",
        "--root",
        str(tmp_path),
    )

    assert code == 2
    assert "are not classes of dataset 'semeval'" in out
    assert "'Member-Collection'" in out
    assert not (tmp_path / "semeval").exists()


def test_init_errors_name_the_problem(reviews_tsv: Path, tmp_path: Path) -> None:
    code, out = _run("init", "r", "--source", str(reviews_tsv), "--no-header")
    assert code == 2 and "--no-header needs the column names" in out
    code, out = _run("init", "r", "--source", str(tmp_path / "x.bin"))
    assert code == 2 and "cannot tell the format" in out
    code, out = _run(
        "init", "r", "--source", str(reviews_tsv), "--no-header", "--columns", "a,b,c",
        "--label", "nope", "--root", str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "['nope'] are not in the source" in out
    code, out = _run(
        "init", "Bad Name", "--source", str(reviews_tsv), "--no-header", "--columns", "a,b,c",
        "--label", "a", "--root", str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "name 'Bad Name'" in out


def test_stored_source_is_relative_to_the_project_when_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    assert stored_source("../shared/data/semeval-raw/relations.jsonl") == (
        "../shared/data/semeval-raw/relations.jsonl"
    )
    assert stored_source("s3://bucket/key.csv") == "s3://bucket/key.csv"
    assert stored_source("/abs/path.csv") == "/abs/path.csv"
    monkeypatch.chdir(tmp_path)
    stored = stored_source("data.csv")
    assert (PROJECT_DIR / stored).resolve() == (tmp_path / "data.csv").resolve()


def test_a_data_folder_beside_the_project_may_be_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "disk" / "data"
    project.mkdir()
    elsewhere.mkdir(parents=True)
    (elsewhere / "rows.csv").write_text("a\n1\n")
    (tmp_path / "shared").symlink_to(elsewhere)
    monkeypatch.chdir(project)
    assert stored_source("../shared/rows.csv", project) == "../shared/rows.csv"
    # A link inside the project is kept as given; two folders up is stored where it leads.
    (project / "far").symlink_to(tmp_path / "disk")
    assert stored_source("../project/far/data/rows.csv", project) == "far/data/rows.csv"
    deep = project / "sub"
    deep.mkdir()
    assert stored_source("../rows.csv", deep) == str(tmp_path / "rows.csv")


# --- list and show ---------------------------------------------------------------------------


@needs_semeval
def test_list_shows_name_classes_metric_and_source(semeval_root: Path) -> None:
    code, out = _run("list", "--root", str(semeval_root))

    assert code == 0, out
    assert f"semeval  k=9  metric=macro_f1  source={SEMEVAL}" in out


def test_list_of_the_project_includes_youtube_spam() -> None:
    code, out = _run("list")
    assert code == 0 and "youtube-spam  k=2  metric=accuracy" in out


@needs_semeval
def test_show_prints_definition_lf_sets_and_suites(semeval_root: Path) -> None:
    code, out = _run("show", "semeval", "--root", str(semeval_root))

    assert code == 0, out
    assert "metric: macro_f1" in out
    assert "default: 2 LFs" in out
    assert "raw: " in out and "expectations, v1" in out
    assert "training: " in out and "serving: " in out


def test_show_names_the_bad_field_of_a_bad_definition(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "dataset.yaml").write_text(
        "name: broken\ncolumns: {text: t}\nclasses: [a, b]\npositive: c\n", encoding="utf-8"
    )

    code, out = _run("show", "broken", "--root", str(tmp_path))
    assert code == 2
    assert "positive 'c' is not one of the classes ['a', 'b']" in out

    code, out = _run("show", "missing", "--root", str(tmp_path))
    assert code == 2 and "unknown dataset 'missing'" in out and "broken" in out


# --- inferred suites, run as checkpoints -----------------------------------------------------


def _labeled(raw: pd.DataFrame, k: int) -> pd.DataFrame:
    """A labeled batch shaped as weak labeling writes it."""
    n = len(raw)
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(k), size=n)
    weak = proba.argmax(axis=1)
    weak[::10] = -1
    split = pd.array(np.resize(["train", "train", "dev", "test"], n), dtype="string")
    frame = raw.drop(columns=["label"]).assign(split=split)
    frame["gold_label"] = raw["label"].where(frame["split"] != "train").astype("Int64")
    frame["weak_label"] = weak.astype(np.int64)
    for c in range(k):
        frame[f"proba_{c}"] = proba[:, c]
    frame["confidence"] = proba.max(axis=1)
    gold = (frame["split"] == "dev").to_numpy()
    label = pd.Series(np.where(weak >= 0, weak, -1), dtype="Int64").mask(weak < 0)
    label[gold] = raw["label"][gold]
    frame["label"] = label.astype("Int64")
    source = np.where(gold, "gold", np.where(weak >= 0, "weak", "none"))
    frame["label_source"] = pd.array(source, dtype="string")
    frame["weight"] = np.where(source == "none", 0.0, np.where(gold, 1.0, 0.7))
    return frame


@pytest.fixture(scope="module")
def reviews_suites(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]]:
    folder = tmp_path_factory.mktemp("reviews")
    path = folder / "reviews.csv"
    rows = [
        f"r{i},{'neg' if i % 4 == 0 else 'pos'},review number {i} of the film,"
        f"{'2024-01-0' + str(1 + i % 9)},{'en' if i % 3 else 'de'}"
        for i in range(40)
    ]
    path.write_text("rid,stars,body,day,lang\n" + "\n".join(rows) + "\n", encoding="utf-8")
    definition = DatasetDefinition.from_mapping(
        {
            "name": "reviews",
            "source": str(path),
            "columns": {"id": "rid", "text": "body", "label": "stars", "keep": ["day", "lang"]},
            "classes": ["neg", "pos"],
        },
        where="test",
    )
    raw = read_dataset(definition)
    return definition, raw, infer_dataset_suites(definition, raw, inferred_from=str(path))


def test_inferred_raw_suite_passes_its_batch_and_catches_a_bad_row(
    reviews_suites: tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]],
) -> None:
    _, raw, suites = reviews_suites
    assert run_checkpoint(raw, suites["raw"]).ok

    bad = raw.copy()
    bad.loc[3, "label"] = 7
    bad.loc[5, "text"] = pd.NA
    report = run_checkpoint(bad, suites["raw"], mode="quarantine")
    assert report.rows_quarantined == 2
    reasons = set(report.quarantined["quarantine_reason"])
    assert reasons == {
        "label: expect_column_values_to_be_in_set",
        "text: expect_column_values_to_not_be_null",
    }


def test_inferred_raw_suite_allows_unlabeled_batches(
    reviews_suites: tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]],
) -> None:
    _, raw, suites = reviews_suites
    unlabeled = raw.assign(label=pd.array([pd.NA] * len(raw), dtype="Int64"))
    assert run_checkpoint(unlabeled, suites["raw"]).ok


def test_inferred_training_suite_passes_a_labeled_batch_and_catches_a_bad_row(
    reviews_suites: tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]],
) -> None:
    definition, raw, suites = reviews_suites
    labeled = _labeled(raw, definition.k)
    report = run_checkpoint(labeled, suites["training"])
    assert report.ok, report.summary()

    labeled.loc[2, "proba_1"] = 1.5
    report = run_checkpoint(labeled, suites["training"], mode="quarantine")
    assert report.rows_quarantined == 1
    assert "proba_1: expect_column_values_to_be_between" in report.quarantined.iloc[0].iloc[-1]


def test_inferred_serving_suite_takes_a_raw_batch_without_its_label(
    reviews_suites: tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]],
) -> None:
    _, raw, suites = reviews_suites
    assert run_checkpoint(raw, suites["serving"]).ok
    assert run_checkpoint(raw.drop(columns=["label"]), suites["serving"]).ok

    bad = raw.copy()
    bad.loc[0, "lang"] = "fr"
    report = run_checkpoint(bad, suites["serving"], mode="quarantine")
    assert report.rows_quarantined == 1


def test_inferred_suites_hold_what_each_batch_holds(
    reviews_suites: tuple[DatasetDefinition, pd.DataFrame, dict[str, dict[str, object]]],
) -> None:
    _, raw, suites = reviews_suites

    def columns(suite: dict[str, object]) -> list[str]:
        expectations = suite["expectations"]
        assert isinstance(expectations, list)
        (table,) = [e for e in expectations if e["type"] == "expect_table_columns_to_match_set"]
        return list(table["kwargs"]["column_set"])

    assert columns(suites["raw"]) == list(raw.columns)
    assert columns(suites["serving"]) == [c for c in raw.columns if c != "label"]
    assert columns(suites["training"]) == [
        *(c for c in raw.columns if c != "label"),
        "split", "gold_label", "weak_label", "proba_0", "proba_1", "confidence", "label",
        "label_source", "weight",
    ]  # fmt: skip
    for name, suite in suites.items():
        assert suite["name"] == name
        meta = suite["meta"]
        assert isinstance(meta, dict) and meta["mlsys"]["inferred_from"]
