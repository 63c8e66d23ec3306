"""pcapng: a block walk producing packet offsets into the file buffer (no copies).

Blocks (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html):
SHB 0x0A0D0D0A (starts a section, sets the byte order, forgets interfaces),
IDB 1 (link type, snap length, options ``if_tsresol`` 9 and ``if_tsoffset`` 14),
EPB 6, SPB 3 (no timestamp: the previous packet's is used), OPB 2 (obsolete).
Other blocks are skipped. Each packet gets its interface's link type, so a
file mixing interfaces yields batches of one layer each. Runs of enhanced packet blocks can be
handed to another reader (``runner``: the C reading thread, ``receiver.capture.readahead``), which takes
them from where the walk is up to the first block it has to look at itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .. import native
from ..packets import F64, I64, U8, U32
from . import cloops

SHB = 0x0A0D0D0A
IDB = 1
OPB = 2
SPB = 3
EPB = 6
BOM = 0x1A2B3C4D
RUN_MAX = 65536  # packets per run of the C walk


@dataclass
class Interface:
    linktype: int
    snaplen: int
    scale: float  # seconds per timestamp unit
    offset: float  # if_tsoffset, seconds
    per_second: int = 1_000_000  # timestamp units in a second (0: too many to split on)

    def seconds(self, units: int) -> float:
        """A timestamp in seconds, computed as for a classic pcap record (whole seconds plus the
        fraction times the resolution): a capture converted between the formats keeps its times
        to the bit, where ``units * scale`` can be one unit in the last place off."""
        if not self.per_second:
            return self.offset + units * self.scale
        whole, frac = divmod(units, self.per_second)
        return self.offset + float(whole) + frac * self.scale


@dataclass
class Buffer:
    """The walk moved on to a new buffer (a file read in pieces): the packets after this item are
    offsets into ``arr``."""

    arr: U8


@dataclass
class Packet:
    """One packet block (offsets into the file buffer)."""

    iface: Interface
    start: int
    caplen: int
    wirelen: int
    ts: float


@dataclass
class Run:
    """Consecutive enhanced packet blocks of one section, as arrays (from the C walk)."""

    ifaces: list[Interface]  # the section's interfaces
    iface: I64  # index into ifaces, per packet
    start: I64
    caplen: U32
    wirelen: U32
    ts: F64


@dataclass
class Taken:
    """A batch of enhanced packet blocks that the runner read: its record columns, where the walk
    goes on after it, and what the runner made of the batch (opaque here)."""

    linktype: int
    start: I64
    caplen: U32
    wirelen: U32
    ts: F64
    next_pos: int
    made: object


# (file buffer, position of an enhanced packet block, big-endian, the section's interfaces) ->
# the batches taken from there on, or None to leave the run to the walk
Runner = Callable[[U8, int, bool, list[Interface]], Iterator[Taken] | None]


class PcapngError(ValueError):
    """The section header is unusable: reading cannot go on."""


def _tsresol(v: int) -> tuple[float, int]:
    """Seconds per unit, and units per second (0 when that does not fit in 62 bits)."""
    per_second = 1 << (v & 0x7F) if v & 0x80 else 10**v
    return 1.0 / per_second, per_second if per_second < 1 << 62 else 0


def _parse_idb(arr: U8, body: int, body_end: int, e: str) -> Interface:
    mv = arr.data
    linktype, _res, snaplen = struct.unpack_from(e + "HHI", mv, body)
    scale, per_second, offset = 1e-6, 1_000_000, 0.0
    p = body + 8
    while p + 4 <= body_end:
        code, olen = struct.unpack_from(e + "HH", mv, p)
        if code == 0:
            break
        v = p + 4
        if v + olen > body_end:
            break
        if code == 9 and olen >= 1:
            scale, per_second = _tsresol(int(arr[v]))
        elif code == 14 and olen >= 8:
            offset = float(struct.unpack_from(e + "q", mv, v)[0])
        p = v + ((olen + 3) & ~3)
    return Interface(linktype, snaplen, scale, offset, per_second)


def _seconds(ifaces: list[Interface], iface: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``Interface.seconds`` of each packet (``units`` uint64), vectorized to the same floats."""
    scale = np.array([i.scale for i in ifaces])[iface]
    offset = np.array([i.offset for i in ifaces])[iface]
    per_second = np.array([i.per_second for i in ifaces], np.uint64)[iface]
    split = per_second > 0
    if split.all():
        whole, frac = np.divmod(units, per_second)
        return offset + whole.astype(np.float64) + frac.astype(np.float64) * scale
    ts = offset + units.astype(np.float64) * scale
    if split.any():
        whole, frac = np.divmod(units[split], per_second[split])
        ts[split] = offset[split] + whole.astype(np.float64) + frac.astype(np.float64) * scale[split]
    return ts


