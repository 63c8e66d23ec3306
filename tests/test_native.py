"""The C loops (receiver.native) against their numpy twins, on the same inputs.

``make test`` builds the library (setup.py), so here it must be present: a missing build is
an install problem, not a reason to skip.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import fields
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import engine, native
from receiver.capture import cloops as capture_loops
from receiver.capture import open_capture
from receiver.config.engine import EngineConfig
from receiver.decode import Decoded, decode_fast
from receiver.decode import cloops as decode_loops
from receiver.engine import Engine
from receiver.flows import cloops as flow_loops
from receiver.flows.keys import make_keys
from receiver.flows.table import COLUMNS
from receiver.native import offsets
from receiver.packets import Layer, PacketBatch
from receiver.traffic import TrafficSpec, generate
from tests import packet_factory as pf
from tests.capture_fixtures import Rec, pcap_bytes, random_records
from tests.test_decode_paths import packets

CFG = EngineConfig()
ZEEK = Path(__file__).resolve().parents[1].parent / "shared" / "captures" / "zeek"


def test_the_library_is_built_and_loaded() -> None:
    assert native.available(), (
        "receiver/native/_vxnative*.so is missing: `pip install -e .` builds it (setup.py; needs gcc)"
    )


def test_the_c_column_layouts_match_the_python_ones() -> None:
    assert set(decode_loops.DECODE_COLUMNS) <= {f.name for f in fields(Decoded)}
    for name, dtype in flow_loops.ACCOUNT_COLUMNS.items():
        assert COLUMNS[name][0] == dtype, name


def test_offsets_header_is_current() -> None:
    assert offsets.HEADER.read_text() == offsets.render(), "run: python -m receiver.native.offsets"


# -- pcap record scan -------------------------------------------------------------------------


def _batches(path: Path, monkeypatch: pytest.MonkeyPatch, use_native: bool, size: int) -> tuple[list, dict]:
    monkeypatch.setattr(native, "available", lambda: use_native)
    cap = open_capture(path)
    out = [(b.start.copy(), b.caplen.copy(), b.wirelen.copy(), b.ts.copy()) for b in cap.batches(size)]
    counters = dict(cap.counters)
    cap.close()
    return out, counters


def _agree(path: Path, monkeypatch: pytest.MonkeyPatch, size: int = 1000) -> dict:
    got, c_native = _batches(path, monkeypatch, True, size)
    want, c_numpy = _batches(path, monkeypatch, False, size)
    assert len(got) == len(want)
    a: list[np.ndarray] = [np.concatenate(col) for col in zip(*got)]
    b: list[np.ndarray] = [np.concatenate(col) for col in zip(*want)]
    for x, y, name in zip(a, b, ("start", "caplen", "wirelen", "ts")):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert c_native == c_numpy
    return {k: v for k, v in c_native.items() if v}


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanos", [False, True])
def test_scan_matches_numpy_on_a_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big_endian: bool, nanos: bool
) -> None:
    # over 1 MiB, so the numpy side takes its vectorized (lane) scanner
    recs = random_records(3000, seed=7, lo=14, hi=1200, nanos=nanos)
    p = tmp_path / "big.pcap"
    p.write_bytes(pcap_bytes(recs, big_endian=big_endian, nanos=nanos))
    counters = _agree(p, monkeypatch, size=700)
    assert counters["records"] == 3000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 300), min_size=0, max_size=40),
    cut=st.integers(0, 400),
    bad_at=st.one_of(st.none(), st.integers(0, 39)),
    big_endian=st.booleans(),
    size=st.integers(1, 9),
)
def test_scan_matches_numpy_on_cut_and_corrupt_files(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    sizes: list[int],
    cut: int,
    bad_at: int | None,
    big_endian: bool,
    size: int,
) -> None:
    recs = [Rec(1_700_000_000 + i, i * 37, bytes([i & 0xFF]) * n) for i, n in enumerate(sizes)]
    data = bytearray(pcap_bytes(recs, big_endian=big_endian))
    if bad_at is not None and bad_at < len(sizes):  # an impossible incl_len in one record header
        off = 24 + sum(16 + n for n in sizes[:bad_at])
        struct.pack_into(">I" if big_endian else "<I", data, off + 8, 1 << 30)
    data = data[: max(24, len(data) - cut)]
    p = tmp_path_factory.mktemp("scan") / "f.pcap"
    p.write_bytes(bytes(data))
    _agree(p, monkeypatch, size=size)


def test_scan_reports_truncation_and_bad_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = [Rec(1, 2, b"x" * 100), Rec(3, 4, b"y" * 50)]
    p = tmp_path / "cut.pcap"
    p.write_bytes(pcap_bytes(recs)[:-10])
    assert _agree(p, monkeypatch) == {"records": 1, "truncated_records": 1}
    data = bytearray(pcap_bytes(recs))
    struct.pack_into("<I", data, 24 + 16 + 100 + 8, 1 << 25)
    p.write_bytes(bytes(data))
    assert _agree(p, monkeypatch) == {"records": 1, "bad_records": 1}


def test_gzip_and_pcapng_do_not_use_the_scan(tmp_path: Path) -> None:
    # gzip is decompressed into memory and scanned like any pcap
    recs = random_records(50, seed=3)
    p = tmp_path / "f.pcap.gz"
    p.write_bytes(gzip.compress(pcap_bytes(recs)))
    with open_capture(p) as cap:
        got = [bytes(b.frame(i)) for b in cap.batches(16) for i in range(b.count)]
    assert got == [r.data for r in recs]


# -- decode: the common shape -------------------------------------------------------------------

# the layers a batch can start with: a capture's link headers, or the live listener's VXLAN payloads
LAYERS = [Layer.ETHERNET, Layer.LINUX_SLL, Layer.LINUX_SLL2, Layer.RAW_IP, Layer.VXLAN]


def _as_layer(frames: list[bytes], layer: Layer) -> list[bytes]:
    """Ethernet frames (VXLAN on UDP inside) as packets of ``layer``."""
    if layer == Layer.VXLAN:
        return [f[42:] for f in frames if len(f) >= 42]
    if layer == Layer.RAW_IP:
        return [f[14:] for f in frames]
    if layer in (Layer.LINUX_SLL, Layer.LINUX_SLL2):
        return [pf.cooked(f, 1 if layer == Layer.LINUX_SLL else 2) for f in frames]
    return frames



def _same_columns(batch: PacketBatch) -> np.ndarray:
    with_c = decode_fast(batch, CFG)
    numpy_only = decode_fast(batch, CFG, use_native=False)
    for name in with_c.__dataclass_fields__:
        a, b = getattr(with_c, name), getattr(numpy_only, name)
        assert a.dtype == b.dtype, name
        bad = np.flatnonzero(a != b)
        assert not bad.size, (name, bad[:5], [batch.frame(int(i)).hex() for i in bad[:2]], a[bad[:5]], b[bad[:5]])
    return with_c.status


@settings(max_examples=300, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=40))
def test_decode_matches_numpy_on_random_ethernet_frames(frames: list[bytes]) -> None:
    _same_columns(PacketBatch.from_frames(frames))


@settings(max_examples=200, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=40), st.sampled_from(LAYERS[1:]))
def test_decode_matches_numpy_on_random_packets_of_every_layer(frames: list[bytes], layer: Layer) -> None:
    _same_columns(PacketBatch.from_frames(_as_layer(frames, layer), layer=layer))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=120), min_size=1, max_size=30),
    st.sampled_from(LAYERS),
    st.integers(0, 119),
)
def test_decode_matches_numpy_on_common_shapes_cut_and_flipped(
    blobs: list[bytes], layer: Layer, flip: int
) -> None:
    # every packet starts as the common shape; then one byte is replaced or the frame is cut
    base = pf.vxlan(pf.tcp("10.0.0.1", "10.0.0.2", 1234, 80, flags=0x18, payload=b"GET / HTTP/1.1\r\n"), vni=77)
    (base,) = _as_layer([base], layer)
    frames = []
    for i, blob in enumerate(blobs):
        f = bytearray(base)
        if blob:
            f[flip % len(f)] = blob[0]
        if i % 3 == 1:
            f = f[: len(blob) % (len(f) + 1)]
        frames.append(bytes(f))
    _same_columns(PacketBatch.from_frames(frames, layer=layer))


@pytest.mark.parametrize("layer", LAYERS)
def test_decode_takes_the_common_shape_in_c(layer: Layer) -> None:
    # whatever the capture's link header (tcpdump -i any writes SLL2): the C pass takes them all
    frames = [pf.vxlan(pf.tcp("10.0.0.1", "10.0.0.2", 1234, 80, flags=0x02), vni=5)] * 3 + [
        pf.vxlan(pf.udp("10.0.0.1", "10.0.0.2", 53, 53, b"q"), vni=6)
    ]
    batch = PacketBatch.from_frames(_as_layer(frames, layer), layer=layer)
    out = decode_fast(batch, CFG)
    handled = decode_loops.decode_common(
        batch.buf, batch.start, batch.caplen, batch.layer, np.array(CFG.vxlan_ports), np.array(CFG.geneve_ports),
        CFG.max_tunnel_depth, out,
    )
    assert handled.all()
    assert out.vni.tolist() == [5, 5, 5, 6]
    assert out.tcpflags.tolist() == [2, 2, 2, 0]
    _same_columns(batch)


def test_decode_matches_numpy_on_generated_traffic_and_zeek_traces() -> None:
    traffic = generate(TrafficSpec(n_packets=6000, n_flows=300, seed=11))
    for buf, start, length in traffic.chunks():
        n = start.shape[0]
        batch = PacketBatch(buf, start, length, length, np.zeros(n), Layer.ETHERNET)
        status = _same_columns(batch)
        assert (status == 0).mean() > 0.9
    traces = sorted(ZEEK.rglob("*.pcap*"))
    assert traces
    for t in traces:
        with open_capture(t) as cap:
            for b in cap.batches(4096):
                _same_columns(b)


@pytest.mark.parametrize("layer", LAYERS)
def test_decode_matches_numpy_at_every_length_boundary(layer: Layer) -> None:
    # every outer IP total length and inner IP total length from 0 past the real one, and every cut
    inner = pf.tcp("10.0.0.1", "10.0.0.2", 1234, 80, flags=0x18, payload=b"GET / HTTP/1.1\r\n")
    base = pf.vxlan(inner, vni=9)
    frames = []
    for total in range(0, len(base) - 14 + 4):
        f = bytearray(base)
        struct.pack_into(">H", f, 14 + 2, total)  # outer IPv4 total length
        frames.append(bytes(f))
    inner_ip = 50 + 14 + 2
    for total in range(0, len(inner) - 14 + 4):
        f = bytearray(base)
        struct.pack_into(">H", f, inner_ip, total)  # inner IPv4 total length
        frames.append(bytes(f))
    frames = _as_layer(frames, layer)
    (whole,) = _as_layer([base], layer)
    frames += [whole[:n] for n in range(len(whole) + 1)]  # every cut of the packet as captured
    status = _same_columns(PacketBatch.from_frames(frames, layer=layer))
    assert (status == 0).any()


# -- the flow table: grouping, hash index, accounting ------------------------------------------


def _engine_run(batches: list[PacketBatch], use_native: bool, config: EngineConfig) -> tuple[list, dict, dict]:
    with mock.patch.object(native, "available", lambda: use_native):
        e = Engine(config)
        records: list = []
        for b in batches:
            records += e.process(b).records
        cols = {k: v[e.table.cols["used"]].copy() for k, v in e.table.cols.items() if k != "slot"}
        records += e.finish("end_of_input")
        return records, e.counters(), cols


def _engines_agree(batches: list[PacketBatch], config: EngineConfig = CFG) -> list:
    got = _engine_run(batches, True, config)
    want = _engine_run(batches, False, config)
    assert got[0] == want[0]  # the same records, in the same order
    assert got[1] == want[1]
    for k in want[2]:
        np.testing.assert_array_equal(got[2][k], want[2][k], err_msg=k)
    return got[0]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(packets(), min_size=1, max_size=25), min_size=1, max_size=6),
    st.lists(st.floats(0, 100), min_size=6, max_size=6),
)
def test_engine_matches_numpy_on_random_batches(batches: list[list[bytes]], gaps: list[float]) -> None:
    # time moves between batches (expiry, TCP close linger), tiny table (eviction)
    t = 1_700_000_000.0
    pb = []
    for frames, gap in zip(batches, gaps):
        t += gap
        pb.append(PacketBatch.from_frames(frames, [t] * len(frames)))
    _engines_agree(pb, EngineConfig(max_flows=16, excerpt_bytes=16, tcp_close_linger=1.0, udp_idle_timeout=30.0))


def test_engine_matches_numpy_on_tcp_handshakes_both_ways() -> None:
    # SYN from either side first, SYN-ACK, data, FIN both ways, RST: history and originator flips
    a, b = "10.0.0.1", "10.0.0.2"
    seqs = [
        [(a, b, 0x02), (b, a, 0x12), (a, b, 0x10), (a, b, 0x18), (b, a, 0x11), (a, b, 0x11)],
        [(b, a, 0x10), (a, b, 0x02), (b, a, 0x12), (a, b, 0x04)],
        [(a, b, 0x12), (b, a, 0x02), (a, b, 0x02), (b, a, 0x01), (a, b, 0x01)],
        [(a, b, 0x02), (b, a, 0x14)],  # a closed port: RST-ACK answers the SYN
    ]
    frames = []
    for k, seq in enumerate(seqs):
        for src, dst, flags in seq:
            sp, dp = (1000 + k, 80) if src == a else (80, 1000 + k)
            frames.append(pf.vxlan(pf.tcp(src, dst, sp, dp, flags=flags, payload=b"x" if flags & 0x08 else b"")))
    for size in (1, 2, 3, len(frames)):
        pb = [
            PacketBatch.from_frames(frames[i : i + size], [1.0 + i] * len(frames[i : i + size]))
            for i in range(0, len(frames), size)
        ]
        records = _engines_agree(pb)
        hist = {r["history"] for r in records}
        assert {"ShADfF", "Sr"} <= hist and any(h.startswith("^") for h in hist), hist


def test_engine_matches_numpy_on_generated_traffic_and_zeek_traces() -> None:
    traffic = generate(TrafficSpec(n_packets=20_000, n_flows=500, seed=5))
    pb = [PacketBatch(buf, s, n, n, traffic.ts[: s.shape[0]] * 0 + traffic.ts[0], Layer.ETHERNET)
          for buf, s, n in traffic.chunks()]
    assert len(_engines_agree(pb)) >= 500
    for t in sorted(ZEEK.rglob("*.pcap*")):
        with open_capture(t) as cap:
            _engines_agree(list(cap.batches(512)))


def _tricky_capture(seed: int) -> tuple[np.ndarray, int]:
    """Records whose data is full of fake record headers (so lane guesses go wrong), maybe a bad
    record and a cut end."""
    rng = np.random.default_rng(seed)
    out = bytearray(pcap_bytes([]))
    n = int(rng.integers(1500, 3000))
    bad = int(rng.integers(0, n)) if rng.random() < 0.3 else -1
    for i in range(n):
        size = int(rng.integers(0, 1200))
        body = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        for _ in range(size // 64):  # plausible-looking headers inside the data
            at = int(rng.integers(0, max(1, size - 16)))
            fake = int(rng.integers(0, 600))
            struct.pack_into("<IIII", body, at, 1_700_000_000, int(rng.integers(0, 10**6)), fake, fake + 4)
        incl = (1 << 30) if i == bad else size
        out += struct.pack("<IIII", 1_700_000_000 + i, i, incl, size) + body
    cut = int(rng.integers(0, 300)) if rng.random() < 0.5 else 0
    data = np.frombuffer(bytes(out[: len(out) - cut]), np.uint8)
    return data, len(data)


@pytest.mark.parametrize("seed", range(12))
def test_lane_scan_equals_one_chain_on_tricky_captures(seed: int) -> None:
    from receiver.capture import pcap as capture_pcap

    arr, end = _tricky_capture(seed)
    pos = 24
    window = [64 * 1024, 300 * 1024, 10**9][seed % 3]
    got: list[int] = []
    want: list[int] = []
    p = pos
    while p < end:  # the C lanes, window by window, as the capture reader calls them
        offs, nxt, status = capture_loops.pcap_scan(arr, p, min(end, p + window), False, capture_pcap.MAX_RECORD_LEN,
                                                    10**6)
        got += offs.tolist()
        if status != capture_loops.SCAN_OK or nxt <= p:
            break
        p = nxt
    loop = capture_pcap.scan_loop(arr, pos, end, False)
    want = loop.offsets.tolist()
    assert got == want
    assert (nxt, status) == (loop.next_pos, capture_loops.SCAN_BAD if loop.bad else
                             capture_loops.SCAN_TRUNCATED if loop.truncated else capture_loops.SCAN_OK)


# -- byte ranges (forwarders: pcap, pcapng, frame blocks) ---------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=0, max_size=60), st.integers(0, 2**32 - 1))
def test_copy_ranges_matches_numpy(lengths: list[int], seed: int) -> None:
    from forwarders.gather import copy_ranges_numpy

    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, 5000, dtype=np.uint8)
    n = np.array(lengths, np.int64)
    s = np.array([int(rng.integers(0, 5001 - k)) for k in lengths], np.int64)  # sources may overlap
    d = np.zeros(len(lengths), np.int64)  # destinations one after another, with gaps
    if len(lengths) > 1:
        d[1:] = np.cumsum(n[:-1] + rng.integers(0, 5, len(lengths) - 1))
    size = int(d[-1] + n[-1]) + 3 if len(lengths) else 3
    a, b = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    native.copy_ranges(src, s, a, d, n)
    copy_ranges_numpy(src, s, b, d, n)
    np.testing.assert_array_equal(a, b)


def test_copy_ranges_refuses_a_range_outside_the_buffers() -> None:
    src, dst = np.zeros(10, np.uint8), np.zeros(10, np.uint8)
    one = np.ones(1, np.int64)
    with pytest.raises(IndexError):
        native.copy_ranges(src, one * 5, dst, one * 0, one * 6)
    with pytest.raises(IndexError):
        native.copy_ranges(src, one * 0, dst, one * 8, one * 3)
    native.copy_ranges(src, one * 9, dst, one * 9, one * 0 + 1)  # the last byte is fine


@pytest.mark.parametrize("layer", LAYERS)
def test_decode_matches_numpy_on_vlan_stacks_and_ipv6(layer: Layer) -> None:
    frames = []
    for inner in (
        pf.tcp("10.0.0.1", "10.0.0.2", 1234, 80, flags=0x18, payload=b"x" * 30),
        pf.udp("fd00::1", "fd00::2", 5000, 53, b"q" * 20),
        pf.tcp("2001:db8::1", "2001:db8::2", 443, 50000, flags=0x12),
    ):
        for tags in range(4):  # MAX_VLAN_TAGS is 2: a third tag makes the frame non-IP
            for tpid in (0x8100, 0x88A8, 0x9100):
                f = inner
                for _ in range(tags):
                    f = pf.vlan(f, 7, tpid)
                frames.append(pf.vxlan(f, vni=3))
                frames += [pf.vxlan(f, vni=3)[:n] for n in (50 + 14 + 4 * tags, 50 + 14 + 4 * tags + 39)]
    status = _same_columns(PacketBatch.from_frames(_as_layer(frames, layer), layer=layer))
    assert (status == 0).sum() >= 3 * 3 * 3  # up to two tags, all three shapes, decoded
    assert (status == 1).any()  # three tags: not IP


def test_account_refuses_flow_indices_outside_the_table() -> None:
    from receiver.flows.table import FlowTable

    t = FlowTable(16)
    one = np.ones(1, np.int64)
    kw = dict(direction=one * 0, ts=np.ones(1), iplen=one, paylen=one, tcpflags=one * 0, proto=one * 6,
              truncated=np.zeros(1, bool), fragment=np.zeros(1, bool), seq=one * 0, ack=one * 0)
    with pytest.raises(IndexError):
        flow_loops.account(t.cols, flow=one * t.capacity, **kw)
    with pytest.raises(IndexError):
        flow_loops.account(t.cols, flow=-one, **kw)
    flow_loops.account(t.cols, flow=one * 0, **kw)
    assert t.cols["pkts"][0].tolist() == [1, 0]


# -- flow keys and the application parsers' screening ------------------------------------------


def _numpy_keys(d: Decoded) -> dict[str, np.ndarray]:
    k = make_keys(
        d.vni, d.proto + 256 * (d.ipver == 6), d.src_hi, d.src_lo, d.sport, d.dst_hi, d.dst_lo, d.dport
    )
    return {name: getattr(k, name) for name, _ in decode_loops.FLOW_KEY_OUTPUTS}


def _same_keys(d: Decoded) -> None:
    got, want = decode_loops.flow_keys(d), _numpy_keys(d)
    for name, dtype in decode_loops.FLOW_KEY_OUTPUTS:
        assert got[name].dtype == dtype, name
        np.testing.assert_array_equal(got[name], want[name].astype(dtype), err_msg=name)


@settings(max_examples=200, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=40))
def test_flow_keys_and_app_hints_match_numpy_on_random_frames(frames: list[bytes]) -> None:
    batch = PacketBatch.from_frames(frames)
    d = decode_fast(batch, CFG)
    _same_keys(d)
    _same_hints(batch, d)


def test_flow_keys_match_numpy_where_endpoints_tie() -> None:
    # equal high or low address halves and equal ports: every branch of the canonical order
    rng = np.random.default_rng(3)
    n = 5000
    d = Decoded.empty(n)
    pool = rng.integers(0, 2**64, 4, dtype=np.uint64)
    for name in ("src_hi", "src_lo", "dst_hi", "dst_lo"):
        getattr(d, name)[:] = pool[rng.integers(0, 4, n)]
    d.sport[:] = rng.integers(0, 3, n)
    d.dport[:] = rng.integers(0, 3, n)
    d.vni[:] = rng.integers(-1, 2**24, n)
    d.ipver[:] = rng.choice([4, 6], n)
    d.proto[:] = rng.choice([1, 6, 17, 58, 132], n)
    _same_keys(d)
    assert decode_loops.flow_keys(d)["direction"].any() and not decode_loops.flow_keys(d)["direction"].all()


def _same_hints(batch: PacketBatch, d: Decoded) -> tuple[np.ndarray, np.ndarray]:
    later, maybe = decode_loops.app_hints(
        batch.buf, d, engine._DNS_PORT, engine._APP_UDP_PORT, engine._APP_TCP_PORT, engine._APP_START,
        engine._HTTP_FIRST, engine.HTTP_WORDS,
    )
    pay = np.flatnonzero(d.pay_cap > 0)
    assert not later[d.pay_cap <= 0].any() and not maybe[d.pay_cap <= 0].any()
    np.testing.assert_array_equal(later[pay], engine._app_later(batch, d, pay))
    np.testing.assert_array_equal(maybe[pay], engine._app_maybe(batch, d, pay))
    return later, maybe


def test_app_hints_match_numpy_on_app_payloads() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    payloads = [b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"GETX", b"G", b"GE", b"\x16\x03\x01\x00", b"x" * 40,
                b"POST", b"HEAD /"]
    frames = []
    for p in payloads:
        frames += [pf.tcp(a, b, 40000, 80, flags=0x18, payload=p), pf.tcp(a, b, 40000, 9999, flags=0x18, payload=p),
                   pf.tcp(a, b, 53, 40000, flags=0x18, payload=p), pf.udp(a, b, 40000, 5353, p),
                   pf.udp(a, b, 40000, 9999, p), pf.tcp(a, b, 40000, 80, flags=0x10)]
    # the last frame ends with the first bytes of an HTTP word: the word is read up to the buffer's end
    frames.append(pf.tcp(a, b, 40000, 80, flags=0x18, payload=b"HTT"))
    # QUIC: v1 and v2 Initials (screened by content on UDP), a v1 Handshake, a v2 packet with v1's
    # Initial type bits, an Initial's first 6 bytes
    quic = [bytes.fromhex(h) for h in ("c300000001088394c8f03e515708", "d36b3343cf088394c8f03e515708",
                                       "e300000001088394c8f03e515708", "c36b3343cf088394c8f03e515708",
                                       "c30000000108")]  # fmt: skip
    frames += [pf.udp(a, b, 40000, 9999, p) for p in quic]
    batch = PacketBatch.from_frames(frames)
    later, maybe = _same_hints(batch, decode_fast(batch, CFG))
    assert later.sum() >= 12 and maybe.sum() >= 20
    assert maybe[-5:].tolist() == [True, True, False, False, False]
