"""A dataset's LF module: a Python file imported by path, and the LF sets it defines."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["LFModuleError", "import_lf_module", "lf_sets_of"]


class LFModuleError(ValueError):
    """An LF module cannot be imported or defines no proper ``LF_SETS``; the message names
    the file."""


def import_lf_module(file: Path, module_name: str) -> ModuleType:
    """The Python file ``file`` imported as ``module_name`` and kept in ``sys.modules``
    (so that its LFs pickle by reference); one already imported from that file is reused.

    Raises:
        LFModuleError: the file cannot be imported, naming it and the error.
    """
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__file__", None) == str(file):
        return module
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise LFModuleError(f"cannot import LF module {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise LFModuleError(f"LF module {file} failed to import: {exc!r}") from exc
    return module


def lf_sets_of(module: ModuleType, file: Path) -> dict[str, Sequence[Any]]:
    """The LF sets of an LF module (``file`` names it in errors): its ``LF_SETS``, a dict
    from set name to a list of LFs or to a function returning one.

    Raises:
        LFModuleError: no such dict, or a set that is not a list.
    """
    sets = getattr(module, "LF_SETS", None)
    if not isinstance(sets, Mapping) or not sets:
        raise LFModuleError(
            f"LF module {file} must define LF_SETS, a dict from set name to a list of LFs; "
            f"found {type(sets).__name__}"
        )
    out: dict[str, Sequence[Any]] = {}
    for key, value in sets.items():
        lfs = value() if callable(value) else value
        if not isinstance(lfs, list | tuple):
            raise LFModuleError(
                f"LF_SETS[{key!r}] in {file} must be a list of LFs, found {type(lfs).__name__}"
            )
        out[str(key)] = lfs
    return out