def walk(
    arr: U8, end: int, count: Callable[[str, int], None], path: str,
    refill: Callable[[int], U8 | None] | None = None, runner: Runner | None = None,
) -> Iterator[Packet | Run | Taken | Buffer]:
    """Yield every packet of the file, one by one or (runs of enhanced packet blocks, with the C
    library) as arrays; ``count(name, n)`` records truncation and bad blocks. A file read in
    pieces passes ``refill``: for a block cut by the end of ``arr`` it returns a new buffer that
    starts with that block and holds more (None: the file ended there), and the walk yields a
    :class:`Buffer` before the packets in it. A whole file may pass ``runner``: where a run of
    enhanced packet blocks may start, the runner's batches are yielded as :class:`Taken`."""
    pos = 0
    e = "<"
    ifaces: list[Interface] = []
    last_ts = 0.0
    unpack = struct.unpack_from
    mv = arr.data
    fast = native.available() and end == arr.shape[0]
    while True:
        if (runner is not None and fast and ifaces and pos + 12 <= end and unpack(e + "I", mv, pos)[0] == EPB
                and (taken := runner(arr, pos, e == ">", ifaces)) is not None):
            at = pos
            for t in taken:
                pos, last_ts = t.next_pos, float(t.ts[-1])
                yield t
            if pos > at:
                continue
        if fast and ifaces:
            nxt, r_start, r_cap, r_wire, r_iface, r_units = cloops.pcapng_epbs(
                arr, pos, e == ">", len(ifaces), RUN_MAX
            )
            if r_start.shape[0]:
                r_ts = _seconds(ifaces, r_iface, r_units)
                last_ts = float(r_ts[-1])
                yield Run(ifaces, r_iface, r_start, r_cap, r_wire, r_ts)
                pos = nxt
                continue
        blen = 0
        if pos + 12 <= end:
            (btype,) = unpack(e + "I", mv, pos)
            if btype == SHB:  # a byte palindrome: the same in either byte order
                (bom,) = unpack("<I", mv, pos + 8)
                if bom == BOM:
                    e = "<"
                elif bom == 0x4D3C2B1A:
                    e = ">"
                else:
                    raise PcapngError(f"{path}: section header at offset {pos} has a bad byte-order magic")
                ifaces = []
            (blen,) = unpack(e + "I", mv, pos + 4)
            if blen < 12 or blen % 4:
                count("bad_blocks", 1)
                raise PcapngError(f"{path}: block at offset {pos} has an invalid length {blen}")
        if pos + max(blen, 12) > end:  # the end of the data, or a block cut there
            more = refill(pos) if refill is not None else None
            if more is not None:  # the file goes on in the next piece (from this block on)
                arr, pos, end, mv, fast = more, 0, more.shape[0], more.data, native.available()
                yield Buffer(arr)
                continue
            if pos < end:
                count("truncated_records", 1)
            return
        body, body_end = pos + 8, pos + blen - 4
        if unpack(e + "I", mv, body_end)[0] != blen:
            count("bad_blocks", 1)
        try:
            if btype in (EPB, OPB):  # the obsolete packet block has a 16-bit interface and a drop count
                if btype == EPB:
                    iid, hi, lo, cap, orig = unpack(e + "IIIII", mv, body)
                else:
                    iid, _drops, hi, lo, cap, orig = unpack(e + "HHIIII", mv, body)
                data = body + 20
                if iid >= len(ifaces) or data + cap > body_end:
                    count("bad_blocks", 1)
                else:
                    itf = ifaces[iid]
                    last_ts = itf.seconds((hi << 32) | lo)
                    yield Packet(itf, data, cap, orig, last_ts)
            elif btype == SPB:
                (orig,) = unpack(e + "I", mv, body)
                if not ifaces:
                    count("bad_blocks", 1)
                else:
                    itf = ifaces[0]
                    cap = min(orig, body_end - body - 4)
                    if itf.snaplen:
                        cap = min(cap, itf.snaplen)
                    yield Packet(itf, body + 4, cap, orig, last_ts)
            elif btype == IDB:
                if body + 8 > body_end:
                    count("bad_blocks", 1)
                else:
                    ifaces.append(_parse_idb(arr, body, body_end, e))
            elif btype != SHB:
                count("skipped_blocks", 1)
        except struct.error:
            count("bad_blocks", 1)
        pos += blen


def packet_arrays(pkts: list[Packet]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(pkts)
    start = np.fromiter((p.start for p in pkts), np.int64, n)
    cap = np.fromiter((p.caplen for p in pkts), np.uint32, n)
    wire = np.fromiter((p.wirelen for p in pkts), np.uint32, n)
    ts = np.fromiter((p.ts for p in pkts), np.float64, n)
    return start, cap, wire, ts
