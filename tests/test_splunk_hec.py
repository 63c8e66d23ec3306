"""Splunk HEC sink against the in-repo HEC server: protocol, replies, config, secrets."""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hec_server import HecServer, Token
from kafka_fixtures import make_records

from forwarders.api import SendError, SinkContext
from forwarders.hec_reply import HecReply
from forwarders.registry import validate
from forwarders.splunk_hec import SplunkHecConfig, SplunkHecSink
from receiver.config.schema import ConfigError, from_table
from receiver.flows.recordbatch import RecordBatch

TOKEN = "5f1c1a3e-0b6e-4f43-9d1c-hec-token-secret"


@pytest.fixture
def server() -> Iterator[HecServer]:
    srv = HecServer(tokens=[Token(TOKEN, ack=False)]).start()
    yield srv
    srv.stop()


def make_sink(server: HecServer, tmp_path: Path, **kw: object) -> SplunkHecSink:
    token_file = tmp_path / "hec.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    table = {"url": server.url, "token_file": str(token_file), **kw}
    return SplunkHecSink(from_table(SplunkHecConfig, table), SinkContext("splunk_hec", tmp_path))


def test_batch_is_indexed_with_envelopes_and_gzip(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path, index="netflows", host="sensor-1")
    recs = make_records(250)
    sink.send(sink.encode(RecordBatch.from_records(recs)), len(recs))
    got = server.indexed()
    assert [e["event"]["seq"] for e in got] == list(range(250))
    e = got[0]
    assert e["sourcetype"] == "vxmirror:flow" and e["source"] == "vxmirror"
    assert e["host"] == "sensor-1" and e["index"] == "netflows"
    assert e["time"] == recs[0]["ts_end"]
    assert e["fields"] == {"vni": str(recs[0]["vni"])}
    assert e["event"] == recs[0]
    assert server.counts["gzip_bodies"] == 1
    assert server.event_requests() == 2  # the start-up token check (empty POST) and the batch


def test_plain_body_when_gzip_off(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path, gzip=False)
    recs = make_records(10)
    sink.send(sink.encode(RecordBatch.from_records(recs)), 10)
    assert len(server.indexed()) == 10 and server.counts["gzip_bodies"] == 0


def test_encode_is_readable_json_lines(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path)
    recs = make_records(3)
    lines = sink.encode(RecordBatch.from_records(recs)).splitlines()
    assert [orjson.loads(x)["event"] for x in lines] == recs
    assert sink.encode(RecordBatch.from_records([])) == b""


@pytest.mark.parametrize(
    ("mutate", "code", "fatal"),
    [
        (lambda s: s.tokens.clear(), 4, True),
        (lambda s: setattr(s.tokens[TOKEN], "enabled", False), 1, True),
    ],
)
def test_auth_failures_are_fatal_for_the_sink(
    server: HecServer, tmp_path: Path, mutate: object, code: int, fatal: bool
) -> None:
    sink = make_sink(server, tmp_path)
    sink._started = True  # skip the start-up check: exercise send's own classification
    mutate(server)  # type: ignore[operator]
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
    assert ei.value.fatal_for_sink is fatal
    assert f"code {code}" in ei.value.reason
    assert TOKEN not in ei.value.reason


def test_missing_and_malformed_authorization_codes(server: HecServer) -> None:
    import urllib3

    http = urllib3.PoolManager()
    r = http.request("POST", server.url + "/services/collector/event", body=b'{"event":"x"}')
    assert (r.status, r.json()["code"]) == (401, 2)
    r = http.request("POST", server.url + "/services/collector/event", body=b'{"event":"x"}',
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert (r.status, r.json()["code"]) == (401, 3)
    assert HecReply.parse(r.status, r.data).auth_failure


def test_busy_is_retryable_and_501_is_not(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path)
    server.faults.busy = 1
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
    assert ei.value.retryable and not ei.value.fatal_for_sink and "code 9" in ei.value.reason
    server.faults.status_code = (501, 99)
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
    assert not ei.value.retryable
    server.faults.status_code = (429, 9)
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
    assert ei.value.retryable


def test_incorrect_index_is_not_retryable(server: HecServer, tmp_path: Path) -> None:
    server.tokens[TOKEN].indexes = {"main"}
    sink = make_sink(server, tmp_path, index="forbidden")
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
    assert not ei.value.retryable and "code 7" in ei.value.reason and "Incorrect index" in ei.value.reason


def test_invalid_event_number_reports_the_accepted_prefix(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path)
    good = sink.encode(RecordBatch.from_records(make_records(4))).splitlines()
    payload = b"\n".join([good[0], good[1], b'{"time": 1, "host": "x"}', good[2], good[3]])
    with pytest.raises(SendError) as ei:
        sink.send(payload, 5)
    assert ei.value.accepted == 2 and ei.value.rejected == 1 and not ei.value.retryable
    assert "code 12" in ei.value.reason and "invalid-event-number 2" in ei.value.reason
    assert len(server.indexed()) == 2


def test_transport_errors_are_retryable(tmp_path: Path) -> None:
    srv = HecServer(tokens=[Token(TOKEN)])
    port = srv.port
    srv.server_close()  # nothing listens there now
    token_file = tmp_path / "t"
    token_file.write_text(TOKEN)
    cfg = from_table(SplunkHecConfig, {"url": f"http://127.0.0.1:{port}", "token_file": str(token_file)})
    sink = SplunkHecSink(cfg, SinkContext("splunk_hec", tmp_path))
    sink._started = True
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(2))), 2)
    assert ei.value.retryable and "transport error" in ei.value.reason
    h = sink.health_check()
    assert not h.ok


