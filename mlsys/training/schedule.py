"""Pipeline schedules as tables: which micro-batch each stage works on at each clock cycle,
the bubble they leave, and the same read from a measured timeline.

The per-stage order of forward (F) and backward (B) actions is what
``torch.distributed.pipelining``'s ``ScheduleGPipe`` and ``Schedule1F1B`` execute
(``stage_order``). Played out with every action taking one clock cycle, and an action
starting only once its input is ready (F of stage s after F of stage s-1, B of stage s
after B of stage s+1), the orders give the fill/drain table (``clock_table``). For K=2
stages and M=4 micro-batches:

    GPipe   cycle:  0   1   2   3   4   5   6   7   8   9
            stage 0 F0  F1  F2  F3  .   .   B0  B1  B2  B3
            stage 1 .   F0  F1  F2  F3  B0  B1  B2  B3  .

    1F1B    cycle:  0   1   2   3   4   5   6   7   8   9
            stage 0 F0  F1  .   B0  F2  B1  F3  B2  .   B3
            stage 1 .   F0  B0  F1  B1  F2  B2  F3  B3  .

Each stage is busy 2M of 2(M+K-1) cycles: the bubble is (K-1)/(M+K-1) for both; 1F1B
holds at most K micro-batches' activations on a stage instead of M.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "Action",
    "Interval",
    "ScheduleName",
    "clock_table",
    "format_table",
    "load_trace",
    "measured_bubble",
    "plot_timeline",
    "stage_order",
    "theoretical_bubble",
]

ScheduleName = Literal["gpipe", "1f1b"]
Action = tuple[str, int]
"""``("F", m)`` or ``("B", m)``: forward or backward of micro-batch ``m``."""
Interval = tuple[str, int, float, float]
"""``(kind, microbatch, start, end)`` of one action, in seconds of a shared clock."""


def theoretical_bubble(stages: int, microbatches: int) -> float:
    """The idle share of a fill/drain pipeline: (K-1)/(M+K-1)."""
    return (stages - 1) / (microbatches + stages - 1)


def stage_order(schedule: ScheduleName, stages: int, microbatches: int, stage: int) -> list[Action]:
    """The actions of ``stage`` in the order torch's schedule runs them.

    GPipe: all M forwards, then all M backwards. 1F1B: ``K - stage`` forwards to fill the
    pipe (``min`` with M), then alternate one backward and one forward, then drain the
    remaining backwards.
    """
    if not 0 <= stage < stages:
        raise ValueError(f"stage {stage} is outside 0..{stages - 1}")
    forwards = [("F", m) for m in range(microbatches)]
    backwards = [("B", m) for m in range(microbatches)]
    if schedule == "gpipe":
        return forwards + backwards
    if schedule != "1f1b":
        raise ValueError(f'schedule must be "gpipe" or "1f1b", got {schedule!r}')
    warmup = min(microbatches, stages - stage)
    order = forwards[:warmup]
    for m in range(microbatches - warmup):
        order += [backwards[m], forwards[warmup + m]]
    return order + backwards[microbatches - warmup :]


def clock_table(schedule: ScheduleName, stages: int, microbatches: int) -> list[list[str]]:
    """Per stage, the action at each clock cycle ("F0", "B3", or "" when idle), with every
    action taking one cycle and starting as soon as its input and its stage are free."""
    orders = [stage_order(schedule, stages, microbatches, s) for s in range(stages)]
    done: dict[tuple[int, str, int], int] = {}  # (stage, kind, m) -> cycle it ends
    free = [0] * stages
    position = [0] * stages
    while any(position[s] < len(orders[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if position[s] == len(orders[s]):
                continue
            kind, m = orders[s][position[s]]
            if kind == "F":
                needs = (s - 1, "F", m) if s > 0 else None
            else:
                needs = (s + 1, "B", m) if s < stages - 1 else (s, "F", m)
            if needs is not None and needs not in done:
                continue
            start = max(free[s], done[needs] if needs is not None else 0)
            done[(s, kind, m)] = free[s] = start + 1
            position[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"the {schedule} order deadlocks for {stages} stages")
    length = max(free)
    table = [[""] * length for _ in range(stages)]
    for (s, kind, m), end in done.items():
        table[s][end - 1] = f"{kind}{m}"
    return table


def format_table(table: Sequence[Sequence[str]]) -> str:
    """The table as text, one row per stage, idle cycles shown as '.'."""
    cycles = len(table[0]) if table else 0
    lines = ["cycle:  " + " ".join(f"{c:<3}" for c in range(cycles)).rstrip()]
    for s, row in enumerate(table):
        lines.append(f"stage {s} " + " ".join(f"{cell or '.':<3}" for cell in row).rstrip())
    return "\n".join(lines)


def measured_bubble(step: Sequence[Sequence[Interval]]) -> float:
    """The idle share of one mini-batch from each stage's measured actions:
    1 - busy / (stages * span), where the span runs from the first action's start on any
    stage to the last action's end. Waiting for a neighbour, communication and Python
    overhead between actions all count as idle, as on the real pipeline."""
    intervals = [i for stage in step for i in stage]
    if not intervals:
        raise ValueError("no actions recorded")
    span = max(i[3] for i in intervals) - min(i[2] for i in intervals)
    busy = sum(i[3] - i[2] for i in intervals)
    return 1.0 - busy / (len(step) * span)


def load_trace(folder: Path) -> list[list[list[Interval]]]:
    """The timeline written by ``GPipe(trace_dir=folder)``: ``[step][stage] -> intervals``."""
    files = sorted(folder.glob("stage-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise FileNotFoundError(f"no stage-*.json trace files in {folder}")
    per_stage = [json.loads(f.read_text())["steps"] for f in files]
    steps = {len(s) for s in per_stage}
    if len(steps) != 1:
        raise ValueError(f"stages recorded different numbers of steps: {sorted(steps)}")
    return [
        [[(k, int(m), float(a), float(b)) for k, m, a, b in stage[i]] for stage in per_stage]
        for i in range(steps.pop())
    ]


def plot_timeline(panels: Sequence[tuple[str, Sequence[Sequence[Interval]]]], path: Path) -> Path:
    """Draw mini-batches' per-stage busy intervals as Gantt charts, one panel per
    ``(title, step)``, on a shared time axis (forward light, backward dark, each labelled
    with its micro-batch); the white gaps are the bubble. Writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = max(len(step) for _, step in panels)
    height = 0.3 + (0.5 * stages + 0.6) * len(panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, height), sharex=True, squeeze=False)
    for ax, (title, step) in zip(axes[:, 0], panels, strict=True):
        origin = min(i[2] for stage in step for i in stage)
        for s, stage in enumerate(step):
            for kind, m, start, end in stage:
                left, width = (start - origin) * 1e3, (end - start) * 1e3
                color = "#9ecae1" if kind == "F" else "#3182bd"
                ax.barh(s, width, left=left, height=0.8, color=color, edgecolor="black")
                ax.text(left + width / 2, s, f"{kind}{m}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(step)), [f"stage {s}" for s in range(len(step))])
        ax.set_ylim(len(step) - 0.5, -0.5)
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("ms since the mini-batch's first action")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
