"""Running a model server in the foreground: uvicorn until SIGINT or SIGTERM, then a drain.

On a signal the server stops accepting connections, lets the requests in flight finish
(their batches included), then the app's shutdown drains the queues and writes the
prediction log; the process then exits normally (status 0), where uvicorn alone would
re-raise the signal and die by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from socket import socket
from typing import Any

import uvicorn

from mlsys.serving.app import create_app
from mlsys.serving.config import ServeConfig
from mlsys.serving.model import ModelWatcher
from mlsys.serving.predlog import PredictionLog
from mlsys.serving.rules import RowRules

__all__ = ["serve"]

_log = logging.getLogger("mlsys.serving")

# Requests still open this long after a signal are cancelled; the queue is drained and the
# log written regardless. Admission control keeps a request's wait within the objective,
# so only a client that stalls mid-body is ever cut off.
_GRACE_S = 10
# How long a thread may hold the interpreter lock while another waits for it (seconds).
_SWITCH_INTERVAL_S = 0.0005


class _CorkedTransport:
    """A transport that holds the head of a response until its body is written, and writes
    both at once: one ``send`` per answer instead of two (uvicorn writes the status line and
    headers, then the body, each straight to the socket; on loopback a send costs as much as
    the rest of the event loop's work on a small request). The body follows the head in
    the same step of the event loop; a head without one (a HEAD request, ``100 Continue``)
    is written at the loop's next turn, and before a close."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/":
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # the peer went away meanwhile
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol writing each answer in one send, or uvicorn's ``auto``
    choice where httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class CorkedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # Only the answers' writes go through it; flow control keeps the transport.
            self.transport = _CorkedTransport(transport, self.loop)  # type: ignore[assignment]

    return CorkedHttpTools


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, logging a ready line and exiting normally after a signal."""

    def __init__(self, config: uvicorn.Config, serve_config: ServeConfig, watcher: ModelWatcher):
        super().__init__(config)
        self.serve_config = serve_config
        self.watcher = watcher

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
        model = self.watcher.current
        c = self.serve_config
        _log.info(
            "ready: %s at http://%s:%d/invocations serving %s (objective %g ms, batching %s, "
            "cache %d, shadow %s)",
            c.model_uri,
            c.host,
            port,
            f"version {model.version}" if model else "no version yet (waiting for the alias)",
            c.slo_ms,
            "adaptive" if c.batching else "off",
            c.cache_entries,
            c.shadow_alias or "off",
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    config: ServeConfig,
    *,
    rules: RowRules,
    prediction_log: PredictionLog | None = None,
    classes: Sequence[str] | None = None,
) -> None:
    """Serve ``config.model_uri`` over HTTP until SIGINT or SIGTERM (see the module
    docstring), then return.

    The alias is resolved and its version loaded before the port opens; if it does not
    exist yet, the server starts anyway and loads it when it appears. uvloop and httptools
    are used when installed (uvicorn's ``auto``), else asyncio and h11.

    Args:
        config: the server's settings.
        rules: the dataset's serving rules.
        prediction_log: where served rows go (closed on the way out), or None.
        classes: the dataset's class names; a version logged with others is not loaded.
    """
    import torch

    # One batch at a time on one thread: torch's intra-op threads would only compete with
    # the event loop for the cores, and add their start-up cost to each small batch.
    torch.set_num_threads(1)
    # The scoring thread gives up the interpreter lock inside every torch call and must
    # win it back from the event loop, which holds it up to the switch interval (5 ms by
    # default) whenever it is busy: a batch of a few torch calls then waits tens of ms.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    watcher = ModelWatcher(
        config.tracking_uri,
        config.model_name,
        config.alias,
        shadow_alias=config.shadow_alias,
        poll_s=config.poll_s,
        classes=classes,
    )
    watcher.start()
    # MLflow, torch and pandas leave some 300,000 objects behind, and a full collection
    # that walks them all stops the server for over 100 ms: a p99 of its own. Frozen, they
    # are never walked again; what requests allocate is collected as usual.
    gc.collect()
    gc.freeze()
    app = create_app(config, watcher, rules=rules, prediction_log=prediction_log)
    server = _Uvicorn(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="auto",
            http=_http_protocol(),
            lifespan="on",
            # Bound to a local interface by default and never reading the client's address:
            # X-Forwarded-* rewriting would only cost time per request.
            proxy_headers=False,
            access_log=False,
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=_GRACE_S,
        ),
        config,
        watcher,
    )
    try:
        server.run()
    finally:
        watcher.close()
    _log.info(
        "stopped: queue drained%s", "" if prediction_log is None else ", prediction log written"
    )
