"""The fast path: decapsulate and decode a whole batch at once with numpy.

Packets move through stages together: tunnel header (VXLAN, GENEVE) -> link (Ethernet, VLAN
tags, or a cooked SLL/SLL2 header) -> IP -> transport. A UDP datagram to a tunnel port goes
round again one level deeper. Each stage reads its header for all packets in it with one gather
(``Header.take``); a packet that fails a check leaves with a Status naming the reason.
What the fast path does not handle (IPv6 extension-header chains) leaves with
``Status.SLOW_PATH`` for ``receiver.decode.slow``.

The rules are the same as the slow path's, line for line; tests/test_decode_paths.py
checks that both give identical columns on random and mutated packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from .. import native
from ..config.engine import EngineConfig
from ..packets import I64, Layer, PacketBatch
from . import cloops, ethernet, icmp, ipv4, ipv6, tcp, udp
from .columns import Decoded, Frag, Status
from .geneve import GENEVE
from .header import take_rows
from .vxlan import FLAG_I, VXLAN

# what each packet's next header is
DONE, ETH, SLL, IP, VXLAN_HDR, GENEVE_HDR, SLL2 = 0, 1, 2, 3, 4, 5, 6
FIRST_HEADER = {
    Layer.ETHERNET: ETH,
    Layer.LINUX_SLL: SLL,
    Layer.LINUX_SLL2: SLL2,
    Layer.RAW_IP: IP,
    Layer.VXLAN: VXLAN_HDR,
    Layer.GENEVE: GENEVE_HDR,
}
V4_MAPPED = np.uint64(0xFFFF_0000_0000)
EXTENSION_HEADERS = np.array(sorted(ipv6.EXTENSION_HEADERS))

# Field offsets, all taken from the declared headers (receiver/decode/*.py, receiver/decode/*.py).
ETH_TYPE = ethernet.ETH.off("type")
VLAN_TYPE = ethernet.VLAN.off("type")
COOKED = {FIRST_HEADER[layer]: header for layer, header in ethernet.COOKED_LAYERS.items()}  # by stage
V4_VHL, V4_LEN, V4_ID, V4_FRAG, V4_PROTO, V4_SRC, V4_DST = (
    ipv4.IPV4.off(f) for f in ("v_hl", "len", "id", "off", "p", "src", "dst")
)
V6_PLEN, V6_NXT, V6_SRC, V6_DST = (ipv6.IPV6.off(f) for f in ("plen", "nxt", "src", "dst"))
TCP_SPORT, TCP_DPORT, TCP_SEQ, TCP_ACK, TCP_OFF, TCP_FLAGS = (
    tcp.TCP.off(f) for f in ("sport", "dport", "seq", "ack", "off_x2", "flags")
)
UDP_SPORT, UDP_DPORT = udp.UDP.off("sport"), udp.UDP.off("dport")
ICMP_TYPE, ICMP_CODE = icmp.ICMP.off("type"), icmp.ICMP.off("code")
VX_FLAGS, VX_RES1, VX_VNI, VX_RES2 = (VXLAN.off(f) for f in ("flags", "reserved1", "vni", "reserved2"))
GN_VER_OPTLEN, GN_PROTO, GN_VNI = (GENEVE.off(f) for f in ("ver_optlen", "proto", "vni"))


def _isin(x: np.ndarray, values: np.ndarray | tuple[int, ...]) -> np.ndarray:
    """``np.isin`` for a handful of values (ports, ethertypes): a few comparisons are cheaper."""
    if len(values) > 4:
        return np.isin(x, values)
    out = np.zeros(x.shape, np.bool_)
    for v in values:
        out |= x == v
    return out


def _be16(m: np.ndarray, off: int) -> I64:
    return (m[:, off].astype(np.int64) << 8) | m[:, off + 1]


def _be24(m: np.ndarray, off: int) -> I64:
    return (m[:, off].astype(np.int64) << 16) | (m[:, off + 1].astype(np.int64) << 8) | m[:, off + 2]


def _be32(m: np.ndarray, off: int) -> I64:
    return (_be16(m, off) << 16) | _be16(m, off + 2)


def _addr128(m: np.ndarray, off: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(m[:, off : off + 16]).view(">u8").astype(np.uint64)
    return v[:, 0], v[:, 1]


Sel: TypeAlias = "np.ndarray | slice"
ALL = slice(None)


def _pick(mask: np.ndarray) -> Sel:
    """Indices where ``mask`` holds, or a slice when it holds everywhere (the common case: no copy)."""
    return ALL if mask.all() else np.flatnonzero(mask)


def _sub(s: Sel, t: Sel) -> Sel:
    """``s[t]`` for selections that may be slices."""
    if isinstance(s, slice):
        return t
    if isinstance(t, slice):
        return s
    return s[t]


class _Run:
    """Per-packet state of the packets still being decoded (all arrays share one index)."""

    def __init__(self, batch: PacketBatch, out: Decoded, subset: I64 | None = None) -> None:
        """All packets of the batch, or those of ``subset`` (packet numbers, ascending)."""
        self.out = out
        if subset is None:
            self.idx = np.arange(batch.count, dtype=np.int64)  # packet number in the batch
            self.pos = batch.start.astype(np.int64)
            self.end = self.pos + batch.caplen.astype(np.int64)
        else:
            self.idx = subset
            self.pos = batch.start[subset].astype(np.int64)
            self.end = self.pos + batch.caplen[subset].astype(np.int64)
        n = self.idx.size
        self.what = np.full(n, FIRST_HEADER[batch.layer], np.int8)
        self.depth = np.zeros(n, np.int64)
        self.identity = subset is None  # idx is still 0..n-1

    def fail(self, s: Sel, mask: np.ndarray, status: Status) -> None:
        """Packets ``s[mask]`` stop here with ``status``."""
        if mask.any():
            sel = _sub(s, np.flatnonzero(mask))
            self.out.status[self.idx[sel]] = status
            self.what[sel] = DONE

    def at(self, what: int) -> Sel | None:
        m = self.what == what
        if not m.any():
            return None
        return _pick(m)

    def out_index(self, s: Sel) -> Sel:
        """Where packets ``s`` of the run are in the output columns: a slice while the run still
        holds every packet in order (output writes are then plain copies, not scatters)."""
        if self.identity and isinstance(s, slice):
            return s
        return self.idx[s]

    def keep_going(self) -> bool:
        live = self.what != DONE
        if not live.all():
            self.identity = False
            self.idx, self.pos, self.end = self.idx[live], self.pos[live], self.end[live]
            self.what, self.depth = self.what[live], self.depth[live]
        return bool(self.idx.size)


def decode_fast(
    batch: PacketBatch, config: EngineConfig, use_native: bool = True, common: tuple[Decoded, np.ndarray] | None = None
) -> Decoded:
    """Decode a batch. With the C library (``receiver.native``) the packets of the common
    shape are read there in one pass and only the others go through the stages below;
    ``use_native=False`` sends every packet through the stages (what the tests compare).
    ``common``: the columns and the handled mask of that C pass, if the caller ran it already
    (receiver.capture.reader); the others are decoded into those columns."""
    out = common[0] if common is not None else Decoded.empty(batch.count)
    if batch.count == 0:
        return out
    if batch.layer not in FIRST_HEADER:
        out.status[:] = Status.UNSUPPORTED_LINK
        return out
    vxlan_ports = np.asarray(config.vxlan_ports, np.int64)
    geneve_ports = np.asarray(config.geneve_ports, np.int64)
    rest = None
    if common is not None or (use_native and native.available()):
        handled = common[1] if common is not None else cloops.decode_common(
            batch.buf, batch.start, batch.caplen, batch.layer, vxlan_ports, geneve_ports,
            config.max_tunnel_depth, out,
        )
        if handled.all():
            return out
        rest = np.flatnonzero(~handled)
    run = _Run(batch, out, rest)
    buf = batch.buf
    if buf.shape[0] < OUTER:  # every gather reads whole rows; a tiny buffer gets zero padding
        buf = np.concatenate([buf, np.zeros(OUTER, np.uint8)])
    while run.keep_going():
        _common_outer(run, buf, vxlan_ports, config.max_tunnel_depth)
        _common_inner(run, buf, vxlan_ports, geneve_ports)
        _vxlan(run, buf, config.max_tunnel_depth)
        _geneve(run, buf, config.max_tunnel_depth)
        _ethernet(run, buf)
        _cooked(run, buf, SLL)
        _cooked(run, buf, SLL2)
        _ip(run, buf, vxlan_ports, geneve_ports)
    return out


# -- shortcuts for the common shapes ------------------------------------------------------------
# Most mirrored traffic has one shape: Ethernet / IPv4 without options / UDP to 4789 / VXLAN
# outside, and Ethernet / IPv4 without options / TCP or UDP inside. For packets of exactly that
# shape, where every check of the general stages would pass, these read the headers of several
# layers with one gather. Everything else (VLAN tags, options, fragments, IPv6, anything odd)
# is left to the general stages below, which apply the same rules one layer at a time.

# where each header starts in the combined reads of the two shortcuts
O_IP = ethernet.ETH.size
O_UDP = O_IP + ipv4.MIN_HEADER
O_VX = O_UDP + udp.UDP.size
OUTER = O_VX + VXLAN.size  # Ethernet, IPv4 without options, UDP, VXLAN
I_IP = ethernet.ETH.size
I_L4 = I_IP + ipv4.MIN_HEADER
INNER = I_L4 + tcp.TCP.size  # Ethernet, IPv4 without options, TCP (or UDP)
IPV4_NO_OPTIONS = 0x45  # version 4, header length 5 words


def _common_outer(run: _Run, buf: np.ndarray, vxlan_ports: np.ndarray, max_depth: int) -> None:
    s = run.at(ETH)
    if s is None or max_depth < 1:
        return
    p, e = run.pos[s], run.end[s]
    h = take_rows(buf, p, OUTER)
    total = _be16(h, O_IP + V4_LEN)
    m = (
        (p + OUTER <= e)
        & (_be16(h, ETH_TYPE) == ethernet.ETH_IPV4) & (h[:, O_IP + V4_VHL] == IPV4_NO_OPTIONS)
        & (h[:, O_IP + V4_PROTO] == udp.PROTO)
        & ((h[:, O_IP + V4_FRAG] & 0x3F) == 0) & (h[:, O_IP + V4_FRAG + 1] == 0)  # no MF, offset 0
        & (O_IP + total >= OUTER)  # the IP length covers UDP and VXLAN
        & _isin(_be16(h, O_UDP + UDP_DPORT), vxlan_ports)
        & ((h[:, O_VX + VX_FLAGS] & FLAG_I) != 0)
        & (run.depth[s] + 1 <= max_depth)
    )
    if not m.any():
        return
    t = _pick(m)
    r = _sub(s, t)
    ht = h[t]
    i = run.out_index(r)
    vx = O_VX
    reserved = (
        (ht[:, vx + VX_FLAGS] & (0xFF ^ FLAG_I)) | ht[:, vx + VX_RES1] | ht[:, vx + VX_RES1 + 1]
        | ht[:, vx + VX_RES1 + 2] | ht[:, vx + VX_RES2]
    ) != 0
    if reserved.any():
        run.out.vxlan_reserved[i] |= reserved
    run.depth[r] += 1
    run.out.inner_start[i] = p[t]  # as the Ethernet stage would have recorded it
    run.out.vni[i] = _be24(ht, O_VX + VX_VNI)
    run.out.depth[i] = run.depth[r]
    run.end[r] = np.minimum(e[t], p[t] + O_IP + total[t])
    run.pos[r] = p[t] + OUTER


def _common_inner(run: _Run, buf: np.ndarray, vxlan_ports: np.ndarray, geneve_ports: np.ndarray) -> None:
    s = run.at(ETH)
    if s is None:
        return
    p, e = run.pos[s], run.end[s]
    h = take_rows(buf, p, INNER)
    total = _be16(h, I_IP + V4_LEN)
    ip_end = p + I_IP + total
    proto = h[:, I_IP + V4_PROTO]
    is_tcp = proto == tcp.PROTO
    hdr = np.where(is_tcp, tcp.TCP.size, udp.UDP.size)
    dport = _be16(h, I_L4 + TCP_DPORT)  # UDP's ports sit where TCP's do
    m = (
        (p + I_L4 <= e)
        & (_be16(h, ETH_TYPE) == ethernet.ETH_IPV4) & (h[:, I_IP + V4_VHL] == IPV4_NO_OPTIONS)
        & ((h[:, I_IP + V4_FRAG] & 0x3F) == 0) & (h[:, I_IP + V4_FRAG + 1] == 0)
        & (is_tcp | (proto == udp.PROTO))
        & (p + I_L4 + hdr <= ip_end) & (p + I_L4 + hdr <= e)
        & (~is_tcp | ((h[:, I_L4 + TCP_OFF] >> 4) >= 5))
        & (is_tcp | ~(_isin(dport, vxlan_ports) | _isin(dport, geneve_ports)))
    )
    if not m.any():
        return
    t = _pick(m)
    r = _sub(s, t)
    ht, pt, et = h[t], p[t], e[t]
    tcp_t = is_tcp[t]
    out = run.out
    i = run.out_index(r)
    run.what[r] = DONE
    l4 = pt + I_L4
    pay_off = l4 + np.where(tcp_t, (ht[:, I_L4 + TCP_OFF] >> 4).astype(np.int64) * 4, udp.UDP.size)
    end_ip = ip_end[t]
    pay_len = np.maximum(end_ip - pay_off, 0)
    out.inner_start[i] = pt
    out.status[i] = Status.OK
    out.ipver[i] = 4
    out.src_hi[i] = 0
    out.dst_hi[i] = 0
    out.src_lo[i] = V4_MAPPED | _be32(ht, I_IP + V4_SRC).astype(np.uint64)
    out.dst_lo[i] = V4_MAPPED | _be32(ht, I_IP + V4_DST).astype(np.uint64)
    out.proto[i] = proto[t]
    out.sport[i] = _be16(ht, I_L4 + TCP_SPORT)
    out.dport[i] = dport[t]
    out.tcpflags[i] = np.where(tcp_t, ht[:, I_L4 + TCP_FLAGS], 0)
    out.tcpseq[i] = np.where(tcp_t, _be32(ht, I_L4 + TCP_SEQ), 0)
    out.tcpack[i] = np.where(tcp_t, _be32(ht, I_L4 + TCP_ACK), 0)
    out.iplen[i] = total[t]
    out.pay_off[i] = pay_off
    out.pay_len[i] = pay_len
    out.pay_cap[i] = np.clip(np.minimum(et, end_ip) - pay_off, 0, pay_len)
    out.truncated[i] = et < end_ip
    out.frag[i] = 0
    out.ipid[i] = _be16(ht, I_IP + V4_ID)


# -- the general stages, one layer at a time ------------------------------------------------------


def _vxlan(run: _Run, buf: np.ndarray, max_depth: int) -> None:
    s = run.at(VXLAN_HDR)
    if s is None:
        return
    p, e = run.pos[s], run.end[s]
    h = VXLAN.take(buf, p)
    short = p + VXLAN.size > e
    run.fail(s, short, Status.TRUNCATED_TUNNEL)
    flags = h[:, VX_FLAGS]
    unset = ~short & ((flags & FLAG_I) == 0)
    run.fail(s, unset, Status.VXLAN_I_FLAG_UNSET)
    run.depth[s] += 1
    deep = ~short & ~unset & (run.depth[s] > max_depth)
    run.fail(s, deep, Status.TUNNEL_TOO_DEEP)
    ok = _pick(~(short | unset | deep))
    t = _sub(s, ok)
    reserved = (
        (flags & (0xFF ^ FLAG_I)) | h[:, VX_RES1] | h[:, VX_RES1 + 1] | h[:, VX_RES1 + 2] | h[:, VX_RES2]
    ) != 0
    if reserved.any():
        run.out.vxlan_reserved[run.out_index(t)] |= reserved[ok]
    i = run.out_index(t)
    run.out.vni[i] = _be24(h[ok], VX_VNI)
    run.out.depth[i] = run.depth[t]
    run.pos[t] += VXLAN.size
    run.what[t] = ETH


def _geneve(run: _Run, buf: np.ndarray, max_depth: int) -> None:
    s = run.at(GENEVE_HDR)
    if s is None:
        return
    p, e = run.pos[s], run.end[s]
    h = GENEVE.take(buf, p)
    hend = p + GENEVE.size + (h[:, GN_VER_OPTLEN] & 0x3F).astype(np.int64) * 4
    short = (p + GENEVE.size > e) | (hend > e)
    run.fail(s, short, Status.TRUNCATED_TUNNEL)
    bad = ~short & ((h[:, GN_VER_OPTLEN] >> 6) != 0)
    run.fail(s, bad, Status.GENEVE_BAD_VERSION)
    run.depth[s] += 1
    deep = ~short & ~bad & (run.depth[s] > max_depth)
    run.fail(s, deep, Status.TUNNEL_TOO_DEEP)
    proto = _be16(h, GN_PROTO)
    is_eth = proto == ethernet.ETH_TEB
    is_ip = (proto == ethernet.ETH_IPV4) | (proto == ethernet.ETH_IPV6)
    ok = ~(short | bad | deep)
    run.fail(s, ok & ~is_eth & ~is_ip, Status.NON_IP)  # e.g. ARP carried directly
    ok = _pick(ok & (is_eth | is_ip))
    t = _sub(s, ok)
    i = run.out_index(t)
    run.out.vni[i] = _be24(h[ok], GN_VNI)
    run.out.depth[i] = run.depth[t]
    run.pos[t] = hend[ok]
    run.what[t] = np.where(is_eth[ok], ETH, IP)


def _ethernet(run: _Run, buf: np.ndarray) -> None:
    s = run.at(ETH)
    if s is None:
        return
    p, e = run.pos[s], run.end[s]
    short = p + ethernet.ETH.size > e
    run.fail(s, short, Status.TRUNCATED_LINK)
    if short.any():
        keep = np.flatnonzero(~short)
        s, p, e = _sub(s, keep), p[keep], e[keep]
    run.out.inner_start[run.out_index(s)] = p
    etype = _be16(ethernet.ETH.take(buf, p), ETH_TYPE)
    p = p + ethernet.ETH.size
    cut = np.zeros(p.size, np.bool_)
    for _ in range(ethernet.MAX_VLAN_TAGS):
        tagged = _isin(etype, ethernet.VLAN_TYPES)
        if not tagged.any():
            break
        tagged &= ~cut
        cut |= tagged & (p + ethernet.VLAN.size > e)
        tagged &= ~cut
        etype[tagged] = _be16(ethernet.VLAN.take(buf, p[tagged]), VLAN_TYPE)
        p[tagged] += ethernet.VLAN.size
    run.fail(s, cut, Status.TRUNCATED_LINK)
    is_ip = ~cut & ((etype == ethernet.ETH_IPV4) | (etype == ethernet.ETH_IPV6))
    run.fail(s, ~cut & ~is_ip, Status.NON_IP)
    ok = _pick(is_ip)
    t = _sub(s, ok)
    run.pos[t] = p[ok]
    run.what[t] = IP


def _cooked(run: _Run, buf: np.ndarray, what: int) -> None:
    s = run.at(what)
    if s is None:
        return
    header = COOKED[what]
    p, e = run.pos[s], run.end[s]
    short = p + header.size > e
    run.fail(s, short, Status.TRUNCATED_LINK)
    proto = _be16(header.take(buf, p), header.off("proto"))
    is_ip = ~short & ((proto == ethernet.ETH_IPV4) | (proto == ethernet.ETH_IPV6))
    run.fail(s, ~short & ~is_ip, Status.NON_IP)
    t = _sub(s, _pick(is_ip))
    run.pos[t] += header.size
    run.what[t] = IP


@dataclass
class _IpFields:
    """IP-layer values of the packets that passed the IP stage (``sel`` into the run)."""

    sel: Sel
    start: I64
    l4: I64
    ip_end: I64
    proto: I64
    frag: np.ndarray
    ipid: I64
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    ipver: int


def _ip(run: _Run, buf: np.ndarray, vxlan_ports: np.ndarray, geneve_ports: np.ndarray) -> None:
    s = run.at(IP)
    if s is None:
        return
    p, e = run.pos[s], run.end[s]
    empty = p >= e
    run.fail(s, empty, Status.TRUNCATED_IP_HEADER)
    version = buf[np.minimum(p, buf.shape[0] - 1)] >> 4
    v4 = ~empty & (version == 4)
    v6 = ~empty & (version == 6)
    run.fail(s, ~empty & ~v4 & ~v6, Status.MALFORMED_IP)
    if v4.any():
        ip = _ipv4(run, buf, _sub(s, _pick(v4)))
        if ip is not None:
            _transport(run, buf, ip, vxlan_ports, geneve_ports)
    if v6.any():
        ip = _ipv6(run, buf, _sub(s, _pick(v6)))
        if ip is not None:
            _transport(run, buf, ip, vxlan_ports, geneve_ports)


def _ipv4(run: _Run, buf: np.ndarray, s: Sel) -> _IpFields | None:
    p, e = run.pos[s], run.end[s]
    h = ipv4.IPV4.take(buf, p)
    ihl = (h[:, V4_VHL] & 0x0F).astype(np.int64) * 4
    total = _be16(h, V4_LEN)
    # in this order: header cut, bad IHL, options cut, total length below the header
    cut1 = p + ipv4.MIN_HEADER > e
    bad1 = ~cut1 & (ihl < ipv4.MIN_HEADER)
    cut2 = ~cut1 & ~bad1 & (p + ihl > e)
    bad2 = ~cut1 & ~bad1 & ~cut2 & (total < ihl)
    run.fail(s, cut1 | cut2, Status.TRUNCATED_IP_HEADER)
    run.fail(s, bad1 | bad2, Status.MALFORMED_IP)
    good = ~(cut1 | bad1 | cut2 | bad2)
    if not good.any():
        return None
    g = _pick(good)
    hb, pb = h[g], p[g]
    fo = _be16(hb, V4_FRAG)
    frag = np.where((fo & ipv4.OFFSET_MASK) > 0, Frag.LATER, np.where(fo & ipv4.FLAG_MF, Frag.FIRST, 0))
    zeros = np.zeros(pb.size, np.uint64)
    return _IpFields(
        sel=_sub(s, g), start=pb, l4=pb + ihl[g], ip_end=pb + total[g], proto=hb[:, V4_PROTO].astype(np.int64),
        frag=frag.astype(np.uint8), ipid=_be16(hb, V4_ID),
        src_hi=zeros, src_lo=V4_MAPPED | _be32(hb, V4_SRC).astype(np.uint64),
        dst_hi=zeros, dst_lo=V4_MAPPED | _be32(hb, V4_DST).astype(np.uint64), ipver=4,
    )


def _ipv6(run: _Run, buf: np.ndarray, s: Sel) -> _IpFields | None:
    p, e = run.pos[s], run.end[s]
    h = ipv6.IPV6.take(buf, p)
    short = p + ipv6.IPV6.size > e
    run.fail(s, short, Status.TRUNCATED_IP_HEADER)
    nxt = h[:, V6_NXT].astype(np.int64)
    ext = ~short & np.isin(nxt, EXTENSION_HEADERS)
    run.fail(s, ext, Status.SLOW_PATH)
    good = ~short & ~ext
    if not good.any():
        return None
    g = _pick(good)
    hb, pb = h[g], p[g]
    l4 = pb + ipv6.IPV6.size
    src_hi, src_lo = _addr128(hb, V6_SRC)
    dst_hi, dst_lo = _addr128(hb, V6_DST)
    return _IpFields(
        sel=_sub(s, g), start=pb, l4=l4, ip_end=l4 + _be16(hb, V6_PLEN), proto=nxt[g],
        frag=np.zeros(pb.size, np.uint8), ipid=np.zeros(pb.size, np.int64),
        src_hi=src_hi, src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo, ipver=6,
    )


def _transport(run: _Run, buf: np.ndarray, ip: _IpFields, vxlan_ports: np.ndarray, geneve_ports: np.ndarray) -> None:
    s, l4, ip_end, proto, frag = ip.sel, ip.l4, ip.ip_end, ip.proto, ip.frag
    e = run.end[s]
    k = l4.size
    sport = np.zeros(k, np.int64)
    dport = np.zeros(k, np.int64)
    flags = np.zeros(k, np.int64)
    seq = np.zeros(k, np.int64)
    ack = np.zeros(k, np.int64)
    pay_off = l4.copy()
    later = frag == Frag.LATER
    is_tcp = ~later & (proto == tcp.PROTO)
    is_udp = ~later & (proto == udp.PROTO)
    is_icmp = ~later & (proto == (icmp.PROTO_ICMP if ip.ipver == 4 else icmp.PROTO_ICMPV6))
    hdr_len = np.where(is_tcp, tcp.TCP.size, np.where(is_udp, udp.UDP.size, np.where(is_icmp, icmp.ICMP.size, 0)))
    malformed = l4 + hdr_len > ip_end
    cut = ~malformed & (l4 + hdr_len > e)
    run.fail(s, malformed, Status.MALFORMED_L4)
    run.fail(s, cut, Status.TRUNCATED_L4_HEADER)
    ok = ~malformed & ~cut

    if is_tcp.any():
        t = _pick(ok & is_tcp)
        h = tcp.TCP.take(buf, l4[t])
        sport[t] = _be16(h, TCP_SPORT)
        dport[t] = _be16(h, TCP_DPORT)
        flags[t] = h[:, TCP_FLAGS]
        seq[t] = _be32(h, TCP_SEQ)
        ack[t] = _be32(h, TCP_ACK)
        doff = (h[:, TCP_OFF] >> 4).astype(np.int64) * 4
        bad = doff < tcp.TCP.size
        if bad.any():
            tt = np.flatnonzero(ok & is_tcp)[bad]
            run.fail(s, np.isin(np.arange(k), tt), Status.MALFORMED_L4)
            ok[tt] = False
        pay_off[t] = l4[t] + doff
    if is_udp.any():
        t = _pick(ok & is_udp)
        h = udp.UDP.take(buf, l4[t])
        sport[t] = _be16(h, UDP_SPORT)
        dport[t] = _be16(h, UDP_DPORT)
        pay_off[t] = l4[t] + udp.UDP.size
    if is_icmp.any():
        t = _pick(ok & is_icmp)
        h = icmp.ICMP.take(buf, l4[t])
        itype = h[:, ICMP_TYPE].astype(np.int64)
        table = icmp.COUNTERPART_V4_TABLE if ip.ipver == 4 else icmp.COUNTERPART_V6_TABLE
        counter = table[itype]
        sport[t] = itype
        dport[t] = np.where(counter >= 0, counter, h[:, ICMP_CODE])
        pay_off[t] = l4[t] + icmp.ICMP.size

    cap_end = np.minimum(e, ip_end)
    # UDP to a tunnel port: one level deeper
    tunnel = ok & is_udp & (frag == Frag.NONE)
    to_vxlan = tunnel & _isin(dport, vxlan_ports)
    to_geneve = tunnel & ~to_vxlan & _isin(dport, geneve_ports)
    for sel, what in ((to_vxlan, VXLAN_HDR), (to_geneve, GENEVE_HDR)):
        if sel.any():
            t = _pick(sel)
            r = _sub(s, t)
            run.pos[r] = pay_off[t]
            run.end[r] = cap_end[t]
            run.what[r] = what
    final = ok & ~to_vxlan & ~to_geneve
    if not final.any():
        return
    f = _pick(final)
    r = _sub(s, f)
    out = run.out
    i = run.out_index(r)
    run.what[r] = DONE
    pay_len = np.maximum(ip_end[f] - pay_off[f], 0)
    out.status[i] = Status.OK
    out.ipver[i] = ip.ipver
    out.src_hi[i], out.src_lo[i] = ip.src_hi[f], ip.src_lo[f]
    out.dst_hi[i], out.dst_lo[i] = ip.dst_hi[f], ip.dst_lo[f]
    out.proto[i] = proto[f]
    out.sport[i] = sport[f]
    out.dport[i] = dport[f]
    out.tcpflags[i] = flags[f]
    out.tcpseq[i] = seq[f]
    out.tcpack[i] = ack[f]
    out.iplen[i] = ip_end[f] - ip.start[f]
    out.pay_off[i] = pay_off[f]
    out.pay_len[i] = pay_len
    out.pay_cap[i] = np.clip(cap_end[f] - pay_off[f], 0, pay_len)
    out.truncated[i] = e[f] < ip_end[f]
    out.frag[i] = frag[f]
    out.ipid[i] = ip.ipid[f]
