"""The summary row and section for benchmarks/incremental.py (results/incremental.json)."""

from __future__ import annotations

import re

from ._format import Results, bold, fmt, pct, plural, sci, span, times, word

_WORKLOAD = re.compile(r"VGG-11/\d+ (\d+)px, (\d+)x(\d+)px")


def _workload(name: str) -> str:
    vgg = _WORKLOAD.fullmatch(name)
    if vgg:
        px, patches, patch = (int(g) for g in vgg.groups())
        noun = "patch" if patches == 1 else "patches"
        return f"VGG-11 {px} px, {word(patches)} {patch} px {noun}"
    return re.sub(r"(\d+)px", r"\1 px", name)


def _ms(value: float) -> str:
    return fmt(value, 1 if value >= 10 else 2)


def incremental_row(results: Results) -> str:
    rows = results["rows"]
    head = next(r for r in rows if "target_met" in r and r["threads"] == 1)
    more = [r for r in rows if "target_met" in r and r["threads"] != 1]
    match = _WORKLOAD.fullmatch(head["workload"])
    assert match is not None, head["workload"]
    px, patches, patch = (int(g) for g in match.groups())
    noun = "patch" if patches == 1 else "patches"
    other = "".join(f"; {times(r['ratio'], 1)} with {plural(r['threads'], 'thread')}" for r in more)
    return (
        f"| `incremental.py`: VGG-11 trunk at {px}×{px}, {word(patches)} {patch}×{patch} {noun} "
        f"changed per frame, {plural(head['threads'], 'thread')} | `model(frame)` | "
        f"**{times(head['ratio'], 1)}** ({_ms(head['incremental_median_ms'])} vs "
        f"{fmt(head['full_median_ms'], 0)} ms per frame, {pct(head['mean_recomputed_fraction'], 1)}"
        f" % of the trunk recomputed), max abs diff {sci(head['max_abs_diff'])}{other}; "
        "see below |"
    )


def render_incremental(results: Results) -> str:
    """Section: incremental (Krypton-style) inference against the full forward per frame."""
    rows = results["rows"]
    shown = [r for r in rows if r["threads"] == 1 or "target_met" in r]
    vgg = [r for r in rows if r["workload"].startswith("VGG")]
    digit = [r for r in rows if r["workload"].startswith("digit")]
    frames = span((r["frames_timed"] for r in vgg), str)
    if digit:
        frames += f" frames ({span((r['frames_timed'] for r in digit), str)} for the digit video)"
    else:
        frames += " frames"
    exact = max(r["max_abs_diff"] for r in rows)
    lines = [
        f"Incremental inference (`benchmarks/incremental.py`; medians over {frames};",
        f"exact: max |incremental − full| ≤ {sci(exact)}):",
        "",
        "| threads | workload | `max_regions` | full ms | incremental ms | speed-up | trunk "
        "recomputed | full fallbacks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in shown:
        fallbacks = f"{r['full_fallbacks']} of {r['frames_timed']}" if r["full_fallbacks"] else "0"
        headline = r.get("target_met") is not None and r["threads"] == 1
        lines.append(
            f"| {r['threads']} | {_workload(r['workload'])} | {r['max_regions']} | "
            f"{_ms(r['full_median_ms'])} | {_ms(r['incremental_median_ms'])} | "
            f"{bold(times(r['ratio'], 1), headline)} | {pct(r['mean_recomputed_fraction'], 1)} % "
            f"| {fallbacks} |"
        )
    head = next(r for r in rows if "target_met" in r and r["threads"] == 1)
    if digit and max(r["ratio"] for r in digit) < head["ratio"]:
        lines += [
            "",
            "On the small digit CNN per-layer Python and dispatch overhead eats much of the "
            "saving;",
            "the large trunk is where Krypton pays.",
        ]
    return "\n".join(lines)
