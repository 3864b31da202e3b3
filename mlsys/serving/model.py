"""The served model versions: loaded from the MLflow registry, and swapped when an alias moves.

A :class:`ModelWatcher` follows ``models:/<name>@<alias>`` (and optionally a shadow
alias): it resolves the alias at start, every ``poll_s`` seconds on a background thread,
and when :meth:`ModelWatcher.reload` is called (the server's ``POST /admin/reload``, which
the flows call after a promotion). A version it has not loaded yet is loaded on that
thread while the current one keeps serving, then replaces it with one reference
assignment: a batch takes ``watcher.current`` once when it starts and finishes on that
model, so no request sees a half-loaded model or two versions. A failed load is logged
and the old model keeps serving; the next poll tries again.

Until the alias exists (a server started before the first promotion) there is no current
model: the server answers its probes and refuses predictions with 503.

Usage::

    watcher = ModelWatcher(tracking_uri, "youtube-spam-classifier", "champion", poll_s=10)
    watcher.start()
    model = watcher.current            # a LoadedModel, or None before the first version
    frame = model.predict(pd.DataFrame({"text": ["check out my channel"]}))
    watcher.reload()                   # resolve now; returns what is served
    watcher.close()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlsys.serving.rules import RowRules

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelWatcher",
    "Reloaded",
    "load_version",
]

_log = logging.getLogger(__name__)

# MLflow resolves models:/ URIs through its process-wide tracking URI only; loads set it
# for their duration, one at a time.
_LOAD_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """A model version could not be loaded (the message names it and the cause)."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version in memory.

    ``inputs`` are its signature's ``(column, MLflow type)`` pairs, ``classes`` the class
    names it was logged with (None: it answers with class indices), ``rules`` the row
    rules its signature implies (columns present, non-null, typed). ``score_texts``: for a
    model of one text column that can answer a list of texts with records itself
    (``TextClassifierModel.predict_records``), that function; :meth:`records` then skips
    the frames in and out.
    """

    name: str
    version: str
    inputs: tuple[tuple[str, str], ...]
    classes: tuple[str, ...] | None
    predict_frame: Callable[[pd.DataFrame], pd.DataFrame] = field(repr=False)
    rules: RowRules = field(repr=False, compare=False, default_factory=RowRules)
    score_texts: Callable[[list[Any]], list[dict[str, Any]]] | None = field(
        repr=False, compare=False, default=None
    )

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(column for column, _ in self.inputs)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's output for ``frame`` (rows already checked against ``rules``)."""
        return self.predict_frame(frame)

    def records(self, columns: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
        """The model's output for rows given column-wise (``columns[name][i]``: row i's
        value; rows already checked), one dict of plain Python values per row: what
        ``predict`` answers for their frame, as ``tolist()`` gives its values."""
        if self.score_texts is not None:
            return self.score_texts(columns[self.inputs[0][0]])
        names = self.input_columns
        out = self.predict(pd.DataFrame({n: columns[n] for n in names}, columns=list(names)))
        keys = [str(c) for c in out.columns]
        values = [out[c].tolist() for c in out.columns]
        return [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)]


