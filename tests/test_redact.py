"""Credentials masked in the records (docs/privacy.md): real logins of the standard library's
clients against servers on loopback, captured with dumpcap and read back; a secret split over
two TCP segments and one cut by the excerpt's end; ``redact = false``; the rules one by one;
the native screen against its Python twin; many flows through the engine."""

from __future__ import annotations

import base64
import ftplib
import http.client
import imaplib
import poplib
import smtplib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import orjson
import pytest

from receiver.capture.read import read_records
from receiver.config.engine import EngineConfig
from receiver.config.schema import ConfigError, from_table
from receiver.engine import Engine
from receiver.packets import PacketBatch
from receiver.redact import Redactor, screen
from receiver.redact.names import HEADERS, PARAMS
from receiver.redact.rules import Rules
from receiver.traffic import write_pcap
from tests import packet_factory as pf
from tests.credential_fixtures import Servers, loopback_capture

BEARER = "eyJhbGciOiJIUzI1NiJ9.bearer-secret-7Q2x"
BASIC_USER, BASIC_PASS = "alice", "basic-secret-9Kp3"
COOKIE = "cookie-secret-4Hd8"
SET_COOKIE = "setcookie-secret-2Zm6"
API_KEY = "apikey-secret-8Wq1"
QUERY_TOKEN = "query-secret-5Rt7"
URL_PASS = "urlpass-secret-3Nb2"
FTP_PASS = "ftp-secret-6Lc9"
POP_PASS = "pop3-secret-1Vx4"
IMAP_PASS = 'imap secret "5Gj0"'  # (imaplib quotes it: a space and quotes)
IMAP_WIRE = b'imap secret \\"5Gj0\\"'
IMAP_SASL = "imapsasl-secret-8Tu3"
SMTP_PLAIN = "smtpplain-secret-2Ky5"
SMTP_LOGIN = "smtplogin-secret-7Pe1"
REDIS_INLINE = "redisinline-secret-4Fs6"
REDIS_RESP = "redisresp-secret-9Ha2"
REDIS_HELLO = "redishello-secret-3Dw8"


@dataclass
class Login:
    """One connection: its client port, the secrets it sent (as they went on the wire), what
    must stay readable, and how many values its record masks."""

    name: str
    port: int = 0
    secrets: list[bytes] = field(default_factory=list)
    kept: list[bytes] = field(default_factory=list)
    redacted: int = 0


