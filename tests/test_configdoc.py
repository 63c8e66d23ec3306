"""docs/configuration.md is generated from the config dataclasses and must be current."""

from __future__ import annotations

from pathlib import Path

from receiver.config.doc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: .venv/bin/python -m receiver.config.doc > docs/configuration.md"


def test_every_section_and_forwarder_kind_is_documented() -> None:
    text = render()
    for title in ("## `engine`", "## `listen`", "## `metrics`", "## `log`", "## `aws`", "## `forwarders.pcap`",
                  "## `forwarders.jsonl`", "## `forwarders.splunk_hec`", "## `forwarders.kafka`"):
        assert title in text
    assert "| `max_flows` | int | `1000000` |" in text
