"""The synthetic traffic generator, checked by reading its pcaps back with tshark."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from receiver.capture import open_capture
from receiver.packets import Layer
from receiver.traffic import (
    DNS,
    FLOW_TYPE_NAMES,
    HTTP,
    ICMP,
    SCAN,
    TCP_OTHER,
    TLS,
    Traffic,
    TrafficSpec,
    flood,
    generate,
    realistic,
    write_pcap,
)

FIELDS = [
    "frame.len",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.len",
    "ipv6.plen",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "vxlan.vni",
    "vlan.id",
    "tls.handshake.extensions_server_name",
    "http.host",
    "dns.qry.name",
]


def tshark_rows(path: Path) -> list[dict[str, list[str]]]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=;"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t")
        rows.append({f: (c.split(";") if c else []) for f, c in zip(FIELDS, cols)})
    return rows


def inner_key(r: dict[str, list[str]]) -> tuple[tuple[str, int], tuple[str, int], int]:
    src = r["ipv6.src"][-1] if r["ipv6.src"] else r["ip.src"][-1]
    dst = r["ipv6.dst"][-1] if r["ipv6.dst"] else r["ip.dst"][-1]
    if r["tcp.srcport"]:
        return (src, int(r["tcp.srcport"][0])), (dst, int(r["tcp.dstport"][0])), 6
    return (src, int(r["udp.srcport"][-1])), (dst, int(r["udp.dstport"][-1])), 17


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("traffic") / "mix.pcap"
    traffic = write_pcap(path, n_packets=20_000, n_flows=400, seed=11)
    return path, traffic


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    digests = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_pcap(tmp_path / f"{name}.pcap", n_packets=3_000, n_flows=80, seed=seed)
        digests.append(hashlib.sha256((tmp_path / f"{name}.pcap").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_tshark_sees_every_flow_with_the_true_counts(mix: tuple[Path, object]) -> None:
    path, traffic = mix
    truth = traffic.flows  # type: ignore[attr-defined]
    rows = tshark_rows(path)
    assert len(rows) == 20_000
    pkts: dict[tuple[object, object, int], int] = Counter()
    ipbytes: dict[tuple[object, object, int], int] = Counter()
    for r in rows:
        k = inner_key(r)
        pkts[k] += 1
        ipbytes[k] += int(r["ip.len"][-1]) if not r["ipv6.plen"] else int(r["ipv6.plen"][-1]) + 40
    seen = truth.seen()
    assert len(seen) == truth.count  # 20k packets over 400 flows: every flow appears
    for f in seen.tolist():
        c = (truth.client[f], int(truth.client_port[f]))
        s = (truth.server[f], int(truth.server_port[f]))
        p = int(truth.proto[f])
        assert pkts.pop((c, s, p), 0) == truth.packets_c2s[f]
        assert pkts.pop((s, c, p), 0) == truth.packets_s2c[f]
        assert ipbytes[(c, s, p)] == truth.ip_bytes_c2s[f]
        assert ipbytes[(s, c, p)] == truth.ip_bytes_s2c[f]
    assert not pkts  # no packet outside the known flows


def test_outer_headers_are_aws_vxlan(mix: tuple[Path, object]) -> None:
    path, traffic = mix
    spec = traffic.spec  # type: ignore[attr-defined]
    rows = tshark_rows(path)
    ports: dict[frozenset[object], set[int]] = defaultdict(set)
    for r in rows:
        assert r["udp.dstport"][0] == "4789"
        assert int(r["vxlan.vni"][0]) in (*spec.vnis, spec.truncating_vni)
        a, b, _ = inner_key(r)
        ports[frozenset((a, b))].add(int(r["udp.srcport"][0]))
    # one outer source port per flow, both directions alike; spread over many ports
    assert all(len(p) == 1 for p in ports.values())
    distinct = {next(iter(p)) for p in ports.values()}
    assert len(distinct) > 0.9 * len(ports)
    assert all(32768 <= p < 61000 for p in distinct)


def test_application_first_packets_parse(mix: tuple[Path, object]) -> None:
    path, traffic = mix
    truth = traffic.flows  # type: ignore[attr-defined]
    rows = tshark_rows(path)
    snis = {v for r in rows for v in r["tls.handshake.extensions_server_name"]}
    hosts = {v for r in rows for v in r["http.host"]}
    qnames = {v for r in rows for v in r["dns.qry.name"]}
    whole = truth.vni != traffic.spec.truncating_vni  # type: ignore[attr-defined]
    want_sni = {truth.sni[f] for f in np.flatnonzero(whole & (truth.flow_type == TLS))}
    want_host = {truth.http_host[f] for f in np.flatnonzero(whole & (truth.flow_type == HTTP))}
    want_q = {truth.dns_query[f] for f in np.flatnonzero(whole & (truth.flow_type == DNS))}
    assert want_sni and want_sni <= snis
    assert want_host and want_host <= hosts
    assert want_q and want_q <= qnames


def test_mix_has_handshakes_teardowns_vlans_ipv6_truncation_and_a_heavy_tail(mix: tuple[Path, object]) -> None:
    path, traffic = mix
    truth = traffic.flows  # type: ignore[attr-defined]
    spec = traffic.spec  # type: ignore[attr-defined]
    rows = tshark_rows(path)
    flags = Counter(r["tcp.flags"][0] for r in rows if r["tcp.flags"])
    assert flags["0x0002"] > 100 and flags["0x0012"] > 100  # SYN, SYN-ACK
    assert flags["0x0011"] > 100 and flags["0x0004"] + flags["0x0014"] > 0  # FIN-ACK, RST
    vlan_rows = sum(1 for r in rows if r["vlan.id"])
    v6_rows = sum(1 for r in rows if r["ipv6.src"])
    assert 0 < vlan_rows < len(rows) * 0.3
    assert 0 < v6_rows < len(rows) * 0.4
    sizes = np.sort(truth.packets_c2s + truth.packets_s2c)[::-1]
    assert np.median(sizes) <= 20
    assert sizes[: len(sizes) // 50].sum() > 0.3 * sizes.sum()  # the top 2 % carry > 30 %
    frame_lens = np.array([int(r["frame.len"][0]) for r in rows])
    assert frame_lens.min() >= 100 and frame_lens.max() <= 1514 + 50
    # truncated session: inner IP claims more than the frame holds, outer lengths agree with the frame
    trunc = [r for r in rows if int(r["vxlan.vni"][0]) == spec.truncating_vni]
    assert trunc
    assert all(int(r["frame.len"][0]) <= 50 + spec.truncate_to for r in trunc)
    assert any(r["ip.len"] and int(r["ip.len"][-1]) + 14 > spec.truncate_to for r in trunc)
    assert all(int(r["ip.len"][0]) == int(r["frame.len"][0]) - 14 for r in rows)


def test_batches_match_the_pcap(mix: tuple[Path, object]) -> None:
    path, traffic = mix
    # the payload filler depends on the chunk layout: the same spec gives the same bytes
    frames = [b.frame(i) for b in traffic.batches() for i in range(b.count)]
    with open_capture(path) as cap:
        read = [b.frame(i) for b in cap.batches(4096) for i in range(b.count)]
        assert all(b.layer == Layer.ETHERNET for b in cap.batches(4096))
    assert frames == read
    dgrams = [
        buf[s : s + n].tobytes()
        for buf, st, ln in traffic.datagrams()
        for s, n in zip(st.tolist(), ln.tolist())
    ]
    assert [f[42:] for f in frames] == dgrams
    small = generate(TrafficSpec(n_packets=20_000, n_flows=400, seed=11, chunk=7_000))
    assert sum(b.count for b in small.batches()) == 20_000
    assert [b.count for b in small.batches()] == [7_000, 7_000, 6_000]


def test_write_datagrams_records(tmp_path: Path) -> None:
    traffic = generate(TrafficSpec(n_packets=500, n_flows=20, seed=2))
    n = traffic.write_datagrams(tmp_path / "d.bin")
    data = (tmp_path / "d.bin").read_bytes()
    off, got = 0, []
    while off < len(data):
        ln = int.from_bytes(data[off : off + 2], "little")
        got.append(data[off + 2 : off + 2 + ln])
        off += 2 + ln
    assert n == 500 == len(got)
    assert all(d[0] == 0x08 for d in got)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        generate(TrafficSpec(n_packets=0))
    with pytest.raises(ValueError):
        generate(TrafficSpec(truncate_to=60))
    with pytest.raises(ValueError):
        generate(TrafficSpec(mix=(1.0, 1.0)))  # five to seven shares
    with pytest.raises(ValueError):
        generate(TrafficSpec(mix=(1.0, 1.0, 1.0, 1.0, -1.0)))


# -- the named shapes: the realistic mix and the flood ------------------------------------------


def tshark_count(path: Path, display_filter: str) -> int:
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Traffic]:
    path = tmp_path_factory.mktemp("traffic") / "realistic.pcap"
    traffic = generate(realistic(20_000, seed=4))
    traffic.write_pcap(path)
    return path, traffic


def test_realistic_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    digests = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(realistic(4_000, seed=seed)).write_pcap(tmp_path / f"{name}.pcap")
        digests.append(hashlib.sha256((tmp_path / f"{name}.pcap").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_realistic_flow_sizes_are_heavy_tailed_around_15(real: tuple[Path, Traffic]) -> None:
    _path, traffic = real
    truth = traffic.flows
    sizes = (truth.packets_c2s + truth.packets_s2c)[truth.seen()]
    assert traffic.count == 20_000 and sizes.sum() == 20_000
    assert 14 <= sizes.mean() <= 16
    assert np.median(sizes) <= 4  # most flows a few packets
    assert np.mean(sizes <= 2) > 0.4
    assert (sizes > 100).sum() >= 5  # and a few long ones
    top = np.sort(sizes)[::-1]
    assert top[: len(top) // 100].sum() > 0.25 * top.sum()  # the top 1 % carry over a quarter
    types = Counter(truth.flow_type[truth.seen()].tolist())
    assert all(types[t] > 0 for t in range(len(FLOW_TYPE_NAMES)))
    assert types[DNS] == max(types.values())
    assert all((sizes[truth.flow_type[truth.seen()] == t] <= 2).all() for t in (DNS, SCAN))
    assert len(set(truth.vni.tolist())) >= 3


def test_realistic_dns_http_tls_icmp_and_scans_decode_in_tshark(real: tuple[Path, Traffic]) -> None:
    path, traffic = real
    truth = traffic.flows
    seen = truth.seen()
    sizes = truth.packets_c2s + truth.packets_s2c

    def packets_of(flow_type: int) -> int:
        return int(sizes[truth.flow_type == flow_type].sum())

    def flows_of(flow_type: int, at_least: int = 1) -> np.ndarray:
        return np.intersect1d(seen, np.flatnonzero((truth.flow_type == flow_type) & (sizes >= at_least)))

    assert tshark_count(path, "dns") == packets_of(DNS)  # every DNS packet, queries and answers
    assert tshark_count(path, "(dns || tls || icmp) && _ws.malformed") == 0
    rows = tshark_rows(path)
    qnames = {v for r in rows for v in r["dns.qry.name"]}
    snis = {v for r in rows for v in r["tls.handshake.extensions_server_name"]}
    hosts = {v for r in rows for v in r["http.host"]}
    assert {truth.dns_query[f] for f in flows_of(DNS)} <= qnames
    whole = truth.vni != traffic.spec.truncating_vni
    assert {truth.sni[f] for f in np.intersect1d(flows_of(TLS, 4), np.flatnonzero(whole))} <= snis
    assert {truth.http_host[f] for f in np.intersect1d(flows_of(HTTP, 4), np.flatnonzero(whole))} <= hosts
    # every TLS flow that got as far answers with a TLS 1.3 ServerHello (the 5th packet)
    assert tshark_count(path, "tls.handshake.type == 2") == len(np.intersect1d(flows_of(TLS, 5),
                                                                               np.flatnonzero(whole)))
    assert tshark_count(path, "tls.handshake.type == 2 && tls.handshake.extensions.supported_version == 0x0304") > 0
    # scans: a SYN answered by RST-ACK with sequence 0, or unanswered
    assert tshark_count(path, "tcp.flags == 0x014 && tcp.seq_raw == 0") == len(flows_of(SCAN, 2))
    assert tshark_count(path, "icmp.type == 8 || icmp.type == 0") == packets_of(ICMP)
    assert tshark_count(path, "icmp.checksum.status == 1") == packets_of(ICMP)  # checksums correct


def test_flood_is_a_syn_scan(tmp_path: Path) -> None:
    traffic = generate(flood(3_000, seed=2))
    truth = traffic.flows
    sizes = (truth.packets_c2s + truth.packets_s2c)[truth.seen()]
    assert traffic.count == 3_000 and set(sizes.tolist()) == {1, 2} and 1.6 < sizes.mean() < 1.95
    assert set(truth.flow_type.tolist()) == {SCAN}
    path = tmp_path / "flood.pcap"
    traffic.write_pcap(path)
    flags = Counter(r["tcp.flags"][0] for r in tshark_rows(path))
    assert flags == {"0x0002": truth.seen().size, "0x0014": int((sizes == 2).sum())}


def test_vxmirror_read_gives_a_record_per_flow_of_the_mix(real: tuple[Path, Traffic], tmp_path: Path) -> None:
    path, traffic = real
    out = tmp_path / "flows.jsonl"
    subprocess.run([sys.executable, "-m", "receiver.cli", "read", str(path), "-o", str(out), "--no-progress",
                    "--quiet"], check=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    truth = traffic.flows
    assert len(records) == truth.seen().size
    assert sum(r["packets_in"] + r["packets_out"] for r in records) == traffic.count
    want = Counter({"tcp": 0, "udp": 0, "icmp": 0})
    for t in truth.flow_type[truth.seen()].tolist():
        want["tcp" if t in (HTTP, TLS, TCP_OTHER, SCAN) else "icmp" if t == ICMP else "udp"] += 1
    assert Counter(r["transport"] for r in records) == want
