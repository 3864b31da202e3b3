"""`mlsys stack worker`: a Prefect worker of the stack's work pool on another host, beside
the stack's own worker (see docs/stack.md, "Workers on other hosts")."""

from __future__ import annotations

import socket
import subprocess

import httpx

from infra.config import StackSettings
from infra.services import PROJECT_DIR, PrefectWorker
from infra.stack import Say, StackError, wait_for

__all__ = ["run_worker"]


def run_worker(
    settings: StackSettings, *, name: str | None = None, timeout_s: float = 60, say: Say = print
) -> int:
    """A Prefect worker of the stack's work pool on this host, in the foreground until it
    exits or is interrupted (then stopped); its exit status.

    For a stack served from another host: ``settings`` name its endpoints and credentials
    (from a copy of that host's ``.stack/env``) and flow runs start in this host's checkout
    (``MLSYS_PROJECT_DIR``, which the deployments' pull step changes into).

    Raises:
        StackError: the stack's Prefect API does not answer at ``settings.api_url``, or the
            worker is not ONLINE in the pool within ``timeout_s``.
    """
    worker = PrefectWorker(
        settings, worker_name=name or f"{settings.work_pool}-{socket.gethostname()}"
    )
    try:
        httpx.get(f"{settings.api_url}/health", headers=settings.prefect_headers(), timeout=10)
    except httpx.HTTPError as exc:
        raise StackError(
            f"the stack's Prefect API does not answer at {settings.api_url} "
            f"(MLSYS_PREFECT_API_URL): {exc}"
        ) from exc
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(worker.argv(), env=worker.env(), cwd=PROJECT_DIR)
    try:
        if not wait_for(worker.healthy, timeout_s, lambda: proc.poll() is None):
            if proc.poll() is not None:
                return proc.returncode
            raise StackError(
                f"worker {worker.worker_name} is not ONLINE in pool {settings.work_pool} "
                f"after {timeout_s:.0f} s"
            )
        say(
            f"worker {worker.worker_name} takes runs of pool {settings.work_pool} from "
            f"{settings.api_url}; flow runs start in {PROJECT_DIR}"
        )
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
