"""The shared runner with a test-double sink: retry, spool, replay, dead letters, drops, close."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarders.api import FrameBlock, Health, PacketSink, Pending, RecordSink, SendError, SinkContext
from forwarders.runner import DROP_WARNING_SECONDS, PacketForwarder, RecordForwarder, backoff_delay
from forwarders.settings import RunnerSettings
from receiver.flows.recordbatch import RecordBatch


class FakeSink(RecordSink):
    """Records what it delivered; ``fail`` decides per call whether (and how) a send fails."""

    kind = "fake"
    config_class = dict

    def __init__(self, ctx: SinkContext, fail: Callable[[list[dict[str, Any]], int], SendError | None]) -> None:
        super().__init__({}, ctx)
        self.fail = fail
        self.calls = 0
        self.delivered: list[dict[str, Any]] = []
        self.healthy = True
        self.closed = False
        self.lock = threading.Lock()

    def encode(self, batch: RecordBatch) -> bytes:
        return b"\n".join(batch.lines())

    def send(self, payload: bytes, count: int) -> None:
        recs = [orjson.loads(x) for x in payload.split(b"\n")]
        assert len(recs) == count
        with self.lock:
            self.calls += 1
            err = self.fail(recs, self.calls)
            if err is not None:
                if err.accepted:
                    self.delivered += recs[: err.accepted]
                raise err
            self.delivered += recs

    def health_check(self) -> Health:
        return Health(self.healthy)

    def close(self) -> None:
        self.closed = True


def recs(lo: int, hi: int) -> list[Any]:
    return [{"id": i, "community_id": f"1:{i}"} for i in range(lo, hi)]


def fast(**kw: Any) -> RunnerSettings:
    base: dict[str, Any] = dict(
        batch_max_records=10, batch_interval=0.02, retry_backoff_min=0.001, retry_backoff_max=0.01, max_retries=3
    )
    base.update(kw)
    return RunnerSettings(**base)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def balanced(c: dict[str, int]) -> bool:
    """received = sent + dead_lettered + dropped + still spooled/queued (one runner, empty spool at start)."""
    return (
        c["received"]
        == c["sent"] + c["dead_lettered"] + c["dropped"] + c["spool_records"] + c["queue_depth"] + c["in_flight"]
    )


def ctx(tmp_path: Path, name: str = "fake") -> SinkContext:
    return SinkContext(name=name, data_dir=tmp_path)


def test_retry_then_success(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: SendError("503", retryable=True) if n <= 2 else None)
    fwd = RecordForwarder(sink, fast())
    fwd.put(recs(0, 10))
    wait_for(lambda: fwd.counters()["sent"] == 10)
    fwd.close(5)
    c = fwd.counters()
    assert sink.delivered == recs(0, 10)
    assert c["retried"] == 20 and c["spooled"] == 0 and c["dropped"] == 0
    assert balanced(c) and sink.closed


def test_outage_spools_then_replays_oldest_first(tmp_path: Path) -> None:
    down = threading.Event()
    down.set()
    sink = FakeSink(
        ctx(tmp_path), lambda r, n: SendError("connection refused", retryable=True) if down.is_set() else None
    )
    fwd = RecordForwarder(sink, fast(max_retries=1, retry_backoff_max=0.05))
    for i in range(0, 100, 10):
        fwd.put(recs(i, i + 10))
    # (the spool's count and the counter are two steps: both are waited for)
    wait_for(lambda: fwd.counters()["spool_records"] == 100 and fwd.counters()["spooled"] == 100)
    c = fwd.counters()
    assert c["sent"] == 0 and not fwd.health().ok
    calls_during_outage = sink.calls
    time.sleep(0.2)
    assert sink.calls - calls_during_outage < 40, "probing a down sink must back off"
    down.clear()
    wait_for(lambda: fwd.counters()["sent"] == 100)
    fwd.close(5)
    c = fwd.counters()
    assert sink.delivered == recs(0, 100)  # oldest first
    assert c["replayed"] == 100 and c["spool_records"] == 0 and fwd.health().ok
    assert not list((tmp_path / "spool" / "fake").iterdir())
    assert balanced(c)


def test_dead_letters_carry_records_and_reason(tmp_path: Path) -> None:
    def fail(r: list[dict[str, Any]], n: int) -> SendError | None:
        if any(x["id"] == 13 for x in r):
            return SendError("400 invalid event (code 6)", retryable=False)
        return None

    sink = FakeSink(ctx(tmp_path), fail)
    fwd = RecordForwarder(sink, fast())
    fwd.put(recs(0, 30))
    fwd.close(5)
    c = fwd.counters()
    assert c["sent"] == 20 and c["dead_lettered"] == 10 and c["retried"] == 0
    (line,) = (tmp_path / "deadletter" / "fake.jsonl").read_bytes().splitlines()
    dl = orjson.loads(line)
    assert dl["reason"] == "400 invalid event (code 6)" and dl["records"] == recs(10, 20) and dl["count"] == 10
    assert balanced(c)


def test_queue_overflow_without_a_spool_is_dropped_and_counted(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: None)
    fwd = RecordForwarder(sink, fast(queue_max=25, spool_max_bytes=0), start=False)
    assert fwd.put(recs(0, 20)) == 20
    assert fwd.put(recs(20, 40)) == 5  # partly accepted
    assert fwd.put(recs(40, 50)) == 0
    c = fwd.counters()
    assert c["dropped_queue_full"] == 25 and c["queue_depth"] == 25
    fwd.start()
    fwd.close(5)
    c = fwd.counters()
    assert sink.delivered == recs(0, 25) and c["received"] == 50 and balanced(c)


def test_put_never_blocks_on_a_stuck_sink(tmp_path: Path) -> None:
    release = threading.Event()

    def stuck(r: list[dict[str, Any]], n: int) -> SendError | None:
        release.wait(10)
        return None

    sink = FakeSink(ctx(tmp_path), stuck)
    fwd = RecordForwarder(sink, fast(queue_max=100))
    t0 = time.monotonic()
    for i in range(0, 1000, 10):
        fwd.put(recs(i, i + 10))
    assert time.monotonic() - t0 < 2.0
    c = fwd.counters()
    assert c["spooled"] > 0 and c["dropped"] == 0  # the overflow went to the spool
    release.set()
    fwd.close(5)
    c = fwd.counters()
    assert balanced(c) and c["sent"] == 1000 and c["replayed"] == c["spooled"]  # replayed while closing
    assert sorted(r["id"] for r in sink.delivered) == list(range(1000))


def test_spool_survives_restart(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: SendError("timeout", retryable=True))
    fwd = RecordForwarder(sink, fast(max_retries=0))
    fwd.put(recs(0, 35))
    fwd.close(0.5)
    c = fwd.counters()
    assert c["sent"] == 0 and c["spool_records"] == 35 and balanced(c)

    sink2 = FakeSink(ctx(tmp_path), lambda r, n: None)
    fwd2 = RecordForwarder(sink2, fast(), start=False)  # (started, it would replay at once)
    assert fwd2.counters()["spool_records"] == 35
    fwd2.start()
    fwd2.put(recs(35, 40))
    wait_for(lambda: fwd2.counters()["sent"] == 40)
    fwd2.close(5)
    c2 = fwd2.counters()
    assert c2["replayed"] == 35 and c2["spool_records"] == 0
    assert sorted(r["id"] for r in sink2.delivered) == list(range(40))
    replayed = [r["id"] for r in sink2.delivered if r["id"] < 35]
    assert replayed == list(range(35))  # oldest first


def test_workers_spool_apart_and_worker_0_adopts_the_spools_of_workers_gone(tmp_path: Path) -> None:
    """Two workers' spools of one forwarder never share a directory (their sequence numbers would
    collide and one file overwrite the other); restarted with one worker, worker 0 replays both."""
    down = lambda r, n: SendError("down", retryable=True)  # noqa: E731
    fwds = []
    for w in (0, 1, 2):
        sink = FakeSink(SinkContext(name="fake", data_dir=tmp_path, worker=w, workers=3), down)
        fwds.append(RecordForwarder(sink, fast(max_retries=0)))
    for w, fwd in enumerate(fwds):
        fwd.put(recs(100 * w, 100 * w + 25))  # the same batch sizes: the same file names in one directory
    for fwd in fwds:
        fwd.close(0.5)
        assert fwd.counters()["spool_records"] == 25
    base = tmp_path / "spool" / "fake"
    assert len(list(base.glob("*.jsonl"))) == 3 and len(list((base / "w1").glob("*.jsonl"))) == 3
    (base / "w2" / "000000000009-1.jsonl.tmp").write_bytes(b'{"id": -1}\n')  # cut by a crash: not a batch

    # restarted with two workers: worker 0 adopts worker 2's spool, worker 1 keeps its own
    sinks = [FakeSink(SinkContext(name="fake", data_dir=tmp_path, worker=w, workers=2), lambda r, n: None)
             for w in (0, 1)]
    again = [RecordForwarder(s, fast(), start=False) for s in sinks]
    assert [f.counters()["spool_records"] for f in again] == [50, 25]
    assert not (base / "w2").exists()
    for f in again:
        f.start()
    wait_for(lambda: all(f.counters()["spool_records"] == 0 for f in again))
    for f in again:
        f.close(5)
    assert [r["id"] for r in sinks[0].delivered] == [*range(25), *range(200, 225)]  # its own first
    assert sorted(r["id"] for r in sinks[1].delivered) == list(range(100, 125))


def test_close_flushes_partial_batch(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: None)
    fwd = RecordForwarder(sink, fast(batch_interval=60, batch_max_records=1000))
    fwd.put(recs(0, 7))
    time.sleep(0.1)
    assert sink.delivered == []  # still waiting for the batch to fill
    fwd.close(5)
    assert sink.delivered == recs(0, 7) and fwd.counters()["sent"] == 7


def test_close_with_dead_sink_spools_everything_within_timeout(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: SendError("503", retryable=True))
    fwd = RecordForwarder(sink, fast(max_retries=100, retry_backoff_min=0.05, retry_backoff_max=0.2))
    for i in range(0, 200, 20):
        fwd.put(recs(i, i + 20))
    t0 = time.monotonic()
    fwd.close(0.5)
    assert time.monotonic() - t0 < 3
    c = fwd.counters()
    assert c["spool_records"] == 200 and c["sent"] == 0 and balanced(c)


def test_fatal_error_logs_once_and_stops_sending(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad_token = threading.Event()
    bad_token.set()

    def fail(r: list[dict[str, Any]], n: int) -> SendError | None:
        if bad_token.is_set():
            return SendError("403 invalid token (code 4)", retryable=False, fatal_for_sink=True)
        return None

    sink = FakeSink(ctx(tmp_path), fail)
    sink.healthy = False
    fwd = RecordForwarder(sink, fast(probe_interval=0.1))
    for i in range(0, 100, 10):
        fwd.put(recs(i, i + 10))
        time.sleep(0.01)
    wait_for(lambda: fwd.counters()["spool_records"] == 100)
    time.sleep(0.3)
    assert sink.calls == 1, "a fatal error must not turn into a retry storm"
    h = fwd.health()
    assert not h.ok and "invalid token" in h.detail
    assert sum("invalid token" in r.getMessage() for r in caplog.records) == 1
    bad_token.clear()
    sink.healthy = True  # the probe's health check now passes
    wait_for(lambda: fwd.counters()["sent"] == 100)
    fwd.close(5)
    assert sink.delivered == recs(0, 100) and fwd.counters()["dead_lettered"] == 0


def test_partial_acceptance_resends_only_the_rest(tmp_path: Path) -> None:
    def fail(r: list[dict[str, Any]], n: int) -> SendError | None:
        return SendError("3 of 10 acked", retryable=True, accepted=3) if n == 1 else None

    sink = FakeSink(ctx(tmp_path), fail)
    fwd = RecordForwarder(sink, fast())
    fwd.put(recs(0, 10))
    fwd.close(5)
    assert sink.delivered == recs(0, 10)  # no duplicates
    assert fwd.counters()["sent"] == 10


def test_one_refused_record_is_dead_lettered_and_its_neighbours_are_sent(tmp_path: Path) -> None:
    # Splunk's invalid-event-number: events before it indexed, it refused, the rest not looked at
    def fail(r: list[dict[str, Any]], n: int) -> SendError | None:
        bad = [i for i, x in enumerate(r) if x["id"] == 4]
        if bad:
            return SendError("code 6 invalid data format", retryable=False, accepted=bad[0], rejected=1)
        return None

    sink = FakeSink(ctx(tmp_path), fail)
    fwd = RecordForwarder(sink, fast())
    fwd.put(recs(0, 10))
    fwd.close(5)
    assert sink.delivered == [x for x in recs(0, 10) if x["id"] != 4]
    c = fwd.counters()
    assert c["sent"] == 9 and c["dead_lettered"] == 1 and c["retried"] == 0
    dead = (tmp_path / "deadletter" / "fake.jsonl").read_bytes().splitlines()
    assert len(dead) == 1 and b'"id":4' in dead[0] and b"invalid data format" in dead[0]


def test_batches_cut_by_bytes(tmp_path: Path) -> None:
    sizes: list[int] = []

    def fail(r: list[dict[str, Any]], n: int) -> SendError | None:
        sizes.append(len(r))
        return None

    sink = FakeSink(ctx(tmp_path), fail)
    fwd = RecordForwarder(sink, fast(batch_max_records=1000, batch_max_bytes=400, batch_interval=0.05))
    fwd.put([{"id": i, "pad": "x" * 90} for i in range(20)])
    fwd.close(5)
    assert sum(sizes) == 20 and max(sizes) <= 4 and len(sink.delivered) == 20


def test_spool_bound_drops_are_counted(tmp_path: Path) -> None:
    sink = FakeSink(ctx(tmp_path), lambda r, n: SendError("down", retryable=True))
    fwd = RecordForwarder(sink, fast(max_retries=0, spool_max_bytes=600))
    fwd.put([{"id": i, "pad": "y" * 40} for i in range(50)])
    fwd.close(0.5)
    c = fwd.counters()
    assert c["dropped_spool_full"] > 0 and c["spool_bytes"] <= 600 and balanced(c)


def test_backoff_full_jitter_bounds() -> None:
    import random

    rng = random.Random(1)
    for attempt in range(1, 12):
        d = [backoff_delay(attempt, 0.1, 5.0, rng) for _ in range(200)]
        ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
        assert min(d) >= 0 and max(d) <= ceiling and max(d) > ceiling * 0.8


class FakePacketSink(PacketSink):
    kind = "fakepkt"
    config_class = dict

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__({}, ctx)
        self.frames = 0
        self.gate = threading.Event()
        self.broken = False
        self.closed = False

    def write(self, block: FrameBlock) -> None:
        self.gate.wait(10)
        if self.broken:
            raise OSError(28, "No space left on device")
        self.frames += block.count

    def close(self) -> None:
        self.closed = True


def block(n: int) -> FrameBlock:
    import numpy as np

    return FrameBlock(
        data=b"x" * n,
        offset=np.arange(n),
        caplen=np.ones(n, np.uint32),
        wirelen=np.ones(n, np.uint32),
        ts=np.zeros(n),
        vni=np.zeros(n, np.int64),
    )


def test_packet_forwarder_overflow_and_write_errors(tmp_path: Path) -> None:
    sink = FakePacketSink(ctx(tmp_path, "pkt"))
    fwd = PacketForwarder(sink, fast(queue_max=100))
    accepted = sum(fwd.put(block(30)) for _ in range(10))
    assert accepted in (3, 4)  # one block may already be in the writer's hands
    sink.gate.set()
    wait_for(lambda: fwd.counters()["queue_depth"] == 0)
    sink.broken = True
    fwd.put(block(5))
    wait_for(lambda: fwd.counters().get("dropped_disk_full", 0) == 5)  # ENOSPC; other errors: write_error
    assert not fwd.health().ok
    fwd.close(5)
    c = fwd.counters()
    assert c["received"] == 305 and c["sent"] == accepted * 30
    assert c["received"] == c["sent"] + c["dropped"] and sink.closed


# ---- a full queue spools (issue 14): nothing dropped while the spool has room ----


class SlowSink(RecordSink):
    """Takes the batch's bytes as they are and needs ``delay`` seconds a batch; keeps the payloads."""

    kind = "slow"
    config_class = dict

    def __init__(self, ctx: SinkContext, delay: float, gate: threading.Event | None = None) -> None:
        super().__init__({}, ctx)
        self.delay = delay
        self.gate = gate
        self.payloads: list[bytes] = []

    def encode(self, batch: RecordBatch) -> bytes:
        return batch.data

    def send(self, payload: bytes, count: int) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        self.payloads.append(payload)


