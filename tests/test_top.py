"""`vxmirror top`: one frame rendered from canned metrics served by a local HTTP server."""

from __future__ import annotations

import http.server
import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from receiver import top

TEXT_1 = """\
# HELP vxmirror_datagrams_received_total Datagrams received
# TYPE vxmirror_datagrams_received_total counter
vxmirror_datagrams_received_total{listen="0.0.0.0:4789"} 1000
vxmirror_datagrams_received_total{listen="0.0.0.0:6081"} 0
vxmirror_bytes_received_total{listen="0.0.0.0:4789"} 512000
vxmirror_bytes_received_total{listen="0.0.0.0:6081"} 0
vxmirror_kernel_drops_total{listen="0.0.0.0:4789"} 5
vxmirror_kernel_drops_total{listen="0.0.0.0:6081"} 0
vxmirror_dropped_total{place="listener",reason="source_not_allowed"} 3
vxmirror_dropped_total{place="engine",reason="bad_vxlan_flags"} 0
vxmirror_dropped_total{place="forwarder:jsonl",reason="queue_full"} 0
vxmirror_packets_decoded_total 990
vxmirror_flows_active 42
vxmirror_flows_exported_total 100
vxmirror_forwarder_sent_total{forwarder="jsonl"} 100
vxmirror_forwarder_queue_depth{forwarder="jsonl"} 0
vxmirror_worker_up{worker="0"} 1
vxmirror_worker_up{worker="1"} 1
vxmirror_up 1
"""

TEXT_2 = """\
vxmirror_datagrams_received_total{listen="0.0.0.0:4789"} 201000
vxmirror_datagrams_received_total{listen="0.0.0.0:6081"} 50000
vxmirror_bytes_received_total{listen="0.0.0.0:4789"} 102912000
vxmirror_bytes_received_total{listen="0.0.0.0:6081"} 0
vxmirror_kernel_drops_total{listen="0.0.0.0:4789"} 2005
vxmirror_kernel_drops_total{listen="0.0.0.0:6081"} 0
vxmirror_dropped_total{place="listener",reason="source_not_allowed"} 3
vxmirror_dropped_total{place="engine",reason="bad_vxlan_flags"} 800
vxmirror_dropped_total{place="forwarder:jsonl",reason="queue_full"} 20
vxmirror_packets_decoded_total 250190
vxmirror_flows_active 1234
vxmirror_flows_exported_total 4100
vxmirror_forwarder_sent_total{forwarder="jsonl"} 4100
vxmirror_forwarder_queue_depth{forwarder="jsonl"} 17
vxmirror_worker_up{worker="0"} 1
vxmirror_worker_up{worker="1"} 0
vxmirror_up 0
"""

TALKERS = {
    "window_seconds": 10,
    "talkers": [
        {
            "src_ip": "10.1.0.7",
            "src_port": 51000,
            "dest_ip": "10.2.0.9",
            "dest_port": 443,
            "transport": "tcp",
            "vni": 101,
            "packets": 9000,
            "bytes": 12_000_000,
        },
        {
            "src_ip": "fd00::1",
            "src_port": 5353,
            "dest_ip": "fd00::2",
            "dest_port": 53,
            "transport": "udp",
            "vni": 102,
            "packets": 40,
            "bytes": 4000,
        },
    ],
}


class Canned:
    """Serves TEXT_1 on the first /metrics request, TEXT_2 afterwards; /top when enabled."""

    def __init__(self, with_top: bool) -> None:
        self.hits = 0
        self.with_top = with_top
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = (TEXT_1 if canned.hits == 0 else TEXT_2).encode()
                    canned.hits += 1
                    ctype = "text/plain; version=0.0.4"
                elif self.path.startswith("/top") and canned.with_top:
                    body, ctype = json.dumps(TALKERS).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=[True, False], ids=["with_top", "without_top"])
def canned(request: pytest.FixtureRequest) -> Iterator[Canned]:
    c = Canned(request.param)
    yield c
    c.close()


def frame(c: Canned) -> str:
    a = top.fetch("127.0.0.1", c.port)
    b = top.fetch("127.0.0.1", c.port)
    a.t, b.t = 100.0, 102.0  # two seconds between the scrapes
    return top.render(a, b, width=140, source=f"127.0.0.1:{c.port}")


def test_frame_shows_rates_drops_flows_forwarders_workers(canned: Canned) -> None:
    out = frame(canned)
    assert "DEGRADED" in out  # vxmirror_up 0
    # (201000 + 50000 - 1000) / 2 s = 125 k pkt/s; bytes (102912000 - 512000) / 2 * 8 = 409.6 Mbit/s
    assert "125.00 kpkt/s" in out
    assert "409.60 Mbit/s" in out
    assert re.search(r"kernel drops\s+1\.00 k/s\s+total 2005", out)
    assert re.search(r"flows active\s+1,234", out)
    listen = [ln for ln in out.splitlines() if ln.startswith("0.0.0.0:6081")]
    assert listen and "25.00 k" in listen[0]
    drops = [ln for ln in out.splitlines() if "bad_vxlan_flags" in ln]
    assert drops and "400" in drops[0] and "800" in drops[0]
    assert any("source_not_allowed" in ln and ln.rstrip().endswith("3") for ln in out.splitlines())
    fwd = [ln for ln in out.splitlines() if ln.strip().startswith("jsonl")]
    assert fwd and "sent 2.00 k/s" in fwd[0] and "queue_depth 17" in fwd[0] and "dropped 10/s" in fwd[0]
    assert "0:up  1:DOWN" in out


def test_top_talkers_or_a_clear_note(canned: Canned) -> None:
    out = frame(canned)
    if canned.with_top:
        assert "top talkers (last 10 s)" in out
        rows = [ln for ln in out.splitlines() if "10.1.0.7:51000" in ln]
        assert rows and "10.2.0.9:443" in rows[0] and "9,000" in rows[0] and "12.00 MB" in rows[0]
        assert any("[fd00::1]:5353" in ln for ln in out.splitlines())
    else:
        assert "not served by this vxmirror" in out


def test_parse_metrics_labels_and_escapes() -> None:
    m = top.parse_metrics('a_total{x="1",y="q\\"uote"} 3\n# comment\nb 2.5\nbad line\n')
    assert m["a_total"][(("x", "1"), ("y", 'q"uote'))] == 3
    assert m["b"][()] == 2.5


def test_run_once_prints_a_frame(canned: Canned) -> None:
    buf = io.StringIO()
    assert top.run("127.0.0.1", canned.port, interval=0.05, once=True, out=buf) == 0
    assert "vxmirror top" in buf.getvalue() and "flows active" in buf.getvalue()


def test_cli_unreachable_endpoint_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    r = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "top", "--metrics", f"127.0.0.1:{port}", "--once"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert f"cannot read http://127.0.0.1:{port}/metrics" in r.stderr
