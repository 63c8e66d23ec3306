"""Captures taken on the mirror target itself with ``tcpdump -i any`` or ``dumpcap -i any``.

On the ``any`` device libpcap writes Linux cooked headers instead of Ethernet: SLL (link type
113) or SLL2 (276, what tcpdump writes there by default since 4.99). Here dumpcap captures the
same VXLAN traffic three ways at once, in a network namespace of the test's own (its loopback
only): ``any`` as SLL2, ``any`` as SLL, and ``lo`` as Ethernet. The three files must give the
same flow records, and those must be the flows that were sent.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.capture import open_capture
from receiver.capture.read import read_records
from receiver.packets import Layer
from tests import packet_factory as pf

TIME_FIELDS = ("ts_start", "ts_end", "duration")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"vxcooked{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _tunnel_payloads() -> list[bytes]:
    """VXLAN payloads (header + inner Ethernet frame): an HTTP exchange, a DNS lookup, a UDP stream."""
    a, b = "10.1.0.5", "10.1.0.9"
    inner = [
        pf.tcp(a, b, 40000, 80, flags=0x02),
        pf.tcp(b, a, 80, 40000, flags=0x12),
        pf.tcp(a, b, 40000, 80, flags=0x10),
        pf.tcp(a, b, 40000, 80, flags=0x18, payload=b"GET /health HTTP/1.1\r\nHost: svc.internal\r\n\r\n"),
        pf.tcp(b, a, 80, 40000, flags=0x18, payload=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        pf.tcp(a, b, 40000, 80, flags=0x11),
        pf.tcp(b, a, 80, 40000, flags=0x11),
        pf.tcp(a, b, 40000, 80, flags=0x10),
    ]
    query = bytes.fromhex("abcd01000001000000000000") + b"\x03api\x07example\x03com\x00" + b"\x00\x01\x00\x01"
    inner += [pf.udp(a, "10.1.0.2", 53001, 53, query)]
    inner += [pf.udp(a, b, 7000, 9000, bytes([i]) * (40 + i)) for i in range(20)]
    return [pf.vxlan_header(3000 + (i >= 8)) + frame for i, frame in enumerate(inner)]


_SENDER = textwrap.dedent(
    """
    import socket, struct, sys, time
    data = open(sys.argv[1], "rb").read()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 4789))  # a listener, so no ICMP port-unreachable joins the capture
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from("!I", data, pos)
        tx.sendto(data[pos + 4 : pos + 4 + n], ("127.0.0.1", 4789))
        pos += 4 + n
        time.sleep(0.002)
    """
)


def _capture(netns: str, iface: str, linktype: str | None, out: Path, count: int) -> subprocess.Popen[bytes]:
    link = ["-y", linktype] if linktype else []  # (lo offers Ethernet only)
    args = ["ip", "netns", "exec", netns, "dumpcap", "-q", "-P", "-i", iface, *link, "-f", "udp dst port 4789",
            "-c", str(count), "-w", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_capturing(procs: list[subprocess.Popen[bytes]], files: list[Path], timeout: float = 20.0) -> None:
    """Until every dumpcap has written its file header (it is then capturing)."""
    end = time.monotonic() + timeout
    while not all(f.exists() and f.stat().st_size >= 24 for f in files):
        for p in procs:
            assert p.poll() is None, (p.args, p.stderr.read() if p.stderr else b"")
        assert time.monotonic() < end, "dumpcap did not start"
        time.sleep(0.05)
    time.sleep(0.3)


def _comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their times (each capture stamps packets itself), in a stable order."""
    out = [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]
    return sorted(out, key=lambda r: (r["vni"], r["src_ip"], r["src_port"], r["dest_port"]))


def test_any_captures_sll_and_sll2_read_like_a_loopback_capture(netns: str, tmp_path: Path) -> None:
    payloads = _tunnel_payloads()
    (tmp_path / "send.bin").write_bytes(b"".join(struct.pack("!I", len(p)) + p for p in payloads))
    files = {"sll2": tmp_path / "any-sll2.pcap", "sll": tmp_path / "any-sll.pcap", "eth": tmp_path / "lo.pcap"}
    procs = [
        _capture(netns, "any", "LINUX_SLL2", files["sll2"], len(payloads)),
        _capture(netns, "any", "LINUX_SLL", files["sll"], len(payloads)),
        _capture(netns, "lo", None, files["eth"], len(payloads)),
    ]
    try:
        _wait_capturing(procs, list(files.values()))
        (tmp_path / "sender.py").write_text(_SENDER)
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(tmp_path / "sender.py"),
                        str(tmp_path / "send.bin")], check=True, timeout=60)
        for p in procs:
            assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else b""
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=10)

    layers = {}
    for name, path in files.items():
        with open_capture(path) as cap:
            layers[name] = cap.pcap_layer()
    assert layers == {"sll2": Layer.LINUX_SLL2, "sll": Layer.LINUX_SLL, "eth": Layer.ETHERNET}

    records = {name: list(read_records(path)) for name, path in files.items()}
    want = _comparable(records["eth"])
    assert _comparable(records["sll2"]) == want
    assert _comparable(records["sll"]) == want
    # ... and they are the flows sent
    http, dns, stream = (next(r for r in records["sll2"] if r["dest_port"] == port) for port in (80, 53, 9000))
    assert len(records["sll2"]) == 3
    assert (http["vni"], http["packets_in"], http["packets_out"], http["conn_state"]) == (3000, 5, 3, "SF")
    assert http["app"]["http"][0]["host"] == "svc.internal" and http["app"]["http"][0]["status"] == 200
    assert (dns["vni"], dns["packets_in"], dns["app"]["dns"][0]["query"]) == (3001, 1, "api.example.com")
    assert (stream["packets_in"], stream["packets_out"], stream["transport"]) == (20, 0, "udp")
    assert stream["payload_bytes_in"] == sum(40 + i for i in range(20))
