"""The README and docs/ point only at files that exist: every relative Markdown link, and
every path of the repository's own folders written in backticks (``mlsys/...py``), so a
renamed or removed file cannot leave a stale reference behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_FOLDERS = (
    "mlsys/",
    "flows/",
    "tasks/",
    "infra/",
    "tests/",
    "benchmarks/",
    "datasets/",
    "docs/",
    "gx/",
    "schemas/",
)
"""Backticked paths under these are files of the repository (``.stack/...`` and artifact
paths such as ``ingest/summary.json`` are made at run time, so they are not checked)."""

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`([A-Za-z0-9_./-]+\.(?:py|md|yaml|yml|json|toml|lua|sh|cfg))`")


def stale_references(page: Path) -> list[str]:
    """The links and backticked repository paths of ``page`` that name no file."""
    text = page.read_text(encoding="utf-8")
    stale = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        if not (page.parent / target.split("#", 1)[0]).exists():
            stale.append(f"link ({target})")
    for match in CODE_PATH.finditer(text):
        path = match.group(1)
        if path.startswith(REPO_FOLDERS) and not (ROOT / path).exists():
            stale.append(f"`{path}`")
    return stale


def test_the_pages_exist() -> None:
    assert (ROOT / "README.md").exists()
    assert len(PAGES) > 5, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_a_missing_file(page: Path) -> None:
    assert stale_references(page) == []


def test_a_stale_reference_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#part) [web](https://example.org/x) [same](#top)\n"
        "[gone](missing.md) `mlsys/no_such_module.py` `mlsys/settings.py` "
        "`.stack/credentials.json`\n",
        encoding="utf-8",
    )
    assert stale_references(page) == ["link (missing.md)", "`mlsys/no_such_module.py`"]
