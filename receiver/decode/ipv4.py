"""IPv4 header (RFC 791)."""

from .header import Header

IPV4 = Header(
    "ipv4",
    ("v_hl", "B"),
    ("tos", "B"),
    ("len", "H"),
    ("id", "H"),
    ("off", "H"),
    ("ttl", "B"),
    ("p", "B"),
    ("sum", "H"),
    ("src", "4s"),
    ("dst", "4s"),
)
MIN_HEADER = 20
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF
