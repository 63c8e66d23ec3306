"""The Splunk add-on (forwarders/splunk_addon): its stanzas parse, the sourcetype matches the
forwarder's default, every field it reads exists in the FlowRecord, and the CIM
Network_Traffic fields a search needs are all produced."""

from __future__ import annotations

import configparser
import re
import typing
from pathlib import Path

from forwarders.splunk_hec import SplunkHecConfig
from receiver.flows.record import FlowRecord

ADDON = Path(__file__).resolve().parent.parent / "forwarders" / "splunk_addon"
RECORD_FIELDS = set(typing.get_type_hints(FlowRecord))
SPLUNK_DEFAULT_FIELDS = {"host", "source", "sourcetype", "index", "_time"}
# CIM Network_Traffic fields that a flow source can and should fill
CIM_NETWORK_TRAFFIC = {
    "action", "bytes", "bytes_in", "bytes_out", "dest", "dest_ip", "dest_port", "duration", "dvc",
    "flow_id", "packets", "packets_in", "packets_out", "protocol", "protocol_version", "session_id",
    "src", "src_ip", "src_port", "transport", "vendor_product",
}
EVAL_FUNCTIONS = {"if", "match", "null"}


def conf(name: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#",))
    p.optionxform = str  # type: ignore[assignment,method-assign]  # Splunk keys are case-sensitive
    text = (ADDON / "default" / name).read_text()
    p.read_string(text)
    return p


def test_props_map_flow_records_onto_network_traffic() -> None:
    st = SplunkHecConfig.__dataclass_fields__["sourcetype"].default
    props = conf("props.conf")
    assert props.sections() == [st]
    stanza = props[st]
    assert stanza["KV_MODE"] == "json"
    produced = set(RECORD_FIELDS)
    for key, value in stanza.items():
        if key.startswith("FIELDALIAS-"):
            for src, dst in re.findall(r"(\w+)\s+AS\s+(\w+)", value):
                assert src in RECORD_FIELDS, f"{key}: {src} is not a FlowRecord field"
                produced.add(dst)
        elif key.startswith("EVAL-"):
            target = key[len("EVAL-") :]
            code = re.sub(r'"[^"]*"', "", value)
            for ident in re.findall(r"[A-Za-z_]\w*", code):
                if ident in EVAL_FUNCTIONS:
                    continue
                assert ident in RECORD_FIELDS | SPLUNK_DEFAULT_FIELDS, f"{key}: unknown field {ident}"
            produced.add(target)
    missing = CIM_NETWORK_TRAFFIC - produced
    assert not missing, f"CIM Network_Traffic fields not produced: {sorted(missing)}"


def test_eventtype_and_tags() -> None:
    st = SplunkHecConfig.__dataclass_fields__["sourcetype"].default
    ev = conf("eventtypes.conf")
    assert ev["vxmirror_network_traffic"]["search"] == f'sourcetype="{st}"'
    tags = conf("tags.conf")
    t = tags["eventtype=vxmirror_network_traffic"]
    assert t["network"] == "enabled" and t["communicate"] == "enabled"  # Network_Traffic constraint


def test_app_and_indexed_fields() -> None:
    app = conf("app.conf")
    assert app["package"]["id"] == app["id"]["name"] == "TA-vxmirror"
    fields = conf("fields.conf")
    default_indexed = SplunkHecConfig.__dataclass_fields__["indexed_fields"].default_factory()  # type: ignore[misc]
    for f in default_indexed:
        assert fields[f]["INDEXED"] == "true"
    assert (ADDON / "metadata" / "default.meta").read_text().count("export = system") == 1
