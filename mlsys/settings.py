"""One typed settings object for every endpoint and credential (env prefix ``MLSYS_``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CREDENTIALS_FILE = "credentials.json"


class Settings(BaseSettings):
    """Where the services are and how to reach them.

    Every field can be set from the environment as ``MLSYS_<FIELD>`` (for example
    ``MLSYS_S3_ENDPOINT_URL``). Left unset, the endpoints point at the local stack
    that ``mlsys stack up`` runs on ``host``. Read it once, explicitly, with
    :meth:`Settings.load`, and pass it down; nothing reads settings at import time.

    Usage::

        settings = Settings.load()
        s3 = settings.s3_client()
    """

    model_config = SettingsConfigDict(env_prefix="MLSYS_", extra="ignore")

    stack_dir: Path = Field(
        default=Path(".stack"), description="State of the local stack: data, logs, pids, keys."
    )
    host: str = Field(default="127.0.0.1", description="Interface the local stack binds to.")

    # S3: SeaweedFS locally, AWS S3 or any S3-compatible store elsewhere.
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint; unset means the local SeaweedFS. Empty string means AWS.",
    )
    s3_access_key: SecretStr | None = Field(default=None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    bucket: str = Field(default="mlsys", description="Bucket for data, artifacts and results.")

    # Ports of the local stack. gRPC ports of SeaweedFS are the HTTP port + offset.
    s3_port: int = Field(default=8333, description="SeaweedFS S3 gateway port.")
    weed_master_port: int = Field(default=9333, description="SeaweedFS master port.")
    weed_volume_port: int = Field(default=9340, description="SeaweedFS volume server port.")
    weed_filer_port: int = Field(default=8888, description="SeaweedFS filer port.")
    weed_admin_port: int = Field(default=23646, description="SeaweedFS admin server port.")
    weed_grpc_offset: int = Field(default=10000, description="SeaweedFS gRPC port offset.")
    mlflow_port: int = Field(default=5000, description="MLflow tracking server port.")
    prefect_port: int = Field(default=4200, description="Prefect server port.")

    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking server; unset means the local one."
    )
    mlflow_experiment: str = Field(default="mlsys", description="MLflow experiment name.")
    prefect_api_url: str | None = Field(
        default=None, description="Prefect API (…/api); unset means the local server."
    )
    prefect_ui_url: str | None = Field(
        default=None, description="Prefect UI base URL used in links; derived from the API URL."
    )
    work_pool: str = Field(default="mlsys", description="Prefect process work pool name.")
    datasets_dir: str | None = Field(
        default=None,
        description=(
            "Folders of dataset definitions searched before the project's datasets/ "
            "(several joined by ':'); flows and workers of the stack see the same."
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
    def _check_ports(self) -> Settings:
        for name in (
            "s3_port",
            "weed_master_port",
            "weed_volume_port",
            "weed_filer_port",
            "weed_admin_port",
            "mlflow_port",
            "prefect_port",
        ):
            value = getattr(self, name)
            if not 0 < value < 65536 - (self.weed_grpc_offset if name.startswith("weed") else 0):
                raise ValueError(f"{name}={value} is not a usable TCP port")
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment (``overrides`` win), then add the stack's S3 keys."""
        return cls(**overrides).with_stack_credentials()

    def with_stack_credentials(self) -> Settings:
        """Fill missing S3 keys from the keys ``stack up`` generated.

        Keys given explicitly or in the environment win; otherwise the generated
        ``<stack_dir>/credentials.json`` (mode 0600) is used, if it exists.
        """
        if self.s3_access_key is not None and self.s3_secret_key is not None:
            return self
        creds = self.stack_dir / CREDENTIALS_FILE
        if not creds.is_file():
            return self
        data = json.loads(creds.read_text())
        return self.model_copy(
            update={
                "s3_access_key": self.s3_access_key or SecretStr(data["access_key"]),
                "s3_secret_key": self.s3_secret_key or SecretStr(data["secret_key"]),
            }
        )

    # ---- derived endpoints -------------------------------------------------------
    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL, or None for AWS's own endpoints."""
        if self.s3_endpoint_url is None:
            return f"http://{self.host}:{self.s3_port}"
        return self.s3_endpoint_url or None

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return (self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api").rstrip("/")

    @property
    def ui_url(self) -> str:
        if self.prefect_ui_url:
            return self.prefect_ui_url.rstrip("/")
        api = self.api_url
        return api[: -len("/api")] if api.endswith("/api") else api

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def s3_client(self) -> Any:
        """A boto3 S3 client for the configured store (path-style addressing)."""
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
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        )

    # ---- database URLs for the servers -------------------------------------------
    def mlflow_backend_uri(self) -> str:
        """SQLAlchemy URL of MLflow's backend store.

        On PostgreSQL, MLflow's tables live in their own schema ``mlflow`` so that
        they never collide with Prefect's (both use an ``alembic_version`` table).
        """
        if self.database_url is None:
            return f"sqlite:///{(self.stack_dir / 'mlflow' / 'mlflow.db').resolve()}"
        url = _with_driver(self.database_url.get_secret_value(), "postgresql+psycopg2")
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}options={quote('-csearch_path=mlflow')}"

    def prefect_database_uri(self) -> str:
        """SQLAlchemy URL of the Prefect server's database."""
        if self.database_url is None:
            path = (self.stack_dir / "prefect" / "prefect.db").resolve()
            return f"sqlite+aiosqlite:///{path}"
        return _with_driver(self.database_url.get_secret_value(), "postgresql+asyncpg")

    def shell_env(self) -> dict[str, str]:
        """Environment for processes that use the stack (workers, shells, flows).

        Holds the S3 keys: write it only to files of mode 0600, never to logs.
        """
        env: dict[str, str] = {
            "MLSYS_STACK_DIR": str(self.stack_dir.resolve()),
            "MLSYS_HOST": self.host,
            "MLSYS_BUCKET": self.bucket,
            "MLSYS_S3_REGION": self.s3_region,
            "MLSYS_MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLSYS_MLFLOW_EXPERIMENT": self.mlflow_experiment,
            "MLSYS_PREFECT_API_URL": self.api_url,
            "MLSYS_PREFECT_UI_URL": self.ui_url,
            "MLSYS_WORK_POOL": self.work_pool,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_URL": self.ui_url,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
        if self.datasets_dir:
            env["MLSYS_DATASETS_DIR"] = self.datasets_dir
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
        return env


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


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
