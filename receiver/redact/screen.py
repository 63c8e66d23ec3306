"""The cheap first look: which excerpts may hold a credential at all, and where to look.

Every masking rule needs some marker in the bytes before the value it masks: a header name and
its colon, a parameter name and its ``=``, ``pass `` (FTP, POP3), ``auth `` or ``auth\\r`` or
``authenticate `` (SMTP, POP3, IMAP, Redis inline and RESP), ``login `` (IMAP), ``://`` (a URL's
password, and a Host header's, which comes with an absolute URL). An excerpt without any of them
has nothing to mask and never reaches the rules in Python; in one with some, the rules look
only where its markers are. An excerpt that starts with a TLS record header (encrypted, or a hello)
is not looked at. Markers are compared with ASCII letters folded to lower case. One native
call screens a batch of excerpts (``vx_redact_screen`` in receiver/flows/vxrecords.c: most
positions cost one bit test of their byte pair); without the C library, ``bytes.lower`` and
``in`` do the same per excerpt.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..process import nativelib
from .rules import Marker

MAX_BITS = 64  # bits of a screen's answer: markers from the 64th on share the last


def _load() -> ctypes.CDLL | None:
    lib = nativelib.load()
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.vx_redact_screen.restype = i64
    lib.vx_redact_screen.argtypes = [p, i64, p, p, i64, p, i64, p, p, p]
    return lib


_lib = _load()


def tls_record(data: bytes) -> bool:
    """``data`` starts with a TLS record header (change_cipher_spec, alert, handshake or
    application_data; version 3.x): encrypted or a hello, never a credential in clear."""
    return len(data) >= 3 and 0x14 <= data[0] <= 0x17 and data[1] == 3 and data[2] <= 4


class _StrTab(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p), ("off", ctypes.c_void_p)]


class Screen:
    """Finds which of ``markers`` (``rules.markers``: lower case, at least 2 bytes, sorted)
    excerpts contain."""

    def __init__(self, markers: list[Marker]) -> None:
        assert all(len(m) >= 2 and m == m.lower() for m, _ in markers)
        assert [m for m, _ in markers] == sorted(m for m, _ in markers) and len(markers) < 65535
        self.markers = markers
        self.marks = [m for m, _ in markers]
        self._text = b"".join(self.marks)
        self._off = np.zeros(len(markers) + 1, np.int64)
        np.cumsum([len(m) for m in self.marks], out=self._off[1:])
        self._tab = _StrTab(self._text, self._off.ctypes.data)
        pairs = np.zeros(65536 // 8, np.uint8)  # (a bit per byte pair: 8 kB, stays in the L1 cache)
        first = np.zeros(65536, np.uint16)
        for i, m in reversed(list(enumerate(self.marks))):
            pair = m[0] << 8 | m[1]
            pairs[pair >> 3] |= 1 << (pair & 7)
            first[pair] = i + 1
        self._pairs, self._first = pairs, first

    def __call__(self, rows: np.ndarray, index: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Per excerpt (row ``index[i]`` of ``rows``, its first ``lens[i]`` bytes): a bit per
        marker it contains (0: none, nothing to mask)."""
        out = np.zeros(index.size, np.uint64)
        if not index.size:
            return out
        if _lib is None:
            marks = self.marks
            last = MAX_BITS - 1
            for i, (r, n) in enumerate(zip(index.tolist(), lens.tolist())):
                text = rows[r, :n].tobytes().lower()
                if tls_record(text):
                    continue
                found = 0
                for b, m in enumerate(marks):
                    if m in text:
                        found |= 1 << min(b, last)
                out[i] = found
            return out
        assert rows.flags.c_contiguous
        index = np.ascontiguousarray(index, np.int64)
        lens = np.ascontiguousarray(lens, np.int64)
        _lib.vx_redact_screen(
            rows.ctypes.data, rows.shape[1], index.ctypes.data, lens.ctypes.data, index.size,
            ctypes.byref(self._tab), len(self.marks), self._pairs.ctypes.data, self._first.ctypes.data,
            out.ctypes.data,
        )
        return out

    def found(self, bits: int) -> list[Marker]:
        """The markers of an answer (the last bit: every marker from there on)."""
        out = []
        markers = self.markers
        while bits:
            low = bits & -bits
            b = low.bit_length() - 1
            out.extend(markers[b : b + 1] if b < MAX_BITS - 1 else markers[b:])
            bits ^= low
        return out
