"""The summary row for benchmarks/validate.py (results/validate.json)."""

from __future__ import annotations

from ._format import Results, fmt, size_label, thousands, times


def render_validate(results: Results) -> str:
    """Summary row: the GX checkpoint against the same checks in vectorized pandas."""
    sizes = list(results["sizes"].values())
    identical = all(s["results_identical"] for s in sizes)
    imports = results["import"]
    return (
        f"| `validate.py`: the `{results['suite']}` checkpoint ({results['mode']} mode) on "
        f"{' / '.join(size_label(s['rows']) for s in sizes)} replicated comments | the same "
        "checks as vectorized pandas, results "
        f"{'checked identical' if identical else 'NOT identical'} | GX "
        f"{' / '.join(thousands(s['gx_rows_per_s']) for s in sizes)} rows/s, "
        f"{' / '.join('+' + fmt(s['gx_peak_rss_delta_mib'], 0) for s in sizes)} MiB peak RSS; "
        f"pandas is {' / '.join(times(s['ratio_gx_over_pandas_time'], 1) for s in sizes)} "
        f"faster; `import great_expectations` {fmt(imports['import_great_expectations_s'], 1)} "
        f"s (pandas {fmt(imports['import_pandas_s'], 1)} s), paid only when a checkpoint runs |"
    )
