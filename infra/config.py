"""The local stack's settings: what ``mlsys stack up`` needs to run the services, on top
of what everyone needs to reach them (env prefix ``MLSYS_``, like the engine's).

:class:`StackSettings` is the engine's :class:`mlsys.settings.Settings` (endpoints,
credentials, bucket...) and its :class:`mlsys.settings.LocalStack` (the interface and the
published ports of the S3 gateway, MLflow, Prefect and the model server), plus what only
the stack uses: SeaweedFS's internal ports, the model server as a service of the stack,
the work pool's size, the crash detection, and the servers' databases. Both classes read
the same ``MLSYS_*`` variables, so a variable means the same to ``mlsys stack`` and to a
flow, and an endpoint the engine leaves unset is where the stack serves it. The stack
then writes every endpoint explicitly to the environment of its workers (and to
``<stack_dir>/env``), and its generated credentials to ``<stack_dir>/credentials.json``,
which :meth:`mlsys.settings.Settings.load` reads.

Usage::

    settings = StackSettings.load()
    up(settings)
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator

from mlsys.settings import LocalStack, Settings

# The certificate the stack's Dask scheduler, workers and clients share (infra/dask_cluster.py).
DASK_CERT = "dask"

# Every port the local stack binds (the SeaweedFS ones also need port + gRPC offset free).
PORT_FIELDS: tuple[str, ...] = (
    "s3_port",
    "weed_master_port",
    "weed_volume_port",
    "weed_filer_port",
    "weed_admin_port",
    "mlflow_port",
    "prefect_port",
    "serve_port",
    "dask_port",
)


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def free_stack_ports(taken: set[int] | None = None, grpc_offset: int = 10000) -> dict[str, int]:
    """A free port for each of :data:`PORT_FIELDS`, drawn from 20000-29999 (the SeaweedFS
    ones with port + ``grpc_offset`` free too), none in ``taken``, which grows by them: for
    a private stack beside any other (tests, benchmarks).

    Raises:
        RuntimeError: no free port found in the range.
    """
    taken = set() if taken is None else taken
    rng = random.Random()
    chosen: dict[str, int] = {}
    for name in PORT_FIELDS:
        for _ in range(1000):
            port = rng.randint(20000, 29999)
            pair = {port, port + grpc_offset}
            if pair & taken or not all(_bindable(p) for p in pair):
                continue
            taken |= pair
            chosen[name] = port
            break
        else:
            raise RuntimeError("no free ports in 20000-29999")
    return chosen


class StackSettings(Settings, LocalStack):
    """Where and how the local stack runs its services (``host`` and the ``*_port``
    fields come from :class:`LocalStack`). Every field is ``MLSYS_<FIELD>``."""

    # SeaweedFS's own ports (the S3 gateway's is LocalStack.s3_port). gRPC ports of
    # SeaweedFS are the HTTP port + offset.
    weed_master_port: int = Field(default=9333, description="SeaweedFS master port.")
    weed_volume_port: int = Field(default=9340, description="SeaweedFS volume server port.")
    weed_filer_port: int = Field(default=8888, description="SeaweedFS filer port.")
    weed_admin_port: int = Field(default=23646, description="SeaweedFS admin server port.")
    weed_grpc_offset: int = Field(default=10000, description="SeaweedFS gRPC port offset.")

    serve: bool = Field(
        default=False,
        description="`stack up` also starts `mlsys serve` (the champion of serve_dataset "
        "over HTTP) as a service of the stack.",
    )
    serve_dataset: str = Field(
        default="youtube-spam", description="Dataset whose champion the stack's server answers for."
    )
    serve_workers: int = Field(
        default=1,
        ge=1,
        description="Processes of the stack's model server (`mlsys serve --workers`), sharing "
        "its port; more than one pays off on a machine with cores to spare.",
    )
    dask: bool = Field(
        default=False,
        description="`stack up` also runs a Dask scheduler and workers on this machine "
        "(mutual TLS with the stack's own CA) and points flows at them (MLSYS_DASK_ADDRESS), "
        "so a run starts no cluster of its own.",
    )
    dask_port: int = Field(default=8786, description="Port of the stack's Dask scheduler.")
    dask_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Worker processes (one thread each) of the stack's Dask cluster.",
    )
    work_pool: str = Field(default="mlsys", description="Prefect process work pool name.")
    pool_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Flow runs the work pool runs at once (default: the machine's cores); "
        "more wait in the queue.",
    )
    unresponsive_after_s: float = Field(
        default=180.0,
        ge=60,
        description=(
            "A flow run whose heartbeats (every 30 s) stop for this long is marked CRASHED "
            "by the stack's Prefect automation, even if no one runs `up` (seconds)."
        ),
    )
    database_url: SecretStr | None = Field(
        default=None,
        description=(
            "PostgreSQL URL (postgresql://user:pass@host:5432/db) for the MLflow and Prefect "
            "servers of the local stack; unset means SQLite files under stack_dir."
        ),
    )

    @model_validator(mode="after")
    def _check_ports(self) -> Self:
        for name in PORT_FIELDS:
            value = getattr(self, name)
            if not 0 < value < 65536 - (self.weed_grpc_offset if name.startswith("weed") else 0):
                raise ValueError(f"{name}={value} is not a usable TCP port")
        return self

    @model_validator(mode="after")
    def _dask_address(self) -> Self:
        """With the stack's own Dask cluster, flows are pointed at it."""
        if not self.dask:
            return self
        own = self.stack_dask_address
        if self.dask_address and self.dask_address != own:
            raise ValueError(
                f"MLSYS_DASK=true runs a Dask cluster at {own}, but MLSYS_DASK_ADDRESS="
                f"{self.dask_address} names another: set one of them"
            )
        self.dask_address = own
        return self

    @property
    def stack_dask_address(self) -> str:
        """Where the stack's own Dask scheduler listens (``dask`` on)."""
        return f"tls://{self.host}:{self.dask_port}"

    @property
    def dask_tls_dir(self) -> Path:
        """The stack's Dask CA and the certificate its scheduler, workers and clients use
        (``ca.crt``, ``dask.crt``, ``dask.key``; mode 0600, in a 0700 folder)."""
        return self.stack_dir / "dask-tls"

    def local_stack(self) -> LocalStack:
        """This stack's own address (its fields, not the environment's)."""
        return self

    def shell_env(self) -> dict[str, str]:
        """The engine's environment (:meth:`Settings.shell_env`) and the stack's work pool
        and served dataset. Holds the credentials: files of mode 0600 only, no logs."""
        env = super().shell_env()
        env["MLSYS_WORK_POOL"] = self.work_pool
        env["MLSYS_SERVE_DATASET"] = self.serve_dataset
        if self.dask:
            # Dask's own settings: the client certificate for the stack's cluster.
            tls = self.dask_tls_dir.resolve()
            env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] = str(tls / "ca.crt")
            env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] = str(tls / f"{DASK_CERT}.crt")
            env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] = str(tls / f"{DASK_CERT}.key")
        return env

    # ---- database URLs for the servers -------------------------------------------
    def mlflow_backend_uri(self) -> str:
        """SQLAlchemy URL of MLflow's backend store.

        On PostgreSQL, MLflow's tables live in their own schema ``mlflow`` so that
        they never collide with Prefect's (both use an ``alembic_version`` table).
        """
        return self._mlflow_db_uri("mlflow.db", "mlflow")

    def mlflow_auth_db_uri(self) -> str:
        """SQLAlchemy URL of the users and permissions of MLflow's basic-auth app (schema
        ``mlflow_auth`` on PostgreSQL)."""
        return self._mlflow_db_uri("basic_auth.db", "mlflow_auth")

    def _mlflow_db_uri(self, sqlite_file: str, schema: str) -> str:
        if self.database_url is None:
            # timeout: seconds a writer waits for SQLite's lock before "database is locked".
            return f"sqlite:///{(self.stack_dir / 'mlflow' / sqlite_file).resolve()}?timeout=60"
        url = _with_driver(self.database_url.get_secret_value(), "postgresql+psycopg2")
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}options={quote('-csearch_path=' + schema)}"

    def prefect_database_uri(self) -> str:
        """SQLAlchemy URL of the Prefect server's database."""
        if self.database_url is None:
            path = (self.stack_dir / "prefect" / "prefect.db").resolve()
            return f"sqlite+aiosqlite:///{path}"
        return _with_driver(self.database_url.get_secret_value(), "postgresql+asyncpg")


def _with_driver(url: str, scheme: str) -> str:
    """Replace the scheme of a PostgreSQL URL (``postgres://`` … ``postgresql+x://``)."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise ValueError(
            f"MLSYS_DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}"
        )
    return urlunsplit((scheme, *parts[1:]))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, *parts[2:]))


def private_stack_settings(stack_dir: Path, **extra: Any) -> StackSettings:
    """Settings of a stack of its own in ``stack_dir`` on free ports, from the arguments
    only: ``MLSYS_*`` variables (which may point at another stack) are set aside while it
    is built."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLSYS_")}
    try:
        offset = int(extra.pop("weed_grpc_offset", 10000))
        fields: dict[str, Any] = {
            "stack_dir": stack_dir,
            "weed_grpc_offset": offset,
            **free_stack_ports(grpc_offset=offset),
            **extra,
        }
        return StackSettings(**fields)
    finally:
        os.environ.update(saved)
