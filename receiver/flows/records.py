"""Turning flow-table rows into FlowRecords (plain dicts, see docs/flowrecord.md)."""

from __future__ import annotations

import socket
import struct
from binascii import b2a_base64
from collections.abc import Callable
from socket import AF_INET, AF_INET6, inet_ntop
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decode.tcp import flag_letters
from .community_id import community_id_packed
from .excerpts import ExcerptPool
from .record import EndReason, FlowRecord
from .state import conn_state, history
from .table import FlowTable

if TYPE_CHECKING:
    from ..redact import Redactor

TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}
_V4_PREFIX = 0xFFFF
_FLAGS = tuple(flag_letters(f) for f in range(256))


def address(hi: int, lo: int, v6: bool) -> tuple[str, bytes]:
    """Text and packed form of a 128-bit address (IPv4 stored IPv4-mapped)."""
    if not v6:
        packed = struct.pack(">I", lo & 0xFFFFFFFF)
        return socket.inet_ntop(socket.AF_INET, packed), packed
    packed = struct.pack(">QQ", hi, lo)
    return socket.inet_ntop(socket.AF_INET6, packed), packed


def build_records(
    table: FlowTable,
    flows: np.ndarray,
    reason: EndReason,
    now: float | None,
    excerpts: ExcerptPool | None,
    app: dict[int, Any],
    labeler: Callable[[int], dict[str, Any] | None] | None,
    sensor: str | None,
    redactor: Redactor | None = None,
    pcap_names: dict[int, str] | None = None,
) -> list[FlowRecord]:
    """The records of ``flows`` (table rows, in the order given); ``redactor`` (receiver.redact):
    masks the credentials in their excerpts and application metadata first (in place), and each
    record says how many values it masked; ``pcap_names`` (the pcap files' names by number, with a
    pcap sink whose frames the engine plans): each record gets its ``pcap`` object."""
    if not flows.size:
        return []
    masked = [0] * flows.size
    if redactor is not None and excerpts is not None:
        counts = redactor.excerpts(table, flows, excerpts)
        if counts is not None:
            masked = counts.tolist()
    c = table.cols
    interim = reason == "active"  # the flow goes on (its parsers too); else they are dropped after this
    # columns turned to the originator's view in bulk: "in" is originator -> responder, which is
    # endpoint direction ``orig`` (A->B is direction 0, sent by A)
    o = c["orig"][flows].astype(np.intp)
    r = 1 - o
    a_is_src = o == 0
    kp = c["kproto"][flows].astype(np.int64)
    proto_l = (kp & 0xFF).tolist()
    v6_l = (kp >= 256).tolist()
    # both endpoints' addresses as 16 big-endian bytes each (IPv4 mapped: the last 4 bytes)
    ends = np.empty((flows.size, 4), ">u8")
    ends[:, 0] = np.where(a_is_src, c["a_hi"][flows], c["b_hi"][flows])
    ends[:, 1] = np.where(a_is_src, c["a_lo"][flows], c["b_lo"][flows])
    ends[:, 2] = np.where(a_is_src, c["b_hi"][flows], c["a_hi"][flows])
    ends[:, 3] = np.where(a_is_src, c["b_lo"][flows], c["a_lo"][flows])
    raw = ends.tobytes()
    sport_l = np.where(a_is_src, c["a_port"][flows], c["b_port"][flows]).tolist()
    dport_l = np.where(a_is_src, c["b_port"][flows], c["a_port"][flows]).tolist()

    def per_dir(name: str, d: np.ndarray) -> list[int]:
        return c[name][flows, d].tolist()

    pin, pout = per_dir("pkts", o), per_dir("pkts", r)
    bin_, bout = per_dir("ipbytes", o), per_dir("ipbytes", r)
    yin, yout = per_dir("paybytes", o), per_dir("paybytes", r)
    fin, fout = per_dir("tflags", o), per_dir("tflags", r)
    segments = c["segments"][flows].tolist()
    with_excerpts = excerpts is not None and not all(segments)
    if with_excerpts:
        # each direction's excerpt row gathered at once (a row of zeros for none) and sliced per record
        assert excerpts is not None
        size = excerpts.size
        xlin, xlout = per_dir("exc_len", o), per_dir("exc_len", r)
        ex_in = excerpts.rows.take(c["exc_row"][flows, o].astype(np.intp) - 1, axis=0, mode="clip").tobytes()
        ex_out = excerpts.rows.take(c["exc_row"][flows, r].astype(np.intp) - 1, axis=0, mode="clip").tobytes()
    vni_l = c["kvni"][flows].tolist()
    out: list[FlowRecord] = []
    for j, (f, proto, v6, orig, sport, dport, vni, ts_start, ts_end, hb, hist, flipped, trunc, frags, seg) in enumerate(
        zip(
            flows.tolist(), proto_l, v6_l, o.tolist(), sport_l, dport_l, vni_l, c["seg_start"][flows].tolist(),
            c["t_last"][flows].tolist(), c["hbits"][flows].tolist(), c["hist"][flows].tolist(),
            c["flipped"][flows].tolist(), c["trunc"][flows].tolist(), c["frags"][flows].tolist(), segments,
        )
    ):
        at = 32 * j
        if v6:
            sraw, draw = raw[at : at + 16], raw[at + 16 : at + 32]
            src, dst = inet_ntop(AF_INET6, sraw), inet_ntop(AF_INET6, draw)
        else:
            sraw, draw = raw[at + 12 : at + 16], raw[at + 28 : at + 32]
            src, dst = inet_ntop(AF_INET, sraw), inet_ntop(AF_INET, draw)
        if ts_end < ts_start:  # an interim record's segment had no packets
            ts_end = ts_start if now is None else max(ts_start, now)
        p_in, p_out, y_in, y_out = pin[j], pout[j], yin[j], yout[j]
        tcp = proto == 6
        rec: FlowRecord = {
            "vni": None if vni < 0 else vni,
            "transport": TRANSPORTS.get(proto) or str(proto),
            "ip_proto": proto,
            "src_ip": src,
            "src_port": sport,
            "dest_ip": dst,
            "dest_port": dport,
            "packets_in": p_in,
            "bytes_in": bin_[j],
            "packets_out": p_out,
            "bytes_out": bout[j],
            "payload_bytes_in": y_in,
            "payload_bytes_out": y_out,
            "ts_start": ts_start,
            "ts_end": ts_end,
            "duration": round(ts_end - ts_start, 6),
            "community_id": community_id_packed(proto, sraw, draw, sport, dport),
            "conn_state": conn_state(proto, hb, orig, p_in, p_out, y_in, y_out),
            "history": history(hist, orig, bool(flipped)),
            "tcp_flags_in": _FLAGS[fin[j]] if tcp else "",
            "tcp_flags_out": _FLAGS[fout[j]] if tcp else "",
            "end_reason": reason,
            "truncated": bool(trunc),
            "fragments": frags,
        }
        if seg:
            rec["segment"] = seg
        elif with_excerpts:
            at = size * j
            if n := xlin[j]:
                rec["excerpt_in"] = b2a_base64(ex_in[at : at + n], newline=False).decode()
            if n := xlout[j]:
                rec["excerpt_out"] = b2a_base64(ex_out[at : at + n], newline=False).decode()
        state = app.get(f)
        if state is not None:
            meta = state if isinstance(state, dict) else state.to_record(copy=interim)
            if meta:
                if redactor is not None and "http" in meta:
                    masked[j] += redactor.app(meta)
                rec["app"] = meta
        if masked[j]:
            rec["redacted"] = masked[j]
        if pcap_names is not None:
            s0, s1 = int(c["pc_seq0"][f]), int(c["pc_seq1"][f])
            rec["pcap"] = {
                "packets": int(c["pc_kept"][f]),
                "skipped": int(c["pc_skip"][f]),
                "dropped": int(c["pc_drop"][f]),
                "files": [pcap_names[q] for q in range(s0, s1 + 1)] if s0 > 0 else [],
            }
        if labeler is not None and vni >= 0:
            labels = labeler(vni)
            if labels:
                rec["aws"] = labels
        if sensor:
            rec["sensor"] = sensor
        out.append(rec)
    return out


def talkers(table: FlowTable, flows: np.ndarray) -> list[dict[str, Any]]:
    """A short summary of each flow (who talks to whom, how much) for live views."""
    c = table.cols
    out = []
    for f in flows.tolist():
        kp = int(c["kproto"][f])
        v6 = kp >= 256
        a, _ = address(int(c["a_hi"][f]), int(c["a_lo"][f]), v6)
        b, _ = address(int(c["b_hi"][f]), int(c["b_lo"][f]), v6)
        ends = [(a, int(c["a_port"][f])), (b, int(c["b_port"][f]))]
        o = int(c["orig"][f])
        (src, sport), (dst, dport) = ends[o], ends[1 - o]
        vni = int(c["kvni"][f])
        out.append({
            "src_ip": src, "src_port": sport, "dest_ip": dst, "dest_port": dport,
            "transport": TRANSPORTS.get(kp & 0xFF, str(kp & 0xFF)), "vni": None if vni < 0 else vni,
            "packets": int(c["pkts"][f].sum()), "bytes": int(c["ipbytes"][f].sum()),
            "since": float(c["seg_start"][f]),
        })
    return out
