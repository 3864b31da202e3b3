"""How the engine, tasks and flows reach the services: one typed settings object for
every endpoint and credential (env prefix ``MLSYS_``).

Running the local stack is not the engine's business. Its ports, processes, databases and
work pool are ``infra.config.StackSettings``, a subclass of :class:`Settings` that the
``mlsys stack`` commands read from the same ``MLSYS_*`` variables. The engine knows the
stack only by what the stack publishes:

- its address, :class:`LocalStack`: ``MLSYS_HOST`` and ``MLSYS_S3_PORT``,
  ``MLSYS_MLFLOW_PORT``, ``MLSYS_PREFECT_PORT``, ``MLSYS_SERVE_PORT``, the variables the
  stack is started from (and writes to ``<stack_dir>/env``). An endpoint left unset is
  the local stack's service at that address;
- the credentials it generated, ``<stack_dir>/credentials.json``: a credential left unset
  for a service of the local stack is read from there (:meth:`Settings.load`).

Nothing under ``mlsys/`` imports ``infra`` (tests/unit/test_layering.py).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CREDENTIALS_FILE = "credentials.json"


class LocalStack(BaseSettings):
    """Where the local stack (``mlsys stack up``) serves: its interface and the ports of
    the services it publishes, from ``MLSYS_HOST`` and ``MLSYS_<SERVICE>_PORT``.

    The engine uses it only for the endpoints :class:`Settings` leaves unset.
    ``infra.config.StackSettings`` inherits these fields, so the stack binds where the
    engine looks.
    """

    model_config = SettingsConfigDict(env_prefix="MLSYS_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface the local stack binds to.")
    s3_port: int = Field(default=8333, description="SeaweedFS S3 gateway port.")
    mlflow_port: int = Field(default=5000, description="MLflow tracking server port.")
    prefect_port: int = Field(default=4200, description="Prefect server port.")
    serve_port: int = Field(default=8080, description="Port of the stack's model server.")

    @model_validator(mode="after")
    def _check_published_ports(self) -> Self:
        for name in ("s3_port", "mlflow_port", "prefect_port", "serve_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ValueError(f"{name}={value} is not a usable TCP port")
        return self

    def url(self, port: int) -> str:
        """``http://<host>:<port>``."""
        return f"http://{self.host}:{port}"


