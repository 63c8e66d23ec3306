"""Replay captures as mirrored traffic: the load generator of the tests and benchmarks.

    stats = replay(["trace.pcap"], to=("127.0.0.1", 4789), pps=100_000, loop=2, vni=7)
    stats.sent, stats.bytes, stats.skipped, stats.elapsed

What is sent for each captured frame:

- a frame that already carries a tunnel (outer Ethernet or raw IP, then UDP to
  4789 VXLAN or 6081 GENEVE) is sent as its UDP payload, as it is, to ``to``
  (VXLAN) or ``geneve_to`` (GENEVE; by default the ``to`` host on 6081 when
  ``to`` is on 4789, otherwise such datagrams are skipped and counted);
- any other frame is wrapped in VXLAN as AWS mirroring does: the 8-byte header
  with the I flag and the VNI (``vni``, default :data:`DEFAULT_VNI`), then the
  whole Ethernet frame (raw IP and Linux cooked captures get an Ethernet
  header made up for them).

The outer UDP source port follows the inner flow (:mod:`receiver.vxlanport`):
datagrams leave from a pool of ``sockets`` UDP sockets, bound where possible to
ports spread over the dynamic range, and each inner flow (a symmetric hash of
its 5-tuple, parsed also inside already-encapsulated datagrams) always uses the
same socket, so both directions share one outer source port and the packets of
a flow keep their order. A capture frame whose UDP payload was cut by the
snap length is sent with the bytes there are and counted in ``truncated``.

Sending is ``sendmmsg`` through ctypes: per batch, arrays laid out as the
kernel's ``mmsghdr`` and ``iovec`` point into the capture's (memory-mapped)
buffer, two iovecs per datagram (the VXLAN header we add, then the frame), one
call per socket per chunk. ``pps`` is enforced by a token bucket refilled at
that rate and spent per chunk (a chunk is at most 5 ms of traffic; the bucket
holds 50 ms, so pauses between batches are made up without long bursts).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .capture import open_capture
from .decode import ethernet
from .listen.mmsg import IOVEC, MMSGHDR, _libc  # the mmsghdr layout the listener uses too
from .packets import I64, U8, Layer, PacketBatch
from .vxlanport import PORT_MAX, PORT_MIN, flow_hash, source_port

log = logging.getLogger(__name__)

DEFAULT_VNI = 1
VXLAN_PORT = 4789
GENEVE_PORT = 6081
MAX_DATAGRAM = 65507
_FAKE_MACS = bytes.fromhex("0a00000000020a0000000001")
_COOKED = ethernet.COOKED_LAYERS

_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


@dataclass
class ReplayStats:
    sent: int = 0  # datagrams sent
    bytes: int = 0  # UDP payload bytes sent
    encapsulated: int = 0  # sent as they were (VXLAN or GENEVE already)
    wrapped: int = 0  # plain frames wrapped in VXLAN
    truncated: int = 0  # sent with fewer bytes than the original datagram (snap length)
    skipped: dict[str, int] = field(default_factory=dict)  # not sent, by reason
    elapsed: float = 0.0

    @property
    def pps(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"sent {self.sent} datagrams ({self.bytes} bytes; {self.encapsulated} as captured, "
            f"{self.wrapped} wrapped in VXLAN, {self.truncated} truncated) in {self.elapsed:.3f} s "
            f"({self.pps:,.0f}/s); skipped: {skipped}"
        )


# -- vectorised header parsing ------------------------------------------------------------------
class _View:
    """Bounds-checked gathers from a batch buffer (reads past a packet's end give 0)."""

    def __init__(self, buf: U8, end: I64) -> None:
        self.buf, self.end, self.last = buf, end, max(buf.shape[0] - 1, 0)

    def u8(self, pos: I64) -> I64:
        ok = pos < self.end
        if self.buf.shape[0] == 0:
            return np.zeros(pos.shape[0], np.int64)
        return np.where(ok, self.buf[np.clip(pos, 0, self.last)], 0).astype(np.int64)

    def u16(self, pos: I64) -> I64:
        return (self.u8(pos) << 8) | self.u8(pos + 1)

    def u64(self, pos: I64) -> np.ndarray:
        v = np.zeros(pos.shape[0], np.uint64)
        for k in range(8):
            v = (v << np.uint64(8)) | self.u8(pos + k).astype(np.uint64)
        return v


@dataclass
class _L3:
    ok: np.ndarray  # IPv4 or IPv6 header present
    proto: I64
    l4: I64
    frag: np.ndarray  # a fragment (not the only one)
    src: tuple[np.ndarray, np.ndarray]
    dst: tuple[np.ndarray, np.ndarray]


def _parse_ip(v: _View, l3: I64, ethertype: I64) -> _L3:
    first = v.u8(l3)
    is4 = (ethertype == 0x0800) & ((first >> 4) == 4) & (l3 + 20 <= v.end)
    is6 = (ethertype == 0x86DD) & ((first >> 4) == 6) & (l3 + 40 <= v.end)
    ihl = (first & 15) * 4
    proto = np.where(is4, v.u8(l3 + 9), np.where(is6, v.u8(l3 + 6), -1))
    frag = is4 & ((v.u16(l3 + 6) & 0x3FFF) != 0) | is6 & (proto == 44)
    l4 = np.where(is4, l3 + ihl, l3 + 40)
    zero = np.zeros(l3.shape[0], np.uint64)
    s4 = ((v.u16(l3 + 12) << 16) | v.u16(l3 + 14)).astype(np.uint64)
    d4 = ((v.u16(l3 + 16) << 16) | v.u16(l3 + 18)).astype(np.uint64)
    src = (np.where(is6, v.u64(l3 + 8), zero), np.where(is6, v.u64(l3 + 16), np.where(is4, s4, zero)))
    dst = (np.where(is6, v.u64(l3 + 24), zero), np.where(is6, v.u64(l3 + 32), np.where(is4, d4, zero)))
    return _L3(ok=is4 | is6, proto=proto, l4=l4, frag=frag, src=src, dst=dst)


def _parse_eth(v: _View, s: I64) -> tuple[I64, I64]:
    """Ethertype and L3 offset of Ethernet frames at ``s`` (up to two VLAN tags)."""
    et, l3 = v.u16(s + 12), s + 14
    for _ in range(2):
        tagged = (et == 0x8100) | (et == 0x88A8)
        et = np.where(tagged, v.u16(l3 + 2), et)
        l3 = np.where(tagged, l3 + 4, l3)
    return et, l3


def _flow_port(v: _View, ip: _L3) -> np.ndarray:
    """The outer source port for the inner flows ``ip`` describes (Linux-style)."""
    ported = ip.ok & ~ip.frag & np.isin(ip.proto, (6, 17, 132))
    sp = np.where(ported, v.u16(ip.l4), 0)
    dp = np.where(ported, v.u16(ip.l4 + 2), 0)
    h = flow_hash(ip.src[0], ip.src[1], ip.dst[0], ip.dst[1], sp, dp, np.maximum(ip.proto, 0))
    return source_port(h).astype(np.int64)


def _tunnel_inner(v: _View, pay: I64, geneve: np.ndarray) -> _L3:
    """The inner IP header right inside VXLAN (Ethernet) or GENEVE (Ethernet or IP) payloads."""
    glen = 8 + (v.u8(pay) & 0x3F) * 4
    gproto = v.u16(pay + 2)
    inner = np.where(geneve, pay + glen, pay + 8)
    eth = ~geneve | (gproto == 0x6558)
    et, l3 = _parse_eth(v, inner)
    et = np.where(eth, et, gproto)
    l3 = np.where(eth, l3, inner)
    return _parse_ip(v, l3, et)


# -- sockets ------------------------------------------------------------------------------------
def _sockaddr(host: str, port: int) -> tuple[int, bytes]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, sa = infos[0]
    addr: tuple[Any, ...] = tuple(sa)
    if family == socket.AF_INET:
        raw = (
            socket.AF_INET.to_bytes(2, "little")
            + port.to_bytes(2, "big")
            + socket.inet_pton(socket.AF_INET, str(addr[0]))
            + bytes(8)
        )
    else:
        raw = (
            socket.AF_INET6.to_bytes(2, "little")
            + port.to_bytes(2, "big")
            + bytes(4)
            + socket.inet_pton(socket.AF_INET6, str(addr[0]))
            + int(addr[3]).to_bytes(4, "little")
        )
    return int(family), raw


def _bind_pool(family: int, count: int, sndbuf: int) -> list[socket.socket]:
    """``count`` UDP sockets, the k-th bound near the k-th slice of the dynamic port range."""
    pool = []
    span = (PORT_MAX - PORT_MIN) // count
    any_addr = "0.0.0.0" if family == socket.AF_INET else "::"
    for k in range(count):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        for port in [PORT_MIN + k * span + span // 2 + j for j in range(16)] + [0]:
            try:
                s.bind((any_addr, port))
                break
            except OSError:
                continue
        pool.append(s)
    return pool


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (or only HOST with a default port) into a tuple."""
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host or "127.0.0.1", int(port)


class Replayer:
    """Sends PacketBatches as mirrored datagrams. Use :func:`replay` for files."""

    def __init__(
        self,
        to: tuple[str, int],
        geneve_to: tuple[str, int] | None = None,
        pps: float | None = None,
        vni: int | None = None,
        sockets: int = 8,
        chunk: int = 256,
        sndbuf: int = 4 << 20,
    ) -> None:
        if pps is not None and pps <= 0:
            raise ValueError("pps must be positive")
        if vni is not None and not 0 <= vni < 1 << 24:
            raise ValueError("vni must be within 0 .. 16777215")
        if sockets < 1:
            raise ValueError("sockets must be at least 1")
        self.stats = ReplayStats()
        self.vni = DEFAULT_VNI if vni is None else vni
        self.pps = pps
        self.family, vx = _sockaddr(*to)
        if geneve_to is None and to[1] == VXLAN_PORT:
            geneve_to = (to[0], GENEVE_PORT)
        gfam, gv = _sockaddr(*geneve_to) if geneve_to else (self.family, b"")
        if gfam != self.family:
            raise ValueError("the VXLAN and GENEVE targets must be of the same address family")
        self.has_geneve = bool(gv)
        self._names = np.zeros((2, 32), np.uint8)
        self._names[0, : len(vx)] = np.frombuffer(vx, np.uint8)
        self._names[1, : len(gv)] = np.frombuffer(gv, np.uint8)
        self._namelen = np.array([len(vx), len(gv)], np.uint32)
        self.pool = _bind_pool(self.family, sockets, sndbuf)
        self.chunk = max(1, min(chunk, int(pps // 200) if pps else chunk))
        self._tokens = float(self.chunk)
        self._last = time.monotonic()
        self._t0: float | None = None

    def close(self) -> None:
        for s in self.pool:
            s.close()
        self.pool = []

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per batch --------------------------------------------------------------------------
    def send(self, batch: PacketBatch) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        n = batch.count
        if n == 0:
            return
        st = self.stats
        s = batch.start
        end = s + batch.caplen.astype(np.int64)
        v = _View(batch.buf, end)
        layer = batch.layer
        hdr_len = np.full(n, 8, np.int64)  # bytes of our header (VXLAN, maybe a made-up Ethernet)
        ethertype_fake = np.zeros(n, np.int64)
        if layer == Layer.ETHERNET:
            et, l3 = _parse_eth(v, s)
            runt = batch.caplen < 14
        elif layer == Layer.RAW_IP:
            first = v.u8(s) >> 4
            et = np.where(first == 6, 0x86DD, np.where(first == 4, 0x0800, 0))
            l3 = s
            runt = batch.caplen < 20
            ethertype_fake = et
        elif layer in _COOKED:
            h = _COOKED[layer]
            et, l3 = v.u16(s + h.off("proto")), s + h.size
            runt = batch.caplen < h.size
            ethertype_fake = et
        elif layer in (Layer.VXLAN, Layer.GENEVE):  # already a tunnel payload
            et, l3 = np.zeros(n, np.int64), s
            runt = np.zeros(n, bool)
        else:
            st.skip("unsupported_layer", n)
            return
        ip = _parse_ip(v, l3, et)
        udp = ip.ok & (ip.proto == 17) & (ip.l4 + 8 <= end)
        dport = np.where(udp, v.u16(ip.l4 + 2), 0)
        tunnel = udp & ((dport == VXLAN_PORT) | (dport == GENEVE_PORT))
        geneve = tunnel & (dport == GENEVE_PORT)
        if layer in (Layer.VXLAN, Layer.GENEVE):
            tunnel = np.ones(n, bool)
            geneve = np.full(n, layer == Layer.GENEVE)
        pay = np.where(tunnel, ip.l4 + 8, s)
        if layer in (Layer.VXLAN, Layer.GENEVE):
            pay = s
            want = batch.wirelen.astype(np.int64)
        else:
            want = v.u16(ip.l4 + 4) - 8
        have = end - pay
        keep = ~runt
        frag = tunnel & ip.frag
        keep &= ~frag
        no_geneve = keep & geneve & (not self.has_geneve)
        keep &= ~no_geneve
        # lengths of what we send
        tun_len = np.minimum(np.maximum(want, 0), have)
        frame_off = np.where(layer == Layer.ETHERNET, s, l3)
        plain_hdr = np.where(ethertype_fake > 0, 8 + 14, 8)
        if layer in _COOKED:
            plain_hdr = np.full(n, 8 + 14, np.int64)
        body_len = np.where(tunnel, tun_len, end - frame_off)
        hdr_len = np.where(tunnel, 0, plain_hdr)
        total = hdr_len + body_len
        too_large = keep & (total > MAX_DATAGRAM)
        keep &= ~too_large
        st.skip("runt", int(runt.sum()))
        st.skip("fragment", int(frag.sum()))
        st.skip("geneve_without_target", int(no_geneve.sum()))
        st.skip("too_large", int(too_large.sum()))
        if no_geneve.any() and not getattr(self, "_warned_geneve", False):
            log.warning("GENEVE datagrams found but no GENEVE target given (geneve_to); skipping them")
            self._warned_geneve = True
        idx = np.flatnonzero(keep)
        if idx.shape[0] == 0:
            return
        # socket per inner flow
        inner = _tunnel_inner(v, pay, geneve)
        plain_l3 = ip
        port = np.where(tunnel, _flow_port(v, inner), _flow_port(v, plain_l3))
        sock = ((port - PORT_MIN) * len(self.pool) // (PORT_MAX - PORT_MIN)).clip(0, len(self.pool) - 1)

        # our headers: VXLAN (I flag, VNI), then a made-up Ethernet header where needed
        hdrs = np.zeros((n, 24), np.uint8)
        hdrs[:, 0] = 0x08
        hdrs[:, 4:7] = np.frombuffer(self.vni.to_bytes(3, "big"), np.uint8)
        hdrs[:, 8:20] = np.frombuffer(_FAKE_MACS, np.uint8)
        hdrs[:, 20] = (ethertype_fake >> 8) & 0xFF
        hdrs[:, 21] = ethertype_fake & 0xFF

        k = idx.shape[0]
        iov = np.zeros((k, 2), IOVEC)
        iov["base"][:, 0] = hdrs.ctypes.data + idx.astype(np.uint64) * np.uint64(24)
        iov["len"][:, 0] = hdr_len[idx]
        base = batch.buf.ctypes.data
        iov["base"][:, 1] = np.uint64(base) + np.where(tunnel, pay, frame_off)[idx].astype(np.uint64)
        iov["len"][:, 1] = body_len[idx]
        msgs = np.zeros(k, MMSGHDR)
        dest = geneve[idx].astype(np.int64)
        msgs["name"] = np.uint64(self._names.ctypes.data) + dest.astype(np.uint64) * np.uint64(32)
        msgs["namelen"] = self._namelen[dest]
        msgs["iov"] = np.uint64(iov.ctypes.data) + np.arange(k, dtype=np.uint64) * np.uint64(32)
        msgs["iovlen"] = 2
        sizes = total[idx]
        socks = sock[idx]
        self._send_all(msgs, socks, sizes)
        sent_tun = tunnel[idx]
        st.encapsulated += int(sent_tun.sum())
        st.wrapped += int(k - sent_tun.sum())
        st.truncated += int((tunnel & keep & (want > have)).sum())
        st.bytes += int(sizes.sum())

    def _send_all(self, msgs: np.ndarray, socks: I64, sizes: I64) -> None:
        k = msgs.shape[0]
        addr0 = msgs.ctypes.data
        for lo in range(0, k, self.chunk):
            hi = min(lo + self.chunk, k)
            self._pace(hi - lo)
            part = socks[lo:hi]
            order = np.argsort(part, kind="stable")
            if (order != np.arange(hi - lo)).any():
                msgs[lo:hi] = msgs[lo:hi][order]
                socks[lo:hi] = part[order]
                part = socks[lo:hi]
            bounds = np.flatnonzero(np.diff(part)) + 1
            starts = [0, *bounds.tolist()]
            stops = [*bounds.tolist(), hi - lo]
            for a, b in zip(starts, stops):
                fd = self.pool[int(part[a])].fileno()
                self._sendmmsg(fd, addr0 + (lo + a) * MMSGHDR.itemsize, b - a)
            self.stats.sent += hi - lo

    def _sendmmsg(self, fd: int, addr: int, count: int) -> None:
        done = 0
        while done < count:
            r = _sendmmsg(fd, addr + done * MMSGHDR.itemsize, count - done, 0)
            if r < 0:
                err = ctypes.get_errno()
                if err in (errno.EINTR, errno.EAGAIN, errno.ENOBUFS):
                    time.sleep(0.0002)
                    continue
                if err == errno.ECONNREFUSED:  # an ICMP error for an earlier datagram; go on
                    continue
                raise OSError(err, f"sendmmsg: {os.strerror(err)}")
            done += r

    def _pace(self, n: int) -> None:
        if not self.pps:
            return
        while True:
            now = time.monotonic()
            self._tokens = min(self._tokens + (now - self._last) * self.pps, max(2.0 * self.chunk, self.pps * 0.05))
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return
            time.sleep(max((n - self._tokens) / self.pps, 0.00005))

    def finish(self) -> ReplayStats:
        self.stats.elapsed = time.monotonic() - self._t0 if self._t0 is not None else 0.0
        return self.stats


def _batches(paths: Iterable[str | os.PathLike[str]], stats: ReplayStats) -> Iterator[PacketBatch]:
    for path in paths:
        with open_capture(path) as cap:
            yield from cap.batches(8192)
            for name, count in cap.counters.items():
                if name != "records" and count:
                    stats.skip(f"capture_{name}", count)


def replay(
    paths: Iterable[str | os.PathLike[str] | Path],
    to: tuple[str, int],
    pps: float | None = None,
    loop: int = 1,
    vni: int | None = None,
    geneve_to: tuple[str, int] | None = None,
    sockets: int = 8,
) -> ReplayStats:
    """Send every frame of ``paths`` (``loop`` times over) to ``to`` as mirrored traffic.

    Raises :class:`receiver.capture.CaptureError` for a file that is not a capture
    and ``OSError`` for a failing socket; everything else that cannot be sent is
    counted in ``ReplayStats.skipped`` by reason.
    """
    if loop < 1:
        raise ValueError("loop must be at least 1")
    paths = list(paths)
    with Replayer(to, geneve_to=geneve_to, pps=pps, vni=vni, sockets=sockets) as r:
        for _ in range(loop):
            for batch in _batches(paths, r.stats):
                r.send(batch)
        stats = r.finish()
    return stats


def replay_batches(
    batches: Iterable[PacketBatch],
    to: tuple[str, int],
    pps: float | None = None,
    vni: int | None = None,
    geneve_to: tuple[str, int] | None = None,
) -> ReplayStats:
    """Like :func:`replay` for batches already in memory (e.g. from :mod:`receiver.traffic`)."""
    with Replayer(to, geneve_to=geneve_to, pps=pps, vni=vni) as r:
        for batch in batches:
            r.send(batch)
        return r.finish()
