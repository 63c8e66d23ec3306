"""The capture reading thread in C (``receiver/capture/vxread.c``): the stateless half of the
engine (record scan, record columns, common-shape decode, flow keys, grouping, application
screening) for a whole classic pcap, or for a run of a pcapng section's enhanced packet blocks,
without the GIL, into a ring of batch slots.

:class:`PcapReader` runs ``vx_read_run`` on a Python thread (ctypes releases the GIL for the
whole call) and hands out the filled slots in file order as :class:`Slot` objects whose arrays
view the slot's memory: a slot is valid until it is released, and the thread fills it again
after that. ``receiver.capture.readahead`` turns slots into (PacketBatch, Prepared) pairs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..decode.apptables import AppTables
from ..decode.cloops import DECODE_COLUMNS, FLOW_KEY_OUTPUTS
from ..native import MAX_LANES, library, sparse_int64
from ..packets import U8

if TYPE_CHECKING:
    from .pcapng import Interface

# the slot columns, in vxread.c's order (its C_* enum); the decode columns' types are Decoded's
_DECODED_DTYPES = {
    "status": np.uint8, "vxlan_reserved": np.bool_, "ipver": np.uint8, "truncated": np.bool_, "frag": np.uint8,
    "src_hi": np.uint64, "src_lo": np.uint64, "dst_hi": np.uint64, "dst_lo": np.uint64,
}
READ_COLUMNS: tuple[tuple[str, type], ...] = (
    ("start", np.int64), ("caplen", np.uint32), ("wirelen", np.uint32), ("ts", np.float64),
    *((name, _DECODED_DTYPES.get(name, np.int64)) for name in DECODE_COLUMNS),
    ("handled", np.bool_),
    *((f"key_{name}", dtype) for name, dtype in FLOW_KEY_OUTPUTS),
    ("inv", np.int64), ("first", np.int64), ("same", np.bool_), ("later", np.bool_), ("maybe", np.bool_),
)
F_PREPARED, F_FRAGMENTS = 1, 4  # slot flags (= vxread.c)

_FIELDS = (
    "buf", "buflen", "pos", "big_endian", "nanos", "max_len", "frac_lim", "lanes", "window", "layer", "max_depth",
    "app", "vx_ports", "n_vx", "gn_ports", "n_gn", "dns_port", "udp_port", "tcp_port", "start_byte", "http_first",
    "words", "n_words", "offs", "scan_scratch", "group_scratch", "group_scratch_size", "batch", "n_slots", "cols",
    "col_size", "slot_n", "slot_unhandled", "slot_groups", "slot_flags", "slot_next", "evfd", "format", "n_ifaces",
    "if_per_second", "if_scale", "if_offset", "ng_iface", "ng_units", "head", "tail", "stop", "waiting",
    "status", "end_pos", "records", "slot_waits", "running", "done",
)
_POINTERS = {
    "buf", "vx_ports", "gn_ports", "dns_port", "udp_port", "tcp_port", "start_byte", "http_first", "words", "offs",
    "scan_scratch", "group_scratch", "cols", "col_size", "slot_n", "slot_unhandled", "slot_groups", "slot_flags",
    "slot_next", "if_per_second", "if_scale", "if_offset", "ng_iface", "ng_units",
}


class _Read(ctypes.Structure):
    """``struct vx_read``: every field is 8 bytes wide."""

    _fields_ = [(name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in _FIELDS]


@dataclass
class Slot:
    """One batch as the thread left it (arrays view the slot: valid until released)."""

    number: int  # slots handed out before this one
    n: int  # packets
    unhandled: int  # packets the C decode did not take (Python decodes them, then prepares the batch)
    groups: int  # distinct flows, when the flow keys were made
    flags: int  # F_PREPARED (nothing left unhandled: every packet decoded), F_FRAGMENTS
    next_pos: int  # where the records after this slot's start in the file
    cols: dict[str, np.ndarray]  # READ_COLUMNS, each cut to n


class _Buffers:
    """The arrays a reading thread works in, by size: kept for the next reader when one closes
    (reading many small files, allocating and first touching them again cost 1-2 ms a file)."""

    def __init__(self, batch: int, slots: int, window: int) -> None:
        self.key = (batch, slots, window)
        self.slots: list[dict[str, np.ndarray]] = [
            {name: np.empty(batch, dtype) for name, dtype in READ_COLUMNS} for _ in range(slots)
        ]
        self.cols = (ctypes.c_void_p * (slots * len(READ_COLUMNS)))(
            *[int(s[name].ctypes.data) for s in self.slots for name, _ in READ_COLUMNS]
        )
        words = (window // 16) + 2
        self.offs = sparse_int64(words)
        self.scan_scratch = sparse_int64(words + 2 * MAX_LANES + 64)
        self.group_scratch = np.empty(max(16, 1 << (2 * batch - 1).bit_length()), np.int64)
        self.ng_iface, self.ng_units = np.empty(batch, np.int64), np.empty(batch, np.uint64)

    @classmethod
    def take(cls, batch: int, slots: int, window: int) -> _Buffers:
        with _FREE_LOCK:
            free = _FREE.pop((batch, slots, window), None)
        return free if free is not None else cls(batch, slots, window)

    def give_back(self) -> None:
        with _FREE_LOCK:
            _FREE[self.key] = self  # (one set a size: what a sequence of files reads with)


_FREE: dict[tuple[int, int, int], _Buffers] = {}
_FREE_LOCK = threading.Lock()


class PcapReader:
    """The C reading thread over ``data`` from ``pos``: a classic pcap's records from that record
    header to the end, or, given the pcapng section's ``interfaces`` (all of one link type,
    ``layer``), the enhanced packet blocks from that block on, up to the first block or anything
    else that the Python walk (``receiver.capture.pcapng.walk``) has to look at (``end_pos``)."""

    def __init__(
        self, data: U8, pos: int, *, big_endian: bool, nanos: bool, max_len: int, frac_lim: int, window: int,
        layer: int, vxlan_ports: tuple[int, ...], geneve_ports: tuple[int, ...], max_depth: int,
        tables: AppTables | None, batch: int, slots: int = 4, interfaces: Sequence[Interface] | None = None,
    ) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("the C library (receiver/native) is not built")
        self._lib = lib
        assert data.dtype == np.uint8 and data.flags.c_contiguous
        self.data = data
        keep: list[np.ndarray] = []  # every array the thread reads or writes: alive as long as this

        def arr(a: np.ndarray) -> int:
            keep.append(a)
            return int(a.ctypes.data)

        self._buffers = b = _Buffers.take(batch, slots, window)
        self._slots = b.slots
        self._meta = {k: np.zeros(slots, np.int64) for k in ("n", "unhandled", "groups", "flags", "next")}
        self._evfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        r = self._r = _Read()
        r.buf, r.buflen, r.pos = int(data.ctypes.data), data.shape[0], pos
        r.big_endian, r.nanos, r.max_len, r.frac_lim = int(big_endian), int(nanos), max_len, frac_lim
        r.lanes, r.window, r.layer, r.max_depth = 8, window, layer, max_depth
        r.vx_ports, r.n_vx = arr(np.array(vxlan_ports, np.int64)), len(vxlan_ports)
        r.gn_ports, r.n_gn = arr(np.array(geneve_ports, np.int64)), len(geneve_ports)
        r.app = int(tables is not None)
        if tables is not None:
            for name in ("dns_port", "udp_port", "tcp_port", "start_byte", "http_first"):
                t = getattr(tables, name)
                assert t.dtype == np.bool_ and t.flags.c_contiguous
                assert t.shape == ((65536,) if name.endswith("port") else (256,))
                setattr(r, name, arr(t))
            r.words, r.n_words = arr(np.ascontiguousarray(tables.words, np.int64)), tables.words.shape[0]
        r.offs, r.scan_scratch = arr(b.offs), arr(b.scan_scratch)
        r.group_scratch, r.group_scratch_size = arr(b.group_scratch), b.group_scratch.shape[0]
        r.batch, r.n_slots, r.cols = batch, slots, ctypes.cast(b.cols, ctypes.c_void_p)
        r.col_size = arr(np.array([np.dtype(d).itemsize for _, d in READ_COLUMNS], np.int64))
        r.slot_n, r.slot_unhandled = arr(self._meta["n"]), arr(self._meta["unhandled"])
        r.slot_groups, r.slot_flags = arr(self._meta["groups"]), arr(self._meta["flags"])
        r.slot_next = arr(self._meta["next"])
        r.evfd = self._evfd
        if interfaces is not None:
            r.format, r.n_ifaces = 1, len(interfaces)
            r.if_per_second = arr(np.array([i.per_second for i in interfaces], np.uint64))
            r.if_scale = arr(np.array([i.scale for i in interfaces], np.float64))
            r.if_offset = arr(np.array([i.offset for i in interfaces], np.float64))
            r.ng_iface, r.ng_units = arr(b.ng_iface), arr(b.ng_units)
        self._keep = keep
        self._taken = 0  # slots handed out
        self._thread = threading.Thread(target=lib.vx_read_run, args=(ctypes.byref(r),), name="vxmirror-read",
                                        daemon=True)
        self._thread.start()

    # -- results, once the iteration ended ------------------------------------------------------
    @property
    def status(self) -> int:
        """SCAN_OK, SCAN_TRUNCATED or SCAN_BAD (receiver.native) for where the scan stopped."""
        return int(self._r.status)

    @property
    def end_pos(self) -> int:
        return int(self._r.end_pos)

    @property
    def slot_waits(self) -> int:
        """Times the thread waited for a free slot (Python was behind)."""
        return int(self._r.slot_waits)

    # -- the slots --------------------------------------------------------------------------------
    def slots(self) -> Iterator[Slot]:
        """The filled slots in order; the caller releases each (``release``) when done with it."""
        lib, r = self._lib, ctypes.byref(self._r)
        while True:
            if lib.vx_read_ready(r, 0) <= 0:
                done = bool(self._r.done)  # read before the last look: a slot may come just before
                if lib.vx_read_ready(r, 1) <= 0:
                    if done:
                        lib.vx_read_ready(r, 0)
                        return
                    select.select([self._evfd], [], [], 0.05)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._evfd)
                lib.vx_read_ready(r, 0)
                continue
            k = self._taken % len(self._slots)
            n = int(self._meta["n"][k])
            s = self._slots[k]
            yield Slot(
                self._taken, n, int(self._meta["unhandled"][k]), int(self._meta["groups"][k]),
                int(self._meta["flags"][k]), int(self._meta["next"][k]), {name: a[:n] for name, a in s.items()},
            )
            self._taken += 1

    def release(self, slot: Slot) -> None:
        """The caller is done with ``slot`` and every slot before it."""
        self._lib.vx_read_release(ctypes.byref(self._r), slot.number + 1)

    def close(self) -> None:
        """Stop the thread (if still running) and wait for it."""
        self._r.stop = 1
        self._lib.vx_read_release(ctypes.byref(self._r), 1 << 62)  # a waiting thread sees the stop
        self._thread.join()
        with contextlib.suppress(OSError):
            os.close(self._evfd)
        if self._evfd >= 0:  # (once: the arrays go to the next reader, which writes them)
            self._buffers.give_back()
        self._evfd = -1

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
