"""Reading on two cores: the prefetcher that faults a capture in ahead of the reader, the thread
that prepares batches ahead of the flow table, and that both leave every record unchanged."""

from __future__ import annotations

import copy
import gzip
import mmap
import os
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import orjson
import pytest

from receiver import capture as capture_module
from receiver.capture import open_capture, prefetch
from receiver.capture import reader as reader_module
from receiver.capture.prefetch import Prefetcher
from receiver.capture.read import Analysis, read_records
from receiver.capture.readahead import prepared_batches, work_ahead
from receiver.config.engine import EngineConfig
from receiver.decode import Decoded
from receiver.engine import Engine, Prepared, prepare
from receiver.packets import PacketBatch
from receiver.traffic import write_pcap
from tests import packet_factory as pf
from tests.capture_fixtures import NgWriter, Rec, pcap_bytes
from tests.test_native import _tricky_capture

ZEEK = Path(__file__).resolve().parents[1].parent / "shared" / "captures" / "zeek"
MB = 1 << 20


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _rss_of_mapping(path: Path) -> int:
    """Bytes of ``path``'s mappings in this process that are in its page tables (smaps Rss)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: its range ... its path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


# -- the prefetcher ---------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["touch", "madvise"])
def test_prefetch_fills_the_page_tables_ahead_of_the_reader_and_empties_them_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    # by the C loop that touches each page, or by madvise(MADV_POPULATE_READ) without the library
    if way == "madvise":
        monkeypatch.setattr(prefetch.nativelib, "load", lambda: None)
    else:
        assert prefetch.nativelib.load() is not None
    path = tmp_path / "big.bin"
    path.write_bytes(b"\xa1" * (40 * MB))
    with Prefetcher([path], ahead=8 * MB, chunk=MB) as p:
        m = p.mapping(0)
        assert m is not None and len(m) == 40 * MB
        _wait(lambda: p.populated == 8 * MB)
        time.sleep(0.1)
        assert p.populated == 8 * MB and p.dropped == 0  # the window: no further until the reader moves
        assert _rss_of_mapping(path) >= 8 * MB  # really in this process's page tables
        p.reached(0, 20 * MB + 5)
        # what the reader passed is not faulted in any more: 20-28 MB only
        _wait(lambda: p.populated == 16 * MB and p.dropped == 20 * MB)
        # in the page tables: the window in front of the reader, not what it left behind (whole
        # chunks only; fault-around may map a few pages next to the window)
        assert 8 * MB <= _rss_of_mapping(path) <= 9 * MB
        p.reached(0, 39 * MB)
        _wait(lambda: p.populated == 17 * MB and p.dropped == 39 * MB)  # to the end of the file, not past it
        assert _rss_of_mapping(path) <= 2 * MB
        assert m[5 * MB : 5 * MB + 4] == b"\xa1" * 4  # a dropped page reads as before (faulted in again)


def test_prefetch_moves_on_when_the_reader_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * (32 * MB))
    b.write_bytes(b"b" * (4 * MB))
    with Prefetcher([a, b], ahead=4 * MB, chunk=MB) as p:
        ma = p.mapping(0)
        _wait(lambda: p.populated == 4 * MB)
        # the reader leaves file a early, without saying how far it got (a bad record, say): the
        # rest of a is not populated, and asking for b's mapping does not wait for it
        got: list[object] = []
        asking = threading.Thread(target=lambda: got.append(p.mapping(1)))
        asking.start()
        asking.join(10)
        assert got, "mapping(1) waited for file 0 to be populated"
        mb = got[0]
        assert isinstance(mb, mmap.mmap)
        assert mb is not None and mb[:1] == b"b"
        _wait(lambda: p.populated == 8 * MB)
        time.sleep(0.05)
        assert p.populated == 8 * MB
        assert ma is not None and not ma.closed


def test_prefetch_leaves_compressed_missing_and_empty_files_to_the_reader(tmp_path: Path) -> None:
    raw = pcap_bytes([Rec(1, 0, pf.tcp("10.0.0.1", "10.0.0.2", 1, 2))])
    gz, empty, plain = tmp_path / "x.pcap.gz", tmp_path / "empty.pcap", tmp_path / "x.pcap"
    gz.write_bytes(gzip.compress(raw))
    empty.write_bytes(b"")
    plain.write_bytes(raw)
    with Prefetcher([gz, tmp_path / "missing.pcap", empty, tmp_path, plain]) as p:
        assert [p.mapping(i) is None for i in range(4)] == [True] * 4
        m = p.mapping(4)
        assert m is not None and m[:] == raw
    # the reader then reports the problem itself, as without a prefetcher
    with pytest.raises(Exception, match="cannot open"):
        list(read_records([plain, tmp_path / "missing.pcap"]))


def test_prefetch_close_stops_the_thread_and_closes_what_was_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"x" * (16 * MB))
    before = threading.active_count()
    p = Prefetcher([path, path], ahead=2 * MB, chunk=MB)
    _wait(lambda: p.populated == 2 * MB)  # waiting for the reader, with file 0's mapping untaken
    p.close()
    assert threading.active_count() == before
    assert p.mapping(0) is None  # closed, not handed out after close


# -- the thread that works ahead -----------------------------------------------------------------


def test_work_ahead_keeps_order_and_stays_within_depth() -> None:
    done: list[int] = []

    def work(x: int) -> int:
        done.append(x)
        return x * x

    got = []
    for item, sq in work_ahead(iter(range(200)), work, depth=3):
        # items taken from the queue: item+1; in the queue: at most 3; in the worker's hands: 1
        assert len(done) <= item + 1 + 3 + 1
        got.append((item, sq))
    assert got == [(i, i * i) for i in range(200)]


def test_work_ahead_raises_the_workers_error_in_order() -> None:
    def work(x: int) -> int:
        if x == 5:
            raise ValueError("bad item 5")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 5"):
        for item, _ in work_ahead(iter(range(10)), work):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_work_ahead_stops_its_thread_when_the_consumer_stops() -> None:
    closed = threading.Event()

    def items():  # type: ignore[no-untyped-def]
        try:
            yield from range(10**9)
        finally:
            closed.set()

    before = threading.active_count()
    gen = work_ahead(items(), lambda x: x, depth=2)
    assert next(gen) == (0, 0)
    gen.close()
    assert closed.is_set()  # the source was closed, on the worker's thread
    assert threading.active_count() == before


# -- the records are the same ------------------------------------------------------------------


def _one_thread(paths: list[Path], config: EngineConfig, batch: int) -> tuple[list[bytes], dict[str, int]]:
    """What reading gives on one thread: capture batches straight into Engine.process."""
    e = Engine(config)
    out = []
    for p in paths:
        with open_capture(p) as cap:
            for b in cap.batches(batch):
                out += [orjson.dumps(r) for r in e.process(b).records]
    return out + [orjson.dumps(r) for r in e.finish("end_of_input")], e.counters()


def _fragments() -> list[bytes]:
    first = bytearray(pf.udp("10.0.0.1", "10.0.0.2", 7000, 8000, b"A" * 40))
    first[14 + 6 : 14 + 8] = (0x2000).to_bytes(2, "big")  # MF, offset 0
    later = bytearray(pf.udp("10.0.0.1", "10.0.0.2", 1, 1, b"B" * 40))
    later[14 + 6 : 14 + 8] = (5).to_bytes(2, "big")  # offset 40 bytes, no MF
    orphan = bytearray(later)
    orphan[14 + 4 : 14 + 6] = (99).to_bytes(2, "big")  # another IP ID: no first fragment
    return [bytes(first), bytes(later), bytes(orphan)]


@pytest.mark.parametrize("batch", [64, 32768])
def test_reading_on_two_threads_gives_the_records_of_one(tmp_path: Path, batch: int) -> None:
    cap = tmp_path / "gen.pcap"
    write_pcap(cap, 20_000, 300, seed=9)
    traces = sorted(ZEEK.rglob("*.pcap*"))
    assert traces
    frag = tmp_path / "frag.pcap"  # IP fragments: their keys need the engine's fragment map
    frag.write_bytes(pcap_bytes([Rec(1, i, f) for i, f in enumerate(_fragments())]))
    config = EngineConfig(excerpt_bytes=64)
    paths = [cap, *traces, frag]
    with Prefetcher(paths, chunk=64 << 10) as pre:  # small chunks: pages are dropped behind the reader
        a = Analysis(list(paths), config, batch_size=batch, prefetch=pre)
        got = [orjson.dumps(r) for r in a.records()]
        if batch == 64:
            _wait(lambda: pre.dropped > 0)
    want, counters = _one_thread(paths, config, batch)
    assert got == want
    assert a.engine is not None and a.engine.counters() == counters
    assert counters["fragment_without_first"] == 1 and counters["packets"] > 20_000


def test_the_next_file_is_opened_ahead_and_dropped_when_reading_ends_before_it(tmp_path: Path) -> None:
    paths = []
    for seed in (5, 6, 7):
        p = tmp_path / f"{seed}.pcap"
        write_pcap(p, 3_000, 40, seed=seed)
        paths.append(p)
    before = threading.active_count()
    want, _ = _one_thread(paths, EngineConfig(), 1000)
    assert [orjson.dumps(r) for r in read_records(paths)] == want  # (several files: each opened ahead)
    _wait(lambda: threading.active_count() == before)
    def stopped_in_the_first_file(files: list[Path]) -> list[bytes]:
        stop = threading.Event()
        a = Analysis(list(files), batch_size=1000, on_batch=lambda *_: stop.set(), stop=stop)
        return [orjson.dumps(r) for r in a.records()]

    assert stopped_in_the_first_file(paths) == stopped_in_the_first_file(paths[:1])
    _wait(lambda: threading.active_count() == before)  # the second file's reading thread and opener are gone
    # a FIFO next, with no writer yet: opening it waits, and reading that stops does not
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stopped_in_the_first_file([paths[0], fifo]) == stopped_in_the_first_file(paths[:1])
    with open(fifo, "wb"):  # (the opener gets its writer, then the end of the data)
        pass
    _wait(lambda: threading.active_count() == before)


# -- the C reading thread ----------------------------------------------------------------------


def _mixed_frames(seed: int) -> list[bytes]:
    """Common shapes and others (IPv6, VLAN, GENEVE, ICMP, ARP-like, cut frames), in a random order."""
    rng = np.random.default_rng(seed)
    a, b, c6, d6 = "10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"
    shapes = [
        lambda i: pf.vxlan(pf.tcp(a, b, 1000 + i % 50, 80, flags=0x18, payload=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        lambda i: pf.vxlan(pf.tcp(b, a, 80, 1000 + i % 50, flags=0x18, payload=b"HTTP/1.1 200 OK\r\n\r\n")),
        lambda i: pf.vxlan(pf.udp(a, b, 3000 + i % 20, 53, b"\x12\x34" + b"\x00" * 10)),
        lambda i: pf.vxlan(pf.tcp(c6, d6, 2000 + i % 7, 443, flags=0x02)),
        lambda i: pf.vxlan(pf.vlan(pf.udp(a, b, 5000, 9999, b"v" * 30))),
        lambda i: pf.geneve(pf.tcp(a, b, 4000, 22, payload=b"SSH-2.0-x\r\n")),
        lambda i: pf.vxlan(pf.icmp(a, b)),
        lambda i: pf.tcp(a, b, 7000, 8080, payload=b"plain ethernet"),
        lambda i: pf.vxlan(pf.tcp(a, b, 1000, 80, flags=0x18, payload=b"x" * 200))[: 60 + i % 40],  # cut
        lambda i: b"\xff" * 6 + b"\x00" * 6 + b"\x08\x06" + b"\x00" * 28,  # ARP
    ]
    weights = np.array([30, 30, 10, 5, 5, 3, 3, 3, 3, 3], float)
    picks = rng.choice(len(shapes), 3000, p=weights / weights.sum())
    return [shapes[k](i) for i, k in enumerate(picks)]


def _python_side(cap_path: Path, config: EngineConfig, batch: int) -> tuple[list, dict[str, int]]:
    with open_capture(cap_path) as cap:
        out = [(b, prepare(b, config)) for b in cap.batches(batch)]
        return out, dict(cap.counters)


def _same_prepared(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (gb, gp), (wb, wp) in zip(got, want):
        for name in ("start", "caplen", "wirelen", "ts"):
            np.testing.assert_array_equal(getattr(gb, name), getattr(wb, name), err_msg=name)
        assert gb.layer == wb.layer and gp.slow == wp.slow
        for name in Decoded.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(gp.decoded, name), getattr(wp.decoded, name), err_msg=name)
        assert (gp.keys is None) == (wp.keys is None) and (gp.grouped is None) == (wp.grouped is None)
        if wp.keys is not None:
            for name in wp.keys.__dataclass_fields__:
                np.testing.assert_array_equal(getattr(gp.keys, name), getattr(wp.keys, name), err_msg=name)
            for g, w in zip(gp.grouped, wp.grouped):
                np.testing.assert_array_equal(g, w)
        for name in ("app_later", "app_maybe"):
            g, w = getattr(gp, name), getattr(wp, name)
            assert (g is None) == (w is None), name
            if w is not None:
                np.testing.assert_array_equal(g, w, err_msg=name)


def _copied(items: Iterable[tuple[PacketBatch, Prepared]]) -> list:
    """Deep copies: a batch from the C reader views a slot that is filled again later."""
    return [(copy.deepcopy(b), copy.deepcopy(p)) for b, p in items]


@pytest.mark.parametrize(("batch", "config"), [
    (7, EngineConfig()), (256, EngineConfig()), (4096, EngineConfig(app_metadata=False)), (32768, EngineConfig()),
])
def test_c_reader_prepares_what_python_prepares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int, config: EngineConfig
) -> None:
    made: list[object] = []
    real = reader_module.PcapReader
    monkeypatch.setattr(reader_module, "PcapReader", lambda *a, **k: made.append(1) or real(*a, **k))
    frames = _mixed_frames(batch)
    paths = {
        "mixed": pcap_bytes([Rec(1_700_000_000 + i, i, f) for i, f in enumerate(frames)]),
        "fragments": pcap_bytes([Rec(1, i, f) for i, f in enumerate(_fragments() * 50)]),
        "cut_at_the_end": pcap_bytes([Rec(2, i, f) for i, f in enumerate(frames[:500])])[:-7],
        "bad_record": pcap_bytes([Rec(3, i, f) for i, f in enumerate(frames[:300])])
        + struct.pack("<IIII", 4, 0, 1 << 30, 60) + b"x" * 60,
        "nanoseconds_big_endian": pcap_bytes([Rec(5, i * 1000, f) for i, f in enumerate(frames[:400])],
                                             big_endian=True, nanos=True),
        "raw_ip": pcap_bytes([Rec(6, i, f[14:]) for i, f in enumerate(frames[:200]) if f[12:14] == b"\x08\x00"],
                             linktype=101),
        "cooked_v1": pcap_bytes([Rec(7, i, pf.cooked(f, 1)) for i, f in enumerate(frames[:200])], linktype=113),
        "cooked_v2": pcap_bytes([Rec(8, i, pf.cooked(f, 2)) for i, f in enumerate(frames[:200])], linktype=276),
        "header_only": pcap_bytes([]),
    }
    for name, data in paths.items():
        p = tmp_path / f"{name}.pcap"
        p.write_bytes(data)
        want, want_counters = _python_side(p, config, batch)
        with open_capture(p) as cap:
            got = _copied(prepared_batches(cap, config, batch))
            assert dict(cap.counters) == want_counters, name
        _same_prepared(got, want)
    assert len(made) == len(paths) - 1  # every classic pcap but the bare header went through the C reader


def test_c_readers_one_after_the_other_reuse_their_arrays(tmp_path: Path) -> None:
    # (reading many small files, allocating and first touching the arrays again cost 1-2 ms a file)
    paths = []
    for seed in (1, 2):
        p = tmp_path / f"{seed}.pcap"
        write_pcap(p, 3_000, 50, seed=seed)
        paths.append(p)
    config = EngineConfig()
    made: list[reader_module.PcapReader] = []
    real = reader_module.PcapReader

    def spy(*a: object, **k: object) -> reader_module.PcapReader:
        made.append(real(*a, **k))
        return made[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader_module, "PcapReader", spy)
        got = []
        for p in paths:
            with open_capture(p) as cap:
                got += _copied(prepared_batches(cap, config, 1000))
        assert len(made) == 2 and made[0]._buffers is made[1]._buffers  # the second took the first's
        with open_capture(paths[0]) as a, open_capture(paths[1]) as b:  # two at once: each its own
            ga, gb = prepared_batches(a, config, 1000), prepared_batches(b, config, 1000)
            both = _copied([next(ga), next(gb)])
            assert made[2]._buffers is not made[3]._buffers
            ga.close()
            gb.close()
    want = []
    for p in paths:
        want += _python_side(p, config, 1000)[0]
    _same_prepared(got, want)
    _same_prepared(both, [want[0], want[3]])  # (3,000 packets a file: three batches each)


def test_c_reader_waits_for_a_slow_consumer_and_stops_when_it_stops(tmp_path: Path) -> None:
    p = tmp_path / "gen.pcap"
    write_pcap(p, 20_000, 100, seed=4)
    config = EngineConfig()
    want, _ = _python_side(p, config, 512)
    with open_capture(p) as cap:
        got = []
        for item in prepared_batches(cap, config, 512):
            time.sleep(0.002)  # the thread fills every slot and waits
            got += _copied([item])
    _same_prepared(got, want)
    before = threading.active_count()
    with open_capture(p) as cap:
        gen = prepared_batches(cap, config, 512)
        next(gen)
        next(gen)
        gen.close()  # the consumer stops early: the thread stops too
    assert threading.active_count() == before


@pytest.mark.parametrize("seed", range(8))
def test_c_reader_on_captures_full_of_garbage(tmp_path: Path, seed: int) -> None:
    # random record data full of fake record headers, maybe a bad record, maybe cut: the C thread
    # reads what the Python side reads, with the same counters
    data, _ = _tricky_capture(seed)
    p = tmp_path / "tricky.pcap"
    p.write_bytes(data.tobytes())
    config = EngineConfig(excerpt_bytes=32)
    want, want_counters = _python_side(p, config, 300)
    with open_capture(p) as cap:
        got = _copied(prepared_batches(cap, config, 300))
        assert dict(cap.counters) == want_counters
    _same_prepared(got, want)
    e = Engine(config)
    with open_capture(p) as cap:  # and the engine takes it
        for b, prep in prepared_batches(cap, config, 300):
            e.process(b, prep)
    assert e.counters()["packets"] == want_counters["records"]


def _pcapng_sections(seed: int, frames: list[bytes], one_linktype: bool) -> bytes:
    """Sections in both byte orders; interfaces of several time resolutions (one too fine to split
    into seconds and fractions) and offsets, all Ethernet (``one_linktype``: the C reading thread
    takes their runs) or not; runs of enhanced packet blocks broken by skipped blocks, bad blocks,
    blocks of undeclared interfaces, simple packet blocks (they take the time before them) and an
    interface declared mid-section; maybe cut at the end."""
    rng = np.random.default_rng(seed)
    frames = iter(frames)
    out = b""
    for _ in range(int(rng.integers(1, 4))):
        w = NgWriter(bool(rng.integers(0, 2))).shb()
        n_if = 0

        def idb(w: NgWriter) -> None:
            nonlocal n_if
            linktype = 1 if one_linktype else int(rng.choice([1, 101, 105]))
            w.idb(linktype, tsresol=int(rng.choice([6, 9, 0x80 | 20, 19])), tsoffset=int(rng.integers(0, 3)))
            n_if += 1

        for _i in range(int(rng.integers(1, 4))):
            idb(w)
        for _ in range(int(rng.integers(1, 6))):  # runs
            for _ in range(int(rng.integers(1, 300))):
                f = next(frames)
                units, extra = int(rng.integers(0, 2**62)), int(rng.integers(0, 3))
                w.epb(int(rng.integers(0, n_if)), units, f, wirelen=len(f) + extra)
            kind = rng.random()  # what ends the run
            if kind < 0.2:
                w.raw_block(int(rng.choice([4, 5, 0x80000001])), b"\0" * 8)
            elif kind < 0.35:
                w.epb(n_if + 1, 5, next(frames))  # an undeclared interface
            elif kind < 0.5:
                w.epb(0, 7, next(frames))
                bad = bytearray(w.parts[-1])
                bad[-4:] = b"\x01\x00\x00\x00"  # a wrong trailing length: counted, the packet kept
                w.parts[-1] = bytes(bad)
            elif kind < 0.65:
                w.spb(next(frames))
            elif kind < 0.8:
                idb(w)
        out += w.bytes()
    cut = int(rng.integers(1, 50)) if rng.random() < 0.3 else 0
    return out[: len(out) - cut]


def _per_packet(items: list) -> dict[str, np.ndarray]:
    """The batches' record columns, layers and decoded columns, packet by packet."""
    cols: dict[str, list] = {}
    for b, p in items:
        for name in ("start", "caplen", "wirelen", "ts"):
            cols.setdefault(name, []).append(getattr(b, name))
        cols.setdefault("layer", []).append(np.full(b.count, int(b.layer)))
        for name in Decoded.__dataclass_fields__:
            cols.setdefault(name, []).append(getattr(p.decoded, name))
    return {name: np.concatenate(parts) for name, parts in cols.items()}


