"""The live service: a supervisor process and N worker processes (``vxmirror serve``).

Supervisor: binds every listen address once per worker (one SO_REUSEPORT group per address,
sockets joined in worker order so the steering program's index is the worker number), forks
the workers, then runs a uvloop event loop that serves /metrics and /healthz, aggregates the
workers' counter snapshots, reads kernel drops from /proc/net/udp, forwards SIGTERM/SIGINT and
SIGHUP to the workers and bounds the shutdown.

Worker: its own uvloop loop drains its sockets (receiver.listen.drain), runs each batch through
its own Engine and submits the result to its own ForwarderSet (bounded queues; ``submit`` never
blocks the drain), ticks the engine's timeouts, and reports counters to the supervisor over a
pipe. On SIGTERM/SIGINT it stops receiving, reads what the kernel already queued for it,
exports every open flow with end_reason "shutdown", flushes its forwarders and exits 0. SIGHUP
reopens output files.

Steering fallback: with several workers, if the steering program cannot be attached, the
service runs a single worker (records stay whole; a warning says so and
``vxmirror_steering_active`` is 0). With ``steering = false`` the kernel spreads datagrams by
the outer 4-tuple and the two directions of a flow may be recorded by different workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from . import native
from .aws.labels import make_labeler
from .config.file import Config
from .engine import BatchResult, Engine
from .flows.recordbatch import RecordBatch
from .listen.allowlist import SourceFilter
from .listen.drain import Drain
from .listen.settings import parse_hostport
from .listen.sockets import Endpoint, close_endpoints, kernel_drops, open_endpoints, socket_inode
from .metrics import Aggregator, EndpointInfo, MetricsServer
from .packets import Layer, PacketBatch
from .pcapkeep.capture import Capture
from .process import logs

log = logging.getLogger("vxmirror.service")


class Forwarders(Protocol):
    """What the service needs from forwarders.manager.ForwarderSet."""

    def submit(self, result: BatchResult, batch: PacketBatch) -> None: ...
    def submit_records(self, records: RecordBatch) -> None: ...
    def close(self, timeout: float) -> Any: ...
    def reopen(self) -> None: ...
    def counters(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    # (with a planned pcap sink, forwarders.manager.ForwarderSet.capture made the engine's Capture)
    @property
    def capture_open(self) -> bool: ...
    def end_capture_file(self, capture: Capture) -> None: ...


class Notifier(Protocol):
    """Service-manager notifications (systemd sd_notify); all optional."""

    def ready(self) -> None: ...
    def watchdog(self) -> None: ...
    def status(self, text: str) -> None: ...
    def stopping(self) -> None: ...


TALKERS_EVERY = 2.0  # seconds between top-talker computations in a worker
TALKERS_KEPT = 50  # talkers each worker reports


def worker_count(cfg: Config) -> int:
    """``listen.workers``, or by default one per core; one per two cores when each worker has
    a receive thread beside it (busy too at high rates), so a 2-core target runs one worker,
    which also lets it use UDP_GRO."""
    if cfg.listen.workers:
        return cfg.listen.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cfg.listen.receive_thread and native.available():
        return max(1, cores // 2)
    return max(1, cores)


def make_forwarders(
    cfg: Config, worker: int, vni_names: Callable[[int], str | None] | None = None, workers: int = 1
) -> Forwarders:
    """The configured forwarders of one worker (``worker`` of ``workers``; the embedded default:
    JSON lines and pcap).

    ``vni_names`` names a VNI's mirror session (pcapng interface names), when known."""
    from forwarders import manager, registry

    data_dir = Path(cfg.data_dir)
    specs = cfg.forwarder_specs or registry.defaults(data_dir)
    return manager.ForwarderSet.from_specs(specs, data_dir, worker, vni_names, workers)


def _health_dict(h: Any) -> dict[str, Any]:
    out = {}
    for name, v in (h or {}).items():
        if isinstance(v, dict):
            out[str(name)] = v
        else:
            out[str(name)] = {"ok": bool(getattr(v, "ok", v)), "detail": str(getattr(v, "detail", ""))}
    return out


