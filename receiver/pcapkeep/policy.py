"""The capture policy: how much of each flow goes to the pcap files.

Rules are tried in order; the first whose every condition holds decides, for the flow, how many
frames of each direction are written (``packets``) and up to how many payload bytes
(``bytes``: a frame is written while the direction's payload before it is under the limit).
No rule matching: everything is written. Conditions left empty match anything; a list matches
when any of its items does; addresses and ports match either endpoint.

``app`` is what the engine recognised in the flow so far ("tls", "http", "dns", "quic";
"other" until then or when nothing was): a flow's limit can change once its protocol is known
(a TLS flow's first packets are written before its ClientHello is read). The decision is made
per packet in the engine (``Engine._capture``), from the flow's counts since it started, so a
frame that is not kept is never copied to the writer.

The default (no ``[[forwarders.pcap.keep]]`` rule configured) keeps what an incident responder
reads and drops bulk encrypted payload: TLS and QUIC flows, and TCP port 22 (SSH), keep their
first 16 frames each way (the handshake, certificates, first request and response); every other
flow is written whole. docs/capture.md measures what it saves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config.schema import opt

APPS = ("other", "tls", "http", "dns", "quic")  # codes 0.. of the flow table's cap_app column
APP_CODE = {name: i for i, name in enumerate(APPS)}
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmp6": 58, "sctp": 132, "gre": 47, "esp": 50}
NO_LIMIT = np.iinfo(np.int64).max


@dataclass
class KeepRule:
    vni: list[int] = opt([], "VNIs (mirror sessions) matched; empty: any")
    service: list[str] = opt([], "AWS service labels of the flow's mirror session (see [aws]); empty: any")
    cluster: list[str] = opt([], "AWS cluster labels of the flow's mirror session; empty: any")
    cidr: list[str] = opt([], "networks either endpoint is in (IPv4 or IPv6); empty: any")
    proto: list[str] = opt([], "IP protocols: tcp, udp, icmp, ipv6-icmp, or a number; empty: any")
    port: list[int] = opt([], "ports either endpoint uses; empty: any")
    app: list[str] = opt([], "what the engine recognised: tls, http, dns, quic, other; empty: any")
    packets: int = opt(-1, "frames written per direction (-1: no limit, 0: none)", min=-1)
    bytes: int = opt(-1, "a frame is written while its direction's payload before it is under this (-1: no limit)",
                     min=-1)

    def validate(self) -> tuple[str, str] | None:
        for i, name in enumerate(self.app):
            if name not in APP_CODE:
                return (f"app[{i}]", f"expected one of {', '.join(APPS)}, got {name!r}")
        for i, p in enumerate(self.proto):
            if p.lower() not in PROTOS and not (p.isdigit() and 0 <= int(p) <= 255):
                return (f"proto[{i}]", f"expected tcp, udp, icmp, ipv6-icmp or 0-255, got {p!r}")
        for i, c in enumerate(self.cidr):
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError as e:
                return (f"cidr[{i}]", str(e))
        for i, port in enumerate(self.port):
            if not 0 <= port <= 65535:
                return (f"port[{i}]", f"expected 0-65535, got {port}")
        return None


def default_rules() -> list[KeepRule]:
    return [
        KeepRule(app=["tls", "quic"], packets=16),
        KeepRule(proto=["tcp"], port=[22], packets=16),
    ]


@dataclass
class PacketKeys:
    """The per-packet columns a policy looks at (one entry per packet, both endpoints as sent)."""

    vni: np.ndarray  # int64, -1: none
    proto: np.ndarray  # int64
    src_hi: np.ndarray  # uint64 (IPv4: IPv4-mapped)
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int64
    dport: np.ndarray
    app: np.ndarray  # uint8 codes of APPS (the flow's, as known now)


def _lut(size: int, members: list[int]) -> np.ndarray | None:
    """A boolean table of ``size`` entries, true at ``members`` (None: no condition)."""
    if not members:
        return None
    t = np.zeros(size, bool)
    t[[m for m in members if 0 <= m < size]] = True
    return t


class _Net:
    """A network as a 128-bit (hi, lo) value and mask (IPv4 as IPv4-mapped)."""

    def __init__(self, text: str) -> None:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == 4:
            value = (0xFFFF << 32) | int(net.network_address)
            bits = 96 + net.prefixlen
        else:
            value, bits = int(net.network_address), net.prefixlen
        mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
        self.hi, self.lo = np.uint64(value >> 64), np.uint64(value & (2**64 - 1))
        self.mhi, self.mlo = np.uint64(mask >> 64), np.uint64(mask & (2**64 - 1))

    def holds(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return ((hi & self.mhi) == self.hi) & ((lo & self.mlo) == self.lo)


class _Rule:
    def __init__(self, rule: KeepRule) -> None:
        self.vni = np.array(rule.vni, np.int64)
        self.service, self.cluster = set(rule.service), set(rule.cluster)
        self.nets = [_Net(c) for c in rule.cidr]
        # (lookup tables: np.isin costs tens of microseconds a call however small the set)
        self.proto = _lut(256, [PROTOS.get(p.lower(), int(p) if p.isdigit() else -1) for p in rule.proto])
        self.port = _lut(65536, rule.port)
        self.app = _lut(len(APPS), [APP_CODE[a] for a in rule.app])
        self.packets = NO_LIMIT if rule.packets < 0 else rule.packets
        self.bytes = NO_LIMIT if rule.bytes < 0 else rule.bytes
        self.labels = bool(self.service or self.cluster)
        self._vni_ok: dict[int, bool] = {}

    def _labels_hold(self, vni: np.ndarray, labeler: Callable[[int], dict[str, Any] | None] | None) -> np.ndarray:
        uniq, inv = np.unique(vni, return_inverse=True)
        ok = np.zeros(uniq.size, bool)
        for i, v in enumerate(uniq.tolist()):
            hit = self._vni_ok.get(v)
            if hit is None:
                lab = (labeler(v) if labeler is not None and v >= 0 else None) or {}
                hit = (not self.service or lab.get("service") in self.service) and (
                    not self.cluster or lab.get("cluster") in self.cluster
                )
                if labeler is None or lab:  # (unknown sessions are asked again later)
                    self._vni_ok[v] = hit
            ok[i] = hit
        return ok[inv.reshape(-1)]

    def matches(self, k: PacketKeys, labeler: Callable[[int], dict[str, Any] | None] | None) -> np.ndarray:
        m = np.ones(k.vni.size, bool)
        if self.vni.size:
            m &= np.isin(k.vni, self.vni)
        if self.proto is not None:
            m &= self.proto[k.proto & 0xFF]
        if self.port is not None:
            m &= self.port[k.sport & 0xFFFF] | self.port[k.dport & 0xFFFF]
        if self.app is not None:
            m &= self.app[np.minimum(k.app, len(APPS) - 1)]
        if self.nets:
            hit = np.zeros(k.vni.size, bool)
            for net in self.nets:
                hit |= net.holds(k.src_hi, k.src_lo) | net.holds(k.dst_hi, k.dst_lo)
            m &= hit
        if self.labels and m.any():
            m &= self._labels_hold(k.vni, labeler)
        return m

    def forget_labels(self) -> None:
        self._vni_ok.clear()


class Policy:
    """Rules compiled for vectorized use: ``limits`` gives each packet's flow limits."""

    def __init__(self, rules: list[KeepRule] | None, labeler: Callable[[int], dict[str, Any] | None] | None = None):
        self.rules = [_Rule(r) for r in (default_rules() if rules is None else rules)]
        self.labeler = labeler
        self.uses_app = any(r.app is not None for r in self.rules)

    def limits(self, k: PacketKeys) -> tuple[np.ndarray, np.ndarray]:
        """(packets, bytes) limits per packet (NO_LIMIT: none), from the first rule that matches."""
        n = k.vni.size
        packets = np.full(n, NO_LIMIT, np.int64)
        nbytes = np.full(n, NO_LIMIT, np.int64)
        undecided = np.ones(n, bool)
        for rule in self.rules:
            hit = rule.matches(k, self.labeler) & undecided
            if hit.any():
                packets[hit] = rule.packets
                nbytes[hit] = rule.bytes
                undecided &= ~hit
                if not undecided.any():
                    break
        return packets, nbytes
