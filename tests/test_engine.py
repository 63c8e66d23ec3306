"""Flow-table semantics: direction, originator, counters, history, conn_state, expiry, eviction,
fragments, excerpts and application metadata, through the public Engine API."""

from __future__ import annotations

import base64

import dpkt
import numpy as np
import pytest

from receiver.config.engine import EngineConfig
from receiver.engine import DROP_REASONS, Engine
from receiver.packets import Layer, PacketBatch
from tests import packet_factory as pf

SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH
C, S = "10.0.0.1", "10.0.0.2"


def run(frames: list[bytes], ts: list[float] | None = None, cfg: EngineConfig | None = None,
        batch: int = 1000) -> tuple[list[dict], Engine]:
    e = Engine(cfg or EngineConfig())
    ts = ts if ts is not None else [1000.0 + i * 0.01 for i in range(len(frames))]
    recs: list[dict] = []
    for i in range(0, len(frames), batch):
        recs += e.process(PacketBatch.from_frames(frames[i : i + batch], ts[i : i + batch])).records
    recs += e.finish("end_of_input")
    return recs, e


def handshake(payload_c: bytes = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
              payload_s: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") -> list[bytes]:
    return [
        pf.tcp(C, S, 40000, 80, SYN),
        pf.tcp(S, C, 80, 40000, SYN | ACK),
        pf.tcp(C, S, 40000, 80, ACK),
        pf.tcp(C, S, 40000, 80, ACK | PSH, payload_c),
        pf.tcp(S, C, 80, 40000, ACK | PSH, payload_s),
        pf.tcp(C, S, 40000, 80, FIN | ACK),
        pf.tcp(S, C, 80, 40000, FIN | ACK),
        pf.tcp(C, S, 40000, 80, ACK),
    ]


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_tcp_connection_is_one_bidirectional_record(batch: int) -> None:
    frames = [pf.vxlan(f, vni=42) for f in handshake()]
    recs, e = run(frames, batch=batch)
    assert len(recs) == 1
    r = recs[0]
    assert (r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"]) == (C, 40000, S, 80)
    assert r["vni"] == 42 and r["transport"] == "tcp" and r["ip_proto"] == 6
    assert (r["packets_in"], r["packets_out"]) == (5, 3)
    ip_len = [len(f) - 14 for f in handshake()]
    assert r["bytes_in"] == sum(ip_len[i] for i in (0, 2, 3, 5, 7))
    assert r["bytes_out"] == sum(ip_len[i] for i in (1, 4, 6))
    assert r["history"] == "ShADdFf"
    assert r["conn_state"] == "SF"
    assert r["tcp_flags_in"] == "FSPA" and r["tcp_flags_out"] == "FSPA"
    assert r["app"]["http"][0]["host"] == "example.com" and r["app"]["http"][0]["status"] == 200
    assert base64.b64decode(r["excerpt_in"]).startswith(b"GET / HTTP/1.1")
    assert base64.b64decode(r["excerpt_out"]).startswith(b"HTTP/1.1 200")
    assert r["community_id"].startswith("1:")
    assert e.counters()["decoded"] == 8


def test_syn_sender_is_the_originator_even_when_the_synack_comes_first() -> None:
    f = handshake()
    recs, _ = run([f[1], f[0], f[2]])
    r = recs[0]
    assert (r["src_ip"], r["src_port"]) == (C, 40000)
    assert r["packets_in"] == 2 and r["packets_out"] == 1
    assert r["history"].startswith("^")


def test_flip_across_batches_when_responder_sends_first() -> None:
    f = handshake()
    recs, _ = run([f[1], f[0]], batch=1)
    assert (recs[0]["src_ip"], recs[0]["src_port"]) == (C, 40000)


def test_midstream_udp_first_packet_sender_is_originator() -> None:
    recs, _ = run([pf.udp(S, C, 53, 5555, b"x"), pf.udp(C, S, 5555, 53, b"y")])
    assert (recs[0]["src_ip"], recs[0]["src_port"]) == (S, 53)
    assert recs[0]["conn_state"] == "SF"


def test_rejected_connection_state() -> None:
    recs, _ = run([pf.tcp(C, S, 1, 2, SYN), pf.tcp(S, C, 2, 1, RST | ACK)])
    assert recs[0]["conn_state"] == "REJ" and recs[0]["end_reason"] == "end_of_input"


def test_icmp_echo_pairs_into_one_flow_with_zeek_ports() -> None:
    recs, _ = run([pf.icmp(C, S, 8), pf.icmp(S, C, 0), pf.icmp(C, S, 8), pf.icmp(S, C, 0)])
    assert len(recs) == 1
    r = recs[0]
    assert (r["src_port"], r["dest_port"]) == (8, 0) and r["transport"] == "icmp"
    assert r["packets_in"] == 2 and r["packets_out"] == 2
    recs6, _ = run([pf.icmp("fd00::1", "fd00::2", 128), pf.icmp("fd00::2", "fd00::1", 129)])
    assert len(recs6) == 1 and recs6[0]["transport"] == "ipv6-icmp" and recs6[0]["src_port"] == 128


def test_vni_separates_flows() -> None:
    f = pf.udp(C, S, 1, 2, b"a")
    recs, _ = run([pf.vxlan(f, vni=1), pf.vxlan(f, vni=2), pf.geneve(f, vni=1), f])
    assert sorted((r["vni"] is None, r["vni"], r["packets_in"]) for r in recs) == [
        (False, 1, 2), (False, 2, 1), (True, None, 1)
    ]


def test_idle_timeout_by_packet_time() -> None:
    cfg = EngineConfig(udp_idle_timeout=5.0)
    f = pf.udp(C, S, 1, 2, b"a")
    recs, _ = run([f, f, pf.udp(C, S, 3, 4), f], ts=[0.0, 1.0, 100.0, 101.0], cfg=cfg, batch=1)
    idle = [r for r in recs if r["end_reason"] == "idle"]
    assert len(idle) == 1 and idle[0]["packets_in"] == 2 and idle[0]["src_port"] == 1
    # the same 5-tuple after the gap is a new flow
    assert sum(1 for r in recs if r["src_port"] == 1) == 2


def test_active_timeout_emits_interim_records_that_add_up() -> None:
    cfg = EngineConfig(active_timeout=10.0, udp_idle_timeout=100.0)
    f = pf.udp(C, S, 1, 2, b"abc")
    ts = [float(t) for t in range(0, 35)]
    recs, _ = run([f] * 35, ts=ts, cfg=cfg, batch=1)
    reasons = [r["end_reason"] for r in recs]
    assert reasons.count("active") == 3 and reasons[-1] == "end_of_input"
    assert sum(r["packets_in"] for r in recs) == 35
    assert recs[1]["segment"] == 1 and "excerpt_in" not in recs[1]


@pytest.mark.parametrize("batch", [2, 7, 64, 1000])
def test_timeouts_do_not_depend_on_where_the_batches_fall(batch: int) -> None:
    """Timeouts run at grid points of packet time, and a TCP close dates from the packet that
    completed it: interim records cut a long flow at the same times, and a late packet after a
    close linger (a retransmitted FIN, a reused port) lands in the same flow, however the packets
    are batched (the reference: one packet a batch)."""
    cfg = EngineConfig(active_timeout=1.0, tcp_close_linger=0.05, expire_interval=0.01, udp_idle_timeout=0.3)
    rng = np.random.default_rng(3)
    frames: list[bytes] = []
    ts: list[float] = []
    t = 1000.0
    for k in range(80):  # short TCP connections, some with a late ACK after their close linger
        port = 41000 + k % 7  # ports come back: a new flow only once the old one ended
        conn = [pf.tcp(C, S, port, 80, SYN), pf.tcp(S, C, 80, port, SYN | ACK), pf.tcp(C, S, port, 80, ACK | PSH, b"q"),
                pf.tcp(C, S, port, 80, FIN | ACK), pf.tcp(S, C, 80, port, FIN | ACK), pf.tcp(C, S, port, 80, ACK)]
        frames += conn
        ts += [t, t + 0.003, t + 0.006, t + 0.009, t + 0.012, t + 0.019]  # the last ACK 7 ms after the close
        if k % 3 == 0:
            frames.append(pf.tcp(S, C, 80, port, FIN | ACK))
            ts.append(t + 0.012 + float(rng.uniform(0.03, 0.1)))
        t = ts[-1] + float(rng.uniform(0.0, 0.08))
    stream = pf.udp(C, S, 5000, 6000, b"x")  # a long flow: interim records every active timeout
    for j in range(300):
        frames.append(stream)
        ts.append(1000.0 + j * 0.0123)
    order = np.argsort(ts, kind="stable")
    frames, ts = [frames[i] for i in order], [ts[i] for i in order]
    ref, _ = run(frames, ts=ts, cfg=cfg, batch=1)
    got, _ = run(frames, ts=ts, cfg=cfg, batch=batch)
    def key(recs: list[dict]) -> list[tuple]:
        return sorted((r["ts_start"], r["src_port"], r["end_reason"], r["packets_in"], r["packets_out"]) for r in recs)

    assert key(got) == key(ref)
    reasons = [r["end_reason"] for r in ref]
    assert reasons.count("active") >= 2 and reasons.count("tcp_close") > 10


@pytest.mark.parametrize("batch", [1, 1000])
def test_a_tcp_close_dates_from_the_packet_that_completed_it(batch: int) -> None:
    """The linger runs from the second FIN, not from the flow's last packet in its batch (an ACK
    after the FINs): a packet after the linger starts a new flow, and at the end of the input the
    flow ends as closed, whatever the batching."""
    cfg = EngineConfig(tcp_close_linger=0.055, expire_interval=0.01)
    frames = [pf.tcp(C, S, 40000, 80, SYN), pf.tcp(S, C, 80, 40000, SYN | ACK), pf.tcp(C, S, 40000, 80, FIN | ACK),
              pf.tcp(S, C, 80, 40000, FIN | ACK), pf.tcp(C, S, 40000, 80, ACK), pf.tcp(C, S, 40000, 80, ACK)]
    ts = [1000.0, 1000.001, 1000.002, 1000.003, 1000.007, 1000.065]  # closed at .003: due at .058
    recs, _ = run(frames, ts=ts, cfg=cfg, batch=batch)
    ended = [(r["end_reason"], r["packets_in"] + r["packets_out"]) for r in recs]
    assert ended == [("tcp_close", 5), ("end_of_input", 1)]
    recs, _ = run([*frames[:5], pf.udp(C, S, 1, 2)], ts=[*ts[:5], 1000.060], cfg=cfg, batch=batch)
    assert sorted((r["transport"], r["end_reason"]) for r in recs) == [("tcp", "tcp_close"), ("udp", "end_of_input")]


@pytest.mark.parametrize("batch", [1, 1000])
def test_a_packet_far_in_the_future_does_not_stop_the_timeouts(batch: int) -> None:
    """A corrupt timestamp years ahead ends the open flows (time moved on, as packet by packet),
    but when packet time comes back the timeouts restart from it instead of waiting for the
    future: a flow idle for its timeout afterwards still ends mid-capture, not at the end."""
    cfg = EngineConfig(udp_idle_timeout=5.0)
    a, bogus, late = pf.udp(C, S, 1, 2, b"a"), pf.udp(C, S, 3, 4, b"b"), pf.udp(C, S, 5, 6, b"c")
    frames = [a] * 50 + [bogus] + [a] * 50 + [late] + [a] * 100
    ts = [1000.0 + 0.1 * i for i in range(50)] + [4e9] + [1005.0 + 0.1 * i for i in range(50)] + [1010.05]
    ts += [1010.1 + 0.1 * i for i in range(100)]  # (the "late" flow is idle from 1010.05: due at 1015.05)
    e = Engine(cfg)
    during: list[dict] = []
    for i in range(0, len(frames), batch):
        during += e.process(PacketBatch.from_frames(frames[i : i + batch], ts[i : i + batch])).records
    assert [(r["src_port"], r["end_reason"], r["packets_in"]) for r in during] == [(1, "idle", 50), (5, "idle", 1)]
    assert e.counters()["clock_restarts"] == 1


@pytest.mark.parametrize("batch", [1, 1000])
def test_a_flow_that_went_quiet_ends_idle_and_whole(batch: int) -> None:
    """With the default timeouts (TCP idle and active both 300 s) a connection that went quiet
    without closing reaches its active timeout 0.1 s before its idle one: it must end as one idle
    record with all its packets, not as an interim record followed by an empty one."""
    quiet = handshake()[:5]
    ticker = pf.udp(C, S, 7, 7, b"t")  # keeps packet time moving
    frames = quiet + [ticker] * 400
    ts = [1000.0 + 0.02 * i for i in range(5)] + [1001.0 + i for i in range(400)]
    recs, _ = run(frames, ts=ts, batch=batch)
    tcp = [r for r in recs if r["transport"] == "tcp"]
    assert [(r["end_reason"], r["packets_in"] + r["packets_out"]) for r in tcp] == [("idle", 5)]


def test_a_long_gap_costs_a_few_timeout_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across a gap in packet time the checks jump to the grid points where a flow is due: a flow
    whose interim window (1001.2-1001.5 s) holds no grid point must not make them walk the gap
    one grid point at a time until its idle timeout."""
    cfg = EngineConfig(udp_idle_timeout=600.0, active_timeout=1.0)
    calls: list[float] = []
    expire = Engine._expire

    def counting(self: Engine, now: float) -> None:
        calls.append(now)
        expire(self, now)

    monkeypatch.setattr(Engine, "_expire", counting)
    f = pf.udp(C, S, 1, 2, b"a")
    recs, _ = run([f, f, pf.udp(C, S, 3, 4, b"b")], ts=[1000.2, 1000.5, 2000.0], cfg=cfg, batch=1)
    assert [(r["src_port"], r["end_reason"]) for r in recs] == [(1, "idle"), (3, "end_of_input")]
    assert len(calls) <= 4, calls


def test_tcp_close_after_linger() -> None:
    cfg = EngineConfig(tcp_close_linger=1.0)
    frames = [*handshake(), pf.udp(C, S, 9, 9)]
    ts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0]
    recs, _ = run(frames, ts=ts, cfg=cfg, batch=1)
    assert [r["end_reason"] for r in recs if r["transport"] == "tcp"] == ["tcp_close"]


def test_eviction_at_the_flow_cap_is_counted_and_emitted() -> None:
    cfg = EngineConfig(max_flows=16)
    frames = [pf.udp(C, S, 1000 + i, 53, b"q") for i in range(40)]
    recs, e = run(frames, batch=8, cfg=cfg)
    assert len(recs) == 40
    assert sum(1 for r in recs if r["end_reason"] == "evicted") == 24
    assert e.counters()["flows_evicted"] == 24


def test_many_flows_grow_the_table_and_stay_exact() -> None:
    rng = np.random.default_rng(3)
    frames, expect = [], {}
    for _ in range(3000):
        sp = int(rng.integers(1024, 60000))
        frames.append(pf.udp(C, S, sp, 443, b"z"))
        expect[sp] = expect.get(sp, 0) + 1
    recs, e = run(frames, batch=512)
    got = {r["src_port"]: r["packets_in"] for r in recs}
    assert got == expect and e.counters()["flow_table_capacity"] >= len(expect)


def test_fragments_are_attributed_to_their_flow() -> None:
    first = bytearray(pf.udp(C, S, 7000, 8000, b"A" * 40))
    first[14 + 6 : 14 + 8] = (0x2000).to_bytes(2, "big")  # MF, offset 0
    later = bytearray(pf.udp(C, S, 1, 1, b"B" * 40))
    later[14 + 6 : 14 + 8] = (5).to_bytes(2, "big")  # offset 40 bytes, no MF
    orphan = bytearray(later)
    orphan[14 + 4 : 14 + 6] = (99).to_bytes(2, "big")  # another IP ID: no first fragment
    recs, e = run([bytes(first), bytes(later), bytes(orphan)])
    assert len(recs) == 1
    assert recs[0]["packets_in"] == 2 and recs[0]["fragments"] == 2 and recs[0]["dest_port"] == 8000
    assert e.counters()["fragment_without_first"] == 1


def test_truncated_frames_count_their_full_ip_length() -> None:
    full = pf.tcp(C, S, 5, 6, ACK, payload=b"p" * 1000)
    cut = full[:200]
    recs, _ = run([cut])
    assert recs[0]["bytes_in"] == len(full) - 14 and recs[0]["truncated"] is True
    assert recs[0]["payload_bytes_in"] == 1000


def test_excerpts_follow_arrival_order_and_stop_at_the_limit() -> None:
    cfg = EngineConfig(excerpt_bytes=10)
    frames = [pf.udp(C, S, 1, 2, b"abcdef"), pf.udp(C, S, 1, 2, b"ghijkl"), pf.udp(C, S, 1, 2, b"mnop")]
    recs, _ = run(frames, cfg=cfg)
    assert base64.b64decode(recs[0]["excerpt_in"]) == b"abcdefghij"
    recs, _ = run(frames, cfg=EngineConfig(excerpt_bytes=0))
    assert "excerpt_in" not in recs[0]


def test_every_packet_is_decoded_or_counted_under_a_reason() -> None:
    good = pf.vxlan(pf.tcp(C, S, 1, 2))
    bad_flag = pf.vxlan(pf.tcp(C, S, 1, 2), flags=0)
    arp = pf.vxlan(pf.MAC_B + pf.MAC_A + b"\x08\x06" + b"\0" * 28)
    frames = [good, bad_flag, arp, good[:30], good[:60], b"", b"\xff" * 20]
    _, e = run(frames)
    c = e.counters()
    assert c["packets"] == 7
    assert c["decoded"] + sum(v for k, v in c.items() if k in DROP_REASONS) == 7
    assert c["vxlan_i_flag_unset"] == 1 and c["non_ip"] >= 1


def test_live_vxlan_datagrams_decode_like_captured_frames() -> None:
    frames = [pf.vxlan(f, vni=77) for f in handshake()]
    datagrams = [f[42:] for f in frames]
    e = Engine()
    recs = list(e.process(PacketBatch.from_frames(datagrams, [1.0] * 8, layer=Layer.VXLAN)).records)
    recs += e.finish("shutdown")
    captured, _ = run(frames, ts=[1.0] * 8)
    strip = ("end_reason",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in recs] == [
        {k: v for k, v in r.items() if k not in strip} for r in captured
    ]
    assert recs[0]["end_reason"] == "shutdown"


def test_decap_info_points_at_the_inner_frame() -> None:
    inner = pf.tcp(C, S, 1, 2)
    batch = PacketBatch.from_frames([pf.vxlan(inner, vni=3), inner])
    res = Engine().process(batch)
    s0 = int(res.decap.inner_start[0])
    assert batch.buf[s0 : s0 + len(inner)].tobytes() == inner and res.decap.vni[0] == 3
    assert res.decap.inner_start[1] == batch.start[1] and res.decap.vni[1] == -1


def test_top_talkers_are_the_largest_open_flows() -> None:
    e = Engine()
    frames = [pf.udp(C, S, 1, 2, b"x" * 500)] * 3 + [pf.udp(S, C, 2, 1, b"y" * 10)] + [pf.udp(C, S, 7, 8, b"z")] * 5
    e.process(PacketBatch.from_frames(frames, [1.0] * len(frames)))
    top = e.top_talkers(1)
    assert len(top) == 1
    t = top[0]
    assert (t["src_ip"], t["src_port"], t["dest_ip"], t["dest_port"], t["packets"]) == (C, 1, S, 2, 4)
    assert t["bytes"] == 3 * (500 + 28) + (10 + 28) and t["transport"] == "udp"
    assert [x["src_port"] for x in e.top_talkers(10)] == [1, 7]
