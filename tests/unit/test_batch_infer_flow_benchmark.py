"""benchmarks/batch_infer_flow.py measures what it says: its distinct inputs are distinct,
seeded and of a real vocabulary, the repeated input is the comments cycled, the ratio reads
"above 1: the flow is faster", and its results render with the ratio first."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "youtube-spam").is_dir() or not (DATA / "semeval-raw").is_dir(),
    reason=f"youtube-spam and semeval-raw not found under {DATA}",
)
CORPUS = [
    "check out my channel for free gift cards",
    "love this song so much",
    "The phalanx of umbrellas follows the crowd into the square .",
    "subscribe to my channel please",
    "so much love from brazil",
]


@pytest.fixture(scope="module")
def bench(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("batch_infer_flow.py")


@pytest.fixture(scope="module")
def page(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    """benchmarks/pages/batch_infer_flow.py (importing report.py puts benchmarks/ on sys.path)."""
    benchmark_script("report.py")
    return importlib.import_module("pages.batch_infer_flow")


def test_distinct_texts_are_distinct_seeded_and_of_the_corpus_words(bench: ModuleType) -> None:
    texts = bench.distinct_texts(300, seed=3, source=CORPUS)
    assert len(texts) == len(set(texts)) == 300
    assert texts == bench.distinct_texts(300, seed=3, source=CORPUS)
    assert texts != bench.distinct_texts(300, seed=4, source=CORPUS)
    # The benchmark generates once, at its largest size, and gives each size a prefix.
    assert bench.distinct_texts(100, seed=3, source=CORPUS) == texts[:100]
    vocabulary = {word for text in CORPUS for word in text.split()}
    assert {word for text in texts for word in text.split()} <= vocabulary


@needs_data
def test_the_corpus_holds_both_sources(bench: ModuleType) -> None:
    source = bench.corpus()
    assert len(source) > 1_956  # the comments, then the SemEval sentences
    assert any("Subscribe" in text or "subscribe" in text for text in source[:1_956])
    assert " ." in source[-1]  # SemEval's sentences are tokenized, a space before the stop


@needs_data
def test_input_frames_distinct_and_repeated(bench: ModuleType) -> None:
    texts = bench.distinct_texts(2_500, seed=0, source=CORPUS)
    distinct = bench.input_frame(2_000, texts)
    assert distinct["text"].tolist() == texts[:2_000]
    assert distinct["comment_id"].is_unique
    assert str(distinct["text"].dtype) == "string"
    repeated = bench.input_frame(2_000, None)
    # 1,956 comments cycled: row 1,956 is row 0's text again, under another id.
    assert repeated["text"].iloc[1_956] == repeated["text"].iloc[0]
    assert repeated["comment_id"].iloc[1_956] != repeated["comment_id"].iloc[0]
    with pytest.raises(ValueError, match="texts for"):
        bench.input_frame(3_000, texts)


def test_the_ratio_is_baseline_over_flow(bench: ModuleType) -> None:
    assert bench.ratio(10.0, 5.0) == 2.0  # the flow twice as fast
    assert bench.ratio(5.0, 10.0) == 0.5


def _results(ratio: float, met: bool) -> dict[str, Any]:
    side = {"seconds": 10.0, "steady_s": 8.0, "load_average_1min_before": [1.2]}
    base = side | {"start_and_imports_s": 1.5, "load_model_s": 2.0, "peak_rss_bytes": 3 << 30}
    flow = side | {
        "workers": 2,
        "start_and_imports_s": 3.0,
        "resolve_s": 0.8,
        "cluster_start_s": 1.5,
        "model_load_s": [2.5, 2.75],
        "cluster_close_s": 4.0,
        "peak_rss_bytes": [800 << 20, 810 << 20],
        "chunk_seconds": [7.0, 7.5, 1.5, 1.75, 1.0],
    }
    return {
        "headline": {
            "ratio_vs_baseline": ratio,
            "steady_ratio_vs_baseline": 1.4,
            "inputs": "distinct",
            "rows": 1_000_000,
            "target": ">= 1.0x at 1,000,000 rows, start-up included",
            "met": met,
        },
        "inputs": {
            "distinct": {
                "label": "distinct texts",
                "sizes": {
                    "1000000": {
                        "ratio_vs_baseline": ratio,
                        "steady_ratio_vs_baseline": 1.4,
                        "baseline": base,
                        "flow": flow,
                    }
                },
            }
        },
        "method": {"chunk_rows": 50_000},
        "machine": {"cpus": 2},
    }


def test_the_section_leads_with_the_ratio_and_says_when_slower(page: ModuleType) -> None:
    slower = page.render_batch_infer_flow(_results(0.8, met=False))
    assert slower.startswith("**Batch inference through the flow's path: 0.80x the baseline**")
    assert "slower than a user's script" in slower and "NOT met." in slower
    assert "still the tool for inputs that do not fit in memory" in slower
    faster = page.render_batch_infer_flow(_results(1.25, met=True))
    assert "1.25x the baseline" in faster and "faster than" in faster and "met." in faster
    assert "still the tool" not in faster
    assert "| distinct | 1,000,000 | **1.25x** | 1.40x |" in faster
    assert "**1.25x**" in page.batch_infer_flow_row(_results(1.25, met=True))
    assert "Dask cluster start 1.5 s, model load 2.5–2.8 s per worker" in faster
    assert "Peak RSS: baseline 3,072 MiB, flow workers 800–810 MiB each." in faster
    assert "first chunk took 7.0–7.5 s, the later ones 1.5 s (median)" in faster


def _with_flow_run(run_ratio: float, path_ratio: float) -> dict[str, Any]:
    results = _results(path_ratio, met=run_ratio >= 1)
    results["headline"] |= {
        "ratio_vs_baseline": run_ratio,
        "measured": "flow_run",
        "flow_path_ratio_vs_baseline": path_ratio,
    }
    size = results["inputs"]["distinct"]["sizes"]["1000000"]
    size["flow_run"] = {"seconds": 12.5, "steady_s": None, "load_average_1min_before": [1.3]}
    size["flow_run_ratio_vs_baseline"] = run_ratio
    return results


def test_the_flow_run_leads_when_it_was_measured(page: ModuleType) -> None:
    """With the flow run itself measured, its ratio is the headline (bold where >= 1) and the
    scoring path's comes beside it; slower is said of the flow run, not of the path."""
    slower = page.render_batch_infer_flow(_with_flow_run(0.8, 1.25))
    assert slower.startswith("**Batch inference through the batch_infer flow: 0.80x the baseline**")
    assert "is slower than a user's script" in slower and "NOT met." in slower
    assert "Its scoring path alone (no Prefect, MLflow or S3): 1.25x, 1.40x in the steady" in slower
    assert "| distinct | 1,000,000 | 0.80x | 1.25x | 1.40x | 10.00 (8.00) | 12.50 |" in slower
    assert "At 1,000,000 rows the flow is slower than the script" in slower
    row = page.batch_infer_flow_row(_with_flow_run(0.8, 1.25))
    assert "flow run on the stack" in row and "**" not in row.split("|")[3]
    faster = page.render_batch_infer_flow(_with_flow_run(1.1, 1.25))
    assert "| **1.10x** | 1.25x |" in faster and "At 1,000,000 rows" not in faster
