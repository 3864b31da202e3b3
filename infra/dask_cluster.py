"""The stack's own Dask cluster (``MLSYS_DASK=true``): a scheduler and worker processes on
this machine, over mutual TLS with a CA of the stack's (another process on the host cannot
join the cluster or run code on it), which the stack's flows use through
``MLSYS_DASK_ADDRESS`` instead of starting a cluster per run."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from infra.config import DASK_CERT
from infra.services import Endpoint, Service, _bin, base_env
from infra.tls import Pki, ensure_pki
from mlsys.memory import STREAMING_ENV


class _DaskService(Service):
    """A process of the stack's Dask cluster, with the cluster's certificates."""

    @functools.cached_property
    def pki(self) -> Pki:
        """The stack's Dask CA and the one certificate its scheduler, workers and clients
        use (made or renewed once per service object, not on every health check)."""
        return ensure_pki(self.settings.dask_tls_dir, [DASK_CERT], [self.settings.host])

    def prepare(self) -> None:
        self.pki  # noqa: B018 - made before the process starts

    def tls_flags(self) -> list[str]:
        leaf = self.pki.leaves[DASK_CERT]
        ca = str(self.pki.ca)
        return ["--tls-ca-file", ca, "--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key)]


class DaskScheduler(_DaskService):
    """``dask scheduler`` on the stack's interface, TLS only, no dashboard."""

    name = "dask-scheduler"

    def ports(self) -> dict[str, int]:
        return {"scheduler": self.settings.dask_port}

    def argv(self) -> list[str]:
        return [
            _bin("dask"), "scheduler",
            "--host", self.settings.host, "--port", str(self.settings.dask_port),
            "--protocol", "tls", "--no-dashboard",
            *self.tls_flags(),
        ]  # fmt: skip

    def healthy(self) -> bool:
        return _workers(self) is not None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("Dask", self.settings.stack_dask_address)]


class DaskWorkers(_DaskService):
    """``dask worker``: ``dask_workers`` processes of one thread each (text scoring and
    LFs hold the GIL), Arrow on the system allocator, with the stack's environment."""

    name = "dask-workers"

    def ports(self) -> dict[str, int]:
        return {}

    def argv(self) -> list[str]:
        s = self.settings
        return [
            _bin("dask"), "worker", s.stack_dask_address,
            "--host", s.host, "--nworkers", str(s.dask_workers), "--nthreads", "1",
            "--no-dashboard", "--local-directory", str((s.stack_dir / "dask").resolve()),
            "--name", "mlsys",
            *self.tls_flags(),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = base_env(self.settings)
        env.update(STREAMING_ENV)
        return env

    def healthy(self) -> bool:
        found = _workers(self)
        return found is not None and found >= self.settings.dask_workers


def _workers(service: _DaskService) -> int | None:
    """Workers connected to the stack's scheduler, or None when it does not answer."""
    from distributed import Client
    from distributed.security import Security

    pki = service.pki
    leaf = pki.leaves[DASK_CERT]
    secure: Any = Security  # untyped
    security = secure(
        tls_ca_file=str(pki.ca),
        tls_client_cert=str(leaf.cert),
        tls_client_key=str(leaf.key),
        require_encryption=True,
    )
    connect: Any = Client  # untyped
    with (
        contextlib.suppress(OSError, TimeoutError),
        connect(
            service.settings.stack_dask_address,
            security=security,
            timeout="3s",
            set_as_default=False,
        ) as client,
    ):
        return len(client.nthreads())
    return None
