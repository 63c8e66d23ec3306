"""Settings of the live listener (``[listen]``) and the metrics endpoint (``[metrics]``).

Owned by the live-receiver work; this first version only fixes the names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configschema import opt


@dataclass
class ListenConfig:
    addresses: list[str] = opt(["0.0.0.0:4789", "0.0.0.0:6081"], "HOST:PORT to receive on")


@dataclass
class MetricsConfig:
    listen: str = opt("127.0.0.1:9109", "HOST:PORT of /metrics and /healthz (port 0: off)")
