"""Offline comparison: ``vxmirror read`` against ``tshark -q -z conv,tcp`` and a dpkt loop.

Three generated VXLAN captures (``receiver.traffic``, seeded), the cases of ``CASES``:
``mix`` (the default: real mirrored traffic, about 15 packets a flow, most flows a few
packets), ``long`` (few long flows: 250 packets a flow in the full profile) and ``flood`` (a
SYN scan, 1-2 packets a flow). Each is read by all three tools in the same run, interleaved per
repetition (for each case: read, tshark, dpkt; then the next case; then the next repetition),
so machine noise hits them alike; each repetition gives one ratio per reference. ``vxmirror
read`` and tshark are timed end to end as commands (process start included, page cache warm,
records written to a file / conversations printed). The dpkt loop runs in this process on the
first ``dpkt_packets`` packets (it is about 50x slower than the others) and its rate is
packets/s over that subset. The library call behind ``vxmirror read`` (``read_records``,
records serialised with orjson, no process start-up) is timed in this process too. Records/s
(flow records written per second) stand beside packets/s: on short flows the record is the cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..capture.read import read_records
from ..traffic import TrafficSpec, flood, generate, long_flows, realistic
from . import dpktloop
from .profiles import Profile
from .stats import paired_ratio, rates, summary

DEFAULT_CASE = "mix"
# name -> (title, spec of a profile)
CASES: dict[str, tuple[str, Callable[[Profile], TrafficSpec]]] = {
    "mix": ("realistic mix", lambda p: realistic(p.offline_packets, p.seed)),
    "long": ("long flows", lambda p: long_flows(p.offline_packets, p.seed, n_flows=p.offline_flows)),
    "flood": ("SYN flood", lambda p: flood(p.offline_packets, p.seed)),
}


def vxmirror_command() -> list[str]:
    exe = Path(sys.executable).parent / "vxmirror"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vxmirror")
    return [found] if found else [sys.executable, "-m", "receiver.cli"]


def capture_path(work: Path, name: str, spec: TrafficSpec) -> tuple[Path, dict[str, Any]]:
    """The case's generated capture (cached in ``work`` by its spec) and what it holds."""
    tag = hashlib.sha256(repr(spec).encode()).hexdigest()[:10]
    path = work / f"vxlan-{name}-{spec.n_packets}p-s{spec.seed}-{tag}.pcap"
    about = path.with_suffix(".json")
    if path.exists() and about.exists():
        return path, dict(json.loads(about.read_text()))
    t0 = time.perf_counter()
    traffic = generate(spec)
    tmp = path.with_suffix(".part")
    traffic.write_pcap(tmp)
    tmp.rename(path)
    flows = int(traffic.flows.seen().size)
    info = {"packets": traffic.count, "flows": flows, "packets_per_flow": round(traffic.count / max(flows, 1), 2),
            "seed": spec.seed, "bytes": path.stat().st_size, "generate_seconds": round(time.perf_counter() - t0, 2)}
    about.write_text(json.dumps(info))
    return path, info


