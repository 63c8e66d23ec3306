"""Source allowlist: which senders' datagrams are accepted, vectorised over a batch."""

from __future__ import annotations

import ipaddress

import numpy as np

from ..packets import U32, B


class SourceFilter:
    """Networks datagrams may come from. ``allowed_v4``/``allowed_v6`` give a mask per datagram."""

    def __init__(self, networks: list[str]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                v4.append((int(net.network_address), int(net.netmask)))
            else:
                v6.append((int(net.network_address), int(net.netmask)))
        self.v4_net = np.array([n for n, _ in v4], np.uint32)
        self.v4_mask = np.array([m for _, m in v4], np.uint32)
        self.v6 = [
            (
                np.frombuffer(n.to_bytes(16, "big"), np.uint8),
                np.frombuffer(m.to_bytes(16, "big"), np.uint8),
            )
            for n, m in v6
        ]
        self.allow_all_v4 = any(m == 0 for _, m in v4)
        self.allow_all_v6 = any(m == 0 for _, m in v6)

    def allowed_v4(self, src: U32) -> B:
        if self.allow_all_v4:
            return np.ones(src.shape[0], np.bool_)
        if self.v4_net.shape[0] == 0:
            return np.zeros(src.shape[0], np.bool_)
        return ((src[:, None] & self.v4_mask[None, :]) == self.v4_net[None, :]).any(axis=1)

    def allowed_v6(self, src: np.ndarray) -> B:
        """``src``: ``[n, 16]`` uint8 addresses. IPv4-mapped addresses use the IPv4 networks."""
        n = src.shape[0]
        if self.allow_all_v6:
            return np.ones(n, np.bool_)
        ok = np.zeros(n, np.bool_)
        for net, mask in self.v6:
            ok |= ((src & mask[None, :]) == net[None, :]).all(axis=1)
        mapped = (src[:, :10] == 0).all(axis=1) & (src[:, 10] == 0xFF) & (src[:, 11] == 0xFF)
        if mapped.any():
            v4 = np.ascontiguousarray(src[mapped, 12:16]).view(">u4").reshape(-1).astype(np.uint32)
            ok[mapped] = self.allowed_v4(v4)
        return ok
