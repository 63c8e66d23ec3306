"""`vxmirror serve` when the file system of its output files fills up, and when space comes back.

The pcap and JSON-lines directories are on a small file system (a tmpfs mounted for the test), the
spool on the data directory elsewhere. While the output file system is full the service goes on
receiving; the pcap forwarder counts the frames it cannot write (`dropped_disk_full`) and the
JSON-lines forwarder spools its records; each says so in the log once per interval, not per
batch. Once space comes back both write again: new frames in the pcaps, and the spool is replayed
into the JSON lines. Every closed pcap reads back in tshark, and the counts add up.

The same with a file-size limit (RLIMIT_FSIZE, EFBIG) instead of a full file system: what a test
machine that cannot mount gets, and it runs here too so that the path is known to work.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.disk_fixtures import MountRefused, fill, tmpfs
from tests.forwarder_fixtures import stderr_problems, tshark
from tests.listen_fixtures import Served, ether, ipv4, metric, send_all, udp, vxlan

FLOWS = 50  # per phase (the phase while the disk is full: more)
PAYLOAD = 600  # bytes of each inner UDP payload
FSIZE_LIMIT = 256 * 1024  # bytes a file may have (the fsize variant): more than the first phase writes


def datagrams(phase: int, flows: int) -> list[bytes]:
    """``flows`` two-way UDP flows of 3 datagrams each way; the phase is in the client's port."""
    out = []
    for k in range(flows):
        a, b, sport = f"10.{phase}.{k // 200}.{k % 200 + 1}", "172.16.0.9", 10_000 * phase + k
        for i in range(3):
            out.append(vxlan(ether(ipv4(a, b, 17, udp(sport, 4000, b"q%05d" % i + b"x" * PAYLOAD))), 7))
            out.append(vxlan(ether(ipv4(b, a, 17, udp(4000, sport, b"r%05d" % i + b"y" * PAYLOAD))), 7))
    return out


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(x) for x in f.read().split()]
    return out


