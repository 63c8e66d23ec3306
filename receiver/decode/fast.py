"""The fast path: decapsulate and decode a whole batch at once with numpy.

Packets move through stages together: tunnel header (VXLAN, GENEVE) -> link (Ethernet, VLAN
tags, SLL) -> IP -> transport. A UDP datagram to a tunnel port goes round again one level
deeper. Each stage reads its header for all packets in it with one gather
(``Header.take``); a packet that fails a check leaves with a Status naming the reason.
What the fast path does not handle (IPv6 extension-header chains) leaves with
``Status.SLOW_PATH`` for ``receiver.decode.slow``.

The rules are the same as the slow path's, line for line; tests/test_decode_paths.py
checks that both give identical columns on random and mutated packets.
"""

from __future__ import annotations

import numpy as np

from ..decap.geneve import GENEVE
from ..decap.vxlan import FLAG_I, VXLAN
from ..packets import I64, Layer, PacketBatch
from ..settings import EngineConfig
from . import ethernet, icmp, ipv4, ipv6, tcp, udp
from .columns import Decoded, Frag, Status

# what each packet's next header is
DONE, ETH, SLL, IP, VXLAN_HDR, GENEVE_HDR = 0, 1, 2, 3, 4, 5
FIRST_HEADER = {
    Layer.ETHERNET: ETH,
    Layer.LINUX_SLL: SLL,
    Layer.RAW_IP: IP,
    Layer.VXLAN: VXLAN_HDR,
    Layer.GENEVE: GENEVE_HDR,
}
V4_MAPPED = np.uint64(0xFFFF_0000_0000)


def _be16(m: np.ndarray, off: int) -> I64:
    return (m[:, off].astype(np.int64) << 8) | m[:, off + 1]


def _be24(m: np.ndarray, off: int) -> I64:
    return (m[:, off].astype(np.int64) << 16) | (m[:, off + 1].astype(np.int64) << 8) | m[:, off + 2]


def _be32(m: np.ndarray, off: int) -> I64:
    return (_be16(m, off) << 16) | _be16(m, off + 2)


