"""A capture truncated while it is read (tcpdump's ring buffer reusing the file, a copytruncate
rotation) must not end the process with SIGBUS: the reader stops at the cut, says so, and keeps
the records before it (receiver/capture/mapguard.py, receiver/capture/vxguard.c)."""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from receiver import native
from receiver.capture import CaptureError, mapguard, open_capture
from receiver.capture.read import Analysis, read_records
from receiver.traffic import write_pcap
from tests.capture_fixtures import NgWriter

pytestmark = pytest.mark.skipif(not native.available(), reason="the guard is part of the native library")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_a_guarded_mapping_reads_zeros_past_the_new_end(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (1 << 22))
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert mapguard.guard(m) and mapguard.guard(m)  # (again: the same guard)
    os.truncate(path, 10_000)
    assert m[5_000] == ord("x") and m[1 << 21] == 0 and m[(1 << 22) - 1] == 0
    assert mapguard.faults(m) == 2  # two pages, each replaced once
    at = mapguard.address(m)
    m.close()
    del m
    assert at not in mapguard._guards  # released with the mapping


def test_without_the_guard_the_same_read_is_fatal_and_other_faults_stay_fatal(tmp_path: Path) -> None:
    """What the guard prevents, and what it must not hide: a SIGBUS on a mapping it does not guard
    still ends the process (after faulthandler's report, when that is on)."""
    path = tmp_path / "f.bin"
    setup = f"""
        import mmap, os
        from receiver.capture import mapguard
        open({str(path)!r}, "wb").write(b"x" * (1 << 22))
        f = open({str(path)!r}, "rb")
        guarded = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        other = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        os.truncate({str(path)!r}, 10_000)
    """
    plain = _python(setup.replace("from receiver.capture import mapguard", "") + "\n        print(other[1 << 21])")
    assert plain.returncode == -signal.SIGBUS
    r = _python(setup + "\n        mapguard.guard(guarded)\n        print(guarded[1 << 21], flush=True)\n"
                "        import faulthandler; faulthandler.enable()\n        mapguard.guard(guarded)\n"
                "        print(other[1 << 21])")
    assert r.returncode == -signal.SIGBUS and r.stdout == "0\n"
    assert "Fatal Python error: Bus error" in r.stderr  # chained to the handler installed before


def _as_pcapng(pcap: bytes, records: int | None = None) -> bytes:
    """The first ``records`` records (all: None) of a little-endian microsecond Ethernet pcap, as a
    pcapng with one interface (what ``editcap -F pcapng`` writes, in short)."""
    w = NgWriter().shb().idb(1)
    pos, n = 24, 0
    while pos < len(pcap) and (records is None or n < records):
        sec, usec, cap, orig = struct.unpack_from("<IIII", pcap, pos)
        w.epb(0, sec * 1_000_000 + usec, pcap[pos + 16 : pos + 16 + cap], wirelen=orig)
        pos += 16 + cap
        n += 1
    return w.bytes()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_capture_cut_while_read_stops_there_with_its_records(tmp_path: Path, fmt: str) -> None:
    """The file is cut to a few bytes after the first batch: the reader (C thread, prefetcher and
    all, reading ahead into the cut) lives on, names the file, and gives the first batch's flows,
    as a capture holding just that batch would."""
    path, first = tmp_path / f"ring0.{fmt}", tmp_path / f"first.{fmt}"
    write_pcap(path, 20_000, 200, seed=3)
    batch = 4096
    data = path.read_bytes()
    if fmt == "pcapng":
        path.write_bytes(_as_pcapng(data))
        first.write_bytes(_as_pcapng(data, batch))
    else:
        pos, n = 24, 0
        while n < batch:  # the first batch's records, as a capture of their own
            pos += 16 + int.from_bytes(data[pos + 8 : pos + 12], "little")
            n += 1
        first.write_bytes(data[:pos])
    cut = False

    def truncate(*_: object) -> None:
        nonlocal cut
        if not cut:
            os.truncate(path, 4096)  # (what tcpdump -W does to the oldest file it reuses)
            cut = True

    a = Analysis([path], batch_size=batch, on_batch=truncate, keep_going=True)
    got = sorted(orjson.dumps(r) for r in a.records())
    assert cut and len(a.errors) == 1
    assert f"ring0.{fmt}: the file shrank to 4096 bytes while being read" in a.errors[0]
    assert got == sorted(orjson.dumps(r) for r in read_records(first))
    assert a.summary()["packets"] == batch and a.summary()["capture_failed_files"] == 1


def test_the_cli_survives_a_capture_cut_under_it(tmp_path: Path) -> None:
    """The same through ``vxmirror read``, with the cut made from outside while it reads."""
    path = tmp_path / "ring1.pcap"
    write_pcap(path, 200_000, 500, seed=4)
    out = tmp_path / "out.jsonl"
    code = f"""
        import os, sys
        from receiver import engine
        process = engine.Engine.process

        def cut_after_first(self, *args):
            result = process(self, *args)
            if self.counters()["packets"] <= 32768:  # (after the first batch)
                os.truncate({str(path)!r}, 1_000_000)
            return result

        engine.Engine.process = cut_after_first
        from receiver.cli import main
        sys.exit(main(["read", {str(path)!r}, "-o", {str(out)!r}]))
    """
    r = _python(code)
    assert r.returncode == 1, r.stderr
    assert "ring1.pcap: the file shrank to 1000000 bytes while being read" in r.stderr
    assert "Traceback" not in r.stderr and out.read_bytes().count(b"\n") > 0


def test_the_capture_reader_itself_stops_at_the_cut(tmp_path: Path) -> None:
    """Other readers of captures (``vxmirror replay``, the Python reading thread for pcapng, gzip
    or no C library) get the same: the packets before the cut, then the error."""
    path = tmp_path / "ring2.pcap"
    write_pcap(path, 20_000, 200, seed=5)
    got = 0
    with open_capture(path) as cap:
        batches = cap.batches(4096)
        got += next(batches).count
        os.truncate(path, 6_000_000)
        with pytest.raises(CaptureError, match=r"ring2\.pcap: the file shrank to 6000000 bytes .* stopped at byte"):
            for b in batches:
                got += b.count
                assert int(b.start[-1]) + int(b.caplen[-1]) <= 6_000_000
    whole = 0
    with open_capture(path) as cut:  # what the cut file holds whole: the same packets
        for b in cut.batches(4096):
            whole += b.count
    assert 4096 < got == whole
