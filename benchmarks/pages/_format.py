"""The formatting every page module shares: how docs/benchmarks.md writes a figure (``fmt``,
``times``, ``commas``, ...), the ``Results`` type of a results file, and what several results
files record alike (the machine's CPUs, the Adam a training benchmark ran with)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MIB = 2**20

Results = dict[str, Any]

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 8: "eight"}


def fmt(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, halves rounded up (of the float's exact value)."""
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))


def times(value: float, digits: int = 2) -> str:
    """A ratio: ``1.68x``."""
    return f"{fmt(value, digits)}x"


def commas(value: float, digits: int = 0) -> str:
    """``value`` with thousands separators: ``4,280``."""
    text = fmt(value, digits)
    whole, _, decimals = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    whole = f"{int(whole.lstrip('-')):,}"
    return sign + whole + (f".{decimals}" if decimals else "")


def sig(value: float, figures: int = 2) -> str:
    """``value`` to ``figures`` significant figures, trailing zeros kept: ``0.20``, ``0.026``."""
    if value == 0:
        return "0"
    digits = figures - 1 - math.floor(math.log10(abs(value)))
    return fmt(value, max(digits, 0))


def pct(share: float, digits: int = 0) -> str:
    """A share as a percentage, without the sign: ``0.817`` -> ``82``."""
    return fmt(share * 100, digits)


def mib(size_bytes: float) -> str:
    """Bytes in whole MiB, with separators: ``1,678``."""
    return commas(size_bytes / MIB)


def thousands(value: float) -> str:
    """A count in thousands: ``94k``, or ``0`` when under 500."""
    rounded = fmt(value / 1000, 0)
    return "0" if rounded == "0" else f"{rounded}k"


def size_label(rows: int | str) -> str:
    """A row count as the page writes it: ``10k``, ``1M``."""
    n = int(rows)
    if n >= 1_000_000:
        return f"{fmt(n / 1_000_000, 0)}M"
    if n >= 1000:
        return f"{fmt(n / 1000, 0)}k"
    return str(n)


def span(values: Iterable[float], render: Callable[[float], str] = fmt, unit: str = "") -> str:
    """``low–high`` of ``values`` as ``render`` writes them (one figure if they agree), then
    ``unit``: ``1.86–1.92x``."""
    items = list(values)
    low, high = render(min(items)), render(max(items))
    return (low if low == high else f"{low}–{high}") + unit


def sci(value: float) -> str:
    """Scientific notation with one decimal and a bare exponent: ``4.5e-7``."""
    mantissa, _, exponent = f"{value:.1e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def word(n: int) -> str:
    """A small count in words (``two``), else in digits."""
    return _WORDS.get(n, str(n))


def plural(n: int, noun: str) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def bold(text: str, on: bool = True) -> str:
    return f"**{text}**" if on else text


def target_value(target: str) -> float:
    """The figure of a target written as ``">= 1.6"`` in a results file."""
    match = re.search(r"[-+]?\d+(?:\.\d+)?", target)
    if match is None:
        raise ValueError(f"no figure in target {target!r}")
    return float(match.group(0))


def power_of_two(n: int) -> str:
    """``32768`` -> ``2^15`` (a power of two), else the count with separators."""
    exponent = int(math.log2(n)) if n > 0 else 0
    return f"2^{exponent}" if 2**exponent == n else commas(n)


def cpus(*results: Results) -> int:
    """The machine's CPU count as the results files record it (they agree)."""
    counts = {r["machine"]["cpus"] for r in results if "cpus" in r.get("machine", {})}
    counts |= {r["cpus"] for r in results if "cpus" in r}
    if len(counts) != 1:
        raise ValueError(f"results files disagree on the machine's CPUs: {sorted(counts)}")
    return int(counts.pop())


def adam(results: Results) -> str:
    """The Adam a spill.py or sharp.py run used, as the page names it."""
    return "`Adam(fused=True)`" if results["adam"] == "fused" else "torch's default Adam"