@pytest.mark.parametrize("seed", range(10))
def test_c_reader_takes_the_runs_of_a_pcapng_as_the_walk_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    runs: list[int] = []
    real = reader_module.PcapReader
    monkeypatch.setattr(reader_module, "PcapReader",
                        lambda *a, **k: runs.append(len(k["interfaces"] or ())) or real(*a, **k))
    one_linktype = seed % 5 != 4
    p = tmp_path / "x.pcapng"
    p.write_bytes(_pcapng_sections(seed, _mixed_frames(seed) * 2, one_linktype))
    config = EngineConfig(excerpt_bytes=32)
    batch = [5, 64, 300, 32768][seed % 4]
    want, want_counters = _python_side(p, config, batch)
    with open_capture(p) as cap:
        got = _copied(prepared_batches(cap, config, batch))
        assert dict(cap.counters) == want_counters
    got_cols, want_cols = _per_packet(got), _per_packet(want)
    assert got_cols.keys() == want_cols.keys()
    for name in want_cols:  # times to the bit
        np.testing.assert_array_equal(got_cols[name], want_cols[name], err_msg=name)
    assert want_counters["records"] > 100
    if one_linktype:
        assert runs and all(runs)  # the C thread read the runs, with the section's interfaces
    # and the records are those of one thread reading the batches the walk makes itself
    assert [orjson.dumps(r) for r in Analysis([p], config, batch_size=batch).records()] == _one_thread([p], config,
                                                                                                        batch)[0]


