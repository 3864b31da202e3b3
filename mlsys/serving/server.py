"""Running a model server in the foreground: uvicorn until SIGINT or SIGTERM, then a drain.

On a signal the server stops accepting connections, lets the requests in flight finish
(their batches included), then the app's shutdown drains the queues and writes the
prediction log; the process then exits normally (status 0), where uvicorn alone would
re-raise the signal and die by it.

With ``workers > 1`` this process supervises that many worker processes (spawned, so
each starts clean), which each load the model, wait for the others to have loaded theirs,
then listen on the served port with ``SO_REUSEPORT`` (and on a private Unix socket for
the others: :mod:`mlsys.serving.peers`). The supervisor holds the port bound, but not
listening, from start to end, so that port 0 means one free port for all and no other
program takes it meanwhile; it logs the ready line once every worker listens, hands a
SIGINT or SIGTERM on to them as SIGTERM (each drains as above), and exits 0 when they all
have. If a worker dies on its own, the others are stopped and :class:`WorkerFailed` is
raised (the command exits 1): a supervisor such as the stack then restarts the server.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from mlsys.lifeline import die_with_parent
from mlsys.serving.app import create_app
from mlsys.serving.config import ServeConfig
from mlsys.serving.model import ModelWatcher
from mlsys.serving.peers import Peers, worker_socket
from mlsys.serving.predlog import PredictionLog
from mlsys.serving.protocol import http_protocol
from mlsys.serving.rules import RowRules

__all__ = ["WorkerFailed", "serve"]

LogFactory = Callable[[], PredictionLog | None]
"""Opens a worker's prediction log (each worker writes its own parts); picklable, as it
goes to a spawned process."""

_log = logging.getLogger("mlsys.serving")

# Requests still open this long after a signal are cancelled; the queue is drained and the
# log written regardless. Admission control keeps a request's wait within the objective,
# so only a client that stalls mid-body is ever cut off.
_GRACE_S = 10
# How long a thread may hold the interpreter lock while another waits for it (seconds).
_SWITCH_INTERVAL_S = 0.0005


class WorkerFailed(RuntimeError):
    """A worker process of a several-worker server exited on its own (the others were
    stopped)."""


def _ready_line(config: ServeConfig, port: int, served: str) -> None:
    c = config
    workers = f", {c.workers} workers" if c.workers > 1 else ""
    _log.info(
        "ready: %s at http://%s:%d/invocations serving %s (objective %g ms, batching %s, "
        "cache %d, shadow %s%s)",
        c.model_uri,
        c.host,
        port,
        served,
        c.slo_ms,
        "adaptive" if c.batching else "off",
        c.cache_entries,
        c.shadow_alias or "off",
        workers,
    )


def _served(watcher: ModelWatcher) -> str:
    model = watcher.current
    return f"version {model.version}" if model else "no version yet (waiting for the alias)"


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, logging a ready line (or, in a worker, telling the supervisor it
    is ready) and exiting normally after a signal."""

    def __init__(
        self,
        config: uvicorn.Config,
        serve_config: ServeConfig,
        watcher: ModelWatcher,
        on_ready: Callable[[int], None] | None = None,
    ):
        super().__init__(config)
        self.serve_config = serve_config
        self.watcher = watcher
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
        if self.on_ready is not None:
            self.on_ready(port)
        else:
            _ready_line(self.serve_config, port, _served(self.watcher))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        # A worker leaves SIGINT ignored: Ctrl-C reaches the whole process group, and the
        # supervisor hands it on as SIGTERM (a second SIGINT would make uvicorn skip the drain).
        handled = (
            (signal.SIGTERM,) if self.on_ready is not None else (signal.SIGINT, signal.SIGTERM)
        )
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
    prediction_log: PredictionLog | LogFactory | None = None,
    classes: Sequence[str] | None = None,
) -> None:
    """Serve ``config.model_uri`` over HTTP until SIGINT or SIGTERM (see the module
    docstring), then return.

    The alias is resolved and its version loaded before the port opens; if it does not
    exist yet, the server starts anyway and loads it when it appears. uvloop and httptools
    are used when installed (uvicorn's ``auto``), else asyncio and h11.

    Args:
        config: the server's settings (``workers``: how many processes).
        rules: the dataset's serving rules.
        prediction_log: where served rows go (closed on the way out), or None; with
            several workers, a picklable function that opens one (each worker its own).
        classes: the dataset's class names; a version logged with others is not loaded.

    Raises:
        WorkerFailed: with several workers, one exited on its own.
        ValueError: several workers and a prediction log that is not a function.
    """
    if config.workers == 1:
        log = prediction_log() if callable(prediction_log) else prediction_log
        _serve_process(config, rules, log, classes)
        return
    if isinstance(prediction_log, PredictionLog):
        raise ValueError(
            "with several workers, pass a function that opens a prediction log (each worker "
            "opens its own), not a PredictionLog"
        )
    _supervise(config, rules, prediction_log, classes)


