"""The reference the issue names: dpkt decoding every packet, aggregating flows in a dict.

What a careful Python programmer writes without vectorisation: ``dpkt.pcap.Reader``, an
object tree per packet (outer Ethernet/IP/UDP, VXLAN, inner Ethernet/IP/TCP-UDP), and a
bidirectional 5-tuple dict with packets and IP bytes per direction.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import dpkt

VXLAN_PORT = 4789


def aggregate(path: str | os.PathLike[str], limit: int | None = None) -> tuple[int, dict[tuple[Any, ...], list[int]]]:
    """Decode the first ``limit`` packets of ``path``; returns (packets read, flows)."""
    flows: dict[tuple[Any, ...], list[int]] = {}
    n = 0
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        for _ts, buf in itertools.islice(reader, limit):
            n += 1
            try:
                eth = dpkt.ethernet.Ethernet(buf)
                outer = eth.data
                udp = outer.data
                if not isinstance(udp, dpkt.udp.UDP) or udp.dport != VXLAN_PORT:
                    continue
                vx = bytes(udp.data)
                vni = struct.unpack("!I", vx[4:8])[0] >> 8
                inner = dpkt.ethernet.Ethernet(vx[8:])
                ip = inner.data
                if isinstance(ip, dpkt.ip.IP):
                    src, dst, proto, iplen = ip.src, ip.dst, ip.p, ip.len
                elif isinstance(ip, dpkt.ip6.IP6):
                    src, dst, proto, iplen = ip.src, ip.dst, ip.nxt, ip.plen + 40
                else:
                    continue
                l4 = ip.data
                sport = getattr(l4, "sport", 0)
                dport = getattr(l4, "dport", 0)
            except (dpkt.UnpackError, struct.error, AttributeError, IndexError):
                continue
            a, b = (src, sport), (dst, dport)
            if a <= b:
                key, d = (vni, proto, a, b), 0
            else:
                key, d = (vni, proto, b, a), 1
            st = flows.get(key)
            if st is None:
                st = flows[key] = [0, 0, 0, 0]
            st[d] += 1
            st[2 + d] += iplen
    return n, flows
