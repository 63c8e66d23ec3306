"""FlowRecord schema: valid draft 2020-12, matches record.py and docs, and validates real records."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, NotRequired, get_origin, get_type_hints

import jsonschema

from receiver.capture.read import read_records
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.flows.record import FlowRecord
from receiver.traffic import TrafficSpec, generate
from tests.zeeklogs import ZEEK_DIR

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schema" / "flowrecord.schema.json").read_text())
DOC = (ROOT / "docs" / "flowrecord.md").read_text()
TRACES = sorted(p for p in ZEEK_DIR.glob("*/*.pcap*")) if ZEEK_DIR.is_dir() else []


def validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)


def _errors(rec: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(rec)]


def test_schema_is_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_matches_record_typeddict() -> None:
    hints = get_type_hints(FlowRecord, include_extras=True)
    # (``__required_keys__`` is unreliable with postponed annotations on 3.11: read NotRequired directly)
    required = {k for k, t in hints.items() if get_origin(t) is not NotRequired}
    assert set(SCHEMA["required"]) == required
    assert set(hints) == set(SCHEMA["properties"])


def _schema_fields() -> set[str]:
    props = SCHEMA["properties"]
    names = set(props) | {f"aws.{k}" for k in props["aws"]["properties"]}
    names |= {f"pcap.{k}" for k in props["pcap"]["properties"]}
    app = props["app"]["properties"]
    for kind in ("http", "dns"):
        names |= {f"app.{kind}"} | {f"app.{kind}.{k}" for k in app[kind]["items"]["properties"]}
    for kind in ("tls", "quic"):
        names |= {f"app.{kind}"} | {f"app.{kind}.{k}" for k in app[kind]["properties"]}
    return names


def test_every_field_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", DOC, flags=re.M))
    assert _schema_fields() == documented


def test_records_of_all_shared_traces_validate() -> None:
    n = 0
    seen_app: set[str] = set()
    for path in TRACES:
        for rec in read_records([path]):
            assert not _errors(dict(rec)), (path.name, _errors(dict(rec)), rec)
            seen_app |= set(rec.get("app", {}))
            n += 1
    assert n > 50 and seen_app == {"http", "dns", "tls"}


def test_generated_traffic_records_validate_with_aws_and_sensor() -> None:
    labels = {"task_arn": "arn:aws:ecs:eu-west-1:123456789012:task/c/abc", "cluster": "c", "service": "web",
              "eni": "eni-0123", "az": "eu-west-1a", "session_id": "tms-0abc", "private_ip": "10.0.0.5"}  # fmt: skip
    eng = Engine(EngineConfig(active_timeout=5.0), labeler=lambda vni: labels, sensor="sensor-1")
    traffic = generate(TrafficSpec(n_packets=20_000, n_flows=300, seed=3))
    recs: list[FlowRecord] = []
    for batch in traffic.batches():
        recs += eng.process(batch).records
    recs += eng.finish("end_of_input")
    assert len(recs) >= 300
    for rec in recs:
        assert not _errors(dict(rec)), (_errors(dict(rec)), rec)
    assert all(r["aws"] == labels and r["sensor"] == "sensor-1" for r in recs)
    assert {r["transport"] for r in recs} >= {"tcp", "udp"}


def test_schema_rejects_what_it_should() -> None:
    (path,) = [p for p in TRACES if p.name == "get.pcap"]
    (rec,) = [dict(r) for r in read_records([path])]
    assert not _errors(rec)
    bad: list[tuple[str, Any]] = [
        ("transport", "TCP"), ("community_id", "1:nothash"), ("conn_state", "ESTABLISHED"),
        ("history", "ShXq"), ("tcp_flags_in", "AS"), ("src_ip", "999.1.1.1"), ("dest_port", 70000),
        ("end_reason", "timeout"), ("vni", -1), ("packets_in", 1.5), ("unknown_field", 1),
    ]  # fmt: skip
    for key, value in bad:
        r = copy.deepcopy(rec)
        r[key] = value
        assert _errors(r), f"{key}={value!r} accepted"
    for key in SCHEMA["required"]:
        r = copy.deepcopy(rec)
        del r[key]
        assert _errors(r), f"missing {key} accepted"
    r = copy.deepcopy(rec)
    r["app"]["http"][0]["extra"] = 1
    assert _errors(r)
