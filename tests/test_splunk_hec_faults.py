"""Issue 4 acceptance for Splunk HEC: under each fault every record ends up indexed or
dead-lettered with its reason, and the counts add up; an invalid token is one error,
not a retry storm. Runs the sink behind the shared runner (forwarders.runner).

Duplicates from at-least-once resends are allowed; each test measures them (records
carry a test-only ``seq`` id) and prints them (``pytest -s``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hec_server import HecServer, Outage, Token
from kafka_fixtures import make_records

from forwarders.api import SinkContext
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings
from forwarders.splunk_hec import SplunkHecConfig, SplunkHecSink
from receiver.config.schema import from_table

TOKEN = "0b9e55e2-hec-fault-token"
N = 2000


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[HecServer]:
    srv = HecServer(tokens=[Token(TOKEN, ack=True)]).start()
    yield srv
    srv.stop()


def forwarder(url: str, tmp_path: Path, settings: dict[str, Any] | None = None, **kw: Any) -> RecordForwarder:
    tf = tmp_path / "token"
    tf.write_text(TOKEN)
    tf.chmod(0o600)
    cfg = from_table(SplunkHecConfig, {"url": url, "token_file": str(tf), "timeout": 0.5, **kw})
    sink = SplunkHecSink(cfg, SinkContext("splunk_hec", tmp_path))
    s = {"batch_max_records": 100, "batch_interval": 0.02, "retry_backoff_min": 0.01,
         "retry_backoff_max": 0.1, "max_retries": 3, "probe_interval": 0.1, **(settings or {})}
    return RecordForwarder(sink, from_table(RunnerSettings, s))


def settled(fwd: RecordForwarder) -> bool:
    c = fwd.counters()
    return (c["queue_depth"] == 0 and c["in_flight"] == 0 and c["spool_records"] == 0
            and c["sent"] + c["dead_lettered"] + c["dropped"] >= c["received"])


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    p = tmp_path / "deadletter" / "splunk_hec.jsonl"
    return [orjson.loads(x) for x in p.read_bytes().splitlines()] if p.exists() else []


def account(fwd: RecordForwarder, server: HecServer, tmp_path: Path, n: int = N) -> dict[str, int]:
    """Check that records in = indexed + dead-lettered + dropped; return the figures."""
    c = fwd.counters()
    seqs = Counter(e["event"]["seq"] for e in server.indexed())
    dead = [r["seq"] for d in dead_letters(tmp_path) for r in d["records"]]
    for d in dead_letters(tmp_path):
        assert d["reason"] and d["count"] == len(d["records"])
    indexed = set(seqs)
    assert c["received"] == n
    assert indexed.isdisjoint(dead)
    assert indexed | set(dead) == set(range(n)), "records missing from both the index and the dead letters"
    assert len(indexed) + len(dead) + c["dropped"] == n
    assert c["sent"] == len(indexed)  # "sent" includes the replayed ones
    dup = sum(seqs.values()) - len(seqs)
    figures = {**c, "indexed_unique": len(indexed), "dead": len(dead), "duplicates": dup,
               "event_requests": server.event_requests()}
    print(figures)
    return figures


def feed(fwd: RecordForwarder, recs: list[dict[str, Any]], chunk: int = 50) -> None:
    for i in range(0, len(recs), chunk):
        assert fwd.put(recs[i : i + chunk]) == len(recs[i : i + chunk])  # type: ignore[arg-type]


def test_no_fault_baseline(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path, ack=True)
    feed(fwd, make_records(N))
    wait_for(lambda: settled(fwd), "the forwarder to settle")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and f["duplicates"] == 0 and f["retried"] == 0


def test_503_bursts(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path)
    recs = make_records(N)
    server.faults.busy = 3
    feed(fwd, recs[: N // 2])
    wait_for(lambda: server.faults.busy == 0, "the burst to be consumed")
    server.faults.busy = 3
    feed(fwd, recs[N // 2 :])
    wait_for(lambda: settled(fwd), "the forwarder to settle")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and f["retried"] > 0 and server.counts["code:9"] >= 6


def test_long_outage_connection_refused_spools_and_replays(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path, settings={"max_retries": 1})
    recs = make_records(N)
    feed(fwd, recs[:500])
    wait_for(lambda: fwd.counters()["sent"] == 500, "the first records")
    outage = Outage(server)
    outage.begin()
    feed(fwd, recs[500:])
    wait_for(lambda: fwd.counters()["spooled"] > 0 and fwd.counters()["queue_depth"] == 0, "spooling")
    assert fwd.health().ok is False
    srv = outage.end()
    try:
        wait_for(lambda: settled(fwd), "the spool to replay")
        fwd.close()
        f = account(fwd, srv, tmp_path)
    finally:
        srv.stop()
    assert f["indexed_unique"] == N and f["replayed"] > 0 and f["dead"] == 0
    # replayed oldest first: the first replayed record is the first one spooled
    seqs = [e["event"]["seq"] for e in srv.indexed()]
    assert seqs[:500] == list(range(500))


def test_long_outage_503(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path, settings={"max_retries": 2})
    server.faults.busy_until = time.time() + 3600
    feed(fwd, make_records(N))
    wait_for(lambda: fwd.counters()["spooled"] > 0 and fwd.counters()["queue_depth"] == 0, "spooling")
    server.faults.busy_until = 0
    wait_for(lambda: settled(fwd), "the spool to replay")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and f["spooled"] > 0


def test_slow_responses(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path, timeout=0.1)
    server.faults.slow = 0.3  # longer than the client's read timeout: it gives up, the server indexes
    feed(fwd, make_records(N))
    wait_for(lambda: fwd.counters()["retried"] >= 2, "read timeouts")
    server.faults.slow = 0.05  # slow but within the timeout
    wait_for(lambda: settled(fwd), "the forwarder to settle", timeout=60)
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and f["retried"] > 0


def test_dropped_connections(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path)
    server.faults.drop = 3
    server.faults.drop_after_index = 2  # indexed, reply lost: the resend makes duplicates
    feed(fwd, make_records(N))
    wait_for(lambda: settled(fwd), "the forwarder to settle")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and server.counts["dropped"] == 3
    assert server.counts["dropped_after_index"] == 2
    assert f["duplicates"] == 200  # two batches of 100 indexed twice: measured, not hidden


def test_acks_withheld_then_released(server: HecServer, tmp_path: Path) -> None:
    fwd = forwarder(server.url, tmp_path, ack=True, ack_timeout=0.2, ack_poll_interval=0.05)
    server.faults.withhold_acks = True
    feed(fwd, make_records(N))
    wait_for(lambda: fwd.sink.counters()["ack_timeouts"] >= 2, "ack timeouts")  # type: ignore[attr-defined]
    server.faults.withhold_acks = False
    wait_for(lambda: settled(fwd), "the forwarder to settle")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N and f["duplicates"] > 0  # unacknowledged batches were resent


def test_incorrect_index_dead_letters_with_reason(server: HecServer, tmp_path: Path) -> None:
    server.tokens[TOKEN].indexes = {"main"}
    fwd = forwarder(server.url, tmp_path, index="not-allowed")
    feed(fwd, make_records(N))
    wait_for(lambda: settled(fwd), "the forwarder to settle")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["dead"] == N and f["indexed_unique"] == 0
    reasons = {d["reason"] for d in dead_letters(tmp_path)}
    assert all("code 7" in r and "Incorrect index" in r for r in reasons)


def test_invalid_token_is_one_error_not_a_retry_storm(
    server: HecServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server.tokens = {"some-other-token": Token("some-other-token", ack=True)}
    fwd = forwarder(server.url, tmp_path, settings={"probe_interval": 0.3})
    feed(fwd, make_records(N))
    wait_for(lambda: fwd.counters()["spooled"] == N, "everything to be spooled")
    requests_while_bad = server.event_requests()
    # 20 batches: a retry storm would be 20 x (1 + max_retries) requests; we see the start-up
    # token check, the first batch and the health probes (an empty POST each)
    time.sleep(1.0)
    requests_after = server.event_requests()
    assert requests_while_bad <= 4
    assert requests_after - requests_while_bad <= 1.0 / 0.3 + 1
    assert server.counts["code:4"] >= 1 and len(server.indexed()) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([r for r in errors if r.name == "vxmirror.forwarders"]) == 1
    assert "Invalid token" in caplog.text and TOKEN not in caplog.text
    assert fwd.health().ok is False
    # the token is fixed on the Splunk side: the probe passes and the spool replays
    server.tokens[TOKEN] = Token(TOKEN, ack=True)
    wait_for(lambda: settled(fwd), "the spool to replay")
    fwd.close()
    f = account(fwd, server, tmp_path)
    assert f["indexed_unique"] == N
