"""Flow keys: canonical endpoint order and a 64-bit hash, computed for a whole batch.

A flow is keyed by (VNI, IP version and protocol, endpoint A, endpoint B) where A is the
lower of the two (address, port) endpoints, so both directions of a conversation get the
same key; ``direction`` says whether a packet went A->B (0) or B->A (1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..packets import I64, U64

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: U64) -> U64:
    """splitmix64's finaliser: a cheap, well-spread 64-bit mix."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _S30)) * _M2
        x = (x ^ (x >> _S27)) * _M3
        return x ^ (x >> _S31)


@dataclass
class Keys:
    vni: I64
    proto: I64  # IP protocol + 256 for IPv6
    a_hi: U64
    a_lo: U64
    a_port: I64
    b_hi: U64
    b_lo: U64
    b_port: I64
    direction: I64  # 0: packet went A->B, 1: B->A
    hash: U64

    def take(self, sel: I64 | slice) -> Keys:
        return Keys(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def make_keys(
    vni: I64, proto: I64, s_hi: U64, s_lo: U64, sport: I64, d_hi: U64, d_lo: U64, dport: I64
) -> Keys:
    swap = (s_hi > d_hi) | ((s_hi == d_hi) & ((s_lo > d_lo) | ((s_lo == d_lo) & (sport > dport))))
    a_hi = np.where(swap, d_hi, s_hi)
    a_lo = np.where(swap, d_lo, s_lo)
    b_hi = np.where(swap, s_hi, d_hi)
    b_lo = np.where(swap, s_lo, d_lo)
    a_port = np.where(swap, dport, sport)
    b_port = np.where(swap, sport, dport)
    with np.errstate(over="ignore"):
        # fold the fields with odd multipliers, then one full mix (collisions are detected and
        # counted by the flow table, which compares whole keys)
        ports = (a_port.astype(np.uint64) << np.uint64(16)) | b_port.astype(np.uint64)
        tag = ((vni.astype(np.uint64) & np.uint64(0xFFFFFFFF)) << np.uint64(16)) | proto.astype(np.uint64)
        h = a_lo * _M1
        h ^= mix64(b_lo + _M2)
        h += (a_hi ^ (b_hi * _M3)) * _M2
        h ^= (ports << np.uint64(24)) ^ (tag * _M1)
        h = mix64(h)
    return Keys(vni, proto, a_hi, a_lo, a_port, b_hi, b_lo, b_port, swap.astype(np.int64), h)
