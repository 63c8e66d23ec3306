"""The decode+aggregate core alone: packets/s of ``Engine.process`` over batches in memory.

The generated traffic (``receiver.traffic``, VXLAN outer frames, the realistic mix) is
assembled into batches of ``core_batch`` packets before the clock starts; each repetition
feeds all of them to a fresh Engine (default config: excerpts and application metadata on)
in this one process, so it is one core's figure. Records the engine emits on the way count
in; ``finish`` (the end-of-input flush) does not.
"""

from __future__ import annotations

import time
from typing import Any

from ..engine import Engine
from ..packets import PacketBatch
from ..settings import EngineConfig
from ..traffic import TrafficSpec, generate
from .profiles import Profile
from .stats import summary


def batches(packets: int, flows: int, batch: int, seed: int) -> list[PacketBatch]:
    traffic = generate(TrafficSpec(n_packets=packets, n_flows=flows, seed=seed, chunk=batch))
    return list(traffic.batches())


def run(profile: Profile, log: Any = print) -> dict[str, Any]:
    bs = batches(profile.core_packets, profile.offline_flows, profile.core_batch, profile.seed)
    n = sum(b.count for b in bs)
    rates: list[float] = []
    rates_no_excerpts: list[float] = []
    for rep in range(profile.repeats):
        bare = EngineConfig(excerpt_bytes=0, app_metadata=False)
        for cfg, out in ((EngineConfig(), rates), (bare, rates_no_excerpts)):
            engine = Engine(cfg)
            t = time.perf_counter()
            for b in bs:
                engine.process(b)
            out.append(n / (time.perf_counter() - t))
        log(f"  core rep {rep + 1}/{profile.repeats}: {rates[-1]:,.0f} packets/s "
            f"({rates_no_excerpts[-1]:,.0f} without excerpts and app metadata)")
    return {
        "packets": n,
        "batch": profile.core_batch,
        "flows": profile.offline_flows,
        "pps": summary(rates),
        "pps_no_excerpts_no_app": summary(rates_no_excerpts),
    }
