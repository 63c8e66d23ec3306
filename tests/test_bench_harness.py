"""The benchmark harness's pieces on tiny inputs (no timing assertions: figures are not checked,
only that they are computed, summarised, compared and written as documented)."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from receiver.benchkit import dpktloop, harness, memory, report, scripts, stats
from receiver.benchkit.profiles import QUICK, Profile
from receiver.capture.read import read_records
from receiver.cli import build_parser
from receiver.traffic import write_pcap
from tests.capture_fixtures import Rec, pcap_bytes
from tests.packet_factory import outer

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


def _cases_doc(ratios: dict[str, float], churn_flows: float, churn_dgrams: float) -> dict[str, Any]:
    """A run with the three offline cases and the churn sweep (the layout since issue 14)."""
    doc = _doc(ratio_tshark=60.0, core_pps=3e6, rss=250.0)

    def s(v: float) -> dict[str, Any]:
        return stats.summary([v * 0.9, v, v * 1.1])

    cases = {}
    for name, title, packets, flows in (("mix", "realistic mix", 1_000_000, 66_667),
                                        ("long", "long flows", 1_000_000, 4_000),
                                        ("flood", "SYN flood", 1_000_000, 556_000)):
        cases[name] = {"title": title, "records": flows,
                       "capture": {"packets": packets, "flows": flows, "seed": 1, "bytes": 10},
                       "read_pps": s(1e6), "read_records_per_second": s(flows * 1.0),
                       "read_in_process_pps": s(2e6), "read_in_process_records_per_second": s(flows * 2.0),
                       "tshark_pps": s(1e6 / ratios[name]), "ratio_tshark": s(ratios[name]),
                       "dpkt_pps": s(2e4), "ratio_dpkt": s(50.0)}
    doc["sections"]["offline"] = {"status": "ok", "data": {"default_case": "mix", "dpkt_packets": 1000,
                                                           "cases": cases}}
    summary = {
        "2-dns": {"datagrams_per_flow": 2, "payload": "dns", "size": 128,
                  "loss_free_datagrams_per_second": churn_flows * 2, "loss_free_flows_per_second": churn_flows,
                  "goal_datagrams_per_second": 600_000, "goal_flows_per_second": 300_000,
                  "goal_met": churn_flows >= 300_000, "lowest_lossy_offered": None},
        "10-udp": {"datagrams_per_flow": 10, "payload": "udp", "size": 128,
                   "loss_free_datagrams_per_second": churn_dgrams, "loss_free_flows_per_second": churn_dgrams / 10,
                   "goal_datagrams_per_second": 1_000_000, "goal_flows_per_second": 100_000,
                   "goal_met": churn_dgrams >= 1e6, "lowest_lossy_offered": 2e6},
    }
    trials = [{"per_flow": 2, "payload": "dns", "size": 128, "sent": 1200, "seconds": 2.0, "target": 600.0,
               "offered": 600.0, "received_rate": 590.0, "lost": 20, "passed": False, "records": 590,
               "datagrams_received": 1180, "forwarder_drops": 5, "kernel_drops": 20, "rcvbuf_errors": 21}]
    doc["sections"]["churn"] = {"status": "ok", "data": {"summary": summary, "trials": trials, "plot": "churn.png",
                                                         "seconds_per_trial": 2.0, "loss_limit": 0.001}}
    return doc


def test_readme_shows_the_three_offline_cases_and_the_churn_sweep() -> None:
    doc = _cases_doc({"mix": 45.0, "long": 40.0, "flood": 3.0}, churn_flows=150_000, churn_dgrams=1.2e6)
    block = report.readme_block(doc)
    lines = {ln.split("|")[1].strip(): ln for ln in block.splitlines() if ln.startswith("| ")}
    tshark = {k: v for k, v in lines.items() if "tshark -q -z conv,tcp`," in k}
    assert ">= 40x: met" in next(v for k, v in tshark.items() if "realistic mix" in k)  # issue 14's goal
    assert ">= 50x: **NOT MET**" in next(v for k, v in tshark.items() if "long flows" in k)
    assert next(v for k, v in tshark.items() if "SYN flood" in k).rstrip(" |").endswith("| -")
    first = next(v for k, v in lines.items() if k.startswith("`vxmirror read`, packets/s, realistic mix"))
    assert "records/s" in first and "66,667 flows" in first
    churn2 = next(v for k, v in lines.items() if "2-datagram flows of 128 bytes, DNS queries" in k)
    assert "150.0 k/s new flows" in churn2 and ">= 300.0 k/s new flows: **NOT MET**" in churn2
    churn10 = next(v for k, v in lines.items() if "10-datagram flows of 128 bytes, opaque UDP" in k)
    assert ">= 1.00 M/s datagrams: met" in churn10 and "lost at 2.00 M/s" in churn10
    # the offline table lists every case; the churn table every trial, with its drops
    assert "### Offline comparison" in block and "| SYN flood | 1,000,000 | 556,000 | 1.8 |" in block
    assert "### Churn" in block and "| 2 x 128 B, dns | 600/s | 600/s | 300/s |" in block and "**no**" in block
    # the forwarders' goal follows the realistic mix's records per packet
    assert "0.067 records per packet (the realistic mix's)" in block
    checks = report.checks(doc)
    assert checks["offline.mix.ratio_tshark"] == (45.0, True) and "offline.flood.ratio_dpkt" in checks
    good = report.readme_block(_cases_doc({"mix": 45.0, "long": 55.0, "flood": 3.0}, 300_000, 1e6))
    assert ">= 300.0 k/s new flows: met" in good and ">= 50x: met" in good


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
    # a result from before the offline cases (one 4,000-flow capture) reads as the long-flows case
    assert "`vxmirror read`, packets/s, long flows (1,000,000 packets, 4,000 flows, 250.0 a flow)" in block
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
    cases = doc["sections"]["offline"]["data"]["cases"]
    assert list(cases) == ["mix", "long", "flood"]
    for name, case in cases.items():  # a record per flow, whatever the shape
        assert case["records"] == case["capture"]["flows"] > 0, name
        assert case["capture"]["packets"] == TINY.offline_packets
        assert case["read_records_per_second"]["median"] > 0
    assert cases["flood"]["capture"]["packets_per_flow"] < 2 < cases["mix"]["capture"]["packets_per_flow"]
    saved = json.loads((out / "latest.json").read_text())
    assert saved["machine"]["cores"] and saved["machine"]["python"]
    # the results directory keeps latest.json; each run's copy goes to the (untracked) history
    assert (out / "history" / doc["file"]).exists() and not (out / doc["file"]).exists()
    assert "offline.mix.ratio_dpkt" in saved["stored_checks"]["tiny"]
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
    assert "offline.mix.ratio_dpkt" in json.loads((out / "latest.json").read_text())["stored_checks"]["tiny"]
    # another profile runs in between: the next run of this one still carries its sections over
    # (from the history), and every profile's stored checks are kept
    other = dataclasses.replace(TINY, name="tiny2")
    harness.run(other, out, bench_dir=None, readme=None, sections=("core",), work=tmp_path / "work",
                log=lambda _m: None)
    third = harness.run(TINY, out, bench_dir=None, readme=None, sections=("core",), work=tmp_path / "work",
                        log=lambda _m: None)
    assert third["carried_over"] == ["micro", "offline"]
    assert set(third["stored_checks"]) == {"tiny", "tiny2"}
    # the regression guard: inflate the stored ratio far beyond reach -> failure
    saved = json.loads((out / "latest.json").read_text())
    saved["stored_checks"]["tiny"]["offline.mix.ratio_dpkt"] *= 1000
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


def _live_sweep() -> Any:
    """bench/live_sweep.py as a module (it is a script beside the harness, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "live_sweep.py"
    spec = importlib.util.spec_from_file_location("live_sweep", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the C sender")
def test_churn_sender_starts_a_new_valid_flow_every_n_datagrams(tmp_path: Path) -> None:
    live_sweep = _live_sweep()
    bins = live_sweep.build()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sent = live_sweep.send(bins, rx.getsockname()[1], 128, 20_000, 0.01, churn=3)  # 64 a send (GSO)
        got = [rx.recv(2048) for _ in range(sent["sent"])]
    assert sent["flows"] == -(-sent["sent"] // 3) and len(got) >= 30
    assert {len(d) for d in got} == {128}
    pcap = tmp_path / "churn.pcap"
    pcap.write_bytes(pcap_bytes([Rec(1_700_000_000, i, outer(d)) for i, d in enumerate(got)]))
    recs = list(read_records(pcap))
    assert len(recs) == sent["flows"]
    assert all((r["packets_in"], r["packets_out"]) == (2, 1) for r in recs[: len(got) // 3])
    names = [r["app"]["dns"][0]["query"] for r in recs]
    assert len(set(names)) == len(recs) and names[0] == "f000000.churn.example"
    assert {r["dest_port"] for r in recs} == {53}
    # every datagram a valid DNS message (EDNS padding fills it), nothing malformed
    clean = "dns && !_ws.malformed && !_ws.expert.severity >= warning"
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", clean, "-T", "fields", "-e", "dns.flags.response"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1", "0"] * (len(got) // 3) + ["0", "1", "0"][: len(got) % 3]
    # what the sweep counts: the datagrams and records of the JSON-lines files
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "flows-1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs[:5]))
    with gzip.open(flows / "flows-0.jsonl.gz", "wb") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in recs[5:]))
    assert live_sweep.count_records(flows) == (len(got), len(recs))
    # opaque UDP instead: the same flows to a port without a parser
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sent = live_sweep.send(bins, rx.getsockname()[1], 128, 20_000, 0.01, churn=10, payload="udp")
        got = [rx.recv(2048) for _ in range(sent["sent"])]
    pcap.write_bytes(pcap_bytes([Rec(1_700_000_000, i, outer(d)) for i, d in enumerate(got)]))
    recs = list(read_records(pcap))
    assert len(recs) == sent["flows"] and {r["dest_port"] for r in recs} == {8125}
    assert all((r["packets_in"], r["packets_out"]) == (5, 5) for r in recs[: len(got) // 10])
    assert not any(r.get("app") for r in recs)


def test_churn_summary_says_whether_the_goal_was_reached() -> None:
    live_sweep = _live_sweep()

    def trial(target: float, passed: bool) -> dict[str, Any]:
        return {"target": target, "offered": target * 0.998, "passed": passed, "records": int(target)}

    results = [{"per_flow": 2, "payload": "dns", "size": 128, "target": 600_000, "loss_free_rate": 599_000.0,
                "trials": [trial(300_000, True), trial(600_000, True), trial(1_200_000, False)]},
               {"per_flow": 10, "payload": "udp", "size": 128, "target": 1_000_000, "loss_free_rate": 499_000.0,
                "trials": [trial(500_000, True), trial(1_000_000, False)]}]
    s = live_sweep.churn_summary(results)
    assert s["2-dns"]["goal_met"] and s["2-dns"]["loss_free_flows_per_second"] == 299_500
    assert s["2-dns"]["lowest_lossy_offered"] == pytest.approx(1_197_600)
    assert not s["10-udp"]["goal_met"] and s["10-udp"]["goal_flows_per_second"] == 100_000