def ids(data: bytes) -> list[int]:
    return [int(x) for x in re.findall(rb'"id":(\d+)', data)]


def spooled_ids(tmp_path: Path, name: str) -> list[int]:
    return [i for f in sorted((tmp_path / "spool" / name).glob("*.jsonl")) for i in ids(f.read_bytes())]


def stop_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage().startswith(f"forwarder {name} stopped")]  # type: ignore[attr-defined]


def test_a_million_records_through_a_small_queue_and_a_slow_sink_none_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vxmirror.forwarders")
    one = RecordBatch.from_records(recs(0, 1000))  # built once, handed over 1,000 times
    sink = SlowSink(ctx(tmp_path, "slow"), delay=0.02)
    fwd = RecordForwarder(sink, fast(queue_max=5_000, batch_max_records=1000))
    t0 = time.monotonic()
    for _ in range(1000):
        assert fwd.put(one) == 1000
    put_seconds = time.monotonic() - t0
    c = fwd.counters()
    assert c["received"] == 1_000_000 and c["dropped"] == 0
    assert c["spooled"] >= 900_000  # the overflow went to the spool, not away
    assert c["spool_bytes"] <= fwd.settings.spool_max_bytes
    assert max(e.count for e in fwd.spool._entries) <= 1000  # spool files of one sink batch each
    assert put_seconds < 10, put_seconds  # the caller writes files, it does not wait for the sink
    totals = fwd.close(0.5)
    c = fwd.counters()
    assert c["dropped"] == 0 and c["sent"] + c["spool_records"] == 1_000_000 and balanced(c)
    assert c["sent"] >= 5_000  # the queue, then spooled batches while the close timeout lasted
    # every record exactly once: delivered, or still in the spool
    got = Counter(i for p in sink.payloads for i in ids(p)) + Counter(spooled_ids(tmp_path, "slow"))
    assert got == Counter({i: 1000 for i in range(1000)})
    assert totals == {"received": 1_000_000, "delivered": c["sent"], "replayed": c["replayed"],
                      "spooled": c["spool_records"], "dead_lettered": 0, "dropped": 0}
    assert stop_lines(caplog, "slow") == [{"forwarder": "slow", **totals}]