def test_a_pcapng_of_many_short_runs_starts_a_bounded_number_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []
    real = reader_module.PcapReader
    monkeypatch.setattr(reader_module, "PcapReader", lambda *a, **k: runs.append(1) or real(*a, **k))
    w = NgWriter().shb().idb(1)
    frames = _mixed_frames(3)
    for i, f in enumerate(frames[:400]):
        w.epb(0, i, f)
        if i % 10 == 9:
            w.raw_block(4, b"\0" * 8)  # a run of 10, then a block the walk reads
    p = tmp_path / "short.pcapng"
    p.write_bytes(w.bytes())
    config = EngineConfig()
    want, want_counters = _python_side(p, config, 64)
    with open_capture(p) as cap:
        got = _copied(prepared_batches(cap, config, 64))
        assert dict(cap.counters) == want_counters
    for name, col in _per_packet(want).items():
        np.testing.assert_array_equal(_per_packet(got)[name], col, err_msg=name)
    assert len(runs) == 16 and want_counters["records"] == 400  # then the walk read the other 24 runs
    before = threading.active_count()
    with open_capture(p) as cap:  # a consumer that stops early stops the thread
        gen = prepared_batches(cap, config, 64)
        next(gen)
        gen.close()
    assert threading.active_count() == before


def test_gzip_captures_read_in_pieces_as_plain_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # decompressed as they are read, a piece at a time, on the thread that works ahead
    monkeypatch.setattr(capture_module, "STREAM_CHUNK", 100_000)
    plain = tmp_path / "gen.pcap"
    write_pcap(plain, 8_000, 120, seed=2)
    gz = tmp_path / "gen.pcap.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    with open_capture(gz) as cap:
        assert cap.streamed and cap.data.shape[0] < plain.stat().st_size
    want = [orjson.dumps(r) for r in read_records(plain)]
    assert want and [orjson.dumps(r) for r in read_records(gz)] == want


