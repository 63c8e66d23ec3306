"""Finding and loading the vxnative C library (``receiver/native/_vxnative*.so``) with ctypes.

Kept apart from ``receiver.native`` (which wraps the library's loops for numpy arrays) because it
imports only the standard library: the capture prefetcher uses the library before numpy is loaded.
``VXMIRROR_NATIVE=0`` disables the library (the numpy twins then do the work);
``VXMIRROR_NATIVE_LIB=PATH`` loads another build of it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import os
from pathlib import Path

log = logging.getLogger("vxmirror.native")

HERE = Path(__file__).parent.parent / "native"  # (receiver/native, where setup.py builds it)
ABI = 17  # = VX_ABI in vxnative.c: bump both when a signature or a meaning changes


def library_path() -> Path | None:
    """The built library, or the one ``VXMIRROR_NATIVE_LIB`` names (the tests load a build with
    the address and undefined-behaviour sanitizers that way)."""
    if override := os.environ.get("VXMIRROR_NATIVE_LIB"):
        return Path(override)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = HERE / f"_vxnative{suffix}"
        if p.exists():
            return p
    return None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The library (one object for the whole process), or None: disabled, not built, or stale."""
    if os.environ.get("VXMIRROR_NATIVE", "1") == "0":
        return None
    path = library_path()
    if path is None:
        log.info("vxnative library not built: using the numpy loops (slower)")
        return None
    try:
        lib = ctypes.CDLL(str(path))
        lib.vx_abi.restype = ctypes.c_int
        abi = lib.vx_abi()
    except (OSError, AttributeError) as e:  # pragma: no cover - a broken build
        log.warning("cannot load %s (%s): using the numpy loops (slower)", path, e)
        return None
    if abi != ABI:  # pragma: no cover - built from another version of vxnative.c
        log.warning("%s is stale (ABI %d, want %d; reinstall): using the numpy loops (slower)", path, abi, ABI)
        return None
    # what the stdlib-only modules call (receiver.capture.prefetch, receiver.capture.mapguard); the rest:
    # receiver.native
    for name, restype, argtypes in (
        ("vx_touch", ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]),
        ("vx_guard_add", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_int64]),
        ("vx_guard_remove", None, [ctypes.c_int64]),
        ("vx_guard_faults", ctypes.c_int64, [ctypes.c_int64]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
