"""The engine's bulk (vectorized) paths for excerpts and application metadata give what the plain
per-packet definitions give, for any batching, and the helpers they rest on keep their contracts."""

from __future__ import annotations

import base64
import random
import ssl
from typing import Any

import dpkt
import numpy as np
import orjson
import pytest

from receiver import engine as engine_module
from receiver.appmeta import tls
from receiver.appmeta.state import START_BYTES, AppState, worth_parsing
from receiver.config.engine import EngineConfig
from receiver.engine import _APP_START, Engine, _rank_within
from receiver.flows.excerpts import ExcerptPool
from receiver.packets import Layer, PacketBatch
from receiver.traffic import TrafficSpec, generate
from tests import packet_factory as pf

ACK, PSH = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH


def _run(frames: list[bytes], cfg: EngineConfig, batch: int) -> list[Any]:
    e = Engine(cfg)
    ts = [1000.0 + i * 0.001 for i in range(len(frames))]
    recs: list[Any] = []
    for i in range(0, len(frames), batch):
        recs += e.process(PacketBatch.from_frames(frames[i : i + batch], ts[i : i + batch])).records
    return recs + list(e.finish("end_of_input"))


@pytest.mark.parametrize("size", [16, 128])
@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_excerpts_are_the_first_bytes_of_each_direction_for_any_batching(size: int, batch: int) -> None:
    """Many small and large payloads (and empty ones) over interleaved flows: each excerpt is the
    concatenated payloads of its direction, in arrival order, cut at ``size``."""
    rng = random.Random(size * 1000 + batch)
    frames: list[bytes] = []
    sent: dict[tuple, bytearray] = {}
    for _ in range(600):
        i = rng.randrange(12)
        c, s, cport = f"10.0.0.{i + 1}", "10.9.0.1", 40000 + i
        to_server = rng.random() < 0.6
        n = rng.choice((0, 1, 3, 20, 100, 127, 128, 129, 300, 1400))
        payload = bytes(rng.randrange(256) for _ in range(n))
        if i % 2:  # UDP flows
            frame = pf.udp(c, s, cport, 9999, payload) if to_server else pf.udp(s, c, 9999, cport, payload)
            transport = "udp"
        else:
            frame = (pf.tcp(c, s, cport, 5001, ACK | PSH, payload) if to_server
                     else pf.tcp(s, c, 5001, cport, ACK | PSH, payload))
            transport = "tcp"
        frames.append(frame)
        sent.setdefault((c, cport, transport, to_server), bytearray()).extend(payload)
    recs = _run(frames, EngineConfig(excerpt_bytes=size, app_metadata=False), batch)
    assert len(recs) == 12
    for r in recs:
        # the client sent first in most flows, but not necessarily: map in/out to client/server
        client_is_src = r["src_ip"] != "10.9.0.1"
        c, cport = (r["src_ip"], r["src_port"]) if client_is_src else (r["dest_ip"], r["dest_port"])
        up = bytes(sent.get((c, cport, r["transport"], True), b""))[:size]
        down = bytes(sent.get((c, cport, r["transport"], False), b""))[:size]
        exc_in = base64.b64decode(r.get("excerpt_in", ""))
        exc_out = base64.b64decode(r.get("excerpt_out", ""))
        assert (exc_in, exc_out) == ((up, down) if client_is_src else (down, up))


