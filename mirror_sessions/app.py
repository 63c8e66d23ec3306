"""What each event does. The handler module only wires AWS clients and settings to this."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from . import aws, logs
from .aws import EC2Client, ECSClient, Session
from .config import Settings
from .errors import error_code
from .events import (
    INSTANCE_DOWN,
    INSTANCE_UP,
    RUNNING_STATES,
    STOPPED_STATES,
    Ignored,
    InstanceState,
    Parsed,
    Reconcile,
    TaskState,
    task_from_api,
)
from .metrics import Metrics
from .reconcile import reconcile
from .selection import cluster_selected, instance_selected, task_skip_reason
from .sessions import SessionManager, SkipMemory
from .sources import Source, task_sources
from .targets import Target, build_targets


class MirrorManager:
    def __init__(
        self, ec2: EC2Client, ecs: ECSClient, settings: Settings, metrics: Metrics, memory: SkipMemory
    ) -> None:
        self.ec2 = ec2
        self.ecs = ecs
        self.settings = settings
        self.metrics = metrics
        self.sessions = SessionManager(ec2, settings, metrics, memory)

    # -- shared ---------------------------------------------------------------------------

    def targets(self, on_targets: list[Session]) -> list[Target]:
        described = aws.describe_targets(self.ec2, self.settings.target_ids)
        eni_ids = [str(t["NetworkInterfaceId"]) for t in described if t.get("NetworkInterfaceId")]
        azs = aws.eni_azs(self.ec2, eni_ids) if eni_ids else {}
        targets, missing = build_targets(
            self.settings.target_ids, described, azs, on_targets, self.settings.eni_target_capacity
        )
        if missing:
            logs.warning("configured mirror targets do not exist", targets=missing)
        return targets

    def ensure_sources(self, sources: list[Source]) -> Counter[str]:
        result: Counter[str] = Counter()
        if not sources:
            return result
        on_targets = aws.sessions_on_targets(self.ec2, self.settings.target_ids)
        targets = self.targets(on_targets)
        on_enis = aws.sessions_on_enis(self.ec2, [s.eni_id for s in sources])
        for src in sources:
            result[self.sessions.ensure(src, targets, on_enis.get(src.eni_id, []))] += 1
        return result

    def delete_owner(self, owner: str, eni_ids: list[str], why: str) -> int:
        found = aws.sessions_on_targets(self.ec2, self.settings.target_ids)
        if eni_ids:
            for lst in aws.sessions_on_enis(self.ec2, eni_ids).values():
                found.extend(lst)
        return self.sessions.delete_owner(owner, found, why)

    # -- events ---------------------------------------------------------------------------

    def handle(self, parsed: Parsed) -> dict[str, Any]:
        if isinstance(parsed, Reconcile):
            return {"action": "reconcile", **reconcile(self)}
        if isinstance(parsed, TaskState):
            return self.on_task(parsed)
        if isinstance(parsed, InstanceState):
            return self.on_instance(parsed)
        assert isinstance(parsed, Ignored)
        self.metrics.add("EventsIgnored")
        logs.info("event ignored", reason=parsed.reason)
        return {"action": "ignored", "reason": parsed.reason}

    def on_task(self, evt: TaskState) -> dict[str, Any]:
        base = {"task_arn": evt.task_arn, "status": evt.last_status}
        if not cluster_selected(self.settings, evt.cluster_arn):
            self.metrics.add("EventsIgnored")
            return {"action": "ignored", "reason": "cluster_not_selected", **base}
        if evt.last_status in STOPPED_STATES:
            n = self.delete_owner(evt.task_arn, [e.eni_id for e in evt.enis], "task_" + evt.last_status.lower())
            return {"action": "deleted", "deleted": n, **base}
        if evt.last_status not in RUNNING_STATES:
            self.metrics.add("EventsIgnored")
            return {"action": "ignored", "reason": "status_" + evt.last_status.lower(), **base}
        # Events arrive late and out of order: ask ECS what the task is now.
        current = aws.describe_task(self.ecs, evt.cluster_arn, evt.task_arn)
        if current is None or current.get("lastStatus") != "RUNNING" or current.get("desiredStatus") == "STOPPED":
            now = current.get("lastStatus") if current else "MISSING"
            logs.info("task no longer running, nothing to create", task_arn=evt.task_arn, now=now)
            n = self.delete_owner(evt.task_arn, [e.eni_id for e in evt.enis], "task_not_running")
            self.metrics.skip("task_not_running")
            return {"action": "skipped", "reason": "task_not_running", "deleted": n, **base}
        task = task_from_api(current)
        if task.az is None and evt.az is not None:
            task = replace(task, az=evt.az)
        reason = task_skip_reason(self.settings, task)
        if reason is not None:
            self.metrics.skip(reason)
            logs.info("task not mirrored", task_arn=task.task_arn, reason=reason)
            return {"action": "skipped", "reason": reason, **base}
        azs = aws.eni_azs(self.ec2, [e.eni_id for e in task.enis]) if task.az is None else {}
        result = self.ensure_sources(task_sources(task, azs))
        return {"action": "ensured", "results": dict(result), **base}

    def instance_sources(self, inst: dict[str, Any]) -> list[Source]:
        iid = str(inst.get("InstanceId"))
        az = (inst.get("Placement") or {}).get("AvailabilityZone")
        out = []
        for ni in inst.get("NetworkInterfaces") or []:
            if ni.get("InterfaceType", "interface") != "interface" or not ni.get("NetworkInterfaceId"):
                continue
            out.append(Source(ni["NetworkInterfaceId"], ni.get("PrivateIpAddress"), az, instance_id=iid))
        return out

    def on_instance(self, evt: InstanceState) -> dict[str, Any]:
        base = {"instance_id": evt.instance_id, "state": evt.state}
        if evt.state in INSTANCE_DOWN:
            n = self.delete_owner(evt.instance_id, [], "instance_" + evt.state)
            return {"action": "deleted", "deleted": n, **base}
        if evt.state not in INSTANCE_UP:
            self.metrics.add("EventsIgnored")
            return {"action": "ignored", "reason": "state_" + evt.state, **base}
        try:
            found = aws.describe_instances(self.ec2, InstanceIds=[evt.instance_id])
        except ClientError as e:
            if error_code(e) != "InvalidInstanceID.NotFound":
                raise
            found = []
        inst = found[0] if found else None
        if inst is None or (inst.get("State") or {}).get("Name") != "running":
            self.metrics.skip("instance_not_running")
            return {"action": "skipped", "reason": "instance_not_running", **base}
        tags = {t["Key"]: t.get("Value", "") for t in inst.get("Tags") or []}
        if not instance_selected(self.settings, tags):
            self.metrics.add("EventsIgnored")
            return {"action": "ignored", "reason": "instance_not_opted_in", **base}
        result = self.ensure_sources(self.instance_sources(inst))
        return {"action": "ensured", "results": dict(result), **base}
