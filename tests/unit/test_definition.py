"""Unit tests for mlsys.data.definition: loading dataset.yaml files and every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsys.data.definition import (
    DatasetDefinition,
    DatasetError,
    kept_name,
    list_datasets,
    load_dataset,
    snake_case,
)

BASE: dict[str, Any] = {
    "name": "sms",
    "columns": {"id": "msg_id", "text": "message", "label": "label"},
    "classes": ["ham", "spam"],
}


def write(root: Path, data: dict[str, Any], folder: str | None = None) -> Path:
    target = root / (folder or str(data.get("name", "unnamed")))
    target.mkdir(parents=True, exist_ok=True)
    (target / "dataset.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return target


def refusal(tmp_path: Path, **changes: Any) -> str:
    write(tmp_path, {**BASE, **changes})
    with pytest.raises(DatasetError) as info:
        load_dataset("sms", tmp_path)
    return str(info.value)


def test_the_youtube_definition_loads_with_its_roles_and_policy() -> None:
    spec = load_dataset("youtube-spam")

    assert spec.classes == ("ham", "spam") and spec.k == 2
    assert spec.positive_index == 1 and spec.metric == "accuracy"
    assert spec.id_column == "comment_id"
    assert spec.kept_columns == ["author", "date"]
    assert spec.gold.by == "file" and spec.gold.files == ("Youtube05-Shakira.csv",)
    assert spec.gold.test_size == 250 and spec.gold.seed == 123
    assert spec.registered_model_name == "spam-classifier"
    assert Path(spec.resolved_source()).name == "youtube-spam"
    assert spec.suite_path("raw").is_file()


def test_a_minimal_definition_gets_the_default_gold_policy(tmp_path: Path) -> None:
    write(tmp_path, BASE)

    spec = load_dataset("sms", tmp_path)

    assert spec.gold.by == "fraction" and spec.gold.fraction == 0.2
    assert spec.metric == "accuracy" and spec.header is True
    assert list_datasets(tmp_path) == ["sms"]


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    spec = load_dataset("youtube-spam")
    folder = tmp_path / "youtube-spam"
    folder.mkdir()
    (folder / "dataset.yaml").write_text(spec.to_yaml(), encoding="utf-8")

    again = load_dataset("youtube-spam", tmp_path)

    assert again.model_dump(exclude={"folder"}) == spec.model_dump(exclude={"folder"})


def test_class_index_takes_names_and_indices() -> None:
    spec = DatasetDefinition.from_mapping(BASE, where="test")

    assert [spec.class_index(v) for v in ("ham", "spam", "0", " 1 ", 1)] == [0, 1, 0, 1, 1]
    with pytest.raises(DatasetError, match=r"'eggs' is not a class; classes are \['ham', 'spam'\]"):
        spec.class_index("eggs")
    with pytest.raises(DatasetError):
        spec.class_index(2)


def test_snake_case_and_kept_names() -> None:
    assert snake_case("COMMENT_ID") == "comment_id"
    assert snake_case("sentenceText") == "sentence_text"
    assert snake_case("\ufeffLike Count") == "like_count"
    assert kept_name("AUTHOR") == "author"
    assert kept_name("split") == "source_split"
    assert kept_name("proba_0") == "source_proba_0"


def test_unknown_field_is_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, metrik="f1")
    assert "field metrik: unknown field" in message
    assert "'f1'" in message
    assert str(tmp_path / "sms" / "dataset.yaml") in message


def test_positive_must_be_a_class(tmp_path: Path) -> None:
    message = refusal(tmp_path, positive="junk")
    assert "positive 'junk' is not one of the classes ['ham', 'spam']" in message


def test_f1_needs_a_binary_dataset(tmp_path: Path) -> None:
    message = refusal(tmp_path, classes=["a", "b", "c"], metric="f1")
    assert "metric 'f1'" in message and "3 classes" in message and "macro_f1" in message


def test_gold_by_column_needs_dev_and_test_values(tmp_path: Path) -> None:
    message = refusal(tmp_path, gold={"by": "column", "column": "split", "dev": ["valid"]})
    assert "gold.by is 'column' ('split')" in message
    assert "dev=['valid'], test=[]" in message


def test_template_must_name_a_field(tmp_path: Path) -> None:
    message = refusal(tmp_path, columns={"template": "no fields here"})
    assert "columns.template 'no fields here' names no column" in message


def test_text_and_template_are_exclusive(tmp_path: Path) -> None:
    message = refusal(tmp_path, columns={"text": "a", "template": "{a} {b}"})
    assert "exactly one of columns.text" in message and "text='a'" in message


def test_name_must_match_its_folder(tmp_path: Path) -> None:
    write(tmp_path, {**BASE, "name": "other"}, folder="sms")
    with pytest.raises(DatasetError) as info:
        load_dataset("sms", tmp_path)
    assert "field name: 'other' differs from its folder's name 'sms'" in str(info.value)


def test_header_false_needs_column_names(tmp_path: Path) -> None:
    message = refusal(tmp_path, header=False)
    assert "header is false: give the columns' names in column_names" in message


def test_column_names_must_hold_the_named_columns(tmp_path: Path) -> None:
    message = refusal(tmp_path, header=False, column_names=["msg_id", "message"])
    assert "['label']" in message and "column_names ['msg_id', 'message']" in message


def test_bad_name_and_too_few_classes_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="name 'SMS Spam' must be lower-case"):
        DatasetDefinition.from_mapping({**BASE, "name": "SMS Spam"}, where="test")
    with pytest.raises(DatasetError, match=r"at least 2 class names, found \['spam'\]"):
        DatasetDefinition.from_mapping({**BASE, "classes": ["spam"]}, where="test")


def test_unknown_dataset_lists_the_defined_ones(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    write(tmp_path, {**BASE, "name": "reviews"})

    with pytest.raises(DatasetError) as info:
        load_dataset("imagenet", tmp_path)
    message = str(info.value)
    assert "unknown dataset 'imagenet'" in message
    assert "defined datasets: reviews, sms" in message
    assert "mlsys dataset init imagenet" in message


def test_the_datasets_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, BASE)
    monkeypatch.setenv("MLSYS_DATASETS_DIR", str(tmp_path))

    # The environment's folders come first; the project's datasets stay defined.
    assert list_datasets() == ["sms", "youtube-spam"]
    assert load_dataset("sms").folder == (tmp_path / "sms").resolve()


def test_unreadable_yaml_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "sms"
    folder.mkdir()
    (folder / "dataset.yaml").write_text("name: [unclosed\n", encoding="utf-8")

    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset("sms", tmp_path)


def test_the_download_url_is_read_when_the_local_source_is_missing(tmp_path: Path) -> None:
    url = "https://example.org/sms.zip"
    present = tmp_path / "sms.csv"
    present.write_text("msg_id,message,label\n")
    write(tmp_path, {**BASE, "source": str(present), "download": url})
    assert load_dataset("sms", tmp_path).resolved_source() == str(present)
    write(tmp_path, {**BASE, "source": str(tmp_path / "gone.csv"), "download": url})
    assert load_dataset("sms", tmp_path).resolved_source() == url
    write(tmp_path, {**BASE, "download": url})
    assert load_dataset("sms", tmp_path).resolved_source() == url
    write(tmp_path, BASE)
    with pytest.raises(DatasetError, match="'sms' has no default source"):
        load_dataset("sms", tmp_path).resolved_source()


def test_several_roots_are_searched_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write(first, {**BASE, "metric": "f1", "positive": "spam"})
    write(second, BASE)
    write(second, {**BASE, "name": "news"})
    monkeypatch.setenv("MLSYS_DATASETS_DIR", f"{first}:{second}")
    assert load_dataset("sms").metric == "f1"  # the first root's definition wins
    assert load_dataset("news").folder == (second / "news").resolve()
    assert {"sms", "news", "youtube-spam"} <= set(list_datasets())
