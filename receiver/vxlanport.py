"""The outer UDP source port a VXLAN encapsulator picks for an inner flow.

RFC 7348 (section 5) recommends that the outer source port be "a hash of
fields from the inner packet" so that ECMP and RSS spread tunnels by inner flow,
within the dynamic/private port range. Linux (``udp_flow_src_port`` in
``include/net/udp.h``) takes the skb flow hash of the inner 5-tuple, folds it
(``hash ^= hash << 16``) and scales it into the local port range
(``net.ipv4.ip_local_port_range``, by default 32768-60999):
``port = ((u64)hash * (max - min)) >> 32) + min``. Linux's flow hash is made
direction-independent (``__flow_hash_consistentify`` orders the addresses and
ports), so both directions of a connection travel with the same outer port.
AWS does not document its exact function; mirrored traffic seen in practice
keeps one outer source port per inner flow, as this does.

The hash here is our own (a murmur3-style finaliser over the ordered tuple),
not the kernel's siphash: what matters is the property (same port for both
directions of a flow, spread over the range), not bit equality.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PORT_MIN = 32768
PORT_MAX = 60999

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_MASK32 = np.uint64(0xFFFFFFFF)


def _fmix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    h = h ^ (h >> np.uint64(33))
    h = h * _M1
    h = h ^ (h >> np.uint64(33))
    h = h * _M2
    return h ^ (h >> np.uint64(33))


def flow_hash(
    a_hi: npt.ArrayLike,
    a_lo: npt.ArrayLike,
    b_hi: npt.ArrayLike,
    b_lo: npt.ArrayLike,
    a_port: npt.ArrayLike,
    b_port: npt.ArrayLike,
    proto: npt.ArrayLike,
) -> npt.NDArray[np.uint64]:
    """A symmetric 32-bit hash (in uint64) of inner 5-tuples, vectorised.

    Addresses are given as two 64-bit halves (IPv4: ``hi = 0``, ``lo`` = the
    address). Swapping the ``a`` and ``b`` sides gives the same hash.
    """
    with np.errstate(over="ignore"):
        ah, al = np.asarray(a_hi, np.uint64), np.asarray(a_lo, np.uint64)
        bh, bl = np.asarray(b_hi, np.uint64), np.asarray(b_lo, np.uint64)
        ap, bp = np.asarray(a_port, np.uint64), np.asarray(b_port, np.uint64)
        a_first = (ah < bh) | ((ah == bh) & ((al < bl) | ((al == bl) & (ap <= bp))))
        h1, l1, p1 = np.where(a_first, ah, bh), np.where(a_first, al, bl), np.where(a_first, ap, bp)
        h2, l2, p2 = np.where(a_first, bh, ah), np.where(a_first, bl, al), np.where(a_first, bp, ap)
        h = _fmix(np.asarray(proto, np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
        for v in (h1, l1, h2, l2, (p1 << np.uint64(16)) | p2):
            h = _fmix(h ^ v)
        return h & _MASK32


def source_port(
    hash32: npt.NDArray[np.uint64], port_min: int = PORT_MIN, port_max: int = PORT_MAX
) -> npt.NDArray[np.uint16]:
    """Scale 32-bit flow hashes into ``[port_min, port_max)`` the way Linux does."""
    with np.errstate(over="ignore"):
        h = hash32 & _MASK32
        h = (h ^ (h << np.uint64(16))) & _MASK32
        port = ((h * np.uint64(port_max - port_min)) >> np.uint64(32)) + np.uint64(port_min)
    return port.astype(np.uint16)


def source_port_for(
    src: bytes, dst: bytes, sport: int, dport: int, proto: int, port_min: int = PORT_MIN, port_max: int = PORT_MAX
) -> int:
    """The outer source port for one inner flow (addresses as 4 or 16 packed bytes)."""

    def halves(a: bytes) -> tuple[int, int]:
        a = a.rjust(16, b"\0")
        return int.from_bytes(a[:8], "big"), int.from_bytes(a[8:], "big")

    (ah, al), (bh, bl) = halves(src), halves(dst)
    h = flow_hash([ah], [al], [bh], [bl], [sport], [dport], [proto])
    return int(source_port(h, port_min, port_max)[0])
