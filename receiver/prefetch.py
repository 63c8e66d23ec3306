"""Mapping capture files and faulting their pages in on another core, ahead of the reader.

Reading a mapped 1 GB capture from the page cache costs the kernel about 0.1 s of page faults
(one per fault-around block of pages), all on the thread that reads. A :class:`Prefetcher` maps
the files itself and a background thread faults the pages in ahead of the reader, so the faults
move to the other core; they start while the CLI is still importing numpy. On a cold cache the
same faults read the file from disk ahead of the reader.

The thread touches one byte per page in C (``vx_touch`` of the native library, called through
ctypes: the GIL is released). A page fault on a file mapping locks only that mapping, where
``madvise(MADV_POPULATE_READ)`` holds the address space's lock for reading while it works,
which stalls every ``mmap`` and ``brk`` of the other threads: measured here, it slowed the CLI's
imports by 70 ms. madvise is the fallback when the library is not built.

It stays at most ``ahead`` bytes in front of the position the reader reports (``reached``), so
a capture larger than memory is not pulled in whole. Compressed files are not mapped (the
capture reader decompresses them); a file that cannot be opened is left to the capture reader,
which reports it. Only the standard library is imported here (and the native library through
ctypes): the CLI starts this before numpy is loaded. Nothing here changes what is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import stat
import threading
from collections.abc import Callable, Sequence

from . import nativelib

log = logging.getLogger("vxmirror.prefetch")

MADV_POPULATE_READ = 22  # Linux 5.14
CHUNK = 16 << 20  # bytes faulted in per call: small enough to follow the reader's window closely
PAGE = mmap.PAGESIZE
AHEAD = 1 << 30  # at most this far in front of the reader
_GZIP_MAGIC = b"\x1f\x8b"


class _PyBuffer(ctypes.Structure):  # Py_buffer, to learn a read-only mapping's address without numpy
    _fields_ = (
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    )


def _address(m: mmap.mmap) -> int:
    view = _PyBuffer()
    obj = ctypes.py_object(m)
    if ctypes.pythonapi.PyObject_GetBuffer(obj, ctypes.byref(view), 0) != 0:  # pragma: no cover
        raise OSError("no buffer")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def _faulter() -> Callable[[int, int], bool] | None:
    """A function that faults in ``n`` bytes at an address (True: done), or None."""
    lib = nativelib.load()
    if lib is not None:
        touch = lib.vx_touch

        def by_touch(addr: int, n: int) -> bool:
            touch(addr, n, PAGE)
            return True

        return by_touch
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int

    def by_madvise(addr: int, n: int) -> bool:
        if madvise(addr, n, MADV_POPULATE_READ) == 0:
            return True
        log.debug("madvise(MADV_POPULATE_READ) failed: errno %d", ctypes.get_errno())  # an old kernel: EINVAL
        return False

    return by_madvise


def map_file(path: str | os.PathLike[str]) -> mmap.mmap | None:
    """A read-only mapping of an uncompressed, non-empty file; None for anything else (the
    capture reader then opens it itself and reports what is wrong)."""
    try:
        with open(path, "rb") as f:
            # a regular file only: reading the start of a pipe (`read <(zcat x.pcap.gz)`) would take it away
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or f.read(2) in (_GZIP_MAGIC, b""):
                return None
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


class Prefetcher:
    """Maps ``paths`` one after the other and populates each mapping ahead of the reader.

    ``mapping(i)`` hands out file ``i``'s mapping (waiting until the thread has made it; None when
    the file is not mapped); the reader reports how far it got with ``reached(i, pos)``; ``close()``
    stops the thread. The thread moves to file ``i + 1`` when file ``i`` is populated to its end.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], ahead: int = AHEAD, chunk: int = CHUNK) -> None:
        self.paths = list(paths)
        self.ahead, self.chunk = ahead, chunk
        self.populated = 0  # bytes populated, all files (for tests and benchmarks)
        self._maps: dict[int, mmap.mmap | None] = {}
        self._reader = (0, 0)  # (file, position) the reader reported
        self._stop = False
        self._cond = threading.Condition()
        self._fault_in = _faulter()
        self._thread = threading.Thread(target=self._run, name="vxmirror-prefetch", daemon=True)
        self._thread.start()

    def mapping(self, i: int) -> mmap.mmap | None:
        with self._cond:
            self._advance(i, 0)  # the reader is done with the files before i (however far it read them)
            self._cond.wait_for(lambda: i in self._maps or self._stop or not self._thread.is_alive())
            return self._maps.pop(i, None)

    def reached(self, i: int, pos: int) -> None:
        with self._cond:
            self._advance(i, pos)

    def _advance(self, i: int, pos: int) -> None:
        if (i, pos) > self._reader:
            self._reader = (i, pos)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        for m in self._maps.values():  # mapped but never handed out
            if m is not None:
                with contextlib.suppress(BufferError):
                    m.close()
        self._maps.clear()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for i, path in enumerate(self.paths):
                m = map_file(path)
                with self._cond:
                    if self._stop:
                        if m is not None:
                            m.close()
                        return
                    self._maps[i] = m
                    self._cond.notify_all()
                if m is not None and self._fault_in is not None and not self._populate(i, m):
                    return
                del m  # (a mapping its Capture closed while populated is unmapped here)
        except Exception:  # pragma: no cover - prefetching only saves time: never fail the read
            log.exception("prefetch thread failed; reading continues without it")
            with self._cond:
                self._stop = True
                self._cond.notify_all()

    def _populate(self, i: int, m: mmap.mmap) -> bool:
        """Populate file ``i`` in chunks, staying within ``ahead`` of the reader, until its end or
        until the reader moves past it. False: stop altogether."""
        assert self._fault_in is not None
        pos, size = 0, len(m)
        while pos < size:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._reader[0] > i or self._limit(i) > pos)  # noqa: B023
                if self._stop:
                    return False
                if self._reader[0] > i:
                    return True
                n = min(self.chunk, size - pos, self._limit(i) - pos)
            if m.closed:  # the reader is done with this file
                return True
            # a buffer export while faulting: the mapping cannot be unmapped under it (its Capture's
            # close() then leaves it to be unmapped when this thread lets go)
            with memoryview(m):
                ok = self._fault_in(_address(m) + pos, n)
            if not ok:  # prefetching just ends
                return False
            pos += n
            self.populated += n
        return True

    def _limit(self, i: int) -> int:
        f, pos = self._reader
        return pos + self.ahead if f == i else self.ahead
