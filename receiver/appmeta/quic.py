"""QUIC: the version, server name and ALPN of a connection, read from the client's Initial packets.

A client's Initial packets are encrypted with keys that anyone can derive from the Destination
Connection ID they carry (RFC 9001 section 5.2; QUIC version 2, RFC 9369, differs in its salt, its
HKDF labels and its long-header type bits), so their CRYPTO frames, which hold the TLS ClientHello,
can be read. For each Initial: remove the header protection (AES-128 of a sample of the
ciphertext), decrypt it (AES-128-GCM), walk its frames and keep the CRYPTO data by offset (across
packets and out of order; a datagram may hold several coalesced packets). Once the data from
offset 0 on holds the whole ClientHello, the TLS code reads it (``tls.handshake_hello``). The
server's packets are read only as far as their long header: the version the server uses, or the
versions that a Version Negotiation packet lists.

The work per flow is bounded: at most MAX_DECRYPTS packets are decrypted and at most MAX_CRYPTO
bytes of CRYPTO data are kept. The first datagram that fails (cut short, under 1,200 bytes,
or with a bad tag, as a forged Initial has) ends the parsing of its flow. ``QuicFlow.feed``
returns failures as counter names and never raises.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

from . import tls

V1, V2 = 0x00000001, 0x6B3343CF
NAMES = {V1: "QUICv1", V2: "QUICv2"}
# per version: the Initial salt (RFC 9001 section 5.2, RFC 9369 section 3.3.1), the prefix of its
# packet protection labels (RFC 9369 section 3.3.2), the type bits (0x30) of its Initial and
# Retry long headers (RFC 9369 section 3.2)
SALT = {
    V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
_LABEL = {V1: b"quic ", V2: b"quicv2 "}
INITIAL_TYPE = {V1: 0x00, V2: 0x10}
_RETRY = {V1: 0x30, V2: 0x00}

MIN_DATAGRAM = 1200  # a client's datagram that holds an Initial is at least this long (RFC 9000 section 14.1)
MAX_CID = 20  # bytes of a connection ID in versions 1 and 2
MAX_DECRYPTS = 4  # client Initial packets decrypted per flow
MAX_CRYPTO = 16384  # bytes of CRYPTO data kept per flow (a ClientHello with a post-quantum key share: ~1.8 KB)
MAX_VN_VERSIONS = 16  # versions read from a Version Negotiation packet

# counters (engine counters, see Engine.counters): what ended the parsing of a flow's datagrams
SHORT = "app_quic_short_datagram"  # a client datagram with an Initial under MIN_DATAGRAM bytes
MALFORMED = "app_quic_malformed"  # a long header cut short or impossible (connection ID length, Length)
DECRYPT_FAILED = "app_quic_decrypt_failed"  # the AEAD tag did not match: not a real Initial (or corrupted)
BAD_FRAME = "app_quic_bad_frame"  # a frame not allowed in an Initial, or cut short: the packet's rest is skipped
COUNTERS = (SHORT, MALFORMED, DECRYPT_FAILED, BAD_FRAME)

_VARINT_MASK = (0x3F, 0x3FFF, 0x3FFFFFFF, 0x3FFFFFFFFFFFFFFF)  # by the two top bits of the first byte
_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO, _CLOSE = 0x00, 0x01, 0x02, 0x03, 0x06, 0x1C


def version_name(v: int) -> str:
    """``QUICv1``, ``QUICv2``, ``draft-29`` (0xff00001d), else the version in hex."""
    name = NAMES.get(v)
    if name is not None:
        return name
    if v >> 8 == 0xFF0000:
        return f"draft-{v & 0xFF}"
    return f"0x{v:08x}"


def is_initial(p: bytes) -> bool:
    """Whether a UDP payload starts with a QUIC v1 or v2 Initial packet (long header with the
    fixed bit, a known version, that version's Initial type): what makes a flow worth a parser."""
    if len(p) < 7 or p[0] & 0xC0 != 0xC0:
        return False
    t = INITIAL_TYPE.get(int.from_bytes(p[1:5], "big"))
    return t is not None and p[0] & 0x30 == t


def _varint(b: bytes, p: int) -> tuple[int, int]:
    """A variable-length integer (RFC 9000 section 16) at ``p``, and the position after it;
    IndexError past the end of ``b``."""
    first = b[p]
    k = first >> 6
    if not k:
        return first, p + 1
    end = p + (1 << k)
    if end > len(b):
        raise IndexError
    return int.from_bytes(b[p:end], "big") & _VARINT_MASK[k], end


# -- keys ------------------------------------------------------------------------------------


@functools.cache
def _primitives() -> Any:
    """The ``cryptography`` modules, imported on first use (tens of milliseconds of start-up
    that only a QUIC flow needs), and one SHA-256 instance for every HMAC."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return InvalidTag, hashes.SHA256(), hmac.HMAC, Cipher, algorithms, modes, AESGCM


def _label(label: bytes, length: int) -> bytes:
    """The info of TLS 1.3's HKDF-Expand-Label with an empty context (RFC 8446 section 7.1), and
    the counter byte of HKDF-Expand's first block (RFC 5869 section 2.3): every output here is
    one SHA-256 block or less, so HKDF-Expand is one HMAC."""
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00\x01"


_CLIENT_IN = _label(b"client in", 32)
# per version: the labels of the key, IV and header protection key, and their lengths
_KEY_LABELS = {v: tuple((_label(prefix + name, n), n) for name, n in ((b"key", 16), (b"iv", 12), (b"hp", 16)))
               for v, prefix in _LABEL.items()}  # fmt: skip


def client_key_material(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """The key, IV and header protection key of the client's Initial packets for a Destination
    Connection ID (RFC 9001 section 5.2, RFC 9369 section 3.3)."""
    _, sha256, hmac = _primitives()[:3]
    h = hmac(SALT[version], sha256)  # initial_secret = HKDF-Extract(initial_salt, dcid)
    h.update(dcid)
    h = hmac(h.finalize(), sha256)  # client_initial_secret = HKDF-Expand-Label(., "client in", "", 32)
    h.update(_CLIENT_IN)
    keyed = hmac(h.finalize(), sha256)  # (keyed once, copied for each label)
    out = []
    for info, n in _KEY_LABELS[version]:
        h = keyed.copy()
        h.update(info)
        out.append(h.finalize()[:n])
    return out[0], out[1], out[2]


@functools.lru_cache(maxsize=256)
def _client_keys(version: int, dcid: bytes) -> tuple[Any, int, Any]:
    """The AEAD, IV (as an integer) and header protection cipher (AES-128-ECB: a mask is one block
    of it, so one encryptor serves every packet) of a connection's client Initials."""
    _, _, _, cipher, algorithms, modes, aesgcm = _primitives()
    key, iv, hp = client_key_material(version, dcid)
    return aesgcm(key), int.from_bytes(iv, "big"), cipher(algorithms.AES(hp), modes.ECB()).encryptor()


def open_initial(d: bytes, start: int, pn_at: int, end: int, version: int, dcid: bytes) -> bytes | None:
    """The frames of the client Initial packet ``d[start:end]`` whose packet number starts at
    ``pn_at`` (at least 20 bytes before ``end``: a sample needs them), or None if its tag does
    not match (RFC 9001 sections 5.3, 5.4)."""
    aead, iv, hp = _client_keys(version, dcid)
    mask = hp.update(d[pn_at + 4 : pn_at + 20])
    first = d[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn = int.from_bytes(d[pn_at : pn_at + pn_len], "big") ^ int.from_bytes(mask[1 : 1 + pn_len], "big")
    header = bytes((first,)) + d[start + 1 : pn_at] + pn.to_bytes(pn_len, "big")
    try:  # (the packet number as sent is the full one: a client's first Initials are numbered from 0)
        return bytes(aead.decrypt((iv ^ pn).to_bytes(12, "big"), d[pn_at + pn_len : end], header))
    except _primitives()[0]:  # InvalidTag
        return None


# -- one flow --------------------------------------------------------------------------------


class QuicFlow:
    """What a QUIC flow's first datagrams say. The client is the side whose datagram made the
    parser (an Initial passed ``is_initial``), whatever the flow table calls the originator."""

    __slots__ = ("_client_done", "_crypto", "_decrypts", "_have", "_server_done", "alpn", "client", "dcid",
                 "gave_up", "scid", "server_scid", "server_version", "server_versions", "sni", "version")  # fmt: skip

    def __init__(self, client: int) -> None:
        self.client = client  # its direction
        self.version: int | None = None  # of the first client Initial decrypted (None: none yet)
        self.dcid = self.scid = b""  # its connection IDs
        self.sni: str | None = None
        self.alpn: list[str] | None = None
        self.server_version: str | None = None
        self.server_scid: bytes | None = None
        self.server_versions: list[str] | None = None  # those of a Version Negotiation packet
        self.gave_up = False
        self._crypto: dict[int, bytes] | None = None  # CRYPTO data by offset, until the hello is read
        self._have = 0  # bytes of CRYPTO data in order from offset 0 when last read
        self._decrypts = 0
        self._client_done = self._server_done = False

    @property
    def wants_more(self) -> bool:
        return not (self.gave_up or (self._client_done and self._server_done))

    def feed(self, direction: int, d: bytes) -> str | None:
        """Take one datagram's payload; returns the counter of a failure (the flow's parsing ends),
        or of a bad frame, else None."""
        if self.gave_up:
            return None
        if direction != self.client:
            return None if self._server_done else self._server(d)
        if self._client_done:
            return None
        try:
            bad = self._client(d)
        except IndexError:
            bad = MALFORMED
        if bad is not None and bad != BAD_FRAME:
            self.gave_up = True
        if self._crypto is not None:
            self._read_hello()
        return bad

    def _client(self, d: bytes) -> str | None:
        """Decrypt the Initial packets of a client datagram and keep their CRYPTO data."""
        n = len(d)
        pos = 0
        bad = None
        while pos < n:
            start = pos
            first = d[start]
            if not first & 0x80:  # a short header (1-RTT) packet, or padding after the packets: the end
                break
            if start + 7 > n:
                return MALFORMED
            version = int.from_bytes(d[start + 1 : start + 5], "big")
            initial = INITIAL_TYPE.get(version)
            if initial is None:  # (another version: nothing to decrypt)
                break
            p = start + 6 + d[start + 5]  # after the destination connection ID
            if d[start + 5] > MAX_CID or p >= n or d[p] > MAX_CID:
                return MALFORMED
            dcid = d[start + 6 : p]
            scid = d[p + 1 : p + 1 + d[p]]
            p += 1 + d[p]
            kind = first & 0x30
            if kind == _RETRY[version]:  # (a server's: it has no Length)
                break
            if kind == initial:
                token_len, p = _varint(d, p)
                p += token_len
            length, p = _varint(d, p)
            end = p + length
            if end > n:
                return MALFORMED
            pos = end
            if kind != initial:  # 0-RTT or Handshake: skipped
                continue
            if n < MIN_DATAGRAM:
                return SHORT
            if length < 20:  # (a packet number and a sample)
                return MALFORMED
            if self._decrypts >= MAX_DECRYPTS:
                self._client_done = True
                break
            self._decrypts += 1
            frames = open_initial(d, start, p, end, version, dcid)
            if frames is None:
                return DECRYPT_FAILED
            if self.version is None:
                self.version, self.dcid, self.scid = version, dcid, scid
            bad = self._frames(frames) or bad
        return bad

    def _frames(self, b: bytes) -> str | None:
        """Walk a decrypted Initial's frames (RFC 9000 section 12.4: only these may be in one)."""
        n = len(b)
        p = 0
        try:
            while p < n:
                t = b[p]
                if t == _PADDING:
                    if p + 1 < n and not b[p + 1]:  # a run of them (to the end, as a rule): skipped at C speed
                        p = n - len(b[p:].lstrip(b"\x00"))
                    else:
                        p += 1
                    continue
                p += 1
                if t == _CRYPTO:
                    offset, p = _varint(b, p)
                    length, p = _varint(b, p)
                    if p + length > n:
                        return BAD_FRAME
                    self._keep(offset, b[p : p + length])
                    p += length
                elif t in (_ACK, _ACK_ECN):
                    _largest, p = _varint(b, p)
                    _delay, p = _varint(b, p)
                    ranges, p = _varint(b, p)
                    _first, p = _varint(b, p)
                    if 2 * ranges > n - p:  # (a gap and a length per range, a byte each at least)
                        return BAD_FRAME
                    for _ in range(2 * ranges + (3 if t == _ACK_ECN else 0)):  # (and three ECN counts)
                        _, p = _varint(b, p)
                elif t == _CLOSE:
                    _code, p = _varint(b, p)
                    _frame, p = _varint(b, p)
                    reason, p = _varint(b, p)
                    p += reason
                    if p > n:
                        return BAD_FRAME
                elif t != _PING:
                    return BAD_FRAME
        except IndexError:
            return BAD_FRAME
        return None

    def _keep(self, offset: int, data: bytes) -> None:
        if offset >= MAX_CRYPTO or not data:
            return
        if offset + len(data) > MAX_CRYPTO:
            data = data[: MAX_CRYPTO - offset]
        c = self._crypto
        if c is None:
            self._crypto = {offset: data}
        elif len(data) > len(c.get(offset, b"")):
            c[offset] = data

    def _in_order(self) -> bytes:
        """The CRYPTO data from offset 0 up to the first gap."""
        c = self._crypto
        if not c or 0 not in c:
            return b""
        if len(c) == 1:
            return c[0]
        parts = []
        end = 0
        for offset in sorted(c):
            if offset > end:
                break
            data = c[offset]
            if offset + len(data) > end:
                parts.append(data[end - offset :])
                end = offset + len(data)
        return b"".join(parts)

    def _read_hello(self) -> None:
        """Read the ClientHello as far as the CRYPTO data in order goes, if it grew; once whole,
        the client side is done."""
        data = self._in_order()
        if len(data) <= self._have:
            return
        self._have = len(data)
        if len(data) < 4:
            return
        h = tls.handshake_hello(data) if data[0] == 1 else None
        if h is None:  # not a ClientHello: nothing to learn
            self._client_done = True
            self._crypto = None
            return
        self.sni, self.alpn = h[2], h[3]
        if h[6] or len(data) >= 4 + int.from_bytes(data[1:4], "big") or len(data) >= MAX_CRYPTO:
            self._client_done = True
            self._crypto = None

    def _server(self, d: bytes) -> str | None:
        """A server datagram: the version of its long header, or a Version Negotiation's list."""
        n = len(d)
        if not n or not d[0] & 0x80:  # a short header: no version in it
            self._server_done = True
            return None
        if n < 7:
            self._server_done = True
            return MALFORMED
        version = int.from_bytes(d[1:5], "big")
        p = 6 + d[5]
        if p >= n or p + 1 + d[p] > n:
            self._server_done = True
            return MALFORMED
        scid = d[p + 1 : p + 1 + d[p]]
        p += 1 + d[p]
        if version == 0:  # Version Negotiation (RFC 9000 section 17.2.1): what the server supports
            count = min((n - p) // 4, MAX_VN_VERSIONS)
            self.server_versions = [version_name(v) for v in struct.unpack_from(f"!{count}I", d, p)]
            return None  # (the client may try again with one of them: the server's next packet says)
        self.server_version = version_name(version)
        self.server_scid = scid
        self._server_done = True
        return None

    def result(self) -> dict[str, Any] | None:
        """The ``app.quic`` object, or None if no client Initial was decrypted."""
        if self.version is None:
            return None
        out: dict[str, Any] = {
            "version": NAMES[self.version], "sni": self.sni, "alpn": list(self.alpn or ()),
            "server_version": self.server_version, "client_initial_dcid": self.dcid.hex(),
            "client_scid": self.scid.hex(), "server_scid": None if self.server_scid is None else self.server_scid.hex(),
        }  # fmt: skip
        if self.server_versions is not None:
            out["server_versions"] = list(self.server_versions)
        return out
