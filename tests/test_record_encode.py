"""The records built in C (receiver.flows.encode) against the Python builder (records.build_records
followed by orjson.dumps of each dict), byte for byte: the Zeek traces, generated traffic with
interim records, labels and a sensor name, fuzzed flow-table rows, and every float and
conn_state the encoder can meet."""

from __future__ import annotations

import glob
from typing import Any

import numpy as np
import orjson
import pytest
from zeeklogs import ZEEK_DIR

from receiver.capture.read import Analysis
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.flows import encode
from receiver.flows.excerpts import ExcerptPool
from receiver.flows.recordbatch import RecordBatch
from receiver.flows.records import build_records
from receiver.flows.table import FlowTable
from receiver.redact import Redactor
from receiver.traffic import write_pcap

pytestmark = pytest.mark.skipif(not encode.available(), reason="the C library is not built (VXMIRROR_NATIVE=0)")

Emit = tuple[FlowTable, np.ndarray, str, float | None, ExcerptPool | None, dict[int, Any], Any, str | None]


def _labels(vni: int) -> dict[str, Any] | None:
    return {"service": f"svc-{vni % 7}", "task": f"arn:aws:ecs:task/{vni}"} if vni % 3 else None


def _compare(args: Emit, redactor: Redactor | None = None) -> int:
    """Build the records both ways; assert the bytes equal; the number of records. (With a
    redactor the first builder masks in place and the second masks the same again: masking
    what is masked changes nothing and counts the same.)"""
    table, flows, reason, now, excerpts, app, labeler, sensor = args
    # the C builder first: the Python one lets finished parsers share their items (copy=False)
    got = encode.encode_records(table, flows, reason, now, excerpts, app, labeler, sensor,  # type: ignore[arg-type]
                                redactor)
    want = build_records(table, flows, reason, now, excerpts, app, labeler, sensor, redactor)  # type: ignore[arg-type]
    assert len(got) == len(want)
    for line, rec in zip(got.lines(), want):
        assert line == orjson.dumps(rec)
    assert got.community_id.tolist() == [r["community_id"].encode() for r in want]
    assert got.vni.tolist() == [-1 if r["vni"] is None else r["vni"] for r in want]
    assert got.ts_start.tolist() == [r["ts_start"] for r in want]
    assert got.ts_end.tolist() == [r["ts_end"] for r in want]
    return len(want)


def _checked_runs(paths: list[str], cfg: EngineConfig, labeler: Any = None, sensor: str | None = None) -> int:
    """Read ``paths`` with every batch of ending flows compared before the engine emits it."""
    checked = 0
    real = Engine._emit

    def emit(self: Engine, flows: np.ndarray, reason: Any, now: float | None) -> None:
        nonlocal checked
        if flows.size:
            ordered = flows[np.argsort(self.table.cols["seg_start"][flows], kind="stable")]
            checked += _compare((self.table, ordered, reason, now, self.excerpts, self.app, self.labeler, self.sensor),
                                self.redactor)
        real(self, flows, reason, now)

    Engine._emit = emit  # type: ignore[method-assign]
    try:
        a = Analysis(paths, cfg, labeler=labeler, sensor=sensor)
        for _ in a.records():
            pass
    finally:
        Engine._emit = real  # type: ignore[method-assign]
    return checked


def test_zeek_traces_give_the_oracles_bytes() -> None:
    paths = sorted(glob.glob(str(ZEEK_DIR / "*" / "*.pcap")))
    assert len(paths) >= 15
    assert _checked_runs(paths, EngineConfig(), sensor="mirror-target-1") >= 50


@pytest.mark.parametrize("excerpt_bytes", [0, 7, 128])
def test_generated_traffic_with_interim_records_labels_and_sensor(tmp_path: Any, excerpt_bytes: int) -> None:
    path = tmp_path / "gen.pcap"
    write_pcap(path, 60_000, n_flows=6_000, seed=11)
    cfg = EngineConfig(excerpt_bytes=excerpt_bytes, active_timeout=0.2, expire_interval=0.05, udp_idle_timeout=0.3)
    assert _checked_runs([str(path)], cfg, labeler=_labels, sensor='sensor "A"\n') >= 6_000


