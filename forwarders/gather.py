"""Vectorized copying of many byte ranges at once (no per-range Python loop).

``copy_ranges`` moves ``src[s[i]:s[i]+n[i]]`` to ``dst[d[i]:d[i]+n[i]]`` for every
``i``. Ranges are cut into fixed-width chunks copied as numpy ``V<width>``
items through overlapping window views, so the inner loop is a fixed-size
memcpy per chunk rather than a per-byte gather: the last chunk of a range is
aligned to the range's end (it overlaps the previous chunk of the same range
and never spills outside it). Ranges shorter than the widest chunk use
narrower tiers; the last bytes of tiny ranges are gathered bytewise.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from receiver import native

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_TIERS = (256, 32, 4)
LONG = 256  # ranges at least this long are copied one memcpy each (memoryview slices)


def _windows(arr: U8, width: int, writable: bool) -> npt.NDArray[np.void]:
    n = arr.shape[0] - width + 1
    if n <= 0:
        return np.empty(0, dtype=f"V{width}")
    view = np.ndarray(shape=(n,), dtype=f"V{width}", buffer=arr, strides=(1,))
    if not writable:
        view.flags.writeable = False
    return view


def copy_ranges(src: U8, s: I64, dst: U8, d: I64, n: I64) -> None:
    """Copy every range; destination ranges must not overlap each other. With the C library
    (receiver.native) one memcpy per range; otherwise the numpy tiers below."""
    if native.available() and src.flags.c_contiguous and dst.flags.c_contiguous:
        native.copy_ranges(src, s, dst, d, n)
        return
    copy_ranges_numpy(src, s, dst, d, n)


def copy_ranges_numpy(src: U8, s: I64, dst: U8, d: I64, n: I64) -> None:
    """``copy_ranges`` with numpy only (the C library's twin)."""
    s = np.asarray(s, np.int64)
    d = np.asarray(d, np.int64)
    n = np.asarray(n, np.int64)
    long = n >= LONG
    if long.any():
        # one memcpy per range beats chunked fancy indexing once ranges are long (measured 4x at
        # 1400-byte frames): the per-call cost is ~0.2 us against ~0.4 us per 256-byte chunk
        sm, dm = src.data.cast("B"), dst.data.cast("B")
        for a, b, k in zip(s[long].tolist(), d[long].tolist(), n[long].tolist()):
            dm[b : b + k] = sm[a : a + k]
        keep = ~long
        s, d, n = s[keep], d[keep], n[keep]
    lower = LONG
    for width in _TIERS[1:]:
        sel = (n >= width) & (n < lower)
        lower = width
        if not sel.any():
            continue
        ss, dd, nn = s[sel], d[sel], n[sel]
        chunks = (nn + width - 1) // width
        seg = np.repeat(np.arange(nn.shape[0]), chunks)
        first = np.cumsum(chunks) - chunks
        k = np.arange(int(chunks.sum()), dtype=np.int64) - first[seg]
        off = np.minimum(k * width, nn[seg] - width)
        sv = _windows(src, width, False)
        dv = _windows(dst, width, True)
        dv[dd[seg] + off] = sv[ss[seg] + off]
    tiny = (n > 0) & (n < _TIERS[-1])
    if tiny.any():
        ss, dd, nn = s[tiny], d[tiny], n[tiny]
        first = np.cumsum(nn) - nn
        rel = np.arange(int(nn.sum()), dtype=np.int64) - np.repeat(first, nn)
        dst[np.repeat(dd, nn) + rel] = src[np.repeat(ss, nn) + rel]


def put_rows(dst: U8, pos: I64, rows: U8) -> None:
    """Write row ``i`` of ``rows`` ([n, width] uint8) at ``dst[pos[i]:pos[i]+width]``, one
    fixed-size item per row (record headers: no per-byte index arithmetic)."""
    n, width = rows.shape
    if not n:
        return
    items = np.ascontiguousarray(rows).view(f"V{width}").reshape(n)
    _windows(dst, width, True)[np.asarray(pos, np.int64)] = items
