"""Issue 16: `vxmirror serve` killed with SIGKILL in the middle of a Splunk HEC outage.

The in-repo HEC server (tests/hec_server.py) refuses connections or answers 503 while the
service exports records: the forwarder spools them. Then every process of the service gets
SIGKILL (as ``systemctl kill -s KILL`` does to the unit's cgroup), the server comes back and
the service is started again on the same data directory: the spool is replayed. It is killed
once more in the middle of that replay (a request the server is still answering) and started a
third time. Every record reaches the server at least once; the duplicates, measured from the
records the server holds, are at most the one batch each worker had in flight at the kill. The
last start has one worker: the spool of a worker the service no longer has is adopted by worker 0.

The counts add up at every stage: datagrams received = packets in the records; records exported =
forwarder received = delivered + spooled (+ dead-lettered + dropped, both 0 here).
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hec_server import HecServer, Outage, Token

from tests.listen_fixtures import Served, metric, send_all, udp_flow_datagrams

TOKEN = "5a1e7c1d-kill-restart-token"
BATCH = 40  # batch_max_records: the bound on duplicates per worker
PACKETS_EACH = 2  # datagrams each way per flow
BEFORE, DURING = 150, 1200  # flows delivered before the outage, exported during it
HEC = 'forwarder="splunk_hec"'


def flows(first: int, n: int) -> list[tuple[str, str, int, int]]:
    """``n`` distinct inner UDP flows (client, server, client port, server port)."""
    return [(f"10.{1 + k // 250}.{k % 250}.7", f"172.20.{k % 97}.{1 + k // 97 % 200}", 20000 + k % 40000, 53)
            for k in range(first, first + n)]


def datagrams(fl: list[tuple[str, str, int, int]]) -> list[bytes]:
    out: list[bytes] = []
    for a, b, sport, dport in fl:
        out += udp_flow_datagrams(a, b, sport, dport, PACKETS_EACH)
    return out


def config(url: str, token_file: Path) -> str:
    return (
        "udp_idle_timeout = 1.0\nexpire_interval = 0.2\n"
        "[listen]\ntick_interval = 0.2\nshutdown_timeout = 30.0\n"
        "[forwarders.splunk_hec]\n"
        f'url = "{url}"\ntoken_file = "{token_file}"\n'
        "timeout = 0.5\nconnect_timeout = 0.5\n"
        f"batch_max_records = {BATCH}\nbatch_interval = 0.05\nqueue_max = 100\n"
        "max_retries = 1\nretry_backoff_min = 0.05\nretry_backoff_max = 0.2\nprobe_interval = 0.2\n"
    )


def wait_for(cond: Callable[[], bool], what: str, srv: Served | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{srv.logs()[-4000:]}" if srv else ""))
        time.sleep(0.05)


def kill9(srv: Served) -> None:
    """SIGKILL every process of the service: the workers first (killed after the supervisor they
    would get SIGTERM from the kernel and stop cleanly), then the supervisor."""
    pid = srv.proc.pid
    kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert kids
    for k in kids:
        os.kill(k, signal.SIGKILL)
    srv.proc.kill()
    srv.proc.wait(10)
    for k in kids:  # gone (reaped by the supervisor's death: they were its children)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    srv.log.close()


def spool_lines(data_dir: Path) -> int:
    return sum(len([ln for ln in p.read_bytes().split(b"\n") if ln])
               for p in (data_dir / "spool").rglob("*.jsonl"))


def fwd(text: str, name: str) -> float:
    return metric(text, f"vxmirror_forwarder_{name}", forwarder="splunk_hec")


@pytest.fixture
def hec() -> Iterator[list[HecServer]]:
    box = [HecServer(tokens=[Token(TOKEN)]).start()]  # the test swaps in the server after an outage
    yield box
    box[0].stop()


@pytest.mark.parametrize(("outage", "workers"), [("refused", 1), ("503", 2)])
def test_kill9_during_hec_outage_then_restart_replays_every_record(
    tmp_path: Path, hec: list[HecServer], outage: str, workers: int
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    toml = config(hec[0].url, token)
    started: list[Served] = []

    def serve(n: int = workers) -> Served:
        s = Served(tmp_path, workers=n, extra_toml=toml, geneve=False)
        started.append(s)
        return s

    try:
        # 1. the server is up: the first records are delivered
        srv = serve()
        first = flows(0, BEFORE)
        send_all(datagrams(first), srv.vx_port)
        def delivered() -> bool:  # (the last reply too: an outage cutting it would make a duplicate)
            t = srv.metrics()
            return (fwd(t, "sent_total") == BEFORE and fwd(t, "spool_records") == 0 and fwd(t, "queue_depth") == 0
                    and fwd(t, "in_flight") == 0)

        wait_for(delivered, "the first records at the server", srv)
        assert hec[0].event_count == BEFORE

        # 2. the outage: every record exported now is spooled
        down = Outage(hec[0])
        if outage == "refused":
            down.begin()
        else:
            hec[0].faults.busy_until = time.time() + 3600
        second = flows(BEFORE, DURING)
        sent = datagrams(first) + datagrams(second)
        send_all(datagrams(second), srv.vx_port)
        total = BEFORE + DURING

        def all_spooled() -> bool:
            t = srv.metrics()
            return (metric(t, "vxmirror_flows_exported_total") == total and fwd(t, "queue_depth") == 0
                    and fwd(t, "in_flight") == 0 and fwd(t, "spool_records") == DURING)

        wait_for(all_spooled, "every record of the outage to be spooled", srv)
        text = srv.metrics()
        # the counts add up: datagrams = packets in records; records = delivered + spooled
        assert metric(text, "vxmirror_datagrams_received_total") == len(sent)
        assert metric(text, "vxmirror_kernel_drops_total") == 0
        assert metric(text, "vxmirror_packets_decoded_total") == len(sent)
        assert fwd(text, "received_total") == total
        assert fwd(text, "sent_total") == BEFORE and fwd(text, "dead_lettered_total") == 0
        assert fwd(text, "dropped_total") == 0
        assert fwd(text, "spooled_total") >= DURING  # (and some of the first records: the queue overflowed)
        assert metric(text, "vxmirror_up") == 0  # the forwarder is down: unhealthy
        assert hec[0].event_count == BEFORE

        # 3. kill -9 in the middle of the outage; what was spooled is on disk
        kill9(srv)
        assert spool_lines(srv.data_dir) == DURING
        assert not list((srv.data_dir / "spool").rglob("*.tmp"))

        # 4. the server comes back, slow: the restarted service replays the spool, and is killed
        # again while a replayed batch is at the server (indexed after the kill: a duplicate)
        if outage == "refused":
            hec[0] = down.end()
        else:
            hec[0].faults.busy_until = 0
        hec[0].faults.slow = 0.25
        srv = serve()
        wait_for(lambda: hec[0].event_count >= BEFORE + 6 * BATCH, "part of the spool replayed", srv)
        kill9(srv)
        time.sleep(0.5)  # the server finishes the request the service was waiting for
        left = spool_lines(srv.data_dir)
        assert 0 < left < DURING

        # 5. started again (with one worker: worker 0 adopts the spool of a worker gone), the server
        # at full speed: the rest of the spool is replayed
        hec[0].faults.slow = 0.0
        srv = serve(1)

        def replayed() -> bool:
            t = srv.metrics()
            return fwd(t, "spool_records") == 0 and fwd(t, "queue_depth") == 0 and fwd(t, "in_flight") == 0

        wait_for(replayed, "the spool to be replayed", srv)
        text = srv.metrics()
        assert fwd(text, "replayed_total") == fwd(text, "sent_total") >= left
        assert fwd(text, "dropped_total") == 0
        assert metric(text, "vxmirror_up") == 1
        assert srv.stop() == 0, srv.logs()[-3000:]
        assert spool_lines(srv.data_dir) == 0
        assert ("adopted" in srv.logs()) == (workers > 1)

        # every record reached the server, each flow whole, duplicates within one batch per worker
        events = [e["event"] for e in hec[0].indexed()]
        seen = collections.Counter((e["src_ip"], e["dest_ip"], e["src_port"], e["dest_port"]) for e in events)
        assert set(seen) == set(first + second)
        assert all(e["packets_out"] == e["packets_in"] == PACKETS_EACH for e in events)
        assert len({e["community_id"] for e in events}) == total
        dup = sum(seen.values()) - len(seen)
        figures: dict[str, Any] = {"outage": outage, "workers": workers, "records": total, "delivered_before": BEFORE,
                                   "spooled": DURING, "left_after_second_kill": left, "duplicates": dup,
                                   "events": len(events)}
        print(figures)
        assert dup <= BATCH * workers, figures
    finally:
        for s in started:
            s.kill()
