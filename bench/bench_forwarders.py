"""Records/s the Splunk HEC and Kafka forwarders sustain against the local servers.

    .venv/bin/python bench/bench_forwarders.py [--records 100000] [--batch 500] [--json out.json]

For each sink: ``encode`` alone (and gzip for HEC: the sensor-side CPU per record),
``send`` called directly in a loop, and end to end through the shared runner
(``RecordForwarder.put`` until ``sent`` equals the input). HEC runs against the
in-repo HEC server (tests/hec_server.py, a Python server that parses every event:
on this 2-core machine it shares the CPUs with the client and is usually the limit);
Kafka against Tansu on loopback (memory storage).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hec_server import HecServer, Token
from kafka_fixtures import Tansu, make_records

from forwarders.api import RecordSink, SinkContext
from forwarders.kafka import KafkaConfig, KafkaSink
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings
from forwarders.splunk_hec import SplunkHecConfig, SplunkHecSink
from receiver.configschema import from_table

TOKEN = "bench-token"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_encode(sink: RecordSink, recs: list[Any], batch: int, gz: bool = False) -> float:
    t = time.perf_counter()
    for i in range(0, len(recs), batch):
        p = sink.encode(recs[i : i + batch])
        if gz:
            gzip.compress(p, 1, mtime=0)
    return rate(len(recs), time.perf_counter() - t)


def bench_send(sink: RecordSink, recs: list[Any], batch: int) -> float:
    payloads = [(sink.encode(recs[i : i + batch]), len(recs[i : i + batch])) for i in range(0, len(recs), batch)]
    t = time.perf_counter()
    for p, n in payloads:
        sink.send(p, n)
    return rate(len(recs), time.perf_counter() - t)


def bench_runner(sink: RecordSink, recs: list[Any], batch: int) -> float:
    s = from_table(RunnerSettings, {"batch_max_records": batch, "batch_interval": 0.05,
                                    "queue_max": len(recs) + 1})
    fwd = RecordForwarder(sink, s)
    t = time.perf_counter()
    for i in range(0, len(recs), 1000):
        fwd.put(recs[i : i + 1000])
    while fwd.counters()["sent"] < len(recs):
        if fwd.counters()["dropped"] or fwd.counters()["spooled"]:
            raise RuntimeError(f"records lost or spooled in the benchmark: {fwd.counters()}")
        time.sleep(0.005)
    r = rate(len(recs), time.perf_counter() - t)
    fwd.close()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    recs = make_records(a.records, flows=a.records // 4)
    out: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-fwd-"))
    os.environ["VXMIRROR_HEC_TOKEN"] = TOKEN

    srv = HecServer(tokens=[Token(TOKEN, ack=True)]).start()
    try:
        def hec(**kw: Any) -> SplunkHecSink:
            cfg = from_table(SplunkHecConfig, {"url": srv.url, **kw})
            return SplunkHecSink(cfg, SinkContext("splunk_hec", tmp))

        out["hec_encode"] = bench_encode(hec(), recs, a.batch)
        out["hec_encode_gzip1"] = bench_encode(hec(), recs, a.batch, gz=True)
        hec_n = recs[: max(a.records // 2, a.batch)]
        out["hec_send_gzip"] = bench_send(hec(), hec_n, a.batch)
        srv.events.clear()
        out["hec_send_plain"] = bench_send(hec(gzip=False), hec_n, a.batch)
        srv.events.clear()
        out["hec_send_ack"] = bench_send(hec(ack=True, ack_poll_interval=0.05), hec_n, a.batch)
        srv.events.clear()
        out["hec_runner_gzip"] = bench_runner(hec(), hec_n, a.batch)
        srv.events.clear()
    finally:
        srv.stop()

    broker = Tansu().start()
    try:
        def kafka(topic: str = "bench") -> KafkaSink:
            # a fresh topic per measurement: Tansu's memory storage slows down as a topic grows
            cfg = from_table(KafkaConfig, {"brokers": broker.bootstrap, "topic": topic, "linger_ms": 5})
            return KafkaSink(cfg, SinkContext("kafka", tmp))

        out["kafka_encode"] = bench_encode(kafka(), recs, a.batch)
        k = kafka()
        k.send(k.encode(recs[:10]), 10)  # topic creation and metadata outside the timing
        out["kafka_send"] = bench_send(k, recs, a.batch)
        k.close()
        k = kafka("bench2")
        k.send(k.encode(recs[:10]), 10)
        out["kafka_send_batch5000"] = bench_send(k, recs, 5000)
        k = kafka("bench3")
        k.send(k.encode(recs[:10]), 10)
        out["kafka_runner"] = bench_runner(k, recs, a.batch)
    finally:
        broker.stop()

    for k, v in out.items():
        print(f"{k:24s} {v:>12,.0f} records/s")
    if a.json:
        Path(a.json).write_text(json.dumps({"records": a.records, "batch": a.batch, **out}, indent=1))


if __name__ == "__main__":
    main()
