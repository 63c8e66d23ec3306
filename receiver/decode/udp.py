"""UDP header (RFC 768)."""

from .header import Header

UDP = Header("udp", ("sport", "H"), ("dport", "H"), ("ulen", "H"), ("sum", "H"))
PROTO = 17
