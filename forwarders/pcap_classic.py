"""Classic pcap with nanosecond timestamps (magic 0xa1b23c4d), little-endian.

Record headers for a whole FrameBlock are built as one ``[n, 4]`` uint32 array
and interleaved with the frame bytes by forwarders.gather (no per-packet loop).
"""

from __future__ import annotations

import struct

import numpy as np

from .api import FrameBlock
from .gather import copy_ranges, put_rows

MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16


def file_header(snaplen: int, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return struct.pack("<IHHiIII", MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)


def split_ts(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (float64) -> (seconds, nanoseconds) as uint32/uint64 arrays."""
    ts = np.maximum(np.asarray(ts, np.float64), 0.0)
    sec = np.floor(ts)
    nsec = np.minimum(np.rint((ts - sec) * 1e9), 999_999_999)
    return sec.astype(np.uint64), nsec.astype(np.uint64)


def record_sizes(block: FrameBlock) -> np.ndarray:
    return record_sizes_of(np.asarray(block.caplen, np.int64))


def record_sizes_of(caplen: np.ndarray) -> np.ndarray:
    """Bytes in the file of records holding frames of these captured lengths."""
    return RECORD_HEADER_LEN + caplen.astype(np.int64)


def encode(block: FrameBlock, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Records (headers and frames) of frames ``lo:hi`` as one uint8 array."""
    hi = block.count if hi is None else hi
    caplen = np.asarray(block.caplen[lo:hi], np.int64)
    n = caplen.shape[0]
    sizes = RECORD_HEADER_LEN + caplen
    pos = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(sizes[:-1], out=pos[1:])
    out = np.empty(int(sizes.sum()), np.uint8)
    sec, nsec = split_ts(block.ts[lo:hi])
    hdr = np.empty((n, 4), "<u4")
    hdr[:, 0] = sec
    hdr[:, 1] = nsec
    hdr[:, 2] = caplen
    hdr[:, 3] = block.wirelen[lo:hi]
    put_rows(out, pos, hdr.view(np.uint8).reshape(n, RECORD_HEADER_LEN))
    src = np.frombuffer(block.data, np.uint8)
    copy_ranges(src, np.asarray(block.offset[lo:hi], np.int64), out, pos + RECORD_HEADER_LEN, caplen)
    return out


def whole_records_end(data: bytes) -> tuple[int, int]:
    """(bytes up to the end of the last whole record, number of whole records) of a pcap file."""
    if len(data) < FILE_HEADER_LEN:
        return 0, 0
    pos, count = FILE_HEADER_LEN, 0
    while pos + RECORD_HEADER_LEN <= len(data):
        (incl,) = struct.unpack_from("<I", data, pos + 8)
        end = pos + RECORD_HEADER_LEN + incl
        if end > len(data):
            break
        pos, count = end, count + 1
    return pos, count
