"""Opening the tunnel sockets: SO_REUSEPORT groups, receive buffers, steering, kernel drops."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field

from ..packets import Layer
from . import steering
from .settings import ListenConfig, parse_hostport

log = logging.getLogger("vxmirror.listen")

SO_RCVBUFFORCE = 33


@dataclass
class Endpoint:
    """One configured listen address: its layer and one socket per worker (same group)."""

    label: str  # "HOST:PORT" as configured
    host: str
    port: int
    family: int
    layer: Layer
    sockets: list[socket.socket] = field(default_factory=list)
    rcvbuf: int = 0  # bytes the kernel granted per socket
    steered: bool = False

    @property
    def bound_port(self) -> int:
        return int(self.sockets[0].getsockname()[1]) if self.sockets else self.port


def layer_for_port(port: int, geneve_ports: list[int]) -> Layer:
    return Layer.GENEVE if port in geneve_ports else Layer.VXLAN


def set_rcvbuf(sock: socket.socket, want: int) -> int:
    """Ask for ``want`` bytes (forcing past rmem_max when allowed); return what was granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    # the kernel reports twice the usable size it set (bookkeeping overhead)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def open_socket(host: str, port: int, family: int, rcvbuf: int, reuseport: bool) -> tuple[socket.socket, int]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        granted = set_rcvbuf(s, rcvbuf)
        s.bind((host, port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s, granted


def open_endpoints(cfg: ListenConfig, workers: int, geneve_ports: list[int]) -> list[Endpoint]:
    """Bind one socket per worker for every address, attach steering, warn once on a capped buffer.

    Sockets join each reuseport group in worker order, so the steering program's return value
    ``i`` selects worker ``i``. A port of 0 binds the first socket to an ephemeral port and the
    others to the same one (tests). If steering cannot be attached with several workers, the
    caller is told through ``Endpoint.steered`` and must fall back (see service).
    """
    endpoints: list[Endpoint] = []
    capped: list[tuple[str, int]] = []
    try:
        for label in cfg.addresses:
            host, port = parse_hostport(label)
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            ep = Endpoint(label, host, port, family, layer_for_port(port, geneve_ports))
            endpoints.append(ep)
            for _ in range(workers):
                try:
                    s, granted = open_socket(host, ep.bound_port, family, cfg.rcvbuf, reuseport=True)
                except OSError as e:
                    raise OSError(e.errno, f"cannot listen on {label}: {e.strerror}") from None
                ep.sockets.append(s)
                ep.rcvbuf = granted
            if ep.rcvbuf < cfg.rcvbuf:
                capped.append((label, ep.rcvbuf))
            if workers > 1 and cfg.steering:
                try:
                    steering.attach(ep.sockets[0], ep.layer, workers)
                    ep.steered = True
                except OSError as e:
                    log.warning(
                        "reuseport steering unavailable",
                        extra={"fields": {"listen": label, "error": str(e)}},
                    )
    except BaseException:
        close_endpoints(endpoints)
        raise
    if capped:
        label, got = capped[0]
        log.warning(
            f"receive buffer capped by the kernel at {got} bytes (asked {cfg.rcvbuf}); "
            f"raise net.core.rmem_max: sysctl -w net.core.rmem_max={cfg.rcvbuf} "
            "(persist it in /etc/sysctl.d/)",
            extra={
                "fields": {
                    "listen": [c[0] for c in capped],
                    "rcvbuf_granted": got,
                    "rcvbuf_wanted": cfg.rcvbuf,
                    "sysctl": f"net.core.rmem_max={cfg.rcvbuf}",
                }
            },
        )
    return endpoints


def close_endpoints(endpoints: list[Endpoint]) -> None:
    for ep in endpoints:
        for s in ep.sockets:
            s.close()
        ep.sockets.clear()


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def kernel_drops(inodes: set[int], proc: str = "/proc/net") -> dict[int, int]:
    """Datagrams the kernel dropped per socket inode (``drops`` column of /proc/net/udp{,6})."""
    out: dict[int, int] = {}
    for name in ("udp", "udp6"):
        try:
            with open(os.path.join(proc, name), encoding="ascii") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) < 13:
                        continue
                    ino = int(cols[9])
                    if ino in inodes:
                        out[ino] = int(cols[12])
        except OSError:
            continue
    return out
