"""The model server's HTTP application: MLflow's scoring protocol in front of the rules, the
cache, the batcher, the shadow model and the prediction log.

=========================  ====  ==========================================================
route                      auth  answer
=========================  ====  ==========================================================
``POST /invocations``      key   ``{"predictions": [{"label": ..., ...}, ...]}``, one record
                                 per row, with ``X-Model-Name``, ``X-Model-Version`` and
                                 ``X-Request-Id`` headers
``GET /ping``              open  200 while the process runs (liveness)
``GET /health``            open  200 when a model version is loaded, else 503 (readiness)
``GET /version``           open  the model, alias and version served (and MLflow's version)
``GET /metrics``           key   Prometheus text (:mod:`mlsys.serving.metrics`)
``POST /admin/reload``     key   resolves the alias now, loads a new version, answers
                                 ``{"model", "alias", "version", "previous", "changed", ...}``
=========================  ====  ==========================================================

With several worker processes (:mod:`mlsys.serving.peers`), ``/metrics`` and
``/admin/reload`` are answered for all of them, whichever one the request reaches:
metrics summed over the workers, the reload done by each (its answer lists them under
``"workers"``); a request with the ``X-Mlsys-Worker-Only`` header is answered by its
worker alone (how the workers ask each other; not counted in ``requests_total``).

Every other request needs ``Authorization: Bearer <key>``, compared in constant time;
without it: 401 with ``WWW-Authenticate``. Errors are JSON like MLflow's,
``{"error_code": ..., "message": ...}``: 400 malformed body, 413 body over the limit
(by ``Content-Length`` or as streamed), 415 content type, 422 a row breaking a serving
suite or signature rule (``refusals`` lists row, rule and column), 503 overloaded (with
``Retry-After``), shutting down, or no version loaded yet. A refused request reaches
neither the model, the cache nor the prediction log.

How a prediction request goes: body read within the limit, parsed to rows, rows checked;
rows found in the cache (by model version and input) are answered from it; the others go
to the batcher as **one queue item per request** (its rows stay together, so the answer
comes from one batch, hence one model version; the batcher counts rows, not requests,
against the batch size). If a promotion lands between the cache lookup and the batch, the
whole request is scored again by the new version, so an answer never mixes versions.
After the response is sent, the request is appended to the prediction log and, for a
sampled share, queued for the shadow model.

Why one module: the routed Starlette application and the raw ASGI handler that answers
``POST /invocations`` ahead of it are two doors to one ``_Server`` (the served version,
cache, batcher, metrics, log and shadow) and must answer with the same bytes; kept
together, one reading shows that they do and a change to one is made to both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsys.serving.batching import AdaptiveBatcher, Draining, Overloaded
from mlsys.serving.cache import PredictionCache, Record
from mlsys.serving.config import ServeConfig
from mlsys.serving.lag import LoopLag
from mlsys.serving.metrics import CONTENT_TYPE, ServingMetrics, VersionInfo
from mlsys.serving.model import LoadedModel, ModelLoadError, ModelWatcher
from mlsys.serving.payload import PayloadError, Rows, media_type, parse_body
from mlsys.serving.peers import WORKER_ONLY, Peers, ask, merge_metrics
from mlsys.serving.predlog import PredictionLog
from mlsys.serving.rules import Refusal, RowRules
from mlsys.serving.shadow import Agreement, AgreementLogger

__all__ = ["OPEN_PATHS", "create_app"]

OPEN_PATHS = frozenset({"/ping", "/health", "/version"})
"""Routes answered without the key: the probes."""

_ROUTES = frozenset({*OPEN_PATHS, "/invocations", "/metrics", "/admin/reload"})
# The request headers the fast path of POST /invocations reads.
_FAST_HEADERS = frozenset({b"authorization", b"content-length", b"content-type", b"x-request-id"})
_WORKER_ONLY = WORKER_ONLY.encode()
# How long a worker waits for the others: a scrape, and a reload (which loads a version).
_PEER_METRICS_TIMEOUT_S = 10.0
_PEER_RELOAD_TIMEOUT_S = 600.0
_JSON = "application/json"
_JSON_BYTES = _JSON.encode()
_EMPTY = json.dumps({"predictions": []}).encode()
# Refusals listed in a 422 body; the message names the first.
_MAX_REFUSALS = 20

# Turns of the event loop an admitted request still waits for: its batch's result handed
# back from the scoring thread, the batcher resuming to resolve the requests, the request
# resuming to write its answer. Each costs about the loop's measured lag.
_LOOP_TURNS = 3
# While a model version loads beside the served one, and for a moment after it takes over,
# admission control allows answers up to this many times the objective before it refuses:
# the load and warm-up take the cores the served version scores on, and a promotion, the
# server's own doing, should cost latency (seen in the latency histogram), not errors.
_PROMOTION_SLACK = 4.0

_log = logging.getLogger(__name__)


class _Refused(Exception):
    """An answer other than 200, raised where the reason is found."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers
        self.extra = extra

    def reply(self) -> _Reply:
        return _error_reply(self.status, self.error_code, self.message, self.headers, **self.extra)


