"""The summary row and section for benchmarks/batch_infer.py (results/batch_infer.json)."""

from __future__ import annotations

import math
import re

from ._format import (
    Results,
    bold,
    commas,
    fmt,
    pct,
    plural,
    power_of_two,
    size_label,
    span,
    times,
    word,
)

# Targets the benchmarks' JSON does not carry itself (each is a goal, not a result).
BATCH_INFER_RSS_GROWTH_TARGET = 1.2  # streaming peak RSS, 1M rows over 100k rows
BATCH_INFER_RSS_SIZES = ("100000", "1000000")  # the sizes that growth target compares


_CONFIG = re.compile(r"stream_(\d+)w_(checked|unchecked)")


def _stream_label(config: str) -> str:
    match = _CONFIG.fullmatch(config)
    if match is None:
        return "pyfunc, whole DataFrame" if config == "baseline" else config
    workers, check = int(match.group(1)), match.group(2)
    return f"stream, {plural(workers, 'worker')}, {'checked' if check == 'checked' else 'no check'}"


def _workers(config: str) -> int:
    match = _CONFIG.fullmatch(config)
    return int(match.group(1)) if match else 1


def _configs(size: Results) -> list[str]:
    """The configurations measured at one size (its dict-valued entries)."""
    return [key for key, value in size.items() if isinstance(value, dict)]


def batch_infer_row(results: Results) -> str:
    sizes = results["sizes"]
    chunk = results["method"]["chunk_rows"]
    multi = [n for n in sizes if int(n) > chunk]  # more than one chunk: every worker has work
    two = max((c for c in _configs(sizes[multi[0]]) if c.endswith("_checked")), key=_workers)
    one = "stream_1w_checked"
    growth = results["targets"]["rss_growth_100k_to_1m"]
    small, large = (size_label(n) for n in BATCH_INFER_RSS_SIZES)

    def grew(config: str) -> str:
        value = growth[config]["growth"]
        return bold(times(value), value <= BATCH_INFER_RSS_GROWTH_TARGET)

    # Not the batch headline (batch_infer_flow.py is: start-up included, distinct texts),
    # so not in bold: the clock starts after the workers loaded the model.
    speed = " / ".join(times(sizes[n][two]["throughput_vs_baseline"]) for n in multi)
    checked = " / ".join(times(sizes[n][one]["throughput_vs_baseline"]) for n in multi)
    return (
        f"| `batch_infer.py`: the streaming scorer alone (workers load the model before the "
        f"clock starts), the spam pyfunc over {' / '.join(size_label(n) for n in sizes)} "
        f"repeated comments, {size_label(chunk)}-row chunks; its headline is memory | "
        "`mlflow.pyfunc.load_model(...).predict(whole DataFrame)` | "
        f"{plural(_workers(two), 'worker')} {speed} at {' / '.join(size_label(n) for n in multi)};"
        f" {plural(_workers(one), 'worker')} {checked} checked; peak RSS {small} → {large}, "
        f"checked: {plural(_workers(two), 'worker')} {grew(two)}, "
        f"{plural(_workers(one), 'worker')} {grew(one)}, baseline "
        f"{times(growth['baseline']['growth'], 1)}; see below |"
    )


