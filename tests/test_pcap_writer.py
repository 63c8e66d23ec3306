"""Rolling pcap / pcapng: rotation, tshark reads every file, order kept, kill -9 safety, retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from forwarders import pcap_classic, pcapng, registry
from forwarders.api import SinkContext
from forwarders.frames import frame_block
from forwarders.manager import ForwarderSet
from forwarders.pcap import PcapConfig, PcapSink
from receiver.capture import open_capture
from receiver.packets import Decapsulated, Layer, PacketBatch
from tests import packet_factory as pf
from tests.forwarder_fixtures import OUTER, Result, live_batch, make_batch, markers, stderr_problems, tshark

ROOT = Path(__file__).resolve().parent.parent


def read_all(files: list[Path]) -> list[tuple[int, int, str]]:
    """(frame length, marker seq, interface name) of every packet, across files, in order."""
    out = []
    for f in files:
        r = tshark(f, "frame.len", "udp.payload", "frame.interface_name")
        assert r.returncode == 0, (f, r.stderr)
        assert stderr_problems(r.stderr) == "", (f, r.stderr)
        for line in r.stdout.splitlines():
            flen, payload, iface = line.split("|")
            out.append((int(flen), markers(payload), iface))
    return out


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_rotations_read_back_by_tshark_in_order(tmp_path: Path, fmt: str) -> None:
    specs = registry.validate(
        {"pcap": {"directory": str(tmp_path / "out"), "rotate_bytes": 200_000, "rotate_seconds": 3600, "format": fmt}},
        "test.toml",
    )
    names = {100: "mirror-a task-1", 200: "mirror-b"}
    fs = ForwarderSet.from_specs(specs, tmp_path, worker=3, vni_names=names.get)
    sent: list[tuple[int, int, int]] = []
    seq = 0
    for i in range(12):
        batch, decap, expect = make_batch(seq, 250, seed=i)
        fs.submit(Result(records=[], decap=decap), batch)  # type: ignore[arg-type]
        sent += expect
        seq += 250
    fs.close(30)
    c = fs.counters()["pcap"]
    assert c["received"] == c["sent"] == len(sent) and c["dropped"] == 0

    files = sorted((tmp_path / "out").iterdir())
    assert not [f for f in files if f.name.endswith(".part")]
    assert len(files) >= 8, "expected several rotations"
    ext = ".pcapng" if fmt == "pcapng" else ".pcap"
    for f in files:
        assert f.name.startswith("vxmirror-w3-") and f.name.endswith(ext)
        assert f.stat().st_size <= 200_000
    seqs = [int(f.name.rsplit("-", 1)[1].split(".")[0]) for f in files]
    assert seqs == list(range(1, len(files) + 1))

    got = read_all(files)
    assert [(g[0], g[1]) for g in got] == [(e[1], e[0]) for e in sent]
    if fmt == "pcapng":
        want = [names.get(e[2]) or f"vni-{e[2]}" for e in sent]
        assert [g[2] for g in got] == want
        desc = subprocess.run(["capinfos", "-I", str(files[0])], capture_output=True, text=True, check=True)
        assert "Description = VNI 300" in desc.stdout and "Name = mirror-a task-1" in desc.stdout


def test_classic_pcap_header_is_nanosecond(tmp_path: Path) -> None:
    sink = PcapSink(PcapConfig(directory=str(tmp_path)), SinkContext("pcap", tmp_path))
    batch, decap, _ = make_batch(0, 3)
    sink.write(frame_block(batch, decap, False, 65535))
    sink.close()
    (f,) = tmp_path.iterdir()
    assert f.read_bytes()[:4] == bytes.fromhex("4d3cb2a1")
    r = tshark(f, "frame.time_epoch")
    stamps = r.stdout.split()
    assert all(len(x.split(".")[1]) == 9 for x in stamps)  # nanosecond resolution
    # float64 epoch seconds carry ~0.2 us: the written times are within that of the arrival times
    assert np.allclose([float(x) for x in stamps], batch.ts, rtol=0, atol=5e-7)


def test_snaplen_and_skipped_undecapsulated(tmp_path: Path) -> None:
    sink = PcapSink(PcapConfig(directory=str(tmp_path), snaplen=128), SinkContext("pcap", tmp_path))
    batch, decap, expect = make_batch(0, 40, undecodable=4)
    block = frame_block(batch, decap, False, 128)
    assert block.skipped == 10 and block.count == 30
    sink.write(block)
    sink.close()
    (f,) = tmp_path.iterdir()
    r = tshark(f, "frame.len", "frame.cap_len")
    rows = [tuple(map(int, line.split("|"))) for line in r.stdout.splitlines()]
    kept = [e for e in expect if e[0] % 4 != 0]
    assert rows == [(e[1], min(e[1], 128)) for e in kept]


def test_keep_encapsulation_ethernet_batch(tmp_path: Path) -> None:
    sink = PcapSink(PcapConfig(directory=str(tmp_path), keep_encapsulation=True), SinkContext("pcap", tmp_path))
    batch, decap, expect = make_batch(0, 20, undecodable=5)
    sink.write(frame_block(batch, decap, True, 65535))
    sink.close()
    (f,) = tmp_path.iterdir()
    r = tshark(f, "frame.len", "vxlan.vni")
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert [int(x[0]) for x in rows] == [e[1] + OUTER for e in expect]  # undecodable ones written as they are
    assert [int(x[1]) for x in rows] == [e[2] for e in expect]


@pytest.mark.parametrize("layer", [Layer.VXLAN, Layer.GENEVE])
def test_keep_encapsulation_live_udp_payloads_get_outer_headers(tmp_path: Path, layer: Layer) -> None:
    batch, decap, expect = live_batch(0, 30, layer=Layer.VXLAN)
    batch.layer = layer
    if layer == Layer.GENEVE:
        batch.dst_port[:] = 0  # unknown port: the GENEVE default is used
    sink = PcapSink(PcapConfig(directory=str(tmp_path), keep_encapsulation=True), SinkContext("pcap", tmp_path))
    sink.write(frame_block(batch, decap, True, 65535))
    sink.close()
    (f,) = tmp_path.iterdir()
    r = tshark(f, "frame.len", "ip.src", "udp.dstport", "ip.checksum.status", extra=("-o", "ip.check_checksum:TRUE"))
    assert r.returncode == 0 and stderr_problems(r.stderr) == ""
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert len(rows) == 30
    for row, e in zip(rows, expect):
        assert int(row[0]) == 42 + 8 + e[1]
        assert row[1].split(",")[0] == "127.0.0.5"
        assert row[2].split(",")[0] == ("4789" if layer == Layer.VXLAN else "6081")
        assert row[3].split(",")[0] == "1"  # outer IPv4 header checksum: good
    if layer == Layer.VXLAN:
        r = tshark(f, "vxlan.vni", "ip.id")
        ids = [line.split("|") for line in r.stdout.splitlines()]
        assert [(int(a), int(b.split(",")[1], 0)) for a, b in ids] == [(e[2], e[0]) for e in expect]


@pytest.mark.parametrize("layer", [Layer.LINUX_SLL, Layer.LINUX_SLL2])
def test_keep_encapsulation_cooked_captures_get_an_ethernet_header(tmp_path: Path, layer: Layer) -> None:
    # a capture taken with `tcpdump -i any` (SLL, or SLL2 since tcpdump 4.99), replayed into the sink
    frames = [pf.vxlan(pf.udp("10.0.0.1", "10.0.0.2", 1000 + i, 53, b"q" * i), vni=40 + i) for i in range(4)]
    frames += [pf.tcp("2001:db8::1", "2001:db8::2", 5000, 443, payload=b"t" * 9)]
    version = 1 if layer == Layer.LINUX_SLL else 2
    batch = PacketBatch.from_frames([pf.cooked(f, version) for f in frames], layer=layer)
    n = batch.count
    decap = Decapsulated(np.full(n, -1, np.int64), np.full(n, -1, np.int64))
    sink = PcapSink(PcapConfig(directory=str(tmp_path), keep_encapsulation=True), SinkContext("pcap", tmp_path))
    sink.write(frame_block(batch, decap, True, 65535))
    sink.close()
    (f,) = tmp_path.iterdir()
    r = tshark(f, "frame.len", "eth.type", "vxlan.vni", "tcp.dstport")
    assert r.returncode == 0 and stderr_problems(r.stderr) == ""
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert [int(x[0]) for x in rows] == [len(fr) for fr in frames]  # the cooked header became 14 bytes
    assert [x[1].split(",")[0] for x in rows] == ["0x0800"] * 4 + ["0x86dd"]
    assert [x[2] for x in rows] == ["40", "41", "42", "43", ""]
    assert rows[4][3] == "443"
    with open_capture(f) as cap:
        (got,) = list(cap.batches(100))
    assert [got.frame(i)[12:] for i in range(n)] == [fr[12:] for fr in frames]  # MACs zero, the rest as sent


def test_live_slots_decapsulated(tmp_path: Path) -> None:
    batch, decap, _expect = live_batch(0, 64, slot=9216)
    block = frame_block(batch, decap, False, 65535)
    assert bytes(block.data) == b"".join(batch.frame(i)[8:] for i in range(64))


def test_rotation_by_time_and_retention(tmp_path: Path) -> None:
    cfg = PcapConfig(directory=str(tmp_path), rotate_seconds=0.2, retain_files=3, format="pcapng")
    sink = PcapSink(cfg, SinkContext("pcap", tmp_path))
    seq = 0
    for _ in range(6):
        batch, decap, _ = make_batch(seq, 10)
        seq += 10
        sink.write(frame_block(batch, decap, False, 65535))
        time.sleep(0.25)
        sink.tick(time.time())  # idle: the file is closed by age without a further write
        assert not list(tmp_path.glob("*.part"))
    sink.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["000004.pcapng", "000005.pcapng", "000006.pcapng"]
    got = read_all(files)
    assert [g[1] for g in got] == list(range(30, 60))


def test_retention_by_bytes(tmp_path: Path) -> None:
    cfg = PcapConfig(directory=str(tmp_path), rotate_bytes=20_000, retain_bytes=50_000)
    sink = PcapSink(cfg, SinkContext("pcap", tmp_path))
    batch, decap, _ = make_batch(0, 300)
    sink.write(frame_block(batch, decap, False, 65535))
    sink.close()
    sizes = [f.stat().st_size for f in tmp_path.iterdir()]
    assert sum(sizes) <= 50_000 and len(sizes) >= 2
    assert sink.files.closed_files > len(sizes)


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from forwarder_fixtures import make_batch
    from forwarders.api import SinkContext
    from forwarders.frames import frame_block
    from forwarders.pcap import PcapConfig, PcapSink
    out = Path(sys.argv[1])
    sink = PcapSink(PcapConfig(directory=str(out), rotate_bytes=150_000, format=sys.argv[2], fsync=False),
                    SinkContext("pcap", out))
    seq = 0
    while True:
        batch, decap, _ = make_batch(seq, 7, seed=1)
        sink.write(frame_block(batch, decap, False, 65535))
        seq += 7
        print(seq, flush=True)
        time.sleep(0.001)
    """
)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_kill9_leaves_closed_files_intact_and_part_readable(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "pcap"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(ROOT / "tests")))
    proc = subprocess.Popen([sys.executable, str(script), str(out), fmt], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                closed = [f for f in out.glob("*") if not f.name.endswith(".part")] if out.exists() else []
                parts = list(out.glob("*.part")) if out.exists() else []
                if len(closed) >= 3 and parts and parts[0].stat().st_size > 20_000:
                    break
            except FileNotFoundError:  # renamed between listing and stat
                pass
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    closed = sorted(f for f in out.iterdir() if not f.name.endswith(".part"))
    (part,) = list(out.glob("*.part"))
    assert len(closed) >= 3
    got = read_all(closed)
    assert [g[1] for g in got] == list(range(len(got)))  # every closed file intact, nothing missing

    data = part.read_bytes()
    end, whole = pcapng.whole_blocks_end(data) if fmt == "pcapng" else pcap_classic.whole_records_end(data)
    assert whole > 0
    r = tshark(part, "udp.payload")
    seqs = [markers(x) for x in r.stdout.split()]
    assert seqs == list(range(len(got), len(got) + whole))  # readable up to its last whole packet
    if end == len(data):
        assert r.returncode == 0 and stderr_problems(r.stderr) == ""
    else:
        assert "cut short in the middle of a packet" in r.stderr

    # The same file, cut in the middle of its last packet, as a kill during a write would leave it:
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: end - 5])
    r = tshark(cut, "udp.payload")
    assert r.returncode != 0 and "cut short in the middle of a packet" in r.stderr
    assert [markers(x) for x in r.stdout.split()] == seqs[:-1]

    # The next start trims the .part to whole packets and gives it its final name; numbering goes on.
    part.write_bytes(data[: end - 5])
    sink = PcapSink(PcapConfig(directory=str(out), format=fmt), SinkContext("pcap", tmp_path))
    assert not list(out.glob("*.part"))
    batch, decap, _ = make_batch(10**6, 3)
    sink.write(frame_block(batch, decap, False, 65535))
    sink.close()
    files = sorted(out.iterdir())
    assert len(files) == len(closed) + 2
    got2 = read_all(files)
    assert [g[1] for g in got2] == [*list(range(len(got) + whole - 1)), 10**6, 10**6 + 1, 10**6 + 2]


