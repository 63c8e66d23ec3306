"""Decoded columns: what the decoders produce for every packet of a batch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..packets import I64, U8, U64, B


class Status(enum.IntEnum):
    """Outcome of decoding one packet; every value but OK names a counted reason."""

    OK = 0
    NON_IP = 1  # ARP and other non-IP frames: counted, no flow
    TRUNCATED_LINK = 2
    TRUNCATED_TUNNEL = 3
    VXLAN_I_FLAG_UNSET = 4
    GENEVE_BAD_VERSION = 5
    TUNNEL_TOO_DEEP = 7
    TRUNCATED_IP_HEADER = 8
    MALFORMED_IP = 9
    TRUNCATED_L4_HEADER = 10
    MALFORMED_L4 = 11
    SLOW_PATH = 12  # fast path only: decode this packet with the slow path
    MALFORMED_IPV6_EXTENSION = 13
    UNSUPPORTED_LINK = 14

    @property
    def counter(self) -> str:
        return self.name.lower()


class Frag(enum.IntEnum):
    NONE = 0
    FIRST = 1  # offset 0 with more-fragments: carries the ports
    LATER = 2  # offset > 0: no transport header


@dataclass
class Decoded:
    """Per-packet columns (length n). Addresses are 128-bit as (hi, lo); IPv4 is IPv4-mapped."""

    status: U8
    vni: I64  # innermost tunnel's VNI, -1 if none
    inner_start: I64  # absolute offset of the innermost Ethernet frame, -1 if none
    depth: I64  # tunnel nesting depth
    vxlan_reserved: B  # a VXLAN header had reserved bits set (tolerated, counted)
    ipver: U8
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    proto: I64
    sport: I64
    dport: I64
    iplen: I64  # IP total length (IPv6: 40 + payload length)
    tcpflags: I64
    pay_off: I64  # absolute offset of the transport payload
    pay_len: I64  # payload length from the IP length
    pay_cap: I64  # payload bytes present in the buffer
    truncated: B  # fewer bytes captured than the IP length says
    frag: U8
    ipid: I64
    tcpseq: I64  # TCP sequence and acknowledgement numbers (0 when not TCP)
    tcpack: I64

    @classmethod
    def empty(cls, n: int) -> Decoded:
        cols: dict[str, Any] = {}
        for f in fields(cls):
            t = str(f.type)
            if t == "U8":
                cols[f.name] = np.zeros(n, np.uint8)
            elif t == "U64":
                cols[f.name] = np.zeros(n, np.uint64)
            elif t == "B":
                cols[f.name] = np.zeros(n, np.bool_)
            else:
                cols[f.name] = np.zeros(n, np.int64)
        d = cls(**cols)
        d.vni[:] = -1
        d.inner_start[:] = -1
        return d

    def row(self, i: int) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)[i]) for f in fields(self)}

    def assign(self, i: int, row: dict[str, int]) -> None:
        for k, v in row.items():
            getattr(self, k)[i] = v
