"""Forwarder discovery (entry-point group ``vxmirror.forwarders``) and config validation.

Owned by the forwarders work; this first version accepts an empty table only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from receiver.configschema import ConfigError


def validate(table: dict[str, Any], file: str | Path | None) -> list[Any]:
    """Validate the ``[forwarders]`` table; return one spec per configured forwarder."""
    for kind in table:
        raise ConfigError(file, f"forwarders.{kind}", "unknown forwarder kind")
    return []
