"""Creating and deleting mirror sessions, idempotently and only ever touching our own.

Invariants kept here (moto does not enforce them, AWS may not either):

* at most one managed session per (owner, ENI); extras are deleted;
* a managed session on an ENI that now belongs to someone else is deleted;
* a session is only deleted if it carries the ``vxmirror:managed-by`` marker;
* at most 3 sessions per ENI (AWS's quota) is checked before calling AWS;
* the session number is unique on the ENI (the configured one, else the next free one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from . import logs
from .aws import EC2Client, Session
from .config import Settings
from .errors import classify, error_code
from .metrics import Metrics
from .sources import TAG_INSTANCE, TAG_TASK, Source, is_managed, tag_dict
from .targets import Target, candidates

MAX_SESSIONS_PER_ENI = 3
MAX_SESSION_NUMBER = 32766


@dataclass
class SkipMemory:
    """Sources AWS rejected for good (per ENI), remembered for the life of the Lambda container
    so that events and reconciles do not retry them in a storm."""

    limit: int = 10000
    entries: dict[str, str] = field(default_factory=dict)

    def get(self, eni_id: str) -> str | None:
        return self.entries.get(eni_id)

    def put(self, eni_id: str, reason: str) -> None:
        if len(self.entries) >= self.limit:
            self.entries.pop(next(iter(self.entries)))
        self.entries[eni_id] = reason


def session_owner(session: Session) -> str | None:
    t = tag_dict(session.get("Tags"))
    return t.get(TAG_TASK) or t.get(TAG_INSTANCE)


class SessionManager:
    def __init__(self, ec2: EC2Client, settings: Settings, metrics: Metrics, memory: SkipMemory) -> None:
        self.ec2 = ec2
        self.settings = settings
        self.metrics = metrics
        self.memory = memory

    # -- delete ---------------------------------------------------------------------------

    def delete(self, session: Session, why: str) -> bool:
        """Delete a managed session (NotFound tolerated). Refuses sessions without our marker."""
        sid = str(session.get("TrafficMirrorSessionId"))
        if not is_managed(session):
            raise ValueError(f"refusing to delete {sid}: not managed by vxmirror")
        try:
            self.ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=sid)
        except ClientError as e:
            if error_code(e) == "InvalidTrafficMirrorSessionId.NotFound":
                logs.info("session already gone", session_id=sid, why=why)
                return False
            raise
        self.metrics.add("SessionsDeleted")
        logs.info(
            "session deleted",
            session_id=sid,
            eni=session.get("NetworkInterfaceId"),
            owner=session_owner(session),
            vni=session.get("VirtualNetworkId"),
            why=why,
        )
        return True

    def delete_owner(self, owner: str, sessions: Sequence[Session], why: str) -> int:
        n = 0
        seen: set[str] = set()
        for s in sessions:
            sid = str(s.get("TrafficMirrorSessionId"))
            if sid in seen or not is_managed(s) or session_owner(s) != owner:
                continue
            seen.add(sid)
            n += self.delete(s, why)
        return n

    # -- ensure ---------------------------------------------------------------------------

    def ensure(self, source: Source, targets: list[Target], on_eni: Sequence[Session]) -> str:
        """Make sure exactly one managed session mirrors ``source``. ``on_eni``: every session
        currently on the source's ENI. Returns ``exists``, ``created`` or ``skipped:<reason>``."""
        mine = [s for s in on_eni if is_managed(s) and session_owner(s) == source.owner]
        stale = [s for s in on_eni if is_managed(s) and session_owner(s) != source.owner]
        for s in stale:
            self.delete(s, "eni_now_belongs_to_" + source.owner)
        if mine:
            for extra in mine[1:]:
                self.delete(extra, "duplicate")
            return "exists"
        remembered = self.memory.get(source.eni_id)
        if remembered is not None:
            self.metrics.skip(remembered)
            return "skipped:" + remembered
        others = [s for s in on_eni if not is_managed(s)]
        if len(others) >= MAX_SESSIONS_PER_ENI:
            return self._skip_for_good(source, "eni_session_limit", "the ENI already has 3 sessions")
        number = self._free_number({int(s.get("SessionNumber", 0)) for s in others})
        if number is None:
            return self._skip_for_good(source, "no_free_session_number", "every session number is taken")
        for target in candidates(targets, source.az, source.eni_id):
            try:
                created = self._create(source, target, number)
            except ClientError as e:
                kind, reason = classify(e)
                if kind == "next_target":
                    logs.warning(
                        "target cannot take the source, trying the next",
                        target=target.target_id,
                        reason=reason,
                        eni=source.eni_id,
                    )
                    target.capacity = len(target.sources)  # full (or gone) for this invocation
                    continue
                if kind == "permanent":
                    return self._skip_for_good(source, reason, str(e))
                raise
            target.sources.add(source.eni_id)
            self.metrics.add("SessionsCreated")
            logs.info(
                "session created",
                session_id=created.get("TrafficMirrorSessionId"),
                vni=created.get("VirtualNetworkId"),
                target=target.target_id,
                target_az=target.az,
                session_number=number,
                **{k.replace("vxmirror:", ""): v for k, v in source.tags().items() if k != "Name"},
            )
            return "created"
        self.metrics.skip("no_target_capacity")
        logs.warning(
            "no mirror target has room for the source",
            eni=source.eni_id,
            owner=source.owner,
            targets=[t.target_id for t in targets],
        )
        return "skipped:no_target_capacity"

    def _free_number(self, used: set[int]) -> int | None:
        n = self.settings.session_number
        while n in used:
            n += 1
        return n if n <= MAX_SESSION_NUMBER else None

    def _skip_for_good(self, source: Source, reason: str, detail: str) -> str:
        self.memory.put(source.eni_id, reason)
        self.metrics.skip(reason)
        logs.warning("source skipped", reason=reason, detail=detail, eni=source.eni_id, owner=source.owner)
        return "skipped:" + reason

    def _create(self, source: Source, target: Target, number: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "NetworkInterfaceId": source.eni_id,
            "TrafficMirrorTargetId": target.target_id,
            "TrafficMirrorFilterId": self.settings.filter_id,
            "SessionNumber": number,
            "Description": source.name()[:255],
            "TagSpecifications": [
                {
                    "ResourceType": "traffic-mirror-session",
                    "Tags": [{"Key": k, "Value": v} for k, v in source.tags().items()],
                }
            ],
            "ClientToken": source.client_token(target.target_id),
        }
        if self.settings.packet_length is not None:
            kwargs["PacketLength"] = self.settings.packet_length
        # No VirtualNetworkId: AWS assigns one, unique in the account; read it back.
        resp = self.ec2.create_traffic_mirror_session(**kwargs)
        return dict(resp.get("TrafficMirrorSession", {}))