class Worker:
    """One worker process's pipeline: drain -> engine -> forwarders."""

    def __init__(
        self,
        index: int,
        cfg: Config,
        sockets: list[tuple[socket.socket, Layer, str]],
        conn: Connection | None,
        forwarders_factory: Callable[..., Forwarders] = make_forwarders,
        workers: int = 1,
    ) -> None:
        """``workers``: how many the service runs; alone (1), every datagram comes here (UDP_GRO
        cannot split flows)."""
        self.index = index
        self.workers = workers
        self.alone = workers == 1
        self.cfg = cfg
        self.sockets = sockets
        self.conn = conn
        self.forwarders_factory = forwarders_factory
        self.records_exported = 0
        self.pipeline: dict[str, int] = {
            "dropped_engine_error": 0,
            "dropped_forwarder_error": 0,
            "engine_batches": 0,
            "ticks": 0,
            "reopens": 0,
        }
        self.state = "starting"
        self.labeler: Any = None
        self._talkers_at = -1e9
        self._talkers_cache: list[dict[str, Any]] = []
        self._stop: asyncio.Event | None = None
        self._last_error_log = 0.0

    # -- data path -------------------------------------------------------------------------
    def on_batch(self, batch: PacketBatch) -> None:
        capture = self.engine.capture
        if capture is not None:  # frames the pcap writer has no room for count as dropped in the records
            capture.open = self.forwarders.capture_open
        try:
            result = self.engine.process(batch)
        except Exception:
            self.pipeline["dropped_engine_error"] += batch.count
            self._log_error("engine failed on a batch; its packets are dropped and counted")
            return
        self.pipeline["engine_batches"] += 1
        self.records_exported += len(result.records)
        self._submit(result, batch)

    def _submit(self, result: BatchResult, batch: PacketBatch) -> None:
        try:
            self.forwarders.submit(result, batch)
        except Exception:
            self.pipeline["dropped_forwarder_error"] += len(result.records)
            self._log_error("forwarders refused a batch; its records are dropped and counted")

    def _records(self, records: RecordBatch) -> None:
        if records:
            self.records_exported += len(records)
            try:
                self.forwarders.submit_records(records)
            except Exception:
                self.pipeline["dropped_forwarder_error"] += len(records)
                self._log_error("forwarders refused records; they are dropped and counted")

    def _end_capture_file(self) -> None:
        capture = self.engine.capture
        if capture is not None:
            self.forwarders.end_capture_file(capture)

    def _log_error(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.exception(msg)

    def snapshot(self) -> dict[str, Any]:
        try:
            engine = self.engine.counters()
        except Exception:
            engine = {}
        try:
            fwd = self.forwarders.counters()
            health = _health_dict(self.forwarders.health())
        except Exception:
            fwd, health = {}, {}
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "time": time.time(),
            "state": self.state,
            "listen": self.drain.counters(),
            "receive_threads_alive": self.drain.threads_alive(),
            "engine": engine,
            "records_exported": self.records_exported,
            "forwarders": fwd,
            "health": health,
            "pipeline": dict(self.pipeline),
            "talkers": self._talkers(),
        }

    def _talkers(self) -> list[dict[str, Any]]:
        """Top talkers for /top, recomputed at most every TALKERS_EVERY seconds."""
        now = time.monotonic()
        if now - self._talkers_at >= TALKERS_EVERY:
            self._talkers_at = now
            try:
                self._talkers_cache = self.engine.top_talkers(TALKERS_KEPT)
            except Exception:
                self._talkers_cache = []
        return self._talkers_cache

    def _report(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(self.snapshot())

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def reopen(self) -> None:
        self.pipeline["reopens"] += 1
        try:
            self._end_capture_file()
            self.forwarders.reopen()
            log.info("output files reopened")
        except Exception:
            log.exception("reopening output files failed")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reopen)
        # task-aware flows: VNI -> the mirror session's task/service tags (off without AWS credentials)
        self.labeler = make_labeler(self.cfg.aws)
        self.engine = Engine(self.cfg.engine, labeler=self.labeler, sensor=self.cfg.sensor_name())
        self.engine.app_budget = self.cfg.listen.app_time_budget
        self.forwarders = self.forwarders_factory(
            self.cfg, self.index, self.labeler.name if self.labeler is not None else None, self.workers
        )
        make_capture = getattr(self.forwarders, "capture", None)
        if make_capture is not None:  # the pcap sink's frames are planned by the engine (receiver/pcapkeep)
            self.engine.capture = make_capture(self.labeler)
        lc = self.cfg.listen
        gro = lc.udp_gro and self.alone
        self.drain = Drain(lc, self.sockets, self.on_batch, SourceFilter(lc.allow_sources), gro=gro)
        self.drain.start(loop)
        self.state = "running"
        tick_every, report_every = self.cfg.listen.tick_interval, self.cfg.metrics.snapshot_interval
        next_tick = next_report = time.monotonic()
        self._report()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(tick_every, report_every))
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick_every
                self.pipeline["ticks"] += 1
                try:
                    self._records(self.engine.tick(time.time()))
                    capture = self.engine.capture
                    if capture is not None and capture.plan.due(time.time()):
                        self._end_capture_file()  # (rotation by age while the traffic is quiet)
                except Exception:
                    self._log_error("engine tick failed")
            if now >= next_report:
                next_report = now + report_every
                self._report()
        return self.shutdown()

    def shutdown(self) -> int:
        self.state = "stopping"
        self._report()
        t0 = time.monotonic()
        self.drain.stop(drain_backlog=True)
        code = 0
        try:
            self._records(self.engine.finish("shutdown"))
        except Exception:
            log.exception("exporting open flows at shutdown failed")
            code = 1
        # the forwarders deliver for three quarters of the time left, and spool the rest in the last
        # quarter (the supervisor kills a worker at shutdown_timeout)
        left = max(1.0, 0.75 * (self.cfg.listen.shutdown_timeout - 1.0 - (time.monotonic() - t0)))
        totals: Any = None
        try:
            totals = self.forwarders.close(left)  # each forwarder logs its own totals too
            if self.labeler is not None:
                self.labeler.close()
        except Exception:
            log.exception("closing forwarders failed")
            code = 1
        self.state = "done"
        self._report()
        fields: dict[str, Any] = {"records_exported": self.records_exported, "seconds": round(time.monotonic() - t0, 3)}
        if isinstance(totals, dict) and totals:
            fields["forwarders"] = totals  # per forwarder: delivered, spooled, dead_lettered, dropped, ...
        log.info("worker stopped", extra={"fields": fields})
        return code


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM (a clean stop) if the supervisor dies without stopping us (e.g. SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    index: int,
    cfg: Config,
    sockets: list[tuple[socket.socket, Layer, str]],
    conn: Connection,
    log_fmt: str,
    parent_pid: int,
    inherited: list[int],
    workers: int,
) -> None:
    logs.setup(cfg.log.level, log_fmt, worker=index)
    for fd in inherited:  # other workers' pipe ends: holding them would keep those pipes open
        with contextlib.suppress(OSError):
            os.close(fd)
    _die_with_parent(parent_pid)
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(Worker(index, cfg, sockets, conn, workers=workers).run())
    except Exception:
        log.exception("worker failed")
        code = 1
    finally:
        conn.close()
    logging.shutdown()
    os._exit(code)


