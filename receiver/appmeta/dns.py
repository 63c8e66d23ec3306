"""DNS (and mDNS, LLMNR, NetBIOS name service) messages, parsed leniently.

The header, the questions and as many answer records as are intact are read directly:
dpkt's ``dns.DNS`` raises on a message cut short and then yields nothing, while a mirrored
packet truncated inside the answers still has a useful query name and rcode.
Names are lowercased (DNS names are case-insensitive; Zeek logs them lowercased too).
NetBIOS names (port 137) are decoded from their first-level encoding, as Zeek logs them.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from socket import inet_ntoa
from typing import Any

QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    32: "NIMLOC", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC",
    48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "*",
    257: "CAA",
}  # fmt: skip
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}  # fmt: skip
MAX_ANSWERS = 32
_RCODE_NAMES = tuple(RCODES.get(c) or str(c) for c in range(16))


class _Cut(Exception):
    """The message ends here."""


def qtype_name(t: int) -> str:
    return QTYPES.get(t) or str(t)


def _name(msg: bytes, pos: int, depth: int = 0) -> tuple[str, int]:
    """A (possibly compressed) domain name at ``pos``; returns (name, position after it)."""
    name, end, _ = _resolve(msg, pos, depth, {})
    return name, end


def _resolve(msg: bytes, pos: int, depth: int, memo: dict[int, tuple[str, int]]) -> tuple[str, int, int]:
    """``_name`` plus the number of compression pointers followed. ``memo`` keeps, per position of
    one message, the name there and its pointer count, so answers that point at the question (the
    usual case) do not decode it again; the depth limit is applied as if they did."""
    start = pos
    labels: list[bytes] = []
    rest = ""
    end = -1
    hops = 0
    n = len(msg)
    for _ in range(128):
        if pos >= n:
            raise _Cut
        ln = msg[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise _Cut
            ptr = ((ln & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            if ptr >= pos or depth > 16:
                raise _Cut
            hit = memo.get(ptr)
            if hit is None:
                rest, _, sub = _resolve(msg, ptr, depth + 1, memo)
            else:
                rest, sub = hit
                if depth + sub > 16:  # following its pointers from here would pass the limit
                    raise _Cut
            hops = 1 + sub
            pos = -1
            break
        if ln & 0xC0:
            raise _Cut
        if pos + 1 + ln > n:
            raise _Cut
        labels.append(msg[pos + 1 : pos + 1 + ln])
        pos += 1 + ln
    # one decode for all labels: the same text as label by label (ASCII, "." is a byte of its own)
    name = b".".join(labels).decode("ascii", "backslashreplace").lower() if labels else ""
    if rest:
        name = f"{name}.{rest}" if labels else rest
    memo[start] = (name, hops)  # the same from wherever (and however deep) it is reached
    return name, (end if end >= 0 else pos), hops


def netbios_name(encoded: str) -> str:
    """Decode a NetBIOS first-level encoded name (32 letters A-P) as Zeek does; else unchanged."""
    label = encoded.split(".", 1)[0].upper()
    if len(label) != 32 or not all("A" <= c <= "P" for c in label):
        return encoded
    raw = bytes(((ord(label[i]) - 65) << 4) | (ord(label[i + 1]) - 65) for i in range(0, 32, 2))
    return raw[:15].decode("ascii", "backslashreplace").rstrip(" \x00")


@functools.lru_cache(maxsize=1024)
def _ipv6_text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))  # cached: answers repeat, and this costs microseconds


def _rdata(msg: bytes, rtype: int, pos: int, rdlen: int, memo: dict[int, tuple[str, int]] | None = None) -> str:
    memo = {} if memo is None else memo
    rd = msg[pos : pos + rdlen]
    if rtype == 1 and rdlen == 4:
        return f"{rd[0]}.{rd[1]}.{rd[2]}.{rd[3]}"  # as str(ipaddress.IPv4Address(rd))
    if rtype == 28 and rdlen == 16:
        return _ipv6_text(rd)
    if rtype in (2, 5, 12, 39):
        return _resolve(msg, pos, 0, memo)[0]
    if rtype == 15 and rdlen > 2:
        return _resolve(msg, pos + 2, 0, memo)[0]
    if rtype == 33 and rdlen > 6:
        return _resolve(msg, pos + 6, 0, memo)[0]
    if rtype == 16:
        out, i = [], 0
        while i < len(rd):
            ln = rd[i]
            out.append(rd[i + 1 : i + 1 + ln].decode("utf-8", "backslashreplace"))
            i += 1 + ln
        return " ".join(out)
    return qtype_name(rtype)


# (id, qr, opcode, query, qtype, rcode, answers, ttls): what ``parse`` returns, as a tuple
Message = tuple[int, bool, int, str | None, str | None, str | None, list[str], list[int]]
_HEADER = struct.Struct("!HHHH")  # id, flags, questions, answers
_RR = struct.Struct("!HHIH")  # type, class, TTL, data length
# Question names without compression pointers, by their wire bytes (the terminating 0 included),
# as _resolve decodes them: the same names come again and again (a response repeats its query's).
# Bounded (cleared when full): the payloads are the network's.
_PLAIN_NAMES: dict[bytes, str] = {}
PLAIN_NAMES_MAX = 8192


def parse(payload: bytes, tcp: bool = False, netbios: bool = False) -> dict[str, Any] | None:
    """``{id, qr, opcode, query, qtype, rcode, answers, ttls}`` or None if it is not DNS.

    ``tcp``: the message carries the 2-byte length prefix of DNS over TCP.
    ``netbios``: decode NetBIOS names (NBNS on port 137).
    """
    m = parse_message(payload, tcp, netbios)
    if m is None:
        return None
    tid, qr, opcode, query, qtype, rcode, answers, ttls = m
    return {"id": tid, "qr": qr, "opcode": opcode, "query": query, "qtype": qtype, "rcode": rcode,
            "answers": answers, "ttls": ttls}  # fmt: skip


def parse_message(payload: bytes, tcp: bool = False, netbios: bool = False) -> Message | None:
    """What :func:`parse` says, as a tuple (no dict: the per-flow state takes the fields it needs)."""
    if tcp:
        if len(payload) < 2:
            return None
        payload = payload[2 : 2 + ((payload[0] << 8) | payload[1])]
    n = len(payload)
    if n < 12:
        return None
    tid, flags, qd, an = _HEADER.unpack_from(payload)
    if qd > 64 or an > 512:
        return None
    qr = flags >= 0x8000
    if qd == 1 and an <= 1:  # the usual message: one question (a name read before), and maybe its answer
        z = payload.find(0, 12)
        name = _PLAIN_NAMES.get(payload[12 : z + 1]) if z >= 12 and z + 5 <= n else None
        if name is not None:
            # (what the loops below make of it; anything else is left to them)
            qt = (payload[z + 1] << 8) | payload[z + 2]
            pos = z + 5
            rcode = _RCODE_NAMES[flags & 0xF] if qr else None
            if netbios and name:
                name = netbios_name(name)
            if not an:
                return tid, qr, (flags >> 11) & 0xF, name, QTYPES.get(qt) or str(qt), rcode, [], []
            if pos + 12 <= n and payload[pos] == 0xC0 and payload[pos + 1] == 12:  # named as the question
                rtype, _cls, ttl, rdlen = _RR.unpack_from(payload, pos + 2)
                pos += 12
                if rtype == 1 and rdlen == 4 and pos + 4 <= n:
                    return (tid, qr, (flags >> 11) & 0xF, name, QTYPES.get(qt) or str(qt), rcode,
                            [inet_ntoa(payload[pos : pos + 4])], [ttl])  # fmt: skip
                if rtype == 28 and rdlen == 16 and pos + 16 <= n:
                    return (tid, qr, (flags >> 11) & 0xF, name, QTYPES.get(qt) or str(qt), rcode,
                            [_ipv6_text(payload[pos : pos + 16])], [ttl])  # fmt: skip
    query: str | None = None
    qtype: str | None = None
    answers: list[str] = []
    ttls: list[int] = []
    pos = 12
    memo: dict[int, tuple[str, int]] = {}
    try:
        for i in range(qd):
            z = payload.find(0, pos)  # where a name without pointers ends
            name = _PLAIN_NAMES.get(payload[pos : z + 1]) if z >= 0 else None
            if name is not None:
                memo[pos] = (name, 0)  # (as _resolve leaves it)
                pos = z + 1
            else:
                start = pos
                name, pos, hops = _resolve(payload, pos, 0, memo)
                if hops == 0 and pos == z + 1:  # (the name is the bytes up to that 0, whatever surrounds them)
                    if len(_PLAIN_NAMES) >= PLAIN_NAMES_MAX:
                        _PLAIN_NAMES.clear()
                    _PLAIN_NAMES[payload[start:pos]] = name
            if pos + 4 > n:
                raise _Cut
            if i == 0:
                query = name
                qt = (payload[pos] << 8) | payload[pos + 1]
                qtype = QTYPES.get(qt) or str(qt)
            pos += 4
        for _ in range(min(an, MAX_ANSWERS)):
            # the usual answer name: a pointer to a name read already (the question's)
            if pos + 1 < n and payload[pos] >= 0xC0:
                ptr = ((payload[pos] & 0x3F) << 8) | payload[pos + 1]
                hit = memo.get(ptr)
                if hit is not None and ptr < pos and hit[1] <= 16:
                    name = hit[0]
                    memo[pos] = (name, 1 + hit[1])  # (as _resolve leaves it)
                    pos += 2
                else:
                    name, pos, _ = _resolve(payload, pos, 0, memo)
            else:
                name, pos, _ = _resolve(payload, pos, 0, memo)
            if pos + 10 > n:
                raise _Cut
            rtype, _cls, ttl, rdlen = _RR.unpack_from(payload, pos)
            pos += 10
            if pos + rdlen > n:
                raise _Cut
            if query is None:  # mDNS answers without a question section
                query = name
            if rtype != 41:
                if rtype == 1 and rdlen == 4:
                    answers.append(inet_ntoa(payload[pos : pos + 4]))  # (as str(ipaddress.IPv4Address))
                else:
                    answers.append(_rdata(payload, rtype, pos, rdlen, memo))
                ttls.append(ttl)
            pos += rdlen
    except (_Cut, struct.error, ValueError):
        if query is None and qd and not qr and not an:
            return None
    if netbios and query:
        query = netbios_name(query)
    return tid, qr, (flags >> 11) & 0xF, query, qtype, _RCODE_NAMES[flags & 0xF] if qr else None, answers, ttls
