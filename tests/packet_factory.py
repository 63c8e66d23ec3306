"""Building test frames with dpkt: plain Ethernet/IP/TCP/UDP/ICMP, and VXLAN/GENEVE around them."""

from __future__ import annotations

import socket
import struct

import dpkt

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def ip4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = dpkt.tcp.TH_ACK, payload: bytes = b"",
        seq: int = 1000, ack: int = 0) -> bytes:
    """An Ethernet/IPv4 (or IPv6 when the addresses have ':') frame carrying TCP."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=payload)
    return _ip_frame(src, dst, dpkt.ip.IP_PROTO_TCP, seg)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    dg = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    dg.ulen = len(dg)
    return _ip_frame(src, dst, dpkt.ip.IP_PROTO_UDP, dg)


def icmp(src: str, dst: str, itype: int = 8, code: int = 0, payload: bytes = b"x" * 56) -> bytes:
    if ":" in src:
        msg = dpkt.icmp6.ICMP6(type=itype, code=code, data=payload)
        return _ip_frame(src, dst, dpkt.ip.IP_PROTO_ICMP6, msg)
    m = dpkt.icmp.ICMP(type=itype, code=code, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=payload))
    return _ip_frame(src, dst, dpkt.ip.IP_PROTO_ICMP, m)


def _ip_frame(src: str, dst: str, proto: int, l4: dpkt.Packet) -> bytes:
    if ":" in src:
        pkt = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=proto, hlim=64, data=l4)
        pkt.plen = len(bytes(l4))
        etype = dpkt.ethernet.ETH_TYPE_IP6
    else:
        pkt = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=proto, ttl=64, data=l4, id=1)
        pkt.len = len(pkt)
        etype = dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=etype, data=bytes(pkt)))


def vlan(frame: bytes, vid: int = 100, tpid: int = 0x8100) -> bytes:
    """Insert one 802.1Q (or 802.1ad) tag after the MAC addresses."""
    return frame[:12] + struct.pack(">HH", tpid, vid) + frame[12:]


def vxlan_header(vni: int, flags: int = 0x08) -> bytes:
    return struct.pack(">B3sI", flags, b"\0\0\0", vni << 8)


def geneve_header(vni: int, proto: int = 0x6558, options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    return struct.pack(">BBH", len(options) // 4, 0, proto) + struct.pack(">I", vni << 8) + options


def outer(payload: bytes, dport: int = 4789, src: str = "10.0.0.10", dst: str = "10.0.0.20",
          sport: int = 40000) -> bytes:
    """An outer Ethernet/IPv4/UDP frame around a tunnel payload (as a capture on the target shows it)."""
    return udp(src, dst, sport, dport, payload)


def vxlan(inner: bytes, vni: int = 7, flags: int = 0x08, **kw: object) -> bytes:
    return outer(vxlan_header(vni, flags) + inner, 4789, **kw)  # type: ignore[arg-type]


def geneve(inner: bytes, vni: int = 9, proto: int = 0x6558, options: bytes = b"", **kw: object) -> bytes:
    return outer(geneve_header(vni, proto, options) + inner, 6081, **kw)  # type: ignore[arg-type]


def cooked(frame: bytes, version: int = 2) -> bytes:
    """An Ethernet frame as a Linux cooked capture shows it: its MAC header replaced by an SLL
    (version 1, 16 bytes) or SLL2 (20 bytes) header carrying the same protocol."""
    etype, src, rest = frame[12:14], frame[6:12] + b"\0\0", frame[14:]
    if version == 1:  # packet type 4 (sent by us), ARPHRD_ETHER, address length 6
        return struct.pack("!HHH8s", 4, 1, 6, src) + etype + rest
    return etype + struct.pack("!HIHBB8s", 0, 1, 1, 4, 6, src) + rest
