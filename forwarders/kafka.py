"""Kafka record sink (confluent-kafka / librdkafka), e.g. for Amazon MSK.

Each record is one message: key = the record's ``community_id`` (both directions
and the interim records of one flow land in one partition), value = the record's
JSON line as it came in the RecordBatch (no decoding: the payload is the batch's
bytes and the keys come from its ``community_id`` column). The producer runs with
``acks=all``, ``enable.idempotence=true`` and zstd compression (level 1); TLS/SASL and any
other librdkafka setting pass through from the ``[forwarders.kafka.librdkafka]``
table, where a secret can be given as ``{ file = "/path" }`` or ``{ env = "NAME" }``
instead of a literal (and is never logged).

Several batches are in flight at once (``batches_in_flight``, the runner's
``RecordSink.start``): ``start`` produces every message of a batch (``produce`` per
message; on ``BufferError``, librdkafka's local queue being full, it serves delivery
reports with ``poll`` and tries again: back-pressure stays in the sink's own thread)
and returns; the batch's own delivery-report callback counts its messages down, and
``wait`` (``poll``) says when all are reported. The runner counts the batch as sent
only when every message is acknowledged; otherwise ``wait`` raises a retryable
``SendError`` and the runner retries or spools it, as a failed ``send`` (which is
``start`` and ``wait`` until settled). Messages of a failed batch that *were*
delivered are remembered, so the resend of the same batch skips them (no duplicates
from partial failures). After a failed batch the producer is recreated before the next
batch (batches still in flight keep theirs until they settle): an idempotent producer
whose broker lost its state (a restarted broker) is otherwise stuck on
UNKNOWN_PRODUCER_ID.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from receiver.config.schema import ConfigError, opt
from receiver.flows.recordbatch import RecordBatch

from .api import Health, Pending, RecordSink, SendError, SinkContext
from .hec_auth import read_secret_file

log = logging.getLogger(__name__)

FORCED = {"acks": "all", "enable.idempotence": True}
SECRET_HINTS = ("password", "secret", "key.pem", "ssl.key", "token", "jaas")
HURRY_STEP = 0.002  # seconds of one ``flush`` while a caller waits for a batch
HURRY_AFTER = 0.002  # the runner waiting on a full window: seconds before librdkafka is hurried
PARTIALS_KEPT = 64  # failed batches whose delivered messages are remembered for their resend


def is_secret_key(name: str) -> bool:
    return any(h in name.lower() for h in SECRET_HINTS)


@dataclass
class KafkaConfig:
    brokers: str = opt("", "bootstrap brokers, comma-separated host:port")
    topic: str = opt("vxmirror-flows", "topic the records are written to")
    key_field: str = opt("community_id", "record field used as the message key")
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = opt("zstd", "compression codec")
    compression_level: int = opt(
        1, "librdkafka compression.level: 1 is the fastest level of zstd, lz4 and gzip; -1: the codec's default",
        min=-1, max=12,
    )
    linger_ms: int = opt(20, "librdkafka linger.ms", min=0, max=60000)
    delivery_timeout: float = opt(
        30.0, "seconds librdkafka keeps trying to deliver a message (message.timeout.ms)", min=0.5
    )
    queue_full_timeout: float = opt(
        30.0, "seconds send waits on a full local producer queue before giving up", min=0.1
    )
    batches_in_flight: int = opt(
        32, "batches produced and not yet acknowledged at once (1: each batch is acknowledged before "
        "the next is produced)", min=1, max=1024,
    )
    client_id: str = opt("vxmirror", "client.id")
    librdkafka: dict[str, Any] = opt({}, "librdkafka settings passed through (TLS, SASL, ...)")

    def validate(self) -> tuple[str, str] | None:
        hosts = [h.strip() for h in self.brokers.split(",") if h.strip()]
        if not hosts:
            return "brokers", "required: comma-separated host:port"
        for h in hosts:
            host, _, port = h.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                return "brokers", f"expected host:port, got {h!r}"
        if not self.topic:
            return "topic", "must not be empty"
        for k, v in self.librdkafka.items():
            if k in FORCED or k in ("bootstrap.servers", "compression.type", "compression.level", "message.timeout.ms"):
                return f"librdkafka.{k}", "set by vxmirror (use the forwarder's own key, or it is fixed)"
            if isinstance(v, dict):
                if set(v) not in ({"file"}, {"env"}) or not isinstance(next(iter(v.values())), str):
                    return f"librdkafka.{k}", 'a table value must be { file = "..." } or { env = "..." }'
            elif not isinstance(v, str | int | float | bool):
                return f"librdkafka.{k}", f"expected a string, number, boolean or file/env table, got {v!r}"
        return None


def resolve_settings(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings for librdkafka, the same with secrets masked for logging)."""
    real: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict) and "file" in v:
            real[k] = read_secret_file(v["file"]).reveal()
            shown[k] = f"<from file {v['file']}>"
        elif isinstance(v, dict) and "env" in v:
            value = os.environ.get(v["env"])
            if value is None:
                raise ValueError(f"environment variable {v['env']} is not set")
            real[k] = value
            shown[k] = f"<from ${v['env']}>"
        else:
            real[k] = v
            shown[k] = "***" if is_secret_key(k) else v
    return real, shown


