"""EventBridge events -> what to do.

Formats followed (Amazon EventBridge, as documented by ECS and EC2):

* ``"detail-type": "ECS Task State Change"``, ``"source": "aws.ecs"``: ``detail`` is the task
  (``taskArn``, ``clusterArn``, ``lastStatus``, ``desiredStatus``, ``group``, ``launchType``,
  ``availabilityZone``, ``attachments`` whose ``type`` is ``eni`` with ``details`` name/value pairs
  ``networkInterfaceId``, ``privateIPv4Address``, ``subnetId``).
* ``"detail-type": "EC2 Instance State-change Notification"``, ``"source": "aws.ec2"``:
  ``detail`` = ``{"instance-id": ..., "state": ...}``.
* ``"detail-type": "Scheduled Event"``, ``"source": "aws.events"``: run a reconcile.

The ECS API (``DescribeTasks``) returns the same task shape (attachment type
``ElasticNetworkInterface``), so :func:`task_from_api` shares the parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ECS_TASK = "ECS Task State Change"
EC2_INSTANCE = "EC2 Instance State-change Notification"
SCHEDULED = "Scheduled Event"

RUNNING_STATES = frozenset({"RUNNING"})
STOPPED_STATES = frozenset({"STOPPED", "DEPROVISIONING"})
INSTANCE_UP = frozenset({"running"})
INSTANCE_DOWN = frozenset({"stopping", "stopped", "shutting-down", "terminated"})


class EventError(ValueError):
    """An event that claims a known type but lacks what it needs."""


@dataclass(frozen=True)
class TaskEni:
    eni_id: str
    private_ip: str | None
    subnet_id: str | None


@dataclass(frozen=True)
class TaskState:
    task_arn: str
    cluster_arn: str
    last_status: str
    desired_status: str | None
    group: str
    launch_type: str | None
    az: str | None
    enis: tuple[TaskEni, ...]
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def cluster_name(self) -> str:
        return self.cluster_arn.rsplit("/", 1)[-1]

    @property
    def service(self) -> str | None:
        return self.group[len("service:") :] if self.group.startswith("service:") else None

    @property
    def task_id(self) -> str:
        return self.task_arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class InstanceState:
    instance_id: str
    state: str


@dataclass(frozen=True)
class Reconcile:
    pass


@dataclass(frozen=True)
class Ignored:
    reason: str


Parsed = TaskState | InstanceState | Reconcile | Ignored


def _details(att: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in att.get("details") or []:
        if isinstance(d, Mapping) and isinstance(d.get("name"), str) and d.get("value") is not None:
            out[d["name"]] = str(d["value"])
    return out


def task_from_api(task: Mapping[str, Any]) -> TaskState:
    """A task from an event's ``detail`` or from ``DescribeTasks`` (same keys)."""
    arn = task.get("taskArn")
    cluster = task.get("clusterArn")
    status = task.get("lastStatus")
    if not isinstance(arn, str) or not isinstance(cluster, str) or not isinstance(status, str):
        raise EventError("task lacks taskArn, clusterArn or lastStatus")
    enis = []
    for att in task.get("attachments") or []:
        if not isinstance(att, Mapping) or att.get("type") not in ("eni", "ElasticNetworkInterface"):
            continue
        d = _details(att)
        if "networkInterfaceId" in d:
            enis.append(TaskEni(d["networkInterfaceId"], d.get("privateIPv4Address"), d.get("subnetId")))
    tags = {
        str(t["key"]): str(t.get("value", "")) for t in task.get("tags") or [] if isinstance(t, Mapping) and "key" in t
    }
    return TaskState(
        task_arn=arn,
        cluster_arn=cluster,
        last_status=status,
        desired_status=task.get("desiredStatus"),
        group=str(task.get("group") or ""),
        launch_type=task.get("launchType"),
        az=task.get("availabilityZone"),
        enis=tuple(enis),
        tags=tags,
    )


def parse_event(event: Any) -> Parsed:
    """Classify an invocation payload. Unknown shapes are ignored (with a reason), never a crash;
    a known type with missing fields raises :class:`EventError`."""
    if not isinstance(event, Mapping):
        return Ignored("not_an_object")
    kind = event.get("detail-type")
    source = event.get("source")
    detail = event.get("detail")
    if kind == SCHEDULED or (source == "aws.events" and kind is None) or event.get("action") == "reconcile":
        return Reconcile()
    if not isinstance(detail, Mapping):
        return Ignored("no_detail")
    if kind == ECS_TASK and source == "aws.ecs":
        return task_from_api(detail)
    if kind == EC2_INSTANCE and source == "aws.ec2":
        iid, state = detail.get("instance-id"), detail.get("state")
        if not isinstance(iid, str) or not isinstance(state, str):
            raise EventError("instance event lacks instance-id or state")
        return InstanceState(iid, state)
    return Ignored("unknown_event_type")
