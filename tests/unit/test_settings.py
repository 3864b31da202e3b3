"""Settings (the engine's) and StackSettings (the local stack's): env prefix, derived
endpoints, credentials file, ports, database URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.config import StackSettings, redact_url
from mlsys.settings import LocalStack, Settings


def test_env_prefix_sets_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSYS_MLFLOW_PORT", "5123")
    monkeypatch.setenv("MLSYS_BUCKET", "other")
    settings = Settings()
    assert settings.local_stack().mlflow_port == 5123
    assert settings.tracking_uri == "http://127.0.0.1:5123"
    assert settings.s3_uri("raw/x.parquet") == "s3://other/raw/x.parquet"
    assert StackSettings().mlflow_port == 5123


def test_engine_and_stack_agree_on_the_local_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint the engine leaves unset is where the stack serves it, from the same
    variables; the stack's own fields win over the environment for itself."""
    for env in (
        {},
        {"MLSYS_HOST": "10.1.2.3", "MLSYS_S3_PORT": "18333", "MLSYS_SERVE_PORT": "18080"},
    ):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        engine, stack = Settings(), StackSettings()
        for attr in ("s3_endpoint", "tracking_uri", "api_url", "ui_url", "serving_url"):
            assert getattr(engine, attr) == getattr(stack, attr), attr
        assert engine.local_stack() == LocalStack()
    moved = StackSettings(prefect_port=14200).model_copy(update={"serve_port": 14280})
    assert moved.api_url == "http://10.1.2.3:14200/api"
    assert moved.serving_url == "http://10.1.2.3:14280"


def test_the_engine_has_no_stack_only_field() -> None:
    stack_only = {"weed_grpc_offset", "work_pool", "database_url", "serve", "pool_concurrency"}
    assert not stack_only & set(Settings.model_fields)
    assert stack_only < set(StackSettings.model_fields)


def test_local_endpoints_follow_ports() -> None:
    settings = StackSettings(s3_port=18333, prefect_port=14200)
    assert settings.s3_endpoint == "http://127.0.0.1:18333"
    assert settings.api_url == "http://127.0.0.1:14200/api"
    assert settings.ui_url == "http://127.0.0.1:14200"


def test_remote_endpoints_win() -> None:
    settings = Settings(
        s3_endpoint_url="",
        mlflow_tracking_uri="https://mlflow.example.com",
        prefect_api_url="https://prefect.example.com/api/",
    )
    assert settings.s3_endpoint is None  # AWS's own endpoints
    assert settings.tracking_uri == "https://mlflow.example.com"
    assert settings.api_url == "https://prefect.example.com/api"
    assert settings.ui_url == "https://prefect.example.com"


def test_bad_port_is_named() -> None:
    with pytest.raises(ValidationError, match="mlflow_port=70000"):
        StackSettings(mlflow_port=70000)
    with pytest.raises(ValidationError, match="weed_filer_port=60000"):
        StackSettings(weed_filer_port=60000)  # its gRPC port would be 70000


def test_load_reads_generated_keys(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(
        json.dumps({"access_key": "AK1", "secret_key": "SK1"})
    )
    settings = Settings.load(stack_dir=tmp_path)
    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    assert settings.s3_access_key.get_secret_value() == "AK1"
    assert settings.s3_secret_key.get_secret_value() == "SK1"


def test_env_keys_beat_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials.json").write_text(
        json.dumps({"access_key": "AK1", "secret_key": "SK1"})
    )
    monkeypatch.setenv("MLSYS_S3_ACCESS_KEY", "AK2")
    monkeypatch.setenv("MLSYS_S3_SECRET_KEY", "SK2")
    settings = Settings.load(stack_dir=tmp_path)
    assert settings.s3_access_key is not None
    assert settings.s3_access_key.get_secret_value() == "AK2"


def test_secrets_hidden_in_repr() -> None:
    settings = StackSettings(s3_secret_key="very-secret", database_url="postgresql://u:pw@h/db")
    assert "very-secret" not in repr(settings)
    assert "pw@" not in repr(settings)


