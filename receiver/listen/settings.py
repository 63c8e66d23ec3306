"""Settings of the live listener (``[listen]``) and the metrics endpoint (``[metrics]``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config.schema import opt

# Where AWS mirror traffic comes from: the VPC's private ranges (RFC 1918, the shared
# 100.64/10 range VPCs may use, IPv6 unique-local) and loopback for local replays.
DEFAULT_ALLOW = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
]


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); raises ValueError."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        port_s = rest[1:]
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"host must be an IP address, got {host!r}") from None
        host = "127.0.0.1"
    return host, int(port_s)


@dataclass
class ListenConfig:
    addresses: list[str] = opt(
        ["0.0.0.0:4789", "0.0.0.0:6081"],
        "HOST:PORT to receive on ([ADDR]:PORT for IPv6); ports in engine.geneve_ports are GENEVE, "
        "others VXLAN",
    )
    rcvbuf: int = opt(64 << 20, "socket receive buffer per socket, bytes (net.core.rmem_max caps it)", 4096)
    slot_size: int = opt(
        9216,
        "bytes per datagram slot; AWS jumbo mirror traffic is up to MTU 9001 plus headers, longer "
        "datagrams are kept truncated and counted",
        64,
        65535,
    )
    ring_slots: int = opt(8192, "datagrams accumulated before one engine batch", 16, 1 << 20)
    recv_batch: int = opt(256, "datagrams per recvmmsg call", 1, 4096)
    receive_thread: bool = opt(
        True,
        "receive in a C thread per socket into a ring (receive_ring_bytes), so the socket is emptied while the "
        "worker processes a batch (needs the C library; without it the event loop receives)",
    )
    udp_gro: bool = opt(
        True,
        "let the kernel coalesce datagrams of one sender (UDP_GRO) for the receive thread, which splits them "
        "again: far less kernel work per datagram. Used with one worker only: a coalesced datagram can carry "
        "packets of inner flows that steering would send to different workers",
    )
    receive_ring_bytes: int = opt(
        64 << 20, "bytes of the receive thread's ring per socket (datagrams packed; 4 x ring_slots of them)", 1 << 16
    )
    flush_interval: float = opt(0.01, "a partly filled ring goes to the engine after this many seconds", 0.0001)
    workers: int = opt(
        0, "worker processes (0: one per two cores with the receive thread, else one per core)", 0, 256
    )
    steering: bool = opt(True, "steer both directions of a flow to one worker with a reuseport BPF program")
    allow_sources: list[str] = opt(DEFAULT_ALLOW, "networks datagrams are accepted from (CIDR)")
    tick_interval: float = opt(1.0, "how often open flows are checked for timeouts, seconds", 0.05)
    app_time_budget: float = opt(
        0.5,
        "share of each second a worker's application parsers (HTTP, DNS, TLS, QUIC) may take; past it, new flows "
        "get no application metadata (counted as app_shed_flows, logged) so that packets and records keep "
        "up with a burst (0: no limit)",
        0.0,
        1.0,
    )
    shutdown_timeout: float = opt(
        60.0, "seconds allowed to export flows and flush on shutdown (a full table of 1 M flows took 7 s)", 1.0
    )

    def validate(self) -> tuple[str, str] | None:
        if not self.addresses:
            return "addresses", "at least one address is required"
        seen = set()
        for i, a in enumerate(self.addresses):
            try:
                hp = parse_hostport(a)
            except ValueError as e:
                return f"addresses[{i}]", str(e)
            if hp in seen:
                return f"addresses[{i}]", f"duplicate address {a!r}"
            seen.add(hp)
        for i, net in enumerate(self.allow_sources):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                return f"allow_sources[{i}]", str(e)
        if self.recv_batch > self.ring_slots:
            return "recv_batch", f"must be <= ring_slots ({self.ring_slots})"
        return None


@dataclass
class MetricsConfig:
    listen: str = opt("127.0.0.1:9109", "HOST:PORT of /metrics and /healthz (port 0: off)")
    snapshot_interval: float = opt(0.5, "how often workers report their counters, seconds", 0.05, 60.0)

    def validate(self) -> tuple[str, str] | None:
        try:
            parse_hostport(self.listen)
        except ValueError as e:
            return "listen", str(e)
        return None

    @property
    def enabled(self) -> bool:
        return parse_hostport(self.listen)[1] != 0