def _http(port: int, target: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", target, headers=headers)
    local = conn.sock.getsockname()[1]
    conn.getresponse().read()
    conn.close()
    return local


def _b64(s: str) -> bytes:
    return base64.b64encode(s.encode())


def _logins(ports: dict[str, int]) -> list[Login]:
    out: list[Login] = []
    web = ports["http"]

    def http_case(name: str, target: str, headers: dict[str, str], secrets: list[bytes], kept: list[bytes],
                  redacted: int) -> None:
        out.append(Login(name, _http(web, target, headers), secrets, kept, redacted))

    http_case("bearer", "/api", {"Authorization": f"Bearer {BEARER}"}, [BEARER.encode()],
              [b"Authorization: Bearer "], 1)
    basic = _b64(f"{BASIC_USER}:{BASIC_PASS}")
    http_case("basic", "/api", {"Authorization": "Basic " + basic.decode()}, [basic],
              [b"Authorization: Basic "], 1)
    http_case("cookie", "/", {"Cookie": f"session={COOKIE}; theme=dark"}, [COOKIE.encode()],
              [b"Cookie: session=", b"; theme="], 2)
    http_case("set-cookie", "/login", {}, [SET_COOKIE.encode()], [b"Set-Cookie: sid=", b"; Path=/; HttpOnly"], 1)
    http_case("x-api-key", "/", {"X-Api-Key": API_KEY}, [API_KEY.encode()], [b"X-Api-Key: "], 1)
    # the URI's secrets are masked twice: in the excerpt and in app.http.uri
    http_case("query", f"/search?q=cats&token={QUERY_TOKEN}&page=2", {}, [QUERY_TOKEN.encode()],
              [b"?q=cats&token=", b"&page=2"], 2)
    # (http.client puts the URL's user:password@ in the Host header too: four values in all)
    http_case("url-password", f"http://bob:{URL_PASS}@127.0.0.1:{web}/proxy", {}, [URL_PASS.encode()],
              [b"http://bob:", b"\r\nHost: bob:"], 4)

    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", ports["ftp"], timeout=10)
    port = ftp.sock.getsockname()[1]
    ftp.login("bob", FTP_PASS)
    ftp.quit()
    out.append(Login("ftp", port, [FTP_PASS.encode()], [b"USER bob\r\nPASS "], 1))

    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
    port = pop.sock.getsockname()[1]
    pop.user("bob")
    pop.pass_(POP_PASS)
    pop.quit()
    out.append(Login("pop3", port, [POP_PASS.encode()], [b"USER bob\r\nPASS "], 1))

    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    port = imap.sock.getsockname()[1]
    imap.login("bob", IMAP_PASS)
    imap.logout()
    out.append(Login("imap-login", port, [IMAP_WIRE, b"secret", b"5Gj0"], [b" LOGIN bob \""], 1))

    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    port = imap.sock.getsockname()[1]
    imap.authenticate("PLAIN", lambda _: f"\0bob\0{IMAP_SASL}".encode())
    imap.logout()
    out.append(Login("imap-authenticate", port, [_b64(f"\0bob\0{IMAP_SASL}")], [b" AUTHENTICATE PLAIN\r\n"], 1))

    smtp = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10)
    port = smtp.sock.getsockname()[1]
    smtp.login("bob", SMTP_PLAIN)  # (PLAIN, with the initial response)
    smtp.quit()
    out.append(Login("smtp-plain", port, [_b64(f"\0bob\0{SMTP_PLAIN}")], [b"AUTH PLAIN "], 1))

    for initial in (True, False):
        smtp = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10)
        port = smtp.sock.getsockname()[1]
        smtp.ehlo()
        smtp.user, smtp.password = "bob", SMTP_LOGIN
        smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=initial)
        smtp.quit()
        # (the user name is a SASL response too: masked with the password)
        out.append(Login(f"smtp-login-{'ir' if initial else 'lines'}", port, [_b64(SMTP_LOGIN), _b64("bob")],
                         [b"AUTH LOGIN"], 2))

    for name, wire, secret, kept in (
        ("redis-inline", f"AUTH {REDIS_INLINE}\r\nPING\r\n", REDIS_INLINE, b"AUTH "),
        ("redis-resp", f"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n${len(REDIS_RESP)}\r\n{REDIS_RESP}\r\n",
         REDIS_RESP, b"$4\r\nAUTH\r\n$3\r\nbob\r\n"),
        ("redis-hello", f"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n${len(REDIS_HELLO)}\r\n"
         f"{REDIS_HELLO}\r\n", REDIS_HELLO, b"$4\r\nAUTH\r\n$3\r\nbob\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", ports["redis"]), timeout=10) as s:
            port = s.getsockname()[1]
            s.sendall(wire.encode())
            assert s.recv(100).startswith(b"+OK")
        out.append(Login(name, port, [secret.encode()], [kept], 1))
    return out


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Login]]:
    """Every login above, captured on loopback."""
    servers = Servers(cookie=f"sid={SET_COOKIE}")
    path = tmp_path_factory.mktemp("redact") / "logins.pcap"
    try:
        with loopback_capture(path, list(servers.ports.values())):
            logins = _logins(servers.ports)
    finally:
        servers.close()
    return path, logins


def _by_client_port(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["src_port"]: r for r in records}


def _shown(rec: dict[str, Any]) -> list[bytes]:
    """Everything a record shows: its JSON and its excerpts decoded."""
    return [orjson.dumps(rec)] + [base64.b64decode(rec[k]) for k in ("excerpt_in", "excerpt_out") if k in rec]


CFG = EngineConfig(excerpt_bytes=512)


