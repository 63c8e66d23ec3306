"""The benchmark harness's pieces on tiny inputs (no timing assertions: figures are not checked,
only that they are computed, summarised, compared and written as documented)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver.benchkit import dpktloop, harness, memory, report, scripts, stats
from receiver.benchkit.profiles import QUICK, Profile
from receiver.cli import build_parser
from receiver.traffic import write_pcap

TINY = dataclasses.replace(
    QUICK, name="tiny", repeats=2, offline_packets=3000, offline_flows=60, dpkt_packets=500, core_packets=3000,
    core_batch=1024, memory_flows=(300,), forwarder_records=200,
)


def test_summary_and_paired_ratio() -> None:
    s = stats.summary([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    r = stats.paired_ratio([100.0, 200.0, 300.0], [10.0, 10.0, 100.0])
    assert r["values"] == [10.0, 20.0, 3.0]
    assert (r["median"], r["min"], r["max"]) == (10.0, 3.0, 20.0)
    assert stats.rates(1000, [0.5, 2.0]) == [2000.0, 500.0]
    with pytest.raises(ValueError):
        stats.paired_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        stats.summary([])
    assert stats.fmt_rate(2_500_000) == "2.50 M/s"
    assert stats.fmt_summary(r, "ratio") == "10.00x (3.00-20.00)"


def test_compare_flags_only_worsening_beyond_margin() -> None:
    current = {"offline.ratio_tshark": (30.0, True), "live.512.serve_ratio": (0.7, True),
               "memory.x.table_bytes_per_flow": (400.0, False), "new.figure": (1.0, True)}
    stored = {"offline.ratio_tshark": 50.0, "live.512.serve_ratio": 0.75, "memory.x.table_bytes_per_flow": 300.0}
    rows = {r["name"]: r for r in report.compare(current, stored, margin=0.25)}
    assert set(rows) == set(stored)  # figures absent from the stored run are not compared
    assert rows["offline.ratio_tshark"]["regressed"]  # -40 %
    assert not rows["live.512.serve_ratio"]["regressed"]  # -6.7 %, within the margin
    assert rows["memory.x.table_bytes_per_flow"]["regressed"]  # +33 %, lower is better
    assert not report.compare({"memory.x.table_bytes_per_flow": (200.0, False)}, stored, 0.25)[0]["regressed"]


def _doc(ratio_tshark: float, core_pps: float, rss: float) -> dict[str, Any]:
    def s(v: float) -> dict[str, Any]:
        return stats.summary([v * 0.9, v, v * 1.1])

    return {
        "started_utc": "2026-01-01 00:00:00 UTC", "command": "make bench", "file": "x.json", "wall_seconds": 1.0,
        "profile": {"name": "full", "repeats": 3}, "machine": {"cpu": "test cpu", "cores": 2},
        "plots": ["rates.png"],
        "sections": {
            "offline": {"status": "ok", "data": {
                "capture": {"packets": 1_000_000, "flows": 4000, "seed": 1, "bytes": 10},
                "read_pps": s(1e6), "tshark_pps": s(1e6 / ratio_tshark), "ratio_tshark": s(ratio_tshark),
                "dpkt_pps": s(2e4), "ratio_dpkt": s(50.0), "dpkt_packets": 1000}},
            "core": {"status": "ok", "data": {"batch": 8192, "pps": s(core_pps), "pps_no_excerpts_no_app": s(3e6)}},
            "live": {"status": "ok", "data": {"summary": {
                "512": {"c": 800_000, "serve": 700_000, "serve_ratio": 0.875},
                "128": {"c": 800_000, "serve": 400_000, "serve_ratio": 0.5}}}},
            "memory": {"status": "ok", "data": {"payload_bytes_each_way": 64, "rows": [
                {"flows": 1_000_000, "excerpt_bytes": 128, "app_metadata": True, "rss_bytes_per_flow": rss,
                 "table_bytes_per_flow": 170.0, "table_bytes_per_slot": 170.0, "traced_bytes_per_flow": rss,
                 "app_states": 5}]}},
            "forwarders": {"status": "skipped", "reason": "no checkout"},
        },
    }


def test_readme_table_says_which_goals_are_met() -> None:
    block = report.readme_block(_doc(ratio_tshark=60.0, core_pps=1e6, rss=250.0))
    lines = {ln.split("|")[1].strip(): ln for ln in block.splitlines() if ln.startswith("| ")}
    tshark = next(v for k, v in lines.items() if "tshark" in k)
    assert ">= 50x: met" in tshark
    core = next(v for k, v in lines.items() if k.startswith("decode+aggregate core"))
    assert "**NOT MET**" in core
    live = {k: v for k, v in lines.items() if "loss-free" in k}
    assert ">= 0.8x C: met" in next(v for k, v in live.items() if "512-byte" in k)
    assert "**NOT MET**" in next(v for k, v in live.items() if "128-byte" in k)
    mem = next(v for k, v in lines.items() if k.startswith("bytes per active flow at 1,000,000"))
    assert "<= 300 B (process growth): met" in mem
    hec = next(v for k, v in lines.items() if "splunk_hec" in k)
    assert "skipped: no checkout" in hec
    assert "![rates.png](results/rates.png)" in block
    assert "forwarders: skipped: no checkout" in block
    worse = report.readme_block(_doc(ratio_tshark=10.0, core_pps=3e6, rss=900.0))
    assert ">= 50x: **NOT MET**" in worse and ">= 2 M/s: met" in worse
    assert "<= 300 B (process growth): **NOT MET**" in worse


def test_merge_readme_keeps_other_sections() -> None:
    first = report.merge_readme(None, report.BEGIN + "\nv1\n" + report.END)
    assert first.startswith("# Benchmarks") and "v1" in first
    theirs = first + "\n## Live sweep\n\nwritten by someone else\n"
    again = report.merge_readme(theirs, report.BEGIN + "\nv2\n" + report.END)
    assert "v2" in again and "v1" not in again and "written by someone else" in again
    no_markers = "# Bench\n\nintro\n\n## Capture reader\n\nnotes\n"
    merged = report.merge_readme(no_markers, report.BEGIN + "\nv3\n" + report.END)
    assert merged.index("# Bench") < merged.index("v3") < merged.index("intro") and "notes" in merged


def test_parsers_of_the_script_outputs() -> None:
    doc = {"benchmarks": [{"name": "test_decode_fast_path", "extra_info": {"items": 1000, "unit": "packet"},
                           "stats": {"median": 0.002, "min": 0.001, "max": 0.004, "rounds": 5}}]}
    b = scripts.parse_micro(doc)["benchmarks"]["decode_fast_path"]
    assert b["ns_per_item"]["median"] == pytest.approx(2000.0)
    assert b["items_per_second"]["max"] == pytest.approx(1e6)
    text = ("frame_block (copy out, decapsulated)     2.50 M frames/s     1800 MB/s\n"
            "PcapSink pcap (encode + write)           1.05 M frames/s      789 MB/s\n")
    got = scripts.parse_pcap_writer(text)
    assert got["PcapSink pcap (encode + write)"] == (1.05e6, 789.0)
    with pytest.raises(RuntimeError):
        scripts.parse_pcap_writer("nothing here")


def test_scripts_need_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(scripts.Unavailable):
        scripts.live(TINY, None, tmp_path)
    with pytest.raises(scripts.Unavailable):
        scripts.micro(TINY, tmp_path, tmp_path)  # no test_micro.py there


def test_dpkt_loop_finds_the_generated_flows(tmp_path: Path) -> None:
    pcap = tmp_path / "t.pcap"
    traffic = write_pcap(pcap, 2000, 40, seed=2)
    n, flows = dpktloop.aggregate(pcap)
    assert n == 2000
    assert len(flows) == traffic.flows.seen().size
    assert sum(st[0] + st[1] for st in flows.values()) == 2000
    assert dpktloop.aggregate(pcap, 100)[0] == 100


def test_memory_measure_counts_open_flows() -> None:
    row = memory.measure(500, 128, True, "rss")
    assert row["active"] == 500 and row["records_emitted"] == 0
    assert 0 <= row["app_states"] <= 500 and row["excerpt_pool_bytes"] > 0
    assert row["table_bytes_per_flow"] >= row["table_bytes_per_slot"] > 0
    bare = memory.measure(500, 0, False, "tracemalloc")
    assert bare["active"] == 500 and bare["app_states"] == 0 and bare["excerpt_pool_bytes"] == 0
    assert bare["traced_bytes_per_flow"] > 0


def test_run_writes_json_latest_plots_readme_and_check(tmp_path: Path) -> None:
    out, readme = tmp_path / "results", tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## Someone else's section\n\nkept\n")
    doc = harness.run(TINY, out, bench_dir=None, readme=readme, sections=("offline", "core", "micro"),
                      work=tmp_path / "work", command="test", log=lambda _m: None)
    assert doc["sections"]["offline"]["status"] == "ok", doc["sections"]["offline"]
    assert doc["sections"]["core"]["status"] == "ok"
    assert doc["sections"]["micro"]["status"] == "skipped"
    saved = json.loads((out / "latest.json").read_text())
    assert saved["machine"]["cores"] and saved["machine"]["python"]
    assert (out / doc["file"]).exists()
    assert "offline.ratio_dpkt" in saved["stored_checks"]["tiny"]
    assert "rates.png" in saved["plots"] and (out / "rates.png").stat().st_size > 0
    text = readme.read_text()
    assert "kept" in text and "`vxmirror read` / dpkt loop" in text and "micro: skipped" in text
    # a second run keeps one block, and the stored figures of the profile
    second = harness.run(TINY, out, bench_dir=None, readme=readme, sections=("core",), work=tmp_path / "work",
                         log=lambda _m: None)
    assert readme.read_text().count(report.BEGIN) == 1
    # sections not re-run are kept from the previous run of the profile, and say where they come from
    assert second["carried_over"] == ["micro", "offline"]
    assert second["sections"]["offline"]["measured_in"] == doc["file"]
    assert "kept from earlier runs" in readme.read_text() and "`vxmirror read` / dpkt loop" in readme.read_text()
    assert "offline.ratio_dpkt" in json.loads((out / "latest.json").read_text())["stored_checks"]["tiny"]
    # the regression guard: inflate the stored ratio far beyond reach -> failure
    saved = json.loads((out / "latest.json").read_text())
    saved["stored_checks"]["tiny"]["offline.ratio_dpkt"] *= 1000
    (out / "latest.json").write_text(json.dumps(saved))
    code = harness.check(out / "latest.json", bench_dir=None, margin=0.25, profile_name=TINY,
                         sections=("offline",), work=tmp_path / "work", log=lambda _m: None)
    assert code == 1
    # every stored ratio far below reach (noise cannot fail it) -> pass
    saved["stored_checks"]["tiny"] = {k: v / 1e9 for k, v in saved["stored_checks"]["tiny"].items()}
    (out / "latest.json").write_text(json.dumps(saved))
    assert harness.check(out / "latest.json", bench_dir=None, margin=0.25, profile_name=TINY,
                         sections=("offline",), work=tmp_path / "work", log=lambda _m: None) == 0


def test_bench_command_is_registered() -> None:
    args = build_parser().parse_args(["bench", "--profile", "quick", "--only", "core,memory", "--no-readme"])
    assert args.profile == "quick" and args.only == "core,memory" and args.no_readme
    assert isinstance(TINY, Profile)


def test_the_micro_benchmarks_still_run() -> None:
    # each benchmark once, untimed: `make bench` is not part of the suite, and its micro section
    # calls engine internals that change (a changed signature failed only there once)
    bench = Path(__file__).resolve().parents[1] / "bench" / "test_micro.py"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(bench), "-q", "--benchmark-disable", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
