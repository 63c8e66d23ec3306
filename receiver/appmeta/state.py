"""Per-flow application metadata: which protocol a flow speaks, and what it said.

The engine creates an :class:`AppState` lazily for a flow and calls :meth:`AppState.feed`
with the payload of each of the flow's first payload packets (and of later packets that
look like an HTTP message or are DNS, and of the segments that continue a message head it
gathers, :meth:`AppState.gathering`), in arrival order, one packet per call; it leaves out the
segments :meth:`AppState.ignores` says would be ignored (HTTP body). Detection is
by content for HTTP, TLS and QUIC (HTTP on port 22 or 27272 is still HTTP; a UDP flow whose
payload starts with a QUIC v1 or v2 Initial is QUIC on any port) and by port for DNS
(53, 5353 mDNS, 5355 LLMNR, 137 NetBIOS-NS; on TCP with the 2-byte length prefix).

TLS hellos may span segments (a post-quantum key share makes a ClientHello ~1.8 KB): the
first segments of a direction that starts with a TLS handshake record are concatenated
here (up to ``tls_buffer`` bytes) until the hello parses completely.

QUIC flows are read by :class:`quic.QuicFlow` (the client's Initial packets decrypted, their
ClientHello read by the TLS code), which gives failures back as counter names (``feed``'s result).

One AppState lives per flow with payload until the flow ends (a TLS flow's only until both hellos
are read, a QUIC flow's until the ClientHello and the server's version are), so it holds no
container before it needs one: 121 bytes alone, about 600 with a DNS
query and its answer, 1 KB with an HTTP request and its response. What each kind of flow costs
(time and memory) is in docs/architecture.md, *What the parsers cost*.
"""

from __future__ import annotations

from typing import Any

from . import dns, http, quic, tls

DNS_UDP_PORTS = frozenset((53, 5353, 5355, 137))
DNS_TCP_PORTS = frozenset((53, 5353, 5355))
TCP, UDP = 6, 17
UNKNOWN_GIVE_UP = 4  # payload packets with nothing recognised before giving up on a flow
HEAD_SEGMENTS = 8  # segments gathered for one message head
_PROBE_LEN = 8  # shorter starts that could begin "GET " or "HTTP/" wait for more bytes
_TLS, _HTTP, _PROBE = 1, 2, 3
_NO_HEADS = (False, False)
# First payload bytes for which ``worth_parsing`` can hold on TCP away from the DNS ports: a TLS
# handshake record, or the first letter of an HTTP method or of "HTTP/". Lets a caller screen
# packets in bulk (a superset test) before building a bytes object for each.
START_BYTES = frozenset({0x16, ord("H")} | {m[0] for m in http.METHODS})


def worth_parsing(payload: bytes, ip_proto: int, sport: int, dport: int) -> bool:
    """Whether a payload could start something :class:`AppState` understands (DNS by port, TLS,
    HTTP and QUIC by content). Cheap: the engine creates an AppState for a flow only when this
    holds, so a flow of opaque payload costs no parser."""
    if ip_proto == UDP:
        if sport in DNS_UDP_PORTS or dport in DNS_UDP_PORTS:
            return True
        # (the first byte first: long header, fixed bit, the type bits of a v1 or v2 Initial)
        return bool(payload) and payload[0] & 0xE0 == 0xC0 and quic.is_initial(payload)
    if ip_proto != TCP or not payload:
        return False
    if sport in DNS_TCP_PORTS or dport in DNS_TCP_PORTS:
        return True
    if payload[0] == 0x16:
        return tls.looks_like_tls_handshake(payload)
    return http.looks_like_http(payload) or (len(payload) < _PROBE_LEN and http.could_start_http(payload))


# What each direction of a TCP flow is in the middle of: one list per flow (made on its first TCP
# payload; a list, not an object per direction: cheaper to make, and smaller), at these offsets
# plus the direction (0 or 1):
_LAST = 0  # hash of the direction's last payload (retransmissions), not the payload: a flow's
# parser lives until the flow ends, and two 1.4 KB copies per flow would dominate its memory
_BUF = 2  # a message head being gathered (bytearray), or None
_MODE = 4  # what it holds: _TLS, _HTTP or _PROBE
_SEGS = 6  # segments in it
_DONE = 8  # ClientHello / ServerHello parsed (or given up)
_SEEN = 10  # payload packets fed
_TCP_NEW = (None, None, None, None, 0, 0, 0, 0, False, False, 0, 0)


