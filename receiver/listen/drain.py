"""The socket drain of one worker: event-loop reader callbacks, rings, batches, the allowlist.

With the C library built (and ``listen.receive_thread`` on), each socket has a receive thread
(``receiver.listen.rxthread``) that empties it into a ring while the worker is busy; the
loop is woken through an eventfd and hands what is waiting to ``handler`` in batches of at
most ``ring_slots``. Otherwise the loop's reader callback calls ``recvmmsg`` itself into the
socket's ring until the socket is empty or the ring is full (bounded per callback so one
busy socket cannot starve the loop); the ring goes to ``handler`` as one PacketBatch when
it is full, when the socket is empty, or ``flush_interval`` after its oldest datagram.
Datagrams from senders outside the allowlist are removed from the batch and counted.
``handler`` runs synchronously: the ring is reused as soon as it returns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import native
from ..packets import Layer, PacketBatch
from .allowlist import SourceFilter
from .mmsg import RecvRing
from .rxthread import RecvThread
from .settings import ListenConfig

log = logging.getLogger("vxmirror.listen")

MAX_CALLS_PER_WAKEUP = 64
MAX_BATCHES_PER_WAKEUP = 8  # receive thread: batches handed over before the loop gets a turn


@dataclass
class ListenCounters:
    datagrams: int = 0
    bytes: int = 0
    truncated: int = 0  # datagrams longer than a slot (kept, truncated)
    dropped_source: int = 0  # sender outside allow_sources
    batches: int = 0
    recv_errors: int = 0


@dataclass
class Source:
    sock: socket.socket
    layer: Layer
    label: str
    ring: RecvRing
    counters: ListenCounters = field(default_factory=ListenCounters)
    port: int = 0
    rx: RecvThread | None = None  # the receive thread, when in use
    rx_counters: dict[str, int] = field(default_factory=dict)  # its last counters, once stopped


class Drain:
    """Receives on ``sockets`` and hands batches to ``handler(batch)``."""

    def __init__(
        self,
        cfg: ListenConfig,
        sockets: list[tuple[socket.socket, Layer, str]],
        handler: Callable[[PacketBatch], None],
        allow: SourceFilter | None = None,
        gro: bool = False,
    ) -> None:
        """``gro``: the caller allows UDP_GRO on these sockets (one worker; ``listen.udp_gro``)."""
        self.cfg = cfg
        self.handler = handler
        self.allow = allow if allow is not None else SourceFilter(cfg.allow_sources)
        self.sources: list[Source] = []
        threads = cfg.receive_thread and native.available()
        for sock, layer, label in sockets:
            ring = RecvRing(cfg.ring_slots, cfg.slot_size, sock.family)
            port = int(sock.getsockname()[1])
            rx = None
            if threads:
                rx = RecvThread(sock, 4 * cfg.ring_slots, cfg.receive_ring_bytes, cfg.slot_size,
                                min(cfg.recv_batch, 64) if gro else cfg.recv_batch, notify_records=cfg.ring_slots,
                                gro=gro)
            self.sources.append(Source(sock, layer, label, ring, port=port, rx=rx))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self._warned_sources: set[str] = set()
        self._continuing: set[int] = set()  # sources with a _take continuation scheduled

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._running = True
        for i, src in enumerate(self.sources):
            if src.rx is not None:
                src.rx.start()
                loop.add_reader(src.rx.evfd, self._on_wakeup, i)
            else:
                loop.add_reader(src.sock.fileno(), self._on_readable, i)
        self._schedule_timer()

    def stop(self, drain_backlog: bool = True) -> None:
        """Stop receiving. With ``drain_backlog`` the datagrams already queued in the sockets
        are read (bounded: one ring each, 16 with the receive thread) and every ring is flushed
        to the handler."""
        if self.loop is not None and self._running:
            for src in self.sources:
                self.loop.remove_reader(src.rx.evfd if src.rx is not None else src.sock.fileno())
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for i, src in enumerate(self.sources):
            if src.rx is not None:
                if drain_backlog:
                    src.rx.drain_and_stop(functools.partial(self._take, i, None))
                    self._take(i, None)
                src.rx.close()
                src.rx_counters = src.rx.counters()
                src.rx = None
                continue  # the receive thread read the backlog (it may hold coalesced datagrams)
            if drain_backlog:
                while src.ring.recv(src.sock.fileno(), self.cfg.recv_batch) > 0:
                    if src.ring.free == 0:
                        self.flush(i)
            self.flush(i)

    # -- receive ---------------------------------------------------------------------------
    def _on_readable(self, i: int) -> None:
        src = self.sources[i]
        ring, fd, want = src.ring, src.sock.fileno(), self.cfg.recv_batch
        for _ in range(MAX_CALLS_PER_WAKEUP):
            try:
                got = ring.recv(fd, want)
            except OSError as e:
                src.counters.recv_errors += 1
                log.error("recvmmsg failed", extra={"fields": {"listen": src.label, "error": str(e)}})
                got = 0
            if ring.free == 0:
                self.flush(i)
            if got < want:  # socket empty (or a short read): hand over what we have
                if ring.fill:
                    self.flush(i)
                return

    def _on_wakeup(self, i: int) -> None:
        rx = self.sources[i].rx
        if rx is None:  # pragma: no cover - stopped
            return
        rx.clear_wakeup()
        if i not in self._continuing:  # else the scheduled continuation takes it
            self._take(i)

    def _continue(self, i: int) -> None:
        self._continuing.discard(i)
        if self.sources[i].rx is not None and self._running:
            self._take(i)

    def _take(self, i: int, budget: int | None = MAX_BATCHES_PER_WAKEUP) -> None:
        """Hand what the receive thread has queued to the handler, then ask to be woken. At most
        ``budget`` batches per call: under sustained load the rest is taken in a later turn of the
        event loop, so its timers (expiry, metrics, the systemd watchdog) and signals still run."""
        src = self.sources[i]
        rx = src.rx
        assert rx is not None
        batches = 0
        while True:
            first, end = rx.take(self.cfg.ring_slots)
            while end > first:
                if budget is not None and batches >= budget:
                    if self.loop is not None and self._running and i not in self._continuing:
                        self._continuing.add(i)  # one continuation per source, however it was woken
                        self.loop.call_soon(self._continue, i)
                    return
                try:
                    batch = rx.batch(first, end, src.layer, src.port)
                    self._deliver(src, batch, functools.partial(rx.src_ipv6, first, end))
                finally:
                    rx.release(end)
                batches += 1
                first, end = rx.take(self.cfg.ring_slots)
            if not rx.pending(idle=True):
                return

    def _schedule_timer(self) -> None:
        if self.loop is not None and self._running:
            self._timer = self.loop.call_later(self.cfg.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        now = time.monotonic()
        for i, src in enumerate(self.sources):
            if src.rx is not None:
                if src.rx.pending() and i not in self._continuing:  # a missed wakeup costs one interval
                    self._take(i)
            elif src.ring.fill and now - src.ring.first_ts >= self.cfg.flush_interval:
                self.flush(i)
        self._schedule_timer()

    def flush(self, i: int) -> None:
        src = self.sources[i]
        ring = src.ring
        if not ring.fill:
            return
        try:
            self._deliver(src, ring.batch(src.layer, src.port), lambda: np.ascontiguousarray(ring.src_ipv6()))
        finally:
            ring.reset()

    def _deliver(self, src: Source, batch: PacketBatch, src_ipv6: Callable[[], np.ndarray]) -> None:
        """Count a received batch, drop what the allowlist refuses, hand the rest over."""
        c = src.counters
        c.datagrams += batch.count
        c.bytes += int(batch.wirelen.sum(dtype=np.int64))
        c.truncated += int(np.count_nonzero(batch.caplen < batch.wirelen))
        c.batches += 1
        if src.sock.family == socket.AF_INET:
            ok = self.allow.allowed_v4(batch.src_addr)
        else:
            ok = self.allow.allowed_v6(np.ascontiguousarray(src_ipv6()))
        if not ok.all():
            c.dropped_source += int(np.count_nonzero(~ok))
            self._warn_source(src, batch, src_ipv6(), ok)
            batch = batch.select(ok)
        if batch.count:
            self.handler(batch)

    def _warn_source(self, src: Source, batch: PacketBatch, v6: np.ndarray, ok: np.ndarray) -> None:
        """Log a disallowed sender once per address (at most 100 addresses are remembered)."""
        idx = int(np.flatnonzero(~ok)[0])
        if src.sock.family == socket.AF_INET:
            addr = socket.inet_ntop(socket.AF_INET, int(batch.src_addr[idx]).to_bytes(4, "big"))
        else:
            addr = socket.inet_ntop(socket.AF_INET6, bytes(v6[idx]))
        if addr in self._warned_sources or len(self._warned_sources) >= 100:
            return
        self._warned_sources.add(addr)
        log.warning(
            "datagrams from a source outside allow_sources dropped",
            extra={"fields": {"listen": src.label, "source": addr}},
        )

    def threads_alive(self) -> bool | None:
        """Whether every receive thread still runs (None: none in use, or stopped)."""
        threads = [src.rx for src in self.sources if src.rx is not None]
        if not threads or not self._running:
            return None
        return all(rx.running for rx in threads)

    def counters(self) -> dict[str, dict[str, int]]:
        out = {}
        for src in self.sources:
            c = dict(vars(src.counters))
            rx = src.rx.counters() if src.rx is not None else src.rx_counters
            if rx:
                c["ring_full_waits"] = rx["ring_full_waits"]
                c["recv_errors"] += rx["errors"]
            out[src.label] = c
        return out
