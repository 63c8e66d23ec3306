"""`vxmirror replay`: what arrives on a loopback socket is what AWS mirroring would send."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from receiver.replay import DEFAULT_VNI, parse_hostport, replay, replay_batches
from receiver.traffic import TrafficSpec, generate, write_pcap
from tests.capture_fixtures import Rec, pcap_bytes
from tests.replay_fixtures import Collector

ZEEK = Path(__file__).resolve().parents[2] / "shared" / "captures" / "zeek"
GET = ZEEK / "http-get" / "get.pcap"
VXLAN_HTTP = ZEEK / "vxlan-encapsulated-http" / "vxlan-encapsulated-http.pcap"
GENEVE = ZEEK / "geneve" / "geneve.pcap"
TRUNC = ZEEK / "geneve-vxlan-dns-truncated" / "geneve-vxlan-dns-truncated.pcap"


@pytest.fixture
def rx() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def frames_of(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]


def test_plain_frames_are_wrapped_in_vxlan_with_one_source_port_per_flow(rx: Collector) -> None:
    stats = replay([GET], to=("127.0.0.1", rx.port))
    frames = frames_of(GET)
    got = rx.wait(len(frames))
    assert stats.sent == stats.wrapped == len(frames) == len(got)
    assert stats.skipped == {}
    vni_hdr = bytes([0x08, 0, 0, 0]) + DEFAULT_VNI.to_bytes(3, "big") + b"\0"
    assert [d for d, _ in got] == [vni_hdr + f for f in frames]
    assert stats.bytes == sum(len(d) for d, _ in got)
    # one TCP connection, both directions: one outer source port
    assert len({port for _, port in got}) == 1


def test_vni_option_and_flows_spread_over_source_ports(rx: Collector, tmp_path: Path) -> None:
    # 200 UDP flows in plain Ethernet frames: wrapped with VNI 77, spread over the socket pool
    recs = []
    for i in range(200):
        pkt = dpkt.ethernet.Ethernet(
            src=b"\x02" * 6,
            dst=b"\x04" * 6,
            data=dpkt.ip.IP(
                src=bytes([10, 0, 0, 1]),
                dst=bytes([10, 0, 1, i]),
                p=17,
                data=dpkt.udp.UDP(sport=1000 + i, dport=53, data=b"x" * 20),
            ),
        )
        recs.append(Rec(1, i, bytes(pkt)))
    (tmp_path / "u.pcap").write_bytes(pcap_bytes(recs))
    stats = replay([tmp_path / "u.pcap"], to=("127.0.0.1", rx.port), vni=77, sockets=8)
    got = rx.wait(200)
    assert stats.sent == len(got) == 200
    assert all(d[:8] == b"\x08\0\0\0\0\0\x4d\0" for d, _ in got)
    assert len({p for _, p in got}) >= 6  # 200 flows over 8 sockets


def test_encapsulated_datagrams_go_as_they_are_and_geneve_to_its_port(tmp_path: Path) -> None:
    vx, gn = Collector(), Collector()
    try:
        stats = replay([VXLAN_HTTP, GENEVE], to=("127.0.0.1", vx.port), geneve_to=("127.0.0.1", gn.port))
        want_vx = [bytes(dpkt.ethernet.Ethernet(f).data.data.data) for f in frames_of(VXLAN_HTTP)]
        want_gn = [bytes(dpkt.ethernet.Ethernet(f).data.data.data) for f in frames_of(GENEVE)]
        got_vx, got_gn = vx.wait(len(want_vx)), gn.wait(len(want_gn))
    finally:
        vx.close()
        gn.close()
    assert stats.encapsulated == stats.sent == 18 and stats.wrapped == 0
    assert [d for d, _ in got_vx] == want_vx  # the 9100-byte jumbo frame included
    assert [d for d, _ in got_gn] == want_gn
    # GENEVE: both directions of the inner ICMP flow leave from one port
    assert len({p for _, p in got_gn}) == 1


def test_geneve_without_a_target_is_counted_not_sent(rx: Collector) -> None:
    stats = replay([GENEVE, GET], to=("127.0.0.1", rx.port))
    got = rx.wait(stats.sent)
    assert stats.skipped == {"geneve_without_target": 6}
    assert stats.sent == len(got) == len(frames_of(GET))


def test_snapped_datagrams_are_sent_as_captured_and_counted(rx: Collector) -> None:
    stats = replay([TRUNC], to=("127.0.0.1", 4789 + 0), geneve_to=("127.0.0.1", rx.port))
    got = rx.wait(2)
    assert stats.sent == 2 and stats.truncated == 2
    assert [len(d) for d, _ in got] == [176 - 42, 176 - 42]


def test_raw_ip_and_cooked_captures_get_an_ethernet_header(rx: Collector, tmp_path: Path) -> None:
    ip4 = bytes(dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, data=dpkt.udp.UDP(sport=5, dport=6)))
    ip6 = bytes(
        dpkt.ip6.IP6(
            src=b"\xfd" + b"\0" * 15,
            dst=b"\xfd" + b"\0" * 14 + b"\x02",
            nxt=17,
            hlim=64,
            data=dpkt.udp.UDP(sport=5, dport=6),
        )
    )
    (tmp_path / "raw.pcap").write_bytes(pcap_bytes([Rec(1, 0, ip4), Rec(1, 1, ip6)], linktype=101))
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip4
    (tmp_path / "sll.pcap").write_bytes(pcap_bytes([Rec(1, 0, sll)], linktype=113))
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 1, 1, 0, 6, b"\x02" * 8) + ip6  # tcpdump -i any since 4.99
    (tmp_path / "sll2.pcap").write_bytes(pcap_bytes([Rec(1, 0, sll2)], linktype=276))
    stats = replay([tmp_path / "raw.pcap", tmp_path / "sll.pcap", tmp_path / "sll2.pcap"], to=("127.0.0.1", rx.port))
    got = [d for d, _ in rx.wait(4)]
    assert stats.sent == stats.wrapped == 4
    assert [d[8 + 12 : 8 + 14] for d in got] == [b"\x08\x00", b"\x86\xdd", b"\x08\x00", b"\x86\xdd"]
    assert [d[22:] for d in got] == [ip4, ip6, ip4, ip6]


def test_runts_are_counted_and_loop_repeats(rx: Collector, tmp_path: Path) -> None:
    (tmp_path / "r.pcap").write_bytes(pcap_bytes([Rec(1, 0, b"\x01" * 10)]))
    stats = replay([tmp_path / "r.pcap", GET], to=("127.0.0.1", rx.port), loop=3)
    got = rx.wait(3 * 14)
    assert stats.skipped == {"runt": 3}
    assert stats.sent == len(got) == 3 * len(frames_of(GET))


def test_generated_mix_arrives_complete_and_in_flow_order(rx: Collector, tmp_path: Path) -> None:
    traffic = write_pcap(tmp_path / "mix.pcap", n_packets=4_000, n_flows=100, seed=4)
    stats = replay([tmp_path / "mix.pcap"], to=("127.0.0.1", rx.port), pps=40_000)
    got = rx.wait(4_000)
    assert stats.sent == stats.encapsulated == len(got) == 4_000
    want = [b.frame(i)[42:] for b in traffic.batches() for i in range(b.count)]
    assert sorted(d for d, _ in got) == sorted(want)
    # per flow (outer source port = flow), the order of the capture is kept
    per_port: dict[int, list[bytes]] = defaultdict(list)
    for d, p in got:
        per_port[p].append(d)
    pos: dict[bytes, list[int]] = defaultdict(list)  # identical datagrams exist (IPv6 duplicate ACKs)
    for i, d in enumerate(want):
        pos[d].append(i)
    for seq in per_port.values():
        idx = [pos[d].pop(0) for d in seq]
        assert idx == sorted(idx)


def test_rate_limit_holds_the_rate_down(rx: Collector) -> None:
    traffic = generate(TrafficSpec(n_packets=1_000, n_flows=30, seed=9))
    stats = replay_batches(traffic.batches(), to=("127.0.0.1", rx.port), pps=2_000)
    rx.wait(1_000)
    assert stats.sent == 1_000
    # a lower bound only (a slow machine may take longer): 1000 at 2000/s is 0.5 s, less the burst
    assert stats.elapsed >= 0.4


def test_ipv6_target(tmp_path: Path) -> None:
    c = Collector("::1")
    try:
        stats = replay([GET], to=("::1", c.port))
        got = c.wait(14)
    finally:
        c.close()
    assert stats.sent == len(got) == 14


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:4789") == ("127.0.0.1", 4789)
    assert parse_hostport("[::1]:6081") == ("::1", 6081)
    assert parse_hostport("localhost", 4789) == ("localhost", 4789)
    for bad in ("127.0.0.1", "127.0.0.1:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        replay([GET], to=("127.0.0.1", 9), vni=1 << 24)
    with pytest.raises(ValueError):
        replay([GET], to=("127.0.0.1", 9), pps=0)
    with pytest.raises(ValueError):
        replay([GET], to=("127.0.0.1", 9), loop=0)


def test_cli_prints_counts_and_names_bad_files(rx: Collector, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "replay",
            str(GET),
            "--to",
            f"127.0.0.1:{rx.port}",
            "--loop",
            "2",
            "--vni",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sent"] == 28 and out["wrapped"] == 28 and out["skipped"] == {}
    assert len(rx.wait(28)) == 28
    (tmp_path / "junk.pcap").write_bytes(b"this is not a capture")
    r = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "replay", str(tmp_path / "junk.pcap"), "--to", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "junk.pcap" in r.stderr and "not a pcap" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "replay", str(GET), "--to", "nowhere"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
