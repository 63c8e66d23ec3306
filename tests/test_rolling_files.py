"""Rolling output files on disk: free-space retention (the oldest closed files and their sidecar
indexes go, never the open file), a full disk (a failed write leaves whole records), background
gzip compression read back by tshark, and the modes of files and directories."""

from __future__ import annotations

import gzip
import logging
import os
import stat
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarders import rolling
from forwarders.api import SinkContext
from forwarders.compress import compress_file
from forwarders.filemodes import DIR_MODE, FILE_MODE
from forwarders.frames import frame_block
from forwarders.jsonl import JsonlConfig, JsonlSink
from forwarders.pcap import PcapConfig, PcapSink
from forwarders.rolling import RollingFile, RollPolicy
from receiver.flows.recordbatch import RecordBatch
from tests.disk_fixtures import MountRefused, fill, free_bytes, size_bytes, tmpfs
from tests.forwarder_fixtures import make_batch, markers, stderr_problems, tshark

ROOT = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the test needs root, as `make test` runs)."""
    try:
        with tmpfs(tmp_path / "fs", "4m") as d:
            yield d
    except MountRefused as e:
        pytest.fail(f"cannot mount a tmpfs for the test (run as root): {e}")


def _index_beside(path: Path) -> Path:
    """What the pcap sink's index writer does when a file closes: ``F.idx`` beside ``F``."""
    (path.parent / (path.name + ".idx")).write_bytes(b"i" * 3000)
    return path


def _seq(p: Path) -> int:
    return int(p.name.split("-")[3].split(".")[0])


def test_free_space_retention_removes_the_oldest_closed_files_and_their_indexes(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rolling, "FREE_CHECK_SECONDS", 0.0)
    caplog.set_level(logging.INFO, "vxmirror.forwarders.rolling")
    d = small_fs / "pcap"
    other = d / "vxmirror-w1-20240101T000000Z-000001.pcap"  # another worker's file: not ours to remove
    policy = RollPolicy(rotate_bytes=256 * KiB, rotate_seconds=0, retain_free_percent=40.0)
    files = RollingFile(d, "vxmirror", "pcap", 0, policy, on_closed=_index_beside, fsync=False)
    other.write_bytes(b"o" * 100 * KiB)
    chunk = os.urandom(64 * KiB)
    for _ in range(20 * 4):  # twenty files of 256 KiB: 5 MiB through a 4 MiB file system
        if files.due(len(chunk)):
            files.close()
        files.write(chunk)
    assert files.path is not None and files.path.exists()
    names = sorted(p.name for p in d.iterdir())
    data = sorted((p for p in d.iterdir() if p.name.endswith("-000001.pcap") is False and p.suffix == ".pcap"),
                  key=_seq)
    kept = [_seq(p) for p in data]
    assert kept == list(range(kept[0], 20)), names  # a contiguous run of the newest closed files
    assert kept[0] > 3  # the oldest went
    for p in data:  # every file kept has its index; no index outlives its file
        assert (d / (p.name + ".idx")).exists()
    assert sorted(p for p in d.glob("*.idx")) == sorted(d / (p.name + ".idx") for p in data)
    assert other.exists()
    assert free_bytes(d) >= 0.40 * size_bytes(d) - 256 * KiB  # less the file being written since the last check
    st = files.stats()
    removed = (kept[0] - 1) * 2  # each with its index
    assert st["removed_files"] == removed
    assert st["removed_bytes"] == (kept[0] - 1) * (256 * KiB + 3000)
    assert "free space" in caplog.text and "removed 2 files" in caplog.text

    # The open file grows past what the file system can hold free: every closed file goes, the open
    # one and anything named after it stay, and a full disk then fails the write, undone.
    sidecar_of_open = files.path.with_name(files.path.name[: -len(".part")] + ".idx")
    sidecar_of_open.write_bytes(b"x")
    files.policy.rotate_bytes = 0  # never rotate by size
    with pytest.raises(OSError) as exc:
        while True:
            files.write(chunk)
            files.check()  # the sink's tick
    assert exc.value.errno == 28  # ENOSPC
    assert files.path.exists() and files.path.stat().st_size == files.size and files.size % len(chunk) == 0
    assert sidecar_of_open.exists() and other.exists()
    assert not [p for p in d.iterdir() if p.suffix in (".pcap", ".idx") and p not in (other, sidecar_of_open)]
    assert "no closed file of vxmirror-w0 left to remove" in caplog.text
    files.close()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_write_on_a_full_disk_leaves_whole_records_and_goes_on_when_space_comes_back(
    small_fs: Path, fmt: str
) -> None:
    cfg = PcapConfig(directory=str(small_fs / "pcap"), rotate_bytes=1 * MiB, retain_free_percent=0, fsync=False,
                     format=fmt)
    sink = PcapSink(cfg, SinkContext("pcap", small_fs))
    filler = fill(small_fs, leave=300 * KiB)
    seq, failed = 0, 0
    written: list[int] = []
    lost_vnis: list[int] = []
    while failed < 3:  # until the disk is full, and a little beyond
        vnis = (100, 1000 + seq)  # a VNI new to the file in each batch (pcapng: a new interface block)
        batch, decap, expect = make_batch(seq, 50, vnis=vnis)
        try:
            sink.write(frame_block(batch, decap, False, 65535))
            written += [e[0] for e in expect]
        except OSError as e:
            assert e.errno == 28
            failed += 1
            lost_vnis.append(vnis[1])
        seq += 50
    filler.unlink()  # space comes back
    batch, decap, expect = make_batch(seq, 50, vnis=tuple(lost_vnis))  # the interfaces whose blocks were undone
    sink.write(frame_block(batch, decap, False, 65535))
    written += [e[0] for e in expect]
    sink.close()
    got = []
    for f in sorted((small_fs / "pcap").iterdir()):
        r = tshark(f, "udp.payload")
        assert r.returncode == 0 and stderr_problems(r.stderr) == "", (f, r.stderr)
        got += [markers(x) for x in r.stdout.split()]
    assert got == written
    assert sink.stats()["write_errors"] >= 3


