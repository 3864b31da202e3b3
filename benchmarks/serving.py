"""Online serving: `mlsys serve` against `mlflow models serve` of the same model version, with
single-row requests of real comments over HTTP, measured by wrk in its own process.

Setup, once: a local MLflow registry without a server (SQLite tracking store and a file
artifact folder in a scratch directory), the pipeline's default text classifier (a linear
model over 2**15 hashed word 1-2-gram and character 1-4-gram features, random seeded
weights: the cost of scoring does not depend on them) logged with ``log_text_classifier``
twice (seeds 0 and 1) as versions 1 and 2 of ``bench-spam``, alias ``champion`` on 1.

Requests: each is one comment of the YouTube Spam Collection (1,956 comments) as MLflow's
``dataframe_split`` body, with a distinct ``#<n>`` token appended, so no two requests carry
the same text: a prediction cache never hits, and the featurizer meets one unseen token per
request as it would in traffic. ``--requests`` bodies, cycled by wrk's Lua script.

Servers, each started fresh in its own process and warmed up (3 s of load) first:
- ``mlflow models serve -m models:/bench-spam@champion --env-manager local`` with 1 and
  with 2 uvicorn workers (the strongest of the two is the baseline);
- ``mlsys serve`` with batching off (``--no-batching``) and with adaptive batching, both
  with the prediction cache off (``--cache-entries 0``) and the prediction log off, and
  ``--workers`` processes (2, as many as the baseline's uvicorn workers; one process uses
  about one core, as its event loop and scoring thread share one interpreter lock).

Throughput: ``wrk -t1 -c<C> -d<duration> --latency`` at 1, 4, 16 and 64 connections; a
server's figure is the best rate of successful (2xx) answers among the connection counts
whose p99 stays within the objective (``--slo-ms``, 50). wrk is closed-loop: each
connection waits for its answer, so its p99 is that of a server at its own pace.

Fixed rates (open loop, ``benchmarks/_loadgen.py`` in its own process, latency counted from
each request's scheduled time, so a server that falls behind is charged for the wait):
p50/p99 of the baseline and of ``mlsys serve`` (batching) at ``--rates`` (100, 300 and 1,000
requests/s). The generator is Python on the same 2 cores: above about 2,000 requests/s it
is its own limit, which is why the rates stop there.

Overload: twice the sustainable rate (the adaptive-batching server's figure above),
offered by wrk over 1,024 connections that each pause 1,024 / rate s after an answer
(wrk's Lua ``delay``), which holds the offered rate while answers are fast. It is still
closed-loop: once answers slow down, the connections fall into step and arrive in waves,
and the offered rate drops below the target (the figures give both). The answers split
into accepted (200) and shed (503); the server's own histograms (``/metrics``, scraped
before and after) give the p99 of each from arrival to answer, as the upper bound of its
bucket. wrk's own p99 mixes the two and includes the time a request waits in the socket
before the server reads it; the longest wait of the server's event-loop probe
(``loop_lag_worst_ms_server``) shows how far behind the loop fell, a wait the server's
own clock does not see.

Hot swap: open-loop load at ``--swap-rate`` (1,000/s, at most half the sustainable rate)
for ``--swap-duration`` s; a third of the way in the alias moves to version 2 (the server
polls the registry every 2 s). Answers are counted by status and ``X-Model-Version``;
failed = every answer that is not 200 plus every request not answered; the time until
version 2 answers is taken by a probe every 20 ms.

Targets (issue 24): throughput at p99 <= 50 ms >= 5x `mlflow models serve`; zero failed
requests of >= 10,000 across a promotion; under overload the accepted requests' p99 within
the objective and the shed ones answered in under 5 ms.

Why one module: one benchmark run, its set-up, servers, load and figures, in the order the
method above describes; this docstring and wrk's Lua script (a string here) are about 100
lines of the length. Its tables are rendered by ``benchmarks/pages/serving.py``.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--slo-ms 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "youtube-spam"
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
BIN = Path(sys.executable).parent
MODEL_NAME = "bench-spam"
CONNECTIONS = (1, 4, 16, 64)
# How long a wrk connection refused with 503 waits before its next request.
BACKOFF_MS = 20
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

# wrk's script: POST the bodies of a file in turn, and count answers by status and by
# the model version header (summed over wrk's threads in done()).
WRK_SCRIPT = r"""
-- WRK_DELAY_MS: each connection pauses that long after an answer, so that N connections
-- offer about N * 1000 / WRK_DELAY_MS requests/s while answers are fast.
-- WRK_BACKOFF_MS: a connection answered 503 waits that long before its next request, as
-- a client that backs off when refused does (one that retries at once turns shedding into
-- a stream of refusals that the server spends its time on).
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "") or 0
local backoff = tonumber(os.getenv("WRK_BACKOFF_MS") or "") or 0
local refused = false
delay = function()
  local wait = pause
  if refused then wait = wait + backoff end
  refused = false
  return wait
