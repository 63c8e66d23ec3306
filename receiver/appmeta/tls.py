"""TLS ClientHello / ServerHello: SNI, versions, ALPN, cipher, parsed as far as the data goes.

The input is the start of one direction's TCP stream (one or more segments concatenated).
Handshake fragments are gathered across TLS records; when the data ends early the fields
read so far are returned, with ``complete`` False so a caller can retry with more data.
Cipher suite names come from dpkt's table.
"""

from __future__ import annotations

import struct
from typing import Any

from dpkt.ssl_ciphersuites import BY_CODE

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


def cipher_name(code: int) -> str:
    cs = BY_CODE.get(code)
    return str(cs.name) if cs is not None else f"0x{code:04x}"


def looks_like_tls_handshake(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 3 and data[2] <= 4


def _handshake(data: bytes, want: int) -> tuple[bytes, int] | None:
    """The handshake message bytes (maybe partial) and its declared length, if type ``want``."""
    if not looks_like_tls_handshake(data):
        return None
    body = bytearray()
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x16 and len(body) < MAX_HELLO:
        (rlen,) = struct.unpack_from("!H", data, pos + 3)
        body += data[pos + 5 : pos + 5 + rlen]
        pos += 5 + rlen
        if len(body) >= 4 and len(body) >= 4 + int.from_bytes(body[1:4], "big"):
            break
    if len(body) < 4 or body[0] != want:
        return None
    return bytes(body[4:]), int.from_bytes(body[1:4], "big")


class _R:
    """A bounds-checked reader: reads past the end raise IndexError."""

    __slots__ = ("b", "p")

    def __init__(self, b: bytes) -> None:
        self.b, self.p = b, 0

    def take(self, n: int) -> bytes:
        if self.p + n > len(self.b):
            raise IndexError
        v = self.b[self.p : self.p + n]
        self.p += n
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")


def _extensions(r: _R, out: dict[str, Any], server: bool) -> None:
    total = r.u16()
    end = r.p + total
    while r.p + 4 <= min(end, len(r.b)):
        etype, elen = r.u16(), r.u16()
        e = _R(r.take(elen))
        if etype == 0 and not server:  # server_name
            e.u16()
            while e.p < len(e.b):
                kind, ln = e.u8(), e.u16()
                name = e.take(ln)
                if kind == 0:
                    out["sni"] = name.decode("ascii", "backslashreplace")
                    break
        elif etype == 16:  # ALPN
            e.u16()
            protos = []
            while e.p < len(e.b):
                protos.append(e.take(e.u8()).decode("ascii", "backslashreplace"))
            out["alpn"] = protos if not server else (protos[0] if protos else None)
        elif etype == 43:  # supported_versions
            if server:
                out["version"] = version_name(e.u16())
            else:
                n = e.u8()
                vs = [int.from_bytes(e.take(2), "big") for _ in range(n // 2)]
                vs = [v for v in vs if not _grease(v)]
                if vs:
                    out["supported_versions"] = [version_name(v) for v in vs]
                    out["version"] = version_name(max(vs, key=lambda v: (v >> 8 != 0x7F, v)))
    out["complete"] = r.p >= end


def parse_client_hello(data: bytes) -> dict[str, Any] | None:
    """``{sni, version, alpn, supported_versions, complete}`` or None if not a ClientHello."""
    hs = _handshake(data, 1)
    if hs is None:
        return None
    body, length = hs
    out: dict[str, Any] = {"sni": None, "version": None, "alpn": [], "complete": False}
    r = _R(body)
    try:
        out["version"] = version_name(r.u16())
        r.take(32)
        r.take(r.u8())
        r.take(r.u16())
        r.take(r.u8())
        if r.p >= length:  # no extensions at all
            out["complete"] = True
            return out
        _extensions(r, out, server=False)
    except IndexError:
        out["complete"] = False
    return out


def parse_server_hello(data: bytes) -> dict[str, Any] | None:
    """``{version, cipher, alpn, complete}`` or None if not a ServerHello."""
    hs = _handshake(data, 2)
    if hs is None:
        return None
    body, length = hs
    out: dict[str, Any] = {"version": None, "cipher": None, "alpn": None, "complete": False}
    r = _R(body)
    try:
        out["version"] = version_name(r.u16())
        r.take(32)
        r.take(r.u8())
        out["cipher"] = cipher_name(r.u16())
        r.u8()
        if r.p >= length:
            out["complete"] = True
            return out
        _extensions(r, out, server=True)
    except IndexError:
        out["complete"] = False
    return out
