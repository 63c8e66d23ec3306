"""TCP header (RFC 9293)."""

from .header import Header

TCP = Header(
    "tcp",
    ("sport", "H"),
    ("dport", "H"),
    ("seq", "I"),
    ("ack", "I"),
    ("off_x2", "B"),
    ("flags", "B"),
    ("win", "H"),
    ("sum", "H"),
    ("urp", "H"),
)
PROTO = 6
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
FLAG_LETTERS = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "A"), (URG, "U"), (ECE, "E"), (CWR, "C"))


def _letters(flags: int) -> str:
    return "".join(letter for bit, letter in FLAG_LETTERS if flags & bit)


_FLAG_STRINGS = tuple(_letters(f) for f in range(256))


def flag_letters(flags: int) -> str:
    """Letters of the TCP flags set, in a fixed order (e.g. "SA")."""
    return _FLAG_STRINGS[flags & 0xFF]