def _addr128(m: np.ndarray, off: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(m[:, off : off + 16]).view(">u8").astype(np.uint64)
    return v[:, 0], v[:, 1]


class _Run:
    """Per-packet state of the packets still being decoded (all arrays share one index)."""

    def __init__(self, batch: PacketBatch, out: Decoded) -> None:
        n = batch.count
        self.out = out
        self.idx = np.arange(n, dtype=np.int64)  # packet number in the batch
        self.pos = batch.start.astype(np.int64)
        self.end = self.pos + batch.caplen.astype(np.int64)
        self.what = np.full(n, FIRST_HEADER[batch.layer], np.int8)
        self.depth = np.zeros(n, np.int64)

    def fail(self, sel: I64, status: Status) -> None:
        if sel.size:
            self.out.status[self.idx[sel]] = status
            self.what[sel] = DONE

    def keep_going(self) -> bool:
        live = self.what != DONE
        if not live.all():
            self.idx, self.pos, self.end = self.idx[live], self.pos[live], self.end[live]
            self.what, self.depth = self.what[live], self.depth[live]
        return bool(self.idx.size)


def decode_fast(batch: PacketBatch, config: EngineConfig) -> Decoded:
    out = Decoded.empty(batch.count)
    if batch.count == 0:
        return out
    if batch.layer not in FIRST_HEADER:
        out.status[:] = Status.UNSUPPORTED_LINK
        return out
    run = _Run(batch, out)
    buf = batch.buf
    vxlan_ports = np.asarray(config.vxlan_ports, np.int64)
    geneve_ports = np.asarray(config.geneve_ports, np.int64)
    while run.keep_going():
        _vxlan(run, buf, config.max_tunnel_depth)
        _geneve(run, buf, config.max_tunnel_depth)
        _ethernet(run, buf)
        _sll(run, buf)
        _ip(run, buf, vxlan_ports, geneve_ports)
    return out


def _vxlan(run: _Run, buf: np.ndarray, max_depth: int) -> None:
    s = np.flatnonzero(run.what == VXLAN_HDR)
    if not s.size:
        return
    p, e = run.pos[s], run.end[s]
    h = VXLAN.take(buf, p)
    short = p + VXLAN.size > e
    run.fail(s[short], Status.TRUNCATED_TUNNEL)
    flags = h[:, 0]
    unset = ~short & ((flags & FLAG_I) == 0)
    run.fail(s[unset], Status.VXLAN_I_FLAG_UNSET)
    run.depth[s] += 1
    deep = ~short & ~unset & (run.depth[s] > max_depth)
    run.fail(s[deep], Status.TUNNEL_TOO_DEEP)
    ok = ~(short | unset | deep)
    reserved = ((flags & (0xFF ^ FLAG_I)) | h[:, 1] | h[:, 2] | h[:, 3] | h[:, 7]) != 0
    t = s[ok]
    run.out.vxlan_reserved[run.idx[t[reserved[ok]]]] = True
    run.out.vni[run.idx[t]] = _be24(h[ok], 4)
    run.out.depth[run.idx[t]] = run.depth[t]
    run.pos[t] += VXLAN.size
    run.what[t] = ETH


def _geneve(run: _Run, buf: np.ndarray, max_depth: int) -> None:
    s = np.flatnonzero(run.what == GENEVE_HDR)
    if not s.size:
        return
    p, e = run.pos[s], run.end[s]
    h = GENEVE.take(buf, p)
    hend = p + GENEVE.size + (h[:, 0] & 0x3F).astype(np.int64) * 4
    short = (p + GENEVE.size > e) | (hend > e)
    run.fail(s[short], Status.TRUNCATED_TUNNEL)
    bad = ~short & ((h[:, 0] >> 6) != 0)
    run.fail(s[bad], Status.GENEVE_BAD_VERSION)
    run.depth[s] += 1
    deep = ~short & ~bad & (run.depth[s] > max_depth)
    run.fail(s[deep], Status.TUNNEL_TOO_DEEP)
    proto = _be16(h, 2)
    is_eth = proto == ethernet.ETH_TEB
    is_ip = (proto == ethernet.ETH_IPV4) | (proto == ethernet.ETH_IPV6)
    ok = ~(short | bad | deep)
    run.fail(s[ok & ~is_eth & ~is_ip], Status.NON_IP)  # e.g. ARP carried directly
    ok &= is_eth | is_ip
    t = s[ok]
    run.out.vni[run.idx[t]] = _be24(h[ok], 4)
    run.out.depth[run.idx[t]] = run.depth[t]
    run.pos[t] = hend[ok]
    run.what[t] = np.where(is_eth[ok], ETH, IP)


def _ethernet(run: _Run, buf: np.ndarray) -> None:
    s = np.flatnonzero(run.what == ETH)
    if not s.size:
        return
    p, e = run.pos[s].copy(), run.end[s]
    short = p + ethernet.ETH.size > e
    run.fail(s[short], Status.TRUNCATED_LINK)
    s, p, e = s[~short], p[~short], e[~short]
    run.out.inner_start[run.idx[s]] = p
    etype = _be16(ethernet.ETH.take(buf, p), 12)
    p = p + ethernet.ETH.size
    cut = np.zeros(s.size, np.bool_)
    for _ in range(ethernet.MAX_VLAN_TAGS):
        tagged = np.isin(etype, ethernet.VLAN_TYPES) & ~cut
        cut |= tagged & (p + ethernet.VLAN.size > e)
        tagged &= ~cut
        if tagged.any():
            etype[tagged] = _be16(ethernet.VLAN.take(buf, p[tagged]), 2)
            p[tagged] += ethernet.VLAN.size
    run.fail(s[cut], Status.TRUNCATED_LINK)
    is_ip = ~cut & ((etype == ethernet.ETH_IPV4) | (etype == ethernet.ETH_IPV6))
    run.fail(s[~cut & ~is_ip], Status.NON_IP)
    run.pos[s[is_ip]] = p[is_ip]
    run.what[s[is_ip]] = IP


def _sll(run: _Run, buf: np.ndarray) -> None:
    s = np.flatnonzero(run.what == SLL)
    if not s.size:
        return
    p, e = run.pos[s], run.end[s]
    short = p + ethernet.SLL.size > e
    run.fail(s[short], Status.TRUNCATED_LINK)
    proto = _be16(ethernet.SLL.take(buf, p), 14)
    is_ip = ~short & ((proto == ethernet.ETH_IPV4) | (proto == ethernet.ETH_IPV6))
    run.fail(s[~short & ~is_ip], Status.NON_IP)
    run.pos[s[is_ip]] += ethernet.SLL.size
    run.what[s[is_ip]] = IP


def _ip(run: _Run, buf: np.ndarray, vxlan_ports: np.ndarray, geneve_ports: np.ndarray) -> None:
    s = np.flatnonzero(run.what == IP)
    if not s.size:
        return
    out = run.out
    p, e = run.pos[s], run.end[s]
    k = s.size
    empty = p >= e
    run.fail(s[empty], Status.TRUNCATED_IP_HEADER)
    version = buf[np.minimum(p, buf.shape[0] - 1)] >> 4
    v4 = ~empty & (version == 4)
    v6 = ~empty & (version == 6)
    run.fail(s[~empty & ~v4 & ~v6], Status.MALFORMED_IP)

    # columns filled per version below
    proto = np.zeros(k, np.int64)
    l4 = np.zeros(k, np.int64)
    ip_end = np.zeros(k, np.int64)
    frag = np.zeros(k, np.uint8)
    ipid = np.zeros(k, np.int64)
    src_hi = np.zeros(k, np.uint64)
    src_lo = np.zeros(k, np.uint64)
    dst_hi = np.zeros(k, np.uint64)
    dst_lo = np.zeros(k, np.uint64)
    ok = np.zeros(k, np.bool_)

    if v4.any():
        a = np.flatnonzero(v4)
        h = ipv4.IPV4.take(buf, p[a])
        ihl = (h[:, 0] & 0x0F).astype(np.int64) * 4
        total = _be16(h, 2)
        # in this order: header cut, bad IHL, options cut, total length below the header
        cut1 = p[a] + ipv4.MIN_HEADER > e[a]
        bad1 = ~cut1 & (ihl < ipv4.MIN_HEADER)
        cut2 = ~cut1 & ~bad1 & (p[a] + ihl > e[a])
        bad2 = ~cut1 & ~bad1 & ~cut2 & (total < ihl)
        run.fail(s[a[cut1 | cut2]], Status.TRUNCATED_IP_HEADER)
        run.fail(s[a[bad1 | bad2]], Status.MALFORMED_IP)
        good = ~(cut1 | bad1 | cut2 | bad2)
        b = a[good]
        hb = h[good]
        proto[b] = hb[:, 9]
        l4[b] = p[b] + ihl[good]
        ip_end[b] = p[b] + total[good]
        fo = _be16(hb, 6)
        frag[b] = np.where((fo & ipv4.OFFSET_MASK) > 0, Frag.LATER, np.where(fo & ipv4.FLAG_MF, Frag.FIRST, 0))
        ipid[b] = _be16(hb, 4)
        src_lo[b] = V4_MAPPED | _be32(hb, 12).astype(np.uint64)
        dst_lo[b] = V4_MAPPED | _be32(hb, 16).astype(np.uint64)
        ok[b] = True
        out.ipver[run.idx[s[b]]] = 4
    if v6.any():
        a = np.flatnonzero(v6)
        h = ipv6.IPV6.take(buf, p[a])
        short = p[a] + ipv6.IPV6.size > e[a]
        run.fail(s[a[short]], Status.TRUNCATED_IP_HEADER)
        nxt = h[:, 6].astype(np.int64)
        ext = ~short & np.isin(nxt, list(ipv6.EXTENSION_HEADERS))
        run.fail(s[a[ext]], Status.SLOW_PATH)
        good = ~short & ~ext
        b = a[good]
        hb = h[good]
        proto[b] = nxt[good]
        l4[b] = p[b] + ipv6.IPV6.size
        ip_end[b] = l4[b] + _be16(hb, 4)
        src_hi[b], src_lo[b] = _addr128(hb, 8)
        dst_hi[b], dst_lo[b] = _addr128(hb, 24)
        ok[b] = True
        out.ipver[run.idx[s[b]]] = 6

    _transport(run, buf, s[ok], l4[ok], ip_end[ok], proto[ok], frag[ok], ipid[ok],
               src_hi[ok], src_lo[ok], dst_hi[ok], dst_lo[ok], vxlan_ports, geneve_ports)


def _transport(
    run: _Run,
    buf: np.ndarray,
    s: I64,
    l4: I64,
    ip_end: I64,
    proto: I64,
    frag: np.ndarray,
    ipid: I64,
    src_hi: np.ndarray,
    src_lo: np.ndarray,
    dst_hi: np.ndarray,
    dst_lo: np.ndarray,
    vxlan_ports: np.ndarray,
    geneve_ports: np.ndarray,
) -> None:
    if not s.size:
        return
    e = run.end[s]
    ipver = run.out.ipver[run.idx[s]]
    k = s.size
    sport = np.zeros(k, np.int64)
    dport = np.zeros(k, np.int64)
    flags = np.zeros(k, np.int64)
    pay_off = l4.copy()
    hdr_len = np.zeros(k, np.int64)
    later = frag == Frag.LATER
    is_tcp = ~later & (proto == tcp.PROTO)
    is_udp = ~later & (proto == udp.PROTO)
    is_icmp = ~later & (((proto == icmp.PROTO_ICMP) & (ipver == 4)) | ((proto == icmp.PROTO_ICMPV6) & (ipver == 6)))
    hdr_len[is_tcp] = tcp.TCP.size
    hdr_len[is_udp] = udp.UDP.size
    hdr_len[is_icmp] = icmp.ICMP.size
    malformed = l4 + hdr_len > ip_end
    cut = ~malformed & (l4 + hdr_len > e)
    run.fail(s[malformed], Status.MALFORMED_L4)
    run.fail(s[cut], Status.TRUNCATED_L4_HEADER)
    ok = ~malformed & ~cut

    t = np.flatnonzero(ok & is_tcp)
    if t.size:
        h = tcp.TCP.take(buf, l4[t])
        sport[t] = _be16(h, 0)
        dport[t] = _be16(h, 2)
        flags[t] = h[:, 13]
        doff = (h[:, 12] >> 4).astype(np.int64) * 4
        bad = doff < tcp.TCP.size
        run.fail(s[t[bad]], Status.MALFORMED_L4)
        ok[t[bad]] = False
        pay_off[t] = l4[t] + doff
    t = np.flatnonzero(ok & is_udp)
    if t.size:
        h = udp.UDP.take(buf, l4[t])
        sport[t] = _be16(h, 0)
        dport[t] = _be16(h, 2)
        pay_off[t] = l4[t] + udp.UDP.size
    t = np.flatnonzero(ok & is_icmp)
    if t.size:
        h = icmp.ICMP.take(buf, l4[t])
        itype = h[:, 0].astype(np.int64)
        code = h[:, 1].astype(np.int64)
        pay_off[t] = l4[t] + icmp.ICMP.size
        table = np.where(
            (ipver[t] == 4)[:, None], icmp.COUNTERPART_V4_TABLE[None, :], icmp.COUNTERPART_V6_TABLE[None, :]
        )
        counter = table[np.arange(t.size), itype]
        sport[t] = itype
        dport[t] = np.where(counter >= 0, counter, code)

    cap_end = np.minimum(e, ip_end)
    # UDP to a tunnel port: one level deeper
    tunnel = ok & is_udp & (frag == Frag.NONE)
    to_vxlan = tunnel & np.isin(dport, vxlan_ports)
    to_geneve = tunnel & ~to_vxlan & np.isin(dport, geneve_ports)
    for sel, what in ((to_vxlan, VXLAN_HDR), (to_geneve, GENEVE_HDR)):
        t = np.flatnonzero(sel)
        if t.size:
            run.pos[s[t]] = pay_off[t]
            run.end[s[t]] = cap_end[t]
            run.what[s[t]] = what
    final = np.flatnonzero(ok & ~to_vxlan & ~to_geneve)
    if not final.size:
        return
    out = run.out
    i = run.idx[s[final]]
    run.what[s[final]] = DONE
    pay_len = np.maximum(ip_end[final] - pay_off[final], 0)
    out.status[i] = Status.OK
    out.src_hi[i], out.src_lo[i] = src_hi[final], src_lo[final]
    out.dst_hi[i], out.dst_lo[i] = dst_hi[final], dst_lo[final]
    out.proto[i] = proto[final]
    out.sport[i] = sport[final]
    out.dport[i] = dport[final]
    out.tcpflags[i] = flags[final]
    out.iplen[i] = ip_end[final] - run.pos[s[final]]  # pos is still the IP header's
    out.pay_off[i] = pay_off[final]
    out.pay_len[i] = pay_len
    out.pay_cap[i] = np.clip(cap_end[final] - pay_off[final], 0, pay_len)
    out.truncated[i] = e[final] < ip_end[final]
    out.frag[i] = frag[final]
    out.ipid[i] = ipid[final]
