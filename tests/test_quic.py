"""QUIC: the client Initial packets decrypted and their ClientHello read (``app.quic``).

Expected values come from independent sources: the sample packets of RFC 9001 Appendix A and
RFC 9369 Appendix A (keys and protected bytes as the RFCs print them), real connections between
an aioquic client and an aioquic server on loopback (their datagrams recorded by a relay, the
connection IDs read back with aioquic's own header parser), and Initials protected by aioquic's
packet protection around frames split, reordered and coalesced here.
"""

from __future__ import annotations

import functools
import itertools
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import engine as engine_module
from receiver.appmeta import quic
from receiver.appmeta.state import AppState, worth_parsing
from receiver.capture.read import read_records
from receiver.config.engine import EngineConfig
from receiver.engine import Engine, prepare
from receiver.packets import PacketBatch
from tests import packet_factory as pf
from tests import quic_fixtures as qf
from tests.capture_fixtures import Rec, pcap_bytes
from tests.quic_samples import (
    RFC9001_CLIENT_INITIAL,
    RFC9001_SERVER_INITIAL,
    RFC9369_CLIENT_INITIAL,
    RFC9369_SERVER_INITIAL,
    RFC_CRYPTO_FRAME,
    RFC_HELLO,
)
from tests.test_schema import validator

C, S = "10.1.0.1", "10.1.0.2"
DCID = bytes.fromhex("8394c8f03e515708")

RFC_RESULT = {"sni": "example.com", "alpn": ["alpn"], "client_initial_dcid": "8394c8f03e515708",
              "client_scid": "", "server_scid": "f067a5502a4262b5"}  # fmt: skip


def _flow(datagrams: list[tuple[int, bytes]]) -> tuple[quic.QuicFlow, list[str]]:
    flow = quic.QuicFlow(datagrams[0][0])
    bad = [b for d, p in datagrams if (b := flow.feed(d, p)) is not None]
    return flow, bad


def _frames(datagrams: list[tuple[int, bytes]], cport: int = 50000, sport: int = 443, vni: int = 7,
            client: str = C, server: str = S) -> list[bytes]:
    """The datagrams as VXLAN frames (direction 0: client to server)."""
    return [pf.vxlan(pf.udp(client, server, cport, sport, p) if d == 0 else pf.udp(server, client, sport, cport, p),
                     vni=vni) for d, p in datagrams]  # fmt: skip


def _records(frames: list[bytes], native_hints: bool = False, batch: int = 1000,
             ts: list[float] | None = None) -> tuple[list[dict[str, Any]], Engine]:
    """Records of the frames read by an engine (a millisecond apart unless ``ts``);
    ``native_hints``: the packets screened as the read-ahead thread does (in C), else by the
    engine itself (numpy)."""
    cfg = EngineConfig()
    e = Engine(cfg)
    ts = ts or [1000.0 + 0.001 * k for k in range(len(frames))]
    recs: list[dict[str, Any]] = []
    for i in range(0, len(frames), batch):
        b = PacketBatch.from_frames(frames[i : i + batch], ts[i : i + batch])
        recs += e.process(b, prepare(b, cfg) if native_hints else None).records
    recs += e.finish("end_of_input")
    return [dict(r) for r in recs], e


def _quic_counters(e: Engine) -> dict[str, int]:
    return {k: v for k, v in e.counters().items() if k.startswith("app_quic")}


# -- the RFC samples -------------------------------------------------------------------------