def test_past_the_spool_bound_drops_are_counted_and_warned_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert DROP_WARNING_SECONDS == 5.0
    gate = threading.Event()  # the sink hangs in its first send until the end
    sink = SlowSink(ctx(tmp_path, "bound"), delay=0, gate=gate)
    fwd = RecordForwarder(sink, fast(queue_max=1000, batch_max_records=100, spool_max_bytes=20_000))
    fwd.drop_warning_seconds = 0.5
    batch = RecordBatch.from_records(recs(0, 1000))  # ~30 bytes a record: the spool takes ~650
    with caplog.at_level(logging.WARNING, "vxmirror.forwarders"):
        for _ in range(20):
            fwd.put(batch)
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 1  # one per interval, however many puts dropped
        c = fwd.counters()
        assert c["dropped_queue_full"] > 0 and c["dropped"] == c["dropped_queue_full"]
        assert c["spool_bytes"] <= 20_000 and c["spool_records"] > 0
        assert c["received"] == 20_000 == c["queue_depth"] + c["in_flight"] + c["spool_records"] + c["dropped"]
        first = warnings[0]
        assert first.fields["dropped_queue_full"] == first.fields["dropped"] > 0  # type: ignore[attr-defined]
        assert f"{first.fields['dropped']} records dropped (queue_full" in first.getMessage()  # type: ignore[attr-defined]
        time.sleep(0.6)
        fwd.put(batch)
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 2
        assert warnings[1].fields["dropped_total"] == fwd.counters()["dropped"]  # type: ignore[attr-defined]
    gate.set()
    fwd.close(5)
    c = fwd.counters()
    assert balanced(c) and c["dropped"] == c["dropped_queue_full"]
    assert c["sent"] + c["spool_records"] + c["dropped"] == 21_000


