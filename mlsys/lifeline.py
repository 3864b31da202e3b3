"""Child processes that do not outlive their parent (Linux's ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: signal.Signals, code: int) -> None:
    """Have Linux send ``sig`` to this process when its parent (pid ``parent``) dies, and
    exit with status ``code`` at once if it has died already: before the request took
    effect, the process would otherwise outlive it. Elsewhere only the check runs."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        raise SystemExit(code)
