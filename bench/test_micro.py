"""Micro-benchmarks of the hot path's stages (pytest-benchmark).

    .venv/bin/python -m pytest bench/test_micro.py --benchmark-enable --benchmark-only

(pyproject's addopts disable benchmarks for ``make test``; ``--benchmark-enable`` turns them
back on.) Each benchmark records in ``extra_info`` how many items (packets, records or
frames) one call handles, so the harness reports nanoseconds per item and the per-stage
cost plot. Inputs come from the seeded traffic generator (the realistic mix, VXLAN as the
listener receives it: ``Layer.VXLAN`` datagrams), built once per module.

Stages: decap+decode fast path (one 8192-packet batch); slow path (IPv6 with extension
headers, which only the dpkt path decodes); the flow table update of the engine (keys,
find-or-add, per-direction counters: ``Engine._count`` with excerpts and app metadata off,
on flows already in the table); the whole ``Engine.process`` (steady state); record
serialisation with orjson; each record forwarder's ``encode`` and the pcap encoders.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import orjson
import pytest

from forwarders.api import SinkContext
from forwarders.frames import frame_block
from forwarders.jsonl import JsonlConfig, JsonlSink
from forwarders.kafka import KafkaConfig, KafkaSink
from forwarders.splunk_hec import SplunkHecConfig, SplunkHecSink
from receiver.configschema import from_table
from receiver.decode import Status, decode
from receiver.engine import Engine, Prepared
from receiver.flows.record import FlowRecord
from receiver.packets import Layer, PacketBatch
from receiver.settings import EngineConfig
from receiver.traffic import TrafficSpec, generate

BATCH = 8192
SLOW_BATCH = 512
RECORDS = 2000

pytestmark = pytest.mark.benchmark(group="micro")


def _items(benchmark: Any, n: int, unit: str) -> None:
    benchmark.extra_info["items"] = n
    benchmark.extra_info["unit"] = unit


@pytest.fixture(scope="module")
def datagrams() -> PacketBatch:
    """One batch of VXLAN datagrams (UDP payloads, as recvmmsg delivers them)."""
    traffic = generate(TrafficSpec(n_packets=BATCH, n_flows=400, seed=3, chunk=BATCH))
    buf, start, length = next(traffic.datagrams())
    ts = traffic.ts[:BATCH].copy()
    return PacketBatch(buf=buf, start=start, caplen=length, wirelen=length.copy(), ts=ts, layer=Layer.VXLAN)


@pytest.fixture(scope="module")
def slow_batch() -> PacketBatch:
    """IPv6 packets with a hop-by-hop options header (the fast path hands them to dpkt)."""
    frames = []
    for i in range(SLOW_BATCH):
        tcp = dpkt.tcp.TCP(sport=40000 + i % 1000, dport=443, flags=dpkt.tcp.TH_ACK, data=b"x" * 40)
        hop = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, length 0 (8 bytes), PadN
        payload = hop + bytes(tcp)
        ip6 = dpkt.ip6.IP6(src=bytes(15) + bytes([1 + i % 200]), dst=bytes(15) + b"\x02", nxt=0, hlim=64,
                           plen=len(payload))
        ip6.data = payload
        ip6.extension_hdrs = {}
        inner = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x86DD, data=bytes(ip6)[:40] + payload)
        frames.append(bytes([0x08, 0, 0, 0, 0, 0, 7, 0]) + bytes(inner))
    return PacketBatch.from_frames(frames, np.arange(SLOW_BATCH) * 1e-6 + 1.7e9, Layer.VXLAN)


@pytest.fixture(scope="module")
def records() -> list[FlowRecord]:
    traffic = generate(TrafficSpec(n_packets=RECORDS * 6, n_flows=RECORDS, seed=5, duration=5.0))
    engine = Engine()
    out: list[FlowRecord] = []
    for b in traffic.batches():
        out.extend(engine.process(b).records)
    out.extend(engine.finish("end_of_input"))
    return out


def test_decode_fast_path(benchmark: Any, datagrams: PacketBatch) -> None:
    cfg = EngineConfig()
    d, slow = decode(datagrams, cfg)
    assert slow == 0 and np.all(d.status == Status.OK)
    _items(benchmark, datagrams.count, "packet")
    benchmark(decode, datagrams, cfg)


def test_decode_slow_path(benchmark: Any, slow_batch: PacketBatch) -> None:
    cfg = EngineConfig()
    d, slow = decode(slow_batch, cfg)
    assert slow == slow_batch.count and np.all(d.status == Status.OK)
    _items(benchmark, slow_batch.count, "packet")
    benchmark(decode, slow_batch, cfg)


def test_flow_table_update(benchmark: Any, datagrams: PacketBatch) -> None:
    engine = Engine(EngineConfig(excerpt_bytes=0, app_metadata=False))
    engine.process(datagrams)  # the flows exist: steady-state update
    d, _ = decode(datagrams, engine.config)
    sel = np.flatnonzero(d.status == Status.OK)
    _items(benchmark, int(sel.size), "packet")
    benchmark(engine._count, datagrams, d, sel, Prepared(d, 0))  # the keys are made in the measurement


def test_engine_process(benchmark: Any, datagrams: PacketBatch) -> None:
    engine = Engine()
    engine.process(datagrams)
    _items(benchmark, datagrams.count, "packet")
    benchmark(engine.process, datagrams)


def test_engine_process_no_excerpts_no_app(benchmark: Any, datagrams: PacketBatch) -> None:
    engine = Engine(EngineConfig(excerpt_bytes=0, app_metadata=False))
    engine.process(datagrams)
    _items(benchmark, datagrams.count, "packet")
    benchmark(engine.process, datagrams)


def test_record_serialisation(benchmark: Any, records: list[FlowRecord]) -> None:
    _items(benchmark, len(records), "record")
    out = benchmark(lambda: [orjson.dumps(r) for r in records])
    assert orjson.loads(out[0])["community_id"]


@pytest.fixture
def ctx() -> Any:
    with tempfile.TemporaryDirectory(prefix="vxbench-micro-") as d:
        yield SinkContext("bench", Path(d))


def test_encode_jsonl(benchmark: Any, records: list[FlowRecord], ctx: SinkContext) -> None:
    sink = JsonlSink(from_table(JsonlConfig, {}), ctx)
    _items(benchmark, len(records), "record")
    try:
        benchmark(sink.encode, records)
    finally:
        sink.close()


def test_encode_splunk_hec(benchmark: Any, records: list[FlowRecord], ctx: SinkContext,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VXMIRROR_HEC_TOKEN", "micro-benchmark-token")
    sink = SplunkHecSink(from_table(SplunkHecConfig, {"url": "http://127.0.0.1:9"}), ctx)
    _items(benchmark, len(records), "record")
    try:
        benchmark(sink.encode, records)
    finally:
        sink.close()


def test_encode_kafka(benchmark: Any, records: list[FlowRecord], ctx: SinkContext) -> None:
    sink = KafkaSink(from_table(KafkaConfig, {"brokers": "127.0.0.1:9"}), ctx)
    _items(benchmark, len(records), "record")
    try:
        benchmark(sink.encode, records)
    finally:
        sink.close()


@pytest.fixture(scope="module")
def frames(datagrams: PacketBatch) -> Any:
    d, _ = decode(datagrams, EngineConfig())
    from receiver.packets import Decapsulated

    return frame_block(datagrams, Decapsulated(d.inner_start, d.vni), False, 65535)


def test_encode_pcap(benchmark: Any, frames: Any) -> None:
    from forwarders import pcap_classic

    _items(benchmark, frames.count, "frame")
    benchmark(pcap_classic.encode, frames)


def test_encode_pcapng(benchmark: Any, frames: Any) -> None:
    from forwarders import pcapng

    iface = np.zeros(frames.count, np.uint32)
    _items(benchmark, frames.count, "frame")
    benchmark(pcapng.encode, frames, iface)


def test_frame_block(benchmark: Any, datagrams: PacketBatch) -> None:
    from receiver.packets import Decapsulated

    d, _ = decode(datagrams, EngineConfig())
    dec = Decapsulated(d.inner_start, d.vni)
    _items(benchmark, datagrams.count, "frame")
    benchmark(frame_block, datagrams, dec, False, 65535)
