"""FlowRecord: the record the engine emits for each flow (documented in docs/flowrecord.md,
schema in schema/flowrecord.schema.json). Records travel as plain dicts."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

EndReason = Literal["idle", "active", "tcp_close", "evicted", "shutdown", "end_of_input"]


class FlowRecord(TypedDict):
    vni: int | None
    transport: str
    ip_proto: int
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    payload_bytes_in: int
    payload_bytes_out: int
    ts_start: float
    ts_end: float
    duration: float
    community_id: str
    conn_state: str
    history: str
    tcp_flags_in: str
    tcp_flags_out: str
    end_reason: EndReason
    truncated: bool
    fragments: int
    segment: NotRequired[int]  # interim records: how many records of this flow came before
    excerpt_in: NotRequired[str]
    excerpt_out: NotRequired[str]
    app: NotRequired[dict[str, Any]]
    redacted: NotRequired[int]
    pcap: NotRequired[dict[str, Any]]  # with a pcap sink: frames written, skipped, dropped; files
    aws: NotRequired[dict[str, Any]]
    sensor: NotRequired[str]
