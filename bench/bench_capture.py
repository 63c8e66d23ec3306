"""Capture reader throughput: records/s of the offset scan and of whole batches.

    .venv/bin/python bench/bench_capture.py [--records 1000000] [--file PATH]

Generates (once, cached under /tmp) a classic pcap of N records with frame sizes
drawn from 60..1514 bytes (mixed, like mirrored traffic), then times, page cache warm:

- the tight Python loop scan (``capture_pcap.scan_loop``),
- the speculative vectorized scan (``capture_pcap.scan_lanes`` windows),
- ``open_capture(...).batches(8192)`` end to end (scan + ts/caplen/wirelen columns),
- dpkt's ``pcap.Reader`` iterating the same file (reference).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from receiver.capture import open_capture
from receiver.capture import pcap as capture_pcap


def generate(path: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(n) < 0.4, rng.integers(60, 200, n), rng.integers(200, 1515, n))
    payload = rng.integers(0, 256, 1600, dtype=np.uint8).tobytes()
    t0 = 1_700_000_000.0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        buf = bytearray()
        for i in range(n):
            s = int(sizes[i])
            ts = t0 + i * 1e-5
            sec = int(ts)
            buf += struct.pack("<IIII", sec, int((ts - sec) * 1e6), s, s)
            buf += payload[:s]
            if len(buf) > 1 << 24:
                f.write(buf)
                buf.clear()
        f.write(buf)


def best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--file", type=Path)
    ap.add_argument("--no-dpkt", action="store_true")
    a = ap.parse_args()
    path = a.file or Path(f"/tmp/vxmirror-bench-capture-{a.records}.pcap")
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        generate(path, a.records)
    size = os.path.getsize(path)
    cap = open_capture(path)
    arr = cap._arr
    end = arr.shape[0]

    def loop() -> int:
        return int(capture_pcap.scan_loop(arr, 24, end, False).offsets.shape[0])

    def lanes() -> int:
        pos, n = 24, 0
        while pos < end:
            r = capture_pcap.scan(arr, pos, end, False, 1_000_000)
            n += r.offsets.shape[0]
            if r.truncated or r.bad:
                break
            pos = r.next_pos
        return n

    def batches() -> int:
        with open_capture(path) as c:
            return sum(b.count for b in c.batches(8192))

    n = batches()
    assert loop() == n == lanes(), (loop(), n, lanes())
    print(f"file: {path} ({size / 1e6:.0f} MB, {n} records)")
    rows = [
        ("scan: Python loop", best(loop)),
        ("scan: speculative lanes", best(lanes)),
        ("open_capture().batches(8192)", best(batches)),
    ]
    if not a.no_dpkt:
        import dpkt

        def dpkt_reader() -> int:
            with open(path, "rb") as f:
                return sum(1 for _ in dpkt.pcap.Reader(f))

        rows.append(("dpkt pcap.Reader (reference)", best(dpkt_reader, 1)))
    for name, t in rows:
        print(f"{name:34s} {t * 1e3:8.1f} ms  {n / t / 1e6:7.2f} M records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
