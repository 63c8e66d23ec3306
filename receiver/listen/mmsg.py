"""``recvmmsg`` through ctypes into a preallocated ring of fixed-size slots.

The ring is one numpy ``[slots, slot_size]`` uint8 block. Beside it, numpy structured
arrays laid out exactly as the kernel's ``struct iovec`` and ``struct mmsghdr`` (x86-64 and
aarch64 LP64 layouts) point into it, one per slot, plus a 32-byte ``sockaddr`` area per slot
for the sender's address. One ``recvmmsg(fd, &msgs[fill], n, MSG_DONTWAIT | MSG_TRUNC, NULL)``
fills slots ``fill .. fill+k``; the message lengths are read back through a column view.
Nothing is copied packet by packet and nothing is allocated per datagram.

``MSG_TRUNC`` makes ``msg_len`` the datagram's real length even when it exceeded the slot,
so a datagram larger than ``slot_size`` arrives with ``caplen < wirelen`` (counted as
truncated) rather than silently shortened.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time

import numpy as np

from ..packets import F64, U16, U32, Layer, PacketBatch

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
NAME_SIZE = 32  # >= sizeof(struct sockaddr_in6) (28)

IOVEC = np.dtype([("base", np.uint64), ("len", np.uint64)])
MMSGHDR = np.dtype(
    [
        ("name", np.uint64),
        ("namelen", np.uint32),
        ("_pad0", np.uint32),
        ("iov", np.uint64),
        ("iovlen", np.uint64),
        ("control", np.uint64),
        ("controllen", np.uint64),
        ("flags", np.int32),
        ("_pad1", np.uint32),
        ("msg_len", np.uint32),
        ("_pad2", np.uint32),
    ]
)
assert IOVEC.itemsize == 16 and MMSGHDR.itemsize == 64

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


class RecvRing:
    """A ring of ``slots`` datagram slots of ``slot_size`` bytes, filled by ``recv``."""

    def __init__(self, slots: int, slot_size: int, family: int = socket.AF_INET) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self.family = family
        self.data = np.zeros((slots, slot_size), np.uint8)
        self.names = np.zeros((slots, NAME_SIZE), np.uint8)
        self.iov = np.zeros(slots, IOVEC)
        self.msgs = np.zeros(slots, MMSGHDR)
        base = self.data.ctypes.data
        self.iov["base"] = base + np.arange(slots, dtype=np.uint64) * np.uint64(slot_size)
        self.iov["len"] = slot_size
        self.msgs["name"] = self.names.ctypes.data + np.arange(slots, dtype=np.uint64) * NAME_SIZE
        self.msgs["namelen"] = NAME_SIZE
        self.msgs["iov"] = self.iov.ctypes.data + np.arange(slots, dtype=np.uint64) * IOVEC.itemsize
        self.msgs["iovlen"] = 1
        self._msgs_addr = self.msgs.ctypes.data
        self.ts = np.zeros(slots, np.float64)
        self.fill = 0
        self.first_ts = 0.0  # monotonic time the oldest datagram in the ring arrived

    @property
    def free(self) -> int:
        return self.slots - self.fill

    def recv(self, fd: int, max_count: int) -> int:
        """One recvmmsg into the next free slots; the number received (0: socket empty)."""
        n = min(max_count, self.slots - self.fill)
        if n <= 0:
            return 0
        f = self.fill
        self.msgs["namelen"][f : f + n] = NAME_SIZE
        got = _recvmmsg(fd, self._msgs_addr + f * MMSGHDR.itemsize, n, MSG_DONTWAIT | MSG_TRUNC, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        if got:
            if f == 0:
                self.first_ts = time.monotonic()
            self.ts[f : f + got] = time.time()
            self.fill = f + got
        return got

    def lengths(self) -> U32:
        return self.msgs["msg_len"][: self.fill].astype(np.uint32)

    def src_ipv4(self) -> U32:
        """Senders' IPv4 addresses (host order; 0 for other families)."""
        names = self.names[: self.fill]
        if self.family != socket.AF_INET:
            return np.zeros(self.fill, np.uint32)
        return np.ascontiguousarray(names[:, 4:8]).view(">u4").reshape(-1).astype(np.uint32)

    def src_ipv6(self) -> np.ndarray:
        """Senders' IPv6 addresses as ``[n, 16]`` bytes (AF_INET6 sockets only)."""
        return self.names[: self.fill, 8:24]

    def batch(self, layer: Layer, port: int) -> PacketBatch:
        """The filled slots as a PacketBatch viewing the ring (valid until ``reset``)."""
        n = self.fill
        lens = self.lengths()
        dst: U16 = np.full(n, port, np.uint16)
        ts: F64 = self.ts[:n].copy()
        return PacketBatch.from_slots(
            self.data[:n], lens, ts, layer, src_addr=self.src_ipv4(), dst_port=dst, wirelen=lens
        )

    def reset(self) -> None:
        self.fill = 0
