"""The listener: recvmmsg ring, drain batching, allowlist, receive buffers, kernel drops."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from receiver.listen.allowlist import SourceFilter
from receiver.listen.drain import Drain
from receiver.listen.mmsg import RecvRing
from receiver.listen.settings import ListenConfig
from receiver.listen.sockets import kernel_drops, open_endpoints, open_socket, socket_inode
from receiver.packets import Layer, PacketBatch
from tests.listen_fixtures import ROOT, ether, ipv4, send_all, udp, vxlan


def _rx(host: str = "127.0.0.1", rcvbuf: int = 8 << 20) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s, _ = open_socket(host, 0, fam, rcvbuf, reuseport=False)
    return s


def test_ring_receives_datagrams_into_slots() -> None:
    rx = _rx()
    port = rx.getsockname()[1]
    datagrams = [bytes([i % 256]) * (10 + 7 * i) for i in range(100)]
    send_all(datagrams, port, pace_every=0)
    ring = RecvRing(128, 2048)
    got = 0
    while got < 100:
        n = ring.recv(rx.fileno(), 32)
        assert n > 0
        got += n
    assert ring.recv(rx.fileno(), 32) == 0  # empty socket: no error, nothing
    batch = ring.batch(Layer.VXLAN, port)
    assert batch.count == 100
    assert [batch.frame(i) for i in range(100)] == datagrams
    assert (batch.src_addr == 0x7F000001).all()
    assert (batch.dst_port == port).all()
    assert (batch.wirelen == batch.caplen).all()
    assert abs(float(batch.ts[0]) - time.time()) < 5
    rx.close()


def test_oversized_datagram_is_kept_truncated_with_its_real_length() -> None:
    rx = _rx()
    port = rx.getsockname()[1]
    send_all([b"x" * 3000, b"y" * 100], port)
    ring = RecvRing(4, 1024)
    while ring.fill < 2:
        assert ring.recv(rx.fileno(), 4) > 0
    b = ring.batch(Layer.VXLAN, port)
    assert b.caplen.tolist() == [1024, 100]
    assert b.wirelen.tolist() == [3000, 100]
    rx.close()


def test_ipv6_ring_reports_no_ipv4_source_and_keeps_the_address() -> None:
    rx = _rx("::1")
    port = rx.getsockname()[1]
    send_all([b"hello6"], port, host="::1")
    ring = RecvRing(4, 256, socket.AF_INET6)
    deadline = time.monotonic() + 2
    while ring.fill < 1 and time.monotonic() < deadline:
        ring.recv(rx.fileno(), 4)
    assert ring.fill == 1
    assert bytes(ring.src_ipv6()[0]) == socket.inet_pton(socket.AF_INET6, "::1")
    assert ring.batch(Layer.VXLAN, port).src_addr.tolist() == [0]
    rx.close()


def test_source_filter_v4_v6_and_mapped() -> None:
    f = SourceFilter(["10.0.0.0/8", "127.0.0.0/8", "fc00::/7"])
    src = np.array([0x0A010203, 0x7F000001, 0xC0A80001, 0x08080808], np.uint32)
    assert f.allowed_v4(src).tolist() == [True, True, False, False]
    addrs = [socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "2001:db8::1", "::ffff:10.1.1.1", "::1")]
    a6 = np.frombuffer(b"".join(addrs), np.uint8).reshape(-1, 16)
    assert f.allowed_v6(a6).tolist() == [True, False, True, False]
    assert SourceFilter(["0.0.0.0/0"]).allowed_v4(src).all()
    assert not SourceFilter([]).allowed_v4(src).any()


def _drain_run(cfg: ListenConfig, sock: socket.socket, send: list[bytes], expect: int, allow: list[str] | None = None,
               timeout: float = 5.0) -> tuple[list[PacketBatch], Drain]:
    batches: list[PacketBatch] = []
    copies: list[list[bytes]] = []

    def handler(b: PacketBatch) -> None:
        batches.append(b)
        copies.append([b.frame(i) for i in range(b.count)])  # the ring is reused after return

    d = Drain(cfg, [(sock, Layer.VXLAN, "test")], handler, SourceFilter(allow or cfg.allow_sources))
    port = sock.getsockname()[1]

    async def main() -> None:
        d.start(asyncio.get_running_loop())
        await asyncio.get_running_loop().run_in_executor(None, send_all, send, port, "127.0.0.1", False, 0)
        deadline = time.monotonic() + timeout
        while sum(b.count for b in batches) + d.sources[0].counters.dropped_source < expect:
            assert time.monotonic() < deadline, "datagrams did not arrive"
            await asyncio.sleep(0.01)
        d.stop()

    asyncio.run(main())
    for b, c in zip(batches, copies, strict=True):
        b.frames = c  # type: ignore[attr-defined]
    return batches, d


@pytest.mark.parametrize("thread", [True, False], ids=["receive-thread", "event-loop"])
def test_drain_hands_over_full_rings_and_the_rest_when_the_socket_empties(thread: bool) -> None:
    cfg = ListenConfig(ring_slots=16, recv_batch=8, slot_size=256, receive_thread=thread)
    rx = _rx()
    data = [b"d%04d" % i for i in range(200)]
    batches, d = _drain_run(cfg, rx, data, 200)
    frames = [f for b in batches for f in b.frames]  # type: ignore[attr-defined]
    assert frames == data  # nothing lost, order kept
    assert all(b.count <= 16 for b in batches)
    c = d.sources[0].counters
    assert c.datagrams == 200 and c.bytes == sum(map(len, data)) and c.dropped_source == 0
    rx.close()


@pytest.mark.parametrize("thread", [True, False], ids=["receive-thread", "event-loop"])
def test_drain_drops_and_counts_disallowed_sources(thread: bool) -> None:
    cfg = ListenConfig(ring_slots=64, recv_batch=16, slot_size=256, receive_thread=thread)
    rx = _rx()
    batches, d = _drain_run(cfg, rx, [b"a", b"b", b"c"], 3, allow=["10.0.0.0/8"])
    assert sum(b.count for b in batches) == 0
    assert d.sources[0].counters.dropped_source == 3
    assert d.sources[0].counters.datagrams == 3
    rx.close()


def test_drain_timer_flushes_a_partial_ring() -> None:
    """Datagrams left in a ring (the per-wakeup budget ran out) go out after flush_interval."""
    cfg = ListenConfig(ring_slots=64, recv_batch=16, slot_size=256, flush_interval=0.02, receive_thread=False)
    rx = _rx()
    out: list[int] = []
    d = Drain(cfg, [(rx, Layer.VXLAN, "t")], lambda b: out.append(b.count))
    send_all([b"x"] * 5, rx.getsockname()[1])
    time.sleep(0.05)

    async def main() -> None:
        d.start(asyncio.get_running_loop())
        d.loop.remove_reader(rx.fileno())  # type: ignore[union-attr]
        d.sources[0].ring.recv(rx.fileno(), 16)  # as if a wakeup ended with data in the ring
        assert out == []
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert out == [5]
    rx.close()


def test_vxlan_datagram_batch_is_what_the_engine_receives() -> None:
    cfg = ListenConfig(ring_slots=32, recv_batch=32, slot_size=2048)
    rx = _rx()
    dg = vxlan(ether(ipv4("10.1.0.1", "10.1.0.2", 17, udp(1000, 53, b"abc"))), vni=99)
    batches, _ = _drain_run(cfg, rx, [dg], 1)
    (b,) = batches
    assert b.layer == Layer.VXLAN and b.count == 1 and b.frames == [dg]  # type: ignore[attr-defined]
    assert int.from_bytes(b.frames[0][4:7], "big") == 99  # type: ignore[attr-defined]
    rx.close()


def test_kernel_drops_are_read_from_proc() -> None:
    rx, _granted = open_socket("127.0.0.1", 0, socket.AF_INET, 4096, reuseport=False)
    send_all([b"z" * 1000] * 300, rx.getsockname()[1], pace_every=0)
    ring = RecvRing(512, 2048)
    while ring.recv(rx.fileno(), 512):
        pass
    drops = kernel_drops({socket_inode(rx)})[socket_inode(rx)]
    assert drops > 0
    assert drops + ring.fill == 300
    rx.close()


def test_endpoints_bind_one_socket_per_worker_in_one_group() -> None:
    cfg = ListenConfig(addresses=["127.0.0.1:0", "[::1]:0"], rcvbuf=1 << 20)
    eps = open_endpoints(cfg, 3, geneve_ports=[6081])
    try:
        assert [len(ep.sockets) for ep in eps] == [3, 3]
        for ep in eps:
            assert len({s.getsockname()[1] for s in ep.sockets}) == 1
            assert ep.steered and ep.layer == Layer.VXLAN
            assert ep.rcvbuf >= 1 << 20  # root: SO_RCVBUFFORCE passes net.core.rmem_max
    finally:
        for ep in eps:
            for s in ep.sockets:
                s.close()


def test_capped_receive_buffer_warns_once_naming_the_sysctl() -> None:
    """Without CAP_NET_ADMIN the kernel caps SO_RCVBUF at net.core.rmem_max: one warning says so."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    want = rmem_max * 4
    code = (
        "import logging, sys\n"
        "from receiver.process import logs\n"
        "from receiver.listen.settings import ListenConfig\n"
        "from receiver.listen.sockets import open_endpoints\n"
        "logs.setup('info', 'json', stream=sys.stdout)\n"
        f"eps = open_endpoints(ListenConfig(addresses=['127.0.0.1:0', '[::1]:0'], rcvbuf={want}), 2, [6081])\n"
        "print('GRANTED', eps[0].rcvbuf)\n"
    )
    out = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", sys.executable, "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    warnings = [json.loads(x) for x in lines if x.startswith("{") and "rmem_max" in x]
    assert len(warnings) == 1
    w = warnings[0]
    assert w["level"] == "warning" and f"net.core.rmem_max={want}" in w["msg"]
    assert w["rcvbuf_granted"] == rmem_max
    assert f"GRANTED {rmem_max}" in lines


@pytest.mark.parametrize("bad", ["4789", "host:4789", "1.2.3.4:99999", "[::1]4789", "::1:4789"])
def test_bad_listen_addresses_are_config_errors(bad: str) -> None:
    from receiver.config.schema import ConfigError, from_table

    with pytest.raises(ConfigError) as e:
        from_table(ListenConfig, {"addresses": [bad]}, "f.toml", "listen")
    assert "listen.addresses[0]" in str(e.value) and "f.toml" in str(e.value)
