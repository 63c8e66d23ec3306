"""The runner every sink sits behind: queue, batching, retry, spool, dead letters, counters.

``RecordForwarder`` wraps a RecordSink; ``PacketForwarder`` wraps a PacketSink.
Each owns one thread and a bounded queue whose ``put`` never blocks the caller:
what does not fit is dropped and counted. See docs/forwarders.md for the
semantics (what is retried, spooled, dead-lettered and dropped).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson

from receiver.flows.record import FlowRecord

from .api import FrameBlock, Health, PacketSink, RecordSink, SendError
from .settings import RunnerSettings
from .spool import Spool, SpoolFull

log = logging.getLogger("vxmirror.forwarders")

State = Literal["up", "down", "fatal"]
TICK_SECONDS = 1.0


class _RateLimitedLog:
    """At most one message per key per ``interval`` seconds; suppressed ones are counted."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if n:
            msg += f" ({n} similar messages suppressed)"
        log.log(level, msg, *args)


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(hi, lo * 2**(attempt-1)))."""
    ceiling = min(hi, lo * (2.0 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


class _SinkThread:
    """What both forwarders share: the sink, its settings, the lock and condition guarding the
    queue, the stop/reopen flags, counters, and the thread that runs ``_run``."""

    def __init__(
        self, sink: RecordSink | PacketSink, settings: RunnerSettings | None, counters: tuple[str, ...]
    ) -> None:
        self.sink = sink
        self.settings = settings or RunnerSettings()
        self.name = sink.context.name
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = False
        self._deadline = math.inf
        self._reopen = False
        self._c: dict[str, int] = dict.fromkeys(counters, 0)
        self._dropped: dict[str, int] = {}
        self._detail = ""
        self._rlog = _RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name=f"fwd-{self.name}", daemon=True)
        self._started = False

    def _run(self) -> None:  # pragma: no cover - each forwarder has its own
        raise NotImplementedError

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def request_reopen(self) -> None:
        with self._lock:
            self._reopen = True
            self._cv.notify()

    def _base_counters(self) -> dict[str, int]:
        """Counters plus drops by reason and in total (call with the lock held)."""
        out = dict(self._c)
        for reason, n in self._dropped.items():
            out[f"dropped_{reason}"] = n
        out["dropped"] = sum(self._dropped.values())
        return out

    def _begin_close(self, timeout: float) -> None:
        with self._lock:
            self._stop = True
            self._deadline = time.monotonic() + timeout
            self._cv.notify()


class RecordForwarder(_SinkThread):
    """Runs one RecordSink on its own thread (see module doc)."""

    def __init__(
        self, sink: RecordSink, settings: RunnerSettings | None = None, *, start: bool = True
    ) -> None:
        super().__init__(sink, settings, ("received", "sent", "retried", "spooled", "replayed", "dead_lettered"))
        self.sink: RecordSink = sink
        s = self.settings
        data_dir = Path(sink.context.data_dir)
        self._queue: collections.deque[list[FlowRecord]] = collections.deque()
        self._qlen = 0
        self._inflight = 0
        self._wake = threading.Event()
        self._state: State = "up"
        self._fail_streak = 0
        self._next_probe = 0.0
        self._rlog = _RateLimitedLog()
        self.spool = Spool(data_dir / "spool" / self.name, s.spool_max_bytes)
        self.deadletter_path = data_dir / "deadletter" / f"{self.name}.jsonl"
        if len(self.spool):
            log.info("forwarder %s: %d spooled records to replay", self.name, self.spool.records)
        if start:
            self.start()

    # ---- caller side (any thread; never blocks on the sink) ----

    def put(self, records: list[FlowRecord]) -> int:
        """Queue records; returns how many were accepted (the rest are dropped and counted)."""
        n = len(records)
        if n == 0:
            return 0
        with self._lock:
            self._c["received"] += n
            if self._stop:
                self._drop_locked("closed", n)
                return 0
            room = self.settings.queue_max - self._qlen
            if room < n:
                self._drop_locked("queue_full", n - max(room, 0))
                if room <= 0:
                    return 0
                records = records[:room]
                n = room
            self._queue.append(records)
            self._qlen += n
            if self._qlen >= self.settings.batch_max_records:
                self._cv.notify()
        return n

    def close(self, timeout: float = 10.0) -> None:
        """Flush: send what can be sent within ``timeout``, spool the rest, then close the sink."""
        self._begin_close(timeout)
        self._wake.set()
        if self._started:
            self._thread.join(timeout + 5.0)
        if self._thread.is_alive():
            # The sink is stuck in a call past the deadline: spool what is still queued here.
            log.error("forwarder %s: sender thread stuck in the sink; spooling the queue", self.name)
            with self._lock:
                items = list(self._queue)
                self._queue.clear()
                self._qlen = 0
            for recs in items:
                self._to_spool(recs, [orjson.dumps(r) for r in recs], "shutdown")
            return
        if not self._started:
            self._drain_unstarted()
        try:
            self.sink.close()
        except Exception as e:
            log.error("forwarder %s: closing the sink failed: %s", self.name, e)

    def _drain_unstarted(self) -> None:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._qlen = 0
        for recs in items:
            self._to_spool(recs, [orjson.dumps(r) for r in recs], "shutdown")

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = self._base_counters()
            out["queue_depth"] = self._qlen
            out["in_flight"] = self._inflight
        out["spool_records"] = self.spool.records
        out["spool_bytes"] = self.spool.bytes
        out["healthy"] = int(self._state == "up")
        return out

    def health(self) -> Health:
        if self._state == "up":
            return Health(True, "spool replaying" if len(self.spool) else "")
        return Health(False, f"{self._state}: {self._detail}")

    # ---- sender thread ----

    def _drop_locked(self, reason: str, n: int) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + n

    def _drop(self, reason: str, n: int) -> None:
        with self._lock:
            self._drop_locked(reason, n)

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._c[key] += n

    def _take(self, limit: int) -> list[FlowRecord]:
        """Pop up to ``limit`` queued records (lock held)."""
        out: list[FlowRecord] = []
        while self._queue and len(out) < limit:
            head = self._queue[0]
            need = limit - len(out)
            if len(head) <= need:
                out.extend(self._queue.popleft())
            else:
                out.extend(head[:need])
                self._queue[0] = head[need:]
        self._qlen -= len(out)
        self._inflight += len(out)
        return out

    def _run(self) -> None:
        s = self.settings
        recs: list[FlowRecord] = []
        lines: list[bytes] = []
        nbytes = 0
        first = 0.0
        next_tick = time.monotonic() + TICK_SECONDS
        while True:
            now = time.monotonic()
            with self._lock:
                if not self._queue and not self._stop and not self._reopen:
                    due = next_tick
                    if recs:
                        due = min(due, first + s.batch_interval)
                    if len(self.spool) and self._state == "up":
                        due = now  # replay backlog
                    elif len(self.spool):
                        due = min(due, self._next_probe)
                    if due > now:
                        self._cv.wait(due - now)
                stopping = self._stop
                reopen, self._reopen = self._reopen, False
                got = self._take(s.batch_max_records - len(recs)) if self._queue else []
                queue_empty = not self._queue
            now = time.monotonic()
            if reopen:
                self._safe("reopen", self.sink.reopen)
            if got:
                if not recs:
                    first = now
                for r in got:
                    line = orjson.dumps(r)
                    lines.append(line)
                    nbytes += len(line) + 1
                recs.extend(got)
            full = len(recs) >= s.batch_max_records or nbytes >= s.batch_max_bytes
            if recs and (full or now - first >= s.batch_interval or stopping):
                if nbytes > s.batch_max_bytes and len(recs) > 1:
                    # cut at the byte bound; the remainder starts the next batch
                    acc, k = 0, 0
                    while k < len(lines) and acc + len(lines[k]) + 1 <= s.batch_max_bytes:
                        acc += len(lines[k]) + 1
                        k += 1
                    k = max(k, 1)
                    self._deliver(recs[:k], lines[:k])
                    recs, lines = recs[k:], lines[k:]
                    nbytes = sum(len(x) + 1 for x in lines)
                    first = now
                else:
                    self._deliver(recs, lines)
                    recs, lines, nbytes = [], [], 0
            if not stopping:
                if now >= next_tick:
                    next_tick = now + TICK_SECONDS
                    self._safe("tick", lambda: self.sink.tick(time.time()))
                if len(self.spool) and self._qlen < s.queue_max // 2:
                    self._service_spool()
            elif queue_empty and not recs:
                break

    def _safe(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            self._rlog(what, logging.ERROR, "forwarder %s: %s failed: %s", self.name, what, e)

    def _finish_inflight(self, n: int) -> None:
        with self._lock:
            self._inflight -= n

    def _sleep(self, delay: float) -> None:
        end = time.monotonic() + delay
        while True:
            remaining = min(end, self._deadline) - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self._deadline

    def _attempt(
        self, recs: list[FlowRecord], lines: list[bytes], retries: int
    ) -> tuple[str, list[FlowRecord], list[bytes], str]:
        """Try to send; returns (outcome, unsent records, their lines, reason).

        outcome: "sent", "dead" (non-retryable), "retry_exhausted", "fatal".
        """
        s = self.settings
        attempt = 0
        payload: bytes | None = None
        while True:
            try:
                if payload is None:
                    payload = self.sink.encode(recs)
                self.sink.send(payload, len(recs))
                self._count("sent", len(recs))
                return "sent", [], [], ""
            except SendError as e:
                err = e
            except Exception as e:  # a sink bug must not lose data: treat as retryable
                err = SendError(f"{type(e).__name__}: {e}", retryable=True)
            acc = max(0, min(err.accepted, len(recs)))
            if acc:
                self._count("sent", acc)
                recs, lines, payload = recs[acc:], lines[acc:], None
            if err.fatal_for_sink:
                return "fatal", recs, lines, err.reason
            rej = max(0, min(err.rejected, len(recs)))
            if rej and not err.retryable:
                self._dead_letter(recs[:rej], err.reason)
                recs, lines, payload = recs[rej:], lines[rej:], None
                if not recs:
                    return "sent", [], [], ""
                continue  # the rest of the batch goes again (the refused records are out of it)
            if not err.retryable:
                return "dead", recs, lines, err.reason
            attempt += 1
            if attempt > retries or self._past_deadline():
                return "retry_exhausted", recs, lines, err.reason
            self._count("retried", len(recs))
            self._rlog(
                "retry",
                logging.WARNING,
                "forwarder %s: send failed (%s); retry %d",
                self.name,
                err.reason,
                attempt,
            )
            self._sleep(backoff_delay(attempt, s.retry_backoff_min, s.retry_backoff_max))

    def _deliver(self, recs: list[FlowRecord], lines: list[bytes]) -> None:
        n = len(recs)
        try:
            if self._past_deadline():
                self._to_spool(recs, lines, "shutdown")
                return
            retries = self.settings.max_retries
            if self._state != "up":
                # Down: spool; with nothing spooled (spool disabled or full) this batch is the probe.
                if len(self.spool) or not self._probe_due():
                    self._to_spool(recs, lines, self._detail)
                    return
                retries = 0
            elif len(self.spool):
                retries = 0  # a backlog exists: do not stall the queue behind retries
            outcome, rest, rest_lines, reason = self._attempt(recs, lines, retries)
            if outcome == "sent":
                self._recovered()
            elif outcome == "dead":
                self._dead_letter(rest, reason)
            elif outcome == "fatal":
                self._go_fatal(reason)
                self._to_spool(rest, rest_lines, reason)
            else:
                self._go_down(reason)
                self._to_spool(rest, rest_lines, reason)
        finally:
            self._finish_inflight(n)

    def _go_down(self, reason: str) -> None:
        s = self.settings
        self._fail_streak += 1
        if self._state == "up":
            log.warning("forwarder %s: sink unreachable (%s); spooling until it recovers", self.name, reason)
        self._state = "down"
        self._detail = reason
        self._next_probe = time.monotonic() + backoff_delay(
            self._fail_streak + 1, max(s.retry_backoff_min, 0.01), max(s.retry_backoff_max, 0.01)
        )

    def _go_fatal(self, reason: str) -> None:
        if self._state != "fatal":
            log.error(
                "forwarder %s: sink rejected us (%s); spooling, probing every %.0fs",
                self.name,
                reason,
                self.settings.probe_interval,
            )
        self._state = "fatal"
        self._detail = reason
        self._next_probe = time.monotonic() + self.settings.probe_interval

    def _to_spool(self, recs: list[FlowRecord], lines: list[bytes], reason: str) -> None:
        if not recs:
            return
        try:
            self.spool.push(lines)
            self._count("spooled", len(recs))
        except SpoolFull as e:
            self._drop("spool_full", len(recs))
            self._rlog(
                "spoolfull",
                logging.ERROR,
                "forwarder %s: dropping %d records: %s (%s)",
                self.name,
                len(recs),
                e,
                reason,
            )
        except OSError as e:
            self._drop("spool_error", len(recs))
            self._rlog(
                "spoolerr",
                logging.ERROR,
                "forwarder %s: cannot spool %d records: %s",
                self.name,
                len(recs),
                e,
            )

    def _dead_letter(self, recs: list[FlowRecord], reason: str) -> None:
        if not recs:
            return
        line = orjson.dumps(
            {
                "time": time.time(),
                "forwarder": self.name,
                "reason": reason,
                "count": len(recs),
                "records": recs,
            }
        )
        try:
            self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.deadletter_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line + b"\n")
            finally:
                os.close(fd)
            self._count("dead_lettered", len(recs))
            self._rlog(
                "dead",
                logging.WARNING,
                "forwarder %s: %d records dead-lettered: %s",
                self.name,
                len(recs),
                reason,
            )
        except OSError as e:
            self._drop("deadletter_error", len(recs))
            self._rlog("deaderr", logging.ERROR, "forwarder %s: cannot write dead letters: %s", self.name, e)

    def _probe_due(self) -> bool:
        """Whether a down/fatal sink may be tried now (fatal: only once its health check passes)."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        if self._state == "fatal":
            try:
                h = self.sink.health_check()
            except Exception as e:
                h = Health(False, str(e))
            if not h.ok:
                self._next_probe = now + self.settings.probe_interval
                return False
        return True

    def _recovered(self) -> None:
        if self._state != "up":
            log.info(
                "forwarder %s: sink is back (%d spooled records to replay)", self.name, self.spool.records
            )
        self._state = "up"
        self._detail = ""
        self._fail_streak = 0

    def _service_spool(self) -> None:
        """Replay the oldest spooled batch (when up), or probe a down/fatal sink."""
        if self._state != "up" and not self._probe_due():
            return
        entry = self.spool.oldest()
        if entry is None:
            return
        try:
            recs, lines, bad = self.spool.load(entry)
        except OSError as e:
            self._rlog(
                "spoolread",
                logging.ERROR,
                "forwarder %s: unreadable spool file %s: %s",
                self.name,
                entry.path,
                e,
            )
            self.spool.remove(entry)
            self._drop("spool_unreadable", entry.count)
            return
        if bad:
            self._drop("spool_corrupt", bad)
        retries = self.settings.max_retries if self._state == "up" else 0
        outcome, rest, rest_lines, reason = self._attempt(recs, lines, retries)
        done = len(recs) - len(rest)
        if outcome in ("sent", "dead"):
            if outcome == "dead":
                self._dead_letter(rest, reason)
            self.spool.remove(entry)
            if done:
                self._count("replayed", done)
            self._recovered()
            return
        if done:
            self._count("replayed", done)
            self.spool.replace(entry, rest_lines)
        if outcome == "fatal":
            self._go_fatal(reason)
        else:
            self._go_down(reason)


