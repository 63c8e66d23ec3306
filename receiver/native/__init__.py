"""vxnative: the sequential loops of the data path in C, loaded with ctypes.

Two loops are sequential by nature and cost numpy many passes: following the chain of pcap
record headers (``pcap_scan``; numpy twin: ``receiver.capture_pcap.scan`` + ``record_columns``)
and reading the headers of the common packet shape, several layers at once
(``decode_common``; numpy twin: the shortcuts ``_common_outer``/``_common_inner`` in
``receiver.decode.fast``). The C source is ``vxnative.c``, built at install time as
``receiver/native/_vxnative*.so`` (setup.py). When it is absent (no compiler at install time)
or ``VXMIRROR_NATIVE=0`` is set, the numpy twins do the work: the results are the same, only
slower; tests/test_native.py compares both on the same inputs.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..packets import F64, I64, U8, U32

log = logging.getLogger("vxmirror.native")

HERE = Path(__file__).parent
# the Decoded columns vx_decode_common writes, in the order of its `cols` argument
DECODE_COLUMNS = (
    "status", "vni", "inner_start", "depth", "vxlan_reserved", "ipver", "src_hi", "src_lo", "dst_hi",
    "dst_lo", "proto", "sport", "dport", "iplen", "tcpflags", "pay_off", "pay_len", "pay_cap",
    "truncated", "frag", "ipid",
)
SCAN_OK, SCAN_TRUNCATED, SCAN_BAD = 0, 1, 2
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def _library_path() -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = HERE / f"_vxnative{suffix}"
        if p.exists():
            return p
    return None


def _load() -> ctypes.CDLL | None:
    if os.environ.get("VXMIRROR_NATIVE", "1") == "0":
        return None
    path = _library_path()
    if path is None:
        log.info("vxnative library not built: using the numpy loops (slower)")
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # pragma: no cover - a broken build
        log.warning("cannot load %s (%s): using the numpy loops (slower)", path, e)
        return None
    lib.vx_pcap_scan.restype = _I64
    lib.vx_pcap_scan.argtypes = [_P, _I64, _I64, ctypes.c_int, ctypes.c_int, _I64, _I64, _P, _P, _P, _P, _P]
    lib.vx_decode_common.restype = _I64
    lib.vx_decode_common.argtypes = [_P, _I64, _P, _P, _I64, ctypes.c_int, _P, _I64, _P, _I64, _I64, _P, _P]
    return lib


_lib = _load()


def available() -> bool:
    """Whether the C loops are in use."""
    return _lib is not None


def _ptr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


def pcap_scan(
    arr: U8, pos: int, big_endian: bool, nanos: bool, max_len: int, max_n: int
) -> tuple[I64, U32, U32, F64, int, int]:
    """Up to ``max_n`` records from record header ``pos``: data offsets, caplen, wirelen, time,
    where scanning stopped, and SCAN_OK / SCAN_TRUNCATED / SCAN_BAD."""
    assert _lib is not None
    assert arr.flags.c_contiguous and arr.dtype == np.uint8
    start = np.empty(max_n, np.int64)
    caplen = np.empty(max_n, np.uint32)
    wirelen = np.empty(max_n, np.uint32)
    ts = np.empty(max_n, np.float64)
    state = np.zeros(2, np.int64)
    n = _lib.vx_pcap_scan(
        _ptr(arr), arr.shape[0], pos, int(big_endian), int(nanos), max_len, max_n,
        _ptr(start), _ptr(caplen), _ptr(wirelen), _ptr(ts), _ptr(state),
    )
    return start[:n], caplen[:n], wirelen[:n], ts[:n], int(state[0]), int(state[1])


def decode_common(
    buf: U8, start: I64, caplen: U32, layer: int, vxlan_ports: I64, geneve_ports: I64, max_depth: int, out: Any
) -> np.ndarray:
    """Fill the rows of ``out`` (a Decoded) for the packets of the common shape; returns the
    handled mask (bool). Rows of the other packets are not touched."""
    assert _lib is not None
    n = start.shape[0]
    handled = np.zeros(n, np.bool_)
    start = np.ascontiguousarray(start, np.int64)
    caplen = np.ascontiguousarray(caplen, np.uint32)
    vx = np.ascontiguousarray(vxlan_ports, np.int64)
    gn = np.ascontiguousarray(geneve_ports, np.int64)
    cols = [getattr(out, name) for name in DECODE_COLUMNS]
    for c in cols:
        assert c.flags.c_contiguous and c.itemsize in (1, 8)
    ptrs = (ctypes.c_void_p * len(cols))(*[_ptr(c) for c in cols])
    _lib.vx_decode_common(
        _ptr(buf), buf.shape[0], _ptr(start), _ptr(caplen), n, layer, _ptr(vx), vx.shape[0], _ptr(gn),
        gn.shape[0], max_depth, _ptr(handled), ptrs,
    )
    return handled


def _check_columns() -> None:
    from ..decode.columns import Decoded

    names = {f.name for f in fields(Decoded)}
    missing = set(DECODE_COLUMNS) - names
    assert not missing, missing  # pragma: no cover


_check_columns()
