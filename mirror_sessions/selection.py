"""Which tasks and instances are mirrored (configuration: clusters, services, tag opt-in,
launch type)."""

from __future__ import annotations

from collections.abc import Mapping

from .config import Settings
from .events import TaskState


def cluster_selected(settings: Settings, cluster_arn: str) -> bool:
    if not settings.clusters:
        return True
    name = cluster_arn.rsplit("/", 1)[-1]
    return any(c in (cluster_arn, name) for c in settings.clusters)


def task_skip_reason(settings: Settings, task: TaskState) -> str | None:
    """None if the task is to be mirrored, else the reason it is not (a metric dimension)."""
    if not cluster_selected(settings, task.cluster_arn):
        return "cluster_not_selected"
    if settings.launch_types and task.launch_type not in settings.launch_types:
        return "launch_type_not_selected"
    if settings.services and task.service not in settings.services:
        return "service_not_selected"
    if settings.task_tag is not None and not settings.task_tag.matches(task.tags):
        return "task_not_opted_in"
    if not task.enis:
        return "task_has_no_eni"
    return None


def instance_selected(settings: Settings, tags: Mapping[str, str]) -> bool:
    return settings.instance_tag is not None and settings.instance_tag.matches(tags)
