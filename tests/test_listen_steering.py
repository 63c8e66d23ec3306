"""Kernel steering: a reuseport group with the cBPF program sends both directions of a flow to one socket."""

from __future__ import annotations

import random
import socket
import time

import pytest

from receiver.listen.steering import build_program, symmetric_hash
from receiver.packets import Layer
from tests.listen_fixtures import ether, geneve, ipv4, ipv6, udp, vxlan


def _group_for(layer: Layer, workers: int) -> tuple[list[socket.socket], int]:
    from receiver.listen import steering
    from receiver.listen.sockets import open_socket

    first, _ = open_socket("127.0.0.1", 0, socket.AF_INET, 16 << 20, reuseport=True)
    port = first.getsockname()[1]
    socks = [first] + [open_socket("127.0.0.1", port, socket.AF_INET, 16 << 20, reuseport=True)[0]
                       for _ in range(workers - 1)]
    steering.attach(first, layer, workers)
    return socks, port


def _send_spread(datagrams: list[bytes], port: int) -> None:
    """Each datagram from its own ephemeral source port: without steering the kernel's outer-4-tuple
    hash would scatter them over the group."""
    for i, d in enumerate(datagrams):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(d, ("127.0.0.1", port))
        if i % 100 == 99:
            time.sleep(0.001)


def _collect(socks: list[socket.socket], n: int) -> list[list[bytes]]:
    out: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + 5
    while sum(map(len, out)) < n and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                while True:
                    out[i].append(s.recv(65535))
            except BlockingIOError:
                pass
        time.sleep(0.01)
    assert sum(map(len, out)) == n
    return out


def _pair_of(inner: bytes) -> tuple[bytes, bytes]:
    if inner[0] >> 4 == 4:
        return inner[12:16], inner[16:20]
    return inner[8:24], inner[24:40]


@pytest.mark.parametrize("workers", [2, 3])
def test_vxlan_flows_keep_both_directions_on_one_socket(workers: int) -> None:
    socks, port = _group_for(Layer.VXLAN, workers)
    rng = random.Random(workers)
    pairs = [(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
              f"172.16.{rng.randrange(256)}.{rng.randrange(1, 255)}") for _ in range(150)]
    datagrams = []
    for k, (a, b) in enumerate(pairs):
        fwd = ipv4(a, b, 17, udp(1000 + k, 53, b"q"))
        rev = ipv4(b, a, 17, udp(53, 1000 + k, b"r"))
        datagrams += [vxlan(ether(fwd)), vxlan(ether(rev)), vxlan(ether(rev, vlan=12)), vxlan(ether(fwd))]
    _send_spread(datagrams, port)
    got = _collect(socks, len(datagrams))
    where: dict[frozenset[bytes], set[int]] = {}
    for w, dgs in enumerate(got):
        for d in dgs:
            eth = d[8:]
            l3 = eth[18:] if eth[12:14] == b"\x81\x00" else eth[14:]
            where.setdefault(frozenset(_pair_of(l3)), set()).add(w)
    assert len(where) == len(pairs)
    for (a, b) in pairs:
        sa, sb = socket.inet_aton(a), socket.inet_aton(b)
        assert where[frozenset((sa, sb))] == {symmetric_hash(sa, sb, workers)}
    assert all(len(g) > len(datagrams) / workers / 3 for g in got)  # the load is spread
    for s in socks:
        s.close()


def test_geneve_with_options_ipv6_and_direct_ip_are_steered() -> None:
    socks, port = _group_for(Layer.GENEVE, 2)
    datagrams, expect = [], []
    for k in range(60):
        a6, b6 = f"fd00::{k + 1:x}", f"fd00:1::{k + 7:x}"
        a4, b4 = f"10.9.{k}.1", f"10.8.{k}.2"
        opts = b"\x01\x02\x03\x04" * (k % 4)  # 0-3 option words
        for src, dst, mk in ((a6, b6, "6"), (b6, a6, "6"), (a4, b4, "4"), (b4, a4, "4")):
            if mk == "6":
                l3 = ipv6(src, dst, 17, udp(5, 6, b"x"))
                datagrams.append(geneve(ether(l3, 0x86DD), options=opts))
                expect.append(symmetric_hash(socket.inet_pton(socket.AF_INET6, src),
                                             socket.inet_pton(socket.AF_INET6, dst), 2))
            else:
                l3 = ipv4(src, dst, 6, b"\0" * 20)
                datagrams.append(geneve(l3, protocol=0x0800, options=opts))  # IPv4 directly in GENEVE
                expect.append(symmetric_hash(socket.inet_aton(src), socket.inet_aton(dst), 2))
    _send_spread(datagrams, port)
    got = _collect(socks, len(datagrams))
    index = {d: i for i, d in enumerate(datagrams)}
    for w, dgs in enumerate(got):
        for d in dgs:
            assert expect[index[d]] == w
    for s in socks:
        s.close()


def test_unparseable_datagrams_all_go_to_worker_zero() -> None:
    socks, port = _group_for(Layer.VXLAN, 2)
    junk = [b"", b"\x08", b"garbage" * 3, vxlan(ether(b"\x00" * 28, 0x0806))]  # empty, short, ARP
    _send_spread(junk * 5, port)
    got = _collect(socks, len(junk) * 5)
    assert len(got[0]) == len(junk) * 5 and got[1] == []
    for s in socks:
        s.close()


def test_program_shape() -> None:
    for layer in (Layer.VXLAN, Layer.GENEVE):
        prog = build_program(layer, 4)
        assert 10 < len(prog) < 200
    with pytest.raises(ValueError):
        build_program(Layer.ETHERNET, 2)
    assert symmetric_hash(b"\x0a\0\0\1", b"\x0a\0\0\2", 7) == symmetric_hash(b"\x0a\0\0\2", b"\x0a\0\0\1", 7)
