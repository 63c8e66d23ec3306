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
serialisation (the C builder against the Python one, and orjson over dicts); the cost of each
application parser per flow; each record forwarder's ``encode`` and the pcap encoders.
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
from receiver.config.engine import EngineConfig
from receiver.config.schema import from_table
from receiver.decode import Status, decode
from receiver.engine import Engine, Prepared
from receiver.flows.recordbatch import RecordBatch
from receiver.packets import Layer, PacketBatch
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
def records() -> RecordBatch:
    traffic = generate(TrafficSpec(n_packets=RECORDS * 6, n_flows=RECORDS, seed=5, duration=5.0))
    engine = Engine()
    out = [engine.process(b).records for b in traffic.batches()]
    return RecordBatch.concat([*out, engine.finish("end_of_input")])


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


def test_record_serialisation(benchmark: Any, records: RecordBatch) -> None:
    """orjson over the records as dicts: what a record cost before the records were built in bulk
    (test_record_builder)."""
    dicts = records.records()
    _items(benchmark, len(dicts), "record")
    out = benchmark(lambda: [orjson.dumps(r) for r in dicts])
    assert orjson.loads(out[0])["community_id"]


@pytest.fixture
def ctx() -> Any:
    with tempfile.TemporaryDirectory(prefix="vxbench-micro-") as d:
        yield SinkContext("bench", Path(d))


def test_encode_jsonl(benchmark: Any, records: RecordBatch, ctx: SinkContext) -> None:
    sink = JsonlSink(from_table(JsonlConfig, {}), ctx)
    _items(benchmark, len(records), "record")
    try:
        benchmark(sink.encode, records)
    finally:
        sink.close()


