"""Riding out an outage of S3 or MLflow, and never retrying anything else.

An error is either an *outage* of a service the pipeline depends on (S3 or MLflow cannot
be reached, times out, drops the connection, or answers with a server error) or it is
*deterministic* (bad input, a ValueError, a missing object, a refused credential, an
MLflow 4xx answer...): trying again cannot help, so it is never retried.

On an outage, :func:`outage_tolerant` (a decorator for a task's function) and
:func:`tolerant` (a proxy whose every method call does the same; ``TrackedRun.client()``
is one) log one warning at once, naming the service and its URL, keep trying with a
short backoff for ``MLSYS_OUTAGE_TOLERANCE_S`` seconds (``Settings.outage_tolerance_s``,
default 120) from the first failure, say when the service is back, and otherwise raise
:class:`ServiceOutage`, whose message names the service, its URL and the time::

    S3 at http://127.0.0.1:8333 unreachable (EndpointConnectionError: Connection
    refused); trying again for up to 120 s (MLSYS_OUTAGE_TOLERANCE_S)
    ...
    ServiceOutage: S3 at http://127.0.0.1:8333 unreachable for 121 s, gave up
    (MLSYS_OUTAGE_TOLERANCE_S=120): EndpointConnectionError: Connection refused

A :class:`ServiceOutage` is itself never retried, so a tolerant call inside a tolerant
task does not make the wait twice as long.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

from mlsys.data.s3 import S3Error

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

S3 = "S3"
MLFLOW = "MLflow"

# Backoff between tries (seconds); the last one repeats until the tolerance runs out.
DELAYS_S: tuple[float, ...] = (1, 2, 4, 8, 10)
NOTE_EVERY_S = 30.0
"""While an outage lasts, one "still unreachable" line this often."""

# S3 error codes that mean the service is struggling rather than that the request is bad.
_S3_SERVER_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


@dataclass(frozen=True)
class Outage:
    """What an outage error says: which service, where, and how it failed."""

    service: str
    url: str | None
    problem: str  # "unreachable" or "failing (HTTP 503)"
    reason: str  # short: "EndpointConnectionError: Connection refused"

    @property
    def where(self) -> str:
        return f"{self.service} at {self.url}" if self.url else self.service


class ServiceOutage(RuntimeError):
    """A service stayed out longer than the outage tolerance. Never retried."""

    def __init__(self, outage: Outage, seconds: float, tolerance_s: float) -> None:
        super().__init__(
            f"{outage.where} {outage.problem} for {seconds:.0f} s, gave up "
            f"(MLSYS_OUTAGE_TOLERANCE_S={tolerance_s:g}): {outage.reason}"
        )
        self.outage = outage
        self.seconds = seconds


# ---- classification -----------------------------------------------------------------------


def classify(exc: BaseException) -> Outage | None:
    """The outage ``exc`` means, or None when it is deterministic (never worth a retry).

    Looks through the chain of causes, so that an ``S3Error`` or ``SourceError`` wrapping
    a connection error is an outage, and one wrapping a ``NoSuchKey`` is not.
    """
    for link in _chain(exc):
        if isinstance(link, ServiceOutage):
            return None  # already waited out
        if isinstance(link, S3Error) and link.permanent:  # missing, or refused credentials
            return None
        outage = _s3_outage(link) or _mlflow_outage(link)
        if outage is not None:
            return outage
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage of S3 or MLflow (see :func:`classify`)."""
    return classify(exc) is not None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it: ``__cause__``, and ``__context__`` where MLflow
    raises its error while handling the requests error (without ``from``)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        if link.__cause__ is not None:
            link = link.__cause__
        elif _is_mlflow_exception(link) and not link.__suppress_context__:
            link = link.__context__
        else:
            link = None


def _s3_outage(exc: BaseException) -> Outage | None:
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if isinstance(exc, bx.SSLError):
        return None  # a certificate problem does not pass by itself
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError):
        kwargs = getattr(exc, "kwargs", {}) or {}
        url = kwargs.get("endpoint_url")
        reason = _reason(exc, str(kwargs.get("error", "")))
        return Outage(S3, _origin(url) or _s3_endpoint(), "unreachable", reason)
    if isinstance(exc, bx.ClientError):
        response = exc.response or {}
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(response.get("Error", {}).get("Code", ""))
        if status >= 500 or code in _S3_SERVER_CODES:
            message = str(response.get("Error", {}).get("Message", "")) or code
            return Outage(
                S3,
                _s3_endpoint(),
                f"failing (HTTP {status or code})",
                f"{code}: {_short(message)}",
            )
    return None


