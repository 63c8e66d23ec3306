"""Pcap writer throughput: frames/s and MB/s, frame copying (frame_block) and encoding+writing.

    .venv/bin/python bench/bench_pcap_writer.py [--frames 1000000] [--batch 1024] [--dir /tmp]

Frames are decapsulated out of VXLAN packets held in listener-like slots
(2048 bytes), inner sizes uniform 60..1400 bytes (mean ~730). Reports, per
format: frame_block alone; encode alone; the PcapSink (encode + write to
page cache, rotation at 256 MiB, no fsync); and dpkt's Writer for reference.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import dpkt
import numpy as np

from forwarders import pcap_classic, pcapng
from forwarders.api import SinkContext
from forwarders.frames import frame_block
from forwarders.pcap import PcapConfig, PcapSink
from receiver.packets import Decapsulated, Layer, PacketBatch


def make_slots(n: int, slot: int = 2048, seed: int = 1) -> tuple[PacketBatch, Decapsulated]:
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, 256, (n, slot), dtype=np.uint8)
    lengths = (8 + rng.integers(60, 1400, n)).astype(np.uint32)
    ts = 1.7e9 + np.arange(n) * 1e-6
    batch = PacketBatch.from_slots(slots, lengths, ts, Layer.VXLAN)
    decap = Decapsulated(inner_start=batch.start + 8, vni=rng.integers(1, 4, n).astype(np.int64))
    return batch, decap


def report(name: str, frames: int, nbytes: int, seconds: float) -> None:
    print(f"{name:38s} {frames / seconds / 1e6:6.2f} M frames/s  {nbytes / seconds / 1e6:7.0f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    batch, decap = make_slots(a.batch)
    rounds = max(1, a.frames // a.batch)
    total = rounds * a.batch

    t = time.perf_counter()
    for _ in range(rounds):
        block = frame_block(batch, decap, False, 65535)
    dt = time.perf_counter() - t
    nbytes = len(block.data) * rounds
    report("frame_block (copy out, decapsulated)", total, nbytes, dt)

    t = time.perf_counter()
    for _ in range(rounds):
        pcap_classic.encode(block)
    report("encode classic pcap", total, nbytes, time.perf_counter() - t)
    iface = np.zeros(block.count, np.uint32)
    t = time.perf_counter()
    for _ in range(rounds):
        pcapng.encode(block, iface)
    report("encode pcapng", total, nbytes, time.perf_counter() - t)

    base = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        for fmt in ("pcap", "pcapng"):
            out = base / fmt
            sink = PcapSink(
                PcapConfig(directory=str(out), format=fmt, fsync=False), SinkContext("bench", base)
            )
            t = time.perf_counter()
            for _ in range(rounds):
                sink.write(block)
            sink.close()
            dt = time.perf_counter() - t
            size = sum(f.stat().st_size for f in out.iterdir())
            report(f"PcapSink {fmt} (encode + write)", total, size, dt)
            shutil.rmtree(out)
        frames = [block.data[o : o + c] for o, c in zip(block.offset.tolist(), block.caplen.tolist())]
        tsl = block.ts.tolist()
        n_dpkt = min(rounds, max(1, 200_000 // a.batch))
        buf = io.BytesIO()
        w = dpkt.pcap.Writer(buf, nano=True)
        t = time.perf_counter()
        for _ in range(n_dpkt):
            for f, ts in zip(frames, tsl):
                w.writepkt(f, ts)
        report("dpkt pcap.Writer (reference)", n_dpkt * a.batch, buf.tell(), time.perf_counter() - t)
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
