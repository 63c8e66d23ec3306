"""Per-file indexes of the pcap files: which flow each frame belongs to, and where it is.

While a file ``F.part`` is written, each written frame of a flow adds one fixed-size entry to
``F.part.idx`` (appended with the frames, so ``vxmirror extract`` finds frames of the file
still being written). When the file closes, the entries become ``F.idx``: a numpy ``.npz``
with the file's flows (community_id, VNI, key) and, per flow, its frames' positions in the file
and times. Retention removes ``F.idx`` with ``F``. The reader side is forwarders/pcap_extract.py.

Entry fields: ``pos`` (the frame's record offset in the file), ``ts``, and the flow key in
canonical order (endpoint ``a`` is the lower (address, port)), as the flow table keys flows:
VNI, IP protocol, IP version 6 or not, addresses (128-bit, IPv4 mapped) and ports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from receiver.flows.community_id import community_id_packed

from .filemodes import create_private

ENTRY = np.dtype([
    ("pos", "<i8"), ("ts", "<f8"), ("vni", "<i4"), ("proto", "u1"), ("v6", "u1"), ("_pad", "<u2"),
    ("a_hi", "<u8"), ("a_lo", "<u8"), ("b_hi", "<u8"), ("b_lo", "<u8"), ("a_port", "<u2"), ("b_port", "<u2"),
    ("_pad2", "<u4"),
])
KEY_FIELDS = ("vni", "proto", "v6", "a_hi", "a_lo", "b_hi", "b_lo", "a_port", "b_port")
KEY = np.dtype([(k, ENTRY[k]) for k in KEY_FIELDS])  # (packed: one row per flow of an index)


def flow_keys(
    vni: np.ndarray, proto: np.ndarray, ipver: np.ndarray, src_hi: np.ndarray, src_lo: np.ndarray,
    dst_hi: np.ndarray, dst_lo: np.ndarray, sport: np.ndarray, dport: np.ndarray,
) -> np.ndarray:
    """Index entries (``pos`` and ``ts`` left 0) of packets, their endpoints in canonical order;
    ``proto`` 0 for packets in no flow."""
    n = vni.size
    e = np.zeros(n, ENTRY)
    swap = (src_hi > dst_hi) | ((src_hi == dst_hi) & ((src_lo > dst_lo) | ((src_lo == dst_lo) & (sport > dport))))
    swap &= (proto != 1) & (proto != 58)  # (ICMP: community_id orders the endpoints itself, by type)
    e["vni"] = vni
    e["proto"] = proto
    e["v6"] = ipver == 6
    e["a_hi"] = np.where(swap, dst_hi, src_hi)
    e["a_lo"] = np.where(swap, dst_lo, src_lo)
    e["b_hi"] = np.where(swap, src_hi, dst_hi)
    e["b_lo"] = np.where(swap, src_lo, dst_lo)
    e["a_port"] = np.where(swap, dport, sport)
    e["b_port"] = np.where(swap, sport, dport)
    return e


def _packed(hi: int, lo: int, v6: bool) -> bytes:
    return hi.to_bytes(8, "big") + lo.to_bytes(8, "big") if v6 else (lo & 0xFFFFFFFF).to_bytes(4, "big")


def community_ids(flows: np.ndarray) -> np.ndarray:
    """The community_id (S30) of each flow key (direction does not matter to it)."""
    out = np.empty(flows.size, "S30")
    for i, (_vni, proto, v6, a_hi, a_lo, b_hi, b_lo, a_port, b_port) in enumerate(flows.tolist()):
        cid = community_id_packed(proto, _packed(a_hi, a_lo, bool(v6)), _packed(b_hi, b_lo, bool(v6)), a_port, b_port)
        out[i] = cid.encode()
    return out


def log_path(part: Path) -> Path:
    return part.with_name(part.name + ".idx")


def index_path(final: Path) -> Path:
    return final.with_name(final.name + ".idx")


class IndexLog:
    """The entries of the file being written, appended as its frames are."""

    def __init__(self, part: Path) -> None:
        self.path = log_path(part)
        self._f = os.fdopen(create_private(self.path), "wb", buffering=0)  # (0640, as the pcap files)

    def append(self, entries: np.ndarray) -> None:
        if entries.size:
            self._f.write(entries.tobytes())

    def close(self) -> None:
        self._f.close()


def read_log(path: Path, file_size: int | None = None) -> np.ndarray:
    """The entries of an index log (whole entries only; those past ``file_size`` left out)."""
    data = path.read_bytes()
    whole = len(data) // ENTRY.itemsize * ENTRY.itemsize
    e = np.frombuffer(data[:whole], ENTRY)
    if file_size is not None:
        e = e[e["pos"] < file_size]
    return e


def group(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct flows of ``entries`` (KEY, in key order), each entry's flow, and the entries'
    order grouped by flow (file order within a flow). A lexicographic sort of a few integer
    columns: ``np.unique`` of the structured keys sorts them field by field in Python's way,
    10x slower."""
    n = entries.size
    if not n:
        return np.zeros(0, KEY), np.zeros(0, np.int64), np.zeros(0, np.int64)
    head = ((entries["vni"].astype(np.int64) & 0xFFFFFFFF) << 32 | entries["a_port"].astype(np.int64) << 16
            | entries["b_port"].astype(np.int64))
    tail = entries["proto"].astype(np.int64) << 1 | entries["v6"].astype(np.int64)
    cols = (tail, entries["b_lo"], entries["b_hi"], entries["a_lo"], entries["a_hi"], head)
    order = np.lexsort(cols)  # (stable: file order within a flow)
    new = np.zeros(n, bool)
    new[0] = True
    for c in cols:
        sc = c[order]
        new[1:] |= sc[1:] != sc[:-1]
    starts = np.flatnonzero(new)
    flow_of_sorted = np.cumsum(new) - 1
    inverse = np.empty(n, np.int64)
    inverse[order] = flow_of_sorted
    flows = np.empty(starts.size, KEY)
    first = order[starts]
    for k in KEY_FIELDS:
        flows[k] = entries[k][first]
    return flows, inverse, order


