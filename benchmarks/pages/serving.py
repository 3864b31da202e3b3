"""The summary row and section for benchmarks/serving.py (results/serving.json); its
tables are what ``python benchmarks/serving.py --table`` prints too."""

from __future__ import annotations

import re

from ._format import Results, commas, cpus, fmt, plural, span, times


def serving_tables(figures: Results) -> list[str]:
    """The serving tables (``benchmarks/serving.py --table`` prints them with this function
    too), with Python's rounding."""
    method = figures["method"]
    slo = method["slo_ms"]
    lines = [
        "| server | " + " | ".join(f"c={c}" for c in method["connections"])
        + f" | best within p99 <= {slo:g} ms |",
        "|---|" + "---|" * (len(method["connections"]) + 1),
    ]  # fmt: skip
    for result in figures["servers"].values():
        cells = [
            f"{r['ok_per_s']:,.0f}/s, p99 {r['latency_ms']['p99']:.1f} ms"
            + (f", {r['non_2xx']:,} shed" if r["non_2xx"] else "")
            for r in result["runs"]
        ]
        lines.append(
            f"| {result['label']} | " + " | ".join(cells)
            + f" | **{result['ok_per_s_within_slo']:,.0f}/s** |"
        )  # fmt: skip
    head = figures["headline"]
    ratio = head["ratio_vs_mlflow_serve"]
    lines += [
        "",
        f"Headline: {head['ok_per_s_within_slo']:,.0f} against "
        f"{head['baseline_ok_per_s_within_slo']:,.0f} requests/s, "
        + (f"**{ratio:.2f}x**" if ratio else "n/a")
        + f" (target {head['target']:g}x, {'met' if head['met'] else 'not met'}).",
        "",
        "| open loop, requests/s | " + " | ".join(figures["open_loop"]) + " |",
        "|---|" + "---|" * len(figures["open_loop"]),
    ]
    rates = [run["rate"] for run in next(iter(figures["open_loop"].values()))]
    for i, rate in enumerate(rates):
        cells = []
        for runs in figures["open_loop"].values():
            ok = runs[i]["latency_ms"].get("200")
            cells.append(f"p50 {ok['p50']:.1f} ms, p99 {ok['p99']:.1f} ms" if ok else "none")
        lines.append(f"| {rate:,.0f} | " + " | ".join(cells) + " |")
    over, swap = figures["overload"], figures["hot_swap"]
    new = figures["model"]["versions"][-1]
    lines += [
        "",
        f"Overload (target {over['target_rate']:,.0f}/s, offered {over['offered_per_s']:,.0f}/s):"
        f" {over['requests'] - over['non_2xx']:,} answered, {over['non_2xx']:,} shed; "
        f"server-side p99 of the answered <= {over['answered_p99_ms_server']} ms, of the shed "
        f"<= {over['shed_p99_ms_server']} ms ({'met' if over['met'] else 'not met'}).",
        f"Hot swap at {swap['rate']:,.0f}/s: {swap['scheduled']:,} requests, "
        f"{swap['failed']} failed, answers {swap['answers']}; version {new} answered "
        f"{swap['switch_s']:.2f} s after the alias moved (poll every {swap['poll_s']:g} s) "
        f"({'met' if swap['met'] else 'not met'}).",
    ]
    return lines


def _serving_workers(key: str) -> int | None:
    match = re.fullmatch(r"mlflow_w(\d+)", key)
    return int(match.group(1)) if match else None


