"""A receive thread in C per socket (``receiver/listen/vxrecv.c``), for the drain.

The thread runs ``recvmmsg`` without the GIL and packs each datagram into a byte ring with
its length, arrival time and sender; the worker's event loop is woken through an eventfd and
takes what is waiting as PacketBatches viewing the ring (no copy), releasing them when the
handler returns. While the worker spends milliseconds on a batch the thread keeps the
socket buffer empty, so short processing pauses no longer turn into kernel drops. When the
ring itself is full the thread waits (and counts ``ring_full_waits``): the kernel buffer
then fills, as it would without the thread.

Used by ``receiver.listen.drain`` when the C library is built and ``listen.receive_thread``
is on; otherwise the drain calls ``recvmmsg`` itself (``receiver.listen.mmsg``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from .. import native
from ..packets import Layer, PacketBatch
from .mmsg import IOVEC, MMSGHDR

NAME_SIZE = 32
STOP_NOW, STOP_DRAINED = 1, 2  # = the enum in vxrecv.c
CONTROL_LEN = 64  # = CONTROL_LEN in vxrecv.c
GRO_STAGE = 65536  # a coalesced message is at most 64 KiB
IPPROTO_UDP = 17
UDP_GRO = 104  # linux/udp.h


_FIELDS = (
    "fd", "evfd", "vlen", "slot_size", "stage_size", "control", "data", "data_size", "start", "end_abs", "caplen",
    "wirelen", "ts", "addr", "rec_size", "staging", "msgs", "iov", "names", "notify_records", "head_rec",
    "head_byte", "tail_rec", "tail_byte", "stop", "waiting", "received", "bytes", "truncated", "ring_full_waits",
    "errors", "last_errno", "running",
)
_POINTERS = {
    "control", "data", "start", "end_abs", "caplen", "wirelen", "ts", "addr", "staging", "msgs", "iov", "names",
}


class _Rx(ctypes.Structure):
    """``struct vx_rx``: every field is 8 bytes wide, so the layout is the same on LP64 targets."""

    _fields_ = [(name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in _FIELDS]


_STUCK: list[RecvThread] = []  # receive threads that would not stop (their buffers are kept)
log = logging.getLogger("vxmirror.listen")

COUNTERS = ("received", "bytes", "truncated", "ring_full_waits", "errors")


class RecvThread:
    """The receive thread of one socket and its ring (``records`` datagrams, ``ring_bytes``)."""

    def __init__(self, sock: socket.socket, records: int, ring_bytes: int, slot_size: int, vlen: int,
                 notify_records: int, gro: bool = False) -> None:
        """``gro``: ask the kernel to coalesce datagrams (UDP_GRO); the thread splits them again."""
        lib = native.library()
        if lib is None:
            raise RuntimeError("the C library (receiver/native) is not built")
        self._lib = lib
        self.sock = sock
        self.family = sock.family
        ring_bytes = max(ring_bytes, 2 * slot_size)
        self.data = np.zeros(ring_bytes, np.uint8)
        self.offsets = np.zeros(records, np.int64)
        self.end_abs = np.zeros(records, np.int64)
        self.caplen = np.zeros(records, np.uint32)
        self.wirelen = np.zeros(records, np.uint32)
        self.ts = np.zeros(records, np.float64)
        self.addr = np.zeros((records, 16), np.uint8)
        self.gro = gro and _enable_gro(sock)
        stage = GRO_STAGE if self.gro else slot_size
        self.staging = np.zeros(vlen * stage, np.uint8)
        self.control = np.zeros(vlen * CONTROL_LEN, np.uint8)
        self.msgs = np.zeros(vlen, MMSGHDR)
        self.iov = np.zeros(vlen, IOVEC)
        self.names = np.zeros(vlen * NAME_SIZE, np.uint8)
        self.evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        rx = self.rx = _Rx()
        rx.fd, rx.evfd, rx.vlen, rx.slot_size, rx.stage_size = sock.fileno(), self.evfd, vlen, slot_size, stage
        rx.data_size, rx.rec_size, rx.notify_records = ring_bytes, records, notify_records
        arrays: dict[str, np.ndarray] = {
            "data": self.data, "start": self.offsets, "end_abs": self.end_abs, "caplen": self.caplen,
            "wirelen": self.wirelen, "ts": self.ts, "addr": self.addr, "staging": self.staging, "msgs": self.msgs,
            "iov": self.iov, "names": self.names, "control": self.control,
        }
        assert set(arrays) == _POINTERS
        for name, a in arrays.items():
            setattr(rx, name, a.ctypes.data)
        rx.waiting = 1
        self._ref = ctypes.byref(rx)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        # ctypes lets go of the GIL for the call: the loop in C runs beside the interpreter
        self._thread = threading.Thread(target=self._lib.vx_rx_run, args=(self._ref,), name="vxmirror-rx",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (within ~50 ms); what it already received stays in the ring."""
        self.rx.stop = STOP_NOW
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - it checks the flag every 50 ms
                # it still writes into our arrays: they must outlive it, whatever happens to us
                _STUCK.append(self)
                log.error("receive thread did not stop", extra={"fields": {"socket": self.sock.fileno()}})
            self._thread = None

    def drain_and_stop(self, consume: Callable[[], None], timeout: float = 10.0) -> None:
        """Let the thread empty the socket (at most 16 rings' worth more) and stop, calling
        ``consume`` meanwhile so that it never waits on a full ring; what is left after it
        stopped is for the caller's last ``consume``. The socket may hold coalesced datagrams
        only this thread can split, so it, not a plain recvmmsg, reads the backlog."""
        self.rx.stop = STOP_DRAINED
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            consume()
            self._thread.join(0.001)
        self.stop()

    def close(self) -> None:
        self.stop()
        os.close(self.evfd)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- consumer side ---------------------------------------------------------------------
    def clear_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.evfd)

    def pending(self, idle: bool = False) -> int:
        """Datagrams waiting; ``idle=True`` also asks to be woken (eventfd) when more arrive."""
        return int(self._lib.vx_rx_pending(self._ref, int(idle)))

    def take(self, max_records: int) -> tuple[int, int]:
        """The next run of waiting records, contiguous in the record ring: (first, end) as
        absolute record numbers (empty when first == end)."""
        first = int(self.rx.tail_rec)
        n = min(self.pending(), max_records)
        size = self.offsets.shape[0]
        n = min(n, size - first % size)  # stop at the end of the record ring
        return first, first + n

    def batch(self, first: int, end: int, layer: Layer, port: int) -> PacketBatch:
        """Records ``first..end`` as a PacketBatch viewing the ring (valid until ``release``)."""
        size = self.offsets.shape[0]
        a, b = first % size, first % size + (end - first)
        n = b - a
        src = np.ascontiguousarray(self.addr[a:b, :4]).view(">u4").reshape(-1).astype(np.uint32)
        if self.family != socket.AF_INET:
            src = np.zeros(n, np.uint32)
        return PacketBatch(
            buf=self.data, start=self.offsets[a:b].copy(), caplen=self.caplen[a:b].copy(),
            wirelen=self.wirelen[a:b].copy(), ts=self.ts[a:b].copy(), layer=layer, src_addr=src,
            dst_port=np.full(n, port, np.uint16),
        )

    def src_ipv6(self, first: int, end: int) -> np.ndarray:
        size = self.offsets.shape[0]
        a = first % size
        return self.addr[a : a + (end - first)]

    def release(self, end: int) -> None:
        self._lib.vx_rx_release(self._ref, end)

    def counters(self) -> dict[str, int]:
        return {k: int(getattr(self.rx, k)) for k in COUNTERS}


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(IPPROTO_UDP, UDP_GRO, 1)
    except OSError:  # an old kernel: datagrams come one by one
        return False
    return True
