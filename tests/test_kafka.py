"""Kafka sink against a real broker (Tansu on loopback), through the shared runner."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_fixtures import Tansu, consume_all, make_records

from forwarders.api import SendError, SinkContext
from forwarders.kafka import KafkaConfig, KafkaSink
from forwarders.registry import validate
from forwarders.runner import RecordForwarder
from forwarders.settings import RunnerSettings
from receiver.config.schema import ConfigError, from_table
from receiver.flows.recordbatch import RecordBatch


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def broker() -> Iterator[Tansu]:
    b = Tansu().start()
    yield b
    b.stop()


def kafka_sink(bootstrap: str, tmp_path: Path, **kw: Any) -> KafkaSink:
    cfg = from_table(KafkaConfig, {"brokers": bootstrap, "topic": "flows", "linger_ms": 5, **kw})
    return KafkaSink(cfg, SinkContext("kafka", tmp_path))


def runner(sink: KafkaSink, **kw: Any) -> RecordForwarder:
    s = {"batch_max_records": 200, "batch_interval": 0.02, "retry_backoff_min": 0.05,
         "retry_backoff_max": 0.5, "max_retries": 2, **kw}
    return RecordForwarder(sink, from_table(RunnerSettings, s))


def test_records_arrive_keyed_by_community_id(broker: Tansu, tmp_path: Path) -> None:
    sink = kafka_sink(broker.bootstrap, tmp_path)
    assert sink.health_check().ok
    recs = make_records(3000, flows=700)  # interim records: several per flow
    fwd = runner(sink)
    for i in range(0, len(recs), 100):
        fwd.put(recs[i : i + 100])  # type: ignore[arg-type]
    wait_for(lambda: fwd.counters()["sent"] == len(recs), "delivery")
    fwd.close()
    msgs = consume_all(broker.bootstrap, "flows", len(recs))
    values = [orjson.loads(m.value()) for m in msgs]
    assert sorted(v["seq"] for v in values) == list(range(len(recs)))
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for m, v in zip(msgs, values):
        assert m.key() == v["community_id"].encode()
        partitions[m.key()].add(m.partition())
    assert all(len(p) == 1 for p in partitions.values())  # one flow, one partition
    assert len({m.partition() for m in msgs}) > 1
    # within a partition, a flow's records keep their order
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for m, v in sorted(zip(msgs, values), key=lambda mv: (mv[0].partition(), mv[0].offset())):
        by_key[m.key()].append(v["seq"])
    assert all(s == sorted(s) for s in by_key.values())
    c = sink.counters()
    assert c["delivered"] == len(recs) and c["delivery_failed"] == 0


def test_broker_outage_records_arrive_after_it_returns(broker: Tansu, tmp_path: Path) -> None:
    """Memory storage loses what the broker held before the stop, so the check is on the
    records emitted while it was down: every one of them arrives after it returns."""
    sink = kafka_sink(broker.bootstrap, tmp_path, delivery_timeout=1.5)
    fwd = runner(sink, max_retries=1, probe_interval=0.2)
    before, during = make_records(500, seed=1), make_records(1500, seed=2)
    for r in during:
        r["seq"] += 10_000
    fwd.put(before)  # type: ignore[arg-type]
    wait_for(lambda: fwd.counters()["sent"] == 500, "the first records")
    assert len(consume_all(broker.bootstrap, "flows", 500, timeout=10)) == 500
    broker.stop()
    for i in range(0, len(during), 100):
        fwd.put(during[i : i + 100])  # type: ignore[arg-type]
    wait_for(lambda: fwd.counters()["spooled"] > 0, "the outage to be noticed")
    down = fwd.counters()
    assert down["healthy"] == 0 and sink.counters()["delivery_failed"] > 0
    broker.start()  # same port, empty memory storage
    wait_for(lambda: fwd.counters()["sent"] == 2000 and fwd.counters()["spool_records"] == 0, "replay")
    fwd.close()
    c = fwd.counters()
    print(c, sink.counters())
    assert c["retried"] > 0 and c["spooled"] > 0 and c["replayed"] > 0 and c["dropped"] == 0
    assert sink.counters()["producer_restarts"] > 0
    msgs = consume_all(broker.bootstrap, "flows", len(during))
    seqs = Counter(orjson.loads(m.value())["seq"] for m in msgs)
    assert set(seqs) == {r["seq"] for r in during}
    print("duplicates after the outage:", sum(seqs.values()) - len(seqs))


def test_queue_full_back_pressure(broker: Tansu, tmp_path: Path) -> None:
    sink = kafka_sink(broker.bootstrap, tmp_path, librdkafka={"queue.buffering.max.messages": 50})
    recs = make_records(1000)
    sink.send(sink.encode(RecordBatch.from_records(recs)), len(recs))  # 1000 messages through a 50-message local queue
    c = sink.counters()
    assert c["delivered"] == 1000 and c["queue_full_waits"] > 0
    assert len(consume_all(broker.bootstrap, "flows", 1000)) == 1000


def test_failed_batch_raises_retryable_and_resend_skips_delivered(tmp_path: Path) -> None:
    b = Tansu().start()
    sink = kafka_sink(b.bootstrap, tmp_path, delivery_timeout=1.0)
    recs = make_records(10)
    payload = sink.encode(RecordBatch.from_records(recs))
    b.stop()
    with pytest.raises(SendError) as ei:
        sink.send(payload, 10)
    assert ei.value.retryable and "10 of 10 records not delivered" in ei.value.reason
    b.start()
    try:
        # as the runner would: resend until the restarted broker takes it (a busy machine may
        # need more than one 1 s delivery timeout for the new producer to connect)
        for attempt in range(10):
            try:
                sink.send(payload, 10)
                break
            except SendError:
                if attempt == 9:
                    raise
        assert sink.counters()["delivered"] == 10
    finally:
        sink.close()
        b.stop()


def test_secrets_from_file_and_env_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t-from-file\n")
    pw.chmod(0o600)
    monkeypatch.setenv("KAFKA_USER_PW", "s3cr3t-from-env")
    sink = kafka_sink("127.0.0.1:1", tmp_path, librdkafka={
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": "vx",
        "sasl.password": {"file": str(pw)}, "ssl.key.password": {"env": "KAFKA_USER_PW"},
    })
    assert sink._settings["sasl.password"] == "s3cr3t-from-file"
    assert sink._settings["ssl.key.password"] == "s3cr3t-from-env"
    assert "s3cr3t" not in caplog.text and "<from file" in caplog.text
    sink._producer.flush(0)


def test_config_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    specs = validate({"kafka": {"brokers": "b-1.msk:9094,b-2.msk:9094", "topic": "t",
                                "librdkafka": {"security.protocol": "SSL"}, "queue_max": 5000}}, "vx.toml")
    assert specs[0].config.topic == "t" and specs[0].settings.queue_max == 5000
    for table, key in [
        ({"brokers": "nohostport"}, "forwarders.kafka.brokers"),
        ({"brokers": "a:1", "librdkafka": {"acks": "1"}}, "forwarders.kafka.librdkafka.acks"),
        ({"brokers": "a:1", "librdkafka": {"sasl.password": {"path": "x"}}},
         "forwarders.kafka.librdkafka.sasl.password"),
        ({"brokers": "a:1", "compression": "brotli"}, "forwarders.kafka.compression"),
    ]:
        with pytest.raises(ConfigError) as ei:
            validate({"kafka": table}, "vx.toml")
        assert ei.value.key == key, ei.value
    monkeypatch.delenv("NOPE", raising=False)
    cfg = from_table(KafkaConfig, {"brokers": "a:1", "librdkafka": {"sasl.password": {"env": "NOPE"}}})
    with pytest.raises(ConfigError) as ei:
        KafkaSink(cfg, SinkContext("kafka", tmp_path))
    assert ei.value.key == "forwarders.kafka.librdkafka" and "NOPE" in str(ei.value)


def test_keys_from_the_batch_columns_or_any_field(broker: Tansu, tmp_path: Path) -> None:
    recs = make_records(300, flows=60)
    recs[0]["community_id"] = ""  # an empty community_id: no key
    for topic, field in [("by_cid", "community_id"), ("by_src", "src_ip"), ("by_vni", "vni")]:
        sink = kafka_sink(broker.bootstrap, tmp_path, topic=topic, key_field=field)
        sink.send(sink.encode(RecordBatch.from_records(recs)), len(recs))
        sink.close()
        got = {orjson.loads(m.value())["seq"]: m.key() for m in consume_all(broker.bootstrap, topic, len(recs))}
        want = {r["seq"]: (str(r[field]).encode() if r[field] != "" else None) for r in recs}
        assert got == want, field
    # a payload the sink did not encode itself (the key is read from each record)
    sink = kafka_sink(broker.bootstrap, tmp_path, topic="foreign")
    payload = b"".join(orjson.dumps(r) + b"\n" for r in recs[1:11])
    sink.send(payload, 10)
    sink.close()
    msgs = consume_all(broker.bootstrap, "foreign", 10)
    assert sorted(m.key() for m in msgs) == sorted(r["community_id"].encode() for r in recs[1:11])


def test_broker_frozen_with_batches_in_flight_nothing_counts_before_its_ack(broker: Tansu, tmp_path: Path) -> None:
    """Tansu stopped (SIGSTOP) while several batches are in flight: no batch counts as sent without
    the broker's acknowledgement; the batches that time out are retried or spooled, and once the broker
    runs again (its memory kept) every record is in the topic, byte for byte, with its key."""
    sink = kafka_sink(broker.bootstrap, tmp_path, delivery_timeout=1.0, batches_in_flight=8)
    fwd = runner(sink, batch_max_records=100, max_retries=1, probe_interval=0.2)
    recs = make_records(6000, flows=1500)
    batch = RecordBatch.from_records(recs)
    fwd.put(batch.slice(0, 2000))
    wait_for(lambda: fwd.counters()["sent"] == 2000, "the records before the freeze")
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        for i in range(2000, 6000, 500):
            fwd.put(batch.slice(i, i + 500))
        wait_for(lambda: sink.counters()["delivery_failed"] > 0, "the first delivery timeouts")
        frozen = fwd.counters()
        # the failed batches are retried (in vain: a new producer times out as well), then spooled
        wait_for(lambda: fwd.counters()["spooled"] > 0, "a batch spooled")
        during = fwd.counters()
        assert during["sent"] == frozen["sent"] == 2000  # nothing acknowledged, nothing counted
        assert during["retried"] > 0 and during["dropped"] == 0 and during["healthy"] == 0
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    wait_for(lambda: fwd.counters()["sent"] == 6000 and fwd.counters()["spool_records"] == 0, "recovery", 90)
    fwd.close()
    c = fwd.counters()
    assert c["dropped"] == 0 and c["in_flight"] == 0 and c["queue_depth"] == 0
    msgs = consume_all(broker.bootstrap, "flows", 6000)
    got = {m.value(): m.key() for m in msgs}
    assert got == {line: r["community_id"].encode() for line, r in zip(batch.lines(), recs)}
    print("messages consumed:", len(msgs), "duplicates (sent again after a timeout):", len(msgs) - len(got))


def test_full_local_queue_past_its_timeout_fails_the_batch_and_the_resend_delivers_it(tmp_path: Path) -> None:
    b = Tansu().start()
    sink = kafka_sink(b.bootstrap, tmp_path, delivery_timeout=1.0, queue_full_timeout=0.3,
                      librdkafka={"queue.buffering.max.messages": 50})
    recs = make_records(200)
    payload = sink.encode(RecordBatch.from_records(recs))
    b.stop()  # nothing leaves the 50-message queue: the batch cannot be handed over whole
    try:
        with pytest.raises(SendError) as ei:
            sink.send(payload, 200)
        assert ei.value.retryable and "200 of 200 records not delivered" in ei.value.reason
        assert "local queue full" in ei.value.reason and sink.counters()["queue_full_waits"] > 0
        b.start()
        for attempt in range(10):  # as the runner would, until the restarted broker takes it
            try:
                sink.send(payload, 200)
                break
            except SendError:
                if attempt == 9:
                    raise
        sink.close()
        msgs = consume_all(b.bootstrap, "flows", 200)
        assert sorted(m.value() for m in msgs) == sorted(RecordBatch.from_records(recs).lines())
    finally:
        b.stop()
