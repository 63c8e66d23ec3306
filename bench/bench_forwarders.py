"""Records/s the Splunk HEC and Kafka forwarders sustain against the local servers.

    .venv/bin/python bench/bench_forwarders.py [--records 300000] [--batch 500] [--rounds 1] [--json out.json]

Records: the engine's own, over generated traffic (``receiver.benchkit.jsonl_sink.make_records``,
``--distinct`` of them, ~870 bytes of JSON each), as one RecordBatch repeated up to ``--records``.

For each sink: ``encode`` alone (and gzip for HEC: the sensor-side CPU per record), ``send``
called directly in a loop, and end to end through the shared runner (``RecordForwarder.put``
of 1,000-record slices, as the engine hands them over, until ``sent`` equals the input).
HEC runs against the in-repo HEC server (tests/hec_server.py) in a process of its own,
counting events without parsing them; Kafka against Tansu on loopback (memory storage, a new
topic per measurement: Tansu slows down as a topic grows). Both servers share this machine's
cores with the client. Kafka also runs with one batch in flight at a time (``_in_flight1``),
with lz4, and raw (``kafka_raw``: librdkafka's ``produce`` in a Python loop, then ``flush``,
no runner: the reference), and prints the CPU each costs per record in this process and in
Tansu. With ``--rounds N`` the Kafka measurements run N times, alternating, and the medians
are reported (the machine's other load changes from second to second: compare within a run).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Producer
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


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process (all its threads), or of process ``pid``."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_raw(producer: Producer, topic: str, batch: RecordBatch) -> float:
    """librdkafka alone: ``produce`` per record (the same keys and values) in a loop, then ``flush``."""
    lines, keys = batch.lines(), batch.community_id.tolist()
    produce, poll = producer.produce, producer.poll
    t = time.perf_counter()
    for value, key in zip(lines, keys):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.01)
    if producer.flush(60):
        raise RuntimeError("raw producer: messages left undelivered")
    return rate(len(batch), time.perf_counter() - t)


def measure_kafka(batch: RecordBatch, size: int, tmp: Path, out: dict[str, float], rounds: int = 1) -> None:
    broker = Tansu().start()
    assert broker.proc is not None
    tansu_pid = broker.proc.pid
    try:
        topics = iter(range(100_000))

        def kafka(**kw: Any) -> KafkaSink:
            # a fresh topic per measurement: Tansu's memory storage slows down as a topic grows
            cfg = from_table(KafkaConfig, {"brokers": broker.bootstrap, "topic": f"bench{next(topics)}",
                                           "linger_ms": 5, **kw})
            k = KafkaSink(cfg, SinkContext("kafka", tmp))
            k.send(k.encode(batch.slice(0, 10)), 10)  # topic creation and metadata outside the timing
            return k

        def raw() -> float:
            k = kafka()  # its settings, its topic (created), then a producer of their own
            settings = {n: v for n, v in k._settings.items() if n != "on_delivery"}
            producer = Producer({**settings, "delivery.report.only.error": True, "on_delivery": lambda e, m: None})
            producer.produce(k.config.topic, b"{}")
            producer.flush(10)
            k.close()
            return bench_raw(producer, k.config.topic, batch)

        out["kafka_encode"] = bench_encode(kafka(), batch, size)
        runs: dict[str, Callable[[], float]] = {
            "kafka_send": lambda: bench_send(kafka(), batch, size),
            "kafka_send_batch5000": lambda: bench_send(kafka(), batch, 5000),
            "kafka_send_lz4_batch5000": lambda: bench_send(kafka(compression="lz4"), batch, 5000),
            "kafka_runner": lambda: bench_runner(kafka(), batch, size),
            "kafka_runner_in_flight1": lambda: bench_runner(kafka(batches_in_flight=1), batch, size),
            "kafka_runner_lz4": lambda: bench_runner(kafka(compression="lz4"), batch, size),
            "kafka_runner_batch5000": lambda: bench_runner(kafka(), batch, 5000),
            "kafka_raw": raw,
        }
        got: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
        for _ in range(rounds):
            for key, fn in runs.items():
                c0, b0 = cpu_seconds(), cpu_seconds(tansu_pid)
                got[key].append(fn())
                cpu[key].append((cpu_seconds() - c0, cpu_seconds(tansu_pid) - b0))
        for key, values in got.items():
            out[key] = statistics.median(values)
            client = statistics.median(c for c, _ in cpu[key]) / len(batch) * 1e6
            server = statistics.median(b for _, b in cpu[key]) / len(batch) * 1e6
            print(f"{key:26s} CPU per record: {client:5.2f} us here (setup included), {server:5.2f} us in Tansu;"
                  f" records/s of the {rounds} rounds: {', '.join(f'{v / 1e3:.0f} k' for v in values)}")
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--distinct", type=int, default=30_000, help="distinct records made by the engine")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--only", choices=("hec", "kafka"), help="one of the two")
    ap.add_argument("--rounds", type=int, default=1, help="Kafka: alternating rounds (medians are reported)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    batch = realistic(a.records, min(a.distinct, a.records))
    out: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-fwd-"))
    os.environ["VXMIRROR_HEC_TOKEN"] = TOKEN
    if a.only in (None, "hec"):
        measure_hec(batch, a.batch, tmp, out)
    if a.only in (None, "kafka"):
        measure_kafka(batch, a.batch, tmp, out, a.rounds)
    print(f"{len(batch):,} records, {len(batch.data) / len(batch):.0f} bytes of JSON each, batches of {a.batch}")
    for k, v in out.items():
        print(f"{k:26s} {v:>12,.0f} records/s")
    if a.json:
        Path(a.json).write_text(json.dumps({"records": len(batch), "batch": a.batch, **out}, indent=1))


if __name__ == "__main__":
    main()
