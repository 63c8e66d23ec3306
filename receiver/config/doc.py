"""The configuration reference (docs/configuration.md), generated from the config dataclasses.

``python -m receiver.config.doc > docs/configuration.md`` rewrites it; a test checks it is current.
"""

from __future__ import annotations

import dataclasses
import typing

from forwarders import registry
from forwarders.settings import RunnerSettings

from ..pcapkeep.policy import KeepRule
from .file import Config
from .schema import doc_table

HEADER = """# Configuration reference

vxmirror reads one TOML file (`vxmirror serve --config FILE`; `vxmirror check-config FILE`
validates it without starting). Every key is optional; the defaults below are what an empty file
means. Unknown keys are errors, and every error names the file, the dotted key and the problem,
for example `vxmirror.toml: engine.max_flows: must be >= 16, got 0`.

Command-line flags of `vxmirror serve` override the file for the common cases: `--listen HOST:PORT`
(repeatable), `--metrics HOST:PORT` (port 0 turns the endpoint off), `--data-dir DIR`.

Secrets are never config values: the Splunk HEC token comes from `token_file` or the
`VXMIRROR_HEC_TOKEN` environment variable, Kafka credentials from files or the environment.

This page is generated from the code (`python -m receiver.config.doc`).
"""


def _section(title: str, cls: type, note: str = "") -> list[str]:
    out = [f"## `{title}`" if not title.startswith("[") else f"## {title}", ""]
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):
        out += [doc, ""]
    if note:
        out += [note, ""]
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, help_ in doc_table(cls):
        out.append(f"| `{key}` | {tp} | `{default}` | {help_} |")
    return [*out, ""]


def render() -> str:
    lines = [HEADER]
    top = [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]
    hints = typing.get_type_hints(Config)
    plain = [f for f in top if not dataclasses.is_dataclass(hints[f.name]) and f.name != "forwarders"]
    lines += ["## Top level", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows = {r[0]: r for r in doc_table(Config)}
    for f in plain:
        _, tp, default, help_ = rows[f.name]
        lines.append(f"| `{f.name}` | {tp} | `{default}` | {help_} |")
    lines.append("")
    for f in top:
        if dataclasses.is_dataclass(hints[f.name]):
            lines += _section(f.name, hints[f.name])
    lines += [
        "## `forwarders`",
        "",
        "One table per forwarder: `[forwarders.KIND]`, or `[[forwarders.KIND]]` with a `name` for several of a",
        "kind. With no forwarder configured, the service writes JSON lines under `DATA_DIR/flows/` and rolling",
        "pcaps under `DATA_DIR/pcap/`. See docs/forwarders.md for delivery semantics.",
        "",
    ]
    lines += _section("forwarders.*  (keys every forwarder table takes)", RunnerSettings)
    for kind, cls in sorted(registry.available().items()):
        lines += _section(f"forwarders.{kind}", cls.config_class)  # type: ignore[attr-defined]
        if kind == "pcap":
            lines += _section("[[forwarders.pcap.keep]]  (capture policy rules)", KeepRule,
                              "Each `[[forwarders.pcap.keep]]` table is one rule; see docs/capture.md.")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
