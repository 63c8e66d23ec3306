"""A mirror source: one network interface and whom it belongs to (a task or an instance),
and the tags its session carries."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import MARKER_KEY, MARKER_VALUE
from .events import TaskState

TAG_TASK = "vxmirror:task-arn"
TAG_CLUSTER = "vxmirror:cluster"
TAG_SERVICE = "vxmirror:service"
TAG_ENI = "vxmirror:eni"
TAG_IP = "vxmirror:private-ip"
TAG_AZ = "vxmirror:az"
TAG_INSTANCE = "vxmirror:instance-id"


@dataclass(frozen=True)
class Source:
    eni_id: str
    private_ip: str | None
    az: str | None
    task_arn: str | None = None
    cluster: str | None = None
    service: str | None = None
    instance_id: str | None = None

    @property
    def owner(self) -> str:
        """The task ARN or instance ID this ENI belongs to."""
        return self.task_arn or self.instance_id or self.eni_id

    def name(self) -> str:
        if self.task_arn:
            who = self.service or self.cluster or "task"
            return f"vxmirror {who}/{self.task_arn.rsplit('/', 1)[-1]} {self.eni_id}"[:255]
        return f"vxmirror {self.instance_id or 'eni'} {self.eni_id}"[:255]

    def tags(self) -> dict[str, str]:
        t = {MARKER_KEY: MARKER_VALUE, TAG_ENI: self.eni_id, "Name": self.name()}
        for k, v in (
            (TAG_TASK, self.task_arn),
            (TAG_CLUSTER, self.cluster),
            (TAG_SERVICE, self.service),
            (TAG_IP, self.private_ip),
            (TAG_AZ, self.az),
            (TAG_INSTANCE, self.instance_id),
        ):
            if v:
                t[k] = v
        return t

    def client_token(self, target_id: str) -> str:
        """Idempotency token for CreateTrafficMirrorSession: derived from (owner, ENI, target),
        so a retried create returns the first one's session (64 ASCII characters, AWS's limit)."""
        return hashlib.sha256(f"{self.owner}|{self.eni_id}|{target_id}".encode()).hexdigest()


def task_sources(task: TaskState, az_of_eni: dict[str, str] | None = None) -> list[Source]:
    out = []
    for eni in task.enis:
        az = task.az or (az_of_eni or {}).get(eni.eni_id)
        out.append(
            Source(
                eni_id=eni.eni_id,
                private_ip=eni.private_ip,
                az=az,
                task_arn=task.task_arn,
                cluster=task.cluster_name,
                service=task.service,
            )
        )
    return out


def tag_dict(tags: Any) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or [] if "Key" in t}


def is_managed(session: Mapping[str, Any]) -> bool:
    return tag_dict(session.get("Tags")).get(MARKER_KEY) == MARKER_VALUE
