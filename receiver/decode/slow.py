"""The slow path: decode one packet at a time, for what the fast path hands over.

Same stages and the same rules as ``receiver.decode.fast`` (read them side by side), one
packet at a time with ``Header.unpack``; IPv6 extension-header chains are walked with
dpkt's extension-header classes. It also decodes any packet on its own, which is how the
property test checks the fast path.
"""

from __future__ import annotations

import struct
from typing import Any

from ..config.engine import EngineConfig
from ..packets import Layer, PacketBatch
from . import ethernet, icmp, ipv4, ipv6, tcp, udp
from .columns import Decoded, Frag, Status
from .fast import COOKED, DONE, ETH, FIRST_HEADER, GENEVE_HDR, IP, VXLAN_HDR
from .geneve import GENEVE
from .vxlan import FLAG_I, VXLAN

V4_MAPPED = 0xFFFF_0000_0000


class _Stop(Exception):
    def __init__(self, status: Status) -> None:
        self.status = status


def decode_slow(batch: PacketBatch, config: EngineConfig, which: Any = None) -> Decoded:
    """Decode the packets ``which`` (indices; default all) of a batch, one by one."""
    out = Decoded.empty(batch.count)
    if batch.layer not in FIRST_HEADER:
        out.status[:] = Status.UNSUPPORTED_LINK
        return out
    indices = range(batch.count) if which is None else which
    data = batch.buf
    for i in indices:
        i = int(i)
        start = int(batch.start[i])
        row = decode_one(data, start, start + int(batch.caplen[i]), batch.layer, config)
        out.assign(i, row)
    return out


def decode_one(buf: Any, start: int, end: int, layer: Layer, config: EngineConfig) -> dict[str, int]:
    """Columns of one packet, ``buf[start:end]``; offsets in the result are absolute."""
    data = bytes(buf[start:end])
    base = start
    row: dict[str, int] = {"status": int(Status.OK), "vni": -1, "inner_start": -1, "depth": 0}
    what = FIRST_HEADER[layer]
    pos, stop = 0, len(data)
    depth = 0
    try:
        while what != DONE:
            if what == VXLAN_HDR:
                if pos + VXLAN.size > stop:
                    raise _Stop(Status.TRUNCATED_TUNNEL)
                h = VXLAN.unpack(data, pos)
                if not h["flags"] & FLAG_I:
                    raise _Stop(Status.VXLAN_I_FLAG_UNSET)
                depth += 1
                if depth > config.max_tunnel_depth:
                    raise _Stop(Status.TUNNEL_TOO_DEEP)
                if (h["flags"] & ~FLAG_I) or h["reserved1"] != b"\0\0\0" or h["reserved2"]:
                    row["vxlan_reserved"] = 1
                row["vni"] = int.from_bytes(h["vni"], "big")
                row["depth"] = depth
                pos += VXLAN.size
                what = ETH
            elif what == GENEVE_HDR:
                if pos + GENEVE.size > stop:
                    raise _Stop(Status.TRUNCATED_TUNNEL)
                h = GENEVE.unpack(data, pos)
                hend = pos + GENEVE.size + (h["ver_optlen"] & 0x3F) * 4
                if hend > stop:
                    raise _Stop(Status.TRUNCATED_TUNNEL)
                if h["ver_optlen"] >> 6:
                    raise _Stop(Status.GENEVE_BAD_VERSION)
                depth += 1
                if depth > config.max_tunnel_depth:
                    raise _Stop(Status.TUNNEL_TOO_DEEP)
                if h["proto"] == ethernet.ETH_TEB:
                    what = ETH
                elif h["proto"] in (ethernet.ETH_IPV4, ethernet.ETH_IPV6):
                    what = IP
                else:
                    raise _Stop(Status.NON_IP)  # e.g. ARP carried directly
                row["vni"] = int.from_bytes(h["vni"], "big")
                row["depth"] = depth
                pos = hend
            elif what == ETH:
                if pos + ethernet.ETH.size > stop:
                    raise _Stop(Status.TRUNCATED_LINK)
                row["inner_start"] = base + pos
                etype = ethernet.ETH.unpack(data, pos)["type"]
                pos += ethernet.ETH.size
                for _ in range(ethernet.MAX_VLAN_TAGS):
                    if etype not in ethernet.VLAN_TYPES:
                        break
                    if pos + ethernet.VLAN.size > stop:
                        raise _Stop(Status.TRUNCATED_LINK)
                    etype = ethernet.VLAN.unpack(data, pos)["type"]
                    pos += ethernet.VLAN.size
                if etype not in (ethernet.ETH_IPV4, ethernet.ETH_IPV6):
                    raise _Stop(Status.NON_IP)
                what = IP
            elif what in COOKED:
                header = COOKED[what]
                if pos + header.size > stop:
                    raise _Stop(Status.TRUNCATED_LINK)
                if header.unpack(data, pos)["proto"] not in (ethernet.ETH_IPV4, ethernet.ETH_IPV6):
                    raise _Stop(Status.NON_IP)
                pos += header.size
                what = IP
            else:  # IP
                nxt = _ip(data, pos, stop, row, config)
                if nxt is None:
                    what = DONE
                else:
                    what, pos, stop = nxt
    except _Stop as e:
        row["status"] = int(e.status)
    for k in ("pay_off",):
        if k in row:
            row[k] += base
    return row