@dataclass(frozen=True)
class _Reply:
    """An answer to ``POST /invocations``, sent as a Starlette :class:`Response` on the
    routed path and as two raw ASGI messages on the fast one, with the same bytes.

    ``after``: the arguments of :meth:`_Server._after` (log and shadow), run once the
    answer is sent; None for a refusal.
    """

    status: int
    body: bytes
    headers: dict[str, str] | None = None
    after: tuple[Any, ...] | None = None

    def response(self, background: BackgroundTask | None = None) -> Response:
        return Response(
            self.body,
            status_code=self.status,
            media_type=_JSON,
            headers=self.headers,
            background=background,
        )

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers :meth:`response` sends, in its order: ours, then the length and type."""
        raw = [] if self.headers is None else [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers.items()
        ]  # fmt: skip
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append((b"content-type", _JSON_BYTES))
        return raw


def _error_reply(
    status: int,
    error_code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> _Reply:
    body = json.dumps({"error_code": error_code, "message": message, **extra})
    return _Reply(status, body.encode(), headers)


def _error(
    status: int,
    error_code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    return _error_reply(status, error_code, message, headers, **extra).response()


def _unauthorized() -> _Reply:
    return _error_reply(
        401,
        "UNAUTHENTICATED",
        "this server needs Authorization: Bearer <key> (the key is MLSYS_SERVE_KEY)",
        {"WWW-Authenticate": 'Bearer realm="mlsys serve"'},
    )


@dataclass(frozen=True)
class Scored:
    """A batcher's answer for one request: the model that scored it and its records."""

    model: LoadedModel
    records: list[Record]


def _score_with(model: LoadedModel | None, parts: list[Rows]) -> list[Scored | Exception]:
    """Score several requests' rows in one model call; if that fails, each request alone,
    so that one bad request fails by itself."""
    if model is None:
        return [RuntimeError("no model version is loaded")] * len(parts)
    try:
        return _split(model, parts, Rows.concat_columns(parts, model.input_columns))
    except Exception as exc:
        if len(parts) == 1:
            return [exc]
    results: list[Scored | Exception] = []
    for part in parts:
        try:
            results.extend(_split(model, [part], part.columns))
        except Exception as exc:
            results.append(exc)
    return results


def _split(
    model: LoadedModel, parts: list[Rows], columns: dict[str, list[Any]]
) -> list[Scored | Exception]:
    records = model.records(columns)
    rows = sum(part.count for part in parts)
    if len(records) != rows:
        raise RuntimeError(f"{model.uri} answered {len(records)} rows for {rows}")
    results: list[Scored | Exception] = []
    start = 0
    for part in parts:
        results.append(Scored(model, records[start : start + part.count]))
        start += part.count
    return results


class _Guard:
    """Pure ASGI middleware: refuses requests without the key (but the probes), and counts
    every answer by route and status. (Starlette's ``BaseHTTPMiddleware`` would cost a
    task per request.)"""

    def __init__(self, app: ASGIApp, api_key: str, metrics: ServingMetrics) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope["path"]
        try:
            if path in OPEN_PATHS or self._authorized(scope):
                await self.app(scope, receive, send_counted)
            else:
                await _unauthorized().response()(scope, receive, send_counted)
        finally:
            if not _worker_only(scope):  # another worker asking: not a client's request
                self.metrics.count(path if path in _ROUTES else "other", status)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return _key_matches(value, self.expected)
        return False


