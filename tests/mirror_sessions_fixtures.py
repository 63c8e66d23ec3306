"""A moto-backed AWS world for the mirror-session Lambda and the receiver's VNI labeler:
a VPC with two subnets in two AZs, two ENI mirror targets (one per AZ), a filter, an ECS
cluster with a Fargate awsvpc task definition, and helpers that run and stop tasks and build
EventBridge events in the documented formats."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

REGION = "us-east-1"
ACCOUNT = "123456789012"
AZ_A, AZ_B = "us-east-1a", "us-east-1b"


def _iso(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(v, dict):
        return {k: _iso(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_iso(x) for x in v]
    return v


@dataclass
class World:
    ec2: Any
    ecs: Any
    vpc_id: str
    subnets: dict[str, str]  # az -> subnet id
    sg: str
    target_a: str  # ENI target in AZ_A
    target_b: str  # ENI target in AZ_B
    filter_id: str
    cluster_arn: str
    taskdef_arn: str
    az_of_task: dict[str, str] = field(default_factory=dict)

    # -- ECS ---------------------------------------------------------------------------

    def run_tasks(self, n: int, az: str = AZ_A, group: str = "service:web", **kw: Any) -> list[dict[str, Any]]:
        resp = self.ecs.run_task(
            cluster="prod",
            taskDefinition=self.taskdef_arn,
            count=n,
            launchType="FARGATE",
            group=group,
            networkConfiguration={"awsvpcConfiguration": {"subnets": [self.subnets[az]], "securityGroups": [self.sg]}},
            **kw,
        )
        tasks = resp["tasks"]
        assert len(tasks) == n
        for t in tasks:
            self.az_of_task[t["taskArn"]] = az
        return [self.describe(t["taskArn"]) for t in tasks]

    def describe(self, task_arn: str) -> dict[str, Any]:
        (t,) = self.ecs.describe_tasks(cluster="prod", tasks=[task_arn], include=["TAGS"])["tasks"]
        return t

    def stop(self, task: dict[str, Any]) -> dict[str, Any]:
        """Stop a task as Fargate does: the task goes STOPPED and its ENI is deleted."""
        self.ecs.stop_task(cluster="prod", task=task["taskArn"], reason="scale in")
        for eni in task_enis(task):
            self.ec2.delete_network_interface(NetworkInterfaceId=eni)
        return self.describe(task["taskArn"])

    def task_event(self, task: dict[str, Any], status: str | None = None) -> dict[str, Any]:
        """An "ECS Task State Change" event as EventBridge delivers it: the task's fields in the
        detail, ENI attachments with ``type: eni``, the AZ, timestamps as ISO strings."""
        detail = _iso(dict(task))
        detail.pop("tags", None)  # task events do not carry the task's tags
        detail["lastStatus"] = status or task["lastStatus"]
        if detail["lastStatus"] in ("STOPPED", "DEPROVISIONING"):
            detail["desiredStatus"] = "STOPPED"
        detail["availabilityZone"] = self.az_of_task.get(task["taskArn"], AZ_A)
        detail["attachments"] = [
            {**a, "type": "eni" if a.get("type") == "ElasticNetworkInterface" else a.get("type")}
            for a in detail.get("attachments", [])
        ]
        detail.setdefault("version", 1)
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": ACCOUNT,
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [task["taskArn"]],
            "detail": detail,
        }

    # -- EC2 ---------------------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        out = []
        for page in self.ec2.get_paginator("describe_traffic_mirror_sessions").paginate():
            out.extend(page["TrafficMirrorSessions"])
        return out

    def managed(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions() if tags_of(s).get("vxmirror:managed-by") == "vxmirror"]

    def new_eni(self, az: str = AZ_A) -> str:
        return self.ec2.create_network_interface(SubnetId=self.subnets[az])["NetworkInterface"]["NetworkInterfaceId"]


def instance_event(instance_id: str, state: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": ACCOUNT,
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/vxmirror-reconcile"],
        "detail": {},
    }


def task_enis(task: dict[str, Any]) -> list[str]:
    return [
        d["value"]
        for a in task.get("attachments", [])
        for d in a.get("details", [])
        if d["name"] == "networkInterfaceId"
    ]


def tags_of(obj: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in obj.get("Tags", [])}


def client_error(op: str, code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def build_world() -> World:
    """Call inside ``mock_aws``."""
    from moto.moto_api import state_manager

    # Keep tasks RUNNING however often they are described (moto advances them otherwise).
    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**6})
    ec2 = boto3.client("ec2", region_name=REGION)
    ecs = boto3.client("ecs", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets = {
        AZ_A: ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=AZ_A)["Subnet"]["SubnetId"],
        AZ_B: ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.2.0/24", AvailabilityZone=AZ_B)["Subnet"]["SubnetId"],
    }
    sg = ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    targets = {}
    for az, sub in subnets.items():
        eni = ec2.create_network_interface(SubnetId=sub, Description=f"receiver {az}")["NetworkInterface"]
        targets[az] = ec2.create_traffic_mirror_target(
            NetworkInterfaceId=eni["NetworkInterfaceId"], Description=f"receiver {az}"
        )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    flt = ec2.create_traffic_mirror_filter(Description="vxmirror")["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
    cluster = ecs.create_cluster(clusterName="prod")["cluster"]["clusterArn"]
    td = ecs.register_task_definition(
        family="web",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "web", "image": "nginx", "memory": 512, "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    return World(ec2, ecs, vpc, subnets, sg, targets[AZ_A], targets[AZ_B], flt, cluster, td)


def lambda_env(monkeypatch: pytest.MonkeyPatch, world: World, **extra: str) -> None:
    monkeypatch.setenv("TARGET_IDS", f"{world.target_a},{world.target_b}")
    monkeypatch.setenv("FILTER_ID", world.filter_id)
    monkeypatch.setenv("CLUSTERS", "prod")
    for k in ("SERVICES", "TASK_TAG", "LAUNCH_TYPES", "INSTANCE_TAG", "ENI_TARGET_CAPACITY", "SESSION_NUMBER"):
        monkeypatch.delenv(k, raising=False)
    for k, v in extra.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from moto import mock_aws

    from mirror_sessions import handler as handler_mod

    aws_env(monkeypatch)
    with mock_aws():
        handler_mod.reset()
        w = build_world()
        lambda_env(monkeypatch, w)
        yield w
        handler_mod.reset()


def emf_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            out.append(json.loads(line))
    return out
