"""Configuration of the Lambda, read from environment variables.

=====================  ==============================================================
``TARGET_IDS``         comma-separated traffic mirror target IDs, in order of preference
``FILTER_ID``          the traffic mirror filter every session uses
``SESSION_NUMBER``     preferred session number (1-32766, default 1); the next free one
                       is used when another session on the ENI already has it
``PACKET_LENGTH``      bytes of each packet to mirror (empty: the whole packet)
``CLUSTERS``           cluster names or ARNs to mirror (empty: every cluster)
``SERVICES``           service names (the task ``group`` ``service:NAME``; empty: any task)
``TASK_TAG``           opt-in task tag, ``KEY`` or ``KEY=VALUE`` (empty: no tag needed)
``LAUNCH_TYPES``       launch types to mirror (default ``FARGATE``; ``*``: any)
``INSTANCE_TAG``       opt-in tag of EC2 instances, ``KEY`` or ``KEY=VALUE``
                       (default ``vxmirror:mirror=true``; empty: no instances)
``ENI_TARGET_CAPACITY`` sources an ENI target takes (AWS's limit: 10)
``METRICS_NAMESPACE``  CloudWatch namespace of the EMF metrics (default ``vxmirror``)
=====================  ==============================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# AWS IDs look like tmt-0123456789abcdef0 / tmf-...; only the character set is checked.
_TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,63}$")
_FILTER_RE = _TARGET_RE


class SettingsError(ValueError):
    """A configuration problem: which variable, what is wrong."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"environment variable {variable}: {problem}")


@dataclass(frozen=True)
class TagMatch:
    key: str
    value: str | None  # None: any value

    def matches(self, tags: Mapping[str, str]) -> bool:
        if self.key not in tags:
            return False
        return self.value is None or tags[self.key] == self.value


@dataclass(frozen=True)
class Settings:
    target_ids: tuple[str, ...]
    filter_id: str
    session_number: int = 1
    packet_length: int | None = None
    clusters: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    task_tag: TagMatch | None = None
    launch_types: tuple[str, ...] = ("FARGATE",)  # empty: any
    instance_tag: TagMatch | None = TagMatch("vxmirror:mirror", "true")
    eni_target_capacity: int = 10
    metrics_namespace: str = "vxmirror"


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())


def _int(env: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise SettingsError(name, f"must be between {lo} and {hi}, got {v}")
    return v


def _tag(env: Mapping[str, str], name: str, default: str) -> TagMatch | None:
    raw = env.get(name, default).strip()
    if not raw:
        return None
    key, sep, value = raw.partition("=")
    if not key.strip():
        raise SettingsError(name, f"expected KEY or KEY=VALUE, got {raw!r}")
    return TagMatch(key.strip(), value.strip() if sep else None)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; raises :class:`SettingsError` naming the variable."""
    env = os.environ if env is None else env
    targets = _list(env, "TARGET_IDS")
    if not targets:
        raise SettingsError("TARGET_IDS", "required: comma-separated traffic mirror target IDs")
    for t in targets:
        if not _TARGET_RE.match(t):
            raise SettingsError("TARGET_IDS", f"not a traffic mirror target ID: {t!r}")
    if len(set(targets)) != len(targets):
        raise SettingsError("TARGET_IDS", "a target is listed twice")
    filter_id = env.get("FILTER_ID", "").strip()
    if not _FILTER_RE.match(filter_id):
        raise SettingsError("FILTER_ID", f"required: a traffic mirror filter ID, got {filter_id!r}")
    launch = _list(env, "LAUNCH_TYPES") if "LAUNCH_TYPES" in env else ("FARGATE",)
    if launch == ("*",):
        launch = ()
    for lt in launch:
        if lt not in ("FARGATE", "EC2", "EXTERNAL"):
            raise SettingsError("LAUNCH_TYPES", f"unknown launch type {lt!r} (FARGATE, EC2, EXTERNAL or *)")
    session_number = _int(env, "SESSION_NUMBER", 1, 1, 32766)
    capacity = _int(env, "ENI_TARGET_CAPACITY", 10, 1, 10000)
    assert session_number is not None and capacity is not None
    return Settings(
        target_ids=targets,
        filter_id=filter_id,
        session_number=session_number,
        packet_length=_int(env, "PACKET_LENGTH", None, 1, 65535),
        clusters=_list(env, "CLUSTERS"),
        services=_list(env, "SERVICES"),
        task_tag=_tag(env, "TASK_TAG", ""),
        launch_types=launch,
        instance_tag=_tag(env, "INSTANCE_TAG", "vxmirror:mirror=true"),
        eni_target_capacity=capacity,
        metrics_namespace=env.get("METRICS_NAMESPACE", "").strip() or "vxmirror",
    )