def _is_mlflow_exception(exc: BaseException) -> bool:
    return any(
        c.__name__ == "MlflowException" and c.__module__.startswith("mlflow")
        for c in type(exc).__mro__
    )


_MLFLOW_PATHS = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow", "/api/3.0/mlflow", "/api/2.0/preview")
_STATUS_IN_MESSAGE = re.compile(r"failed with error code (\d{3})")
_URL = re.compile(r"https?://[^\s'\"<>]+")


def _mlflow_outage(exc: BaseException) -> Outage | None:
    outage = _mlflow_answer(exc)
    if outage is not None and outage.problem.startswith("failing") and _is_artifact_call(exc):
        # MLflow keeps its artifacts in S3 (it proxies them): a 5xx on an artifact is most
        # often S3 out behind it. Say so when S3 cannot be reached from here either.
        s3 = _s3_endpoint()
        down = _unreachable(s3)
        if s3 and down:
            return Outage(
                S3,
                s3,
                "unreachable",
                f"{down}; MLflow at {outage.url} cannot store or serve artifacts there: "
                f"{outage.reason}",
            )
    return outage


def _is_artifact_call(exc: BaseException) -> bool:
    request = getattr(exc, "request", None)
    return "mlflow-artifacts" in f"{exc} {getattr(request, 'url', '')}"


def _unreachable(url: str | None, timeout_s: float = 3.0) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails (None when it opens)."""
    if not url:
        return None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _mlflow_answer(exc: BaseException) -> Outage | None:
    if _is_mlflow_exception(exc):
        text = str(exc)
        url = _origin(_first_url(text)) or _tracking_uri()
        if type(exc).__name__ == "RestException":  # the server answered with an error
            status = _mlflow_status(exc)
            if status >= 500:
                return Outage(MLFLOW, url, f"failing (HTTP {status})", _short(text))
            return None
        match = _STATUS_IN_MESSAGE.search(text)
        if match:  # a non-JSON error answer, e.g. from a proxy in front of MLflow
            status = int(match.group(1))
            if status >= 500:
                return Outage(MLFLOW, url, f"failing (HTTP {status})", _short(text))
            return None
        # "API request to URL failed with exception ...", raised while handling the
        # requests error (as its context, or its cause for a timeout).
        behind = exc.__cause__ or exc.__context__
        if _is_requests_outage(behind):
            assert behind is not None
            return Outage(MLFLOW, url, _requests_problem(behind), _reason(behind))
        return None
    try:
        import requests
    except ImportError:  # pragma: no cover - MLflow needs requests
        return None
    if isinstance(exc, requests.RequestException):
        request_url = getattr(getattr(exc, "request", None), "url", None) or _first_url(str(exc))
        if not _is_mlflow_url(request_url):
            return None
        url = _origin(request_url) or _tracking_uri()
        if isinstance(exc, requests.HTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
            if status >= 500:
                return Outage(MLFLOW, url, f"failing (HTTP {status})", _reason(exc))
            return None
        if _is_requests_outage(exc):
            return Outage(MLFLOW, url, _requests_problem(exc), _reason(exc))
        return None
    return None


def _is_requests_outage(exc: BaseException | None) -> bool:
    """A requests error that says the server could not be reached, timed out, dropped the
    connection (also mid-answer: ``ChunkedEncodingError``, "Connection broken:
    IncompleteRead", a server killed while it answered) or kept answering 5xx (urllib3's
    retries ran out: ``RetryError``)."""
    try:
        import requests
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    return isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.RetryError
        | requests.exceptions.ChunkedEncodingError,
    )


_TOO_MANY = re.compile(r"too many (\d{3}) error responses")


def _requests_problem(exc: BaseException) -> str:
    """``failing (HTTP 503)`` when urllib3 gave up on a server that kept answering 5xx,
    else ``unreachable``."""
    match = _TOO_MANY.search(str(exc))
    return f"failing (HTTP {match.group(1)})" if match else "unreachable"


def _mlflow_status(exc: BaseException) -> int:
    try:
        return int(exc.get_http_status_code())  # type: ignore[attr-defined]
    except Exception:
        return 0


def _is_mlflow_url(url: str | None) -> bool:
    """Whether a requests error was a call to MLflow: its API paths, or the tracking
    server's origin. A requests error of an MLflow call comes through MLflow's own
    exception; a bare one only from its artifact downloads."""
    if not url:
        return False
    if any(path in url for path in _MLFLOW_PATHS) or "/mlflow-artifacts/" in url:
        return True
    tracking = _tracking_uri()
    return tracking is not None and _origin(url) == _origin(tracking)


def _first_url(text: str) -> str | None:
    match = _URL.search(text)
    return match.group(0) if match else None


def _origin(url: str | None) -> str | None:
    """``scheme://host[:port]`` of ``url``, without any user or password."""
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _settings() -> Any:
    from mlsys.settings import Settings

    return Settings()


