"""Read a WRENCH weak-supervision benchmark folder and score label models on it.

The protocol: the label model is fitted on train's label matrix (no gold label), every
choice (labeler, prior, threshold, end model) is made on valid's gold labels, and test is
only scored. Nothing is trained on valid; what is estimated there (LF accuracies, class
prior, a threshold) is scored by cross-validation over valid before it is chosen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsys.labeling.end_model import EndModelConfig, train_end_model
from mlsys.labeling.label_model import ABSTAIN, LabelModelConfig, fit_labeler
from mlsys.training.evaluate import check_metric

__all__ = [
    "SPLITS",
    "WrenchDataset",
    "WrenchError",
    "WrenchSplit",
    "check_votes",
    "evaluate_wrench",
    "load_lf_file",
    "load_wrench",
]

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


class WrenchError(ValueError):
    """A WRENCH folder could not be read; the message names the file and, where known, the id."""


@dataclass(frozen=True, eq=False)
class WrenchSplit:
    """One split: row ids, texts, gold labels (int64, n) and the label matrix L (int64, n x m).

    ``inputs`` is what the end model reads: the text itself, or for a relation row (its
    ``data`` gives the two entity mentions' character spans ``span1`` and ``span2``) the
    stretch of the sentence from the first mention to the end of the second: the mentions
    and the words between them, which state the relation, as relation classifiers have
    used since the earliest feature-based ones. Empty when built without it: then the
    texts are used.
    """

    ids: list[str]
    texts: list[str]
    labels: np.ndarray = field(repr=False)
    L: np.ndarray = field(repr=False)
    inputs: list[str] = field(default_factory=list, repr=False)
    data: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Each row's ``data`` object as the file has it (what its LFs read)."""

    @property
    def model_texts(self) -> list[str]:
        """:attr:`inputs` when present, else :attr:`texts`."""
        return self.inputs or self.texts

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class WrenchDataset:
    """The train, valid and test splits of a WRENCH folder.

    ``cardinality`` is the number of entries of ``label.json`` when the folder has one, else
    one more than the largest label or vote seen (at least 2).
    """

    folder: Path
    train: WrenchSplit
    valid: WrenchSplit
    test: WrenchSplit
    cardinality: int

    @property
    def n_lfs(self) -> int:
        """Number of labeling functions (columns of every split's L)."""
        return int(self.train.L.shape[1])


def load_wrench(folder: str | os.PathLike[str]) -> WrenchDataset:
    """Read ``train.json``, ``valid.json`` and ``test.json`` from ``folder``.

    Each file maps a row id to ``{"label": int, "weak_labels": [int, ...], "data": {"text":
    str, ...}}``, with -1 for an LF that abstains. Every row of every split must have the
    same number of weak labels.

    Raises:
        WrenchError: naming the file (and row id) that is missing, not JSON, or malformed.
    """
    path = Path(folder)
    if not path.is_dir():
        raise WrenchError(f"WRENCH folder not found: {path}")
    splits: dict[str, WrenchSplit] = {}
    n_lfs: int | None = None
    first: str | None = None
    for name in SPLITS:
        file = path / f"{name}.json"
        split = _read_split(file)
        width = int(split.L.shape[1])
        if n_lfs is not None and width != n_lfs:
            raise WrenchError(
                f"{file}: rows have {width} weak labels but {first} rows have {n_lfs}"
            )
        n_lfs, first = width, str(file)
        splits[name] = split
    top = max(int(max(s.labels.max(), s.L.max())) for s in splits.values())
    cardinality = _label_names_count(path / "label.json") or max(top + 1, 2)
    if top > cardinality - 1:
        raise WrenchError(
            f"{path}: label or vote {top} is outside the {cardinality} classes of label.json"
        )
    return WrenchDataset(
        folder=path,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        cardinality=cardinality,
    )


def _read_split(file: Path) -> WrenchSplit:
    if not file.is_file():
        raise WrenchError(f"WRENCH split file not found: {file}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WrenchError(f"{file} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise WrenchError(f"cannot read {file}: {exc}") from exc
    if not isinstance(raw, dict):
        raise WrenchError(f"{file}: expected an object of rows keyed by id, got {_kind(raw)}")
    if not raw:
        raise WrenchError(f"{file} has no rows")
    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    rows: list[list[int]] = []
    inputs: list[str] = []
    datas: list[dict[str, Any]] = []
    for row_id, row in raw.items():
        where = f"{file} id {row_id!r}"
        if not isinstance(row, dict):
            raise WrenchError(f"{where}: expected an object, got {_kind(row)}")
        missing = [k for k in ("label", "weak_labels", "data") if k not in row]
        if missing:
            raise WrenchError(f"{where}: missing key(s) {', '.join(missing)}")
        data = row["data"]
        if not isinstance(data, dict) or "text" not in data:
            raise WrenchError(f"{where}: 'data' must be an object with a 'text' key")
        if not isinstance(data["text"], str):
            raise WrenchError(f"{where}: data.text must be a string, got {_kind(data['text'])}")
        label = row["label"]
        if not _is_int(label) or label < 0:
            raise WrenchError(f"{where}: label must be a non-negative integer, got {label!r}")
        votes = row["weak_labels"]
        if not isinstance(votes, list) or not all(_is_int(v) and v >= ABSTAIN for v in votes):
            raise WrenchError(
                f"{where}: weak_labels must be a list of integers >= {ABSTAIN}, got {votes!r}"
            )
        if not votes:
            raise WrenchError(f"{where}: weak_labels is empty")
        if rows and len(votes) != len(rows[0]):
            raise WrenchError(
                f"{where} has {len(votes)} weak labels but id {ids[0]!r} has {len(rows[0])}"
            )
        ids.append(str(row_id))
        texts.append(data["text"])
        inputs.append(_relation_text(data["text"], data.get("span1"), data.get("span2")))
        labels.append(int(label))
        rows.append([int(v) for v in votes])
        datas.append(data)
    return WrenchSplit(
        ids=ids,
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        L=np.asarray(rows, dtype=np.int64),
        inputs=inputs,
        data=datas,
    )


def _relation_text(text: str, span1: Any, span2: Any) -> str:
    """``text`` from the start of the first entity span to the end of the second, or all of
    ``text`` when the spans are absent or not ``[start, end]`` pairs inside it."""
    spans = []
    for span in (span1, span2):
        if not (isinstance(span, list | tuple) and len(span) == 2 and all(map(_is_int, span))):
            return text
        start, end = int(span[0]), int(span[1])
        if not 0 <= start <= end <= len(text):
            return text
        spans.append((start, end))
    start = min(spans[0][0], spans[1][0])
    end = max(spans[0][1], spans[1][1])
    return text[start:end] if text[start:end].strip() else text


def _label_names_count(file: Path) -> int | None:
    names = _label_names(file)
    return None if names is None else len(names)


def _label_names(file: Path) -> list[str] | None:
    """The class names of ``label.json`` in class order, or None without the file."""
    if not file.is_file():
        return None
    try:
        names = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise WrenchError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(names, dict | list) or len(names) < 2:
        raise WrenchError(f"{file}: expected at least 2 class names, got {names!r}")
    if isinstance(names, list):
        return [str(name) for name in names]
    try:
        return [str(names[key]) for key in sorted(names, key=int)]
    except ValueError:
        return [str(name) for name in names.values()]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return type(value).__name__


def evaluate_wrench(
    folder: str | os.PathLike[str] | WrenchDataset,
    *,
    metric: str = "accuracy",
    grid: Sequence[LabelModelConfig] | None = None,
    seed: int = 123,
    end_model: bool = False,
    end_model_grid: Sequence[EndModelConfig] | None = None,
    lfs: Sequence[Any] | None = None,
    revote: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Choose the labeler on valid by ``metric`` (:func:`fit_labeler`: majority vote,
    weighted votes and LabelModels fitted on train, cross-validated over valid) and score
    it and majority vote on test.

    Returns ``{"metric": metric, "label_model": {...}, "majority_vote": {...}}``, each
    entry with test ``accuracy``, ``f1`` and ``macro_f1``, the ``config`` and the
    cross-validated ``valid_<metric>`` it was chosen by; ``label_model`` is the chosen
    labeler (which may be a vote), with its ``threshold`` and fitting ``seconds``. With
    ``end_model``, also train the pipeline's text classifier on the chosen labeler's class
    probabilities of the covered train rows, chosen on valid (:func:`train_end_model`),
    and add its test scores as ``"end_model"``. ``progress`` gets a line per step.

    With ``lfs`` (the folder's LFs, as code: Snorkel LabelingFunctions in the order of
    the weak labels), first check the files' votes against what the LFs vote on each
    row's ``data`` (:func:`check_votes`), reported as ``"votes"``; with ``revote``, the
    LFs' own votes then replace the files' for every choice and score.

    Test accuracy and F1 follow :meth:`Labeler.metrics` (ties broken by Snorkel's
    deterministic hash; F1 of class 1 for two classes, macro F1 for more).
    """
    check_metric(metric, k=2)  # the name; k is checked once the folder is read
    say = progress or (lambda line: None)
    data = folder if isinstance(folder, WrenchDataset) else load_wrench(folder)
    say(
        f"loaded {data.folder}: {len(data.train)} train, {len(data.valid)} valid, "
        f"{len(data.test)} test rows, {data.n_lfs} LFs, {data.cardinality} classes"
    )
    if metric == "f1" and data.cardinality > 2:
        say(f"metric f1 with {data.cardinality} classes is the macro F1")
    votes: dict[str, Any] | None = None
    if lfs is not None:
        votes, matrices = check_votes(data, lfs)
        for name, check in votes.items():
            say(
                f"votes of {name}: the LFs vote as the file on {check['rows_matching']:.1%} "
                f"of {check['rows']} rows"
            )
        if revote:
            splits = {name: replace(getattr(data, name), L=matrices[name]) for name in SPLITS}
            data = replace(data, **splits)
            say("the LFs' own votes replace the files' votes")
    elif revote:
        raise WrenchError("revote needs the LFs (lfs=)")
    try:
        result = fit_labeler(
            data.train.L,
            L_dev=data.valid.L,
            y_dev=data.valid.labels,
            cardinality=data.cardinality,
            metric=metric,
            grid=grid,
            seed=seed,
            progress=say,
        )
    except ValueError as exc:
        raise WrenchError(f"{data.folder}: {exc}") from exc
    report: dict[str, Any] = {"metric": metric}
    if votes is not None:
        report["votes"] = {**votes, "revoted": revote}
    for name, labeler, dev in (
        ("label_model", result.best, result.best_dev),
        ("majority_vote", result.majority_vote, result.majority_vote_dev),
    ):
        scores = labeler.metrics(data.test.L, data.test.labels)
        report[name] = {
            "accuracy": scores["accuracy"],
            "f1": scores["f1"],
            "macro_f1": scores["macro_f1"],
            f"valid_{metric}": dev[metric],
            "config": {k: v for k, v in labeler.config.as_row().items() if v is not None},
        }
    report["label_model"]["threshold"] = result.best.threshold
    report["label_model"]["seconds"] = round(result.seconds, 2)
    if end_model:
        try:
            trained = train_end_model(
                result.best,
                (data.train.model_texts, data.train.L),
                (data.valid.model_texts, data.valid.labels),
                (data.test.model_texts, data.test.labels),
                metric=metric,
                grid=end_model_grid,
                seed=seed,
                progress=say,
            )
        except ValueError as exc:
            raise WrenchError(f"{data.folder}: end model: {exc}") from exc
        report["end_model"] = trained.report()
    return report


def load_lf_file(path: str | os.PathLike[str], lf_set: str = "default") -> list[Any]:
    """The LFs of set ``lf_set`` in the Python file ``path``, which defines ``LF_SETS``
    (a dict from set name to a list of LFs, as a dataset's LF module does).

    Raises:
        WrenchError: the file is missing, fails to import, or has no such set (naming
            the sets it has).
    """
    from mlsys.data.lf_module import LFModuleError, import_lf_module, lf_sets_of

    file = Path(path)
    if not file.is_file():
        raise WrenchError(f"LF file not found: {file}")
    try:
        sets = lf_sets_of(import_lf_module(file, f"mlsys_wrench_lfs_{file.stem}"), file)
    except LFModuleError as exc:
        raise WrenchError(str(exc)) from exc
    if lf_set not in sets:
        raise WrenchError(f"LF file {file} has no LF set {lf_set!r}; it has {sorted(sets)}")
    return list(sets[lf_set])


def check_votes(
    data: WrenchDataset, lfs: Sequence[Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Apply ``lfs`` to every split's rows (each row's ``data`` fields, the text under
    ``text``) and compare their votes with the files' weak labels.

    Returns, per split, ``rows``, ``rows_matching`` (the share of rows whose every vote
    matches) and ``lfs_differing`` (for each LF that differs somewhere, the share of rows
    where it matches), and the LFs' own label matrices. A split whose votes do not
    match its texts makes any label model's score on it a score of the file, not of the
    LFs.

    Raises:
        WrenchError: the number of LFs is not the files' number of weak labels, or an LF
            votes a label that is not a class (LFs may vote class names of label.json or
            class indices).
    """
    from mlsys.labeling.apply import apply_lfs
    from mlsys.labeling.lf import bind_class_labels

    if len(lfs) != data.n_lfs:
        raise WrenchError(
            f"{len(lfs)} LFs given, but the rows of {data.folder} have {data.n_lfs} weak labels"
        )
    names = _label_names(data.folder / "label.json") or [str(k) for k in range(data.cardinality)]

    def resolve(label: object) -> int:
        index = int(label) if isinstance(label, int | np.integer) else None
        if index is not None and not isinstance(label, bool) and 0 <= index < data.cardinality:
            return index
        if isinstance(label, str) and label in names:
            return names.index(label)
        raise ValueError(f"label {label!r} is not one of the classes {names}")

    try:
        bound = bind_class_labels(list(lfs), resolve)
    except (TypeError, ValueError) as exc:
        raise WrenchError(f"{data.folder}: {exc}") from exc
    checks: dict[str, dict[str, Any]] = {}
    matrices: dict[str, np.ndarray] = {}
    for split_name in SPLITS:
        split: WrenchSplit = getattr(data, split_name)
        frame = pd.DataFrame(split.data, index=split.ids)
        fields = [c for c in frame.columns if frame[c].notna().all()]
        try:
            matrix = apply_lfs(frame, bound, fields=fields, n_jobs=1).matrix
        except (ValueError, RuntimeError) as exc:
            raise WrenchError(f"{data.folder}, {split_name}: {exc}") from exc
        same = matrix == split.L
        checks[split_name] = {
            "rows": len(split),
            "rows_matching": float(same.all(axis=1).mean()),
            "lfs_differing": {
                lf.name: float(same[:, j].mean())
                for j, lf in enumerate(bound)
                if not same[:, j].all()
            },
        }
        matrices[split_name] = matrix
    return checks, matrices
