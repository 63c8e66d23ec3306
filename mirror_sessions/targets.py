"""Mirror targets: which have room, in which Availability Zone, in what order to try them.

An ENI target takes at most 10 sources (AWS quota); Network Load Balancer and Gateway Load
Balancer endpoint targets are unlimited. Targets in the source's AZ come first (cross-AZ
traffic is billed), then AZ-less load balancer targets, then the rest; the configured order
decides within each group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENI_TARGET = "network-interface"


@dataclass
class Target:
    target_id: str
    kind: str  # network-interface | network-load-balancer | gateway-load-balancer-endpoint
    az: str | None  # ENI targets only
    capacity: int | None  # None: unlimited
    sources: set[str] = field(default_factory=set)  # source ENIs with a session on this target

    def has_room(self, eni_id: str) -> bool:
        if self.capacity is None or eni_id in self.sources:
            return True
        return len(self.sources) < self.capacity


def build_targets(
    target_ids: Iterable[str],
    described: Iterable[Mapping[str, Any]],
    az_of_eni: Mapping[str, str],
    sessions: Iterable[Mapping[str, Any]],
    eni_capacity: int,
) -> tuple[list[Target], list[str]]:
    """Targets in configured order, and the configured IDs that do not exist."""
    by_id = {t["TrafficMirrorTargetId"]: t for t in described}
    out: list[Target] = []
    missing: list[str] = []
    for tid in target_ids:
        d = by_id.get(tid)
        if d is None:
            missing.append(tid)
            continue
        kind = str(d.get("Type") or "")
        eni = d.get("NetworkInterfaceId")
        if kind == ENI_TARGET or (not kind and eni):
            out.append(Target(tid, ENI_TARGET, az_of_eni.get(str(eni)), eni_capacity))
        else:
            out.append(Target(tid, kind or "network-load-balancer", None, None))
    index = {t.target_id: t for t in out}
    for s in sessions:
        t = index.get(str(s.get("TrafficMirrorTargetId")))
        if t is not None:
            t.sources.add(str(s.get("NetworkInterfaceId")))
    return out, missing


def candidates(targets: list[Target], az: str | None, eni_id: str) -> list[Target]:
    """Targets with room for ``eni_id``, best first."""

    def rank(t: Target) -> int:
        if az is not None and t.az == az:
            return 0
        if t.az is None:
            return 1
        return 2

    return sorted((t for t in targets if t.has_room(eni_id)), key=rank)  # stable: config order
