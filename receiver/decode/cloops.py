"""The C loops of decoding, wrapped (receiver/native/vxnative.c): ``decode_common``, the common packet
shapes several layers in one pass (twins: the stages of ``receiver.decode.fast``); ``flow_keys``, each
packet's flow key and hash (twin: ``receiver.flows.keys.make_keys``); ``app_hints``, the engine's
screening of packets for the application parsers (twins: ``receiver.engine._app_later`` and
``_app_maybe``)."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..native import _ptr, library
from ..packets import I64, U8, U32

# the Decoded columns vx_decode_common writes, in the order of its `cols` argument
DECODE_COLUMNS = (
    "status", "vni", "inner_start", "depth", "vxlan_reserved", "ipver", "src_hi", "src_lo", "dst_hi",
    "dst_lo", "proto", "sport", "dport", "iplen", "tcpflags", "pay_off", "pay_len", "pay_cap",
    "truncated", "frag", "ipid", "tcpseq", "tcpack",
)


def decode_common(
    buf: U8, start: I64, caplen: U32, layer: int, vxlan_ports: I64, geneve_ports: I64, max_depth: int, out: Any
) -> np.ndarray:
    """Fill the rows of ``out`` (a Decoded) for the packets of the common shape; returns the
    handled mask (bool). Rows of the other packets are not touched."""
    _lib = library()
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


FLOW_KEY_INPUTS = ("vni", "ipver", "proto", "src_hi", "src_lo", "sport", "dst_hi", "dst_lo", "dport")


FLOW_KEY_OUTPUTS = (
    ("proto", np.int64), ("a_hi", np.uint64), ("a_lo", np.uint64), ("a_port", np.int64), ("b_hi", np.uint64),
    ("b_lo", np.uint64), ("b_port", np.int64), ("direction", np.int64), ("hash", np.uint64),
)


def flow_keys(d: Any) -> dict[str, np.ndarray]:
    """The flow key columns of every packet of ``d`` (a Decoded), named as ``Keys``' fields
    (without ``vni``, which is ``d.vni``)."""
    _lib = library()
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
    _lib = library()
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
