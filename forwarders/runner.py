"""The runner every sink sits behind: queue, batching, retry, spool, dead letters, counters.

``RecordForwarder`` wraps a RecordSink; ``PacketForwarder`` wraps a PacketSink.
Each owns one thread and a bounded queue whose ``put`` never blocks the caller.
Records that do not fit in the queue go to the forwarder's disk spool (already
encoded: one file write, no fsync, on the caller's thread); only what does not fit
there either is dropped, counted and reported in a warning at most every few
seconds. Frames that do not fit are dropped and counted. See docs/forwarders.md for
the semantics (what is retried, spooled, dead-lettered and dropped).
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from receiver.flows.record import FlowRecord
from receiver.flows.recordbatch import RecordBatch

from .api import FrameBlock, Health, PacketSink, Pending, RecordSink, SendError
from .settings import RunnerSettings
from .spool import Spool, SpoolEntry, SpoolFull, orphan_directories, worker_directory

log = logging.getLogger("vxmirror.forwarders")

State = Literal["up", "down", "fatal"]
TICK_SECONDS = 1.0
PENDING_WAIT = 0.005  # seconds the sender waits on the oldest batch in flight before looking at the queue again
DROP_WARNING_SECONDS = 5.0  # at most one warning with the drop counts per forwarder this often

Records = RecordBatch | Sequence[FlowRecord]


def as_batch(records: Records) -> RecordBatch:
    """``records`` as a RecordBatch (a list of dicts is encoded once, here)."""
    return records if isinstance(records, RecordBatch) else RecordBatch.from_records(records)


def cut(batch: RecordBatch, lo: int, max_records: int, max_bytes: int) -> int:
    """Where the first sink batch from record ``lo`` ends: at most ``max_records`` records and
    ``max_bytes`` bytes of JSON lines, and at least one record."""
    hi = min(len(batch), lo + max_records)
    start = batch.start(lo)
    if int(batch.ends[hi - 1]) - start > max_bytes:
        hi = max(lo + 1, int(np.searchsorted(batch.ends, start + max_bytes, side="right")))
    return hi


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
    queue, the stop/reopen flags, counters and drops (with their warning), and the thread that
    runs ``_run``."""

    unit = "records"

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
        self._drops_new: dict[str, int] = {}  # since the last drop warning
        self._drops_warned = -math.inf
        self.drop_warning_seconds = DROP_WARNING_SECONDS
        self._detail = ""
        self._rlog = _RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name=f"fwd-{self.name}", daemon=True)
        self._started = False
        self._closed: dict[str, int] | None = None

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

    def _sink_stats(self) -> dict[str, int]:
        """The sink's own counters (files removed by retention, compressed, ...)."""
        try:
            return {k: int(v) for k, v in self.sink.stats().items()}
        except Exception:
            return {}

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

    def _drop_locked(self, reason: str, n: int) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + n
        self._drops_new[reason] = self._drops_new.get(reason, 0) + n

    def _drop(self, reason: str, n: int) -> None:
        with self._lock:
            self._drop_locked(reason, n)

    def _warn_drops(self) -> None:
        """One warning with the drops since the last one, at most every ``drop_warning_seconds``."""
        now = time.monotonic()
        with self._lock:
            if not self._drops_new or now - self._drops_warned < self.drop_warning_seconds:
                return
            new, self._drops_new = self._drops_new, {}
            self._drops_warned = now
            total = sum(self._dropped.values())
        n = sum(new.values())
        log.warning(
            "forwarder %s: %d %s dropped (%s); %d since start",
            self.name,
            n,
            self.unit,
            ", ".join(f"{k} {v}" for k, v in sorted(new.items())),
            total,
            extra={"fields": {"forwarder": self.name, "dropped": n, "dropped_total": total,
                              **{f"dropped_{k}": v for k, v in sorted(new.items())}}},
        )

    def _log_stopped(self, totals: dict[str, int], text: str) -> dict[str, int]:
        """The forwarder's last log line (warning if anything was dropped or lost)."""
        bad = totals.get("dropped", 0) or totals.get("in_flight", 0)
        log.log(logging.WARNING if bad else logging.INFO, "forwarder %s stopped: %s", self.name, text,
                extra={"fields": {"forwarder": self.name, **totals}})
        self._closed = totals
        return totals


