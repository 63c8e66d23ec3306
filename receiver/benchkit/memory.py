"""Memory per active flow at a given number of concurrent flows.

Each measurement runs in a fresh process (``python -m receiver.benchkit.memory``) so that
the baseline is clean: build the packet template, note the resident set (or start
tracemalloc), create an Engine, feed it ``flows`` distinct TCP flows (one packet each way,
64 bytes of opaque payload each, so excerpts and the application parsers' per-flow state are
exercised; nothing expires), then measure again with every flow still open. Three figures:

- ``table_bytes_per_slot``: ``Engine.table.bytes_per_flow()``, the numpy columns, hash index
  and free list per flow slot (the table grows by doubling, so slots >= flows);
- ``table_bytes_per_flow``: the same total divided by the flows actually open;
- ``rss_bytes_per_flow``: growth of the process's resident set per open flow (everything:
  table, excerpt pool, per-flow Python objects of the application parsers, allocator slack);
- ``traced_bytes_per_flow``: growth of what tracemalloc sees (Python objects and numpy
  buffers), measured in a separate process because tracing inflates the resident set.

Three configurations: the default (excerpts of 128 bytes, application metadata on),
excerpts off, and excerpts and application metadata off (the flow table alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config.engine import EngineConfig
from ..engine import Engine
from ..packets import Layer, PacketBatch
from .child import run_module
from .profiles import Profile

SLOT = 128
PAYLOAD = 64
FLOWS_PER_BATCH = 4096
VNI = 7
# (excerpt bytes, application metadata): the default, excerpts off, and the flow table alone
CONFIGS = ((EngineConfig().excerpt_bytes, True), (0, True), (0, False))


def _template() -> np.ndarray:
    """One VXLAN datagram (as the listener receives it): VXLAN, Ethernet, IPv4, TCP, payload."""
    t = np.zeros(SLOT, np.uint8)
    t[0] = 0x08  # VXLAN I flag
    t[4:7] = [0, 0, VNI]
    t[8:14] = [2, 0, 0, 0, 0, 2]
    t[14:20] = [2, 0, 0, 0, 0, 1]
    t[20:22] = [0x08, 0x00]
    ip = 22
    t[ip] = 0x45
    tot = 20 + 20 + PAYLOAD
    t[ip + 2 : ip + 4] = [tot >> 8, tot & 255]
    t[ip + 6] = 0x40
    t[ip + 8] = 64
    t[ip + 9] = 6
    tcp = ip + 20
    t[tcp + 12] = 0x50
    t[tcp + 13] = 0x18  # PSH|ACK
    t[tcp + 14 : tcp + 16] = [0xFF, 0xFF]
    # opaque payload (no HTTP verb, TLS record or DNS port)
    t[tcp + 20 : tcp + 20 + PAYLOAD] = np.arange(PAYLOAD, dtype=np.uint8) ^ 0x5A
    return t


def _batches(flows: int) -> Iterator[PacketBatch]:
    tmpl = _template()
    ip, tcp = 22, 42
    t0 = 1_700_000_000.0
    for lo in range(0, flows, FLOWS_PER_BATCH):
        f = np.arange(lo, min(lo + FLOWS_PER_BATCH, flows), dtype=np.int64)
        n = f.size
        slots = np.tile(tmpl, (2 * n, 1))
        client = (10 << 24) | (f & 0xFFFFFF)
        server = np.full(n, (172 << 24) | (16 << 16) | 1, np.int64)
        cport = 1024 + f % 60000
        sport = np.full(n, 8080, np.int64)
        for half, (src, dst, sp, dp) in enumerate(((client, server, cport, sport), (server, client, sport, cport))):
            rows = slots[half * n : (half + 1) * n]
            for off, val, width in ((ip + 12, src, 4), (ip + 16, dst, 4), (tcp, sp, 2), (tcp + 2, dp, 2)):
                for b in range(width):
                    rows[:, off + b] = (val >> (8 * (width - 1 - b))) & 0xFF
        order = np.stack([np.arange(n), np.arange(n) + n], axis=1).reshape(-1)  # client, server, client, ...
        slots = slots[order]
        ts = (t0 + (lo * 2 + np.arange(2 * n)) * 1e-7).astype(np.float64)
        yield PacketBatch.from_slots(slots, np.full(2 * n, 8 + 14 + 20 + 20 + PAYLOAD, np.uint32), ts, Layer.VXLAN)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(flows: int, excerpt_bytes: int, app_metadata: bool, mode: str) -> dict[str, Any]:
    cfg = EngineConfig(excerpt_bytes=excerpt_bytes, app_metadata=app_metadata,
                       max_flows=max(EngineConfig().max_flows, flows))
    list(_batches(min(flows, 16)))  # warm imports and code paths outside the baseline
    if mode == "tracemalloc":
        tracemalloc.start()
    before_rss = _rss()
    before_traced = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else 0
    engine = Engine(cfg)
    records = 0
    for b in _batches(flows):
        records += len(engine.process(b).records)
    out: dict[str, Any] = {"flows": flows, "excerpt_bytes": excerpt_bytes, "app_metadata": app_metadata, "mode": mode}
    active = engine.table.n_used
    out.update(
        active=active,
        records_emitted=records,
        capacity=engine.table.capacity,
        table_bytes_per_slot=engine.table.bytes_per_flow(),
        table_bytes_per_flow=engine.table.bytes_per_flow() * engine.table.capacity / max(active, 1),
        excerpt_pool_bytes=engine.excerpts.nbytes() if engine.excerpts else 0,
        app_states=len(engine.app),
    )
    if mode == "tracemalloc":
        out["traced_bytes_per_flow"] = (tracemalloc.get_traced_memory()[0] - before_traced) / max(active, 1)
        tracemalloc.stop()
    else:
        out["rss_bytes_per_flow"] = (_rss() - before_rss) / max(active, 1)
    return out


def measure_in_subprocess(flows: int, excerpt_bytes: int, app_metadata: bool, mode: str) -> dict[str, Any]:
    return run_module("receiver.benchkit.memory", ["--flows", str(flows), "--excerpt-bytes", str(excerpt_bytes),
                                                   "--mode", mode, *([] if app_metadata else ["--no-app-metadata"])])


def run(profile: Profile, log: Any = print) -> dict[str, Any]:
    rows = []
    for flows in profile.memory_flows:
        for excerpt, app in CONFIGS:
            rss = measure_in_subprocess(flows, excerpt, app, "rss")
            traced = measure_in_subprocess(flows, excerpt, app, "tracemalloc")
            row = {**rss, "traced_bytes_per_flow": traced["traced_bytes_per_flow"]}
            row.pop("mode", None)
            rows.append(row)
            log(f"  memory {flows:>9,} flows, excerpts {excerpt:>3}, app {'on ' if app else 'off'}: "
                f"table {row['table_bytes_per_flow']:.0f} B/flow "
                f"({row['table_bytes_per_slot']:.0f} B/slot), RSS {row['rss_bytes_per_flow']:.0f} B/flow, "
                f"traced {row['traced_bytes_per_flow']:.0f} B/flow")
    return {"payload_bytes_each_way": PAYLOAD, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description="one memory-per-flow measurement (JSON on stdout)")
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--excerpt-bytes", type=int, default=128)
    ap.add_argument("--no-app-metadata", action="store_true")
    ap.add_argument("--mode", choices=("rss", "tracemalloc"), default="rss")
    a = ap.parse_args()
    print(json.dumps(measure(a.flows, a.excerpt_bytes, not a.no_app_metadata, a.mode)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