def test_rfc9001_sample_keys_and_client_initial() -> None:
    key, iv, hp = quic.client_key_material(quic.V1, DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2")
    # the packet number starts at byte 18 (RFC 9001 A.2: header[18..21]); Length 0x449e
    frames = quic.open_initial(RFC9001_CLIENT_INITIAL, 0, 18, 1200, quic.V1, DCID)
    assert frames == RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    flow, bad = _flow([(0, RFC9001_CLIENT_INITIAL), (1, RFC9001_SERVER_INITIAL)])
    assert not bad and not flow.wants_more
    assert flow.result() == {"version": "QUICv1", "server_version": "QUICv1", **RFC_RESULT}


def test_rfc9369_sample_keys_and_client_initial() -> None:
    key, iv, hp = quic.client_key_material(quic.V2, DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9")
    frames = quic.open_initial(RFC9369_CLIENT_INITIAL, 0, 18, 1200, quic.V2, DCID)
    assert frames == RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    flow, bad = _flow([(0, RFC9369_CLIENT_INITIAL), (1, RFC9369_SERVER_INITIAL)])
    assert not bad
    assert flow.result() == {"version": "QUICv2", "server_version": "QUICv2", **RFC_RESULT}


def test_version_1_keys_do_not_open_a_version_2_packet() -> None:
    """The versions differ in salt and labels: a v2 packet relabelled as v1 fails its tag."""
    relabelled = bytearray(RFC9369_CLIENT_INITIAL)
    relabelled[0] &= 0xCF  # (v1's Initial type bits)
    relabelled[1:5] = (1).to_bytes(4, "big")
    flow, bad = _flow([(0, bytes(relabelled))])
    assert bad == [quic.DECRYPT_FAILED] and flow.result() is None and not flow.wants_more


@pytest.mark.parametrize("native_hints", [False, True], ids=["numpy", "c"])
def test_rfc_samples_through_the_engine_on_any_port(native_hints: bool) -> None:
    frames = _frames([(0, RFC9001_CLIENT_INITIAL), (1, RFC9001_SERVER_INITIAL)], 50001, 443)
    frames += _frames([(0, RFC9369_CLIENT_INITIAL), (1, RFC9369_SERVER_INITIAL)], 50002, 7443)
    recs, e = _records(frames, native_hints)
    by_port = {r["src_port"]: r for r in recs}
    assert by_port[50001]["app"] == {"quic": {"version": "QUICv1", "server_version": "QUICv1", **RFC_RESULT}}
    assert by_port[50002]["app"] == {"quic": {"version": "QUICv2", "server_version": "QUICv2", **RFC_RESULT}}
    assert not _quic_counters(e)
    for r in recs:
        assert not list(validator().iter_errors(r))


# -- real connections (aioquic) --------------------------------------------------------------


def _cids(datagram: bytes) -> tuple[str, str]:
    """The connection IDs of a datagram's first packet, as aioquic reads them."""
    h = pull_quic_header(Buffer(data=datagram))
    return h.destination_cid.hex(), h.source_cid.hex()


CONNECTIONS = {  # name: handshake() arguments, expected version and server_version
    "v1": ({}, "QUICv1", "QUICv1"),
    "v2": ({"client_versions": (qf.V2,)}, "QUICv2", "QUICv2"),
    # compatible version negotiation (RFC 9368): a v1 Initial, the server answers in v2
    "v1_upgraded_to_v2": ({"client_versions": (qf.V2, qf.V1), "server_versions": (qf.V2, qf.V1), "first": qf.V1},
                          "QUICv1", "QUICv2"),
    # a server without v2: Version Negotiation, then the client's new Initial in v1
    "v2_negotiated_down": ({"client_versions": (qf.V2, qf.V1), "server_versions": (qf.V1,)}, "QUICv2", "QUICv1"),
    # a ClientHello over 1,200 bytes: its CRYPTO data spans two Initial packets
    "hello_in_two_initials": ({"quantum": True, "client_versions": (qf.V2,)}, "QUICv2", "QUICv2"),
}


@pytest.fixture(scope="module")
def connections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, bytes]]]:
    out = {}
    for i, (name, (kw, _, _)) in enumerate(CONNECTIONS.items()):
        out[name] = qf.handshake(tmp_path_factory.mktemp(f"quic{i}"), sni=f"{name.replace('_', '-')}.example.test",
                                 alpn=("h3", "h3-29"), **kw)
    return out