class _InFlight(Pending):
    """One batch being delivered: its messages' delivery reports, counted down."""

    __slots__ = ("already", "count", "digest", "error", "errors", "failed", "gave_up", "left", "payload",
                 "produced", "producer", "settled", "sink")

    def __init__(self, sink: KafkaSink, producer: Producer, payload: bytes, count: int,
                 already: set[int], digest: bytes) -> None:
        self.sink = sink
        self.producer = producer  # the producer it went to (kept while it is in flight)
        self.payload = payload
        self.count = count  # records (messages) in the payload
        self.already = already  # indexes delivered by an earlier try of the same batch
        self.digest = digest
        self.left = 0  # messages produced and not reported yet
        self.produced = 0  # records [0, produced) were handed to the producer (those in ``already`` skipped)
        self.failed: list[bytes] = []  # values of the messages reported failed
        self.errors: dict[str, int] = {}
        self.gave_up = False  # not every message could be produced
        self.settled = False
        self.error: SendError | None = None  # once settled: why not every message was delivered

    def report(self, err: KafkaError | None, msg: Any) -> None:
        """Delivery report of one message (from ``poll``, in the thread that polls)."""
        self.left -= 1
        if err is not None:
            self.failed.append(msg.value())
            name = err.name()
            self.errors[name] = self.errors.get(name, 0) + 1

    def wait(self, timeout: float) -> bool:
        # every batch the runner may have in flight is unsettled: it can add nothing more, so what
        # librdkafka holds back for linger.ms (a partly filled message set) would only wait
        full = self.sink._unsettled >= self.sink.max_in_flight
        return self.wait_for(timeout, hurry_after=HURRY_AFTER if full else None)

    def wait_for(self, timeout: float, *, hurry_after: float | None) -> bool:
        """``wait``; ``hurry_after``: seconds after which librdkafka is told to send what it holds
        back for ``linger.ms`` (``flush`` in short steps, which serves the delivery reports too);
        None: never."""
        if self.left > 0:
            now = time.monotonic()
            end = now + timeout
            hurry_at = math.inf if hurry_after is None else now + hurry_after
            producer = self.producer
            while True:
                if now >= hurry_at and end > now:
                    producer.flush(min(end - now, HURRY_STEP))
                else:
                    producer.poll(max(0.0, min(end, hurry_at) - now))
                now = time.monotonic()
                if self.left <= 0 or now >= end:
                    break
            if self.left > 0:
                return False
        if not self.settled:
            self.settled = True
            self.error = self.sink._settle(self)
        if self.error is not None:
            raise self.error
        return True