def test_close_with_more_queued_than_queue_max_loses_nothing_and_a_restart_replays_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vxmirror.forwarders")
    everything = RecordBatch.from_records(recs(0, 50_000))
    sink = SlowSink(ctx(tmp_path, "closing"), delay=0.05)
    fwd = RecordForwarder(sink, fast(queue_max=2_000, batch_max_records=500, batch_interval=60))
    fwd.put(everything)  # like engine.finish() at shutdown: every open flow at once
    totals = fwd.close(0.3)
    c = fwd.counters()
    assert c["dropped"] == 0 and c["received"] == 50_000
    assert totals["delivered"] + totals["spooled"] == 50_000 and totals["spooled"] > 0
    assert stop_lines(caplog, "closing")[0]["spooled"] == totals["spooled"]
    delivered = [i for p in sink.payloads for i in ids(p)]
    assert sorted(delivered + spooled_ids(tmp_path, "closing")) == list(range(50_000))

    sink2 = SlowSink(ctx(tmp_path, "closing"), delay=0)
    fwd2 = RecordForwarder(sink2, fast(batch_max_records=500))
    assert fwd2.counters()["spool_records"] == totals["spooled"]
    wait_for(lambda: fwd2.counters()["spool_records"] == 0)
    totals2 = fwd2.close(5)
    assert totals2["replayed"] == totals2["delivered"] == totals["spooled"]
    replayed = [i for p in sink2.payloads for i in ids(p)]
    assert sorted(delivered + replayed) == list(range(50_000))
    # the queue (the oldest records) went first and the overflow was spooled, and is replayed, in order
    assert delivered[:2_000] == list(range(2_000)) and replayed == sorted(replayed)


