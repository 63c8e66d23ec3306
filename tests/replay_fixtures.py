"""A loopback UDP collector for the replay tests: records every datagram and its sender."""

from __future__ import annotations

import socket
import threading
import time


class Collector:
    """Binds 127.0.0.1 (or ::1) on a free port and collects datagrams in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.got: list[tuple[bytes, int]] = []  # (datagram, sender port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.got.append((data, addr[1]))

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[bytes, int]]:
        """Wait until ``n`` datagrams arrived (or the timeout), then a short quiet period."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        return list(self.got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