def _worker_only(scope: Scope) -> bool:
    """Whether a request asks its worker alone (:data:`mlsys.serving.peers.WORKER_ONLY`)."""
    return any(name == _WORKER_ONLY for name, _ in scope["headers"])


def _key_matches(authorization: bytes, expected: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <expected>`` (the scheme in
    any case; the key compared in constant time)."""
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


class _Server:
    """State and handlers of one app (see :func:`create_app`)."""

    def __init__(
        self,
        config: ServeConfig,
        watcher: ModelWatcher,
        rules: RowRules,
        prediction_log: PredictionLog | None,
        metrics: ServingMetrics,
        sample: Callable[[], float],
        peers: Peers | None = None,
    ) -> None:
        self.config = config
        self.peers = peers
        self.watcher = watcher
        self.rules = rules
        self.prediction_log = prediction_log
        self.metrics = metrics
        self.sample = sample
        self.expected_key = config.api_key.encode()
        self.cache = PredictionCache(config.cache_entries)
        self.loop_lag = LoopLag()
        self.batcher: AdaptiveBatcher[Rows, Scored] = AdaptiveBatcher(
            lambda parts: _score_with(watcher.current, parts),
            slo_ms=config.slo_ms,
            max_batch=config.max_batch,
            batching=config.batching,
            delay_ms=config.batch_delay_ms,
            name="serving",
            on_batch=metrics.observe_batch,
            wait_outside_ms=(
                (lambda: _LOOP_TURNS * self.loop_lag.lag_ms) if config.loop_lag_admission else None
            ),
            slack=lambda: _PROMOTION_SLACK if watcher.settling() else 1.0,
        )
        self.shadow: AdaptiveBatcher[Rows, Scored] | None = None
        self.agreement = Agreement()
        self.agreement_logger: AgreementLogger | None = None
        if config.shadow_alias is not None:
            # Its own queue, thread and objective: a slow shadow sheds its own work and
            # never delays answers.
            self.shadow = AdaptiveBatcher(
                lambda parts: _score_with(watcher.shadow, parts),
                slo_ms=max(config.slo_ms, 1000.0),
                max_batch=config.max_batch,
                delay_ms=config.batch_delay_ms,
                name="shadow",
            )
            if config.tracking_uri is not None:
                self.agreement_logger = AgreementLogger(
                    config.tracking_uri,
                    config.model_name,
                    config.alias,
                    config.shadow_alias,
                    worker=None if peers is None else peers.index,
                )
        self._background: set[asyncio.Task[None]] = set()
        self._register_readings()

    def _register_readings(self) -> None:
        read = self.metrics.read
        read("workers", "Server processes these figures cover (summed over the workers).",
             lambda: 1, "gauge")  # fmt: skip
        read("queue_rows", "Rows waiting in the queue.", lambda: self.batcher.queued_rows, "gauge")
        read("loop_lag_seconds", "How long a callback waits for the event loop now "
             "(the least of the last probes; admission control counts it).",
             lambda: self.loop_lag.lag_ms / 1000, "gauge")  # fmt: skip
        read("loop_lag_worst_seconds", "The longest a probe waited for the event loop.",
             lambda: self.loop_lag.worst_ms / 1000, "gauge")  # fmt: skip
        read("batch_limit_rows", "The batch size AIMD allows now.",
             lambda: self.batcher.batch_size, "gauge")  # fmt: skip
        read("cache_hits_total", "Rows answered from the cache.", lambda: self.cache.hits)
        read("cache_misses_total", "Rows the cache did not have.", lambda: self.cache.misses)
        read("shed_total", "Requests refused by admission control (503).",
             lambda: self.batcher.shed)  # fmt: skip
        read("shadow_rows_total", "Rows scored by the shadow model too.",
             lambda: self.agreement.rows)  # fmt: skip
        read("shadow_agreed_rows_total", "Rows on which the shadow model agreed.",
             lambda: self.agreement.agreed)  # fmt: skip
        log = self.prediction_log
        if log is not None:
            read("log_rows_total", "Rows written to the prediction log.", lambda: log.rows_written)
            read("log_dropped_rows_total", "Rows the prediction log gave up on.",
                 lambda: log.rows_dropped)  # fmt: skip
        self.metrics.versions(self._versions)

    def _versions(self) -> list[VersionInfo]:
        served = []
        if self.watcher.current is not None:
            version = self.watcher.current.version
            served.append(VersionInfo(self.watcher.name, self.watcher.alias, version, "serving"))
        if self.watcher.shadow is not None and self.watcher.shadow_alias is not None:
            version = self.watcher.shadow.version
            served.append(
                VersionInfo(self.watcher.name, self.watcher.shadow_alias, version, "shadow")
            )
        return served

    # --- lifespan ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop_lag.start()
        self.batcher.start()
        if self.shadow is not None:
            self.shadow.start()
        ticker = (
            asyncio.create_task(self._log_agreement_every())
            if self.agreement_logger is not None
            else None
        )
        try:
            yield
        finally:
            await self._shutdown(ticker)

    async def _shutdown(self, ticker: asyncio.Task[None] | None) -> None:
        """Drain the queues, then write the agreement and the log: nothing served is lost."""
        await self.batcher.close()
        self.loop_lag.stop()
        if self.shadow is not None:
            await self.shadow.close()
            await asyncio.sleep(0)  # let the last agreement callbacks run
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if self.agreement_logger is not None:
            await asyncio.to_thread(self.agreement_logger.log, self.agreement)
            await asyncio.to_thread(self.agreement_logger.close)
        if self.prediction_log is not None:
            await asyncio.to_thread(self.prediction_log.close)

    async def _log_agreement_every(self) -> None:
        assert self.agreement_logger is not None
        while True:
            await asyncio.sleep(self.config.agreement_log_s)
            await asyncio.to_thread(self.agreement_logger.log, self.agreement)

    # --- routes --------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return Response("\n", media_type=_JSON)

    async def health(self, request: Request) -> Response:
        model = self.watcher.current
        if model is None:
            return _error(503, "TEMPORARILY_UNAVAILABLE", self._no_model_message())
        return Response(json.dumps({"status": "ok", "version": model.version}), media_type=_JSON)

    async def version(self, request: Request) -> Response:
        from mlflow.version import VERSION

        model, shadow = self.watcher.current, self.watcher.shadow
        body = {
            "model": self.config.model_name,
            "alias": self.config.alias,
            "version": None if model is None else model.version,
            "shadow_alias": self.config.shadow_alias,
            "shadow_version": None if shadow is None else shadow.version,
            "mlflow": VERSION,
        }
        return Response(json.dumps(body), media_type=_JSON)

    async def metrics_text(self, request: Request) -> Response:
        own = self.metrics.render()
        if self.peers is None or WORKER_ONLY in request.headers:
            return Response(own, media_type=CONTENT_TYPE)
        key = self.config.api_key
        asked = [
            ask(path, "GET", "/metrics", key, _PEER_METRICS_TIMEOUT_S)
            for path in self.peers.sockets
        ]
        answers = await asyncio.gather(*asked, return_exceptions=True)
        texts = [own]
        for path, answer in zip(self.peers.sockets, answers, strict=True):
            if isinstance(answer, BaseException) or answer[0] != 200:
                why = answer if isinstance(answer, BaseException) else f"status {answer[0]}"
                # Totals without a worker would go backwards: no figures rather than wrong ones.
                return _error(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"the worker at {path} did not report its metrics ({why})",
                    {"Retry-After": "1"},
                )
            texts.append(answer[1])
        return Response(merge_metrics(texts), media_type=CONTENT_TYPE)

    async def reload(self, request: Request) -> Response:
        if self.peers is None or WORKER_ONLY in request.headers:
            status, body = await self._reload_here()
            return Response(json.dumps(body), status_code=status, media_type=_JSON)
        peers = self.peers
        key = self.config.api_key
        asked = [ask(path, "POST", "/admin/reload", key, _PEER_RELOAD_TIMEOUT_S)
                 for path in peers.sockets]  # fmt: skip
        own, *answers = await asyncio.gather(self._reload_here(), *asked, return_exceptions=True)
        # Worker numbers: this one's, then the others' in socket order (all but its own).
        numbers = [peers.index, *[i for i in range(peers.count) if i != peers.index]]
        workers: list[dict[str, Any]] = []
        for number, answer in zip(numbers, [own, *answers], strict=True):
            if isinstance(answer, BaseException):
                message = f"worker {number} did not answer: {answer}"
                status, body = 500, {"error_code": "INTERNAL_ERROR", "message": message}
            elif isinstance(answer[1], bytes):
                status, body = answer[0], json.loads(answer[1])
            else:
                status, body = answer
            workers.append({"worker": number, "status": status, **body})
        workers.sort(key=lambda w: w["worker"])
        failed = [w for w in workers if w["status"] != 200]
        if not failed:
            mine = next(w for w in workers if w["worker"] == peers.index)
            summary = {k: v for k, v in mine.items() if k not in ("worker", "status")}
            return Response(json.dumps({**summary, "workers": workers}), media_type=_JSON)
        first = failed[0]
        return _error(
            max(w["status"] for w in failed),
            first.get("error_code", "INTERNAL_ERROR"),
            f"worker {first['worker']}: {first.get('message', 'failed')}",
            workers=workers,
        )

    async def _reload_here(self) -> tuple[int, dict[str, Any]]:
        """This worker's reload: status and JSON body."""
        try:
            result = await asyncio.to_thread(self.watcher.reload)
        except ModelLoadError as exc:
            message = f"{exc}; still serving {self._served()}"
            return 500, {"error_code": "INTERNAL_ERROR", "message": message}
        if result.version is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                         "message": self._no_model_message()}  # fmt: skip
        return 200, result.to_dict()

    async def invocations(self, request: Request) -> Response:
        """``POST /invocations`` as a Starlette route (the fast path answers the same way
        without the router: :meth:`serve_invocation`)."""
        reply = await self._invoke(time.perf_counter(), request.headers.get, request.receive)
        after = None if reply.after is None else BackgroundTask(self._after, *reply.after)
        return reply.response(after)

    async def serve_invocation(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /invocations`` as a raw ASGI app, with the key check and the request
        count of :class:`_Guard`: the same answers as the routed path, without the cost of
        Starlette's middleware, router, request and response objects (about a third of the
        event loop's time per request, which is the server's limit on one core)."""
        start = time.perf_counter()
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _FAST_HEADERS and name not in found:
                found[name] = value

        def header(name: str) -> str | None:
            value = found.get(name.encode("latin-1"))
            return None if value is None else value.decode("latin-1")

        status = 500
        try:
            authorization = found.get(b"authorization")
            if authorization is None or not _key_matches(authorization, self.expected_key):
                reply = _unauthorized()
            else:
                reply = await self._invoke(start, header, receive)
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": reply.raw_headers(),
                }
            )
            status = reply.status
            await send({"type": "http.response.body", "body": reply.body})
            if reply.after is not None:
                await self._after(*reply.after)
        finally:
            self.metrics.count("/invocations", status)

    def shed_early(self, authorization: bytes | None) -> _Reply | None:
        """The 503 a ``POST /invocations`` with this ``Authorization`` header gets from
        admission control, decided from its headers alone; None when the request is to go
        the usual way (admitted, no version loaded, unauthorized, draining). The HTTP
        protocol asks as soon as a request's headers are parsed, so that under overload a
        refusal costs neither an ASGI request cycle nor a task; counted as
        :meth:`serve_invocation` counts a refusal."""
        start = time.perf_counter()
        if (
            authorization is None
            or self.watcher.current is None
            or not _key_matches(authorization, self.expected_key)
        ):
            return None
        try:
            self.batcher.admit(1)
        except Overloaded as exc:
            self.metrics.shed_latency.observe(time.perf_counter() - start)
            self.metrics.count("/invocations", 503)
            return _error_reply(
                503, "TEMPORARILY_UNAVAILABLE", str(exc), {"Retry-After": str(exc.retry_after_s)}
            )
        except Draining:
            return None
        return None

    async def _invoke(
        self, start: float, header: Callable[[str], str | None], receive: Receive
    ) -> _Reply:
        """The answer to a prediction request whose headers ``header`` reads (by lower-case
        name) and whose body ``receive`` delivers; ``start``: its arrival."""
        request_id = _request_id(header("x-request-id"))
        try:
            model = self.watcher.current
            if model is None:
                raise _Refused(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    self._no_model_message(),
                    {"Retry-After": str(max(1, math.ceil(self.config.poll_s)))},
                )
            # Refused before the body is read and parsed if even one row would be late:
            # under overload, a refusal must cost next to nothing.
            self.batcher.admit(1)
            body = await self._body(header("content-length"), receive)
            rows = parse_body(body, media_type(header("content-type")), model.inputs)
            self._check(model, rows)
            if rows.count == 0:
                return _Reply(200, _EMPTY)
            served, records = await self._predict(model, rows)
        except _Refused as refused:
            return refused.reply()
        except PayloadError as exc:
            return _error_reply(exc.status, exc.error_code, exc.message)
        except Overloaded as exc:
            self.metrics.shed_latency.observe(time.perf_counter() - start)
            return _error_reply(
                503, "TEMPORARILY_UNAVAILABLE", str(exc), {"Retry-After": str(exc.retry_after_s)}
            )
        except Draining:
            return _error_reply(
                503, "TEMPORARILY_UNAVAILABLE", "the server is shutting down", {"Retry-After": "1"}
            )
        except Exception as exc:
            _log.exception("request %s failed", request_id)
            return _error_reply(500, "INTERNAL_ERROR", f"scoring failed: {exc}")
        latency_s = time.perf_counter() - start
        self.metrics.latency.observe(latency_s)
        headers = {
            "X-Model-Name": served.name,
            "X-Model-Version": served.version,
            "X-Request-Id": request_id,
        }
        body_text = json.dumps({"predictions": records})
        after = (rows, records, served, latency_s * 1000, request_id)
        return _Reply(200, body_text.encode(), headers, after)

    # --- steps of a prediction -----------------------------------------------------------

    async def _body(self, declared: str | None, receive: Receive) -> bytes:
        """The body, read from ``receive`` within the size limit (as Starlette's
        ``Request.stream`` reads it: a disconnect raises :class:`ClientDisconnect`)."""
        limit = self.config.max_body_bytes
        if declared is not None:
            if not declared.isdigit():
                raise _Refused(400, "BAD_REQUEST", f"Content-Length {declared!r} is not a size")
            if int(declared) > limit:
                raise self._too_large(int(declared))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise self._too_large(size, streamed=True)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()

    def _too_large(self, size: int, streamed: bool = False) -> _Refused:
        what = f"more than {size - 1}" if streamed else str(size)
        return _Refused(
            413,
            "RESOURCE_LIMIT_EXCEEDED",
            f"the body has {what} bytes, over the limit of {self.config.max_body_bytes}; "
            "send fewer rows per request",
        )

    def _check(self, model: LoadedModel, rows: Rows) -> None:
        """Refuse the request (422) if a row breaks a suite or signature rule; a row and
        column the suite already refused is not named again for the signature."""
        refusals = self.rules.check(rows)
        named = {(r.row, r.column) for r in refusals}
        refusals += [r for r in model.rules.check(rows) if (r.row, r.column) not in named]
        if refusals:
            raise _Refused(
                422,
                "INVALID_PARAMETER_VALUE",
                _refusal_message(refusals),
                refusals=[r.to_dict() for r in refusals[:_MAX_REFUSALS]],
            )

    async def _predict(self, model: LoadedModel, rows: Rows) -> tuple[LoadedModel, list[Record]]:
        """The records of ``rows``: from the cache where it has them, else from a batch."""
        keys = rows.keys(model.input_columns)
        found: list[Record | None] = (
            [self.cache.get(model.version, key) for key in keys]
            if self.cache.enabled
            else [None] * rows.count
        )
        missing = [i for i, record in enumerate(found) if record is None]
        if not missing:
            return model, [r for r in found if r is not None]
        part = rows if len(missing) == rows.count else rows.take(missing)
        scored = await self.batcher.submit(part, part.count)
        if scored.model.version != model.version and len(missing) < rows.count:
            # A promotion between the cache lookup and the batch: one version answers all.
            scored = await self.batcher.submit(rows, rows.count)
            missing, found = list(range(rows.count)), [None] * rows.count
        for i, record in zip(missing, scored.records, strict=True):
            found[i] = record
            self.cache.put(scored.model.version, keys[i], record)
        return scored.model, [r for r in found if r is not None]

    async def _after(
        self,
        rows: Rows,
        records: list[Record],
        served: LoadedModel,
        latency_ms: float,
        request_id: str,
    ) -> None:
        """After the response is sent: the prediction log, and the shadow for a sample.
        (A coroutine, so Starlette runs it on the event loop rather than in a thread.)"""
        if self.prediction_log is not None:
            self.prediction_log.append(
                rows.select(self._logged_columns(served)),
                records,
                model=served.name,
                version=served.version,
                latency_ms=latency_ms,
                request_id=request_id,
            )
        if self.shadow is None or self.watcher.shadow is None:
            return
        if self.sample() >= self.config.shadow_fraction:
            return
        try:
            future = self.shadow.enqueue(rows, rows.count)
        except (Overloaded, Draining):
            return
        future.add_done_callback(lambda done: self._agree(served.version, records, done))

    def _agree(self, version: str, records: list[Record], done: asyncio.Future[Scored]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            _log.warning("shadow scoring failed: %s", error)
            return
        scored = done.result()
        self.agreement.record(version, scored.model.version, records, scored.records)

    def _logged_columns(self, model: LoadedModel) -> list[str]:
        """The input columns the log keeps: the ones the suite or the model names (others
        are the client's own, of any type, and would not make one Parquet schema)."""
        return list(dict.fromkeys([*model.input_columns, *self.rules.columns]))

    def _served(self) -> str:
        model = self.watcher.current
        return "no version" if model is None else f"version {model.version}"

    def _no_model_message(self) -> str:
        return (
            f"no version of {self.config.model_uri} is loaded yet; the server loads one when "
            f"the alias exists (polling every {self.config.poll_s:g} s, or POST /admin/reload)"
        )


def _refusal_message(refusals: Sequence[Refusal]) -> str:
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    return f"a row breaks a serving rule: {refusals[0]}{more}"


def _request_id(given: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a sane one, else a new id."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return _new_request_id()


class _RequestIds:
    """New request ids: 32 hex digits like ``uuid4().hex``, a random prefix drawn once per
    process and a counter, so unique within the process and across processes; ``uuid4``
    reads the kernel's random source on each call, which costs a tenth of the event
    loop's time per request."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_new_request_id = _RequestIds()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST"}.get(exc.status_code, "BAD_REQUEST")
    return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


class _ServingApp(Starlette):
    """The Starlette app, with ``POST /invocations`` answered before Starlette's
    middleware and router (:meth:`_Server.serve_invocation`); everything else, the
    lifespan included, goes the usual way."""

    def __init__(self, server: _Server, fast_path: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast = server.serve_invocation if fast_path else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._fast is not None
            and scope["type"] == "http"
            and scope["path"] == "/invocations"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self._fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    config: ServeConfig,
    watcher: ModelWatcher,
    *,
    rules: RowRules,
    prediction_log: PredictionLog | None = None,
    metrics: ServingMetrics | None = None,
    sample: Callable[[], float] = random.random,
    fast_path: bool = True,
    peers: Peers | None = None,
) -> Starlette:
    """The ASGI application of a model server (see the module docstring for its routes).

    The watcher is the caller's: start it before serving (its first load decides what is
    served), close it after. The app owns the rest: its startup starts the batchers; its
    shutdown drains them, writes the shadow agreement, and closes ``prediction_log``, so
    every answered row reaches the log.

    Args:
        config: the server's settings (key, objective, batching, cache, shadow, limits).
        watcher: follows the served alias (and the shadow alias, if configured).
        rules: the dataset's serving rules (:meth:`RowRules.from_suite`).
        prediction_log: where served rows go, or None for no log.
        metrics: the metrics to count into (a new set by default).
        sample: returns a number in [0, 1) per request, for the shadow's sampling.
        fast_path: answer ``POST /invocations`` before Starlette's routing (the same
            answers, for less work per request); False: through the router like the rest.
        peers: the other worker processes of the same server, which ``/metrics`` and
            ``/admin/reload`` reach too; None: this process is the whole server.
    """
    metrics = metrics or ServingMetrics()
    server = _Server(config, watcher, rules, prediction_log, metrics, sample, peers)
    routes = [
        Route("/invocations", server.invocations, methods=["POST"]),
        Route("/ping", server.ping, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/version", server.version, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/admin/reload", server.reload, methods=["POST"]),
    ]
    app = _ServingApp(
        server,
        fast_path,
        routes=routes,
        middleware=[Middleware(_Guard, api_key=config.api_key, metrics=metrics)],
        lifespan=server.lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    # The parts (batcher, cache, agreement), for tests and whoever embeds the app.
    app.state.serving = server
    return app
