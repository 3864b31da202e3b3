"""The summary row and section for benchmarks/batch_infer_flow.py
(results/batch_infer_flow.json)."""

from __future__ import annotations

import statistics

from ._format import Results, bold, commas, fmt, mib, size_label, span, times


def _flow_loads(results: Results) -> list[float]:
    return [
        load
        for kind in results["inputs"].values()
        for entry in kind["sizes"].values()
        for side in ("baseline", "flow", "flow_run")
        for load in entry.get(side, {}).get("load_average_1min_before", [])
    ]


def _ran_the_flow(results: Results) -> bool:
    """Whether the headline is the flow run itself (Prefect, MLflow, S3), not its path."""
    return bool(results["headline"].get("measured") == "flow_run")


def batch_infer_flow_row(results: Results) -> str:
    head = results["headline"]
    value = head["ratio_vs_baseline"]
    what = (
        "the batch_infer flow run on the stack (Prefect, MLflow, S3 in and out, its Dask "
        "cluster; start-up and model load included)"
        if _ran_the_flow(results)
        else "the batch_infer flow's path (its Dask cluster, start-up and model load included)"
    )
    return (
        f"| `batch_infer_flow.py`: {what} over {size_label(head['rows'])} {head['inputs']} texts | "
        "a fresh process: `load_model`, `read_parquet`, `predict`, `to_parquet` | "
        f"{bold(times(value), value >= 1)} ("
        + (
            f"its scoring path {times(head['flow_path_ratio_vs_baseline'])}, "
            if _ran_the_flow(results)
            else ""
        )
        + f"{times(head['steady_ratio_vs_baseline'])} steady state); see below |"
    )