end
local bodies = {}
local counter = 0
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  if args[2] and args[2] ~= "" then wrk.headers["Authorization"] = "Bearer " .. args[2] end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if os.getenv("COUNT_VERSIONS") then counts = {} end
end
request = function()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end
response = function(status, headers, body)
  refused = status == 503
  if counts then
    local version = headers["x-model-version"] or headers["X-Model-Version"] or "-"
    local key = tostring(status) .. "/" .. tostring(version)
    counts[key] = (counts[key] or 0) + 1
  end
end
done = function(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    if c then for k, v in pairs(c) do total[k] = (total[k] or 0) + v end end
  end
  for k, v in pairs(total) do io.write("COUNT " .. k .. " " .. v .. "\n") end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- setup -------------------------------------------------------------------------------


def register_versions(tracking_uri: str, scratch: Path) -> dict[str, Any]:
    """Versions 1 and 2 of ``bench-spam`` (seeds 0 and 1), alias champion on 1."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from mlsys.data import load_dataset, read_dataset
    from mlsys.models.pyfunc import log_text_classifier
    from mlsys.models.text import build_text_classifier, pipeline_featurizer

    client = MlflowClient(tracking_uri)
    artifacts = (scratch / "mlartifacts").resolve()
    experiment_id = client.create_experiment("bench-serving", artifact_location=artifacts.as_uri())
    texts = read_dataset(load_dataset("youtube-spam"), str(DATA))["text"].head(5).tolist()
    versions = []
    for seed in (0, 1):
        run_id = client.create_run(experiment_id).info.run_id
        torch.manual_seed(seed)
        featurizer = pipeline_featurizer()
        model = build_text_classifier(n_features=featurizer.n_features, hidden=[])
        info = log_text_classifier(
            model,
            featurizer,
            run_id=run_id,
            tracking_uri=tracking_uri,
            registered_model_name=MODEL_NAME,
            input_example_texts=texts,
            class_names=["ham", "spam"],
        )
        client.set_terminated(run_id)
        versions.append(str(info.registered_model_version))
    client.set_registered_model_alias(MODEL_NAME, "champion", versions[0])
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    return {
        "name": MODEL_NAME,
        "versions": versions,
        "features": "2**15 hashed word 1-2-grams and char 1-4-grams, linear",
        "weights": "random (seeds 0 and 1)",
    }


def write_bodies(path: Path, requests: int) -> int:
    """``requests`` single-row ``dataframe_split`` bodies of real comments, each made
    distinct by a ``#<n>`` token; returns how many comments they cycle through."""
    from mlsys.data import load_dataset, read_dataset

    comments = read_dataset(load_dataset("youtube-spam"), str(DATA))["text"].astype(str).tolist()
    random.Random(0).shuffle(comments)
    with path.open("w") as f:
        for i in range(requests):
            text = f"{comments[i % len(comments)]} #{i}"
            f.write(json.dumps({"dataframe_split": {"columns": ["text"], "data": [[text]]}}) + "\n")
    return len(comments)


# --- servers -------------------------------------------------------------------------------


class Server:
    """A server process on a free port; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], port: int, log: Path):
        self.label, self.argv, self.env, self.port, self.log = label, argv, env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.label} not ready in 180 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def mlflow_server(workers: int, env: dict[str, str], scratch: Path) -> Server:
    port = free_port()
    argv = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{MODEL_NAME}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(workers),
    ]
    return Server(
        f"mlflow models serve -w {workers}", argv, env, port, scratch / f"mlflow-{workers}.log"
    )


def mlsys_server(
    batching: bool,
    env: dict[str, str],
    scratch: Path,
    slo_ms: float,
    workers: int,
    poll_s: float = 10.0,
) -> Server:
    port = free_port()
    argv = [
        str(BIN / "mlsys"),
        "serve",
        "--model",
        MODEL_NAME,
        "--dataset",
        "youtube-spam",
        "--port",
        str(port),
        "--slo-ms",
        str(slo_ms),
        "--cache-entries",
        "0",
        "--no-log",
        "--poll-s",
        str(poll_s),
        "--workers",
        str(workers),
    ]
    if not batching:
        argv.append("--no-batching")
    label = f"mlsys serve -w {workers}, " + ("adaptive batching" if batching else "batching off")
    return Server(label, argv, env, port, scratch / f"mlsys-{int(batching)}.log")


# --- load ----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str,
    bodies: Path,
    script: Path,
    key: str,
    connections: int,
    duration: float,
    count_versions: bool = False,
    delay_ms: float | None = None,
) -> dict[str, Any]:
    """One wrk run; rates, latency percentiles (ms) and failures, parsed from its output."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{url}/invocations",
        "--",
        str(bodies),
        key,
    ]
    env = dict(os.environ)
    env["WRK_BACKOFF_MS"] = str(BACKOFF_MS)
    if count_versions:
        env["COUNT_VERSIONS"] = "1"
    if delay_ms is not None:
        env["WRK_DELAY_MS"] = f"{delay_ms:.3f}"
    text = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    failed = int(non2xx.group(1)) if non2xx else 0
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    latency = {
        f"p{q}": _ms(m.group(1))
        for q in (50, 99)
        if (m := re.search(rf"^\s+{q}%\s+(\S+)", text, re.MULTILINE))
    }
    counts = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^COUNT (\S+) (\d+)$", text, re.MULTILINE)
    }
    return {
        "connections": connections,
        "requests": requests,
        "non_2xx": failed,
        "socket_errors": socket_errors,
        "ok_per_s": (requests - failed) / duration,
        "latency_ms": latency,
        **({"answers": counts} if count_versions else {}),
    }


