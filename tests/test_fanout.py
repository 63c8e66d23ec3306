"""Issue 4 fan-out: one forwarder blackholed (a HEC URL on a loopback socket that accepts
and never answers); the others (jsonl, Kafka on Tansu, a healthy HEC) still receive
everything, and the blackholed one's drops and spooled records are counted.
No timed assertions: the healthy forwarders must finish while the blackhole still hangs."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hec_server import Blackhole, HecServer, Token
from kafka_fixtures import Tansu, consume_all, make_records

from forwarders.manager import ForwarderSet
from forwarders.registry import validate

TOKEN = "fanout-token-3c2b"
N = 6000


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_jsonl(directory: Path) -> list[dict[str, object]]:
    out = []
    for p in sorted(directory.iterdir()):
        data = p.read_bytes()
        if p.name.endswith(".gz"):
            data = gzip.decompress(data)
        out.extend(orjson.loads(x) for x in data.splitlines() if x)
    return out


def test_blackholed_hec_does_not_slow_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VXMIRROR_HEC_TOKEN", TOKEN)
    hole = Blackhole()
    hec = HecServer(tokens=[Token(TOKEN)]).start()
    broker = Tansu().start()
    common = {"batch_max_records": 200, "batch_interval": 0.02, "retry_backoff_min": 0.01,
              "retry_backoff_max": 0.1}
    config = {
        "jsonl": {"directory": str(tmp_path / "flows"), **common},
        "kafka": {"brokers": broker.bootstrap, "topic": "fanout", "linger_ms": 5, **common},
        "splunk_hec": [
            {"name": "healthy", "url": hec.url, **common},
            # blackholed: every request hangs until its read timeout; a small queue and spool
            {"name": "blackholed", "url": f"http://127.0.0.1:{hole.port}", "timeout": 2.0,
             "queue_max": 1000, "spool_max_bytes": 200_000, "max_retries": 1, **common},
        ],
    }
    fs = ForwarderSet.from_specs(validate(config, "fanout.toml"), tmp_path / "data")
    try:
        recs = make_records(N, flows=2000)
        for i in range(0, N, 100):
            fs.submit_records(recs[i : i + 100])  # never blocks, whatever the blackhole does
        names = ["jsonl", "kafka", "splunk_hec.healthy"]
        wait_for(lambda: all(fs.counters()[n]["sent"] == N for n in names), "the healthy forwarders")
        counters = fs.counters()
        bh = counters["splunk_hec.blackholed"]
        # the blackholed forwarder is still stuck on its first requests...
        assert bh["sent"] == 0 and bh["received"] == N
        # ...and everything it got is accounted for: queued, in flight, spooled or dropped (counted)
        assert bh["queue_depth"] + bh["in_flight"] + bh["spooled"] + bh["dropped"] == N
        assert bh["dropped_queue_full"] > 0
        assert len(hole.conns) >= 1
        for n in names:
            assert counters[n]["dropped"] == 0 and counters[n]["retried"] == 0
    finally:
        fs.close(timeout=3.0)
        hole.close()
    bh = fs.counters()["splunk_hec.blackholed"]
    assert bh["sent"] == 0 and bh["spooled"] + bh["dropped"] == N
    print({k: {x: v for x, v in c.items() if v} for k, c in fs.counters().items()})
    try:
        seqs = sorted(int(e["event"]["seq"]) for e in hec.indexed())
        assert seqs == list(range(N))
        assert sorted(int(r["seq"]) for r in read_jsonl(tmp_path / "flows")) == list(range(N))  # type: ignore[call-overload]
        msgs = consume_all(broker.bootstrap, "fanout", N)
        assert sorted(orjson.loads(m.value())["seq"] for m in msgs) == list(range(N))
    finally:
        hec.stop()
        broker.stop()
