"""Capture reader: formats, byte orders, compression, truncation, errors, zero copy."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import dpkt
import numpy as np
import orjson
import pytest

from receiver import capture as capture_module
from receiver import native
from receiver.capture import CaptureError, iter_captures, open_capture
from receiver.capture import pcap as capture_pcap
from receiver.capture import pcapng as capture_pcapng
from receiver.capture.read import Analysis, read_records
from receiver.packets import Layer, PacketBatch
from receiver.traffic import write_pcap
from tests.capture_fixtures import NgWriter, Rec, eth_frame, pcap_bytes, random_records

ZEEK = Path(__file__).resolve().parents[2] / "shared" / "captures" / "zeek"
TRACES = sorted(p for p in ZEEK.glob("*/*.pcap*")) if ZEEK.is_dir() else []


def read_all(path: Path | str, batch_size: int = 8192) -> tuple[list[PacketBatch], dict[str, int]]:
    with open_capture(path) as cap:
        batches = list(cap.batches(batch_size))
        return batches, dict(cap.counters)


def frames(batches: list[PacketBatch]) -> list[bytes]:
    return [b.frame(i) for b in batches for i in range(b.count)]


def column(batches: list[PacketBatch], name: str) -> np.ndarray:
    return np.concatenate([getattr(b, name) for b in batches]) if batches else np.zeros(0)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_real_traces_match_dpkt(path: Path) -> None:
    batches, counters = read_all(path, batch_size=7)
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if path.suffix == ".pcapng" else dpkt.pcap.Reader(f)
        expected = [(ts, bytes(buf)) for ts, buf in reader]
    assert frames(batches) == [buf for _, buf in expected]
    np.testing.assert_allclose(column(batches, "ts"), [float(ts) for ts, _ in expected], atol=1e-6)
    assert counters["records"] == len(expected)
    assert counters["truncated_records"] == counters["bad_records"] == counters["bad_blocks"] == 0
    assert all(b.layer is Layer.ETHERNET for b in batches)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_magics_and_byte_orders(tmp_path: Path, big_endian: bool, nanos: bool) -> None:
    recs = random_records(300, seed=int(big_endian) * 2 + int(nanos), nanos=nanos)
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(recs, big_endian=big_endian, nanos=nanos))
    batches, counters = read_all(path, batch_size=64)
    assert [b.count for b in batches] == [64, 64, 64, 64, 44]
    assert frames(batches) == [r.data for r in recs]
    assert column(batches, "caplen").tolist() == [len(r.data) for r in recs]
    assert column(batches, "wirelen").tolist() == [r.orig for r in recs]
    scale = 1e-9 if nanos else 1e-6
    np.testing.assert_allclose(column(batches, "ts"), [r.ts_sec + r.ts_frac * scale for r in recs], rtol=0, atol=1e-6)
    assert counters["records"] == 300


def test_zero_copy_batches_view_the_mapped_file(tmp_path: Path) -> None:
    recs = random_records(50, seed=3)
    path = tmp_path / "z.pcap"
    data = pcap_bytes(recs)
    path.write_bytes(data)
    with open_capture(path) as cap:
        (batch,) = list(cap.batches())
        assert batch.buf.shape[0] == len(data)  # the whole file, not a copy of records
        assert not batch.buf.flags.writeable and not batch.buf.flags.owndata
        assert batch.start[0] == 24 + 16
        assert bytes(batch.buf[: len(data)]) == data


def test_pcap_timestamps_agree_with_tshark(tmp_path: Path) -> None:
    recs = [Rec(1_700_000_000 + i, 123_456_789 + i, eth_frame(40 + i, seed=i), None) for i in range(20)]
    path = tmp_path / "ns.pcap"
    path.write_bytes(pcap_bytes(recs, big_endian=True, nanos=True))
    batches, _ = read_all(path)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.cap_len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    np.testing.assert_allclose(column(batches, "ts"), [float(x) for x in out[0::2]], atol=1e-6)
    assert column(batches, "caplen").tolist() == [int(x) for x in out[1::2]]


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    recs = random_records(100, seed=5)
    path = tmp_path / "capture.bin"
    path.write_bytes(gzip.compress(pcap_bytes(recs)))
    with open_capture(path) as cap:
        batches = list(cap.batches())
        assert cap.compressed
    assert frames(batches) == [r.data for r in recs]


def test_gzip_pcapng(tmp_path: Path) -> None:
    w = NgWriter().shb().idb(1)
    for i in range(5):
        w.epb(0, 1_000_000 * (1_700_000_000 + i), eth_frame(30, seed=i))
    path = tmp_path / "x.pcapng.gz"
    path.write_bytes(gzip.compress(w.bytes()))
    batches, counters = read_all(path)
    assert counters["records"] == 5
    assert column(batches, "ts").tolist() == [1_700_000_000.0 + i for i in range(5)]


def _cut_and_bad(recs: list[Rec], big_endian: bool = False, nanos: bool = False) -> dict[str, bytes]:
    """Captures of ``recs``: whole, with the last record cut, and with an impossible record header
    half-way."""
    whole = pcap_bytes(recs, big_endian=big_endian, nanos=nanos)
    bad = bytearray(whole)
    half = 24 + sum(16 + len(r.data) for r in recs[: len(recs) // 2])
    struct.pack_into(">I" if big_endian else "<I", bad, half + 8, 1 << 30)
    return {"whole": whole, "cut": whole[:-7], "bad": bytes(bad)}


def _write_fifo(path: Path, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):  # a reader that stops at a bad record closes its end
        path.write_bytes(data)


@pytest.mark.parametrize("piece", [700, 5_000, 20_000])
@pytest.mark.parametrize("how", ["gzip", "fifo", "fifo-gzip"])
def test_a_gzip_file_or_a_stream_reads_in_pieces_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int, how: str
) -> None:
    # read as they come, a piece at a time (records cut by a piece's end carried over): the same
    # packets, times and counters as the file mapped whole, and no piece much larger than asked
    monkeypatch.setattr(capture_module, "STREAM_CHUNK", piece)
    monkeypatch.setattr(capture_module, "READ_SIZE", 4096)  # read and decompressed at a time
    files = _cut_and_bad(random_records(300, seed=21))
    files |= {f"nanos-big-endian-{k}": v for k, v in _cut_and_bad(random_records(200, seed=22, nanos=True),
                                                                      big_endian=True, nanos=True).items()}
    files["zeros"] = pcap_bytes([Rec(1, i, b"\0" * 1500) for i in range(200)])  # gzip: 1000 to 1 and more
    for name, data in files.items():
        plain = tmp_path / f"{name}.pcap"
        plain.write_bytes(data)
        blob = gzip.compress(data[:1000]) + gzip.compress(data[1000:]) if "gzip" in how else data  # two members
        if how == "gzip":
            source = tmp_path / f"{name}.pcap.gz"
            source.write_bytes(blob)
            got, got_counters = read_all(source, batch_size=64)
        else:
            source = tmp_path / f"{name}.fifo"
            os.mkfifo(source)
            writer = threading.Thread(target=_write_fifo, args=(source, blob))
            writer.start()
            got, got_counters = read_all(source, batch_size=64)
            writer.join()
        want, want_counters = read_all(plain, batch_size=64)
        assert frames(got) == frames(want) and len(frames(got)) >= 100, name
        np.testing.assert_array_equal(column(got, "ts"), column(want, "ts"))
        assert got_counters == want_counters, name
        # a piece: what was asked, one more read, and a record cut at its end
        assert max(b.buf.shape[0] for b in got) <= piece + 4096 + 1616 < len(data) // 4, name


def test_standard_input_is_read_by_the_command(tmp_path: Path) -> None:
    # `aws s3 cp s3://bucket/x.pcap.gz - | vxmirror read -`
    path = tmp_path / "gen.pcap"
    write_pcap(path, 3_000, 40, seed=5)
    want = [orjson.dumps(r) for r in read_records(path)]
    for data in (path.read_bytes(), gzip.compress(path.read_bytes())):
        out = subprocess.run([sys.executable, "-m", "receiver.cli", "read", "-", "--quiet"], input=data,
                             capture_output=True, timeout=120, check=True).stdout
        assert out.splitlines() == want
    empty = subprocess.run([sys.executable, "-m", "receiver.cli", "read", "-"], input=b"", capture_output=True,
                           timeout=120)
    assert empty.returncode == 1 and b"-: empty file, not a capture" in empty.stderr


def test_the_console_script_ends_read_with_everything_written(tmp_path: Path) -> None:
    """`vxmirror read` ends the process without unloading the interpreter (os._exit): every record
    on standard output, the summary on stderr and the exit status must still be there."""
    path = tmp_path / "gen.pcap"
    write_pcap(path, 60_000, 3_000, seed=6)
    want = sorted(orjson.dumps(r) for r in read_records(path))
    exe = Path(sys.executable).parent / "vxmirror"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (buffered, as usual)
    r = subprocess.run([str(exe), "read", str(path)], capture_output=True, timeout=120, env=env)
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == want and len(want) > 2_000
    assert b"packets read" in r.stderr and b"records                 3,000" in r.stderr
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 100)
    r = subprocess.run([str(exe), "read", str(path), str(bad), "--quiet"], capture_output=True, timeout=120, env=env)
    assert r.returncode == 1 and sorted(r.stdout.splitlines()) == want and b"bad.pcap: not a pcap" in r.stderr


def test_the_command_says_what_it_cannot_read_or_write_before_any_work(tmp_path: Path) -> None:
    good = tmp_path / "gen.pcap"
    write_pcap(good, 2_000, 40, seed=5)
    out = tmp_path / "out.jsonl"
    cli = [sys.executable, "-m", "receiver.cli", "read"]
    for files, message in (
        ([good, tmp_path / "missing.pcap"], b"missing.pcap: cannot open (No such file or directory)"),
        ([good, tmp_path], b": cannot open (Is a directory)"),
    ):
        r = subprocess.run([*cli, *map(str, files), "-o", str(out)], capture_output=True, timeout=120)
        assert r.returncode == 1 and message in r.stderr and b"Traceback" not in r.stderr
        assert not out.exists()  # nothing was started
    r = subprocess.run([*cli, str(good), "-o", str(tmp_path / "no-such-dir" / "out.jsonl")], capture_output=True,
                       timeout=120)
    assert r.returncode == 1 and b"no-such-dir/out.jsonl: cannot write (No such file or directory)" in r.stderr
    assert b"Traceback" not in r.stderr


def _records_of(paths: list[Path]) -> list[bytes]:
    return sorted(orjson.dumps(r) for r in read_records(paths))


def test_a_file_that_fails_costs_no_records_of_the_others(tmp_path: Path) -> None:
    """``vxmirror read a.pcap notes.txt b.pcap``: the file that is no capture is named and skipped,
    the others are read whole (flows still open at the end included), and the exit status is 1."""
    first, bad, last = tmp_path / "a.pcap", tmp_path / "notes.txt", tmp_path / "b.pcap"
    write_pcap(first, 30_000, 300, seed=5)
    write_pcap(last, 30_000, 300, seed=6)
    bad.write_text("not a capture\n")
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "receiver.cli", "read", str(first), str(bad), str(last), "-o",
                        str(out)], capture_output=True, timeout=120)
    assert r.returncode == 1 and b"notes.txt: not a pcap or pcapng capture" in r.stderr
    assert b"capture_failed_files 1" in r.stderr and b"Traceback" not in r.stderr
    assert sorted(out.read_bytes().splitlines()) == _records_of([first, last])


def test_the_library_emits_the_open_flows_before_it_raises(tmp_path: Path) -> None:
    """Without keep_going a failing file still raises, but only after the flows open so far are
    emitted (the records of the files before it are all there)."""
    good, bad = tmp_path / "gen.pcap", tmp_path / "notes.txt"
    write_pcap(good, 30_000, 300, seed=5)
    bad.write_text("not a capture\n")
    got: list[bytes] = []
    with pytest.raises(CaptureError, match=r"notes\.txt: not a pcap"):
        for rec in read_records([good, bad]):
            got.append(orjson.dumps(rec))
    assert sorted(got) == _records_of([good])
    assert sum(orjson.loads(x)["end_reason"] == "end_of_input" for x in got) > 0
    a = Analysis([bad, good], keep_going=True)
    assert sorted(orjson.dumps(r) for r in a.records()) == _records_of([good])
    assert a.errors == [f"{bad}: not a pcap or pcapng capture (starts with {b'not a capture'[:4].hex()})"]
    assert a.summary()["capture_failed_files"] == 1


def test_gzip_corrupt_part_way_keeps_what_was_decompressed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a damaged tail (a bad disk block, a botched copy) must not cost the whole capture
    recs = [Rec(1_700_000_000 + i, i, eth_frame(200, seed=i % 7)) for i in range(20_000)]  # 4.5 MB, compressible
    blob = gzip.compress(pcap_bytes(recs))
    rng = np.random.default_rng(1)
    path = tmp_path / "damaged.pcap.gz"
    path.write_bytes(blob[: len(blob) // 2] + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.WARNING):
        batches, counters = read_all(path)
    n = counters["records"]
    # decompressed a MiB at a time: what came out before the call that met the damage is read
    assert counters["gzip_corrupt"] == 1 and 0 < n < 20_000 and frames(batches)[:-1] == [r.data for r in recs[: n - 1]]
    assert "corrupt gzip data after" in caplog.text
    out = subprocess.run([sys.executable, "-m", "receiver.cli", "read", str(path)], capture_output=True, timeout=120)
    assert out.returncode == 0 and out.stdout.count(b"\n") > 0 and b"capture_gzip_corrupt 1" in out.stderr


def test_truncated_gzip_keeps_what_was_decompressed(tmp_path: Path) -> None:
    recs = random_records(400, seed=6)
    blob = gzip.compress(pcap_bytes(recs), compresslevel=1)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(blob[: len(blob) * 3 // 4])
    batches, counters = read_all(path)
    assert counters["gzip_truncated"] == 1
    n = counters["records"]
    assert 0 < n < 400 and frames(batches) == [r.data for r in recs[:n]]
    assert counters["truncated_records"] == 1  # the record the cut went through


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, 100])
def test_truncated_final_record_is_counted(tmp_path: Path, cut: int) -> None:
    recs = random_records(10, seed=7, lo=200, hi=300)
    data = pcap_bytes(recs)
    path = tmp_path / "cut.pcap"
    last_start = len(data) - 16 - len(recs[-1].data)
    path.write_bytes(data[: last_start + cut])
    batches, counters = read_all(path)
    assert frames(batches) == [r.data for r in recs[:9]]
    assert counters["truncated_records"] == 1 and counters["records"] == 9


def test_impossible_record_length_stops_and_counts(tmp_path: Path) -> None:
    recs = random_records(5, seed=8)
    data = bytearray(pcap_bytes(recs))
    third = 24 + sum(16 + len(r.data) for r in recs[:2])
    data[third + 8 : third + 12] = (0x7FFFFFF0).to_bytes(4, "little")
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    batches, counters = read_all(path)
    assert frames(batches) == [r.data for r in recs[:2]]
    assert counters["bad_records"] == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b"hello world, this is not a capture at all", "not a pcap or pcapng capture"),
        (bytes.fromhex("d4c3b2a1") + b"\x02\x00\x04", "ends inside the pcap file header"),
        (bytes.fromhex("0a0d0d0a") + b"\x1c\0\0\0", "ends inside the pcapng section header"),
        (b"\x1f\x8b\x08\x00garbage-not-deflate", "corrupt gzip data"),
    ],
)
def test_not_a_capture_raises_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bogus.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as ei:
        open_capture(path)
    assert str(path) in str(ei.value) and problem in str(ei.value)
    assert ei.value.__cause__ is None  # one clear message, no chained traceback


def test_missing_file_raises_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"nope\.pcap: cannot open"):
        open_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path)


def test_unsupported_linktype_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcap_bytes(random_records(7, seed=9), linktype=105))
    with caplog.at_level(logging.WARNING):
        batches, counters = read_all(path)
    assert batches == [] and counters["unsupported_linktype"] == 7 and counters["records"] == 0
    assert "link type 105 is not supported" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize(
    ("linktype", "layer"),
    [(101, Layer.RAW_IP), (228, Layer.RAW_IP), (229, Layer.RAW_IP), (113, Layer.LINUX_SLL), (276, Layer.LINUX_SLL2)],
)
def test_linktype_layers(tmp_path: Path, linktype: int, layer: Layer) -> None:
    path = tmp_path / "l.pcap"
    path.write_bytes(pcap_bytes(random_records(3, seed=10), linktype=linktype))
    batches, _ = read_all(path)
    assert [b.layer for b in batches] == [layer]


# -- pcapng --------------------------------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_blocks_interfaces_and_resolutions(
    tmp_path: Path, big_endian: bool, caplog: pytest.LogCaptureFixture
) -> None:
    f = [eth_frame(20 + i, seed=i) for i in range(8)]
    w = (
        NgWriter(big_endian)
        .shb()
        .idb(1, snaplen=0, tsresol=9)  # 0: Ethernet, nanoseconds
        .idb(101, tsresol=0x80 | 20, tsoffset=100)  # 1: raw IP, 2^-20 s units, +100 s
        .idb(105)  # 2: 802.11, unsupported
    )
    w.epb(0, 1_700_000_000_123_456_789, f[0])
    w.raw_block(5, b"\0" * 16)  # interface statistics: skipped
    w.epb(0, 1_700_000_001_000_000_000, f[1], wirelen=len(f[1]) + 500)
    w.epb(1, 3 << 20, f[2][14:])  # 3 s + 100 s offset
    w.epb(2, 5, f[3])  # unsupported
    w.opb(0, 1_700_000_002_000_000_000, f[4])
    w.spb(f[5])  # no timestamp: the previous packet's
    w.raw_block(0x80000001, b"custom")
    path = tmp_path / "t.pcapng"
    path.write_bytes(w.bytes())
    with caplog.at_level(logging.WARNING):
        batches, counters = read_all(path)
    assert [(b.layer, b.count) for b in batches] == [(Layer.ETHERNET, 2), (Layer.RAW_IP, 1), (Layer.ETHERNET, 2)]
    assert frames(batches) == [f[0], f[1], f[2][14:], f[4], f[5]]
    np.testing.assert_allclose(
        column(batches, "ts"),
        [1_700_000_000.123456789, 1_700_000_001.0, 103.0, 1_700_000_002.0, 1_700_000_002.0],
        atol=1e-6,
    )
    assert column(batches, "wirelen").tolist()[1] == len(f[1]) + 500
    assert counters["unsupported_linktype"] == 1 and counters["skipped_blocks"] == 2
    assert counters["records"] == 5 and counters["bad_blocks"] == 0
    assert "link type 105" in caplog.text


def test_pcapng_new_section_resets_interfaces_and_byte_order(tmp_path: Path) -> None:
    a = NgWriter(False).shb().idb(1).epb(0, 1_000_000, eth_frame(10, 1))
    b = NgWriter(True).shb().idb(101).epb(0, 2_000_000, eth_frame(10, 2)[14:])
    path = tmp_path / "two.pcapng"
    path.write_bytes(a.bytes() + b.bytes())
    batches, _ = read_all(path)
    assert [(x.layer, x.count) for x in batches] == [(Layer.ETHERNET, 1), (Layer.RAW_IP, 1)]
    assert column(batches, "ts").tolist() == [1.0, 2.0]


def test_pcapng_agrees_with_tshark(tmp_path: Path) -> None:
    w = NgWriter(True).shb().idb(1, tsresol=9)
    for i in range(10):
        w.epb(0, 1_700_000_000_000_000_000 + i * 1_234_567_891, eth_frame(50 + i, seed=i))
    path = tmp_path / "be.pcapng"
    path.write_bytes(w.bytes())
    batches, _ = read_all(path, batch_size=3)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    np.testing.assert_allclose(column(batches, "ts"), [float(x) for x in out[0::2]], atol=1e-6)
    assert column(batches, "wirelen").tolist() == [int(x) for x in out[1::2]]


def test_pcapng_bad_and_truncated_blocks_counted(tmp_path: Path) -> None:
    w = NgWriter().shb().idb(1)
    w.epb(0, 1, eth_frame(10, 1))
    w.epb(7, 2, eth_frame(10, 2))  # unknown interface: bad block
    w.epb(0, 3, eth_frame(10, 3))
    data = w.bytes()
    path = tmp_path / "t.pcapng"
    path.write_bytes(data[:-10])  # the last block cut short
    _, counters = read_all(path)
    assert counters["records"] == 1 and counters["bad_blocks"] == 1 and counters["truncated_records"] == 1


def test_pcapng_invalid_block_length_stops_with_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = NgWriter().shb().idb(1).epb(0, 1, eth_frame(10, 1))
    data = w.bytes() + b"\x06\0\0\0\x05\0\0\0" + b"\0" * 20
    path = tmp_path / "t.pcapng"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        _, counters = read_all(path)
    assert counters["records"] == 1 and counters["bad_blocks"] == 1
    assert "invalid length 5" in caplog.text


def test_iter_captures_opens_each_in_turn(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.pcap"
        p.write_bytes(pcap_bytes(random_records(i + 1, seed=i)))
        paths.append(p)
    seen = []
    for cap in iter_captures(paths):
        seen.append((cap.path, sum(b.count for b in cap.batches())))
    assert seen == [(str(p), i + 1) for i, p in enumerate(paths)]


# -- the offset scanners agree -------------------------------------------------------------


def _scan_all(arr: np.ndarray, end: int, fn: str) -> tuple[list[int], bool, bool]:
    pos, out = 24, []
    while True:
        if fn == "loop":
            r = capture_pcap.scan_loop(arr, pos, end, False)
        else:
            r = capture_pcap.scan_lanes(arr, pos, min(end, pos + capture_pcap.WINDOW_LEN), end, False, 10**6)
        out += r.offsets.tolist()
        if r.truncated or r.bad or r.next_pos >= end:
            return out, r.truncated, r.bad
        pos = r.next_pos


@pytest.mark.parametrize("seed", range(12))
def test_speculative_scan_equals_loop(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(capture_pcap, "LANE_LEN", int(rng.integers(300, 3000)))
    monkeypatch.setattr(capture_pcap, "SEARCH_LEN", int(rng.integers(16, 300)))
    monkeypatch.setattr(capture_pcap, "WINDOW_LEN", int(rng.integers(5_000, 60_000)))
    monkeypatch.setattr(capture_pcap, "TAIL_LANES", int(rng.integers(0, 5)))
    recs = random_records(int(rng.integers(50, 400)), seed=seed, lo=1, hi=int(rng.integers(40, 2000)))
    # Adversarial payloads: embed plausible-looking record headers inside packet data.
    for r in recs[::3]:
        fake = pcap_bytes([Rec(1, 2, b"x" * int(rng.integers(0, 64)))])[24:]
        r.data = (fake * 4 + r.data)[: max(len(r.data), 20)]
    data = pcap_bytes(recs)
    variants = [data, data[: len(data) - int(rng.integers(1, 40))]]
    bad = bytearray(data)
    k = 24 + sum(16 + len(r.data) for r in recs[: len(recs) // 2])
    bad[k + 8 : k + 12] = (0xFFFFFFFF).to_bytes(4, "little")
    variants.append(bytes(bad))
    for v in variants:
        arr = np.frombuffer(v, np.uint8)
        assert _scan_all(arr, len(v), "lanes") == _scan_all(arr, len(v), "loop")


@pytest.mark.parametrize("seed", range(6))
def test_speculative_scan_with_records_spanning_lanes(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Records longer than a lane, filled with fake header chains: guesses land inside packets,
    chains that never meet the true one, and lanes the true chain jumps over entirely."""
    rng = np.random.default_rng(100 + seed)
    monkeypatch.setattr(capture_pcap, "LANE_LEN", 512)
    monkeypatch.setattr(capture_pcap, "SEARCH_LEN", 64)
    monkeypatch.setattr(capture_pcap, "WINDOW_LEN", int(rng.integers(3_000, 20_000)))
    monkeypatch.setattr(capture_pcap, "TAIL_LANES", 0)
    recs = []
    for i in range(60):
        if rng.random() < 0.5:
            inner = pcap_bytes([Rec(1, 2, b"y" * int(rng.integers(0, 40)))])[24:]
            data = (inner * 200)[: int(rng.integers(600, 3000))]
        else:
            data = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        recs.append(Rec(1_600_000_000 + i, i, data))
    data = pcap_bytes(recs)
    for v in (data, data[: len(data) - int(rng.integers(1, 500))]):
        arr = np.frombuffer(v, np.uint8)
        assert _scan_all(arr, len(v), "lanes") == _scan_all(arr, len(v), "loop")


