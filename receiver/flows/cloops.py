"""The C loops of the flow table, wrapped (receiver/native/vxnative.c): ``group``, ``same_key``,
``lookup``, ``insert``, ``account``, the table's per-packet work (twins: in ``receiver.flows.table``)."""

from __future__ import annotations

import ctypes

import numpy as np

from ..native import _ptr, library
from ..packets import I64

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


def group(h: np.ndarray) -> tuple[I64, I64]:
    """Groups of equal hashes in order of first appearance: (first element of each group,
    group of each element)."""
    _lib = library()
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
    _lib = library()
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
    _lib = library()
    assert _lib is not None
    assert slots.dtype == np.int32 and khash.dtype == np.uint64 and slots.flags.c_contiguous
    h = np.ascontiguousarray(h, np.uint64)
    out = np.empty(h.shape[0], np.int64)
    _lib.vx_lookup(_ptr(slots), slots.shape[0], _ptr(khash), _ptr(h), h.shape[0], _ptr(out))
    return out


def insert(slots: np.ndarray, flows: I64, h: np.ndarray, slot_col: np.ndarray) -> int:
    """Put ``flows`` into the index ``slots`` (and their slot into ``slot_col``); returns how
    many tombstones were reused."""
    _lib = library()
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
    _lib = library()
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