def _fuzzed_table(rng: np.random.Generator, n: int, excerpt_size: int) -> tuple[FlowTable, ExcerptPool]:
    """A table whose ``n`` rows hold random (but well-formed) flow state."""
    t = FlowTable(n, initial=n)
    c = t.cols
    rows = np.arange(n)
    c["used"][:] = True
    v6 = rng.random(n) < 0.3
    proto = rng.choice([6, 17, 1, 58, 132, 47, 0, 255], n, p=[0.4, 0.3, 0.08, 0.07, 0.05, 0.04, 0.03, 0.03])
    c["kproto"][:] = proto + 256 * v6
    for k in ("a_hi", "a_lo", "b_hi", "b_lo"):
        c[k][:] = rng.integers(0, 2**63, n, dtype=np.uint64) * rng.integers(1, 3, n, dtype=np.uint64)
    # IPv4 is stored IPv4-mapped; some zero and equal addresses (the community_id's tie on ports)
    for hi, lo in (("a_hi", "a_lo"), ("b_hi", "b_lo")):
        c[hi][~v6] = 0
        c[lo][~v6] = 0xFFFF00000000 | (c[lo][~v6] & 0xFFFFFFFF)
    # IPv6 addresses with runs of zero groups (where "::" goes), IPv4-mapped and -compatible ones
    words = np.where(rng.random((n, 8)) < 0.5, 0, rng.integers(0, 1 << 16, (n, 8))).astype(np.uint64)
    words[rng.random(n) < 0.1, :5] = 0
    mapped = rng.random(n) < 0.05
    words[mapped, 5] = 0xFFFF
    hi = (words[:, :4] << (np.arange(3, -1, -1, dtype=np.uint64) * 16)).sum(axis=1, dtype=np.uint64)
    lo = (words[:, 4:] << (np.arange(3, -1, -1, dtype=np.uint64) * 16)).sum(axis=1, dtype=np.uint64)
    sparse = v6 & (rng.random(n) < 0.5)
    c["a_hi"][sparse], c["a_lo"][sparse] = hi[sparse], lo[sparse]
    c["b_hi"][sparse], c["b_lo"][sparse] = np.roll(hi, 1)[sparse], np.roll(lo, 1)[sparse]
    same = rng.random(n) < 0.05
    c["b_hi"][same], c["b_lo"][same] = c["a_hi"][same], c["a_lo"][same]
    ports = rng.integers(0, 65536, (n, 2))
    icmp = (proto == 1) | (proto == 58)
    ports[icmp] = rng.integers(0, 256, (int(icmp.sum()), 2))  # ICMP: type and code
    c["a_port"][:], c["b_port"][:] = ports[:, 0], ports[:, 1]
    c["kvni"][:] = np.where(rng.random(n) < 0.2, -1, rng.integers(0, 1 << 24, n))
    c["orig"][:] = rng.integers(0, 2, n)
    c["flipped"][:] = rng.random(n) < 0.1
    zero = rng.random((n, 2)) < 0.2
    c["pkts"][:] = np.where(zero, 0, rng.integers(1, 2**32, (n, 2)))
    c["ipbytes"][:] = np.where(zero, 0, rng.integers(0, 2**63, (n, 2)))
    c["paybytes"][:] = np.where(rng.random((n, 2)) < 0.4, 0, rng.integers(0, 2**40, (n, 2)))
    c["tflags"][:] = rng.integers(0, 256, (n, 2))
    c["hbits"][:] = rng.integers(0, 1 << 12, n)
    lengths = rng.integers(0, 13, n)
    codes = rng.integers(1, 13, (n, 12)).astype(np.uint64)
    shift = (4 * np.arange(12)).astype(np.uint64)
    c["hist"][:] = np.where(np.arange(12) < lengths[:, None], codes << shift, 0).sum(axis=1).astype(np.uint64)
    start = rng.choice([1.7e9, 0.0, 1.0, 4e9], n, p=[0.85, 0.05, 0.05, 0.05]) + rng.random(n) * 1e5
    micro = rng.random(n) < 0.3  # times of a pcap: microseconds
    start[micro] = np.round(start[micro], 6)
    c["seg_start"][:] = start
    gap = np.where(rng.random(n) < 0.5, rng.exponential(1.0, n), rng.random(n) * 1e-6)
    c["t_last"][:] = np.where(rng.random(n) < 0.1, start - 5.0, start + gap)  # some interim rows: t_last < start
    c["trunc"][:] = rng.random(n) < 0.1
    c["frags"][:] = np.where(rng.random(n) < 0.9, 0, rng.integers(0, 2**32, n))
    c["segments"][:] = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 2**16, n))
    pool = ExcerptPool(excerpt_size, initial_rows=2 * n)
    pool.rows[:] = rng.integers(0, 256, pool.rows.shape, dtype=np.uint8)
    c["exc_row"][:] = np.where(rng.random((n, 2)) < 0.3, 0, rows[:, None] * 2 + np.arange(2) + 1)
    c["exc_len"][:] = np.where(c["exc_row"] > 0, rng.integers(0, excerpt_size + 1, (n, 2)), 0)
    return t, pool


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_flow_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20_000
    table, pool = _fuzzed_table(rng, n, excerpt_size=int(rng.integers(1, 200)))
    flows = rng.permutation(n)[: n - 7]
    app: dict[int, Any] = {int(f): {"dns": [{"query": f"q{f}.example", "rcode": 0}]} for f in flows[::5].tolist()}
    app.update({int(f): {} for f in flows[1::50].tolist()})  # an empty result: no app field
    # credentials (receiver.redact) in some URIs and hosts, and at random places of some excerpts
    app.update({int(f): {"http": [{"method": "GET", "host": "u:pw@h" if f % 2 else "h", "uri": f"/?k=1&token=t{f}",
                                   "user_agent": None, "version": "1.1", "status": 200, "reason": "OK"}]}
                for f in flows[3::20].tolist()})  # fmt: skip
    secrets = [b"PASS hunter2\r\n", b"Cookie: a=1; b=2\r\n", b"GET /?api_key=k HTTP/1.1\r\n", b"\nAUTH pw\r\n"]
    size = pool.rows.shape[1]
    for r in np.flatnonzero(rng.random(pool.rows.shape[0]) < 0.2).tolist():
        s = secrets[r % len(secrets)][: size]
        at = int(rng.integers(0, size - len(s) + 1))
        pool.rows[r, at : at + len(s)] = np.frombuffer(s, np.uint8)
    redactor = Redactor()
    for reason, now, labeler, sensor, masker in (
        ("idle", None, None, None, None), ("active", 1.7e9 + 3.25, _labels, "s1", redactor),
        ("shutdown", 10.0, _labels, "ü\t", redactor), ("idle", None, None, None, redactor),
    ):
        assert _compare((table, flows, reason, now, pool, app, labeler, sensor), masker) == flows.size
    assert _compare((table, flows, "evicted", None, None, {}, None, None), redactor) == flows.size
    lines = encode.encode_records(table, flows, "idle", None, pool, app, None, None, redactor).lines()
    assert sum(b'"redacted":' in line for line in lines) > flows.size // 20


