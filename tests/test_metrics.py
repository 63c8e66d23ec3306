"""Metrics: snapshot aggregation across workers, Prometheus text, the HTTP endpoint."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

from receiver.metrics import Aggregator, EndpointInfo, MetricsServer
from tests.listen_fixtures import metric


def _snap(w: int, n: int) -> dict[str, Any]:
    return {
        "worker": w,
        "listen": {"127.0.0.1:4789": {"datagrams": n, "bytes": n * 100, "truncated": 1, "dropped_source": 2}},
        "engine": {"packets": n, "decoded": n - 3, "vxlan_i_flag_unset": 2, "truncated_tunnel": 1, "flows_active": 5},
        "records_exported": 10 * (w + 1),
        "forwarders": {"jsonl": {"sent": 7, "retried": 1, "spooled": 0, "dropped": 3, "queue_depth": 4}},
        "health": {"jsonl": {"ok": True, "detail": ""}},
        "pipeline": {"dropped_engine_error": 0, "ticks": 3},
    }


def _agg() -> Aggregator:
    a = Aggregator([EndpointInfo("127.0.0.1:4789", 1 << 20, {11, 12}, True)], workers=2)
    a.update(_snap(0, 100))
    a.update(_snap(1, 50))
    a.set_kernel_drops({11: 4, 12: 6, 99: 1000})
    return a


def test_render_sums_workers_and_names_reasons() -> None:
    text = _agg().render()
    lab = {"listen": "127.0.0.1:4789"}
    assert metric(text, "vxmirror_datagrams_received_total", **lab) == 150
    assert metric(text, "vxmirror_bytes_received_total", **lab) == 15000
    assert metric(text, "vxmirror_kernel_drops_total", **lab) == 10
    assert metric(text, "vxmirror_rcvbuf_bytes", **lab) == 1 << 20
    assert metric(text, "vxmirror_dropped_total", place="listener", reason="source_not_allowed") == 4
    assert metric(text, "vxmirror_dropped_total", place="engine", reason="vxlan_i_flag_unset") == 4
    assert metric(text, "vxmirror_dropped_total", place="engine", reason="truncated_tunnel") == 2
    assert metric(text, "vxmirror_dropped_total", place="engine", reason="malformed_ip") == 0
    assert metric(text, "vxmirror_packets_decoded_total") == 144
    assert metric(text, "vxmirror_flows_active") == 10
    assert metric(text, "vxmirror_flows_exported_total") == 30
    assert metric(text, "vxmirror_forwarder_sent_total", forwarder="jsonl") == 14
    assert metric(text, "vxmirror_forwarder_dropped_total", forwarder="jsonl") == 6
    assert metric(text, "vxmirror_forwarder_queue_depth", forwarder="jsonl") == 8
    assert "# TYPE vxmirror_forwarder_queue_depth gauge" in text
    assert "# TYPE vxmirror_dropped_total counter" in text
    assert text.count("# TYPE vxmirror_dropped_total") == 1


def test_health_needs_every_worker_and_forwarder() -> None:
    a = _agg()
    assert a.health()[0]
    a.alive[1] = False
    ok, detail = a.health()
    assert not ok and detail["workers"]["1"]["up"] is False
    b = _agg()
    s = _snap(0, 1)
    s["health"] = {"kafka": {"ok": False, "detail": "broker unreachable"}}
    b.update(s)
    ok, detail = b.health()
    assert not ok and detail["forwarders"]["kafka"]["detail"] == "broker unreachable"
    c = Aggregator([], workers=1)  # no snapshot yet
    assert not c.health()[0]
    d = _agg()
    s = _snap(0, 1)
    s["receive_threads_alive"] = False  # a worker whose receive thread ended: nothing arrives there
    d.update(s)
    ok, detail = d.health()
    assert not ok and detail["workers"]["0"]["receive_threads_alive"] is False


def test_drain_reports_whether_its_receive_threads_run() -> None:
    import socket as socket_mod

    from receiver.listen.drain import Drain
    from receiver.listen.settings import ListenConfig
    from receiver.packets import Layer

    s = socket_mod.socket(socket_mod.AF_INET, socket_mod.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    d = Drain(ListenConfig(ring_slots=16, recv_batch=8), [(s, Layer.VXLAN, "t")], lambda b: None)
    assert d.threads_alive() is None  # not started

    async def main() -> None:
        d.start(asyncio.get_running_loop())
        assert d.threads_alive() is True
        rx = d.sources[0].rx
        assert rx is not None
        rx.stop()  # as if the thread had ended
        assert d.threads_alive() is False
        d.stop(drain_backlog=False)

    asyncio.run(main())
    assert d.threads_alive() is None
    s.close()


def test_http_endpoint() -> None:
    a = _agg()

    async def main() -> list[tuple[int, str]]:
        srv = MetricsServer(a.render, a.health)
        host, port = await srv.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        out = [await loop.run_in_executor(None, get, p) for p in ("/metrics", "/healthz", "/nope")]
        a.alive[0] = False
        out.append(await loop.run_in_executor(None, get, "/healthz"))
        await srv.close()
        return out

    (m, h, nf, h2) = asyncio.run(main())
    assert m[0] == 200 and metric(m[1], "vxmirror_up") == 1
    assert h[0] == 200 and '"status":"ok"' in h[1]
    assert nf[0] == 404
    assert h2[0] == 503 and '"unhealthy"' in h2[1]