def _s3_endpoint() -> str | None:
    try:
        return _origin(_settings().s3_endpoint)
    except Exception:
        return None


def _tracking_uri() -> str | None:
    import os

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _origin(uri)
    try:
        return _origin(_settings().tracking_uri)
    except Exception:
        return None


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()\]\[]+)")


def _reason(exc: BaseException, detail: str = "") -> str:
    """The error's type and the gist of its message (or of ``detail``, what it wraps):
    ``Connection refused``, ``timed out``."""
    text = f"{exc} {detail}".strip()
    match = _ERRNO.search(text)
    if match:
        gist = match.group(1).strip().rstrip(".,;:")
    elif "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        gist = "timed out"
    elif "too many" in text and "error responses" in text:
        gist = text[text.index("too many") :].split(")")[0].split("'")[0]
    else:
        gist = _short(text)
    return f"{type(exc).__name__}: {gist}"


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- riding it out ------------------------------------------------------------------------


def outage_tolerance_s() -> float:
    """How long to keep trying through an outage: ``MLSYS_OUTAGE_TOLERANCE_S`` of the
    process's environment (``Settings.outage_tolerance_s``), read at each outage."""
    return float(_settings().outage_tolerance_s)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a flow or task run (its lines go to the run's log),
    else a plain one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mlsys.outage")


# Indirections the tests replace to run without waiting.
_sleep = time.sleep
_clock = time.monotonic


def ride_out(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``, tried again through an outage of S3 or MLflow for up to
    the outage tolerance; any other error is raised at once.

    Raises:
        ServiceOutage: the service was still out when the tolerance ran out; its message
            names the service, its URL and how long it was out.
    """
    what = getattr(fn, "__name__", None) or type(fn).__name__
    first: float | None = None
    tolerance = 0.0
    tries = 0
    noted = 0.0
    current: Outage | None = None
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            outage = classify(exc)
            if outage is None:
                raise
            now = _clock()
            if first is None:
                first = noted = now
                tolerance = outage_tolerance_s()
            if outage.where != (current.where if current else None):
                current = outage
                run_logger().warning(
                    "%s %s (%s) during %s; trying again for up to %.0f s "
                    "(MLSYS_OUTAGE_TOLERANCE_S)",
                    outage.where,
                    outage.problem,
                    outage.reason,
                    what,
                    tolerance,
                )
            current = outage
            elapsed = now - first
            if elapsed >= tolerance:
                raise ServiceOutage(outage, elapsed, tolerance) from exc
            if now - noted >= NOTE_EVERY_S:
                noted = now
                run_logger().warning(
                    "%s still %s after %.0f s (%s); trying until %.0f s",
                    outage.where,
                    outage.problem,
                    elapsed,
                    outage.reason,
                    tolerance,
                )
            delay = DELAYS_S[min(tries, len(DELAYS_S) - 1)]
            tries += 1
            _sleep(max(0.0, min(delay, tolerance - elapsed)))
            continue
        if first is not None and current is not None:
            run_logger().info(
                "%s is back after %.0f s; %s went through", current.where, _clock() - first, what
            )
        return result


def outage_tolerant(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a task's function (below ``@task``) so that an outage of S3 or MLflow
    anywhere in it runs it again, whole, until the service is back or the outage
    tolerance runs out (see :func:`ride_out`). The function must be safe to run again:
    each of its writes overwrites or adds."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return ride_out(fn, *args, **kwargs)

    return wrapper


class _Tolerant:
    """Forwards attribute access to the wrapped object; its methods ride out outages."""

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            return ride_out(value, *args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"tolerant({self._target!r})"


def tolerant(target: T) -> T:
    """``target`` (an ``MlflowClient``, a boto3 client) whose every public method call
    rides out an outage of S3 or MLflow (see :func:`ride_out`): the call is tried again,
    not the whole task around it."""
    if isinstance(target, _Tolerant):
        return target
    return cast(T, _Tolerant(target))
