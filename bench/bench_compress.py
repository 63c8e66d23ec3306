"""CPU cost of compressing closed output files (``compress = "gzip"``), on realistic content.

    .venv/bin/python bench/bench_compress.py [--packets 300000] [--levels 1,3,6] [--dir /tmp]

The realistic benchmark mix (receiver.traffic.realistic: HTTP, TLS with encrypted server
flights, DNS, scans, ICMP over several VNIs) is generated as mirrored (VXLAN) traffic, run
through the engine and written by the pcap sink as it would be by ``vxmirror serve``
(decapsulated frames). The closed pcap is then compressed with forwarders.compress (what the
background thread runs) at each level: input MB/s of one core (process CPU time, so the
figure holds on a loaded machine), and the compression ratio. The JSON lines of the same
traffic's flow records are measured the same way, and any ``--file`` given (a real capture). The
generator's payloads are pseudo-random bytes, as encrypted traffic is, so gzip barely shrinks its
pcap; they repeat farther apart than gzip's 32 KiB window, which zstd's window reaches: the zstd
command's ratio, shown for comparison when it is installed, flatters it on this content (zstd is
not an option of the service: see docs/forwarders.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from forwarders.api import SinkContext
from forwarders.compress import compress_file
from forwarders.frames import frame_block
from forwarders.pcap import PcapConfig, PcapSink
from receiver.capture import open_capture
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.traffic import generate, realistic


def make_files(work: Path, packets: int) -> tuple[Path, Path]:
    """(the pcap the sink wrote, the JSON lines of the records) for the realistic mix."""
    mirrored = work / "mirrored.pcap"
    generate(realistic(packets, seed=7)).write_pcap(mirrored)
    out = work / "pcap"
    sink = PcapSink(PcapConfig(directory=str(out), rotate_bytes=1 << 40, fsync=False), SinkContext("pcap", work))
    engine = Engine(EngineConfig())
    records = bytearray()
    for batch in open_capture(mirrored).batches():
        result = engine.process(batch)
        records += result.records.data
        sink.write(frame_block(batch, result.decap, False, 65535))
    records += engine.finish("end_of_input").data
    sink.close()
    (pcap,) = out.glob("*.pcap")
    jsonl = work / "flows.jsonl"
    jsonl.write_bytes(bytes(records))
    return pcap, jsonl


def measure(src: Path, level: int) -> tuple[float, float, float]:
    """(MB/s of input per CPU second, MB/s wall clock, ratio out/in) of one compression."""
    work = src.with_name(f"copy-{level}-{src.name}")
    shutil.copyfile(src, work)
    c0, w0 = time.thread_time(), time.perf_counter()
    done = compress_file(work, "gzip", level, threading.Lock())
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    assert done is not None
    out, size_in, size_out = done
    out.unlink()
    return size_in / cpu / 1e6, size_in / wall / 1e6, size_out / size_in


def zstd_rate(src: Path, level: int) -> tuple[float, float] | None:
    if shutil.which("zstd") is None:
        return None
    t0 = time.perf_counter()
    r = subprocess.run(["zstd", "-q", f"-{level}", "-T1", "-c", str(src)], capture_output=True, check=True)
    dt = time.perf_counter() - t0
    return src.stat().st_size / dt / 1e6, len(r.stdout) / src.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--levels", default="1,3,6")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--file", action="append", default=[], help="also measure this file (a real capture)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        pcap, jsonl = make_files(Path(tmp), a.packets)
        files = [("pcap (decapsulated frames)", pcap), ("JSON lines (flow records)", jsonl)]
        for i, f in enumerate(a.file):
            files.append((f, Path(tmp) / f"file{i}-{Path(f).name}"))
            shutil.copyfile(f, files[-1][1])
        for name, path in files:
            size = path.stat().st_size
            print(f"{name}: {size / 1e6:.1f} MB")
            for level in (int(x) for x in a.levels.split(",")):
                cpu_rate, wall_rate, ratio = measure(path, level)
                print(f"  gzip -{level}: {cpu_rate:6.1f} MB/s per CPU second ({wall_rate:6.1f} MB/s wall), "
                      f"size {ratio * 100:5.1f} %")
            z = zstd_rate(path, 3)
            if z is not None:
                print(f"  zstd -3 (command, for comparison): {z[0]:6.1f} MB/s wall, size {z[1] * 100:5.1f} %")


if __name__ == "__main__":
    main()
