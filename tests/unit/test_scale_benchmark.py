"""benchmarks/scale.py's arithmetic: the serial share comes from the task runs' intervals as
its docstring says, and the speed-up it projects is Amdahl's."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def scale(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("scale.py")


def test_union_counts_overlaps_once(scale: ModuleType) -> None:
    assert scale.union_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert scale.union_seconds([]) == 0.0


def test_amdahl(scale: ModuleType) -> None:
    assert scale.amdahl(0.0, 8) == pytest.approx(8.0)
    assert scale.amdahl(1.0, 8) == pytest.approx(1.0)
    assert scale.amdahl(0.5, 2) == pytest.approx(4 / 3)


def test_serial_breakdown_of_two_workers(scale: ModuleType) -> None:
    """10 s of wall: a subflow from 2 to 9 s, two partition tasks of 3 s side by side (3-6),
    a serial task on the cluster (6-8); a label model of 1 s in the flow (9-10)."""
    tasks = [
        {"name": "apply-lfs-partition", "start": 3.0, "end": 6.0, "flow_run": "sub"},
        {"name": "apply-lfs-partition", "start": 3.0, "end": 6.0, "flow_run": "sub"},
        {"name": "write-raw-parts", "start": 6.0, "end": 8.0, "flow_run": "sub"},
        {"name": "tune-label-model", "start": 9.0, "end": 10.0, "flow_run": "main"},
    ]
    subflows = [{"id": "sub", "start": 2.0, "end": 9.0}]
    out = scale.serial_breakdown(10.0, tasks, subflows, ("apply-lfs-partition",))
    assert out["partition_work_s"] == 6.0 and out["partition_span_s"] == 3.0
    assert out["serial_s"] == 7.0
    assert out["serial_parts_s"] == {
        "scheduler": 2.0,  # the subflow's 7 s less the 5 s a task ran
        "label_model": 1.0,
        "serial_tasks_on_cluster": 2.0,
        "driver": 2.0,
    }
    assert out["serial_share"] == pytest.approx(7 / 13, abs=1e-4)
    assert out["projected_speedup"]["2"] == round(1 / (7 / 13 + 6 / 13 / 2), 2)


class _Repeating:
    """A generator whose draws repeat, within one draw (each text twice in a row) and
    across draws, out of 7 distinct texts."""

    def __init__(self) -> None:
        self.draws = 0

    def texts(self, n: int, seed: int) -> list[str]:
        self.draws += 1
        return [f"text {(seed + i // 2) % 7}" for i in range(n)]


def test_distinct_batches_repeat_no_text_within_or_across_counts(scale: ModuleType) -> None:
    generator = _Repeating()
    batches = list(scale.distinct_batches(generator, [3, 2, 2], seed=0))
    texts = [t for batch in batches for t in batch]
    assert [len(b) for b in batches] == [3, 2, 2]
    assert len(set(texts)) == len(texts) == 7  # every one of the 7 texts, once
    assert generator.draws > 3  # repeats were drawn again