def test_each_kind_of_login_is_masked_and_counted(captured: tuple[Path, list[Login]]) -> None:
    path, logins = captured
    records = list(read_records([path], CFG))
    by_port = _by_client_port([dict(r) for r in records])
    for login in logins:
        rec = by_port[login.port]
        shown = _shown(rec)
        for secret in login.secrets:
            assert not any(secret in s for s in shown), (login.name, secret, shown)
        for name in login.kept:
            assert any(name in s for s in shown[1:]), (login.name, name, shown)
        assert rec.get("redacted") == login.redacted, (login.name, rec)
    assert len(logins) == 17
    # nothing else in the capture was masked (greetings, replies, the other flows)
    assert sum(r.get("redacted", 0) for r in records) == sum(x.redacted for x in logins)


def test_the_uri_keeps_its_shape(captured: tuple[Path, list[Login]]) -> None:
    path, logins = captured
    by_port = _by_client_port([dict(r) for r in read_records([path], CFG)])
    port = {x.name: x.port for x in logins}
    (item,) = by_port[port["query"]]["app"]["http"]
    assert item["uri"] == "/search?q=cats&token=" + "*" * len(QUERY_TOKEN) + "&page=2"
    (item,) = by_port[port["url-password"]]["app"]["http"]
    assert item["uri"].startswith("http://bob:" + "*" * len(URL_PASS) + "@127.0.0.1:")
    assert item["host"].startswith("bob:" + "*" * len(URL_PASS) + "@127.0.0.1:")
    assert item["status"] == 200


def test_redact_false_shows_the_traffic_as_it_was(captured: tuple[Path, list[Login]]) -> None:
    """With ``redact = false`` every secret is in the records and nothing says masked; with it on,
    the records differ only in masked bytes (lengths kept) and the count."""
    path, logins = captured
    plain = [dict(r) for r in read_records([path], EngineConfig(excerpt_bytes=512, redact=False))]
    masked = [dict(r) for r in read_records([path], CFG)]
    assert len(plain) == len(masked)
    by_port = _by_client_port(plain)
    for login in logins:
        shown = _shown(by_port[login.port])
        assert all(any(secret in s for s in shown) for secret in login.secrets), login.name
    assert not any("redacted" in r for r in plain)
    for p, m in zip(plain, masked):
        m.pop("redacted", None)
        for k in ("excerpt_in", "excerpt_out"):
            if k in p:
                a, b = base64.b64decode(p.pop(k)), base64.b64decode(m.pop(k))
                assert len(a) == len(b) and all(x == y or y == ord("*") for x, y in zip(a, b))
        app_p, app_m = p.pop("app", {}), m.pop("app", {})
        for item_p, item_m in zip(app_p.get("http", []), app_m.get("http", [])):
            for k in ("uri", "host"):
                assert len(item_p.pop(k) or "") == len(item_m.pop(k) or "")
        assert p == m and app_p == app_m


def test_vxmirror_read_masks_unless_told_not_to(captured: tuple[Path, list[Login]], tmp_path: Path) -> None:
    from receiver.cli import main

    path, _ = captured
    for flags, shown in (([], False), (["--no-redact"], True)):
        out = tmp_path / f"out{len(flags)}.jsonl"
        assert main(["read", str(path), "--quiet", "--excerpt-bytes", "512", "-o", str(out), *flags]) == 0
        text = out.read_bytes()
        excerpts = b"".join(base64.b64decode(r.get(k, "")) for r in map(orjson.loads, text.splitlines())
                            for k in ("excerpt_in", "excerpt_out"))  # fmt: skip
        assert (FTP_PASS.encode() in excerpts) is shown and (QUERY_TOKEN.encode() in text) is shown
        assert (b'"redacted":' in text) is not shown


def test_a_secret_split_over_two_segments(tmp_path: Path) -> None:
    """The token's first half in one TCP segment and the rest in the next: masked whole."""
    servers = Servers(cookie="sid=x")
    path = tmp_path / "split.pcap"
    request = f"GET /api HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {BEARER}\r\n\r\n".encode()
    cut = request.index(BEARER.encode()) + len(BEARER) // 2
    try:
        with loopback_capture(path, [servers.ports["http"]]), \
                socket.create_connection(("127.0.0.1", servers.ports["http"]), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request[:cut])
            time.sleep(0.2)
            s.sendall(request[cut:])
            assert s.recv(1000).startswith(b"HTTP/1.0 200")
    finally:
        servers.close()
    payloads = [bytes(dpkt.ethernet.Ethernet(buf).data.data.data) for _, buf in dpkt.pcap.Reader(path.open("rb"))]
    assert request[:cut] in payloads and request[cut:] in payloads  # (two segments indeed)
    (rec,) = [dict(r) for r in read_records([path], EngineConfig()) if r["dest_port"] == servers.ports["http"]]
    excerpt = base64.b64decode(rec["excerpt_in"])
    assert excerpt == request.replace(BEARER.encode(), b"*" * len(BEARER))[:128]
    assert rec["redacted"] == 1


