"""`vxmirror serve` stopped with a million flows open: every open flow's record reaches the JSON-lines
files or the forwarder's spool (far more than its queue holds), the stop log accounts for every
record, and the next start replays the spool, so the files end with every record exactly once."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
from pathlib import Path

import orjson
import pytest

from tests.listen_fixtures import Served, ether, ipv4, metric, udp, vxlan

FLOWS = 1_000_000
QUEUE_MAX = 50_000  # the JSON-lines forwarder's queue: a twentieth of the records at the stop


def _lines(paths: list[Path]) -> list[bytes]:
    return [ln for p in paths for ln in p.read_bytes().splitlines() if ln]


def _stop_fields(log: str) -> dict[str, object]:
    """The fields of the worker's stop line (JSON log format)."""
    for line in log.splitlines():
        if '"worker stopped"' in line:
            return json.loads(line)
    raise AssertionError("no 'worker stopped' line in the log:\n" + log[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("outage", [False, True], ids=["disk", "unwritable_directory"])
def test_a_million_open_flows_all_reach_disk_at_sigterm(tmp_path: Path, outage: bool) -> None:
    """``outage``: the JSON-lines directory is gone at the stop (a file is in its way) until the next
    start: every record is spooled then, and replayed at that start."""
    out_dir = tmp_path / "out"
    toml = (
        "udp_idle_timeout = 3600.0\nactive_timeout = 3600.0\nexcerpt_bytes = 0\n"
        f"[listen]\nshutdown_timeout = 120.0\n[log]\nformat = \"json\"\n"
        f"[forwarders.jsonl]\nqueue_max = {QUEUE_MAX}\nrotate_bytes = 268435456\ndirectory = \"{out_dir}\"\n"
        "retry_backoff_max = 0.5\n"
    )
    srv = Served(tmp_path, extra_toml=toml, geneve=False)
    try:
        sent = 0
        while sent < FLOWS:  # in steps, each sent once the receiver has taken the one before
            step = min(50_000, FLOWS - sent)
            _datagrams_range(sent, step, srv.vx_port)
            sent += step
            srv.wait_metric("vxmirror_datagrams_received_total", sent - 100_000, timeout=60.0)
        text = srv.wait_metric("vxmirror_datagrams_received_total", FLOWS, timeout=60.0)
        assert metric(text, "vxmirror_kernel_drops_total") == 0
        srv.wait_metric("vxmirror_flows_active", FLOWS, timeout=60.0)
        if outage:  # (no file was opened yet: every flow is still open)
            out_dir.rmdir()
            out_dir.write_bytes(b"in the way")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=180) == 0, srv.logs()[-3000:]
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    log = srv.logs()
    data = srv.data_dir
    files = sorted(out_dir.glob("*.jsonl")) if out_dir.is_dir() else []
    spooled = sorted((data / "spool" / "jsonl").glob("*.jsonl"))
    on_disk, in_spool = _lines(files), _lines(spooled)
    assert len(on_disk) + len(in_spool) == FLOWS
    stop = _stop_fields(log)["forwarders"]["jsonl"]  # type: ignore[index]
    assert stop["dropped"] == 0 and stop["delivered"] + stop["spooled"] == FLOWS, stop
    assert stop["spooled"] == len(in_spool) and stop["delivered"] == len(on_disk)
    # the queue holds a twentieth of the records: the rest went by the spool (replayed before the
    # exit, or left there for the next start)
    assert stop["replayed"] + stop["spooled"] >= FLOWS - QUEUE_MAX, stop
    if outage:
        assert stop["spooled"] == FLOWS and not on_disk
        out_dir.unlink()

    # the next start replays what is left in the spool: every record once in the files
    srv2 = Served(tmp_path, extra_toml=toml, geneve=False)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any((data / "spool" / "jsonl").glob("*.jsonl")):
            time.sleep(0.5)
        srv2.proc.send_signal(signal.SIGTERM)
        assert srv2.proc.wait(timeout=60) == 0
    finally:
        if srv2.proc.poll() is None:
            srv2.proc.kill()
    lines = _lines(sorted(out_dir.glob("*.jsonl")))
    assert len(lines) == FLOWS and not any((data / "spool" / "jsonl").glob("*.jsonl"))
    ports = {(r["src_port"], r["dest_port"]) for r in map(orjson.loads, lines)}
    assert len(ports) == FLOWS and all(r["packets_in"] == 1 for r in map(orjson.loads, lines[:1000]))


def _datagrams_range(first: int, n: int, port: int) -> None:
    """Datagrams ``first`` to ``first + n``, each the first packet of its own inner UDP flow (one
    inner header template; the flows differ in their UDP ports, so the IP checksum stays right)."""
    template = bytearray(vxlan(ether(ipv4("10.1.0.1", "10.2.0.2", 17, udp(0, 0, b"x" * 16))), vni=42))
    at = len(template) - 16 - 8  # the UDP header
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    try:
        for i in range(first, first + n):
            struct.pack_into("!HH", template, at, 1024 + i % 60_000, 20_000 + i // 60_000)
            tx.sendto(template, ("127.0.0.1", port))
    finally:
        tx.close()
