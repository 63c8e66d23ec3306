"""The C receive thread (receiver.listen.rxthread): packing, wrap-around, back-pressure, stop."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from receiver import native
from receiver.listen.rxthread import RecvThread
from receiver.listen.sockets import open_socket
from receiver.packets import Layer
from tests.listen_fixtures import send_all

pytestmark = pytest.mark.skipif(not native.available(), reason="needs the C library (test_native fails then)")


def _sock(host: str = "127.0.0.1") -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s, _ = open_socket(host, 0, fam, 8 << 20, reuseport=False)
    return s


def _collect(t: RecvThread, want: int, chunk: int, timeout: float = 10.0, pause: float = 0.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} datagrams arrived"
        first, end = t.take(chunk)
        if end == first:
            time.sleep(0.001)
            continue
        b = t.batch(first, end, Layer.VXLAN, 4789)
        got += [b.frame(i) for i in range(b.count)]
        t.release(end)
        if pause:
            time.sleep(pause)  # a slow consumer: the thread must wait, not drop or overwrite
    return got


@pytest.mark.parametrize(
    ("records", "ring_bytes", "max_size"), [(32, 4096, 500), (8, 1 << 16, 20)], ids=["bytes-bound", "records-bound"]
)
def test_datagrams_arrive_in_order_through_a_small_ring_that_wraps_many_times(
    records: int, ring_bytes: int, max_size: int
) -> None:
    s = _sock()
    rng = np.random.default_rng(3)
    data = [bytes([i & 0xFF]) * int(rng.integers(1, max_size)) + i.to_bytes(4, "big") for i in range(3000)]
    t = RecvThread(s, records=records, ring_bytes=ring_bytes, slot_size=1024, vlen=16, notify_records=4)
    t.start()
    sender = threading.Thread(target=send_all, args=(data, s.getsockname()[1], "127.0.0.1", False, 64))
    sender.start()
    got = _collect(t, len(data), chunk=7, pause=0.0005)
    sender.join()
    t.close()
    assert got == data
    c = t.counters()
    assert c["received"] == 3000 and c["bytes"] == sum(map(len, data)) and c["errors"] == 0
    assert c["ring_full_waits"] > 0  # the consumer was slower than the thread
    s.close()


def test_a_datagram_longer_than_a_slot_is_kept_truncated_and_counted() -> None:
    s = _sock()
    t = RecvThread(s, records=8, ring_bytes=1 << 16, slot_size=1000, vlen=4, notify_records=1)
    t.start()
    send_all([b"x" * 3000, b"y" * 10], s.getsockname()[1])
    deadline = time.monotonic() + 5
    while t.pending() < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    first, end = t.take(8)
    b = t.batch(first, end, Layer.VXLAN, 4789)
    assert b.caplen.tolist() == [1000, 10] and b.wirelen.tolist() == [3000, 10]
    assert b.frame(0) == b"x" * 1000
    assert (b.src_addr == 0x7F000001).all() and abs(float(b.ts[0]) - time.time()) < 5
    assert t.counters()["truncated"] == 1
    t.close()
    s.close()


def test_ipv6_sender_address_is_kept() -> None:
    s = _sock("::1")
    t = RecvThread(s, records=8, ring_bytes=1 << 16, slot_size=256, vlen=4, notify_records=1)
    t.start()
    send_all([b"six"], s.getsockname()[1], host="::1")
    deadline = time.monotonic() + 5
    while not t.pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    first, end = t.take(8)
    assert bytes(t.src_ipv6(first, end)[0]) == socket.inet_pton(socket.AF_INET6, "::1")
    assert t.batch(first, end, Layer.VXLAN, 1).src_addr.tolist() == [0]
    t.close()
    s.close()


def test_the_eventfd_wakes_an_idle_consumer_and_stop_ends_the_thread() -> None:
    s = _sock()
    t = RecvThread(s, records=64, ring_bytes=1 << 16, slot_size=256, vlen=8, notify_records=1000)
    t.start()
    assert t.pending(idle=True) == 0
    send_all([b"a", b"b"], s.getsockname()[1])
    import select

    r, _, _ = select.select([t.evfd], [], [], 5)
    assert r, "no wakeup"
    t.clear_wakeup()
    assert t.pending() == 2
    t.stop()
    assert not t.running
    t.close()
    s.close()


def test_coalesced_datagrams_are_split_again() -> None:
    """A GSO sender on loopback delivers 64-segment messages to a UDP_GRO socket intact; the
    thread must hand them over as the original datagrams, in order, with their lengths."""
    s = _sock()
    t = RecvThread(s, records=4096, ring_bytes=1 << 22, slot_size=2048, vlen=8, notify_records=64, gro=True)
    assert t.gro
    t.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_segment = 103  # linux/udp.h UDP_SEGMENT
    tx.setsockopt(17, udp_segment, 100)
    payload = b"".join(i.to_bytes(2, "big") * 50 for i in range(40)) + b"tail"  # 40 x 100 bytes + 4
    tx.sendto(payload, s.getsockname())
    tx.setsockopt(17, udp_segment, 0)
    tx.sendto(b"single", s.getsockname())
    got = _collect(t, 42, chunk=100)
    want = [payload[i : i + 100] for i in range(0, len(payload), 100)] + [b"single"]
    assert got == want
    assert t.counters()["received"] == 42
    tx.close()
    t.close()
    s.close()


def test_stopping_reads_the_coalesced_backlog_through_the_thread() -> None:
    """At shutdown the socket may still hold coalesced messages: the thread reads and splits
    them (a plain recvmmsg would see one long datagram each)."""
    s = _sock()
    t = RecvThread(s, records=64, ring_bytes=1 << 16, slot_size=256, vlen=8, notify_records=8, gro=True)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(17, 103, 50)  # UDP_SEGMENT: 50-byte datagrams
    for k in range(10):  # 10 messages x 40 datagrams, sent before the thread runs: all in the backlog
        tx.sendto(bytes([k]) * 2000, s.getsockname())
    t.start()
    got: list[bytes] = []

    def consume() -> None:
        first, end = t.take(1000)
        if end > first:
            b = t.batch(first, end, Layer.VXLAN, 1)
            got.extend(b.frame(i) for i in range(b.count))
            t.release(end)

    t.drain_and_stop(consume)
    while t.pending():
        consume()
    assert not t.running
    assert got == [bytes([k]) * 50 for k in range(10) for _ in range(40)]
    tx.close()
    t.close()
    s.close()


def test_drain_gives_the_event_loop_turns_under_sustained_load() -> None:
    """With more queued than a few batches, the drain hands over a bounded number per turn of
    the event loop: timers (expiry, metrics, the watchdog) keep running between batches."""
    import asyncio

    from receiver.listen.drain import MAX_BATCHES_PER_WAKEUP, Drain
    from receiver.listen.settings import ListenConfig

    s = _sock()
    cfg = ListenConfig(ring_slots=16, recv_batch=16, slot_size=256, receive_thread=True)
    events: list[str] = []

    def handler(b: object) -> None:
        events.append("batch")
        time.sleep(0.001)

    d = Drain(cfg, [(s, Layer.VXLAN, "t")], handler)
    send_all([b"x%05d" % i for i in range(3000)], s.getsockname()[1], pace_every=0)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:  # once per turn of the loop
            events.append("tick")
            loop.call_soon(tick)

        tick()
        d.start(loop)
        deadline = time.monotonic() + 10
        while d.sources[0].counters.datagrams < 3000 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        d.stop()

    asyncio.run(main())
    s.close()
    assert d.sources[0].counters.datagrams == 3000
    first, last = events.index("batch"), len(events) - 1 - events[::-1].index("batch")
    ticks_between = events[first:last].count("tick")
    assert ticks_between > 0
    # never more than the budget of batches in one turn of the loop
    run = longest = 0
    for e in events:
        run = run + 1 if e == "batch" else 0
        longest = max(longest, run)
    assert longest <= MAX_BATCHES_PER_WAKEUP
