"""pcapng: a section header, one interface (IDB) per VNI, enhanced packet blocks.

Timestamps are nanoseconds (``if_tsresol`` = 9). Enhanced packet blocks for a
whole FrameBlock are built as arrays and interleaved with the frame bytes by
forwarders.gather (no per-packet loop).
"""

from __future__ import annotations

import struct

import numpy as np

from .api import FrameBlock
from .gather import copy_ranges, put_rows
from .pcap_classic import LINKTYPE_ETHERNET, split_ts

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
EPB_HEADER_LEN = 28
EPB_TRAILER_LEN = 4


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (_pad4(len(value)) - len(value))


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def section_header(application: str = "vxmirror") -> bytes:
    opts = _option(4, application.encode()) + _option(0, b"")  # shb_userappl, opt_endofopt
    return _block(SHB_TYPE, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface_block(name: str, description: str, snaplen: int, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    opts = (
        _option(2, name.encode()[:255])  # if_name
        + _option(3, description.encode()[:1000])  # if_description
        + _option(9, bytes([9]))  # if_tsresol: 10^-9
        + _option(0, b"")
    )
    return _block(IDB_TYPE, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def record_sizes(block: FrameBlock) -> np.ndarray:
    return record_sizes_of(np.asarray(block.caplen, np.int64))


def record_sizes_of(caplen: np.ndarray) -> np.ndarray:
    """Bytes in the file of enhanced packet blocks holding frames of these captured lengths."""
    cap = caplen.astype(np.int64)
    return EPB_HEADER_LEN + EPB_TRAILER_LEN + ((cap + 3) & ~3)


def encode(block: FrameBlock, iface: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Enhanced packet blocks of frames ``lo:hi``; ``iface[j]`` is frame ``lo+j``'s interface id."""
    hi = block.count if hi is None else hi
    caplen = np.asarray(block.caplen[lo:hi], np.int64)
    n = caplen.shape[0]
    sizes = EPB_HEADER_LEN + EPB_TRAILER_LEN + ((caplen + 3) & ~3)
    pos = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(sizes[:-1], out=pos[1:])
    out = np.zeros(int(sizes.sum()), np.uint8)
    sec, nsec = split_ts(block.ts[lo:hi])
    ns = sec * np.uint64(1_000_000_000) + nsec
    hdr = np.empty((n, 7), "<u4")
    hdr[:, 0] = EPB_TYPE
    hdr[:, 1] = sizes
    hdr[:, 2] = iface
    hdr[:, 3] = ns >> np.uint64(32)
    hdr[:, 4] = ns & np.uint64(0xFFFFFFFF)
    hdr[:, 5] = caplen
    hdr[:, 6] = block.wirelen[lo:hi]
    put_rows(out, pos, hdr.view(np.uint8).reshape(n, EPB_HEADER_LEN))
    trailer = sizes.astype("<u4").view(np.uint8).reshape(n, 4)
    put_rows(out, pos + sizes - EPB_TRAILER_LEN, trailer)
    src = np.frombuffer(block.data, np.uint8)
    copy_ranges(src, np.asarray(block.offset[lo:hi], np.int64), out, pos + EPB_HEADER_LEN, caplen)
    return out


def whole_blocks_end(data: bytes) -> tuple[int, int]:
    """(bytes up to the end of the last whole block, number of whole packet blocks)."""
    pos, count = 0, 0
    while pos + 12 <= len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        if total < 12 or total % 4 or pos + total > len(data):
            break
        (trail,) = struct.unpack_from("<I", data, pos + total - 4)
        if trail != total:
            break
        pos += total
        count += btype == EPB_TYPE
    return pos, count
