"""JSON-lines sink behind the runner: rotation, gzip, .part recovery, order."""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import orjson

from forwarders.api import SinkContext
from forwarders.jsonl import JsonlConfig, JsonlSink
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings
from receiver.flows.recordbatch import RecordBatch


def recs(lo: int, hi: int) -> list[Any]:
    return [{"id": i, "community_id": f"1:{i}", "pad": "z" * 50} for i in range(lo, hi)]


def read(files: list[Path]) -> list[Any]:
    out = []
    for f in files:
        data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


def run(tmp_path: Path, cfg: JsonlConfig, records: list[Any]) -> RecordForwarder:
    sink = JsonlSink(cfg, SinkContext("jsonl", tmp_path, worker=1))
    fwd = RecordForwarder(sink, RunnerSettings(batch_max_records=50, batch_interval=0.01))
    for i in range(0, len(records), 25):
        fwd.put(records[i : i + 25])
    fwd.close(10)
    return fwd


def test_rotation_by_size_keeps_every_record_in_order(tmp_path: Path) -> None:
    fwd = run(tmp_path, JsonlConfig(rotate_bytes=4096), recs(0, 1000))
    files = sorted((tmp_path / "flows").iterdir())
    assert len(files) > 10 and all(f.name.startswith("flows-w1-") and f.name.endswith(".jsonl") for f in files)
    assert all(f.stat().st_size <= 4096 for f in files)
    assert read(files) == recs(0, 1000)
    c = fwd.counters()
    assert c["sent"] == 1000 and c["dropped"] == 0


def test_gzip_of_closed_files(tmp_path: Path) -> None:
    run(tmp_path, JsonlConfig(directory=str(tmp_path / "out"), rotate_bytes=8192, gzip=True), recs(0, 500))
    files = sorted((tmp_path / "out").iterdir())
    assert files and all(f.name.endswith(".jsonl.gz") for f in files)
    assert read(files) == recs(0, 500)


def test_rotation_by_time_when_idle(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlConfig(rotate_seconds=0.2), SinkContext("jsonl", tmp_path))
    sink.send(sink.encode(RecordBatch.from_records(recs(0, 3))), 3)
    assert list((tmp_path / "flows").glob("*.part"))
    time.sleep(0.25)
    sink.tick(time.time())
    (f,) = (tmp_path / "flows").iterdir()
    assert f.name.endswith(".jsonl") and read([f]) == recs(0, 3)


def test_crash_leftover_part_is_trimmed_and_named(tmp_path: Path) -> None:
    d = tmp_path / "flows"
    d.mkdir()
    part = d / "flows-w0-20240101T000000Z-000007.jsonl.part"
    part.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs(0, 3)) + b'{"id": 3, "cut')
    sink = JsonlSink(JsonlConfig(), SinkContext("jsonl", tmp_path))
    assert read([d / "flows-w0-20240101T000000Z-000007.jsonl"]) == recs(0, 3)
    sink.send(sink.encode(RecordBatch.from_records(recs(3, 4))), 1)
    sink.close()
    names = sorted(p.name for p in d.iterdir())
    assert names[-1].endswith("-000008.jsonl")  # numbering continues after the recovered file