class Settings(BaseSettings):
    """Where the services are and how to reach them.

    Every field can be set from the environment as ``MLSYS_<FIELD>`` (for example
    ``MLSYS_S3_ENDPOINT_URL``). Left unset, the endpoints point at the local stack that
    ``mlsys stack up`` runs (:meth:`local_stack`, read from the environment when the
    settings are made). Read it once, explicitly, with :meth:`Settings.load`, and pass
    it down; nothing reads settings at import time.

    Usage::

        settings = Settings.load()
        s3 = settings.s3_client()
    """

    model_config = SettingsConfigDict(env_prefix="MLSYS_", extra="ignore")

    stack_dir: Path = Field(
        default=Path(".stack"),
        description="State of the local stack: data, logs, pids, keys. The engine reads the "
        "credentials `stack up` generated there, and keeps its download cache there.",
    )

    # S3: SeaweedFS locally, AWS S3 or any S3-compatible store elsewhere.
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint; unset means the local SeaweedFS. Empty string means AWS.",
    )
    s3_access_key: SecretStr | None = Field(default=None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    bucket: str = Field(default="mlsys", description="Bucket for data, artifacts and results.")

    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking server; unset means the local one."
    )
    mlflow_experiment: str = Field(default="mlsys", description="MLflow experiment name.")
    prefect_api_url: str | None = Field(
        default=None, description="Prefect API (…/api); unset means the local server."
    )
    prefect_auth_string: SecretStr | None = Field(
        default=None,
        description=(
            "Prefect API credential (`user:password`, sent as HTTP basic auth); unset "
            "means the one `stack up` generated for the local server."
        ),
    )
    mlflow_username: str | None = Field(
        default=None, description="MLflow user; unset means the local server's generated admin."
    )
    mlflow_password: SecretStr | None = Field(
        default=None, description="MLflow password; unset means the generated one."
    )
    serve_url: str | None = Field(
        default=None,
        description="A model server elsewhere that flows tell of promotions; unset means "
        "the stack's own, when it runs one.",
    )
    serve_key: SecretStr | None = Field(
        default=None,
        description="API key of the model server (`Authorization: Bearer`); unset means "
        "the one `stack up` generated.",
    )
    prefect_ui_url: str | None = Field(
        default=None, description="Prefect UI base URL used in links; derived from the API URL."
    )
    datasets_dir: str | None = Field(
        default=None,
        description=(
            "Folders of dataset definitions searched before the project's datasets/ "
            "(several joined by ':'); flows and workers of the stack see the same."
        ),
    )

    dask_address: str | None = Field(
        default=None,
        description=(
            "Dask scheduler that runs batch_infer's partitions (`tls://host:8786`), with "
            "Dask's own TLS configuration (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "..._CLIENT__CERT, ..._CLIENT__KEY); unset means a cluster on this machine, "
            "made for each run, with mutual TLS."
        ),
    )

    outage_tolerance_s: float = Field(
        default=120.0,
        ge=0,
        description=(
            "How long a task keeps trying when S3 or MLflow cannot be reached before its "
            "run fails naming the service (seconds)."
        ),
    )

    _local: LocalStack = PrivateAttr(default_factory=LocalStack)

    def local_stack(self) -> LocalStack:
        """Where the local stack serves, for the endpoints left unset (read from
        ``MLSYS_HOST`` and ``MLSYS_*_PORT`` when these settings were made)."""
        return self._local

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment (``overrides`` win), then add the stack's credentials.

        MLflow's client reads its credential from the environment on every request, so
        the MLflow user and password are also exported to this process's environment
        (unless it already names an MLflow user).
        """
        settings = cls(**overrides).with_stack_credentials()
        settings.export_mlflow_credentials()
        return settings

    @contextmanager
    def mlflow_credentials(self) -> Iterator[None]:
        """This settings' MLflow credential in the environment for the duration (for a
        process that talks to more than one MLflow server, such as the tests)."""
        keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        saved = {key: os.environ.pop(key, None) for key in keys}
        try:
            self.export_mlflow_credentials()
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def export_mlflow_credentials(self) -> None:
        """Put the MLflow credential where MLflow's client looks for it (this process's
        environment), unless the environment already names a user."""
        auth = self.mlflow_auth()
        if auth is not None and "MLFLOW_TRACKING_USERNAME" not in os.environ:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth

    def with_stack_credentials(self) -> Self:
        """Fill missing credentials from those ``stack up`` generated.

        Credentials given explicitly or in the environment win; otherwise the generated
        ``<stack_dir>/credentials.json`` (mode 0600) is used, if it exists, for each
        service the local stack runs (a remote service keeps its own credentials).
        """
        creds = self.stack_dir / CREDENTIALS_FILE
        if not creds.is_file():
            return self
        data = json.loads(creds.read_text())
        update: dict[str, Any] = {}

        def fill(field: str, key: str, local: bool, secret: bool = True) -> None:
            if getattr(self, field) is None and local and data.get(key):
                update[field] = SecretStr(data[key]) if secret else data[key]

        s3_local = self.s3_endpoint_url is None
        fill("s3_access_key", "access_key", s3_local)
        fill("s3_secret_key", "secret_key", s3_local)
        fill("prefect_auth_string", "prefect_auth_string", self.prefect_api_url is None)
        mlflow_local = self.mlflow_tracking_uri is None
        fill("mlflow_username", "mlflow_username", mlflow_local, secret=False)
        fill("mlflow_password", "mlflow_password", mlflow_local)
        fill("serve_key", "serve_key", self.serve_url is None)
        return self.model_copy(update=update) if update else self

    # ---- derived endpoints -------------------------------------------------------
    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL, or None for AWS's own endpoints."""
        if self.s3_endpoint_url is None:
            local = self.local_stack()
            return local.url(local.s3_port)
        return self.s3_endpoint_url or None

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        local = self.local_stack()
        return local.url(local.mlflow_port)

    @property
    def serving_url(self) -> str:
        """The model server flows tell of promotions: serve_url, else the stack's own."""
        local = self.local_stack()
        return (self.serve_url or local.url(local.serve_port)).rstrip("/")

    @property
    def api_url(self) -> str:
        local = self.local_stack()
        return (self.prefect_api_url or local.url(local.prefect_port) + "/api").rstrip("/")

    @property
    def ui_url(self) -> str:
        if self.prefect_ui_url:
            return self.prefect_ui_url.rstrip("/")
        api = self.api_url
        return api[: -len("/api")] if api.endswith("/api") else api

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def s3_client(self) -> Any:
        """A boto3 S3 client for the configured store (path-style addressing).

        It gives up within seconds when the store is down (3 attempts, connect timeout
        5 s, read timeout 30 s), so that an outage reaches the run's log at once and the
        task's own bounded retry (tasks/retry.py, ``outage_tolerance_s``) takes over.
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=_reveal(self.s3_access_key),
            aws_secret_access_key=_reveal(self.s3_secret_key),
            region_name=self.s3_region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def shell_env(self) -> dict[str, str]:
        """Environment for processes that use the stack (workers, shells, flows).

        Holds the credentials: write it only to files of mode 0600, never to logs.
        """
        local = self.local_stack()
        env: dict[str, str] = {
            "MLSYS_STACK_DIR": str(self.stack_dir.resolve()),
            "MLSYS_HOST": local.host,
            "MLSYS_BUCKET": self.bucket,
            "MLSYS_S3_REGION": self.s3_region,
            "MLSYS_MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLSYS_MLFLOW_EXPERIMENT": self.mlflow_experiment,
            "MLSYS_PREFECT_API_URL": self.api_url,
            "MLSYS_PREFECT_UI_URL": self.ui_url,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_URL": self.ui_url,
            "MLSYS_OUTAGE_TOLERANCE_S": str(self.outage_tolerance_s),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            # Few, short HTTP retries inside MLflow's client: an outage surfaces within
            # seconds and the task's own bounded retry (tasks/retry.py) takes over.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
            # Prefect's client retries 429/502/503 and dropped connections with
            # exponential back-off (2, 4, 8... s): 8 tries ride out a busy server.
            "PREFECT_CLIENT_MAX_RETRIES": "8",
        }
        if self.datasets_dir:
            env["MLSYS_DATASETS_DIR"] = self.datasets_dir
        if self.dask_address:
            env["MLSYS_DASK_ADDRESS"] = self.dask_address
        endpoint = self.s3_endpoint
        env["MLSYS_S3_ENDPOINT_URL"] = endpoint or ""
        if endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        if self.s3_access_key is not None and self.s3_secret_key is not None:
            env["MLSYS_S3_ACCESS_KEY"] = self.s3_access_key.get_secret_value()
            env["MLSYS_S3_SECRET_KEY"] = self.s3_secret_key.get_secret_value()
            env["AWS_ACCESS_KEY_ID"] = env["MLSYS_S3_ACCESS_KEY"]
            env["AWS_SECRET_ACCESS_KEY"] = env["MLSYS_S3_SECRET_KEY"]
        env["AWS_DEFAULT_REGION"] = self.s3_region
        if self.prefect_auth_string is not None:
            env["PREFECT_API_AUTH_STRING"] = self.prefect_auth_string.get_secret_value()
            env["MLSYS_PREFECT_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        if self.mlflow_username is not None and self.mlflow_password is not None:
            env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_username
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password.get_secret_value()
            env["MLSYS_MLFLOW_USERNAME"] = self.mlflow_username
            env["MLSYS_MLFLOW_PASSWORD"] = env["MLFLOW_TRACKING_PASSWORD"]
        if self.serve_key is not None:
            env["MLSYS_SERVE_KEY"] = self.serve_key.get_secret_value()
        env["MLSYS_SERVE_PORT"] = str(local.serve_port)
        if self.serve_url:
            env["MLSYS_SERVE_URL"] = self.serve_url
        return env

    def prefect_headers(self) -> dict[str, str]:
        """HTTP headers for a request to the Prefect API (its basic-auth credential)."""
        if self.prefect_auth_string is None:
            return {}
        token = base64.b64encode(self.prefect_auth_string.get_secret_value().encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def mlflow_auth(self) -> tuple[str, str] | None:
        """(user, password) for HTTP basic auth against MLflow, if it has credentials."""
        if self.mlflow_username is None or self.mlflow_password is None:
            return None
        return self.mlflow_username, self.mlflow_password.get_secret_value()


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