class KafkaSink(RecordSink):
    kind = "kafka"
    config_class = KafkaConfig

    @staticmethod
    def check_config(config: KafkaConfig) -> tuple[str, str] | None:
        """At config validation: brokers given, secrets in the librdkafka table readable."""
        if not config.brokers.strip():
            return "brokers", "required: comma-separated host:port"
        try:
            resolve_settings(config.librdkafka)
        except ValueError as e:
            return "librdkafka", str(e)
        return None

    def __init__(self, config: KafkaConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.config: KafkaConfig = config
        try:
            extra, shown = resolve_settings(config.librdkafka)
        except ValueError as e:
            raise ConfigError(
                context.extra.get("config_file"), f"forwarders.{context.name}.librdkafka", str(e)
            ) from None
        self._settings: dict[str, Any] = {
            "bootstrap.servers": config.brokers,
            "client.id": config.client_id,
            "compression.type": config.compression,
            "compression.level": config.compression_level,
            "linger.ms": config.linger_ms,
            "message.timeout.ms": int(config.delivery_timeout * 1000),
            "reconnect.backoff.max.ms": 1000,
            **extra,
            **FORCED,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
        log.info(
            "%s: producer to %s topic %s, settings %s", context.name, config.brokers, config.topic, shown
        )
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {
            "delivered": 0,
            "delivery_failed": 0,
            "queue_full_waits": 0,
            "producer_restarts": 0,
            "broker_errors": 0,
            "skipped_on_resend": 0,
        }
        self._need_restart = False
        # failed batches (digest of the payload) -> indexes of their messages that were delivered
        self._partials: collections.OrderedDict[bytes, set[int]] = collections.OrderedDict()
        # payloads made by ``encode`` and not delivered yet (id -> payload, its keys, its line ends)
        self._keys: collections.OrderedDict[int, tuple[bytes, list[bytes | None], Any]] = collections.OrderedDict()
        self.max_in_flight = config.batches_in_flight
        self._unsettled = 0  # batches started and not settled
        self._producer = Producer(self._settings)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _on_error(self, err: KafkaError) -> None:
        self._count("broker_errors")
        if err.fatal():
            self._need_restart = True
            log.error("%s: fatal producer error: %s", self.context.name, err.str())
        else:
            log.debug("%s: producer error: %s", self.context.name, err.str())

    def _restart(self) -> None:
        self._producer.poll(0)  # batches still in flight on the old producer keep it until they settle
        self._producer = Producer(self._settings)
        self._need_restart = False
        self._count("producer_restarts")

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """Messages produced without a batch's own callback (none are): failures are counted."""
        if err is not None:
            self._count("delivery_failed")

    # -- RecordSink ----------------------------------------------------------------
    def encode(self, batch: RecordBatch) -> bytes:
        """The batch's JSON lines (one message each); their keys are kept for ``start``."""
        field = self.config.key_field
        if field == "community_id":
            keys: list[bytes | None] = [k or None for k in batch.community_id.tolist()]
        else:
            keys = [None if v is None else str(v).encode() for v in batch.column(field)]
        self._keys[id(batch.data)] = (batch.data, keys, batch.ends)
        while len(self._keys) > 2 * self.max_in_flight + 8:  # payloads the runner spooled, not resent
            self._keys.popitem(last=False)
        return batch.data

    @staticmethod
    def _lines(payload: bytes) -> list[bytes]:
        """The records (JSON lines) of a payload, without newlines."""
        return [ln for ln in payload.split(b"\n") if ln]

    def _key(self, line: bytes) -> bytes | None:
        try:
            v = orjson.loads(line).get(self.config.key_field)
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return None if v is None else str(v).encode()

    def send(self, payload: bytes, count: int) -> None:
        pending = self.start(payload, count)
        assert isinstance(pending, _InFlight)
        while not pending.wait_for(1.0, hurry_after=0.0):
            pass

    def start(self, payload: bytes, count: int) -> Pending:
        if self._need_restart:
            self._restart()
        values: Iterable[bytes]
        known = self._keys.get(id(payload))
        if known is not None and known[0] is payload:
            # each record's slice made just before it is produced (librdkafka copies it), not a list
            # of them: allocated and freed in turn, cheaper than ``split``
            keys, ends = known[1], known[2]
            n = len(keys)
            starts = [0, *ends[:-1].tolist()]
            values = map(payload.__getitem__, map(slice, starts, (ends - 1).tolist()))
        else:  # a payload that ``encode`` did not make: read the key from each record
            lines = self._lines(payload)
            keys = [self._key(ln) for ln in lines]
            values, n = lines, len(lines)
        already: set[int] = set()
        digest = b""
        if self._partials:  # the resend of a failed batch?
            digest = hashlib.blake2b(payload, digest_size=16).digest()
            already = self._partials.pop(digest, set())
            if already:
                self._count("skipped_on_resend", len(already))
        producer = self._producer
        batch = _InFlight(self, producer, payload, n, already, digest)
        self._produce(batch, values, keys)
        produced = batch.produced
        # reports counted down during the loop (polls on a full queue) made ``left`` negative
        batch.left += produced - sum(1 for i in already if i < produced)
        self._unsettled += 1
        producer.poll(0)  # serve the delivery reports that are in
        return batch

    def _produce(self, batch: _InFlight, values: Iterable[bytes], keys: list[bytes | None]) -> None:
        """Hand every record of ``batch`` to the producer (those in ``batch.already`` skipped); on
        ``BufferError`` (librdkafka's queue full) serve delivery reports until there is room, up to
        ``queue_full_timeout``. Sets ``batch.produced`` (and ``gave_up`` with the reason)."""
        producer, topic, report, already = batch.producer, self.config.topic, batch.report, batch.already
        produce = producer.produce
        deadline = time.monotonic() + self.config.queue_full_timeout
        records = zip(itertools.count(), values, keys)
        i, value, key = -1, b"", None
        reason = ""
        while not reason:
            try:
                if already:
                    for i, value, key in records:
                        if i not in already:
                            produce(topic, value, key, -1, report)
                else:  # the loop every record takes: nothing in it but the call
                    for i, value, key in records:  # noqa: B007 - i tells the except clauses where it stopped
                        produce(topic, value, key, -1, report)
                batch.produced = batch.count
                return
            except BufferError:  # record i was not taken: it is once there is room, then the loop goes on
                reason = self._produce_when_room(producer, topic, value, key, report, deadline)
            except KafkaException as e:
                reason = e.args[0].name() if e.args else "produce"
        batch.produced = i  # records [0, i) were handed over
        batch.gave_up = True
        batch.errors[reason] = 1

    def _produce_when_room(
        self, producer: Producer, topic: str, value: bytes, key: bytes | None, report: Any, deadline: float
    ) -> str:
        """Serve delivery reports until librdkafka's queue takes the record: "" once it did, else why not."""
        while True:
            self._count("queue_full_waits")
            producer.poll(0.05)
            try:
                producer.produce(topic, value, key, -1, report)
                return ""
            except BufferError:
                if time.monotonic() > deadline:
                    return "local queue full"
            except KafkaException as e:
                return e.args[0].name() if e.args else "produce"

    def _settle(self, batch: _InFlight) -> SendError | None:
        """Every produced message of ``batch`` is reported: None if the whole batch is delivered,
        else the SendError to raise (and what was delivered is remembered for the resend)."""
        self._unsettled -= 1
        failed = len(batch.failed)
        self._count("delivered", batch.produced - len(batch.already) - failed)
        self._count("delivery_failed", failed)
        if not failed and not batch.gave_up:
            self._keys.pop(id(batch.payload), None)
            return None
        bad = set(batch.failed)
        lines = self._lines(batch.payload)
        done = {i for i in range(batch.produced) if i in batch.already or lines[i] not in bad}
        self._partials[batch.digest or hashlib.blake2b(batch.payload, digest_size=16).digest()] = done
        while len(self._partials) > PARTIALS_KEPT:
            self._partials.popitem(last=False)
        self._need_restart = True  # a fresh producer (new producer id) for the resend
        missing = batch.count - len(done)
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(batch.errors.items()))
        return SendError(
            f"Kafka: {missing} of {batch.count} records not delivered to {self.config.topic} ({detail})",
            retryable=True,
        )

    def health_check(self) -> Health:
        try:
            md = self._producer.list_topics(self.config.topic, timeout=5)
        except KafkaException as e:
            return Health(False, f"Kafka metadata request to {self.config.brokers} failed: {e}")
        t = md.topics.get(self.config.topic)
        if t is not None and t.error is None:
            return Health(True, f"{len(md.brokers)} broker(s); {self.config.topic}: {len(t.partitions)} partitions")
        err = t.error.str() if t is not None and t.error is not None else "unknown topic"
        return Health(True, f"{len(md.brokers)} broker(s); {self.config.topic}: {err}")

    def close(self) -> None:
        left = self._producer.flush(self.config.delivery_timeout)
        if left:
            log.error("%s: %d messages still undelivered at close", self.context.name, left)