class RecordForwarder(_SinkThread):
    """Runs one RecordSink on its own thread (see module doc)."""

    def __init__(
        self, sink: RecordSink, settings: RunnerSettings | None = None, *, start: bool = True
    ) -> None:
        super().__init__(sink, settings, ("received", "sent", "retried", "spooled", "replayed", "dead_lettered"))
        self.sink: RecordSink = sink
        s = self.settings
        data_dir = Path(sink.context.data_dir)
        self._queue: collections.deque[RecordBatch] = collections.deque()
        self._head = 0  # records of the first queued batch already taken
        self._qlen = 0
        self._qbytes = 0
        self._inflight = 0
        # batches handed to ``sink.start`` and not settled yet, oldest first (sinks with max_in_flight > 1)
        self._pending: collections.deque[tuple[RecordBatch, bytes, Pending]] = collections.deque()
        self._window = max(1, int(getattr(sink, "max_in_flight", 1)))
        self._wake = threading.Event()
        self._state: State = "up"
        self._fail_streak = 0
        self._next_probe = 0.0
        ctx = sink.context
        base = data_dir / "spool" / self.name
        self.spool = Spool(worker_directory(base, ctx.worker), s.spool_max_bytes)
        if ctx.worker == 0:  # the spools of workers the service no longer has
            for orphan in orphan_directories(base, ctx.workers):
                n = self.spool.adopt(orphan)
                log.info("forwarder %s: adopted %d spooled records of %s", self.name, n, orphan)
        self.deadletter_path = data_dir / "deadletter" / f"{self.name}.jsonl"
        if len(self.spool):
            log.info("forwarder %s: %d spooled records to replay", self.name, self.spool.records)
        if start:
            self.start()

    # ---- caller side (any thread; never waits for the sink) ----

    def put(self, records: Records) -> int:
        """Queue records (a RecordBatch; a list of dicts is encoded first); what does not fit in
        the queue goes to the spool. Returns how many were queued or spooled; the rest are
        dropped and counted."""
        batch = as_batch(records)
        n = len(batch)
        if n == 0:
            return 0
        with self._lock:
            self._c["received"] += n
            closed = self._stop
            if closed:
                self._drop_locked("closed", n)
                k = 0
            else:
                k = min(n, max(0, self.settings.queue_max - self._qlen))
                if k:
                    self._queue.append(batch.slice(0, k))
                    self._qlen += k
                    self._qbytes += batch.start(k)
                    if self._qlen >= self.settings.batch_max_records:
                        self._cv.notify()
        if k < n and not closed:
            k += self._to_spool(batch, start=k, sync=False, full_reason="queue_full")
        if k < n:
            self._warn_drops()
        return k

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """Flush: send what can be sent within ``timeout``, spool the rest, then close the sink.
        Logs the forwarder's totals (delivered, still spooled, dead-lettered, dropped) and
        returns them."""
        if self._closed is not None:
            return self._closed
        self._begin_close(timeout)
        self._wake.set()
        if self._started:
            self._thread.join(timeout + 5.0)
        stuck = self._thread.is_alive()
        if stuck:
            # The sink is stuck in a call past the deadline: spool what is still queued here.
            log.error("forwarder %s: sender thread stuck in the sink; spooling the queue", self.name)
        if stuck or not self._started:
            self._spool_queue([])
        else:
            try:
                self.sink.close()
            except Exception as e:
                log.error("forwarder %s: closing the sink failed: %s", self.name, e)
        self._safe("spool sync", self.spool.sync)
        c = self.counters()
        totals = {"received": c["received"], "delivered": c["sent"], "replayed": c["replayed"],
                  "spooled": c["spool_records"], "dead_lettered": c["dead_lettered"], "dropped": c["dropped"],
                  **{k: v for k, v in c.items() if k.startswith("dropped_")}}
        if c["in_flight"] or c["queue_depth"]:
            totals["in_flight"] = c["in_flight"] + c["queue_depth"]  # lost with the stuck sink
        text = (f"{totals['delivered']} records delivered ({totals['replayed']} of them from the spool), "
                f"{totals['spooled']} in the spool, {totals['dead_lettered']} dead-lettered, "
                f"{totals['dropped']} dropped")
        if "in_flight" in totals:
            text += f", {totals['in_flight']} lost in the stuck sink"
        return self._log_stopped(totals, text)

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = self._base_counters()
            out["queue_depth"] = self._qlen
            out["queue_bytes"] = self._qbytes
            out["in_flight"] = self._inflight
        out["spool_records"] = self.spool.records
        out["spool_bytes"] = self.spool.bytes
        out["healthy"] = int(self._state == "up")
        out.update(self._sink_stats())
        return out

    def health(self) -> Health:
        if self._state == "up":
            return Health(True, "spool replaying" if len(self.spool) else "")
        return Health(False, f"{self._state}: {self._detail}")

    # ---- sender thread ----

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._c[key] += n

    def _take(self, limit: int) -> list[RecordBatch]:
        """Pop up to ``limit`` queued records (lock held); they are in flight from here."""
        out: list[RecordBatch] = []
        got = 0
        while self._queue and got < limit:
            head = self._queue[0]
            hi = min(len(head), self._head + limit - got)
            part = head.slice(self._head, hi)
            if hi == len(head):
                self._queue.popleft()
                self._head = 0
            else:
                self._head = hi
            out.append(part)
            got += len(part)
            self._qbytes -= len(part.data)
        self._qlen -= got
        self._inflight += got
        return out

    def _run(self) -> None:
        s = self.settings
        pend: list[RecordBatch] = []  # taken from the queue, not yet handed to the sink
        npend = bpend = 0
        first = 0.0
        next_tick = time.monotonic() + TICK_SECONDS
        while True:
            now = time.monotonic()
            idle = 0.0  # seconds to wait on the oldest batch in flight (instead of the condition)
            with self._lock:
                if not self._queue and not self._stop and not self._reopen:
                    due = next_tick
                    if pend:
                        due = min(due, first + s.batch_interval)
                    if len(self.spool) and self._state == "up":
                        due = now  # replay backlog
                    elif len(self.spool):
                        due = min(due, self._next_probe)
                    if self._pending:
                        idle = max(0.0, min(due - now, PENDING_WAIT))
                    elif due > now:
                        self._cv.wait(due - now)
                stopping = self._stop
                reopen, self._reopen = self._reopen, False
                got = self._take(s.batch_max_records - npend) if self._queue else []
                queue_empty = not self._queue
            if self._pending:
                self._settle_pending(wait=0.0 if got else idle)
            now = time.monotonic()
            if reopen:
                self._safe("reopen", self.sink.reopen)
            if got:
                if not pend:
                    first = now
                pend += got
                npend += sum(len(b) for b in got)
                bpend += sum(len(b.data) for b in got)
            full = npend >= s.batch_max_records or bpend >= s.batch_max_bytes
            if pend and (full or now - first >= s.batch_interval or stopping):
                batch = RecordBatch.concat(pend)
                k = cut(batch, 0, s.batch_max_records, s.batch_max_bytes)
                rest = batch.slice(k, len(batch))
                pend, npend, bpend = ([rest], len(rest), len(rest.data)) if rest else ([], 0, 0)
                first = now  # the remainder starts the next batch
                self._deliver(batch.slice(0, k))
            if not stopping:
                if now >= next_tick:
                    next_tick = now + TICK_SECONDS
                    self._safe("tick", lambda: self.sink.tick(time.time()))
                    self._safe("spool sync", self.spool.sync)
                    self._warn_drops()
                if len(self.spool) and self._qlen < s.queue_max // 2:
                    self._service_spool()
            elif self._past_deadline():
                self._spool_queue(pend)  # what is left, at once
                self._settle_pending(room=0)  # batches in flight: settled by the sink (its own timeouts)
                break
            elif queue_empty and not pend:
                self._settle_pending(room=0)
                if not (len(self.spool) and self._state == "up"):
                    break
                self._service_spool()  # replay while the close timeout lasts

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
        self, batch: RecordBatch, retries: int, payload: bytes | None = None, failed: SendError | None = None
    ) -> tuple[str, RecordBatch, str]:
        """Try to send; returns (outcome, the unsent records, reason). ``failed``: the first try
        was made already (a batch that was in flight) and failed so (``payload``: what it sent).

        outcome: "sent", "dead" (non-retryable), "retry_exhausted", "fatal".
        """
        s = self.settings
        attempt = 0
        while True:
            if failed is not None:
                err, failed = failed, None
            else:
                try:
                    if payload is None:
                        payload = self.sink.encode(batch)
                    self.sink.send(payload, len(batch))
                    self._count("sent", len(batch))
                    return "sent", RecordBatch.empty(), ""
                except SendError as e:
                    err = e
                except Exception as e:  # a sink bug must not lose data: treat as retryable
                    err = SendError(f"{type(e).__name__}: {e}", retryable=True)
            acc = max(0, min(err.accepted, len(batch)))
            if acc:
                self._count("sent", acc)
                batch, payload = batch.slice(acc, len(batch)), None
            if err.fatal_for_sink:
                return "fatal", batch, err.reason
            rej = max(0, min(err.rejected, len(batch)))
            if rej and not err.retryable:
                self._dead_letter(batch.slice(0, rej), err.reason)
                batch, payload = batch.slice(rej, len(batch)), None
                if not batch:
                    return "sent", batch, ""
                continue  # the rest of the batch goes again (the refused records are out of it)
            if not err.retryable:
                return "dead", batch, err.reason
            attempt += 1
            if attempt > retries or self._past_deadline():
                return "retry_exhausted", batch, err.reason
            self._count("retried", len(batch))
            self._rlog(
                "retry",
                logging.WARNING,
                "forwarder %s: send failed (%s); retry %d",
                self.name,
                err.reason,
                attempt,
            )
            self._sleep(backoff_delay(attempt, s.retry_backoff_min, s.retry_backoff_max))

    def _deliver(self, batch: RecordBatch) -> None:
        if self._window > 1:
            self._settle_pending(room=self._window - 1)  # at most max_in_flight batches in flight
        n = len(batch)
        handed = False
        try:
            if self._past_deadline():
                self._to_spool(batch, sync=False)
                return
            retries = self.settings.max_retries
            if self._state != "up":
                # Down: spool; with nothing spooled (spool disabled or full) this batch is the probe.
                if len(self.spool) or not self._probe_due():
                    self._to_spool(batch)
                    return
                retries = 0
            elif len(self.spool):
                retries = 0  # a backlog exists: do not stall the queue behind retries
            elif self._window > 1:
                handed = self._launch(batch)
                return
            self._outcome(*self._attempt(batch, retries))
        finally:
            if not handed:
                self._finish_inflight(n)

    def _outcome(self, outcome: str, rest: RecordBatch, reason: str) -> None:
        if outcome == "sent":
            self._recovered()
        elif outcome == "dead":
            self._dead_letter(rest, reason)
        elif outcome == "fatal":
            self._go_fatal(reason)
            self._to_spool(rest)
        else:
            self._go_down(reason)
            self._to_spool(rest)

    def _launch(self, batch: RecordBatch) -> bool:
        """Hand ``batch`` to ``sink.start`` (the sink is up); True if it is now in flight. A batch
        that fails at once goes the way of a failed ``send`` (retries, spool, dead letters)."""
        payload: bytes | None = None
        try:
            payload = self.sink.encode(batch)
            self._pending.append((batch, payload, self.sink.start(payload, len(batch))))
            return True
        except SendError as e:
            err = e
        except Exception as e:  # a sink bug must not lose data: treat as retryable
            err = SendError(f"{type(e).__name__}: {e}", retryable=True)
        self._outcome(*self._attempt(batch, self.settings.max_retries, payload, err))
        return False

    def _settle_pending(self, *, wait: float = 0.0, room: int | None = None) -> None:
        """Settle the batches in flight that are done, oldest first: delivered ones count as sent; a
        failed one is retried, spooled or dead-lettered as a batch that failed in ``send`` (and a
        sink already down since an earlier one failed just spools it). ``wait``: seconds to wait
        for the oldest; ``room``: wait until at most that many are left in flight."""
        while self._pending:
            batch, payload, pending = self._pending[0]
            must = room is not None and len(self._pending) > room
            err: SendError | None = None
            try:
                done = pending.wait(PENDING_WAIT * 10 if must else wait)
            except SendError as e:
                err, done = e, True
            except Exception as e:  # a sink bug must not lose data: treat as retryable
                err, done = SendError(f"{type(e).__name__}: {e}", retryable=True), True
            if not done:
                if must:
                    continue
                return
            self._pending.popleft()
            wait = 0.0
            try:
                if err is None:
                    self._count("sent", len(batch))
                    self._recovered()
                elif self._state != "up" and err.retryable:
                    # down already (an earlier batch in flight failed): what was not accepted is
                    # spooled, as a batch that comes while the sink is down
                    acc = max(0, min(err.accepted, len(batch)))
                    if acc:
                        self._count("sent", acc)
                    self._to_spool(batch.slice(acc, len(batch)))
                else:
                    retries = 0 if len(self.spool) else self.settings.max_retries
                    self._outcome(*self._attempt(batch, retries, payload, err))
            finally:
                self._finish_inflight(len(batch))

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

    def _to_spool(
        self, batch: RecordBatch, *, start: int = 0, sync: bool = True, full_reason: str = "spool_full"
    ) -> int:
        """Write ``batch`` (from record ``start`` on, without copying it) to the spool in files of at
        most one sink batch each; returns how many records were spooled (the rest are dropped:
        ``full_reason`` past the spool bound)."""
        s = self.settings
        n, lo = len(batch), start
        view = memoryview(batch.data)
        try:
            while lo < n:
                hi = cut(batch, lo, s.batch_max_records, s.batch_max_bytes)
                self.spool.push(view[batch.start(lo) : int(batch.ends[hi - 1])], hi - lo, sync=sync)
                self._count("spooled", hi - lo)
                lo = hi
        except SpoolFull:
            self._drop(full_reason, n - lo)
        except OSError as e:
            self._drop("spool_error", n - lo)
            self._rlog("spoolerr", logging.ERROR, "forwarder %s: cannot spool %d records: %s", self.name, n - lo, e)
        return lo - start

    def _spool_queue(self, pend: list[RecordBatch]) -> None:
        """Spool ``pend`` (records in flight) and everything queued, without waiting for the disk."""
        with self._lock:
            items = self._take(self._qlen)
        for b in pend + items:
            self._to_spool(b, sync=False)
            self._finish_inflight(len(b))

    def _dead_letter(self, batch: RecordBatch, reason: str) -> None:
        if not batch:
            return
        n = len(batch)
        head = orjson.dumps({"time": time.time(), "forwarder": self.name, "reason": reason, "count": n})
        # the same line as orjson.dumps({..., "records": records}): each line is orjson.dumps(record)
        line = head[:-1] + b',"records":[' + b",".join(batch.lines()) + b"]}\n"
        try:
            self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.deadletter_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._count("dead_lettered", n)
            self._rlog(
                "dead",
                logging.WARNING,
                "forwarder %s: %d records dead-lettered: %s",
                self.name,
                n,
                reason,
            )
        except OSError as e:
            self._drop("deadletter_error", n)
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
            batch, bad = self.spool.load(entry)
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
        self._replay(entry, batch)

    def _replay(self, entry: SpoolEntry, batch: RecordBatch) -> None:
        if not batch:  # nothing readable in it
            self.spool.remove(entry)
            return
        retries = self.settings.max_retries if self._state == "up" else 0
        outcome, rest, reason = self._attempt(batch, retries)
        done = len(batch) - len(rest)
        if done:
            self._count("replayed", done)
        if outcome in ("sent", "dead"):
            if outcome == "dead":
                self._dead_letter(rest, reason)
            self.spool.remove(entry)
            self._recovered()
            return
        if done:
            self.spool.replace(entry, rest)
        if outcome == "fatal":
            self._go_fatal(reason)
        else:
            self._go_down(reason)