class AppState:
    """What one flow's payload revealed. ``to_record()`` is the FlowRecord's ``app`` object.

    Lean, as one lives per flow with payload until the flow ends: no container is made before
    something needs it (the items of a protocol when it is seen, the state of the directions of
    a TCP flow on its first payload). A flow's payloads are all TCP or all UDP."""

    __slots__ = (
        "_dns_pending",
        "_gave_up",
        "_http_pending",
        "_kind",
        "_seen",
        "_tcp",
        "dns",
        "http",
        "max_items",
        "quic",
        "tls",
        "tls_buffer",
    )

    def __init__(self, max_items: int = 8, tls_buffer: int = 16384) -> None:
        self.max_items = max_items
        self.tls_buffer = tls_buffer
        self.http: list[dict[str, Any]] | None = None  # (None: no item yet)
        self.dns: list[dict[str, Any]] | None = None
        self.tls: dict[str, Any] | None = None
        self.quic: quic.QuicFlow | None = None  # (a parser: its result is made by to_record)
        # (plain lists and dicts, not deques: a deque costs 760 bytes even when empty)
        self._http_pending: list[dict[str, Any]] | None = None  # requests waiting for their response
        self._dns_pending: dict[int, list[dict[str, Any]]] | None = None  # queries by ID, waiting likewise
        self._kind: str | None = None  # "http", "dns", "tls", "quic"
        self._seen = 0  # payload packets fed (both directions)
        self._tcp: list[Any] | None = None  # TCP: what each direction is in the middle of (_LAST, ...)
        self._gave_up = False

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, direction: int, payload: bytes, ip_proto: int, sport: int, dport: int) -> str | None:
        """Take one packet's payload (direction 0: originator to responder). Returns the name of a
        counter to count a malformed packet under (QUIC: ``quic.COUNTERS``), else None."""
        if not payload or self._gave_up:
            return None
        if ip_proto == UDP:
            self._seen += 1
            if sport in DNS_UDP_PORTS or dport in DNS_UDP_PORTS:
                self._feed_dns(dns.parse_message(payload, False, sport == 137 or dport == 137))
            elif self.quic is not None:
                return self.quic.feed(direction & 1, payload)
            elif self._kind is None and quic.is_initial(payload):
                self._kind = "quic"
                self.quic = quic.QuicFlow(direction & 1)
                return self.quic.feed(direction & 1, payload)
            else:
                self._nothing()
            return None
        if ip_proto != TCP:
            self._gave_up = True
            return None
        d = direction & 1
        t = self._tcp
        if t is None:
            t = self._tcp = list(_TCP_NEW)
        buf = t[_BUF + d]
        dns_port = sport in DNS_TCP_PORTS or dport in DNS_TCP_PORTS
        if payload[0] not in START_BYTES and self._kind == "http" and buf is None and not dns_port:
            return None  # HTTP body (see ignores(): the engine does not even copy these)
        digest = hash(payload)
        if digest == t[_LAST + d]:  # a TCP retransmission adds nothing
            return None
        t[_LAST + d] = digest
        t[_SEEN + d] += 1
        self._seen += 1
        if buf is not None:  # continuing a message that started in an earlier segment
            buf += payload
            t[_SEGS + d] += 1
            mode = t[_MODE + d]
            if mode == _TLS:
                self._feed_tls(t, d, buf)
            elif mode == _HTTP:
                self._http_progress(t, d, buf)
            else:
                t[_BUF + d] = None
                self._detect(t, d, bytes(buf))
            return None
        if dns_port:
            msg = dns.parse_message(payload, True)
            if msg is not None and msg[3] is not None:  # (a query name)
                self._feed_dns(msg)
                return None
        self._detect(t, d, payload)
        return None

    def _detect(self, t: list[Any], d: int, data: bytes) -> None:
        """Start of a TCP message in direction ``d``: TLS, HTTP, the first bytes of one, or neither."""
        first = data[0]
        if first not in START_BYTES:  # neither TLS nor the start of an HTTP message (the common case)
            if self._kind == "tls":
                t[_DONE + d] = True
            self._nothing()
            return
        seen = t[_SEEN + d]
        # a message that is complete in this segment (the common case) is parsed without a buffer
        if first == 0x16 and seen <= 2 and len(data) >= 3 and data[1] == 3 and data[2] <= 4:  # a TLS handshake
            self._kind = self._kind or "tls"
            t[_MODE + d], t[_SEGS + d] = _TLS, 1
            if self._tls_hello(data, len(data)):
                t[_DONE + d] = True
            else:
                t[_BUF + d] = bytearray(data)
            return
        if http.looks_like_http(data):
            t[_MODE + d], t[_SEGS + d] = _HTTP, 1
            if not self._http_head_done(data, 1):
                t[_BUF + d] = bytearray(data)
            elif data[:5] == b"HTTP/":
                self._flush_http(t, 1 - d)  # a request still being gathered comes first
                self._feed_response(data)
            else:
                self._feed_request(data)
            return
        if len(data) < _PROBE_LEN and seen <= HEAD_SEGMENTS and http.could_start_http(data):
            t[_BUF + d] = bytearray(data)  # e.g. "G" then "ET / HTTP/1.0" in the next segment
            t[_MODE + d], t[_SEGS + d] = _PROBE, 1
            return
        if self._kind == "tls":
            t[_DONE + d] = True  # this side sent something other than a hello first: none will come
        self._nothing()

    @staticmethod
    def _http_head_done(buf: bytes | bytearray, segs: int) -> bool:
        """Whether a message head gathered from ``segs`` segments is to be parsed now: complete
        (a status line, or a request's headers), or too long, or from too many segments."""
        if buf[:5] == b"HTTP/":
            done = b"\n" in buf
        else:
            done = b"\r\n\r\n" in buf or b"\n\n" in buf
        return done or len(buf) >= http.MAX_HEAD or segs >= HEAD_SEGMENTS

    def _http_progress(self, t: list[Any], d: int, buf: bytearray) -> None:
        """An HTTP message head is being gathered: parse it once complete (or too long)."""
        if self._http_head_done(buf, t[_SEGS + d]):
            t[_BUF + d] = None
            if buf[:5] == b"HTTP/":
                self._flush_http(t, 1 - d)  # a request still being gathered comes first
            self._feed_http(bytes(buf))

    def _flush_http(self, t: list[Any], d: int) -> None:
        """Parse what direction ``d`` gathered of an HTTP message head."""
        buf = t[_BUF + d]
        if buf is not None and t[_MODE + d] == _HTTP:
            t[_BUF + d] = None
            self._feed_http(bytes(buf))

    def _nothing(self) -> None:
        if self._kind is None and self._seen >= UNKNOWN_GIVE_UP:
            self._gave_up = True

    def _feed_http(self, payload: bytes) -> None:
        if payload[:5] == b"HTTP/":
            self._feed_response(payload)
        else:
            self._feed_request(payload)

    def _feed_response(self, payload: bytes) -> None:
        resp = http.status_line(payload)
        if resp is None:
            return
        self._kind = "http"
        status, reason = resp
        if 100 <= status < 200 and status != 101:
            return  # interim response: the final one follows
        if self._http_pending:
            item = self._http_pending.pop(0)
            if not self._http_pending:
                self._http_pending = None  # (an empty list kept per flow costs 56 bytes)
        elif len(self.http or ()) < self.max_items:
            item = {"method": None, "host": None, "uri": None, "user_agent": None, "version": None}
            if self.http is None:
                self.http = [item]
            else:
                self.http.append(item)
        else:
            return
        item["status"] = status
        item["reason"] = reason

    def _feed_request(self, payload: bytes) -> None:
        req = http.request_fields(payload)
        if req is None:
            return
        self._kind = "http"
        if len(self.http or ()) < self.max_items:
            method, host, uri, user_agent, version = req
            item = {"method": method, "host": host, "uri": uri, "user_agent": user_agent, "version": version,
                    "status": None, "reason": None}  # fmt: skip
            if self.http is None:
                self.http = [item]
            else:
                self.http.append(item)
            if self._http_pending is None:
                self._http_pending = [item]
            else:
                self._http_pending.append(item)

    def _feed_dns(self, msg: dns.Message | None) -> None:
        if msg is None:
            self._nothing()
            return
        self._kind = "dns"
        tid, qr, _opcode, query, qtype, rcode, answers, ttls = msg
        items = self.dns
        waiting = self._dns_pending
        if qr:
            if waiting and (pending := waiting.get(tid)):
                item = pending.pop(0)
                if not pending:  # (no key and an empty list read alike)
                    del waiting[tid]
                    if not waiting:
                        self._dns_pending = None
                if not item["query"]:
                    item["query"], item["qtype"] = query, qtype
            elif len(items or ()) < self.max_items:
                item = {"query": query, "qtype": qtype}
                if items is None:
                    self.dns = [item]
                else:
                    items.append(item)
            else:
                return
            item["rcode"] = rcode
            item["answers"] = answers
            item["ttls"] = ttls
            return
        if len(items or ()) < self.max_items:
            # (the message's lists are new and empty unless it carried answers: a query's item has none)
            item = {"query": query, "qtype": qtype, "rcode": None, "answers": [] if answers else answers,
                    "ttls": [] if ttls else ttls}  # fmt: skip
            if items is None:
                self.dns = [item]
            else:
                items.append(item)
            if waiting is None:
                self._dns_pending = {tid: [item]}
            elif tid in waiting:
                waiting[tid].append(item)
            else:
                waiting[tid] = [item]

    def _feed_tls(self, t: list[Any], d: int, buf: bytearray) -> None:
        if self._tls_hello(bytes(buf), len(buf)):
            t[_BUF + d] = None
            t[_DONE + d] = True

    def _tls_hello(self, data: bytes, size: int) -> bool:
        """Take what a hello at the start of ``data`` says; True when this direction is finished
        (no hello, a complete one, or ``size`` bytes gathered reach ``tls_buffer``)."""
        h = tls.hello(data)
        if h is None:
            return True
        kind, version, sni, alpn, cipher, _supported, complete = h
        t = self.tls
        if t is None:
            if kind == 1:  # (the usual first: a ClientHello)
                self.tls = {"sni": sni, "version": version, "alpn": alpn}
                return complete or size >= self.tls_buffer
            t = self.tls = {}
        if kind == 1:  # ClientHello
            t["sni"] = sni
            t["version"] = version
            t["alpn"] = alpn
        else:  # ServerHello
            t["server_version"] = version
            t["cipher"] = cipher
            if alpn is not None:
                t["alpn_selected"] = alpn
        return complete or size >= self.tls_buffer

    def gathering(self, d: int) -> bool:
        """Whether direction ``d`` (0: originator to responder) has a message head open, waiting
        for its next segments (the engine shows them even past the direction's first packets)."""
        t = self._tcp
        return t is not None and t[_BUF + (d & 1)] is not None

    def heads(self) -> tuple[bool, bool]:
        """``(gathering(0), gathering(1))``, in one call."""
        t = self._tcp
        if t is None:
            return _NO_HEADS
        return t[_BUF] is not None, t[_BUF + 1] is not None

    def ignores(self, d: int) -> bool:
        """Whether direction ``d`` (0: originator to responder) ignores a TCP payload whose first
        byte is not in START_BYTES (away from the DNS ports): an HTTP flow with no message head
        being gathered there, where such a segment is body. The engine skips those packets
        without copying them (they still count among the direction's first packets)."""
        return self._kind == "http" and self._tcp is not None and self._tcp[_BUF + d] is None

    # -- results ---------------------------------------------------------------------------

    @property
    def wants_more(self) -> bool:
        """False once nothing more can be learned from this flow's payload."""
        if self._gave_up:
            return False
        kind = self._kind
        t = self._tcp
        if t is None:  # (UDP: no message heads)
            if kind == "dns":
                return self._dns_pending is not None or len(self.dns or ()) < self.max_items
            if kind == "quic":
                return self.quic is not None and self.quic.wants_more
            return True
        if t[_BUF] is not None or t[_BUF + 1] is not None:
            return True
        if kind == "tls":
            return not (t[_DONE] and t[_DONE + 1])
        if kind == "http":
            return len(self.http or ()) < self.max_items or bool(self._http_pending)
        if kind == "dns":
            return len(self.dns or ()) < self.max_items or self._dns_pending is not None
        return True

    @property
    def kind(self) -> str | None:
        """The protocol recognised so far ("http", "dns", "tls"), or None."""
        return self._kind

    def to_record(self, copy: bool = True) -> dict[str, Any]:
        """The ``app`` object: only the protocols seen (HTTP heads still being gathered included).

        ``copy=False`` when this state is not fed again (the flow ended): the object then shares
        the items instead of copying them."""
        t = self._tcp
        if t is not None and (t[_BUF] is not None or t[_BUF + 1] is not None):
            for d in (0, 1):
                self._flush_http(t, d)
        out: dict[str, Any] = {}
        if self.quic is not None and (q := self.quic.result()) is not None:  # (a new object each time)
            out["quic"] = q
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
