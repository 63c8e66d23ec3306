"""An in-repo Splunk HTTP Event Collector for the tests, with fault injection.

It follows Splunk's documented HEC protocol rather than the vxmirror client:

- ``POST /services/collector/event`` and ``/services/collector/event/1.0``: a body of
  concatenated JSON event envelopes (whitespace between them allowed), optionally
  ``Content-Encoding: gzip``; replies ``{"text":"Success","code":0}`` (plus ``ackId``
  when the token has indexer acknowledgement on).
- ``POST /services/collector/ack``: ``{"acks":[ids]}`` -> ``{"acks":{"id":bool}}``
  (an acknowledged id is forgotten once reported true, as Splunk does).
- ``GET /services/collector/health``: 200 code 17, or 503 code 18 while "busy".
- Auth: ``Authorization: Splunk <token>``; missing header 401 code 2, malformed 401
  code 3, unknown token 403 code 4, disabled token 403 code 1.
- 400 codes: 5 no data, 6 invalid data format (with ``invalid-event-number``),
  7 incorrect index, 10 channel missing, 11 invalid channel, 12 event field required,
  13 event field blank, 14 ack disabled. 500 code 8, 503 code 9.

Splunk indexes the events before an invalid one in a batch and reports the
position of the first invalid one (``invalid-event-number``); so does this server.

Faults (see :class:`Faults`): 503 bursts, an outage (503 or connection refused),
slow responses, dropped connections (before or after indexing), acks withheld.

Every event is parsed and kept (``indexed()``): ~70 k events/s.
A benchmark that only needs the count makes the server with ``keep_events=False``: a body
framed as one ``{...}`` envelope per line (what the vxmirror sink sends) is then counted
without parsing it (``event_count``; the JSON inside is not checked) whenever no fault is
set and the token has no index restriction; any other body is parsed as usual, with the
same replies. The server is threaded (one thread per connection); its replies go out
without Nagle's delay (``TCP_NODELAY``: the head and the body of a reply are two writes, and
each request used to wait ~40 ms for the client's delayed ACK, which capped the server at
~10 k events/s whatever it did with them). ``main()`` runs it in a process of its own.

A minimal emulation of splunkd's management REST API for ``vxmirror splunk check``
lives in the same server (``/services/auth/login``, ``/services/server/info`` and
one-shot searches of the shape ``search index=I sourcetype=S | stats count``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import socket
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

EVENT_PATHS = ("/services/collector/event", "/services/collector/event/1.0", "/services/collector")
ACK_PATH = "/services/collector/ack"
HEALTH_PATHS = ("/services/collector/health", "/services/collector/health/1.0")

CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
}


@dataclass
class Token:
    value: str
    enabled: bool = True
    ack: bool = False
    indexes: set[str] | None = None  # allowed indexes (None: any)
    default_index: str = "main"


@dataclass
class Faults:
    """Fault injection switches (mutate under ``server.lock`` or between requests)."""

    busy: int = 0  # answer the next N event requests with 503 code 9
    busy_until: float = 0.0  # answer event requests with 503 code 9 until this time
    slow: float = 0.0  # sleep this long before answering each event request
    drop: int = 0  # close the next N event connections without a reply, nothing indexed
    drop_after_index: int = 0  # index, then close without a reply (the client resends)
    withhold_acks: bool = False  # acks stay false while set
    ack_delay: float = 0.0  # an ack becomes true this long after the batch was indexed
    status_code: tuple[int, int] | None = None  # answer every event request with (status, code)


_NO_FAULTS = Faults()


@dataclass
class _Channel:
    next_id: int = 0
    pending: dict[int, float] = field(default_factory=dict)  # ack id -> time it becomes true


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the reply's head and body are two writes: no 40 ms delayed-ACK wait
    server: HecServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # -- plumbing --------------------------------------------------------------
    def _reply(self, status: int, body: dict[str, Any] | bytes, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if not urlsplit(self.path).path.startswith("/services/collector"):
            # splunkd's management port: the SDK's client expects one request per connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.count(f"status:{status}")

    def _code(self, code: int, **extra: Any) -> None:
        status, text = CODES[code]
        self._reply(status, {"text": text, "code": code, **extra})
        self.server.count(f"code:{code}")

    def _body(self) -> bytes | None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if (self.headers.get("Content-Encoding") or "").lower() == "gzip" and raw:
            self.server.count("gzip_bodies")
            try:
                return gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return None
        return raw

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _auth(self) -> Token | None:
        header = self.headers.get("Authorization")
        if header is None:
            self._code(2)
            return None
        scheme, _, value = header.partition(" ")
        if scheme != "Splunk" or not value.strip():
            self._code(3)
            return None
        token = self.server.tokens.get(value.strip())
        if token is None:
            self._code(4)
            return None
        if not token.enabled:
            self._code(1)
            return None
        return token

    def _channel(self, token: Token, query: dict[str, list[str]]) -> tuple[bool, str | None]:
        ch = self.headers.get("X-Splunk-Request-Channel") or (query.get("channel") or [None])[0]
        if ch is None:
            if token.ack:
                self._code(10)
                return False, None
            return True, None
        try:
            uuid.UUID(ch)
        except ValueError:
            self._code(11)
            return False, None
        return True, ch

    # -- endpoints --------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.count(f"GET {path}")
        if path in HEALTH_PATHS:
            if self.server.is_busy(consume=False):
                self._code(18)
            else:
                self._code(17)
            return
        if path == "/services/server/info":
            self._mgmt_server_info()
            return
        self._reply(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.server.count(f"POST {path}")
        if path in EVENT_PATHS:
            self._event(query)
        elif path == ACK_PATH:
            self._ack(query)
        elif path == "/services/auth/login":
            self._mgmt_login()
        elif re.fullmatch(r"/services(NS/[^/]+/[^/]+)?/search/(v2/)?jobs(/export)?/?", path):
            self._mgmt_search()
        else:
            self._body()
            self._reply(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def _event(self, query: dict[str, list[str]]) -> None:
        srv = self.server
        faults = srv.faults
        if faults.drop > 0:
            with srv.lock:
                faults.drop -= 1
            self._drop()
            srv.count("dropped")
            return
        body = self._body()
        if faults.slow:
            time.sleep(faults.slow)
        token = self._auth()
        if token is None:
            return
        if faults.status_code is not None:
            status, code = faults.status_code
            self._reply(status, {"text": CODES.get(code, (status, "error"))[1], "code": code})
            return
        if srv.is_busy(consume=True):
            self._code(9)
            return
        ok, channel = self._channel(token, query)
        if not ok:
            return
        if body is None:
            self._code(6, **{"invalid-event-number": 0})
            return
        if not body.strip():
            self._code(5)
            return
        counted = srv.countable(body, token)
        events, error = ([], None) if counted else self._parse(body, token, query)
        drop_after = False
        with srv.lock:
            srv.event_count += counted or len(events)
            srv.events.extend(events)
            ack_id = None
            if token.ack and channel is not None and (events or counted) and error is None:
                ch = srv.channels.setdefault(channel, _Channel())
                ack_id = ch.next_id
                ch.next_id += 1
                ch.pending[ack_id] = time.time() + faults.ack_delay
            if faults.drop_after_index > 0 and error is None:
                faults.drop_after_index -= 1
                drop_after = True
        if drop_after:
            self._drop()
            srv.count("dropped_after_index")
            return
        if error is not None:
            code, number = error
            self._code(code, **{"invalid-event-number": number})
            return
        if ack_id is not None:
            self._code(0, ackId=ack_id)
        else:
            self._code(0)

    def _parse(
        self, body: bytes, token: Token, query: dict[str, list[str]]
    ) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        """Events before the first invalid one, and (code, invalid-event-number)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return [], (6, 0)
        decoder = json.JSONDecoder()
        pos, n = 0, 0
        out: list[dict[str, Any]] = []
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos >= len(text):
                return out, None
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                return out, (6, n)
            if not isinstance(obj, dict):
                return out, (6, n)
            if "event" not in obj:
                return out, (12, n)
            if obj["event"] in ("", None):
                return out, (13, n)
            index = obj.get("index") or (query.get("index") or [None])[0] or token.default_index
            if token.indexes is not None and index not in token.indexes:
                return out, (7, n)
            fields = obj.get("fields", {})
            if not isinstance(fields, dict) or any(isinstance(v, dict) for v in fields.values()):
                return out, (6, n)
            obj["index"] = index
            obj.setdefault("time", time.time())
            obj["_indextime"] = time.time()
            out.append(obj)
            n += 1

    def _ack(self, query: dict[str, list[str]]) -> None:
        srv = self.server
        body = self._body()
        token = self._auth()
        if token is None:
            return
        if not token.ack:
            self._code(14)
            return
        ok, channel = self._channel(token, query)
        if not ok:
            return
        if channel is None:
            self._code(10)
            return
        try:
            ids = json.loads(body or b"")["acks"]
            assert isinstance(ids, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            self._code(6)
            return
        result: dict[str, bool] = {}
        with srv.lock:
            srv.ack_polls += 1
            ch = srv.channels.get(channel)
            if ch is None:
                self._code(11)
                return
            for i in ids:
                if not isinstance(i, int):
                    continue
                ready = ch.pending.get(i)
                done = ready is not None and ready <= time.time() and not srv.faults.withhold_acks
                result[str(i)] = done
                if done:
                    del ch.pending[i]
        self._reply(200, {"acks": result})

    # -- a sliver of splunkd's management API, for `vxmirror splunk check` -------
    def _mgmt_authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if (scheme == "Bearer" and value in self.server.mgmt_tokens) or (
            scheme == "Splunk" and value in self.server.sessions
        ):
            return True
        self._reply(401, b"<response><messages><msg type=\"WARN\">call not properly authenticated"
                    b"</msg></messages></response>", "text/xml")
        return False

    def _mgmt_server_info(self) -> None:
        if not self._mgmt_authorized():
            return
        self._reply(
            200,
            b'<feed xmlns="http://www.w3.org/2005/Atom" xmlns:s="http://dev.splunk.com/ns/rest">'
            b'<entry><title>server-info</title><content type="text/xml"><s:dict>'
            b'<s:key name="version">9.2.0</s:key><s:key name="instance_type">download</s:key>'
            b"</s:dict></content></entry></feed>",
            "text/xml",
        )

    def _mgmt_login(self) -> None:
        form = parse_qs((self._body() or b"").decode())
        user = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        if self.server.users.get(user) != password or not user:
            self._reply(401, b"<response><messages><msg type=\"WARN\">Login failed</msg></messages>"
                        b"</response>", "text/xml")
            return
        key = uuid.uuid4().hex
        self.server.sessions.add(key)
        self._reply(200, f"<response><sessionKey>{key}</sessionKey></response>".encode(), "text/xml")

    def _mgmt_search(self) -> None:
        form = parse_qs((self._body() or b"").decode())
        if not self._mgmt_authorized():
            return
        q = (form.get("search") or [""])[0]
        m = re.fullmatch(r"\s*search\s+(?P<terms>.*?)\|\s*stats\s+count\s*", q)
        if m is None or (form.get("exec_mode") or ["oneshot"])[0] != "oneshot":
            self._reply(400, {"messages": [{"type": "FATAL", "text": f"unsupported search: {q}"}]})
            return
        terms = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|(\S+))', m.group("terms"))}
        earliest = _splunk_time((form.get("earliest_time") or ["0"])[0], 0.0)
        latest = _splunk_time((form.get("latest_time") or [""])[0], float("inf"))
        with self.server.lock:
            n = sum(
                1
                for ev in self.server.events
                if all(v == "*" or str(ev.get(k)) == v for k, v in terms.items())
                and earliest <= float(ev["time"]) < latest
            )
        self._reply(200, {"preview": False, "results": [{"count": str(n)}], "fields": [{"name": "count"}]})
        self.server.searches.append(q)