def render_batch_infer_flow(results: Results) -> str:
    """Section: the flow's scoring path against a user's script, start-up included."""
    head, method = results["headline"], results["method"]
    value = head["ratio_vs_baseline"]
    faster = "faster than" if value >= 1 else "slower than"
    loads = _flow_loads(results)
    ran = _ran_the_flow(results)
    if ran:
        opening = (
            f"**Batch inference through the batch_infer flow: {times(value)} the baseline** at "
            f"{commas(head['rows'])} {head['inputs']} rows, start-up and model load included: "
            "the flow run itself (Prefect flow and task runs, its MLflow run, the first "
            "chunk's checkpoint, every chunk read from S3 and its part written there, its "
            f"Dask cluster) is {faster} a user's script here. Its scoring path alone (no "
            f"Prefect, MLflow or S3): {times(head['flow_path_ratio_vs_baseline'])}, "
            f"{times(head['steady_ratio_vs_baseline'])} in the steady state."
        )
    else:
        opening = (
            f"**Batch inference through the flow's path: {times(value)} the baseline** at "
            f"{commas(head['rows'])} {head['inputs']} rows, start-up and model load included "
            f"({times(head['steady_ratio_vs_baseline'])} in the steady state): the flow is "
            f"{faster} a user's script here."
        )
    lines = [
        opening
        + f" Target {head['target']}: "
        + ("met." if head["met"] else "NOT met.")
        + (f" ({head['note']}.)" if head.get("note") else ""),
        "",
        "`benchmarks/batch_infer_flow.py`: each side is a fresh process, timed from its start "
        "to its exit. Baseline: `mlflow.pyfunc.load_model`, `pd.read_parquet`, "
        "`model.predict` on the whole DataFrame, `to_parquet` of the predictions, all on the "
        "local disk. "
        + (
            "Flow run: the `batch_infer` flow called in a fresh process on a private stack "
            "(Prefect server, MLflow server, SeaweedFS; started before and not timed, as a "
            "deployment keeps them running), its input put in S3 beforehand; its parts are "
            "fetched back from S3 and checked as the flow path's. "
            if ran
            else ""
        )
        + "Flow path: "
        "`resolve_model`, `list_input`, `chunk_count`, then the Dask cluster the flow builds "
        "(`tasks.cluster.dask_runner`) with one `score_partition` per worker (the serving "
        "suite checked on every chunk, one part per chunk); Prefect's orchestration and the "
        "flow's MLflow run, "
        "first-chunk checkpoint and manifest are not timed, and the parts go to a local folder "
        "instead of S3. Ratio: baseline seconds over flow seconds. Steady state: after the "
        f"model is loaded. {size_label(method['chunk_rows'])}-row chunks; load average "
        f"{span(loads, lambda v: fmt(v, 1))}.",
        "",
        "| input | rows | flow vs baseline | steady state | baseline s (steady) | "
        "flow s (steady) | flow workers |",
        "|---|---|---|---|---|---|---|",
    ]
    if ran:
        lines[-2:] = [
            "| input | rows | flow run vs baseline | flow path vs baseline | steady state | "
            "baseline s (steady) | flow run s | flow path s (steady) | flow workers |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for kind, entry in results["inputs"].items():
        for n, size in entry["sizes"].items():
            base, flow = size["baseline"], size["flow"]
            ratio = size["ratio_vs_baseline"]
            run = ""
            if ran:
                whole = size["flow_run_ratio_vs_baseline"]
                run = f"{bold(times(whole), whole >= 1)} | {times(ratio)} | "
            lines.append(
                f"| {kind} | {commas(int(n))} | "
                + (run or f"{bold(times(ratio), ratio >= 1)} | ")
                + f"{times(size['steady_ratio_vs_baseline'])} | {fmt(base['seconds'])} "
                f"({fmt(base['steady_s'])}) | "
                + (f"{fmt(size['flow_run']['seconds'])} | " if ran else "")
                + f"{fmt(flow['seconds'])} ({fmt(flow['steady_s'])}) | {flow['workers']} |"
            )
    labels = "; ".join(f"{kind}: {entry['label']}" for kind, entry in results["inputs"].items())
    lines += ["", f"Inputs: {labels}."]
    slower = sorted(
        {
            int(n)
            for entry in results["inputs"].values()
            for n, size in entry["sizes"].items()
            if size.get("flow_run_ratio_vs_baseline", size["ratio_vs_baseline"]) < 1
        }
    )
    if slower:
        lines[-1] += (
            f" At {' and '.join(commas(n) for n in slower)} rows the flow is slower than the "
            "script: its start-up (imports, the cluster, the model loaded in each worker, the "
            "cluster closed; for the flow run also its Prefect and MLflow calls and the first "
            "chunk's checkpoint) costs more than the second worker gains on so little. It is "
            "still the tool there when the batch must be checked and its bad rows "
            "quarantined, written as parts a failed run resumes from, bounded in memory, or "
            "scored on a cluster's workers; for a one-off score of a small file, `predict` "
            "is quicker."
        )
    top = results["inputs"][head["inputs"]]["sizes"][str(head["rows"])]
    base, flow = top["baseline"], top["flow"]
    if "model_load_s" in flow:
        lines += [
            "",
            f"Where the start-up goes at {commas(head['rows'])} {head['inputs']} rows: flow, "
            f"process start and imports {fmt(flow['start_and_imports_s'], 1)} s, model "
            f"resolution and input listing {fmt(flow['resolve_s'], 1)} s, Dask cluster start "
            f"{fmt(flow['cluster_start_s'], 1)} s, model load "
            f"{span(flow['model_load_s'], lambda v: fmt(v, 1))} s per worker, cluster close "
            f"{fmt(flow['cluster_close_s'], 1)} s; baseline, process start and imports "
            f"{fmt(base['start_and_imports_s'], 1)} s, model load {fmt(base['load_model_s'], 1)} "
            f"s. Peak RSS: baseline {mib(base['peak_rss_bytes'])} MiB, flow workers "
            f"{span(flow['peak_rss_bytes'], mib, ' MiB')} each.",
        ]
        chunks, workers = flow.get("chunk_seconds", []), flow["workers"]
        if len(chunks) > workers:  # part order: each worker's first chunk comes first
            lines[-1] += (
                f" Each worker's first chunk took {span(chunks[:workers], lambda v: fmt(v, 1))} "
                f"s, the later ones {fmt(statistics.median(chunks[workers:]), 1)} s (median): "
                "the first pays the serving check's set-up and cold caches."
            )
    if value < 1:
        lines += [
            "",
            "Where the flow is slower, it is still the tool for inputs that do not fit in "
            "memory (it holds one chunk per worker, where `predict` on the whole DataFrame "
            "holds all of it), for runs that must resume after a failure, validate every "
            "chunk or record what scored what, and for scoring on a Dask cluster of other "
            "hosts.",
        ]
    return "\n".join(lines)