class Supervisor:
    def __init__(self, cfg: Config, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.workers = worker_count(cfg)
        self.endpoints: list[Endpoint] = []
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.stopping = False
        self.failed = False
        self.metrics_address: tuple[str, int] | None = None
        self._stop: asyncio.Event | None = None

    def _open(self) -> None:
        lc = self.cfg.listen
        self.endpoints = open_endpoints(lc, self.workers, self.cfg.engine.geneve_ports)
        if self.workers > 1 and lc.steering and not all(ep.steered for ep in self.endpoints):
            log.warning(
                "reuseport steering could not be attached: running one worker so that both directions "
                "of every flow reach the same flow table",
                extra={"fields": {"workers_configured": self.workers}},
            )
            close_endpoints(self.endpoints)
            self.workers = 1
            self.endpoints = open_endpoints(lc, 1, self.cfg.engine.geneve_ports)
        elif self.workers > 1 and not lc.steering:
            log.warning("steering is off: the two directions of a flow may be recorded by different workers")

    def _fork(self) -> None:
        ctx = mp.get_context("fork")
        fmt = self.cfg.log.format
        for w in range(self.workers):
            receiver, sender = ctx.Pipe(duplex=False)  # the worker sends, the supervisor receives
            socks = [(ep.sockets[w], ep.layer, ep.label) for ep in self.endpoints]
            inherited = [c.fileno() for c in self.conns]
            args = (w, self.cfg, socks, sender, fmt, os.getpid(), inherited, self.workers)
            p = ctx.Process(target=_worker_main, args=args, name=f"vxmirror-w{w}")
            p.start()
            sender.close()
            self.procs.append(p)
            self.conns.append(receiver)

    def run(self) -> int:
        """Bind, fork, serve until SIGTERM/SIGINT; the process exit code."""
        Path(self.cfg.data_dir).mkdir(parents=True, exist_ok=True)
        self._open()
        try:
            self._fork()
            import uvloop

            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._main())
            finally:
                loop.close()
        finally:
            self._reap(force=True)
            close_endpoints(self.endpoints)
        return 1 if self.failed else 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_stop)
        loop.add_signal_handler(signal.SIGHUP, self._signal_workers, signal.SIGHUP)
        infos = [
            EndpointInfo(ep.label, ep.rcvbuf, {socket_inode(s) for s in ep.sockets}, ep.steered)
            for ep in self.endpoints
        ]
        self.agg = Aggregator(infos, self.workers)
        for conn in self.conns:
            loop.add_reader(conn.fileno(), self._on_snapshot, conn)
        server: MetricsServer | None = None
        if self.cfg.metrics.enabled:
            server = MetricsServer(self.agg.render, self.agg.health, self.agg.talkers)
            host, port = parse_hostport(self.cfg.metrics.listen)
            self.metrics_address = await server.start(host, port)
        log.info(
            "listening",
            extra={
                "fields": {
                    "listen": [f"{ep.label}={ep.layer.name.lower()}" for ep in self.endpoints],
                    "workers": self.workers,
                    "steering": all(ep.steered for ep in self.endpoints) if self.workers > 1 else None,
                    "rcvbuf": {ep.label: ep.rcvbuf for ep in self.endpoints},
                    # the C loops (receiver/native): off means numpy does their work, slower
                    "native": native.available(),
                    "receive_thread": self.cfg.listen.receive_thread and native.available(),
                    "udp_gro": self.cfg.listen.receive_thread and native.available() and self.cfg.listen.udp_gro
                    and self.workers == 1,
                    "metrics": "off" if self.metrics_address is None else "{}:{}".format(*self.metrics_address),
                    "data_dir": self.cfg.data_dir,
                    "config": self.cfg.source,
                }
            },
        )
        if self.notifier:
            self.notifier.ready()
        last_rate = (time.monotonic(), 0)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
                self._poll_kernel_drops(infos)
                self._check_workers()
                if self.notifier and not self._stop.is_set():
                    now, total = time.monotonic(), self._datagrams()
                    rate = (total - last_rate[1]) / max(1e-3, now - last_rate[0])
                    last_rate = (now, total)
                    active = self.agg.totals()["engine"].get("flows_active", 0)
                    if all(p.is_alive() for p in self.procs):
                        self.notifier.watchdog()
                    self.notifier.status(f"{rate:.0f} datagrams/s, {active} active flows, {self.workers} workers")
            if self.notifier:
                self.notifier.stopping()
            await self._wait_workers(infos)
        finally:
            for conn in self.conns:
                with contextlib.suppress(Exception):
                    loop.remove_reader(conn.fileno())
            if server is not None:
                await server.close()
        t = self.agg.totals()
        log.info(
            "stopped",
            extra={
                "fields": {
                    "datagrams": self._datagrams(),
                    "records_exported": t["records_exported"],
                    "kernel_drops": sum(t["kernel_drops"].values()),
                }
            },
        )

    def _datagrams(self) -> int:
        return sum(c.get("datagrams", 0) for c in self.agg.totals()["listen"].values())

    def _on_snapshot(self, conn: Connection) -> None:
        try:
            while conn.poll():
                self.agg.update(conn.recv())
        except (EOFError, OSError):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())

    def _poll_kernel_drops(self, infos: list[EndpointInfo]) -> None:
        inodes = set().union(*(i.inodes for i in infos)) if infos else set()
        self.agg.set_kernel_drops(kernel_drops(inodes))

    def _check_workers(self) -> None:
        for w, p in enumerate(self.procs):
            if not p.is_alive():
                self.agg.alive[w] = False
                if not self.stopping:
                    log.error(
                        "worker exited unexpectedly; stopping the service",
                        extra={"fields": {"worker": w, "exitcode": p.exitcode}},
                    )
                    self.failed = True
                    self._begin_stop()

    def _signal_workers(self, sig: int) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    def _begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("stopping: exporting open flows and flushing forwarders")
        self._signal_workers(signal.SIGTERM)
        if self._stop is not None:
            self._stop.set()

    async def _wait_workers(self, infos: list[EndpointInfo]) -> None:
        deadline = time.monotonic() + self.cfg.listen.shutdown_timeout
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in self.conns:
            self._on_snapshot(conn)
        self._poll_kernel_drops(infos)
        for w, p in enumerate(self.procs):
            if p.is_alive():
                log.error("worker did not stop in time; killed", extra={"fields": {"worker": w}})
                p.kill()
                self.failed = True
            p.join(1.0)
            self.agg.alive[w] = False
            if p.exitcode not in (0, None) and not self.failed:
                log.error("worker failed", extra={"fields": {"worker": w, "exitcode": p.exitcode}})
                self.failed = True

    def _reap(self, force: bool) -> None:
        for p in self.procs:
            if p.is_alive() and force:
                p.terminate()
                p.join(2.0)
                if p.is_alive():
                    p.kill()
            p.join(0.1)


def serve(cfg: Config, notifier: Notifier | None = None) -> int:
    return Supervisor(cfg, notifier).run()