def _random_pcapng(seed: int) -> bytes:
    """Sections in both byte orders; interfaces of supported and unsupported link types with
    several time resolutions; EPBs (some with a wrong trailing length, an unknown interface or data
    past the block), OPBs, SPBs, skipped blocks; maybe cut at the end."""
    rng = np.random.default_rng(seed)
    out = b""
    for _ in range(int(rng.integers(1, 4))):
        w = NgWriter(bool(rng.integers(0, 2))).shb()
        n_if = int(rng.integers(1, 4))
        for _i in range(n_if):
            w.idb(int(rng.choice([1, 1, 101, 105])), tsresol=int(rng.choice([6, 9, 0x80 | 20])),
                  tsoffset=int(rng.integers(0, 3)))
        for k in range(int(rng.integers(50, 400))):
            f = eth_frame(int(rng.integers(0, 300)), seed=k)
            kind = rng.random()
            iface = int(rng.integers(0, n_if))
            if kind < 0.8:
                w.epb(iface, int(rng.integers(0, 2**62)), f, wirelen=len(f) + int(rng.integers(0, 3)))
            elif kind < 0.84:
                w.epb(n_if + 1, 5, f)  # unknown interface
            elif kind < 0.88:
                w.epb(iface, 7, f)
                bad = bytearray(w.parts[-1])
                bad[-4:] = b"\x01\x00\x00\x00" if rng.random() < 0.5 else bad[-4:]  # a wrong trailing length
                bad[20:24] = (len(f) + 64).to_bytes(4, "big" if w.big_endian else "little") if rng.random() < 0.5 \
                    else bad[20:24]  # data past the block
                w.parts[-1] = bytes(bad)
            elif kind < 0.92:
                w.opb(iface, int(rng.integers(0, 2**40)), f)
            elif kind < 0.96:
                w.spb(f)
            else:
                w.raw_block(int(rng.choice([4, 5, 0x80000001])), b"\0" * 8)
        out += w.bytes()
    cut = int(rng.integers(0, 50)) if rng.random() < 0.3 else 0
    return out[: len(out) - cut]


