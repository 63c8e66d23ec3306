"""Packet capture that leads back from a record: the capture policy, the record's ``pcap``
object, the per-file indexes and ``vxmirror extract``, read back with tshark."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import orjson
import pytest

from forwarders import pcap_extract, pcap_index, registry
from forwarders.manager import ForwarderSet
from forwarders.pcap_classic import split_ts
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.flows.community_id import community_id_packed
from receiver.traffic import TrafficSpec, generate
from tests.forwarder_fixtures import stderr_problems, tshark


def run_pipeline(tmp: Path, pcap: dict[str, Any], n_packets: int = 30_000, seed: int = 5, chunk: int = 2048,
                 **spec: Any) -> tuple[list[dict[str, Any]], Any, Path]:
    """Generated traffic through the engine and the pcap forwarder as the service runs them
    (the engine plans the frames, the forwarder writes them): the records, the traffic, the pcap dir."""
    out = tmp / "pcap"
    specs = registry.validate({"pcap": {"directory": str(out), "rotate_seconds": 0, **pcap}}, "test.toml")
    fs = ForwarderSet.from_specs(specs, tmp, worker=0)
    engine = Engine(EngineConfig())
    engine.capture = fs.capture()
    traffic = generate(TrafficSpec(n_packets=n_packets, n_flows=n_packets // 12, seed=seed, chunk=chunk, **spec))
    records: list[dict[str, Any]] = []
    for batch in traffic.batches():
        assert engine.capture is not None
        engine.capture.open = fs.capture_open
        result = engine.process(batch)
        records += list(result.records)
        fs.submit(result, batch)
    records += list(engine.finish("end_of_input"))
    totals = fs.close(60)
    assert totals["pcap"]["dropped"] == 0
    return records, traffic, out


def original_frames(traffic: Any) -> dict[tuple[str, int], list[tuple[int, bytes]]]:
    """The inner frames of the input, per (community_id, VNI), in order: read with dpkt, not the engine."""
    frames: dict[tuple[str, int], list[tuple[int, bytes]]] = defaultdict(list)
    for batch in traffic.batches():
        for i in range(batch.count):
            outer = dpkt.ethernet.Ethernet(batch.frame(i))
            vx = bytes(outer.data.data.data)
            vni = int.from_bytes(vx[4:7], "big")
            inner_bytes = vx[8:]
            eth = dpkt.ethernet.Ethernet(inner_bytes)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                sa, da = ip.src, ip.dst
            else:
                continue
            l4 = ip.data
            sport, dport = getattr(l4, "sport", 0), getattr(l4, "dport", 0)
            if isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
                sport, dport = l4.type, l4.code
            cid = community_id_packed(ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt, sa, da, sport, dport)
            sec, nsec = split_ts(batch.ts[i : i + 1])  # (the writer's rounding)
            ns = int(sec[0]) * 1_000_000_000 + int(nsec[0])
            frames[(cid, vni)].append((ns, inner_bytes))
    return frames


def read_back(path: Path) -> list[tuple[int, int, bytes]]:
    """(ns, wire length, bytes) of every frame of a pcap, after tshark has read it whole."""
    r = tshark(path, "frame.number")
    assert r.returncode == 0 and not stderr_problems(r.stderr), r.stderr
    count = len(r.stdout.split())
    with open(path, "rb") as f:
        frames = [(int(ts * 1_000_000_000), len(buf), buf) for ts, buf in dpkt.pcap.Reader(f)]
    assert len(frames) == count
    return frames


def test_extract_gives_exactly_the_frames_the_record_counts(tmp_path: Path) -> None:
    records, traffic, out = run_pipeline(tmp_path, {"rotate_bytes": 400_000, "keep": []})
    files = sorted(p.name for p in out.iterdir())
    pcaps = [f for f in files if f.endswith(".pcap")]
    assert len(pcaps) >= 5, "expected several rotations"
    assert {f + ".idx" for f in pcaps} == {f for f in files if f.endswith(".idx")}
    originals = original_frames(traffic)
    assert sum(r["pcap"]["packets"] for r in records) == traffic.count
    spanning = 0
    rng = np.random.default_rng(0)
    for j in rng.choice(len(records), 40, replace=False).tolist():
        rec = records[j]
        pc = rec["pcap"]
        assert pc["skipped"] == pc["dropped"] == 0
        assert pc["packets"] == rec["packets_in"] + rec["packets_out"]
        assert set(pc["files"]) <= set(pcaps) and pc["files"]
        spanning += len(pc["files"]) > 1
        dest = tmp_path / f"flow{j}.pcap"
        n = pcap_extract.extract(out, dest, rec["community_id"], rec["vni"])
        assert n == pc["packets"]
        got = read_back(dest)
        want = originals[(rec["community_id"], rec["vni"])]
        assert [(g[0], g[2]) for g in got] == sorted(want, key=lambda w: w[0])
    assert spanning, "some sampled flow should span two files"


def test_extract_command_by_endpoints_and_the_open_file(tmp_path: Path) -> None:
    """The CLI, by --flow in either order; frames of a file still being written (its index log)."""
    records, _traffic, out = run_pipeline(tmp_path, {"rotate_bytes": 1 << 30, "keep": []}, n_packets=6000)
    # make the last file look open again: as it is while the service runs (the .part and its log)
    (pcap,) = [p for p in out.iterdir() if p.name.endswith(".pcap")]
    idx = pcap_index.index_path(pcap)
    entries = []
    z = pcap_index.load(idx)
    for f in range(z["flows"].size):
        a, b = int(z["first"][f]), int(z["first"][f + 1])
        e = np.zeros(b - a, pcap_index.ENTRY)
        for k in pcap_index.KEY_FIELDS:
            e[k] = z["flows"][k][f]
        e["pos"], e["ts"] = z["pos"][a:b], z["ts"][a:b]
        entries.append(e)
    part = pcap.with_name(pcap.name + ".part")
    pcap.rename(part)
    idx.unlink()
    pcap_index.log_path(part).write_bytes(np.concatenate(entries).tobytes())
    rec = next(r for r in records if r["transport"] == "tcp" and r["pcap"]["packets"] > 6)
    for flow in (f"{rec['src_ip']}:{rec['src_port']} {rec['dest_ip']}:{rec['dest_port']} tcp",
                 f"{rec['dest_ip']}:{rec['dest_port']} {rec['src_ip']}:{rec['src_port']} 6"):
        flow = flow if ":" not in rec["src_ip"] else flow.replace(rec["src_ip"], f"[{rec['src_ip']}]").replace(
            rec["dest_ip"], f"[{rec['dest_ip']}]")
        dest = tmp_path / "one.pcap"
        r = subprocess.run([sys.executable, "-m", "receiver.cli", "extract", "--data-dir", str(tmp_path), "--flow",
                            flow, "-o", str(dest)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert len(read_back(dest)) == rec["pcap"]["packets"]
    r = subprocess.run([sys.executable, "-m", "receiver.cli", "extract", "--data-dir", str(tmp_path),
                        "--community-id", "1:AAAAAAAAAAAAAAAAAAAAAAAAAAA=", "-o", str(dest)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "0 frames" in r.stderr


def _tls_flows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "tls" in (r.get("app") or {})]


@pytest.mark.parametrize("past_limit", ["skip", "headers"])
def test_policy_keeps_the_first_packets_of_tls_flows(tmp_path: Path, past_limit: str) -> None:
    keep = [{"app": ["tls"], "packets": 10}]
    records, traffic, out = run_pipeline(tmp_path, {"rotate_bytes": 1 << 30, "keep": keep, "past_limit": past_limit},
                                         mix=[0.1, 0.6, 0.1, 0.1, 0.1])
    originals = original_frames(traffic)
    tls = _tls_flows(records)
    long_tls = [r for r in tls if r["packets_in"] > 10 or r["packets_out"] > 10]
    assert len(long_tls) >= 5, "the mix should have TLS flows longer than 10 packets a direction"
    others = [r for r in records if r not in tls]
    for rec in long_tls[:20] + others[:20]:
        pc = rec["pcap"]
        limited = rec in tls
        want_written = (min(rec["packets_in"], 10) + min(rec["packets_out"], 10)) if limited else (
            rec["packets_in"] + rec["packets_out"])
        total = rec["packets_in"] + rec["packets_out"]
        dest = tmp_path / "flow.pcap"
        n = pcap_extract.extract(out, dest, rec["community_id"], rec["vni"])
        got = read_back(dest)
        want = sorted(originals[(rec["community_id"], rec["vni"])], key=lambda w: w[0])
        if past_limit == "skip":
            assert pc["packets"] == n == want_written and pc["skipped"] == total - want_written
            # the first 10 of each direction: the frames written are the originals minus the rest
            assert all(any(g[2] == w[1] for w in want) for g in got)
            assert [g[2] for g in got] == [w[1] for w in want if any(w[1] == g[2] for g in got)]
        else:
            assert pc["packets"] == n == total and pc["skipped"] == 0
            seen = {True: 0, False: 0}
            for g, w in zip(got, want, strict=True):
                ip = dpkt.ethernet.Ethernet(w[1]).data
                out_dir = socket.inet_ntop(socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET,
                                           ip.src) == rec["src_ip"]
                rank = seen[out_dir]
                seen[out_dir] += 1
                if not limited or rank < 10:
                    assert g[2] == w[1]
                else:  # cut to Ethernet + IP + TCP headers, nothing of the payload
                    assert w[1].startswith(g[2]) and g[1] == len(w[1]) - len(bytes(ip.data.data))
                    assert len(bytes(dpkt.ethernet.Ethernet(g[2]).data.data.data)) == 0


def test_default_policy_saves_tls_bulk_and_records_stay_byte_identical(tmp_path: Path) -> None:
    """The default rules (TLS/QUIC and SSH: 16 frames a direction); the C and Python builders
    agree on the pcap objects."""
    from receiver.flows import encode
    from receiver.flows import records as pyrecords

    records, traffic, _out = run_pipeline(tmp_path, {"rotate_bytes": 300_000}, mix=[0.1, 0.6, 0.1, 0.1, 0.1])
    written = sum(r["pcap"]["packets"] for r in records)
    skipped = sum(r["pcap"]["skipped"] for r in records)
    assert written + skipped == traffic.count and skipped > 0
    for r in _tls_flows(records):
        assert r["pcap"]["packets"] == min(r["packets_in"], 16) + min(r["packets_out"], 16)
    if encode.available():  # the same table rows through both builders
        eng = Engine(EngineConfig())
        eng.capture = ForwarderSet.from_specs(
            registry.validate({"pcap": {"directory": str(tmp_path / "p2"), "rotate_bytes": 300_000}}, "t.toml"),
            tmp_path, worker=0).capture()
        got: list[bytes] = []
        want: list[bytes] = []
        orig = encode.encode_records

        def both(*args: Any) -> Any:
            batch = orig(*args)
            got.extend(batch.lines())
            want.extend(orjson.dumps(r) for r in pyrecords.build_records(*args))
            return batch

        encode_mod = sys.modules["receiver.engine"]
        old = encode_mod.encode_records  # type: ignore[attr-defined]
        encode_mod.encode_records = both  # type: ignore[attr-defined]
        try:
            for batch in traffic.batches():
                eng.process(batch)
            eng.finish("end_of_input")
        finally:
            encode_mod.encode_records = old  # type: ignore[attr-defined]
        assert got and got == want
        assert all(b'"pcap":{"packets":' in line for line in got)


def test_index_grouping_equals_unique_of_the_keys() -> None:
    """The indexes group frames by flow with a lexicographic sort: the same flows as np.unique
    of the structured keys, file order kept within a flow."""
    rng = np.random.default_rng(3)
    n = 5000
    e = np.zeros(n, pcap_index.ENTRY)
    e["pos"] = np.arange(n)
    for k, top in (("vni", 3), ("proto", 3), ("v6", 2), ("a_hi", 2), ("a_lo", 4), ("b_hi", 2), ("b_lo", 4),
                   ("a_port", 3), ("b_port", 3)):
        e[k] = rng.integers(0, top, n)
    e["vni"][rng.random(n) < 0.1] = -1
    flows, inverse, order = pcap_index.group(e)
    keys = np.empty(n, pcap_index.KEY)
    for k in pcap_index.KEY_FIELDS:
        keys[k] = e[k]
    want, want_inv = np.unique(keys, return_inverse=True)
    assert flows.size == want.size
    assert (keys == flows[inverse]).all()
    assert (want[want_inv.reshape(-1)] == keys).all()
    grouped = inverse[order]
    assert (np.diff(grouped) >= 0).all()
    for f in range(flows.size):  # within a flow, the frames in file order
        pos = e["pos"][order][grouped == f]
        assert (np.diff(pos) > 0).all()
