"""Goals, the headline figures, the README table and the regression check.

``headline(doc)`` flattens a run's JSON into named figures; ``readme_block(doc)`` renders
them as the Markdown that ``bench/README.md`` shows between its markers; ``compare`` is the
regression guard of ``make bench-check``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .stats import fmt_rate, fmt_summary

BEGIN = "<!-- bench:begin (written by the harness; edit outside these markers) -->"
END = "<!-- bench:end -->"

GOAL_READ_VS_TSHARK = 50.0
GOAL_READ_VS_DPKT = 20.0
GOAL_CORE_PPS = 2e6
GOAL_LIVE_RATIO = 0.8
GOAL_BYTES_PER_FLOW = 300.0
MEMORY_GOAL_FLOWS = 1_000_000


def checks(doc: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """The same-run ratios (and bytes per flow) of a run: name -> (value, higher is better)."""
    out: dict[str, tuple[float, bool]] = {}
    s = doc.get("sections", {})
    off = _ok(s, "offline")
    if off:
        for key in ("ratio_tshark", "ratio_dpkt"):
            if key in off:
                out[f"offline.{key}"] = (float(off[key]["median"]), True)
    core = _ok(s, "core")
    if core and off and "dpkt_pps" in off:
        out["core.ratio_dpkt"] = (core["pps"]["median"] / off["dpkt_pps"]["median"], True)
    live = _ok(s, "live")
    if live:
        for size, row in live.get("summary", {}).items():
            for name in ("serve", "serve1", "serve2"):
                if f"{name}_ratio" in row:
                    out[f"live.{size}.{name}_ratio"] = (float(row[f"{name}_ratio"]), True)
    mem = _ok(s, "memory")
    if mem:
        for row in mem["rows"]:
            tag = f"memory.{row['flows']}.e{row['excerpt_bytes']}.app{int(row.get('app_metadata', True))}"
            out[f"{tag}.table_bytes_per_flow"] = (float(row["table_bytes_per_flow"]), False)
    return out


def compare(current: dict[str, tuple[float, bool]], stored: dict[str, float], margin: float) -> list[dict[str, Any]]:
    """Each figure present in both: did it get worse by more than ``margin`` (a fraction)?"""
    rows = []
    for name, (value, higher) in sorted(current.items()):
        if name not in stored or not stored[name]:
            continue
        ref = float(stored[name])
        change = value / ref - 1.0
        worse = change < -margin if higher else change > margin
        rows.append({"name": name, "stored": ref, "current": value, "change": change, "higher_is_better": higher,
                     "regressed": worse})
    return rows


def _ok(sections: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = sections.get(name)
    if not sec or sec.get("status") != "ok":
        return None
    return dict(sec["data"])


def _goal(met: bool | None, text: str) -> str:
    if met is None:
        return f"{text}: not measured"
    return f"{text}: met" if met else f"{text}: **NOT MET**"


def _status(sections: dict[str, Any], name: str) -> str:
    sec = sections.get(name)
    if not sec:
        return "not run"
    if sec.get("status") == "ok":
        return "ok"
    return f"{sec.get('status')}: {str(sec.get('reason', '')).splitlines()[0] if sec.get('reason') else ''}"


def needed_records_per_second(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(records/s and frames/s) the receiver produces at its best loss-free rate (generated mix)."""
    s = doc.get("sections", {})
    live, off = _ok(s, "live"), _ok(s, "offline")
    best = None
    if live:
        rates = [float(v) for row in live.get("summary", {}).values() for k, v in row.items()
                 if k in ("serve", "serve1", "serve2") and isinstance(v, int | float)]
        best = max(rates) if rates else None
    if best is None or not off:
        return None, best
    per_packet = off["capture"]["flows"] / off["capture"]["packets"]
    return best * per_packet, best


