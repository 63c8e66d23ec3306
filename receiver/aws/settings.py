"""Settings of task-aware flows (``[aws]``): mapping VNIs to mirror sessions' tags.

With credentials available (instance role, environment, profile), the receiver describes the
traffic mirror sessions every ``refresh_seconds`` and labels each flow record with the task,
cluster, service, ENI and AZ of its session (``aws`` object). Without credentials it logs one
warning and runs without labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import opt


@dataclass
class AwsConfig:
    enabled: bool = opt(True, "label flows with their mirror session's task (needs AWS credentials)")
    region: str = opt("", "AWS region of the sessions (default: from the environment or profile)")
    profile: str = opt("", "named AWS profile (default: the default credential chain)")
    target_ids: list[str] = opt(
        [], "mirror targets whose sessions to map (empty: every session tagged vxmirror:managed-by=vxmirror)"
    )
    refresh_seconds: float = opt(60.0, "how often to re-read the sessions", min=5, max=86400)
    endpoint_url: str = opt("", "EC2 endpoint override (a VPC endpoint; tests)")
