"""Per-flow application metadata: which protocol a flow speaks, and what it said.

The engine creates an :class:`AppState` lazily for a flow and calls :meth:`AppState.feed`
with the payload of each of the flow's first payload packets (and of later packets that
look like an HTTP message or are DNS, and of the segments that continue a message head it
gathers, :meth:`AppState.gathering`), in arrival order, one packet per call; it leaves out the
segments :meth:`AppState.ignores` says would be ignored (HTTP body). Detection is
by content for HTTP and TLS (HTTP on port 22 or 27272 is still HTTP) and by port for DNS
(53, 5353 mDNS, 5355 LLMNR, 137 NetBIOS-NS; on TCP with the 2-byte length prefix).

TLS hellos may span segments (a post-quantum key share makes a ClientHello ~1.8 KB): the
first segments of a direction that starts with a TLS handshake record are concatenated
here (up to ``tls_buffer`` bytes) until the hello parses completely.
"""

from __future__ import annotations

from typing import Any

from . import dns, http, tls

DNS_UDP_PORTS = frozenset((53, 5353, 5355, 137))
DNS_TCP_PORTS = frozenset((53, 5353, 5355))
TCP, UDP = 6, 17
UNKNOWN_GIVE_UP = 4  # payload packets with nothing recognised before giving up on a flow
HEAD_SEGMENTS = 8  # segments gathered for one message head
_PROBE_LEN = 8  # shorter starts that could begin "GET " or "HTTP/" wait for more bytes
_TLS, _HTTP, _PROBE = 1, 2, 3
# First payload bytes for which ``worth_parsing`` can hold on TCP away from the DNS ports: a TLS
# handshake record, or the first letter of an HTTP method or of "HTTP/". Lets a caller screen
# packets in bulk (a superset test) before building a bytes object for each.
START_BYTES = frozenset({0x16, ord("H")} | {m[0] for m in http.METHODS})


def _dns_tcp(sport: int, dport: int) -> bool:
    return sport in DNS_TCP_PORTS or dport in DNS_TCP_PORTS


def worth_parsing(payload: bytes, ip_proto: int, sport: int, dport: int) -> bool:
    """Whether a payload could start something :class:`AppState` understands (DNS by port, TLS
    and HTTP by content). Cheap: the engine creates an AppState for a flow only when this holds,
    so a flow of opaque payload costs no parser."""
    if ip_proto == UDP:
        return sport in DNS_UDP_PORTS or dport in DNS_UDP_PORTS
    if ip_proto != TCP or not payload:
        return False
    if _dns_tcp(sport, dport):
        return True
    if payload[0] == 0x16:
        return tls.looks_like_tls_handshake(payload)
    return http.looks_like_http(payload) or (len(payload) < _PROBE_LEN and http.could_start_http(payload))