def headline_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figure, goal) rows of the README table."""
    s = doc.get("sections", {})
    rows: list[tuple[str, str, str]] = []
    off = _ok(s, "offline")
    if off:
        cap = off["capture"]
        rows.append((f"`vxmirror read`, packets/s ({cap['packets']:,} packets, {cap['flows']:,} flows)",
                     fmt_summary(off["read_pps"]), "-"))
        if "read_in_process_pps" in off:
            rows.append(("... the same as a library call in one process (`read_records`, no start-up)",
                         fmt_summary(off["read_in_process_pps"]), "-"))
        if "ratio_tshark" in off:
            r = off["ratio_tshark"]
            rows.append((f"`vxmirror read` / `tshark -q -z conv,tcp` (tshark {fmt_rate(off['tshark_pps']['median'])})",
                         fmt_summary(r, "ratio"),
                         _goal(r["median"] >= GOAL_READ_VS_TSHARK, f">= {GOAL_READ_VS_TSHARK:.0f}x")))
        else:
            rows.append(("`vxmirror read` / tshark", "n/a", _goal(None, ">= 50x") + f" ({off.get('tshark_missing')})"))
        r = off["ratio_dpkt"]
        rows.append((f"`vxmirror read` / dpkt loop (dpkt {fmt_rate(off['dpkt_pps']['median'])}, "
                     f"first {off['dpkt_packets']:,} packets)",
                     fmt_summary(r, "ratio"), _goal(r["median"] >= GOAL_READ_VS_DPKT, f">= {GOAL_READ_VS_DPKT:.0f}x")))
    else:
        rows.append(("`vxmirror read` and its ratios", _status(s, "offline"), _goal(None, "50x tshark, 20x dpkt")))
    core = _ok(s, "core")
    if core:
        rows.append((f"decode+aggregate core, one core, packets/s (`Engine.process`, batches of {core['batch']:,})",
                     fmt_summary(core["pps"]), _goal(core["pps"]["median"] >= GOAL_CORE_PPS, ">= 2 M/s")))
        rows.append(("... the same without excerpts and app metadata", fmt_summary(core["pps_no_excerpts_no_app"]),
                     "-"))
    else:
        rows.append(("decode+aggregate core", _status(s, "core"), _goal(None, ">= 2 M/s")))
    live = _ok(s, "live")
    if live:
        for size, row in sorted(live.get("summary", {}).items(), key=lambda kv: int(kv[0])):
            c = row.get("c")
            capped = " (C limited by the sender)" if row.get("c_limited_by_sender") else ""
            lossy = {r["receiver"]: r.get("lowest_lossy_offered") for r in live.get("results", [])
                     if str(r.get("size")) == str(size)}

            def bracket(name: str, lossy: dict[str, Any] = lossy) -> str:
                v = lossy.get(name)
                return f" (lost at {fmt_rate(v)})" if v else ""

            for name, label in (("serve", "default workers"), ("serve1", "1 worker"), ("serve2", "2 workers")):
                if name not in row:
                    continue
                ratio = row.get(f"{name}_ratio")
                gro = ""
                if row.get("c_gro"):
                    gro = (f"; C with UDP_GRO {fmt_rate(row['c_gro'])}{bracket('c_gro')}, ratio "
                           f"{row.get(f'{name}_ratio_c_gro', 0):.2f}x")
                rows.append((
                    f"`vxmirror serve` loss-free rate, {size}-byte datagrams, {label}",
                    f"{fmt_rate(row[name])}{bracket(name)}; C reference {fmt_rate(c)}{bracket('c')}{capped}; ratio "
                    + (f"{ratio:.2f}x" if ratio is not None else "n/a") + gro,
                    _goal(None if ratio is None else ratio >= GOAL_LIVE_RATIO, f">= {GOAL_LIVE_RATIO}x C"),
                ))
    else:
        rows.append(("`vxmirror serve` loss-free rate vs the C receiver", _status(s, "live"),
                     _goal(None, ">= 0.8x C")))
    need_rec, need_frames = needed_records_per_second(doc)
    need_txt = (f"not the bottleneck: >= {fmt_rate(need_rec)} records at the best loss-free rate"
                if need_rec is not None else "not the bottleneck of the loss-free rate")

    def fwd_goal(v: float | None) -> str:
        return _goal(None if v is None or need_rec is None else v >= need_rec, need_txt)

    js = _ok(s, "jsonl")
    rows.append(("forwarder `jsonl` (through the runner, to page cache), records/s",
                 fmt_summary(js["records_per_second"]) if js else _status(s, "jsonl"),
                 fwd_goal(js["records_per_second"]["median"] if js else None)))
    fw = _ok(s, "forwarders")
    for key, label in (("hec_runner_gzip", "`splunk_hec` (gzip, through the runner, in-repo HEC server)"),
                       ("kafka_runner", "`kafka` (zstd, through the runner, Tansu on loopback)")):
        fig = fw["figures"].get(key) if fw else None
        rows.append((f"forwarder {label}, records/s", fmt_summary(fig) if fig else _status(s, "forwarders"),
                     fwd_goal(fig["median"] if fig else None)))
    pw = _ok(s, "pcap_writer")
    for key in ("PcapSink pcap (encode + write)", "PcapSink pcapng (encode + write)"):
        fig = pw["frames_per_second"].get(key) if pw else None
        mb = pw["mb_per_second"].get(key) if pw else None
        goal = _goal(None if fig is None or need_frames is None else fig["median"] >= need_frames,
                     f"not the bottleneck: >= {fmt_rate(need_frames)} frames" if need_frames else "not the bottleneck")
        rows.append((f"forwarder `pcap`: {key.removeprefix('PcapSink ')}, frames/s",
                     f"{fmt_summary(fig)}, {mb['median']:.0f} MB/s" if fig and mb else _status(s, "pcap_writer"),
                     goal))
    mem = _ok(s, "memory")
    if mem:
        for row in mem["rows"]:
            if row["excerpt_bytes"] == 0 and row.get("app_metadata", True):
                continue  # the middle configuration is in the memory table below
            cfg = ("default: excerpts 128 B, app metadata on" if row["excerpt_bytes"]
                   else "excerpts and app metadata off")
            judged = row["flows"] == MEMORY_GOAL_FLOWS
            goal = (_goal(row["rss_bytes_per_flow"] <= GOAL_BYTES_PER_FLOW, "<= 300 B (process growth)")
                    if judged else "(goal judged at 1 M flows)")
            rows.append((f"bytes per active flow at {row['flows']:,} flows ({cfg})",
                         f"process growth {row['rss_bytes_per_flow']:.0f} B; "
                         f"flow table {row['table_bytes_per_flow']:.0f} B "
                         f"({row['table_bytes_per_slot']:.0f} B per slot); "
                         f"tracemalloc {row['traced_bytes_per_flow']:.0f} B",
                         goal))
        if not any(r["flows"] == MEMORY_GOAL_FLOWS for r in mem["rows"]):
            rows.append(("bytes per active flow at 1,000,000 flows", "not in this profile (the full profile runs it)",
                         _goal(None, "<= 300 B")))
    else:
        rows.append(("bytes per active flow", _status(s, "memory"), _goal(None, "<= 300 B")))
    return rows


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def _carried_note(doc: dict[str, Any]) -> list[str]:
    carried = doc.get("carried_over") or []
    if not carried:
        return []
    where = {n: doc["sections"][n].get("measured_in") for n in carried}
    return ["Sections not re-run this time, kept from earlier runs of this profile: "
            + ", ".join(f"{n} (`{f}`)" for n, f in where.items()) + ".", ""]


def _source_note(src: dict[str, Any] | None) -> str:
    if not src:
        return ""
    changed = src.get("uncommitted_changes_in") or []
    note = f" Code: commit {src.get('commit', '')[:10]}"
    if changed:
        note += f" plus uncommitted changes in {', '.join(f'`{c}`' for c in changed[:6])}"
        note += " and more" if len(changed) > 6 else ""
    return note + "."


def _forwarder_note(doc: dict[str, Any]) -> list[str]:
    need_rec, best = needed_records_per_second(doc)
    off = _ok(doc.get("sections", {}), "offline")
    lines = []
    if need_rec is not None and best is not None and off:
        per = off["capture"]["flows"] / off["capture"]["packets"]
        lines.append(
            f"Forwarder goal (issue 4: no forwarder is the bottleneck of the receiver's loss-free rate): a record "
            f"forwarder must carry the records the receiver emits at its best loss-free rate, {fmt_rate(best)} "
            f"datagrams x {per:.3f} records per packet (the flows per packet of the generated mix) = "
            f"{fmt_rate(need_rec)}; the pcap writer must take every frame, {fmt_rate(best)}. Traffic with many "
            "more short flows per packet needs proportionally more records/s."
        )
    fw = _ok(doc.get("sections", {}), "forwarders")
    if fw:
        lines.append(
            "The Splunk HEC figure is bounded by the in-repo HEC server (a Python server that parses every event) "
            "sharing this machine's two cores with the client; Kafka runs against Tansu on loopback."
        )
    return [*lines, ""] if lines else []


def readme_block(doc: dict[str, Any], results: str = "results") -> str:
    """The Markdown block; ``results`` is the results directory relative to the README."""
    m = doc.get("machine", {})
    prof = doc.get("profile", {})
    s = doc.get("sections", {})
    lines = [
        BEGIN,
        "",
        f"## Latest figures ({prof.get('name')} profile, {doc.get('started_utc')})",
        "",
        f"Produced by `{doc.get('command')}` in {doc.get('wall_seconds', 0):.0f} s "
        f"(results: `{results}/{doc.get('file')}`, also `{results}/latest.json`).",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {(m.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}, numpy {m.get('libraries', {}).get('numpy')}, "
        f"dpkt {m.get('libraries', {}).get('dpkt')}, {(m.get('tshark') or 'no tshark').rstrip('.')}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in (m.get('loadavg_at_start') or []))}."
        + _source_note(doc.get("source")),
        "",
        *_carried_note(doc),
        f"Figures are the median of {prof.get('repeats')} repetitions with (min - max); every ratio is "
        "taken per repetition between measurements made in the same run, interleaved. This machine is "
        "shared with other jobs (tests of other work run at the same time), so absolute rates are noisy; "
        "trust the ratios more than the rates, and re-run with `make bench` to refresh.",
        "",
        *_table(("what", "figure: median (min - max)", "goal"), headline_rows(doc)),
        "",
        *_forwarder_note(doc),
    ]
    mem = _ok(s, "memory")
    if mem:
        lines += [
            "### Memory per active flow",
            "",
            f"Distinct TCP flows, one packet each way with {mem['payload_bytes_each_way']} bytes of opaque payload, "
            "all still open; each figure from a fresh process. *Process growth*: resident set after minus before, "
            "per open flow (everything). *Flow table*: `Engine.table` columns, hash index and free list, per open "
            "flow and per slot (the table grows by doubling). *tracemalloc*: Python objects and numpy buffers "
            "traced, per open flow (separate run).",
            "",
            *_table(("flows", "excerpts", "app metadata", "process growth B/flow", "flow table B/flow",
                     "B/slot", "tracemalloc B/flow", "parser states"),
                    [(f"{r['flows']:,}", f"{r['excerpt_bytes']} B" if r["excerpt_bytes"] else "off",
                      "on" if r.get("app_metadata", True) else "off", f"{r['rss_bytes_per_flow']:.0f}",
                      f"{r['table_bytes_per_flow']:.0f}", f"{r['table_bytes_per_slot']:.0f}",
                      f"{r['traced_bytes_per_flow']:.0f}", f"{r['app_states']:,}") for r in mem["rows"]]),
            "",
        ]
    micro = _ok(s, "micro")
    if micro:
        lines += [
            "### Per-stage cost (pytest-benchmark, `bench/test_micro.py`)",
            "",
            *_table(("stage", "items per call", "ns per item: median (min - max)", "items/s (median)"),
                    [(name, f"{b['items']:,} {b['unit']}s", f"{b['ns_per_item']['median']:.0f} "
                      f"({b['ns_per_item']['min']:.0f} - {b['ns_per_item']['max']:.0f})",
                      fmt_rate(b["items_per_second"]["median"])) for name, b in micro["benchmarks"].items()]),
            "",
        ]
    off = _ok(s, "offline")
    if off:
        lines += [
            "### Offline comparison",
            "",
            f"One generated capture ({off['capture']['packets']:,} VXLAN packets, {off['capture']['flows']:,} flows, "
            f"seed {off['capture']['seed']}, {off['capture']['bytes'] / 1e6:.0f} MB, page cache warm). "
            "`vxmirror read F -o OUT` and `tshark -n -r F -q -z conv,tcp` are timed as commands (start-up "
            f"included); the dpkt loop (`receiver/benchkit/dpktloop.py`) runs on the first {off['dpkt_packets']:,} "
            "packets and its rate is packets/s over that subset. TCP flows found: vxmirror "
            f"{off.get('tcp_flows_vxmirror')}, tshark conversations {off.get('tcp_conversations_tshark', 'n/a')}.",
            "",
        ]
    fw = _ok(s, "forwarders")
    if fw:
        lines += [
            "### Forwarder details (`bench/bench_forwarders.py`)",
            "",
            *_table(("figure", "records/s: median (min - max)"),
                    [(k, fmt_summary(v)) for k, v in fw["figures"].items()]),
            "",
        ]
    plots = [p for p in doc.get("plots", [])]
    if plots:
        lines += ["### Plots", ""] + [f"![{p}]({results}/{p})" for p in plots] + [""]
    problems = [(name, sec) for name, sec in s.items() if sec.get("status") != "ok"]
    if problems:
        lines += ["### Not measured in this run", ""]
        lines += [f"- {name}: {sec.get('status')}: {sec.get('reason', '')}".rstrip() for name, sec in problems]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def merge_readme(existing: str | None, block: str, title: str = "# Benchmarks") -> str:
    """Put ``block`` between the markers of ``existing``, keeping everything else as it was."""
    if not existing:
        return f"{title}\n\n{block}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(existing):
        return pattern.sub(lambda _m: block, existing, count=1)
    lines = existing.splitlines()
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("# ")), 0)
    return "\n".join([*lines[:at], "", block, "", *lines[at:]]).rstrip() + "\n"