def load_version(tracking_uri: str | None, name: str, version: str) -> LoadedModel:
    """Load version ``version`` of the registered model ``name`` as a :class:`LoadedModel`.

    Prediction calls the pyfunc flavor's own ``predict`` (``PyFuncModel._model_impl``),
    below the schema enforcement of ``PyFuncModel.predict``: the server has checked every
    row against the signature once, on arrival (:meth:`RowRules.from_signature`), and the
    enforcement costs about 0.2 ms per call, as much again as scoring one row of the
    text classifier (``mlsys serve`` measurements, one thread).

    Raises:
        ModelLoadError: it cannot be downloaded or loaded, or has no input signature.
    """
    import mlflow

    from mlsys.models.pyfunc import _tracking_uri

    uri = f"models:/{name}/{version}"
    scope: AbstractContextManager[None] = (
        nullcontext() if tracking_uri is None else _tracking_uri(tracking_uri)
    )
    try:
        with _LOAD_LOCK, scope:
            pyfunc = mlflow.pyfunc.load_model(uri)
        schema = pyfunc.metadata.get_input_schema()
        impl: Any = pyfunc._model_impl
    except Exception as exc:
        raise ModelLoadError(f"cannot load {uri}: {exc}") from exc
    if schema is None or not schema.has_input_names():
        raise ModelLoadError(f"{uri} has no named input signature; the server needs one")
    inputs = tuple((str(c.name), str(c.type.name)) for c in schema.inputs)
    logged = (pyfunc.metadata.metadata or {}).get("class_names")
    classes = None if logged is None else tuple(str(c) for c in logged)

    def predict_frame(frame: pd.DataFrame) -> pd.DataFrame:
        out = impl.predict(frame)
        return out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)

    score_texts = getattr(getattr(impl, "python_model", None), "predict_records", None)
    if len(inputs) != 1 or inputs[0][1] != "string" or not callable(score_texts):
        score_texts = None
    loaded = LoadedModel(
        name=name,
        version=str(version),
        inputs=inputs,
        classes=classes,
        predict_frame=predict_frame,
        rules=RowRules.from_signature(inputs),
        score_texts=score_texts,
    )
    _warm_up(uri, inputs, loaded)
    return loaded


def _warm_up(uri: str, inputs: tuple[tuple[str, str], ...], model: LoadedModel) -> None:
    """Score a one-row and a 64-row batch before the version takes traffic, the way the
    server scores (:meth:`LoadedModel.records`): the first calls of a model pay for lazy
    initialisation (torch's kernels, allocator pools), which would otherwise land on the
    first requests after a swap, and in the admission control's estimate. Inputs that are
    not strings or numbers get no warm-up."""
    values = {"string": "warm up", "double": 0.0, "float": 0.0, "long": 0, "integer": 0}
    if any(kind not in values for _, kind in inputs):
        return
    try:
        for rows in (1, 64):
            model.records({name: [values[kind]] * rows for name, kind in inputs})
    except Exception as exc:
        raise ModelLoadError(f"{uri} failed its warm-up prediction: {exc}") from exc


Loader = Callable[[str | None, str, str], LoadedModel]
"""``(tracking_uri, name, version) -> LoadedModel``: :func:`load_version`, or a test's."""


@dataclass(frozen=True)
class Reloaded:
    """What :meth:`ModelWatcher.reload` found: the versions served before and after."""

    model: str
    alias: str
    version: str | None
    previous: str | None
    shadow_alias: str | None = None
    shadow_version: str | None = None

    @property
    def changed(self) -> bool:
        return self.version != self.previous

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "changed": self.changed,
            "shadow_alias": self.shadow_alias,
            "shadow_version": self.shadow_version,
        }


