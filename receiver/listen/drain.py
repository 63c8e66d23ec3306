"""The socket drain of one worker: event-loop reader callbacks, rings, batches, the allowlist.

For each socket the worker owns, the loop's reader callback calls ``recvmmsg`` into that
socket's ring until the socket is empty or the ring is full (bounded per callback so one
busy socket cannot starve the loop). The ring goes to ``handler`` as one PacketBatch when
it is full, when the socket is empty, or ``flush_interval`` after its oldest datagram.
Datagrams from senders outside the allowlist are removed from the batch and counted.
``handler`` runs synchronously: the ring is reused as soon as it returns.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..packets import Layer, PacketBatch
from .allowlist import SourceFilter
from .mmsg import RecvRing
from .settings import ListenConfig

log = logging.getLogger("vxmirror.listen")

MAX_CALLS_PER_WAKEUP = 64


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


class Drain:
    """Receives on ``sockets`` and hands batches to ``handler(batch)``."""

    def __init__(
        self,
        cfg: ListenConfig,
        sockets: list[tuple[socket.socket, Layer, str]],
        handler: Callable[[PacketBatch], None],
        allow: SourceFilter | None = None,
    ) -> None:
        self.cfg = cfg
        self.handler = handler
        self.allow = allow if allow is not None else SourceFilter(cfg.allow_sources)
        self.sources: list[Source] = []
        for sock, layer, label in sockets:
            ring = RecvRing(cfg.ring_slots, cfg.slot_size, sock.family)
            port = int(sock.getsockname()[1])
            self.sources.append(Source(sock, layer, label, ring, port=port))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self._warned_sources: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._running = True
        for i, src in enumerate(self.sources):
            loop.add_reader(src.sock.fileno(), self._on_readable, i)
        self._schedule_timer()

    def stop(self, drain_backlog: bool = True) -> None:
        """Stop receiving. With ``drain_backlog`` the datagrams already queued in the sockets
        are read (bounded to one ring each) and every ring is flushed to the handler."""
        if self.loop is not None and self._running:
            for src in self.sources:
                self.loop.remove_reader(src.sock.fileno())
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for i, src in enumerate(self.sources):
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

    def _schedule_timer(self) -> None:
        if self.loop is not None and self._running:
            self._timer = self.loop.call_later(self.cfg.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        now = time.monotonic()
        for i, src in enumerate(self.sources):
            if src.ring.fill and now - src.ring.first_ts >= self.cfg.flush_interval:
                self.flush(i)
        self._schedule_timer()

    def flush(self, i: int) -> None:
        src = self.sources[i]
        ring = src.ring
        if not ring.fill:
            return
        try:
            batch = ring.batch(src.layer, src.port)
            c = src.counters
            c.datagrams += batch.count
            c.bytes += int(batch.wirelen.sum(dtype=np.int64))
            c.truncated += int(np.count_nonzero(batch.caplen < batch.wirelen))
            c.batches += 1
            if ring.family == socket.AF_INET:
                ok = self.allow.allowed_v4(batch.src_addr)
            else:
                ok = self.allow.allowed_v6(np.ascontiguousarray(ring.src_ipv6()))
            if not ok.all():
                bad = int(np.count_nonzero(~ok))
                c.dropped_source += bad
                self._warn_source(src, ring, ok)
                batch = batch.select(ok)
            if batch.count:
                self.handler(batch)
        finally:
            ring.reset()

    def _warn_source(self, src: Source, ring: RecvRing, ok: np.ndarray) -> None:
        """Log a disallowed sender once per address (at most 100 addresses are remembered)."""
        idx = int(np.flatnonzero(~ok)[0])
        if ring.family == socket.AF_INET:
            addr = socket.inet_ntop(socket.AF_INET, ring.names[idx, 4:8].tobytes())
        else:
            addr = socket.inet_ntop(socket.AF_INET6, ring.names[idx, 8:24].tobytes())
        if addr in self._warned_sources or len(self._warned_sources) >= 100:
            return
        self._warned_sources.add(addr)
        log.warning(
            "datagrams from a source outside allow_sources dropped",
            extra={"fields": {"listen": src.label, "source": addr}},
        )

    def counters(self) -> dict[str, dict[str, int]]:
        return {src.label: dict(vars(src.counters)) for src in self.sources}
