"""Records/s the Splunk HEC and Kafka forwarders sustain against the local servers.

    .venv/bin/python bench/bench_forwarders.py [--records 300000] [--batch 500] [--json out.json]

Records: the engine's own, over generated traffic (``receiver.benchkit.jsonl_sink.make_records``,
``--distinct`` of them, ~870 bytes of JSON each), as one RecordBatch repeated up to ``--records``.

For each sink: ``encode`` alone (and gzip for HEC: the sensor-side CPU per record), ``send``
called directly in a loop, and end to end through the shared runner (``RecordForwarder.put``
of 1,000-record slices, as the engine hands them over, until ``sent`` equals the input).
HEC runs against the in-repo HEC server (tests/hec_server.py) in a process of its own,
counting events without parsing them; Kafka against Tansu on loopback (memory storage, a new
topic per measurement: Tansu slows down as a topic grows). Both servers share this machine's
cores with the client.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kafka_fixtures import Tansu

from forwarders.api import RecordSink, SinkContext
from forwarders.kafka import KafkaConfig, KafkaSink
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings
from forwarders.splunk_hec import SplunkHecConfig, SplunkHecSink
from receiver.benchkit.jsonl_sink import make_records
from receiver.config.schema import from_table
from receiver.flows.recordbatch import RecordBatch

TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parent.parent


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def realistic(n: int, distinct: int) -> RecordBatch:
    """``n`` records: the engine's records over generated traffic, repeated."""
    base = RecordBatch.from_records(make_records(distinct))
    return RecordBatch.concat([base] * -(-n // len(base))).slice(0, n)


def chunks(batch: RecordBatch, size: int) -> list[RecordBatch]:
    return [batch.slice(i, i + size) for i in range(0, len(batch), size)]


def bench_encode(sink: RecordSink, batch: RecordBatch, size: int, gz: bool = False) -> float:
    parts = chunks(batch, size)
    t = time.perf_counter()
    for b in parts:
        p = sink.encode(b)
        if gz:
            gzip.compress(p, 1, mtime=0)
    return rate(len(batch), time.perf_counter() - t)


def bench_send(sink: RecordSink, batch: RecordBatch, size: int) -> float:
    payloads = [(sink.encode(b), len(b)) for b in chunks(batch, size)]
    t = time.perf_counter()
    for p, n in payloads:
        sink.send(p, n)
    return rate(len(batch), time.perf_counter() - t)


def bench_runner(sink: RecordSink, batch: RecordBatch, size: int) -> float:
    """End to end through the runner; the queue holds everything (nothing spooled)."""
    s = from_table(RunnerSettings, {"batch_max_records": size, "batch_max_bytes": size * 4096,
                                    "batch_interval": 0.05, "queue_max": len(batch) + 1})
    fwd = RecordForwarder(sink, s)
    parts = chunks(batch, 1000)
    t = time.perf_counter()
    for b in parts:
        fwd.put(b)
    while (c := fwd.counters())["sent"] < len(batch):
        if c["dropped"] or c["spooled"]:
            raise RuntimeError(f"records lost or spooled in the benchmark: {c}")
        time.sleep(0.002)
    r = rate(len(batch), time.perf_counter() - t)
    fwd.close()
    return r


class HecProcess:
    """tests/hec_server.py in a process of its own (counting events, not keeping them)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "hec_server.py"), "--token", TOKEN, "--ack"],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the HEC server did not start")

    def stop(self) -> dict[str, int]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def measure_hec(batch: RecordBatch, size: int, tmp: Path, out: dict[str, float]) -> None:
    srv = HecProcess()
    sent = 0
    try:
        def hec(**kw: Any) -> SplunkHecSink:
            cfg = from_table(SplunkHecConfig, {"url": srv.url, **kw})
            return SplunkHecSink(cfg, SinkContext("splunk_hec", tmp))

        def timed(key: str, fn: Callable[[], float], n: int) -> None:
            nonlocal sent
            out[key] = fn()
            sent += n

        out["hec_encode"] = bench_encode(hec(), batch, size)
        out["hec_encode_gzip1"] = bench_encode(hec(), batch, size, gz=True)
        gz_n = batch.slice(0, max(len(batch) // 3, size))  # gzip is the slow part: fewer records
        timed("hec_send_plain", lambda: bench_send(hec(gzip=False), batch, size), len(batch))
        timed("hec_send_gzip", lambda: bench_send(hec(), gz_n, size), len(gz_n))
        timed("hec_send_ack", lambda: bench_send(hec(gzip=False, ack=True, ack_poll_interval=0.05), gz_n, size),
              len(gz_n))
        timed("hec_runner_plain", lambda: bench_runner(hec(gzip=False), batch, size), len(batch))
        timed("hec_runner_plain_batch2000", lambda: bench_runner(hec(gzip=False), batch, 2000), len(batch))
        timed("hec_runner_gzip", lambda: bench_runner(hec(), gz_n, size), len(gz_n))
    finally:
        counts = srv.stop()
    if counts.get("events", 0) < sent:
        raise RuntimeError(f"the HEC server counted {counts} events, {sent} were sent")


def measure_kafka(batch: RecordBatch, size: int, tmp: Path, out: dict[str, float]) -> None:
    broker = Tansu().start()
    try:
        topics = iter(range(1_000))

        def kafka(**kw: Any) -> KafkaSink:
            # a fresh topic per measurement: Tansu's memory storage slows down as a topic grows
            cfg = from_table(KafkaConfig, {"brokers": broker.bootstrap, "topic": f"bench{next(topics)}",
                                           "linger_ms": 5, **kw})
            k = KafkaSink(cfg, SinkContext("kafka", tmp))
            k.send(k.encode(batch.slice(0, 10)), 10)  # topic creation and metadata outside the timing
            return k

        out["kafka_encode"] = bench_encode(kafka(), batch, size)
        out["kafka_send"] = bench_send(kafka(), batch, size)
        out["kafka_send_batch5000"] = bench_send(kafka(), batch, 5000)
        out["kafka_send_lz4_batch5000"] = bench_send(kafka(compression="lz4"), batch, 5000)
        out["kafka_runner"] = bench_runner(kafka(), batch, size)
        out["kafka_runner_batch5000"] = bench_runner(kafka(), batch, 5000)
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--distinct", type=int, default=30_000, help="distinct records made by the engine")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--only", choices=("hec", "kafka"), help="one of the two")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    batch = realistic(a.records, min(a.distinct, a.records))
    out: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-fwd-"))
    os.environ["VXMIRROR_HEC_TOKEN"] = TOKEN
    if a.only in (None, "hec"):
        measure_hec(batch, a.batch, tmp, out)
    if a.only in (None, "kafka"):
        measure_kafka(batch, a.batch, tmp, out)
    print(f"{len(batch):,} records, {len(batch.data) / len(batch):.0f} bytes of JSON each, batches of {a.batch}")
    for k, v in out.items():
        print(f"{k:26s} {v:>12,.0f} records/s")
    if a.json:
        Path(a.json).write_text(json.dumps({"records": len(batch), "batch": a.batch, **out}, indent=1))


if __name__ == "__main__":
    main()
