"""Metrics: worker snapshots aggregated in the supervisor, Prometheus text, /metrics and /healthz.

Each worker sends a snapshot of its counters (a plain dict, see ``service.Worker.snapshot``)
to the supervisor a few times a second and once more when it stops. The supervisor keeps the
latest per worker and sums them; counters are monotonic per worker and workers are never
replaced while the service runs, so sums are monotonic too. Values the supervisor itself owns
(receive buffer sizes, kernel drops read from /proc/net/udp) are added at render time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger("vxmirror.metrics")

def _engine_drop_reasons() -> tuple[str, ...]:
    """Engine counters that count dropped packets (the decoder's non-OK statuses, the flow table's)."""
    from .decode.columns import Status

    skip = {Status.OK, Status.SLOW_PATH}
    return (
        *(s.counter for s in Status if s not in skip),
        "fragment_without_first",
        "hash_collision",
        "flow_table_full",
    )


ENGINE_DROP_REASONS = _engine_drop_reasons()

# forwarder counter keys rendered as gauges (everything else numeric is a counter)
GAUGE_HINTS = ("queue", "depth", "pending", "in_flight", "spool_", "healthy")


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items()) + "}"


@dataclass
class _Family:
    kind: str
    help: str
    samples: list[tuple[dict[str, Any], float]] = field(default_factory=list)


class Exposition:
    """Prometheus text format 0.0.4 builder."""

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def add(self, name: str, kind: str, help: str, value: float, **labels: Any) -> None:
        fam = self.families.setdefault(name, _Family(kind, help))
        fam.samples.append((labels, value))

    def render(self) -> str:
        out = []
        for name, fam in self.families.items():
            out.append(f"# HELP {name} {fam.help}")
            out.append(f"# TYPE {name} {fam.kind}")
            for labels, value in fam.samples:
                v = int(value) if float(value).is_integer() else value
                out.append(f"{name}{_labels(labels)} {v}")
        return "\n".join(out) + "\n"


@dataclass
class EndpointInfo:
    label: str
    rcvbuf: int
    inodes: set[int]
    steered: bool


class Aggregator:
    """Latest snapshot per worker plus supervisor-owned values; renders /metrics."""

    def __init__(self, endpoints: list[EndpointInfo], workers: int) -> None:
        self.endpoints = endpoints
        self.workers = workers
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.received_at: dict[int, float] = {}
        self.alive: dict[int, bool] = dict.fromkeys(range(workers), True)
        self.kernel_drops: dict[str, int] = {ep.label: 0 for ep in endpoints}
        self.started = time.time()

    def update(self, snap: dict[str, Any]) -> None:
        w = int(snap["worker"])
        self.snapshots[w] = snap
        self.received_at[w] = time.monotonic()

    def set_kernel_drops(self, by_inode: dict[int, int]) -> None:
        for ep in self.endpoints:
            self.kernel_drops[ep.label] = sum(by_inode.get(i, 0) for i in ep.inodes)

    def totals(self) -> dict[str, Any]:
        """Sums across workers (also what `vxmirror serve` logs at exit)."""
        listen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        engine: dict[str, int] = defaultdict(int)
        fwd: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        pipeline: dict[str, int] = defaultdict(int)
        exported = 0
        for snap in self.snapshots.values():
            for label, c in snap.get("listen", {}).items():
                for k, v in c.items():
                    listen[label][k] += int(v)
            for k, v in snap.get("engine", {}).items():
                if isinstance(v, int | float):
                    engine[k] += int(v)
            for name, c in snap.get("forwarders", {}).items():
                if isinstance(c, dict):
                    for k, v in c.items():
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            fwd[name][k] += v
                        elif isinstance(v, bool):
                            fwd[name][k] += int(v)
            for k, v in snap.get("pipeline", {}).items():
                pipeline[k] += int(v)
            exported += int(snap.get("records_exported", 0))
        return {
            "listen": {k: dict(v) for k, v in listen.items()},
            "engine": dict(engine),
            "forwarders": {k: dict(v) for k, v in fwd.items()},
            "pipeline": dict(pipeline),
            "records_exported": exported,
            "kernel_drops": dict(self.kernel_drops),
        }

    def talkers(self, n: int = 10) -> dict[str, Any]:
        """The /top document: the largest open flows across workers, by bytes."""
        merged = [t for snap in self.snapshots.values() for t in snap.get("talkers", [])]
        merged.sort(key=lambda t: t.get("bytes", 0), reverse=True)
        return {
            "window_seconds": None,
            "scope": "open flows; bytes and packets since each flow started or last emitted an interim record",
            "talkers": merged[: max(0, n)],
        }

    def health(self, stale_after: float = 5.0) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        detail: dict[str, Any] = {"workers": {}}
        ok = True
        for w in range(self.workers):
            age = now - self.received_at[w] if w in self.received_at else None
            up = self.alive.get(w, False) and age is not None and age < stale_after
            detail["workers"][str(w)] = {"up": up, "snapshot_age": None if age is None else round(age, 3)}
            ok &= up
            if self.snapshots.get(w, {}).get("receive_threads_alive") is False:  # nothing is being received
                detail["workers"][str(w)]["receive_threads_alive"] = False
                ok = False
            for name, h in self.snapshots.get(w, {}).get("health", {}).items():
                detail.setdefault("forwarders", {})[name] = h
                if isinstance(h, dict) and h.get("ok") is False:
                    ok = False
        detail["status"] = "ok" if ok else "unhealthy"
        return ok, detail

    def render(self) -> str:
        t = self.totals()
        e = Exposition()
        for ep in self.endpoints:
            c = t["listen"].get(ep.label, {})
            lab = {"listen": ep.label}
            e.add("vxmirror_datagrams_received_total", "counter", "Datagrams received", c.get("datagrams", 0), **lab)
            e.add("vxmirror_bytes_received_total", "counter", "Datagram bytes received", c.get("bytes", 0), **lab)
            e.add(
                "vxmirror_datagrams_truncated_total",
                "counter",
                "Datagrams longer than a slot (kept truncated)",
                c.get("truncated", 0),
                **lab,
            )
            e.add(
                "vxmirror_receive_ring_full_waits_total",
                "counter",
                "Times a receive thread found its ring full and waited for the worker (the kernel buffer then fills)",
                c.get("ring_full_waits", 0),
                **lab,
            )
            e.add(
                "vxmirror_kernel_drops_total",
                "counter",
                "Datagrams the kernel dropped (socket buffer full), from /proc/net/udp; with UDP_GRO each "
                "count can be a coalesced run of up to 64 datagrams",
                t["kernel_drops"].get(ep.label, 0),
                **lab,
            )
            e.add("vxmirror_rcvbuf_bytes", "gauge", "Receive buffer granted per socket", ep.rcvbuf, **lab)
            e.add(
                "vxmirror_steering_active",
                "gauge",
                "1 if the reuseport steering program is attached",
                int(ep.steered),
                **lab,
            )
        eng = t["engine"]
        dropped_src = sum(c.get("dropped_source", 0) for c in t["listen"].values())
        e.add(
            "vxmirror_dropped_total",
            "counter",
            "Datagrams/packets dropped, by place and reason",
            dropped_src,
            place="listener",
            reason="source_not_allowed",
        )
        for reason in sorted(set(ENGINE_DROP_REASONS) | {k for k in eng if k in ENGINE_DROP_REASONS}):
            e.add("vxmirror_dropped_total", "counter", "", eng.get(reason, 0), place="engine", reason=reason)
        for k, v in sorted(eng.items()):
            if k.startswith("drop_"):
                e.add("vxmirror_dropped_total", "counter", "", v, place="engine", reason=k[5:])
        for k, v in sorted(t["pipeline"].items()):
            if k.startswith("dropped_"):
                e.add("vxmirror_dropped_total", "counter", "", v, place="pipeline", reason=k[8:])
        e.add("vxmirror_packets_decoded_total", "counter", "Packets decoded by the engine", eng.get("decoded", 0))
        e.add("vxmirror_packets_processed_total", "counter", "Packets given to the engine", eng.get("packets", 0))
        active = eng.get("flows_active", eng.get("active_flows", 0))
        e.add("vxmirror_flows_active", "gauge", "Open flows in the flow tables", active)
        e.add(
            "vxmirror_flows_exported_total",
            "counter",
            "Flow records emitted by the engine",
            t["records_exported"],
        )
        for k, v in sorted(eng.items()):
            e.add("vxmirror_engine_counter", "gauge", "Every engine counter, by name", v, counter=k)
        for k, v in sorted(t["pipeline"].items()):
            if not k.startswith("dropped_"):
                e.add("vxmirror_pipeline_total", "counter", "Worker pipeline events", v, event=k)
        for name, c in sorted(t["forwarders"].items()):
            for k, v in sorted(c.items()):
                if k.startswith("dropped_"):
                    e.add("vxmirror_dropped_total", "counter", "", v, place=f"forwarder:{name}", reason=k[8:])
                    continue
                metric = "vxmirror_forwarder_" + "".join(ch if ch.isalnum() else "_" for ch in k)
                if any(h in k for h in GAUGE_HINTS):
                    e.add(metric, "gauge", f"Forwarder {k}", v, forwarder=name)
                else:
                    e.add(metric + "_total", "counter", f"Forwarder {k}", v, forwarder=name)
        ok, detail = self.health()
        for w, d in detail["workers"].items():
            e.add("vxmirror_worker_up", "gauge", "1 while the worker reports", int(d["up"]), worker=w)
        for w, snap in sorted(self.snapshots.items()):
            n = sum(int(c.get("datagrams", 0)) for c in snap.get("listen", {}).values())
            e.add("vxmirror_worker_datagrams_total", "counter", "Datagrams received per worker", n, worker=w)
        e.add("vxmirror_up", "gauge", "1 if every worker and forwarder is healthy", int(ok))
        e.add("vxmirror_start_time_seconds", "gauge", "Service start time", round(self.started, 3))
        return e.render()


def _query_int(query: str, key: str, default: int, lo: int, hi: int) -> int:
    for part in query.split("&"):
        k, _, v = part.partition("=")
        if k == key:
            try:
                return max(lo, min(hi, int(v)))
            except ValueError:
                return default
    return default


class MetricsServer:
    """A small HTTP/1.1 server: GET /metrics (Prometheus text) and GET /healthz (JSON)."""

    def __init__(
        self,
        render: Callable[[], str],
        health: Callable[[], tuple[bool, dict[str, Any]]],
        talkers: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.render = render
        self.health = health
        self.talkers = talkers
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port)
        addr = self.server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path, _, query = path.partition("?")
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = self.render().encode()
            elif path == "/healthz":
                ok, detail = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", orjson.dumps(detail) + b"\n"
            elif path == "/top" and self.talkers is not None:
                n = _query_int(query, "n", 10, 1, 1000)
                status, ctype, body = "200 OK", "application/json", orjson.dumps(self.talkers(n)) + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found (try /metrics, /healthz or /top)\n"
            hdr = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(hdr + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:  # never let one bad request take the endpoint down
            log.exception("metrics request failed")
        finally:
            writer.close()