def test_overflow_is_replayed_in_order_while_the_sink_is_up(tmp_path: Path) -> None:
    sink = SlowSink(ctx(tmp_path, "up"), delay=0.002)
    fwd = RecordForwarder(sink, fast(queue_max=300, batch_max_records=100), start=False)
    for i in range(0, 5_000, 250):
        fwd.put(RecordBatch.from_records(recs(i, i + 250)))
    c = fwd.counters()
    assert c["queue_depth"] == 300 and c["spool_records"] == c["spooled"] == 4_700 and c["dropped"] == 0
    fwd.start()
    wait_for(lambda: fwd.counters()["sent"] == 5_000)  # up all along: not at close
    c = fwd.counters()
    fwd.close(5)
    assert c["replayed"] == 4_700 and c["spool_records"] == 0 and c["dropped"] == 0
    delivered = [i for p in sink.payloads for i in ids(p)]
    assert delivered[:100] == list(range(100))  # the queue is served first
    assert sorted(delivered) == list(range(5_000))
    assert [i for i in delivered if i >= 300] == list(range(300, 5_000))  # the spool keeps its order


class Ticket(Pending):
    """One batch a PipelinedSink is delivering: settled when the test says so."""

    def __init__(self, sink: PipelinedSink, recs: list[dict[str, Any]]) -> None:
        self.sink = sink
        self.recs = recs
        self.done = threading.Event()
        self.error: SendError | None = None

    def settle(self, error: SendError | None = None) -> None:
        self.error = error
        self.done.set()

    def wait(self, timeout: float) -> bool:
        if not self.done.wait(timeout):
            return False
        if self.error is not None:
            raise self.error
        with self.sink.lock:
            self.sink.delivered += self.recs
        return True


