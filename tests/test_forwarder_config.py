"""Forwarder config: registry discovery, validation errors naming file and key, defaults, ForwarderSet."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from forwarders import registry
from forwarders.jsonl import JsonlSink
from forwarders.manager import ForwarderSet
from forwarders.pcap import PcapSink
from receiver.config.file import parse_config
from receiver.config.schema import ConfigError
from tests.forwarder_fixtures import Result, make_batch


def test_builtins_are_registered_as_entry_points() -> None:
    kinds = registry.available()
    assert kinds["pcap"] is PcapSink and kinds["jsonl"] is JsonlSink


def test_required_keys_validate(tmp_path: Path) -> None:
    (p, j) = registry.validate(
        {
            "pcap": {"directory": "/srv/pcap", "rotate_bytes": 1 << 20, "rotate_seconds": 60, "format": "pcapng"},
            "jsonl": {"directory": "/srv/flows", "batch_max_records": 7, "max_retries": 2},
        },
        "vx.toml",
    )
    assert p.name == "pcap" and p.is_packet and p.config.format == "pcapng" and p.config.rotate_seconds == 60.0
    assert j.name == "jsonl" and not j.is_packet and j.settings.batch_max_records == 7 and j.settings.max_retries == 2


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ({"pcap": {"rotate_bytes": "big"}}, "forwarders.pcap.rotate_bytes", "expected an integer"),
        ({"pcap": {"format": "erf"}}, "forwarders.pcap.format", "expected one of"),
        ({"pcap": {"rotate_byts": 5}}, "forwarders.pcap.rotate_byts", "unknown key"),
        ({"jsonl": {"queue_max": 0}}, "forwarders.jsonl.queue_max", "must be >= 1"),
        ({"jsonl": {"retry_backoff_min": 5.0, "retry_backoff_max": 1.0}}, "forwarders.jsonl.retry_backoff_max", ">="),
        ({"smtp": {}}, "forwarders.smtp", "unknown forwarder kind"),
        ({"jsonl": [{"directory": "/a"}]}, "forwarders.jsonl[0].name", "needs a name"),
        ({"jsonl": [{"name": "a"}, {"name": "a"}]}, "forwarders.jsonl", "two forwarders are named"),
        ({"pcap": [{"name": "x", "snaplen": 10}]}, "forwarders.pcap[0].snaplen", "must be >= 64"),
        ({"pcap": 3}, "forwarders.pcap", "expected a table or an array"),
    ],
)
def test_errors_name_file_and_key(table: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        registry.validate(table, "/etc/vxmirror.toml")
    assert e.value.file == "/etc/vxmirror.toml" and e.value.key == key and problem in e.value.problem
    assert str(e.value).startswith(f"/etc/vxmirror.toml: {key}: ")


def test_several_of_a_kind() -> None:
    specs = registry.validate({"jsonl": [{"name": "a", "directory": "/a"}, {"name": "b", "directory": "/b"}]}, None)
    assert [s.name for s in specs] == ["jsonl.a", "jsonl.b"]


def test_through_the_main_config() -> None:
    cfg = parse_config({"data_dir": "/tmp/x", "forwarders": {"pcap": {"format": "pcap", "rotate_seconds": 30}}})
    (spec,) = cfg.forwarder_specs
    assert spec.kind == "pcap" and spec.config.rotate_seconds == 30.0
    with pytest.raises(ConfigError, match=r"forwarders\.pcap\.rotate_seconds"):
        parse_config({"forwarders": {"pcap": {"rotate_seconds": -1}}}, "c.toml")


def test_defaults_write_flows_and_pcap_under_data_dir(tmp_path: Path) -> None:
    specs = registry.defaults(tmp_path)
    assert {s.kind for s in specs} == {"jsonl", "pcap"}
    fs = ForwarderSet.from_specs(specs, tmp_path, worker=0)
    batch, decap, _ = make_batch(0, 20)
    fs.submit(Result(records=[{"id": 1}, {"id": 2}], decap=decap), batch)  # type: ignore[arg-type]
    assert {n: h.ok for n, h in fs.health().items()} == {"jsonl": True, "pcap": True}
    fs.close(10)
    c = fs.counters()
    assert c["jsonl"]["sent"] == 2 and c["pcap"]["sent"] == 20
    assert len(list((tmp_path / "flows").glob("*.jsonl"))) == 1
    assert len(list((tmp_path / "pcap").glob("*.pcap"))) == 1


def test_a_dead_forwarder_does_not_stall_submit(tmp_path: Path) -> None:
    specs = registry.validate(
        {"jsonl": {"directory": str(tmp_path / "f")}, "pcap": {"directory": str(tmp_path / "p"), "queue_max": 100}},
        None,
    )
    fs = ForwarderSet.from_specs(specs, tmp_path)
    pcap = next(f for f in fs.packet)
    gate = __import__("threading").Event()
    real = pcap.sink.write
    pcap.sink.write = lambda b: (gate.wait(10), real(b))[1]  # type: ignore[method-assign]
    t0 = time.monotonic()
    for i in range(20):
        batch, decap, _ = make_batch(i * 50, 50)
        fs.submit(Result(records=[{"id": i}], decap=decap), batch)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 3
    gate.set()
    fs.close(10)
    c = fs.counters()
    assert c["jsonl"]["sent"] == 20
    assert c["pcap"]["dropped_queue_full"] > 0
    assert c["pcap"]["received"] == 1000 == c["pcap"]["sent"] + c["pcap"]["dropped"]
