"""The benchmarks that live in ``bench/`` (they need a checkout: pytest-benchmark, gcc, the
in-repo test servers), run as subprocesses and read back from their JSON or text output.

Each function raises ``Unavailable`` when what it needs is missing, so a deployed instance
without a checkout still gets the parts it can run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .profiles import Profile
from .stats import summary


class Unavailable(Exception):
    """The benchmark cannot run here (missing script, tool or module)."""


def _need_script(bench_dir: Path | None, name: str) -> Path:
    if bench_dir is None:
        raise Unavailable("no bench/ directory (run from a checkout or pass --bench-dir)")
    path = bench_dir / name
    if not path.exists():
        raise Unavailable(f"{path} does not exist")
    return path


def _need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise Unavailable(f"Python module {name!r} is not installed (pip install -e '.[dev]')")


def _run(cmd: list[str], cwd: Path, timeout: float, log: Any) -> str:
    log(f"  $ {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(cmd[1]).name} exited {r.returncode}:\n{tail}")
    return r.stdout


def micro(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    script = _need_script(bench_dir, "test_micro.py")
    _need_module("pytest_benchmark")
    assert bench_dir is not None
    raw = out / "micro-raw.json"
    _run([sys.executable, "-m", "pytest", str(script), "-q", "-p", "no:cacheprovider", "--benchmark-enable",
          "--benchmark-only", f"--benchmark-json={raw}", f"--benchmark-max-time={profile.micro_max_time}",
          f"--benchmark-min-rounds={profile.micro_min_rounds}"], bench_dir.parent, 900, log)
    return parse_micro(json.loads(raw.read_text()))


def parse_micro(doc: dict[str, Any]) -> dict[str, Any]:
    """pytest-benchmark's JSON -> per benchmark: seconds per call and ns per item (median/min/max)."""
    rows = {}
    for b in doc.get("benchmarks", []):
        st = b["stats"]
        items = int(b.get("extra_info", {}).get("items", 1)) or 1
        name = b["name"].removeprefix("test_")
        rows[name] = {
            "items": items,
            "unit": b.get("extra_info", {}).get("unit", "call"),
            "rounds": st["rounds"],
            "seconds": {"median": st["median"], "min": st["min"], "max": st["max"], "n": st["rounds"]},
            "ns_per_item": {"median": st["median"] / items * 1e9, "min": st["min"] / items * 1e9,
                            "max": st["max"] / items * 1e9, "n": st["rounds"]},
            "items_per_second": {"median": items / st["median"], "min": items / st["max"],
                                 "max": items / st["min"], "n": st["rounds"]},
        }
    return {"benchmarks": rows}


def _sweep(name: str, args: tuple[str, ...], bench_dir: Path | None, out: Path, log: Any) -> dict[str, Any]:
    """Run bench/live_sweep.py with ``args`` into ``out``/``name``.json and .png; its JSON, plus
    what the summary keeps of it."""
    script = _need_script(bench_dir, "live_sweep.py")
    if not shutil.which("gcc"):
        raise Unavailable("gcc is not installed (the C reference receiver and sender are built by the sweep)")
    assert bench_dir is not None
    js, png = out / f"{name}.json", out / f"{name}.png"
    _run([sys.executable, str(script), *args, "--out", str(js), "--plot", str(png)], bench_dir.parent, 1500, log)
    doc = dict(json.loads(js.read_text()))
    doc["_kept"] = {"plot": png.name, "raw": js.name, "seconds_per_trial": doc.get("seconds_per_trial"),
                    "loss_limit": doc.get("loss_limit"), "wall_seconds": doc.get("wall_seconds"),
                    "command": doc.get("command")}
    return doc


