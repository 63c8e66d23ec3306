"""Application metadata: HTTP, DNS and TLS parsers and the per-flow AppState.

Expected values come from independent sources: Zeek's http.log / dns.log for the same traces,
tshark's TLS dissector, and real TLS ClientHellos produced by OpenSSL (Python's ssl module).
"""

from __future__ import annotations

import ssl
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from receiver.appmeta import dns, http, tls
from receiver.appmeta.state import AppState
from tests.appmeta_fixtures import Segment, inner_segments
from tests.zeeklogs import ZEEK_DIR, read_log

HTTP_TRACES = ["http-get", "wikipedia", "http-single-conn-22", "tcp-http-with-padding",
               "vxlan-encapsulated-http", "concurrent-range-requests"]  # fmt: skip


def _trace(name: str) -> Path:
    (p,) = [p for p in (ZEEK_DIR / name).iterdir() if p.suffix in (".pcap", ".pcapng")]
    return p


def _flows(segs: list[Segment]) -> dict[tuple, list[tuple[int, Segment]]]:
    """Group segments by connection; direction 0 = the sender of the first segment."""
    flows: dict[tuple, list[tuple[int, Segment]]] = defaultdict(list)
    origin: dict[tuple, tuple] = {}
    for s in segs:
        a, b = (s.src, s.sport), (s.dst, s.dport)
        key = (s.proto, *sorted([a, b]))
        origin.setdefault(key, a)
        flows[key].append((0 if origin[key] == a else 1, s))
    return flows


def _app_states(name: str) -> dict[tuple, AppState]:
    out = {}
    for key, segs in _flows(inner_segments(_trace(name))).items():
        st = AppState(max_items=16)
        for d, s in segs:
            st.feed(d, s.payload, s.proto, s.sport, s.dport)
        out[key] = st
    return out


# -- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HTTP_TRACES)
def test_http_matches_zeek_http_log(name: str) -> None:
    states = _app_states(name)
    got = defaultdict(list)
    for key, st in states.items():
        for item in st.to_record().get("http", []):
            got[key].append(item)
    for row in read_log(ZEEK_DIR / name / "http.log"):
        a, b = (row["id.orig_h"], row["id.orig_p"]), (row["id.resp_h"], row["id.resp_p"])
        items = got[(6, *sorted([a, b]))]
        depth = row["trans_depth"] - 1
        assert len(items) > depth, (row, items)
        item = items[depth]
        assert item["method"] == row["method"]
        assert item["host"] == row["host"]
        assert item["uri"] == row["uri"]
        # Zeek's ``version`` is the reply's; ours is the request's (checked in other tests)
        assert item["user_agent"] == row["user_agent"]
        assert item["status"] == row["status_code"]
        assert item["reason"] == row["status_msg"]


def test_http_request_cut_short_keeps_what_is_there() -> None:
    req = (b"GET /a/b?c=d HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8.0\r\n"
           b"Accept: */*\r\n\r\n")  # fmt: skip
    full = http.parse_request(req)
    assert full == {"method": "GET", "host": "example.org", "uri": "/a/b?c=d",
                    "user_agent": "curl/8.0", "version": "1.1"}  # fmt: skip
    cut = http.parse_request(req[:50])  # inside the User-Agent line
    assert cut is not None and cut["host"] == "example.org" and cut["user_agent"] is None
    cut = http.parse_request(req[:30])  # inside the Host line
    assert cut is not None and cut["uri"] == "/a/b?c=d" and cut["host"] is None
    assert http.parse_request(b"SSH-2.0-OpenSSH_9.6\r\n") is None
    assert http.parse_request(b"\x16\x03\x01\x02\x00") is None
    assert http.parse_response(b"HTTP/1.1 404 Not Found\r\nContent-") == {
        "status": 404, "reason": "Not Found", "version": "1.1"}  # fmt: skip
    assert http.parse_response(b"HTTP/1.1 abc\r\n") is None


