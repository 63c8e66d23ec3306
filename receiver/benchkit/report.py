"""Goals, the headline figures, the README table and the regression check.

``headline(doc)`` flattens a run's JSON into named figures; ``readme_block(doc)`` renders
them as the Markdown that ``bench/README.md`` shows between its markers; ``compare`` is the
regression guard of ``make bench-check``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .offline import cases_of, default_case
from .stats import fmt_rate, fmt_summary

BEGIN = "<!-- bench:begin (written by the harness; edit outside these markers) -->"
END = "<!-- bench:end -->"

# read / tshark per offline case: 40x on the realistic mix (issue 14), 50x on long flows (issue 1)
GOAL_READ_VS_TSHARK = {"mix": 40.0, "long": 50.0}
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
    cases = cases_of(off) if off else {}
    for name, case in cases.items():
        for key in ("ratio_tshark", "ratio_dpkt"):
            if key in case:
                out[f"offline.{name}.{key}"] = (float(case[key]["median"]), True)
    core = _ok(s, "core")
    dpkt_ref = cases.get("long") or (default_case(off) if off else None)  # the core runs on long flows
    if core and dpkt_ref and "dpkt_pps" in dpkt_ref:
        out["core.ratio_dpkt"] = (core["pps"]["median"] / dpkt_ref["dpkt_pps"]["median"], True)
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


def records_per_packet(off: dict[str, Any]) -> float:
    """Flow records per packet of the offline section's default capture (the realistic mix)."""
    case = default_case(off)
    return float(case.get("records") or case["capture"]["flows"]) / case["capture"]["packets"]