class AppState:
    """What one flow's payload revealed. ``to_record()`` is the FlowRecord's ``app`` object."""

    __slots__ = (
        "_buf",
        "_dns_pending",
        "_gave_up",
        "_http_pending",
        "_kind",
        "_last",
        "_mode",
        "_seen",
        "_segs",
        "_tls_done",
        "dns",
        "http",
        "max_items",
        "tls",
        "tls_buffer",
    )

    def __init__(self, max_items: int = 8, tls_buffer: int = 16384) -> None:
        self.max_items = max_items
        self.tls_buffer = tls_buffer
        self.http: list[dict[str, Any]] = []
        self.dns: list[dict[str, Any]] = []
        self.tls: dict[str, Any] = {}
        # plain lists, not deques: a deque costs 760 bytes even when empty, and one AppState
        # lives per flow with payload until the flow ends
        self._http_pending: list[dict[str, Any]] = []
        self._dns_pending: dict[int, list[dict[str, Any]]] = {}
        self._kind: str | None = None  # "http", "dns", "tls"
        self._seen = [0, 0]  # payload packets fed per direction
        # hash of the last payload per direction (retransmits), not the payload: a flow's parser
        # lives until the flow ends, and two 1.4 KB copies per flow would dominate its memory
        self._last: list[int | None] = [None, None]
        self._buf: list[bytearray | None] = [None, None]  # a message head being gathered
        self._mode = [0, 0]  # what _buf holds: _TLS, _HTTP or _PROBE
        self._segs = [0, 0]  # segments in _buf
        self._tls_done = [False, False]  # ClientHello / ServerHello parsed (or given up)
        self._gave_up = False

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, direction: int, payload: bytes, ip_proto: int, sport: int, dport: int) -> None:
        """Take one packet's payload (direction 0: originator to responder)."""
        if not payload or self._gave_up:
            return
        d = direction & 1
        if ip_proto == TCP and payload[0] not in START_BYTES and self.ignores(d) and not _dns_tcp(sport, dport):
            return  # HTTP body (the engine does not even copy these)
        self._seen[d] += 1
        if ip_proto == UDP:
            if sport in DNS_UDP_PORTS or dport in DNS_UDP_PORTS:
                self._feed_dns(dns.parse(payload, netbios=sport == 137 or dport == 137))
            else:
                self._nothing()
            return
        if ip_proto != TCP:
            self._gave_up = True
            return
        digest = hash(payload)
        if digest == self._last[d]:  # a TCP retransmission adds nothing
            self._seen[d] -= 1
            return
        self._last[d] = digest
        buf = self._buf[d]
        if buf is not None:  # continuing a message that started in an earlier segment
            buf += payload
            self._segs[d] += 1
            mode = self._mode[d]
            if mode == _TLS:
                self._feed_tls(d, buf)
            elif mode == _HTTP:
                self._http_progress(d, buf)
            else:
                self._buf[d] = None
                self._detect(d, bytes(buf), sport, dport)
            return
        if _dns_tcp(sport, dport):
            msg = dns.parse(payload, tcp=True)
            if msg is not None and msg["query"] is not None:
                self._feed_dns(msg)
                return
        self._detect(d, payload, sport, dport)

    def _detect(self, d: int, data: bytes, sport: int, dport: int) -> None:
        """Start of a TCP message in direction ``d``: TLS, HTTP, the first bytes of one, or neither."""
        first = data[0]
        if first not in START_BYTES:  # neither TLS nor the start of an HTTP message (the common case)
            if self._kind == "tls":
                self._tls_done[d] = True
            self._nothing()
            return
        # a message that is complete in this segment (the common case) is parsed without a buffer
        if first == 0x16 and self._seen[d] <= 2 and tls.looks_like_tls_handshake(data):
            self._kind = self._kind or "tls"
            self._mode[d], self._segs[d] = _TLS, 1
            if self._tls_hello(bytes(data), len(data)):
                self._tls_done[d] = True
            else:
                self._buf[d] = bytearray(data)
            return
        if http.looks_like_http(data):
            self._mode[d], self._segs[d] = _HTTP, 1
            if self._http_head_done(data, 1):
                if data[:5] == b"HTTP/":
                    self._flush_http(1 - d)  # a request still being gathered comes first
                self._feed_http(bytes(data))
            else:
                self._buf[d] = bytearray(data)
            return
        if len(data) < _PROBE_LEN and self._segs_probe_ok(d) and http.could_start_http(data):
            self._start(d, _PROBE, data)  # e.g. "G" then "ET / HTTP/1.0" in the next segment
            return
        if self._kind == "tls":
            self._tls_done[d] = True  # this side sent something other than a hello first: none will come
        self._nothing()

    def _segs_probe_ok(self, d: int) -> bool:
        return self._seen[d] <= HEAD_SEGMENTS

    def _start(self, d: int, mode: int, data: bytes) -> None:
        self._buf[d] = bytearray(data)
        self._mode[d] = mode
        self._segs[d] = 1

    @staticmethod
    def _http_head_done(buf: bytes | bytearray, segs: int) -> bool:
        """Whether a message head gathered from ``segs`` segments is to be parsed now: complete
        (a status line, or a request's headers), or too long, or from too many segments."""
        if buf[:5] == b"HTTP/":
            done = b"\n" in buf
        else:
            done = b"\r\n\r\n" in buf or b"\n\n" in buf
        return done or len(buf) >= http.MAX_HEAD or segs >= HEAD_SEGMENTS

    def _http_progress(self, d: int, buf: bytearray) -> None:
        """An HTTP message head is being gathered: parse it once complete (or too long)."""
        if self._http_head_done(buf, self._segs[d]):
            self._buf[d] = None
            if buf[:5] == b"HTTP/":
                self._flush_http(1 - d)  # a request still being gathered comes first
            self._feed_http(bytes(buf))

    def _flush_http(self, d: int) -> None:
        buf = self._buf[d]
        if buf is not None and self._mode[d] == _HTTP:
            self._buf[d] = None
            self._feed_http(bytes(buf))

    def _nothing(self) -> None:
        if self._kind is None and sum(self._seen) >= UNKNOWN_GIVE_UP:
            self._gave_up = True

    def _feed_http(self, payload: bytes) -> None:
        if payload[:5] == b"HTTP/":
            resp = http.parse_response(payload)
            if resp is None:
                return
            self._kind = "http"
            status = resp["status"]
            if 100 <= status < 200 and status != 101:
                return  # interim response: the final one follows
            if self._http_pending:
                item = self._http_pending.pop(0)
            elif len(self.http) < self.max_items:
                item = {"method": None, "host": None, "uri": None, "user_agent": None, "version": None}
                self.http.append(item)
            else:
                return
            item["status"] = status
            item["reason"] = resp["reason"]
            return
        req = http.parse_request(payload)
        if req is None:
            return
        self._kind = "http"
        if len(self.http) < self.max_items:
            req["status"] = None
            req["reason"] = None
            self.http.append(req)
            self._http_pending.append(req)

    def _feed_dns(self, msg: dict[str, Any] | None) -> None:
        if msg is None:
            self._nothing()
            return
        self._kind = "dns"
        tid = msg["id"]
        if msg["qr"]:
            pending = self._dns_pending.get(tid)
            if pending:
                item = pending.pop(0)
                if not item["query"]:
                    item["query"], item["qtype"] = msg["query"], msg["qtype"]
            elif len(self.dns) < self.max_items:
                item = {"query": msg["query"], "qtype": msg["qtype"]}
                self.dns.append(item)
            else:
                return
            item["rcode"] = msg["rcode"]
            item["answers"] = msg["answers"]
            item["ttls"] = msg["ttls"]
            return
        if len(self.dns) < self.max_items:
            item = {"query": msg["query"], "qtype": msg["qtype"], "rcode": None, "answers": [], "ttls": []}
            self.dns.append(item)
            self._dns_pending.setdefault(tid, []).append(item)

    def _feed_tls(self, d: int, buf: bytearray) -> None:
        if self._tls_hello(bytes(buf), len(buf)):
            self._buf[d] = None
            self._tls_done[d] = True

    def _tls_hello(self, data: bytes, size: int) -> bool:
        """Take what a hello at the start of ``data`` says; True when this direction is finished
        (no hello, a complete one, or ``size`` bytes gathered reach ``tls_buffer``)."""
        parsed = tls.parse_hello(data)
        hello = None
        if parsed is not None:
            kind, hello = parsed
            if kind == 1:  # ClientHello
                self.tls["sni"] = hello["sni"]
                self.tls["version"] = hello["version"]
                self.tls["alpn"] = hello["alpn"]
            else:  # ServerHello
                self.tls["server_version"] = hello["version"]
                self.tls["cipher"] = hello["cipher"]
                if hello["alpn"] is not None:
                    self.tls["alpn_selected"] = hello["alpn"]
        return hello is None or bool(hello["complete"]) or size >= self.tls_buffer

    def gathering(self, d: int) -> bool:
        """Whether direction ``d`` (0: originator to responder) has a message head open, waiting
        for its next segments (the engine shows them even past the direction's first packets)."""
        return self._buf[d & 1] is not None

    def ignores(self, d: int) -> bool:
        """Whether direction ``d`` (0: originator to responder) ignores a TCP payload whose first
        byte is not in START_BYTES (away from the DNS ports): an HTTP flow with no message head
        being gathered there, where such a segment is body. The engine skips those packets
        without copying them (they still count among the direction's first packets)."""
        return self._kind == "http" and self._buf[d] is None

    # -- results ---------------------------------------------------------------------------

    @property
    def wants_more(self) -> bool:
        """False once nothing more can be learned from this flow's payload."""
        if self._gave_up:
            return False
        if self._buf[0] is not None or self._buf[1] is not None:
            return True
        if self._kind == "tls":
            return not (self._tls_done[0] and self._tls_done[1])
        if self._kind == "http":
            return len(self.http) < self.max_items or bool(self._http_pending)
        if self._kind == "dns":
            return len(self.dns) < self.max_items or any(self._dns_pending.values())
        return True

    def to_record(self, copy: bool = True) -> dict[str, Any]:
        """The ``app`` object: only the protocols seen (HTTP heads still being gathered included).

        ``copy=False`` when this state is not fed again (the flow ended): the object then shares
        the items instead of copying them."""
        if self._buf[0] is not None or self._buf[1] is not None:
            for d in (0, 1):
                self._flush_http(d)
        out: dict[str, Any] = {}
        if not copy:
            if self.http:
                out["http"] = self.http
            if self.dns:
                out["dns"] = self.dns
            if self.tls:
                out["tls"] = self.tls
            return out
        if self.http:
            out["http"] = [dict(x) for x in self.http]
        if self.dns:
            out["dns"] = [dict(x) for x in self.dns]
        if self.tls:
            out["tls"] = dict(self.tls)
        return out
