"""The numpy fast path and the per-packet slow path decode every packet identically.

Hypothesis builds packets from valid parts (tunnels, VLAN tags, IPv4 options and fragments,
IPv6 extension headers, TCP/UDP/ICMP/other) and then mutates them (cuts, flipped bytes,
garbage); every column of the fast path (with its slow-path hand-offs) must equal the
slow path's for the same packet.
"""

from __future__ import annotations

import struct

import dpkt
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.config.engine import EngineConfig
from receiver.decode import Status, decode, decode_slow
from receiver.packets import Layer, PacketBatch
from tests import packet_factory as pf

CFG = EngineConfig(max_tunnel_depth=2)
ADDRS4 = ["10.1.0.1", "10.1.0.2", "192.0.2.7"]
ADDRS6 = ["fd00::1", "fd00::2", "2001:db8::9"]


def _ipv4_with(frame: bytes, options: bytes = b"", frag_off: int = 0, mf: bool = False) -> bytes:
    """Rewrite the IPv4 header of an Ethernet/IPv4 frame: add options, set fragment fields."""
    eth, ip = frame[:14], bytearray(frame[14:])
    ihl = (ip[0] & 0x0F) * 4
    hdr = bytearray(ip[:ihl]) + options
    hdr[0] = 0x40 | (len(hdr) // 4)
    rest = ip[ihl:]
    struct.pack_into(">H", hdr, 2, len(hdr) + len(rest))
    struct.pack_into(">H", hdr, 6, (0x2000 if mf else 0) | frag_off)
    return eth + bytes(hdr) + bytes(rest)


def _ipv6_with_ext(frame: bytes, chain: list[int]) -> bytes:
    """Insert IPv6 extension headers (8 bytes each) before the upper layer of an Ethernet/IPv6 frame."""
    eth, ip = frame[:14], frame[14:]
    nxt, rest = ip[6], ip[40:]
    exts = b""
    for i, kind in enumerate(chain):
        following = chain[i + 1] if i + 1 < len(chain) else nxt
        if kind == 44:  # fragment header: offset 0, more-fragments, id 77
            exts += struct.pack(">BBHI", following, 0, 1, 77)
        else:
            exts += struct.pack(">BB6s", following, 0, b"\x01\x04\0\0\0\0")
    first = chain[0] if chain else nxt
    hdr = bytearray(ip[:40])
    hdr[6] = first
    struct.pack_into(">H", hdr, 4, len(exts) + len(rest))
    return eth + bytes(hdr) + exts + rest


@st.composite
def inner_frames(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    addrs = ADDRS6 if v6 else ADDRS4
    src, dst = draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    payload = draw(st.binary(max_size=80))
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    if kind == "tcp":
        frame = pf.tcp(src, dst, sport, dport, flags=draw(st.integers(0, 255)), payload=payload)
    elif kind == "udp":
        frame = pf.udp(src, dst, sport, dport, payload)
    elif kind == "icmp":
        frame = pf.icmp(src, dst, draw(st.integers(0, 255)), draw(st.integers(0, 255)), payload)
    else:
        frame = pf.udp(src, dst, sport, dport, payload)
        frame = frame[:14 + 6] + bytes([draw(st.sampled_from([2, 47, 50, 132]))]) + frame[14 + 7 :] if not v6 else (
            frame[:14 + 6] + bytes([draw(st.sampled_from([2, 47, 50, 59, 132]))]) + frame[14 + 7 :]
        )
    if not v6 and draw(st.booleans()):
        opts = draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00" * 2]))
        frame = _ipv4_with(frame, opts, frag_off=draw(st.sampled_from([0, 0, 10])), mf=draw(st.booleans()))
    if v6 and draw(st.booleans()):
        frame = _ipv6_with_ext(frame, draw(st.lists(st.sampled_from([0, 43, 44, 60]), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        frame = pf.vlan(frame, draw(st.integers(0, 4095)), draw(st.sampled_from([0x8100, 0x88A8])))
    return frame


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    frame = draw(inner_frames())
    for _ in range(draw(st.integers(0, 3))):
        wrap = draw(st.sampled_from(["vxlan", "geneve", "geneve-ip", "none"]))
        if wrap == "vxlan":
            flags = draw(st.sampled_from([0x08, 0x08, 0x0C, 0]))
            frame = pf.vxlan(frame, vni=draw(st.integers(0, 2**24 - 1)), flags=flags)
        elif wrap == "geneve":
            frame = pf.geneve(frame, vni=draw(st.integers(0, 2**24 - 1)), options=b"\0" * 4 * draw(st.integers(0, 3)))
        elif wrap == "geneve-ip":
            frame = pf.geneve(frame[14:], proto=0x0800 if frame[12:14] == b"\x08\x00" else 0x86DD)
    # mutations: cut short, flip bytes, or leave as is
    mode = draw(st.sampled_from(["as-is", "cut", "flip", "cut+flip"]))
    data = bytearray(frame)
    if "flip" in mode and data:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    if "cut" in mode:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _same(batch: PacketBatch) -> None:
    fast, _ = decode(batch, CFG)
    slow = decode_slow(batch, CFG)
    for name in fast.__dataclass_fields__:
        a, b = getattr(fast, name), getattr(slow, name)
        bad = np.flatnonzero(a != b)
        assert not bad.size, (name, bad[:5], [batch.frame(int(i)).hex() for i in bad[:2]], a[bad[:5]], b[bad[:5]])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=40))
def test_fast_and_slow_paths_agree_on_ethernet_frames(frames: list[bytes]) -> None:
    _same(PacketBatch.from_frames(frames))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=30))
def test_fast_and_slow_paths_agree_on_vxlan_datagrams(frames: list[bytes]) -> None:
    # the live listener hands over UDP payloads: strip the outer Ethernet/IPv4/UDP (42 bytes)
    datagrams = [f[42:] for f in frames]
    _same(PacketBatch.from_frames(datagrams, layer=Layer.VXLAN))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=30), st.sampled_from(list(Layer)))
def test_fast_and_slow_paths_agree_on_garbage(blobs: list[bytes], layer: Layer) -> None:
    _same(PacketBatch.from_frames(blobs, layer=layer))


def test_ipv6_extension_headers_take_the_slow_path_and_reach_the_transport_header() -> None:
    frame = _ipv6_with_ext(pf.tcp("fd00::1", "fd00::2", 1234, 80, payload=b"hello"), [0, 60])
    batch = PacketBatch.from_frames([pf.vxlan(frame, vni=5)])
    d, slow = decode(batch, CFG)
    assert slow == 1
    assert d.status[0] == Status.OK and d.proto[0] == 6 and (d.sport[0], d.dport[0]) == (1234, 80)
    assert d.pay_len[0] == 5 and d.vni[0] == 5


def test_ipv6_fragment_header_marks_first_fragment() -> None:
    frame = _ipv6_with_ext(pf.udp("fd00::1", "fd00::2", 53, 5353, b"x" * 20), [44])
    d, _ = decode(PacketBatch.from_frames([frame]), CFG)
    assert d.status[0] == Status.OK and d.frag[0] == 1 and d.ipid[0] == 77 and d.dport[0] == 5353


def test_dpkt_reads_the_factory_frames() -> None:
    # the factory itself is sane: dpkt decodes what it builds
    eth = dpkt.ethernet.Ethernet(pf.vxlan(pf.tcp("10.0.0.1", "10.0.0.2", 1, 2, payload=b"ab")))
    assert isinstance(eth.data.data, dpkt.udp.UDP) and eth.data.data.dport == 4789
