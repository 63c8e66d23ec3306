"""Classic pcap: finding record offsets fast, zero copy.

A classic pcap file is a 24-byte header followed by records, each a 16-byte
header (ts_sec, ts_frac, incl_len, orig_len) and ``incl_len`` bytes of data.
The only sequential work is the chain ``next = off + 16 + incl_len``; every
other column is gathered with numpy once the offsets are known.

Two scanners produce identical offsets:

- :func:`scan_loop`: a tight Python loop (local bindings, one
  ``unpack_from`` per record). Used for small inputs and for repairs.
- :func:`scan_lanes`: the *speculative* vectorized scan. A window of the file
  is cut into lanes; in each lane a plausible record start is guessed
  (header fields in range, and two further hops also plausible), then the
  chains of all lanes are followed together, one numpy step per record
  *per lane* (so a step advances ~thousands of records). Finally the lanes
  are verified in order: lane 0 starts at a known record, and each lane's
  chain must cross into the next lane exactly at that lane's guessed start.
  Where it does not, the true chain is walked with :func:`scan_loop` until it
  meets the lane's chain (chains that meet coincide from then on) or leaves
  the lane. A wrong guess therefore costs time, never correctness.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..packets import I64, U8

HEADER_LEN = 24
RECORD_HEADER_LEN = 16
# Records claiming more than this are corrupt (libpcap's own cap is 256 KiB for most
# link types; jumbo/offload frames stay far below).
MAX_RECORD_LEN = 1 << 24

# Vectorized-scan geometry (bytes). Tuned on a 1 M-record mixed-size file (bench/bench_capture.py).
LANE_LEN = 64 * 1024
SEARCH_LEN = 1024
WINDOW_LEN = 64 * 1024 * 1024
MIN_VECTOR_LEN = 1 << 20
TAIL_LANES = 24  # lanes still active when the numpy stepping hands over to the loop  # below this the loop is as fast


@dataclass
class ScanResult:
    offsets: I64  # record header offsets, in file order
    next_pos: int  # where scanning stopped (the next record header, or the end)
    truncated: bool  # a record runs past ``end`` (its header or its data)
    bad: bool  # a record header claims an impossible length: scanning cannot continue


def scan_loop(buf: U8, pos: int, end: int, big_endian: bool, limit: int = 1 << 62) -> ScanResult:
    """Follow the record chain from ``pos`` with a Python loop (at most ``limit`` records)."""
    unpack = struct.Struct(">I" if big_endian else "<I").unpack_from
    mv = buf.data
    offs: list[int] = []
    append = offs.append
    truncated = bad = False
    stop = end - RECORD_HEADER_LEN
    maxlen = MAX_RECORD_LEN
    n = 0
    try:
        while n < limit:
            if pos > stop:
                truncated = pos != end
                break
            incl = unpack(mv, pos + 8)[0]
            if incl > maxlen:
                bad = True
                break
            nxt = pos + 16 + incl
            if nxt > end:
                truncated = True
                break
            append(pos)
            pos = nxt
            n += 1
    except struct.error:  # pragma: no cover - guarded by ``stop``
        truncated = True
    return ScanResult(np.array(offs, np.int64), pos, truncated, bad)


def _u32_at(arr: U8, idx: I64, dtype: np.dtype) -> np.ndarray:
    """The uint32 at each byte offset ``idx`` (all in range), native int64 result."""
    g = arr[idx[:, None] + np.arange(4)]
    return g.view(dtype).reshape(-1).astype(np.int64)


def _plausible(arr: U8, pos: I64, end: int, dtype: np.dtype, frac_lim: int) -> np.ndarray:
    """Header plausibility at positions ``pos`` (any; out-of-range ones are implausible)."""
    ok = pos + RECORD_HEADER_LEN <= end
    res = np.zeros(pos.shape[0], bool)
    p = pos[ok]
    if p.shape[0]:
        h = arr[p[:, None] + np.arange(16)].view(dtype).reshape(-1, 4).astype(np.int64)
        incl, orig, frac = h[:, 2], h[:, 3], h[:, 1]
        res[ok] = (incl <= orig) & (orig <= MAX_RECORD_LEN) & (frac < frac_lim) & (p + 16 + incl <= end)
    return res


def _guess_starts(arr: U8, lane_starts: I64, end: int, dtype: np.dtype, frac_lim: int) -> I64:
    """A plausible record start in the first SEARCH_LEN bytes of each lane (-1: none found)."""
    k = lane_starts.shape[0]
    s = SEARCH_LEN
    idx = lane_starts[:, None] + np.arange(s + 20)
    np.minimum(idx, end - 1, out=idx)
    q = arr[idx]  # (k, s+20)
    # uint32 at every byte offset of each row: four aligned views, interleaved.
    m = (s + 15) // 4  # 4m >= s + 12 offsets, a + 4m <= s + 20 bytes
    u = np.empty((k, 4 * m), np.uint32)
    for a in range(4):
        u[:, a::4] = q[:, a : a + 4 * m].view(dtype)
    frac = u[:, 4 : 4 + s]
    incl = u[:, 8 : 8 + s]
    orig = u[:, 12 : 12 + s]
    cond = (incl <= orig) & (orig <= MAX_RECORD_LEN) & (frac < frac_lim)
    li, col = np.nonzero(cond)
    pos = lane_starts[li] + col
    inc = incl[li, col].astype(np.int64)
    nxt = pos + 16 + inc
    good = nxt <= end
    # two more hops must look like headers too
    for _ in range(2):
        ok2 = _plausible(arr, nxt, end, dtype, frac_lim) | (nxt == end)
        good &= ok2
        inner = good & (nxt < end)
        step = np.zeros_like(nxt)
        if inner.any():
            step[inner] = 16 + _u32_at(arr, nxt[inner] + 8, dtype)
        nxt = nxt + step
    guess = np.full(k, -1, np.int64)
    li, pos = li[good], pos[good]
    if li.shape[0]:
        first = np.ones(li.shape[0], bool)
        first[1:] = li[1:] != li[:-1]  # np.nonzero is row-major: the first hit per lane is the lowest
        guess[li[first]] = pos[first]
    return guess


def scan_lanes(arr: U8, pos: int, stop: int, end: int, big_endian: bool, frac_lim: int) -> ScanResult:
    """Offsets of the records starting in ``[pos, stop)``, vectorized.

    ``pos`` is a known record start, ``end`` the end of the data. ``next_pos`` is the first
    record at or after ``stop`` (where the next window begins).
    """
    dtype = np.dtype(">u4" if big_endian else "<u4")
    n_lanes = max(1, (stop - pos) // LANE_LEN)
    lane_starts = pos + np.arange(n_lanes, dtype=np.int64) * LANE_LEN
    guess = _guess_starts(arr, lane_starts, end, dtype, frac_lim) if n_lanes > 1 else lane_starts[:1]
    guess[0] = pos
    starts = guess[guess >= 0]
    limits = np.empty_like(starts)
    limits[:-1] = starts[1:]
    limits[-1] = stop
    # Follow all chains together.
    cur = starts.copy()
    lane = np.arange(starts.shape[0])
    steps: list[np.ndarray] = []
    lanes_of: list[np.ndarray] = []
    crossing = np.empty_like(starts)
    arange4 = np.arange(4)
    unpack = struct.Struct(">I" if big_endian else "<I").unpack_from
    mv = arr.data
    while cur.shape[0]:
        if cur.shape[0] <= TAIL_LANES:  # a few long lanes left: numpy steps would cost more than a loop
            for c0, k0 in zip(cur.tolist(), lane.tolist()):
                lim0 = int(limits[k0])
                tail: list[int] = []
                p = c0
                while True:
                    if p + RECORD_HEADER_LEN > end:
                        x = -p - 1
                        break
                    incl0 = unpack(mv, p + 8)[0]
                    if incl0 > MAX_RECORD_LEN or p + 16 + incl0 > end:
                        x = -p - 1
                        break
                    tail.append(p)
                    p += 16 + incl0
                    if p >= lim0:
                        x = p
                        break
                steps.append(np.array(tail, np.int64))
                lanes_of.append(np.full(len(tail), k0, np.int64))
                crossing[k0] = x
            break
        fits = cur + RECORD_HEADER_LEN <= end
        incl = np.full(cur.shape[0], MAX_RECORD_LEN + 1, np.int64)
        if fits.all():
            incl = arr[cur[:, None] + (arange4 + 8)].view(dtype).reshape(-1).astype(np.int64)
        elif fits.any():
            c = cur[fits]
            incl[fits] = arr[c[:, None] + (arange4 + 8)].view(dtype).reshape(-1).astype(np.int64)
        nxt = cur + 16 + incl
        rec_ok = (incl <= MAX_RECORD_LEN) & (nxt <= end)
        steps.append(cur[rec_ok])
        lanes_of.append(lane[rec_ok])
        # A lane is done when the chain leaves it (or meets a bad/truncated record).
        go = rec_ok & (nxt < limits[lane])
        done = ~go
        crossing[lane[done]] = np.where(rec_ok[done], nxt[done], -cur[done] - 1)
        cur, lane = nxt[go], lane[go]
    offs = np.concatenate(steps) if steps else np.zeros(0, np.int64)
    lanes_all = np.concatenate(lanes_of) if lanes_of else np.zeros(0, np.int64)
    order = np.argsort(offs, kind="stable")
    offs, lanes_all = offs[order], lanes_all[order]
    bounds = np.searchsorted(lanes_all, np.arange(starts.shape[0] + 1))
    # Verify lanes in order, repairing where the guess was wrong.
    out: list[np.ndarray] = []
    expected = pos
    for k in range(starts.shape[0]):
        lane_offs = offs[bounds[k] : bounds[k + 1]]
        if expected == int(starts[k]):
            out.append(lane_offs)
            x = int(crossing[k])
            if x < 0:  # the lane ended at a bad or truncated record
                return _stop(arr, out, -x - 1, end, big_endian)
            expected = x
            continue
        if expected >= int(limits[k]):  # the true chain jumps over this whole lane
            continue
        # Walk the true chain until it meets this lane's chain or leaves the lane.
        walked: list[int] = []
        p = expected
        lim = int(limits[k])
        while p < lim:
            j = int(np.searchsorted(lane_offs, p))
            if j < lane_offs.shape[0] and int(lane_offs[j]) == p:
                break
            if p + RECORD_HEADER_LEN > end:
                out.append(np.array(walked, np.int64))
                return ScanResult(_cat(out), p, True, False)
            incl = unpack(mv, p + 8)[0]
            if incl > MAX_RECORD_LEN:
                out.append(np.array(walked, np.int64))
                return ScanResult(_cat(out), p, False, True)
            if p + 16 + incl > end:
                out.append(np.array(walked, np.int64))
                return ScanResult(_cat(out), p, True, False)
            walked.append(p)
            p += 16 + incl
        out.append(np.array(walked, np.int64))
        if p < lim:  # converged at lane_offs[j]
            out.append(lane_offs[j:])
            x = int(crossing[k])
            if x < 0:
                return _stop(arr, out, -x - 1, end, big_endian)
            expected = x
        else:
            expected = p
    return ScanResult(_cat(out), expected, False, False)


def _stop(arr: U8, out: list[np.ndarray], p: int, end: int, big_endian: bool) -> ScanResult:
    """The chain stopped at record ``p``: classify it as truncated or bad."""
    if p + RECORD_HEADER_LEN > end:
        return ScanResult(_cat(out), p, p != end, False)
    incl = struct.unpack_from(">I" if big_endian else "<I", arr.data, p + 8)[0]
    bad = incl > MAX_RECORD_LEN
    return ScanResult(_cat(out), p, not bad, bad)


def _cat(parts: list[np.ndarray]) -> I64:
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)


def scan(arr: U8, pos: int, end: int, big_endian: bool, frac_lim: int) -> ScanResult:
    """Offsets of the records from ``pos`` on, at most one window's worth (call again at ``next_pos``).

    Vectorized for large inputs, the loop for small ones. The scan is complete when ``next_pos``
    reaches ``end`` or ``truncated``/``bad`` is set.
    """
    if end - pos < MIN_VECTOR_LEN:
        return scan_loop(arr, pos, end, big_endian)
    return scan_lanes(arr, pos, min(end, pos + WINDOW_LEN), end, big_endian, frac_lim)


def record_columns(arr: U8, offs: I64, big_endian: bool, nanos: bool) -> tuple[I64, np.ndarray, np.ndarray, np.ndarray]:
    """start, caplen, wirelen, ts for the records at ``offs``."""
    dtype = np.dtype(">u4" if big_endian else "<u4")
    h = arr[offs[:, None] + np.arange(16)].view(dtype).reshape(-1, 4)
    ts = h[:, 0].astype(np.float64) + h[:, 1].astype(np.float64) * (1e-9 if nanos else 1e-6)
    return offs + RECORD_HEADER_LEN, h[:, 2].astype(np.uint32), h[:, 3].astype(np.uint32), ts
