"""A tiny sd_notify client: tell systemd (a ``Type=notify`` unit) how the service is doing.

The service takes a :class:`Notifier` (it has the ``ready()``, ``watchdog()``,
``status(text)`` and ``stopping()`` methods of ``receiver.service.Notifier``)::

    serve(cfg, notifier=sdnotify.Notifier() if sdnotify.Notifier().enabled else None)

Or the module functions, usable from anywhere (only the main process: the unit has ``NotifyAccess=main``)::

    from receiver.process import sdnotify

    sdnotify.notify(ready=True, status="listening on 0.0.0.0:4789, 0.0.0.0:6081")  # sockets bound
    interval = sdnotify.watchdog_interval()      # seconds between pings, or None when not asked
    ...                                          # every `interval` while the drain is alive:
    sdnotify.notify(watchdog=True, status="412,003 pkt/s, 18,224 flows active")
    sdnotify.notify(stopping=True, status="exporting open flows")   # on SIGTERM
    sdnotify.notify(reloading=True)                                 # on SIGHUP (then ready=True)

``notify`` sends one datagram of ``KEY=value`` lines to the socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and returns
True when sent, False when there is no such variable (not under systemd: every
call is then a cheap no-op) or when sending failed (never raises: a missing
supervisor must not stop the data path). ``watchdog_interval()`` is half of
``$WATCHDOG_USEC`` (systemd's advice: ping at half the timeout), None when the
variable is absent, invalid, or ``$WATCHDOG_PID`` names another process.

Ping the watchdog from the code that proves the drain is alive (the loop that
empties the sockets), not from an independent timer: a stuck drain must stop
the pings so systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import threading

__all__ = ["Notifier", "notify", "watchdog_interval"]


class Notifier:
    """Keeps one datagram socket to ``$NOTIFY_SOCKET`` (or ``address``) open."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message.encode(), self.address)
                return True
            except OSError:
                return False

    def notify(
        self,
        ready: bool = False,
        status: str | None = None,
        watchdog: bool = False,
        stopping: bool = False,
        reloading: bool = False,
        **fields: str | int,
    ) -> bool:
        """Send the given states in one message (nothing given: nothing sent, False)."""
        lines = []
        if ready:
            lines.append("READY=1")
        if reloading:
            lines.append("RELOADING=1")
        if stopping:
            lines.append("STOPPING=1")
        if watchdog:
            lines.append("WATCHDOG=1")
        if status is not None:
            lines.append("STATUS=" + status.replace("\n", " "))
        lines += [f"{k.upper()}={v}" for k, v in fields.items()]
        if not lines:
            return False
        return self.send("\n".join(lines))

    # the service's Notifier protocol (receiver.service.Notifier)
    def ready(self) -> None:
        self.notify(ready=True)

    def watchdog(self) -> None:
        self.notify(watchdog=True)

    def status(self, text: str) -> None:
        self.notify(status=text)

    def stopping(self) -> None:
        self.notify(stopping=True)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


_default: Notifier | None = None


def notify(
    ready: bool = False,
    status: str | None = None,
    watchdog: bool = False,
    stopping: bool = False,
    reloading: bool = False,
    **fields: str | int,
) -> bool:
    """Send states to ``$NOTIFY_SOCKET`` (read at the first call). See the module docstring."""
    global _default
    if _default is None:
        _default = Notifier()
    return _default.notify(ready, status, watchdog, stopping, reloading, **fields)


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if not asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2e6


def reset() -> None:
    """Forget the cached socket (tests; after a fork)."""
    global _default
    if _default is not None:
        _default.close()
    _default = None
