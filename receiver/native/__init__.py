"""vxnative: the sequential loops of the data path in C, one library loaded with ctypes.

This module loads the library (``receiver/native/_vxnative*.so``, built from the shared core
``vxnative.c`` here and each stage's C twin beside its stage) and declares every function's
signature; each stage wraps the loops it uses beside itself, every one with a numpy twin that
does the same work where the library is missing:

- offline reading, ``receiver.capture.cloops``: the pcap record chain and its header fields,
  runs of pcapng enhanced packet blocks; the reading thread ``receiver/capture/vxread.c``
  (``receiver.capture.reader``); ``vx_touch`` (``receiver.capture.prefetch``) and the SIGBUS
  guard of mapped captures that shrink while read (``receiver/capture/vxguard.c``,
  ``receiver.capture.mapguard``; no twin: without the library such a file still ends the process);
- decoding, ``receiver.decode.cloops``: the common packet shapes, flow keys, the screening for
  the application parsers;
- the flow table, ``receiver.flows.cloops``: grouping, lookups, inserts, per-packet accounting;
  the records, ``receiver/flows/vxrecords.c`` (``receiver.flows.encode``);
- listening: the receive thread ``receiver/listen/vxrecv.c`` (``receiver.listen.rxthread``;
  twin: the event loop's own ``recvmmsg`` in ``receiver.listen.mmsg``);
- here: ``copy_ranges``, byte ranges for the pcap writers (twin: ``forwarders.gather``).

When the library is absent (no compiler at install) or ``VXMIRROR_NATIVE=0`` is set, the twins
do the work: the results are the same, only slower; tests/test_native.py compares both on the
same inputs.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

import numpy as np

from ..packets import I64, U8
from ..process import nativelib

log = logging.getLogger("vxmirror.native")

MAX_LANES = 16  # = MAX_LANES in vxnative.c
ABI = nativelib.ABI
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


_INT = ctypes.c_int
# every function of the library the Python side calls: (return type, argument types)
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "vx_pcap_scan_lanes": (_I64, [_P, _I64, _I64, _I64, _INT, _I64, _I64, _I64, _P, _P, _P]),
    "vx_pcap_columns": (None, [_P, _P, _I64, _INT, _INT, _P, _P, _P, _P]),
    "vx_decode_common": (_I64, [_P, _I64, _P, _P, _I64, _INT, _P, _I64, _P, _I64, _I64, _P, _P]),
    "vx_flow_keys": (None, [_P, _P, _I64]),
    "vx_app_hints": (None, [_P, _I64, _P, _P, _P, _P, _P, _I64, _P, _P, _P, _P, _P, _P, _I64, _P, _P]),
    "vx_group": (_I64, [_P, _I64, _P, _P, _P, _I64]),
    "vx_same_key": (None, [_P, _I64, _I64, _P, _P, _P]),
    "vx_lookup": (None, [_P, _I64, _P, _P, _I64, _P]),
    "vx_insert": (_I64, [_P, _I64, _P, _P, _I64, _P]),
    "vx_account": (None, [_P, _P, _I64]),
    "vx_pcapng_epbs": (_I64, [_P, _I64, _I64, _INT, _I64, _I64, _P, _P, _P, _P, _P, _P]),
    "vx_copy_ranges": (None, [_P, _P, _P, _P, _P, _I64]),
    # the reading thread (vxread.c) and the receive thread (vxrecv.c): run, what is ready, release
    "vx_read_run": (_I64, [_P]),
    "vx_read_ready": (_I64, [_P, _I64]),
    "vx_read_release": (None, [_P, _I64]),
    "vx_rx_run": (_I64, [_P]),
    "vx_rx_pending": (_I64, [_P, _I64]),
    "vx_rx_release": (None, [_P, _I64]),
}


def _load() -> ctypes.CDLL | None:
    lib = nativelib.load()
    if lib is None:
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_lib = _load()


def available() -> bool:
    """Whether the C loops are in use."""
    return _lib is not None


def library() -> ctypes.CDLL | None:
    """The loaded library (None: the numpy twins are in use)."""
    return _lib


def _ptr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


def sparse_int64(n: int) -> np.ndarray:
    """``n`` int64 of which only a little will be written, in small pages. The scan's work arrays
    are sized for the worst case (a record every 16 bytes, 64 MB of them per window) and numpy asks
    the kernel for huge pages for arrays that large: each first write then zeroed 2 MB (the first
    batch of a file waited 14-60 ms for it; now a page of the lanes' spread-out writes costs 4 KB)."""
    return np.frombuffer(mmap.mmap(-1, max(8, n * 8)), np.int64)[:n]










def copy_ranges(src: U8, s: I64, dst: U8, d: I64, n: I64) -> None:
    """``dst[d[i]:d[i]+n[i]] = src[s[i]:s[i]+n[i]]`` for every ``i`` (bounds checked here)."""
    assert _lib is not None
    s, d, n = (np.ascontiguousarray(a, np.int64) for a in (s, d, n))
    if not n.shape[0]:
        return
    assert src.dtype == np.uint8 and dst.dtype == np.uint8 and src.flags.c_contiguous and dst.flags.c_contiguous
    assert dst.flags.writeable
    some = n > 0
    if some.any():  # a bad range would write outside dst: refuse it rather than corrupt memory
        ss, dd, nn = s[some], d[some], n[some]
        if ss.min() < 0 or dd.min() < 0 or (ss + nn).max() > src.shape[0] or (dd + nn).max() > dst.shape[0]:
            raise IndexError("copy_ranges: a range is outside its buffer")
    _lib.vx_copy_ranges(_ptr(src), _ptr(s), _ptr(dst), _ptr(d), _ptr(n), n.shape[0])
