def _splunk_time(value: str, default: float) -> float:
    """Epoch seconds, "now", or a relative "-<n><s|m|h|d>" (no snapping)."""
    if not value:
        return default
    if value == "now":
        return time.time()
    m = re.fullmatch(r"-(\d+)([smhd])", value)
    if m:
        return time.time() - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(value)


class HecServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, port: int = 0, tokens: list[Token] | None = None, *, keep_events: bool = True) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.tokens: dict[str, Token] = {t.value: t for t in tokens or []}
        self.keep_events = keep_events
        self.events: list[dict[str, Any]] = []
        self.event_count = 0  # events indexed (kept or only counted)
        self.channels: dict[str, _Channel] = {}
        self.faults = Faults()
        self.counts: Counter[str] = Counter()
        self.ack_polls = 0
        # management API emulation
        self.users: dict[str, str] = {}
        self.mgmt_tokens: set[str] = set()
        self.sessions: set[str] = set()
        self.searches: list[str] = []
        self.conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.count("handler_errors")  # e.g. the client gave up (read timeout) before the reply

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def countable(self, body: bytes, token: Token) -> int:
        """How many events ``body`` holds if it may be counted without parsing it (``keep_events``
        off, no fault set, no index restriction, and framed as one ``{...}`` per line), else 0.
        Only the framing is checked, not the JSON inside."""
        if self.keep_events or self.faults != _NO_FAULTS or token.indexes is not None:
            return 0
        a = np.frombuffer(body, np.uint8)
        ends = np.flatnonzero(a == 0x0A)  # "\n"
        if not len(ends) or ends[-1] != len(a) - 1 or a[0] != 0x7B:  # one "{" ... "}\n" a line
            return 0
        if not (a[ends - 1] == 0x7D).all() or not (a[ends[:-1] + 1] == 0x7B).all():
            return 0
        return len(ends)

    def is_busy(self, consume: bool) -> bool:
        with self.lock:
            if self.faults.busy_until > time.time():
                return True
            if self.faults.busy > 0:
                if consume:
                    self.faults.busy -= 1
                return True
        return False

    def event_requests(self) -> int:
        with self.lock:
            return sum(v for k, v in self.counts.items() if k.startswith("POST /services/collector/event"))

    def indexed(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def start(self) -> HecServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection."""
        self.shutdown()
        self.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)


class Outage:
    """Take a server's port down (connection refused) and bring a new server up on it.

    State (tokens, events, channels, faults) moves to the new server so the
    test sees one continuous index.
    """

    def __init__(self, server: HecServer) -> None:
        self.server = server
        self.port = server.port

    def begin(self) -> None:
        self.server.stop()

    def end(self) -> HecServer:
        old = self.server
        deadline = time.time() + 10
        while True:
            try:
                new = HecServer(self.port)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        for name in ("tokens", "events", "event_count", "keep_events", "channels", "faults", "counts", "users",
                     "mgmt_tokens"):
            setattr(new, name, getattr(old, name))
        new.lock = old.lock
        self.server = new
        return new.start()


class Blackhole:
    """A loopback TCP socket that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def main(argv: list[str] | None = None) -> None:
    """Run a server in a process of its own (benchmarks: client and server then do not share a
    GIL). Prints its URL on the first line of stdout; on SIGTERM or SIGINT it stops and prints
    ``{"events": n, "event_requests": m}``.

        python tests/hec_server.py --token T [--ack] [--keep-events] [--port N]
    """
    import argparse
    import signal
    import sys

    ap = argparse.ArgumentParser(description="in-repo Splunk HEC test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", required=True)
    ap.add_argument("--ack", action="store_true", help="indexer acknowledgement on for the token")
    ap.add_argument("--keep-events", action="store_true", help="parse and keep every event")
    a = ap.parse_args(argv)
    srv = HecServer(a.port, [Token(a.token, ack=a.ack)], keep_events=a.keep_events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv.start()
    print(srv.url, flush=True)
    while not stop.wait(0.5):
        pass
    srv.stop()
    print(json.dumps({"events": srv.event_count, "event_requests": srv.event_requests()}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
