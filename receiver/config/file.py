"""The one config file (TOML): its top-level schema and its loader.

Each section is a dataclass owned by the part of the program it configures;
``load_config`` validates the whole file at start, and every error names the
file, the dotted key and the problem (see receiver.config.schema).
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forwarders import registry

from ..aws.settings import AwsConfig
from ..listen.settings import ListenConfig, MetricsConfig
from .engine import EngineConfig
from .schema import ConfigError, from_table, opt


@dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = opt("info", "log level")
    format: Literal["json", "text"] = opt("json", "structured JSON lines, or text for a terminal")


@dataclass
class Config:
    data_dir: str = opt("/var/lib/vxmirror", "base directory of outputs, spool and dead letters")
    sensor: str = opt("", "name of this receiver in every record (default: the host name)")
    engine: EngineConfig = field(default_factory=EngineConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    forwarders: dict[str, Any] = opt({}, "one table per forwarder kind (see docs/forwarders.md)")
    # Filled by load_config from ``forwarders``: one validated spec per forwarder.
    forwarder_specs: list[Any] = field(default_factory=list, metadata={"internal": True})
    source: str = field(default="<defaults>", metadata={"internal": True})

    def sensor_name(self) -> str:
        return self.sensor or socket.gethostname()


def parse_config(table: dict[str, Any], file: str | Path | None = None) -> Config:
    internal = {f.name for f in dataclasses.fields(Config) if f.metadata.get("internal")}
    for k in internal & set(table):
        raise ConfigError(file, k, "unknown key")
    cfg = from_table(Config, table, file)
    cfg.forwarder_specs = registry.validate(cfg.forwarders, file)
    cfg.source = str(file) if file is not None else "<defaults>"
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file (None: all defaults)."""
    if path is None:
        return parse_config({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(p, "(file)", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(p, "(file)", "not UTF-8 text") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(p, "(syntax)", str(e)) from None
    return parse_config(table, p)