@pytest.mark.parametrize("batch", [1, 4, 1000])
def test_later_requests_on_a_connection_are_found_after_the_first_packets(batch: int) -> None:
    """Past the first four payload packets of a direction, only packets that start like an HTTP
    message (or DNS by port) reach the parsers: a keep-alive connection's later requests and
    responses, after many data segments, are still in the record."""
    c, s = "10.0.0.1", "10.0.0.2"

    def req(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: h.example\r\nUser-Agent: t\r\n\r\n".encode()

    def resp(k: int) -> bytes:  # distinct: a copy of the last payload fed is taken for a retransmission
        return f"HTTP/1.1 200 OK\r\nContent-Length: 900{k}\r\n\r\n".encode()

    frames = [pf.tcp(c, s, 40000, 80, ACK | PSH, req("/1")), pf.tcp(s, c, 80, 40000, ACK | PSH, resp(1))]
    for k in range(2, 5):
        frames += [pf.tcp(s, c, 80, 40000, ACK, b"\x8a" * 1000) for _ in range(9)]
        frames += [pf.tcp(c, s, 40000, 80, ACK | PSH, b"x" * 50) for _ in range(5)]  # not HTTP starts
        frames += [pf.tcp(c, s, 40000, 80, ACK | PSH, req(f"/{k}")), pf.tcp(s, c, 80, 40000, ACK | PSH, resp(k))]
    (rec,) = _run(frames, EngineConfig(), batch)
    assert [h["uri"] for h in rec["app"]["http"]] == ["/1", "/2", "/3", "/4"]
    assert all(h["status"] == 200 for h in rec["app"]["http"])


class _FeedAll(AppState):
    """A parser the engine copies and feeds every selected packet to: ``ignores`` says False to
    the engine, while ``feed`` still applies the parser's own rule."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.feeding = False

    def feed(self, *args: Any) -> None:
        self.feeding = True
        try:
            super().feed(*args)
        finally:
            self.feeding = False

    def ignores(self, d: int) -> bool:
        return self.feeding and super().ignores(d)


def _generated(batch: int) -> tuple[list[bytes], int]:
    """Records of generated traffic (HTTP with bodies, TLS, DNS, opaque TCP and UDP) read in
    batches of ``batch``, and the payloads copied for the parsers."""
    copies = 0
    feed = engine_module.AppState.feed

    def counting(self: AppState, *args: Any) -> None:
        nonlocal copies
        copies += 1
        feed(self, *args)

    traffic = generate(TrafficSpec(n_packets=20_000, n_flows=500, seed=7, chunk=batch))
    e = Engine(EngineConfig())
    recs = []
    original = engine_module.AppState.feed
    engine_module.AppState.feed = counting  # type: ignore[method-assign]
    try:
        for b in traffic.batches():
            recs += e.process(b).records
        recs += e.finish("end_of_input")
    finally:
        engine_module.AppState.feed = original  # type: ignore[method-assign]
    return [orjson.dumps(r) for r in recs], copies


@pytest.mark.parametrize("batch", [50, 4096])
def test_what_the_engine_leaves_out_for_the_parsers_changes_no_record(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Two shortcuts keep payloads away from the parsers: packets of parser-less flows that cannot
    start one are counted in bulk, and an HTTP direction's body segments are not copied. Neither
    may change a record: against the plain per-packet loop that copies and feeds all of them."""
    fast, fast_copies = _generated(batch)
    bulk_calls = 0
    count_shown = engine_module._count_shown

    def spy(*args: Any) -> None:
        nonlocal bulk_calls
        bulk_calls += 1
        count_shown(*args)

    monkeypatch.setattr(engine_module, "_count_shown", spy)
    again, _ = _generated(batch)
    assert again == fast and bulk_calls > 0  # the bulk path was taken
    monkeypatch.setattr(engine_module, "_only_counted", lambda maybe, parsing, flows: np.zeros_like(maybe))
    monkeypatch.setattr(engine_module, "AppState", _FeedAll)
    plain, plain_copies = _generated(batch)
    assert sum(b'"http"' in r for r in plain) > 50 and sum(b'"tls"' in r for r in plain) > 50
    assert fast == plain
    assert fast_copies < 0.8 * plain_copies  # the HTTP bodies were left out


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_http_heads_over_several_segments_are_gathered_and_bodies_not_copied(batch: int) -> None:
    """Head segments that start like body (lower case) are still gathered while a head is open
    (among a direction's first four payload packets); once it is parsed, that direction's body
    segments never reach the parser."""
    c, s = "10.0.0.1", "10.0.0.2"
    fed: list[bytes] = []
    feed = engine_module.AppState.feed

    def spy(self: AppState, direction: int, payload: bytes, *args: Any) -> None:
        fed.append(payload)
        feed(self, direction, payload, *args)

    up = [b"GET /a HTTP/1.1\r\nHo", b"st: one.example\r\nuser-agent: t\r\n\r\n"]
    down = [b"HTTP/1.1 200 OK\r\nContent-", b"length: 3000\r\n\r\n"]
    body = [bytes([0x30 + k]) * 1000 for k in range(3)]
    up2 = [b"POST /b HTTP/1.1\r\n", b"host: two.example\r\n\r\n"]
    frames = [pf.tcp(c, s, 40000, 80, ACK | PSH, x) for x in up]
    frames += [pf.tcp(s, c, 80, 40000, ACK | PSH, x) for x in down + body]
    frames += [pf.tcp(c, s, 40000, 80, ACK | PSH, x) for x in up2]
    frames += [pf.tcp(s, c, 80, 40000, ACK | PSH, b"HTTP/1.1 404 Not Found\r\n\r\n")]
    engine_module.AppState.feed = spy  # type: ignore[method-assign]
    try:
        (rec,) = _run(frames, EngineConfig(), batch)
    finally:
        engine_module.AppState.feed = feed  # type: ignore[method-assign]
    assert [(h["host"], h["uri"], h["status"]) for h in rec["app"]["http"]] == [
        ("one.example", "/a", 200), ("two.example", "/b", 404)]
    assert not set(body) & set(fed)
    assert set(up + down[:1] + up2) <= set(fed)  # (a response needs its status line only)


def test_opaque_flows_get_no_app_object_and_dns_flows_do() -> None:
    c, s = "10.0.0.1", "10.0.0.2"
    frames = [pf.tcp(c, s, 40001, 5001, ACK | PSH, b"\x00\x01binary") for _ in range(10)]
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="a.example", type=dpkt.dns.DNS_A)])
    frames += [pf.udp(c, s, 40002, 53, bytes(q)) for _ in range(6)]
    recs = {r["dest_port"]: r for r in _run(frames, EngineConfig(), 3)}
    assert "app" not in recs[5001]
    assert [d["query"] for d in recs[53]["app"]["dns"]] == ["a.example"] * 6


