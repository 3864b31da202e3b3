"""Labeling functions for SemEval-2010 relations: what the words between the two entities say."""

import re
from typing import Any

from mlsys.labeling.lf import ABSTAIN, LabelingFunction


def _between(x: Any) -> str | None:
    """The words between the two entities (in either order), lower-cased."""
    text, a, b = x.text.lower(), x.entity1.lower(), x.entity2.lower()
    i, j = text.find(a), text.find(b)
    if i < 0 or j < 0:
        return None
    start, end = (i + len(a), j) if i < j else (j + len(b), i)
    return text[start:end] if start <= end else None


class _Between:
    def __init__(self, pattern: str, label: str) -> None:
        self.regex = re.compile(pattern)
        self.label = label

    def __call__(self, x: Any) -> Any:
        words = _between(x)
        return self.label if words is not None and self.regex.search(words) else ABSTAIN


def between(name: str, pattern: str, label: str) -> LabelingFunction:
    """Vote ``label`` when the words between the entities match ``pattern``."""
    return LabelingFunction(name=name, f=_Between(pattern, label))


LF_SETS = {
    "default": [
        between(
            "cause",
            r"\b(caused|causes|causing|cause|triggered|result(s|ed)? in|led to|leads to"
            r"|generated|produced by the)\b",
            "Cause-Effect",
        ),
        between(
            "effect", r"\b(from|due to|because of|result(s|ed|ing)? from|after)\b", "Cause-Effect"
        ),
        between(
            "component", r"\b(of|'s|has|have|with|consists? of|comprises?)\b", "Component-Whole"
        ),
        between(
            "container",
            r"\b(in|inside|contain(s|ed|ing)?|within|into which)\b",
            "Content-Container",
        ),
        between("destination", r"\b(into|to|onto|toward|towards)\b", "Entity-Destination"),
        between("origin", r"\b(from|out of|away from|derived from)\b", "Entity-Origin"),
        between("instrument", r"\b(using|uses|used|with|by)\b", "Instrument-Agency"),
        between(
            "member",
            r"^\s*of\s*(the\s*)?$|\b(members? of|belongs? to|among)\b",
            "Member-Collection",
        ),
        between(
            "message",
            r"\b(about|on|describ\w*|discuss\w*|explain\w*|concern\w*|regarding|report\w*)\b",
            "Message-Topic",
        ),
        between(
            "product",
            r"\b(made|produced|manufactured|built|created|written|wrote|developed|by)\b",
            "Product-Producer",
        ),
    ]
}