@dataclass(frozen=True)
class _Worker:
    """What a worker process needs to know of its siblings and its supervisor."""

    index: int
    count: int
    folder: str
    ready: Any  # multiprocessing SimpleQueue: (index, port, served) once listening
    loaded: Any  # multiprocessing Barrier: every worker has loaded its model

    @property
    def peers(self) -> Peers:
        others = tuple(worker_socket(self.folder, i) for i in range(self.count) if i != self.index)
        return Peers(self.index, self.count, others)


def _serve_process(
    config: ServeConfig,
    rules: RowRules,
    prediction_log: PredictionLog | None,
    classes: Sequence[str] | None,
    worker: _Worker | None = None,
    stopped: threading.Event | None = None,
) -> None:
    """One process of the server: the whole of it, or ``worker`` of several."""
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
    sockets: list[socket.socket] | None = None
    on_ready: Callable[[int], None] | None = None
    if worker is not None:
        try:
            # Listen only once every worker can answer: no connection lands on a worker
            # that is still loading while another is idle.
            worker.loaded.wait()
            broken = False
        except threading.BrokenBarrierError:  # a signal, or a sibling that died
            broken = True
        if broken or (stopped is not None and stopped.is_set()):
            watcher.close()
            if prediction_log is not None:
                prediction_log.close()
            return
        sockets = [
            _port_socket(config.host, config.port, listen=True),
            _unix_socket(worker_socket(worker.folder, worker.index)),
        ]
        served = _served(watcher)

        def on_ready(port: int) -> None:
            worker.ready.put((worker.index, port, served))

    app = create_app(
        config,
        watcher,
        rules=rules,
        prediction_log=prediction_log,
        peers=None if worker is None else worker.peers,
    )
    server = _Uvicorn(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="auto",
            http=http_protocol(app.state.serving.shed_early),
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
        on_ready,
    )
    try:
        server.run(sockets)
    finally:
        watcher.close()
    _log.info(
        "stopped%s: queue drained%s",
        "" if worker is None else f" (worker {worker.index})",
        _log_outcome(prediction_log),
    )


def _log_outcome(prediction_log: PredictionLog | None) -> str:
    """What the prediction log wrote, and lost, by the time the server stopped."""
    if prediction_log is None:
        return ""
    said = f", prediction log: {prediction_log.rows_written:,} rows written"
    if prediction_log.rows_dropped:
        said += f", {prediction_log.rows_dropped:,} rows lost (see the errors above)"
    return said


# --- several workers ---------------------------------------------------------------------

_SPAWN = multiprocessing.get_context("spawn")