class PacketForwarder(_SinkThread):
    """Runs one PacketSink on its own thread behind a bounded queue of FrameBlocks."""

    unit = "frames"

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
            self._drop_locked(reason, n)
        self._warn_drops()

    def put(self, block: FrameBlock, planned: bool = False) -> bool:
        """Queue a block (never blocks). ``planned``: the engine planned its frames into files
        after ``has_room`` said yes, so the queue's bounds do not refuse it (they may be exceeded
        by one batch); a close mark (no frames) is queued too."""
        n = block.count
        if n == 0 and not block.close_file:
            return True
        size = len(block.data)
        with self._lock:
            self._c["received"] += n
            s = self.settings
            if self._stop:
                reason = "closed"
            elif not planned and (self._qframes + n > s.queue_max or self._qbytes + size > s.queue_max_bytes):
                reason = "queue_full"
            else:
                self._queue.append(block)
                self._qframes += n
                self._qbytes += size
                self._cv.notify()
                return True
            self._drop_locked(reason, n)
        self._warn_drops()
        return False

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """Write what is queued within ``timeout``, close the sink; logs and returns the totals."""
        if self._closed is not None:
            return self._closed
        self._begin_close(timeout)
        if self._started:
            self._thread.join(timeout + 5.0)
            if self._thread.is_alive():
                log.error("forwarder %s: writer thread stuck past the close timeout", self.name)
        else:
            self._close_sink()
        c = self.counters()
        totals = {"received": c["received"], "written": c["sent"], "dropped": c["dropped"],
                  **{k: v for k, v in c.items() if k.startswith("dropped_")}}
        return self._log_stopped(totals, f"{c['sent']} frames written, {c['dropped']} dropped")

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = self._base_counters()
            out["queue_depth"] = self._qframes
            out["queue_bytes"] = self._qbytes
        out["healthy"] = int(self._ok)
        out.update(self._sink_stats())
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
                self._warn_drops()
            if stopping and block is None:
                break
        self._close_sink()

    def drop_counted(self, reason: str, n: int) -> None:
        self._drop(reason, n)

    def _write(self, block: FrameBlock) -> None:
        try:
            self.sink.write(block)
        except Exception as e:
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            self.drop_counted("disk_full" if full else "write_error", block.count)
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
