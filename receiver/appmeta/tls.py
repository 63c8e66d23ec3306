"""TLS ClientHello / ServerHello: SNI, versions, ALPN, cipher, parsed as far as the data goes.

The input is the start of one direction's TCP stream (one or more segments concatenated).
Handshake fragments are gathered across TLS records; when the data ends early the fields
read so far are returned, with ``complete`` False so a caller can retry with more data.
Cipher suite names come from dpkt's table (imported when first needed).
"""

from __future__ import annotations

import functools
import struct
from typing import Any

VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv10", 0x0302: "TLSv11", 0x0303: "TLSv12", 0x0304: "TLSv13"}
MAX_HELLO = 1 << 16


def version_name(v: int) -> str:
    if v in VERSIONS:
        return VERSIONS[v]
    if v >> 8 == 0x7F:
        return f"TLSv13-draft{v & 0xFF}"
    return f"0x{v:04x}"


# GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa
_GREASE = frozenset(0x0A0A + 0x1010 * k for k in range(16))
_TYPE_LEN = struct.Struct("!HH")  # an extension's type and length
_U16_ARRAYS = [struct.Struct(f"!{k}H") for k in range(128)]  # k big-endian 16-bit integers


@functools.cache
def _ciphers() -> dict[int, Any]:
    """dpkt's cipher suite table, imported on first use: importing dpkt costs tens of milliseconds
    of start-up, and only a ServerHello needs it."""
    from dpkt.ssl_ciphersuites import BY_CODE

    return dict(BY_CODE)


_CIPHER_NAMES: dict[int, str] = {}  # the names given so far (at most 65,536)


def cipher_name(code: int) -> str:
    name = _CIPHER_NAMES.get(code)
    if name is None:
        cs = _ciphers().get(code)
        name = _CIPHER_NAMES[code] = str(cs.name) if cs is not None else f"0x{code:04x}"
    return name


def looks_like_tls_handshake(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 3 and data[2] <= 4


def _handshake_any(data: bytes) -> tuple[int, bytes, int] | None:
    """The handshake message's type, its bytes (maybe partial) and its declared length."""
    n = len(data)
    if n < 3 or data[0] != 0x16 or data[1] != 3 or data[2] > 4:  # (not looks_like_tls_handshake)
        return None
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


# (type: 1 ClientHello, 2 ServerHello; version; sni; alpn: a ClientHello's list, a ServerHello's
# choice or None; cipher; supported_versions or None; complete): what ``hello`` returns
Hello = tuple[int, str | None, str | None, Any, str | None, list[str] | None, bool]
_WANTED = frozenset((0, 16, 43))  # the extensions read: server_name, ALPN, supported_versions


def hello(data: bytes) -> Hello | None:
    """The fields of the ClientHello or ServerHello at the start of ``data`` (the handshake is read
    once), as a tuple; None if there is none. What ``parse_hello`` says, without a dict."""
    hs = _handshake_any(data)
    if hs is None or hs[0] not in (1, 2):
        return None
    return _hello_fields(*hs)


def handshake_hello(data: bytes) -> Hello | None:
    """What ``hello`` says of a handshake message at the start of ``data`` without the record
    layer around it (as QUIC carries the handshake, in CRYPTO frames: RFC 9001 section 4)."""
    if len(data) < 4 or data[0] not in (1, 2):
        return None
    length = int.from_bytes(data[1:4], "big")
    return _hello_fields(data[0], data[4 : 4 + length], length)


def _hello_fields(kind: int, b: bytes, length: int) -> Hello:
    """A hello's fields from its body ``b`` (``length``: its declared length): its fixed part
    (version, random, session id, then the cipher list and compression methods of a ClientHello or
    the cipher and compression of a ServerHello), then its extensions. A read past the data ends
    it, with the fields read so far and ``complete`` False."""
    server = kind == 2
    version = sni = cipher = None
    alpn: Any = None if server else []
    supported: list[str] | None = None
    complete = False
    n = len(b)
    try:
        if n < 2:
            raise IndexError
        v = (b[0] << 8) | b[1]
        version = VERSIONS.get(v) or version_name(v)
        if n <= 34:  # version and random
            raise IndexError
        p = 35 + b[34]  # session id
        if p + 2 > n:
            raise IndexError
        if server:
            cipher = cipher_name((b[p] << 8) | b[p + 1])
            p += 3  # cipher and compression method
        else:
            p += 2 + ((b[p] << 8) | b[p + 1])  # cipher suites
            if p >= n:
                raise IndexError
            p += 1 + b[p]  # compression methods
        if p > n:
            raise IndexError
        if p >= length:  # no extensions at all
            return kind, version, sni, alpn, cipher, supported, True
        # the extensions block
        if p + 2 > n:
            raise IndexError
        end = p + 2 + ((b[p] << 8) | b[p + 1])
        p += 2
        lim = end if end < n else n
        while p + 4 <= lim:
            etype, elen = _TYPE_LEN.unpack_from(b, p)
            e = p + 4  # the extension's bytes are b[e:ee]
            ee = e + elen
            if ee > n:
                raise IndexError
            p = ee
            if etype not in _WANTED:
                continue
            if etype == 0:  # server_name
                if server:
                    continue
                e += 2
                if e > ee:
                    raise IndexError
                while e < ee:
                    if e + 3 > ee:
                        raise IndexError
                    ln = (b[e + 1] << 8) | b[e + 2]
                    if e + 3 + ln > ee:
                        raise IndexError
                    if b[e] == 0:
                        sni = b[e + 3 : e + 3 + ln].decode("ascii", "backslashreplace")
                        break
                    e += 3 + ln
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
                alpn = protos if not server else (protos[0] if protos else None)
            elif server:  # supported_versions: the one chosen
                if e + 2 > ee:
                    raise IndexError
                version = version_name((b[e] << 8) | b[e + 1])
            else:  # supported_versions: those offered
                if e >= ee:
                    raise IndexError
                count = b[e] // 2
                e += 1
                if e + 2 * count > ee:
                    raise IndexError
                vs = [v for v in _U16_ARRAYS[count].unpack_from(b, e) if v not in _GREASE]
                if vs:
                    supported = [VERSIONS.get(v) or version_name(v) for v in vs]
                    final = [v for v in vs if v >> 8 != 0x7F]  # a final version over any draft
                    version = version_name(max(final or vs))
        complete = p >= end
    except IndexError:
        complete = False
    return kind, version, sni, alpn, cipher, supported, complete


def _as_dict(h: Hello) -> dict[str, Any]:
    kind, version, sni, alpn, cipher, supported, complete = h
    if kind == 2:
        return {"version": version, "cipher": cipher, "alpn": alpn, "complete": complete}
    out = {"sni": sni, "version": version, "alpn": alpn, "complete": complete}
    if supported is not None:
        out["supported_versions"] = supported
    return out


def parse_hello(data: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(1, parse_client_hello(data))`` or ``(2, parse_server_hello(data))``, whichever is not
    None (the handshake is read once), else None."""
    h = hello(data)
    return None if h is None else (h[0], _as_dict(h))


def parse_client_hello(data: bytes) -> dict[str, Any] | None:
    """``{sni, version, alpn, supported_versions, complete}`` or None if not a ClientHello."""
    hs = _handshake(data, 1)
    return None if hs is None else _as_dict(_hello_fields(1, *hs))


def parse_server_hello(data: bytes) -> dict[str, Any] | None:
    """``{version, cipher, alpn, complete}`` or None if not a ServerHello."""
    hs = _handshake(data, 2)
    return None if hs is None else _as_dict(_hello_fields(2, *hs))