def _layers(batches: list[PacketBatch]) -> list[int]:
    return [int(b.layer) for b in batches for _ in range(b.count)]


@pytest.mark.parametrize("piece", [600, 5_000])
@pytest.mark.parametrize("seed", range(6))
def test_pcapng_in_pieces_reads_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, piece: int
) -> None:
    # sections in both byte orders, several interfaces, bad and skipped blocks, cut ends: gzip (two
    # members) and a FIFO, a piece at a time, give the packets, times, layers and counters of the
    # mapped file
    monkeypatch.setattr(capture_module, "STREAM_CHUNK", piece)
    monkeypatch.setattr(capture_module, "READ_SIZE", 4096)
    data = _random_pcapng(seed)
    plain = tmp_path / "x.pcapng"
    plain.write_bytes(data)
    want, want_counters = read_all(plain, batch_size=64)
    gz = tmp_path / "x.pcapng.gz"
    gz.write_bytes(gzip.compress(data[:3000]) + gzip.compress(data[3000:]))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in (gz, fifo):
        writer = threading.Thread(target=_write_fifo, args=(fifo, data)) if source == fifo else None
        if writer is not None:
            writer.start()
        got, got_counters = read_all(source, batch_size=64)
        if writer is not None:
            writer.join()
        assert frames(got) == frames(want) and _layers(got) == _layers(want), source.name
        np.testing.assert_array_equal(column(got, "ts"), column(want, "ts"))
        assert got_counters == want_counters, source.name
        assert max((b.buf.shape[0] for b in got), default=0) <= piece + 4096 + 1000 < len(data) // 3


