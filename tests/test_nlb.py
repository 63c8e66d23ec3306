"""Two receivers behind a load balancer, end to end on loopback (docs/deploy.md, "Several
receivers behind the NLB"): two `vxmirror serve` processes write to one Kafka topic on the real
Tansu broker; a UDP forwarder in front of them plays the NLB. Several mirror sources (outer
source addresses 127.0.0.2, 127.0.0.3, ...) send generated traffic; like a VXLAN encapsulator
that hashes the inner headers in the order they come, each source picks the outer source port
from the inner flow *and direction*, so the two directions of a flow leave from different ports.

- Source-IP affinity (what deploy/template.yaml sets in nlb mode): every datagram of a source
  goes to one receiver, and the records on the topic are, flow for flow, those one receiver
  makes of the same traffic.
- Outer 5-tuple hashing (the NLB's default): the directions of a flow can land on different
  receivers. The topic then has two half records of such a flow, from different sensors, with
  the same community_id and VNI: the test finds exactly the flows the forwarder split that way,
  which is what the docs tell users to look for.
"""

from __future__ import annotations

import random
import socket
import threading
import zlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from receiver.engine import Engine
from receiver.traffic import Traffic, TrafficSpec, generate
from tests.kafka_fixtures import Tansu, consume_all
from tests.listen_fixtures import Served, metric

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
PORTS_PER_SOURCE = 8  # outer source ports each source spreads its flows over
N_FLOWS = 2500
AFFINITY_VNIS, SPLIT_VNIS = (101, 102, 103), (201, 202, 203)  # the two runs' traffic, told apart by VNI
TOPIC = "nlb-flows"
# the receivers' engine settings: nothing ends before the stop (every record's end_reason is
# "shutdown"), and no application metadata is shed under load: records that do not depend on timing
ENGINE_TOML = "tcp_close_linger = 120.0\nudp_idle_timeout = 120.0\nother_idle_timeout = 120.0\n"
RECEIVER_FIELDS = ("sensor", "ts_start", "ts_end", "duration")  # the receiver's own: name, arrival times


def _ports_below_the_traffic() -> tuple[int, int]:
    """Two free UDP ports under the generated traffic's client ports (32768-61000): a receiver's
    VXLAN and GENEVE ports are the engine's tunnel ports too, and inner UDP to them would be
    decapsulated."""
    found: list[int] = []
    for port in random.sample(range(20000, 32000), 400):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == 2:
            return found[0], found[1]
    raise RuntimeError("no free port")


def _traffic(vnis: tuple[int, ...]) -> Traffic:
    return generate(TrafficSpec(n_packets=30_000, n_flows=N_FLOWS, seed=18, vnis=vnis, truncating_vni=vnis[0] + 98))


def _datagrams(tr: Traffic) -> list[tuple[int, int, bytes]]:
    """(source, outer source port index, VXLAN datagram) per packet, in time order. A flow's source
    is its client's (the mirrored interface); the port comes from a hash of the inner 5-tuple in
    the packet's direction."""
    out = []
    truth = {fl: _truth(tr, fl) for fl in tr.flows.seen().tolist()}
    flow_l, dir_l = tr.flow.tolist(), tr.direction.tolist()
    k = 0
    for buf, start, length in tr.datagrams():
        for s, n in zip(start.tolist(), length.tolist()):
            source, _, ports = truth[flow_l[k]]
            out.append((source, ports[dir_l[k]], bytes(buf[s : s + n])))
            k += 1
    return out


