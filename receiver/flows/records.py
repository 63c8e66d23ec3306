"""Turning flow-table rows into FlowRecords (plain dicts, see docs/flowrecord.md)."""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from ..decode.tcp import flag_letters
from .community_id import community_id_v1
from .excerpts import ExcerptPool
from .record import EndReason, FlowRecord
from .state import conn_state, history
from .table import FlowTable

TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}
_V4_PREFIX = 0xFFFF


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
) -> list[FlowRecord]:
    c = table.cols
    cols = {
        k: c[k][flows].tolist()
        for k in (
            "kvni", "kproto", "a_hi", "a_lo", "b_hi", "b_lo", "a_port", "b_port", "orig", "flipped",
            "seg_start", "t_last", "hist", "hbits", "trunc", "frags", "segments",
        )
    }
    pkts, ipb, payb = c["pkts"][flows].tolist(), c["ipbytes"][flows].tolist(), c["paybytes"][flows].tolist()
    tfl, exl, exr = c["tflags"][flows].tolist(), c["exc_len"][flows].tolist(), c["exc_row"][flows].tolist()
    out: list[FlowRecord] = []
    for j, f in enumerate(flows.tolist()):
        kp = cols["kproto"][j]
        proto, v6 = kp & 0xFF, kp >= 256
        a_ip, a_raw = address(cols["a_hi"][j], cols["a_lo"][j], v6)
        b_ip, b_raw = address(cols["b_hi"][j], cols["b_lo"][j], v6)
        o = cols["orig"][j]
        r = 1 - o
        if o == 0:
            src, sraw, sport, dst, draw, dport = a_ip, a_raw, cols["a_port"][j], b_ip, b_raw, cols["b_port"][j]
        else:
            src, sraw, sport, dst, draw, dport = b_ip, b_raw, cols["b_port"][j], a_ip, a_raw, cols["a_port"][j]
        # endpoint direction o is "originator -> responder" (A->B is direction 0, sent by A)
        d_in, d_out = o, r
        ts_start, ts_end = cols["seg_start"][j], cols["t_last"][j]
        if ts_end < ts_start:  # an interim record's segment had no packets
            ts_end = ts_start if now is None else max(ts_start, now)
        vni = cols["kvni"][j]
        hb = cols["hbits"][j]
        rec: FlowRecord = {
            "vni": None if vni < 0 else vni,
            "transport": TRANSPORTS.get(proto, str(proto)),
            "ip_proto": proto,
            "src_ip": src,
            "src_port": sport,
            "dest_ip": dst,
            "dest_port": dport,
            "packets_in": pkts[j][d_in],
            "bytes_in": ipb[j][d_in],
            "packets_out": pkts[j][d_out],
            "bytes_out": ipb[j][d_out],
            "payload_bytes_in": payb[j][d_in],
            "payload_bytes_out": payb[j][d_out],
            "ts_start": ts_start,
            "ts_end": ts_end,
            "duration": round(ts_end - ts_start, 6),
            "community_id": community_id_v1(proto, sraw, draw, sport, dport),
            "conn_state": conn_state(
                proto, hb, o, pkts[j][d_in], pkts[j][d_out], payb[j][d_in], payb[j][d_out]
            ),
            "history": history(cols["hist"][j], o, bool(cols["flipped"][j])),
            "tcp_flags_in": flag_letters(tfl[j][d_in]) if proto == 6 else "",
            "tcp_flags_out": flag_letters(tfl[j][d_out]) if proto == 6 else "",
            "end_reason": reason,
            "truncated": bool(cols["trunc"][j]),
            "fragments": cols["frags"][j],
        }
        if cols["segments"][j]:
            rec["segment"] = cols["segments"][j]
        elif excerpts is not None:
            rows = excerpts.rows
            if exl[j][d_in]:
                rec["excerpt_in"] = base64.b64encode(rows[exr[j][d_in] - 1, : exl[j][d_in]].tobytes()).decode()
            if exl[j][d_out]:
                rec["excerpt_out"] = base64.b64encode(rows[exr[j][d_out] - 1, : exl[j][d_out]].tobytes()).decode()
        state = app.get(f)
        if state is not None:
            meta = state if isinstance(state, dict) else state.to_record()
            if meta:
                rec["app"] = meta
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
