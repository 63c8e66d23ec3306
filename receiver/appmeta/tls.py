"""TLS ClientHello / ServerHello: SNI, versions, ALPN, cipher, parsed as far as the data goes.

The input is the start of one direction's TCP stream (one or more segments concatenated).
Handshake fragments are gathered across TLS records; when the data ends early the fields
read so far are returned, with ``complete`` False so a caller can retry with more data.
Cipher suite names come from dpkt's table (imported when first needed).
"""

from __future__ import annotations

import functools
from typing import Any

VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv10", 0x0302: "TLSv11", 0x0303: "TLSv12", 0x0304: "TLSv13"}
MAX_HELLO = 1 << 16


def version_name(v: int) -> str:
    if v in VERSIONS:
        return VERSIONS[v]
    if v >> 8 == 0x7F:
        return f"TLSv13-draft{v & 0xFF}"
    return f"0x{v:04x}"


def _grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


@functools.cache
def _ciphers() -> dict[int, Any]:
    """dpkt's cipher suite table, imported on first use: importing dpkt costs tens of milliseconds
    of start-up, and only a ServerHello needs it."""
    from dpkt.ssl_ciphersuites import BY_CODE

    return dict(BY_CODE)


def cipher_name(code: int) -> str:
    cs = _ciphers().get(code)
    return str(cs.name) if cs is not None else f"0x{code:04x}"


def looks_like_tls_handshake(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 3 and data[2] <= 4


def _handshake_any(data: bytes) -> tuple[int, bytes, int] | None:
    """The handshake message's type, its bytes (maybe partial) and its declared length."""
    if not looks_like_tls_handshake(data):
        return None
    n = len(data)
    if n >= 9:  # the common case: the whole message in the first record
        rlen = (data[3] << 8) | data[4]
        length = (data[6] << 16) | (data[7] << 8) | data[8]
        if 4 + length <= rlen and 5 + rlen <= n:
            return data[5], data[9 : 5 + rlen], length
    body = bytearray()
    pos = 0
    while pos + 5 <= n and data[pos] == 0x16 and len(body) < MAX_HELLO:
        rlen = (data[pos + 3] << 8) | data[pos + 4]
        body += data[pos + 5 : pos + 5 + rlen]
        pos += 5 + rlen
        if len(body) >= 4 and len(body) >= 4 + int.from_bytes(body[1:4], "big"):
            break
    if len(body) < 4:
        return None
    return body[0], bytes(body[4:]), int.from_bytes(body[1:4], "big")


def _handshake(data: bytes, want: int) -> tuple[bytes, int] | None:
    """The handshake message bytes (maybe partial) and its declared length, if type ``want``."""
    hs = _handshake_any(data)
    if hs is None or hs[0] != want:
        return None
    return hs[1], hs[2]


def _u16(b: bytes, p: int, end: int) -> int:
    if p + 2 > end:
        raise IndexError
    return (b[p] << 8) | b[p + 1]


def _extensions(b: bytes, p: int, out: dict[str, Any], server: bool) -> None:
    """Read the extensions block at ``p``; a read past the data raises IndexError (fields read so
    far stay in ``out``)."""
    n = len(b)
    total = _u16(b, p, n)
    p += 2
    end = p + total
    lim = min(end, n)
    while p + 4 <= lim:
        etype = (b[p] << 8) | b[p + 1]
        e = p + 4  # the extension's bytes are b[e:ee]
        ee = e + ((b[p + 2] << 8) | b[p + 3])
        if ee > n:
            raise IndexError
        p = ee
        if etype == 0 and not server:  # server_name
            e += 2
            if e > ee:
                raise IndexError
            while e < ee:
                kind = b[e]
                ln = _u16(b, e + 1, ee)
                e += 3
                if e + ln > ee:
                    raise IndexError
                if kind == 0:
                    out["sni"] = b[e : e + ln].decode("ascii", "backslashreplace")
                    break
                e += ln
        elif etype == 16:  # ALPN
            e += 2
            if e > ee:
                raise IndexError
            protos = []
            while e < ee:
                ln = b[e]
                e += 1
                if e + ln > ee:
                    raise IndexError
                protos.append(b[e : e + ln].decode("ascii", "backslashreplace"))
                e += ln
            out["alpn"] = protos if not server else (protos[0] if protos else None)
        elif etype == 43:  # supported_versions
            if server:
                out["version"] = version_name(_u16(b, e, ee))
            else:
                if e >= ee:
                    raise IndexError
                count = b[e] // 2
                e += 1
                if e + 2 * count > ee:
                    raise IndexError
                vs = [v for v in ((b[i] << 8) | b[i + 1] for i in range(e, e + 2 * count, 2)) if not _grease(v)]
                if vs:
                    out["supported_versions"] = [version_name(v) for v in vs]
                    out["version"] = version_name(max(vs, key=lambda v: (v >> 8 != 0x7F, v)))
    out["complete"] = p >= end


def _hello_head(b: bytes, out: dict[str, Any], server: bool) -> int:
    """Read a hello's fixed part (version, random, session id, then the cipher list and compression
    methods of a ClientHello or the cipher and compression of a ServerHello) into ``out``;
    returns where the extensions start. A read past the data raises IndexError."""
    n = len(b)
    out["version"] = version_name(_u16(b, 0, n))
    p = 34  # version and random
    if p >= n:
        raise IndexError
    p += 1 + b[p]  # session id
    if server:
        out["cipher"] = cipher_name(_u16(b, p, n))
        p += 3  # cipher and compression method
    else:
        p += 2 + _u16(b, p, n)  # cipher suites
        if p >= n:
            raise IndexError
        p += 1 + b[p]  # compression methods
    if p > n:
        raise IndexError
    return p


def _parse_hello(body: bytes, length: int, server: bool) -> dict[str, Any]:
    out: dict[str, Any] = (
        {"version": None, "cipher": None, "alpn": None, "complete": False}
        if server
        else {"sni": None, "version": None, "alpn": [], "complete": False}
    )
    try:
        p = _hello_head(body, out, server)
        if p >= length:  # no extensions at all
            out["complete"] = True
            return out
        _extensions(body, p, out, server)
    except IndexError:
        out["complete"] = False
    return out


def parse_hello(data: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(1, parse_client_hello(data))`` or ``(2, parse_server_hello(data))``, whichever is not
    None (the handshake is read once), else None."""
    hs = _handshake_any(data)
    if hs is None or hs[0] not in (1, 2):
        return None
    return hs[0], _parse_hello(hs[1], hs[2], hs[0] == 2)


def parse_client_hello(data: bytes) -> dict[str, Any] | None:
    """``{sni, version, alpn, supported_versions, complete}`` or None if not a ClientHello."""
    hs = _handshake(data, 1)
    return None if hs is None else _parse_hello(hs[0], hs[1], server=False)


def parse_server_hello(data: bytes) -> dict[str, Any] | None:
    """``{version, cipher, alpn, complete}`` or None if not a ServerHello."""
    hs = _handshake(data, 2)
    return None if hs is None else _parse_hello(hs[0], hs[1], server=True)