def test_encode_splunk_hec(benchmark: Any, records: RecordBatch, ctx: SinkContext,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VXMIRROR_HEC_TOKEN", "micro-benchmark-token")
    sink = SplunkHecSink(from_table(SplunkHecConfig, {"url": "http://127.0.0.1:9"}), ctx)
    _items(benchmark, len(records), "record")
    try:
        benchmark(sink.encode, records)
    finally:
        sink.close()


def test_encode_kafka(benchmark: Any, records: RecordBatch, ctx: SinkContext) -> None:
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


# -- the cost of a flow (issue 14): the record builder, and each application parser per flow ---------------


@pytest.fixture(scope="module")
def open_table() -> Engine:
    """An engine whose table holds the flows of generated traffic, none ended yet (long timeouts)."""
    cfg = EngineConfig(tcp_idle_timeout=1e6, udp_idle_timeout=1e6, other_idle_timeout=1e6, active_timeout=1e6)
    engine = Engine(cfg)
    traffic = generate(TrafficSpec(n_packets=60_000, n_flows=10_000, seed=7, duration=5.0))
    for b in traffic.batches():
        engine.process(b)
    return engine


def _build(engine: Engine, native: bool, app: bool) -> int:
    from receiver.flows.encode import encode_records
    from receiver.flows.records import build_records

    live = engine.table.active_indices()
    meta = engine.app if app else {}
    if native:
        return len(encode_records(engine.table, live, "shutdown", None, engine.excerpts, meta, None, None))
    recs = build_records(engine.table, live, "shutdown", None, engine.excerpts, meta, None, None)
    return len([orjson.dumps(r) for r in recs])


@pytest.mark.parametrize("app", [False, True], ids=["no_app", "with_app"])
@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_record_builder(benchmark: Any, open_table: Engine, native: bool, app: bool) -> None:
    """Records of every open flow, built and serialised (default 128-byte excerpts): the C builder
    against the Python oracle. ``with_app``: the flows' application metadata too (its objects are
    serialised in Python)."""
    from receiver.flows import encode

    if native and not encode.available():
        pytest.skip("the C library is not built")
    n = open_table.table.n_used
    _items(benchmark, n, "record")
    assert benchmark(_build, open_table, native, app) == n


def _app_flow(kind: str) -> tuple[list[tuple[int, bytes]], int, int, int]:
    """One flow's payloads (direction, bytes), protocol and ports, as the generator makes them."""
    from receiver.traffic import _client_hello, _dns, _http

    rng = np.random.default_rng(1)
    if kind == "dns_pair":
        q, r = _dns("api.example.com", 4242, False)
        return [(0, q), (1, r)], 17, 40000, 53
    if kind == "http_exchange":
        req, resp = _http("www.example.com", rng)
        return [(0, req), (1, resp)], 6, 40000, 80
    if kind == "tls_hello":
        return [(0, _client_hello("cdn.example.org", rng))], 6, 40000, 443
    if kind == "quic_initials":  # RFC 9001's client Initial (1,200 bytes) and the server's Initial
        from tests.quic_samples import RFC9001_CLIENT_INITIAL, RFC9001_SERVER_INITIAL

        return [(0, RFC9001_CLIENT_INITIAL), (1, RFC9001_SERVER_INITIAL)], 17, 40000, 443
    if kind == "udp_opaque":  # a UDP payload away from the DNS ports, not QUIC: screened out
        return [(0, bytes(range(7, 107))), (1, bytes(range(9, 109)))], 17, 40000, 5004
    if kind == "udp_long_header":  # a QUIC Handshake packet (long header, not an Initial): screened out
        return [(0, b"\xe3\x00\x00\x00\x01" + bytes(range(95))), (1, bytes(range(9, 109)))], 17, 40000, 443
    return [(0, bytes(range(7, 107))), (1, bytes(range(9, 109)))], 6, 40000, 5432  # opaque: no parser


@pytest.mark.parametrize(
    "kind", ["dns_pair", "http_exchange", "tls_hello", "quic_initials", "opaque", "udp_opaque", "udp_long_header"]
)
def test_app_parser_per_flow(benchmark: Any, kind: str) -> None:
    """What the application metadata of one flow costs: screening, the parser's state, feeding its
    payloads and the result (an opaque flow is screened out: no parser object is made). QUIC: the
    Initial keys are derived anew for every flow (each has its own connection ID), as they would be."""
    from receiver.appmeta import quic
    from receiver.appmeta.state import AppState, worth_parsing

    payloads, proto, sport, dport = _app_flow(kind)
    forget_keys = quic._client_keys.cache_clear if kind == "quic_initials" else lambda: None

    def one_flow() -> dict[str, Any] | None:
        if not worth_parsing(payloads[0][1], proto, sport, dport):
            return None
        forget_keys()
        state = AppState()
        for d, p in payloads:
            state.feed(d, p, proto, sport if d == 0 else dport, dport if d == 0 else sport)
        return state.to_record(copy=False)

    result = one_flow()
    assert (result is None) == (kind in ("opaque", "udp_opaque", "udp_long_header"))
    assert kind != "quic_initials" or (result is not None and result["quic"]["sni"] == "example.com")
    _items(benchmark, 1, "flow")
    benchmark(one_flow)


# -- credentials masked in the records (issue 16): what it adds per flow ------------------------------


@pytest.fixture(scope="module")
def secret_table() -> Engine:
    """An engine whose table holds 5,000 open HTTP, FTP and Redis flows, each with a credential in
    its excerpts (and the HTTP ones in their URIs)."""
    import dpkt

    payloads = [
        (b"GET /api?x=1&token=abcdef0123 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer eyJhbGciOi"
         b"JIUzI1NiJ9.e30.sig\r\nCookie: s=0123456789\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nSet-Cookie: t=abc; Path=/\r\n\r\n"),
        (b"USER bob\r\nPASS hunter2\r\n", b"230 ok\r\n"),
        (b"*2\r\n$4\r\nAUTH\r\n$7\r\nhunter2\r\n", b"+OK\r\n"),
    ]  # fmt: skip
    frames = []
    for i in range(5000):
        req, resp = payloads[i % 3]
        c, s = f"10.1.{i // 250}.{i % 250 + 1}", "10.2.0.1"
        for src, dst, sp, dp, data in ((c, s, 30000 + i, 80, req), (s, c, 80, 30000 + i, resp)):
            seg = dpkt.tcp.TCP(sport=sp, dport=dp, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=data)
            ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))), p=6, data=seg)
            ip.len = len(ip)
            frames.append(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=bytes(ip))))
    cfg = EngineConfig(tcp_idle_timeout=1e6, active_timeout=1e6)
    engine = Engine(cfg)
    engine.process(PacketBatch.from_frames(frames, [1000.0 + i * 1e-5 for i in range(len(frames))]))
    return engine


@pytest.mark.parametrize("redact", [False, True], ids=["off", "on"])
@pytest.mark.parametrize("traffic", ["mix", "secrets"])
def test_record_builder_redact(benchmark: Any, open_table: Engine, secret_table: Engine, traffic: str,
                               redact: bool) -> None:
    """The records of every open flow (C builder, application metadata included) with and without
    masking their credentials: ``mix``, the generated realistic mix (HTTP without credentials,
    DNS, TLS, opaque payload: the screen passes almost none of them to the rules); ``secrets``,
    every flow has some (the rules run on every excerpt; masked in place, so later rounds mask the
    same values again)."""
    from receiver.flows import encode

    if not encode.available():
        pytest.skip("the C library is not built")
    engine = open_table if traffic == "mix" else secret_table
    live = engine.table.active_indices()
    _items(benchmark, int(live.size), "record")
    redactor = engine.redactor if redact else None
    assert engine.redactor is not None

    def build() -> int:
        batch = encode.encode_records(engine.table, live, "shutdown", None, engine.excerpts, engine.app, None, None,
                                      redactor)  # fmt: skip
        return batch.data.count(b'"redacted":')

    masked = build()
    assert (masked == live.size) if traffic == "secrets" and redact else (masked == 0)
    benchmark(build)
