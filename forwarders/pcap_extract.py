"""The frames of one flow, read back from the pcap files through their indexes.

``find`` looks a flow up (by community_id, or by its addresses and ports, optionally its VNI
and a time range) in every index of a pcap directory (``F.idx`` of the closed files, the log
``F.part.idx`` of the file being written; forwarders/pcap_index.py), without scanning the
pcap files; ``extract`` writes the frames found to one classic pcap (nanosecond timestamps),
in time order, each frame's bytes and lengths as they are in the files. Compressed files
(``F.gz`` beside ``F.idx``) are read too.
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from receiver.flows.community_id import community_id_packed

from . import pcap_classic, pcap_index, pcapng
from .pcap_classic import RECORD_HEADER_LEN

PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmp6": 58, "sctp": 132}


@dataclass
class Found:
    file: Path  # the pcap file (F, F.gz or F.part)
    pos: np.ndarray  # int64 record offsets in the file
    ts: np.ndarray  # float64 frame times


def _endpoint(text: str) -> tuple[bytes, int, int]:
    """'ADDR:PORT' or '[V6]:PORT' -> (packed address, IP version, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    try:
        addr = ipaddress.ip_address(host)
        return addr.packed, addr.version, int(port)
    except ValueError:
        raise ValueError(f"not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT): {text!r}") from None


def flow_community_id(flow: str) -> str:
    """The community_id of a flow given as 'SRC:PORT DST:PORT PROTO' (PROTO: tcp, udp, ... or a number)."""
    parts = flow.split()
    if len(parts) != 3:
        raise ValueError(f"expected 'SRC:PORT DST:PORT PROTO', got {flow!r}")
    sa, sv, sport = _endpoint(parts[0])
    da, dv, dport = _endpoint(parts[1])
    if sv != dv:
        raise ValueError(f"mixed IPv4 and IPv6 endpoints: {flow!r}")
    name = parts[2].lower()
    proto = PROTO_NAMES.get(name, int(name) if name.isdigit() else -1)
    if not 0 <= proto <= 255:
        raise ValueError(f"unknown protocol {parts[2]!r}")
    return community_id_packed(proto, sa, da, sport, dport)


def _data_file(index: Path) -> Path | None:
    """The pcap file an index (or index log) describes, compressed or not (a log's file may have
    been closed since, or recovered after a crash without its index)."""
    base = index.with_name(index.name[: -len(".idx")])
    cands = [base, base.with_name(base.name + ".gz")]
    if base.name.endswith(".part"):
        final = base.with_name(base.name[: -len(".part")])
        cands += [final, final.with_name(final.name + ".gz")]
    for cand in cands:
        if cand.exists():
            return cand
    return None


def _select(cid: np.ndarray, flows: np.ndarray, want: bytes, vni: int | None) -> np.ndarray:
    hit = cid == want
    if vni is not None:
        hit &= flows["vni"] == vni
    return np.flatnonzero(hit)


def find(
    pcap_dir: Path, community_id: str, vni: int | None = None, t_from: float | None = None,
    t_to: float | None = None,
) -> list[Found]:
    """Where the frames of the flow are, file by file (from the indexes only)."""
    want = community_id.encode()
    out: list[Found] = []
    for idx in sorted(pcap_dir.glob("*.idx")):
        if idx.name.endswith(".part.idx"):
            continue
        data = _data_file(idx)
        if data is None:
            continue
        z = pcap_index.load(idx)
        pos_parts, ts_parts = [], []
        for f in _select(z["cid"], z["flows"], want, vni).tolist():
            a, b = int(z["first"][f]), int(z["first"][f + 1])
            pos_parts.append(z["pos"][a:b])
            ts_parts.append(z["ts"][a:b])
        if pos_parts:
            out.append(Found(data, np.concatenate(pos_parts), np.concatenate(ts_parts)))
    for log in sorted(pcap_dir.glob("*.part.idx")):  # the files being written (or left by a crash)
        final_idx = log.with_name(log.name[: -len(".part.idx")] + ".idx")
        data = _data_file(log)
        if data is None or final_idx.exists():
            continue  # (closed meanwhile: its index was read above, or will be on the next call)
        entries = pcap_index.read_log(log, data.stat().st_size)
        entries = entries[entries["proto"] != 0]
        if not entries.size:
            continue
        flows, inverse, _ = pcap_index.group(entries)
        hit = _select(pcap_index.community_ids(flows), flows, want, vni)
        mine = np.isin(inverse, hit)
        if mine.any():
            out.append(Found(data, entries["pos"][mine].astype(np.int64), entries["ts"][mine].astype(np.float64)))
    for found in out:
        keep = np.ones(found.pos.size, bool)
        if t_from is not None:
            keep &= found.ts >= t_from
        if t_to is not None:
            keep &= found.ts <= t_to
        found.pos, found.ts = found.pos[keep], found.ts[keep]
    return [f for f in out if f.pos.size]


def _open(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return typing.cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return open(path, "rb")


def _read_frames(path: Path, pos: np.ndarray) -> list[tuple[int, int, int, bytes]]:
    """(ts in ns, caplen, wirelen, frame) of the records at ``pos`` of a classic pcap or pcapng file."""
    out = []
    with _open(path) as f:
        head = f.read(4)
        ng = head == struct.pack("<I", pcapng.SHB_TYPE)
        for p in np.sort(pos).tolist():
            f.seek(p)
            if ng:
                hdr = f.read(pcapng.EPB_HEADER_LEN)
                _btype, _total, _iface, hi, lo, caplen, wirelen = struct.unpack("<7I", hdr)
                ns = (hi << 32) | lo
            else:
                hdr = f.read(RECORD_HEADER_LEN)
                sec, nsec, caplen, wirelen = struct.unpack("<4I", hdr)
                ns = sec * 1_000_000_000 + nsec
            data = f.read(caplen)
            if len(data) != caplen:
                raise ValueError(f"{path}: record at {p} is cut")
            out.append((ns, caplen, wirelen, data))
    return out


def extract(
    pcap_dir: Path, out: Path, community_id: str, vni: int | None = None, t_from: float | None = None,
    t_to: float | None = None,
) -> int:
    """Write the flow's frames to ``out`` (classic pcap), in time order; returns how many."""
    frames: list[tuple[int, int, int, bytes]] = []
    for found in find(pcap_dir, community_id, vni, t_from, t_to):
        frames.extend(_read_frames(found.file, found.pos))
    frames.sort(key=lambda fr: fr[0])  # (stable: frames of one time keep their file order)
    snaplen = max([65535, *(fr[1] for fr in frames)])
    with open(out, "wb") as f:
        f.write(pcap_classic.file_header(snaplen))
        for ns, caplen, wirelen, data in frames:
            f.write(struct.pack("<4I", ns // 1_000_000_000, ns % 1_000_000_000, caplen, wirelen))
            f.write(data)
    return len(frames)