@pytest.mark.parametrize("batch", [1, 3, 5, 1000])
def test_later_request_heads_over_several_segments_are_gathered(batch: int) -> None:
    """Past a direction's first four payload packets only message starts are shown; a request
    head that spans segments there (a large cookie) must still be gathered whole, and the request
    after it must not be taken for its continuation."""
    c, s = "10.0.0.1", "10.0.0.2"

    def req(k: int) -> list[bytes]:
        head = f"GET /{k} HTTP/1.1\r\ncookie: {'c' * 1800}\r\nhost: h{k}.example\r\nuser-agent: ua{k}\r\n\r\n"
        data = head.encode()
        return [data[:1400], data[1400:]]  # the host and the user agent are in the second segment

    frames = []
    for k in range(1, 8):
        frames += [pf.tcp(c, s, 40001, 80, ACK | PSH, seg) for seg in req(k)]
        frames.append(pf.tcp(s, c, 80, 40001, ACK | PSH, f"HTTP/1.1 200 OK\r\nX-K: {k}\r\n\r\n".encode()))
        frames += [pf.tcp(s, c, 80, 40001, ACK, bytes([0x80 + k]) * 1000) for _ in range(3)]
    (rec,) = _run(frames, EngineConfig(), batch)
    assert [(h["uri"], h["host"], h["user_agent"], h["status"]) for h in rec["app"]["http"]] == [
        (f"/{k}", f"h{k}.example", f"ua{k}", 200) for k in range(1, 8)]