def test_http_pairing_in_order_and_max_items() -> None:
    st = AppState(max_items=2)
    st.feed(0, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", 6, 1000, 8080)
    st.feed(0, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 6, 1000, 8080)
    st.feed(1, b"HTTP/1.1 100 Continue\r\n\r\n", 6, 8080, 1000)
    st.feed(1, b"HTTP/1.1 200 OK\r\n\r\n", 6, 8080, 1000)
    assert st.wants_more  # one request is still waiting for its response
    st.feed(1, b"HTTP/1.1 404 Not Found\r\n\r\n", 6, 8080, 1000)
    st.feed(0, b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n", 6, 1000, 8080)
    rec = st.to_record()["http"]
    assert [(x["uri"], x["status"]) for x in rec] == [("/1", 200), ("/2", 404)]
    assert not st.wants_more


# -- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wikipedia", "gtp3_false_gtp"])
def test_dns_matches_zeek_dns_log(name: str) -> None:
    states = _app_states(name)
    got: dict[tuple, list[dict]] = {k: st.to_record().get("dns", []) for k, st in states.items()}
    rows = read_log(ZEEK_DIR / name / "dns.log")
    assert rows
    for row in rows:
        a, b = (row["id.orig_h"], row["id.orig_p"]), (row["id.resp_h"], row["id.resp_p"])
        items = got[(17, *sorted([a, b]))]
        match = [x for x in items if x["query"] == row["query"]]
        assert match, (row, items)
        if row["rcode_name"] is not None:
            assert any(x["rcode"] == row["rcode_name"] for x in match)
        if row["qtype_name"] is not None:
            assert any(x["qtype"] == row["qtype_name"] for x in match)
        if row["answers"]:
            assert any(x["answers"] == row["answers"] for x in match), (row, match)
    # one dns item per Zeek transaction, per flow
    per_flow: dict[tuple, int] = defaultdict(int)
    for row in rows:
        a, b = (row["id.orig_h"], row["id.orig_p"]), (row["id.resp_h"], row["id.resp_p"])
        per_flow[(17, *sorted([a, b]))] += 1
    for key, n in per_flow.items():
        assert len(got[key]) == n, (key, got[key])


def test_dns_truncated_response_keeps_query_and_rcode() -> None:
    segs = [s for s in inner_segments(_trace("wikipedia")) if s.sport == 53 and len(s.payload) > 100]
    resp = segs[0].payload
    full = dns.parse(resp)
    assert full is not None and len(full["answers"]) >= 2
    qend = 12 + len(full["query"]) + 2 + 4
    fewer = 0
    for n in range(qend, len(resp)):
        cut = dns.parse(resp[:n])
        assert cut is not None
        assert (cut["query"], cut["qtype"], cut["rcode"]) == (full["query"], full["qtype"], full["rcode"])
        assert cut["answers"] == full["answers"][: len(cut["answers"])]
        fewer += len(cut["answers"]) < len(full["answers"])
    assert fewer > 0
    assert dns.parse(resp[:11]) is None


def test_dns_over_tcp_with_length_prefix() -> None:
    q = next(s for s in inner_segments(_trace("wikipedia")) if s.dport == 53).payload
    st = AppState()
    st.feed(0, struct.pack("!H", len(q)) + q, 6, 40000, 53)
    assert st.to_record()["dns"][0]["query"] == dns.parse(q)["query"]  # type: ignore[index]


def test_netbios_name_decoding() -> None:
    assert dns.netbios_name("FHEPFCELEHFCEPFFFACACACACACACAAA") == "WORKGROUP"
    assert dns.netbios_name("example.com") == "example.com"


# -- TLS -------------------------------------------------------------------------------------


def _openssl_client_hello(sni: str, alpn: list[str]) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_openssl_client_hello_any_split() -> None:
    hello = _openssl_client_hello("api.example.internal", ["h2", "http/1.1"])
    full = tls.parse_client_hello(hello)
    assert full is not None and full["complete"]
    assert full["sni"] == "api.example.internal" and full["alpn"] == ["h2", "http/1.1"]
    assert full["version"] == "TLSv13" and "TLSv12" in full["supported_versions"]
    for cut in range(60, len(hello), 37):  # the hello split over two segments at any point
        st = AppState()
        st.feed(0, hello[:cut], 6, 50000, 443)
        assert st.wants_more
        st.feed(0, hello[cut:], 6, 50000, 443)
        t = st.to_record()["tls"]
        assert (t["sni"], t["alpn"], t["version"]) == ("api.example.internal", ["h2", "http/1.1"], "TLSv13")


def test_client_hello_cut_short_still_gives_early_fields() -> None:
    hello = _openssl_client_hello("x.example", ["h2"])
    found = [tls.parse_client_hello(hello[:n]) for n in range(9, len(hello))]
    assert all(f is not None for f in found)
    assert not any(f["complete"] for f in found)  # type: ignore[index]
    assert any(f["sni"] == "x.example" for f in found)  # type: ignore[index]
    assert tls.parse_client_hello(b"\x16\x03\x01") is None
    assert tls.parse_client_hello(b"GET / HTTP/1.1\r\n") is None


def test_tls_hellos_match_tshark() -> None:
    path = _trace("geneve-47101")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tls.handshake.type == 1 || tls.handshake.type == 2", "-T", "fields",
         "-e", "tls.handshake.type", "-e", "tls.handshake.extensions_server_name", "-e",
         "tls.handshake.ciphersuite", "-e", "tls.handshake.extensions_alpn_str"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()  # fmt: skip
    ch = next(r.split("\t") for r in out if r.startswith("1\t"))
    sh = next(r.split("\t") for r in out if r.startswith("2\t"))
    (st,) = [s for k, s in _app_states("geneve-47101").items() if k[0] == 6]
    t = st.to_record()["tls"]
    assert t["sni"] == ch[1]
    assert t["alpn"] == ch[3].split(",")
    assert t["cipher"] == tls.cipher_name(int(sh[2], 16)) == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert t["alpn_selected"] == sh[3]
    assert t["server_version"] == "TLSv12"
    assert not st.wants_more


# -- AppState detection ----------------------------------------------------------------------


def test_http_detected_on_port_22_by_content() -> None:
    states = _app_states("http-single-conn-22")
    (st,) = states.values()
    rec = st.to_record()
    assert rec["http"][0]["method"] == "GET" and rec["http"][0]["status"] == 200


def test_unknown_protocol_gives_up_and_is_cheap() -> None:
    st = AppState()
    for i in range(3):
        st.feed(i & 1, b"SSH-2.0-OpenSSH\r\n" + bytes([i]), 6, 40000, 22)
        assert st.wants_more
    st.feed(1, b"\x00\x01binary", 6, 22, 40000)
    assert not st.wants_more and st.to_record() == {}
    st2 = AppState()
    for i in range(4):
        st2.feed(0, b"random udp %d" % i, 17, 40000, 9999)
    assert not st2.wants_more
    st3 = AppState()
    st3.feed(0, b"\x45" * 20, 47, 0, 0)  # not TCP/UDP
    assert not st3.wants_more


def test_retransmitted_segment_not_counted_twice() -> None:
    st = AppState()
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    st.feed(0, req, 6, 1, 80)
    st.feed(0, req, 6, 1, 80)
    assert len(st.to_record()["http"]) == 1