def needed_records_per_second(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(records/s and frames/s) the receiver produces at its best loss-free rate (realistic mix)."""
    s = doc.get("sections", {})
    live, off = _ok(s, "live"), _ok(s, "offline")
    best = None
    if live:
        rates = [float(v) for row in live.get("summary", {}).values() for k, v in row.items()
                 if k in ("serve", "serve1", "serve2") and isinstance(v, int | float)]
        best = max(rates) if rates else None
    if best is None or not off:
        return None, best
    return best * records_per_packet(off), best


def headline_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figure, goal) rows of the README table."""
    s = doc.get("sections", {})
    rows: list[tuple[str, str, str]] = []
    off = _ok(s, "offline")
    if off:
        rows += _offline_rows(off)
    else:
        rows.append(("`vxmirror read` and its ratios", _status(s, "offline"), _goal(None, "40x tshark, 20x dpkt")))
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
    churn = _ok(s, "churn")
    if churn:
        rows += _churn_rows(churn)
    else:
        rows.append(("`vxmirror serve` loss-free new flows/s (churn)", _status(s, "churn"),
                     _goal(None, ">= 300 k new flows/s, >= 1 M datagrams/s of 10-datagram flows")))
    cap = _ok(s, "capture")
    if cap:
        rows += _capture_rows(cap)
    else:
        rows.append(("`vxmirror serve` with pcap on the realistic mix", _status(s, "capture"),
                     _goal(None, "default policy as fast as JSON lines alone; every frame >= 0.9x the disk")))
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


def _case_label(name: str, case: dict[str, Any]) -> str:
    cap = case["capture"]
    return (f"{case.get('title', name)} ({cap['packets']:,} packets, {cap['flows']:,} flows, "
            f"{cap['packets'] / max(cap['flows'], 1):.1f} a flow)")


def _offline_rows(off: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The default case's rates, and each case's ratio to tshark (and dpkt where it has a goal)."""
    rows: list[tuple[str, str, str]] = []
    cases = cases_of(off)
    name = str(off.get("default_case", next(iter(cases))))
    main = cases.get(name) or next(iter(cases.values()))
    rec = main.get("read_records_per_second")
    rows.append((f"`vxmirror read`, packets/s, {_case_label(name, main)}",
                 fmt_summary(main["read_pps"]) + (f"; records/s {fmt_summary(rec)}" if rec else ""), "-"))
    if "read_in_process_pps" in main:
        rec = main.get("read_in_process_records_per_second")
        rows.append(("... the same as a library call in one process (`read_records`, no start-up)",
                     fmt_summary(main["read_in_process_pps"]) + (f"; records/s {fmt_summary(rec)}" if rec else ""),
                     "-"))
    for cname, case in cases.items():
        goal = GOAL_READ_VS_TSHARK.get(cname)
        goal_text = f">= {goal:.0f}x" if goal else "-"
        if "ratio_tshark" in case:
            r = case["ratio_tshark"]
            rows.append((f"`vxmirror read` / `tshark -q -z conv,tcp`, {case.get('title', cname)} "
                         f"(tshark {fmt_rate(case['tshark_pps']['median'])})", fmt_summary(r, "ratio"),
                         _goal(r["median"] >= goal, goal_text) if goal else "-"))
        else:
            rows.append((f"`vxmirror read` / tshark, {case.get('title', cname)}", "n/a",
                         (_goal(None, goal_text) if goal else "-") + f" ({case.get('tshark_missing')})"))
    dpkt_goal = f">= {GOAL_READ_VS_DPKT:.0f}x"
    for cname, case in cases.items():
        if cname not in GOAL_READ_VS_TSHARK:
            continue  # the flood's dpkt ratio is in the offline table below
        r = case["ratio_dpkt"]
        rows.append((f"`vxmirror read` / dpkt loop, {case.get('title', cname)} (dpkt "
                     f"{fmt_rate(case['dpkt_pps']['median'])}, first {off.get('dpkt_packets', 0):,} packets)",
                     fmt_summary(r, "ratio"), _goal(r["median"] >= GOAL_READ_VS_DPKT, dpkt_goal)))
    return rows


def _offline_lines(off: dict[str, Any]) -> list[str]:
    cases = cases_of(off)
    seeds = sorted({c["capture"].get("seed") for c in cases.values()})
    rows = []
    for name, c in cases.items():
        cap = c["capture"]

        def med(key: str, case: dict[str, Any] = c) -> str:
            return fmt_rate(case[key]["median"]) if key in case else "n/a"

        def ratio(key: str, case: dict[str, Any] = c) -> str:
            return f"{case[key]['median']:.1f}x" if key in case else "n/a"

        rows.append((
            str(c.get("title", name)), f"{cap['packets']:,}", f"{cap['flows']:,}",
            f"{cap['packets'] / max(cap['flows'], 1):.1f}", f"{cap['bytes'] / 1e6:.0f}", med("read_pps"),
            med("read_records_per_second"), med("read_in_process_pps"), med("tshark_pps"), ratio("ratio_tshark"),
            med("dpkt_pps"), ratio("ratio_dpkt"),
            f"{c.get('tcp_flows_vxmirror', 'n/a')} / {c.get('tcp_conversations_tshark', 'n/a')}",
        ))
    return [
        "### Offline comparison",
        "",
        f"Generated VXLAN captures (`receiver.traffic`, seed {', '.join(str(x) for x in seeds)}, page cache warm): "
        "the *realistic mix* (`traffic.realistic`: heavy-tailed flow sizes, DNS pairs, short HTTP and TLS "
        "exchanges, scans, pings, other UDP, IPv6 and VLAN tags, several VNIs, a truncating session; most flows "
        "a few packets, a few long ones), *long flows* (`traffic.long_flows`, the capture of the earlier "
        "figures) and a *SYN flood* (`traffic.flood`: a SYN scan, 1-2 packets a flow). `vxmirror read F -o "
        "OUT` and `tshark -n -r F -q -z conv,tcp` are timed as commands (start-up included); `read_records` is "
        "the same work as a library call; the dpkt loop (`receiver/benchkit/dpktloop.py`) runs on the first "
        f"{off.get('dpkt_packets', 0):,} packets and its rate is packets/s over that subset. Medians of the "
        "repetitions; each ratio is the median of the per-repetition ratios (same run).",
        "",
        *_table(("capture", "packets", "flows", "packets a flow", "MB", "read packets/s", "read records/s",
                 "read_records packets/s", "tshark packets/s", "read / tshark", "dpkt packets/s", "read / dpkt",
                 "TCP flows: vxmirror / tshark"), rows),
        "",
    ]


CHURN_SETUP = "default workers, JSON lines only, 2 s idle timeouts"
CHURN_PAYLOADS = {"dns": "DNS queries and responses", "udp": "opaque UDP"}


def _capture_rows(cap: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The capture sweep: serve's loss-free rates with and without pcap, against the disk."""
    sm = cap.get("summary", {})
    disk = float(sm.get("disk_bytes_per_second", 0))
    rows = [("disk sequential write rate of the data directory (`dd bs=1M conv=fdatasync`)",
             f"{disk / 1e6:,.0f} MB/s", "(reference)")]
    for case, label in (("jsonl", "JSON lines alone"), ("default", "JSON lines + pcap, default capture policy"),
                        ("everything", "JSON lines + pcap of every frame")):
        row = sm.get(case)
        if not row:
            continue
        figure = (f"{fmt_rate(row['loss_free_datagrams_per_second'])} datagrams, pcap "
                  f"{row['pcap_bytes_per_second_at_best'] / 1e6:,.0f} MB/s"
                  + (" (the sender's limit)" if row.get("limited_by_sender") else ""))
        if case == "default":
            goal = _goal(sm.get("default_goal_met"), f"= JSON lines alone (ratio {sm.get('default_vs_jsonl', 0):.2f})")
        elif case == "everything":
            goal = _goal(sm.get("everything_goal_met"),
                         f">= 0.9x the disk (pcap bytes/s: {sm.get('everything_vs_disk', 0):.2f}x)")
        else:
            goal = "(reference)"
        rows.append((f"`vxmirror serve` loss-free on the realistic mix, {label}", figure, goal))
    return rows


def _churn_rows(churn: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for row in sorted(churn.get("summary", {}).values(), key=lambda r: (r["datagrams_per_flow"], r.get("payload", ""))):
        n = int(row["datagrams_per_flow"])
        lossy = row.get("lowest_lossy_offered")
        figure = (f"{fmt_rate(row['loss_free_flows_per_second'])} new flows = "
                  f"{fmt_rate(row['loss_free_datagrams_per_second'])} datagrams"
                  + (f" (lost at {fmt_rate(lossy)} datagrams)" if lossy else ""))
        if n == 2:
            goal = _goal(row.get("goal_met"), f">= {fmt_rate(row['goal_flows_per_second'])} new flows")
        else:
            goal = _goal(row.get("goal_met"), f">= {fmt_rate(row['goal_datagrams_per_second'])} datagrams")
        payload = CHURN_PAYLOADS.get(row.get("payload", "dns"), row.get("payload", "dns"))
        rows.append((f"`vxmirror serve` loss-free churn, {n}-datagram flows of {row['size']} bytes, {payload} "
                     f"({CHURN_SETUP})", figure, goal))
    return rows


def _churn_lines(churn: dict[str, Any]) -> list[str]:
    trials = churn.get("trials", [])
    rows = []
    for t in trials:
        sec = float(t.get("seconds") or 1.0)
        per = int(t["per_flow"])
        rows.append((
            f"{per} x {t['size']} B, {t.get('payload', 'dns')}", fmt_rate(t.get("target")), fmt_rate(t.get("offered")),
            fmt_rate(float(t.get("offered", 0)) / per), fmt_rate(float(t.get("datagrams_received", 0)) / sec),
            fmt_rate(t.get("received_rate")), f"{t.get('records', 0):,}", f"{t.get('lost', 0):,}",
            f"{t.get('kernel_drops', 0):,} / {t.get('rcvbuf_errors', 0):,}", f"{t.get('forwarder_drops', 0):,}",
            "yes" if t.get("passed") else "**no**",
        ))
    return [
        "### Churn: new flows per second (`bench/live_sweep.py --churn`)",
        "",
        f"`vxmirror serve` ({CHURN_SETUP}) on loopback, fed by `bench/c/send_ref.c --churn N`: a new inner flow "
        f"every N datagrams, paced, for {churn.get('seconds_per_trial')} s a trial; *dns*: DNS queries and "
        "responses by turns (port 53, padded to the datagram size: every packet goes to the DNS parser), *udp*: "
        "opaque UDP (port 8125, no parser). *In records*: the datagrams counted by the flow records on disk "
        "(the sum of `packets_in + packets_out` over the JSON-lines files, read after the flows expired, "
        "the queue emptied and the service stopped); *lost* = sent minus that; a trial is loss-free below "
        f"{100 * float(churn.get('loss_limit') or 0.001):.1f} % lost. *Kernel drops*: the service's counter "
        "and the machine's Udp RcvbufErrors (all sockets; with UDP_GRO both count coalesced messages of up to "
        "64 datagrams). The rate doubles from the goal / 2^k, then bisects. The socket buffer and the receive "
        "ring hold about 1 M datagrams of 128 bytes, which a trial much shorter than 8 s hides a deficit in.",
        "",
        *_table(("flows of", "target datagrams/s", "offered datagrams/s", "offered new flows/s",
                 "received datagrams/s", "datagrams/s in records", "records", "lost", "kernel drops (serve / snmp)",
                 "forwarder drops", "loss-free"), rows),
        "",
    ]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def _carried_note(doc: dict[str, Any]) -> list[str]:
    carried = doc.get("carried_over") or []
    if not carried:
        return []
    where = {n: _run_name(doc["sections"][n].get("measured_in")) for n in carried}
    return ["Sections not re-run this time, kept from earlier runs of this profile (in `latest.json` with the "
            "run they come from): " + ", ".join(f"{n} (run {f})" for n, f in where.items()) + ".", ""]


def _run_name(file: Any) -> str:
    """A run's name from its results file ("20261127T095611Z-full.json" -> "20261127T095611Z-full")."""
    return str(file).removesuffix(".json") if file else "unknown"


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
        lines.append(
            f"Forwarder goal (issue 4: no forwarder is the bottleneck of the receiver's loss-free rate): a record "
            f"forwarder must carry the records the receiver emits at its best loss-free rate, {fmt_rate(best)} "
            f"datagrams x {records_per_packet(off):.3f} records per packet (the realistic mix's) = "
            f"{fmt_rate(need_rec)}; the pcap writer must take every frame, {fmt_rate(best)}. A flood of "
            "1-2-packet flows needs up to a record per packet."
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
        f"(run {_run_name(doc.get('file'))}; results: `{results}/latest.json`).",
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
        lines += _offline_lines(off)
    churn = _ok(s, "churn")
    if churn:
        lines += _churn_lines(churn)
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