class Balancer(threading.Thread):
    """The load balancer: one UDP socket in, datagrams forwarded to the receivers by a hash of the
    outer source address (``affinity``) or of the outer 5-tuple. Records where each (source
    address, source port) went."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.affinity = True
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.settimeout(0.1)
        self.address = self.rx.getsockname()
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.forwarded = 0
        self.routes: dict[tuple[str, int], int] = {}
        self.done = threading.Event()

    def pick(self, src: tuple[str, int]) -> int:
        dst = f"{self.address[0]} {self.address[1]} udp"
        key = src[0] if self.affinity else f"{src[0]} {src[1]} {dst}"
        return zlib.crc32(key.encode()) % len(self.targets)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                data, src = self.rx.recvfrom(65535)
            except TimeoutError:
                continue
            t = self.routes.setdefault(src, self.pick(src))
            self.tx.sendto(data, self.targets[t])
            self.forwarded += 1

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.rx.close()
        self.tx.close()


def _send(datagrams: list[tuple[int, int, bytes]], balancer: Balancer) -> dict[tuple[int, int], tuple[str, int]]:
    """Send from the sources' sockets (bound to their address and a port each), never more than
    a few hundred datagrams ahead of the forwarder (its socket buffer may be the kernel's
    default); returns the outer (address, port) of each (source, port index)."""
    socks = {}
    for i, addr in enumerate(SOURCES):
        for p in range(PORTS_PER_SOURCE):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((addr, 0))
            socks[i, p] = s
    start = balancer.forwarded
    try:
        for n, (src, port, data) in enumerate(datagrams):
            socks[src, port].sendto(data, balancer.address)
            while n - (balancer.forwarded - start) > 128:
                threading.Event().wait(0.0005)
        return {k: s.getsockname() for k, s in socks.items()}
    finally:
        for s in socks.values():
            s.close()


TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp"}


def _truth(tr: Traffic, fl: int) -> tuple[int, tuple[Any, ...], tuple[int, int]]:
    """Flow ``fl``'s source, its key (as _flow_key), and the outer port indices of its two directions."""
    f = tr.flows
    c, s = (f.client[fl], int(f.client_port[fl])), (f.server[fl], int(f.server_port[fl]))
    ports = tuple(zlib.crc32(f"{a[0]} {a[1]} {b[0]} {b[1]} {f.proto[fl]}".encode()) % PORTS_PER_SOURCE
                  for a, b in ((c, s), (s, c)))
    key = (int(f.vni[fl]) % 100, TRANSPORTS[int(f.proto[fl])], *sorted([c, s]))
    return zlib.crc32(c[0].encode()) % len(SOURCES), key, (ports[0], ports[1])


def _flow_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """A flow's identity whatever its orientation: VNI modulo the run, both endpoints."""
    ends = sorted([(r["src_ip"], r["src_port"]), (r["dest_ip"], r["dest_port"])])
    return (r["vni"] % 100 if r["vni"] is not None else None, r["transport"], *ends)


def _reference(tr: Traffic) -> list[dict[str, Any]]:
    """What one receiver makes of the traffic (the engine alone with the receivers' settings,
    packets in the same order)."""
    e = Engine(replace(Engine().config, tcp_close_linger=120.0, udp_idle_timeout=120.0, other_idle_timeout=120.0))
    out: list[dict[str, Any]] = []
    for b in tr.batches():
        out += e.process(b).records
    return out + list(e.finish("shutdown"))


def _strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in RECEIVER_FIELDS}


