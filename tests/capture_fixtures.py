"""Writers for test captures: classic pcap (both magics, both byte orders) and pcapng."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


@dataclass
class Rec:
    ts_sec: int
    ts_frac: int  # micro- or nanoseconds, as the file says
    data: bytes
    wirelen: int | None = None

    @property
    def orig(self) -> int:
        return self.wirelen if self.wirelen is not None else len(self.data)


def pcap_bytes(
    recs: list[Rec], big_endian: bool = False, nanos: bool = False, linktype: int = 1, snaplen: int = 65535
) -> bytes:
    e = ">" if big_endian else "<"
    out = bytearray(
        struct.pack(e + "IHHiIII", PCAP_MAGIC_NS if nanos else PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype)
    )
    for r in recs:
        out += struct.pack(e + "IIII", r.ts_sec, r.ts_frac, len(r.data), r.orig)
        out += r.data
    return bytes(out)


def random_records(n: int, seed: int, lo: int = 14, hi: int = 1600, nanos: bool = False) -> list[Rec]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        size = int(rng.integers(lo, hi))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        frac = int(rng.integers(0, 1_000_000_000 if nanos else 1_000_000))
        wl = size + int(rng.integers(0, 100)) if rng.random() < 0.1 else None
        recs.append(Rec(1_600_000_000 + i, frac, data, wl))
    return recs


# -- pcapng -------------------------------------------------------------------------------


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    blen = len(body) + 12
    return struct.pack(e + "II", btype, blen) + body + struct.pack(e + "I", blen)


def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


@dataclass
class NgWriter:
    big_endian: bool = False
    parts: list[bytes] = field(default_factory=list)

    @property
    def e(self) -> str:
        return ">" if self.big_endian else "<"

    def shb(self) -> NgWriter:
        body = struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
        self.parts.append(_block(self.e, 0x0A0D0D0A, body))
        return self

    def idb(self, linktype: int, snaplen: int = 0, tsresol: int | None = None, tsoffset: int = 0) -> NgWriter:
        body = struct.pack(self.e + "HHI", linktype, 0, snaplen)
        opts = b""
        if tsresol is not None:
            opts += _opt(self.e, 9, bytes([tsresol]))
        if tsoffset:
            opts += _opt(self.e, 14, struct.pack(self.e + "q", tsoffset))
        if opts:
            opts += _opt(self.e, 0, b"")
        self.parts.append(_block(self.e, 1, body + opts))
        return self

    def epb(self, iface: int, ts_units: int, data: bytes, wirelen: int | None = None) -> NgWriter:
        body = struct.pack(
            self.e + "IIIII",
            iface,
            ts_units >> 32,
            ts_units & 0xFFFFFFFF,
            len(data),
            wirelen if wirelen is not None else len(data),
        )
        self.parts.append(_block(self.e, 6, body + data))
        return self

    def opb(self, iface: int, ts_units: int, data: bytes) -> NgWriter:
        body = struct.pack(self.e + "HHIIII", iface, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
        self.parts.append(_block(self.e, 2, body + data))
        return self

    def spb(self, data: bytes, wirelen: int | None = None) -> NgWriter:
        body = struct.pack(self.e + "I", wirelen if wirelen is not None else len(data))
        self.parts.append(_block(self.e, 3, body + data))
        return self

    def raw_block(self, btype: int, body: bytes) -> NgWriter:
        self.parts.append(_block(self.e, btype, body))
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def eth_frame(payload_len: int, seed: int = 0) -> bytes:
    """An Ethernet II frame carrying an IPv4/UDP datagram (tshark decodes it cleanly)."""
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, payload_len, dtype=np.uint8).tobytes()
    udp = struct.pack("!HHHH", 1000 + seed % 1000, 2000, 8 + payload_len, 0) + payload
    ip = (
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2])
        )
        + udp
    )
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip
