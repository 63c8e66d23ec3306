"""ICMP (RFC 792) and ICMPv6 (RFC 4443) headers, and how their type and code stand in for ports.

As Zeek does: the source "port" is the type; the destination "port" is the counterpart type of a
request/reply pair (so an echo request and its reply share one flow), or the code for one-way types.
"""

import numpy as np

from .header import Header

ICMP = Header("icmp", ("type", "B"), ("code", "B"), ("sum", "H"), ("rest", "I"))
PROTO_ICMP = 1
PROTO_ICMPV6 = 58

# type -> counterpart type (Zeek's ICMP4_counterpart / ICMP6_counterpart)
COUNTERPART_V4 = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
COUNTERPART_V6 = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 139: 140, 140: 139}


def _table(pairs: dict[int, int]) -> "np.ndarray":
    t = np.full(256, -1, np.int64)
    for k, v in pairs.items():
        t[k] = v
    return t


COUNTERPART_V4_TABLE = _table(COUNTERPART_V4)
COUNTERPART_V6_TABLE = _table(COUNTERPART_V6)


def port_pair(proto: int, icmp_type: int, code: int) -> tuple[int, int]:
    """(source "port", destination "port") of one ICMP/ICMPv6 message."""
    table = COUNTERPART_V4 if proto == PROTO_ICMP else COUNTERPART_V6
    return icmp_type, table.get(icmp_type, code)