def test_a_capture_from_a_pipe_reads_like_the_file_through_a_bigger_pipe(tmp_path: Path) -> None:
    # a 64 KiB pipe made the writer and the reader wake each other for every 64 KiB: 1 GB through
    # `cat F | vxmirror read -` took 1.66 s, 0.89 s through 1 MiB (medians of 6 runs each)
    import fcntl

    plain = tmp_path / "gen.pcap"
    write_pcap(plain, 20_000, 150, seed=8)
    data = plain.read_bytes()
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    try:
        with os.fdopen(r, "rb") as f:
            assert fcntl.fcntl(f.fileno(), fcntl.F_GETPIPE_SZ) == 64 << 10
            writer.start()
            with capture_module.open_capture(f"/dev/fd/{f.fileno()}") as cap:
                assert cap.streamed
                assert fcntl.fcntl(f.fileno(), fcntl.F_GETPIPE_SZ) == 1 << 20
                assert sum(b.count for b in cap.batches(4096)) == 20_000
    finally:
        writer.join()
    want = [orjson.dumps(rec) for rec in read_records(plain)]
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    try:
        assert [orjson.dumps(rec) for rec in read_records(f"/dev/fd/{r}")] == want
    finally:
        writer.join()
        os.close(r)


def test_a_live_stream_is_read_as_it_comes_not_once_a_piece_is_full(tmp_path: Path) -> None:
    # `tcpdump -w - | vxmirror read -`: what came is analysed when the source goes quiet, not once
    # 64 MiB have come (a slow source could take hours)
    plain = tmp_path / "gen.pcap"
    write_pcap(plain, 20_000, 150, seed=9)
    data = plain.read_bytes()
    half = len(data) // 2
    fifo = tmp_path / "live"
    os.mkfifo(fifo)
    first_half_read = threading.Event()
    waited: list[bool] = []

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data[:half])
            f.flush()
            waited.append(first_half_read.wait(30))  # (the rest comes once the first half was analysed)
            f.write(data[half:])

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        a = Analysis([fifo], on_batch=lambda *_: first_half_read.set())
        got = [orjson.dumps(rec) for rec in a.records()]
    finally:
        first_half_read.set()
        writer.join()
    assert waited == [True]  # analysed while the source was quiet
    assert a.summary()["packets"] == 20_000
    assert got == [orjson.dumps(rec) for rec in read_records(plain)]  # the same records as the file