def _warm(path: Path) -> None:
    """Put the capture in the page cache as reading it from disk leaves it, untimed: every tool
    is then measured on the same warm cache (a capture evicted since an earlier run otherwise
    makes whichever tool reads first pay the disk: measured 5-15x slower). The cache is dropped
    first because how it was filled matters to a reader that maps the file: pages cached by the
    generator's writes cost ``vxmirror read`` 0.1 s more kernel time than the larger blocks a
    sequential read caches (see bench/README.md); tshark copies either alike."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while f.read(16 << 20):
            pass


def _timed(cmd: list[str], stdout: Any) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=stdout, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def _records(path: Path) -> tuple[int, int]:
    """(records, TCP records) of a JSON-lines file."""
    import orjson

    n = tcp = 0
    with open(path, "rb") as f:
        for line in f:
            n += 1
            tcp += orjson.loads(line).get("transport") == "tcp"
    return n, tcp


def _read_in_process(cap: Path) -> float:
    """Seconds for the library call behind ``vxmirror read`` (records serialised, no process start)."""
    import orjson

    t = time.perf_counter()
    for rec in read_records(cap):
        orjson.dumps(rec)
    return time.perf_counter() - t


def _tshark_conversations(text: str) -> int:
    return sum(1 for line in text.splitlines() if "<->" in line)


class _Case:
    """One capture's measurements, repetition by repetition."""

    def __init__(self, name: str, path: Path, info: dict[str, Any]) -> None:
        self.name, self.path, self.info = name, path, info
        self.read_s: list[float] = []
        self.tshark_s: list[float] = []
        self.inproc_s: list[float] = []
        self.dpkt_rates: list[float] = []
        self.conversations = 0

    def repetition(self, out_dir: Path, tshark: str | None, dpkt_packets: int) -> str:
        records = out_dir / f"{self.name}.jsonl"
        self.read_s.append(_timed([*vxmirror_command(), "read", str(self.path), "-o", str(records), "--no-progress",
                                   "--quiet"], subprocess.DEVNULL))
        if tshark:
            conv_out = out_dir / f"{self.name}-conv.txt"
            with open(conv_out, "w") as f:
                self.tshark_s.append(_timed([tshark, "-n", "-r", str(self.path), "-q", "-z", "conv,tcp"], f))
            self.conversations = _tshark_conversations(conv_out.read_text())
        self.inproc_s.append(_read_in_process(self.path))
        t = time.perf_counter()
        k, _flows = dpktloop.aggregate(self.path, dpkt_packets)
        self.dpkt_rates.append(k / (time.perf_counter() - t))
        n = self.info["packets"]
        return (f"{self.name}: read {n / self.read_s[-1]:,.0f}/s"
                + (f", tshark {n / self.tshark_s[-1]:,.0f}/s" if self.tshark_s else "")
                + f", dpkt {self.dpkt_rates[-1]:,.0f}/s")

    def result(self, out_dir: Path, title: str) -> dict[str, Any]:
        n = self.info["packets"]
        n_records, tcp_records = _records(out_dir / f"{self.name}.jsonl")
        read_rates = rates(n, self.read_s)
        result: dict[str, Any] = {
            "title": title,
            "capture": self.info,
            "records": n_records,
            "read_pps": summary(read_rates),
            "read_records_per_second": summary(rates(n_records, self.read_s)),
            "read_seconds": summary(self.read_s),
            "read_in_process_pps": summary(rates(n, self.inproc_s)),
            "read_in_process_records_per_second": summary(rates(n_records, self.inproc_s)),
            "dpkt_pps": summary(self.dpkt_rates),
            "ratio_dpkt": paired_ratio(read_rates, self.dpkt_rates),
            "tcp_flows_vxmirror": tcp_records,
        }
        if self.tshark_s:
            tshark_rates = rates(n, self.tshark_s)
            result.update(
                tshark_pps=summary(tshark_rates),
                tshark_seconds=summary(self.tshark_s),
                ratio_tshark=paired_ratio(read_rates, tshark_rates),
                tcp_conversations_tshark=self.conversations,
            )
        else:
            result["tshark_missing"] = "tshark not on PATH: no tshark comparison"
        return result


def run(profile: Profile, work: Path, log: Any = print) -> dict[str, Any]:
    tshark = shutil.which("tshark")
    cases = []
    for name in profile.offline_cases:
        path, info = capture_path(work, name, CASES[name][1](profile))
        log(f"  {name}: {info['packets']:,} packets, {info['flows']:,} flows, {info['bytes'] / 1e6:.0f} MB")
        cases.append(_Case(name, path, info))
    for case in cases:
        _warm(case.path)
    out_dir = Path(tempfile.mkdtemp(prefix="vxbench-read-", dir=work))
    try:
        for rep in range(profile.repeats):
            for case in cases:
                log(f"  offline rep {rep + 1}/{profile.repeats}, " + case.repetition(out_dir, tshark,
                                                                                      profile.dpkt_packets))
        return {
            "default_case": DEFAULT_CASE if DEFAULT_CASE in profile.offline_cases else profile.offline_cases[0],
            "dpkt_packets": profile.dpkt_packets,
            "cases": {c.name: c.result(out_dir, CASES[c.name][0]) for c in cases},
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def cases_of(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-case results of an offline section; a result from before the cases existed (one
    4,000-flow capture, its figures at the top level) is the ``long`` case."""
    if "cases" in section:
        return dict(section["cases"])
    return {"long": {"title": CASES["long"][0], **section}}


def default_case(section: dict[str, Any]) -> dict[str, Any]:
    cases = cases_of(section)
    return cases.get(str(section.get("default_case", DEFAULT_CASE))) or next(iter(cases.values()))


def cleanup(work: Path) -> None:
    for p in [*work.glob("vxlan-*.pcap"), *work.glob("vxlan-*.json")]:
        os.unlink(p)