def test_read_timeout_is_retryable(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path, timeout=0.1)
    sink._started = True
    server.faults.slow = 0.4
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(2))), 2)
    assert ei.value.retryable and "ReadTimeout" in ei.value.reason


def test_acks_channel_and_timeout(tmp_path: Path) -> None:
    srv = HecServer(tokens=[Token(TOKEN, ack=True)]).start()
    try:
        sink = make_sink(srv, tmp_path, ack=True, ack_timeout=0.3, ack_poll_interval=0.05)
        srv.faults.ack_delay = 0.1
        sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
        assert sink.channel in srv.channels and sink.counters()["ack_polls"] >= 2
        srv.faults.withhold_acks = True
        with pytest.raises(SendError) as ei:
            sink.send(sink.encode(RecordBatch.from_records(make_records(5))), 5)
        assert ei.value.retryable and "acknowledgement" in ei.value.reason
        assert sink.counters()["ack_timeouts"] == 1
        # Without a channel, an ack-enabled token refuses events (code 10).
        import urllib3

        r = urllib3.PoolManager().request(
            "POST", srv.url + "/services/collector/event", body=b'{"event":"x"}',
            headers={"Authorization": f"Splunk {TOKEN}"},
        )
        assert (r.status, r.json()["code"]) == (400, 10)
    finally:
        srv.stop()


def test_ack_on_for_a_token_without_ack_is_not_a_resend_loop(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path, ack=True, ack_timeout=0.2)
    sink.send(sink.encode(RecordBatch.from_records(make_records(3))), 3)  # no ackId in the reply: accepted, warned once
    assert len(server.indexed()) == 3


def test_health_check(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path)
    h = sink.health_check()
    assert h.ok and "token accepted" in h.detail
    server.faults.busy_until = 1e12
    h = sink.health_check()
    assert not h.ok and "code 18" in h.detail
    server.faults.busy_until = 0
    server.tokens.clear()
    h = sink.health_check()
    assert not h.ok and "token rejected" in h.detail and TOKEN not in h.detail


