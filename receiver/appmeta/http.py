"""HTTP/1.x request and status lines plus the headers that matter, parsed leniently.

A mirrored packet may be cut short (snaplen, AWS truncation) and a request may span
segments: whatever complete lines are present are used; a missing header is ``None``.
dpkt's ``http.Request`` insists on a complete header block (and body), so the few lines
needed here are read directly.
"""

from __future__ import annotations

from typing import Any

METHODS = frozenset(
    b"GET POST HEAD PUT DELETE OPTIONS PATCH CONNECT TRACE PROPFIND PROPPATCH MKCOL COPY MOVE LOCK "
    b"UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE SUBSCRIBE UNSUBSCRIBE NOTIFY PURGE".split()
)
# First bytes of a payload that may start an HTTP message (a cheap pre-check for callers).
PREFIXES = tuple({m[:3] for m in METHODS} | {b"HTT"})
MAX_HEAD = 8192  # header bytes examined


def looks_like_http(payload: bytes) -> bool:
    """Cheap test: the payload starts like an HTTP request or response."""
    if payload[:5] == b"HTTP/":
        return True
    sp = payload.find(b" ", 0, 12)
    return sp > 0 and payload[:sp] in METHODS


_STARTS = (*tuple(m + b" " for m in METHODS), b"HTTP/")


def could_start_http(data: bytes) -> bool:
    """``data`` is a proper prefix of an HTTP request/response start (more bytes may follow)."""
    return any(s.startswith(data) for s in _STARTS)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in lines:
        if not line:
            break
        k, sep, v = line.partition(b":")
        if sep:
            out.setdefault(k.strip().lower(), v.strip())
    return out


def _lines(payload: bytes) -> list[bytes]:
    head = payload[:MAX_HEAD]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
        lines = head.split(b"\r\n")
    else:
        lines = head.split(b"\n")
        if len(lines) > 1:  # the last line may be cut mid-way: drop it
            lines = lines[:-1]
        lines = [ln.rstrip(b"\r") for ln in lines]
    return lines


def parse_request(payload: bytes) -> dict[str, Any] | None:
    """``{method, host, uri, user_agent, version}`` of a request, or None if it is not one."""
    if not looks_like_http(payload) or payload[:5] == b"HTTP/":
        return None
    lines = _lines(payload)
    if not lines or not lines[0]:
        first = payload.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        lines = [first]
    parts = lines[0].split(b" ")
    if len(parts) < 2 or parts[0] not in METHODS:
        return None
    version = None
    if len(parts) >= 3 and parts[-1].startswith(b"HTTP/"):
        version = _text(parts[-1][5:])
        uri = b" ".join(parts[1:-1])
    else:
        uri = b" ".join(parts[1:])
    h = _headers(lines[1:])
    host = h.get(b"host")
    ua = h.get(b"user-agent")
    return {
        "method": _text(parts[0]),
        "host": _text(host) if host is not None else None,
        "uri": _text(uri),
        "user_agent": _text(ua) if ua is not None else None,
        "version": version,
    }


def parse_response(payload: bytes) -> dict[str, Any] | None:
    """``{status, reason, version}`` of a response (status line), or None if it is not one."""
    if payload[:5] != b"HTTP/":
        return None
    line = payload[:512].split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    return {
        "status": int(parts[1]),
        "reason": _text(parts[2]) if len(parts) > 2 else "",
        "version": _text(parts[0][5:]),
    }
