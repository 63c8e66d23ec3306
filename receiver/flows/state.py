"""Zeek-style connection summaries: ``history`` and ``conn_state`` from per-direction history codes.

History codes are (letter, endpoint direction) pairs recorded in order of first occurrence
(``FlowTable.hist``). Letters: S a SYN without ACK, H a SYN with ACK, A a pure ACK, D payload,
F a FIN, R a RST; upper case when the originator sent it, lower case for the responder, and a
leading ``^`` when the originator was flipped (the first packet seen came from the responder).
"""

from __future__ import annotations

import functools

from .table import L_DATA, L_FIN, L_RST, L_SYN, L_SYNACK, LETTERS


@functools.lru_cache(maxsize=4096)
def history(hist: int, orig: int, flipped: bool) -> str:
    """The history string (cached: flows share a handful of histories)."""
    out = ["^"] if flipped else []
    while hist:
        code = (hist & 0xF) - 1
        hist >>= 4
        letter, endpoint = LETTERS[code >> 1], code & 1
        out.append(letter if endpoint == orig else letter.lower())
    return "".join(out)


def _has(hbits: int, letter: int, endpoint: int) -> bool:
    return bool(hbits >> (2 * letter + endpoint) & 1)


def conn_state(proto: int, hbits: int, orig: int, pkts_orig: int, pkts_resp: int, pay_orig: int, pay_resp: int) -> str:
    """Zeek's conn_state values (see docs/flowrecord.md), from what each side sent."""
    return _conn_state(proto, hbits, orig, pkts_orig > 0, pkts_resp > 0, pay_orig == 0 and pay_resp == 0)


@functools.lru_cache(maxsize=4096)
def _conn_state(proto: int, hbits: int, orig: int, pkts_orig: bool, pkts_resp: bool, no_payload: bool) -> str:
    resp = 1 - orig
    if proto == 6:
        o = _tcp_endpoint(hbits, orig, resp, pkts_orig)
        r = _tcp_endpoint(hbits, resp, orig, pkts_resp)
        o_inactive = o in ("inactive", "partial")
        r_inactive = r in ("inactive", "partial")
        if r == "reset":
            if o in ("syn_sent", "syn_ack_sent") or (o == "reset" and no_payload):
                return "REJ"
            return "RSTRH" if o_inactive else "RSTR"
        if o == "reset":
            if r_inactive:
                s_first = _has(hbits, L_SYN, orig) and not _has(hbits, L_SYNACK, resp)
                return "RSTOS0" if s_first else "OTH"
            return "RSTO"
        if r == "closed" and o == "closed":
            return "SF"
        if o == "closed":
            return "SH" if r_inactive else "S2"
        if r == "closed":
            return "SHR" if o_inactive else "S3"
        if o == "syn_sent" and r == "inactive":
            return "S0"
        if o == "established" and r == "established":
            return "S1"
        return "OTH"
    if proto == 17:
        if pkts_orig:
            return "SF" if pkts_resp else "S0"
        return "SHR" if pkts_resp else "OTH"
    return "OTH"


def _tcp_endpoint(hbits: int, me: int, peer: int, pkts: int) -> str:
    """An approximation of Zeek's TCP endpoint state from the letters this endpoint sent."""
    if _has(hbits, L_RST, me):
        return "reset"
    if _has(hbits, L_FIN, me):
        return "closed"
    if not pkts:
        return "inactive"
    syn, synack = _has(hbits, L_SYN, me), _has(hbits, L_SYNACK, me)
    peer_syn, peer_synack = _has(hbits, L_SYN, peer), _has(hbits, L_SYNACK, peer)
    if (syn and peer_synack) or (synack and peer_syn):
        return "established"
    if syn:
        return "syn_sent"
    if synack:
        return "syn_ack_sent"
    if _has(hbits, L_DATA, me) or pkts:
        return "partial"
    return "inactive"  # pragma: no cover
