"""Forwarder discovery (entry-point group ``vxmirror.forwarders``) and config validation.

Every forwarder, built-in or third-party, is a RecordSink or PacketSink class
registered under its kind in the entry-point group ``vxmirror.forwarders``
(pyproject.toml: ``[project.entry-points."vxmirror.forwarders"]``,
``pcap = "forwarders.pcap:PcapSink"``). ``validate`` turns the config's
``[forwarders]`` table into one ForwarderSpec per configured forwarder:

    [forwarders.pcap]             # one forwarder of a kind: its name is the kind
    directory = "/srv/pcap"

    [[forwarders.splunk_hec]]     # several of a kind: each needs a name -> "splunk_hec.<name>"
    name = "cluster2"
    ...

Each table holds the sink's own keys (its ``config_class``) and the runner's
shared keys (forwarders.settings.RunnerSettings); both are validated with
receiver.config.schema, so errors name the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from receiver.config.schema import ConfigError, from_table

from .api import PacketSink, RecordSink
from .settings import RUNNER_KEYS, RunnerSettings

GROUP = "vxmirror.forwarders"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ForwarderSpec:
    kind: str
    name: str  # unique: the kind, or "<kind>.<name>"
    sink_class: type
    config: Any  # an instance of sink_class.config_class
    settings: RunnerSettings

    @property
    def is_packet(self) -> bool:
        return issubclass(self.sink_class, PacketSink)


def available() -> dict[str, type]:
    """Forwarder kinds registered in the entry-point group, loaded."""
    out: dict[str, type] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, RecordSink | PacketSink)):
            raise TypeError(f"entry point {GROUP}:{ep.name} ({ep.value}) is not a RecordSink or PacketSink")
        out[ep.name] = cls
    return out


def _one(
    kind: str, cls: type, table: Any, file: str | Path | None, key: str, name: str | None
) -> ForwarderSpec:
    if not isinstance(table, dict):
        raise ConfigError(file, key, f"expected a table, got {type(table).__name__}")
    table = dict(table)
    table.pop("name", None)
    config_class: type = getattr(cls, "config_class")  # noqa: B009
    sink_fields = {f.name for f in dataclasses.fields(config_class)}
    runner_part = {k: v for k, v in table.items() if k in RUNNER_KEYS}
    sink_part = {k: v for k, v in table.items() if k not in RUNNER_KEYS or k in sink_fields}
    settings = from_table(RunnerSettings, runner_part, file, key)
    config: Any = from_table(config_class, sink_part, file, key)
    # what only the sink can check before it runs (secrets that must be readable, ...)
    check = getattr(cls, "check_config", None)
    if callable(check):
        problem = check(config)
        if problem:
            sub, msg = problem
            raise ConfigError(file, f"{key}.{sub}" if sub else key, msg)
    full = kind if name is None else f"{kind}.{name}"
    return ForwarderSpec(kind, full, cls, config, settings)


def validate(table: dict[str, Any], file: str | Path | None) -> list[ForwarderSpec]:
    """Validate the ``[forwarders]`` table; return one spec per configured forwarder."""
    kinds = available()
    specs: list[ForwarderSpec] = []
    for kind, value in table.items():
        key = f"forwarders.{kind}"
        cls = kinds.get(kind)
        if cls is None:
            known = ", ".join(sorted(kinds)) or "none installed"
            raise ConfigError(file, key, f"unknown forwarder kind (available: {known})")
        if isinstance(value, list):
            if not value:
                raise ConfigError(file, key, "empty array of tables")
            for i, item in enumerate(value):
                ikey = f"{key}[{i}]"
                if not isinstance(item, dict):
                    raise ConfigError(file, ikey, f"expected a table, got {type(item).__name__}")
                name = item.get("name")
                if not isinstance(name, str) or not _NAME_RE.match(name):
                    raise ConfigError(
                        file, f"{ikey}.name", "each of several forwarders of a kind needs a name (A-Z a-z 0-9 _ -)"
                    )
                specs.append(_one(kind, cls, item, file, ikey, name))
        elif isinstance(value, dict):
            name = value.get("name")
            if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
                raise ConfigError(file, f"{key}.name", "expected a name of A-Z a-z 0-9 _ - (at most 64)")
            specs.append(_one(kind, cls, value, file, key, name))
        else:
            raise ConfigError(file, key, f"expected a table or an array of tables, got {type(value).__name__}")
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ConfigError(file, f"forwarders.{s.kind}", f"two forwarders are named {s.name!r}")
        seen.add(s.name)
    return specs


def defaults(data_dir: str | Path) -> list[ForwarderSpec]:
    """The embedded default set: JSON lines under DIR/flows/ and pcap under DIR/pcap/."""
    d = Path(data_dir)
    return validate(
        {"jsonl": {"directory": str(d / "flows")}, "pcap": {"directory": str(d / "pcap")}},
        "<defaults>",
    )
