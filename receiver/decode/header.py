"""Declarative header definitions, read two ways: a whole batch at once (numpy) or one packet (struct).

A protocol module declares its header once, dpkt-style::

    UDP = Header("udp", ("sport", "H"), ("dport", "H"), ("ulen", "H"), ("sum", "H"))

and reads it either for many packets at once, ``UDP.take(buf, pos)`` -> a ``[n, size]`` byte
matrix whose columns start at ``UDP.off("dport")``, or for one packet with
``UDP.unpack(data, off)`` -> a dict. Both read the same declared offsets, so the fast path and
the slow path cannot disagree about where a field is.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..packets import I64, U8

_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}


class Header:
    def __init__(self, name: str, *fields: tuple[str, str]) -> None:
        self.name = name
        self.offsets: dict[str, tuple[int, str]] = {}
        fmt = ">"
        off = 0
        for fname, code in fields:
            size = _SIZES[code] if code in _SIZES else int(code[:-1])
            self.offsets[fname] = (off, code)
            off += size
            fmt += code
        self.size = off
        self._struct = struct.Struct(fmt)
        self._names = [f for f, _ in fields]

    # -- many packets -------------------------------------------------------------------------
    def take(self, buf: U8, pos: I64) -> U8:
        """The header bytes of every packet as an ``[n, size]`` matrix (see ``take_rows``)."""
        return take_rows(buf, pos, self.size)

    def off(self, name: str) -> int:
        """Byte offset of field ``name`` in the header (what the batch readers index with)."""
        return self.offsets[name][0]

    # -- one packet ---------------------------------------------------------------------------
    def unpack(self, data: bytes, off: int = 0) -> dict[str, Any]:
        return dict(zip(self._names, self._struct.unpack_from(data, off)))


def take_rows(buf: U8, pos: I64, size: int) -> U8:
    """``size`` bytes at each position, as the rows of an ``[n, size]`` matrix.

    The buffer is viewed as overlapping ``V<size>`` items (one per byte offset), so the gather
    copies one fixed-size item per packet: 3x faster on this machine than fancy-indexing a
    sliding-window view, and 20x faster than per-byte index arithmetic. A position too close to
    the end of the buffer reads the last ``size`` bytes instead: callers check lengths against
    the capture, so such rows are never used.
    """
    if buf.shape[0] < size:
        buf = np.concatenate([buf, np.zeros(size - buf.shape[0], np.uint8)])
    items = np.ndarray(shape=(buf.shape[0] - size + 1,), dtype=f"V{size}", buffer=buf, strides=(buf.strides[0],))
    rows = items[np.clip(pos, 0, buf.shape[0] - size)]
    return rows.view(np.uint8).reshape(-1, size)
