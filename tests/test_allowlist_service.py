"""Issue 16: datagrams from senders outside ``[listen] allow_sources`` are dropped by `vxmirror serve`
before any parsing, and counted.

Valid tunnels, garbage and GENEVE, over IPv4 (from 127.0.0.2) and IPv6 (from ::1), none of them from
an allowed network: every datagram is received and counted as ``source_not_allowed``, and the engine
never sees one (its packet, decode and drop counters stay zero, no flow, no frame reaches the pcap
writer). The same traffic from an allowed sender is then decoded as usual.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.listen_fixtures import (
    Served,
    ether,
    free_port,
    geneve,
    ipv4,
    metric,
    tcp,
    udp_flow_datagrams,
    vxlan,
)
from tests.test_service import served_records


def engine_counters(text: str) -> dict[str, float]:
    prefix = 'vxmirror_engine_counter{counter="'
    return {ln[len(prefix):].split('"')[0]: float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines() if ln.startswith(prefix)}


def send_from(source: str, datagrams: list[bytes], port: int) -> None:
    fam = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for d in datagrams:
            s.sendto(d, (source if fam == socket.AF_INET6 else "127.0.0.1", port))


def test_sources_outside_the_allowlist_are_dropped_before_decode_and_counted(tmp_path: Path) -> None:
    port6 = free_port(host="::1")
    srv = Served(tmp_path, workers=2, extra_toml='[listen]\nallow_sources = ["127.0.0.1/32"]\n',
                 args=["--listen", f"[::1]:{port6}"])
    try:
        good: list[bytes] = []
        for k in range(40):  # flows spread over both workers by the steering program
            good += udp_flow_datagrams(f"10.9.{k}.1", f"10.8.{k}.2", 3000 + k, 53, 2)
        frame = ether(ipv4("10.0.0.3", "10.0.0.4", 6, tcp(1234, 80, 0x02)))
        garbage = [b"", b"x", b"garbage!" * 3, vxlan(frame, flags=0x00), vxlan(frame)[:20], bytes(range(256)) * 4]
        gn = [geneve(frame), b"\x40" + geneve(frame)[1:], geneve(frame)[:5]]
        send_from("127.0.0.2", good + garbage, srv.vx_port)
        send_from("127.0.0.2", gn, srv.gn_port)
        send_from("::1", good[:10] + garbage, port6)
        n = len(good) + len(garbage) + len(gn) + 10 + len(garbage)
        text = srv.wait_metric("vxmirror_datagrams_received_total", n)
        srv.wait_metric("vxmirror_dropped_total", n, place="listener", reason="source_not_allowed")
        text = srv.metrics()
        assert metric(text, "vxmirror_datagrams_received_total") == n
        assert metric(text, "vxmirror_dropped_total", place="listener", reason="source_not_allowed") == n
        assert metric(text, "vxmirror_kernel_drops_total") == 0
        per_worker = [metric(text, "vxmirror_worker_datagrams_total", worker=str(w)) for w in (0, 1)]
        assert min(per_worker) > 0  # both workers dropped their share
        # nothing of it reached the engine: no packet, no decode, no drop by a decode reason, no flow
        assert metric(text, "vxmirror_packets_processed_total") == 0
        assert metric(text, "vxmirror_packets_decoded_total") == 0
        assert metric(text, "vxmirror_dropped_total", place="engine") == 0
        counters = engine_counters(text)  # every engine counter: packets, bytes, decoded, flows, ...
        assert {"packets", "bytes", "decoded", "slow_path", "flows_created", "records"} <= set(counters)
        assert all(v == 0 for k, v in counters.items() if k != "flow_table_capacity"), counters
        assert metric(text, "vxmirror_flows_active") == 0
        assert metric(text, "vxmirror_forwarder_received_total", forwarder="pcap") == 0
        # help text of the counter, so a dashboard can find it
        assert "# HELP vxmirror_dropped_total Datagrams/packets dropped, by place and reason" in text

        # the same flows from an allowed sender are decoded
        send_from("127.0.0.1", good, srv.vx_port)
        text = srv.wait_metric("vxmirror_packets_decoded_total", len(good))
        assert metric(text, "vxmirror_dropped_total", place="listener", reason="source_not_allowed") == n
        assert metric(text, "vxmirror_packets_processed_total") == len(good)
        assert srv.stop() == 0, srv.logs()
        recs = served_records(srv.data_dir)
        assert len(recs) == 40 and all(r["packets_out"] == r["packets_in"] == 2 for r in recs)
        # one warning per refused sender address (and worker), not one per datagram
        warned = [ln for ln in srv.logs().splitlines() if "outside allow_sources" in ln]
        assert 2 <= len(warned) <= 4, warned
        assert any("127.0.0.2" in ln for ln in warned) and any("::1" in ln for ln in warned)
    finally:
        srv.kill()
