"""Real logins on loopback, captured: small servers speaking just enough FTP, POP3, IMAP, SMTP,
Redis and HTTP for the standard library's clients (ftplib, poplib, imaplib, smtplib, http.client)
to log in, and a dumpcap capture of the loopback interface around them."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Reply = Callable[[bytes], list[bytes]]  # a client line -> the lines to send back
CLOSE = b"\0close"  # (a last reply line: close the connection after the lines before it)


class _LineHandler(socketserver.StreamRequestHandler):
    server: _LineServer

    def handle(self) -> None:
        reply = self.server.session()  # (per connection: the state of its dialogue)
        for line in self.server.greeting:
            self.wfile.write(line + b"\r\n")
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            for r in reply(line.rstrip(b"\r\n")):
                if r == CLOSE:
                    return
                self.wfile.write(r + b"\r\n")
            self.wfile.flush()


class _LineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, greeting: list[bytes], session: Callable[[], Reply]) -> None:
        self.greeting, self.session = greeting, session
        super().__init__(("127.0.0.1", 0), _LineHandler)


def _ftp(line: bytes) -> list[bytes]:
    cmd = line.split(b" ", 1)[0].upper()
    if cmd == b"QUIT":
        return [b"221 bye", CLOSE]
    return {b"USER": [b"331 password please"], b"PASS": [b"230 logged in"]}.get(cmd, [b"200 ok"])


def _pop3(line: bytes) -> list[bytes]:
    return [b"+OK bye", CLOSE] if line.upper() == b"QUIT" else [b"+OK"]


def _imap() -> Reply:
    sasl: list[bytes] = []  # the tag of an AUTHENTICATE waiting for the client's response

    def reply(line: bytes) -> list[bytes]:
        if sasl:
            return [sasl.pop() + b" OK authenticated"]
        tag, _, rest = line.partition(b" ")
        cmd = rest.split(b" ", 1)[0].upper()
        if cmd == b"CAPABILITY":
            return [b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", tag + b" OK done"]
        if cmd == b"LOGOUT":
            return [b"* BYE", tag + b" OK bye", CLOSE]
        if cmd == b"AUTHENTICATE":
            sasl.append(tag)
            return [b"+ "]
        return [tag + b" OK done"]

    return reply


def _smtp() -> Reply:
    waiting = [0]  # SASL response lines still to come

    def reply(line: bytes) -> list[bytes]:
        if waiting[0]:
            waiting[0] -= 1
            return [b"334 UGFzc3dvcmQ6"] if waiting[0] else [b"235 ok"]
        words = line.split(b" ")
        cmd = words[0].upper()
        if cmd == b"EHLO":
            return [b"250-mail.test", b"250-AUTH PLAIN LOGIN", b"250 OK"]
        if cmd == b"QUIT":
            return [b"221 bye", CLOSE]
        if cmd == b"AUTH":
            initial = len(words) > 2
            if words[1].upper() == b"PLAIN":
                waiting[0] = 0 if initial else 1
                return [b"235 ok"] if initial else [b"334 "]
            waiting[0] = 1 if initial else 2  # LOGIN: the user name, then the password
            return [b"334 UGFzc3dvcmQ6"] if initial else [b"334 VXNlcm5hbWU6"]
        return [b"250 ok"]

    return reply


class _RedisHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(65536):
            self.request.sendall(b"+OK\r\n")


class _RedisServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # (the name http.server calls)
        self.send_response_only(200, "OK")
        if self.path.startswith("/login"):
            self.send_header("Set-Cookie", self.server.cookie + "; Path=/; HttpOnly")  # type: ignore[attr-defined]
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Servers:
    """One server per protocol on 127.0.0.1 (ports ``ports[name]``), until ``close``."""

    def __init__(self, cookie: str) -> None:
        self.servers: dict[str, socketserver.BaseServer] = {
            "ftp": _LineServer([b"220 ftp ready"], lambda: _ftp),
            "pop3": _LineServer([b"+OK pop3 ready"], lambda: _pop3),
            "imap": _LineServer([b"* OK IMAP4rev1 ready"], _imap),
            "smtp": _LineServer([b"220 mail.test ESMTP"], _smtp),
            "redis": _RedisServer(("127.0.0.1", 0), _RedisHandler),
        }
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpHandler)
        web.cookie = cookie  # type: ignore[attr-defined]
        self.servers["http"] = web
        self.ports = {k: s.server_address[1] for k, s in self.servers.items()}  # type: ignore[attr-defined]
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self.servers.values()]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in self.servers.values():
            s.shutdown()
            s.server_close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def loopback_capture(path: Path, ports: list[int]) -> Iterator[Path]:
    """dumpcap on ``lo`` (TCP to or from ``ports``) into ``path`` (pcap) while the block runs
    (as root, as ``make test`` runs, or with dumpcap given CAP_NET_RAW)."""
    flt = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"
    proc = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-P", "-f", flt, "-w", str(path)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        said = b""
        deadline = time.monotonic() + 20
        while b"Capturing on" not in said:  # (printed once the capture runs, -q or not)
            assert proc.poll() is None, f"dumpcap ended: {said.decode(errors='replace')}"
            assert time.monotonic() < deadline, "dumpcap did not start"
            said += proc.stderr.read() or b""
            time.sleep(0.05)
        yield path
        time.sleep(0.3)  # (the last packets reach dumpcap)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