class PipelinedSink(FakeSink):
    """Keeps up to ``max_in_flight`` batches in flight (``start``): the test settles each ticket;
    a resend (``send``, after a failure) goes through FakeSink's ``fail``."""

    def __init__(self, ctx: SinkContext, window: int,
                 fail: Callable[[list[dict[str, Any]], int], SendError | None] = lambda r, n: None) -> None:
        super().__init__(ctx, fail)
        self.max_in_flight = window
        self.tickets: list[Ticket] = []

    def start(self, payload: bytes, count: int) -> Pending:
        t = Ticket(self, [orjson.loads(x) for x in payload.split(b"\n")])
        with self.lock:
            self.tickets.append(t)
        return t

    def open_tickets(self) -> int:
        with self.lock:
            return sum(not t.done.is_set() for t in self.tickets)


def ids_of(rs: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rs]


def test_batches_in_flight_count_as_sent_only_when_settled_oldest_first(tmp_path: Path) -> None:
    sink = PipelinedSink(ctx(tmp_path), window=4)
    fwd = RecordForwarder(sink, fast(batch_interval=60))
    for i in range(0, 100, 10):
        fwd.put(recs(i, i + 10))
    wait_for(lambda: len(sink.tickets) == 4)
    time.sleep(0.1)
    c = fwd.counters()
    assert len(sink.tickets) == 4 and c["sent"] == 0  # the window is full: nothing settled, nothing sent
    assert c["in_flight"] >= 40 and balanced(c)
    sink.tickets[1].settle()  # the second is delivered, the first is not: nothing counts yet
    time.sleep(0.5)
    assert fwd.counters()["sent"] == 0 and len(sink.tickets) == 4
    sink.tickets[0].settle()
    wait_for(lambda: fwd.counters()["sent"] == 20 and len(sink.tickets) == 6)
    # a failure in the middle: the third batch fails while later ones are in flight; it is sent again
    # (send) and counted once that succeeds; the others still count only when they settle
    sink.tickets[2].settle(SendError("broker said no", retryable=True))
    wait_for(lambda: fwd.counters()["sent"] == 30)
    assert fwd.counters()["retried"] == 10 and sink.calls == 1
    while fwd.counters()["sent"] < 100:
        for t in list(sink.tickets):
            t.settle() if not t.done.is_set() else None
        time.sleep(0.01)
    fwd.close(5)
    c = fwd.counters()
    assert sorted(ids_of(sink.delivered)) == list(range(100))  # each record delivered once
    assert c["sent"] == 100 and c["spooled"] == 0 and c["in_flight"] == 0 and balanced(c)


