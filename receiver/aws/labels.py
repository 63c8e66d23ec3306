"""VNI -> workload labels, from the traffic mirror sessions' tags.

The mirror-session Lambda (``mirror_sessions``) tags every session it creates with the task,
cluster, service, ENI, private IP and AZ; AWS assigns each session a VNI that arrives in every
VXLAN header. :class:`VniLabeler` re-reads the sessions every ``refresh_seconds`` in a
background thread and answers ``labeler(vni)`` with a dict lookup (the engine calls it when it
emits a record, and puts the result under the record's ``aws`` key).

Without AWS credentials the feature turns itself off after one warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from .settings import AwsConfig

log = logging.getLogger(__name__)

MARKER_KEY = "vxmirror:managed-by"
MARKER_VALUE = "vxmirror"
# Label key -> session tag (written by mirror_sessions.sources).
TAG_FIELDS = {
    "task_arn": "vxmirror:task-arn",
    "cluster": "vxmirror:cluster",
    "service": "vxmirror:service",
    "az": "vxmirror:az",
    "private_ip": "vxmirror:private-ip",
}
LABEL_KEYS = ("task_arn", "cluster", "service", "eni", "az", "session_id", "private_ip")
# Errors that mean "this process has no usable AWS identity": turn off, warn once.
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, NoRegionError)
_DENIED_CODES = {"AuthFailure", "UnauthorizedOperation", "AccessDenied", "InvalidClientTokenId"}

Labels = dict[str, Any]


def labels_from_session(session: dict[str, Any]) -> Labels:
    tags = {t.get("Key"): t.get("Value") for t in session.get("Tags") or []}
    out: Labels = {k: tags.get(tag) or None for k, tag in TAG_FIELDS.items()}
    out["eni"] = session.get("NetworkInterfaceId") or tags.get("vxmirror:eni")
    out["session_id"] = session.get("TrafficMirrorSessionId")
    return {k: out.get(k) for k in LABEL_KEYS}


class VniLabeler:
    """``labeler(vni) -> dict | None``; ``labeler.name(vni) -> str | None``."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        target_ids: list[str] | None = None,
        refresh_seconds: float = 60.0,
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.target_ids = list(target_ids or [])
        self.refresh_seconds = refresh_seconds
        self._map: dict[int, Labels] = {}
        self.enabled = True
        self.refreshes = 0
        self.errors = 0
        self.last_refresh: float | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups (hot path: a dict lookup) ----------------------------------------------------

    def __call__(self, vni: int) -> Labels | None:
        return self._map.get(vni)

    def name(self, vni: int) -> str | None:
        """A short interface name for pcapng (``service/task-id eni``), or None if unknown."""
        lab = self._map.get(vni)
        if lab is None:
            return None
        parts = []
        if lab.get("task_arn"):
            who = lab.get("service") or lab.get("cluster") or "task"
            parts.append(f"{who}/{str(lab['task_arn']).rsplit('/', 1)[-1]}")
        if lab.get("eni"):
            parts.append(str(lab["eni"]))
        return " ".join(parts) or str(lab.get("session_id") or "") or None

    def snapshot(self) -> dict[int, Labels]:
        return dict(self._map)

    # -- refreshing ---------------------------------------------------------------------------

    def _describe(self) -> list[dict[str, Any]]:
        if self._client is None:
            self._client = self._client_factory()
        kwargs: dict[str, Any] = {}
        if self.target_ids:
            kwargs["Filters"] = [{"Name": "traffic-mirror-target-id", "Values": self.target_ids}]
        out: list[dict[str, Any]] = []
        for page in self._client.get_paginator("describe_traffic_mirror_sessions").paginate(**kwargs):
            out.extend(page.get("TrafficMirrorSessions", []))
        return out

    def refresh(self) -> bool:
        """Re-read the sessions and swap in the new map. False if it failed (the old map stays)."""
        if not self.enabled:
            return False
        try:
            sessions = self._describe()
        except _NO_CREDENTIALS as e:
            self._turn_off(f"{type(e).__name__}: {e}")
            return False
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _DENIED_CODES:
                self._turn_off(f"{code}: not allowed to describe traffic mirror sessions")
                return False
            return self._failed(f"{code}: {e}")
        except BotoCoreError as e:
            return self._failed(f"{type(e).__name__}: {e}")
        new: dict[int, Labels] = {}
        for s in sessions:
            vni = s.get("VirtualNetworkId")
            if vni is None:
                continue
            tags = {t.get("Key"): t.get("Value") for t in s.get("Tags") or []}
            if not self.target_ids and tags.get(MARKER_KEY) != MARKER_VALUE:
                continue
            new[int(vni)] = labels_from_session(s)
        self._map = new  # one reference swap: readers never see a half-built map
        self.refreshes += 1
        self.last_refresh = time.time()
        if self._failing:
            log.info("aws labels: describing mirror sessions works again (%d VNIs)", len(new))
            self._failing = False
        return True

    def _turn_off(self, why: str) -> None:
        self.enabled = False
        self._stop.set()
        log.warning("aws labels off: %s (flow records will carry no 'aws' object)", why)

    def _failed(self, why: str) -> bool:
        self.errors += 1
        if not self._failing:  # warn on the change, not on every period
            log.warning("aws labels: cannot describe mirror sessions, keeping the last map: %s", why)
            self._failing = True
        return False

    def start(self) -> VniLabeler:
        """Refresh now and then every ``refresh_seconds`` in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vxmirror-aws-labels", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while self.enabled and not self._stop.is_set():
            try:
                self.refresh()
            except Exception as e:  # never let the thread die silently
                self._failed(f"{type(e).__name__}: {e}")
            self._stop.wait(self.refresh_seconds)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def make_labeler(config: AwsConfig, start: bool = True) -> VniLabeler | None:
    """A labeler for ``config`` (None when disabled). Creating it never blocks: credentials are
    looked up by the first refresh, in the background thread when ``start``."""
    if not config.enabled:
        return None

    def client() -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=config.profile or None, region_name=config.region or None)
        return session.client(
            "ec2",
            endpoint_url=config.endpoint_url or None,
            config=Config(retries={"mode": "adaptive", "max_attempts": 5}, connect_timeout=5, read_timeout=10),
        )

    lab = VniLabeler(client, config.target_ids, config.refresh_seconds)
    return lab.start() if start else lab
