"""Lazy package exports: a package names what it exports and where it lives, and a name
is imported on first use, so that importing one submodule (or `mlsys --help`) does not
import torch, Snorkel, MLflow or uvicorn for all of them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from
    ``modules[name]`` when first asked for it (PEP 562)."""

    def __getattr__(name: str) -> Any:
        try:
            module = modules[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    return __getattr__