def serving_row(results: Results) -> str:
    head = results["headline"]
    baseline = results["baseline"]
    mlflow = {k: _serving_workers(k) for k in results["servers"] if _serving_workers(k)}
    weakest = min(mlflow, key=lambda k: mlflow[k] or 0)
    over_default = head["ok_per_s_within_slo"] / results["servers"][weakest]["ok_per_s_within_slo"]
    swap = results["hot_swap"]
    slo = results["method"]["slo_ms"]
    return (
        "| `serving.py`: `mlsys serve` of the spam pyfunc, single-row requests of real comments "
        "(each text distinct), wrk at "
        f"{'/'.join(str(c) for c in results['method']['connections'])} connections | `mlflow "
        f"models serve` of the same version, {' and '.join(str(w) for w in mlflow.values())} "
        "uvicorn workers (the stronger is the baseline) | requests/s at p99 <= "
        f"{slo:g} ms: **{commas(head['ok_per_s_within_slo'])} vs "
        f"{commas(head['baseline_ok_per_s_within_slo'])}** "
        f"({plural(_serving_workers(baseline) or 0, 'worker')}), "
        f"**{times(head['ratio_vs_mlflow_serve'])}** (target {head['target']:g}x "
        f"{'met' if head['met'] else 'not met'}; {times(over_default, 1)} the "
        f"{mlflow[weakest]}-worker default); {swap['failed']} failed of "
        f"{commas(swap['scheduled'])} across a promotion; overload target "
        f"{'met' if results['overload']['met'] else 'not met'}; see below |"
    )


