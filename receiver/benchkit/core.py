"""The decode+aggregate core alone: packets/s of ``Engine.process`` over batches in memory.

The generated traffic (``receiver.traffic``, VXLAN outer frames, the realistic mix) is
assembled into batches of ``core_batch`` packets before the clock starts; each repetition
feeds all of them to a fresh Engine (default config: excerpts and application metadata on)
in one process, so it is one core's figure. Records the engine emits on the way count in;
``finish`` (the end-of-input flush) does not. The measurement runs in a fresh process with
the CLI's process settings (``receiver.process.memtune``): inside the harness, after the other
sections, the same loop measured 35-40 % slower (what those sections leave in the process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..config.engine import EngineConfig
from ..engine import Engine
from ..packets import PacketBatch
from ..traffic import TrafficSpec, generate
from .child import run_module
from .profiles import Profile
from .stats import summary


def batches(packets: int, flows: int, batch: int, seed: int) -> list[PacketBatch]:
    traffic = generate(TrafficSpec(n_packets=packets, n_flows=flows, seed=seed, chunk=batch))
    return list(traffic.batches())


def run(profile: Profile, log: Any = print) -> dict[str, Any]:
    args = ["--packets", str(profile.core_packets), "--flows", str(profile.offline_flows), "--batch",
            str(profile.core_batch), "--seed", str(profile.seed), "--repeats", str(profile.repeats)]
    # OpenBLAS kept to one thread, as the CLI does before numpy loads
    return run_module("receiver.benchkit.core", args, log, env={"OPENBLAS_NUM_THREADS": "1"})


def measure(packets: int, flows: int, batch: int, seed: int, repeats: int, log: Any = print) -> dict[str, Any]:
    bs = batches(packets, flows, batch, seed)
    n = sum(b.count for b in bs)
    rates: list[float] = []
    rates_no_excerpts: list[float] = []
    for rep in range(repeats):
        bare = EngineConfig(excerpt_bytes=0, app_metadata=False)
        for cfg, out in ((EngineConfig(), rates), (bare, rates_no_excerpts)):
            engine = Engine(cfg)
            t = time.perf_counter()
            for b in bs:
                engine.process(b)
            out.append(n / (time.perf_counter() - t))
        log(f"  core rep {rep + 1}/{repeats}: {rates[-1]:,.0f} packets/s "
            f"({rates_no_excerpts[-1]:,.0f} without excerpts and app metadata)")
    return {
        "packets": n,
        "batch": batch,
        "flows": flows,
        "pps": summary(rates),
        "pps_no_excerpts_no_app": summary(rates_no_excerpts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="the decode+aggregate core, one process (JSON on stdout)")
    ap.add_argument("--packets", type=int, required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    result = measure(a.packets, a.flows, a.batch, a.seed, a.repeats, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from ..process import memtune

    memtune.tune()  # malloc thresholds; OPENBLAS_NUM_THREADS comes from run_module's environment
    sys.exit(main())
