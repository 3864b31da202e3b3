"""Labeling-function authoring on Snorkel: label constants, keyword and regex LF factories."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from snorkel.labeling import LabelingFunction

__all__ = [
    "ABSTAIN",
    "ClassLabel",
    "LabelingFunction",
    "VectorSpec",
    "bind_class_labels",
    "keyword_lf",
    "labeling_function",
    "preprocessor",
    "regex_lf",
    "vector_spec",
]

ABSTAIN = -1

ClassLabel = int | str
"""What an LF votes: a class index, or a class name that the dataset resolves to one
(:func:`bind_class_labels`)."""

if TYPE_CHECKING:
    # Snorkel ships no type hints; these signatures let strictly typed modules (such as
    # lfs.py) use its decorators. At run time the names are Snorkel's own.
    def labeling_function(
        name: str | None = None,
        resources: Mapping[str, Any] | None = None,
        pre: list[Any] | None = None,
    ) -> Callable[[Callable[..., int]], LabelingFunction]: ...

    def preprocessor(
        name: str | None = None,
        pre: list[Any] | None = None,
        memoize: bool = False,
        memoize_key: Callable[[Any], Any] | None = None,
    ) -> Callable[[Callable[[Any], Any]], Any]: ...

else:
    from snorkel.labeling import labeling_function
    from snorkel.preprocess import preprocessor


@dataclass(frozen=True)
class VectorSpec:
    """What a keyword or regex LF computes, so an applier can run it on a whole column.

    ``kind="keyword"``: vote ``label`` when any of ``keywords`` is a substring of
    ``x.<field>.lower()``. ``kind="regex"``: vote ``label`` when
    ``re.search(pattern, x.<field>, flags)`` matches. Otherwise ABSTAIN. A value of the
    field that is not a ``str`` makes the LF raise ``TypeError``.
    """

    kind: Literal["keyword", "regex"]
    field: str
    label: ClassLabel
    keywords: tuple[str, ...] = ()
    pattern: str = ""
    flags: int = 0

    def compiled(self) -> re.Pattern[str]:
        """The compiled regex (``kind="regex"`` only); ``re`` caches compilations."""
        return re.compile(self.pattern, self.flags)


class _SpecVote:
    """The per-row function of a keyword or regex LF, built from its spec.

    The row-by-row path (Snorkel's appliers, a direct call) and the column path of
    ``apply_lfs`` both read the same spec, so they cannot drift apart. A module-level
    class (not a closure) keeps the LF picklable.
    """

    def __init__(self, spec: VectorSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self._regex = spec.compiled() if spec.kind == "regex" else None

    def __call__(self, x: Any) -> ClassLabel:
        value = getattr(x, self.spec.field)
        if not isinstance(value, str):
            raise not_a_str_error(self.name, self.spec.field, value)
        if self._regex is not None:
            return self.spec.label if self._regex.search(value) else ABSTAIN
        # Exactly the Snorkel spam tutorial's keyword_lookup.
        lowered = value.lower()
        return self.spec.label if any(word in lowered for word in self.spec.keywords) else ABSTAIN

    def __repr__(self) -> str:
        return f"_SpecVote({self.spec!r})"


def keyword_lf(
    keywords: Sequence[str],
    label: ClassLabel,
    *,
    name: str | None = None,
    field: str = "text",
) -> LabelingFunction:
    """An LF voting ``label`` when any keyword is a substring of the lower-cased field.

    Same semantics as the Snorkel spam tutorial's ``keyword_lookup``:
    ``any(word in x.text.lower() for word in keywords)``, else ABSTAIN. Keywords must be
    lower case (the text is lower-cased, so an upper-case keyword could never match).
    ``label`` is a class index or a class name (resolved when the dataset loads its LF
    sets). The default name is ``keyword_<first keyword>``, e.g. ``keyword_please``.

        keyword_please = keyword_lf(["please", "plz"], "spam")
    """
    if isinstance(keywords, str):
        raise ValueError(
            f"keywords must be a list of strings, not the single string {keywords!r} "
            f"(write [{keywords!r}])"
        )
    words = tuple(keywords)
    if not words:
        raise ValueError("keyword_lf needs at least one keyword; got an empty list")
    for word in words:
        if not isinstance(word, str) or not word:
            raise ValueError(f"keyword {word!r} in {list(words)!r} is not a non-empty string")
        if word != word.lower():
            raise ValueError(
                f"keyword {word!r} is not lower case; the text is lower-cased before "
                f"matching, so it could never match (use {word.lower()!r})"
            )
    spec = VectorSpec(
        kind="keyword", field=_check_field(field), label=_check_label(label), keywords=words
    )
    return _spec_lf(spec, name if name is not None else f"keyword_{words[0]}")


def regex_lf(
    pattern: str,
    label: ClassLabel,
    *,
    name: str | None = None,
    field: str = "text",
    flags: int = re.IGNORECASE,
) -> LabelingFunction:
    """An LF voting ``label`` when ``re.search(pattern, x.<field>, flags=flags)`` matches.

    The Snorkel spam tutorial's ``regex_check_out`` is ``regex_lf(r"check.*out", "spam")``.
    The default name is ``regex_`` plus the pattern's letters and digits joined by
    ``_``, e.g. ``regex_check_out``.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"regex pattern must be a non-empty string, got {pattern!r}")
    if not isinstance(flags, int):
        raise ValueError(f"regex flags must be an int (e.g. re.IGNORECASE), got {flags!r}")
    try:
        re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"invalid regex pattern {pattern!r}: {exc}") from exc
    spec = VectorSpec(
        kind="regex",
        field=_check_field(field),
        label=_check_label(label),
        pattern=pattern,
        flags=flags,
    )
    if name is None:
        slug = "_".join(re.findall(r"[0-9a-z]+", pattern.lower()))
        name = f"regex_{slug or 'pattern'}"
    return _spec_lf(spec, name)