@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_a_head_opened_by_a_short_first_segment_goes_on_past_the_first_packets(batch: int) -> None:
    """A request sent as "G" then the rest (the fourth payload packet, then the fifth): the parser
    gathers from the "G", so the next segment is shown although it starts no message, in any
    batching (with a packet a batch that follows from the gathering state alone)."""
    c, s = "10.0.0.1", "10.0.0.2"
    frames = [pf.tcp(c, s, 40002, 80, ACK | PSH, b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n"),
              pf.tcp(s, c, 80, 40002, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n")]
    frames += [pf.tcp(c, s, 40002, 80, ACK | PSH, bytes([0x80 + k]) * 10) for k in range(2)]  # (body)
    frames += [pf.tcp(c, s, 40002, 80, ACK | PSH, b"G"),
               pf.tcp(c, s, 40002, 80, ACK | PSH, b"ET /b HTTP/1.1\r\nHost: b.example\r\n\r\n")]
    (rec,) = _run(frames, EngineConfig(), batch)
    assert [(h["uri"], h["host"]) for h in rec["app"]["http"]] == [("/a", "a.example"), ("/b", "b.example")]
    # one body segment more, and the "G" is the fifth packet: past the first four, it starts no
    # message, so neither it nor the rest is shown (as with a packet a batch)
    frames.insert(4, pf.tcp(c, s, 40002, 80, ACK | PSH, b"\x90" * 10))
    (rec,) = _run(frames, EngineConfig(), batch)
    assert [(h["uri"], h["host"]) for h in rec["app"]["http"]] == [("/a", "a.example")]


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_a_direction_opaque_for_its_first_packets_is_not_looked_at_again(batch: int) -> None:
    """Four opaque payload packets without a parser end a direction for the parsers (counted in
    bulk or one by one alike): an HTTP request after them starts nothing."""
    c, s = "10.0.0.1", "10.0.0.2"
    frames = [pf.tcp(c, s, 40003, 8080, ACK | PSH, b"\x00\x01binary") for _ in range(5)]
    frames.append(pf.tcp(c, s, 40003, 8080, ACK | PSH, b"GET /late HTTP/1.1\r\nHost: late.example\r\n\r\n"))
    (rec,) = _run(frames, EngineConfig(), batch)
    assert "app" not in rec


def test_first_byte_screen_is_a_superset_of_worth_parsing() -> None:
    """The engine builds no bytes object for a TCP payload whose first byte is outside START_BYTES
    (while its flow has no parser): worth_parsing must be False for every such payload."""
    assert set(np.flatnonzero(_APP_START).tolist()) == set(START_BYTES)
    tails = [b"", b"ET / HTTP/1.1\r\n", b"TTP/1.1 200 OK\r\n", b"\x03\x01\x00\x05", b" ", b"OST /"]
    for first in range(256):
        if first in START_BYTES:
            continue
        for tail in tails:
            assert not worth_parsing(bytes([first]) + tail, 6, 40000, 8080)
    assert worth_parsing(b"GET / HTTP/1.1\r\n", 6, 40000, 8080)
    assert worth_parsing(b"G", 6, 40000, 8080)  # maybe the start of one
    assert worth_parsing(b"\x16\x03\x01\x00\x05", 6, 40000, 8443)


@pytest.mark.parametrize("top", [100, 60_000, 5_000_000, 1 << 40])
def test_rank_within_matches_a_stable_sort(top: int) -> None:
    rng = np.random.default_rng(top)
    for n in (0, 1, 2, 50, 5000):
        key = rng.integers(0, top, n) if top > 1000 else rng.integers(0, 8, n)
        values = rng.integers(0, 1500, n)
        rank, before = _rank_within(key, values)
        assert before is not None
        seen: dict[int, tuple[int, int]] = {}
        for i, (k, v) in enumerate(zip(key.tolist(), values.tolist())):
            r, b = seen.get(k, (0, 0))
            assert (rank[i], before[i]) == (r, b)
            seen[k] = (r + 1, b + v)
        rank_only, none = _rank_within(key)
        assert none is None and np.array_equal(rank_only, rank)


def test_acquire_many_gives_the_rows_of_acquire_one_by_one() -> None:
    a, b = ExcerptPool(8, initial_rows=4), ExcerptPool(8, initial_rows=4)
    for k in (1, 2, 3, 5, 0, 9):  # crosses the growth of the pool twice
        one = [a.acquire() for _ in range(k)]
        assert b.acquire_many(k).tolist() == one
        assert (a.n_free, a.rows.shape) == (b.n_free, b.rows.shape)
    released = np.array([3, 0, 7])
    a.release(released)
    b.release(released)
    assert b.acquire_many(5).tolist() == [a.acquire() for _ in range(5)]


def _openssl_client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_parse_hello_reads_the_handshake_once_with_the_same_result() -> None:
    hello = _openssl_client_hello("x.example")
    for n in range(len(hello) + 1):
        data = hello[:n]
        ch, sh = tls.parse_client_hello(data), tls.parse_server_hello(data)
        assert sh is None
        assert tls.parse_hello(data) == (None if ch is None else (1, ch))
    kind, parsed = tls.parse_hello(hello) or (0, {})
    assert kind == 1 and parsed["sni"] == "x.example" and parsed["complete"]
    assert tls.parse_hello(b"GET / HTTP/1.1\r\n") is None


@pytest.mark.parametrize("budget", [0.0, 1e-9])
def test_past_the_parsers_time_budget_new_flows_go_without_them(budget: float) -> None:
    """The live service's ``app_time_budget``: once the parsers took their share of the current
    second, new flows get no parser (counted as app_shed_flows); flows that have one keep it.
    Off (0), every DNS flow is parsed."""
    c, s = "10.0.0.1", "10.0.0.2"

    def dns_pair(port: int, name: str) -> list[bytes]:
        q = dpkt.dns.DNS(id=port, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
        r = dpkt.dns.DNS(id=port, qr=dpkt.dns.DNS_R, qd=q.qd)
        return [pf.udp(c, s, port, 53, bytes(q)), pf.udp(s, c, 53, port, bytes(r))]

    e = Engine(EngineConfig())
    e.app_budget = budget
    first = e.process(PacketBatch.from_frames(dns_pair(40001, "a.example"), [1.0, 1.1], Layer.ETHERNET))
    later = dns_pair(40002, "b.example") + dns_pair(40001, "a2.example")  # a new flow, and the parsed one
    second = e.process(PacketBatch.from_frames(later, [1.2, 1.3, 1.4, 1.5], Layer.ETHERNET))
    recs = {r["src_port"]: r for r in [*first.records, *second.records, *e.finish("end_of_input")]}
    assert [d["query"] for d in recs[40001]["app"]["dns"]] == ["a.example", "a2.example"]
    if budget:
        assert "app" not in recs[40002] and e.counters()["app_shed_flows"] == 1
    else:
        assert recs[40002]["app"]["dns"][0]["query"] == "b.example" and "app_shed_flows" not in e.counters()
