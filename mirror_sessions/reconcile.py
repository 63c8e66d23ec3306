"""The scheduled reconcile: compare what should be mirrored with the sessions on our targets,
create the missing and delete the orphaned (task stopped, instance gone, ENI reused).

A failure to list tasks or sessions aborts before anything is deleted: a partial view must
never look like "everything stopped".
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from . import aws, logs
from .errors import error_code
from .events import TaskState, task_from_api
from .selection import task_skip_reason
from .sessions import session_owner
from .sources import Source, is_managed, task_sources

if TYPE_CHECKING:
    from .app import MirrorManager


def desired_sources(mgr: MirrorManager) -> dict[str, Source]:
    settings = mgr.settings
    clusters = list(settings.clusters) or aws.list_clusters(mgr.ecs)
    tasks: list[TaskState] = []
    for cluster in clusters:
        try:
            tasks.extend(task_from_api(t) for t in aws.running_tasks(mgr.ecs, cluster))
        except ClientError as e:
            if error_code(e) != "ClusterNotFoundException":
                raise
            logs.warning("configured cluster not found", cluster=cluster)
    chosen = []
    skipped: Counter[str] = Counter()
    for t in tasks:
        reason = task_skip_reason(settings, t)
        if reason is None:
            chosen.append(t)
        else:
            skipped[reason] += 1
    need_az = [e.eni_id for t in chosen if t.az is None for e in t.enis]
    azs = aws.eni_azs(mgr.ec2, need_az) if need_az else {}
    out: dict[str, Source] = {}
    for t in chosen:
        for src in task_sources(t, azs):
            out[src.eni_id] = src
    if settings.instance_tag is not None:
        tag = settings.instance_tag
        flt = [{"Name": "instance-state-name", "Values": ["running"]}]
        if tag.value is None:
            flt.append({"Name": "tag-key", "Values": [tag.key]})
        else:
            flt.append({"Name": f"tag:{tag.key}", "Values": [tag.value]})
        for inst in aws.describe_instances(mgr.ec2, Filters=flt):
            for src in mgr.instance_sources(inst):
                out.setdefault(src.eni_id, src)
    if skipped:
        logs.info("reconcile: tasks not selected", **{k: v for k, v in skipped.items()})
    return out


def reconcile(mgr: MirrorManager) -> dict[str, Any]:
    desired = desired_sources(mgr)
    on_targets = aws.sessions_on_targets(mgr.ec2, mgr.settings.target_ids)
    managed = [s for s in on_targets if is_managed(s)]
    deleted = 0
    kept: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for s in managed:
        eni = str(s.get("NetworkInterfaceId"))
        owner = session_owner(s)
        want = desired.get(eni)
        key = (eni, owner or "")
        if want is None or want.owner != owner:
            deleted += mgr.sessions.delete(s, "orphaned")
        elif key in seen:
            deleted += mgr.sessions.delete(s, "duplicate")
        else:
            seen.add(key)
            kept.append(s)
    have = {str(s.get("NetworkInterfaceId")) for s in kept}
    missing = [src for eni, src in desired.items() if eni not in have]
    results = mgr.ensure_sources(missing) if missing else Counter()
    summary = {
        "desired": len(desired),
        "sessions_before": len(managed),
        "deleted": deleted,
        "results": dict(results),
    }
    logs.info("reconcile done", **summary)
    return summary
