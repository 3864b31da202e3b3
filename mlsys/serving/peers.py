"""Several server processes behind one port: what one worker asks of the others.

With ``--workers N``, ``mlsys serve`` runs N processes that each listen on the served port
(``SO_REUSEPORT``: the kernel spreads connections over them), each with its own batcher,
cache and alias watcher. A process has one interpreter lock, which the event loop and the
scoring thread share, so one process uses about one core however many there are; N
processes use N.

Each worker also listens on a private Unix socket (in a folder of the supervising
process), through which the others reach it. A request to any worker for ``GET /metrics``
or ``POST /admin/reload`` is answered for all of them:

- ``/metrics``: the worker's own text and that of every other worker (asked with
  :data:`WORKER_ONLY`), merged by :func:`merge_metrics`: counters and histograms summed,
  so totals count every process's requests. If a worker does not answer, the scrape
  fails (503) rather than report totals that would go backwards.
- ``/admin/reload``: every worker resolves the alias and loads the new version at once
  (otherwise each would find it at its own next poll).

Usage::

    peers = Peers(index=0, count=2, sockets=("/tmp/mlsys-serve-x/worker-1.sock",))
    status, body = await ask(peers.sockets[0], "GET", "/metrics", key, timeout_s=10)
    text = merge_metrics([own_text, body])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.utils import floatToGoString

__all__ = ["WORKER_ONLY", "Peers", "ask", "merge_metrics", "worker_socket"]

WORKER_ONLY = "x-mlsys-worker-only"
"""Request header: answer for this worker alone (how workers ask each other)."""

# Gauges that describe one worker's state: the merged value is the largest (the worst
# loop, the largest batch limit, 1 for a version any worker serves). Other gauges (queue
# depth, workers) are summed.
_MAX_GAUGES = frozenset(
    {
        "mlsys_serve_loop_lag_seconds",
        "mlsys_serve_loop_lag_worst_seconds",
        "mlsys_serve_batch_limit_rows",
        "mlsys_serve_model_version",
    }
)


@dataclass(frozen=True)
class Peers:
    """Where a worker is among its siblings: its number (0-based) of ``count``, and the
    Unix sockets of the others."""

    index: int
    count: int
    sockets: tuple[str, ...]


def worker_socket(folder: str, index: int) -> str:
    """The path of worker ``index``'s private Unix socket in ``folder``."""
    return f"{folder}/worker-{index}.sock"


async def ask(
    socket_path: str, method: str, path: str, key: str, timeout_s: float
) -> tuple[int, bytes]:
    """Send ``method path`` to the worker at ``socket_path`` for itself alone (with
    :data:`WORKER_ONLY` and the key); its status and body.

    Raises:
        httpx.HTTPError: it could not be reached or did not answer in time.
    """
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://worker", timeout=timeout_s
    ) as client:
        answer = await client.request(
            method, path, headers={"Authorization": f"Bearer {key}", WORKER_ONLY: "1"}
        )
        return answer.status_code, answer.content


def merge_metrics(texts: Sequence[bytes]) -> bytes:
    """Prometheus text of several workers as one: each family in the order first seen,
    with its ``# HELP`` and ``# TYPE`` lines once; a sample (name and labels) present in
    several texts is summed for counters, histograms, summaries and the gauges not in
    :data:`_MAX_GAUGES`, the largest for those, the earliest for ``*_created``."""
    families: dict[str, tuple[list[str], dict[str, float], str]] = {}
    for text in texts:
        family = ""
        for line in text.decode().splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head, samples, kind = families.setdefault(family, ([], {}, "untyped"))
                    if parts[1] == "TYPE":
                        kind = parts[3] if len(parts) > 3 else "untyped"
                        families[family] = (head, samples, kind)
                    if line not in head:
                        head.append(line)
                continue
            key, _, value = line.rpartition(" ")
            head, samples, kind = families.setdefault(family, ([], {}, "untyped"))
            number = float(value)
            if key not in samples:
                samples[key] = number
            elif _name(key).endswith("_created"):
                samples[key] = min(samples[key], number)
            elif kind == "gauge" and family in _MAX_GAUGES:
                samples[key] = max(samples[key], number)
            else:
                samples[key] += number
    out: list[str] = []
    for head, samples, _ in families.values():
        out.extend(head)
        out.extend(f"{key} {_number(value)}" for key, value in samples.items())
    return ("\n".join(out) + "\n").encode() if out else b""


def _name(key: str) -> str:
    return key.partition("{")[0]


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else str(floatToGoString(value))  # type: ignore[no-untyped-call]
