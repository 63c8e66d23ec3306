"""Helpers for the live-receiver tests: tunnel datagram builders, loopback ports, a served process."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VXMIRROR = [sys.executable, "-m", "receiver.cli"]


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int = 0) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    csum = _csum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + l4


def ipv6(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(l4), proto, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + l4
    )


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 1, ack: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def ether(l3: bytes, ethertype: int = 0x0800, vlan: int | None = None) -> bytes:
    macs = bytes.fromhex("0a0000000002") + bytes.fromhex("0a0000000001")
    if vlan is not None:
        return macs + struct.pack("!HHH", 0x8100, vlan, ethertype) + l3
    return macs + struct.pack("!H", ethertype) + l3


def vxlan(frame: bytes, vni: int = 7, flags: int = 0x08) -> bytes:
    return struct.pack("!BxxxI", flags, vni << 8) + frame


def geneve(inner: bytes, vni: int = 7, protocol: int = 0x6558, options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    return struct.pack("!BBHI", len(options) // 4, 0, protocol, vni << 8) + options + inner


def udp_flow_datagrams(a: str, b: str, sport: int, dport: int, n_each: int, vni: int = 7) -> list[bytes]:
    """Alternating a->b and b->a VXLAN datagrams of one inner UDP flow."""
    out = []
    for i in range(n_each):
        out.append(vxlan(ether(ipv4(a, b, 17, udp(sport, dport, b"q%03d" % i))), vni))
        out.append(vxlan(ether(ipv4(b, a, 17, udp(dport, sport, b"r%03d-reply" % i))), vni))
    return out


def send_all(datagrams: list[bytes], port: int, host: str = "127.0.0.1", spread_ports: bool = False,
             pace_every: int = 200) -> None:
    """Send from loopback; ``spread_ports``: each datagram from a different source port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    tx = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        for i, d in enumerate(datagrams):
            if spread_ports:
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.sendto(d, (host, port))
            else:
                tx.sendto(d, (host, port))
            if pace_every and i % pace_every == pace_every - 1:
                time.sleep(0.002)
    finally:
        tx.close()


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
            found = True
    if not found:
        raise KeyError(f"{name}{labels} not in metrics")
    return total


class Served:
    """``vxmirror serve`` as a subprocess on loopback ports chosen here."""

    def __init__(self, tmp: Path, workers: int = 1, extra_toml: str = "", geneve: bool = True,
                 args: list[str] | None = None, top_toml: str = "", wait: bool = True,
                 ports: tuple[int, int] | None = None) -> None:
        """``top_toml``: top-level keys (before the tables); ``wait``: return once healthy (else
        call wait_ready); ``ports``: the VXLAN and GENEVE ports (default: free ones; they are
        the engine's tunnel ports too, so inner UDP to them is decapsulated)."""
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.vx_port, self.gn_port = ports or (free_port(), free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        self.config = tmp / "vxmirror.toml"
        self.config.write_text(
            top_toml
            + "[engine]\n"
            f"geneve_ports = [{self.gn_port}]\n"
            f"vxlan_ports = [4789, {self.vx_port}]\n"
            + extra_toml
        )
        listen = ["--listen", f"127.0.0.1:{self.vx_port}"]
        if geneve:
            listen += ["--listen", f"127.0.0.1:{self.gn_port}"]
        self.log = open(tmp / "serve.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*VXMIRROR, "serve", "--config", str(self.config), *listen,
             "--metrics", f"127.0.0.1:{self.metrics_port}", "--data-dir", str(self.data_dir),
             "--workers", str(workers), *(args or [])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.logs()}")
            try:
                code, _ = scrape(self.metrics_port, "/healthz")
                if code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve not healthy in {timeout}s:\n{self.logs()}")

    def metrics(self) -> str:
        code, text = scrape(self.metrics_port)
        assert code == 200
        return text

    def wait_metric(self, name: str, value: float, timeout: float = 15.0, **labels: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.metrics()
            try:
                if metric(text, name, **labels) >= value:
                    return text
            except KeyError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} did not reach {value}:\n{text}\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.tmp / "serve.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()
