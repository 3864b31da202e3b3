"""Tests for mlsys.serving.config and the `mlsys serve` command's refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infra.cli import app
from mlsys.serving.config import ServeConfig

BASE: dict[str, Any] = {"model_name": "spam", "dataset": "youtube-spam", "api_key": "k"}


def test_defaults_and_the_model_uri() -> None:
    config = ServeConfig(**BASE)
    assert (config.host, config.port, config.slo_ms, config.alias) == (
        "127.0.0.1",
        8080,
        50.0,
        "champion",
    )
    assert config.model_uri == "models:/spam@champion"
    secret = ServeConfig(**{**BASE, "api_key": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(secret)  # the key stays out of logs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"api_key": " "}, "api_key must be a non-empty string"),
        ({"model_name": ""}, "model_name must be a non-empty string, got ''"),
        ({"port": 70000}, r"port must be in \[0, 65535\], got 70000"),
        ({"slo_ms": 0}, "slo_ms must be > 0, got 0"),
        ({"slo_ms": float("nan")}, "slo_ms must be a finite number, got nan"),
        ({"max_batch": 0}, "max_batch must be >= 1, got 0"),
        ({"max_batch": True}, "max_batch must be an int, got True"),
        ({"cache_entries": -1}, "cache_entries must be >= 0, got -1"),
        ({"batch_delay_ms": 60}, "batch_delay_ms=60 must be below slo_ms=50.0"),
        ({"poll_s": -1}, "poll_s must be >= 0, got -1"),
        ({"shadow_alias": "champion"}, "shadow_alias must be another alias than 'champion'"),
        ({"shadow_fraction": 1.5}, r"shadow_fraction must be in \[0, 1\], got 1.5"),
        ({"log_fraction": -0.1}, "log_fraction must be >= 0, got -0.1"),
        ({"max_body_bytes": 0}, "max_body_bytes must be >= 1, got 0"),
    ],
)
def test_bad_values_are_refused_naming_field_and_value(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ServeConfig(**{**BASE, **change})


@pytest.fixture
def no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stack credentials and no key in the environment."""
    monkeypatch.setenv("MLSYS_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.delenv("MLSYS_SERVE_KEY", raising=False)
    return tmp_path


def test_serve_refuses_to_start_without_a_key(no_stack: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--no-log"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "MLSYS_SERVE_KEY" in line and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--slo-ms", "-5"], "slo_ms must be > 0, got -5.0"),
        (["--shadow-fraction", "2"], "shadow_fraction must be in [0, 1], got 2.0"),
        (["--dataset", "no-such-dataset"], "no-such-dataset"),
    ],
)
def test_serve_names_a_bad_option_in_one_line_and_exits_2(
    no_stack: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    monkeypatch.setenv("MLSYS_SERVE_KEY", "k")
    result = CliRunner().invoke(app, ["serve", "--no-log", *args])
    assert result.exit_code == 2
    assert named in result.output and "Traceback" not in result.output
    assert result.output.startswith("error: ")


def test_serve_has_help_on_every_option() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--dataset", "--model", "--alias", "--host", "--port", "--slo-ms",
                   "--no-batching", "--max-batch", "--cache-entries", "--poll-s", "--shadow",
                   "--shadow-fraction", "--log-fraction", "--no-log"):  # fmt: skip
        assert option in result.output, option
