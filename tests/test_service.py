"""`vxmirror serve` end to end: replayed traffic in, flow records out, metrics, signals, workers."""

from __future__ import annotations

import collections
import gzip
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from receiver.capture.read import read_records
from receiver.config.engine import EngineConfig
from tests.listen_fixtures import (
    Served,
    ether,
    geneve,
    ipv4,
    metric,
    scrape,
    send_all,
    tcp,
    udp,
    udp_flow_datagrams,
    vxlan,
)
from tests.zeeklogs import ZEEK_DIR

ZEEK = ZEEK_DIR  # ../shared/captures/zeek beside the checkout
SAMPLES = Path(__file__).resolve().parents[1] / "receiver" / "data" / "samples"
VNI = 1  # what replay puts on plain frames


def zeek_traces() -> list[Path]:
    base = ZEEK if ZEEK.is_dir() else SAMPLES
    return sorted(p for p in base.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def served_records(data_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((data_dir / "flows").rglob("*")):
        if not f.is_file() or ".json" not in f.name:
            continue
        raw = gzip.decompress(f.read_bytes()) if ".gz" in f.suffixes else f.read_bytes()
        out += [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    return out


def offline_records(paths: list[Path], cfg: EngineConfig) -> list[dict[str, Any]]:
    """What `vxmirror read` gives for the same files (its library call)."""
    return [dict(r) for r in read_records(paths, cfg)]


def by_flow(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
    """Per flow (VNI of plain frames normalised to replay's), summed counts per direction."""
    out: dict[tuple[Any, ...], list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        key = (r["vni"] if r["vni"] is not None else VNI, r["transport"], r["src_ip"], r["src_port"],
               r["dest_ip"], r["dest_port"])
        c = out[key]
        c[0] += r["packets_out"]
        c[1] += r["packets_in"]
        c[2] += r["bytes_out"]
        c[3] += r["bytes_in"]
    return dict(out)


def wait_received(srv: Served, n: int) -> str:
    return srv.wait_metric("vxmirror_datagrams_received_total", n)


@pytest.fixture
def served(tmp_path: Path) -> Any:
    started: list[Served] = []

    def start(**kw: Any) -> Served:
        s = Served(tmp_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def test_end_to_end_same_records_as_read(served: Any, tmp_path: Path) -> None:
    from receiver.replay import replay
    from receiver.traffic import write_pcap

    mix = tmp_path / "mix.pcap"
    write_pcap(mix, n_packets=20_000, n_flows=600, seed=3)
    traces = [*zeek_traces(), mix]
    srv = served(workers=1, extra_toml="[listen]\nslot_size = 16384\n")
    stats = replay(traces, to=("127.0.0.1", srv.vx_port), geneve_to=("127.0.0.1", srv.gn_port), pps=40_000, vni=VNI)
    assert stats.sent > 20_000
    text = wait_received(srv, stats.sent)
    assert metric(text, "vxmirror_kernel_drops_total") == 0
    assert srv.stop() == 0, srv.logs()
    live = served_records(srv.data_dir)
    assert live and {r["end_reason"] for r in live} <= {"shutdown", "idle", "tcp_close", "active"}
    assert any(r["end_reason"] == "shutdown" for r in live)
    # replay sends each trace's packets back to back: a gap within a trace longer than an idle
    # timeout (an IGMP report repeated after 137 s in one) splits a flow only offline
    cfg = EngineConfig(vxlan_ports=[4789, srv.vx_port], geneve_ports=[6081, srv.gn_port], other_idle_timeout=600.0)
    offline = offline_records(traces, cfg)
    got, want = by_flow(live), by_flow(offline)
    assert set(got) == set(want)
    assert got == want
    assert len(live) == len(offline)


def test_two_workers_keep_each_flow_whole(served: Any) -> None:
    srv = served(workers=2)
    flows = [(f"10.{k // 200}.{k % 200}.1", f"172.16.{k % 50}.{k // 50 + 1}", 20000 + k) for k in range(300)]
    datagrams = []
    for a, b, sport in flows:
        datagrams += udp_flow_datagrams(a, b, sport, 53, 3)
    # every datagram from its own outer source port: only inner-address steering keeps flows together
    send_all(datagrams, srv.vx_port, spread_ports=True)
    text = wait_received(srv, len(datagrams))
    assert metric(text, "vxmirror_engine_counter", counter="packets") == len(datagrams)
    per_worker = [metric(text, "vxmirror_worker_datagrams_total", worker=str(w)) for w in (0, 1)]
    assert min(per_worker) > len(datagrams) / 5  # both workers had a share
    assert metric(text, "vxmirror_steering_active") == 2  # both listen addresses steered
    assert srv.stop() == 0, srv.logs()
    recs = served_records(srv.data_dir)
    assert len(recs) == len(flows)  # each flow once: no half records from two workers
    keys = collections.Counter((r["src_ip"], r["dest_ip"], r["src_port"]) for r in recs)
    assert all(v == 1 for v in keys.values())
    assert all(r["packets_out"] == 3 and r["packets_in"] == 3 for r in recs)
    logs = srv.logs()
    assert logs.count("worker stopped") == 2
    # each worker's stop line has its forwarders' totals: every record delivered, none dropped
    stops = [orjson.loads(line) for line in logs.splitlines() if '"msg":"worker stopped"' in line]
    assert sum(s["forwarders"]["jsonl"]["delivered"] for s in stops) == len(flows)
    assert all(s["forwarders"]["jsonl"]["dropped"] == s["forwarders"]["jsonl"]["spooled"] == 0 for s in stops)
    assert all(s["forwarders"]["pcap"]["dropped"] == 0 for s in stops)


def test_bad_input_is_counted_by_reason_and_the_rest_kept(served: Any) -> None:
    srv = served(workers=1, extra_toml='[listen]\nallow_sources = ["127.0.0.1/32"]\n')
    good = udp_flow_datagrams("10.0.0.1", "10.0.0.2", 5555, 53, 5)
    frame = ether(ipv4("10.0.0.3", "10.0.0.4", 6, tcp(1234, 80, 0x02)))
    bad_vx = [
        b"garbage!",  # shorter than a VXLAN header
        b"\x00" * 3,
        vxlan(frame, flags=0x00),  # I flag missing
        vxlan(frame)[:8 + 10],  # truncated inner Ethernet
        vxlan(ether(ipv4("10.0.0.3", "10.0.0.4", 6, tcp(1234, 80, 0x02)))[:8 + 14 + 9]),  # truncated IPv4
    ]
    bad_gn = [b"\x40" + geneve(frame)[1:], geneve(frame)[:5]]  # version 1; truncated header
    send_all(bad_vx, srv.vx_port)
    send_all(bad_gn, srv.gn_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a sender outside allow_sources
        s.bind(("127.0.0.2", 0))
        for d in good[:4]:
            s.sendto(d, ("127.0.0.1", srv.vx_port))
    send_all(good, srv.vx_port)
    total = len(bad_vx) + len(bad_gn) + 4 + len(good)
    text = wait_received(srv, total)
    assert metric(text, "vxmirror_dropped_total", place="listener", reason="source_not_allowed") == 4
    engine_drops = {
        line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('vxmirror_dropped_total{place="engine"')
    }
    assert sum(engine_drops.values()) == len(bad_vx) + len(bad_gn), engine_drops
    assert len([r for r, v in engine_drops.items() if v]) >= 3  # counted by reason, not one bucket
    assert metric(text, "vxmirror_packets_decoded_total") == len(good)
    code, _ = scrape(srv.metrics_port, "/healthz")
    assert code == 200 and srv.proc.poll() is None  # still running
    assert srv.stop() == 0
    (rec,) = served_records(srv.data_dir)
    assert (rec["packets_out"], rec["packets_in"]) == (5, 5)


def test_sighup_reopens_and_sigint_stops_cleanly(served: Any) -> None:
    srv = served(workers=2, geneve=False)
    send_all(udp_flow_datagrams("10.0.0.1", "10.0.0.2", 1, 2, 2), srv.vx_port)
    wait_received(srv, 4)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_metric("vxmirror_pipeline_total", 2, event="reopens")
    assert srv.proc.poll() is None
    assert srv.stop(signal.SIGINT) == 0, srv.logs()
    recs = served_records(srv.data_dir)
    assert len(recs) == 1 and recs[0]["end_reason"] == "shutdown"
    assert not any(p.name.endswith(".part") for p in srv.data_dir.rglob("*"))


def test_worker_death_stops_the_service_with_an_error(served: Any) -> None:
    srv = served(workers=2, geneve=False)
    text = srv.metrics()
    assert metric(text, "vxmirror_worker_up") == 2
    # find a worker pid (children of the supervisor) and kill it hard
    kids = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    assert len(kids) >= 2
    os.kill(int(kids[0]), signal.SIGKILL)
    assert srv.proc.wait(30) == 1
    assert "worker exited unexpectedly" in srv.logs()


def test_ipv6_listen_and_geneve(served: Any, tmp_path: Path) -> None:
    from tests.listen_fixtures import free_port

    port6 = free_port(host="::1")
    srv = served(workers=1, args=["--listen", f"[::1]:{port6}"])
    inner = ether(ipv4("10.5.0.1", "10.5.0.2", 17, udp(7, 9, b"hi")))
    send_all([vxlan(inner)], port6, host="::1")
    send_all([geneve(inner, options=b"\x01\x02\x03\x04")], srv.gn_port)
    text = wait_received(srv, 2)
    assert metric(text, "vxmirror_datagrams_received_total", listen=f"[::1]:{port6}") == 1
    time.sleep(0.2)
    assert srv.stop() == 0
    recs = served_records(srv.data_dir)
    assert sum(r["packets_out"] + r["packets_in"] for r in recs) == 2


def test_workers_stop_when_the_supervisor_is_killed(served: Any) -> None:
    srv = served(workers=2, geneve=False)
    kids = [int(k) for k in Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()]
    assert len(kids) == 2
    srv.proc.kill()
    srv.proc.wait()
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 20
    while any(running(k) for k in kids):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)


def test_top_talkers_endpoint_and_vxmirror_top(served: Any) -> None:
    from receiver.top import fetch, render

    srv = served(workers=2, geneve=False)
    big = udp_flow_datagrams("10.0.0.1", "10.0.0.2", 1111, 2222, 30)
    small = udp_flow_datagrams("10.0.0.3", "10.0.0.4", 3333, 4444, 2)
    send_all(big + small, srv.vx_port)
    wait_received(srv, len(big) + len(small))
    deadline = time.monotonic() + 15
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:  # workers report talkers every few seconds
        code, body = scrape(srv.metrics_port, "/top?n=5")
        assert code == 200
        doc = orjson.loads(body)
        if len(doc["talkers"]) == 2:
            break
        time.sleep(0.3)
    first, second = doc["talkers"]
    assert (first["src_ip"], first["src_port"], first["dest_port"], first["packets"]) == ("10.0.0.1", 1111, 2222, 60)
    assert first["bytes"] > second["bytes"] and second["src_port"] == 3333 and first["vni"] == 7
    a = fetch("127.0.0.1", srv.metrics_port)
    view = render(a, fetch("127.0.0.1", srv.metrics_port), width=120)
    assert "10.0.0.1" in view and "not served" not in view
    assert srv.stop() == 0
