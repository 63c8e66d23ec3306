"""IPv6 header (RFC 8200) and the extension headers that precede the upper layer."""

from .header import Header

IPV6 = Header("ipv6", ("v_fc_flow", "I"), ("plen", "H"), ("nxt", "B"), ("hlim", "B"), ("src", "16s"), ("dst", "16s"))
# Extension headers walked (by the slow path, with dpkt) to reach the upper-layer protocol.
HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS, MOBILITY, HIP, SHIM6 = 0, 43, 44, 51, 60, 135, 139, 140
EXTENSION_HEADERS = frozenset({HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS, MOBILITY, HIP, SHIM6})
MAX_EXTENSION_HEADERS = 8
