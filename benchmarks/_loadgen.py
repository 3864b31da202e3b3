"""An open-loop HTTP load generator for the serving benchmark (a helper module, not a
benchmark): requests are sent on a fixed schedule whatever the server answers, over
keep-alive HTTP/1.1 connections, and each latency is counted from the request's scheduled
time, so a server that falls behind is charged for the wait (no coordinated omission).

Run as its own process: ``python benchmarks/_loadgen.py --url ... --rate 400 ...``; it
prints one JSON object: sent, answered by status (and by status and ``X-Model-Version``),
latency percentiles by status (ms), and the rate it actually achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


async def _connection(
    host: str,
    port: int,
    path: str,
    headers: str,
    queue: asyncio.Queue[tuple[float, bytes] | None],
    results: list[tuple[int, float, str]],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (item := await queue.get()) is not None:
            scheduled, body = item
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(head + body)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length, version = 0, "-"
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "x-model-version":
                    version = value.strip()
            await reader.readexactly(length)
            results.append((status, (time.perf_counter() - scheduled) * 1000.0, version))
    finally:
        writer.close()


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    headers = "Content-Type: application/json\r\n"
    if args.key:
        headers += f"Authorization: Bearer {args.key}\r\n"
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    results: list[tuple[int, float, str]] = []
    workers = [
        asyncio.create_task(_connection(host, port, path, headers, queue, results))
        for _ in range(args.connections)
    ]
    total = int(args.rate * args.duration)
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, bodies[i % len(bodies)]))
    sent_s = time.perf_counter() - start
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers, return_exceptions=True)
    return _summary(results, total, sent_s, time.perf_counter() - start)


def _summary(
    results: list[tuple[int, float, str]], total: int, sent_s: float, wall_s: float
) -> dict[str, Any]:
    by_status: dict[str, list[float]] = {}
    answers: dict[str, int] = {}
    for status, ms, version in results:
        by_status.setdefault(str(status), []).append(ms)
        answers[f"{status}/{version}"] = answers.get(f"{status}/{version}", 0) + 1

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "scheduled": total,
        "answered": len(results),
        "offered_rate": total / max(sent_s, 1e-9),
        "wall_s": wall_s,
        "status": {s: len(v) for s, v in by_status.items()},
        "answers": answers,
        "latency_ms": {
            s: {"p50": pct(v, 0.50), "p99": pct(v, 0.99), "max": max(v)}
            for s, v in by_status.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="URL to POST to (…/invocations).")
    parser.add_argument("--bodies", required=True, help="File of request bodies, one per line.")
    parser.add_argument("--rate", type=float, required=True, help="Requests per second.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of load.")
    parser.add_argument("--connections", type=int, default=64, help="Keep-alive connections.")
    parser.add_argument("--key", default="", help="Bearer key, if the server asks for one.")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
