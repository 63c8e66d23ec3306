"""Garbage datagrams for the flood test: what a mirror target's tunnel ports may get besides real
mirrored traffic. Seeded, so a run is repeatable; each kind named, so a test can say what it sent.

Kinds (VXLAN port unless said): random bytes; wrong VXLAN flags (the I flag unset; or reserved bits
set beside it, which the decoder tolerates and counts, then decodes the frame); VXLAN inside VXLAN
nested past the decoder's limit; tiny datagrams (0-8 bytes); maximum-size datagrams (65,507 bytes:
random, or real headers claiming the whole length, far past the listener's slot); inner frames cut
inside their Ethernet, IP or transport header; and for the GENEVE port random bytes, a wrong version
and options running past the datagram. Every decodable garbage frame carries a VNI of
``GARBAGE_VNIS``, so garbage flows never mix with the real traffic's.
"""

from __future__ import annotations

import random

from tests.listen_fixtures import ether, geneve, ipv4, ipv6, tcp, udp, vxlan

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
GARBAGE_VNIS = range(5000, 5064)


def _inner(rng: random.Random, payload: int = 0) -> bytes:
    """An inner Ethernet frame of a garbage flow (IPv4 or IPv6, TCP or UDP)."""
    a, b = f"198.51.100.{rng.randrange(1, 255)}", f"203.0.113.{rng.randrange(1, 255)}"
    data = rng.randbytes(payload)
    l4, proto = ((tcp(rng.randrange(1024, 65535), 443, 0x18, data), 6) if rng.random() < 0.5
                 else (udp(rng.randrange(1024, 65535), 9999, data), 17))
    if rng.random() < 0.2:
        return ether(ipv6(f"2001:db8::{rng.randrange(1, 0xFFFF):x}", "2001:db8:1::1", proto, l4), 0x86DD)
    return ether(ipv4(a, b, proto, l4, ident=rng.randrange(65536)))


def _vni(rng: random.Random) -> int:
    return rng.choice(GARBAGE_VNIS)


def _nested(rng: random.Random, depth: int, port: int) -> bytes:
    """``depth`` VXLAN headers, each tunnel after the first inside Ethernet/IPv4/UDP to ``port``."""
    d = vxlan(_inner(rng, 8), _vni(rng))
    for _ in range(depth - 1):
        d = vxlan(ether(ipv4("10.200.0.1", "10.200.0.2", 17, udp(rng.randrange(49152, 65535), port, d))), _vni(rng))
    return d


def _max_size(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(MAX_DATAGRAM)
    # real headers; the inner IPv4 and UDP lengths claim everything after them
    body = rng.randbytes(MAX_DATAGRAM - 8 - 14 - 20 - 8)
    return vxlan(ether(ipv4("198.51.100.250", "203.0.113.250", 17, udp(40000 + rng.randrange(64), 9999, body))),
                 _vni(rng))


def _cut(rng: random.Random) -> bytes:
    """A valid frame cut inside its Ethernet, IP or transport header."""
    full = vxlan(_inner(rng, 16), _vni(rng))
    ip_hdr = 40 if full[8 + 12 : 8 + 14] == b"\x86\xdd" else 20
    return full[: rng.randrange(9, 8 + 14 + ip_hdr + 8)]


def vxlan_garbage(seed: int, n: int) -> tuple[list[bytes], list[str]]:
    """``n`` garbage datagrams for the VXLAN port and each one's kind."""
    rng = random.Random(seed)
    makers = [
        ("random", 30, lambda: rng.randbytes(rng.randrange(9, 1500))),
        ("flags_i_unset", 15, lambda: bytes([rng.randrange(256) & ~0x08]) + vxlan(_inner(rng, 32), _vni(rng))[1:]),
        ("flags_reserved", 5, lambda: vxlan(_inner(rng, 32), _vni(rng), flags=0x08 | rng.choice([0x80, 0x01, 0x44]))),
        ("nested_too_deep", 10, lambda: _nested(rng, rng.randrange(5, 10), 4789)),
        ("nested_ok", 3, lambda: _nested(rng, rng.randrange(2, 5), 4789)),
        ("tiny", 15, lambda: rng.randbytes(rng.randrange(0, 9))),
        ("cut_inner", 20, lambda: _cut(rng)),
        ("max_size", 0.05, lambda: _max_size(rng)),
    ]
    weights = [w for _, w, _ in makers]
    out, kinds = [], []
    for _ in range(n):
        kind, _, make = rng.choices(makers, weights)[0]
        out.append(make())
        kinds.append(kind)
    return out, kinds


def geneve_garbage(seed: int, n: int) -> list[bytes]:
    """``n`` garbage datagrams for the GENEVE port."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        frame = _inner(rng, 16)
        if r < 0.4:
            out.append(rng.randbytes(rng.randrange(0, 600)))
        elif r < 0.7:  # version 1..3
            out.append(bytes([rng.randrange(1, 4) << 6]) + geneve(frame, _vni(rng))[1:])
        else:  # option length past the end of the datagram
            g = bytearray(geneve(frame, _vni(rng)))
            g[0] = 0x3F
            out.append(bytes(g[: rng.randrange(8, 8 + 4 * 0x3F)]))
    return out

