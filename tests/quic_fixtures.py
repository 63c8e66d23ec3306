"""Real QUIC traffic for the tests: an aioquic client talks to an aioquic server on loopback
through a UDP relay that records every datagram; and client Initial packets protected with
aioquic's packet protection around frames a test chooses (split, reordered, coalesced)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path

from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicProtocolVersion
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

V1, V2 = int(QuicProtocolVersion.VERSION_1), int(QuicProtocolVersion.VERSION_2)
Datagram = tuple[int, bytes]  # (0: client to server, 1: server to client; the UDP payload)


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and its key (PEM files in ``directory``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Relay(asyncio.DatagramProtocol):
    """Forwards datagrams between the client (whoever is not the server) and the server, recording them."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.datagrams: list[Datagram] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (a selector transport: not a registered subclass)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if tuple(addr[:2]) == self.server:
            self.datagrams.append((1, data))
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = (addr[0], addr[1])
            self.datagrams.append((0, data))
            self.transport.sendto(data, self.server)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _handshake(cert: Path, key: Path, sni: str, alpn: list[str], client_versions: list[int],
                     server_versions: list[int], first: int | None, quantum: bool) -> list[Datagram]:
    loop = asyncio.get_running_loop()
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=alpn, supported_versions=server_versions)
    server_cfg.load_cert_chain(cert, key)
    server_addr = ("127.0.0.1", _free_udp_port())
    server = await serve(*server_addr, configuration=server_cfg)
    transport, relay = await loop.create_datagram_endpoint(lambda: _Relay(server_addr),
                                                           local_addr=("127.0.0.1", 0))
    try:
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=sni,
                                       verify_mode=ssl.CERT_NONE, supported_versions=client_versions,
                                       original_version=first, quantum_readiness_test=quantum)
        async with connect("127.0.0.1", transport.get_extra_info("sockname")[1], configuration=client_cfg) as c:
            await asyncio.wait_for(c.ping(), 5)
        await asyncio.sleep(0.05)  # (the close reaches the server)
    finally:
        transport.close()
        server.close()
    return relay.datagrams


def handshake(directory: Path, sni: str = "www.example.test", alpn: tuple[str, ...] = ("h3",),
              client_versions: tuple[int, ...] = (V1,), server_versions: tuple[int, ...] = (V1, V2),
              first: int | None = None, quantum: bool = False) -> list[Datagram]:
    """The datagrams of one aioquic connection on loopback: handshake, a PING, close. The client's
    first Initial is in version ``first`` (default: ``client_versions[0]``); ``quantum``: aioquic's
    1,200-byte transport parameter makes the ClientHello span two Initial packets."""
    cert, key = self_signed(directory, sni)
    return asyncio.run(asyncio.wait_for(
        _handshake(cert, key, sni, list(alpn), list(client_versions), list(server_versions), first, quantum), 20))


# -- client Initials around chosen frames ----------------------------------------------------


def varint(v: int) -> bytes:
    """A QUIC variable-length integer in the shortest form."""
    if v < 0x40:
        return bytes((v,))
    if v < 0x4000:
        return (0x4000 | v).to_bytes(2, "big")
    if v < 0x40000000:
        return (0x80000000 | v).to_bytes(4, "big")
    return (0xC000000000000000 | v).to_bytes(8, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def client_initial(frames: bytes, dcid: bytes, version: int = V1, pn: int = 0, scid: bytes = b"\x01\x02\x03\x04",
                   pad_to: int = 0) -> bytes:
    """A client Initial packet around ``frames`` (PADDING added up to ``pad_to`` bytes of packet),
    protected by aioquic with the keys of ``dcid``."""
    kind = 0x00 if version == V1 else 0x10
    pn_len = 2
    head = bytes((0xC0 | kind | (pn_len - 1),)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    head += bytes((len(scid),)) + scid + varint(0)  # (no token)
    overhead = len(head) + 2 + pn_len + 16  # (a 2-byte Length)
    frames += bytes(max(0, pad_to - overhead - len(frames), 20 - pn_len - len(frames)))
    length = pn_len + len(frames) + 16
    header = head + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(pn_len, "big")
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=version)
    return pair.encrypt_packet(header, frames, pn)