def render_serving(results: Results) -> str:
    """Section: ``mlsys serve`` against ``mlflow models serve`` of the same model version."""
    method, model = results["method"], results["model"]
    power = re.search(r"2\*\*(\d+)", model["features"])
    features = f"2^{power.group(1)} " if power else ""
    off = [
        name
        for name, key in (("prediction cache", "cache"), ("log", "prediction_log"))
        if str(method.get(key, "")).startswith("off")
    ]
    head = results["headline"]
    baseline = results["baseline"]
    servers = results["servers"]
    mlflow = {k: _serving_workers(k) for k in servers if _serving_workers(k)}
    weakest = min(mlflow, key=lambda k: mlflow[k] or 0)
    weak_rate = servers[weakest]["ok_per_s_within_slo"]
    n_cpus = cpus(results)
    lines = [
        "## Online serving",
        "",
        "`benchmarks/serving.py` (its docstring has the method; `python benchmarks/serving.py",
        "--table` prints these tables from `benchmarks/results/serving.json`). The pipeline's",
        f"default model (linear over {features}hashed word and character n-grams), "
        + (
            f"`mlsys serve`\nwith {method['mlsys_workers']} worker processes (`--workers`)"
            if method.get("mlsys_workers", 1) > 1
            else "one server process\nper configuration"
        ),
        f"on the {n_cpus}-core machine that also runs wrk; "
        + (f"{' and '.join(off)} off,\n" if off else "")
        + "every request text distinct; a wrk connection refused with 503 waits before its next",
        "request, as a client that backs off does.",
        "",
        *serving_tables(results),
        "",
        "What the figures say, and what they do not:",
    ]
    base_workers = _serving_workers(baseline)
    lines += [
        f"- The baseline is `mlflow models serve` with {base_workers} uvicorn workers, which uses "
        f"{'both' if base_workers == n_cpus == 2 else 'all the'} cores",
        f"  (its default of {plural(mlflow[weakest] or 0, 'worker')} reaches "
        f"{commas(weak_rate)}/s within the objective: "
        f"{times(head['ok_per_s_within_slo'] / weak_rate, 1)}).\n  The {head['target']:g}x target "
        f"is {'met' if head['met'] else 'not met'} in this run.",
    ]
    loops = results["open_loop"]
    ours = loops["mlsys_batched"]
    theirs = loops[baseline]
    top = theirs[-1]
    our_p99 = span((r["latency_ms"]["200"]["p99"] for r in ours), lambda v: fmt(v, 0))
    their_p99 = top["latency_ms"]["200"]["p99"]
    their_text = f"{fmt(their_p99 / 1000, 1)} s" if their_p99 >= 1000 else f"{fmt(their_p99, 1)} ms"
    behind = (
        "where the\n  baseline has fallen behind"
        if their_p99 > method["slo_ms"]
        else "where the\n  baseline keeps up"
    )
    lines.append(
        f"- Under fixed rates, `mlsys serve` keeps p99 at {our_p99} ms up to "
        f"{commas(ours[-1]['rate'])} requests/s, {behind} (p99 {their_text}): open-loop latency "
        "counts the wait of requests\n  the server is late for."
    )
    over = results["overload"]
    sustainable = head["ok_per_s_within_slo"]
    offered = over["offered_per_s"] / sustainable
    wanted = over["target_rate"] / sustainable
    pacing = (
        f" (wrk's pacing could not reach {times(wanted, 0)})"
        if over["offered_per_s"] < over["target_rate"]
        else ""
    )
    shed, answered = over["shed_p99_ms_server"], over["answered_p99_ms_server"]
    if over["met"]:
        lines.append(
            f"- Overload is handled as the target asks: with about {times(offered)} the "
            f"sustainable rate\n  offered{pacing}, the shed requests are refused within {shed:g} "
            f"ms and the accepted ones wait up to {answered:g} ms."
        )
    else:
        lines.append(
            f"- Overload is not handled as the target asks: with about {times(offered)} the "
            f"sustainable rate\n  offered{pacing}, the shed requests are refused within {shed:g} "
            f"ms,\n  but the accepted ones wait up to {answered:g} ms. The admission estimate "
            "sees only the batch\n  queue; under a flood of connections the time goes to the "
            "event loop, which parses and\n  refuses requests on the same interpreter as it "
            "resumes the batches. Measured on the way:\n  timing batches around the event loop's "
            "await fed its lag into the estimate and shed\n  almost everything; timing on the "
            "scoring thread, refusing before the body is parsed, and a\n  shorter interpreter "
            "switch interval each helped, not enough. Tried with 2 workers and dropped: adding\n  "
            "the recent p99 of how much later than estimated the answers came, and counting a "
            "batch\n  as the p90 of its whole cycles (a cycle took about twice its scoring "
            "time at the\n  median) each shed most requests and left the accepted ones as "
            "late: the refusals\n  themselves keep the event loop behind. Now the HTTP "
            "protocol refuses from the headers\n  (no ASGI cycle, task or app): more requests "
            "answered under a flood, their p99 as late.\n  Counting a batch run back to back as "
            "its whole cycle (the mean, not the p90) brought\n  the accepted requests' mean "
            "within the objective but not their p99, and lost requests\n  in hot swaps (1 to 3 "
            "of 30,000 in 2 of 10 runs); dropped."
        )
    swap = results["hot_swap"]
    old, new = model["versions"][0], model["versions"][-1]
    failed = "no request failed" if swap["failed"] == 0 else f"{swap['failed']} requests failed"
    lines.append(
        f"- Hot swap: at {commas(swap['rate'])} requests/s, {failed} while the alias moved and "
        f"version {new}\n  loaded and warmed up beside version {old}; version {new} answered "
        f"{fmt(swap['switch_s'])} s after the alias moved\n  with a {swap['poll_s']:g} s poll. "
        "Before the warm-up and the thread-side timing, earlier versions\n  of this run (wrk, "
        "closed-loop connections, the server at capacity) lost requests to\n  shedding during "
        "the swap."
    )
    if swap["failed"]:
        failures = {k: v for k, v in swap["answers"].items() if not k.startswith("200/")}
        lines.append(
            f"  The failures are {failures} (503: shed by admission control, not errors). In "
            "a trace of\n  the same load on 2 workers on a busy machine, without the warm-up, "
            "most 503s came in\n  the first second, as the load generator opened its "
            "connections, and a few dozen as\n  the alias moved; after the warm-up and "
            "without a promotion the load was answered in\n  full. The swap sheds a little "
            "under CPU contention, and the target counts every 503."
        )
    load = results.get("machine", {}).get("load_average_at_end")
    if load:
        lines.append(
            f"- Load average at the end of the run: {load[0]:.1f} on {n_cpus} cores (the "
            "benchmark's own\n  processes account for about 3 of it; more means other work "
            "shared the machine)."
        )
    return "\n".join(lines)