def test_every_conn_state_and_history() -> None:
    """Every history bit set, originator and packet/payload case of a TCP, UDP and other flow."""
    hb = np.arange(1 << 12)
    grid = np.array(np.meshgrid(hb, [0, 1], [0, 1], [0, 1], [0, 1], [6, 17, 1], indexing="ij")).reshape(6, -1).T
    n = grid.shape[0]
    t = FlowTable(n, initial=n)
    c = t.cols
    c["used"][:] = True
    c["hbits"][:], c["orig"][:] = grid[:, 0], grid[:, 1]
    o = grid[:, 1]
    c["pkts"][np.arange(n), o] = grid[:, 2]
    c["pkts"][np.arange(n), 1 - o] = grid[:, 3]
    c["paybytes"][np.arange(n), o] = grid[:, 4] * 100
    c["kproto"][:] = grid[:, 5]
    c["a_lo"][:], c["b_lo"][:] = 0xFFFF0A000001, 0xFFFF0A000002
    c["hist"][:] = (grid[:, 0] % 12 + 1).astype(np.uint64) * 0x1000 + 0x321  # S, a, H, then any code
    c["seg_start"][:] = c["t_last"][:] = 1.0
    assert _compare((t, np.arange(n), "idle", None, None, {}, None, None)) == n


