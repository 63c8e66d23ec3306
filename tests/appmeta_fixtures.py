"""Inner L4 payloads of the Zeek traces (dpkt, with a small VXLAN/GENEVE unwrapper)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt


@dataclass
class Segment:
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    flags: int = 0


def _ip_layer(eth_or_ip: bytes, is_ip: bool = False) -> dpkt.Packet | None:
    if is_ip:
        v = eth_or_ip[0] >> 4 if eth_or_ip else 0
        return dpkt.ip.IP(eth_or_ip) if v == 4 else dpkt.ip6.IP6(eth_or_ip) if v == 6 else None
    eth = dpkt.ethernet.Ethernet(eth_or_ip)
    return eth.data if isinstance(eth.data, dpkt.ip.IP | dpkt.ip6.IP6) else None


def _unwrap(ip: dpkt.Packet, depth: int = 0) -> dpkt.Packet:
    """Follow VXLAN (4789) and GENEVE (6081) to the innermost IP packet."""
    l4 = ip.data
    if depth > 5 or not isinstance(l4, dpkt.udp.UDP):
        return ip
    data = bytes(l4.data)
    try:
        if l4.dport == 4789 and len(data) >= 8:
            inner = _ip_layer(data[8:])
        elif l4.dport == 6081 and len(data) >= 8:
            optlen = (data[0] & 0x3F) * 4
            (ptype,) = struct.unpack_from("!H", data, 2)
            body = data[8 + optlen :]
            inner = _ip_layer(body, is_ip=ptype in (0x0800, 0x86DD)) if ptype != 0x0806 else None
        else:
            return ip
    except (dpkt.UnpackError, IndexError, struct.error):
        return ip
    return _unwrap(inner, depth + 1) if inner is not None else ip


def inner_segments(path: Path) -> list[Segment]:
    out = []
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if path.suffix == ".pcapng" else dpkt.pcap.Reader(f)
        for _ts, buf in reader:
            try:
                ip = _ip_layer(buf)
            except (dpkt.UnpackError, IndexError):
                continue
            if ip is None:
                continue
            ip = _unwrap(ip)
            l4 = ip.data
            if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                continue
            src = str(ipaddress.ip_address(ip.src))
            dst = str(ipaddress.ip_address(ip.dst))
            proto = 6 if isinstance(l4, dpkt.tcp.TCP) else 17
            flags = l4.flags if proto == 6 else 0
            out.append(Segment(proto, src, l4.sport, dst, l4.dport, bytes(l4.data), flags))
    return out
