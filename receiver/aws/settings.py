"""Settings of task-aware flows (``[aws]``): mapping VNIs to mirror sessions' tags.

Owned by the mirror-session work; this first version only fixes the names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configschema import opt


@dataclass
class AwsConfig:
    enabled: bool = opt(True, "label flows with their mirror session's task (needs AWS credentials)")