def test_sqlite_by_default(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    mlflow_db = f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db?timeout=60"
    assert settings.mlflow_backend_uri() == mlflow_db
    assert settings.mlflow_auth_db_uri().endswith("/mlflow/basic_auth.db?timeout=60")
    assert settings.prefect_database_uri().startswith("sqlite+aiosqlite:///")


def test_postgres_urls_get_drivers_and_mlflow_schema() -> None:
    settings = StackSettings(database_url="postgres://u:pw@db.local:5432/mlsys")
    assert settings.prefect_database_uri() == "postgresql+asyncpg://u:pw@db.local:5432/mlsys"
    assert settings.mlflow_backend_uri() == (
        "postgresql+psycopg2://u:pw@db.local:5432/mlsys?options=-csearch_path%3Dmlflow"
    )
    assert settings.mlflow_auth_db_uri().endswith("?options=-csearch_path%3Dmlflow_auth")


def test_non_postgres_database_url_is_named() -> None:
    settings = StackSettings(database_url="mysql://u@h/db")
    with pytest.raises(ValueError, match="'mysql'"):
        settings.prefect_database_uri()


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_shell_env_carries_keys_and_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = StackSettings(
        s3_access_key="AK", s3_secret_key="SK", s3_port=18333, serve_port=18080
    )
    env = settings.shell_env()
    assert env["AWS_ACCESS_KEY_ID"] == "AK"
    assert env["MLSYS_S3_SECRET_KEY"] == "SK"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:18333"
    assert env["PREFECT_API_URL"] == settings.api_url
    assert env["MLSYS_WORK_POOL"] == "mlsys"
    # A process given this environment (a worker, a sourced shell) reaches the same services.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    engine = Settings()
    for attr in ("s3_endpoint", "tracking_uri", "api_url", "ui_url", "serving_url"):
        assert getattr(engine, attr) == getattr(settings, attr), attr


def test_stack_credentials_are_generated_once_per_local_service(tmp_path: Path) -> None:
    from infra.stack import ensure_credentials

    local = ensure_credentials(StackSettings(stack_dir=tmp_path / "a"))
    assert local.prefect_auth_string is not None and local.mlflow_password is not None
    assert local.s3_access_key is not None
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "credentials.json").stat().st_mode & 0o777 == 0o600
    again = ensure_credentials(StackSettings(stack_dir=tmp_path / "a"))
    assert again.prefect_auth_string == local.prefect_auth_string, "a restart kept its keys"
    env = again.shell_env()
    assert env["PREFECT_API_AUTH_STRING"] == local.prefect_auth_string.get_secret_value()
    assert env["MLFLOW_TRACKING_PASSWORD"] == local.mlflow_password.get_secret_value()
    assert again.prefect_headers()["Authorization"].startswith("Basic ")
    # Remote services keep their own credentials; none is generated for them.
    remote = ensure_credentials(
        StackSettings(
            stack_dir=tmp_path / "b",
            prefect_api_url="http://prefect.example/api",
            mlflow_tracking_uri="http://mlflow.example",
            mlflow_username="me",
            mlflow_password="theirs",
        )
    )
    assert remote.prefect_auth_string is None
    assert remote.mlflow_auth() == ("me", "theirs")
    assert "prefect_auth_string" not in (tmp_path / "b" / "credentials.json").read_text()


def test_the_stacks_dask_cluster_is_where_flows_are_pointed(tmp_path: Path) -> None:
    """With MLSYS_DASK on, flows get the stack's scheduler and Dask's TLS variables for
    its certificate; an MLSYS_DASK_ADDRESS naming another cluster is refused, naming both."""
    off = StackSettings(stack_dir=tmp_path)
    assert off.dask_address is None
    assert "MLSYS_DASK_ADDRESS" not in off.shell_env()
    on = StackSettings(stack_dir=tmp_path, dask=True, dask_port=8799, host="10.0.0.5")
    assert on.dask_address == "tls://10.0.0.5:8799"
    env = on.shell_env()
    assert env["MLSYS_DASK_ADDRESS"] == "tls://10.0.0.5:8799"
    tls = (tmp_path / "dask-tls").resolve()
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(tls / "ca.crt")
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == str(tls / "dask.key")
    same = StackSettings(stack_dir=tmp_path, dask=True, dask_address="tls://127.0.0.1:8786")
    assert same.dask_address == "tls://127.0.0.1:8786"
    with pytest.raises(ValidationError, match=r"tls://127\.0\.0\.1:8786.*tls://10\.1\.1\.1:8786"):
        StackSettings(stack_dir=tmp_path, dask=True, dask_address="tls://10.1.1.1:8786")