class ModelWatcher:
    """Follows an alias of a registered model (see the module docstring).

    Args:
        tracking_uri: the MLflow tracking server holding the registry (None: MLflow's
            default, ``MLFLOW_TRACKING_URI``).
        name: the registered model.
        alias: the alias served.
        shadow_alias: another alias loaded beside it (the challenger), or None.
        poll_s: seconds between polls of the registry; 0: only :meth:`reload`.
        classes: the dataset's class names: a version logged with other class names is
            not loaded (it was trained for another dataset).
        loader: loads one version (tests pass a fake).
        settle_s: how long after a load ends :meth:`settling` stays true (the new
            version's first batches run cold).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        name: str,
        alias: str = "champion",
        *,
        shadow_alias: str | None = None,
        poll_s: float = 10.0,
        classes: Sequence[str] | None = None,
        loader: Loader = load_version,
        settle_s: float = 1.0,
    ) -> None:
        if poll_s < 0 or settle_s < 0:
            raise ValueError(f"poll_s and settle_s must be >= 0, got {poll_s!r}, {settle_s!r}")
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.shadow_alias = shadow_alias
        self.poll_s = poll_s
        self.classes = None if classes is None else tuple(classes)
        self.current: LoadedModel | None = None
        self.shadow: LoadedModel | None = None
        self._loader = loader
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem: dict[str, str] = {}
        self.settle_s = settle_s
        self._loading = 0
        self._loaded_at = -math.inf

    def start(self) -> Reloaded:
        """Resolve and load what the aliases point at now, then poll in the background.

        A missing alias or a failed load is logged, not raised: the server starts anyway
        and picks the version up later.
        """
        try:
            result = self.reload()
        except ModelLoadError as exc:
            _log.error("%s", exc)
            result = self._state(previous=None)
        if self.poll_s > 0 and self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name=f"watch-{self.name}", daemon=True
            )
            self._thread.start()
        return result

    def reload(self) -> Reloaded:
        """Resolve the aliases now and load any version not loaded yet (blocking).

        Raises:
            ModelLoadError: the served alias points at a version that failed to load; the
                previous version (if any) keeps serving. A failed shadow load is only
                logged.
        """
        with self._lock:
            previous = None if self.current is None else self.current.version
            version = self._resolve(self.alias)
            if version is not None and version != previous:
                self.current = self._load(version)
                _log.info("serving %s version %s (was %s)", self.name, version, previous or "none")
            if self.shadow_alias is not None:
                self._refresh_shadow(self.shadow_alias)
            return self._state(previous)

    def close(self) -> None:
        """Stop polling (the loaded models stay usable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _state(self, previous: str | None) -> Reloaded:
        return Reloaded(
            model=self.name,
            alias=self.alias,
            version=None if self.current is None else self.current.version,
            previous=previous,
            shadow_alias=self.shadow_alias,
            shadow_version=None if self.shadow is None else self.shadow.version,
        )

    def _refresh_shadow(self, alias: str) -> None:
        version = self._resolve(alias)
        if version is None or (self.shadow is not None and self.shadow.version == version):
            return
        try:
            self.shadow = self._load(version)
            _log.info("shadowing with %s version %s (@%s)", self.name, version, alias)
        except ModelLoadError as exc:
            _log.error("shadow @%s: %s", alias, exc)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.reload()
            except ModelLoadError as exc:
                _log.error("%s; still serving version %s", exc, self._served())
            except Exception:
                _log.exception("polling %s@%s failed", self.name, self.alias)

    def _served(self) -> str:
        return "none" if self.current is None else self.current.version

    def _resolve(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None (logged once per distinct problem)
        when the model or alias does not exist or the registry cannot be reached."""
        from mlflow import MlflowClient

        try:
            found = MlflowClient(self.tracking_uri).get_model_version_by_alias(self.name, alias)
        except Exception as exc:
            problem = f"cannot resolve models:/{self.name}@{alias}: {exc}"
            if self._last_problem.get(alias) != problem:
                _log.warning("%s; serving version %s", problem, self._served())
                self._last_problem[alias] = problem
            return None
        self._last_problem.pop(alias, None)
        return str(found.version)

    def settling(self) -> bool:
        """True while a version loads (its load and warm-up take the cores the served
        version scores on) and for ``settle_s`` after: the server's admission control
        then spends latency rather than refusing (see ``mlsys.serving.app``)."""
        return self._loading > 0 or time.monotonic() - self._loaded_at < self.settle_s

    def _load(self, version: str) -> LoadedModel:
        self._loading += 1
        try:
            model = self._loader(self.tracking_uri, self.name, version)
        finally:
            self._loading -= 1
            self._loaded_at = time.monotonic()
        if self.classes is not None and model.classes is not None and model.classes != self.classes:
            raise ModelLoadError(
                f"{model.uri} predicts classes {list(model.classes)}, but the dataset's "
                f"classes are {list(self.classes)}; not loaded"
            )
        return model
