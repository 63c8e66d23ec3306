"""Packets of a TCP flow that arrive out of order (behind a load balancer, the two directions
mirrored apart): the record is the one in-order arrival gives (originator, history, conn_state,
counters, times), within the window docs/flowrecord.md states ("Packets out of order").

A mirrored packet's timestamp is its arrival time, so a late packet has a late timestamp too:
here the permuted packets take the in-order arrival times in turn, as a receiver would stamp
them. The engine orders the history by TCP's sequence and acknowledgement numbers
(receiver/flows/history.py)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import dpkt
import numpy as np
import pytest

from receiver import native
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.packets import PacketBatch
from receiver.traffic import TrafficSpec, generate
from tests import packet_factory as pf

SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH
C, S = "10.0.0.1", "10.0.0.2"
SERVER_PORT = 80
SPORT_AT = 14 + 20  # the TCP source port in an Ethernet/IPv4 frame without options (destination: + 2)

# (side, TCP flags, payload bytes) per packet, in order; side 0 is the client C, 1 the server S
CONVERSATIONS: dict[str, list[tuple[int, int, int]]] = {
    # request, response, FIN both ways: the last data, the FINs and the handshake's ACK can each
    # arrive before what precedes them
    "request-response": [
        (0, SYN, 0), (1, SYN | ACK, 0), (0, ACK, 0), (0, PSH | ACK, 120), (1, PSH | ACK, 300),
        (0, FIN | ACK, 0), (1, FIN | ACK, 0), (0, ACK, 0),
    ],
    # the server speaks first (a banner): its data may arrive before the handshake's last ACK
    "server-first": [
        (0, SYN, 0), (1, SYN | ACK, 0), (0, ACK, 0), (1, PSH | ACK, 40), (0, PSH | ACK, 10),
        (1, FIN | ACK, 0), (0, FIN | ACK, 0), (1, ACK, 0),
    ],
    # the server's pure ACK and the client's FIN carry the same clock (nothing orders them)
    "ack-then-fin": [
        (0, SYN, 0), (1, SYN | ACK, 0), (0, ACK, 0), (0, PSH | ACK, 200), (1, ACK, 0),
        (0, FIN | ACK, 0), (1, FIN | ACK, 0), (0, ACK, 0),
    ],
    # data both ways, then the client resets: RST and the server's last pure ACK share a clock
    "reset": [
        (0, SYN, 0), (1, SYN | ACK, 0), (0, ACK, 0), (0, PSH | ACK, 100), (1, PSH | ACK, 700),
        (1, ACK, 0), (0, RST | ACK, 0),
    ],
    # a closed port: the RST-ACK answers the SYN (sequence number 0)
    "closed-port": [(0, SYN, 0), (1, RST | ACK, 0)],
}


def conversation(steps: list[tuple[int, int, int]], isn: tuple[int, int] = (0xFFFFFF00, 5000)) -> list[bytes]:
    """The frames of ``steps`` with the numbers real TCP gives them: each side's sequence number
    counts what it sent (SYN and FIN one each), each ACK acknowledges all its peer sent before.
    (The client's ISN is near 2**32: its numbers wrap.)"""
    nxt = list(isn)
    frames = []
    for side, flags, n in steps:
        src, dst, sport, dport = (C, S, 40000, SERVER_PORT) if side == 0 else (S, C, SERVER_PORT, 40000)
        seq = nxt[side] % (1 << 32)
        if flags == RST | ACK and nxt[side] == isn[side]:  # a side's first packet an RST-ACK: a closed port's answer
            seq = 0
        ack = nxt[1 - side] % (1 << 32) if flags & ACK else 0
        frames.append(pf.tcp(src, dst, sport, dport, flags, b"q" * n, seq=seq, ack=ack))
        nxt[side] += n + bool(flags & (SYN | FIN))
    return frames


def _with_client_port(frame: bytes, side: int, port: int) -> bytes:
    at = SPORT_AT if side == 0 else SPORT_AT + 2
    return frame[:at] + port.to_bytes(2, "big") + frame[at + 2 :]


def _records(batches: list[PacketBatch], cfg: EngineConfig) -> list[dict[str, Any]]:
    e = Engine(cfg)
    out: list[dict[str, Any]] = []
    for b in batches:
        out += e.process(b).records
    return out + list(e.finish("end_of_input"))


def _arrivals(orders: list[list[int]], frames: list[bytes], sides: list[int], batch: int) -> list[PacketBatch]:
    """Flow i (client port 20000 + i) sends ``frames`` in the order ``orders[i]``; the j-th packet
    of every flow arrives at time 1000 + j / 100 (so the timestamps are those of in-order arrival)."""
    out, stamps = [], []
    for j in range(len(frames)):
        for i, order in enumerate(orders):
            k = order[j]
            out.append(_with_client_port(frames[k], sides[k], 20000 + i))
            stamps.append(1000.0 + j / 100)
    return [PacketBatch.from_frames(out[lo : lo + batch], stamps[lo : lo + batch]) for lo in range(0, len(out), batch)]


def _same_record(r: dict[str, Any], ref: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    skip = {"src_port", "community_id", *ignore}
    return sorted(k for k in ref.keys() | r.keys() if k not in skip and r.get(k) != ref.get(k))


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_every_order_of_a_conversation_gives_the_in_order_record(name: str) -> None:
    """All n! arrival orders of each conversation (40,320 for 8 packets), one flow each: every
    record equals the in-order one, in one batch and cut into batches that split the flows."""
    steps = CONVERSATIONS[name]
    frames = conversation(steps)
    sides = [s for s, _, _ in steps]
    orders = [list(p) for p in itertools.permutations(range(len(frames)))]
    cfg = EngineConfig()
    for batch in (len(orders) * len(frames), 997):
        recs = _records(_arrivals(orders, frames, sides, batch), cfg)
        assert len(recs) == len(orders)
        by_port = {r["src_port"]: r for r in recs}
        ref = by_port[20000]  # the identity order
        assert (ref["src_ip"], ref["dest_ip"], ref["dest_port"]) == (C, S, SERVER_PORT)
        assert not ref["history"].startswith("^")
        bad = [(orders[p - 20000], diff) for p, r in by_port.items() if (diff := _same_record(r, ref))]
        assert not bad, (ref["history"], len(bad), bad[:3])


@pytest.mark.parametrize("name", ["request-response", "reset"])
def test_the_numpy_path_places_late_packets_as_the_c_loop_does(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample of the orders through the numpy fallback (which handles flows with late packets
    one packet at a time): the same records as the C loop, byte for byte."""
    steps = CONVERSATIONS[name]
    frames = conversation(steps)
    sides = [s for s, _, _ in steps]
    rng = np.random.default_rng(7)
    orders = [list(range(len(frames)))] + [list(rng.permutation(len(frames))) for _ in range(600)]
    batches = _arrivals(orders, frames, sides, 113)
    assert native.available()
    with_c = _records(batches, EngineConfig())
    monkeypatch.setattr(native, "available", lambda: False)
    with_numpy = _records(batches, EngineConfig())
    assert with_c == with_numpy
    ref = with_c[0]
    assert all(not _same_record(r, ref) for r in with_c)


def test_synack_before_its_syn_and_fin_before_the_last_data() -> None:
    """The issue's cases, one batch and one packet a batch: the SYN-ACK first, the client's FIN
    before the server's data, the data before the handshake's last ACK."""
    frames = conversation(CONVERSATIONS["request-response"])
    in_order = _records([PacketBatch.from_frames(frames, [1.0 + i / 100 for i in range(8)])], EngineConfig())[0]
    assert in_order["history"] == "ShADdFf" and in_order["conn_state"] == "SF"
    synack_first, fin_first, data_first = [1, 0, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 5, 4, 6, 7], [0, 1, 3, 2, 4, 5, 6, 7]
    for order in (synack_first, fin_first, data_first, [4, 6, 1, 7, 5, 3, 2, 0]):
        arrived = [frames[k] for k in order]
        for size in (1, 8):
            batches = [PacketBatch.from_frames(arrived[i : i + size], [1.0 + (i + j) / 100 for j in range(size)])
                       for i in range(0, 8, size)]
            (r,) = _records(batches, EngineConfig())
            assert r == in_order, order


def test_a_synack_that_answers_another_syn_proves_nothing() -> None:
    """Numbers that do not show the SYN came first leave the arrival order (Zeek's flip, '^')."""
    frames = conversation(CONVERSATIONS["request-response"])
    other = pf.tcp(C, S, 40000, SERVER_PORT, SYN, seq=123456)  # not the SYN the SYN-ACK acknowledges
    (r,) = _records([PacketBatch.from_frames([frames[1], other, *frames[2:]], [1.0 + i for i in range(8)])],
                    EngineConfig())
    assert r["history"].startswith("^h") and (r["src_ip"], r["src_port"]) == (C, 40000)


def test_the_window_in_time_is_the_close_linger() -> None:
    """A packet late past the close (FIN both ways) joins the record while tcp_close_linger
    runs (the timeouts are checked each expire_interval of packet time: up to one more), and
    starts a record of its own after it."""
    frames = conversation(CONVERSATIONS["request-response"])
    early = [frames[k] for k in (0, 1, 2, 3, 5, 6, 7)]  # the server's data (4) comes late
    for late_by, n_records in ((1.9, 1), (3.1, 2)):
        ts = [1.0 + i * 0.01 for i in range(7)]
        batches = [PacketBatch.from_frames(early, ts), PacketBatch.from_frames([frames[4]], [ts[-1] + late_by])]
        recs = _records(batches, EngineConfig(tcp_close_linger=2.0, expire_interval=1.0))
        assert len(recs) == n_records
        if n_records == 1:
            assert recs[0]["history"] == "ShADdFf" and recs[0]["packets_out"] == 3
        else:
            # a flow of its own, seen midstream: its first packet's sender is its originator
            assert recs[0]["end_reason"] == "tcp_close" and recs[0]["history"] == "ShADFf"
            assert recs[1]["history"] == "D" and recs[1]["src_ip"] == S


def _generated_arrivals(mode: str, seed: int) -> tuple[list[PacketBatch], list[PacketBatch], set[int]]:
    """Generated traffic in order, and with each TCP flow's packets permuted (``full``: any
    order; ``interleave``: each direction in its order, the two interleaved anew), each flow's
    packets taking its in-order arrival times in turn. Also the TCP flows' client ports."""
    tr = generate(TrafficSpec(n_packets=12_000, n_flows=700, seed=seed))
    buf, start, length = tr._assemble(np.arange(tr.count))
    frames = [bytes(buf[s : s + n]) for s, n in zip(start.tolist(), length.tolist())]
    rng = np.random.default_rng(seed)
    per_flow: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(tr.flow.tolist()):
        per_flow[f].append(i)
    arrival = np.empty(tr.count, np.int64)
    tcp_ports = set()
    for f, idx in per_flow.items():
        if tr.flows.proto[f] != 6:
            arrival[idx] = idx
            continue
        tcp_ports.add(int(tr.flows.client_port[f]))
        if mode == "full":
            order = [idx[k] for k in rng.permutation(len(idx))]
        else:
            sides = [[i for i in idx if tr.direction[i] == s] for s in (0, 1)]
            it = [iter(s) for s in sides]
            order = [next(it[s]) for s in rng.permutation([0] * len(sides[0]) + [1] * len(sides[1]))]
        arrival[idx] = order  # the k-th arrival slot of the flow gets the packet order[k]
    ts = tr.ts

    def batches(which: np.ndarray, size: int) -> list[PacketBatch]:
        return [PacketBatch.from_frames([frames[k] for k in which[lo : lo + size]], ts[lo : lo + size])
                for lo in range(0, which.size, size)]

    return batches(np.arange(tr.count), 4096), batches(arrival, 1500), tcp_ports


@pytest.mark.parametrize("mode", ["full", "interleave"])
def test_generated_tcp_flows_in_any_order_give_their_in_order_records(mode: str) -> None:
    """Generated traffic (HTTP, TLS, other TCP, scans; FIN, RST and open endings) with every TCP
    flow's packets permuted: each record equals the in-order one, except the payload-derived
    fields, which follow arrival order within a direction (excerpts; none moves when only the
    two directions interleave anew) and across them (application metadata: a response before
    its request)."""
    in_order, permuted, tcp_ports = _generated_arrivals(mode, seed=4 if mode == "full" else 5)
    cfg = EngineConfig(tcp_close_linger=5.0)  # (no flow here lasts longer: every packet is in the window)
    ref = {(r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"], r["vni"]): r for r in _records(in_order, cfg)}
    got = _records(permuted, cfg)
    ignore = ("app",) if mode == "interleave" else ("app", "excerpt_in", "excerpt_out")
    n_tcp = 0
    for r in got:
        key = (r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"], r["vni"])
        assert key in ref, r
        if r["transport"] == "tcp":
            n_tcp += 1
            assert r["src_port"] in tcp_ports or r["dest_port"] in tcp_ports
            assert not [k for k in _same_record(r, ref[key], ignore) if k != "src_port"], (r, ref[key])
        else:
            assert r == ref[key]
    assert len(got) == len(ref) and n_tcp > 300


def test_the_numpy_path_agrees_on_generated_traffic_out_of_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _, permuted, _ = _generated_arrivals("full", seed=6)
    with_c = _records(permuted, EngineConfig())
    monkeypatch.setattr(native, "available", lambda: False)
    assert _records(permuted, EngineConfig()) == with_c
