"""PNG plots of a run (matplotlib, Agg): rates of the offline comparison, per-stage cost and
memory per flow. (The live and churn sweeps' received-against-offered rate curves are drawn
by bench/live_sweep.py itself.) Returns the file names written; nothing when matplotlib is
not installed (a deployed instance without the dev extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .offline import cases_of


def draw(doc: dict[str, Any], out: Path) -> list[str]:
    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    s = doc.get("sections", {})

    def ok(name: str) -> dict[str, Any] | None:
        sec = s.get(name)
        return sec["data"] if sec and sec.get("status") == "ok" else None

    def bars(ax: Any, labels: list[str], figs: list[dict[str, Any]], unit: str) -> None:
        med = [f["median"] for f in figs]
        lo = [f["median"] - f["min"] for f in figs]
        hi = [f["max"] - f["median"] for f in figs]
        ax.barh(labels, med, xerr=[lo, hi], color="#4c72b0", capsize=3)
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)

    off, core = ok("offline"), ok("core")
    if off or core:
        labels, figs = [], []
        for name, case in (cases_of(off) if off else {}).items():
            for key, what in (("read_pps", "vxmirror read (end to end)"), ("read_in_process_pps", "read_records"),
                              ("tshark_pps", "tshark -q -z conv,tcp"), ("dpkt_pps", "dpkt per-packet loop")):
                if key in case:
                    labels.append(f"{case.get('title', name)}: {what}")
                    figs.append(case[key])
        if core:
            labels += ["Engine.process core", "core, no excerpts/app"]
            figs += [core["pps"], core["pps_no_excerpts_no_app"]]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.5))
        bars(ax, labels, figs, "packets/s (median, min-max), log scale")
        ax.set_xscale("log")
        ax.axvline(2e6, ls=":", color="k", lw=0.8)
        ax.set_title("Decode and aggregate: packets/s (dotted: 2 M/s core goal)")
        fig.tight_layout()
        fig.savefig(out / "rates.png", dpi=100)
        plt.close(fig)
        written.append("rates.png")

    micro = ok("micro")
    if micro and micro["benchmarks"]:
        names = list(micro["benchmarks"])
        figs = [micro["benchmarks"][n]["ns_per_item"] for n in names]
        units = [micro["benchmarks"][n]["unit"] for n in names]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
        bars(ax, [f"{n} (per {u})" for n, u in zip(names, units)], figs, "ns per item (median, min-max)")
        ax.set_title("Per-stage cost (pytest-benchmark)")
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=100)
        plt.close(fig)
        written.append("stages.png")

    mem = ok("memory")
    if mem:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        configs = sorted({(r["excerpt_bytes"], r.get("app_metadata", True)) for r in mem["rows"]}, reverse=True)
        for exc, app in configs:
            rows = sorted((r for r in mem["rows"] if (r["excerpt_bytes"], r.get("app_metadata", True)) == (exc, app)),
                          key=lambda r: r["flows"])
            label = f"excerpts {exc or 'off'}, app {'on' if app else 'off'}"
            line = ax.plot([r["flows"] for r in rows], [r["rss_bytes_per_flow"] for r in rows], "o-",
                           label=f"process growth, {label}")
            ax.plot([r["flows"] for r in rows], [r["table_bytes_per_flow"] for r in rows], "s--",
                    color=line[0].get_color(), label=f"flow table, {label}", alpha=0.6)
        ax.axhline(300, ls=":", color="k", lw=0.8, label="goal 300 B")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent flows")
        ax.set_ylabel("bytes per active flow")
        ax.set_title("Memory per active flow")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=100)
        plt.close(fig)
        written.append("memory.png")

    for name in ("live", "churn"):  # drawn by bench/live_sweep.py
        sweep = ok(name)
        if sweep and (out / sweep["plot"]).exists():
            written.append(sweep["plot"])
    return written
