"""vxnative: the sequential loops of the data path in C, loaded with ctypes.

Each function here has a numpy twin that does the same work where this library is missing:

- ``pcap_scan`` / ``pcap_columns``: the pcap record chain and its header fields (twins:
  ``receiver.capture_pcap.scan`` and ``record_columns``);
- ``decode_common``: the common packet shapes, several layers in one pass (twins: the stages
  of ``receiver.decode.fast``, whose shortcuts ``_common_outer``/``_common_inner`` cover part);
- ``flow_keys``: each packet's flow key and hash (twin: ``receiver.flows.keys.make_keys``);
- ``group``, ``same_key``, ``lookup``, ``insert``, ``account``: the flow table's per-packet work
  (twins: in ``receiver.flows.table``);
- ``app_hints``: the engine's screening of packets for the application parsers (twins:
  ``receiver.engine._app_later`` and ``_app_maybe``);
- ``copy_ranges``: byte ranges for the pcap writers (twin: ``forwarders.gather``);
- ``pcapng_epbs``: runs of enhanced packet blocks (twin: the block walk of
  ``receiver.capture_pcapng``);
- the receive thread (``vxrecv.c``, used by ``receiver.listen.rxthread``; twin: the event
  loop's own ``recvmmsg`` in ``receiver.listen.mmsg``);
- the pcap reading thread (``vxread.c``, used through ``receiver.native.reader`` by
  ``receiver.readahead``; twin: the same steps on a Python thread);
- ``vx_touch``: faulting a mapped capture in ahead of the reader (``receiver.prefetch``; twin:
  ``madvise(MADV_POPULATE_READ)``);
- the SIGBUS guard of mapped captures that shrink while read (``vxguard.c``, used through
  ``receiver.mapguard``; no twin: without the library such a file still ends the process).

The C sources are built at install time as ``receiver/native/_vxnative*.so`` (setup.py). When
it is absent (no compiler then) or ``VXMIRROR_NATIVE=0`` is set, the twins do the work: the
results are the same, only slower; tests/test_native.py compares both on the same inputs.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from typing import Any

import numpy as np

from .. import nativelib
from ..packets import F64, I64, U8, U32

log = logging.getLogger("vxmirror.native")

# the Decoded columns vx_decode_common writes, in the order of its `cols` argument
DECODE_COLUMNS = (
    "status", "vni", "inner_start", "depth", "vxlan_reserved", "ipver", "src_hi", "src_lo", "dst_hi",
    "dst_lo", "proto", "sport", "dport", "iplen", "tcpflags", "pay_off", "pay_len", "pay_cap",
    "truncated", "frag", "ipid", "tcpseq", "tcpack",
)
# the flow-table columns vx_account updates, and its per-packet inputs, in argument order
# (with the C type each is written as: tests/test_native.py checks them against flows.table.COLUMNS)
ACCOUNT_COLUMNS = {
    "pkts": "u4", "ipbytes": "u8", "paybytes": "u8", "tflags": "u1", "t_last": "f8", "trunc": "?", "frags": "u4",
    "hist": "u8", "hbits": "u2", "orig": "u1", "flipped": "?", "segments": "u2", "close_ts": "f8",
    "hkey": "u4",
}
ACCOUNT_INPUTS = (
    ("flow", np.int64), ("direction", np.int64), ("ts", np.float64), ("iplen", np.int64), ("paylen", np.int64),
    ("tcpflags", np.int64), ("proto", np.int64), ("truncated", np.bool_), ("fragment", np.bool_),
    ("seq", np.int64), ("ack", np.int64),
)
SCAN_OK, SCAN_TRUNCATED, SCAN_BAD = 0, 1, 2
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


def pcapng_epbs(
    arr: U8, pos: int, big_endian: bool, n_ifaces: int, max_out: int
) -> tuple[int, I64, U32, U32, I64, np.ndarray]:
    """The run of well-formed enhanced packet blocks from ``pos`` (see vx_pcapng_epbs): where it
    stopped, and per packet data offset, caplen, wirelen, interface and timestamp units (uint64)."""
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


FLOW_KEY_INPUTS = ("vni", "ipver", "proto", "src_hi", "src_lo", "sport", "dst_hi", "dst_lo", "dport")
FLOW_KEY_OUTPUTS = (
    ("proto", np.int64), ("a_hi", np.uint64), ("a_lo", np.uint64), ("a_port", np.int64), ("b_hi", np.uint64),
    ("b_lo", np.uint64), ("b_port", np.int64), ("direction", np.int64), ("hash", np.uint64),
)


def flow_keys(d: Any) -> dict[str, np.ndarray]:
    """The flow key columns of every packet of ``d`` (a Decoded), named as ``Keys``' fields
    (without ``vni``, which is ``d.vni``)."""
    assert _lib is not None
    cols = [getattr(d, name) for name in FLOW_KEY_INPUTS]
    n = cols[0].shape[0]
    for c in cols:
        assert c.flags.c_contiguous and c.shape[0] == n and c.itemsize in (1, 8)
    out = {name: np.empty(n, dtype) for name, dtype in FLOW_KEY_OUTPUTS}
    in_ptrs = (ctypes.c_void_p * len(cols))(*[_ptr(c) for c in cols])
    out_ptrs = (ctypes.c_void_p * len(out))(*[_ptr(a) for a in out.values()])
    _lib.vx_flow_keys(in_ptrs, out_ptrs, n)
    return out


def app_hints(
    buf: U8, d: Any, dns_port: np.ndarray, udp_port: np.ndarray, tcp_port: np.ndarray, start: np.ndarray,
    http_first: np.ndarray, words: I64,
) -> tuple[np.ndarray, np.ndarray]:
    """The engine's per-packet screening for the application parsers (``later``, ``maybe``; bool
    arrays, False for packets without payload), from its lookup tables."""
    assert _lib is not None
    assert buf.dtype == np.uint8 and buf.flags.c_contiguous
    tables = (dns_port, udp_port, tcp_port, start, http_first)
    assert all(t.dtype == np.bool_ and t.flags.c_contiguous for t in tables)
    assert dns_port.shape == udp_port.shape == tcp_port.shape == (65536,) and start.shape == http_first.shape == (256,)
    words = np.ascontiguousarray(words, np.int64)
    n = d.proto.shape[0]
    later = np.empty(n, np.bool_)
    maybe = np.empty(n, np.bool_)
    _lib.vx_app_hints(
        _ptr(buf), buf.shape[0], _ptr(d.proto), _ptr(d.sport), _ptr(d.dport), _ptr(d.pay_off), _ptr(d.pay_cap), n,
        *(_ptr(t) for t in tables), _ptr(words), words.shape[0], _ptr(later), _ptr(maybe),
    )
    return later, maybe


def group(h: np.ndarray) -> tuple[I64, I64]:
    """Groups of equal hashes in order of first appearance: (first element of each group,
    group of each element)."""
    assert _lib is not None
    h = np.ascontiguousarray(h, np.uint64)
    n = h.shape[0]
    inv = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    scratch = np.empty(max(16, 1 << (2 * n - 1).bit_length()), np.int64)
    k = _lib.vx_group(_ptr(h), n, _ptr(inv), _ptr(first), _ptr(scratch), scratch.shape[0])
    return first[:k], inv


def same_key(cols: list[np.ndarray], first: I64, inv: I64) -> np.ndarray:
    """Whether each element equals its group's first element in every one of ``cols`` (8-byte
    columns), the groups as ``group`` gives them."""
    assert _lib is not None
    n = inv.shape[0]
    assert first.dtype == inv.dtype == np.int64 and first.flags.c_contiguous and inv.flags.c_contiguous
    assert n == 0 or (int(inv.min()) >= 0 and int(inv.max()) < first.shape[0])
    assert first.shape[0] == 0 or (int(first.min()) >= 0 and int(first.max()) < n)
    for c in cols:
        assert c.shape == (n,) and c.itemsize == 8 and c.flags.c_contiguous
    same = np.empty(n, np.bool_)
    ptrs = (ctypes.c_void_p * len(cols))(*[_ptr(c) for c in cols])
    _lib.vx_same_key(ptrs, len(cols), n, _ptr(first), _ptr(inv), _ptr(same))
    return same


def lookup(slots: np.ndarray, khash: np.ndarray, h: np.ndarray) -> I64:
    """Flow index of each hash in the open-addressing index ``slots``, or -1."""
    assert _lib is not None
    assert slots.dtype == np.int32 and khash.dtype == np.uint64 and slots.flags.c_contiguous
    h = np.ascontiguousarray(h, np.uint64)
    out = np.empty(h.shape[0], np.int64)
    _lib.vx_lookup(_ptr(slots), slots.shape[0], _ptr(khash), _ptr(h), h.shape[0], _ptr(out))
    return out


def insert(slots: np.ndarray, flows: I64, h: np.ndarray, slot_col: np.ndarray) -> int:
    """Put ``flows`` into the index ``slots`` (and their slot into ``slot_col``); returns how
    many tombstones were reused."""
    assert _lib is not None
    assert slots.dtype == np.int32 and slot_col.dtype == np.int32
    flows = np.ascontiguousarray(flows, np.int64)
    h = np.ascontiguousarray(h, np.uint64)
    reused = _lib.vx_insert(_ptr(slots), slots.shape[0], _ptr(flows), _ptr(h), flows.shape[0], _ptr(slot_col))
    if reused < 0:  # pragma: no cover - load factor <= 1/2
        raise RuntimeError("flow hash index full")
    return int(reused)


def account(cols: dict[str, np.ndarray], **inputs: np.ndarray) -> None:
    """FlowTable.account's per-packet updates, in C (inputs named as ACCOUNT_INPUTS)."""
    assert _lib is not None
    targets = [cols[name] for name in ACCOUNT_COLUMNS]
    arrays = [np.ascontiguousarray(inputs[name], dtype) for name, dtype in ACCOUNT_INPUTS]
    n = arrays[0].shape[0]
    assert all(a.shape[0] == n for a in arrays)
    flow = arrays[0]
    if n and (int(flow.min()) < 0 or int(flow.max()) >= targets[0].shape[0]):  # C writes at these rows
        raise IndexError("account: a flow index is outside the table")
    col_ptrs = (ctypes.c_void_p * len(targets))(*[_ptr(c) for c in targets])
    in_ptrs = (ctypes.c_void_p * len(arrays))(*[_ptr(a) for a in arrays])
    _lib.vx_account(col_ptrs, in_ptrs, n)
