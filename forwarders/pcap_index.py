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
import os
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


def finish(log: Path, final: Path, file_size: int | None = None) -> Path | None:
    """Turn the log of a closed file into its index ``F.idx`` (atomically), remove the log."""
    if not log.exists():
        return None
    entries = read_log(log, file_size)
    entries = entries[entries["proto"] != 0]
    keys = np.empty(entries.size, KEY)
    for k in KEY_FIELDS:
        keys[k] = entries[k]
    flows, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # frames grouped by flow, in file order within
    counts = np.bincount(inverse, minlength=flows.size)
    first = np.zeros(flows.size + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    buf = io.BytesIO()
    np.savez(
        buf, cid=community_ids(flows), flows=flows, first=first,
        pos=entries["pos"][order], ts=entries["ts"][order],
    )
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


def load(path: Path) -> dict[str, Any]:
    """An index's arrays: cid [flows] S30, flows [flows] (KEY), first [flows+1], pos, ts."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("cid", "flows", "first", "pos", "ts")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable pcap index ({e})") from None
