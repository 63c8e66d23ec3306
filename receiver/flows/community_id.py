"""Community ID v1: the flow hash Zeek, Suricata, Arkime and others share.

Spec: https://github.com/corelight/community-id-spec. The hash input is, in network byte
order: seed (2 bytes), the smaller endpoint's address, the other address, the IP protocol
(1 byte), a zero byte, then for TCP/UDP/SCTP/ICMP/ICMPv6 the two ports (2 bytes each). The
endpoints are ordered so that the smaller ``(address, port)`` comes first. The result is
``"1:"`` plus the base64 of the SHA1 digest.

ICMP and ICMPv6 carry no ports: as in Zeek, the message type stands in the source port and
the "counterpart" type (for request/response types) or else the code in the destination
port. One-way types (no counterpart) are never reordered. Passing either the raw
``(type, code)`` or Zeek's ``(type, counterpart)`` gives the same result.
"""

from __future__ import annotations

import hashlib
import ipaddress
from binascii import b2a_base64

TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
_PORT_PROTOS = frozenset((TCP, UDP, ICMP, ICMP6, SCTP))
_PROTO_ZERO = tuple(bytes((p, 0)) for p in range(256))  # the protocol byte and the zero byte after it

# type -> counterpart type (Zeek's ICMP4_counterpart / ICMP6_counterpart)
ICMP4_COUNTERPART = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_COUNTERPART = {
    128: 129, 129: 128,  # echo request / reply
    130: 131, 131: 130,  # MLD query / report
    133: 134, 134: 133,  # router solicitation / advertisement
    135: 136, 136: 135,  # neighbor solicitation / advertisement
    139: 140, 140: 139,  # who-are-you request / reply
    144: 145, 145: 144,  # home agent address discovery request / reply
}  # fmt: skip


def icmp_ports(proto: int, icmp_type: int, code: int) -> tuple[int, int, bool]:
    """``(sport, dport, one_way)`` standing in for ports of an ICMP/ICMPv6 message."""
    table = ICMP4_COUNTERPART if proto == ICMP else ICMP6_COUNTERPART
    other = table.get(icmp_type)
    if other is None:
        return icmp_type, code, True
    return icmp_type, other, False


def _addr(a: bytes | str) -> bytes:
    if isinstance(a, str):
        return ipaddress.ip_address(a).packed
    if len(a) not in (4, 16):
        raise ValueError(f"an IP address is 4 or 16 bytes, not {len(a)}")
    return a


def community_id_v1(
    proto: int,
    saddr: bytes | str,
    daddr: bytes | str,
    sport: int = 0,
    dport: int = 0,
    seed: int = 0,
    *,
    b64: bool = True,
) -> str:
    """The Community ID v1 string of a flow (addresses packed, or as text).

    For ICMP (1) and ICMPv6 (58), ``sport``/``dport`` are the type and code. For protocols
    other than TCP, UDP, SCTP and the ICMPs the ports are ignored.
    """
    sa, da = _addr(saddr), _addr(daddr)
    if len(sa) != len(da):
        raise ValueError("both addresses must be of the same family")
    digest = hashlib.sha1(_hash_input(proto, sa, da, sport, dport, seed), usedforsecurity=False)
    return "1:" + (b2a_base64(digest.digest(), newline=False).decode() if b64 else digest.hexdigest())


def community_id_packed(proto: int, sa: bytes, da: bytes, sport: int, dport: int) -> str:
    """``community_id_v1`` with seed 0 for packed addresses of one family (not checked): the
    flow-record path, without the argument checks."""
    data = _hash_input(proto, sa, da, sport, dport, 0)
    return "1:" + b2a_base64(hashlib.sha1(data, usedforsecurity=False).digest(), newline=False).decode()


def _hash_input(proto: int, sa: bytes, da: bytes, sport: int, dport: int, seed: int) -> bytes:
    has_ports = proto in _PORT_PROTOS
    one_way = False
    if proto in (ICMP, ICMP6):
        sport, dport, one_way = icmp_ports(proto, sport, dport)
    if not has_ports:
        sport = dport = 0
    if not one_way and (sa > da or (sa == da and sport > dport)):
        sa, da, sport, dport = da, sa, dport, sport
    data = (seed & 0xFFFF).to_bytes(2, "big") + sa + da + _PROTO_ZERO[proto & 0xFF]
    if has_ports:
        data += ((sport & 0xFFFF) << 16 | (dport & 0xFFFF)).to_bytes(4, "big")
    return data
