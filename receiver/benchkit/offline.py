"""Offline comparison: ``vxmirror read`` against ``tshark -q -z conv,tcp`` and a dpkt loop.

All three read the same generated VXLAN capture (``receiver.traffic``, seeded) in the same
run, interleaved per repetition (read, tshark, dpkt; read, tshark, dpkt; ...), so machine
noise hits them alike; each repetition gives one ratio per reference. ``vxmirror read`` and
tshark are timed end to end as commands (process start included, page cache warm, records
written to a file / conversations printed). The dpkt loop runs in this process on the first
``dpkt_packets`` packets (it is about 50x slower than the others) and its rate is packets/s
over that subset. The library call behind ``vxmirror read`` (``read_records``, records
serialised with orjson, no process start-up) is timed in this process too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..read import read_records
from ..traffic import write_pcap
from . import dpktloop
from .profiles import Profile
from .stats import paired_ratio, rates, summary


def vxmirror_command() -> list[str]:
    exe = Path(sys.executable).parent / "vxmirror"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vxmirror")
    return [found] if found else [sys.executable, "-m", "receiver.cli"]


def capture_path(work: Path, packets: int, flows: int, seed: int) -> Path:
    """The generated capture (cached in ``work`` by its parameters)."""
    path = work / f"vxlan-{packets}p-{flows}f-s{seed}.pcap"
    if not path.exists():
        tmp = path.with_suffix(".part")
        write_pcap(tmp, packets, flows, seed=seed)
        tmp.rename(path)
    return path


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


def _tcp_records(path: Path) -> int:
    import orjson

    n = 0
    with open(path, "rb") as f:
        for line in f:
            if orjson.loads(line).get("transport") == "tcp":
                n += 1
    return n


def _read_in_process(cap: Path) -> float:
    """Seconds for the library call behind ``vxmirror read`` (records serialised, no process start)."""
    import orjson

    t = time.perf_counter()
    for rec in read_records(cap):
        orjson.dumps(rec)
    return time.perf_counter() - t


def _tshark_conversations(text: str) -> int:
    return sum(1 for line in text.splitlines() if "<->" in line)


def run(profile: Profile, work: Path, log: Any = print) -> dict[str, Any]:
    tshark = shutil.which("tshark")
    t0 = time.perf_counter()
    cap = capture_path(work, profile.offline_packets, profile.offline_flows, profile.seed)
    gen_s = time.perf_counter() - t0
    _warm(cap)
    n = profile.offline_packets
    out_dir = Path(tempfile.mkdtemp(prefix="vxbench-read-", dir=work))
    try:
        records = out_dir / "records.jsonl"
        read_s: list[float] = []
        tshark_s: list[float] = []
        dpkt_rates: list[float] = []
        inproc_s: list[float] = []
        conv_out = out_dir / "conv.txt"
        for rep in range(profile.repeats):
            read_s.append(_timed([*vxmirror_command(), "read", str(cap), "-o", str(records), "--no-progress",
                                  "--quiet"], subprocess.DEVNULL))
            if tshark:
                with open(conv_out, "w") as f:
                    tshark_s.append(_timed([tshark, "-n", "-r", str(cap), "-q", "-z", "conv,tcp"], f))
            inproc_s.append(_read_in_process(cap))
            t = time.perf_counter()
            k, _flows = dpktloop.aggregate(cap, profile.dpkt_packets)
            dpkt_rates.append(k / (time.perf_counter() - t))
            log(f"  offline rep {rep + 1}/{profile.repeats}: read {n / read_s[-1]:,.0f}/s"
                + (f", tshark {n / tshark_s[-1]:,.0f}/s" if tshark_s else "") + f", dpkt {dpkt_rates[-1]:,.0f}/s")
        read_rates = rates(n, read_s)
        result: dict[str, Any] = {
            "capture": {"packets": n, "flows": profile.offline_flows, "seed": profile.seed,
                        "bytes": cap.stat().st_size, "generate_seconds": round(gen_s, 2)},
            "dpkt_packets": profile.dpkt_packets,
            "read_pps": summary(read_rates),
            "read_seconds": summary(read_s),
            "read_in_process_pps": summary(rates(n, inproc_s)),
            "dpkt_pps": summary(dpkt_rates),
            "ratio_dpkt": paired_ratio(read_rates, dpkt_rates),
            "tcp_flows_vxmirror": _tcp_records(records),
        }
        if tshark_s:
            tshark_rates = rates(n, tshark_s)
            result.update(
                tshark_pps=summary(tshark_rates),
                tshark_seconds=summary(tshark_s),
                ratio_tshark=paired_ratio(read_rates, tshark_rates),
                tcp_conversations_tshark=_tshark_conversations(conv_out.read_text()),
            )
        else:
            result["tshark_missing"] = "tshark not on PATH: no tshark comparison"
        return result
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def cleanup(work: Path) -> None:
    for p in work.glob("vxlan-*.pcap"):
        os.unlink(p)
