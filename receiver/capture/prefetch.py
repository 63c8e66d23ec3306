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
a capture larger than memory is not pulled in whole. Behind the reader it drops the pages from
the page tables again (``madvise(MADV_DONTNEED)``, the page cache keeps them): unmapping a
1 GB mapping costs the kernel 35-50 ms, which the reader's thread would otherwise pay when it
closes the file, or the process when it exits, after the last record. A page the reader needs
again after all is simply faulted in again. Compressed files are not mapped (the
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
from typing import NamedTuple

from ..process import nativelib
from . import mapguard

log = logging.getLogger("vxmirror.prefetch")

MADV_DONTNEED, MADV_POPULATE_READ = 4, 22  # (POPULATE_READ: Linux 5.14)
CHUNK = 16 << 20  # bytes faulted in (or dropped) per call: small enough to follow the reader closely
PAGE = mmap.PAGESIZE
AHEAD = 1 << 30  # at most this far in front of the reader
_GZIP_MAGIC = b"\x1f\x8b"


def _advise(advice: int, name: str) -> Callable[[int, int], bool] | None:
    """A function that applies ``madvise(advice)`` to ``n`` bytes at an address (True: done;
    libc's madvise lets the GIL go while it works), or None without libc's madvise."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int

    def advise(addr: int, n: int) -> bool:
        if madvise(addr, n, advice) == 0:
            return True
        log.debug("madvise(%s) failed: errno %d", name, ctypes.get_errno())  # POPULATE_READ, old kernel: EINVAL
        return False

    return advise


def _faulter() -> Callable[[int, int], bool] | None:
    """A function that faults in ``n`` bytes at an address (True: done), or None."""
    lib = nativelib.load()
    if lib is not None:
        touch = lib.vx_touch

        def by_touch(addr: int, n: int) -> bool:
            touch(addr, n, PAGE)
            return True

        return by_touch
    return _advise(MADV_POPULATE_READ, "MADV_POPULATE_READ")


def map_file(path: str | os.PathLike[str]) -> mmap.mmap | None:
    """A read-only mapping of an uncompressed, non-empty file; None for anything else (the
    capture reader then opens it itself and reports what is wrong)."""
    try:
        # a regular file only: reading the start of a pipe (`read <(zcat x.pcap.gz)`) would take it
        # away, and opening a FIFO would wait for a writer; "-" is standard input (capture.STDIN)
        if os.fspath(path) == "-" or not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or f.read(2) in (_GZIP_MAGIC, b""):
                return None
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    mapguard.guard(m)  # (touched ahead below: a file that shrinks meanwhile must not end the process)
    return m


class _File:
    """A mapped file the thread works on: populated up to ``populated``, dropped below ``behind``."""

    __slots__ = ("addr", "behind", "i", "m", "populated", "size")

    def __init__(self, i: int, m: mmap.mmap) -> None:
        self.i, self.m, self.size, self.addr = i, m, len(m), mapguard.address(m)
        self.populated = self.behind = 0


class _Job(NamedTuple):
    """Populate or drop ``n`` bytes of ``file`` at ``pos``; no file: map the next path."""

    file: _File | None = None
    populate: bool = True
    pos: int = 0
    n: int = 0


class Prefetcher:
    """Maps ``paths`` one after the other, populates each mapping ahead of the reader and drops
    the pages it has left behind.

    ``mapping(i)`` hands out file ``i``'s mapping (waiting until the thread has made it; None when
    the file is not mapped); the reader reports how far it got with ``reached(i, pos)`` (the
    pages before ``pos`` are not needed any more); ``close()`` stops the thread. The thread maps
    file ``i + 1`` once file ``i`` is populated to its end.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], ahead: int = AHEAD, chunk: int = CHUNK) -> None:
        self.paths = list(paths)
        self.ahead, self.chunk = ahead, chunk
        self.populated = 0  # bytes populated, all files (for tests and benchmarks)
        self.dropped = 0  # bytes dropped behind the reader, all files
        self._maps: dict[int, mmap.mmap | None] = {}
        self._reader = (0, 0)  # (file, position) the reader reported
        self._stop = False
        self._cond = threading.Condition()
        self._fault_in = _faulter()
        self._drop = _advise(MADV_DONTNEED, "MADV_DONTNEED")  # pages behind the reader
        self._thread = threading.Thread(target=self._run, name="vxmirror-prefetch", daemon=True)
        self._thread.start()

    def mapping(self, i: int, advance: bool = True) -> mmap.mmap | None:
        """``advance``: the reader is done with the files before ``i`` (False: it asks ahead)."""
        with self._cond:
            if advance:
                self._advance(i, 0)  # (however far it read them)
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
        files: list[_File] = []  # mapped, and the reader not past them yet
        next_path = 0
        try:
            while True:
                with self._cond:
                    while True:
                        if self._stop:
                            return
                        reader = self._reader[0]
                        files = [f for f in files if f.i >= reader and not f.m.closed]
                        next_path = max(next_path, reader)  # (files the reader skipped are not mapped)
                        job = self._job(files, next_path)
                        if job is not None:
                            break
                        self._cond.wait()
                f = job.file
                if f is None:
                    if not self._map(next_path, files):
                        return
                    next_path += 1
                elif not self._apply(job):
                    files.remove(f)
                elif job.populate:
                    f.populated += job.n
                    self.populated += job.n
                else:
                    f.behind += job.n
                    self.dropped += job.n
        except Exception:  # pragma: no cover - prefetching only saves time: never fail the read
            log.exception("prefetch thread failed; reading continues without it")
            with self._cond:
                self._stop = True
                self._cond.notify_all()

    def _job(self, files: list[_File], next_path: int) -> _Job | None:
        """What to do next (under the lock): drop pages the reader left, populate ahead of it,
        map the next file, or nothing until the reader moves."""
        at, pos = self._reader
        for f in files:  # the reader's own file first: what it left behind
            if f.i == at:
                f.populated = max(f.populated, min(pos, f.size) // PAGE * PAGE)  # (not worth faulting in now)
                upto = min(pos, f.size) // self.chunk * self.chunk
                if upto > f.behind and self._drop is not None:
                    return _Job(f, False, f.behind, upto - f.behind)
        for f in files:
            if f.populated < f.size:
                if self._fault_in is None:
                    break
                limit = ((pos if f.i == at else 0) + self.ahead) // PAGE * PAGE
                if limit <= f.populated:
                    return None
                return _Job(f, True, f.populated, min(self.chunk, f.size - f.populated, limit - f.populated))
        return _Job() if next_path < len(self.paths) else None

    def _map(self, i: int, files: list[_File]) -> bool:
        """Map file ``i`` and hand it out; False when told to stop meanwhile."""
        m = map_file(self.paths[i])
        with self._cond:
            if self._stop:
                if m is not None:
                    m.close()
                return False
            self._maps[i] = m
            self._cond.notify_all()
        if m is not None:
            files.append(_File(i, m))
        return True

    def _apply(self, job: _Job) -> bool:
        """Do ``job`` (on a file); False: no more work on this file."""
        f, fn = job.file, self._fault_in if job.populate else self._drop
        assert f is not None and fn is not None
        # a buffer export while working: the mapping cannot be unmapped under it (its Capture's
        # close() then leaves it to be unmapped when this thread lets go)
        try:
            with memoryview(f.m):
                return fn(f.addr + job.pos, job.n)
        except ValueError:  # the reader closed the mapping: done with this file
            return False