class FullDisk:
    """The output directory's file system made full, then given space back."""

    def __init__(self, kind: str, out: Path) -> None:
        self.kind = kind
        self.out = out
        self.filler: Path | None = None

    def fill(self, srv: Served) -> None:
        if self.kind == "tmpfs":
            self.filler = fill(self.out)
        # fsize: the limit is in force from the start; the files reach it by themselves

    def give_space_back(self, srv: Served) -> None:
        if self.filler is not None:
            self.filler.unlink()
        else:
            for pid in process_tree(srv.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.fixture(params=["tmpfs", "fsize"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    out = tmp_path / "out"
    if request.param == "fsize":
        out.mkdir()
        yield FullDisk("fsize", out)
        return
    try:
        with tmpfs(out, "8m"):
            yield FullDisk("tmpfs", out)
    except MountRefused as e:
        pytest.fail(f"cannot mount a tmpfs (the fsize variant covers machines that cannot): {e}")


def start(tmp_path: Path, disk: FullDisk) -> Served:
    out = disk.out
    toml = (
        "udp_idle_timeout = 1.0\n"
        '[log]\nformat = "json"\n'
        f'[forwarders.jsonl]\ndirectory = "{out / "flows"}"\nrotate_bytes = {4 * FSIZE_LIMIT}\nfsync = false\n'
        "batch_interval = 0.05\nbatch_max_records = 50\nmax_retries = 1\nretry_backoff_min = 0.05\n"
        "retry_backoff_max = 0.2\n"
        f'[forwarders.pcap]\ndirectory = "{out / "pcap"}"\nrotate_bytes = {4 * FSIZE_LIMIT}\nfsync = false\n'
        "retain_free_percent = 0\n"
    )
    if disk.kind == "tmpfs":
        return Served(tmp_path, extra_toml=toml, geneve=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, hard))  # inherited by the service (SIGXFSZ:
    try:  # Python ignores it, so a write past the limit fails with EFBIG)
        return Served(tmp_path, extra_toml=toml, geneve=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def send_phase(srv: Served, phase: int, flows: int, sent: int) -> int:
    d = datagrams(phase, flows)
    send_all(d, srv.vx_port)
    sent += len(d)
    srv.wait_metric("vxmirror_datagrams_received_total", sent)
    return sent


def fwd(text: str, key: str, name: str) -> float:
    return metric(text, f"vxmirror_forwarder_{key}", forwarder=name)


def wait_for(srv: Served, what: str, ok: object, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = srv.metrics()
        with contextlib.suppress(KeyError):
            if ok(text):  # type: ignore[operator]
                return text
        time.sleep(0.1)
    raise AssertionError(f"{what}:\n{text}\n{srv.logs()[-4000:]}")


def test_full_output_disk_counts_spools_and_recovers(tmp_path: Path, full_disk: FullDisk) -> None:
    # while the disk is full: enough records to reach the file-size limit in the fsize variant
    flows = {1: FLOWS, 2: FLOWS * (6 if full_disk.kind == "fsize" else 1), 3: FLOWS}
    srv = start(tmp_path, full_disk)
    try:
        sent = send_phase(srv, 1, flows[1], 0)
        wait_for(srv, "phase 1 written", lambda t: fwd(t, "sent_total", "jsonl") >= flows[1])

        full_disk.fill(srv)
        sent = send_phase(srv, 2, flows[2], sent)
        text = wait_for(
            srv, "the full disk seen",
            lambda t: metric(t, "vxmirror_dropped_total", place="forwarder:pcap", reason="disk_full") > 0
            and fwd(t, "spooled_total", "jsonl") > 0,
        )
        assert metric(text, "vxmirror_kernel_drops_total") == 0  # receiving goes on
        assert fwd(text, "healthy", "pcap") == 0 and fwd(text, "healthy", "jsonl") == 0
        time.sleep(2.5)  # the sinks keep failing meanwhile (probes): the log says so once an interval

        full_disk.give_space_back(srv)
        sent = send_phase(srv, 3, flows[3], sent)
        text = wait_for(
            srv, "written again after space came back",
            lambda t: fwd(t, "sent_total", "jsonl") >= sum(flows.values()) and fwd(t, "spool_records", "jsonl") == 0
            and fwd(t, "healthy", "pcap") == 1,
        )
        assert srv.stop() == 0, srv.logs()[-3000:]
    finally:
        srv.kill()
    log = srv.logs()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    stop = next(x for x in lines if x.get("msg") == "worker stopped")
    pcap, jsonl = stop["forwarders"]["pcap"], stop["forwarders"]["jsonl"]

    # the pcap forwarder: every frame received was written or counted as dropped for the full disk
    frames = sent  # one frame per datagram
    assert pcap["received"] == frames == pcap["written"] + pcap["dropped"]
    assert pcap["dropped"] == pcap["dropped_disk_full"] > 0
    files = sorted(f for f in (full_disk.out / "pcap").iterdir() if not f.name.endswith(".idx"))  # (indexes)
    assert files and not [f for f in files if f.name.endswith(".part")]
    ports: collections.Counter[int] = collections.Counter()
    for f in files:
        r = tshark(f, "udp.srcport", "udp.dstport")
        assert r.returncode == 0 and stderr_problems(r.stderr) == "", (f, r.stderr)
        for row in r.stdout.split():
            s, d = map(int, row.split("|"))
            ports[min(s, d) if min(s, d) >= 10_000 else max(s, d)] += 1
    assert sum(ports.values()) == pcap["written"]
    by_phase = collections.Counter(p // 10_000 for p in ports.elements())
    assert by_phase[1] == flows[1] * 6 and by_phase[3] == flows[3] * 6  # before the disk filled, after it emptied

    # the JSON lines: records = delivered + spooled + dead-lettered + dropped, and every record is in
    # the files once (those written while the disk was full went through the spool)
    records = stop["records_exported"]
    assert records == sum(flows.values())
    assert records == jsonl["delivered"] + jsonl["spooled"] + jsonl["dead_lettered"] + jsonl["dropped"]
    assert jsonl["spooled"] == jsonl["dropped"] == jsonl["dead_lettered"] == 0 and jsonl["replayed"] > 0
    recs = [orjson.loads(x) for f in sorted((full_disk.out / "flows").iterdir()) for x in f.read_bytes().splitlines()]
    assert len(recs) == records and len({r["src_port"] for r in recs}) == records

    # the log: the failures said once an interval, not once a batch
    failed = [x for x in lines if "write failed" in x.get("msg", "")]
    assert 1 <= len(failed) <= 2, failed
    unreachable = [x for x in lines if "spooling until it recovers" in x.get("msg", "")]
    assert 1 <= len(unreachable) <= 3, unreachable
    assert len([x for x in lines if "frames dropped" in x.get("msg", "")]) <= 4
