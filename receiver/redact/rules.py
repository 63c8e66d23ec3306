"""Where the credentials are in a payload excerpt (or a URI), and masking them.

Each rule finds the byte ranges of secret values; :meth:`Rules.mask` replaces those bytes with
``*`` (so lengths and offsets stay as they were) and returns how many values it masked.
Names, commands and schemes stay. The rules read an excerpt as it is: the first bytes of one
direction of a flow, possibly several segments back to back and possibly cut anywhere, so a
value that runs to the end of the excerpt is masked to the end.

- HTTP headers (names in ``headers``), at the start of a line: ``Authorization`` and
  ``Proxy-Authorization`` keep their scheme; ``Cookie`` keeps the names of its cookies,
  ``Set-Cookie`` its cookie's name and the attributes after it; the others are masked whole.
- Parameters (names in ``params``) after ``?``, ``&``, ``;`` or at the start of a line (a form
  body): the value, up to ``&``, ``;``, ``#``, ``?``, a blank or a quote.
- The password of ``scheme://user:password@`` (the user name stays), and of ``user:password@``
  in a ``Host`` header beside a request target with such a URL (http.client, for one, copies
  the URL's user information there).
- Mail, FTP and Redis logins at the start of a line: ``PASS <arg>`` (FTP, POP3);
  ``[tag] LOGIN <user> <password>`` (IMAP: atoms, quoted strings and literals ``{n}``);
  ``AUTH <mechanism> [response]`` (SMTP, POP3) and ``tag AUTHENTICATE <mechanism> [response]``
  (IMAP), with the client's base64 response lines that follow; ``AUTH [user] <password>`` and
  ``HELLO <v> AUTH <user> <password>`` (Redis inline commands) and the same as RESP arrays
  (``*2\\r\\n$4\\r\\nAUTH\\r\\n$6\\r\\nsecret\\r\\n``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .names import SASL_LINES, SASL_LINES_OTHER, SASL_MECHANISMS, SASL_PREFIXES

MASK = b"*"
Span = tuple[int, int]
Marker = tuple[bytes, int]  # lower-case bytes that come before a secret value, and its rules
# the groups of rules (a marker says which may find something)
HEADER, PARAM, URL, PASS, AUTH, LOGIN = 1, 2, 4, 8, 16, 32

_SCHEME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ +")
_TOKEN = re.compile(rb"[^ \t]+")
_BASE64_LINE = re.compile(rb"(?!\*$)[A-Za-z0-9+/*]+=*")  # (a SASL response, or one masked: not "*", a cancel)
_TAG = re.compile(rb"[a-z0-9._+-]+ +")  # an IMAP tag (lower case) and the blanks after it
_PASS = re.compile(rb"pass +([^\r\n]*)", re.I)
_AUTH = re.compile(rb"(?:(?:[a-z0-9._+-]+ +)?authenticate|auth) +([^\r\n]*)", re.I)
_LOGIN = re.compile(rb"(?:[a-z0-9._+-]+ +)?login +", re.I)
_HELLO = re.compile(rb"hello +[^ \r\n]+ +auth +[^ \r\n]+ +([^ \r\n]+)", re.I)
_RESP = re.compile(rb"\*([0-9]{1,2})\r\n")
_BULK = re.compile(rb"\$([0-9]{1,9})\r\n")
_LITERAL = re.compile(rb"\{([0-9]{1,9})\+?\}\r\n")
_HOST = re.compile(rb"host:[ \t]*[^\s@:/]*:([^\s@/]*)@", re.I)
_HOST_TEXT = re.compile(r"[^\s@:/]*:([^\s@/]*)@")
_USERINFO = re.compile(rb"://[^/?#@\s:]*:([^/?#@\s]*)(?:@|\Z)")
_USERINFO_TEXT = re.compile(r"://[^/?#@\s:]*:([^/?#@\s]*)(?:@|\Z)")
_VALUE = re.compile(rb"[^&;#?\s\"'<>]*")  # a parameter's value
_VALUE_TEXT = re.compile(r"[^&;#?\s\"'<>]*")
_SCHEME_HEADERS = frozenset((b"authorization", b"proxy-authorization"))
COMMAND_MARKERS: dict[bytes, int] = {b"pass ": PASS, b"auth ": AUTH, b"auth\r": AUTH, b"authenticate ": AUTH,
                                     b"login ": LOGIN, b"://": URL}  # fmt: skip


def markers(headers: Iterable[str], params: Iterable[str]) -> list[Marker]:
    """The markers of these header and parameter names and of the commands, lower case, sorted,
    without those that contain another (an excerpt with ``x-api-key:`` also contains
    ``api-key:``), each with the rules of every name it is part of."""
    names = [(h.lower().encode() + b":", HEADER) for h in headers if h]
    names += [(p.lower().encode() + b"=", PARAM) for p in params if p]
    names += list(COMMAND_MARKERS.items())
    found = {m for m, _ in names}
    kept = sorted(m for m in found if not any(o != m and o in m for o in found))
    out = []
    for m in kept:
        kinds = 0
        for name, k in names:
            if m in name:
                kinds |= k
        out.append((m, kinds))
    return out


class Rules:
    """The masking rules for a set of header and parameter names (case-insensitive).

    Each rule starts where one of its markers is (``markers``): the screen tells which markers an
    excerpt holds, and only their places are looked at (a regular expression tried at every
    position of an excerpt costs ten times more in Python)."""

    def __init__(self, headers: Iterable[str], params: Iterable[str]) -> None:
        headers, params = list(headers), list(params)
        self.headers = frozenset(h.lower().encode() for h in headers if h)
        self.params = frozenset(p.lower().encode() for p in params if p)
        self._params_text = frozenset(p.decode() for p in self.params)
        self.markers = markers(headers, params)

    # -- bytes: payload excerpts ---------------------------------------------------------------
    def spans(self, data: bytes, found: Iterable[Marker] | None = None) -> list[Span]:
        """The ranges of ``data`` that hold secret values (unsorted, may overlap), looked for at
        the markers ``found`` (None: all of them)."""
        out: list[Span] = []
        low = data.lower()
        for mark, kinds in self.markers if found is None else found:
            at = low.find(mark)
            while at >= 0:
                self._at(data, low, at, mark, kinds, out)
                at = low.find(mark, at + 1)
        return out

    def _at(self, data: bytes, low: bytes, at: int, mark: bytes, kinds: int, out: list[Span]) -> None:
        """What the rules ``kinds`` find where ``mark`` is, at ``at``."""
        end = at + len(mark)
        last = mark[-1]
        if last == 0x3A:  # a header name and its ":" (names hold no "=", ":" or blank)
            line = low.rfind(b"\n", 0, at) + 1
            if kinds & HEADER and low[line : end - 1] in self.headers:
                e = data.find(b"\n", end)
                e = len(data) if e < 0 else e - (data[e - 1 : e] == b"\r")
                s = end
                while s < e and data[s] in b" \t":
                    s += 1
                self._header_value(low[line : end - 1], s, e, data, out)
            return
        if last == 0x3D:  # a parameter name and its "="
            if kinds & PARAM:
                self._param(data, low, end - 1, out)
            return
        if mark == b"://":
            if (m := _USERINFO.match(data, at)) and m.end(1) > m.start(1):
                out.append(m.span(1))
            # beside an absolute URL, a Host header may repeat its user information
            host = 0 if low.startswith(b"host:") else low.find(b"\nhost:") + 1
            if (host > 0 or low.startswith(b"host:")) and (m := _HOST.match(data, host)) and m.end(1) > m.start(1):
                out.append(m.span(1))
            return
        if mark == b"auth\r":  # RESP: the array that holds this bulk string
            nl = low.rfind(b"\n*", 0, at)
            if (m := _RESP.match(data, nl + 1 if nl >= 0 else 0)) is not None:
                _resp(data, m.end(), int(m.group(1)), out)
            return
        line = low.rfind(b"\n", 0, at) + 1
        if mark == b"pass ":
            if line == at and (m := _PASS.match(data, at)):
                _add_stripped(data, m.start(1), m.end(1), out)
            return
        if mark == b"auth " and low.startswith(b"hello ", line):
            if m := _HELLO.match(data, line):
                out.append(m.span(1))
            return
        if line != at and _TAG.fullmatch(low, line, at) is None:
            return  # (not the line's first word, nor the second after a tag)
        if mark == b"login ":
            if m := _LOGIN.match(data, line):
                _login(data, m.end(), out)
        elif m := _AUTH.match(data, line):  # "auth ", "authenticate "
            _auth(data, m.start(1), m.end(1), out)

    def _param(self, data: bytes, low: bytes, eq: int, out: list[Span]) -> None:
        """The parameter whose ``=`` is at ``eq``, if it is one of ``params`` after ``?``, ``&``,
        ``;``, a line break or at the start."""
        start = max(low.rfind(b"?", 0, eq), low.rfind(b"&", 0, eq), low.rfind(b";", 0, eq),
                    low.rfind(b"\n", 0, eq)) + 1  # fmt: skip
        if low[start:eq] in self.params:
            m = _VALUE.match(data, eq + 1)
            if m is not None and m.end() > m.start():
                out.append(m.span())

    def mask(self, buf: bytearray, found: Iterable[Marker] | None = None) -> int:
        """Mask the secret values in ``buf`` in place (looked for at the markers ``found``, None:
        all); how many were masked."""
        merged = _merge(self.spans(bytes(buf), found))
        for s, e in merged:
            buf[s:e] = MASK * (e - s)
        return len(merged)

    def _header_value(self, name: bytes, start: int, end: int, data: bytes, out: list[Span]) -> None:
        value = data[start:end].rstrip(b" \t")
        end = start + len(value)
        if not value:
            return
        if name in _SCHEME_HEADERS:
            m = _SCHEME.match(value)
            if m is not None:
                if m.end() < len(value):
                    out.append((start + m.end(), end))
                return  # (the scheme alone: a value cut right after it)
            out.append((start, end))
        elif name == b"cookie" or name == b"set-cookie":
            pieces = value.split(b";")
            at = start
            for piece in pieces[:1] if name == b"set-cookie" else pieces:
                s = at + len(piece) - len(piece.lstrip(b" \t"))
                e = at + len(piece.rstrip(b" \t"))
                at += len(piece) + 1
                if e <= s:
                    continue
                eq = data.find(b"=", s, e)
                if eq < 0:
                    out.append((s, e))  # (a value without a name, or one cut short: all of it)
                elif eq + 1 < e:
                    out.append((eq + 1, e))
        else:
            out.append((start, end))

    # -- text: the URI of the application metadata --------------------------------------------
    def mask_text(self, text: str) -> tuple[str, int]:
        """``text`` (a URI) with the values of secret parameters and URL passwords masked, and how
        many were."""
        spans: list[Span] = []
        low = text.lower()
        eq = low.find("=")
        while eq >= 0:  # (each parameter: few per URI)
            start = max(low.rfind("?", 0, eq), low.rfind("&", 0, eq), low.rfind(";", 0, eq)) + 1
            if low[start:eq] in self._params_text:
                m = _VALUE_TEXT.match(text, eq + 1)
                if m is not None and m.end() > m.start():
                    spans.append(m.span())
            eq = low.find("=", eq + 1)
        if "://" in text:
            for m in _USERINFO_TEXT.finditer(text):
                if m.end(1) > m.start(1):
                    spans.append(m.span(1))
        if not spans:
            return text, 0
        merged = _merge(spans)
        parts = []
        at = 0
        for s, e in merged:
            parts.append(text[at:s])
            parts.append("*" * (e - s))
            at = e
        parts.append(text[at:])
        return "".join(parts), len(merged)

    @staticmethod
    def mask_host(host: str) -> tuple[str, int]:
        """A Host header's value with the password of ``user:password@host`` masked, and 1 if
        there was one (else 0)."""
        m = _HOST_TEXT.match(host)
        if m is None or m.end(1) == m.start(1):
            return host, 0
        s, e = m.span(1)
        return host[:s] + "*" * (e - s) + host[e:], 1


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping ranges joined (one value found by two rules is masked and counted once)."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _add_stripped(data: bytes, start: int, end: int, out: list[Span]) -> None:
    value = data[start:end].rstrip(b" \t")
    if value:
        out.append((start, start + len(value)))


def _line_end(data: bytes, pos: int) -> int:
    """Where the line that ``pos`` is in ends (at its CR LF or LF; the end of ``data`` if cut)."""
    nl = data.find(b"\n", pos)
    if nl < 0:
        return len(data)
    return nl - 1 if nl > pos and data[nl - 1] == 0x0D else nl


def _auth(data: bytes, start: int, end: int, out: list[Span]) -> None:
    """``AUTH``/``AUTHENTICATE`` with the arguments at ``start:end``: a SASL mechanism's response
    (on this line and the lines after it), else a Redis password (the last argument)."""
    args = list(_TOKEN.finditer(data, start, end))
    if not args:
        return
    mech = args[0].group().lower()
    if mech in SASL_MECHANISMS or mech.startswith(SASL_PREFIXES):
        lines = SASL_LINES.get(mech, SASL_LINES_OTHER)
        if len(args) > 1:  # an initial response
            out.append((args[1].start(), args[-1].end()))
            lines -= 1
        pos = data.find(b"\n", end)
        while lines > 0 and pos >= 0 and pos + 1 < len(data):
            pos += 1
            e = _line_end(data, pos)
            if _BASE64_LINE.fullmatch(data, pos, e) is None:
                break
            out.append((pos, e))
            lines -= 1
            pos = data.find(b"\n", e)
        return
    out.append(args[-1].span())


def _astring(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """An IMAP astring at ``pos``: (content start, content end, position after it), or None when
    there is none (end of line, or a literal whose bytes have not come)."""
    n = len(data)
    if pos >= n or data[pos] in b"\r\n":
        return None
    c = data[pos]
    if c == 0x22:  # a quoted string
        j = pos + 1
        while j < n:
            b = data[j]
            if b == 0x5C:
                j += 2
                continue
            if b == 0x22 or b in b"\r\n":
                break
            j += 1
        j = min(j, n)
        return pos + 1, j, j + 1
    if c == 0x7B:  # a literal: {n} CRLF then n bytes
        m = _LITERAL.match(data, pos)
        if m is None:
            return None
        s = m.end()
        size = int(m.group(1))
        return s, min(s + size, n), s + size
    e = pos
    while e < n and data[e] not in b" \r\n":
        e += 1
    return pos, e, e


def _login(data: bytes, pos: int, out: list[Span]) -> None:
    """IMAP ``LOGIN <user> <password>`` with the user at ``pos``: the password."""
    user = _astring(data, pos)
    if user is None:
        return
    pos = user[2]
    while pos < len(data) and data[pos] == 0x20:
        pos += 1
    password = _astring(data, pos)
    if password is not None and password[1] > password[0]:
        out.append((password[0], password[1]))


def _resp(data: bytes, pos: int, count: int, out: list[Span]) -> None:
    """A RESP array of ``count`` bulk strings from ``pos``: the password of AUTH (the last
    argument: ``AUTH [user] password``) or of HELLO's AUTH option."""
    elems: list[Span] = []
    n = len(data)
    for _ in range(count):
        m = _BULK.match(data, pos)
        if m is None:
            break
        s = m.end()
        e = s + int(m.group(1))
        elems.append((s, min(e, n)))
        if e >= n:
            break
        pos = e + 2
    if not elems:
        return
    command = data[elems[0][0] : elems[0][1]].lower()
    target = -1
    if command == b"auth" and count >= 2:
        target = count - 1
    elif command == b"hello":
        for k, (s, e) in enumerate(elems):
            if data[s:e].lower() == b"auth":
                target = k + 2
                break
    if 0 <= target < len(elems) and elems[target][1] > elems[target][0]:
        out.append(elems[target])
