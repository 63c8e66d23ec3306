"""Kafka record sink (confluent-kafka / librdkafka), e.g. for Amazon MSK.

Each record is one message: key = the record's ``community_id`` (both directions
and the interim records of one flow land in one partition), value = the record's
JSON line as it came in the RecordBatch (no decoding: the payload is the batch's
bytes and the keys come from its ``community_id`` column). The producer runs with
``acks=all``, ``enable.idempotence=true`` and zstd compression; TLS/SASL and any
other librdkafka setting pass through from the ``[forwarders.kafka.librdkafka]``
table, where a secret can be given as ``{ file = "/path" }`` or ``{ env = "NAME" }``
instead of a literal (and is never logged).

``send`` is synchronous per batch: it produces every message (on ``BufferError``,
librdkafka's local queue being full, it serves delivery reports with ``poll`` and
tries again: back-pressure stays in the sink's own thread), then waits until every
message of the batch is delivered or failed (``flush``; only failures are reported
to Python, ``delivery.report.only.error``). The batch succeeds when all are
delivered; otherwise it raises a retryable ``SendError`` and the runner retries or
spools it. Messages of a failed batch that *were* delivered are remembered, so the
resend of the same batch skips them (no duplicates from partial failures). After a
failed batch the producer is recreated before the next send: an idempotent producer whose broker lost
its state (a restarted broker) is otherwise stuck on UNKNOWN_PRODUCER_ID.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from receiver.config.schema import ConfigError, opt
from receiver.flows.recordbatch import RecordBatch

from .api import Health, RecordSink, SendError, SinkContext
from .hec_auth import read_secret_file

log = logging.getLogger(__name__)

FORCED = {"acks": "all", "enable.idempotence": True}
SECRET_HINTS = ("password", "secret", "key.pem", "ssl.key", "token", "jaas")


def is_secret_key(name: str) -> bool:
    return any(h in name.lower() for h in SECRET_HINTS)


@dataclass
class KafkaConfig:
    brokers: str = opt("", "bootstrap brokers, comma-separated host:port")
    topic: str = opt("vxmirror-flows", "topic the records are written to")
    key_field: str = opt("community_id", "record field used as the message key")
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = opt("zstd", "compression codec")
    linger_ms: int = opt(20, "librdkafka linger.ms", min=0, max=60000)
    delivery_timeout: float = opt(
        30.0, "seconds librdkafka keeps trying to deliver a message (message.timeout.ms)", min=0.5
    )
    queue_full_timeout: float = opt(
        30.0, "seconds send waits on a full local producer queue before giving up", min=0.1
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
            if k in FORCED or k in ("bootstrap.servers", "compression.type", "message.timeout.ms"):
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


class _Failures:
    """Delivery reports of failed messages (the producer reports only those) during one send."""

    __slots__ = ("errors", "values")

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.errors: dict[str, int] = {}

    def report(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:  # a success (if delivery.report.only.error was turned off)
            return
        self.values.append(msg.value())
        name = err.name()
        self.errors[name] = self.errors.get(name, 0) + 1


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
            "linger.ms": config.linger_ms,
            "message.timeout.ms": int(config.delivery_timeout * 1000),
            "reconnect.backoff.max.ms": 1000,
            "delivery.report.only.error": True,
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
        self._partial: tuple[bytes, set[int]] | None = None
        self._failures = _Failures()
        self._keys: tuple[bytes, list[bytes | None]] | None = None  # (payload, its keys) from encode
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
        old = self._producer
        old.flush(0)
        self._producer = Producer(self._settings)
        self._need_restart = False
        self._count("producer_restarts")

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        self._failures.report(err, msg)

    # -- RecordSink ----------------------------------------------------------------
    def encode(self, batch: RecordBatch) -> bytes:
        """The batch's JSON lines (one message each); their keys are kept for ``send``."""
        field = self.config.key_field
        if field == "community_id":
            keys: list[bytes | None] = [k or None for k in batch.community_id.tolist()]
        else:
            keys = [None if v is None else str(v).encode() for v in batch.column(field)]
        self._keys = (batch.data, keys)
        return batch.data

    def _key(self, line: bytes) -> bytes | None:
        try:
            v = orjson.loads(line).get(self.config.key_field)
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return None if v is None else str(v).encode()

    def send(self, payload: bytes, count: int) -> None:
        if self._need_restart:
            self._restart()
        lines = payload[:-1].split(b"\n") if payload.endswith(b"\n") else payload.split(b"\n")
        if self._keys is not None and self._keys[0] is payload:
            keys = self._keys[1]
        else:  # a payload that ``encode`` did not make: read the key from each record
            lines = [ln for ln in lines if ln]
            keys = [self._key(ln) for ln in lines]
        already: set[int] = set()
        digest = b""
        if self._partial is not None:  # the resend of a failed batch?
            digest = hashlib.blake2b(payload, digest_size=16).digest()
            if self._partial[0] == digest:
                already = self._partial[1]
                self._count("skipped_on_resend", len(already))
        failures = self._failures = _Failures()
        producer, topic = self._producer, self.config.topic
        deadline = time.monotonic() + self.config.queue_full_timeout
        produce = producer.produce
        produced = 0  # lines[:produced] were handed to the producer (those in ``already`` skipped)
        gave_up = False
        for i, (line, key) in enumerate(zip(lines, keys)):
            if i in already:
                produced += 1
                continue
            while True:
                try:
                    produce(topic, line, key)
                    break
                except BufferError:
                    self._count("queue_full_waits")
                    producer.poll(0.05)
                    if time.monotonic() > deadline:
                        gave_up = True
                        break
                except KafkaException as e:
                    gave_up = True
                    failures.errors[e.args[0].name() if e.args else "produce"] = 1
                    break
            if gave_up:
                break
            produced += 1
        # every produced message is delivered or reported failed within message.timeout.ms
        left = producer.flush(self.config.delivery_timeout + 5.0)
        failed = len(failures.values)
        self._count("delivered", produced - len(already) - failed - left)
        self._count("delivery_failed", failed)
        if not failed and not left and not gave_up:
            self._partial = None
            return
        bad = set(failures.values)
        done = set(already) if left else {i for i in range(produced) if i in already or lines[i] not in bad}
        self._partial = (digest or hashlib.blake2b(payload, digest_size=16).digest(), done)
        self._need_restart = True  # a fresh producer (new producer id) for the resend
        missing = len(lines) - len(done)
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(failures.errors.items())) or "local queue full"
        raise SendError(
            f"Kafka: {missing} of {len(lines)} records not delivered to {topic} ({detail})", retryable=True
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