def _port_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (so that the workers, and
    the supervisor's reservation, share the port); listening if ``listen``."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, for the owner only."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def _supervise(
    config: ServeConfig,
    rules: RowRules,
    open_log: LogFactory | None,
    classes: Sequence[str] | None,
) -> None:
    """Run ``config.workers`` worker processes until a signal (see the module docstring)."""
    # Held, not listening, until the end: the port is ours, and port 0 is decided here.
    reserved = _port_socket(config.host, config.port, listen=False)
    port = int(reserved.getsockname()[1])
    config = _with_port(config, port)
    folder = tempfile.mkdtemp(prefix="mlsys-serve-")
    root = logging.getLogger()
    log_format = next(
        (h.formatter._fmt for h in root.handlers if h.formatter is not None and h.formatter._fmt),
        None,
    )
    ready = _SPAWN.SimpleQueue()
    loaded = _SPAWN.Barrier(config.workers)
    processes = [
        _SPAWN.Process(
            target=_worker_main,
            args=(
                config,
                rules,
                open_log,
                classes,
                _Worker(i, config.workers, folder, ready, loaded),
                os.getpid(),
                root.level,
                log_format,
            ),
            name=f"mlsys-serve-worker-{i}",
        )
        for i in range(config.workers)
    ]
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    failed: list[str] = []
    try:
        for process in processes:
            process.start()
        _watch(config, processes, ready, loaded, stopping, failed)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        reserved.close()
        shutil.rmtree(folder, ignore_errors=True)
    if failed:
        raise WorkerFailed("; ".join(failed))
    _log.info("stopped: %d workers", config.workers)


def _watch(
    config: ServeConfig,
    processes: Sequence[multiprocessing.process.BaseProcess],
    ready: Any,
    loaded: Any,
    stopping: threading.Event,
    failed: list[str],
) -> None:
    """Until every worker has exited: log the ready line once all listen, hand a signal
    on to them, stop them all if one dies on its own (recorded in ``failed``)."""
    listening: dict[int, str] = {}
    alive: dict[Any, multiprocessing.process.BaseProcess] = {p.sentinel: p for p in processes}
    forwarded = False
    while alive:
        if stopping.is_set() and not forwarded:
            forwarded = True
            loaded.abort()
            for process in alive.values():
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
        waiting: list[Any] = [*alive, ready._reader]
        for handle in multiprocessing.connection.wait(waiting, timeout=0.5):
            if handle is ready._reader:
                index, port, served = ready.get()
                listening[index] = served
                if len(listening) == config.workers:
                    kinds = sorted(set(listening.values()))
                    _ready_line(config, port, " / ".join(kinds))
                continue
            process = alive.pop(handle)
            process.join()
            if not stopping.is_set():
                # Whatever its status: the server would go on with fewer workers unnoticed.
                failed.append(f"{process.name} exited with status {process.exitcode}")
                _log.error("%s; stopping the other workers", failed[-1])
                stopping.set()
            elif process.exitcode not in (0, -signal.SIGTERM):
                failed.append(f"{process.name} exited with status {process.exitcode}")


def _with_port(config: ServeConfig, port: int) -> ServeConfig:
    from dataclasses import replace

    return replace(config, port=port)


def _worker_main(
    config: ServeConfig,
    rules: RowRules,
    open_log: LogFactory | None,
    classes: Sequence[str] | None,
    worker: _Worker,
    parent: int,
    log_level: int,
    log_format: str | None,
) -> None:
    """A worker process: serve until SIGTERM; a signal before the port opens ends it
    without serving."""
    stopped = threading.Event()

    def stop_early(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        worker.loaded.abort()

    signal.signal(signal.SIGTERM, stop_early)
    # Ctrl-C reaches the whole process group; the supervisor hands it on as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # No worker outlives the supervisor holding the port.
    die_with_parent(parent, signal.SIGTERM, 0)
    if log_format is not None:
        logging.basicConfig(level=log_level, format=log_format)
    else:
        logging.getLogger().setLevel(log_level)
    # A line per request to another worker (scrapes, reloads) says nothing.
    logging.getLogger("httpx").setLevel(max(log_level, logging.WARNING))
    _serve_process(
        config, rules, None if open_log is None else open_log(), classes, worker, stopped
    )