def vector_spec(lf: LabelingFunction) -> VectorSpec | None:
    """The spec of an LF made by ``keyword_lf``/``regex_lf``; None for any other LF.

    Also None when the LF was given preprocessors or resources afterwards, since the
    spec would then no longer describe what the LF computes.
    """
    # Snorkel 0.10 keeps these as private attributes; it is pinned in pyproject.toml.
    vote = getattr(lf, "_f", None)
    unchanged = not getattr(lf, "_pre", None) and not getattr(lf, "_resources", None)
    return vote.spec if isinstance(vote, _SpecVote) and unchanged else None


def not_a_str_error(lf_name: str, field: str, value: object) -> TypeError:
    """The error a keyword or regex LF raises on a non-str value (shared with the applier)."""
    return TypeError(
        f"labeling function {lf_name!r} needs a str in field {field!r}, "
        f"got {value!r} ({type(value).__name__})"
    )


def _spec_lf(spec: VectorSpec, name: str) -> LabelingFunction:
    if not isinstance(name, str) or not name:
        raise ValueError(f"LF name must be a non-empty string, got {name!r}")
    return LabelingFunction(name=name, f=_SpecVote(spec, name))


def _check_label(label: object) -> ClassLabel:
    # bool is an int subclass, but True as a class label is almost surely a mistake.
    if isinstance(label, str) and label.strip():
        return label
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise ValueError(
            f"label must be a class index >= 0 or a class name, got {label!r} "
            "(abstaining is implied)"
        )
    return label


class _ResolvedVote:
    """An LF's function whose votes (class names or indices) are turned into class
    indices; ABSTAIN passes through. Module-level so the LF stays picklable."""

    def __init__(self, f: Callable[..., Any], resolve: Callable[[object], int], name: str) -> None:
        self.f = f
        self.resolve = resolve
        self.name = name

    def __call__(self, x: Any, **kwargs: Any) -> int:
        vote = self.f(x, **kwargs)
        if vote == ABSTAIN and not isinstance(vote, bool):
            return ABSTAIN
        try:
            return self.resolve(vote)
        except ValueError as exc:
            raise ValueError(f"labeling function {self.name!r} voted {vote!r}: {exc}") from None


def bind_class_labels(
    lfs: Sequence[LabelingFunction], resolve: Callable[[object], int]
) -> list[LabelingFunction]:
    """The LFs with every vote a class index: ``resolve`` maps a class name or index to its
    index (raising ValueError for anything else, e.g. ``DatasetDefinition.class_index``).

    Keyword and regex LFs get their label resolved once, here (so a bad label fails now,
    naming the LF); other LFs get their votes resolved as they are cast.

    Raises:
        TypeError: an entry is not a Snorkel LabelingFunction.
        ValueError: two LFs share a name, or a keyword/regex LF's label is not a class.
    """
    out: list[LabelingFunction] = []
    seen: set[str] = set()
    for position, lf in enumerate(lfs):
        if not isinstance(lf, LabelingFunction):
            raise TypeError(
                f"entry {position} is {lf!r} ({type(lf).__name__}), not a labeling function "
                "(use keyword_lf, regex_lf or @labeling_function())"
            )
        if lf.name in seen:
            raise ValueError(f"two labeling functions are named {lf.name!r}; names must differ")
        seen.add(lf.name)
        spec = vector_spec(lf)
        if spec is not None:
            try:
                label = resolve(spec.label)
            except ValueError as exc:
                raise ValueError(f"labeling function {lf.name!r}: {exc}") from None
            out.append(_spec_lf(dataclasses.replace(spec, label=label), lf.name))
            continue
        # Snorkel 0.10 keeps these as private attributes; it is pinned in pyproject.toml.
        f = lf._f
        if isinstance(f, _SpecVote | _ResolvedVote):
            out.append(lf)
            continue
        out.append(
            LabelingFunction(
                name=lf.name,
                f=_ResolvedVote(f, resolve, lf.name),
                resources=getattr(lf, "_resources", None),
                pre=getattr(lf, "_pre", None),
            )
        )
    return out


def _check_field(field: object) -> str:
    if not isinstance(field, str) or not field:
        raise ValueError(f"field must be a non-empty column name, got {field!r}")
    # Snorkel hands LFs a pandas Series, where x.<name> returns the Series attribute,
    # not the column, when the two share a name (x.name, x.index, x.str, ...).
    if hasattr(pd.Series, field):
        raise ValueError(
            f"field {field!r} is also a pandas.Series attribute, so x.{field} would not "
            f"read the column; rename the column"
        )
    return field