@pytest.mark.parametrize("native_hints", [False, True], ids=["numpy", "c"])
def test_aioquic_connections_give_app_quic(connections: dict[str, list[tuple[int, bytes]]], native_hints: bool) -> None:
    frames: list[bytes] = []
    expected = {}
    for i, (name, datagrams) in enumerate(connections.items()):
        port = 443 if i % 2 else 4433 + i  # (QUIC is recognised on any port)
        frames += _frames(datagrams, 51000 + i, port)
        _, version, server_version = CONNECTIONS[name]
        dcid, scid = _cids(datagrams[0][1])
        server_scid = _cids(next(p for d, p in datagrams if d == 1 and p[1:5] != bytes(4)))[1]
        expected[51000 + i] = {
            "version": version, "sni": f"{name.replace('_', '-')}.example.test", "alpn": ["h3", "h3-29"],
            "server_version": server_version, "client_initial_dcid": dcid, "client_scid": scid,
            "server_scid": server_scid,
        }  # fmt: skip
    expected[51003]["server_versions"] = ["QUICv1"]  # (the Version Negotiation packet's list)
    split = connections["hello_in_two_initials"]
    assert [d for d, _ in split[:3]] == [0, 0, 1]  # (two client Initials before the server's first packet)
    recs, e = _records(frames, native_hints, batch=7)
    got = {r["src_port"]: r["app"]["quic"] for r in recs if "app" in r}
    assert got == expected
    assert not _quic_counters(e)
    for r in recs:
        assert not list(validator().iter_errors(r))


def test_a_pcap_of_the_connections_read_as_tshark_reads_it(
    connections: dict[str, list[tuple[int, bytes]]], tmp_path: Path
) -> None:
    """The connections written to a pcap (VXLAN, as a mirror target captures them) and read by
    ``read_records``: the version, SNI and ALPN of each are those tshark's QUIC dissector finds."""
    recs = []
    for i, datagrams in enumerate(connections.values()):
        for k, frame in enumerate(_frames(datagrams, 58000 + i, 443)):
            recs.append(Rec(1_700_000_000 + i, 1000 * k, frame))
    path = tmp_path / "quic.pcap"
    path.write_bytes(pcap_bytes(recs))
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields", "-e", "udp.srcport",
         "-e", "quic.version", "-e", "tls.handshake.extensions_server_name", "-e", "tls.handshake.extensions_alpn_str"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()  # fmt: skip
    names = {"0x00000001": "QUICv1", "0x6b3343cf": "QUICv2"}
    seen: dict[int, tuple[str, str, list[str]]] = {}
    for line in out:  # (the first ClientHello of each connection; the inner source port is the second)
        ports, version, sni, alpn = line.split("\t")
        seen.setdefault(int(ports.split(",")[1]), (names[version.split(",")[0]], sni, alpn.split(",")))
    got = {r["src_port"]: r["app"]["quic"] for r in read_records([path]) if "app" in r}
    assert len(seen) == len(connections) == len(got)
    assert {port: (q["version"], q["sni"], q["alpn"]) for port, q in got.items()} == seen


def test_the_parser_is_dropped_once_both_sides_are_read(connections: dict[str, list[tuple[int, bytes]]]) -> None:
    e = Engine(EngineConfig())
    frames = _frames(connections["v1"])
    e.process(PacketBatch.from_frames(frames, [1000.0 + 0.001 * k for k in range(len(frames))]))
    (state,) = e.app.values()
    assert isinstance(state, dict) and state["quic"]["sni"] == "v1.example.test"  # (its result only)


# -- CRYPTO data split, reordered, coalesced ---------------------------------------------------