@pytest.mark.slow
def test_two_receivers_behind_a_balancer(tmp_path: Path) -> None:
    broker = Tansu().start()
    receivers: list[Served] = []
    balancer: Balancer | None = None
    try:
        kafka = f'[forwarders.kafka]\nbrokers = "{broker.bootstrap}"\ntopic = "{TOPIC}"\nbatch_interval = 0.2\n'
        for name in ("rx-a", "rx-b"):
            (tmp_path / name).mkdir()
            receivers.append(Served(
                tmp_path / name, geneve=False, top_toml=f'sensor = "{name}"\n', wait=False,
                ports=_ports_below_the_traffic(),
                extra_toml=ENGINE_TOML + "[listen]\napp_time_budget = 0.0\n" + kafka,
            ))
        for rx in receivers:
            rx.wait_ready()
        balancer = Balancer([("127.0.0.1", rx.vx_port) for rx in receivers])
        balancer.start()

        # 1. source-IP affinity, then 2. the outer 5-tuple
        affinity, split = _traffic(AFFINITY_VNIS), _traffic(SPLIT_VNIS)
        sent = 0
        target: dict[str, dict[tuple[int, int], int]] = {}  # per run: (source, port index) -> receiver
        for mode, tr in (("affinity", affinity), ("5-tuple", split)):
            balancer.affinity = mode == "affinity"
            balancer.routes.clear()
            datagrams = _datagrams(tr)
            outer = _send(datagrams, balancer)
            sent += len(datagrams)
            received = 0.0
            for _ in range(200):
                received = sum(metric(rx.metrics(), "vxmirror_datagrams_received_total") for rx in receivers)
                if received >= sent:
                    break
                threading.Event().wait(0.1)
            assert received == sent == balancer.forwarded, (received, sent, balancer.forwarded)
            target[mode] = {k: balancer.routes[a] for k, a in outer.items() if a in balancer.routes}
        for rx in receivers:
            assert metric(rx.metrics(), "vxmirror_kernel_drops_total") == 0
            assert rx.stop() == 0, rx.logs()[-3000:]
        # what one receiver makes of the traffic, and the flows the forwarder split in run 2:
        # the records to expect on the topic
        ref = {_flow_key(r): r for r in _reference(affinity)}
        expected = set()
        for fl in split.flows.seen().tolist():
            source, key, (there, back) = _truth(split, fl)
            both_ways = split.flows.packets_c2s[fl] and split.flows.packets_s2c[fl]
            if both_ways and target["5-tuple"][source, there] != target["5-tuple"][source, back]:
                expected.add(key)
        n = 2 * len(ref) + len(expected)
        records = [orjson.loads(m.value()) for m in consume_all(broker.bootstrap, TOPIC, expect=n)]
    finally:
        if balancer is not None:
            balancer.stop()
        for rx in receivers:
            if rx.proc.poll() is None:
                rx.proc.kill()
        broker.stop()

    assert len(records) == n
    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_mode["affinity" if r["vni"] in AFFINITY_VNIS or r["vni"] == AFFINITY_VNIS[0] + 98 else "5-tuple"].append(r)
    assert len(by_mode["affinity"]) + len(by_mode["5-tuple"]) == len(records)

    # 1. affinity: each source on one receiver, both receivers used, records as one receiver's
    assert len(ref) >= 2000
    got = by_mode["affinity"]
    assert len(got) == len(ref) and {r["sensor"] for r in got} == {"rx-a", "rx-b"}
    keyed = {_flow_key(r): r for r in got}
    assert len(keyed) == len(got)
    for key, r in keyed.items():
        assert _strip(r) == _strip(ref[key]), (r, ref[key])
    sensors_of_source: dict[int, set[str]] = defaultdict(set)
    for fl in affinity.flows.seen().tolist():
        source, key, _ = _truth(affinity, fl)
        sensors_of_source[source].add(keyed[key]["sensor"])
    assert len(sensors_of_source) == len(SOURCES) and all(len(s) == 1 for s in sensors_of_source.values())

    # 2. outer 5-tuple: the flows whose two directions the forwarder sent to different receivers
    # are the ones found on the topic as two records of one community_id and VNI, one per sensor
    halves: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in by_mode["5-tuple"]:
        halves[r["community_id"], r["vni"]].append(r)
    found = {_flow_key(rs[0]) for rs in halves.values() if len({r["sensor"] for r in rs}) == 2}
    assert found == expected and len(found) > 100, (len(found), len(expected))
    # joined downstream, the halves add up to the whole flow; apart, each tells only one side
    packets = Counter[tuple[Any, ...]]()
    for r in by_mode["5-tuple"]:
        packets[_flow_key(r)] += r["packets_in"] + r["packets_out"]
    whole = {k: r["packets_in"] + r["packets_out"] for k, r in ref.items()}
    assert all(packets[k] == whole[k] for k in found)
    assert {_flow_key(rs[0]) for rs in halves.values() if len(rs) == 1} == set(whole) - found
    one_sided = [rs for rs in halves.values() if len(rs) == 2 and rs[0]["transport"] == "tcp"]
    assert one_sided and all(r["packets_out"] == 0 for rs in one_sided for r in rs)
