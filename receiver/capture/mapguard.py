"""Mapped capture files that shrink while they are read.

A capture truncated while it is mapped (tcpdump's ring buffer, ``-C``/``-W``, reopening its
oldest file; a copytruncate rotation) makes every access past its new end raise SIGBUS, which
ends the process and every record of the run with it. :func:`guard` registers a mapping with the
native library's SIGBUS handler (``receiver/capture/vxguard.c``): a page of it that faults that
way reads as zeros instead, and :func:`faults` counts them. The capture reader checks the file's
size between batches (``Capture.shrunk_to``) and stops reading it there, so the zeros are not
taken for packets. Without the native library nothing is guarded.

Only the standard library is imported here: the prefetcher guards its mappings before numpy is
loaded.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import weakref

from ..process import nativelib

_guards: dict[int, int] = {}  # mapping address -> guard number
_lock = threading.Lock()


class _PyBuffer(ctypes.Structure):  # Py_buffer, to learn a read-only mapping's address without numpy
    _fields_ = (
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    )


def address(m: mmap.mmap) -> int:
    """Where the mapping ``m`` starts."""
    view = _PyBuffer()
    obj = ctypes.py_object(m)
    if ctypes.pythonapi.PyObject_GetBuffer(obj, ctypes.byref(view), 0) != 0:  # pragma: no cover
        raise OSError("no buffer")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def guard(m: mmap.mmap) -> bool:
    """Guard the mapping ``m`` until it is unmapped (the mmap object collected: other threads,
    and numpy views, may use it after it was closed). Guarding it again changes nothing. False:
    not guarded (no native library, or all of its guards in use)."""
    lib = nativelib.load()
    if lib is None or m.closed or not len(m):
        return False
    at = address(m)
    with _lock:
        if at in _guards:
            return True
        number = int(lib.vx_guard_add(at, len(m)))
        if number < 0:
            return False
        _guards[at] = number
    weakref.finalize(m, _release, lib, at, number)
    return True


def _release(lib: ctypes.CDLL, at: int, number: int) -> None:
    with _lock:
        if _guards.get(at) == number:
            del _guards[at]
    lib.vx_guard_remove(number)


def faults(m: mmap.mmap) -> int:
    """Pages of ``m`` read as zeros so far because the file had shrunk under them."""
    lib = nativelib.load()
    if lib is None or m.closed:
        return 0
    with _lock:
        number = _guards.get(address(m))
    return 0 if number is None else int(lib.vx_guard_faults(number))
