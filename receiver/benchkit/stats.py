"""Repetitions summarised as median, min and max; ratios measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "n", "values"}`` of repeated measurements (finite values only)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no measurements to summarise")
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def rates(count: float, seconds: Sequence[float]) -> list[float]:
    """Items per second of each repetition."""
    return [count / s if s > 0 else float("inf") for s in seconds]


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Ratio of two rates measured in the same repetitions (rep i against rep i).

    The median is the median of the per-repetition ratios; min and max bound them, so
    the spread says how much the machine's noise moved the comparison.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired ratio needs the same non-zero number of repetitions on both sides")
    return summary([a / b if b else float("inf") for a, b in zip(numerator, denominator)])


def median(s: dict[str, Any] | None) -> float | None:
    return None if s is None else float(s["median"])


def fmt_rate(v: float | None, unit: str = "/s") -> str:
    """Human figure: 1.23 M/s, 45.6 k/s, 789 /s."""
    if v is None:
        return "n/a"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k{unit}"
    return f"{v:.0f} {unit}".replace(" /", "/")


def fmt_summary(s: dict[str, Any] | None, kind: str = "rate", unit: str = "/s") -> str:
    """``median (min-max)`` for a summary; kind "rate", "ratio" (x) or "bytes" (B)."""
    if s is None:
        return "n/a"
    if s.get("n") == 1:
        v = float(s["median"])
        one = f"{v:.2f}x" if kind == "ratio" else f"{v:.0f} B" if kind == "bytes" else fmt_rate(v, unit)
        return f"{one} (1 run)"
    if kind == "ratio":
        return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"
    if kind == "bytes":
        return f"{s['median']:.0f} B ({s['min']:.0f}-{s['max']:.0f})"
    return f"{fmt_rate(s['median'], unit)} ({fmt_rate(s['min'], unit)} - {fmt_rate(s['max'], unit)})"
