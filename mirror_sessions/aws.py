"""Read-side AWS calls (paginated), kept apart from the decisions that use them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ecs import ECSClient
else:
    EC2Client = ECSClient = Any

Session = dict[str, Any]


def _chunks(items: Sequence[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def describe_sessions(ec2: EC2Client, filters: list[dict[str, Any]]) -> list[Session]:
    out: list[Session] = []
    for page in ec2.get_paginator("describe_traffic_mirror_sessions").paginate(Filters=filters):  # type: ignore[arg-type]
        out.extend(dict(s) for s in page.get("TrafficMirrorSessions", []))
    return out


def sessions_on_targets(ec2: EC2Client, target_ids: Sequence[str]) -> list[Session]:
    return describe_sessions(ec2, [{"Name": "traffic-mirror-target-id", "Values": list(target_ids)}])


def sessions_on_enis(ec2: EC2Client, eni_ids: Sequence[str]) -> dict[str, list[Session]]:
    """Every session (ours or not, any target) on each ENI."""
    out: dict[str, list[Session]] = {e: [] for e in eni_ids}
    for chunk in _chunks(sorted(set(eni_ids)), 200):
        for s in describe_sessions(ec2, [{"Name": "network-interface-id", "Values": chunk}]):
            out.setdefault(str(s.get("NetworkInterfaceId")), []).append(s)
    return out


def describe_targets(ec2: EC2Client, target_ids: Sequence[str]) -> list[dict[str, Any]]:
    # A filter, not TrafficMirrorTargetIds: a missing ID must not fail the whole call.
    out: list[dict[str, Any]] = []
    flt = [{"Name": "traffic-mirror-target-id", "Values": list(target_ids)}]
    for page in ec2.get_paginator("describe_traffic_mirror_targets").paginate(Filters=flt):  # type: ignore[arg-type]
        out.extend(dict(t) for t in page.get("TrafficMirrorTargets", []))
    return out


def eni_azs(ec2: EC2Client, eni_ids: Iterable[str]) -> dict[str, str]:
    """AZ of each existing ENI (missing ENIs are absent from the result)."""
    out: dict[str, str] = {}
    for chunk in _chunks(sorted(set(eni_ids)), 200):
        flt = [{"Name": "network-interface-id", "Values": chunk}]
        for page in ec2.get_paginator("describe_network_interfaces").paginate(Filters=flt):  # type: ignore[arg-type]
            for ni in page.get("NetworkInterfaces", []):
                if ni.get("NetworkInterfaceId") and ni.get("AvailabilityZone"):
                    out[ni["NetworkInterfaceId"]] = ni["AvailabilityZone"]
    return out


def list_clusters(ecs: ECSClient) -> list[str]:
    out: list[str] = []
    for page in ecs.get_paginator("list_clusters").paginate():
        out.extend(page.get("clusterArns", []))
    return out


def running_tasks(ecs: ECSClient, cluster: str) -> list[dict[str, Any]]:
    """Tasks of ``cluster`` whose desired and last status are RUNNING, with their tags."""
    arns: list[str] = []
    for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="RUNNING"):
        arns.extend(page.get("taskArns", []))
    tasks: list[dict[str, Any]] = []
    for chunk in _chunks(arns, 100):
        resp = ecs.describe_tasks(cluster=cluster, tasks=chunk, include=["TAGS"])
        tasks.extend(dict(t) for t in resp.get("tasks", []) if t.get("lastStatus") == "RUNNING")
    return tasks


def describe_task(ecs: ECSClient, cluster: str, task_arn: str) -> dict[str, Any] | None:
    resp = ecs.describe_tasks(cluster=cluster, tasks=[task_arn], include=["TAGS"])
    for t in resp.get("tasks", []):
        if t.get("taskArn") == task_arn:
            return dict(t)
    return None


def describe_instances(ec2: EC2Client, **kwargs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(**kwargs):
        for r in page.get("Reservations", []):
            out.extend(dict(i) for i in r.get("Instances", []))
    return out
