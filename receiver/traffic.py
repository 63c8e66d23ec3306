"""Seeded synthetic mirrored traffic: realistic flows, VXLAN-encapsulated as AWS sends them.

    write_pcap("mix.pcap", n_packets=1_000_000, n_flows=4_000, seed=1)   # -> Traffic
    traffic = generate(TrafficSpec(n_packets=100_000, n_flows=2_000, seed=7))
    for batch in traffic.batches():          # PacketBatch, Layer.ETHERNET, outer headers included
        ...
    traffic.flows                            # ground truth per flow (FlowTruth)

What is in it: a heavy-tailed flow-size distribution (most flows a handful of
packets, a few elephants carrying most of the bytes); TCP flows with the
three-way handshake, a first request (an HTTP GET with Host, a TLS ClientHello
with SNI, or opaque bytes), data both ways and a FIN teardown (some end with a
RST, some are still open at the end); DNS queries with their answers; other
UDP; optionally SYN scans (a SYN to a closed port answered by a RST, some
unanswered) and ICMP echo exchanges; about 10 % IPv6 and 5 % VLAN-tagged inner
frames; a share of flows
mirrored by a session with a packet length (AWS ``PacketLength``), whose inner
frames are truncated while their IP headers keep the full length. Inner frames
run from 54 to 1514 bytes.

Three shapes are named (the benchmark's cases): ``realistic(n)``, the mix of
real mirrored traffic, about 15 packets a flow (most flows a few packets: DNS
pairs, scans, short HTTP and TLS exchanges with a TLS 1.3 server flight; a few
long ones), ``long_flows(n)`` (the default spec, 250 packets a flow) and
``flood(n)`` (a SYN scan, 1-2 packets a flow). The outer headers are those of AWS mirroring:
Ethernet/IPv4/UDP to 4789 with the source port hashed from the inner flow
(:mod:`receiver.vxlanport`), and VXLAN with the I flag and the session's VNI.

How it is fast: every per-packet decision is a numpy column; frames are
assembled per chunk by writing header fields at computed offsets into a buffer
prefilled with pseudo-random bytes (which become the payload filler), and only
the few application payloads (two per flow at most) are copied one by one.
TCP and UDP checksums are left 0 (a mirror receiver must not check them); IPv4
header and ICMP checksums are correct.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .packets import F64, I64, U8, U32, Layer, PacketBatch
from .vxlanport import flow_hash, source_port

# Flow types
HTTP, TLS, TCP_OTHER, DNS, UDP_OTHER, SCAN, ICMP = range(7)
FLOW_TYPE_NAMES = ("http", "tls", "tcp", "dns", "udp", "scan", "icmp")
# Packet kinds
SYN, SYNACK, HS_ACK, REQ, RESP, DATA, FIN_C, FIN_S, LAST_ACK, RST, UDP_PKT, SCAN_RST, ECHO = range(13)

OUTER_LEN = 14 + 20 + 8 + 8
VXLAN_PORT = 4789
_PCAP_HDR = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
_OUTER_SRC_MAC = bytes.fromhex("0a1b2c3d4e01")
_OUTER_DST_MAC = bytes.fromhex("0a1b2c3d4e02")
_GW_MAC = bytes.fromhex("06aabbccdd01")
_OUTER_DST_IP = int(ipaddress.IPv4Address("10.0.0.100"))
_OUTER_SRC_BASE = int(ipaddress.IPv4Address("10.0.0.10"))

_SCAN_PORTS_PER_TARGET = 1024  # a scan walks ports 1-1024 of one target, then the next target
_SCANNER_BASE = int(ipaddress.IPv4Address("192.0.2.10"))
_SCANNERS = 4
_ECHO_BYTES = 56  # payload of an echo request or reply (Linux ping)

_HOSTS = ("api", "www", "cdn", "auth", "static", "metrics", "db", "queue", "search", "img")
_DOMAINS = ("example.com", "example.net", "example.org", "shop.example", "corp.example")


@dataclass
class TrafficSpec:
    n_packets: int = 100_000
    n_flows: int = 4_000
    seed: int = 1
    ipv6_share: float = 0.10
    vlan_share: float = 0.05
    truncated_share: float = 0.03  # flows mirrored by a session with a PacketLength
    truncate_to: int = 128  # that session's PacketLength (bytes of the inner frame kept), >= 96
    vnis: tuple[int, ...] = (101, 102, 103)
    truncating_vni: int = 199
    # shares of http, tls, other tcp, dns, other udp, scan, icmp flows (five values: no scans, no ICMP)
    mix: tuple[float, ...] = (0.25, 0.30, 0.10, 0.25, 0.10, 0.0, 0.0)
    unanswered_scans: float = 0.2  # scanned ports that do not answer (filtered): one packet
    server_hello: bool = False  # TLS servers answer with ServerHello, ChangeCipherSpec and an encrypted record
    duration: float | None = None  # seconds of traffic; default n_packets / 100k, at least 1 s
    start_time: float = 1_700_000_000.0
    chunk: int = 131_072  # packets per assembled chunk


@dataclass
class FlowTruth:
    """Ground truth per flow (arrays indexed by flow id), counting only packets emitted.

    The client (``c``) sent the first packet. ``ip_bytes_*`` sum the inner IP
    total-length fields (full lengths, also for truncated frames).
    """

    flow_type: I64
    proto: I64  # 6, 17 or 1 (ICMP: the ports are Zeek's, echo request 8 and its counterpart 0)
    ipv6: np.ndarray
    vlan: I64  # 0: untagged
    vni: I64
    client: list[str]
    server: list[str]
    client_port: I64
    server_port: I64
    packets_c2s: I64
    packets_s2c: I64
    ip_bytes_c2s: I64
    ip_bytes_s2c: I64
    sni: list[str | None]
    http_host: list[str | None]
    dns_query: list[str | None]

    @property
    def count(self) -> int:
        return int(self.proto.shape[0])

    def seen(self) -> np.ndarray:
        """Flow ids with at least one packet in the output."""
        return np.flatnonzero((self.packets_c2s + self.packets_s2c) > 0)


@dataclass
class Traffic:
    spec: TrafficSpec
    flows: FlowTruth
    # per packet, in time order
    flow: I64
    direction: np.ndarray  # 0 client->server, 1 server->client
    kind: np.ndarray
    ts: F64
    _f: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    _app: list[tuple[bytes | None, bytes | None]] = field(repr=False, default_factory=list)

    @property
    def count(self) -> int:
        return int(self.flow.shape[0])

    def chunks(self) -> Iterator[tuple[U8, I64, U32]]:
        """Assembled frames per chunk: (buffer, frame start offsets, frame lengths).

        Each frame is preceded by 16 free bytes (room for a pcap record header).
        """
        for lo in range(0, self.count, self.spec.chunk):
            yield self._assemble(np.arange(lo, min(lo + self.spec.chunk, self.count)))

    def batches(self) -> Iterator[PacketBatch]:
        """The frames as PacketBatches of outer Ethernet frames (VXLAN inside)."""
        for (buf, start, length), lo in zip(self.chunks(), range(0, self.count, self.spec.chunk)):
            ts = self.ts[lo : lo + start.shape[0]]
            yield PacketBatch(buf=buf, start=start, caplen=length, wirelen=length.copy(), ts=ts, layer=Layer.ETHERNET)

    def datagrams(self) -> Iterator[tuple[U8, I64, U32]]:
        """The VXLAN UDP payloads only (what a mirror target's socket receives), per chunk."""
        for buf, start, length in self.chunks():
            yield buf, start + (OUTER_LEN - 8), length - (OUTER_LEN - 8)

    def write_pcap(self, path: str | Path) -> int:
        """Write a classic pcap (Ethernet, microseconds); returns bytes written."""
        total = 0
        with open(path, "wb", buffering=0) as f:
            f.write(_PCAP_HDR)
            total += len(_PCAP_HDR)
            for (buf, start, length), lo in zip(self.chunks(), range(0, self.count, self.spec.chunk)):
                ts = self.ts[lo : lo + start.shape[0]]
                sec = np.floor(ts).astype(np.uint64)
                usec = np.minimum(np.round((ts - sec) * 1e6), 999_999).astype(np.uint64)
                hdr = start - 16
                _put(buf, hdr, sec, 4, little=True)
                _put(buf, hdr + 4, usec, 4, little=True)
                _put(buf, hdr + 8, length.astype(np.uint64), 4, little=True)
                _put(buf, hdr + 12, length.astype(np.uint64), 4, little=True)
                end = int(start[-1] + length[-1])
                f.write(buf[:end].data)
                total += end
        return total

    def write_datagrams(self, path: str | Path) -> int:
        """Write the VXLAN payloads as ``[u16 little-endian length][bytes]`` records (bench/c/send_ref)."""
        n = 0
        with open(path, "wb") as f:
            for buf, start, length in self.datagrams():
                _put(buf, start - 2, length.astype(np.uint64), 2, little=True)
                parts = [buf[s - 2 : s + ln].tobytes() for s, ln in zip(start.tolist(), length.tolist())]
                f.write(b"".join(parts))
                n += len(parts)
        return n

    # -- frame assembly -------------------------------------------------------------------
    def _assemble(self, idx: I64) -> tuple[U8, I64, U32]:
        f, fl = self._f, self.flow[idx]
        d = self.direction[idx].astype(np.int64)
        v6, vlan = f["ipv6"][fl], f["vlan"][fl] > 0
        tcp = f["proto"][fl] == 6
        l3len = np.where(v6, 40, 20)
        l4len = np.where(tcp, 20, 8)
        paylen = f["_paylen"][idx]
        inner_len = 14 + 4 * vlan + l3len + l4len + paylen
        cap_inner = np.where(
            f["vni"][fl] == self.spec.truncating_vni, np.minimum(inner_len, self.spec.truncate_to), inner_len
        )
        frame_len = (OUTER_LEN + cap_inner).astype(np.int64)
        rec = frame_len + 16
        start = np.zeros(idx.shape[0], np.int64)
        np.cumsum(rec[:-1], out=start[1:])
        start += 16
        total = int(start[-1] + frame_len[-1]) if idx.shape[0] else 0
        buf = np.empty(total, np.uint8)
        fill = self._filler()
        for o in range(0, total, fill.shape[0]):
            n = min(fill.shape[0], total - o)
            buf[o : o + n] = fill[:n]

        # outer Ethernet / IPv4 / UDP / VXLAN
        _put_const(buf, start, _OUTER_DST_MAC + _OUTER_SRC_MAC + b"\x08\x00\x45\x00")
        ip = start + 14
        _put(buf, ip + 2, (frame_len - 14).astype(np.uint64), 2)
        _put(buf, ip + 4, (idx & 0xFFFF).astype(np.uint64), 2)
        _put_const(buf, ip + 6, b"\x40\x00\x40\x11\x00\x00")
        _put(buf, ip + 12, (_OUTER_SRC_BASE + f["sess"][fl]).astype(np.uint64), 4)
        _put(buf, ip + 16, np.full(idx.shape[0], _OUTER_DST_IP, np.uint64), 4)
        _ipv4_checksum(buf, ip)
        udp = ip + 20
        _put(buf, udp, f["outer_sport"][fl].astype(np.uint64), 2)
        _put(buf, udp + 2, np.full(idx.shape[0], VXLAN_PORT, np.uint64), 2)
        _put(buf, udp + 4, (frame_len - 34).astype(np.uint64), 2)
        _put_const(buf, udp + 6, b"\x00\x00\x08\x00\x00\x00")
        _put(buf, udp + 12, (f["vni"][fl].astype(np.uint64) << np.uint64(8)), 4)

        # inner Ethernet (+ 802.1Q)
        eth = start + OUTER_LEN
        cmac, smac = f["mac"][fl], np.full(idx.shape[0], int.from_bytes(_GW_MAC, "big"), np.uint64)
        _put(buf, eth, np.where(d == 0, smac, cmac), 6)
        _put(buf, eth + 6, np.where(d == 0, cmac, smac), 6)
        et = eth + 12
        if vlan.any():
            _put(buf, et[vlan], (np.uint64(0x8100 << 16) | f["vlan"][fl][vlan].astype(np.uint64)), 4)
        et = et + 4 * vlan
        _put(buf, et, np.where(v6, 0x86DD, 0x0800).astype(np.uint64), 2)
        l3 = et + 2

        # inner IP
        a_hi, a_lo, b_hi, b_lo = (f[k][fl] for k in ("c_hi", "c_lo", "s_hi", "s_lo"))
        src_hi, src_lo = np.where(d == 0, a_hi, b_hi), np.where(d == 0, a_lo, b_lo)
        dst_hi, dst_lo = np.where(d == 0, b_hi, a_hi), np.where(d == 0, b_lo, a_lo)
        proto = f["proto"][fl].astype(np.uint64)
        ttl = np.where(d == 0, 64, 51).astype(np.uint64)
        v4 = ~v6
        if v4.any():
            p = l3[v4]
            _put(buf, p, (np.uint64(0x4500 << 16) | (l3len + l4len + paylen)[v4].astype(np.uint64)), 4)
            _put(buf, p + 4, (f["_ipid"][idx][v4].astype(np.uint64) << np.uint64(16)) | np.uint64(0x4000), 4)
            _put(buf, p + 8, (ttl[v4] << np.uint64(24)) | (proto[v4] << np.uint64(16)), 4)
            _put(buf, p + 12, src_lo[v4], 4)
            _put(buf, p + 16, dst_lo[v4], 4)
            _ipv4_checksum(buf, p)
        if v6.any():
            p = l3[v6]
            _put(buf, p, np.full(p.shape[0], 0x60000000, np.uint64), 4)
            _put(
                buf,
                p + 4,
                ((l4len + paylen)[v6].astype(np.uint64) << np.uint64(16)) | (proto[v6] << np.uint64(8)) | ttl[v6],
                4,
            )
            for off, arr in ((8, src_hi), (16, src_lo), (24, dst_hi), (32, dst_lo)):
                _put(buf, p + off, arr[v6], 8)

        # TCP / UDP
        l4 = l3 + l3len
        cport, sport = f["c_port"][fl].astype(np.uint64), f["s_port"][fl].astype(np.uint64)
        _put(buf, l4, np.where(d == 0, (cport << np.uint64(16)) | sport, (sport << np.uint64(16)) | cport), 4)
        if tcp.any():
            p = l4[tcp]
            _put(buf, p + 4, f["_seq"][idx][tcp], 4)
            _put(buf, p + 8, f["_ack"][idx][tcp], 4)
            _put(buf, p + 12, (np.uint64(0x5000) | f["_flags"][idx][tcp].astype(np.uint64)), 2)
            _put_const(buf, p + 14, b"\xfa\xf0\x00\x00\x00\x00")
        u = f["proto"][fl] == 17
        if u.any():
            p = l4[u]
            _put(buf, p + 4, ((8 + paylen[u]).astype(np.uint64) << np.uint64(16)), 4)
        ic = f["proto"][fl] == 1
        if ic.any():  # echo request (8) or reply (0), code 0; identifier and sequence; checksummed
            p = l4[ic]
            _put(buf, p, np.where(d[ic] == 0, 0x08000000, 0).astype(np.uint64), 4)
            _put(buf, p + 4, f["_seq"][idx][ic], 4)
            _checksum(buf, p, 8 + _ECHO_BYTES, 2)

        # application payloads (first request / response of a flow)
        pay = l4 + l4len
        end = start + frame_len
        app_rows = np.flatnonzero(f["_app"][idx])
        for r in app_rows.tolist():
            data = self._app[int(fl[r])][int(d[r])]
            if data:
                p0 = int(pay[r])
                n = min(len(data), int(end[r]) - p0)
                if n > 0:
                    buf[p0 : p0 + n] = np.frombuffer(data, np.uint8, n)
        return buf, start, frame_len.astype(np.uint32)

    def _filler(self) -> U8:
        if "_filler" not in self._f:
            self._f["_filler"] = np.random.default_rng(self.spec.seed ^ 0x5EED).integers(
                0, 256, (1 << 20) + 4093, dtype=np.uint8
            )  # odd size: filler differs per frame
        return self._f["_filler"]


def _put(buf: U8, pos: I64, val: np.ndarray, n: int, little: bool = False) -> None:
    """Write ``n``-byte unsigned integers ``val`` at offsets ``pos`` (big-endian unless ``little``)."""
    v = val.astype(np.uint64, copy=False)
    for k in range(n):
        shift = 8 * k if little else 8 * (n - 1 - k)
        buf[pos + k] = (v >> np.uint64(shift)) & np.uint64(0xFF)


def _put_const(buf: U8, pos: I64, data: bytes) -> None:
    for k, b in enumerate(data):
        buf[pos + k] = b


def _ipv4_checksum(buf: U8, pos: I64) -> None:
    _checksum(buf, pos, 20, 10)


def _checksum(buf: U8, pos: I64, n: int, at: int) -> None:
    """The Internet checksum of the ``n`` bytes (even) at each of ``pos``, written at offset ``at``."""
    hdr = buf[pos[:, None] + np.arange(n)].astype(np.uint32)
    hdr[:, at : at + 2] = 0
    s = (hdr[:, 0::2] << 8 | hdr[:, 1::2]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _put(buf, pos + at, (~s & 0xFFFF).astype(np.uint64), 2)


# -- application payloads -------------------------------------------------------------------
def _http(host: str, rng: np.random.Generator) -> tuple[bytes, bytes]:
    path = "/" + "/".join(f"p{int(x)}" for x in rng.integers(0, 1000, int(rng.integers(1, 4))))
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vxmirror-traffic/1.0\r\nAccept: */*\r\n\r\n").encode()
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5120\r\n\r\n"
    return req, resp


def _client_hello(sni: str, rng: np.random.Generator) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    groups = struct.pack("!HHH", 10, 4, 2) + b"\x00\x1d"
    alpn = struct.pack("!HHH", 16, 5, 3) + b"\x02h2"
    exts = sni_ext + groups + alpn
    ciphers = b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f"
    body = (
        b"\x03\x03"
        + rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
        + b"\x00"
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _server_flight(rng: np.random.Generator) -> bytes:
    """A TLS 1.3 server's first flight: ServerHello (supported_versions, an x25519 key share),
    ChangeCipherSpec, and one encrypted record (what follows is opaque), 200-1200 bytes in all."""
    exts = struct.pack("!HHH", 43, 2, 0x0304) + struct.pack("!HHHH", 51, 36, 0x001D, 32)
    exts += rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
    body = b"\x03\x03" + rng.integers(0, 256, 32, dtype=np.uint8).tobytes() + b"\x00\x13\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    flight = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs + b"\x14\x03\x03\x00\x01\x01"
    sealed = int(rng.integers(200, 1200)) - len(flight) - 5
    return flight + b"\x17\x03\x03" + struct.pack("!H", sealed) + rng.integers(0, 256, sealed, dtype=np.uint8).tobytes()


def _dns(name: str, qid: int, v6: bool) -> tuple[bytes, bytes]:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    qtype = 28 if v6 else 1
    q = qname + struct.pack("!HH", qtype, 1)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q
    rdata = bytes(range(1, 17)) if v6 else bytes((198, 51, 100, qid % 250 + 1))
    answer = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 300, len(rdata)) + rdata
    resp = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + answer
    return query, resp


# -- generation -----------------------------------------------------------------------------
def generate(spec: TrafficSpec | None = None) -> Traffic:
    """Generate the packets of ``spec`` (metadata only; frames are assembled when read)."""
    spec = spec or TrafficSpec()
    if spec.n_packets < 1 or spec.n_flows < 1:
        raise ValueError("n_packets and n_flows must be positive")
    if spec.truncate_to < 96:
        raise ValueError("truncate_to must be at least 96 (the largest inner header is 78 bytes)")
    if not 5 <= len(spec.mix) <= len(FLOW_TYPE_NAMES) or min(spec.mix) < 0 or sum(spec.mix) <= 0:
        raise ValueError(f"mix needs 5 to {len(FLOW_TYPE_NAMES)} shares ({', '.join(FLOW_TYPE_NAMES)}), not negative")
    rng = np.random.default_rng(spec.seed)
    nf = spec.n_flows
    duration = spec.duration or max(1.0, spec.n_packets / 100_000)

    # (shares of types a short mix leaves out are 0: the same draws as before scans and ICMP existed)
    mix = np.zeros(len(FLOW_TYPE_NAMES))
    mix[: len(spec.mix)] = spec.mix
    ftype = rng.choice(mix.shape[0], nf, p=mix / mix.sum())
    scan, icmp = ftype == SCAN, ftype == ICMP
    is_tcp = (ftype <= TCP_OTHER) | scan
    conv = is_tcp & ~scan  # TCP connections: handshake, request, response, data, teardown
    fixed = (ftype == DNS) | scan  # sizes without a tail
    ipv6 = (rng.random(nf) < spec.ipv6_share) & ~scan & ~icmp
    vlan = np.where(rng.random(nf) < spec.vlan_share, rng.integers(2, 4095, nf), 0)
    sess = rng.integers(0, len(spec.vnis), nf)
    vni = np.asarray(spec.vnis, np.int64)[sess]
    trunc = rng.random(nf) < spec.truncated_share
    vni[trunc] = spec.truncating_vni
    sess[trunc] = len(spec.vnis)

    # flow sizes: TCP connections at least 8 packets (handshake, request, response, teardown), DNS a
    # query and its answer, a scanned port a SYN and its RST, a ping a request and its reply; Pareto tail
    size_min = np.select([conv, fixed | icmp], [8, 2], 1)
    tail = np.floor(rng.pareto(1.1, nf) * np.select([conv, fixed], [6.0, 0.0], 3.0))
    tail = np.minimum(tail, max(1, spec.n_packets // 8))
    unanswered = rng.random(nf)
    size_min[(ftype == DNS) & (unanswered < 0.1)] = 1  # unanswered queries
    size_min[scan & (unanswered < spec.unanswered_scans)] = 1  # filtered ports
    flex_total = tail.sum()
    room = spec.n_packets - int(size_min.sum())
    if room > 0 and flex_total > 0:
        tail = np.floor(tail * (room / flex_total))
        extra = room - int(tail.sum())
        tail[np.argmax(np.where(fixed, -1, tail))] += extra
    elif room <= 0:
        tail[:] = 0
    size = (size_min + tail).astype(np.int64)
    size[fixed] = size_min[fixed]
    ending = np.where(conv, rng.choice(3, nf, p=(0.85, 0.05, 0.10)), 0)  # 0 FIN, 1 RST, 2 still open

    # per-packet columns in flow order
    total = int(size.sum())
    pf = np.repeat(np.arange(nf), size)
    first = np.zeros(nf, np.int64)
    np.cumsum(size[:-1], out=first[1:])
    pos = np.arange(total) - first[pf]
    back = size[pf] - 1 - pos  # 0 = last packet of the flow
    conv_p, scan_p, echo = conv[pf], scan[pf], icmp[pf]
    kind = np.full(total, DATA, np.int8)
    kind[~conv_p] = UDP_PKT
    for p_, k_ in ((0, SYN), (1, SYNACK), (2, HS_ACK), (3, REQ), (4, RESP)):
        kind[conv_p & (pos == p_)] = k_
    fin_end = conv_p & (ending[pf] == 0)
    kind[fin_end & (back == 2)] = FIN_C
    kind[fin_end & (back == 1)] = FIN_S
    kind[fin_end & (back == 0)] = LAST_ACK
    kind[conv_p & (ending[pf] == 1) & (back == 0)] = RST
    kind[scan_p] = np.where(pos == 0, SYN, SCAN_RST)[scan_p]
    kind[echo] = ECHO
    direction = np.zeros(total, np.int8)
    direction[np.isin(kind, (SYNACK, RESP, FIN_S, SCAN_RST))] = 1
    direction[echo] = (pos[echo] % 2) == 1  # request, reply, request, ...
    data = kind == DATA
    direction[data] = rng.random(int(data.sum())) < 0.75
    udp_pkt = kind == UDP_PKT
    dns_p = udp_pkt & (ftype[pf] == DNS)
    direction[dns_p] = pos[dns_p] > 0
    other_udp = udp_pkt & ~dns_p
    direction[other_udp] = (rng.random(int(other_udp.sum())) < 0.4) & (pos[other_udp] > 0)

    # application payloads per flow
    app: list[tuple[bytes | None, bytes | None]] = []
    sni: list[str | None] = [None] * nf
    hosts: list[str | None] = [None] * nf
    queries: list[str | None] = [None] * nf
    h_i, d_i = rng.integers(0, len(_HOSTS), nf), rng.integers(0, len(_DOMAINS), nf)
    tag = rng.integers(0, 100, nf)
    for i in range(nf):
        name = f"{_HOSTS[h_i[i]]}{tag[i]}.{_DOMAINS[d_i[i]]}"
        t = ftype[i]
        if t == HTTP:
            hosts[i] = name
            app.append(_http(name, rng))
        elif t == TLS:
            sni[i] = name
            app.append((_client_hello(name, rng), _server_flight(rng) if spec.server_hello else None))
        elif t == DNS:
            queries[i] = name
            app.append(_dns(name, int(rng.integers(0, 65536)), bool(ipv6[i])))
        else:
            app.append((None, None))
    app_len = np.array([[len(a or b""), len(b or b"")] for a, b in app], np.int64).reshape(nf, 2)

    # payload lengths
    mss = np.where(ipv6, 1428, 1448)[pf]
    paylen = np.zeros(total, np.int64)
    big = rng.random(total) < 0.6
    s2c = direction == 1
    paylen[data & s2c] = np.where(big, mss, rng.integers(0, mss + 1))[data & s2c]
    c2s_data = data & ~s2c
    paylen[c2s_data] = np.where(rng.random(total) < 0.5, 0, rng.integers(1, 600, total))[c2s_data]
    is_app = (kind == REQ) | (kind == RESP) | dns_p
    paylen[kind == REQ] = np.maximum(app_len[pf, 0], np.where(ftype[pf] == TCP_OTHER, rng.integers(40, 400, total), 0))[
        kind == REQ
    ]
    resp = kind == RESP
    paylen[resp] = np.maximum(app_len[pf, 1], rng.integers(200, 1200, total))[resp]
    if spec.server_hello:  # a TLS server flight is its own length
        exact = resp & (ftype[pf] == TLS)
        paylen[exact] = app_len[pf, 1][exact]
    paylen[echo] = _ECHO_BYTES
    paylen[dns_p] = app_len[pf, direction.astype(np.int64)][dns_p]
    paylen[other_udp] = rng.integers(20, 1200, total)[other_udp]
    paylen = np.minimum(paylen, mss)

    # TCP flags, sequence and acknowledgement numbers
    flags = np.zeros(total, np.int64)
    flags[kind == SYN], flags[kind == SYNACK] = 0x02, 0x12
    flags[(kind == HS_ACK) | (kind == LAST_ACK)] = 0x10
    flags[(kind == REQ) | (kind == RESP) | data] = np.where(paylen > 0, 0x18, 0x10)[
        (kind == REQ) | (kind == RESP) | data
    ]
    flags[(kind == FIN_C) | (kind == FIN_S)] = 0x11
    flags[(kind == RST) | (kind == SCAN_RST)] = 0x14
    seqlen = paylen + ((flags & 0x03) != 0)
    isn = rng.integers(0, 1 << 32, (nf, 2), dtype=np.uint64)
    cum = [np.zeros(total, np.int64), np.zeros(total, np.int64)]
    for dd in (0, 1):
        x = np.where(direction == dd, seqlen, 0)
        c = np.cumsum(x)
        c -= (c[first] - x[first])[pf]  # restart per flow; inclusive
        cum[dd] = c
    own = np.where(direction == 0, cum[0], cum[1]) - seqlen  # exclusive in own direction
    other = np.where(direction == 0, cum[1], cum[0])  # inclusive of everything the peer sent before
    d64 = direction.astype(np.int64)
    seq = (isn[pf, d64] + own.astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    seq[kind == SCAN_RST] = 0  # a closed port's RST answers the SYN: sequence 0, acknowledging SYN + 1
    ack = np.where(kind == SYN, np.uint64(0), (isn[pf, 1 - d64] + other.astype(np.uint64)) & np.uint64(0xFFFFFFFF))

    # timestamps: flows start over the capture; packets spread over each flow's lifetime
    fstart = rng.random(nf) * duration * 0.9
    fdur = np.minimum(rng.exponential(0.05, nf) + size * 0.002, duration - fstart)
    u = rng.random(total)
    u[pos == 0] = 0.0
    u = u[np.lexsort((u, pf))]
    ts = spec.start_time + fstart[pf] + u * fdur[pf]

    # addresses, ports
    c4 = (10 << 24) | (1 << 16) | rng.integers(0, 1 << 16, nf)
    s4 = np.where(
        rng.random(nf) < 0.5,
        (10 << 24) | (2 << 16) | rng.integers(0, 1 << 16, nf),
        np.asarray([(198 << 24) | (51 << 16) | (100 << 8), (203 << 24) | (113 << 8)])[rng.integers(0, 2, nf)]
        | rng.integers(1, 255, nf),
    )
    c_hi = np.where(ipv6, 0xFD00001000000000, 0).astype(np.uint64)
    s_hi = np.where(ipv6, 0x20010DB800000000 | rng.integers(0, 1 << 16, nf), 0).astype(np.uint64)
    c_lo = np.where(ipv6, rng.integers(1, 1 << 62, nf), c4).astype(np.uint64)
    s_lo = np.where(ipv6, rng.integers(1, 1 << 62, nf), s4).astype(np.uint64)
    s_port = np.select(
        [ftype == HTTP, ftype == TLS, ftype == DNS, ftype == TCP_OTHER],
        [np.full(nf, 80), np.full(nf, 443), np.full(nf, 53), rng.choice([22, 5432, 6379, 8080], nf)],
        rng.choice([514, 8125, 9000, 27015], nf),
    )
    c_port = rng.integers(32768, 61000, nf)
    proto = np.select([is_tcp, icmp], [6, 1], 17)
    if scan.any():  # a few scanners walk the ports 1-1024 of one internal target after another
        k = np.cumsum(scan)[scan] - 1
        target = k // _SCAN_PORTS_PER_TARGET
        c_lo[scan] = _SCANNER_BASE + target % _SCANNERS
        s_lo[scan] = (10 << 24) | (2 << 16) | (1 + target % 65535)
        c_port[scan] = 40000 + target % _SCANNERS  # one source port per scanner (nmap's way)
        s_port[scan] = 1 + k % _SCAN_PORTS_PER_TARGET
    if icmp.any():  # echo: the identifier is the flow's, the sequence counts the requests
        seq[echo] = (c_port[pf][echo].astype(np.uint64) << np.uint64(16)) | (pos[echo] // 2 + 1).astype(np.uint64)
        c_port[icmp], s_port[icmp] = 8, 0  # the "ports" of an echo exchange (Zeek's, as flows key them)
    outer_sport = source_port(flow_hash(c_hi, c_lo, s_hi, s_lo, c_port, s_port, proto))
    mac = (0x020000000000 | rng.integers(0, 1 << 40, nf)).astype(np.uint64)
    ipid = rng.integers(0, 65536, total)

    # time order, cut to n_packets
    order = np.argsort(ts, kind="stable")[: spec.n_packets]
    pf_o = pf[order]
    d_o = direction[order]
    pkts = np.zeros((nf, 2), np.int64)
    np.add.at(pkts, (pf_o, d_o.astype(np.int64)), 1)
    ipb = np.zeros((nf, 2), np.int64)
    l34 = np.where(ipv6[pf_o], 40, 20) + np.where(is_tcp[pf_o], 20, 8) + paylen[order]  # ICMP: 8 too
    np.add.at(ipb, (pf_o, d_o.astype(np.int64)), l34)

    def fmt(hi: np.ndarray, lo: np.ndarray) -> list[str]:
        return [
            str(ipaddress.IPv6Address((int(h) << 64) | int(lv))) if v else str(ipaddress.IPv4Address(int(lv)))
            for h, lv, v in zip(hi, lo, ipv6)
        ]

    truth = FlowTruth(
        flow_type=ftype.astype(np.int64),
        proto=proto.astype(np.int64),
        ipv6=ipv6,
        vlan=vlan.astype(np.int64),
        vni=vni,
        client=fmt(c_hi, c_lo),
        server=fmt(s_hi, s_lo),
        client_port=c_port.astype(np.int64),
        server_port=s_port.astype(np.int64),
        packets_c2s=pkts[:, 0],
        packets_s2c=pkts[:, 1],
        ip_bytes_c2s=ipb[:, 0],
        ip_bytes_s2c=ipb[:, 1],
        sni=sni,
        http_host=hosts,
        dns_query=queries,
    )
    cols = {
        "ipv6": ipv6,
        "vlan": vlan,
        "proto": proto,
        "vni": vni,
        "sess": sess,
        "c_hi": c_hi,
        "c_lo": c_lo,
        "s_hi": s_hi,
        "s_lo": s_lo,
        "c_port": c_port,
        "s_port": s_port,
        "outer_sport": outer_sport,
        "mac": mac,
        "_paylen": paylen[order],
        "_seq": seq[order],
        "_ack": ack[order],
        "_flags": flags[order],
        "_app": is_app[order],
        "_ipid": ipid[order],
    }
    return Traffic(spec=spec, flows=truth, flow=pf_o, direction=d_o, kind=kind[order], ts=ts[order], _f=cols, _app=app)


def write_pcap(path: str | Path, n_packets: int, n_flows: int = 4_000, seed: int = 1, **spec: object) -> Traffic:
    """Generate ``n_packets`` of mirrored traffic over ``n_flows`` flows and write them as a pcap."""
    traffic = generate(TrafficSpec(n_packets=n_packets, n_flows=n_flows, seed=seed, **spec))  # type: ignore[arg-type]
    traffic.write_pcap(path)
    return traffic


# -- the named shapes (the benchmark's cases) -------------------------------------------------
# http, tls, other tcp, dns, other udp, scan, icmp: what a mirrored VPC interface mostly sees
REALISTIC_MIX = (0.18, 0.22, 0.05, 0.35, 0.08, 0.10, 0.02)


def realistic(n_packets: int, seed: int = 1, packets_per_flow: float = 15.0, **spec: Any) -> TrafficSpec:
    """Real mirrored traffic: about ``packets_per_flow`` packets a flow on average, most flows a few
    packets (DNS pairs, scanned ports, pings, short HTTP and TLS exchanges with a TLS 1.3 server
    flight), a few long ones (the Pareto tail), over several VNIs."""
    n_flows = max(1, round(n_packets / packets_per_flow))
    return TrafficSpec(n_packets=n_packets, n_flows=n_flows, seed=seed, mix=REALISTIC_MIX, server_hello=True, **spec)


def long_flows(n_packets: int, seed: int = 1, n_flows: int = 4_000, **spec: Any) -> TrafficSpec:
    """Few long flows (the default spec; 1 M packets in 4,000 flows: 250 packets a flow)."""
    return TrafficSpec(n_packets=n_packets, n_flows=n_flows, seed=seed, **spec)


def flood(n_packets: int, seed: int = 1, **spec: Any) -> TrafficSpec:
    """A SYN scan: every flow a SYN to a closed port and its RST, or an unanswered SYN (1-2 packets)."""
    unanswered = float(spec.get("unanswered_scans", TrafficSpec.unanswered_scans))
    n_flows = int(np.ceil(n_packets / (2.0 - unanswered) * 1.01)) + 16  # enough packets; cut at n_packets
    return TrafficSpec(n_packets=n_packets, n_flows=n_flows, seed=seed, mix=(0, 0, 0, 0, 0, 1, 0), **spec)


SHAPES: dict[str, Callable[..., TrafficSpec]] = {"realistic": realistic, "long_flows": long_flows, "flood": flood}
