"""Lambda entry point: ``mirror_sessions.handler.handler(event, context)``.

Clients use botocore's adaptive retry mode (client-side rate limiting on throttling). An error
that is neither handled nor classified as permanent propagates: the asynchronous invocation is
retried by Lambda and then sent to the dead-letter queue (see deploy/template.yaml).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from . import logs
from .app import MirrorManager
from .config import Settings, load_settings
from .events import EventError, parse_event
from .metrics import Metrics
from .sessions import SkipMemory

RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8}, user_agent_extra="vxmirror")

# Kept for the life of the Lambda container.
_memory = SkipMemory()
_clients: dict[str, Any] = {}


def reset() -> None:
    """Forget cached clients and remembered rejections (tests, configuration changes)."""
    _memory.entries.clear()
    _clients.clear()


def _client(name: str) -> Any:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    key = f"{name}@{region}"
    if key not in _clients:
        _clients[key] = boto3.client(name, config=RETRY_CONFIG)  # type: ignore[call-overload]
    return _clients[key]


def build(settings: Settings | None = None) -> tuple[MirrorManager, Metrics]:
    settings = settings or load_settings()
    metrics = Metrics(settings.metrics_namespace, os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "mirror-sessions"))
    return MirrorManager(_client("ec2"), _client("ecs"), settings, metrics, _memory), metrics


def handler(event: Any, context: Any) -> dict[str, Any]:
    request_id = getattr(context, "aws_request_id", None)
    mgr, metrics = build()
    try:
        try:
            parsed = parse_event(event)
        except EventError as e:
            metrics.add("EventsIgnored")
            logs.warning(
                "malformed event dropped",
                error=str(e),
                request_id=request_id,
                event_id=event.get("id") if isinstance(event, dict) else None,
            )
            return {"action": "ignored", "reason": "malformed_event"}
        result = mgr.handle(parsed)
        logs.info(
            "event handled",
            request_id=request_id,
            event_id=event.get("id") if isinstance(event, dict) else None,
            **result,
        )
        return result
    except Exception as e:
        metrics.add("Failures")
        logs.error(
            "event failed; it will be retried, then dead-lettered",
            request_id=request_id,
            error=f"{type(e).__name__}: {e}",
        )
        raise
    finally:
        metrics.flush()