def _pieces(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    edges = [0, *cuts, len(data)]
    return [(a, data[a:b]) for a, b in itertools.pairwise(edges)]


def test_crypto_frames_out_of_order_across_packets() -> None:
    a, b, c, d = _pieces(RFC_HELLO, [30, 80, 160])
    first = qf.client_initial(qf.crypto_frame(*d) + b"\x00\x01\x00" + qf.crypto_frame(*b), DCID, pad_to=1200)
    second = qf.client_initial(b"\x01" + qf.crypto_frame(*c) + b"\x00" * 7 + qf.crypto_frame(*a), DCID, pn=1,
                               pad_to=1200)  # (a PING, PADDING between frames)
    flow, bad = _flow([(0, first)])
    assert not bad and flow.result() is not None and flow.result()["sni"] is None  # offset 0 not there yet
    flow.feed(0, second)
    assert flow.result()["sni"] == "example.com" and flow.result()["alpn"] == ["alpn"]


def test_coalesced_initials_and_a_skipped_0rtt_packet_in_one_datagram() -> None:
    a, b = _pieces(RFC_HELLO, [100])
    one = qf.client_initial(qf.crypto_frame(*b), DCID, version=qf.V2, pn=0)
    two = qf.client_initial(qf.crypto_frame(*a), DCID, version=qf.V2, pn=1)
    # a 0-RTT packet of version 2 (type bits 10): opaque here, skipped by its Length
    zero_rtt = bytes((0xE0 | 0x01,)) + qf.V2.to_bytes(4, "big") + b"\x08" + DCID + b"\x00" + b"\x40\x20" + bytes(32)
    datagram = one + zero_rtt + two
    datagram += bytes(1200 - len(datagram))  # (zeros after the packets: the datagram's padding)
    flow, bad = _flow([(0, datagram)])
    assert not bad and flow.result()["sni"] == "example.com" and flow.result()["version"] == "QUICv2"


def test_overlapping_retransmitted_crypto_and_ack_close_frames() -> None:
    ack = b"\x02" + qf.varint(3) + qf.varint(10) + qf.varint(1) + qf.varint(0) + qf.varint(1) + qf.varint(1)
    ack_ecn = b"\x03" + qf.varint(0) + qf.varint(0) + qf.varint(0) + qf.varint(0) + qf.varint(1) * 3
    close = b"\x1c" + qf.varint(0) + qf.varint(0) + qf.varint(3) + b"bye"
    first = qf.client_initial(ack + qf.crypto_frame(0, RFC_HELLO[:120]), DCID, pad_to=1200)
    again = qf.client_initial(ack_ecn + qf.crypto_frame(0, RFC_HELLO[:120]) + qf.crypto_frame(90, RFC_HELLO[90:])
                              + close, DCID, pn=1, pad_to=1200)  # fmt: skip
    flow, bad = _flow([(0, first), (0, again)])
    assert not bad and flow.result()["sni"] == "example.com"


def test_a_frame_not_allowed_in_an_initial_is_counted_and_what_came_before_kept() -> None:
    stream = b"\x08" + qf.varint(0) + b"GET /"  # a STREAM frame: never in an Initial
    pkt = qf.client_initial(qf.crypto_frame(0, RFC_HELLO) + stream, DCID, pad_to=1200)
    flow, bad = _flow([(0, pkt)])
    assert bad == [quic.BAD_FRAME] and flow.result()["sni"] == "example.com"


def test_at_most_four_initials_are_decrypted() -> None:
    """Six Initials, the one with offset 0 last: the flow's parser stops after the fourth."""
    pieces = _pieces(RFC_HELLO, [40, 80, 120, 160, 200])
    packets = [qf.client_initial(qf.crypto_frame(*p), DCID, pn=k, pad_to=1200)
               for k, p in enumerate(reversed(pieces))]  # fmt: skip
    flow, bad = _flow([(0, p) for p in packets])
    assert not bad and flow.result()["sni"] is None
    flow, _ = _flow([(0, p) for p in reversed(packets)])  # (in order: the hello is whole after the first six)
    assert flow.result()["sni"] == "example.com"


def test_the_initial_keys_follow_the_dcid_of_each_packet() -> None:
    """After a Retry the client's Initials carry the server's new connection ID: keys from it."""
    a, b = _pieces(RFC_HELLO, [100])
    flow, bad = _flow([(0, qf.client_initial(qf.crypto_frame(*a), DCID, pad_to=1200)),
                       (0, qf.client_initial(qf.crypto_frame(*b), b"\x99" * 5, pn=1, pad_to=1200))])
    assert not bad and flow.result()["sni"] == "example.com" and flow.result()["client_initial_dcid"] == DCID.hex()


# -- screening -------------------------------------------------------------------------------


def test_only_udp_payloads_that_start_with_an_initial_are_worth_a_parser() -> None:
    assert worth_parsing(RFC9001_CLIENT_INITIAL, 17, 50000, 9999)
    assert worth_parsing(RFC9369_CLIENT_INITIAL, 17, 50000, 443)
    handshake = bytes((RFC9001_CLIENT_INITIAL[0] | 0x20,)) + RFC9001_CLIENT_INITIAL[1:]  # (type bits 10)
    v2_typed_as_v1 = bytes((RFC9369_CLIENT_INITIAL[0] & 0xCF,)) + RFC9369_CLIENT_INITIAL[1:]
    draft29 = RFC9001_CLIENT_INITIAL[:1] + bytes.fromhex("ff00001d") + RFC9001_CLIENT_INITIAL[5:]
    short = bytes((0x40,)) + RFC9001_CLIENT_INITIAL[1:]
    no_fixed_bit = bytes((RFC9001_CLIENT_INITIAL[0] & 0xBF,)) + RFC9001_CLIENT_INITIAL[1:]
    for p in (handshake, v2_typed_as_v1, draft29, short, no_fixed_bit, RFC9001_CLIENT_INITIAL[:6], b""):
        assert not worth_parsing(p, 17, 50000, 443)
    assert not worth_parsing(RFC9001_CLIENT_INITIAL, 6, 50000, 443)  # (QUIC is UDP)


@pytest.mark.parametrize("native_hints", [False, True], ids=["numpy", "c"])
def test_udp_flows_that_never_start_with_an_initial_get_no_parser(native_hints: bool) -> None:
    rng = random.Random(5)
    frames = []
    k = 0
    while k < 40:  # long headers of other types and versions, short headers, random bytes
        first = rng.choice([0xE0, 0xF0, 0xD0, 0xC0, 0x40, 0x80, rng.randrange(256)])
        version = rng.choice([bytes.fromhex(v) for v in ("ff00001d", "00000002", "00000001", "6b3343cf")]
                             + [rng.randbytes(4)])  # fmt: skip
        v1_initial = first & 0xF0 == 0xC0 and version == bytes.fromhex("00000001")
        v2_initial = first & 0xF0 == 0xD0 and version == bytes.fromhex("6b3343cf")
        if v1_initial or v2_initial:
            continue
        payload = bytes((first,)) + version + rng.randbytes(1195)
        frames += _frames([(0, payload), (1, payload), (0, payload)], 52000 + k, 443)
        k += 1
    cfg = EngineConfig()
    e = Engine(cfg)
    b = PacketBatch.from_frames(frames, [1000.0 + 0.001 * k for k in range(len(frames))])
    e.process(b, prepare(b, cfg) if native_hints else None)
    assert e.app == {} and not _quic_counters(e)


# -- bad input: counted, never raised --------------------------------------------------------


def test_a_flood_of_forged_initials_costs_one_decrypt_per_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    frames = []
    for k in range(30):  # a valid-looking header, then random bytes: the tag cannot match
        head = bytes((0xC3,)) + b"\x00\x00\x00\x01" + b"\x08" + rng.randbytes(8) + b"\x00\x00" + b"\x44\x9e"
        frames += _frames([(0, head + rng.randbytes(1200 - len(head))) for _ in range(10)], 53000 + k, 443)
    decrypts = 0
    opened = quic.open_initial

    def counting(*args: Any) -> bytes | None:
        nonlocal decrypts
        decrypts += 1
        return opened(*args)

    monkeypatch.setattr(quic, "open_initial", counting)
    recs, e = _records(frames, batch=64)
    assert decrypts == 30 and _quic_counters(e) == {quic.DECRYPT_FAILED: 30}
    assert all("app" not in r for r in recs) and e.app == {}


def test_cut_and_short_initials_are_counted() -> None:
    """A datagram cut by the capture (its Length runs past the bytes there), and an Initial in a
    datagram under 1,200 bytes (not a real client's)."""
    cut = RFC9001_CLIENT_INITIAL[:600]
    short = qf.client_initial(qf.crypto_frame(0, RFC_HELLO), DCID, pad_to=1000)
    frames = _frames([(0, RFC9001_CLIENT_INITIAL)], 54000)
    frames.append(pf.vxlan(pf.udp(C, S, 54001, 443, RFC9001_CLIENT_INITIAL))[: -600])  # (caplen < wirelen)
    frames += _frames([(0, cut)], 54002) + _frames([(0, short)], 54003)
    wirelen = [len(f) for f in frames]
    wirelen[1] += 600
    b = PacketBatch.from_frames(frames, [1000.0 + k for k in range(4)], wirelen=wirelen)
    e = Engine(EngineConfig())
    recs = [dict(r) for r in list(e.process(b).records) + list(e.finish("end_of_input"))]
    assert _quic_counters(e) == {quic.MALFORMED: 2, quic.SHORT: 1}
    assert [r["src_port"] for r in recs if "app" in r] == [54000]


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` cut short, bytes of it flipped, or its header kept and the rest random."""
    cut = st.integers(0, len(base)).map(lambda n: base[:n])
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)), min_size=1, max_size=6).map(
        lambda fs: bytes(b ^ dict(fs).get(i, 0) for i, b in enumerate(base)))
    tail = st.tuples(st.integers(5, 30), st.binary(min_size=0, max_size=1400)).map(lambda t: base[: t[0]] + t[1])
    return st.one_of(cut, flips, tail)


_CONNECTION_LIKE = st.one_of(_mutations(RFC9001_CLIENT_INITIAL), _mutations(RFC9369_CLIENT_INITIAL))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1), _CONNECTION_LIKE), min_size=1, max_size=6))
def test_fuzzed_initials_never_raise(datagrams: list[tuple[int, bytes]]) -> None:
    state = AppState()
    for d, p in datagrams:
        assert state.feed(d, p, 17, 50000, 443) in (None, *quic.COUNTERS)
    out = state.to_record()
    assert set(out) <= {"quic"}
    if out:
        assert not list(validator().iter_errors({**_a_record(), "app": out}))


@functools.cache
def _a_record() -> dict[str, Any]:
    return _records(_frames([(0, RFC9001_CLIENT_INITIAL)]))[0][0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CONNECTION_LIKE, min_size=1, max_size=12))
def test_fuzzed_initials_in_the_engine_leave_other_records_as_they_were(garbage: list[bytes]) -> None:
    dns_query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
    real = _frames([(0, RFC9001_CLIENT_INITIAL), (1, RFC9001_SERVER_INITIAL)], 55000)
    others = [*real, pf.vxlan(pf.udp(C, S, 55001, 53, dns_query))]
    alone, _ = _records(others)
    mixed_frames = [*_frames([(0, g) for g in garbage], 56000), *others]
    mixed_ts = [999.0 + 0.01 * k for k in range(len(garbage))] + [1000.0 + 0.001 * k for k in range(len(others))]
    mixed, e = _records(mixed_frames, batch=5, ts=mixed_ts)
    assert [r for r in mixed if r["src_port"] != 56000] == alone
    for r in mixed:
        assert not list(validator().iter_errors(r))
    assert sum(_quic_counters(e).values()) <= len(garbage)


def test_engine_counts_each_failure_under_its_name_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    bad_tag = bytearray(RFC9001_CLIENT_INITIAL)
    bad_tag[-1] ^= 1
    frames = _frames([(0, bytes(bad_tag))], 57000) + _frames([(0, bytes(bad_tag))], 57001)
    with caplog.at_level("WARNING", logger="vxmirror.engine"):
        _, e = _records(frames)
    assert _quic_counters(e) == {quic.DECRYPT_FAILED: 2}
    (line,) = [r.getMessage() for r in caplog.records if "malformed payloads" in r.getMessage()]
    assert quic.DECRYPT_FAILED in line
    # a minute later the totals are logged again, not before
    e._app_bad_logged -= engine_module.APP_BAD_LOG_INTERVAL
    with caplog.at_level("WARNING", logger="vxmirror.engine"):
        e.process(PacketBatch.from_frames(frames[:1], [2000.0]))
        e.process(PacketBatch.from_frames(frames[1:], [2001.0]))
    assert len([r for r in caplog.records if "malformed payloads" in r.getMessage()]) == 2


def test_version_names() -> None:
    assert [quic.version_name(v) for v in (1, quic.V2, 0xFF00001D, 0x1A2A3A4A)] == [
        "QUICv1", "QUICv2", "draft-29", "0x1a2a3a4a"]