def finish(log: Path, final: Path, file_size: int | None = None) -> Path | None:
    """Turn the log of a closed file into its index ``F.idx`` (atomically), remove the log."""
    try:
        entries = read_log(log, file_size)
    except FileNotFoundError:  # (retention removed the file and its log meanwhile)
        return None
    entries = entries[entries["proto"] != 0]
    flows, inverse, order = group(entries)
    counts = np.bincount(inverse, minlength=flows.size)
    first = np.zeros(flows.size + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    buf = io.BytesIO()
    np.savez(
        buf, cid=community_ids(flows), flows=flows, first=first,
        pos=entries["pos"][order], ts=entries["ts"][order],
    )
    if not final.exists() and not final.with_name(final.name + ".gz").exists():
        return None  # (removed by retention meanwhile)
    out = index_path(final)
    tmp = out.with_name(out.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # (a leftover of a crash)
    with os.fdopen(create_private(tmp), "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, out)
    with contextlib.suppress(FileNotFoundError):
        log.unlink()
    return out


class Finisher:
    """Indexes made on a thread of their own: grouping a 256 MB file's frames by flow and
    hashing its flows' community_ids takes a fraction of a second, which the writer's thread
    cannot spare at a few hundred MB/s. Until its index is made, a closed file's log is read."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Path, Path, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failed = 0

    def submit(self, log: Path, final: Path, file_size: int) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pcap-index", daemon=True)
            self._thread.start()
        self._queue.put((log, final, file_size))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                finish(*job)
            except Exception as e:  # (an index is an aid: the pcap file stands without it)
                self.failed += 1
                logging.getLogger("vxmirror.forwarders.pcap").error("cannot index %s: %s", job[1], e)
            finally:
                self._queue.task_done()

    def wait(self, timeout: float = 30.0) -> None:
        """The indexes of the files submitted so far made (within ``timeout``)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None


def load(path: Path) -> dict[str, Any]:
    """An index's arrays: cid [flows] S30, flows [flows] (KEY), first [flows+1], pos, ts."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("cid", "flows", "first", "pos", "ts")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable pcap index ({e})") from None