def test_jsonl_on_a_full_disk_raises_a_retryable_error_and_keeps_whole_lines(small_fs: Path) -> None:
    from forwarders.api import SendError

    sink = JsonlSink(JsonlConfig(directory=str(small_fs / "flows"), fsync=False), SinkContext("jsonl", small_fs))
    filler = fill(small_fs, leave=200 * KiB)
    line = b'{"pad":"' + b"z" * 1000 + b'"}\n'
    sent = 0
    with pytest.raises(SendError) as exc:
        while True:
            sink.send(line * 50, 50)
            sent += 50
    assert exc.value.retryable
    filler.unlink()
    sink.send(line * 50, 50)
    sink.close()
    (f,) = (small_fs / "flows").iterdir()
    assert f.read_bytes() == line * (sent + 50)


def _write_blocks(sink: PcapSink, n_blocks: int) -> None:
    for i in range(n_blocks):
        batch, decap, _ = make_batch(i * 100, 100, seed=5)
        sink.write(frame_block(batch, decap, False, 65535))


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_gzip_compressed_files_read_back_by_tshark_with_the_same_frames(tmp_path: Path, fmt: str) -> None:
    plain = PcapSink(PcapConfig(directory=str(tmp_path / "plain"), rotate_bytes=120_000, format=fmt),
                     SinkContext("pcap", tmp_path))
    packed = PcapSink(PcapConfig(directory=str(tmp_path / "gz"), rotate_bytes=120_000, format=fmt, compress="gzip"),
                      SinkContext("pcap", tmp_path))
    packed.files.on_closed = _index_beside
    _write_blocks(plain, 8)
    _write_blocks(packed, 8)
    plain.close()
    packed.close()  # waits for the background compressions
    originals = sorted((tmp_path / "plain").iterdir())
    compressed = sorted(p for p in (tmp_path / "gz").iterdir() if not p.name.endswith(".idx"))
    assert len(originals) > 3
    assert all(p.name.endswith(".gz") and not p.name.endswith(f".{fmt}") for p in compressed)
    assert [p.name.split("Z-")[1] + ".gz" for p in originals] == [p.name.split("Z-")[1] for p in compressed]
    # the index keeps the uncompressed name
    indexes = sorted((tmp_path / "gz").glob("*.idx"))
    assert [p.name[: -len(".gz")] + ".idx" for p in compressed] == [p.name for p in indexes]
    fields = ("frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "udp.payload")
    frames = 0
    for orig, gz in zip(originals, compressed, strict=True):
        assert gzip.decompress(gz.read_bytes()) == orig.read_bytes()
        a, b = tshark(orig, *fields), tshark(gz, *fields)
        assert a.returncode == b.returncode == 0 and stderr_problems(b.stderr) == "", b.stderr
        assert a.stdout == b.stdout
        frames += a.stdout.count("\n")
        assert gz.stat().st_mtime == pytest.approx(orig.stat().st_mtime, abs=2.0)
    assert frames == 800
    st = packed.stats()
    assert st["compressed_files"] == len(originals) and st["compress_pending"] == 0
    assert st["compressed_bytes_in"] == sum(p.stat().st_size for p in originals)
    assert st["compressed_bytes_out"] == sum(p.stat().st_size for p in compressed)


def test_retention_counts_and_removes_compressed_files_with_their_indexes(tmp_path: Path) -> None:
    cfg = PcapConfig(directory=str(tmp_path), rotate_bytes=40_000, retain_files=2, compress="gzip",
                     retain_free_percent=0)
    sink = PcapSink(cfg, SinkContext("pcap", tmp_path))
    sink.files.on_closed = _index_beside
    for i in range(6):
        _write_blocks(sink, 1)
        sink.files.close()
        sink.files.wait_compressed()
        del i
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and all(n.endswith((".pcap.gz", ".pcap.idx")) for n in names), names
    assert sink.stats()["removed_files"] > 0


def test_a_compression_loses_the_race_with_retention_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "vxmirror-w0-20240101T000000Z-000001.pcap"
    src.write_bytes(os.urandom(300_000))
    real = threading.Lock()
    entered = threading.Event()

    class Spy:
        def __enter__(self) -> None:
            entered.set()
            real.acquire()

        def __exit__(self, *a: object) -> None:
            real.release()

    out: list[object] = []
    real.acquire()  # retention holds the lock
    t = threading.Thread(target=lambda: out.append(compress_file(src, "gzip", 1, Spy())))  # type: ignore[arg-type]
    t.start()
    assert entered.wait(30)
    src.unlink()  # retention removes the file the compressor has just finished reading
    real.release()
    t.join(30)
    assert out == [None] and list(tmp_path.iterdir()) == []


def test_a_crash_during_compression_is_tidied_at_the_next_start(tmp_path: Path) -> None:
    base = "vxmirror-w0-20240101T000000Z-00000"
    cut = tmp_path / f"{base}1.pcap"
    cut.write_bytes(b"a" * 5000)
    (tmp_path / f"{base}1.pcap.gz.part").write_bytes(b"\x1f\x8b cut")
    done = tmp_path / f"{base}2.pcap"
    done.write_bytes(b"b" * 5000)
    (tmp_path / f"{base}2.pcap.gz").write_bytes(gzip.compress(b"b" * 5000))
    policy = RollPolicy(rotate_bytes=MiB, rotate_seconds=0, compress="gzip")
    files = RollingFile(tmp_path, "vxmirror", "pcap", 0, policy)
    assert files.wait_compressed(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{base}1.pcap.gz", f"{base}2.pcap.gz"]
    assert gzip.decompress((tmp_path / f"{base}1.pcap.gz").read_bytes()) == b"a" * 5000


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_and_directories_are_for_the_service_user_and_group_only(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        pcap = PcapSink(PcapConfig(directory=str(tmp_path / "a" / "pcap"), rotate_bytes=40_000, compress="gzip"),
                        SinkContext("pcap", tmp_path))
        jsonl = JsonlSink(JsonlConfig(), SinkContext("jsonl", tmp_path / "data"))
        _write_blocks(pcap, 1)
        jsonl.send(RecordBatch.from_records([{"a": 1}]).data, 1)
        assert pcap.files.path is not None and jsonl.files.path is not None
        open_files = [pcap.files.path, jsonl.files.path]
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in open_files}
        _write_blocks(pcap, 3)
        pcap.close()
        jsonl.close()
    finally:
        os.umask(old)
    assert set(modes.values()) == {FILE_MODE}
    for d in (tmp_path / "a", tmp_path / "a" / "pcap", tmp_path / "data", tmp_path / "data" / "flows"):
        assert stat.S_IMODE(d.stat().st_mode) == DIR_MODE, d
    made = [*(tmp_path / "a" / "pcap").iterdir(), *(tmp_path / "data" / "flows").iterdir()]
    assert any(p.name.endswith(".pcap.gz") for p in made) and any(p.name.endswith(".jsonl") for p in made)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in made} == {p.name: FILE_MODE for p in made}


def test_the_systemd_unit_gives_the_same_modes() -> None:
    unit = {}
    for line in (ROOT / "systemd" / "vxmirror.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            unit[k.strip()] = v.strip()
    umask = int(unit["UMask"], 8)
    assert 0o666 & ~umask == FILE_MODE and 0o777 & ~umask == DIR_MODE
    assert int(unit["StateDirectoryMode"], 8) == DIR_MODE
    assert "/var/lib/vxmirror" in unit["ExecStart"]  # the data directory is the state directory


def test_policy_of_config_keys() -> None:
    p = RollPolicy.of(JsonlConfig(gzip=True, retain_free_bytes=5))
    assert (p.compress, p.retain_free_bytes, p.keeps_free) == ("gzip", 5, True)
    q = RollPolicy.of(PcapConfig())
    assert q.retain_free_percent == 5.0 and q.compress == "none"
    r = RollPolicy.of(types.SimpleNamespace(rotate_bytes=1, rotate_seconds=0, retain_files=0, retain_bytes=0,
                                            retain_seconds=0))
    assert not r.retains and r.compress == "none"
