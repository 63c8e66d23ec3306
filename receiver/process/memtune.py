"""Process-wide settings that keep the data path out of the kernel's way.

- glibc's malloc returns every freed block above its mmap threshold (at most 32 MiB) to the
  kernel, so each batch's multi-megabyte buffers (frame blocks, pcap encodings, columns) come back
  as fresh pages the kernel must zero: measured here as 40 % of a live worker's kernel time at
  1400-byte frames. Raising the mmap and trim thresholds keeps them in the heap for reuse.
- OpenBLAS starts a thread per core that spins after any call into it; nothing on the data path
  needs BLAS, and a spinning thread takes a core from the receive thread. One thread is enough.

``tune()`` is called by the CLI before numpy is imported. Neither changes results.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30  # the heap keeps up to this much free memory


def tune() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