def live(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    doc = _sweep("live_sweep", profile.live_args, bench_dir, out, log)
    return {"summary": doc.get("summary", {}), **doc["_kept"],
            "results": [_live_result(r) for r in doc.get("results", [])]}


def churn(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    """The churn sweep: loss-free new flows/s of ``vxmirror serve`` (live_sweep.py --churn)."""
    doc = _sweep("churn_sweep", ("--receivers", "", *profile.churn_args), bench_dir, out, log)
    churned = doc.get("churn", {})
    return {"summary": churned.get("summary", {}), **doc["_kept"],
            "results": [_live_result(r) for r in churned.get("results", [])],
            "trials": [_churn_trial(r, t) for r in churned.get("results", []) for t in r.get("trials", [])],
            "errors": doc.get("errors", [])}


def capture(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    """The capture sweep (live_sweep.py --capture): dd's rate, loss-free rates per capture case."""
    doc = _sweep("capture_sweep", ("--receivers", "", *profile.capture_args), bench_dir, out, log)
    cap = doc.get("capture", {})
    return {"summary": cap.get("summary", {}), "disk": cap.get("disk", {}), **doc["_kept"],
            "results": [_live_result(r) for r in cap.get("results", [])], "errors": doc.get("errors", [])}


CHURN_TRIAL_KEYS = ("target", "offered", "received_rate", "lost", "loss", "passed", "records", "flows_sent",
                    "datagrams_received", "records_exported", "forwarder_drops", "kernel_drops", "rcvbuf_errors")


def _churn_trial(r: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    """One churn trial as the report shows it: rates offered and counted, records, drops."""
    return {"per_flow": r["per_flow"], "payload": r.get("payload", "dns"), "size": r["size"], "sent": t["sent"]["sent"],
            "seconds": t["sent"]["seconds"], **{k: t[k] for k in CHURN_TRIAL_KEYS if k in t}}


def _live_result(r: dict[str, Any]) -> dict[str, Any]:
    """One receiver and size of the sweep: its loss-free rate and the lowest offered rate that lost."""
    trials = r.get("trials", [])
    failed = [float(t["offered"]) for t in trials if not t.get("passed") and "offered" in t]
    above = [f for f in failed if f > float(r.get("loss_free_rate", 0))]
    return {k: v for k, v in r.items() if k != "trials"} | {
        "trials": len(trials), "lowest_lossy_offered": min(above) if above else None}


# keys of bench_forwarders.py's JSON that are records/s of a forwarder end to end through the runner
FORWARDER_KEYS = {"hec_runner_gzip": "splunk_hec", "kafka_runner": "kafka"}


def forwarders(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    script = _need_script(bench_dir, "bench_forwarders.py")
    if not (bench_dir is not None and (bench_dir.parent / "tests" / "hec_server.py").exists()):
        raise Unavailable("tests/hec_server.py and tests/kafka_fixtures.py are needed (a checkout)")
    assert bench_dir is not None
    runs: list[dict[str, float]] = []
    for rep in range(profile.forwarder_repeats):
        js = out / f"forwarders-{rep}.json"
        _run([sys.executable, str(script), "--records", str(profile.forwarder_records), "--json", str(js)],
             bench_dir.parent, 900, log)
        runs.append(json.loads(js.read_text()))
        js.unlink()
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    return {"records": profile.forwarder_records, "repeats": len(runs),
            "figures": {k: summary([r[k] for r in runs if k in r]) for k in keys}}


PCAP_LINE = re.compile(r"^(?P<name>.+?)\s+(?P<fps>[0-9.]+) M frames/s\s+(?P<mbs>[0-9.]+) MB/s")


def pcap_writer(profile: Profile, bench_dir: Path | None, out: Path, log: Any = print) -> dict[str, Any]:
    script = _need_script(bench_dir, "bench_pcap_writer.py")
    assert bench_dir is not None
    runs: list[dict[str, tuple[float, float]]] = []
    for _ in range(profile.forwarder_repeats):
        text = _run([sys.executable, str(script), "--frames", str(profile.pcap_frames)], bench_dir.parent, 600, log)
        runs.append(parse_pcap_writer(text))
    names = list(runs[0])
    return {
        "frames": profile.pcap_frames,
        "repeats": len(runs),
        "frames_per_second": {n: summary([r[n][0] for r in runs if n in r]) for n in names},
        "mb_per_second": {n: summary([r[n][1] for r in runs if n in r]) for n in names},
    }


def parse_pcap_writer(text: str) -> dict[str, tuple[float, float]]:
    """bench_pcap_writer.py's lines -> {name: (frames/s, MB/s)}."""
    out = {}
    for line in text.splitlines():
        m = PCAP_LINE.match(line.strip())
        if m:
            out[m.group("name").strip()] = (float(m.group("fps")) * 1e6, float(m.group("mbs")))
    if not out:
        raise RuntimeError(f"no figures in bench_pcap_writer.py output:\n{text[-500:]}")
    return out