def render_batch_infer(results: Results) -> str:
    """Section: streaming batch inference against the whole-DataFrame pyfunc."""
    sizes = results["sizes"]
    model, method = results["model"], results["method"]
    configs = _configs(next(iter(sizes.values())))
    chunk = method["chunk_rows"]
    runs = [size[c] for size in sizes.values() for c in _configs(size)]
    loads = [x for run in runs for x in run.get("load_average_1min_before", [])]
    equal = all(
        run["verified"]["labels_equal"] and run["verified"]["probabilities_allclose"]
        for run in runs
        if "verified" in run
    )
    repeated = [n for n, s in sizes.items() if s["runs"] > 1]
    once = [n for n, s in sizes.items() if s["runs"] == 1]
    repeats = f"best of {method['repeat']} fresh-process runs"
    if repeated:
        repeats += f" up to {size_label(max(repeated, key=int))} rows"
    if once:
        repeats += f", one at {' and '.join(size_label(n) for n in once)}"
    low, high = model["char_ngrams"]
    layer = "a linear layer" if not model["hidden"] else "an MLP"
    features = power_of_two(model["n_features"])
    last = list(sizes)[-1]
    growth = results["targets"]["rss_growth_100k_to_1m"]
    lines = [
        "Batch inference (`benchmarks/batch_infer.py`; the spam pyfunc with the pipeline's default",
        f"model, {layer} over {features} hashed word n-gram and character {low}–{high}-gram "
        "features,",
        "untrained weights since scoring cost does not depend on them; "
        f"{size_label(chunk)}-row chunks, the flow's",
        "default; each run's predictions checked "
        f"{'equal to' if equal else 'and NOT all equal to'} the baseline's; rows/s, and the peak",
        "RSS added during the run, read from the kernel's high-water mark (the largest of the",
        f"runs); {repeats}; streaming processes start",
        "with `ARROW_DEFAULT_MEMORY_POOL=system`, as the flow's workers and deployments do; load",
        f"average {span(loads, lambda v: fmt(v, 1))}):",
        "",
        "| rows | " + " | ".join(_stream_label(c) for c in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for i, (n, size) in enumerate(sizes.items()):
        cells = []
        for config in configs:
            run = size[config]
            rate = f"{fmt(run['rows_per_s'] / 1000, 1)}k"
            rss = f"+{fmt(run['peak_rss_delta_mib'], 0)} MiB"
            if config == "baseline":
                cells.append(f"{rate}{' rows/s' if i == 0 else ''}, {rss}")
                continue
            ratio = run["throughput_vs_baseline"]
            checked = config.endswith("_checked")
            flat = growth.get(config, {}).get("growth", math.inf)
            rss_bold = n == last and checked and flat <= BATCH_INFER_RSS_GROWTH_TARGET
            cells.append(
                f"{rate} ({bold(times(ratio), checked and ratio >= 1)}), {bold(rss, rss_bold)}"
            )
        lines.append(f"| {commas(int(n))} | " + " | ".join(cells) + " |")

    one = "stream_1w_checked"
    profile = results[f"profile_{one}"]
    shares = profile["stages_share"]

    def share(key: str) -> str:
        value = shares[key]
        return f"{pct(value, 0 if value >= 0.01 else 1)} %"

    parquet = sum(v for k, v in shares.items() if k.startswith(("parquet", "file write")))
    parquet_text = "under 1 %" if parquet < 0.01 else f"{pct(parquet)} %"
    unchecked = [
        sizes[n]["stream_1w_unchecked"]["throughput_vs_baseline"] for n in sizes
    ]  # fmt: skip
    two = max((c for c in configs if c.endswith("_checked")), key=_workers)
    ratios = {n: sizes[n][two]["throughput_vs_baseline"] for n in sizes}
    met = [n for n, r in ratios.items() if r >= 1]
    missed = [n for n, r in ratios.items() if r < 1]
    default = "the flow's default of one worker per CPU (Dask)"
    if not missed:
        target = f"The target is met at every size by {default}: " + ", ".join(
            times(r) for r in ratios.values()
        )
    else:
        target = f"The target is met by {default}" + (
            f"\nat {' and '.join(size_label(n) for n in met)} rows: "
            f"{' and '.join(times(ratios[n]) for n in met)}"
            if met
            else " at no size"
        )
        for n in missed:
            idle = [w for w in sizes[n][two].get("workers", []) if w["rows_in"] == 0]
            why = (
                f" ({plural(sizes[n][two]['chunks'], 'chunk')}, so {word(len(idle))} worker "
                "has nothing to score)"
                if idle
                else ""
            )
            target += f";\nat {size_label(n)} rows{why} it is {times(ratios[n])}"
    lines += [
        "",
        f"Throughput: where a checked {_workers(one)}-worker run spends its time "
        f"({size_label(profile['rows'])} rows): hashing featurizer",
        f"{share('featurizer: hashing n-grams')}, GX serving check "
        f"{share('gx_check (serving suite)')}, the network "
        f"{share('network forward (sparse input layer)')}, Parquet I/O {parquet_text}. One "
        "worker runs the",
        "same featurizer and network as the baseline plus the check, so it can only tie it",
        f"without the check ({span(unchecked, unit='x')} here) and trails it by the check's share "
        "with it.",
        f"{target}.",
    ]

    small, large = BATCH_INFER_RSS_SIZES
    flat = {c: g["growth"] <= BATCH_INFER_RSS_GROWTH_TARGET for c, g in growth.items()}
    checked_configs = [c for c in configs if c.endswith("_checked")]
    checked_configs.sort(key=_workers, reverse=True)
    stay = "stay" if all(flat[c] for c in checked_configs) else "do not all stay"
    parts = []
    for c in checked_configs:
        g = growth[c]
        label = f"{plural(_workers(c), 'worker')}, checked"
        if c == two:
            label += " (the default)"
        summed = " summed" if _workers(c) > 1 else ""
        parts.append(
            f"{label}, {fmt(g['mib_100k'], 0)} → {fmt(g['mib_1m'], 0)} MiB{summed} "
            f"({bold(times(g['growth']), flat[c])})"
        )
    target_pct = pct(BATCH_INFER_RSS_GROWTH_TARGET - 1)
    memory = (
        f"Memory: the baseline grows {times(growth['baseline']['growth'], 1)} from "
        f"{size_label(small)} to {size_label(large)} rows; the flow's configurations {stay}\n"
        f"within the {target_pct} % target: " + ";\n".join(parts) + "."
    )
    if "stream_1w_unchecked" in growth:
        g = growth["stream_1w_unchecked"]
        memory += (
            " Unchecked, which the flow never runs (its\n`validation` is `quarantine` or "
            f"`fail`), one worker grows {times(g['growth'])} ({fmt(g['mib_100k'], 0)} → "
            f"{fmt(g['mib_1m'], 0)} MiB): {'within' if flat['stream_1w_unchecked'] else 'outside'}"
            " the target."
        )
    at_small = sizes[small][two].get("workers", [])
    chunks_each = {w["chunks"] for w in at_small}
    each = (
        f"at {size_label(small)} rows each of {word(len(at_small))} workers scores exactly "
        f"{word(chunks_each.pop())} chunk"
        if len(chunks_each) == 1
        else f"at {size_label(small)} rows the workers score few chunks"
    )
    lines += [
        "",
        memory,
        "",
        "What it took, found by probing one process chunk by chunk (peak above the warm process)",
        "and reading which mappings and pools held the memory between chunks:",
        "- glibc's heap and Arrow's Python-level pool (**Memory.** under the `batch_infer` flow):",
        "  with the allocators' defaults the checked stream grew past the target, from freed",
        "  chunks kept, not from live data.",
        "- Parquet pre-buffering. pyarrow's `ParquetFile` pre-buffers by default: the first read",
        "  of a chunk cached the compressed column chunks of every later row group, so a worker",
        f"  held more at {size_label(large)} rows than at {size_label(small)}. Read with "
        "`pre_buffer=False` (a test checks the reader holds",
        "  a few row groups' worth, not the rest of the file).",
        "- Arrow's C++ pool. The Parquet reader and writer allocate from Arrow's C++ default pool",
        "  (mimalloc in the wheels) whatever `pyarrow.set_memory_pool` says, and mimalloc kept",
        "  what they freed: the workers with pre-buffering off still grew past the target, and",
        "  stayed within it with the pool set to the system allocator by",
        "  `ARROW_DEFAULT_MEMORY_POOL` (`mimalloc`'s own `release_unused` after each chunk changed",
        "  nothing). That pool is chosen when pyarrow is imported, so it is set in the",
        "  environment of the processes that score (flow's Dask workers, deployments).",
        "- GX's last batch. GX keeps the context it made last, and through it the batch it",
        "  validated, until the next checkpoint makes another, so chunk k was alive while chunk",
        "  k+1 was read and converted; `run_checkpoint` now lets go of it.",
        "",
        "Before these, the workers grew past the target and the probe showed the first chunk of a",
        "process peaking lower above the warm process than the later ones;",
        f"{each}, which is why the",
        f"{_workers(two)}-worker figure showed it and the {_workers(one)}-worker one mostly did "
        "not. The "
        "remaining growth is",
        "the process's own: the featurizer's per-process caches are built in the first chunk, and",
        "glibc's free, fragmented bytes grow slowly over the chunks.",
        "",
        "The featurizer and the network were made faster for the character-gram model, and both",
        "changes are covered by tests.",
        "- Each text's n-grams are still counted in Python, but signs, buckets, collision sums and",
        "  row norms are computed for the whole chunk at once in NumPy. Bounded per-process",
        "  caches (n-gram digests, and each word's character grams) help too. Output is",
        "  bit-identical to the one-gram-at-a-time definition.",
        "- `predict_texts` runs a first Linear layer as an embedding bag over the sparse rows, so",
        f"  no dense `rows × {features}` matrix is built.",
    ]
    latency = results["registry_load_latency"]
    registry = "local SQLite registry; " if model["tracking_uri"].startswith("sqlite:") else ""
    first = span((v["first_predict_s"] * 1000 for v in latency.values()), lambda v: fmt(v, 0))
    lines += [
        "",
        "Registry load to the first prediction: "
        + ",\n".join(f"`{v['uri']}` {fmt(v['seconds'])} s" for v in latency.values())
        + f"\n({registry}the first predict takes {first} ms).",
    ]
    return "\n".join(lines)
