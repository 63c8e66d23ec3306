"""Splunk HTTP Event Collector record sink.

One batch is one POST to ``/services/collector/event``: the event envelopes
(``time``, ``host``, ``source``, ``sourcetype``, ``index``, ``event``, ``fields``)
one per line, gzip-compressed on the wire. Each envelope wraps the record's JSON line
as it came in the RecordBatch (not decoded and encoded again); ``time`` comes from the
batch's ``ts_start``/``ts_end`` column, the indexed fields from its columns (decoding the
records only for a field the batch has no column for). ``encode`` produces the uncompressed
lines (readable with any JSON tool; the runner spools and dead-letters the records themselves);
``send`` compresses, posts, reads Splunk's reply and, with ``ack = true``, polls
``/services/collector/ack`` until the batch is acknowledged or ``ack_timeout``
passes (then the batch is retryable and the runner resends it: at-least-once).

The token comes from ``token_file`` or ``VXMIRROR_HEC_TOKEN``; it is held in a
:class:`~forwarders.hec_auth.Secret` and never appears in logs, errors or counters.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import urllib3

from receiver.config.schema import ConfigError, opt
from receiver.flows.recordbatch import RecordBatch

from .api import Health, RecordSink, SendError, SinkContext
from .hec_auth import load_token
from .hec_reply import HecReply

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"


@dataclass
class SplunkHecConfig:
    url: str = opt("", "HEC base URL: scheme://host:port, e.g. https://splunk.example:8088")
    token_file: str | None = opt(None, "file holding the HEC token (else $VXMIRROR_HEC_TOKEN)")
    index: str | None = opt(None, "index to write to (default: the token's default index)")
    sourcetype: str = opt("vxmirror:flow", "sourcetype of the events")
    source: str = opt("vxmirror", "source of the events")
    host: str | None = opt(None, "host field (default: this machine's hostname)")
    time_field: Literal["ts_start", "ts_end"] = opt("ts_end", "record field used as the event time")
    indexed_fields: list[str] = opt(["vni"], "record fields also sent as indexed fields")
    verify_tls: bool = opt(True, "verify the server certificate (https)")
    ca_file: str | None = opt(None, "CA bundle for verifying the server certificate")
    ack: bool = opt(False, "wait for indexer acknowledgement of each batch")
    ack_timeout: float = opt(30.0, "seconds to wait for an acknowledgement before resending", min=0.1)
    ack_poll_interval: float = opt(0.5, "longest pause between acknowledgement polls (s)", min=0.01)
    gzip: bool = opt(True, "gzip request bodies")
    gzip_level: int = opt(1, "gzip compression level", min=1, max=9)
    timeout: float = opt(10.0, "read timeout per request (s)", min=0.05)
    connect_timeout: float = opt(5.0, "connect timeout (s)", min=0.05)
    channel: str | None = opt(None, "X-Splunk-Request-Channel (default: a new UUID per sink)")

    def validate(self) -> tuple[str, str] | None:
        if not self.url:
            return "url", "required key is missing (scheme://host:port)"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "url", f"expected http(s)://host:port, got {self.url!r}"
        if parts.path not in ("", "/") or parts.query:
            return "url", f"give scheme, host and port only (the sink adds the paths), got {self.url!r}"
        if self.channel is not None:
            try:
                uuid.UUID(self.channel)
            except ValueError:
                return "channel", f"expected a UUID, got {self.channel!r}"
        return None


EVENT_FAULT_CODES = frozenset({6, 12, 13})  # invalid data format, event field required, event field blank


class SplunkHecSink(RecordSink):
    kind = "splunk_hec"
    config_class = SplunkHecConfig

    @staticmethod
    def check_config(config: SplunkHecConfig) -> tuple[str, str] | None:
        """At config validation: the token must be readable (the message never contains it)."""
        if not config.url:
            return "url", "required: scheme://host:port of the HEC endpoint"
        try:
            load_token(config.token_file)
        except ValueError as e:
            return "token_file", str(e)
        return None

    def __init__(self, config: SplunkHecConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.config: SplunkHecConfig = config
        where = f"forwarders.{context.name}"
        try:
            self._token = load_token(config.token_file)
        except ValueError as e:
            raise ConfigError(context.extra.get("config_file"), f"{where}.token_file", str(e)) from None
        self.channel = config.channel or str(uuid.uuid4())
        self._host = config.host or socket.gethostname()
        base = config.url.rstrip("/")
        self._event_url = base + EVENT_PATH
        self._ack_url = f"{base}{ACK_PATH}?channel={self.channel}"
        self._health_url = base + HEALTH_PATH
        kw: dict[str, Any] = {
            "maxsize": 4,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(connect=config.connect_timeout, read=config.timeout),
        }
        if urlsplit(base).scheme == "https":
            kw["cert_reqs"] = "CERT_REQUIRED" if config.verify_tls else "CERT_NONE"
            if config.ca_file:
                kw["ca_certs"] = config.ca_file
            if not config.verify_tls:
                log.warning("%s: TLS certificate verification is off", context.name)
        self._pool = urllib3.PoolManager(num_pools=1, **kw)
        prefix = orjson.dumps(
            {
                "host": self._host,
                "source": config.source,
                "sourcetype": config.sourcetype,
                **({"index": config.index} if config.index else {}),
            }
        )[1:-1]
        self._head = b"{" + prefix + b',"time":'  # each envelope's start
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {
            "requests": 0,
            "bytes_sent": 0,
            "ack_polls": 0,
            "ack_timeouts": 0,
            "auth_failures": 0,
        }
        self._warned_no_ack = False
        self._started = False

    # -- headers (the token lives only here) ------------------------------------
    def _headers(self, *, gzipped: bool) -> dict[str, str]:
        h = {
            "Authorization": f"Splunk {self._token.reveal()}",
            "Content-Type": "application/json",
            "X-Splunk-Request-Channel": self.channel,
        }
        if gzipped:
            h["Content-Encoding"] = "gzip"
        return h

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    # -- RecordSink ----------------------------------------------------------------
    def encode(self, batch: RecordBatch) -> bytes:
        """The envelopes, one line each: ``{<host, source, sourcetype, index>,"time":<t>,
        "event":<the record's line>,"fields":{...}}`` (what orjson made of the same dict)."""
        n = len(batch)
        if not n:
            return b""
        times = orjson.dumps(getattr(batch, self.config.time_field).tolist())[1:-1].split(b",")
        parts = [self._head] * (5 * n)  # head, time, ',"event":', line, ',"fields":{...}}\n'
        parts[1::5] = times
        parts[2::5] = [b',"event":'] * n
        parts[3::5] = batch.lines()
        parts[4::5] = self._fields(batch)
        return b"".join(parts)

    def _fields(self, batch: RecordBatch) -> list[bytes]:
        """Each record's ``,"fields":{...}}`` and newline (the values as strings, absent ones left out)."""
        names = self.config.indexed_fields
        if not names:
            return [b',"fields":{}}\n'] * len(batch)

        def enc(values: tuple[Any, ...]) -> bytes:
            fields = {k: str(v) for k, v in zip(names, values) if v is not None}
            return b',"fields":' + orjson.dumps(fields) + b"}\n"

        cache: dict[tuple[Any, ...], bytes] = {}
        out: list[bytes] = []
        for values in zip(*(batch.column(k) for k in names)):
            try:
                f = cache[values]
            except KeyError:
                f = cache[values] = enc(values)
            except TypeError:  # an unhashable value (a table or list field)
                f = enc(values)
            out.append(f)
        return out

    def _post(self, url: str, body: bytes, *, gzipped: bool) -> HecReply:
        self._count("requests")
        try:
            resp = self._pool.request(
                "POST", url, body=body, headers=self._headers(gzipped=gzipped), preload_content=True
            )
        except urllib3.exceptions.SSLError as e:
            raise SendError(f"TLS error talking to {self.config.url}: {_clean(e)}", retryable=True) from None
        except urllib3.exceptions.HTTPError as e:
            raise SendError(
                f"transport error talking to {self.config.url}: {type(e).__name__}: {_clean(e)}",
                retryable=True,
            ) from None
        return HecReply.parse(resp.status, resp.data)

    def _fail(self, reply: HecReply, what: str, accepted: int = 0, rejected: int = 0) -> SendError:
        reason = f"Splunk HEC {what} failed: {reply.describe()}"
        if reply.auth_failure:
            self._count("auth_failures")
            return SendError(
                reason + " (check the HEC token; not retrying)", retryable=True, fatal_for_sink=True
            )
        return SendError(reason, retryable=reply.retryable, accepted=accepted, rejected=rejected)

    def _startup_check(self) -> None:
        """The health check at start, run once on the runner's thread (first tick or send)."""
        self._started = True
        h = self.health_check()
        if h.ok:
            log.info("%s: %s: %s", self.context.name, self.config.url, h.detail)
        else:
            log.error("%s: start-up health check of %s failed: %s", self.context.name, self.config.url, h.detail)
            if h.detail.startswith("HEC token rejected"):
                raise SendError(h.detail + " (check the HEC token; not retrying)", retryable=True,
                                fatal_for_sink=True)

    def tick(self, now: float) -> None:
        if not self._started:
            self._startup_check()

    def send(self, payload: bytes, count: int) -> None:
        if not self._started:
            self._startup_check()
        body = gzip.compress(payload, self.config.gzip_level, mtime=0) if self.config.gzip else payload
        reply = self._post(self._event_url, body, gzipped=self.config.gzip)
        self._count("bytes_sent", len(body))
        if not reply.ok:
            accepted = rejected = 0
            if reply.invalid_event_number is not None and not reply.retryable:
                # Splunk indexed the events before the first invalid one; that one is refused for
                # good, the ones after it were not looked at and are sent again.
                accepted = max(0, min(count, reply.invalid_event_number))
                # a fault of that one event (bad format, missing or blank event field): only it is
                # refused; a fault of the request (e.g. code 7, incorrect index) refuses the rest
                rejected = 1 if accepted < count and reply.code in EVENT_FAULT_CODES else 0
            raise self._fail(reply, "send", accepted, rejected)
        if self.config.ack:
            if reply.ack_id is None:
                if not self._warned_no_ack:
                    log.warning(
                        "%s: ack = true but Splunk returned no ackId: indexer acknowledgement is off "
                        "for this token; batches are not confirmed",
                        self.context.name,
                    )
                    self._warned_no_ack = True
                return
            self._wait_ack(reply.ack_id)

    def _wait_ack(self, ack_id: int) -> None:
        deadline = time.monotonic() + self.config.ack_timeout
        pause = min(0.01, self.config.ack_poll_interval)
        body = orjson.dumps({"acks": [ack_id]})
        while True:
            reply_status, acked = self._poll_ack(body, ack_id)
            if acked:
                return
            if time.monotonic() + pause > deadline:
                self._count("ack_timeouts")
                raise SendError(
                    f"Splunk HEC: no indexer acknowledgement for ackId {ack_id} within "
                    f"{self.config.ack_timeout:g}s (last poll: {reply_status}); resending",
                    retryable=True,
                )
            time.sleep(pause)
            pause = min(pause * 2, self.config.ack_poll_interval)

    def _poll_ack(self, body: bytes, ack_id: int) -> tuple[str, bool]:
        self._count("ack_polls")
        try:
            reply_raw = self._pool.request(
                "POST", self._ack_url, body=body, headers=self._headers(gzipped=False)
            )
        except urllib3.exceptions.HTTPError as e:
            return f"transport error {type(e).__name__}", False
        if reply_raw.status != 200:
            reply = HecReply.parse(reply_raw.status, reply_raw.data)
            if reply.auth_failure:
                raise self._fail(reply, "ack poll")
            return reply.describe(), False
        try:
            acks = orjson.loads(reply_raw.data)["acks"]
            return "HTTP 200", bool(acks.get(str(ack_id)))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return "HTTP 200 with an unreadable body", False

    def health_check(self) -> Health:
        """GET the health endpoint, then check the token with an empty POST (Splunk: 400 code 5)."""
        try:
            resp = self._pool.request("GET", self._health_url)
        except urllib3.exceptions.HTTPError as e:
            return Health(False, f"{self._health_url}: {type(e).__name__}: {_clean(e)}")
        health = HecReply.parse(resp.status, resp.data)
        if resp.status != 200:
            return Health(False, f"{self._health_url}: {health.describe()}")
        try:
            token_reply = self._post(self._event_url, b"", gzipped=False)
        except SendError as e:
            return Health(False, e.reason)
        if token_reply.auth_failure:
            self._count("auth_failures")
            return Health(False, f"HEC token rejected: {token_reply.describe()}")
        if token_reply.code not in (5, 0):
            return Health(False, f"unexpected reply to a token check: {token_reply.describe()}")
        return Health(True, f"{health.text or 'healthy'}; token accepted")

    def close(self) -> None:
        self._pool.clear()


def _clean(e: BaseException) -> str:
    """An exception message without urllib3's object reprs (addresses, pool ids)."""
    reason = getattr(e, "reason", None)
    text = str(reason if reason is not None else e)
    return text.split("object at 0x")[0].rstrip(": <") if "object at 0x" in text else text
