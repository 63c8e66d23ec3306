"""Zeek history codes placed in TCP's own order, so that packets arriving out of order (the two
directions of a flow, or a flow's packets behind a load balancer) give the history and the
originator they give in order.

A mirrored packet carries no time of its own: its timestamp is when the receiver got it, so a
late packet is late in time too, and sorting by time cannot undo it. TCP orders its packets
itself: a packet that acknowledges a byte was sent after that byte, and each side's sequence
number only grows. The *clock* of a TCP packet with ACK is ``seq + ack`` (mod 2**32), the bytes
both sides had sent by then: a packet's clock is at least that of every packet it depends on.
Each history code (the first packet of each letter and side) keeps the clock of its packet
(``hkey``, 0: none); a new code goes after the codes with a lower clock, not always at the end, and a
code seen again with a lower clock (its first packet came late) moves back to where that puts it:

- a code with a clock is placed before the codes whose clock is higher by at most ``WINDOW``;
  at an equal clock, a pure ACK goes before data, FIN and RST: before its own side's, which
  would have moved its sequence number; before the other side's by convention, as nothing in
  the packets orders them (the handshake's last ACK and a server's first data, an ACK and the
  peer's FIN). A code without a clock (no ACK flag, or not TCP) is appended, and nothing is
  placed before it. In order, every code arrives after the codes of lower clocks, so in-order
  traffic gets the history it got before;
- a SYN without ACK has no acknowledgement: it goes first when every code recorded so far
  provably came after it: the first packet of its own side has a higher sequence number (it
  consumed the SYN's) and the first packet of the other side acknowledges it;
- the originator and Zeek's flip (``^``) follow the placed order, as if the packets had come
  in it: the side of the first code is the first packet's, and the first SYN without ACK makes
  its sender the originator (flipped when that is not the first packet's side).

``add_codes`` is the reference, one packet at a time, for ``FlowTable.account``'s numpy path
and for the C loop ``vx_account`` (receiver/native/vxnative.c), which mirror it exactly.

Storage: ``hkey`` has one 32-bit slot per code (48 bytes a flow). A SYN code never has a clock,
so the slots of the two SYN codes hold instead each side's ``seq0``: the sequence number of the
packet behind that side's first code (what the SYN rule needs; the acknowledgement number of that
packet is its clock minus it).
"""

from __future__ import annotations

import numpy as np

L_SYN, L_SYNACK, L_ACK, L_DATA, L_FIN, L_RST = range(6)
WINDOW = 1 << 24  # how far back (in both sides' sequence space together) a late packet is placed
# at an equal clock, a pure ACK goes before these letters (of either side)
ACK_FIRST = (1 << L_DATA) | (1 << L_FIN) | (1 << L_RST)
MASK32 = 0xFFFFFFFF


def int32(x: int) -> int:
    """``x`` (mod 2**32) as a signed 32-bit difference."""
    x &= MASK32
    return x - (1 << 32) if x >= 1 << 31 else x


def passes(prev_key: int, prev_code: int, key: int, code: int) -> bool:
    """Whether ``code`` (2 * letter + endpoint) of clock ``key`` goes before ``prev_code`` of
    clock ``prev_key``."""
    diff = int32(prev_key - key)
    if diff == 0 and code >> 1 == L_ACK:
        return bool((ACK_FIRST >> (prev_code >> 1)) & 1)
    return 0 < diff <= WINDOW


def codes_in_order(hist: int) -> list[int]:
    out = []
    while hist:
        out.append((hist & 0xF) - 1)
        hist >>= 4
    return out


def has_clock(hkey: np.ndarray, code: int) -> bool:
    """Whether ``code`` has a clock (a SYN code's slot holds a sequence number instead)."""
    return code >> 1 != L_SYN and int(hkey[code]) != 0


def add_codes(
    cols: dict[str, np.ndarray], f: int, d: int, codes: int, keyed: bool, seq: int, ack: int
) -> None:
    """Place the codes ``codes`` (bits 2 * letter + endpoint) of one packet of flow ``f``, sent
    by endpoint ``d`` with these TCP numbers (``keyed``: a TCP packet with ACK): the new ones,
    and those it shows came earlier than recorded; and update the originator."""
    hist, hb = int(cols["hist"][f]), int(cols["hbits"][f])
    hkey = cols["hkey"][f]
    key = (seq + ack) & MASK32
    keyed = keyed and key != 0
    n = bin(hb).count("1")
    for bit in range(12):
        if not (codes >> bit) & 1:
            continue
        if (hb >> bit) & 1:  # seen before: moved only when this packet is earlier
            if not (keyed and has_clock(hkey, bit) and 0 < int32(int(hkey[bit]) - key) <= WINDOW):
                continue
            at = codes_in_order(hist).index(bit)
            hist = (hist & ((1 << (4 * at)) - 1)) | ((hist >> (4 * (at + 1))) << (4 * at))
            hb &= ~(1 << bit)
            n -= 1
        letter = bit >> 1
        pos = n
        if letter == L_SYN:  # (a SYN without ACK: it has no clock)
            if n and all(has_clock(hkey, c) for c in codes_in_order(hist)) and _syn_came_first(hkey, hist, d, seq):
                pos = 0
        elif keyed:
            while pos:
                prev = ((hist >> (4 * (pos - 1))) & 0xF) - 1
                if not (has_clock(hkey, prev) and passes(int(hkey[prev]), prev, key, bit)):
                    break
                pos -= 1
        first_of_side = not any(((((hist >> (4 * i)) & 0xF) - 1) & 1) == d for i in range(pos))
        low = hist & ((1 << (4 * pos)) - 1)
        hist = low | ((bit + 1) << (4 * pos)) | ((hist >> (4 * pos)) << (4 * (pos + 1)))
        if keyed and letter != L_SYN:
            hkey[bit] = key
        if first_of_side:
            hkey[2 * L_SYN + d] = seq & MASK32
        before = n
        hb |= 1 << bit
        n += 1
        if cols["segments"][f] == 0 and ((pos == 0 and before) or letter == L_SYN):
            orig, flipped = int(cols["orig"][f]), bool(cols["flipped"][f])
            first = d if (pos == 0 and before) else (1 - orig if flipped else orig)
            _orient(cols, f, hist, first)
    cols["hist"][f], cols["hbits"][f] = hist, hb


def _syn_came_first(hkey: np.ndarray, hist: int, d: int, seq: int) -> bool:
    """Whether every code of a flow (``hist``, all with a clock) came after a SYN of sequence
    number ``seq`` from ``d``: the first packet of ``d`` is past the SYN, the first of the
    other side acknowledges it."""
    after = (seq + 1) & MASK32
    firsts: dict[int, int] = {}
    for code in codes_in_order(hist):
        firsts.setdefault(code & 1, code)
    for side, code in firsts.items():
        seq0 = int(hkey[2 * L_SYN + side])
        v = seq0 if side == d else int(hkey[code]) - seq0  # (the first packet's ack: its clock - its seq)
        if not 0 <= int32(v - after) <= WINDOW:
            return False
    return True


def _orient(cols: dict[str, np.ndarray], f: int, hist: int, first: int) -> None:
    """The originator as in-order processing of ``hist`` gives it, the first packet from ``first``."""
    for code in codes_in_order(hist):
        if code >> 1 == L_SYN:
            if code & 1 != first:
                cols["orig"][f], cols["flipped"][f] = code & 1, True
                return
            break
    cols["orig"][f], cols["flipped"][f] = first, False
