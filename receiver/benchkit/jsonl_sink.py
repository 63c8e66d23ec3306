"""Records/s of the JSON-lines forwarder (the embedded default) through the shared runner.

Needs only the installed package: flow records come from the engine over generated traffic,
the sink writes to a temporary directory (page cache; rotation at its default size), and
the clock runs from the first ``put`` until the runner's ``sent`` counter equals the input.
(The Splunk HEC and Kafka figures come from bench/bench_forwarders.py, which needs the
in-repo HEC server and the Tansu broker.)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from forwarders.api import SinkContext
from forwarders.jsonl import JsonlConfig, JsonlSink
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings

from ..config.schema import from_table
from ..engine import Engine
from ..flows.record import FlowRecord
from ..traffic import TrafficSpec, generate
from .profiles import Profile
from .stats import summary


def make_records(n: int, seed: int = 11) -> list[FlowRecord]:
    """About ``n`` realistic flow records (the engine's output over generated traffic)."""
    traffic = generate(TrafficSpec(n_packets=n * 6, n_flows=n, seed=seed, duration=10.0))
    engine = Engine()
    out: list[FlowRecord] = []
    for b in traffic.batches():
        out.extend(engine.process(b).records)
    out.extend(engine.finish("end_of_input"))
    return out


def through_runner(records: list[FlowRecord], work: Path, batch: int = 500) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="vxbench-jsonl-", dir=work))
    try:
        sink = JsonlSink(from_table(JsonlConfig, {}), SinkContext("jsonl", tmp))
        fwd = RecordForwarder(sink, from_table(RunnerSettings, {"batch_max_records": batch, "batch_interval": 0.05,
                                                                "queue_max": len(records) + 1}))
        t = time.perf_counter()
        for i in range(0, len(records), 1000):
            fwd.put(records[i : i + 1000])
        while (c := fwd.counters())["sent"] < len(records):
            if c["spooled"] or c.get("dropped"):
                raise RuntimeError(f"records lost or spooled in the benchmark: {c}")
            time.sleep(0.002)
        rate = len(records) / (time.perf_counter() - t)
        fwd.close()
        return rate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(profile: Profile, work: Path, log: Any = print) -> dict[str, Any]:
    records = make_records(profile.forwarder_records)
    rates = []
    for rep in range(profile.repeats):
        rates.append(through_runner(records, work))
        log(f"  jsonl rep {rep + 1}/{profile.repeats}: {rates[-1]:,.0f} records/s")
    return {"records": len(records), "records_per_second": summary(rates)}