def test_frame_block_copies_out_of_the_buffer(tmp_path: Path) -> None:
    batch, decap, _expect = make_batch(0, 50)
    block = frame_block(batch, decap, False, 65535)
    ref = [batch.frame(i)[OUTER:] for i in range(50)]
    buf = np.array(batch.buf)  # a writable buffer, as the listener's slots are
    batch.buf = buf
    block = frame_block(batch, decap, False, 65535)
    buf[:] = 0  # the listener reuses its slots: the block must not alias them
    got = [bytes(block.data[o : o + c]) for o, c in zip(block.offset.tolist(), block.caplen.tolist())]
    assert got == ref


def test_frame_block_from_slots_equals_the_range_copy() -> None:
    # the listener's fixed slots take a rectangle copy; the result must equal the general path's
    import numpy as np

    from forwarders.frames import frame_block
    from receiver.packets import Decapsulated, Layer, PacketBatch

    rng = np.random.default_rng(7)
    n, slot = 64, 256
    lengths = rng.integers(60, 200, n).astype(np.uint32)
    slots = rng.integers(0, 256, (n, slot)).astype(np.uint8)
    batch = PacketBatch.from_slots(slots, lengths, np.arange(n, dtype=np.float64), Layer.VXLAN)
    inner = batch.start + 8
    inner[5] = -1  # not decodable: skipped
    decap = Decapsulated(inner_start=inner, vni=np.full(n, 3, np.int64))
    block = frame_block(batch, decap, keep_encapsulation=False, snaplen=150)
    frames = [bytes(block.data[o : o + c]) for o, c in zip(block.offset.tolist(), block.caplen.tolist())]
    want = [slots[i, 8 : 8 + min(int(lengths[i]) - 8, 150)].tobytes() for i in range(n) if i != 5]
    assert frames == want and block.skipped == 1
    flat = PacketBatch.from_frames([slots[i, : lengths[i]].tobytes() for i in range(n)], layer=Layer.VXLAN)
    flat_inner = flat.start + 8
    flat_inner[5] = -1
    flat_block = frame_block(flat, Decapsulated(flat_inner, decap.vni), False, 150)
    got = [bytes(flat_block.data[o : o + c]) for o, c in zip(flat_block.offset.tolist(), flat_block.caplen.tolist())]
    assert got == want