def throughput(
    server: Server, bodies: Path, script: Path, key: str, args: argparse.Namespace
) -> dict[str, Any]:
    wrk(server.url, bodies, script, key, 4, 3)  # warm-up
    runs = []
    for c in CONNECTIONS:
        run = wrk(server.url, bodies, script, key, c, args.duration)
        print(
            f"  {server.label:<34} c={c:<3} {run['ok_per_s']:8.0f} ok/s  "
            f"p50 {run['latency_ms']['p50']:7.1f} ms  p99 {run['latency_ms']['p99']:7.1f} ms  "
            f"non-2xx {run['non_2xx']}  socket errors {run['socket_errors']}",
            flush=True,
        )
        runs.append(run)
    within = [r for r in runs if r["latency_ms"]["p99"] <= args.slo_ms and not r["socket_errors"]]
    best = max(within, key=lambda r: r["ok_per_s"]) if within else None
    return {
        "label": server.label,
        "runs": runs,
        "best_within_slo": best,
        "ok_per_s_within_slo": best["ok_per_s"] if best else 0.0,
    }


def open_loop(
    server: Server, bodies: Path, key: str, rate: float, duration: float
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(Path(__file__).parent / "_loadgen.py"),
        "--url",
        f"{server.url}/invocations",
        "--bodies",
        str(bodies),
        "--rate",
        f"{rate:.0f}",
        "--duration",
        str(duration),
        "--key",
        key,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    result["rate"] = rate
    return result


def hot_swap(
    server: Server,
    bodies: Path,
    key: str,
    tracking_uri: str,
    versions: list[str],
    rate: float,
    duration: float,
) -> dict[str, Any]:
    """Open-loop load at ``rate`` while the alias moves from version 1 to 2 a third of the
    way in; answers by status and version, and how long until version 2 answered."""
    from mlflow.tracking import MlflowClient

    switch: dict[str, float] = {}
    data = json.loads(bodies.read_text().splitlines()[0])

    def move_alias() -> None:
        time.sleep(duration / 3)
        MlflowClient(tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", versions[1])
        moved = time.perf_counter()
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            while time.perf_counter() - moved < duration:
                answer = client.post(f"{server.url}/invocations", json=data)
                if answer.headers.get("x-model-version") == versions[1]:
                    switch["s"] = time.perf_counter() - moved
                    return
                time.sleep(0.02)

    mover = threading.Thread(target=move_alias)
    mover.start()
    load = open_loop(server, bodies, key, rate, duration)
    mover.join()
    failed = load["answered"] - load["status"].get("200", 0) + load["scheduled"] - load["answered"]
    return {**load, "failed": failed, "switch_s": switch.get("s"), "poll_s": 2.0}


def scrape(server: Server, key: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the server's latency histograms (answered and shed)."""
    text = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).text
    found: dict[str, dict[float, float]] = {"request": {}, "shed": {}}
    pattern = r'^mlsys_serve_(request|shed)_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    for m in re.finditer(pattern, text, re.MULTILINE):
        found[m.group(1)][float(m.group(2))] = float(m.group(3))
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float
                    ) -> float | None:  # fmt: skip
    """The upper bound (ms) of the histogram bucket holding quantile ``q`` of what was
    observed between two scrapes; None when nothing was."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return bound * 1000.0
    return None


def overload(
    server: Server, bodies: Path, script: Path, key: str, rate: float, duration: float,
    connections: int = 1024,
) -> dict[str, Any]:  # fmt: skip
    """About ``rate`` requests/s offered by wrk (``connections`` connections, each pausing
    ``connections / rate`` s after an answer): the server-side p99 of answered and of shed
    requests (histogram bucket bounds), and how many were shed."""
    before = scrape(server, key)
    delay_ms = connections * 1000.0 / rate
    load = wrk(server.url, bodies, script, key, connections, duration, delay_ms=delay_ms)
    after = scrape(server, key)
    text = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).text
    worst = re.search(r"^mlsys_serve_loop_lag_worst_seconds (\S+)$", text, re.MULTILINE)
    return {
        **load,
        "target_rate": rate,
        # The longest a callback waited for the event loop (a request waits that long
        # before the server's own clock starts, and at each turn after): what the
        # server-side figures leave out.
        "loop_lag_worst_ms_server": float(worst.group(1)) * 1000 if worst else None,
        "offered_per_s": load["requests"] / duration,
        "connections": connections,
        "answered_p99_ms_server": bucket_quantile(before["request"], after["request"], 0.99),
        "shed_p99_ms_server": bucket_quantile(before["shed"], after["shed"], 0.99),
    }


# --- report --------------------------------------------------------------------------------


def markdown(figures: dict[str, Any]) -> str:
    """The docs' tables, from a results file (``--table``): the same code that writes them
    into docs/benchmarks.md (``benchmarks/pages/serving.py``), so the two agree to the digit."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # benchmarks/ is not installed; pages/ is imported from it
        sys.path.insert(0, here)
    from pages.serving import serving_tables

    return "\n".join(serving_tables(figures))


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per wrk run.")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="Latency objective (p99).")
    parser.add_argument("--requests", type=int, default=50_000, help="Distinct request bodies.")
    parser.add_argument(
        "--swap-duration", type=float, default=30.0, help="Seconds of load in the hot-swap run."
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[100.0, 300.0, 1000.0],
        help="Fixed open-loop rates (requests/s), comma-separated.",
    )
    parser.add_argument(
        "--swap-rate", type=float, default=1000.0,
        help="Open-loop rate during the hot swap (at most half the sustainable rate).",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=2, help="`mlsys serve --workers` (server processes)."
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON goes.")
    parser.add_argument(
        "--table", action="store_true", help="Print the docs' tables from --output and exit."
    )
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.output.read_text())))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: `make install` installs Debian's wrk (apt-get)")

    scratch = Path(tempfile.mkdtemp(prefix="mlsys-bench-serving-"))
    try:
        tracking_uri = f"sqlite:///{scratch / 'mlflow.db'}"
        print(f"registry {tracking_uri}", flush=True)
        model = register_versions(tracking_uri, scratch)
        bodies = scratch / "bodies.jsonl"
        comments = write_bodies(bodies, args.requests)
        script = scratch / "post.lua"
        script.write_text(WRK_SCRIPT)
        key = secrets.token_urlsafe(24)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLSYS_", "MLFLOW_"))},
            **QUIET_ENV,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLSYS_MLFLOW_TRACKING_URI": tracking_uri,
            "MLSYS_STACK_DIR": str(scratch / "stack"),
            "MLSYS_SERVE_KEY": key,
            # `mlflow models serve` runs `uvicorn` from the PATH.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        servers: dict[str, Any] = {}
        contenders = {
            "mlflow_w1": mlflow_server(1, env, scratch),
            "mlflow_w2": mlflow_server(2, env, scratch),
            "mlsys_unbatched": mlsys_server(False, env, scratch, args.slo_ms, args.workers),
            "mlsys_batched": mlsys_server(True, env, scratch, args.slo_ms, args.workers),
        }
        for name, contender in contenders.items():
            with contender as server:
                servers[name] = throughput(server, bodies, script, key, args)
        baseline = max(("mlflow_w1", "mlflow_w2"), key=lambda n: servers[n]["ok_per_s_within_slo"])
        base_rate = servers[baseline]["ok_per_s_within_slo"]
        ours = servers["mlsys_batched"]["ok_per_s_within_slo"]
        ratio = ours / base_rate if base_rate else None

        fixed: dict[str, list[dict[str, Any]]] = {}
        fixed_servers = {
            baseline: mlflow_server(int(baseline[-1]), env, scratch),
            "mlsys_batched": mlsys_server(True, env, scratch, args.slo_ms, args.workers),
        }
        for name, fixed_server in fixed_servers.items():
            with fixed_server as server:
                wrk(server.url, bodies, script, key, 4, 3)
                fixed[name] = [
                    open_loop(server, bodies, key, rate, args.duration) for rate in args.rates
                ]
            for run in fixed[name]:
                lat = run["latency_ms"]
                print(
                    f"  open loop {name:<15} {run['rate']:6.0f}/s offered "
                    f"{run['offered_rate']:6.0f}/s: answers {run['status']}, "
                    + ", ".join(
                        f"{s}: p50 {v['p50']:.1f} ms p99 {v['p99']:.1f} ms" for s, v in lat.items()
                    ),
                    flush=True,
                )
        with mlsys_server(True, env, scratch, args.slo_ms, args.workers) as server:
            wrk(server.url, bodies, script, key, 4, 3)
            over = overload(server, bodies, script, key, 2 * ours, args.duration)
        print(
            f"  overload at 2 x {ours:.0f}/s (offered {over['offered_per_s']:.0f}/s): "
            f"{over['requests']} requests, "
            f"{over['non_2xx']} shed; server-side p99: answered <= "
            f"{over['answered_p99_ms_server']} ms, shed <= {over['shed_p99_ms_server']} ms",
            flush=True,
        )
        swap_rate = min(args.swap_rate, 0.5 * ours) if ours else args.swap_rate
        with mlsys_server(True, env, scratch, args.slo_ms, args.workers, poll_s=2.0) as server:
            wrk(server.url, bodies, script, key, 4, 3)
            swap = hot_swap(
                server, bodies, key, tracking_uri, model["versions"], swap_rate,
                args.swap_duration,
            )  # fmt: skip
        print(
            f"  hot swap at {swap_rate:.0f}/s: {swap['scheduled']} requests, {swap['failed']} "
            f"failed, answers {swap['answers']}, version 2 after {swap['switch_s']} s",
            flush=True,
        )

        figures = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_at_end": list(os.getloadavg()),
                "wrk": subprocess.run(
                    ["wrk", "-v"], capture_output=True, text=True
                ).stdout.splitlines()[0],
            },
            "model": model,
            "method": {
                "duration_s": args.duration,
                "slo_ms": args.slo_ms,
                "connections": list(CONNECTIONS),
                "mlsys_workers": args.workers,
                "distinct_requests": args.requests,
                "comments": comments,
                "cache": "off (--cache-entries 0); every request text distinct",
                "prediction_log": "off (--no-log)",
            },
            "servers": servers,
            "baseline": baseline,
            "headline": {
                "ok_per_s_within_slo": ours,
                "baseline_ok_per_s_within_slo": base_rate,
                "ratio_vs_mlflow_serve": ratio,
                "target": 5.0,
                "met": ratio is not None and ratio >= 5.0,
            },
            "open_loop": fixed,
            "overload": {
                **over,
                "met": over["answered_p99_ms_server"] is not None
                and over["answered_p99_ms_server"] <= args.slo_ms
                and (over["shed_p99_ms_server"] or 0.0) <= 5.0,
            },
            "hot_swap": {
                **swap,
                "rate": swap_rate,
                "met": swap["failed"] == 0 and swap["scheduled"] >= 10_000,
            },
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        shown = f"{ratio:.2f}x" if ratio else "n/a (baseline never met the objective)"
        print(
            f"\nthroughput at p99 <= {args.slo_ms:g} ms: mlsys serve {ours:.0f}/s vs "
            f"{servers[baseline]['label']} {base_rate:.0f}/s: {shown} (target 5x)"
        )
        print(f"wrote {args.output}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
