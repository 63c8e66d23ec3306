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


# first bytes of a header line whose name may be Host or User-Agent (leading blanks are stripped)
_HOST_UA_FIRST = frozenset(b"hHuU \t\r\n\x0b\x0c")


def _lines(payload: bytes) -> list[bytes]:
    """The lines of a message head (up to its blank line; a last line cut short is left out)."""
    head = payload[:MAX_HEAD]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        return head[:end].split(b"\r\n")
    lines = head.split(b"\n")
    if len(lines) > 1:  # the last line may be cut mid-way: drop it
        lines.pop()
    return [ln.rstrip(b"\r") for ln in lines]


Request = tuple[str, str | None, str, str | None, str | None]  # method, host, uri, user_agent, version


def parse_request(payload: bytes) -> dict[str, Any] | None:
    """``{method, host, uri, user_agent, version}`` of a request, or None if it is not one."""
    r = request_fields(payload)
    if r is None:
        return None
    return {"method": r[0], "host": r[1], "uri": r[2], "user_agent": r[3], "version": r[4]}


def request_fields(payload: bytes) -> Request | None:
    """What :func:`parse_request` says, as a tuple."""
    sp = payload.find(b" ", 0, 12)
    if sp <= 0 or payload[:sp] not in METHODS:  # (not looks_like_http, or a response)
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
        version = parts[-1][5:].decode("utf-8", "backslashreplace")
        uri = b" ".join(parts[1:-1]) if len(parts) > 3 else parts[1]
    else:
        uri = b" ".join(parts[1:]) if len(parts) > 2 else parts[1]
    # Host and User-Agent: the first of each, up to an empty line. (The request line is read too:
    # it never passes for either, as it starts with a method and a space.)
    host = ua = None
    for line in lines:
        if not line:
            break
        if line[0] not in _HOST_UA_FIRST:
            continue
        k, sep, v = line.partition(b":")
        if sep:
            k = k.strip().lower()
            if k == b"host":
                if host is None:
                    host = v.strip()
                    if ua is not None:
                        break
            elif k == b"user-agent" and ua is None:
                ua = v.strip()
                if host is not None:
                    break
    return (
        parts[0].decode("utf-8", "backslashreplace"),
        host.decode("utf-8", "backslashreplace") if host is not None else None,
        uri.decode("utf-8", "backslashreplace"),
        ua.decode("utf-8", "backslashreplace") if ua is not None else None,
        version,
    )


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


def status_line(payload: bytes) -> tuple[int, str] | None:
    """The status code and reason of a response's status line (``payload`` starts with "HTTP/"),
    or None if it is not one."""
    e = payload.find(b"\n", 0, 512)
    line = payload[: e if e >= 0 else 512].rstrip(b"\r")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2].decode("utf-8", "backslashreplace") if len(parts) > 2 else ""