def test_batches_in_flight_that_fail_in_an_outage_are_spooled_and_replayed(tmp_path: Path) -> None:
    down = threading.Event()
    down.set()
    sink = PipelinedSink(ctx(tmp_path), window=4,
                         fail=lambda r, n: SendError("connection refused", retryable=True) if down.is_set() else None)
    fwd = RecordForwarder(sink, fast(batch_interval=60, max_retries=1, retry_backoff_max=0.05))
    for i in range(0, 60, 10):
        fwd.put(recs(i, i + 10))
    wait_for(lambda: len(sink.tickets) == 4)
    sink.tickets[0].settle()  # delivered before the outage
    for t in sink.tickets[1:]:  # the rest fail
        t.settle(SendError("timed out", retryable=True))
    # the first failed one is retried (send fails: down), spooled; the others in flight are spooled
    # as they fail; later batches go straight to the spool while the sink is down
    wait_for(lambda: fwd.counters()["spool_records"] + fwd.counters()["sent"] == 60)
    c = fwd.counters()
    assert c["sent"] == 10 and c["spool_records"] == 50 and c["retried"] == 10 and not fwd.health().ok
    assert ids_of(sink.delivered) == list(range(10))
    down.clear()  # the probe succeeds, the spool is replayed
    wait_for(lambda: fwd.counters()["sent"] == 60)
    fwd.close(5)
    c = fwd.counters()
    assert sorted(ids_of(sink.delivered)) == list(range(60))
    assert c["replayed"] == 50 and c["dropped"] == 0 and c["spool_records"] == 0 and balanced(c)


def test_close_waits_for_the_batches_in_flight(tmp_path: Path) -> None:
    sink = PipelinedSink(ctx(tmp_path), window=8)
    fwd = RecordForwarder(sink, fast(batch_interval=60))
    fwd.put(recs(0, 50))
    wait_for(lambda: len(sink.tickets) == 5)
    threading.Timer(0.3, lambda: [t.settle() for t in sink.tickets]).start()
    totals = fwd.close(5)
    assert totals["delivered"] == 50 and totals["spooled"] == 0 and "in_flight" not in totals
    assert sorted(ids_of(sink.delivered)) == list(range(50))
