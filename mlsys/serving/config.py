"""How one model server is set up: a frozen, validated :class:`ServeConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["MIB", "ServeConfig"]

MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything ``mlsys serve`` needs besides the dataset's rules and the log's sink.

    Usage::

        config = ServeConfig(
            tracking_uri="http://127.0.0.1:5000",
            model_name="youtube-spam-classifier",
            dataset="youtube-spam",
            api_key=os.environ["MLSYS_SERVE_KEY"],
        )

    Args:
        model_name: the registered model served.
        dataset: the dataset it answers for (its serving suite, the log's prefix).
        api_key: the key every request but the probes must send as
            ``Authorization: Bearer <key>``; never printed (left out of ``repr``).
        tracking_uri: the MLflow tracking server with the registry; None: MLflow's default
            (``MLFLOW_TRACKING_URI``), and the shadow agreement is not logged.
        alias: the alias served; the server follows it as it moves.
        host, port: where to listen (port 0: any free port).
        workers: server processes sharing the port (``SO_REUSEPORT``), each with its own
            batcher, cache and alias watcher (:mod:`mlsys.serving.peers`); 1: this process.
        slo_ms: the latency objective: batches are sized, and requests admitted, so that
            answers take at most this long.
        batching: False: one request per model call.
        max_batch: the largest batch, in rows.
        batch_delay_ms: how long a shallow queue waits for more requests after full
            batches (below ``slo_ms``).
        cache_entries: predictions kept in the LRU cache; 0: no cache.
        poll_s: seconds between polls of the alias; 0: only ``POST /admin/reload``.
        shadow_alias: an alias (e.g. ``challenger``) scored beside the served one on a
            sample of requests, off the request path; None: no shadow.
        shadow_fraction: share of requests the shadow scores, in [0, 1].
        log_fraction: share of requests in the prediction log, in [0, 1]; 0: no log.
        log_flush_s, log_flush_rows: the log writes a part this often, or at this many rows.
        max_body_bytes: the largest request body; bigger ones get 413.
        agreement_log_s: seconds between writes of the shadow agreement to MLflow.
        loop_lag_admission: admission control also counts the event loop's lag
            (:mod:`mlsys.serving.lag`); False: only the batch queue (for a client that
            runs on the server's own event loop, as in-process tests do, whose waits are
            the loop's lag).
    """

    model_name: str
    dataset: str
    api_key: str = field(repr=False)
    tracking_uri: str | None = None
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    slo_ms: float = 50.0
    batching: bool = True
    max_batch: int = 256
    batch_delay_ms: float = 2.0
    cache_entries: int = 10_000
    poll_s: float = 10.0
    shadow_alias: str | None = None
    shadow_fraction: float = 0.1
    log_fraction: float = 1.0
    log_flush_s: float = 60.0
    log_flush_rows: int = 10_000
    max_body_bytes: int = MIB
    agreement_log_s: float = 60.0
    loop_lag_admission: bool = True

    def __post_init__(self) -> None:
        for name in ("model_name", "dataset", "alias", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise ValueError("api_key must be a non-empty string (set MLSYS_SERVE_KEY)")
        if self.shadow_alias is not None and (
            not self.shadow_alias.strip() or self.shadow_alias == self.alias
        ):
            raise ValueError(
                f"shadow_alias must be another alias than {self.alias!r}, got {self.shadow_alias!r}"
            )
        _check_int("port", self.port, 0, 65535)
        _check_int("workers", self.workers, 1, 64)
        _check_int("max_batch", self.max_batch, 1)
        _check_int("cache_entries", self.cache_entries, 0)
        _check_int("log_flush_rows", self.log_flush_rows, 1)
        _check_int("max_body_bytes", self.max_body_bytes, 1)
        for name in ("batching", "loop_lag_admission"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _check_number("slo_ms", self.slo_ms, positive=True)
        _check_number("batch_delay_ms", self.batch_delay_ms)
        if self.batch_delay_ms >= self.slo_ms:
            raise ValueError(
                f"batch_delay_ms={self.batch_delay_ms!r} must be below slo_ms={self.slo_ms!r}"
            )
        _check_number("poll_s", self.poll_s)
        _check_number("log_flush_s", self.log_flush_s, positive=True)
        _check_number("agreement_log_s", self.agreement_log_s, positive=True)
        for name in ("shadow_fraction", "log_fraction"):
            value = getattr(self, name)
            _check_number(name, value)
            if value > 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    @property
    def model_uri(self) -> str:
        """``models:/<name>@<alias>``."""
        return f"models:/{self.model_name}@{self.alias}"


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


def _check_number(name: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