def test_floats_are_written_as_orjson_writes_them() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([
        1.7e9 + rng.random(200_000) * 1e6,  # times of a live capture (nanosecond clocks)
        np.round(1.7e9 + rng.random(50_000) * 1e6, 6),  # of a pcap (microseconds)
        rng.random(50_000), rng.random(50_000) * 1e-3, rng.exponential(10.0, 50_000), rng.random(20_000) * 1e20,
        2.0 ** np.arange(-23, 52), 10.0 ** np.arange(-20, 25),
        [0.0, 1.0, 1e-7, 1e-6, 1e-5, 0.1, 0.3, 4503599627370495.5, 4503599627370496.0, 1e15, 1e16, 5e-324],
    ])
    assert [bytes(b) for b in encode.format_floats(values)] == [orjson.dumps(v) for v in values.tolist()]
    durations = np.concatenate([rng.random(100_000) * 10, rng.exponential(100.0, 50_000), np.arange(0, 2e-5, 5e-7)])
    assert encode.format_floats(durations, round6=True) == [orjson.dumps(round(v, 6)) for v in durations.tolist()]


def _batch(n: int) -> RecordBatch:
    return RecordBatch.from_records(
        [{"vni": None if i % 3 == 0 else i, "community_id": f"1:{i:027d}=", "ts_start": i / 3, "ts_end": i / 2,
          "src_ip": "10.0.0.1"} for i in range(n)]  # type: ignore[misc]
    )


def test_record_batch_slices_concatenates_and_reads_back() -> None:
    b = _batch(10)
    assert len(b) == 10 and b.data.count(b"\n") == 10
    parts = [b.slice(0, 3), b.slice(3, 3), b[3:7], b.slice(7, 10)]
    whole = RecordBatch.concat(parts)
    assert whole.data == b.data and whole.ends.tolist() == b.ends.tolist()
    assert whole.community_id.tolist() == b.community_id.tolist() and whole.vni.tolist() == b.vni.tolist()
    assert [r["ts_end"] for r in whole] == [i / 2 for i in range(10)]
    assert b.line(4) == orjson.dumps(b[4]) and b.lines()[9] == b.line(9)
    again = RecordBatch.from_lines(b.lines())
    assert again.data == b.data and again.column("vni") == b.column("vni") == [r["vni"] for r in b]
    assert again.column("src_ip") == ["10.0.0.1"] * 10
    assert (b + RecordBatch.empty()).data == b.data and not RecordBatch.empty()
    with pytest.raises(ValueError):
        RecordBatch.from_lines([b"{not json"])


def test_records_survive_batches_of_any_size(tmp_path: Any) -> None:
    """More records than one native call takes (CHUNK) come out whole and in order."""
    rng = np.random.default_rng(9)
    n = encode.CHUNK + 1000
    table, pool = _fuzzed_table(rng, n, 16)
    flows = np.arange(n)
    got = encode.encode_records(table, flows, "shutdown", None, pool, {}, None, None)
    assert len(got) == n and got.data.count(b"\n") == n
    sample = rng.choice(n, 300, replace=False)
    want = build_records(table, flows[np.sort(sample)], "shutdown", None, pool, {}, None, None)
    assert [got.line(int(i)) for i in np.sort(sample)] == [orjson.dumps(r) for r in want]