@pytest.mark.parametrize("seed", range(10))
def test_pcapng_c_walk_equals_the_python_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    path = tmp_path / "r.pcapng"
    path.write_bytes(_random_pcapng(seed))
    batch = [1, 7, 100, 8192][seed % 4]
    assert native.available()
    got, got_counters = read_all(path, batch_size=batch)
    monkeypatch.setattr(capture_pcapng.native, "available", lambda: False)
    want, want_counters = read_all(path, batch_size=batch)
    assert got_counters == want_counters and want_counters["records"] > 0
    assert [(b.layer, b.count) for b in got] == [(b.layer, b.count) for b in want]
    for name in ("start", "caplen", "wirelen", "ts"):
        np.testing.assert_array_equal(column(got, name), column(want, name), err_msg=name)


def _editcap(*args: str | Path) -> None:
    # without the sanitizer runtimes test_native_sanitizers preloads: editcap hangs under them
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run(["editcap", *map(str, args)], check=True, capture_output=True, env=env, timeout=120)


def test_pcap_converted_to_pcapng_by_editcap_gives_the_same_records(tmp_path: Path) -> None:
    # Wireshark and dumpcap write pcapng: the same packets must give the same records, times to
    # the bit (units * 1e-6 was one unit in the last place off the pcap's seconds + fraction)
    pcap = tmp_path / "gen.pcap"
    write_pcap(pcap, 30_000, 300, seed=13)
    nano = tmp_path / "gen-ns.pcap"  # a nanosecond pcap: its pcapng has if_tsresol 9
    _editcap("-F", "nsecpcap", pcap, nano)
    want = sorted(orjson.dumps(r) for r in read_records(pcap))
    for source in (pcap, nano):
        ng = source.with_suffix(".pcapng")
        _editcap("-F", "pcapng", source, ng)
        with open_capture(ng) as cap:
            assert cap.format == "pcapng"
        assert sorted(orjson.dumps(r) for r in read_records(ng)) == want, ng.name
