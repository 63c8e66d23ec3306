"""Kernel steering of tunnel datagrams to worker sockets: a classic BPF reuseport program.

Every worker owns one socket per listen address, all in one SO_REUSEPORT group. Without
steering the kernel picks a socket by a hash of the *outer* 4-tuple; AWS sets the outer
source port from a hash of the inner 5-tuple, so the two directions of one flow usually
land on different workers and their flow records would split. The program attached here
with ``SO_ATTACH_REUSEPORT_CBPF`` reads the *inner* addresses instead and returns
``symmetric_hash(src, dst) % workers`` as the index of the socket in the group (sockets
are indexed in the order they joined, which is worker order: the supervisor opens them).

Verified on Linux 6.x loopback (``tests/test_listen_steering.py``): for a UDP reuseport
group, the program's packet data starts at the UDP payload, so offset 0 is the first byte of
the VXLAN or GENEVE header.

What the program understands: VXLAN (8-byte header, inner Ethernet), GENEVE (variable
options, inner Ethernet, IPv4 or IPv6 directly), one 802.1Q/802.1ad tag, inner IPv4 and
IPv6. Anything else (ARP, garbage, truncated headers) returns 0: all such datagrams go to
worker 0, which is still consistent for both directions. The hash adds the address words
(addition commutes, so swapping source and destination gives the same value) and mixes
the sum, so flows between two hosts always meet on one worker.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

from ..packets import Layer

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B_ = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM = 0x00, 0x20, 0x40, 0x60
ADD, MUL, AND, LSH, RSH, MOD, XOR = 0x00, 0x20, 0x50, 0x60, 0x70, 0x90, 0xA0
JA, JEQ = 0x00, 0x10
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_TEB = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x6558
M_ACC, M_TMP, M_OFF = 0, 1, 15


@dataclass
class _Ins:
    code: int
    k: int = 0
    jt: str | int = 0  # label or relative offset
    jf: str | int = 0
    label: str | None = None  # a label placed *at* this instruction


class _Prog:
    """A tiny cBPF assembler with labels."""

    def __init__(self) -> None:
        self.ins: list[_Ins] = []
        self._pending: str | None = None

    def at(self, label: str) -> None:
        self._pending = label

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.ins.append(_Ins(code, k & 0xFFFFFFFF, jt, jf, self._pending))
        self._pending = None

    def ja(self, label: str) -> None:
        self.op(JMP | JA, 0, label, 0)

    def jeq(self, value: int, target: str) -> None:
        self.op(JMP | JEQ | K, value, target, 0)

    def assemble(self) -> list[tuple[int, int, int, int]]:
        where = {i.label: n for n, i in enumerate(self.ins) if i.label}
        out = []
        for n, i in enumerate(self.ins):

            def rel(t: str | int, n: int = n) -> int:
                return where[t] - n - 1 if isinstance(t, str) else t

            if i.code == JMP | JA:
                out.append((i.code, 0, 0, rel(i.jt)))
            else:
                jt, jf = rel(i.jt), rel(i.jf)
                if not (0 <= jt < 256 and 0 <= jf < 256):  # pragma: no cover - assembler bug
                    raise ValueError("cBPF jump out of range")
                out.append((i.code, jt, jf, i.k))
        return out


def _emit_sum_words(p: _Prog, offsets: list[int], workers: int) -> None:
    """A = mix(sum of 32-bit words at X+off) % workers; return A. X holds the L3 offset."""
    p.op(MISC | TXA)
    p.op(ST, M_OFF)
    p.op(LD | IMM, 0)
    p.op(ST, M_ACC)
    for off in offsets:
        p.op(LDX | MEM, M_OFF)
        p.op(LD | W | IND, off)
        p.op(LDX | MEM, M_ACC)
        p.op(ALU | ADD | X)
        p.op(ST, M_ACC)
    # murmur-like finaliser: h ^= h >> 16; h *= 0x45d9f3b; h ^= h >> 16
    for mul in (0x45D9F3B, None):
        p.op(ST, M_TMP)
        p.op(ALU | RSH | K, 16)
        p.op(LDX | MEM, M_TMP)
        p.op(ALU | XOR | X)
        if mul is not None:
            p.op(ALU | MUL | K, mul)
    p.op(ALU | MOD | K, workers)
    p.op(RET | RET_A)


def build_program(layer: Layer, workers: int) -> list[tuple[int, int, int, int]]:
    """The steering program for sockets receiving ``layer`` (VXLAN or GENEVE) payloads."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    p = _Prog()
    if layer == Layer.VXLAN:
        p.op(LDX | IMM, 8)
        p.ja("eth")
    elif layer == Layer.GENEVE:
        p.op(LD | B_ | ABS, 0)
        p.op(ALU | AND | K, 0x3F)
        p.op(ALU | LSH | K, 2)
        p.op(ALU | ADD | K, 8)
        p.op(MISC | TAX)
        p.op(LD | H | ABS, 2)
        p.jeq(ETH_TEB, "eth")
        p.jeq(ETH_IPV4, "ip4")
        p.jeq(ETH_IPV6, "ip6")
        p.op(RET | K, 0)
    else:
        raise ValueError(f"no steering program for {layer!r}")
    # inner Ethernet at X: ethertype, X += 14, one VLAN tag
    p.at("eth")
    p.op(LD | H | IND, 12)
    p.op(ST, M_TMP)
    p.op(MISC | TXA)
    p.op(ALU | ADD | K, 14)
    p.op(MISC | TAX)
    p.op(LD | MEM, M_TMP)
    p.jeq(ETH_VLAN, "vlan")
    p.jeq(ETH_QINQ, "vlan")
    p.ja("l3")
    p.at("vlan")
    p.op(LD | H | IND, 2)
    p.op(ST, M_TMP)
    p.op(MISC | TXA)
    p.op(ALU | ADD | K, 4)
    p.op(MISC | TAX)
    p.op(LD | MEM, M_TMP)
    p.at("l3")
    p.jeq(ETH_IPV4, "ip4")
    p.jeq(ETH_IPV6, "ip6")
    p.op(RET | K, 0)
    p.at("ip4")
    _emit_sum_words(p, [12, 16], workers)
    p.at("ip6")
    _emit_sum_words(p, list(range(8, 40, 4)), workers)
    return p.assemble()


def attach(sock: socket.socket, layer: Layer, workers: int) -> None:
    """Attach the steering program to ``sock``'s reuseport group (raises OSError on failure)."""
    prog = build_program(layer, workers)
    arr = (ctypes.c_uint8 * (8 * len(prog)))()
    for n, (code, jt, jf, k) in enumerate(prog):
        struct.pack_into("HBBI", arr, 8 * n, code, jt, jf, k)
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(arr))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def symmetric_hash(a: bytes, b: bytes, workers: int) -> int:
    """What the program computes for inner addresses ``a``/``b`` (4 or 16 bytes): for tests."""
    acc = 0
    for addr in (a, b):
        for i in range(0, len(addr), 4):
            acc = (acc + int.from_bytes(addr[i : i + 4], "big")) & 0xFFFFFFFF
    h = acc ^ (acc >> 16)
    h = (h * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h % workers
