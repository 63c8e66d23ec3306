"""Reading on two cores: the prefetcher that faults a capture in ahead of the reader, the thread
that prepares batches ahead of the flow table, and that both leave every record unchanged."""

from __future__ import annotations

import gzip
import re
import threading
import time
from pathlib import Path

import orjson
import pytest

from receiver.capture import open_capture
from receiver.engine import Engine
from receiver.prefetch import Prefetcher
from receiver.read import Analysis, read_records
from receiver.readahead import work_ahead
from receiver.settings import EngineConfig
from receiver.traffic import write_pcap
from tests import packet_factory as pf
from tests.capture_fixtures import Rec, pcap_bytes

ZEEK = Path(__file__).resolve().parents[1].parent / "shared" / "captures" / "zeek"
MB = 1 << 20


def _wait(cond: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
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


def test_prefetch_fills_the_page_tables_ahead_of_the_reader_and_no_further(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\xa1" * (40 * MB))
    with Prefetcher([path], ahead=8 * MB, chunk=MB) as p:
        m = p.mapping(0)
        assert m is not None and len(m) == 40 * MB
        _wait(lambda: p.populated == 8 * MB)
        time.sleep(0.1)
        assert p.populated == 8 * MB  # the window: no further until the reader moves
        assert _rss_of_mapping(path) >= 8 * MB  # really in this process's page tables
        p.reached(0, 20 * MB)
        _wait(lambda: p.populated == 28 * MB)
        p.reached(0, 39 * MB)
        _wait(lambda: p.populated == 40 * MB)  # up to the end of the file, not past it
        assert _rss_of_mapping(path) >= 40 * MB


def test_prefetch_moves_on_when_the_reader_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * (32 * MB))
    b.write_bytes(b"b" * (4 * MB))
    with Prefetcher([a, b], ahead=4 * MB, chunk=MB) as p:
        ma = p.mapping(0)
        _wait(lambda: p.populated == 4 * MB)
        p.reached(1, 0)  # the reader left file a early: the rest of it is not populated
        mb = p.mapping(1)
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
    a = Analysis(list(paths), config, batch_size=batch)
    got = [orjson.dumps(r) for r in a.records()]
    want, counters = _one_thread(paths, config, batch)
    assert got == want
    assert a.engine is not None and a.engine.counters() == counters
    assert counters["fragment_without_first"] == 1 and counters["packets"] > 20_000
