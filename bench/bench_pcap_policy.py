"""What the capture policy saves: pcap bytes and frames on the benchmark's traffic, written
with the default policy against every frame (the engine plans the frames, the pcap forwarder
writes them, as in the service).

    .venv/bin/python bench/bench_pcap_policy.py [--packets N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from forwarders import registry
from forwarders.manager import ForwarderSet
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.traffic import generate, long_flows, realistic


def run(traffic: Any, keep: list[dict[str, Any]] | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        pcap: dict[str, Any] = {"directory": f"{tmp}/pcap", "fsync": False}
        if keep is not None:
            pcap["keep"] = keep
        fs = ForwarderSet.from_specs(registry.validate({"pcap": pcap}, "bench.toml"), tmp, worker=0)
        engine = Engine(EngineConfig())
        engine.capture = fs.capture()
        written = skipped = 0
        t0 = time.perf_counter()
        for batch in traffic.batches():
            engine.capture.open = fs.capture_open
            result = engine.process(batch)
            fs.submit(result, batch)
        records = engine.finish("end_of_input")
        fs.close(120)
        seconds = time.perf_counter() - t0
        for rec in records:
            written += rec["pcap"]["packets"]
            skipped += rec["pcap"]["skipped"]
        size = sum(p.stat().st_size for p in Path(tmp, "pcap").glob("*.pcap"))
        index = sum(p.stat().st_size for p in Path(tmp, "pcap").glob("*.idx"))
    return {"bytes": size, "index_bytes": index, "frames_skipped": skipped, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=300_000)
    args = ap.parse_args()
    for name, spec in (("realistic", realistic(args.packets)), ("long flows", long_flows(args.packets))):
        traffic = generate(spec)
        wire = int(sum(int(b.wirelen.sum()) for b in traffic.batches()))
        every = run(traffic, [])
        default = run(traffic, None)
        print(f"{name}: {traffic.count} packets, {wire / 1e6:.1f} MB of datagrams")
        print(f"  every frame:    {every['bytes'] / 1e6:8.1f} MB pcap, index {every['index_bytes'] / 1e6:.1f} MB")
        print(f"  default policy: {default['bytes'] / 1e6:8.1f} MB pcap, index {default['index_bytes'] / 1e6:.1f} MB, "
              f"{default['frames_skipped']} frames not written: {100 * (1 - default['bytes'] / every['bytes']):.0f} % "
              "fewer bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