def test_token_from_environment_and_never_shown(
    server: HecServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("VXMIRROR_HEC_TOKEN", TOKEN)
    cfg = from_table(SplunkHecConfig, {"url": server.url, "verify_tls": False})
    sink = SplunkHecSink(cfg, SinkContext("splunk_hec", tmp_path))
    sink.send(sink.encode(RecordBatch.from_records(make_records(3))), 3)
    server.tokens.clear()
    with pytest.raises(SendError) as ei:
        sink.send(sink.encode(RecordBatch.from_records(make_records(3))), 3)
    assert TOKEN not in repr(sink.__dict__) and TOKEN not in str(ei.value)
    assert TOKEN not in caplog.text and TOKEN not in str(sink.counters())


def test_config_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VXMIRROR_HEC_TOKEN", raising=False)
    with pytest.raises(ConfigError) as ei:
        validate({"splunk_hec": {"url": "splunk.example:8088"}}, "vx.toml")
    assert ei.value.key == "forwarders.splunk_hec.url" and "vx.toml" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        validate({"splunk_hec": {"url": "https://s:8088", "ack_timeout": 0}}, "vx.toml")
    assert ei.value.key == "forwarders.splunk_hec.ack_timeout"
    with pytest.raises(ConfigError) as ei:
        validate({"splunk_hec": {"url": "https://s:8088", "tokn_file": "x"}}, "vx.toml")
    assert ei.value.key == "forwarders.splunk_hec.tokn_file"
    two = {"splunk_hec": [{"name": "a", "url": "https://a:8088", "index": "net", "sourcetype": "vxmirror:flow",
                           "verify_tls": True, "ack": True, "batch_max_records": 50},
                          {"name": "b", "url": "http://b:8088"}]}
    # no token anywhere: a clear error naming the key already when the config is validated
    with pytest.raises(ConfigError) as ei:
        validate(two, "vx.toml")
    assert ei.value.key == "forwarders.splunk_hec[0].token_file" and "VXMIRROR_HEC_TOKEN" in str(ei.value)
    monkeypatch.setenv("VXMIRROR_HEC_TOKEN", "from-the-environment")
    specs = validate(two, "vx.toml")
    assert [s.name for s in specs] == ["splunk_hec.a", "splunk_hec.b"]
    assert specs[0].settings.batch_max_records == 50 and specs[0].config.ack is True
    assert "from-the-environment" not in repr(specs)
    # the token gone again by the time the sink is built: the same clear error from the sink
    monkeypatch.delenv("VXMIRROR_HEC_TOKEN")
    with pytest.raises(ConfigError) as ei:
        SplunkHecSink(specs[1].config, SinkContext("splunk_hec.b", tmp_path))
    assert ei.value.key == "forwarders.splunk_hec.b.token_file" and "VXMIRROR_HEC_TOKEN" in str(ei.value)


def test_gzip_payload_round_trip(server: HecServer, tmp_path: Path) -> None:
    sink = make_sink(server, tmp_path, gzip_level=6)
    recs = make_records(50)
    payload = sink.encode(RecordBatch.from_records(recs))
    assert gzip.decompress(gzip.compress(payload)) == payload
    sink.send(payload, 50)
    assert len(server.indexed()) == 50


def test_splunk_check_counts_what_the_sink_sent(
    server: HecServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from receiver.cli import main

    sink = make_sink(server, tmp_path, index="main")
    recs = make_records(300, t0=1_700_000_000.0)  # event times 1_700_000_000.5 .. ~1_700_000_000.8
    sink.send(sink.encode(RecordBatch.from_records(recs)), 300)
    other = make_records(7, t0=1_800_000_000.0)
    sink.send(sink.encode(RecordBatch.from_records(other)), 7)  # outside the range
    server.mgmt_tokens.add("mgmt-token-xyz")
    monkeypatch.setenv("VXMIRROR_SPLUNK_TOKEN", "mgmt-token-xyz")
    argv = ["splunk", "check", "--url", server.url, "--index", "main",
            "--earliest", "1699999999", "--latest", "1700000100"]
    assert main([*argv, "--expect", "300"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("300 events") and "ok" in out
    assert main([*argv, "--expect", "301"]) == 1
    assert "MISMATCH (-1)" in capsys.readouterr().out
    assert server.searches[-1] == 'search index="main" sourcetype="vxmirror:flow" | stats count'
    # user and password login (a session key), and the whole index over the default range
    server.users["admin"] = "changeme-pw"
    pw = tmp_path / "pw"
    pw.write_text("changeme-pw")
    pw.chmod(0o600)
    monkeypatch.delenv("VXMIRROR_SPLUNK_TOKEN")
    assert main(["splunk", "check", "--url", server.url, "--username", "admin", "--password-file", str(pw),
                 "--earliest", "0", "--latest", "1900000000", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["count"] == 307
    # bad credentials: one line on stderr, status 2, no secret in it
    pw.write_text("wrong-pw")
    assert main(["splunk", "check", "--url", server.url, "--username", "admin", "--password-file", str(pw)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splunk check:") and "wrong-pw" not in err


def old_encode(sink: SplunkHecSink, records: list[dict[str, Any]]) -> bytes:
    """The oracle: the per-dict encoding the sink had before records came as a RecordBatch."""
    tf, names = sink.config.time_field, sink.config.indexed_fields
    prefix = sink._head[1 : -len(b',"time":')]
    lines = []
    for r in records:
        t = r.get(tf)
        fields = {k: str(r[k]) for k in names if r.get(k) is not None}
        body = orjson.dumps({"time": t if isinstance(t, int | float) else time.time(), "event": r, "fields": fields})
        lines.append(b"{" + prefix + b"," + body[1:])
    return b"\n".join(lines) + b"\n" if lines else b""


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"time_field": "ts_start", "index": "net", "host": 'sensor "1" \\ é'},
        {"indexed_fields": []},
        {"indexed_fields": ["vni", "community_id", "ts_end", "dest_port", "transport", "missing", "app",
                            "excerpt_out"]},
    ],
)
def test_encoding_from_the_batch_equals_the_per_record_encoding(
    server: HecServer, tmp_path: Path, config: dict[str, Any]
) -> None:
    sink = make_sink(server, tmp_path, **config)
    recs: list[dict[str, Any]] = make_records(600, flows=150)
    for i, r in enumerate(recs[:60]):  # the shapes records take: no VNI, app metadata, odd text
        r["vni"] = None if i % 3 == 0 else r["vni"]
        r["ts_end"] = float(1_700_000_000 + i) if i % 7 == 0 else r["ts_end"] + i * 1e-7
        if i % 4 == 0:
            r["app"] = {"http": {"host": "é.example", "uri": '/a"b\\c\n', "status": 200}}
        r["excerpt_out"] = "\x00\x01GET /\r\n\t\u2028"
    for lo, hi in [(0, 600), (0, 1), (17, 333), (599, 600)]:
        batch = RecordBatch.from_records(recs).slice(lo, hi)
        assert sink.encode(batch) == old_encode(sink, recs[lo:hi])
        lines = RecordBatch.from_lines(RecordBatch.from_records(recs[lo:hi]).lines())  # as replayed from the spool
        assert sink.encode(lines) == old_encode(sink, recs[lo:hi])