def test_prefetch_leaves_a_pipe_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer (and reader) that never blocks
    try:
        os.write(fd, b"\xd4\xc3\xb2\xa1" + b"\x00" * 20)
        with Prefetcher([fifo]) as p:
            assert p.mapping(0) is None
        assert os.read(fd, 4) == b"\xd4\xc3\xb2\xa1"  # nothing was taken from the pipe
    finally:
        os.close(fd)


def test_prefetch_does_not_wait_for_a_fifo_writer(tmp_path: Path) -> None:
    # opening a FIFO for reading waits for a writer: the prefetcher must not (the capture reader
    # opens it, and so may wait, itself)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[object] = []
    p = Prefetcher([fifo, "-"])
    asking = threading.Thread(target=lambda: got.extend([p.mapping(0), p.mapping(1)]))
    asking.start()
    asking.join(10)
    try:
        assert got == [None, None], "the prefetcher waited for the FIFO's writer"
    finally:
        if not got:  # let the thread go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        p.close()


def test_the_read_command_leaves_the_collector_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `vxmirror read` turns the collector off while it imports, then freezes start-up objects
    # and collects more rarely; run in-process (as here), it puts the collector back, also when
    # it stops early
    import gc

    from receiver.cli import main

    during: list[bool] = []
    batches = Analysis.batches

    def watched(self: Analysis) -> object:
        during.append(gc.isenabled())  # on while records are made: a long read's cycles are collected
        return batches(self)

    monkeypatch.setattr(Analysis, "batches", watched)
    p = tmp_path / "gen.pcap"
    write_pcap(p, 2_000, 40, seed=3)
    before = gc.get_threshold()
    assert gc.isenabled()
    assert main(["read", str(p), "-o", str(tmp_path / "out.jsonl"), "--quiet"]) == 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0 and gc.isenabled()
    assert during == [True]
    assert (tmp_path / "out.jsonl").read_bytes().count(b"\n") == len(list(read_records(p)))
    assert main(["read", str(p), "--excerpt-bytes", "99999", "--quiet"]) == 2  # before the engine starts
    assert gc.get_threshold() == before and gc.isenabled()


def test_the_records_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    # timeouts are checked once a batch; at the end of the input, flows whose TCP close linger or
    # idle timeout ran out by the last packet end as such, wherever the last check fell
    p = tmp_path / "gen.pcap"
    write_pcap(p, 60_000, 500, seed=17)  # 0.4 s of traffic: a short linger and checks to match
    cfg = EngineConfig(tcp_close_linger=0.05, expire_interval=0.05, udp_idle_timeout=0.5, other_idle_timeout=0.5)
    got = {b: sorted(orjson.dumps(r) for r in Analysis([p], cfg, batch_size=b).records()) for b in (700, 4096, 32768)}
    assert got[700] == got[4096] == got[32768]
    reasons = Counter(orjson.loads(r)["end_reason"] for r in got[700])
    assert reasons["tcp_close"] > 100 and reasons["end_of_input"] > 100 and reasons["idle"] > 10
