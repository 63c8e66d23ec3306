"""The C loops of offline reading (``vx_pcap_scan_lanes``, ``vx_pcap_columns``, ``vx_pcapng_epbs`` in
receiver/native/vxnative.c), wrapped: the pcap record chain and its header fields (twins:
``receiver.capture.pcap.scan`` and ``record_columns``), runs of enhanced packet blocks (twin: the block
walk of ``receiver.capture.pcapng``). The reading thread is ``receiver.capture.reader`` (vxread.c beside
it)."""

from __future__ import annotations

import numpy as np

from ..native import MAX_LANES, _ptr, library, sparse_int64
from ..packets import F64, I64, U8, U32

SCAN_OK, SCAN_TRUNCATED, SCAN_BAD = 0, 1, 2


def pcap_scan(
    arr: U8, pos: int, stop: int, big_endian: bool, max_len: int, frac_lim: int, lanes: int = 8,
    buffers: dict[str, np.ndarray] | None = None,
) -> tuple[I64, int, int]:
    """Header offsets of the records starting in ``[pos, stop)`` (``pos`` is a record header),
    the next record after them (or where scanning stopped), and SCAN_OK / SCAN_TRUNCATED /
    SCAN_BAD. ``lanes`` chains are followed at once.

    The work arrays are sized for the worst case (a record every 16 bytes) but only a little
    of them is touched (``sparse_int64``): pass the same ``buffers`` dict for every window of a
    file so they are allocated once. The offsets returned view those buffers: valid until the
    next call with the same dict."""
    _lib = library()
    assert _lib is not None
    assert arr.flags.c_contiguous and arr.dtype == np.uint8
    words = (stop - pos) // 16 + 2
    held = buffers if buffers is not None else {}
    offs, scratch = held.get("offs"), held.get("scratch")
    if offs is None or scratch is None or offs.shape[0] < words:
        offs = held["offs"] = sparse_int64(words)
        scratch = held["scratch"] = sparse_int64(words + 2 * MAX_LANES + 64)  # lanes add 2 each
    state = np.zeros(2, np.int64)
    n = _lib.vx_pcap_scan_lanes(
        _ptr(arr), arr.shape[0], pos, stop, int(big_endian), max_len, frac_lim, lanes, _ptr(offs), _ptr(scratch),
        _ptr(state),
    )
    return offs[:n], int(state[0]), int(state[1])


def pcap_columns(arr: U8, offs: I64, big_endian: bool, nanos: bool) -> tuple[I64, U32, U32, F64]:
    """Data offset, caplen, wirelen and time of the records at header offsets ``offs``."""
    _lib = library()
    assert _lib is not None
    offs = np.ascontiguousarray(offs, np.int64)
    n = offs.shape[0]
    start = np.empty(n, np.int64)
    caplen = np.empty(n, np.uint32)
    wirelen = np.empty(n, np.uint32)
    ts = np.empty(n, np.float64)
    _lib.vx_pcap_columns(
        _ptr(arr), _ptr(offs), n, int(big_endian), int(nanos), _ptr(start), _ptr(caplen), _ptr(wirelen), _ptr(ts)
    )
    return start, caplen, wirelen, ts


def pcapng_epbs(
    arr: U8, pos: int, big_endian: bool, n_ifaces: int, max_out: int
) -> tuple[int, I64, U32, U32, I64, np.ndarray]:
    """The run of well-formed enhanced packet blocks from ``pos`` (see vx_pcapng_epbs): where it
    stopped, and per packet data offset, caplen, wirelen, interface and timestamp units (uint64)."""
    _lib = library()
    assert _lib is not None
    assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    start = np.empty(max_out, np.int64)
    caplen = np.empty(max_out, np.uint32)
    wirelen = np.empty(max_out, np.uint32)
    iface = np.empty(max_out, np.int64)
    units = np.empty(max_out, np.uint64)
    nxt = np.zeros(1, np.int64)
    n = _lib.vx_pcapng_epbs(
        _ptr(arr), arr.shape[0], pos, int(big_endian), n_ifaces, max_out, _ptr(start), _ptr(caplen), _ptr(wirelen),
        _ptr(iface), _ptr(units), _ptr(nxt),
    )
    return int(nxt[0]), start[:n], caplen[:n], wirelen[:n], iface[:n], units[:n]