class PacketForwarder(_SinkThread):
    """Runs one PacketSink on its own thread behind a bounded queue of FrameBlocks."""

    def __init__(
        self, sink: PacketSink, settings: RunnerSettings | None = None, *, start: bool = True
    ) -> None:
        super().__init__(sink, settings, ("received", "sent", "skipped_not_decapsulated"))
        self.sink: PacketSink = sink
        self._queue: collections.deque[FrameBlock] = collections.deque()
        self._qframes = 0
        self._qbytes = 0
        self._ok = True
        if start:
            self.start()

    def has_room(self) -> bool:
        return not self._stop and self._qframes < self.settings.queue_max

    def count_skipped(self, n: int) -> None:
        if n:
            with self._lock:
                self._c["skipped_not_decapsulated"] += n

    def drop(self, reason: str, n: int) -> None:
        with self._lock:
            self._c["received"] += n
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def put(self, block: FrameBlock) -> bool:
        n = block.count
        if n == 0:
            return True
        size = len(block.data)
        with self._lock:
            self._c["received"] += n
            s = self.settings
            if self._stop:
                reason = "closed"
            elif self._qframes + n > s.queue_max or self._qbytes + size > s.queue_max_bytes:
                reason = "queue_full"
            else:
                self._queue.append(block)
                self._qframes += n
                self._qbytes += size
                self._cv.notify()
                return True
            self._dropped[reason] = self._dropped.get(reason, 0) + n
        return False

    def close(self, timeout: float = 10.0) -> None:
        self._begin_close(timeout)
        if self._started:
            self._thread.join(timeout + 5.0)
            if self._thread.is_alive():
                log.error("forwarder %s: writer thread stuck past the close timeout", self.name)
        else:
            self._close_sink()

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = self._base_counters()
            out["queue_depth"] = self._qframes
            out["queue_bytes"] = self._qbytes
        out["healthy"] = int(self._ok)
        return out

    def health(self) -> Health:
        if not self._ok:
            return Health(False, self._detail)
        try:
            return self.sink.health_check()
        except Exception as e:
            return Health(False, str(e))

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK_SECONDS
        while True:
            with self._lock:
                now = time.monotonic()
                if not self._queue and not self._stop and not self._reopen and next_tick > now:
                    self._cv.wait(next_tick - now)
                block = self._queue.popleft() if self._queue else None
                if block is not None:
                    self._qframes -= block.count
                    self._qbytes -= len(block.data)
                reopen, self._reopen = self._reopen, False
                stopping = self._stop
            if reopen:
                self._call("reopen", self.sink.reopen)
            if block is not None:
                if stopping and time.monotonic() >= self._deadline:
                    self.drop_counted("shutdown_timeout", block.count)
                else:
                    self._write(block)
            now = time.monotonic()
            if now >= next_tick and not stopping:
                next_tick = now + TICK_SECONDS
                self._call("tick", lambda: self.sink.tick(time.time()))
            if stopping and block is None:
                break
        self._close_sink()

    def drop_counted(self, reason: str, n: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def _write(self, block: FrameBlock) -> None:
        try:
            self.sink.write(block)
        except Exception as e:
            self.drop_counted("write_error", block.count)
            self._ok = False
            self._detail = f"write failed: {e}"
            self._rlog(
                "write",
                logging.ERROR,
                "forwarder %s: write failed, %d frames dropped: %s",
                self.name,
                block.count,
                e,
            )
            return
        self._ok = True
        self._detail = ""
        with self._lock:
            self._c["sent"] += block.count

    def _call(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            self._ok = False
            self._detail = f"{what} failed: {e}"
            self._rlog(what, logging.ERROR, "forwarder %s: %s failed: %s", self.name, what, e)

    def _close_sink(self) -> None:
        try:
            self.sink.close()
        except Exception as e:
            log.error("forwarder %s: close failed: %s", self.name, e)