@pytest.mark.parametrize("keep", [1, 5, len(BEARER) - 1])
def test_a_value_cut_by_the_excerpts_end_is_masked_to_the_end(keep: int) -> None:
    request = f"GET /api HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {BEARER}\r\n\r\n".encode()
    size = request.index(BEARER.encode()) + keep
    frames = _tcp_flow("10.1.0.1", "10.1.0.2", 40000, 80, [(0, request), (1, b"HTTP/1.1 401 No\r\n\r\n")])
    (rec,) = _run(frames, EngineConfig(excerpt_bytes=size))
    assert base64.b64decode(rec["excerpt_in"]) == request[: size - keep] + b"*" * keep
    assert rec["redacted"] == 1


# -- the rules, one by one -----------------------------------------------------------------------

RULES = Rules(HEADERS, PARAMS)


RULE_CASES = [
    (b"Authorization: Bearer abc\r\n", b"Authorization: Bearer ***\r\n"),
    (b"authorization:Basic  dXNl\r\n", b"authorization:Basic  ****\r\n"),
    (b"Authorization: onlytoken\r\n", b"Authorization: *********\r\n"),
    (b"Authorization: Bea", b"Authorization: ***"),  # cut in the scheme: all of it
    (b"Proxy-Authorization: Basic Zm9v\r\n", b"Proxy-Authorization: Basic ****\r\n"),
    (b"Cookie: a=1; b=22;c\r\n", b"Cookie: a=*; b=**;*\r\n"),
    (b"Set-Cookie: id=abc; Path=/; Secure", b"Set-Cookie: id=***; Path=/; Secure"),
    (b"X-Amz-Security-Token: FQoGZ\r\nX-Amz-Date: 2024\r\n", b"X-Amz-Security-Token: *****\r\nX-Amz-Date: 2024\r\n"),
    (b"Referer: http://x/?a=1&Password=p%20w#f\r\n", b"Referer: http://x/?a=1&Password=*****#f\r\n"),
    (b"GET /a;jsessionid=ABC?x=1 HTTP/1.1", b"GET /a;jsessionid=***?x=1 HTTP/1.1"),
    (b"\r\n\r\nuser=bob&password=hunter2", b"\r\n\r\nuser=bob&password=*******"),
    (b"GET /?X-Amz-Credential=AK%2F&X-Amz-Signature=ff00 HTTP/1.1",
     b"GET /?X-Amz-Credential=*****&X-Amz-Signature=**** HTTP/1.1"),
    (b"GET /?monkey=1&keyboard=2 HTTP/1.1", b"GET /?monkey=1&keyboard=2 HTTP/1.1"),  # not "key"
    (b"Location: redis://:pw@db:6379/0\r\n", b"Location: redis://:**@db:6379/0\r\n"),
    (b"Location: http://host:8080/x\r\n", b"Location: http://host:8080/x\r\n"),  # a port, not a password
    (b"Location: https://u:p", b"Location: https://u:*"),  # cut: it may be a password
    (b"GET http://bob:pw@h/ HTTP/1.1\r\nHost: bob:pw@h\r\n", b"GET http://bob:**@h/ HTTP/1.1\r\nHost: bob:**@h\r\n"),
    (b"GET / HTTP/1.1\r\nHost: h:80\r\nFrom: a@b\r\n", b"GET / HTTP/1.1\r\nHost: h:80\r\nFrom: a@b\r\n"),
    (b"USER x\r\npass a b c \r\n", b"USER x\r\npass ***** \r\n"),
    (b"a1 login bob hunter2\r\n", b"a1 login bob *******\r\n"),
    (b"a1 LOGIN \"bo b\" \"hu\\\"nter\"\r\n", b"a1 LOGIN \"bo b\" \"********\"\r\n"),
    (b"a1 LOGIN {3}\r\nbob {7+}\r\nhunter2\r\n", b"a1 LOGIN {3}\r\nbob {7+}\r\n*******\r\n"),
    (b"a1 LOGIN bob {7}\r\nhun", b"a1 LOGIN bob {7}\r\n***"),
    (b"a1 LOGIN bob", b"a1 LOGIN bob"),  # (no password yet)
    (b"AUTH PLAIN\r\nAGJvYgBw\r\nMAIL FROM:<a@b>\r\n", b"AUTH PLAIN\r\n********\r\nMAIL FROM:<a@b>\r\n"),
    (b"AUTH LOGIN\r\nYm9i\r\ncHc=\r\nQUIT\r\n", b"AUTH LOGIN\r\n****\r\n****\r\nQUIT\r\n"),
    (b"AUTH CRAM-MD5\r\nYm9iIGZm\r\nNOOP\r\n", b"AUTH CRAM-MD5\r\n********\r\nNOOP\r\n"),
    (b"AUTH PLAIN\r\n*\r\n", b"AUTH PLAIN\r\n*\r\n"),  # (cancelled)
    (b"A1 AUTHENTICATE XOAUTH2 dXNlcj1i\r\n", b"A1 AUTHENTICATE XOAUTH2 ********\r\n"),
    (b"auth s3cret\r\n", b"auth ******\r\n"),
    (b"AUTH default s3cret\r\n", b"AUTH default ******\r\n"),
    (b"HELLO 3 AUTH bob s3cret\r\n", b"HELLO 3 AUTH bob ******\r\n"),
    (b"*2\r\n$4\r\nauth\r\n$6\r\ns3cr", b"*2\r\n$4\r\nauth\r\n$6\r\n****"),  # cut
    (b"*3\r\n$4\r\nAUTH\r\n$2\r\nus", b"*3\r\n$4\r\nAUTH\r\n$2\r\nus"),  # cut in the user name
    (b"*3\r\n$3\r\nSET\r\n$4\r\nauth\r\n$1\r\nx\r\n", b"*3\r\n$3\r\nSET\r\n$4\r\nauth\r\n$1\r\nx\r\n"),
    (b"WWW-Authenticate: Basic realm=\"x\"\r\n", b"WWW-Authenticate: Basic realm=\"x\"\r\n"),
    (b"GET /login HTTP/1.1\r\nHost: auth.example\r\n", b"GET /login HTTP/1.1\r\nHost: auth.example\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "want"), RULE_CASES)
def test_rules(text: bytes, want: bytes) -> None:
    buf = bytearray(text)
    n = RULES.mask(buf)
    assert bytes(buf) == want
    assert n == sum(1 for _ in _runs(want)) - sum(1 for _ in _runs(text))


def _runs(b: bytes) -> list[int]:
    """Starts of runs of '*' (the values a mask made, in the tests above)."""
    return [i for i in range(len(b)) if b[i] == 42 and (i == 0 or b[i - 1] != 42)]


def test_masking_twice_changes_nothing_and_counts_the_same() -> None:
    """(A flow's later interim records show its masked HTTP items again.)"""
    text = b"GET /?token=abc HTTP/1.1\r\nCookie: a=1\r\nAuthorization: Basic Zm9v\r\n\r\n"
    buf = bytearray(text)
    first = RULES.mask(buf)
    again = bytearray(buf)
    assert RULES.mask(again) == first == 3 and again == buf
    assert RULES.mask_text("/p?key=1&sig=2") == ("/p?key=*&sig=*", 2)
    assert RULES.mask_text(RULES.mask_text("/p?key=1&sig=2")[0]) == ("/p?key=*&sig=*", 2)


def test_extra_names_from_the_config() -> None:
    cfg = from_table(EngineConfig, {"redact_headers": ["X-My-Secret"], "redact_params": ["otp"]})
    r = Redactor(cfg.redact_headers, cfg.redact_params)
    buf = bytearray(b"GET /?otp=123456 HTTP/1.1\r\nx-my-secret: abc\r\n")
    assert r.rules.mask(buf) == 2 and buf == b"GET /?otp=****** HTTP/1.1\r\nx-my-secret: ***\r\n"
    assert b"x-my-secret:" in r.screen.marks and b"otp=" in r.screen.marks
    with pytest.raises(ConfigError, match="redact_headers\\[1\\]"):
        from_table(EngineConfig, {"redact_headers": ["Ok", "Bad Name:"]})
    with pytest.raises(ConfigError, match="redact_params\\[0\\]"):
        from_table(EngineConfig, {"redact_params": ["a=b"]})


# -- the screen ----------------------------------------------------------------------------------

def test_native_screen_agrees_with_its_python_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    if screen._lib is None:
        pytest.skip("the C library is not built (VXMIRROR_NATIVE=0): the twin is the only screen")
    rng = np.random.default_rng(4)
    marks = RULES.markers
    size, n = 96, 5000
    rows = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for i in range(0, n, 2):  # a marker (in random case) at a random place in half of them
        m = marks[int(rng.integers(len(marks)))][0]
        m = bytes(c ^ 32 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in m)
        at = int(rng.integers(0, size - len(m) + 1))
        rows[i, at : at + len(m)] = np.frombuffer(m, np.uint8)
    index = rng.permutation(n)
    lens = rng.integers(0, size + 1, n)
    s = screen.Screen(marks)
    native = s(rows, index, lens)
    monkeypatch.setattr(screen, "_lib", None)
    python = s(rows, index, lens)
    assert native.tolist() == python.tolist()
    assert 0.2 * n < np.count_nonzero(native) < 0.8 * n  # (both kinds of answer were given)
    assert len(set(native.tolist())) > len(marks) // 2


def test_every_rule_has_a_marker() -> None:
    """An excerpt the rules would change always passes the screen, and the rules its markers
    stand for mask all of it."""
    s = screen.Screen(RULES.markers)
    for text, want in RULE_CASES:
        rows = np.frombuffer(text, np.uint8).reshape(1, -1).copy()
        (found,) = s(rows, np.array([0]), np.array([len(text)])).tolist()
        buf = bytearray(text)
        n = RULES.mask(buf, s.found(found))
        assert bytes(buf) == want, text
        assert n == RULES.mask(bytearray(text)), text
    tls = bytearray(b"\x16\x03\x01\x00\x10PASS hunter2\r\n")  # (a TLS record is not looked at)
    assert not s(np.frombuffer(tls, np.uint8).reshape(1, -1).copy(), np.array([0]), np.array([len(tls)]))[0]


# -- many flows through the engine ---------------------------------------------------------------

def _tcp_flow(c: str, s: str, cport: int, sport: int, data: list[tuple[int, bytes]]) -> list[bytes]:
    SYN, ACK, FIN, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    frames = [pf.tcp(c, s, cport, sport, SYN), pf.tcp(s, c, sport, cport, SYN | ACK), pf.tcp(c, s, cport, sport, ACK)]
    for d, payload in data:
        frames.append(pf.tcp(c, s, cport, sport, ACK | PSH, payload) if d == 0
                      else pf.tcp(s, c, sport, cport, ACK | PSH, payload))  # fmt: skip
    frames += [pf.tcp(c, s, cport, sport, FIN | ACK), pf.tcp(s, c, sport, cport, FIN | ACK)]
    return frames


def _run(frames: list[bytes], cfg: EngineConfig, batch: int = 4096) -> list[dict[str, Any]]:
    e = Engine(cfg)
    ts = [1000.0 + i * 1e-4 for i in range(len(frames))]
    out: list[dict[str, Any]] = []
    for i in range(0, len(frames), batch):
        out += e.process(PacketBatch.from_frames(frames[i : i + batch], ts[i : i + batch])).records
    out += e.finish("end_of_input")
    return out


KINDS: list[tuple[str, list[tuple[int, bytes]], int]] = [
    ("bearer", [(0, b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer SECRET\r\n\r\n"),
                (1, b"HTTP/1.1 200 OK\r\n\r\n")], 1),
    ("query", [(0, b"GET /x?api_key=SECRET HTTP/1.1\r\nHost: a\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")], 2),
    ("cookies", [(0, b"GET / HTTP/1.1\r\nCookie: s=SECRET\r\n\r\n"),
                 (1, b"HTTP/1.1 200 OK\r\nSet-Cookie: t=SECRET; Path=/\r\n\r\n")], 2),
    ("split", [(0, b"GET / HTTP/1.1\r\nX-Auth-Token: SEC"), (0, b"RET\r\n\r\n"), (1, b"HTTP/1.1 204 No\r\n\r\n")], 1),
    ("ftp", [(1, b"220 hi\r\n"), (0, b"USER u\r\n"), (1, b"331 pw\r\n"), (0, b"PASS SECRET\r\n")], 1),
    ("redis", [(0, b"*2\r\n$4\r\nAUTH\r\n$6\r\nSECRET\r\n"), (1, b"+OK\r\n")], 1),
    ("plain-http", [(0, b"GET /index.html?page=2 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"),
                    (1, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")], 0),
    ("login-page", [(0, b"GET /login HTTP/1.1\r\nHost: auth.example\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")], 0),
    ("opaque", [(0, bytes(range(256))[:120]), (1, b"\x00" * 64)], 0),
]  # fmt: skip


def test_many_flows_with_and_without_secrets() -> None:
    rng = np.random.default_rng(8)
    kinds = rng.integers(0, len(KINDS), 6000)
    frames: list[bytes] = []
    for i, k in enumerate(kinds.tolist()):
        c = f"10.{2 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}"
        frames += _tcp_flow(c, "10.200.0.1", 20000 + i % 40000, 80 + k, KINDS[k][1])
    records = _run(frames, EngineConfig())
    assert len(records) == kinds.size
    for rec in records:
        name, data, want = KINDS[rec["dest_port"] - 80]
        assert rec.get("redacted", 0) == want, (name, rec)
        shown = _shown(rec)
        assert b"SECRET" not in shown[0] and not any(b"SEC" in s for s in shown[1:]), (name, shown)
        if not want:  # untouched: the excerpts are the payloads
            sent = b"".join(p for d, p in data if d == 0)[:128]
            assert base64.b64decode(rec["excerpt_in"]) == sent
    off = _run(frames, EngineConfig(redact=False))
    assert sum(b"SECRET" in base64.b64decode(r.get("excerpt_in", "")) + base64.b64decode(r.get("excerpt_out", ""))
               for r in off) == int(np.isin(kinds, [0, 1, 2, 3, 4, 5]).sum())  # fmt: skip


def test_interim_records_of_a_long_flow() -> None:
    """The first record shows the masked excerpts; every record shows the masked URI, counted."""
    request = b"GET /feed?token=SECRET HTTP/1.1\r\nHost: a\r\nCookie: s=SECRET\r\n\r\n"
    data = [(0, request), (1, b"HTTP/1.1 200 OK\r\n\r\n")] + [(1, b"x" * 100)] * 30
    frames = _tcp_flow("10.3.0.1", "10.3.0.2", 40000, 80, data)
    e = Engine(EngineConfig(active_timeout=1.0, expire_interval=0.1))
    records: list[dict[str, Any]] = []
    for i, f in enumerate(frames):  # (a packet each 0.2 s: an interim record about every second)
        records += e.process(PacketBatch.from_frames([f], [1000.0 + 0.2 * i])).records
    records += e.finish("end_of_input")
    assert len(records) >= 4 and records[1]["segment"] == 1
    assert [r["redacted"] for r in records] == [3] + [1] * (len(records) - 1)
    assert base64.b64decode(records[0]["excerpt_in"]) == request.replace(b"SECRET", b"******")
    assert all(r["app"]["http"][0]["uri"] == "/feed?token=******" for r in records)
    assert not any(b"SECRET" in orjson.dumps(r) for r in records)


def test_traffic_without_secrets_gives_the_same_bytes_either_way(tmp_path: Path) -> None:
    path = tmp_path / "gen.pcap"
    write_pcap(path, 30_000, n_flows=3_000, seed=5)

    def lines(cfg: EngineConfig) -> list[bytes]:
        return [orjson.dumps(dict(r)) for r in read_records([path], cfg)]

    on, off = lines(EngineConfig(active_timeout=0.5)), lines(EngineConfig(active_timeout=0.5, redact=False))
    assert len(on) > 3000 and on == off