def _ip(data: bytes, pos: int, stop: int, row: dict[str, int], config: EngineConfig) -> tuple[int, int, int] | None:
    if pos >= stop:
        raise _Stop(Status.TRUNCATED_IP_HEADER)
    version = data[pos] >> 4
    if version == 4:
        if pos + ipv4.MIN_HEADER > stop:
            raise _Stop(Status.TRUNCATED_IP_HEADER)
        h = ipv4.IPV4.unpack(data, pos)
        ihl = (h["v_hl"] & 0x0F) * 4
        if ihl < ipv4.MIN_HEADER:
            raise _Stop(Status.MALFORMED_IP)
        if pos + ihl > stop:
            raise _Stop(Status.TRUNCATED_IP_HEADER)
        if h["len"] < ihl:
            raise _Stop(Status.MALFORMED_IP)
        proto = h["p"]
        l4 = pos + ihl
        ip_end = pos + h["len"]
        off = h["off"]
        frag = Frag.LATER if off & ipv4.OFFSET_MASK else (Frag.FIRST if off & ipv4.FLAG_MF else Frag.NONE)
        ipid = h["id"]
        src = (0, V4_MAPPED | int.from_bytes(h["src"], "big"))
        dst = (0, V4_MAPPED | int.from_bytes(h["dst"], "big"))
    elif version == 6:
        if pos + ipv6.IPV6.size > stop:
            raise _Stop(Status.TRUNCATED_IP_HEADER)
        h = ipv6.IPV6.unpack(data, pos)
        l4 = pos + ipv6.IPV6.size
        ip_end = l4 + h["plen"]
        proto, l4, frag, ipid = _ipv6_extensions(data, h["nxt"], l4, ip_end, stop)
        src = struct.unpack(">QQ", h["src"])
        dst = struct.unpack(">QQ", h["dst"])
    else:
        raise _Stop(Status.MALFORMED_IP)

    sport = dport = flags = seq = ack = 0
    pay_off = l4
    if frag != Frag.LATER:
        is_icmp = (proto == icmp.PROTO_ICMP and version == 4) or (proto == icmp.PROTO_ICMPV6 and version == 6)
        hdr_len = (
            tcp.TCP.size if proto == tcp.PROTO else udp.UDP.size if proto == udp.PROTO else
            icmp.ICMP.size if is_icmp else 0
        )
        if l4 + hdr_len > ip_end:
            raise _Stop(Status.MALFORMED_L4)
        if l4 + hdr_len > stop:
            raise _Stop(Status.TRUNCATED_L4_HEADER)
        if proto == tcp.PROTO:
            t = tcp.TCP.unpack(data, l4)
            doff = (t["off_x2"] >> 4) * 4
            if doff < tcp.TCP.size:
                raise _Stop(Status.MALFORMED_L4)
            sport, dport, flags, seq, ack = t["sport"], t["dport"], t["flags"], t["seq"], t["ack"]
            pay_off = l4 + doff
        elif proto == udp.PROTO:
            u = udp.UDP.unpack(data, l4)
            sport, dport = u["sport"], u["dport"]
            pay_off = l4 + udp.UDP.size
            if frag == Frag.NONE:
                cap_end = min(stop, ip_end)
                if dport in config.vxlan_ports:
                    return VXLAN_HDR, pay_off, cap_end
                if dport in config.geneve_ports:
                    return GENEVE_HDR, pay_off, cap_end
        elif is_icmp:
            m = icmp.ICMP.unpack(data, l4)
            sport, dport = icmp.port_pair(proto, m["type"], m["code"])
            pay_off = l4 + icmp.ICMP.size
    pay_len = max(ip_end - pay_off, 0)
    row.update(
        status=int(Status.OK), ipver=version,
        src_hi=src[0], src_lo=src[1], dst_hi=dst[0], dst_lo=dst[1],
        proto=proto, sport=sport, dport=dport, tcpflags=flags,
        iplen=ip_end - pos, pay_off=pay_off, pay_len=pay_len,
        pay_cap=min(max(min(stop, ip_end) - pay_off, 0), pay_len),
        truncated=int(stop < ip_end), frag=int(frag), ipid=ipid, tcpseq=seq, tcpack=ack,
    )
    return None


def _ipv6_extensions(data: bytes, nxt: int, l4: int, ip_end: int, stop: int) -> tuple[int, int, Frag, int]:
    """Walk the extension-header chain (dpkt's header classes) to the upper-layer protocol."""
    import dpkt  # only here: a rare path, and dpkt costs start-up time

    frag, ipid = Frag.NONE, 0
    for _ in range(ipv6.MAX_EXTENSION_HEADERS):
        if nxt not in ipv6.EXTENSION_HEADERS:
            return nxt, l4, frag, ipid
        cls = dpkt.ip6.EXT_HDRS_CLS.get(nxt)
        if cls is None or l4 + 8 > ip_end:
            raise _Stop(Status.MALFORMED_IPV6_EXTENSION)
        if l4 + 8 > stop:
            raise _Stop(Status.TRUNCATED_L4_HEADER)
        try:
            h = cls(data[l4:min(stop, ip_end)])
        except (dpkt.UnpackError, struct.error, IndexError):
            raise _Stop(Status.MALFORMED_IPV6_EXTENSION) from None
        if nxt == ipv6.FRAGMENT:
            if h.frag_off:
                frag = Frag.LATER
            elif h.m_flag:
                frag = Frag.FIRST
            ipid = h.id
        if l4 + h.length > ip_end:
            raise _Stop(Status.MALFORMED_IPV6_EXTENSION)
        if l4 + h.length > stop:
            raise _Stop(Status.TRUNCATED_L4_HEADER)
        nxt = h.nxt
        l4 += h.length
        if frag == Frag.LATER:
            return nxt, l4, frag, ipid
    raise _Stop(Status.MALFORMED_IPV6_EXTENSION)
